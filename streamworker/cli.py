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
import os
import sys
from collections.abc import Sequence

from streamworker import __version__
from streamworker.config import ConfigError, load_config, parse_duration
from streamworker.config.kafka_settings import client_settings_problem
from streamworker.observability.health import (
    DEFAULT_HEALTH_ADDR,
    DEFAULT_LIVE_TIMEOUT,
    HEALTH_ADDR_ENV,
    LIVE_TIMEOUT_ENV,
    HealthAddress,
    HealthServer,
    parse_health_address,
)
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
    parser.add_argument(
        "--health-addr",
        default=os.environ.get(HEALTH_ADDR_ENV, DEFAULT_HEALTH_ADDR),
        metavar="HOST:PORT",
        help=f"where /live, /ready and /metrics listen; port 0 picks a free port, 'off' disables "
        f"(default: ${HEALTH_ADDR_ENV} or {DEFAULT_HEALTH_ADDR})",
    )
    parser.add_argument(
        "--live-timeout",
        default=os.environ.get(LIVE_TIMEOUT_ENV, DEFAULT_LIVE_TIMEOUT),
        metavar="DURATION",
        help=f"/live fails when a trigger's poll loop made no progress for this long "
        f"(default: ${LIVE_TIMEOUT_ENV} or {DEFAULT_LIVE_TIMEOUT})",
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
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        health_address = parse_health_address(args.health_addr)
    except ValueError as exc:
        parser.error(f"--health-addr: {exc}")
    try:
        live_timeout = parse_duration(args.live_timeout)
    except ValueError as exc:
        parser.error(f"--live-timeout: {exc}")
    configure_logging(args.log_level, args.log_format)
    log = get_logger()
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        print(f"streamworker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in loaded.warnings:
        log.warning(warning)
    problem = client_settings_problem(loaded.config)
    if problem is not None:
        print(f"streamworker: {args.config}: {problem}", file=sys.stderr)
        return EXIT_CONFIG

    from streamworker.observability.metrics import MetricsObserver
    from streamworker.supervisor.app import Supervisor
    from streamworker.supervisor.runner import RunnerOptions

    options = RunnerOptions(log_level=args.log_level, log_format=args.log_format)
    health: HealthServer | None = None
    if health_address is not None:
        observer = MetricsObserver(loaded.config.name, [t.name for t in loaded.config.triggers])
        try:
            health = HealthServer(health_address, observer, live_timeout)
        except OSError as exc:
            print(f"streamworker: {_bind_problem(health_address, exc)}", file=sys.stderr)
            return EXIT_CONFIG
        options.observer = observer
    try:
        return Supervisor(loaded.config, options, health=health).run()
    finally:
        if health is not None:
            health.stop()


def _bind_problem(address: HealthAddress, exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    return (
        f"cannot serve health checks on {address}: {reason} "
        f"(choose another address with --health-addr or ${HEALTH_ADDR_ENV}, or 'off')"
    )


def entry_point() -> None:
    sys.exit(main())
