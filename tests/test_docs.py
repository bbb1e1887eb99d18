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
