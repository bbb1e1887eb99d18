"""streamworker.testing.HandlerHarness: a function loaded as a worker loads it, called in-process."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamworker.config import ConfigError
from streamworker.testing import HandlerHarness, LogRecord
from streamworker.worker.loader import HandlerLoadError
from streamworker.worker.sdk import QualifiedOffset, TriggerInfo, is_no_ack

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every test must leave sys.path and sys.modules as it found them: that is the harness's job."""
    path_before = list(sys.path)
    modules_before = set(sys.modules)
    yield
    assert sys.path == path_before
    leaked = {name for name in set(sys.modules) - modules_before if name.split(".")[0] in ("main", "app")}
    assert not leaked


def write_function(
    folder: Path,
    code: str,
    *,
    handler: str = "main:handler",
    module_file: str = "main.py",
    env: dict[str, str] | None = None,
    triggers: dict[str, Any] | None = None,
    name: str = "fn",
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / module_file
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(textwrap.dedent(code), encoding="utf-8")
    if triggers is None:
        triggers = {
            "orders": {
                "kind": "kafka-cluster",
                "attributes": {"brokers": "127.0.0.1:9092", "topics": ["orders"], "consumerGroup": "g"},
            }
        }
    spec: dict[str, Any] = {"handler": handler, "triggers": triggers}
    if env is not None:
        spec["env"] = [{"name": key, "value": value} for key, value in env.items()]
    config = folder / "function.yaml"
    config.write_text(yaml.safe_dump({"metadata": {"name": name}, "spec": spec}), encoding="utf-8")
    return config


SYNC = """
    import asyncio
    import os

    def init_context(context):
        context.user_data.greeting = os.environ["GREETING"]
        context.user_data.seen = []
        context.logger.info("initialised")
        context.platform.set_drain_callback(lambda: context.user_data.seen.append("drained"))
        context.platform.set_termination_callback(lambda: context.user_data.seen.append("terminated"))

    def handler(context, event):
        context.user_data.seen.append(event.offset)
        if event.body == b"boom":
            raise ValueError("boom on " + event.id)
        if event.body == b"loop":
            return asyncio.get_running_loop() is not None
        if event.body == b"env":
            return os.environ.get("SW_H_PRE"), os.environ.get("SW_H_NEW")
        if event.body == b"meta":
            return {
                "key": event.key,
                "headers": event.header_list,
                "topic": event.topic,
                "partition": event.partition,
                "offset": event.offset,
                "timestamp": event.timestamp,
                "attempt": event.attempt,
                "trigger": event.trigger,
                "worker": context.worker_id,
            }
        context.logger.info_with("greeted", key=event.key, event="shadowed name")
        return f"{context.user_data.greeting} {event.body.decode()}"
"""


def test_sync_handler_with_init_context_and_spec_env(tmp_path: Path) -> None:
    config = write_function(tmp_path / "fn", SYNC, env={"GREETING": "hello"})
    with HandlerHarness(config) as harness:
        assert harness.call(b"world") == "hello world"
        assert harness.call("text values are encoded") == "hello text values are encoded"
        assert harness.call(b"loop") is True  # sync handlers run inside the loop, as in a worker
        assert harness.warnings == ()


def test_exceptions_propagate(tmp_path: Path) -> None:
    config = write_function(tmp_path / "fn", SYNC, env={"GREETING": "hi"})
    with HandlerHarness(config) as harness, pytest.raises(ValueError, match="boom on orders/0/0"):
        harness.call(b"boom")


def test_spec_env_applied_for_the_harness_lifetime_then_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SW_H_PRE", "before")
    monkeypatch.delenv("SW_H_NEW", raising=False)
    config = write_function(
        tmp_path / "fn", SYNC, env={"GREETING": "hi", "SW_H_PRE": "from-spec", "SW_H_NEW": "new"}
    )
    with HandlerHarness(config) as harness:
        assert harness.call(b"env") == ("from-spec", "new")
        assert os.environ["SW_H_PRE"] == "from-spec"
    assert os.environ["SW_H_PRE"] == "before"
    assert "SW_H_NEW" not in os.environ
    assert "GREETING" not in os.environ


def test_env_argument_overrides_spec_env_and_feeds_references(tmp_path: Path) -> None:
    triggers = {
        "t": {
            "kind": "kafka-cluster",
            "attributes": {"brokers": "${SW_H_BROKERS}", "topics": ["a"], "consumerGroup": "g"},
        }
    }
    config = write_function(tmp_path / "fn", SYNC, env={"GREETING": "spec"}, triggers=triggers)
    with pytest.raises(ConfigError, match="SW_H_BROKERS is not set"):
        HandlerHarness(config)
    with HandlerHarness(config, env={"SW_H_BROKERS": "h:1", "GREETING": "override"}) as harness:
        assert harness.trigger.attributes.brokers == ("h:1",)
        assert harness.call(b"x") == "override x"
    assert "SW_H_BROKERS" not in os.environ


def test_event_fields_offsets_and_defaults(tmp_path: Path) -> None:
    config = write_function(tmp_path / "fn", SYNC, env={"GREETING": "hi"})
    with HandlerHarness(config, worker_id=3) as harness:
        before = dt.datetime.now(dt.UTC).replace(microsecond=0, tzinfo=None)
        first = harness.call(b"meta", key=b"user-1", headers={"trace": "abc", "raw": b"\xff"})
        assert first["key"] == "user-1"
        assert first["headers"] == [("trace", b"abc"), ("raw", b"\xff")]
        assert (first["topic"], first["partition"], first["offset"], first["attempt"]) == ("orders", 0, 0, 1)
        assert first["timestamp"] >= before
        assert first["trigger"] == TriggerInfo("kafka-cluster", "orders")
        assert first["worker"] == "3"

        # Offsets count up per topic-partition; an explicit one moves the counter on.
        assert harness.call(b"meta")["offset"] == 1
        assert harness.call(b"meta", partition=1)["offset"] == 0
        assert harness.call(b"meta", offset=41)["offset"] == 41
        assert harness.call(b"meta")["offset"] == 42
        assert harness.call(b"meta", topic="other")["offset"] == 0

        # Handlers see naive UTC (as in Nuclio); the harness takes aware or naive-UTC datetimes.
        moment = dt.datetime(2024, 5, 1, 12, 0, 0, 123000)
        assert harness.call(b"meta", timestamp=moment)["timestamp"] == moment
        assert harness.call(b"meta", timestamp=moment.replace(tzinfo=dt.UTC))["timestamp"] == moment
        assert harness.call(b"meta", timestamp=1_700_000_000_123)["timestamp"] == dt.datetime(
            2023, 11, 14, 22, 13, 20, 123000
        )
        assert harness.call(b"meta", timestamp=-1)["timestamp"] is None
        assert harness.call(b"meta", attempt=3)["attempt"] == 3


def test_decode_setting_from_spec_env(tmp_path: Path) -> None:
    config = write_function(
        tmp_path / "fn", SYNC, env={"GREETING": "hi", "NUCLIO_PYTHON_DECODE_EVENT_STRINGS": "disabled"}
    )
    with HandlerHarness(config) as harness:
        assert harness.call(b"meta", key=b"user-1")["key"] == b"user-1"


def test_logs_are_structured_records(tmp_path: Path) -> None:
    config = write_function(tmp_path / "fn", SYNC, env={"GREETING": "hi"}, name="greeter")
    with HandlerHarness(config) as harness:
        harness.call(b"x", key="k", partition=2, offset=7)
        assert harness.logs == [
            LogRecord("info", "initialised", {"function": "greeter", "worker": 0, "trigger": "orders"}),
            LogRecord(
                "info",
                "greeted",
                {
                    "function": "greeter",
                    "worker": 0,
                    "trigger": "orders",
                    "topic": "orders",
                    "partition": 2,
                    "offset": 7,
                    "key": "k",
                    "event": "shadowed name",
                },
            ),
        ]


def test_drain_and_terminate_run_the_callbacks(tmp_path: Path) -> None:
    config = write_function(tmp_path / "fn", SYNC, env={"GREETING": "hi"})
    with HandlerHarness(config) as harness:
        harness.call(b"a")
        assert harness.drain() is True
        harness.call(b"b")
        assert harness.terminate() is True
        assert harness.context.user_data.seen == [0, "drained", 1, "terminated"]
        with pytest.raises(RuntimeError, match="terminated"):
            harness.call(b"c")
    with pytest.raises(RuntimeError, match="closed"):
        harness.call(b"d")


def test_without_callbacks_drain_and_terminate_report_false(tmp_path: Path) -> None:
    config = write_function(tmp_path / "fn", "def handler(context, event):\n    return None\n")
    with HandlerHarness(config) as harness:
        assert harness.call() is None
        assert harness.drain() is False
        assert harness.terminate() is False


ASYNC = """
    import asyncio

    from streamworker.worker.sdk import QualifiedOffset, Response

    async def init_context(context):
        await asyncio.sleep(0)
        context.user_data.done = []
        context.user_data.tasks = set()

        async def on_drain():
            await asyncio.sleep(0)
            context.user_data.done.append("drained")

        context.platform.set_drain_callback(on_drain)

    def keep(context, coro):
        task = asyncio.create_task(coro)
        context.user_data.tasks.add(task)
        task.add_done_callback(context.user_data.tasks.discard)

    async def handler(context, event):
        body = event.body
        if body == b"start":
            # Finishes only once a later call opens the gate: the loop must outlive the call.
            context.user_data.gate = asyncio.Event()

            async def waiter():
                await context.user_data.gate.wait()
                context.user_data.done.append("after gate")
                await context.platform.explicit_ack(QualifiedOffset.from_event(event))

            keep(context, waiter())
            response = Response()
            response.ensure_no_ack()
            return response
        if body == b"open":
            context.user_data.gate.set()
            return "opened"
        if body == b"forever":
            async def forever():
                try:
                    await asyncio.Event().wait()
                finally:
                    context.user_data.done.append("cancelled")

            keep(context, forever())
            return "started"
        if body == b"ack":
            context.platform.explicit_ack_sync(event)
            return "acked"
        await asyncio.sleep(0)
        return body.upper()
"""


def test_async_handler_and_background_tasks_across_calls(tmp_path: Path) -> None:
    config = write_function(tmp_path / "fn", ASYNC)
    with HandlerHarness(config) as harness:
        assert harness.loaded.is_async and harness.loaded.init_is_async
        result = harness.call(b"start", offset=10)
        assert is_no_ack(result)
        assert harness.acks == []
        assert harness.call(b"open") == "opened"
        harness.wait_for_tasks()
        assert harness.context.user_data.done == ["after gate"]
        assert harness.acks == [QualifiedOffset("orders", 0, 10)]
        assert harness.call(b"ack") == "acked"
        assert harness.acks[-1] == QualifiedOffset("orders", 0, 12)
        assert harness.call(b"abc") == b"ABC"
        assert harness.drain() is True
        assert harness.context.user_data.done[-1] == "drained"


def test_wait_for_tasks_times_out_and_close_cancels(tmp_path: Path) -> None:
    config = write_function(tmp_path / "fn", ASYNC)
    harness = HandlerHarness(config)
    done = harness.context.user_data.done
    harness.call(b"forever")
    with pytest.raises(TimeoutError, match="1 background task"):
        harness.wait_for_tasks(timeout=0.05)
    assert done == []
    harness.close()
    assert done == ["cancelled"]
    harness.close()  # twice is fine


def test_terminate_gives_tasks_a_grace_period_then_cancels(tmp_path: Path) -> None:
    config = write_function(tmp_path / "fn", ASYNC)
    with HandlerHarness(config) as harness:
        harness.call(b"start")
        harness.call(b"forever")
        harness.context.user_data.gate.set()  # lets the first task finish during the grace period
        assert harness.terminate(grace=0.2) is False
        assert sorted(harness.context.user_data.done) == ["after gate", "cancelled"]


def test_refuses_to_run_inside_another_event_loop(tmp_path: Path) -> None:
    config = write_function(tmp_path / "fn", ASYNC)
    with HandlerHarness(config) as harness:

        async def from_async_test() -> None:
            harness.call(b"x")

        with pytest.raises(RuntimeError, match="plain"):
            asyncio.run(from_async_test())
        assert harness.call(b"x") == b"X"


def test_trigger_selection(tmp_path: Path) -> None:
    attributes = {"brokers": "b:1", "consumerGroup": "g"}
    triggers = {
        "first": {"kind": "kafka-cluster", "attributes": {**attributes, "topics": ["one", "two"]}},
        "second": {"kind": "kafka", "attributes": {**attributes, "topics": ["three"]}},
        "pattern": {"kind": "kafka-cluster", "attributes": {**attributes, "topics": ["^orders-.*"]}},
    }
    config = write_function(tmp_path / "fn", SYNC, env={"GREETING": "hi"}, triggers=triggers)
    with HandlerHarness(config) as harness:
        assert harness.call(b"meta")["topic"] == "one"
        assert harness.call(b"meta")["trigger"] == TriggerInfo("kafka-cluster", "first")
    with HandlerHarness(config, trigger="second") as harness:
        assert harness.call(b"meta")["topic"] == "three"
        assert harness.call(b"meta")["trigger"] == TriggerInfo("kafka-cluster", "second")
    with HandlerHarness(config, trigger="pattern") as harness:
        with pytest.raises(ValueError, match="pass topic="):
            harness.call(b"meta")
        assert harness.call(b"meta", topic="orders-eu")["topic"] == "orders-eu"
    with pytest.raises(ValueError, match="no trigger 'third'"):
        HandlerHarness(config, trigger="third")


def test_same_module_name_in_two_functions_does_not_collide(tmp_path: Path) -> None:
    one = write_function(tmp_path / "one", "def handler(context, event):\n    return 'one'\n")
    two = write_function(tmp_path / "two", "def handler(context, event):\n    return 'two'\n")
    with HandlerHarness(one) as first, HandlerHarness(two) as second:
        assert first.call() == "one"
        assert second.call() == "two"
        assert first.module is not second.module
    with HandlerHarness(one) as again:
        assert again.call() == "one"


def test_import_rules_match_the_worker(tmp_path: Path) -> None:
    """Dotted handler paths map to folders; the function's folder comes first on sys.path, so its
    helper modules are found; modules imported from it are gone after close."""
    folder = tmp_path / "fn"
    (folder / "app").mkdir(parents=True)
    (folder / "app" / "__init__.py").write_text("", encoding="utf-8")
    (folder / "helpers_sw_test.py").write_text("VALUE = 'helper'\n", encoding="utf-8")
    code = """
        import helpers_sw_test

        def handle(context, event):
            return helpers_sw_test.VALUE
    """
    config = write_function(folder, code, handler="app.entry:handle", module_file="app/entry.py")
    with HandlerHarness(config) as harness:
        assert harness.call() == "helper"
        assert harness.module.__name__ == "app.entry"
        assert sys.path[0] == str(folder)
    assert "helpers_sw_test" not in sys.modules
    assert "app.entry" not in sys.modules


def test_load_failures_propagate_and_restore_everything(tmp_path: Path) -> None:
    failing_init = """
        def init_context(context):
            raise RuntimeError("no database")

        def handler(context, event):
            return None
    """
    config = write_function(tmp_path / "init", failing_init, env={"SW_H_INIT": "1"})
    with pytest.raises(RuntimeError, match="no database"):
        HandlerHarness(config)
    assert "SW_H_INIT" not in os.environ

    missing = write_function(tmp_path / "missing", "x = 1\n", env={"SW_H_MISSING": "1"})
    with pytest.raises(HandlerLoadError, match="has no function 'handler'"):
        HandlerHarness(missing)
    assert "SW_H_MISSING" not in os.environ


def test_the_orders_example(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example from docs/handlers.md's testing section."""
    monkeypatch.delenv("GREETING", raising=False)
    order = b'{"id": "o-1", "customer": "Ada", "items": [{"price": 2.5, "qty": 2}]}'
    with HandlerHarness(REPO / "examples" / "orders" / "function.yaml") as harness:
        assert harness.call(order, key=b"customer-42") == '{"order_id": "o-1", "total": 5.0}'
        [line] = [log for log in harness.logs if log.message == "order handled"]
        assert line.fields["customer"] == "customer-42"
        assert line.fields["reply"] == "thanks for your order, Ada"
        assert harness.terminate() is True
        assert harness.logs[-1].message == "worker stopping"
        assert harness.logs[-1].fields["handled"] == 1
