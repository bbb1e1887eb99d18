"""The contenders of ``bench/throughput.py`` that are not streamworker, and its paced producer.

Run by ``throughput.py`` as ``python bench/peers.py '<json spec>'``, each in its own process (and for
Quix Streams in its own virtualenv: Quix Streams 3 pins confluent-kafka < 2.13 while sentry-arroyo
needs >= 2.13.2, so the two cannot share one). Imports only the standard library, confluent-kafka,
``workloads.py`` and the library under test, never streamworker.

Kinds (``spec["kind"]``):

* ``raw`` and ``raw-untuned``: plain confluent-kafka loops, tuned as streamworker tunes its client or
  with librdkafka's defaults; see ``bench/raw.py``.
* ``arroyo``: sentry-arroyo as its documentation shows it: ``KafkaConsumer`` built by
  ``build_kafka_consumer_configuration``, a ``StreamProcessor`` with the ``ONCE_PER_SECOND`` commit
  policy, and a strategy factory returning ``RunTask(handle, CommitOffsets(commit))`` or, with
  ``processes`` > 0, ``RunTaskWithMultiprocessing(handle, CommitOffsets(commit), ...)`` on a
  ``MultiprocessingPool(processes)``.
* ``quix``: Quix Streams ``Application`` + ``sdf.update(handle, metadata=True)``, commit interval 1 s.
* ``paced-producer``: produces ``count`` records at ``rate`` records/s and prints the end offsets
  (from delivery reports) and the pacing start as one JSON line.

Every consumer gets the same librdkafka settings on top of its library's own: the quick timeout
profile (session 2 s, heartbeat 400 ms, max.poll.interval 30 s: Tansu holds a JoinGroup for half the
session timeout) and ``fetch.queue.backoff.ms=10`` (librdkafka >= 2.2 otherwise stops fetching a
partition for 1 s whenever its queue is full; streamworker sets 10 ms itself).
"""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import raw
import workloads
from confluent_kafka import KafkaError, Message, Producer

CONSUMER_EXTRA: dict[str, Any] = {
    "session.timeout.ms": 2000,
    "heartbeat.interval.ms": 400,
    "max.poll.interval.ms": 30000,
    "fetch.queue.backoff.ms": 10,
}
ARROYO_MAX_BATCH_SIZE = 1000
ARROYO_MAX_BATCH_TIME_S = 0.1
ARROYO_BLOCK_BYTES = 4 * 1024 * 1024
COMMIT_EVERY_S = 1.0

Spec = Mapping[str, Any]

# Set per process (the main one, and each arroyo pool process by its initializer).
RECORDER: workloads.Recorder | None = None
WORK: Callable[[], None] = lambda: None  # noqa: E731 - replaced by setup()
LATENCY = False


def blocking_work(workload: str) -> Callable[[], None]:
    """The workload as a plain call; async work runs on one event loop kept for the process."""
    if workload != "aio":
        return workloads.sync_work(workload)
    loop = asyncio.new_event_loop()
    coroutine = workloads.async_work(workload)
    return lambda: loop.run_until_complete(coroutine())


def setup(workload: str, stats_dir: str | None, latency: bool) -> None:
    global RECORDER, WORK, LATENCY
    RECORDER = workloads.Recorder(stats_dir, latency)
    WORK = blocking_work(workload)
    LATENCY = latency


def install_stop_handler(on_stop: Callable[[], None]) -> threading.Event:
    stopped = threading.Event()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stopped.set()
        on_stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stopped


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    tmp.replace(path)


# --------------------------------------------------------------------------------------- raw loops


def run_raw(spec: Spec) -> int:
    """The tuned raw loop (``bench/raw.py``)."""
    setup(spec["workload"], spec["stats_dir"], spec["latency"])
    assert RECORDER is not None
    return raw.run_raw(spec, RECORDER, WORK)


def run_raw_untuned(spec: Spec) -> int:
    """The untuned raw loop (``bench/raw.py``)."""
    setup(spec["workload"], spec["stats_dir"], spec["latency"])
    assert RECORDER is not None
    return raw.run_raw_untuned(spec, RECORDER, WORK)


# ------------------------------------------------------------------------------------------ arroyo


def arroyo_handle(message: Any) -> None:
    """RunTask / RunTaskWithMultiprocessing function: a module-level function, so it pickles."""
    assert RECORDER is not None
    if LATENCY:
        ts = message.timestamp
        RECORDER.record(ts.timestamp() * 1000.0 if ts is not None else None)
    else:
        RECORDER.record(None)
    WORK()


def run_arroyo(spec: Spec) -> int:
    from arroyo.backends.kafka.configuration import build_kafka_consumer_configuration
    from arroyo.backends.kafka.consumer import KafkaConsumer, KafkaPayload
    from arroyo.commit import ONCE_PER_SECOND
    from arroyo.processing.processor import StreamProcessor
    from arroyo.processing.strategies import (
        CommitOffsets,
        ProcessingStrategy,
        ProcessingStrategyFactory,
        RunTask,
        RunTaskWithMultiprocessing,
    )
    from arroyo.processing.strategies.run_task_with_multiprocessing import MultiprocessingPool
    from arroyo.types import Commit, Partition, Topic

    workload, stats_dir, latency = spec["workload"], spec["stats_dir"], spec["latency"]
    setup(workload, stats_dir, latency)
    processes = int(spec.get("processes") or 0)
    pool = (
        MultiprocessingPool(processes, initializer=functools.partial(setup, workload, stats_dir, latency))
        if processes
        else None
    )

    class Factory(ProcessingStrategyFactory[KafkaPayload]):
        def create_with_partitions(
            self, commit: Commit, partitions: Mapping[Partition, int]
        ) -> ProcessingStrategy[KafkaPayload]:
            if pool is None:
                return RunTask(arroyo_handle, CommitOffsets(commit))
            return RunTaskWithMultiprocessing(
                function=arroyo_handle,
                next_step=CommitOffsets(commit),
                max_batch_size=ARROYO_MAX_BATCH_SIZE,
                max_batch_time=ARROYO_MAX_BATCH_TIME_S,
                pool=pool,
                input_block_size=ARROYO_BLOCK_BYTES,
                output_block_size=ARROYO_BLOCK_BYTES,
            )

    consumer = KafkaConsumer(
        build_kafka_consumer_configuration(
            default_config={},
            bootstrap_servers=[spec["bootstrap"]],
            auto_offset_reset="earliest",
            group_id=spec["group"],
            override_params=CONSUMER_EXTRA,
            # Explicit commits through CommitOffsets + the commit policy (the default would hand
            # them to librdkafka's auto-commit, every auto.commit.interval.ms = 5 s).
            enable_auto_commit=False,
        )
    )
    processor = StreamProcessor(
        consumer=consumer,
        topic=Topic(spec["topic"]),
        processor_factory=Factory(),
        commit_policy=ONCE_PER_SECOND,
    )
    install_stop_handler(processor.signal_shutdown)
    try:
        processor.run()
    finally:
        if pool is not None:
            pool.close()
    return 0


# -------------------------------------------------------------------------------------------- quix


def run_quix(spec: Spec) -> int:
    from quixstreams import Application

    setup(spec["workload"], spec["stats_dir"], spec["latency"])
    assert RECORDER is not None
    record, work, latency = RECORDER.record, WORK, LATENCY

    def handle(value: Any, key: Any, timestamp: int, headers: Any) -> None:
        record(float(timestamp) if latency else None)
        work()

    app = Application(
        broker_address=spec["bootstrap"],
        consumer_group=spec["group"],
        auto_offset_reset="earliest",
        commit_interval=COMMIT_EVERY_S,
        consumer_extra_config=dict(CONSUMER_EXTRA),
        state_dir=str(Path(spec["stats_dir"]) / "quix-state"),
        use_changelog_topics=False,
        loglevel="WARNING",
    )
    topic = app.topic(spec["topic"], value_deserializer="bytes", key_deserializer="bytes")
    sdf = app.dataframe(topic)
    sdf.update(handle, metadata=True)
    app.run()  # stops cleanly on SIGTERM / SIGINT by itself
    return 0


# ---------------------------------------------------------------------------------- paced producer


def run_paced_producer(spec: Spec) -> int:
    """Produce ``count`` records at ``rate``/s; print {"end_offsets", "start_ms", "sent", "took_s"}."""
    rate, count = float(spec["rate"]), int(spec["count"])
    keys, size = int(spec["keys"]), int(spec["value_bytes"])
    producer = Producer(
        {"bootstrap.servers": spec["bootstrap"], "linger.ms": 5, "acks": "all", "log.connection.close": False}
    )
    end_offsets: dict[int, int] = {}
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(str(err))
            return
        partition, offset = msg.partition(), msg.offset()
        if partition is not None and offset is not None:
            end_offsets[partition] = max(end_offsets.get(partition, 0), offset + 1)

    topic = spec["topic"]
    start_ms = time.time() * 1000.0
    started = time.monotonic()
    sent = 0
    while sent < count:
        due = min(count, int((time.monotonic() - started) * rate) + 1)
        while sent < due:
            try:
                producer.produce(
                    topic,
                    value=workloads.value_of(sent, size),
                    key=workloads.key_of(sent, keys),
                    on_delivery=on_delivery,
                )
            except BufferError:
                producer.poll(0.01)
                continue
            sent += 1
        producer.poll(0)
        time.sleep(0.002)  # pacing tick
    took = time.monotonic() - started
    remaining = producer.flush(30)
    if errors or remaining:
        print(json.dumps({"error": f"{len(errors)} failed, {remaining} unacknowledged: {errors[:3]}"}))
        return 1
    print(json.dumps({"end_offsets": end_offsets, "start_ms": start_ms, "sent": sent, "took_s": took}))
    return 0


KINDS: dict[str, Callable[[Spec], int]] = {
    "raw": run_raw,
    "raw-untuned": run_raw_untuned,
    "arroyo": run_arroyo,
    "quix": run_quix,
    "paced-producer": run_paced_producer,
}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python bench/peers.py '<json spec>'", file=sys.stderr)
        return 2
    spec = json.loads(argv[0])
    return KINDS[spec["kind"]](spec)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
