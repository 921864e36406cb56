"""Benchmark: whole-process timings of ``atdata-gen build`` against MarshalX's
``atproto gen models`` (the atproto SDK's generator), median of ``--runs`` runs,
interleaved so that both see the same machine load.

* cold build: empty output directory, all 402 official Lexicons (wall seconds, and
  the peak RSS of the build's largest process, MiB);
* no-op check: ``build --check`` on an up-to-date output (manifest fast path);
* MarshalX: ``atproto gen --lexicon-dir … models --output-dir …``;
* stage breakdown: one fresh interpreter per run times ``import
  atdata_gen.pipeline``, then ``build()``'s own stage timings (load, parse+lower,
  link, lint, emit, format) and ``write_package`` (write), so the figures show where
  a cold build's time goes.

Output goes to a directory on the same file system as this repository.
``--json PATH`` writes the benchmark part (``scripts/benchlib.py``).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

ROOT = benchlib.ROOT
OFFICIAL = ROOT.parent / "shared" / "corpus" / "lexicons" / "atproto-official"
BIN = Path(sys.executable).parent
MIB = 1024 * 1024

STAGES = ("import", "load", "parse+lower", "link", "lint", "emit", "format", "write")

# Run in a fresh interpreter: argv[1] corpus, argv[2] output root; prints JSON.
_STAGE_PROBE = """
import json, sys, time
t0 = time.perf_counter()
from atdata_gen.pipeline import BuildOptions, build
t1 = time.perf_counter()
from pathlib import Path
from atdata_gen.backend.write import write_package
out = Path(sys.argv[2])
result = build(BuildOptions([Path(sys.argv[1])], "bench_pkg"))
assert result.files is not None, "the build failed"
t2 = time.perf_counter()
write_package(out / "bench_pkg", dict(result.files), out)
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, **result.timings, "write": t3 - t2}))
"""


def _cpu() -> float:
    """User + system seconds of every child this process has waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _key(stage: str) -> str:
    return "stage_" + stage.replace("+", "_") + "_s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    benchlib.add_json_arg(ap)
    args = ap.parse_args()
    n_lex = len(list(OFFICIAL.rglob("*.json")))
    work = Path(tempfile.mkdtemp(prefix=".bench-build-", dir=ROOT))
    try:
        ours = [
            str(BIN / "atdata-gen"),
            "build",
            str(OFFICIAL),
            "--out",
            str(work / "ours"),
            "--package",
            "bench_pkg",
            "-q",
        ]
        theirs = [
            str(BIN / "atproto"),
            "gen",
            "--lexicon-dir",
            str(OFFICIAL),
            "models",
            "--output-dir",
            str(work / "marshalx"),
        ]
        cold: list[float] = []
        rss: list[float] = []
        noop: list[float] = []
        mx: list[float] = []
        mx_rss: list[float] = []
        cpu: list[float] = []
        mx_cpu: list[float] = []
        stages: dict[str, list[float]] = {s: [] for s in STAGES}
        for _ in range(args.runs):
            shutil.rmtree(work / "ours", ignore_errors=True)
            c0 = _cpu()
            run = benchlib.run_process(ours)
            cpu.append(_cpu() - c0)
            cold.append(run.seconds)
            rss.append(run.peak_rss / MIB)
            noop.append(benchlib.run_process([*ours, "--check"]).seconds)
            shutil.rmtree(work / "marshalx", ignore_errors=True)
            (work / "marshalx").mkdir()
            c0 = _cpu()
            run = benchlib.run_process(theirs)
            mx_cpu.append(_cpu() - c0)
            mx.append(run.seconds)
            mx_rss.append(run.peak_rss / MIB)
            shutil.rmtree(work / "probe", ignore_errors=True)
            probe = benchlib.run_process(
                [sys.executable, "-c", _STAGE_PROBE, str(OFFICIAL), str(work / "probe")]
            )
            for stage, seconds in json.loads(probe.stdout).items():
                stages.setdefault(stage, []).append(seconds)
        n_ours = sum(1 for _ in (work / "ours").rglob("*.py"))
        n_mx = sum(1 for _ in (work / "marshalx").rglob("*.py"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    report = benchlib.Report(
        "build",
        settings={
            "runs": args.runs,
            "lexicons": n_lex,
            "files_ours": n_ours,
            "files_marshalx": n_mx,
            "corpus": "shared/corpus/lexicons/atproto-official",
        },
    )
    report.metric("cold_build_s", cold, "s", label="atdata-gen cold build")
    report.metric("marshalx_s", mx, "s", label="MarshalX atproto gen models")
    report.metric("noop_check_s", noop, "s", label="atdata-gen no-op build --check")
    report.metric(
        "cold_build_cpu_s", cpu, "s", label="atdata-gen cold build CPU (all processes)"
    )
    report.metric("marshalx_cpu_s", mx_cpu, "s", label="MarshalX CPU")
    report.metric("peak_rss_mib", rss, "MiB", label="cold build peak RSS")
    report.metric("marshalx_peak_rss_mib", mx_rss, "MiB", label="MarshalX peak RSS")
    for stage, values in stages.items():
        if values:
            report.metric(_key(stage), values, "s", label=f"in-process stage {stage}")
    report.row(
        "build",
        f"cold build, {n_lex} Lexicons (s)",
        "cold_build_s",
        peer="marshalx_s",
        peer_name="MarshalX",
        fmt=".2f",
        goal={
            "text": "≤ 0.6× MarshalX",
            "of": "time_ratio",
            "op": "<=",
            "target": 0.6,
        },
    )
    report.row(
        "build",
        "no-op build --check (s)",
        "noop_check_s",
        fmt=".2f",
        goal={"text": "≤ 0.12 s", "of": "ours", "op": "<=", "target": 0.12},
    )
    report.row(
        "memory",
        f"peak RSS, cold build of {n_lex} Lexicons (MiB)",
        "peak_rss_mib",
        peer="marshalx_peak_rss_mib",
        peer_name="MarshalX",
        fmt=".0f",
    )
    breakdown = ", ".join(f"{s} {med(v):.3f}" for s, v in stages.items() if v)
    report.note(
        f"in-process stage medians (s): {breakdown}. With worker processes, "
        "emit includes the workers' ruff runs; format is the rest."
    )
    report.note(
        f"CPU seconds (user+system, every process): atdata-gen {med(cpu):.2f}, "
        f"MarshalX {med(mx_cpu):.2f} (a load-independent view on a busy machine)"
    )
    report.write(args.json)

    def runs(values: list[float], fmt: str = ".2f") -> str:
        return ", ".join(format(v, fmt) for v in values)

    print(
        f"build of {n_lex} official Lexicons, median of {args.runs} whole-process runs"
    )
    print(
        f"  atdata-gen cold build        {med(cold):6.2f} s  ({n_ours} files)  "
        f"runs: {runs(cold)}"
    )
    print(f"  atdata-gen no-op --check     {med(noop):6.2f} s  runs: {runs(noop)}")
    print(
        f"  MarshalX atproto gen models  {med(mx):6.2f} s  ({n_mx} files)  "
        f"runs: {runs(mx)}"
    )
    print(f"  ratio cold build / MarshalX: {med(cold) / med(mx):.2f} (goal ≤ 0.6)")
    print(f"  peak RSS: atdata-gen {med(rss):.0f} MiB, MarshalX {med(mx_rss):.0f} MiB")
    print(
        f"  CPU s (all processes): atdata-gen {med(cpu):.2f}, MarshalX {med(mx_cpu):.2f}"
    )
    print(f"  in-process stages (median s): {breakdown}")
    print("  (with workers, emit includes their ruff runs)")


if __name__ == "__main__":
    main()
