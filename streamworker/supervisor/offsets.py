"""Which offset of a partition may be committed: pure bookkeeping, no Kafka here.

The rule: a partition's commit position is the lowest offset that was fetched and is not done yet
(or one past the last fetched offset when everything is done). So an offset is committed only once
its record and every earlier fetched record of the partition are done, whatever order completions
arrive in. Offsets may have gaps (compaction, transaction markers); only fetched offsets count.
"""

from __future__ import annotations

from collections import deque
from itertools import repeat, starmap, takewhile


class PartitionOffsets:
    """Outstanding and completed offsets of one partition, in fetch order."""

    __slots__ = ("_done", "_next", "_outstanding", "committed")

    def __init__(self) -> None:
        self._outstanding: deque[int] = deque()
        self._done: set[int] = set()
        self._next: int | None = None  # one past the last fetched offset
        # The last position handed to Kafka as committed (None: nothing committed by us yet).
        self.committed: int | None = None

    def track(self, offset: int) -> None:
        """A record was fetched. Offsets of one partition arrive in increasing order."""
        if self._next is not None and offset < self._next:
            raise ValueError(f"offset {offset} fetched after {self._next - 1}: fetch order must increase")
        self._outstanding.append(offset)
        self._next = offset + 1

    def track_many(self, offsets: list[int]) -> None:
        """Records at ``offsets`` (increasing) were fetched."""
        if not offsets:
            return
        if self._next is not None and offsets[0] < self._next:
            raise ValueError(f"offset {offsets[0]} fetched after {self._next - 1}: fetch order must increase")
        self._outstanding.extend(offsets)
        self._next = offsets[-1] + 1

    def done_many(self, offsets: list[int]) -> None:
        """``done`` for each of ``offsets``, in one go (the records of a run)."""
        outstanding = self._outstanding
        done = self._done
        count = len(offsets)
        if (
            count
            and len(outstanding) >= count
            and outstanding[0] == offsets[0]
            and outstanding[count - 1] == offsets[-1]
        ):
            # Pool and static runs: the run is the head of what is outstanding (both increase and
            # the run's offsets are all outstanding, so equal ends mean the same ``count`` offsets).
            _pop_left(outstanding, count)
        else:
            # Key mode's runs interleave (a partition's stretch split by worker): mark them done,
            # then drop the done prefix of the queue, all in C: ~130 ns per record against ~240 in
            # a loop over the offsets (issue #16).
            done.update(offsets)
        if done and outstanding and outstanding[0] in done:
            prefix = list(takewhile(done.__contains__, outstanding))
            _pop_left(outstanding, len(prefix))
            done.difference_update(prefix)

    def done(self, offset: int) -> None:
        """The record at ``offset`` is finished (handled, dead-lettered or deliberately skipped)."""
        outstanding = self._outstanding
        if outstanding and outstanding[0] == offset:
            outstanding.popleft()
            done = self._done
            while outstanding and outstanding[0] in done:
                done.discard(outstanding.popleft())
        else:
            self._done.add(offset)

    def position(self) -> int | None:
        """The offset to commit: the next record a new owner must process. None if nothing fetched."""
        if self._outstanding:
            return self._outstanding[0]
        return self._next

    def pending_commit(self) -> int | None:
        """The position if it moved past what was last committed, else None."""
        position = self.position()
        if position is None or position == self.committed:
            return None
        return position

    @property
    def outstanding(self) -> int:
        """How many fetched records are not done yet."""
        return len(self._outstanding)


def _pop_left(queue: deque[int], count: int) -> None:
    """Drop the first ``count`` items of ``queue`` in C (~35 ns each against ~80 in a loop)."""
    deque(starmap(queue.popleft, repeat((), count)), maxlen=0)
