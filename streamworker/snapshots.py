"""What a trigger runner tells the outside world (health checks, metrics), without knowing who listens.

Below both `supervisor/` (which publishes) and `observability/` (which reads): imports run one way,
observability never imports the supervisor (tests/test_layering.py).

The runner publishes an immutable ``TriggerSnapshot`` every timer tick (~50 ms) and passes handler
durations as they arrive. Readers on other threads (the HTTP server) only ever see whole snapshots:
the reference is swapped, never mutated, so no lock sits on the poll loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class PartitionSnapshot:
    topic: str
    partition: int
    committed: int | None  # last position committed by this member
    position: int | None  # commit position now (lowest record not done)
    high_watermark: int | None  # from the last fetch response (client cache), None if unknown
    paused: bool  # paused for backpressure
    stopped: bool  # stopped by onError: stop
    # Seconds the commit position has waited on the oldest unfinished record (0: nothing unfinished).
    oldest_unfinished_age: float = 0.0


@dataclass(frozen=True)
class TriggerSnapshot:
    trigger: str
    taken_at: float  # time.monotonic() when published
    last_loop_at: float  # time.monotonic() of the poll loop's last pass
    joined: bool  # the consumer got its first assignment callback
    workers_total: int
    workers_ready: int
    inflight: int  # events queued on or running in workers
    buffered: int  # fetched and not done
    partitions: tuple[PartitionSnapshot, ...] = ()
    # Cumulative counters since start.
    outcomes: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (topic, result) -> n
    rebalances: Mapping[str, int] = field(default_factory=dict)  # assign / revoke / lost -> n
    worker_restarts: Mapping[str, int] = field(default_factory=dict)  # reason -> n
    # Outputs produced for handlers: (topic, delivered|failed) -> n, and delivery latency as
    # (counts per protocol.DURATION_BUCKETS bucket, total seconds).
    outputs: Mapping[tuple[str, str], int] = field(default_factory=dict)
    output_latency: tuple[Sequence[int], float] = ((), 0.0)
    stopping: bool = False
    # Set when the trigger failed for good (a fatal client error...): not live, whatever else holds.
    failed: str | None = None


class RunnerObserver(Protocol):
    def on_snapshot(self, snapshot: TriggerSnapshot) -> None: ...

    def on_durations(self, trigger: str, durations: Sequence[float]) -> None: ...

    def on_duration_counts(self, trigger: str, counts: Sequence[int], total: float) -> None:
        """Durations already counted per ``protocol.DURATION_BUCKETS`` bucket (runs)."""


class NullObserver:
    """The default: nobody listens, nothing is collected."""

    def on_snapshot(self, snapshot: TriggerSnapshot) -> None:
        return None

    def on_durations(self, trigger: str, durations: Sequence[float]) -> None:
        return None

    def on_duration_counts(self, trigger: str, counts: Sequence[int], total: float) -> None:
        return None
