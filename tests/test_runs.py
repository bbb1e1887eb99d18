"""Fetched messages become runs (pool and static mode): one per stretch of one partition."""

from __future__ import annotations

from confluent_kafka import KafkaError, Message

from streamworker.records import F_OFFSET, F_SIZE, F_TIMESTAMP_MS
from streamworker.supervisor.dispatch import Run
from streamworker.supervisor.intake import split_into_runs


def message(topic: str, partition: int, offset: int, value: bytes | None = b"v", **kw: object) -> Message:
    return Message(
        topic=topic,
        partition=partition,
        offset=offset,
        key=kw.get("key"),
        value=value,
        headers=kw.get("headers"),
        timestamp=kw.get("timestamp", (1, 1_700_000_000_000 + offset)),
        error=kw.get("error"),
    )


def test_consecutive_messages_of_a_partition_become_one_run_of_columns() -> None:
    messages = [
        message("orders", 0, 10, key=b"a", headers=[("h", b"1")]),
        message("orders", 0, 11, value=None, timestamp=(0, -1)),
        message("orders", 1, 5, key=b"bb", value=b"xyz"),
        message("orders", 0, 12),
    ]
    parts = split_into_runs(messages, "orders")
    assert [type(p) for p in parts] == [Run, Run, Run]
    first, second, third = parts
    assert isinstance(first, Run) and isinstance(second, Run) and isinstance(third, Run)
    assert (first.topic, first.partition, first.offsets) == ("orders", 0, [10, 11])
    assert first.keys == [b"a", None] and first.values == [b"v", None]
    assert first.headers == [[("h", b"1")], None]
    assert first.timestamps == [1_700_000_000_010, -1], "no timestamp travels as -1"
    assert first.size == 2, "key and value bytes; a null value weighs nothing"
    assert (second.partition, second.offsets, second.size) == (1, [5], 5)
    assert (third.partition, third.offsets) == (0, [12]), "a partition that comes back starts a new run"
    # A run's records, should they leave it, are ordinary wire records with their own sizes.
    records = first.records()
    assert [r[F_OFFSET] for r in records] == [10, 11] and [r[F_TIMESTAMP_MS] for r in records] == [
        1_700_000_000_010,
        None,
    ]
    assert [r[F_SIZE] for r in records] == [2, 0]


def test_same_partition_number_of_two_topics_and_errors_take_the_per_record_path() -> None:
    eof = KafkaError(KafkaError._PARTITION_EOF)
    messages = [
        message("a", 0, 1),
        message("b", 0, 7),  # subscribed to two topics: same partition number, other topic
        message("a", 1, 3),
        message("a", 1, 4, error=eof),
        message("a", 2, 9),
    ]
    parts = split_into_runs(messages, None)
    assert isinstance(parts[0], list) and [m.topic() for m in parts[0]] == ["a", "b"]
    assert isinstance(parts[1], list) and len(parts[1]) == 2, "a stretch with an error is not a run"
    assert isinstance(parts[2], Run) and (parts[2].topic, parts[2].offsets) == ("a", [9])


def test_a_batch_of_one_partition_is_one_run_and_an_empty_batch_none() -> None:
    messages = [message("orders", 3, offset) for offset in range(100, 130)]
    parts = split_into_runs(messages, "orders")
    assert len(parts) == 1 and isinstance(parts[0], Run)
    assert (parts[0].partition, parts[0].offsets) == (3, list(range(100, 130)))
    assert split_into_runs([], "orders") == []
