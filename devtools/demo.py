"""``make demo``: a whole run on a local broker, from nothing to a clean stop.

Starts a throwaway Tansu broker on a free loopback port, creates the ``orders`` topic, produces
sample orders, runs ``streamworker --config examples/orders/function.yaml`` as a real subprocess,
prints what the handler did as it happens, waits until the group's committed offsets reach the end
of every partition, stops streamworker with SIGTERM and reports. Everything it starts, it stops.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from devtools.broker import LocalBroker, Record, committed_offsets, create_topics, produce

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "orders" / "function.yaml"
TOPIC = "orders"
GROUP = "orders-processor"
PARTITIONS = 4
CUSTOMERS = ["ada", "grace", "linus", "barbara", "ken", "margaret"]
PRODUCTS = {"keyboard": 49.5, "mouse": 19.99, "monitor": 189.0, "cable": 7.25}


def sample_orders(count: int, rng: random.Random) -> list[Record]:
    records = []
    for n in range(1, count + 1):
        customer = rng.choice(CUSTOMERS)
        items = [
            {"sku": sku, "price": PRODUCTS[sku], "qty": rng.randint(1, 3)}
            for sku in rng.sample(sorted(PRODUCTS), rng.randint(1, 3))
        ]
        body = json.dumps({"id": f"o-{n:03d}", "customer": customer, "items": items})
        records.append(Record(value=body, key=customer, headers=[("content-type", "application/json")]))
    return records


def _say(text: str) -> None:
    print(text, flush=True)


def _follow(stream: Any, handled: list[dict[str, Any]], lines: list[dict[str, Any]]) -> None:
    for raw in stream:
        try:
            entry = json.loads(raw)
        except ValueError:
            _say(f"   | {raw.rstrip()}")
            continue
        lines.append(entry)
        message = entry.get("message")
        if message == "order handled":
            handled.append(entry)
            _say(
                f"   worker {entry.get('worker')}  {entry.get('topic')}/{entry.get('partition')}"
                f"@{entry.get('offset'):<3} {entry.get('order_id')}  {entry.get('customer'):<9}"
                f" total {entry.get('total'):>8}  -> {entry.get('reply')!r}"
            )
        elif entry.get("level") in {"warning", "error"} or message in {
            "partitions assigned",
            "consuming",
            "worker ready",
            "stopping",
            "stopped",
            "worker stopping",
            "exiting",
        }:
            extras = {k: v for k, v in entry.items() if k not in {"message", "timestamp", "level"}}
            _say(f"   [{entry.get('level')}] {message} {json.dumps(extras, default=str)}")


def main(count: int = 24) -> int:
    _say("streamworker demo: local broker -> sample orders -> streamworker -> clean stop\n")
    with LocalBroker() as broker:
        _say(f"1. broker (Tansu) listening on {broker.bootstrap}")
        create_topics(broker.bootstrap, {TOPIC: PARTITIONS})
        end = produce(broker.bootstrap, TOPIC, sample_orders(count, random.Random(7)))
        _say(
            f"2. produced {count} orders to '{TOPIC}'; end offsets by partition: {dict(sorted(end.items()))}"
        )
        shown = EXAMPLE.relative_to(Path.cwd()) if EXAMPLE.is_relative_to(Path.cwd()) else EXAMPLE
        _say(f"3. streamworker --config {shown}")
        # A free loopback port for the health server: the demo must not collide with anything on 8082.
        env = {"STREAMWORKER_HEALTH_ADDR": "127.0.0.1:0", **os.environ, "KAFKA_BROKERS": broker.bootstrap}
        process = subprocess.Popen(
            [sys.executable, "-m", "streamworker", "--config", str(EXAMPLE)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        handled: list[dict[str, Any]] = []
        lines: list[dict[str, Any]] = []
        follower = threading.Thread(target=_follow, args=(process.stdout, handled, lines), daemon=True)
        follower.start()
        try:
            deadline = time.monotonic() + 90
            committed: dict[int, int] = {}
            while time.monotonic() < deadline and process.poll() is None:
                committed = committed_offsets(broker.bootstrap, GROUP, TOPIC, PARTITIONS)
                if committed == end:
                    break
                time.sleep(0.25)  # polling the broker for a condition, with a deadline
            caught_up = committed == end
            verdict = "== end offsets" if caught_up else "!= end offsets"
            _say(f"4. committed offsets {dict(sorted(committed.items()))} {verdict}")
            _say("5. sending SIGTERM")
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        follower.join(timeout=5)
        by_worker = Counter(entry.get("worker") for entry in handled)
        stops = [entry for entry in lines if entry.get("message") == "worker stopping"]
        _say("\nsummary")
        _say(f"   records produced        {count}")
        _say(f"   handled (log lines)     {len(handled)}  by worker {dict(sorted(by_worker.items()))}")
        _say(f"   committed == end        {caught_up}")
        _say(f"   termination callbacks   {len(stops)} of 2 workers")
        _say(f"   streamworker exit code  {code}")
        ok = caught_up and code == 0 and len({e.get("order_id") for e in handled}) == count
        _say("\ndemo " + ("OK" if ok else "FAILED"))
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
