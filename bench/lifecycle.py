"""Lifecycle benchmark: how fast streamworker gives partitions up on a rebalance and stops on SIGTERM.

Run from the repository root::

    .venv/bin/python bench/lifecycle.py [--runs 3]

It starts its own local Tansu broker (``devtools.broker.LocalBroker``), runs real
``python -m streamworker --config function.yaml`` processes against it, prints progress, prints a table
of medians and writes (or replaces) the ``lifecycle`` section of ``bench/RESULTS.md``, with the machine
it ran on. Every run uses a fresh topic and consumer group and the "quick" timeout profile of
``/work/shared/notes/broker.md`` (sessionTimeout 2s, heartbeatInterval 400ms, maxPollInterval 30s),
cooperative-sticky, 4 partitions, numWorkers 2, maxWaitHandlerDuringRebalance 5s.

Scenarios (each repeated ``--runs`` times):

1. ``revoke-idle``: instance A runs alone and has handled every record; instance B joins the group.
   Measured: ``took_ms`` of A's "partitions revoked" line (revoke callback start -> partitions released,
   including the drain callbacks and the synchronous commit), and, for information, the wall time from
   starting B to B's first non-empty "partitions assigned" line.
2. ``revoke-busy``: the same, but the handler sleeps 1 s per record and records keep arriving: one record
   per partition is produced right before B starts (B starts once A logged that a handler started),
   then a feeder keeps producing one record every ``FEED_INTERVAL_S`` seconds, round robin over the
   partitions. The handler and drain-callback log lines show where the revoke's time went.
3. ``sigterm-idle``: one instance, idle after handling a few records, gets SIGTERM. Measured: wall time
   from sending SIGTERM to the process exit, and ``took_ms`` of its "stopped" line.

This is a benchmark, not a test: a goal that is missed is reported, not asserted. The exit code is 1
only when a run could not be completed at all.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import confluent_kafka
from common import (
    QUICK_PROFILE,
    REPO,
    RESULTS_PATH,
    BenchError,
    fmt_ms,
    machine_info,
    say,
    unique,
    wait_until,
    write_section,
)

from devtools.broker import (
    LocalBroker,
    Record,
    committed_offsets,
    create_topics,
    die_with_parent_preexec_fn,
    produce,
)

SECTION_BEGIN = "<!-- lifecycle:begin (written by bench/lifecycle.py; edits inside are overwritten) -->"
SECTION_END = "<!-- lifecycle:end -->"
COMMAND = ".venv/bin/python bench/lifecycle.py --runs {runs}"

PARTITIONS = 4
NUM_WORKERS = 2
MAX_WAIT_HANDLER_DURING_REBALANCE = "5s"
WORKER_TERMINATION_TIMEOUT = "10s"
BUSY_HANDLER_S = 1.0
# Feeder for scenario 2: one record every 0.6 s, round robin over the partitions (1.67 records/s, below
# the 2 records/s that 2 workers x 1 s handlers can take, so no backlog builds up after the first burst).
FEED_INTERVAL_S = 0.6
WARMUP_RECORDS_PER_PARTITION = 2

GOAL_REVOKE_IDLE_MS = 200.0
GOAL_REVOKE_BUSY_MS = BUSY_HANDLER_S * 1000 + 200.0
GOAL_SIGTERM_MS = 1000.0
# Nuclio's default workerTerminationTimeout: it waits all of it on every rebalance drain, because its
# workers never report "drain done" (/work/shared/notes/nuclio-facts.md, "Where Nuclio falls short").
NUCLIO_DRAIN_MS = 10_000.0

HANDLER_SOURCE = '''\
"""Benchmark handler: sleeps BENCH_SLEEP_S per record; logs start, end and its drain callback."""

import os
import time

SLEEP_S = float(os.environ.get("BENCH_SLEEP_S", "0"))
INSTANCE = os.environ.get("BENCH_INSTANCE", "?")


def init_context(context):
    def on_drain():
        context.logger.info_with("bench drain callback", instance=INSTANCE, worker_id=context.worker_id)

    context.platform.set_drain_callback(on_drain)


def handler(context, event):
    context.logger.info_with("bench handler started", instance=INSTANCE)
    if SLEEP_S:
        time.sleep(SLEEP_S)
    context.logger.info_with("bench handler done", instance=INSTANCE)
    return "ok"
'''


def parse_ts(value: str) -> float:
    """ISO-8601 (as written by structlog, UTC) -> seconds since the epoch."""
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class LogLine:
    """One JSON log line of a streamworker process (supervisor or worker)."""

    received: float  # wall clock when the benchmark read it
    data: dict[str, Any]

    @property
    def message(self) -> str | None:
        message = self.data.get("message")
        return message if isinstance(message, str) else None

    @property
    def ts(self) -> float:
        """When the process wrote it (its ``timestamp``), seconds since the epoch."""
        raw = self.data.get("timestamp")
        return parse_ts(raw) if isinstance(raw, str) else self.received

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


class Instance:
    """``python -m streamworker --config ...`` as a subprocess, with its log lines collected."""

    def __init__(self, name: str, config: Path) -> None:
        self.name = name
        self.lines: list[LogLine] = []
        self._cond = threading.Condition()
        # Two instances run at once: each takes a free port for its health server (default 8082).
        env = {**os.environ, "BENCH_INSTANCE": name, "STREAMWORKER_HEALTH_ADDR": "127.0.0.1:0"}
        self.started_wall = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamworker", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=str(REPO),
            preexec_fn=die_with_parent_preexec_fn(),  # dies with the benchmark, whatever happens
            start_new_session=True,  # its workers share its process group: killpg cleans up all
        )
        self.exit_wall: float | None = None
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for raw in stream:
            received = time.time()
            try:
                data = json.loads(raw)
            except ValueError:
                data = {"message": None, "raw": raw.rstrip()}
            if not isinstance(data, dict):
                data = {"message": None, "raw": raw.rstrip()}
            with self._cond:
                self.lines.append(LogLine(received, data))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def find(self, predicate: Callable[[LogLine], bool], start: int = 0) -> list[LogLine]:
        with self._cond:
            return [line for line in self.lines[start:] if predicate(line)]

    def wait_for(
        self, predicate: Callable[[LogLine], bool], timeout: float, what: str, start: int = 0
    ) -> LogLine:
        """The first line from index *start* on that matches; BenchError on timeout or process exit."""
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self.lines):
                    line = self.lines[index]
                    index += 1
                    if predicate(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BenchError(f"{self.name}: no {what} within {timeout:g}s\n{self.tail()}")
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise BenchError(
                        f"{self.name} exited ({self.proc.returncode}) before {what}\n{self.tail()}"
                    )
                self._cond.wait(min(remaining, 0.2))

    def tail(self, count: int = 25) -> str:
        with self._cond:
            shown = self.lines[-count:]
        return "\n".join(f"    {self.name}| {json.dumps(line.data, default=str)}" for line in shown)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the exit (killing the process group on timeout); return the exit code."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(f"{self.name} did not exit within {timeout:g}s\n{self.tail()}") from None
        finally:
            self.exit_wall = self.exit_wall or time.time()
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._reader.join(timeout=5)


def stop_all(instances: Iterable[Instance], timeout: float = 30.0) -> list[str]:
    """SIGTERM every running instance at once, wait for them; return problems (not raised)."""
    problems: list[str] = []
    running = [inst for inst in instances if inst.proc.poll() is None]
    for inst in running:
        inst.signal(signal.SIGTERM)
    for inst in running:
        try:
            code = inst.wait(timeout)
        except BenchError as exc:
            problems.append(str(exc).splitlines()[0])
            continue
        if code != 0:
            problems.append(f"{inst.name} exited with code {code} on SIGTERM")
    return problems


def is_message(message: str) -> Callable[[LogLine], bool]:
    return lambda line: line.message == message


def assigned_nonempty(line: LogLine) -> bool:
    return line.message == "partitions assigned" and bool(line.get("partitions"))


def partition_numbers(names: Iterable[str]) -> set[int]:
    return {int(name.rsplit("/", 1)[1]) for name in names}


# ---------------------------------------------------------------------------------- function setup


def write_function(
    folder: Path, bootstrap: str, topic: str, group: str, sleep_s: float, *, name: str = "bench"
) -> Path:
    """Write the handler and a function.yaml (JSON is YAML) into *folder*; return the config path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text(HANDLER_SOURCE, encoding="utf-8")
    config = {
        "metadata": {"name": name},
        "spec": {
            "handler": "main:handler",
            "env": [{"name": "BENCH_SLEEP_S", "value": str(sleep_s)}],
            "triggers": {
                "bench": {
                    "kind": "kafka-cluster",
                    "numWorkers": NUM_WORKERS,
                    "workerTerminationTimeout": WORKER_TERMINATION_TIMEOUT,
                    "attributes": {
                        "brokers": [bootstrap],
                        "topics": [topic],
                        "consumerGroup": group,
                        "initialOffset": "earliest",
                        "workerAllocationMode": "pool",
                        "balanceStrategy": "cooperative-sticky",
                        "maxWaitHandlerDuringRebalance": MAX_WAIT_HANDLER_DURING_REBALANCE,
                        **QUICK_PROFILE,
                    },
                }
            },
        },
    }
    path = folder / "function.yaml"
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


@dataclass
class Setup:
    bootstrap: str
    workdir: Path
    topic: str
    group: str
    config: Path


def new_setup(bootstrap: str, root: Path, scenario: str, run: int, sleep_s: float) -> Setup:
    topic, group = unique(f"bench-{scenario}-{run}"), unique(f"bench-{scenario}-{run}-group")
    create_topics(bootstrap, {topic: PARTITIONS})
    workdir = root / f"{scenario}-{run}"
    config = write_function(workdir, bootstrap, topic, group, sleep_s)
    return Setup(bootstrap, workdir, topic, group, config)


def warm_up(setup: Setup, inst: Instance) -> dict[int, int]:
    """Produce a few records, wait until *inst* owns all partitions, handled them and committed them."""
    records = [
        Record(value=f"warmup-{p}-{i}", partition=p)
        for p in range(PARTITIONS)
        for i in range(WARMUP_RECORDS_PER_PARTITION)
    ]
    end = produce(setup.bootstrap, setup.topic, records)
    inst.wait_for(assigned_nonempty, 40, "partitions assigned")
    count = len(records)
    wait_until(
        lambda: len(inst.find(is_message("bench handler done"))) >= count, 30, f"{count} records handled"
    )
    wait_until(
        lambda: committed_offsets(setup.bootstrap, setup.group, setup.topic, PARTITIONS) == end,
        15,
        "committed offsets == end offsets",
        interval=0.1,
    )
    return end


class Feeder:
    """Produces one record every *interval* seconds, round robin over the partitions, in a thread."""

    def __init__(self, bootstrap: str, topic: str, interval: float) -> None:
        self.topic = topic
        self.interval = interval
        self.sent = 0
        self.failed = 0
        self._producer = confluent_kafka.Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all", "log.connection.close": False}
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def _on_delivery(self, err: confluent_kafka.KafkaError | None, _msg: confluent_kafka.Message) -> None:
        if err is not None:
            self.failed += 1

    def _run(self) -> None:
        partition = 0
        while not self._stop.wait(self.interval):  # pacing, not waiting for a condition
            self._producer.produce(
                self.topic, value=f"feed-{self.sent}", partition=partition, on_delivery=self._on_delivery
            )
            self._producer.poll(0)
            self.sent += 1
            partition = (partition + 1) % PARTITIONS

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._producer.flush(10)


# ---------------------------------------------------------------------------------------- scenarios

Metrics = dict[str, Any]


def revoke_scenario(bootstrap: str, root: Path, run: int, busy: bool) -> Metrics:
    scenario = "revoke-busy" if busy else "revoke-idle"
    setup = new_setup(bootstrap, root, scenario, run, BUSY_HANDLER_S if busy else 0.0)
    instances: list[Instance] = []
    feeder: Feeder | None = None
    metrics: Metrics = {"problems": []}
    try:
        a = Instance("A", setup.config)
        instances.append(a)
        if busy:
            a.wait_for(assigned_nonempty, 40, "partitions assigned")
            mark = a.mark()
            produce(
                bootstrap, setup.topic, [Record(value=f"burst-{p}", partition=p) for p in range(PARTITIONS)]
            )
            a.wait_for(is_message("bench handler started"), 20, "a handler start", start=mark)
            feeder = Feeder(bootstrap, setup.topic, FEED_INTERVAL_S)
            feeder.start()
        else:
            warm_up(setup, a)
            mark = a.mark()
        b = Instance("B", setup.config)
        instances.append(b)
        revoke = a.wait_for(is_message("partitions revoked"), 40, "partitions revoked", start=mark)
        b_assigned = b.wait_for(assigned_nonempty, 40, "partitions assigned")
        b_consuming = b.find(is_message("consuming"))
        if feeder is not None:
            feeder.stop()
            metrics["fed_records"] = feeder.sent
            feeder = None

        took_ms = float(revoke.get("took_ms"))
        metrics.update(
            revoke_ms=took_ms,
            b_assigned_ms=(b_assigned.ts - b.started_wall) * 1000,
            b_subscribe_to_assigned_ms=(b_assigned.ts - b_consuming[0].ts) * 1000 if b_consuming else None,
            revoked=revoke.get("partitions"),
            drained_workers=revoke.get("drained_workers"),
            killed_workers=revoke.get("killed_workers"),
            committed=revoke.get("committed"),
            dropped_buffered=revoke.get("dropped_buffered"),
        )
        if busy:
            metrics.update(busy_breakdown(a, revoke, mark))
        metrics["problems"] += [
            f"A: {line.get('level')}: {line.message}"
            for line in a.find(lambda line: line.get("level") in ("warning", "error"), start=mark)
        ]
    finally:
        if feeder is not None:
            feeder.stop()
        metrics["problems"] += stop_all(instances)
    return metrics


# One handler call seen in the logs: (partition, offset), start, end (None: it never finished).
HandlerRun = tuple[tuple[Any, Any], float, float | None]


def busy_breakdown(a: Instance, revoke: LogLine, mark: int) -> Metrics:
    """Where the busy revoke's time went, from A's handler and drain-callback log lines."""
    end = revoke.ts
    start = end - float(revoke.get("took_ms")) / 1000
    revoked = partition_numbers(revoke.get("partitions") or [])
    starts = {
        (ln.get("partition"), ln.get("offset")): ln.ts
        for ln in a.find(is_message("bench handler started"), mark)
    }
    dones = {
        (ln.get("partition"), ln.get("offset")): ln.ts
        for ln in a.find(is_message("bench handler done"), mark)
    }
    running_at_start: list[HandlerRun] = []  # handlers of revoked partitions running at the revoke start
    ran_during: list[HandlerRun] = []  # revoked partitions' handlers started during the revoke (queued)
    other_running: list[HandlerRun] = []  # handlers of kept partitions running at the revoke start
    for key, began in starts.items():
        partition, _offset = key
        finished = dones.get(key)
        if began <= start and (finished is None or finished > start):
            (running_at_start if partition in revoked else other_running).append((key, began, finished))
        elif start < began <= end and partition in revoked:
            ran_during.append((key, began, finished))
    revoked_done = [f for _, _, f in running_at_start + ran_during if f is not None and f <= end + 0.05]
    handlers_done_at = max(revoked_done) if revoked_done else start
    drains = [
        ln for ln in a.find(is_message("bench drain callback"), mark) if start - 0.05 <= ln.ts <= end + 0.05
    ]
    drains_done_at = max((ln.ts for ln in drains), default=handlers_done_at)
    return {
        "timeline": timeline(a, start, end, mark),
        "inflight_at_revoke": len(running_at_start),
        "inflight_elapsed_ms": [round((start - began) * 1000) for _, began, _ in running_at_start],
        "queued_ran_during_revoke": len(ran_during),
        "kept_running_at_revoke": len(other_running),
        "wait_handlers_ms": (handlers_done_at - start) * 1000,
        "wait_drain_ms": max(0.0, drains_done_at - handlers_done_at) * 1000,
        "after_drain_ms": max(0.0, end - max(drains_done_at, handlers_done_at)) * 1000,
    }


def timeline(a: Instance, start: float, end: float, mark: int) -> list[str]:
    """A's handler and drain lines from 1.2 s before the revoke to its end, in ms from the revoke start."""
    kinds = {"bench handler started": "start", "bench handler done": "done", "bench drain callback": "drain"}
    out = []
    for line in a.find(lambda ln: ln.message in kinds, mark):
        if start - 1.2 <= line.ts <= end + 0.05:
            what = kinds[str(line.message)]
            record = f" p{line.get('partition')}@{line.get('offset')}" if what != "drain" else ""
            out.append(f"{(line.ts - start) * 1000:+.0f} w{line.get('worker')} {what}{record}")
    out.append(f"{(end - start) * 1000:+.0f} revoked")
    return out


def sigterm_scenario(bootstrap: str, root: Path, run: int) -> Metrics:
    setup = new_setup(bootstrap, root, "sigterm-idle", run, 0.0)
    inst = Instance("S", setup.config)
    metrics: Metrics = {"problems": []}
    try:
        warm_up(setup, inst)
        mark = inst.mark()
        sent_wall = time.time()
        sent = time.monotonic()
        inst.signal(signal.SIGTERM)
        try:
            code = inst.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise BenchError(f"S did not exit within 30 s of SIGTERM\n{inst.tail()}") from None
        exit_ms = (time.monotonic() - sent) * 1000
        inst.exit_wall = time.time()
        inst.wait(5)
        stopping = inst.find(is_message("stopping"), mark)
        stopped = inst.find(is_message("stopped"), mark)
        exiting = inst.find(is_message("exiting"), mark)
        if not stopped:
            raise BenchError(f"no 'stopped' line after SIGTERM (exit code {code})\n{inst.tail()}")
        metrics.update(
            exit_ms=exit_ms,
            exit_code=code,
            stopped_ms=float(stopped[0].get("took_ms")),
            signal_to_stopping_ms=(stopping[0].ts - sent_wall) * 1000 if stopping else None,
            exiting_to_exit_ms=(inst.exit_wall - exiting[0].ts) * 1000 if exiting else None,
        )
        if code != 0:
            metrics["problems"].append(f"exit code {code}")
        metrics["problems"] += [
            f"S: {line.get('level')}: {line.message}"
            for line in inst.find(lambda line: line.get("level") in ("warning", "error"), start=mark)
        ]
    finally:
        if inst.proc.poll() is None:
            inst.kill()
    return metrics


# ------------------------------------------------------------------------------------------ results


@dataclass
class Row:
    label: str
    key: str
    scenario: str
    goal_ms: float | None
    nuclio: str


@dataclass
class Results:
    runs: int
    by_scenario: dict[str, list[Metrics]] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)


ROWS = (
    Row(
        "1. Revoke, idle workers: A's `partitions revoked` took_ms",
        "revoke_ms",
        "revoke-idle",
        GOAL_REVOKE_IDLE_MS,
        "~10 000 ms (full workerTerminationTimeout)",
    ),
    Row("   info: B start -> B `partitions assigned` (wall)", "b_assigned_ms", "revoke-idle", None, ""),
    Row(
        "   info: B subscribe -> B `partitions assigned`",
        "b_subscribe_to_assigned_ms",
        "revoke-idle",
        None,
        "",
    ),
    Row(
        "2. Revoke, 1 s handler in flight: A's `partitions revoked` took_ms",
        "revoke_ms",
        "revoke-busy",
        GOAL_REVOKE_BUSY_MS,
        "~10 000 ms (full workerTerminationTimeout)",
    ),
    Row("   of which: waiting for revoked partitions' handlers", "wait_handlers_ms", "revoke-busy", None, ""),
    Row("   of which: then waiting for drain callbacks", "wait_drain_ms", "revoke-busy", None, ""),
    Row(
        "   of which: after the last drain callback (commit, release)",
        "after_drain_ms",
        "revoke-busy",
        None,
        "",
    ),
    Row("   info: B start -> B `partitions assigned` (wall)", "b_assigned_ms", "revoke-busy", None, ""),
    Row(
        "3. SIGTERM -> process exit, idle workers (wall)",
        "exit_ms",
        "sigterm-idle",
        GOAL_SIGTERM_MS,
        "no LeaveGroup: partitions wait for sessionTimeout (10 s default)",
    ),
    Row("   `stopped` took_ms", "stopped_ms", "sigterm-idle", None, ""),
    Row("   info: SIGTERM -> `stopping` line", "signal_to_stopping_ms", "sigterm-idle", None, ""),
    Row("   info: `exiting` line -> process gone", "exiting_to_exit_ms", "sigterm-idle", None, ""),
)


def values(results: Results, row: Row) -> list[float]:
    return [
        float(m[row.key]) for m in results.by_scenario.get(row.scenario, []) if m.get(row.key) is not None
    ]


def table(results: Results) -> list[str]:
    head = "| Measurement (ms) | Goal | Median | Min | Max | Runs | Goal met (median) | Nuclio |"
    lines = [head, "|---|---:|---:|---:|---:|---:|:---:|---|"]
    for row in ROWS:
        vals = values(results, row)
        ok_runs = len(results.by_scenario.get(row.scenario, []))
        median = statistics.median(vals) if vals else None
        goal = f"≤ {row.goal_ms:,.0f}" if row.goal_ms is not None else ""
        met = ""
        if row.goal_ms is not None:
            met = "-" if median is None else ("yes" if median <= row.goal_ms else "**no**")
        lines.append(
            f"| {row.label} | {goal} | {fmt_ms(median)} | {fmt_ms(min(vals) if vals else None)} | "
            f"{fmt_ms(max(vals) if vals else None)} | {len(vals)}/{results.runs if ok_runs or vals else 0} | "
            f"{met} | {row.nuclio} |"
        )
    return lines


def per_run_lines(results: Results) -> list[str]:
    out: list[str] = []
    for scenario, runs in results.by_scenario.items():
        for index, metrics in enumerate(runs, 1):
            shown = {
                k: (round(v, 1) if isinstance(v, float) else v)
                for k, v in metrics.items()
                if v not in (None, [])
            }
            out.append(f"- `{scenario}` run {index}: `{json.dumps(shown, default=str)}`")
    for scenario, errors in results.failures.items():
        for error in errors:
            out.append(f"- `{scenario}` FAILED: {error}")
    return out


def section(results: Results, info: list[tuple[str, str]]) -> str:
    lines = [
        SECTION_BEGIN,
        "## Lifecycle: revoke and shutdown latency",
        "",
        f"Command: `{COMMAND.format(runs=results.runs)}` (starts its own local broker).",
        "",
        "Setup per run: fresh topic and group; 4 partitions, numWorkers 2, workerAllocationMode pool, "
        "cooperative-sticky; quick profile (sessionTimeout 2s, heartbeatInterval 400ms, "
        "maxPollInterval 30s); "
        f"maxWaitHandlerDuringRebalance {MAX_WAIT_HANDLER_DURING_REBALANCE}; "
        f"workerTerminationTimeout {WORKER_TERMINATION_TIMEOUT}. Scenario 2: the handler sleeps "
        f"{BUSY_HANDLER_S:g} s; one record per partition right before B starts (B starts once A logged a "
        f"handler start), then one record every {FEED_INTERVAL_S:g} s round robin until B is assigned.",
        "",
        "| Machine | |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in info],
        "",
        *table(results),
        "",
        "Nuclio column: Nuclio (1.14.x) signals every worker to drain on a rebalance and then always waits "
        "the full workerTerminationTimeout (10 s default) because its workers never report that the drain is "
        "done; on shutdown it never closes the consumer, so partitions move only after the session timeout. "
        'Source: `/work/shared/notes/nuclio-facts.md` ("Where Nuclio falls short"), read from Nuclio\'s '
        "source and issue tracker; not measured here.",
        "",
        "Per run (raw):",
        "",
        *per_run_lines(results),
        SECTION_END,
    ]
    return "\n".join(lines) + "\n"


def write_results(path: Path, text: str) -> None:
    """Replace the lifecycle section of *path*, or append it (creating the file if needed)."""
    write_section(path, text, SECTION_BEGIN, SECTION_END)


# --------------------------------------------------------------------------------------------- main


SCENARIOS = ("revoke-idle", "revoke-busy", "sigterm-idle")


def run_one(scenario: str, bootstrap: str, root: Path, run: int) -> Metrics:
    if scenario == "revoke-idle":
        return revoke_scenario(bootstrap, root, run, busy=False)
    if scenario == "revoke-busy":
        return revoke_scenario(bootstrap, root, run, busy=True)
    return sigterm_scenario(bootstrap, root, run)


def progress_line(scenario: str, metrics: Metrics) -> str:
    if scenario == "sigterm-idle":
        exit_ms, stopped_ms = fmt_ms(metrics.get("exit_ms")), fmt_ms(metrics.get("stopped_ms"))
        text = f"exit {exit_ms} ms, stopped took_ms {stopped_ms}"
    else:
        text = (
            f"A revoke took_ms {fmt_ms(metrics.get('revoke_ms'))} ({metrics.get('revoked')}, "
            f"drained {metrics.get('drained_workers')}, killed {metrics.get('killed_workers')}); "
            f"B assigned after {fmt_ms(metrics.get('b_assigned_ms'))} ms"
        )
        if scenario == "revoke-busy":
            handlers, drain = fmt_ms(metrics.get("wait_handlers_ms")), fmt_ms(metrics.get("wait_drain_ms"))
            text += (
                f"; in flight at revoke {metrics.get('inflight_at_revoke')} "
                f"(running for {metrics.get('inflight_elapsed_ms')} ms), queued ran during revoke "
                f"{metrics.get('queued_ran_during_revoke')}; wait for handlers {handlers} ms, then for "
                f"drain callbacks {drain} ms, then {fmt_ms(metrics.get('after_drain_ms'))} ms"
                f"\n    A timeline (ms from revoke start): {'; '.join(metrics.get('timeline') or [])}"
            )
    if metrics.get("problems"):
        text += f"; problems: {metrics['problems']}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (default 3)")
    parser.add_argument(
        "--only", choices=SCENARIOS, action="append", help="run only this scenario (repeatable)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS_PATH, help="markdown file to update")
    parser.add_argument("--no-write", action="store_true", help="do not update the results file")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    scenarios = [s for s in SCENARIOS if not args.only or s in args.only]
    results = Results(runs=args.runs)
    info = machine_info()
    say("streamworker lifecycle benchmark")
    for key, value in info:
        say(f"  {key}: {value}")
    with tempfile.TemporaryDirectory(prefix="streamworker-bench-") as tmp, LocalBroker() as broker:
        say(f"\nlocal broker on {broker.bootstrap}")
        for scenario in scenarios:
            results.by_scenario[scenario] = []
            for run in range(1, args.runs + 1):
                say(f"[{scenario}] run {run}/{args.runs} ...")
                started = time.monotonic()
                try:
                    metrics = run_one(scenario, broker.bootstrap, Path(tmp), run)
                except BenchError as exc:
                    say(f"[{scenario}] run {run} FAILED: {exc}")
                    results.failures.setdefault(scenario, []).append(str(exc).splitlines()[0])
                    continue
                results.by_scenario[scenario].append(metrics)
                took = time.monotonic() - started
                say(f"[{scenario}] run {run}: {progress_line(scenario, metrics)} [{took:.1f}s]")
    say("")
    for line in table(results):
        say(line)
    if not args.no_write:
        write_results(args.results, section(results, info))
        say(f"\nwrote the lifecycle section of {args.results}")
    return 1 if results.failures else 0


if __name__ == "__main__":
    sys.exit(main())
