"""README benchmark tables generated from the committed ``bench/results.json``
(``scripts/bench_all.py`` merges every benchmark's part into it), never copied by
hand. Every block ``<!-- bench-<table>:start -->`` … ``<!-- bench-<table>:end -->``
of the README is one table: the rows of every part whose ``table`` is ``<table>``,
a header line per part (script, commit, date, load, runs) and the parts' notes.
``<!-- bench-goals:start -->`` is every goal of every part. The AppView block
(``bench-appview``) keeps its own layout, drawn from the appview part's summary.

Each row: measure | ours: median (min–max) | peer: median | ratio (ours / peer
medians) | goal | met. A goal's value is computed here from the medians (see
``scripts/benchlib.py``): ``speedup`` is peer/ours for a lower-is-better metric and
ours/peer for a higher-is-better one, ``time_ratio`` is ours/peer, ``ours`` is our
median; ``met`` compares it with the target. No part stores a verdict.

``./scripts/update-golden`` and ``scripts/bench`` rewrite the README;
``tests/test_readme_bench.py`` fails when the README and the results disagree.

Usage: ``python scripts/bench_tables.py [README.md]`` (rewrites it in place).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
METHODS = ("searchDatasets", "getEntry", "resolveSchema", "getLensPath")
BLOCK = re.compile(r"<!-- (bench-[a-z0-9_-]+):start -->\n")


def load(path: Path = RESULTS) -> dict[str, Any]:
    if not path.exists():
        return {"parts": {}}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# -- goals --------------------------------------------------------------------------


def goal_value(part: dict[str, Any], row: dict[str, Any]) -> float:
    """The value a row's goal is judged on, from the medians of ``part``'s
    metrics. Raises ``KeyError``/``ValueError`` for a malformed goal."""
    goal = row["goal"]
    ours = part["metrics"][row["ours"]]
    if goal["of"] == "ours":
        return float(ours["median"])
    peer = part["metrics"][row["peer"]]
    o, p = float(ours["median"]), float(peer["median"])
    if goal["of"] == "time_ratio":
        return o / p
    if goal["of"] == "speedup":
        return p / o if ours.get("better", "lower") == "lower" else o / p
    raise ValueError(f"unknown goal kind {goal['of']!r}")


_TIME_UNITS = {"s", "ms", "µs", "us", "ns"}
_SIZE_UNITS = {"MiB", "MB", "KiB", "GiB", "bytes", "B"}


def compare_cell(ours: dict[str, Any], peer: dict[str, Any]) -> str:
    """How ours compares with the peer, from the medians: the factor by which ours
    is better (``better`` of our metric: lower or higher), worded by unit —
    faster/slower for times and rates, smaller/larger for sizes."""
    o, p = float(ours["median"]), float(peer["median"])
    if o <= 0 or p <= 0:
        return "—"
    factor = p / o if ours.get("better", "lower") == "lower" else o / p
    unit = str(ours.get("unit", ""))
    if unit in _TIME_UNITS or "/s" in unit:
        good, bad = "faster", "slower"
    elif unit in _SIZE_UNITS:
        good, bad = "smaller", "larger"
    else:
        good, bad = "better", "worse"
    if factor >= 1:
        return f"{factor:.2f}× {good}"
    return f"{1 / factor:.2f}× {bad}"


def goal_met(part: dict[str, Any], row: dict[str, Any]) -> bool:
    goal = row["goal"]
    v, target = goal_value(part, row), float(goal["target"])
    if goal["op"] == "<=":
        return v <= target
    if goal["op"] == ">=":
        return v >= target
    raise ValueError(f"unknown goal op {goal['op']!r}")


def _met_cell(part: dict[str, Any], row: dict[str, Any]) -> str:
    v = goal_value(part, row)
    shown = f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}"
    return f"yes ({shown})" if goal_met(part, row) else f"**no** ({shown})"


# -- cells --------------------------------------------------------------------------


def _num(value: float, fmt: str) -> str:
    return format(value, fmt)


def _unit(m: dict[str, Any]) -> str:
    u = m.get("unit", "")
    return f" {u}" if u else ""


def ours_cell(m: dict[str, Any], fmt: str) -> str:
    text = _num(m["median"], fmt) + _unit(m)
    if len(m.get("runs", [])) > 1:
        text += f" ({_num(m['min'], fmt)}–{_num(m['max'], fmt)})"
    return text


def _short_date(date: str) -> str:
    return date[:16].replace("T", " ") + " UTC" if date else "?"


def _runs(part: dict[str, Any]) -> str:
    runs = part.get("settings", {}).get("runs")
    if not isinstance(runs, int):
        counts = [len(m.get("runs", [])) for m in part.get("metrics", {}).values()]
        runs = max(counts) if counts else 0
    return f"median of {runs} run{'s' if runs != 1 else ''}"


def header(part: dict[str, Any]) -> str:
    """One line: which script, commit, date, load and runs a part comes from."""
    m = part.get("machine", {})
    lb, la = m.get("load_before") or [0.0], m.get("load_after") or [0.0]
    # The benchmark run's own outputs (bench/results.json, bench/appview.json, the
    # plots) are rewritten while it runs; only other uncommitted files are code.
    dirty = [d for d in part.get("dirty") or [] if not d.startswith("bench/")]
    commit = f"`{part.get('commit', '')[:7]}`" + (
        f" + {len(dirty)} uncommitted file{'s' if len(dirty) != 1 else ''}"
        if dirty
        else ""
    )
    quick = (
        " — **smoke run (`--quick`), not a measurement**"
        if part.get("bench_all", {}).get("quick")
        or part.get("settings", {}).get("quick")
        else ""
    )
    script = (
        part.get("bench_all", {}).get("script") or f"scripts/bench_{part['benchmark']}"
    )
    return (
        f"`{script}` at {commit}, {_short_date(part.get('date', ''))}; "
        f"{m.get('nproc', '?')} cores, load {lb[0]:.1f} → {la[0]:.1f}; {_runs(part)}{quick}."
    )


def rows_of(
    results: dict[str, Any], table: str
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``(part, row)`` of every row of ``table``, parts in results order."""
    return [
        (part, row)
        for part in results.get("parts", {}).values()
        for row in part.get("rows", [])
        if row["table"] == table
    ]


def tables(results: dict[str, Any]) -> list[str]:
    """Every table name the results have rows for, in first-seen order."""
    seen: list[str] = []
    for part in results.get("parts", {}).values():
        for row in part.get("rows", []):
            if row["table"] not in seen:
                seen.append(row["table"])
    return seen


def _home_table(part: dict[str, Any]) -> str | None:
    rows = part.get("rows", [])
    return rows[0]["table"] if rows else None


def table(results: dict[str, Any], name: str) -> str:
    """The generated block of table ``name``."""
    rows = rows_of(results, name)
    if not rows:
        return (
            f"_No `{name}` figures in `bench/results.json` yet: run `./scripts/bench`._"
        )
    parts: list[dict[str, Any]] = []
    for part, _ in rows:
        if part not in parts:
            parts.append(part)
    lines = [header(p) for p in parts]
    with_goals = any(row.get("goal") for _, row in rows)
    lines += [
        "",
        "| measure | ours: median (min–max) | peer: median | ours vs peer |"
        + (" goal | met |" if with_goals else ""),
        "|---|---|---|---|" + ("---|---|" if with_goals else ""),
    ]
    for part, row in rows:
        metrics = part["metrics"]
        om = metrics[row["ours"]]
        fmt = row.get("fmt") or ".2f"
        if row.get("peer"):
            pm = metrics[row["peer"]]
            who = row.get("peer_name") or "peer"
            peer = f"{_num(pm['median'], fmt)}{_unit(pm)} ({who})"
            ratio = compare_cell(om, pm)
        else:
            peer, ratio = "—", "—"
        cells = [row["measure"], ours_cell(om, fmt), peer, ratio]
        if with_goals:
            if row.get("goal"):
                cells += [row["goal"]["text"], _met_cell(part, row)]
            else:
                cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [n for p in parts if _home_table(p) == name for n in p.get("notes", [])]
    if notes:
        lines.append("")
        lines += [f"- {n}" for n in notes]
    if name == "scaling":
        sys.path.insert(0, str(ROOT / "scripts"))
        import bench_scaling

        read = bench_scaling.read_note(results.get("parts", {}).get("runtime", {}))
        if read:
            lines += ([] if notes else [""]) + [f"- {read}"]
        lines += ["", plots_line(results)]
    return "\n".join(lines)


def plots_line(results: dict[str, Any]) -> str:
    """Links to the ``bench/scaling-*.png`` drawn from ``results``."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_scaling

    links = [
        f"[{bench_scaling.PLOTS[n]}](bench/scaling-{n}.png)"
        for n in bench_scaling.plot_names(results)
    ]
    return (
        "Plots (drawn from `bench/results.json`): " + ("; ".join(links) or "none") + "."
    )


def goals_table(results: dict[str, Any]) -> str:
    """Every goal of every part: benchmark, measure, goal, value, met."""
    lines = [
        "| benchmark | measure | goal | value | met |",
        "|---|---|---|---|---|",
    ]
    n = 0
    for part in results.get("parts", {}).values():
        for row in part.get("rows", []):
            if not row.get("goal"):
                continue
            n += 1
            v = goal_value(part, row)
            shown = f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}"
            met = "yes" if goal_met(part, row) else "**no**"
            q = " (smoke run)" if part.get("bench_all", {}).get("quick") else ""
            lines.append(
                f"| `{part['benchmark']}`{q} | {row['measure']} | {row['goal']['text']} | {shown} | {met} |"
            )
    if not n:
        return "_No goals in `bench/results.json` yet: run `./scripts/bench`._"
    met_n = sum(
        goal_met(p, r)
        for p in results.get("parts", {}).values()
        for r in p.get("rows", [])
        if r.get("goal")
    )
    return f"{met_n} of {n} goals met.\n\n" + "\n".join(lines)


# -- the AppView block (its own layout) ---------------------------------------------


def _med(node: dict[str, Any]) -> float:
    return float(node["median"])


def _spread(node: dict[str, Any], fmt: str) -> str:
    return f"{format(node['median'], fmt)} ({format(node['min'], fmt)}–{format(node['max'], fmt)})"


def appview_table(results: dict[str, Any]) -> str:
    """The AppView table from the appview part: per method, requests/s and p50/p99
    under load for ours and atdata-app 0.4.0b1 (same data, same PostgreSQL, same
    run), the ratio, then the single-connection search latency, the fold and the
    verified backfill; then the part's goals, computed here."""
    part = results.get("parts", {}).get("appview")
    if not part or "raw" not in part.get("extra", {}):
        return table(results, "appview")
    raw = part["extra"]["raw"]
    s = raw["settings"]
    lines = [
        header(part)
        + (
            f" {s['entries']:,} entries, {s['schemas']:,} schemas, {s['lenses']:,} lenses; "
            f"{s['concurrency']} connections from a separate load process."
        ),
        "",
        "| method | ours: requests/s | ours: p50 / p99 ms | atdata-app: requests/s | atdata-app: p50 / p99 ms | ratio |",
        "|---|---|---|---|---|---|",
    ]
    load_ = raw.get("load", {})
    for name in METHODS:
        ours = load_.get("ours", {}).get(name)
        if ours is None:
            continue
        peer = load_.get("peer", {}).get(name)
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
    lines.append("")
    lat = raw.get("latency", {})
    so = lat.get("ours", {}).get("searchDatasets")
    sp = lat.get("peer", {}).get("searchDatasets")
    if so:
        lines.append(
            f"- One connection, `searchDatasets`: ours p50 {_med(so['p50_ms']):.1f} ms, "
            f"p99 {_med(so['p99_ms']):.1f} ms"
            + (
                f"; atdata-app p50 {_med(sp['p50_ms']):.1f} ms, p99 {_med(sp['p99_ms']):.1f} ms."
                if sp
                else "."
            )
        )
    fold = raw.get("fold")
    if fold:
        lines.append(
            f"- Fold of the log into the index: {fold['fold_records_s']:,.0f} records/s "
            f"({fold['counts']['appview_entries']:,} entries, "
            f"{fold['counts']['appview_schemas']:,} schemas with their compatibility verdicts)."
        )
    bf = raw.get("backfill")
    if bf:
        lines.append(
            f"- Verified backfill from the local PDS (`listRepos` + `getRepo`): {bf['repos']:,} repos × "
            f"{bf['records_per_repo']} records at {_spread(bf['records_s'], ',.0f')} records/s "
            f"({_med(bf['repos_s']):,.0f} repos/s)"
            + (
                f"; with {raw['backfill_all']['repos'] - bf['repos']:,} more repos of "
                f"{s.get('big_records', 30)} records, "
                f"{_med(raw['backfill_all']['records_s']):,.0f} records/s."
                if "backfill_all" in raw
                else "."
            )
        )
    goal_rows = [r for r in part.get("rows", []) if r.get("goal")]
    if goal_rows:
        lines += ["", "| goal | measure | value | met |", "|---|---|---|---|"]
        for r in goal_rows:
            v = goal_value(part, r)
            met = "yes" if goal_met(part, r) else "**no**"
            lines.append(f"| {r['goal']['text']} | {r['measure']} | {v:,.2f} | {met} |")
    return "\n".join(lines)


def block(results: dict[str, Any], name: str) -> str:
    """The text of README block ``name`` (``bench-<table>`` or ``bench-goals``)."""
    if name == "bench-goals":
        return goals_table(results)
    if name == "bench-appview":
        return appview_table(results)
    return table(results, name.removeprefix("bench-"))


def blocks_in(readme: str) -> list[str]:
    return BLOCK.findall(readme)


def render(readme: str, results: dict[str, Any] | None = None) -> str:
    """``readme`` with every ``bench-*`` block rewritten from ``results`` (default:
    the committed ``bench/results.json``)."""
    res = load() if results is None else results
    for name in blocks_in(readme):
        start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
        head, rest = readme.split(start, 1)
        if end not in rest:
            raise ValueError(f"README block {name} has no end marker")
        tail = rest.split(end, 1)[1]
        readme = head + start + block(res, name) + "\n" + end + tail
    return readme


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "README.md"
    path.write_text(render(path.read_text()))
