"""End-to-end latency (produce -> handler start) at a paced rate."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import workloads
from common import BenchError, say, unique
from drain import throughput_run
from harness import median_of, run_and_store
from plan import KEYS, PEERS, STATS_FLUSH_WAIT_S, VALUE_BYTES, Contender, Context, Metrics, Workload
from procs import CpuWatch, OffsetPoller, launch, wait_committed

from devtools.broker import Record, create_topics, produce


def reference_rate(ctx: Context, workload: Workload, contender: Contender) -> float:
    """*contender*'s own records/s on *workload* (median of its throughput runs), measured now if not
    yet: the latency runs offer half of it (issue #16: p99 at 50 % of the measured max rate)."""
    key = f"throughput/{workload.name}/{contender.name}"
    if not ctx.results.get(key):
        say(f"[{key}] needed for the latency rate: 1 run ...")
        run_and_store(ctx, key, lambda: throughput_run(ctx, workload, contender, 1), 1, 1)
    values = [m["rate"] for m in ctx.results.get(key, [])]
    if not values:
        raise BenchError(f"no rate for {contender.name} on {workload.name}")
    return float(statistics.median(values))


def latency_run(ctx: Context, workload: Workload, contender: Contender, rate: float) -> Metrics:
    run_id = f"latency/{workload.name}/{contender.name}"
    topic = unique(f"bench-lat-{workload.name}")
    group = unique(f"bench-lat-{workload.name}-{contender.name}")
    create_topics(ctx.bootstrap, {topic: workload.partitions})
    poller = OffsetPoller(ctx.bootstrap, group, topic, workload.partitions)
    watch = CpuWatch(ctx.broker_pid)
    running = launch(
        ctx,
        contender,
        run_id=run_id,
        topic=topic,
        group=group,
        workload=workload.name,
        latency=True,
        expected=None,
    )
    count = max(50, int(rate * ctx.sizes.latency_seconds))
    metrics: Metrics = {"offered_rate": rate, "paced_records": count}
    # What this contender managed in the throughput runs: below the offered rate it falls behind, and
    # the wait for the last paced record grows accordingly.
    measured = median_of(ctx, f"throughput/{workload.name}/{contender.name}", "handled_rate")
    capacity = max(1.0, min(rate, measured) if measured else rate)
    if measured is not None and measured < rate:
        metrics["overloaded"] = True
    try:
        warm = produce(
            ctx.bootstrap,
            topic,
            [Record(value=b"warm-up", key=b"warm-up", partition=p) for p in range(workload.partitions)],
        )
        wait_committed(poller, warm, running, 90.0, f"{workload.name}/{contender.name} warm-up")
        spec = {
            "kind": "paced-producer",
            "bootstrap": ctx.bootstrap,
            "topic": topic,
            "rate": rate,
            "count": count,
            "keys": KEYS,
            "value_bytes": VALUE_BYTES,
        }
        producer = subprocess.run(
            [sys.executable, str(PEERS), json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=ctx.sizes.latency_seconds * 4 + 60,
            check=False,
        )
        report = json.loads(producer.stdout.strip().splitlines()[-1]) if producer.stdout.strip() else {}
        if producer.returncode != 0 or "end_offsets" not in report:
            raise BenchError(f"paced producer failed: {report or producer.stderr[-500:]}")
        end = {int(p): int(o) for p, o in report["end_offsets"].items()}
        end = {p: max(end.get(p, 0), warm.get(p, 0)) for p in set(end) | set(warm)}
        metrics["achieved_rate"] = report["sent"] / max(report["took_s"], 1e-6)
        wait_committed(
            poller, end, running, 60.0 + 1.5 * count / capacity, f"{workload.name}/{contender.name} paced"
        )
        metrics["foreign_cores"] = watch.foreign_cores(running.pid)
        time.sleep(STATS_FLUSH_WAIT_S)
    finally:
        running.stop()
        poller.close()
    samples = sorted(workloads.read_latencies(running.stats_dir, float(report["start_ms"])))
    if not samples:
        raise BenchError(f"{contender.name}: no latency samples\n{running.tail()}")
    metrics.update(
        samples=len(samples),
        p50_ms=percentile(samples, 50),
        p99_ms=percentile(samples, 99),
        max_ms=samples[-1],
    )
    return metrics


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]
