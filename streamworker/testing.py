"""Call a function's handler in-process, without a broker: ``HandlerHarness``.

The harness loads a function the way a worker process does (``load_config``, then ``load_handler``
with the function's folder first on ``sys.path``, ``spec.env`` in the environment, ``init_context``
once) and runs every call on one event loop that lives as long as the harness, as the worker's does.
It stands in for the supervisor, so what the supervisor adds is absent on purpose: there is no
retry, no ``eventTimeout`` and no offset commit; exceptions reach the test instead::

    from streamworker.testing import HandlerHarness

    def test_greets() -> None:
        with HandlerHarness("function.yaml") as harness:
            assert harness.call(b"world", key=b"user-1") == "hello world"
            assert harness.logs[-1].fields["key"] == "user-1"

Decisions, all visible through the API:

- ``spec.env`` (and the ``env`` argument) are set in ``os.environ`` before the handler module is
  imported, because module-level code and ``init_context`` read them; they are restored on
  ``close()``. The harness is a context manager for that reason. ``os.environ`` is process-wide, so
  harnesses must not be used from several threads at once.
- The handler's top-level package is imported afresh, like in a new worker process (two functions
  whose handler is ``main:handler`` do not share a module), and removed again on ``close()``
  together with every other module imported from the function's folder.
- One event loop for the harness's life: tasks a handler starts with ``asyncio.create_task`` keep
  running during later calls, and ``wait_for_tasks()`` runs the loop until they are done. Sync
  handlers are called from a coroutine on that loop, so ``asyncio.get_running_loop()`` works in them
  as it does in a worker.
- ``call()`` without ``offset`` takes the next offset of that topic-partition (0, 1, 2, ...), since a
  partition never delivers the same offset twice; an explicit offset moves the counter on from it.
  Without ``topic`` the trigger's first topic is used; without ``timestamp`` the current time.
- The trigger is the config's first one unless ``trigger=`` names another.
- ``context.platform.produce()`` and, with ``attributes.outputTopic``, non-None return values
  are recorded in ``outputs`` (``Output``), in order, as the worker would send them; a call that
  raises records nothing, as in a worker. Nothing is produced and nothing checks that a task's
  record is still open.
- Drain and termination callbacks run only when the test calls ``drain()`` / ``terminate()``; an
  exception in them propagates (a worker would log it and carry on).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from types import ModuleType, TracebackType
from typing import Any, TypeVar, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

from streamworker.config import FunctionConfig, LoadedConfig, TriggerConfig, load_config
from streamworker.observability.logging import EVENT_FIELD_ALIAS
from streamworker.worker.handler_call import call_maybe_async, what_it_returned
from streamworker.worker.loader import LoadedHandler, load_handler
from streamworker.worker.process import TASK_GRACE_S
from streamworker.worker.sdk import (
    Context,
    Event,
    Logger,
    Platform,
    QualifiedOffset,
    TriggerInfo,
    decode_strings_from_env,
)

__all__ = ["HandlerHarness", "HeaderValue", "Headers", "LogRecord", "Output", "Timestamp"]

T = TypeVar("T")

HeaderValue = str | bytes | None
Headers = Mapping[str, HeaderValue] | Iterable[tuple[str, HeaderValue]]
# A datetime (aware, or naive meaning UTC), epoch milliseconds (negative: the record has no
# timestamp), or None for "now".
Timestamp = _dt.datetime | int | None

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
_ONE_MS = _dt.timedelta(milliseconds=1)


@dataclass(frozen=True)
class LogRecord:
    """One line the handler logged through ``context.logger``.

    ``level`` is ``debug``, ``info``, ``warning`` or ``error``; ``message`` has ``%``-style arguments
    applied; ``fields`` holds what the worker's JSON line would carry besides timestamp, level and
    message: ``function``, ``worker``, ``trigger``, the current event's ``topic``, ``partition`` and
    ``offset`` (during a call), and the handler's own keyword fields.
    """

    level: str
    message: str
    fields: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class Output:
    """One record the handler produced (``produce()`` or its return value with outputTopic).

    ``value`` and ``key`` are the bytes a worker would produce (str as UTF-8, dict/list as JSON);
    ``partition`` None lets the producer pick; ``input`` is the id of the event that produced it.
    """

    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes | None]]
    partition: int | None
    input: str


def _capturing_logger(records: list[LogRecord], **bound: Any) -> FilteringBoundLogger:
    """A structlog logger that appends to ``records`` instead of writing anywhere.

    Built by hand rather than through ``structlog.configure`` so that the process-wide logging
    configuration (which the test runner or the application may own) is left alone.
    """

    def capture(_logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        fields = dict(event_dict)
        message = str(fields.pop("event", ""))
        level = str(fields.pop("level", method_name))
        if EVENT_FIELD_ALIAS in fields:  # the worker's renderer does the same rename
            fields["event"] = fields.pop(EVENT_FIELD_ALIAS)
        records.append(LogRecord(level=level, message=message, fields=fields))
        raise structlog.DropEvent

    logger = structlog.wrap_logger(
        structlog.ReturnLogger(),
        processors=[structlog.processors.add_log_level, capture],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        context_class=dict,
    )
    return cast(FilteringBoundLogger, logger.bind(**bound))


@dataclass
class _EnvironmentPatch:
    """Sets variables in ``os.environ`` and puts the previous values back."""

    saved: dict[str, str | None] = field(default_factory=dict)

    def apply(self, values: Mapping[str, str]) -> None:
        for name, value in values.items():
            if name not in self.saved:
                self.saved[name] = os.environ.get(name)
            os.environ[name] = value

    def restore(self) -> None:
        for name, previous in self.saved.items():
            if previous is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = previous
        self.saved.clear()


def _lives_under(module: ModuleType, folder: str) -> bool:
    """True if the module was loaded from ``folder`` (namespace packages count by their path)."""
    paths: list[str] = []
    file = getattr(module, "__file__", None)
    if isinstance(file, str):
        paths.append(file)
    else:
        paths.extend(p for p in getattr(module, "__path__", ()) if isinstance(p, str))
    prefix = folder.rstrip(os.sep) + os.sep
    return any(os.path.abspath(path).startswith(prefix) for path in paths)


@dataclass
class _ImportScope:
    """The ``sys.path`` / ``sys.modules`` changes of one harness, undone on ``restore``.

    A worker is a fresh process, so its handler package is always imported anew. Here the test
    process may already hold a module of the same name (another function's ``main``, or the test's
    own ``import main``); it is set aside while the harness lives and put back afterwards.
    """

    code_dir: str
    package: str  # the handler module's top-level package, e.g. "main" or "app"
    added_path: bool = False
    known: frozenset[str] = frozenset()
    set_aside: dict[str, ModuleType] = field(default_factory=dict)

    def _in_package(self, name: str) -> bool:
        return name == self.package or name.startswith(self.package + ".")

    def enter(self) -> None:
        self.added_path = self.code_dir not in sys.path
        self.known = frozenset(sys.modules)
        for name in [name for name in sys.modules if self._in_package(name)]:
            self.set_aside[name] = sys.modules.pop(name)

    def restore(self) -> None:
        for name, module in list(sys.modules.items()):
            if self._in_package(name) or (name not in self.known and _lives_under(module, self.code_dir)):
                del sys.modules[name]
        sys.modules.update(self.set_aside)
        self.set_aside.clear()
        if self.added_path and self.code_dir in sys.path:
            sys.path.remove(self.code_dir)


def _to_bytes(value: str | bytes | bytearray | memoryview | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)


def _header_pairs(headers: Headers | None) -> list[tuple[str, bytes | None]] | None:
    if headers is None:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(name, _to_bytes(value)) for name, value in items]


def _timestamp_ms(timestamp: Timestamp) -> int:
    if timestamp is None:
        return time.time_ns() // 1_000_000
    if isinstance(timestamp, _dt.datetime):
        if timestamp.tzinfo is None:  # naive means UTC, as in event.timestamp (Nuclio's convention)
            timestamp = timestamp.replace(tzinfo=_dt.UTC)
        return (timestamp - _EPOCH) // _ONE_MS
    if isinstance(timestamp, int) and not isinstance(timestamp, bool):
        return timestamp
    raise TypeError(f"timestamp must be a datetime, epoch milliseconds or None, got {timestamp!r}")


def _pick_trigger(config: FunctionConfig, name: str | None) -> TriggerConfig:
    if name is None:
        return config.triggers[0]
    for trigger in config.triggers:
        if trigger.name == name:
            return trigger
    known = ", ".join(repr(trigger.name) for trigger in config.triggers)
    raise ValueError(f"{config.path}: no trigger {name!r} (triggers: {known})")


class HandlerHarness:
    """A function loaded as a worker loads it, called directly by a test. See the module docstring.

    ``config_path``: the function.yaml. ``trigger``: which trigger's name and topics the events carry
    (default: the first). ``worker_id``: ``context.worker_id``. ``env``: extra environment variables,
    applied after ``spec.env`` and also used for ``${VAR}`` references in the file.

    Raises what loading raises: ``ConfigError``, ``HandlerLoadError``, or ``init_context``'s own
    exception; the environment and imports are restored first.
    """

    def __init__(
        self,
        config_path: str | os.PathLike[str],
        *,
        trigger: str | None = None,
        worker_id: int = 0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        extra_env = dict(env or {})
        self.logs: list[LogRecord] = []
        self.acks: list[QualifiedOffset] = []
        self.outputs: list[Output] = []
        self._call_outputs: list[Output] | None = None  # outputs of the call running now
        self._next_offset: dict[tuple[str, int], int] = {}
        self._environment = _EnvironmentPatch()
        self._imports: _ImportScope | None = None
        self._loop = asyncio.new_event_loop()
        self._terminated = False
        self._closed = False
        try:
            loaded: LoadedConfig = load_config(config_path, environ={**os.environ, **extra_env})
            self.config: FunctionConfig = loaded.config
            self.warnings: tuple[str, ...] = loaded.warnings
            self.trigger: TriggerConfig = _pick_trigger(self.config, trigger)
            self._environment.apply({**self.config.nuclio_env, **self.config.env, **extra_env})
            self.decode_strings = decode_strings_from_env(os.environ)
            self._trigger_info = TriggerInfo(kind=self.trigger.kind, name=self.trigger.name)
            self.context = Context(
                logger=Logger(
                    _capturing_logger(
                        self.logs, function=self.config.name, worker=worker_id, trigger=self.trigger.name
                    )
                ),
                platform=Platform(self._record_ack, kind="local", name="streamworker"),
                worker_id=worker_id,
                trigger=self._trigger_info,
                function_name=self.config.name,
            )
            self.context.platform.set_output_sink(self._record_output)
            code_dir = os.path.abspath(self.config.code_dir)
            self._imports = _ImportScope(code_dir, self.config.handler.module.split(".")[0])
            self._imports.enter()
            self.loaded: LoadedHandler = load_handler(code_dir, str(self.config.handler))
            self.module: ModuleType = sys.modules[self.loaded.module_name]
            init_context = self.loaded.init_context
            if init_context is not None:
                self._run(call_maybe_async(init_context, self.context))
        except BaseException:
            self.close()
            raise

    # -- context manager ------------------------------------------------------------------------

    def __enter__(self) -> HandlerHarness:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- events ---------------------------------------------------------------------------------

    def make_event(
        self,
        value: str | bytes | bytearray | memoryview | None = b"",
        *,
        key: str | bytes | None = None,
        headers: Headers | None = None,
        topic: str | None = None,
        partition: int = 0,
        offset: int | None = None,
        timestamp: Timestamp = None,
        attempt: int = 1,
    ) -> Event:
        """The ``Event`` a worker would build for such a record (``str`` values are UTF-8 encoded;
        ``value=None`` is a null value, which handlers see as ``b""``). Takes an offset as ``call``
        does."""
        if topic is None:
            topic = self.trigger.attributes.topics[0]
            if topic.startswith("^"):
                raise ValueError(f"the trigger subscribes to a pattern ({topic!r}); pass topic=...")
        if offset is None:
            offset = self._next_offset.get((topic, partition), 0)
        self._next_offset[(topic, partition)] = offset + 1
        return Event.create(
            _to_bytes(value),
            key=_to_bytes(key),
            headers=_header_pairs(headers),
            topic=topic,
            partition=partition,
            offset=offset,
            timestamp_ms=_timestamp_ms(timestamp),
            attempt=attempt,
            trigger=self._trigger_info,
            decode_strings=self.decode_strings,
        )

    def call(
        self,
        value: str | bytes | bytearray | memoryview | None = b"",
        *,
        key: str | bytes | None = None,
        headers: Headers | None = None,
        topic: str | None = None,
        partition: int = 0,
        offset: int | None = None,
        timestamp: Timestamp = None,
        attempt: int = 1,
    ) -> Any:
        """Run the handler on one record and return what it returned (awaited if it is async).

        The handler's exception propagates. ``offset=None``: the next offset of the topic-partition.
        ``topic=None``: the trigger's first topic. ``timestamp=None``: now; ``-1``: no timestamp.
        """
        event = self.make_event(
            value,
            key=key,
            headers=headers,
            topic=topic,
            partition=partition,
            offset=offset,
            timestamp=timestamp,
            attempt=attempt,
        )
        return self.call_event(event)

    def call_event(self, event: Event) -> Any:
        """Run the handler on an event built with ``make_event`` or ``Event.create``."""
        self._check_open("call the handler")
        if self._terminated:
            raise RuntimeError("the harness was terminated; a worker runs no events after that")
        handler = self.loaded.handler
        logger = self.context.logger
        logger.current_event = event  # as the worker does: log lines carry the record's position
        platform = self.context.platform
        outputs: list[Output] = []
        self._call_outputs = outputs

        def call() -> Any:
            platform.set_current_event(event)  # in the call's task: tasks it starts inherit it
            return handler(self.context, event)

        try:
            result = self._run(call_maybe_async(call))
            attributes = self.trigger.attributes
            _, output = what_it_returned(
                result, event._w, attributes.output_topic, attributes.output_headers.value
            )
            if output is not None:
                self._record_output(event, output)
            self.outputs.extend(outputs)
            return result
        finally:
            self._call_outputs = None
            logger.current_event = None

    # -- life cycle -----------------------------------------------------------------------------

    def drain(self) -> bool:
        """Run the drain callback, as a worker does when its partitions are revoked. False if none
        is set."""
        self._check_open("drain")
        return self._run_callback(self.context.platform.drain_callback)

    def terminate(self, grace: float = TASK_GRACE_S) -> bool:
        """Run the termination callback, then give background tasks ``grace`` seconds to finish
        before cancelling them, as a worker does on shutdown. No calls are accepted afterwards.
        False if no callback is set."""
        self._check_open("terminate")
        self._terminated = True
        ran = self._run_callback(self.context.platform.termination_callback)
        self._run(self._finish_tasks(grace))
        return ran

    def wait_for_tasks(self, timeout: float = 5.0) -> None:
        """Run the event loop until the handler's background tasks (and the tasks they start) are
        done. Raises ``TimeoutError`` if some are still running after ``timeout`` seconds."""
        self._check_open("wait for tasks")
        self._run(self._settle(timeout))

    def close(self) -> None:
        """Cancel remaining background tasks, close the loop, restore the environment and imports.
        Does not run the termination callback (``terminate()`` does). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self._loop.is_closed():
                try:
                    self._loop.run_until_complete(self._finish_tasks(0.0))
                    self._loop.run_until_complete(self._loop.shutdown_asyncgens())
                    self._loop.run_until_complete(self._loop.shutdown_default_executor())
                finally:
                    self._loop.close()
        finally:
            if self._imports is not None:
                self._imports.restore()
            self._environment.restore()

    # -- internals ------------------------------------------------------------------------------

    def _record_ack(self, topic: str, partition: int, offset: int) -> None:
        self.acks.append(QualifiedOffset(topic, partition, offset))

    def _record_output(self, event: Event, output: list[Any]) -> None:
        topic, key, value, headers, partition = output
        pairs = [(name, item) for name, item in headers] if headers else []
        record = Output(topic, value, key, pairs, partition, event.id)
        # During a call: kept until it returns (dropped if it raises); from a task later: at once.
        (self.outputs if self._call_outputs is None else self._call_outputs).append(record)

    def _check_open(self, action: str) -> None:
        if self._closed:
            raise RuntimeError(f"cannot {action}: the harness is closed")

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._loop.run_until_complete(coroutine)
        coroutine.close()
        raise RuntimeError(
            "HandlerHarness runs the handler on its own event loop; use it from a plain (non-async) test"
        )

    def _run_callback(self, callback: Callable[[], Any] | None) -> bool:
        if callback is None:
            return False
        self._run(call_maybe_async(callback))
        return True

    @staticmethod
    def _background_tasks() -> set[asyncio.Task[Any]]:
        current = asyncio.current_task()
        return {task for task in asyncio.all_tasks() if task is not current}

    async def _settle(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Loop because a finishing task may start another one.
        while tasks := self._background_tasks():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{len(tasks)} background task(s) still running after {timeout}s")
            await asyncio.wait(tasks, timeout=remaining)

    async def _finish_tasks(self, grace: float) -> None:
        """The worker's shutdown rule: ``grace`` seconds to finish, then cancellation."""
        tasks = self._background_tasks()
        if not tasks:
            return
        pending = tasks
        if grace > 0:
            _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            # Bounded: a task that swallows cancellation must not hang the test run.
            await asyncio.wait(pending, timeout=0.5)
