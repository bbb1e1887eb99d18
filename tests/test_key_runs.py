"""Key mode in runs (issue #16): the dispatcher splits a partition stretch by target worker and
carries a lane per record; the worker defers only held lanes' records inside a run and goes on after
a failure. Order per key and the retry/hold rules are those of per-record key mode."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_worker_process import WorkerHarness, collect, statuses, wire_event, wire_run

from streamworker.config.model import AllocationMode, OnError
from streamworker.protocol import Msg, Status, summarize_durations
from streamworker.records import (
    F_KEY,
    F_LANE,
    F_OFFSET,
    F_RETRY,
    F_SEQ,
    KIND_RUN,
    R_KEYS,
    R_KIND,
    R_LANES,
    R_OFFSETS,
    R_SEQ,
    RUN_FIELDS,
)
from streamworker.supervisor.dispatch import Dispatcher, DispatchSettings, Record, Run, key_worker
from streamworker.supervisor.failure_policy import FailurePolicy

T = "orders"
OK, ERROR, DEFERRED, PROGRESS = Status.OK, Status.ERROR, Status.DEFERRED, Status.PROGRESS


def make(workers: int = 2, **kw: Any) -> Dispatcher:
    policy = FailurePolicy(max_retries=1000, on_error=OnError.STOP, delay=lambda n: 0.5 * n)
    d = Dispatcher(DispatchSettings(mode=AllocationMode.KEY, num_workers=workers, **kw), policy)
    for w in range(workers):
        d.worker_ready(w)
    d.assign([(T, 0)])
    return d


def key_run(keys: list[bytes | None], first: int = 0) -> Run:
    count = len(keys)
    return Run(
        T, 0, list(range(first, first + count)), list(keys), [b"v"] * count, [None] * count, [-1] * count
    )


def result(wire: list[Any], ok: int, exceptions: list[list[Any]], status: Status = OK) -> list[Any]:
    """A key run's result: ``ok`` records handled fine, ``exceptions`` [index, status, ...]."""
    return [wire[R_SEQ], status, 0.0, None, None, summarize_durations([0.001] * ok), exceptions]


def deferred(index: int) -> list[Any]:
    return [index, DEFERRED, 0.0, None, None]


def failed(index: int) -> list[Any]:
    return [index, ERROR, 0.1, "ValueError", "boom"]


def offsets(events: list[Record]) -> list[int]:
    return [e[F_OFFSET] for e in events]


# -- dispatcher ----------------------------------------------------------------------------------


def test_a_key_run_is_split_by_target_worker_with_a_lane_per_record() -> None:
    d = make(workers=2)
    keys = [b"k%d" % (i % 6) for i in range(30)]
    assert d.add([key_run(keys)]) == 30
    batches = d.take_dispatches(0.0)
    lane_of_key: dict[Any, int] = {}
    for wid, items in batches.items():
        (wire,) = items
        assert wire[R_KIND] == KIND_RUN and len(wire) == len(RUN_FIELDS) + 1 == R_LANES + 1
        assert all(key_worker(key, 2) == wid for key in wire[R_KEYS]), "a key always goes to its worker"
        assert wire[R_OFFSETS] == sorted(wire[R_OFFSETS])
        for key, lane in zip(wire[R_KEYS], wire[R_LANES], strict=True):
            assert lane_of_key.setdefault(key, lane) == lane, "one lane id per key"
    assert len(set(lane_of_key.values())) == 6
    assert sum(len(items[0][R_OFFSETS]) for items in batches.values()) == 30
    for wid, (wire,) in batches.items():
        d.complete(wid, [result(wire, len(wire[R_OFFSETS]), [])], 0.0)
    assert d.commit_positions() == {(T, 0): 30}
    assert d.outcomes == {(T, "success"): 30} and d.buffered_total() == 0 and d.inflight_total == 0
    # The next run of the same keys carries the same lane ids.
    d.add([key_run(keys[:6], first=30)])
    again = {
        key: lane
        for items in d.take_dispatches(1.0).values()
        for key, lane in zip(items[0][R_KEYS], items[0][R_LANES], strict=True)
    }
    assert all(lane_of_key[key] == lane for key, lane in again.items())


def test_a_failure_in_a_key_run_holds_back_only_that_key_and_retries_it_first() -> None:
    d = make(workers=1)
    # a fails at 0; its later record (2) was deferred by the worker; b ran fine.
    d.add([key_run([b"a", b"b", b"a", b"b"])])
    ((wire,),) = d.take_dispatches(0.0).values()
    failures = d.complete(0, [result(wire, 2, [failed(0), deferred(2)])], 1.0)
    assert [(f.record[F_OFFSET], f.action) for f in failures] == [(0, "retry")]
    assert d.commit_positions() == {(T, 0): 0}, "b's records are done, a's first is not"
    assert d.outcomes[(T, "success")] == 2
    # b goes on in runs meanwhile; a's new record queues behind its retry, not in a run.
    d.add([key_run([b"b", b"a"], first=4)])
    ((run2,),) = d.take_dispatches(1.0).values()
    assert run2[R_KEYS] == [b"b"] and run2[R_OFFSETS] == [4], "a is busy: its record 5 is not in the run"
    d.complete(0, [result(run2, 1, [])], 1.0)
    ((*retry,),) = d.take_dispatches(2.0).values()
    assert offsets(retry) == [0, 2, 5], "the failed record first, then a's others, in offset order"
    assert [e[F_RETRY] for e in retry] == [True, False, False]
    assert {e[F_LANE] for e in retry} == {wire[R_LANES][0]}, "the lane id the worker holds"
    d.complete(0, [[e[F_SEQ], OK, 0.001, None, None] for e in retry], 2.0)
    assert d.commit_positions() == {(T, 0): 6}
    assert d.buffered_total() == 0 and d.inflight_total == 0
    assert d.lanes_of([(T, 0)]) == [], "a's lane is dropped once idle; idle carriers are not listed"


def test_a_new_key_lane_takes_its_key_out_of_undispatched_runs() -> None:
    d = make(workers=1, window_events=4, run_batch=4)
    d.add([key_run([b"a", b"b", b"c", b"d"]), key_run([b"a", b"b", b"a", b"c"], first=4)])
    ((first,),) = d.take_dispatches(0.0).values()
    assert first[R_OFFSETS] == [0, 1, 2, 3] and d.take_dispatches(0.0) == {}, "window full"
    d.complete(0, [result(first, 3, [failed(0)])], 1.0)
    # The second run, still buffered, lost a's records (4 and 6) to a's lane.
    ((*items,),) = d.take_dispatches(1.0).values()
    runs = [item for item in items if item[R_KIND] == KIND_RUN]
    assert [run[R_OFFSETS] for run in runs] == [[5, 7]]
    d.complete(0, [result(runs[0], 2, [])], 1.0)
    ((*retry,),) = d.take_dispatches(5.0).values()
    assert offsets(retry) == [0, 4, 6] and all(e[F_KEY] == b"a" for e in retry)
    d.complete(0, [[e[F_SEQ], OK, 0.001, None, None] for e in retry], 5.0)
    assert d.commit_positions() == {(T, 0): 8}


def test_key_run_progress_commits_around_a_failed_record() -> None:
    d = make(workers=1)
    d.add([key_run([b"a", b"b", b"c", b"d"])])
    ((wire,),) = d.take_dispatches(0.0).values()
    d.complete(0, [result(wire, 1, [failed(1)], PROGRESS)], 1.0)
    assert d.commit_positions() == {(T, 0): 1}
    d.complete(0, [result(wire, 2, [])], 1.0)
    assert d.commit_positions() == {(T, 0): 1}, "offset 1 waits for its retry"
    ((retry,),) = d.take_dispatches(2.0).values()
    d.complete(0, [[retry[F_SEQ], OK, 0.001, None, None]], 2.0)
    assert d.commit_positions() == {(T, 0): 4}


def test_worker_lost_mid_key_run_returns_the_rest_to_their_key_lanes() -> None:
    d = make(workers=1)
    d.add([key_run([b"a", b"b", b"a", b"c"])])
    ((wire,),) = d.take_dispatches(0.0).values()
    d.complete(0, [result(wire, 1, [], PROGRESS)], 0.5)
    failures = d.worker_lost(0, "crashed", 1.0, head_running=True)
    assert [f.record[F_OFFSET] for f in failures] == [1], "the record after the reported one is blamed"
    d.worker_ready(0)
    ((*again,),) = d.take_dispatches(5.0).values()
    assert sorted(offsets(again)) == [1, 2, 3]
    by_key: dict[Any, list[int]] = {}
    for event in again:
        by_key.setdefault(event[F_KEY], []).append(event[F_OFFSET])
    assert by_key == {b"b": [1], b"a": [2], b"c": [3]}
    d.complete(0, [[e[F_SEQ], OK, 0.001, None, None] for e in again], 5.0)
    assert d.commit_positions() == {(T, 0): 4} and d.buffered_total() == 0


def test_a_dropped_key_lane_gives_its_key_a_fresh_lane_id_in_runs() -> None:
    # A skipped record's lane stays held by the worker: the key must not ride under that id again.
    policy = FailurePolicy(max_retries=0, on_error=OnError.SKIP, delay=lambda n: 0.0)
    d = Dispatcher(DispatchSettings(mode=AllocationMode.KEY, num_workers=1), policy)
    d.worker_ready(0)
    d.assign([(T, 0)])
    d.add([key_run([b"a"])])
    ((wire,),) = d.take_dispatches(0.0).values()
    failures = d.complete(0, [result(wire, 0, [failed(0)])], 1.0)
    assert [f.action for f in failures] == ["skip"]
    d.add([key_run([b"a"], first=1)])
    ((again,),) = d.take_dispatches(1.0).values()
    assert again[R_LANES] != wire[R_LANES]
    d.complete(0, [result(again, 1, [])], 1.0)
    assert d.commit_positions() == {(T, 0): 2}


# -- worker ----------------------------------------------------------------------------------------


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[WorkerHarness]:
    worker = WorkerHarness(tmp_path)
    yield worker
    worker.close()


def keyed(wire: list[Any], lanes: list[int]) -> list[Any]:
    return [*wire, lanes]


def test_the_worker_defers_only_held_lanes_inside_a_key_run_and_goes_on(harness: WorkerHarness) -> None:
    harness.start("basic:handler")
    harness.events(
        keyed(wire_run(0, [b"a", b"fail-b", b"greet", b"b2"]), [1, 2, 3, 2]),
        keyed(wire_run(1, [b"b3", b"greet"], first_offset=4), [2, 3]),
    )
    first, second = collect_key_runs(harness, 2)
    assert first == (0, OK, 2, [(1, ERROR, "ValueError"), (3, DEFERRED, None)])
    assert second == (1, OK, 1, [(0, DEFERRED, None)])
    assert len([entry for entry in harness.observed() if "greeting" in entry]) == 2, "lane 3 ran twice"
    # The retry of lane 2's failed record lifts the hold.
    harness.events(
        wire_event(5, b"ok", lane=2, offset=1, retry=True, attempt=2), wire_event(6, b"b2", lane=2)
    )
    assert statuses(collect(harness, 2)) == [(5, OK), (6, OK)]


def collect_key_runs(
    harness: WorkerHarness, count: int
) -> list[tuple[int, int, int, list[tuple[int, int, Any]]]]:
    """Final key-run results with progress folded in: (seq, status, records fine, exceptions)."""
    done: dict[int, int] = {}
    odd: dict[int, list[tuple[int, int, Any]]] = {}
    finals = []
    while len(finals) < count:
        kind, payload = harness.next_message()
        assert kind == Msg.RESULTS, (kind, payload)
        for entry in payload:
            assert len(entry) == 7, entry
            seq = entry[0]
            done[seq] = done.get(seq, 0) + entry[5][0]
            odd.setdefault(seq, []).extend((e[0], e[1], e[3]) for e in entry[6])
            if entry[1] != PROGRESS:
                finals.append((seq, entry[1], done[seq], odd[seq]))
    return finals


def _librdkafka_partition(key: bytes, partitions: int) -> int:
    # librdkafka's default partitioner (consistent_random, as in confluent-kafka-python, -go and
    # -dotnet): crc32 of the key modulo the partition count.
    return zlib.crc32(key) % partitions


@pytest.mark.parametrize("path", ["runs", "records"])
def test_the_keys_of_one_partition_reach_every_worker(path: str) -> None:
    # A replica that owns partition 3 of 8 of a topic written by a librdkafka producer, 4 workers:
    # all its keys have crc32 = 3 mod 8, so crc32 mod 4 sent every one of them to worker 3 and
    # the other three workers idled.
    workers = 4
    keys = [b"user-%d" % i for i in range(20_000) if _librdkafka_partition(b"user-%d" % i, 8) == 3][:200]
    policy = FailurePolicy(max_retries=1, on_error=OnError.STOP, delay=lambda n: 0.5 * n)
    d = Dispatcher(DispatchSettings(mode=AllocationMode.KEY, num_workers=workers, lane_batch=10_000), policy)
    for w in range(workers):
        d.worker_ready(w)
    d.assign([(T, 3)])
    count = len(keys)
    run = Run(T, 3, list(range(count)), list(keys), [b"v"] * count, [None] * count, [-1] * count)
    if path == "runs":
        assert d.add([run]) == count
    else:
        assert d.add(run.records()) == count  # the per-record path (explicit acks)
    per_worker = {w: 0 for w in range(workers)}
    for wid, items in d.take_dispatches(0.0).items():
        for item in items:
            per_worker[wid] += len(item[R_OFFSETS]) if item[R_KIND] == KIND_RUN else 1
    assert sum(per_worker.values()) == count
    assert min(per_worker.values()) >= count // workers // 2, per_worker


@pytest.mark.parametrize(("partitions", "workers"), [(1, 4), (2, 2), (4, 2), (8, 4), (12, 3), (6, 8)])
def test_key_worker_spreads_each_partitions_keys_evenly(partitions: int, workers: int) -> None:
    keys = [b"order-%d" % i for i in range(40_000)]
    for partition in range(partitions):
        mine = [key for key in keys if _librdkafka_partition(key, partitions) == partition]
        counts = Counter(key_worker(key, workers) for key in mine)
        expected = len(mine) / workers
        assert sorted(counts) == list(range(workers)), (partition, counts)
        assert all(abs(n - expected) < 0.1 * expected for n in counts.values()), (partition, counts)


def test_a_key_run_split_keeps_every_column_and_byte_of_each_record() -> None:
    d = make(workers=2)
    # One key alone on its worker (a part of one record), the others together.
    lone = next(b"solo-%d" % i for i in range(100) if key_worker(b"solo-%d" % i, 2) == 1)
    others = [b"many-%d" % i for i in range(100) if key_worker(b"many-%d" % i, 2) == 0][:5]
    keys = [*others[:2], lone, *others[2:]]
    count = len(keys)
    run = Run(
        T,
        0,
        list(range(100, 100 + count)),
        keys,
        [b"x" * (i + 1) for i in range(count)],
        [[("h", b"%d" % i)] for i in range(count)],
        list(range(1000, 1000 + count)),
    )
    total = run.size
    assert d.add([run]) == count
    batches = d.take_dispatches(0.0)
    sizes = 0
    for wid, (wire,) in batches.items():
        part = d._inflight[wire[R_SEQ]]
        assert isinstance(part, Run)
        for i, offset in enumerate(part.offsets):
            at = offset - 100
            assert (part.keys[i], part.values[i], part.headers[i], part.timestamps[i]) == (
                keys[at],
                b"x" * (at + 1),
                [("h", b"%d" % at)],
                1000 + at,
            )
            assert key_worker(part.keys[i], 2) == wid
        assert part.size == sum(len(k) + len(v) for k, v in zip(part.keys, part.values, strict=True))
        sizes += part.size
    assert sorted(len(items[0][R_OFFSETS]) for items in batches.values()) == [1, count - 1]
    assert sizes == total
