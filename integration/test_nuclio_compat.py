"""A handler written for Nuclio's Python runtime runs unmodified (nuclio-sdk installed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streamworker.devbroker import Record, committed_offsets, create_topics, produce

pytest.importorskip("nuclio_sdk")

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
