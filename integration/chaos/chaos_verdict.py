"""The chaos suite's verdict: what the handler's ledger says happened to every produced record.

Pure functions over four inputs, so the checks can be tested on hand-made ledgers
(``test_chaos_verdict.py``) as well as run on a real chaos run:

* :class:`Produced`: every record the producer got a delivery report for (id, partition, offset, key,
  per-key sequence number, production time, whether it is a poison or a hanging record);
* the ledger: one JSON object per line, written by the handler (``start``/``end`` around each call,
  ``fail`` for a poison attempt that raised, ``hang`` when a handler starts to hang);
* :class:`CommitSample`: the group's committed offsets read every few hundred ms, directly from the
  broker, with the wall time the answer arrived;
* :class:`Incident`: every fault injected, with its start and end.

Definitions (per trigger, i.e. per topic and consumer group):

* **handled**: produced records with at least one ``end`` line; **lost**: produced, never handled.
* **duplicates**: ``end`` lines beyond the first of a record. Each one is attributed to the fault that
  preceded it (:func:`attribute`): of the incidents that began before the redelivery, were not over
  before the first delivery and could have undone it (:func:`hits`: a killed worker's own results, a
  killed or leaving instance's own records, any record for a join or a cut), the one that ended last
  before the redelivery, else the latest one still going on.
* **in-flight window** of a cluster of incidents (incidents less than ``CLUSTER_GAP_S`` apart): the
  deliveries a fault of the cluster could undo. Every record that was handled but not committed when
  the cluster began (offset at or past the group's committed offset in the last sample before it), or
  first handled until ``WINDOW_AFTER_S`` after it ended, counts once; every redelivery counts once more
  when another incident of the cluster than the one it is blamed on could have undone it too
  (:func:`undoable`: not over before it completed, :func:`hits` it, found the record uncommitted when
  it began). A delivery is undone at most once and each duplicate needs an undone delivery before
  it, so a cluster's duplicates may not exceed its window. (Overlapping faults: a record handled by
  an instance whose supervisor is then killed, handled again by the restarted one and caught
  uncommitted by a broker cut a second later runs three times: two duplicates, two undone deliveries.)
* **started after letting go**: a ``start`` line of an instance for a partition more than
  ``ZOMBIE_GRACE_S`` after that instance logged that it let the partition go (revoked, lost, stopped):
  such calls run alongside the partition's new owner.
* **committed without a finished handler call**: a record the group's committed offset had passed
  (the first sample showing it past) while no handler call of it had ended yet (no ``end`` line
  before that answer arrived): committed, though never handled, e.g. a call killed at a rebalance
  deadline and counted as a failed attempt (issue #12).
* **redelivered though committed**: a redelivery that started after a commit sample already showed
  the group's position past that record. The new owner of a partition starts at the committed
  position, so this only happens if something ran a record it no longer owned.
* **order** among first deliveries: in pool/static mode a partition's records must first complete in
  offset order; in key mode a key's records must first complete in sequence order.
* **stall** of an incident: the longest gap between first completions of an *untouched* partition, from
  the incident's start until the pipeline recovered. Untouched: not hit directly (the partition of the
  record a killed worker was running, of a hanging or poison record; every partition for a cut) and
  owned by one instance the whole time (``ownership``, from the instances' assignment logs: a
  partition revoked from one member and not yet given to another counts as touched). Records flow
  steadily into every partition, so a long gap means an untouched partition waited.
* **inputs committed without their outputs**: the handler produces the record's id to
  ``<topic>-out``; a record whose offset a commit sample shows committed must have its id in that
  topic (read after the run). Outputs are confirmed before their input is committed, so
  this must be 0 (duplicates there are allowed: at-least-once).
* **recovery**: from the incident's start until the last record produced after it with a latency
  (first completion minus production) above ``LAG_OK_S``, and every late record before it, completed,
  looking only at records produced before the next incident. ``>`` marks an incident the pipeline had
  not recovered from when the next one began.
* **broker orphan stall** (:func:`orphan_stalls`): a partition no instance held (tenures) for
  ``ORPHAN_MIN_S`` or more, counted from the first completed rebalance that left it out (a
  "partitions assigned" line of a group member without it: that member was polling and in the group)
  while some member was up (membership: "consuming" until it stopped or was SIGKILLed) and no broker
  cut was going on. Tansu's cooperative-sticky assignment does this (the instances' own logs show
  a member holding nothing, or only its other partitions, while the rest sit unowned). Assignments
  are computed by librdkafka's assignor from the group state the broker keeps; streamworker only
  receives them, and a member that stops polling completes no rebalance, so its stalls are not
  excused. An incident whose recovery window (its start until it recovered) overlaps one is not held
  to its recovery bound (:func:`bound_problems`); the table marks its recovery time with ``*``.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

CLUSTER_GAP_S = 3.0
WINDOW_AFTER_S = 3.0
# A record whose first delivery ended this long before an incident ended can still be attributed to it.
ATTRIBUTION_SLACK_S = 0.5
LAG_OK_S = 1.5
# A join or leave lasts until the last partition move it caused, at most this long.
REBALANCE_MAX_S = 15.0
# Workers exit within a second when their supervisor is SIGKILLed (docs/record-path.md); tolerated.
ORPHAN_GRACE_S = 1.5
# A record may start this long after its instance let its partition go (cancelling takes a pipe trip).
ZOMBIE_GRACE_S = 0.1
# A hung handler must be replaced within eventTimeout plus this (kill, respawn, retry backoff).
HANG_RELEASE_SLACK_S = 4.0
# A partition nobody owns this long after a completed rebalance left it out, while a member of the
# group was up and connected, is a broker orphan stall (Tansu with cooperative-sticky, after a member
# was SIGKILLed while others joined and left within seconds; plain consumers do it too). Healthy
# reassignments in the long run of 2026-12-07 (two cooperative rounds on a loaded 2-core box) took at
# most 6.7 s from that first rebalance to the partition's next owner.
ORPHAN_MIN_S = 8.0
# Bounds for incidents of the single-fault phases (the mixed phase overlaps faults, so there only the
# record-level checks apply). Generous: a 2-core machine shared with other suites.
RECOVERY_BOUND_S = {
    "worker_kill": 10.0,
    "supervisor_kill": 30.0,
    # A member joining a cooperative group takes two rounds (~4 s): the partitions it is to get are
    # revoked in the first and idle until the second. One that leaves before the second round leaves
    # them unowned until the group notices (plain confluent-kafka consumers on Tansu: ~4 s later).
    "join": 25.0,
    "leave": 25.0,
    "cut": 35.0,
    "hang": 15.0,
    "poison": 15.0,
    # A join (as above) while sync calls outlast the rebalance wait, or while a burst of slow records
    # (several seconds of work) keeps partitions paused: recovery includes working off that backlog.
    "slow_join": 30.0,
    "burst_join": 30.0,
    "ack_join": 25.0,
}
STALL_BOUND_S = {
    "worker_kill": 5.0,
    "supervisor_kill": 5.0,
    "join": 5.0,
    "leave": 5.0,
    "hang": 6.0,
    "poison": 5.0,
}
# Incidents that are (or include) a member joining or leaving.
REBALANCES = ("join", "leave", "slow_join", "burst_join", "ack_join")
# Incidents of this phase overlap: only the record-level checks apply to them.
MIXED = "mixed"

Entry = dict[str, Any]


@dataclass(frozen=True)
class Produced:
    id: str
    topic: str
    partition: int
    offset: int
    key: str
    seq: int
    ts: float
    fail: int = 0
    hang: bool = False


@dataclass(frozen=True)
class CommitSample:
    wall: float  # when the answer arrived: every commit it shows happened before this
    topic: str
    offsets: Mapping[int, int]


@dataclass(frozen=True)
class Tenure:
    """An instance held a partition (by its own logs) from ``start`` until ``end``, ended by ``how``:
    revoked, lost, stopped, killed or open (still held when the run ended)."""

    instance: str
    partition: int
    start: float
    end: float
    how: str


@dataclass(frozen=True)
class Membership:
    """An instance was a member of a trigger's group (by its logs) from ``start`` ("consuming") until
    ``end`` (stopping, stopped, SIGKILLed; inf: still at the end of the run)."""

    instance: str
    start: float
    end: float


@dataclass(frozen=True)
class Assignment:
    """An instance logged "partitions assigned" at ``t`` (a rebalance it took part in completed),
    with the partitions it was given (incremental under cooperative-sticky: often none)."""

    instance: str
    t: float
    partitions: tuple[int, ...]


@dataclass(frozen=True)
class OrphanStall:
    """``partitions`` had no owner from ``start`` (the first completed rebalance that left them out)
    until ``end`` while the group had a connected member: the broker's doing, not ours."""

    partitions: tuple[int, ...]
    start: float
    end: float
    members: tuple[str, ...]  # "A4 (held 3,4,5)", "B2 (held nothing)"


@dataclass
class Incident:
    number: int
    # worker_kill, supervisor_kill, join, leave, cut, hang, poison, slow_join, burst_join, ack_join
    kind: str
    phase: str
    start: float
    end: float
    target: str
    instance: str | None = None  # the instance label (e.g. "A2") a kill or leave was aimed at
    pid: int | None = None  # the worker pid of a worker_kill
    record_ids: dict[str, str] = field(default_factory=dict)  # topic -> record id (hang, poison)


@dataclass
class IncidentStats:
    duplicates: int = 0
    stall_s: float | None = None  # None: no partition was left untouched
    recovery_s: float = 0.0
    recovered: bool = True  # False: not before the next incident (or the end of the run)
    affected: tuple[int, ...] | None = None  # None: all partitions
    orphaned: bool = False  # its recovery window overlaps a broker orphan stall: no recovery bound


@dataclass
class TriggerVerdict:
    trigger: str
    topic: str
    mode: str
    produced: int = 0
    handled: int = 0
    lost: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # ledger ids nobody produced
    misplaced: list[str] = field(default_factory=list)  # handled at another partition/offset than produced
    duplicates: int = 0
    unattributed: list[str] = field(default_factory=list)
    committed_redeliveries: list[str] = field(default_factory=list)
    committed_unfinished: list[str] = field(default_factory=list)
    window_overruns: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # handler calls after their supervisor was killed
    zombies: list[str] = field(default_factory=list)  # handler calls for a partition the instance let go
    order_scope: str = "partition"
    order_violations: list[str] = field(default_factory=list)
    poison: list[str] = field(default_factory=list)  # problems with poison records
    poison_ok: int = 0
    poison_total: int = 0
    hang: list[str] = field(default_factory=list)  # problems with hanging records
    hang_ok: int = 0
    hang_total: int = 0
    hang_released_s: float = 0.0  # longest time from a hang to the next attempt of that record
    incidents: dict[int, IncidentStats] = field(default_factory=dict)
    clusters: list[tuple[list[int], int, int]] = field(default_factory=list)  # (incidents, dups, window)
    outputs_checked: bool = False  # the run read the output topic
    orphan_stalls: list[OrphanStall] = field(default_factory=list)
    committed_without_outputs: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        out: list[str] = []
        for name, items in (
            ("lost", self.lost),
            ("committed without a finished handler call", self.committed_unfinished),
            ("handled but never produced", self.unknown),
            ("handled at the wrong partition/offset", self.misplaced),
            ("duplicates with no preceding incident", self.unattributed),
            ("redelivered though already committed", self.committed_redeliveries),
            ("duplicates beyond the in-flight window", self.window_overruns),
            ("handler calls in workers whose supervisor was already dead", self.orphans),
            ("records started by an instance after it had let their partition go", self.zombies),
            (f"per-{self.order_scope} order violations among first deliveries", self.order_violations),
            ("poison records", self.poison),
            ("hanging records", self.hang),
            ("inputs committed without their outputs", self.committed_without_outputs),
        ):
            if items:
                shown = "; ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
                out.append(f"{self.trigger}: {len(items)} {name}: {shown}")
        return out


# ---------------------------------------------------------------------------------------------- input


def read_ledger(path: Path) -> list[Entry]:
    """Every complete line of the ledger (a line still being written is left out)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line]


@dataclass
class RunRecord:
    """Everything a verdict needs besides the ledger; saved next to it so a run can be judged again
    (``python chaos_verdict.py FOLDER``)."""

    triggers: dict[str, tuple[str, str]]  # trigger name -> (allocation mode, topic)
    partitions: int
    event_timeout: float
    t0: float  # when the first phase began
    run_end: float  # when every record was handled and committed, before the instances stopped
    title: str
    produced: dict[str, list[Produced]]  # topic -> records, from delivery reports
    samples: list[CommitSample]
    incidents: list[Incident]
    ownership: dict[str, dict[int, list[tuple[float, str | None]]]]  # topic -> partition -> timeline
    tenures: dict[str, list[Tenure]] = field(default_factory=dict)  # topic -> who held what when
    # topic -> the record ids found in its output topic after the run (absent: not checked)
    outputs: dict[str, list[str]] = field(default_factory=dict)
    # topic -> group membership and completed rebalances per instance (absent: no orphan detection)
    members: dict[str, list[Membership]] | None = None
    assignments: dict[str, list[Assignment]] | None = None

    def save(self, folder: Path) -> None:
        with open(folder / "produced.jsonl", "w", encoding="utf-8") as fh:
            for records in self.produced.values():
                fh.writelines(json.dumps(asdict(r)) + "\n" for r in records)
        with open(folder / "samples.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(
                json.dumps({"wall": s.wall, "topic": s.topic, "offsets": dict(s.offsets)}) + "\n"
                for s in self.samples
            )
        meta = {
            "triggers": self.triggers,
            "partitions": self.partitions,
            "event_timeout": self.event_timeout,
            "t0": self.t0,
            "run_end": self.run_end,
            "title": self.title,
            "incidents": [asdict(i) for i in self.incidents],
            "ownership": self.ownership,
            "tenures": {topic: [asdict(t) for t in items] for topic, items in self.tenures.items()},
            "outputs": self.outputs,
        }
        if self.members is not None and self.assignments is not None:
            meta["members"] = {topic: [asdict(m) for m in items] for topic, items in self.members.items()}
            meta["assignments"] = {
                topic: [asdict(a) for a in items] for topic, items in self.assignments.items()
            }
        (folder / "run.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> RunRecord:
        meta = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        produced: dict[str, list[Produced]] = {topic: [] for _, topic in meta["triggers"].values()}
        for line in (folder / "produced.jsonl").read_text(encoding="utf-8").splitlines():
            record = Produced(**json.loads(line))
            produced.setdefault(record.topic, []).append(record)
        samples = []
        for line in (folder / "samples.jsonl").read_text(encoding="utf-8").splitlines():
            raw = json.loads(line)
            offsets = {int(p): int(o) for p, o in raw["offsets"].items()}
            samples.append(CommitSample(wall=raw["wall"], topic=raw["topic"], offsets=offsets))
        incidents = [Incident(**raw) for raw in meta["incidents"]]
        members: dict[str, list[Membership]] | None = None
        assignments: dict[str, list[Assignment]] | None = None
        if "members" in meta:
            members = {t: [Membership(**raw) for raw in items] for t, items in meta["members"].items()}
            assignments = {
                t: [Assignment(raw["instance"], raw["t"], tuple(raw["partitions"])) for raw in items]
                for t, items in meta.get("assignments", {}).items()
            }
        elif (folder / "logs").is_dir():  # runs saved before membership was: read the instances' logs
            killed = {i.instance: i.start for i in incidents if i.kind == "supervisor_kill" and i.instance}
            members, assignments = group_activity(
                {path.stem: read_instance_log(path) for path in sorted((folder / "logs").glob("*.log"))},
                {name: topic for name, (_, topic) in meta["triggers"].items()},
                killed,
            )
        return cls(
            triggers={name: (mode, topic) for name, (mode, topic) in meta["triggers"].items()},
            partitions=meta["partitions"],
            event_timeout=meta["event_timeout"],
            t0=meta["t0"],
            run_end=meta["run_end"],
            title=meta["title"],
            produced=produced,
            samples=samples,
            incidents=incidents,
            ownership={
                topic: {int(p): [(t, who) for t, who in timeline] for p, timeline in partitions.items()}
                for topic, partitions in meta["ownership"].items()
            },
            tenures={
                topic: [Tenure(**raw) for raw in items] for topic, items in meta.get("tenures", {}).items()
            },
            outputs=meta.get("outputs", {}),
            members=members,
            assignments=assignments,
        )


def read_instance_log(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of an instance's dumped output (``Fleet.dump_logs``), stderr left out."""
    logs = []
    for line in path.read_text(encoding="utf-8").split("\n--- stderr ---\n")[0].splitlines():
        if line.startswith("{"):
            try:
                logs.append(json.loads(line))
            except ValueError:
                continue
    return logs


def log_time(log: Mapping[str, Any]) -> float:
    """A log line's ISO-8601 timestamp as seconds since the epoch (comparable with time.time())."""
    return datetime.fromisoformat(str(log["timestamp"]).replace("Z", "+00:00")).timestamp()


def group_activity(
    logs: Mapping[str, Sequence[Mapping[str, Any]]],
    topic_of_trigger: Mapping[str, str],
    killed_at: Mapping[str, float],
) -> tuple[dict[str, list[Membership]], dict[str, list[Assignment]]]:
    """Per topic, from every instance's logs (instance label -> log lines): when each instance was a
    member of the trigger's group ("consuming" until "stopping"/"stopped" or its SIGKILL, *killed_at*)
    and every "partitions assigned" line it logged."""
    members: dict[str, list[Membership]] = {topic: [] for topic in topic_of_trigger.values()}
    assignments: dict[str, list[Assignment]] = {topic: [] for topic in topic_of_trigger.values()}
    for label, lines in logs.items():
        since: dict[str, float] = {}
        for log in lines:
            topic = topic_of_trigger.get(str(log.get("trigger")))
            if topic is None:
                continue
            message = log.get("message")
            if message == "consuming":
                since.setdefault(topic, log_time(log))
            elif message in ("stopping", "stopped") and topic in since:
                members[topic].append(Membership(label, since.pop(topic), log_time(log)))
            elif message == "partitions assigned":
                named = tuple(sorted(int(str(tp).rpartition("/")[2]) for tp in log.get("partitions") or ()))
                assignments[topic].append(Assignment(label, log_time(log), named))
        for topic, start in since.items():
            members[topic].append(Membership(label, start, killed_at.get(label, math.inf)))
    return members, assignments


def judge(run: RunRecord, entries: Sequence[Entry]) -> list[TriggerVerdict]:
    """One verdict per trigger."""
    return [
        analyse(
            trigger=name,
            topic=topic,
            mode=mode,
            produced=run.produced[topic],
            entries=entries,
            samples=run.samples,
            incidents=run.incidents,
            run_end=run.run_end,
            partitions=range(run.partitions),
            event_timeout=run.event_timeout,
            ownership=run.ownership.get(topic, {}),
            tenures=run.tenures.get(topic),
            outputs=run.outputs.get(topic),
            members=None if run.members is None else run.members.get(topic, []),
            assignments=None if run.assignments is None else run.assignments.get(topic, []),
        )
        for name, (mode, topic) in run.triggers.items()
    ]


# ------------------------------------------------------------------------------------------- analysis


def committed_without_outputs(
    produced: Sequence[Produced], samples: Sequence[CommitSample], topic: str, outputs: Iterable[str]
) -> list[str]:
    """Records some commit sample shows committed whose id is not in the output topic."""
    committed: dict[int, int] = {}
    for sample in samples:
        if sample.topic == topic:
            for partition, offset in sample.offsets.items():
                committed[partition] = max(committed.get(partition, 0), offset)
    seen = set(outputs)
    return sorted(r.id for r in produced if r.offset < committed.get(r.partition, 0) and r.id not in seen)


def first_ends(entries: Iterable[Entry]) -> dict[str, list[Entry]]:
    """id -> its ``end`` lines, earliest first."""
    ends: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        if entry["kind"] == "end":
            ends[entry["id"]].append(entry)
    for lines in ends.values():
        lines.sort(key=lambda e: e["wall"])
    return ends


def rebalance_ends(incidents: Sequence[Incident], ownership: Mapping[int, Timeline]) -> list[Incident]:
    """Copies of *incidents* (in start order) where a join or a leave lasts until the last ownership
    change it brought about: up to REBALANCE_MAX_S, and not past the next incident's start."""
    out = []
    for index, incident in enumerate(incidents):
        if incident.kind in REBALANCES:
            horizon = incident.start + REBALANCE_MAX_S
            if index + 1 < len(incidents):
                horizon = min(horizon, incidents[index + 1].start)
            changes = [
                t for timeline in ownership.values() for t, _ in timeline if incident.start <= t <= horizon
            ]
            incident = replace(incident, end=max([incident.end, *changes]))
        out.append(incident)
    return out


def committed_before(times: Sequence[float], values: Sequence[int], t: float) -> int:
    """The committed offset the last sample answered before *t* showed (0: none yet)."""
    index = bisect.bisect_left(times, t) - 1
    return values[index] if index >= 0 else 0


def committed_unfinished(
    produced: Sequence[Produced],
    first_end: Mapping[str, float],
    commit_times: Mapping[int, Sequence[float]],
    commit_values: Mapping[int, Sequence[int]],
) -> list[str]:
    """Records some commit sample showed passed before any handler call of them had ended."""
    # Per partition, the highest committed offset seen so far at each sample: the first sample
    # whose running maximum passes an offset is when that record counted as committed.
    highest: dict[int, list[int]] = {
        p: list(itertools.accumulate(values, max)) for p, values in commit_values.items()
    }
    out = []
    for record in produced:
        tops = highest.get(record.partition)
        if not tops:
            continue
        index = bisect.bisect_right(tops, record.offset)
        if index == len(tops):
            continue  # never committed past it
        seen = commit_times[record.partition][index]
        ended = first_end.get(record.id)
        if ended is None or ended > seen:
            finished = "never handled" if ended is None else f"first call ended {ended:.3f}"
            out.append(
                f"{record.id} ({record.partition}/{record.offset}) committed by {seen:.3f}, {finished}"
            )
    return out


def hits(incident: Incident, first: Entry, hung_pids: Mapping[int, set[int]]) -> bool:
    """Could *incident* have undone the first delivery *first* (made its completion not count)?"""
    if incident.kind == "worker_kill":  # the results the killed worker had not reported yet
        return bool(first["pid"] == incident.pid)
    if incident.kind == "supervisor_kill":  # what that instance had not committed yet
        return bool(first["inst"] == incident.instance)
    if incident.kind == "hang":  # eventTimeout killed the hung worker with its unreported results
        return first["pid"] in hung_pids.get(incident.number, set())
    # join, leave: the rebalance may move any member's partitions (a revoke commits the completed
    # prefix only: in key mode later completed records run again); cut: every member. A poison
    # record's failed attempt is retried: it undoes nothing.
    return incident.kind != "poison"


def attribute(
    incidents: Sequence[Incident],
    first: Entry,
    redelivered_at: float,
    hung_pids: Mapping[int, set[int]] | None = None,
) -> Incident | None:
    """The incident a redelivery is blamed on: among those that began before it, were not over before
    the first delivery completed and could have undone it (:func:`hits`), the one that ended last
    before the redelivery (a fault that is over); failing that, the latest one still going on."""
    candidates = [
        i
        for i in incidents
        if i.start <= redelivered_at
        and i.end >= first["wall"] - ATTRIBUTION_SLACK_S
        and hits(i, first, hung_pids or {})
    ]
    over = [i for i in candidates if i.end <= redelivered_at]
    if over:
        return max(over, key=lambda i: (i.end, i.start))
    return max(candidates, key=lambda i: i.start, default=None)


def undoable(
    incident: Incident,
    again: Entry,
    record: Produced,
    cause: Incident | None,
    hung_pids: Mapping[int, set[int]],
    commit_times: Mapping[int, Sequence[float]],
    commit_values: Mapping[int, Sequence[int]],
) -> bool:
    """Could *incident* have undone the redelivery *again* of *record* (whose redelivery is blamed
    on *cause*)? Another incident than its cause, not over before the redelivery completed, able to
    undo it (:func:`hits`), that found the record not committed yet when it began."""
    p = record.partition
    return (
        incident is not cause
        and incident.end >= again["wall"] - ATTRIBUTION_SLACK_S
        and hits(incident, again, hung_pids)
        and record.offset
        >= committed_before(commit_times.get(p, ()), commit_values.get(p, ()), incident.start)
    )


def clusters_of(incidents: Sequence[Incident]) -> list[list[Incident]]:
    """Incidents grouped when one starts less than CLUSTER_GAP_S after the previous ones ended."""
    groups: list[list[Incident]] = []
    reach = -math.inf
    for incident in sorted(incidents, key=lambda i: i.start):
        if groups and incident.start <= reach + CLUSTER_GAP_S:
            groups[-1].append(incident)
            reach = max(reach, incident.end)
        else:
            groups.append([incident])
            reach = incident.end
    return groups


Timeline = Sequence[tuple[float, str | None]]  # (time, owning instance or None), in time order


def recovery(
    records: Sequence[Produced], first_end: Mapping[str, float], start: float, until: float
) -> tuple[float, bool]:
    """(recovered at, whether it did before *until*) for an incident starting at *start*.

    Among the records produced from *start* until LAG_OK_S before *until* (the next incident), find
    the last one whose latency (first completion minus production) exceeded LAG_OK_S: the pipeline
    has recovered once it and every late record before it completed, and the next record was produced
    (that one was handled in time again).
    """
    # A record produced less than LAG_OK_S before the next incident may be late because of that one.
    window = [r for r in records if start <= r.ts < until - LAG_OK_S]
    late_done = start
    last_late = -1
    for index, record in enumerate(window):
        done = first_end.get(record.id, math.inf)
        if done - record.ts > LAG_OK_S:
            last_late = index
            late_done = max(late_done, done)
    if last_late < 0:
        return start, True
    if last_late == len(window) - 1:
        return min(late_done, until), late_done <= until
    return max(late_done, window[last_late + 1].ts), True


def owner_at(timeline: Timeline, t: float) -> str | None:
    owner: str | None = None
    for when, who in timeline:
        if when > t:
            break
        owner = who
    return owner


def kept_owner(timeline: Timeline, lo: float, hi: float) -> bool:
    """The partition had one owner the whole time from *lo* to *hi*."""
    owner = owner_at(timeline, lo)
    return owner is not None and all(who == owner for when, who in timeline if lo < when <= hi)


def orphan_stalls(
    tenures: Sequence[Tenure],
    members: Sequence[Membership],
    assignments: Sequence[Assignment],
    incidents: Sequence[Incident],
    partitions: Iterable[int],
    run_end: float,
) -> list[OrphanStall]:
    """Partitions that no instance held (``tenures``) for ORPHAN_MIN_S or more, counted from the
    first completed rebalance that left them out (an ``assignments`` line of a member without them),
    while the group had a member that was up and not cut off from the broker (``members``, cuts).

    A member's rebalance completing without them shows the member was polling and in the group: the
    broker (cooperative-sticky on Tansu, after a SIGKILL and quick joins and leaves) handed them to
    nobody. A member that stops polling never completes a rebalance, so its stalls are not excused."""
    cuts = [(i.start, i.end) for i in incidents if i.kind == "cut"]
    live_assignments = sorted(
        (a for a in assignments if any(m.instance == a.instance and m.start <= a.t < m.end for m in members)),
        key=lambda a: a.t,
    )
    spans: dict[tuple[float, float], list[int]] = {}
    for p in partitions:
        held = _merged([(t.start, min(t.end, run_end)) for t in tenures if t.partition == p])
        gaps = [(a[1], b[0]) for a, b in itertools.pairwise(held)]
        if held and held[-1][1] < run_end:
            gaps.append((held[-1][1], run_end))
        for lo, hi in gaps:
            for start, end in _connected(members, cuts, lo, hi):
                left_out = next(
                    (a.t for a in live_assignments if start <= a.t < end and p not in a.partitions), None
                )
                if left_out is not None and end - left_out >= ORPHAN_MIN_S:
                    spans.setdefault((left_out, end), []).append(p)
    out = []
    for (start, end), orphaned in sorted(spans.items()):
        described = []
        for m in members:
            if m.start < end and m.end > start:
                kept = sorted(
                    {
                        t.partition
                        for t in tenures
                        if t.instance == m.instance and t.start < end and t.end > start
                    }
                )
                held_text = ",".join(map(str, kept)) if kept else "nothing"
                described.append(f"{m.instance} (held {held_text})")
        out.append(OrphanStall(tuple(orphaned), start, end, tuple(described)))
    return out


def _merged(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _connected(
    members: Sequence[Membership], cuts: Sequence[tuple[float, float]], lo: float, hi: float
) -> list[tuple[float, float]]:
    """The parts of [lo, hi] during which some member was up and no cut was going on."""
    times = {lo, hi, *(t for m in members for t in (m.start, m.end)), *(t for cut in cuts for t in cut)}
    marks = sorted(t for t in times if lo <= t <= hi)
    pieces = []
    for a, b in itertools.pairwise(marks):
        mid = (a + b) / 2
        if any(m.start <= mid < m.end for m in members) and not any(c0 <= mid < c1 for c0, c1 in cuts):
            pieces.append((a, b))
    return _merged(pieces)


def _touched(
    incident: Incident, topic: str, by_id: Mapping[str, Produced], entries: Sequence[Entry]
) -> set[int] | None:
    """Partitions an incident hit directly (None: all of them), besides those that changed owner."""
    if incident.kind == "cut":
        return None
    if incident.kind == "worker_kill":
        return {
            e["p"]
            for e in entries
            if e["kind"] == "start"
            and e["pid"] == incident.pid
            and incident.start - 1.0 <= e["wall"] <= incident.start
        }
    if incident.kind in ("hang", "poison"):
        rid = incident.record_ids.get(topic)
        return {by_id[rid].partition} if rid in by_id else None
    if incident.kind in ("slow_join", "burst_join"):
        return None  # slow calls or a burst in (nearly) every partition
    return set()


def _max_stall(
    times_by_partition: Mapping[int, Sequence[float]], partitions: Iterable[int], lo: float, hi: float
) -> float:
    """Longest time within [lo, hi] that one of ``partitions`` went without a first completion."""
    worst = 0.0
    for p in partitions:
        times = times_by_partition.get(p, ())
        start = max(0, bisect.bisect_left(times, lo) - 1)
        stop = bisect.bisect_right(times, hi) + 1
        marks = [lo, *(t for t in times[start:stop] if lo < t < hi), hi]
        worst = max(worst, *(b - a for a, b in itertools.pairwise(marks)))
    return worst


def analyse(
    *,
    trigger: str,
    topic: str,
    mode: str,
    produced: Sequence[Produced],
    entries: Sequence[Entry],
    samples: Sequence[CommitSample],
    incidents: Sequence[Incident],
    run_end: float,
    partitions: Sequence[int],
    event_timeout: float,
    ownership: Mapping[int, Timeline],
    tenures: Sequence[Tenure] | None = None,
    outputs: Sequence[str] | None = None,
    members: Sequence[Membership] | None = None,
    assignments: Sequence[Assignment] | None = None,
) -> TriggerVerdict:
    """Everything the verdict table shows for one trigger."""
    verdict = TriggerVerdict(trigger=trigger, topic=topic, mode=mode, produced=len(produced))
    if outputs is not None:
        verdict.outputs_checked = True
        verdict.committed_without_outputs = committed_without_outputs(produced, samples, topic, outputs)
    verdict.order_scope = "key" if mode == "key" else "partition"
    mine = [e for e in entries if e.get("topic") == topic]
    by_id = {r.id: r for r in produced}
    ends = first_ends(mine)
    first_end = {rid: lines[0]["wall"] for rid, lines in ends.items()}

    # -- loss, strays, coordinates
    verdict.handled = sum(1 for r in produced if r.id in ends)
    verdict.lost = sorted(r.id for r in produced if r.id not in ends)
    verdict.unknown = sorted(rid for rid in ends if rid not in by_id)
    for rid, lines in ends.items():
        record = by_id.get(rid)
        if record is None:
            continue
        for e in lines:
            if (e["p"], e["o"]) != (record.partition, record.offset):
                verdict.misplaced.append(
                    f"{rid} produced at {record.partition}/{record.offset}, ran as {e['p']}/{e['o']}"
                )
                break

    # -- duplicates: attribution, committed-redelivery check, in-flight windows
    commit_times: dict[int, list[float]] = defaultdict(list)
    commit_values: dict[int, list[int]] = defaultdict(list)
    for sample in sorted((s for s in samples if s.topic == topic), key=lambda s: s.wall):
        for p, offset in sample.offsets.items():
            commit_times[p].append(sample.wall)
            commit_values[p].append(offset)
    verdict.committed_unfinished = committed_unfinished(produced, first_end, commit_times, commit_values)
    ordered_incidents = rebalance_ends(sorted(incidents, key=lambda i: i.start), ownership)
    hung_pids: dict[int, set[int]] = defaultdict(set)
    for incident in ordered_incidents:
        if incident.kind == "hang":
            hung = set(incident.record_ids.values())
            hung_pids[incident.number] = {e["pid"] for e in mine if e["kind"] == "hang" and e["id"] in hung}
    dup_by_incident: dict[int, int] = defaultdict(int)
    redeliveries: list[tuple[Entry, Incident | None, Produced]] = []
    for rid, lines in ends.items():
        first = lines[0]
        for again in lines[1:]:
            verdict.duplicates += 1
            redelivered_at = again["start"]
            cause = attribute(ordered_incidents, first, redelivered_at, hung_pids)
            if rid in by_id:
                redeliveries.append((again, cause, by_id[rid]))
            if cause is not None:
                dup_by_incident[cause.number] += 1
            else:
                verdict.unattributed.append(
                    f"{rid} ({again['p']}/{again['o']}) first ended {first['wall']:.3f} by {first['inst']}, "
                    f"again started {redelivered_at:.3f} by {again['inst']}"
                )
            p = again["p"]
            index = bisect.bisect_left(commit_times[p], redelivered_at) - 1
            if committed_before(commit_times[p], commit_values[p], redelivered_at) > again["o"]:
                verdict.committed_redeliveries.append(
                    f"{rid} ({p}/{again['o']}) redelivered at {redelivered_at:.3f} by {again['inst']} "
                    f"(pid {again['pid']}), though committed offset {commit_values[p][index]} was seen at "
                    f"{commit_times[p][index]:.3f}"
                )
    for group in clusters_of(ordered_incidents):
        began = min(i.start for i in group)
        hi = max(i.end for i in group) + WINDOW_AFTER_S
        # In flight: handled (first) by the end of the cluster, and not committed when it began.
        floor = {p: committed_before(commit_times[p], commit_values[p], began) for p in partitions}
        window = sum(
            1
            for rid, done in first_end.items()
            if done <= hi and rid in by_id and by_id[rid].offset >= floor.get(by_id[rid].partition, 0)
        )
        # Overlapping faults: a redelivery is in flight again, and another fault can undo it too.
        window += sum(
            1
            for again, cause, record in redeliveries
            if any(undoable(i, again, record, cause, hung_pids, commit_times, commit_values) for i in group)
        )
        dups = sum(dup_by_incident.get(i.number, 0) for i in group)
        verdict.clusters.append(([i.number for i in group], dups, window))
        if dups > window:
            verdict.window_overruns.append(
                f"incidents {[i.number for i in group]}: {dups} duplicates, in-flight window {window}"
            )

    # -- workers outliving their SIGKILLed supervisor
    for incident in ordered_incidents:
        if incident.kind != "supervisor_kill":
            continue
        late = [
            e for e in mine if e["inst"] == incident.instance and e["wall"] > incident.start + ORPHAN_GRACE_S
        ]
        verdict.orphans.extend(
            f"{e['kind']} of {e['id']} by {e['inst']} pid {e['pid']}, "
            f"{e['wall'] - incident.start:.1f}s after its supervisor was SIGKILLed"
            for e in late
        )

    # -- records started by an instance that no longer held their partition (tenures from its logs)
    if tenures is not None:
        held: dict[tuple[str, int], list[Tenure]] = defaultdict(list)
        for tenure in tenures:
            held[(tenure.instance, tenure.partition)].append(tenure)
        for e in mine:
            if e["kind"] != "start":
                continue
            spans = held.get((e["inst"], e["p"]), [])
            if not any(
                t.start - ZOMBIE_GRACE_S
                <= e["wall"]
                <= t.end + (ORPHAN_GRACE_S if t.how == "killed" else ZOMBIE_GRACE_S)
                for t in spans
            ):
                before = [t for t in spans if t.end < e["wall"]]
                why = f"{before[-1].how} at {before[-1].end:.3f}" if before else "never assigned"
                verdict.zombies.append(
                    f"{e['id']} ({e['p']}/{e['o']}) started at {e['wall']:.3f} by {e['inst']} "
                    f"pid {e['pid']}: partition {why}"
                )

    # -- order among first deliveries
    lanes: dict[Any, list[Produced]] = defaultdict(list)
    for record in produced:
        lanes[record.key if mode == "key" else record.partition].append(record)
    for lane, records in lanes.items():
        records.sort(key=lambda r: r.offset)
        latest: tuple[float, Produced] | None = None
        for record in records:
            done = first_end.get(record.id)
            if done is None:
                continue
            if latest is not None and done < latest[0]:
                verdict.order_violations.append(
                    f"{verdict.order_scope} {lane}: {record.id} (offset {record.offset}) first completed at "
                    f"{done:.3f}, before {latest[1].id} (offset {latest[1].offset}) at {latest[0]:.3f}"
                )
            if latest is None or done > latest[0]:
                latest = (done, record)

    # -- poison and hanging records
    fails: dict[str, int] = defaultdict(int)
    for e in mine:
        if e["kind"] == "fail":
            fails[e["id"]] += 1
    for record in produced:
        if record.fail:
            verdict.poison_total += 1
            problems = []
            if record.id not in ends:
                problems.append("never handled")
            elif fails[record.id] < record.fail:
                problems.append(f"failed {fails[record.id]} times, expected {record.fail}")
            if record.id in ends:
                later = [
                    r
                    for r in lanes[record.key if mode == "key" else record.partition]
                    if r.offset > record.offset
                    and r.id in first_end
                    and first_end[r.id] < first_end[record.id]
                ]
                if later:
                    problems.append(
                        f"{len(later)} later records of its {verdict.order_scope} completed first"
                    )
            if problems:
                verdict.poison.append(f"{record.id}: " + ", ".join(problems))
            else:
                verdict.poison_ok += 1
        if record.hang:
            verdict.hang_total += 1
            hung = [e for e in mine if e["kind"] == "hang" and e["id"] == record.id]
            if record.id not in ends:
                verdict.hang.append(f"{record.id}: never handled")
            elif not hung:
                verdict.hang.append(f"{record.id}: never hung")
            elif any(
                e["pid"] == hung[0]["pid"] and e["attempt"] == hung[0]["attempt"] for e in ends[record.id]
            ):
                verdict.hang.append(f"{record.id}: the hung call ran to its end (nothing killed it)")
            else:
                verdict.hang_ok += 1
            if hung:
                again = [e["wall"] for e in mine if e["kind"] == "start" and e["id"] == record.id]
                again = [t for t in again if t > hung[0]["wall"]]
                released = (min(again) if again else run_end) - hung[0]["wall"]
                verdict.hang_released_s = max(verdict.hang_released_s, released)
                isolated = any(
                    i.kind == "hang" and i.record_ids.get(topic) == record.id and i.phase != MIXED
                    for i in incidents
                )
                if isolated and released > event_timeout + HANG_RELEASE_SLACK_S:
                    verdict.hang.append(
                        f"{record.id}: its hung call was replaced {released:.1f}s after it started "
                        f"(eventTimeout {event_timeout:g}s, instance {hung[0]['inst']}, "
                        f"worker pid {hung[0]['pid']})"
                    )

    # -- broker orphan stalls: partitions nobody owned although a rebalance had completed
    if tenures is not None and members is not None and assignments is not None:
        verdict.orphan_stalls = orphan_stalls(tenures, members, assignments, incidents, partitions, run_end)

    # -- per incident: stall of untouched partitions, recovery
    by_ts = sorted(produced, key=lambda r: r.ts)
    times_by_partition: dict[int, list[float]] = defaultdict(list)
    for rid, done in first_end.items():
        record = by_id.get(rid)
        if record is not None:
            times_by_partition[record.partition].append(done)
    for times in times_by_partition.values():
        times.sort()
    for index, incident in enumerate(ordered_incidents):
        stats = IncidentStats(duplicates=dup_by_incident.get(incident.number, 0))
        later = [i.start for i in ordered_incidents[index + 1 :] if i.start > incident.end]
        until = min(later) if later else run_end
        recovered_at, stats.recovered = recovery(by_ts, first_end, incident.start, until)
        stats.recovery_s = recovered_at - incident.start
        stats.orphaned = any(o.start < recovered_at and o.end > incident.start for o in verdict.orphan_stalls)
        hi = min(max(incident.end + 1.0, recovered_at), run_end)
        touched = _touched(incident, topic, by_id, mine)
        if touched is not None:
            untouched = [
                p
                for p in partitions
                if p not in touched and kept_owner(ownership.get(p, ()), incident.start, hi)
            ]
            stats.affected = tuple(p for p in partitions if p not in untouched)
            if untouched:
                stats.stall_s = _max_stall(times_by_partition, untouched, incident.start, hi)
        verdict.incidents[incident.number] = stats
    return verdict


def bound_problems(verdicts: Sequence[TriggerVerdict], incidents: Sequence[Incident]) -> list[str]:
    """Recovery and stall bounds of the single-fault incidents. An incident whose recovery window
    overlaps a broker orphan stall of its trigger is not held to its recovery bound (the table still
    shows its recovery time, marked); every other bound applies."""
    problems = []
    for incident in incidents:
        if incident.phase == MIXED:
            continue
        for v in verdicts:
            stats = v.incidents[incident.number]
            recovery_bound = RECOVERY_BOUND_S[incident.kind]
            too_slow = math.isinf(stats.recovery_s) or stats.recovery_s > recovery_bound
            if too_slow and not stats.orphaned:
                problems.append(
                    f"{v.trigger}: incident {incident.number} ({incident.kind}) took "
                    f"{stats.recovery_s:.1f}s to recover (bound {recovery_bound:g}s)"
                )
            stall_bound = STALL_BOUND_S.get(incident.kind)
            if stall_bound is not None and stats.stall_s is not None and stats.stall_s > stall_bound:
                problems.append(
                    f"{v.trigger}: incident {incident.number} ({incident.kind}) stalled untouched partitions "
                    f"for {stats.stall_s:.1f}s (bound {stall_bound:g}s)"
                )
    return problems


# ---------------------------------------------------------------------------------------------- table


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "never"
    return f"{value:.1f}s"


def _worst(
    verdict: TriggerVerdict,
    incidents: Sequence[Incident],
    mixed: bool,
    what: str,
    orphaned: bool | None = None,
) -> str:
    """The largest stall or recovery time over the single-fault incidents (or the mixed ones); only
    over those whose recovery overlaps a broker orphan stall (or only the others) if *orphaned* says."""
    values = []
    for incident in incidents:
        stats = verdict.incidents.get(incident.number)
        if stats is None or (incident.phase == MIXED) != mixed:
            continue
        if orphaned is not None and stats.orphaned != orphaned:
            continue
        value = stats.stall_s if what == "stall" else stats.recovery_s
        if value is not None:
            values.append(value)
    return _seconds(max(values)) if values else "-"


def render(
    verdicts: Sequence[TriggerVerdict],
    incidents: Sequence[Incident],
    *,
    title: str,
    t0: float,
) -> str:
    """The verdict as text tables: one summary column per trigger, then one row per incident."""
    names = [f"{v.trigger} ({v.mode})" for v in verdicts]
    width = max(14, *(len(n) + 2 for n in names))
    rows: list[tuple[str, list[str]]] = [
        ("records produced", [str(v.produced) for v in verdicts]),
        ("handled", [str(v.handled) for v in verdicts]),
        ("lost (must be 0)", [str(len(v.lost)) for v in verdicts]),
        ("committed, no finished call (0)", [str(len(v.committed_unfinished)) for v in verdicts]),
        ("duplicates (total)", [str(v.duplicates) for v in verdicts]),
        ("  with no preceding fault", [str(len(v.unattributed)) for v in verdicts]),
        ("  redelivered though committed", [str(len(v.committed_redeliveries)) for v in verdicts]),
        ("  beyond in-flight window", [str(len(v.window_overruns)) for v in verdicts]),
        (
            "order violations (1st deliv.)",
            [f"{len(v.order_violations)} per {v.order_scope}" for v in verdicts],
        ),
        ("poison handled in order", [f"{v.poison_ok}/{v.poison_total}" for v in verdicts]),
        ("hung handlers recovered", [f"{v.hang_ok}/{v.hang_total}" for v in verdicts]),
        ("  longest hang before retry", [_seconds(v.hang_released_s) for v in verdicts]),
        ("max stall, untouched partitions", [_worst(v, incidents, False, "stall") for v in verdicts]),
        ("  in the mixed phase", [_worst(v, incidents, True, "stall") for v in verdicts]),
        ("max time to recover", [_worst(v, incidents, False, "recovery", orphaned=False) for v in verdicts]),
        (
            "  in a broker orphan stall (*)",
            [_worst(v, incidents, False, "recovery", orphaned=True) for v in verdicts],
        ),
        ("  in the mixed phase", [_worst(v, incidents, True, "recovery") for v in verdicts]),
        (
            "inputs committed w/o outputs (must be 0)",
            [str(len(v.committed_without_outputs)) if v.outputs_checked else "-" for v in verdicts],
        ),
    ]
    label_width = max(len(label) for label, _ in rows) + 2
    lines = [title, "", " " * label_width + "".join(n.rjust(width) for n in names)]
    lines += [label.ljust(label_width) + "".join(c.rjust(width) for c in cells) for label, cells in rows]
    lines += ["", "incidents (t: seconds since the first fault; dup/stall/recover per trigger)"]
    header = f"{'#':>3} {'t':>6} {'phase':<14} {'kind':<16} {'target':<30} {'lasted':>7}"
    for name in [v.trigger for v in verdicts]:
        header += f" | {name[:10]:>10} {'dup':>4} {'stall':>6} {'recover':>7}"
    lines.append(header)
    for incident in sorted(incidents, key=lambda i: i.start):
        row = (
            f"{incident.number:>3} {incident.start - t0:>6.1f} {incident.phase[:14]:<14} {incident.kind:<16} "
            f"{incident.target[:30]:<30} {_seconds(incident.end - incident.start):>7}"
        )
        for v in verdicts:
            stats = v.incidents.get(incident.number, IncidentStats())
            recover = _seconds(stats.recovery_s) if stats.recovered else ">" + _seconds(stats.recovery_s)
            if stats.orphaned:
                recover += "*"
            row += f" | {'':>10} {stats.duplicates:>4} {_seconds(stats.stall_s):>6} {recover:>7}"
        lines.append(row)
    lines += [
        "",
        f"broker orphan stalls (partitions nobody owned for {ORPHAN_MIN_S:g}s+ after a completed rebalance "
        "left them out, a member up and connected; * above: recovery overlaps one, no recovery bound)",
    ]
    for v in verdicts:
        stalls = [
            f"partitions {','.join(map(str, o.partitions))} {o.start - t0:.1f}-{o.end - t0:.1f}s "
            f"({o.end - o.start:.1f}s; members {', '.join(o.members)})"
            for o in v.orphan_stalls
        ]
        lines.append(f"  {v.trigger}: " + ("; ".join(stalls) if stalls else "none"))
    lines += ["", "duplicate clusters (incidents less than 3 s apart): duplicates / in-flight window"]
    for v in verdicts:
        parts = [f"{ids}: {dups}/{window}" for ids, dups, window in v.clusters if dups]
        lines.append(f"  {v.trigger}: " + (", ".join(parts) if parts else "no duplicates"))
    return "\n".join(lines)


def _main(argv: Sequence[str]) -> int:
    """Judge a saved run again: ``python chaos_verdict.py FOLDER`` (a test's tmp_path or
    $STREAMWORKER_CHAOS_ARTIFACTS)."""
    if len(argv) != 1:
        print("usage: python chaos_verdict.py FOLDER", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    run = RunRecord.load(folder)
    verdicts = judge(run, read_ledger(folder / "ledger.jsonl"))
    print(render(verdicts, run.incidents, title=run.title, t0=run.t0))
    problems = [problem for v in verdicts for problem in v.problems()]
    print("\n" + ("\n".join(problems) if problems else "no record-level problems"))
    bounds = bound_problems(verdicts, run.incidents)
    print("\n".join(bounds) if bounds else "single-fault incidents within their bounds")
    return 1 if problems or bounds else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
