"""The ingestion part of ``scripts/run-example`` works as the README says: a
private PostgreSQL cluster, the local PDS, ``atdata-ingest run`` and ``serve``,
and a typed subscription that sees the schema record's create, update and
delete through the consumer API, then a clean stop (exit 0)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ..conftest import ROOT


@pytest.mark.slow
def test_the_ingestion_demo_runs_end_to_end() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "example" / "ingest_demo.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "Create at://did:plc:" in out and "verified=True" in out
    assert "Update at://" in out and "description='Cell crops, 64x64'" in out
    assert "Delete at://" in out
    assert "GET /events cursor:" in out and "events: 3" in out
    assert '"status": "ok"' in out and '"dead_letters": 0' in out
    assert "ingester stopped cleanly, exit status 0" in out
