"""Static membership keeps partitions across a restart; a crash-looping worker backs off."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from devtools.broker import Record, committed_offsets, create_topics, produce

NOOP_HANDLER = """
def handler(context, event):
    return None
"""

CRASHING_HANDLER = """
import os


def handler(context, event):
    if event.body == b"crash":
        os._exit(1)  # the worker dies on this record, every time
    return None
"""


def _config(
    brokers: str, topic: str, group: str, profile: dict[str, str], **attributes: Any
) -> dict[str, Any]:
    return {
        "metadata": {"name": "membership"},
        "spec": {
            "handler": "main:handler",
            "triggers": {
                "k": {
                    "kind": "kafka-cluster",
                    "numWorkers": 1,
                    "workerTerminationTimeout": "5s",
                    "attributes": {
                        "brokers": brokers,
                        "topics": [topic],
                        "consumerGroup": group,
                        **profile,
                        **attributes,
                    },
                }
            },
        },
    }


def _assigned(entry: dict[str, Any]) -> bool:
    return entry.get("message") == "partitions assigned" and bool(entry.get("partitions"))


def test_static_member_restarting_within_session_timeout_gets_its_partitions_back(
    broker_bootstrap: str, unique: Any, function_dir: Any, streamworker_process: Any, wait_until: Any
) -> None:
    # Static membership needs the broker note's "fast" profile (group.instance.id fails below ~6 s).
    fast = {"sessionTimeout": "6s", "heartbeatInterval": "500ms", "maxPollInterval": "30s"}
    topic, group = unique("static"), unique("static-g")
    create_topics(broker_bootstrap, {topic: 4})
    config_a = function_dir(
        NOOP_HANDLER,
        _config(broker_bootstrap, topic, group, fast, groupInstanceId="member-a", balanceStrategy="range"),
        name="a",
    )
    config_b = function_dir(
        NOOP_HANDLER,
        _config(broker_bootstrap, topic, group, fast, groupInstanceId="member-b", balanceStrategy="range"),
        name="b",
    )
    a = streamworker_process(config_a)
    a.wait_for_log(_assigned, timeout=30)
    b = streamworker_process(config_b)
    b.wait_for_log(_assigned, timeout=40)
    # After B joined, A's latest assignment is its share (range: eager, A was reassigned too).
    a.wait_for_log(lambda e: _assigned(e) and len(e["partitions"]) < 4, timeout=40)
    a_share = [e for e in a.logs if _assigned(e)][-1]["partitions"]
    b_share = [e for e in b.logs if _assigned(e)][-1]["partitions"]
    assert sorted(a_share + b_share) == sorted(f"{topic}/{p}" for p in range(4))

    assert a.terminate() == 0
    # Restart well within the 6 s session timeout: the broker still holds member-a's assignment.
    a2 = streamworker_process(config_a)
    first = a2.wait_for_log(_assigned, timeout=30)
    assert first["partitions"] == a_share

    # Kafka hands a returning static member its cached assignment without a rebalance; a broker
    # that rebalances anyway (Tansu does) must still give B the same share back.
    def b_settled_share() -> list[str] | None:
        moves = [e for e in b.logs if e.get("message") in {"partitions assigned", "partitions revoked"}]
        return moves[-1]["partitions"] if moves and _assigned(moves[-1]) else None

    wait_until(lambda: b_settled_share() == b_share, 30, message=lambda: f"B ended with {b_settled_share()}")
    assert a2.terminate() == 0
    assert b.terminate() == 0


def test_crash_looping_worker_backs_off_and_the_process_stays_up(
    broker_bootstrap: str,
    unique: Any,
    function_dir: Any,
    streamworker_process: Any,
    quick_profile: dict[str, str],
) -> None:
    topic, group = unique("crashloop"), unique("crashloop-g")
    create_topics(broker_bootstrap, {topic: 1})
    end = produce(broker_bootstrap, topic, [Record(value=b"ok"), Record(value=b"crash"), Record(value=b"ok")])
    assert end == {0: 3}
    config = function_dir(
        CRASHING_HANDLER, _config(broker_bootstrap, topic, group, quick_profile, retryBackoff="50ms")
    )
    process = streamworker_process(config)

    def deaths() -> list[dict[str, Any]]:
        return [e for e in process.logs if e.get("message") == "worker died; replacing it"]

    process.wait_for_log(lambda e: len(deaths()) >= 4, timeout=30)
    delays = [float(e["respawn_in_s"]) for e in deaths()[:4]]
    # First replacement is immediate; then the crash-loop backoff grows (0.5 s, 1 s, 2 s, + jitter).
    assert delays[0] == 0.0
    assert delays[1] >= 0.5 and delays[2] >= 1.0 and delays[3] >= 2.0
    assert delays == sorted(delays)
    assert all(e["exit"] == "exit code 1" for e in deaths())
    # Never skipped: the crashing record (offset 1) holds the commit at 1.
    assert committed_offsets(broker_bootstrap, group, topic, 1).get(0, 0) <= 1
    assert process.terminate() == 0
    assert committed_offsets(broker_bootstrap, group, topic, 1) == {0: 1}


SEGFAULT_ONCE = """
import ctypes
import os


def handler(context, event):
    marker = os.path.join(os.environ["STATE"], f"seen-{event.offset}")
    if event.body == b"segv" and not os.path.exists(marker):
        open(marker, "w").close()
        ctypes.string_at(0)  # a segmentation fault on the first delivery only
    with open(os.path.join(os.environ["STATE"], "ledger"), "a") as ledger:
        ledger.write(f"{event.offset}\\n")
"""


def test_segfaulting_worker_is_replaced_and_its_record_redelivered(
    broker_bootstrap: str,
    unique: Any,
    function_dir: Any,
    streamworker_process: Any,
    wait_until: Any,
    quick_profile: dict[str, str],
    tmp_path: Path,
) -> None:
    topic, group = unique("segv"), unique("segv-g")
    create_topics(broker_bootstrap, {topic: 1})
    end = produce(broker_bootstrap, topic, [Record(value=b"segv"), Record(value=b"ok")])
    config = _config(broker_bootstrap, topic, group, quick_profile, retryBackoff="50ms")
    config["spec"]["env"] = [{"name": "STATE", "value": str(tmp_path)}]
    process = streamworker_process(function_dir(SEGFAULT_ONCE, config))
    wait_until(lambda: committed_offsets(broker_bootstrap, group, topic, 1) == end, 30)
    deaths = [e for e in process.logs if e.get("message") == "worker died; replacing it"]
    assert [e["exit"] for e in deaths] == ["signal SIGSEGV"]
    assert (tmp_path / "ledger").read_text().split() == ["0", "1"]
    assert process.terminate() == 0


CRASH_ON_GO = """
import os
import time


def handler(context, event):
    state = os.environ["STATE"]
    open(os.path.join(state, f"started-{event.offset}"), "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(state, "go")) and time.monotonic() < deadline:
        time.sleep(0.01)
    os._exit(1)
"""


def test_shutdown_racing_a_worker_crash_exits_cleanly_without_committing_it(
    broker_bootstrap: str,
    unique: Any,
    function_dir: Any,
    streamworker_process: Any,
    wait_until: Any,
    quick_profile: dict[str, str],
    tmp_path: Path,
) -> None:
    topic, group = unique("race"), unique("race-g")
    create_topics(broker_bootstrap, {topic: 1})
    produce(broker_bootstrap, topic, [Record(value=b"doomed")])
    config = _config(broker_bootstrap, topic, group, quick_profile, retryBackoff="50ms")
    config["spec"]["env"] = [{"name": "STATE", "value": str(tmp_path)}]
    process = streamworker_process(function_dir(CRASH_ON_GO, config))
    wait_until(lambda: (tmp_path / "started-0").exists(), 30)
    process.send_signal(signal.SIGTERM)
    process.wait_for_log("stopping", timeout=10)
    (tmp_path / "go").touch()  # the worker dies while the supervisor waits for it to finish
    assert process.wait(timeout=20) == 0
    assert [e for e in process.logs if e.get("message") == "worker died; replacing it"]
    assert committed_offsets(broker_bootstrap, group, topic, 1).get(0, 0) == 0, (
        "the crashed record is not done"
    )


LEDGER_HANDLER = """
import json
import os


def handler(context, event):
    with open(os.path.join(os.environ["STATE"], "ledger"), "a") as ledger:
        ledger.write(json.dumps([event.partition, event.offset, os.getpid()]) + "\\n")
"""


def test_roundrobin_revoke_and_reassign_lose_nothing(
    broker_bootstrap: str,
    unique: Any,
    function_dir: Any,
    streamworker_process: Any,
    wait_until: Any,
    quick_profile: dict[str, str],
    tmp_path: Path,
) -> None:
    # Eager protocols (range, roundrobin) revoke everything on each rebalance: the same revoke path
    # (wait, drain, commit, release) must hold there too.
    topic, group = unique("rr"), unique("rr-g")
    create_topics(broker_bootstrap, {topic: 4})
    first = produce(
        broker_bootstrap, topic, [Record(value=b"a", partition=p) for p in range(4) for _ in range(5)]
    )
    config = _config(broker_bootstrap, topic, group, quick_profile, balanceStrategy="roundrobin")
    config["spec"]["env"] = [{"name": "STATE", "value": str(tmp_path)}]
    a = streamworker_process(function_dir(LEDGER_HANDLER, config, name="a"))
    wait_until(lambda: committed_offsets(broker_bootstrap, group, topic, 4) == first, 30)
    b = streamworker_process(function_dir(LEDGER_HANDLER, config, name="b"))
    b.wait_for_log(_assigned, timeout=30)
    revoked = a.wait_for_log("partitions revoked", timeout=30)
    assert sorted(revoked["partitions"]) == sorted(f"{topic}/{p}" for p in range(4)), "eager: all revoked"
    a.wait_for_log(lambda e: _assigned(e) and len(e["partitions"]) == 2, timeout=30)
    second = produce(
        broker_bootstrap, topic, [Record(value=b"b", partition=p) for p in range(4) for _ in range(5)]
    )
    wait_until(lambda: committed_offsets(broker_bootstrap, group, topic, 4) == second, 30)
    assert b.terminate() == 0
    a.wait_for_log(lambda e: _assigned(e) and len(e["partitions"]) == 4, timeout=30)
    third = produce(
        broker_bootstrap, topic, [Record(value=b"c", partition=p) for p in range(4) for _ in range(5)]
    )
    wait_until(lambda: committed_offsets(broker_bootstrap, group, topic, 4) == third, 30)
    assert a.terminate() == 0
    lines = [tuple(json.loads(line)) for line in (tmp_path / "ledger").read_text().splitlines()]
    handled = {(p, o) for p, o, _pid in lines}
    assert handled == {(p, o) for p in range(4) for o in range(15)}, "every record handled"
    assert len({pid for _p, _o, pid in lines}) >= 2, "both members handled records"
