"""Benchmark: reading shards through a chain of three lenses, next to reading the
same shards directly (``Dataset[V1]``), in the same run; medians of ``--runs``.

The chain is the three kinds a migration meets: V1 → V2 a registered ``@lens``
(rename ``label`` → ``caption``), V2 → V3 a structural lens (added optional field),
V3 → V4 a lens bound from a lens record (``RecordLens``, as a generated stub uses
it; the implementation uses another generated package's classes, so samples are
converted at the boundary). Shards: 10 × 1,000 samples (3×64×64 uint8 image, str
label, int index). Also the in-memory cost of the composed getter per sample.
Target: overhead (1 − chain rate / direct rate) under 20 %. ``--json PATH`` writes
the benchlib part (table ``lenses``; the "peer" of a chain row is direct reading).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "runtime"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from atdata_runtime.lenses import LensGraph, lens
from atdata_runtime.lenses.records import CodeReference, RecordLens
from atdata_runtime.samples import FieldSpec, PackableSample
from atdata_runtime.shards import Dataset, write_samples


def _image_class(name: str, version: str, label: str, extra: tuple[str, ...]) -> Any:
    fields = [
        FieldSpec("image", "image", "ndarray", dtype="uint8"),
        FieldSpec(label, label, "str"),
        FieldSpec("index", "index", "int"),
        *(FieldSpec(e, e, "int", optional=True) for e in extra),
    ]
    ns = {
        "__annotations__": {
            "image": Any,
            label: str,
            "index": int,
            **{e: "int | None" for e in extra},
        },
        **{e: None for e in extra},
        "schema_name": "bench.Image",
        "schema_version": version,
        "sample_fields": tuple(fields),
    }
    cls = type(name, (PackableSample,), ns)
    return dataclasses.dataclass(kw_only=True, eq=False)(cls)


V1 = _image_class("V1", "1.0.0", "label", ())
V2 = _image_class("V2", "2.0.0", "caption", ())
V3 = _image_class("V3", "2.1.0", "caption", ("width",))
V4 = _image_class("V4", "3.0.0", "text", ("width",))
V3_OTHER = _image_class("V3", "2.1.0", "caption", ("width",))  # another package's
V4_OTHER = _image_class("V4", "3.0.0", "text", ("width",))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--shards", type=int, default=10)
    ap.add_argument("--per-shard", type=int, default=1000)
    benchlib.add_json_arg(ap)
    args = ap.parse_args()

    @lens(graph=LensGraph())
    def v1_to_v2(s: V1) -> V2:  # type: ignore[valid-type]
        return V2(image=s.image, caption=s.label, index=s.index)

    @v1_to_v2.putter
    def v1_to_v2_put(v: V2, s: V1) -> V1:  # type: ignore[valid-type]
        return V1(image=v.image, label=v.caption, index=v.index)

    impl = types.ModuleType("bench_lens_impl")

    def up(s: V3_OTHER) -> V4_OTHER:  # type: ignore[valid-type]
        return V4_OTHER(image=s.image, text=s.caption, index=s.index, width=s.width)

    def down(v: V4_OTHER, s: V3_OTHER) -> V3_OTHER:  # type: ignore[valid-type]
        return V3_OTHER(image=v.image, caption=v.text, index=v.index, width=v.width)

    impl.up, impl.down = up, down  # type: ignore[attr-defined]
    up.__module__ = down.__module__ = impl.__name__
    sys.modules[impl.__name__] = impl

    def same_up(s: V3) -> V4:  # type: ignore[valid-type]
        return V4(image=s.image, text=s.caption, index=s.index, width=s.width)

    def same_down(v: V4, s: V3) -> V3:  # type: ignore[valid-type]
        return V3(image=v.image, caption=v.text, index=v.index, width=v.width)

    impl.same_up, impl.same_down = same_up, same_down  # type: ignore[attr-defined]
    same_up.__module__ = same_down.__module__ = impl.__name__
    ref = "0" * 40
    graphs = {}
    for label, (get, put) in {
        "same package": ("same_up", "same_down"),
        "other package": ("up", "down"),
    }.items():
        bound = RecordLens(
            V3,
            V4,
            CodeReference("https://example.org/x", ref, f"bench_lens_impl:{get}"),
            CodeReference("https://example.org/x", ref, f"bench_lens_impl:{put}"),
            name="v3_to_v4",
            record="bench",
            allow=["bench_lens_impl"],
        )
        g = LensGraph()
        g.register(v1_to_v2)
        g.add_class(V2, V3)  # V2 → V3: structural (added optional field)
        g.register(bound.lens())
        graphs[label] = g
        chain = g.find(V1, V4)
        assert chain.name.count("|") == 2, chain.name  # three lenses

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-lens-") as tmp:
        samples = (
            V1(
                image=rng.integers(0, 255, (3, 64, 64), np.uint8),
                label=f"sample {i}",
                index=i,
            )
            for i in range(args.shards * args.per_shard)
        )
        shards = write_samples(
            samples,
            str(Path(tmp) / "v1-%06d.tar"),
            maxcount=args.per_shard,
            progress=False,
        )
        n = args.shards * args.per_shard
        rates: dict[str, list[float]] = {"direct": []}
        ratios: dict[str, list[float]] = {}
        # One untimed pass of each first: the first read pays lazy imports and a cold
        # page cache, which would otherwise land on the direct row alone.
        assert sum(1 for _ in Dataset[V1](shards, progress=False)) == n
        for g in graphs.values():
            ds = Dataset[V1](shards, progress=False).as_type(V4, graph=g)
            assert sum(1 for _ in ds) == n
        for _ in range(args.runs):  # interleaved, so drift hits every row alike
            t0 = time.perf_counter()
            count = sum(1 for _ in Dataset[V1](shards, progress=False))
            rates["direct"].append(count / (time.perf_counter() - t0))
            assert count == n
            for label, g in graphs.items():
                ds = Dataset[V1](shards, progress=False).as_type(V4, graph=g)
                t0 = time.perf_counter()
                count = sum(1 for _ in ds)
                rates.setdefault(label, []).append(count / (time.perf_counter() - t0))
                assert count == n
                ratios.setdefault(label, []).append(
                    rates[label][-1] / rates["direct"][-1]
                )
        one = V1(image=np.zeros((3, 64, 64), np.uint8), label="x", index=0)
        per: dict[str, list[float]] = {}
        for label, g in graphs.items():
            chain = g.find(V1, V4)
            last = chain.getter(one)
            assert type(last) is V4 and last.text == "x"
            for _ in range(args.runs):
                t0 = time.perf_counter()
                for _ in range(20000):
                    chain.getter(one)
                per.setdefault(label, []).append(
                    (time.perf_counter() - t0) / 20000 * 1e6
                )

    med = statistics.median
    print(
        f"lens benchmark, median of {args.runs} runs, {n} samples in "
        f"{args.shards} shards"
    )
    print(f"  chain: {chain.name}")
    print(f"  {'direct Dataset[V1]':44} {med(rates['direct']):10,.0f} samples/s")
    for label in graphs:
        ratio = med(ratios[label])
        print(
            f"  {'3 lenses .as_type(V4), record lens ' + label:44} "
            f"{med(rates[label]):10,.0f} samples/s   ratio {ratio:.3f}   "
            f"overhead {1 - ratio:6.1%} (target < 20%)   "
            f"getter {med(per[label]):.2f} µs/sample in memory"
        )

    report = benchlib.Report(
        "lenses",
        settings={
            "runs": args.runs,
            "shards": args.shards,
            "per_shard": args.per_shard,
        },
    )
    report.metric(
        "direct_sps",
        rates["direct"],
        "samples/s",
        better="higher",
        label="direct Dataset[V1]",
    )
    keys = {"same package": "same", "other package": "other"}
    for label, key in keys.items():
        report.metric(
            f"chain_{key}_sps",
            rates[label],
            "samples/s",
            better="higher",
            label=f"3 lenses .as_type(V4), record lens {label}",
        )
        report.metric(
            f"chain_{key}_vs_direct",
            ratios[label],
            "ratio",
            better="higher",
            label=f"chain / direct rate, per run (record lens {label})",
        )
        report.metric(
            f"getter_{key}_us",
            per[label],
            "µs",
            better="lower",
            label=f"composed getter per sample in memory (record lens {label})",
        )
    report.row("lenses", "direct `Dataset[V1]`", "direct_sps", fmt=",.0f")
    for label, key in keys.items():
        report.row(
            "lenses",
            f"3 lenses, record lens in {'the same' if key == 'same' else 'another'} package",
            f"chain_{key}_sps",
            peer="direct_sps",
            peer_name="direct",
            fmt=",.0f",
            goal={
                "text": "overhead < 20 % (≥ 0.8× direct)",
                "of": "speedup",
                "op": ">=",
                "target": 0.8,
            },
        )
    for label, key in keys.items():
        report.row(
            "lenses",
            f"composed getter in memory, record lens {label} (µs/sample)",
            f"getter_{key}_us",
            fmt=".2f",
        )
    report.note(
        f"chain: {chain.name}; {n} samples in {args.shards} shards, interleaved runs"
    )
    report.write(args.json)


if __name__ == "__main__":
    main()
