"""Chaos suite (issue #7): prove with the handler's ledger that nothing is lost under faults.

A steady keyed stream is produced into one topic per allocation mode while streamworker instances run
the same function.yaml (one trigger per mode, each with its own consumer group, all members on the
quick timeout profile). Faults follow a seeded schedule: each kind alone (SIGKILLed workers, a SIGKILLed
and restarted supervisor, a second instance joining and leaving, the broker connection cut for ~10 s
by a proxy, a hanging handler, a poison record), then all mixed. Afterwards the ledger is checked
record by record (see ``chaos_verdict``) and the verdict is printed as a table.

Sizes: the short run (~1.5 min) is part of ``make test``; ``make chaos`` runs the long one
(``STREAMWORKER_CHAOS=long``, several minutes). ``STREAMWORKER_CHAOS_SEED`` changes the schedule.
The table is printed with ``-s`` (``make chaos`` passes it) and attached to any failure.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chaos_harness import (
    EVENT_TIMEOUT_S,
    HANDLER,
    LONG,
    SHORT,
    ChaosProducer,
    ChaosRun,
    CommitSampler,
    Fleet,
    LedgerTail,
    describe_schedule,
    end_offsets_of,
    function_config,
    make_schedule,
    output_topic,
    ownership,
    read_output_ids,
    session_losses,
    tenures,
    wait_all_committed,
)
from chaos_proxy import BrokerLink
from chaos_verdict import RunRecord, bound_problems, group_activity, judge, render

from devtools.broker import committed_offsets, create_topics
from streamworker.config import model

LONG_RUN = os.environ.get("STREAMWORKER_CHAOS", "").strip().lower() == "long"
SEED = int(os.environ.get("STREAMWORKER_CHAOS_SEED", "7"))
# workerAllocationMode: key is being added; its scenario runs once the model has it.
HAS_KEY_MODE = hasattr(model.AllocationMode, "KEY")


def keep_artifacts(folder: Path) -> None:
    """Copy the ledger, instance logs, verdict and broker log to $STREAMWORKER_CHAOS_ARTIFACTS, when set."""
    target = os.environ.get("STREAMWORKER_CHAOS_ARTIFACTS", "").strip()
    if target:
        shutil.copytree(folder, Path(target), dirs_exist_ok=True)
        broker_log = folder.parent / "tansu.log"  # the session broker's (conftest.broker_bootstrap)
        if broker_log.exists():
            shutil.copy(broker_log, Path(target) / "tansu.log")


def modes() -> list[str]:
    if LONG_RUN:
        return ["pool", "static", *(["key"] if HAS_KEY_MODE else [])]
    return ["pool", "key" if HAS_KEY_MODE else "static"]


def test_chaos_nothing_lost(
    broker_bootstrap: str,
    unique: Callable[[str], str],
    wait_until: Callable[..., Any],
    function_dir: Callable[..., Path],
    streamworker_process: Callable[..., Any],
    tmp_path: Path,
) -> None:
    size = LONG if LONG_RUN else SHORT
    triggers = {mode: (mode, unique(f"chaos-{mode}"), unique(f"group-{mode}")) for mode in modes()}
    topics = {topic: mode for mode, (_, topic, _) in triggers.items()}
    create_topics(broker_bootstrap, dict.fromkeys([*topics, *map(output_topic, topics)], size.partitions))
    ledger_path = tmp_path / "ledger.jsonl"
    phases = make_schedule(SEED, LONG_RUN)
    print(
        f"\nchaos schedule ({size.name}, seed {SEED}, modes {list(triggers)}):\n{describe_schedule(phases)}"
    )

    link = BrokerLink(broker_bootstrap, tmp_path).start()
    producer = ChaosProducer(broker_bootstrap, topics, size, SEED)
    sampler = CommitSampler(
        broker_bootstrap, {topic: group for _, topic, group in triggers.values()}, size.partitions
    )
    fleet: Fleet | None = None
    chaos: ChaosRun | None = None
    try:
        config = function_dir(
            HANDLER,
            function_config(
                brokers=link.bootstrap,
                triggers=triggers,
                ledger=ledger_path,
                workers=size.workers,
                # Explicit acks (some given in drain/termination callbacks) on the last trigger.
                ack_triggers=[modes()[-1]],
            ),
        )
        fleet = Fleet(streamworker_process, config)
        ledger = LedgerTail(ledger_path)
        producer.start()
        sampler.start()
        first = fleet.start("A")

        def every_topic_flows() -> bool:
            ledger.poll()
            return all(ledger.handled.get(topic) for topic in topics)

        wait_until(
            every_topic_flows,
            60,
            interval=0.2,
            message=lambda: f"A never handled records\n{first.proc.output()}",
        )
        chaos = ChaosRun(fleet=fleet, link=link, producer=producer, ledger=ledger, size=size)
        result = chaos.run(phases)

        # Quiesce: no more faults; stop producing; everything handled and committed; clean stops.
        chaos.settle("final", size.final_s)
        producer.stop()
        producer.verify()
        ends = {topic: end_offsets_of(producer.produced[topic]) for topic in topics}
        # Bounded, and not fatal by itself: records still missing then show in the verdict as lost.
        chaos.settle("all handled", size.final_s, lag=0.0)
        committed_live = wait_all_committed(sampler, ends, 30.0)
        result.run_end = time.time()
        fleet.stop_all()
        exit_problems = fleet.exit_problems(60.0)
        sampler.stop()
        committed_final = {
            topic: committed_offsets(broker_bootstrap, group, topic, size.partitions)
            for _, topic, group in triggers.values()
        }
    finally:
        producer.stop()
        sampler.stop()
        link.close()
        if chaos is not None:
            chaos.end_background_processes()
        if fleet is not None:
            fleet.dump_logs(tmp_path / "logs")
        keep_artifacts(tmp_path)

    assert fleet is not None and chaos is not None
    chaos.refine()
    members, assignments = group_activity(
        {m.label: list(m.proc.logs) for m in fleet.members},
        {mode: topic for mode, (_, topic, _) in triggers.items()},
        {m.label: m.killed_at for m in fleet.members if m.killed_at is not None},
    )
    run = RunRecord(
        triggers={mode: (mode, topic) for mode, (_, topic, _) in triggers.items()},
        partitions=size.partitions,
        event_timeout=EVENT_TIMEOUT_S,
        t0=result.t0,
        run_end=result.run_end,
        title=(
            f"chaos verdict: {size.name} run, seed {SEED}, {result.run_end - result.t0:.0f}s of faults and "
            f"recovery, {len(result.incidents)} incidents"
        ),
        produced=producer.produced,
        samples=sampler.samples,
        incidents=result.incidents,
        ownership=ownership(fleet.members, {mode: topic for mode, (_, topic, _) in triggers.items()}),
        tenures=tenures(fleet.members, {mode: topic for mode, (_, topic, _) in triggers.items()}),
        outputs={
            topic: read_output_ids(broker_bootstrap, output_topic(topic), unique("outputs"), size.partitions)
            for topic in topics
        },
        members=members,
        assignments=assignments,
    )
    run.save(tmp_path)
    verdicts = judge(run, ledger.entries)
    table = render(verdicts, result.incidents, title=run.title, t0=result.t0)
    waits = ", ".join(
        f"{name} {waited:.1f}s{'' if ok else ' (not caught up)'}" for name, waited, ok in result.settles
    )
    report = f"{table}\n\ncatch-up waits before phases: {waits}"
    lost = [
        f"{who} at {when - result.t0:.1f}s" for who, when in session_losses(fleet.members, result.incidents)
    ]
    if lost:
        report += "\nsessions lost outside the broker cuts: " + ", ".join(lost)
    if result.notes:
        report += "\nnotes: " + "; ".join(result.notes)
    report += f"\nartifacts (ledger, logs, run): {tmp_path}"
    print("\n" + report)
    (tmp_path / "verdict.txt").write_text(report + "\n", encoding="utf-8")
    keep_artifacts(tmp_path)

    problems = [problem for v in verdicts for problem in v.problems()]
    problems += exit_problems
    for _, topic, _ in triggers.values():
        if committed_live[topic] != ends[topic]:
            problems.append(
                f"{topic}: committed {committed_live[topic]} while running, end offsets {ends[topic]}"
            )
        if committed_final[topic] != ends[topic]:
            problems.append(
                f"{topic}: committed {committed_final[topic]} after the clean stop, end offsets {ends[topic]}"
            )
    problems += [
        f"the pipeline had not caught up {waited:.0f}s after the faults, before {name!r}"
        for name, waited, caught_up in result.settles
        if not caught_up
    ]
    problems += bound_problems(verdicts, result.incidents)
    assert not problems, "\n".join(problems) + "\n\n" + report
