"""The worker pool: numbered seats, the worker process in each, and everything that keeps them
filled: spawn, respawn after a death (with a crash-loop backoff), reading their frames, sending
them events, eventTimeout kills, and stopping them (terminate, or kill on the fatal path).

The pool carries out; the ``Dispatcher`` decides (what goes to which worker, what a death means for
the records it held). What the workers report about records (results, acks, outputs) goes to the
dispatcher and, for the runner's side of it, to the ``PoolListener`` the runner passes in.
"""

from __future__ import annotations

import selectors
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from streamworker.protocol import Msg, ProtocolError, WorkerInit
from streamworker.supervisor.backoff import Backoff
from streamworker.supervisor.dispatch import Dispatcher, TopicPartition
from streamworker.supervisor.failure_policy import Failure
from streamworker.supervisor.outcome import FatalTriggerError, Outcome
from streamworker.supervisor.waiting import step_until
from streamworker.supervisor.worker_handle import WorkerHandle, WorkerState, describe_exit

# No results for this long means the worker's head event is the one running (see _on_worker_gone).
RESULTS_QUIET_SECONDS = 0.1
# A worker that stayed up this long is healthy again: its crash-loop backoff starts over.
STABLE_WORKER_SECONDS = 30.0
# Kills at a revoke or shutdown deadline: the record was not at fault, so nothing is blamed for it.
DEADLINE_KILLS = frozenset({"rebalance_deadline", "shutdown_timeout"})
# How long a killed worker gets to be reaped (its pipe closing) before the pool moves on.
EXIT_WAIT_SECONDS = 5.0


@dataclass
class WorkerSeat:
    """A numbered place in the pool; the worker process in it is replaced when it dies."""

    worker_id: int
    process: WorkerHandle | None = None
    crashes: int = 0
    respawn_at: float | None = None
    ever_ready: bool = False


class PoolListener(Protocol):
    """What the pool hands back to the runner (the parts that are not the pool's business)."""

    def on_failure(self, failure: Failure) -> None: ...

    def on_acks(self, acks: list[list[Any]]) -> None: ...

    def on_outputs(self, items: list[list[Any]]) -> None: ...

    def on_results_observed(self, results: list[list[Any]]) -> None: ...


class WorkerPool:
    def __init__(
        self,
        count: int,
        make_init: Callable[[int], WorkerInit],
        env: Mapping[str, str],
        dispatcher: Dispatcher,
        listener: PoolListener,
        log: Any,
        event_timeout: float | None,
        observe_results: bool,
    ) -> None:
        self.seats = [WorkerSeat(i) for i in range(count)]
        self.selector = selectors.DefaultSelector()
        self._make_init = make_init
        self._env = env
        self._dispatcher = dispatcher
        self._listener = listener
        self._log = log
        self._event_timeout = event_timeout
        self._observe_results = observe_results
        self._respawn_backoff = Backoff(0.5, 30.0)
        # Worker deaths by kind (crash, event_timeout, ...), for the snapshot.
        self.restarts: dict[str, int] = {}

    # -- spawn and respawn ------------------------------------------------------------------
    def spawn(self, seat: WorkerSeat) -> None:
        process = WorkerHandle(seat.worker_id, self._make_init(seat.worker_id), self._env)
        seat.process = process
        seat.respawn_at = None
        self.selector.register(process.read_fd, selectors.EVENT_READ, seat)
        if process.exit_fd >= 0:
            # The pipe's end of file can be held back by a process the handler started: watch the exit.
            self.selector.register(process.exit_fd, selectors.EVENT_READ, seat)
        self._log.info("worker started", worker=seat.worker_id, pid=process.pid)

    def start(self, stop: Callable[[], bool], on_tick: Callable[[], None]) -> None:
        """Spawn every worker and wait until all are ready (or ``stop()``); a worker that exits
        before it was ever ready fails the trigger (the handler does not load)."""
        for seat in self.seats:
            self.spawn(seat)

        def step(wait: float) -> None:
            self.pump(wait)
            on_tick()
            for seat in self.seats:
                if seat.process is None and not seat.ever_ready:
                    raise FatalTriggerError(
                        Outcome.HANDLER_LOAD_FAILED, f"worker {seat.worker_id} exited before it was ready"
                    )
            self.respawn_due(time.monotonic())

        step_until(lambda: stop() or self.all_ready(), float("inf"), step, max_wait=0.1)

    def respawn_due(self, now: float) -> None:
        for seat in self.seats:
            if seat.process is None and seat.respawn_at is not None and now >= seat.respawn_at:
                self.spawn(seat)

    def all_ready(self) -> bool:
        return all(s.process is not None and s.process.state is WorkerState.READY for s in self.seats)

    def ready_count(self) -> int:
        return sum(1 for s in self.seats if s.process is not None and s.process.state is WorkerState.READY)

    def _unwatch(self, process: WorkerHandle) -> None:
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
        failures = self._dispatcher.worker_lost(seat.worker_id, reason, now, head_running, blameless)
        for failure in failures:
            self._listener.on_failure(failure)
        kind = process.kill_kind or "crash"
        self.restarts[kind] = self.restarts.get(kind, 0) + 1
        if now - process.started_at > STABLE_WORKER_SECONDS:
            seat.crashes = 0
        if not blameless:  # a deadline kill says nothing about the worker's health
            seat.crashes += 1
        crash_looping = seat.crashes > 1 and not blameless
        seat.respawn_at = now + self._respawn_backoff.delay(seat.crashes) if crash_looping else now
        self._log.error(
            "worker died; replacing it",
            worker=seat.worker_id,
            pid=process.pid,
            reason=reason,
            exit=describe_exit(code),
            crashes_in_a_row=seat.crashes,
            respawn_in_s=round(seat.respawn_at - now, 3),
        )

    def kill(self, seat: WorkerSeat, reason: str, kind: str) -> None:
        """Kill a worker on purpose; the death is handled like any other when its pipe closes."""
        if seat.process is not None:
            self._log.warning("killing worker", worker=seat.worker_id, pid=seat.process.pid, reason=reason)
            seat.process.kill_reason = reason
            seat.process.kill_kind = kind
            seat.process.kill()

    def check_event_timeouts(self, now: float) -> None:
        timeout = self._event_timeout
        if not timeout:
            return
        for seat in self.seats:
            process = seat.process
            if (
                process is not None
                and process.kill_reason is None
                and self._dispatcher.worker_busy(seat.worker_id)
                and now - process.busy_since > timeout
            ):
                self.kill(seat, f"eventTimeout of {timeout}s elapsed", "event_timeout")

    # -- frames in and out ------------------------------------------------------------------
    def _handle_messages(self, seat: WorkerSeat, messages: list[list[Any]], now: float) -> None:
        process = seat.process
        assert process is not None
        dispatcher = self._dispatcher
        listener = self._listener
        for message in messages:
            kind = message[0]
            if kind == Msg.RESULTS:
                failures = dispatcher.complete(seat.worker_id, message[1], now)
                process.busy_since = now
                if self._observe_results:
                    listener.on_results_observed(message[1])
                for failure in failures:
                    listener.on_failure(failure)
            elif kind == Msg.READY:
                process.state = WorkerState.READY
                seat.ever_ready = True
                dispatcher.worker_ready(seat.worker_id)
                self._log.info("worker ready", worker=seat.worker_id, pid=process.pid)
            elif kind == Msg.INIT_FAILED:
                info = message[1]
                text = f"{info.get('error_type')}: {info.get('message')}"
                # The message names file and line; the traceback is the rest of the story.
                trace = info.get("traceback")
                self._log.error("worker failed to start", worker=seat.worker_id, error=text, traceback=trace)
                if not seat.ever_ready:
                    raise FatalTriggerError(Outcome.HANDLER_LOAD_FAILED, text)
            elif kind == Msg.DRAINED:
                process.drained.add(int(message[1]))
            elif kind == Msg.TERMINATED:
                process.terminated = True
            elif kind == Msg.ACKS:
                listener.on_acks(message[1])
            elif kind == Msg.OUTPUTS:
                listener.on_outputs(message[1])

    def pump(self, timeout: float) -> None:
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
        self, seat: WorkerSeat, process: WorkerHandle, error: ProtocolError, now: float
    ) -> None:
        """A worker's output cannot be decoded: nothing more it says can be trusted. It is replaced
        like a crashed worker (its queue goes back, unblamed unless the head was surely running);
        the other workers and the trigger carry on."""
        self._log.error(
            "bad frame from worker; killing it", worker=seat.worker_id, pid=process.pid, error=str(error)
        )
        process.kill_kind = "protocol_error"
        process.kill()
        self._on_worker_gone(seat, f"protocol error: {error}", now)

    def dispatch(self, now: float) -> None:
        """Send the events the dispatcher handed out to their workers (queued; ``flush`` writes)."""
        batches = self._dispatcher.take_dispatches(now)
        for wid, events in batches.items():
            process = self.seats[wid].process
            if process is None:  # cannot happen: the dispatcher only uses ready workers
                continue
            if self._dispatcher.queued_on(wid) == len(events):
                # The worker was idle: its clock (eventTimeout, crash attribution) starts now. A
                # batch sent to a busy worker must not restart it, or a hung call is never timed out.
                process.busy_since = now
            process.send([Msg.EVENTS, events])

    def flush(self) -> None:
        for seat in self.seats:
            if seat.process is not None and not seat.process.writer.empty:
                seat.process.flush()

    def cancel_queued(self, tps: list[TopicPartition]) -> None:
        """Drop the events of ``tps`` that are queued on workers but not started: only the running
        ones are worth waiting for; whoever owns the partitions next fetches the rest again."""
        lanes = self._dispatcher.lanes_of(tps)
        for wid in self._dispatcher.workers_busy_with(tps):
            process = self.seats[wid].process
            if process is not None:
                process.send([Msg.CANCEL, lanes])

    # -- stopping ---------------------------------------------------------------------------
    def join(
        self, tps: list[TopicPartition] | None, deadline: float, kill_reason: str, kill_kind: str
    ) -> set[int]:
        """Keep the workers going until ``tps`` (None: every partition) have nothing in flight, or
        ``deadline``; then kill the workers still running one of their records and wait for them
        to exit. Returns the killed workers' ids."""
        dispatcher = self._dispatcher

        def inflight() -> int:
            return dispatcher.inflight_total if tps is None else dispatcher.inflight_in(tps)

        def step(wait: float) -> None:
            self.dispatch(time.monotonic())
            self.flush()
            self.pump(wait)
            self.respawn_due(time.monotonic())

        step_until(lambda: not inflight(), deadline, step)
        if tps is None:
            stuck = {s.worker_id for s in self.seats if dispatcher.worker_busy(s.worker_id)}
        else:
            # Only workers running a record of ``tps``: queued ones were cancelled, and a worker
            # running a record of a partition that stays is left alone (a cancelled item that did
            # not report yet is forgotten, and its partition waits for it if it comes back:
            # Dispatcher._orphans).
            stuck = dispatcher.workers_running(tps)
        for wid in stuck:
            self.kill(self.seats[wid], kill_reason, kill_kind)
        if stuck:
            self.wait_for_exit(stuck, time.monotonic() + EXIT_WAIT_SECONDS)
        return stuck

    def wait_for_exit(self, worker_ids: Iterable[int], deadline: float) -> None:
        ids = list(worker_ids)
        step_until(lambda: all(self.seats[w].process is None for w in ids), deadline, self.pump)

    def terminate(self, deadline: float) -> None:
        """Run every live worker's termination callback, then let it exit; kill what overstays."""
        live = [s for s in self.seats if s.process is not None]
        for seat in live:
            assert seat.process is not None
            seat.process.state = WorkerState.STOPPING
            seat.process.send([Msg.TERMINATE])

        def step(wait: float) -> None:
            self.flush()
            self.pump(wait)

        step_until(lambda: all(s.process is None for s in live), deadline, step)
        for seat in live:
            if seat.process is not None:
                self._log.warning("worker did not stop in time; killing it", worker=seat.worker_id)
                self._reap_killed(seat)

    def abort(self) -> None:
        """Fatal path: kill every worker now, no callbacks."""
        for seat in self.seats:
            if seat.process is not None:
                self._reap_killed(seat)

    def _reap_killed(self, seat: WorkerSeat) -> None:
        assert seat.process is not None
        seat.process.kill()
        self._unwatch(seat.process)
        seat.process.reap(timeout=5.0)
        seat.process = None

    def kill_all(self) -> None:
        """Signal-handler safe: SIGKILL every worker process (forced exit)."""
        for seat in self.seats:
            process = seat.process
            if process is not None:
                process.kill()
