"""The one way the supervisor waits: keep stepping (part of) the loop's work until a condition holds
or a deadline passes. Revoke, shutdown, start-up and the drain all wait like this; what differs is
the step (which workers' frames to read, whether to dispatch, serve outputs...), passed in."""

from __future__ import annotations

import time
from collections.abc import Callable

# Longest a single step may block (in ``select`` on the worker pipes) before the condition is
# checked again.
STEP_SECONDS = 0.05


def step_until(
    done: Callable[[], bool],
    deadline: float,
    step: Callable[[float], None],
    max_wait: float = STEP_SECONDS,
) -> bool:
    """Call ``step(wait)`` until ``done()`` or ``deadline`` (monotonic); True when ``done()`` held.

    ``wait`` is how long the step may block: ``max_wait``, or less when the deadline is nearer.
    """
    while not done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        step(min(max_wait, remaining))
    return True
