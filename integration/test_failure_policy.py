"""Failure policy end to end (issue #4): retries with backoff, the dead-letter topic, onError stop and
skip, explicit acks, and crashes / eventTimeouts counted as failed attempts.

Every test runs the real ``python -m streamworker`` against a real broker. The handler (``HANDLER``)
takes its orders from the record's JSON body and records every step in a *ledger*: a JSON-lines file
whose path comes from ``spec.env`` (``LEDGER``), one ``os.write`` per line on an ``O_APPEND``
descriptor, so lines of different worker processes never interleave. ``time.monotonic`` is shared by
every process on the machine, so ledger lines of different workers can be ordered by ``mono``.

Body fields: ``id``; ``fail`` (fail attempts 1..n, or ``"always"``) and ``how`` (``raise`` a
``PoisonError`` with ``message``, ``crash``: ``os._exit`` after 0.25 s, ``hang``: sleep 60 s);
``ack`` (explicit acks to send: ``[[topic, partition, offset], ...]``), ``ack_self`` (ack this
record from inside its handler; ``ACK_ALL=1`` in the process environment does it for every record)
and ``no_ack`` (return a no-ack response). ``main:handler`` is a plain function using
``explicit_ack_sync`` and streamworker's ``Response``; ``main:async_handler`` a coroutine using
``await explicit_ack`` and ``nuclio_sdk.Response``.

Group rules from ``/work/shared/notes/broker.md``: unique topic and group per test, the quick
timeout profile for every member of a group, end offsets from delivery reports, topics never
deleted. ``fetch.wait.max.ms: 100`` because Tansu answers a waiting fetch only when it runs out.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from devtools.broker import (
    Record,
    committed_offsets,
    create_topics,
    die_with_parent_preexec_fn,
    free_port,
    produce,
    resolve_tansu_binary,
)
from streamworker.config.durations import parse_duration

HANDLER = """
import asyncio
import json
import os
import time

import nuclio_sdk

from streamworker.worker.sdk import QualifiedOffset, Response

LEDGER = os.environ["LEDGER"]
INSTANCE = os.environ.get("INSTANCE", "")
ACK_ALL = os.environ.get("ACK_ALL") == "1"


def write(kind, context, event, **fields):
    entry = {
        "kind": kind,
        "instance": INSTANCE,
        "trigger": context.trigger.name,
        "pid": os.getpid(),
        "worker_id": int(context.worker_id),  # a str, as in Nuclio
        "mono": time.monotonic(),
        "wall": time.time(),
        "topic": event.topic,
        "partition": event.partition,
        "offset": event.offset,
        "attempt": event.attempt,
        **fields,
    }
    line = (json.dumps(entry, sort_keys=True) + "\\n").encode("utf-8")
    assert len(line) < 4096, "ledger lines must stay below PIPE_BUF to be atomic"
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class PoisonError(Exception):
    pass


def begin(context, event):
    body = json.loads(event.body)
    write("start", context, event, id=body["id"])
    fail = body.get("fail", 0)
    if fail == "always" or event.attempt <= fail:
        how = body.get("how", "raise")
        write("fail", context, event, id=body["id"], how=how)
        if how == "crash":
            # Die well after the worker's previous results (> 100 ms), so the supervisor blames this
            # record at once instead of re-running everything queued on the worker alone first.
            time.sleep(0.25)
            os._exit(13)
        if how == "hang":
            time.sleep(60)
        raise PoisonError(f"attempt {event.attempt}: {body.get('message', 'poison record')}")
    return body


def handler(context, event):
    body = begin(context, event)
    for topic, partition, offset in body.get("ack", []):
        context.platform.explicit_ack_sync(QualifiedOffset(topic, partition, offset))
    if body.get("ack_self") or ACK_ALL:
        context.platform.explicit_ack_sync(event)  # the event itself is accepted too
    write("end", context, event, id=body["id"])
    if body.get("no_ack"):
        response = Response()
        response.ensure_no_ack()
        return response
    return "ok"


async def async_handler(context, event):
    body = begin(context, event)
    await asyncio.sleep(0)
    for topic, partition, offset in body.get("ack", []):
        await context.platform.explicit_ack(QualifiedOffset(topic, partition, offset))
    if body.get("ack_self") or ACK_ALL:
        await context.platform.explicit_ack(QualifiedOffset.from_event(event))
    write("end", context, event, id=body["id"])
    if body.get("no_ack"):
        response = nuclio_sdk.Response()
        response.ensure_no_ack()
        return response
    return "ok"
"""

RETRY_BACKOFF_S = 0.1
HEADER_PREFIX = "streamworker."


# ------------------------------------------------------------------------------------------ helpers


def body(record_id: str, **fields: Any) -> str:
    return json.dumps({"id": record_id, **fields})


def trigger_config(
    *,
    brokers: str,
    topic: str,
    group: str,
    profile: Mapping[str, str],
    workers: int = 1,
    mode: str = "pool",
    ack_mode: str | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    trigger: dict[str, Any] = {
        "kind": "kafka-cluster",
        "numWorkers": workers,
        "workerTerminationTimeout": "10s",
    }
    if ack_mode is not None:
        trigger["explicitAckMode"] = ack_mode
    trigger["attributes"] = {
        "brokers": brokers,
        "topics": [topic],
        "consumerGroup": group,
        "initialOffset": "earliest",
        "workerAllocationMode": mode,
        "retryBackoff": f"{int(RETRY_BACKOFF_S * 1000)}ms",
        **profile,
        "librdkafka": {"fetch.wait.max.ms": 100},
        **(attributes or {}),
    }
    return trigger


def function_config(
    triggers: Mapping[str, Mapping[str, Any]],
    env: Mapping[str, str],
    *,
    handler: str = "main:handler",
    event_timeout: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"handler": handler, "env": dict(env)}
    if event_timeout is not None:
        spec["eventTimeout"] = event_timeout
    spec["triggers"] = {name: dict(trigger) for name, trigger in triggers.items()}
    return {"metadata": {"name": "failures"}, "spec": spec}


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """Every complete line of the ledger, in the order the handlers started them (``mono``)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    entries = [json.loads(line) for line in data.split(b"\n")[:-1] if line]
    return sorted(entries, key=lambda e: e["mono"])


def of_kind(entries: Iterable[dict[str, Any]], kind: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in entries if e["kind"] == kind and all(e.get(k) == v for k, v in match.items())]


def logs_named(proc: Any, message: str, **match: Any) -> list[dict[str, Any]]:
    return [
        log
        for log in proc.logs
        if log.get("message") == message and all(log.get(k) == v for k, v in match.items())
    ]


def is_message(message: str, **match: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda log: log.get("message") == message and all(log.get(k) == v for k, v in match.items())


def wait_committed(
    wait_until: Callable[..., Any],
    bootstrap: str,
    group: str,
    topic: str,
    expected: Mapping[int, int],
    timeout: float = 30.0,
) -> None:
    """Wait until the group's committed offsets for ``expected``'s partitions equal ``expected``."""
    seen: dict[int, int] = {}

    def reached() -> bool:
        nonlocal seen
        seen = committed_offsets(bootstrap, group, topic, sorted(expected))
        return seen == dict(expected)

    wait_until(
        reached, timeout, interval=0.2, message=lambda: f"{topic}: committed {seen} != {dict(expected)}"
    )


def wait_ledger(
    wait_until: Callable[..., Any],
    ledger: Path,
    proc: Any,
    done: Callable[[list[dict[str, Any]]], bool],
    what: str,
    timeout: float = 30.0,
) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        assert proc.running, f"streamworker exited early\n{proc.output()}"
        entries = read_ledger(ledger)
        return entries if done(entries) else None

    def describe() -> str:
        entries = read_ledger(ledger)
        return f"{what}: ledger has {Counter(e['kind'] for e in entries)}\n{proc.output()}"

    result: list[dict[str, Any]] = wait_until(check, timeout, interval=0.05, message=describe)
    return result


def log_wall(log: Mapping[str, Any]) -> float:
    """A log line's timestamp (ISO-8601, UTC) as seconds since the epoch."""
    return dt.datetime.fromisoformat(str(log["timestamp"]).replace("Z", "+00:00")).timestamp()


def stop_cleanly(proc: Any, timeout: float = 30.0) -> None:
    code = proc.terminate(signal.SIGTERM, timeout=timeout)
    assert code == 0, f"exit code {code}\n{proc.output()}"
    assert logs_named(proc, "stopped"), proc.output()


def consumer_profile(profile: Mapping[str, str]) -> dict[str, int]:
    """The function's timeout profile as librdkafka settings, for plain consumers next to it."""
    return {
        "session.timeout.ms": round(parse_duration(profile["sessionTimeout"]) * 1000),
        "heartbeat.interval.ms": round(parse_duration(profile["heartbeatInterval"]) * 1000),
        "max.poll.interval.ms": round(parse_duration(profile["maxPollInterval"]) * 1000),
    }


def read_topic(
    bootstrap: str, topic: str, group: str, profile: Mapping[str, str], timeout: float = 20.0
) -> list[Message]:
    """Every record of ``topic``, read by a plain confluent-kafka consumer.

    The consumer is assigned every partition from the beginning (reading needs no group join) and
    reads until each one reported end of partition. It still gets a unique group id and the test's
    timeout profile, as every client of the shared broker must.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 100,
            "log.connection.close": False,
            **consumer_profile(profile),
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        assert partitions, f"{topic} has no partitions"
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records: list[Message] = []
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(at_end) < len(partitions):
            assert time.monotonic() < deadline, (
                f"{topic}: end not reached in {timeout}s ({len(records)} read)"
            )
            for message in consumer.consume(100, 0.2):
                error = message.error()
                partition = message.partition()
                assert partition is not None
                if error is None:
                    records.append(message)
                    at_end.discard(partition)
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(partition)
                else:
                    raise AssertionError(f"reading {topic}: {error}")
        return records
    finally:
        consumer.close()


def headers_of(message: Message) -> list[tuple[str, bytes | None]]:
    headers = message.headers() or []
    assert isinstance(headers, list), headers
    return [(name, value.encode() if isinstance(value, str) else value) for name, value in headers]


def streamworker_headers(message: Message) -> dict[str, str]:
    found = [(name, value) for name, value in headers_of(message) if name.startswith(HEADER_PREFIX)]
    names = [name for name, _ in found]
    assert len(names) == len(set(names)), f"duplicate streamworker headers: {names}"
    return {name[len(HEADER_PREFIX) :]: (value or b"").decode("utf-8", "replace") for name, value in found}


def parse_failed_at(text: str) -> dt.datetime:
    failed_at = dt.datetime.fromisoformat(text)
    assert failed_at.tzinfo is not None, f"streamworker.failed.at has no time zone: {text!r}"
    return failed_at


# ------------------------------------------------------------------ 1. poison record -> dead letter


def test_poison_record_retried_with_growing_backoff_then_dead_lettered(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    topic, group, dlq = unique("orders"), unique("group"), unique("dlq")
    create_topics(broker_bootstrap, {topic: 2, dlq: 1})
    max_retries, poison_offset = 3, 2
    # 900 two-byte characters: the worker passes them on (< 1000 characters), the dead-letter header
    # keeps the first 1000 bytes.
    long_message = "poison " + "\u00e9" * 900
    poison_headers: list[tuple[str, bytes | str | None]] = [
        ("trace-id", b"t-1"),
        ("dup", b"first"),
        ("dup", b"second"),
        ("bin", b"\x00\xff\x80"),
    ]
    records = [
        Record(
            value=body(f"p0-{i}", fail="always", message=long_message)
            if i == poison_offset
            else body(f"p0-{i}"),
            key="poison-key" if i == poison_offset else f"k{i}",
            headers=poison_headers if i == poison_offset else None,
            partition=0,
        )
        for i in range(6)
    ] + [Record(value=body(f"p1-{i}"), key=f"k{i}", partition=1) for i in range(4)]
    end = produce(broker_bootstrap, topic, records)
    assert end == {0: 6, 1: 4}
    poison = records[poison_offset]

    ledger = tmp_path / "ledger.jsonl"
    trigger = trigger_config(
        brokers=broker_bootstrap,
        topic=topic,
        group=group,
        profile=quick_profile,
        workers=2,
        attributes={"maxRetries": max_retries, "deadLetterTopic": dlq},  # onError: deadletter by default
    )
    config = function_dir(HANDLER, function_config({"orders": trigger}, {"LEDGER": str(ledger)}))
    started_wall = time.time()
    proc = streamworker_process(config)
    proc.wait_for_log(is_message("record dead-lettered", offset=poison_offset), 30)
    wait_committed(wait_until, broker_bootstrap, group, topic, end)
    stop_cleanly(proc)
    entries = read_ledger(ledger)

    # Tried 1 + maxRetries times, each retry after at least retryBackoff * 2^(n-1).
    tries = of_kind(entries, "start", partition=0, offset=poison_offset)
    assert [e["attempt"] for e in tries] == list(range(1, max_retries + 2)), tries
    assert len(of_kind(entries, "fail", partition=0, offset=poison_offset)) == max_retries + 1
    gaps = [b["mono"] - a["mono"] for a, b in pairwise(tries)]
    print(f"gaps between attempts: {[round(g, 3) for g in gaps]}")
    for n, gap in enumerate(gaps, start=1):
        backoff = RETRY_BACKOFF_S * 2 ** (n - 1)
        assert gap >= backoff, f"retry {n} came {gap:.3f}s after attempt {n}, before its {backoff}s backoff"
        assert gap < backoff * 1.2 + 1.0, f"retry {n} came {gap:.3f}s after attempt {n} (backoff {backoff}s)"
    retries = logs_named(proc, "handler failed; will retry", partition=0, offset=poison_offset)
    assert [log["next_attempt"] for log in retries] == list(range(2, max_retries + 2)), retries
    assert all(log["error_type"] == "PoisonError" for log in retries), retries
    for n, log in enumerate(retries, start=1):
        backoff = RETRY_BACKOFF_S * 2 ** (n - 1)
        assert backoff <= log["retry_in_s"] <= backoff * 1.2 + 0.001, log
    exhausted = logs_named(proc, "handler failed; retries exhausted; sending to the dead-letter topic")
    assert len(exhausted) == 1 and exhausted[0]["offset"] == poison_offset, exhausted
    assert exhausted[0]["dead_letter_topic"] == dlq
    assert len(logs_named(proc, "record dead-lettered")) == 1
    assert not logs_named(proc, "dead-letter produce failed; record NOT done, will produce again")
    # No other record failed.
    assert {(log["partition"], log["offset"]) for log in logs_named(proc, "handler failed; will retry")} == {
        (0, poison_offset)
    }

    # Partition 0 ran in order, the records after the poison one only after its last attempt;
    # every other record ran exactly once.
    p0 = [(e["offset"], e["attempt"]) for e in of_kind(entries, "start", partition=0)]
    expected = [(o, 1) for o in range(poison_offset)]
    expected += [(poison_offset, n) for n in range(1, max_retries + 2)]
    expected += [(o, 1) for o in range(poison_offset + 1, 6)]
    assert p0 == expected, f"partition 0 ran as {p0}"
    assert sorted(e["offset"] for e in of_kind(entries, "end", partition=1)) == [0, 1, 2, 3]

    # The dead-letter copy, read back by a plain consumer.
    dead = read_topic(broker_bootstrap, dlq, unique("reader"), quick_profile)
    assert len(dead) == 1, [(m.key(), m.value()) for m in dead]
    copy = dead[0]
    assert copy.key() == b"poison-key"
    assert copy.value() == str(poison.value).encode()
    headers = headers_of(copy)
    # The original headers first, in order (duplicates kept), then the streamworker.* ones.
    assert headers[: len(poison_headers)] == [(name, value) for name, value in poison_headers], headers
    assert all(name.startswith(HEADER_PREFIX) for name, _ in headers[len(poison_headers) :]), headers
    added = streamworker_headers(copy)
    assert set(added) == {
        "error.type",
        "error.message",
        "original.topic",
        "original.partition",
        "original.offset",
        "attempts",
        "failed.at",
    }, added
    assert added["error.type"] == "PoisonError"
    raw_message = dict(headers)[f"{HEADER_PREFIX}error.message"]
    assert raw_message is not None and len(raw_message) <= 1000, len(raw_message or b"")
    # The last attempt's error, cut to its first 1000 bytes.
    assert raw_message == f"attempt {max_retries + 1}: {long_message}".encode()[:1000], raw_message[:80]
    assert added["original.topic"] == topic
    assert added["original.partition"] == "0"
    assert added["original.offset"] == str(poison_offset)
    assert added["attempts"] == str(max_retries + 1)
    failed_at = parse_failed_at(added["failed.at"]).timestamp()
    assert tries[-1]["wall"] - 0.01 <= failed_at <= time.time(), (added["failed.at"], tries[-1]["wall"])
    assert failed_at >= started_wall


# ------------------------------------------------------------------ 2. dead-letter topic missing


def _probe_auto_create(bootstrap: str, topic: str) -> bool:
    """Produce one record to a topic that does not exist: True if the broker created it."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "message.timeout.ms": 6000,
            "topic.metadata.propagation.max.ms": 2000,
            "log.connection.close": False,
        }
    )
    outcome: list[KafkaError | None] = []
    producer.produce(topic, value=b"probe", on_delivery=lambda err, _msg: outcome.append(err))
    producer.flush(10)
    assert outcome, "no delivery report for the auto-creation probe"
    return outcome[0] is None


def _uvarint(data: bytes | bytearray, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _skip_tagged_fields(data: bytes | bytearray, pos: int) -> int:
    count, pos = _uvarint(data, pos)
    for _ in range(count):
        _, pos = _uvarint(data, pos)
        size, pos = _uvarint(data, pos)
        pos += size
    return pos


def clear_auto_create(request: bytearray) -> bool:
    """In a Metadata request (v4+; *request* without its size prefix), set allow_auto_topic_creation
    to false in place. Returns False for any other request.

    Layout (Kafka protocol): header = api_key, api_version (int16), correlation_id (int32), client_id
    (int16-length string) and, from Metadata v9 (flexible), tagged fields. Body = the topics array
    (v4-v8: int32 count, int16-length names; v9+: compact array of {topic_id uuid from v10, compact
    name, tagged fields}), then the allow_auto_topic_creation boolean.
    """
    api_key, version = int.from_bytes(request[0:2], "big"), int.from_bytes(request[2:4], "big")
    if api_key != 3 or version < 4:
        return False
    pos = 10 + max(0, int.from_bytes(request[8:10], "big", signed=True))
    flexible = version >= 9
    if flexible:
        pos = _skip_tagged_fields(request, pos)
        count, pos = _uvarint(request, pos)
        for _ in range(max(0, count - 1)):
            if version >= 10:
                pos += 16
            length, pos = _uvarint(request, pos)
            pos += max(0, length - 1)
            pos = _skip_tagged_fields(request, pos)
    else:
        count = int.from_bytes(request[pos : pos + 4], "big", signed=True)
        pos += 4
        for _ in range(max(0, count)):
            pos += 2 + max(0, int.from_bytes(request[pos : pos + 2], "big", signed=True))
    assert request[pos] in (0, 1), f"Metadata v{version}: no boolean where allow_auto_topic_creation belongs"
    request[pos] = 0
    return True


class NoAutoCreateGate(threading.Thread):
    """A TCP relay in front of a broker that makes it refuse to auto-create topics for chosen clients.

    Every connection's first request (ApiVersions from librdkafka) names the client (``client.id``,
    an int16-length string right after the correlation id in every header version). For clients
    whose id contains ``marker``, the requests are relayed frame by frame and Metadata requests go
    out with ``allow_auto_topic_creation`` cleared, as from a client that may not create topics:
    the broker then answers "unknown topic" for a missing topic instead of creating it, like a Kafka
    broker with ``auto.create.topics.enable=false``. Everything else is relayed unchanged.
    """

    def __init__(self, upstream_port: int, marker: str) -> None:
        super().__init__(name="no-auto-create-gate", daemon=True)
        self.upstream_port = upstream_port
        self.marker = marker
        self.gated_clients: list[str] = []
        self.rewritten = 0  # Metadata requests sent on with auto-creation cleared
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port: int = self._server.getsockname()[1]
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []

    def run(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True, name="gate-conn").start()

    def close(self) -> None:
        self._closing.set()
        self._server.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            client.close()
            return
        self._sockets.append(upstream)
        threading.Thread(target=self._relay, args=(upstream, client), daemon=True, name="gate-down").start()
        try:
            first = self._frame(client)
            if first is None:
                return
            size = int.from_bytes(first[8:10], "big", signed=True)
            client_id = first[10 : 10 + size].decode("utf-8", "replace") if size > 0 else ""
            upstream.sendall(len(first).to_bytes(4, "big") + first)
            if self.marker not in client_id:
                self._relay(client, upstream)
                return
            self.gated_clients.append(client_id)
            while (request := self._frame(client)) is not None:
                if clear_auto_create(request):
                    self.rewritten += 1
                upstream.sendall(len(request).to_bytes(4, "big") + request)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _read(sock: socket.socket, count: int) -> bytearray | None:
        data = bytearray()
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def _frame(self, sock: socket.socket) -> bytearray | None:
        """One size-prefixed Kafka request, without its prefix (None at end of stream)."""
        prefix = self._read(sock, 4)
        return None if prefix is None else self._read(sock, int.from_bytes(prefix, "big"))

    @staticmethod
    def _relay(source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def dead_letter_broker(
    broker_bootstrap: str, unique: Callable[[str], str], tmp_path: Path
) -> Iterator[tuple[str, NoAutoCreateGate | None]]:
    """A broker on which the dead-letter producer cannot create topics: ``(bootstrap, gate)``.

    The broker under test when it refuses auto-creation (gate ``None``). Otherwise (Tansu, Redpanda in
    dev-container mode) a Tansu broker of this test's own, reached only through a
    ``NoAutoCreateGate`` for clients whose id contains ``-dlq`` (streamworker's dead-letter producer
    is ``streamworker-<function>-<trigger>-dlq``): the broker advertises the gate's address, so every
    connection passes it.
    """
    if not _probe_auto_create(broker_bootstrap, unique("probe")):
        yield broker_bootstrap, None
        return
    try:
        binary = resolve_tansu_binary()
    except RuntimeError as exc:
        pytest.skip(
            f"the broker under test creates topics on produce, and no Tansu binary for a gated one: {exc}"
        )
    broker_port = free_port()
    gate = NoAutoCreateGate(broker_port, marker="-dlq")
    cluster_id = f"gated-{uuid.uuid4().hex[:12]}"
    log_path = tmp_path / "gated-tansu.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    broker = subprocess.Popen(
        [
            binary,
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{broker_port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{gate.port}",
            "--cluster-id",
            cluster_id,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "RUST_LOG": "warn", "NO_COLOR": "1"},
        preexec_fn=die_with_parent_preexec_fn(),
        start_new_session=True,
    )
    gate.start()
    bootstrap = f"127.0.0.1:{gate.port}"
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, "reconnect.backoff.max.ms": 100})
        deadline = time.monotonic() + 15
        while True:
            assert broker.poll() is None, f"the gated broker exited: {log_path.read_text()}"
            assert time.monotonic() < deadline, "the gated broker never answered Metadata"
            try:
                if admin.list_topics(timeout=0.5).cluster_id == cluster_id:
                    break
            except Exception:  # KafkaException until the listener is up: keep asking (bounded)
                continue
        yield bootstrap, gate
    finally:
        with contextlib.suppress(ProcessLookupError):
            broker.send_signal(signal.SIGINT)
        try:
            broker.wait(5)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()
        gate.close()
        log.close()


def test_missing_dead_letter_topic_keeps_the_record_until_the_topic_exists(
    dead_letter_broker: tuple[str, NoAutoCreateGate | None],
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """The dead-letter topic does not exist: the produce fails (librdkafka gives up on the unknown
    topic after topic.metadata.propagation.max.ms, 2 s), the record stays not done and uncommitted
    with the records behind it waiting, and it is produced again with backoff. Once the test creates
    the topic, the copy is delivered and the commit moves on.

    Tansu creates any topic a client produces to, so there the broker is one of the test's own behind
    a gate that makes it refuse auto-creation for the dead-letter producer (``dead_letter_broker``).
    """
    bootstrap, gate = dead_letter_broker
    topic, group, dlq = unique("orders"), unique("group"), unique("dlq-missing")
    create_topics(bootstrap, {topic: 2})
    poison_offset = 1
    records = [
        Record(value=body(f"p0-{i}", fail="always") if i == poison_offset else body(f"p0-{i}"), partition=0)
        for i in range(4)
    ] + [Record(value=body(f"p1-{i}"), partition=1) for i in range(3)]
    end = produce(bootstrap, topic, records)
    assert end == {0: 4, 1: 3}

    ledger = tmp_path / "ledger.jsonl"
    trigger = trigger_config(
        brokers=bootstrap,
        topic=topic,
        group=group,
        profile=quick_profile,
        workers=2,
        attributes={"maxRetries": 1, "deadLetterTopic": dlq, "retryMaxBackoff": "1s"},
    )
    config = function_dir(HANDLER, function_config({"orders": trigger}, {"LEDGER": str(ledger)}))
    proc = streamworker_process(config)
    failed = proc.wait_for_log("dead-letter produce failed; record NOT done, will produce again", 30)
    assert (failed["partition"], failed["offset"]) == (0, poison_offset), failed
    assert failed["dead_letter_topic"] == dlq and failed["tries"] == 1, failed
    if gate is not None:
        assert gate.rewritten and all(c.endswith("-dlq") for c in gate.gated_clients), gate.gated_clients
    # Not done: the commit stops before it, the records behind it wait; partition 1 flowed.
    wait_committed(wait_until, bootstrap, group, topic, {0: poison_offset, 1: 3})
    # Produced again, and again (the topic is still missing), the process staying up meanwhile.
    proc.wait_for_log(
        lambda log: (
            log.get("message") == "dead-letter produce failed; record NOT done, will produce again"
            and log.get("tries") == 2
        ),
        15,
    )
    assert proc.running, proc.output()
    assert not logs_named(proc, "record dead-lettered")
    assert not [e for e in of_kind(read_ledger(ledger), "start", partition=0) if e["offset"] > poison_offset]

    create_topics(bootstrap, {dlq: 1})
    delivered = proc.wait_for_log(is_message("record dead-lettered", offset=poison_offset), 30)
    assert delivered["dead_letter_topic"] == dlq
    wait_committed(wait_until, bootstrap, group, topic, end)
    stop_cleanly(proc)

    entries = read_ledger(ledger)
    p0 = [(e["offset"], e["attempt"]) for e in of_kind(entries, "start", partition=0)]
    assert p0 == [(0, 1), (1, 1), (1, 2), (2, 1), (3, 1)], p0
    # The records behind it ran only once the copy was confirmed.
    assert (
        min(e["wall"] for e in of_kind(entries, "start", partition=0, offset=2)) >= log_wall(delivered) - 0.01
    )
    dead = read_topic(bootstrap, dlq, unique("reader"), quick_profile)
    assert [m.value() for m in dead] == [str(records[poison_offset].value).encode()]
    added = streamworker_headers(dead[0])
    assert added["attempts"] == "2" and added["original.offset"] == str(poison_offset), added


# ------------------------------------------------------------------------- 3. onError stop / skip


def test_on_error_stop_pauses_the_partition_and_skip_commits_past_the_record(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """Two triggers of one process, each with its own topic and group: ``stop`` (the default without
    a deadLetterTopic) and ``skip``. Each gets a record that always fails on partition 0."""
    poison_offset = 2
    setups = {name: (unique(f"orders-{name}"), unique(f"group-{name}")) for name in ("stop", "skip")}
    create_topics(broker_bootstrap, {topic: 2 for topic, _ in setups.values()})
    for name, (topic, _) in setups.items():
        records = [
            Record(
                value=body(f"{name}-p0-{i}", fail="always") if i == poison_offset else body(f"{name}-p0-{i}"),
                partition=0,
            )
            for i in range(5)
        ] + [Record(value=body(f"{name}-p1-{i}"), partition=1) for i in range(5)]
        assert produce(broker_bootstrap, topic, records) == {0: 5, 1: 5}

    ledger = tmp_path / "ledger.jsonl"
    triggers = {
        name: trigger_config(
            brokers=broker_bootstrap,
            topic=topic,
            group=group,
            profile=quick_profile,
            workers=2,
            # No deadLetterTopic: stop is the default; skip must be asked for.
            attributes={"maxRetries": 1} if name == "stop" else {"maxRetries": 1, "onError": "skip"},
        )
        for name, (topic, group) in setups.items()
    }
    config = function_dir(HANDLER, function_config(triggers, {"LEDGER": str(ledger)}))
    proc = streamworker_process(config)

    skipped = proc.wait_for_log("handler failed; retries exhausted; record skipped", 30)
    assert (skipped["trigger"], skipped["partition"], skipped["offset"]) == ("skip", 0, poison_offset), (
        skipped
    )
    assert skipped["error_type"] == "PoisonError"
    skip_topic, skip_group = setups["skip"]
    wait_committed(wait_until, broker_bootstrap, skip_group, skip_topic, {0: 5, 1: 5})

    stopped = proc.wait_for_log("handler failed; retries exhausted; partition stopped until restart", 30)
    assert (stopped["trigger"], stopped["partition"], stopped["offset"]) == ("stop", 0, poison_offset), (
        stopped
    )
    assert stopped["error_type"] == "PoisonError"
    stop_topic, stop_group = setups["stop"]
    wait_ledger(
        wait_until,
        ledger,
        proc,
        lambda entries: len(of_kind(entries, "end", trigger="stop", partition=1)) >= 5,
        "partition 1 of the stop trigger handled",
    )
    # More records for both partitions: partition 1 keeps flowing, partition 0 stays stopped.
    more = produce(
        broker_bootstrap,
        stop_topic,
        [Record(value=body(f"late-p{p}-{i}"), partition=p) for p in (0, 1) for i in range(3)],
    )
    assert more == {0: 8, 1: 8}
    wait_ledger(
        wait_until,
        ledger,
        proc,
        lambda entries: len(of_kind(entries, "end", trigger="stop", partition=1)) >= 8,
        "partition 1's later records handled",
    )
    wait_committed(wait_until, broker_bootstrap, stop_group, stop_topic, {0: poison_offset, 1: 8})
    stop_cleanly(proc)

    entries = read_ledger(ledger)
    # stop: nothing of partition 0 after the poison record ran, nor was committed (even at shutdown).
    p0 = [(e["offset"], e["attempt"]) for e in of_kind(entries, "start", trigger="stop", partition=0)]
    assert p0 == [(0, 1), (1, 1), (2, 1), (2, 2)], f"partition 0 went on after it was stopped: {p0}"
    assert committed_offsets(broker_bootstrap, stop_group, stop_topic, 2) == {0: poison_offset, 1: 8}
    p1 = [e["offset"] for e in of_kind(entries, "end", trigger="stop", partition=1)]
    assert p1 == list(range(8)), p1
    # skip: the record was given up after its retry, the partition went on and was committed past it.
    p0 = [(e["offset"], e["attempt"]) for e in of_kind(entries, "start", trigger="skip", partition=0)]
    assert p0 == [(0, 1), (1, 1), (2, 1), (2, 2), (3, 1), (4, 1)], p0
    assert [e["offset"] for e in of_kind(entries, "end", trigger="skip", partition=1)] == list(range(5))
    assert committed_offsets(broker_bootstrap, skip_group, skip_topic, 2) == {0: 5, 1: 5}
    # Each outcome logged exactly once, by its own trigger.
    exhausted = [
        (log["message"], log["trigger"])
        for log in proc.logs
        if str(log.get("message", "")).startswith("handler failed; retries exhausted")
    ]
    assert sorted(exhausted) == [
        ("handler failed; retries exhausted; partition stopped until restart", "stop"),
        ("handler failed; retries exhausted; record skipped", "skip"),
    ], exhausted


# ---------------------------------------------------------------------------------- 4. explicit acks

# Per handler flavor, two triggers: between them every explicitAckMode x workerAllocationMode pair runs
# once, and each flavor sees both modes and both allocations.
ACK_TRIGGERS = {
    "sync": {"enable-pool": ("enable", "pool"), "only-static": ("explicitOnly", "static")},
    "async": {"enable-static": ("enable", "static"), "only-pool": ("explicitOnly", "pool")},
}


@pytest.mark.parametrize("flavor", ["sync", "async"])
def test_explicit_acks_in_enable_and_explicit_only_modes(
    flavor: str,
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """One process, two triggers (``ACK_TRIGGERS``), each with its own topic and group.

    Per trigger, partition 0 holds a record ("later", offset 1) left open by its handler: a no-ack
    response in enable mode, a plain return without ack in explicitOnly mode (where every other
    record acks itself from its handler). The commit must stop at it. A record of partition 1,
    produced later (in static mode handled by the other worker), acks it; then the commit reaches the
    end. A "stray" record acks a partition the member does not own and a topic it does not consume:
    both acks are ignored and logged.
    """
    other_topic = unique("elsewhere")
    setups = {
        name: (ack_mode, mode, unique(f"acks-{name}"), unique(f"group-{name}"))
        for name, (ack_mode, mode) in ACK_TRIGGERS[flavor].items()
    }
    create_topics(broker_bootstrap, {topic: 2 for _, _, topic, _ in setups.values()})
    for name, (ack_mode, _, topic, _) in setups.items():
        only = ack_mode == "explicitOnly"
        records = [
            Record(value=body(f"{name}-p0-0", ack_self=only), partition=0),
            Record(value=body(f"{name}-later", no_ack=not only), partition=0),
            Record(value=body(f"{name}-p0-2", ack_self=only), partition=0),
            Record(value=body(f"{name}-p0-3", ack_self=only), partition=0),
            Record(value=body(f"{name}-p1-0", ack_self=only), partition=1),
            Record(
                value=body(f"{name}-stray", ack=[[topic, 99, 0], [other_topic, 0, 5]], ack_self=only),
                partition=1,
            ),
        ]
        assert produce(broker_bootstrap, topic, records) == {0: 4, 1: 2}

    ledger = tmp_path / "ledger.jsonl"
    triggers = {
        name: trigger_config(
            brokers=broker_bootstrap,
            topic=topic,
            group=group,
            profile=quick_profile,
            workers=2,
            mode=mode,
            ack_mode=ack_mode,
            # Each record acks only itself here; Nuclio's cumulative scope (the default) is proven by
            # integration/test_nuclio_compat.py.
            attributes={"explicitAckScope": "record"},
        )
        for name, (ack_mode, mode, topic, group) in setups.items()
    }
    handler = "main:handler" if flavor == "sync" else "main:async_handler"
    config = function_dir(HANDLER, function_config(triggers, {"LEDGER": str(ledger)}, handler=handler))
    proc = streamworker_process(config)
    wait_ledger(
        wait_until,
        ledger,
        proc,
        lambda entries: len(of_kind(entries, "end")) >= 6 * len(setups),
        "every first-round record handled",
    )
    # A marker on partition 1, produced after everything above finished: once the commit passed it,
    # a commit round ran after partition 0's records were done too.
    for name, (ack_mode, _, topic, _) in setups.items():
        marker = Record(value=body(f"{name}-marker", ack_self=ack_mode == "explicitOnly"), partition=1)
        assert produce(broker_bootstrap, topic, [marker]) == {1: 3}
    for name, (_, _, topic, group) in setups.items():
        wait_committed(wait_until, broker_bootstrap, group, topic, {1: 3})
        committed = committed_offsets(broker_bootstrap, group, topic, [0])
        assert committed == {0: 1}, f"{name}: the commit passed the unacked record: {committed}"

    for name, (_, _, topic, _) in setups.items():
        for target_topic, partition in ((topic, 99), (other_topic, 0)):
            proc.wait_for_log(
                is_message(
                    "explicit ack ignored: partition not owned by this member",
                    trigger=name,
                    topic=target_topic,
                    partition=partition,
                ),
                10,
            )

    # The late ack, from a later event of the other partition.
    for name, (ack_mode, _, topic, _) in setups.items():
        acker = Record(
            value=body(f"{name}-acker", ack=[[topic, 0, 1]], ack_self=ack_mode == "explicitOnly"), partition=1
        )
        assert produce(broker_bootstrap, topic, [acker]) == {1: 4}
    for _, _, topic, group in setups.values():
        wait_committed(wait_until, broker_bootstrap, group, topic, {0: 4, 1: 4})
    stop_cleanly(proc)

    entries = read_ledger(ledger)
    for name, (_, mode, topic, group) in setups.items():
        ends = of_kind(entries, "end", trigger=name)
        assert Counter((e["partition"], e["offset"]) for e in ends) == Counter(
            [(0, o) for o in range(4)] + [(1, o) for o in range(4)]
        ), f"{name}: {sorted((e['partition'], e['offset']) for e in ends)}"
        later_call = of_kind(ends, "end", partition=0, offset=1)[0]
        acker_call = of_kind(ends, "end", partition=1, offset=3)[0]
        assert acker_call["mono"] > later_call["mono"]
        if mode == "static":
            # The ack came from the other worker process.
            assert (later_call["worker_id"], acker_call["worker_id"]) == (0, 1), (later_call, acker_call)
            assert later_call["pid"] != acker_call["pid"]
        assert committed_offsets(broker_bootstrap, group, topic, 2) == {0: 4, 1: 4}
    assert not logs_named(proc, "handler failed; will retry")
    ignored = logs_named(proc, "explicit ack ignored: partition not owned by this member")
    assert len(ignored) == 2 * len(setups), ignored


def test_unacked_records_are_redelivered_after_a_restart(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    topic, group = unique("orders"), unique("group")
    create_topics(broker_bootstrap, {topic: 1})
    never_acked = {2, 4}
    records = [Record(value=body(f"r{i}", ack_self=i not in never_acked), partition=0) for i in range(6)]
    end = produce(broker_bootstrap, topic, records)
    assert end == {0: 6}

    ledger = tmp_path / "ledger.jsonl"
    trigger = trigger_config(
        brokers=broker_bootstrap,
        topic=topic,
        group=group,
        profile=quick_profile,
        workers=2,
        ack_mode="explicitOnly",
        attributes={"explicitAckScope": "record"},  # records 3 and 5 ack only themselves
    )
    config = function_dir(HANDLER, function_config({"orders": trigger}, {"LEDGER": str(ledger)}))
    first = streamworker_process(config, env={"INSTANCE": "first"})
    wait_ledger(wait_until, ledger, first, lambda entries: len(of_kind(entries, "end")) >= 6, "all handled")
    wait_committed(wait_until, broker_bootstrap, group, topic, {0: min(never_acked)})
    stop_cleanly(first)
    # The shutdown commit did not pass the unacked record either.
    assert committed_offsets(broker_bootstrap, group, topic, 1) == {0: min(never_acked)}

    # Same group; this time every record is acked.
    second = streamworker_process(config, env={"INSTANCE": "second", "ACK_ALL": "1"})
    wait_committed(wait_until, broker_bootstrap, group, topic, end, timeout=40)
    stop_cleanly(second)
    entries = read_ledger(ledger)
    assert [e["offset"] for e in of_kind(entries, "start", instance="first")] == list(range(6))
    again = [e["offset"] for e in of_kind(entries, "start", instance="second")]
    assert again == list(range(min(never_acked), 6)), f"the restart handled {again}"


# ------------------------------------------------------------- 5. crash and eventTimeout -> WorkerLost


def test_crash_and_event_timeout_are_failed_attempts_and_reach_the_dead_letter_topic(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """Two triggers of one process (eventTimeout is per function): ``crash`` gets a record whose
    handler calls os._exit every attempt, ``hang`` one whose handler sleeps past eventTimeout every
    attempt. Each poison record is first in its single partition and each trigger has one worker, so
    every death is blamed on it directly (see ``Dispatcher.worker_lost``)."""
    max_retries = 1
    setups = {
        how: (unique(f"orders-{how}"), unique(f"group-{how}"), unique(f"dlq-{how}"))
        for how in ("crash", "hang")
    }
    create_topics(broker_bootstrap, {name: 1 for setup in setups.values() for name in (setup[0], setup[2])})
    ends: dict[str, dict[int, int]] = {}
    for how, (topic, _, _) in setups.items():
        records = [Record(value=body(f"{how}-0", fail="always", how=how), key=f"{how}-key", partition=0)]
        records += [Record(value=body(f"{how}-{i}"), partition=0) for i in range(1, 4)]
        ends[how] = produce(broker_bootstrap, topic, records)
        assert ends[how] == {0: 4}

    ledger = tmp_path / "ledger.jsonl"
    triggers = {
        how: trigger_config(
            brokers=broker_bootstrap,
            topic=topic,
            group=group,
            profile=quick_profile,
            attributes={"maxRetries": max_retries, "deadLetterTopic": dlq},
        )
        for how, (topic, group, dlq) in setups.items()
    }
    config = function_dir(HANDLER, function_config(triggers, {"LEDGER": str(ledger)}, event_timeout="600ms"))
    proc = streamworker_process(config)
    for how, (topic, group, _) in setups.items():
        proc.wait_for_log(is_message("record dead-lettered", trigger=how, offset=0), 40)
        wait_committed(wait_until, broker_bootstrap, group, topic, ends[how])
    stop_cleanly(proc)

    entries = read_ledger(ledger)
    for how, (_, _, dlq) in setups.items():
        tries = of_kind(entries, "fail", trigger=how, offset=0)
        assert [e["attempt"] for e in tries] == list(range(1, max_retries + 2)), (how, tries)
        assert len({e["pid"] for e in tries}) == max_retries + 1, f"{how}: every attempt has its own worker"
        starts = [(e["offset"], e["attempt"]) for e in of_kind(entries, "start", trigger=how)]
        assert starts == [(0, n) for n in range(1, max_retries + 2)] + [(o, 1) for o in (1, 2, 3)], (
            how,
            starts,
        )
        died = logs_named(proc, "worker died; replacing it", trigger=how)
        assert [log["pid"] for log in died] == [e["pid"] for e in tries], (how, died)
        retries = logs_named(proc, "handler failed; will retry", trigger=how)
        assert [(log["offset"], log["next_attempt"]) for log in retries] == [
            (0, n) for n in range(2, max_retries + 2)
        ], (how, retries)
        assert all(log["error_type"] == "WorkerLost" for log in retries), retries
        if how == "hang":
            assert all("eventTimeout" in str(log["error"]) for log in retries), retries
            assert len(logs_named(proc, "killing worker", trigger=how)) == max_retries + 1

        assert len(logs_named(proc, "record dead-lettered", trigger=how)) == 1
        dead = read_topic(broker_bootstrap, dlq, unique(f"reader-{how}"), quick_profile)
        assert len(dead) == 1, (how, [m.value() for m in dead])
        assert dead[0].key() == f"{how}-key".encode()
        added = streamworker_headers(dead[0])
        assert added["error.type"] == "WorkerLost", (how, added)
        assert added["attempts"] == str(max_retries + 1), (how, added)
        assert added["original.offset"] == "0" and added["original.partition"] == "0"
        if how == "hang":
            assert "eventTimeout" in added["error.message"], added
        parse_failed_at(added["failed.at"])
