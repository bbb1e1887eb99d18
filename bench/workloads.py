"""The per-record work of ``bench/throughput.py`` and what each handler process records about it.

Standard library only: it is imported by streamworker's generated benchmark handler, by every peer in
``bench/peers.py`` (possibly in another virtualenv) and by arroyo's spawned pool processes, so every
contender runs exactly the same code per record.

Workloads (``BENCH_WORKLOAD``):

* ``noop``: nothing.
* ``cpu``: 1 ms of CPU time of the calling thread (a busy loop on ``time.thread_time``, so the work
  per record stays 1 ms of CPU even when the process is descheduled on a busy machine).
* ``io``: ``time.sleep(0.005)`` (a blocking call of 5 ms).
* ``aio``: ``await asyncio.sleep(0.005)`` (the same, as an async handler).
* ``slow``: ``time.sleep(1.0)``, to keep a backlog in place while memory is measured.

A :class:`Recorder` notes, per process, when it saw its first and last record and how many, and in
latency mode the delay from each record's timestamp to the handler start (``time.time() * 1000 -
timestamp_ms``). A daemon thread writes them to ``BENCH_STATS_DIR`` every 0.2 s, so nothing depends
on a clean exit (arroyo's pool processes are terminated, not stopped).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

WORKLOADS = ("noop", "cpu", "io", "aio", "slow")
CPU_SECONDS = 0.001
IO_SECONDS = 0.005
SLOW_SECONDS = 1.0
FLUSH_INTERVAL_S = 0.2
SAMPLE = struct.Struct("<dd")  # (record timestamp ms, latency ms)


def busy_cpu(seconds: float = CPU_SECONDS) -> None:
    """Spend *seconds* of this thread's CPU time."""
    clock = time.thread_time
    end = clock() + seconds
    while clock() < end:
        pass


def sync_work(workload: str) -> Callable[[], None]:
    """The synchronous per-record work for *workload* (``aio`` has none: use :func:`async_work`)."""
    if workload == "noop":
        return lambda: None
    if workload == "cpu":
        return busy_cpu
    if workload == "io":
        return lambda: time.sleep(IO_SECONDS)
    if workload == "slow":
        return lambda: time.sleep(SLOW_SECONDS)
    raise ValueError(f"no synchronous work for workload {workload!r}")


async def _async_sleep() -> None:
    await asyncio.sleep(IO_SECONDS)


def async_work(workload: str) -> Callable[[], Awaitable[None]]:
    if workload != "aio":
        raise ValueError(f"no asynchronous work for workload {workload!r}")
    return _async_sleep


def key_of(index: int, keys: int) -> bytes:
    """The key of the *index*-th benchmark record: *keys* distinct keys, round robin."""
    return f"key-{index % keys:04d}".encode()


def value_of(index: int, size: int) -> bytes:
    """A *size*-byte value that starts with the record's index."""
    return f"{index:012d}".encode().ljust(size, b"x")[:size]


class Recorder:
    """Per-process record statistics, written to ``stats_dir`` by a background thread."""

    def __init__(self, stats_dir: str | None, latency: bool) -> None:
        self.stats_dir = Path(stats_dir) if stats_dir else None
        self.latency = latency
        self.first: float | None = None
        self.last = 0.0
        self.count = 0
        self._samples: collections.deque[tuple[float, float]] = collections.deque()
        self._pid = os.getpid()
        self._lock = threading.Lock()
        if self.stats_dir is not None:
            threading.Thread(target=self._flush_forever, name="bench-recorder", daemon=True).start()

    @classmethod
    def from_env(cls) -> Recorder:
        return cls(os.environ.get("BENCH_STATS_DIR"), os.environ.get("BENCH_LATENCY") == "1")

    def record(self, timestamp_ms: float | None) -> None:
        """Call at the start of every handler call, with the record's timestamp (ms since the epoch)."""
        now = time.time()
        if self.first is None:
            self.first = now
            self.flush()
        self.last = now
        self.count += 1
        if self.latency and timestamp_ms is not None:
            self._samples.append((timestamp_ms, now * 1000.0 - timestamp_ms))

    def flush(self) -> None:
        if self.stats_dir is None:
            return
        with self._lock:
            samples = self._samples
            chunk = b"".join(SAMPLE.pack(*samples.popleft()) for _ in range(len(samples)))
            if chunk:
                with open(self.stats_dir / f"latency-{self._pid}.bin", "ab") as out:
                    out.write(chunk)
            stats = {"pid": self._pid, "first": self.first, "last": self.last, "count": self.count}
            tmp = self.stats_dir / f".stats-{self._pid}.tmp"
            tmp.write_text(json.dumps(stats), encoding="utf-8")
            os.replace(tmp, self.stats_dir / f"stats-{self._pid}.json")

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL_S)
            if self.first is not None:
                self.flush()


def read_stats(stats_dir: Path) -> tuple[float | None, float | None, int]:
    """(earliest first record, latest last record, total count) over every process's stats file."""
    firsts: list[float] = []
    lasts: list[float] = []
    count = 0
    for path in stats_dir.glob("stats-*.json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if data.get("first") is not None:
            firsts.append(float(data["first"]))
            lasts.append(float(data["last"]))
        count += int(data.get("count") or 0)
    return (min(firsts) if firsts else None), (max(lasts) if lasts else None), count


def read_latencies(stats_dir: Path, since_ms: float) -> list[float]:
    """Latency samples (ms) of records with a timestamp at or after *since_ms*."""
    out: list[float] = []
    for path in stats_dir.glob("latency-*.bin"):
        data = path.read_bytes()
        usable = len(data) - len(data) % SAMPLE.size
        for timestamp_ms, latency_ms in SAMPLE.iter_unpack(data[:usable]):
            if timestamp_ms >= since_ms:
                out.append(latency_ms)
    return out
