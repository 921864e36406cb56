"""The compatibility oracle at scale: seeded random edits of official record
Lexicons, each judged with data (see :mod:`atdata_gen.testing.oracle`). Prints how
many pairs and records ran, and every failure (the checker was wrong)."""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from atdata_gen.testing.oracle import Report, check_pair, compile_side, mutate

OFFICIAL = (
    Path(__file__).resolve().parent.parent.parent
    / "shared"
    / "corpus"
    / "lexicons"
    / "atproto-official"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mutations", type=int, default=5, help="edits per Lexicon")
    ap.add_argument(
        "--targets", default="", help="NSIDs (default: every record Lexicon)"
    )
    ap.add_argument("--seed", default="oracle")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        previous = compile_side([OFFICIAL], root, "official")
        docs = {s.nsid: Path(s.origin.path) for s in previous.model.schemas}
        targets = (
            args.targets.split(",")
            if args.targets
            else sorted(
                nsid
                for nsid, path in docs.items()
                if json.loads(path.read_text())["defs"].get("main", {}).get("type")
                == "record"
            )
        )
        report = Report()
        for nsid in targets:
            original = json.loads(docs[nsid].read_text())
            rng = random.Random(f"{args.seed}:{nsid}")
            for _ in range(args.mutations):
                mutation = mutate(original, rng)
                if mutation is not None:
                    check_pair(previous, OFFICIAL, original, mutation, root, report)
    print(f"{len(targets)} Lexicons × {args.mutations} edits: {report.summary()}")
    print(f"{time.perf_counter() - t0:.1f} s")
    for failure in report.failures:
        print("FAIL", failure)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
