"""Shared fixtures: paths to the shared corpus and a compiled-package factory."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from atdata_gen.backend.write import apply_plan, plan_changes
from atdata_gen.diagnostics import Reporter, render
from atdata_gen.pipeline import BuildOptions, build
from atdata_gen.testing.localnet import LocalNetwork

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
OFFICIAL = CORPUS / "lexicons" / "atproto-official"
ATDATA_LEXICONS = CORPUS / "atdata" / "lexicons"
INTEROP = CORPUS / "interop"


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
