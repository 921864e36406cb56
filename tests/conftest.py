"""Shared fixtures: paths to the shared corpus, a compiled-package factory, the local
PDS network, a private PostgreSQL cluster, and the atdata 0.7.0b1 side process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from atdata_gen.backend.write import apply_plan, plan_changes
from atdata_gen.diagnostics import Reporter, render
from atdata_gen.pipeline import BuildOptions, build
from atdata_gen.testing.localnet import LocalNetwork
from atdata_ingest.testing.postgres import PostgresCluster
from hypothesis import settings as _hypothesis_settings

ROOT = Path(__file__).resolve().parent.parent
ATDATA_SIDE = Path(__file__).parent / "interop" / "atdata_side.py"
CORPUS = ROOT.parent / "shared" / "corpus"
OFFICIAL = CORPUS / "lexicons" / "atproto-official"
ATDATA_LEXICONS = CORPUS / "atdata" / "lexicons"
INTEROP = CORPUS / "interop"


UV = shutil.which("uv") or "uv"

# The compiler's IR cache (atdata_gen.ircache) goes to a private directory per test
# process, never the user's ~/.cache: tests must not depend on, or fill, a cache a
# previous run left. Subprocesses inherit it through the environment.
if "ATDATA_GEN_CACHE_DIR" not in os.environ:
    import atexit
    import tempfile

    _CACHE = tempfile.mkdtemp(prefix="atdata-gen-test-cache-")
    os.environ["ATDATA_GEN_CACHE_DIR"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

# Property tests are deterministic (fixed seeds derived from each test), so a CI
# run is reproducible and a failure reproduces locally; no per-example deadline
# on a shared 2-core machine. A test's own @settings overrides single fields.
_hypothesis_settings.register_profile(
    "atdata", derandomize=True, deadline=None, print_blob=True
)
_hypothesis_settings.load_profile("atdata")


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both wheels (and the pre-commit bundle), built from this checkout with
    ``uv build``."""
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [UV, "build", "--all-packages", "--wheel", "-q", "-o", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return out


def make_venv(where: Path, wheels: Path, *specs: str) -> Path:
    """A fresh venv at ``where`` with ``specs`` installed (``uv pip``; our wheels
    from ``wheels``, everything else from the package index); returns its python."""
    subprocess.run(
        [UV, "venv", "-q", "--python", sys.executable, str(where)],
        check=True,
        capture_output=True,
    )
    python = where / "bin" / "python"
    proc = subprocess.run(
        [UV, "pip", "install", "-q", "--python", str(python)]
        + ["--find-links", str(wheels), *specs],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return python


def flat_schema_record(
    name: str,
    version: str,
    properties: dict[str, Any],
    required: list[str] | None = None,
    *,
    array_formats: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A ``science.alt.dataset.schema`` record in atdata 0.7's flat form (JSON
    Schema draft-07 under ``schema``), as atdata's ``SchemaPublisher`` writes it;
    ``required`` defaults to every property; ``extra`` keys are added (or replace
    the defaults) at the top level."""
    schema: dict[str, Any] = {
        "$type": "science.alt.dataset.schema#jsonSchemaFormat",
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }
    if array_formats is not None:
        schema["arrayFormatVersions"] = array_formats
    return {
        "$type": "science.alt.dataset.schema",
        "name": name,
        "version": version,
        "schemaType": "jsonSchema",
        "schema": schema,
        "createdAt": "2026-01-01T00:00:00+00:00",
        "atdataSchemaVersion": 1,
        **extra,
    }


def require_corpus() -> None:
    if not CORPUS.is_dir():
        pytest.fail(f"shared corpus not found at {CORPUS}")


def compile_to(
    tmp: Path, sources: list[Path], package: str, externals: list[Path] | None = None
) -> Path:
    """Build ``sources`` into ``tmp/package`` and return ``tmp``; fails the test
    with the rendered diagnostics if the build has errors."""
    reporter = Reporter()
    result = build(BuildOptions(sources, package, externals or []), reporter)
    if result.files is None:
        pytest.fail("build failed:\n" + render(reporter.errors, "text"))
    apply_plan(plan_changes(tmp / package, result.files))
    return tmp


@pytest.fixture(scope="session")
def corpus_package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The official corpus plus the atdata lexicons, compiled once per session and
    importable as ``corpus_pkg``."""
    require_corpus()
    out = tmp_path_factory.mktemp("corpus")
    compile_to(out, [OFFICIAL, ATDATA_LEXICONS], "corpus_pkg")
    sys.path.insert(0, str(out))
    try:
        yield "corpus_pkg"
    finally:
        sys.path.remove(str(out))


@pytest.fixture(scope="session")
def net() -> Iterator[LocalNetwork]:
    """A real PLC directory + PDS on loopback for the whole session (per xdist
    worker). Fails, never skips, when it cannot start."""
    with LocalNetwork.start() as network:
        yield network


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresCluster]:
    """A private PostgreSQL 15 cluster on loopback for the session (per xdist
    worker), run as the postgres user; fails, never skips, when PostgreSQL is
    missing. Shared by the ingestion service's and the AppView's tests."""
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def atdata_python() -> str:
    """The python of the Python 3.12 environment with atdata 0.7.0b1
    (``scripts/atdata-env``, created once per machine)."""
    proc = subprocess.run(
        [str(ROOT / "scripts" / "atdata-env")], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.fail(f"cannot create the atdata 0.7.0b1 environment:\n{proc.stderr}")
    return proc.stdout.strip().splitlines()[-1]


def run_cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m atdata_gen.cli ARGS`` in ``cwd``, with the repository's
    compiler and runtime packages on ``PYTHONPATH`` and ``env`` added to
    the environment; output captured as text."""
    path = os.pathsep.join(str(ROOT / p) for p in ("compiler", "runtime"))
    return subprocess.run(
        [sys.executable, "-m", "atdata_gen.cli", *args],
        cwd=cwd,
        env={**os.environ, **env, "PYTHONPATH": path},
        capture_output=True,
        text=True,
    )


def side(python: str, *args: str, data: Any = None) -> Any:
    """Run ``tests/interop/atdata_side.py ARGS`` in the atdata environment with
    ``data`` as JSON on stdin; its JSON stdout, or the test fails with its stderr."""
    proc = subprocess.run(
        [python, str(ATDATA_SIDE), *args],
        capture_output=True,
        text=True,
        input=None if data is None else json.dumps(data),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)
