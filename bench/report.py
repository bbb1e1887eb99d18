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
    LATENCY_DEFAULT,
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
                f"no-op, {mode} 2 workers >= {GOAL_NOOP_VS_RAW} x the tuned raw loop",
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
        if ratio is None:
            continue  # peers not run (they are in --all only)
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
        if ratio is None:
            continue
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
        if ratio is None and workload == "aio":
            continue
        rows.append(
            (
                f"5 ms I/O ({workload}), 1 partition, 1,000 keys, 4 workers: "
                f"key >= {GOAL_KEY_VS_POOL} x pool",
                "-" if ratio is None else f"{ratio:.2f} x ({fmt_rate(key)} vs {fmt_rate(pool)})",
                verdict(ratio, GOAL_KEY_VS_POOL),
            )
        )
    for mode in modes:
        first = first_result(ctx, f"backlog/sw-{mode}-2")
        goal = f"{mode}: supervisor RSS < {GOAL_BACKLOG_RSS_MB:g} MB with a 1M-record backlog"
        if first is None:
            rows.append((goal, "-", "-"))
            continue
        rss = float(first["rss_max_mib"]) * 1.048576  # MiB -> MB
        rows.append(
            (
                goal,
                f"{rss:.0f} MB ({first['rss_max_mib']:.0f} MiB) max VmRSS over {first['seconds']:g} s "
                f"({first['records']:,} records)",
                "yes" if rss < GOAL_BACKLOG_RSS_MB else "**no**",
            )
        )
    return rows


def summary_table(ctx: Context) -> list[str]:
    """Issue #16's table: one row per raw loop and mode (2 workers unless said)."""
    raw = median_of(ctx, "throughput/noop/raw", "rate")
    lines = [
        "| Contender | no-op records/s (median) | min-max | x tuned raw | 1 ms CPU: 2 v 1 workers "
        "| 5 ms I/O, 4 workers: key v pool | supervisor RSS, 1M backlog (MiB) "
        "| p50 / p99 ms at 50 % of own max | offered/s | runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for contender in ctx.contenders:
        if contender.name not in LATENCY_DEFAULT and contender.name != "raw-untuned":
            continue
        key = f"throughput/noop/{contender.name}"
        if key not in ctx.results:
            continue
        rate = median_of(ctx, key, "rate")
        ratio = f"{rate / raw:.2f}" if rate is not None and raw else "-"
        cpu = io = rss = "-"
        if contender.kind == "streamworker":
            one = median_of(ctx, f"throughput/cpu/sw-{contender.mode}-1", "rate")
            two = median_of(ctx, f"throughput/cpu/sw-{contender.mode}-2", "rate")
            cpu = f"{two / one:.2f} x ({fmt_rate(two)} v {fmt_rate(one)})" if one and two else "-"
            backlog = first_result(ctx, f"backlog/{contender.name}")
            rss = f"{backlog['rss_max_mib']:.0f}" if backlog else "-"
        if contender.mode == "key":
            key4 = median_of(ctx, "throughput/io/sw-key-4", "rate")
            pool4 = median_of(ctx, "throughput/io/sw-pool-4", "rate")
            io = f"{key4 / pool4:.2f} x ({fmt_rate(key4)} v {fmt_rate(pool4)})" if key4 and pool4 else "-"
        lat = f"latency/noop/{contender.name}"
        latency = "-"
        if ctx.results.get(lat):
            over = " (over)" if any(m.get("overloaded") for m in ctx.results[lat]) else ""
            latency = (
                f"{fmt_ms(median_of(ctx, lat, 'p50_ms'))} / {fmt_ms(median_of(ctx, lat, 'p99_ms'))}{over}"
            )
        lines.append(
            f"| {contender.label} | {fmt_rate(rate)} | {range_of(ctx, key, 'rate')} | {ratio} | {cpu} | {io} "
            f"| {rss} | {latency} | {fmt_rate(median_of(ctx, lat, 'achieved_rate'))} "
            f"| {len(ctx.results.get(key, []))} |"
        )
    return lines


def profile_lines(ctx: Context) -> list[str]:
    lines: list[str] = []
    for key in [k for k in ctx.results if k.startswith("profile/")] + [
        k for k in ctx.failures if k.startswith("profile/")
    ]:
        profile = first_result(ctx, key)
        name = key.split("/", 1)[1]
        if profile is None:
            lines += [f"**{name}**: failed: {ctx.failures[key][0]}", ""]
            continue
        lines += [
            f"#### {name}: no-op, {profile['records']:,} records in 4 partitions; {profile['profiler']}, "
            f"{profile['seconds']:.1f} s"
            if "seconds" in profile
            else f"#### {name}: {profile['profiler']}",
            "",
        ]
        for part_name in ("supervisor", "worker"):
            part = profile.get(part_name)
            if not part:
                continue
            busy = f", busy {part['busy_pct']}% of the wall time" if part.get("busy_pct") is not None else ""
            lines.append(
                f"**{part_name}** ({part.get('samples') or '-'} samples{busy}) - self time, % of samples:"
            )
            lines.append("")
            lines += [f"- {pct}% `{frame}`" for frame, pct in part["self"][:10]]
            if part.get("inclusive"):
                lines += ["", f"{part_name}, inclusive (streamworker functions), % of samples:", ""]
                lines += [f"- {pct}% `{frame}`" for frame, pct in part["inclusive"][:10]]
            lines.append("")
    return lines or ["Not run."]


def per_run_lines(ctx: Context) -> list[str]:
    out: list[str] = []
    for key, runs in ctx.results.items():
        if key.startswith("profile/"):
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
    lines = [
        SECTION_BEGIN,
        "## Throughput, latency and memory (issues #5, #16)",
        "",
        f"Command: `{command}` (starts its own local broker; `make bench` installs the bench extra and "
        "runs it; `--all` adds 1/4-worker rows, the peers and every workload's latency).",
        "",
        "| Machine | |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in info],
        "",
        "How it is measured (details in the docstrings of `bench/throughput.py` and `bench/raw.py`):",
        "",
        "- Same topic and records for every contender of a workload (100-byte values, 1,000 keys), a fresh "
        "consumer group per run. **records/s** = records / (first handler call -> the group's committed "
        "offsets reach the end offsets from the delivery reports), so it includes the wait for the last "
        "commit. **handled/s** = first -> last handler call. **startup** = process start -> first handler "
        "call (spawn, imports, group join with the quick profile: session 2 s).",
        "- **tuned raw** (the reference): `fetch.queue.backoff.ms=10`, `consume(1000)`, the workload inline, "
        "offsets stored per batch and committed asynchronously every 100 ms, as streamworker tunes its own "
        "client. **untuned raw**: librdkafka defaults (`fetch.queue.backoff.ms` 1000), `consume(1000)`, one "
        "synchronous commit after the last record.",
        "- **p50/p99**: `time.time()*1000 - record timestamp` at handler start (produce -> handler start), "
        "records sent by a paced producer (its own process, on the same 2 cores) at half the contender's "
        "own median no-op records/s, for a few seconds, after a warm-up; one run. **(over)**: handled/s "
        "below the offered rate, records queue up. **offered/s**: what the producer achieved.",
        "- **supervisor RSS, 1M backlog**: max VmRSS of the supervisor, sampled every 0.2 s while the "
        "no-op topic (1M records) waits behind a handler sleeping 1 s per record (default buffer limits).",
        "- Runs: 3 (medians) for throughput figures a goal compares (`--runs N` sets every count), round "
        "robin over the contenders of a workload; latency, backlog and profiles: 1.",
        "- **others' CPU**: cores used during the run by anything but the contender, the broker and this "
        "script (machine-wide busy time from /proc/stat minus theirs): the machine is shared. Before each "
        "run the script waits (up to `--settle`) for the machine to go idle, and repeats a run once when "
        f"others used more than {FOREIGN_RETRY_CORES} cores during it, keeping the less disturbed attempt.",
        "",
    ]
    for note in ctx.notes:
        lines += [f"Note: {note}", ""]
    summary = summary_table(ctx)
    if len(summary) > 2:
        lines += ["### Summary (2 workers unless said; medians)", "", *summary, ""]
    lines += ["### Goals (medians)", "", "| Goal | Measured | Met |", "|---|---|:---:|"]
    lines += [f"| {goal} | {measured} | {met} |" for goal, measured, met in goal_rows(ctx)]
    lines.append("")
    for workload in WORKLOADS:
        table = throughput_table(ctx, workload)
        if len(table) <= 2:
            continue
        topic = ctx.topics.get(workload.name)
        records = f"{sum(topic[1].values()):,} records" if topic else ""
        lines += [f"### {workload.label}: {records}", "", *table, ""]
    lines += ["### Profiles (no-op, 2 workers, the 1M-record topic)", "", *profile_lines(ctx)]
    lines += ["Per run (raw):", "", *per_run_lines(ctx), SECTION_END]
    return "\n".join(lines) + "\n"


def print_tables(ctx: Context) -> None:
    for workload in WORKLOADS:
        table = throughput_table(ctx, workload)
        if len(table) > 2:
            say(f"\n{workload.label}")
            for line in table:
                say(line)
    say("\nSummary")
    for line in summary_table(ctx):
        say(line)
    say("\nGoals")
    for goal, measured, met in goal_rows(ctx):
        say(f"  [{met.strip('*')}] {goal}: {measured}")
    for line in profile_lines(ctx):
        say(line)
