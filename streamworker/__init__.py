"""streamworker: run Nuclio-style Python functions on Kafka records, in worker processes.

The types a handler sees are importable from here, for annotations and tests::

    from streamworker import Context, Event, Response

    def handler(context: Context, event: Event) -> Response: ...

They are defined in ``streamworker.worker.sdk``; the package ships ``py.typed`` (PEP 561), so mypy and
pyright check handlers against them.
"""

from streamworker.worker.sdk import (
    Context,
    Event,
    Logger,
    Platform,
    QualifiedOffset,
    Response,
    TriggerInfo,
)

__version__ = "0.1.0"

__all__ = [
    "Context",
    "Event",
    "Logger",
    "Platform",
    "QualifiedOffset",
    "Response",
    "TriggerInfo",
    "__version__",
]
