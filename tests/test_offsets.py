"""Offset tracking: the commit position never passes a record that is not done."""

from __future__ import annotations

import random

import pytest

from streamworker.supervisor.offsets import PartitionOffsets


def test_nothing_fetched_has_no_position() -> None:
    offsets = PartitionOffsets()
    assert offsets.position() is None
    assert offsets.pending_commit() is None


def test_in_order_completion_moves_position_one_by_one() -> None:
    offsets = PartitionOffsets()
    for offset in range(5, 8):
        offsets.track(offset)
    assert offsets.position() == 5
    offsets.done(5)
    assert offsets.position() == 6
    offsets.done(6)
    offsets.done(7)
    assert offsets.position() == 8
    assert offsets.outstanding == 0


def test_out_of_order_completion_waits_for_the_earliest() -> None:
    offsets = PartitionOffsets()
    for offset in range(4):
        offsets.track(offset)
    offsets.done(2)
    offsets.done(3)
    assert offsets.position() == 0, "records 0 and 1 are not done: nothing may be committed"
    offsets.done(1)
    assert offsets.position() == 0
    offsets.done(0)
    assert offsets.position() == 4


def test_gaps_in_offsets_are_skipped_over() -> None:
    # Compacted topics and transaction markers leave holes: only fetched offsets count.
    offsets = PartitionOffsets()
    for offset in (10, 13, 20):
        offsets.track(offset)
    offsets.done(10)
    assert offsets.position() == 13
    offsets.done(20)
    assert offsets.position() == 13
    offsets.done(13)
    assert offsets.position() == 21


def test_pending_commit_reports_only_moves() -> None:
    offsets = PartitionOffsets()
    offsets.track(0)
    offsets.track(1)
    assert offsets.pending_commit() == 0  # never committed yet: the start position counts
    offsets.committed = 0
    assert offsets.pending_commit() is None
    offsets.done(0)
    assert offsets.pending_commit() == 1


def test_fetch_order_must_increase() -> None:
    offsets = PartitionOffsets()
    offsets.track(5)
    with pytest.raises(ValueError, match="fetch order"):
        offsets.track(5)


@pytest.mark.parametrize("seed", range(20))
def test_random_completion_order_never_commits_an_unfinished_record(seed: int) -> None:
    rng = random.Random(seed)
    fetched = sorted(rng.sample(range(200), 60))
    offsets = PartitionOffsets()
    for offset in fetched:
        offsets.track(offset)
    order = fetched[:]
    rng.shuffle(order)
    finished: set[int] = set()
    for offset in order:
        offsets.done(offset)
        finished.add(offset)
        position = offsets.position()
        assert position is not None
        # every fetched offset below the position is finished; the one at it (if fetched) is not
        assert all(o in finished for o in fetched if o < position)
        unfinished = [o for o in fetched if o not in finished]
        assert position == (unfinished[0] if unfinished else fetched[-1] + 1)


def test_runs_track_and_complete_many_offsets_at_once_in_any_order() -> None:
    offsets = PartitionOffsets()
    offsets.track_many([10, 11, 13])  # 12 compacted away
    offsets.track_many([14, 15])
    offsets.done_many([14, 15])
    assert offsets.position() == 10, "later records done first do not move the position"
    offsets.done_many([10, 11])
    assert offsets.position() == 13
    offsets.done_many([13])
    assert offsets.position() == 16 and offsets.outstanding == 0
    with pytest.raises(ValueError, match="fetch order"):
        offsets.track_many([15, 16])
    offsets.track_many([])
    assert offsets.position() == 16


@pytest.mark.parametrize("seed", range(30))
def test_runs_done_in_any_order_and_any_shape_never_commit_an_unfinished_record(seed: int) -> None:
    # Runs as dispatch makes them: stretches of a fetch, split where a window ends, and (key mode)
    # subsets that interleave with each other; completed whole or in parts, in any order.
    rng = random.Random(seed)
    fetched = sorted(rng.sample(range(400), 150))  # gaps: compacted offsets
    offsets = PartitionOffsets()
    runs: list[list[int]] = []
    start = 0
    while start < len(fetched):
        stretch = fetched[start : start + rng.randint(1, 40)]
        start += len(stretch)
        offsets.track_many(stretch)
        if rng.random() < 0.4:  # split by target worker, as key mode does
            targets = [rng.randrange(3) for _ in stretch]
            runs.extend([o for o, t in zip(stretch, targets, strict=True) if t == w] for w in range(3))
        else:
            runs.append(stretch)
    parts: list[list[int]] = []
    for run in filter(None, runs):
        cut = rng.randint(0, len(run))  # progress reports: a run's leading records first
        parts.extend(filter(None, [run[:cut], run[cut:]]))
    rng.shuffle(parts)
    finished: set[int] = set()
    for part in parts:
        offsets.done_many(part)
        finished.update(part)
        unfinished = [o for o in fetched if o not in finished]
        position = unfinished[0] if unfinished else fetched[-1] + 1
        assert offsets.position() == position
        # Done records behind an unfinished one stay counted (against the buffer limit).
        assert offsets.outstanding == len([o for o in fetched if o >= position])
