"""Go-style durations and byte sizes as function.yaml spells them."""

from __future__ import annotations

import math

import pytest

from streamworker.config import format_byte_size, format_duration, parse_byte_size, parse_duration

GO_HINT = 'use Go-style like "250ms", "10s", "1m30s" or a number of seconds'


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("500us", 0.0005),
        ("500\u00b5s", 0.0005),  # micro sign
        ("500\u03bcs", 0.0005),  # Greek mu
        ("100ns", 1e-7),
        ("1h2m3.5s", 3723.5),
        ("2h45m", 9900.0),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("+3s", 3.0),
        ("0s", 0.0),
        (" 10s ", 10.0),
        ("5", 5.0),
        ("0.25", 0.25),
        ("0", 0.0),
    ],
)
def test_parse_duration_strings(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(("number", "seconds"), [(5, 5.0), (0, 0.0), (2.5, 2.5), (0.001, 0.001)])
def test_parse_duration_numbers_are_seconds(number: float, seconds: float) -> None:
    result = parse_duration(number)
    assert result == seconds
    assert isinstance(result, float)


def test_parse_duration_message_for_garbage() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("10x")
    assert str(info.value) == f"invalid duration '10x': {GO_HINT}"


@pytest.mark.parametrize(
    "text",
    ["", "   ", "s", "ms", "10 s", "1.2.3s", "1e3s", "10s5", "abc", "10sec", "1d", "1m30", "inf", "nan"],
)
def test_parse_duration_rejects_malformed_strings(text: str) -> None:
    with pytest.raises(ValueError, match=r"^invalid duration .*: use Go-style"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(-1, "-1"), (-0.5, "-0.5"), ("-1s", "'-1s'"), ("-5", "'-5'"), (" -250ms", "' -250ms'")],
)
def test_parse_duration_rejects_negatives(value: object, shown: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value) == f"invalid duration {shown}: must not be negative"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (True, "true (a boolean)"),
        (False, "false (a boolean)"),
        (None, "null"),
        ([1], "list [1]"),
        ({"s": 1}, "dict {'s': 1}"),
        (math.nan, "nan"),
        (math.inf, "inf"),
        (10**400, None),
    ],
)
def test_parse_duration_rejects_non_durations(value: object, shown: str | None) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value).endswith(GO_HINT)
    if shown is not None:
        assert str(info.value) == f"invalid duration {shown}: {GO_HINT}"


def test_parse_duration_rejects_overflowing_strings() -> None:
    with pytest.raises(ValueError, match="too large"):
        parse_duration("9" * 400 + "h")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (10.0, "10s"),
        (0.25, "250ms"),
        (0.5, "500ms"),
        (90.0, "1m30s"),
        (300.0, "5m"),
        (3600.0, "1h"),
        (3723.0, "1h2m3s"),
        (1.5, "1.5s"),
        (0.0005, "500us"),
        (1e-7, "100ns"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12)


def test_format_duration_rejects_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        format_duration(-1.0)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (1024, 1024),
        ("100", 100),
        ("100B", 100),
        ("512KiB", 512 * 1024),
        ("64MiB", 64 * 1024 * 1024),
        ("1.5GiB", 3 * 512 * 1024 * 1024),
        ("10MB", 10_000_000),
        ("2kb", 2000),
        ("10 mb", 10_000_000),
        (" 1GB ", 1_000_000_000),
    ],
)
def test_parse_byte_size(value: object, size: int) -> None:
    assert parse_byte_size(value) == size


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("lots", 'invalid size \'lots\': use a number of bytes or a size like "512KiB", "64MiB", "10MB"'),
        ("10XB", 'invalid size \'10XB\': use a number of bytes or a size like "512KiB", "64MiB", "10MB"'),
        ("", 'invalid size \'\': use a number of bytes or a size like "512KiB", "64MiB", "10MB"'),
        (
            True,
            'invalid size true (a boolean): use a number of bytes or a size like "512KiB", "64MiB", "10MB"',
        ),
        (1.5, 'invalid size 1.5: use a number of bytes or a size like "512KiB", "64MiB", "10MB"'),
        (-1, "invalid size -1: must not be negative"),
        ("-1MiB", "invalid size '-1MiB': must not be negative"),
        ("1.5", "invalid size '1.5': not a whole number of bytes"),
    ],
)
def test_parse_byte_size_rejects(value: object, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_byte_size(value)
    assert str(info.value) == problem


@pytest.mark.parametrize(
    ("size", "text"),
    [(64 * 1024 * 1024, "64MiB"), (512 * 1024, "512KiB"), (2 * 1024**3, "2GiB"), (1000, "1000")],
)
def test_format_byte_size_round_trips(size: int, text: str) -> None:
    assert format_byte_size(size) == text
    assert parse_byte_size(text) == size
