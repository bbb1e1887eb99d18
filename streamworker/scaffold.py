"""``streamworker init NAME``: create a function folder that runs and whose tests pass right away.

``NAME/function.yaml`` (a kafka-cluster trigger on topic NAME, consumer group NAME, brokers from
``${KAFKA_BROKERS:-127.0.0.1:9092}``), ``NAME/main.py`` (a Nuclio-style handler with
``init_context``) and ``NAME/test_main.py`` (tests through ``streamworker.testing.HandlerHarness``).

Exit codes: 0 created; 2 bad name or the folder already exists (nothing is touched); 1 the files
could not be written (whatever was created is removed again).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from streamworker.config.loader import FUNCTION_NAME, FUNCTION_NAME_RULE

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "ScaffoldError",
    "ScaffoldFile",
    "main",
    "render",
    "scaffold",
    "validate_name",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

# The name becomes a folder, metadata.name, the topic and the consumer group: the loader's rule for
# metadata.name, so `init` never writes a function.yaml that `validate` rejects.
_NAME = FUNCTION_NAME
NAME_RULE = FUNCTION_NAME_RULE

# Templates use "{name}" and "{python}" placeholders filled by str.replace, because the YAML and the
# Python code are full of braces that str.format would trip over.
FUNCTION_YAML = """\
# {name}: a streamworker function (the function.yaml format of Nuclio's Kafka trigger).
#   run:   streamworker --config {name}/function.yaml
#   test:  python -m pytest {name}          (no broker needed)
# Every key, its type and default: docs/configuration.md in the streamworker repository.
metadata:
  name: {name}
spec:
  handler: main:handler          # module:function, relative to this folder
  runtime: {python}
  eventTimeout: 30s              # a call running longer is stopped and counts as failed
  env:
    - name: GREETING
      value: hello
  triggers:
    kafka:
      kind: kafka-cluster
      numWorkers: 1              # worker processes; each runs one record at a time
      attributes:
        # "host:port", a list or a comma-separated string; set KAFKA_BROKERS or write them here.
        brokers: ${KAFKA_BROKERS:-127.0.0.1:9092}
        topics: [{name}]
        consumerGroup: {name}
        initialOffset: earliest      # where a new consumer group starts: earliest | latest
        # A failed record is retried (maxRetries, retryBackoff); after the last retry it goes to
        # deadLetterTopic if set, otherwise its partition stops until restart (onError).
        # deadLetterTopic: {name}-dead-letters
"""

MAIN_PY = '''\
"""{name}: a streamworker handler, written as for Nuclio's Python runtime.

``init_context`` runs once in each worker process, ``handler`` once per Kafka record. Returning
marks the record done (its offset can be committed); raising marks it failed: it is retried and
its offset is not committed.
"""

import os


def init_context(context):
    # Open clients and load models here: once per worker process, not once per record.
    context.user_data.greeting = os.environ.get("GREETING", "hello")


def handler(context, event):
    text = event.body.decode("utf-8", errors="replace")
    # Every log line also carries the record's topic, partition and offset.
    context.logger.info_with("record handled", key=event.key, size=len(event.body))
    return f"{context.user_data.greeting}, {text}"
'''

TEST_MAIN_PY = '''\
"""Tests for {name}'s handler; run them with `python -m pytest {name}` (no broker needed)."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from streamworker.testing import HandlerHarness

CONFIG = Path(__file__).with_name("function.yaml")


@pytest.fixture
def harness() -> Iterator[HandlerHarness]:
    # Loads the function as a worker does: spec.env set, main.py imported, init_context run.
    with HandlerHarness(CONFIG) as loaded:
        yield loaded


def test_replies_with_the_greeting(harness: HandlerHarness) -> None:
    assert harness.call(b"world", key=b"user-1") == "hello, world"


def test_logs_each_record(harness: HandlerHarness) -> None:
    harness.call(b"world", key=b"user-1")
    harness.call(b"again")
    first, second = harness.logs
    assert first.message == "record handled"
    assert first.fields["key"] == "user-1"
    assert (first.fields["topic"], first.fields["offset"]) == ("{name}", 0)
    assert second.fields["offset"] == 1


def test_init_context_reads_spec_env(harness: HandlerHarness) -> None:
    assert harness.context.user_data.greeting == "hello"  # GREETING from function.yaml's env
'''


class ScaffoldError(Exception):
    """Why nothing was created; ``exit_code`` is what the command returns."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ScaffoldFile:
    name: str  # file name inside the function folder
    content: str


def validate_name(name: str) -> None:
    """Raise ``ScaffoldError`` (exit 2) unless ``name`` is usable as folder, function, topic and group."""
    if not _NAME.fullmatch(name):
        raise ScaffoldError(f"invalid name {name!r}: {NAME_RULE}", EXIT_USAGE)


def render(name: str) -> tuple[ScaffoldFile, ...]:
    """The files of a new function called ``name``."""
    python = f"python:{sys.version_info.major}.{sys.version_info.minor}"

    def fill(template: str) -> str:
        return template.replace("{name}", name).replace("{python}", python)

    return (
        ScaffoldFile("function.yaml", fill(FUNCTION_YAML)),
        ScaffoldFile("main.py", fill(MAIN_PY)),
        ScaffoldFile("test_main.py", fill(TEST_MAIN_PY)),
    )


def scaffold(parent: Path, name: str) -> Path:
    """Create ``parent/name`` with the function's files and return it. Raises ``ScaffoldError``."""
    validate_name(name)
    folder = parent / name
    if folder.exists() or folder.is_symlink():
        kind = "folder" if folder.is_dir() else "file"
        raise ScaffoldError(f"{folder} already exists (a {kind}); not overwriting it", EXIT_USAGE)
    try:
        # exist_ok=False: if the folder appears between the check above and now, we still refuse.
        folder.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise ScaffoldError(f"{folder} already exists; not overwriting it", EXIT_USAGE) from None
    except OSError as exc:
        raise ScaffoldError(f"cannot create {folder}: {exc.strerror or exc}", EXIT_FAILED) from exc
    try:
        for file in render(name):
            with open(folder / file.name, "x", encoding="utf-8") as out:
                out.write(file.content)
    except OSError as exc:
        # The folder is ours (we just made it): leave nothing half-written behind.
        shutil.rmtree(folder, ignore_errors=True)
        raise ScaffoldError(f"cannot write {folder}: {exc.strerror or exc}", EXIT_FAILED) from exc
    return folder


DESCRIPTION = "Create a function folder NAME with function.yaml, main.py and test_main.py."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``streamworker init`` (shared by the top-level CLI's subparser)."""
    parser.add_argument("name", metavar="NAME", help=f"function name ({NAME_RULE})")
    parser.add_argument(
        "--dir",
        default=".",
        metavar="PARENT",
        help="create NAME inside this folder (default: the current folder)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamworker init", description=DESCRIPTION)
    add_arguments(parser)
    return parser


def main(argv: Sequence[str]) -> int:
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return run(args)


def run(args: argparse.Namespace) -> int:
    """``streamworker init NAME [--dir PARENT]`` with parsed arguments."""
    try:
        folder = scaffold(Path(args.dir), args.name)
    except ScaffoldError as exc:
        print(f"streamworker init: {exc}", file=sys.stderr)
        return exc.exit_code
    print(
        f"created {folder}/ with function.yaml, main.py and test_main.py\n"
        f"  test it:  python -m pytest {folder}\n"
        f"  check it: streamworker validate --config {folder / 'function.yaml'}\n"
        f"  run it:   KAFKA_BROKERS=host:9092 streamworker run --config {folder / 'function.yaml'}\n"
        f"            (consumes topic {args.name!r} as group {args.name!r}; edit function.yaml to change)"
    )
    return EXIT_OK
