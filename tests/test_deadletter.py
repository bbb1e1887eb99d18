"""Dead-letter record headers and producer settings, and what the sink stops producing on revoke."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from streamworker.records import F_PARTITION, new_record
from streamworker.supervisor.backoff import Backoff
from streamworker.supervisor.deadletter import (
    MAX_ERROR_MESSAGE_BYTES,
    DeadLetterSink,
    Delivery,
    dead_letter_headers,
    producer_settings,
)


def test_headers_keep_the_originals_and_describe_the_failure() -> None:
    record = new_record(
        "orders", 3, 41, b"k", b"v", [("trace", b"\xff\x00"), ("trace", None)], 123, attempt=4
    )
    failed_at = dt.datetime(2026, 11, 27, 15, 0, 0, 123000, tzinfo=dt.UTC)
    headers = dead_letter_headers(record, "ValueError", "x" * 5000, failed_at)
    assert headers[:2] == [("trace", b"\xff\x00"), ("trace", None)]
    extra = dict(headers[2:])
    assert extra == {
        "streamworker.error.type": b"ValueError",
        "streamworker.error.message": b"x" * MAX_ERROR_MESSAGE_BYTES,
        "streamworker.original.topic": b"orders",
        "streamworker.original.partition": b"3",
        "streamworker.original.offset": b"41",
        "streamworker.attempts": b"4",
        "streamworker.failed.at": b"2026-11-27T15:00:00.123+00:00",
    }


def test_producer_settings_keep_connection_and_security_but_no_group() -> None:
    consumer = {
        "bootstrap.servers": "b:1",
        "group.id": "g",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 2000,
        "heartbeat.interval.ms": 400,
        "max.poll.interval.ms": 30000,
        "partition.assignment.strategy": "range",
        "fetch.queue.backoff.ms": 10,
        "queued.min.messages": 20000,
        "fetch.wait.max.ms": 100,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
    }
    settings = producer_settings(consumer, "dlq-client")
    assert settings["bootstrap.servers"] == "b:1"
    assert settings["security.protocol"] == "SASL_SSL" and settings["sasl.mechanism"] == "PLAIN"
    assert settings["acks"] == "all" and settings["enable.idempotence"] is True
    assert settings["client.id"] == "dlq-client"
    for key in (
        "group.id",
        "enable.auto.commit",
        "auto.offset.reset",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "partition.assignment.strategy",
        "fetch.queue.backoff.ms",
        "queued.min.messages",
        "fetch.wait.max.ms",
    ):
        assert key not in settings


def _unreachable_sink() -> DeadLetterSink:
    """A sink whose produces fail within a fraction of a second (nothing listens on port 9)."""
    settings = {
        "bootstrap.servers": "127.0.0.1:9",
        "message.timeout.ms": 200,
        "socket.connection.setup.timeout.ms": 1000,
        "log_level": 0,
    }
    return DeadLetterSink("dlq", settings, Backoff(0.01, 0.01, jitter=0.0))


def _record(partition: int, offset: int) -> list[Any]:
    return new_record("orders", partition, offset, b"k", b"v", None, None, attempt=4)


def _poll_until(sink: DeadLetterSink, done: Callable[[list[Delivery]], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    seen: list[Delivery] = []
    while not done(seen):
        assert time.monotonic() < deadline, f"not reached within {timeout}s: {seen}"
        sink._producer.poll(0.05)  # serve delivery reports without re-sending anything
        seen.extend(sink.poll(time.monotonic() - 3600))


def test_forgotten_partitions_are_not_produced_again() -> None:
    sink = _unreachable_sink()
    try:
        sink.send(_record(3, 41), "ValueError", "boom", time.monotonic())
        sink.send(_record(4, 7), "ValueError", "boom", time.monotonic())
        _poll_until(sink, lambda seen: len(seen) >= 2 and sink.in_flight == 0)
        sink.forget([("orders", 3)])
        # Everything is due again: only partition 4's record is produced (and fails) again.
        retried = [d.record[F_PARTITION] for d in sink.poll(time.monotonic() + 3600)]
        assert sink.in_flight + len(retried) == 1
        _poll_until(sink, lambda seen: sink.in_flight == 0)
        assert [a.record[F_PARTITION] for a in sink._waiting] == [4]
    finally:
        sink.close(0)


def test_a_produce_in_flight_for_a_forgotten_partition_is_not_retried_when_it_fails() -> None:
    sink = _unreachable_sink()
    try:
        sink.send(_record(3, 41), "ValueError", "boom", time.monotonic())
        assert sink.in_flight == 1
        sink.forget([("orders", 3)])
        _poll_until(sink, lambda seen: sink.in_flight == 0)
        assert sink._waiting == []
        assert sink.poll(time.monotonic() + 3600) == []
    finally:
        sink.close(0)
