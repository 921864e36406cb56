"""Benchmark the compiler's front end on the 402 official Lexicons, in-process.

Medians over ``--runs`` (default 9) of each stage of
``atdata_gen.pipeline.compile_sources`` (its own ``timings``): load (discover, read,
decode, bound), parse+lower (Lexicon AST → IR), link (resolve, name, depth check)
and lint. Issue 17's budgets: parse+lower ≤ 100 ms, link ≤ 40 ms.

For reference, in the same run: MarshalX's ``atproto_lexicon.parser.lexicon_parse_dir``
on the same corpus (read + JSON + pydantic models; no positions, no IR, no
diagnostics), compared with our load + parse+lower.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

OFFICIAL = benchlib.ROOT.parent / "shared" / "corpus" / "lexicons" / "atproto-official"
STAGES = ("load", "parse+lower", "link", "lint")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9, help="timed runs (default 9)")
    ap.add_argument("--corpus", type=Path, default=OFFICIAL)
    ap.add_argument("--no-peer", action="store_true", help="skip MarshalX's parser")
    benchlib.add_json_arg(ap)
    args = ap.parse_args()

    from atdata_gen.pipeline import BuildOptions, compile_sources

    opts = BuildOptions([args.corpus])
    warm = compile_sources(opts)
    if warm.reporter.has_errors:
        raise SystemExit("the corpus does not compile cleanly")
    ndocs = len(warm.docs)

    peer = None
    if not args.no_peer:
        try:
            from atproto_lexicon.parser import (  # type: ignore[import-untyped]
                lexicon_parse_dir,
            )
        except ImportError:
            print("atproto_lexicon not installed: no MarshalX figure", file=sys.stderr)
        else:
            peer = lexicon_parse_dir
            if len(peer(args.corpus)) != ndocs:
                print("MarshalX parsed a different number of Lexicons", file=sys.stderr)

    runs: dict[str, list[float]] = {s: [] for s in STAGES}
    runs["total"] = []
    runs["marshalx"] = []
    for _ in range(args.runs):
        gc.collect()
        res = compile_sources(opts)
        for s in STAGES:
            runs[s].append(res.timings[s] * 1000)
        runs["total"].append(sum(res.timings[s] for s in STAGES) * 1000)
        if peer is not None:
            gc.collect()
            t0 = time.perf_counter()
            peer(args.corpus)
            runs["marshalx"].append((time.perf_counter() - t0) * 1000)
    front = [a + b for a, b in zip(runs["load"], runs["parse+lower"], strict=True)]

    report = benchlib.Report(
        "frontend", settings={"runs": args.runs, "lexicons": ndocs}
    )
    keys = {
        "load": "frontend_load_ms",
        "parse+lower": "frontend_parse_lower_ms",
        "link": "frontend_link_ms",
        "lint": "frontend_lint_ms",
        "total": "frontend_total_ms",
    }
    for stage, key in keys.items():
        report.metric(key, runs[stage], "ms", label=f"front end: {stage}")
    report.metric("frontend_load_parse_ms", front, "ms", label="load + parse+lower")
    if runs["marshalx"]:
        report.metric(
            "marshalx_parse_ms",
            runs["marshalx"],
            "ms",
            label="MarshalX lexicon_parse_dir",
        )
    report.row(
        "build",
        f"front end load, {ndocs} Lexicons (ms)",
        "frontend_load_ms",
        fmt=".0f",
    )
    report.row(
        "build",
        f"front end parse+lower, {ndocs} Lexicons (ms)",
        "frontend_parse_lower_ms",
        fmt=".0f",
        goal={"text": "≤ 100 ms", "of": "ours", "op": "<=", "target": 100},
    )
    report.row(
        "build",
        f"front end link, {ndocs} Lexicons (ms)",
        "frontend_link_ms",
        fmt=".0f",
        goal={"text": "≤ 40 ms", "of": "ours", "op": "<=", "target": 40},
    )
    report.row(
        "build", f"front end lint, {ndocs} Lexicons (ms)", "frontend_lint_ms", fmt=".0f"
    )
    if runs["marshalx"]:
        report.row(
            "build",
            f"load + parse+lower vs MarshalX's parse, {ndocs} Lexicons (ms)",
            "frontend_load_parse_ms",
            peer="marshalx_parse_ms",
            peer_name="MarshalX",
            fmt=".0f",
        )
        report.note(
            "MarshalX's lexicon_parse_dir reads, decodes and validates into pydantic "
            "models; ours also records source positions, bounds every input, lowers "
            "to the IR and reports diagnostics."
        )

    print(f"front end, {ndocs} Lexicons, medians of {args.runs} runs (ms):")
    for stage, key in keys.items():
        m = report.metrics[key]
        print(
            f"  {stage:12s} {m['median']:7.1f}  (min {m['min']:.1f}, max {m['max']:.1f})"
        )
    ours = statistics.median(front)
    print(f"  {'load+parse':12s} {ours:7.1f}")
    if runs["marshalx"]:
        p = statistics.median(runs["marshalx"])
        print(f"  {'MarshalX':12s} {p:7.1f}  (load+parse / MarshalX = {ours / p:.2f})")
    sys.stdout.flush()
    report.write(args.json)


if __name__ == "__main__":
    main()
