"""One trigger at run time: the poll loop, the rebalance callbacks and the order of shutdown.

The loop is single-threaded and never blocks on a worker: it alternates between fetching from Kafka
(``consume``, which also runs the rebalance callbacks), reading worker results from the pipes
(``WorkerPool.pump``), handing buffered records to workers (the pure ``Dispatcher`` decides) and
timers (commits, retries, timeouts, respawns). Waiting happens only where nothing else can be done:
in ``consume`` when no worker is busy, in ``select`` on the worker pipes when some are.

What each part does lives with the part: ``consumer.py`` (the Kafka client, commits, pause/resume),
``worker_pool.py`` (worker processes, respawn, eventTimeout), ``intake.py`` (messages -> records and
runs), ``drain.py`` (the sequence revoke and shutdown share), ``commit_cadence.py`` (when the loop
commits), ``failure_policy.py`` (retry or onError), ``deadletter.py`` and ``outputs.py``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from streamworker.config.kafka_settings import consumer_settings
from streamworker.config.model import ExplicitAckMode, FunctionConfig, TriggerConfig
from streamworker.observability.logging import get_logger
from streamworker.observability.ratelimit import RepeatLimiter
from streamworker.protocol import RESULT_RUN_DURATIONS, RESULT_RUN_EXCEPTIONS, Status, WorkerInit
from streamworker.records import F_ATTEMPT, F_OFFSET, F_PARTITION, F_TOPIC
from streamworker.snapshots import NullObserver, PartitionSnapshot, RunnerObserver, TriggerSnapshot
from streamworker.supervisor.backoff import Backoff
from streamworker.supervisor.commit_cadence import CommitCadence
from streamworker.supervisor.consumer import TP, ConsumerShell, fmt, partition_list
from streamworker.supervisor.deadletter import DeadLetterSink, producer_settings, serve_dead_letters
from streamworker.supervisor.dispatch import Dispatcher, DispatchSettings
from streamworker.supervisor.drain import at_least_a_second, drain_callbacks, quiesce
from streamworker.supervisor.failure_policy import Action, Failure, FailurePolicy
from streamworker.supervisor.intake import Intake
from streamworker.supervisor.outcome import FatalTriggerError, Outcome
from streamworker.supervisor.outputs import OutputPath
from streamworker.supervisor.waiting import step_until
from streamworker.supervisor.worker_pool import WorkerPool
from streamworker.worker.sdk import decode_strings_from_env

__all__ = ["FatalTriggerError", "Outcome", "RunnerOptions", "TriggerRunner", "worker_environment"]

# How long ``consume`` may block when no worker has anything to report.
IDLE_POLL_SECONDS = 0.1
# How long to wait on worker pipes when workers are busy and Kafka gave nothing.
BUSY_WAIT_SECONDS = 0.005
# With workers idle but outputs awaiting delivery reports: how long consume() may block.
OUTPUT_POLL_SECONDS = 0.01
CONSUME_BATCH = 1000
# The loop's timer tick: snapshots, flow control, respawns, eventTimeout, ack timeouts, commits.
TIMER_SECONDS = 0.05


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
        # Runs (see dispatch.Run): whenever no record waits for an ack (key mode: runs with a lane
        # per record, see the dispatch module docstring).
        use_runs = trigger.explicit_ack_mode is ExplicitAckMode.DISABLE
        # Subscribed to one topic by name (not a pattern): every record is of that topic.
        topics = self.attrs.topics
        only_topic = topics[0] if len(topics) == 1 and not topics[0].startswith("^") else None
        self.intake = Intake(use_runs, only_topic, self.log)
        self.observer = self.options.observer
        self._observed = not isinstance(self.observer, NullObserver)
        self.kafka = ConsumerShell(self.dispatcher, self.log, RepeatLimiter.from_environ(self.log))
        self.pool = WorkerPool(
            trigger.num_workers,
            self._worker_init,
            self.worker_env,
            self.dispatcher,
            self,
            self.log,
            function.event_timeout,
            self._observed,
        )
        self.dead_letters: DeadLetterSink | None = None
        # Handlers' outputs (docs/outputs.md); its producer is configured like the consumer.
        self.outputs = OutputPath(self.dispatcher, self._output_producer_settings, self.on_failure, self.log)
        self._producer_base: dict[str, Any] = {}
        self.commits = CommitCadence()
        self._stopping = False
        self._drain_requests = 0
        self._joined = False
        self._last_loop_at = time.monotonic()
        self._rebalances: dict[str, int] = {}

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

    def _output_producer_settings(self) -> dict[str, Any]:
        client_id = f"streamworker-{self.function.name}-{self.trigger.name}-outputs"
        return producer_settings(self._producer_base, client_id)

    # -- what the worker pool hands back (PoolListener) -------------------------------------
    def on_failure(self, failure: Failure) -> None:
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
            if self.kafka.consumer is not None:
                self.kafka.pause([(record[F_TOPIC], record[F_PARTITION])])
        else:  # Action.DEAD_LETTER: produced by serve_dead_letters
            self.log.error(
                "handler failed; retries exhausted; sending to the dead-letter topic",
                **where,
                **error,
                dead_letter_topic=self.attrs.dead_letter_topic,
            )

    def on_acks(self, acks: list[list[Any]]) -> None:
        for topic, partition, offset in acks:
            if not self.dispatcher.ack(topic, partition, offset):
                self.log.warning(
                    "explicit ack ignored: partition not owned by this member",
                    topic=topic,
                    partition=partition,
                    offset=offset,
                )

    def on_outputs(self, items: list[list[Any]]) -> None:
        self.outputs.on_outputs(items)

    def on_results_observed(self, results: list[list[Any]]) -> None:
        """Handler durations of a RESULTS message: each event that ran, and each run's summary."""
        ran: list[float] = []
        for result in results:
            if len(result) > RESULT_RUN_DURATIONS:
                count, total, counts = result[RESULT_RUN_DURATIONS]
                if count:
                    self.observer.on_duration_counts(self.trigger.name, counts, total)
                if result[1] == Status.ERROR:
                    ran.append(result[2])
                if len(result) > RESULT_RUN_EXCEPTIONS:  # a key run's failed records
                    ran.extend(e[2] for e in result[RESULT_RUN_EXCEPTIONS] if e[1] == Status.ERROR)
            elif result[1] != Status.DEFERRED:
                ran.append(result[2])
        if ran:
            self.observer.on_durations(self.trigger.name, ran)

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
        try:
            return self.kafka.build(settings)
        except KafkaException as exc:
            raise FatalTriggerError(
                Outcome.CONFIG_INVALID, f"{self.function.path.name}: invalid Kafka client settings: {exc}"
            ) from exc

    def _fail_on_fatal_error(self) -> None:
        """Publish the failure (``/live`` turns 503 during the cleanup) and end the trigger (exit 1).

        ``run`` then aborts: workers killed, nothing more committed, so no unfinished work is.
        """
        assert self.kafka.fatal_error is not None
        if self._observed:
            self._publish(time.monotonic())
        raise FatalTriggerError(Outcome.FAILED, self.kafka.fatal_error)

    # -- rebalance callbacks ------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = partition_list(partitions)
        self._joined = True
        self._count_rebalance("assign")
        self.log.info("partitions assigned", partitions=fmt(tps))
        if not self._stopping:
            # librdkafka keeps the application's pause flag across revoke and re-assign: a partition
            # paused here (backpressure, onError: stop) when it was revoked would never be fetched
            # again when it comes back, while the fresh state below says "not paused".
            try:
                consumer.resume(partitions)
            except KafkaException as exc:
                self.log.warning("resume on assign failed", partitions=fmt(tps), error=str(exc))
            self.dispatcher.assign(tps)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [tp for tp in partition_list(partitions) if tp in set(self.dispatcher.partitions)]
        if not tps:
            return
        self._count_rebalance("revoke")
        started = time.monotonic()
        deadline = started + self.attrs.max_wait_handler_during_rebalance
        quiesced = quiesce(
            self.dispatcher,
            self.pool,
            tps,
            every_partition=False,
            deadline=deadline,
            kill_reason="handler still running at the rebalance deadline",
            kill_kind="rebalance_deadline",
            settle_outputs=lambda: self.outputs.settle(at_least_a_second(deadline), self.pool.pump),
        )
        # Drain callbacks get what is left of the wait, and at least a second even when handlers used it all.
        drained, late = self._drain(
            self.dispatcher.handled_by(tps) - quiesced.killed, at_least_a_second(deadline)
        )
        committed = self.kafka.commit(tps, synchronous=True, deadline=at_least_a_second(deadline))
        self.dispatcher.forget(tps)
        self._forget_dead_letters(tps)
        self.log.info(
            "partitions revoked",
            partitions=fmt(tps),
            dropped_buffered=quiesced.dropped,
            committed=committed,
            drained_workers=drained,
            late_drain_workers=late,
            killed_workers=sorted(quiesced.killed),
            took_ms=round((time.monotonic() - started) * 1000, 1),
        )

    def _drain(self, worker_ids: set[int], deadline: float) -> tuple[list[int], list[int]]:
        self._drain_requests += 1
        return drain_callbacks(self.pool, worker_ids, self._drain_requests, deadline, self.log)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = partition_list(partitions)
        self._count_rebalance("lost")
        self.dispatcher.begin_revoke(tps)
        # Another member may own them already: do not start any more of their records here. Calls
        # still running finish unwaited; if the partitions come back to us, none of their records is
        # dispatched until those are done (Dispatcher._orphans).
        self.pool.cancel_queued(tps)
        self.dispatcher.forget(tps)
        self._forget_dead_letters(tps)
        self.log.warning("partitions lost (session expired); nothing committed for them", partitions=fmt(tps))

    def _forget_dead_letters(self, tps: list[TP]) -> None:
        if self.dead_letters is not None:
            self.dead_letters.forget(tps)

    def _count_rebalance(self, kind: str) -> None:
        self._rebalances[kind] = self._rebalances.get(kind, 0) + 1

    def _publish(self, now: float) -> None:
        """Hand the observer a fresh snapshot (only when somebody observes)."""
        partitions = []
        ages = self.dispatcher.oldest_unfinished_ages(now)
        for (topic, partition), committed, position, paused, stopped in self.dispatcher.partition_view():
            high = self.kafka.high_watermark((topic, partition))
            age = ages.get((topic, partition), 0.0)
            partitions.append(
                PartitionSnapshot(topic, partition, committed, position, high, paused, stopped, age)
            )
        stats = self.outputs.stats
        self.observer.on_snapshot(
            TriggerSnapshot(
                trigger=self.trigger.name,
                taken_at=now,
                last_loop_at=self._last_loop_at,
                joined=self._joined,
                workers_total=len(self.pool.seats),
                workers_ready=self.pool.ready_count(),
                inflight=self.dispatcher.inflight_records(),
                buffered=self.dispatcher.buffered_total(),
                partitions=tuple(partitions),
                outcomes=dict(self.dispatcher.outcomes),
                rebalances=dict(self._rebalances),
                worker_restarts=dict(self.pool.restarts),
                outputs=dict(stats.counts),
                output_latency=(tuple(stats.latency_counts), stats.latency_total),
                stopping=self._stopping,
                failed=self.kafka.fatal_error,
            )
        )

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> Outcome:
        try:
            self._start_workers()
            if self.stop.is_set():
                self.pool.terminate(time.monotonic() + self.trigger.worker_termination_timeout)
                return Outcome.CLEAN
            consumer = self._build_consumer()
            self.kafka.consumer = consumer
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
            self._shutdown()
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
        def on_tick() -> None:
            if self._observed:
                self._publish(time.monotonic())

        self.pool.start(self.stop.is_set, on_tick)

    def _loop(self, consumer: Consumer) -> None:
        dispatcher = self.dispatcher
        pool = self.pool
        kafka = self.kafka
        commits = self.commits
        next_timers = 0.0
        while not self.stop.is_set():
            busy = dispatcher.inflight_total > 0
            timeout = 0.0 if busy else self._idle_timeout(time.monotonic())
            messages: list[Message] = consumer.consume(CONSUME_BATCH, timeout)
            if kafka.fatal_error is not None:
                self._fail_on_fatal_error()
            now = time.monotonic()
            if messages:
                dispatcher.add(self.intake.items(messages))
                kafka.flow_control()
            pool.dispatch(now)
            pool.pump(0.0 if messages or not busy else BUSY_WAIT_SECONDS)
            now = time.monotonic()
            if self.dead_letters is not None:
                serve_dead_letters(self.dead_letters, dispatcher, now, self.log)
            if self.outputs.sink is not None:
                self.outputs.serve(now)
            pool.dispatch(now)
            pool.flush()
            self._last_loop_at = now
            if now >= next_timers:
                next_timers = now + TIMER_SECONDS
                if self._observed:
                    self._publish(now)
                kafka.flow_control()
                pool.respawn_due(now)
                pool.check_event_timeouts(now)
                for failure in dispatcher.expire_acks(now):
                    self.on_failure(failure)
                if commits.interval_due(now):
                    kafka.commit(None, synchronous=False)
            if commits.ran_dry(now, dispatcher.inflight_total, dispatcher.has_uncommitted):
                # The workers ran dry: commit what they finished now, not up to a second later
                # (and before consume() may block for IDLE_POLL_SECONDS).
                kafka.commit(None, synchronous=False)

    def _idle_timeout(self, now: float) -> float:
        """How long ``consume`` may block with no worker busy: until the next retry is due, at most."""
        due = self.dispatcher.next_retry_at(now)
        if self.outputs.in_flight:
            # Delivery reports are served by this loop: their inputs commit once they arrive.
            due = min(due, now + OUTPUT_POLL_SECONDS) if due is not None else now + OUTPUT_POLL_SECONDS
        if due is None:
            # Runnable lanes that are not waiting for a backoff are either dispatched already or
            # blocked (stopped partition, dead-letter pending, workers restarting): nothing to hurry.
            return IDLE_POLL_SECONDS
        return min(IDLE_POLL_SECONDS, max(0.0, due - now))

    def _shutdown(self) -> None:
        """Stop fetching, finish in-flight events (bounded), terminate workers, commit, leave the group."""
        self._stopping = True
        started = time.monotonic()
        if self._observed:
            self._publish(started)  # readiness flips before the slow part of stopping
        assigned = self.dispatcher.partitions
        self.log.info("stopping", partitions=fmt(assigned), inflight=self.dispatcher.inflight_total)
        if assigned:
            try:
                self.kafka.pause(assigned)
            except KafkaException as exc:
                self.log.warning("pause on shutdown failed", error=str(exc))
        deadline = started + self.trigger.worker_termination_timeout
        quiesced = quiesce(
            self.dispatcher,
            self.pool,
            assigned,
            every_partition=True,
            deadline=deadline,
            kill_reason="handler still running at workerTerminationTimeout",
            kill_kind="shutdown_timeout",
            # Outputs first: their delivery reports decide whether their inputs are committed, and a
            # failed one may still become a dead letter below.
            settle_outputs=lambda: self.outputs.settle(deadline, self.pool.pump),
        )
        # What is left after that is not waited for.
        self.outputs.close(1.0)
        sink = self.dead_letters
        if sink is not None:
            # Dead-letter copies already on their way: their delivery reports decide whether the
            # originals may be committed.
            def step(wait: float) -> None:
                serve_dead_letters(sink, self.dispatcher, time.monotonic(), self.log)
                self.pool.pump(wait)

            step_until(lambda: not (sink.in_flight or self.dispatcher.has_dead_letters), deadline, step, 0.01)
            sink.close(1.0)
        # Termination callbacks first: acks they give count in the commit that follows.
        self.pool.terminate(time.monotonic() + self.trigger.worker_termination_timeout)
        committed = self.kafka.commit(None, synchronous=True, deadline=at_least_a_second(deadline))
        self.kafka.close()
        self.log.info(
            "stopped",
            dropped_buffered=quiesced.dropped,
            committed=committed,
            killed_workers=sorted(quiesced.killed),
            took_ms=round((time.monotonic() - started) * 1000, 1),
        )

    def _abort(self) -> None:
        """Fatal path: kill every worker, close the consumer without committing anything new."""
        self.pool.abort()
        if self.kafka.consumer is not None:
            self._stopping = True
            self.kafka.close_quietly()

    def kill_all_workers(self) -> None:
        """Signal-handler safe: SIGKILL every worker process (forced exit)."""
        self.pool.kill_all()
