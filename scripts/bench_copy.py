"""Cost of writable arrays (``copy=True``) against read-only views (the default).

For a small (8x8x3 uint8) and a large (3x224x224 uint8, 147 KiB) image sample:
µs per ``unpack`` with and without ``copy``, and samples/s reading a local shard
with ``Dataset(..., copy=...)`` (decode included; median of ``--runs``).
``--json PATH`` writes the benchlib part (table ``copy``: copy=True against the
read-only view of the same run)."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from atdata_runtime.samples import PackableSample
from atdata_runtime.shards import Dataset, write_samples
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib


@dataclass(kw_only=True)
class Image(PackableSample):
    image: NDArray[np.uint8]
    label: str


def _per_call(fn: object, n: int, runs: int) -> list[float]:
    """µs per call of ``fn``, one value per run of ``n`` calls."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(n):
            fn()  # type: ignore[operator]
        times.append((time.perf_counter() - t) / n * 1e6)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=2000)
    benchlib.add_json_arg(parser)
    args = parser.parse_args()
    report = benchlib.Report(
        "copy", settings={"runs": args.runs, "samples": args.samples}
    )
    med = statistics.median
    print("shape            unpack view  unpack copy  read view      read copy")
    for key, shape in [("small", (8, 8, 3)), ("image", (3, 224, 224))]:
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
            for flag in (False, True):  # untimed: cold page cache, lazy imports
                sum(1 for _ in Dataset[Image](shards, copy=flag, progress=False))
            rates: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.runs):  # interleaved, so drift hits both alike
                for flag in (False, True):
                    t = time.perf_counter()
                    count = sum(
                        1 for _ in Dataset[Image](shards, copy=flag, progress=False)
                    )
                    rates[flag].append(count / (time.perf_counter() - t))
        print(
            f"{shape!s:15s}  {med(view):8.2f} µs  {med(copy):8.2f} µs  "
            f"{med(rates[False]):9.0f}/s  {med(rates[True]):9.0f}/s"
        )
        dims = "×".join(map(str, shape))
        for mode, values in (("view", view), ("copy", copy)):
            report.metric(
                f"unpack_{key}_{mode}_us",
                values,
                "µs",
                label=f"unpack {dims} uint8, {mode}",
            )
        for flag, mode in ((False, "view"), (True, "copy")):
            report.metric(
                f"read_{key}_{mode}_sps",
                rates[flag],
                "samples/s",
                better="higher",
                label=f"read a local shard of {dims} uint8 samples, {mode}",
            )
        report.row(
            "copy",
            f"unpack {dims} uint8 (µs), copy=True vs view",
            f"unpack_{key}_copy_us",
            peer=f"unpack_{key}_view_us",
            peer_name="view (copy=False)",
            fmt=".2f",
        )
        report.row(
            "copy",
            f"read a local shard, {dims} uint8 (samples/s), copy=True vs view",
            f"read_{key}_copy_sps",
            peer=f"read_{key}_view_sps",
            peer_name="view (copy=False)",
            fmt=",.0f",
        )
    report.write(args.json)


if __name__ == "__main__":
    main()
