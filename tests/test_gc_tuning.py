"""The supervisor's garbage-collector settings (``streamworker/supervisor/gc_tuning.py``)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamworker.supervisor.gc_tuning import YOUNG_THRESHOLD, tune_garbage_collector


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_startup_objects_are_frozen_and_young_collections_are_rare(restored_gc: None) -> None:
    _, middle, oldest = gc.get_threshold()
    gc.unfreeze()
    tune_garbage_collector()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (YOUNG_THRESHOLD, middle, oldest)


def test_a_batch_of_consumed_messages_no_longer_sets_off_a_collection(restored_gc: None) -> None:
    """What the setting is for: a thousand short-lived tracked objects (a consume() batch) alive at
    once do not trigger a collection; with CPython's default threshold they do."""

    def collections_during_a_batch() -> int:
        gc.collect()
        before = gc.get_stats()[0]["collections"]
        batch = [[index] for index in range(1000)]  # tracked, alive together, like Message objects
        del batch
        return int(gc.get_stats()[0]["collections"] - before)

    gc.set_threshold(700, 10, 10)
    assert collections_during_a_batch() >= 1
    tune_garbage_collector()
    assert collections_during_a_batch() == 0


def test_the_cli_tunes_the_supervisor_process(tmp_path: Path) -> None:
    """``streamworker --config`` applies it before the supervisor starts (its run is replaced by one
    that reports the collector's settings, in a process of its own)."""
    script = (
        "import gc, sys\n"
        "import streamworker.supervisor.app as app\n"
        "def run(self):\n"
        "    print(gc.get_threshold()[0], gc.get_freeze_count() > 0)\n"
        "    return 0\n"
        "app.Supervisor.run = run\n"
        "from streamworker.cli import main\n"
        "sys.exit(main(['--config', sys.argv[1], '--health-addr', 'off']))\n"
    )
    config = tmp_path / "function.yaml"
    (tmp_path / "main.py").write_text("def handler(context, event):\n    return None\n")
    config.write_text(
        "metadata: {name: gc}\n"
        "spec:\n"
        "  handler: main:handler\n"
        "  triggers:\n"
        "    t:\n"
        "      kind: kafka-cluster\n"
        "      attributes: {brokers: ['127.0.0.1:9'], topics: [t], consumerGroup: g}\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(YOUNG_THRESHOLD), "True"]
