"""The chaos run: a steady keyed stream, streamworker instances, faults on a seeded schedule.

Pieces (all driven from the test's main thread, except the producer and the commit sampler threads):

* :data:`HANDLER`: the function under test. It appends one line per step to a ledger (``start``,
  ``end``, ``fail``, ``hang``) with one ``os.write`` on an ``O_APPEND`` descriptor, so lines of different
  worker processes never interleave. A record with ``"fail": N`` raises on its first N attempts, counted
  across every worker and instance with marker files (a poison record that eventually succeeds); a
  record with ``"hang": true`` blocks its first attempt for ``HANG_S`` (far beyond eventTimeout); one
  with ``"slow": S`` sleeps S s on its first call (past the rebalance wait, within eventTimeout); one
  with ``"delay": S`` sleeps S s on every call (a burst of them fills buffers: backpressure). In the
  triggers named in ``ACK_TRIGGERS`` (explicitAckMode: explicitOnly) every record is acked at once,
  except one with ``"ack_later": true``: kept, and acked by the drain or termination callback, or by
  a call of the same worker ``ACK_LATER_S`` later (so it is acked without a rebalance too); the
  callbacks write ``drain_acks`` / ``terminate_acks`` lines (how many they acked).
  A record with ``"spawn": true`` leaves a background process holding everything the worker let it
  inherit (``subprocess`` with ``close_fds=False``), whose worker is then SIGKILLed (``orphan_kill``).
* :class:`ChaosProducer`: one record per topic every ``1/rate`` s, keys drawn from a seeded RNG,
  partition = key index mod partitions, a sequence number per key; it talks to the broker directly,
  so production goes on while streamworker's connection is cut. Delivery reports are the truth.
* :class:`CommitSampler`: reads every group's committed offsets every ~0.3 s, directly from the broker.
* :class:`Fleet`: instance "A" (always there, restarted after a SIGKILL) and instance "B" (joins and
  leaves: the rebalance storm). Every instance runs the same function.yaml, one trigger per allocation
  mode, each trigger on its own topic and consumer group, all with the quick timeout profile.
* :func:`make_schedule`: the phases (each fault alone, then mixed), drawn from ``random.Random(seed)``.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from chaos_verdict import CommitSample, Entry, Incident, Produced, Tenure

HANDLER = """
import json
import math
import os
import subprocess
import time

from streamworker.worker.sdk import QualifiedOffset

INSTANCE = os.environ.get("INSTANCE", "")
ACK_TRIGGERS = {name for name in os.environ.get("ACK_TRIGGERS", "").split(",") if name}
ACK_LATER_S = 6.0
# (QualifiedOffset, monotonic time) of "ack_later" records this worker handled and has not acked yet.
kept = []
DELAY_S = float(os.environ.get("HANDLER_DELAY_S", "0"))
HANG_S = float(os.environ.get("HANG_S", "60"))
SPAWN_S = 30
MARKS = os.environ["LEDGER"] + ".marks"
os.makedirs(MARKS, exist_ok=True)
LEDGER_FD = os.open(os.environ["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def write(kind, fields):
    entry = {"kind": kind, "inst": INSTANCE, "pid": os.getpid(), "wall": time.time(), **fields}
    line = (json.dumps(entry) + "\\n").encode()
    assert len(line) < 4096, "ledger lines must stay below PIPE_BUF to be atomic"
    os.write(LEDGER_FD, line)


def ack_kept(context, kind):
    if kept:
        for qualified, _ in kept:
            context.platform.explicit_ack_sync(qualified)
        write(kind, {"worker": context.worker_id, "topic": "", "id": "", "acked": len(kept)})
        kept.clear()


def init_context(context):
    context.platform.set_drain_callback(lambda: ack_kept(context, "drain_acks"))
    context.platform.set_termination_callback(lambda: ack_kept(context, "terminate_acks"))


def first_time(name):
    # True for exactly one caller across every worker of every instance.
    try:
        os.close(os.open(os.path.join(MARKS, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def handler(context, event):
    body = json.loads(event.body)
    fields = {
        "worker": int(context.worker_id),  # a str, as in Nuclio
        "topic": event.topic,
        "p": event.partition,
        "o": event.offset,
        "id": body["id"],
        "key": body["key"],
        "seq": body["seq"],
        "attempt": event.attempt,
        "start": time.time(),
    }
    write("start", fields)
    # Sent only if this call returns; the verdict checks every committed record has it (issue #18).
    context.platform.produce(event.topic + "-out", body["id"], key=event.key)
    for n in range(1, int(body.get("fail", 0)) + 1):
        if first_time(f"{body['id']}.fail{n}"):
            write("fail", fields)
            raise RuntimeError(f"poison record {body['id']}: failing on purpose, failure {n}")
    if body.get("spawn") and first_time(body["id"] + ".spawn"):
        # A handler shelling out and leaving a process behind; the harness kills this worker next.
        child = subprocess.Popen(
            ["sleep", str(SPAWN_S)], close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        write("spawn", {**fields, "background": child.pid})
    if body.get("hang") and first_time(body["id"] + ".hang"):
        write("hang", fields)
        time.sleep(HANG_S)
    if body.get("slow") and first_time(body["id"] + ".slow"):
        write("slow", fields)
        time.sleep(float(body["slow"]))
    if body.get("delay"):
        time.sleep(float(body["delay"]))
    if DELAY_S:
        time.sleep(DELAY_S)
    write("end", fields)
    if event.trigger.name in ACK_TRIGGERS:
        now = time.monotonic()
        while kept and now - kept[0][1] >= ACK_LATER_S:
            context.platform.explicit_ack_sync(kept.pop(0)[0])
        qualified = QualifiedOffset.from_event(event)
        if body.get("ack_later"):
            kept.append((qualified, now))
        else:
            context.platform.explicit_ack_sync(qualified)
    return "ok"
"""

QUICK_PROFILE = {"sessionTimeout": "2s", "heartbeatInterval": "400ms", "maxPollInterval": "30s"}
QUICK_CONSUMER_CONFIG = {
    "session.timeout.ms": 2000,
    "heartbeat.interval.ms": 400,
    "max.poll.interval.ms": 30000,
}
EVENT_TIMEOUT_S = 2.0
# Rebalance wait (maxWaitHandlerDuringRebalance) below eventTimeout, so a sync call can outlast the
# wait without being a hung call: SLOW_S lies between the two (issue #12's first fault).
REBALANCE_WAIT_S = 1.0
SLOW_S = 1.6
SLOW_RECORDS = 6  # consecutive records per topic made slow before a join
# Backpressure: a burst of records that each take BURST_DELAY_S fills the partitions' buffers
# (MAX_BUFFERED_RECORDS) for several seconds, so a member joining and leaving moves paused partitions.
MAX_BUFFERED_RECORDS = 50
BURST_RECORDS = 400
BURST_DELAY_S = 0.02
# Explicit acks given in callbacks: this many consecutive records per topic are acked late (see HANDLER).
ACK_LATER_RECORDS = 40


# ----------------------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Size:
    name: str
    partitions: int
    keys: int
    rate: float  # records per second per topic
    workers: int
    settle_s: float  # bound on waiting for the pipeline to catch up between phases
    final_s: float  # bound on the final catch-up


SHORT = Size("short", partitions=6, keys=24, rate=80.0, workers=2, settle_s=20.0, final_s=60.0)
LONG = Size("long", partitions=6, keys=24, rate=100.0, workers=2, settle_s=40.0, final_s=120.0)


# -------------------------------------------------------------------------------------- function


def output_topic(topic: str) -> str:
    """Where the handler produces each record's id (the handler's ``event.topic + "-out"``)."""
    return f"{topic}-out"


def function_config(
    *,
    brokers: str,
    triggers: Mapping[str, tuple[str, str, str]],  # trigger name -> (mode, topic, group)
    ledger: Path,
    workers: int,
    ack_triggers: Sequence[str] = (),
) -> dict[str, Any]:
    """*ack_triggers*: triggers with explicitAckMode explicitOnly (acks made by HANDLER)."""
    spec: dict[str, Any] = {
        "handler": "main:handler",
        "eventTimeout": f"{EVENT_TIMEOUT_S:g}s",
        "env": {
            "LEDGER": str(ledger),
            "HANDLER_DELAY_S": "0.004",
            "HANG_S": "60",
            "ACK_TRIGGERS": ",".join(ack_triggers),
        },
        "triggers": {},
    }
    for name, (mode, topic, group) in triggers.items():
        spec["triggers"][name] = {
            "kind": "kafka-cluster",
            "numWorkers": workers,
            **({"explicitAckMode": "explicitOnly"} if name in ack_triggers else {}),
            "workerTerminationTimeout": "5s",
            "attributes": {
                "brokers": brokers,
                "topics": [topic],
                "consumerGroup": group,
                "initialOffset": "earliest",
                "workerAllocationMode": mode,
                "balanceStrategy": "cooperative-sticky",
                **QUICK_PROFILE,
                "maxWaitHandlerDuringRebalance": f"{REBALANCE_WAIT_S:g}s",
                "maxBufferedRecords": MAX_BUFFERED_RECORDS,
                "retryBackoff": "100ms",
                "retryMaxBackoff": "1s",
                # Poison records fail a few times, and kills add failed attempts: never give up here
                # (the failure policy being added must not turn this suite's retries into skips).
                "maxRetries": 1000,
                # Tansu answers a waiting fetch only when fetch.wait.max.ms runs out.
                "librdkafka": {"fetch.wait.max.ms": 100},
            },
        }
    return {"metadata": {"name": "chaos"}, "spec": spec}


# -------------------------------------------------------------------------------------- producer


class ChaosProducer(threading.Thread):
    """One record per topic per tick, on a seeded key sequence; delivery reports are the truth."""

    def __init__(
        self, bootstrap: str, topics: Mapping[str, str], size: Size, seed: int, max_seconds: float = 900.0
    ) -> None:
        """*topics*: topic -> short tag used in record ids (``pool-000042``)."""
        super().__init__(name="chaos-producer", daemon=True)
        self.bootstrap, self.tags, self.size, self.max_seconds = bootstrap, dict(topics), size, max_seconds
        self.topics = list(topics)
        self.rng = random.Random(seed)
        self.produced: dict[str, list[Produced]] = {topic: [] for topic in topics}
        self.errors: list[str] = []
        self.sent = 0
        self.unflushed = -1
        self._lock = threading.Lock()
        self._next = 0
        self._pending: dict[str, Any] = {}
        self._pending_left = 0  # how many more records get ``_pending``
        self._burst = 0  # records to send at once with the next tick
        self._burst_extras: dict[str, Any] = {}
        self._stop_event = threading.Event()

    def inject(self, extras: Mapping[str, Any], count: int = 1) -> dict[str, str]:
        """Put *extras* (``fail``/``hang``/``slow``) into the next *count* records of every topic;
        returns the first one's ids."""
        with self._lock:
            self._pending.update(extras)
            self._pending_left = max(self._pending_left, count)
            return {topic: self._id(topic, self._next) for topic in self.topics}

    def burst(self, count: int, extras: Mapping[str, Any]) -> dict[str, str]:
        """Send *count* extra records per topic at once with the next tick, each with *extras*."""
        with self._lock:
            self._burst = count
            self._burst_extras = dict(extras)
            return {topic: self._id(topic, self._next) for topic in self.topics}

    def _id(self, topic: str, n: int) -> str:
        return f"{self.tags[topic]}-{n:06d}"

    def stop(self) -> None:
        self._stop_event.set()
        self.join(60)

    def verify(self) -> None:
        assert not self.is_alive(), "producer thread did not stop"
        assert not self.errors, self.errors[:10]
        assert self.unflushed == 0, f"{self.unflushed} records never acknowledged"
        delivered = sum(len(records) for records in self.produced.values())
        assert delivered == self.sent, f"{delivered} delivery reports for {self.sent} records"

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))
            return
        body = json.loads(msg.value())
        self.produced[msg.topic()].append(
            Produced(
                id=body["id"],
                topic=msg.topic(),
                partition=msg.partition(),
                offset=msg.offset(),
                key=body["key"],
                seq=body["seq"],
                ts=body["ts"],
                fail=int(body.get("fail", 0)),
                hang=bool(body.get("hang", False)),
            )
        )

    def run(self) -> None:
        from confluent_kafka import Producer

        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "linger.ms": 5,
                "acks": "all",
                "enable.idempotence": True,
                "message.timeout.ms": 120000,
                "log.connection.close": False,
            }
        )
        seqs: dict[str, int] = {}
        interval = 1.0 / self.size.rate
        started = next_at = time.monotonic()
        while not self._stop_event.is_set() and time.monotonic() - started < self.max_seconds:
            with self._lock:
                burst, self._burst = self._burst, 0
                batch = []
                for _ in range(1 + burst):
                    n, extras = self._next, self._pending
                    if burst:
                        extras = {**extras, **self._burst_extras}
                        burst -= 1
                    self._pending_left = max(0, self._pending_left - 1)
                    self._next = n + 1
                    if not self._pending_left:
                        self._pending = {}
                    batch.append((n, extras))
            for n, extras in batch:
                key_index = self.rng.randrange(self.size.keys)
                key = f"k{key_index:02d}"
                seq = seqs.get(key, 0)
                seqs[key] = seq + 1
                for topic in self.topics:
                    body = {"id": self._id(topic, n), "key": key, "seq": seq, "ts": time.time(), **extras}
                    producer.produce(
                        topic,
                        value=json.dumps(body),
                        key=key,
                        partition=key_index % self.size.partitions,
                        on_delivery=self._on_delivery,
                    )
                    self.sent += 1
                producer.poll(0)
            next_at += interval
            # Pacing of the stream (not synchronisation): wait for the next send slot or a stop.
            self._stop_event.wait(max(0.0, next_at - time.monotonic()))
        self.unflushed = producer.flush(60)


def read_output_ids(
    bootstrap: str, topic: str, group: str, partitions: int, timeout: float = 60.0
) -> list[str]:
    """Every value of ``topic`` (record ids the handler returned), read to the end of each partition."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 100,
            "log.connection.close": False,
            **QUICK_CONSUMER_CONFIG,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        ids: list[str] = []
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(at_end) < partitions:
            assert time.monotonic() < deadline, f"{topic}: end not reached in {timeout}s ({len(ids)} read)"
            for message in consumer.consume(500, 0.2):
                error = message.error()
                if error is None:
                    ids.append((message.value() or b"").decode())
                    at_end.discard(message.partition() or 0)
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition() or 0)
                else:
                    raise AssertionError(f"reading {topic}: {error}")
        return ids
    finally:
        consumer.close()


class CommitSampler(threading.Thread):
    """Reads each group's committed offsets every *interval* s straight from the broker (never joins)."""

    def __init__(
        self, bootstrap: str, groups: Mapping[str, str], partitions: int, interval: float = 0.3
    ) -> None:
        super().__init__(name="commit-sampler", daemon=True)
        self.bootstrap, self.groups, self.partitions, self.interval = (
            bootstrap,
            dict(groups),
            partitions,
            interval,
        )
        self.samples: list[CommitSample] = []
        self.failures = 0
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)

    def latest(self, topic: str) -> dict[int, int]:
        for sample in reversed(self.samples):
            if sample.topic == topic:
                return dict(sample.offsets)
        return {}

    def run(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        consumers = {
            topic: Consumer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "group.id": group,
                    "enable.auto.commit": False,
                    "log.connection.close": False,
                    **QUICK_CONSUMER_CONFIG,
                }
            )
            for topic, group in self.groups.items()
        }
        try:
            while not self._stop_event.is_set():
                for topic, consumer in consumers.items():
                    try:
                        answer = consumer.committed(
                            [TopicPartition(topic, p) for p in range(self.partitions)], timeout=5
                        )
                    except Exception:  # KafkaException: a slow broker; try again next round
                        self.failures += 1
                        continue
                    offsets = {
                        tp.partition: tp.offset for tp in answer if tp.error is None and tp.offset >= 0
                    }
                    self.samples.append(CommitSample(wall=time.time(), topic=topic, offsets=offsets))
                self._stop_event.wait(self.interval)  # sampling period, not synchronisation
        finally:
            for consumer in consumers.values():
                consumer.close()


class LedgerTail:
    """Reads the ledger incrementally; keeps every entry and the set of handled ids per topic."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[Entry] = []
        self.handled: dict[str, set[str]] = {}
        self._offset = 0
        self._partial = b""

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if not line:
                continue
            entry = json.loads(line)
            self.entries.append(entry)
            if entry["kind"] == "end":
                self.handled.setdefault(entry["topic"], set()).add(entry["id"])


# ----------------------------------------------------------------------------------------- fleet


@dataclass
class Member:
    name: str
    incarnation: int
    proc: Any  # conftest.StreamworkerProcess
    expected_exit: str = "running"  # running | clean | killed
    killed_at: float | None = None

    @property
    def label(self) -> str:
        return f"{self.name}{self.incarnation}"


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[1]) if fields[0] != b"Z" else None


class Fleet:
    """The streamworker instances of one run and the faults aimed at them."""

    def __init__(self, start_process: Callable[..., Any], config: Path) -> None:
        self._start_process = start_process
        self.config = config
        self.up: dict[str, Member] = {}
        self.members: list[Member] = []
        self._incarnations: dict[str, int] = {}

    def start(self, name: str) -> Member:
        incarnation = self._incarnations.get(name, 0) + 1
        self._incarnations[name] = incarnation
        member = Member(name, incarnation, None)
        # Every instance serves health checks (the default) on a port of its own.
        env = {"INSTANCE": member.label, "STREAMWORKER_HEALTH_ADDR": "127.0.0.1:0"}
        member.proc = self._start_process(self.config, env=env)
        self.up[name] = member
        self.members.append(member)
        return member

    def live_workers(self) -> list[tuple[str, str, int, int, Member]]:
        """(instance label, trigger, worker id, pid, member) of every ready, not yet dead worker."""
        found = []
        for name in sorted(self.up):
            member = self.up[name]
            live: dict[tuple[str, int], int] = {}
            for log in list(member.proc.logs):
                message = log.get("message")
                if message == "worker ready":
                    live[(str(log.get("trigger")), int(log["worker"]))] = int(log["pid"])
                elif message == "worker died; replacing it":
                    key = (str(log.get("trigger")), int(log["worker"]))
                    if live.get(key) == int(log["pid"]):
                        del live[key]
            for (trigger, worker), pid in sorted(live.items()):
                if _ppid(pid) == member.proc.pid:  # still ours: never signal a recycled pid
                    found.append((member.label, trigger, worker, pid, member))
        return found

    def kill_worker(self, choice: int) -> tuple[str, int] | None:
        workers = self.live_workers()
        if not workers:
            return None
        label, trigger, worker, pid, _ = workers[choice % len(workers)]
        os.kill(pid, signal.SIGKILL)
        return f"{label} {trigger}/w{worker} pid {pid}", pid

    def kill_supervisor(self, choice: int) -> Member:
        """SIGKILL one instance's supervisor (only it: its workers must notice by themselves)."""
        names = sorted(self.up)
        member = self.up.pop(names[choice % len(names)])
        member.expected_exit = "killed"
        member.killed_at = time.time()
        member.proc.send_signal(signal.SIGKILL)
        member.proc.wait(10)
        return member

    def leave(self, name: str) -> Member | None:
        member = self.up.pop(name, None)
        if member is not None:
            member.expected_exit = "clean"
            member.proc.send_signal(signal.SIGTERM)
        return member

    def stop_all(self) -> None:
        for name in sorted(self.up):
            self.leave(name)

    def dump_logs(self, folder: Path) -> None:
        """Every instance's stdout and stderr, one file each, for a post-mortem."""
        folder.mkdir(parents=True, exist_ok=True)
        for member in self.members:
            text = (
                "\n".join(member.proc.stdout_lines)
                + "\n--- stderr ---\n"
                + "\n".join(member.proc.stderr_lines)
            )
            (folder / f"{member.label}.log").write_text(text + "\n", encoding="utf-8")

    def exit_problems(self, timeout: float) -> list[str]:
        """Wait (bounded) for every stopped instance; report wrong exit codes."""
        problems = []
        deadline = time.monotonic() + timeout
        for member in self.members:
            expected = {"clean": 0, "killed": -signal.SIGKILL}.get(member.expected_exit)
            if expected is None:
                continue
            try:
                code = member.proc.wait(max(1.0, deadline - time.monotonic()))
            except AssertionError:
                problems.append(f"{member.label} still running {timeout:g}s after it was asked to stop")
                continue
            if code != expected:
                problems.append(
                    f"{member.label} exited with {code}, expected {expected}\n{member.proc.output(30)}"
                )
        return problems


# -------------------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Step:
    at: float  # seconds after the phase started
    # kill_worker | orphan_kill | kill_supervisor | join | leave | cut | restore | hang | poison |
    # slow_join | burst_join | ack_join | ack_later
    action: str
    choice: int = 0  # picks the target among the candidates present at that moment


@dataclass(frozen=True)
class Phase:
    name: str
    steps: tuple[Step, ...]
    length: float


def make_schedule(seed: int, long: bool) -> list[Phase]:
    """Each fault alone (separated by a bounded wait for the pipeline to catch up), then all mixed."""
    rng = random.Random(seed)

    def choice() -> int:
        return rng.randrange(1 << 30)

    phases: list[Phase] = []
    # SIGKILL a random worker every few seconds. Some kills (orphan_kill) hit a worker whose handler
    # just left a background process holding the worker's inherited descriptors: its death must be
    # noticed all the same.
    t, steps = 1.0, []
    count = 10 if long else 3
    for n in range(count):
        kind = "orphan_kill" if n % 4 == 2 or (not long and n == count - 1) else "kill_worker"
        steps.append(Step(round(t, 2), kind, choice()))
        t += rng.uniform(2.0, 4.0)
    phases.append(Phase("worker kills", tuple(steps), t + 1.0))
    # SIGKILL a supervisor, restart it at once.
    for n in range(3 if long else 1):
        phases.append(Phase(f"supervisor kill {n + 1}", (Step(0.5, "kill_supervisor", choice()),), 4.0))
    # A second instance joins and leaves, again and again.
    t, steps = 0.5, []
    for _ in range(6 if long else 2):
        steps.append(Step(round(t, 2), "join"))
        # A new member needs ~1 s to start and ~4 s for the two cooperative rounds: leaving after
        # 3.5-9 s sometimes happens before it got partitions, mostly after.
        t += rng.uniform(3.5, 9.0)
        steps.append(Step(round(t, 2), "leave"))
        t += rng.uniform(1.5, 3.0)
    phases.append(Phase("rebalance storm", tuple(steps), t))
    # The broker connection is cut for ~10 s, then restored.
    for n in range(2 if long else 1):
        length = round(rng.uniform(9.0, 11.0), 2)
        phases.append(
            Phase(f"broker cut {n + 1}", (Step(0.5, "cut"), Step(0.5 + length, "restore")), length + 1.5)
        )
    # A handler that hangs (killed by eventTimeout), a record that fails its first attempts.
    t, steps = 0.5, []
    for _ in range(3 if long else 1):
        steps.append(Step(round(t, 2), "hang"))
        t += rng.uniform(3.0, 4.0)
        steps.append(Step(round(t, 2), "poison", rng.randint(2, 4)))
        t += rng.uniform(2.0, 3.0)
    phases.append(Phase("hang + poison", tuple(steps), t + 1.0))
    # Sync calls longer than the rebalance wait running when a member joins (issue #12): they are
    # killed at the deadline and must run again, unblamed; then the member leaves.
    for n in range(2 if long else 1):
        leave_at = round(0.5 + rng.uniform(6.0, 9.0), 2)
        phases.append(
            Phase(
                f"slow calls at a join {n + 1}",
                (Step(0.5, "slow_join"), Step(leave_at, "leave")),
                leave_at + 2.0,
            )
        )
    # A burst fills the buffers (partitions paused by backpressure) while a member joins and leaves:
    # paused partitions move away and back, and must be fetched again (issue #12).
    for n in range(2 if long else 1):
        leave_at = round(0.5 + rng.uniform(6.0, 9.0), 2)
        phases.append(
            Phase(
                f"paused partitions move {n + 1}",
                (Step(0.5, "burst_join"), Step(leave_at, "leave")),
                leave_at + 2.0,
            )
        )
    # Records acked only in drain/termination callbacks (or seconds later) while a member joins and
    # leaves: those acks must count (issue #12). The first batch is kept by A's workers until the
    # revoke runs their drain callbacks; the second, sent once B has partitions, partly by B's until
    # its termination callbacks. The phase outlasts ACK_LATER_S after the leave, and there is no
    # ack_later in the mixed phase: a worker killed while it keeps unacked records would leave them
    # open for good (explicitOnly has no redelivery).
    leave_at = round(0.5 + rng.uniform(7.0, 9.0), 2)
    steps = (Step(0.5, "ack_join"), Step(round(leave_at - 1.5, 2), "ack_later"), Step(leave_at, "leave"))
    phases.append(Phase("acks in callbacks", steps, leave_at + 8.0))
    # Everything mixed: random times, overlapping faults.
    length = 120.0 if long else 20.0
    steps = []
    kinds = ["kill_worker"] * (12 if long else 3) + ["kill_supervisor"] * (3 if long else 1)
    kinds += ["hang"] * (3 if long else 1) + ["poison"] * (3 if long else 1) + ["join"] * (4 if long else 1)
    kinds += ["cut"] * (3 if long else 1) + ["orphan_kill"] * (2 if long else 1)
    kinds += ["slow_join", "burst_join"] if long else []
    for kind in kinds:
        at = round(rng.uniform(0.5, length - 4.0), 2)
        if kind in ("join", "slow_join", "burst_join"):
            steps.append(Step(at, kind))
            steps.append(Step(round(at + rng.uniform(3.0, 8.0), 2), "leave"))
        elif kind == "cut":
            at = round(rng.uniform(0.5, length - 12.0), 2)
            steps.append(Step(at, "cut"))
            steps.append(Step(round(at + rng.uniform(6.0, 10.0), 2), "restore"))
        elif kind == "poison":
            steps.append(Step(at, "poison", rng.randint(2, 4)))
        else:
            steps.append(Step(at, kind, choice()))
    phases.append(Phase("mixed", tuple(sorted(steps, key=lambda s: s.at)), length))
    return phases


def describe_schedule(phases: Sequence[Phase]) -> str:
    lines = []
    for phase in phases:
        steps = ", ".join(
            f"{s.at:g}s {s.action}" + (f"({s.choice})" if s.action == "poison" else "") for s in phase.steps
        )
        lines.append(f"  {phase.name} ({phase.length:.1f}s): {steps}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- runner


@dataclass
class RunResult:
    incidents: list[Incident] = field(default_factory=list)
    t0: float = 0.0
    run_end: float = 0.0
    settles: list[tuple[str, float, bool]] = field(default_factory=list)  # phase, waited, caught up
    notes: list[str] = field(default_factory=list)


class ChaosRun:
    """Carries out a schedule against a fleet; records every incident."""

    def __init__(
        self,
        *,
        fleet: Fleet,
        link: Any,  # chaos_proxy.BrokerLink
        producer: ChaosProducer,
        ledger: LedgerTail,
        size: Size,
    ) -> None:
        self.fleet, self.link, self.producer, self.ledger, self.size = fleet, link, producer, ledger, size
        self.result = RunResult()
        self._open_cut: Incident | None = None
        self._wake = threading.Event()  # never set: a sleep that reads as what it is (pacing)

    # -- health -------------------------------------------------------------------------------
    def lagging(self, lag: float = 1.5) -> dict[str, int]:
        """Per topic, how many records produced more than *lag* s ago are not handled yet."""
        self.ledger.poll()
        now = time.time()
        behind: dict[str, int] = {}
        for topic, records in self.producer.produced.items():
            handled = self.ledger.handled.get(topic, set())
            count = sum(1 for r in list(records) if r.ts <= now - lag and r.id not in handled)
            if count:
                behind[topic] = count
        return behind

    def settle(self, phase: str, bound: float, lag: float = 1.5) -> None:
        """Wait (bounded) until every record produced more than *lag* s ago was handled; record it."""
        started = time.monotonic()
        caught_up = False
        while time.monotonic() - started < bound:
            if not self.lagging(lag):
                caught_up = True
                break
            self._wake.wait(0.25)  # polling interval of a bounded wait
        self.result.settles.append((phase, time.monotonic() - started, caught_up))

    # -- faults -------------------------------------------------------------------------------
    def _incident(self, kind: str, phase: str, target: str, **kwargs: Any) -> Incident:
        now = time.time()
        incident = Incident(
            number=len(self.result.incidents) + 1,
            kind=kind,
            phase=phase,
            start=now,
            end=now,
            target=target,
            **kwargs,
        )
        self.result.incidents.append(incident)
        return incident

    def do(self, step: Step, phase: str) -> None:
        fleet = self.fleet
        if step.action == "kill_worker":
            # Right after a supervisor restart no worker may be ready yet: wait for one (bounded).
            deadline = time.monotonic() + 5.0
            while not fleet.live_workers() and time.monotonic() < deadline:
                self._wake.wait(0.1)  # polling interval of a bounded wait
            killed = fleet.kill_worker(step.choice)
            if killed is None:
                self.result.notes.append(f"{phase}: no live worker to kill")
                return
            target, pid = killed
            label = target.split()[0]
            incident = self._incident("worker_kill", phase, target, instance=label, pid=pid)
            incident.start = incident.end = time.time()
        elif step.action == "orphan_kill":
            self._orphan_kill(phase)
        elif step.action == "kill_supervisor":
            if not fleet.up:
                self.result.notes.append(f"{phase}: no instance to kill")
                return
            started = time.time()
            member = fleet.kill_supervisor(step.choice)
            restarted = fleet.start(member.name)
            incident = self._incident(
                "supervisor_kill",
                phase,
                f"{member.label} pid {member.proc.pid} -> {restarted.label}",
                instance=member.label,
            )
            incident.start = started
        elif step.action == "join":
            if "B" in fleet.up:
                self.result.notes.append(f"{phase}: B already up, join skipped")
                return
            member = fleet.start("B")
            self._incident("join", phase, f"{member.label} joins")
        elif step.action == "ack_later":
            self.producer.inject({"ack_later": True}, count=ACK_LATER_RECORDS)
        elif step.action in ("slow_join", "burst_join", "ack_join"):
            if step.action == "slow_join":
                ids = self.producer.inject({"slow": SLOW_S}, count=SLOW_RECORDS)
                what = f"{SLOW_RECORDS} calls of {SLOW_S:g}s per topic"
            elif step.action == "ack_join":
                ids = self.producer.inject({"ack_later": True}, count=ACK_LATER_RECORDS)
                what = f"{ACK_LATER_RECORDS} records per topic acked late"
            else:
                ids = self.producer.burst(BURST_RECORDS, {"delay": BURST_DELAY_S})
                what = f"burst of {BURST_RECORDS} x {BURST_DELAY_S:g}s per topic"
            if "B" in fleet.up:
                self.result.notes.append(f"{phase}: B already up, {what} without a join")
                target = what
            else:
                target = f"{what}, {fleet.start('B').label} joins"
            self._incident(step.action, phase, target, record_ids=ids)
        elif step.action == "leave":
            leaving = fleet.leave("B")
            if leaving is None:
                self.result.notes.append(f"{phase}: B not up, leave skipped")
                return
            self._incident("leave", phase, f"{leaving.label} leaves (SIGTERM)", instance=leaving.label)
        elif step.action == "cut":
            if self._open_cut is not None:
                self.result.notes.append(f"{phase}: connection already cut")
                return
            reset = self.link.cut()
            self._open_cut = self._incident("cut", phase, f"broker link cut ({reset} sockets reset)")
        elif step.action == "restore":
            if self._open_cut is None:
                return
            refused = self.link.restore()
            self._open_cut.end = time.time()
            self._open_cut.target += f", {refused} refused"
            self._open_cut = None
        elif step.action == "hang":
            ids = self.producer.inject({"hang": True})
            self._incident(
                "hang",
                phase,
                f"hanging record in every topic ({next(iter(ids.values()))[-6:]})",
                record_ids=ids,
            )
        elif step.action == "poison":
            ids = self.producer.inject({"fail": step.choice})
            self._incident(
                "poison",
                phase,
                f"record failing {step.choice} attempts ({next(iter(ids.values()))[-6:]})",
                record_ids=ids,
            )
        else:
            raise ValueError(step.action)

    def _orphan_kill(self, phase: str) -> None:
        """Inject a ``spawn`` record into every topic; SIGKILL the first worker seen spawning, while
        its background process lives on. Judged like any worker kill."""
        ids = set(self.producer.inject({"spawn": True}).values())
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            self.ledger.poll()
            spawned = [e for e in self.ledger.entries if e["kind"] == "spawn" and e["id"] in ids]
            live = {
                pid: (label, trigger, worker) for label, trigger, worker, pid, _ in self.fleet.live_workers()
            }
            for entry in spawned:
                if entry["pid"] in live:
                    label, trigger, worker = live[entry["pid"]]
                    # Taken before the kill: the death is noticed within milliseconds, and a record
                    # the worker finished but never reported may start again on another worker
                    # before this thread gets to record the incident.
                    killed_at = time.time()
                    os.kill(entry["pid"], signal.SIGKILL)
                    target = (
                        f"{label} {trigger}/w{worker} pid {entry['pid']}, child {entry['background']} left"
                    )
                    incident = self._incident("worker_kill", phase, target, instance=label, pid=entry["pid"])
                    incident.start = incident.end = killed_at
                    return
            self._wake.wait(0.05)  # polling interval of a bounded wait
        self.result.notes.append(f"{phase}: no worker seen spawning a background process")

    def end_background_processes(self) -> None:
        """SIGKILL what ``spawn`` records left behind (checked to still be a ``sleep``: pids recycle)."""
        self.ledger.poll()
        for entry in self.ledger.entries:
            if entry["kind"] != "spawn":
                continue
            pid = int(entry["background"])
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if not fh.read().startswith(b"sleep"):
                        continue
                os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue

    def run(self, phases: Sequence[Phase]) -> RunResult:
        self.result.t0 = time.time()
        for phase in phases:
            self.settle(phase.name, self.size.settle_s)
            began = time.monotonic()
            for step in phase.steps:
                delay = began + step.at - time.monotonic()
                if delay > 0:
                    self._wake.wait(delay)  # the fault schedule's pacing
                self.do(step, phase.name)
            remaining = began + phase.length - time.monotonic()
            if remaining > 0:
                self._wake.wait(remaining)
            if self._open_cut is not None:  # a mixed phase may end inside a cut
                self.do(Step(0.0, "restore"), phase.name)
        if "A" not in self.fleet.up:
            self.fleet.start("A")
        return self.result

    def refine(self) -> None:
        """Hang and poison incidents last while the fault acts, read from the ledger: from the first hang
        (or failed attempt) of the record to its next attempt (or its last failed attempt)."""
        self.ledger.poll()
        for incident in self.result.incidents:
            if incident.kind not in ("hang", "poison"):
                continue
            ids = set(incident.record_ids.values())
            mine = [e for e in self.ledger.entries if e["id"] in ids]
            marks = [e["wall"] for e in mine if e["kind"] in ("hang", "fail")]
            if not marks:
                continue
            incident.start = min(marks)
            if incident.kind == "poison":
                incident.end = max(marks)
            else:
                # Over when the last of the topics' hung records was attempted again.
                incident.end = max(_retried_at(hang, mine) for hang in mine if hang["kind"] == "hang")


def _retried_at(hang: Entry, entries: Sequence[Entry]) -> float:
    """When the record of a ``hang`` line was attempted again (the hang line's time if never)."""
    again = [
        e["wall"]
        for e in entries
        if e["kind"] == "start" and e["id"] == hang["id"] and e["wall"] > hang["wall"]
    ]
    return min(again, default=hang["wall"])


def wait_all_committed(
    sampler: CommitSampler, end_offsets: Mapping[str, Mapping[int, int]], timeout: float
) -> dict[str, dict[int, int]]:
    """Bounded wait until every group's committed offsets equal the end offsets; returns the last seen."""
    deadline = time.monotonic() + timeout
    seen: dict[str, dict[int, int]] = {}
    while True:
        seen = {topic: sampler.latest(topic) for topic in end_offsets}
        if all(seen[t] == dict(end) for t, end in end_offsets.items()) or time.monotonic() > deadline:
            return seen
        time.sleep(0.3)  # polling interval of a bounded wait


def log_time(log: Mapping[str, Any]) -> float:
    """A log line's ISO-8601 timestamp as seconds since the epoch (comparable with time.time())."""
    return datetime.fromisoformat(str(log["timestamp"]).replace("Z", "+00:00")).timestamp()


def ownership(
    members: Sequence[Member], topic_of_trigger: Mapping[str, str]
) -> dict[str, dict[int, list[tuple[float, str | None]]]]:
    """topic -> partition -> [(time, owning instance label or None)], from every instance's logs:
    assigned (cooperative: incremental), revoked, lost, the trigger stopped, the supervisor SIGKILLed."""
    events: list[tuple[float, int, str, str | None, int | None]] = []  # (t, +1 assign/-1 release, label, ...)
    for member in members:
        for log in list(member.proc.logs):
            message = log.get("message")
            if message in ("partitions assigned", "partitions revoked", "partitions lost"):
                change = 1 if message == "partitions assigned" else -1
                for tp in log.get("partitions") or ():
                    topic, _, partition = str(tp).rpartition("/")
                    events.append((log_time(log), change, member.label, topic, int(partition)))
            elif message == "stopped" and log.get("trigger") in topic_of_trigger:
                events.append((log_time(log), -1, member.label, topic_of_trigger[str(log["trigger"])], None))
        if member.killed_at is not None:
            events.append((member.killed_at, -1, member.label, None, None))
    owners: dict[tuple[str, int], str | None] = {}
    timelines: dict[str, dict[int, list[tuple[float, str | None]]]] = {
        t: {} for t in topic_of_trigger.values()
    }
    for when, change, label, topic, partition in sorted(events, key=lambda e: e[0]):
        if change > 0 and topic is not None and partition is not None:
            targets = [(topic, partition)]
        else:
            targets = [
                tp
                for tp, owner in owners.items()
                if owner == label
                and (topic is None or tp[0] == topic)
                and (partition is None or tp[1] == partition)
            ]
        for tp in targets:
            new = label if change > 0 else None
            if owners.get(tp) != new:
                owners[tp] = new
                timelines.setdefault(tp[0], {}).setdefault(tp[1], []).append((when, new))
    return timelines


def tenures(members: Sequence[Member], topic_of_trigger: Mapping[str, str]) -> dict[str, list[Tenure]]:
    """topic -> every stretch during which an instance held a partition by its own logs: from
    "partitions assigned" to "partitions revoked", "partitions lost", the trigger's "stopped", the
    supervisor's SIGKILL or the end of the run ("open")."""
    out: dict[str, list[Tenure]] = {topic: [] for topic in topic_of_trigger.values()}
    for member in members:
        held: dict[tuple[str, int], float] = {}
        for log in list(member.proc.logs):
            message = str(log.get("message", ""))
            named = [_topic_partition(tp) for tp in log.get("partitions") or ()]
            if message == "partitions assigned":
                for tp in named:
                    held.setdefault(tp, log_time(log))
            elif message == "partitions revoked":
                _close(out, held, member.label, named, log_time(log), "revoked")
            elif message.startswith("partitions lost"):
                _close(out, held, member.label, named, log_time(log), "lost")
            elif message == "stopped" and log.get("trigger") in topic_of_trigger:
                topic = topic_of_trigger[str(log["trigger"])]
                _close(
                    out, held, member.label, [tp for tp in held if tp[0] == topic], log_time(log), "stopped"
                )
        if member.killed_at is not None:
            _close(out, held, member.label, list(held), member.killed_at, "killed")
        _close(out, held, member.label, list(held), math.inf, "open")
    return out


def _topic_partition(text: object) -> tuple[str, int]:
    topic, _, partition = str(text).rpartition("/")
    return topic, int(partition)


def _close(
    out: dict[str, list[Tenure]],
    held: dict[tuple[str, int], float],
    label: str,
    tps: Sequence[tuple[str, int]],
    when: float,
    how: str,
) -> None:
    for tp in tps:
        if tp in held:
            out.setdefault(tp[0], []).append(Tenure(label, tp[1], held.pop(tp), when, how))


def session_losses(members: Sequence[Member], incidents: Sequence[Incident]) -> list[tuple[str, float]]:
    """(instance/trigger, time) of "partitions lost" log lines that no cut explains: a member whose
    session expired although nothing cut it off."""
    cuts = [(i.start, i.end + 5.0) for i in incidents if i.kind == "cut"]
    found = []
    for member in members:
        for log in list(member.proc.logs):
            if str(log.get("message", "")).startswith("partitions lost"):
                when = log_time(log)
                if not any(lo <= when <= hi for lo, hi in cuts):
                    found.append((f"{member.label}/{log.get('trigger')}", when))
    return found


def end_offsets_of(produced: Sequence[Produced]) -> dict[int, int]:
    ends: dict[int, int] = {}
    for record in produced:
        ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
    return ends
