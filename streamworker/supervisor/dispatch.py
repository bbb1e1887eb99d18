"""Dispatch decisions: which buffered record goes to which worker, and what a completion means.

Pure logic, no I/O: the trigger runner feeds it fetched records, worker results and the clock, and
carries out what it returns (send frames, pause/resume partitions, commit positions).

Vocabulary
- A **lane** is a sequence of records that must run one after another, in offset order: a whole
  partition in ``pool`` and ``static`` mode, one key of a partition in ``key`` mode (records with a
  null key share one lane per partition). A lane is bound to one worker while any of its records
  is queued there, so its records queue behind each other on that worker and order holds while
  several records per worker are in flight (the pipelining window).
- A worker handles its queue in order and reports results in order. When a record fails, the
  worker *holds* its lane: later records of that lane it already has come back DEFERRED, unrun.
  The supervisor re-sends the failed record (flagged ``retry``, which lifts the hold) after its
  backoff, followed by the deferred ones.
- Records are wire events (lists, see ``records.EVENT_FIELDS``) from fetch to completion: no
  per-record objects besides the list that is sent anyway.
- With acks not explicit, fetched records arrive as ``Run`` s instead: consecutive records of one
  partition kept as columns, dispatched, sent and completed as one unit (the worker reports
  progress within a run). A lane's queue may hold both kinds. A record leaves its run as soon as it
  needs anything of its own (a failure, a retry, a crash, a cancel): it is turned into a wire record
  and takes the per-record path from there.
- Key mode runs: a run is split by target worker (``key_worker``: a mixed crc32) into one run per
  worker, queued on that worker's *carrier* lane of the partition (a lane of runs only, bound to the
  worker), and carries each record's key lane id in a column. A key with a lane of its own (records
  failed, deferred, waiting for a retry or returned by a crash) is *busy*: its records leave the
  carriers' undispatched runs when its lane is made and its new records bypass runs, so they queue
  behind the busy ones in its lane, in offset order. Runs already on the worker are ahead of any
  retry of that key there, and the worker defers that key's records in them (it holds the lane), so
  they come back to the lane too. Key lane ids of run records come from a per-partition key -> id
  map; a key whose lane is dropped gets a fresh id (a worker may still hold the old one).
"""

from __future__ import annotations

import operator
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import compress
from typing import Any

from streamworker.config.model import (
    AllocationMode,
    ExplicitAckMode,
    ExplicitAckScope,
    StaticMapping,
)
from streamworker.protocol import RESULT_RUN_DURATIONS, RESULT_RUN_EXCEPTIONS, Status
from streamworker.records import (
    F_ATTEMPT,
    F_KEY,
    F_LANE,
    F_OFFSET,
    F_PARTITION,
    F_RETRY,
    F_SEQ,
    F_SIZE,
    F_TOPIC,
    new_record,
    new_run,
    record_size,
)
from streamworker.supervisor.failure_policy import Action, Failure, FailurePolicy
from streamworker.supervisor.offsets import PartitionOffsets
from streamworker.supervisor.outputs import PendingOutputs
from streamworker.supervisor.window import WindowSizer

Record = list[Any]
_OK, _DEFERRED, _NO_ACK = int(Status.OK), int(Status.DEFERRED), int(Status.NO_ACK)
_ERROR, _PROGRESS = int(Status.ERROR), int(Status.PROGRESS)
TopicPartition = tuple[str, int]
# (seq, status, duration_s, error_type, error_message) as sent by a worker
Result = list[Any]


# Key mode runs: a partition's key -> lane id map is cleared past this many keys (when nothing of its
# runs is queued), so memory follows the keys of the backlog, not every key ever seen.
RUN_IDS_LIMIT = 100_000


@dataclass(frozen=True)
class DispatchSettings:
    mode: AllocationMode
    num_workers: int
    # The pipelining window: records queued per worker beyond the one it is running, at most. Within
    # that, about ``window_seconds`` of work at the handler's recent pace (``window.py``): deep for
    # quick handlers, a few records for slow ones.
    window_events: int = 4096
    window_bytes: int = 8 * 1024 * 1024
    window_seconds: float = 0.1
    # Most records one lane hands a worker per dispatch round, so one busy partition cannot fill
    # every window before the others get a turn.
    lane_batch: int = 64
    # The same for runs, in records: a run longer than this (or than the worker's free window) is
    # split at dispatch. A worker reports a long run's progress every 10 ms, which frees its window
    # as it goes.
    run_batch: int = 1024
    max_buffered_records: int = 30_000
    max_buffered_bytes: int = 64 * 1024 * 1024
    ack_mode: ExplicitAckMode = ExplicitAckMode.DISABLE
    ack_scope: ExplicitAckScope = ExplicitAckScope.CUMULATIVE
    static_mapping: StaticMapping = StaticMapping.ASSIGNMENT_INDEX
    # A record handled but left unacked this long is a failed attempt (None: no limit).
    ack_timeout: float | None = None


def _byte_size(keys: list[Any], values: list[Any]) -> int:
    """Key + value bytes of a run's records."""
    return _column_bytes(values) + _column_bytes(keys)


def _column_bytes(column: list[Any]) -> int:
    # sum(map(len)) stays in C and copies nothing: 1.4-2x faster than len(b"".join()) on a run of
    # 1,000 100-byte values (issue #16).
    try:
        return sum(map(len, column))
    except TypeError:  # a null key or value
        return sum(map(len, filter(None, column)))


class Run:
    """Consecutive fetched records of one partition, handled as one unit until one needs more.

    ``offsets``, ``keys``, ``values``, ``headers`` and ``timestamps`` (ms, -1 for none) are columns
    (index i is record i). ``done`` counts the leading records the worker reported finished while
    the run is in flight.
    """

    __slots__ = (
        "done",
        "headers",
        "keys",
        "lane",
        "lanes",
        "offsets",
        "partition",
        "retry",
        "seq",
        "size",
        "timestamps",
        "topic",
        "values",
    )

    def __init__(
        self,
        topic: str,
        partition: int,
        offsets: list[int],
        keys: list[Any],
        values: list[Any],
        headers: list[Any],
        timestamps: list[int],
        size: int | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offsets = offsets
        self.keys = keys
        self.values = values
        self.headers = headers
        self.timestamps = timestamps
        # Key + value bytes of all records, for buffer and window accounting (as ``F_SIZE`` of a record).
        self.size = _byte_size(keys, values) if size is None else size
        self.lane = 0
        # Key mode: each record's key lane id (the column a worker holds lanes by); None otherwise.
        self.lanes: list[int] | None = None
        self.seq = 0
        self.retry = False
        self.done = 0

    def __len__(self) -> int:
        return len(self.offsets)

    def wire(self) -> list[Any]:
        """The run as sent to a worker (``records.RUN_FIELDS``, plus ``lanes`` in key mode)."""
        wire = new_run(
            self.seq,
            self.lane,
            self.topic,
            self.partition,
            self.retry,
            self.offsets,
            self.keys,
            self.values,
            self.headers,
            self.timestamps,
        )
        if self.lanes is not None:
            wire.append(self.lanes)
        return wire

    def gather(self, indices: list[int], size: int | None = None) -> Run:
        """A new run of the records at ``indices`` (increasing; same partition, lane ids kept).
        ``size``: their byte size, when the caller knows it."""
        # One itemgetter for all columns: ~2x faster than a compress() per column with a mask
        # (issue #16). With one index it returns the item, not a tuple.
        if len(indices) == 1:
            only = indices[0]

            def pick(column: list[Any]) -> list[Any]:
                return [column[only]]
        else:
            getter = operator.itemgetter(*indices)

            def pick(column: list[Any]) -> list[Any]:
                return list(getter(column))

        keys, values = pick(self.keys), pick(self.values)
        run = Run(
            self.topic,
            self.partition,
            pick(self.offsets),
            keys,
            values,
            pick(self.headers),
            pick(self.timestamps),
            _byte_size(keys, values) if size is None else size,
        )
        if self.lanes is not None:
            run.lanes = pick(self.lanes)
        return run

    def remove(self, mask: list[bool]) -> None:
        """Drop the records where ``mask`` is true (their bytes leave ``size``)."""
        keep = [not taken for taken in mask]
        removed = _byte_size(list(compress(self.keys, mask)), list(compress(self.values, mask)))
        self.offsets = list(compress(self.offsets, keep))
        self.keys = list(compress(self.keys, keep))
        self.values = list(compress(self.values, keep))
        self.headers = list(compress(self.headers, keep))
        self.timestamps = list(compress(self.timestamps, keep))
        if self.lanes is not None:
            self.lanes = list(compress(self.lanes, keep))
        self.size -= removed

    def split(self, count: int) -> Run:
        """Keep the first ``count`` records; return the rest as a new run of the same lane."""
        # Counted exactly (cheap next to the copy into a frame), so the bytes a window
        # holds are the bytes of its frames; sizes stay conserved for the buffer accounting.
        head_size = _byte_size(self.keys[:count], self.values[:count])
        rest = Run(
            self.topic,
            self.partition,
            self.offsets[count:],
            self.keys[count:],
            self.values[count:],
            self.headers[count:],
            self.timestamps[count:],
            self.size - head_size,
        )
        rest.lane = self.lane
        if self.lanes is not None:
            rest.lanes = self.lanes[count:]
            del self.lanes[count:]
        del self.offsets[count:], self.keys[count:], self.values[count:]
        del self.headers[count:], self.timestamps[count:]
        self.size = head_size
        return rest

    def records(self, start: int = 0, stop: int | None = None) -> list[Record]:
        """Records ``start``..``stop`` as wire records (the per-record path), carrying this run's seq
        and each record's lane (its key lane in key mode)."""
        topic, partition, lane, seq = self.topic, self.partition, self.lane, self.seq
        keys, values, lanes = self.keys, self.values, self.lanes

        return [
            new_record(
                topic,
                partition,
                self.offsets[i],
                keys[i],
                values[i],
                self.headers[i],
                self.timestamps[i] if self.timestamps[i] >= 0 else None,
                seq,
                lane if lanes is None else lanes[i],
            )
            for i in range(start, len(self.offsets) if stop is None else stop)
        ]


# What a lane queues and a worker is sent: a Record or a Run, told apart by ``type(item) is Run``.
# (Any rather than a Union: the hot paths narrow by that check, which mypy does not follow for lists.)
Item = Any


def key_worker(key: bytes | None, workers: int) -> int:
    """The worker of ``key`` in key mode: the same in every process and run (so not ``hash()``).

    Not ``crc32(key) mod workers``: librdkafka's default partitioner (confluent-kafka in Python, Go,
    .NET) puts a key in partition ``crc32(key) mod partitions``, so whenever the worker and partition
    counts share a factor, a partition's keys would all reach the same few workers (a replica owning
    partition 3 of 8 with 4 workers: all on worker 3, three idle). The high bits of a multiplicative
    (Fibonacci) mix of the crc depend on all of its bits, so they are independent of that residue.
    """
    mixed = (zlib.crc32(key or b"") * 0x9E3779B1) & 0xFFFFFFFF
    return (mixed >> 16) % workers


# A key's entry in ``PartitionState.run_ids``: (lane id, target worker).
_lane_of_entry = operator.itemgetter(0)


def _lane_id(item: Item) -> int:
    lane: int = item.lane if type(item) is Run else item[F_LANE]
    return lane


def _offset_of(record: Record) -> int:
    offset: int = record[F_OFFSET]
    return offset


def _events(item: Item) -> int:
    return len(item) if type(item) is Run else 1


def _return_in_order(lane: Lane, record: Record) -> None:
    """Put a failed record back among the lane's returned ones by offset: usually first, but behind
    a lower offset that failed earlier (a lane's records are of one partition)."""
    returned = lane.returned
    offset = record[F_OFFSET]
    index = 0
    while index < len(returned) and returned[index][F_OFFSET] < offset:
        index += 1
    returned.insert(index, record)


class Lane:
    __slots__ = (
        "carrier",
        "fixed_worker",
        "hold",
        "id",
        "inflight",
        "key",
        "not_before",
        "parked",
        "partition",
        "pending",
        "returned",
        "worker",
    )

    def __init__(
        self, lane_id: int, partition: PartitionState, fixed_worker: int | None, key: bytes | None = None
    ) -> None:
        self.id = lane_id
        self.key = key
        self.partition = partition
        self.pending: deque[Item] = deque()
        self.fixed_worker = fixed_worker
        self.worker: int | None = fixed_worker
        self.inflight = 0
        # Records the worker gave back (the failed one first, then the deferred ones), re-queued in
        # front of ``pending`` once nothing of this lane is in flight any more.
        self.returned: list[Record] = []
        self.not_before = 0.0
        # The bound worker holds this lane after a failure until it is sent a retry-flagged event.
        self.hold = False
        # A record whose retries are exhausted, waiting for the dead-letter topic's delivery report;
        # the lane waits behind it so its order holds.
        self.parked: Record | None = None
        # Key mode: a lane of runs bound to one worker (see the module docstring), never dropped.
        self.carrier = False

    @property
    def idle(self) -> bool:
        # ``hold`` does not count: a dropped lane's id is never reused, and a new lane for the same
        # key gets a fresh id that no worker holds.
        return not (self.pending or self.inflight or self.returned or self.parked is not None)


class PartitionState:
    __slots__ = (
        "ack_deadlines",
        "awaiting_ack",
        "buffered",
        "buffered_bytes",
        "carriers",
        "default_lane",
        "early_acks",
        "handled_by",
        "head",
        "head_since",
        "key_lanes",
        "lanes",
        "offsets",
        "outputs",
        "paused",
        "revoking",
        "rewind_to",
        "run_ids",
        "stopped",
        "tp",
    )

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.offsets = PartitionOffsets()
        self.lanes: dict[int, Lane] = {}  # every lane of this partition, by id
        self.default_lane: Lane | None = None  # the partition's one lane in pool and static mode
        self.buffered = 0  # fetched and not done: pending, in flight or waiting for a retry
        self.buffered_bytes = 0
        self.paused = False
        self.revoking = False
        # Workers that were sent records of this partition: their drain callbacks run on revoke.
        self.handled_by: set[int] = set()
        # key mode: key -> its lane (lanes are made on demand and dropped when idle).
        self.key_lanes: dict[bytes | None, Lane] = {}
        # key mode runs: the carrier lane of each worker, and key -> (lane id, worker) of keys whose
        # records ride in runs (cleared when it grows large and no run of the partition is queued).
        self.carriers: list[Lane] = []
        self.run_ids: dict[bytes | None, tuple[int, int]] = {}
        # onError: stop hit this partition: nothing more is dispatched until restart.
        self.stopped = False
        # Inputs with outputs not confirmed yet (offset -> them): not done until they are.
        self.outputs: dict[int, PendingOutputs] = {}
        # First offset dropped because the buffer was full: fetch again from here on resume.
        self.rewind_to: int | None = None
        # Explicit acks: handled records waiting for their ack, and acks that came first.
        self.awaiting_ack: dict[int, Record] = {}
        self.early_acks: set[int] = set()
        # ackTimeout: (deadline, offset, attempt) of records awaiting their ack, in deadline order.
        self.ack_deadlines: deque[tuple[float, int, int]] = deque()
        # The oldest unfinished offset when last looked at, and since when it has been (see
        # Dispatcher.oldest_unfinished_ages).
        self.head: int | None = None
        self.head_since = 0.0

    @property
    def inflight(self) -> int:
        return sum(lane.inflight for lane in self.lanes.values())


@dataclass
class WorkerQueue:
    """The dispatcher's view of one worker: ready or not, and what is queued on it, in order."""

    ready: bool = False
    outstanding: deque[int] = field(default_factory=deque)  # seqs of the items queued, in order
    outstanding_bytes: int = 0
    outstanding_events: int = 0  # records queued (a run counts its unfinished records)
    # Running a suspect record alone: nothing else may be queued behind it.
    exclusive: bool = False
    # A lane whose suspect head waits for this worker to run empty: nothing else is queued on it
    # meanwhile, or a busy trigger would refill it every pass and the suspect would never run.
    reserved_by: int | None = None

    def free(self, settings: DispatchSettings, window: int) -> int:
        if not self.ready or self.exclusive or self.outstanding_bytes >= settings.window_bytes:
            return 0
        return window - self.outstanding_events


class Dispatcher:
    def __init__(self, settings: DispatchSettings, policy: FailurePolicy) -> None:
        self.settings = settings
        self.policy = policy
        self._key_mode = settings.mode is AllocationMode.KEY
        # Records whose retries are exhausted and that must go to the dead-letter topic now.
        self._to_dead_letter: list[tuple[Record, str, str]] = []
        self._partitions: dict[TopicPartition, PartitionState] = {}
        self._lanes: dict[int, Lane] = {}
        self._runnable: dict[int, Lane] = {}  # lanes with pending records, in arrival order
        self._inflight: dict[int, Item] = {}  # seq -> record or run queued on a worker
        self._workers = [WorkerQueue() for _ in range(settings.num_workers)]
        self.window = WindowSizer(settings.window_events, settings.window_seconds)
        # (topic, partition, offset) of records that were queued on a worker that died while nobody
        # could tell which event it was running; each runs alone until it completes.
        self._suspects: set[tuple[str, int, int]] = set()
        # seq -> partition of items still queued on a worker when their partition was forgotten (a
        # revoke cancelled them, or the partition was lost). If the partition comes back, nothing of
        # it is dispatched until these are done or their worker is gone: never two of its records at
        # once, never out of order.
        self._orphans: dict[int, TopicPartition] = {}
        # (topic, result) -> count since start: success, error, retried, dead_lettered, skipped.
        self.outcomes: dict[tuple[str, str], int] = {}
        self._next_seq = 0
        self._next_lane = 0
        # Failed attempts found by output delivery reports, for the runner to take and carry out.
        self._output_failures: list[Failure] = []
        # The clock as of the last completion or delivery report, for retries decided where no
        # ``now`` is passed (an explicit ack finishing a record whose output failed earlier).
        self._now = 0.0

    # -- assignment -------------------------------------------------------------------------
    def assign(self, tps: Iterable[TopicPartition]) -> None:
        tps = list(tps)
        static_slot = self._static_slots(tps) if self.settings.mode is AllocationMode.STATIC else {}
        for tp in tps:
            if tp in self._partitions:
                continue
            state = PartitionState(tp)
            fixed = static_slot.get(tp)
            if not self._key_mode:
                lane = Lane(self._next_lane, state, fixed)
                self._next_lane += 1
                state.lanes[lane.id] = lane
                state.default_lane = lane
                self._lanes[lane.id] = lane
            else:
                for wid in range(self.settings.num_workers):
                    lane = Lane(self._next_lane, state, wid)
                    lane.carrier = True
                    self._next_lane += 1
                    state.lanes[lane.id] = lane
                    state.carriers.append(lane)
                    self._lanes[lane.id] = lane
            self._partitions[tp] = state

    def _static_slots(self, new: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The worker of each newly assigned partition in static mode.

        assignmentIndex (Nuclio's StaticWorkerAllocator): the partition's index among the partitions
        of its topic this member owns, in partition order, mod numWorkers. A partition kept through a
        cooperative rebalance keeps its worker (its records may be in flight there); under eager
        strategies every assignment is complete, so the mapping is exactly Nuclio's.
        """
        workers = self.settings.num_workers
        if self.settings.static_mapping is StaticMapping.PARTITION_ID:
            return {tp: tp[1] % workers for tp in new}
        owned: dict[str, set[int]] = {}
        for topic, partition in [*self._partitions, *new]:
            owned.setdefault(topic, set()).add(partition)
        index = {
            (topic, partition): position
            for topic, partitions in owned.items()
            for position, partition in enumerate(sorted(partitions))
        }
        return {tp: index[tp] % workers for tp in new}

    def begin_revoke(self, tps: Iterable[TopicPartition]) -> int:
        """Stop dispatching ``tps`` and drop their undispatched records. Returns how many were dropped.

        What is already queued on workers keeps running; the runner waits for it (bounded), commits,
        then calls ``forget``.
        """
        dropped = 0
        for tp in tps:
            state = self._partitions.get(tp)
            if state is None:
                continue
            state.revoking = True
            for lane in state.lanes.values():
                dropped += sum(_events(item) for item in lane.pending) + len(lane.returned)
                lane.pending.clear()
                lane.returned.clear()
                self._runnable.pop(lane.id, None)
        return dropped

    def lanes_of(self, tps: Iterable[TopicPartition]) -> list[int]:
        """Lanes of ``tps`` (key mode: idle carriers left out, they have nothing to cancel)."""
        return [
            lane.id
            for tp in tps
            if tp in self._partitions
            for lane in self._partitions[tp].lanes.values()
            if not (lane.carrier and lane.idle)
        ]

    def inflight_in(self, tps: Iterable[TopicPartition]) -> int:
        return sum(self._partitions[tp].inflight for tp in tps if tp in self._partitions)

    def workers_busy_with(self, tps: Iterable[TopicPartition]) -> set[int]:
        lanes = {
            lane.id for tp in tps if tp in self._partitions for lane in self._partitions[tp].lanes.values()
        }
        return {
            wid
            for wid, slot in enumerate(self._workers)
            if any(
                _lane_id(item) in lanes
                for item in map(self._inflight.get, slot.outstanding)
                if item is not None
            )
        }

    def workers_running(self, tps: Iterable[TopicPartition]) -> set[int]:
        """Workers whose running item (the head of their queue) is a record of ``tps``: the only ones
        a revoke deadline may kill. Queued items behind it were cancelled and come back DEFERRED."""
        lanes = {
            lane.id for tp in tps if tp in self._partitions for lane in self._partitions[tp].lanes.values()
        }
        running = set()
        for wid, slot in enumerate(self._workers):
            if slot.outstanding:
                item = self._inflight.get(slot.outstanding[0])
                if item is not None and _lane_id(item) in lanes:
                    running.add(wid)
        return running

    def handled_by(self, tps: Iterable[TopicPartition]) -> set[int]:
        """Workers that were given records of any of ``tps`` since they were assigned."""
        return {wid for tp in tps if tp in self._partitions for wid in self._partitions[tp].handled_by}

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Drop all state of partitions this member no longer owns. Late results are ignored."""
        for tp in tps:
            state = self._partitions.pop(tp, None)
            if state is None:
                continue
            self._suspects = {s for s in self._suspects if (s[0], s[1]) != tp}
            lane_ids = set(state.lanes)
            self._to_dead_letter = [d for d in self._to_dead_letter if d[0][F_LANE] not in lane_ids]
            for lane_id in lane_ids:
                self._lanes.pop(lane_id, None)
                self._runnable.pop(lane_id, None)
            gone = {seq for seq, item in self._inflight.items() if _lane_id(item) in lane_ids}
            for seq in gone:
                self._orphans[seq] = tp
            for slot in self._workers:
                for seq in slot.outstanding:
                    if seq in gone:
                        item = self._inflight[seq]
                        slot.outstanding_events -= _events(item) - (item.done if type(item) is Run else 0)
                        slot.outstanding_bytes -= item.size if type(item) is Run else item[F_SIZE]
            for seq in gone:
                del self._inflight[seq]

    @property
    def partitions(self) -> list[TopicPartition]:
        return list(self._partitions)

    def _key_lane(self, state: PartitionState, key: bytes | None, lane_id: int | None = None) -> Lane:
        """The key's lane, made if needed (with ``lane_id``: the id its records carried in runs, which
        the worker may hold). A new lane takes the key's records out of undispatched runs."""
        lane = state.key_lanes.get(key)
        if lane is None:
            worker = key_worker(key, self.settings.num_workers)
            if lane_id is None:
                lane_id = self._next_lane
                self._next_lane += 1
            lane = Lane(lane_id, state, worker, key)
            state.key_lanes[key] = lane
            state.lanes[lane.id] = lane
            self._lanes[lane.id] = lane
            if state.carriers:
                self._take_from_carrier(state.carriers[worker], lane)
        return lane

    def _take_from_carrier(self, carrier: Lane, lane: Lane) -> None:
        """Move ``lane``'s key's records out of the carrier's undispatched runs into its queue (they
        are later than anything of the key in flight, and in offset order)."""
        if not carrier.pending:
            return
        key = lane.key
        kept: deque[Item] = deque()
        for item in carrier.pending:
            if type(item) is Run and key in item.keys:
                mask = [k == key for k in item.keys]
                for record in item.records():
                    if record[F_KEY] == key:
                        record[F_LANE] = lane.id
                        lane.pending.append(record)
                item.remove(mask)
                if not len(item):
                    continue
            kept.append(item)
        carrier.pending = kept
        if not kept:
            self._runnable.pop(carrier.id, None)
        if lane.pending:
            self._runnable.setdefault(lane.id, lane)

    def _run_record_lane(self, state: PartitionState, record: Record) -> Lane:
        """The key lane a record leaving a key run goes to (made with the id it carried if needed)."""
        lane = self._lanes.get(record[F_LANE])
        if lane is None or lane.carrier:
            lane = self._key_lane(state, record[F_KEY], record[F_LANE])
        record[F_LANE] = lane.id
        return lane

    def _drop_if_idle(self, lane: Lane) -> None:
        """Key lanes come and go with their keys, so memory follows the keys in flight, not all keys."""
        if self._key_mode and lane.idle and not lane.carrier:
            state = lane.partition
            if state.key_lanes.get(lane.key) is lane:
                del state.key_lanes[lane.key]
                # The next run record of this key gets a fresh lane id: a worker may still hold this
                # one (a skipped record's lane is held until a retry-flagged event that never comes).
                state.run_ids.pop(lane.key, None)
            state.lanes.pop(lane.id, None)
            self._lanes.pop(lane.id, None)
            self._runnable.pop(lane.id, None)

    # -- intake -----------------------------------------------------------------------------
    def add(self, records: Iterable[Item]) -> int:
        """Buffer fetched records (or runs of them). Returns how many records were taken.

        Records of partitions not (or no longer) owned are dropped. So are records of a partition
        whose buffer is full: its first dropped offset is remembered (``rewind_to``), the runner
        pauses it, and on resume seeks back there, so memory stays bounded by maxBufferedRecords /
        maxBufferedBytes and not by what one fetch happened to bring.
        """
        partitions = self._partitions
        runnable = self._runnable
        max_records = self.settings.max_buffered_records
        max_bytes = self.settings.max_buffered_bytes
        taken = 0
        for record in records:
            if type(record) is Run:
                taken += self._add_run(record)
                continue
            state = partitions.get((record[F_TOPIC], record[F_PARTITION]))
            if state is None or state.revoking or state.rewind_to is not None:
                continue
            # Records past the commit position, done or not: done ones behind an unfinished record
            # are tracked until it finishes, so they count against the limit too.
            if state.offsets.outstanding >= max_records or state.buffered_bytes >= max_bytes:
                state.rewind_to = record[F_OFFSET]
                continue
            lane = state.default_lane or self._key_lane(state, record[F_KEY])
            record[F_LANE] = lane.id
            state.offsets.track(record[F_OFFSET])
            state.buffered += 1
            state.buffered_bytes += record[F_SIZE]
            lane.pending.append(record)
            if lane.id not in runnable:
                runnable[lane.id] = lane
            taken += 1
        return taken

    def _add_run(self, run: Run) -> int:
        state = self._partitions.get((run.topic, run.partition))
        if state is None or state.revoking or state.rewind_to is not None:
            return 0
        settings = self.settings
        room = settings.max_buffered_records - state.offsets.outstanding
        if room > 0 and state.buffered_bytes + run.size > settings.max_buffered_bytes:
            # Count records up to the byte limit (only here, near the limit, per record).
            used = state.buffered_bytes
            fits = 0
            for key, value in zip(run.keys, run.values, strict=True):
                if used >= settings.max_buffered_bytes or fits >= room:
                    break
                used += record_size(key, value)
                fits += 1
            room = fits
        if room <= 0:
            state.rewind_to = run.offsets[0]
            return 0
        if room < len(run):
            state.rewind_to = run.split(room).offsets[0]
        state.offsets.track_many(run.offsets)
        count = len(run)
        state.buffered += count
        state.buffered_bytes += run.size
        lane = state.default_lane
        if lane is None:
            self._add_key_run(state, run)
            return count
        run.lane = lane.id
        lane.pending.append(run)
        if lane.id not in self._runnable:
            self._runnable[lane.id] = lane
        return count

    def _add_key_run(self, state: PartitionState, run: Run) -> None:
        """Key mode: the run's records of busy keys go to their lanes; the rest, split by target
        worker, to the carriers, with each record's key lane id (see the module docstring)."""
        busy = state.key_lanes
        if busy and not busy.keys().isdisjoint(run.keys):
            mask = [key in busy for key in run.keys]
            for record in run.records():
                lane = busy.get(record[F_KEY])
                if lane is not None:
                    record[F_LANE] = lane.id
                    lane.pending.append(record)
                    self._runnable.setdefault(lane.id, lane)
            run.remove(mask)
            if not len(run):
                return
        ids = state.run_ids
        if len(ids) > RUN_IDS_LIMIT and not any(c.pending or c.inflight for c in state.carriers):
            ids.clear()  # no run of this partition is queued anywhere: no id in use
        entries: list[Any] = list(map(ids.get, run.keys))
        if not all(entries):  # a key seen for the first time (an entry is a non-empty tuple)
            workers = self.settings.num_workers
            for index, key in enumerate(run.keys):
                if entries[index] is None:
                    entry = ids.get(key)
                    if entry is None:
                        entry = ids[key] = (self._next_lane, key_worker(key, workers))
                        self._next_lane += 1
                    entries[index] = entry
        # An itemgetter map, not a comprehension: ~20 % less per record here (issue #16).
        run.lanes = list(map(_lane_of_entry, entries))
        carriers = state.carriers
        if len(carriers) == 1:
            self._queue_run(carriers[0], run)
            return
        indices: list[list[int]] = [[] for _ in carriers]
        for index, entry in enumerate(entries):
            indices[entry[1]].append(index)
        parts = [(carrier, mine) for carrier, mine in zip(carriers, indices, strict=True) if mine]
        if len(parts) == 1:
            self._queue_run(parts[0][0], run)
            return
        left = run.size
        for carrier, mine in parts[:-1]:
            part = run.gather(mine)
            left -= part.size
            self._queue_run(carrier, part)
        carrier, mine = parts[-1]
        self._queue_run(carrier, run.gather(mine, left))  # bytes conserved, not counted again

    def _queue_run(self, lane: Lane, run: Run) -> None:
        run.lane = lane.id
        lane.pending.append(run)
        if lane.id not in self._runnable:
            self._runnable[lane.id] = lane

    # -- dispatch ---------------------------------------------------------------------------
    def take_dispatches(self, now: float) -> dict[int, list[Record]]:
        """Move pending records into worker windows. Returns worker id -> events to send."""
        out: dict[int, list[Record]] = {}
        if not self._runnable:
            return out
        settings = self.settings
        workers = self._workers
        window = self.window.window
        free = [slot.free(settings, window) for slot in workers]
        if self._suspects:
            self._check_reservations(free)
        elif any(slot.reserved_by is not None for slot in workers):
            for slot in workers:
                slot.reserved_by = None
        if not any(f > 0 for f in free) and not any(
            slot.reserved_by is not None and slot.ready and not slot.outstanding for slot in workers
        ):
            return out
        emptied: list[int] = []
        waiting = set(self._orphans.values()) if self._orphans else ()
        # Workers whose running call is of a forgotten partition: it may run for long, and its
        # window looks free. A lane free to choose goes to another worker when one has room.
        busy_old: set[int] = set()
        if self._orphans:
            busy_old = {
                w
                for w, slot in enumerate(workers)
                if slot.outstanding and slot.outstanding[0] in self._orphans
            }
        for lane in self._runnable.values():
            if (
                lane.returned
                or lane.not_before > now
                or (lane.hold and lane.inflight)
                or lane.parked is not None
                or lane.partition.stopped
                or (waiting and lane.partition.tp in waiting)
            ):
                continue
            pending = lane.pending
            if self._suspects and self._is_suspect(pending[0]):
                wid_or_none = self._suspect_worker(lane)
                if wid_or_none is None:
                    continue
                wid = wid_or_none
                slot = workers[wid]
                if slot.outstanding or not slot.ready:
                    # Wait for this worker to run empty, and keep everything else off it meanwhile.
                    slot.reserved_by = lane.id
                    free[wid] = 0
                    continue
                slot.reserved_by = None
                slot.exclusive = True
                free[wid] = 0
                batch = out.setdefault(wid, [])
                count = 1
            else:
                if lane.worker is not None:
                    wid = lane.worker
                else:
                    wid = max(range(len(free)), key=free.__getitem__)
                    if wid in busy_old:
                        others = [w for w in range(len(free)) if w not in busy_old and free[w] > 0]
                        if others:
                            wid = max(others, key=free.__getitem__)
                if free[wid] <= 0:
                    continue
                slot = workers[wid]
                batch = out.setdefault(wid, [])
                if type(pending[0]) is Run:
                    free[wid] -= self._take_runs(lane, wid, slot, free[wid], batch)
                    if not pending:
                        emptied.append(lane.id)
                    continue
                count = min(free[wid], len(lane.pending), settings.lane_batch)
                if not self._key_mode:
                    # Records re-queued in front of runs (retries): only those go one by one.
                    for index in range(1, count):
                        if type(pending[index]) is Run:
                            count = index
                            break
                if self._suspects:
                    count = self._suspect_limit(lane, count)
                count = self._fit_bytes(pending, slot, count)
                if count == 0:
                    free[wid] = 0  # its window is full of bytes
                    continue
            for _ in range(count):
                record = pending.popleft()
                seq = self._next_seq
                self._next_seq = seq + 1
                record[F_SEQ] = seq
                record[F_RETRY] = lane.hold
                lane.hold = False
                self._inflight[seq] = record
                slot.outstanding.append(seq)
                slot.outstanding_bytes += record[F_SIZE]
                batch.append(record)
            slot.outstanding_events += count
            free[wid] -= count
            lane.partition.handled_by.add(wid)
            lane.inflight += count
            lane.worker = wid
            if not pending:
                emptied.append(lane.id)
        for lane_id in emptied:
            del self._runnable[lane_id]
        return {wid: batch for wid, batch in out.items() if batch}

    def _take_runs(self, lane: Lane, wid: int, slot: WorkerQueue, free: int, batch: list[Record]) -> int:
        """Queue the lane's leading runs on worker ``wid`` (split to fit). Returns how many records."""
        pending = lane.pending
        budget = min(free, self.settings.run_batch)
        window_bytes = self.settings.window_bytes
        sent = 0
        while sent < budget and pending and type(pending[0]) is Run:
            run: Run = pending[0]
            take = min(len(run), budget - sent)
            room = window_bytes - slot.outstanding_bytes
            if run.size > room:
                # Count records up to the byte room (only here, near the limit, per record); a
                # record larger than the whole window goes alone on an empty worker.
                used = fits = 0
                for key, value in zip(run.keys, run.values, strict=True):
                    used += record_size(key, value)
                    if used > room or fits >= take:
                        break
                    fits += 1
                if fits == 0 and not slot.outstanding:
                    fits = 1
                if fits == 0:
                    break
                take = fits
            if take < len(run):
                pending[0] = run.split(take)
            else:
                pending.popleft()
            seq = self._next_seq
            self._next_seq = seq + 1
            run.seq = seq
            run.retry = lane.hold
            lane.hold = False
            self._inflight[seq] = run
            slot.outstanding.append(seq)
            slot.outstanding_bytes += run.size
            slot.outstanding_events += len(run)
            lane.inflight += 1
            sent += len(run)
            batch.append(run.wire())
        if sent:
            lane.partition.handled_by.add(wid)
            lane.worker = wid
        return sent

    def _is_suspect(self, item: Item) -> bool:
        return type(item) is not Run and (item[F_TOPIC], item[F_PARTITION], item[F_OFFSET]) in self._suspects

    def _suspect_limit(self, lane: Lane, count: int) -> int:
        """How many of the lane's next records (its head is no suspect) may go before a suspect."""
        pending = lane.pending
        for index in range(1, count):
            if self._is_suspect(pending[index]):
                return index
        return count

    def _suspect_worker(self, lane: Lane) -> int | None:
        """The worker a lane's suspect head runs on: the one it reserved, its own, or the ready one
        with the least queued (None: no worker is ready and free of other reservations)."""
        workers = self._workers
        for wid, slot in enumerate(workers):
            if slot.reserved_by == lane.id:
                return wid
        if lane.worker is not None:
            return lane.worker if workers[lane.worker].reserved_by is None else None
        candidates = [w for w, slot in enumerate(workers) if slot.ready and slot.reserved_by is None]
        if not candidates:
            return None
        return min(candidates, key=lambda w: workers[w].outstanding_events)

    def _check_reservations(self, free: list[int]) -> None:
        """Drop reservations whose lane no longer waits with a suspect head; reserved workers take
        nothing else (``free`` 0)."""
        for wid, slot in enumerate(self._workers):
            lane_id = slot.reserved_by
            if lane_id is None:
                continue
            lane = self._lanes.get(lane_id)
            if lane is None or not lane.pending or not self._is_suspect(lane.pending[0]):
                slot.reserved_by = None
            else:
                free[wid] = 0

    def _fit_bytes(self, pending: deque[Item], slot: WorkerQueue, count: int) -> int:
        """How many of the next ``count`` records fit in the worker's byte window (a record larger
        than the whole window goes alone, on an empty worker), so no frame outgrows the window."""
        room = self.settings.window_bytes - slot.outstanding_bytes
        for index in range(count):
            size = pending[index][F_SIZE]
            if size > room:
                return 1 if index == 0 and not slot.outstanding else index
            room -= size
        return count

    # -- completions ------------------------------------------------------------------------
    def complete(self, wid: int, results: Iterable[Result], now: float) -> list[Failure]:
        """Apply a worker's results (in the order it ran them). Returns the failed attempts."""
        if type(results) is not list:
            results = list(results)
        self._observe_durations(results)
        slot = self._workers[wid]
        failures: list[Failure] = []
        touched: list[Lane] = []
        self._now = now
        ack_mode = self.settings.ack_mode
        explicit_only = ack_mode is ExplicitAckMode.EXPLICIT_ONLY
        outstanding = slot.outstanding
        inflight = self._inflight
        lanes = self._lanes
        suspects = self._suspects
        done_by_topic: dict[str, int] = {}
        for result in results:
            seq = result[0]
            if len(result) > RESULT_RUN_DURATIONS:
                self._complete_run(slot, result, now, failures, done_by_topic, touched)
                continue
            # Results come in dispatch order, so the head of ``outstanding`` is this result's seq.
            if outstanding and outstanding[0] == seq:
                outstanding.popleft()
            else:
                self._drop_outstanding(slot, seq)
            record = inflight.pop(seq, None)
            if record is None:
                if self._orphans:
                    self._orphans.pop(seq, None)
                continue  # its partition was revoked or lost meanwhile
            size = record[F_SIZE]
            slot.outstanding_bytes -= size
            slot.outstanding_events -= 1
            lane = lanes[record[F_LANE]]
            lane.inflight -= 1
            status = result[1]
            if status == _OK and not explicit_only and not lane.partition.outputs:
                # The hot path, inlined: _finish without its per-record outcome count.
                state = lane.partition
                if suspects:
                    suspects.discard((record[F_TOPIC], record[F_PARTITION], record[F_OFFSET]))
                state.offsets.done(record[F_OFFSET])
                state.buffered -= 1
                state.buffered_bytes -= size
                topic = record[F_TOPIC]
                done_by_topic[topic] = done_by_topic.get(topic, 0) + 1
            elif status == _OK and not explicit_only:
                self._finish(lane.partition, record)  # waits for its outputs, if it has any
            elif status == _OK:
                self._await_ack(lane.partition, record, now)
            elif status == _DEFERRED:
                lane.returned.append(record)
            elif status == _NO_ACK:
                if ack_mode is ExplicitAckMode.DISABLE:
                    self._finish(lane.partition, record)  # no-ack responses mean nothing then
                else:
                    self._await_ack(lane.partition, record, now)
            else:
                failures.append(self._fail(lane, record, str(result[3]), str(result[4]), now))
            if lane.inflight == 0:
                touched.append(lane)
        for topic, count in done_by_topic.items():
            key = (topic, "success")
            self.outcomes[key] = self.outcomes.get(key, 0) + count
        for lane in touched:
            if lane.inflight == 0:
                self._settle(lane)
        if not outstanding:
            slot.outstanding_bytes = 0
            slot.outstanding_events = 0
            slot.exclusive = False
        return failures

    def _observe_durations(self, results: list[Result]) -> None:
        """Feed the handler time of these results to the window sizer."""
        count = 0
        seconds = 0.0
        for result in results:
            if len(result) > RESULT_RUN_DURATIONS:
                ran, total = result[RESULT_RUN_DURATIONS][0], result[RESULT_RUN_DURATIONS][1]
                count += ran
                seconds += total
                if result[1] == _ERROR:  # the record that failed ran too
                    count += 1
                    seconds += result[2]
            elif result[1] != _DEFERRED:
                count += 1
                seconds += result[2]
        self.window.observe(count, seconds)

    def _complete_run(
        self,
        slot: WorkerQueue,
        result: Result,
        now: float,
        failures: list[Failure],
        done_by_topic: dict[str, int],
        touched: list[Lane],
    ) -> None:
        """Apply a run's result (see ``protocol``): finished records, then, if the run ended, its end."""
        seq, status = result[0], result[1]
        run = self._inflight.get(seq)
        if type(run) is not Run:
            if status != _PROGRESS:
                self._drop_outstanding(slot, seq)
                self._orphans.pop(seq, None)
            return  # its partition was revoked or lost meanwhile
        lane = self._lanes[run.lane]
        state = lane.partition
        count = result[RESULT_RUN_DURATIONS][0]
        exceptions = result[RESULT_RUN_EXCEPTIONS] if len(result) > RESULT_RUN_EXCEPTIONS else None
        if exceptions:
            count += len(exceptions)
        if count:
            start = run.done
            run.done = start + count
            if exceptions:
                finished, failed, lanes = self._key_run_exceptions(
                    slot, state, run, start, count, exceptions, now
                )
                failures.extend(failed)
                touched.extend(lanes)
            elif state.outputs:
                finished = self._run_done_with_outputs(state, run, start, count)
            else:
                finished = count
                state.offsets.done_many(run.offsets[start : start + count])
                state.buffered -= count
            slot.outstanding_events -= count
            done_by_topic[run.topic] = done_by_topic.get(run.topic, 0) + finished
        if status == _PROGRESS:
            return
        self._drop_outstanding(slot, seq)
        del self._inflight[seq]
        lane.inflight -= 1
        slot.outstanding_bytes -= run.size
        rest = run.records(run.done) if run.done < len(run) else []
        slot.outstanding_events -= len(rest)
        # The finished records' bytes leave the buffer now; the rest keep theirs, one by one.
        state.buffered_bytes -= run.size - sum([record[F_SIZE] for record in rest])
        if run.lanes is not None:
            # Key run: what did not run goes back to each record's key lane.
            for record in rest:
                key_lane = self._run_record_lane(state, record)
                _return_in_order(key_lane, record)
                touched.append(key_lane)
        elif status == _ERROR and rest:
            failed = rest.pop(0)
            lane.returned.extend(rest)
            failures.append(self._fail(lane, failed, str(result[3]), str(result[4]), now))
        else:
            # DEFERRED (held or cancelled), or OK with records missing (cannot happen): run them again.
            lane.returned.extend(rest)
        if lane.inflight == 0:
            touched.append(lane)

    def _key_run_exceptions(
        self,
        slot: WorkerQueue,
        state: PartitionState,
        run: Run,
        start: int,
        count: int,
        exceptions: list[list[Any]],
        now: float,
    ) -> tuple[int, list[Failure], list[Lane]]:
        """Records ``start``.. of a key run were handled, except ``exceptions`` (deferred or failed):
        those leave the run for their key lanes. Returns (records done, failures, lanes touched)."""
        odd = {exception[0]: exception for exception in exceptions}
        failures: list[Failure] = []
        touched: list[Lane] = []
        finished = 0
        for index in range(start, start + count):
            exception = odd.get(index)
            if exception is None:
                continue
            record = run.records(index, index + 1)[0]
            # Its bytes leave the run (and the window) now; it keeps them in the buffer on its own.
            run.size -= record[F_SIZE]
            slot.outstanding_bytes -= record[F_SIZE]
            lane = self._run_record_lane(state, record)
            if exception[1] == _DEFERRED:
                _return_in_order(lane, record)
            else:
                failures.append(self._fail(lane, record, str(exception[3]), str(exception[4]), now))
            touched.append(lane)
        ok = [index for index in range(start, start + count) if index not in odd]
        if state.outputs:
            for index in ok:
                record = run.records(index, index + 1)[0]
                if record[F_OFFSET] in state.outputs:
                    state.buffered_bytes += record[F_SIZE]
                    if self._held_for_outputs(state, record):
                        continue
                    state.buffered_bytes -= record[F_SIZE]
                state.offsets.done(record[F_OFFSET])
                state.buffered -= 1
                finished += 1
        else:
            offsets = run.offsets
            state.offsets.done_many([offsets[index] for index in ok])
            state.buffered -= len(ok)
            finished = len(ok)
        return finished, failures, touched

    @staticmethod
    def _drop_outstanding(slot: WorkerQueue, seq: int) -> None:
        """Remove ``seq`` from the worker's queue (usually its head; a cancel can reorder results)."""
        outstanding = slot.outstanding
        if outstanding and outstanding[0] == seq:
            outstanding.popleft()
        else:
            try:
                outstanding.remove(seq)
            except ValueError:
                pass

    def worker_lost(
        self, wid: int, reason: str, now: float, head_running: bool = True, blameless: bool = False
    ) -> list[Failure]:
        """A worker died or was killed; what was queued on it goes back to its lanes.

        ``head_running``: the caller knows the head of the worker's queue was the event running (the
        worker was killed over it, or no results came for long enough that finished events would
        have been reported). Then that record's attempt failed. Otherwise, with several events
        queued, nobody can tell which one was running: none is blamed, and each becomes a *suspect*
        that is re-run alone, so a record that kills its worker is found at its next crash.

        ``blameless``: the worker was killed because a revoke or shutdown deadline came, not because
        of its record: everything goes back with its attempt count, nobody is a suspect, and no
        failure action (skip, dead-letter, stop) applies. The next owner (or start) runs it again.
        """
        slot = self._workers[wid]
        if self._orphans:
            for seq in slot.outstanding:
                self._orphans.pop(seq, None)
        popped = (self._inflight.pop(seq, None) for seq in slot.outstanding)
        items = [item for item in popped if item is not None]
        touched: list[Lane] = []
        records: list[Record] = []
        for item in items:
            lane = self._lanes[_lane_id(item)]
            lane.inflight -= 1
            touched.append(lane)
            if type(item) is Run:
                # What the worker reported done stays done; the rest goes back one by one.
                rest = item.records(item.done)
                lane.partition.buffered_bytes -= item.size - sum([record[F_SIZE] for record in rest])
                if item.lanes is not None:
                    touched.extend(self._run_record_lane(lane.partition, record) for record in rest)
                records.extend(rest)
            else:
                records.append(item)
        # Lanes the worker holds after a reported failure: it defers their records without running
        # them, so none of those can be the one that killed it (blamed, one would jump the queue
        # ahead of the failed record of lower offset).
        held = {record[F_LANE] for record in records if self._lanes[record[F_LANE]].hold}
        # The head's partition may have been forgotten (revoked): then the one running is unknown too.
        head_known = (
            bool(records) and records[0][F_SEQ] == slot.outstanding[0] and records[0][F_LANE] not in held
        )
        certain = head_running or len(records) == 1
        failures: list[Failure] = []
        for index, record in enumerate(records):
            lane = self._lanes[record[F_LANE]]
            if index == 0 and certain and head_known and not blameless:
                failures.append(self._fail(lane, record, "WorkerLost", reason, now))
            else:
                if not certain and not blameless and record[F_LANE] not in held:
                    self._suspects.add((record[F_TOPIC], record[F_PARTITION], record[F_OFFSET]))
                lane.returned.append(record)
        slot.outstanding.clear()
        slot.outstanding_bytes = 0
        slot.outstanding_events = 0
        slot.ready = False
        slot.exclusive = False
        # The replacement process holds no lanes: nothing needs a retry flag, and pool lanes are free.
        for lane in self._lanes.values():
            if lane.worker == wid and lane.inflight == 0:
                lane.hold = False
                lane.worker = lane.fixed_worker
        for lane in touched:
            if lane.inflight == 0:
                self._settle(lane)
        return failures

    def worker_ready(self, wid: int) -> None:
        self._workers[wid].ready = True

    def queued_on(self, wid: int) -> int:
        """Events queued on (or running in) the worker."""
        return len(self._workers[wid].outstanding)

    def worker_busy(self, wid: int) -> bool:
        return bool(self._workers[wid].outstanding)

    def _count(self, topic: str, result: str) -> None:
        key = (topic, result)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def _finish(self, state: PartitionState, record: Record, result: str = "success") -> None:
        if state.outputs and result == "success" and self._held_for_outputs(state, record):
            return
        self._count(record[F_TOPIC], result)
        if self._suspects:
            self._suspects.discard((record[F_TOPIC], record[F_PARTITION], record[F_OFFSET]))
        state.offsets.done(record[F_OFFSET])
        state.buffered -= 1
        state.buffered_bytes -= record[F_SIZE]

    def _fail(self, lane: Lane, record: Record, error_type: str, message: str, now: float) -> Failure:
        """An attempt failed: schedule a retry, or apply the final action once retries are used up."""
        topic = record[F_TOPIC]
        self._count(topic, "error")
        attempt = record[F_ATTEMPT]
        # The worker holds this lane now: the lane's next event must carry the retry flag.
        lane.hold = True
        action = self.policy.decide(attempt)
        if action is Action.RETRY:
            self._count(topic, "retried")
            delay = self.policy.delay(attempt)
            record[F_ATTEMPT] = attempt + 1
            _return_in_order(lane, record)
            lane.not_before = now + delay
            return Failure(record, error_type, message, action, delay)
        if action is Action.SKIP:
            self._finish(lane.partition, record, "skipped")
        elif action is Action.STOP:
            _return_in_order(lane, record)
            lane.partition.stopped = True
        else:
            lane.parked = record
            self._to_dead_letter.append((record, error_type, message))
        return Failure(record, error_type, message, action)

    # -- outputs (see supervisor/outputs.py) ----------------------------------------------------
    def outputs_sent(
        self, tp: TopicPartition, offset: int, outputs: list[list[Any]]
    ) -> PendingOutputs | None:
        """The input at ``offset`` produced ``outputs``: it is not done before they are confirmed.

        Their bytes count against the partition's buffer until then, so a slow output topic pauses
        input. None when the partition is not ours: the outputs are still produced (at-least-once),
        but nothing waits for them.
        """
        state = self._partitions.get(tp)
        if state is None:
            return None
        pending = state.outputs.get(offset)
        if pending is None:
            pending = state.outputs[offset] = PendingOutputs(state, offset)
        state.buffered_bytes += pending.sent(outputs)
        return pending

    def output_delivered(self, pending: PendingOutputs, size: int, error: str | None, now: float) -> None:
        """One output's delivery report. The input finishes (or fails) once all of its are in."""
        state = pending.owner
        if not isinstance(state, PartitionState) or self._partitions.get(state.tp) is not state:
            return  # revoked meanwhile
        if state.outputs.get(pending.offset) is not pending:
            return
        self._now = now
        state.buffered_bytes -= size
        if not pending.delivered(size, error):
            return
        record = pending.record
        if record is None:
            # The input's result is not in yet; a failure waits for it (``_held_for_outputs``).
            if pending.error is None:
                del state.outputs[pending.offset]
            return
        pending.record = None
        del state.outputs[pending.offset]
        if pending.error is None:
            self._finish(state, record)
        else:
            self._fail_for_outputs(state, record, pending.error)

    def take_output_failures(self) -> list[Failure]:
        """Inputs whose outputs failed, with what the failure policy decided for them."""
        taken, self._output_failures = self._output_failures, []
        return taken

    def _held_for_outputs(self, state: PartitionState, record: Record) -> bool:
        """``record`` ran fine. True if it is not done: outputs in flight, or one failed."""
        offset = record[F_OFFSET]
        pending = state.outputs.get(offset)
        if pending is None:
            return False
        if pending.in_flight:
            pending.record = record
            return True
        del state.outputs[offset]
        if pending.error is None:
            return False
        self._fail_for_outputs(state, record, pending.error)
        return True

    def _fail_for_outputs(self, state: PartitionState, record: Record, error: str) -> None:
        """An output of ``record`` failed: a failed attempt of the record, like a handler error."""
        lane = self._lanes.get(record[F_LANE])
        if lane is None:  # a key lane dropped while its record waited for outputs
            lane = self._key_lane(state, record[F_KEY])
            record[F_LANE] = lane.id
        failure = self._fail(lane, record, "OutputDeliveryError", error, self._now)
        self._output_failures.append(failure)
        if lane.inflight == 0:
            self._settle(lane)

    def _run_done_with_outputs(self, state: PartitionState, run: Run, start: int, count: int) -> int:
        """Records ``start``.. of a run finished; those with outputs in flight wait for them as
        single records. Returns how many are done."""
        outputs = state.outputs
        done: list[int] = []
        for record in run.records(start, start + count):
            offset = record[F_OFFSET]
            if offset in outputs:
                # The run's bytes leave the buffer with the run; a waiting record keeps its own.
                state.buffered_bytes += record[F_SIZE]
                if self._held_for_outputs(state, record):
                    continue
                state.buffered_bytes -= record[F_SIZE]
            done.append(offset)
        state.offsets.done_many(done)
        state.buffered -= len(done)
        return len(done)

    def take_dead_letters(self) -> list[tuple[Record, str, str]]:
        """Records to produce to the dead-letter topic now: (record, error type, error message)."""
        taken, self._to_dead_letter = self._to_dead_letter, []
        return taken

    def dead_lettered(self, record: Record) -> bool:
        """The dead-letter topic confirmed ``record``: it is done. False if its partition moved away."""
        lane = self._lanes.get(record[F_LANE])
        if lane is None or lane.parked is not record:
            return False
        lane.parked = None
        self._finish(lane.partition, record, "dead_lettered")
        self._settle(lane)
        return True

    def _await_ack(self, state: PartitionState, record: Record, now: float) -> None:
        offset = record[F_OFFSET]
        if offset in state.early_acks:
            state.early_acks.discard(offset)
            self._finish(state, record)
        else:
            state.awaiting_ack[offset] = record
            if self.settings.ack_timeout is not None:
                state.ack_deadlines.append((now + self.settings.ack_timeout, offset, record[F_ATTEMPT]))

    def expire_acks(self, now: float) -> list[Failure]:
        """Records left unacked past ``ack_timeout``: each is a failed attempt (retried, then the
        failure policy), so one forgotten ack cannot hold its partition's commit for good."""
        if self.settings.ack_timeout is None:
            return []
        failures: list[Failure] = []
        for state in self._partitions.values():
            deadlines = state.ack_deadlines
            while deadlines and deadlines[0][0] <= now and not state.revoking:
                _, offset, attempt = deadlines[0]
                record = state.awaiting_ack.get(offset)
                if record is None or record[F_ATTEMPT] != attempt:
                    deadlines.popleft()
                    continue  # acked meanwhile (or this is an older attempt's deadline)
                lane = self._lanes.get(record[F_LANE])
                if lane is None:  # key mode drops idle lanes: the key gets a lane again
                    lane = state.default_lane or self._key_lane(state, record[F_KEY])
                    record[F_LANE] = lane.id
                if lane.parked is not None:
                    break  # one parked record per lane: this one fails once that one is done
                deadlines.popleft()
                del state.awaiting_ack[offset]
                message = f"no explicit ack within ackTimeout ({self.settings.ack_timeout:g}s)"
                failures.append(self._fail(lane, record, "AckTimeout", message, now))
                if lane.inflight == 0:
                    self._settle(lane)
        return failures

    def oldest_unfinished_ages(self, now: float) -> dict[TopicPartition, float]:
        """Per partition, seconds its commit position has waited on the oldest unfinished record
        (0 when nothing is unfinished). Measured from when a call first saw that record oldest, so
        call it regularly (the runner does, with every snapshot)."""
        ages: dict[TopicPartition, float] = {}
        for tp, state in self._partitions.items():
            head = state.offsets.position() if state.offsets.outstanding else None
            if head != state.head:
                state.head = head
                state.head_since = now
            ages[tp] = 0.0 if head is None else now - state.head_since
        return ages

    def ack(self, topic: str, partition: int, offset: int) -> bool:
        """An explicit ack. False when the partition is not ours (any more): the ack is ignored.

        Cumulative scope (Nuclio's: its ack marks offset + 1) closes every record of the partition
        up to ``offset`` that was handled and waits for its ack. It never closes a record that is
        still running, failed or waits for a retry: those finish (or not) on their own. The record
        at ``offset`` itself may still be running (a handler acking its own event): it is closed
        when it completes, as with the record scope.

        Acks count while the partition is revoking, up to ``forget``: a handler finishing during the
        rebalance wait, a drain callback or a termination callback may ack, and the commit that
        follows includes them (else the next owner would handle those records again).
        """
        state = self._partitions.get((topic, partition))
        if state is None:
            return False
        if self.settings.ack_scope is ExplicitAckScope.CUMULATIVE and state.awaiting_ack:
            waiting = state.awaiting_ack
            for earlier in sorted(o for o in waiting if o < offset):
                self._finish(state, waiting.pop(earlier))
        record = state.awaiting_ack.pop(offset, None)
        if record is not None:
            self._finish(state, record)
        else:
            position = state.offsets.position()
            if position is not None and offset >= position:
                state.early_acks.add(offset)  # still running, or retried: done once it completes
        return True

    def _settle(self, lane: Lane) -> None:
        """Nothing of this lane is in flight: re-queue what came back, release a free binding."""
        if lane.returned:
            if self._key_mode and lane.pending and type(lane.pending[0]) is not Run:
                # Key runs return a key's records in several reports (a run's progress, then later
                # runs the worker deferred them from), each settled on its own: one key's records
                # of one partition run in offset order, so merge by it.
                merged = sorted([*lane.returned, *lane.pending], key=_offset_of)
                lane.pending.clear()
                lane.pending.extend(merged)
            else:
                lane.pending.extendleft(reversed(lane.returned))
            lane.returned.clear()
        if not lane.hold:
            lane.worker = lane.fixed_worker
        if lane.pending and not lane.partition.revoking:
            self._runnable.setdefault(lane.id, lane)
        elif self._key_mode and not lane.carrier:
            self._drop_if_idle(lane)

    # -- flow control and commits -----------------------------------------------------------
    def flow_control(self) -> tuple[list[TopicPartition], list[tuple[TopicPartition, int | None]]]:
        """Partitions to pause (buffer full), and to resume (drained below half) with the offset to
        seek back to first when records were dropped for lack of room (None: no seek needed)."""
        settings = self.settings
        pause: list[TopicPartition] = []
        resume: list[tuple[TopicPartition, int | None]] = []
        for tp, state in self._partitions.items():
            full = (
                state.offsets.outstanding >= settings.max_buffered_records
                or state.buffered_bytes >= settings.max_buffered_bytes
                or state.rewind_to is not None
            )
            if full and not state.paused:
                state.paused = True
                pause.append(tp)
            elif state.paused and not state.stopped:
                low = (
                    state.offsets.outstanding <= settings.max_buffered_records // 2
                    and state.buffered_bytes <= settings.max_buffered_bytes // 2
                )
                if low:
                    state.paused = False
                    resume.append((tp, state.rewind_to))
                    state.rewind_to = None
        return pause, resume

    def repause(self, tp: TopicPartition, rewind_to: int | None) -> None:
        """Resuming failed (the seek was refused): stay paused and try again at the next check."""
        state = self._partitions.get(tp)
        if state is not None:
            state.paused = True
            state.rewind_to = rewind_to

    def commit_positions(self, tps: Iterable[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Positions that moved since the last commit (of all partitions, or of ``tps``)."""
        positions: dict[TopicPartition, int] = {}
        states = (
            self._partitions.values()
            if tps is None
            else [self._partitions[tp] for tp in tps if tp in self._partitions]
        )
        for state in states:
            position = state.offsets.pending_commit()
            if position is not None:
                positions[state.tp] = position
        return positions

    def has_uncommitted(self) -> bool:
        """Some partition's position moved past what was last committed."""
        return any(state.offsets.pending_commit() is not None for state in self._partitions.values())

    def mark_committed(self, positions: dict[TopicPartition, int]) -> None:
        for tp, position in positions.items():
            state = self._partitions.get(tp)
            if state is not None:
                state.offsets.committed = position

    def forget_committed(self, tps: Iterable[TopicPartition]) -> None:
        """A commit failed: make these positions count as uncommitted so the next round retries."""
        for tp in tps:
            state = self._partitions.get(tp)
            if state is not None:
                state.offsets.committed = None

    def partition_view(self) -> list[tuple[TopicPartition, int | None, int | None, bool, bool]]:
        """(tp, committed, position, paused, stopped) of every owned partition, for snapshots."""
        return [
            (tp, state.offsets.committed, state.offsets.position(), state.paused, state.stopped)
            for tp, state in self._partitions.items()
        ]

    # -- introspection ----------------------------------------------------------------------
    @property
    def inflight_total(self) -> int:
        """Events and runs queued on workers (0 exactly when no worker has anything of ours)."""
        return len(self._inflight)

    def inflight_records(self) -> int:
        """Records queued on workers, not done yet (a run counts its unfinished records)."""
        return sum(slot.outstanding_events for slot in self._workers)

    @property
    def has_dead_letters(self) -> bool:
        return bool(self._to_dead_letter)

    def next_retry_at(self, now: float) -> float | None:
        """When the earliest lane waiting out a retry backoff becomes due (None: no lane waits)."""
        times = [lane.not_before for lane in self._runnable.values() if lane.not_before > now]
        return min(times) if times else None

    def buffered_total(self) -> int:
        return sum(state.buffered for state in self._partitions.values())
