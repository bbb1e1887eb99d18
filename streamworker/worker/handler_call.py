"""Calling user code the way a worker does, shared by the worker process and ``HandlerHarness``.

- ``call_maybe_async``: call a function (handler, init_context, drain or termination callback) and
  await what it returned if that is awaitable: plain and async handlers are both allowed.
- ``what_it_returned``: what a handler's return value means: a Response marked no-ack (explicit
  acks) leaves the record open, and the value (a Response's body) is the record's output to
  ``attributes.outputTopic``.

The worker's per-record loops inline ``call_maybe_async`` (a coroutine per record would cost more
than the call of a no-op handler); its contract is the one written here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from streamworker.worker.outputs import return_value_output
from streamworker.worker.sdk import is_no_ack


async def call_maybe_async(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    if result is not None and inspect.isawaitable(result):
        result = await result
    return result


def what_it_returned(
    result: Any, wire: list[Any], output_topic: str | None, headers_mode: str
) -> tuple[bool, list[Any] | None]:
    """(no_ack, output) for a handler's (awaited) return value ``result`` on the event ``wire``.

    ``no_ack``: the result is a Response marked no-ack, the record waits for an explicit ack.
    ``output``: the record's output to ``output_topic`` (None: no output topic, or nothing to
    produce). Raises ``OutputError`` when the value cannot be produced: a failed attempt.
    """
    if result is None:
        return False, None
    output = return_value_output(result, wire, output_topic, headers_mode) if output_topic else None
    return is_no_ack(result), output
