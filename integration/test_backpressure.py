"""Backpressure and slow handlers end to end (issue #5): ``maxBufferedRecords`` pauses a partition and
resumes it once it drained to half, and a handler running longer than ``maxPollInterval`` does not
cost the group membership, because the poll loop never waits for a worker.

The handler (``HANDLER``) records every call in a *ledger*: a JSON-lines file whose path comes from
``spec.env`` (``LEDGER``), one ``os.write`` per line on an ``O_APPEND`` descriptor. A line carries the
pid, partition, offset, attempt and ``time.time()`` at the start and end of the call, comparable with
the timestamps of streamworker's log lines. A record body is JSON ``{"id", "sleep"}`` (seconds,
default ``DELAY_S``); calls sleeping more than a second also write a ``start`` line first.

Group rules from ``/work/shared/notes/broker.md``: unique topic and group per test, the quick
timeout profile, end offsets from delivery reports, topics never deleted.
"""

from __future__ import annotations

import json
import re
import signal
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from ledger_source import LEDGER_WRITE

from devtools.broker import Record, committed_offsets, create_topics, produce

HANDLER = (
    """
import json
import os
import time

"""
    + LEDGER_WRITE
    + """

def handler(context, event):
    start = time.time()
    pause = json.loads(event.body).get("sleep", DELAY_S)
    if pause > 1:
        write("start", context, event, start=start)
    time.sleep(pause)
    write("done", context, event, start=start, end=time.time())
    return "ok"
"""
)

TRIGGER = "slow"


def function_config(
    *,
    brokers: str,
    topic: str,
    group: str,
    profile: Mapping[str, str],
    env: Mapping[str, str],
    workers: int,
    attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"name": "backpressure"},
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
                        **profile,
                        "librdkafka": {"fetch.wait.max.ms": 100},
                        **(attributes or {}),
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


def of_kind(entries: list[dict[str, Any]], kind: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in entries if e["kind"] == kind and all(e.get(k) == v for k, v in match.items())]


def logs_named(proc: Any, *messages: str) -> list[dict[str, Any]]:
    return [log for log in proc.logs if log.get("message") in messages]


def log_time(log: Mapping[str, Any]) -> float:
    """A log line's ISO-8601 timestamp as seconds since the epoch (comparable with time.time())."""
    return datetime.fromisoformat(str(log["timestamp"]).replace("Z", "+00:00")).timestamp()


def wait_committed(
    wait_until: Callable[..., Any],
    bootstrap: str,
    group: str,
    topic: str,
    end: Mapping[int, int],
    timeout: float,
) -> None:
    seen: dict[int, int] = {}

    def reached() -> bool:
        nonlocal seen
        seen = committed_offsets(bootstrap, group, topic, sorted(end))
        return seen == dict(end)

    wait_until(reached, timeout, interval=0.2, message=lambda: f"committed {seen} != {dict(end)}")


def stop_cleanly(proc: Any) -> None:
    code = proc.terminate(signal.SIGTERM, timeout=30)
    assert code == 0, f"exit code {code}\n{proc.output()}"


PAUSED = "buffer full; partitions paused"
# librdkafka's "Application maximum poll interval (8000ms) exceeded by ..." and the like.
POLL_TROUBLE = re.compile(r"max(imum)?[ ._]poll", re.IGNORECASE)
RESUMED = "buffer drained; partitions resumed"


def test_full_buffer_pauses_the_partition_and_a_drained_one_resumes_it(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """A 500-record backlog on one partition, ``maxBufferedRecords: 50``, a handler of ~0.5 ms.

    Why not thousands: once the limit is kept, every resume costs up to ~1 s here, because librdkafka
    (2.16) starts fetching a resumed partition only about a second after it was paused (0.5 s with
    fetch.wait.max.ms 500; a seek right after the resume avoids it), so 500 records already mean ~10
    pause/resume cycles, ~10 s.

    How many records were fetched and not finished when the partition was paused is inferred from
    the ledger: the partition is resumed as soon as no more than half the limit (25) are left, so
    the records finished between a pause line and the next resume line are about
    (unfinished at the pause) - 25, give or take what finishes within one flow-control check (every
    50 ms). A product that keeps to the limit pauses at ~50 and finishes at most ~75 per pause.
    """
    limit, count = 50, 500
    topic, group = unique("backlog"), unique("group")
    create_topics(broker_bootstrap, {topic: 1})
    records = [Record(value=json.dumps({"id": f"r{i}"}), key=f"k{i}", partition=0) for i in range(count)]
    end = produce(broker_bootstrap, topic, records, config={"enable.idempotence": True})
    assert end == {0: count}

    ledger = tmp_path / "ledger.jsonl"
    config = function_dir(
        HANDLER,
        function_config(
            brokers=broker_bootstrap,
            topic=topic,
            group=group,
            profile=quick_profile,
            env={"LEDGER": str(ledger), "DELAY_S": "0.0005"},
            workers=2,
            attributes={"maxBufferedRecords": limit},
        ),
    )
    proc = streamworker_process(config)
    wait_committed(wait_until, broker_bootstrap, group, topic, end, timeout=60)
    stop_cleanly(proc)

    done = of_kind(read_ledger(ledger), "done")
    assert [e["offset"] for e in done] == list(range(count)), "not every record exactly once, in order"
    assert all(e["attempt"] == 1 for e in done)

    flow = logs_named(proc, PAUSED, RESUMED)
    assert flow, f"the partition was never paused\n{proc.output()}"
    kinds = [log["message"] for log in flow]
    # Paused and resumed in turn, starting with a pause.
    assert all(kind == (PAUSED if i % 2 == 0 else RESUMED) for i, kind in enumerate(kinds)), kinds
    assert kinds.count(RESUMED) >= 1, kinds
    assert all(log["partitions"] == [f"{topic}/0"] for log in flow), flow

    ends = sorted(e["end"] for e in done)
    drained = []
    for paused, resumed in zip(flow[::2], flow[1::2], strict=False):
        start, stop = log_time(paused), log_time(resumed)
        drained.append(sum(1 for t in ends if start < t <= stop))
    print(f"{len(drained)} pause/resume cycles; records finished while paused, per cycle: {drained}")
    # Unfinished at a pause: at least what finished before the resume, at most that + limit / 2.
    worst = max(drained)
    assert worst + limit // 2 <= 2 * limit, (
        f"maxBufferedRecords {limit}: {worst}-{worst + limit // 2} records were fetched and unfinished when "
        f"the partition was paused (records finished between pause and resume, per cycle: {drained})"
    )


def test_handler_longer_than_max_poll_interval_keeps_the_membership(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """maxPollInterval 8 s (the loader keeps it: it only raises it to sessionTimeout + 5 s = 7 s) and a
    12 s handler call on partition 0. Partition 1 keeps flowing on the other worker meanwhile."""
    slow_s = 12.0
    topic, group = unique("slow"), unique("group")
    create_topics(broker_bootstrap, {topic: 2})
    records = [Record(value=json.dumps({"id": "slow", "sleep": slow_s}), partition=0)]
    records += [Record(value=json.dumps({"id": f"p0-{i}"}), partition=0) for i in range(1, 4)]
    records += [Record(value=json.dumps({"id": f"p1-{i}"}), partition=1) for i in range(3)]
    assert produce(broker_bootstrap, topic, records) == {0: 4, 1: 3}

    ledger = tmp_path / "ledger.jsonl"
    config = function_dir(
        HANDLER,
        function_config(
            brokers=broker_bootstrap,
            topic=topic,
            group=group,
            profile={**quick_profile, "maxPollInterval": "8s"},
            env={"LEDGER": str(ledger)},
            workers=2,
        ),
    )
    proc = streamworker_process(config)
    started = wait_until(lambda: of_kind(read_ledger(ledger), "start", partition=0, offset=0), 30)[0]
    # Records produced while the long call runs are handled while it runs.
    assert produce(broker_bootstrap, topic, [Record(value=json.dumps({"id": "p1-late"}), partition=1)]) == {
        1: 4
    }
    late = wait_until(lambda: of_kind(read_ledger(ledger), "done", partition=1, offset=3), 10)[0]
    end = {0: 4, 1: 4}
    wait_committed(wait_until, broker_bootstrap, group, topic, end, timeout=slow_s + 20)
    stop_cleanly(proc)

    entries = read_ledger(ledger)
    slow = of_kind(entries, "done", partition=0, offset=0)
    assert len(slow) == 1 and slow[0]["attempt"] == 1, slow
    assert slow[0]["end"] - started["start"] >= slow_s
    assert late["end"] < slow[0]["end"], "partition 1 waited for partition 0's long call"
    assert Counter((e["partition"], e["offset"]) for e in of_kind(entries, "done")) == Counter(
        [(0, o) for o in range(4)] + [(1, o) for o in range(4)]
    )
    # Until the stop: one assignment, never revoked or lost, no poll-interval trouble from librdkafka.
    stop_at = next(i for i, log in enumerate(proc.logs) if log.get("message") == "stop requested")
    running = proc.logs[:stop_at]
    assert [log["message"] for log in running].count("partitions assigned") == 1, proc.output()
    trouble = [
        log
        for log in running
        if str(log.get("message", "")).startswith(("partitions revoked", "partitions lost"))
        or POLL_TROUBLE.search(f"{log.get('detail', '')} {log.get('error', '')}")
    ]
    assert not trouble, trouble
