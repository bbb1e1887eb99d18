"""Prometheus metrics and health state, fed by the trigger runners through ``RunnerObserver``.

``MetricsObserver`` keeps the latest ``TriggerSnapshot`` of every trigger and a histogram of handler
durations. Nothing is converted on the poll loop: the snapshot reference is stored and the durations
are counted into buckets; the Prometheus families are built from the stored snapshots only when
``/metrics`` is scraped (a custom collector on a private ``CollectorRegistry``, so two supervisors in
one process, e.g. in tests, never share metrics).

Handler durations are measured in the worker processes and arrive in results frames, so they are
aggregated here in the supervisor and survive any worker restart.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from streamworker import __version__
from streamworker.protocol import DURATION_BUCKETS
from streamworker.snapshots import TriggerSnapshot

RESULTS = ("success", "error", "retried", "dead_lettered", "skipped")
REBALANCE_KINDS = ("assign", "revoke", "lost")
RESTART_REASONS = ("crash", "event_timeout", "rebalance_deadline", "shutdown_timeout")


@dataclass
class DurationHistogram:
    """Bucket counts of handler durations (seconds). One lock round per results frame, not per
    observation: a frame carries up to hundreds of durations and this runs on the poll loop."""

    bounds: tuple[float, ...] = DURATION_BUCKETS
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; last is +Inf
    total: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe_many(self, durations: Sequence[float]) -> None:
        bounds, counts, where = self.bounds, self.counts, bisect.bisect_left
        with self._lock:
            for duration in durations:
                counts[where(bounds, duration)] += 1  # bisect_left: a value equal to a bound is "le" it
            self.total += sum(durations)

    def add_counts(self, counts: Sequence[int], total: float) -> None:
        """Add bucket counts made elsewhere (a worker's summary of a run)."""
        with self._lock:
            for bucket, count in enumerate(counts):
                if count:
                    self.counts[bucket] += count
            self.total += total

    def cumulative(self) -> tuple[list[tuple[str, float]], float]:
        """``([(le, cumulative count), ..., ("+Inf", count)], sum)`` as Prometheus exposes them."""
        with self._lock:
            counts, total = list(self.counts), self.total
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets, total


class MetricsObserver:
    """A ``RunnerObserver`` that keeps what ``/metrics``, ``/live`` and ``/ready`` report.

    Thread-safety: runners call ``on_snapshot``/``on_durations`` from their threads, HTTP handlers read
    from theirs. Snapshots are immutable, so a short lock around the dict is all that is needed.
    """

    def __init__(
        self,
        function: str,
        triggers: Sequence[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.function = function
        self.triggers = tuple(triggers)
        self.clock = clock
        self.started_at = clock()
        self._lock = threading.Lock()
        self._snapshots: dict[str, TriggerSnapshot] = {}
        # Triggers whose workers were all ready at least once: readiness is about having started,
        # a worker being replaced later does not make the pod unready.
        self._initialised: set[str] = set()
        self._stopping = False
        self._durations = {trigger: DurationHistogram() for trigger in self.triggers}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_SnapshotCollector(self))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    # -- RunnerObserver ----------------------------------------------------------------------------
    def on_snapshot(self, snapshot: TriggerSnapshot) -> None:
        with self._lock:
            self._snapshots[snapshot.trigger] = snapshot
            if snapshot.workers_total and snapshot.workers_ready >= snapshot.workers_total:
                self._initialised.add(snapshot.trigger)

    def on_durations(self, trigger: str, durations: Sequence[float]) -> None:
        histogram = self._durations.get(trigger)
        if histogram is None:  # a trigger not named at construction: count it all the same
            with self._lock:
                histogram = self._durations.setdefault(trigger, DurationHistogram())
        histogram.observe_many(durations)

    def on_duration_counts(self, trigger: str, counts: Sequence[int], total: float) -> None:
        histogram = self._durations.get(trigger)
        if histogram is None:
            with self._lock:
                histogram = self._durations.setdefault(trigger, DurationHistogram())
        histogram.add_counts(counts, total)

    # -- state for health checks -------------------------------------------------------------------
    def mark_stopping(self) -> None:
        """A stop was requested: report not ready from now on. A plain assignment, so it is safe to
        call from a signal handler."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    def snapshots(self) -> dict[str, TriggerSnapshot]:
        with self._lock:
            return dict(self._snapshots)

    def initialised(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._initialised)

    def durations(self) -> Mapping[str, DurationHistogram]:
        with self._lock:
            return dict(self._durations)

    def render(self) -> bytes:
        """The Prometheus text exposition of everything this observer knows."""
        return generate_latest(self.registry)

    def render_for(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition a scraper asked for with its ``Accept`` header, and its content type:
        OpenMetrics when it accepts ``application/openmetrics-text``, else the classic text format."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def partition_lag(committed: int | None, position: int | None, high_watermark: int | None) -> int | None:
    """Records of a partition not committed yet: end offset - committed offset.

    Before this member's first commit of a partition, its fetch position stands in for the committed
    offset (the group's committed offset is where fetching started). None when the end offset is
    unknown (no fetch response yet) or nothing was fetched or committed.
    """
    base = committed if committed is not None else position
    if high_watermark is None or base is None:
        return None
    return max(0, high_watermark - base)


class _SnapshotCollector(Collector):
    """Builds the metric families from the latest snapshots at scrape time."""

    def __init__(self, observer: MetricsObserver) -> None:
        self.observer = observer

    def collect(self) -> Iterator[Metric]:
        observer = self.observer
        snapshots = observer.snapshots()
        now = observer.clock()
        info = GaugeMetricFamily(
            "streamworker_info", "Version and function of this streamworker.", labels=["version", "function"]
        )
        info.add_metric([__version__, observer.function], 1)
        yield info

        events = CounterMetricFamily(
            "streamworker_events_total",
            "Records by final or intermediate result: success, error (a failed attempt), retried, "
            "dead_lettered, skipped.",
            labels=["trigger", "topic", "result"],
        )
        rebalances = CounterMetricFamily(
            "streamworker_rebalances_total",
            "Rebalance callbacks by kind: assign, revoke, lost.",
            labels=["trigger", "kind"],
        )
        restarts = CounterMetricFamily(
            "streamworker_worker_restarts_total",
            "Worker processes replaced, by reason.",
            labels=["trigger", "reason"],
        )
        ready = GaugeMetricFamily(
            "streamworker_workers_ready", "Worker processes ready for records.", labels=["trigger"]
        )
        workers = GaugeMetricFamily(
            "streamworker_workers", "Worker processes configured.", labels=["trigger"]
        )
        inflight = GaugeMetricFamily(
            "streamworker_inflight_events", "Records queued on or running in workers.", labels=["trigger"]
        )
        buffered = GaugeMetricFamily(
            "streamworker_buffered_events", "Records fetched and not finished yet.", labels=["trigger"]
        )
        assigned = GaugeMetricFamily(
            "streamworker_assigned_partitions", "Partitions assigned to this member.", labels=["trigger"]
        )
        loop_age = GaugeMetricFamily(
            "streamworker_poll_loop_age_seconds",
            "Seconds since the trigger's poll loop last made a pass (what /live checks).",
            labels=["trigger"],
        )
        partition_labels = ["trigger", "topic", "partition"]
        lag = GaugeMetricFamily(
            "streamworker_consumer_lag",
            "End offset minus committed offset, per assigned partition (end offset from the last fetch).",
            labels=partition_labels,
        )
        committed = GaugeMetricFamily(
            "streamworker_committed_offset",
            "Offset this member last committed (the next record to process), per assigned partition.",
            labels=partition_labels,
        )
        paused = GaugeMetricFamily(
            "streamworker_partition_paused",
            "1 while a partition is paused because its buffer is full.",
            labels=partition_labels,
        )
        stopped = GaugeMetricFamily(
            "streamworker_partition_stopped",
            "1 while a partition is stopped by onError: stop.",
            labels=partition_labels,
        )
        oldest = GaugeMetricFamily(
            "streamworker_oldest_unfinished_age_seconds",
            "Seconds a partition's commit position has waited on its oldest unfinished record (0 when "
            "none): a stuck record (a hung call, a missing explicit ack) shows here.",
            labels=partition_labels,
        )
        for trigger in sorted(snapshots):
            snap = snapshots[trigger]
            topics = {topic for topic, _ in snap.outcomes} | {p.topic for p in snap.partitions}
            for topic in sorted(topics):
                for result in RESULTS:
                    events.add_metric([trigger, topic, result], snap.outcomes.get((topic, result), 0))
            for (topic, result), count in sorted(snap.outcomes.items()):
                if result not in RESULTS:
                    events.add_metric([trigger, topic, result], count)
            for kind in sorted({*REBALANCE_KINDS, *snap.rebalances}):
                rebalances.add_metric([trigger, kind], snap.rebalances.get(kind, 0))
            for reason in sorted({*RESTART_REASONS, *snap.worker_restarts}):
                restarts.add_metric([trigger, reason], snap.worker_restarts.get(reason, 0))
            ready.add_metric([trigger], snap.workers_ready)
            workers.add_metric([trigger], snap.workers_total)
            inflight.add_metric([trigger], snap.inflight)
            buffered.add_metric([trigger], snap.buffered)
            assigned.add_metric([trigger], len(snap.partitions))
            loop_age.add_metric([trigger], max(0.0, now - max(snap.last_loop_at, snap.taken_at)))
            for part in sorted(snap.partitions, key=lambda p: (p.topic, p.partition)):
                labels = [trigger, part.topic, str(part.partition)]
                behind = partition_lag(part.committed, part.position, part.high_watermark)
                if behind is not None:
                    lag.add_metric(labels, behind)
                if part.committed is not None:
                    committed.add_metric(labels, part.committed)
                paused.add_metric(labels, int(part.paused))
                stopped.add_metric(labels, int(part.stopped))
                oldest.add_metric(labels, part.oldest_unfinished_age)
        yield from (events, rebalances, restarts, ready, workers, inflight, buffered, assigned, loop_age)
        yield from (lag, committed, paused, stopped, oldest)

        durations = HistogramMetricFamily(
            "streamworker_handler_duration_seconds",
            "Time the handler took per call, measured in the worker process.",
            labels=["trigger"],
        )
        for trigger, histogram in sorted(observer.durations().items()):
            buckets, total = histogram.cumulative()
            durations.add_metric([trigger], buckets, sum_value=total)
        yield durations
        yield from _output_metrics(snapshots)


def _output_metrics(snapshots: Mapping[str, TriggerSnapshot]) -> Iterator[Metric]:
    """Records handlers produced (docs/outputs.md): counts by result, delivery latency."""
    outputs = CounterMetricFamily(
        "streamworker_outputs",
        "Outputs produced for handlers, by output topic and result: delivered (acknowledged by the "
        "broker) or failed (the input's attempt failed).",
        labels=["trigger", "topic", "result"],
    )
    latency = HistogramMetricFamily(
        "streamworker_output_delivery_seconds",
        "Time from producing an output to its delivery report.",
        labels=["trigger"],
    )
    for trigger in sorted(snapshots):
        snap = snapshots[trigger]
        for (topic, result), count in sorted(snap.outputs.items()):
            outputs.add_metric([trigger, topic, result], count)
        counts, total = snap.output_latency
        if counts:
            running = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip((*map(repr, DURATION_BUCKETS), "+Inf"), counts, strict=True):
                running += count
                buckets.append((bound, running))
            latency.add_metric([trigger], buckets, sum_value=total)
    yield outputs
    yield latency
