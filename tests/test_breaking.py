"""One fixture case per compatibility rule: ``tests/breaking/<RULE>/{previous,
current}/`` must produce exactly ``expected.txt`` (and contain the rule), and
``tests/breaking/<RULE>/silent/`` — a near miss — must not fire the rule.

Regenerate the expectations with ``./scripts/update-golden`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from atdata_gen.checks.compat import COMPAT_RULES
from atdata_gen.checks.policy import CheckPolicy
from atdata_gen.checks.report import render_findings
from atdata_gen.checks.runner import run_check

HERE = Path(__file__).parent / "breaking"
UPDATE = bool(os.environ.get("ATDATA_GEN_UPDATE_GOLDEN"))


def _render(case: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(case)
    result = run_check([Path("current")], ["previous"])
    return render_findings(result.findings, CheckPolicy(), "text")


def _check(path: Path, text: str) -> None:
    if UPDATE:
        path.write_text(text, encoding="utf-8")
    assert path.read_text(encoding="utf-8") == text, f"{path} (./scripts/update-golden)"


def test_every_rule_has_a_fixture() -> None:
    assert sorted(p.name for p in HERE.iterdir() if p.is_dir()) == sorted(COMPAT_RULES)


@pytest.mark.parametrize("rule", sorted(COMPAT_RULES))
def test_rule_fires_exactly(rule: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text = _render(HERE / rule, monkeypatch)
    assert f" {rule} " in text
    _check(HERE / rule / "expected.txt", text)


@pytest.mark.parametrize("rule", sorted(COMPAT_RULES))
def test_rule_stays_silent_on_a_near_miss(
    rule: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _render(HERE / rule / "silent", monkeypatch)
    assert f" {rule} " not in text
    _check(HERE / rule / "silent" / "expected.txt", text)
