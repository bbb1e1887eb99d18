"""docs/configuration.md is generated from the schema tables and must match them exactly."""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from streamworker.config import FieldSpec, iter_field_specs, iter_sections
from streamworker.config.schema import parse_bool, parse_string
from streamworker.docs import (
    REGENERATE_COMMAND,
    field_type,
    main,
    render_configuration_reference,
    section_anchor,
)

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "docs" / "configuration.md"


def test_committed_reference_matches_the_schema() -> None:
    generated = render_configuration_reference()
    committed = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else ""
    if committed != generated:
        diff = "".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    generated.splitlines(keepends=True),
                    "docs/configuration.md (committed)",
                    "generated from streamworker/config/schema.py",
                )
            )[:60]
        )
        pytest.fail(
            f"docs/configuration.md is out of date with the config schema; regenerate it with\n"
            f"    {REGENERATE_COMMAND}\n(run from the repository root)\n\n{diff}",
            pytrace=False,
        )


def _table_row(text: str, section_path: str, key: str) -> str:
    """The table row of ``key`` inside the section ``section_path``."""
    anchor = f'<a id="{section_anchor(section_path)}"></a>'
    start = text.index(anchor)
    following = text.find('<a id="', start + len(anchor))
    body = text[start : following if following != -1 else len(text)]
    [row] = [line for line in body.splitlines() if line.startswith(f"| `{key}` |")]
    return row


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]]


def test_every_key_is_listed_with_type_default_and_meaning() -> None:
    text = render_configuration_reference()
    specs = list(iter_field_specs())
    assert len(specs) > 20
    for section_path, spec in specs:
        key, type_cell, default_cell, meaning = _cells(_table_row(text, section_path, spec.key))
        assert key == f"`{spec.key}`"
        assert type_cell and type_cell == field_type(spec).replace("|", "\\|")
        if spec.required:
            assert default_cell == "**required**"
        else:
            assert spec.default_doc and spec.default_doc in default_cell
        assert meaning == " ".join(spec.help.split()).replace("|", "\\|")
        for choice in spec.choices:
            assert f"`{choice}`" in type_cell


def test_ignored_keys_aliases_and_hints_are_listed() -> None:
    text = render_configuration_reference()
    for section in iter_sections():
        assert section.help in text
        for key in section.ignored:
            assert f"`{key}`" in text
        for alias, key in section.aliases:
            assert f"`{alias}` for `{key}`" in text
        for key, advice in section.hints:
            assert f"- `{key}`: {advice}" in text


def test_links_point_at_anchors_that_exist() -> None:
    text = render_configuration_reference()
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', text))
    assert len(anchors) == len(list(iter_sections()))
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links and links <= anchors


def test_header_names_the_regeneration_command() -> None:
    text = render_configuration_reference()
    assert text.startswith("<!-- Generated")
    assert REGENERATE_COMMAND in text.splitlines()[0]
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_types_of_known_and_unknown_parsers() -> None:
    assert field_type(FieldSpec("a", "a", parse_bool, "h")) == "boolean"
    assert field_type(FieldSpec("a", "a", parse_string, "h")) == "string"
    assert field_type(FieldSpec("a", "a", parse_string, "h", choices=("x", "y"))) == "one of `x`, `y`"
    assert field_type(FieldSpec("a", None, parse_string, "h", section="x.<name>")) == (
        "mapping of name → [`x.<name>`](#x-name)"
    )

    def parse_kerberos_principal(value: object) -> str:
        return str(value)

    # A parser added to the schema later still gets a readable type.
    assert field_type(FieldSpec("a", "a", parse_kerberos_principal, "h")) == "kerberos principal"


def test_command_prints_the_reference(tmp_path: Path) -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "streamworker.docs"], capture_output=True, text=True, check=True, timeout=60
    )
    assert printed.stdout == render_configuration_reference()
    target = tmp_path / "configuration.md"
    assert main(["--output", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == printed.stdout


# --- README: the first screen, the quickstart, and where the long material went ------------------------

README = REPO / "README.md"
DOCS = REPO / "docs"


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _code_block(section: str) -> list[str]:
    start = section.index("```sh\n") + len("```sh\n")
    return section[start : section.index("```", start)].splitlines()


def test_readme_opens_with_what_it_is_then_the_two_commands_then_the_quickstart() -> None:
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) < 150
    headings = [line for line in lines if line.startswith("## ")]
    assert headings[:3] == ["## The two commands", "## Quickstart", "## Writing a handler"]
    intro = text[: text.index("\n## ")]
    assert "Kafka" in intro and "Nuclio" in intro
    commands = _section(text, "The two commands")
    assert "make demo" in commands and "make test" in commands
    quickstart = _section(text, "Quickstart")
    assert len(quickstart.strip().splitlines()) <= 15
    block = _code_block(quickstart)
    for needle in ("pip install", "streamworker init", "pytest", "streamworker validate", "streamworker run"):
        assert any(line.startswith(needle) or f" {needle}" in line for line in block), needle
    assert "pip install streamworker\n" not in block  # not published: that line would fail


def test_the_quickstart_commands_work(tmp_path: Path) -> None:
    """Everything of the quickstart but installing and running against a broker, as written."""
    block = _code_block(_section(README.read_text(encoding="utf-8"), "Quickstart"))
    steps = [
        line.split("#")[0].split()
        for line in block
        if line.startswith(("streamworker init", "python -m pytest", "streamworker validate"))
    ]
    assert [step[:2] for step in steps] == [
        ["streamworker", "init"],
        ["python", "-m"],
        ["streamworker", "validate"],
    ]
    for step in steps:
        command = (
            [sys.executable, "-m", "streamworker", *step[1:]]
            if step[0] == "streamworker"
            else [sys.executable, *step[1:], "-q", "-p", "no:cacheprovider"]
        )
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(step)}\n{done.stdout}\n{done.stderr}"


def test_every_relative_link_in_readme_and_docs_resolves() -> None:
    checked = 0
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(REPO)}: broken link {target}"
            checked += 1
    assert checked >= 10


def test_the_long_material_lives_in_docs_and_the_readme_links_it() -> None:
    readme = README.read_text(encoding="utf-8")
    expected = {
        "running.md": ["Exit codes", "spec:", "$STREAMWORKER_CONFIG", "$STREAMWORKER_LOG_LEVEL"],
        "handlers.md": ["event.body", "HandlerHarness", "from streamworker import", "py.typed"],
        "record-path.md": ["**Commit**", "**Failure**", "**Rebalance**", "**Unreachable brokers**"],
        "operations.md": ["/live", "/ready", "streamworker_events_total", "**Dashboard.**", "**Signals.**"],
        "development.md": ["## Benchmarks", "## Layout", "## The local broker's limits (Tansu)"],
    }
    for name, needles in expected.items():
        assert f"(docs/{name})" in readme, name
        text = (DOCS / name).read_text(encoding="utf-8")
        for needle in needles:
            assert needle in text, f"docs/{name} lacks {needle!r}"
    # Where the handler types come from is said on the first page.
    assert "from streamworker import" in readme and "py.typed" in readme


def test_the_layout_names_every_module() -> None:
    """docs/development.md's Layout lists each runtime module and devtools module by file name."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "development.md").read_text()
    layout = text.split("## Layout", 1)[1].split("```", 2)[1]
    root = Path(__file__).resolve().parent.parent
    modules = [
        p
        for folder in ("streamworker", "devtools")
        for p in (root / folder).rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py") and p.parent.name != "config"
    ]
    missing = sorted(str(p.relative_to(root)) for p in modules if p.name not in layout)
    assert not missing, f"not in docs/development.md's Layout: {missing}"
