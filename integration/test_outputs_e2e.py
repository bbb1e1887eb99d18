"""Outputs end to end (issue #18): what handlers produce reaches its topics before the input is
committed, with keys and headers; SIGKILLed workers lose no output of a committed input; an output
the broker refuses makes the input fail (retried, then dead-lettered with the output error).

Tansu refuses a produce to an invalid topic name ("Broker: Invalid topic", as Kafka does) and
accepts records of any size (it ignores max.message.bytes), so the refused output is one to a topic
named "bad topic!".
"""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Message
from test_failure_policy import (  # noqa: F401 - dead_letter_broker is a fixture used by name
    dead_letter_broker,
    function_config,
    headers_of,
    is_message,
    logs_named,
    read_topic,
    stop_cleanly,
    streamworker_headers,
    trigger_config,
    wait_committed,
)

from devtools.broker import Record, committed_offsets, create_topics, produce

HANDLER = """
import os
import time


def handler(context, event):
    if event.body.startswith(b"refuse"):
        context.platform.produce("bad topic!", event.body)  # the broker refuses this topic name
        return None
    context.platform.produce(
        os.environ["PRODUCED"],
        {"partition": event.partition, "offset": event.offset, "body": event.body.decode()},
        key=event.key,
        headers={"src-offset": str(event.offset)},
    )
    delay = float(os.environ.get("DELAY", "0"))
    if delay:
        time.sleep(delay)
    return event.body  # to attributes.outputTopic
"""


def by_key(messages: list[Message]) -> dict[bytes | None, list[bytes]]:
    grouped: dict[bytes | None, list[bytes]] = defaultdict(list)
    for message in sorted(messages, key=lambda m: (m.partition(), m.offset())):
        value = message.value()
        assert isinstance(value, bytes)
        grouped[message.key()].append(value)
    return dict(grouped)


def test_outputs_from_return_values_and_produce_with_keys_and_headers(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
) -> None:
    topic, group = unique("in"), unique("group")
    returned, produced = unique("returned"), unique("produced")
    create_topics(broker_bootstrap, {topic: 2, returned: 2, produced: 2})
    records = [
        Record(value=f"v{i}", key=f"k{i % 5}", headers=[("trace", f"t{i}".encode())]) for i in range(40)
    ]
    end = produce(broker_bootstrap, topic, records)
    trigger = trigger_config(
        brokers=broker_bootstrap,
        topic=topic,
        group=group,
        profile=quick_profile,
        workers=2,
        attributes={"outputTopic": returned, "outputHeaders": "copy"},
    )
    config = function_dir(HANDLER, function_config({"t": trigger}, {"PRODUCED": produced}))
    proc = streamworker_process(config)
    port = proc.wait_for_log("health server listening", timeout=30)["port"]
    wait_committed(wait_until, broker_bootstrap, group, topic, end, timeout=60)

    def metrics() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text: str = response.read().decode()
        return text

    def delivered() -> dict[str, float]:
        text = metrics()
        pattern = r'streamworker_outputs_total\{result="delivered",topic="([^"]+)",trigger="t"\} (\S+)'
        return {name: float(value) for name, value in re.findall(pattern, text)}

    # Snapshots are published every 50 ms: wait for the one after the last delivery.
    wait_until(lambda: delivered() == {returned: 40.0, produced: 40.0}, 10, message=lambda: str(delivered()))
    assert 'streamworker_output_delivery_seconds_count{trigger="t"} 80.0' in metrics()
    stop_cleanly(proc)

    out = read_topic(broker_bootstrap, returned, unique("reader"), quick_profile)
    assert sorted(m.value() or b"" for m in out) == sorted(f"v{i}".encode() for i in range(40))
    for message in out:
        value = message.value()
        assert isinstance(value, bytes)
        i = int(value[1:])
        assert message.key() == f"k{i % 5}".encode(), "the input's key"
        assert headers_of(message) == [("trace", f"t{i}".encode())], "outputHeaders: copy"
    # One key's outputs keep the order of its inputs.
    expected = {f"k{k}".encode(): [f"v{i}".encode() for i in range(k, 40, 5)] for k in range(5)}
    assert by_key(out) == expected

    side = read_topic(broker_bootstrap, produced, unique("reader"), quick_profile)
    assert len(side) == 40
    for message in side:
        value = message.value()
        assert isinstance(value, bytes)
        data = json.loads(value)
        i = int(data["body"][1:])
        assert message.key() == f"k{i % 5}".encode()
        assert headers_of(message) == [("src-offset", str(data["offset"]).encode())]
    assert not logs_named(proc, "output delivery failed")


def test_sigkilled_workers_leave_no_committed_input_without_its_outputs(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
) -> None:
    topic, group = unique("in"), unique("group")
    returned, produced = unique("returned"), unique("produced")
    create_topics(broker_bootstrap, {topic: 2, returned: 2, produced: 2})
    count = 600
    records = [Record(value=f"v{i}", key=f"k{i}", partition=i % 2) for i in range(count)]
    end = produce(broker_bootstrap, topic, records)
    trigger = trigger_config(
        brokers=broker_bootstrap,
        topic=topic,
        group=group,
        profile=quick_profile,
        workers=2,
        attributes={"outputTopic": returned},
    )
    env = {"PRODUCED": produced, "DELAY": "0.01"}
    config = function_dir(HANDLER, function_config({"t": trigger}, env))
    proc = streamworker_process(config)

    # Once records flow, SIGKILL a ready worker three times (each time one not killed before).
    wait_until(
        lambda: sum(committed_offsets(broker_bootstrap, group, topic, 2).values()) > 0,
        60,
        message=lambda: f"nothing committed\n{proc.output()}",
    )
    killed: set[int] = set()
    for _ in range(3):
        ready = wait_until(
            lambda: [log["pid"] for log in logs_named(proc, "worker ready") if log["pid"] not in killed],
            60,
            message=lambda: f"no fresh worker got ready\n{proc.output()}",
        )
        pid = ready[-1]
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
        proc.wait_for_log(is_message("worker died; replacing it", pid=pid), 30)
    progress = committed_offsets(broker_bootstrap, group, topic, 2)
    assert progress != end, f"the run ended before the kills ({progress}); slow the handler down"
    wait_committed(wait_until, broker_bootstrap, group, topic, end, timeout=120)
    stop_cleanly(proc)

    inputs = {(i % 2, i // 2) for i in range(count)}
    bodies = {f"v{i}".encode() for i in range(count)}
    out = read_topic(broker_bootstrap, returned, unique("reader"), quick_profile)
    side = read_topic(broker_bootstrap, produced, unique("reader"), quick_profile)
    missing_returned = bodies - {m.value() for m in out}
    side_inputs = set()
    for message in side:
        value = message.value()
        assert isinstance(value, bytes)
        data = json.loads(value)
        side_inputs.add((data["partition"], data["offset"]))
    assert not missing_returned, (
        f"committed inputs without their returned output: {sorted(missing_returned)[:10]}"
    )
    assert not inputs - side_inputs, (
        f"committed inputs without their produced output: {sorted(inputs - side_inputs)[:10]}"
    )
    print(
        f"outputs: {len(out)} returned, {len(side)} produced for {count} inputs (duplicates: at-least-once)"
    )


def test_an_output_the_broker_refuses_fails_the_input_which_is_retried_then_dead_lettered(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
) -> None:
    topic, group = unique("in"), unique("group")
    returned, produced, dlq = unique("returned"), unique("produced"), unique("dlq")
    create_topics(broker_bootstrap, {topic: 1, returned: 1, produced: 1, dlq: 1})
    values = ["v0", "refuse-me", "v2", "v3"]
    end = produce(broker_bootstrap, topic, [Record(value=v, key=f"k{i}") for i, v in enumerate(values)])
    trigger = trigger_config(
        brokers=broker_bootstrap,
        topic=topic,
        group=group,
        profile=quick_profile,
        attributes={"outputTopic": returned, "maxRetries": 1, "deadLetterTopic": dlq},
    )
    config = function_dir(HANDLER, function_config({"t": trigger}, {"PRODUCED": produced}))
    proc = streamworker_process(config)
    proc.wait_for_log(is_message("record dead-lettered", offset=1), 60)
    wait_committed(wait_until, broker_bootstrap, group, topic, end, timeout=60)
    stop_cleanly(proc)

    retried = logs_named(proc, "handler failed; will retry", offset=1)
    assert len(retried) == 1 and retried[0]["error_type"] == "OutputDeliveryError", retried
    assert "Invalid topic" in retried[0]["error"], retried
    failed = logs_named(proc, "output delivery failed", offset=1)
    assert len(failed) == 2 and all(log["output_topic"] == "bad topic!" for log in failed), failed

    [dead] = read_topic(broker_bootstrap, dlq, unique("reader"), quick_profile)
    assert dead.value() == b"refuse-me" and dead.key() == b"k1"
    headers = streamworker_headers(dead)
    assert headers["error.type"] == "OutputDeliveryError", headers
    # The second attempt is refused by librdkafka from the broker's first answer ("Unknown topic").
    assert "Invalid topic" in headers["error.message"] or "Unknown topic" in headers["error.message"]
    assert headers["attempts"] == "2"
    out = read_topic(broker_bootstrap, returned, unique("reader"), quick_profile)
    assert sorted(m.value() or b"" for m in out) == [b"v0", b"v2", b"v3"]


def test_an_input_is_not_committed_until_its_output_topic_takes_the_output(
    dead_letter_broker: tuple[str, Any],  # noqa: F811 - the fixture imported above
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
) -> None:
    """The outputTopic does not exist and may not be created: the inputs stay uncommitted (retried,
    never dropped) until the topic is created, then they are committed with their outputs."""
    bootstrap, _gate = dead_letter_broker
    topic, group = unique("in"), unique("group")
    returned, produced = unique("returned"), unique("produced")
    create_topics(bootstrap, {topic: 1, produced: 1})
    end = produce(bootstrap, topic, [Record(value=f"v{i}", key=f"k{i}") for i in range(3)])
    trigger = trigger_config(
        brokers=bootstrap,
        topic=topic,
        group=group,
        profile=quick_profile,
        attributes={"outputTopic": returned, "maxRetries": 1000, "retryMaxBackoff": "1s"},
    )
    # The gate of ``dead_letter_broker`` stops clients whose id contains "-dlq" from creating topics;
    # this trigger name puts it into the output producer's id (streamworker-<function>-<trigger>-outputs).
    config = function_dir(HANDLER, function_config({"gated-dlq": trigger}, {"PRODUCED": produced}))
    proc = streamworker_process(config)
    wait_until(
        lambda: len(logs_named(proc, "handler failed; will retry", offset=0)) >= 2,
        60,
        message=lambda: f"the missing output topic never failed an attempt\n{proc.output()}",
    )
    assert sum(committed_offsets(bootstrap, group, topic, 1).values()) == 0, "committed without its output"
    retried = logs_named(proc, "handler failed; will retry", offset=0)
    assert all(log["error_type"] == "OutputDeliveryError" for log in retried), retried

    create_topics(bootstrap, {returned: 1})
    wait_committed(wait_until, bootstrap, group, topic, end, timeout=60)
    stop_cleanly(proc)
    out = read_topic(bootstrap, returned, unique("reader"), quick_profile)
    assert {m.value() for m in out} == {b"v0", b"v1", b"v2"}


ASYNC_TASK_HANDLER = """
import asyncio
import os

from streamworker.worker.sdk import QualifiedOffset, Response

TASKS = set()


async def later(context, event):
    await asyncio.sleep(0.02)
    context.platform.produce(os.environ["PRODUCED"], event.body + b"-from-task", key=event.key)
    await context.platform.explicit_ack(QualifiedOffset.from_event(event))


async def handler(context, event):
    await asyncio.sleep(0)
    context.platform.produce(os.environ["PRODUCED"], event.body + b"-from-handler", key=event.key)
    task = asyncio.get_running_loop().create_task(later(context, event))
    TASKS.add(task)
    task.add_done_callback(TASKS.discard)
    response = Response()
    response.ensure_no_ack()
    return response
"""


def test_an_async_handler_and_its_task_produce_for_a_record_acked_explicitly(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
) -> None:
    topic, group, produced = unique("in"), unique("group"), unique("produced")
    create_topics(broker_bootstrap, {topic: 2, produced: 2})
    end = produce(broker_bootstrap, topic, [Record(value=f"v{i}", key=f"k{i}") for i in range(20)])
    trigger = trigger_config(
        brokers=broker_bootstrap,
        topic=topic,
        group=group,
        profile=quick_profile,
        workers=2,
        ack_mode="enable",
    )
    config = function_dir(ASYNC_TASK_HANDLER, function_config({"t": trigger}, {"PRODUCED": produced}))
    proc = streamworker_process(config)
    wait_committed(wait_until, broker_bootstrap, group, topic, end, timeout=60)
    stop_cleanly(proc)
    out = read_topic(broker_bootstrap, produced, unique("reader"), quick_profile)
    expected = {f"v{i}-from-{who}".encode() for i in range(20) for who in ("handler", "task")}
    assert {m.value() for m in out} == expected
    assert not logs_named(proc, "output delivery failed")


def test_a_sigkilled_supervisor_leaves_no_committed_input_without_its_outputs(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    quick_profile: dict[str, str],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
) -> None:
    """The supervisor (and its workers) SIGKILLed mid-run, twice: what it had committed has its
    outputs, and the instance started after the last kill finishes the rest."""
    topic, group = unique("in"), unique("group")
    returned, produced = unique("returned"), unique("produced")
    create_topics(broker_bootstrap, {topic: 2, returned: 2, produced: 2})
    count = 600
    end = produce(
        broker_bootstrap, topic, [Record(value=f"v{i}", key=f"k{i}", partition=i % 2) for i in range(count)]
    )
    trigger = trigger_config(
        brokers=broker_bootstrap,
        topic=topic,
        group=group,
        profile=quick_profile,
        workers=2,
        attributes={"outputTopic": returned},
    )
    config = function_dir(HANDLER, function_config({"t": trigger}, {"PRODUCED": produced, "DELAY": "0.02"}))
    seen = 0
    for _ in range(2):
        proc = streamworker_process(config)
        wait_until(
            lambda seen=seen: sum(committed_offsets(broker_bootstrap, group, topic, 2).values()) > seen,
            90,
            message=lambda proc=proc: f"no progress\n{proc.output()}",
        )
        proc.kill()
        seen = sum(committed_offsets(broker_bootstrap, group, topic, 2).values())
        assert seen < count, "the run ended before the kill; slow the handler down"
        # Every input committed so far has its outputs, although the producer died with the process.
        committed = committed_offsets(broker_bootstrap, group, topic, 2)
        out = {m.value() for m in read_topic(broker_bootstrap, returned, unique("reader"), quick_profile)}
        missing = [
            i for i in range(count) if i // 2 < committed.get(i % 2, 0) and f"v{i}".encode() not in out
        ]
        assert not missing, f"committed without their returned output: {missing[:10]}"
    proc = streamworker_process(config)
    wait_committed(wait_until, broker_bootstrap, group, topic, end, timeout=120)
    stop_cleanly(proc)
    out = {m.value() for m in read_topic(broker_bootstrap, returned, unique("reader"), quick_profile)}
    assert out == {f"v{i}".encode() for i in range(count)}
