"""The wire layouts of a record (an *event*) and of a *run*, defined once, with their builders.

Both are plain lists (msgpack arrays), not objects: building a dataclass per record would cost more
than the whole pipe transfer. Every module that makes or reads one (intake, dispatch, the worker,
the SDK's ``Event``, ``streamworker.testing``) uses the field positions and builders below.

Each item starts with its kind (``KIND_EVENT`` or ``KIND_RUN``), so a reader tells them apart by
that field, not by length; ``seq`` and ``lane`` come next in both, so code that only needs those
(cancelling a lane, reporting DEFERRED) reads either kind the same way.

- An **event** is one record: ``EVENT_FIELDS``. ``lane`` groups events that must run in order (a
  partition, or a key of a partition); ``retry`` marks the re-sent head of a lane after a failure,
  which lifts the worker's hold on that lane. The supervisor appends one element for itself,
  ``F_SIZE`` (key + value bytes, computed once at fetch for its buffer and window accounting); it
  travels on the wire too (one small int) and workers ignore it.
- A **run** is consecutive records of one partition as columns (same index = same record):
  ``RUN_FIELDS``. They share topic, partition, lane and retry flag; their attempt is 1. Timestamps
  are ms, -1 when the record has none (as librdkafka reports it), so the supervisor need not look at
  each one.
"""

from __future__ import annotations

from typing import Any

KIND_EVENT = 0
KIND_RUN = 1

EVENT_FIELDS = (
    "kind",
    "seq",
    "lane",
    "topic",
    "partition",
    "offset",
    "key",
    "value",
    "headers",
    "timestamp_ms",
    "attempt",
    "retry",
)
(
    F_KIND,
    F_SEQ,
    F_LANE,
    F_TOPIC,
    F_PARTITION,
    F_OFFSET,
    F_KEY,
    F_VALUE,
    F_HEADERS,
    F_TIMESTAMP_MS,
    F_ATTEMPT,
    F_RETRY,
) = range(len(EVENT_FIELDS))
F_SIZE = len(EVENT_FIELDS)

RUN_FIELDS = (
    "kind",
    "seq",
    "lane",
    "topic",
    "partition",
    "retry",
    "offsets",
    "keys",
    "values",
    "headers",
    "timestamps",
)
(
    R_KIND,
    R_SEQ,
    R_LANE,
    R_TOPIC,
    R_PARTITION,
    R_RETRY,
    R_OFFSETS,
    R_KEYS,
    R_VALUES,
    R_HEADERS,
    R_TIMESTAMPS,
) = range(len(RUN_FIELDS))

assert (F_KIND, F_SEQ, F_LANE) == (R_KIND, R_SEQ, R_LANE), "kind, seq and lane lead both layouts"

# Key mode: a run carries one more column, ``lanes``, each record's key lane. Its records may belong
# to many lanes: the worker runs them in order, defers only those of a lane it holds, and goes on
# after a failure (holding that record's lane), reporting such records one by one
# (``protocol.RESULT_RUN_EXCEPTIONS``).
R_LANES = len(RUN_FIELDS)


def record_size(key: bytes | None, value: bytes | None) -> int:
    """Key + value bytes of one record: what buffer and window limits count (``F_SIZE``)."""
    return (len(value) if value is not None else 0) + (len(key) if key is not None else 0)


def new_record(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Any,
    timestamp_ms: int | None,
    seq: int = 0,
    lane: Any = 0,
    attempt: int = 1,
    retry: bool = False,
) -> list[Any]:
    """A record as the supervisor keeps and sends it: an event plus its ``F_SIZE``."""
    record = new_event(seq, lane, topic, partition, offset, key, value, headers, timestamp_ms, attempt, retry)
    record.append(record_size(key, value))
    return record


def new_event(
    seq: int,
    lane: Any,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Any,
    timestamp_ms: int | None,
    attempt: int = 1,
    retry: bool = False,
) -> list[Any]:
    """An event as a worker reads it (no ``F_SIZE``): one record of a run, or a test's event."""
    return [
        KIND_EVENT,
        seq,
        lane,
        topic,
        partition,
        offset,
        key,
        value,
        headers,
        timestamp_ms,
        attempt,
        retry,
    ]


def new_run(
    seq: int,
    lane: Any,
    topic: str,
    partition: int,
    retry: bool,
    offsets: list[int],
    keys: list[Any],
    values: list[Any],
    headers: list[Any],
    timestamps: list[int],
) -> list[Any]:
    """A run as sent to a worker."""
    return [KIND_RUN, seq, lane, topic, partition, retry, offsets, keys, values, headers, timestamps]
