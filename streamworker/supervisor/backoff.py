"""Backoff delays for retried records and respawned workers, computed with tenacity.

The supervisor never sleeps: it schedules the next attempt at ``now + delay`` and keeps polling, so a
record waiting for its retry does not block the poll loop or any other partition. tenacity supplies
the exponential curve; we only add bounded proportional jitter so many failing partitions do not
retry in lock step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tenacity import RetryCallState, wait_exponential


@dataclass(frozen=True)
class Backoff:
    """Attempt n waits ``base * 2**(n-1)`` seconds, capped at ``cap``, plus up to ``jitter`` of it."""

    base: float
    cap: float
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1 = the first retry)."""
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        curve = wait_exponential(multiplier=self.base, min=0, max=self.cap)
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt
        delay = float(curve(state))
        return delay + self.rng.uniform(0.0, self.jitter * delay)
