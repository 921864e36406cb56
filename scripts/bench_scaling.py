"""Benchmark: how cost grows with input size (issue 17, "Scaling curves"); not a test.

Sections (``--only`` picks some; all by default):

* ``corpus``: the 402 official Lexicons (``/work/shared/corpus/lexicons/
  atproto-official``), then 2× and 4× that corpus: copy ``i`` (``i`` = 2, 3, 4) of
  every Lexicon with every NSID renamed ``x<i>.<nsid>`` (the ``id``, every ``ref``
  and ``refs`` item, and every other string that names a corpus NSID, with or
  without a ``#fragment``: ``lxm`` lists, ``knownValues``…), written under the path
  of its new NSID, so each copy links within itself and never clashes. At each size,
  whole processes (:func:`benchlib.run_process`: wall seconds and the child's peak
  RSS), interleaved so that all see the same load: a cold ``atdata-gen build``
  (empty output; it must report no error), MarshalX's ``atproto gen models`` on the
  same directory, and ``atdata-gen check DIR --against DIR`` twice: with a fresh,
  empty IR cache (``ATDATA_GEN_CACHE_DIR``: cold, it compiles both sides once) and
  again (warm: it replays the cache, :mod:`atdata_gen.ircache`);
* ``fold``: the AppView's fold (``scripts/bench_appview.py``'s ``seed_ours``: the
  seed written into ``ingest_events`` and folded by the indexer) at growing index
  sizes (``--fold-entries``; schemas = entries / 10, lenses = entries / 50, as the
  default seed), records/s and seconds, on one private PostgreSQL 15 cluster
  (``fast=False``: durable settings);
* ``ingest``: the real ingester process (``scripts/bench_ingest.py``'s
  ``ours_throughput``, ``--verify dataset``, the mixed stream recorded from the
  local PDS) over growing stream lengths (``--ingest-frames``): events/s.

The shard-read curve (samples/s against sample size) is the runtime part's
``read_size_<bytes>_samples_s`` metrics (``scripts/bench_runtime``): its fit
(:func:`read_note`) is computed when the README table is drawn
(``scripts/bench_tables.py``), from whichever runtime part ``bench/results.json``
holds, so it never goes stale when one part is rerun alone.

Each curve gets a least-squares fit of log(cost) against log(size): an exponent
near 1 for a total cost (time against size) is linear growth; the notes say
where a curve is not near-linear. ``--plot`` draws ``bench/scaling-*.png`` from
``bench/results.json`` (matplotlib, Agg, fixed size and DPI, no timestamp in the
metadata) and exits; ``scripts/bench`` does that after merging every part.

    scripts/bench_scaling                      # every section
    scripts/bench_scaling --only corpus --runs 1
    scripts/bench_scaling --plot               # redraw the PNGs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

ROOT = benchlib.ROOT
OFFICIAL = ROOT.parent / "shared" / "corpus" / "lexicons" / "atproto-official"
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results.json"
SECTIONS = ("corpus", "fold", "ingest")
#: An exponent within this distance of 1 counts as near-linear.
LINEAR_TOLERANCE = 0.15

_NSID_REF = re.compile(
    r"^([a-zA-Z][a-zA-Z0-9-]*(?:\.[a-zA-Z0-9-]+)+)(#[a-zA-Z0-9_]+)?$"
)


# -- the corpus, multiplied ---------------------------------------------------------


def _rename(value: Any, nsids: frozenset[str], prefix: str) -> Any:
    """``value`` (a parsed Lexicon, recursively) with every string that is a
    corpus NSID, or a corpus NSID and ``#fragment``, prefixed with ``prefix``."""
    if isinstance(value, str):
        m = _NSID_REF.match(value)
        if m and m.group(1) in nsids:
            return prefix + value
        return value
    if isinstance(value, list):
        return [_rename(v, nsids, prefix) for v in value]
    if isinstance(value, dict):
        return {k: _rename(v, nsids, prefix) for k, v in value.items()}
    return value


def multiplied_corpus(dest: Path, factor: int, source: Path = OFFICIAL) -> int:
    """Write ``factor`` copies of the Lexicons under ``source`` into ``dest``: copy
    1 unchanged, copy ``i`` > 1 with every corpus NSID prefixed ``x<i>.``, each
    file at the path of its NSID. Returns the number of Lexicons written.

    Raises ``TypeError`` when a source file has no string ``id``."""
    docs = []
    for path in sorted(source.rglob("*.json")):
        doc = json.loads(path.read_text())
        if not isinstance(doc.get("id"), str):
            raise TypeError(f"{path}: no Lexicon id")
        docs.append(doc)
    nsids = frozenset(d["id"] for d in docs)
    n = 0
    for i in range(1, factor + 1):
        prefix = "" if i == 1 else f"x{i}."
        for doc in docs:
            out = _rename(doc, nsids, prefix) if prefix else doc
            path = dest / (out["id"].replace(".", "/") + ".json")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(out, indent=2) + "\n")
            n += 1
    return n


# -- fits ---------------------------------------------------------------------------


def loglog_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit of ``log y = a + b log x``: returns ``(b, r²)``.

    Raises ``ValueError`` for fewer than two points or a non-positive value."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("a fit needs two points or more")
    if min(xs) <= 0 or min(ys) <= 0:
        raise ValueError("a log-log fit needs positive values")
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((x - mx) ** 2 for x in lx)
    sxy = sum((x - mx) * (y - my) for x, y in zip(lx, ly, strict=True))
    b = sxy / sxx
    a = my - b * mx
    ss_res = sum((y - (a + b * x)) ** 2 for x, y in zip(lx, ly, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ly)
    return b, 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


def affine_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``y = c + k x``: returns ``(c, k)`` (``c`` is the fixed cost:
    interpreter start-up and imports for a process; ``k`` the cost per unit)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    k = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    return my - k * mx, k


def describe_fit(
    what: str,
    xs: Sequence[float],
    ys: Sequence[float],
    *,
    unit: str = "s",
    per: str = "item",
    scale: float = 1000.0,
    per_unit: str = "ms",
) -> str:
    """One note on a cost ``ys`` (seconds, MiB…) against a size ``xs``: the fitted
    log-log exponent (1: proportional), the local exponent of each step, the
    straight line ``c + k x`` (``k`` shown times ``scale`` in ``per_unit``), and a
    verdict on the largest sizes, where a fixed cost no longer hides growth:

    * near-linear: the last step's local exponent and the fitted one are at most
      1 + :data:`LINEAR_TOLERANCE` (an exponent below 1 says a fixed cost, start-up
      and imports for a process, is being amortized);
    * super-linear: either is above it (the cost per added unit grows)."""
    b, r2 = loglog_fit(xs, ys)
    steps = [
        math.log(ys[i + 1] / ys[i]) / math.log(xs[i + 1] / xs[i])
        for i in range(len(xs) - 1)
    ]
    c, k = affine_fit(xs, ys)
    last = steps[-1]
    if last > 1 + LINEAR_TOLERANCE or b > 1 + LINEAR_TOLERANCE:
        kind = f"super-linear: the last step grows as size^{last:.2f}"
    else:
        kind = "near-linear"
        if b < 1 - LINEAR_TOLERANCE:
            kind += " (exponent below 1: a fixed cost is amortized)"
    return (
        f"{what}: log-log exponent {b:.2f} (r² {r2:.3f}; per step "
        + ", ".join(f"{s:.2f}" for s in steps)
        + f"); straight line {c:,.2f} {unit} + {k * scale:,.3g} {per_unit} per {per}"
        + f" — {kind}"
    )


def describe_rate(what: str, xs: Sequence[float], rates: Sequence[float]) -> str:
    """One note on a throughput ``rates`` (units/s) measured at sizes ``xs``: a
    flat rate is a total cost linear in size. The log-log exponent of the rate (0:
    flat), the change of each step, and a verdict on the last step (the largest
    inputs, where start-up no longer counts): near-linear when the rate moved by at
    most 20 %, super-linear when it fell by more (each unit costs more as the input
    grows), still rising when it rose by more (start-up not yet amortized)."""
    b, r2 = loglog_fit(xs, rates)
    steps = [rates[i + 1] / rates[i] - 1 for i in range(len(xs) - 1)]
    last = steps[-1]
    if abs(last) <= 0.2:
        kind = "near-linear (the rate is flat over the last step"
        kind += ", after a start-up at small sizes)" if b > LINEAR_TOLERANCE else ")"
    elif last < 0:
        kind = "super-linear: the rate falls as the input grows"
    else:
        kind = "the rate still rises: start-up is not amortized at these sizes"
    return (
        f"{what}: rate {rates[0]:,.0f} → {rates[-1]:,.0f}/s, log-log exponent "
        f"{b:.2f} (r² {r2:.3f}; per step "
        + ", ".join(f"{100 * x:+.0f} %" for x in steps)
        + f") — {kind}"
    )


# -- sections -----------------------------------------------------------------------


def _mib(nbytes: int) -> float:
    return nbytes / 2**20


def corpus_section(report: benchlib.Report, factors: Sequence[int], runs: int) -> None:
    work = Path(tempfile.mkdtemp(prefix=".bench-scaling-", dir=ROOT))
    try:
        sizes: list[int] = []
        dirs: list[Path] = []
        for f in factors:
            d = work / f"corpus-x{f}"
            sizes.append(multiplied_corpus(d, f))
            dirs.append(d)
        per: dict[str, dict[int, list[float]]] = {}

        def add(key: str, n: int, v: float) -> None:
            per.setdefault(key, {}).setdefault(n, []).append(v)

        def timed(
            argv: list[str], env: dict[str, str] | None = None
        ) -> tuple[benchlib.ProcessRun, float]:
            """run_process plus the CPU seconds (user + system) of the whole
            process tree: RUSAGE_CHILDREN grows by each waited-for descendant."""
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            r = benchlib.run_process(argv, env=env)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
            return r, cpu

        for run in range(runs):
            # Sizes ascending in even runs, descending in odd ones: a load trend
            # during a run does not favour one end of the curve.
            order = list(zip(sizes, dirs, strict=True))
            for n, d in order if run % 2 == 0 else order[::-1]:
                # A fresh IR cache (atdata_gen.ircache) for each size and run: the
                # first check compiles (cold), the second replays the cache (warm).
                env = {**os.environ, "ATDATA_GEN_CACHE_DIR": str(work / f"c{run}-{n}")}
                out = work / "ours"
                shutil.rmtree(out, ignore_errors=True)
                r, cpu = timed(
                    [str(BIN / "atdata-gen"), "build", str(d), "--out", str(out),
                     "--package", "bench_pkg", "-q"], env=env,
                )  # fmt: skip
                if run == 0:
                    files = sum(1 for _ in out.rglob("*.py"))
                    report.extra.setdefault("generated_files", {})[str(n)] = files
                add("build_s", n, r.seconds)
                add("build_cpu_s", n, cpu)
                add("build_rss_mib", n, _mib(r.peak_rss))
                mx = work / "marshalx"
                shutil.rmtree(mx, ignore_errors=True)
                mx.mkdir()
                r, cpu = timed(
                    [str(BIN / "atproto"), "gen", "--lexicon-dir", str(d), "models",
                     "--output-dir", str(mx)],
                )  # fmt: skip
                add("marshalx_s", n, r.seconds)
                add("marshalx_cpu_s", n, cpu)
                add("marshalx_rss_mib", n, _mib(r.peak_rss))
                check = [str(BIN / "atdata-gen"), "check", str(d), "--against", str(d)]
                r, cpu = timed(check, env=env)
                add("check_s", n, r.seconds)
                add("check_cpu_s", n, cpu)
                add("check_rss_mib", n, _mib(r.peak_rss))
                r = benchlib.run_process(check, env=env)
                add("check_warm_s", n, r.seconds)
            print(f"  corpus run {run + 1}/{runs} done", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    labels = {
        "build_s": ("cold atdata-gen build", "s"),
        "build_rss_mib": ("atdata-gen build peak RSS", "MiB"),
        "marshalx_s": ("MarshalX atproto gen models", "s"),
        "marshalx_rss_mib": ("MarshalX peak RSS", "MiB"),
        "build_cpu_s": ("cold atdata-gen build, CPU s of every process", "s"),
        "marshalx_cpu_s": ("MarshalX atproto gen models, CPU s", "s"),
        "check_s": ("atdata-gen check DIR --against DIR, cold IR cache", "s"),
        "check_cpu_s": ("atdata-gen check, cold IR cache, CPU s", "s"),
        "check_warm_s": ("atdata-gen check DIR --against DIR, warm IR cache", "s"),
        "check_rss_mib": ("atdata-gen check peak RSS", "MiB"),
    }
    for key, by_n in per.items():
        label, unit = labels[key]
        for n, values in by_n.items():
            report.metric(_key(key, n), values, unit, label=f"{label}, {n} Lexicons")
    for n in sizes:
        report.row("scaling", f"cold build, {n} Lexicons", f"build_n{n}_s",
                   peer=f"marshalx_n{n}_s", peer_name="MarshalX", fmt=".2f")  # fmt: skip
    for n in sizes:
        report.row("scaling", f"cold build CPU (every process), {n} Lexicons",
                   f"build_cpu_n{n}_s", peer=f"marshalx_cpu_n{n}_s",
                   peer_name="MarshalX", fmt=".2f")  # fmt: skip
    for n in sizes:
        report.row("scaling", f"build peak RSS, {n} Lexicons", f"build_rss_mib_n{n}",
                   peer=f"marshalx_rss_mib_n{n}", peer_name="MarshalX", fmt=",.0f")  # fmt: skip
    for n in sizes:
        report.row("scaling", f"`check` vs itself, {n} Lexicons (cold IR cache)",
                   f"check_n{n}_s", fmt=".2f")  # fmt: skip
    for n in sizes:
        report.row("scaling", f"`check` vs itself, {n} Lexicons (warm IR cache)",
                   f"check_warm_n{n}_s", fmt=".2f")  # fmt: skip
    for n in sizes:
        report.row("scaling", f"`check` peak RSS, {n} Lexicons", f"check_rss_mib_n{n}",
                   fmt=",.0f")  # fmt: skip
    report.extra["corpus_sizes"] = sizes
    med = {k: [report.metrics[_key(k, n)]["median"] for n in sizes] for k in labels}
    xs = [float(n) for n in sizes]
    for key, what in (
        ("build_s", "cold build time vs Lexicons"),
        ("marshalx_s", "MarshalX time vs Lexicons"),
        ("build_cpu_s", "cold build CPU seconds (all processes) vs Lexicons"),
        ("marshalx_cpu_s", "MarshalX CPU seconds vs Lexicons"),
        ("check_cpu_s", "check CPU seconds (cold IR cache) vs Lexicons"),
        ("check_s", "check time (cold IR cache) vs Lexicons"),
        ("check_warm_s", "check time (warm IR cache) vs Lexicons"),
        ("build_rss_mib", "build peak RSS vs Lexicons"),
        ("marshalx_rss_mib", "MarshalX peak RSS vs Lexicons"),
        ("check_rss_mib", "check peak RSS vs Lexicons"),
    ):
        if len(xs) >= 2:
            if key.endswith("_s"):
                report.note(describe_fit(what, xs, med[key], per="Lexicon"))
            else:
                report.note(describe_fit(what, xs, med[key], unit="MiB",
                                         per="Lexicon", scale=1024, per_unit="KiB"))  # fmt: skip


def _key(key: str, n: int) -> str:
    if key.endswith("_s"):
        return f"{key[:-2]}_n{n}_s"
    return f"{key}_n{n}"


def fold_section(report: benchlib.Report, entries: Sequence[int]) -> None:
    import asyncio

    import bench_appview
    from atdata_appview.testing.seed import generate
    from atdata_ingest.testing.postgres import PostgresCluster

    records: list[float] = []
    rates: list[float] = []
    by_phase: dict[str, list[tuple[float, float]]] = {}
    with PostgresCluster(fast=False, settings={"shared_buffers": "512MB"}) as pg:
        for n in entries:
            seed = generate(
                entries=n, schemas=max(1, n // 10), lenses=max(1, n // 50),
                labels=None, publishers=max(2, min(300, n // 300)), seed=0,
            )  # fmt: skip
            dsn = pg.create_database(f"fold_{n}")
            r = asyncio.run(bench_appview.seed_ours(dsn, seed, 500))
            total = float(r["records"])
            report.metric(f"fold_records_s_e{n}", [r["fold_records_s"]], "records/s",
                          better="higher", label=f"fold, {int(total):,} records")  # fmt: skip
            report.metric(f"fold_s_e{n}", [r["fold_s"]], "s",
                          label=f"fold time, {int(total):,} records")  # fmt: skip
            report.row("scaling", f"AppView fold, {int(total):,} records",
                       f"fold_records_s_e{n}", fmt=",.0f")  # fmt: skip
            records.append(total)
            rates.append(float(r["fold_records_s"]))
            for phase, ph in r["phases"].items():
                report.metric(f"fold_{phase}_records_s_e{n}", [ph["fold_records_s"]],
                              "records/s", better="higher",
                              label=f"fold of the {phase}, {ph['records']:,.0f} records")  # fmt: skip
                by_phase.setdefault(phase, []).append(
                    (float(ph["records"]), float(ph["fold_records_s"]))
                )
            print(f"  fold {int(total):,} records: {r['fold_records_s']:,.0f} records/s",
                  flush=True)  # fmt: skip
    report.extra["fold_records"] = records
    if len(records) >= 2:
        report.note(describe_rate("AppView fold records/s vs records", records, rates))
        for phase in ("entries", "schemas"):
            pts = by_phase.get(phase, [])
            if len(pts) >= 2 and min(x for x, _ in pts) > 0:
                report.note(
                    describe_rate(
                        f"AppView fold, {phase} alone",
                        [x for x, _ in pts],
                        [y for _, y in pts],
                    )
                )


def ingest_section(report: benchlib.Report, frames: Sequence[int]) -> None:
    import bench_ingest
    from atdata_gen.testing.localnet import LocalNetwork
    from atdata_ingest.testing.postgres import PostgresCluster
    from atdata_ingest.testing.relay import realistic_frames

    work = Path(tempfile.mkdtemp(prefix="atdata-bench-scaling-"))
    events: list[float] = []
    rates: list[float] = []
    try:
        with (
            PostgresCluster(
                fast=False, settings={"track_commit_timestamp": "on"}
            ) as pg,
            LocalNetwork.start() as net,
        ):
            mixed = bench_ingest.Stream.of("mixed", realistic_frames(net, 8, 60))
            for n in frames:
                r, dsn = bench_ingest.ours_throughput(
                    pg, net, mixed, n, "dataset", work
                )
                bench_ingest._drop(pg, dsn)
                ev = float(mixed.cumulative(mixed.events, n))
                report.metric(f"ingest_events_s_f{n}", [r["events_s"]], "events/s",
                              better="higher", label=f"ingest, {int(ev):,} events")  # fmt: skip
                report.metric(f"ingest_wall_s_f{n}", [r["wall_s"]], "s",
                              label=f"ingest wall, {int(ev):,} events")  # fmt: skip
                report.row("scaling", f"ingest `--verify dataset`, {int(ev):,} events",
                           f"ingest_events_s_f{n}", fmt=",.0f")  # fmt: skip
                events.append(ev)
                rates.append(float(r["events_s"]))
                print(f"  ingest {int(ev):,} events: {r['events_s']:,.0f} events/s",
                      flush=True)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.extra["ingest_events"] = events
    if len(events) >= 2:
        report.note(describe_rate("ingest events/s vs events", events, rates))


def read_curve(part: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """``(sample bytes, metric)`` of a runtime part's ``read_size_<bytes>_samples_s``
    metrics, by size."""
    out = []
    for key, m in part.get("metrics", {}).items():
        mt = re.fullmatch(r"read_size_(\d+)_samples_s", key)
        if mt:
            out.append((int(mt.group(1)), m))
    return sorted(out)


def read_note(part: dict[str, Any]) -> str | None:
    """The fit of the shard-read curve of a runtime part (µs per sample against
    sample bytes), or None without two sizes."""
    curve = read_curve(part)
    if len(curve) < 2:
        return None
    xs = [float(b) for b, _ in curve]
    us = [1e6 / m["median"] for _, m in curve]
    note = describe_fit("shard read time per sample vs sample bytes", xs, us,
                        unit="µs", per="byte", scale=1000, per_unit="ns")  # fmt: skip
    return note + (
        " (the runtime part's read_size_<bytes>_samples_s; a small sample pays a "
        "fixed cost per sample: tar header, msgpack map, the sample object; a large "
        "one is bound by the bytes read and copied)"
    )


# -- plots --------------------------------------------------------------------------


def _series(part: dict[str, Any], pattern: str) -> list[tuple[float, dict[str, Any]]]:
    out = []
    for key, m in part.get("metrics", {}).items():
        mt = re.fullmatch(pattern, key)
        if mt:
            out.append((float(mt.group(1)), m))
    return sorted(out, key=lambda t: t[0])


PLOTS = {
    "build": "build, MarshalX and check: time and peak RSS against Lexicons",
    "read": "shard read samples/s against sample size",
    "services": "AppView fold and ingestion against input size",
}


def plot_names(results: dict[str, Any]) -> list[str]:
    """The plots :func:`plot` draws from ``results`` (those with data), in order."""
    parts = results.get("parts", {})
    scaling, runtime = parts.get("scaling", {}), parts.get("runtime", {})
    names = []
    if _series(scaling, r"build_n(\d+)_s"):
        names.append("build")
    if _series(runtime, r"read_size_(\d+)_samples_s"):
        names.append("read")
    if _series(scaling, r"fold_records_s_e(\d+)") or _series(
        scaling, r"ingest_events_s_f(\d+)"
    ):
        names.append("services")
    return names


def plot(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Draw ``scaling-*.png`` into ``out_dir`` from merged results; returns the
    files written (a curve without data is skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "bench", "font.size": 9})
    parts = results.get("parts", {})
    scaling = parts.get("scaling", {})
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out_dir / f"scaling-{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100, metadata={"Software": None})
        plt.close(fig)
        written.append(path)

    def errbars(ax: Any, pts: list[tuple[float, dict[str, Any]]], label: str,
                marker: str, xscale: float = 1.0) -> None:  # fmt: skip
        xs = [x * xscale for x, _ in pts]
        med = [m["median"] for _, m in pts]
        lo = [m["median"] - m["min"] for _, m in pts]
        hi = [m["max"] - m["median"] for _, m in pts]
        ax.errorbar(xs, med, yerr=[lo, hi], marker=marker, capsize=3, label=label)

    build = _series(scaling, r"build_n(\d+)_s")
    if build:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
        errbars(a1, build, "atdata-gen build", "o")
        errbars(a1, _series(scaling, r"marshalx_n(\d+)_s"), "MarshalX gen models", "s")
        errbars(a1, _series(scaling, r"check_n(\d+)_s"), "atdata-gen check", "^")
        errbars(a1, _series(scaling, r"check_warm_n(\d+)_s"), "check, warm cache", "v")
        a1.set(xlabel="Lexicons", ylabel="seconds (whole process)", title="time")
        a1.set_ylim(bottom=0)
        a1.legend()
        errbars(a2, _series(scaling, r"build_rss_mib_n(\d+)"), "atdata-gen build", "o")
        errbars(a2, _series(scaling, r"marshalx_rss_mib_n(\d+)"), "MarshalX", "s")
        errbars(a2, _series(scaling, r"check_rss_mib_n(\d+)"), "atdata-gen check", "^")
        a2.set(xlabel="Lexicons", ylabel="MiB", title="peak RSS")
        a2.set_ylim(bottom=0)
        a2.legend()
        save(fig, "build")

    runtime = parts.get("runtime", {})
    read = _series(runtime, r"read_size_(\d+)_samples_s")
    if read:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        errbars(ax, read, "atdata-runtime", "o")
        for prefix, label, marker in (("atdata_", "atdata 0.7.0b1", "s"),
                                      ("wds_", "raw webdataset", "^")):  # fmt: skip
            pts = _series(runtime, prefix + r"read_size_(\d+)_samples_s")
            if pts:
                errbars(ax, pts, label, marker)
        ax.set(xscale="log", yscale="log", xlabel="sample size (bytes)",
               ylabel="samples/s", title="shard read (runtime part)")  # fmt: skip
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        save(fig, "read")

    fold = _series(scaling, r"fold_records_s_e(\d+)")
    ingest = _series(scaling, r"ingest_events_s_f(\d+)")
    if fold or ingest:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        if fold:
            recs = scaling.get("extra", {}).get("fold_records") or [x for x, _ in fold]
            errbars(axes[0], list(zip(recs, [m for _, m in fold], strict=True)),
                    "fold", "o")  # fmt: skip
            axes[0].set(xlabel="records folded (index size)", ylabel="records/s",
                        title="AppView fold")  # fmt: skip
            axes[0].set_ylim(bottom=0)
        if ingest:
            evs = scaling.get("extra", {}).get("ingest_events") or [
                x for x, _ in ingest
            ]
            errbars(axes[1], list(zip(evs, [m for _, m in ingest], strict=True)),
                    "--verify dataset", "o")  # fmt: skip
            axes[1].set(xlabel="events in the stream", ylabel="events/s",
                        title="ingestion")  # fmt: skip
            axes[1].set_ylim(bottom=0)
        save(fig, "services")
    return written


# -- main ---------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="corpus runs per size")
    ap.add_argument("--factors", default="1,2,4", help="corpus multiples")
    ap.add_argument("--only", action="append", choices=SECTIONS)
    ap.add_argument("--fold-entries", default="5000,10000,20000,40000")
    ap.add_argument("--ingest-frames", default="5000,10000,20000,40000")
    ap.add_argument("--quick", action="store_true",
                    help="one run, corpus 1x/2x, small fold and stream sizes")  # fmt: skip
    ap.add_argument("--plot", action="store_true",
                    help="only draw bench/scaling-*.png from --results")  # fmt: skip
    ap.add_argument("--results", type=Path, default=RESULTS)
    benchlib.add_json_arg(ap)
    args = ap.parse_args(argv)
    if args.plot:
        for path in plot(json.loads(args.results.read_text()), args.results.parent):
            print(f"wrote {path}")
        return
    if args.quick:
        args.runs, args.factors = 1, "1,2"
        args.fold_entries, args.ingest_frames = "2000,4000", "2000,4000"
    only = set(args.only or SECTIONS)
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "results")}
    settings["only"] = sorted(only)
    report = benchlib.Report("scaling", settings=settings)
    if "corpus" in only:
        print("corpus: build, MarshalX, check at " + args.factors + " x 402 Lexicons")
        corpus_section(report, _ints(args.factors), args.runs)
    if "fold" in only:
        print("fold: AppView indexer at growing index sizes")
        fold_section(report, _ints(args.fold_entries))
    if "ingest" in only:
        print("ingest: atdata-ingest run over growing streams")
        ingest_section(report, _ints(args.ingest_frames))
    for key, m in report.metrics.items():
        print(f"  {key:32} {m['median']:>12,.3f} {m['unit']}  ({m['label']})")
    for note in report.notes:
        print("  " + note)
    report.write(args.json)


if __name__ == "__main__":
    main()
