"""attributes.sasl / attributes.tls: loading, librdkafka mapping, offline checks, and secrets kept out
of every message."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.security import Pki, make_pki
from streamworker.config import ConfigError, LoadedConfig, consumer_settings, load_config
from streamworker.config.kafka_settings import client_settings_problem, security_settings
from streamworker.config.model import ExplicitAckMode, SaslMechanism, Secret
from streamworker.supervisor.deadletter import producer_settings
from streamworker.supervisor.runner import RunnerOptions, TriggerRunner

PASSWORD = "pa$$-W0rd-7f3c9e"  # distinctive, so a leak is easy to spot
A = "spec.triggers.orders.attributes"


@pytest.fixture
def fn_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "orders"
    folder.mkdir()
    (folder / "main.py").write_text("def handler(context, event):\n    return None\n")
    monkeypatch.chdir(folder)
    yield folder


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def doc_with(**attributes: Any) -> dict[str, Any]:
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
                        **attributes,
                    },
                }
            },
        }
    }


def load(folder: Path, doc: dict[str, Any], environ: dict[str, str] | None = None) -> LoadedConfig:
    (folder / "function.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return load_config("function.yaml", environ={} if environ is None else environ)


def error_of(folder: Path, doc: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(folder, doc, environ)
    return str(info.value)


def settings_of(loaded: LoadedConfig) -> dict[str, Any]:
    return dict(consumer_settings(loaded.config.triggers[0], "fn", environ={}))


# --- SASL -------------------------------------------------------------------------------------------


def test_sasl_from_an_env_reference_maps_to_librdkafka(fn_dir: Path) -> None:
    sasl = {"enable": True, "mechanism": "scram-sha-512", "user": "svc", "password": "${KAFKA_PASSWORD}"}
    loaded = load(fn_dir, doc_with(sasl=sasl), {"KAFKA_PASSWORD": PASSWORD})
    assert loaded.warnings == ()
    attrs = loaded.config.triggers[0].attributes
    assert attrs.sasl is not None and attrs.sasl.mechanism is SaslMechanism.SCRAM_SHA_512
    assert attrs.sasl.password.source == "${KAFKA_PASSWORD}"
    settings = settings_of(loaded)
    assert settings["security.protocol"] == "SASL_PLAINTEXT"
    assert settings["sasl.mechanism"] == "SCRAM-SHA-512"
    assert settings["sasl.username"] == "svc"
    assert settings["sasl.password"] == PASSWORD


def test_sasl_mechanism_defaults_to_plain_and_the_section_enables_itself(fn_dir: Path) -> None:
    loaded = load(fn_dir, doc_with(sasl={"user": "svc", "password": "${PW}"}), {"PW": PASSWORD})
    assert settings_of(loaded)["sasl.mechanism"] == "PLAIN"


def test_sasl_disabled_sets_nothing(fn_dir: Path) -> None:
    loaded = load(fn_dir, doc_with(sasl={"enable": False, "user": "svc"}))
    assert loaded.config.triggers[0].attributes.sasl is None
    assert not [key for key in settings_of(loaded) if key.startswith(("sasl.", "security."))]


def test_password_file_is_read_relative_to_the_config_without_its_newline(fn_dir: Path) -> None:
    (fn_dir / "secrets").mkdir()
    (fn_dir / "secrets" / "kafka-password").write_text(PASSWORD + "\n")
    loaded = load(fn_dir, doc_with(sasl={"user": "svc", "passwordFile": "secrets/kafka-password"}))
    sasl = loaded.config.triggers[0].attributes.sasl
    assert sasl is not None and sasl.password.reveal() == PASSWORD
    assert sasl.password.source == f"passwordFile {fn_dir / 'secrets' / 'kafka-password'}"
    assert settings_of(loaded)["sasl.password"] == PASSWORD


@pytest.mark.parametrize(
    ("sasl", "problem"),
    [
        ({"password": "${PW}"}, f"{A}.sasl.user: required when SASL is enabled"),
        ({"user": "svc"}, f"{A}.sasl.password: required when SASL is enabled (or give passwordFile)"),
        (
            {"user": "svc", "password": "${PW}", "passwordFile": "pw.txt"},
            f"{A}.sasl.passwordFile: give password or passwordFile, not both",
        ),
        ({"user": "svc", "passwordFile": "missing.txt"}, f"{A}.sasl.passwordFile: cannot read "),
        (
            {"user": "svc", "password": "${PW}", "mechanism": "GSSAPI"},
            f"{A}.sasl.mechanism: must be one of 'PLAIN', 'SCRAM-SHA-256', 'SCRAM-SHA-512', 'OAUTHBEARER'; "
            "got 'GSSAPI'",
        ),
        (
            {"user": "svc", "password": "${NOT_SET}"},
            f"{A}.sasl.password: environment variable NOT_SET is not set",
        ),
        ({"user": "svc", "password": "${PW}", "oauth": {}}, f"{A}.sasl.oauth.clientId: required"),
    ],
)
def test_sasl_mistakes(fn_dir: Path, sasl: dict[str, Any], problem: str) -> None:
    assert error_of(fn_dir, doc_with(sasl=sasl), {"PW": PASSWORD}).startswith(f"function.yaml: {problem}")


def test_an_empty_password_file_is_an_error(fn_dir: Path) -> None:
    (fn_dir / "pw.txt").write_text("\n")
    problem = error_of(fn_dir, doc_with(sasl={"user": "svc", "passwordFile": "pw.txt"}))
    assert problem == f"function.yaml: {A}.sasl.passwordFile: {fn_dir / 'pw.txt'} is empty"


def test_an_inline_password_works_but_warns_without_showing_it(fn_dir: Path) -> None:
    # Inline, "$$" stands for "$" as everywhere in function.yaml.
    loaded = load(fn_dir, doc_with(sasl={"user": "svc", "password": PASSWORD.replace("$", "$$")}))
    assert loaded.warnings == (
        f"function.yaml: {A}.sasl.password: written inline in function.yaml; "
        "prefer a ${VAR} reference or passwordFile",
    )
    assert settings_of(loaded)["sasl.password"] == PASSWORD


def test_a_malformed_password_is_not_echoed(fn_dir: Path) -> None:
    problem = error_of(fn_dir, doc_with(sasl={"user": "svc", "password": [PASSWORD]}))
    assert problem == f"function.yaml: {A}.sasl.password: must be a string, got list"
    problem = error_of(fn_dir, doc_with(librdkafka={"sasl.password": {"x": PASSWORD}}))
    assert (
        problem
        == f"function.yaml: {A}.librdkafka.sasl.password: must be a string, number or boolean, got mapping"
    )


def test_librdkafka_may_not_repeat_what_a_section_sets(fn_dir: Path) -> None:
    doc = doc_with(sasl={"user": "svc", "password": "${PW}"}, librdkafka={"sasl.username": "other"})
    assert error_of(fn_dir, doc, {"PW": "x"}) == (
        f"function.yaml: {A}.librdkafka.sasl.username: already set by attributes.sasl; "
        "set it in one place only"
    )
    doc = doc_with(tls={"insecureSkipVerify": True}, librdkafka={"security.protocol": "SSL"})
    assert error_of(fn_dir, doc) == (
        f"function.yaml: {A}.librdkafka.security.protocol: already set by attributes.tls; "
        "set it in one place only"
    )


def test_the_escape_hatch_still_carries_other_mechanisms(fn_dir: Path) -> None:
    extras = {"security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER"}
    loaded = load(fn_dir, doc_with(librdkafka=extras))
    settings = settings_of(loaded)
    assert settings["security.protocol"] == "SASL_SSL" and settings["sasl.mechanism"] == "OAUTHBEARER"


def test_secrets_stay_out_of_reprs(fn_dir: Path) -> None:
    doc = doc_with(sasl={"user": "svc", "password": "${PW}"}, librdkafka={"ssl.key.password": PASSWORD})
    loaded = load(fn_dir, doc, {"PW": PASSWORD})
    assert PASSWORD not in repr(loaded.config)
    assert PASSWORD not in str(Secret(PASSWORD)) and PASSWORD not in repr(Secret(PASSWORD))
    assert Secret(PASSWORD).reveal() == PASSWORD


# --- TLS --------------------------------------------------------------------------------------------


def test_tls_files_resolve_against_the_config_folder(fn_dir: Path, pki: Pki) -> None:
    for name, source in (
        ("ca.pem", pki.ca_cert),
        ("client.pem", pki.client_cert),
        ("client.key", pki.client_key),
    ):
        (fn_dir / name).write_bytes(source.read_bytes())
    tls = {"caCert": "ca.pem", "clientCert": "client.pem", "clientKey": "client.key"}
    loaded = load(fn_dir, doc_with(tls=tls))
    settings = settings_of(loaded)
    assert settings["security.protocol"] == "SSL"
    assert settings["ssl.ca.location"] == str(fn_dir / "ca.pem")
    assert settings["ssl.certificate.location"] == str(fn_dir / "client.pem")
    assert settings["ssl.key.location"] == str(fn_dir / "client.key")
    assert "enable.ssl.certificate.verification" not in settings
    assert client_settings_problem(loaded.config, environ={}) is None  # librdkafka loads them


def test_tls_pem_text_from_env_goes_to_the_pem_properties(fn_dir: Path, pki: Pki) -> None:
    environ = {
        "CA": pki.ca_cert.read_text(),
        "CERT": pki.client_cert.read_text(),
        "KEY": pki.client_key.read_text(),
    }
    tls = {"caCert": "${CA}", "clientCert": "${CERT}", "clientKey": "${KEY}"}
    loaded = load(fn_dir, doc_with(tls=tls, sasl={"user": "u", "password": "${CA}"}), environ)
    tls_settings = loaded.config.triggers[0].attributes.tls
    assert tls_settings is not None and tls_settings.client_key_pem is not None
    assert environ["KEY"].strip() not in repr(loaded.config)
    settings = settings_of(loaded)
    assert settings["security.protocol"] == "SASL_SSL"
    assert settings["ssl.ca.pem"] == environ["CA"].strip()
    assert settings["ssl.certificate.pem"] == environ["CERT"].strip()
    assert settings["ssl.key.pem"] == environ["KEY"].strip()
    assert client_settings_problem(loaded.config, environ={}) is None


def test_insecure_skip_verify_turns_off_both_checks(fn_dir: Path) -> None:
    settings = settings_of(load(fn_dir, doc_with(tls={"enable": True, "insecureSkipVerify": True})))
    assert settings["enable.ssl.certificate.verification"] == "false"
    assert settings["ssl.endpoint.identification.algorithm"] == "none"


@pytest.mark.parametrize(
    ("tls", "problem"),
    [
        ({"caCert": "nope/ca.pem"}, "tls.caCert: file not found: {dir}/nope/ca.pem"),
        ({"clientCert": "client.pem"}, "tls.clientKey: required with clientCert (mutual TLS needs both)"),
        ({"clientKey": "client.pem"}, "tls.clientCert: required with clientKey (mutual TLS needs both)"),
        (
            {"minimumVersion": "1.2", "insecureSkipVerify": "maybe"},
            "tls.insecureSkipVerify: must be true or false",
        ),
    ],
)
def test_tls_mistakes(fn_dir: Path, tls: dict[str, Any], problem: str) -> None:
    (fn_dir / "client.pem").write_text("x")
    expected = f"function.yaml: {A}.{problem.format(dir=fn_dir)}"
    assert error_of(fn_dir, doc_with(tls=tls)).startswith(expected)


def test_librdkafka_refuses_an_unreadable_certificate_offline(fn_dir: Path) -> None:
    (fn_dir / "ca.pem").write_text("not a certificate\n")
    loaded = load(fn_dir, doc_with(tls={"caCert": "ca.pem"}))
    problem = client_settings_problem(loaded.config, environ={})
    assert problem is not None
    assert problem.startswith("spec.triggers.orders.attributes: invalid Kafka client settings: ")
    assert "ssl.ca.location failed" in problem


def test_a_bad_key_is_refused_without_echoing_it(fn_dir: Path, pki: Pki) -> None:
    fake_key = "-----BEGIN PRIVATE KEY-----\nU0VDUkVULUtFWS1NQVRFUklBTA==\n-----END PRIVATE KEY-----\n"
    environ = {"KEY": fake_key}
    tls = {"clientCert": str(pki.client_cert), "clientKey": "${KEY}"}
    loaded = load(fn_dir, doc_with(tls=tls), environ)
    problem = client_settings_problem(loaded.config, environ={})
    assert problem is not None and "ssl.key.pem failed" in problem
    assert "U0VDUkVU" not in problem


def test_unknown_librdkafka_settings_are_refused_offline(fn_dir: Path) -> None:
    loaded = load(fn_dir, doc_with(librdkafka={"no.such.setting": 1}))
    assert client_settings_problem(loaded.config, environ={}) == (
        "spec.triggers.orders.attributes: invalid Kafka client settings: "
        'No such configuration property: "no.such.setting"'
    )


def test_the_dead_letter_producer_gets_the_same_security(fn_dir: Path, pki: Pki) -> None:
    tls = {"caCert": str(pki.ca_cert)}
    loaded = load(fn_dir, doc_with(tls=tls, sasl={"user": "u", "password": "${PW}"}), {"PW": PASSWORD})
    settings = producer_settings(settings_of(loaded), "dlq")
    assert settings["security.protocol"] == "SASL_SSL"
    assert settings["ssl.ca.location"] == str(pki.ca_cert) and settings["sasl.password"] == PASSWORD


def test_security_settings_are_empty_without_sections(fn_dir: Path) -> None:
    assert security_settings(load(fn_dir, doc_with()).config.triggers[0].attributes) == {}


def test_mixed_case_enum_values_load(fn_dir: Path) -> None:
    doc = doc_with()
    doc["spec"]["triggers"]["orders"]["explicitAckMode"] = "explicitOnly"
    assert load(fn_dir, doc).config.triggers[0].explicit_ack_mode is ExplicitAckMode.EXPLICIT_ONLY


# --- secrets stay out of the workers' environment -----------------------------------------------------


def test_variables_secret_fields_refer_to_are_listed(fn_dir: Path, pki: Pki) -> None:
    doc = doc_with(
        sasl={"user": "svc", "password": "${KAFKA_PASSWORD}"},
        tls={"caCert": str(pki.ca_cert), "clientCert": str(pki.client_cert), "clientKey": "${TLS_KEY}"},
        librdkafka={"ssl.key.password": "${KEY_PW:-x}", "client.rack": "${RACK}"},
    )
    environ = {"KAFKA_PASSWORD": PASSWORD, "TLS_KEY": pki.client_key.read_text(), "RACK": "r1"}
    loaded = load(fn_dir, doc, environ)
    assert loaded.config.secret_env == {"KAFKA_PASSWORD", "TLS_KEY", "KEY_PW"}


def test_workers_do_not_inherit_secret_variables_unless_spec_env_names_them(fn_dir: Path) -> None:
    # A real worker process reports the environment it got (from init_context, before any record).
    seen = fn_dir / "env.json"
    (fn_dir / "main.py").write_text(
        "import json, os\n"
        "def init_context(context):\n"
        f"    open({str(seen)!r}, 'w').write(json.dumps(sorted(os.environ)))\n"
        "def handler(context, event):\n"
        "    return None\n"
    )
    doc = doc_with(
        sasl={"user": "svc", "password": "${KAFKA_PASSWORD}"},
        librdkafka={"sasl.oauthbearer.config": "${OAUTH}"},
    )
    doc["spec"]["env"] = [{"name": "OAUTH", "value": "${OAUTH}"}]  # named in spec.env: handed over
    environ = {"KAFKA_PASSWORD": PASSWORD, "OAUTH": "principal=x"}
    loaded = load(fn_dir, doc, environ)
    function = loaded.config
    runner = TriggerRunner(
        function,
        function.triggers[0],
        threading.Event(),
        RunnerOptions(extra_env={**environ, "UNRELATED": "1"}),
    )
    assert "KAFKA_PASSWORD" in runner.env  # the supervisor keeps it (and needs none of it after loading)
    try:
        runner._start_workers()
        names = set(json.loads(seen.read_text()))
    finally:
        runner.pool.terminate(time.monotonic() + 10)
    assert "KAFKA_PASSWORD" not in names
    assert {"OAUTH", "UNRELATED"} <= names
