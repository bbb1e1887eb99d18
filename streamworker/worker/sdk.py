"""The objects a handler sees, with Nuclio's names: ``Context``, ``Event``, ``Logger``, ``Platform``,
``TriggerInfo``, ``QualifiedOffset``, ``Response``.

A Nuclio handler ``handler(context, event)`` runs unchanged. Differences from Nuclio worth knowing:
``event.key`` exists (Nuclio has none), ``event.timestamp`` has millisecond precision, and
``event.attempt`` counts deliveries of the record (1 on the first).

``Event`` is built once per record, so it is a ``__slots__`` class that keeps the wire list and
decodes the key and headers lazily, on first access.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from structlog.typing import FilteringBoundLogger

from streamworker.observability.logging import EVENT_FIELD_ALIAS
from streamworker.records import (
    F_ATTEMPT,
    F_HEADERS,
    F_KEY,
    F_OFFSET,
    F_PARTITION,
    F_TIMESTAMP_MS,
    F_TOPIC,
    F_VALUE,
    new_event,
)
from streamworker.worker.outputs import make_output

__all__ = [
    "DECODE_ENV_VAR",
    "NO_ACK_HEADER",
    "AckSink",
    "Context",
    "Event",
    "FunctionCallsUnavailable",
    "Logger",
    "Platform",
    "QualifiedOffset",
    "Response",
    "TriggerInfo",
    "decode_strings_from_env",
    "is_no_ack",
]

DECODE_ENV_VAR = "NUCLIO_PYTHON_DECODE_EVENT_STRINGS"
_DECODE_OFF = frozenset({"no", "false", "disable", "disabled"})

# Nuclio's header for "handled, but do not commit this offset yet" (explicit ack mode).
NO_ACK_HEADER = "x-nuclio-stream-no-ack"
_FALSE_STRINGS = frozenset({"", "false", "0", "no", "off"})

# Nuclio's Python runtime gives naive UTC datetimes (datetime.utcfromtimestamp); so does streamworker.
_EPOCH = _dt.datetime(1970, 1, 1)


def decode_strings_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Nuclio's rule: event strings are decoded unless ``NUCLIO_PYTHON_DECODE_EVENT_STRINGS`` is
    ``no``, ``false``, ``disable`` or ``disabled`` (any case)."""
    env = os.environ if environ is None else environ
    return env.get(DECODE_ENV_VAR, "").strip().lower() not in _DECODE_OFF


@dataclass(frozen=True, slots=True)
class TriggerInfo:
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class QualifiedOffset:
    """A record's position, for ``await context.platform.explicit_ack(...)``."""

    topic: str
    partition: int
    offset: int

    @classmethod
    def from_event(cls, event: Any) -> QualifiedOffset:
        """From our ``Event`` or anything with ``topic``/``partition``/``offset`` (or Nuclio's
        ``path``/``shard_id``/``offset``)."""
        topic = getattr(event, "topic", None)
        if topic is None:
            topic = event.path
        partition = getattr(event, "partition", None)
        if partition is None:
            partition = event.shard_id
        return cls(topic=_as_str(topic), partition=int(partition), offset=int(event.offset))


def _as_str(value: str | bytes) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


class Response:
    """What a handler may return. For a stream trigger only the no-ack marker matters.

    The constructor is nuclio-sdk's: ``Response(headers=None, body=None, content_type=None,
    status_code=200, event_id=None)``, so positional calls written for Nuclio mean the same here.
    """

    def __init__(
        self,
        headers: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
        status_code: int = 200,
        event_id: Any = None,
    ) -> None:
        self.headers: dict[str, Any] = headers or {}
        self.body = body
        self.content_type = content_type or "text/plain"
        self.status_code = status_code
        self.event_id = event_id

    def ensure_no_ack(self) -> None:
        """Mark the event handled but not acknowledged: its offset is committed only once the
        function calls ``context.platform.explicit_ack`` for it (explicit ack mode)."""
        self.headers[NO_ACK_HEADER] = True

    def __repr__(self) -> str:
        return (
            f"Response(status_code={self.status_code!r}, content_type={self.content_type!r}, "
            f"headers={self.headers!r}, body={self.body!r})"
        )


def is_no_ack(result: object) -> bool:
    """True if ``result`` has a ``headers`` mapping with a true ``x-nuclio-stream-no-ack`` header
    (name compared case-insensitively; works for ``nuclio_sdk.Response`` too)."""
    if result is None:
        return False
    cls = type(result)
    if cls is str or cls is bytes or cls is dict or cls is tuple or cls is list or cls is int:
        return False
    headers = getattr(result, "headers", None)
    if not headers:
        return False
    try:
        items = headers.items()
    except AttributeError:
        return False
    for name, value in items:
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if isinstance(name, str) and name.lower() == NO_ACK_HEADER:
            return _truthy(value)
    return False


def _truthy(value: object) -> bool:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE_STRINGS
    return bool(value)


# Field names the log pipeline writes itself: a user field of that name would silently replace (or
# be replaced by) the line's own value, so it is logged with a leading underscore instead, as
# ``event`` already is (``_event``).
_RESERVED_FIELDS = ("level", "timestamp", "message", "logger")


class Logger:
    """Nuclio's logger API on top of a structlog logger.

    ``debug/info/warn/warning/error(msg, *args)`` (``%``-style args),
    ``debug_with/info_with/warn_with/error_with(msg, **fields)`` and ``bind(**fields)`` (fields added
    to every later line, as in nuclio-sdk). While the worker handles an event, ``current_event``
    points at it and every line also carries its ``topic``, ``partition`` and ``offset``; the worker
    sets that slot per event, so no logger is re-bound on the hot path. User fields named ``level``,
    ``timestamp``, ``message``, ``logger`` or ``event`` are logged as ``_level``, ``_timestamp``, ...
    """

    __slots__ = ("_bound", "_log", "current_event")

    def __init__(self, logger: FilteringBoundLogger) -> None:
        self._log = logger
        self._bound: dict[str, Any] = {}
        # Anything with topic/partition/offset attributes; None when no event is being handled.
        self.current_event: Any = None

    @property
    def structlog(self) -> FilteringBoundLogger:
        """The underlying structlog logger (without the per-event fields)."""
        return self._log

    def bind(self, **kv: Any) -> None:
        """Add ``kv`` to every later line of this logger (nuclio-sdk's ``Logger.bind``)."""
        self._bound.update(_renamed(kv))

    def _fields(self, kv: dict[str, Any]) -> dict[str, Any]:
        if kv:
            kv = _renamed(kv)
        ev = self.current_event
        if ev is None and not self._bound:
            return kv
        fields: dict[str, Any] = {}
        if ev is not None:
            fields["topic"] = _log_topic(ev)
            fields["partition"] = ev.partition
            fields["offset"] = ev.offset
        fields.update(self._bound)
        fields.update(kv)
        return fields

    def debug(self, message: str, *args: Any) -> None:
        self._log.debug(message, *args, **self._fields({}))

    def info(self, message: str, *args: Any) -> None:
        self._log.info(message, *args, **self._fields({}))

    def warn(self, message: str, *args: Any) -> None:
        self._log.warning(message, *args, **self._fields({}))

    warning = warn

    def error(self, message: str, *args: Any) -> None:
        self._log.error(message, *args, **self._fields({}))

    def exception(self, message: str, *args: Any) -> None:
        """``error`` with the traceback of the exception being handled."""
        self._log.error(message, *args, exc_info=True, **self._fields({}))

    def debug_with(self, message: str, *args: Any, **kv: Any) -> None:
        self._log.debug(message, *args, **self._fields(kv))

    def info_with(self, message: str, *args: Any, **kv: Any) -> None:
        self._log.info(message, *args, **self._fields(kv))

    def warn_with(self, message: str, *args: Any, **kv: Any) -> None:
        self._log.warning(message, *args, **self._fields(kv))

    warning_with = warn_with

    def error_with(self, message: str, *args: Any, **kv: Any) -> None:
        self._log.error(message, *args, **self._fields(kv))


def _renamed(kv: dict[str, Any]) -> dict[str, Any]:
    if "event" in kv:
        kv[EVENT_FIELD_ALIAS] = kv.pop("event")
    for name in _RESERVED_FIELDS:
        if name in kv:
            kv["_" + name] = kv.pop(name)
    return kv


def _log_topic(event: Any) -> Any:
    """The topic as a str for log lines, even when the handler sees it as bytes (decoding off)."""
    topic = getattr(event, "topic_name", None)
    return event.topic if topic is None else topic


# Called with (topic, partition, offset) for each explicit ack.
AckSink = Callable[[str, int, int], None]
# Called with (the event whose handling produced it, the output's wire list) for each produce().
OutputSink = Callable[[Any, list[Any]], None]


class FunctionCallsUnavailable(RuntimeError):
    """``context.platform.call_function`` on a stream worker: there is no Nuclio platform to call."""


class Platform:
    """``context.platform``: termination/drain callbacks and explicit acks.

    Like Nuclio, one callback of each kind is kept: setting one replaces the previous one (``None``
    clears it). Callbacks take no arguments and may be ``async``. ``call_function`` exists, as in
    nuclio-sdk, but raises ``FunctionCallsUnavailable``: a stream worker runs without a Nuclio
    platform, so there is no function to call by name.
    """

    def __init__(
        self,
        ack_sink: AckSink | None = None,
        *,
        kind: str = "local",
        name: str = "",
        namespace: str = "default",
    ) -> None:
        self.kind = kind
        # produce() (docs/outputs.md): the worker's sink (``set_output_sink``); without one, outputs
        # are recorded in ``outputs`` ([topic, key, value, headers, partition]).
        self._output_sink: OutputSink | None = None
        self.outputs: list[list[Any]] = []
        # The record produce() belongs to. A context variable, so that tasks a handler starts
        # inherit their record and can still produce while it is open (explicit acks).
        self._current_event: ContextVar[Any] = ContextVar("streamworker_current_event", default=None)
        self.name = name
        self.namespace = namespace
        self.termination_callback: Callable[[], Any] | None = None
        self.drain_callback: Callable[[], Any] | None = None
        self._ack_sink = ack_sink
        # Without a sink (a Platform made outside a worker, e.g. in a handler's unit test) acks are
        # recorded here.
        self.acks: list[QualifiedOffset] = []

    def call_function(
        self,
        function_name: str,
        event: Any = None,
        node: Any = None,
        timeout: Any = None,
        service_name_override: Any = None,
    ) -> Any:
        """nuclio-sdk's signature; always raises ``FunctionCallsUnavailable``."""
        raise FunctionCallsUnavailable(
            f"context.platform.call_function({function_name!r}) is not available on a streamworker "
            "stream worker: there is no Nuclio platform to route function calls; call the other "
            "service over HTTP (or produce a record to its topic) instead"
        )

    def set_termination_callback(self, callback: Callable[[], Any] | None) -> None:
        """Run ``callback()`` when the worker is told to stop, after the events it already has."""
        self.termination_callback = _check_callback(callback)

    def set_drain_callback(self, callback: Callable[[], Any] | None) -> None:
        """Run ``callback()`` when the worker is asked to drain (e.g. partitions being revoked)."""
        self.drain_callback = _check_callback(callback)

    async def explicit_ack(self, qualified_offset: QualifiedOffset) -> None:
        """Acknowledge records handled earlier with a no-ack response (Nuclio's API). By default
        (``explicitAckScope: cumulative``, as in Nuclio) it acknowledges every record of that
        partition up to ``offset`` that is waiting for an ack; see docs/coming-from-nuclio.md."""
        self.explicit_ack_sync(qualified_offset)

    def explicit_ack_sync(self, qualified_offset: QualifiedOffset) -> None:
        """``explicit_ack`` for sync handlers. Accepts a ``QualifiedOffset`` or an ``Event``."""
        topic = _as_str(qualified_offset.topic)
        partition = int(qualified_offset.partition)
        offset = int(qualified_offset.offset)
        if self._ack_sink is None:
            self.acks.append(QualifiedOffset(topic, partition, offset))
        else:
            self._ack_sink(topic, partition, offset)

    def produce(
        self,
        topic: str,
        value: bytes | str | dict[str, Any] | list[Any],
        *,
        key: bytes | str | None = None,
        headers: Mapping[str, str | bytes | None] | Iterable[tuple[str, str | bytes | None]] | None = None,
        partition: int | None = None,
    ) -> None:
        """Produce an output record for the record being handled (see docs/outputs.md).

        ``value``: bytes, str (UTF-8) or dict/list (JSON). The input is committed only once every
        output it produced is acknowledged by the broker; a failed delivery fails the input's
        attempt. Raises ``OutputError`` for a value that cannot be produced and ``RuntimeError``
        outside a record's handling.
        """
        event = self._current_event.get()
        if event is None:
            raise RuntimeError(
                "context.platform.produce() needs a record: call it from the handler, or from a task "
                "the handler started while its record is open (explicit acks)"
            )
        output = make_output(topic, value, key, headers, partition)
        if self._output_sink is None:
            self.outputs.append(output)
        else:
            self._output_sink(event, output)

    def set_output_sink(self, sink: OutputSink | None) -> None:
        """For the worker: where produce() sends outputs (None: record them in ``outputs``)."""
        self._output_sink = sink

    def set_current_event(self, event: Any) -> None:
        """For the worker: the record that produce() calls belong to from now on (None: none)."""
        self._current_event.set(event)

    def current_event_setter(self) -> Callable[[Any], object]:
        """For the worker's per-record loop: ``set_current_event`` without a Python call around it."""
        return self._current_event.set


def _check_callback(callback: Callable[[], Any] | None) -> Callable[[], Any] | None:
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    return callback


class Context:
    """``context``: what a handler gets besides the event. Handlers may set their own attributes
    on it; ``user_data`` is a free attribute bag meant for ``init_context``.

    As in Nuclio's Python runtime, ``worker_id`` is a str (the runtime passes it on the command line)
    and ``trigger_name`` repeats ``trigger.name``.
    """

    def __init__(
        self,
        *,
        logger: Logger,
        platform: Platform,
        worker_id: int | str,
        trigger: TriggerInfo,
        function_name: str = "",
        user_data: Any = None,
    ) -> None:
        self.logger = logger
        self.platform = platform
        self.worker_id = str(worker_id)
        self.trigger = trigger
        self.trigger_name = trigger.name
        self.function_name = function_name
        self.user_data: Any = SimpleNamespace() if user_data is None else user_data

    # Nuclio's examples build replies as ``context.Response(...)``.
    Response = Response


HeaderValue = str | bytes | None
HeaderName = str | bytes


def _decode(value: bytes) -> str | bytes:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def _name_text(name: HeaderName) -> str:
    return name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else name


class Event:
    """One Kafka record, as a handler sees it: Nuclio's fields with Nuclio's values for Kafka, plus
    streamworker's ``key``, ``partition``, ``attempt`` and ``header_list``.

    - ``body``: bytes (``b""`` for a null value). ``size`` is ``len(body)``.
    - ``headers``: name -> value, values always ``bytes`` (``None`` for a null value) as Nuclio
      sends them (msgpack bin), so ``.decode()`` works; for a repeated name the last value wins and
      ``header_list`` keeps all of them in order. ``get_header(name)`` is case-insensitive.
    - ``timestamp``: naive UTC ``datetime`` like Nuclio's (compare with ``datetime.utcnow()``), but
      with the record's millisecond precision; ``None`` for a record without timestamp.
    - ``topic``/``path``, ``shard_id``/``partition``, ``offset``, ``id`` (``"topic/partition/offset"``),
      ``trigger``; ``num_shards`` 0, ``type``/``type_version``/``version`` ``""``, ``method``/``url``
      ``""``, ``fields`` ``{}``, ``last_in_batch`` False: the values Nuclio's Kafka trigger sends.
    - ``content_type``: the ``content-type`` header's value, else ``""``.

    ``NUCLIO_PYTHON_DECODE_EVENT_STRINGS`` (on unless ``no``/``false``/``disable``/``disabled``):
    when on, the key, header names, ``topic``/``path``, ``content_type``, ``method`` and ``url`` are
    ``str`` (a key or header name that is not valid UTF-8 stays ``bytes``); when off they are
    ``bytes``, as in Nuclio. Header values are bytes either way.

    The event is mutable like Nuclio's (``event.body = json.loads(event.body)``, new attributes).
    It is built once per record, so it keeps the wire list and decodes lazily; the first assignment
    to one of its fields turns it into a plain attribute object (see ``_detach``).
    """

    __slots__ = ("__dict__", "_decode_strings", "_header_list", "_headers", "_w", "trigger")

    # Filled on first access (an unset slot raises AttributeError).
    _header_list: list[tuple[HeaderName, bytes | None]]
    _headers: dict[HeaderName, bytes | None]

    # Constant for Kafka records (Nuclio's AbstractEvent defaults).
    num_shards = 0
    type = ""
    type_version = ""
    version = ""
    last_in_batch = False

    def __init__(self, wire: list[Any], trigger: TriggerInfo, decode_strings: bool = True) -> None:
        self._w = wire
        self.trigger = trigger
        self._decode_strings = decode_strings

    @classmethod
    def create(
        cls,
        body: bytes | None = b"",
        *,
        key: bytes | None = None,
        headers: Iterable[tuple[str, bytes | None]] | Mapping[str, bytes | None] | None = None,
        topic: str = "topic",
        partition: int = 0,
        offset: int = 0,
        timestamp_ms: int | None = None,
        attempt: int = 1,
        trigger: TriggerInfo | None = None,
        decode_strings: bool = True,
    ) -> Event:
        """Build an event by hand, e.g. to unit-test a handler."""
        if headers is None:
            header_pairs = None
        elif isinstance(headers, Mapping):
            header_pairs = [[k, v] for k, v in headers.items()]
        else:
            header_pairs = [[k, v] for k, v in headers]
        wire = new_event(
            0, partition, topic, partition, offset, key, body, header_pairs, timestamp_ms, attempt
        )
        return cls(wire, trigger or TriggerInfo("kafka-cluster", "test"), decode_strings)

    # -- record fields ------------------------------------------------------------------------

    @property
    def body(self) -> Any:
        value: bytes | None = self._w[F_VALUE]
        return b"" if value is None else value

    @property
    def size(self) -> int:
        value: bytes | None = self._w[F_VALUE]
        return 0 if value is None else len(value)

    @property
    def key(self) -> str | bytes | None:
        key: bytes | None = self._w[F_KEY]
        if key is None or not self._decode_strings or not isinstance(key, bytes):
            return key
        return _decode(key)

    @property
    def topic(self) -> str | bytes:
        topic: str = self._w[F_TOPIC]
        return topic if self._decode_strings else topic.encode("utf-8")

    @property
    def topic_name(self) -> str:
        """The topic as a str whatever the decoding setting (for logs and acks)."""
        topic: str = self._w[F_TOPIC]
        return topic

    @property
    def partition(self) -> int:
        partition: int = self._w[F_PARTITION]
        return partition

    @property
    def shard_id(self) -> int:
        partition: int = self._w[F_PARTITION]
        return partition

    @property
    def offset(self) -> int:
        offset: int = self._w[F_OFFSET]
        return offset

    @property
    def attempt(self) -> int:
        attempt: int = self._w[F_ATTEMPT]
        return attempt

    @property
    def timestamp(self) -> _dt.datetime | None:
        ms = self._w[F_TIMESTAMP_MS]
        if ms is None or ms < 0:
            return None
        return _EPOCH + _dt.timedelta(milliseconds=ms)

    @property
    def id(self) -> str:
        w = self._w
        return f"{w[F_TOPIC]}/{w[F_PARTITION]}/{w[F_OFFSET]}"

    # -- headers --------------------------------------------------------------------------------

    @property
    def header_list(self) -> list[tuple[HeaderName, bytes | None]]:
        """Every header in record order, duplicates included."""
        try:
            return self._header_list
        except AttributeError:
            pass
        raw = self._w[F_HEADERS]
        pairs: list[tuple[HeaderName, bytes | None]] = []
        if raw:
            items = raw.items() if isinstance(raw, Mapping) else raw
            decode = self._decode_strings
            for name, value in items:
                if isinstance(name, bytes):
                    if decode:
                        name = _decode(name)
                elif not decode:
                    name = name.encode("utf-8", "surrogateescape")
                if isinstance(value, str):  # a hand-made event; the wire always carries bytes
                    value = value.encode("utf-8")
                pairs.append((name, value))
        self._header_list = pairs
        return pairs

    @property
    def headers(self) -> dict[HeaderName, bytes | None]:
        """Header name -> value (bytes); for a repeated name the last value wins."""
        try:
            return self._headers
        except AttributeError:
            pass
        headers = dict(self.header_list)
        self._headers = headers
        return headers

    def get_header(self, name: HeaderName, default: Any = None) -> Any:
        """The header's value, matching the name case-insensitively (last one wins)."""
        return _find_header(reversed(self.header_list), name, default)

    @property
    def content_type(self) -> str | bytes:
        value = self.get_header("content-type")
        if value is None:
            return "" if self._decode_strings else b""
        if self._decode_strings and isinstance(value, bytes):
            return _decode(value)
        text: str | bytes = value
        return text

    # -- Nuclio compatibility -------------------------------------------------------------------

    @property
    def path(self) -> str | bytes:
        topic: str = self._w[F_TOPIC]
        return topic if self._decode_strings else topic.encode("utf-8")

    @property
    def method(self) -> str | bytes:
        return "" if self._decode_strings else b""

    @property
    def url(self) -> str | bytes:
        return "" if self._decode_strings else b""

    @property
    def fields(self) -> dict[str, Any]:
        return {}

    def to_json(self) -> str:
        """nuclio-sdk's ``Event.to_json``: the public fields as JSON, bytes bodies in base64."""
        obj: dict[str, Any] = {name: getattr(self, name) for name in _PUBLIC_FIELDS}
        obj.update({name: value for name, value in vars(self).items() if not name.startswith("_")})
        obj["trigger"] = {"kind": self.trigger.kind, "name": self.trigger.name}
        if isinstance(obj["timestamp"], _dt.datetime):
            obj["timestamp"] = str(obj["timestamp"])
        if isinstance(obj["body"], bytes):
            obj["body"] = base64.b64encode(obj["body"]).decode("ascii")
        return json.dumps(obj, default=_json_default)

    def __repr__(self) -> str:
        body = self.body
        shown = body[:64] if isinstance(body, bytes) else body
        more = "..." if isinstance(body, bytes) and len(body) > 64 else ""
        return (
            f"Event(topic={self.topic!r}, partition={self.partition}, offset={self.offset}, "
            f"key={self.key!r}, body={shown!r}{more})"
        )

    # -- mutation -------------------------------------------------------------------------------

    def _detach(self) -> None:
        """Copy every field into the instance dict and become a ``_DetachedEvent``, whose fields
        are plain attributes. Only the first assignment pays for this; reading stays lazy and
        cheap for the (usual) handler that never assigns."""
        values = {name: getattr(self, name) for name in _PUBLIC_FIELDS}
        self.__dict__.update(values)
        self.__class__ = _DetachedEvent


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def _find_header(pairs: Iterable[tuple[HeaderName, Any]], name: HeaderName, default: Any) -> Any:
    wanted = _name_text(name).lower()
    for header_name, value in pairs:
        if _name_text(header_name).lower() == wanted:
            return value
    return default


# Fields a handler may read and assign; a property setter for each detaches the event first.
_PUBLIC_FIELDS = (
    "body",
    "size",
    "key",
    "topic",
    "partition",
    "shard_id",
    "offset",
    "attempt",
    "timestamp",
    "id",
    "header_list",
    "headers",
    "content_type",
    "path",
    "method",
    "url",
    "fields",
    "num_shards",
    "type",
    "type_version",
    "version",
    "last_in_batch",
)


def _make_setter(name: str) -> Callable[[Event, Any], None]:
    def set_field(self: Event, value: Any) -> None:
        self._detach()
        self.__dict__[name] = value

    return set_field


def _constant(value: Any) -> Callable[[Event], Any]:
    def get_field(self: Event) -> Any:
        return value

    return get_field


for _name in _PUBLIC_FIELDS:
    _current = Event.__dict__[_name]
    if isinstance(_current, property):
        setattr(Event, _name, _current.setter(_make_setter(_name)))
    else:  # a class-level constant: a property with a setter, so assignment detaches too
        setattr(Event, _name, property(_constant(_current), _make_setter(_name)))
del _name, _current


class _DetachedEvent(Event):
    """An event a handler assigned to: its fields live in the instance dict (see Event._detach)."""

    __slots__ = ()

    def get_header(self, name: HeaderName, default: Any = None) -> Any:
        # nuclio-sdk's get_header searches ``headers``, which the handler may have replaced.
        return _find_header(self.__dict__["headers"].items(), name, default)


# Class attributes without __set__ are shadowed by the instance dict, so each field reads and
# writes the value _detach copied there.
for _name in _PUBLIC_FIELDS:
    setattr(_DetachedEvent, _name, None)
del _name
