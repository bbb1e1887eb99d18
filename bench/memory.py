"""Supervisor memory with a large backlog behind a slow handler."""

from __future__ import annotations

import time

import common
from common import BenchError, say, unique
from drain import produce_records
from plan import PROGRESS_EVERY_S, Contender, Context, Metrics
from procs import launch, memory_metrics

from streamworker.devbroker import create_topics


def backlog_run(ctx: Context) -> Metrics:
    """Supervisor RSS with a large backlog behind a slow handler, default buffer limits."""
    count = ctx.sizes.backlog_records
    topic = unique("bench-backlog")
    create_topics(ctx.bootstrap, {topic: 4})
    started = time.monotonic()
    produce_records(ctx.bootstrap, topic, count)
    say(f"  topic {topic}: {count:,} records in 4 partitions [{time.monotonic() - started:.1f}s]")
    contender = Contender("sw-pool-2", "streamworker pool, 2 workers", "streamworker", "pool", 2)
    group = unique("bench-backlog")
    running = launch(
        ctx,
        contender,
        run_id="backlog",
        topic=topic,
        group=group,
        workload="slow",
        latency=False,
        expected=None,
    )
    samples: list[tuple[float, float]] = []
    try:
        common.wait_until(
            running.first_record_seen,
            90,
            "the first handled record",
        )
        first = time.monotonic()
        next_progress = first + PROGRESS_EVERY_S
        while (now := time.monotonic()) - first < ctx.sizes.backlog_seconds:
            rss = common.proc_status_kib(running.pid, "VmRSS")
            if rss is not None:
                samples.append((now - first, rss / 1024))
            if now >= next_progress:
                next_progress = now + PROGRESS_EVERY_S
                say(f"      ... supervisor VmRSS {samples[-1][1]:.1f} MiB [{now - first:.0f}s]")
            time.sleep(0.2)  # sampling interval
        memory = memory_metrics(running.pid)
    finally:
        running.stop(timeout=20)
    if not samples:
        raise BenchError("no VmRSS samples")
    values = [v for _, v in samples]
    return {
        "records": count,
        "seconds": ctx.sizes.backlog_seconds,
        "rss_max_mib": max(values),
        "rss_last_mib": values[-1],
        "rss_first_mib": values[0],
        **memory,
    }
