"""The operator-facing command line, no broker needed: --version, validate, the health address,
librdkafka's startup check, log formats, and secrets kept out of all of it."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamworker import __version__
from streamworker.observability.logging import configure_logging, get_logger

PASSWORD = "Sw-secret-5e1b77"
CLI_TIMEOUT = 60.0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def write_function(folder: Path, handler_source: str = "", **attributes: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text(
        textwrap.dedent(handler_source) or "def handler(context, event):\n    return 'ok'\n"
    )
    doc = {
        "metadata": {"name": "ops"},
        "spec": {
            "handler": "main:handler",
            "env": [{"name": "GREETING", "value": "from-spec-env"}],
            "triggers": {
                "orders": {
                    "kind": "kafka-cluster",
                    "attributes": {
                        "brokers": f"127.0.0.1:{closed_port()}",
                        "topics": ["orders"],
                        "consumerGroup": "ops",
                        **attributes,
                    },
                }
            },
        },
    }
    path = folder / "function.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamworker", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"streamworker {__version__}"


# --- validate -------------------------------------------------------------------------------------


def test_validate_accepts_a_good_function_and_imports_it_in_another_process(tmp_path: Path) -> None:
    marker = tmp_path / "imported.json"
    config = write_function(
        tmp_path / "fn",
        f"""
        import json, os
        # Module-level code runs at import: record where and with which environment.
        with open({str(marker)!r}, "w") as fh:
            json.dump({{"pid": os.getpid(), "greeting": os.environ.get("GREETING")}}, fh)
        print("noise from the handler module")

        def init_context(context):
            raise RuntimeError("init_context must not run during validate")

        def handler(context, event):
            return "ok"
        """,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "streamworker", "validate", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = process.communicate(timeout=CLI_TIMEOUT)
    assert process.returncode == 0, err
    assert out.startswith(f"{config}: ok: function ops, handler main:handler, triggers: orders")
    imported = json.loads(marker.read_text())
    assert imported["pid"] != process.pid  # user code ran in a child, not in the CLI process
    assert imported["greeting"] == "from-spec-env"  # with spec.env applied


@pytest.mark.parametrize(
    ("handler_source", "problem"),
    [
        (
            "import no_such_module_xyz\n",
            "cannot import handler module 'main' (handler 'main:handler') from {dir}: "
            "ModuleNotFoundError: No module named 'no_such_module_xyz'",
        ),
        (
            "def other(context, event):\n    pass\n",
            "handler module 'main' ({dir}/main.py) has no function 'handler'",
        ),
        ("import os\nos._exit(7)\n", "importing handler 'main:handler' ended the process (exit 7)"),
    ],
)
def test_validate_reports_handler_problems(tmp_path: Path, handler_source: str, problem: str) -> None:
    config = write_function(tmp_path / "fn", handler_source)
    result = cli("validate", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr == f"streamworker: {config}: spec.handler: {problem.format(dir=tmp_path / 'fn')}\n"


def test_validate_reports_config_and_client_setting_problems(tmp_path: Path) -> None:
    config = write_function(tmp_path / "fn", numWorkers=3)
    result = cli("validate", "--config", str(config))
    assert result.returncode == 2
    assert "spec.triggers.orders.attributes.numWorkers: unknown key" in result.stderr

    config = write_function(tmp_path / "fn2", librdkafka={"fetch.wait.max.ms": "soon"})
    result = cli("validate", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"streamworker: {config}: spec.triggers.orders.attributes: invalid Kafka client settings: "
    )
    assert "fetch.wait.max.ms" in result.stderr


def test_validate_never_shows_the_password(tmp_path: Path) -> None:
    sasl = {"user": "svc", "password": "${KAFKA_PASSWORD}", "mechanism": "SCRAM-SHA-256"}
    config = write_function(tmp_path / "fn", sasl=sasl, librdkafka={"sasl.kerberos.kinit.cmd": []})
    result = cli("validate", "--config", str(config), env={"KAFKA_PASSWORD": PASSWORD})
    assert result.returncode == 2 and "sasl.kerberos.kinit.cmd" in result.stderr
    config = write_function(tmp_path / "fn", sasl=sasl, librdkafka={"no.such.thing": "x"})
    result = cli("validate", "--config", str(config), env={"KAFKA_PASSWORD": PASSWORD})
    assert result.returncode == 2 and "no.such.thing" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


# --- run: errors before anything starts -------------------------------------------------------------


def test_a_busy_health_port_is_a_clear_startup_error(tmp_path: Path) -> None:
    config = write_function(tmp_path / "fn")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("--config", str(config), "--health-addr", f"127.0.0.1:{port}")
    assert result.returncode == 2
    assert result.stderr == (
        f"streamworker: cannot serve health checks on 127.0.0.1:{port}: Address already in use "
        "(choose another address with --health-addr or $STREAMWORKER_HEALTH_ADDR, or 'off')\n"
    )
    assert "worker started" not in result.stdout


def test_the_health_address_comes_from_the_environment_too(tmp_path: Path) -> None:
    config = write_function(tmp_path / "fn")
    result = cli("--config", str(config), env={"STREAMWORKER_HEALTH_ADDR": "nonsense"})
    assert result.returncode == 2
    assert "--health-addr: expected HOST:PORT or 'off', got 'nonsense'" in result.stderr


def test_librdkafka_rejections_stop_the_run_before_any_worker(tmp_path: Path) -> None:
    config = write_function(tmp_path / "fn", librdkafka={"no.such.setting": 1})
    result = cli("--config", str(config), "--health-addr", "off")
    assert result.returncode == 2
    assert result.stderr == (
        f"streamworker: {config}: spec.triggers.orders.attributes: invalid Kafka client settings: "
        'No such configuration property: "no.such.setting"\n'
    )
    assert "worker started" not in result.stdout


def test_static_membership_without_a_pod_name_is_a_config_error(tmp_path: Path) -> None:
    config = write_function(tmp_path / "fn", staticMembership=True)
    env = {key: value for key, value in os.environ.items() if key not in ("POD_NAME", "HOSTNAME")}
    result = subprocess.run(
        [sys.executable, "-m", "streamworker", "--config", str(config), "--health-addr", "off"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=env,
    )
    assert result.returncode == 2
    assert "staticMembership: true needs POD_NAME or HOSTNAME" in result.stderr


# --- logs ---------------------------------------------------------------------------------------------


def test_console_format_is_for_people_and_json_for_machines() -> None:
    stream = io.StringIO()
    configure_logging("info", "console", stream=stream)
    get_logger(trigger="orders").info("partitions assigned", partitions=["orders/0"])
    get_logger().debug("hidden below the level")
    text = stream.getvalue()
    assert "partitions assigned" in text and "trigger" in text and "orders/0" in text
    assert not text.lstrip().startswith("{") and "hidden" not in text

    stream = io.StringIO()
    configure_logging("warning", "json", stream=stream)
    get_logger().info("not shown")
    get_logger().warning("shown", n=1)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["level"], line["message"], line["n"]) for line in lines] == [("warning", "shown", 1)]
    configure_logging("info", "json")


def test_bad_log_options_are_command_line_errors(tmp_path: Path) -> None:
    config = write_function(tmp_path / "fn")
    assert cli("--config", str(config), "--log-format", "xml").returncode == 2
    assert cli("--config", str(config), "--log-level", "loud").returncode == 2
