"""``streamworker init NAME``: a function folder whose tests pass and whose config loads cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamworker import scaffold
from streamworker.config import load_config
from streamworker.testing import HandlerHarness


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # No PYTEST_* variables from the outer run leak in (e.g. PYTEST_ADDOPTS, xdist's worker ids).
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_init_then_pytest_passes_and_config_loads_cleanly(tmp_path: Path) -> None:
    created = run("-m", "streamworker", "init", "orders-v2", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    folder = tmp_path / "orders-v2"
    assert sorted(path.name for path in folder.iterdir()) == ["function.yaml", "main.py", "test_main.py"]
    assert "python -m pytest orders-v2" in created.stdout

    tested = run("-m", "pytest", "orders-v2", "-q", "-p", "no:cacheprovider", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "3 passed" in tested.stdout

    loaded = load_config(folder / "function.yaml", environ={})
    assert loaded.warnings == ()
    config = loaded.config
    assert config.name == "orders-v2"
    assert str(config.handler) == "main:handler"
    [trigger] = config.triggers
    assert trigger.kind == "kafka-cluster"
    assert trigger.attributes.brokers == ("127.0.0.1:9092",)
    assert trigger.attributes.topics == ("orders-v2",)
    assert trigger.attributes.consumer_group == "orders-v2"
    assert config.env == {"GREETING": "hello"}

    # Pointing it at a real cluster is one environment variable.
    elsewhere = load_config(folder / "function.yaml", environ={"KAFKA_BROKERS": "k1:9092,k2:9092"})
    assert elsewhere.config.triggers[0].attributes.brokers == ("k1:9092", "k2:9092")


def test_generated_handler_through_the_harness(tmp_path: Path) -> None:
    assert scaffold.main(["greeter", "--dir", str(tmp_path)]) == 0
    with HandlerHarness(tmp_path / "greeter" / "function.yaml") as harness:
        assert harness.call(b"Ada", key=b"k") == "hello, Ada"
        [record] = harness.logs
        assert record.message == "record handled"
        assert record.fields["key"] == "k"
        assert record.fields["size"] == 3


@pytest.mark.parametrize("existing", ["folder", "file"])
def test_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str], existing: str) -> None:
    target = tmp_path / "orders"
    if existing == "folder":
        target.mkdir()
        (target / "main.py").write_text("mine\n", encoding="utf-8")
    else:
        target.write_text("mine\n", encoding="utf-8")

    assert scaffold.main(["orders", "--dir", str(tmp_path)]) == 2

    err = capsys.readouterr().err
    assert err.startswith("streamworker init: ")
    assert f"{target} already exists" in err and "not overwriting" in err
    if existing == "folder":
        assert [path.name for path in target.iterdir()] == ["main.py"]
        assert (target / "main.py").read_text(encoding="utf-8") == "mine\n"
    else:
        assert target.read_text(encoding="utf-8") == "mine\n"


def test_refusal_through_the_cli(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    result = run("-m", "streamworker", "init", "taken", cwd=tmp_path)
    assert result.returncode == 2
    assert "taken already exists" in result.stderr
    assert list((tmp_path / "taken").iterdir()) == []


@pytest.mark.parametrize(
    "name", ["", "Orders", "1orders", "a/b", "..", ".hidden", "-x", "x-", "x_", "a b", "é", "a" * 64]
)
def test_rejects_unusable_names(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    assert scaffold.main(["--dir", str(tmp_path), "--", name]) == 2
    assert "invalid name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["a", "orders", "orders-v2", "my_fn", "a" * 63])
def test_accepts_usable_names(tmp_path: Path, name: str) -> None:
    assert scaffold.main([name, "--dir", str(tmp_path / "parent")]) == 0
    assert load_config(tmp_path / "parent" / name / "function.yaml", environ={}).warnings == ()


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert scaffold.main([]) == 2
    assert "NAME" in capsys.readouterr().err
    assert scaffold.main(["--help"]) == 0
    assert "function.yaml, main.py and test_main.py" in capsys.readouterr().out


def test_failed_write_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(name: str) -> tuple[scaffold.ScaffoldFile, ...]:
        # A file in a folder that does not exist: open() fails after the first file was written.
        return (scaffold.ScaffoldFile("main.py", "x = 1\n"), scaffold.ScaffoldFile("no/such.py", ""))

    monkeypatch.setattr(scaffold, "render", broken)
    assert scaffold.main(["orders", "--dir", str(tmp_path)]) == 1
    assert "cannot write" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
