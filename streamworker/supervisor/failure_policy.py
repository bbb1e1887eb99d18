"""What happens to a record whose attempt failed: retry it after a backoff, or apply onError.

Pure: ``FailurePolicy.decide`` turns an attempt number into an ``Action``; the dispatcher carries out
the bookkeeping (``Dispatcher._fail``) and the runner the I/O (log, pause, dead-letter produce).
Failed attempts come from the handler (an exception, an error status), from a worker that died
running the record, from an explicit ack that never came (ackTimeout) and from outputs that could
not be delivered: all of them are decided here, the same way.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamworker.config.model import OnError


class Action(enum.StrEnum):
    """The decision for one failed attempt (a StrEnum: logs and metrics keep the plain names)."""

    RETRY = "retry"  # run it again after ``Failure.retry_in`` seconds
    SKIP = "skip"  # retries used up: count it done (logged and counted)
    STOP = "stop"  # retries used up: stop its partition until restart
    DEAD_LETTER = "deadletter"  # retries used up: produce it to deadLetterTopic, then count it done


_FINAL = {OnError.SKIP: Action.SKIP, OnError.STOP: Action.STOP, OnError.DEADLETTER: Action.DEAD_LETTER}


@dataclass(frozen=True)
class FailurePolicy:
    """Retry a failed record ``max_retries`` times, waiting ``delay(n)`` before retry n; then ``on_error``."""

    max_retries: int
    on_error: OnError
    delay: Callable[[int], float]

    def decide(self, attempt: int) -> Action:
        """The action for a failure of attempt number ``attempt`` (1 = the first run)."""
        return Action.RETRY if attempt <= self.max_retries else _FINAL[self.on_error]


@dataclass(frozen=True)
class Failure:
    """A failed attempt and what was decided for it, for the runner to carry out, log and count."""

    record: list[Any]
    error_type: str
    error_message: str
    action: Action
    retry_in: float = 0.0  # seconds, for Action.RETRY
