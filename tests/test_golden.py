"""Golden tests: small input cases → expected output trees, and error cases →
expected diagnostics. Update every expectation with one command:

    ./scripts/update-golden
"""

from __future__ import annotations

import difflib
import os
import shutil
from pathlib import Path

import pytest
from atdata_gen.diagnostics import Reporter
from atdata_gen.pipeline import BuildOptions, build

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("ATDATA_GEN_UPDATE_GOLDEN") == "1"
HINT = "\nIf the change is intended, run: ./scripts/update-golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "input").is_dir())
ERRORS = sorted(p.name for p in (GOLDEN / "errors").iterdir())


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text(encoding="utf-8")
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _diff(expected: dict[str, str], actual: dict[str, str]) -> str:
    out = []
    for rel in sorted(set(expected) | set(actual)):
        a, b = expected.get(rel), actual.get(rel)
        if a != b:
            out.extend(
                difflib.unified_diff(
                    (a or "").splitlines(keepends=True),
                    (b or "").splitlines(keepends=True),
                    f"expected/{rel}",
                    f"actual/{rel}",
                )
            )
    return "".join(out)


@pytest.mark.parametrize("case", CASES)
def test_golden_output(case: str) -> None:
    root = GOLDEN / case
    reporter = Reporter()
    result = build(BuildOptions([root / "input"], "golden", jobs=1), reporter)
    assert result.files is not None, [d.as_text() for d in reporter]
    expected_root = root / "expected"
    if UPDATE:
        shutil.rmtree(expected_root, ignore_errors=True)
        for rel, text in result.files.items():
            (expected_root / rel).parent.mkdir(parents=True, exist_ok=True)
            (expected_root / rel).write_text(text, encoding="utf-8")
    expected = _tree(expected_root)
    assert expected == result.files, _diff(expected, result.files) + HINT


def _render(reporter: Reporter, root: Path) -> str:
    lines = []
    for d in reporter:
        text = d.as_text().replace(str(root) + "/", "")
        lines.append(text)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("case", ERRORS)
def test_golden_diagnostics(case: str) -> None:
    root = GOLDEN / "errors" / case
    reporter = Reporter()
    result = build(
        BuildOptions([root / "input"], "golden", jobs=1, format=False), reporter
    )
    assert result.files is None, "an error case must not produce output"
    actual = _render(reporter, root)
    expected_path = root / "expected.txt"
    if UPDATE:
        expected_path.write_text(actual, encoding="utf-8")
    expected = expected_path.read_text(encoding="utf-8")
    assert actual == expected, (
        "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                "expected.txt",
                "actual",
            )
        )
        + HINT
    )
