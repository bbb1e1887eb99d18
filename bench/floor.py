"""The floor of a supervisor -> worker hand-off on this machine (issue #16).

    .venv/bin/python bench/floor.py [--records N] [--runs N] [--write]

How fast can *any* design drain a backlog when one process consumes and other processes run the
handler? This script builds that pipeline from streamworker's own parts, minus everything else
(dispatcher, offsets, windows, results, commits, flow control), and adds one stage at a time:

1. ``consume``: ``consume(1000)`` with streamworker's client settings, each message touched once
   (the raw loop's core; the reference of the ratios).
2. ``+ runs``: each batch cut into runs by ``supervisor.intake.split_into_runs`` (the real intake).
3. ``+ frames``: each batch's runs encoded as one EVENTS frame (``protocol.encode``, ``Run.wire``).
4. ``+ pipes``: the frames written round robin to 2 worker processes (blocking pipes, 1 MiB each),
   which read them as a worker does (``READ_CHUNK``), decode them (``protocol.FrameReader``) and
   count records.
5. ``+ per-record call``: the workers also build each record's event (``records.new_event``) and
   call a no-op handler with it: the least a worker must do per record.

The consumer is assigned the partitions (no group, no commits). A stage's rate is records / (first
batch -> last record seen by the stage's last step). Runs go round robin over the stages; medians.
``--write`` puts the table in ``bench/RESULTS.md`` (section ``floor``). Read it next to the throughput
section: streamworker's figure there, divided by stage 5 here, is how much of the hand-off's floor
the rest of the supervisor keeps.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import common
from common import say, unique
from confluent_kafka import Consumer, TopicPartition
from drain import produce_records

from devtools.broker import LocalBroker, create_topics
from streamworker.config.kafka_settings import FETCH_QUEUE_BACKOFF_MS, FETCH_WAIT_MAX_MS, QUEUED_MIN_MESSAGES
from streamworker.protocol import FrameReader, Msg, encode, write_all_blocking
from streamworker.records import (
    R_HEADERS,
    R_KEYS,
    R_OFFSETS,
    R_PARTITION,
    R_TIMESTAMPS,
    R_TOPIC,
    R_VALUES,
    new_event,
)
from streamworker.supervisor.intake import split_into_runs
from streamworker.worker.process import READ_CHUNK

SECTION_BEGIN = "<!-- floor:begin (written by bench/floor.py; edits inside are overwritten) -->"
SECTION_END = "<!-- floor:end -->"
PARTITIONS = 4
WORKERS = 2
BATCH = 1000
PIPE_BYTES = 1 << 20
# streamworker's fetch settings, so stage 1 is its consume().
CLIENT = {
    "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
    "queued.min.messages": QUEUED_MIN_MESSAGES,
    "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
}

READY = b"R"
STAGES = ("consume", "+ runs", "+ frames", "+ pipes", "+ per-record call")


def _consumer(bootstrap: str, topic: str) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("floor"),  # required by the client; no join happens with assign()
            "enable.auto.commit": False,
            **CLIENT,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    return consumer


def _noop(*_args: Any) -> None:
    return None


def run_stage(stage: int, bootstrap: str, topic: str, records: int) -> float:
    """Records/s of the pipeline up to ``stage`` (1-based, see the module docstring)."""
    workers: list[tuple[int, subprocess.Popen[bytes], int]] = []
    if stage >= 4:
        for _ in range(WORKERS):
            read_end, write_end = os.pipe()
            done_read, done_write = os.pipe()
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            cmd = [sys.executable, __file__, "--worker", str(read_end), str(done_write), str(int(stage >= 5))]
            proc = subprocess.Popen(cmd, pass_fds=(read_end, done_write))
            os.close(read_end)
            os.close(done_write)
            workers.append((write_end, proc, done_read))
        for _, _, done_read in workers:
            if os.read(done_read, 1) != READY:  # imports done: the clock starts with all of them up
                raise RuntimeError("a worker process failed to start")
    consumer = _consumer(bootstrap, topic)
    seen = 0
    started = 0.0
    turn = 0
    try:
        while seen < records:
            messages = consumer.consume(BATCH, 1.0)
            if not messages:
                continue
            if not started:
                started = time.perf_counter()
            seen += len(messages)
            if stage == 1:
                for message in messages:
                    _noop(message)
                continue
            runs = split_into_runs(messages, topic)
            if stage == 2:
                continue
            frame = encode([Msg.EVENTS, [part.wire() for part in runs if not isinstance(part, list)]])
            if stage == 3:
                continue
            write_all_blocking(workers[turn % WORKERS][0], frame)
            turn += 1
        counted = seen
        if workers:
            for write_end, _, _ in workers:
                os.close(write_end)
            counted = sum(int(_read_all(done_read)) for _, _, done_read in workers)
            for _, proc, _ in workers:
                proc.wait(timeout=60)
    finally:
        consumer.close()
    elapsed = time.perf_counter() - started
    if counted < records:
        raise RuntimeError(f"stage {STAGES[stage - 1]!r} saw {counted:,} of {records:,} records")
    return records / elapsed


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def worker(read_fd: int, done_fd: int, per_record: bool) -> None:
    """Decode frames until end of file; with ``per_record``, build each event and call a no-op with
    it. Writes the number of records seen to ``done_fd``, then exits."""
    os.write(done_fd, READY)
    reader = FrameReader()
    handler: Callable[..., None] = _noop
    context = object()
    count = 0
    while data := os.read(read_fd, READ_CHUNK):  # as the worker reads its pipe
        for message in reader.feed(data):
            for run in message[1]:
                offsets = run[R_OFFSETS]
                count += len(offsets)
                if not per_record:
                    continue
                topic, partition = run[R_TOPIC], run[R_PARTITION]
                keys, values, headers, stamps = run[R_KEYS], run[R_VALUES], run[R_HEADERS], run[R_TIMESTAMPS]
                for record in zip(offsets, keys, values, headers, stamps, strict=True):
                    handler(context, new_event(0, 0, topic, partition, *record))
    os.write(done_fd, str(count).encode())


def section(rates: dict[str, list[float]], records: int, runs: int) -> str:
    reference = statistics.median(rates[STAGES[0]])
    lines = [
        SECTION_BEGIN,
        "## The hand-off's floor (issue #16)",
        "",
        f"Command: `.venv/bin/python bench/floor.py --records {records} --runs {runs} --write` (starts "
        f"its own local broker). {records:,} records x 100 B in {PARTITIONS} partitions; "
        f"{WORKERS} worker processes. "
        "Each stage adds one step to the one above (see the docstring of `bench/floor.py`); nothing but "
        "that pipeline runs.",
        "",
        "| Machine | |",
        "|---|---|",
        *[f"| {label} | {value} |" for label, value in common.machine_info()],
        "",
        "| Stage | records/s (median) | min-max | x consume |",
        "|---|---:|---:|---:|",
    ]
    for stage in STAGES:
        values = rates[stage]
        median = statistics.median(values)
        lines.append(
            f"| {stage} | {median:,.0f} | {min(values):,.0f}-{max(values):,.0f} | {median / reference:.2f} |"
        )
    lines += ["", SECTION_END, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    parser.add_argument("--worker", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        read_fd, done_fd, per_record = args.worker
        worker(read_fd, done_fd, bool(per_record))
        return 0
    rates: dict[str, list[float]] = {stage: [] for stage in STAGES}
    with LocalBroker() as broker:
        topic = unique("floor")
        create_topics(broker.bootstrap, {topic: PARTITIONS})
        say(f"filling {topic}: {args.records:,} records")
        produce_records(broker.bootstrap, topic, args.records)
        for run in range(1, args.runs + 1):
            for number, stage in enumerate(STAGES, start=1):
                rate = run_stage(number, broker.bootstrap, topic, args.records)
                rates[stage].append(rate)
                say(f"run {run}: {stage}: {rate:,.0f} records/s")
    text = section(rates, args.records, args.runs)
    print(text)
    if args.write:
        common.write_section(common.RESULTS_PATH, text, SECTION_BEGIN, SECTION_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
