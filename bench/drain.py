"""Drain-rate runs: a filled topic, one contender, records/s until the group's commits reach the end."""

from __future__ import annotations

import json
import time

import workloads
from common import BenchError, say, unique
from plan import KEYS, NOOP_OUT, STATS_FLUSH_WAIT_S, VALUE_BYTES, Contender, Context, Metrics, Workload
from procs import CpuWatch, OffsetPoller, launch, memory_metrics, wait_committed

from devtools.broker import Record, create_topics, produce


def fill_topic(ctx: Context, workload: Workload) -> tuple[str, dict[int, int]]:
    """The workload's topic, filled once (records with 1,000 keys, 100-byte values)."""
    if workload.name in ctx.topics:
        return ctx.topics[workload.name]
    count = workload.records(ctx.sizes)
    topic = unique(f"bench-{workload.name}")
    create_topics(ctx.bootstrap, {topic: workload.partitions})
    started = time.monotonic()
    end = produce_records(ctx.bootstrap, topic, count)
    took = time.monotonic() - started
    say(f"  topic {topic}: {count:,} records in {workload.partitions} partition(s) [{took:.1f}s]")
    ctx.topics[workload.name] = (topic, end)
    return topic, end


def produce_records(bootstrap: str, topic: str, count: int) -> dict[int, int]:
    records = (
        Record(value=workloads.value_of(i, VALUE_BYTES), key=workloads.key_of(i, KEYS)) for i in range(count)
    )
    end: dict[int, int] = produce(
        bootstrap,
        topic,
        records,
        timeout=max(60.0, count / 20_000),
        linger_ms=50,
        config={"queue.buffering.max.messages": 2_000_000, "batch.num.messages": 10_000},
    )
    return end


def throughput_run(ctx: Context, workload: Workload, contender: Contender, run: int) -> Metrics:
    topic, end = fill_topic(ctx, workload)
    total = sum(end.values())
    run_id = f"throughput/{workload.name}/{contender.name}/{run}"
    group = unique(f"bench-{workload.name}-{contender.name}")
    poller = OffsetPoller(ctx.bootstrap, group, topic, workload.partitions)
    watch = CpuWatch(ctx.broker_pid)
    running = launch(
        ctx,
        contender,
        run_id=run_id,
        topic=topic,
        group=group,
        workload=workload.name,
        latency=False,
        expected=total,
    )
    metrics: Metrics = {}
    try:
        timeout = 120.0 + total / 200.0 if workload.name not in ("noop", NOOP_OUT) else 180.0
        done = wait_committed(poller, end, running, timeout, f"{workload.name}/{contender.name}")
        metrics.update(memory_metrics(running.pid))
        metrics["foreign_cores"] = watch.foreign_cores(running.pid)
        time.sleep(STATS_FLUSH_WAIT_S)  # the handlers' stats threads write every 0.2 s
    finally:
        code = running.stop()
        poller.close()
    first, last, count = workloads.read_stats(running.stats_dir)
    done_file = running.stats_dir / "done.json"
    if done_file.exists():  # the raw loop knows exactly when its commit returned
        done = float(json.loads(done_file.read_text(encoding="utf-8"))["done"])
    if first is None:
        raise BenchError(f"{contender.name}: no handler statistics\n{running.tail()}")
    metrics.update(
        records=total,
        rate=total / max(done - first, 1e-6),
        handled_rate=count / max((last or first) - first, 1e-6) if count > 1 else None,
        handled=count,
        startup_s=first - running.launched,
        wall_s=done - running.launched,
        exit_code=code,
    )
    if count < total:
        metrics["problem"] = f"handled {count} < {total} records"
    return metrics
