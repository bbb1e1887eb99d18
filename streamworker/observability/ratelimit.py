"""Keep a broker outage readable: repeated client errors become one line, then a count per interval.

With its brokers unreachable librdkafka reports every failed connect (several per second), once as a
``FAIL`` log line and once through the error callback (its ``rd_kafka_broker_fail`` does both).
``RepeatLimiter`` writes the first line of each kind, swallows the repeats, and writes one summary
line per kind and interval with how many it swallowed. A kind quiet for a whole interval starts over:
its next line is written in full. A ``FAIL`` log line is never written itself, only counted: the
error callback's line for the same failure follows it at once and is the one with the error code.
Fatal errors are never held back. The health endpoints carry the ongoing state (/ready stays 503
while the group cannot be joined).

The decision (``RepeatCounter``) is pure and takes the time as an argument; ``RepeatLimiter`` wraps
it around a structlog logger.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_REPEAT_INTERVAL",
    "REPEAT_INTERVAL_ENV",
    "RepeatCounter",
    "RepeatLimiter",
    "Summary",
    "repeat_key",
]

DEFAULT_REPEAT_INTERVAL = 10.0
REPEAT_INTERVAL_ENV = "STREAMWORKER_LOG_REPEAT_INTERVAL"

# librdkafka's log lines start with "FAC [client-id] [thrd:...]: "; the error callback's text is the
# rest. Digits vary between repeats (ports, "after 3ms", "1/3 brokers"), so they do not make a kind.
_LIBRDKAFKA_PREFIX = re.compile(r"^[A-Z_]+ \[[^\]]*\] \[thrd:[^\]]*\]: ")
_LIBRDKAFKA_FAIL = re.compile(r"^FAIL \[[^\]]*\] \[thrd:")
_DIGITS = re.compile(r"\d+")


def repeat_key(text: str) -> str:
    """What makes two client messages "the same" for rate limiting."""
    return _DIGITS.sub("#", _LIBRDKAFKA_PREFIX.sub("", text))


@dataclass(frozen=True)
class Summary:
    key: str
    example: str  # the last text of that kind
    suppressed: int  # lines not written in the interval
    seconds: float  # how long the interval was


@dataclass
class _Window:
    started: float
    example: str
    suppressed: int = 0


@dataclass
class RepeatCounter:
    """Which messages to write; summaries of what was held back. Not thread-safe on its own."""

    interval: float = DEFAULT_REPEAT_INTERVAL
    _windows: dict[str, _Window] = field(default_factory=dict)

    def due(self, now: float) -> list[Summary]:
        """Summaries of the windows that ended by ``now``; a window with repeats starts again."""
        summaries: list[Summary] = []
        for key, window in list(self._windows.items()):
            if now - window.started < self.interval:
                continue
            if window.suppressed:
                summaries.append(Summary(key, window.example, window.suppressed, now - window.started))
                self._windows[key] = _Window(started=now, example=window.example)
            else:
                del self._windows[key]  # quiet for a whole interval: the next one is news again
        return summaries

    def offer(self, text: str, now: float, *, may_write: bool = True) -> bool:
        """True: write this message; False: counted towards the next summary of its kind.

        ``may_write=False``: a duplicate of a message another source writes; counted while its kind
        is being summarised, otherwise dropped (the other source's line opens the kind).
        """
        key = repeat_key(text)
        window = self._windows.get(key)
        if window is None:
            if not may_write:
                return False
            self._windows[key] = _Window(started=now, example=text)
            return True
        window.suppressed += 1
        window.example = text
        return False


@dataclass
class RepeatLimiter:
    """A stand-in for a structlog logger's ``warning`` that holds back repeats (see the module doc).

    The kind of a line is taken from the first of ``text_fields`` it has (the error callback's
    ``error``, the forwarded librdkafka line's ``detail``).
    """

    log: Any  # a structlog logger
    interval: float = DEFAULT_REPEAT_INTERVAL
    text_fields: tuple[str, ...] = ("error", "detail")
    clock: Callable[[], float] = time.monotonic
    _counter: RepeatCounter = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self._counter = RepeatCounter(self.interval)

    @classmethod
    def from_environ(cls, log: Any, environ: Mapping[str, str] | None = None) -> RepeatLimiter:
        """The interval from ``$STREAMWORKER_LOG_REPEAT_INTERVAL`` (seconds; 0 turns limiting off)."""
        env = os.environ if environ is None else environ
        raw = env.get(REPEAT_INTERVAL_ENV, "").strip()
        try:
            interval = float(raw) if raw else DEFAULT_REPEAT_INTERVAL
        except ValueError:
            interval = DEFAULT_REPEAT_INTERVAL
        return cls(log, interval=max(0.0, interval))

    def warning(self, message: str, **fields: Any) -> None:
        text = next((str(fields[name]) for name in self.text_fields if name in fields), message)
        if fields.get("fatal") is True or self.interval <= 0:
            self.log.warning(message, **fields)
            return
        duplicate = "detail" in fields and _LIBRDKAFKA_FAIL.match(text) is not None
        with self._lock:
            now = self.clock()
            summaries = self._counter.due(now)
            write = self._counter.offer(text, now, may_write=not duplicate)
        for summary in summaries:
            self._write_summary(summary)
        if write:
            self.log.warning(message, **fields)

    def flush(self) -> None:
        """Write the summaries whose interval has ended (callers with a timer may use this)."""
        with self._lock:
            summaries = self._counter.due(self.clock())
        for summary in summaries:
            self._write_summary(summary)

    def _write_summary(self, summary: Summary) -> None:
        self.log.warning(
            "kafka client messages repeated",
            repeated=summary.suppressed,
            seconds=round(summary.seconds, 1),
            last=summary.example,
        )
