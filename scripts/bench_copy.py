"""Cost of writable arrays (``copy=True``) against read-only views (the default).

For a small (8x8x3 uint8) and a large (3x224x224 uint8, 147 KiB) image sample:
µs per ``unpack`` with and without ``copy``, and samples/s reading a local shard
with ``Dataset(..., copy=...)`` (decode included; median of ``--runs``)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from atdata_runtime.samples import PackableSample
from atdata_runtime.shards import Dataset, write_samples
from numpy.typing import NDArray


@dataclass(kw_only=True)
class Image(PackableSample):
    image: NDArray[np.uint8]
    label: str


def _per_call(fn: object, n: int, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(n):
            fn()  # type: ignore[operator]
        times.append((time.perf_counter() - t) / n)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    print("shape            unpack view  unpack copy  read view      read copy")
    for shape in [(8, 8, 3), (3, 224, 224)]:
        rng = np.random.default_rng(0)
        sample = Image(image=rng.integers(0, 255, shape, np.uint8), label="x")
        payload = sample.pack()
        n = 20_000 if len(payload) < 1 << 16 else 5_000
        view = _per_call(lambda p=payload: Image.unpack(p), n, args.runs)
        copy = _per_call(lambda p=payload: Image.unpack(p, copy=True), n, args.runs)
        with tempfile.TemporaryDirectory() as tmp:
            shards = write_samples(
                [sample] * args.samples, str(Path(tmp) / "b-%06d.tar"), progress=False
            )
            rates = {}
            for flag in (False, True):
                times = []
                for _ in range(args.runs):
                    t = time.perf_counter()
                    count = sum(
                        1 for _ in Dataset[Image](shards, copy=flag, progress=False)
                    )
                    times.append(time.perf_counter() - t)
                rates[flag] = count / statistics.median(times)
        print(
            f"{shape!s:15s}  {view:8.2f} µs  {copy:8.2f} µs  "
            f"{rates[False]:9.0f}/s  {rates[True]:9.0f}/s"
        )


if __name__ == "__main__":
    main()
