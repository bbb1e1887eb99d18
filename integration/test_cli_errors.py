"""The real CLI on broken function.yaml files and unloadable handlers (no broker needed).

Config errors: exit code 2 and exactly one line on stderr,
``streamworker: <file>: <field path>: <problem>``, before any worker starts.
Handler load errors: exit code 3 within seconds, the module and the function named in the output,
and no worker process left behind.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamworker.config import load_config

CLI_TIMEOUT = 30.0


def closed_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def base_config(profile: dict[str, str]) -> dict[str, Any]:
    """A valid function.yaml (checked by ``test_base_config_is_valid``); each case breaks one thing."""
    return {
        "metadata": {"name": "cli-errors"},
        "spec": {
            "handler": "main:handler",
            "triggers": {
                "orders": {
                    "kind": "kafka-cluster",
                    "numWorkers": 2,
                    "attributes": {
                        "brokers": f"127.0.0.1:{closed_loopback_port()}",
                        "topics": ["orders"],
                        "consumerGroup": "cli-errors",
                        **profile,
                    },
                }
            },
        },
    }


def run_cli(config_path: Path | str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamworker", "--config", str(config_path)],
        cwd=str(cwd),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def write_config(folder: Path, config: dict[str, Any] | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text("def handler(context, event):\n    return 'ok'\n")
    path = folder / "function.yaml"
    text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def attrs(config: dict[str, Any]) -> dict[str, Any]:
    attributes: dict[str, Any] = config["spec"]["triggers"]["orders"]["attributes"]
    return attributes


def trigger(config: dict[str, Any]) -> dict[str, Any]:
    section: dict[str, Any] = config["spec"]["triggers"]["orders"]
    return section


def assert_config_error(result: subprocess.CompletedProcess[str], prefix: str, *needles: str) -> str:
    """Exit code 2, one stderr line starting with *prefix* and containing every needle; no run."""
    shown = f"rc={result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, shown
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line\n{shown}"
    line = lines[0]
    assert line.startswith(prefix), f"expected {prefix!r}...\n{shown}"
    for needle in needles:
        assert needle in line, f"expected {needle!r} in the message\n{shown}"
    # Nothing was started: no log lines about starting or workers.
    assert "worker started" not in result.stdout and '"starting"' not in result.stdout, shown
    return line


# ----------------------------------------------------------------------------------- config errors


def test_base_config_is_valid(tmp_path: Path, quick_profile: dict[str, str]) -> None:
    """The control: the unbroken config loads, so each case below fails for its own reason only."""
    path = write_config(tmp_path / "fn", base_config(quick_profile))
    loaded = load_config(path)
    assert loaded.config.triggers[0].num_workers == 2


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "function.yaml"
    result = run_cli(missing, tmp_path)
    line = assert_config_error(result, f"streamworker: {missing}: ")
    assert "no such file" in line.lower() or "not found" in line.lower(), line


def test_bad_yaml(tmp_path: Path) -> None:
    path = write_config(tmp_path / "fn", "spec:\n  handler: main:handler\n  triggers: [oops\n")
    result = run_cli(path, tmp_path)
    line = assert_config_error(result, f"streamworker: {path}: ")
    assert "yaml" in line.lower() and "line" in line.lower(), line


def _drop_handler(c: dict[str, Any]) -> None:
    del c["spec"]["handler"]


def _drop_group(c: dict[str, Any]) -> None:
    del attrs(c)["consumerGroup"]


def _typo_num_workers(c: dict[str, Any]) -> None:
    trigger(c)["numWorker"] = trigger(c).pop("numWorkers")


def _num_workers_text(c: dict[str, Any]) -> None:
    trigger(c)["numWorkers"] = "three"


def _bad_duration(c: dict[str, Any]) -> None:
    attrs(c)["sessionTimeout"] = "2parsecs"


def _zero_workers(c: dict[str, Any]) -> None:
    trigger(c)["numWorkers"] = 0


def _malformed_handler(c: dict[str, Any]) -> None:
    c["spec"]["handler"] = "main.handler"


def _http_trigger(c: dict[str, Any]) -> None:
    trigger(c)["kind"] = "http"


CASES: list[tuple[str, Callable[[dict[str, Any]], None], str, tuple[str, ...]]] = [
    ("missing-handler", _drop_handler, "spec.handler", ("required",)),
    (
        "missing-consumer-group",
        _drop_group,
        "spec.triggers.orders.attributes.consumerGroup",
        ("required",),
    ),
    ("unknown-key", _typo_num_workers, "spec.triggers.orders.numWorker", ("did you mean 'numWorkers'",)),
    ("num-workers-wrong-type", _num_workers_text, "spec.triggers.orders.numWorkers", ("integer", "three")),
    (
        "bad-duration",
        _bad_duration,
        "spec.triggers.orders.attributes.sessionTimeout",
        ("duration", "2parsecs"),
    ),
    ("num-workers-zero", _zero_workers, "spec.triggers.orders.numWorkers", ("at least 1",)),
    ("malformed-handler", _malformed_handler, "spec.handler", ("module:function", "main.handler")),
    ("unsupported-trigger-kind", _http_trigger, "spec.triggers.orders.kind", ("http", "kafka-cluster")),
]


@pytest.mark.parametrize(("mutate", "field", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_config_error(
    mutate: Callable[[dict[str, Any]], None],
    field: str,
    needles: tuple[str, ...],
    tmp_path: Path,
    quick_profile: dict[str, str],
) -> None:
    config = copy.deepcopy(base_config(quick_profile))
    mutate(config)
    path = write_config(tmp_path / "fn", config)
    result = run_cli(path, tmp_path)
    assert_config_error(result, f"streamworker: {path}: {field}: ", *needles)


# ---------------------------------------------------------------------------- handler load errors


def _alive(pid: int) -> bool:
    """Whether *pid* is still a live (non-zombie) streamworker worker."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat[stat.rfind(b")") + 2 :].split()[0]
    return state != b"Z" and b"streamworker.worker" in cmdline


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc to check for leftover workers")
@pytest.mark.parametrize(
    ("handler", "module", "function"),
    [
        ("no_such_module:handle_orders", "no_such_module", "handle_orders"),
        ("main:handle_orders", "main", "handle_orders"),
    ],
    ids=["module-missing", "function-missing"],
)
def test_handler_load_error(
    handler: str,
    module: str,
    function: str,
    tmp_path: Path,
    quick_profile: dict[str, str],
    streamworker_process: Callable[..., Any],
    wait_until: Callable[..., Any],
) -> None:
    config = base_config(quick_profile)
    config["spec"]["handler"] = handler
    trigger(config)["numWorkers"] = 3
    path = write_config(tmp_path / "fn", config)

    started = time.monotonic()
    proc = streamworker_process(path)
    code = proc.wait(timeout=20)
    took = time.monotonic() - started
    output = proc.output(last=200)
    assert code == 3, f"exit code {code}\n{output}"
    assert took < 15, f"took {took:.1f}s to give up\n{output}"

    pids = [log["pid"] for log in proc.logs if log.get("message") == "worker started"]
    assert pids, f"no worker was started\n{output}"
    wait_until(
        lambda: not any(_alive(pid) for pid in pids),
        timeout=5,
        message=lambda: f"workers left behind: {[pid for pid in pids if _alive(pid)]}\n{output}",
    )

    failures = [log for log in proc.logs if log.get("level") == "error"]
    assert failures, f"no error log line\n{output}"
    text = " ".join(str(v) for log in failures for v in log.values())
    assert f"'{module}'" in text or f"{module}:" in text, f"module {module!r} not named\n{output}"
    assert function in text, f"function {function!r} not named in the error\n{output}"
