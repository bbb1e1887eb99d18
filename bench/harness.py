"""Running and storing one measurement: settle, retry when disturbed, medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import common
from common import BenchError, say
from confluent_kafka import KafkaException
from plan import Context, Metrics

FOREIGN_RETRY_CORES = 0.5
ATTEMPTS = 2


def settle(ctx: Context) -> None:
    """Wait (bounded by ``ctx.settle_s``) until the machine is nearly idle before a run."""
    deadline = time.monotonic() + ctx.settle_s
    waited = False
    while (cores := common.busy_cores(0.5)) > 0.3 and time.monotonic() < deadline:
        if not waited:
            say(f"      ... machine busy ({cores:.1f} cores used by others): waiting up to {ctx.settle_s:g}s")
            waited = True
    if waited:
        say(f"      ... going on ({cores:.1f} cores busy)")


def run_and_store(
    ctx: Context, key: str, action: Callable[[], Metrics], run: int, runs: int
) -> Metrics | None:
    """Run once; a run disturbed by more than FOREIGN_RETRY_CORES of other work is tried once more."""
    best: Metrics | None = None
    for attempt in range(1, ATTEMPTS + 1):
        settle(ctx)
        say(f"[{key}] run {run}/{runs}{f' (attempt {attempt})' if attempt > 1 else ''} ...")
        started = time.monotonic()
        try:
            metrics = action()
        except (BenchError, RuntimeError, TimeoutError, OSError, ValueError, KafkaException) as exc:
            say(f"[{key}] run {run} FAILED: {exc}")
            if best is None:
                ctx.failures.setdefault(key, []).append(str(exc).splitlines()[0])
            break
        metrics["load1"] = common.load_average()
        metrics["attempt"] = attempt
        say(f"[{key}] run {run}: {progress_text(metrics)} [{time.monotonic() - started:.1f}s]")
        if best is None or metrics.get("foreign_cores", 0.0) < best.get("foreign_cores", 0.0):
            best = metrics
        if metrics.get("foreign_cores", 0.0) <= FOREIGN_RETRY_CORES:
            break
        if attempt < ATTEMPTS:
            say(f"[{key}] other work used {metrics['foreign_cores']:.2f} cores during the run: once more")
    if best is not None:
        ctx.results.setdefault(key, []).append(best)
    return best


def progress_text(m: Metrics) -> str:
    parts: list[str] = []
    if "rate" in m:
        parts.append(f"{m['rate']:,.0f} records/s (handled/s {fmt_rate(m.get('handled_rate'))})")
        parts.append(f"startup {m['startup_s']:.1f}s")
    if "p50_ms" in m:
        parts.append(f"p50 {m['p50_ms']:.1f} ms, p99 {m['p99_ms']:.1f} ms at {m['offered_rate']:,.0f}/s")
    if "rss_max_mib" in m:
        parts.append(f"supervisor VmRSS max {m['rss_max_mib']:.1f} MiB")
    if m.get("sup_rss_mib") is not None:
        parts.append(f"peak RSS {m['sup_rss_mib']:.0f} MiB + {fmt_mib(m.get('workers_rss_mib'))} MiB")
    if m.get("problem"):
        parts.append(f"problem: {m['problem']}")
    if m.get("foreign_cores") is not None:
        parts.append(f"others used {m['foreign_cores']:.2f} cores")
    return "; ".join(parts)


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmt_mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def first_result(ctx: Context, key: str) -> Metrics | None:
    runs = ctx.results.get(key)
    return runs[0] if runs else None


def median_of(ctx: Context, key: str, metric: str) -> float | None:
    values = [float(m[metric]) for m in ctx.results.get(key, []) if m.get(metric) is not None]
    return statistics.median(values) if values else None


def range_of(ctx: Context, key: str, metric: str) -> str:
    values = [float(m[metric]) for m in ctx.results.get(key, []) if m.get(metric) is not None]
    if len(values) < 2:
        return ""
    return f"{min(values):,.0f}-{max(values):,.0f}"
