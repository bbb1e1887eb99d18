"""Command line: ``streamworker --config function.yaml`` runs a function until SIGTERM/SIGINT.

Exit codes: 0 clean stop; 1 runtime failure; 2 bad command line or configuration; 3 the handler
could not be loaded; 128 + signal number when a second signal forced the exit.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from streamworker import __version__
from streamworker.config import ConfigError, load_config
from streamworker.observability.logging import configure_logging, get_logger

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamworker",
        description="Run a Nuclio-style Python function on Kafka records.",
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


def run() -> None:
    sys.exit(main())
