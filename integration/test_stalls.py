"""Stalls and bounds against a real broker (issue #13): a fatal client error ends the trigger, a
worker's death is noticed while a process its handler started holds the pipe, records past a stuck
head stay bounded, and the health port holds up under idle connections.

Group rules from ``/work/shared/notes/broker.md``: unique topic and group per test, the quick timeout
profile, end offsets from delivery reports, topics never deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError
from test_backpressure import log_time
from test_operations import function_config, health_port, http_get, metric, metrics, metrics_text

from devtools.broker import Record, committed_offsets, create_topics, produce
from streamworker.config import load_config
from streamworker.observability.health import IDLE_TIMEOUT_S, MAX_CONNECTIONS, HealthAddress, HealthServer
from streamworker.observability.metrics import MetricsObserver
from streamworker.supervisor.runner import Outcome, RunnerOptions, TriggerRunner

# Records its calls in $LEDGER; a body "block" waits (bounded) for a file that the test never makes.
LEDGER_HANDLER = """
import json
import os
import time

LEDGER = os.environ["LEDGER"]


def handler(context, event):
    with open(LEDGER, "a", encoding="utf-8") as out:
        out.write(json.dumps({"offset": event.offset, "body": event.body.decode()}) + "\\n")
    if event.body == b"block":
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not os.path.exists(LEDGER + ".never"):
            time.sleep(0.01)
    return "ok"
"""


def ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


# ------------------------------------------------------------------------------- fatal client errors


class _FatalAfter:
    """The runner's consumer, which reports a fatal error through the runner's error callback (as
    librdkafka does, from inside ``consume``) once ``when()`` holds. Everything else is the real one."""

    def __init__(self, consumer: Any, runner: TriggerRunner, when: Callable[[], bool]) -> None:
        self._consumer = consumer
        self._runner = runner
        self._when = when
        self.injected = False

    def consume(self, num_messages: int, timeout: float) -> Any:
        messages = self._consumer.consume(num_messages, timeout)
        if not self.injected and self._when():
            self.injected = True
            self._runner.kafka.on_client_error(
                KafkaError(
                    KafkaError._FENCED,
                    "Fatal error: static consumer fenced by other consumer with same group.instance.id",
                    fatal=True,
                )
            )
        return messages

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def test_a_fatal_client_error_fails_the_trigger_without_committing_unfinished_work(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    function_dir: Callable[..., Path],
    quick_profile: dict[str, str],
    wait_until: Callable[..., Any],
    tmp_path: Path,
) -> None:
    topic, group = unique("fatal"), unique("fatal-g")
    create_topics(broker_bootstrap, {topic: 1})
    bodies = ["a", "b", "c", "block", "d", "e"]
    produce(broker_bootstrap, topic, [Record(value=b.encode(), partition=0) for b in bodies])
    ledger_path = tmp_path / "ledger.jsonl"
    config = function_config(broker_bootstrap, topic, group, quick_profile)
    config["spec"]["env"] = [{"name": "LEDGER", "value": str(ledger_path)}]
    config["spec"]["triggers"]["orders"]["numWorkers"] = 1
    function = load_config(function_dir(LEDGER_HANDLER, config)).config
    trigger = function.triggers[0]
    observer = MetricsObserver(function.name, [trigger.name])
    health = HealthServer(HealthAddress("127.0.0.1", 0), observer, live_timeout=30.0)
    health.start()
    stop = threading.Event()
    consumers: list[_FatalAfter] = []

    def blocked() -> bool:
        return any(entry["body"] == "block" for entry in ledger(ledger_path))

    class Runner(TriggerRunner):
        def _build_consumer(self) -> Any:
            consumer = _FatalAfter(super()._build_consumer(), self, blocked)
            consumers.append(consumer)
            return consumer

    runner = Runner(function, trigger, stop, RunnerOptions(observer=observer))
    outcome: list[Outcome] = []
    thread = threading.Thread(target=lambda: outcome.append(runner.run()), daemon=True)
    try:
        thread.start()
        wait_until(lambda: http_get(health.address.port, "/live")[0] == 200, 30, message="never live")
        thread.join(60)
        assert not thread.is_alive(), "the trigger kept running after a fatal client error"
        assert consumers and consumers[0].injected
        assert outcome == [Outcome.FAILED]
        assert int(Outcome.FAILED) == 1  # the process exit code (Supervisor takes the worst outcome)
        status, body = http_get(health.address.port, "/live")
        assert status == 503, body
        assert "_FENCED" in body
        # The blocked record (offset 3) never finished: nothing at or past it may be committed.
        committed = committed_offsets(broker_bootstrap, group, topic, 1)
        assert committed.get(0, 0) <= 3, committed
        assert [entry["offset"] for entry in ledger(ledger_path)] == [0, 1, 2, 3]
    finally:
        stop.set()
        thread.join(30)
        health.stop()


# ----------------------------------------------------------------------------------------- bad frames

# Body "garbage": the first time, write an undecodable frame on the worker's own output pipe (as a
# handler scribbling on an inherited descriptor would), then carry on.
GARBAGE_HANDLER = """
import json
import os
import sys

LEDGER = os.environ["LEDGER"]


def handler(context, event):
    with open(LEDGER, "a", encoding="utf-8") as out:
        out.write(json.dumps({"offset": event.offset, "body": event.body.decode()}) + "\\n")
    marker = LEDGER + ".garbage"
    if event.body == b"garbage" and not os.path.exists(marker):
        open(marker, "w").close()
        out_fd = int(sys.argv[sys.argv.index("--out-fd") + 1])
        os.write(out_fd, b"\\x00\\x00\\x00\\x04\\xc1\\xc1\\xc1\\xc1")  # 0xc1: never valid msgpack
    return "ok"
"""


def test_a_bad_frame_costs_one_worker_not_the_process(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    function_dir: Callable[..., Path],
    quick_profile: dict[str, str],
    wait_until: Callable[..., Any],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    topic, group = unique("badframe"), unique("badframe-g")
    create_topics(broker_bootstrap, {topic: 1})
    bodies = [f"r{i}" for i in range(10)] + ["garbage"] + [f"r{i}" for i in range(11, 20)]
    end = produce(broker_bootstrap, topic, [Record(value=b.encode(), partition=0) for b in bodies])
    ledger_path = tmp_path / "ledger.jsonl"
    config = function_config(broker_bootstrap, topic, group, quick_profile)
    config["spec"]["env"] = [{"name": "LEDGER", "value": str(ledger_path)}]
    proc = streamworker_process(function_dir(GARBAGE_HANDLER, config), args=["--health-addr", "off"])
    bad = proc.wait_for_log("bad frame from worker; killing it", timeout=60)
    died = proc.wait_for_log("worker died; replacing it", timeout=30)
    assert died["worker"] == bad["worker"]
    assert str(died["reason"]).startswith("protocol error"), died
    wait_until(
        lambda: committed_offsets(broker_bootstrap, group, topic, 1) == end,
        60,
        message=lambda: f"committed {committed_offsets(broker_bootstrap, group, topic, 1)}, end {end}",
    )
    assert proc.running, proc.output()
    handled = {entry["offset"] for entry in ledger(ledger_path)}
    assert handled == set(range(20))
    assert proc.terminate() == 0


# ------------------------------------------------------------------------------------- health port


def process_threads(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="utf-8") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads: line")


def test_idle_connections_to_the_health_port_neither_pile_up_threads_nor_slow_the_probe(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    function_dir: Callable[..., Path],
    quick_profile: dict[str, str],
    wait_until: Callable[..., Any],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    topic, group = unique("idlehttp"), unique("idlehttp-g")
    create_topics(broker_bootstrap, {topic: 1})
    config = function_config(broker_bootstrap, topic, group, quick_profile)
    config["spec"]["env"] = [{"name": "LEDGER", "value": str(tmp_path / "ledger.jsonl")}]
    proc = streamworker_process(function_dir(LEDGER_HANDLER, config), args=["--health-addr", "127.0.0.1:0"])
    port = health_port(proc)
    wait_until(lambda: http_get(port, "/ready")[0] == 200, 60, message=lambda: proc.output())
    baseline = process_threads(proc.pid)
    idle: list[socket.socket] = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        started = time.monotonic()
        status, body = http_get(port, "/live")
        took = time.monotonic() - started
        assert status == 200, body
        # Answered, not queued until the idle crowd times out (IDLE_TIMEOUT_S); the bound leaves a
        # loaded CI machine room and stays under deploy/kubernetes' probe timeoutSeconds (3).
        assert took < IDLE_TIMEOUT_S / 2, f"/live took {took:.3f}s behind 300 idle connections"
        peak = process_threads(proc.pid)
        assert peak <= baseline + 2 * MAX_CONNECTIONS, (baseline, peak)
        # Idle connections time out: the threads they held go away while the sockets stay open here.
        wait_until(
            lambda: process_threads(proc.pid) <= baseline,
            IDLE_TIMEOUT_S + 15,
            message=lambda: f"threads {process_threads(proc.pid)}, baseline {baseline}",
        )
    finally:
        for sock in idle:
            sock.close()
    # Still serving (and producing records still works end to end).
    end = produce(broker_bootstrap, topic, [Record(value=b"after", partition=0)])
    wait_until(lambda: committed_offsets(broker_bootstrap, group, topic, 1) == end, 60)
    assert proc.terminate() == 0


# ----------------------------------------------------------------- worker deaths behind child processes

# Body "spawn:<how>": leave a background process (see tests/fixtures/handlers/background.py) holding
# whatever it inherited. Body "wait": the first time, block until the test kills the worker.
SPAWNING_HANDLER = """
import json
import os
import subprocess
import time

LEDGER = os.environ["LEDGER"]


def note(**fields):
    with open(LEDGER, "a", encoding="utf-8") as out:
        out.write(json.dumps(fields) + "\\n")


def handler(context, event):
    body = event.body.decode()
    note(offset=event.offset, body=body, pid=os.getpid(), attempt=event.attempt)
    if body == "spawn:popen":
        note(background=subprocess.Popen(["sleep", "60"], close_fds=False).pid)
    elif body == "spawn:fork":
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        note(background=pid)
    elif body == "wait" and not os.path.exists(LEDGER + ".waited"):
        open(LEDGER + ".waited", "w").close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.01)
    return "ok"
"""


@pytest.mark.parametrize("how", ["popen", "fork"])
def test_a_killed_worker_is_noticed_within_a_second_while_its_child_holds_the_pipe(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    function_dir: Callable[..., Path],
    quick_profile: dict[str, str],
    wait_until: Callable[..., Any],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
    how: str,
) -> None:
    topic, group = unique(f"bgkill-{how}"), unique(f"bgkill-{how}-g")
    create_topics(broker_bootstrap, {topic: 1})
    bodies = [f"spawn:{how}", "wait"] + [f"r{i}" for i in range(2, 100)]
    end = produce(broker_bootstrap, topic, [Record(value=b.encode(), partition=0) for b in bodies])
    ledger_path = tmp_path / "ledger.jsonl"
    config = function_config(broker_bootstrap, topic, group, quick_profile)
    config["spec"]["env"] = [{"name": "LEDGER", "value": str(ledger_path)}]
    config["spec"]["triggers"]["orders"]["numWorkers"] = 1
    proc = streamworker_process(function_dir(SPAWNING_HANDLER, config), args=["--health-addr", "off"])
    try:
        waiting = wait_until(
            lambda: [e for e in ledger(ledger_path) if e.get("body") == "wait"], 60, message=proc.output
        )[0]
        start = len(proc.logs)
        killed_at = time.time()
        os.kill(waiting["pid"], signal.SIGKILL)
        died = proc.wait_for_log("worker died; replacing it", timeout=30, start=start)
        noticed = log_time(died) - killed_at
        assert noticed < 1.0, f"worker death noticed after {noticed:.2f}s"
        wait_until(
            lambda: committed_offsets(broker_bootstrap, group, topic, 1) == end,
            60,
            message=lambda: f"committed {committed_offsets(broker_bootstrap, group, topic, 1)}, end {end}",
        )
        handled = {e["offset"] for e in ledger(ledger_path) if "offset" in e}
        assert handled == set(range(100))
        assert proc.terminate() == 0
    finally:
        for entry in ledger(ledger_path):
            if "background" in entry:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(entry["background"], signal.SIGKILL)


# ------------------------------------------------------------------------ records past a stuck head

# explicitOnly: every record is acked by the handler except offset 0 on its first attempt.
ACKING_HANDLER = """
import json
import os

from streamworker.worker.sdk import QualifiedOffset

LEDGER = os.environ["LEDGER"]


def handler(context, event):
    with open(LEDGER, "a", encoding="utf-8") as out:
        out.write(json.dumps({"offset": event.offset, "attempt": event.attempt}) + "\\n")
    if event.offset != 0 or event.attempt > 1:
        context.platform.explicit_ack_sync(QualifiedOffset.from_event(event))
    return "ok"
"""


def stuck_head_config(
    broker: str, topic: str, group: str, profile: dict[str, str], ledger_path: Path, **attributes: Any
) -> dict[str, Any]:
    # Per-record acks: a cumulative ack of offset 1 would close the unacked head too.
    attributes.setdefault("explicitAckScope", "record")
    config = function_config(broker, topic, group, profile, maxBufferedRecords=100, **attributes)
    config["spec"]["env"] = [{"name": "LEDGER", "value": str(ledger_path)}]
    config["spec"]["triggers"]["orders"]["explicitAckMode"] = "explicitOnly"
    return config


def test_records_handled_past_an_unacked_head_stay_bounded_and_its_age_shows(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    function_dir: Callable[..., Path],
    quick_profile: dict[str, str],
    wait_until: Callable[..., Any],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    topic, group = unique("stuckhead"), unique("stuckhead-g")
    create_topics(broker_bootstrap, {topic: 1})
    produce(broker_bootstrap, topic, [Record(value=b"x", partition=0) for _ in range(3000)])
    ledger_path = tmp_path / "ledger.jsonl"
    config = stuck_head_config(broker_bootstrap, topic, group, quick_profile, ledger_path)
    proc = streamworker_process(function_dir(ACKING_HANDLER, config), args=["--health-addr", "127.0.0.1:0"])
    port = health_port(proc)
    labels = {"trigger": "orders", "topic": topic, "partition": "0"}

    def stuck_for(seconds: float) -> bool:
        found = metrics(port)
        age = metric(found, "streamworker_oldest_unfinished_age_seconds", **labels)
        return metric(found, "streamworker_partition_paused", **labels) == 1 and (age or 0) >= seconds

    wait_until(lambda: stuck_for(3.0), 60, message=lambda: metrics_text(port) + proc.output())
    handled = len(ledger(ledger_path))
    assert 0 < handled <= 100, f"{handled} records handled past an unacked head (limit 100)"
    assert committed_offsets(broker_bootstrap, group, topic, 1).get(0, 0) == 0
    assert proc.terminate() == 0


def test_ack_timeout_retries_a_record_left_unacked_and_the_partition_moves_on(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    function_dir: Callable[..., Path],
    quick_profile: dict[str, str],
    wait_until: Callable[..., Any],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    topic, group = unique("acktimeout"), unique("acktimeout-g")
    create_topics(broker_bootstrap, {topic: 1})
    end = produce(broker_bootstrap, topic, [Record(value=b"x", partition=0) for _ in range(500)])
    ledger_path = tmp_path / "ledger.jsonl"
    config = stuck_head_config(broker_bootstrap, topic, group, quick_profile, ledger_path, ackTimeout="2s")
    proc = streamworker_process(function_dir(ACKING_HANDLER, config), args=["--health-addr", "off"])
    failed = proc.wait_for_log("handler failed; will retry", timeout=60)
    assert (failed["offset"], failed["error_type"]) == (0, "AckTimeout"), failed
    wait_until(
        lambda: committed_offsets(broker_bootstrap, group, topic, 1) == end,
        60,
        message=lambda: f"committed {committed_offsets(broker_bootstrap, group, topic, 1)}, end {end}",
    )
    assert {(e["offset"], e["attempt"]) for e in ledger(ledger_path) if e["offset"] == 0} == {(0, 1), (0, 2)}
    assert proc.terminate() == 0
