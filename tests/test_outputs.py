"""Outputs: encoding, the supervisor's bookkeeping (an input is done only when its outputs are),
the worker's OUTPUTS frames, the harness and the metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError
from test_worker_process import HANDLERS, WorkerHarness, statuses, wire_event, wire_run

from streamworker.config.model import AllocationMode, ExplicitAckMode, OnError
from streamworker.observability.metrics import MetricsObserver
from streamworker.protocol import Msg, Status, WorkerInit
from streamworker.records import F_ATTEMPT, F_OFFSET, F_RETRY, F_SEQ, R_SEQ, new_record
from streamworker.snapshots import TriggerSnapshot
from streamworker.supervisor.dispatch import Dispatcher, DispatchSettings, Record, Run
from streamworker.supervisor.failure_policy import FailurePolicy
from streamworker.supervisor.outputs import (
    OutputDelivery,
    OutputSink,
    OutputStats,
    PendingOutputs,
    _note_fatal,
    output_size,
)
from streamworker.testing import HandlerHarness, Output
from streamworker.worker.outputs import OutputError, make_output, return_value_output
from streamworker.worker.process import WorkerLoop
from streamworker.worker.sdk import Event, Platform, Response

T = "orders"


# -- encoding (worker side) ---------------------------------------------------------------------------


def test_values_keys_and_headers_are_encoded_as_documented() -> None:
    assert make_output("o", b"raw") == ["o", None, b"raw", None, None]
    assert make_output("o", "é", key="k")[1:3] == [b"k", "é".encode()]
    assert json.loads(make_output("o", {"a": [1, "é"]})[2]) == {"a": [1, "é"]}
    assert make_output("o", [1, 2])[2] == b"[1,2]"
    headers = make_output("o", b"", headers={"a": "x", "b": b"y", "c": None})[3]
    assert headers == [["a", b"x"], ["b", b"y"], ["c", None]]
    assert make_output("o", b"", headers=[("d", "1"), ("d", "2")])[3] == [["d", b"1"], ["d", b"2"]]
    assert make_output("o", b"", partition=2)[4] == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"topic": "o", "value": 1.5}, "output value must be bytes, str, dict or list, got float"),
        ({"topic": "o", "value": {"a": object()}}, "not valid JSON"),
        ({"topic": "o", "value": b"", "key": 7}, "output key must be bytes, str or None, got int"),
        ({"topic": "o", "value": b"", "headers": {"h": 1}}, "output header 'h' must be bytes, str or None"),
        ({"topic": "", "value": b""}, "output topic must be a non-empty str"),
        ({"topic": "o", "value": b"", "partition": -1}, "output partition must be a non-negative int"),
    ],
)
def test_values_that_cannot_be_produced_are_refused_clearly(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(OutputError, match=message):
        make_output(**kwargs)


def test_return_value_output_takes_the_inputs_key_and_optionally_its_headers() -> None:
    wire = Event.create(b"in", key=b"key-1", headers=[("trace", b"t1")])._w
    assert return_value_output(b"out", wire, "o", "none") == ["o", b"key-1", b"out", None, None]
    assert return_value_output("out", wire, "o", "copy") == ["o", b"key-1", b"out", [["trace", b"t1"]], None]
    assert return_value_output(Response(body={"a": 1}), wire, "o", "none") == [
        "o",
        b"key-1",
        b'{"a":1}',
        None,
        None,
    ]
    assert return_value_output(None, wire, "o", "none") is None
    assert return_value_output(Response(), wire, "o", "none") is None, "a Response without a body"
    with pytest.raises(OutputError, match="got int; it cannot be produced to outputTopic 'o'"):
        return_value_output(5, wire, "o", "none")


def test_produce_outside_a_record_is_refused_and_inside_one_is_recorded() -> None:
    platform = Platform()
    with pytest.raises(RuntimeError, match="needs a record"):
        platform.produce("o", b"x")
    platform.set_current_event(Event.create(b"in"))
    platform.produce("o", "x", key="k")
    assert platform.outputs == [["o", b"k", b"x", None, None]]


# -- bookkeeping (supervisor side) --------------------------------------------------------------------


def rec(partition: int, offset: int, value: bytes = b"v", key: bytes | None = None) -> Record:
    return new_record(T, partition, offset, key, value, None, None)


def make(
    mode: AllocationMode = AllocationMode.POOL,
    max_retries: int = 1000,
    action: OnError = OnError.STOP,
    **kw: Any,
) -> Dispatcher:
    policy = FailurePolicy(max_retries=max_retries, on_error=action, delay=lambda n: 0.5 * n)
    d = Dispatcher(DispatchSettings(mode=mode, num_workers=1, **kw), policy)
    d.worker_ready(0)
    return d


def ok(events: list[Record]) -> list[list[Any]]:
    return [[e[F_SEQ], Status.OK, 0.001, None, None] for e in events]


OUT = make_output("out", b"0123456789", key=b"k")  # 11 bytes
SIZE = output_size(OUT)


def position(d: Dispatcher) -> int | None:
    return d.commit_positions().get((T, 0))


def started(d: Dispatcher, count: int) -> list[Record]:
    d.assign([(T, 0)])
    d.add([rec(0, i) for i in range(count)])
    return d.take_dispatches(0.0)[0]


def test_an_input_with_outputs_in_flight_is_not_committable_until_they_are_delivered() -> None:
    d = make()
    batch = started(d, 3)
    first = d.outputs_sent((T, 0), 0, [OUT, OUT])
    assert first is not None
    d.complete(0, ok(batch), 0.0)
    assert position(d) == 0, "offset 0 ran fine but its outputs are in flight: nothing committable"
    d.output_delivered(first, SIZE, None, 0.1)
    assert position(d) == 0, "one of its two outputs is still in flight"
    d.output_delivered(first, SIZE, None, 0.2)
    assert position(d) == 3
    assert d.outcomes[(T, "success")] == 3


def test_a_failed_delivery_is_a_failed_attempt_retried_then_dead_lettered_with_the_output_error() -> None:
    d = make(max_retries=1, action=OnError.DEADLETTER)
    batch = started(d, 2)
    pending = d.outputs_sent((T, 0), 0, [OUT])
    assert pending is not None
    d.complete(0, ok(batch), 0.0)
    d.output_delivered(pending, SIZE, "MSG_SIZE_TOO_LARGE: too big", 0.0)
    [failure] = d.take_output_failures()
    assert (failure.action, failure.error_type) == ("retry", "OutputDeliveryError")
    assert failure.error_message == "MSG_SIZE_TOO_LARGE: too big" and failure.record[F_OFFSET] == 0
    assert position(d) == 0, "the failed input is not done, so nothing after it is committed either"
    assert d.take_dispatches(0.2) == {}, "the retry waits out its backoff"
    [retry] = d.take_dispatches(0.6)[0]
    assert (retry[F_OFFSET], retry[F_ATTEMPT], retry[F_RETRY]) == (0, 2, True)

    again = d.outputs_sent((T, 0), 0, [OUT])
    assert again is not None and again is not pending
    d.complete(0, ok([retry]), 1.0)
    d.output_delivered(again, SIZE, "MSG_SIZE_TOO_LARGE: too big", 1.0)
    [final] = d.take_output_failures()
    assert final.action == "deadletter"
    [(record, error_type, message)] = d.take_dead_letters()
    assert (record[F_OFFSET], error_type) == (0, "OutputDeliveryError")
    assert message == "MSG_SIZE_TOO_LARGE: too big"
    assert d.dead_lettered(record)
    assert position(d) == 2


def test_reports_before_the_result_decide_when_it_arrives() -> None:
    d = make()
    batch = started(d, 2)
    delivered = d.outputs_sent((T, 0), 0, [OUT])
    failed = d.outputs_sent((T, 0), 1, [OUT])
    assert delivered is not None and failed is not None
    d.output_delivered(delivered, SIZE, None, 0.0)
    d.output_delivered(failed, SIZE, "UNKNOWN_TOPIC_OR_PART: gone", 0.0)
    assert d.take_output_failures() == []
    d.complete(0, ok(batch), 0.0)
    assert position(d) == 1
    [failure] = d.take_output_failures()
    assert (failure.record[F_OFFSET], failure.action) == (1, "retry")


def test_outputs_of_a_failed_handler_call_do_not_hide_the_handler_error() -> None:
    d = make()
    batch = started(d, 1)
    pending = d.outputs_sent((T, 0), 0, [OUT])
    assert pending is not None
    [failure] = d.complete(0, [[batch[0][F_SEQ], Status.ERROR, 0.0, "ValueError", "boom"]], 0.0)
    assert failure.error_type == "ValueError"
    d.output_delivered(pending, SIZE, None, 0.1)
    assert position(d) == 0 and d.take_output_failures() == []


def test_an_acked_record_whose_task_produced_waits_for_those_outputs() -> None:
    d = make(ack_mode=ExplicitAckMode.ENABLE)
    batch = started(d, 1)
    d.complete(0, [[batch[0][F_SEQ], Status.NO_ACK, 0.0, None, None]], 0.0)
    pending = d.outputs_sent((T, 0), 0, [OUT])  # a task of the open record produced
    assert pending is not None
    assert d.ack(T, 0, 0)
    assert position(d) == 0, "acked, but its output is in flight"
    d.output_delivered(pending, SIZE, None, 0.1)
    assert position(d) == 1


def test_outputs_in_flight_count_against_the_buffer_and_pause_the_partition() -> None:
    d = make(max_buffered_bytes=100)
    batch = started(d, 1)
    big = make_output("out", b"x" * 150)
    pending = d.outputs_sent((T, 0), 0, [big])
    assert pending is not None
    d.complete(0, ok(batch), 0.0)
    assert d.flow_control() == ([(T, 0)], [])
    d.output_delivered(pending, output_size(big), None, 0.1)
    assert d.flow_control() == ([], [((T, 0), None)])
    assert position(d) == 1


def test_a_run_commits_up_to_its_first_record_with_outputs_in_flight() -> None:
    d = make()
    d.assign([(T, 0)])
    run = Run(T, 0, [0, 1, 2, 3], [None] * 4, [b"a"] * 4, [None] * 4, [-1] * 4)
    d.add([run])
    [wire] = d.take_dispatches(0.0)[0]
    pending = d.outputs_sent((T, 0), 2, [OUT])
    assert pending is not None
    d.complete(0, [[wire[R_SEQ], Status.OK, 0.0, None, None, [4, 0.01, [4] + [0] * 16]]], 0.0)
    assert position(d) == 2
    assert d.buffered_total() == 1
    d.output_delivered(pending, SIZE, None, 0.1)
    assert position(d) == 4 and d.buffered_total() == 0


def test_a_key_lane_dropped_while_its_record_waited_is_made_again_for_the_retry() -> None:
    d = make(AllocationMode.KEY)
    d.assign([(T, 0)])
    d.add([rec(0, 0, key=b"a")])
    batch = d.take_dispatches(0.0)[0]
    pending = d.outputs_sent((T, 0), 0, [OUT])
    assert pending is not None
    d.complete(0, ok(batch), 0.0)
    d.output_delivered(pending, SIZE, "TIMED_OUT: no broker", 0.0)
    [failure] = d.take_output_failures()
    assert failure.action == "retry"
    [retry] = d.take_dispatches(1.0)[0]
    assert (retry[F_OFFSET], retry[F_ATTEMPT]) == (0, 2)


def test_reports_for_a_revoked_partition_are_ignored() -> None:
    d = make()
    batch = started(d, 1)
    pending = d.outputs_sent((T, 0), 0, [OUT])
    assert pending is not None
    d.complete(0, ok(batch), 0.0)
    d.forget([(T, 0)])
    d.assign([(T, 0)])
    d.output_delivered(pending, SIZE, "TIMED_OUT: late", 0.0)
    assert d.take_output_failures() == [] and d.buffered_total() == 0
    assert d.outputs_sent((T, 5), 0, [OUT]) is None, "not ours: nothing waits"


def test_pending_outputs_settle_when_the_last_report_arrives_and_keep_the_first_error() -> None:
    pending = PendingOutputs(None, 7)
    assert pending.sent([OUT, OUT]) == 2 * SIZE
    assert not pending.delivered(SIZE, "first")
    assert pending.delivered(SIZE, "second")
    assert (pending.error, pending.in_flight, pending.bytes) == ("first", 0, 0)


def test_a_produce_refused_at_once_comes_back_as_a_failed_delivery() -> None:
    # No broker is contacted: librdkafka refuses a record above message.max.bytes locally.
    sink = OutputSink({"bootstrap.servers": "127.0.0.1:1", "message.max.bytes": 1000})
    pending = PendingOutputs(None, 4)
    try:
        sink.send(pending, [make_output("o", b"x" * 5000)])
        [report] = sink.poll()
    finally:
        sink.close(0)
    assert report.pending is pending and report.topic == "o" and report.size == 5000
    assert report.error is not None and "MSG_SIZE_TOO_LARGE" in report.error
    assert sink.in_flight == 0


def test_a_producer_that_failed_fatally_is_replaced_and_what_it_held_is_reported_failed() -> None:
    replaced: list[str] = []
    # No broker at this address: the output waits in the producer's queue.
    sink = OutputSink({"bootstrap.servers": "127.0.0.1:1"}, on_replaced=replaced.append)
    try:
        pending = PendingOutputs(None, 0)
        sink.send(pending, [OUT])
        assert sink.poll() == [] and sink.in_flight == 1
        _note_fatal(sink._fatal, KafkaError(KafkaError.PRODUCER_FENCED, "fenced", fatal=True))
        [report] = sink.poll()
        assert report.pending is pending and report.error is not None and "PURGE" in report.error
        assert (sink.in_flight, sink.replaced) == (0, 1) and replaced == ["PRODUCER_FENCED: fenced"]
        sink.send(pending, [OUT])  # the new producer takes outputs
        assert sink.in_flight == 1 and sink.poll() == []
    finally:
        sink.close(0)


# -- the worker: OUTPUTS frames -----------------------------------------------------------------------


def start(
    harness: WorkerHarness,
    output_topic: str | None = None,
    headers: str = "none",
    handler: str = "outputs_app:handler",
    ack_mode: str = "enable",
) -> None:
    init = WorkerInit(
        handler=handler,
        code_dir=str(HANDLERS),
        worker_id=1,
        trigger_name="t",
        trigger_kind="kafka-cluster",
        function_name="fn",
        decode_strings=True,
        output_topic=output_topic,
        output_headers=headers,
        ack_mode=ack_mode,
    )
    harness.send([Msg.INIT, init.to_wire()])
    kind, payload = harness.next_message()
    assert kind == Msg.READY, payload


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[WorkerHarness]:
    process = WorkerHarness(tmp_path)
    yield process
    process.close()


def frames_until_results(harness: WorkerHarness, count: int) -> list[tuple[int, Any]]:
    """Frames up to and including the one that brings the ``count``-th final result (a run's
    progress reports do not count)."""
    frames: list[tuple[int, Any]] = []
    seen = 0
    while seen < count:
        kind, payload = harness.next_message()
        frames.append((kind, payload))
        if kind == Msg.RESULTS:
            seen += sum(1 for result in payload if result[1] != Status.PROGRESS)
    return frames


def test_produced_outputs_travel_before_the_result_and_a_failed_call_sends_none(
    worker: WorkerHarness,
) -> None:
    start(worker)
    worker.events(
        wire_event(0, b"produce", partition=2, offset=40),
        wire_event(1, b"produce-then-fail", lane=1, offset=41),
        wire_event(2, b"bad-value", lane=2, offset=42),
    )
    frames = frames_until_results(worker, 3)
    kinds = [kind for kind, _ in frames]
    assert kinds.index(Msg.OUTPUTS) < kinds.index(Msg.RESULTS)
    [outputs] = [payload for kind, payload in frames if kind == Msg.OUTPUTS]
    assert outputs == [
        [
            "orders",
            2,
            40,
            [["out-a", b"k1", b'{"n":1}', [["h", b"v"]], None], ["out-b", None, b"two", None, 3]],
        ]
    ]
    results = [result for kind, payload in frames if kind == Msg.RESULTS for result in payload]
    assert statuses(results) == [(0, Status.OK), (1, Status.ERROR), (2, Status.ERROR)]
    assert results[2][3] == "OutputError" and "got float" in results[2][4]


def test_return_values_go_to_the_output_topic_with_the_inputs_key_and_headers(worker: WorkerHarness) -> None:
    start(worker, output_topic="enriched", headers="copy")
    worker.events(
        wire_event(0, b"echo-me", key=b"user-1", headers=[["trace", b"t"]], offset=9),
        wire_event(1, b"none", lane=1, offset=10),
        wire_event(2, b"return-int", lane=2, offset=11),
        wire_run(3, [b"r0", b"none", b"response"], lane=3, partition=1, first_offset=100),
    )
    frames = frames_until_results(worker, 4)
    outputs = [entry for kind, payload in frames if kind == Msg.OUTPUTS for entry in payload]
    assert outputs == [
        ["orders", 0, 9, [["enriched", b"user-1", b"echo-me", [["trace", b"t"]], None]]],
        ["orders", 1, 100, [["enriched", b"k0", b"r0", None, None]]],
        ["orders", 1, 102, [["enriched", b"k2", b'{"ok":true}', None, None]]],
    ]
    results = [result for kind, payload in frames if kind == Msg.RESULTS for result in payload]
    bad = next(result for result in results if result[0] == 2)
    assert bad[1] == Status.ERROR and "got int; it cannot be produced to outputTopic 'enriched'" in bad[4]


@pytest.mark.parametrize(
    ("ack_mode", "body"), [("enable", b"task-then-ack"), ("explicitOnly", b"task-returns-ok")]
)
def test_a_task_of_an_open_record_produces_before_its_explicit_ack(
    worker: WorkerHarness, ack_mode: str, body: bytes
) -> None:
    start(worker, ack_mode=ack_mode)
    worker.events(wire_event(0, body, key=b"k", offset=5))
    frames: list[tuple[int, Any]] = []
    while not any(kind == Msg.ACKS for kind, _ in frames):
        kind, payload = worker.next_message()
        frames.append((kind, payload))
    kinds = [kind for kind, _ in frames]
    assert kinds.index(Msg.OUTPUTS) < kinds.index(Msg.ACKS)
    [outputs] = [payload for kind, payload in frames if kind == Msg.OUTPUTS]
    assert outputs == [["orders", 0, 5, [["late", b"k", b"from-task", None, None]]]]


def test_an_async_handler_produces_and_returns_outputs(worker: WorkerHarness) -> None:
    start(worker, output_topic="enriched", handler="outputs_app:async_handler")
    worker.events(wire_event(0, b"a", key=b"k", offset=3))
    frames = frames_until_results(worker, 1)
    [outputs] = [payload for kind, payload in frames if kind == Msg.OUTPUTS]
    assert outputs == [
        [
            "orders",
            0,
            3,
            [["out-async", b"k", b"a", None, None], ["enriched", b"k", b'{"echo":"a"}', None, None]],
        ]
    ]


def test_outputs_for_a_record_that_is_done_are_refused() -> None:
    worker = WorkerLoop(-1, -1)
    event = Event.create(b"x", topic="orders", partition=1, offset=8)
    with pytest.raises(RuntimeError, match="record orders/1/8 is done"):
        worker._on_output(event, make_output("o", b"late"))
    worker._open.add(("orders", 1, 8))  # returned no-ack, not acked yet: still open
    worker._on_output(event, make_output("o", b"late"))
    assert list(worker._outputs) == [["orders", 1, 8, [["o", None, b"late", None, None]]]]
    worker._queue_ack("orders", 1, 8)
    with pytest.raises(RuntimeError, match="is done"):
        worker._on_output(event, make_output("o", b"later"))


# -- the harness and the metrics ----------------------------------------------------------------------


def test_harness_records_outputs(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text((HANDLERS / "outputs_app.py").read_text())
    (tmp_path / "function.yaml").write_text(
        "metadata: {name: fn}\n"
        "spec:\n"
        "  handler: main:handler\n"
        "  triggers:\n"
        "    k:\n"
        "      kind: kafka-cluster\n"
        "      attributes: {brokers: [b:9092], topics: [in], consumerGroup: g, outputTopic: enriched}\n"
    )
    with HandlerHarness(tmp_path / "function.yaml") as harness:
        assert harness.call(b"produce") is None
        assert harness.call(b"echo", key=b"user") == b"echo"
        with pytest.raises(ValueError, match="failed after producing"):
            harness.call(b"produce-then-fail")
        assert harness.outputs == [
            Output("out-a", b'{"n":1}', b"k1", [("h", b"v")], None, "in/0/0"),
            Output("out-b", b"two", None, [], 3, "in/0/0"),
            Output("enriched", b"echo", b"user", [], None, "in/0/1"),
        ]


def test_output_metrics_are_exposed() -> None:
    stats = OutputStats()
    pending = PendingOutputs(None, 0)
    delivered = OutputDelivery(pending, "out", 3, None, 0.002)
    stats.record([delivered, OutputDelivery(pending, "out", 3, "x", 0.3)])
    observer = MetricsObserver(triggers=("t",), function="fn")
    snapshot = TriggerSnapshot(
        trigger="t",
        taken_at=0.0,
        last_loop_at=0.0,
        joined=True,
        workers_total=1,
        workers_ready=1,
        inflight=0,
        buffered=0,
        outputs=stats.snapshot().counts,
        output_latency=(tuple(stats.latency_counts), stats.latency_total),
    )
    observer.on_snapshot(snapshot)
    text = observer.render().decode()
    assert 'streamworker_outputs_total{result="delivered",topic="out",trigger="t"} 1.0' in text
    assert 'streamworker_outputs_total{result="failed",topic="out",trigger="t"} 1.0' in text
    assert 'streamworker_output_delivery_seconds_bucket{le="0.0025",trigger="t"} 1.0' in text
    assert 'streamworker_output_delivery_seconds_count{trigger="t"} 2.0' in text
