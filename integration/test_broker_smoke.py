"""Smoke tests of the integration fixtures: broker, naming, produce/consume/commit, process helper."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, Message

from devtools.broker import Record, committed_offsets, create_topics, produce

QUICK = {"session.timeout.ms": 2000, "heartbeat.interval.ms": 400, "max.poll.interval.ms": 30000}


def test_produce_consume_commit_roundtrip(
    broker_bootstrap: str, unique: Callable[[str], str], wait_until: Callable[..., Any]
) -> None:
    topic, group = unique("smoke"), unique("smoke-group")
    assert topic != unique("smoke") and "test-produce-consume-commit-roundtrip" in topic

    create_topics(broker_bootstrap, {topic: 3}, timeout=30)
    create_topics(broker_bootstrap, {topic: 3}, timeout=30)  # already exists: fine

    records = [
        Record(
            value=f"value-{i}".encode(),
            key=f"key-{i % 10}".encode(),
            headers=[("i", str(i).encode()), ("dup", b"a"), ("dup", None)],
            timestamp_ms=1_700_000_000_000 + i,
        )
        for i in range(30)
    ]
    end_offsets = produce(broker_bootstrap, topic, records)
    assert set(end_offsets) <= {0, 1, 2}
    assert sum(end_offsets.values()) == 30, end_offsets  # fresh topic: every partition starts at 0

    consumer = Consumer(
        {
            "bootstrap.servers": broker_bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **QUICK,
        }
    )
    consumed: list[Message] = []
    try:
        consumer.subscribe([topic])

        def all_consumed() -> bool:
            msg = consumer.poll(0.2)
            if msg is not None:
                assert msg.error() is None, msg.error()
                consumed.append(msg)
            return len(consumed) >= 30

        wait_until(all_consumed, timeout=30, interval=0, message=lambda: f"consumed {len(consumed)}/30")
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()

    assert sorted(m.value() or b"" for m in consumed) == sorted(r.value for r in records)
    by_value = {m.value(): m for m in consumed}
    for i, record in enumerate(records):
        msg = by_value[record.value]
        assert msg.key() == record.key
        assert msg.headers() == [("i", str(i).encode()), ("dup", b"a"), ("dup", None)]
        assert msg.timestamp()[1] == record.timestamp_ms
    # Same key -> same partition; offsets in each partition are 0..n-1 in produce order.
    for partition, end in end_offsets.items():
        offsets = [m.offset() for m in consumed if m.partition() == partition]
        assert offsets == list(range(end))

    assert committed_offsets(broker_bootstrap, group, topic, 3) == end_offsets
    assert committed_offsets(broker_bootstrap, unique("never-committed"), topic, [0, 1, 2]) == {}


def test_process_helper_captures_logs_and_kills_the_tree(
    tmp_path: Path,
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    wait_until: Callable[..., Any],
) -> None:
    config = {"metadata": {"name": "smoke"}, "spec": {"handler": "main:handler"}}
    config_path = function_dir("def handler(context, event):\n    return event.body\n", config)
    assert yaml.safe_load(config_path.read_text()) == config
    assert (config_path.parent / "main.py").read_text().startswith("def handler(")

    # Stand-in for `python -m streamworker`: logs JSON, spawns a grandchild in a new session.
    script = tmp_path / "fake.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, os, subprocess, sys, time
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                     start_new_session=True)
            print("not json")
            print(json.dumps({"event": "started", "child": child.pid, "env": os.environ["SMOKE_ENV"]}))
            print("to stderr", file=sys.stderr)
            time.sleep(600)
            """
        )
    )
    proc = streamworker_process(config_path, {"SMOKE_ENV": "yes"}, command=[sys.executable, str(script)])
    started = proc.wait_for_log("started", timeout=20)
    assert started["env"] == "yes"
    assert proc.wait_for_output("to stderr", timeout=20) == "to stderr"
    assert "not json" in proc.stdout_lines and len(proc.logs) == 1
    child = started["child"]
    os.kill(child, 0)  # alive

    proc.kill()
    assert proc.returncode == -signal.SIGKILL

    def child_gone() -> bool:
        try:
            with open(f"/proc/{child}/stat") as fh:
                return fh.read().rsplit(") ", 1)[1].startswith(("Z", "X"))  # zombie until init reaps it
        except FileNotFoundError:
            return True

    wait_until(child_gone, timeout=10, message=f"grandchild {child} survived kill()")
