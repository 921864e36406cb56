"""Static typing of iteration and batching: ``tests/typing/*.py`` (typeshed-style
``assert_type`` cases) must pass ``mypy --strict`` and pyright in strict mode, with
unnecessary ``# type: ignore`` comments reported by both (so the expected errors in
those files stay errors).

pyright runs from npm, pinned (``npx --yes pyright@PYRIGHT``, its npm cache in
``~/.cache/atdata-gen/npm``): it needs Node (installed wherever the PDS tests run)
and reaches only the npm registry, on the first run. It fails, never skips, when
it cannot run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import CORPUS, ROOT, compile_to

PYRIGHT = "1.1.414"
CASES = sorted((Path(__file__).parent / "typing").glob("*.py"))


@pytest.fixture(scope="module")
def samples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("typing")
    compile_to(out, [CORPUS / "atdata" / "records"], "typing_samples")
    return out


def test_cases_exist() -> None:
    assert CASES, "no typing cases in tests/typing"


def test_mypy_strict(samples_dir: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--warn-unused-ignores",
            "--no-incremental",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            *map(str, CASES),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, MYPYPATH=str(samples_dir)),
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]


def pyright(
    files: list[str], *, project: Path, python: str, cwd: Path
) -> tuple[dict[str, Any], list[str]]:
    """Run the pinned pyright (``npx``) on ``files`` with the config ``project``
    against the environment of ``python``: its JSON report, and its errors and
    warnings as ``file:line: severity: message``. Fails the test when it cannot
    run."""
    npx = shutil.which("npx")
    assert npx, "pyright needs Node: npx is not on PATH"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    proc = subprocess.run(
        [npx, "--yes", f"pyright@{PYRIGHT}", "--pythonpath", python]
        + ["--project", str(project), "--outputjson", *files],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=dict(os.environ, npm_config_cache=str(cache / "atdata-gen" / "npm")),
        timeout=600,
    )
    try:
        report: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"pyright did not run:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    problems = [
        f"{d['file']}:{d['range']['start']['line'] + 1}: {d['severity']}: {d['message']}"
        for d in report["generalDiagnostics"]
        if d["severity"] in ("error", "warning")
    ]
    return report, problems


def test_pyright_strict(samples_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "pyrightconfig.json"
    config.write_text(
        json.dumps(
            {
                "extraPaths": [str(samples_dir)],
                "pythonVersion": "3.11",
                "typeCheckingMode": "strict",
                "reportUnnecessaryTypeIgnoreComment": "error",
            }
        )
    )
    report, problems = pyright(
        list(map(str, CASES)), project=config, python=sys.executable, cwd=ROOT
    )
    assert not problems, "\n".join(problems)
    assert report["summary"]["filesAnalyzed"] == len(CASES)
