"""The dead-letter path: a record the failure policy gave up on (``Action.DEAD_LETTER``, decided in
``failure_policy.py``) is produced to deadLetterTopic with headers that describe the failure.

A record counts as done only once the broker confirmed the dead-letter copy (delivery report). A
failed produce (missing topic, broker down, timeout) leaves the record not done: it is produced
again after a backoff, and every failure is logged as an error. Nothing is lost either way: until
the copy is confirmed the original offset is not committed.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streamworker.records import F_ATTEMPT, F_HEADERS, F_KEY, F_OFFSET, F_PARTITION, F_TOPIC, F_VALUE
from streamworker.supervisor.backoff import Backoff
from streamworker.supervisor.dispatch import Dispatcher

MAX_ERROR_MESSAGE_BYTES = 1000
HEADER_PREFIX = "streamworker."

# Consumer settings that mean nothing to (or are refused by) a producer.
_CONSUMER_ONLY_PREFIXES = ("group.", "enable.auto.", "auto.", "session.", "heartbeat.", "fetch.", "queued.")
_CONSUMER_ONLY_KEYS = {
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "allow.auto.create.topics",
    "isolation.level",
    "check.crcs",
}


def dead_letter_headers(
    record: list[Any], error_type: str, error_message: str, failed_at: dt.datetime
) -> list[tuple[str, str | bytes | None]]:
    """The original headers, then streamworker.* headers describing the failure."""
    # Cut on a character boundary so the header stays valid UTF-8.
    message = error_message.encode("utf-8", "replace")[:MAX_ERROR_MESSAGE_BYTES]
    message = message.decode("utf-8", "ignore").encode("utf-8")
    original: list[tuple[str, str | bytes | None]] = [
        (str(name), value) for name, value in (record[F_HEADERS] or [])
    ]
    return [
        *original,
        (f"{HEADER_PREFIX}error.type", error_type.encode()),
        (f"{HEADER_PREFIX}error.message", message),
        (f"{HEADER_PREFIX}original.topic", str(record[F_TOPIC]).encode()),
        (f"{HEADER_PREFIX}original.partition", str(record[F_PARTITION]).encode()),
        (f"{HEADER_PREFIX}original.offset", str(record[F_OFFSET]).encode()),
        (f"{HEADER_PREFIX}attempts", str(record[F_ATTEMPT]).encode()),
        (f"{HEADER_PREFIX}failed.at", failed_at.isoformat(timespec="milliseconds").encode()),
    ]


def producer_settings(consumer: Mapping[str, Any], client_id: str) -> dict[str, Any]:
    """Producer settings from the trigger's consumer settings: same brokers and security, no group."""
    settings = {
        key: value
        for key, value in consumer.items()
        if not key.startswith(_CONSUMER_ONLY_PREFIXES) and key not in _CONSUMER_ONLY_KEYS
    }
    settings.update(
        {
            "client.id": client_id,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            # Surface a missing topic or an unreachable broker within seconds, so the record is
            # retried (and the failure logged) instead of waiting librdkafka's 5-minute default.
            "message.timeout.ms": 10_000,
            "topic.metadata.propagation.max.ms": 2_000,
        }
    )
    return settings


@dataclass
class _Attempt:
    record: list[Any]
    error_type: str
    error_message: str
    failed_at: dt.datetime
    tries: int = 0
    next_try_at: float = 0.0
    # Its partition moved away while a produce was in flight: a failure is not produced again.
    abandoned: bool = False


@dataclass(frozen=True)
class Delivery:
    """Outcome of one dead-letter produce."""

    record: list[Any]
    error: str | None  # None: delivered
    tries: int
    retry_in: float = 0.0


class DeadLetterSink:
    """Produces records to the dead-letter topic and reports confirmed deliveries and failures."""

    def __init__(self, topic: str, settings: Mapping[str, Any], backoff: Backoff) -> None:
        self.topic = topic
        self._producer = Producer(dict(settings))
        self._backoff = backoff
        self._waiting: list[_Attempt] = []  # failed produces, due again at next_try_at
        self._outcomes: list[Delivery] = []
        self.in_flight = 0
        # Produces whose delivery report is pending, by id(), so ``forget`` can reach them too.
        self._sending: dict[int, _Attempt] = {}

    def send(self, record: list[Any], error_type: str, error_message: str, now: float) -> None:
        failed_at = dt.datetime.now(dt.UTC)
        self._produce(_Attempt(record, error_type, error_message, failed_at), now)

    def _produce(self, attempt: _Attempt, now: float) -> None:
        attempt.tries += 1
        record = attempt.record

        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            self.in_flight -= 1
            self._sending.pop(id(attempt), None)
            if attempt.abandoned:
                return  # not ours any more: the partition's new owner dead-letters it if needed
            if error is None:
                self._outcomes.append(Delivery(record, None, attempt.tries))
                return
            delay = self._backoff.delay(attempt.tries)
            attempt.next_try_at = time.monotonic() + delay
            self._waiting.append(attempt)
            self._outcomes.append(Delivery(record, error.str(), attempt.tries, delay))

        headers = dead_letter_headers(record, attempt.error_type, attempt.error_message, attempt.failed_at)
        self.in_flight += 1
        self._sending[id(attempt)] = attempt
        try:
            self._producer.produce(
                self.topic, value=record[F_VALUE], key=record[F_KEY], headers=headers, on_delivery=on_delivery
            )
        # Local queue full, message too large, or a topic librdkafka already knows is missing: all
        # of them are failed attempts to retry, never a reason to stop the trigger.
        except (BufferError, ValueError, KafkaException) as exc:
            self.in_flight -= 1
            self._sending.pop(id(attempt), None)
            delay = self._backoff.delay(attempt.tries)
            attempt.next_try_at = now + delay
            self._waiting.append(attempt)
            self._outcomes.append(Delivery(record, f"{type(exc).__name__}: {exc}", attempt.tries, delay))

    def poll(self, now: float) -> list[Delivery]:
        """Serve delivery reports, re-send what is due; returns what happened since the last call."""
        self._producer.poll(0)
        due = [a for a in self._waiting if a.next_try_at <= now]
        if due:
            self._waiting = [a for a in self._waiting if a.next_try_at > now]
            for attempt in due:
                self._produce(attempt, now)
        outcomes, self._outcomes = self._outcomes, []
        return outcomes

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Stop producing records of ``partitions`` (revoked or lost): no more retries of failed
        produces, and a produce in flight that fails is not tried again. Otherwise they would retry
        forever, and could duplicate what the partition's new owner dead-letters."""
        gone = set(partitions)
        if not gone:
            return

        def moved(attempt: _Attempt) -> bool:
            return (attempt.record[F_TOPIC], attempt.record[F_PARTITION]) in gone

        self._waiting = [a for a in self._waiting if not moved(a)]
        for attempt in self._sending.values():
            if moved(attempt):
                attempt.abandoned = True

    def close(self, timeout: float) -> None:
        self._producer.flush(timeout)


def serve_dead_letters(sink: DeadLetterSink, dispatcher: Dispatcher, now: float, log: Any) -> None:
    """Produce the records the failure policy sent here (``Action.DEAD_LETTER``, queued by the
    dispatcher) and apply delivery reports: a record is done only once its copy is delivered."""
    for record, error_type, message in dispatcher.take_dead_letters():
        sink.send(record, error_type, message, now)
    for delivery in sink.poll(now):
        record = delivery.record
        where = {"topic": record[F_TOPIC], "partition": record[F_PARTITION], "offset": record[F_OFFSET]}
        if delivery.error is None:
            if dispatcher.dead_lettered(record):
                log.warning("record dead-lettered", **where, dead_letter_topic=sink.topic)
        else:
            log.error(
                "dead-letter produce failed; record NOT done, will produce again",
                **where,
                dead_letter_topic=sink.topic,
                error=delivery.error,
                tries=delivery.tries,
                retry_in_s=round(delivery.retry_in, 3),
            )
