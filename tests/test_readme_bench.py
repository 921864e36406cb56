"""The README's generated blocks equal what their sources produce: every benchmark
block (``<!-- bench-*:start -->``) is what scripts/bench_tables.py makes from the
committed bench/results.json, and the AppView's rule table comes from its rule
registries. A figure can never be hand-copied and drift: ./scripts/update-golden
(or ./scripts/bench) rewrites them."""

from __future__ import annotations

import copy
import json
import re
import runpy
from typing import Any

from .conftest import ROOT

RESULTS = ROOT / "bench" / "results.json"


def _tables() -> dict[str, Any]:
    return runpy.run_path(str(ROOT / "scripts" / "bench_tables.py"))


def _readme() -> str:
    return (ROOT / "README.md").read_text()


def _block(name: str, readme: str | None = None) -> str:
    text = _readme() if readme is None else readme
    start, end = f"<!-- {name}:start -->\n", f"\n<!-- {name}:end -->"
    assert start in text and end in text, f"README has no {name} block"
    return text.split(start, 1)[1].split(end, 1)[0]


def _results() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(RESULTS.read_text())
    return data


def test_every_readme_benchmark_block_is_the_results_file() -> None:
    tables = _tables()
    readme = _readme()
    names = tables["blocks_in"](readme)
    assert "bench-goals" in names and "bench-appview" in names, names
    results = _results()
    for name in names:
        assert _block(name, readme) == tables["block"](results, name), (
            f"README block {name} is stale: run ./scripts/update-golden"
        )
    assert tables["render"](readme) == readme


def test_every_table_of_the_results_has_a_readme_block() -> None:
    tables = _tables()
    names = set(tables["blocks_in"](_readme()))
    missing = [t for t in tables["tables"](_results()) if f"bench-{t}" not in names]
    assert not missing, f"tables with no README block: {missing}"


def test_no_part_stores_a_verdict_and_every_goal_is_recomputed() -> None:
    """Goals are specs (text, of, op, target); the README's met cells are what
    the medians give, computed here independently of the generator."""
    tables = _tables()
    results = _results()
    goals = _block("bench-goals")
    seen = 0
    for part in results["parts"].values():
        for row in part["rows"]:
            goal = row.get("goal")
            if not goal:
                continue
            assert set(goal) == {"text", "of", "op", "target"}, goal
            ours = part["metrics"][row["ours"]]
            o = ours["median"]
            if goal["of"] == "ours":
                value = o
            else:
                p = part["metrics"][row["peer"]]["median"]
                faster = p / o if ours["better"] == "lower" else o / p
                value = o / p if goal["of"] == "time_ratio" else faster
            met = (
                value <= goal["target"]
                if goal["op"] == "<="
                else value >= goal["target"]
            )
            assert tables["goal_met"](part, row) is met, (part["benchmark"], row)
            cell = f"| {row['measure']} | {goal['text']} | "
            line = next(ln for ln in goals.splitlines() if cell in ln)
            assert line.endswith("| yes |" if met else "| **no** |"), line
            seen += 1
    assert seen > 0, "bench/results.json has no goal"


def test_a_goal_verdict_follows_the_medians() -> None:
    """Moving a median across the target flips the rendered verdict: it is
    computed from the metrics, not stored anywhere."""
    tables = _tables()
    part = {
        "benchmark": "demo",
        "commit": "0" * 40,
        "date": "2026-01-01T00:00:00+00:00",
        "machine": {"nproc": 2, "load_before": [1.0], "load_after": [1.0]},
        "settings": {"runs": 3},
        "metrics": {
            "ours_s": {"median": 1.0, "min": 0.9, "max": 1.1, "runs": [0.9, 1.0, 1.1],
                       "unit": "s", "better": "lower", "label": ""},
            "peer_s": {"median": 2.0, "min": 2.0, "max": 2.0, "runs": [2.0],
                       "unit": "s", "better": "lower", "label": ""},
        },
        "rows": [{"table": "demo", "measure": "thing", "ours": "ours_s",
                  "peer": "peer_s", "peer_name": "Peer", "fmt": ".2f",
                  "goal": {"text": "≤ 0.6× Peer", "of": "time_ratio", "op": "<=",
                           "target": 0.6}}],
        "notes": ["a note"],
    }  # fmt: skip
    results = {"parts": {"demo": part}}
    text = tables["block"](results, "bench-demo")
    assert (
        "| thing | 1.00 s (0.90–1.10) | 2.00 s (Peer) | 2.00× faster | ≤ 0.6× Peer | yes (0.50) |"
        in text
    )
    assert "- a note" in text
    slower = copy.deepcopy(results)
    slower["parts"]["demo"]["metrics"]["ours_s"]["median"] = 1.5
    assert "**no** (0.75)" in tables["block"](slower, "bench-demo")
    assert "1.33× faster" in tables["block"](slower, "bench-demo")
    slowest = copy.deepcopy(results)
    slowest["parts"]["demo"]["metrics"]["ours_s"]["median"] = 4.0
    assert "2.00× slower" in tables["block"](slowest, "bench-demo")
    speed = copy.deepcopy(results)
    speed["parts"]["demo"]["rows"][0]["goal"] = {
        "text": "≥ 1.5× Peer", "of": "speedup", "op": ">=", "target": 1.5,
    }  # fmt: skip
    assert "yes (2.00)" in tables["block"](speed, "bench-demo")
    assert re.search(r"1 of 1 goals met", tables["block"](speed, "bench-goals"))


def test_readme_appview_rule_table_is_the_catalogue() -> None:
    from atdata_appview.cli import rules_table

    assert _block("appview-rules") == rules_table("markdown"), (
        "README AppView rule table is stale: run ./scripts/update-golden"
    )
