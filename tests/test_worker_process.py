"""The real worker process, driven over its pipes like the supervisor does."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamworker.protocol import FrameReader, Msg, ProtocolError, Status, WorkerInit, encode
from streamworker.records import RUN_FIELDS, new_event, new_run
from streamworker.supervisor.worker_handle import WorkerHandle

HANDLERS = Path(__file__).parent / "fixtures" / "handlers"
TIMEOUT = 10.0

OK, ERROR, DEFERRED, NO_ACK = Status.OK, Status.ERROR, Status.DEFERRED, Status.NO_ACK


def wire_event(
    seq: int,
    body: bytes = b"",
    *,
    lane: Any = 0,
    partition: int = 0,
    offset: int | None = None,
    retry: bool = False,
    attempt: int = 1,
    key: bytes | None = None,
    headers: list[list[Any]] | None = None,
    timestamp_ms: int | None = None,
    topic: str = "orders",
) -> list[Any]:
    values = {
        "seq": seq,
        "lane": lane,
        "topic": topic,
        "partition": partition,
        "offset": seq if offset is None else offset,
        "key": key,
        "value": body,
        "headers": headers,
        "timestamp_ms": timestamp_ms,
        "attempt": attempt,
        "retry": retry,
    }
    return new_event(**values)


def unread_bytes(pipe_fd: int) -> int:
    """Bytes written to a pipe that its reader has not read yet (FIONREAD works on either end)."""
    return struct.unpack("i", fcntl.ioctl(pipe_fd, termios.FIONREAD, b"\0\0\0\0"))[0]


class WorkerHarness:
    """Spawns ``python -m streamworker.worker`` with a pipe pair and speaks the protocol to it."""

    def __init__(self, tmp_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.out_file = tmp_path / "observed.jsonl"
        self.log_file = tmp_path / "worker.log"
        to_worker_r, self.to_worker = os.pipe()
        self.from_worker, from_worker_w = os.pipe()
        env = dict(os.environ, SW_TEST_OUT=str(self.out_file), **(extra_env or {}))
        with open(self.log_file, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "streamworker.worker",
                    "--in-fd",
                    str(to_worker_r),
                    "--out-fd",
                    str(from_worker_w),
                ],
                pass_fds=(to_worker_r, from_worker_w),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        os.close(to_worker_r)
        os.close(from_worker_w)
        self.reader = FrameReader()
        self.inbox: list[list[Any]] = []
        self.eof = False

    # -- sending ----------------------------------------------------------------------------------

    def send(self, message: list[Any]) -> None:
        data = memoryview(encode(message))
        while data:
            data = data[os.write(self.to_worker, data) :]

    def send_control(self, message: list[Any]) -> None:
        """Send a control frame and wait until the worker's reader thread has taken it off the pipe.

        A frame read while a call runs takes effect right after that call; one still in the pipe when
        the call ends may come after the next queued event. Tests that release a running call right
        after a control frame wait for this first, or they race the reader thread.
        """
        self.send(message)
        deadline = time.monotonic() + 10
        while unread_bytes(self.to_worker):
            assert time.monotonic() < deadline, f"the worker never read {message!r}"
            select.select([], [], [], 0.005)

    def init(self, handler: str, *, code_dir: Path = HANDLERS, decode: bool = True) -> None:
        init = WorkerInit(
            handler=handler,
            code_dir=str(code_dir),
            worker_id=4,
            trigger_name="orders-trigger",
            trigger_kind="kafka-cluster",
            function_name="fn",
            decode_strings=decode,
            log_level="info",
        )
        self.send([Msg.INIT, init.to_wire()])

    def start(self, handler: str, **kwargs: Any) -> dict[str, Any]:
        self.init(handler, **kwargs)
        kind, payload = self.next_message()
        assert kind == Msg.READY, payload
        assert payload["pid"] == self.proc.pid
        return dict(payload)

    def events(self, *events: list[Any]) -> None:
        self.send([Msg.EVENTS, list(events)])

    # -- receiving --------------------------------------------------------------------------------

    def next_message(self, timeout: float = TIMEOUT) -> list[Any]:
        """The next frame from the worker; fails the test after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.inbox:
            if self.eof:
                raise AssertionError(f"worker closed its pipe; log:\n{self.log()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no frame from the worker within {timeout}s; log:\n{self.log()}")
            readable, _, _ = select.select([self.from_worker], [], [], remaining)
            if readable:
                data = os.read(self.from_worker, 1 << 20)
                if not data:
                    self.eof = True
                self.inbox.extend(self.reader.feed(data))
        return self.inbox.pop(0)

    def wait_eof(self, timeout: float = TIMEOUT) -> None:
        """Wait until every writer of the worker's output pipe is gone (frames are discarded)."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("the worker's output pipe is still open")
            readable, _, _ = select.select([self.from_worker], [], [], remaining)
            if readable and not os.read(self.from_worker, 1 << 20):
                self.eof = True

    def results(self, count: int, timeout: float = TIMEOUT) -> tuple[list[list[Any]], list[list[Any]]]:
        """Collect ``count`` results (from one or more RESULTS frames) and the ACKS seen meanwhile."""
        results: list[list[Any]] = []
        acks: list[list[Any]] = []
        while len(results) < count:
            kind, payload = self.next_message(timeout)
            if kind == Msg.RESULTS:
                results.extend(payload)
            elif kind == Msg.ACKS:
                acks.extend(payload)
            else:
                raise AssertionError(f"unexpected frame {kind}: {payload}")
        assert len(results) == count, results
        return results, acks

    def observed(self) -> list[dict[str, Any]]:
        if not self.out_file.exists():
            return []
        return [json.loads(line) for line in self.out_file.read_text().splitlines()]

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        for fd in (self.to_worker, self.from_worker):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[WorkerHarness]:
    worker = WorkerHarness(tmp_path)
    yield worker
    worker.close()


def statuses(results: list[list[Any]]) -> list[tuple[int, int]]:
    return [(seq, status) for seq, status, *_ in results]


# -- results, order, lanes ---------------------------------------------------------------------------


def test_results_in_order_with_failure_holding_only_its_lane(harness: WorkerHarness) -> None:
    harness.start("basic:handler")
    harness.events(
        wire_event(0, b"a", lane=0),
        wire_event(1, b"fail-1", lane=0),
        wire_event(2, b"b", lane=0),  # same lane after a failure: not run
        wire_event(3, b"c", lane=1, partition=1),  # other lane: runs
        wire_event(4, b"d", lane=0),
        wire_event(5, b"noack", lane=1, partition=1),
    )
    results, acks = harness.results(6)
    assert statuses(results) == [(0, OK), (1, ERROR), (2, DEFERRED), (3, OK), (4, DEFERRED), (5, NO_ACK)]
    assert acks == []
    _, _, duration, error_type, message = results[1]
    assert error_type == "ValueError" and message == "failed on fail-1"
    assert duration >= 0
    assert results[0][3:] == [None, None]

    # The supervisor re-sends the failed head with retry=True: the hold is lifted.
    harness.events(
        wire_event(1, b"fail-again", lane=0, retry=True, attempt=2),
        wire_event(2, b"b", lane=0),
    )
    results, _ = harness.results(2)
    assert statuses(results) == [(1, ERROR), (2, DEFERRED)]
    harness.events(wire_event(1, b"ok now", lane=0, retry=True, attempt=3), wire_event(2, b"b", lane=0))
    results, _ = harness.results(2)
    assert statuses(results) == [(1, OK), (2, OK)]

    # The failure was logged once per failure, with the record's position and the traceback.
    errors = [line for line in harness.log_lines() if line["level"] == "error"]
    assert len(errors) == 2
    first = errors[0]
    assert (first["topic"], first["partition"], first["offset"]) == ("orders", 0, 1)
    assert first["error_type"] == "ValueError" and "Traceback" in first["exception"]
    assert first["worker"] == 4 and first["trigger"] == "orders-trigger"
    # A handler's own log line carries the event fields too.
    about = [line for line in harness.log_lines() if line["message"] == "about to fail"]
    assert about[0]["offset"] == 1 and about[0]["body"] == "fail-1"


def test_list_lanes_and_many_events_in_order(harness: WorkerHarness) -> None:
    harness.start("basic:handler")
    events = [wire_event(i, b"x", lane=["orders", i % 3]) for i in range(2000)]
    for start in range(0, len(events), 250):
        harness.events(*events[start : start + 250])
    results, _ = harness.results(2000)
    assert [r[0] for r in results] == list(range(2000))
    assert {r[1] for r in results} == {OK}


def test_event_fields_cross_the_pipe(harness: WorkerHarness) -> None:
    harness.start("basic:handler")
    harness.events(
        wire_event(
            0,
            b"meta",
            key=b"\xffkey",
            headers=[["Content-Type", b"text/plain"], ["h", None]],
            timestamp_ms=1_700_000_000_123,
            attempt=2,
        )
    )
    harness.results(1)
    (meta,) = harness.observed()
    assert meta == {
        "key": repr(b"\xffkey"),
        "headers": repr([("Content-Type", b"text/plain"), ("h", None)]),
        "content_type": repr("text/plain"),
        "timestamp": "2023-11-14T22:13:20.123000",
        "attempt": 2,
        "id": "orders/0/0",
        "trigger": ["kafka-cluster", "orders-trigger"],
    }


def test_decode_strings_off(harness: WorkerHarness) -> None:
    harness.start("basic:handler", decode=False)
    harness.events(wire_event(0, b"meta", key=b"k", headers=[["Content-Type", b"text/plain"]]))
    harness.results(1)
    (meta,) = harness.observed()
    assert meta["key"] == repr(b"k") and meta["content_type"] == repr(b"text/plain")


def test_sys_exit_in_handler_reports_earlier_results_then_exits(harness: WorkerHarness) -> None:
    harness.start("basic:handler")
    harness.events(wire_event(0, b"a"), wire_event(1, b"exit"), wire_event(2, b"never"))
    results, _ = harness.results(1)
    assert statuses(results) == [(0, OK)]
    assert harness.wait_exit() == 5


# -- init ------------------------------------------------------------------------------------------


def test_init_context_sets_user_data(harness: WorkerHarness) -> None:
    harness.start("basic:handler")
    harness.events(wire_event(0, b"greet"))
    results, _ = harness.results(1)
    assert statuses(results) == [(0, OK)]
    assert harness.observed() == [{"greeting": "hello", "worker_id": "4"}]


def test_init_failed_on_import_error(harness: WorkerHarness) -> None:
    harness.init("broken_import:handler")
    kind, payload = harness.next_message()
    assert kind == Msg.INIT_FAILED
    assert payload["error_type"] == "HandlerLoadError"
    assert payload["message"] == (
        f"cannot import handler module 'broken_import' (handler 'broken_import:handler') from {HANDLERS}: "
        "ModuleNotFoundError: No module named 'definitely_not_an_installed_module_xyz' "
        f"(at {HANDLERS}/broken_import.py:1)"
    )
    # The traceback is the user's: it starts at their file, not in our loader or importlib.
    trace = payload["traceback"].splitlines()
    assert trace[:2] == [
        "Traceback (most recent call last):",
        f'  File "{HANDLERS}/broken_import.py", line 1, in <module>',
    ]
    assert trace[-1] == "ModuleNotFoundError: No module named 'definitely_not_an_installed_module_xyz'"
    assert harness.wait_exit() == 3


def test_init_failed_when_init_context_raises(harness: WorkerHarness) -> None:
    harness.init("init_fails:handler")
    kind, payload = harness.next_message()
    assert kind == Msg.INIT_FAILED
    assert payload["error_type"] == "ValueError"
    assert payload["message"] == (
        f"init_fails:init_context raised ValueError: database unreachable (at {HANDLERS}/init_fails.py:2)"
    )
    assert f'File "{HANDLERS}/init_fails.py", line 2, in init_context' in payload["traceback"]
    assert payload["traceback"].splitlines()[-1] == "ValueError: database unreachable"
    assert harness.wait_exit() == 3


def test_init_failed_on_missing_function(harness: WorkerHarness) -> None:
    harness.init("basic:nope")
    kind, payload = harness.next_message()
    assert kind == Msg.INIT_FAILED and "has no function 'nope'" in payload["message"]
    assert harness.wait_exit() == 3


# -- explicit acks -----------------------------------------------------------------------------------


def test_explicit_ack_sent_after_the_results_before_it(harness: WorkerHarness) -> None:
    # Results first, so a cumulative ack finds the no-ack records before it already reported.
    harness.start("basic:handler")
    harness.events(wire_event(0, b"ack", partition=2, offset=77))
    kind, payload = harness.next_message()
    assert kind == Msg.RESULTS and statuses(payload) == [(0, NO_ACK)]
    kind, payload = harness.next_message()
    assert kind == Msg.ACKS and payload == [["orders", 2, 77]]


# -- asyncio -----------------------------------------------------------------------------------------


def test_async_background_task_runs_while_idle(harness: WorkerHarness) -> None:
    harness.start("async_app:handler")
    harness.events(wire_event(0, b"check"))
    results, _ = harness.results(1)
    assert statuses(results) == [(0, ERROR)]  # nothing ran in the background yet

    harness.events(wire_event(1, b"bg:0.2:idle-task", lane=1), wire_event(2, b"sleep", lane=1))
    results, _ = harness.results(2)
    assert statuses(results) == [(1, OK), (2, OK)]
    # No event is sent now: the task finishes while the worker idles, and its explicit ack is sent
    # without waiting for another event.
    kind, payload = harness.next_message()
    assert (kind, payload) == (Msg.ACKS, [["idle-task", 0, 1]])
    assert harness.observed() == [{"background": "idle-task"}]

    harness.events(wire_event(3, b"check", lane=1))
    results, _ = harness.results(1)
    assert statuses(results) == [(3, OK)]


def test_terminate_waits_briefly_for_background_tasks(harness: WorkerHarness) -> None:
    harness.start("async_app:handler")
    harness.events(wire_event(0, b"bg:0.1:late", lane=0), wire_event(1, b"forever", lane=1))
    harness.send([Msg.TERMINATE])
    results, _ = harness.results(2)
    assert statuses(results) == [(0, OK), (1, OK)]
    assert harness.next_message() == [Msg.TERMINATED]
    started = time.monotonic()
    assert harness.wait_exit() == 0
    # The 0.1 s task completed; the endless one was cancelled after the grace period.
    assert time.monotonic() - started < 5
    observed = harness.observed()
    assert [line for line in observed if line.get("callback") == "terminate"]
    assert {"background": "late"} in observed


# -- drain / terminate / supervisor gone -------------------------------------------------------------


def test_drain_runs_after_the_running_event_ahead_of_queued_ones(
    harness: WorkerHarness, tmp_path: Path
) -> None:
    # The supervisor only drains once the revoked partitions' records are done; events of other
    # partitions queued on this worker must not delay the drain callback.
    flag = tmp_path / "go"
    harness.start("basic:handler")
    harness.events(wire_event(0, f"wait:{flag}".encode()), wire_event(1, b"greet"))
    deadline = time.monotonic() + 10
    while {"waiting": 0} not in harness.observed():
        assert time.monotonic() < deadline, "event 0 never started"
        select.select([], [], [], 0.01)
    harness.send_control([Msg.DRAIN, 17])
    flag.touch()
    results, _ = harness.results(1)
    assert statuses(results) == [(0, OK)]
    assert harness.next_message() == [Msg.DRAINED, 17]
    results, _ = harness.results(1)
    assert statuses(results) == [(1, OK)]
    observed = harness.observed()
    greeted = next(i for i, entry in enumerate(observed) if "greeting" in entry)
    assert observed.index({"callback": "drain"}) < greeted


def test_results_of_finished_events_are_sent_while_a_long_event_runs(
    harness: WorkerHarness, tmp_path: Path
) -> None:
    # Commits (and eventTimeout timing) depend on results arriving while a later handler still runs.
    flag = tmp_path / "release"
    harness.start("basic:handler")
    harness.events(wire_event(0, b"x"), wire_event(1, f"wait:{flag}".encode()))
    results, _ = harness.results(1)
    assert statuses(results) == [(0, OK)]
    assert {"waiting": 1} in harness.observed()
    flag.touch()
    results, _ = harness.results(1)
    assert statuses(results) == [(1, OK)]


def test_terminate_runs_callback_and_exits_zero(harness: WorkerHarness) -> None:
    harness.start("basic:handler")
    harness.events(wire_event(0, b"greet"))
    harness.send([Msg.TERMINATE])
    results, _ = harness.results(1)
    assert statuses(results) == [(0, OK)]
    assert harness.next_message() == [Msg.TERMINATED]
    assert harness.wait_exit() == 0
    assert harness.observed()[-1] == {"callback": "terminate"}


def test_drain_and_terminate_without_callbacks(harness: WorkerHarness) -> None:
    harness.start("nested.deeper.entry:handle")
    harness.send([Msg.DRAIN, "r1"])
    assert harness.next_message() == [Msg.DRAINED, "r1"]
    harness.send([Msg.TERMINATE])
    assert harness.next_message() == [Msg.TERMINATED]
    assert harness.wait_exit() == 0


def test_exits_when_supervisor_closes_the_pipe(harness: WorkerHarness) -> None:
    harness.start("basic:handler")
    os.close(harness.to_worker)
    assert harness.wait_exit() == 0


def test_exits_when_supervisor_closes_the_pipe_before_init(harness: WorkerHarness) -> None:
    os.close(harness.to_worker)
    assert harness.wait_exit() == 0


def test_ignores_sigint(harness: WorkerHarness) -> None:
    harness.start("basic:handler")
    harness.proc.send_signal(signal.SIGINT)
    harness.events(wire_event(0, b"x"))
    results, _ = harness.results(1)
    assert statuses(results) == [(0, OK)]
    assert harness.proc.poll() is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reparenting semantics are Linux's")
def test_dies_with_its_parent(tmp_path: Path) -> None:
    """The parent dies while we (the grandparent) still hold the pipes open: no EOF to rely on."""
    to_worker_r, to_worker = os.pipe()
    from_worker, from_worker_w = os.pipe()
    spawner = (
        "import subprocess, sys\n"
        "a, b = sys.argv[1], sys.argv[2]\n"
        "p = subprocess.Popen([sys.executable, '-m', 'streamworker.worker', '--in-fd', a, '--out-fd', b],"
        " pass_fds=(int(a), int(b)))\n"
        "p.wait()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", spawner, str(to_worker_r), str(from_worker_w)],
        pass_fds=(to_worker_r, from_worker_w),
    )
    os.close(to_worker_r)
    os.close(from_worker_w)
    try:
        init = WorkerInit("basic:handler", str(HANDLERS), 0, "t", "kafka-cluster", "fn", True)
        os.write(to_worker, encode([Msg.INIT, init.to_wire()]))
        reader = FrameReader()
        messages: list[list[Any]] = []
        deadline = time.monotonic() + TIMEOUT
        while not messages:
            readable, _, _ = select.select([from_worker], [], [], max(0.0, deadline - time.monotonic()))
            assert readable, "worker did not start"
            messages = reader.feed(os.read(from_worker, 65536))
        assert messages[0][0] == Msg.READY
        parent.kill()
        parent.wait()
        # Every writer of the output pipe (the parent and the worker) is gone once we read EOF.
        deadline = time.monotonic() + TIMEOUT
        while True:
            readable, _, _ = select.select([from_worker], [], [], max(0.0, deadline - time.monotonic()))
            assert readable, "worker outlived its parent"
            if not os.read(from_worker, 65536):
                break
    finally:
        os.close(to_worker)
        os.close(from_worker)
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_throughput_of_noop_handler(harness: WorkerHarness) -> None:
    """Not a benchmark, a guard against a grossly slow hot path (tens of thousands/s expected)."""
    harness.start("basic:noop")
    total, batch = 40_000, 500
    events = [wire_event(i, b"payload", lane=i % 8) for i in range(total)]
    frames = [encode([Msg.EVENTS, events[i : i + batch]]) for i in range(0, total, batch)]

    def feed() -> None:
        for frame in frames:
            view = memoryview(frame)
            while view:
                view = view[os.write(harness.to_worker, view) :]

    started = time.perf_counter()
    sender = threading.Thread(target=feed)
    sender.start()
    results, _ = harness.results(total, timeout=60)
    elapsed = time.perf_counter() - started
    sender.join()
    assert [r[0] for r in results] == list(range(total))
    rate = total / elapsed
    print(f"no-op throughput: {rate:,.0f} events/s")
    assert rate > 5_000


def test_parent_watchdog_exits_when_parent_changes() -> None:
    code = (
        "import threading\n"
        "from streamworker.worker.process import start_parent_watchdog\n"
        "start_parent_watchdog(-1, interval=0.05)\n"  # -1 is never our parent: 'it changed'
        "threading.Event().wait(30)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=TIMEOUT, check=False)
    assert proc.returncode == 70


def test_cancel_drops_queued_events_of_revoked_lanes_but_not_the_running_one(
    harness: WorkerHarness, tmp_path: Path
) -> None:
    flag = tmp_path / "go"
    harness.start("basic:handler")
    harness.events(
        wire_event(0, f"wait:{flag}".encode(), lane=7),
        wire_event(1, b"greet", lane=7),
        wire_event(2, b"x", lane=8),
    )
    deadline = time.monotonic() + 10
    while {"waiting": 0} not in harness.observed():
        assert time.monotonic() < deadline, "event 0 never started"
        select.select([], [], [], 0.01)
    harness.send_control([Msg.CANCEL, [7]])
    flag.touch()
    results, _ = harness.results(3)
    assert sorted(statuses(results)) == [(0, OK), (1, DEFERRED), (2, OK)]
    assert not [entry for entry in harness.observed() if "greeting" in entry], "event 1 must not run"


# -- runs: consecutive records of one partition sent as columns ------------------------------------


def wire_run(
    seq: int,
    bodies: list[bytes],
    *,
    lane: int = 0,
    partition: int = 0,
    first_offset: int = 0,
    retry: bool = False,
    topic: str = "orders",
) -> list[Any]:
    count = len(bodies)
    values = {
        "seq": seq,
        "lane": lane,
        "topic": topic,
        "partition": partition,
        "retry": retry,
        "offsets": list(range(first_offset, first_offset + count)),
        "keys": [b"k%d" % i for i in range(count)],
        "values": bodies,
        "headers": [None] * count,
        "timestamps": [1_700_000_000_000 + i for i in range(count)],
    }
    return new_run(**values)


PROGRESS = Status.PROGRESS


def collect(harness: WorkerHarness, count: int) -> list[list[Any]]:
    """``count`` final results (events, or runs' last results), progress reports folded into them."""
    finals: list[list[Any]] = []
    done: dict[int, int] = {}
    while len(finals) < count:
        kind, payload = harness.next_message()
        assert kind == Msg.RESULTS, (kind, payload)
        for result in payload:
            if len(result) == 6:
                summary_count, total, buckets = result[5]
                assert sum(buckets) == summary_count and total >= 0
                done[result[0]] = done.get(result[0], 0) + summary_count
                if result[1] != PROGRESS:
                    finals.append([*result[:5], done.pop(result[0])])
            else:
                finals.append(result)
    assert len(finals) == count, finals
    return finals


def run_result(result: list[Any]) -> tuple[int, int, int]:
    """(seq, status, how many records it reports finished) of a result folded by ``collect``."""
    return result[0], result[1], result[5]


def test_a_run_is_handled_record_by_record_with_one_result(harness: WorkerHarness) -> None:
    harness.start("basic:handler")
    harness.events(wire_run(3, [b"x", b"meta", b"y"], first_offset=40), wire_event(4, b"after", lane=1))
    results = collect(harness, 2)
    assert run_result(results[0]) == (3, OK, 3) and results[0][3:5] == [None, None]
    assert statuses(results[1:]) == [(4, OK)]
    meta = next(entry for entry in harness.observed() if "id" in entry)
    # Each record of the run is an ordinary event: its own offset, key and timestamp.
    assert meta["id"] == "orders/0/41" and meta["key"] == "'k1'" and meta["attempt"] == 1
    assert meta["timestamp"].startswith("2023-11-14T22:13:20.001")


def test_a_failure_in_a_run_stops_it_and_holds_its_lane_until_the_retry(harness: WorkerHarness) -> None:
    harness.start("basic:handler")
    harness.events(
        wire_run(0, [b"a", b"b", b"fail-2", b"greet"]),
        wire_run(1, [b"greet"], first_offset=4),  # same lane: held
        wire_event(2, b"x", lane=5, partition=1),  # other lane: runs
    )
    results = collect(harness, 3)
    seq, status, failed_after, error_type, message, done = results[0]
    assert (seq, status, done) == (0, ERROR, 2)
    assert (error_type, message) == ("ValueError", "failed on fail-2") and failed_after >= 0
    assert run_result(results[1]) == (1, DEFERRED, 0)
    assert statuses(results[2:]) == [(2, OK)]
    assert not [entry for entry in harness.observed() if "greeting" in entry], "nothing after the failure ran"
    errors = [line for line in harness.log_lines() if line["level"] == "error"]
    assert [(e["offset"], e["error_type"]) for e in errors] == [(2, "ValueError")]
    # The supervisor re-sends the failed record alone (retry=True), then the rest as a run.
    harness.events(
        wire_event(9, b"ok now", offset=2, retry=True, attempt=2), wire_run(10, [b"greet"], first_offset=3)
    )
    results = collect(harness, 2)
    assert statuses(results[:1]) == [(9, OK)] and run_result(results[1]) == (10, OK, 1)


def test_progress_of_a_run_is_reported_while_a_long_record_of_it_runs(
    harness: WorkerHarness, tmp_path: Path
) -> None:
    flag = tmp_path / "release"
    harness.start("basic:handler")
    harness.events(wire_run(0, [b"a", b"b", f"wait:{flag}".encode(), b"c"]))
    reported = 0
    while reported < 2:  # the first two records are reported done while the third one runs
        kind, payload = harness.next_message()
        assert kind == Msg.RESULTS and [r[1] for r in payload] == [PROGRESS] * len(payload), payload
        reported += sum(r[5][0] for r in payload)
    assert reported == 2
    assert {"waiting": 2} in harness.observed()
    flag.touch()
    results = collect(harness, 1)
    assert run_result(results[0]) == (0, OK, 2)


def test_cancel_stops_the_running_run_after_its_current_record(
    harness: WorkerHarness, tmp_path: Path
) -> None:
    flag = tmp_path / "go"
    harness.start("basic:handler")
    harness.events(
        wire_run(0, [f"wait:{flag}".encode(), b"greet", b"greet"], lane=7), wire_run(1, [b"greet"], lane=7)
    )
    deadline = time.monotonic() + 10
    while {"waiting": 0} not in harness.observed():
        assert time.monotonic() < deadline, "the run never started"
        select.select([], [], [], 0.01)
    harness.send_control([Msg.CANCEL, [7]])
    flag.touch()
    results = collect(harness, 2)
    assert sorted(run_result(r) for r in results) == [(0, DEFERRED, 1), (1, DEFERRED, 0)]
    assert not [entry for entry in harness.observed() if "greeting" in entry], (
        "cancelled records must not run"
    )


def test_a_run_record_without_timestamp_has_none(harness: WorkerHarness) -> None:
    harness.start("basic:handler")
    run = wire_run(0, [b"meta"])
    run[RUN_FIELDS.index("timestamps")] = [-1]  # librdkafka: no timestamp
    harness.events(run)
    assert run_result(collect(harness, 1)[0]) == (0, OK, 1)
    (meta,) = [entry for entry in harness.observed() if "id" in entry]
    assert meta["timestamp"] is None


# -- standard logging --------------------------------------------------------------------------------


def test_stdlib_logging_joins_the_json_lines_with_the_event_fields(harness: WorkerHarness) -> None:
    harness.start("stdlib_logging:handler")
    harness.events(wire_event(0, b"a", partition=2, offset=70))
    harness.events(wire_run(1, [b"b", b"c"], partition=5, first_offset=90))
    assert statuses(collect(harness, 2)) == [(0, OK), (1, OK)]
    # The handler's lines are written before its results: no waiting needed once they are in.
    lines = [line for line in harness.log_lines() if line.get("logger") == "somelib.client"]
    worker = {"function": "fn", "worker": 4, "trigger": "orders-trigger"}
    seen = [
        (line["level"], line["message"], line.get("topic"), line.get("partition"), line.get("offset"))
        for line in lines
    ]
    assert seen == [
        ("info", "library loaded", None, None, None),  # at import: worker fields, no event
        ("info", "fetched a", "orders", 2, 70),
        ("warning", "slow reply", "orders", 2, 70),
        ("info", "fetched b", "orders", 5, 90),
        ("warning", "slow reply", "orders", 5, 90),
        ("info", "fetched c", "orders", 5, 91),
        ("warning", "slow reply", "orders", 5, 91),
    ], harness.log()
    assert all(line.items() >= worker.items() for line in lines), lines
    assert lines[2]["ms"] == 250  # `extra` fields come along
    assert "debug is below" not in harness.log()  # the configured level (info) applies


def test_cancel_reaches_the_worker_while_a_sync_handler_of_another_lane_runs(
    harness: WorkerHarness, tmp_path: Path
) -> None:
    # Issue #12 item 2: a sync handler blocks the worker's event loop; the CANCEL for a revoked
    # lane's queued events must still be read at once, so their DEFERRED results come back while
    # the call of the staying lane runs (the supervisor then need not kill this worker).
    flag = tmp_path / "go"
    harness.start("basic:handler")
    harness.events(
        wire_event(0, f"wait:{flag}".encode(), lane=8),
        wire_event(1, b"greet", lane=7),
        wire_run(2, [b"greet", b"greet"], lane=7),
        wire_event(3, b"x", lane=8),
    )
    deadline = time.monotonic() + 10
    while {"waiting": 0} not in harness.observed():
        assert time.monotonic() < deadline, "event 0 never started"
        select.select([], [], [], 0.01)
    harness.send([Msg.CANCEL, [7]])
    try:
        cancelled = collect(harness, 2)
        assert sorted((r[0], r[1]) for r in cancelled) == [(1, DEFERRED), (2, DEFERRED)]
        assert {"waiting": 0} in harness.observed() and not flag.exists()
    finally:
        flag.touch()
    results, _ = harness.results(2)
    assert statuses(results) == [(0, OK), (3, OK)]
    assert not [entry for entry in harness.observed() if "greeting" in entry], "cancelled events ran"


def test_drain_and_terminate_are_read_while_a_sync_handler_runs(
    harness: WorkerHarness, tmp_path: Path
) -> None:
    # Control frames sent while a sync call blocks the loop take effect right after that call:
    # DRAIN ahead of the queued event, TERMINATE after it.
    flag = tmp_path / "go"
    harness.start("basic:handler")
    harness.events(wire_event(0, f"wait:{flag}".encode()), wire_event(1, b"greet"))
    deadline = time.monotonic() + 10
    while {"waiting": 0} not in harness.observed():
        assert time.monotonic() < deadline, "event 0 never started"
        select.select([], [], [], 0.01)
    harness.send([Msg.DRAIN, 5])
    harness.send_control([Msg.TERMINATE])
    flag.touch()
    results, _ = harness.results(1)
    assert statuses(results) == [(0, OK)]
    assert harness.next_message() == [Msg.DRAINED, 5]
    results, _ = harness.results(1)
    assert statuses(results) == [(1, OK)]
    assert harness.next_message() == [Msg.TERMINATED]
    assert harness.wait_exit() == 0
    callbacks = [entry["callback"] for entry in harness.observed() if "callback" in entry]
    assert callbacks == ["drain", "terminate"]


# -- background processes started by the handler --------------------------------------------------


@pytest.fixture
def background_pids(harness: WorkerHarness) -> Iterator[list[int]]:
    """Pids of the background processes the handler left; killed at teardown."""
    pids: list[int] = []
    yield pids
    for entry in harness.observed():
        if "background" in entry:
            pids.append(int(entry["background"]))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("how", ["system", "popen"])
def test_a_process_the_handler_leaves_does_not_keep_the_pipe_open(
    harness: WorkerHarness, background_pids: list[int], how: str
) -> None:
    # The worker's pipe ends must not be inherited: otherwise the background process holds the
    # output pipe open after the worker dies and the supervisor never sees end of file.
    harness.start("background:handler")
    harness.events(wire_event(0, how.encode()))
    results, _ = harness.results(1)
    assert statuses(results) == [(0, OK)]
    assert any(entry.get("how") == how for entry in harness.observed())
    harness.proc.kill()
    harness.wait_exit()
    harness.wait_eof(timeout=2.0)


def _frames_until(process: WorkerHandle, kind: Msg, timeout: float = TIMEOUT) -> list[Any]:
    """Read the supervisor's end of ``process`` until a ``kind`` frame arrives; return its payload."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {kind.name} frame within {timeout}s")
        select.select([process.read_fd], [], [], remaining)
        messages, eof = process.receive()
        for message in messages:
            if message[0] == kind:
                return list(message[1:])
        assert not eof, "worker exited"


def test_the_supervisor_sees_a_worker_exit_while_a_forked_child_holds_its_pipe(tmp_path: Path) -> None:
    # A child that forks without exec keeps every descriptor, close-on-exec or not: only watching
    # the process itself (its pidfd) tells the supervisor the worker died.
    out = tmp_path / "observed.jsonl"
    init = WorkerInit(
        handler="background:handler",
        code_dir=str(HANDLERS),
        worker_id=0,
        trigger_name="orders-trigger",
        trigger_kind="kafka-cluster",
        function_name="fn",
        decode_strings=True,
        log_level="info",
    )
    process = WorkerHandle(0, init, dict(os.environ, SW_TEST_OUT=str(out)))
    background: list[int] = []
    try:
        assert process.exit_fd >= 0, "no pidfd on this platform"
        _frames_until(process, Msg.READY)
        process.send([Msg.EVENTS, [wire_event(0, b"fork")]])
        _frames_until(process, Msg.RESULTS)
        background = [json.loads(line)["background"] for line in out.read_text().splitlines()]
        process.kill()
        # The pipe never reaches EOF (the fork holds it): only the pidfd can tell.
        readable, _, _ = select.select([process.exit_fd], [], [], 10.0)
        assert readable == [process.exit_fd], "worker exit not seen through its pidfd"
        assert process.exited()
        _, eof = process.receive()
        assert not eof, "the forked child should still hold the pipe (else this test proves nothing)"
    finally:
        for pid in background:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.kill()
        process.reap()


@pytest.mark.parametrize(
    "body",
    [b"\xc1\xc1", encode([Msg.READY, {}])[4:] + b"\x00", encode(7)[4:]],
    ids=["msgpack", "extra", "shape"],
)
def test_an_undecodable_frame_is_a_protocol_error(body: bytes) -> None:
    # The supervisor replaces the worker on a ProtocolError; any other exception would end the trigger.
    reader = FrameReader()
    with pytest.raises(ProtocolError):
        reader.feed(len(body).to_bytes(4, "big") + body)
