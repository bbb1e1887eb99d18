"""The failure policy alone: an attempt number in, an Action out."""

from __future__ import annotations

from streamworker.config.model import OnError
from streamworker.supervisor.failure_policy import Action, FailurePolicy


def test_retries_then_the_on_error_action() -> None:
    for on_error, final in [
        (OnError.SKIP, Action.SKIP),
        (OnError.STOP, Action.STOP),
        (OnError.DEADLETTER, Action.DEAD_LETTER),
    ]:
        policy = FailurePolicy(max_retries=2, on_error=on_error, delay=lambda n: 0.1 * n)
        assert [policy.decide(attempt) for attempt in (1, 2, 3, 4)] == [
            Action.RETRY,
            Action.RETRY,
            final,
            final,
        ]


def test_no_retries_goes_straight_to_on_error() -> None:
    policy = FailurePolicy(max_retries=0, on_error=OnError.SKIP, delay=lambda n: 0.0)
    assert policy.decide(1) is Action.SKIP


def test_actions_keep_their_plain_names() -> None:
    """Logs, metrics and the tests read them as strings."""
    assert [str(a) for a in Action] == ["retry", "skip", "stop", "deadletter"]
