"""The validated, typed form of a function.yaml that the rest of streamworker codes against.

Everything here is a frozen dataclass with plain values: durations are float seconds, sizes are int
bytes, and mappings are plain dicts (not ``MappingProxyType``) so that ``dataclasses.asdict``,
``copy.deepcopy`` and pickling keep working when a config is handed to another process. Mapping
fields are excluded from hashing so the frozen dataclasses stay hashable.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class AllocationMode(enum.StrEnum):
    """How records of a partition are spread over a trigger's workers (Nuclio's workerAllocationMode)."""

    POOL = "pool"  # any free worker takes the next record of a partition
    STATIC = "static"  # partition i always goes to worker i mod numWorkers
    KEY = "key"  # a key always goes to the same worker; different keys of a partition run in parallel


class OnError(enum.StrEnum):
    """What happens to a record whose last attempt failed."""

    DEADLETTER = "deadletter"  # produce it to deadLetterTopic, then count it done
    STOP = "stop"  # pause its partition (others keep flowing) until restart
    SKIP = "skip"  # count it done, logged and counted


class ExplicitAckMode(enum.StrEnum):
    """Nuclio's explicitAckMode: who says a record is done."""

    DISABLE = "disable"  # the handler returning is the ack
    ENABLE = "enable"  # as disable, unless the handler returns a no-ack response
    EXPLICIT_ONLY = "explicitOnly"  # only context.platform.explicit_ack marks a record done


class OutputHeaders(enum.StrEnum):
    """Which input headers a return-value output (outputTopic) carries."""

    NONE = "none"
    COPY = "copy"


class BalanceStrategy(enum.StrEnum):
    """librdkafka's partition.assignment.strategy."""

    RANGE = "range"
    ROUNDROBIN = "roundrobin"
    COOPERATIVE_STICKY = "cooperative-sticky"


class GroupProtocol(enum.StrEnum):
    """Consumer-group protocol: the classic one, or KIP-848's broker-driven ``consumer`` protocol."""

    CLASSIC = "classic"
    CONSUMER = "consumer"


class SaslMechanism(enum.StrEnum):
    """SASL mechanisms streamworker configures (others through attributes.librdkafka)."""

    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"
    OAUTHBEARER = "OAUTHBEARER"  # with attributes.sasl.oauth: OIDC client credentials


class ExplicitAckScope(enum.StrEnum):
    """What one explicit ack closes."""

    # Nuclio's meaning: ack(offset) marks offset + 1, closing every record of the partition up to
    # offset that was handled and waits for its ack.
    CUMULATIVE = "cumulative"
    RECORD = "record"  # ack(offset) closes that one record only


class StaticMapping(enum.StrEnum):
    """How workerAllocationMode: static maps a partition to a worker."""

    # Nuclio's: the partition's index among this member's assigned partitions of its topic (in
    # partition order), mod numWorkers.
    ASSIGNMENT_INDEX = "assignmentIndex"
    PARTITION_ID = "partitionId"  # partition id mod numWorkers, whatever else is assigned


class InitialOffset(enum.StrEnum):
    """Where a consumer group without a committed offset starts (librdkafka's auto.offset.reset)."""

    EARLIEST = "earliest"
    LATEST = "latest"


@dataclass(frozen=True)
class HandlerRef:
    """A handler given as ``"pkg.mod:function"``."""

    module: str
    function: str

    def __str__(self) -> str:
        return f"{self.module}:{self.function}"


@dataclass(frozen=True)
class Secret:
    """A secret value (password, private key) that never shows in a repr, a log line or an error.

    ``reveal()`` is the one way to read it, so every place that handles the plain text is greppable.
    ``source`` says where it came from ("passwordFile /run/secrets/pw", "${KAFKA_PASSWORD}",
    "inline") and is safe to show.
    """

    value: str = field(repr=False)
    source: str = "inline"

    def reveal(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"Secret(<hidden>, source={self.source!r})"

    __str__ = __repr__


@dataclass(frozen=True)
class OAuthSettings:
    """``attributes.sasl.oauth``: OAUTHBEARER through an OIDC token endpoint (client credentials)."""

    client_id: str
    client_secret: Secret
    token_url: str
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SaslSettings:
    """``attributes.sasl`` when enabled: SASL authentication towards the brokers. ``user`` and
    ``password`` are set for PLAIN/SCRAM, ``oauth`` for OAUTHBEARER."""

    mechanism: SaslMechanism
    user: str | None
    password: Secret | None
    oauth: OAuthSettings | None = None


@dataclass(frozen=True)
class TlsSettings:
    """``attributes.tls`` when enabled. ca_cert and client_cert are a file path (absolute, resolved
    against the folder of function.yaml) or PEM text (from a ``${VAR}``); ``is_pem`` tells which. The
    client key is a path (``client_key``) or, when given as PEM text, a ``Secret``."""

    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    client_key_pem: Secret | None = None
    insecure_skip_verify: bool = False


def is_pem(text: str) -> bool:
    """PEM text rather than a file path: what Nuclio's caCert/accessKey carry."""
    return text.lstrip().startswith("-----BEGIN ")


@dataclass(frozen=True)
class KafkaAttributes:
    """``spec.triggers.<name>.attributes`` of a kafka-cluster trigger. Durations are in seconds."""

    brokers: tuple[str, ...]
    topics: tuple[str, ...]
    consumer_group: str
    initial_offset: InitialOffset = InitialOffset.EARLIEST
    worker_allocation_mode: AllocationMode = AllocationMode.POOL
    session_timeout: float = 10.0
    heartbeat_interval: float = 3.0
    max_poll_interval: float = 300.0
    max_wait_handler_during_rebalance: float = 5.0
    balance_strategy: BalanceStrategy = BalanceStrategy.COOPERATIVE_STICKY
    group_protocol: GroupProtocol = GroupProtocol.CLASSIC
    group_instance_id: str | None = None
    static_membership: bool = False
    dead_letter_topic: str | None = None
    on_error: OnError | None = None  # None: deadletter when deadLetterTopic is set, else stop
    output_topic: str | None = None  # where handlers' return values are produced (docs/outputs.md)
    output_headers: OutputHeaders = OutputHeaders.NONE
    max_retries: int = 3
    retry_backoff: float = 0.5
    retry_max_backoff: float = 30.0
    max_buffered_records: int = 30000
    max_buffered_bytes: int = 64 * 1024 * 1024
    explicit_ack_scope: ExplicitAckScope = ExplicitAckScope.CUMULATIVE
    static_mapping: StaticMapping = StaticMapping.ASSIGNMENT_INDEX
    # Explicit acks: a record handled but not acked this long is a failed attempt (None: wait forever).
    ack_timeout: float | None = None
    # repr=False: extra settings may carry secrets (sasl.password for mechanisms without a section).
    librdkafka: Mapping[str, str] = field(default_factory=dict, hash=False, repr=False)
    sasl: SaslSettings | None = None  # None: SASL off
    tls: TlsSettings | None = None  # None: TLS off

    @property
    def failure_action(self) -> OnError:
        """onError as it applies: deadletter when a dead-letter topic is set, else stop."""
        if self.on_error is not None:
            return self.on_error
        return OnError.DEADLETTER if self.dead_letter_topic else OnError.STOP


@dataclass(frozen=True)
class TriggerConfig:
    """One ``spec.triggers.<name>`` entry. ``kind`` is always ``"kafka-cluster"``."""

    name: str
    kind: str
    num_workers: int
    worker_termination_timeout: float
    attributes: KafkaAttributes
    explicit_ack_mode: ExplicitAckMode = ExplicitAckMode.DISABLE


@dataclass(frozen=True)
class FunctionConfig:
    """A whole function.yaml."""

    path: Path  # absolute path of the config file
    name: str
    handler: HandlerRef
    runtime: str | None
    event_timeout: float | None
    env: Mapping[str, str] = field(hash=False)  # in file order
    triggers: tuple[TriggerConfig, ...]  # every kafka-cluster trigger, in file order
    description: str = ""
    version: int = -1  # spec.version; Nuclio's "latest" is -1

    @property
    def nuclio_env(self) -> dict[str, str]:
        """The variables Nuclio's Python runtime sets for the handler (runtime.GetEnvFromConfiguration);
        handlers and libraries written for Nuclio read them."""
        return {
            "NUCLIO_FUNCTION_NAME": self.name,
            "NUCLIO_FUNCTION_DESCRIPTION": self.description,
            "NUCLIO_FUNCTION_VERSION": str(self.version),
            "NUCLIO_FUNCTION_HANDLER": str(self.handler),
        }

    # Environment variables that secret fields (sasl.password, tls.clientKey, secret librdkafka
    # settings) refer to with ${NAME}: workers do not get them unless spec.env names them.
    secret_env: frozenset[str] = frozenset()

    @property
    def code_dir(self) -> Path:
        """The folder the handler's module path is relative to (Nuclio puts it first on sys.path)."""
        return self.path.parent
