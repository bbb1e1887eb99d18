"""Dispatch decisions: order per lane, windows, failures, deferrals, worker loss, revokes."""

from __future__ import annotations

from typing import Any

from streamworker.config.model import AllocationMode
from streamworker.protocol import F_ATTEMPT, F_OFFSET, F_PARTITION, F_RETRY, F_SEQ, Status
from streamworker.supervisor.dispatch import Dispatcher, DispatchSettings, Record

T = "orders"


def rec(partition: int, offset: int, value: bytes = b"v", key: bytes | None = None) -> Record:
    return [0, 0, T, partition, offset, key, value, None, None, 1, False]


def make(mode: AllocationMode = AllocationMode.POOL, workers: int = 2, **kw: Any) -> Dispatcher:
    d = Dispatcher(DispatchSettings(mode=mode, num_workers=workers, **kw), retry_delay=lambda n: 0.5 * n)
    for w in range(workers):
        d.worker_ready(w)
    return d


def ok(events: list[Record]) -> list[list[Any]]:
    return [[e[F_SEQ], Status.OK, 0.001, None, None] for e in events]


def offsets(events: list[Record]) -> list[tuple[int, int]]:
    return [(e[F_PARTITION], e[F_OFFSET]) for e in events]


def test_pool_keeps_partition_order_on_one_worker_while_in_flight() -> None:
    d = make(lane_batch=2)
    d.assign([(T, 0)])
    d.add([rec(0, i) for i in range(5)])
    first = d.take_dispatches(0.0)
    assert list(first) == [0] and offsets(first[0]) == [(0, 0), (0, 1)]
    second = d.take_dispatches(0.0)
    # lane still bound to worker 0 while records are queued there: no second worker gets it
    assert list(second) == [0] and offsets(second[0]) == [(0, 2), (0, 3)]


def test_pool_spreads_partitions_over_workers() -> None:
    d = make()
    d.assign([(T, 0), (T, 1)])
    d.add([rec(0, 0), rec(1, 0)])
    batches = d.take_dispatches(0.0)
    assert sorted(batches) == [0, 1]


def test_static_mode_maps_partition_to_worker_modulo() -> None:
    d = make(AllocationMode.STATIC, workers=2)
    d.assign([(T, p) for p in range(4)])
    d.add([rec(p, 0) for p in range(4)])
    batches = d.take_dispatches(0.0)
    assert sorted(p for p, _ in offsets(batches[0])) == [0, 2]
    assert sorted(p for p, _ in offsets(batches[1])) == [1, 3]


def test_window_limits_queued_events_per_worker() -> None:
    d = make(workers=1, window_events=3, lane_batch=10)
    d.assign([(T, 0)])
    d.add([rec(0, i) for i in range(10)])
    batch = d.take_dispatches(0.0)[0]
    assert len(batch) == 3
    assert d.take_dispatches(0.0) == {}
    d.complete(0, ok(batch[:2]), 0.0)
    assert len(d.take_dispatches(0.0)[0]) == 2


def test_commit_position_moves_only_over_completed_prefix() -> None:
    d = make(workers=1)
    d.assign([(T, 0)])
    d.add([rec(0, i) for i in range(3)])
    batch = d.take_dispatches(0.0)[0]
    assert d.commit_positions() == {(T, 0): 0}
    d.complete(0, ok(batch[:2]), 0.0)
    assert d.commit_positions() == {(T, 0): 2}
    d.mark_committed({(T, 0): 2})
    assert d.commit_positions() == {}


def test_failure_defers_later_records_and_retries_in_order_after_backoff() -> None:
    d = make(workers=1)
    d.assign([(T, 0)])
    d.add([rec(0, i) for i in range(3)])
    batch = d.take_dispatches(0.0)[0]
    results = [
        [batch[0][F_SEQ], Status.ERROR, 0.01, "ValueError", "boom"],
        [batch[1][F_SEQ], Status.DEFERRED, 0.0, None, None],
        [batch[2][F_SEQ], Status.DEFERRED, 0.0, None, None],
    ]
    failures = d.complete(0, results, now=10.0)
    assert len(failures) == 1 and failures[0].error_type == "ValueError"
    assert failures[0].retry_in == 0.5
    assert d.commit_positions() == {(T, 0): 0}
    assert d.take_dispatches(10.4) == {}, "backoff not elapsed: nothing may be sent"
    retry = d.take_dispatches(10.6)[0]
    assert offsets(retry) == [(0, 0), (0, 1), (0, 2)]
    assert retry[0][F_RETRY] is True and retry[1][F_RETRY] is False
    assert retry[0][F_ATTEMPT] == 2 and retry[1][F_ATTEMPT] == 1
    d.complete(0, ok(retry), 11.0)
    assert d.commit_positions() == {(T, 0): 3}


def test_held_lane_is_retried_on_the_worker_that_holds_it() -> None:
    d = make(workers=2)
    d.assign([(T, 0)])
    d.add([rec(0, 0)])
    first = d.take_dispatches(0.0)
    (wid,) = first
    d.complete(wid, [[first[wid][0][F_SEQ], Status.ERROR, 0.0, "E", "x"]], 0.0)
    again = d.take_dispatches(5.0)
    assert list(again) == [wid]


def test_worker_lost_fails_running_record_and_requeues_the_rest() -> None:
    d = make(workers=2)
    d.assign([(T, 0)])
    d.add([rec(0, i) for i in range(3)])
    ((wid, _batch),) = d.take_dispatches(0.0).items()
    failures = d.worker_lost(wid, "SIGKILL", now=1.0)
    assert [f.record[F_OFFSET] for f in failures] == [0]
    assert failures[0].error_type == "WorkerLost"
    assert d.inflight_total == 0
    redo = d.take_dispatches(2.0)
    other = 1 - wid
    assert list(redo) == [other], "the dead worker is not ready until its replacement says so"
    assert offsets(redo[other]) == [(0, 0), (0, 1), (0, 2)]
    assert redo[other][0][F_RETRY] is False, "a fresh process holds no lanes"
    assert redo[other][0][F_ATTEMPT] == 2


def test_revoke_drops_buffered_waits_for_inflight_and_forgets() -> None:
    d = make(workers=1, window_events=2, lane_batch=2)
    d.assign([(T, 0), (T, 1)])
    d.add([rec(0, i) for i in range(4)] + [rec(1, 0)])
    batch = d.take_dispatches(0.0)[0]
    assert offsets(batch) == [(0, 0), (0, 1)]
    dropped = d.begin_revoke([(T, 0)])
    assert dropped == 2
    assert d.inflight_in([(T, 0)]) == 2
    assert d.workers_busy_with([(T, 0)]) == {0}
    d.complete(0, ok(batch[:1]), 0.0)
    assert d.commit_positions([(T, 0)]) == {(T, 0): 1}
    d.forget([(T, 0)])
    assert (T, 0) not in d.partitions
    # a late result for a forgotten partition is ignored, and the kept partition flows on
    d.complete(0, ok(batch[1:]), 0.0)
    assert offsets(d.take_dispatches(0.0)[0]) == [(1, 0)]
    # records for a revoked partition that were still in the fetch queue are not taken
    assert d.add([rec(0, 9)]) == 0


def test_backpressure_pauses_full_partition_and_resumes_at_half() -> None:
    d = make(workers=1, max_buffered_records=4, window_events=1)
    d.assign([(T, 0), (T, 1)])
    d.add([rec(0, i) for i in range(4)] + [rec(1, 0)])
    assert d.flow_control() == ([(T, 0)], [])
    assert d.flow_control() == ([], []), "already paused"
    for _ in range(2):
        events = d.take_dispatches(0.0)[0]
        d.complete(0, ok(events), 0.0)
    assert d.flow_control() == ([], [(T, 0)])


def test_byte_limit_also_pauses() -> None:
    d = make(workers=1, max_buffered_bytes=100)
    d.assign([(T, 0)])
    d.add([rec(0, 0, value=b"x" * 150)])
    assert d.flow_control() == ([(T, 0)], [])


def test_ambiguous_crash_blames_nobody_and_reruns_each_suspect_alone() -> None:
    # The worker died with three events queued and no result for any: which one ran is unknown.
    d = make(workers=1)
    d.assign([(T, 0)])
    d.add([rec(0, i) for i in range(3)])
    d.take_dispatches(0.0)
    assert d.worker_lost(0, "exit code 1", now=1.0, head_running=False) == []
    d.worker_ready(0)
    for offset in range(3):
        batch = d.take_dispatches(2.0)[0]
        assert offsets(batch) == [(0, offset)], "a suspect runs alone"
        assert batch[0][F_ATTEMPT] == 1, "nobody was blamed"
        assert d.take_dispatches(2.0) == {}, "nothing is queued behind a suspect"
        d.complete(0, ok(batch), 2.0)
    d.add([rec(0, 3), rec(0, 4)])
    assert offsets(d.take_dispatches(3.0)[0]) == [(0, 3), (0, 4)], "back to batches once cleared"


def test_crash_while_a_suspect_runs_alone_blames_it() -> None:
    d = make(workers=1)
    d.assign([(T, 0)])
    d.add([rec(0, i) for i in range(2)])
    d.take_dispatches(0.0)
    d.worker_lost(0, "exit code 1", now=1.0, head_running=False)
    d.worker_ready(0)
    d.take_dispatches(2.0)
    failures = d.worker_lost(0, "exit code 1", now=3.0, head_running=False)
    assert [(f.record[F_OFFSET], f.error_type) for f in failures] == [(0, "WorkerLost")]
