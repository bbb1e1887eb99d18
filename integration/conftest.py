"""Fixtures and helpers for the integration suite (every test here gets the ``integration`` marker).

Broker: ``STREAMWORKER_TEST_BROKERS=host:port`` runs the suite against an existing Kafka-compatible
broker (e.g. Redpanda from ``integration/docker-compose.yml``); otherwise one local Tansu broker is
started for the whole session (memory storage, dies with pytest even on SIGKILL).

Rules for tests (see ``/work/shared/notes/broker.md``):

* unique topic and group names per test: ``unique("orders")``; never delete topics;
* one timeout profile per consumer group: every member (streamworker or plain consumer) of a group
  uses the same ``quick_profile()`` / ``QUICK_CONSUMER_CONFIG`` (or the "fast" pair, needed for
  static membership);
* take end offsets from :func:`devtools.broker.produce` (delivery reports), not ListOffsets;
* wait for conditions with :func:`wait_until` (bounded), never with a bare sleep.

Tests should get the helpers through fixtures (``wait_until``, ``quick_profile``, ``function_dir``,
``streamworker_process``): ``from conftest import ...`` depends on which ``conftest`` module pytest
imported last when ``tests/`` has one too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest
import yaml

from devtools.broker import LocalBroker, die_with_parent_preexec_fn

INTEGRATION_DIR = Path(__file__).resolve().parent
BROKERS_ENV = "STREAMWORKER_TEST_BROKERS"

#: librdkafka settings of the broker note's "quick" profile: join ~1.1 s, crash detected ~3.2 s.
#: Not usable with static membership (group.instance.id): use the "fast" profile there.
QUICK_CONSUMER_CONFIG: dict[str, int] = {
    "session.timeout.ms": 2000,
    "heartbeat.interval.ms": 400,
    "max.poll.interval.ms": 30000,
}
#: librdkafka settings of the "fast" profile (needed for static membership).
FAST_CONSUMER_CONFIG: dict[str, int] = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 500,
    "max.poll.interval.ms": 30000,
}

T = TypeVar("T")


def quick_profile() -> dict[str, str]:
    """The "quick" profile as function.yaml trigger attributes (same timeouts as QUICK_CONSUMER_CONFIG)."""
    return {"sessionTimeout": "2s", "heartbeatInterval": "400ms", "maxPollInterval": "30s"}


def fast_profile() -> dict[str, str]:
    """The "fast" profile as function.yaml trigger attributes (same timeouts as FAST_CONSUMER_CONFIG)."""
    return {"sessionTimeout": "6s", "heartbeatInterval": "500ms", "maxPollInterval": "30s"}


# --------------------------------------------------------------------------------------------- hooks


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs a Kafka-protocol broker")
    # Every streamworker the tests start serves /live, /ready and /metrics; on the default 0.0.0.0:8082
    # two of them (or anything else on the machine) would collide and exit 2. Port 0 picks a free port
    # (logged as "health server listening"); a test that wants a fixed address passes --health-addr.
    os.environ.setdefault("STREAMWORKER_HEALTH_ADDR", "127.0.0.1:0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees every collected item (tests/ too): mark only the ones under integration/.
    for item in items:
        if item.path.resolve().is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


# -------------------------------------------------------------------------------------------- broker


@pytest.fixture(scope="session")
def broker_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``bootstrap.servers`` of the broker under test: $STREAMWORKER_TEST_BROKERS or a session Tansu."""
    external = os.environ.get(BROKERS_ENV, "").strip()
    if external:
        yield external
        return
    log_path = tmp_path_factory.getbasetemp() / "tansu.log"
    with LocalBroker(log_path=log_path) as broker:
        yield broker.bootstrap


# ------------------------------------------------------------------------------------------- naming


def slugify(text: str, max_len: int = 40) -> str:
    """Lowercase ``[a-z0-9-]`` slug of *text* (legal in Kafka topic and group names)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "test"


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Factory of unique names: ``unique("orders")`` -> ``"orders-<test-name-slug>-<8 hex>"``.

    Use it for every topic and every consumer group: Tansu keeps group state (and fixes a group's
    session timeout) for the broker's lifetime, and an external broker keeps everything.
    """
    slug = slugify(request.node.name)

    def make(prefix: str) -> str:
        return f"{prefix}-{slug}-{uuid.uuid4().hex[:8]}"

    return make


# ---------------------------------------------------------------------------------------- waiting


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """Poll *predicate* until it returns a truthy value and return that value.

    Raises ``AssertionError(message)`` when *timeout* seconds pass first (*message* may be a
    callable, evaluated only then, to describe the last observed state). Exceptions raised by
    *predicate* propagate.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            text = message() if callable(message) else message
            raise AssertionError(f"{text} (waited {timeout:g}s)")
        time.sleep(min(interval, remaining))  # a poll interval, not synchronisation


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., Any]:
    """The :func:`wait_until` helper, as a fixture."""
    return wait_until


@pytest.fixture(name="quick_profile")
def quick_profile_fixture() -> dict[str, str]:
    """A fresh copy of :func:`quick_profile` (function.yaml trigger attributes)."""
    return quick_profile()


# ----------------------------------------------------------------------------------- function dirs


def write_function(
    tmp_path: Path,
    handler_source: str,
    config: Mapping[str, Any],
    *,
    name: str = "function",
    files: Mapping[str, str] | None = None,
) -> Path:
    """Write ``<tmp_path>/<name>/main.py`` and ``function.yaml``; return the config's path.

    *handler_source* is dedented. *config* is dumped as YAML in the given key order. *files* adds
    more files (relative path -> text), e.g. a package for a ``pkg.module:handler`` handler string.
    """
    folder = tmp_path / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text(textwrap.dedent(handler_source), encoding="utf-8")
    for rel, text in (files or {}).items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text), encoding="utf-8")
    config_path = folder / "function.yaml"
    config_path.write_text(yaml.safe_dump(_plain(config), sort_keys=False), encoding="utf-8")
    return config_path


def _plain(value: Any) -> Any:
    """Mappings/sequences to dicts/lists, so ``yaml.safe_dump`` accepts any Mapping."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@pytest.fixture
def function_dir(tmp_path: Path) -> Callable[..., Path]:
    """``function_dir(handler_source, config, name="function", files=None) -> config path`` in tmp_path."""

    def make(
        handler_source: str,
        config: Mapping[str, Any],
        name: str = "function",
        files: Mapping[str, str] | None = None,
    ) -> Path:
        return write_function(tmp_path, handler_source, config, name=name, files=files)

    return make


# ------------------------------------------------------------------------------ streamworker process


def _descendants(pid: int) -> list[int]:
    """All live descendants of *pid* (Linux /proc walk; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) >= 2:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


class StreamworkerProcess:
    """``python -m streamworker --config PATH`` in its own session, with its output captured.

    stdout and stderr are read by background threads into ``stdout_lines`` / ``stderr_lines``;
    every line of either stream that parses as a JSON object is also appended to ``logs``. The
    process gets SIGKILL if pytest dies, and :meth:`cleanup` (run by the ``streamworker_process``
    fixture at teardown) kills its whole process group and every descendant.

    Args:
        config_path: the function.yaml to run.
        env: variables added to (or overriding) this process's environment.
        args: extra CLI arguments.
        cwd: working directory; default: the config's folder.
        command: replace the whole command line (for testing this helper itself).
    """

    def __init__(
        self,
        config_path: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        *,
        args: Sequence[str] = (),
        cwd: str | os.PathLike[str] | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.config_path = Path(config_path)
        self.argv: list[str] = (
            list(command)
            if command is not None
            else [sys.executable, "-m", "streamworker", "--config", str(self.config_path), *args]
        )
        full_env = dict(os.environ)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        full_env.update(env or {})
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self.logs: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=str(cwd) if cwd is not None else str(self.config_path.parent),
            start_new_session=True,
            preexec_fn=die_with_parent_preexec_fn(),
        )
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._readers = [
            threading.Thread(
                target=self._read, args=(self._proc.stdout, self.stdout_lines), daemon=True, name="sw-stdout"
            ),
            threading.Thread(
                target=self._read, args=(self._proc.stderr, self.stderr_lines), daemon=True, name="sw-stderr"
            ),
        ]
        for reader in self._readers:
            reader.start()

    # -- state -----------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit code (negative: killed by that signal), or ``None`` while it runs."""
        return self._proc.poll()

    @property
    def running(self) -> bool:
        return self._proc.poll() is None

    def _read(self, stream: IO[bytes], lines: list[str]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            parsed: Any = None
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    parsed = json.loads(line)
            with self._cond:
                lines.append(line)
                if isinstance(parsed, dict):
                    self.logs.append(parsed)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _streams_done(self) -> bool:
        return not any(reader.is_alive() for reader in self._readers)

    def output(self, last: int = 60) -> str:
        """The last *last* lines of stdout and of stderr, for assertion messages."""
        with self._cond:
            out, err = self.stdout_lines[-last:], self.stderr_lines[-last:]
        return (
            f"--- {' '.join(self.argv)} (pid {self.pid}, rc {self.returncode}) ---\n"
            + "--- stdout (tail) ---\n"
            + "\n".join(out)
            + "\n--- stderr (tail) ---\n"
            + "\n".join(err)
        )

    # -- waiting ---------------------------------------------------------------------------------

    @staticmethod
    def _matcher(predicate: Callable[[dict[str, Any]], bool] | str) -> Callable[[dict[str, Any]], bool]:
        if callable(predicate):
            return predicate
        name = predicate
        return lambda log: name in (log.get("event"), log.get("msg"), log.get("message"))

    def wait_for_log(
        self,
        predicate: Callable[[dict[str, Any]], bool] | str,
        timeout: float = 30.0,
        *,
        start: int = 0,
    ) -> dict[str, Any]:
        """Wait for a JSON log line matching *predicate*; return it.

        *predicate* is a function of the parsed line, or a string matched against its
        ``event``/``msg``/``message`` field. Only ``logs[start:]`` are considered (take
        ``start=len(proc.logs)`` before an action to wait for what follows it).

        Raises AssertionError (with the output tail) on timeout or if the process exits first.
        """
        match = self._matcher(predicate)
        deadline = time.monotonic() + timeout
        checked = start
        with self._cond:
            while True:
                while checked < len(self.logs):
                    log = self.logs[checked]
                    checked += 1
                    if match(log):
                        return log
                if self._streams_done():
                    reason = f"process exited (rc {self._proc.poll()}) before the log line appeared"
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    reason = f"no matching log line within {timeout:g}s"
                    break
                self._cond.wait(min(remaining, 0.5))
        raise AssertionError(f"{reason}: {predicate!r}\n{self.output()}")

    def wait_for_output(self, predicate: Callable[[str], bool] | str, timeout: float = 30.0) -> str:
        """Wait for a raw stdout/stderr line containing *predicate* (or matching it); return it."""
        match: Callable[[str], bool] = (
            predicate if callable(predicate) else (lambda line, text=predicate: text in line)
        )
        deadline = time.monotonic() + timeout
        seen_out = seen_err = 0
        with self._cond:
            while True:
                for line in self.stdout_lines[seen_out:] + self.stderr_lines[seen_err:]:
                    if match(line):
                        return line
                seen_out, seen_err = len(self.stdout_lines), len(self.stderr_lines)
                if self._streams_done():
                    reason = f"process exited (rc {self._proc.poll()}) before the line appeared"
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    reason = f"no matching output line within {timeout:g}s"
                    break
                self._cond.wait(min(remaining, 0.5))
        raise AssertionError(f"{reason}: {predicate!r}\n{self.output()}")

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; return its exit code (AssertionError on timeout)."""
        try:
            returncode = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"process still running after {timeout:g}s\n{self.output()}") from None
        self._join_readers(5.0)
        return returncode

    # -- stopping --------------------------------------------------------------------------------

    def send_signal(self, sig: int = signal.SIGTERM, *, group: bool = False) -> None:
        """Send *sig* to the main process (or to its whole process group, like a terminal's Ctrl-C)."""
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self._proc.pid, sig)
            else:
                self._proc.send_signal(sig)

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 30.0, *, group: bool = False) -> int:
        """Send *sig* and wait up to *timeout* s for the exit; return the exit code.

        On timeout the process tree is killed and AssertionError is raised with the output tail.
        """
        if self.running:
            self.send_signal(sig, group=group)
        try:
            returncode = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"process did not exit within {timeout:g}s of signal {sig}\n{self.output()}"
            ) from None
        self._join_readers(5.0)
        return returncode

    def kill(self) -> None:
        """SIGKILL the process, every descendant and its whole process group; reap it."""
        victims = _descendants(self._proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)

    def _join_readers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for reader in self._readers:
            reader.join(max(0.0, deadline - time.monotonic()))

    def cleanup(self) -> None:
        """Kill whatever is left of the process tree (even after a clean exit) and close the pipes."""
        self.kill()
        self._join_readers(2.0)
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@pytest.fixture
def streamworker_process() -> Iterator[Callable[..., StreamworkerProcess]]:
    """Factory ``start(config_path, env=None, *, args=(), cwd=None) -> StreamworkerProcess``.

    Every process started through it is killed (whole tree) at teardown, whatever the test did;
    their output tails are printed then, so a failing test's report shows them.
    """
    started: list[StreamworkerProcess] = []

    def start(
        config_path: str | os.PathLike[str], env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> StreamworkerProcess:
        proc = StreamworkerProcess(config_path, env, **kwargs)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.cleanup()
            print(proc.output())
