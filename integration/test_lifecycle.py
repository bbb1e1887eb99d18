"""Life-cycle behaviour of streamworker: rebalances, crashes, timeouts and forced exits.

Every test runs real ``python -m streamworker`` processes against the real broker. The handler
(``HANDLER`` below) records what it does in a *ledger*: a JSON-lines file whose path comes from
``spec.env`` (``LEDGER``), one ``os.write`` per line on an ``O_APPEND`` descriptor, so lines of
different worker processes never interleave. Kinds of lines:

* ``start`` / ``end``: around each handler call, with pid, worker id, instance name (``INSTANCE``,
  from the process environment, so two instances can share one function.yaml), topic, partition,
  offset, key, the record id from the body, the attempt and ``time.time()`` at start (and end);
* ``drain`` / ``terminate``: drain and termination callback calls, with the partitions the worker
  handled since its previous drain (tracked by the handler module itself).

A record body is JSON ``{"id": ..., "hang": bool}``. A ``hang`` record blocks its handler once:
on its first attempt (``event.attempt == 1``) and the first time any worker sees it (a marker file
per record id), for ``HANG_S`` seconds or until ``RELEASE_FILE`` exists, and only in the instances
listed in ``HANG_INSTANCES`` (every instance when unset). A ``hang`` ledger line marks the start of
the block.

Group rules from ``/work/shared/notes/broker.md``: unique topic and group per test, one timeout
profile (quick) for every member of a group, end offsets from delivery reports, topics never deleted.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from devtools.broker import Record, committed_offsets, create_topics, produce

HANDLER = """
import json
import os
import time

LEDGER = os.environ["LEDGER"]
INSTANCE = os.environ.get("INSTANCE", "")
DELAY_S = float(os.environ.get("HANDLER_DELAY_S", "0"))
HANG_S = float(os.environ.get("HANG_S", "30"))
RELEASE_FILE = os.environ.get("RELEASE_FILE", "")
HANG_INSTANCES = [name for name in os.environ.get("HANG_INSTANCES", "").split(",") if name]
HANG_MARKERS = LEDGER + ".hung"

# Partitions this worker handled since its last drain callback.
handled_since_drain = set()


def write(kind, context, **fields):
    entry = {
        "kind": kind,
        "instance": INSTANCE,
        "pid": os.getpid(),
        "worker_id": int(context.worker_id),  # a str, as in Nuclio
        "wall": time.time(),
        **fields,
    }
    line = (json.dumps(entry, sort_keys=True) + "\\n").encode("utf-8")
    assert len(line) < 4096, "ledger lines must stay below PIPE_BUF to be atomic"
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def init_context(context):
    def on_drain():
        write("drain", context, partitions=sorted(handled_since_drain))
        handled_since_drain.clear()

    def on_terminate():
        write("terminate", context, partitions=sorted(handled_since_drain))

    context.platform.set_drain_callback(on_drain)
    context.platform.set_termination_callback(on_terminate)


def first_sight(record_id):
    # True only the first time any worker of any instance asks about this record id.
    os.makedirs(HANG_MARKERS, exist_ok=True)
    try:
        os.close(os.open(os.path.join(HANG_MARKERS, record_id), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def hang():
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline:
        if RELEASE_FILE and os.path.exists(RELEASE_FILE):
            return
        time.sleep(0.02)


def handler(context, event):
    start = time.time()
    body = json.loads(event.body)
    fields = {
        "id": body["id"],
        "topic": event.topic,
        "partition": event.partition,
        "offset": event.offset,
        "key": event.key,
        "attempt": event.attempt,
        "start": start,
    }
    write("start", context, **fields)
    handled_since_drain.add(event.partition)
    if (
        body.get("hang")
        and event.attempt == 1
        and (not HANG_INSTANCES or INSTANCE in HANG_INSTANCES)
        and first_sight(body["id"])
    ):
        write("hang", context, **fields)
        hang()
    if DELAY_S:
        time.sleep(DELAY_S)
    write("end", context, end=time.time(), **fields)
    return "ok"
"""

TRIGGER = "orders"


# ------------------------------------------------------------------------------------------ helpers


def function_config(
    *,
    brokers: str,
    topic: str,
    group: str,
    profile: Mapping[str, str],
    env: Mapping[str, str],
    workers: int = 2,
    mode: str = "pool",
    strategy: str = "cooperative-sticky",
    termination_timeout: str = "10s",
    event_timeout: str | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"handler": "main:handler", "env": dict(env)}
    if event_timeout is not None:
        spec["eventTimeout"] = event_timeout
    spec["triggers"] = {
        TRIGGER: {
            "kind": "kafka-cluster",
            "numWorkers": workers,
            "workerTerminationTimeout": termination_timeout,
            "attributes": {
                "brokers": brokers,
                "topics": [topic],
                "consumerGroup": group,
                "initialOffset": "earliest",
                "workerAllocationMode": mode,
                "balanceStrategy": strategy,
                "retryBackoff": "100ms",
                **profile,
                **(attributes or {}),
            },
        }
    }
    return {"metadata": {"name": "lifecycle"}, "spec": spec}


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """Every complete line of the ledger (a line still being written is left out)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line]


def of_kind(entries: Iterable[dict[str, Any]], kind: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in entries if e["kind"] == kind and all(e.get(k) == v for k, v in match.items())]


def log_time(log: Mapping[str, Any]) -> float:
    """A log line's ISO-8601 timestamp as seconds since the epoch (comparable with time.time())."""
    return datetime.fromisoformat(str(log["timestamp"]).replace("Z", "+00:00")).timestamp()


def logs_named(proc: Any, message: str, start: int = 0, end: int | None = None) -> list[dict[str, Any]]:
    return [log for log in proc.logs[start:end] if log.get("message") == message]


def is_message(message: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda log: log.get("message") == message and all(log.get(k) == v for k, v in fields.items())


def assert_no_log(proc: Any, *messages: str) -> None:
    found = [log for log in proc.logs if log.get("message") in messages]
    assert not found, f"unexpected log lines: {found}\n{proc.output()}"


def started_worker_pids(proc: Any) -> set[int]:
    return {int(log["pid"]) for log in logs_named(proc, "worker started")}


def pid_gone(pid: int) -> bool:
    """True when *pid* no longer exists or is a zombie (dead, waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] == b"Z"


def body(record_id: str, hang: bool = False) -> str:
    return json.dumps({"id": record_id, "hang": hang})


def wait_committed(
    wait_until: Callable[..., Any],
    bootstrap: str,
    group: str,
    topic: str,
    end_offsets: Mapping[int, int],
    timeout: float = 30.0,
) -> None:
    """Wait until the group's committed offsets equal *end_offsets* (from delivery reports)."""
    seen: dict[int, int] = {}

    def caught_up() -> bool:
        nonlocal seen
        seen = committed_offsets(bootstrap, group, topic, sorted(end_offsets))
        return seen == dict(end_offsets)

    wait_until(
        caught_up,
        timeout,
        interval=0.2,
        message=lambda: f"committed offsets {seen} never reached the end offsets {dict(end_offsets)}",
    )


def stop_cleanly(proc: Any, timeout: float = 30.0) -> None:
    code = proc.terminate(signal.SIGTERM, timeout=timeout)
    assert code == 0, f"exit code {code}\n{proc.output()}"
    exiting = logs_named(proc, "exiting")
    assert exiting and exiting[-1].get("exit_code") == 0, proc.output()


class SteadyProducer(threading.Thread):
    """Produces ``{"id": "<prefix>-<n>"}`` records round-robin over the partitions, one every
    *interval* seconds, until stopped or *max_records* / *max_seconds* is reached. ``ids`` and
    ``end_offsets`` come from the delivery reports only."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        partitions: int,
        *,
        interval: float,
        max_records: int,
        max_seconds: float,
        prefix: str = "r",
    ) -> None:
        super().__init__(name="steady-producer", daemon=True)
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self.interval, self.max_records, self.max_seconds, self.prefix = (
            interval,
            max_records,
            max_seconds,
            prefix,
        )
        self.ids: list[str] = []
        self.end_offsets: dict[int, int] = {}
        self.errors: list[str] = []
        self.sent = 0
        self.unflushed = -1
        self._stop_event = threading.Event()

    def stop(self) -> None:
        """Stop producing and wait for the last delivery reports (does not assert: see verify)."""
        self._stop_event.set()
        self.join(30)

    def verify(self) -> None:
        """Every produced record was acknowledged: ``ids`` and ``end_offsets`` are complete."""
        assert not self.is_alive(), "producer thread did not stop"
        assert not self.errors, self.errors
        assert self.unflushed == 0, f"{self.unflushed} records never acknowledged"
        assert len(self.ids) == self.sent

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors.append(str(err))
            return
        partition, offset = msg.partition(), msg.offset()
        self.end_offsets[partition] = max(self.end_offsets.get(partition, 0), offset + 1)
        self.ids.append(json.loads(msg.value())["id"])

    def run(self) -> None:
        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "linger.ms": 2,
                "acks": "all",
                "log.connection.close": False,
            }
        )
        started = time.monotonic()
        next_at = started
        while (
            not self._stop_event.is_set()
            and self.sent < self.max_records
            and time.monotonic() - started < self.max_seconds
        ):
            n = self.sent
            producer.produce(
                self.topic,
                value=body(f"{self.prefix}-{n:05d}"),
                key=f"k{n}",
                partition=n % self.partitions,
                on_delivery=self._on_delivery,
            )
            self.sent += 1
            producer.poll(0)
            next_at += self.interval
            # Pacing of the stream (not synchronisation): wait for the next send slot or a stop.
            self._stop_event.wait(max(0.0, next_at - time.monotonic()))
        self.unflushed = producer.flush(15)


# --------------------------------------------------------------------------------------------- tests


def test_cooperative_rebalance_moves_only_some_partitions_without_loss(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    topic, group = unique("orders"), unique("group")
    create_topics(broker_bootstrap, {topic: 4})
    ledger = tmp_path / "ledger.jsonl"
    config = function_dir(
        HANDLER,
        function_config(
            brokers=broker_bootstrap,
            topic=topic,
            group=group,
            profile=quick_profile,
            env={"LEDGER": str(ledger), "HANDLER_DELAY_S": "0.005"},
            workers=2,
            strategy="cooperative-sticky",
            # Tansu answers a long-polling fetch only when fetch.wait.max.ms runs out, not when new
            # records arrive (a plain consumer of a steady stream sees ~0.3 s steps with the default
            # 500, 0.1 s with 100): keep that broker artefact small next to the pauses measured here.
            attributes={"librdkafka": {"fetch.wait.max.ms": 100}},
        ),
    )
    # ~100 records/s round-robin: each partition gets one every ~40 ms, well below what one
    # instance handles (2 workers x 5 ms), so a kept partition's gaps show pauses, not backlog.
    producer = SteadyProducer(
        broker_bootstrap, topic, 4, interval=0.01, max_records=4000, max_seconds=40.0, prefix="steady"
    )
    producer.start()
    try:
        a = streamworker_process(config, env={"INSTANCE": "A"})
        wait_until(
            lambda: of_kind(read_ledger(ledger), "end", instance="A"), 30, message="A never handled a record"
        )
        a_pids = started_worker_pids(a)

        b_index_in_a = len(a.logs)
        b_started = time.time()
        b = streamworker_process(config, env={"INSTANCE": "B"})
        b_assigned = b.wait_for_log(
            lambda log: log.get("message") == "partitions assigned" and bool(log.get("partitions")), 30
        )
        moved = set(b_assigned["partitions"])
        wait_until(
            lambda: len(of_kind(read_ledger(ledger), "end", instance="B")) >= 30,
            30,
            message="B never handled records",
        )
        b_pids = started_worker_pids(b)
        assert b_pids and not b_pids & a_pids
        b_first = min(e["wall"] for e in of_kind(read_ledger(ledger), "start", instance="B"))
        assert {e["pid"] for e in of_kind(read_ledger(ledger), "end", instance="B")} <= b_pids

        # B leaves cleanly: SIGTERM, exit 0; A takes its partitions back.
        b_stop_index_in_a = len(a.logs)
        b_stopped = time.time()
        stop_cleanly(b)
        a.wait_for_log(
            lambda log: (
                log.get("message") == "partitions assigned" and set(log.get("partitions") or ()) >= moved
            ),
            30,
            start=b_stop_index_in_a,
        )
        moved_numbers = {int(tp.rsplit("/", 1)[1]) for tp in moved}
        wait_until(
            lambda: (
                {
                    e["partition"]
                    for e in of_kind(read_ledger(ledger), "end", instance="A")
                    if e["wall"] > b_stopped
                }
                >= moved_numbers
            ),
            30,
            message="A did not handle the partitions B gave back",
        )
    finally:
        producer.stop()
    producer.verify()

    wait_committed(wait_until, broker_bootstrap, group, topic, producer.end_offsets)
    stop_cleanly(a)
    entries = read_ledger(ledger)

    # No loss: every delivered record id was handled to the end at least once.
    ends = of_kind(entries, "end")
    handled = Counter(e["id"] for e in ends)
    missing = set(producer.ids) - set(handled)
    assert not missing, f"{len(missing)} records never handled, e.g. {sorted(missing)[:10]}"
    # Duplicates: a clean hand-over waits for in-flight records of the moved partitions and commits
    # them synchronously before giving the partitions up, so none should be handled twice.
    duplicates = {rid: n for rid, n in handled.items() if n > 1}
    print(f"produced {len(producer.ids)} records, handled {len(ends)} times, duplicates: {len(duplicates)}")
    assert len(duplicates) == 0, f"duplicates: {sorted(duplicates.items())[:20]}"

    # B's join revoked exactly the moved partitions from A, once, and drained only the A workers
    # that had handled them.
    revokes = logs_named(a, "partitions revoked", b_index_in_a, b_stop_index_in_a)
    assert len(revokes) == 1, f"expected one revoke in A during B's membership: {revokes}"
    revoke = revokes[0]
    assert set(revoke["partitions"]) == moved, (revoke, moved)
    assert len(moved) == 2, f"cooperative-sticky should move 2 of 4 partitions to B: {moved}"
    assert revoke["drained_workers"], revoke
    assert revoke["killed_workers"] == [], revoke
    revoke_end = log_time(revoke)
    revoke_start = revoke_end - revoke["took_ms"] / 1000
    a_drains = [e for e in of_kind(entries, "drain", instance="A") if b_started <= e["wall"] <= b_stopped]
    assert a_drains, "no drain callback ran in A when B joined"
    for drain in a_drains:
        assert drain["worker_id"] in revoke["drained_workers"], (drain, revoke)
        assert revoke_start - 0.05 <= drain["wall"] <= revoke_end + 0.05, (drain, revoke)
        assert set(drain["partitions"]) & moved_numbers, (
            f"drained a worker that had no moved partition: {drain}"
        )
    assert {d["worker_id"] for d in a_drains} == set(revoke["drained_workers"])
    assert not of_kind(entries, "drain", instance="B"), "B was never revoked while it ran"
    for proc in (a, b):
        assert_no_log(proc, "partitions lost (session expired); nothing committed for them")
        assert_no_log(proc, "worker died; replacing it", "killing worker", "handler failed; will retry")

    # Kept partitions keep flowing: the largest gap between consecutive handler starts in A stays
    # below 1 s from B's subscribing ("consuming", logged once its workers are up: starting three
    # Python processes on a 2-core box alone stalls A for ~0.25 s) until a second after B handled
    # its first record. Why 1 s: records arrive every ~40 ms per partition but Tansu hands them out
    # in ~0.1 s steps (fetch.wait.max.ms above); the rebalance may add one poll cycle (<= 100 ms)
    # plus the revoke of the moved partitions (wait for their in-flight records, drain callbacks,
    # synchronous commit: a few ms here), because cooperative-sticky leaves the kept partitions
    # assigned and fetching (measured: 0.13-0.21 s at most). An eager rebalance stops every
    # partition from the revoke until the rejoin's assignment (> 1 s with the quick profile).
    kept = {0, 1, 2, 3} - moved_numbers
    window = (log_time(b.wait_for_log("consuming", 1)), b_first + 1.0)
    for partition in sorted(kept):
        starts = sorted(e["start"] for e in of_kind(entries, "start", instance="A", partition=partition))
        before = [s for s in starts if s < window[0]][-1:]
        inside = [s for s in starts if window[0] <= s <= window[1]]
        after = [s for s in starts if s > window[1]][:1]
        series = before + inside + after
        assert len(inside) >= 10, f"partition {partition}: too few records around the rebalance: {inside}"
        largest = max(later - earlier for earlier, later in pairwise(series))
        print(f"kept partition {partition}: largest gap {largest * 1000:.0f} ms over {len(series)} starts")
        assert largest < 1.0, f"kept partition {partition} paused {largest:.3f}s during the rebalance"


def test_sigkilled_worker_is_replaced_and_its_record_redelivered(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    topic, group = unique("orders"), unique("group")
    create_topics(broker_bootstrap, {topic: 2})
    ledger = tmp_path / "ledger.jsonl"
    # static: partition p always goes to worker p, so the retry lands on the replacement process.
    config = function_dir(
        HANDLER,
        function_config(
            brokers=broker_bootstrap,
            topic=topic,
            group=group,
            profile=quick_profile,
            env={"LEDGER": str(ledger), "HANG_S": "30"},
            workers=2,
            mode="static",
        ),
    )
    victim_id = "p0-004"
    records = [
        Record(value=body(f"p{p}-{i:03d}", hang=f"p{p}-{i:03d}" == victim_id), key=f"k{i}", partition=p)
        for p in (0, 1)
        for i in range(10)
    ]
    end = produce(broker_bootstrap, topic, records)
    assert end == {0: 10, 1: 10}

    proc = streamworker_process(config)
    hung = wait_until(
        lambda: of_kind(read_ledger(ledger), "start", id=victim_id), 30, message="the record never started"
    )[0]
    victim_pid = hung["pid"]
    assert victim_pid in started_worker_pids(proc)
    assert of_kind(read_ledger(ledger), "hang", id=victim_id)
    # Let the handler be clearly mid-call: the supervisor blames the record a worker was running
    # only when that worker sent no results for a moment (finished records are reported within
    # ~10 ms); a crash right after other results could have come from any queued record.
    wait_until(lambda: time.time() - hung["start"] >= 0.3, 5)
    before_kill = len(proc.logs)
    killed_at = time.time()
    os.kill(victim_pid, signal.SIGKILL)

    died = proc.wait_for_log(is_message("worker died; replacing it", pid=victim_pid), 10, start=before_kill)
    noticed = log_time(died) - killed_at
    print(f"supervisor noticed the dead worker after {noticed * 1000:.0f} ms")
    assert noticed < 1.0, f"the supervisor took {noticed:.3f}s to notice the dead worker"
    assert died["worker"] == hung["worker_id"]
    assert "SIGKILL" in str(died["exit"]), died
    ready = proc.wait_for_log(is_message("worker ready", worker=hung["worker_id"]), 15, start=before_kill)
    assert ready["pid"] != victim_pid
    proc.wait_for_log(
        lambda log: (
            log.get("message") == "handler failed; will retry"
            and log.get("offset") == hung["offset"]
            and log.get("partition") == 0
            and log.get("error_type") == "WorkerLost"
        ),
        5,
        start=before_kill,
    )

    wait_committed(wait_until, broker_bootstrap, group, topic, end)
    stop_cleanly(proc)
    entries = read_ledger(ledger)
    victim_ends = of_kind(entries, "end", id=victim_id)
    assert len(victim_ends) == 1, victim_ends
    assert victim_ends[0]["pid"] == ready["pid"], (victim_ends, ready)
    assert victim_ends[0]["attempt"] == 2, victim_ends
    assert {json.loads(str(r.value))["id"] for r in records} == {e["id"] for e in of_kind(entries, "end")}
    # Order within the partition held: the records after the victim ran only after it was retried.
    p0 = of_kind(entries, "end", partition=0)
    assert [e["offset"] for e in p0] == sorted(e["offset"] for e in p0), p0
    assert not of_kind(entries, "end", pid=victim_pid, id=victim_id)


def test_sigkilled_supervisor_takes_its_workers_down_and_a_restart_resumes(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    topic, group = unique("orders"), unique("group")
    create_topics(broker_bootstrap, {topic: 2})
    ledger = tmp_path / "ledger.jsonl"
    config = function_dir(
        HANDLER,
        function_config(
            brokers=broker_bootstrap,
            topic=topic,
            group=group,
            profile=quick_profile,
            env={"LEDGER": str(ledger), "HANDLER_DELAY_S": "0.01"},
            workers=2,
        ),
    )
    ids = [f"r-{i:04d}" for i in range(600)]
    end = produce(
        broker_bootstrap,
        topic,
        [Record(value=body(rid), key=rid, partition=i % 2) for i, rid in enumerate(ids)],
    )
    assert sum(end.values()) == len(ids)

    first = streamworker_process(config, env={"INSTANCE": "first"})
    # 600 records x 10 ms over 2 workers: ~3 s of work. Kill inside it, once the first periodic
    # commit (every second) is visible, so the restart has a real position to resume from.
    wait_until(
        lambda: sum(committed_offsets(broker_bootstrap, group, topic, [0, 1]).values()) > 0,
        30,
        interval=0.1,
        message="the first instance never committed",
    )
    workers = started_worker_pids(first)
    assert len(workers) == 2, first.output()
    first.send_signal(signal.SIGKILL)  # the supervisor only, not its process group
    assert first.wait(10) == -signal.SIGKILL
    wait_until(
        lambda: all(pid_gone(pid) for pid in workers),
        5,
        message=lambda: (
            f"workers still alive 5 s after the supervisor died: "
            f"{[pid for pid in workers if not pid_gone(pid)]}"
        ),
    )
    handled_by_first = len(of_kind(read_ledger(ledger), "end", instance="first"))
    assert handled_by_first < len(ids), "the first instance finished everything before it was killed"
    committed_before = committed_offsets(broker_bootstrap, group, topic, [0, 1])
    print(f"first instance handled {handled_by_first}; committed at the kill: {committed_before}")

    # Same config, same group: the new member may wait for the dead one's session to expire.
    second = streamworker_process(config, env={"INSTANCE": "second"})
    wait_committed(wait_until, broker_bootstrap, group, topic, end, timeout=40)
    stop_cleanly(second)

    entries = read_ledger(ledger)
    handled = Counter(e["id"] for e in of_kind(entries, "end"))
    missing = set(ids) - set(handled)
    assert not missing, f"{len(missing)} records lost, e.g. {sorted(missing)[:10]}"
    duplicates = {rid for rid, n in handled.items() if n > 1}
    print(f"duplicates after the supervisor was killed: {len(duplicates)}")
    # Only records past the committed position can run twice: those the first instance handled
    # after its last commit.
    offset_of = {(e["partition"], e["offset"]): e["id"] for e in of_kind(entries, "end")}
    uncommitted = {rid for (p, o), rid in offset_of.items() if o >= committed_before.get(p, 0)}
    assert duplicates <= uncommitted, sorted(duplicates - uncommitted)[:10]
    # The restart resumed from the committed offsets: its first record of each partition is there.
    second_starts = of_kind(entries, "start", instance="second")
    for partition in (0, 1):
        offsets = [e["offset"] for e in second_starts if e["partition"] == partition]
        if committed_before.get(partition, 0) < end[partition]:
            assert offsets, f"the restart handled nothing of partition {partition}"
            assert min(offsets) == committed_before.get(partition, 0), (
                partition,
                min(offsets),
                committed_before,
            )
        else:
            assert not offsets, f"partition {partition} was complete, yet the restart re-handled {offsets}"


def test_event_timeout_kills_a_hung_handler_while_other_partitions_flow(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    topic, group = unique("orders"), unique("group")
    create_topics(broker_bootstrap, {topic: 2})
    ledger = tmp_path / "ledger.jsonl"
    config = function_dir(
        HANDLER,
        function_config(
            brokers=broker_bootstrap,
            topic=topic,
            group=group,
            profile=quick_profile,
            env={"LEDGER": str(ledger), "HANDLER_DELAY_S": "0.05", "HANG_S": "30"},
            workers=2,
            mode="static",  # partition 0 -> worker 0, partition 1 -> worker 1
            event_timeout="1s",
        ),
    )
    hung_id = "p0-002"
    # Partition 1 holds ~3 s of work (60 x 50 ms), so it is still running while partition 0 hangs.
    records = [
        Record(value=body(f"p0-{i:03d}", hang=f"p0-{i:03d}" == hung_id), partition=0) for i in range(10)
    ]
    records += [Record(value=body(f"p1-{i:03d}"), partition=1) for i in range(60)]
    end = produce(broker_bootstrap, topic, records)
    assert end == {0: 10, 1: 60}

    proc = streamworker_process(config)
    hung = wait_until(lambda: of_kind(read_ledger(ledger), "start", id=hung_id), 30)[0]
    assert hung["worker_id"] == 0
    killing = proc.wait_for_log(is_message("killing worker", worker=0), 10)
    assert "eventTimeout" in str(killing["reason"]), killing
    assert killing["pid"] == hung["pid"]
    killed_after = log_time(killing) - hung["start"]
    assert 0.9 <= killed_after < 2.5, f"killed {killed_after:.3f}s after the hung call started"
    died = proc.wait_for_log(is_message("worker died; replacing it", pid=hung["pid"]), 10)
    assert "eventTimeout" in str(died["reason"]), died
    ready = proc.wait_for_log(
        lambda log: is_message("worker ready", worker=0)(log) and log["pid"] != hung["pid"], 10
    )
    assert ready["pid"] != hung["pid"]

    wait_committed(wait_until, broker_bootstrap, group, topic, end)
    stop_cleanly(proc)
    entries = read_ledger(ledger)
    hung_ends = of_kind(entries, "end", id=hung_id)
    assert len(hung_ends) == 1 and hung_ends[0]["attempt"] >= 2, hung_ends
    assert hung_ends[0]["pid"] == ready["pid"]
    assert {e["id"] for e in of_kind(entries, "end")} == {json.loads(str(r.value))["id"] for r in records}
    # Partition 1 kept being handled while partition 0's handler hung.
    during = [
        e for e in of_kind(entries, "start", partition=1) if hung["start"] < e["start"] < log_time(killing)
    ]
    print(f"partition 1 records started while partition 0 hung: {len(during)}")
    assert len(during) >= 5, f"partition 1 stalled while partition 0 hung: {len(during)} records started"


def test_second_sigterm_forces_exit_without_committing_the_hung_record(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    topic, group = unique("orders"), unique("group")
    create_topics(broker_bootstrap, {topic: 1})
    ledger = tmp_path / "ledger.jsonl"
    config = function_dir(
        HANDLER,
        function_config(
            brokers=broker_bootstrap,
            topic=topic,
            group=group,
            profile=quick_profile,
            env={"LEDGER": str(ledger), "HANG_S": "30"},
            workers=1,
            termination_timeout="30s",
        ),
    )
    hung_id = "r-005"
    end = produce(
        broker_bootstrap,
        topic,
        [Record(value=body(f"r-{i:03d}", hang=f"r-{i:03d}" == hung_id), partition=0) for i in range(10)],
    )
    assert end == {0: 10}

    proc = streamworker_process(config)
    hung = wait_until(lambda: of_kind(read_ledger(ledger), "start", id=hung_id), 30)[0]
    workers = started_worker_pids(proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait_for_log("stopping", 10)
    second_at = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(10)
    took = time.monotonic() - second_at
    assert code == 128 + signal.SIGTERM, f"exit code {code}\n{proc.output()}"
    assert took < 3.0, f"forced exit took {took:.2f}s"
    assert logs_named(proc, "second signal: forced exit, nothing more is committed"), proc.output()
    assert_no_log(proc, "stopped", "exiting")
    wait_until(lambda: all(pid_gone(pid) for pid in workers), 5, message="workers outlived the forced exit")

    committed = committed_offsets(broker_bootstrap, group, topic, [0])
    assert committed.get(0, 0) <= hung["offset"], f"the hung record was committed: {committed}"
    assert not of_kind(read_ledger(ledger), "end", id=hung_id)


def test_revoke_kills_a_handler_that_overstays_the_rebalance_wait(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    topic, group = unique("orders"), unique("group")
    create_topics(broker_bootstrap, {topic: 2})
    ledger = tmp_path / "ledger.jsonl"
    release = tmp_path / "release"
    config = function_dir(
        HANDLER,
        function_config(
            brokers=broker_bootstrap,
            topic=topic,
            group=group,
            profile=quick_profile,
            # The first record of every partition hangs, in instance A only, until RELEASE_FILE exists.
            env={"LEDGER": str(ledger), "HANG_S": "30", "RELEASE_FILE": str(release), "HANG_INSTANCES": "A"},
            workers=2,
            mode="static",  # partition p -> worker p
            strategy="cooperative-sticky",
            attributes={"maxWaitHandlerDuringRebalance": "1s"},
        ),
    )
    records = [
        Record(value=body(f"p{p}-{i:03d}", hang=i == 0), partition=p) for p in (0, 1) for i in range(5)
    ]
    end = produce(broker_bootstrap, topic, records)
    assert end == {0: 5, 1: 5}

    a = streamworker_process(config, env={"INSTANCE": "A"})
    wait_until(
        lambda: (
            {e["partition"] for e in of_kind(read_ledger(ledger), "start", instance="A", offset=0)} == {0, 1}
        ),
        30,
        message="A's workers never started both first records",
    )
    a_hung = {e["partition"]: e for e in of_kind(read_ledger(ledger), "start", instance="A", offset=0)}
    join_index = len(a.logs)
    b = streamworker_process(config, env={"INSTANCE": "B"})
    b_assigned = b.wait_for_log(
        lambda log: log.get("message") == "partitions assigned" and bool(log.get("partitions")), 30
    )
    assert len(b_assigned["partitions"]) == 1, b_assigned
    moved_tp = b_assigned["partitions"][0]
    moved = int(moved_tp.rsplit("/", 1)[1])
    kept = 1 - moved

    revoke = a.wait_for_log("partitions revoked", 10, start=join_index)
    assert revoke["partitions"] == [moved_tp], revoke
    assert revoke["killed_workers"] == [a_hung[moved]["worker_id"]] == [moved], revoke
    assert moved_tp not in revoke["committed"], f"A committed the revoked, unfinished record: {revoke}"
    # The wait is bounded by maxWaitHandlerDuringRebalance (1 s), plus the kill and the commit.
    assert 900 <= revoke["took_ms"] < 4000, revoke
    died = a.wait_for_log(
        is_message("worker died; replacing it", pid=a_hung[moved]["pid"]), 10, start=join_index
    )
    assert "rebalance" in str(died["reason"]), died

    b_handled = wait_until(
        lambda: of_kind(read_ledger(ledger), "end", instance="B", partition=moved, offset=0),
        20,
        message="B never handled the record A was killed on",
    )
    assert len(b_handled) == 1
    assert not of_kind(read_ledger(ledger), "end", instance="A", partition=moved, offset=0)

    release.touch()  # A's kept partition may go on now
    wait_committed(wait_until, broker_bootstrap, group, topic, end)
    stop_cleanly(b)
    stop_cleanly(a)
    entries = read_ledger(ledger)
    assert not of_kind(entries, "end", instance="A", partition=moved), "A handled the moved partition"
    assert {e["offset"] for e in of_kind(entries, "end", instance="B", partition=moved)} == set(range(5))
    assert {e["offset"] for e in of_kind(entries, "end", instance="A", partition=kept)} == set(range(5))
