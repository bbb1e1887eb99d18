"""What handler authors import: the public types at the top level, typed (py.typed), and the runtime
dependencies the package declares, each one used."""

from __future__ import annotations

import ast
import importlib.metadata
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import streamworker
import streamworker.worker.sdk as sdk

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "streamworker"


def test_handler_types_import_from_the_package() -> None:
    from streamworker import Context, Event, QualifiedOffset, Response

    # The very classes the worker hands to handlers, not copies.
    assert (Event, Context, Response, QualifiedOffset) == (
        sdk.Event,
        sdk.Context,
        sdk.Response,
        sdk.QualifiedOffset,
    )
    for name in streamworker.__all__:
        assert getattr(streamworker, name) is not None, name
    assert {"Event", "Context", "Response", "QualifiedOffset", "Logger", "Platform"} <= set(
        streamworker.__all__
    )


def test_py_typed_ships_with_the_package(tmp_path: Path) -> None:
    """PEP 561: the marker is in the package as built, so type checkers use our annotations."""
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in settings["tool"]["setuptools"]["package-data"]["streamworker"]
    build = subprocess.run(
        [
            sys.executable,
            "-c",
            "import setuptools; setuptools.setup()",
            "-q",
            "build_py",
            "--build-lib",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr
    assert (tmp_path / "streamworker" / "py.typed").is_file()
    assert (tmp_path / "streamworker" / "worker" / "sdk.py").is_file()


# Dev tooling and dev-only dependencies that must not reach users (the wheel and the image).
DEV_ONLY_MODULES = (
    "devtools",
    "streamworker/devbroker.py",
    "streamworker/devsecurity.py",
    "streamworker/demo.py",
)


def test_wheel_holds_only_the_runtime(tmp_path: Path) -> None:
    """The wheel (what the image installs) is streamworker's runtime plus py.typed: no devtools.

    Built from a copy of the checkout's sources (devtools included, so the package selection is
    what keeps it out), as the Dockerfile does: no build/ left in the checkout, none reused."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("streamworker", "devtools"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(wheels),
            str(source),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("streamworker-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    code = [n for n in names if ".dist-info/" not in n]
    assert "streamworker/py.typed" in code
    assert "streamworker/supervisor/runner.py" in code
    assert all(n.startswith("streamworker/") for n in code), sorted(code)
    for dev_only in DEV_ONLY_MODULES:
        assert not any(n.startswith(dev_only) for n in names), dev_only


def _third_party_imports() -> set[str]:
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {name for name in names if name != "streamworker" and name not in sys.stdlib_module_names}


def test_every_runtime_dependency_earns_its_place() -> None:
    """Each declared runtime dependency is imported by the package; each import is declared."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def dist(requirement: str) -> str:
        for stop in "<>=!~[; ":
            requirement = requirement.split(stop)[0]
        return requirement.strip().lower().replace("_", "-")

    runtime = {dist(r) for r in project["dependencies"]}
    optional = {dist(r) for extra in project["optional-dependencies"].values() for r in extra}
    by_module = importlib.metadata.packages_distributions()
    imported = {
        module: {d.lower().replace("_", "-") for d in by_module.get(module, [])}
        for module in _third_party_imports()
    }
    used = set().union(*imported.values())
    # Installed for the handlers, not for streamworker: functions written for Nuclio import nuclio_sdk.
    for_handlers = {"nuclio-sdk"}
    assert for_handlers <= runtime
    assert runtime - for_handlers <= used, f"declared but never imported: {sorted(runtime - used)}"
    undeclared = {m: d for m, d in imported.items() if not d & (runtime | optional)}
    assert not undeclared, f"imported but not declared: {undeclared}"
