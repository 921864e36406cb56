"""Installed size and package count of each distribution and extra.

Builds both wheels (``uv build``), then for each install target makes a fresh venv,
installs the target from the wheels (dependencies from the package index), and
measures the venv's ``site-packages``: bytes on disk and the number of
distributions, less the empty venv's (pip, setuptools). Prints a table; ``--json
PATH`` writes the benchlib part (table ``install``; each target's distributions in
``extra``). The sizes are deterministic for a given lock, so each is one run.

Targets: ``atdata-runtime`` alone, with each extra (``http``, ``s3``, ``atproto``,
``testing``; ``torch`` is listed but skipped unless ``--torch``, since it is a
multi-GB download chosen by the user), and ``atdata-gen`` (the compiler, which
brings the runtime with its ``atproto`` extra).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib

EXTRAS = ["http", "s3", "atproto", "testing"]


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python*/site-packages"))


def _measure(venv: Path) -> tuple[int, int, list[str]]:
    site = _site_packages(venv)
    size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    dists = sorted(
        p.name.split("-")[0].lower().replace("_", "-") for p in site.glob("*.dist-info")
    )
    return size, len(dists), dists


def _install(spec: str, wheels: Path, work: Path, python: str) -> dict[str, object]:
    venv = work / spec.replace("[", "_").replace("]", "").replace(",", "_")
    subprocess.run(["uv", "venv", "-q", "--python", python, str(venv)], check=True)
    base_size, base_n, base = _measure(venv)
    subprocess.run(
        [
            "uv",
            "pip",
            "install",
            "-q",
            "--python",
            str(venv / "bin" / "python"),
            "--find-links",
            str(wheels),
            spec,
        ],
        check=True,
    )
    size, n, dists = _measure(venv)
    return {
        "target": spec,
        "megabytes": round((size - base_size) / 1e6, 1),
        "packages": n - base_n,
        "distributions": [d for d in dists if d not in base],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_json_arg(parser)
    parser.add_argument("--torch", action="store_true", help="also measure [torch]")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        wheels = work / "wheels"
        subprocess.run(
            ["uv", "build", "--all-packages", "--wheel", "-q", "-o", str(wheels)],
            cwd=ROOT,
            check=True,
            env={**os.environ, "UV_NO_PROGRESS": "1"},
        )
        extras = [*EXTRAS, *(["torch"] if args.torch else [])]
        targets = [
            "atdata-runtime",
            *(f"atdata-runtime[{e}]" for e in extras),
            "atdata-gen",
        ]
        rows = [_install(t, wheels, work, args.python) for t in targets]
    print(f"{'target':<28} {'MB':>7} {'packages':>9}")
    for row in rows:
        print(f"{row['target']:<28} {row['megabytes']:>7} {row['packages']:>9}")
    core = rows[0]
    print(f"\natdata-runtime alone: {', '.join(core['distributions'])}")  # type: ignore[arg-type]
    report = benchlib.Report("install", settings={"torch": args.torch})
    for row in rows:
        target = str(row["target"])
        key = target.replace("-", "_").replace("[", "_").replace("]", "")
        report.metric(
            f"{key}_mb",
            [float(row["megabytes"])],  # type: ignore[arg-type]
            "MB",
            label=f"{target}: installed size",
        )
        report.metric(
            f"{key}_packages",
            [float(row["packages"])],  # type: ignore[arg-type]
            "packages",
            label=f"{target}: distributions installed",
        )
    for suffix, what, fmt in (
        ("mb", "installed MB", ".1f"),
        ("packages", "packages", ".0f"),
    ):
        for row in rows:
            target = str(row["target"])
            key = target.replace("-", "_").replace("[", "_").replace("]", "")
            report.row("install", f"`{target}`, {what}", f"{key}_{suffix}", fmt=fmt)
    report.extra["distributions"] = {str(r["target"]): r["distributions"] for r in rows}
    report.write(args.json)


if __name__ == "__main__":
    main()
