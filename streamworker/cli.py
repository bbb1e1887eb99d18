"""Command line: ``streamworker --config function.yaml`` runs a function until SIGTERM/SIGINT.

Subcommands: ``streamworker run --config F`` (the default, same as without ``run``),
``streamworker validate --config F`` (check a config and that its handler imports, no broker) and
``streamworker init NAME`` (scaffold a function folder). Each lives in its own module with a
``main(argv) -> int``.

Exit codes: 0 clean stop; 1 runtime failure; 2 bad command line or configuration; 3 the handler
could not be loaded; 128 + signal number when a second signal forced the exit.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from streamworker import __version__
from streamworker.config import ConfigError, load_config
from streamworker.observability.logging import configure_logging, get_logger

EXIT_CONFIG = 2

# Subcommand -> module with ``main(argv: Sequence[str]) -> int``; loaded only when used.
SUBCOMMANDS = {"validate": "streamworker.validate", "init": "streamworker.scaffold"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamworker",
        description="Run a Nuclio-style Python function on Kafka records.",
        epilog="other commands: 'streamworker validate --config FILE', 'streamworker init NAME'",
    )
    parser.add_argument("--version", action="version", version=f"streamworker {__version__}")
    parser.add_argument("--config", "-c", required=True, help="path to the function.yaml")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="minimum level of log lines (default: info)",
    )
    parser.add_argument(
        "--log-format",
        default="json",
        choices=["json", "console"],
        help="json lines (default) or a human-readable console format",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in SUBCOMMANDS:
        command = importlib.import_module(SUBCOMMANDS[arguments[0]])
        code: int = command.main(arguments[1:])
        return code
    if arguments and arguments[0] == "run":
        arguments = arguments[1:]
    return run(arguments)


def run(argv: Sequence[str]) -> int:
    """``streamworker [run] --config FILE``: run the function until SIGTERM/SIGINT."""
    args = _parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    log = get_logger()
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        print(f"streamworker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in loaded.warnings:
        log.warning(warning)

    from streamworker.supervisor.app import Supervisor
    from streamworker.supervisor.runner import RunnerOptions

    return Supervisor(
        loaded.config, RunnerOptions(log_level=args.log_level, log_format=args.log_format)
    ).run()


def entry_point() -> None:
    sys.exit(main())
