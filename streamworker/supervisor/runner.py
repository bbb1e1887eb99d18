"""One trigger at run time: its consumer, its worker processes and the loop that joins them.

The loop is single-threaded and never blocks on a worker: it alternates between fetching from Kafka
(``consume``, which also runs the rebalance callbacks), reading worker results from the pipes
(``selectors``), handing buffered records to workers (the pure ``Dispatcher`` decides) and timers
(commits, retries, timeouts, respawns). Waiting happens only where nothing else can be done: in
``consume`` when no worker is busy, in ``select`` on the worker pipes when some are.
"""

from __future__ import annotations

import enum
import itertools
import logging
import operator
import os
import selectors
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from streamworker.config.kafka_settings import consumer_settings
from streamworker.config.model import AllocationMode, ExplicitAckMode, FunctionConfig, TriggerConfig
from streamworker.observability.logging import get_logger
from streamworker.observability.ratelimit import RepeatLimiter
from streamworker.protocol import RESULT_RUN_DURATIONS, Msg, ProtocolError, Status, WorkerInit
from streamworker.records import F_ATTEMPT, F_OFFSET, F_PARTITION, F_TOPIC, new_record
from streamworker.snapshots import NullObserver, PartitionSnapshot, RunnerObserver, TriggerSnapshot
from streamworker.supervisor.backoff import Backoff
from streamworker.supervisor.consumer import commit_async, commit_sync
from streamworker.supervisor.deadletter import DeadLetterSink, producer_settings
from streamworker.supervisor.dispatch import (
    Dispatcher,
    DispatchSettings,
    Item,
    Run,
)
from streamworker.supervisor.failure_policy import Action, Failure, FailurePolicy
from streamworker.supervisor.outputs import MESSAGE_TIMEOUT_MS as OUTPUT_MESSAGE_TIMEOUT_MS
from streamworker.supervisor.outputs import OutputSink, OutputStats, PendingOutputs
from streamworker.supervisor.workers import WorkerProcess, WorkerState, describe_exit
from streamworker.worker.sdk import decode_strings_from_env

TP = tuple[str, int]

# How long ``consume`` may block when no worker has anything to report.
IDLE_POLL_SECONDS = 0.1
# How long to wait on worker pipes when workers are busy and Kafka gave nothing.
BUSY_WAIT_SECONDS = 0.005
# With workers idle but outputs awaiting delivery reports: how long consume() may block.
OUTPUT_POLL_SECONDS = 0.01
CONSUME_BATCH = 1000
COMMIT_INTERVAL_SECONDS = 1.0
# No results for this long means the worker's head event is the one running (see _on_worker_gone).
RESULTS_QUIET_SECONDS = 0.1
# A worker that stayed up this long is healthy again: its crash-loop backoff starts over.
STABLE_WORKER_SECONDS = 30.0
# Kills at a revoke or shutdown deadline: the record was not at fault, so nothing is blamed for it.
DEADLINE_KILLS = frozenset({"rebalance_deadline", "shutdown_timeout"})


class Outcome(enum.IntEnum):
    """How a trigger runner ended; the CLI turns the worst one into the exit code."""

    CLEAN = 0
    FAILED = 1
    CONFIG_INVALID = 2
    HANDLER_LOAD_FAILED = 3


class FatalTriggerError(Exception):
    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass
class WorkerSeat:
    """A numbered place for a worker process; the process in it is replaced when it dies."""

    worker_id: int
    process: WorkerProcess | None = None
    crashes: int = 0
    respawn_at: float | None = None
    ever_ready: bool = False


@dataclass
class RunnerOptions:
    log_level: str = "info"
    log_format: str = "json"
    observer: RunnerObserver = field(default_factory=NullObserver)
    # Extra environment for workers on top of os.environ and spec.env (tests use it).
    extra_env: Mapping[str, str] = field(default_factory=dict)


def worker_environment(env: Mapping[str, str], function: FunctionConfig) -> dict[str, str]:
    """``env`` without the variables secret fields of function.yaml refer to, unless spec.env names them."""
    hidden = function.secret_env - set(function.env)
    return {name: value for name, value in env.items() if name not in hidden}


def _partition_list(partitions: list[TopicPartition]) -> list[TP]:
    return [(p.topic, p.partition) for p in partitions]


class TriggerRunner:
    def __init__(
        self,
        function: FunctionConfig,
        trigger: TriggerConfig,
        stop: threading.Event,
        options: RunnerOptions | None = None,
    ) -> None:
        self.function = function
        self.trigger = trigger
        self.attrs = trigger.attributes
        self.stop = stop
        self.options = options or RunnerOptions()
        self.log = get_logger(trigger=trigger.name)
        # Client errors and librdkafka's log lines, with repeats held back (an outage stays readable).
        self._client_log = RepeatLimiter.from_environ(self.log)
        self.env = {
            **os.environ,
            **function.nuclio_env,
            **function.env,
            "STREAMWORKER_LOG_FORMAT": self.options.log_format,
            **self.options.extra_env,
        }
        # Secrets the consumer was configured from stay with the supervisor: a handler (or a library
        # it uses, or a process it starts) cannot read them unless spec.env hands them over.
        self.worker_env = worker_environment(self.env, function)
        self._retry_backoff = Backoff(self.attrs.retry_backoff, self.attrs.retry_max_backoff)
        self._respawn_backoff = Backoff(0.5, 30.0)
        self.dispatcher = Dispatcher(
            DispatchSettings(
                mode=self.attrs.worker_allocation_mode,
                num_workers=trigger.num_workers,
                max_buffered_records=self.attrs.max_buffered_records,
                max_buffered_bytes=self.attrs.max_buffered_bytes,
                ack_mode=trigger.explicit_ack_mode,
                ack_scope=self.attrs.explicit_ack_scope,
                static_mapping=self.attrs.static_mapping,
                ack_timeout=self.attrs.ack_timeout,
            ),
            FailurePolicy(
                max_retries=self.attrs.max_retries,
                on_error=self.attrs.failure_action,
                delay=self._retry_backoff.delay,
            ),
        )
        # Runs (see dispatch.Run): where a partition is one lane and no record waits for an ack.
        self._use_runs = (
            self.attrs.worker_allocation_mode is not AllocationMode.KEY
            and trigger.explicit_ack_mode is ExplicitAckMode.DISABLE
        )
        # Subscribed to one topic by name (not a pattern): every record is of that topic.
        topics = self.attrs.topics
        self._only_topic = topics[0] if len(topics) == 1 and not topics[0].startswith("^") else None
        self.dead_letters: DeadLetterSink | None = None
        # Handlers' outputs (docs/outputs.md): the producer starts with the first output.
        self.outputs: OutputSink | None = None
        self.output_stats = OutputStats()
        self._producer_base: dict[str, Any] = {}
        self.seats = [WorkerSeat(i) for i in range(trigger.num_workers)]
        self.selector = selectors.DefaultSelector()
        self.consumer: Consumer | None = None
        self._stopping = False
        self._last_commit = 0.0
        self._commit_failures: dict[TP, int] = {}
        self._drain_requests = 0
        self.observer = self.options.observer
        self._observed = not isinstance(self.observer, NullObserver)
        self._joined = False
        self._last_loop_at = time.monotonic()
        self._rebalances: dict[str, int] = {}
        self._restarts: dict[str, int] = {}
        # A fatal librdkafka error (fenced static member...): the consumer is dead, the trigger fails.
        self._fatal_error: str | None = None

    # -- worker management ------------------------------------------------------------------
    def _worker_init(self, worker_id: int) -> WorkerInit:
        return WorkerInit(
            handler=str(self.function.handler),
            code_dir=str(self.function.code_dir),
            worker_id=worker_id,
            trigger_name=self.trigger.name,
            trigger_kind=self.trigger.kind,
            function_name=self.function.name,
            decode_strings=decode_strings_from_env(self.env),
            log_level=self.options.log_level,
            output_topic=self.attrs.output_topic,
            output_headers=self.attrs.output_headers.value,
            ack_mode=self.trigger.explicit_ack_mode.value,
        )

    def _spawn(self, seat: WorkerSeat) -> None:
        process = WorkerProcess(seat.worker_id, self._worker_init(seat.worker_id), self.worker_env)
        seat.process = process
        seat.respawn_at = None
        self.selector.register(process.read_fd, selectors.EVENT_READ, seat)
        if process.exit_fd >= 0:
            # The pipe's end of file can be held back by a process the handler started: watch the exit.
            self.selector.register(process.exit_fd, selectors.EVENT_READ, seat)
        self.log.info("worker started", worker=seat.worker_id, pid=process.pid)

    def _unwatch(self, process: WorkerProcess) -> None:
        """Take the worker's descriptors out of the selector (before they are closed)."""
        for fd in (process.read_fd, process.exit_fd):
            if fd >= 0:
                try:
                    self.selector.unregister(fd)
                except (KeyError, ValueError):
                    pass

    def _on_worker_gone(self, seat: WorkerSeat, reason: str, now: float) -> None:
        process = seat.process
        assert process is not None
        self._unwatch(process)
        stopping = process.state is WorkerState.STOPPING
        code = process.reap(timeout=2.0)
        seat.process = None
        if stopping:
            return
        # Finished events are reported within ~10 ms (the worker's flusher), so after a quiet spell
        # the head of the queue is the event that was running; a kill is always about the head.
        head_running = process.kill_reason is not None or now - process.busy_since > RESULTS_QUIET_SECONDS
        blameless = process.kill_kind in DEADLINE_KILLS
        failures = self.dispatcher.worker_lost(seat.worker_id, reason, now, head_running, blameless)
        for failure in failures:
            self._on_failure(failure)
        kind = process.kill_kind or "crash"
        self._restarts[kind] = self._restarts.get(kind, 0) + 1
        if now - process.started_at > STABLE_WORKER_SECONDS:
            seat.crashes = 0
        if not blameless:  # a deadline kill says nothing about the worker's health
            seat.crashes += 1
        crash_looping = seat.crashes > 1 and not blameless
        seat.respawn_at = now + self._respawn_backoff.delay(seat.crashes) if crash_looping else now
        self.log.error(
            "worker died; replacing it",
            worker=seat.worker_id,
            pid=process.pid,
            reason=reason,
            exit=describe_exit(code),
            crashes_in_a_row=seat.crashes,
            respawn_in_s=round(seat.respawn_at - now, 3),
        )

    def _kill_worker(self, seat: WorkerSeat, reason: str, kind: str) -> None:
        """Kill a worker on purpose; the death is handled like any other when its pipe closes."""
        if seat.process is not None:
            self.log.warning("killing worker", worker=seat.worker_id, pid=seat.process.pid, reason=reason)
            seat.process.kill_reason = reason
            seat.process.kill_kind = kind
            seat.process.kill()

    def _handle_messages(self, seat: WorkerSeat, messages: list[list[Any]], now: float) -> None:
        process = seat.process
        assert process is not None
        dispatcher = self.dispatcher
        for message in messages:
            kind = message[0]
            if kind == Msg.RESULTS:
                failures = dispatcher.complete(seat.worker_id, message[1], now)
                process.busy_since = now
                if self._observed:
                    self._observe_durations(message[1])
                for failure in failures:
                    self._on_failure(failure)
            elif kind == Msg.READY:
                process.state = WorkerState.READY
                seat.ever_ready = True
                dispatcher.worker_ready(seat.worker_id)
                self.log.info("worker ready", worker=seat.worker_id, pid=process.pid)
            elif kind == Msg.INIT_FAILED:
                info = message[1]
                text = f"{info.get('error_type')}: {info.get('message')}"
                # The message names file and line; the traceback is the rest of the story.
                trace = info.get("traceback")
                self.log.error("worker failed to start", worker=seat.worker_id, error=text, traceback=trace)
                if not seat.ever_ready:
                    raise FatalTriggerError(Outcome.HANDLER_LOAD_FAILED, text)
            elif kind == Msg.DRAINED:
                process.drained.add(int(message[1]))
            elif kind == Msg.TERMINATED:
                process.terminated = True
            elif kind == Msg.ACKS:
                self._on_acks(message[1])
            elif kind == Msg.OUTPUTS:
                self._on_outputs(message[1])

    def _pump(self, timeout: float) -> None:
        """Read and apply whatever the workers sent, waiting at most ``timeout`` for the first frame."""
        events = self.selector.select(timeout) if self.selector.get_map() else []
        if not events:
            return
        now = time.monotonic()
        for key, _ in events:
            seat: WorkerSeat = key.data
            process = seat.process
            if process is None:
                continue
            try:
                messages, eof = process.receive()
            except ProtocolError as exc:
                self._on_bad_frame(seat, process, exc, now)
                continue
            if messages:
                self._handle_messages(seat, messages, now)
            if eof or key.fd == process.exit_fd:
                self._on_worker_gone(seat, process.kill_reason or "worker process exited", now)

    def _on_bad_frame(
        self, seat: WorkerSeat, process: WorkerProcess, error: ProtocolError, now: float
    ) -> None:
        """A worker's output cannot be decoded: nothing more it says can be trusted. It is replaced
        like a crashed worker (its queue goes back, unblamed unless the head was surely running);
        the other workers and the trigger carry on."""
        self.log.error(
            "bad frame from worker; killing it", worker=seat.worker_id, pid=process.pid, error=str(error)
        )
        process.kill_kind = "protocol_error"
        process.kill()
        self._on_worker_gone(seat, f"protocol error: {error}", now)

    def _observe_durations(self, results: list[list[Any]]) -> None:
        """Handler durations of a RESULTS message: each event that ran, and each run's summary."""
        ran: list[float] = []
        for result in results:
            if len(result) > RESULT_RUN_DURATIONS:
                count, total, counts = result[RESULT_RUN_DURATIONS]
                if count:
                    self.observer.on_duration_counts(self.trigger.name, counts, total)
                if result[1] == Status.ERROR:
                    ran.append(result[2])
            elif result[1] != Status.DEFERRED:
                ran.append(result[2])
        if ran:
            self.observer.on_durations(self.trigger.name, ran)

    def _dispatch(self, now: float) -> None:
        batches = self.dispatcher.take_dispatches(now)
        for wid, events in batches.items():
            process = self.seats[wid].process
            if process is None:  # cannot happen: the dispatcher only uses ready workers
                continue
            if self.dispatcher.queued_on(wid) == len(events):
                # The worker was idle: its clock (eventTimeout, crash attribution) starts now. A
                # batch sent to a busy worker must not restart it, or a hung call is never timed out.
                process.busy_since = now
            process.send([Msg.EVENTS, events])

    def _flush_writers(self) -> None:
        for seat in self.seats:
            if seat.process is not None and not seat.process.writer.empty:
                seat.process.flush()

    # -- failures ---------------------------------------------------------------------------
    def _on_failure(self, failure: Failure) -> None:
        """Log a failed attempt and carry out what the failure policy decided."""
        record = failure.record
        where = {"topic": record[F_TOPIC], "partition": record[F_PARTITION], "offset": record[F_OFFSET]}
        error = {"error_type": failure.error_type, "error": failure.error_message}
        action = failure.action
        if action is Action.RETRY:
            self.log.error(
                "handler failed; will retry",
                **where,
                **error,
                next_attempt=record[F_ATTEMPT],
                retry_in_s=round(failure.retry_in, 3),
            )
        elif action is Action.SKIP:
            self.log.error("handler failed; retries exhausted; record skipped", **where, **error)
        elif action is Action.STOP:
            self.log.error(
                "handler failed; retries exhausted; partition stopped until restart",
                **where,
                **error,
            )
            if self.consumer is not None:
                self.consumer.pause([TopicPartition(record[F_TOPIC], record[F_PARTITION])])
        else:  # Action.DEAD_LETTER: produced by _serve_dead_letters
            self.log.error(
                "handler failed; retries exhausted; sending to the dead-letter topic",
                **where,
                **error,
                dead_letter_topic=self.attrs.dead_letter_topic,
            )

    def _serve_dead_letters(self, now: float) -> None:
        """Produce newly exhausted records to the dead-letter topic and apply delivery reports."""
        sink = self.dead_letters
        if sink is None:
            return
        for record, error_type, message in self.dispatcher.take_dead_letters():
            sink.send(record, error_type, message, now)
        for delivery in sink.poll(now):
            record = delivery.record
            where = {"topic": record[F_TOPIC], "partition": record[F_PARTITION], "offset": record[F_OFFSET]}
            if delivery.error is None:
                if self.dispatcher.dead_lettered(record):
                    self.log.warning("record dead-lettered", **where, dead_letter_topic=sink.topic)
            else:
                self.log.error(
                    "dead-letter produce failed; record NOT done, will produce again",
                    **where,
                    dead_letter_topic=sink.topic,
                    error=delivery.error,
                    tries=delivery.tries,
                    retry_in_s=round(delivery.retry_in, 3),
                )

    # -- outputs ----------------------------------------------------------------------------
    def _on_outputs(self, items: list[list[Any]]) -> None:
        """Produce what handlers produced; each input waits for its outputs (``Dispatcher``)."""
        sink = self.outputs
        if sink is None:
            client_id = f"streamworker-{self.function.name}-{self.trigger.name}-outputs"
            settings = {
                **producer_settings(self._producer_base, client_id),
                "message.timeout.ms": OUTPUT_MESSAGE_TIMEOUT_MS,
            }
            sink = self.outputs = OutputSink(
                settings,
                on_replaced=lambda reason: self.log.error(
                    "output producer failed fatally; replaced it, its outputs in flight are retried",
                    error=reason,
                ),
            )
        for topic, partition, offset, outputs in items:
            pending = self.dispatcher.outputs_sent((topic, partition), offset, outputs)
            # Not ours any more: produced all the same (at-least-once), nothing waits for them.
            sink.send(pending or PendingOutputs(None, offset), outputs)

    def _serve_outputs(self, now: float) -> None:
        """Apply output delivery reports; carry out the failed attempts they caused."""
        sink = self.outputs
        if sink is None:
            return
        reports = sink.poll()
        if reports:
            dispatcher = self.dispatcher
            for report in reports:
                dispatcher.output_delivered(report.pending, report.size, report.error, now)
                if report.error is not None:
                    self.log.warning(
                        "output delivery failed",
                        output_topic=report.topic,
                        offset=report.pending.offset,
                        error=report.error,
                    )
            self.output_stats.record(reports)
        for failure in self.dispatcher.take_output_failures():
            self._on_failure(failure)

    def _settle_outputs(self, deadline: float) -> None:
        """Before a final commit: wait (bounded) for outputs in flight, so their inputs count."""
        sink = self.outputs
        while sink is not None and sink.in_flight and time.monotonic() < deadline:
            self._pump(0.005)
            self._serve_outputs(time.monotonic())
        self._serve_outputs(time.monotonic())

    def _on_acks(self, acks: list[list[Any]]) -> None:
        for topic, partition, offset in acks:
            if not self.dispatcher.ack(topic, partition, offset):
                self.log.warning(
                    "explicit ack ignored: partition not owned by this member",
                    topic=topic,
                    partition=partition,
                    offset=offset,
                )

    # -- Kafka ------------------------------------------------------------------------------
    def _build_consumer(self) -> Consumer:
        try:
            settings: dict[str, Any] = dict(consumer_settings(self.trigger, self.function.name, self.env))
        except ValueError as exc:
            raise FatalTriggerError(Outcome.CONFIG_INVALID, f"{self.function.path.name}: {exc}") from exc
        if self.attrs.dead_letter_topic:
            self.dead_letters = DeadLetterSink(
                self.attrs.dead_letter_topic,
                producer_settings(settings, f"streamworker-{self.function.name}-{self.trigger.name}-dlq"),
                self._retry_backoff,
            )
        self._producer_base = dict(settings)
        settings["error_cb"] = self._on_kafka_error
        settings["on_commit"] = self._on_commit
        settings["logger"] = _librdkafka_logger(self._client_log)
        try:
            return Consumer(settings)
        except KafkaException as exc:
            raise FatalTriggerError(
                Outcome.CONFIG_INVALID, f"{self.function.path.name}: invalid Kafka client settings: {exc}"
            ) from exc

    def _on_kafka_error(self, error: KafkaError) -> None:
        self._client_log.warning(
            "kafka client error", error=error.str(), code=error.name(), fatal=error.fatal()
        )
        if error.fatal():
            self._on_fatal_kafka_error(error)

    def _on_fatal_kafka_error(self, error: KafkaError) -> None:
        """Remember a fatal client error; the loop fails the trigger at its next pass.

        Not raised from here: this runs inside librdkafka's callback. The consumer will never fetch
        or commit again, so carrying on would leave a process that looks healthy and does nothing.
        """
        if self._fatal_error is None:
            self._fatal_error = f"fatal Kafka client error {error.name()}: {error.str()}"

    def _fail_on_fatal_error(self, consumer: Consumer) -> None:
        """Publish the failure (``/live`` turns 503 during the cleanup) and end the trigger (exit 1).

        ``run`` then aborts: workers killed, nothing more committed, so no unfinished work is.
        """
        assert self._fatal_error is not None
        if self._observed:
            self._publish(consumer, time.monotonic())
        raise FatalTriggerError(Outcome.FAILED, self._fatal_error)

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if error is not None:
            self.log.warning("commit failed; will retry", error=str(error))
            for tp in _partition_list(partitions):
                self._commit_failures[tp] = self._commit_failures.get(tp, 0) + 1
            self.dispatcher.forget_committed(_partition_list(partitions))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = _partition_list(partitions)
        self._joined = True
        self._count_rebalance("assign")
        self.log.info("partitions assigned", partitions=_fmt(tps))
        if not self._stopping:
            # librdkafka keeps the application's pause flag across revoke and re-assign: a partition
            # paused here (backpressure, onError: stop) when it was revoked would never be fetched
            # again when it comes back, while the fresh state below says "not paused".
            try:
                consumer.resume(partitions)
            except KafkaException as exc:
                self.log.warning("resume on assign failed", partitions=_fmt(tps), error=str(exc))
            self.dispatcher.assign(tps)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [tp for tp in _partition_list(partitions) if tp in set(self.dispatcher.partitions)]
        if not tps:
            return
        self._count_rebalance("revoke")
        started = time.monotonic()
        dropped = self.dispatcher.begin_revoke(tps)
        self._cancel_queued(tps)
        deadline = started + self.attrs.max_wait_handler_during_rebalance
        self._wait_for_inflight(tps, deadline)
        # Only workers running a record of ``tps``: queued ones were cancelled, and a worker running
        # a record of a partition that stays is left alone (a cancelled item that did not report yet
        # is forgotten below, and its partition waits for it if it comes back: Dispatcher._orphans).
        stuck = self.dispatcher.workers_running(tps)
        for wid in stuck:
            self._kill_worker(
                self.seats[wid], "handler still running at the rebalance deadline", "rebalance_deadline"
            )
        if stuck:
            self._wait_for_exit(stuck, time.monotonic() + 5.0)
        # Outputs still in flight decide whether their inputs are in the commit below.
        self._settle_outputs(max(deadline, time.monotonic() + 1.0))
        # Drain callbacks get what is left of the wait, and at least a second even when handlers used it all.
        drained, late = self._drain(
            self.dispatcher.handled_by(tps) - stuck, max(deadline, time.monotonic() + 1.0)
        )
        committed = self._commit(
            consumer, tps, synchronous=True, deadline=max(deadline, time.monotonic() + 1.0)
        )
        self.dispatcher.forget(tps)
        self._forget_dead_letters(tps)
        self.log.info(
            "partitions revoked",
            partitions=_fmt(tps),
            dropped_buffered=dropped,
            committed=committed,
            drained_workers=drained,
            late_drain_workers=late,
            killed_workers=sorted(stuck),
            took_ms=round((time.monotonic() - started) * 1000, 1),
        )

    def _cancel_queued(self, tps: list[TP]) -> None:
        """Drop the events of ``tps`` that are queued on workers but not started: only the running
        ones are worth waiting for; whoever owns the partitions next fetches the rest again."""
        lanes = self.dispatcher.lanes_of(tps)
        for wid in self.dispatcher.workers_busy_with(tps):
            process = self.seats[wid].process
            if process is not None:
                process.send([Msg.CANCEL, lanes])

    def _drain(self, worker_ids: set[int], deadline: float) -> tuple[list[int], list[int]]:
        """Run the drain callbacks of ``worker_ids`` and wait for each to report it done (bounded).

        Returns (drained, late): a worker is drained only if the process that was asked reported it;
        one that missed the deadline, or died or was replaced meanwhile, is late.
        """
        self._drain_requests += 1
        request = self._drain_requests
        asked: dict[int, WorkerProcess] = {}
        for wid in sorted(worker_ids):
            process = self.seats[wid].process
            if process is not None and process.state is WorkerState.READY:
                process.send([Msg.DRAIN, request])
                asked[wid] = process

        def pending() -> list[int]:
            return [
                wid
                for wid, process in asked.items()
                if self.seats[wid].process is process and request not in process.drained
            ]

        while pending() and time.monotonic() < deadline:
            self._flush_writers()
            self._pump(min(0.05, max(0.0, deadline - time.monotonic())))
        drained = [wid for wid, process in asked.items() if request in process.drained]
        late = [wid for wid in asked if wid not in drained]
        if late:
            self.log.warning("drain callbacks did not finish before the rebalance deadline", workers=late)
        return drained, late

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = _partition_list(partitions)
        self._count_rebalance("lost")
        self.dispatcher.begin_revoke(tps)
        # Another member may own them already: do not start any more of their records here. Calls
        # still running finish unwaited; if the partitions come back to us, none of their records is
        # dispatched until those are done (Dispatcher._orphans).
        self._cancel_queued(tps)
        self.dispatcher.forget(tps)
        self._forget_dead_letters(tps)
        self.log.warning(
            "partitions lost (session expired); nothing committed for them", partitions=_fmt(tps)
        )

    def _forget_dead_letters(self, tps: list[TP]) -> None:
        if self.dead_letters is not None:
            self.dead_letters.forget(tps)

    def _count_rebalance(self, kind: str) -> None:
        self._rebalances[kind] = self._rebalances.get(kind, 0) + 1

    def _publish(self, consumer: Consumer | None, now: float) -> None:
        """Hand the observer a fresh snapshot (only when somebody observes)."""
        partitions = []
        ages = self.dispatcher.oldest_unfinished_ages(now)
        for (topic, partition), committed, position, paused, stopped in self.dispatcher.partition_view():
            high: int | None = None
            if consumer is not None:
                try:
                    _, high_mark = consumer.get_watermark_offsets(
                        TopicPartition(topic, partition), cached=True
                    )
                    high = high_mark if high_mark >= 0 else None
                except KafkaException:
                    high = None
            age = ages.get((topic, partition), 0.0)
            partitions.append(
                PartitionSnapshot(topic, partition, committed, position, high, paused, stopped, age)
            )
        self.observer.on_snapshot(
            TriggerSnapshot(
                trigger=self.trigger.name,
                taken_at=now,
                last_loop_at=self._last_loop_at,
                joined=self._joined,
                workers_total=len(self.seats),
                workers_ready=sum(
                    1 for s in self.seats if s.process is not None and s.process.state is WorkerState.READY
                ),
                inflight=self.dispatcher.inflight_records(),
                buffered=self.dispatcher.buffered_total(),
                partitions=tuple(partitions),
                outcomes=dict(self.dispatcher.outcomes),
                rebalances=dict(self._rebalances),
                worker_restarts=dict(self._restarts),
                outputs=dict(self.output_stats.counts),
                output_latency=(tuple(self.output_stats.latency_counts), self.output_stats.latency_total),
                stopping=self._stopping,
                failed=self._fatal_error,
            )
        )

    def _wait_for_inflight(self, tps: list[TP] | None, deadline: float) -> None:
        """Keep serving workers (and other partitions) until ``tps`` have nothing in flight."""
        dispatcher = self.dispatcher
        while True:
            remaining = dispatcher.inflight_total if tps is None else dispatcher.inflight_in(tps)
            now = time.monotonic()
            if not remaining or now >= deadline:
                return
            self._dispatch(now)
            self._flush_writers()
            self._pump(min(0.05, deadline - now))
            self._respawn_due(time.monotonic())

    def _wait_for_exit(self, worker_ids: set[int], deadline: float) -> None:
        while time.monotonic() < deadline and any(self.seats[w].process is not None for w in worker_ids):
            self._pump(0.05)

    def _commit(
        self, consumer: Consumer, tps: list[TP] | None, synchronous: bool, deadline: float = 0.0
    ) -> dict[str, int]:
        """Commit what is done (of ``tps``, or everything); a synchronous commit retries transient
        broker errors until ``deadline`` (supervisor/consumer.py). Returns what was committed."""
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

    def _ingest(self, messages: list[Message]) -> None:
        if not self._use_runs:
            self.dispatcher.add(self._records(messages))
            return
        items: list[Item] = []
        for part in split_into_runs(messages, self._only_topic):
            if isinstance(part, Run):
                items.append(part)
            else:
                items.extend(self._records(part))
        self.dispatcher.add(items)

    def _records(self, messages: list[Message]) -> list[Item]:
        """One wire record per message (errors are logged and skipped)."""
        records: list[Item] = []
        append = records.append
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    self.log.warning("fetch error", error=error.str(), topic=message.topic())
                continue
            ts_type, ts = message.timestamp()
            append(
                new_record(
                    message.topic(),  # type: ignore[arg-type]  # set on every message that is not an error
                    message.partition(),  # type: ignore[arg-type]
                    message.offset(),  # type: ignore[arg-type]
                    message.key(),
                    message.value(),
                    message.headers(),
                    ts if ts_type else None,
                )
            )
        return records

    def _flow_control(self, consumer: Consumer) -> None:
        pause, resume = self.dispatcher.flow_control()
        if pause:
            consumer.pause([TopicPartition(t, p) for t, p in pause])
            self.log.info("buffer full; partitions paused", partitions=_fmt(pause))
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
            self.log.info("buffer drained; partitions resumed", partitions=_fmt(resumed))

    # -- timers -----------------------------------------------------------------------------
    def _respawn_due(self, now: float) -> None:
        for seat in self.seats:
            if seat.process is None and seat.respawn_at is not None and now >= seat.respawn_at:
                self._spawn(seat)

    def _check_event_timeouts(self, now: float) -> None:
        timeout = self.function.event_timeout
        if not timeout:
            return
        for seat in self.seats:
            process = seat.process
            if (
                process is not None
                and process.kill_reason is None
                and self.dispatcher.worker_busy(seat.worker_id)
                and now - process.busy_since > timeout
            ):
                self._kill_worker(seat, f"eventTimeout of {timeout}s elapsed", "event_timeout")

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> Outcome:
        try:
            self._start_workers()
            if self.stop.is_set():
                self._terminate_workers(time.monotonic() + self.trigger.worker_termination_timeout)
                return Outcome.CLEAN
            consumer = self._build_consumer()
            self.consumer = consumer
            consumer.subscribe(
                list(self.attrs.topics),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            self.log.info(
                "consuming",
                topics=list(self.attrs.topics),
                group=self.attrs.consumer_group,
                workers=self.trigger.num_workers,
                mode=self.attrs.worker_allocation_mode.value,
            )
            self._loop(consumer)
            self._shutdown(consumer)
            return Outcome.CLEAN
        except FatalTriggerError as exc:
            self.log.error("trigger failed", error=str(exc))
            self._abort()
            return exc.outcome
        except Exception as exc:
            self.log.exception("trigger crashed", error=f"{type(exc).__name__}: {exc}")
            self._abort()
            return Outcome.FAILED

    def _start_workers(self) -> None:
        for seat in self.seats:
            self._spawn(seat)
        while not self.stop.is_set() and not all(
            s.process is not None and s.process.state is WorkerState.READY for s in self.seats
        ):
            self._pump(0.1)
            if self._observed:
                self._publish(None, time.monotonic())
            for seat in self.seats:
                if seat.process is None and not seat.ever_ready:
                    raise FatalTriggerError(
                        Outcome.HANDLER_LOAD_FAILED, f"worker {seat.worker_id} exited before it was ready"
                    )
            self._respawn_due(time.monotonic())

    def _loop(self, consumer: Consumer) -> None:
        dispatcher = self.dispatcher
        next_timers = 0.0
        while not self.stop.is_set():
            busy = dispatcher.inflight_total > 0
            timeout = 0.0 if busy else self._idle_timeout(time.monotonic())
            messages = consumer.consume(CONSUME_BATCH, timeout)
            if self._fatal_error is not None:
                self._fail_on_fatal_error(consumer)
            now = time.monotonic()
            if messages:
                self._ingest(messages)
                self._flow_control(consumer)
            self._dispatch(now)
            self._pump(0.0 if messages or not busy else BUSY_WAIT_SECONDS)
            now = time.monotonic()
            if self.dead_letters is not None:
                self._serve_dead_letters(now)
            if self.outputs is not None:
                self._serve_outputs(now)
            self._dispatch(now)
            self._flush_writers()
            self._last_loop_at = now
            if now >= next_timers:
                next_timers = now + 0.05
                if self._observed:
                    self._publish(consumer, now)
                self._flow_control(consumer)
                self._respawn_due(now)
                self._check_event_timeouts(now)
                for failure in dispatcher.expire_acks(now):
                    self._on_failure(failure)
                if now - self._last_commit >= COMMIT_INTERVAL_SECONDS:
                    self._last_commit = now
                    self._commit(consumer, None, synchronous=False)
            if not dispatcher.inflight_total and dispatcher.has_uncommitted():
                # The workers ran dry: commit what they finished now, not up to a second later
                # (and before consume() may block for IDLE_POLL_SECONDS).
                self._last_commit = now
                self._commit(consumer, None, synchronous=False)

    def _idle_timeout(self, now: float) -> float:
        """How long ``consume`` may block with no worker busy: until the next retry is due, at most."""
        due = self.dispatcher.next_retry_at(now)
        if self.outputs is not None and self.outputs.in_flight:
            # Delivery reports are served by this loop: their inputs commit once they arrive.
            due = min(due, now + OUTPUT_POLL_SECONDS) if due is not None else now + OUTPUT_POLL_SECONDS
        if due is None:
            # Runnable lanes that are not waiting for a backoff are either dispatched already or
            # blocked (stopped partition, dead-letter pending, workers restarting): nothing to hurry.
            return IDLE_POLL_SECONDS
        return min(IDLE_POLL_SECONDS, max(0.0, due - now))

    def _shutdown(self, consumer: Consumer) -> None:
        """Stop fetching, finish in-flight events (bounded), terminate workers, commit, leave the group."""
        self._stopping = True
        started = time.monotonic()
        if self._observed:
            self._publish(consumer, started)  # readiness flips before the slow part of stopping
        assigned = self.dispatcher.partitions
        self.log.info("stopping", partitions=_fmt(assigned), inflight=self.dispatcher.inflight_total)
        if assigned:
            try:
                consumer.pause([TopicPartition(t, p) for t, p in assigned])
            except KafkaException as exc:
                self.log.warning("pause on shutdown failed", error=str(exc))
        dropped = self.dispatcher.begin_revoke(assigned)
        self._cancel_queued(assigned)
        budget = self.trigger.worker_termination_timeout
        self._wait_for_inflight(None, started + budget)
        stuck = {s.worker_id for s in self.seats if self.dispatcher.worker_busy(s.worker_id)}
        for wid in stuck:
            self._kill_worker(
                self.seats[wid], "handler still running at workerTerminationTimeout", "shutdown_timeout"
            )
        if stuck:
            self._wait_for_exit(stuck, time.monotonic() + 5.0)
        # Outputs first: their delivery reports decide whether their inputs are committed, and a
        # failed one may still become a dead letter below. What is left after that is not waited for.
        self._settle_outputs(started + budget)
        if self.outputs is not None:
            self.outputs.close(1.0)
        sink = self.dead_letters
        if sink is not None:
            # Dead-letter copies already on their way: their delivery reports decide whether the
            # originals may be committed.
            while (
                sink.in_flight or self.dispatcher.has_dead_letters
            ) and time.monotonic() < started + budget:
                self._serve_dead_letters(time.monotonic())
                self._pump(0.01)
            sink.close(1.0)
        # Termination callbacks first: acks they give count in the commit that follows.
        self._terminate_workers(time.monotonic() + budget)
        committed = self._commit(
            consumer, None, synchronous=True, deadline=max(started + budget, time.monotonic() + 1.0)
        )
        consumer.close()
        self.log.info(
            "stopped",
            dropped_buffered=dropped,
            committed=committed,
            killed_workers=sorted(stuck),
            took_ms=round((time.monotonic() - started) * 1000, 1),
        )

    def _terminate_workers(self, deadline: float) -> None:
        """Run every live worker's termination callback, then let it exit; kill what overstays."""
        live = [s for s in self.seats if s.process is not None]
        for seat in live:
            assert seat.process is not None
            seat.process.state = WorkerState.STOPPING
            seat.process.send([Msg.TERMINATE])
        while time.monotonic() < deadline and any(s.process is not None for s in live):
            self._flush_writers()
            self._pump(0.05)
        for seat in live:
            if seat.process is not None:
                self.log.warning("worker did not stop in time; killing it", worker=seat.worker_id)
                seat.process.kill()
                self._unwatch(seat.process)
                seat.process.reap(timeout=5.0)
                seat.process = None

    def _abort(self) -> None:
        """Fatal path: kill every worker, close the consumer without committing anything new."""
        for seat in self.seats:
            if seat.process is not None:
                seat.process.kill()
                self._unwatch(seat.process)
                seat.process.reap(timeout=5.0)
                seat.process = None
        if self.consumer is not None:
            self._stopping = True
            try:
                self.consumer.close()
            except (KafkaException, RuntimeError):
                pass

    def kill_all_workers(self) -> None:
        """Signal-handler safe: SIGKILL every worker process (forced exit)."""
        for seat in self.seats:
            process = seat.process
            if process is not None:
                process.kill()


# Unbound accessors of confluent-kafka's Message, for map() over a batch without a Python-level call.
# (Typed Any: the stubs make every field optional, which is only so for error messages.)
_message_partition: Any = Message.partition
_message_topic: Any = Message.topic
_message_error: Any = Message.error
_message_offset: Any = Message.offset
_message_key: Any = Message.key
_message_value: Any = Message.value
_message_headers: Any = Message.headers
_message_timestamp: Any = Message.timestamp
_second = operator.itemgetter(1)


def split_into_runs(messages: list[Message], only_topic: str | None) -> list[Run | list[Message]]:
    """Consecutive messages of one partition as ``Run`` s, read column by column.

    A stretch that cannot be a run comes back as its messages: one with an error among them (e.g.
    partition EOF), or one that mixes two topics' partitions of the same number. ``only_topic``:
    the consumer is subscribed to that one topic by name, so no message needs to be asked.
    """
    parts: list[Run | list[Message]] = []
    for _, group in itertools.groupby(messages, _message_partition):
        batch = list(group)
        topic = only_topic
        if topic is None:
            topics = set(map(_message_topic, batch))
            topic = topics.pop() if len(topics) == 1 else None
        if topic is None or any(map(_message_error, batch)):
            parts.append(batch)
            continue
        parts.append(
            Run(
                topic,
                batch[0].partition() or 0,
                list(map(_message_offset, batch)),
                list(map(_message_key, batch)),
                list(map(_message_value, batch)),
                list(map(_message_headers, batch)),
                # (type, ms) -> ms: librdkafka gives -1 when there is no timestamp.
                list(map(_second, map(_message_timestamp, batch))),
            )
        )
    return parts


def _fmt(tps: list[TP]) -> list[str]:
    return [f"{t}/{p}" for t, p in sorted(tps)]


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
