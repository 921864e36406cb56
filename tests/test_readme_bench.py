"""The README's generated blocks equal what their sources produce: the benchmark
tables come from the committed results files (bench/*.json, scripts/bench_tables.py),
and the AppView's rule table from its rule registries. A figure can never be
hand-copied and drift: ./scripts/update-golden rewrites them."""

from __future__ import annotations

import runpy

from .conftest import ROOT


def _block(name: str) -> str:
    readme = (ROOT / "README.md").read_text()
    start, end = f"<!-- {name}:start -->\n", f"\n<!-- {name}:end -->"
    assert start in readme and end in readme, f"README has no {name} block"
    return readme.split(start, 1)[1].split(end, 1)[0]


def test_readme_appview_benchmark_is_the_results_file() -> None:
    tables = runpy.run_path(str(ROOT / "scripts" / "bench_tables.py"))
    assert _block("bench-appview") == tables["BLOCKS"]["bench-appview"](), (
        "README AppView benchmark table is stale: run ./scripts/update-golden"
    )


def test_readme_appview_rule_table_is_the_catalogue() -> None:
    from atdata_appview.cli import rules_table

    assert _block("appview-rules") == rules_table("markdown"), (
        "README AppView rule table is stale: run ./scripts/update-golden"
    )
