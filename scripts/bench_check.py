"""Benchmark ``atdata-gen check`` (target: under 1 s for the whole official corpus).

Prints the median of ``--runs`` timings for: the corpus against itself, and the
corpus against a copy with 50 seeded random edits (the oracle's mutations: property
deleted/added/retyped, bounds, formats, unions, refs, record keys). Each is timed
in-process (compile both sides + compare + policy) and as a whole CLI process.
No other Lexicon breaking-change checker runs here (indigo's ``goat lex breaking``
is Go and needs the network to build), so there is no peer ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from atdata_gen.checks.runner import run_check
from atdata_gen.pipeline import BuildOptions, compile_sources
from atdata_gen.testing.oracle import mutate

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
OFFICIAL = CORPUS / "lexicons" / "atproto-official"


def edited_copy(dest: Path, edits: int, seed: int) -> int:
    """Copy the corpus to ``dest`` and apply ``edits`` edits that keep it
    compiling; returns how many findings they cause (for the report)."""
    shutil.copytree(OFFICIAL, dest)
    rng = random.Random(seed)
    files = sorted(dest.rglob("*.json"))
    done = 0
    while done < edits:
        path = rng.choice(files)
        original = path.read_text()
        m = mutate(json.loads(original), rng)
        if m is None:
            continue
        path.write_text(json.dumps(m.doc, indent=2))
        if compile_sources(BuildOptions([dest])).reporter.has_errors:
            path.write_text(original)
            continue
        done += 1
    return done


def median_time(fn: object, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--edits", type=int, default=50)
    args = ap.parse_args()
    n_files = len(list(OFFICIAL.rglob("*.json")))
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "edited"
        edited_copy(copy, args.edits, seed=2026)
        found = run_check([copy], [str(OFFICIAL)]).findings
        breaking = sum(1 for f in found if f.breaks)
        print(
            f"corpus: {n_files} Lexicons; edited copy: {args.edits} edits → "
            f"{len(found)} findings ({breaking} breaking)"
        )
        cli = [sys.executable, "-m", "atdata_gen.cli", "check"]
        rows = [
            ("self, in-process", lambda: run_check([OFFICIAL], [str(OFFICIAL)])),
            ("50 edits, in-process", lambda: run_check([copy], [str(OFFICIAL)])),
            (
                "self, CLI process",
                lambda: subprocess.run(
                    [*cli, str(OFFICIAL), "--against", str(OFFICIAL)],
                    capture_output=True,
                    check=True,
                ),
            ),
            (
                "50 edits, CLI process",
                lambda: subprocess.run(
                    [*cli, str(copy), "--against", str(OFFICIAL), "--format", "json"],
                    capture_output=True,
                    check=False,
                ),
            ),
        ]
        for label, fn in rows:
            t = median_time(fn, args.runs)
            verdict = "OK" if t < 1.0 else "over target"
            print(
                f"{label:24} median {t:.3f} s over {args.runs} runs  ({verdict}: <1 s)"
            )


if __name__ == "__main__":
    main()
