"""README benchmark tables generated from the committed benchmark results files
(``bench/*.json``), never copied by hand: ``./scripts/update-golden`` rewrites the
blocks between ``<!-- bench-appview:start -->`` and ``<!-- bench-appview:end -->``,
and ``tests/test_readme_bench.py`` fails when the README and the results disagree.

Usage: ``python scripts/bench_tables.py [README.md]`` (rewrites it in place).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
APPVIEW = ROOT / "bench" / "appview.json"
METHODS = ("searchDatasets", "getEntry", "resolveSchema", "getLensPath")


def _med(node: dict[str, Any]) -> float:
    return float(node["median"])


def _spread(node: dict[str, Any], fmt: str) -> str:
    return f"{format(node['median'], fmt)} ({format(node['min'], fmt)}–{format(node['max'], fmt)})"


def appview_table(results: dict[str, Any]) -> str:
    """The AppView table: per method, requests/s and p50/p99 under load for ours and
    atdata-app 0.4.0b1 (same data, same PostgreSQL, same run), the ratio, then the
    single-connection search latency, the fold and the verified backfill."""
    s = results["settings"]
    m = results["machine"]
    lines = [
        (
            f"`scripts/bench_appview`, commit `{results['commit'][:7]}`, {results['date'][:10]}; "
            f"{m['nproc']} cores (load average {m['load_before'][0]:.1f} before, "
            f"{m['load_after'][0]:.1f} after); {s['entries']:,} entries, {s['schemas']:,} schemas, "
            f"{s['lenses']:,} lenses; {s['concurrency']} connections from a separate load process; "
            f"median (min–max) of {s['runs']} runs."
        ),
        "",
        "| method | ours: requests/s | ours: p50 / p99 ms | atdata-app: requests/s | atdata-app: p50 / p99 ms | ratio |",
        "|---|---|---|---|---|---|",
    ]
    load = results["load"]
    for name in METHODS:
        ours = load["ours"].get(name)
        if ours is None:
            continue
        peer = load.get("peer", {}).get(name)
        row = [
            f"`{name}`",
            _spread(ours["rps"], ",.0f"),
            f"{_med(ours['p50_ms']):.1f} / {_med(ours['p99_ms']):.1f}",
        ]
        if peer is None:
            row += ["—", "—", "— (atdata-app has no such method)"]
        else:
            row += [
                _spread(peer["rps"], ",.0f"),
                f"{_med(peer['p50_ms']):.1f} / {_med(peer['p99_ms']):.1f}",
                f"{_med(ours['rps']) / _med(peer['rps']):.2f}×",
            ]
        lines.append("| " + " | ".join(row) + " |")
    lat = results["latency"]
    so, sp = lat["ours"]["searchDatasets"], lat.get("peer", {}).get("searchDatasets")
    lines += [
        "",
        f"- One connection, `searchDatasets`: ours p50 {_med(so['p50_ms']):.1f} ms, "
        f"p99 {_med(so['p99_ms']):.1f} ms"
        + (
            f"; atdata-app p50 {_med(sp['p50_ms']):.1f} ms, p99 {_med(sp['p99_ms']):.1f} ms."
            if sp
            else "."
        ),
    ]
    fold = results["fold"]
    lines.append(
        f"- Fold of the log into the index: {fold['fold_records_s']:,.0f} records/s "
        f"({fold['counts']['appview_entries']:,} entries, "
        f"{fold['counts']['appview_schemas']:,} schemas with their compatibility verdicts)."
    )
    bf = results["backfill"]
    lines.append(
        f"- Verified backfill from the local PDS (`listRepos` + `getRepo`): {bf['repos']:,} repos × "
        f"{bf['records_per_repo']} records at {_spread(bf['records_s'], ',.0f')} records/s "
        f"({_med(bf['repos_s']):,.0f} repos/s)"
        + (
            f"; with 100 more repos of 30 records, {_med(results['backfill_all']['records_s']):,.0f} records/s."
            if "backfill_all" in results
            else "."
        )
    )
    lines.append("")
    lines.append("| goal | value | met |")
    lines.append("|---|---|---|")
    for g in results["goals"]:
        value = g["value"]
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"| {g['goal']} | {shown} | {'yes' if g['met'] else '**no**'} |")
    return "\n".join(lines)


BLOCKS = {"bench-appview": lambda: appview_table(json.loads(APPVIEW.read_text()))}


def render(readme: str) -> str:
    """``readme`` with every generated block rewritten."""
    for name, make in BLOCKS.items():
        readme = re.sub(
            rf"(<!-- {name}:start -->\n).*?(\n?<!-- {name}:end -->)",
            lambda mt, make=make, name=name: (
                mt.group(1) + make() + f"\n<!-- {name}:end -->"
            ),
            readme,
            flags=re.DOTALL,
        )
    return readme


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "README.md"
    path.write_text(render(path.read_text()))
