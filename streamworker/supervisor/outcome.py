"""How a trigger runner ends, and the error that ends it early."""

from __future__ import annotations

import enum


class Outcome(enum.IntEnum):
    """How a trigger runner ended; the CLI turns the worst one into the exit code."""

    CLEAN = 0
    FAILED = 1
    CONFIG_INVALID = 2
    HANDLER_LOAD_FAILED = 3


class FatalTriggerError(Exception):
    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
