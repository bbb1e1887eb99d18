"""The Kafka consumer's commits: the one place offsets leave the supervisor.

``commit_async`` is the cadence commit of the poll loop (its failures come back through ``on_commit``);
``commit_sync`` is the final commit of a revoke or a shutdown, which has one chance before the
partitions go: it retries the broker's transient errors (request timed out, coordinator loading or
moved...) with tenacity, within the caller's deadline. A partition whose commit failed for good is
left out of what it returns, so it is not marked committed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

TP = tuple[str, int]

# First retry after 50 ms, doubling, at most 1 s between tries: a coordinator move takes ~100s of ms.
RETRY_WAIT_MIN_SECONDS = 0.05
RETRY_WAIT_MAX_SECONDS = 1.0


class RetriableCommitError(Exception):
    """Some partitions' commit failed with an error the broker says may pass; they are tried again."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def is_retriable(error: BaseException) -> bool:
    """A commit worth trying again: librdkafka flags the error retriable (or we did, per partition)."""
    if isinstance(error, RetriableCommitError):
        return True
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        return bool(error.args[0].retriable())
    return False


def commit_async(consumer: Consumer, positions: Mapping[TP, int]) -> None:
    """Commit without waiting; raises ``KafkaException`` when the request cannot even be queued."""
    consumer.commit(offsets=_offsets(positions), asynchronous=True)


def commit_sync(
    consumer: Consumer,
    positions: Mapping[TP, int],
    deadline: float,
    log: Any,
    *,
    wait_min: float = RETRY_WAIT_MIN_SECONDS,
    wait_max: float = RETRY_WAIT_MAX_SECONDS,
) -> dict[TP, int]:
    """Commit ``positions`` and wait; retriable errors are retried until ``deadline`` (monotonic).

    Returns the positions the broker accepted. The first try always happens, even past the deadline.
    """
    remaining = dict(positions)
    committed: dict[TP, int] = {}

    def attempt() -> None:
        results = consumer.commit(offsets=_offsets(remaining), asynchronous=False)
        retriable: list[str] = []
        for result in results or ():
            tp = (result.topic, result.partition)
            if tp not in remaining:
                continue
            if result.error is None:
                committed[tp] = remaining.pop(tp)
            elif isinstance(result.error, KafkaError) and result.error.retriable():
                retriable.append(f"{result.topic}/{result.partition}: {result.error}")
            else:
                log.warning("commit failed", errors=[f"{result.topic}/{result.partition}: {result.error}"])
                remaining.pop(tp)
        if not results:  # nothing reported per partition: the request as a whole went through
            committed.update(remaining)
            remaining.clear()
        if retriable:
            raise RetriableCommitError(retriable)

    def before_sleep(state: Any) -> None:
        log.warning(
            "commit failed; retrying", error=str(state.outcome.exception()), attempt=state.attempt_number
        )

    retrying = Retrying(
        stop=stop_after_delay(max(0.0, deadline - time.monotonic())),
        wait=wait_exponential(multiplier=wait_min, min=wait_min, max=wait_max),
        retry=retry_if_exception(is_retriable),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        retrying(attempt)
    except RetriableCommitError as exc:
        log.warning("commit failed", errors=exc.errors)
    except KafkaException as exc:
        log.warning("commit failed", error=str(exc), synchronous=True)
    return committed


def _offsets(positions: Mapping[TP, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in positions.items()]
