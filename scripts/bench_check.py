"""Benchmark ``atdata-gen check`` on the whole official corpus (issue 17: the corpus
against itself as a whole CLI process in at most 0.4 s).

Prints the median (and spread) of ``--runs`` timings for: the corpus against itself,
and the corpus against a copy with ``--edits`` seeded random edits (the oracle's
mutations: property deleted/added/retyped, bounds, formats, unions, refs, record
keys). Each is timed in-process (compile both sides + compare + policy) and as a
whole CLI process (the installed ``atdata-gen`` script, started by a small launcher
so that its peak RSS is its own: see :func:`spawn`), with the IR cache warm (the
default: a repeated check) and off (``ATDATA_GEN_CACHE=0``: every side compiled,
as a first check). With ``--json PATH`` writes the ``check`` part (tables
``check`` and ``memory``). No other Lexicon breaking-change checker runs here
(indigo's ``goat lex breaking`` is Go and needs the network to build), so there is
no peer ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib
from atdata_gen.checks.runner import run_check
from atdata_gen.pipeline import BuildOptions, compile_sources
from atdata_gen.testing.oracle import mutate

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
OFFICIAL = CORPUS / "lexicons" / "atproto-official"


def edited_copy(dest: Path, edits: int, seed: int) -> int:
    """Copy the corpus to ``dest`` and apply ``edits`` edits that keep it
    compiling; returns how many findings they cause (for the report)."""
    shutil.copytree(OFFICIAL, dest)
    rng = random.Random(seed)
    files = sorted(dest.rglob("*.json"))
    done = 0
    while done < edits:
        path = rng.choice(files)
        original = path.read_text()
        m = mutate(json.loads(original), rng)
        if m is None:
            continue
        path.write_text(json.dumps(m.doc, indent=2))
        if compile_sources(BuildOptions([dest])).reporter.has_errors:
            path.write_text(original)
            continue
        done += 1
    return done


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    """Wall seconds of ``runs`` calls of ``fn`` (after one warm-up call)."""
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def spawn(
    cmd: list[str], env: dict[str, str] | None = None
) -> tuple[float, float, int]:
    """One whole-process run of ``cmd``: wall seconds, peak RSS in MiB and exit
    code (``benchlib.run_process``: its own peak, through a small launcher)."""
    run = benchlib.run_process(cmd, env={**os.environ, **(env or {})}, check=False)
    return run.seconds, run.peak_rss / 2**20, run.returncode


def cli_runs(
    cmd: list[str], runs: int, env: dict[str, str] | None = None
) -> tuple[list[float], list[float]]:
    """Wall seconds and peak RSS (MiB) of ``runs`` whole-process runs of ``cmd``
    (after one warm-up run, which fills the page cache and writes bytecode). Exit 0
    and 1 (findings) are results; any other exit fails the benchmark (rerun with
    ``benchlib.run_process`` to show its output)."""
    spawn(cmd, env)
    seconds, rss = [], []
    for _ in range(runs):
        elapsed, peak, code = spawn(cmd, env)
        if code not in (0, 1):
            benchlib.run_process(cmd)  # raises SystemExit with the output
            raise SystemExit(f"{' '.join(cmd)} exited {code}")
        seconds.append(elapsed)
        rss.append(peak)
    return seconds, rss


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "atdata-gen"
    if script.exists():
        return [str(script), "check"]
    return [sys.executable, "-m", "atdata_gen.cli", "check"]


def show(label: str, values: list[float], unit: str, fmt: str = ".3f") -> None:
    med = statistics.median(values)
    print(
        f"{label:28} median {med:{fmt}} {unit} "
        f"(min {min(values):{fmt}}, max {max(values):{fmt}}, {len(values)} runs)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--edits", type=int, default=50)
    benchlib.add_json_arg(ap)
    args = ap.parse_args()
    n_files = len(list(OFFICIAL.rglob("*.json")))
    report = benchlib.Report(
        "check", settings={"runs": args.runs, "edits": args.edits, "lexicons": n_files}
    )
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "edited"
        edited_copy(copy, args.edits, seed=2026)
        found = run_check([copy], [str(OFFICIAL)]).findings
        breaking = sum(1 for f in found if f.breaks)
        print(
            f"corpus: {n_files} Lexicons; edited copy: {args.edits} edits → "
            f"{len(found)} findings ({breaking} breaking)"
        )
        self_in = timed(lambda: run_check([OFFICIAL], [str(OFFICIAL)]), args.runs)
        edits_in = timed(lambda: run_check([copy], [str(OFFICIAL)]), args.runs)
        cli = _cli()
        self_cli, self_rss = cli_runs(
            [*cli, str(OFFICIAL), "--against", str(OFFICIAL)], args.runs
        )
        edits_cli, edits_rss = cli_runs(
            [*cli, str(copy), "--against", str(OFFICIAL), "--format", "json"],
            args.runs,
        )
        # The same without the IR cache: every side compiled (a first check).
        cold = {"ATDATA_GEN_CACHE": "0"}
        self_cold, self_cold_rss = cli_runs(
            [*cli, str(OFFICIAL), "--against", str(OFFICIAL)], args.runs, cold
        )
        edits_cold, _ = cli_runs(
            [*cli, str(copy), "--against", str(OFFICIAL), "--format", "json"],
            args.runs,
            cold,
        )
    show("self, in-process", self_in, "s")
    show(f"{args.edits} edits, in-process", edits_in, "s")
    show("self, CLI process", self_cli, "s")
    show(f"{args.edits} edits, CLI process", edits_cli, "s")
    show("self, CLI, no IR cache", self_cold, "s")
    show(f"{args.edits} edits, CLI, no IR cache", edits_cold, "s")
    show("self, CLI peak RSS", self_rss, "MiB", ".1f")
    show("self, no cache, peak RSS", self_cold_rss, "MiB", ".1f")
    show(f"{args.edits} edits, CLI peak RSS", edits_rss, "MiB", ".1f")

    report.metric("check_self_cli_s", self_cli, "s", label="check, corpus vs itself")
    report.metric(
        "check_edits_cli_s", edits_cli, "s", label=f"check, {args.edits} edits"
    )
    report.metric("check_self_inproc_s", self_in, "s", label="in-process, itself")
    report.metric(
        "check_edits_inproc_s", edits_in, "s", label=f"in-process, {args.edits} edits"
    )
    report.metric(
        "check_self_nocache_cli_s", self_cold, "s", label="itself, no IR cache"
    )
    report.metric(
        "check_edits_nocache_cli_s", edits_cold, "s", label="edits, no IR cache"
    )
    report.metric("check_peak_rss_mib", self_rss, "MiB", label="check peak RSS")
    report.metric(
        "check_nocache_peak_rss_mib",
        self_cold_rss,
        "MiB",
        label="check peak RSS, no IR cache",
    )
    report.metric(
        "check_edits_peak_rss_mib", edits_rss, "MiB", label="check peak RSS, edits"
    )
    report.row(
        "check",
        f"`atdata-gen check`, {n_files} Lexicons against themselves (CLI process, s)",
        "check_self_cli_s",
        fmt=".2f",
        goal={"text": "≤ 0.4 s", "of": "ours", "op": "<=", "target": 0.4},
    )
    report.row(
        "check",
        f"`atdata-gen check`, against {args.edits} random edits "
        f"({len(found)} findings; CLI process, s)",
        "check_edits_cli_s",
        fmt=".2f",
    )
    report.row(
        "check",
        f"`atdata-gen check`, {n_files} Lexicons against themselves, IR cache off "
        "(CLI process, s)",
        "check_self_nocache_cli_s",
        fmt=".2f",
    )
    report.row(
        "check",
        f"`atdata-gen check`, against {args.edits} edits, IR cache off "
        "(CLI process, s)",
        "check_edits_nocache_cli_s",
        fmt=".2f",
    )
    report.row(
        "check",
        "`run_check`, corpus against itself (in-process, s)",
        "check_self_inproc_s",
        fmt=".2f",
    )
    report.row(
        "check",
        f"`run_check`, against {args.edits} edits (in-process, s)",
        "check_edits_inproc_s",
        fmt=".2f",
    )
    report.row(
        "memory",
        f"peak RSS of `atdata-gen check`, {n_files} Lexicons against themselves (MiB)",
        "check_peak_rss_mib",
        fmt=".0f",
    )
    report.row(
        "memory",
        f"peak RSS of `atdata-gen check` against {args.edits} edits (MiB)",
        "check_edits_peak_rss_mib",
        fmt=".0f",
    )
    report.row(
        "memory",
        f"peak RSS of `atdata-gen check`, {n_files} Lexicons, IR cache off (MiB)",
        "check_nocache_peak_rss_mib",
        fmt=".0f",
    )
    report.note(
        "The IR cache (atdata_gen.ircache) is warm in the default rows (a repeated "
        "check of unchanged files); the 'IR cache off' rows compile every side "
        "(ATDATA_GEN_CACHE=0), as a first check does."
    )
    report.note(
        "No other Lexicon breaking-change checker runs here (indigo's `goat lex "
        "breaking` is Go and needs the network to build): no peer ratio."
    )
    report.write(args.json)


if __name__ == "__main__":
    main()
