"""Throughput benchmark (issues #5, #16): streamworker against raw confluent-kafka loops and its peers.

Default (~15 min on the 2-core machine): the issue #16 matrix: no-op, 1M records x 100 B, 4 partitions:
the tuned raw loop (the reference), the untuned one, and pool/static/key with 2 workers (3 runs
each); 1 ms CPU with 1 and 2 workers per mode; 5 ms I/O on 1 partition, 1,000 keys, key vs pool
with 4 workers; per mode (and the tuned raw loop) p99 latency at half its own no-op rate, the
supervisor's RSS with the 1M backlog and a py-spy profile of the 1M drain. ``--all``: every
contender (1/2/4 workers, sentry-arroyo, Quix Streams) on every workload, as the issue #5 runs did.
The modules: ``plan`` (sizes, workloads, contenders, goals), ``procs`` (processes, config, offsets),
``raw`` (the raw loops), ``peers`` (peer runners, paced producer), ``drain``, ``latency``,
``memory``, ``profiling``, ``harness`` (settle/retry/medians) and ``report`` (tables, RESULTS.md);
``frames.py`` is the msgpack/msgspec frame micro-benchmark.

Run from the repository root (``make bench`` does both steps)::

    .venv/bin/pip install -e '.[dev,bench]'
    .venv/bin/python bench/throughput.py [--quick] [--runs N] [--only PATTERN] [--quix-python PATH]

It starts its own local Tansu broker (``devtools.broker.LocalBroker``), prints progress while it
runs, prints tables of medians and (full runs only) writes the ``throughput`` section of
``bench/RESULTS.md`` with the machine and versions, keeping the other sections.

What is measured
----------------
* **Throughput.** Per workload one topic is filled once; every contender run reads the very same
  records with a fresh consumer group. A run is timed from its first handled record (noted by the
  handler) until the group's committed offsets reach the end offsets (taken from the producer's
  delivery reports; Tansu's ListOffsets is per batch and under-reports). So records/s includes the
  wait for the contender's next commit (arroyo and Quix commit every second; streamworker every
  second and as soon as its workers run out of work; the raw loop commits once, right after its last
  record). Startup (process start, worker spawn, group join:
  ~1-3 s here) is reported on its own. "handled/s" is first to last handler call, without commits.
* **Latency.** A fresh topic per run; the contender is started and warmed up (one record per
  partition, committed), then a producer in its own process sends records at half the rate measured
  for streamworker (pool, 2 workers) on that workload, for ``LATENCY_SECONDS``. The handler notes
  ``time.time() * 1000 - record timestamp`` at its start; p50/p99 over the paced records. The record
  timestamp is set by the producer when ``produce()`` is called (linger.ms=5).
* **Memory.** VmHWM (peak RSS) from ``/proc/<pid>/status`` of the contender's process and, summed,
  of its descendants (streamworker's workers; arroyo's pool, its resource tracker and shared-memory
  manager), read once the run is done, before SIGTERM.
* **Backlog memory.** 1,000,000 records behind a slow handler (1 s per record, pool, 2 workers,
  default buffer limits): the supervisor's VmRSS sampled every 0.2 s for 10 s.
* **Profile.** py-spy samples streamworker's supervisor (and worker 0) while it works through a no-op
  backlog; where the supervisor's time goes, by function. If py-spy cannot attach (no ptrace), the
  supervisor's runner is run on the main thread under pyinstrument instead (``--profiler``).

Contenders: ``raw`` (the ceiling), ``sw-<mode>-<n>`` (``python -m streamworker --config ...`` with
workerAllocationMode pool|static|key and numWorkers 1, 2, 4; key only when
``streamworker.config.model.AllocationMode`` has ``KEY``), ``arroyo-run-task``, ``arroyo-mp-2``
(``RunTaskWithMultiprocessing``, 2 processes) and ``quix`` (Quix Streams 3, run by
``--quix-python``: it cannot share a virtualenv with sentry-arroyo). See ``bench/peers.py``.

Workloads: ``noop``; ``noop-out`` (no-op returning its input to an output topic through
``attributes.outputTopic``: the cost of outputs confirmed before commit; streamworker with 2 workers
only); ``cpu`` (1 ms of CPU per record); ``io`` and ``aio`` (5 ms sleep, blocking or
``await asyncio.sleep``) on one partition with 1,000 keys. See ``bench/workloads.py``.

This is a benchmark, not a test: goals are reported, not asserted. The exit code is 1 only when a run
could not be completed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import common
from common import BenchError, say
from drain import throughput_run
from harness import run_and_store
from latency import latency_run, reference_rate
from memory import backlog_run
from plan import (
    FULL,
    LATENCY_DEFAULT,
    QUICK,
    QUICK_CONTENDERS,
    SECTION_BEGIN,
    SECTION_END,
    WORKLOADS,
    Contender,
    Context,
    Metrics,
    Workload,
    all_contenders,
    applies,
    in_matrix,
)
from profiling import profile_run, pyspy_binary
from report import print_tables, section

from devtools.broker import LocalBroker


def throughput_action(
    ctx: Context, workload: Workload, contender: Contender, run: int
) -> Callable[[], Metrics]:
    return lambda: throughput_run(ctx, workload, contender, run)


def latency_action(
    ctx: Context, workload: Workload, contender: Contender, rate: float
) -> Callable[[], Metrics]:
    return lambda: latency_run(ctx, workload, contender, rate)


def run_all(ctx: Context) -> None:
    for workload in WORKLOADS:
        # Round robin over the contenders (run 1 of each, then run 2, ...), so that other work on the
        # machine, which comes and goes, does not fall on one contender's runs only.
        chosen = [
            c
            for c in ctx.contenders
            if in_matrix(workload.name, c.name, ctx.everything)
            and ctx.selected(f"throughput/{workload.name}/{c.name}")
            and applies(workload.name, c)
        ]
        most = max((ctx.runs_for(workload.name, c.name) for c in chosen), default=0)
        for run in range(1, most + 1):
            for contender in chosen:
                runs = ctx.runs_for(workload.name, contender.name)
                if run <= runs:
                    key = f"throughput/{workload.name}/{contender.name}"
                    run_and_store(ctx, key, throughput_action(ctx, workload, contender, run), run, runs)
    for workload in WORKLOADS:
        if (ctx.quick or not ctx.everything) and workload.name != "noop":
            continue
        selected = [
            c
            for c in ctx.contenders
            if (ctx.everything or c.name in LATENCY_DEFAULT)
            and ctx.selected(f"latency/{workload.name}/{c.name}")
            and applies(workload.name, c)
        ]
        for contender in selected:
            key = f"latency/{workload.name}/{contender.name}"
            try:
                rate = ctx.latency_rate or 0.5 * reference_rate(ctx, workload, contender)
            except BenchError as exc:
                ctx.failures.setdefault(key, []).append(str(exc))
                continue
            say(f"latency of {contender.name} on {workload.name}: paced producer at {rate:,.0f} records/s")
            run_and_store(ctx, key, latency_action(ctx, workload, contender, rate), 1, 1)
    per_mode = [c for c in ctx.contenders if c.kind == "streamworker" and c.workers == 2]
    for contender in per_mode:
        key = f"backlog/{contender.name}"
        if ctx.selected(key):
            run_and_store(ctx, key, functools.partial(backlog_run, ctx, contender), 1, 1)
    for contender in per_mode:
        key = f"profile/{contender.name}"
        if ctx.selected(key):
            run_and_store(ctx, key, functools.partial(profile_run, ctx, contender), 1, 1)


# ----------------------------------------------------------------------------------------- main


def key_mode_available() -> tuple[bool, str | None]:
    """Whether streamworker knows workerAllocationMode key (and a note when it is doubtful)."""
    from streamworker.config.model import AllocationMode

    if not hasattr(AllocationMode, "KEY"):
        return (
            False,
            "workerAllocationMode key does not exist in this streamworker (AllocationMode has no KEY): "
            "skipped.",
        )
    from streamworker.supervisor import dispatch

    source = Path(dispatch.__file__).read_text(encoding="utf-8")
    if "AllocationMode.KEY" not in source:
        return True, (
            "workerAllocationMode key is accepted by the config (AllocationMode.KEY exists) but "
            "streamworker/supervisor/dispatch.py has no key-specific code at this commit: the key rows "
            "measure a dispatcher that still treats a whole partition as one lane (like pool)."
        )
    return True, None


def default_quix_python() -> str | None:
    env = os.environ.get("BENCH_QUIX_PYTHON")
    if env:
        return env
    candidate = common.REPO / ".venv" / "quix" / "bin" / "python"
    return str(candidate) if candidate.exists() else None


def quix_version(python: str) -> str | None:
    code = (
        "import importlib.metadata as m, confluent_kafka, quixstreams; "
        "print(quixstreams.__version__, m.version('confluent-kafka'), confluent_kafka.libversion()[0])"
    )
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    parts = out.stdout.split()
    if len(parts) != 3:
        return None
    return f"{parts[0]} (own virtualenv: confluent-kafka {parts[1]}, librdkafka {parts[2]})"


def versions_info(quix: str | None, key_note: str | None, key_mode: bool) -> list[tuple[str, str]]:
    pyspy = pyspy_binary()
    pyspy_version = None
    if pyspy:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            pyspy_version = subprocess.run(
                [pyspy, "--version"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
    return [
        ("sentry-arroyo", common.package_version("sentry-arroyo") or "not installed"),
        ("Quix Streams", quix or "not available"),
        ("py-spy", pyspy_version or "not installed"),
        ("msgpack", common.package_version("msgpack") or "not installed"),
        ("msgspec", common.package_version("msgspec") or "not installed"),
        (
            "key mode",
            "yes" if key_mode and not key_note else ("accepted, no key dispatch" if key_mode else "absent"),
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="small smoke version (fewer contenders, records)"
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="runs per figure (default: 3 where a goal compares it, 1 elsewhere; --quick: 1)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PATTERN",
        help="run only ids matching (fnmatch or one path part): e.g. noop, 'throughput/cpu/*', "
        "sw-pool-2, latency, backlog, profile (repeatable)",
    )
    parser.add_argument(
        "--quix-python", default=default_quix_python(), help="python of the Quix Streams venv"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for other work on the machine to stop (default 20)",
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=None,
        metavar="RECORDS_PER_S",
        help="latency runs offer this rate instead of half the contender's own no-op rate "
        "(to compare commits at the same load)",
    )
    parser.add_argument("--profiler", choices=("auto", "py-spy", "pyinstrument"), default="auto")
    parser.add_argument("--results", type=Path, default=common.RESULTS_PATH, help="markdown file to update")
    parser.add_argument(
        "--write", action="store_true", help="update the results file even with --quick/--only"
    )
    parser.add_argument("--no-write", action="store_true", help="do not update the results file")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, profiles)")
    parser.add_argument(
        "--all",
        dest="everything",
        action="store_true",
        help="every contender (1/2/4 workers, peers) on every workload, latency of each (~40-65 min); "
        "default: the issue #16 matrix (~15 min)",
    )
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    key_mode, key_note = key_mode_available()
    contenders = all_contenders(key_mode)
    if args.quick:
        contenders = [c for c in contenders if c.name in QUICK_CONTENDERS]
    quix = quix_version(args.quix_python) if args.quix_python else None
    notes = [key_note] if key_note else []
    if quix is None and args.everything:
        notes.append(
            "Quix Streams skipped: no interpreter with quixstreams >= 3 (pass --quix-python; `make bench` "
            "creates .venv/quix). It cannot share a virtualenv with sentry-arroyo (confluent-kafka < 2.13 vs "
            ">= 2.13.2)."
        )
        contenders = [c for c in contenders if c.kind != "quix"]
    info = common.machine_info(versions_info(quix, key_note, key_mode))
    say("streamworker throughput benchmark" + (" (--quick)" if args.quick else ""))
    for key, value in info:
        say(f"  {key}: {value}")
    for note in notes:
        say(f"  note: {note}")
    workdir = Path(tempfile.mkdtemp(prefix="streamworker-throughput-"))
    started = time.monotonic()
    try:
        with LocalBroker() as broker:
            say(f"\nlocal broker on {broker.bootstrap}; work folder {workdir}")
            ctx = Context(
                bootstrap=broker.bootstrap,
                root=workdir,
                sizes=QUICK if args.quick else FULL,
                quick=args.quick,
                everything=args.everything,
                runs=args.runs,
                only=list(args.only),
                quix_python=args.quix_python if quix else None,
                profiler=args.profiler,
                contenders=contenders,
                notes=notes,
                broker_pid=broker.pid,
                settle_s=args.settle,
                latency_rate=args.latency_rate,
            )
            run_all(ctx)
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    say(f"\nfinished in {(time.monotonic() - started) / 60:.1f} min")
    print_tables(ctx)
    write = not args.no_write and (args.write or (not args.quick and not args.only))
    if write:
        shown = list(sys.argv[1:] if argv is None else argv)
        command = " ".join(["python bench/throughput.py", *shown])
        common.write_section(args.results, section(ctx, info, command), SECTION_BEGIN, SECTION_END)
        say(f"\nwrote the throughput section of {args.results}")
    return 1 if ctx.failures else 0


if __name__ == "__main__":
    sys.exit(main())
