"""atdata 0.7.0b1's side of scripts/bench_runtime (runs in its Python 3.12 env).

Prints one JSON object of medians: pack/unpack µs per sample (small, image),
pack/unpack seconds for a 64 MiB float32 array, and samples/s reading the shards
given as argv[1] (brace URL), ordered and batched (batch 32).
"""

import json
import statistics
import sys
import time

import atdata
import numpy as np
from numpy.typing import NDArray

RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 5


@atdata.packable
class Small:
    x: int
    y: float
    name: str


@atdata.packable
class Image:
    image: NDArray
    label: str


@atdata.packable
class Big:
    data: NDArray


def per_call(fn, n):
    out = []
    for _ in range(RUNS):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t) / n)
    return statistics.median(out)


def main() -> None:
    small = Small(x=7, y=0.5, name="sample-000123")
    image = Image(
        image=np.random.default_rng(0).integers(0, 255, (3, 224, 224), dtype=np.uint8),
        label="a photo",
    )
    big = Big(data=np.random.default_rng(1).random(16 * 1024 * 1024, dtype=np.float32))
    sp, ip, bp = small.packed, image.packed, big.packed
    result = {
        "small_pack_us": per_call(lambda: small.packed, 20000) * 1e6,
        "small_unpack_us": per_call(lambda: Small.from_bytes(sp), 20000) * 1e6,
        "image_pack_us": per_call(lambda: image.packed, 2000) * 1e6,
        "image_unpack_us": per_call(lambda: Image.from_bytes(ip), 2000) * 1e6,
        "big_pack_s": per_call(lambda: big.packed, 3),
        "big_unpack_s": per_call(lambda: Big.from_bytes(bp), 3),
    }
    url = sys.argv[1]
    rates = {"ordered": [], "batched": []}
    for _ in range(RUNS):
        t = time.perf_counter()
        n = sum(1 for _ in atdata.Dataset[Image](url).ordered())
        rates["ordered"].append(n / (time.perf_counter() - t))
        t = time.perf_counter()
        n = sum(
            len(b.samples) for b in atdata.Dataset[Image](url).ordered(batch_size=32)
        )
        rates["batched"].append(n / (time.perf_counter() - t))
    result["read_ordered_per_s"] = statistics.median(rates["ordered"])
    result["read_batched_per_s"] = statistics.median(rates["batched"])
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
