"""Draining partitions before they go: the one sequence a revoke and a shutdown share.

``quiesce`` stops new work on the partitions (buffered records dropped, records queued on workers
cancelled), lets the running calls finish within the deadline, kills the workers still running one
of them, and waits (bounded) for outputs in flight, so that what finished is in the commit that
follows. A revoke then runs the workers' drain callbacks (``drain_callbacks``); a shutdown the
dead-letter copies in flight and the termination callbacks. Both end with a synchronous commit
(``consumer.commit_sync``). The order, and what each step waits for, is docs/record-path.md's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamworker.protocol import Msg
from streamworker.supervisor.dispatch import Dispatcher, TopicPartition
from streamworker.supervisor.waiting import step_until
from streamworker.supervisor.worker_handle import WorkerHandle, WorkerState
from streamworker.supervisor.worker_pool import WorkerPool


@dataclass(frozen=True)
class Quiesced:
    dropped: int  # buffered records dropped unrun (their next owner fetches them again)
    killed: set[int]  # workers killed at the deadline, still running a record


def quiesce(
    dispatcher: Dispatcher,
    pool: WorkerPool,
    tps: list[TopicPartition],
    *,
    every_partition: bool,
    deadline: float,
    kill_reason: str,
    kill_kind: str,
    settle_outputs: Callable[[], None],
) -> Quiesced:
    """Stop new work on ``tps``, finish or kill what runs, settle outputs.

    ``every_partition`` (shutdown): wait for everything in flight and kill any busy worker; else
    (revoke) only ``tps``' records count and only workers running one of them are killed.
    """
    dropped = dispatcher.begin_revoke(tps)
    pool.cancel_queued(tps)
    killed = pool.join(None if every_partition else tps, deadline, kill_reason, kill_kind)
    # Outputs still in flight decide whether their inputs are in the commit that follows.
    settle_outputs()
    return Quiesced(dropped, killed)


def drain_callbacks(
    pool: WorkerPool, worker_ids: set[int], request: int, deadline: float, log: Any
) -> tuple[list[int], list[int]]:
    """Run the drain callbacks of ``worker_ids`` and wait for each to report it done (bounded).

    Returns (drained, late): a worker is drained only if the process that was asked reported it;
    one that missed the deadline, or died or was replaced meanwhile, is late.
    """
    seats = pool.seats
    asked: dict[int, WorkerHandle] = {}
    for wid in sorted(worker_ids):
        process = seats[wid].process
        if process is not None and process.state is WorkerState.READY:
            process.send([Msg.DRAIN, request])
            asked[wid] = process

    def pending() -> list[int]:
        return [
            wid
            for wid, process in asked.items()
            if seats[wid].process is process and request not in process.drained
        ]

    def step(wait: float) -> None:
        pool.flush()
        pool.pump(wait)

    step_until(lambda: not pending(), deadline, step)
    drained = [wid for wid, process in asked.items() if request in process.drained]
    late = [wid for wid in asked if wid not in drained]
    if late:
        log.warning("drain callbacks did not finish before the rebalance deadline", workers=late)
    return drained, late


def at_least_a_second(deadline: float) -> float:
    """What is left of the wait, and at least a second even when handlers used it all."""
    return max(deadline, time.monotonic() + 1.0)
