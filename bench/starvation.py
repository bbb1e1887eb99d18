"""Why static trails pool (issue #16): sample the dispatcher while pool and static drain the no-op topic.

    .venv/bin/python bench/starvation.py [--records N] [--runs N] [--modes pool,static]

Starts its own broker, fills one 4-partition topic (100-byte values, 1,000 keys) and lets
streamworker (2 workers) drain it once per mode and run, with a sampler thread inside the supervisor
(started by a wrapper around ``python -m streamworker``; streamworker itself is not changed) that
every 5 ms reads, without locks: each worker's queued records (its window) and each partition's
buffered records and pause flag. Reports per mode: records/s, the share of samples in which a worker
had nothing queued while the other had some (starved), in which a worker's window was full (at least
``window_events`` queued), the mean queued records per worker, and the share of samples each
partition was paused or had nothing buffered. The figures are approximate (unlocked reads) and
meant to be compared between modes of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common
from common import say, unique
from drain import fill_topic
from plan import FULL, NOOP, Contender, Context, Sizes
from procs import OffsetPoller, launch, wait_committed

from devtools.broker import LocalBroker

WRAPPER = """\
import json, os, runpy, sys, threading, time
from streamworker.supervisor import runner as r

original = r.TriggerRunner.__init__


def init(self, *args, **kwargs):
    original(self, *args, **kwargs)

    def sample():
        with open(os.environ["DIAG_OUT"], "w", encoding="utf-8") as out:
            while True:
                d = self.dispatcher
                try:
                    row = [
                        time.monotonic(),
                        [slot.outstanding_events for slot in d._workers],
                        [[s.tp[1], s.buffered, s.paused] for s in list(d._partitions.values())],
                    ]
                except RuntimeError:  # a dict changed size while read
                    continue
                out.write(json.dumps(row) + "\\n")
                time.sleep(0.005)

    threading.Thread(target=sample, daemon=True).start()


r.TriggerRunner.__init__ = init
sys.argv = ["streamworker", "--config", sys.argv[1], "--log-level", "info"]
runpy.run_module("streamworker", run_name="__main__")
"""


def analyse(path: Path, window: int) -> dict[str, float]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    # Only while work is going on: some partition has records buffered.
    rows = [row for row in rows if any(buffered for _, buffered, _ in row[2])]
    if not rows:
        return {}
    starved = sum(
        1
        for _, queued, _ in rows
        for w, q in enumerate(queued)
        if q == 0 and any(queued[:w] + queued[w + 1 :])
    )
    full = sum(1 for _, queued, _ in rows for q in queued if q >= window)
    workers = len(rows[0][1])
    out = {
        "samples": float(len(rows)),
        "starved_pct": 100.0 * starved / (len(rows) * workers),
        "window_full_pct": 100.0 * full / (len(rows) * workers),
        "mean_queued": statistics.mean(q for _, queued, _ in rows for q in queued),
    }
    partitions = sorted({p for _, _, parts in rows for p, _, _ in parts})
    for p in partitions:
        states = [(b, paused) for _, _, parts in rows for q, b, paused in parts if q == p]
        out[f"p{p}_paused_pct"] = 100.0 * sum(1 for _, paused in states if paused) / len(states)
        out[f"p{p}_empty_pct"] = 100.0 * sum(1 for b, _ in states if b == 0) / len(states)
        out[f"p{p}_mean_buffered"] = statistics.mean(b for b, _ in states)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=FULL.noop)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--modes", default="pool,static")
    parser.add_argument(
        "--window", type=int, default=4096, help="a full window, in records (the dispatcher's window_events)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (samples, logs)")
    args = parser.parse_args(argv)
    sizes = FULL.__class__(**{**FULL.__dict__, "noop": args.records})
    root = Path(tempfile.mkdtemp(prefix="streamworker-starvation-"))
    results: dict[str, list[dict[str, float]]] = {}
    try:
        run_all(args, root, sizes, results)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    for mode, runs in results.items():
        keys = runs[0].keys()
        medians = {k: round(statistics.median(r.get(k, 0.0) for r in runs), 1) for k in keys}
        say(f"{mode} (median of {len(runs)}): {json.dumps(medians)}")
    return 0


def run_all(
    args: argparse.Namespace, root: Path, sizes: Sizes, results: dict[str, list[dict[str, float]]]
) -> None:
    with LocalBroker() as broker:
        ctx = Context(broker.bootstrap, root, sizes, False, 1, [], None, "auto", [], broker_pid=broker.pid)
        topic, end = fill_topic(ctx, NOOP)
        total = sum(end.values())
        for run in range(args.runs):
            for mode in args.modes.split(","):
                contender = Contender(f"sw-{mode}-2", mode, "streamworker", mode, 2)
                out = root / f"{mode}-{run}.jsonl"
                group = unique(f"starvation-{mode}")
                poller = OffsetPoller(broker.bootstrap, group, topic, 4)
                os.environ["DIAG_OUT"] = str(out)  # launch() passes this environment on
                running = launch(
                    ctx,
                    contender,
                    run_id=f"starvation/{mode}/{run}",
                    topic=topic,
                    group=group,
                    workload="noop",
                    latency=False,
                    expected=None,
                    supervisor_cmd=lambda config: [sys.executable, "-c", WRAPPER, str(config)],
                )
                try:
                    common.wait_until(
                        running.first_record_seen, 90, "the first handled record", interval=0.01
                    )
                    first = time.time()
                    done = wait_committed(poller, end, running, 300.0, f"{mode} run {run}")
                finally:
                    running.stop()
                    poller.close()
                figures = analyse(out, args.window)
                figures["rate"] = total / max(done - first, 1e-6)
                say(f"{mode} run {run}: {json.dumps({k: round(v, 1) for k, v in figures.items()})}")
                results.setdefault(mode, []).append(figures)


if __name__ == "__main__":
    sys.exit(main())
