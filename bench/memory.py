"""Supervisor memory with a large backlog behind a slow handler."""

from __future__ import annotations

import time

import common
from common import BenchError, say, unique
from drain import fill_topic
from plan import NOOP, PROGRESS_EVERY_S, Contender, Context, Metrics
from procs import launch, memory_metrics


def backlog_run(ctx: Context, contender: Contender) -> Metrics:
    """Supervisor RSS of *contender* with the no-op topic (1M records) as its backlog, behind a slow
    handler (1 s per record), default buffer limits: what the supervisor buffers is all it holds."""
    topic, end = fill_topic(ctx, NOOP)
    count = sum(end.values())
    group = unique(f"bench-backlog-{contender.name}")
    running = launch(
        ctx,
        contender,
        run_id=f"backlog/{contender.name}",
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
