"""Read a function.yaml into a ``FunctionConfig``.

Every mistake becomes a ``ConfigError`` whose text is one line naming the file and the dotted field,
because that line is what an operator sees in a crash-looping container's log.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
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
    OnError,
    SaslSettings,
    Secret,
    TlsSettings,
    TriggerConfig,
    is_pem,
)
from .schema import (
    ATTRIBUTES,
    METADATA,
    ROOT,
    SASL,
    SPEC,
    TLS,
    TRIGGER,
    TRIGGERS_REQUIRED,
    FieldError,
    SectionSpec,
    got,
    parse_trigger_kind,
    runtime_mismatch,
)


class ConfigError(Exception):
    """A function.yaml problem. ``str()`` is one line: ``file: field: problem`` (or ``file: problem``)."""

    def __init__(self, file: str, field: str | None, problem: str) -> None:
        # Passing all three to Exception keeps the error picklable across processes.
        super().__init__(file, field, problem)
        self.file = file
        self.field = field
        self.problem = problem

    def __str__(self) -> str:
        location = f"{self.file}: {self.field}" if self.field else self.file
        return f"{location}: {_one_line(self.problem)}"


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
    # Environment variables that secret fields refer to (see FunctionConfig.secret_env).
    secret_refs: set[str] = field(default_factory=set)

    def error(self, field_path: str | None, problem: str) -> ConfigError:
        return ConfigError(self.file, field_path, problem)

    def warn(self, field_path: str, message: str) -> None:
        self.warnings.append(f"{self.file}: {field_path}: {message}")

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


def _parse_section(section: SectionSpec, raw: Mapping[object, object], path: str, ctx: _Context) -> _Parsed:
    present: dict[str, tuple[str, object]] = {}
    for raw_key, value in raw.items():
        if not isinstance(raw_key, str):
            raise ctx.error(path or None, f"keys must be strings, {got(raw_key)}")
        key = section.alias_of(raw_key) or raw_key
        if key in present:
            raise ctx.error(_join(path, raw_key), f"given twice ('{raw_key}' is an alias of '{key}')")
        if section.field(key) is not None:
            present[key] = (raw_key, value)
        elif key in section.ignored:
            ctx.warn(_join(path, raw_key), "ignored by streamworker")
        else:
            raise ctx.error(_join(path, raw_key), section.unknown_key_problem(raw_key))

    values: dict[str, Any] = {}
    paths: dict[str, str] = {}
    given: set[str] = set()
    for spec in section.fields:
        written_key, value = present.get(spec.key, (spec.key, None))
        field_path = paths[spec.key] = _join(path, written_key)
        # An empty value (`env:`) means "not given", as YAML authors expect.
        if value is None:
            if spec.required:
                raise ctx.error(field_path, spec.missing)
            default = spec.default
            values[spec.key] = dict(default) if isinstance(default, MappingProxyType) else default
            continue
        given.add(spec.key)
        if spec.section is None:  # nested sections expand their own leaves, skipping ignored keys
            value = ctx.expand(value, field_path)
        try:
            values[spec.key] = spec.parse(value)
        except FieldError as error:
            raise ctx.error(field_path + error.subpath, error.problem) from error
        except ValueError as error:
            raise ctx.error(field_path, str(error)) from error
    return _Parsed(values, paths, frozenset(given))


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


def _parse_trigger(name: object, raw: object, ctx: _Context) -> TriggerConfig:
    if not isinstance(name, str) or not name.strip():
        raise ctx.error("spec.triggers", f"trigger names must be non-empty strings, {got(name)}")
    path = f"spec.triggers.{name}"
    if not isinstance(raw, Mapping):
        raise ctx.error(path, f"must be a mapping, {got(raw)}")
    # Check the kind first: for an http trigger, "unsupported kind" is the real news, not its
    # http-only keys being unknown.
    if raw.get("kind") is not None:
        try:
            parse_trigger_kind(ctx.expand(raw["kind"], f"{path}.kind"))
        except ValueError as error:
            raise ctx.error(f"{path}.kind", str(error)) from error

    trigger = _parse_section(TRIGGER, raw, path, ctx)
    written_name = trigger.values["name"]
    if written_name is not None and written_name != name:
        ctx.warn(
            trigger.paths["name"], f"'{written_name}' differs from the key; the trigger is called '{name}'"
        )

    attributes = _parse_section(ATTRIBUTES, trigger.values["attributes"], trigger.paths["attributes"], ctx)
    # librdkafka accepts a heartbeat interval at or above the session timeout, and the member then
    # keeps timing out of its group; catch it here.
    _check_order(attributes, ctx, "heartbeatInterval", "sessionTimeout", strict=True)
    _check_order(attributes, ctx, "retryBackoff", "retryMaxBackoff", strict=False)
    if attributes.values["onError"] is OnError.DEADLETTER and not attributes.values["deadLetterTopic"]:
        raise ctx.error(attributes.paths["onError"], "deadletter needs attributes.deadLetterTopic")

    sasl = _parse_sasl(attributes, ctx)
    tls = _parse_tls(attributes, ctx)
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


def _parse_sasl(attributes: _Parsed, ctx: _Context) -> SaslSettings | None:
    raw = attributes.values["sasl"]
    if raw is None:
        return None
    path = attributes.paths["sasl"]
    parsed = _parse_section(SASL, raw, path, ctx)
    if not parsed.values["enable"]:
        return None
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
    return SaslSettings(mechanism=parsed.values["mechanism"], user=parsed.values["user"], password=secret)


def _written_key(parsed: _Parsed, key: str) -> str:
    """The key as written in the file (it may be an alias)."""
    return parsed.paths[key].rsplit(".", 1)[-1]


def _parse_tls(attributes: _Parsed, ctx: _Context) -> TlsSettings | None:
    raw = attributes.values["tls"]
    if raw is None:
        return None
    parsed = _parse_section(TLS, raw, attributes.paths["tls"], ctx)
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

    ``environ`` supplies ``${VAR}`` references (default: ``os.environ``). Raises ``ConfigError``.
    """
    file = os.fspath(path)
    ctx = _Context(file, os.environ if environ is None else environ)
    document = _read_yaml(file)
    if not isinstance(document, Mapping):
        empty = " (the file is empty)" if document is None else ""
        raise ctx.error(None, f"top level must be a mapping with metadata and spec, {got(document)}{empty}")

    root = _parse_section(ROOT, document, "", ctx)
    metadata = _parse_section(METADATA, root.values["metadata"] or {}, root.paths["metadata"], ctx)
    spec = _parse_section(SPEC, root.values["spec"], root.paths["spec"], ctx)

    runtime = spec.values["runtime"]
    if runtime is not None:
        mismatch = runtime_mismatch(runtime)
        if mismatch is not None:
            ctx.warn(spec.paths["runtime"], mismatch)

    raw_triggers = spec.values["triggers"]
    if not raw_triggers:
        raise ctx.error(spec.paths["triggers"], TRIGGERS_REQUIRED)
    triggers = tuple(_parse_trigger(name, raw, ctx) for name, raw in raw_triggers.items())

    absolute = Path(os.path.abspath(file))
    config = FunctionConfig(
        path=absolute,
        name=metadata.values["name"] or absolute.parent.name or "function",
        **_model_kwargs(SPEC, spec),
        triggers=triggers,
        secret_env=frozenset(ctx.secret_refs),
    )
    return LoadedConfig(config=config, warnings=tuple(ctx.warnings))
