"""Command line: ``streamworker run|validate|init|version``.

``streamworker run`` runs a function until SIGTERM/SIGINT; ``streamworker --config F`` (no
subcommand) still means ``run``. ``validate`` checks a config and that its handler imports, with no
broker; ``init NAME`` scaffolds a function folder; ``version`` (or ``--version``) prints the versions
of streamworker, Python, confluent-kafka and librdkafka. ``--config`` defaults to
``$STREAMWORKER_CONFIG`` or ``./function.yaml``; ``--log-level`` / ``--log-format`` to
``$STREAMWORKER_LOG_LEVEL`` / ``$STREAMWORKER_LOG_FORMAT``.

Exit codes: 0 clean stop; 1 runtime failure; 2 bad command line or configuration; 3 the handler
could not be loaded; 128 + signal number when a second signal forced the exit.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
from collections.abc import Mapping, Sequence

from streamworker import __version__, scaffold, validate
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
LOG_LEVEL_ENV = "STREAMWORKER_LOG_LEVEL"
LOG_FORMAT_ENV = "STREAMWORKER_LOG_FORMAT"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")
SUBCOMMANDS = ("run", "validate", "init", "version")


def versions() -> str:
    """One line: streamworker's version and those of what it runs on (for bug reports)."""
    import confluent_kafka  # only here: the other commands do not need it loaded

    # confluent_kafka.version() is a tuple in some releases and a str in others; the metadata is not.
    client = importlib.metadata.version("confluent-kafka")
    return (
        f"streamworker {__version__} (Python {platform.python_version()}, "
        f"confluent-kafka {client}, librdkafka {confluent_kafka.libversion()[0]})"
    )


class _VersionAction(argparse.Action):
    """``--version``: like argparse's, but the text is computed only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print versions and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kwargs: object) -> None:
        print(versions())
        parser.exit()


def _add_run_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    validate.add_config_argument(parser)
    parser.add_argument(
        "--log-level",
        default=environ.get(LOG_LEVEL_ENV, "").strip().lower() or "info",
        choices=LOG_LEVELS,
        help=f"minimum level of log lines (default: ${LOG_LEVEL_ENV} or info)",
    )
    parser.add_argument(
        "--log-format",
        default=environ.get(LOG_FORMAT_ENV, "").strip().lower() or "json",
        choices=LOG_FORMATS,
        help=f"json lines or a human-readable console format (default: ${LOG_FORMAT_ENV} or json)",
    )
    parser.add_argument(
        "--health-addr",
        default=environ.get(HEALTH_ADDR_ENV, DEFAULT_HEALTH_ADDR),
        metavar="HOST:PORT",
        help=f"where /live, /ready and /metrics listen; port 0 picks a free port, 'off' disables "
        f"(default: ${HEALTH_ADDR_ENV} or {DEFAULT_HEALTH_ADDR})",
    )
    parser.add_argument(
        "--live-timeout",
        default=environ.get(LIVE_TIMEOUT_ENV, DEFAULT_LIVE_TIMEOUT),
        metavar="DURATION",
        help=f"/live fails when a trigger's poll loop made no progress for this long "
        f"(default: ${LIVE_TIMEOUT_ENV} or {DEFAULT_LIVE_TIMEOUT})",
    )


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="streamworker",
        description="Run a Nuclio-style Python function on Kafka records.",
        epilog="'streamworker --config FILE' without a command means 'streamworker run --config FILE'.",
    )
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run_parser = commands.add_parser(
        "run",
        help="run the function until SIGTERM/SIGINT",
        description="Run the function until SIGTERM/SIGINT.",
    )
    _add_run_arguments(run_parser, env)
    validate_parser = commands.add_parser(
        "validate",
        help="check function.yaml and the handler import, no broker",
        description=validate.DESCRIPTION,
    )
    validate.add_arguments(validate_parser)
    init_parser = commands.add_parser(
        "init", help="create a function folder", description=scaffold.DESCRIPTION
    )
    scaffold.add_arguments(init_parser)
    commands.add_parser("version", help="print versions", description="Print versions and exit.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    # Before subcommands, `streamworker --config F` was how to run a function: it still is.
    if not arguments or (
        arguments[0] not in SUBCOMMANDS and arguments[0] not in ("-h", "--help", "--version")
    ):
        arguments = ["run", *arguments]
    parser = build_parser()
    args = parser.parse_args(arguments)
    if args.command == "version":
        print(versions())
        return 0
    if args.command == "validate":
        return validate.run(args, parser)
    if args.command == "init":
        return scaffold.run(args)
    return run(args, parser)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``streamworker run``: run the function until SIGTERM/SIGINT."""
    # argparse checks choices given on the command line, not defaults: a value that is not a choice
    # came from the environment variable.
    for value, variable, choices in (
        (args.log_level, LOG_LEVEL_ENV, LOG_LEVELS),
        (args.log_format, LOG_FORMAT_ENV, LOG_FORMATS),
    ):
        if value not in choices:
            parser.error(f"${variable}: invalid choice {value!r} (choose from {', '.join(choices)})")
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
        validate.print_config_error(exc)
        return EXIT_CONFIG
    for warning in loaded.warnings:
        log.warning(warning)
    problem = client_settings_problem(loaded.config)
    if problem is not None:
        print(f"streamworker: {args.config}: {problem}", file=sys.stderr)
        return EXIT_CONFIG

    from streamworker.observability.metrics import MetricsObserver
    from streamworker.supervisor.app import Supervisor
    from streamworker.supervisor.gc_tuning import tune_garbage_collector
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
    # This process is the supervisor from here on (everything is imported and parsed).
    tune_garbage_collector()
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
