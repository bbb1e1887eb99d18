"""Structured logging: one JSON object per line on stdout (or a readable console format).

Every line carries ``timestamp`` (ISO-8601, UTC), ``level`` and ``message``, plus whatever fields
were bound or passed. Each line is flushed as soon as it is written, so container log collectors see
it immediately even when stdout is a pipe.

Level filtering uses ``structlog.make_filtering_bound_logger``: a call below the configured level is a
method that just returns ``None``. A logger from ``get_logger`` after ``configure_logging`` keeps the
configuration of that moment (level and stream); one obtained before any configuration follows the
configuration current at each call (see ``get_logger``).

Standard ``logging`` (what the libraries a handler uses log through) joins the same stream: the root
logger gets a handler whose ``structlog.stdlib.ProcessorFormatter`` renders each record like our own
lines, at the same level, with ``logger`` naming its source. In a worker, ``bind_call_context`` adds
the worker's fields and, during a handler call, the event's ``topic``, ``partition`` and ``offset``.
Console colours are used only when the stream is a terminal.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any, TextIO, cast

import structlog
from structlog.typing import FilteringBoundLogger, Processor

__all__ = ["EVENT_FIELD_ALIAS", "LEVELS", "bind_call_context", "configure_logging", "get_logger"]

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# structlog's log methods take the message as a parameter called ``event``, so a field called
# ``event`` cannot be passed as a keyword. Pass it under this name instead; the renderer puts it back
# under ``event`` (the message itself goes to ``message``).
EVENT_FIELD_ALIAS = "_event"


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    try:
        return LEVELS[level.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}") from None


_LEADING_KEYS = ("timestamp", "level", "message")


def _leading_keys_first(_logger: Any, _method: str, event_dict: Any) -> Any:
    """Put timestamp, level and message first in each line, for people reading raw logs."""
    ordered = {key: event_dict.pop(key) for key in _LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


# For stdlib records: a callable returning the object being handled (anything with topic, partition
# and offset attributes, or None between calls). A context variable rather than a global, so that
# whoever binds it (the worker's event loop) decides which code sees it: tasks the handler starts
# inherit it, unrelated threads do not.
_CURRENT_EVENT: ContextVar[Callable[[], Any] | None] = ContextVar("streamworker_current_event", default=None)


def bind_call_context(fields: Mapping[str, Any], current_event: Callable[[], Any]) -> None:
    """In this context, stdlib log lines carry ``fields`` (e.g. function, worker, trigger) and, when
    ``current_event()`` returns an event, its topic, partition and offset.

    The worker calls this once; it then only swaps its current event per call, as for
    ``context.logger``, so the hot path pays nothing for it.
    """
    structlog.contextvars.bind_contextvars(**fields)
    _CURRENT_EVENT.set(current_event)


def _add_event_fields(_logger: Any, _method: str, event_dict: Any) -> Any:
    current = _CURRENT_EVENT.get()
    event = current() if current is not None else None
    if event is not None:
        event_dict.setdefault("topic", event.topic)
        event_dict.setdefault("partition", event.partition)
        event_dict.setdefault("offset", event.offset)
    return event_dict


def _add_logger_name(_logger: Any, _method: str, event_dict: Any) -> Any:
    record = event_dict.get("_record")
    if record is not None:
        event_dict["logger"] = record.name
    return event_dict


class _StdlibHandler(logging.Handler):
    """Writes formatted stdlib records to ``stream``, or to the ``sys.stdout`` of the moment (as
    structlog's loggers do, so output captured by swapping ``sys.stdout`` includes these lines)."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__()
        self._stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            out = self._stream if self._stream is not None else sys.stdout
            out.write(self.format(record) + "\n")
            out.flush()
        except Exception:
            self.handleError(record)


def _route_stdlib_logging(
    min_level: int, shared: list[Processor], renderer: list[Processor], stream: TextIO | None
) -> None:
    """Send every stdlib record at or above ``min_level`` through our renderer, replacing any
    handler an earlier ``configure_logging`` installed (and nobody else's)."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _add_logger_name, _add_event_fields, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )
    handler = _StdlibHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(min_level)


def _is_terminal(stream: TextIO | None) -> bool:
    out = stream if stream is not None else sys.stdout
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def configure_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Configure structlog for the whole process.

    ``level``: debug, info, warning (or warn), error, critical. ``fmt``: ``json`` (one object per
    line, the default) or ``console`` (human-readable, for a terminal). ``stream`` defaults to the
    ``sys.stdout`` of the moment a logger is created. Raises ``ValueError`` on an unknown level/format.
    """
    min_level = _level_number(level)
    fmt = fmt.strip().lower()
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]
    renderer: list[Processor]
    if fmt == "json":
        renderer = [
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("message", replace_by=EVENT_FIELD_ALIAS),
            _leading_keys_first,
            structlog.processors.JSONRenderer(),
        ]
    elif fmt == "console":
        renderer = [
            structlog.processors.EventRenamer("message", replace_by=EVENT_FIELD_ALIAS),
            structlog.dev.ConsoleRenderer(event_key="message", colors=_is_terminal(stream)),
        ]
    else:
        raise ValueError(f"unknown log format {fmt!r}; expected 'json' or 'console'")
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        context_class=dict,
        # WriteLogger writes the line and flushes the stream right away.
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(min_level, shared, renderer, stream)


def get_logger(**bound: Any) -> FilteringBoundLogger:
    """A logger with ``bound`` fields on every line.

    After ``configure_logging`` this is a concrete filtering logger: a call below the level costs a
    no-op method call. Before it (e.g. a module-level ``log = get_logger(...)`` run at import time)
    it is a lazy proxy that follows whatever configuration is current when it logs, at the price of
    assembling a logger on every call.
    """
    if structlog.is_configured():
        logger: FilteringBoundLogger = structlog.get_logger().bind(**bound)
        return logger
    return cast(FilteringBoundLogger, structlog.get_logger(**bound))
