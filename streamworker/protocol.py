"""The wire protocol between the supervisor and its worker processes.

Every message is one *frame*: a 4-byte big-endian length followed by that many bytes of msgpack.
The msgpack value is an array whose first element is a message-type code (``Msg``). Events travel in
batches (many events per frame, many results per reply) so that pipe round trips do not bound
throughput; a worker still runs one handler call at a time.

Supervisor -> worker
    [INIT, {WorkerInit fields}]                    first frame, exactly once
    [EVENTS, [item, ...]]                          item = an event or a run (``streamworker/records.py``)
    [DRAIN, request_id]                            run drain callbacks, answer DRAINED
    [TERMINATE]                                    run termination callbacks, answer TERMINATED, exit 0
    [CANCEL, [lane, ...]]                          drop queued (not started) events of these lanes,
                                                   answering DEFERRED for each (partitions revoked)

    An item of EVENTS is either one event (``records.EVENT_FIELDS``) or a *run*: consecutive
    records of one partition sent as columns (``records.RUN_FIELDS``), which the worker runs in
    order and reports as one (run results below); its first field says which. Runs are how the
    supervisor avoids per-record work. In key mode a run has one more column, each record's lane
    (``records.R_LANES``): the worker defers only the records of a lane it holds and goes on after
    a failure.

Worker -> supervisor
    [READY, {"pid": int}]                          handler imported and init_context done
    [INIT_FAILED, {"error_type", "message", "traceback"}]   then the worker exits non-zero
    [RESULTS, [[seq, status, duration_s, error_type, error_message], ...]]
                                                   a run's result has a sixth element, a summary of
                                                   the records that ran fine since its last report
                                                   ([count, seconds, counts per DURATION_BUCKETS
                                                   bucket], see ``summarize_durations``):
                                                   status OK (all of it done), PROGRESS (those done,
                                                   more to come), ERROR (those done, then the next one
                                                   failed after duration_s; the rest did not run) or
                                                   DEFERRED (those done; the rest did not run).
                                                   A key run's result has a seventh element: the
                                                   records of that stretch that were deferred or
                                                   failed, by index (``RESULT_RUN_EXCEPTIONS``)
    [DRAINED, request_id]
    [TERMINATED]
    [ACKS, [[topic, partition, offset], ...]]      explicit acks made by handlers
    [OUTPUTS, [[topic, partition, offset, [output, ...]], ...]]
                                                   records produced by handlers for these inputs
                                                   (output = ``OUTPUT_FIELDS``). Always sent before
                                                   the RESULTS (or ACKS) that report those inputs
                                                   done, so the supervisor knows an input has
                                                   outputs before it could count it done. Only
                                                   inputs that produced something appear: records
                                                   and runs without outputs cost nothing here.

Plain tuples/lists are used on the hot path on purpose: building dataclasses per record would cost
more than the whole pipe transfer.
"""

from __future__ import annotations

import bisect
import enum
import errno
import os
import struct
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import msgspec

HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 256 * 1024 * 1024


class Msg(enum.IntEnum):
    INIT = 0
    EVENTS = 1
    DRAIN = 2
    TERMINATE = 3
    CANCEL = 4
    READY = 10
    INIT_FAILED = 11
    RESULTS = 12
    DRAINED = 13
    TERMINATED = 14
    ACKS = 15
    OUTPUTS = 16


class Status(enum.IntEnum):
    """Outcome of one event, as reported in a RESULTS frame."""

    OK = 0
    ERROR = 1
    # Not run: an earlier event of the same lane failed in this worker, so running this one would
    # break the lane's order. The supervisor puts it back in front of the lane's queue.
    DEFERRED = 2
    # Handler returned a response marked no-ack (explicit ack mode): ran fine, but not done yet.
    NO_ACK = 3
    # A run reports the records it finished so far; the run itself is still going.
    PROGRESS = 4


# An output a handler produced (see ``worker/outputs.py``): key bytes or None, value bytes, headers
# [[name, bytes | None], ...] or None, partition an int or None (the partitioner picks).
OUTPUT_FIELDS = ("topic", "key", "value", "headers", "partition")
O_TOPIC, O_KEY, O_VALUE, O_HEADERS, O_PARTITION = range(len(OUTPUT_FIELDS))

# Index of the duration summary in a run's result.
RESULT_RUN_DURATIONS = 5
# A key run's result (and progress report) has one more element: the records of its stretch that
# did not run fine, as [index in the run, status (DEFERRED or ERROR), duration_s, error_type,
# error_message]. The summary counts the others; both together are the stretch reported (the run's
# records from where the last report ended, in order).
RESULT_RUN_EXCEPTIONS = 6

# Upper bounds (seconds) of the handler-duration histogram; workers count a run's durations into
# them, so the supervisor's loop adds a few counts per run instead of bisecting every duration.
# Handler calls range from microseconds (a filter) to many seconds (an HTTP call); Prometheus'
# defaults start at 5 ms, which would put every fast handler into the first bucket.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
_FIRST_BOUND = DURATION_BUCKETS[0]


def summarize_durations(durations: list[float]) -> list[Any]:
    """``[count, total seconds, counts per bucket (the last is +Inf)]`` of ``durations``.

    A duration equal to a bound counts in that bound's bucket (Prometheus' "le"). Workers call this
    for every run: a no-op handler's 1,000 durations all fall in the first bucket, found by one
    ``max`` in C; otherwise one sort and a bisection per bound. (Bucketing each duration through a
    Counter cost ~0.15 us per record, ~5 % of a worker's time at no-op speed: issue #16.)
    """
    counts = [0] * (len(DURATION_BUCKETS) + 1)
    if durations:
        if max(durations) <= _FIRST_BOUND:
            counts[0] = len(durations)
        else:
            ordered = sorted(durations)
            below = 0
            for bucket, bound in enumerate(DURATION_BUCKETS):
                upto = bisect.bisect_right(ordered, bound, below)
                counts[bucket] = upto - below
                below = upto
            counts[-1] = len(ordered) - below
    return [len(durations), sum(durations), counts]


@dataclass(frozen=True)
class WorkerInit:
    """Everything a worker needs to load and run the handler; sent as the INIT frame."""

    handler: str  # "package.module:function"
    code_dir: str  # goes first on sys.path
    worker_id: int
    trigger_name: str
    trigger_kind: str
    function_name: str
    decode_strings: bool
    log_level: str = "info"
    # attributes.outputTopic / outputHeaders: where a handler's return value is produced.
    output_topic: str | None = None
    output_headers: str = "none"
    # explicitAckMode (disable | enable | explicitOnly): which handled records stay open (their
    # tasks may still produce for them) until acked: no-ack ones with enable, all with explicitOnly.
    ack_mode: str = "disable"

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> WorkerInit:
        return cls(**data)


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame."""


# msgspec's msgpack: ~3.5x faster than msgpack-python at encoding a frame of runs and ~1.2x at
# decoding one (bench/frames.py, issue #16); same wire format. Stateless after creation, so sharing
# them between threads and frames is safe.
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder()


def encode(message: list[Any] | tuple[Any, ...]) -> bytes:
    """One complete frame (length prefix included) for ``message``."""
    body = _ENCODER.encode(message)
    return HEADER.pack(len(body)) + body


class FrameReader:
    """Incremental frame decoder: feed it bytes as they arrive, take whole messages out."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[list[Any]]:
        self._buffer += data
        messages: list[list[Any]] = []
        view = self._buffer
        start = 0
        while len(view) - start >= HEADER.size:
            (length,) = HEADER.unpack_from(view, start)
            if length > MAX_FRAME_BYTES:
                raise ProtocolError(f"frame of {length} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
            end = start + HEADER.size + length
            if len(view) < end:
                break
            try:
                message = _DECODER.decode(view[start + HEADER.size : end])
            except msgspec.DecodeError as exc:
                raise ProtocolError(f"undecodable frame of {length} bytes: {exc}") from exc
            if type(message) is not list or not message:
                raise ProtocolError(f"frame is not a message (a non-empty list): {type(message).__name__}")
            messages.append(message)
            start = end
        if start:
            del self._buffer[:start]
        return messages


class FrameWriter:
    """Buffers outgoing frames for a non-blocking file descriptor.

    The supervisor's loop must never block on a worker that is busy and not reading, so writes go
    through this buffer and are flushed whenever the descriptor is writable.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._chunks: deque[memoryview] = deque()
        self.pending_bytes = 0

    def queue(self, frame: bytes) -> None:
        self._chunks.append(memoryview(frame))
        self.pending_bytes += len(frame)

    def flush(self) -> bool:
        """Write as much as the pipe takes now. True when everything was written."""
        while self._chunks:
            chunk = self._chunks[0]
            try:
                written = os.write(self._fd, chunk)
            except BlockingIOError:
                return False
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    return False
                raise
            self.pending_bytes -= written
            if written == len(chunk):
                self._chunks.popleft()
            else:
                self._chunks[0] = chunk[written:]
        return True

    @property
    def empty(self) -> bool:
        return not self._chunks


def read_available(fd: int, reader: FrameReader, chunk_size: int = 64 * 1024) -> tuple[list[list[Any]], bool]:
    """Read what a non-blocking ``fd`` has now and decode whole frames.

    Returns the decoded messages and whether end of file was reached (the peer closed or died).
    ``chunk_size``: os.read allocates this much per call whatever arrived; at 1 MiB that is an mmap
    and two page faults, ~20 us for a 200-byte results frame against ~1.4 us at 64 KiB (issue #16).
    """
    messages: list[list[Any]] = []
    while True:
        try:
            data = os.read(fd, chunk_size)
        except BlockingIOError:
            return messages, False
        if not data:
            return messages, True
        messages.extend(reader.feed(data))
        if len(data) < chunk_size:
            return messages, False


def write_all_blocking(fd: int, frame: bytes) -> None:
    """Write a whole frame to a blocking descriptor (the worker side uses blocking pipes)."""
    view = memoryview(frame)
    while view:
        written = os.write(fd, view)
        view = view[written:]
