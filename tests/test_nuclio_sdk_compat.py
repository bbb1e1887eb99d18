"""A handler written for Nuclio's Python runtime runs unmodified, through a worker and the harness.

nuclio-sdk is a runtime dependency of streamworker, so it is imported outright: a missing package
fails this module instead of skipping the proof. ``integration/test_nuclio_compat.py`` runs the
same kind of handler through a real broker.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import nuclio_sdk
import pytest
import yaml
from test_worker_process import WorkerHarness, wire_event

from streamworker.config import load_config
from streamworker.protocol import Msg, Status
from streamworker.testing import HandlerHarness
from streamworker.worker.sdk import QualifiedOffset, is_no_ack

# Written the way Nuclio's docs write handlers: annotated with nuclio_sdk types, state in
# context.user_data from init_context, logging with info_with, replying with nuclio_sdk.Response or a
# plain string, and acking explicitly with nuclio_sdk.QualifiedOffset.
NUCLIO_HANDLER = """
import os

import nuclio_sdk


def init_context(context: nuclio_sdk.Context) -> None:
    context.user_data.prefix = os.environ["PREFIX"]
    context.user_data.handled = 0
    context.logger.info_with("init_context done", prefix=context.user_data.prefix)

    def on_termination():
        context.logger.info_with("terminating", handled=context.user_data.handled)

    context.platform.set_termination_callback(on_termination)


def handler(context: nuclio_sdk.Context, event: nuclio_sdk.Event):
    context.user_data.handled += 1
    body = event.body.decode()
    context.logger.info_with(
        "Invoked",
        path=event.path,
        shard=event.shard_id,
        offset=event.offset,
        trigger_kind=event.trigger.kind,
        content_type=event.content_type,
        source=event.get_header("X-Source"),
    )
    if body == "string":
        return "plain string reply"
    if body == "hold":
        response = nuclio_sdk.Response(body="later", headers={}, content_type="text/plain", status_code=200)
        response.ensure_no_ack()
        return response
    return nuclio_sdk.Response(
        body=f"{context.user_data.prefix}:{body}",
        headers={"x-handled": str(context.user_data.handled)},
        content_type="text/plain",
        status_code=200,
    )


async def async_handler(context: nuclio_sdk.Context, event: nuclio_sdk.Event):
    await context.platform.explicit_ack(nuclio_sdk.QualifiedOffset.from_event(event))
    context.logger.info_with("acked", offset=event.offset)
    return f"{context.user_data.prefix}:acked"
"""


def write_function(folder: Path, handler: str) -> Path:
    folder.mkdir()
    (folder / "main.py").write_text(textwrap.dedent(NUCLIO_HANDLER), encoding="utf-8")
    config = {
        "metadata": {"name": "nuclio-compat"},
        "spec": {
            "handler": handler,
            "runtime": "python",
            "env": [{"name": "PREFIX", "value": "seen"}],
            "triggers": {
                "stream": {
                    "kind": "kafka-cluster",
                    "explicitAckMode": "enable",
                    "attributes": {"brokers": "127.0.0.1:9092", "topics": ["events"], "consumerGroup": "g"},
                }
            },
        },
    }
    path = folder / "function.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[HandlerHarness]:
    with HandlerHarness(write_function(tmp_path / "fn", "main:handler")) as loaded:
        yield loaded


def test_init_context_user_data_and_response(harness: HandlerHarness) -> None:
    reply = harness.call(b"order-1", headers={"X-Source": "web", "content-type": "text/plain"})
    assert isinstance(reply, nuclio_sdk.Response)
    assert (reply.body, reply.status_code, reply.content_type) == ("seen:order-1", 200, "text/plain")
    assert reply.headers == {"x-handled": "1"}
    assert not is_no_ack(reply)


def test_plain_string_reply(harness: HandlerHarness) -> None:
    assert harness.call(b"string") == "plain string reply"


def test_info_with_becomes_structured_log_records(harness: HandlerHarness) -> None:
    harness.call(b"order-1", partition=4, offset=17, headers={"x-source": "web"})
    init, invoked = harness.logs
    assert (init.level, init.message, init.fields["prefix"]) == ("info", "init_context done", "seen")
    assert invoked.level == "info" and invoked.message == "Invoked"
    assert {key: invoked.fields[key] for key in ("path", "shard", "offset", "trigger_kind", "source")} == {
        "path": "events",
        "shard": 4,
        "offset": 17,
        "trigger_kind": "kafka-cluster",
        "source": b"web",
    }
    # The worker's own fields come along, as in its JSON lines.
    assert (invoked.fields["topic"], invoked.fields["partition"]) == ("events", 4)


def test_ensure_no_ack_is_recognised_as_no_ack(harness: HandlerHarness) -> None:
    reply = harness.call(b"hold")
    assert isinstance(reply, nuclio_sdk.Response)
    # nuclio-sdk sets the header to the boolean True; streamworker must read that as "do not commit".
    assert reply.headers == {"x-nuclio-stream-no-ack": True}
    assert is_no_ack(reply)


def test_ensure_no_ack_on_a_bare_response() -> None:
    response = nuclio_sdk.Response()
    assert not is_no_ack(response)
    response.ensure_no_ack()
    assert is_no_ack(response)


def test_termination_callback(harness: HandlerHarness) -> None:
    harness.call(b"a")
    harness.call(b"b")
    assert harness.terminate() is True
    assert harness.logs[-1].message == "terminating"
    assert harness.logs[-1].fields["handled"] == 2


def test_async_handler_with_nuclio_qualified_offset(tmp_path: Path) -> None:
    with HandlerHarness(write_function(tmp_path / "fn", "main:async_handler")) as harness:
        assert harness.loaded.is_async
        assert harness.call(b"x", partition=2, offset=5) == "seen:acked"
        assert harness.acks == [QualifiedOffset("events", 2, 5)]


# --- the compatibility suite: Nuclio-style handlers through a real worker and through the harness --
#
# tests/fixtures/nuclio holds handlers written the way Nuclio users write them and a function.yaml
# shaped like `nuctl export` output. Each scenario runs twice: in a worker process driven over its
# pipes as the supervisor drives it, and in-process through HandlerHarness.

NUCLIO_FIXTURES = Path(__file__).parent / "fixtures" / "nuclio"
WORKER_ID = 4  # what WorkerHarness.init gives the worker


@dataclass(frozen=True)
class Rec:
    body: bytes
    offset: int
    partition: int = 0
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int = 1_700_000_000_123


class Via(Protocol):
    trigger_name: str

    def send(self, records: list[Rec]) -> tuple[list[str], list[tuple[str, int, int]]]:
        """Run the records; their outcomes ("ok", "no_ack", "error") and the explicit acks made."""
        ...

    def drain(self) -> None: ...

    def terminate(self) -> None: ...

    def logs(self) -> list[dict[str, Any]]:
        """The handler's log lines: level, message and fields in one dict."""
        ...


class ViaHarness:
    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.harness = HandlerHarness(config, env=env, worker_id=WORKER_ID)
        self.trigger_name = self.harness.trigger.name

    def send(self, records: list[Rec]) -> tuple[list[str], list[tuple[str, int, int]]]:
        outcomes = []
        for rec in records:
            try:
                result = self.harness.call(
                    rec.body,
                    key=rec.key,
                    headers=list(rec.headers),
                    partition=rec.partition,
                    offset=rec.offset,
                    timestamp=rec.timestamp_ms,
                )
            except Exception:
                outcomes.append("error")
                continue
            outcomes.append("no_ack" if is_no_ack(result) else "ok")
        acks = [(ack.topic, ack.partition, ack.offset) for ack in self.harness.acks]
        self.harness.acks.clear()
        return outcomes, acks

    def drain(self) -> None:
        assert self.harness.drain() is True

    def terminate(self) -> None:
        assert self.harness.terminate() is True

    def logs(self) -> list[dict[str, Any]]:
        return [{"level": log.level, "message": log.message, **log.fields} for log in self.harness.logs]

    def close(self) -> None:
        self.harness.close()


class ViaWorker:
    _STATUS = {Status.OK: "ok", Status.NO_ACK: "no_ack", Status.ERROR: "error"}

    def __init__(self, tmp_path: Path, config: Path, env: dict[str, str]) -> None:
        loaded = load_config(config, environ={**os.environ, **env})
        # What the supervisor puts in a worker's environment (runner.py): Nuclio's variables,
        # spec.env, and the test's own.
        worker_env = {**loaded.config.nuclio_env, **loaded.config.env, **env}
        self.worker = WorkerHarness(tmp_path, extra_env=worker_env)
        self.worker.start(str(loaded.config.handler), code_dir=config.parent)
        self.trigger_name = "orders-trigger"  # WorkerHarness.init's
        self._seq = 0

    def send(self, records: list[Rec]) -> tuple[list[str], list[tuple[str, int, int]]]:
        events = []
        for rec in records:
            headers = [[name, value] for name, value in rec.headers] or None
            events.append(
                wire_event(
                    self._seq,
                    rec.body,
                    lane=rec.partition,
                    partition=rec.partition,
                    offset=rec.offset,
                    key=rec.key,
                    headers=headers,
                    timestamp_ms=rec.timestamp_ms,
                )
            )
            self._seq += 1
        self.worker.events(*events)
        results, acks = self.worker.results(len(events), timeout=30.0)
        # An ack made while a record ran is written after that record's result at the latest, in
        # the same write (a few bytes, so atomic on a pipe): if not read yet, it is in the pipe now.
        while self.worker.inbox or select.select([self.worker.from_worker], [], [], 0)[0]:
            kind, payload = self.worker.next_message(30.0)
            assert kind == Msg.ACKS, (kind, payload)
            acks.extend(payload)
        return [self._STATUS[Status(result[1])] for result in results], [tuple(ack) for ack in acks]  # type: ignore[misc]

    def drain(self) -> None:
        self.worker.send([Msg.DRAIN, 1])
        assert self.worker.next_message(30.0) == [Msg.DRAINED, 1]

    def terminate(self) -> None:
        self.worker.send([Msg.TERMINATE])
        assert self.worker.next_message(30.0) == [Msg.TERMINATED]

    def logs(self) -> list[dict[str, Any]]:
        return self.worker.log_lines()

    def close(self) -> None:
        self.worker.close()


@pytest.fixture(params=["worker", "harness"])
def via(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], Via]]:
    opened: list[ViaHarness | ViaWorker] = []
    folder = tmp_path / "fn"
    shutil.copytree(NUCLIO_FIXTURES, folder)
    env = {"COMPAT_OUT": str(tmp_path / "out.jsonl"), "SINK_FILE": str(tmp_path / "sink.jsonl")}

    def start(handler: str) -> Via:
        doc = yaml.safe_load((folder / "function.yaml").read_text())
        doc["spec"]["handler"] = handler
        (folder / "function.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        runner: ViaHarness | ViaWorker
        if request.param == "worker":
            runner = ViaWorker(tmp_path / "worker", folder / "function.yaml", env)
        else:
            runner = ViaHarness(folder / "function.yaml", env)
        opened.append(runner)
        return runner

    (tmp_path / "worker").mkdir()
    yield start
    for runner in opened:
        runner.close()


def observed(tmp_path: Path, name: str = "out.jsonl") -> list[dict[str, Any]]:
    path = tmp_path / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_sync_handler_json_body_header_bytes_and_naive_utc_timestamps(
    via: Callable[[str], Via], tmp_path: Path
) -> None:
    runner = via("sync_orders:handler")
    now_ms = time.time_ns() // 1_000_000
    stamp = now_ms - now_ms % 1000 - 5000 + 123  # five seconds ago, 123 ms into the second
    records = [
        Rec(b'{"order": 7}', 0, key=b"customer-7", headers=(("X-Trace-Id", b"t-1"),), timestamp_ms=stamp),
        Rec(b'{"order": 8}', 1, headers=(("x-trace-id", b"t-2"), ("Source", b"web")), timestamp_ms=stamp),
    ]
    assert runner.send(records) == (["ok", "ok"], [])
    first, second = observed(tmp_path)
    assert first == {
        "order": 7,
        "trace": "t-1",
        "trace_type": "bytes",
        "header_names": ["X-Trace-Id"],
        "fresh": True,
        "ms": 123,
        "naive": True,
        "key": "customer-7",
        "size": len(b'{"order": 7}'),
    }
    assert (second["trace"], second["header_names"], second["key"]) == ("t-2", ["Source", "x-trace-id"], None)


def test_async_handler_answers_no_ack_and_acks_cumulatively(
    via: Callable[[str], Via], tmp_path: Path
) -> None:
    runner = via("async_batch:handler")
    outcomes, acks = runner.send([Rec(b"x", offset) for offset in range(10, 16)])
    assert outcomes == ["no_ack", "no_ack", "ok", "no_ack", "no_ack", "ok"]
    # Every third record acks its own offset; with explicitAckScope: cumulative (the default) each
    # ack also closes the no-ack records before it (test_dispatch proves the commit side).
    assert acks == [("orders", 0, 12), ("orders", 0, 15)]
    assert [line["offset"] for line in observed(tmp_path)] == list(range(10, 16))


def test_drain_and_termination_hooks_of_an_exported_function(
    via: Callable[[str], Via], tmp_path: Path
) -> None:
    runner = via("drain-hook:handler")
    source = (("source", b"shop"),)
    held = [Rec(json.dumps({"order": n}).encode(), n, headers=source) for n in range(3)]
    assert runner.send(held) == (["no_ack"] * 3, [])
    assert observed(tmp_path, "sink.jsonl") == []
    runner.drain()
    drained = observed(tmp_path, "sink.jsonl")
    assert [(line["order"], line["reason"]) for line in drained] == [(0, "drain"), (1, "drain"), (2, "drain")]
    assert drained[0] == {
        "order": 0,
        "partition": 0,
        "offset": 0,
        "source": "shop",
        "worker": str(WORKER_ID),
        "function": "order-sink",
        "trigger": runner.trigger_name,
        "reason": "drain",
    }
    flushing = [Rec(b'{"order": 3}', 3), Rec(b'{"order": 4, "flush": true}', 4), Rec(b'{"order": 5}', 5)]
    assert runner.send(flushing) == (["no_ack", "ok", "no_ack"], [("orders", 0, 4)])
    runner.terminate()  # an async termination callback
    lines = observed(tmp_path, "sink.jsonl")[3:]
    assert [(line["order"], line["reason"]) for line in lines] == [
        (3, "flush"),
        (4, "flush"),
        (5, "terminate"),
    ]
    flushed = [log for log in runner.logs() if log["message"] == "flushed"]
    assert [log["reason"] for log in flushed] == ["drain", "flush", "terminate"]
    assert {log["sink"] for log in flushed} == {str(tmp_path / "sink.jsonl")}  # context.logger.bind


def test_context_and_event_api_as_nuclio_gives_them(via: Callable[[str], Via], tmp_path: Path) -> None:
    runner = via("context_api:handler")
    assert runner.send([Rec(b"abc", 9, partition=2)]) == (["ok"], [])
    (seen,) = observed(tmp_path)
    assert seen["worker_id"] == str(WORKER_ID)
    assert seen["trigger_name"] == runner.trigger_name
    assert seen["trigger"] == ["kafka-cluster", runner.trigger_name]
    assert seen["namespace"] == "default"
    assert seen["call_error"].startswith(
        "FunctionCallsUnavailable: context.platform.call_function('enricher') is not available"
    )
    assert seen["env"] == {
        "NUCLIO_FUNCTION_NAME": "order-sink",
        "NUCLIO_FUNCTION_DESCRIPTION": "Orders into the warehouse sink",
        "NUCLIO_FUNCTION_VERSION": "-1",
        "NUCLIO_FUNCTION_HANDLER": "context_api:handler",
    }
    # Nuclio's values for a Kafka event (nuclio-sdk-go AbstractEvent and the Kafka trigger's event).
    assert seen["event"] == {
        "size": 3,
        "num_shards": 0,
        "type": "",
        "type_version": "",
        "version": "",
        "last_in_batch": False,
        "path": "orders",
        "topic": "orders",
        "shard_id": 2,
        "offset": 9,
        "method": "",
        "url": "",
        "fields": {},
        "content_type": "",
    }
    assert seen["to_json"] == {
        "body": base64.b64encode(b"abc").decode(),
        "path": "orders",
        "shard_id": 2,
        "offset": 9,
        "trigger": {"kind": "kafka-cluster", "name": runner.trigger_name},
    }
    (line,) = [log for log in runner.logs() if log["message"] == "fields a log pipeline also writes"]
    assert line["level"] == "info"
    # A user field named like one the log pipeline writes is kept, under a leading underscore.
    assert (line["_level"], line["_timestamp"], line["team"]) == ("gold", "t", "orders")


def test_validate_accepts_the_exported_function_yaml_with_warnings(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamworker",
            "validate",
            "--config",
            str(NUCLIO_FIXTURES / "function.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SINK_FILE": str(tmp_path / "sink.jsonl")},
    )
    assert completed.returncode == 0, completed.stderr
    assert "ok: function order-sink, handler drain-hook:handler" in completed.stdout
    warnings = [line for line in completed.stderr.splitlines() if ": warning: " in line]
    for key in (
        "spec.disableDefaultHTTPTrigger",
        "spec.envFrom",
        "spec.triggers.orders.batch",
        "spec.runtime",
    ):
        assert sum(f"function.yaml: {key}: " in line for line in warnings) == 1, key
    assert len(warnings) == len(completed.stderr.splitlines()), "only warnings on stderr"


def test_nuclio_sdk_is_a_runtime_dependency_and_the_image_installs_it() -> None:
    root = Path(__file__).parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert any(dep.split(">")[0].split("=")[0].strip() == "nuclio-sdk" for dep in project["dependencies"])
    # The image installs the streamworker wheel with pip resolving its dependencies (no --no-deps).
    dockerfile = (root / "Dockerfile").read_text()
    install = next(line for line in dockerfile.splitlines() if "pip install" in line and "/wheels/" in line)
    assert "--no-deps" not in install


def test_a_worker_reports_results_before_the_acks_made_after_them(tmp_path: Path) -> None:
    # A cumulative ack closes the no-ack records before it only if the supervisor already has their
    # results: an ACKS frame ahead of those RESULTS would find nothing to close (seen on a broker).
    worker = WorkerHarness(tmp_path, extra_env={"COMPAT_OUT": str(tmp_path / "out.jsonl")})
    try:
        worker.start("async_batch:handler", code_dir=NUCLIO_FIXTURES)
        worker.events(*[wire_event(seq, b"x", offset=10 + seq) for seq in range(3)])
        reported: list[int] = []
        while True:
            kind, payload = worker.next_message(30.0)
            if kind == Msg.ACKS:
                assert payload == [["orders", 0, 12]]
                break
            assert kind == Msg.RESULTS
            reported += [result[0] for result in payload]
        assert reported[:2] == [0, 1], "the no-ack results of offsets 10 and 11 come before the ack of 12"
    finally:
        worker.close()
