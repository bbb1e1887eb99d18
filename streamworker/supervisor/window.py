"""How many records the dispatcher queues on a worker: about a fixed time of work, within bounds.

A worker runs one record at a time; the records queued behind it (its *window*) are what keeps it
busy while its results travel back and more records travel out. For a quick handler the window must
be deep, or the worker waits for the supervisor between batches (issue #16: at 1,024 records the
no-op workers waited more than half the time). For a slow handler a deep window is harmful: in pool
mode a record queued behind a thousand one-second calls waits for them while another worker may be
idle, and the last records of a backlog finish on one worker long after the other ran dry. So the
window is sized from the handler durations the workers report: about ``seconds`` of work per worker,
never more than ``most`` records, never fewer than ``least`` (one running, one ready).

Pure logic: the dispatcher feeds it the durations of each batch of results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Before any duration is known the handler may be slow: start shallow. A quick handler reports
# within milliseconds and the window deepens at once.
FIRST_WINDOW = 256
LEAST_WINDOW = 2
# How fast the estimate follows: a batch of n records moves it by n / (n + SMOOTHING_RECORDS), so a
# run of a thousand records mostly replaces it and one odd record barely moves it.
SMOOTHING_RECORDS = 32


@dataclass
class WindowSizer:
    most: int
    seconds: float
    # Recent handler seconds per record (a weighted moving average); None until a result arrives.
    seconds_per_record: float | None = None
    window: int = field(init=False)

    def __post_init__(self) -> None:
        self.window = min(FIRST_WINDOW, self.most)

    def observe(self, count: int, seconds: float) -> None:
        """``count`` records ran in ``seconds`` of handler time in all (one batch of results)."""
        if count <= 0:
            return
        sample = max(seconds, 0.0) / count
        if self.seconds_per_record is None:
            self.seconds_per_record = sample
        else:
            weight = count / (count + SMOOTHING_RECORDS)
            self.seconds_per_record += weight * (sample - self.seconds_per_record)
        per_record = self.seconds_per_record
        wanted = self.most if per_record * self.most <= self.seconds else int(self.seconds / per_record)
        self.window = max(min(LEAST_WINDOW, self.most), min(self.most, wanted))
