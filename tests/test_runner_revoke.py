"""The trigger runner's revoke and assign paths with fake workers and a fake consumer (no broker)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from confluent_kafka import TopicPartition

from streamworker.config import load_config
from streamworker.protocol import Msg
from streamworker.supervisor.runner import TriggerRunner
from streamworker.supervisor.worker_handle import WorkerState

TOPIC = "orders"


def make_runner(tmp_path: Path, workers: int = 3) -> TriggerRunner:
    (tmp_path / "main.py").write_text("def handler(context, event):\n    return None\n")
    document = {
        "metadata": {"name": "fn"},
        "spec": {
            "handler": "main:handler",
            "triggers": {
                "t": {
                    "kind": "kafka-cluster",
                    "numWorkers": workers,
                    "attributes": {"brokers": "127.0.0.1:1", "topics": [TOPIC], "consumerGroup": "g"},
                }
            },
        },
    }
    path = tmp_path / "function.yaml"
    path.write_text(yaml.safe_dump(document))
    function = load_config(path, environ={}).config
    return TriggerRunner(function, function.triggers[0], threading.Event())


class FakeWorker:
    """Answers DRAIN with DRAINED at once (``answers``), never (not ``answers``), or dies on it."""

    def __init__(self, runner: TriggerRunner, seat: int, behaviour: str) -> None:
        self.runner, self.seat, self.behaviour = runner, seat, behaviour
        self.state = WorkerState.READY
        self.drained: set[int] = set()
        self.writer = SimpleNamespace(empty=True)

    def send(self, message: list[Any]) -> None:
        if message[0] != Msg.DRAIN:
            return
        if self.behaviour == "answers":
            self.drained.add(message[1])
        elif self.behaviour == "dies":
            self.runner.pool.seats[self.seat].process = None


def test_late_or_dead_drain_callbacks_are_not_reported_drained(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    for seat, behaviour in enumerate(("answers", "silent", "dies")):
        runner.pool.seats[seat].process = FakeWorker(runner, seat, behaviour)  # type: ignore[assignment]
    drained, late = runner._drain({0, 1, 2}, time.monotonic() + 0.3)
    assert drained == [0]
    assert late == [1, 2], "a worker that died before reporting its drain callback done was not drained"


class FakeConsumer:
    def __init__(self) -> None:
        self.resumed: list[tuple[str, int]] = []

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.resumed += [(tp.topic, tp.partition) for tp in partitions]


def test_assigned_partitions_are_resumed_in_the_client(tmp_path: Path) -> None:
    # librdkafka keeps the application's pause flag across revoke and re-assign (broker.md).
    runner = make_runner(tmp_path)
    consumer = FakeConsumer()
    runner._on_assign(consumer, [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 3)])  # type: ignore[arg-type]
    assert consumer.resumed == [(TOPIC, 0), (TOPIC, 3)]
    assert sorted(runner.dispatcher.partitions) == [(TOPIC, 0), (TOPIC, 3)]
    assert [view[3] for view in runner.dispatcher.partition_view()] == [False, False], "not paused"
