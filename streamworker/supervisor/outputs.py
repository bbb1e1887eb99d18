"""Outputs: records handlers produce, delivered before their input may be committed.

Workers send a record's outputs with its result (``protocol.Msg.OUTPUTS``). The runner registers
them with the dispatcher (``Dispatcher.outputs_sent``, which returns the input's ``PendingOutputs``)
and produces them here, in the order they arrived: a partition's inputs report in input order, so
their outputs are produced in input order too, and librdkafka's idempotent producer keeps that order
per output partition. Delivery reports come back as ``OutputDelivery`` and go to
``Dispatcher.output_delivered``: an input is done only when all its outputs are confirmed; one
failed delivery turns into a failed attempt of the input (retried, then onError).

At-least-once: outputs already delivered are not retracted when a sibling output or a later step
fails, so a retried input produces them again.

Towards exactly-once (not implemented, see docs/outputs.md): a transactional producer per trigger
would wrap a batch of delivered-and-done inputs in one transaction with their offsets
(``send_offsets_to_transaction``) instead of committing through the consumer; ``PendingOutputs``
already marks which inputs such a batch may contain.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streamworker.protocol import (
    DURATION_BUCKETS,
    O_HEADERS,
    O_KEY,
    O_PARTITION,
    O_TOPIC,
    O_VALUE,
    summarize_durations,
)
from streamworker.supervisor.waiting import step_until

if TYPE_CHECKING:  # dispatch imports PendingOutputs from here
    from streamworker.supervisor.dispatch import Dispatcher
    from streamworker.supervisor.failure_policy import Failure

# How long an output may wait for its delivery before it counts as failed (librdkafka's
# message.timeout.ms; the dead-letter producer's 10 s is shorter). A failed output costs a re-run of
# its input, and a timeout also makes the idempotent producer bump its epoch (which Tansu answers by
# fencing it): an outage of a few seconds should hold inputs back (backpressure), not fail them. A
# missing or refused topic still fails within seconds (metadata propagation, broker error).
MESSAGE_TIMEOUT_MS = 30_000

# How long produce() may wait for room in librdkafka's local queue before the output counts as
# failed: a full queue is backpressure (wait), an endless one is an error (retry the input).
QUEUE_FULL_WAIT_S = 5.0


def output_size(output: list[Any]) -> int:
    """Key + value bytes of one output: what counts against the input partition's buffer."""
    key = output[O_KEY]
    return len(output[O_VALUE]) + (len(key) if key is not None else 0)


@dataclass(eq=False)
class PendingOutputs:
    """The outputs of one input (one offset of one partition) the broker has not confirmed yet.

    Pure bookkeeping, owned by the dispatcher. ``owner`` is the partition's state object: a report
    arriving after the partition was revoked (and maybe assigned again) finds a different owner and
    is ignored.
    """

    owner: object
    offset: int
    in_flight: int = 0
    bytes: int = 0
    error: str | None = None  # the first delivery error; the input fails once nothing is in flight
    record: list[Any] | None = None  # the input, once it ran fine: it waits here for its outputs

    def sent(self, outputs: list[list[Any]]) -> int:
        """Count ``outputs`` in flight; returns their bytes."""
        size = output_size(outputs[0]) if len(outputs) == 1 else sum(map(output_size, outputs))
        self.in_flight += len(outputs)
        self.bytes += size
        return size

    def delivered(self, size: int, error: str | None) -> bool:
        """One output's report. True when none of this input's outputs is in flight any more."""
        self.in_flight -= 1
        self.bytes -= size
        if error is not None and self.error is None:
            self.error = error
        return self.in_flight == 0


@dataclass(slots=True)  # not frozen: made per output on the poll loop, frozen init costs more
class OutputDelivery:
    """What happened to one output."""

    pending: PendingOutputs
    topic: str
    size: int
    error: str | None  # None: acknowledged by the broker
    latency: float  # seconds from produce() to the report


@dataclass
class OutputStats:
    """Cumulative counts for metrics: outputs per (topic, delivered|failed), delivery latency."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    # Per ``protocol.DURATION_BUCKETS`` bucket (the last is +Inf), not cumulative.
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    latency_total: float = 0.0

    def record(self, reports: list[OutputDelivery]) -> None:
        counts = self.counts
        for report in reports:
            key = (report.topic, "delivered" if report.error is None else "failed")
            counts[key] = counts.get(key, 0) + 1
        _, total, buckets = summarize_durations([report.latency for report in reports])
        self.latency_counts = [a + b for a, b in zip(self.latency_counts, buckets, strict=True)]
        self.latency_total += total

    def snapshot(self) -> OutputStats:
        return OutputStats(dict(self.counts), list(self.latency_counts), self.latency_total)


def _note_fatal(fatal: list[str | None], error: KafkaError) -> None:
    """A producer's error callback: remember a fatal error (others are retried by librdkafka)."""
    if error.fatal():
        fatal[0] = f"{error.name()}: {error.str()}"


class OutputSink:
    """One idempotent ``acks=all`` producer per trigger for handlers' outputs.

    An idempotent producer can hit a fatal error (e.g. fenced after the epoch bump that follows a
    message timeout; Tansu fences it after a broker outage): every later produce would fail, and the
    inputs would be retried forever. The producer is then replaced: what the old one still holds is
    purged (reported failed, so those inputs are retried) and a new one takes over.
    """

    def __init__(
        self,
        settings: Mapping[str, Any],
        clock: Callable[[], float] = time.monotonic,
        on_replaced: Callable[[str], None] | None = None,
    ) -> None:
        self._settings = dict(settings)
        self._clock = clock
        self._on_replaced = on_replaced
        # Why the producer must be replaced; a one-item list the error callback can set without
        # holding the sink (a sink <-> producer cycle would keep a dropped producer's threads alive).
        self._fatal: list[str | None] = [None]
        self._reports: list[OutputDelivery] = []
        self.in_flight = 0
        self.replaced = 0
        self._producer = self._new_producer()

    def _new_producer(self) -> Producer:
        return Producer({**self._settings, "error_cb": functools.partial(_note_fatal, self._fatal)})

    def send(self, pending: PendingOutputs, outputs: list[list[Any]]) -> None:
        """Produce an input's outputs, in order. Failures come back through ``poll``."""
        produce = self._producer.produce
        on_delivery = self._on_delivery
        started = self._clock()
        for output in outputs:
            topic = output[O_TOPIC]
            size = output_size(output)
            headers = output[O_HEADERS]
            partition = output[O_PARTITION]
            kwargs = {
                "value": output[O_VALUE],
                "key": output[O_KEY],
                "headers": [(name, value) for name, value in headers] if headers else None,
                "partition": -1 if partition is None else partition,
                "on_delivery": functools.partial(on_delivery, pending, topic, size, started),
            }
            self.in_flight += 1
            try:
                try:
                    produce(topic, **kwargs)
                except BufferError:
                    self._produce_when_room(topic, kwargs)
            # Too large, unknown partition, a topic librdkafka knows is missing, a queue full for
            # too long: a failed delivery like any other, never a reason to stop the trigger.
            except (BufferError, ValueError, TypeError, KafkaException) as exc:
                self.in_flight -= 1
                error = f"{type(exc).__name__}: {exc}"
                self._reports.append(OutputDelivery(pending, topic, size, error, self._clock() - started))

    def _produce_when_room(self, topic: str, kwargs: dict[str, Any]) -> None:
        """librdkafka's queue is full: serve reports (which makes room) and try again, bounded."""
        deadline = self._clock() + QUEUE_FULL_WAIT_S
        while True:
            self._producer.poll(0.05)
            try:
                self._producer.produce(topic, **kwargs)
                return
            except BufferError:
                if self._clock() >= deadline:
                    raise

    def _on_delivery(
        self,
        pending: PendingOutputs,
        topic: str,
        size: int,
        started: float,
        error: KafkaError | None,
        _message: Message,
    ) -> None:
        self.in_flight -= 1
        text = None
        if error is not None:
            text = f"{error.name()}: {error.str()}"
            if error.fatal() or error.code() == KafkaError.PRODUCER_FENCED:
                self._fatal[0] = text
        self._reports.append(OutputDelivery(pending, topic, size, text, self._clock() - started))

    def poll(self) -> list[OutputDelivery]:
        """Serve delivery reports; returns those that arrived since the last call."""
        self._producer.poll(0)
        if self._fatal[0] is not None:
            self._replace(self._fatal[0])
        reports, self._reports = self._reports, []
        return reports

    def _replace(self, reason: str) -> None:
        old, self._producer = self._producer, self._new_producer()
        self._fatal[0] = None
        self.replaced += 1
        # Whatever the old producer holds fails now (purge reports it), so its inputs are retried
        # through the new one instead of waiting for a producer that will never deliver.
        old.purge()
        old.flush(1.0)
        self._fatal[0] = None  # what the old one reported while purged is not about the new one
        if self._on_replaced is not None:
            self._on_replaced(reason)

    def close(self, timeout: float) -> None:
        """Deliver what can be within ``timeout``; drop the rest (their inputs are not committed)."""
        self._producer.flush(timeout)
        # Purged outputs report now, which releases their callbacks (and, through them, this sink).
        self._producer.purge()
        self._producer.flush(0)


class OutputPath:
    """The runner's side of outputs: hand what workers produced to the dispatcher and the sink,
    apply delivery reports, and (before a final commit) wait a bounded time for those in flight.
    The producer starts with the first output."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        producer_settings: Callable[[], dict[str, Any]],
        on_failure: Callable[[Failure], None],
        log: Any,
    ) -> None:
        self._dispatcher = dispatcher
        self._producer_settings = producer_settings
        self._on_failure = on_failure
        self._log = log
        self.sink: OutputSink | None = None
        self.stats = OutputStats()

    @property
    def in_flight(self) -> int:
        return self.sink.in_flight if self.sink is not None else 0

    def on_outputs(self, items: list[list[Any]]) -> None:
        """Produce what handlers produced; each input waits for its outputs (``Dispatcher``)."""
        sink = self.sink
        if sink is None:
            log = self._log
            sink = self.sink = OutputSink(
                {**self._producer_settings(), "message.timeout.ms": MESSAGE_TIMEOUT_MS},
                on_replaced=lambda reason: log.error(
                    "output producer failed fatally; replaced it, its outputs in flight are retried",
                    error=reason,
                ),
            )
        for topic, partition, offset, outputs in items:
            pending = self._dispatcher.outputs_sent((topic, partition), offset, outputs)
            # Not ours any more: produced all the same (at-least-once), nothing waits for them.
            sink.send(pending or PendingOutputs(None, offset), outputs)

    def serve(self, now: float) -> None:
        """Apply output delivery reports; carry out the failed attempts they caused."""
        sink = self.sink
        if sink is None:
            return
        reports = sink.poll()
        dispatcher = self._dispatcher
        if reports:
            for report in reports:
                dispatcher.output_delivered(report.pending, report.size, report.error, now)
                if report.error is not None:
                    self._log.warning(
                        "output delivery failed",
                        output_topic=report.topic,
                        offset=report.pending.offset,
                        error=report.error,
                    )
            self.stats.record(reports)
        for failure in dispatcher.take_output_failures():
            self._on_failure(failure)

    def settle(self, deadline: float, pump: Callable[[float], None]) -> None:
        """Before a final commit: wait (bounded) for outputs in flight, so their inputs count."""

        def step(wait: float) -> None:
            pump(wait)
            self.serve(time.monotonic())

        step_until(lambda: not self.in_flight, deadline, step, max_wait=0.005)
        self.serve(time.monotonic())

    def close(self, timeout: float) -> None:
        if self.sink is not None:
            self.sink.close(timeout)
