"""What ``bench/throughput.py`` runs: sizes, workloads, contenders, goals and the run context."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import workloads

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

# Goals of issues #5 and #16 (reported, not asserted).
GOAL_NOOP_VS_RAW = 0.5  # x the tuned raw loop, every mode with 2 workers
GOAL_NOOP_VS_PEERS = 2.0
GOAL_CPU_SCALING = 1.85
GOAL_KEY_VS_POOL = 3.5
GOAL_BACKLOG_RSS_MB = 150.0
MODES = ("pool", "static", "key")


@dataclass(frozen=True)
class Sizes:
    noop: int
    cpu: int
    io: int
    latency_seconds: float
    backlog_records: int
    backlog_seconds: float
    profile_records: int


# Chosen so that the default matrix (below) fits in ~15 minutes on the 2-core machine; the backlog and
# the profiles reuse the no-op topic (1M records), so the records are produced once.
FULL = Sizes(1_000_000, 6_000, 2_000, 4.0, 1_000_000, 8.0, 1_000_000)
QUICK = Sizes(50_000, 400, 200, 1.5, 50_000, 3.0, 50_000)


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
NOOP = WORKLOADS[0]


@dataclass(frozen=True)
class Contender:
    name: str
    label: str
    kind: str  # raw | streamworker | arroyo | quix
    mode: str = ""
    workers: int = 1


def all_contenders(key_mode: bool) -> list[Contender]:
    out = [
        Contender("raw", "raw confluent-kafka loop, tuned (the reference)", "raw"),
        Contender("raw-untuned", "raw confluent-kafka loop, librdkafka defaults", "raw-untuned"),
    ]
    for mode in MODES:
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


QUICK_CONTENDERS = {"raw", "raw-untuned", "sw-pool-2", "sw-static-2", "sw-key-2"}
PEER_NAMES = ("arroyo-run-task", f"arroyo-mp-{ARROYO_PROCESSES}", "quix")
RAW_NAMES = ("raw", "raw-untuned")

# The default matrix (issue #16): what its goals compare. ``--all`` runs every contender on every
# workload (and the latency of each), as the issue #5 runs did (~40-65 min with peers).
DEFAULT_MATRIX: dict[str, set[str]] = {
    "noop": {*RAW_NAMES, *(f"sw-{mode}-2" for mode in MODES)},
    "cpu": {f"sw-{mode}-{n}" for mode in MODES for n in (1, 2)},
    "io": {"sw-pool-4", "sw-key-4"},
}
# Latency (and the per-mode backlog and profile) in the default matrix: no-op, these contenders.
LATENCY_DEFAULT = ("raw", *(f"sw-{mode}-2" for mode in MODES))


def in_matrix(workload: str, contender: str, everything: bool) -> bool:
    return everything or contender in DEFAULT_MATRIX.get(workload, set())


def applies(workload: str, contender: Contender) -> bool:
    """Outputs are streamworker's feature: noop-out runs on its 2-worker contenders only."""
    return workload != NOOP_OUT or (contender.kind == "streamworker" and contender.workers == 2)


def default_runs(workload: str, contender: str) -> int:
    """3 runs where a goal compares the figure, else 1 (see the section text)."""
    if workload == "noop" and (contender in RAW_NAMES or contender.endswith("-2") or contender in PEER_NAMES):
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
    everything: bool = False  # --all: every contender on every workload
    latency_rate: float | None = None  # --latency-rate: offered instead of half the own no-op rate

    def selected(self, run_id: str) -> bool:
        if not self.only:
            return True
        parts = run_id.split("/")
        return any(fnmatch.fnmatchcase(run_id, pattern) or pattern in parts for pattern in self.only)

    def runs_for(self, workload: str, contender: str) -> int:
        if self.runs is not None:
            return self.runs
        return 1 if self.quick else default_runs(workload, contender)
