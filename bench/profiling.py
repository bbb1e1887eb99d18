"""py-spy (or pyinstrument) profiles of streamworker's supervisor and a worker on a no-op backlog."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
from common import BenchError, say, unique
from drain import fill_topic
from plan import NOOP, Contender, Context, Metrics
from procs import OffsetPoller, launch, wait_committed


def pyspy_binary() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    if local.exists():
        return str(local)
    from shutil import which

    return which("py-spy")


def profile_run(ctx: Context, contender: Contender) -> Metrics:
    """Profile the supervisor (and worker 0) of *contender* draining the no-op topic (1M records)."""
    topic, end = fill_topic(ctx, NOOP)
    group = unique(f"bench-profile-{contender.name}")
    profiler = ctx.profiler
    pyspy = pyspy_binary()
    if profiler == "auto":
        profiler = "py-spy" if pyspy else "pyinstrument"
    out_dir = ctx.root / "profile"
    out_dir.mkdir(parents=True, exist_ok=True)
    if profiler == "py-spy":
        try:
            return pyspy_profile(ctx, contender, topic, group, end, out_dir, pyspy or "py-spy")
        except BenchError as exc:
            if ctx.profiler == "py-spy":
                raise
            say(f"  py-spy failed ({str(exc).splitlines()[0]}); falling back to pyinstrument")
            group = unique(f"bench-profile-{contender.name}")
    return pyinstrument_profile(ctx, contender, topic, group, end, out_dir)


def pyspy_profile(
    ctx: Context, contender: Contender, topic: str, group: str, end: dict[int, int], out_dir: Path, pyspy: str
) -> Metrics:
    poller = OffsetPoller(ctx.bootstrap, group, topic, 4)
    running = launch(
        ctx,
        contender,
        run_id=f"profile/{contender.name}",
        topic=topic,
        group=group,
        workload="noop",
        latency=False,
        expected=None,
    )
    spies: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    try:
        common.wait_until(
            running.first_record_seen,
            90,
            "the first handled record",
            interval=0.01,
        )
        workers = common.child_pids(running.pid)
        targets = [("supervisor", running.pid)] + ([("worker", workers[0])] if workers else [])
        for name, pid in targets:
            out = out_dir / f"{contender.name}-{name}.txt"
            cmd = [pyspy, "record", "--pid", str(pid), "--nonblocking", "--rate", "200"]
            cmd += ["--format", "raw", "--nolineno", "-o", str(out)]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            spies.append((name, proc, out))
        started = time.monotonic()
        time.sleep(0.5)
        for name, proc, _ in spies:
            if proc.poll() is not None:
                output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                raise BenchError(f"py-spy on the {name} exited at once: {output.strip()[-300:]}")
        wait_committed(poller, end, running, 300.0, "profile")
        seconds = time.monotonic() - started
        for _, proc, _ in spies:
            proc.send_signal(signal.SIGINT)
        for _, proc, _ in spies:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    finally:
        for _, proc, _ in spies:
            if proc.poll() is None:
                proc.kill()
        running.stop()
        poller.close()
    metrics: Metrics = {
        "profiler": "py-spy (--nonblocking, 200 Hz; samples in sleeps, selects and pipe reads dropped)",
        "seconds": seconds,
    }
    for name, _, out in spies:
        if not out.exists():
            raise BenchError(f"py-spy wrote no profile for the {name}")
        stacks = parse_collapsed(out.read_text(encoding="utf-8", errors="replace"))
        metrics[name] = summarize_stacks(stacks, rate=200.0, seconds=seconds)
    metrics["records"] = sum(end.values())
    return metrics


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    """py-spy's raw output: ``frame;frame;... count`` per line, root first."""
    stacks: list[tuple[list[str], int]] = []
    for line in text.splitlines():
        stack, _, number = line.rpartition(" ")
        if stack and number.isdigit():
            stacks.append(([shorten_frame(f) for f in stack.split(";")], int(number)))
    return stacks


def shorten_frame(frame: str) -> str:
    """``func (/abs/path/streamworker/x.py)`` -> ``streamworker/x.py:func``."""
    name, _, location = frame.partition(" (")
    location = location.rstrip(")")
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in location:
            location = location.split(marker, 1)[1]
            if marker == "/lib/python3":
                location = "stdlib/" + location.split("/", 1)[-1]
            break
    else:
        repo = str(common.REPO) + "/"
        if location.startswith(repo):
            location = location[len(repo) :]
    return f"{location}:{name}" if location else name


# Leaf frames that are waits, not work: py-spy --nonblocking cannot always tell a thread blocked in a
# sleep, select or read from a running one, so these samples are dropped before the percentages.
IDLE_LEAVES = (
    "._start_flusher.<locals>.flush_periodically",  # the worker's flusher: time.sleep between flushes
    "._read_frames",  # os.read on the pipe (the worker's reader thread)
    "start_parent_watchdog.<locals>.watch",  # the worker's parent watchdog sleeping
    ":Recorder._flush_forever",  # the benchmark handler's stats thread sleeping
    ":EpollSelector.select",
    ":Event.wait",
    ":Condition.wait",
)


def summarize_stacks(stacks: list[tuple[list[str], int]], rate: float, seconds: float) -> Metrics:
    stacks = [(frames, count) for frames, count in stacks if frames and not frames[-1].endswith(IDLE_LEAVES)]
    total = sum(count for _, count in stacks) or 1
    self_counts: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    for frames, count in stacks:
        if not frames:
            continue
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def top(
        table: dict[str, int], limit: int, keep: Callable[[str], bool] = lambda _: True
    ) -> list[list[Any]]:
        ranked = sorted(((n, f) for f, n in table.items() if keep(f)), reverse=True)[:limit]
        return [[f, round(100.0 * n / total, 1)] for n, f in ranked]

    return {
        "samples": total,
        "busy_pct": round(100.0 * total / max(rate * seconds, 1.0), 1),
        "self": top(self_counts, 15),
        "inclusive": top(inclusive, 15, lambda f: f.startswith("streamworker/")),
    }


PYINSTRUMENT_SUPERVISOR = """\
import json, signal, sys, threading
from pyinstrument import Profiler
from streamworker.config import load_config
from streamworker.observability.logging import configure_logging
from streamworker.supervisor.runner import RunnerOptions, TriggerRunner

configure_logging("info", "json")
loaded = load_config(sys.argv[1])
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
runner = TriggerRunner(loaded.config, loaded.config.triggers[0], stop, RunnerOptions())
profiler = Profiler(interval=0.001)
profiler.start()
runner.run()
profiler.stop()
self_times = {}
def walk(frame):
    if frame.is_synthetic:
        return
    key = f"{frame.function} ({frame.file_path or '?'})"
    self_times[key] = self_times.get(key, 0.0) + frame.total_self_time
    for child in frame.children:
        walk(child)
root = profiler.last_session.root_frame()
walk(root)
json.dump({"total": root.time, "self": self_times}, open(sys.argv[2], "w"))
"""


def pyinstrument_profile(
    ctx: Context, contender: Contender, topic: str, group: str, end: dict[int, int], out_dir: Path
) -> Metrics:
    out = out_dir / f"{contender.name}-pyinstrument.json"
    poller = OffsetPoller(ctx.bootstrap, group, topic, 4)
    running = launch(
        ctx,
        contender,
        run_id=f"profile-pyinstrument/{contender.name}",
        topic=topic,
        group=group,
        workload="noop",
        latency=False,
        expected=None,
        supervisor_cmd=lambda config: [sys.executable, "-c", PYINSTRUMENT_SUPERVISOR, str(config), str(out)],
    )
    try:
        wait_committed(poller, end, running, 300.0, "profile (pyinstrument)")
    finally:
        running.stop()
        poller.close()
    if not out.exists():
        raise BenchError(f"pyinstrument wrote no profile\n{running.tail()}")
    data = json.loads(out.read_text(encoding="utf-8"))
    total = float(data["total"]) or 1.0
    merged: dict[str, float] = {}
    for frame, seconds in data["self"].items():
        short = shorten_frame(frame)
        merged[short] = merged.get(short, 0.0) + float(seconds)
    ranked = sorted(((t, f) for f, t in merged.items()), reverse=True)[:15]
    return {
        "profiler": "pyinstrument (runner on the main thread, wall clock, idle waits included)",
        "records": sum(end.values()),
        "supervisor": {
            "samples": None,
            "busy_pct": None,
            "self": [[f, round(100.0 * t / total, 1)] for t, f in ranked],
            "inclusive": [],
        },
    }
