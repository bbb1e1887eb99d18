"""Throughput benchmark (issue #5): streamworker against a raw confluent-kafka loop and its peers.

Run from the repository root (``make bench`` does both steps)::

    .venv/bin/pip install -e '.[dev,bench]'
    .venv/bin/python bench/throughput.py [--quick] [--runs N] [--only PATTERN] [--quix-python PATH]

It starts its own local Tansu broker (``streamworker.devbroker.LocalBroker``), prints progress while it
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
import fnmatch
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import common
import workloads
from common import BenchError, fmt_ms, say, unique
from confluent_kafka import Consumer, KafkaException, TopicPartition

from devtools.broker import LocalBroker, Record, create_topics, die_with_parent_preexec_fn, produce

BENCH_DIR = Path(__file__).resolve().parent
PEERS = BENCH_DIR / "peers.py"
SECTION_BEGIN = "<!-- throughput:begin (written by bench/throughput.py; edits inside are overwritten) -->"
SECTION_END = "<!-- throughput:end -->"

VALUE_BYTES = 100
KEYS = 1000
POLL_INTERVAL_S = 0.025
PROGRESS_EVERY_S = 2.0
STATS_FLUSH_WAIT_S = workloads.FLUSH_INTERVAL_S + 0.15
STOP_TIMEOUT_S = 30.0
WORKER_TERMINATION_TIMEOUT = "5s"
ARROYO_PROCESSES = 2

# Goals of issue #5 (reported, not asserted).
GOAL_NOOP_VS_RAW = 0.35
GOAL_NOOP_VS_PEERS = 2.0
GOAL_CPU_SCALING = 1.8
GOAL_KEY_VS_POOL = 3.5
GOAL_BACKLOG_RSS_MB = 150.0


@dataclass(frozen=True)
class Sizes:
    noop: int
    cpu: int
    io: int
    latency_seconds: float
    backlog_records: int
    backlog_seconds: float
    profile_records: int


FULL = Sizes(200_000, 4_000, 2_000, 5.0, 1_000_000, 10.0, 600_000)
QUICK = Sizes(20_000, 400, 200, 1.5, 100_000, 3.0, 60_000)


@dataclass(frozen=True)
class Workload:
    name: str
    label: str
    partitions: int

    def records(self, sizes: Sizes) -> int:
        if self.name in ("noop", NOOP_OUT):
            return sizes.noop
        if self.name == "cpu":
            return sizes.cpu
        return sizes.io


# The no-op handler returning its input to an output topic (issue #18), next to the no-op row.
NOOP_OUT = "noop-out"

WORKLOADS = (
    Workload("noop", "no-op, 4 partitions", 4),
    Workload(NOOP_OUT, "no-op returning its input to an output topic (outputTopic), 4 partitions", 4),
    Workload("cpu", "1 ms CPU per record (busy loop), 4 partitions", 4),
    Workload("io", "5 ms blocking sleep per record (sync handler), 1 partition, 1,000 keys", 1),
    Workload("aio", "5 ms `await asyncio.sleep` per record (async handler), 1 partition, 1,000 keys", 1),
)


@dataclass(frozen=True)
class Contender:
    name: str
    label: str
    kind: str  # raw | streamworker | arroyo | quix
    mode: str = ""
    workers: int = 1


def all_contenders(key_mode: bool) -> list[Contender]:
    out = [Contender("raw", "raw confluent-kafka loop (ceiling)", "raw")]
    for mode in ("pool", "static", "key"):
        if mode == "key" and not key_mode:
            continue
        for workers in (1, 2, 4):
            label = f"streamworker {mode}, {workers} worker{'s' if workers > 1 else ''}"
            out.append(Contender(f"sw-{mode}-{workers}", label, "streamworker", mode, workers))
    out.append(Contender("arroyo-run-task", "sentry-arroyo RunTask (in-process)", "arroyo", workers=1))
    out.append(
        Contender(
            f"arroyo-mp-{ARROYO_PROCESSES}",
            f"sentry-arroyo RunTaskWithMultiprocessing, {ARROYO_PROCESSES} processes",
            "arroyo",
            workers=ARROYO_PROCESSES,
        )
    )
    out.append(Contender("quix", "Quix Streams (Application, sdf.update)", "quix"))
    return out


QUICK_CONTENDERS = {"raw", "sw-pool-2", "sw-static-2", "sw-key-2", "arroyo-run-task", "arroyo-mp-2", "quix"}
PEER_NAMES = ("arroyo-run-task", f"arroyo-mp-{ARROYO_PROCESSES}", "quix")


def applies(workload: str, contender: Contender) -> bool:
    """Outputs are streamworker's feature: noop-out runs on its 2-worker contenders only."""
    return workload != NOOP_OUT or (contender.kind == "streamworker" and contender.workers == 2)


def default_runs(workload: str, contender: str) -> int:
    """3 runs where a goal compares the figure, else 1 (see the section text)."""
    if workload == "noop" and (contender == "raw" or contender.endswith("-2") or contender in PEER_NAMES):
        return 3
    if workload == "cpu" and contender.startswith("sw-") and contender[-2:] in ("-1", "-2"):
        return 3
    if workload in ("io", "aio") and contender in ("sw-pool-4", "sw-key-4"):
        return 3
    return 1


Metrics = dict[str, Any]


@dataclass
class Context:
    bootstrap: str
    root: Path
    sizes: Sizes
    quick: bool
    runs: int | None
    only: list[str]
    quix_python: str | None
    profiler: str
    contenders: list[Contender]
    results: dict[str, list[Metrics]] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    topics: dict[str, tuple[str, dict[int, int]]] = field(default_factory=dict)
    broker_pid: int | None = None
    settle_s: float = 20.0

    def selected(self, run_id: str) -> bool:
        if not self.only:
            return True
        parts = run_id.split("/")
        return any(fnmatch.fnmatchcase(run_id, pattern) or pattern in parts for pattern in self.only)

    def runs_for(self, workload: str, contender: str) -> int:
        if self.runs is not None:
            return self.runs
        return 1 if self.quick else default_runs(workload, contender)


# ------------------------------------------------------------------------------------ processes


class OffsetPoller:
    """Reads a group's committed offsets (OffsetFetch, without joining the group)."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "log.connection.close": False,
            }
        )
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]

    def read(self) -> dict[int, int]:
        try:
            result = self._consumer.committed(self._tps, timeout=5)
        except KafkaException:
            return {}
        return {tp.partition: tp.offset for tp in result if tp.error is None and tp.offset >= 0}

    def close(self) -> None:
        self._consumer.close()


def reached(committed: dict[int, int], end: dict[int, int]) -> bool:
    return all(committed.get(p, -1) >= offset for p, offset in end.items())


def committed_total(committed: dict[int, int]) -> int:
    return sum(committed.values())


class Running:
    """One contender process (and its children), its log file and its stats folder."""

    def __init__(
        self, name: str, cmd: list[str], env: dict[str, str], workdir: Path, stats_dir: Path
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.stats_dir = stats_dir
        self.log_path = workdir / "output.log"
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.launched = time.time()
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(workdir),
            preexec_fn=die_with_parent_preexec_fn(),  # dies with the benchmark, whatever happens
            start_new_session=True,  # its children share its process group: killpg cleans up all
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def first_record_seen(self) -> bool:
        """Whether a handler has handled a record yet (BenchError if the process is gone)."""
        self.check_alive()
        return workloads.read_stats(self.stats_dir)[0] is not None

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with code {self.proc.returncode}\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(f"    {self.name}| {line}" for line in text.splitlines()[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait; SIGKILL the process group on timeout. Returns the exit code (None: killed)."""
        code: int | None = None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
        else:
            code = self.proc.returncode
        # Whatever is left of the group (arroyo's pool, a worker that outlived its supervisor).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._log.close()
        return code


HANDLER_SOURCE = '''\
"""streamworker benchmark handler, generated by bench/throughput.py (see bench/workloads.py)."""

import datetime
import os
import sys

sys.path.insert(0, os.environ["BENCH_DIR"])

EPOCH = datetime.datetime(1970, 1, 1)

import workloads  # noqa: E402

WORKLOAD = os.environ.get("BENCH_WORKLOAD", "noop")
LATENCY = os.environ.get("BENCH_LATENCY") == "1"
recorder = workloads.Recorder.from_env()
record = recorder.record
# noop-out: the no-op handler whose return value goes to attributes.outputTopic.
RETURN_INPUT = WORKLOAD == "noop-out"


def timestamp_ms(event):
    ts = event.timestamp  # naive UTC, as in Nuclio
    return (ts - EPOCH).total_seconds() * 1000.0 if ts is not None else None


if WORKLOAD == "aio":
    work = workloads.async_work(WORKLOAD)

    async def handler(context, event):
        record(timestamp_ms(event) if LATENCY else None)
        await work()

elif RETURN_INPUT:

    def handler(context, event):
        record(timestamp_ms(event) if LATENCY else None)
        return event.body

else:
    work = workloads.sync_work(WORKLOAD)

    def handler(context, event):
        record(timestamp_ms(event) if LATENCY else None)
        work()
'''


def streamworker_config(
    workdir: Path,
    bootstrap: str,
    topic: str,
    group: str,
    mode: str,
    workers: int,
    output_topic: str | None = None,
) -> Path:
    """Write main.py and function.yaml (JSON is YAML) into *workdir*; return the config path."""
    (workdir / "main.py").write_text(HANDLER_SOURCE, encoding="utf-8")
    config = {
        "metadata": {"name": "bench"},
        "spec": {
            "handler": "main:handler",
            "triggers": {
                "bench": {
                    "kind": "kafka-cluster",
                    "numWorkers": workers,
                    "workerTerminationTimeout": WORKER_TERMINATION_TIMEOUT,
                    "attributes": {
                        "brokers": [bootstrap],
                        "topics": [topic],
                        "consumerGroup": group,
                        "initialOffset": "earliest",
                        "workerAllocationMode": mode,
                        **common.QUICK_PROFILE,
                        **({"outputTopic": output_topic} if output_topic else {}),
                    },
                }
            },
        },
    }
    path = workdir / "function.yaml"
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def launch(
    ctx: Context,
    contender: Contender,
    *,
    run_id: str,
    topic: str,
    group: str,
    workload: str,
    latency: bool,
    expected: int | None,
    supervisor_cmd: Callable[[Path], list[str]] | None = None,
) -> Running:
    """Start *contender* on *topic* with a fresh stats folder."""
    workdir = ctx.root / unique(run_id.replace("/", "_"))  # a new folder per attempt
    stats_dir = workdir / "stats"
    stats_dir.mkdir(parents=True)
    env = {
        **os.environ,
        "BENCH_DIR": str(BENCH_DIR),
        "BENCH_WORKLOAD": workload,
        "BENCH_STATS_DIR": str(stats_dir),
        "BENCH_LATENCY": "1" if latency else "0",
        # streamworker's health server (default 0.0.0.0:8082) on a free port: runs never collide.
        "STREAMWORKER_HEALTH_ADDR": "127.0.0.1:0",
    }
    if contender.kind == "streamworker":
        output_topic = None
        if workload == NOOP_OUT:
            output_topic = f"{topic}-out-{contender.name}"
            create_topics(ctx.bootstrap, {output_topic: 4})
        config = streamworker_config(
            workdir, ctx.bootstrap, topic, group, contender.mode, contender.workers, output_topic
        )
        cmd = (
            supervisor_cmd(config)
            if supervisor_cmd is not None
            else [sys.executable, "-m", "streamworker", "--config", str(config), "--log-level", "info"]
        )
        return Running(contender.name, cmd, env, workdir, stats_dir)
    spec: dict[str, Any] = {
        "kind": contender.kind,
        "bootstrap": ctx.bootstrap,
        "topic": topic,
        "group": group,
        "workload": workload,
        "latency": latency,
        "stats_dir": str(stats_dir),
        "expected": expected,
        "processes": contender.workers if contender.kind == "arroyo" and contender.workers > 1 else 0,
    }
    python = sys.executable
    if contender.kind == "quix":
        if ctx.quix_python is None:
            raise BenchError("no Quix Streams interpreter (--quix-python)")
        python = ctx.quix_python
    return Running(contender.name, [python, str(PEERS), json.dumps(spec)], env, workdir, stats_dir)


def wait_committed(
    poller: OffsetPoller,
    end: dict[int, int],
    running: Running,
    timeout: float,
    label: str,
    since: float | None = None,
) -> float:
    """Poll until committed == end; return the wall time it was first seen. Prints progress."""
    total = sum(end.values())
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    next_progress = started + PROGRESS_EVERY_S
    while True:
        committed = poller.read()
        now = time.time()
        if reached(committed, end):
            return now
        running.check_alive()
        mono = time.monotonic()
        if mono >= deadline:
            progress = f"committed {committed_total(committed):,}/{total:,}"
            raise BenchError(f"{label}: {progress} after {timeout:g}s\n{running.tail()}")
        if mono >= next_progress:
            next_progress = mono + PROGRESS_EVERY_S
            progress = f"committed {committed_total(committed):,}/{total:,}"
            say(f"      ... {label}: {progress} [{mono - started:.0f}s]")
        time.sleep(POLL_INTERVAL_S)  # polling the group's offsets, bounded by the deadline


class CpuWatch:
    """CPU used on this machine by anything else than this run (other sessions' tests, ...).

    Machine-wide busy time over the run, minus the contender's process tree, the broker and this
    script with its waited-for children (e.g. the paced producer). Reported as cores, per run.
    """

    def __init__(self, broker_pid: int | None) -> None:
        self._broker_pid = broker_pid
        self._wall = time.monotonic()
        self._system = common.system_cpu_seconds()[0]
        self._broker = common.process_cpu_seconds(broker_pid) if broker_pid else 0.0
        self._own = self._own_seconds()

    @staticmethod
    def _own_seconds() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def foreign_cores(self, contender_pid: int) -> float:
        wall = max(time.monotonic() - self._wall, 1e-3)
        system = common.system_cpu_seconds()[0] - self._system
        broker = (common.process_cpu_seconds(self._broker_pid) - self._broker) if self._broker_pid else 0.0
        ours = common.tree_cpu_seconds(contender_pid) + broker + (self._own_seconds() - self._own)
        return max(0.0, system - ours) / wall


def memory_metrics(pid: int) -> Metrics:
    own, children, count = common.tree_memory_mib(pid, "VmHWM")
    return {"sup_rss_mib": own, "workers_rss_mib": children if count else None, "children": count}


# ----------------------------------------------------------------------------------- throughput


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


# -------------------------------------------------------------------------------------- latency


def reference_rate(ctx: Context, workload: Workload) -> float:
    """streamworker (pool, 2 workers) records/s on *workload*, measured now if not yet."""
    key = f"throughput/{workload.name}/sw-pool-2"
    if not ctx.results.get(key):
        contender = next(c for c in ctx.contenders if c.name == "sw-pool-2")
        say(f"[{key}] needed for the latency rate: 1 run ...")
        run_and_store(ctx, key, lambda: throughput_run(ctx, workload, contender, 1), 1, 1)
    values = [m["rate"] for m in ctx.results.get(key, [])]
    if not values:
        raise BenchError(f"no streamworker rate for {workload.name}")
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


# -------------------------------------------------------------------------------------- backlog


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


# -------------------------------------------------------------------------------------- profile


def pyspy_binary() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    if local.exists():
        return str(local)
    from shutil import which

    return which("py-spy")


def profile_run(ctx: Context) -> Metrics:
    """Profile the supervisor (and worker 0) of streamworker pool/2 on a no-op backlog."""
    count = ctx.sizes.profile_records
    topic = unique("bench-profile")
    create_topics(ctx.bootstrap, {topic: 4})
    end = produce_records(ctx.bootstrap, topic, count)
    contender = Contender("sw-pool-2", "streamworker pool, 2 workers", "streamworker", "pool", 2)
    group = unique("bench-profile")
    profiler = ctx.profiler
    pyspy = pyspy_binary()
    if profiler == "auto":
        profiler = "py-spy" if pyspy else "pyinstrument"
    out_dir = ctx.root / "profile"
    out_dir.mkdir(parents=True, exist_ok=True)
    if profiler == "py-spy":
        try:
            return pyspy_profile(ctx, contender, topic, group, end, out_dir, pyspy or "py-spy")
        except BenchError as exc:
            if ctx.profiler == "py-spy":
                raise
            say(f"  py-spy failed ({str(exc).splitlines()[0]}); falling back to pyinstrument")
            group = unique("bench-profile")
    return pyinstrument_profile(ctx, contender, topic, group, end, out_dir)


def pyspy_profile(
    ctx: Context, contender: Contender, topic: str, group: str, end: dict[int, int], out_dir: Path, pyspy: str
) -> Metrics:
    poller = OffsetPoller(ctx.bootstrap, group, topic, 4)
    running = launch(
        ctx,
        contender,
        run_id="profile",
        topic=topic,
        group=group,
        workload="noop",
        latency=False,
        expected=None,
    )
    spies: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    try:
        common.wait_until(
            running.first_record_seen,
            90,
            "the first handled record",
            interval=0.01,
        )
        workers = common.child_pids(running.pid)
        targets = [("supervisor", running.pid)] + ([("worker", workers[0])] if workers else [])
        for name, pid in targets:
            out = out_dir / f"{name}.txt"
            cmd = [pyspy, "record", "--pid", str(pid), "--nonblocking", "--rate", "200"]
            cmd += ["--format", "raw", "--nolineno", "-o", str(out)]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            spies.append((name, proc, out))
        started = time.monotonic()
        time.sleep(0.5)
        for name, proc, _ in spies:
            if proc.poll() is not None:
                output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                raise BenchError(f"py-spy on the {name} exited at once: {output.strip()[-300:]}")
        wait_committed(poller, end, running, 300.0, "profile")
        seconds = time.monotonic() - started
        for _, proc, _ in spies:
            proc.send_signal(signal.SIGINT)
        for _, proc, _ in spies:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    finally:
        for _, proc, _ in spies:
            if proc.poll() is None:
                proc.kill()
        running.stop()
        poller.close()
    metrics: Metrics = {"profiler": "py-spy (--nonblocking, 200 Hz, active samples only)", "seconds": seconds}
    for name, _, out in spies:
        if not out.exists():
            raise BenchError(f"py-spy wrote no profile for the {name}")
        stacks = parse_collapsed(out.read_text(encoding="utf-8", errors="replace"))
        metrics[name] = summarize_stacks(stacks, rate=200.0, seconds=seconds)
    metrics["records"] = sum(end.values())
    return metrics


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    """py-spy's raw output: ``frame;frame;... count`` per line, root first."""
    stacks: list[tuple[list[str], int]] = []
    for line in text.splitlines():
        stack, _, number = line.rpartition(" ")
        if stack and number.isdigit():
            stacks.append(([shorten_frame(f) for f in stack.split(";")], int(number)))
    return stacks


def shorten_frame(frame: str) -> str:
    """``func (/abs/path/streamworker/x.py)`` -> ``streamworker/x.py:func``."""
    name, _, location = frame.partition(" (")
    location = location.rstrip(")")
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in location:
            location = location.split(marker, 1)[1]
            if marker == "/lib/python3":
                location = "stdlib/" + location.split("/", 1)[-1]
            break
    else:
        repo = str(common.REPO) + "/"
        if location.startswith(repo):
            location = location[len(repo) :]
    return f"{location}:{name}" if location else name


def summarize_stacks(stacks: list[tuple[list[str], int]], rate: float, seconds: float) -> Metrics:
    total = sum(count for _, count in stacks)
    self_counts: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    for frames, count in stacks:
        if not frames:
            continue
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def top(
        table: dict[str, int], limit: int, keep: Callable[[str], bool] = lambda _: True
    ) -> list[list[Any]]:
        ranked = sorted(((n, f) for f, n in table.items() if keep(f)), reverse=True)[:limit]
        return [[f, round(100.0 * n / total, 1)] for n, f in ranked]

    return {
        "samples": total,
        "busy_pct": round(100.0 * total / max(rate * seconds, 1.0), 1),
        "self": top(self_counts, 15),
        "inclusive": top(inclusive, 15, lambda f: f.startswith("streamworker/")),
    }


PYINSTRUMENT_SUPERVISOR = """\
import json, signal, sys, threading
from pyinstrument import Profiler
from streamworker.config import load_config
from streamworker.observability.logging import configure_logging
from streamworker.supervisor.runner import RunnerOptions, TriggerRunner

configure_logging("info", "json")
loaded = load_config(sys.argv[1])
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
runner = TriggerRunner(loaded.config, loaded.config.triggers[0], stop, RunnerOptions())
profiler = Profiler(interval=0.001)
profiler.start()
runner.run()
profiler.stop()
self_times = {}
def walk(frame):
    if frame.is_synthetic:
        return
    key = f"{frame.function} ({frame.file_path or '?'})"
    self_times[key] = self_times.get(key, 0.0) + frame.total_self_time
    for child in frame.children:
        walk(child)
root = profiler.last_session.root_frame()
walk(root)
json.dump({"total": root.time, "self": self_times}, open(sys.argv[2], "w"))
"""


def pyinstrument_profile(
    ctx: Context, contender: Contender, topic: str, group: str, end: dict[int, int], out_dir: Path
) -> Metrics:
    out = out_dir / "pyinstrument.json"
    poller = OffsetPoller(ctx.bootstrap, group, topic, 4)
    running = launch(
        ctx,
        contender,
        run_id="profile-pyinstrument",
        topic=topic,
        group=group,
        workload="noop",
        latency=False,
        expected=None,
        supervisor_cmd=lambda config: [sys.executable, "-c", PYINSTRUMENT_SUPERVISOR, str(config), str(out)],
    )
    try:
        wait_committed(poller, end, running, 300.0, "profile (pyinstrument)")
    finally:
        running.stop()
        poller.close()
    if not out.exists():
        raise BenchError(f"pyinstrument wrote no profile\n{running.tail()}")
    data = json.loads(out.read_text(encoding="utf-8"))
    total = float(data["total"]) or 1.0
    merged: dict[str, float] = {}
    for frame, seconds in data["self"].items():
        short = shorten_frame(frame)
        merged[short] = merged.get(short, 0.0) + float(seconds)
    ranked = sorted(((t, f) for f, t in merged.items()), reverse=True)[:15]
    return {
        "profiler": "pyinstrument (runner on the main thread, wall clock, idle waits included)",
        "records": ctx.sizes.profile_records,
        "supervisor": {
            "samples": None,
            "busy_pct": None,
            "self": [[f, round(100.0 * t / total, 1)] for t, f in ranked],
            "inclusive": [],
        },
    }


# ------------------------------------------------------------------------------------- the runs


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


def throughput_action(
    ctx: Context, workload: Workload, contender: Contender, run: int
) -> Callable[[], Metrics]:
    return lambda: throughput_run(ctx, workload, contender, run)


def latency_action(
    ctx: Context, workload: Workload, contender: Contender, rate: float
) -> Callable[[], Metrics]:
    return lambda: latency_run(ctx, workload, contender, rate)


def first_result(ctx: Context, key: str) -> Metrics | None:
    runs = ctx.results.get(key)
    return runs[0] if runs else None


def run_all(ctx: Context) -> None:
    for workload in WORKLOADS:
        # Round robin over the contenders (run 1 of each, then run 2, ...), so that other work on the
        # machine, which comes and goes, does not fall on one contender's runs only.
        chosen = [
            c
            for c in ctx.contenders
            if ctx.selected(f"throughput/{workload.name}/{c.name}") and applies(workload.name, c)
        ]
        most = max((ctx.runs_for(workload.name, c.name) for c in chosen), default=0)
        for run in range(1, most + 1):
            for contender in chosen:
                runs = ctx.runs_for(workload.name, contender.name)
                if run <= runs:
                    key = f"throughput/{workload.name}/{contender.name}"
                    run_and_store(ctx, key, throughput_action(ctx, workload, contender, run), run, runs)
    for workload in WORKLOADS:
        if ctx.quick and workload.name != "noop":
            continue
        selected = [
            c
            for c in ctx.contenders
            if ctx.selected(f"latency/{workload.name}/{c.name}") and applies(workload.name, c)
        ]
        if not selected:
            continue
        try:
            rate = 0.5 * reference_rate(ctx, workload)
        except BenchError as exc:
            ctx.failures.setdefault(f"latency/{workload.name}", []).append(str(exc))
            continue
        say(f"latency on {workload.name}: paced producer at {rate:,.0f} records/s")
        for contender in selected:
            key = f"latency/{workload.name}/{contender.name}"
            run_and_store(ctx, key, latency_action(ctx, workload, contender, rate), 1, 1)
    if ctx.selected("backlog"):
        run_and_store(ctx, "backlog", lambda: backlog_run(ctx), 1, 1)
    if ctx.selected("profile"):
        run_and_store(ctx, "profile", lambda: profile_run(ctx), 1, 1)


# ------------------------------------------------------------------------------------- results


def median_of(ctx: Context, key: str, metric: str) -> float | None:
    values = [float(m[metric]) for m in ctx.results.get(key, []) if m.get(metric) is not None]
    return statistics.median(values) if values else None


def range_of(ctx: Context, key: str, metric: str) -> str:
    values = [float(m[metric]) for m in ctx.results.get(key, []) if m.get(metric) is not None]
    if len(values) < 2:
        return ""
    return f"{min(values):,.0f}-{max(values):,.0f}"


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
        ("msgpack", common.package_version("msgpack") or "unknown"),
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
    parser.add_argument("--profiler", choices=("auto", "py-spy", "pyinstrument"), default="auto")
    parser.add_argument("--results", type=Path, default=common.RESULTS_PATH, help="markdown file to update")
    parser.add_argument(
        "--write", action="store_true", help="update the results file even with --quick/--only"
    )
    parser.add_argument("--no-write", action="store_true", help="do not update the results file")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, profiles)")
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    key_mode, key_note = key_mode_available()
    contenders = all_contenders(key_mode)
    if args.quick:
        contenders = [c for c in contenders if c.name in QUICK_CONTENDERS]
    quix = quix_version(args.quix_python) if args.quix_python else None
    notes = [key_note] if key_note else []
    if quix is None:
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
                runs=args.runs,
                only=list(args.only),
                quix_python=args.quix_python if quix else None,
                profiler=args.profiler,
                contenders=contenders,
                notes=notes,
                broker_pid=broker.pid,
                settle_s=args.settle,
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
