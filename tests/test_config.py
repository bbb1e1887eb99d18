"""Loading function.yaml: the model, defaults, ${VAR} references, warnings and every error message."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamworker.config import (
    AllocationMode,
    BalanceStrategy,
    ConfigError,
    FunctionConfig,
    HandlerRef,
    InitialOffset,
    KafkaAttributes,
    LoadedConfig,
    TriggerConfig,
    consumer_settings,
    iter_field_specs,
    iter_sections,
    load_config,
    parse_duration,
)
from streamworker.config.durations import parse_byte_size
from streamworker.config.loader import expand_references
from streamworker.config.model import ExplicitAckMode
from streamworker.config.schema import ATTRIBUTES, SPEC, TRIGGER

RUNNING = f"python:{sys.version_info.major}.{sys.version_info.minor}"

FULL_EXAMPLE = """\
metadata: {name: orders}
spec:
  handler: main:handler
  runtime: RUNTIME
  eventTimeout: 30s
  env: [{name: GREETING, value: hi}]
  triggers:
    orders:
      kind: kafka-cluster
      numWorkers: 3
      workerTerminationTimeout: 10s
      attributes:
        brokers: ["127.0.0.1:9092"]
        topics: [orders]
        consumerGroup: orders-processor
        initialOffset: earliest
        workerAllocationMode: pool
        sessionTimeout: 10s
        heartbeatInterval: 3s
        maxWaitHandlerDuringRebalance: 5s
        balanceStrategy: cooperative-sticky
""".replace("RUNTIME", RUNNING)


@pytest.fixture
def fn_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A function folder named "orders", made the working directory so paths stay as short as users'."""
    folder = tmp_path / "orders"
    folder.mkdir()
    monkeypatch.chdir(folder)
    yield folder


def minimal() -> dict[str, Any]:
    return {
        "spec": {
            "handler": "main:handler",
            "triggers": {
                "orders": {
                    "kind": "kafka-cluster",
                    "attributes": {
                        "brokers": ["127.0.0.1:9092"],
                        "topics": ["orders"],
                        "consumerGroup": "orders-processor",
                    },
                }
            },
        }
    }


def trigger_of(doc: dict[str, Any], name: str = "orders") -> dict[str, Any]:
    trigger: dict[str, Any] = doc["spec"]["triggers"][name]
    return trigger


def attributes_of(doc: dict[str, Any], name: str = "orders") -> dict[str, Any]:
    attributes: dict[str, Any] = trigger_of(doc, name)["attributes"]
    return attributes


def write(folder: Path, doc: object, name: str = "function.yaml") -> Path:
    path = folder / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def load(folder: Path, doc: object, environ: dict[str, str] | None = None) -> LoadedConfig:
    write(folder, doc)
    return load_config("function.yaml", environ={} if environ is None else environ)


def error_of(folder: Path, doc: object, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(folder, doc, environ)
    return str(info.value)


# --- loading valid files --------------------------------------------------------------------------


def test_full_example_loads(fn_dir: Path) -> None:
    loaded = load(fn_dir, FULL_EXAMPLE)
    config = loaded.config
    assert loaded.warnings == ()
    assert config.path == fn_dir / "function.yaml"
    assert config.path.is_absolute()
    assert config.code_dir == fn_dir
    assert config.name == "orders"
    assert config.handler == HandlerRef("main", "handler")
    assert config.runtime == RUNNING
    assert config.event_timeout == 30.0
    assert config.env == {"GREETING": "hi"}
    assert config.triggers == (
        TriggerConfig(
            name="orders",
            kind="kafka-cluster",
            num_workers=3,
            worker_termination_timeout=10.0,
            attributes=KafkaAttributes(
                brokers=("127.0.0.1:9092",),
                topics=("orders",),
                consumer_group="orders-processor",
            ),
        ),
    )


def test_minimal_file_gets_defaults(fn_dir: Path) -> None:
    config = load(fn_dir, minimal()).config
    assert config.name == "orders"  # the folder's name
    assert config.runtime is None
    assert config.event_timeout is None
    assert config.env == {}
    (trigger,) = config.triggers
    assert trigger.num_workers == 1
    assert trigger.worker_termination_timeout == 10.0
    attributes = trigger.attributes
    assert attributes == KafkaAttributes(("127.0.0.1:9092",), ("orders",), "orders-processor")
    assert attributes.initial_offset is InitialOffset.EARLIEST
    assert attributes.worker_allocation_mode is AllocationMode.POOL
    assert attributes.balance_strategy is BalanceStrategy.COOPERATIVE_STICKY
    assert (attributes.session_timeout, attributes.heartbeat_interval) == (10.0, 3.0)
    assert attributes.max_poll_interval == 300.0
    assert attributes.max_wait_handler_during_rebalance == 5.0
    assert (attributes.max_retries, attributes.retry_backoff, attributes.retry_max_backoff) == (3, 0.5, 30.0)
    assert attributes.max_buffered_records == 30000
    assert attributes.max_buffered_bytes == 64 * 1024 * 1024
    assert attributes.librdkafka == {}


def test_every_attribute_can_be_set(fn_dir: Path) -> None:
    doc = minimal()
    attributes_of(doc).update(
        {
            "initialOffset": "LATEST",
            "workerAllocationMode": "static",
            "sessionTimeout": "6s",
            "heartbeatInterval": "2s",
            "maxPollInterval": "2m",
            "maxWaitHandlerDuringRebalance": "750ms",
            "balanceStrategy": "roundrobin",
            "maxRetries": 0,
            "retryBackoff": "100ms",
            "retryMaxBackoff": "1s",
            "maxBufferedRecords": 50,
            "maxBufferedBytes": "512KiB",
            "librdkafka": {"fetch.wait.max.ms": 50, "check.crcs": True, "client.rack": "eu-1a"},
        }
    )
    attributes = load(fn_dir, doc).config.triggers[0].attributes
    assert attributes == KafkaAttributes(
        brokers=("127.0.0.1:9092",),
        topics=("orders",),
        consumer_group="orders-processor",
        initial_offset=InitialOffset.LATEST,
        worker_allocation_mode=AllocationMode.STATIC,
        session_timeout=6.0,
        heartbeat_interval=2.0,
        max_poll_interval=120.0,
        max_wait_handler_during_rebalance=0.75,
        balance_strategy=BalanceStrategy.ROUNDROBIN,
        max_retries=0,
        retry_backoff=0.1,
        retry_max_backoff=1.0,
        max_buffered_records=50,
        max_buffered_bytes=512 * 1024,
        librdkafka={"fetch.wait.max.ms": "50", "check.crcs": "true", "client.rack": "eu-1a"},
    )


def test_nuclio_aliases(fn_dir: Path) -> None:
    doc = minimal()
    doc = {"meta": {"name": "renamed"}, **doc}
    trigger_of(doc)["kind"] = "kafka"
    attributes_of(doc)["balanceStrategy"] = "sticky"
    config = load(fn_dir, doc).config
    assert config.name == "renamed"
    assert config.triggers[0].kind == "kafka-cluster"
    assert config.triggers[0].attributes.balance_strategy is BalanceStrategy.COOPERATIVE_STICKY


def test_meta_and_metadata_together_is_an_error(fn_dir: Path) -> None:
    doc = {"metadata": {"name": "a"}, "meta": {"name": "b"}, **minimal()}
    assert error_of(fn_dir, doc) == "function.yaml: meta: given twice ('meta' is an alias of 'metadata')"


def test_alias_path_is_shown_as_written(fn_dir: Path) -> None:
    doc = {"meta": {"name": ""}, **minimal()}
    assert error_of(fn_dir, doc) == "function.yaml: meta.name: must not be empty"


def test_triggers_in_file_order(fn_dir: Path) -> None:
    doc = minimal()
    triggers = doc["spec"]["triggers"]
    first = copy.deepcopy(triggers["orders"])
    doc["spec"]["triggers"] = {"zeta": first, "alpha": copy.deepcopy(first), "mid": copy.deepcopy(first)}
    doc["spec"]["triggers"]["alpha"]["attributes"]["topics"] = "payments"
    config = load(fn_dir, doc).config
    assert [trigger.name for trigger in config.triggers] == ["zeta", "alpha", "mid"]
    assert config.triggers[1].attributes.topics == ("payments",)


def test_brokers_and_topics_as_comma_separated_strings(fn_dir: Path) -> None:
    doc = minimal()
    attributes_of(doc).update({"brokers": "a:9092, b:9092,,", "topics": "orders,refunds , orders"})
    attributes = load(fn_dir, doc).config.triggers[0].attributes
    assert attributes.brokers == ("a:9092", "b:9092")
    assert attributes.topics == ("orders", "refunds")  # repeats dropped


def test_numeric_names_are_taken_as_strings(fn_dir: Path) -> None:
    doc = minimal()
    attributes_of(doc).update({"topics": [2024, "^audit-.*"], "consumerGroup": 7})
    attributes = load(fn_dir, doc).config.triggers[0].attributes
    assert attributes.topics == ("2024", "^audit-.*")
    assert attributes.consumer_group == "7"


def test_path_like_and_absolute_paths(fn_dir: Path) -> None:
    path = write(fn_dir, minimal(), "custom.yaml")
    config = load_config(path, environ={}).config
    assert config.path == path
    assert config.name == "orders"
    with pytest.raises(ConfigError) as info:
        load_config(fn_dir / "nope.yaml", environ={})
    assert str(info.value) == f"{fn_dir / 'nope.yaml'}: cannot read: No such file or directory"


def test_relative_path_in_subfolder(fn_dir: Path) -> None:
    (fn_dir / "inner").mkdir()
    write(fn_dir / "inner", minimal())
    config = load_config("inner/function.yaml", environ={}).config
    assert config.code_dir == fn_dir / "inner"
    assert config.name == "inner"


# --- env ------------------------------------------------------------------------------------------


def test_env_list_keeps_order_and_coerces_values(fn_dir: Path) -> None:
    doc = minimal()
    doc["spec"]["env"] = [
        {"name": "Z", "value": "last-letter"},
        {"name": "COUNT", "value": 3},
        {"name": "RATIO", "value": 0.5},
        {"name": "FLAG", "value": True},
        {"name": "OFF", "value": False},
        {"name": "EMPTY"},
        {"name": "NULL", "value": None},
    ]
    env = load(fn_dir, doc).config.env
    assert list(env.items()) == [
        ("Z", "last-letter"),
        ("COUNT", "3"),
        ("RATIO", "0.5"),
        ("FLAG", "true"),
        ("OFF", "false"),
        ("EMPTY", ""),
        ("NULL", ""),
    ]


def test_env_as_mapping(fn_dir: Path) -> None:
    doc = minimal()
    doc["spec"]["env"] = {"B": 1, "A": "x"}
    assert list(load(fn_dir, doc).config.env.items()) == [("B", "1"), ("A", "x")]


def test_empty_env_means_none(fn_dir: Path) -> None:
    text = yaml.safe_dump(minimal()) + "\n"
    text = text.replace("spec:\n", "spec:\n  env:\n", 1)
    assert load(fn_dir, text).config.env == {}


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ("GREETING=hi", "spec.env: must be a list of {name, value} or a mapping, got str 'GREETING=hi'"),
        (["GREETING"], "spec.env[0]: must be a mapping with name and value, got str 'GREETING'"),
        ([{"value": "hi"}], "spec.env[0].name: required"),
        ([{"name": "", "value": "hi"}], "spec.env[0].name: must be a non-empty string, got str ''"),
        (
            [{"name": "A=B", "value": "hi"}],
            "spec.env[0].name: 'A=B' is not a valid environment variable name",
        ),
        (
            [{"name": "A", "value": 1}, {"name": "A", "value": 2}],
            "spec.env[1].name: 'A' is set twice",
        ),
        (
            [{"name": "A", "value": [1]}],
            "spec.env[0].value: must be a string, number or boolean, got list [1]",
        ),
        ([{"name": "A", "valu": "x"}], "spec.env[0].valu: unknown key (did you mean 'value'?)"),
        (
            [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
            "spec.env[0].valueFrom: not supported: streamworker does not read Kubernetes secrets; "
            "use value with a ${VAR} reference instead",
        ),
        ({"A": {"nested": 1}}, "spec.env.A: must be a string, number or boolean, got mapping {'nested': 1}"),
    ],
)
def test_env_errors(fn_dir: Path, env: object, problem: str) -> None:
    doc = minimal()
    doc["spec"]["env"] = env
    assert error_of(fn_dir, doc) == f"function.yaml: {problem}"


# --- ${VAR} references ----------------------------------------------------------------------------


def test_references_expand_from_environ(fn_dir: Path) -> None:
    doc = minimal()
    doc["metadata"] = {"name": "${NAME}-fn"}
    doc["spec"]["env"] = [
        {"name": "PASSWORD", "value": "${SECRET}"},
        {"name": "PRICE", "value": "$$5 and $HOME"},
    ]
    trigger_of(doc)["numWorkers"] = "${WORKERS:-2}"
    attributes_of(doc).update(
        {
            "brokers": "${KAFKA_BROKERS:-127.0.0.1:9092}",
            "topics": ["${TOPIC}", "static"],
            "sessionTimeout": "${SESSION:-6s}",
            "librdkafka": {"sasl.password": "${SECRET}"},
        }
    )
    environ = {
        "NAME": "shop",
        "SECRET": "p$ss",
        "KAFKA_BROKERS": "k1:9092,k2:9092",
        "TOPIC": "orders",
        "WORKERS": "",
    }
    config = load(fn_dir, doc, environ).config
    assert config.name == "shop-fn"
    assert config.env == {"PASSWORD": "p$ss", "PRICE": "$5 and $HOME"}
    trigger = config.triggers[0]
    assert trigger.num_workers == 2  # set but empty: the default applies, as in the shell
    assert trigger.attributes.brokers == ("k1:9092", "k2:9092")
    assert trigger.attributes.topics == ("orders", "static")
    assert trigger.attributes.session_timeout == 6.0
    assert trigger.attributes.librdkafka == {"sasl.password": "p$ss"}


def test_references_default_to_os_environ(fn_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMWORKER_TEST_GROUP", "from-os-environ")
    doc = minimal()
    attributes_of(doc)["consumerGroup"] = "${STREAMWORKER_TEST_GROUP}"
    write(fn_dir, doc)
    assert load_config("function.yaml").config.triggers[0].attributes.consumer_group == "from-os-environ"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (
            "${KAFKA_BROKERS}",
            "environment variable KAFKA_BROKERS is not set (or give a default: ${KAFKA_BROKERS:-value})",
        ),
        ("${KAFKA", "unterminated '${': use ${NAME} or ${NAME:-default}, and $$ for a literal $"),
        ("${1BAD}", "malformed reference '${1BAD}': use ${NAME} or ${NAME:-default}, and $$ for a literal $"),
        ("${A-b}", "malformed reference '${A-b}': use ${NAME} or ${NAME:-default}, and $$ for a literal $"),
        ("${A:-${B}}", "malformed reference '${A:-${B}': a default cannot contain another reference"),
    ],
)
def test_reference_errors_name_the_field(fn_dir: Path, value: str, problem: str) -> None:
    doc = minimal()
    attributes_of(doc)["brokers"] = value
    assert error_of(fn_dir, doc) == f"function.yaml: spec.triggers.orders.attributes.brokers: {problem}"


def test_reference_error_in_list_names_the_element(fn_dir: Path) -> None:
    doc = minimal()
    attributes_of(doc)["topics"] = ["orders", "${MISSING}"]
    assert error_of(fn_dir, doc) == (
        "function.yaml: spec.triggers.orders.attributes.topics[1]: "
        "environment variable MISSING is not set (or give a default: ${MISSING:-value})"
    )


def test_ignored_keys_are_not_expanded(fn_dir: Path) -> None:
    doc = minimal()
    doc["spec"]["build"] = {"commands": ["pip install ${UNSET_IN_BUILD}"]}
    loaded = load(fn_dir, doc)
    assert loaded.warnings == ("function.yaml: spec.build: ignored by streamworker",)


@pytest.mark.parametrize(
    ("text", "expanded"),
    [
        ("plain", "plain"),
        ("$$", "$"),
        ("$$${A}", "$a"),
        ("$${A}", "${A}"),
        ("cost: $5", "cost: $5"),
        ("end$", "end$"),
        ("${A}${A}", "aa"),
        ("${UNSET:-}", ""),
        ("${UNSET:-a:b}", "a:b"),
        ("${EMPTY:-fallback}", "fallback"),
        ("${EMPTY}", ""),
        ("${A:-fallback}", "a"),
    ],
)
def test_expand_references(text: str, expanded: str) -> None:
    assert expand_references(text, {"A": "a", "EMPTY": ""}) == expanded


# --- warnings -------------------------------------------------------------------------------------


def _ignored_key_cases() -> list[tuple[str, str]]:
    return [(section.path, key) for section in iter_sections() for key in section.ignored]


@pytest.mark.parametrize(("section_path", "key"), _ignored_key_cases())
def test_ignored_nuclio_keys_warn(fn_dir: Path, section_path: str, key: str) -> None:
    doc = minimal()
    doc.setdefault("metadata", {})
    target: dict[str, Any] = doc
    for part in section_path.replace("<name>", "orders").split(".") if section_path else []:
        # Optional sections (sasl, tls) are created switched off, so only the ignored key matters.
        target = target.setdefault(part, {"enable": False})
    target[key] = {"anything": "${UNSET}"}
    loaded = load(fn_dir, doc)
    where = f"{section_path.replace('<name>', 'orders')}.{key}" if section_path else key
    # One warning naming the key (some add why it has no effect, or what to use instead).
    assert len(loaded.warnings) == 1
    assert loaded.warnings[0].startswith(f"function.yaml: {where}: ignored by streamworker")


def test_nuctl_export_shape_loads_with_warnings(fn_dir: Path) -> None:
    text = (
        'apiVersion: "nuclio.io/v1"\nkind: NuclioFunction\n'
        + yaml.safe_dump(minimal())
        + "status: {state: ready}\n"
    )
    loaded = load(fn_dir, text)
    assert loaded.warnings == (
        "function.yaml: apiVersion: ignored by streamworker",
        "function.yaml: kind: ignored by streamworker",
        "function.yaml: status: ignored by streamworker",
    )


def test_trigger_name_key(fn_dir: Path) -> None:
    doc = minimal()
    trigger_of(doc)["name"] = "orders"
    assert load(fn_dir, doc).warnings == ()
    trigger_of(doc)["name"] = "other"
    loaded = load(fn_dir, doc)
    assert loaded.config.triggers[0].name == "orders"
    assert loaded.warnings == (
        "function.yaml: spec.triggers.orders.name: 'other' differs from the key; "
        "the trigger is called 'orders'",
    )


def test_runtime_matching_interpreter_or_bare_python_does_not_warn(fn_dir: Path) -> None:
    for runtime in (RUNNING, "python"):
        doc = minimal()
        doc["spec"]["runtime"] = runtime
        loaded = load(fn_dir, doc)
        assert loaded.warnings == ()
        assert loaded.config.runtime == runtime


def test_runtime_mismatch_warns(fn_dir: Path) -> None:
    other = "python:3.9" if RUNNING != "python:3.9" else "python:3.10"
    doc = minimal()
    doc["spec"]["runtime"] = other
    running = RUNNING.removeprefix("python:")
    assert load(fn_dir, doc).warnings == (
        f"function.yaml: spec.runtime: asks for {other} but streamworker runs the handler on the running "
        f"Python {running}",
    )


@pytest.mark.parametrize("runtime", ["golang", "nodejs", "python3.11", "python:latest"])
def test_unsupported_runtime(fn_dir: Path, runtime: str) -> None:
    doc = minimal()
    doc["spec"]["runtime"] = runtime
    assert error_of(fn_dir, doc) == (
        f"function.yaml: spec.runtime: unsupported runtime '{runtime}': streamworker runs Python functions "
        "(python, python:3.9 to python:3.13)"
    )


# --- errors: the file itself ----------------------------------------------------------------------


def test_missing_file(fn_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("function.yaml", environ={})
    error = info.value
    assert str(error) == "function.yaml: cannot read: No such file or directory"
    assert (error.file, error.field, error.problem) == (
        "function.yaml",
        None,
        "cannot read: No such file or directory",
    )


def test_directory_is_unreadable(fn_dir: Path) -> None:
    (fn_dir / "function.yaml").mkdir()
    with pytest.raises(ConfigError) as info:
        load_config("function.yaml", environ={})
    assert str(info.value) == "function.yaml: cannot read: Is a directory"


def test_permission_denied(fn_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(fn_dir, minimal())

    def deny(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    # Tests may run as root, where chmod 000 does not stop reads; simulate the OS refusing instead.
    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(ConfigError) as info:
        load_config("function.yaml", environ={})
    assert str(info.value) == "function.yaml: cannot read: Permission denied"


def test_not_utf8(fn_dir: Path) -> None:
    (fn_dir / "function.yaml").write_bytes(b"spec:\n  handler: \xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        load_config("function.yaml", environ={})
    assert str(info.value) == "function.yaml: cannot read: not UTF-8 text (bad byte at offset 17)"


def test_utf8_bom_is_tolerated(fn_dir: Path) -> None:
    (fn_dir / "function.yaml").write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(minimal()).encode())
    assert load_config("function.yaml", environ={}).config.handler == HandlerRef("main", "handler")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "spec:\n  handler: main:handler\n    runtime: x\n",
            "line 3, column 12: mapping values are not allowed here",
        ),
        (
            "spec:\n  handler: main:handler\n  triggers: [\n",
            "line 4, column 1: expected the node content, but found '<stream end>' "
            "(while parsing a flow node)",
        ),
        ("a: *nowhere\n", "line 1, column 4: found undefined alias 'nowhere'"),
        ("spec:\n  handler: a:b\n  handler: c:d\n", "line 3, column 3: duplicate key 'handler'"),
        (
            "\tspec: {}\n",
            "line 1, column 1: found character '\\t' that cannot start any token "
            "(while scanning for the next token)",
        ),
    ],
)
def test_bad_yaml_reports_line_and_column(fn_dir: Path, text: str, problem: str) -> None:
    message = error_of(fn_dir, text)
    assert message == f"function.yaml: invalid YAML at {problem}"
    assert "\n" not in message


def test_merge_keys_may_be_overridden(fn_dir: Path) -> None:
    text = """\
defaults: &defaults
  kind: kafka-cluster
  numWorkers: 1
spec:
  handler: main:handler
  triggers:
    orders:
      <<: *defaults
      numWorkers: 4
      attributes: {brokers: "b:9092", topics: orders, consumerGroup: g}
"""
    # The anchor host `defaults` is itself an unknown key, which proves the merge was read first.
    assert (
        error_of(fn_dir, text)
        == "function.yaml: defaults: unknown key (expected one of: metadata, spec, apiVersion, kind, status)"
    )
    text = text.replace("defaults: &defaults\n  kind: kafka-cluster\n  numWorkers: 1\n", "")
    text = text.replace("<<: *defaults", "<<: {kind: kafka-cluster, numWorkers: 1}")
    assert load(fn_dir, text).config.triggers[0].num_workers == 4


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "top level must be a mapping with metadata and spec, got null (the file is empty)"),
        (
            "# only a comment\n",
            "top level must be a mapping with metadata and spec, got null (the file is empty)",
        ),
        ("- spec\n", "top level must be a mapping with metadata and spec, got list ['spec']"),
        ("just text\n", "top level must be a mapping with metadata and spec, got str 'just text'"),
    ],
)
def test_top_level_must_be_a_mapping(fn_dir: Path, text: str, problem: str) -> None:
    assert error_of(fn_dir, text) == f"function.yaml: {problem}"


# --- errors: required keys ------------------------------------------------------------------------


def _drop(path: str) -> dict[str, Any]:
    doc = minimal()
    *parents, last = path.split(".")
    target: dict[str, Any] = doc
    for part in parents:
        target = target[part]
    del target[last]
    return doc


@pytest.mark.parametrize(
    ("dropped", "problem"),
    [
        ("spec", "spec: required"),
        ("spec.handler", "spec.handler: required"),
        ("spec.triggers", "spec.triggers: at least one kafka-cluster trigger is required"),
        ("spec.triggers.orders.kind", "spec.triggers.orders.kind: required"),
        ("spec.triggers.orders.attributes", "spec.triggers.orders.attributes: required"),
        (
            "spec.triggers.orders.attributes.brokers",
            "spec.triggers.orders.attributes.brokers: required (or give the trigger's url, as Nuclio allows)",
        ),
        ("spec.triggers.orders.attributes.topics", "spec.triggers.orders.attributes.topics: required"),
        (
            "spec.triggers.orders.attributes.consumerGroup",
            "spec.triggers.orders.attributes.consumerGroup: required",
        ),
    ],
)
def test_missing_required_key(fn_dir: Path, dropped: str, problem: str) -> None:
    assert error_of(fn_dir, _drop(dropped)) == f"function.yaml: {problem}"


def test_null_counts_as_missing(fn_dir: Path) -> None:
    doc = minimal()
    attributes_of(doc)["consumerGroup"] = None
    with pytest.raises(ConfigError) as info:
        load(fn_dir, doc)
    error = info.value
    assert str(error) == "function.yaml: spec.triggers.orders.attributes.consumerGroup: required"
    assert error.field == "spec.triggers.orders.attributes.consumerGroup"
    assert error.problem == "required"


def test_empty_triggers(fn_dir: Path) -> None:
    doc = minimal()
    doc["spec"]["triggers"] = {}
    assert (
        error_of(fn_dir, doc)
        == "function.yaml: spec.triggers: at least one kafka-cluster trigger is required"
    )


# --- errors: unknown keys -------------------------------------------------------------------------


def test_unknown_key_suggests_the_closest(fn_dir: Path) -> None:
    doc = minimal()
    attributes_of(doc)["consumerGrop"] = attributes_of(doc).pop("consumerGroup")
    assert error_of(fn_dir, doc) == (
        "function.yaml: spec.triggers.orders.attributes.consumerGrop: "
        "unknown key (did you mean 'consumerGroup'?)"
    )


@pytest.mark.parametrize(
    ("where", "key", "guess"),
    [
        ("", "spce", "spec"),
        ("", "metdata", "metadata"),
        ("metadata", "nmae", "name"),
        ("spec", "handlr", "handler"),
        ("spec", "eventtimeout", "eventTimeout"),
        ("spec", "trigers", "triggers"),
        ("spec.triggers.orders", "numWorker", "numWorkers"),
        ("spec.triggers.orders", "atributes", "attributes"),
        ("spec.triggers.orders.attributes", "consumergroup", "consumerGroup"),
        ("spec.triggers.orders.attributes", "topic", "topics"),
        ("spec.triggers.orders.attributes", "sessiontimeout", "sessionTimeout"),
        ("spec.triggers.orders.attributes", "rebalanceTimout", "rebalanceTimeout"),
    ],
)
def test_unknown_key_at_every_level(fn_dir: Path, where: str, key: str, guess: str) -> None:
    doc = minimal()
    doc["metadata"] = {"name": "orders"}
    target: dict[str, Any] = doc
    for part in where.split(".") if where else []:
        target = target[part]
    target[key] = "x"
    field = f"{where}.{key}" if where else key
    assert error_of(fn_dir, doc) == f"function.yaml: {field}: unknown key (did you mean '{guess}'?)"


def test_unknown_key_without_a_close_match_lists_the_keys(fn_dir: Path) -> None:
    doc = minimal()
    trigger_of(doc)["zzz"] = 1
    assert error_of(fn_dir, doc) == (
        "function.yaml: spec.triggers.orders.zzz: unknown key (expected one of: kind, name, disabled, "
        "numWorkers, maxWorkers, url, explicitAckMode, workerTerminationTimeout, attributes, class, "
        "annotations, workerAvailabilityTimeoutMilliseconds, workerAllocatorName, batch, "
        "waitExplicitAckDuringRebalanceTimeout, paths, username, password, secret, partitions, "
        "total_tasks, max_task_allocation)"
    )


@pytest.mark.parametrize(
    ("key", "section_key"),
    [("caCert", "caCert"), ("accessCertificate", "clientCert"), ("accessKey", "clientKey")],
)
def test_nuclio_tls_keys_are_the_tls_sections(fn_dir: Path, key: str, section_key: str) -> None:
    # Nuclio's attribute-level certificates are honoured as the tls section's keys...
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
    doc = minimal()
    attributes_of(doc).update({"tls": {}, key: pem})
    if section_key != "caCert":  # mutual TLS needs both halves
        other = "accessKey" if key == "accessCertificate" else "accessCertificate"
        attributes_of(doc)[other] = pem
    tls = load(fn_dir, doc).config.triggers[0].attributes.tls
    assert tls is not None
    assert {"caCert": tls.ca_cert, "clientCert": tls.client_cert}.get(section_key, pem) == pem
    # ... so giving one in both places is an error naming the attribute-level key.
    doc = minimal()
    attributes_of(doc).update({"tls": {section_key: pem}, key: pem})
    assert error_of(fn_dir, doc) == (
        f"function.yaml: spec.triggers.orders.attributes.{key}: "
        f"given twice: also spec.triggers.orders.attributes.tls.{section_key}"
    )


def test_non_string_keys(fn_dir: Path) -> None:
    doc = minimal()
    doc["spec"][3] = "x"
    assert error_of(fn_dir, doc) == "function.yaml: spec: keys must be strings, got int 3"
    doc = minimal()
    doc["spec"]["triggers"][5] = trigger_of(doc)
    assert (
        error_of(fn_dir, doc)
        == "function.yaml: spec.triggers: trigger names must be non-empty strings, got int 5"
    )


# --- errors: values -------------------------------------------------------------------------------


def _set(path: str, value: object) -> dict[str, Any]:
    doc = minimal()
    *parents, last = path.split(".")
    target: dict[str, Any] = doc
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value
    return doc


T = "spec.triggers.orders"
A = "spec.triggers.orders.attributes"


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        # types
        ("spec", ["handler"], "must be a mapping, got list ['handler']"),
        ("metadata", "orders", "must be a mapping, got str 'orders'"),
        ("spec.triggers", ["orders"], "must be a mapping, got list ['orders']"),
        (T, "kafka", "must be a mapping, got str 'kafka'"),
        (f"{T}.attributes", "brokers=x", "must be a mapping, got str 'brokers=x'"),
        (f"{T}.numWorkers", "three", "must be an integer, got str 'three'"),
        (f"{T}.numWorkers", True, "must be an integer, got bool True"),
        (f"{T}.numWorkers", 2.5, "must be an integer, got float 2.5"),
        (f"{A}.consumerGroup", ["g"], "must be a string, got list ['g']"),
        (f"{A}.consumerGroup", "  ", "must not be empty"),
        ("metadata.name", True, "must be a string, got bool True"),
        # numbers out of range
        (f"{T}.numWorkers", 0, "must be at least 1, got 0"),
        (f"{T}.numWorkers", -2, "must be at least 1, got -2"),
        (f"{A}.maxRetries", -1, "must be 0 or more, got -1"),
        (f"{A}.maxBufferedRecords", 0, "must be at least 1, got 0"),
        (f"{A}.maxBufferedBytes", 0, "must be at least 1 byte, got 0"),
        (
            f"{A}.maxBufferedBytes",
            "lots",
            'invalid size \'lots\': use a number of bytes or a size like "512KiB", "64MiB", "10MB"',
        ),
        # durations
        (
            f"{A}.sessionTimeout",
            "10x",
            'invalid duration \'10x\': use Go-style like "250ms", "10s", "1m30s" or a number of seconds',
        ),
        (f"{T}.workerTerminationTimeout", "-1s", "invalid duration '-1s': must not be negative"),
        ("spec.eventTimeout", "0s", "must be more than zero, got '0s'"),
        (f"{A}.heartbeatInterval", 0, "must be more than zero, got 0"),
        (
            f"{A}.retryBackoff",
            True,
            'invalid duration true (a boolean): use Go-style like "250ms", "10s", "1m30s" or a number '
            "of seconds",
        ),
        # enums
        (f"{A}.initialOffset", "first", "must be one of 'earliest', 'latest'; got 'first'"),
        (f"{A}.workerAllocationMode", "shared", "must be one of 'pool', 'static', 'key'; got 'shared'"),
        (
            f"{A}.balanceStrategy",
            "random",
            "must be one of 'range', 'roundrobin', 'cooperative-sticky'; got 'random'",
        ),
        (f"{A}.initialOffset", 0, "must be one of 'earliest', 'latest'; got int 0"),
        # trigger kind
        (
            f"{T}.kind",
            "http",
            "unsupported trigger kind 'http': streamworker runs kafka-cluster triggers only",
        ),
        (f"{T}.kind", 1, 'must be a string like "kafka-cluster", got int 1'),
        # brokers and topics
        (f"{A}.topics", [], "must list at least one topic"),
        (f"{A}.topics", "", "must list at least one topic"),
        (f"{A}.topics", " , ", "must list at least one topic"),
        (f"{A}.brokers", [], "must list at least one broker"),
        (f"{A}.brokers", 9092, "must be a list of brokers or a comma-separated string, got int 9092"),
        (
            f"{A}.topics",
            "orders,bad topic",
            "'bad topic' contains whitespace",
        ),
        (
            f"{A}.topics",
            "orders/eu",
            "'orders/eu' is not a valid topic name (letters, digits, '.', '_', '-'; up to 249 characters); "
            "start it with '^' for a regex subscription",
        ),
        # librdkafka
        (f"{A}.librdkafka", ["a=b"], "must be a mapping, got list ['a=b']"),
    ],
)
def test_bad_values(fn_dir: Path, path: str, value: object, problem: str) -> None:
    assert error_of(fn_dir, _set(path, value)) == f"function.yaml: {path}: {problem}"


@pytest.mark.parametrize(
    ("value", "field", "problem"),
    [
        (["orders", None], f"{A}.topics[1]", "must be a non-empty string, got null"),
        (["orders", ""], f"{A}.topics[1]", "must be a non-empty string, got str ''"),
        (["orders", "a b"], f"{A}.topics[1]", "'a b' contains whitespace"),
        (
            ["orders", {"name": "x"}],
            f"{A}.topics[1]",
            "must be a non-empty string, got mapping {'name': 'x'}",
        ),
    ],
)
def test_bad_list_elements_are_pointed_at(fn_dir: Path, value: object, field: str, problem: str) -> None:
    assert error_of(fn_dir, _set(f"{A}.topics", value)) == f"function.yaml: {field}: {problem}"


@pytest.mark.parametrize(
    "handler",
    [
        "main",
        "main:",
        ":handler",
        "main:1handler",
        "class:handler",
        "main:handler:extra",
        "a..b:c",
        "a b:c",
    ],
)
def test_malformed_handler(fn_dir: Path, handler: str) -> None:
    assert error_of(fn_dir, _set("spec.handler", handler)) == (
        'function.yaml: spec.handler: must be "module:function" with a dotted module path and a Python '
        f'identifier (like "main:handler"), got {handler!r}'
    )


@pytest.mark.parametrize("handler", ["drain-hook:handler", "jobs.my-fn:handler", "1main:handler"])
def test_handler_module_names_as_nuclio_accepts_them(fn_dir: Path, handler: str) -> None:
    # Nuclio's wrapper matches ^([\w|-]+(\.[\w|-]+)*):(\w+)$ and imports with __import__.
    assert str(load(fn_dir, _set("spec.handler", handler)).config.handler) == handler


def test_handler_function_must_be_a_plain_name(fn_dir: Path) -> None:
    assert error_of(fn_dir, _set("spec.handler", "main:Handler.handle")) == (
        'function.yaml: spec.handler: the function part must be a plain name (like "main:handler"), '
        "got 'main:Handler.handle'"
    )


def test_handler_must_be_a_string(fn_dir: Path) -> None:
    assert error_of(fn_dir, _set("spec.handler", 5)) == (
        'function.yaml: spec.handler: must be a string like "main:handler", got int 5'
    )


def test_dotted_handler(fn_dir: Path) -> None:
    config = load(fn_dir, _set("spec.handler", "pkg.sub.mod:handle_event")).config
    assert config.handler == HandlerRef("pkg.sub.mod", "handle_event")
    assert str(config.handler) == "pkg.sub.mod:handle_event"


def test_non_kafka_trigger_reports_kind_before_its_other_keys(fn_dir: Path) -> None:
    doc = minimal()
    doc["spec"]["triggers"]["http"] = {
        "kind": "http",
        "maxWorkers": 4,
        "attributes": {"port": 8080},
        "url": "x",
    }
    assert error_of(fn_dir, doc) == (
        "function.yaml: spec.triggers.http.kind: unsupported trigger kind 'http': "
        "streamworker runs kafka-cluster triggers only"
    )


def test_trigger_kind_from_an_environment_reference(fn_dir: Path) -> None:
    doc = _set(f"{T}.kind", "${KIND:-kafka}")
    assert load(fn_dir, doc).config.triggers[0].kind == "kafka-cluster"
    assert error_of(fn_dir, doc, {"KIND": "cron"}) == (
        "function.yaml: spec.triggers.orders.kind: unsupported trigger kind 'cron': "
        "streamworker runs kafka-cluster triggers only"
    )


@pytest.mark.parametrize(
    ("attributes", "problem"),
    [
        (
            {"heartbeatInterval": "15s"},
            "heartbeatInterval: must be below sessionTimeout (10s), got 15s",
        ),
        (
            {"sessionTimeout": "2s"},
            "sessionTimeout: must be above heartbeatInterval (3s), got 2s",
        ),
        (
            {"sessionTimeout": "2s", "heartbeatInterval": "2s"},
            "heartbeatInterval: must be below sessionTimeout (2s), got 2s",
        ),
        (
            {"retryBackoff": "1m"},
            "retryBackoff: must be at most retryMaxBackoff (30s), got 1m",
        ),
        (
            {"retryMaxBackoff": "100ms"},
            "retryMaxBackoff: must be at least retryBackoff (500ms), got 100ms",
        ),
    ],
)
def test_related_attributes_must_agree(fn_dir: Path, attributes: dict[str, str], problem: str) -> None:
    doc = minimal()
    attributes_of(doc).update(attributes)
    assert error_of(fn_dir, doc) == f"function.yaml: {A}.{problem}"


def test_equal_retry_backoffs_are_fine(fn_dir: Path) -> None:
    doc = minimal()
    attributes_of(doc).update({"retryBackoff": "1s", "retryMaxBackoff": "1s"})
    attributes = load(fn_dir, doc).config.triggers[0].attributes
    assert attributes.retry_backoff == attributes.retry_max_backoff == 1.0


@pytest.mark.parametrize(
    ("setting", "advice"),
    [
        ("enable.auto.commit", "streamworker commits offsets itself, only after a record's handler finished"),
        (
            "enable.auto.offset.store",
            "streamworker stores offsets itself, only after a record's handler finished",
        ),
        ("group.id", "use attributes.consumerGroup"),
        ("bootstrap.servers", "use attributes.brokers"),
        ("session.timeout.ms", "use attributes.sessionTimeout"),
        ("partition.assignment.strategy", "use attributes.balanceStrategy"),
    ],
)
def test_librdkafka_cannot_override_managed_settings(fn_dir: Path, setting: str, advice: str) -> None:
    doc = _set(f"{A}.librdkafka", {setting: "x"})
    assert error_of(fn_dir, doc) == f"function.yaml: {A}.librdkafka.{setting}: cannot be set here: {advice}"


def test_librdkafka_values_must_be_scalars(fn_dir: Path) -> None:
    doc = _set(f"{A}.librdkafka", {"sasl.mechanism": ["PLAIN"]})
    assert error_of(fn_dir, doc) == (
        f"function.yaml: {A}.librdkafka.sasl.mechanism: "
        "must be a string, number or boolean, got list ['PLAIN']"
    )


# --- ConfigError ----------------------------------------------------------------------------------


def test_config_error_is_one_line_and_picklable() -> None:
    error = ConfigError("conf/function.yaml", "spec.handler", "bad\n  thing")
    assert str(error) == "conf/function.yaml: spec.handler: bad thing"
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.file, clone.field, clone.problem) == ("conf/function.yaml", "spec.handler", "bad\n  thing")
    assert str(clone) == str(error)
    assert str(ConfigError("f.yaml", None, "cannot read: x")) == "f.yaml: cannot read: x"


# --- model ----------------------------------------------------------------------------------------


def test_model_is_frozen_hashable_and_portable(fn_dir: Path) -> None:
    doc = minimal()
    doc["spec"]["env"] = {"A": "1"}
    attributes_of(doc)["librdkafka"] = {"client.rack": "r1"}
    config = load(fn_dir, doc).config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "x"  # type: ignore[misc]
    assert hash(config) == hash(load(fn_dir, doc).config)
    assert pickle.loads(pickle.dumps(config)) == config
    assert copy.deepcopy(config) == config
    as_dict = dataclasses.asdict(config)
    assert as_dict["env"] == {"A": "1"}
    assert as_dict["triggers"][0]["attributes"]["librdkafka"] == {"client.rack": "r1"}


def test_enums_are_strings() -> None:
    assert isinstance(InitialOffset.LATEST, str)
    assert InitialOffset.LATEST.value == "latest"
    assert f"{BalanceStrategy.COOPERATIVE_STICKY}" == "cooperative-sticky"
    assert AllocationMode("static") is AllocationMode.STATIC


def test_function_config_code_dir() -> None:
    trigger = TriggerConfig("t", "kafka-cluster", 1, 10.0, KafkaAttributes(("b:1",), ("t",), "g"))
    config = FunctionConfig(
        Path("/srv/fn/function.yaml"), "fn", HandlerRef("m", "f"), None, None, {}, (trigger,)
    )
    assert config.code_dir == Path("/srv/fn")


# --- schema tables --------------------------------------------------------------------------------


def test_every_field_is_documented() -> None:
    specs = list(iter_field_specs())
    for section_path, spec in specs:
        where = f"{section_path}.{spec.key}"
        assert spec.help.strip() and spec.help.endswith((".", ")")), where
        assert "\n" not in spec.help, where
        if spec.required:
            assert spec.default_doc == "required", where
        else:
            assert spec.default_doc and spec.default_doc != "required", where


def test_schema_paths_and_keys() -> None:
    paths = {path for path, _ in iter_field_specs()}
    assert paths == {
        "",
        "metadata",
        "spec",
        "spec.triggers.<name>",
        "spec.triggers.<name>.attributes",
        "spec.triggers.<name>.attributes.sasl",
        "spec.triggers.<name>.attributes.sasl.oauth",
        "spec.triggers.<name>.attributes.tls",
    }
    for section in iter_sections():
        keys = [spec.key for spec in section.fields]
        assert len(keys) == len(set(keys)), section.path
        assert not set(keys) & set(section.ignored), section.path


def test_attribute_table_covers_the_model() -> None:
    model_fields = {model_field.name for model_field in dataclasses.fields(KafkaAttributes)}
    # Nuclio-only attributes (fetch sizes, attribute-level certificates) have no model field: the
    # loader folds them into librdkafka and tls.
    assert {spec.attr for spec in ATTRIBUTES.fields if spec.attr} == model_fields
    trigger_fields = {model_field.name for model_field in dataclasses.fields(TriggerConfig)}
    assert {spec.attr for spec in TRIGGER.fields if spec.attr} | {"name"} == trigger_fields
    function_fields = {model_field.name for model_field in dataclasses.fields(FunctionConfig)}
    # path, name and secret_env are derived while loading, not keys of spec.
    derived = {"path", "name", "secret_env"}
    assert {spec.attr for spec in SPEC.fields if spec.attr} | derived == function_fields


def test_printed_defaults_parse_back_to_the_model_defaults() -> None:
    defaults = KafkaAttributes(brokers=("b:1",), topics=("t",), consumer_group="g")
    for spec in ATTRIBUTES.fields:
        if spec.required or spec.attr is None or spec.key == "brokers":  # brokers: required unless url
            continue
        model_default = getattr(defaults, spec.attr or "")
        assert spec.default == model_default, spec.key
        if isinstance(model_default, float):
            assert parse_duration(spec.default_text) == model_default, spec.key
        elif spec.key == "maxBufferedBytes":
            assert parse_byte_size(spec.default_text) == model_default
        elif spec.choices and spec.default is not None:
            assert spec.default_text in spec.choices, spec.key


def test_enum_fields_list_their_choices() -> None:
    choices = {spec.key: spec.choices for spec in ATTRIBUTES.fields if spec.choices}
    assert choices == {
        "outputHeaders": ("none", "copy"),
        "initialOffset": ("earliest", "latest"),
        "workerAllocationMode": ("pool", "static", "key"),
        "balanceStrategy": ("range", "roundrobin", "cooperative-sticky"),
        "groupProtocol": ("classic", "consumer"),
        "onError": ("deadletter", "stop", "skip"),
        "explicitAckScope": ("cumulative", "record"),
        "staticMapping": ("assignmentIndex", "partitionId"),
    }


# --- consumer settings ----------------------------------------------------------------------------


def _trigger(**attributes: Any) -> TriggerConfig:
    attrs = KafkaAttributes(
        brokers=("k1:9092", "k2:9092"), topics=("orders",), consumer_group="g1", **attributes
    )
    return TriggerConfig("orders", "kafka-cluster", 2, 10.0, attrs)


def test_consumer_settings_defaults() -> None:
    assert consumer_settings(_trigger(), "shop") == {
        "bootstrap.servers": "k1:9092,k2:9092",
        "group.id": "g1",
        "client.id": "streamworker-shop-orders",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 3000,
        "max.poll.interval.ms": 300000,
        "partition.assignment.strategy": "cooperative-sticky",
        "fetch.queue.backoff.ms": 10,
        "queued.min.messages": 20000,
        "fetch.wait.max.ms": 100,
    }


def test_consumer_settings_follow_attributes() -> None:
    settings = consumer_settings(
        _trigger(
            initial_offset=InitialOffset.LATEST,
            balance_strategy=BalanceStrategy.RANGE,
            session_timeout=2.0,
            heartbeat_interval=0.4,
            max_poll_interval=30.0,
        ),
        "fn",
    )
    assert settings["auto.offset.reset"] == "latest"
    assert settings["partition.assignment.strategy"] == "range"
    assert (settings["session.timeout.ms"], settings["heartbeat.interval.ms"]) == (2000, 400)
    assert settings["max.poll.interval.ms"] == 30000
    assert (
        consumer_settings(_trigger(balance_strategy=BalanceStrategy.ROUNDROBIN), "fn")[
            "partition.assignment.strategy"
        ]
        == "roundrobin"
    )


def test_max_poll_interval_keeps_headroom_over_the_session_timeout() -> None:
    settings = consumer_settings(_trigger(session_timeout=45.0, max_poll_interval=10.0), "fn")
    assert settings["max.poll.interval.ms"] == 50000


def test_librdkafka_extras_override_last() -> None:
    extras = {"fetch.queue.backoff.ms": "50", "client.id": "custom", "security.protocol": "SASL_SSL"}
    settings = consumer_settings(_trigger(librdkafka=extras), "fn")
    assert settings["fetch.queue.backoff.ms"] == "50"
    assert settings["client.id"] == "custom"
    assert settings["security.protocol"] == "SASL_SSL"
    assert list(settings)[-1] == "security.protocol"


def test_librdkafka_accepts_the_settings(fn_dir: Path) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    doc = minimal()
    attributes_of(doc).update(
        {"brokers": "127.0.0.1:1", "librdkafka": {"check.crcs": True, "fetch.wait.max.ms": 50}}
    )
    config = load(fn_dir, doc).config
    # Creating a consumer validates every property; it needs no reachable broker.
    consumer = confluent_kafka.Consumer(consumer_settings(config.triggers[0], config.name))
    consumer.close()
    assert isinstance(consumer, confluent_kafka.Consumer)


# --- every problem in one run ------------------------------------------------------------------------


def test_every_problem_of_the_file_is_reported_at_once(fn_dir: Path) -> None:
    doc = minimal()
    doc["metadata"] = {"name": "Orders!"}
    trigger_of(doc)["numWorkerz"] = 2
    attributes_of(doc)["sessionTimeout"] = "soon"
    attributes_of(doc)["onError"] = "explode"
    doc["spec"]["triggers"]["second"] = {"kind": "kafka-cluster", "attributes": {"topics": ["t"]}}
    with pytest.raises(ConfigError) as info:
        load(fn_dir, doc)
    lines = [error.line() for error in info.value.errors]
    assert [line.split(": ")[1] for line in lines] == [
        "metadata.name",
        "spec.triggers.orders.numWorkerz",
        "spec.triggers.orders.attributes.sessionTimeout",
        "spec.triggers.orders.attributes.onError",
        "spec.triggers.second.attributes.brokers",
        "spec.triggers.second.attributes.consumerGroup",
    ]
    assert "did you mean 'numWorkers'" in lines[1]
    # str() stays one line: the first problem and how many more.
    assert str(info.value) == f"{lines[0]} (and 5 more problems)"
    copy_ = pickle.loads(pickle.dumps(info.value))
    assert [e.line() for e in copy_.errors] == lines


def test_a_misspelt_required_key_is_reported_once(fn_dir: Path) -> None:
    doc = minimal()
    attributes_of(doc)["topic"] = attributes_of(doc).pop("topics")
    with pytest.raises(ConfigError) as info:
        load(fn_dir, doc)
    assert [e.line() for e in info.value.errors] == [
        "function.yaml: spec.triggers.orders.attributes.topic: unknown key (did you mean 'topics'?)"
    ]


def test_cross_field_checks_still_run_when_other_triggers_are_broken(fn_dir: Path) -> None:
    doc = minimal()
    attributes_of(doc)["heartbeatInterval"] = "20s"
    attributes_of(doc)["sessionTimeout"] = "10s"
    doc["spec"]["triggers"]["other"] = {"kind": "kafka-cluster", "attributes": "not a mapping"}
    with pytest.raises(ConfigError) as info:
        load(fn_dir, doc)
    fields = [e.field for e in info.value.errors]
    assert fields == ["spec.triggers.orders.attributes.heartbeatInterval", "spec.triggers.other.attributes"]


@pytest.mark.parametrize("name", ["orders", "orders-v2", "a", "my_fn", "x" * 63])
def test_metadata_name_follows_the_rule_of_init(fn_dir: Path, name: str) -> None:
    doc = minimal()
    doc["metadata"] = {"name": name}
    assert load(fn_dir, doc).config.name == name


@pytest.mark.parametrize("name", ["Orders", "orders.v2", "2fast", "trailing-", "x" * 64, "has space"])
def test_metadata_name_breaking_the_rule_of_init_is_an_error(fn_dir: Path, name: str) -> None:
    from streamworker.scaffold import NAME_RULE, validate_name

    doc = minimal()
    doc["metadata"] = {"name": name}
    assert error_of(fn_dir, doc) == f"function.yaml: metadata.name: invalid name {name!r}: {NAME_RULE}"
    with pytest.raises(Exception, match="invalid name"):
        validate_name(name)  # init refuses the same names


# --- function.yaml as Nuclio writes it ------------------------------------------------------------

NUCLIO_EXPORT = Path(__file__).parent / "fixtures" / "nuclio" / "function.yaml"


def test_nuclio_exported_function_yaml_loads_with_one_warning_per_nuclio_only_key() -> None:
    loaded = load_config(NUCLIO_EXPORT, environ={"SW_BROKERS": "kafka-0:9092,kafka-1:9092"})
    warned = [warning.split(": ")[1] for warning in loaded.warnings]
    for key in (
        "spec.disableDefaultHTTPTrigger",
        "spec.securityContext",
        "spec.envFrom",
        "spec.serviceAccount",
        "spec.imagePullSecrets",
        "spec.dataBindings",
        "spec.sidecars",
        "spec.runtime",
        "spec.triggers.orders.batch",
        "spec.triggers.orders.waitExplicitAckDuringRebalanceTimeout",
        "spec.triggers.orders.attributes.maxProcessingTime",
        "spec.triggers.orders.attributes.rebalanceTimeout",
        "spec.triggers.orders.attributes.rebalanceRetryBackoff",
        "spec.triggers.orders.attributes.version",
        "spec.triggers.orders.attributes.channelBufferSize",
        "spec.triggers.orders.attributes.sasl.handshake",
        "spec.triggers.orders.attributes.tls.minimumVersion",
        "metadata.annotations.nuclio.io/kafka-rebalance-retry-max",
        "spec.triggers.default-http",
    ):
        assert warned.count(key) == 1, key
    assert len(warned) == len(set(warned)), "one warning per key"
    config = loaded.config
    assert config.handler == HandlerRef("drain-hook", "handler")
    assert config.event_timeout is None  # nuctl export writes eventTimeout: ""
    (trigger,) = config.triggers  # the disabled http trigger is not run
    attrs = trigger.attributes
    assert attrs.brokers == ("kafka-0:9092", "kafka-1:9092")  # from the trigger url
    assert trigger.num_workers == 2  # from maxWorkers
    assert trigger.explicit_ack_mode is ExplicitAckMode.ENABLE  # from the annotation
    assert attrs.worker_allocation_mode is AllocationMode.STATIC  # from the annotation
    assert (attrs.session_timeout, attrs.heartbeat_interval) == (10.0, 3.0)
    assert attrs.sasl is None and attrs.tls is None  # enable: false
    assert attrs.librdkafka == {"fetch.min.bytes": "1", "max.partition.fetch.bytes": "1048576"}
    assert config.nuclio_env == {
        "NUCLIO_FUNCTION_NAME": "order-sink",
        "NUCLIO_FUNCTION_DESCRIPTION": "Orders into the warehouse sink",
        "NUCLIO_FUNCTION_VERSION": "-1",
        "NUCLIO_FUNCTION_HANDLER": "drain-hook:handler",
    }


@pytest.mark.parametrize("runtime", ["python:3.8", "python:3.7", "python:2.7", "python:3"])
def test_old_python_runtimes_warn_and_load(fn_dir: Path, runtime: str) -> None:
    loaded = load(fn_dir, _set("spec.runtime", runtime))
    assert loaded.config.runtime == runtime
    (warning,) = loaded.warnings
    assert warning.startswith(f"function.yaml: spec.runtime: asks for {runtime} but streamworker runs")


def test_trigger_url_is_the_brokers_when_brokers_are_absent(fn_dir: Path) -> None:
    doc = minimal()
    trigger_of(doc)["url"] = "kafka:9092"
    assert load(fn_dir, doc).config.triggers[0].attributes.brokers == ("127.0.0.1:9092",), "brokers win"
    del attributes_of(doc)["brokers"]
    assert load(fn_dir, doc).config.triggers[0].attributes.brokers == ("kafka:9092",)


def test_max_workers_is_num_workers_unless_num_workers_is_given(fn_dir: Path) -> None:
    doc = minimal()
    trigger_of(doc)["maxWorkers"] = 5
    assert load(fn_dir, doc).config.triggers[0].num_workers == 5
    trigger_of(doc)["numWorkers"] = 3
    loaded = load(fn_dir, doc)
    assert loaded.config.triggers[0].num_workers == 3
    assert loaded.warnings == (
        "function.yaml: spec.triggers.orders.maxWorkers: not used: numWorkers is given too",
    )


@pytest.mark.parametrize("key", ["disabled", "disable"])
def test_a_disabled_trigger_is_not_run(fn_dir: Path, key: str) -> None:
    doc = minimal()
    doc["spec"]["triggers"]["other"] = {**trigger_of(doc), key: True}
    doc["spec"]["triggers"]["http"] = {"kind": "http", key: "true", "attributes": {"port": 8080}}
    loaded = load(fn_dir, doc)
    assert [trigger.name for trigger in loaded.config.triggers] == ["orders"]
    assert "function.yaml: spec.triggers.other: disabled: not run" in loaded.warnings
    trigger_of(doc)[key] = True
    assert error_of(fn_dir, doc) == (
        "function.yaml: spec.triggers: every trigger is disabled; "
        "at least one kafka-cluster trigger is required"
    )


def test_nuclio_fetch_attributes_become_librdkafka_settings(fn_dir: Path) -> None:
    doc = minimal()
    attributes_of(doc).update(
        {"fetchMin": 10, "fetchDefault": 2048, "fetchMax": 4096, "maxWaitTime": "250ms"}
    )
    trigger = load(fn_dir, doc).config.triggers[0]
    settings = consumer_settings(trigger, "fn")
    assert (settings["fetch.min.bytes"], settings["max.partition.fetch.bytes"]) == ("10", "2048")
    assert (settings["fetch.max.bytes"], settings["fetch.wait.max.ms"]) == ("4096", "250")
    attributes_of(doc)["librdkafka"] = {"fetch.min.bytes": "1"}
    assert error_of(fn_dir, doc) == (
        "function.yaml: spec.triggers.orders.attributes.fetchMin: also set as "
        "attributes.librdkafka.fetch.min.bytes; set it once"
    )


def test_attribute_level_ca_cert_turns_tls_on_as_in_nuclio(fn_dir: Path) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
    doc = minimal()
    attributes_of(doc)["caCert"] = pem
    settings = consumer_settings(load(fn_dir, doc).config.triggers[0], "fn")
    assert (settings["security.protocol"], settings["ssl.ca.pem"]) == ("SSL", pem)
    attributes_of(doc)["tls"] = {"enable": False}
    assert load(fn_dir, doc).config.triggers[0].attributes.tls is None, "tls.enable: false wins"


def test_sasl_enable_false_turns_sasl_off(fn_dir: Path) -> None:
    doc = minimal()
    attributes_of(doc)["sasl"] = {"enable": False, "handshake": True, "mechanism": "PLAIN"}
    assert load(fn_dir, doc).config.triggers[0].attributes.sasl is None
    # As in Nuclio, a disabled section's values are not used, so empty ones (or unset ${VAR}s) load.
    attributes_of(doc)["sasl"] = {"enable": "false", "user": "", "password": "${KAFKA_PASSWORD}"}
    attributes_of(doc)["tls"] = {"enable": False, "caCert": ""}
    attributes = load(fn_dir, doc).config.triggers[0].attributes
    assert attributes.sasl is None and attributes.tls is None
    attributes_of(doc)["sasl"] = {"enable": False, "usr": "x"}
    assert error_of(fn_dir, doc) == (
        "function.yaml: spec.triggers.orders.attributes.sasl.usr: unknown key (did you mean 'user'?)"
    )


def test_sasl_oauth_is_librdkafkas_oidc_oauthbearer(fn_dir: Path) -> None:
    doc = minimal()
    attributes_of(doc)["sasl"] = {
        "enable": True,
        "oauth": {
            "clientId": "fn",
            "clientSecret": "${CLIENT_SECRET}",
            "tokenUrl": "https://idp/token",
            "scopes": ["kafka", "read"],
        },
    }
    trigger = load(fn_dir, doc, {"CLIENT_SECRET": "s3cr3t"}).config.triggers[0]
    assert "s3cr3t" not in repr(trigger)
    settings = consumer_settings(trigger, "fn")
    assert {key: settings[key] for key in settings if key.startswith(("sasl.", "security."))} == {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "OAUTHBEARER",
        "sasl.oauthbearer.method": "oidc",
        "sasl.oauthbearer.client.id": "fn",
        "sasl.oauthbearer.client.secret": "s3cr3t",
        "sasl.oauthbearer.token.endpoint.url": "https://idp/token",
        "sasl.oauthbearer.scope": "kafka read",
    }
    attributes_of(doc)["sasl"] = {"mechanism": "OAUTHBEARER"}
    assert error_of(fn_dir, doc).startswith(
        "function.yaml: spec.triggers.orders.attributes.sasl.mechanism: "
        "OAUTHBEARER needs attributes.sasl.oauth"
    )


def test_kafka_annotations_set_attributes_the_trigger_does_not_set(fn_dir: Path) -> None:
    doc = minimal()
    doc["metadata"] = {
        "annotations": {
            "nuclio.io/kafka-session-timeout": "20s",
            "nuclio.io/kafka-heartbeat-interval": "5s",
            "nuclio.io/kafka-fetch-min": "100",
            "nuclio.io/kafka-explicit-ack-mode": "explicitOnly",
            "nuclio.io/kafka-sasl-user": "svc",  # without kafka-sasl-enabled SASL stays off, as in Nuclio
            "nuclio.io/other": "not kafka",
        }
    }
    attributes_of(doc)["heartbeatInterval"] = "4s"
    trigger_of(doc)["explicitAckMode"] = "enable"
    loaded = load(fn_dir, doc)
    trigger = loaded.config.triggers[0]
    assert trigger.attributes.session_timeout == 20.0
    assert trigger.attributes.heartbeat_interval == 4.0, "the attribute wins, as in Nuclio"
    assert trigger.attributes.librdkafka == {"fetch.min.bytes": "100"}
    assert trigger.explicit_ack_mode is ExplicitAckMode.EXPLICIT_ONLY, "Nuclio lets this annotation win"
    assert trigger.attributes.sasl is None
    assert loaded.warnings == (
        "function.yaml: metadata.annotations.nuclio.io/kafka-heartbeat-interval: not used: "
        "spec.triggers.orders.attributes.heartbeatInterval is set in the trigger",
    )


def test_a_bad_annotation_value_names_the_annotation(fn_dir: Path) -> None:
    doc = minimal()
    doc["metadata"] = {"annotations": {"nuclio.io/kafka-session-timeout": "soon"}}
    assert error_of(fn_dir, doc).startswith(
        "function.yaml: metadata.annotations.nuclio.io/kafka-session-timeout: "
    )


def test_empty_event_timeout_means_none(fn_dir: Path) -> None:
    assert load(fn_dir, _set("spec.eventTimeout", "")).config.event_timeout is None


def test_ack_timeout_is_off_by_default_and_takes_a_duration(fn_dir: Path) -> None:
    assert load(fn_dir, minimal()).config.triggers[0].attributes.ack_timeout is None
    doc = minimal()
    attributes_of(doc)["ackTimeout"] = "90s"
    assert load(fn_dir, doc).config.triggers[0].attributes.ack_timeout == 90.0
    attributes_of(doc)["ackTimeout"] = "0s"
    assert "ackTimeout" in error_of(fn_dir, doc)
