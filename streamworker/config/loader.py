"""Read a function.yaml into a ``FunctionConfig``.

Every mistake becomes a ``ConfigError`` whose text is one line naming the file and the dotted field,
because that line is what an operator sees in a crash-looping container's log. A file with several
mistakes raises one ``ConfigError`` carrying all of them in ``errors`` (in file order), so that
``streamworker validate`` reports every one in a single run instead of one per edit.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from .durations import format_duration
from .kafka_settings import SASL_OWNED, TLS_OWNED, is_sensitive_setting
from .model import (
    FunctionConfig,
    KafkaAttributes,
    OAuthSettings,
    OnError,
    SaslMechanism,
    SaslSettings,
    Secret,
    TlsSettings,
    TriggerConfig,
    is_pem,
)
from .schema import (
    ANNOTATIONS_THAT_WIN,
    ATTRIBUTES,
    KAFKA_ANNOTATIONS,
    METADATA,
    OAUTH,
    ROOT,
    SASL,
    SPEC,
    TLS,
    TRIGGER,
    TRIGGERS_REQUIRED,
    FieldError,
    SectionSpec,
    got,
    parse_bool,
    parse_trigger_kind,
    runtime_mismatch,
    suggest,
)

# metadata.name becomes the consumer's client id and metric labels, and `streamworker init` uses it as
# folder, topic and group name, so it has to be valid as all of those. Nuclio's own rule (a DNS label:
# lowercase, digits, '-') plus '_', which Python users expect; both are legal in Kafka names.
FUNCTION_NAME = re.compile(r"[a-z](?:[a-z0-9_-]{0,61}[a-z0-9])?")
FUNCTION_NAME_RULE = (
    "use lowercase letters, digits, '-' and '_', starting with a letter and ending with a letter or "
    "digit, at most 63 characters"
)


class ConfigError(Exception):
    """A function.yaml problem. ``str()`` is one line: ``file: field: problem`` (or ``file: problem``).

    ``errors`` holds every problem found in the file (this one first); ``str()`` names the first and
    counts the others. Print ``errors`` one per line to show them all.
    """

    def __init__(
        self, file: str, field: str | None, problem: str, errors: Sequence[ConfigError] = ()
    ) -> None:
        # Passing the fields to Exception keeps the error picklable across processes.
        super().__init__(file, field, problem)
        self.file = file
        self.field = field
        self.problem = problem
        self.errors: tuple[ConfigError, ...] = tuple(errors) or (self,)

    @classmethod
    def combine(cls, errors: Sequence[ConfigError]) -> ConfigError:
        """One error standing for all of ``errors`` (at least one)."""
        if len(errors) == 1:
            return errors[0]
        first = errors[0]
        return cls(first.file, first.field, first.problem, errors)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.file, self.field, self.problem, self.errors if len(self.errors) > 1 else ()),
        )

    def line(self) -> str:
        """This problem alone, on one line."""
        location = f"{self.file}: {self.field}" if self.field else self.file
        return f"{location}: {_one_line(self.problem)}"

    def __str__(self) -> str:
        more = len(self.errors) - 1
        return self.line() + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


class _SectionInvalid(Exception):
    """A section had errors, already recorded in the context; checks that need its values are skipped."""


@dataclass(frozen=True)
class LoadedConfig:
    """A loaded config plus warnings about keys that were accepted but have no effect."""

    config: FunctionConfig
    warnings: tuple[str, ...]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- ${VAR} references ----------------------------------------------------------------------------

_REFERENCE = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<body>[^}]*)\}|(?P<open>\{))")
_REFERENCE_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)
_REFERENCE_HINT = "use ${NAME} or ${NAME:-default}, and $$ for a literal $"


def expand_references(text: str, environ: Mapping[str, str]) -> str:
    """Replace ``${NAME}`` and ``${NAME:-default}`` with values from ``environ``; ``$$`` is a ``$``.

    As in the shell, the default also applies when the variable is set but empty. A ``$`` followed by
    anything else stays as it is, so passwords containing ``$`` survive. Raises ``ValueError``.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group("dollar"):
            return "$"
        if match.group("open") is not None:
            raise ValueError(f"unterminated '${{': {_REFERENCE_HINT}")
        body = match.group("body")
        parsed = _REFERENCE_BODY.fullmatch(body)
        if parsed is None:
            raise ValueError(f"malformed reference '${{{body}}}': {_REFERENCE_HINT}")
        name, default = parsed.group("name"), parsed.group("default")
        if default is not None and "${" in default:
            raise ValueError(f"malformed reference '${{{body}}}': a default cannot contain another reference")
        value = environ.get(name)
        if default is not None:
            return value if value else default
        if value is None:
            raise ValueError(
                f"environment variable {name} is not set (or give a default: ${{{name}:-value}})"
            )
        return value

    return _REFERENCE.sub(replace, text)


def referenced_names(text: object) -> set[str]:
    """Names of the environment variables a value refers to with ``${NAME}`` / ``${NAME:-default}``."""
    if not isinstance(text, str):
        return set()
    names = set()
    for match in _REFERENCE.finditer(text):
        body = match.group("body")
        parsed = _REFERENCE_BODY.fullmatch(body) if body is not None else None
        if parsed is not None:
            names.add(parsed.group("name"))
    return names


# --- reading the file -----------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys: PyYAML would silently keep the last one, hiding a typo'd
    copy-paste such as two `numWorkers` lines."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            # Merge keys (`<<: *defaults`) may legitimately be overridden by explicit keys.
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(file: str) -> object:
    try:
        data = Path(file).read_bytes()
    except OSError as error:
        raise ConfigError(file, None, f"cannot read: {error.strerror or error}") from error
    try:
        text = data.decode("utf-8-sig")  # -sig: tolerate the BOM some Windows editors write
    except UnicodeDecodeError as error:
        raise ConfigError(
            file, None, f"cannot read: not UTF-8 text (bad byte at offset {error.start})"
        ) from error
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = error.problem or error.context or "malformed document"
        context = f" ({error.context})" if error.context and error.problem else ""
        raise ConfigError(file, None, f"invalid YAML{where}: {problem}{context}") from error
    except yaml.YAMLError as error:
        raise ConfigError(file, None, f"invalid YAML: {error}") from error


# --- walking the schema ---------------------------------------------------------------------------


@dataclass
class _Context:
    """Per-call state of one load: where errors point and the warnings gathered so far."""

    file: str
    environ: Mapping[str, str]
    warnings: list[str] = field(default_factory=list)
    errors: list[ConfigError] = field(default_factory=list)
    # Field path -> where its value was really written (a metadata annotation, an attribute-level
    # certificate), so that errors and warnings point at the line the user wrote.
    written_at: dict[str, str] = field(default_factory=dict)

    def _where(self, field_path: str) -> str:
        for path, origin in self.written_at.items():
            if field_path == path or field_path.startswith(path + "[") or field_path.startswith(path + "."):
                return origin + field_path[len(path) :]
        return field_path

    # Environment variables that secret fields refer to (see FunctionConfig.secret_env).
    secret_refs: set[str] = field(default_factory=set)

    def error(self, field_path: str | None, problem: str) -> ConfigError:
        return ConfigError(self.file, None if field_path is None else self._where(field_path), problem)

    def report(self, field_path: str | None, problem: str) -> None:
        """Record a problem and carry on, so that one run finds every mistake in the file."""
        self.errors.append(self.error(field_path, problem))

    def attempt(self, check: Callable[[], Any]) -> Any:
        """Run ``check``; record the ``ConfigError`` it raises and return None instead."""
        try:
            return check()
        except ConfigError as error:
            self.errors.extend(error.errors)
        except _SectionInvalid:
            pass
        return None

    def warn(self, field_path: str, message: str) -> None:
        self.warnings.append(f"{self.file}: {self._where(field_path)}: {message}")

    def expand(self, value: object, path: str) -> object:
        """Expand ``${VAR}`` in every string inside ``value``; errors name the innermost field."""
        if isinstance(value, str):
            try:
                return expand_references(value, self.environ)
            except ValueError as error:
                raise self.error(path, str(error)) from error
        if isinstance(value, Mapping):
            return {key: self.expand(item, _join(path, str(key))) for key, item in value.items()}
        if isinstance(value, list):
            return [self.expand(item, f"{path}[{index}]") for index, item in enumerate(value)]
        return value


@dataclass(frozen=True)
class _Parsed:
    values: dict[str, Any]  # by YAML key; defaults filled in
    paths: dict[str, str]  # by YAML key: the dotted path as the user wrote it
    given: frozenset[str]  # keys present in the file (not null)
    valid: bool = True  # False: problems were recorded; values of the bad keys are their defaults

    def check(self) -> None:
        """Raise ``_SectionInvalid`` unless every key parsed, before checks that combine values."""
        if not self.valid:
            raise _SectionInvalid()


def _parse_section(section: SectionSpec, raw: Mapping[object, object], path: str, ctx: _Context) -> _Parsed:
    """Parse one section, recording every bad key in ``ctx`` rather than stopping at the first."""
    errors_before = len(ctx.errors)
    present: dict[str, tuple[str, object]] = {}
    # Keys a misspelt key probably meant: "required" on top of "did you mean" would say it twice.
    meant: set[str] = set()
    for raw_key, value in raw.items():
        if not isinstance(raw_key, str):
            ctx.report(path or None, f"keys must be strings, {got(raw_key)}")
            continue
        key = section.alias_of(raw_key) or raw_key
        if key in present:
            ctx.report(_join(path, raw_key), f"given twice ('{raw_key}' is an alias of '{key}')")
        elif section.field(key) is not None:
            present[key] = (raw_key, value)
        elif key in section.ignored:
            ctx.warn(_join(path, raw_key), section.ignored_warning(key))
        else:
            ctx.report(_join(path, raw_key), section.unknown_key_problem(raw_key))
            guess = suggest(raw_key, [spec.key for spec in section.fields])
            if guess is not None:
                meant.add(guess)

    values: dict[str, Any] = {}
    paths: dict[str, str] = {}
    given: set[str] = set()
    for spec in section.fields:
        written_key, value = present.get(spec.key, (spec.key, None))
        field_path = paths[spec.key] = _join(path, written_key)
        default = spec.default
        values[spec.key] = dict(default) if isinstance(default, MappingProxyType) else default
        # An empty value (`env:`) means "not given", as YAML authors expect.
        if value is None:
            if spec.required and spec.key not in meant:
                ctx.report(field_path, spec.missing)
            continue
        try:
            if spec.section is None:  # nested sections expand their own leaves, skipping ignored keys
                value = ctx.expand(value, field_path)
            values[spec.key] = spec.parse(value)
        except ConfigError as error:
            ctx.errors.extend(error.errors)
            continue
        except FieldError as error:
            ctx.report(field_path + error.subpath, error.problem)
            continue
        except ValueError as error:
            ctx.report(field_path, str(error))
            continue
        given.add(spec.key)
    return _Parsed(values, paths, frozenset(given), valid=len(ctx.errors) == errors_before)


def _model_kwargs(section: SectionSpec, parsed: _Parsed) -> dict[str, Any]:
    """Model constructor arguments for the section's plain fields (nested sections are built apart)."""
    return {
        spec.attr: parsed.values[spec.key] for spec in section.fields if spec.attr and spec.section is None
    }


def _check_order(parsed: _Parsed, ctx: _Context, low_key: str, high_key: str, *, strict: bool) -> None:
    """Require ``low < high`` (``<=`` unless strict), reported at whichever key the user wrote."""
    low, high = parsed.values[low_key], parsed.values[high_key]
    if low < high or (not strict and low == high):
        return
    if low_key in parsed.given or high_key not in parsed.given:
        bound = "below" if strict else "at most"
        problem = f"must be {bound} {high_key} ({format_duration(high)}), got {format_duration(low)}"
        raise ctx.error(parsed.paths[low_key], problem)
    bound = "above" if strict else "at least"
    problem = f"must be {bound} {low_key} ({format_duration(low)}), got {format_duration(high)}"
    raise ctx.error(parsed.paths[high_key], problem)


# Nuclio's fetch attributes and the librdkafka property each one sets (sarama's Consumer.Fetch.*
# and Consumer.MaxWaitTime have these librdkafka equivalents).
_FETCH_SETTINGS = (
    ("fetchMin", "fetch.min.bytes"),
    ("fetchDefault", "max.partition.fetch.bytes"),
    ("fetchMax", "fetch.max.bytes"),
    ("maxWaitTime", "fetch.wait.max.ms"),
)


def _is_given(raw: Mapping[object, object], key: str, aliases: tuple[tuple[str, str], ...] = ()) -> bool:
    names = {key} | {alias for alias, target in aliases if target == key}
    return any(raw.get(name) is not None for name in names)


def _apply_annotations(
    raw: Mapping[object, object], annotations: Mapping[str, str], path: str, ctx: _Context
) -> Mapping[object, object]:
    """The trigger with Nuclio's ``nuclio.io/kafka-*`` annotations filled in where the trigger does
    not set the key itself (Nuclio decodes the attributes over the annotation values)."""
    if not annotations:
        return raw
    trigger: dict[object, object] = dict(raw)
    for annotation, target in KAFKA_ANNOTATIONS:
        if annotation not in annotations:
            continue
        value: object = annotations[annotation]
        *sections, key = target.split(".")
        node = trigger
        for name in sections:
            child = node.get(name)
            if not isinstance(child, Mapping):
                # A section made only from annotations: off unless an annotation enables it, as
                # Nuclio's sasl.enable / tls.enable default to false.
                child = {"enable": False} if name in ("sasl", "tls") else {}
            node[name] = child = dict(child)
            node = child
        aliases = TRIGGER.aliases if not sections else ()
        wins = annotation in ANNOTATIONS_THAT_WIN and str(value).strip().lower() in ("enable", "explicitonly")
        if _is_given(node, key, aliases) and not wins:
            ctx.warn(f"metadata.annotations.{annotation}", f"not used: {path}.{target} is set in the trigger")
            continue
        node[key] = value
        ctx.written_at[f"{path}.{target}"] = f"metadata.annotations.{annotation}"
    return trigger


def _trigger_disabled(name: str, raw: Mapping[object, object], ctx: _Context) -> bool:
    for key in ("disabled", "disable"):
        value = raw.get(key)
        if value is not None:
            try:
                return parse_bool(ctx.expand(value, f"spec.triggers.{name}.{key}"))
            except ValueError as error:
                raise ctx.error(f"spec.triggers.{name}.{key}", str(error)) from error
    return False


def _parse_trigger(
    name: str, raw: Mapping[object, object], annotations: Mapping[str, str], ctx: _Context
) -> TriggerConfig:
    path = f"spec.triggers.{name}"
    # Check the kind first: for an http trigger, "unsupported kind" is the real news, not its
    # http-only keys being unknown.
    if raw.get("kind") is not None:
        try:
            parse_trigger_kind(ctx.expand(raw["kind"], f"{path}.kind"))
        except ValueError as error:
            raise ctx.error(f"{path}.kind", str(error)) from error

    raw = _apply_annotations(raw, annotations, path, ctx)
    trigger = _parse_section(TRIGGER, raw, path, ctx)
    written_name = trigger.values["name"]
    if written_name is not None and written_name != name:
        ctx.warn(
            trigger.paths["name"], f"'{written_name}' differs from the key; the trigger is called '{name}'"
        )
    max_workers = trigger.values["maxWorkers"]
    if max_workers is not None:
        if "numWorkers" not in trigger.given:
            trigger.values["numWorkers"] = max_workers
        elif max_workers != trigger.values["numWorkers"]:
            ctx.warn(trigger.paths["maxWorkers"], "not used: numWorkers is given too")

    raw_attributes = trigger.values["attributes"]
    if not isinstance(raw_attributes, Mapping):  # missing or not a mapping: already reported
        raise _SectionInvalid()
    # Reported before the attributes' own problems, in the order their keys are listed.
    no_brokers = trigger.values["url"] is None and not _is_given(raw_attributes, "brokers")
    if no_brokers:
        problem = "required (or give the trigger's url, as Nuclio allows)"
        ctx.report(_join(trigger.paths["attributes"], "brokers"), problem)
    attributes = _parse_section(ATTRIBUTES, raw_attributes, trigger.paths["attributes"], ctx)
    trigger.check()
    attributes.check()
    if no_brokers:
        raise _SectionInvalid()
    if attributes.values["brokers"] is None:
        attributes.values["brokers"] = trigger.values["url"]
    # librdkafka accepts a heartbeat interval at or above the session timeout, and the member then
    # keeps timing out of its group; catch it here.
    ctx.attempt(lambda: _check_order(attributes, ctx, "heartbeatInterval", "sessionTimeout", strict=True))
    ctx.attempt(lambda: _check_order(attributes, ctx, "retryBackoff", "retryMaxBackoff", strict=False))
    if attributes.values["onError"] is OnError.DEADLETTER and not attributes.values["deadLetterTopic"]:
        ctx.report(attributes.paths["onError"], "deadletter needs attributes.deadLetterTopic")

    librdkafka = dict(attributes.values["librdkafka"])
    for key, setting in _FETCH_SETTINGS:
        value = attributes.values[key]
        if value is None:
            continue
        if setting in librdkafka:
            ctx.report(attributes.paths[key], f"also set as attributes.librdkafka.{setting}; set it once")
            continue
        librdkafka[setting] = str(round(value * 1000)) if key == "maxWaitTime" else str(value)
    attributes.values["librdkafka"] = librdkafka

    errors_before = len(ctx.errors)
    sasl = ctx.attempt(lambda: _parse_sasl(attributes, ctx))
    tls = ctx.attempt(lambda: _parse_tls(attributes, ctx))
    if len(ctx.errors) > errors_before:
        raise _SectionInvalid()
    if "librdkafka" in attributes.given:
        written = trigger.values["attributes"].get(_written_key(attributes, "librdkafka"))
        for key, value in written.items() if isinstance(written, Mapping) else ():
            if is_sensitive_setting(str(key)):
                ctx.secret_refs |= referenced_names(value)
    owned = (SASL_OWNED if sasl else ()) + (TLS_OWNED if tls else ())
    for key in attributes.values["librdkafka"]:
        if key in owned:
            section = "sasl" if sasl and key in SASL_OWNED else "tls"
            raise ctx.error(
                f"{attributes.paths['librdkafka']}.{key}",
                f"already set by attributes.{section}; set it in one place only",
            )

    return TriggerConfig(
        name=name,
        **_model_kwargs(TRIGGER, trigger),
        attributes=KafkaAttributes(**_model_kwargs(ATTRIBUTES, attributes), sasl=sasl, tls=tls),
    )


def _resolve(path: str, ctx: _Context) -> Path:
    """A path from function.yaml: relative ones are relative to the file's folder, like the handler."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else Path(os.path.abspath(ctx.file)).parent / candidate


def _existing_file(path: str, field_path: str, ctx: _Context) -> str:
    resolved = _resolve(path, ctx)
    if not resolved.is_file():
        raise ctx.error(field_path, f"file not found: {resolved}")
    return str(resolved)


def _read_secret_file(path: str, field_path: str, ctx: _Context) -> Secret:
    resolved = _resolve(path, ctx)
    try:
        text = resolved.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
        raise ctx.error(field_path, f"cannot read {resolved}: {reason}") from None
    # `echo pw > file` and most editors end the file with a newline that is not part of the password.
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ctx.error(field_path, f"{resolved} is empty")
    return Secret(text, source=f"passwordFile {resolved}")


def _parse_switched_section(
    section: SectionSpec, raw: Mapping[object, object], path: str, ctx: _Context
) -> _Parsed | None:
    """A sasl/tls section, or None when it says ``enable: false``. Nuclio ignores the values of a
    disabled section (exports may carry ``user: ""``), so only its keys are checked then."""
    enable = raw.get("enable")
    if enable is not None:
        try:
            enabled = parse_bool(ctx.expand(enable, f"{path}.enable"))
        except ValueError as error:
            raise ctx.error(f"{path}.enable", str(error)) from error
        if not enabled:
            unknown = {key: value for key, value in raw.items() if section.field(str(key)) is None}
            _parse_section(section, {**unknown, "enable": False}, path, ctx)
            return None
    return _parse_section(section, raw, path, ctx)


def _parse_sasl(attributes: _Parsed, ctx: _Context) -> SaslSettings | None:
    raw = attributes.values["sasl"]
    if raw is None:
        return None
    path = attributes.paths["sasl"]
    parsed = _parse_switched_section(SASL, raw, path, ctx)
    if parsed is None:
        return None
    parsed.check()
    if not parsed.values["enable"]:
        return None
    oauth = None
    mechanism = parsed.values["mechanism"]
    if parsed.values["oauth"] is not None:
        oauth_parsed = _parse_section(OAUTH, parsed.values["oauth"], parsed.paths["oauth"], ctx)
        oauth = OAuthSettings(
            client_id=oauth_parsed.values["clientId"],
            client_secret=Secret(oauth_parsed.values["clientSecret"], source="sasl.oauth.clientSecret"),
            token_url=oauth_parsed.values["tokenUrl"],
            scopes=oauth_parsed.values["scopes"],
        )
        if "mechanism" not in parsed.given:
            mechanism = SaslMechanism.OAUTHBEARER
        elif mechanism is not SaslMechanism.OAUTHBEARER:
            raise ctx.error(parsed.paths["oauth"], f"needs mechanism OAUTHBEARER, not {mechanism.value}")
    elif mechanism is SaslMechanism.OAUTHBEARER:
        raise ctx.error(
            parsed.paths["mechanism"],
            "OAUTHBEARER needs attributes.sasl.oauth (clientId, clientSecret, tokenUrl); other "
            "OAUTHBEARER setups go in attributes.librdkafka without a sasl section",
        )
    if oauth is not None and parsed.values["user"] is None:
        return SaslSettings(mechanism=mechanism, user=None, password=None, oauth=oauth)
    if parsed.values["user"] is None:
        raise ctx.error(parsed.paths["user"], "required when SASL is enabled")
    password, password_file = parsed.values["password"], parsed.values["passwordFile"]
    if password is not None and password_file is not None:
        raise ctx.error(parsed.paths["passwordFile"], "give password or passwordFile, not both")
    if password is None and password_file is None:
        raise ctx.error(f"{path}.password", "required when SASL is enabled (or give passwordFile)")
    if password_file is not None:
        secret = _read_secret_file(password_file, parsed.paths["passwordFile"], ctx)
    else:
        written = raw.get(_written_key(parsed, "password"))
        ctx.secret_refs |= referenced_names(written)
        if isinstance(written, str) and "${" in written:
            secret = Secret(password, source=written.strip())
        else:
            ctx.warn(
                parsed.paths["password"],
                "written inline in function.yaml; prefer a ${VAR} reference or passwordFile",
            )
            secret = Secret(password, source="inline")
    return SaslSettings(mechanism=mechanism, user=parsed.values["user"], password=secret, oauth=oauth)


def _written_key(parsed: _Parsed, key: str) -> str:
    """The key as written in the file (it may be an alias)."""
    return parsed.paths[key].rsplit(".", 1)[-1]


# Nuclio's attribute-level TLS material and the tls key each one is.
_NUCLIO_TLS_KEYS = (("caCert", "caCert"), ("accessCertificate", "clientCert"), ("accessKey", "clientKey"))


def _parse_tls(attributes: _Parsed, ctx: _Context) -> TlsSettings | None:
    raw = attributes.values["tls"]
    tls_path = attributes.paths["tls"]
    legacy = {tls_key: attributes.values[nuclio] for nuclio, tls_key in _NUCLIO_TLS_KEYS}
    if any(value is not None for value in legacy.values()):
        # As in Nuclio, a CA certificate at the attributes level turns TLS on by itself.
        merged: dict[object, object] = {"enable": legacy["caCert"] is not None} if raw is None else dict(raw)
        for nuclio, tls_key in _NUCLIO_TLS_KEYS:
            if legacy[tls_key] is None:
                continue
            if merged.get(tls_key) is not None:
                raise ctx.error(attributes.paths[nuclio], f"given twice: also {tls_path}.{tls_key}")
            merged[tls_key] = legacy[tls_key]
            ctx.written_at[f"{tls_path}.{tls_key}"] = attributes.paths[nuclio]
        raw = merged
    if raw is None:
        return None
    parsed = _parse_switched_section(TLS, raw, tls_path, ctx)
    if parsed is None:
        return None
    parsed.check()
    if not parsed.values["enable"]:
        return None

    def material(key: str) -> str | None:
        value: str | None = parsed.values[key]
        if value is None or is_pem(value):
            return value
        return _existing_file(value, parsed.paths[key], ctx)

    if "clientKey" in parsed.given:
        ctx.secret_refs |= referenced_names(raw.get(_written_key(parsed, "clientKey")))
    cert, key = material("clientCert"), material("clientKey")
    if (cert is None) != (key is None):
        missing = "clientKey" if key is None else "clientCert"
        present = "clientCert" if key is None else "clientKey"
        raise ctx.error(parsed.paths[missing], f"required with {present} (mutual TLS needs both)")
    return TlsSettings(
        ca_cert=material("caCert"),
        client_cert=cert,
        client_key=None if key is None or is_pem(key) else key,
        client_key_pem=Secret(key, source="PEM text") if key is not None and is_pem(key) else None,
        insecure_skip_verify=parsed.values["insecureSkipVerify"],
    )


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Load and validate a function.yaml.

    ``environ`` supplies ``${VAR}`` references (default: ``os.environ``). Raises ``ConfigError``
    (with every problem found in ``errors``).
    """
    file = os.fspath(path)
    ctx = _Context(file, os.environ if environ is None else environ)
    document = _read_yaml(file)
    if not isinstance(document, Mapping):
        empty = " (the file is empty)" if document is None else ""
        raise ctx.error(None, f"top level must be a mapping with metadata and spec, {got(document)}{empty}")

    root = _parse_section(ROOT, document, "", ctx)
    raw_metadata = root.values["metadata"] or {}
    metadata = _parse_section(
        METADATA, raw_metadata if isinstance(raw_metadata, Mapping) else {}, root.paths["metadata"], ctx
    )
    name = metadata.values["name"]
    if isinstance(name, str) and name and not FUNCTION_NAME.fullmatch(name):
        ctx.report(metadata.paths["name"], f"invalid name {name!r}: {FUNCTION_NAME_RULE}")
    raw_spec = root.values["spec"]
    if not isinstance(raw_spec, Mapping):  # missing or not a mapping: already reported
        raise ConfigError.combine(ctx.errors)
    spec = _parse_section(SPEC, raw_spec, root.paths["spec"], ctx)

    runtime = spec.values["runtime"]
    if runtime is not None:
        mismatch = runtime_mismatch(runtime)
        if mismatch is not None:
            ctx.warn(spec.paths["runtime"], mismatch)

    annotations: dict[str, str] = metadata.values["annotations"] or {}
    known_annotations = {annotation for annotation, _ in KAFKA_ANNOTATIONS}
    for annotation in annotations:
        nuclio_kafka = "kafka" in annotation and annotation.startswith(("nuclio.io/", "custom.nuclio.io/"))
        if nuclio_kafka and annotation not in known_annotations:
            ctx.warn(f"{metadata.paths['annotations']}.{annotation}", "unknown Kafka annotation, ignored")

    raw_triggers = spec.values["triggers"]
    triggers: list[TriggerConfig] = []
    if not raw_triggers:
        if "triggers" in spec.given:  # an empty mapping; a missing or bad one is reported already
            ctx.report(spec.paths["triggers"], TRIGGERS_REQUIRED)
    else:
        disabled = 0
        for trigger_name, raw in raw_triggers.items():
            try:
                if not isinstance(trigger_name, str) or not trigger_name.strip():
                    raise ctx.error(
                        "spec.triggers", f"trigger names must be non-empty strings, {got(trigger_name)}"
                    )
                if not isinstance(raw, Mapping):
                    raise ctx.error(f"spec.triggers.{trigger_name}", f"must be a mapping, {got(raw)}")
                if _trigger_disabled(trigger_name, raw, ctx):
                    ctx.warn(f"spec.triggers.{trigger_name}", "disabled: not run")
                    disabled += 1
                    continue
                triggers.append(_parse_trigger(trigger_name, raw, annotations, ctx))
            except ConfigError as error:
                ctx.errors.extend(error.errors)
            except _SectionInvalid:
                pass
        if disabled == len(raw_triggers):
            ctx.report(spec.paths["triggers"], f"every trigger is disabled; {TRIGGERS_REQUIRED}")
    if ctx.errors:
        raise ConfigError.combine(ctx.errors)

    absolute = Path(os.path.abspath(file))
    config = FunctionConfig(
        path=absolute,
        name=metadata.values["name"] or absolute.parent.name or "function",
        **_model_kwargs(SPEC, spec),
        triggers=tuple(triggers),
        secret_env=frozenset(ctx.secret_refs),
    )
    return LoadedConfig(config=config, warnings=tuple(ctx.warnings))
