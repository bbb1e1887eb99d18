"""``workerAllocationMode: key`` end to end (issue #5): a key always goes to the same worker and runs
in offset order, different keys of one partition run in parallel, and a failing record holds back
only its own key (and the commit).

The handler (``HANDLER``) records every call in a *ledger*: a JSON-lines file whose path comes from
``spec.env`` (``LEDGER``), one ``os.write`` per line on an ``O_APPEND`` descriptor, so lines of
different worker processes never interleave. A line carries the pid, worker id, key, offset, attempt
and ``time.monotonic()`` at the start and end of the call (CLOCK_MONOTONIC is shared by every
process on the machine, so calls of different workers compare). A record body is JSON:
``{"id", "fail": n}`` (fail the first n attempts) and ``"sleep"`` (seconds, default ``DELAY_S``).

Group rules from ``/work/shared/notes/broker.md``: unique topic and group per test, the quick
timeout profile, end offsets from delivery reports, topics never deleted.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any

from ledger_source import LEDGER_WRITE

from devtools.broker import Record, committed_offsets, create_topics, produce
from streamworker.supervisor.dispatch import key_worker

HANDLER = (
    """
import json
import os
import time

"""
    + LEDGER_WRITE
    + """

def handler(context, event):
    start = time.monotonic()
    body = json.loads(event.body)
    if event.attempt <= body.get("fail", 0):
        write("fail", context, event, start=start, end=time.monotonic())
        raise RuntimeError(f"{body['id']} fails attempt {event.attempt}")
    time.sleep(body.get("sleep", DELAY_S))
    write("done", context, event, start=start, end=time.monotonic())
    return "ok"
"""
)

TRIGGER = "keyed"


def function_config(
    *, brokers: str, topic: str, group: str, profile: Mapping[str, str], env: Mapping[str, str], workers: int
) -> dict[str, Any]:
    return {
        "metadata": {"name": "key-mode"},
        "spec": {
            "handler": "main:handler",
            "env": dict(env),
            "triggers": {
                TRIGGER: {
                    "kind": "kafka-cluster",
                    "numWorkers": workers,
                    "attributes": {
                        "brokers": brokers,
                        "topics": [topic],
                        "consumerGroup": group,
                        "initialOffset": "earliest",
                        "workerAllocationMode": "key",
                        "retryBackoff": "200ms",
                        **profile,
                        "librdkafka": {"fetch.wait.max.ms": 100},
                    },
                }
            },
        },
    }


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """Every complete line of the ledger, in the order the calls started."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return sorted((json.loads(line) for line in data.split(b"\n")[:-1] if line), key=lambda e: e["start"])


def of_kind(entries: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in entries if e["kind"] == kind]


def logs_named(proc: Any, message: str) -> list[dict[str, Any]]:
    return [log for log in proc.logs if log.get("message") == message]


def wait_committed(
    wait_until: Callable[..., Any], bootstrap: str, group: str, topic: str, end: Mapping[int, int]
) -> None:
    seen: dict[int, int] = {}

    def reached() -> bool:
        nonlocal seen
        seen = committed_offsets(bootstrap, group, topic, sorted(end))
        return seen == dict(end)

    wait_until(reached, 30, interval=0.2, message=lambda: f"committed {seen} != {dict(end)}")


def stop_cleanly(proc: Any) -> None:
    code = proc.terminate(signal.SIGTERM, timeout=30)
    assert code == 0, f"exit code {code}\n{proc.output()}"


def worker_pids(proc: Any) -> dict[int, int]:
    """worker id -> pid from the "worker started" lines; fails if a worker was replaced."""
    pids: dict[int, int] = {}
    for log in logs_named(proc, "worker started"):
        assert log["worker"] not in pids, f"worker {log['worker']} started twice\n{proc.output()}"
        pids[log["worker"]] = log["pid"]
    return pids


def max_concurrency(calls: list[dict[str, Any]]) -> int:
    """The most calls running at one moment (sweep over start/end times)."""
    points = sorted([(c["start"], 1) for c in calls] + [(c["end"], -1) for c in calls])
    running = best = 0
    for _, step in points:
        running += step
        best = max(best, running)
    return best


def test_same_key_same_worker_in_order_and_keys_in_parallel(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    topic, group = unique("keyed"), unique("group")
    create_topics(broker_bootstrap, {topic: 1})
    keys, per_key, workers = 20, 10, 4
    # Keys interleaved round robin, plus a null-key record every 25th: one partition, 208 records.
    records: list[Record] = []
    for i in range(keys * per_key):
        if i % 25 == 0:
            records.append(Record(value=json.dumps({"id": f"null-{i}"}), key=None, partition=0))
        records.append(Record(value=json.dumps({"id": f"r{i}"}), key=f"key-{i % keys:02d}", partition=0))
    end = produce(broker_bootstrap, topic, records, config={"enable.idempotence": True})
    assert end == {0: len(records)}

    ledger = tmp_path / "ledger.jsonl"
    config = function_dir(
        HANDLER,
        function_config(
            brokers=broker_bootstrap,
            topic=topic,
            group=group,
            profile=quick_profile,
            env={"LEDGER": str(ledger), "DELAY_S": "0.005"},
            workers=workers,
        ),
    )
    proc = streamworker_process(config)
    wait_committed(wait_until, broker_bootstrap, group, topic, end)
    stop_cleanly(proc)

    calls = of_kind(read_ledger(ledger), "done")
    assert not of_kind(read_ledger(ledger), "fail")
    assert Counter(c["offset"] for c in calls) == Counter(range(len(records))), "not exactly once"
    assert all(c["attempt"] == 1 for c in calls)
    key_of_offset = {o: (None if r.key is None else str(r.key)) for o, r in enumerate(records)}
    assert all(c["key"] == key_of_offset[c["offset"]] for c in calls)

    pids = worker_pids(proc)
    assert sorted(pids) == list(range(workers))
    by_key: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for call in calls:  # in start order
        by_key[call["key"]].append(call)
    assert len(by_key) == keys + 1
    for key, key_calls in by_key.items():
        # One worker per key (the one key_worker picks; null keys share the b"" lane), ...
        assert {c["pid"] for c in key_calls} == {pids[c["worker_id"]] for c in key_calls}
        assert len({c["pid"] for c in key_calls}) == 1, f"key {key!r} ran on several workers"
        expected_worker = key_worker((key or "").encode(), workers)
        assert key_calls[0]["worker_id"] == expected_worker, (key, key_calls[0]["worker_id"], expected_worker)
        # ... one call at a time, in offset order.
        offsets = [c["offset"] for c in key_calls]
        assert offsets == sorted(offsets), f"key {key!r} out of order: {offsets}"
        for before, after in pairwise(key_calls):
            assert after["start"] >= before["end"], f"key {key!r}: two calls overlapped: {before}, {after}"

    used = {c["pid"] for c in calls}
    concurrency = max_concurrency(calls)
    print(f"workers used: {len(used)}; most calls running at once: {concurrency}")
    assert len(used) > 1, "one worker handled every key"
    # Records of one partition with different keys ran at the same time.
    assert concurrency >= 2, "no two records of the partition ever ran at the same time"
    overlapping_keys = {
        (a["key"], b["key"])
        for a, b in pairwise(sorted(calls, key=lambda c: c["start"]))
        if b["start"] < a["end"] and a["key"] != b["key"]
    }
    assert overlapping_keys, "no records of different keys overlapped"
    assert not logs_named(proc, "worker died; replacing it")


def test_failing_record_holds_back_only_its_key_and_the_commit(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """Key ``key-3``'s first record (offset 3) fails twice, then succeeds slowly (1.2 s), so that at
    least one commit round (every second) runs while it is the only unfinished record but its own
    key's later ones."""
    topic, group = unique("keyed"), unique("group")
    create_topics(broker_bootstrap, {topic: 1})
    keys, per_key, held_offset, held_key = 10, 10, 3, "key-3"
    records = [
        Record(
            value=json.dumps(
                {"id": f"r{i}", "fail": 2, "sleep": 1.2} if i == held_offset else {"id": f"r{i}"}
            ),
            key=f"key-{i % keys}",
            partition=0,
        )
        for i in range(keys * per_key)
    ]
    end = produce(broker_bootstrap, topic, records, config={"enable.idempotence": True})
    assert end == {0: len(records)}

    ledger = tmp_path / "ledger.jsonl"
    config = function_dir(
        HANDLER,
        function_config(
            brokers=broker_bootstrap,
            topic=topic,
            group=group,
            profile=quick_profile,
            env={"LEDGER": str(ledger), "DELAY_S": "0.003"},
            workers=4,
        ),
    )
    proc = streamworker_process(config)
    # Sample the committed offset until the held record is done; keep when each sample was complete.
    samples: list[tuple[float, int | None]] = []

    def held_record_done() -> bool:
        assert proc.running, proc.output()
        committed = committed_offsets(broker_bootstrap, group, topic, [0]).get(0)
        samples.append((time.monotonic(), committed))
        return any(e["offset"] == held_offset for e in of_kind(read_ledger(ledger), "done"))

    wait_until(held_record_done, 30, interval=0.1, message=lambda: f"offset {held_offset} never succeeded")
    wait_committed(wait_until, broker_bootstrap, group, topic, end)
    stop_cleanly(proc)

    entries = read_ledger(ledger)
    held = [e for e in entries if e["offset"] == held_offset]
    assert [(e["kind"], e["attempt"]) for e in held] == [("fail", 1), ("fail", 2), ("done", 3)], held
    for n, (before, after) in enumerate(pairwise(held), start=1):
        assert after["start"] - before["end"] >= 0.2 * 2 ** (n - 1), f"retry {n} came early: {held}"
    success = held[-1]
    retries = logs_named(proc, "handler failed; will retry")
    assert [(log["offset"], log["next_attempt"]) for log in retries] == [(held_offset, 2), (held_offset, 3)]

    done = of_kind(entries, "done")
    assert Counter(e["offset"] for e in done) == Counter(range(len(records)))
    # The held key's later records waited for it, in order ...
    same_key = [e for e in done if e["key"] == held_key]
    assert [e["offset"] for e in same_key] == list(range(held_offset, len(records), keys))
    assert all(e["start"] >= success["end"] for e in same_key[1:]), "a later record of the key ran early"
    # ... while every other key's records, later offsets included, ran without waiting for its retries.
    others = [e for e in done if e["key"] != held_key]
    late_others = [e for e in others if e["offset"] > held_offset]
    assert len(late_others) == (keys - 1) * per_key - held_offset
    waited = [e["offset"] for e in others if e["end"] > success["start"]]
    assert not waited, f"records of other keys finished only after the held key's retry started: {waited}"

    # The commit never passed the held record before it succeeded, and sat exactly on it meanwhile.
    before_success = [committed for at, committed in samples if at < success["end"]]
    print(f"committed offsets sampled while offset {held_offset} was unfinished: {before_success}")
    assert all(c is None or c <= held_offset for c in before_success), before_success
    assert held_offset in before_success, "never saw the commit stop at the held record"
