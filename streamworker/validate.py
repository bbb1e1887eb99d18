"""``streamworker validate --config FILE``: check a function without connecting to any broker.

Checks, in order, and stops at the first problem (one line on stderr, exit code 2):

1. the function.yaml itself (schema, ``${VAR}`` references, files named by the sasl/tls sections);
2. the Kafka client settings, by librdkafka itself (a client with no bootstrap servers connects to
   nothing but parses every property and loads the TLS files);
3. that the handler imports and is callable, in a child process with ``spec.env`` applied, so no
   user code runs in this process. ``init_context`` is not called.

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
from pathlib import Path

from streamworker.config import ConfigError, FunctionConfig, load_config, parse_duration
from streamworker.config.kafka_settings import client_settings_problem

EXIT_OK = 0
EXIT_INVALID = 2
DEFAULT_IMPORT_TIMEOUT = "60s"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamworker validate",
        description="Check a function.yaml and that its handler imports, without connecting to Kafka.",
    )
    parser.add_argument("--config", "-c", required=True, help="path to the function.yaml")
    parser.add_argument(
        "--import-timeout",
        default=DEFAULT_IMPORT_TIMEOUT,
        metavar="DURATION",
        help=f"give up on a handler import that takes longer (default: {DEFAULT_IMPORT_TIMEOUT})",
    )
    return parser


def handler_problem(function: FunctionConfig, timeout: float) -> str | None:
    """Import the handler in a child process; return the loader's error message, or None."""
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
            return f"importing handler '{function.handler}' took longer than {timeout:g}s"
        try:
            outcome = json.loads(result_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            # The import killed the interpreter (os._exit, a crash in an extension module, ...).
            tail = completed.stderr.decode(errors="replace").strip().splitlines()[-1:]
            detail = f": {tail[0]}" if tail else ""
            code = completed.returncode
            return f"importing handler '{function.handler}' ended the process (exit {code}){detail}"
    if outcome.get("ok"):
        return None
    return str(outcome.get("error", "the handler could not be loaded"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        timeout = parse_duration(args.import_timeout)
    except ValueError as exc:
        parser.error(f"--import-timeout: {exc}")
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        print(f"streamworker: {exc}", file=sys.stderr)
        return EXIT_INVALID
    for warning in loaded.warnings:
        print(f"streamworker: warning: {warning}", file=sys.stderr)

    function = loaded.config
    problem = client_settings_problem(function)
    if problem is not None:
        print(f"streamworker: {args.config}: {problem}", file=sys.stderr)
        return EXIT_INVALID
    problem = handler_problem(function, timeout)
    if problem is not None:
        print(f"streamworker: {args.config}: spec.handler: {problem}", file=sys.stderr)
        return EXIT_INVALID

    triggers = ", ".join(
        f"{t.name} (topics {','.join(t.attributes.topics)}, group {t.attributes.consumer_group}, "
        f"{t.num_workers} workers)"
        for t in function.triggers
    )
    print(f"{args.config}: ok: function {function.name}, handler {function.handler}, triggers: {triggers}")
    return EXIT_OK
