from __future__ import annotations

import random

import pytest

from streamworker.supervisor.backoff import Backoff


def test_delay_doubles_and_caps_with_bounded_jitter() -> None:
    backoff = Backoff(base=0.5, cap=3.0, jitter=0.2, rng=random.Random(1))
    expected = [0.5, 1.0, 2.0, 3.0, 3.0]
    for attempt, base in enumerate(expected, start=1):
        delay = backoff.delay(attempt)
        assert base <= delay <= base * 1.2 + 1e-9


def test_no_jitter_is_exact() -> None:
    backoff = Backoff(base=0.25, cap=10.0, jitter=0.0)
    assert [backoff.delay(n) for n in (1, 2, 3)] == [0.25, 0.5, 1.0]


def test_attempt_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Backoff(0.1, 1.0).delay(0)
