"""What the duplicate-key defence costs, as ratios to the orjson parse every request
already pays (proxy/bodies.py): re-encoding a guarded body (`as_read`), the pass-through
prefilter of routed tenants (`refuse_repeated_model` on a body naming `model` once), and
the full duplicate scan (`json.loads(object_pairs_hook=...)`) the re-encoding replaces.

    python tests/bench/duplicate_keys.py   # seconds
"""

from __future__ import annotations

import statistics
import timeit

import orjson

from proxy.bodies import as_read, refuse_repeated, refuse_repeated_model


def body(turns: int) -> bytes:
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": "some words of a turn " * 12}
        for i in range(turns)
    ]
    return orjson.dumps({"model": "gpt-4o", "messages": messages, "temperature": 0.2})


def per_call(fn, number: int) -> list[float]:
    return [t / number for t in timeit.repeat(fn, number=number, repeat=7)]


def main() -> None:
    print("| body | orjson.loads (us) | as_read / parse | prefilter / parse | full scan / parse |")
    print("|---|---|---|---|---|")
    for turns in (2, 40, 400):
        raw = body(turns)
        parsed = orjson.loads(raw)
        number = 200 if turns == 400 else 2000
        parse = per_call(lambda raw=raw: orjson.loads(raw), number)
        rows = [
            per_call(lambda p=parsed, raw=raw: as_read(p, raw), number),
            per_call(lambda raw=raw: refuse_repeated_model(raw), number),
            per_call(lambda raw=raw: refuse_repeated(raw), number),
        ]
        base = statistics.median(parse)
        cells = [
            f"{statistics.median(r) / base:.2f}x ({min(r) / base:.2f}-{max(r) / base:.2f})"
            for r in rows
        ]
        print(f"| {len(raw):,} B | {base * 1e6:.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
