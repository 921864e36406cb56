"""Benchmark: whole-process timings of ``atdata-gen build`` against MarshalX's
``atproto gen models`` (the atproto SDK's generator), median of ``--runs`` runs,
interleaved so that both see the same machine load.

* cold build: empty output directory, all 402 official Lexicons;
* no-op check: ``build --check`` on an up-to-date output (manifest fast path);
* MarshalX: ``atproto gen --lexicon-dir … models --output-dir …``.

Output goes to a directory on the same file system as this repository.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL = ROOT.parent / "shared" / "corpus" / "lexicons" / "atproto-official"
BIN = Path(sys.executable).parent


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix=".bench-build-", dir=ROOT))
    try:
        ours = [
            str(BIN / "atdata-gen"),
            "build",
            str(OFFICIAL),
            "--out",
            str(work / "ours"),
            "--package",
            "bench_pkg",
            "-q",
        ]
        theirs = [
            str(BIN / "atproto"),
            "gen",
            "--lexicon-dir",
            str(OFFICIAL),
            "models",
            "--output-dir",
            str(work / "marshalx"),
        ]
        cold, noop, mx = [], [], []
        for _ in range(args.runs):
            shutil.rmtree(work / "ours", ignore_errors=True)
            cold.append(timed(ours))
            noop.append(timed([*ours, "--check"]))
            shutil.rmtree(work / "marshalx", ignore_errors=True)
            (work / "marshalx").mkdir()
            mx.append(timed(theirs))
        n_ours = sum(1 for _ in (work / "ours").rglob("*.py"))
        n_mx = sum(1 for _ in (work / "marshalx").rglob("*.py"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = statistics.median
    print(
        f"build of {len(list(OFFICIAL.rglob('*.json')))} official Lexicons, "
        f"median of {args.runs} whole-process runs"
    )
    print(
        f"  atdata-gen cold build        {med(cold):6.2f} s  ({n_ours} files)  "
        f"runs: {', '.join(f'{t:.2f}' for t in cold)}"
    )
    print(
        f"  atdata-gen no-op --check     {med(noop):6.2f} s  "
        f"runs: {', '.join(f'{t:.2f}' for t in noop)}"
    )
    print(
        f"  MarshalX atproto gen models  {med(mx):6.2f} s  ({n_mx} files)  "
        f"runs: {', '.join(f'{t:.2f}' for t in mx)}"
    )
    print(f"  ratio cold build / MarshalX: {med(cold) / med(mx):.2f}")


if __name__ == "__main__":
    main()
