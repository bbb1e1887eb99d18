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
    ExplicitAckScope,
    GroupProtocol,
    HandlerRef,
    InitialOffset,
    KafkaAttributes,
    OnError,
    OutputHeaders,
    SaslMechanism,
    StaticMapping,
    is_pem,
)

E = TypeVar("E", bound=enum.Enum)

KAFKA_KIND = "kafka-cluster"
TRIGGERS_REQUIRED = f"at least one {KAFKA_KIND} trigger is required"
# Python minor versions listed in the docs. Any python:X.Y loads (an exported Nuclio function may
# still say python:3.8 or older); one other than the running interpreter only warns.
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
    # (ignored key, why it has no effect here / what to use instead), shown in its warning.
    notes: tuple[tuple[str, str], ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()  # (alias, key)
    hints: tuple[tuple[str, str], ...] = ()  # (unknown key, advice shown instead of a guess)

    def field(self, key: str) -> FieldSpec | None:
        return next((spec for spec in self.fields if spec.key == key), None)

    def alias_of(self, key: str) -> str | None:
        return dict(self.aliases).get(key)

    def hint_for(self, key: str) -> str | None:
        return dict(self.hints).get(key)

    def ignored_warning(self, key: str) -> str:
        note = dict(self.notes).get(key)
        return "ignored by streamworker" + (f": {note}" if note else "")

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


# Go's strconv.ParseBool words too ("1", "t", "0", "f"): Nuclio's annotations are parsed with it.
_BOOL_WORDS = {
    "true": True,
    "yes": True,
    "on": True,
    "1": True,
    "t": True,
    "false": False,
    "no": False,
    "off": False,
    "0": False,
    "f": False,
}


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


def parse_event_timeout(value: object) -> float | None:
    """A positive duration; ``""`` means none, as `nuctl export` writes an unset eventTimeout."""
    if isinstance(value, str) and not value.strip():
        return None
    return parse_positive_duration(value)


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


def parse_text(value: object) -> str:
    """Any string, empty included (a description)."""
    if value is None:
        return ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError(f"must be a string, {got(value)}")
    return str(value)


def parse_annotations(value: object) -> dict[str, str]:
    """Kubernetes annotations: string keys and (after YAML's typing) scalar values, kept as text."""
    mapping = parse_mapping(value)
    annotations: dict[str, str] = {}
    for key, item in mapping.items():
        if not isinstance(key, str):
            raise ValueError(f"keys must be strings, {got(key)}")
        if isinstance(item, bool):
            annotations[key] = "true" if item else "false"
        elif isinstance(item, (str, int, float)):
            annotations[key] = str(item)
        elif item is None:
            annotations[key] = ""
        else:
            raise FieldError(f"must be a string, {got(item)}", f".{key}")
    return annotations


def parse_scopes(value: object) -> tuple[str, ...]:
    return _parse_name_list(value, "scope")


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


# Nuclio's handler pattern (_nuclio_wrapper.py): module parts may contain hyphens
# ("drain-hook:handler"), which import_module finds as drain-hook.py although `import` cannot.
_MODULE_PART = re.compile(r"[\w-]+")


def _is_dotted_identifier(text: str) -> bool:
    parts = text.split(".")
    return all(part.isidentifier() and not keyword.iskeyword(part) for part in parts)


def _is_module_path(text: str) -> bool:
    parts = text.split(".")
    return all(_MODULE_PART.fullmatch(part) and not keyword.iskeyword(part) for part in parts)


def parse_handler(value: object) -> HandlerRef:
    if not isinstance(value, str):
        raise ValueError(f'must be a string like "main:handler", {got(value)}')
    module, sep, function = value.strip().partition(":")
    if not sep or not _is_module_path(module) or not _is_dotted_identifier(function):
        raise ValueError(
            f'must be "module:function" with a dotted module path and a Python identifier (like '
            f'"main:handler"), got {value!r}'
        )
    if "." in function:
        raise ValueError(f'the function part must be a plain name (like "main:handler"), got {value!r}')
    return HandlerRef(module=module, function=function)


_PYTHON_RUNTIME = re.compile(r"python(:\d+(\.\d+)*)?")


def parse_runtime(value: object) -> str:
    """Any Python runtime name; which version it names only matters for a warning."""
    if not isinstance(value, str):
        raise ValueError(f'must be a string like "python:3.11", {got(value)}')
    runtime = value.strip()
    if not _PYTHON_RUNTIME.fullmatch(runtime):
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
        FieldSpec(
            "annotations",
            None,
            parse_annotations,
            "Nuclio's `nuclio.io/kafka-*` annotations set the Kafka trigger attributes of the same "
            "meaning (e.g. `nuclio.io/kafka-session-timeout` sets sessionTimeout) in every trigger "
            "that does not set the attribute itself: as in Nuclio, the attribute wins. Other "
            "annotations are ignored.",
            default_text="{}",
        ),
    ),
    ignored=("namespace", "labels", "resourceVersion"),
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
            "description",
            "description",
            parse_text,
            "Free text; the handler sees it as NUCLIO_FUNCTION_DESCRIPTION.",
            default="",
            default_text='""',
        ),
        FieldSpec(
            "version",
            "version",
            parse_int,
            "Function version as Nuclio numbers it; the handler sees it as NUCLIO_FUNCTION_VERSION.",
            default=-1,
            default_text="-1",
        ),
        FieldSpec(
            "eventTimeout",
            "event_timeout",
            parse_event_timeout,
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
        "publish",
        "alias",
        "envFrom",
        "dataBindings",
        "runRegistry",
        "imagePullSecrets",
        "imagePullPolicy",
        "dealerURI",
        "serviceAccount",
        "disableDefaultHTTPTrigger",
        "disableSensitiveFieldsMasking",
        "devices",
        "nodeName",
        "preemptionPolicy",
        "preemptionMode",
        "deploymentStrategy",
        "hostIPC",
        "customScalingMetricSpecs",
        "autoScaleMetrics",
        "waitReadinessTimeoutBeforeFailure",
        "sidecars",
        "initContainers",
    ),
    notes=(
        ("envFrom", "variables from Kubernetes ConfigMaps/Secrets are not read; set them in the environment"),
        ("disableDefaultHTTPTrigger", "streamworker never starts an HTTP trigger"),
        ("dataBindings", "Nuclio data bindings are not provided; open the connection in init_context"),
        ("disable", "a streamworker function always runs; disable individual triggers instead"),
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
            "disabled",
            None,
            parse_bool,
            "true: the trigger is not run (any kind; `disable` is accepted as an alias). At least one "
            "enabled trigger is required.",
            default=False,
            default_text="false",
        ),
        FieldSpec(
            "numWorkers",
            "num_workers",
            parse_positive_int,
            "Worker processes for this trigger; each handles one record at a time. Nuclio's default "
            "for Kafka is 32; streamworker's is 1 (each worker is a whole Python process).",
            default=1,
            default_text="1",
        ),
        FieldSpec(
            "maxWorkers",
            None,
            parse_positive_int,
            "Nuclio's deprecated name for numWorkers; used when numWorkers is not given.",
            default_text="none",
        ),
        FieldSpec(
            "url",
            None,
            parse_brokers,
            "Nuclio's trigger URL: the brokers when attributes.brokers is not given.",
            default_text="none",
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
    ignored=(
        "class",
        "annotations",
        "workerAvailabilityTimeoutMilliseconds",
        "workerAllocatorName",
        "batch",
        "waitExplicitAckDuringRebalanceTimeout",
        "paths",
        "username",
        "password",
        "secret",
        "partitions",
        "total_tasks",
        "max_task_allocation",
    ),
    aliases=(("disable", "disabled"),),
    notes=(
        ("batch", "Nuclio batching is for HTTP triggers; records reach workers in batches anyway"),
        (
            "waitExplicitAckDuringRebalanceTimeout",
            "on revoke, records still waiting for an ack are not committed and the new owner gets "
            "them again; maxWaitHandlerDuringRebalance bounds the wait for running handlers",
        ),
    ),
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
            default_text="required (or the trigger's url)",
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
            "Where to start on partitions the group has no committed offset for. Nuclio's code "
            "defaults to latest (its docs say earliest); streamworker starts at earliest so a new "
            "group never skips records. Set latest for Nuclio's behaviour.",
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
        _enum_attribute(
            "staticMapping",
            "static_mapping",
            enum_parser(StaticMapping),
            "How static mode picks a partition's worker. assignmentIndex (Nuclio's): the "
            "partition's index among the partitions of its topic assigned to this member, in "
            "partition order, mod numWorkers; under cooperative-sticky, a partition kept through a "
            "rebalance keeps its worker. partitionId: partition id mod numWorkers.",
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
            "before giving the partitions up anyway. Used as written: Nuclio raises it to "
            "workerTerminationTimeout + 3s when it is lower (13s with the defaults).",
            format_duration,
        ),
        _enum_attribute(
            "balanceStrategy",
            "balance_strategy",
            enum_parser(BalanceStrategy, {"sticky": BalanceStrategy.COOPERATIVE_STICKY}),
            "Partition assignment strategy. Nuclio's default is range; streamworker's is "
            "cooperative-sticky, which moves only the partitions that change owner instead of "
            "stopping them all. Nuclio's `sticky` is read as cooperative-sticky.",
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
            "Wait before the first retry of a failed record; doubles on each further retry up to "
            "retryMaxBackoff. Not Nuclio's retryBackoff (its wait after a failed partition read, 2s, "
            "which is librdkafka's fetch.error.backoff.ms here).",
            format_duration,
        ),
        _attribute(
            "retryMaxBackoff",
            "retry_max_backoff",
            parse_duration,
            "Longest wait between retries; must be at least retryBackoff.",
            format_duration,
        ),
        _enum_attribute(
            "explicitAckScope",
            "explicit_ack_scope",
            enum_parser(ExplicitAckScope),
            "With explicitAckMode enable/explicitOnly, what context.platform.explicit_ack(offset) "
            "closes. cumulative (Nuclio's): every record of that partition up to offset that was "
            "handled and waits for its ack, and the record at offset once its handler returns; never "
            "a record still running (other than offset) or failed. record: that one record only.",
        ),
        _attribute(
            "maxBufferedRecords",
            "max_buffered_records",
            parse_positive_int,
            "Records fetched past the commit position (handled or not: records done behind one that "
            "is not count too), per partition, before the partition is paused.",
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
            "ackTimeout",
            "ack_timeout",
            parse_positive_duration,
            "With explicitAckMode enable or explicitOnly: a record handled but not acked within this "
            "long counts as a failed attempt (retried, then onError). Off by default: wait forever.",
            lambda default: "none (off)",
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
            "fetchMin",
            None,
            parse_positive_int,
            "Nuclio's fetch minimum in bytes: librdkafka fetch.min.bytes.",
            default_text="librdkafka's (1)",
        ),
        FieldSpec(
            "fetchDefault",
            None,
            parse_positive_int,
            "Nuclio's default fetch size per partition in bytes: librdkafka max.partition.fetch.bytes.",
            default_text="librdkafka's (1MiB)",
        ),
        FieldSpec(
            "fetchMax",
            None,
            parse_positive_int,
            "Nuclio's fetch maximum in bytes: librdkafka fetch.max.bytes.",
            default_text="librdkafka's (50MiB)",
        ),
        FieldSpec(
            "maxWaitTime",
            None,
            parse_duration,
            "Nuclio's longest broker wait for fetchMin bytes: librdkafka fetch.wait.max.ms. "
            "streamworker lowers librdkafka's 500ms to 100ms: a partition resumed after back-pressure "
            "waits for the fetch in flight, which an idle partition keeps on the broker this long.",
            default_text="100ms",
        ),
        FieldSpec(
            "caCert",
            None,
            parse_pem_or_path,
            "Nuclio's place for the CA certificate: the same as tls.caCert, and it turns TLS on "
            "as in Nuclio.",
            default_text="none",
        ),
        FieldSpec(
            "accessCertificate",
            None,
            parse_pem_or_path,
            "Nuclio's place for the client certificate: the same as tls.clientCert.",
            default_text="none",
        ),
        FieldSpec(
            "accessKey",
            None,
            parse_pem_or_path,
            "Nuclio's place for the client key: the same as tls.clientKey.",
            default_text="none",
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
        "rebalanceRetryMax",
        "rebalanceRetryBackoff",
        "maxProcessingTime",
        "version",
        "secretPath",
        "channelBufferSize",
        "ackWindowSize",
        "logLevel",
    ),
    notes=(
        ("rebalanceTimeout", "librdkafka uses maxPollInterval as the rebalance timeout"),
        ("rebalanceRetryMax", "librdkafka rejoins the group on its own"),
        ("rebalanceRetryBackoff", "librdkafka rejoins the group on its own"),
        ("maxProcessingTime", "use spec.eventTimeout to bound a handler call"),
        ("version", "librdkafka negotiates the protocol version with the broker"),
        (
            "secretPath",
            "give tls.caCert/clientCert/clientKey as file paths and sasl.passwordFile instead",
        ),
        ("channelBufferSize", "use maxBufferedRecords / maxBufferedBytes"),
        (
            "ackWindowSize",
            "the commit position is the first record not yet done; it never runs ahead of an ack",
        ),
    ),
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
            "SASL mechanism (case-insensitive); OAUTHBEARER needs the oauth section (set by it when "
            "omitted). Others (GSSAPI) through attributes.librdkafka.",
            default=SaslMechanism.PLAIN,
            choices=tuple(member.value for member in SaslMechanism),
            default_text=SaslMechanism.PLAIN.value,
        ),
        FieldSpec(
            "user",
            "user",
            parse_string,
            "SASL user name.",
            default_text="required when enabled (PLAIN, SCRAM)",
        ),
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
        FieldSpec(
            "oauth",
            None,
            parse_mapping,
            "OAUTHBEARER with client credentials, as Nuclio's sasl.oauth: see the oauth section.",
            default_text="none",
            section="spec.triggers.<name>.attributes.sasl.oauth",
        ),
    ),
    ignored=("handshake",),
    notes=(("handshake", "librdkafka always sends the SASL handshake"),),
)

OAUTH = SectionSpec(
    path="spec.triggers.<name>.attributes.sasl.oauth",
    help="SASL/OAUTHBEARER through an OIDC token endpoint (client credentials grant), done by "
    "librdkafka itself (sasl.oauthbearer.method=oidc).",
    fields=(
        FieldSpec("clientId", "client_id", parse_string, "OAuth client id.", required=True),
        FieldSpec(
            "clientSecret",
            "client_secret",
            parse_secret,
            "OAuth client secret, usually a ${VAR} reference. Never logged.",
            required=True,
        ),
        FieldSpec("tokenUrl", "token_url", parse_string, "Token endpoint URL.", required=True),
        FieldSpec(
            "scopes",
            "scopes",
            parse_scopes,
            "Scopes to request: a list or one comma-separated string.",
            default=(),
            default_text="none",
        ),
    ),
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
    notes=(("minimumVersion", "librdkafka negotiates the highest TLS version both sides support"),),
)

SECTIONS: tuple[SectionSpec, ...] = (ROOT, METADATA, SPEC, TRIGGER, ATTRIBUTES, SASL, OAUTH, TLS)


def iter_sections() -> Iterator[SectionSpec]:
    """Every section, outermost first."""
    yield from SECTIONS


def iter_field_specs() -> Iterator[tuple[str, FieldSpec]]:
    """``(section path, field)`` for every key of function.yaml, in documentation order."""
    for section in SECTIONS:
        for spec in section.fields:
            yield section.path, spec


# Nuclio's Kafka annotations (pkg/processor/trigger/kafka/types.go) and the trigger key each one
# sets, as a path below spec.triggers.<name>. As in Nuclio, a key written in the trigger wins over
# its annotation, except explicitAckMode, where Nuclio lets an `enable`/`explicitOnly` annotation win.
KAFKA_ANNOTATIONS: tuple[tuple[str, str], ...] = (
    ("nuclio.io/kafka-session-timeout", "attributes.sessionTimeout"),
    ("nuclio.io/kafka-heartbeat-interval", "attributes.heartbeatInterval"),
    ("nuclio.io/kafka-max-processing-time", "attributes.maxProcessingTime"),
    ("nuclio.io/kafka-rebalance-timeout", "attributes.rebalanceTimeout"),
    ("nuclio.io/kafka-rebalance-retry-backoff", "attributes.rebalanceRetryBackoff"),
    ("nuclio.io/kafka-retry-backoff", "attributes.retryBackoff"),
    ("nuclio.io/kafka-balance-strategy", "attributes.balanceStrategy"),
    ("nuclio.io/kafka-max-wait-time", "attributes.maxWaitTime"),
    ("nuclio.io/kafka-max-wait-handler-during-rebalance", "attributes.maxWaitHandlerDuringRebalance"),
    ("nuclio.io/kafka-worker-allocation-mode", "attributes.workerAllocationMode"),
    ("nuclio.io/kafka-rebalance-retry-max", "attributes.rebalanceRetryMax"),
    ("nuclio.io/kafka-fetch-min", "attributes.fetchMin"),
    ("nuclio.io/kafka-fetch-default", "attributes.fetchDefault"),
    ("nuclio.io/kafka-fetch-max", "attributes.fetchMax"),
    ("nuclio.io/kafka-channel-buffer-size", "attributes.channelBufferSize"),
    ("nuclio.io/kafka-access-key", "attributes.accessKey"),
    ("nuclio.io/kafka-access-cert", "attributes.accessCertificate"),
    ("nuclio.io/kafka-ca-cert", "attributes.caCert"),
    ("nuclio.io/kafka-version", "attributes.version"),
    ("nuclio.io/kafka-secret-path", "attributes.secretPath"),
    ("nuclio.io/kafka-log-level", "attributes.logLevel"),
    ("nuclio.io/kafka-tls-enabled", "attributes.tls.enable"),
    ("nuclio.io/kafka-tls-insecure-skip-verify", "attributes.tls.insecureSkipVerify"),
    ("nuclio.io/kafka-tls-minimum-version", "attributes.tls.minimumVersion"),
    ("nuclio.io/kafka-sasl-enabled", "attributes.sasl.enable"),
    ("nuclio.io/kafka-sasl-user", "attributes.sasl.user"),
    ("nuclio.io/kafka-sasl-password", "attributes.sasl.password"),
    ("nuclio.io/kafka-sasl-mechanism", "attributes.sasl.mechanism"),
    ("nuclio.io/kafka-sasl-handshake", "attributes.sasl.handshake"),
    ("nuclio.io/kafka-sasl-oauth-client-id", "attributes.sasl.oauth.clientId"),
    ("nuclio.io/kafka-sasl-oauth-client-secret", "attributes.sasl.oauth.clientSecret"),
    ("nuclio.io/kafka-sasl-oauth-token-url", "attributes.sasl.oauth.tokenUrl"),
    ("nuclio.io/kafka-sasl-oauth-scopes", "attributes.sasl.oauth.scopes"),
    ("nuclio.io/kafka-window-size", "attributes.ackWindowSize"),
    ("custom.nuclio.io/kafka-window-size", "attributes.ackWindowSize"),
    ("nuclio.io/kafka-explicit-ack-mode", "explicitAckMode"),
    ("nuclio.io/wait-explicit-ack-during-rebalance-timeout", "waitExplicitAckDuringRebalanceTimeout"),
)
# Annotations whose value replaces the trigger's own key (Nuclio's PopulateExplicitAckMode).
ANNOTATIONS_THAT_WIN = frozenset({"nuclio.io/kafka-explicit-ack-mode"})
