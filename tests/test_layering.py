"""Imports inside the package run one way: what reads the supervisor's state (observability) sits
beside it, not above it, and the runtime never imports dev tooling."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "streamworker"


def _imports(path: Path) -> set[str]:
    """Absolute module names ``path`` imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _importers_of(prefix: str, under: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted((PACKAGE / under).rglob("*.py")):
        bad = sorted(n for n in _imports(path) if n == prefix or n.startswith(prefix + "."))
        if bad:
            found[str(path.relative_to(PACKAGE))] = bad
    return found


def test_observability_does_not_import_the_supervisor() -> None:
    assert _importers_of("streamworker.supervisor", "observability") == {}


def test_snapshots_import_neither_supervisor_nor_observability() -> None:
    names = _imports(PACKAGE / "snapshots.py")
    assert not {n for n in names if n.startswith(("streamworker.supervisor", "streamworker.observability"))}


def test_the_runtime_never_imports_dev_tooling() -> None:
    assert _importers_of("devtools", ".") == {}


def test_the_walk_sees_imports() -> None:
    """The check above is not vacuous: the supervisor does import observability."""
    assert _importers_of("streamworker.observability", "supervisor")
