"""Cut the connection between streamworker and the broker, while the broker keeps its data.

Tansu keeps everything in memory, so a broker outage is simulated on the wire instead of by a restart:

    streamworker --> CutProxy (this file, own process) --> Tansu proxy --> broker (any Kafka-protocol one)

* :class:`CutProxy` is a plain loopback TCP relay run as its own process (``python chaos_proxy.py
  UPSTREAM_HOST:PORT``), so it never competes with the test for the GIL. It reads commands on stdin:
  ``cut`` resets every open connection and from then on resets every new one at once (clients see
  "connection refused/reset" immediately, as when a broker is down); ``restore`` relays again. Each
  command is answered with one line on stdout.
* Clients learn the broker addresses from Metadata and FindCoordinator answers, so a plain relay in front
  of the broker would only carry the bootstrap connection. The Tansu binary's ``proxy`` subcommand is a
  Kafka-aware relay that advertises a given address instead of the origin's; it advertises the
  CutProxy's port, so every connection streamworker opens passes through the CutProxy.

Only streamworker is pointed at :attr:`BrokerLink.bootstrap`; the test's producer and its committed-
offset sampler talk to the broker directly and keep working during a cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

# ------------------------------------------------------------------------------------ proxy process


class CutProxy:
    """An asyncio TCP relay on 127.0.0.1 that can reset all its connections on demand."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.cut = False
        self.writers: set[asyncio.StreamWriter] = set()
        self.refused = 0

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        """Close with RST (SO_LINGER 0), as a dead host's kernel or a killed broker would."""
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while not self.cut:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            self.refused += 1
            self._reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self._reset(writer)
            return
        pair = {writer, up_writer}
        self.writers |= pair
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self.writers -= pair

    def do_cut(self) -> int:
        self.cut = True
        count = len(self.writers)
        for writer in list(self.writers):
            self._reset(writer)
        self.writers.clear()
        return count

    async def serve(self) -> None:
        server = await asyncio.start_server(self._client, "127.0.0.1", 0, reuse_address=True)
        port = server.sockets[0].getsockname()[1]
        print(f"listening {port}", flush=True)
        loop = asyncio.get_running_loop()
        stdin = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        async with server:
            while True:
                line = (await stdin.readline()).decode().strip()
                if not line:  # EOF: the test went away
                    return
                if line == "cut":
                    print(f"cut {self.do_cut()}", flush=True)
                elif line == "restore":
                    self.cut = False
                    print(f"restored {self.refused}", flush=True)
                    self.refused = 0
                else:
                    print(f"unknown command {line!r}", flush=True)


def _main() -> None:
    host, _, port = sys.argv[1].rpartition(":")
    asyncio.run(CutProxy((host, int(port))).serve())


# ------------------------------------------------------------------------------------ test side


class BrokerLink:
    """The CutProxy process plus a Tansu proxy advertising it; ``bootstrap`` is the address to give
    streamworker. Both processes die with the thread that started them (PR_SET_PDEATHSIG)."""

    def __init__(self, origin: str, log_dir: Path) -> None:
        self.origin = origin
        self.log_dir = log_dir
        self._relay: subprocess.Popen[str] | None = None
        self._kafka_proxy: subprocess.Popen[bytes] | None = None
        self._relay_port = 0
        self.cut_active = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self._relay_port}"

    def start(self, timeout: float = 20.0) -> BrokerLink:
        from devtools.broker import die_with_parent_preexec_fn, free_port, resolve_tansu_binary

        binary = resolve_tansu_binary()
        problems: list[str] = []
        for _ in range(4):  # the free port for the Tansu proxy may be taken meanwhile: try another
            kafka_port = free_port()
            self._relay = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), f"127.0.0.1:{kafka_port}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
                preexec_fn=die_with_parent_preexec_fn(),
            )
            self._relay_port = int(self._reply("listening", 10.0).split()[1])
            env = {**os.environ, "RUST_LOG": "warn", "NO_COLOR": "1"}
            env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
            log: IO[bytes] = open(self.log_dir / "tansu-proxy.log", "ab")  # noqa: SIM115 - closed by the child
            with log:
                self._kafka_proxy = subprocess.Popen(
                    [
                        binary,
                        "proxy",
                        "--listener-url",
                        f"tcp://127.0.0.1:{kafka_port}",
                        "--advertised-listener-url",
                        f"tcp://127.0.0.1:{self._relay_port}",
                        "--origin-url",
                        f"tcp://{self.origin}",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    preexec_fn=die_with_parent_preexec_fn(),
                )
            problem = self._wait_ready(timeout)
            if problem is None:
                return self
            problems.append(problem)
            self.close()
        raise RuntimeError("could not start the broker proxies: " + "; ".join(problems))

    def _wait_ready(self, timeout: float) -> str | None:
        """Bounded: Metadata through the relay lists the relay itself as the broker."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(
            {"bootstrap.servers": self.bootstrap, "socket.connection.setup.timeout.ms": 1000, "log_level": 0}
        )
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            assert self._kafka_proxy is not None
            if self._kafka_proxy.poll() is not None:
                return f"tansu proxy exited with {self._kafka_proxy.returncode}"
            try:
                metadata = admin.list_topics(timeout=1.0)
            except Exception as exc:  # KafkaException: not up yet
                last = str(exc)
                continue
            advertised = {f"{b.host}:{b.port}" for b in metadata.brokers.values()}
            if advertised == {self.bootstrap}:
                return None
            return f"the proxy advertises {advertised}, not {self.bootstrap}"
        return f"no Metadata through the proxies within {timeout:g}s ({last})"

    def _reply(self, prefix: str, timeout: float) -> str:
        assert self._relay is not None and self._relay.stdout is not None
        # The relay answers each command at once; a blocking read bounded by the process being alive.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self._relay.stdout.readline().strip()
            if line.startswith(prefix):
                return line
            if not line and self._relay.poll() is not None:
                break
        raise RuntimeError(f"the cut proxy did not answer {prefix!r} (rc {self._relay.poll()})")

    def _command(self, command: str, reply: str) -> str:
        assert self._relay is not None and self._relay.stdin is not None
        self._relay.stdin.write(command + "\n")
        self._relay.stdin.flush()
        return self._reply(reply, 10.0)

    def cut(self) -> int:
        """Reset every connection and refuse new ones; returns how many sockets were reset."""
        self.cut_active = True
        return int(self._command("cut", "cut").split()[1])

    def restore(self) -> int:
        """Relay again; returns how many connection attempts were refused during the cut."""
        self.cut_active = False
        return int(self._command("restore", "restored").split()[1])

    def close(self) -> None:
        for proc in (self._kafka_proxy, self._relay):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGINT if proc is self._kafka_proxy else signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._relay is not None:
            for stream in (self._relay.stdin, self._relay.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self._relay = self._kafka_proxy = None


if __name__ == "__main__":
    _main()
