"""Lost partitions (session expired): nothing is committed for them, work stops, and it is logged."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from devtools.broker import Record, committed_offsets, create_topics, produce

HANDLER = """
import json
import os


def handler(context, event):
    with open(os.environ["LEDGER"], "a") as ledger:
        ledger.write(json.dumps({"partition": event.partition, "offset": event.offset}) + "\\n")
"""


def test_session_expiry_loses_partitions_without_committing_then_recovers(
    broker_bootstrap: str,
    unique: Any,
    function_dir: Any,
    streamworker_process: Any,
    wait_until: Any,
    quick_profile: dict[str, str],
    tmp_path: Path,
) -> None:
    topic, group = unique("lost"), unique("lost-g")
    create_topics(broker_bootstrap, {topic: 2})
    first = produce(
        broker_bootstrap, topic, [Record(value=b"a", partition=p) for p in (0, 1) for _ in range(5)]
    )
    ledger = tmp_path / "ledger.jsonl"
    config = function_dir(
        HANDLER,
        {
            "metadata": {"name": "lost"},
            "spec": {
                "handler": "main:handler",
                "env": [{"name": "LEDGER", "value": str(ledger)}],
                "triggers": {
                    "k": {
                        "kind": "kafka-cluster",
                        "attributes": {
                            "brokers": broker_bootstrap,
                            "topics": [topic],
                            "consumerGroup": group,
                            **quick_profile,
                            "librdkafka": {"fetch.wait.max.ms": 100},
                        },
                    }
                },
            },
        },
    )
    process = streamworker_process(config)
    wait_until(lambda: committed_offsets(broker_bootstrap, group, topic, 2) == first, 30)
    before = len(process.logs)

    # Freeze the whole supervisor (its heartbeat thread too) past the 2 s session timeout.
    os.kill(process.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:  # the freeze IS the behaviour under test: wait it out
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGCONT)

    lost = process.wait_for_log(
        "partitions lost (session expired); nothing committed for them", timeout=30, start=before
    )
    assert sorted(lost["partitions"]) == sorted(f"{topic}/{p}" for p in (0, 1))
    moved = [
        e
        for e in process.logs[before:]
        if e.get("message")
        in {"partitions lost (session expired); nothing committed for them", "partitions revoked"}
    ]
    assert moved[0]["message"].startswith("partitions lost"), (
        "lost partitions must not take the revoke path (which commits)"
    )
    process.wait_for_log("partitions assigned", timeout=30, start=before)

    second = produce(
        broker_bootstrap, topic, [Record(value=b"b", partition=p) for p in (0, 1) for _ in range(5)]
    )
    wait_until(lambda: committed_offsets(broker_bootstrap, group, topic, 2) == second, 30)
    assert process.terminate() == 0
    seen = {(line["partition"], line["offset"]) for line in map(json.loads, ledger.read_text().splitlines())}
    assert seen == {(p, o) for p in (0, 1) for o in range(10)}, "nothing lost across the expiry"
