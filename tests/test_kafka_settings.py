"""Group protocol and static membership settings (lifecycle attributes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer

from streamworker.config import load_config
from streamworker.config.kafka_settings import consumer_settings, static_member_id
from streamworker.config.model import GroupProtocol, KafkaAttributes, TriggerConfig


def _trigger(**attributes: Any) -> TriggerConfig:
    attrs = KafkaAttributes(brokers=("127.0.0.1:1",), topics=("orders",), consumer_group="g1", **attributes)
    return TriggerConfig("orders", "kafka-cluster", 1, 10.0, attrs)


def test_classic_protocol_is_the_default_and_sends_client_side_settings() -> None:
    settings = consumer_settings(_trigger(), "fn", environ={})
    assert "group.protocol" not in settings
    assert settings["partition.assignment.strategy"] == "cooperative-sticky"


def test_consumer_protocol_drops_broker_owned_settings_and_librdkafka_accepts_it() -> None:
    settings = consumer_settings(_trigger(group_protocol=GroupProtocol.CONSUMER), "fn", environ={})
    assert settings["group.protocol"] == "consumer"
    for key in ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy"):
        assert key not in settings
    # librdkafka refuses to create a KIP-848 consumer that carries classic-only settings.
    Consumer(settings).close()


def test_explicit_group_instance_id_wins() -> None:
    trigger = _trigger(group_instance_id="orders-0", static_membership=True)
    assert static_member_id(trigger, {"POD_NAME": "pod-7"}) == "orders-0"
    assert consumer_settings(trigger, "fn", environ={})["group.instance.id"] == "orders-0"


def test_static_membership_takes_pod_name_then_hostname() -> None:
    trigger = _trigger(static_membership=True)
    assert static_member_id(trigger, {"POD_NAME": "orders-5c9", "HOSTNAME": "h"}) == "orders-5c9-orders"
    assert static_member_id(trigger, {"HOSTNAME": "box1"}) == "box1-orders"
    with pytest.raises(ValueError, match="staticMembership: true needs POD_NAME or HOSTNAME"):
        static_member_id(trigger, {})


def test_no_static_membership_by_default() -> None:
    assert "group.instance.id" not in consumer_settings(_trigger(), "fn", environ={"POD_NAME": "p"})


def test_lifecycle_attributes_load_from_yaml(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("def handler(context, event):\n    return None\n")
    (tmp_path / "function.yaml").write_text(
        "spec:\n"
        "  handler: main:handler\n"
        "  triggers:\n"
        "    t:\n"
        "      kind: kafka-cluster\n"
        "      attributes:\n"
        "        brokers: 127.0.0.1:9092\n"
        "        topics: [a]\n"
        "        consumerGroup: g\n"
        "        groupProtocol: consumer\n"
        "        groupInstanceId: member-1\n"
        "        staticMembership: 'yes'\n"
    )
    attrs = load_config(tmp_path / "function.yaml").config.triggers[0].attributes
    assert attrs.group_protocol is GroupProtocol.CONSUMER
    assert attrs.group_instance_id == "member-1"
    assert attrs.static_membership is True


def _write(tmp_path: Path, attributes: str) -> Path:
    (tmp_path / "main.py").write_text("def handler(context, event):\n    return None\n")
    path = tmp_path / "function.yaml"
    path.write_text(
        "spec:\n  handler: main:handler\n  triggers:\n    t:\n      kind: kafka-cluster\n"
        "      attributes:\n        brokers: b:1\n        topics: [a]\n        consumerGroup: g\n"
        + attributes
    )
    return path


def test_on_error_defaults_follow_the_dead_letter_topic(tmp_path: Path) -> None:
    from streamworker.config.model import OnError

    plain = load_config(_write(tmp_path, "")).config.triggers[0].attributes
    assert plain.failure_action is OnError.STOP
    with_dlq = load_config(_write(tmp_path, "        deadLetterTopic: a.dlq\n")).config.triggers[0].attributes
    assert with_dlq.failure_action is OnError.DEADLETTER
    skip = load_config(_write(tmp_path, "        onError: skip\n")).config.triggers[0].attributes
    assert skip.failure_action is OnError.SKIP


def test_deadletter_without_a_topic_is_an_error(tmp_path: Path) -> None:
    from streamworker.config import ConfigError

    with pytest.raises(
        ConfigError, match=r"attributes\.onError: deadletter needs attributes\.deadLetterTopic"
    ):
        load_config(_write(tmp_path, "        onError: deadletter\n"))
