"""What every benchmark script shares: medians with spread, whole-process timing with
peak RSS, machine information, and the JSON *part* each script writes with
``--json PATH``. ``scripts/bench`` runs every script, merges the parts into
``bench/results.json`` and regenerates the README's tables from it
(``scripts/bench_tables.py``), so no figure is ever copied by hand.

A part is::

    {"benchmark": NAME, "commit": SHA, "dirty": [paths], "date": ISO-8601 UTC,
     "machine": {...}, "settings": {...},
     "metrics": {KEY: {"median", "min", "max", "runs": [...], "unit", "better",
                       "label"}},
     "rows": [{"table", "measure", "ours", "peer", "peer_name", "fmt", "goal"}],
     "notes": [text]}

``rows`` say what the README shows: each row names a metric of ours and, when a peer
ran in the same run, the peer's metric. ``goal`` (optional) is ``{"text", "of",
"op", "target"}``: ``of`` is ``"speedup"`` (how many times faster ours is: peer/ours
for a time, ours/peer for a rate), ``"time_ratio"`` (ours/peer medians) or
``"ours"`` (our median itself); ``op`` is ``"<="`` or ``">="``. The table generator
computes the value and whether the goal is met; a script never writes a verdict.

Usage in a script::

    report = Report("build", settings={"runs": args.runs})
    report.metric("cold_build_s", times, "s", better="lower", label="cold build")
    report.row("build", "cold build, 402 Lexicons", "cold_build_s",
               peer="marshalx_s", peer_name="MarshalX", fmt=".2f",
               goal={"text": "≤ 0.6× MarshalX", "of": "time_ratio", "op": "<=",
                     "target": 0.6})
    report.write(args.json)   # no-op when --json was not given
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent

__all__ = [
    "ROOT",
    "ProcessRun",
    "Report",
    "add_json_arg",
    "git_state",
    "machine",
    "run_process",
    "stats",
]


def stats(
    values: Sequence[float],
    unit: str,
    *,
    better: Literal["lower", "higher"] = "lower",
    label: str = "",
) -> dict[str, Any]:
    """Median, min, max and every run of ``values`` (at least one)."""
    if not values:
        raise ValueError("a metric needs at least one run")
    vals = [float(v) for v in values]
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "runs": vals,
        "unit": unit,
        "better": better,
        "label": label,
    }


@dataclass
class ProcessRun:
    """One whole-process run: wall seconds, the child's peak RSS in bytes
    (``getrusage``'s ``ru_maxrss`` of exactly this child, via ``os.wait4``), exit
    status, and its output."""

    seconds: float
    peak_rss: int
    returncode: int
    stdout: str
    stderr: str


_LAUNCHER = """
import json, os, sys, time
fds = [os.open(sys.argv[1], os.O_RDONLY), os.open(sys.argv[2], os.O_WRONLY),
       os.open(sys.argv[3], os.O_WRONLY)]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    os.execvp(sys.argv[4], sys.argv[4:])
_, status, usage = os.wait4(pid, 0)
elapsed = time.perf_counter() - start
print(json.dumps([elapsed, usage.ru_maxrss, os.waitstatus_to_exitcode(status)]))
"""
"""Started as a small process of its own: Linux's ``ru_maxrss`` of a child counts
the memory it had before ``exec`` (a fork of its parent, or the parent itself under
``vfork``/``posix_spawn``), so a child of a large benchmark process would report the
benchmark's size. A fork of this launcher starts at about 10 MiB, below any Python
process it runs."""


def run_process(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    input: str | None = None,
    check: bool = True,
) -> ProcessRun:
    """Run ``cmd`` to completion; time it (from the fork to the exit, measured by
    the launcher, so the launcher's own start-up is not counted) and read its peak
    RSS. With ``check``, a non-zero exit raises ``SystemExit`` with its output."""
    with tempfile.TemporaryDirectory(prefix="benchlib-") as tmp:
        files = [Path(tmp) / name for name in ("stdin", "stdout", "stderr")]
        files[0].write_text(input or "")
        for f in files[1:]:
            f.touch()
        launcher = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, *map(str, files), *cmd],
            capture_output=True,
            text=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            check=False,
        )
        if launcher.returncode != 0:
            raise SystemExit(f"cannot run {cmd[0]}: {launcher.stderr[-3000:]}")
        elapsed, peak_kib, code = json.loads(launcher.stdout)
        run = ProcessRun(
            float(elapsed),
            int(peak_kib) * 1024,
            int(code),
            files[1].read_text(errors="replace"),
            files[2].read_text(errors="replace"),
        )
    if check and run.returncode != 0:
        raise SystemExit(
            f"{' '.join(cmd)} failed ({run.returncode}):\n"
            f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        )
    return run


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _mem_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine() -> dict[str, Any]:
    """What the figures were measured on (load average now)."""
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "mem_bytes": _mem_total(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load": list(os.getloadavg()),
    }


def git_state() -> tuple[str, list[str]]:
    """(commit SHA of HEAD, paths with uncommitted changes)."""
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    return sha, [line[3:] for line in dirty]


def add_json_arg(ap: argparse.ArgumentParser) -> None:
    """Add ``--json PATH`` (where to write this script's part)."""
    ap.add_argument(
        "--json",
        type=Path,
        default=None,
        help="write the results to this JSON file (scripts/bench merges them)",
    )


class Report:
    """Collects one benchmark's metrics and README rows; see the module docstring."""

    def __init__(self, name: str, settings: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.settings: dict[str, Any] = dict(settings or {})
        self.metrics: dict[str, dict[str, Any]] = {}
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.extra: dict[str, Any] = {}
        self._machine = machine()
        self._started = time.perf_counter()

    def metric(
        self,
        key: str,
        values: Sequence[float],
        unit: str,
        *,
        better: Literal["lower", "higher"] = "lower",
        label: str = "",
    ) -> dict[str, Any]:
        """Record ``values`` (one per run) under ``key``; returns its stats."""
        if key in self.metrics:
            raise KeyError(f"metric {key!r} recorded twice")
        self.metrics[key] = stats(values, unit, better=better, label=label)
        return self.metrics[key]

    def row(
        self,
        table: str,
        measure: str,
        ours: str,
        *,
        peer: str | None = None,
        peer_name: str | None = None,
        fmt: str = ".2f",
        goal: Mapping[str, Any] | None = None,
    ) -> None:
        """A README row of table ``table``: our metric ``ours`` and, if a peer ran in
        the same run, its metric ``peer``."""
        for key in (ours, peer):
            if key is not None and key not in self.metrics:
                raise KeyError(f"row {measure!r} names unknown metric {key!r}")
        if goal is not None:
            if goal.get("of") not in ("speedup", "time_ratio", "ours"):
                raise ValueError(f"goal 'of' must be speedup|time_ratio|ours: {goal}")
            if goal.get("op") not in ("<=", ">="):
                raise ValueError(f"goal 'op' must be <= or >=: {goal}")
            if goal["of"] != "ours" and peer is None:
                raise ValueError(f"a ratio goal needs a peer metric: {measure}")
        self.rows.append(
            {
                "table": table,
                "measure": measure,
                "ours": ours,
                "peer": peer,
                "peer_name": peer_name,
                "fmt": fmt,
                "goal": dict(goal) if goal is not None else None,
            }
        )

    def note(self, text: str) -> None:
        self.notes.append(text)

    def as_dict(self) -> dict[str, Any]:
        sha, dirty = git_state()
        m = dict(self._machine)
        m["load_before"] = m.pop("load")
        m["load_after"] = list(os.getloadavg())
        return {
            "benchmark": self.name,
            "commit": sha,
            "dirty": dirty,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "wall_s": time.perf_counter() - self._started,
            "machine": m,
            "settings": self.settings,
            "metrics": self.metrics,
            "rows": self.rows,
            "notes": self.notes,
            **({"extra": self.extra} if self.extra else {}),
        }

    def write(self, path: Path | None) -> None:
        """Write the part to ``path`` (atomically); nothing when ``path`` is None."""
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
        print(f"wrote {path}", file=sys.stderr)
