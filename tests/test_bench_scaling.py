"""scripts/bench_scaling.py's inputs and fits: the multiplied corpus is the official
one plus renamed copies that compile on their own with no diagnostic and no clash,
and the log-log fit finds the exponent it was given."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import pytest
from atdata_gen.pipeline import BuildOptions, compile_sources

from .conftest import OFFICIAL, ROOT


def _scaling() -> dict[str, Any]:
    return runpy.run_path(str(ROOT / "scripts" / "bench_scaling.py"))


def test_the_doubled_corpus_compiles_clean_with_every_name_renamed(
    tmp_path: Path,
) -> None:
    scaling = _scaling()
    n = scaling["multiplied_corpus"](tmp_path, 2)
    originals = sorted(OFFICIAL.rglob("*.json"))
    assert n == 2 * len(originals)
    ids = [json.loads(p.read_text())["id"] for p in tmp_path.rglob("*.json")]
    assert len(set(ids)) == n
    official = {json.loads(p.read_text())["id"] for p in originals}
    assert {i for i in ids if not i.startswith("x2.")} == official
    assert {i.removeprefix("x2.") for i in ids if i.startswith("x2.")} == official
    # Every ref of a copy points into the copy: nothing of it names the original.
    for path in (tmp_path / "x2").rglob("*.json"):
        text = path.read_text()
        for nsid in ("app.bsky.actor.defs", "com.atproto.repo.strongRef"):
            assert f'"{nsid}' not in text, (path, nsid)
    result = compile_sources(BuildOptions([tmp_path]))
    assert len(result.reporter) == 0, list(result.reporter)[:5]


def test_a_copy_alone_compiles(tmp_path: Path) -> None:
    """The renamed copy links by itself: no ref escapes to the original names."""
    scaling = _scaling()
    scaling["multiplied_corpus"](tmp_path, 2)
    result = compile_sources(BuildOptions([tmp_path / "x2"]))
    assert not result.reporter.has_errors


def test_loglog_fit_recovers_the_exponent() -> None:
    scaling = _scaling()
    xs = [402.0, 804.0, 1608.0]
    b, r2 = scaling["loglog_fit"](xs, [3.0 * x**1.5 for x in xs])
    assert b == pytest.approx(1.5) and r2 == pytest.approx(1.0)
    note = scaling["describe_fit"]("t", xs, [0.5 + 0.002 * x for x in xs])
    assert "near-linear" in note and "0.50 s + 2 ms per item" in note
    assert "super-linear" in scaling["describe_fit"]("t", xs, [x**1.5 for x in xs])
    with pytest.raises(ValueError):
        scaling["loglog_fit"]([1.0], [1.0])
