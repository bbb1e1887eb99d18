"""Human-friendly quantities in function.yaml: Go-style durations and byte sizes.

Nuclio writes durations the way Go's ``time.ParseDuration`` reads them ("250ms", "1m30s"), so users
copy those strings straight from their Nuclio configs. We also take plain numbers (seconds), because
that is what a YAML author writes when they do not think about units.
"""

from __future__ import annotations

import math
import re

# Seconds per unit. Both micro signs are listed: Go accepts U+00B5 (micro sign) and U+03BC (Greek mu),
# and which one a user's keyboard produces is luck.
_DURATION_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART = re.compile(rf"({_NUMBER})(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_DURATION = re.compile(rf"(?:{_NUMBER}(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h))+")
_PLAIN_NUMBER = re.compile(_NUMBER)

_DURATION_HINT = 'use Go-style like "250ms", "10s", "1m30s" or a number of seconds'

# Decimal and binary multiples; matched case-insensitively ("mb", "MiB", "KB" all work) because
# nobody agrees on the capitalisation and the i/no-i distinction is what carries the meaning.
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE = re.compile(rf"({_NUMBER})\s*([a-z]*)")
_SIZE_HINT = 'use a number of bytes or a size like "512KiB", "64MiB", "10MB"'


def _describe(value: object) -> str:
    """Show a value as the YAML author would recognise it."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if value is None:
        return "null"
    if isinstance(value, (str, int, float)):
        return repr(value)
    return f"{type(value).__name__} {value!r}"


def parse_duration(value: object) -> float:
    """Return ``value`` as seconds.

    Accepts Go-style duration strings ("250ms", "10s", "1m30s", "1.5h", "500us", "100ns"), plain
    non-negative ints/floats (seconds) and numeric strings ("5", "0.25"). Raises ``ValueError`` for
    negatives, booleans, empty strings, NaN/infinity and anything else.
    """
    # bool is an int subclass: `timeout: yes` must not silently mean one second.
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"invalid duration {_describe(value)}: {_DURATION_HINT}")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            seconds = math.inf
        if not math.isfinite(seconds):
            raise ValueError(f"invalid duration {_describe(value)}: {_DURATION_HINT}")
        if seconds < 0:
            raise ValueError(f"invalid duration {_describe(value)}: must not be negative")
        return seconds

    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"invalid duration {value!r}: must not be negative")
    text = text.removeprefix("+")
    if _PLAIN_NUMBER.fullmatch(text):
        seconds = float(text)
    elif not text or not _DURATION.fullmatch(text):
        raise ValueError(f"invalid duration {value!r}: {_DURATION_HINT}")
    else:
        seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(text))
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {value!r}: too large")
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds the way a user would write them in function.yaml ("10s", "250ms", "1m30s")."""
    if seconds < 0:
        raise ValueError(f"cannot format a negative duration: {seconds}")
    if seconds == 0:
        return "0s"
    if seconds < 1:
        millis = seconds * 1000
        if millis >= 1 and float(millis).is_integer():
            return f"{int(millis)}ms"
        micros = seconds * 1_000_000
        if micros >= 1 and round(micros, 6).is_integer():
            return f"{round(micros)}us"
        return f"{round(seconds * 1e9)}ns"
    if not float(seconds).is_integer():
        return f"{seconds:g}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts)


def parse_byte_size(value: object) -> int:
    """Return ``value`` as a whole number of bytes.

    Accepts non-negative ints and strings like "1048576", "512KiB", "64MiB", "10MB", "1.5GiB"
    (KB/MB/GB are powers of 1000, KiB/MiB/GiB powers of 1024). Raises ``ValueError`` otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"invalid size {_describe(value)}: {_SIZE_HINT}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {value!r}: must not be negative")
        return value
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"invalid size {value!r}: must not be negative")
    match = _SIZE.fullmatch(text.lower())
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise ValueError(f"invalid size {value!r}: {_SIZE_HINT}")
    number, unit = match.groups()
    size = float(number) * _SIZE_UNITS[unit]
    if not math.isfinite(size):
        raise ValueError(f"invalid size {value!r}: too large")
    if not size.is_integer():
        raise ValueError(f"invalid size {value!r}: not a whole number of bytes")
    return int(size)


def format_byte_size(size: int) -> str:
    """Render bytes with the largest binary unit that divides them exactly ("64MiB", "1000")."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)
