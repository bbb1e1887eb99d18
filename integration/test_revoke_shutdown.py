"""Revoke and shutdown correctness (issue #12), with several streamworker processes on the real broker.

* A handler still running at the rebalance deadline is killed unblamed: with ``maxRetries: 0`` and
  ``onError: skip`` its record is run again (attempt 1), never skipped and committed unfinished.
* Explicit acks given in drain and termination callbacks count: after a join and two clean stops
  the group's offsets are at the end and every record was handled once.
* A partition paused by backpressure when it is revoked fetches again when it comes back.

The handler and helpers of ``test_lifecycle`` are reused (ledger lines, ``hang`` records, quick
profile); the group rules of ``/work/shared/notes/broker.md`` apply (unique topic and group per
test, one timeout profile per group, end offsets from delivery reports, no topic deleted).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

from test_lifecycle import (
    HANDLER,
    TRIGGER,
    body,
    function_config,
    is_message,
    of_kind,
    read_ledger,
    stop_cleanly,
    wait_committed,
)

from devtools.broker import Record, committed_offsets, create_topics, produce


def blocking_in_a(
    function_dir: Callable[..., Path], tmp_path: Path, **config: Any
) -> tuple[Path, Path, Path]:
    """The ledger handler, whose records marked ``hang`` block in instance A (first sight only)
    until the release file exists. Returns (function.yaml, ledger, release file)."""
    ledger = tmp_path / "ledger.jsonl"
    release = tmp_path / "release"
    env = {"LEDGER": str(ledger), "HANG_S": "60", "RELEASE_FILE": str(release), "HANG_INSTANCES": "A"}
    return function_dir(HANDLER, function_config(env=env, **config)), ledger, release


def test_a_handler_killed_at_the_rebalance_deadline_is_run_again_not_skipped(
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
    # The first record of every partition blocks in instance A.
    config, ledger, release = blocking_in_a(
        function_dir,
        tmp_path,
        brokers=broker_bootstrap,
        topic=topic,
        group=group,
        profile=quick_profile,
        # Eager: the join revokes all of A's partitions, so both of A's running calls overstay.
        strategy="range",
        attributes={"maxWaitHandlerDuringRebalance": "1s", "maxRetries": 0, "onError": "skip"},
    )
    records = [Record(value=body(f"p{p}-{i}", hang=i == 0), partition=p) for p in range(4) for i in range(3)]
    end = produce(broker_bootstrap, topic, records)
    assert end == dict.fromkeys(range(4), 3)

    a = streamworker_process(config, env={"INSTANCE": "A"})
    wait_until(
        lambda: len({e["worker_id"] for e in of_kind(read_ledger(ledger), "hang", instance="A")}) == 2,
        30,
        message="A's two workers never both blocked in a handler",
    )
    join_index = len(a.logs)
    b = streamworker_process(config, env={"INSTANCE": "B"})
    revoke = a.wait_for_log("partitions revoked", 30, start=join_index)
    assert len(revoke["killed_workers"]) == 2, revoke
    release.touch()  # nothing blocks any more: whoever owns the killed records runs them to the end

    wait_committed(wait_until, broker_bootstrap, group, topic, end, timeout=60)
    stop_cleanly(b)
    stop_cleanly(a)
    entries = read_ledger(ledger)
    ended = {e["id"] for e in of_kind(entries, "end")}
    assert ended == {f"p{p}-{i}" for p in range(4) for i in range(3)}, "committed without a finished call"
    assert {e["attempt"] for e in of_kind(entries, "start")} == {1}, "a deadline kill counted as an attempt"
    for proc in (a, b):
        assert not [log for log in proc.logs if "retries exhausted" in str(log.get("message"))], proc.output()
        assert not [log for log in proc.logs if log.get("message") == "handler failed; will retry"]
    died = [log for log in a.logs[join_index:] if is_message("worker died; replacing it")(log)]
    assert len(died) == 2 and all("rebalance" in str(log["reason"]) for log in died), died


ACK_HANDLER = """
import json
import os
import time

from streamworker.worker.sdk import QualifiedOffset

LEDGER = os.environ["LEDGER"]
INSTANCE = os.environ.get("INSTANCE", "")
# Handled records, acked only by the drain and termination callbacks.
kept = []


def write(kind, context, **fields):
    entry = {"kind": kind, "instance": INSTANCE, "pid": os.getpid(), "worker_id": context.worker_id, **fields}
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry, sort_keys=True) + "\\n").encode("utf-8"))
    finally:
        os.close(fd)


def init_context(context):
    def ack_kept(kind):
        for qualified in kept:
            context.platform.explicit_ack_sync(qualified)
        write(kind, context, acked=[[q.partition, q.offset] for q in kept])
        kept.clear()

    context.platform.set_drain_callback(lambda: ack_kept("drain"))
    context.platform.set_termination_callback(lambda: ack_kept("terminate"))


def handler(context, event):
    record_id = json.loads(event.body)["id"]
    write("end", context, id=record_id, partition=event.partition, offset=event.offset)
    kept.append(QualifiedOffset.from_event(event))
"""


def test_acks_given_in_drain_and_termination_callbacks_are_committed(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    topic, group = unique("acks"), unique("group")
    create_topics(broker_bootstrap, {topic: 4})
    ledger = tmp_path / "ledger.jsonl"
    spec = function_config(
        brokers=broker_bootstrap, topic=topic, group=group, profile=quick_profile, env={"LEDGER": str(ledger)}
    )
    spec["spec"]["triggers"][TRIGGER]["explicitAckMode"] = "explicitOnly"
    config = function_dir(ACK_HANDLER, spec)
    first = [Record(value=body(f"first-{p}-{i}"), partition=p) for p in range(4) for i in range(3)]
    end = produce(broker_bootstrap, topic, first)

    a = streamworker_process(config, env={"INSTANCE": "A"})
    wait_until(lambda: len(of_kind(read_ledger(ledger), "end")) == len(first), 30, message="A never ran all")
    assert not any(committed_offsets(broker_bootstrap, group, topic, 4).values()), "nothing acked yet"
    join_index = len(a.logs)
    b = streamworker_process(config, env={"INSTANCE": "B"})
    revoke = a.wait_for_log("partitions revoked", 30, start=join_index)
    assert revoke["drained_workers"] and not revoke.get("late_drain_workers"), revoke
    # The drain callbacks acked everything A had handled: the moved partitions were committed at
    # the revoke, the kept ones at A's next commit.
    wait_committed(wait_until, broker_bootstrap, group, topic, end)

    second = [Record(value=body(f"second-{p}-{i}"), partition=p) for p in range(4) for i in range(3)]
    end = produce(broker_bootstrap, topic, second)
    wait_until(
        lambda: len(of_kind(read_ledger(ledger), "end")) >= len(first) + len(second),
        30,
        message="the second batch was never handled",
    )
    stop_cleanly(b)
    stop_cleanly(a)
    # Only the termination callbacks acked the second batch.
    assert committed_offsets(broker_bootstrap, group, topic, 4) == end
    handled = Counter(e["id"] for e in of_kind(read_ledger(ledger), "end"))
    assert set(handled) == {
        f"{batch}-{p}-{i}" for batch in ("first", "second") for p in range(4) for i in range(3)
    }
    assert [record_id for record_id, count in handled.items() if count > 1] == [], "handled twice"
    assert of_kind(read_ledger(ledger), "terminate", instance="A")


def test_a_partition_paused_by_backpressure_fetches_again_when_it_comes_back(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    topic, group = unique("paused"), unique("group")
    create_topics(broker_bootstrap, {topic: 2})
    # The first record of each partition blocks in A: its buffer fills and the partition pauses.
    config, ledger, release = blocking_in_a(
        function_dir,
        tmp_path,
        brokers=broker_bootstrap,
        topic=topic,
        group=group,
        profile=quick_profile,
        mode="static",
        strategy="cooperative-sticky",
        attributes={"maxWaitHandlerDuringRebalance": "1s", "maxBufferedRecords": 20},
    )
    records = [
        Record(value=body(f"a-{p}-{i:03d}", hang=i == 0), partition=p) for p in (0, 1) for i in range(60)
    ]
    end = produce(broker_bootstrap, topic, records)

    a = streamworker_process(config, env={"INSTANCE": "A"})

    def paused_partitions() -> set[str]:
        return {
            tp
            for log in a.logs
            if log.get("message") == "buffer full; partitions paused"
            for tp in log["partitions"]
        }

    wait_until(lambda: paused_partitions() == {f"{topic}/0", f"{topic}/1"}, 30, message="A never paused both")
    join_index = len(a.logs)
    b = streamworker_process(config, env={"INSTANCE": "B"})
    revoke = a.wait_for_log("partitions revoked", 30, start=join_index)
    (moved_tp,) = revoke["partitions"]
    moved = int(moved_tp.rsplit("/", 1)[1])
    wait_until(
        lambda: committed_offsets(broker_bootstrap, group, topic, [moved]) == {moved: end[moved]},
        30,
        message="B never finished the moved partition",
    )
    leave_index = len(a.logs)
    stop_cleanly(b)
    a.wait_for_log(
        lambda log: log.get("message") == "partitions assigned" and log.get("partitions") == [moved_tp],
        30,
        start=leave_index,
    )
    release.touch()
    more = [Record(value=body(f"b-{p}-{i:03d}"), partition=p) for p in (0, 1) for i in range(30)]
    end = produce(broker_bootstrap, topic, more)
    # The moved partition was paused (in librdkafka) when it left A; back at A it must fetch again.
    wait_committed(wait_until, broker_bootstrap, group, topic, end, timeout=60)
    stop_cleanly(a)
    back = {e["offset"] for e in of_kind(read_ledger(ledger), "end", instance="A", partition=moved)}
    assert set(range(60, 90)) <= back


def test_only_workers_running_a_revoked_record_are_killed_at_the_deadline(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    # Static mode: partition p runs on worker p % 2. Partitions 2 and 3 block their worker in A (a
    # sync call); records of 0 and 1 produced after that queue behind them. Whichever two partitions
    # the join moves (here, cooperative-sticky moved 0 and 1 in every run), only a worker whose
    # *running* record moved may be killed: the queued records of a moved partition are cancelled at
    # once, even while the sync call blocks the worker's loop.
    topic, group = unique("orders"), unique("group")
    create_topics(broker_bootstrap, {topic: 4})
    config, ledger, release = blocking_in_a(
        function_dir,
        tmp_path,
        brokers=broker_bootstrap,
        topic=topic,
        group=group,
        profile=quick_profile,
        mode="static",
        strategy="cooperative-sticky",
        attributes={"maxWaitHandlerDuringRebalance": "2s"},
    )
    blocked = {2, 3}
    first = [
        Record(value=body(f"p{p}-{i}", hang=i == 0 and p in blocked), partition=p)
        for p in range(4)
        for i in range(3)
    ]
    produce(broker_bootstrap, topic, first)
    a = streamworker_process(config, env={"INSTANCE": "A"})
    wait_until(
        lambda: {e["partition"] for e in of_kind(read_ledger(ledger), "hang", instance="A")} == blocked,
        30,
        message="A's workers never both blocked",
    )
    behind = [Record(value=body(f"p{p}-{i}"), partition=p) for p in (0, 1) for i in range(3, 6)]
    end = produce(broker_bootstrap, topic, behind)
    end = {**dict.fromkeys(blocked, 3), **end}
    join_index = len(a.logs)
    b = streamworker_process(config, env={"INSTANCE": "B"})
    revoke = a.wait_for_log("partitions revoked", 30, start=join_index)
    moved = {int(tp.rsplit("/", 1)[1]) for tp in revoke["partitions"]}
    running_moved = {p % 2 for p in moved & blocked}  # the worker of a moved, blocked partition
    assert set(revoke["killed_workers"]) == running_moved, (moved, revoke)
    # (A blocked worker cannot run its drain callback before the deadline: reported late, not drained.)
    assert not set(revoke["drained_workers"]) & {p % 2 for p in blocked - moved}, revoke
    release.touch()
    wait_committed(wait_until, broker_bootstrap, group, topic, end, timeout=60)
    stop_cleanly(b)
    stop_cleanly(a)
    died = {log["worker"] for log in a.logs[join_index:] if is_message("worker died; replacing it")(log)}
    assert died == running_moved, (moved, died)
    for p in blocked - moved:  # the blocked call of a partition that stayed ran to its end in A
        assert of_kind(read_ledger(ledger), "end", instance="A", partition=p, offset=0)


def test_a_handler_killed_at_the_shutdown_deadline_is_run_again_by_the_next_start(
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
    release = tmp_path / "release"
    config = function_dir(
        HANDLER,
        function_config(
            brokers=broker_bootstrap,
            topic=topic,
            group=group,
            profile=quick_profile,
            env={"LEDGER": str(ledger), "HANG_S": "60", "RELEASE_FILE": str(release)},
            workers=1,
            termination_timeout="1s",
            attributes={"maxRetries": 0, "onError": "skip"},
        ),
    )
    end = produce(
        broker_bootstrap, topic, [Record(value=body(f"r{i}", hang=i == 1), partition=0) for i in range(3)]
    )

    first = streamworker_process(config, env={"INSTANCE": "A"})
    wait_until(lambda: of_kind(read_ledger(ledger), "hang", id="r1"), 30, message="r1 never started")
    stop_cleanly(first)
    stopped = [log for log in first.logs if log.get("message") == "stopped"][-1]
    assert stopped["killed_workers"] == [0], stopped
    assert not [log for log in first.logs if "retries exhausted" in str(log.get("message"))], first.output()
    assert committed_offsets(broker_bootstrap, group, topic, [0]).get(0, 0) == 1, "r1 committed unfinished"

    release.touch()
    second = streamworker_process(config, env={"INSTANCE": "A2"})
    wait_committed(wait_until, broker_bootstrap, group, topic, end)
    stop_cleanly(second)
    again = of_kind(read_ledger(ledger), "end", instance="A2", id="r1")
    assert [e["attempt"] for e in again] == [1], "the next start runs it again, attempt count unchanged"


GATE_HANDLER = """
import json
import os
import time

LEDGER = os.environ["LEDGER"]
GATES = os.environ["GATES"]


def write(kind, **fields):
    entry = {"kind": kind, "pid": os.getpid(), **fields}
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry, sort_keys=True) + "\\n").encode("utf-8"))
    finally:
        os.close(fd)


def handler(context, event):
    body = json.loads(event.body)
    fields = {"id": body["id"], "partition": event.partition, "offset": event.offset}
    fields["worker_id"] = context.worker_id
    start = time.time()
    write("start", start=start, **fields)
    gate = body.get("gate")
    if gate:
        # The first call of a gated record blocks until the test creates the file GATES/<gate>.
        marker = os.path.join(GATES, gate + ".seen")
        first = not os.path.exists(marker)
        open(marker, "a").close()
        deadline = time.monotonic() + 60
        while first and not os.path.exists(os.path.join(GATES, gate)) and time.monotonic() < deadline:
            time.sleep(0.02)
    write("end", start=start, end=time.time(), **fields)
"""


def test_a_lost_partition_given_back_waits_for_the_call_still_running_from_before(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    # Item 5: the session expires (the supervisor is frozen past sessionTimeout) while a sync call of
    # partition 0 runs on worker 1; the group gives the partitions back to the same (only) member,
    # with worker 0 idle. The record of that call is not committed, so it is fetched again: it must
    # not start again (on worker 0) while the old call still runs, only after it finished.
    topic, group = unique("lost"), unique("group")
    create_topics(broker_bootstrap, {topic: 2})
    ledger = tmp_path / "ledger.jsonl"
    gates = tmp_path / "gates"
    gates.mkdir()
    config = function_dir(
        GATE_HANDLER,
        function_config(
            brokers=broker_bootstrap,
            topic=topic,
            group=group,
            profile=quick_profile,
            env={"LEDGER": str(ledger), "GATES": str(gates)},
            workers=2,
            attributes={"librdkafka": {"fetch.wait.max.ms": 100}},
        ),
    )
    process = streamworker_process(config)

    def started(record_id: str) -> list[dict[str, Any]]:
        return of_kind(read_ledger(ledger), "start", id=record_id)

    # Worker 0 blocks on a record of partition 1 first, so partition 0's record goes to worker 1.
    produce(broker_bootstrap, topic, [Record(value=json.dumps({"id": "p1-0", "gate": "a"}), partition=1)])
    wait_until(lambda: started("p1-0"), 30, message="p1-0 never started")
    produce(broker_bootstrap, topic, [Record(value=json.dumps({"id": "p0-0", "gate": "b"}), partition=0)])
    wait_until(lambda: started("p0-0"), 30, message="p0-0 never started")
    assert started("p1-0")[0]["worker_id"] != started("p0-0")[0]["worker_id"]
    (gates / "a").touch()
    wait_until(lambda: committed_offsets(broker_bootstrap, group, topic, [1]) == {1: 1}, 30)
    before = len(process.logs)

    # Freeze the whole supervisor (its heartbeat thread too) past the 2 s session timeout.
    os.kill(process.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:  # the freeze IS the fault under test: wait it out
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGCONT)
    process.wait_for_log("partitions lost (session expired); nothing committed for them", 30, start=before)
    process.wait_for_log(
        lambda log: log.get("message") == "partitions assigned" and f"{topic}/0" in log.get("partitions", []),
        30,
        start=before,
    )
    # The member works again (partition 1 flows) while partition 0 waits for the old call.
    produce(broker_bootstrap, topic, [Record(value=json.dumps({"id": "p1-1"}), partition=1)])
    wait_until(lambda: of_kind(read_ledger(ledger), "end", id="p1-1"), 30, message="partition 1 stalled")
    assert len(started("p0-0")) == 1, f"p0-0 started again beside its old call: {started('p0-0')}"

    (gates / "b").touch()
    wait_committed(wait_until, broker_bootstrap, group, topic, {0: 1, 1: 2})
    stop_cleanly(process)
    calls = sorted((e["start"], e["end"]) for e in of_kind(read_ledger(ledger), "end", partition=0))
    assert len(calls) == 2, calls
    for (_, first_end), (second_start, _) in pairwise(calls):
        assert second_start >= first_end, f"two calls of partition 0 at once: {calls}"
