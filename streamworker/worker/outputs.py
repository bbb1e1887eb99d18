"""Outputs a handler produces: validation and the wire form the worker sends to the supervisor.

An output is a plain list ``[topic, key, value, headers, partition]`` (``protocol.OUTPUT_FIELDS``):
``key`` bytes or None, ``value`` bytes, ``headers`` a list of ``[name, bytes | None]`` or None,
``partition`` an int or None (None: the producer's partitioner picks one from the key).

Everything here is pure and raises ``OutputError`` (a ``TypeError``/``ValueError`` subclass would
hide the cause) with a message saying which value could not be produced and why.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from streamworker.records import F_HEADERS, F_KEY

__all__ = ["OutputError", "make_output", "return_value_output"]

# outputHeaders: which headers of the input a return-value output carries.
HEADERS_COPY = "copy"


class OutputError(Exception):
    """A value, key or header given for an output cannot be produced."""


def encode_value(value: object, what: str = "value") -> bytes:
    """bytes as they are, str as UTF-8, dict/list as compact JSON."""
    cls = type(value)
    if cls is bytes:
        return value  # type: ignore[return-value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (dict, list)):
        try:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise OutputError(f"output {what} is a {cls.__name__} that is not valid JSON: {exc}") from exc
    raise OutputError(f"output {what} must be bytes, str, dict or list, got {cls.__name__}")


def encode_key(key: object) -> bytes | None:
    if key is None:
        return None
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    if isinstance(key, str):
        return key.encode("utf-8")
    raise OutputError(f"output key must be bytes, str or None, got {type(key).__name__}")


def encode_headers(headers: object) -> list[list[Any]] | None:
    """A mapping or an iterable of (name, value) pairs; values bytes, str or None."""
    if headers is None:
        return None
    items: Iterable[Any] = headers.items() if isinstance(headers, Mapping) else headers  # type: ignore[assignment]
    pairs: list[list[Any]] = []
    try:
        for name, value in items:
            if not isinstance(name, str):
                raise OutputError(f"output header names must be str, got {type(name).__name__}")
            if value is not None and not isinstance(value, bytes):
                if not isinstance(value, str):
                    raise OutputError(
                        f"output header {name!r} must be bytes, str or None, got {type(value).__name__}"
                    )
                value = value.encode("utf-8")
            pairs.append([name, value])
    except (TypeError, ValueError) as exc:
        raise OutputError(f"output headers must be a mapping or (name, value) pairs: {exc}") from exc
    return pairs or None


def make_output(
    topic: object, value: object, key: object = None, headers: object = None, partition: object = None
) -> list[Any]:
    """The wire form of one ``produce()`` call (see the module docstring)."""
    if not isinstance(topic, str) or not topic:
        raise OutputError(f"output topic must be a non-empty str, got {topic!r}")
    if partition is not None and (type(partition) is not int or partition < 0):
        raise OutputError(f"output partition must be a non-negative int or None, got {partition!r}")
    return [topic, encode_key(key), encode_value(value), encode_headers(headers), partition]


def return_value_output(result: object, wire: list[Any], topic: str, headers_mode: str) -> list[Any] | None:
    """The output for a handler's return value (``attributes.outputTopic``), or None for none.

    A Response (anything with a ``body`` and ``status_code``, like nuclio_sdk's) contributes its
    body; a None body, like a None return, produces nothing. The output has the input's key and,
    with ``outputHeaders: copy``, the input's headers.
    """
    if result is None:
        return None
    if hasattr(result, "status_code") and hasattr(result, "body"):
        result = result.body
        if result is None:
            return None
    try:
        value = encode_value(result, "(the handler's return value)")
    except OutputError as exc:
        raise OutputError(f"{exc}; it cannot be produced to outputTopic {topic!r}") from None
    headers = wire[F_HEADERS] if headers_mode == HEADERS_COPY else None
    if headers:
        headers = [[str(name), item] for name, item in headers]
    return [topic, wire[F_KEY], value, headers or None, None]
