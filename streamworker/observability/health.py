"""The supervisor's small HTTP server: ``/live``, ``/ready`` and ``/metrics``.

It runs on a daemon thread (``ThreadingHTTPServer``) and reads only what the trigger runners
published to the ``MetricsObserver``, so a slow scrape never touches a poll loop. The socket is bound
when the server is created, so a busy port is reported before any worker or consumer starts.

* ``/live``: 200 while every trigger's poll loop made a pass within ``live_timeout`` (a runner stuck
  in a callback, a deadlock, a wedged client) and no trigger failed (a fatal client error), else
  503. A stopping trigger counts as live: the process is on its way out anyway and a restart would
  only cut the shutdown short.
* ``/ready``: 200 once every trigger joined its consumer group and all its workers finished
  ``init_context``, while no partition is stopped by ``onError: stop`` and no stop was requested;
  else 503. Both answer with a JSON body saying why.
* ``/metrics``: Prometheus text format, or OpenMetrics when the ``Accept`` header asks for it.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from streamworker.observability.metrics import MetricsObserver
from streamworker.snapshots import TriggerSnapshot

DEFAULT_HEALTH_ADDR = "0.0.0.0:8082"
HEALTH_ADDR_ENV = "STREAMWORKER_HEALTH_ADDR"
LIVE_TIMEOUT_ENV = "STREAMWORKER_LIVE_TIMEOUT"
DEFAULT_LIVE_TIMEOUT = "30s"
_OFF_WORDS = frozenset({"off", "none", "disable", "disabled", "false", "no"})
# Each connection holds a thread while it is open. A client that connects and sends nothing (or keeps
# an idle keep-alive connection) is cut after this long, and at most MAX_CONNECTIONS are open at once:
# past that, the oldest is closed to make room, so a probe is always answered at once.
IDLE_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 32


@dataclass(frozen=True)
class HealthAddress:
    host: str
    port: int  # 0: let the OS pick a free port

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_health_address(text: str) -> HealthAddress | None:
    """``HOST:PORT`` (``[::]:8082`` for IPv6, ``:8082`` for every interface), or ``off`` -> None.

    Raises ``ValueError`` with a one-line problem.
    """
    value = text.strip()
    if value.lower() in _OFF_WORDS:
        return None
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT or 'off', got {text!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    host = host.removeprefix("[").removesuffix("]") or "0.0.0.0"
    return HealthAddress(host, port)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reasons: tuple[str, ...]
    triggers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def body(self, what: str) -> bytes:
        status = what if self.ok else f"not {what}"
        document = {"status": status, "reasons": list(self.reasons), "triggers": self.triggers}
        return json.dumps(document, indent=1, sort_keys=False).encode() + b"\n"


def _trigger_detail(snap: TriggerSnapshot) -> dict[str, Any]:
    return {
        "joined": snap.joined,
        "workers_ready": snap.workers_ready,
        "workers_total": snap.workers_total,
        "assigned_partitions": len(snap.partitions),
        "inflight": snap.inflight,
        "stopped_partitions": [f"{p.topic}/{p.partition}" for p in snap.partitions if p.stopped],
        "stopping": snap.stopping,
    }


def liveness(
    triggers: Sequence[str],
    snapshots: Mapping[str, TriggerSnapshot],
    now: float,
    timeout: float,
    started_at: float,
) -> Verdict:
    """Live while every trigger's loop made progress within ``timeout`` seconds.

    Progress is the later of the loop's last pass and the last snapshot: runners publish from inside
    their loops (also the start-up loop that waits for ``init_context``), so a fresh snapshot proves
    the thread is turning. A trigger that has not published yet is measured from ``started_at``.
    """
    reasons = []
    for trigger in triggers:
        snap = snapshots.get(trigger)
        if snap is not None and snap.failed is not None:
            # Checked before ``stopping``: a failed trigger is winding down too, but must be restarted.
            reasons.append(f"trigger {trigger}: failed: {snap.failed}")
            continue
        if snap is not None and snap.stopping:
            continue
        last = started_at if snap is None else max(snap.last_loop_at, snap.taken_at)
        age = now - last
        if age > timeout:
            reasons.append(
                f"trigger {trigger}: poll loop made no progress for {age:.1f}s (limit {timeout:g}s)"
            )
    details = {name: _trigger_detail(snap) for name, snap in snapshots.items()}
    return Verdict(not reasons, tuple(reasons), details)


def readiness(
    triggers: Sequence[str],
    snapshots: Mapping[str, TriggerSnapshot],
    initialised: frozenset[str],
    stopping: bool,
) -> Verdict:
    """Ready once every trigger joined and initialised its workers, with no partition stopped."""
    reasons = []
    if stopping:
        reasons.append("stopping")
    for trigger in triggers:
        snap = snapshots.get(trigger)
        if snap is None:
            reasons.append(f"trigger {trigger}: starting")
            continue
        if snap.stopping and not stopping:
            reasons.append(f"trigger {trigger}: stopping")
        if trigger not in initialised:
            reasons.append(
                f"trigger {trigger}: {snap.workers_ready} of {snap.workers_total} workers "
                "finished init_context"
            )
        if not snap.joined:
            reasons.append(f"trigger {trigger}: not in its consumer group yet (no assignment received)")
        stopped = [p for p in snap.partitions if p.stopped]
        if stopped:
            where = ", ".join(
                f"{p.topic}/{p.partition}" + (f" at offset {p.position}" if p.position is not None else "")
                for p in sorted(stopped, key=lambda p: (p.topic, p.partition))
            )
            reasons.append(f"trigger {trigger}: stopped by onError: stop: {where}")
    details = {name: _trigger_detail(snap) for name, snap in snapshots.items()}
    return Verdict(not reasons, tuple(reasons), details)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hanging client must not keep the process alive at exit
    app: HealthServer
    max_connections = MAX_CONNECTIONS
    # The listen backlog. A full one makes the kernel drop new connections and the client retries a
    # second later, as long as a Kubernetes probe's default timeout: a probe arriving behind a burst of
    # clients (the default 5, or 128, fills up before the accept loop catches up) would fail. Linux
    # caps it at net.core.somaxconn (4096 since 5.4).
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._open_lock = threading.Lock()
        # Open connections, oldest first (dicts keep insertion order).
        self._open: dict[socket.socket, None] = {}

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            while len(self._open) >= self.max_connections:
                # Evict the oldest (almost always idle: requests take milliseconds). Shutting the
                # socket down ends its thread's read at once; the thread then removes it.
                oldest = next(iter(self._open))
                del self._open[oldest]
                try:
                    oldest.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._open[request] = None
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.pop(request, None)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name with getfqdn(), a reverse DNS lookup that can
        # hang for seconds in a container without DNS; the name is only used for CGI variables.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Socket timeout (StreamRequestHandler applies it): an idle or stalled client is disconnected.
    timeout = IDLE_TIMEOUT_S

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _respond(self, send_body: bool) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        content_type = "application/json"
        if path == "/live":
            verdict = app.live()
            status, body = (
                (HTTPStatus.OK if verdict.ok else HTTPStatus.SERVICE_UNAVAILABLE),
                verdict.body("live"),
            )
        elif path == "/ready":
            verdict = app.ready()
            status, body = (
                (HTTPStatus.OK if verdict.ok else HTTPStatus.SERVICE_UNAVAILABLE),
                verdict.body("ready"),
            )
        elif path == "/metrics":
            # OpenMetrics for scrapers that ask for it (exemplars, _created), else the classic format.
            body, content_type = app.observer.render_for(self.headers.get("Accept"))
            status = HTTPStatus.OK
        else:
            status = HTTPStatus.NOT_FOUND
            body = json.dumps({"error": "not found", "paths": ["/live", "/ready", "/metrics"]}).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Probes hit these paths every few seconds; one log line each would drown the real logs.
        return None


class HealthServer:
    """Binds at construction (``OSError`` if the address is busy); ``start``/``stop`` the thread."""

    def __init__(
        self,
        address: HealthAddress,
        observer: MetricsObserver,
        live_timeout: float,
        *,
        idle_timeout: float = IDLE_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.observer = observer
        self.live_timeout = live_timeout
        server_class = _Server6 if ":" in address.host else _Server
        handler = type("_BoundHandler", (_Handler,), {"timeout": idle_timeout})
        self._server = server_class((address.host, address.port), handler)
        self._server.max_connections = max_connections
        self._server.app = self
        bound = self._server.server_address
        self.address = HealthAddress(address.host, int(bound[1]))
        self._thread: threading.Thread | None = None

    def live(self) -> Verdict:
        observer = self.observer
        return liveness(
            observer.triggers, observer.snapshots(), observer.clock(), self.live_timeout, observer.started_at
        )

    def ready(self) -> Verdict:
        observer = self.observer
        return readiness(observer.triggers, observer.snapshots(), observer.initialised(), observer.stopping)

    def mark_stopping(self) -> None:
        self.observer.mark_stopping()

    def start(self) -> None:
        thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="health-http", daemon=True
        )
        thread.start()
        self._thread = thread

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice or without ``start``."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread = None
        self._server.server_close()
