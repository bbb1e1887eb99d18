"""Handler-side source shared by ledger-based tests: paste into a handler module's text.

``write(kind, context, event, **fields)`` appends one JSON line to ``$LEDGER`` with one ``O_APPEND``
write, so lines from several worker processes never interleave (they stay below PIPE_BUF).
"""

LEDGER_WRITE = """
LEDGER = os.environ["LEDGER"]
DELAY_S = float(os.environ.get("DELAY_S", "0"))


def write(kind, context, event, **fields):
    entry = {
        "kind": kind,
        "pid": os.getpid(),
        "worker_id": int(context.worker_id),  # a str, as in Nuclio
        "partition": event.partition,
        "offset": event.offset,
        "key": event.key,
        "attempt": event.attempt,
        **fields,
    }
    line = (json.dumps(entry, sort_keys=True) + "\\n").encode("utf-8")
    assert len(line) < 4096, "ledger lines must stay below PIPE_BUF to be atomic"
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
"""
