"""Dead-letter record headers and producer settings (pure parts of the dead-letter sink)."""

from __future__ import annotations

import datetime as dt

from streamworker.supervisor.deadletter import MAX_ERROR_MESSAGE_BYTES, dead_letter_headers, producer_settings


def test_headers_keep_the_originals_and_describe_the_failure() -> None:
    record = [0, 0, "orders", 3, 41, b"k", b"v", [("trace", b"\xff\x00"), ("trace", None)], 123, 4, False]
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
    ):
        assert key not in settings
