"""The function.yaml schema as data: one table of ``FieldSpec`` per section.

The loader walks these tables to validate a file, and the docs generator renders
docs/configuration.md from the very same tables, so a key cannot be accepted without being documented
(or the other way round). Each parse function takes the YAML value (after ``${VAR}`` expansion) and
returns the typed value or raises ``ValueError`` whose text is the one-line problem shown to the user.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import keyword
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from .durations import format_byte_size, format_duration, parse_byte_size, parse_duration
from .kafka_settings import MANAGED_SETTINGS, is_sensitive_setting
from .model import (
    AllocationMode,
    BalanceStrategy,
    ExplicitAckMode,
    GroupProtocol,
    HandlerRef,
    InitialOffset,
    KafkaAttributes,
    OnError,
    OutputHeaders,
    SaslMechanism,
    is_pem,
)

E = TypeVar("E", bound=enum.Enum)

KAFKA_KIND = "kafka-cluster"
TRIGGERS_REQUIRED = f"at least one {KAFKA_KIND} trigger is required"
# Python minor versions a function.yaml may name. The running interpreter's own version is always
# accepted too, so a newer Python never rejects a config that names it.
SUPPORTED_PYTHON_MINORS = tuple(range(9, 14))


class FieldError(ValueError):
    """A problem inside a nested value; ``subpath`` (".name", "[2]") is appended to the field path."""

    def __init__(self, problem: str, subpath: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.subpath = subpath


@dataclass(frozen=True)
class FieldSpec:
    """One key of a section.

    ``attr`` is the model attribute it fills (None for keys that only group other keys). ``section``
    is set for keys whose value is itself a section (parsed by walking that section's table).
    ``default_text`` is the default as a user would write it; required fields have none.
    """

    key: str
    attr: str | None
    parse: Callable[[object], Any]
    help: str
    default: Any = None
    required: bool = False
    choices: tuple[str, ...] = ()
    default_text: str = ""
    section: str | None = None
    missing: str = "required"  # the problem reported when a required key is absent

    @property
    def default_doc(self) -> str:
        """The default for documentation: "required" or how the default would be written."""
        return "required" if self.required else self.default_text


@dataclass(frozen=True)
class SectionSpec:
    """A mapping in function.yaml: its keys, the Nuclio keys it tolerates, and key aliases."""

    path: str  # dotted; "" is the top level, "<name>" stands for any trigger name
    help: str
    fields: tuple[FieldSpec, ...]
    ignored: tuple[str, ...] = ()  # Nuclio keys accepted with a warning
    aliases: tuple[tuple[str, str], ...] = ()  # (alias, key)
    hints: tuple[tuple[str, str], ...] = ()  # (unknown key, advice shown instead of a guess)

    def field(self, key: str) -> FieldSpec | None:
        return next((spec for spec in self.fields if spec.key == key), None)

    def alias_of(self, key: str) -> str | None:
        return dict(self.aliases).get(key)

    def hint_for(self, key: str) -> str | None:
        return dict(self.hints).get(key)

    def unknown_key_problem(self, key: str) -> str:
        """Explain an unknown key, with a "did you mean" guess when one is close enough."""
        hint = self.hint_for(key)
        if hint is not None:
            return f"unknown key ({hint})"
        known = [spec.key for spec in self.fields] + list(self.ignored)
        return unknown_key_problem(key, known)


def unknown_key_problem(key: str, known: list[str]) -> str:
    guess = suggest(key, known)
    if guess is not None:
        return f"unknown key (did you mean '{guess}'?)"
    return f"unknown key (expected one of: {', '.join(known)})"


def suggest(key: str, candidates: list[str]) -> str | None:
    """The closest candidate to a mistyped key. Case is compared loosely first, as Go's JSON
    decoding (and so Nuclio) ignores it, which makes `consumergroup` a common slip."""
    by_lower = {candidate.lower(): candidate for candidate in candidates}
    if key.lower() in by_lower:
        return by_lower[key.lower()]
    matches = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[matches[0]] if matches else None


# --- describing bad values ------------------------------------------------------------------------


def type_name(value: object) -> str:
    """YAML-flavoured type names: a user wrote a mapping, not a dict."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


def got(value: object) -> str:
    """``got str 'three'``: the type and a short rendering of an offending value."""
    if value is None:
        return "got null"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"got {type_name(value)} {text}"


# --- parse functions ------------------------------------------------------------------------------


def parse_mapping(value: object) -> Mapping[object, object]:
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a mapping, {got(value)}")
    return value


def parse_string(value: object) -> str:
    """A non-empty string. Integers are taken too: YAML reads `consumerGroup: 2024` as a number."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"must be a string, {got(value)}")
    text = value.strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def parse_int(value: object) -> int:
    """An integer; digit strings count, so `${WORKERS:-3}` works after expansion."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise ValueError(f"must be an integer, {got(value)}")


def parse_positive_int(value: object) -> int:
    number = parse_int(value)
    if number < 1:
        raise ValueError(f"must be at least 1, got {number}")
    return number


def parse_non_negative_int(value: object) -> int:
    number = parse_int(value)
    if number < 0:
        raise ValueError(f"must be 0 or more, got {number}")
    return number


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def parse_bool(value: object) -> bool:
    """true/false; the words also come as strings after ``${VAR}`` expansion."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.strip().lower()]
    raise ValueError(f"must be true or false, got {type(value).__name__} {value!r}")


def parse_positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be more than zero, got {value!r}")
    return seconds


def parse_positive_byte_size(value: object) -> int:
    size = parse_byte_size(value)
    if size < 1:
        raise ValueError(f"must be at least 1 byte, got {value!r}")
    return size


def _no_check(name: str) -> str | None:
    return None


def _parse_name_list(
    value: object, what: str, check: Callable[[str], str | None] = _no_check
) -> tuple[str, ...]:
    """A list of names, or one comma-separated string (how env variables carry lists).

    ``check`` returns a problem for a bad name, or None.
    """
    if isinstance(value, str):
        items: list[object] = [part for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(f"must be a list of {what}s or a comma-separated string, {got(value)}")
    if not items:
        raise ValueError(f"must list at least one {what}")
    names: list[str] = []
    for index, item in enumerate(items):
        # Point at the list element; a comma-separated string has no elements to point at.
        subpath = "" if isinstance(value, str) else f"[{index}]"
        if isinstance(item, int) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str) or not item.strip():
            raise FieldError(f"must be a non-empty string, {got(item)}", subpath)
        name = item.strip()
        problem = f"{name!r} contains whitespace" if any(c.isspace() for c in name) else check(name)
        if problem is not None:
            raise FieldError(problem, subpath)
        if name not in names:  # a repeated name would only subscribe or connect twice
            names.append(name)
    return tuple(names)


def parse_brokers(value: object) -> tuple[str, ...]:
    return _parse_name_list(value, "broker")


# Kafka's legal topic characters; a leading "^" makes librdkafka treat the name as a regex.
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def _check_topic(topic: str) -> str | None:
    if topic.startswith("^") or _TOPIC.fullmatch(topic):
        return None
    return (
        f"{topic!r} is not a valid topic name (letters, digits, '.', '_', '-'; up to 249 characters); "
        "start it with '^' for a regex subscription"
    )


def parse_topics(value: object) -> tuple[str, ...]:
    return _parse_name_list(value, "topic", _check_topic)


def _is_dotted_identifier(text: str) -> bool:
    parts = text.split(".")
    return all(part.isidentifier() and not keyword.iskeyword(part) for part in parts)


def parse_handler(value: object) -> HandlerRef:
    if not isinstance(value, str):
        raise ValueError(f'must be a string like "main:handler", {got(value)}')
    module, sep, function = value.strip().partition(":")
    if not sep or not _is_dotted_identifier(module) or not _is_dotted_identifier(function):
        raise ValueError(
            f'must be "module:function" with dotted Python identifiers (like "main:handler"), got {value!r}'
        )
    if "." in function:
        raise ValueError(f'the function part must be a plain name (like "main:handler"), got {value!r}')
    return HandlerRef(module=module, function=function)


def _python_runtime_choices() -> tuple[str, ...]:
    minors = sorted({*SUPPORTED_PYTHON_MINORS, sys.version_info.minor})
    return ("python", *(f"python:3.{minor}" for minor in minors))


def parse_runtime(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f'must be a string like "python:3.11", {got(value)}')
    runtime = value.strip()
    if runtime not in _python_runtime_choices():
        raise ValueError(
            f"unsupported runtime {runtime!r}: streamworker runs Python functions "
            f"(python, python:3.{SUPPORTED_PYTHON_MINORS[0]} to python:3.{SUPPORTED_PYTHON_MINORS[-1]})"
        )
    return runtime


def runtime_mismatch(runtime: str) -> str | None:
    """A warning when the requested Python differs from the interpreter that will run the handler."""
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if runtime.startswith("python:") and runtime != f"python:{running}":
        return f"asks for {runtime} but streamworker runs the handler on the running Python {running}"
    return None


def parse_trigger_kind(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f'must be a string like "{KAFKA_KIND}", {got(value)}')
    kind = value.strip()
    if kind not in (KAFKA_KIND, "kafka"):
        raise ValueError(f"unsupported trigger kind {kind!r}: streamworker runs {KAFKA_KIND} triggers only")
    return KAFKA_KIND


def _env_value(value: object, subpath: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (str, int, float)):
        return str(value)
    raise FieldError(f"must be a string, number or boolean, {got(value)}", subpath)


def _env_name(name: object, subpath: str) -> str:
    if not isinstance(name, str) or not name:
        raise FieldError(f"must be a non-empty string, {got(name)}", subpath)
    if "=" in name or "\0" in name:
        raise FieldError(f"{name!r} is not a valid environment variable name", subpath)
    return name


def parse_env(value: object) -> dict[str, str]:
    """Kubernetes-style ``[{name, value}]`` (what Nuclio writes) or a plain ``{NAME: value}`` mapping."""
    env: dict[str, str] = {}
    if isinstance(value, Mapping):
        for raw_name, raw_value in value.items():
            name = _env_name(raw_name, f".{raw_name}")
            env[name] = _env_value(raw_value, f".{name}")
        return env
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"must be a list of {{name, value}} or a mapping, {got(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise FieldError(f"must be a mapping with name and value, {got(item)}", f"[{index}]")
        for key in item:
            if key == "valueFrom":
                raise FieldError(
                    "not supported: streamworker does not read Kubernetes secrets; "
                    "use value with a ${VAR} reference instead",
                    f"[{index}].valueFrom",
                )
            if key not in ("name", "value"):
                raise FieldError(unknown_key_problem(str(key), ["name", "value"]), f"[{index}].{key}")
        if "name" not in item:
            raise FieldError("required", f"[{index}].name")
        name = _env_name(item["name"], f"[{index}].name")
        if name in env:
            raise FieldError(f"{name!r} is set twice", f"[{index}].name")
        env[name] = _env_value(item.get("value"), f"[{index}].value")
    return env


def parse_librdkafka(value: object) -> dict[str, str]:
    """Extra librdkafka settings; values become strings, which confluent-kafka accepts for all."""
    mapping = parse_mapping(value)
    managed = dict(MANAGED_SETTINGS)
    settings: dict[str, str] = {}
    for key, raw in mapping.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"setting names must be strings, {got(key)}")
        if key in managed:
            raise FieldError(f"cannot be set here: {managed[key]}", f".{key}")
        if isinstance(raw, bool):
            settings[key] = "true" if raw else "false"
        elif isinstance(raw, (str, int, float)):
            settings[key] = str(raw)
        else:
            # A secret's value must not reach an error message, even a malformed one.
            shown = f"got {type_name(raw)}" if is_sensitive_setting(key) else got(raw)
            raise FieldError(f"must be a string, number or boolean, {shown}", f".{key}")
    return settings


def parse_secret(value: object) -> str:
    """A password or key: like parse_string, but the value never appears in the problem text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type_name(value)}")
    if not value.strip():
        raise ValueError("must not be empty")
    return value  # not stripped: spaces may be part of a password


def parse_pem_or_path(value: object) -> str:
    """A file path or PEM text (usually from a ``${VAR}``); the text is not echoed in problems."""
    if not isinstance(value, str):
        raise ValueError(f"must be a file path or PEM text, got {type_name(value)}")
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip() if is_pem(value) else value


def enum_parser(enum_type: type[E], aliases: Mapping[str, E] | None = None) -> Callable[[object], E]:
    """A parse function for an enum given by its values, case-insensitively, plus aliases."""
    # Keys are lowercased like the input, so mixed-case values (explicitOnly, SCRAM-SHA-256) match.
    by_name: dict[str, E] = {str(member.value).lower(): member for member in enum_type}
    by_name.update({alias.lower(): member for alias, member in (aliases or {}).items()})

    def parse(value: object) -> E:
        if isinstance(value, str) and value.strip().lower() in by_name:
            return by_name[value.strip().lower()]
        choices = ", ".join(repr(member.value) for member in enum_type)
        shown = repr(value) if isinstance(value, str) else got(value).removeprefix("got ")
        raise ValueError(f"must be one of {choices}; got {shown}")

    return parse


# --- the tables -----------------------------------------------------------------------------------


def _model_default(attr: str) -> Any:
    """Defaults live on the model dataclass; the schema reads them so the two cannot drift."""
    for model_field in dataclasses.fields(KafkaAttributes):
        if model_field.name == attr:
            if model_field.default_factory is not dataclasses.MISSING:
                return model_field.default_factory()
            return model_field.default
    raise KeyError(attr)


def _attribute(
    key: str, attr: str, parse: Callable[[object], Any], help: str, show: Callable[[Any], str]
) -> FieldSpec:
    default = _model_default(attr)
    if isinstance(default, dict):  # the tables are shared, so their defaults must not be mutable
        default = MappingProxyType(default)
    return FieldSpec(key, attr, parse, help, default=default, default_text=show(default))


def _enum_attribute(key: str, attr: str, parse: Callable[[object], Any], help: str) -> FieldSpec:
    default = _model_default(attr)
    choices = tuple(str(member.value) for member in type(default))
    return FieldSpec(key, attr, parse, help, default=default, choices=choices, default_text=default.value)


ROOT = SectionSpec(
    path="",
    help="The top level of function.yaml.",
    fields=(
        FieldSpec(
            "metadata",
            None,
            parse_mapping,
            "Function identity (`meta` is accepted as an alias).",
            default_text="{}",
            section="metadata",
        ),
        FieldSpec(
            "spec", None, parse_mapping, "What to run and on which records.", required=True, section="spec"
        ),
    ),
    # Written by `nuctl export`; nothing in them changes how streamworker runs the function.
    ignored=("apiVersion", "kind", "status"),
    aliases=(("meta", "metadata"),),
)

METADATA = SectionSpec(
    path="metadata",
    help="Function identity.",
    fields=(
        FieldSpec(
            "name",
            "name",
            parse_string,
            "Function name; used in the Kafka client.id, logs and metrics.",
            default_text="name of the folder holding function.yaml",
        ),
    ),
    ignored=("namespace", "labels", "annotations"),
)

SPEC = SectionSpec(
    path="spec",
    help="What to run and on which records.",
    fields=(
        FieldSpec(
            "handler",
            "handler",
            parse_handler,
            'Entry point as "module:function"; the module path is relative to the folder of function.yaml.',
            required=True,
        ),
        FieldSpec(
            "runtime",
            "runtime",
            parse_runtime,
            "Nuclio runtime name. Only Python runs; a version other than the running interpreter's "
            "only warns, since the handler always runs on the interpreter streamworker runs on.",
            # Static on purpose: generated docs must not depend on the interpreter that renders them.
            choices=("python", *(f"python:3.{minor}" for minor in SUPPORTED_PYTHON_MINORS)),
            default_text="the running interpreter",
        ),
        FieldSpec(
            "eventTimeout",
            "event_timeout",
            parse_positive_duration,
            "Time limit for one handler call; a call that runs longer counts as failed.",
            default_text="none (no limit)",
        ),
        FieldSpec(
            "env",
            "env",
            parse_env,
            "Environment variables for the worker processes: a list of {name, value} or a mapping.",
            default=MappingProxyType({}),
            default_text="{}",
        ),
        FieldSpec(
            "triggers",
            "triggers",
            parse_mapping,
            "Triggers by name. Every trigger must be kafka-cluster and every one of them runs.",
            required=True,
            missing=TRIGGERS_REQUIRED,
            section="spec.triggers.<name>",
        ),
    ),
    ignored=(
        "description",
        "build",
        "resources",
        "minReplicas",
        "maxReplicas",
        "replicas",
        "platform",
        "runtimeAttributes",
        "image",
        "imageHash",
        "loggerSinks",
        "serviceType",
        "readinessTimeoutSeconds",
        "securityContext",
        "affinity",
        "nodeSelector",
        "tolerations",
        "priorityClassName",
        "volumes",
        "scaleToZero",
        "targetCPU",
        "disable",
    ),
)

TRIGGER = SectionSpec(
    path="spec.triggers.<name>",
    help="One Kafka trigger: a consumer group member feeding its own pool of worker processes.",
    fields=(
        FieldSpec(
            "kind",
            "kind",
            parse_trigger_kind,
            f"Trigger kind; must be {KAFKA_KIND} (`kafka` is accepted as an alias).",
            required=True,
            choices=(KAFKA_KIND, "kafka"),
        ),
        FieldSpec(
            "name",
            None,
            parse_string,
            "Trigger name as `nuctl export` writes it; the key under spec.triggers is what counts.",
            default_text="the key under spec.triggers",
        ),
        FieldSpec(
            "numWorkers",
            "num_workers",
            parse_positive_int,
            "Worker processes for this trigger; each handles one record at a time.",
            default=1,
            default_text="1",
        ),
        FieldSpec(
            "explicitAckMode",
            "explicit_ack_mode",
            enum_parser(ExplicitAckMode),
            "disable: a record is done when its handler returns. enable: as disable, unless the handler "
            "returns a no-ack response (Response.ensure_no_ack()); then it waits for "
            "context.platform.explicit_ack. explicitOnly: only explicit_ack marks a record done.",
            default=ExplicitAckMode.DISABLE,
            choices=tuple(member.value for member in ExplicitAckMode),
            default_text="disable",
        ),
        FieldSpec(
            "workerTerminationTimeout",
            "worker_termination_timeout",
            parse_duration,
            "How long a worker gets to finish its record and run termination callbacks on shutdown "
            "before it is killed.",
            default=10.0,
            default_text=format_duration(10.0),
        ),
        FieldSpec(
            "attributes",
            "attributes",
            parse_mapping,
            "Kafka settings of this trigger.",
            required=True,
            section="spec.triggers.<name>.attributes",
        ),
    ),
    ignored=("class", "maxWorkers", "annotations", "workerAvailabilityTimeoutMilliseconds", "disable"),
)

# Nuclio puts the TLS material at the attributes level; here it lives in the tls section.
_TLS_KEY_HINTS = (
    ("caCert", "use attributes.tls.caCert"),
    ("accessCertificate", "use attributes.tls.clientCert"),
    ("accessKey", "use attributes.tls.clientKey"),
)

ATTRIBUTES = SectionSpec(
    path="spec.triggers.<name>.attributes",
    help="Kafka settings of one trigger.",
    fields=(
        FieldSpec(
            "brokers",
            "brokers",
            parse_brokers,
            'Bootstrap brokers as "host:port": a list or one comma-separated string.',
            required=True,
        ),
        FieldSpec(
            "topics",
            "topics",
            parse_topics,
            "Topics to consume: a list or one comma-separated string; a name starting with ^ is a regex.",
            required=True,
        ),
        FieldSpec(
            "consumerGroup",
            "consumer_group",
            parse_string,
            "Kafka consumer group id; instances with the same group share the partitions.",
            required=True,
        ),
        _enum_attribute(
            "initialOffset",
            "initial_offset",
            enum_parser(InitialOffset),
            "Where to start on partitions the group has no committed offset for.",
        ),
        _enum_attribute(
            "workerAllocationMode",
            "worker_allocation_mode",
            enum_parser(AllocationMode),
            "pool: any free worker takes a partition's next record; static: partition i always goes "
            "to worker i mod numWorkers; in both a partition's records run one at a time, in order. "
            "key: a key always goes to the same worker and runs in offset order, while different keys "
            "of one partition run in parallel (null keys keep partition order among themselves).",
        ),
        _attribute(
            "sessionTimeout",
            "session_timeout",
            parse_positive_duration,
            "Group session timeout: a member silent this long is removed and its partitions move.",
            format_duration,
        ),
        _attribute(
            "heartbeatInterval",
            "heartbeat_interval",
            parse_positive_duration,
            "How often the consumer heartbeats to the group coordinator; must be below sessionTimeout.",
            format_duration,
        ),
        _attribute(
            "maxPollInterval",
            "max_poll_interval",
            parse_positive_duration,
            "librdkafka max.poll.interval.ms: longest gap between polls before the member is considered "
            "stuck; raised to sessionTimeout + 5s if lower.",
            format_duration,
        ),
        _attribute(
            "maxWaitHandlerDuringRebalance",
            "max_wait_handler_during_rebalance",
            parse_duration,
            "On rebalance, how long to wait for in-flight records of revoked partitions to finish "
            "before giving the partitions up anyway.",
            format_duration,
        ),
        _enum_attribute(
            "balanceStrategy",
            "balance_strategy",
            enum_parser(BalanceStrategy, {"sticky": BalanceStrategy.COOPERATIVE_STICKY}),
            "Partition assignment strategy. Nuclio's `sticky` is read as cooperative-sticky, which "
            "moves only the partitions that change owner instead of stopping them all.",
        ),
        _enum_attribute(
            "groupProtocol",
            "group_protocol",
            enum_parser(GroupProtocol),
            "classic: the client-side rebalance protocol (default). consumer: KIP-848, where the broker "
            "assigns partitions; session timeout, heartbeat and balanceStrategy then come from the "
            "broker and are not sent. Needs a broker that supports it (Kafka 4.0+, recent Redpanda).",
        ),
        FieldSpec(
            "groupInstanceId",
            "group_instance_id",
            parse_string,
            "Static membership id (librdkafka group.instance.id): a member restarting within the "
            "session timeout gets its partitions back without a rebalance. Must be unique per instance.",
            default_text="none",
        ),
        _attribute(
            "staticMembership",
            "static_membership",
            parse_bool,
            "Take the static membership id from the POD_NAME (else HOSTNAME) environment variable, so a "
            "StatefulSet/Deployment pod keeps its partitions across restarts. groupInstanceId wins if set.",
            lambda default: "false",
        ),
        FieldSpec(
            "deadLetterTopic",
            "dead_letter_topic",
            parse_string,
            "Topic that receives records whose last attempt failed (onError: deadletter), with the "
            "original key, value and headers plus streamworker.* headers describing the failure.",
            default_text="none",
        ),
        FieldSpec(
            "onError",
            "on_error",
            enum_parser(OnError),
            "After the last retry: deadletter (produce to deadLetterTopic, then commit past it), stop "
            "(pause that partition, keep the others flowing, report not ready) or skip (commit past it, "
            "logged and counted).",
            choices=tuple(member.value for member in OnError),
            default_text="deadletter if deadLetterTopic is set, else stop",
        ),
        FieldSpec(
            "outputTopic",
            "output_topic",
            parse_string,
            "Topic that receives each handler's non-None return value (bytes, str, dict/list as JSON, "
            "or a Response's body) with the input's key. An input is committed only once its outputs "
            "are acknowledged by the broker; see docs/outputs.md.",
            default_text="none",
        ),
        _enum_attribute(
            "outputHeaders",
            "output_headers",
            enum_parser(OutputHeaders),
            "Headers of a return-value output: copy (the input's headers) or none.",
        ),
        _attribute(
            "maxRetries",
            "max_retries",
            parse_non_negative_int,
            "Times a failed record is retried (with backoff) before it is given up; 0 disables retries.",
            str,
        ),
        _attribute(
            "retryBackoff",
            "retry_backoff",
            parse_duration,
            "Wait before the first retry; doubles on each further retry up to retryMaxBackoff.",
            format_duration,
        ),
        _attribute(
            "retryMaxBackoff",
            "retry_max_backoff",
            parse_duration,
            "Longest wait between retries; must be at least retryBackoff.",
            format_duration,
        ),
        _attribute(
            "maxBufferedRecords",
            "max_buffered_records",
            parse_positive_int,
            "Records fetched but not yet handled, per partition, before the partition is paused.",
            str,
        ),
        _attribute(
            "maxBufferedBytes",
            "max_buffered_bytes",
            parse_positive_byte_size,
            "Bytes fetched but not yet handled, per partition, before the partition is paused; a number "
            'or a size like "64MiB", "10MB".',
            format_byte_size,
        ),
        _attribute(
            "librdkafka",
            "librdkafka",
            parse_librdkafka,
            "Extra librdkafka consumer settings (fetch sizes, other SASL mechanisms, ...), applied "
            "last; values become strings. Keys streamworker sets from other attributes (or from the "
            "sasl and tls sections, when enabled) are refused. librdkafka checks them at startup.",
            lambda default: "{}",
        ),
        FieldSpec(
            "sasl",
            "sasl",
            parse_mapping,
            "SASL authentication: see the sasl section.",
            default_text="off",
            section="spec.triggers.<name>.attributes.sasl",
        ),
        FieldSpec(
            "tls",
            "tls",
            parse_mapping,
            "TLS encryption (and mutual TLS): see the tls section.",
            default_text="off",
            section="spec.triggers.<name>.attributes.tls",
        ),
    ),
    ignored=(
        "rebalanceTimeout",
        "fetchMin",
        "fetchMax",
        "fetchDefault",
        "channelBufferSize",
        "ackWindowSize",
        "logLevel",
        "maxWaitTime",
    ),
    hints=_TLS_KEY_HINTS,
)

SASL = SectionSpec(
    path="spec.triggers.<name>.attributes.sasl",
    help="SASL authentication towards the brokers. The password is never logged; give it as a "
    "${VAR} reference or in a file (passwordFile), not inline.",
    fields=(
        FieldSpec(
            "enable",
            "enable",
            parse_bool,
            "Use SASL. The section being present turns it on; `enable: false` turns it off without "
            "deleting the section.",
            default=True,
            default_text="true",
        ),
        FieldSpec(
            "mechanism",
            "mechanism",
            enum_parser(SaslMechanism),
            "SASL mechanism (case-insensitive). Others (OAUTHBEARER, GSSAPI) through attributes.librdkafka.",
            default=SaslMechanism.PLAIN,
            choices=tuple(member.value for member in SaslMechanism),
            default_text=SaslMechanism.PLAIN.value,
        ),
        FieldSpec("user", "user", parse_string, "SASL user name.", default_text="required when enabled"),
        FieldSpec(
            "password",
            "password",
            parse_secret,
            "SASL password, usually `${KAFKA_PASSWORD}`; exactly one of password and passwordFile.",
            default_text="none",
        ),
        FieldSpec(
            "passwordFile",
            "password_file",
            parse_string,
            "File holding the SASL password (e.g. a mounted Kubernetes secret); one trailing newline "
            "is dropped. A relative path is relative to the folder of function.yaml.",
            default_text="none",
        ),
    ),
    ignored=("handshake",),
    hints=(("oauth", "OAUTHBEARER is not configured here; use attributes.librdkafka (sasl.oauthbearer.*)"),),
)

TLS = SectionSpec(
    path="spec.triggers.<name>.attributes.tls",
    help="TLS towards the brokers. Certificates and the key are file paths (relative to the folder of "
    "function.yaml) or PEM text, e.g. from a ${VAR}.",
    fields=(
        FieldSpec(
            "enable",
            "enable",
            parse_bool,
            "Use TLS. The section being present turns it on; `enable: false` turns it off without "
            "deleting the section.",
            default=True,
            default_text="true",
        ),
        FieldSpec(
            "caCert",
            "ca_cert",
            parse_pem_or_path,
            "CA certificate(s) that signed the brokers' certificates.",
            default_text="the system's CA store",
        ),
        FieldSpec(
            "clientCert",
            "client_cert",
            parse_pem_or_path,
            "Client certificate, for brokers that require mutual TLS; needs clientKey.",
            default_text="none",
        ),
        FieldSpec(
            "clientKey",
            "client_key",
            parse_pem_or_path,
            "Private key of clientCert (unencrypted PEM; for an encrypted key also set "
            "attributes.librdkafka.ssl.key.password). Never logged.",
            default_text="none",
        ),
        FieldSpec(
            "insecureSkipVerify",
            "insecure_skip_verify",
            parse_bool,
            "Do not verify the brokers' certificates or host names. For tests only: it lets anyone "
            "in the middle read the traffic.",
            default=False,
            default_text="false",
        ),
    ),
    ignored=("minimumVersion",),
)

SECTIONS: tuple[SectionSpec, ...] = (ROOT, METADATA, SPEC, TRIGGER, ATTRIBUTES, SASL, TLS)


def iter_sections() -> Iterator[SectionSpec]:
    """Every section, outermost first."""
    yield from SECTIONS


def iter_field_specs() -> Iterator[tuple[str, FieldSpec]]:
    """``(section path, field)`` for every key of function.yaml, in documentation order."""
    for section in SECTIONS:
        for spec in section.fields:
            yield section.path, spec
