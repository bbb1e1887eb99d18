"""The supervisor's garbage-collector settings: rare collections on the record path.

Every fetched record is a confluent-kafka ``Message``, an object the cyclic collector tracks. With
CPython's default young-generation threshold (700 allocations), each ``consume(1000)`` batch set off
a collection while its messages were still alive: they were promoted, and the older generations
(startup objects, buffered runs) were scanned again and again. On the 1M-record benchmark that was
about a third of the supervisor's time in ``consume()`` (issue #16, bench/RESULTS.md). Those messages
die by reference counting once a batch is split into runs, so collecting less often finds no less
garbage: the supervisor's record path makes no reference cycles.

The workers are left alone: they run the user's code, whose memory habits are the user's.
"""

from __future__ import annotations

import gc

# Allocations (net of deallocations) of tracked objects between two young collections. A batch of
# messages is freed long before this many pile up, so collections come from what really stays.
YOUNG_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """Freeze what startup loaded (modules, configuration: never garbage, never scanned again) and
    raise the young generation's threshold; the older generations keep their ratios."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)
