"""Repeated client errors: the first of each kind, then one summary per interval (pure, fake clock)."""

from __future__ import annotations

from typing import Any

from streamworker.observability.ratelimit import RepeatCounter, RepeatLimiter, repeat_key

CONNECT = (
    "127.0.0.1:{port}/bootstrap: Connect to ipv4#127.0.0.1:{port} failed: Connection refused "
    "(after {ms}ms in state CONNECT)"
)
LOG_LINE = "FAIL [streamworker-fn-t#consumer-2] [thrd:127.0.0.1:{port}/bootstrap]: " + CONNECT


class RecordingLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, message: str, **fields: Any) -> None:
        self.lines.append((message, fields))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_log_line_and_the_error_callback_of_one_failure_are_one_kind() -> None:
    assert repeat_key(LOG_LINE.format(port=1, ms=0)) == repeat_key(CONNECT.format(port=1, ms=3))
    assert repeat_key(CONNECT.format(port=1, ms=0)) != repeat_key("1/1 brokers are down")


def test_first_of_a_kind_is_written_then_counted_then_summarised_per_interval() -> None:
    counter = RepeatCounter(interval=10.0)
    assert counter.offer("a 1", 0.0) is True
    assert [counter.offer(f"a {n}", 0.5 * n) for n in range(2, 8)] == [False] * 6
    assert counter.offer("b", 1.0) is True  # another kind is news
    assert counter.due(9.9) == []
    (summary,) = [s for s in counter.due(10.0) if s.key == repeat_key("a 1")]
    assert (summary.suppressed, summary.example, summary.seconds) == (6, "a 7", 10.0)
    # The outage goes on: still no full line, one summary per interval.
    assert counter.offer("a 8", 12.0) is False
    assert [s.suppressed for s in counter.due(20.0)] == [1]
    # Quiet for a whole interval: the next one is written in full again.
    assert counter.due(30.0) == []
    assert counter.offer("a 9", 31.0) is True


def test_limiter_writes_summaries_and_never_holds_back_fatal_errors() -> None:
    log, clock = RecordingLog(), Clock()
    limiter = RepeatLimiter(log, interval=10.0, clock=clock)
    for n in range(50):  # what one second of an outage looks like: both sources, every 20 ms
        clock.now = 100.0 + n * 0.02
        limiter.warning("librdkafka", detail=LOG_LINE.format(port=9092, ms=n), level_name="error")
        limiter.warning("kafka client error", error=CONNECT.format(port=9092, ms=n), code="_TRANSPORT")
    limiter.warning("kafka client error", error="fenced", code="_FENCED", fatal=True)
    limiter.warning("kafka client error", error="fenced", code="_FENCED", fatal=True)
    # librdkafka's FAIL line is the error callback's failure again: the callback's line (with the
    # error code) is the one written; then nothing until the summary. Fatal errors always show.
    assert log.lines == [
        ("kafka client error", {"error": CONNECT.format(port=9092, ms=0), "code": "_TRANSPORT"}),
        ("kafka client error", {"error": "fenced", "code": "_FENCED", "fatal": True}),
        ("kafka client error", {"error": "fenced", "code": "_FENCED", "fatal": True}),
    ]
    clock.now = 110.0
    limiter.flush()
    message, fields = log.lines[-1]
    assert message == "kafka client messages repeated"
    assert fields["repeated"] == 98 and fields["last"] == CONNECT.format(port=9092, ms=49)


def test_other_librdkafka_log_lines_are_written_and_limited_like_errors() -> None:
    log, clock = RecordingLog(), Clock()
    limiter = RepeatLimiter(log, interval=10.0, clock=clock)
    line = "REQTMOUT [streamworker-fn-t#consumer-2] [thrd:b:9092/1]: b:9092/1: Timed out 1 in-flight request"
    for _ in range(3):
        limiter.warning("librdkafka", detail=line, level_name="warning")
    limiter.warning("librdkafka", detail=LOG_LINE.format(port=1, ms=0), level_name="error")
    assert log.lines == [("librdkafka", {"detail": line, "level_name": "warning"})]


def test_interval_from_the_environment_and_zero_turns_it_off() -> None:
    log = RecordingLog()
    assert RepeatLimiter.from_environ(log, {"STREAMWORKER_LOG_REPEAT_INTERVAL": "2.5"}).interval == 2.5
    assert RepeatLimiter.from_environ(log, {}).interval == 10.0
    limiter = RepeatLimiter.from_environ(log, {"STREAMWORKER_LOG_REPEAT_INTERVAL": "0"})
    limiter.warning("kafka client error", error="x")
    limiter.warning("kafka client error", error="x")
    assert len(log.lines) == 2
