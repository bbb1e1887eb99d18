"""The small supervisor parts on their own: the commit cadence, the one wait helper, and the
intake's choice between runs and records (no broker, no workers)."""

from __future__ import annotations

import time
from typing import Any

from streamworker.records import F_OFFSET, F_SIZE, KIND_EVENT, KIND_RUN, new_record, new_run
from streamworker.supervisor.commit_cadence import CommitCadence
from streamworker.supervisor.dispatch import Run
from streamworker.supervisor.waiting import step_until


def test_the_cadence_commits_every_interval_and_when_workers_run_dry() -> None:
    cadence = CommitCadence(interval=1.0)
    assert cadence.interval_due(10.0)
    assert not cadence.interval_due(10.5)
    assert cadence.interval_due(11.0)
    asked: list[bool] = []

    def uncommitted() -> bool:
        asked.append(True)
        return True

    assert not cadence.ran_dry(11.2, inflight=3, uncommitted=uncommitted)
    assert asked == [], "not asked while workers are busy (the loop's hot path)"
    assert cadence.ran_dry(11.3, inflight=0, uncommitted=uncommitted)
    assert not cadence.interval_due(12.0), "a dry-run commit restarts the interval"
    assert not cadence.ran_dry(11.4, inflight=0, uncommitted=lambda: False)


def test_step_until_steps_until_done() -> None:
    steps: list[float] = []
    assert step_until(lambda: len(steps) == 3, time.monotonic() + 60, steps.append, max_wait=0.01)
    assert steps == [0.01, 0.01, 0.01]


def test_step_until_stops_at_the_deadline_without_stepping_past_it() -> None:
    steps: list[float] = []
    assert not step_until(lambda: False, time.monotonic() - 1, steps.append)
    assert steps == []
    assert step_until(lambda: True, time.monotonic() - 1, steps.append), "done counts before the deadline"


def test_records_and_runs_say_what_they_are() -> None:
    record = new_record("t", 0, 7, b"k", b"value", None, None)
    assert record[0] == KIND_EVENT and record[F_OFFSET] == 7 and record[F_SIZE] == 6
    run: Any = Run("t", 0, [1, 2], [None, None], [b"a", b"b"], [None, None], [-1, -1]).wire()
    assert run[0] == KIND_RUN
    assert new_run(0, 0, "t", 0, False, [], [], [], [], [])[0] == KIND_RUN


class _Calls:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []


class _FakeDispatcher(_Calls):
    def begin_revoke(self, tps: list[tuple[str, int]]) -> int:
        self.calls.append(("begin_revoke", tps))
        return 5


class _FakePool(_Calls):
    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.calls = log

    def cancel_queued(self, tps: list[tuple[str, int]]) -> None:
        self.calls.append(("cancel_queued", tps))

    def join(self, tps: Any, deadline: float, reason: str, kind: str) -> set[int]:
        self.calls.append(("join", tps, kind))
        return {1}


def test_revoke_and_shutdown_quiesce_in_the_same_order() -> None:
    from streamworker.supervisor.drain import quiesce

    tps = [("t", 0), ("t", 1)]
    for every_partition, scope in ((False, tps), (True, None)):
        dispatcher = _FakeDispatcher()
        pool = _FakePool(dispatcher.calls)
        quiesced = quiesce(
            dispatcher,  # type: ignore[arg-type]
            pool,  # type: ignore[arg-type]
            tps,
            every_partition=every_partition,
            deadline=0.0,
            kill_reason="r",
            kill_kind="k",
            settle_outputs=lambda calls=dispatcher.calls: calls.append(("settle_outputs",)),
        )
        assert (quiesced.dropped, quiesced.killed) == (5, {1})
        assert dispatcher.calls == [
            ("begin_revoke", tps),
            ("cancel_queued", tps),
            ("join", scope, "k"),
            ("settle_outputs",),
        ]
