"""Worker processes as the supervisor sees them: spawn, talk in frames, notice death, kill.

Each worker is ``python -m streamworker.worker`` with two pipes of its own (the descriptors are
non-inheritable, so a worker never holds another worker's pipe open and a death shows up as end of
file at once). End of file alone is not enough: a process the handler started (``os.system("... &")``,
a C library's ``system()``, a fork) may hold the worker's end of the pipe open after the worker died.
So the process itself is watched too, through a pidfd (``exit_fd``) that becomes readable when it
exits. The supervisor's ends are non-blocking: a busy worker that does not read can never stall the
poll loop; outgoing frames wait in a ``FrameWriter``.
"""

from __future__ import annotations

import enum
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

from streamworker.protocol import FrameReader, FrameWriter, Msg, WorkerInit, encode, read_available

# Linux's F_SETPIPE_SZ (fcntl exposes it from Python 3.10 on Linux only).
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", None)
# A pipe that holds a whole batch of events (the default 64 KiB holds a few hundred 100-byte
# records): fewer partial writes and fewer wake-ups of the reader. 1 MiB is the unprivileged maximum.
PIPE_BYTES = 1 << 20


def _enlarge_pipe(fd: int) -> None:
    if _F_SETPIPE_SZ is None:
        return
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass  # a lower /proc/sys/fs/pipe-max-size: the default size works, a little slower


class WorkerState(enum.Enum):
    STARTING = "starting"  # spawned, INIT sent, waiting for READY
    READY = "ready"
    STOPPING = "stopping"  # TERMINATE sent
    DEAD = "dead"


class WorkerHandle:
    """The supervisor's handle on one worker process: its pid, its two pipes, its state."""

    def __init__(self, worker_id: int, init: WorkerInit, env: Mapping[str, str]) -> None:
        self.worker_id = worker_id
        self.init = init
        self.state = WorkerState.STARTING
        self.started_at = time.monotonic()
        # When the event at the head of this worker's queue started, near enough: the time the
        # queue became non-empty or the last results arrived (results are flushed within ~10 ms).
        self.busy_since = 0.0
        self.drained: set[int] = set()
        self.exit_code: int | None = None
        # Set when the supervisor kills the worker on purpose, so the death is logged with the cause.
        self.kill_reason: str | None = None
        self.kill_kind: str | None = None  # short label for metrics: event_timeout, rebalance_deadline, ...
        self.terminated = False
        self._reader = FrameReader()
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        _enlarge_pipe(to_child_w)
        _enlarge_pipe(from_child_r)
        try:
            self.popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "streamworker.worker",
                    "--in-fd",
                    str(to_child_r),
                    "--out-fd",
                    str(from_child_w),
                ],
                pass_fds=(to_child_r, from_child_w),
                env=dict(env),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
                os.close(fd)
            raise
        os.close(to_child_r)
        os.close(from_child_w)
        os.set_blocking(to_child_w, False)
        os.set_blocking(from_child_r, False)
        self.read_fd = from_child_r
        self.write_fd = to_child_w
        # Readable once the process has exited, whoever still holds its pipes (Linux >= 5.3).
        self.exit_fd = _pidfd(self.popen.pid)
        self.writer = FrameWriter(to_child_w)
        self.send([Msg.INIT, init.to_wire()])

    @property
    def pid(self) -> int:
        return self.popen.pid

    def send(self, message: list[Any]) -> None:
        """Queue a frame and write what the pipe takes now (never blocks)."""
        if self.state is WorkerState.DEAD:
            return
        self.writer.queue(encode(message))
        try:
            self.writer.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the read side reports the death as end of file

    def flush(self) -> None:
        try:
            self.writer.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def receive(self) -> tuple[list[list[Any]], bool]:
        """Messages available now, and whether the worker has gone (end of file)."""
        try:
            return read_available(self.read_fd, self._reader)
        except ConnectionResetError:
            return [], True

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass

    def reap(self, timeout: float = 5.0) -> int | None:
        """Wait for the process to exit (after EOF it is gone or about to be) and close the pipes."""
        try:
            self.exit_code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.exit_code = self.popen.wait()
        self.close_pipes()
        self.state = WorkerState.DEAD
        return self.exit_code

    def exited(self) -> bool:
        """The process has exited (it may not be reaped yet)."""
        return self.popen.poll() is not None

    def close_pipes(self) -> None:
        for fd in (self.read_fd, self.write_fd, self.exit_fd):
            if fd < 0:
                continue
            try:
                os.close(fd)
            except OSError:
                pass
        self.read_fd = self.write_fd = self.exit_fd = -1


def _pidfd(pid: int) -> int:
    """A pidfd for ``pid``, or -1 where the platform has none (the pipe's end of file is all then)."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return -1
    try:
        fd: int = pidfd_open(pid)
    except OSError:
        return -1
    return fd


def describe_exit(code: int | None) -> str:
    """'exit code 3' or 'signal SIGKILL' for a Popen return code."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
