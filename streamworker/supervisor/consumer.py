"""The consumer shell: the one Kafka consumer of a trigger and everything said to it.

``ConsumerShell`` builds the client (its error, commit and log callbacks), commits what the
dispatcher says is done, and applies its flow control (pause, resume, seek). The rebalance callbacks
are the runner's (they order the drain); what they tell the client goes through here.

Commits: ``commit_async`` is the cadence commit of the poll loop (``commit_cadence.py``; its
failures come back through ``on_commit``); ``commit_sync`` is the final commit of a revoke or a
shutdown, which has one chance before the partitions go: it retries the broker's transient errors
(request timed out, coordinator loading or moved...) with tenacity, within the caller's deadline. A
partition whose commit failed for good is left out of what it returns, so it is not marked
committed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from streamworker.supervisor.dispatch import Dispatcher

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


def partition_list(partitions: list[TopicPartition]) -> list[TP]:
    return [(p.topic, p.partition) for p in partitions]


def fmt(tps: list[TP]) -> list[str]:
    return [f"{t}/{p}" for t, p in sorted(tps)]


class ConsumerShell:
    """The trigger's consumer, with the dispatcher's decisions applied to it."""

    def __init__(self, dispatcher: Dispatcher, log: Any, client_log: Any) -> None:
        self.dispatcher = dispatcher
        self.log = log
        # Client errors and librdkafka's log lines, with repeats held back (an outage stays readable).
        self.client_log = client_log
        self.consumer: Consumer | None = None
        # A fatal librdkafka error (fenced static member...): the consumer is dead, the trigger fails.
        self.fatal_error: str | None = None

    def build(self, settings: Mapping[str, Any]) -> Consumer:
        """A consumer with our callbacks; raises ``KafkaException`` on invalid settings."""
        consumer = Consumer(
            {
                **settings,
                "error_cb": self.on_client_error,
                "on_commit": self.on_commit,
                "logger": _librdkafka_logger(self.client_log),
            }
        )
        self.consumer = consumer
        return consumer

    # -- librdkafka callbacks (they run inside consume()) -----------------------------------
    def on_client_error(self, error: KafkaError) -> None:
        self.client_log.warning(
            "kafka client error", error=error.str(), code=error.name(), fatal=error.fatal()
        )
        if error.fatal() and self.fatal_error is None:
            # Remembered, not raised: this runs inside librdkafka's callback. The runner fails the
            # trigger at its next pass: the consumer will never fetch or commit again, so carrying
            # on would leave a process that looks healthy and does nothing.
            self.fatal_error = f"fatal Kafka client error {error.name()}: {error.str()}"

    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if error is not None:
            self.log.warning("commit failed; will retry", error=str(error))
            self.dispatcher.forget_committed(partition_list(partitions))

    # -- commits ----------------------------------------------------------------------------
    def commit(self, tps: list[TP] | None, synchronous: bool, deadline: float = 0.0) -> dict[str, int]:
        """Commit what is done (of ``tps``, or everything); a synchronous commit retries transient
        broker errors until ``deadline``. Returns what was committed."""
        consumer = self.consumer
        assert consumer is not None
        positions = self.dispatcher.commit_positions(tps)
        if not positions:
            return {}
        if synchronous:
            positions = commit_sync(consumer, positions, deadline, self.log)
        else:
            try:
                commit_async(consumer, positions)
            except KafkaException as exc:
                self.log.warning("commit failed", error=str(exc), synchronous=False)
                return {}
        self.dispatcher.mark_committed(positions)
        return {f"{t}/{p}": o for (t, p), o in positions.items()}

    # -- flow control -----------------------------------------------------------------------
    def pause(self, tps: list[TP]) -> None:
        assert self.consumer is not None
        self.consumer.pause([TopicPartition(t, p) for t, p in tps])

    def resume(self, partitions: list[TopicPartition]) -> None:
        assert self.consumer is not None
        self.consumer.resume(partitions)

    def flow_control(self) -> None:
        """Pause partitions whose buffer is full, resume (and rewind) those that drained."""
        consumer = self.consumer
        assert consumer is not None
        pause, resume = self.dispatcher.flow_control()
        if pause:
            consumer.pause([TopicPartition(t, p) for t, p in pause])
            self.log.info("buffer full; partitions paused", partitions=fmt(pause))
        resumed = []
        for (topic, partition), rewind_to in resume:
            tp = TopicPartition(topic, partition)
            try:
                consumer.resume([tp])
                if rewind_to is not None:
                    # Records past the buffer limit were dropped unbuffered: fetch them again. (Seeking
                    # right after resume also avoids librdkafka's ~1 s delay before refetching.)
                    consumer.seek(TopicPartition(topic, partition, rewind_to))
            except KafkaException as exc:
                consumer.pause([tp])
                self.dispatcher.repause((topic, partition), rewind_to)
                self.log.warning(
                    "resume failed; will retry", partition=f"{topic}/{partition}", error=str(exc)
                )
                continue
            resumed.append((topic, partition))
        if resumed:
            self.log.info("buffer drained; partitions resumed", partitions=fmt(resumed))

    def high_watermark(self, tp: TP) -> int | None:
        """From the last fetch response (the client's cache); None when unknown."""
        if self.consumer is None:
            return None
        try:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)
        except KafkaException:
            return None
        return high if high >= 0 else None

    def close(self) -> None:
        assert self.consumer is not None
        self.consumer.close()

    def close_quietly(self) -> None:
        """Fatal path: close without committing anything new, whatever state the client is in."""
        if self.consumer is not None:
            try:
                self.consumer.close()
            except (KafkaException, RuntimeError):
                pass


def _librdkafka_logger(log: Any) -> logging.Logger:
    """A stdlib logger that forwards librdkafka's own log lines into our structured logs."""
    logger = logging.getLogger(f"streamworker.librdkafka.{id(log)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        logger.addHandler(_StructlogForwarder(log.warning))
    return logger


class _StructlogForwarder(logging.Handler):
    def __init__(self, emit: Callable[..., Any]) -> None:
        super().__init__()
        self._emit = emit

    def emit(self, record: logging.LogRecord) -> None:
        self._emit("librdkafka", detail=record.getMessage(), level_name=record.levelname.lower())
