"""/live, /ready and /metrics from synthetic runner snapshots: the decisions and the HTTP server."""

from __future__ import annotations

import json
import math
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from streamworker import __version__
from streamworker.observability.health import (
    HealthAddress,
    HealthServer,
    liveness,
    parse_health_address,
    readiness,
)
from streamworker.observability.metrics import DURATION_BUCKETS, MetricsObserver, partition_lag
from streamworker.observability.probe import main as probe_main
from streamworker.observability.probe import probe_url
from streamworker.protocol import summarize_durations
from streamworker.snapshots import PartitionSnapshot, TriggerSnapshot


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def partition(
    number: int, committed: int | None = 10, position: int | None = 12, high: int | None = 15, **kw: Any
) -> PartitionSnapshot:
    fields: dict[str, Any] = {"paused": False, "stopped": False, **kw}
    return PartitionSnapshot("orders", number, committed, position, high, **fields)


def snapshot(now: float = 1000.0, **changes: Any) -> TriggerSnapshot:
    base = TriggerSnapshot(
        trigger="t",
        taken_at=now,
        last_loop_at=now,
        joined=True,
        workers_total=2,
        workers_ready=2,
        inflight=3,
        buffered=7,
        partitions=(partition(0), partition(1, committed=None, position=4, high=9)),
        outcomes={("orders", "success"): 40, ("orders", "error"): 2, ("orders", "retried"): 2},
        rebalances={"assign": 1},
        worker_restarts={"crash": 1},
    )
    return replace(base, **changes)


def samples(observer: MetricsObserver) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = observer.render().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


# --- metrics --------------------------------------------------------------------------------------


def test_metrics_expose_the_latest_snapshot() -> None:
    clock = Clock()
    observer = MetricsObserver("fn", ["t"], clock=clock)
    observer.on_snapshot(snapshot(now=999.5))
    found = samples(observer)
    assert value(found, "streamworker_info", version=__version__, function="fn") == 1
    assert value(found, "streamworker_events_total", trigger="t", topic="orders", result="success") == 40
    assert value(found, "streamworker_events_total", trigger="t", topic="orders", result="retried") == 2
    # Every result is exposed from the start, so rate() works on the first increment.
    assert value(found, "streamworker_events_total", trigger="t", topic="orders", result="dead_lettered") == 0
    assert value(found, "streamworker_events_total", trigger="t", topic="orders", result="skipped") == 0
    assert value(found, "streamworker_rebalances_total", trigger="t", kind="assign") == 1
    assert value(found, "streamworker_rebalances_total", trigger="t", kind="lost") == 0
    assert value(found, "streamworker_worker_restarts_total", trigger="t", reason="crash") == 1
    assert value(found, "streamworker_workers_ready", trigger="t") == 2
    assert value(found, "streamworker_inflight_events", trigger="t") == 3
    assert value(found, "streamworker_buffered_events", trigger="t") == 7
    assert value(found, "streamworker_poll_loop_age_seconds", trigger="t") == pytest.approx(0.5)
    p0 = {"trigger": "t", "topic": "orders", "partition": "0"}
    p1 = {"trigger": "t", "topic": "orders", "partition": "1"}
    assert value(found, "streamworker_consumer_lag", **p0) == 5  # 15 - committed 10
    assert value(found, "streamworker_consumer_lag", **p1) == 5  # 9 - position 4 (nothing committed yet)
    assert value(found, "streamworker_committed_offset", **p0) == 10
    assert ("streamworker_committed_offset", tuple(sorted(p1.items()))) not in found
    assert value(found, "streamworker_partition_stopped", **p0) == 0


def test_metrics_follow_newer_snapshots() -> None:
    observer = MetricsObserver("fn", ["t"])
    observer.on_snapshot(snapshot())
    observer.on_snapshot(
        snapshot(outcomes={("orders", "success"): 41}, partitions=(partition(0, committed=15, position=15),))
    )
    found = samples(observer)
    assert value(found, "streamworker_events_total", trigger="t", topic="orders", result="success") == 41
    assert value(found, "streamworker_consumer_lag", trigger="t", topic="orders", partition="0") == 0
    assert value(found, "streamworker_assigned_partitions", trigger="t") == 1


def test_handler_durations_become_a_histogram() -> None:
    observer = MetricsObserver("fn", ["t"])
    found = samples(observer)  # exposed before any record, with zero counts
    assert value(found, "streamworker_handler_duration_seconds_count", trigger="t") == 0
    observer.on_durations("t", [0.0002, 0.001, 0.003])
    observer.on_durations("t", [120.0])
    found = samples(observer)
    assert value(found, "streamworker_handler_duration_seconds_count", trigger="t") == 4
    assert value(found, "streamworker_handler_duration_seconds_sum", trigger="t") == pytest.approx(120.0042)
    bucket = "streamworker_handler_duration_seconds_bucket"
    assert value(found, bucket, trigger="t", le="0.0005") == 1
    assert value(found, bucket, trigger="t", le="0.001") == 2  # a value equal to a bound is counted in it
    assert value(found, bucket, trigger="t", le="0.005") == 3
    assert value(found, bucket, trigger="t", le=repr(DURATION_BUCKETS[-1])) == 3
    assert value(found, bucket, trigger="t", le="+Inf") == 4


@pytest.mark.parametrize(
    ("committed", "position", "high", "lag"),
    [
        (10, 12, 15, 5),
        (None, 4, 9, 5),
        (10, None, 15, 5),
        (None, None, 9, None),
        (10, 12, None, None),
        (20, 20, 15, 0),
    ],
)
def test_partition_lag(
    committed: int | None, position: int | None, high: int | None, lag: int | None
) -> None:
    assert partition_lag(committed, position, high) == lag


# --- readiness and liveness -----------------------------------------------------------------------


def test_not_ready_until_every_trigger_reports() -> None:
    verdict = readiness(["t", "u"], {"t": snapshot()}, frozenset({"t"}), stopping=False)
    assert not verdict.ok and verdict.reasons == ("trigger u: starting",)


def test_not_ready_while_workers_initialise_or_before_joining() -> None:
    snap = snapshot(joined=False, workers_ready=1)
    verdict = readiness(["t"], {"t": snap}, frozenset(), stopping=False)
    assert verdict.reasons == (
        "trigger t: 1 of 2 workers finished init_context",
        "trigger t: not in its consumer group yet (no assignment received)",
    )
    body = json.loads(verdict.body("ready"))
    assert body["status"] == "not ready" and body["triggers"]["t"]["workers_ready"] == 1


def test_ready_once_joined_and_initialised_and_a_worker_restart_later_does_not_flip_it() -> None:
    observer = MetricsObserver("fn", ["t"])
    observer.on_snapshot(snapshot(workers_ready=1, joined=False))
    observer.on_snapshot(snapshot())
    observer.on_snapshot(snapshot(workers_ready=1))  # a worker is being replaced
    verdict = readiness(observer.triggers, observer.snapshots(), observer.initialised(), observer.stopping)
    assert verdict.ok and json.loads(verdict.body("ready"))["status"] == "ready"


def test_a_stopped_partition_makes_the_process_unready() -> None:
    snap = snapshot(partitions=(partition(0), partition(3, committed=40, position=41, stopped=True)))
    verdict = readiness(["t"], {"t": snap}, frozenset({"t"}), stopping=False)
    assert not verdict.ok
    assert verdict.reasons == ("trigger t: stopped by onError: stop: orders/3 at offset 41",)
    assert json.loads(verdict.body("ready"))["triggers"]["t"]["stopped_partitions"] == ["orders/3"]


def test_not_ready_when_stopping() -> None:
    verdict = readiness(["t"], {"t": snapshot()}, frozenset({"t"}), stopping=True)
    assert verdict.reasons == ("stopping",)


def test_live_while_the_loop_turns() -> None:
    assert liveness(["t"], {"t": snapshot(now=990.0)}, now=1000.0, timeout=30.0, started_at=0.0).ok
    stale = snapshot(now=960.0)
    verdict = liveness(["t"], {"t": stale}, now=1000.0, timeout=30.0, started_at=0.0)
    assert verdict.reasons == ("trigger t: poll loop made no progress for 40.0s (limit 30s)",)
    # A stopping trigger is on its way out: restarting it would only cut the shutdown short.
    assert liveness(["t"], {"t": replace(stale, stopping=True)}, now=1000.0, timeout=30.0, started_at=0.0).ok


def test_a_failed_trigger_is_not_live_even_while_it_stops() -> None:
    failed = snapshot(now=999.0, failed="fatal Kafka client error _FENCED: fenced", stopping=True)
    verdict = liveness(["t"], {"t": failed}, now=1000.0, timeout=30.0, started_at=0.0)
    assert not verdict.ok
    assert verdict.reasons == ("trigger t: failed: fatal Kafka client error _FENCED: fenced",)


def test_a_trigger_without_a_snapshot_is_live_for_the_timeout_after_start() -> None:
    assert liveness(["t"], {}, now=1010.0, timeout=30.0, started_at=1000.0).ok
    assert not liveness(["t"], {}, now=1031.0, timeout=30.0, started_at=1000.0).ok


# --- the HTTP server ------------------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[HealthServer, MetricsObserver, Clock]]:
    clock = Clock()
    observer = MetricsObserver("fn", ["t"], clock=clock)
    server = HealthServer(HealthAddress("127.0.0.1", 0), observer, live_timeout=30.0)
    server.start()
    try:
        yield server, observer, clock
    finally:
        server.stop()


def get(server: HealthServer, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.address.port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def test_http_endpoints(served: tuple[HealthServer, MetricsObserver, Clock]) -> None:
    server, observer, clock = served
    status, content_type, body = get(server, "/ready")
    assert status == 503 and content_type == "application/json"
    assert json.loads(body)["reasons"] == ["trigger t: starting"]
    assert get(server, "/live")[0] == 200

    observer.on_snapshot(snapshot(now=clock.now))
    assert get(server, "/ready")[0] == 200
    assert get(server, "/ready?verbose=1")[0] == 200
    status, content_type, body = get(server, "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    assert b'streamworker_events_total{result="success",topic="orders",trigger="t"} 40.0' in body
    assert b"process_resident_memory_bytes" in body  # the supervisor's own process metrics
    assert get(server, "/ready", method="HEAD")[0:2] == (200, "application/json")
    assert get(server, "/nope")[0] == 404

    clock.now += 31
    status, _, body = get(server, "/live")
    assert status == 503 and "no progress" in json.loads(body)["reasons"][0]

    observer.mark_stopping()
    assert json.loads(get(server, "/ready")[2])["reasons"][0] == "stopping"


def test_a_busy_port_fails_at_construction() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="in use"):
            HealthServer(HealthAddress("127.0.0.1", port), MetricsObserver("fn", ["t"]), 30.0)


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        server = HealthServer(HealthAddress("::1", 0), MetricsObserver("fn", ["t"]), 30.0)
    except OSError as exc:
        pytest.skip(f"IPv6 loopback unavailable: {exc}")
    server.start()
    try:
        with urllib.request.urlopen(f"http://[::1]:{server.address.port}/live", timeout=5) as response:
            assert response.status == 200
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("0.0.0.0:8082", HealthAddress("0.0.0.0", 8082)),
        ("127.0.0.1:0", HealthAddress("127.0.0.1", 0)),
        (":9000", HealthAddress("0.0.0.0", 9000)),
        ("[::]:8082", HealthAddress("::", 8082)),
        ("off", None),
        (" OFF ", None),
    ],
)
def test_parse_health_address(text: str, address: HealthAddress | None) -> None:
    assert parse_health_address(text) == address


@pytest.mark.parametrize("text", ["8082", "host:", "host:http", "h:70000", ""])
def test_bad_health_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_health_address(text)


def test_probe_answers_like_the_server(
    served: tuple[HealthServer, MetricsObserver, Clock],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, observer, clock = served
    monkeypatch.setenv("STREAMWORKER_HEALTH_ADDR", f"0.0.0.0:{server.address.port}")
    assert probe_main(["/live"]) == 0
    assert probe_main([]) == 1  # /ready: nothing reported yet
    assert "503" in capsys.readouterr().err
    observer.on_snapshot(snapshot(now=clock.now))
    assert probe_main(["/ready"]) == 0
    monkeypatch.setenv("STREAMWORKER_HEALTH_ADDR", "off")
    assert probe_main([]) == 1


def test_probe_url() -> None:
    assert probe_url("0.0.0.0:8082", "/ready") == "http://127.0.0.1:8082/ready"
    assert probe_url("[::]:8082", "live") == "http://[::1]:8082/live"
    assert probe_url("10.1.2.3:9000", "/ready") == "http://10.1.2.3:9000/ready"


def test_run_summaries_from_workers_land_in_the_same_histogram() -> None:
    # A worker counts a run's durations into the buckets; the supervisor only adds the counts.
    observer = MetricsObserver("fn", ["t"])
    count, total, counts = summarize_durations([0.0002, 0.0005, 0.003, 120.0])
    assert (count, counts[0], counts[3], counts[-1]) == (4, 2, 1, 1), "equal to a bound is 'le' it"
    observer.on_duration_counts("t", counts, total)
    observer.on_durations("t", [0.0002])
    found = samples(observer)
    bucket = "streamworker_handler_duration_seconds_bucket"
    assert value(found, bucket, trigger="t", le=repr(DURATION_BUCKETS[0])) == 3
    assert value(found, bucket, trigger="t", le="+Inf") == 5
    assert value(found, "streamworker_handler_duration_seconds_sum", trigger="t") == pytest.approx(
        total + 0.0002
    )


def _bucket_counts_one_by_one(durations: list[float]) -> list[int]:
    # The definition: each duration in the first bucket whose bound is >= it, else +Inf.
    counts = [0] * (len(DURATION_BUCKETS) + 1)
    for duration in durations:
        counts[next((i for i, bound in enumerate(DURATION_BUCKETS) if duration <= bound), -1)] += 1
    return counts


@pytest.mark.parametrize(
    "durations",
    [
        [],
        [2e-6] * 1000,  # a no-op handler's run: everything in the first bucket
        [DURATION_BUCKETS[0]] * 3,  # on the first bound
        [*DURATION_BUCKETS, 61.0, 0.0],  # on every bound, past the last
        [random.Random(seed).lognormvariate(-6, 3) for seed in range(2000)],  # spread over all
        [5.0, 1e-6, 0.003, 0.001, 0.0010001, 120.0],  # unordered
    ],
)
def test_a_runs_durations_are_counted_into_the_buckets_they_belong_to(durations: list[float]) -> None:
    count, total, counts = summarize_durations(durations)
    assert count == len(durations)
    assert total == pytest.approx(math.fsum(durations))
    assert counts == _bucket_counts_one_by_one(durations)


def test_metrics_speak_openmetrics_to_scrapers_that_ask(
    served: tuple[HealthServer, MetricsObserver, Clock],
) -> None:
    server, observer, clock = served
    observer.on_snapshot(snapshot(now=clock.now))
    url = f"http://127.0.0.1:{server.address.port}/metrics"
    # What Prometheus sends: OpenMetrics first, the classic format as a fallback.
    accept = (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
        "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=5) as response:
        content_type, body = response.headers["Content-Type"], response.read().decode()
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith("# EOF\n")
    families = {family.name: family for family in openmetrics_families(body)}
    # OpenMetrics names a counter's family without _total; its sample keeps it.
    events = families["streamworker_events"]
    assert events.type == "counter"
    assert any(s.name == "streamworker_events_total" and s.value == 40 for s in events.samples)

    plain = urllib.request.Request(url, headers={"Accept": "text/plain"})
    with urllib.request.urlopen(plain, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert not response.read().decode().endswith("# EOF\n")


def _threads_of_this_process() -> int:
    return threading.active_count()


def test_a_burst_of_connections_waits_in_the_backlog_instead_of_being_dropped() -> None:
    # A full listen backlog makes the kernel drop new SYNs; the client retries only after 1 s, the
    # default timeout of a Kubernetes probe. Nothing accepts here (the server is not started), so
    # every connection of the burst must fit in the backlog: on a drop, connect() runs into its timeout.
    server = HealthServer(HealthAddress("127.0.0.1", 0), MetricsObserver("fn", ["t"]), live_timeout=30.0)
    waiting: list[socket.socket] = []
    try:
        for _ in range(300):
            waiting.append(socket.create_connection(("127.0.0.1", server.address.port), timeout=5))
        assert len(waiting) == 300
    finally:
        for sock in waiting:
            sock.close()
        server.stop()


def test_idle_connections_are_capped_while_live_answers_before_any_of_them_times_out() -> None:
    observer = MetricsObserver("fn", ["t"])
    idle_timeout = 60.0
    server = HealthServer(
        HealthAddress("127.0.0.1", 0),
        observer,
        live_timeout=30.0,
        idle_timeout=idle_timeout,
        max_connections=8,
    )
    server.start()
    before = _threads_of_this_process()
    idle: list[socket.socket] = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", server.address.port), timeout=5))
        started = time.monotonic()
        status, _, _ = get(server, "/live")
        assert status == 200
        # Not queued behind the idle crowd until it times out: eviction made room for the probe.
        assert time.monotonic() - started < idle_timeout / 4
        # One thread per open connection at most, and at most max_connections of them.
        assert _threads_of_this_process() <= before + 2 * 8  # (evicted ones may still be ending)
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_idle_connections_time_out_and_their_threads_end() -> None:
    server = HealthServer(
        HealthAddress("127.0.0.1", 0), MetricsObserver("fn", ["t"]), live_timeout=30.0, idle_timeout=2.0
    )
    server.start()
    before = _threads_of_this_process()
    idle: list[socket.socket] = []
    try:
        for _ in range(4):
            idle.append(socket.create_connection(("127.0.0.1", server.address.port), timeout=5))
        deadline = time.monotonic() + 10
        while _threads_of_this_process() < before + 4 and time.monotonic() < deadline:
            time.sleep(0.01)  # a poll interval while the server takes the connections
        assert _threads_of_this_process() == before + 4
        # Nobody sends a request: after idle_timeout the server hangs up and the threads go away.
        while _threads_of_this_process() > before and time.monotonic() < deadline:
            time.sleep(0.05)  # a poll interval while waiting for the threads to end
        assert _threads_of_this_process() == before
        assert all(sock.recv(1) == b"" for sock in idle)  # closed by the server, not by us
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_the_age_of_the_oldest_unfinished_record_is_a_partition_metric() -> None:
    observer = MetricsObserver("fn", ["t"])
    observer.on_snapshot(snapshot(partitions=(partition(0, oldest_unfinished_age=7.5), partition(1))))
    found = samples(observer)
    labels = (("partition", "0"), ("topic", "orders"), ("trigger", "t"))
    assert found[("streamworker_oldest_unfinished_age_seconds", labels)] == 7.5
    labels = (("partition", "1"), ("topic", "orders"), ("trigger", "t"))
    assert found[("streamworker_oldest_unfinished_age_seconds", labels)] == 0.0
