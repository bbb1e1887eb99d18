"""Structured logging: one JSON object per line on stdout (or a readable console format).

Every line carries ``timestamp`` (ISO-8601, UTC), ``level`` and ``message``, plus whatever fields
were bound or passed. Each line is flushed as soon as it is written, so container log collectors see
it immediately even when stdout is a pipe.

Level filtering uses ``structlog.make_filtering_bound_logger``: a call below the configured level is a
method that just returns ``None``. A logger from ``get_logger`` after ``configure_logging`` keeps the
configuration of that moment (level and stream); one obtained before any configuration follows the
configuration current at each call (see ``get_logger``).
"""

from __future__ import annotations

import logging
from typing import Any, TextIO, cast

import structlog
from structlog.typing import FilteringBoundLogger, Processor

__all__ = ["EVENT_FIELD_ALIAS", "LEVELS", "configure_logging", "get_logger"]

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
            structlog.dev.ConsoleRenderer(event_key="message"),
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
