"""A function made by `streamworker init` runs against a real broker once brokers are set."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from devtools.broker import Record, committed_offsets, create_topics, produce


def test_scaffolded_function_consumes_and_commits(
    broker_bootstrap: str, streamworker_process: Any, wait_until: Any, tmp_path: Path
) -> None:
    # The scaffold uses NAME as topic and consumer group, so a unique NAME keeps the broker rules.
    name = f"scaffold-{uuid.uuid4().hex[:8]}"
    created = subprocess.run(
        [sys.executable, "-m", "streamworker", "init", name, "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    create_topics(broker_bootstrap, {name: 2})
    end = produce(broker_bootstrap, name, [Record(value=f"hello {n}", key=f"k{n}") for n in range(6)])
    process = streamworker_process(tmp_path / name / "function.yaml", env={"KAFKA_BROKERS": broker_bootstrap})
    wait_until(lambda: committed_offsets(broker_bootstrap, name, name, 2) == end, 40)
    assert process.terminate() == 0
