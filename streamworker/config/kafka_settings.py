"""Turn a trigger's attributes into a confluent-kafka consumer configuration."""

from __future__ import annotations

import os
from collections.abc import Mapping

from .model import GroupProtocol, TriggerConfig

# librdkafka refuses max.poll.interval.ms < session.timeout.ms, and a poll interval barely above the
# session timeout makes a slow handler look like a dead member. Keep at least this much headroom.
MIN_POLL_HEADROOM_S = 5.0

# librdkafka >= 2.2 waits fetch.queue.backoff.ms (default 1000 ms) before fetching again once its
# local queue is full. A consumer that pauses partitions for back-pressure then stalls in 1 s steps;
# 10 ms keeps throughput smooth at a negligible cost in fetch requests.
FETCH_QUEUE_BACKOFF_MS = 10

# Settings streamworker must own, with the attribute that sets them. The loader rejects these under
# `attributes.librdkafka` so there is exactly one place to set each and offsets stay ours to commit.
MANAGED_SETTINGS: tuple[tuple[str, str], ...] = (
    ("bootstrap.servers", "use attributes.brokers"),
    ("group.id", "use attributes.consumerGroup"),
    ("auto.offset.reset", "use attributes.initialOffset"),
    ("session.timeout.ms", "use attributes.sessionTimeout"),
    ("heartbeat.interval.ms", "use attributes.heartbeatInterval"),
    ("max.poll.interval.ms", "use attributes.maxPollInterval"),
    ("partition.assignment.strategy", "use attributes.balanceStrategy"),
    ("group.protocol", "use attributes.groupProtocol"),
    ("group.instance.id", "use attributes.groupInstanceId or attributes.staticMembership"),
    (
        "enable.auto.commit",
        "streamworker commits offsets itself, only after a record's handler finished",
    ),
    (
        "enable.auto.offset.store",
        "streamworker stores offsets itself, only after a record's handler finished",
    ),
)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def static_member_id(trigger: TriggerConfig, environ: Mapping[str, str]) -> str | None:
    """The group.instance.id to use, if any: explicit id, else POD_NAME/HOSTNAME when asked for."""
    attrs = trigger.attributes
    if attrs.group_instance_id:
        return attrs.group_instance_id
    if attrs.static_membership:
        name = environ.get("POD_NAME") or environ.get("HOSTNAME")
        if not name:
            raise ValueError(
                f"spec.triggers.{trigger.name}.attributes.staticMembership: true needs POD_NAME or "
                "HOSTNAME in the environment"
            )
        # Two triggers of one pod are two members: keep their ids apart.
        return f"{name}-{trigger.name}"
    return None


def consumer_settings(
    trigger: TriggerConfig, function_name: str, environ: Mapping[str, str] | None = None
) -> dict[str, str | int | bool | float]:
    """Build the confluent-kafka ``Consumer`` config for one trigger.

    Auto-commit and auto offset store are off: the supervisor stores and commits an offset only once
    every record before it in the partition has been handled. ``attributes.librdkafka`` extras are
    applied last, so they can override anything here (the loader keeps the managed keys out).
    """
    attrs = trigger.attributes
    session_ms = _ms(attrs.session_timeout)
    settings: dict[str, str | int | bool | float] = {
        "bootstrap.servers": ",".join(attrs.brokers),
        "group.id": attrs.consumer_group,
        "client.id": f"streamworker-{function_name}-{trigger.name}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": attrs.initial_offset.value,
        "session.timeout.ms": session_ms,
        "heartbeat.interval.ms": _ms(attrs.heartbeat_interval),
        "max.poll.interval.ms": max(_ms(attrs.max_poll_interval), session_ms + _ms(MIN_POLL_HEADROOM_S)),
        "partition.assignment.strategy": attrs.balance_strategy.value,
        "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
    }
    if attrs.group_protocol is GroupProtocol.CONSUMER:
        # KIP-848: the broker owns these; librdkafka refuses to create the consumer if they are set.
        for key in ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy"):
            del settings[key]
        settings["group.protocol"] = "consumer"
    instance_id = static_member_id(trigger, os.environ if environ is None else environ)
    if instance_id is not None:
        settings["group.instance.id"] = instance_id
    settings.update(attrs.librdkafka)
    return settings
