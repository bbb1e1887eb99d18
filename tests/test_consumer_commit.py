"""The final commit of a revoke or shutdown retries transient broker errors (tenacity), not others."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streamworker.supervisor.consumer import commit_sync, is_retriable


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


@dataclass
class Result:
    """What commit() reports per partition (TopicPartition's error is read-only)."""

    topic: str
    partition: int
    error: KafkaError | None = None


class FakeConsumer:
    """commit() raises each queued error in turn, then succeeds (per-partition results, like librdkafka)."""

    def __init__(self, errors: list[KafkaError], per_partition: bool = False) -> None:
        self.errors = list(errors)
        self.per_partition = per_partition
        self.calls: list[list[tuple[str, int, int]]] = []

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[Result]:
        assert asynchronous is False
        self.calls.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])
        if self.errors:
            error = self.errors.pop(0)
            if not self.per_partition:
                raise KafkaException(error)
            # The first partition fails, the others go through.
            return [Result(tp.topic, tp.partition, error if i == 0 else None) for i, tp in enumerate(offsets)]
        return [Result(tp.topic, tp.partition) for tp in offsets]


def _commit(consumer: FakeConsumer, positions: dict[tuple[str, int], int], log: Log) -> dict[Any, int]:
    return commit_sync(
        consumer,  # type: ignore[arg-type]
        positions,
        time.monotonic() + 5.0,
        log,
        wait_min=0.001,
        wait_max=0.002,
    )


def test_transient_errors_are_retried_until_the_commit_succeeds() -> None:
    consumer = FakeConsumer(
        [
            KafkaError(KafkaError.REQUEST_TIMED_OUT, "timed out", retriable=True),
            KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS, "loading", retriable=True),
        ]
    )
    log = Log()
    committed = _commit(consumer, {("t", 0): 5, ("t", 1): 7}, log)
    assert committed == {("t", 0): 5, ("t", 1): 7}
    assert len(consumer.calls) == 3
    assert [event for event, _ in log.lines] == ["commit failed; retrying"] * 2


def test_a_partition_failing_transiently_is_retried_alone() -> None:
    consumer = FakeConsumer(
        [KafkaError(KafkaError.NOT_COORDINATOR, "moved", retriable=True)], per_partition=True
    )
    committed = _commit(consumer, {("t", 0): 5, ("t", 1): 7}, Log())
    assert committed == {("t", 0): 5, ("t", 1): 7}
    assert consumer.calls == [[("t", 0, 5), ("t", 1, 7)], [("t", 0, 5)]]


def test_a_non_retriable_error_is_not_retried_and_nothing_is_marked_committed() -> None:
    consumer = FakeConsumer([KafkaError(KafkaError.ILLEGAL_GENERATION, "fenced", retriable=False)])
    log = Log()
    committed = _commit(consumer, {("t", 0): 5}, log)
    assert committed == {}
    assert len(consumer.calls) == 1
    assert [event for event, _ in log.lines] == ["commit failed"]


def test_a_partition_failing_for_good_is_left_out() -> None:
    consumer = FakeConsumer(
        [KafkaError(KafkaError.ILLEGAL_GENERATION, "fenced", retriable=False)], per_partition=True
    )
    committed = _commit(consumer, {("t", 0): 5, ("t", 1): 7}, Log())
    assert committed == {("t", 1): 7}
    assert len(consumer.calls) == 1


def test_retries_stop_at_the_deadline() -> None:
    consumer = FakeConsumer([KafkaError(KafkaError.REQUEST_TIMED_OUT, "timed out", retriable=True)] * 1000)
    log = Log()
    committed = commit_sync(
        consumer,  # type: ignore[arg-type]
        {("t", 0): 5},
        time.monotonic() + 0.05,
        log,
        wait_min=0.001,
        wait_max=0.005,
    )
    assert committed == {}
    assert 1 < len(consumer.calls) < 1000
    assert log.lines[-1][0] == "commit failed"


def test_retriable_is_what_librdkafka_says() -> None:
    assert is_retriable(KafkaException(KafkaError(KafkaError.REQUEST_TIMED_OUT, retriable=True)))
    assert not is_retriable(KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION)))
    assert not is_retriable(ValueError("x"))
