"""Tables, goal rows and the RESULTS.md section of ``bench/throughput.py``."""

from __future__ import annotations

import json

from common import fmt_ms, say
from harness import FOREIGN_RETRY_CORES, first_result, fmt_mib, fmt_rate, median_of, range_of
from plan import (
    GOAL_BACKLOG_RSS_MB,
    GOAL_CPU_SCALING,
    GOAL_KEY_VS_POOL,
    GOAL_NOOP_VS_PEERS,
    GOAL_NOOP_VS_RAW,
    NOOP_OUT,
    PEER_NAMES,
    SECTION_BEGIN,
    SECTION_END,
    WORKLOADS,
    Context,
    Workload,
)


def throughput_table(ctx: Context, workload: Workload) -> list[str]:
    raw = median_of(ctx, f"throughput/{workload.name}/raw", "rate")
    lines = [
        "| Contender | records/s (median) | min-max | x raw loop | handled/s | startup s "
        "| p50 ms | p99 ms | peak RSS MiB: main | + children (n) | runs | others' CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for contender in ctx.contenders:
        key = f"throughput/{workload.name}/{contender.name}"
        lat = f"latency/{workload.name}/{contender.name}"
        if key not in ctx.results and key not in ctx.failures and lat not in ctx.results:
            continue
        rate = median_of(ctx, key, "rate")
        ratio = f"{rate / raw:.2f}" if rate is not None and raw else "-"
        children = median_of(ctx, key, "children")
        kids = fmt_mib(median_of(ctx, key, "workers_rss_mib"))
        kids += f" ({children:.0f})" if children else ""
        runs = len(ctx.results.get(key, []))
        failed = len(ctx.failures.get(key, []))
        mark = " (over)" if any(m.get("overloaded") for m in ctx.results.get(lat, [])) else ""
        if ctx.failures.get(lat):
            mark = " (failed)"
        lines.append(
            f"| {contender.label} | {fmt_rate(rate)} | {range_of(ctx, key, 'rate')} | {ratio} "
            f"| {fmt_rate(median_of(ctx, key, 'handled_rate'))} "
            f"| {fmt_s(median_of(ctx, key, 'startup_s'))} "
            f"| {fmt_ms(median_of(ctx, lat, 'p50_ms'))}{mark} "
            f"| {fmt_ms(median_of(ctx, lat, 'p99_ms'))}{mark} "
            f"| {fmt_mib(median_of(ctx, key, 'sup_rss_mib'))} | {kids} "
            f"| {runs}{f' ({failed} failed)' if failed else ''} "
            f"| {fmt_cores(median_of(ctx, key, 'foreign_cores'))} |"
        )
    return lines


def fmt_cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def goal_rows(ctx: Context) -> list[tuple[str, str, str]]:
    """(goal, measured, met) rows."""
    rows: list[tuple[str, str, str]] = []

    def rate(workload: str, name: str) -> float | None:
        return median_of(ctx, f"throughput/{workload}/{name}", "rate")

    def verdict(value: float | None, goal: float) -> str:
        return "-" if value is None else ("yes" if value >= goal else "**no**")

    raw = rate("noop", "raw")
    modes = [c.mode for c in ctx.contenders if c.kind == "streamworker" and c.workers == 2]
    for mode in modes:
        sw = rate("noop", f"sw-{mode}-2")
        ratio = sw / raw if sw is not None and raw else None
        rows.append(
            (
                f"no-op, {mode} 2 workers >= {GOAL_NOOP_VS_RAW} x raw loop",
                "-" if ratio is None else f"{ratio:.2f} x ({fmt_rate(sw)} vs {fmt_rate(raw)})",
                verdict(ratio, GOAL_NOOP_VS_RAW),
            )
        )
        peers = [(other, peer) for peer in PEER_NAMES if (other := rate("noop", peer))]
        if peers and sw is not None:
            best, best_name = max(peers)
            ratio = sw / best
            measured = f"{ratio:.2f} x the fastest peer, {best_name} ({fmt_rate(sw)} vs {fmt_rate(best)})"
        else:
            ratio, measured = None, "-"
        rows.append(
            (
                f"no-op, {mode} 2 workers >= {GOAL_NOOP_VS_PEERS:g} x every peer",
                measured,
                verdict(ratio, GOAL_NOOP_VS_PEERS),
            )
        )
    for mode in modes:
        plain, out = rate("noop", f"sw-{mode}-2"), rate(NOOP_OUT, f"sw-{mode}-2")
        ratio = out / plain if plain and out is not None else None
        rows.append(
            (
                f"no-op returning its input to an output topic, {mode} 2 workers, vs no-op (no goal)",
                "-" if ratio is None else f"{ratio:.2f} x ({fmt_rate(out)} vs {fmt_rate(plain)})",
                "-",
            )
        )
    for mode in modes:
        one, two = rate("cpu", f"sw-{mode}-1"), rate("cpu", f"sw-{mode}-2")
        ratio = two / one if one and two is not None else None
        rows.append(
            (
                f"1 ms CPU, {mode}: 2 workers >= {GOAL_CPU_SCALING} x 1 worker",
                "-" if ratio is None else f"{ratio:.2f} x ({fmt_rate(two)} vs {fmt_rate(one)})",
                verdict(ratio, GOAL_CPU_SCALING),
            )
        )
    for workload in ("io", "aio"):
        key, pool = rate(workload, "sw-key-4"), rate(workload, "sw-pool-4")
        ratio = key / pool if pool and key is not None else None
        rows.append(
            (
                f"5 ms I/O ({workload}), 1 partition, 1,000 keys, 4 workers: "
                f"key >= {GOAL_KEY_VS_POOL} x pool",
                "-" if ratio is None else f"{ratio:.2f} x ({fmt_rate(key)} vs {fmt_rate(pool)})",
                verdict(ratio, GOAL_KEY_VS_POOL),
            )
        )
    backlog = ctx.results.get("backlog", [])
    if backlog:
        first = backlog[0]
        rss = float(first["rss_max_mib"]) * 1.048576  # MiB -> MB
        rows.append(
            (
                f"supervisor RSS < {GOAL_BACKLOG_RSS_MB:g} MB with a {first['records']:,}-record backlog",
                f"{rss:.0f} MB ({first['rss_max_mib']:.0f} MiB) max VmRSS over {first['seconds']:g} s",
                "yes" if rss < GOAL_BACKLOG_RSS_MB else "**no**",
            )
        )
    else:
        rows.append((f"supervisor RSS < {GOAL_BACKLOG_RSS_MB:g} MB with a 1M-record backlog", "-", "-"))
    return rows


def profile_lines(ctx: Context) -> list[str]:
    profile = first_result(ctx, "profile")
    if profile is None:
        return ["Not run." if "profile" not in ctx.failures else f"Failed: {ctx.failures['profile'][0]}"]
    lines = [
        f"streamworker pool, 2 workers, no-op, {profile['records']:,} records in 4 partitions; "
        f"{profile['profiler']}.",
        "",
    ]
    for name in ("supervisor", "worker"):
        part = profile.get(name)
        if not part:
            continue
        busy = f", busy {part['busy_pct']}% of the wall time" if part.get("busy_pct") is not None else ""
        lines.append(f"**{name}** ({part.get('samples') or '-'} samples{busy}) - self time, % of samples:")
        lines.append("")
        lines += [f"- {pct}% `{frame}`" for frame, pct in part["self"]]
        if part.get("inclusive"):
            lines += ["", f"{name}, inclusive (streamworker functions), % of samples:", ""]
            lines += [f"- {pct}% `{frame}`" for frame, pct in part["inclusive"]]
        lines.append("")
    return lines


def per_run_lines(ctx: Context) -> list[str]:
    out: list[str] = []
    for key, runs in ctx.results.items():
        if key == "profile":
            continue
        for index, metrics in enumerate(runs, 1):
            shown = {
                k: (round(v, 2) if isinstance(v, float) else v) for k, v in metrics.items() if v is not None
            }
            out.append(f"- `{key}` #{index}: `{json.dumps(shown, default=str)}`")
    for key, errors in ctx.failures.items():
        out += [f"- `{key}` FAILED: {error}" for error in errors]
    return out


def section(ctx: Context, info: list[tuple[str, str]], command: str) -> str:
    rate_notes = []
    for workload in WORKLOADS:
        offered = median_of(ctx, f"latency/{workload.name}/sw-pool-2", "offered_rate")
        if offered is not None:
            rate_notes.append(f"{workload.name} {offered:,.0f}/s")
    backlog = first_result(ctx, "backlog")
    lines = [
        SECTION_BEGIN,
        "## Throughput, latency and memory (issue #5)",
        "",
        f"Command: `{command}` (starts its own local broker; `make bench` installs the bench extra, "
        "a Quix Streams virtualenv in `.venv/quix`, and runs it).",
        "",
        "| Machine | |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in info],
        "",
        "How it is measured (details in the docstring of `bench/throughput.py`):",
        "",
        "- Same topic and records for every contender of a workload (100-byte values, 1,000 keys), a fresh "
        "consumer group per run. **records/s** = records / (first handler call -> the group's committed "
        "offsets reach the end offsets from the delivery reports). It includes waiting for the next commit: "
        "arroyo and Quix commit every 1 s, streamworker every 1 s and as soon as its workers run out of "
        "work, the raw loop once, synchronously, right after its last record. **handled/s** = first -> "
        "last handler call. **startup** = process start -> first handler call (spawn, imports, group "
        "join with the quick profile: session 2 s).",
        "- **x raw loop**: against the raw confluent-kafka loop on the same workload (`consume(1000)`, the "
        "workload inline, `fetch.queue.backoff.ms=10`); for no-op that is the ceiling.",
        "- **p50/p99**: `time.time()*1000 - record timestamp` at handler start, for records sent by a paced "
        "producer at half the rate measured for streamworker pool/2 workers on that workload"
        + (f" ({', '.join(rate_notes)})" if rate_notes else "")
        + "; one run per contender, after a warm-up. **(over)**: the contender's handled/s is below that "
        "rate, so records queue up and the figures grow with the run length (5 s of records).",
        "- **peak RSS**: VmHWM of the contender's main process (streamworker: the supervisor) and the sum "
        "over its child processes (streamworker: the workers; arroyo multiprocessing: 2 pool processes plus "
        "multiprocessing's resource tracker), read when the run is done.",
        "- Runs: 3 (medians) for the figures a goal compares - no-op raw loop, 2-worker streamworker modes "
        "and peers; 1 ms CPU with 1 and 2 workers; 5 ms I/O pool/key with 4 workers - 1 elsewhere "
        "(`--runs N` sets every count); runs go round robin over the contenders of a workload.",
        "- **others' CPU**: cores used during the throughput run by anything but the contender, the broker "
        "and this script (machine-wide busy time from /proc/stat minus theirs): this machine is shared with "
        "other work. Before each run the script waits (up to `--settle`, 20 s) for the machine to go idle, "
        f"and repeats a run once when others used more than {FOREIGN_RETRY_CORES} cores during it, keeping "
        "the less disturbed attempt.",
        "- Every consumer uses the quick timeout profile (Tansu holds a JoinGroup for half the session) and "
        "`fetch.queue.backoff.ms=10`. arroyo: `build_kafka_consumer_configuration` + `StreamProcessor` "
        "(commit policy `ONCE_PER_SECOND`, explicit commits, not librdkafka auto-commit), "
        "`RunTask(handle, CommitOffsets(commit))` or `RunTaskWithMultiprocessing(handle, "
        "CommitOffsets(commit), max_batch_size=1000, max_batch_time=0.1, "
        "MultiprocessingPool(2), 4 MiB blocks)`. Quix Streams: `Application(commit_interval=1.0)` + "
        "`sdf.update(handle, metadata=True)`; async work runs via `loop.run_until_complete` in both.",
        "",
    ]
    for note in ctx.notes:
        lines += [f"Note: {note}", ""]
    for workload in WORKLOADS:
        table = throughput_table(ctx, workload)
        if len(table) <= 2:
            continue
        topic = ctx.topics.get(workload.name)
        records = f"{sum(topic[1].values()):,} records" if topic else ""
        lines += [f"### {workload.label}: {records}", "", *table, ""]
    lines += ["### Goals (medians)", "", "| Goal | Measured | Met |", "|---|---|:---:|"]
    lines += [f"| {goal} | {measured} | {met} |" for goal, measured, met in goal_rows(ctx)]
    lines.append("")
    if backlog is not None:
        lines += [
            f"### Supervisor memory with a {backlog['records']:,}-record backlog",
            "",
            "streamworker pool, 2 workers, handler sleeps 1 s per record, default buffer limits "
            "(maxBufferedRecords 30,000 and maxBufferedBytes 64 MiB per partition, librdkafka defaults): "
            f"supervisor VmRSS {backlog['rss_first_mib']:.1f} MiB at the first record, max "
            f"{backlog['rss_max_mib']:.1f} MiB, {backlog['rss_last_mib']:.1f} MiB after "
            f"{backlog['seconds']:g} s; VmHWM {fmt_mib(backlog.get('sup_rss_mib'))} MiB; workers "
            f"{fmt_mib(backlog.get('workers_rss_mib'))} MiB together.",
            "",
        ]
    lines += ["### Where the supervisor's time goes (no-op)", "", *profile_lines(ctx)]
    lines += ["Per run (raw):", "", *per_run_lines(ctx), SECTION_END]
    return "\n".join(lines) + "\n"


def print_tables(ctx: Context) -> None:
    for workload in WORKLOADS:
        table = throughput_table(ctx, workload)
        if len(table) > 2:
            say(f"\n{workload.label}")
            for line in table:
                say(line)
    say("\nGoals")
    for goal, measured, met in goal_rows(ctx):
        say(f"  [{met.strip('*')}] {goal}: {measured}")
    for line in profile_lines(ctx):
        say(line)
