"""Operations against a real broker: /live, /ready and /metrics moving with a run, TLS and SASL end
to end, and secrets kept out of every output.

The local Tansu broker cannot serve TLS or SASL (see ``devtools.security``), so those tests
run a dedicated Tansu behind ``SecurityProxy``, a TLS- and SASL-terminating proxy that the broker
advertises as itself, so every connection librdkafka makes goes through it. Proven: the tls
section's settings make librdkafka verify the server against the configured CA (and refuse another
CA) and present the client certificate, with the key given as PEM text through an environment
variable; the sasl section's settings log in with SCRAM-SHA-512 over TLS (password from a file) and a
wrong password is refused with a clear error and never shown; the whole pipeline (consume, handle,
commit) runs over TLS + SASL. Not proven here: a real broker's TLS listener or SASL implementation
(the proxy checks PLAIN/SCRAM per the RFCs, but it is ours).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.broker import LocalBroker, Record, committed_offsets, create_topics, produce
from devtools.security import Pki, SecurityProxy, make_pki

PASSWORD = "It-is-a-Secret-0b5e2d"


# --------------------------------------------------------------------------------------------- helpers


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def response_when(
    port: int, path: str, accept: Callable[[int, str], bool]
) -> Callable[[], tuple[int, str] | None]:
    """A wait_until predicate: the response to ``path`` once ``accept(status, body)`` holds."""

    def check() -> tuple[int, str] | None:
        status, body = http_get(port, path)
        return (status, body) if accept(status, body) else None

    return check


def metrics_text(port: int) -> str:
    """The streamworker metrics, without histogram buckets: for assertion messages."""
    text = http_get(port, "/metrics")[1]
    return "\n".join(
        line for line in text.splitlines() if line.startswith("streamworker_") and "_bucket" not in line
    )


def health_port(proc: Any) -> int:
    line = proc.wait_for_log("health server listening", timeout=30)
    port: int = line["port"]
    return port


def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = http_get(port, "/metrics")
    assert status == 200
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def metric(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def function_config(
    brokers: str, topic: str, group: str, profile: dict[str, str], **attributes: Any
) -> dict[str, Any]:
    return {
        "metadata": {"name": "ops"},
        "spec": {
            "handler": "main:handler",
            "triggers": {
                "orders": {
                    "kind": "kafka-cluster",
                    "numWorkers": 2,
                    "workerTerminationTimeout": "10s",
                    "attributes": {
                        "brokers": brokers,
                        "topics": [topic],
                        "consumerGroup": group,
                        "retryBackoff": "100ms",
                        **profile,
                        **attributes,
                    },
                }
            },
        },
    }


# ------------------------------------------------------------------------------ health and metrics

GATED_HANDLER = """
import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GATE, HOLD, CRASHED = (os.path.join(HERE, name) for name in ("gate", "hold", "crashed"))


def _wait_while(condition, limit):
    deadline = time.monotonic() + limit
    while condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def init_context(context):
    # Keeps the workers "initialising" until the test opens the gate.
    _wait_while(lambda: not os.path.exists(GATE), 60)


def handler(context, event):
    if event.body == b"crash-once" and not os.path.exists(CRASHED):
        open(CRASHED, "w").close()
        os._exit(1)
    _wait_while(lambda: os.path.exists(HOLD), 30)
    return "ok"
"""


def test_health_and_metrics_follow_the_run(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    quick_profile: dict[str, str],
    wait_until: Callable[..., Any],
) -> None:
    topic, group = unique("ops"), unique("ops-group")
    create_topics(broker_bootstrap, {topic: 2})
    config = function_dir(GATED_HANDLER, function_config(broker_bootstrap, topic, group, quick_profile))
    folder = config.parent
    (folder / "hold").touch()
    proc = streamworker_process(config, args=["--health-addr", "127.0.0.1:0"])
    port = health_port(proc)

    # Starting: live (the start-up loop turns) but not ready, and the body says why.
    assert http_get(port, "/live")[0] == 200
    status, body = wait_until(response_when(port, "/ready", lambda _, body: "init_context" in body), 10)
    assert status == 503
    assert "trigger orders: 0 of 2 workers finished init_context" in json.loads(body)["reasons"]

    (folder / "gate").touch()
    wait_until(lambda: http_get(port, "/ready")[0] == 200, 20, message=lambda: http_get(port, "/ready")[1])
    found = metrics(port)
    assert metric(found, "streamworker_workers_ready", trigger="orders") == 2
    assert metric(found, "streamworker_rebalances_total", trigger="orders", kind="assign") == 1

    ends = produce(broker_bootstrap, topic, [Record(f"r{i}", partition=i % 2) for i in range(20)])
    assert ends == {0: 10, 1: 10}
    labels = [{"trigger": "orders", "topic": topic, "partition": str(p)} for p in (0, 1)]

    # The handler holds the first record of each partition: lag is everything produced, and the
    # records wait in flight (running or queued on the workers).
    def held() -> bool:
        found = metrics(port)
        lags = [metric(found, "streamworker_consumer_lag", **label) for label in labels]
        return (
            lags == [10, 10] and (metric(found, "streamworker_inflight_events", trigger="orders") or 0) >= 2
        )

    wait_until(held, 15, message=lambda: metrics_text(port))

    (folder / "hold").unlink()

    def caught_up(expected_success: int, expected_ends: dict[int, int]) -> bool:
        found = metrics(port)
        success = metric(found, "streamworker_events_total", trigger="orders", topic=topic, result="success")
        return (
            success == expected_success
            and all(metric(found, "streamworker_consumer_lag", **label) == 0 for label in labels)
            and all(
                metric(found, "streamworker_committed_offset", **labels[p]) == expected_ends[p]
                for p in (0, 1)
            )
        )

    wait_until(lambda: caught_up(20, ends), 15, message=lambda: metrics_text(port))
    found = metrics(port)
    assert metric(found, "streamworker_handler_duration_seconds_count", trigger="orders") == 20
    assert metric(found, "streamworker_inflight_events", trigger="orders") == 0

    # A worker crash: counted as a restart and a retry; durations measured before it are kept.
    ends = {**ends, **produce(broker_bootstrap, topic, [Record("crash-once", partition=0)])}
    wait_until(lambda: caught_up(21, ends), 20, message=lambda: metrics_text(port))
    found = metrics(port)
    assert metric(found, "streamworker_worker_restarts_total", trigger="orders", reason="crash") == 1
    assert metric(found, "streamworker_events_total", trigger="orders", topic=topic, result="retried") == 1
    assert metric(found, "streamworker_handler_duration_seconds_count", trigger="orders") == 21
    assert committed_offsets(broker_bootstrap, group, topic, 2) == ends

    # SIGTERM with a record in flight: /ready fails at once, /live holds while the record finishes.
    (folder / "hold").touch()
    produce(broker_bootstrap, topic, [Record("last", partition=1)])
    wait_until(lambda: metric(metrics(port), "streamworker_inflight_events", trigger="orders") == 1, 15)
    proc.send_signal(signal.SIGTERM)
    status, body = wait_until(response_when(port, "/ready", lambda status, _: status == 503), 10)
    assert json.loads(body)["reasons"][0] == "stopping"
    assert http_get(port, "/live")[0] == 200
    (folder / "hold").unlink()
    assert proc.wait(30) == 0


# ------------------------------------------------------------------------------------- TLS and SASL

PLAIN_HANDLER = "def handler(context, event):\n    return 'ok'\n"
USER = "orders-svc"


@dataclass(frozen=True)
class SecureBroker:
    pki: Pki
    proxy: SecurityProxy
    client_config: dict[str, str]  # what the test's own producer and admin clients use

    @property
    def bootstrap(self) -> str:
        return self.proxy.address


@contextlib.contextmanager
def secure_broker(
    proxy: SecurityProxy, client_config: dict[str, str], log_path: Path
) -> Iterator[SecureBroker]:
    assert proxy.pki is not None
    with proxy, LocalBroker(advertised_port=proxy.port, log_path=log_path) as broker:
        proxy.target = broker.bootstrap
        yield SecureBroker(proxy.pki, proxy, client_config)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """TLS only, and a client certificate is required."""
    client = {
        "security.protocol": "SSL",
        "ssl.ca.location": str(pki.ca_cert),
        "ssl.certificate.location": str(pki.client_cert),
        "ssl.key.location": str(pki.client_key),
    }
    proxy = SecurityProxy(pki=pki, require_client_cert=True)
    with secure_broker(proxy, client, tmp_path_factory.getbasetemp() / "tansu-tls.log") as broker:
        yield broker


@pytest.fixture(scope="module")
def sasl_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """TLS, then a SASL login (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512) as USER with PASSWORD."""
    client = {
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(pki.ca_cert),
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": USER,
        "sasl.password": PASSWORD,
    }
    proxy = SecurityProxy(pki=pki, users={USER: PASSWORD})
    with secure_broker(proxy, client, tmp_path_factory.getbasetemp() / "tansu-sasl.log") as broker:
        yield broker


def run_to_completion(
    broker: SecureBroker,
    config: Path,
    topic: str,
    group: str,
    env: dict[str, str],
    streamworker_process: Callable[..., Any],
    wait_until: Callable[..., Any],
) -> Any:
    """Run streamworker on 12 records over the secured broker; return the stopped process."""
    proc = streamworker_process(config, env=env)
    port = health_port(proc)
    wait_until(lambda: http_get(port, "/ready")[0] == 200, 20, message=lambda: http_get(port, "/ready")[1])
    records = [Record(f"r{i}", partition=i % 2) for i in range(12)]
    ends = produce(broker.bootstrap, topic, records, config=broker.client_config)

    def handled() -> bool:
        found = metrics(port)
        return (
            metric(found, "streamworker_events_total", trigger="orders", topic=topic, result="success") == 12
        )

    wait_until(handled, 20, message=lambda: metrics_text(port))
    wait_until(
        lambda: (
            committed_offsets(broker.bootstrap, group, topic, 2, client_config=broker.client_config) == ends
        ),
        15,
    )
    assert proc.terminate(signal.SIGTERM, timeout=30) == 0
    return proc


def test_tls_with_a_client_certificate_end_to_end(
    tls_broker: SecureBroker,
    unique: Callable[[str], str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    quick_profile: dict[str, str],
    wait_until: Callable[..., Any],
) -> None:
    topic, group = unique("tls"), unique("tls-group")
    create_topics(tls_broker.bootstrap, {topic: 2}, client_config=tls_broker.client_config)
    pki = tls_broker.pki
    tls = {"caCert": "ca.pem", "clientCert": str(pki.client_cert), "clientKey": "${CLIENT_KEY_PEM}"}
    config = function_dir(
        PLAIN_HANDLER, function_config(tls_broker.bootstrap, topic, group, quick_profile, tls=tls)
    )
    shutil.copy(pki.ca_cert, config.parent / "ca.pem")  # a path relative to function.yaml
    key_pem = pki.client_key.read_text()
    handshakes_before = tls_broker.proxy.handshakes

    proc = run_to_completion(
        tls_broker, config, topic, group, {"CLIENT_KEY_PEM": key_pem}, streamworker_process, wait_until
    )
    assert tls_broker.proxy.handshakes > handshakes_before
    assert "client" in tls_broker.proxy.client_subjects  # the client certificate was presented
    key_body = "".join(line for line in key_pem.splitlines() if not line.startswith("-----"))
    assert key_body[:40] not in "\n".join(proc.stdout_lines + proc.stderr_lines)


def test_tls_refuses_a_broker_signed_by_another_ca(
    tls_broker: SecureBroker,
    unique: Callable[[str], str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    quick_profile: dict[str, str],
    wait_until: Callable[..., Any],
) -> None:
    topic, group = unique("tls-bad"), unique("tls-bad-group")
    pki = tls_broker.pki
    tls = {
        "caCert": str(pki.other_ca_cert),
        "clientCert": str(pki.client_cert),
        "clientKey": str(pki.client_key),
    }
    config = function_dir(
        PLAIN_HANDLER, function_config(tls_broker.bootstrap, topic, group, quick_profile, tls=tls)
    )
    failures_before = len(tls_broker.proxy.failures)
    proc = streamworker_process(config)
    port = health_port(proc)
    line = proc.wait_for_log(
        lambda log: log.get("message") == "kafka client error" and "certificate verify failed" in str(log),
        timeout=30,
    )
    assert "certificate verify failed" in line["error"]  # the client refused the server
    status, body = http_get(port, "/ready")
    assert status == 503 and "not in its consumer group yet" in body
    assert proc.terminate(signal.SIGTERM, timeout=30) == 0
    wait_until(lambda: len(tls_broker.proxy.failures) > failures_before, 5)  # the client hung up on it


def test_sasl_scram_over_tls_end_to_end(
    sasl_broker: SecureBroker,
    unique: Callable[[str], str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    quick_profile: dict[str, str],
    wait_until: Callable[..., Any],
) -> None:
    topic, group = unique("sasl"), unique("sasl-group")
    create_topics(sasl_broker.bootstrap, {topic: 2}, client_config=sasl_broker.client_config)
    sasl = {"mechanism": "SCRAM-SHA-512", "user": USER, "passwordFile": "secrets/kafka-password"}
    tls = {"caCert": str(sasl_broker.pki.ca_cert)}
    config = function_dir(
        PLAIN_HANDLER,
        function_config(sasl_broker.bootstrap, topic, group, quick_profile, sasl=sasl, tls=tls),
        files={"secrets/kafka-password": PASSWORD + "\n"},  # as `echo` or a mounted secret writes it
    )
    proc = run_to_completion(sasl_broker, config, topic, group, {}, streamworker_process, wait_until)
    assert ("SCRAM-SHA-512", USER) in sasl_broker.proxy.logins
    assert PASSWORD not in "\n".join(proc.stdout_lines + proc.stderr_lines)


def test_secrets_never_logged_when_a_wrong_password_is_refused(
    sasl_broker: SecureBroker,
    unique: Callable[[str], str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    quick_profile: dict[str, str],
) -> None:
    wrong = "Wrong-Passw0rd-" + PASSWORD[::-1]
    topic, group = unique("sasl-bad"), unique("sasl-bad-group")
    sasl = {"mechanism": "PLAIN", "user": USER, "password": "${KAFKA_PASSWORD}"}
    tls = {"caCert": str(sasl_broker.pki.ca_cert)}
    config = function_dir(
        PLAIN_HANDLER, function_config(sasl_broker.bootstrap, topic, group, quick_profile, sasl=sasl, tls=tls)
    )
    proc = streamworker_process(config, env={"KAFKA_PASSWORD": wrong}, args=["--log-level", "debug"])
    port = health_port(proc)
    line = proc.wait_for_log(
        lambda log: log.get("message") == "kafka client error" and "Authentication failed" in str(log),
        timeout=30,
    )
    assert "SASL authentication error" in line["error"]
    bodies = [http_get(port, path)[1] for path in ("/metrics", "/ready", "/live")]
    assert json.loads(bodies[1])["status"] == "not ready"
    assert proc.terminate(signal.SIGTERM, timeout=30) == 0
    everything = "\n".join([*proc.stdout_lines, *proc.stderr_lines, *bodies])
    assert "SASL authentication error" in everything  # the run did log about the login...
    assert wrong not in everything  # ...but never the password
    assert "PLAIN login refused" in sasl_broker.proxy.failures  # it was sent, and checked


FAILING_HANDLER = """
def handler(context, event):
    if event.body == b"poison":
        raise ValueError("cannot handle this record")
"""


def test_a_partition_stopped_by_on_error_stop_makes_ready_503(
    broker_bootstrap: str,
    unique: Any,
    function_dir: Any,
    streamworker_process: Any,
    wait_until: Any,
    quick_profile: dict[str, str],
) -> None:
    topic, group = unique("ops-stop"), unique("ops-stop-g")
    create_topics(broker_bootstrap, {topic: 2})
    produce(broker_bootstrap, topic, [Record(value=b"ok", partition=1), Record(value=b"poison", partition=0)])
    config = function_dir(
        FAILING_HANDLER,
        {
            "metadata": {"name": "ops-stop"},
            "spec": {
                "handler": "main:handler",
                "triggers": {
                    "k": {
                        "kind": "kafka-cluster",
                        "attributes": {
                            "brokers": broker_bootstrap,
                            "topics": [topic],
                            "consumerGroup": group,
                            "maxRetries": 0,
                            "onError": "stop",
                            **quick_profile,
                        },
                    }
                },
            },
        },
    )
    proc = streamworker_process(config)
    port = health_port(proc)
    proc.wait_for_log("handler failed; retries exhausted; partition stopped until restart", timeout=30)
    status, body = wait_until(response_when(port, "/ready", lambda s, _b: s == 503), 10)
    assert status == 503 and f"{topic}/0" in body and "stopped" in body
    assert http_get(port, "/live")[0] == 200, "a stopped partition is not a dead process"
    assert proc.terminate() == 0
