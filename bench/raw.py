"""The raw confluent-kafka loops of ``bench/throughput.py`` (run through ``bench/peers.py``).

* ``raw`` (**tuned**, the reference of issue #16): the client tuned as streamworker tunes its own:
  ``fetch.queue.backoff.ms=10``, ``consume(1000)``, the workload inline on each record, offsets
  stored after each batch (the last offset + 1 of each partition) and committed asynchronously every
  100 ms (as streamworker commits whenever offsets moved). It runs until SIGTERM; the benchmark times
  it, like every other contender, until the group's committed offsets reach the end.
* ``raw-untuned``: librdkafka's defaults (``fetch.queue.backoff.ms`` 1000: a full local queue stops
  fetching that partition for a second), ``consume(1000)``, one synchronous commit right after the
  last expected record (it knows how many to expect and notes when that commit returned). This is
  the loop the earlier results called "raw" minus its backoff setting: what a plain loop gets
  without tuning.

In latency mode (``expected`` is None) both commit asynchronously every 100 ms (tuned) or 1 s.
Imports only the standard library, confluent-kafka and ``workloads.py``.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import workloads
from confluent_kafka import Consumer, TopicPartition

QUICK_TIMEOUTS: dict[str, Any] = {
    "session.timeout.ms": 2000,
    "heartbeat.interval.ms": 400,
    "max.poll.interval.ms": 30000,
}
# Exactly the tuning issue #16 names. streamworker's client also caps librdkafka's read-ahead
# (queued.min.messages 20,000) and the broker's fetch wait (100 ms) for its back-pressure pauses; the
# reference does not follow those, so the bar does not move with streamworker's own settings (a loop
# that never pauses gains nothing from them; one run with them drained 617-668k/s, within this
# loop's usual spread of 650-870k/s on this machine).
TUNED: dict[str, Any] = {"fetch.queue.backoff.ms": 10, "enable.auto.offset.store": False}
TUNED_COMMIT_EVERY_S = 0.1
UNTUNED_COMMIT_EVERY_S = 1.0
BATCH = 1000

Spec = Mapping[str, Any]


def stop_event() -> threading.Event:
    stopped = threading.Event()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stopped


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    tmp.replace(path)


def consumer_for(spec: Spec, tuned: bool) -> Consumer:
    config: dict[str, Any] = {
        "bootstrap.servers": spec["bootstrap"],
        "group.id": spec["group"],
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        **QUICK_TIMEOUTS,  # Tansu holds a JoinGroup for half the session timeout: not a tuning
    }
    if tuned:
        config.update(TUNED)
    consumer = Consumer(config)
    consumer.subscribe([spec["topic"]])
    return consumer


def run_raw(spec: Spec, recorder: workloads.Recorder, work: Callable[[], None]) -> int:
    """The tuned loop: store offsets per batch, async commit every 100 ms, until SIGTERM."""
    record, latency = recorder.record, bool(spec["latency"])
    consumer = consumer_for(spec, tuned=True)
    stopped = stop_event()
    topic = spec["topic"]
    last_commit = time.monotonic()
    stored = False
    while not stopped.is_set():
        messages = consumer.consume(BATCH, 0.1)
        if messages:
            for message in messages:
                if message.error() is not None:
                    continue
                if latency:
                    ts_type, ts = message.timestamp()
                    record(ts if ts_type else None)
                else:
                    record(None)
                work()
            # The last record of each partition in the batch (a dict keeps the last one per key).
            last: dict[Any, Any] = {m.partition(): m.offset() for m in messages if m.error() is None}
            consumer.store_offsets(offsets=[TopicPartition(topic, p, o + 1) for p, o in last.items()])
            stored = True
        now = time.monotonic()
        if stored and now - last_commit >= TUNED_COMMIT_EVERY_S:
            last_commit = now
            stored = False
            consumer.commit(asynchronous=True)
    if stored:
        consumer.commit(asynchronous=False)
    consumer.close()
    return 0


def run_raw_untuned(spec: Spec, recorder: workloads.Recorder, work: Callable[[], None]) -> int:
    """librdkafka defaults; one synchronous commit after the last expected record."""
    record, latency = recorder.record, bool(spec["latency"])
    consumer = consumer_for(spec, tuned=False)
    stopped = stop_event()
    expected: int | None = spec.get("expected")
    consumed = 0
    last_commit = time.monotonic()
    while not stopped.is_set():
        messages = consumer.consume(BATCH, 0.1)
        for message in messages:
            if message.error() is not None:
                continue
            if latency:
                ts_type, ts = message.timestamp()
                record(ts if ts_type else None)
            else:
                record(None)
            work()
            consumed += 1
        if expected is not None and consumed >= expected:
            consumer.commit(asynchronous=False)
            done = time.time()
            write_json(Path(spec["stats_dir"]) / "done.json", {"done": done, "consumed": consumed})
            recorder.flush()
            stopped.wait()  # finished: stay alive (for the memory reading) until SIGTERM
            break
        now = time.monotonic()
        if expected is None and consumed and now - last_commit >= UNTUNED_COMMIT_EVERY_S:
            last_commit = now
            consumer.commit(asynchronous=True)
    if expected is None and consumed:
        consumer.commit(asynchronous=False)
    consumer.close()
    return 0
