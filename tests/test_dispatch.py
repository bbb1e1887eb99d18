"""Dispatch decisions: order per lane, windows, failures, deferrals, worker loss, revokes."""

from __future__ import annotations

from typing import Any

from streamworker.config.model import (
    AllocationMode,
    ExplicitAckMode,
    ExplicitAckScope,
    OnError,
    StaticMapping,
)
from streamworker.protocol import Status, summarize_durations
from streamworker.records import (
    F_ATTEMPT,
    F_KEY,
    F_OFFSET,
    F_PARTITION,
    F_RETRY,
    F_SEQ,
    R_OFFSETS,
    R_PARTITION,
    R_SEQ,
    RUN_FIELDS,
    new_record,
)
from streamworker.supervisor.dispatch import Dispatcher, DispatchSettings, Record, Run
from streamworker.supervisor.failure_policy import FailurePolicy

T = "orders"


def rec(partition: int, offset: int, value: bytes = b"v", key: bytes | None = None) -> Record:
    return new_record(T, partition, offset, key, value, None, None)


def make(
    mode: AllocationMode = AllocationMode.POOL,
    workers: int = 2,
    max_retries: int = 1000,
    action: OnError = OnError.STOP,
    **kw: Any,
) -> Dispatcher:
    policy = FailurePolicy(max_retries=max_retries, on_error=action, delay=lambda n: 0.5 * n)
    d = Dispatcher(DispatchSettings(mode=mode, num_workers=workers, **kw), policy)
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


def test_static_mode_maps_by_index_among_assigned_partitions_as_nuclio() -> None:
    # Nuclio's StaticWorkerAllocator: the partition's index among this member's partitions of the
    # topic, mod numWorkers. Partitions 1 and 3 on two workers: index 0 and 1, not 1 and 1.
    d = make(AllocationMode.STATIC, workers=2)
    d.assign([(T, 3), (T, 1)])
    d.add([rec(1, 0), rec(3, 0)])
    batches = d.take_dispatches(0.0)
    assert offsets(batches[0]) == [(1, 0)] and offsets(batches[1]) == [(3, 0)]


def test_static_mode_partition_id_mapping_is_a_setting() -> None:
    d = make(AllocationMode.STATIC, workers=2, static_mapping=StaticMapping.PARTITION_ID)
    d.assign([(T, 3), (T, 1)])
    d.add([rec(1, 0), rec(3, 0)])
    batches = d.take_dispatches(0.0)
    assert list(batches) == [1] and sorted(offsets(batches[1])) == [(1, 0), (3, 0)]


def test_static_mode_keeps_the_worker_of_a_partition_kept_through_a_rebalance() -> None:
    d = make(AllocationMode.STATIC, workers=2)
    d.assign([(T, 2)])  # index 0 -> worker 0
    d.assign([(T, 0)])  # cooperative: added later; index among {0, 2} is 0 -> worker 0
    d.add([rec(0, 0), rec(2, 0)])
    batches = d.take_dispatches(0.0)
    assert sorted(offsets(batches[0])) == [(0, 0), (2, 0)]


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
    assert d.flow_control() == ([], [((T, 0), None)]), "nothing was dropped: no seek needed"


def test_records_past_the_limit_are_dropped_and_refetched_from_the_first_dropped_offset() -> None:
    # One fetch can bring far more than the limit: memory must follow the limit, not the fetch.
    d = make(workers=1, max_buffered_records=4, window_events=2, lane_batch=2)
    d.assign([(T, 0)])
    assert d.add([rec(0, i) for i in range(10)]) == 4
    assert d.add([rec(0, 10)]) == 0, "still dropping until the rewind"
    assert d.flow_control() == ([(T, 0)], [])
    for _ in range(2):
        events = d.take_dispatches(0.0)[0]
        d.complete(0, ok(events), 0.0)
    assert d.flow_control() == ([], [((T, 0), 4)])
    assert d.commit_positions() == {(T, 0): 4}
    assert d.add([rec(0, 4), rec(0, 5)]) == 2, "refetched from the seek position"


def test_a_refused_resume_keeps_the_partition_paused_with_its_rewind() -> None:
    d = make(workers=1, max_buffered_records=1)
    d.assign([(T, 0)])
    d.add([rec(0, 0), rec(0, 1)])
    d.flow_control()
    events = d.take_dispatches(0.0)[0]
    d.complete(0, ok(events), 0.0)
    ((_, rewind),) = d.flow_control()[1]
    d.repause((T, 0), rewind)
    assert d.flow_control() == ([], [((T, 0), 1)])


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


def error(events: list[Record]) -> list[list[Any]]:
    return [[e[F_SEQ], Status.ERROR, 0.001, "ValueError", "boom"] for e in events]


def fail_until_final(d: Dispatcher, wid: int = 0) -> list[Any]:
    """Fail offset 0 of partition 0 on every attempt until the policy's final action."""
    now = 0.0
    failures = []
    while True:
        batch = d.take_dispatches(now)[wid]
        failure = d.complete(
            wid, error(batch[:1]) + [[e[F_SEQ], Status.DEFERRED, 0, None, None] for e in batch[1:]], now
        )
        failures.extend(failure)
        if failure[0].action != "retry":
            return failures
        now += 100.0


def test_retries_exactly_max_retries_then_skip_commits_past_and_counts() -> None:
    d = make(workers=1, max_retries=3, action=OnError.SKIP)
    d.assign([(T, 0)])
    d.add([rec(0, 0), rec(0, 1)])
    failures = fail_until_final(d)
    assert [f.action for f in failures] == ["retry", "retry", "retry", "skip"]
    assert [f.retry_in for f in failures[:3]] == [0.5, 1.0, 1.5]
    assert failures[-1].record[F_ATTEMPT] == 4
    nxt = d.take_dispatches(1000.0)[0]
    assert offsets(nxt) == [(0, 1)] and nxt[0][F_RETRY] is True, "the worker's hold is lifted"
    d.complete(0, ok(nxt), 1000.0)
    assert d.commit_positions() == {(T, 0): 2}
    assert (
        d.outcomes[(T, "skipped")] == 1 and d.outcomes[(T, "retried")] == 3 and d.outcomes[(T, "error")] == 4
    )


def test_stop_keeps_the_record_and_stops_only_its_partition() -> None:
    d = make(workers=1, max_retries=0, action=OnError.STOP, max_buffered_records=2)
    d.assign([(T, 0), (T, 1)])
    d.add([rec(0, 0), rec(1, 0)])
    batch = d.take_dispatches(0.0)[0]
    first = next(e for e in batch if e[F_PARTITION] == 0)
    other = next(e for e in batch if e[F_PARTITION] == 1)
    failures = d.complete(0, error([first]) + ok([other]), 0.0)
    assert [f.action for f in failures] == ["stop"]
    assert d.take_dispatches(1000.0) == {}, "a stopped partition sends nothing more"
    assert d.commit_positions() == {(T, 0): 0, (T, 1): 1}
    assert [v[4] for v in d.partition_view() if v[0] == (T, 0)] == [True]
    d.add([rec(1, 1)])
    assert offsets(d.take_dispatches(1000.0)[0]) == [(1, 1)], "other partitions keep flowing"
    d.add([rec(0, 1)])
    assert d.flow_control() == ([(T, 0)], [])


def test_deadletter_parks_the_record_until_delivery_is_confirmed() -> None:
    d = make(workers=1, max_retries=1, action=OnError.DEADLETTER)
    d.assign([(T, 0)])
    d.add([rec(0, 0), rec(0, 1)])
    failures = fail_until_final(d)
    assert [f.action for f in failures] == ["retry", "deadletter"]
    ((parked, error_type, message),) = d.take_dead_letters()
    assert (parked[F_OFFSET], error_type, message) == (0, "ValueError", "boom")
    assert d.take_dispatches(1000.0) == {}, "later records wait behind the parked one"
    assert d.commit_positions() == {(T, 0): 0}, "not done before the broker confirmed the copy"
    assert d.dead_lettered(parked) is True
    assert offsets(d.take_dispatches(1000.0)[0]) == [(0, 1)]
    assert d.commit_positions() == {(T, 0): 1}
    assert d.outcomes[(T, "dead_lettered")] == 1


def test_dead_letter_of_a_revoked_partition_is_ignored() -> None:
    d = make(workers=1, max_retries=0, action=OnError.DEADLETTER)
    d.assign([(T, 0)])
    d.add([rec(0, 0)])
    fail_until_final(d)
    ((parked, _, _),) = d.take_dead_letters()
    d.begin_revoke([(T, 0)])
    d.forget([(T, 0)])
    assert d.dead_lettered(parked) is False


def test_explicit_only_waits_for_the_ack_and_accepts_early_acks() -> None:
    d = make(workers=1, ack_mode=ExplicitAckMode.EXPLICIT_ONLY)
    d.assign([(T, 0)])
    d.add([rec(0, 0), rec(0, 1), rec(0, 2)])
    batch = d.take_dispatches(0.0)[0]
    assert d.ack(T, 0, 1) is True  # acked while still queued on the worker
    d.complete(0, ok(batch), 0.0)
    assert d.commit_positions() == {(T, 0): 0}, "record 0 ran but is not acked"
    d.ack(T, 0, 0)
    assert d.commit_positions() == {(T, 0): 2}
    d.ack(T, 0, 2)
    assert d.commit_positions() == {(T, 0): 3}
    assert d.ack(T, 9, 0) is False, "a partition we do not own"


def test_enable_mode_only_no_ack_responses_wait() -> None:
    d = make(workers=1, ack_mode=ExplicitAckMode.ENABLE)
    d.assign([(T, 0)])
    d.add([rec(0, 0), rec(0, 1)])
    batch = d.take_dispatches(0.0)[0]
    d.complete(0, [[batch[0][F_SEQ], Status.NO_ACK, 0.0, None, None], *ok(batch[1:])], 0.0)
    assert d.commit_positions() == {(T, 0): 0}
    d.ack(T, 0, 0)
    assert d.commit_positions() == {(T, 0): 2}


def no_ack(events: list[Record]) -> list[list[Any]]:
    return [[e[F_SEQ], Status.NO_ACK, 0.0, None, None] for e in events]


def test_cumulative_ack_closes_every_waiting_record_up_to_the_offset() -> None:
    # Nuclio's pattern: every record returns no-ack, the function acks only the latest offset.
    d = make(workers=1, ack_mode=ExplicitAckMode.ENABLE)
    d.assign([(T, 0)])
    d.add([rec(0, i) for i in range(5)])
    batch = d.take_dispatches(0.0)[0]
    d.complete(0, no_ack(batch), 0.0)
    assert d.commit_positions() == {(T, 0): 0}
    assert d.ack(T, 0, 3) is True
    assert d.commit_positions() == {(T, 0): 4}, "records 0..3 are closed by the ack of 3"
    d.ack(T, 0, 4)
    assert d.commit_positions() == {(T, 0): 5}


def test_record_scope_ack_closes_only_that_record() -> None:
    d = make(workers=1, ack_mode=ExplicitAckMode.ENABLE, ack_scope=ExplicitAckScope.RECORD)
    d.assign([(T, 0)])
    d.add([rec(0, i) for i in range(3)])
    batch = d.take_dispatches(0.0)[0]
    d.complete(0, no_ack(batch), 0.0)
    d.ack(T, 0, 2)
    assert d.commit_positions() == {(T, 0): 0}, "0 and 1 still wait for their own acks"
    d.ack(T, 0, 0)
    d.ack(T, 0, 1)
    assert d.commit_positions() == {(T, 0): 3}


def test_cumulative_ack_never_closes_a_failed_record() -> None:
    d = make(workers=1, ack_mode=ExplicitAckMode.ENABLE)
    d.assign([(T, 0)])
    d.add([rec(0, i) for i in range(3)])
    batch = d.take_dispatches(0.0)[0]
    results = [*no_ack(batch[:1]), [batch[1][F_SEQ], Status.ERROR, 0.0, "ValueError", "boom"]]
    results.append([batch[2][F_SEQ], Status.DEFERRED, 0.0, None, None])
    assert len(d.complete(0, results, 0.0)) == 1
    d.ack(T, 0, 2)
    assert d.commit_positions() == {(T, 0): 1}, "record 1 failed: the ack does not skip it"
    retry = d.take_dispatches(10.0)[0]
    assert offsets(retry)[0] == (0, 1)
    d.complete(0, ok(retry), 10.0)  # enable mode: a plain return is an ack of its own
    assert d.commit_positions() == {(T, 0): 3}


def test_cumulative_ack_leaves_running_records_below_it_open() -> None:
    # Key mode runs keys in parallel: record 0 (key a) may still run when record 1 (key b) is acked.
    d = make(AllocationMode.KEY, workers=2, ack_mode=ExplicitAckMode.ENABLE)
    d.assign([(T, 0)])
    d.add([rec(0, 0, key=b"a"), rec(0, 1, key=b"b")])
    batches = d.take_dispatches(0.0)
    by_offset = {e[F_OFFSET]: (wid, e) for wid, events in batches.items() for e in events}
    wid_b, record_b = by_offset[1]
    d.complete(wid_b, no_ack([record_b]), 0.0)
    d.ack(T, 0, 1)
    assert d.commit_positions() == {(T, 0): 0}, "record 0 is still running"
    wid_a, record_a = by_offset[0]
    d.complete(wid_a, no_ack([record_a]), 0.0)
    assert d.commit_positions() == {(T, 0): 0}, "the earlier ack did not close record 0 for later"
    d.ack(T, 0, 0)
    assert d.commit_positions() == {(T, 0): 2}


def test_cumulative_ack_of_the_running_record_closes_it_when_it_returns() -> None:
    d = make(workers=1, ack_mode=ExplicitAckMode.EXPLICIT_ONLY)
    d.assign([(T, 0)])
    d.add([rec(0, 0), rec(0, 1)])
    batch = d.take_dispatches(0.0)[0]
    d.complete(0, ok(batch[:1]), 0.0)
    d.ack(T, 0, 1)  # the handler of record 1 acks its own event before returning
    assert d.commit_positions() == {(T, 0): 1}
    d.complete(0, ok(batch[1:]), 0.0)
    assert d.commit_positions() == {(T, 0): 2}


def test_disable_mode_ignores_no_ack() -> None:
    d = make(workers=1)
    d.assign([(T, 0)])
    d.add([rec(0, 0)])
    batch = d.take_dispatches(0.0)[0]
    d.complete(0, [[batch[0][F_SEQ], Status.NO_ACK, 0.0, None, None]], 0.0)
    assert d.commit_positions() == {(T, 0): 1}


def test_key_mode_same_key_same_worker_in_order_different_keys_in_parallel() -> None:
    d = make(AllocationMode.KEY, workers=4)
    d.assign([(T, 0)])
    keys = [f"k{i % 8}".encode() for i in range(64)]
    d.add([rec(0, i, key=k) for i, k in enumerate(keys)])
    batches = d.take_dispatches(0.0)
    assert len(batches) > 1, "one partition, several workers"
    seen: dict[bytes | None, int] = {}
    for wid, events in batches.items():
        for event in events:
            assert seen.setdefault(event[F_KEY], wid) == wid, "a key always goes to the same worker"
        for key in {e[F_KEY] for e in events}:
            of_key = [e[F_OFFSET] for e in events if e[F_KEY] == key]
            assert of_key == sorted(of_key)
    assert sum(len(e) for e in batches.values()) == 64


def test_key_mode_failure_holds_back_only_that_key() -> None:
    d = make(AllocationMode.KEY, workers=1)
    d.assign([(T, 0)])
    d.add([rec(0, 0, key=b"a"), rec(0, 1, key=b"b"), rec(0, 2, key=b"a")])
    batch = d.take_dispatches(0.0)[0]
    by_offset = {e[F_OFFSET]: e for e in batch}
    results = (
        error([by_offset[0]]) + ok([by_offset[1]]) + [[by_offset[2][F_SEQ], Status.DEFERRED, 0, None, None]]
    )
    d.complete(0, results, 0.0)
    assert d.commit_positions() == {(T, 0): 0}, "b is done but a's record 0 is not: commit stays"
    retry = d.take_dispatches(10.0)[0]
    assert offsets(retry) == [(0, 0), (0, 2)]
    d.complete(0, ok(retry), 10.0)
    assert d.commit_positions() == {(T, 0): 3}


def test_key_mode_null_keys_share_one_lane_and_idle_lanes_are_dropped() -> None:
    d = make(AllocationMode.KEY, workers=3)
    d.assign([(T, 0)])
    d.add([rec(0, i, key=None) for i in range(5)])
    batches = d.take_dispatches(0.0)
    assert len(batches) == 1 and offsets(next(iter(batches.values()))) == [(0, i) for i in range(5)]
    ((wid, events),) = batches.items()
    d.complete(wid, ok(events), 0.0)
    assert d.lanes_of([(T, 0)]) == [], "an idle key lane is dropped: memory follows live keys"


def test_next_retry_at_tells_the_loop_how_long_it_may_sleep() -> None:
    d = make(workers=1)
    d.assign([(T, 0)])
    d.add([rec(0, 0)])
    assert d.next_retry_at(0.0) is None
    batch = d.take_dispatches(0.0)[0]
    d.complete(0, error(batch), now=10.0)
    assert d.next_retry_at(10.0) == 10.5, "the retry is due after its backoff"
    assert d.next_retry_at(10.6) is None, "due already: nothing to wait for"


# -- runs: a partition's consecutive records as one unit (pool and static mode) -------------------


def run_of(partition: int, first: int, count: int, value: bytes = b"v") -> Run:
    return Run(
        T,
        partition,
        list(range(first, first + count)),
        [b"k"] * count,
        [value] * count,
        [None] * count,
        [-1] * count,
    )


def run_offsets(wire: list[Any]) -> tuple[int, list[int]]:
    assert len(wire) == len(RUN_FIELDS), "not a run"
    return wire[R_PARTITION], list(wire[R_OFFSETS])


def run_done(wire: list[Any], durations: int, status: Status = Status.OK, **extra: Any) -> list[Any]:
    failed = extra.get("failed", (0.0, None, None))
    return [wire[R_SEQ], status, *failed, summarize_durations([0.001] * durations)]


def test_runs_are_dispatched_whole_split_to_fit_and_complete_in_one_result() -> None:
    d = make(workers=1, window_events=4, run_batch=4)
    d.assign([(T, 0)])
    assert d.add([run_of(0, 0, 3), run_of(0, 3, 4)]) == 7
    (batch,) = d.take_dispatches(0.0).values()
    # run_batch 4: the first run whole, then one record split off the second
    assert [run_offsets(w) for w in batch] == [(0, [0, 1, 2]), (0, [3])]
    assert d.take_dispatches(0.0) == {}, "the window (4 records) is full"
    d.complete(0, [run_done(batch[0], 3)], 0.0)
    assert d.commit_positions() == {(T, 0): 3}
    (more,) = d.take_dispatches(0.0).values()
    assert [run_offsets(w) for w in more] == [(0, [4, 5, 6])]
    d.complete(0, [run_done(batch[1], 1), run_done(more[0], 3)], 0.0)
    assert d.commit_positions() == {(T, 0): 7}
    assert d.outcomes == {(T, "success"): 7} and d.buffered_total() == 0 and d.inflight_total == 0


def test_run_progress_moves_the_commit_and_frees_window_before_the_run_ends() -> None:
    d = make(workers=1, window_events=4)
    d.assign([(T, 0)])
    d.add([run_of(0, 0, 4), run_of(0, 4, 2)])
    (batch,) = d.take_dispatches(0.0).values()
    assert [run_offsets(w) for w in batch] == [(0, [0, 1, 2, 3])]
    d.complete(0, [run_done(batch[0], 2, Status.PROGRESS)], 0.0)
    assert d.commit_positions() == {(T, 0): 2}
    (more,) = d.take_dispatches(0.0).values()
    assert [run_offsets(w) for w in more] == [(0, [4, 5])], "progress freed two places"
    d.complete(0, [run_done(batch[0], 2), run_done(more[0], 2)], 0.0)
    assert d.commit_positions() == {(T, 0): 6}


def test_a_failure_inside_a_run_splits_it_and_the_rest_follows_the_retry_in_order() -> None:
    d = make(workers=1, window_seconds=60.0)  # the failed call's 0.1 s must not shrink the window
    d.assign([(T, 0)])
    d.add([run_of(0, 0, 5)])
    (batch,) = d.take_dispatches(0.0).values()
    failures = d.complete(0, [run_done(batch[0], 2, Status.ERROR, failed=(0.1, "ValueError", "boom"))], 1.0)
    assert [(f.record[F_OFFSET], f.action, f.error_message) for f in failures] == [(2, "retry", "boom")]
    assert d.commit_positions() == {(T, 0): 2}, "the records before the failure are done"
    assert d.take_dispatches(1.0) == {}, "backoff"
    (again,) = d.take_dispatches(1.6).values()
    # The failed record first, flagged retry, then the rest, one by one: they left the run.
    assert offsets(again) == [(0, 2), (0, 3), (0, 4)]
    assert [e[F_RETRY] for e in again] == [True, False, False] and again[0][F_ATTEMPT] == 2
    d.complete(0, ok(again), 2.0)
    assert d.commit_positions() == {(T, 0): 5}
    assert d.outcomes[(T, "success")] == 5 and d.outcomes[(T, "retried")] == 1


def test_a_deferred_run_comes_back_behind_nothing_and_keeps_its_order() -> None:
    d = make(workers=1)
    d.assign([(T, 0)])
    d.add([run_of(0, 0, 3)])
    (batch,) = d.take_dispatches(0.0).values()
    d.complete(0, [run_done(batch[0], 1, Status.DEFERRED)], 0.0)
    (again,) = d.take_dispatches(0.0).values()
    assert offsets(again) == [(0, 1), (0, 2)]
    assert d.commit_positions() == {(T, 0): 1}


def test_worker_lost_mid_run_keeps_what_was_reported_and_blames_the_next_record() -> None:
    d = make(workers=1)
    d.assign([(T, 0)])
    d.add([run_of(0, 0, 4)])
    (batch,) = d.take_dispatches(0.0).values()
    d.complete(0, [run_done(batch[0], 1, Status.PROGRESS)], 0.0)
    failures = d.worker_lost(0, "SIGKILL", now=1.0, head_running=True)
    assert [f.record[F_OFFSET] for f in failures] == [1]
    assert d.commit_positions() == {(T, 0): 1}
    d.worker_ready(0)
    (again,) = d.take_dispatches(5.0).values()
    assert offsets(again) == [(0, 1), (0, 2), (0, 3)] and again[0][F_ATTEMPT] == 2


def test_worker_lost_mid_run_without_a_known_head_makes_suspects_of_the_rest() -> None:
    d = make(workers=1)
    d.assign([(T, 0)])
    d.add([run_of(0, 0, 3)])
    d.take_dispatches(0.0)
    assert d.worker_lost(0, "exit code 1", now=1.0, head_running=False) == []
    d.worker_ready(0)
    for offset in range(3):
        batch = d.take_dispatches(2.0)[0]
        assert offsets(batch) == [(0, offset)], "a suspect runs alone"
        d.complete(0, ok(batch), 2.0)
    assert d.commit_positions() == {(T, 0): 3}


def test_a_run_past_the_buffer_limit_is_split_and_the_rest_refetched() -> None:
    d = make(workers=1, max_buffered_records=4)
    d.assign([(T, 0)])
    assert d.add([run_of(0, 0, 10)]) == 4
    assert d.flow_control() == ([(T, 0)], [])
    (batch,) = d.take_dispatches(0.0).values()
    assert [run_offsets(w) for w in batch] == [(0, [0, 1, 2, 3])]
    d.complete(0, [run_done(batch[0], 4)], 0.0)
    assert d.flow_control() == ([], [((T, 0), 4)])


def test_a_run_is_cut_at_the_byte_limit() -> None:
    d = make(workers=1, max_buffered_bytes=35)
    d.assign([(T, 0)])
    # 11 bytes per record (1-byte key + 10-byte value): the fourth record starts at 33 < 35
    assert d.add([run_of(0, 0, 6, value=b"x" * 10)]) == 4
    assert d.flow_control() == ([(T, 0)], [])
    (batch,) = d.take_dispatches(0.0).values()
    d.complete(0, [run_done(batch[0], 4)], 0.0)
    assert d.flow_control() == ([], [((T, 0), 4)])


def test_revoke_with_a_run_in_flight_frees_the_window_and_ignores_its_late_result() -> None:
    d = make(workers=1, window_events=4)
    d.assign([(T, 0), (T, 1)])
    d.add([run_of(0, 0, 4), run_of(1, 0, 2)])
    (batch,) = d.take_dispatches(0.0).values()
    assert [run_offsets(w) for w in batch] == [(0, [0, 1, 2, 3])]
    assert d.begin_revoke([(T, 0)]) == 0
    assert d.workers_busy_with([(T, 0)]) == {0}
    d.forget([(T, 0)])
    (more,) = d.take_dispatches(0.0).values()
    assert [run_offsets(w) for w in more] == [(1, [0, 1])], "the forgotten run left the window"
    d.complete(0, [run_done(batch[0], 4), run_done(more[0], 2)], 0.0)
    assert d.commit_positions() == {(T, 1): 2}


# -- revoke, lost and shutdown paths (issue #12) -----------------------------------------------------


def test_a_kill_at_a_deadline_blames_nobody_for_every_failure_action() -> None:
    # A record still running at the rebalance or shutdown deadline never failed: whatever onError
    # says, it goes back to its lane with its attempt count, and nothing is committed past it.
    for action in (OnError.SKIP, OnError.DEADLETTER, OnError.STOP):
        d = make(workers=1, max_retries=0, action=action)
        d.assign([(T, 0), (T, 1)])
        d.add([rec(0, 0), rec(0, 1), rec(1, 0)])
        batch = d.take_dispatches(0.0)[0]
        assert offsets(batch)[0] == (0, 0)
        d.begin_revoke([(T, 0)])
        failures = d.worker_lost(
            0, "killed at the rebalance deadline", 1.0, head_running=True, blameless=True
        )
        assert failures == [], action
        assert d.take_dead_letters() == []
        assert d.commit_positions() == {(T, 0): 0, (T, 1): 0}, (
            f"{action}: committed past a record that never finished"
        )
        assert d.outcomes == {}, action
        assert [v[4] for v in d.partition_view()] == [False, False], f"{action}: a partition stopped"
        d.worker_ready(0)
        redo = d.take_dispatches(2.0)[0]
        # The revoked partition's records are not sent again here; the kept one's is, unblamed.
        assert offsets(redo) == [(1, 0)] and redo[0][F_ATTEMPT] == 1 and redo[0][F_RETRY] is False


def test_a_kill_at_the_shutdown_deadline_leaves_the_attempt_count_unchanged() -> None:
    d = make(workers=1, max_retries=0, action=OnError.SKIP)
    d.assign([(T, 0)])
    d.add([rec(0, 0), rec(0, 1)])
    d.take_dispatches(0.0)
    assert d.worker_lost(0, "killed at workerTerminationTimeout", 1.0, blameless=True) == []
    d.worker_ready(0)
    redo = d.take_dispatches(2.0)[0]
    assert offsets(redo) == [(0, 0), (0, 1)], "not suspects either: they may go together"
    assert [e[F_ATTEMPT] for e in redo] == [1, 1]
    assert d.commit_positions() == {(T, 0): 0}


def test_only_a_worker_running_a_revoked_record_is_to_be_killed() -> None:
    d = make(workers=2, mode=AllocationMode.STATIC)
    d.assign([(T, 0), (T, 1), (T, 2)])
    d.add([rec(0, 0), rec(2, 0), rec(1, 0)])  # worker 0: partition 0 running, partition 2 queued
    d.take_dispatches(0.0)
    assert d.workers_busy_with([(T, 2)]) == {0}
    assert d.workers_running([(T, 2)]) == set(), "worker 0 runs a record of partition 0, which stays"
    assert d.workers_running([(T, 0), (T, 1)]) == {0, 1}


def test_acks_count_while_revoking_until_the_partition_is_forgotten() -> None:
    d = make(workers=1, ack_mode=ExplicitAckMode.EXPLICIT_ONLY)
    d.assign([(T, 0)])
    d.add([rec(0, 0), rec(0, 1), rec(0, 2)])
    batch = d.take_dispatches(0.0)[0]
    d.begin_revoke([(T, 0)])
    assert d.ack(T, 0, 1) is True, "an ack from a handler running during the rebalance wait"
    d.complete(0, ok(batch), 0.0)
    assert d.ack(T, 0, 0) is True, "an ack from the drain callback"
    assert d.commit_positions([(T, 0)]) == {(T, 0): 2}
    d.forget([(T, 0)])
    assert d.ack(T, 0, 2) is False, "forgotten: the next owner handles it"


def test_a_lost_partition_assigned_back_waits_for_calls_of_the_old_generation() -> None:
    d = make(workers=2)
    d.assign([(T, 0)])
    d.add([rec(0, 0), rec(0, 1)])
    ((wid, old),) = d.take_dispatches(0.0).items()
    d.begin_revoke([(T, 0)])
    d.forget([(T, 0)])  # lost: nothing waited for, nothing committed
    d.assign([(T, 0)])
    d.add([rec(0, 0), rec(0, 1), rec(0, 2)])
    assert d.take_dispatches(1.0) == {}, "old calls still run on a worker: the partition must wait"
    d.complete(wid, ok(old[:1]), 1.0)
    assert d.take_dispatches(1.0) == {}, "one old call is still queued"
    d.complete(wid, [[old[1][F_SEQ], Status.DEFERRED, 0.0, None, None]], 1.0)
    assert offsets(d.take_dispatches(1.0)[wid]) == [(0, 0), (0, 1), (0, 2)]
    assert d.commit_positions() == {(T, 0): 0}, "late results of the old generation count for nothing"


def test_a_lost_partition_assigned_back_waits_until_the_old_worker_dies() -> None:
    d = make(workers=2)
    d.assign([(T, 0)])
    d.add([run_of(0, 0, 3)])
    ((wid, _old),) = d.take_dispatches(0.0).items()
    d.begin_revoke([(T, 0)])
    d.forget([(T, 0)])
    d.assign([(T, 0)])
    d.add([rec(0, 0)])
    assert d.take_dispatches(1.0) == {}
    assert d.worker_lost(wid, "eventTimeout", 2.0) == [], "old-generation records blame nobody here"
    assert offsets(d.take_dispatches(2.0)[1 - wid]) == [(0, 0)]


def test_a_free_lane_avoids_a_worker_still_running_a_call_of_a_forgotten_partition() -> None:
    d = make(workers=2)
    d.assign([(T, 0), (T, 1)])
    d.add([rec(0, 0)])
    ((wid, _),) = d.take_dispatches(0.0).items()
    d.begin_revoke([(T, 0)])
    d.forget([(T, 0)])  # lost while its call runs (and may run for long) on worker ``wid``
    d.add([rec(1, 0), rec(1, 1)])
    assert list(d.take_dispatches(1.0)) == [1 - wid], "partition 1 must not queue behind the old call"


# -- stalls and bounds (issue #13) -------------------------------------------------------------------


def test_a_waiting_suspect_stops_the_refilling_of_its_worker() -> None:
    # Static mode: partitions 0 and 1 both belong to worker 0. After an ambiguous crash partition 0's
    # records are suspects, while partition 1 keeps the worker's window topped up every pass.
    d = make(AllocationMode.STATIC, workers=1, window_events=4, lane_batch=4)
    d.assign([(T, 0), (T, 1)])
    d.add([rec(0, i) for i in range(3)])
    d.take_dispatches(0.0)
    d.add([rec(1, i) for i in range(1000)])
    d.worker_lost(0, "exit code 1", now=1.0, head_running=False)
    d.worker_ready(0)
    queued: list[Record] = []
    passes = 0
    while passes < 50:
        passes += 1
        batch = d.take_dispatches(2.0).get(0, [])
        if any(e[F_PARTITION] == 0 for e in batch):
            assert offsets(batch) == [(0, 0)], "a suspect runs alone"
            assert queued == [], "on an empty worker"
            break
        queued.extend(batch)
        # The worker finishes two records per pass: its window never runs empty by itself.
        d.complete(0, ok(queued[:2]), 2.0)
        del queued[:2]
    else:
        raise AssertionError("the suspect never ran: its worker was refilled every pass")
    assert passes <= 10


def test_a_dispatch_counts_bytes_against_the_window() -> None:
    d = make(workers=1, window_bytes=100)
    d.assign([(T, 0)])
    d.add([rec(0, i, value=b"x" * 40) for i in range(10)])
    batch = d.take_dispatches(0.0)[0]
    assert offsets(batch) == [(0, 0), (0, 1)], "40 + 40 fit in 100 bytes, a third does not"
    assert d.take_dispatches(0.0) == {}
    d.complete(0, ok(batch), 0.0)
    assert offsets(d.take_dispatches(0.0)[0]) == [(0, 2), (0, 3)]


def test_a_record_larger_than_the_window_goes_alone_on_an_empty_worker() -> None:
    d = make(workers=1, window_bytes=100)
    d.assign([(T, 0)])
    d.add([rec(0, 0, value=b"x" * 10), rec(0, 1, value=b"x" * 500), rec(0, 2, value=b"x" * 10)])
    first = d.take_dispatches(0.0)[0]
    assert offsets(first) == [(0, 0)], "the big record waits for an empty worker"
    d.complete(0, ok(first), 0.0)
    big = d.take_dispatches(0.0)[0]
    assert offsets(big) == [(0, 1)]
    assert d.take_dispatches(0.0) == {}


def test_a_run_is_split_at_the_window_bytes() -> None:
    d = make(workers=1, window_bytes=100)
    d.assign([(T, 0)])
    values = [b"x" * 10, b"x" * 10, b"x" * 70, b"x" * 20, b"x" * 10]
    d.add([Run(T, 0, list(range(5)), [None] * 5, values, [None] * 5, [-1] * 5)])
    runs = d.take_dispatches(0.0)[0]
    assert [run[R_OFFSETS] for run in runs] == [[0, 1, 2]], "10 + 10 + 70 fit, the next 20 does not"
    assert d.take_dispatches(0.0) == {}


def test_a_record_deferred_by_a_worker_that_died_stays_behind_the_failed_one() -> None:
    # Offset 5 failed (reported); the worker deferred 6 and 7 (it holds the lane) but died before
    # reporting them. 6 never ran, so it is not blamed, and 5 still comes first.
    d = make(workers=1)
    d.assign([(T, 0)])
    d.add([rec(0, i) for i in (5, 6, 7)])
    batch = d.take_dispatches(0.0)[0]
    d.complete(0, error(batch[:1]), 0.0)
    failures = d.worker_lost(0, "exit code 1", now=0.2, head_running=True)
    assert failures == []
    d.worker_ready(0)
    retried = d.take_dispatches(100.0)[0]
    assert offsets(retried) == [(0, 5), (0, 6), (0, 7)]
    assert [e[F_ATTEMPT] for e in retried] == [2, 1, 1]


def test_records_done_behind_an_unacked_head_count_against_the_buffer_limit() -> None:
    # explicitOnly, per-record acks: offset 0 is never acked; 1..9 are handled and acked. Only one
    # record is unfinished, but ten are tracked past the commit position: the partition must pause.
    d = make(
        workers=1,
        ack_mode=ExplicitAckMode.EXPLICIT_ONLY,
        ack_scope=ExplicitAckScope.RECORD,
        max_buffered_records=10,
    )
    d.assign([(T, 0)])
    d.add([rec(0, i) for i in range(10)])
    d.complete(0, ok(d.take_dispatches(0.0)[0]), 0.0)
    for offset in range(1, 10):
        d.ack(T, 0, offset)
    assert d.buffered_total() == 1
    assert d.flow_control() == ([(T, 0)], [])
    assert d.add([rec(0, 10), rec(0, 11)]) == 0, "nothing more is taken past the limit"
    assert d.flow_control() == ([], []), "and it stays paused while the head is unfinished"
    d.ack(T, 0, 0)
    assert d.commit_positions() == {(T, 0): 10}
    assert d.flow_control() == ([], [((T, 0), 10)]), "resumed, refetching from the first dropped offset"


def test_records_done_behind_a_parked_record_in_key_mode_count_against_the_buffer_limit() -> None:
    d = make(AllocationMode.KEY, workers=2, max_retries=0, action=OnError.DEADLETTER, max_buffered_records=6)
    d.assign([(T, 0)])
    d.add([rec(0, 0, key=b"stuck")] + [rec(0, i, key=f"k{i}".encode()) for i in range(1, 6)])
    for wid, batch in d.take_dispatches(0.0).items():
        results = [
            [e[F_SEQ], Status.ERROR, 0.0, "ValueError", "boom"] if e[F_OFFSET] == 0 else ok([e])[0]
            for e in batch
        ]
        d.complete(wid, results, 0.0)
    assert [r[F_OFFSET] for r, _, _ in d.take_dead_letters()] == [0]  # parked until the copy is confirmed
    assert d.buffered_total() == 1
    assert d.flow_control() == ([(T, 0)], [])
    assert d.add([rec(0, 6, key=b"k6")]) == 0


def test_ack_timeout_turns_a_missing_ack_into_a_failed_attempt() -> None:
    d = make(
        workers=1,
        ack_mode=ExplicitAckMode.EXPLICIT_ONLY,
        ack_scope=ExplicitAckScope.RECORD,  # a cumulative ack of 1 would close 0 too
        ack_timeout=5.0,
    )
    d.assign([(T, 0)])
    d.add([rec(0, 0), rec(0, 1)])
    d.complete(0, ok(d.take_dispatches(0.0)[0]), 1.0)
    d.ack(T, 0, 1)
    assert d.expire_acks(5.9) == []
    (failure,) = d.expire_acks(6.0)
    assert (failure.record[F_OFFSET], failure.error_type, failure.action) == (0, "AckTimeout", "retry")
    assert d.outcomes[(T, "error")] == 1
    assert d.take_dispatches(6.0) == {}, "waits out the retry backoff"
    (retried,) = d.take_dispatches(100.0)[0]
    assert (retried[F_OFFSET], retried[F_ATTEMPT], retried[F_RETRY]) == (0, 2, True)
    d.complete(0, ok([retried]), 100.0)
    assert d.expire_acks(104.0) == [], "the new attempt has its own deadline"
    d.ack(T, 0, 0)
    assert d.commit_positions() == {(T, 0): 2}
    assert d.expire_acks(1000.0) == []


def test_without_ack_timeout_a_missing_ack_waits_forever() -> None:
    d = make(workers=1, ack_mode=ExplicitAckMode.EXPLICIT_ONLY)
    d.assign([(T, 0)])
    d.add([rec(0, 0)])
    d.complete(0, ok(d.take_dispatches(0.0)[0]), 0.0)
    assert d.expire_acks(1e9) == []
    assert d.commit_positions() == {(T, 0): 0}


def test_age_of_the_oldest_unfinished_record_per_partition() -> None:
    d = make(workers=1, window_events=1)
    d.assign([(T, 0), (T, 1)])
    d.add([rec(0, 0), rec(0, 1)])
    assert d.oldest_unfinished_ages(10.0) == {(T, 0): 0.0, (T, 1): 0.0}
    assert d.oldest_unfinished_ages(13.0) == {(T, 0): 3.0, (T, 1): 0.0}
    d.complete(0, ok(d.take_dispatches(13.0)[0]), 13.5)
    assert d.oldest_unfinished_ages(14.0)[(T, 0)] == 0.0, "a new head starts its own clock"
    assert d.oldest_unfinished_ages(16.0)[(T, 0)] == 2.0
    d.complete(0, ok(d.take_dispatches(16.0)[0]), 16.0)
    assert d.oldest_unfinished_ages(20.0)[(T, 0)] == 0.0, "nothing unfinished"


def test_an_ack_timeout_waits_while_its_lane_has_a_record_parked_for_the_dead_letter_topic() -> None:
    d = make(
        workers=1,
        ack_mode=ExplicitAckMode.EXPLICIT_ONLY,
        ack_timeout=5.0,
        max_retries=0,
        action=OnError.DEADLETTER,
    )
    d.assign([(T, 0)])
    d.add([rec(0, 0), rec(0, 1)])
    batch = d.take_dispatches(0.0)[0]
    d.complete(0, [*ok(batch[:1]), *error(batch[1:])], 0.0)  # 0 awaits its ack, 1 is parked
    ((parked, _, _),) = d.take_dead_letters()
    assert d.expire_acks(10.0) == [], "the lane has a parked record: the timeout waits"
    assert d.dead_lettered(parked) is True
    (failure,) = d.expire_acks(10.0)
    assert (failure.record[F_OFFSET], failure.action) == (0, "deadletter")
    ((again, _, _),) = d.take_dead_letters()
    assert d.dead_lettered(again) is True
    assert d.commit_positions() == {(T, 0): 2}


# -- the window follows the handler's pace (window.py) ------------------------------------------


def records_queued(d: Dispatcher, batches: dict[int, list[Any]]) -> dict[int, int]:
    """Records per worker in one take_dispatches() answer (a run counts its records)."""
    return {
        wid: sum(len(w[R_OFFSETS]) if len(w) >= len(RUN_FIELDS) else 1 for w in items)
        for wid, items in batches.items()
    }


def test_before_any_result_a_worker_gets_a_shallow_window() -> None:
    """The handler may be slow: the first dispatch must not pile a thousand records on one worker."""
    d = make(workers=2)
    d.assign([(T, 0)])
    d.add([run_of(0, 0, 5000)])
    assert records_queued(d, d.take_dispatches(0.0)) == {0: 256}
    assert d.take_dispatches(0.0) == {}, "partition 0 stays on worker 0 while it has records there"


def test_a_slow_handler_gets_a_few_records_per_worker_not_a_thousand() -> None:
    d = make(workers=2)
    d.assign([(T, 0), (T, 1)])
    d.add([run_of(0, 0, 1)])
    (first,) = d.take_dispatches(0.0).values()
    # One record took 1 s: 0.1 s of work per worker is less than one record, so one runs and one waits.
    d.complete(0, [[first[0][R_SEQ], Status.OK, 0.0, None, None, summarize_durations([1.0])]], 1.0)
    assert d.window.window == 2
    d.add([run_of(0, 1, 500), run_of(1, 0, 500)])
    assert records_queued(d, d.take_dispatches(1.0)) == {0: 2, 1: 2}
    assert d.inflight_records() == 4 and d.buffered_total() == 1000, "the rest waits in the supervisor"


def test_a_quick_handler_gets_the_whole_window() -> None:
    d = make(workers=1)
    d.assign([(T, 0)])
    d.add([run_of(0, 0, 1000)])
    (first,) = d.take_dispatches(0.0).values()
    d.complete(
        0, [[w[R_SEQ], Status.OK, 0.0, None, None, summarize_durations([2e-6] * 256)] for w in first], 0.0
    )
    assert d.window.window == 4096
    d.add([run_of(0, 1000, 9000)])
    queued = 0
    while batches := d.take_dispatches(0.0):
        queued += records_queued(d, batches)[0]
    assert queued == 4096, "a deep window: the worker never waits for the supervisor between batches"
