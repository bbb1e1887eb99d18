"""``streamworker validate --config FILE``: check a function without connecting to any broker.

Checks, in order, and stops at the first step that fails (exit code 2, problems on stderr):

1. the function.yaml itself (schema, ``${VAR}`` references, files named by the sasl/tls sections):
   every problem in the file, one line each;
2. the Kafka client settings, by librdkafka itself (a client with no bootstrap servers connects to
   nothing but parses every property and loads the TLS files);
3. that the handler imports and is callable, in a child process with ``spec.env`` applied, so no
   user code runs in this process: one line naming the file and line of the error, then its
   traceback. ``init_context`` is not called (it usually connects to other services).

Exit 0 prints a short summary on stdout; warnings go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from streamworker.config import ConfigError, FunctionConfig, load_config, parse_duration
from streamworker.config.kafka_settings import client_settings_problem

EXIT_OK = 0
EXIT_INVALID = 2
DEFAULT_IMPORT_TIMEOUT = "60s"
DESCRIPTION = "Check a function.yaml and that its handler imports, without connecting to Kafka."
CONFIG_ENV = "STREAMWORKER_CONFIG"
DEFAULT_CONFIG = "function.yaml"


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config``, defaulting to ``$STREAMWORKER_CONFIG`` or ./function.yaml (run and validate)."""
    parser.add_argument(
        "--config",
        "-c",
        default=os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG,
        metavar="FILE",
        help=f"path to the function.yaml (default: ${CONFIG_ENV} or ./{DEFAULT_CONFIG})",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``streamworker validate`` (shared by the top-level CLI's subparser)."""
    add_config_argument(parser)
    parser.add_argument(
        "--import-timeout",
        default=DEFAULT_IMPORT_TIMEOUT,
        metavar="DURATION",
        help=f"give up on a handler import that takes longer (default: {DEFAULT_IMPORT_TIMEOUT})",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamworker validate", description=DESCRIPTION)
    add_arguments(parser)
    return parser


def print_config_error(error: ConfigError) -> None:
    """Every problem of a function.yaml, one ``streamworker: file: field: problem`` line each."""
    for each in error.errors:
        print(f"streamworker: {each.line()}", file=sys.stderr)


@dataclass(frozen=True)
class HandlerProblem:
    message: str  # one line, naming file and line when the error is in the user's code
    traceback: str | None = None


def handler_problem(function: FunctionConfig, timeout: float) -> HandlerProblem | None:
    """Import the handler in a child process; return the loader's error, or None."""
    env = {**os.environ, **function.env}
    with tempfile.TemporaryDirectory(prefix="streamworker-validate-") as folder:
        result_file = Path(folder) / "result.json"
        command = [
            sys.executable,
            "-m",
            "streamworker.worker.check",
            str(result_file),
            str(function.code_dir),
            str(function.handler),
        ]
        try:
            completed = subprocess.run(
                command, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return HandlerProblem(f"importing handler '{function.handler}' took longer than {timeout:g}s")
        try:
            outcome = json.loads(result_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            # The import killed the interpreter (os._exit, a crash in an extension module, ...).
            tail = completed.stderr.decode(errors="replace").strip().splitlines()[-1:]
            detail = f": {tail[0]}" if tail else ""
            code = completed.returncode
            return HandlerProblem(
                f"importing handler '{function.handler}' ended the process (exit {code}){detail}"
            )
    if outcome.get("ok"):
        return None
    trace = outcome.get("traceback")
    return HandlerProblem(
        str(outcome.get("error", "the handler could not be loaded")), str(trace) if trace else None
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    return run(parser.parse_args(list(sys.argv[1:] if argv is None else argv)), parser)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``streamworker validate`` with parsed arguments; ``parser`` reports usage errors."""
    try:
        timeout = parse_duration(args.import_timeout)
    except ValueError as exc:
        parser.error(f"--import-timeout: {exc}")
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        print_config_error(exc)
        return EXIT_INVALID
    for warning in loaded.warnings:
        print(f"streamworker: warning: {warning}", file=sys.stderr)

    function = loaded.config
    problem = client_settings_problem(function)
    if problem is not None:
        print(f"streamworker: {args.config}: {problem}", file=sys.stderr)
        return EXIT_INVALID
    failure = handler_problem(function, timeout)
    if failure is not None:
        print(f"streamworker: {args.config}: spec.handler: {failure.message}", file=sys.stderr)
        if failure.traceback:
            print(failure.traceback.rstrip("\n"), file=sys.stderr)
        return EXIT_INVALID

    triggers = ", ".join(
        f"{t.name} (topics {','.join(t.attributes.topics)}, group {t.attributes.consumer_group}, "
        f"{t.num_workers} workers)"
        for t in function.triggers
    )
    print(f"{args.config}: ok: function {function.name}, handler {function.handler}, triggers: {triggers}")
    return EXIT_OK
