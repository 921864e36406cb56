"""The official Lexicon interop vectors: valid ones compile, invalid ones are rejected
with a located diagnostic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from atdata_gen.diagnostics import Reporter, Severity
from atdata_gen.pipeline import BuildOptions, build

from .conftest import INTEROP, OFFICIAL

VALID = json.loads((INTEROP / "lexicon" / "lexicon-valid.json").read_text())
INVALID = json.loads((INTEROP / "lexicon" / "lexicon-invalid.json").read_text())
CATALOG = sorted((INTEROP / "lexicon" / "catalog").glob("*.json"))


def _build(tmp_path: Path, doc: object) -> Reporter:
    src = tmp_path / "doc.json"
    src.write_text(json.dumps(doc, indent=2))
    reporter = Reporter()
    build(BuildOptions([src], "pkg", [OFFICIAL], format=False), reporter)
    return reporter


@pytest.mark.parametrize("case", VALID, ids=[c["name"] for c in VALID])
def test_valid_vector_compiles(tmp_path: Path, case: dict[str, object]) -> None:
    reporter = _build(tmp_path, case["lexicon"])
    assert not reporter.has_errors, [d.as_text() for d in reporter]


@pytest.mark.parametrize("path", CATALOG, ids=[p.stem for p in CATALOG])
def test_catalog_compiles(path: Path) -> None:
    reporter = Reporter()
    result = build(BuildOptions([path], "pkg", [OFFICIAL], format=False), reporter)
    assert not reporter.has_errors, [d.as_text() for d in reporter]
    assert result.files is not None


@pytest.mark.parametrize("case", INVALID, ids=[c["name"] for c in INVALID])
def test_invalid_vector_rejected_with_location(
    tmp_path: Path, case: dict[str, object]
) -> None:
    reporter = _build(tmp_path, case["lexicon"])
    errors = [d for d in reporter if d.severity is Severity.ERROR]
    assert errors, f"{case['name']} was accepted"
    for d in errors:
        assert d.span.path.endswith("doc.json")
        assert d.span.line >= 1 and d.span.column >= 1
        assert d.rule.startswith("LEX_")
