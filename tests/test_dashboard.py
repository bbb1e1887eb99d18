"""deploy/grafana's dashboard queries only metrics that /metrics really serves, with their labels.

The names and labels come from the real exposition: a ``MetricsObserver`` (what the supervisor serves
on /metrics) fed a snapshot with every kind of data, rendered and parsed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from streamworker.observability.metrics import MetricsObserver
from streamworker.snapshots import PartitionSnapshot, TriggerSnapshot

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "streamworker-dashboard.json"
# Labels Prometheus adds to every scraped series (target labels), and the histogram bucket label.
SCRAPE_LABELS = {"instance", "job"}

METRIC = re.compile(r"\b(streamworker_[a-z0-9_]+)\b")
SELECTOR = re.compile(r"\b(streamworker_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
BY = re.compile(r"\bby\s*\(([^)]*)\)")


def served_metrics() -> dict[str, set[str]]:
    """Every sample name /metrics serves, with its label names."""
    observer = MetricsObserver("fn", ["t"], clock=lambda: 1000.0)
    partition = PartitionSnapshot("orders", 0, 10, 12, 15, paused=True, stopped=False)
    observer.on_snapshot(
        TriggerSnapshot(
            trigger="t",
            taken_at=1000.0,
            last_loop_at=1000.0,
            joined=True,
            workers_total=2,
            workers_ready=2,
            inflight=1,
            buffered=3,
            partitions=(partition,),
            outcomes={("orders", "success"): 5},
            rebalances={"assign": 1},
            worker_restarts={"crash": 1},
        )
    )
    observer.on_durations("t", [0.01, 0.2])
    served: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(observer.render().decode()):
        for sample in family.samples:
            served.setdefault(sample.name, set()).update(sample.labels)
    return served


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every templating query."""
    found = [
        (f"panel {panel['title']!r}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found.append((f"variable {variable['name']!r}", variable["definition"]))
    return found


def problems(found: list[tuple[str, str]], served: dict[str, set[str]]) -> list[str]:
    """What is wrong with these queries against what /metrics serves (empty: nothing)."""
    wrong: list[str] = []
    for where, expr in found:
        names = METRIC.findall(expr)
        if not names:
            wrong.append(f"{where}: no streamworker metric in {expr!r}")
        missing = [name for name in names if name not in served]
        wrong.extend(f"{where}: {name} is not in /metrics" for name in missing)
        if missing:
            continue
        for name, matchers in SELECTOR.findall(expr):
            for label in MATCHER_LABEL.findall(matchers):
                if label not in served[name] | SCRAPE_LABELS:
                    wrong.append(f"{where}: {name} has no label {label!r}")
        for group in BY.findall(expr):
            for label in (part.strip() for part in group.split(",") if part.strip()):
                for name in names:
                    if label not in served[name] | SCRAPE_LABELS:
                        wrong.append(f"{where}: 'by ({group})' but {name} has no label {label!r}")
    return wrong


def test_every_metric_the_dashboard_queries_is_served_with_those_labels() -> None:
    found = queries(json.loads(DASHBOARD.read_text()))
    assert len(found) >= 10
    assert problems(found, served_metrics()) == []


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used = {name for _, expr in queries(dashboard) for name in METRIC.findall(expr)}
    assert {
        "streamworker_events_total",  # throughput by result
        "streamworker_handler_duration_seconds_bucket",  # duration percentiles
        "streamworker_consumer_lag",  # lag per partition
        "streamworker_inflight_events",
        "streamworker_partition_paused",
        "streamworker_partition_stopped",
        "streamworker_rebalances_total",
        "streamworker_worker_restarts_total",
    } <= used
    exprs = [expr for _, expr in queries(dashboard)]
    assert any("histogram_quantile(0.99" in expr for expr in exprs)
    assert any("by (result)" in expr for expr in exprs)
    assert any("by (topic, partition)" in expr and "consumer_lag" in expr for expr in exprs)
    # Unique panel ids and a datasource chosen by variable, so the JSON imports into any Grafana.
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"])


def test_the_check_catches_misspelt_metrics_and_labels() -> None:
    """The control: the same rules flag a metric /metrics does not serve and labels it lacks."""
    served = served_metrics()
    bad = [
        ("a", "rate(streamworker_event_total[5m])"),
        ("b", "sum by (result) (streamworker_consumer_lag)"),
        ("c", 'streamworker_inflight_events{topic="orders"}'),
    ]
    assert problems(bad, served) == [
        "a: streamworker_event_total is not in /metrics",
        "b: 'by (result)' but streamworker_consumer_lag has no label 'result'",
        "c: streamworker_inflight_events has no label 'topic'",
    ]
