"""The handler-facing objects: Event decoding, Response/no-ack, QualifiedOffset, Logger output."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from streamworker.observability.logging import configure_logging, get_logger
from streamworker.records import new_event
from streamworker.worker.sdk import (
    NO_ACK_HEADER,
    Context,
    Event,
    FunctionCallsUnavailable,
    Logger,
    Platform,
    QualifiedOffset,
    Response,
    TriggerInfo,
    decode_strings_from_env,
    is_no_ack,
)

TRIGGER = TriggerInfo(kind="kafka-cluster", name="orders")


def wire(**overrides: Any) -> list[Any]:
    values: dict[str, Any] = {
        "seq": 7,
        "lane": 3,
        "topic": "orders",
        "partition": 3,
        "offset": 42,
        "key": b"user-1",
        "value": b'{"a": 1}',
        "headers": [["Content-Type", b"application/json"], ["trace", b"abc"]],
        "timestamp_ms": 1_700_000_000_123,
        "attempt": 1,
        "retry": False,
    }
    values.update(overrides)
    return new_event(**values)


def make(decode: bool = True, **overrides: Any) -> Event:
    return Event(wire(**overrides), TRIGGER, decode)


# -- Event -----------------------------------------------------------------------------------------


def test_event_fields_decoded() -> None:
    event = make()
    assert event.body == b'{"a": 1}'
    assert event.key == "user-1"
    # Header values are bytes, as Nuclio sends them (msgpack bin); names are decoded.
    assert event.headers == {"Content-Type": b"application/json", "trace": b"abc"}
    assert event.topic == "orders"
    assert event.path == "orders"
    assert event.partition == 3
    assert event.shard_id == 3
    assert event.offset == 42
    assert event.id == "orders/3/42"
    assert event.attempt == 1
    assert event.trigger is TRIGGER
    assert event.content_type == "application/json"
    assert event.method == ""
    assert event.url == ""
    assert event.fields == {}


def test_event_decode_off_keeps_bytes() -> None:
    event = make(decode=False)
    assert event.key == b"user-1"
    # As in Nuclio's raw msgpack mode: header names, topic and path are bytes too.
    assert event.headers == {b"Content-Type": b"application/json", b"trace": b"abc"}
    assert event.get_header("content-type") == event.get_header(b"CONTENT-TYPE") == b"application/json"
    assert event.content_type == b"application/json"
    assert event.path == b"orders"
    assert event.method == b""
    assert event.topic == b"orders"
    assert event.id == "orders/3/42"


def test_invalid_utf8_stays_bytes_and_never_raises() -> None:
    event = make(key=b"\xff\xfe", headers=[["bin", b"\xc3\x28"], ["ok", b"fine"]])
    assert event.key == b"\xff\xfe"
    assert event.headers == {"bin": b"\xc3\x28", "ok": b"fine"}
    assert event.get_header("BIN") == b"\xc3\x28"


def test_null_value_null_key_and_null_header() -> None:
    event = make(value=None, key=None, headers=[["tombstone", None]])
    assert event.body == b""
    assert event.key is None
    assert event.headers == {"tombstone": None}
    assert event.content_type == ""


def test_no_headers() -> None:
    empty: tuple[list[Any] | None, ...] = (None, [])
    for headers in empty:
        event = make(headers=headers)
        assert event.headers == {}
        assert event.header_list == []
        assert event.get_header("x") is None
        assert event.get_header("x", "dflt") == "dflt"


def test_duplicate_headers_last_wins_all_kept_in_list() -> None:
    event = make(headers=[["h", b"1"], ["other", b"x"], ["h", b"2"], ["H", b"3"]])
    assert event.headers["h"] == b"2"
    assert event.header_list == [("h", b"1"), ("other", b"x"), ("h", b"2"), ("H", b"3")]
    assert event.get_header("h") == b"3"  # case-insensitive, last one wins


def test_content_type_header_is_case_insensitive() -> None:
    assert make(headers=[["CONTENT-TYPE", b"text/csv"]]).content_type == "text/csv"
    assert make(headers=[["content-type", b"a/b"]]).get_header("Content-Type") == b"a/b"


def test_timestamp_is_naive_utc_with_ms_precision() -> None:
    ts = make(timestamp_ms=1_700_000_000_123).timestamp
    # Naive UTC, as Nuclio's utcfromtimestamp gives it, but keeping the milliseconds.
    assert ts == dt.datetime(2023, 11, 14, 22, 13, 20, 123_000)
    assert ts is not None and ts.tzinfo is None
    assert ts < dt.datetime.now(dt.UTC).replace(tzinfo=None)  # what datetime.utcnow() returns
    assert make(timestamp_ms=None).timestamp is None
    assert make(timestamp_ms=-1).timestamp is None


def test_event_is_mutable_like_nuclios() -> None:
    event = make(headers=[["X-Trace", b"abc"]])
    event.body = json.loads(event.body)
    event.anything = 1  # type: ignore[attr-defined]
    assert event.body == {"a": 1} and event.anything == 1  # type: ignore[attr-defined]
    # The other fields keep their values after the first assignment.
    assert (event.topic, event.offset, event.key, event.get_header("x-trace")) == (
        "orders",
        42,
        "user-1",
        b"abc",
    )
    event.headers = {"Replaced": b"yes"}
    assert event.get_header("replaced") == b"yes" and event.get_header("x-trace") is None
    event.offset = 7
    assert event.offset == 7


def test_event_create_for_handler_unit_tests() -> None:
    event = Event.create(b"x", key=b"k", headers={"a": b"b"}, topic="t", partition=2, offset=9)
    assert (event.body, event.key, event.headers, event.id) == (b"x", "k", {"a": b"b"}, "t/2/9")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, True),
        ("", True),
        ("yes", True),
        ("true", True),
        ("no", False),
        ("false", False),
        ("FALSE", False),
        (" Disable ", False),
        ("disabled", False),
    ],
)
def test_decode_strings_from_env(value: str | None, expected: bool) -> None:
    env = {} if value is None else {"NUCLIO_PYTHON_DECODE_EVENT_STRINGS": value}
    assert decode_strings_from_env(env) is expected


# -- Response / no-ack / QualifiedOffset -----------------------------------------------------------


def test_response_ensure_no_ack() -> None:
    response = Response(body="x")
    assert not is_no_ack(response)
    response.ensure_no_ack()
    assert response.headers[NO_ACK_HEADER] is True  # what nuclio-sdk sets
    assert is_no_ack(response)
    assert response.status_code == 200 and response.content_type == "text/plain"


class _ForeignResponse:
    """Stands for nuclio_sdk.Response: only the ``headers`` mapping matters."""

    def __init__(self, headers: dict[str, Any]) -> None:
        self.headers = headers


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (None, False),
        ("ok", False),
        (b"ok", False),
        ({"x-nuclio-stream-no-ack": True}, False),  # a dict body is not a response
        (_ForeignResponse({"X-Nuclio-Stream-No-Ack": True}), True),
        (_ForeignResponse({"x-nuclio-stream-no-ack": "TRUE"}), True),
        (_ForeignResponse({"x-nuclio-stream-no-ack": "false"}), False),
        (_ForeignResponse({"x-nuclio-stream-no-ack": False}), False),
        (_ForeignResponse({"other": "true"}), False),
        (_ForeignResponse({}), False),
    ],
)
def test_is_no_ack(result: object, expected: bool) -> None:
    assert is_no_ack(result) is expected


def test_qualified_offset_from_event() -> None:
    assert QualifiedOffset.from_event(make()) == QualifiedOffset("orders", 3, 42)
    assert QualifiedOffset.from_event(make(decode=False)) == QualifiedOffset("orders", 3, 42)


def test_platform_callbacks_and_acks() -> None:
    sent: list[tuple[str, int, int]] = []
    platform = Platform(lambda t, p, o: sent.append((t, p, o)))
    platform.explicit_ack_sync(QualifiedOffset("a", 1, 2))
    asyncio.run(platform.explicit_ack(QualifiedOffset.from_event(make())))
    assert sent == [("a", 1, 2), ("orders", 3, 42)]

    def first() -> None: ...
    def second() -> None: ...

    platform.set_drain_callback(first)
    platform.set_drain_callback(second)  # one of each kind, the last one wins
    assert platform.drain_callback is second
    platform.set_termination_callback(None)
    assert platform.termination_callback is None
    with pytest.raises(TypeError):
        platform.set_termination_callback(42)  # type: ignore[arg-type]

    local = Platform()  # outside a worker acks are just recorded
    local.explicit_ack_sync(QualifiedOffset("t", 0, 1))
    assert local.acks == [QualifiedOffset("t", 0, 1)]


def test_context_user_data_is_free_attribute_bag() -> None:
    context = Context(
        logger=Logger(get_logger()), platform=Platform(), worker_id=2, trigger=TRIGGER, function_name="f"
    )
    context.user_data.db = "conn"
    assert context.user_data.db == "conn"
    assert (context.worker_id, context.function_name, context.trigger.kind) == ("2", "f", "kafka-cluster")


# -- Logger ----------------------------------------------------------------------------------------


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("debug", stream=stream)
    yield stream
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_logger_with_fields_and_event_slot(log_stream: io.StringIO) -> None:
    logger = Logger(get_logger(worker=1, trigger="orders"))
    logger.info_with("plain", a=1, event="user-field")
    logger.current_event = make()
    logger.debug_with("in event", b="x")
    logger.warn("warned %s", "twice")
    logger.error_with("failed", topic="override")
    logger.current_event = None
    logger.info("after")

    out = lines(log_stream)
    assert [line["message"] for line in out] == ["plain", "in event", "warned twice", "failed", "after"]
    assert [line["level"] for line in out] == ["info", "debug", "warning", "error", "info"]
    first = out[0]
    assert first["a"] == 1 and first["event"] == "user-field"
    assert first["worker"] == 1 and first["trigger"] == "orders"
    assert "topic" not in first
    assert (out[1]["topic"], out[1]["partition"], out[1]["offset"], out[1]["b"]) == ("orders", 3, 42, "x")
    assert out[3]["topic"] == "override"  # explicit fields win over the event's
    assert "topic" not in out[4]
    ts = dt.datetime.fromisoformat(first["timestamp"].replace("Z", "+00:00"))
    assert ts.utcoffset() == dt.timedelta(0)
    assert list(first)[:3] == ["timestamp", "level", "message"]


def test_logger_bind_and_reserved_field_names(log_stream: io.StringIO) -> None:
    logger = Logger(get_logger(worker=1))
    logger.bind(team="orders", message="bound")  # nuclio-sdk's Logger.bind
    logger.info_with("with user fields", level="gold", timestamp="then", logger="mine")
    logger.info("plain")
    first, second = lines(log_stream)
    # The line's own level/timestamp/message are kept; the user's values are not lost either.
    assert (first["level"], first["message"]) == ("info", "with user fields")
    assert first["timestamp"] != "then"
    assert (first["_level"], first["_timestamp"], first["_logger"]) == ("gold", "then", "mine")
    assert (first["team"], first["_message"]) == ("orders", "bound")
    assert (second["message"], second["team"], second["_message"]) == ("plain", "orders", "bound")


def test_platform_call_function_and_namespace_exist_but_calls_fail_clearly() -> None:
    platform = Platform()
    assert platform.namespace == "default"
    with pytest.raises(FunctionCallsUnavailable, match=r"call_function\('other'\) is not available"):
        platform.call_function("other", Event.create(b"x"))


def test_response_takes_nuclio_sdks_positional_order() -> None:
    response = Response({"h": "1"}, "body", None, 201)
    assert (response.headers, response.body, response.content_type, response.status_code) == (
        {"h": "1"},
        "body",
        "text/plain",
        201,
    )


def test_logger_level_filtering() -> None:
    stream = io.StringIO()
    configure_logging("warning", stream=stream)
    try:
        logger = Logger(get_logger())
        logger.debug("no")
        logger.info_with("no")
        logger.warning("yes")
        logger.error_with("yes too")
        assert [line["message"] for line in lines(stream)] == ["yes", "yes too"]
    finally:
        structlog.reset_defaults()


def test_configure_logging_rejects_unknown_level_and_format() -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging("verbose")
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", fmt="xml")
    structlog.reset_defaults()


def test_console_format(log_stream: io.StringIO) -> None:
    stream = io.StringIO()
    configure_logging("info", fmt="console", stream=stream)
    Logger(get_logger(worker=5)).info_with("hello console", n=3)
    text = stream.getvalue()
    assert "hello console" in text and "n" in text and "worker" in text


def test_logger_obtained_before_configuration_follows_it() -> None:
    structlog.reset_defaults()
    early = get_logger(component="early")  # e.g. a module-level logger made at import time
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    try:
        early.debug("filtered")
        early.info("hello", n=1)
        (line,) = lines(stream)
        assert (line["message"], line["component"], line["n"]) == ("hello", "early", 1)
    finally:
        structlog.reset_defaults()


def test_context_response_is_the_sdk_response_as_in_nuclio_examples() -> None:
    from streamworker.worker.sdk import Context, Logger, Platform, Response, TriggerInfo, is_no_ack

    context = Context(
        logger=Logger(structlog.get_logger()),
        platform=Platform(None, kind="local", name="t"),
        worker_id=0,
        trigger=TriggerInfo(kind="kafka-cluster", name="t"),
    )
    reply = context.Response(body="ok", headers={}, content_type="text/plain", status_code=200)
    assert isinstance(reply, Response) and reply.body == "ok"
    reply.ensure_no_ack()
    assert is_no_ack(reply)
