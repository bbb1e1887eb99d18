"""When the poll loop commits: every ``interval`` seconds, and at once when the workers ran dry with
something uncommitted (so a quiet trigger does not leave its last records uncommitted for up to a
second, or for as long as ``consume`` then blocks). Revoke and shutdown commit on their own,
synchronously (``consumer.commit_sync``). Pure: the clock comes in, a yes or no goes out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

COMMIT_INTERVAL_SECONDS = 1.0


@dataclass
class CommitCadence:
    interval: float = COMMIT_INTERVAL_SECONDS
    last: float = 0.0

    def interval_due(self, now: float) -> bool:
        """Checked on the loop's timer tick: the periodic commit. Counts as done when it says yes."""
        if now - self.last >= self.interval:
            self.last = now
            return True
        return False

    def ran_dry(self, now: float, inflight: int, uncommitted: Callable[[], bool]) -> bool:
        """Checked every pass: nothing in flight and something done but not committed (asked only
        when nothing is in flight: the loop's hot path skips it while workers are busy)."""
        if not inflight and uncommitted():
            self.last = now
            return True
        return False
