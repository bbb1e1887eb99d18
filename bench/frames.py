"""Micro-benchmark: msgpack vs msgspec's msgpack for streamworker's frames (issue #16).

    .venv/bin/python bench/frames.py [--repeat N]

Encodes and decodes the frames that carry the no-op benchmark's traffic: an EVENTS frame of runs
(4 runs of 256 records: 100-byte values, 4-byte keys, no headers, ms timestamps), an EVENTS frame of
1,024 single events (key mode today) and a RESULTS frame of run results (with duration summaries),
exactly as ``streamworker.protocol`` builds them. Reports the best of ``--repeat`` timings per
operation (µs per frame and ns per record) and checks that both libraries decode each other's output
to the same value. msgspec is optional: without it only msgpack is timed.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable
from typing import Any

import msgpack

RECORDS_PER_RUN = 256
RUNS = 4
VALUE = bytes(range(100))


def events_of_runs() -> list[Any]:
    items = []
    for run in range(RUNS):
        offsets = list(range(run * RECORDS_PER_RUN, (run + 1) * RECORDS_PER_RUN))
        keys = [b"k%03d" % (i % 1000) for i in offsets]
        values = [VALUE] * RECORDS_PER_RUN
        headers = [None] * RECORDS_PER_RUN
        timestamps = [1_765_000_000_000 + i for i in offsets]
        items.append(
            [run, run, "bench-noop-0123456789", run, False, offsets, keys, values, headers, timestamps]
        )
    return [1, items]


def events_single() -> list[Any]:
    total = RUNS * RECORDS_PER_RUN
    items = [
        [
            i,
            i % 1000,
            "bench-noop-0123456789",
            i % 4,
            i,
            b"k%03d" % (i % 1000),
            VALUE,
            None,
            1_765_000_000_000,
            1,
            False,
            104,
        ]
        for i in range(total)
    ]
    return [1, items]


def results_of_runs() -> list[Any]:
    summary = [RECORDS_PER_RUN, 0.0123, [RECORDS_PER_RUN, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]
    return [12, [[run, 0, 0.0123, None, None, summary] for run in range(RUNS)]]


def best_us(action: Callable[[], object], repeat: int, number: int) -> float:
    return min(timeit.repeat(action, repeat=repeat, number=number)) / number * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    try:
        import msgspec
    except ImportError:
        msgspec = None  # type: ignore[assignment]
    frames = {
        "EVENTS, 4 runs x 256": (events_of_runs(), RUNS * RECORDS_PER_RUN),
        "EVENTS, 1,024 single events": (events_single(), RUNS * RECORDS_PER_RUN),
        "RESULTS, 4 run results": (results_of_runs(), RUNS),
    }
    libs: dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]] = {
        f"msgpack {'.'.join(map(str, msgpack.version))}": (
            lambda m: msgpack.packb(m, use_bin_type=True),
            lambda b: msgpack.unpackb(b, raw=False, use_list=True),
        )
    }
    if msgspec is not None:
        encoder, decoder = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()
        libs[f"msgspec {msgspec.__version__}"] = (encoder.encode, decoder.decode)
    print(f"Python {sys.version.split()[0]}; best of {args.repeat}")
    print("| frame | library | encode µs | decode µs | encode ns/record | decode ns/record | bytes |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, (message, records) in frames.items():
        blobs = {}
        for lib, (encode, decode) in libs.items():
            blob = encode(message)
            blobs[lib] = blob
            number = 200 if records > 100 else 20_000
            enc = best_us(lambda e=encode, m=message: e(m), args.repeat, number)
            dec = best_us(lambda d=decode, b=blob: d(b), args.repeat, number)
            print(
                f"| {name} | {lib} | {enc:,.1f} | {dec:,.1f} | {enc * 1000 / records:,.0f} "
                f"| {dec * 1000 / records:,.0f} | {len(blob):,} |"
            )
        decoded = [decode(blob) for (_, decode) in libs.values() for blob in blobs.values()]
        if any(value != decoded[0] for value in decoded):
            print(f"  MISMATCH: {name} decodes differently across libraries")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
