"""``atdata-gen new-lens``: a starter migration lens between two generated versions
of a schema. Unfinished, mypy flags exactly its TODOs; finished, it passes the lens
laws and a dataset written with v1 reads as v2 through it."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from atdata_runtime.lenses import check_lens_laws, lenses
from atdata_runtime.shards import Dataset, write_samples

from .conftest import CORPUS, ROOT, run_cli

V1 = json.loads((CORPUS / "atdata" / "records" / "ImageSample.schema.json").read_text())


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lensproj")
    (root / "schemas").mkdir()
    v2 = json.loads(json.dumps(V1))
    v2["version"] = "2.0.0"
    v2["schema"]["properties"]["width"] = {"type": "integer"}
    v2["schema"]["properties"]["note"] = {"type": "string"}
    v2["schema"]["required"] = ["image", "label", "width"]
    (root / "schemas" / "v1.json").write_text(json.dumps(V1))
    (root / "schemas" / "v2.json").write_text(json.dumps(v2))
    (root / "pyproject.toml").write_text(
        '[tool.atdata-gen]\nsources = ["schemas"]\nout = "gen"\npackage = "lensproj"\n'
    )
    built = run_cli(["build"], root)
    assert built.returncode == 0, built.stderr
    return root


def test_unknown_schema_is_a_located_error(project: Path) -> None:
    proc = run_cli(["new-lens", "ImageSample@9.9.9", "ImageSample@2.0.0"], project)
    assert proc.returncode == 2
    assert "no version 9.9.9 (have: 1.0.0, 2.0.0)" in proc.stderr
    assert "LENS_SCHEMA_UNRESOLVED" in proc.stderr


def test_starter_lens_flags_todos_then_migrates(project: Path, tmp_path: Path) -> None:
    made = run_cli(
        ["new-lens", "ImageSample@1.0.0", "ImageSample@2.0.0", "-o", "mig.py"], project
    )
    assert made.returncode == 0, made.stderr
    text = (project / "mig.py").read_text()
    assert "image=source.image" in text and "label=source.label" in text
    assert "[tool.atdata-gen] lens-packages" in text  # how a record binds to it
    again = run_cli(
        ["new-lens", "ImageSample@1.0.0", "ImageSample@2.0.0", "-o", "mig.py"], project
    )
    assert again.returncode == 2 and "not overwriting" in again.stderr

    def mypy(path: Path) -> subprocess.CompletedProcess[str]:
        env = dict(
            os.environ,
            MYPYPATH=os.pathsep.join([str(project / "gen"), str(ROOT / "runtime")]),
        )
        return subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(path)],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )

    unfinished = mypy(project / "mig.py")
    errors = [ln for ln in unfinished.stdout.splitlines() if ": error:" in ln]
    # Exactly the two target fields without a source: width (required), note.
    assert len(errors) == 2, unfinished.stdout
    assert all('"TODO"' in e for e in errors), errors

    finished = _fill(text)
    (project / "mig_done.py").write_text(finished)
    clean = mypy(project / "mig_done.py")
    assert clean.returncode == 0, clean.stdout

    sys.path.insert(0, str(project))
    sys.path.insert(0, str(project / "gen"))
    try:
        module = importlib.import_module("mig_done")
        lens = next(v for v in vars(module).values() if type(v).__name__ == "Lens")
        v1, v2 = lens.source, lens.target
        assert lenses.find(v1, v2) is lens  # registered on import
        samples = [
            v1(image=np.zeros((2, i + 1, 3), np.uint8), label=f"s{i}") for i in range(5)
        ]
        views = [lens(s) for s in samples]
        check_lens_laws(lens, samples, views=views, generate=False)
        shards = write_samples(samples, str(tmp_path / "v1-%06d.tar"), progress=False)
        read = list(Dataset[v1](shards, progress=False).as_type(v2))
        assert [r.width for r in read] == [1, 2, 3, 4, 5]
        assert [r.label for r in read] == [s.label for s in samples]
    finally:
        sys.path.remove(str(project))
        sys.path.remove(str(project / "gen"))


def _fill(text: str) -> Any:
    """Replace the two TODO(...) calls the way a user would."""
    import re

    out, n = re.subn(r'TODO\(\s*"width[^"]*"\s*\)', "int(source.image.shape[1])", text)
    assert n == 1
    out, n = re.subn(r'TODO\(\s*"note[^"]*"\s*\)', "None", out)
    assert n == 1
    return out
