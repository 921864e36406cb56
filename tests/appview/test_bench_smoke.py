"""``scripts/bench_appview`` runs end to end on tiny sizes: our AppView and
atdata-app 0.4.0b1 (its venv, ``scripts/atdata-app-env``) both seeded with the
same records and served, the load generator's requests all answered 200, the fold
without dead letters, the peer's tables holding every record, and a verified
backfill of the real local PDS indexing every record. No figure is asserted
(performance lives in the benchmark's own output)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_appview_quick_run_answers_every_request(tmp_path: Path) -> None:
    out = tmp_path / "appview.json"
    argv = [
        sys.executable, str(ROOT / "scripts" / "bench_appview.py"), "--quick",
        "--entries", "300", "--schemas", "40", "--lenses", "10", "--publishers", "6",
        "--duration", "0.5", "--latency-duration", "0.3", "--warmup", "0.3",
        "--idle-seconds", "0.2", "--workload-size", "200", "--repos", "4",
        "--big-repos", "1", "--big-records", "6", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())

    counts = result["seed"]["counts"]
    assert counts["science.alt.dataset.entry"] == 300
    assert counts["science.alt.dataset.schema"] == 40
    fold = result["fold"]
    assert fold["counts"]["appview_entries"] == 300
    assert fold["counts"]["appview_schemas"] == 40
    assert fold["counts"]["appview_dead_letters"] == 0
    assert result["peer_seed"]["failed"] == 0
    assert result["peer_seed"]["counts"]["entries"] == 300

    for target, methods in (
        ("ours", ["searchDatasets", "getEntry", "resolveSchema", "getLensPath",
                  "resolveSchemaByHandle"]),
        ("peer", ["searchDatasets", "getEntry", "resolveSchema"]),
    ):  # fmt: skip
        for kind in ("load", "latency"):
            got = result[kind][target]
            assert sorted(got) == sorted(methods), (kind, target, sorted(got))
            for m in methods:
                assert got[m]["errors_total"] == 0, (kind, target, m)
                assert got[m]["requests"]["median"] > 0, (kind, target, m)
    assert "getLensPath" not in result["load"]["peer"]

    backfill = result["backfill"]
    assert backfill["verified"] is True
    assert all(r["records"] == 4 * 3 for r in backfill["runs"])
    assert all(r["records"] == 4 * 3 + 6 for r in result["backfill_all"]["runs"])
    assert {g["goal"].split(":")[0] for g in result["goals"]} >= {
        "searchDatasets",
        "getEntry",
        "resolveSchema",
    }
    assert "goals:" in done.stdout
