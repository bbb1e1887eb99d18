"""Render docs/configuration.md from the schema tables the config loader validates with.

    python -m streamworker.docs > docs/configuration.md
    python -m streamworker.docs --output docs/configuration.md   # writes only if rendering worked

Every key comes from ``streamworker.config.iter_sections()``, so a key the loader accepts is always
documented, with the help text, default and choices written next to its parser. Only the "type"
column is derived here, from the name of the parse function, because ``FieldSpec`` does not carry
one; a parser this module does not know still gets a readable type from its name.
``tests/test_docs.py`` regenerates the page and compares it with the committed file.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from streamworker.config import FieldSpec, SectionSpec, iter_sections

__all__ = ["REGENERATE_COMMAND", "field_type", "main", "render_configuration_reference", "section_anchor"]

REGENERATE_COMMAND = "python -m streamworker.docs > docs/configuration.md"

# parse function name -> the type as a YAML author would say it.
_TYPE_BY_PARSER: tuple[tuple[str, str], ...] = (
    ("parse_mapping", "mapping"),
    ("parse_string", "string"),
    ("parse_int", "integer"),
    ("parse_positive_int", "integer ≥ 1"),
    ("parse_non_negative_int", "integer ≥ 0"),
    ("parse_bool", "boolean"),
    ("parse_duration", "duration"),
    ("parse_positive_duration", "duration > 0"),
    ("parse_event_timeout", 'duration > 0 ("" for none)'),
    ("parse_text", "string"),
    ("parse_annotations", "mapping of string → string"),
    ("parse_scopes", "list of strings, or one comma-separated string"),
    ("parse_byte_size", "byte size"),
    ("parse_positive_byte_size", "byte size ≥ 1"),
    ("parse_brokers", 'list of "host:port", or one comma-separated string'),
    ("parse_topics", "list of topic names, or one comma-separated string"),
    ("parse_handler", 'string "module:function"'),
    ("parse_runtime", "string"),
    ("parse_trigger_kind", "string"),
    ("parse_env", "list of {name, value}, or a mapping"),
    ("parse_librdkafka", "mapping of librdkafka setting → value"),
    ("parse_secret", "string (secret, never logged)"),
    ("parse_pem_or_path", "file path or PEM text"),
)

INTRO = f"""\
<!-- Generated from streamworker/config/schema.py by `{REGENERATE_COMMAND}`. Do not edit by hand. -->

# function.yaml reference

Every key streamworker reads from a function.yaml, with its type, default and meaning. This page is
generated from the same tables the config loader validates with (`streamworker/config/schema.py`),
so it cannot list a key the loader refuses or miss one it accepts. After changing the schema,
regenerate it:

```sh
{REGENERATE_COMMAND}
```

`tests/test_docs.py` fails while this file and the schema disagree.

## Conventions

- **Durations** are Go-style strings, as Nuclio writes them (`250ms`, `10s`, `1m30s`; units `ns`,
  `us`, `ms`, `s`, `m`, `h`), or a plain number of seconds.
- **Byte sizes** are a number of bytes or a size such as `512KiB`, `64MiB`, `10MB` (case-insensitive).
- **Environment references**: `${{VAR}}` and `${{VAR:-default}}` in any string value are replaced from
  the environment when the file is loaded (the default also applies when `VAR` is empty); `$$` is a
  literal `$`. Lists can be written as one comma-separated string, so `topics: ${{TOPICS}}` works.
- **Unknown keys** are errors with a "did you mean" hint. Nuclio keys that do not apply here are
  accepted with a warning; each section lists them.
- **Empty values** (`env:` with nothing after it) count as not given: the default applies.
- **Errors** name the file and the dotted field, e.g.
  `function.yaml: spec.triggers.orders.attributes.consumerGroup: required`.
"""


def section_anchor(path: str) -> str:
    """A stable HTML anchor for a section: "spec.triggers.<name>" -> "spec-triggers-name"."""
    return re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-") or "top-level"


def _section_title(path: str) -> str:
    return f"`{path}`" if path else "Top level"


def _code_list(items: Sequence[str]) -> str:
    return ", ".join(f"`{item}`" for item in items)


def field_type(spec: FieldSpec) -> str:
    """The type of a key as the reference shows it (Markdown)."""
    if spec.section is not None:
        link = f"[{_section_title(spec.section)}](#{section_anchor(spec.section)})"
        if spec.section.endswith(".<name>"):
            return f"mapping of name → {link}"
        return f"mapping, see {link}"
    if spec.choices:
        return f"one of {_code_list(spec.choices)}"
    name = getattr(spec.parse, "__name__", "")
    known = dict(_TYPE_BY_PARSER).get(name)
    if known is not None:
        return known
    # A parser added to the schema after this table was written: its name is still a good guess.
    return name.removeprefix("parse_").replace("_", " ") or "value"


def _default(spec: FieldSpec) -> str:
    if spec.required:
        return "**required**"
    text = spec.default_doc or "none"
    # Literal values (`10s`, `{}`, `earliest`) as code; descriptions ("none (no limit)") as prose.
    return f"`{text}`" if " " not in text and text != "none" else text


def _cell(text: str) -> str:
    """Table cells are one line, and a bare | would end the cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _render_section(section: SectionSpec) -> list[str]:
    lines = [
        f'<a id="{section_anchor(section.path)}"></a>',
        "",
        f"## {_section_title(section.path)}",
        "",
        section.help,
        "",
        "| Key | Type | Default | Meaning |",
        "|---|---|---|---|",
    ]
    for spec in section.fields:
        cells = (f"`{spec.key}`", field_type(spec), _default(spec), spec.help)
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    lines.append("")
    if section.aliases:
        aliases = ", ".join(f"`{alias}` for `{key}`" for alias, key in section.aliases)
        lines += [f"Also accepted: {aliases}.", ""]
    if section.ignored:
        lines += [f"Nuclio keys accepted and ignored, with a warning: {_code_list(section.ignored)}.", ""]
    if section.hints:
        lines += ["Refused with advice:", ""]
        lines += [f"- `{key}`: {advice}." for key, advice in section.hints]
        lines.append("")
    return lines


def render_configuration_reference() -> str:
    """The whole of docs/configuration.md."""
    sections = list(iter_sections())
    lines = [INTRO, "## Sections", ""]
    lines += [f"- [{_section_title(s.path)}](#{section_anchor(s.path)}): {s.help}" for s in sections]
    lines.append("")
    for section in sections:
        lines += _render_section(section)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streamworker.docs",
        description="Print the function.yaml reference (docs/configuration.md) generated from the schema.",
    )
    parser.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    args = parser.parse_args(argv)
    text = render_configuration_reference()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
