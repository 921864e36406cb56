"""Benchmark: the sample codec and shard reading, atdata 0.7.0b1 and us in the same
run (atdata in its Python 3.12 environment, scripts/atdata-env). Medians of
``--runs`` runs.

* pack / unpack µs per sample: a small sample (int, float, str) and an image sample
  (3×224×224 uint8 + str);
* pack / unpack GB/s for one 64 MiB float32 array, next to a plain 64 MiB memory copy
  (into a preallocated buffer) and a fresh allocation + copy, in this process;
* samples/s reading 10 shards × 1,000 samples (3×64×64 uint8 + str), ordered and
  batched (32), next to raw ``webdataset.WebDataset`` iteration without decoding.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "runtime"))

from atdata_runtime.samples import FieldSpec, PackableSample
from atdata_runtime.shards import Dataset, write_samples


@dataclasses.dataclass(kw_only=True, eq=False)
class Small(PackableSample):
    sample_fields = (
        FieldSpec("x", "x", "int"),
        FieldSpec("y", "y", "float"),
        FieldSpec("name", "name", "str"),
    )
    x: int
    y: float
    name: str


@dataclasses.dataclass(kw_only=True, eq=False)
class Image(PackableSample):
    sample_fields = (
        FieldSpec("image", "image", "ndarray", dtype="uint8"),
        FieldSpec("label", "label", "str"),
    )
    image: Any
    label: str


@dataclasses.dataclass(kw_only=True, eq=False)
class Big(PackableSample):
    sample_fields = (FieldSpec("data", "data", "ndarray"),)
    data: Any


def per_call(fn: Any, n: int, runs: int) -> float:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t) / n)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    runs = args.runs
    work = Path(tempfile.mkdtemp(prefix=".bench-runtime-", dir=ROOT))
    try:
        rng = np.random.default_rng(0)
        samples = [
            Image(
                image=rng.integers(0, 255, (3, 64, 64), dtype=np.uint8),
                label=f"img-{i}",
            )
            for i in range(10_000)
        ]
        write_samples(samples, str(work / "d-%06d.tar"), maxcount=1000)
        url = str(work / "d-{000000..000009}.tar")
        atdata_py = subprocess.run(
            [str(ROOT / "scripts" / "atdata-env")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        theirs = json.loads(
            subprocess.run(
                [
                    atdata_py,
                    str(ROOT / "scripts" / "bench_runtime_atdata.py"),
                    url,
                    str(runs),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )

        small = Small(x=7, y=0.5, name="sample-000123")
        image = Image(
            image=np.random.default_rng(0).integers(
                0, 255, (3, 224, 224), dtype=np.uint8
            ),
            label="a photo",
        )
        big = Big(
            data=np.random.default_rng(1).random(16 * 1024 * 1024, dtype=np.float32)
        )
        sp, ip, bp = small.pack(), image.pack(), big.pack()
        ours = {
            "small_pack_us": per_call(small.pack, 20000, runs) * 1e6,
            "small_unpack_us": per_call(lambda: Small.unpack(sp), 20000, runs) * 1e6,
            "image_pack_us": per_call(image.pack, 2000, runs) * 1e6,
            "image_unpack_us": per_call(lambda: Image.unpack(ip), 2000, runs) * 1e6,
            "big_pack_s": per_call(big.pack, 3, runs),
            "big_unpack_s": per_call(lambda: Big.unpack(bp), 3, runs),
        }
        src = big.data
        dst = np.empty_like(src)
        memcpy = per_call(lambda: np.copyto(dst, src), 5, runs)
        alloc_copy = per_call(lambda: src.copy(), 5, runs)

        import webdataset as wds

        raw, ordered, batched = [], [], []
        for _ in range(runs):
            t = time.perf_counter()
            n = sum(1 for _ in wds.WebDataset(url, shardshuffle=False))
            raw.append(n / (time.perf_counter() - t))
            t = time.perf_counter()
            n = sum(1 for _ in Dataset[Image](url).ordered())
            ordered.append(n / (time.perf_counter() - t))
            t = time.perf_counter()
            n = sum(len(b) for b in Dataset[Image](url).ordered(batch_size=32))
            batched.append(n / (time.perf_counter() - t))
        ours["read_ordered_per_s"] = statistics.median(ordered)
        ours["read_batched_per_s"] = statistics.median(batched)
        raw_rate = statistics.median(raw)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    gb = src.nbytes / 1e9
    print(f"runtime benchmark, median of {runs} runs (atdata 0.7.0b1 in the same run)")
    print(f"{'':34}{'atdata-gen':>14}{'atdata':>14}{'ratio':>9}")

    def row(
        label: str,
        key: str,
        unit: str,
        higher_better: bool = False,
        fmt: str = "{:.2f}",
    ) -> None:
        a, b = ours[key], theirs[key]
        ratio = (a / b) if higher_better else (b / a)
        print(
            f"{label:34}{fmt.format(a) + unit:>14}{fmt.format(b) + unit:>14}"
            f"{ratio:>8.2f}x"
        )

    row("small sample pack", "small_pack_us", " µs")
    row("small sample unpack", "small_unpack_us", " µs")
    row("image sample pack", "image_pack_us", " µs")
    row("image sample unpack", "image_unpack_us", " µs")
    ours["big_pack_gbs"] = gb / ours["big_pack_s"]
    ours["big_unpack_gbs"] = gb / ours["big_unpack_s"]
    theirs["big_pack_gbs"] = gb / theirs["big_pack_s"]
    theirs["big_unpack_gbs"] = gb / theirs["big_unpack_s"]
    row("64 MiB float32 pack", "big_pack_gbs", " GB/s", True)
    row("64 MiB float32 unpack", "big_unpack_gbs", " GB/s", True)
    print(
        f"  memcpy 64 MiB (preallocated): {gb / memcpy:.2f} GB/s; "
        f"fresh alloc+copy: {gb / alloc_copy:.2f} GB/s"
    )
    print(
        f"  our 64 MiB unpack takes {ours['big_unpack_s'] * 1e6:.1f} µs: the array is a "
        f"view into the payload (memcpy would take {memcpy * 1e6:.0f} µs)"
    )
    row("read 10x1000 ordered", "read_ordered_per_s", "/s", True, "{:,.0f}")
    row("read 10x1000 batched (32)", "read_batched_per_s", "/s", True, "{:,.0f}")
    print(
        f"  raw webdataset iteration (no decoding): {raw_rate:,.0f}/s; ours ordered "
        f"= {ours['read_ordered_per_s'] / raw_rate:.0%} of it"
    )


if __name__ == "__main__":
    main()
