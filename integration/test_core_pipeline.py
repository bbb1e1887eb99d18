"""End-to-end behaviour of the core pipeline: a real broker, the real CLI, real worker processes.

Every handler records what it did in a *ledger*: a JSON-lines file whose path comes from
``spec.env`` (``LEDGER``). Each line is written with one ``os.write`` on an ``O_APPEND`` descriptor
(lines stay well under 4 KiB), so lines from different worker processes never interleave inside a
line. A line carries the worker id, pid, the record's coordinates, key, a hash of the body, headers,
timestamp, content type, ``event.id`` and monotonic/wall clock times taken when it was written.
``time.monotonic`` is CLOCK_MONOTONIC, shared by every process on the machine, so lines from
different workers can be ordered by it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from devtools.broker import Record, committed_offsets, create_topics, produce

# The ledger writer, dropped next to main.py in every function folder (importable because the
# function's folder is first on sys.path).
LEDGER_MODULE = '''
"""Append one JSON line per call to $LEDGER (one write on an O_APPEND descriptor)."""

import datetime
import hashlib
import json
import os
import time

_EPOCH = datetime.datetime(1970, 1, 1)  # event.timestamp is naive UTC, as in Nuclio


def enc(value):
    """JSON-safe and type-preserving: None, {"str": ...} or {"hex": ...}."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, str):
        return {"str": value}
    return {"other": repr(value)}


def write(kind, context=None, event=None, **extra):
    entry = {"kind": kind, "pid": os.getpid(), "mono": time.monotonic(), "wall": time.time()}
    if context is not None:
        entry["worker_id"] = int(context.worker_id)  # a str, as in Nuclio
    if event is not None:
        body = event.body
        ts = event.timestamp
        entry.update(
            topic=event.topic,
            partition=event.partition,
            offset=event.offset,
            key=enc(event.key),
            body_type=type(body).__name__,
            body_len=len(body),
            body_sha256=hashlib.sha256(body).hexdigest(),
            headers=[[name, enc(value)] for name, value in event.header_list],
            timestamp_ms=None if ts is None else (ts - _EPOCH) // datetime.timedelta(milliseconds=1),
            content_type=enc(event.content_type),
            id=event.id,
            attempt=event.attempt,
        )
    entry.update(extra)
    line = (json.dumps(entry, sort_keys=True) + "\\n").encode("utf-8")
    assert len(line) < 4096, "ledger lines must stay below PIPE_BUF to be atomic"
    fd = os.open(os.environ["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
'''

SIMPLE_HANDLER = """
import swledger


def init_context(context):
    swledger.write("init", context)
    context.platform.set_termination_callback(lambda: swledger.write("terminated", context))


def handler(context, event):
    swledger.write("handled", context, event)
    return "ok"
"""

TRIGGER = "kafka"


# ------------------------------------------------------------------------------------------ helpers


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """Every complete line of the ledger (a line still being written is left out)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    return [json.loads(line) for line in lines[:-1] if line]


def of_kind(entries: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in entries if e["kind"] == kind]


def sha(data: bytes | None) -> str:
    return hashlib.sha256(data or b"").hexdigest()


def enc(value: str | bytes | None) -> dict[str, str] | None:
    """What the ledger module records for a key/header value."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    return {"str": value}


def expected_coordinates(end_offsets: Mapping[int, int]) -> set[tuple[int, int]]:
    """(partition, offset) of every produced record (fresh topics start at offset 0)."""
    return {(p, o) for p, end in end_offsets.items() for o in range(end)}


def function_config(
    *,
    brokers: str,
    topic: str,
    group: str,
    profile: Mapping[str, str],
    env: Mapping[str, str] | list[dict[str, str]],
    handler: str = "main:handler",
    workers: int = 1,
    mode: str = "pool",
    attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"name": "core-pipeline"},
        "spec": {
            "handler": handler,
            "runtime": "python",
            "env": env,
            "triggers": {
                TRIGGER: {
                    "kind": "kafka-cluster",
                    "numWorkers": workers,
                    "workerTerminationTimeout": "10s",
                    "attributes": {
                        "brokers": brokers,
                        "topics": [topic],
                        "consumerGroup": group,
                        "initialOffset": "earliest",
                        "workerAllocationMode": mode,
                        **profile,
                        **(attributes or {}),
                    },
                }
            },
        },
    }


def worker_pids(proc: Any) -> dict[int, int]:
    """worker id -> pid, from the "worker started" log lines (fails on a respawned worker)."""
    started = [log for log in proc.logs if log.get("message") == "worker started"]
    pids: dict[int, int] = {}
    for log in started:
        assert log["worker"] not in pids, f"worker {log['worker']} started twice\n{proc.output()}"
        pids[log["worker"]] = log["pid"]
    return pids


def assert_no_worker_trouble(proc: Any) -> None:
    trouble = [
        log
        for log in proc.logs
        if log.get("message") in {"worker died; replacing it", "killing worker", "trigger crashed"}
    ]
    assert not trouble, f"unexpected worker trouble: {trouble}\n{proc.output()}"


def stop_cleanly(proc: Any, timeout: float = 30.0) -> None:
    """SIGTERM; the process must exit 0 after logging "stopped"."""
    code = proc.terminate(signal.SIGTERM, timeout=timeout)
    assert code == 0, f"exit code {code}\n{proc.output()}"
    assert any(log.get("message") == "stopped" for log in proc.logs), proc.output()


def wait_for_ledger(
    wait_until: Callable[..., Any],
    ledger: Path,
    proc: Any,
    done: Callable[[list[dict[str, Any]]], bool],
    what: str,
    timeout: float = 60.0,
) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        assert proc.running, f"streamworker exited early\n{proc.output()}"
        entries = read_ledger(ledger)
        return entries if done(entries) else None

    def describe() -> str:
        entries = read_ledger(ledger)
        return f"{what}: ledger has {Counter(e['kind'] for e in entries)}\n{proc.output()}"

    result: list[dict[str, Any]] = wait_until(check, timeout=timeout, interval=0.05, message=describe)
    return result


# ---------------------------------------------------------------------------------- 1. clean run


@pytest.mark.parametrize("mode", ["pool", "static"])
def test_clean_run_keyed_records_over_partitions(
    mode: str,
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    partitions, count, workers = 4, 400, 3
    topic, group = unique("clean"), unique("clean-group")
    create_topics(broker_bootstrap, {topic: partitions})
    values = [f"{i}:k{i % 40}" for i in range(count)]
    records = [Record(value=value, key=value.split(":")[1]) for value in values]
    # Idempotence keeps the produce order inside a partition even if a request is retried.
    end = produce(broker_bootstrap, topic, records, config={"enable.idempotence": True})
    assert set(end) == set(range(partitions)), f"keys did not cover every partition: {end}"
    assert sum(end.values()) == count

    ledger = tmp_path / "ledger.jsonl"
    config = function_dir(
        SIMPLE_HANDLER,
        function_config(
            brokers=broker_bootstrap,
            topic=topic,
            group=group,
            profile=quick_profile,
            env={"LEDGER": str(ledger)},
            workers=workers,
            mode=mode,
        ),
        files={"swledger.py": LEDGER_MODULE},
    )
    proc = streamworker_process(config)
    wait_for_ledger(
        wait_until,
        ledger,
        proc,
        lambda entries: len(of_kind(entries, "handled")) >= count,
        f"all {count} records handled",
    )
    # Stop as soon as the last handler *started*: the shutdown must still let it finish and commit it.
    stop_cleanly(proc)

    entries = read_ledger(ledger)
    handled = of_kind(entries, "handled")

    # Exactly once, and exactly what was produced.
    coordinates = Counter((e["partition"], e["offset"]) for e in handled)
    duplicates = {c: n for c, n in coordinates.items() if n > 1}
    assert not duplicates, f"records handled more than once: {duplicates}"
    assert set(coordinates) == expected_coordinates(end)
    assert Counter(e["body_sha256"] for e in handled) == Counter(sha(v.encode()) for v in values)
    for e in handled:
        assert e["topic"] == topic and e["id"] == f"{topic}/{e['partition']}/{e['offset']}"
        assert e["attempt"] == 1
        assert e["key"] is not None and "str" in e["key"], e

    # Same key -> same partition.
    partition_of_key: dict[str, set[int]] = defaultdict(set)
    for e in handled:
        partition_of_key[e["key"]["str"]].add(e["partition"])
    assert all(len(ps) == 1 for ps in partition_of_key.values()), partition_of_key

    # Per partition: ordered by the time the handler started, offsets strictly increase.
    by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in sorted(handled, key=lambda e: e["mono"]):
        by_partition[e["partition"]].append(e)
    produce_index = {sha(v.encode()): i for i, v in enumerate(values)}
    for partition, items in by_partition.items():
        offsets = [e["offset"] for e in items]
        assert offsets == list(range(end[partition])), f"partition {partition} out of order: {offsets}"
        # ... which is also the order the records were produced in.
        indexes = [produce_index[e["body_sha256"]] for e in items]
        assert indexes == sorted(indexes), f"partition {partition}: not in produce order: {indexes}"

    # Workers: the pids that handled records are the workers the supervisor started, none replaced.
    assert_no_worker_trouble(proc)
    pids = worker_pids(proc)
    assert sorted(pids) == list(range(workers))
    inits = of_kind(entries, "init")
    assert sorted((e["worker_id"], e["pid"]) for e in inits) == sorted(pids.items())
    for e in handled:
        assert pids[e["worker_id"]] == e["pid"], f"worker id/pid mismatch: {e}"
    if mode == "pool":
        assert len({e["pid"] for e in handled}) > 1, "pool mode used a single worker"
    else:
        wrong = [e for e in handled if e["worker_id"] != e["partition"] % workers]
        assert not wrong, f"static mode: partition handled by the wrong worker: {wrong[:5]}"
        assert {e["worker_id"] for e in handled} == {p % workers for p in range(partitions)}

    # Termination callback ran once in every worker, after its last record.
    terminated = of_kind(entries, "terminated")
    assert sorted((e["worker_id"], e["pid"]) for e in terminated) == sorted(pids.items())
    last_handled = max(e["mono"] for e in handled)
    assert all(e["mono"] >= last_handled for e in terminated)

    # Everything was committed, up to the end offsets from the delivery reports.
    assert committed_offsets(broker_bootstrap, group, topic, partitions) == end
    stopped = next(log for log in proc.logs if log.get("message") == "stopped")
    assert stopped.get("killed_workers") == [], stopped


# ------------------------------------------------------------------------------ 2. awkward records

AWKWARD_HANDLER = """
import swledger


def handler(context, event):
    dup = event.get_header("DUP")  # case-insensitive lookup, last value wins
    swledger.write("handled", context, event, get_dup=swledger.enc(dup), body_head=event.body[:16].hex())
"""


def test_awkward_records(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    topic, group = unique("awkward"), unique("awkward-group")
    create_topics(broker_bootstrap, {topic: 1})
    big = os.urandom(900 * 1024)
    binary_key = b"\xff\xfe\x00key\x80"
    records = [
        Record(value=b"null key", key=None),
        Record(value=None, key="null-value"),
        Record(
            value=b"binary headers",
            key=binary_key,
            headers=[
                ("bin", b"\x80\x81\xff\x00"),
                ("dup", b"first"),
                ("dup", b"second"),
                ("text", "h\u00e9".encode()),
                ("none", None),
            ],
        ),
        Record(value=big, key="big"),
        Record(value=b'{"a": 1}', key="json", headers=[("content-type", b"application/json")]),
        Record(value=None, key=None, timestamp_ms=1_700_000_000_123),
    ]
    # The 900 KiB value fits librdkafka's default message.max.bytes (1,000,000); raise the producer
    # limit anyway so the test does not depend on batching details.
    end = produce(broker_bootstrap, topic, records, config={"message.max.bytes": 2_000_000})
    assert end == {0: len(records)}

    ledger = tmp_path / "ledger.jsonl"
    config = function_dir(
        AWKWARD_HANDLER,
        function_config(
            brokers=broker_bootstrap,
            topic=topic,
            group=group,
            profile=quick_profile,
            env={"LEDGER": str(ledger)},
            workers=2,
        ),
        files={"swledger.py": LEDGER_MODULE},
    )
    proc = streamworker_process(config)
    entries = wait_for_ledger(
        wait_until, ledger, proc, lambda entries: len(entries) >= len(records), "all awkward records handled"
    )
    wait_until(
        lambda: committed_offsets(broker_bootstrap, group, topic, 1) == end,
        timeout=30,
        interval=0.2,
        message=lambda: f"committed {committed_offsets(broker_bootstrap, group, topic, 1)} != {end}",
    )
    stop_cleanly(proc)
    entries = read_ledger(ledger)
    assert len(entries) == len(records), entries
    by_offset = {e["offset"]: e for e in entries}
    assert sorted(by_offset) == list(range(len(records)))

    for offset, record in enumerate(records):
        e = by_offset[offset]
        value = record.value if isinstance(record.value, bytes) else None
        assert e["body_type"] == "bytes", e
        assert e["body_len"] == len(value or b""), e
        assert e["body_sha256"] == sha(value), e
        assert e["id"] == f"{topic}/0/{offset}"

    # Null key, and a null value arrives as body b"".
    assert by_offset[0]["key"] is None
    assert by_offset[1]["key"] == {"str": "null-value"} and by_offset[1]["body_len"] == 0
    assert by_offset[0]["headers"] == [] and by_offset[0]["content_type"] == {"str": ""}

    # A non-UTF-8 key stays bytes; header values are bytes, as Nuclio gives them; duplicates are
    # all kept.
    binary = by_offset[2]
    assert binary["key"] == {"hex": binary_key.hex()}
    assert binary["headers"] == [
        ["bin", {"hex": "8081ff00"}],
        ["dup", {"hex": b"first".hex()}],
        ["dup", {"hex": b"second".hex()}],
        ["text", {"hex": "h\u00e9".encode().hex()}],
        ["none", None],
    ]
    assert binary["get_dup"] == {"hex": b"second".hex()}

    # The ~900 KiB value arrives whole.
    assert by_offset[3]["body_len"] == len(big) and by_offset[3]["body_head"] == big[:16].hex()

    # content-type header -> event.content_type.
    assert by_offset[4]["content_type"] == {"str": "application/json"}

    # Null key and value with an explicit timestamp (ms precision).
    assert by_offset[5]["key"] is None and by_offset[5]["body_len"] == 0
    assert by_offset[5]["timestamp_ms"] == 1_700_000_000_123
    # Records produced without a timestamp carry the produce time.
    assert all(by_offset[o]["timestamp_ms"] is not None for o in range(5))

    assert committed_offsets(broker_bootstrap, group, topic, 1) == end
    assert_no_worker_trouble(proc)


# ------------------------------------------------------------------------------- 3. async handler

ASYNC_HANDLER = """
import asyncio

import swledger

_tasks = set()


async def init_context(context):
    await asyncio.sleep(0.01)
    context.user_data.loop_id = id(asyncio.get_running_loop())
    swledger.write("init", context, loop_id=context.user_data.loop_id)


async def handler(context, event):
    await asyncio.sleep(0)
    loop_id = id(asyncio.get_running_loop())
    swledger.write("handled", context, event, same_loop=loop_id == context.user_data.loop_id)
    partition, offset, pid = event.partition, event.offset, __import__("os").getpid()

    async def later():
        await asyncio.sleep(0.05)
        swledger.write("task", context, for_partition=partition, for_offset=offset, handler_pid=pid)

    task = asyncio.create_task(later())
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    swledger.write("returned", context, for_partition=partition, for_offset=offset)
    return "ok"
"""


def test_async_handler_and_background_tasks(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    topic, group = unique("async"), unique("async-group")
    create_topics(broker_bootstrap, {topic: 2})
    records = [Record(value=f"v{i}", key=f"k{i}", partition=i % 2) for i in range(20)]
    end = produce(broker_bootstrap, topic, records)
    count = len(records)

    ledger = tmp_path / "ledger.jsonl"
    config = function_dir(
        ASYNC_HANDLER,
        function_config(
            brokers=broker_bootstrap,
            topic=topic,
            group=group,
            profile=quick_profile,
            env={"LEDGER": str(ledger)},
            workers=2,
        ),
        files={"swledger.py": LEDGER_MODULE},
    )
    proc = streamworker_process(config)
    # The tasks' lines must appear while the workers are idle (no SIGTERM yet, no more records):
    # the worker's event loop keeps running between events.
    entries = wait_for_ledger(
        wait_until,
        ledger,
        proc,
        lambda entries: len(of_kind(entries, "task")) >= count and len(of_kind(entries, "handled")) >= count,
        "every background task ran",
    )
    wait_until(
        lambda: committed_offsets(broker_bootstrap, group, topic, 2) == end,
        timeout=30,
        interval=0.2,
        message=lambda: f"committed {committed_offsets(broker_bootstrap, group, topic, 2)} != {end}",
    )
    stop_cleanly(proc)
    entries = read_ledger(ledger)

    pids = worker_pids(proc)
    inits = of_kind(entries, "init")
    assert sorted((e["worker_id"], e["pid"]) for e in inits) == sorted(pids.items()), inits

    handled = of_kind(entries, "handled")
    assert sorted((e["partition"], e["offset"]) for e in handled) == sorted(expected_coordinates(end))
    assert all(e["same_loop"] for e in handled), "handler ran on another loop than init_context"

    returned = {(e["for_partition"], e["for_offset"]): e for e in of_kind(entries, "returned")}
    tasks = of_kind(entries, "task")
    task_keys = [(e["for_partition"], e["for_offset"]) for e in tasks]
    assert sorted(task_keys) == sorted(returned) == sorted(expected_coordinates(end)), tasks
    for task in tasks:
        ret = returned[(task["for_partition"], task["for_offset"])]
        assert task["pid"] == task["handler_pid"] == ret["pid"]
        # The task's line comes after the handler returned, by at least its 50 ms sleep.
        assert task["mono"] >= ret["mono"] + 0.045, (task, ret)
    assert_no_worker_trouble(proc)


# ------------------------------------------------------------------------- 4. retry, never skip

RETRY_HANDLER = """
import os

import swledger


def handler(context, event):
    if event.key != "poison":
        swledger.write("handled", context, event)
        return "ok"
    path = os.path.join(os.environ["ATTEMPTS_DIR"], f"{event.partition}-{event.offset}")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)
    attempt = os.path.getsize(path)
    if attempt <= 2:
        swledger.write("failed", context, event, counted_attempt=attempt)
        raise RuntimeError(f"poison record, attempt {attempt}")
    swledger.write("handled", context, event, counted_attempt=attempt)
    return "ok"
"""


def test_handler_exception_is_retried_never_skipped(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    topic, group = unique("retry"), unique("retry-group")
    create_topics(broker_bootstrap, {topic: 2})
    poison_offset = 3
    records = [
        Record(value=f"p0-{i}", key="poison" if i == poison_offset else f"a{i}", partition=0)
        for i in range(10)
    ] + [Record(value=f"p1-{i}", key=f"b{i}", partition=1) for i in range(10)]
    end = produce(broker_bootstrap, topic, records)
    assert end == {0: 10, 1: 10}

    ledger = tmp_path / "ledger.jsonl"
    attempts_dir = tmp_path / "attempts"
    attempts_dir.mkdir()
    config = function_dir(
        RETRY_HANDLER,
        function_config(
            brokers=broker_bootstrap,
            topic=topic,
            group=group,
            profile=quick_profile,
            env={"LEDGER": str(ledger), "ATTEMPTS_DIR": str(attempts_dir)},
            workers=2,
            attributes={"retryBackoff": "100ms", "maxRetries": 5},
        ),
        files={"swledger.py": LEDGER_MODULE},
    )
    proc = streamworker_process(config)
    wait_for_ledger(
        wait_until, ledger, proc, lambda entries: len(of_kind(entries, "handled")) >= 20, "all 20 handled"
    )
    wait_until(
        lambda: committed_offsets(broker_bootstrap, group, topic, 2) == end,
        timeout=30,
        interval=0.2,
        message=lambda: f"committed {committed_offsets(broker_bootstrap, group, topic, 2)} != {end}",
    )
    stop_cleanly(proc)
    entries = sorted(read_ledger(ledger), key=lambda e: e["mono"])

    # Partition 0, in the order the handler ran: 0, 1, 2, 3 (fails), 3 (fails), 3 (ok), 4 ... 9.
    p0 = [(e["offset"], e["kind"]) for e in entries if e.get("partition") == 0]
    expected = [(o, "handled") for o in range(poison_offset)]
    expected += [(poison_offset, "failed"), (poison_offset, "failed"), (poison_offset, "handled")]
    expected += [(o, "handled") for o in range(poison_offset + 1, 10)]
    assert p0 == expected, f"partition 0 ran as {p0}"
    poison = [e for e in entries if e.get("partition") == 0 and e["offset"] == poison_offset]
    assert [e["counted_attempt"] for e in poison] == [1, 2, 3]
    assert [e["attempt"] for e in poison] == [1, 2, 3], "event.attempt must count deliveries"
    assert (attempts_dir / f"0-{poison_offset}").stat().st_size == 3
    # retryBackoff 100ms (doubling): each retry waited at least the backoff.
    assert poison[1]["mono"] - poison[0]["mono"] >= 0.09, poison
    assert poison[2]["mono"] - poison[1]["mono"] >= 0.09, poison

    # Partition 1 is unaffected: handled once each, in order, without waiting for the poison record.
    p1 = [e for e in entries if e.get("partition") == 1]
    assert [(e["offset"], e["kind"]) for e in p1] == [(o, "handled") for o in range(10)]
    assert p1[-1]["mono"] < poison[2]["mono"], "partition 1 waited for partition 0's retries"

    failures = [
        log
        for log in proc.logs
        if log.get("message") == "handler failed; will retry"
        and log.get("partition") == 0
        and log.get("offset") == poison_offset
    ]
    assert len(failures) == 2, f"{failures}\n{proc.output()}"
    assert [f.get("next_attempt") for f in failures] == [2, 3]
    assert all(f.get("error_type") == "RuntimeError" for f in failures), failures
    assert not [
        log
        for log in proc.logs
        if log.get("message") == "handler failed; will retry" and log.get("offset") != poison_offset
    ]
    assert committed_offsets(broker_bootstrap, group, topic, 2) == end


# --------------------------------------------------------------------- 5. spec.env and sys.path

PKG_MODULE = """
import os
import sys

import helper  # next to main.py, in the function's folder
import swledger

from . import sibling


def handler(context, event):
    swledger.write(
        "handled",
        context,
        event,
        greeting=os.environ.get("GREETING"),
        number=os.environ.get("NUMBER"),
        empty=os.environ.get("EMPTY"),
        sys_path_0=sys.path[0],
        cwd=os.getcwd(),
        helper_marker=helper.MARKER,
        helper_file=helper.__file__,
        sibling=sibling.VALUE,
        module_file=__file__,
    )
    return "ok"
"""


def test_spec_env_and_code_folder_first_on_sys_path(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    topic, group = unique("env"), unique("env-group")
    create_topics(broker_bootstrap, {topic: 1})
    end = produce(broker_bootstrap, topic, [Record(value=f"v{i}", key="k") for i in range(3)])

    ledger = tmp_path / "ledger.jsonl"
    # A decoy helper.py in the working directory: the function folder's own must win.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "helper.py").write_text("MARKER = 'decoy from the working directory'\n")
    env = [
        {"name": "LEDGER", "value": str(ledger)},
        {"name": "GREETING", "value": "hello from spec.env"},
        {"name": "NUMBER", "value": "42"},
        {"name": "EMPTY", "value": ""},
    ]
    config = function_dir(
        "raise RuntimeError('main.py must not be imported: the handler is pkg.mod:handler')\n",
        function_config(
            brokers=broker_bootstrap,
            topic=topic,
            group=group,
            profile=quick_profile,
            env=env,
            handler="pkg.mod:handler",
        ),
        files={
            "swledger.py": LEDGER_MODULE,
            "helper.py": "MARKER = 'helper next to main.py'\n",
            "pkg/__init__.py": "",
            "pkg/mod.py": PKG_MODULE,
            "pkg/sibling.py": "VALUE = 'sibling'\n",
        },
    )
    code_dir = config.parent
    proc = streamworker_process(config, env={"GREETING": "overridden by spec.env"}, cwd=run_dir)
    entries = wait_for_ledger(
        wait_until, ledger, proc, lambda entries: len(entries) >= 3, "3 records handled"
    )
    stop_cleanly(proc)
    entries = read_ledger(ledger)
    assert sorted(e["offset"] for e in entries) == [0, 1, 2]
    for e in entries:
        assert e["greeting"] == "hello from spec.env"
        assert e["number"] == "42"
        assert e["empty"] == ""
        assert e["cwd"] == str(run_dir)
        assert os.path.realpath(e["sys_path_0"]) == os.path.realpath(code_dir), e["sys_path_0"]
        assert e["helper_marker"] == "helper next to main.py", e["helper_file"]
        assert e["sibling"] == "sibling"
        assert os.path.realpath(e["module_file"]) == os.path.realpath(code_dir / "pkg" / "mod.py")
    assert committed_offsets(broker_bootstrap, group, topic, 1) == end


# --------------------------------------------------------------------------- 6. unreachable brokers


def closed_loopback_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_brokers_stay_up_then_stop_cleanly(
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    config = function_dir(
        SIMPLE_HANDLER,
        function_config(
            brokers=f"127.0.0.1:{closed_loopback_port()}",
            topic=unique("nobroker"),
            group=unique("nobroker-group"),
            profile=quick_profile,
            env={"LEDGER": str(ledger)},
            workers=2,
        ),
        files={"swledger.py": LEDGER_MODULE},
    )
    # Repeated client errors are summarised once per interval (1 s here instead of 10 s).
    proc = streamworker_process(config, env={"STREAMWORKER_LOG_REPEAT_INTERVAL": "1"})
    first = proc.wait_for_log("kafka client error", timeout=15)
    assert first.get("level") == "warning", first

    # Keep watching until the client has been failing for 3 s: the process must still be up,
    # with the same workers (no crash loop, no respawns).
    def client_errors() -> list[dict[str, Any]]:
        kinds = ("kafka client error", "kafka client messages repeated")
        return [log for log in proc.logs if log.get("message") in kinds]

    def failing_for_3s() -> bool:
        assert proc.running, f"streamworker exited while the brokers were unreachable\n{proc.output()}"
        errors = client_errors()
        wall = [e for e in (e.get("timestamp") for e in errors) if isinstance(e, str)]
        if len(wall) < 2:
            return False
        span = datetime.fromisoformat(wall[-1]) - datetime.fromisoformat(wall[0])
        return span.total_seconds() >= 3.0

    wait_until(failing_for_3s, timeout=20, interval=0.1, message=lambda: f"errors: {len(client_errors())}")
    assert proc.running
    assert len([log for log in proc.logs if log.get("message") == "starting"]) == 1
    assert sorted(worker_pids(proc)) == [0, 1]
    assert_no_worker_trouble(proc)
    assert not any(log.get("fatal") for log in client_errors()), "an unreachable broker is not fatal"

    stop_cleanly(proc, timeout=15)
    # The workers were told to stop: their termination callbacks ran.
    assert sorted(e["worker_id"] for e in of_kind(read_ledger(ledger), "terminated")) == [0, 1]
