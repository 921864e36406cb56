"""The compatibility oracle in CI (bounded): the checker's verdicts are checked with
data generated under one side and validated by the generated models of the other.

* every rule fixture in ``tests/breaking`` with data-bearing defs: each breaking
  finding has a counterexample, each compatible direction holds;
* randomly mutated official Lexicons (seeded edits of real records);
* the oracle itself can fail: with a rule's directions deliberately wrong, it
  reports the lie.

``scripts/check_oracle`` runs the same oracle on many more pairs and prints the
counts.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
from atdata_gen.checks import compat
from atdata_gen.checks.compat import COMPAT_RULES, Direction
from atdata_gen.ir.model import DefId
from atdata_gen.testing.oracle import (
    Report,
    Side,
    check_pair,
    compile_side,
    deleted_properties,
    judge,
    mutate,
    object_defs,
)

from .conftest import OFFICIAL, require_corpus

BREAKING = Path(__file__).parent / "breaking"
LEXICON_RULES = sorted(
    p.name
    for p in BREAKING.iterdir()
    if (p / "previous" / "doc.json").exists()
    and object_defs(json.loads((p / "previous" / "doc.json").read_text()))
)
TARGETS = [
    "app.bsky.feed.post",
    "app.bsky.actor.profile",
    "app.bsky.graph.list",
    "app.bsky.feed.threadgate",
    "app.bsky.graph.starterpack",
    "app.bsky.labeler.service",
]
MUTATIONS_PER_TARGET = 3


def _judge_fixture(case: Path, root: Path) -> Report:
    prev = compile_side([case / "previous"], root, "fxp")
    curr = compile_side([case / "current"], root, "fxc")
    docs = [
        json.loads((case / s / "doc.json").read_text()) for s in ("previous", "current")
    ]
    defs = {DefId("com.example.doc", n) for d in docs for n, _ in object_defs(d)}
    gone = deleted_properties(docs[0], docs[1])
    report = Report()
    judge(prev, curr, defs, defs, gone, report, case.name)
    return report


@pytest.mark.parametrize("rule", LEXICON_RULES)
def test_rule_fixture_verdicts_hold_on_data(rule: str, tmp_path: Path) -> None:
    report = _judge_fixture(BREAKING / rule, tmp_path)
    assert report.failures == []
    assert report.records > 0
    if COMPAT_RULES[rule].breaks:
        assert report.witnessed >= 1, report.summary()


@pytest.fixture(scope="module")
def official_side(tmp_path_factory: pytest.TempPathFactory) -> Side:
    require_corpus()
    return compile_side([OFFICIAL], tmp_path_factory.mktemp("oracle"), "official")


@pytest.mark.parametrize("nsid", TARGETS)
def test_mutated_official_lexicons(
    nsid: str, official_side: Side, tmp_path: Path
) -> None:
    original = json.loads((OFFICIAL / (nsid.replace(".", "/") + ".json")).read_text())
    rng = random.Random(nsid)
    report = Report()
    done = 0
    while done < MUTATIONS_PER_TARGET:
        mutation = mutate(original, rng)
        assert mutation is not None
        check_pair(official_side, OFFICIAL, original, mutation, tmp_path, report)
        done += 1
    assert report.failures == [], report.summary()
    assert report.pairs + report.skipped == MUTATIONS_PER_TARGET
    assert report.records > 0


def _lie(monkeypatch: pytest.MonkeyPatch, rule: str, breaks: Direction) -> None:
    monkeypatch.setitem(
        COMPAT_RULES, rule, dataclasses.replace(COMPAT_RULES[rule], breaks=breaks)
    )
    monkeypatch.setattr(compat, "_BY_TARGET", {})
    monkeypatch.setattr(compat, "_APPLICABLE", {})  # the walker's per-pair cache


def test_oracle_catches_a_missed_break(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _lie(monkeypatch, "FIELD_REQUIRED_ADDED", Direction.NONE)
    report = _judge_fixture(BREAKING / "FIELD_REQUIRED_ADDED", tmp_path)
    assert any("BACKWARD-compatible" in f for f in report.failures), report.failures


def test_oracle_catches_a_false_alarm(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _lie(monkeypatch, "FIELD_OPTIONAL_ADDED", Direction.FULL)
    report = _judge_fixture(BREAKING / "FIELD_OPTIONAL_ADDED", tmp_path)
    assert any("no counterexample" in f for f in report.failures), report.failures
