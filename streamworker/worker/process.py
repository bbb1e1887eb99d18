"""The worker process: runs the user's handler on events sent by the supervisor.

Started as ``python -m streamworker.worker --in-fd N --out-fd M``; the two descriptors are pipes to
and from the supervisor carrying ``streamworker.protocol`` frames. See ``WorkerLoop`` for the behaviour.

Exit codes: 0 after TERMINATE (or when the supervisor closed our input pipe), 2 protocol error,
3 INIT_FAILED, 70 supervisor gone (parent changed, or our output pipe is broken).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import inspect
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from streamworker.observability.logging import bind_call_context, configure_logging, get_logger
from streamworker.protocol import (
    FrameReader,
    Msg,
    ProtocolError,
    Status,
    WorkerInit,
    encode,
    summarize_durations,
    write_all_blocking,
)
from streamworker.records import (
    F_KIND,
    F_LANE,
    F_OFFSET,
    F_PARTITION,
    F_RETRY,
    F_SEQ,
    F_TOPIC,
    KIND_RUN,
    R_LANES,
    R_OFFSETS,
    R_PARTITION,
    R_RETRY,
    R_TIMESTAMPS,
    R_TOPIC,
    new_event,
)
from streamworker.worker.handler_call import call_maybe_async, what_it_returned
from streamworker.worker.loader import (
    INIT_CONTEXT_NAME,
    HandlerLoadError,
    LoadedHandler,
    error_location,
    format_traceback,
    load_handler,
)
from streamworker.worker.sdk import Context, Event, Logger, Platform, TriggerInfo

__all__ = [
    "EXIT_INIT_FAILED",
    "EXIT_OK",
    "EXIT_PROTOCOL_ERROR",
    "EXIT_SUPERVISOR_GONE",
    "LOG_FORMAT_ENV_VAR",
    "WorkerLoop",
    "main",
]

EXIT_OK = 0
EXIT_PROTOCOL_ERROR = 2
EXIT_INIT_FAILED = 3
EXIT_SUPERVISOR_GONE = 70

# Log format of the worker ("json" or "console"); the supervisor may set it in the environment.
LOG_FORMAT_ENV_VAR = "STREAMWORKER_LOG_FORMAT"

# Results are sent when the local queue runs empty, or after this long / this many results.
FLUSH_INTERVAL_S = 0.010
FLUSH_MAX_RESULTS = 500
# Most bytes one read of the input pipe takes (the pipes are 1 MiB). os.read allocates this much
# per call: 1 MiB reads cost fresh pages (~35 page faults) per 1,000-record frame, ~10 % of a
# no-op worker's CPU; 128 KiB (about one such frame) is served from reused memory (issue #16).
READ_CHUNK = 128 * 1024
# After TERMINATED, how long background tasks started by the handler may keep running.
TASK_GRACE_S = 1.0
PARENT_POLL_S = 0.5
MAX_ERROR_MESSAGE = 1000

_OK = int(Status.OK)
_ERROR = int(Status.ERROR)
_DEFERRED = int(Status.DEFERRED)
_NO_ACK = int(Status.NO_ACK)
_PROGRESS = int(Status.PROGRESS)
_EVENTS = int(Msg.EVENTS)
_DRAIN = int(Msg.DRAIN)
_TERMINATE = int(Msg.TERMINATE)
_CANCEL = int(Msg.CANCEL)
_INIT = int(Msg.INIT)

_PR_SET_PDEATHSIG = 1


def _log_format() -> str:
    fmt = os.environ.get(LOG_FORMAT_ENV_VAR, "json").strip().lower()
    return fmt if fmt in ("json", "console") else "json"


class _SupervisorGone(Exception):
    """Writing to the supervisor failed: it is not there any more."""


def die_with_parent() -> None:
    """Ask Linux to SIGKILL us when the parent dies. Best effort; a no-op elsewhere.

    Note: the signal fires when the parent *thread* that forked us exits, so the supervisor must
    start workers from a thread that lives as long as it does (its main thread).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def start_parent_watchdog(parent_pid: int, interval: float = PARENT_POLL_S) -> threading.Thread:
    """A daemon thread that exits the process (code 70) once our parent is no longer ``parent_pid``."""

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent_pid:
                os._exit(EXIT_SUPERVISOR_GONE)

    thread = threading.Thread(target=watch, name="streamworker-parent-watchdog", daemon=True)
    thread.start()
    return thread


def _one_line(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not break the worker
        text = f"<unprintable {type(exc).__name__}>"
    return text[:MAX_ERROR_MESSAGE]


class WorkerLoop:
    """The loop inside one worker process: reads frames from ``in_fd``, writes frames to ``out_fd``.

    Everything runs on one asyncio loop for the life of the process, so tasks a handler starts keep
    running between events and while idle. Events run one at a time, in the order received; DRAIN and
    TERMINATE take effect after the events received before them.

    Frames are read by a thread of their own, not by the loop: a sync handler blocks the loop, and a
    CANCEL must still drop the revoked lanes' queued events at once (their DEFERRED results go out
    through the flusher thread), or the supervisor waits for them until its rebalance deadline and
    kills a worker that was running a record of a partition that stays.
    """

    def __init__(self, in_fd: int, out_fd: int) -> None:
        self._in_fd = in_fd
        self._out_fd = out_fd
        self._reader = FrameReader()
        # Wire events (lists) and control items (tuples: (DRAIN, request_id) / (TERMINATE, None)).
        # The reader thread adds to it and rewrites it on CANCEL; the loop takes from it: both under
        # ``_inbox_lock`` (a rewrite must not race a popleft).
        self._inbox: deque[Any] = deque()
        self._inbox_lock = threading.Lock()
        self._init_data: dict[str, Any] | None = None
        self._eof = False
        self._terminate_pending = False
        self._reading = False
        self._protocol_error: str | None = None
        # Results wait here until flushed. A deque, because the flusher thread pops from it while the
        # loop appends; both poppers hold ``_write_lock`` so results leave in the order they were made.
        self._results: deque[list[Any]] = deque()
        self._write_lock = threading.Lock()
        self._last_flush = 0.0
        self._flusher_started = False
        # Explicit acks; a handler may make them from its own threads, hence the lock.
        self._acks: list[list[Any]] = []
        self._acks_lock = threading.Lock()
        # Outputs ([topic, partition, offset, [output, ...]] per input), sent before the results
        # that report their inputs done. A deque for the same reason as ``_results``.
        self._outputs: deque[list[Any]] = deque()
        # Outputs of the record being handled (``_handling``); dropped if its handler raises.
        self._record_outputs: list[list[Any]] = []
        self._handling: Any = None
        # Records that returned no-ack and are not acked yet: tasks may still produce for them.
        self._open: set[tuple[str, int, int]] = set()
        self._output_topic: str | None = None
        self._output_headers = "none"
        # Which handled records stay open until acked: no-ack ones (enable), all (explicitOnly).
        self._open_no_ack = False
        self._open_all = False
        # Lanes in which an event failed here: later events of the lane are DEFERRED until the
        # supervisor re-sends the failed one with retry=True.
        self._held: set[Any] = set()
        # The run being handled: [seq, records reported so far, outcomes, lane, keyed]. Outcomes: per
        # handled record in order, its duration (a float) or, in a key run only, a record that did
        # not run fine ([index, status, duration, error type, message]). ``_flush`` (loop or flusher
        # thread, under ``_write_lock``) reports new outcomes as PROGRESS, so a long call inside a
        # run does not hold back the records before it.
        self._run_active: list[Any] | None = None
        # Set by CANCEL for the running run's lane: its records not started yet are not run.
        self._run_cancelled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._wakeup: asyncio.Event | None = None
        self._log: Any = None
        self.context: Context | None = None
        self.loaded: LoadedHandler | None = None
        self.trigger = TriggerInfo(kind="", name="")
        self.decode_strings = True

    # -- I/O ------------------------------------------------------------------------------------

    def _start_reader(self) -> None:
        """Read frames on a daemon thread until end of input (see the class docstring for why)."""
        self._reading = True
        threading.Thread(target=self._read_frames, name="streamworker-frame-reader", daemon=True).start()

    def _read_frames(self) -> None:
        while True:
            try:
                data = os.read(self._in_fd, READ_CHUNK)
            except InterruptedError:
                continue
            except OSError:
                data = b""
            messages: list[list[Any]] = []
            eof = not data
            if data:
                try:
                    messages = self._reader.feed(data)
                except ProtocolError as exc:
                    self._protocol_error = str(exc)
                    eof = True
            self._accept(messages, eof)
            if eof:
                return

    def _accept(self, messages: list[list[Any]], eof: bool) -> None:
        """Apply frames read from the supervisor (reader thread), then wake the loop."""
        inbox = self._inbox
        with self._inbox_lock:
            for message in messages:
                kind = message[0]
                if kind == _EVENTS:
                    inbox.extend(message[1])
                elif kind == _DRAIN:
                    # Ahead of queued events: a drain is about partitions whose records are all done
                    # already (the supervisor waits for them first); other partitions' events can wait.
                    inbox.appendleft((_DRAIN, message[1]))
                elif kind == _CANCEL:
                    self._cancel(set(message[1]))
                elif kind == _TERMINATE:
                    inbox.append((_TERMINATE, None))
                    self._terminate_pending = True
                elif kind == _INIT and self._init_data is None:
                    self._init_data = message[1]
                elif self._log is not None:
                    self._log.warning("ignoring unexpected message from the supervisor", kind=kind)
            if eof:
                self._eof = True
                self._reading = False
        loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is exiting
                loop.call_soon_threadsafe(wakeup.set)

    def _cancel(self, lanes: set[Any]) -> None:
        """Drop queued events of revoked lanes unrun, so a rebalance waits only for the running one.

        Their new owner fetches them again from the committed offset; DEFERRED tells the supervisor
        they did not run. Runs on the reader thread with ``_inbox_lock`` held.
        """
        inbox = self._inbox
        active = self._run_active
        if active is not None and active[3] in lanes:
            self._run_cancelled = True
        # Events and runs both carry seq and lane first.
        kept = [item for item in inbox if type(item) is not list or item[F_LANE] not in lanes]
        if len(kept) == len(inbox):
            return
        for item in inbox:
            if type(item) is list and item[F_LANE] in lanes:
                result = [item[F_SEQ], _DEFERRED, 0.0, None, None]
                if item[F_KIND] == KIND_RUN:
                    result.append(summarize_durations([]))
                self._results.append(result)
        inbox.clear()
        inbox.extend(kept)

    def _stop_reading(self) -> None:
        # The reader thread is a daemon blocked in read(): it ends with the process. Frames read
        # after this are not acted on (the loop no longer takes from the inbox).
        self._reading = False

    def _write(self, data: bytes) -> None:
        try:
            write_all_blocking(self._out_fd, data)
        except OSError as exc:  # EPIPE (SIGPIPE is ignored by Python), EBADF...
            raise _SupervisorGone(str(exc)) from exc

    def _flush(self, tail: bytes = b"") -> None:
        """Send pending RESULTS, then ACKS, then ``tail``, in one write.

        Results first: a cumulative explicit ack (Nuclio's) closes the no-ack records before it, so
        the supervisor must know those records were handled when the ack arrives. A handler acking
        its own event works in either order (an ack that arrives first is kept for its record).
        """
        with self._write_lock:
            parts: list[bytes] = []
            acks: list[list[Any]] = []
            if self._acks:
                with self._acks_lock:
                    acks, self._acks = self._acks, []
            results = self._results
            run = self._run_active
            if run is not None and len(run[2]) > run[1]:
                reported = len(run[2])
                results.append(_run_report(run[0], _PROGRESS, run[2][run[1] : reported], run[4]))
                run[1] = reported
            if results:
                pop = results.popleft
                parts.append(encode([Msg.RESULTS, [pop() for _ in range(len(results))]]))
            if acks:
                parts.append(encode([Msg.ACKS, acks]))
            if tail:
                parts.append(tail)
            if self._outputs:
                # Taken last and sent first: a record's outputs are queued before its result or
                # ack, so every result and ack above has its outputs in this write (or an earlier one).
                outputs = self._outputs
                take = outputs.popleft
                parts.insert(0, encode([Msg.OUTPUTS, [take() for _ in range(len(outputs))]]))
            if parts:
                self._write(parts[0] if len(parts) == 1 else b"".join(parts))
            self._last_flush = time.perf_counter()

    def _start_flusher(self) -> None:
        """Send finished results while the loop is stuck in a long handler call.

        Without it, results of quick events that ran just before a 10-minute handler would wait for
        that handler: their offsets could not be committed and the supervisor could not tell when the
        long call started (it times ``eventTimeout`` from the last results it got).
        """
        if self._flusher_started:
            return
        self._flusher_started = True

        def flush_periodically() -> None:
            while True:
                time.sleep(FLUSH_INTERVAL_S)
                if (self._results or self._acks or self._outputs or self._run_progressed()) and (
                    time.perf_counter() - self._last_flush >= FLUSH_INTERVAL_S
                ):
                    try:
                        self._flush()
                    except _SupervisorGone:
                        os._exit(EXIT_SUPERVISOR_GONE)

        threading.Thread(target=flush_periodically, name="streamworker-result-flusher", daemon=True).start()

    def _run_progressed(self) -> bool:
        """Records of the running run finished since the last report."""
        run = self._run_active
        return run is not None and len(run[2]) > run[1]

    def _on_output(self, event: Any, output: list[Any]) -> None:
        """``context.platform.produce()``: tie the output to its record (see ``Platform.produce``)."""
        if event is self._handling:
            self._record_outputs.append(output)
            return
        where = (event.topic, event.partition, event.offset)
        if where not in self._open:
            raise RuntimeError(
                f"record {event.id} is done (handled and acknowledged): an output produced now could "
                "not delay its commit; produce while the handler runs, or before the explicit ack"
            )
        # A task of a no-ack record: send at once; it goes out before any later ack of the record.
        self._outputs.append([*where, [output]])
        self._wake()

    def _queue_ack(self, topic: str, partition: int, offset: int) -> None:
        if self._open:
            self._open.discard((topic, partition, offset))
        with self._acks_lock:
            self._acks.append([topic, partition, offset])
        self._wake()

    def _wake(self) -> None:
        # An ack or output made by a background task while idle must not wait for the next event.
        if self._loop is None or self._wakeup is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._wakeup.set()
        else:
            self._loop.call_soon_threadsafe(self._wakeup.set)

    async def _wait(self) -> None:
        assert self._wakeup is not None
        self._wakeup.clear()
        await self._wakeup.wait()

    # -- life cycle -----------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until TERMINATE or end of input; returns the exit code."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._wakeup = asyncio.Event()
        os.set_blocking(self._in_fd, True)
        os.set_blocking(self._out_fd, True)
        self._start_reader()
        try:
            while self._init_data is None:
                if self._protocol_error is not None:
                    return EXIT_PROTOCOL_ERROR
                if self._terminate_pending:
                    self._write(encode([Msg.TERMINATED]))
                    return EXIT_OK
                if self._eof:
                    return EXIT_OK
                await self._wait()
            if not await self._initialize(self._init_data):
                return EXIT_INIT_FAILED
            return await self._serve()
        except _SupervisorGone:
            return EXIT_SUPERVISOR_GONE
        except BaseException:
            # e.g. sys.exit() in a handler: report what is done before dying, so that only the
            # event being handled is re-delivered.
            with contextlib.suppress(Exception):
                self._flush()
            raise
        finally:
            self._stop_reading()

    async def _initialize(self, data: dict[str, Any]) -> bool:
        """Load the handler and run init_context; send READY or INIT_FAILED."""
        try:
            init = WorkerInit.from_wire(data)
            configure_logging(init.log_level, _log_format())
            fields = {"function": init.function_name, "worker": init.worker_id, "trigger": init.trigger_name}
            self._log = get_logger(**fields)
            logger = Logger(self._log)
            # Records of stdlib loggers (the handler's libraries, from import time on) carry the same
            # fields as ours, and those of the event while a call runs.
            bind_call_context(fields, lambda: logger.current_event)
            self.loaded = load_handler(init.code_dir, init.handler)
            self.trigger = TriggerInfo(kind=init.trigger_kind, name=init.trigger_name)
            self.decode_strings = init.decode_strings
            self.context = Context(
                logger=logger,
                platform=Platform(self._queue_ack, kind="local", name="streamworker"),
                worker_id=init.worker_id,
                trigger=self.trigger,
                function_name=init.function_name,
            )
            # Outputs (docs/outputs.md): where produce() goes, what a return value becomes.
            self.context.platform.set_output_sink(self._on_output)
            self._output_topic = init.output_topic
            self._output_headers = init.output_headers
            self._open_no_ack = init.ack_mode != "disable"
            self._open_all = init.ack_mode == "explicitOnly"
        except HandlerLoadError as exc:
            self._init_failed("HandlerLoadError", str(exc), exc)
            return False
        except Exception as exc:
            self._init_failed(type(exc).__name__, f"bad worker init: {_one_line(exc)}", exc)
            return False

        init_context = self.loaded.init_context
        if init_context is not None:
            try:
                await call_maybe_async(init_context, self.context)
            except BaseException as exc:  # SystemExit or a cancelled await count as failures too
                handler = f"{self.loaded.module_name}:{INIT_CONTEXT_NAME}"
                message = f"{handler} raised {type(exc).__name__}: {_one_line(exc)}"
                message += f" (at {error_location(exc, init.code_dir) or 'unknown location'})"
                self._init_failed(type(exc).__name__, message, exc)
                return False
        self._write(encode([Msg.READY, {"pid": os.getpid()}]))
        self._start_flusher()
        return True

    def _init_failed(self, error_type: str, message: str, exc: BaseException) -> None:
        tb = format_traceback(exc, (self._init_data or {}).get("code_dir"))
        self._write(
            encode([Msg.INIT_FAILED, {"error_type": error_type, "message": message, "traceback": tb}])
        )

    async def _serve(self) -> int:
        assert self.loaded is not None and self.context is not None
        inbox = self._inbox
        inbox_lock = self._inbox_lock
        results = self._results
        held = self._held
        handler = self.loaded.handler
        context = self.context
        logger = context.logger
        trigger = self.trigger
        decode = self.decode_strings
        perf = time.perf_counter
        isawaitable = inspect.isawaitable
        sleep = asyncio.sleep
        set_current_event = context.platform.current_event_setter()
        output_topic = self._output_topic
        output_headers = self._output_headers
        last_flush = perf()

        while True:
            if not inbox:
                if results or self._acks or self._outputs:
                    self._flush()
                if self._eof:
                    return self._eof_exit_code()
                await self._wait()
                # Timed from the start of the work: a first long call still has its results
                # flushed at once; quick work is not reported piecemeal.
                last_flush = self._last_flush = perf()
                continue

            with inbox_lock:
                item = inbox.popleft()
                if type(item) is list and item[F_KIND] == KIND_RUN:
                    # Active from the moment it leaves the inbox, so a CANCEL read meanwhile stops it.
                    self._run_cancelled = False
                    self._run_active = [item[F_SEQ], 0, [], item[F_LANE], len(item) > R_LANES]
            if type(item) is not list:
                code = await self._control(item)
                if code is not None:
                    return code
                last_flush = perf()
                continue
            if item[F_KIND] == KIND_RUN:
                code = await self._run(item)
                if code is not None:
                    return code
                last_flush = self._last_flush
                continue

            lane = item[F_LANE]
            if type(lane) is list:
                lane = tuple(lane)
            if item[F_RETRY]:
                held.discard(lane)
            elif held and lane in held:
                results.append([item[F_SEQ], _DEFERRED, 0.0, None, None])
                continue

            event = Event(item, trigger, decode)
            logger.current_event = event
            self._handling = event
            set_current_event(event)
            t0 = perf()
            try:
                result = handler(context, event)  # handler_call.call_maybe_async, inlined
                if result is not None and isawaitable(result):
                    result = await result
                t1 = perf()
                status = _OK
                if result is not None:
                    no_ack, output = what_it_returned(result, item, output_topic, output_headers)
                    if no_ack:
                        status = _NO_ACK
                    if output is not None:
                        self._record_outputs.append(output)
                if self._record_outputs:
                    self._outputs_done(item[F_TOPIC], item[F_PARTITION], item[F_OFFSET])
                if self._open_all or (status == _NO_ACK and self._open_no_ack):
                    self._open.add((item[F_TOPIC], item[F_PARTITION], item[F_OFFSET]))
                results.append([item[F_SEQ], status, t1 - t0, None, None])
            except Exception as exc:
                t1 = perf()
                self._handler_failed(item, lane, event, exc, t1 - t0)
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # we are being cancelled, not just the handler's awaitable
                t1 = perf()
                self._handler_failed(item, lane, event, exc, t1 - t0)
            logger.current_event = None
            self._handling = None
            if self._record_outputs:
                self._record_outputs = []  # of a failed call: not produced (see docs/outputs.md)

            if t1 - last_flush >= FLUSH_INTERVAL_S or len(results) >= FLUSH_MAX_RESULTS:
                self._flush()
                # Let background tasks run.
                await sleep(0)
                if self._eof and not self._terminate_pending:
                    # The supervisor closed our input: it is gone or wants us gone; results could
                    # not be delivered anyway. (With a TERMINATE queued, finish up to it.)
                    return self._eof_exit_code()
                last_flush = perf()

    async def _run(self, item: list[Any]) -> int | None:
        """Handle a run's records in order, as if each came alone; one result (plus progress) for all.

        Stops at the first failure (the rest is not run: the lane is held as for a single event) or
        when the run's lane is cancelled. A key run (``R_LANES``: a lane per record) instead defers
        the records of lanes held here and goes on after a failure, holding the failed record's lane:
        one key's failure does not stop the other keys. Returns an exit code when the worker must stop.
        """
        assert self.loaded is not None and self.context is not None
        seq, lane = item[F_SEQ], item[F_LANE]
        held = self._held
        if item[R_RETRY]:
            held.discard(lane)
        elif held and lane in held:
            with self._write_lock:
                self._run_active = None
                self._results.append([seq, _DEFERRED, 0.0, None, None, summarize_durations([])])
            return None
        lanes: list[Any] | None = item[R_LANES] if len(item) > R_LANES else None
        handler = self.loaded.handler
        context = self.context
        set_current_event = context.platform.current_event_setter()
        output_topic = self._output_topic
        output_headers = self._output_headers
        logger = context.logger
        trigger = self.trigger
        decode = self.decode_strings
        perf = time.perf_counter
        isawaitable = inspect.isawaitable
        topic, partition = item[R_TOPIC], item[R_PARTITION]
        offsets, keys, values, headers, stamps = item[R_OFFSETS : R_TIMESTAMPS + 1]
        # Set by ``_serve`` as the run left the inbox: [seq, reported, durations, lane].
        progress = self._run_active
        assert progress is not None and progress[0] == seq
        durations: list[Any] = progress[2]
        final: list[Any] | None = None
        failure: tuple[BaseException, Event] | None = None
        record_lane = lane
        # One clock read per record: a record's time runs from the end of the one before it (or
        # the run's start), so it includes building its event, ~1 us. Two reads per record cost
        # ~0.1 us each, a few percent of a no-op record's whole cost (issue #16).
        t0 = perf()
        for index in range(len(offsets)):
            if self._run_cancelled:  # set by CANCEL, read from the pipe while a call awaited
                final = [seq, _DEFERRED, 0.0, None, None]
                break
            if lanes is not None:
                record_lane = lanes[index]
                if held and record_lane in held:
                    durations.append([index, _DEFERRED, 0.0, None, None])
                    continue
            stamp = stamps[index]
            wire = new_event(
                seq,
                record_lane,
                topic,
                partition,
                offsets[index],
                keys[index],
                values[index],
                headers[index],
                stamp if stamp >= 0 else None,
            )
            event = Event(wire, trigger, decode)
            logger.current_event = event
            self._handling = event
            set_current_event(event)
            try:
                result = handler(context, event)  # handler_call.call_maybe_async, inlined
                if result is not None and isawaitable(result):
                    result = await result
                if result is not None:
                    # acks are not explicit for runs: a no-ack response means nothing.
                    output = what_it_returned(result, wire, output_topic, output_headers)[1]
                    if output is not None:
                        self._record_outputs.append(output)
                if self._record_outputs:
                    # Queued before the duration that reports the record done (see ``_flush``).
                    self._outputs_done(topic, partition, offsets[index])
                t1 = perf()
                durations.append(t1 - t0)
            except Exception as exc:
                t1 = perf()
                final = [seq, _ERROR, t1 - t0, type(exc).__name__, _one_line(exc)]
                failure = (exc, event)
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                t1 = perf()
                final = [seq, _ERROR, t1 - t0, type(exc).__name__, _one_line(exc)]
                failure = (exc, event)
            t0 = t1
            logger.current_event = None
            self._handling = None
            if final is not None:
                self._record_outputs = []  # of the failed call: not produced
                if lanes is None:
                    break
                # Key run: this record's lane is held from now on; the other lanes go on.
                final[0] = index
                durations.append(final)
                held.add(record_lane)
                assert failure is not None
                self._log_failure(*failure)
                final = failure = None
                t0 = perf()  # not the failure's log line
            if t1 - self._last_flush >= FLUSH_INTERVAL_S:
                self._flush()
                await asyncio.sleep(0)
                if self._eof and not self._terminate_pending:
                    self._run_active = None
                    return self._eof_exit_code()
                t0 = perf()  # not the flush, nor what ran meanwhile
        with self._write_lock:
            self._run_active = None
            status = _OK if final is None else final[1]
            report = _run_report(seq, status, durations[progress[1] :], lanes is not None)
            if final is not None:
                report[2:5] = final[2:5]
            self._results.append(report)
        if failure is not None:
            held.add(lane)
            self._log_failure(*failure)
        return None

    def _log_failure(self, error: BaseException, failed_event: Event) -> None:
        assert self.context is not None
        logger = self.context.logger
        logger.current_event = failed_event  # the log line names the record
        logger.error_with(
            "handler raised",
            error_type=type(error).__name__,
            attempt=failed_event.attempt,
            exc_info=error,
        )
        logger.current_event = None

    def _outputs_done(self, topic: str, partition: int, offset: int) -> None:
        """The handler returned: queue the record's outputs, ahead of its result."""
        self._outputs.append([topic, partition, offset, self._record_outputs])
        self._record_outputs = []

    def _eof_exit_code(self) -> int:
        return EXIT_OK if self._protocol_error is None else EXIT_PROTOCOL_ERROR

    def _handler_failed(
        self, item: list[Any], lane: Any, event: Event, exc: BaseException, duration: float
    ) -> None:
        error_type = type(exc).__name__
        self._results.append([item[F_SEQ], _ERROR, duration, error_type, _one_line(exc)])
        self._held.add(lane)
        assert self.context is not None
        self.context.logger.error_with(
            "handler raised", error_type=error_type, attempt=event.attempt, exc_info=exc
        )

    async def _control(self, item: tuple[int, Any]) -> int | None:
        """Handle DRAIN / TERMINATE (all events received before them are done)."""
        assert self.context is not None
        kind, request_id = item
        platform = self.context.platform
        if kind == _DRAIN:
            self._flush()
            await self._run_callback(platform.drain_callback, "drain")
            self._flush(encode([Msg.DRAINED, request_id]))
            return None
        # TERMINATE
        self._flush()
        await self._run_callback(platform.termination_callback, "termination")
        self._flush(encode([Msg.TERMINATED]))
        self._stop_reading()
        if self._inbox:
            self._log.warning("events received after TERMINATE were not run", count=len(self._inbox))
        await self._finish_tasks(TASK_GRACE_S)
        return EXIT_OK

    async def _run_callback(self, callback: Callable[[], Any] | None, what: str) -> None:
        if callback is None:
            return
        try:
            await call_maybe_async(callback)
        except Exception as exc:
            self._log.error(f"{what} callback raised", error_type=type(exc).__name__, exc_info=exc)
        # Acks made by the callback go out before the DRAINED/TERMINATED that follows.

    async def _finish_tasks(self, grace: float) -> None:
        """Give tasks the handler started ``grace`` seconds to finish, then cancel them."""
        current = asyncio.current_task()
        tasks = {task for task in asyncio.all_tasks() if task is not current}
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, stubborn = await asyncio.wait(pending, timeout=0.5)
        if stubborn:
            # A task that ignores cancellation would hang asyncio.run's cleanup: leave now.
            self._log.warning("background tasks ignored cancellation; exiting", count=len(stubborn))
            sys.stdout.flush()
            os._exit(EXIT_OK)


def _hard_exit_after(code: int, delay: float) -> None:
    """Exit even if non-daemon threads the handler started would keep the interpreter alive."""
    timer = threading.Timer(delay, os._exit, args=(code,))
    timer.daemon = True
    timer.start()


def main(argv: Sequence[str] | None = None) -> int:
    # Never outlive the supervisor: kernel signal on its death, plus a polling watchdog.
    parent = os.getppid()
    die_with_parent()
    start_parent_watchdog(parent)
    # Ctrl-C in a terminal reaches the whole process group; the supervisor decides what we do.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    parser = argparse.ArgumentParser(prog="python -m streamworker.worker")
    parser.add_argument("--in-fd", type=int, required=True, help="pipe from the supervisor")
    parser.add_argument("--out-fd", type=int, required=True, help="pipe to the supervisor")
    args = parser.parse_args(argv)
    # pass_fds made our pipe ends inheritable: a process the handler starts (os.system("... &"),
    # subprocess with close_fds=False) would keep them open after we die and hide our death.
    os.set_inheritable(args.in_fd, False)
    os.set_inheritable(args.out_fd, False)

    configure_logging("info", _log_format())
    worker = WorkerLoop(args.in_fd, args.out_fd)
    code = asyncio.run(worker.run())
    sys.stdout.flush()
    _hard_exit_after(code, 2.0)
    return code


def _run_report(seq: int, status: int, outcomes: list[Any], keyed: bool) -> list[Any]:
    """A run's result or progress report for ``outcomes`` (see ``WorkerLoop._run_active``)."""
    if not keyed:
        return [seq, status, 0.0, None, None, summarize_durations(outcomes)]
    if not set(map(type, outcomes)) - {float}:  # all ran fine: the common case, in C
        return [seq, status, 0.0, None, None, summarize_durations(outcomes), []]
    durations = [outcome for outcome in outcomes if type(outcome) is float]
    exceptions = [outcome for outcome in outcomes if type(outcome) is not float]
    return [seq, status, 0.0, None, None, summarize_durations(durations), exceptions]
