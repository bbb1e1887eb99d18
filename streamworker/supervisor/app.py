"""The supervisor process: one runner thread per trigger, signals, and the exit code.

Signals are handled on the main thread only: the first SIGTERM/SIGINT asks every runner to stop
cleanly (finish in-flight events, commit, termination callbacks, leave the group); a second one
kills every worker and exits at once with 128 + signal number, committing nothing more.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass, field
from types import FrameType

from streamworker.config.model import FunctionConfig
from streamworker.observability.health import HealthServer
from streamworker.observability.logging import get_logger
from streamworker.supervisor.runner import Outcome, RunnerOptions, TriggerRunner


@dataclass
class _RunnerThread:
    runner: TriggerRunner
    thread: threading.Thread
    outcome: Outcome | None = None


@dataclass
class Supervisor:
    function: FunctionConfig
    options: RunnerOptions = field(default_factory=RunnerOptions)
    # Already bound (so a busy port fails before anything starts); served from before the first
    # runner starts until the process exits. Its observer should be ``options.observer``.
    health: HealthServer | None = None

    def run(self) -> int:
        log = get_logger(function=self.function.name)
        stop = threading.Event()
        finished = threading.Event()
        signals_seen: list[int] = []
        runners: list[_RunnerThread] = []

        def run_one(entry: _RunnerThread) -> None:
            try:
                entry.outcome = entry.runner.run()
            finally:
                if entry.outcome is not Outcome.CLEAN:
                    stop.set()  # one trigger failing fatally stops the whole process
                    if self.health is not None:
                        self.health.mark_stopping()
                finished.set()

        for trigger in self.function.triggers:
            runner = TriggerRunner(self.function, trigger, stop, self.options)
            entry = _RunnerThread(runner, threading.Thread(target=lambda: None))
            entry.thread = threading.Thread(target=run_one, args=(entry,), name=f"trigger-{trigger.name}")
            runners.append(entry)

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            signals_seen.append(signum)
            if len(signals_seen) == 1:
                log.info("stop requested", signal=signal.Signals(signum).name)
                if self.health is not None:
                    self.health.mark_stopping()  # /ready fails at once, before the runners wind down
                stop.set()
                finished.set()
                return
            log.warning(
                "second signal: forced exit, nothing more is committed", signal=signal.Signals(signum).name
            )
            for entry in runners:
                entry.runner.kill_all_workers()
            os._exit(128 + signum)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            log.info("starting", triggers=[t.name for t in self.function.triggers], pid=os.getpid())
            if self.health is not None:
                self.health.start()
                # With port 0 this line is the only place the chosen port shows up.
                log.info(
                    "health server listening", address=str(self.health.address), port=self.health.address.port
                )
            for entry in runners:
                entry.thread.start()
            while any(entry.thread.is_alive() for entry in runners):
                finished.wait(0.5)
                finished.clear()
            outcomes = [Outcome.FAILED if entry.outcome is None else entry.outcome for entry in runners]
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.health is not None:
                self.health.stop()
        worst = max(outcomes, key=int)
        log.info("exiting", exit_code=int(worst))
        return int(worst)
