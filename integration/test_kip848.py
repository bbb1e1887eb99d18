"""groupProtocol: consumer (KIP-848) end to end, against librdkafka's mock cluster.

Tansu never assigns partitions under KIP-848 (see shared/notes/broker.md), so this path is proven
on librdkafka's mock cluster: the test starts one inside its own process (a client with
``test.mock.num.brokers``), which listens on loopback; it creates the topic there by producing to it,
then points streamworker at it as an ordinary bootstrap address and watches the handler's ledger.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

HANDLER = """
import json
import os


def handler(context, event):
    with open(os.environ["LEDGER"], "a") as ledger:
        ledger.write(json.dumps({"partition": event.partition, "offset": event.offset}) + "\\n")
"""


class _AddressCatcher(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.address: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"replaced with (\S+)", record.getMessage())
        if found:
            self.address = found.group(1)


@pytest.fixture
def mock_cluster(wait_until: Any) -> Iterator[tuple[str, Producer]]:
    """A librdkafka mock cluster owned by this test, its address and a producer connected to it."""
    catcher = _AddressCatcher()
    logger = logging.getLogger(f"kip848-mock-{id(catcher)}")
    logger.addHandler(catcher)
    logger.setLevel(logging.DEBUG)
    producer = Producer({"test.mock.num.brokers": 1, "logger": logger})
    wait_until(lambda: producer.poll(0.05) is not None and catcher.address is not None, 10)
    assert catcher.address is not None
    yield catcher.address, producer
    producer.flush(5)


def committed(bootstrap: str) -> dict[int, int]:
    """The group's committed offsets, read from the mock cluster with a throwaway client."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "kip848-group"})
    try:
        found = reader.committed([TopicPartition("kip848", p) for p in range(4)], timeout=5)
    finally:
        reader.close()
    return {tp.partition: tp.offset for tp in found if tp.offset >= 0}


def test_consumer_group_protocol_assigns_consumes_and_commits(
    mock_cluster: tuple[str, Producer],
    function_dir: Any,
    streamworker_process: Any,
    wait_until: Any,
    tmp_path: Path,
) -> None:
    address, producer = mock_cluster
    ledger = tmp_path / "ledger.jsonl"
    config = function_dir(
        HANDLER,
        {
            "metadata": {"name": "kip848"},
            "spec": {
                "handler": "main:handler",
                "env": [{"name": "LEDGER", "value": str(ledger)}],
                "triggers": {
                    "k": {
                        "kind": "kafka-cluster",
                        "numWorkers": 2,
                        "attributes": {
                            "brokers": address,
                            "topics": ["kip848"],
                            "consumerGroup": "kip848-group",
                            "groupProtocol": "consumer",
                        },
                    }
                },
            },
        },
    )
    for n in range(20):
        producer.produce("kip848", value=b"%d" % n, partition=n % 4)
    assert producer.flush(15) == 0
    process = streamworker_process(config)

    assigned = process.wait_for_log("partitions assigned", timeout=30)
    assert len(assigned["partitions"]) == 4

    def handled() -> int:
        return len(ledger.read_text().splitlines()) if ledger.exists() else 0

    wait_until(lambda: handled() == 20, 30, message=lambda: f"handled {handled()} of 20")
    wait_until(lambda: committed(address) == {p: 5 for p in range(4)}, 20, message="commits")
    assert process.terminate() == 0
    assert [entry for entry in process.logs if entry.get("message") == "stopped"], "clean shutdown"
    offsets = sorted(
        (line["partition"], line["offset"]) for line in map(json.loads, ledger.read_text().splitlines())
    )
    assert offsets == sorted((p, o) for p in range(4) for o in range(5))
