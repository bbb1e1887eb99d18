"""Functions written for Nuclio's Python runtime run unmodified against a real broker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from devtools.broker import Record, committed_offsets, create_topics, produce

# nuclio-sdk is a runtime dependency of streamworker: the handlers below import it, never skipped.

NUCLIO_HANDLER = """
import json
import os

import nuclio_sdk


def init_context(context: nuclio_sdk.Context) -> None:
    context.user_data.prefix = "seen"
    context.user_data.ledger = os.environ["LEDGER"]


def handler(context: nuclio_sdk.Context, event: nuclio_sdk.Event) -> nuclio_sdk.Response:
    context.logger.info_with("nuclio-style handler", path=event.path, shard=event.shard_id)
    with open(context.user_data.ledger, "a") as ledger:
        ledger.write(json.dumps({
            "offset": event.offset,
            "body": event.body.decode(),
            "prefix": context.user_data.prefix,
            "trigger": event.trigger.kind,
        }) + "\\n")
    if event.offset % 2:
        return "plain string reply"
    return nuclio_sdk.Response(
        body=f"{context.user_data.prefix}:{event.body.decode()}",
        headers={},
        content_type="text/plain",
        status_code=200,
    )
"""


def test_nuclio_handler_runs_unmodified(
    broker_bootstrap: str,
    unique: Any,
    function_dir: Any,
    streamworker_process: Any,
    wait_until: Any,
    quick_profile: dict[str, str],
    tmp_path: Path,
) -> None:
    topic, group = unique("nuclio"), unique("nuclio-g")
    create_topics(broker_bootstrap, {topic: 1})
    end = produce(broker_bootstrap, topic, [Record(value=f"r{i}") for i in range(6)])
    ledger = tmp_path / "ledger.jsonl"
    config = function_dir(
        NUCLIO_HANDLER,
        {
            "metadata": {"name": "nuclio-compat"},
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
                        },
                    }
                },
            },
        },
    )
    process = streamworker_process(config)
    wait_until(lambda: committed_offsets(broker_bootstrap, group, topic, 1) == end, 30)
    assert process.terminate() == 0
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [line["offset"] for line in lines] == list(range(6))
    assert {line["prefix"] for line in lines} == {"seen"}
    assert {line["trigger"] for line in lines} == {"kafka-cluster"}
    logged = [entry for entry in process.logs if entry.get("message") == "nuclio-style handler"]
    assert len(logged) == 6 and {entry["path"] for entry in logged} == {topic}


NUCLIO_EXPORT = Path(__file__).parent.parent / "tests" / "fixtures" / "nuclio"


def test_nuclio_exported_function_runs_unmodified_with_cumulative_acks(
    broker_bootstrap: str,
    unique: Any,
    streamworker_process: Any,
    wait_until: Any,
    tmp_path: Path,
) -> None:
    """tests/fixtures/nuclio: a function.yaml shaped like `nuctl export` output (annotations, Nuclio-only
    keys, maxWorkers, url, a disabled http trigger) and an async handler that answers no-ack and acks
    only the offset of a flushing order, unmodified."""
    topic, group = unique("nuclio-export"), unique("nuclio-export-g")
    create_topics(broker_bootstrap, {topic: 2})
    source = [("source", b"shop")]
    p0 = [{"order": n, "flush": n == 3} for n in range(5)]  # offset 4 is never acked
    p1 = [{"order": 10 + n, "flush": n == 2} for n in range(3)]
    records = [Record(value=json.dumps(o), headers=source, partition=0) for o in p0]
    records += [Record(value=json.dumps(o), headers=source, partition=1) for o in p1]
    assert produce(broker_bootstrap, topic, records) == {0: 5, 1: 3}

    function = tmp_path / "fn"
    shutil.copytree(NUCLIO_EXPORT, function)
    sink = tmp_path / "sink.jsonl"
    env = {
        "SW_BROKERS": broker_bootstrap,
        "SW_TOPIC": topic,
        "SW_GROUP": group,
        # The quick profile, through Nuclio's annotations (sessionTimeout is not in the attributes).
        "SW_SESSION_TIMEOUT": "2s",
        "SW_HEARTBEAT_INTERVAL": "400ms",
        "SINK_FILE": str(sink),
    }
    process = streamworker_process(function / "function.yaml", env=env)
    # A cumulative ack of the flushing order commits every no-ack order before it.
    wait_until(lambda: committed_offsets(broker_bootstrap, group, topic, 2) == {0: 4, 1: 3}, 60)
    process.wait_for_log(lambda line: line.get("message") == "order batched" and line.get("order") == 4, 30)
    assert process.terminate() == 0
    # Order 4 was handled (no-ack) but never acked: it stays uncommitted through a clean shutdown.
    assert committed_offsets(broker_bootstrap, group, topic, 2) == {0: 4, 1: 3}

    lines = [json.loads(line) for line in sink.read_text().splitlines()]
    assert [(line["order"], line["reason"]) for line in lines if line["partition"] == 0] == [
        (0, "flush"),
        (1, "flush"),
        (2, "flush"),
        (3, "flush"),
        (4, "terminate"),
    ]
    assert [(line["order"], line["reason"]) for line in lines if line["partition"] == 1] == [
        (10, "flush"),
        (11, "flush"),
        (12, "flush"),
    ]
    assert {line["source"] for line in lines} == {"shop"}  # header bytes, decoded by the handler
    assert {line["function"] for line in lines} == {"order-sink"}  # NUCLIO_FUNCTION_NAME
    # maxWorkers: 2 and static allocation by the partition's index among the assigned ones.
    assert {(line["partition"], line["worker"]) for line in lines} == {(0, "0"), (1, "1")}
    warnings = "\n".join(process.stderr_lines + process.stdout_lines)
    assert "spec.disableDefaultHTTPTrigger" in warnings
