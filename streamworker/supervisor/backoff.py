"""Backoff delays for retried records and respawned workers.

The supervisor never sleeps: it schedules the next attempt at ``now + delay`` and keeps polling, so a
record waiting for its retry does not block the poll loop or any other partition. That is why this is
a plain formula and not tenacity: tenacity earns its place where a call is retried by sleeping in
place, and computing one of its wait curves outside a retry loop needs its semi-internal
``RetryCallState``. We add bounded proportional jitter so many failing partitions do not retry in
lock step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


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
        # Stop doubling once past the cap: 2**attempt for a huge attempt count would overflow a float.
        delay = self.cap if attempt > 64 else min(self.cap, self.base * 2.0 ** (attempt - 1))
        delay = max(0.0, delay)
        return delay + self.rng.uniform(0.0, self.jitter * delay)
