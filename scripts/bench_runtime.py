"""Benchmark: the sample codec and shard reading, ours next to atdata 0.7.0b1 and
bare msgpack in the same run (atdata in its Python 3.12 environment,
``scripts/atdata-env``, one process answering round by round, so each of its rounds
runs right next to ours: the ratios are of neighbours on a noisy machine). Medians
of ``--runs`` rounds.

* pack / unpack µs per sample: a small sample (int, float, str), next to a bare
  ``msgpack.packb`` / ``msgpack.unpackb`` of the same dict (the floor: a codec
  cannot be faster than the one msgpack call it makes; ours and msgpack run in
  alternating blocks), and an image sample
  (3×224×224 uint8 + str);
* pack / unpack GB/s for one 64 MiB float32 array, next to a plain 64 MiB memory copy
  (into a preallocated buffer) and a fresh allocation + copy;
* samples/s reading 10 shards × 1,000 samples (3×64×64 uint8 + str), ordered and
  batched (32), next to raw ``webdataset.WebDataset`` iteration without decoding;
* the size curve: samples/s and MB/s reading shards of samples whose payload is
  1 KB, 10 KB, 100 KB, 1 MB and 10 MB (a uint8 array + str), about ``--curve-mb``
  MB per point (at least 8 samples), ours, raw webdataset and atdata
  (``read_size_<bytes>_samples_s``, ``read_size_<bytes>_mb_s``, with ``wds_`` and
  ``atdata_`` prefixes).

``--json PATH`` writes the benchlib part (table ``runtime``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

ROOT = benchlib.ROOT
sys.path.insert(0, str(ROOT / "runtime"))

from atdata_runtime.samples import FieldSpec, PackableSample
from atdata_runtime.shards import Dataset, write_samples

CURVE_SIZES = (1_000, 10_000, 100_000, 1_000_000, 10_000_000)
"""Payload bytes per sample of the size curve's points."""


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


@dataclasses.dataclass(kw_only=True, eq=False)
class Blob(PackableSample):
    sample_fields = (
        FieldSpec("data", "data", "ndarray", dtype="uint8"),
        FieldSpec("key", "key", "str"),
    )
    data: Any
    key: str


def per_call(fn: Callable[[], Any], n: int) -> float:
    """Seconds per call of ``fn`` over ``n`` calls (one round)."""
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def paired(
    fa: Callable[[], Any], fb: Callable[[], Any], n: int, blocks: int = 20
) -> tuple[float, float]:
    """Seconds per call of ``fa`` and ``fb``, ``n`` calls each, run in alternating
    blocks of ``n // blocks`` calls (so that load on a shared machine falls on both
    alike: their ratio is what matters)."""
    per = max(1, n // blocks)
    ta = tb = 0.0
    for _ in range(blocks):
        t = time.perf_counter()
        for _ in range(per):
            fa()
        t2 = time.perf_counter()
        for _ in range(per):
            fb()
        ta += t2 - t
        tb += time.perf_counter() - t2
    return ta / (per * blocks), tb / (per * blocks)


class Atdata:
    """atdata's side (scripts/bench_runtime_atdata.py), one process for the run."""

    def __init__(self) -> None:
        python = subprocess.run(
            [str(ROOT / "scripts" / "atdata-env")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        self.proc = subprocess.Popen(
            [python, str(ROOT / "scripts" / "bench_runtime_atdata.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._read()  # {"ready": true}

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"atdata side exited ({self.proc.wait()})")
        result: dict[str, Any] = json.loads(line)
        if "error" in result:
            raise SystemExit(f"atdata side: {result['error']}")
        return result

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask(op="quit")
            except (SystemExit, BrokenPipeError, ValueError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def rate(samples: int, seconds: float) -> float:
    return samples / seconds if seconds > 0 else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--curve-mb",
        type=float,
        default=40.0,
        help="payload MB per size-curve point (default 40)",
    )
    ap.add_argument("--no-curve", action="store_true", help="skip the size curve")
    benchlib.add_json_arg(ap)
    args = ap.parse_args()
    runs = args.runs
    report = benchlib.Report(
        "runtime", settings={"runs": runs, "curve_mb": args.curve_mb}
    )
    m: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        m.setdefault(key, []).append(value)

    work = Path(tempfile.mkdtemp(prefix=".bench-runtime-", dir=ROOT))
    atdata = Atdata()
    try:
        rng = np.random.default_rng(0)
        write_samples(
            (
                Image(
                    image=rng.integers(0, 255, (3, 64, 64), dtype=np.uint8),
                    label=f"img-{i}",
                )
                for i in range(10_000)
            ),
            str(work / "d-%06d.tar"),
            maxcount=1000,
            progress=False,
        )
        url = str(work / "d-{000000..000009}.tar")

        small = Small(x=7, y=0.5, name="sample-000123")
        small_dict = small.to_dict()
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
        if sp != msgpack.packb(small_dict):
            raise SystemExit("our small payload differs from msgpack.packb's")
        src = big.data
        dst = np.empty_like(src)
        gb = src.nbytes / 1e9
        # Bare msgpack, called as directly as our bound methods are.
        bare_pack = functools.partial(msgpack.packb, small_dict)
        bare_unpack = functools.partial(msgpack.unpackb, sp)
        ours_unpack_small = functools.partial(Small.unpack, sp)
        ours_unpack_image = functools.partial(Image.unpack, ip)
        ours_unpack_big = functools.partial(Big.unpack, bp)
        ns, ni, nb = 20_000, 2_000, 3
        for _ in range(runs):
            theirs = atdata.ask(op="codec", n_small=ns, n_image=ni, n_big=nb)
            add("atdata_pack_small_us", theirs["small_pack_us"])
            add("atdata_unpack_small_us", theirs["small_unpack_us"])
            add("atdata_pack_image_us", theirs["image_pack_us"])
            add("atdata_unpack_image_us", theirs["image_unpack_us"])
            add("atdata_pack_64mib_gb_s", gb / theirs["big_pack_s"])
            add("atdata_unpack_64mib_gb_s", gb / theirs["big_unpack_s"])
            add("atdata_unpack_64mib_us", theirs["big_unpack_s"] * 1e6)
            ours_s, bare_s = paired(small.pack, bare_pack, ns)
            add("pack_small_us", ours_s * 1e6)
            add("msgpack_pack_small_us", bare_s * 1e6)
            ours_s, bare_s = paired(ours_unpack_small, bare_unpack, ns)
            add("unpack_small_us", ours_s * 1e6)
            add("msgpack_unpack_small_us", bare_s * 1e6)
            add("pack_image_us", per_call(image.pack, ni) * 1e6)
            add("unpack_image_us", per_call(ours_unpack_image, ni) * 1e6)
            add("pack_64mib_gb_s", gb / per_call(big.pack, nb))
            big_unpack_s = per_call(ours_unpack_big, nb)
            add("unpack_64mib_gb_s", gb / big_unpack_s)
            add("unpack_64mib_us", big_unpack_s * 1e6)
            add("memcpy_64mib_gb_s", gb / per_call(lambda: np.copyto(dst, src), 5))
            add("alloc_copy_64mib_gb_s", gb / per_call(src.copy, 5))

        import webdataset as wds  # type: ignore[import-untyped]

        def raw_rate(url: str) -> float:
            t = time.perf_counter()
            n = sum(1 for _ in wds.WebDataset(url, shardshuffle=False))
            return rate(n, time.perf_counter() - t)

        def our_rate(
            bound: Callable[[str], Dataset[Any]], url: str, batch: int | None
        ) -> float:
            t = time.perf_counter()
            ds = bound(url)
            if batch:
                n = sum(len(b) for b in ds.ordered(batch_size=batch))
            else:
                n = sum(1 for _ in ds.ordered())
            return rate(n, time.perf_counter() - t)

        def their_rate(cls: str, url: str, batch: int | None) -> float:
            r = atdata.ask(op="read", url=url, cls=cls, batch=batch)
            return rate(r["samples"], r["seconds"])

        for _ in range(runs):
            add("wds_read_samples_s", raw_rate(url))
            add("atdata_read_ordered_samples_s", their_rate("Image", url, None))
            add("read_ordered_samples_s", our_rate(Dataset[Image], url, None))
            add("atdata_read_batched_samples_s", their_rate("Image", url, 32))
            add("read_batched_samples_s", our_rate(Dataset[Image], url, 32))

        curve: list[tuple[int, int, int]] = []  # (size, samples, payload bytes)
        if not args.no_curve:
            for size in CURVE_SIZES:
                count = max(8, int(args.curve_mb * 1e6 // size))
                # A payload of ``size`` bytes: the array plus ~40 bytes of map,
                # keys, header and the str.
                data = np.random.default_rng(size).integers(
                    0, 255, max(1, size - 40), dtype=np.uint8
                )
                pattern = str(work / f"s{size}-%06d.tar")
                written = write_samples(
                    (Blob(data=data, key=f"k{i:06d}") for i in range(count)),
                    pattern,
                    maxcount=count,
                    maxsize=1e12,
                    progress=False,
                )
                if len(written) != 1:
                    raise SystemExit(f"size {size}: expected one shard, {written}")
                payload = len(Blob(data=data, key="k000000").pack())
                curve.append((size, count, payload))
                shard = written[0]
                for _ in range(runs):
                    w = raw_rate(shard)
                    a = their_rate("Blob", shard, None)
                    o = our_rate(Dataset[Blob], shard, None)
                    add(f"wds_read_size_{size}_samples_s", w)
                    add(f"atdata_read_size_{size}_samples_s", a)
                    add(f"read_size_{size}_samples_s", o)
                    add(f"wds_read_size_{size}_mb_s", w * payload / 1e6)
                    add(f"atdata_read_size_{size}_mb_s", a * payload / 1e6)
                    add(f"read_size_{size}_mb_s", o * payload / 1e6)
                Path(shard).unlink()
    finally:
        atdata.close()
        shutil.rmtree(work, ignore_errors=True)

    units = {
        "_us": ("µs", "lower"),
        "_gb_s": ("GB/s", "higher"),
        "_samples_s": ("samples/s", "higher"),
        "_mb_s": ("MB/s", "higher"),
    }
    for key, values in m.items():
        unit, better = next(u for s, u in units.items() if key.endswith(s))
        report.metric(key, values, unit, better=better)  # type: ignore[arg-type]
    med = {k: statistics.median(v) for k, v in m.items()}

    def row(
        measure: str, key: str, fmt: str, goal: dict[str, Any] | None = None
    ) -> None:
        report.row(
            "runtime",
            measure,
            key,
            peer=f"atdata_{key}",
            peer_name="atdata 0.7.0b1",
            fmt=fmt,
            goal=goal,
        )

    row(
        "small sample pack (µs)",
        "pack_small_us",
        ".2f",
        {"text": "≥ 1.5× atdata", "of": "speedup", "op": ">=", "target": 1.5},
    )
    report.row(
        "runtime",
        "small sample pack vs bare msgpack.packb (µs)",
        "pack_small_us",
        peer="msgpack_pack_small_us",
        peer_name="msgpack.packb",
        fmt=".2f",
        goal={
            "text": "≤ 1.3× msgpack.packb",
            "of": "time_ratio",
            "op": "<=",
            "target": 1.3,
        },
    )
    row(
        "small sample unpack (µs)",
        "unpack_small_us",
        ".2f",
        {"text": "≥ 2× atdata", "of": "speedup", "op": ">=", "target": 2.0},
    )
    row("image sample pack (µs)", "pack_image_us", ".1f")
    row("image sample unpack (µs)", "unpack_image_us", ".1f")
    row("64 MiB float32 pack (GB/s)", "pack_64mib_gb_s", ".2f")
    row(
        "64 MiB float32 unpack (µs per call; ours a zero-copy view)",
        "unpack_64mib_us",
        ",.1f",
    )
    row("read 10×1,000 ordered (samples/s)", "read_ordered_samples_s", ",.0f")
    row("read 10×1,000 batched 32 (samples/s)", "read_batched_samples_s", ",.0f")
    report.row(
        "runtime",
        "read 10×1,000 ordered vs raw webdataset iteration (samples/s)",
        "read_ordered_samples_s",
        peer="wds_read_samples_s",
        peer_name="webdataset (no decoding)",
        fmt=",.0f",
    )
    report.note(
        "64 MiB unpack is zero-copy: the array is a read-only view into the payload "
        f"(memcpy of 64 MiB: {med['memcpy_64mib_gb_s']:.1f} GB/s)."
    )
    if curve:
        report.extra["read_size_curve"] = [
            {"size": size, "samples": count, "payload_bytes": payload}
            for size, count, payload in curve
        ]
        report.note(
            "Size curve: read_size_<bytes>_samples_s / _mb_s (ours), wds_… (raw "
            "webdataset iteration, no decoding), atdata_… (atdata 0.7.0b1), one "
            f"shard of ~{args.curve_mb:g} MB (at least 8 samples) per point."
        )
    report.write(args.json)

    print(
        f"runtime benchmark, median of {runs} rounds (atdata 0.7.0b1 and bare msgpack "
        "in the same run, round by round)"
    )
    print(f"{'':38}{'atdata-gen':>13}{'atdata':>13}{'speedup':>9}")

    def show(label: str, key: str, unit: str, fmt: str, peer: str = "atdata") -> None:
        a, b = med[key], med[f"{peer}_{key}"]
        speedup = b / a if unit == " µs" else a / b
        print(
            f"{label:38}{format(a, fmt) + unit:>13}{format(b, fmt) + unit:>13}"
            f"{speedup:>8.2f}x"
        )

    show("small sample pack", "pack_small_us", " µs", ".2f")
    print(
        f"  bare msgpack.packb of the same dict: {med['msgpack_pack_small_us']:.2f} µs; "
        f"ours = {med['pack_small_us'] / med['msgpack_pack_small_us']:.2f}× it"
    )
    show("small sample unpack", "unpack_small_us", " µs", ".2f")
    print(
        f"  bare msgpack.unpackb: {med['msgpack_unpack_small_us']:.2f} µs; "
        f"ours = {med['unpack_small_us'] / med['msgpack_unpack_small_us']:.2f}× it"
    )
    show("image sample pack", "pack_image_us", " µs", ".1f")
    show("image sample unpack", "unpack_image_us", " µs", ".1f")
    show("64 MiB float32 pack", "pack_64mib_gb_s", " GB/s", ".2f")
    show("64 MiB float32 unpack", "unpack_64mib_gb_s", " GB/s", ".0f")
    print(
        f"  memcpy 64 MiB (preallocated): {med['memcpy_64mib_gb_s']:.2f} GB/s; "
        f"fresh alloc+copy: {med['alloc_copy_64mib_gb_s']:.2f} GB/s"
    )
    show("read 10x1000 ordered", "read_ordered_samples_s", "/s", ",.0f")
    show("read 10x1000 batched (32)", "read_batched_samples_s", "/s", ",.0f")
    print(
        f"  raw webdataset iteration (no decoding): {med['wds_read_samples_s']:,.0f}/s;"
        f" ours ordered = {med['read_ordered_samples_s'] / med['wds_read_samples_s']:.0%}"
        " of it"
    )
    if curve:
        print("read samples/s (MB/s) against payload size, one shard per point:")
        print(
            f"{'payload':>10}{'samples':>9}{'ours':>22}{'webdataset':>22}{'atdata':>22}"
        )
        for size, count, _ in curve:
            cells = [
                f"{med[f'{p}read_size_{size}_samples_s']:,.0f} "
                f"({med[f'{p}read_size_{size}_mb_s']:,.0f})"
                for p in ("", "wds_", "atdata_")
            ]
            print(f"{size:>10,}{count:>9,}" + "".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
