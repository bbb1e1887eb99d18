"""Turn a trigger's attributes into a confluent-kafka consumer configuration."""

from __future__ import annotations

import os
from collections.abc import Mapping

from .model import (
    FunctionConfig,
    GroupProtocol,
    KafkaAttributes,
    SaslSettings,
    TlsSettings,
    TriggerConfig,
    is_pem,
)

# librdkafka refuses max.poll.interval.ms < session.timeout.ms, and a poll interval barely above the
# session timeout makes a slow handler look like a dead member. Keep at least this much headroom.
MIN_POLL_HEADROOM_S = 5.0

# librdkafka >= 2.2 waits fetch.queue.backoff.ms (default 1000 ms) before fetching again once its
# local queue is full. A consumer that pauses partitions for back-pressure then stalls in 1 s steps;
# 10 ms keeps throughput smooth at a negligible cost in fetch requests.
FETCH_QUEUE_BACKOFF_MS = 10
# librdkafka's read-ahead per partition (default 100,000 records), on top of our own buffer
# (maxBufferedRecords, 30,000 by default). Pausing a partition for back-pressure throws its read-ahead
# away, fetched again on resume: with the default, a 1M-record backlog made the broker send, and the
# supervisor free, most records several times over (issue #16, bench/RESULTS.md). Our buffer is the
# read-ahead; librdkafka only needs enough to keep consume() fed between two fetches.
QUEUED_MIN_MESSAGES = 20_000
# How long the broker may hold a fetch that has no new data (default 500 ms). librdkafka keeps one
# fetch in flight per broker, so a partition resumed after back-pressure waits for it: with the
# other partitions idle at their end, the resumed one got nothing for up to 500 ms while the workers
# ran dry. 100 ms bounds that stall, for ~10 empty fetches a second from an idle consumer.
FETCH_WAIT_MAX_MS = 100

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


# librdkafka properties whose values are secrets (librdkafka itself prints them as [redacted]).
_SENSITIVE_SETTINGS = frozenset(
    {
        "sasl.password",
        "ssl.key.password",
        "ssl.key.pem",
        "ssl_key",
        "ssl.keystore.password",
        "sasl.oauthbearer.config",
    }
)


def is_sensitive_setting(key: str) -> bool:
    """Whether a librdkafka property holds a secret whose value must never be shown."""
    return key in _SENSITIVE_SETTINGS or "password" in key or "secret" in key


def sasl_settings(sasl: SaslSettings) -> dict[str, str]:
    """librdkafka's SASL properties for ``attributes.sasl`` (secrets are revealed only here).

    ``sasl.oauth`` (Nuclio's OAuth client credentials) becomes librdkafka's built-in OIDC token
    retrieval: OAUTHBEARER with ``sasl.oauthbearer.method=oidc``.
    """
    settings = {"sasl.mechanism": sasl.mechanism.value}
    if sasl.oauth is not None:
        oauth = sasl.oauth
        settings.update(
            {
                "sasl.oauthbearer.method": "oidc",
                "sasl.oauthbearer.client.id": oauth.client_id,
                "sasl.oauthbearer.client.secret": oauth.client_secret.reveal(),
                "sasl.oauthbearer.token.endpoint.url": oauth.token_url,
            }
        )
        if oauth.scopes:
            settings["sasl.oauthbearer.scope"] = " ".join(oauth.scopes)
    if sasl.user is not None:
        settings["sasl.username"] = sasl.user
    if sasl.password is not None:
        settings["sasl.password"] = sasl.password.reveal()
    return settings


def tls_settings(tls: TlsSettings) -> dict[str, str]:
    """librdkafka's ssl.* properties for ``attributes.tls``: PEM text goes to ``*.pem``, paths to
    ``*.location``."""
    settings: dict[str, str] = {}
    for value, name in ((tls.ca_cert, "ssl.ca"), (tls.client_cert, "ssl.certificate")):
        if value is not None:
            settings[f"{name}.pem" if is_pem(value) else f"{name}.location"] = value
    if tls.client_key is not None:
        settings["ssl.key.location"] = tls.client_key
    if tls.client_key_pem is not None:
        settings["ssl.key.pem"] = tls.client_key_pem.reveal()
    if tls.insecure_skip_verify:
        settings["enable.ssl.certificate.verification"] = "false"
        settings["ssl.endpoint.identification.algorithm"] = "none"
    return settings


def security_settings(attrs: KafkaAttributes) -> dict[str, str]:
    """security.protocol plus the sasl.* / ssl.* properties of the sasl and tls sections.

    Empty when neither is enabled, so settings given through ``attributes.librdkafka`` alone (the
    escape hatch, e.g. for OAUTHBEARER) keep working untouched.
    """
    if attrs.sasl is None and attrs.tls is None:
        return {}
    protocol = {(True, True): "SASL_SSL", (True, False): "SASL_PLAINTEXT", (False, True): "SSL"}
    settings = {"security.protocol": protocol[(attrs.sasl is not None, attrs.tls is not None)]}
    if attrs.sasl is not None:
        settings.update(sasl_settings(attrs.sasl))
    if attrs.tls is not None:
        settings.update(tls_settings(attrs.tls))
    return settings


# Properties the sasl / tls sections own once enabled; attributes.librdkafka may not set them too.
SASL_OWNED = (
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "sasl.oauthbearer.method",
    "sasl.oauthbearer.client.id",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.token.endpoint.url",
    "sasl.oauthbearer.scope",
)
TLS_OWNED = (
    "security.protocol",
    "ssl.ca.location",
    "ssl.ca.pem",
    "ssl.certificate.location",
    "ssl.certificate.pem",
    "ssl.key.location",
    "ssl.key.pem",
    "enable.ssl.certificate.verification",
    "ssl.endpoint.identification.algorithm",
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
        "queued.min.messages": QUEUED_MIN_MESSAGES,
        "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
    }
    if attrs.group_protocol is GroupProtocol.CONSUMER:
        # KIP-848: the broker owns these; librdkafka refuses to create the consumer if they are set.
        for key in ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy"):
            del settings[key]
        settings["group.protocol"] = "consumer"
    instance_id = static_member_id(trigger, os.environ if environ is None else environ)
    if instance_id is not None:
        settings["group.instance.id"] = instance_id
    settings.update(security_settings(attrs))
    settings.update(attrs.librdkafka)
    return settings


def check_client_settings(trigger: TriggerConfig, function_name: str, environ: Mapping[str, str]) -> None:
    """Let librdkafka check a trigger's settings without connecting anywhere.

    A client created with no bootstrap servers never opens a connection, yet librdkafka still parses
    every property and loads the TLS files, so unknown keys, bad values and unreadable certificates
    show up here as a ``ValueError`` naming the trigger and the problem (never a secret value:
    librdkafka does not echo them). A missing POD_NAME for staticMembership raises too.
    """
    from confluent_kafka import Consumer, KafkaException

    settings: dict[str, object] = dict(consumer_settings(trigger, function_name, environ))
    settings["bootstrap.servers"] = ""
    settings["log_level"] = 0  # "no bootstrap.servers configured" is expected here
    try:
        consumer = Consumer(settings)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        text = error.str() if hasattr(error, "str") else str(error)
        raise ValueError(
            f"spec.triggers.{trigger.name}.attributes: invalid Kafka client settings: {text}"
        ) from None
    consumer.close()


def client_settings_problem(function: FunctionConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """librdkafka's verdict on every trigger's client settings (no connection is made), or None.

    The run command checks this before starting any worker, so a setting librdkafka refuses shows as
    one line on stderr with exit code 2, like any other configuration error. ``environ`` defaults to
    ``os.environ`` plus ``spec.env``, as the runner sees it (POD_NAME may come from spec.env).
    """
    env = {**os.environ, **function.env} if environ is None else environ
    for trigger in function.triggers:
        try:
            check_client_settings(trigger, function.name, env)
        except ValueError as exc:
            return str(exc)
    return None
