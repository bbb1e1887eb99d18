"""The operator-facing command line, no broker needed: --version, validate, the health address,
librdkafka's startup check, log formats, and secrets kept out of all of it."""

from __future__ import annotations

import importlib.metadata
import io
import json
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
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


@pytest.mark.parametrize("args", [("--version",), ("version",)])
def test_version_names_streamworker_python_and_the_kafka_client(args: tuple[str, ...]) -> None:
    import confluent_kafka

    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"streamworker {__version__} (Python {platform.python_version()}, "
        f"confluent-kafka {importlib.metadata.version('confluent-kafka')}, "
        f"librdkafka {confluent_kafka.libversion()[0]})"
    )


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
            "def handler(context, event):\n    pass\n",
            "",  # the control: no problem
        ),
        (
            "import no_such_module_xyz\n",
            "cannot import handler module 'main' (handler 'main:handler') from {dir}: "
            "ModuleNotFoundError: No module named 'no_such_module_xyz' (at {dir}/main.py:1)\n"
            "Traceback (most recent call last):\n"
            '  File "{dir}/main.py", line 1, in <module>\n'
            "    import no_such_module_xyz\n"
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
    if not problem:
        assert (result.returncode, result.stderr) == (0, "")
        return
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


# --- tracebacks: a handler that fails at import or in init_context names the file and line ------------


def test_validate_shows_file_line_and_traceback_of_an_import_error(tmp_path: Path) -> None:
    folder = tmp_path / "fn"
    config = write_function(folder, "import helpers\n\ndef handler(context, event):\n    return 'ok'\n")
    (folder / "helpers.py").write_text("RATE = 1\nSHARE = 10 / (RATE - 1)\n")
    result = cli("validate", "--config", str(config))
    assert result.returncode == 2
    first, *rest = result.stderr.splitlines()
    assert first.startswith(f"streamworker: {config}: spec.handler: cannot import handler module 'main'")
    assert first.endswith(f"ZeroDivisionError: division by zero (at {folder}/helpers.py:2)")
    # The traceback starts in the user's code (not in our loader or importlib) and ends in the error.
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[1] == f'  File "{folder}/main.py", line 1, in <module>'
    assert f'  File "{folder}/helpers.py", line 2, in <module>' in rest
    assert "streamworker/worker/loader.py" not in result.stderr
    assert rest[-1] == "ZeroDivisionError: division by zero"


def test_validate_points_at_the_line_of_a_syntax_error(tmp_path: Path) -> None:
    folder = tmp_path / "fn"
    config = write_function(folder, "def handler(context, event):\n    return 'ok'\n\nx = (1,\n")
    result = cli("validate", "--config", str(config))
    assert result.returncode == 2
    first = result.stderr.splitlines()[0]
    assert "SyntaxError" in first and first.endswith(f"(at {folder}/main.py:4)"), result.stderr


def _run_until_exit(config: Path) -> tuple[int, list[dict[str, Any]], str]:
    result = cli("run", "--config", str(config), "--health-addr", "off")
    logs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result.returncode, logs, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("source", "line", "error"),
    [
        (
            "import json\n\nCONFIG = json.loads('{')\n\ndef handler(context, event):\n    return 'ok'\n",
            3,
            "JSONDecodeError",
        ),
        (
            "def init_context(context):\n    setup = {}\n    context.user_data.db = setup['db']\n\n"
            "def handler(context, event):\n    return 'ok'\n",
            3,
            "KeyError",
        ),
    ],
    ids=["import", "init_context"],
)
def test_run_reports_file_line_and_traceback_of_a_failing_handler(
    tmp_path: Path, source: str, line: int, error: str
) -> None:
    # Workers start (and fail) before the consumer is built, so the closed broker port never matters.
    folder = tmp_path / "fn"
    config = write_function(folder, source)
    code, logs, output = _run_until_exit(config)
    assert code == 3, output
    failures = [log for log in logs if log.get("message") == "worker failed to start"]
    assert failures, output
    assert f"(at {folder}/main.py:{line})" in failures[0]["error"] and error in failures[0]["error"], output
    trace = failures[0]["traceback"]
    assert f'File "{folder}/main.py", line {line}' in trace, trace
    assert trace.rstrip().splitlines()[-1].split(":")[0].endswith(error), trace
    failed = [log for log in logs if log.get("message") == "trigger failed"]
    assert failed and f"main.py:{line}" in failed[0]["error"], output


# --- command line conventions ------------------------------------------------------------------------


def test_run_with_and_without_the_subcommand_is_the_same(tmp_path: Path) -> None:
    config = write_function(tmp_path / "fn", librdkafka={"no.such.setting": 1})
    expected = (
        f"streamworker: {config}: spec.triggers.orders.attributes: invalid Kafka client settings: "
        'No such configuration property: "no.such.setting"\n'
    )
    for args in (("run", "--config", str(config)), ("--config", str(config))):
        result = cli(*args, "--health-addr", "off")
        assert (result.returncode, result.stderr) == (2, expected), args


def test_config_defaults_to_function_yaml_here_or_streamworker_config(tmp_path: Path) -> None:
    config = write_function(tmp_path / "fn")
    result = cli("validate", cwd=config.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("function.yaml: ok: function ops")

    result = cli("validate", cwd=tmp_path, env={"STREAMWORKER_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{config}: ok: function ops")

    # Neither: the error names the file that was looked for.
    result = cli("validate", cwd=tmp_path, env={"STREAMWORKER_CONFIG": ""})
    assert result.returncode == 2
    assert result.stderr == "streamworker: function.yaml: cannot read: No such file or directory\n"


def test_log_level_and_format_come_from_the_environment(tmp_path: Path) -> None:
    # An ignored key logs a warning before the bad client setting stops the run: a log line to look at.
    config = write_function(tmp_path / "fn", librdkafka={"no.such.setting": 1})
    doc = yaml.safe_load(config.read_text())
    doc["metadata"]["labels"] = {"team": "a"}
    config.write_text(yaml.safe_dump(doc))
    args = ("run", "--config", str(config), "--health-addr", "off")

    result = cli(*args)
    warning = json.loads(result.stdout.splitlines()[0])
    assert (result.returncode, warning["level"]) == (2, "warning") and "metadata.labels" in warning["message"]

    result = cli(*args, env={"STREAMWORKER_LOG_FORMAT": "console"})
    assert result.returncode == 2 and "metadata.labels" in result.stdout
    assert not result.stdout.lstrip().startswith("{")
    assert "\x1b[" not in result.stdout  # no colour codes when stdout is not a terminal

    result = cli(*args, env={"STREAMWORKER_LOG_LEVEL": "error"})
    assert result.returncode == 2 and result.stdout == ""

    result = cli(*args, "--log-level", "warning", env={"STREAMWORKER_LOG_LEVEL": "error"})
    assert result.returncode == 2 and "metadata.labels" in result.stdout  # the flag wins

    result = cli(*args, env={"STREAMWORKER_LOG_LEVEL": "loud"})
    assert result.returncode == 2
    assert "$STREAMWORKER_LOG_LEVEL: invalid choice 'loud'" in result.stderr


def test_validate_reports_every_config_error_in_one_run(tmp_path: Path) -> None:
    config = write_function(tmp_path / "fn", numWorkers=3, sessionTimeout="soon")
    doc = yaml.safe_load(config.read_text())
    doc["metadata"]["name"] = "Orders.Fn"
    del doc["spec"]["triggers"]["orders"]["attributes"]["consumerGroup"]
    doc["spec"]["triggers"]["audit"] = {"kind": "kafka-cluster", "attributes": {"brokers": "b:9092"}}
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = cli("validate", "--config", str(config))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    prefix = f"streamworker: {config}: "
    assert all(line.startswith(prefix) for line in lines), result.stderr
    fields = [line[len(prefix) :].split(": ")[0] for line in lines]
    assert fields == [
        "metadata.name",
        "spec.triggers.orders.attributes.numWorkers",
        "spec.triggers.orders.attributes.consumerGroup",
        "spec.triggers.orders.attributes.sessionTimeout",
        "spec.triggers.audit.attributes.topics",
        "spec.triggers.audit.attributes.consumerGroup",
    ], result.stderr
    assert "invalid name 'Orders.Fn': use lowercase letters" in lines[0]


def test_run_prints_every_config_error_too(tmp_path: Path) -> None:
    config = write_function(tmp_path / "fn", numWorkers=3, sessionTimeout="soon")
    result = cli("run", "--config", str(config), "--health-addr", "off")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 2, result.stderr


# --- unreachable brokers: a readable log -------------------------------------------------------------


def _http_status(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_unreachable_brokers_log_the_first_error_then_counts(tmp_path: Path) -> None:
    config = write_function(tmp_path / "fn")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamworker",
            "run",
            "--config",
            str(config),
            "--health-addr",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "STREAMWORKER_LOG_REPEAT_INTERVAL": "1"},
    )
    lines: list[dict[str, Any]] = []
    ready: tuple[int, dict[str, Any]] | None = None
    deadline = time.monotonic() + 90
    try:
        assert proc.stdout is not None
        # Until the limiter has written two summaries of the connect failures (two intervals).
        while sum("Connect to" in line.get("last", "") for line in lines) < 2:
            assert time.monotonic() < deadline, "\n".join(map(str, lines))
            text = proc.stdout.readline()
            assert text, f"streamworker exited: {lines}"
            lines.append(json.loads(text))
            if lines[-1].get("message") == "health server listening":
                port = lines[-1]["port"]
            if ready is None and lines[-1].get("message") == "kafka client messages repeated":
                ready = _http_status(f"http://127.0.0.1:{port}/ready")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    client = [line for line in lines if line.get("message") in ("librdkafka", "kafka client error")]
    connects = [line for line in client if "Connect to" in line.get("error", line.get("detail", ""))]
    summaries = [line for line in lines if line.get("message") == "kafka client messages repeated"]
    # One full line for the first failed connect (not one from librdkafka's log and one from the error
    # callback), then summaries carrying the count, not a line per attempt.
    first_summary = lines.index(summaries[0])
    assert len([line for line in connects if lines.index(line) < first_summary]) == 1, client
    assert all(line["repeated"] >= 1 and line["seconds"] >= 1.0 for line in summaries), summaries
    assert len(connects) <= len(summaries) + 1, client
    assert sum(line["repeated"] for line in summaries) >= len(client), (client, summaries)
    # The health endpoint carries the state while the log stays quiet.
    assert ready is not None and ready[0] == 503, ready


def test_help_lists_the_subcommands() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in ("run", "validate", "init", "version"):
        assert f"    {command} " in result.stdout, result.stdout
    assert cli("validate", "--help").stdout.startswith("usage: streamworker validate")


def test_console_colours_only_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, coloured in ((Terminal(), True), (io.StringIO(), False)):
        configure_logging("info", "console", stream=stream)
        get_logger().warning("look")
        logging.getLogger("somelib").warning("from a library")
        text = stream.getvalue()
        assert "look" in text and "from a library" in text
        assert ("\x1b[" in text) is coloured, repr(text)
    configure_logging("info", "json")
