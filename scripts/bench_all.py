"""Run every benchmark, merge their parts into ``bench/results.json`` and regenerate
the README's benchmark tables and the scaling plots from it (issue 17, "Figures
generated, not copied"). ``scripts/bench`` is the wrapper (``./scripts/setup``
first).

Each benchmark script runs in turn as its own process with ``--json
bench/parts/<name>.json`` (the part format is ``scripts/benchlib.py``'s). Two speak
their own format and are adapted here: ``bench_ingest`` (``--raw-json``: every
run's figures) and ``bench_appview`` (``bench/appview.json``); :func:`ingest_part`
and :func:`appview_part` turn them into parts. A part is only replaced when its
script succeeded: a failed or skipped benchmark keeps its previous part (with its
own commit and date), and the failure is listed in ``results["run"]``.

``bench/results.json``::

    {"run": {"date", "commit", "dirty", "machine", "options", "wall_s",
             "durations_s": {name: s}, "failed": {name: reason}},
     "parts": {name: part}}

Usage::

    scripts/bench                         # every benchmark (about 33 minutes)
    scripts/bench --only build,check      # these; the other parts are kept
    scripts/bench --skip ingest,appview
    scripts/bench --quick                 # fewer runs and sizes: a smoke run
    scripts/bench --tables                # only regenerate README tables + PNGs
    scripts/bench --adopt appview         # bench/appview.json as the appview part
    scripts/bench --adopt ingest=RAW.json --quick   # a bench_ingest --raw-json file
    scripts/bench --list                  # the benchmarks and their arguments
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

ROOT = benchlib.ROOT
SCRIPTS = ROOT / "scripts"
BENCH = ROOT / "bench"
PARTS = BENCH / "parts"
RESULTS = BENCH / "results.json"
README = ROOT / "README.md"
APPVIEW_RAW = BENCH / "appview.json"


@dataclass(frozen=True)
class Bench:
    """One benchmark: its script ``scripts/<script>.py``, the arguments of the
    default run and of ``--quick`` (``None``: ``--quick`` when the script has it,
    else ``--runs 1`` when it has that), a time limit, and how its output becomes
    a part (``None``: the script writes one with ``--json``)."""

    name: str
    script: str
    args: tuple[str, ...] = ()
    quick: tuple[str, ...] | None = None
    timeout_s: float = 900.0
    adapter: str | None = None
    expect_s: float = 60.0  # rough duration of the default run here, for --list
    notes: tuple[str, ...] = field(default=())


def _argv(text: str) -> tuple[str, ...]:
    return tuple(text.split())


#: The default run, in order (scaling last: the README draws its shard-read fit
#: from the runtime part). The two service benchmarks run with smaller settings
#: than their own defaults so that the whole run fits in about 33 minutes on this
#: 2-core machine (``--list`` shows each one's last wall time): ingestion about
#: 10 minutes instead of 25 (30,000-frame streams, 5 s lag windows, 4+2+4 s
#: overload, 200,000 rows for retention; 3 runs kept), the AppView about 6 instead
#: of 10 (50,000 entries, 5 s per method, 300 + 50 backfilled repositories; 3 runs).
BENCHMARKS: tuple[Bench, ...] = (
    Bench("build", "bench_build", expect_s=30),
    Bench("frontend", "bench_frontend", expect_s=40),
    Bench("check", "bench_check", expect_s=40),
    Bench("validate", "bench_validate", expect_s=90),
    Bench("runtime", "bench_runtime", expect_s=120),
    Bench("publish", "bench_publish", expect_s=150),
    Bench("load", "bench_load", quick=_argv("--runs 1 --stream-gb 1"), expect_s=150),
    Bench("lens", "bench_lens", expect_s=60),
    Bench("copy", "bench_copy", expect_s=30),
    Bench("verify", "bench_verify", expect_s=30),
    Bench("install", "bench_install", expect_s=90),
    Bench(
        "ingest",
        "bench_ingest",
        args=_argv(
            "--runs 3 --frames 30000 --dataset-frames 15000 --peer-frames 15000 "
            "--peer-dataset-frames 3000 --lag-seconds 5 --steady-seconds 4 "
            "--burst-seconds 2 --api-seconds 4 --retention-rows 200000"
        ),
        quick=_argv(
            "--runs 1 --frames 3000 --dataset-frames 2000 --peer-frames 2000 "
            "--peer-dataset-frames 500 --accounts 4 --records 30 --lag-seconds 3 "
            "--lag-rates 500 --steady-rate 300 --steady-seconds 2 --burst-seconds 1 "
            "--api-seconds 1 --retention-rows 20000"
        ),
        timeout_s=1800,
        adapter="ingest",
        expect_s=600,
    ),
    Bench(
        "appview",
        "bench_appview",
        # Its own defaults (100,000 entries, 1,000-repo backfill): the peer's
        # search slows as the index grows, so a smaller index flatters it.
        args=(),
        quick=("--quick",),
        timeout_s=1500,
        adapter="appview",
        expect_s=600,
    ),
    Bench("scaling", "bench_scaling", timeout_s=1200, expect_s=240),
)
BY_NAME = {b.name: b for b in BENCHMARKS}


# -- adapters: the two services' own output as parts ----------------------------------


def _part_from(
    report: benchlib.Report,
    *,
    commit: str,
    dirty: Sequence[str],
    date: str,
    load_before: Sequence[float],
    load_after: Sequence[float],
    wall_s: float,
) -> dict[str, Any]:
    part = report.as_dict()
    part.update(commit=commit, dirty=list(dirty), date=date, wall_s=wall_s)
    part["machine"]["load_before"] = list(load_before)
    part["machine"]["load_after"] = list(load_after)
    return part


def _runs(node: dict[str, Any]) -> list[float]:
    return [float(v) for v in node["runs"]]


def appview_part(raw: dict[str, Any]) -> dict[str, Any]:
    """The part of a ``bench/appview.json`` (``scripts/bench_appview.py``'s output):
    requests/s and p50/p99 per method under load and alone, for ours and the peer,
    the fold rate and the verified backfill, with the issue's goals (16:
    searchDatasets p99 < 20 ms; ≥ 2× atdata-app's requests/s at equal or better p99,
    here two goals per method; backfill ≥ 500 records/s). ``extra.raw`` keeps the
    summary the README's AppView table is drawn from."""
    s = raw["settings"]
    report = benchlib.Report(
        "appview",
        settings={k: s.get(k) for k in (
            "runs", "entries", "schemas", "lenses", "concurrency", "duration",
            "latency_duration", "warmup", "repos", "big_repos", "quick",
        )},
    )  # fmt: skip
    methods = ("searchDatasets", "getEntry", "resolveSchema", "getLensPath")
    for kind in ("load", "latency"):
        for target in ("ours", "peer"):
            for m, node in raw.get(kind, {}).get(target, {}).items():
                pre = f"{kind}_{target}_{m}"
                who = "ours" if target == "ours" else "atdata-app"
                report.metric(f"{pre}_rps", _runs(node["rps"]), "requests/s",
                              better="higher", label=f"{who} {m} ({kind})")  # fmt: skip
                for q in ("p50_ms", "p99_ms"):
                    report.metric(f"{pre}_{q}", _runs(node[q]), "ms",
                                  label=f"{who} {m} {q[:3]} ({kind})")  # fmt: skip
    conc = s.get("concurrency", 16)
    load = raw.get("load", {})
    for m in methods:
        if m not in load.get("ours", {}):
            continue
        has_peer = m in load.get("peer", {})
        peer = f"load_peer_{m}_rps" if has_peer else None
        report.row(
            "appview", f"`{m}`, requests/s ({conc} connections)", f"load_ours_{m}_rps",
            peer=peer, peer_name="atdata-app" if has_peer else None, fmt=",.0f",
            goal={"text": "≥ 2× atdata-app", "of": "speedup", "op": ">=",
                  "target": 2.0} if has_peer else None,
        )  # fmt: skip
        report.row(
            "appview", f"`{m}`, p99 ms ({conc} connections)", f"load_ours_{m}_p99_ms",
            peer=f"load_peer_{m}_p99_ms" if has_peer else None,
            peer_name="atdata-app" if has_peer else None, fmt=".1f",
            goal={"text": "p99 ≤ atdata-app's", "of": "time_ratio", "op": "<=",
                  "target": 1.0} if has_peer else None,
        )  # fmt: skip
    for kind in ("load", "latency"):
        if "searchDatasets" in raw.get(kind, {}).get("ours", {}):
            report.row(
                "appview", f"`searchDatasets` p99 ms ({kind})",
                f"{kind}_ours_searchDatasets_p99_ms",
                peer=f"{kind}_peer_searchDatasets_p99_ms"
                if "searchDatasets" in raw[kind].get("peer", {}) else None,
                peer_name="atdata-app", fmt=".1f",
                goal={"text": "p99 < 20 ms", "of": "ours", "op": "<=", "target": 20.0},
            )  # fmt: skip
    if "fold" in raw:
        f = raw["fold"]
        report.metric("fold_records_s", [f["fold_records_s"]], "records/s",
                      better="higher", label="fold of the log into the index")  # fmt: skip
        report.row("appview", f"fold, {f['records']:,.0f} records", "fold_records_s",
                   fmt=",.0f")  # fmt: skip
    for key, what in (("backfill", "verified backfill"),
                      ("backfill_all", "verified backfill, + larger repos")):  # fmt: skip
        if key in raw:
            b = raw[key]
            report.metric(f"{key}_records_s", _runs(b["records_s"]), "records/s",
                          better="higher", label=what)  # fmt: skip
            report.row(
                "appview", f"{what}, {b['repos']:,} repos", f"{key}_records_s",
                fmt=",.0f",
                goal={"text": "≥ 500 records/s", "of": "ours", "op": ">=",
                      "target": 500.0} if key == "backfill" else None,
            )  # fmt: skip
    keep = ("benchmark", "commit", "date", "settings", "machine", "load", "latency",
            "fold", "backfill", "backfill_all", "seed", "peer")  # fmt: skip
    trimmed = {k: raw[k] for k in keep if k in raw}
    for k in ("backfill", "backfill_all"):
        if k in trimmed:
            trimmed[k] = {a: b for a, b in trimmed[k].items() if a != "runs"}
    report.extra["raw"] = trimmed
    m = raw.get("machine", {})
    return _part_from(
        report,
        commit=raw.get("commit", ""),
        dirty=raw.get("dirty_files", []),
        date=raw.get("date", ""),
        load_before=m.get("load_before", []),
        load_after=m.get("load_after", []),
        wall_s=float(raw.get("wall_s", 0.0)),
    )


def ingest_part(
    raw: dict[str, Any], *, commit: str, dirty: Sequence[str], date: str
) -> dict[str, Any]:
    """The part of ``scripts/bench_ingest.py --raw-json`` output: events/s of the
    real ingester per stream and ``--verify`` against atdata-app's Jetstream loop
    on the same events (unfiltered; the filtered figure is a note), commit lag,
    RSS under a burst, ``/events`` reads/s and retention DROP vs DELETE."""
    report = benchlib.Report("ingest", settings=dict(raw.get("settings", {})))
    ours, peer = raw.get("ours", {}), raw.get("peer", {})
    ev = "events/s"

    def runs_of(rs: list[dict[str, float]], key: str) -> list[float]:
        return [float(r[key]) for r in rs]

    for key, rs in ours.items():
        stream, verify = key.split("/")
        report.metric(f"{stream}_{verify}_events_s", runs_of(rs, "events_s"), ev,
                      better="higher", label=f"ours, {stream}, --verify {verify}")  # fmt: skip
    peer_keys = {"mixed/": "peer_mixed", "mixed/science.alt.dataset.*":
                 "peer_mixed_filtered", "dataset/": "peer_dataset"}  # fmt: skip
    for key, rs in peer.items():
        report.metric(f"{peer_keys[key]}_events_s", runs_of(rs, "events_s"), ev,
                      better="higher", label=f"atdata-app, {key}")  # fmt: skip
    for stream, label, peer_key in (
        ("mixed", "mixed stream (≈10 % `science.alt.dataset.*`)", "peer_mixed"),
        ("dataset", "dataset-only stream", "peer_dataset"),
    ):
        for verify in ("none", "dataset", "all"):
            mk = f"{stream}_{verify}_events_s"
            if mk not in report.metrics:
                continue
            pk = f"{peer_key}_events_s"
            has = pk in report.metrics
            tag = " (default)" if verify == "dataset" else ""
            report.row("ingest", f"{label}, `--verify {verify}`{tag}", mk,
                       peer=pk if has else None,
                       peer_name="atdata-app, unfiltered" if has else None,
                       fmt=",.0f")  # fmt: skip
    if "peer_mixed_filtered_events_s" in report.metrics:
        f = report.metrics["peer_mixed_filtered_events_s"]["median"]
        report.note(
            f"atdata-app with its default wantedCollections=science.alt.dataset.* on "
            f"the mixed stream: {f:,.0f} stream events/s (the relay sends it only the "
            "dataset commits and identity/account events, about 1 in 10)."
        )
    for lag in raw.get("lag", []):
        base = f"lag_{lag['rate']:.0f}_{lag['verify']}"
        for q in ("p50_ms", "p99_ms"):
            report.metric(f"{base}_{q}", runs_of(lag["runs"], q), "ms",
                          label=f"commit lag {q[:3]}")  # fmt: skip
        report.row(
            "ingest",
            f"commit lag p50 at {lag['events_s']:,.0f} events/s "
            f"(`--verify {lag['verify']}`)", f"{base}_p50_ms", fmt=",.0f",
        )  # fmt: skip
        report.row(
            "ingest",
            f"commit lag p99 at {lag['events_s']:,.0f} events/s "
            f"(`--verify {lag['verify']}`)", f"{base}_p99_ms", fmt=",.0f",
        )  # fmt: skip
    for ov in raw.get("overload", []):
        tag = "default" if ov["label"].startswith("default") else "nopause"
        shown = "default settings" if tag == "default" else "`PAUSE_MS=0`"
        for key in ("rss_steady_mib", "rss_peak_mib", "exits_75"):
            report.metric(f"overload_{tag}_{key}", runs_of(ov["runs"], key),
                          "MiB" if key.endswith("mib") else "exits")  # fmt: skip
        report.row("ingest", f"RSS before a 10× burst ({shown})",
                   f"overload_{tag}_rss_steady_mib", fmt=",.0f")  # fmt: skip
        report.row("ingest", f"RSS peak under a 10× burst ({shown})",
                   f"overload_{tag}_rss_peak_mib", fmt=",.0f")  # fmt: skip
        report.row("ingest", f"child exits 75 under the burst ({shown})",
                   f"overload_{tag}_exits_75", fmt=".0f")  # fmt: skip
    for label, rs in raw.get("api", {}).items():
        tag = "all" if label == "all events" else "collection"
        report.metric(f"api_{tag}_reads_s", runs_of(rs, "reads_s"), "reads/s",
                      better="higher", label=f"GET /events {label}")  # fmt: skip
        report.metric(f"api_{tag}_events_s", runs_of(rs, "events_s"), ev,
                      better="higher", label=f"GET /events {label}")  # fmt: skip
        report.row("ingest", f"`GET /events?limit=1000` ({label})",
                   f"api_{tag}_reads_s", fmt=",.0f")  # fmt: skip
    ret = raw.get("retention")
    if ret:
        for method in ("drop", "delete"):
            rs = ret[method]
            report.metric(f"retention_{method}_ms",
                          [r["seconds"] * 1000 for r in rs], "ms")  # fmt: skip
            report.metric(f"retention_{method}_wal_mib",
                          [r["wal"] / 2**20 for r in rs], "MiB")  # fmt: skip
        report.row("ingest",
                   f"retention: remove {ret['gone']:,} of {ret['rows']:,} events",
                   "retention_drop_ms", peer="retention_delete_ms",
                   peer_name="row DELETE", fmt=",.0f")  # fmt: skip
        report.row("ingest", "retention: WAL written", "retention_drop_wal_mib",
                   peer="retention_delete_wal_mib", peer_name="row DELETE",
                   fmt=",.1f")  # fmt: skip
    streams = raw.get("streams", {})
    if streams:
        report.note(
            "Streams: "
            + "; ".join(
                f"{k} {v['frames']:,} template frames, {v['events']:,} events"
                for k, v in streams.items()
            )
            + ". Ours: the real `atdata-ingest run` process into PostgreSQL 15 (fsync "
            "on); the peer writes one transaction per event, so its rate follows the "
            "disk's commit latency."
        )
    return _part_from(
        report,
        commit=commit,
        dirty=dirty,
        date=raw.get("date", date),
        load_before=raw.get("load_before", []),
        load_after=raw.get("load_after", []),
        wall_s=float(raw.get("wall_s", 0.0)),
    )


# -- running ----------------------------------------------------------------------------


def _help(script: Path) -> str:
    try:
        return subprocess.run(
            [sys.executable, str(script), "--help"],
            capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
        ).stdout  # fmt: skip
    except subprocess.TimeoutExpired:
        return ""


def command(b: Bench, out: Path, *, quick: bool) -> list[str]:
    """The argv of one benchmark writing its output to ``out``. Raises
    ``RuntimeError`` when the script is missing or does not take ``--json``."""
    script = SCRIPTS / f"{b.script}.py"
    if not script.exists():
        raise RuntimeError(f"no {script.relative_to(ROOT)}")
    argv = [sys.executable, str(script)]
    if quick:
        if b.quick is not None:
            argv += b.quick
        else:
            text = _help(script)
            if "--quick" in text:
                argv.append("--quick")
            elif "--runs" in text:
                argv += ["--runs", "1"]
    else:
        argv += b.args
    if b.adapter == "ingest":
        return [*argv, "--raw-json", str(out)]
    if b.adapter == "appview":
        return [*argv, "--out", str(out)]
    if "--json" not in _help(script):
        raise RuntimeError(
            f"{script.relative_to(ROOT)} takes no --json (not on the benchlib contract)"
        )
    return [*argv, "--json", str(out)]


def check_part(part: dict[str, Any], name: str) -> None:
    """A part names a benchmark (its own name, kept; ``results["parts"]`` is keyed
    by ``name``), its rows name recorded metrics, and no goal
    carries a verdict (the table generator computes it). Raises ``ValueError``."""
    if not part.get("benchmark"):
        raise ValueError(f"the {name} part names no benchmark")
    metrics = part.get("metrics", {})
    for row in part.get("rows", []):
        for key in (row["ours"], row.get("peer")):
            if key is not None and key not in metrics:
                raise ValueError(f"row {row['measure']!r} names no metric {key!r}")
        goal = row.get("goal") or {}
        if {"met", "value"} & goal.keys():
            raise ValueError(f"row {row['measure']!r}: a goal must not store a verdict")


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stop a benchmark we started: SIGINT first (its context managers stop its
    PostgreSQL cluster and local network), then SIGTERM, then SIGKILL of its own
    process group (it was started in a new session)."""
    for sig, wait in ((signal.SIGINT, 60.0), (signal.SIGTERM, 30.0)):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_one(b: Bench, *, quick: bool, log_dir: Path) -> dict[str, Any]:
    """Run one benchmark; returns its part. Raises ``RuntimeError`` on failure."""
    PARTS.mkdir(parents=True, exist_ok=True)
    raw_out = log_dir / f"{b.name}.out.json"
    if b.adapter == "appview":
        raw_out = APPVIEW_RAW if not quick else log_dir / "appview.json"
    raw_out.unlink(missing_ok=True)
    argv = command(b, raw_out, quick=quick)
    sha, dirty = benchlib.git_state()
    date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    log = log_dir / f"{b.name}.log"
    print(f"\n=== {b.name}: {' '.join(argv[1:])}", flush=True)
    with log.open("w") as lf:
        proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, bufsize=1, start_new_session=True,
        )  # fmt: skip
        assert proc.stdout is not None
        out = proc.stdout

        def copy() -> None:
            for line in out:
                sys.stdout.write(line)
                sys.stdout.flush()
                lf.write(line)

        reader = threading.Thread(target=copy, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=b.timeout_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise RuntimeError(
                f"timed out after {b.timeout_s:.0f} s (log {log})"
            ) from None
        except KeyboardInterrupt:
            _stop(proc)
            raise
        finally:
            reader.join(10)
    if proc.returncode != 0:
        raise RuntimeError(f"exit status {proc.returncode} (log {log})")
    if not raw_out.exists():
        raise RuntimeError(f"wrote no {raw_out} (log {log})")
    raw = json.loads(raw_out.read_text())
    if b.adapter == "ingest":
        part = ingest_part(raw, commit=sha, dirty=dirty, date=date)
    elif b.adapter == "appview":
        part = appview_part(raw)
    else:
        part = raw
    check_part(part, b.name)
    shown = ["<out>" if a == str(raw_out) else a for a in argv[2:]]
    part["bench_all"] = {
        "quick": quick,
        "script": f"scripts/{b.script}",
        "args": shown,
    }
    (PARTS / f"{b.name}.json").write_text(
        json.dumps(part, indent=1, sort_keys=True) + "\n"
    )
    return part


def load_results() -> dict[str, Any]:
    if RESULTS.exists():
        data: dict[str, Any] = json.loads(RESULTS.read_text())
        data.setdefault("parts", {})
        return data
    return {"parts": {}}


def write_results(results: dict[str, Any]) -> None:
    BENCH.mkdir(parents=True, exist_ok=True)
    order = [b.name for b in BENCHMARKS]
    parts = results["parts"]
    results["parts"] = {
        k: parts[k]
        for k in sorted(parts, key=lambda n: (order.index(n) if n in order else 99, n))
    }
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps(results, indent=1, sort_keys=False, ensure_ascii=False) + "\n"
    )
    os.replace(tmp, RESULTS)


def regenerate() -> None:
    """README tables and PNGs from ``bench/results.json``."""
    import bench_scaling
    import bench_tables

    README.write_text(bench_tables.render(README.read_text()))
    print(f"regenerated the benchmark tables of {README.relative_to(ROOT)}")
    for path in bench_scaling.plot(json.loads(RESULTS.read_text()), BENCH):
        print(f"drew {path.relative_to(ROOT)}")


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(
            f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}"
        )
    return names


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated benchmarks to run")
    ap.add_argument("--skip", default="", help="comma-separated benchmarks not to run")
    ap.add_argument("--quick", action="store_true", help="fewer runs: a smoke run")
    ap.add_argument("--list", action="store_true", help="print the benchmarks")
    ap.add_argument("--tables", action="store_true",
                    help="only regenerate the README tables and PNGs")  # fmt: skip
    ap.add_argument("--adopt", default="", metavar="NAME[=PATH],...",
                    help="make parts of existing outputs: appview[=bench/appview.json], "
                    "ingest=RAW.json (bench_ingest --raw-json); with --quick, marked "
                    "as a smoke run")  # fmt: skip
    args = ap.parse_args(argv)
    if args.list:
        last = load_results()["parts"]
        for b in BENCHMARKS:
            wall = last.get(b.name, {}).get("wall_s")
            seen = f"last {wall / 60:4.1f} min" if wall else "not run yet  "
            print(f"{b.name:10} ~{b.expect_s / 60:4.1f} min ({seen})  "
                  f"scripts/{b.script}.py " + " ".join(b.args))  # fmt: skip
        total = sum(b.expect_s for b in BENCHMARKS)
        print(f"{'total':10} ~{total / 60:4.1f} min")
        return 0
    results = load_results()
    if args.adopt:
        for item in args.adopt.split(","):
            name, _, path = item.partition("=")
            if name == "appview":
                raw = json.loads(Path(path or APPVIEW_RAW).read_text())
                part = appview_part(raw)
            elif name == "ingest" and path:
                sha, dirty = benchlib.git_state()
                raw = json.loads(Path(path).read_text())
                date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
                part = ingest_part(raw, commit=sha, dirty=dirty, date=date)
            else:
                raise SystemExit("--adopt takes appview[=PATH] or ingest=PATH")
            check_part(part, name)
            part["bench_all"] = {
                "quick": args.quick,
                "adopted": path or str(APPVIEW_RAW),
            }
            results["parts"][name] = part
        write_results(results)
        regenerate()
        return 0
    if args.tables:
        regenerate()
        return 0
    chosen = _names(args.only) if args.only else [b.name for b in BENCHMARKS]
    skip = set(_names(args.skip)) if args.skip else set()
    todo = [n for n in chosen if n not in skip]
    sha, dirty = benchlib.git_state()
    started = time.perf_counter()
    durations: dict[str, float] = {}
    failed: dict[str, str] = {}
    log_dir = Path(tempfile.mkdtemp(prefix="atdata-bench-"))
    print(f"scripts/bench: {', '.join(todo)}; logs in {log_dir}", flush=True)
    for name in todo:
        t = time.perf_counter()
        try:
            results["parts"][name] = run_one(BY_NAME[name], quick=args.quick,
                                             log_dir=log_dir)  # fmt: skip
        except (RuntimeError, ValueError, OSError, json.JSONDecodeError) as e:
            failed[name] = str(e)
            print(f"=== {name} FAILED: {e}", flush=True)
        durations[name] = round(time.perf_counter() - t, 1)
        print(f"=== {name}: {durations[name]:.0f} s", flush=True)
        results["run"] = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "commit": sha,
            "dirty": dirty,
            "machine": benchlib.machine(),
            "options": {"only": todo, "quick": args.quick},
            "wall_s": round(time.perf_counter() - started, 1),
            "durations_s": durations,
            "failed": failed,
        }
        write_results(results)  # after each benchmark: nothing lost on a later failure
    if results.get("parts"):
        regenerate()
    print(f"\nscripts/bench: {time.perf_counter() - started:.0f} s")
    for name, s in durations.items():
        print(
            f"  {name:10} {s:6.0f} s"
            + (f"  FAILED: {failed[name]}" if name in failed else "")
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
