"""The runtime's layout is its architecture: each subpackage imports only those below
it, and nothing in the runtime imports the compiler at module level.

Layers, bottom first: ``lex``, ``lexicons`` (generated), ``samples``, ``lenses``,
``net``, ``shards``, ``atmosphere``, ``firehose``, ``appview`` (the AppView client
and names, over the AT Protocol client). An import inside a
function that points upward is allowed only where listed in ``DELEGATES`` (a thin
delegate kept for the seed's spelling, e.g. ``Dataset.from_atproto``).

Between the distributions (``MAY_IMPORT``): the AppView may import the runtime, the
ingestion service and the compiler; nothing imports the AppView; the runtime
imports neither service.
"""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import ROOT

RUNTIME = ROOT / "runtime" / "atdata_runtime"
LAYERS = [
    "lex",
    "lexicons",
    "samples",
    "lenses",
    "net",
    "shards",
    "atmosphere",
    "firehose",
    "appview",
]
ALLOWED = {layer: set(LAYERS[: i + 1]) for i, layer in enumerate(LAYERS)}
DELEGATES = {
    ("shards/dataset.py", "atmosphere"),  # Dataset.from_atproto → load_dataset
    ("shards/dataset.py", "appview"),  # Dataset.from_atproto(NAME) → resolve, load
    ("atmosphere/load.py", "atdata_gen"),  # compile a fetched record, if installed
}


def _imports(path: Path, root: Path = RUNTIME) -> list[tuple[str, bool]]:
    """``(part, at_module_level)`` for every import of a runtime part (or of the
    compiler, as ``"atdata_gen"``) in ``path``; type-only imports (under ``if
    TYPE_CHECKING:``) are left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = path.relative_to(root).parts[:-1]
    top_level = {id(node) for node in tree.body}
    type_only: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only |= {id(n) for n in ast.walk(node)}
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        modules: list[list[str]] = []
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[: len(package) - node.level + 1])
            modules = [[*base, *(node.module or "").split(".")]]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module.split(".")]
        elif isinstance(node, ast.Import):
            modules = [a.name.split(".") for a in node.names]
        for parts in modules:
            parts = [p for p in parts if p]
            if parts[:1] == ["atdata_runtime"]:
                parts = parts[1:]
            elif parts[:1] == ["atdata_gen"]:
                pass
            elif not (isinstance(node, ast.ImportFrom) and node.level):
                continue  # a third-party or standard-library module
            if not parts and isinstance(node, ast.ImportFrom):
                # `from atdata_runtime import lex`: the names are the parts
                found += [(a.name, id(node) in top_level) for a in node.names]
            elif parts:
                found.append((parts[0], id(node) in top_level))
    return found


def test_each_part_imports_only_the_parts_below_it() -> None:
    wrong = []
    for path in sorted(RUNTIME.rglob("*.py")):
        rel = path.relative_to(RUNTIME)
        if len(rel.parts) == 1:
            continue  # atdata_runtime/__init__.py imports nothing (checked below)
        part = rel.parts[0]
        for target, module_level in _imports(path):
            if target == "atdata_gen":
                if module_level or (str(rel), target) not in DELEGATES:
                    wrong.append(f"{rel}: imports the compiler")
                continue
            if target in ALLOWED[part]:
                continue
            if not module_level and (str(rel), target) in DELEGATES:
                continue
            wrong.append(f"{rel}: {part} imports {target}")
    assert wrong == []


def test_the_top_level_imports_nothing() -> None:
    tree = ast.parse((RUNTIME / "__init__.py").read_text(encoding="utf-8"))
    assert not [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_every_runtime_module_is_in_a_part() -> None:
    """No flat room again: every module lives in one of the named parts."""
    loose = [p.name for p in RUNTIME.glob("*.py") if p.name != "__init__.py"]
    assert loose == []
    parts = {p.name for p in RUNTIME.iterdir() if (p / "__init__.py").exists()}
    assert parts == set(ALLOWED)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The check can fail: an upward import in a bottom layer is reported."""
    (tmp_path / "lex").mkdir()
    fake = tmp_path / "lex" / "probe.py"
    fake.write_text(
        "from ..shards import Dataset\nfrom atdata_runtime import lenses\n"
        "def f():\n    import atdata_gen\n",
        encoding="utf-8",
    )
    assert _imports(fake, tmp_path) == [
        ("shards", True),
        ("lenses", True),
        ("atdata_gen", False),
    ]


INGEST = ROOT / "ingest" / "atdata_ingest"


def test_the_ingestion_service_never_imports_the_compiler_at_module_level() -> None:
    """atdata-ingest depends on the runtime only: the compiler (atdata_gen) may be
    imported inside a function of its dev-only ``testing/`` helpers, nowhere else."""
    wrong = []
    for path in sorted(INGEST.rglob("*.py")):
        rel = path.relative_to(INGEST)
        if rel.parts[0] == "lexicons":
            continue  # generated: imports atdata_runtime.lex only
        for target, module_level in _imports(path, INGEST):
            if target != "atdata_gen":
                continue
            if module_level or rel.parts[0] != "testing":
                wrong.append(f"{rel}: imports the compiler")
    assert not wrong, wrong


# -- the distributions: who may import whom ----------------------------------------

COMPILER = ROOT / "compiler" / "atdata_gen"
APPVIEW = ROOT / "appview" / "atdata_appview"
FIRST_PARTY = ("atdata_gen", "atdata_runtime", "atdata_ingest", "atdata_appview")
#: distribution package -> the first-party packages it may import (its own too).
MAY_IMPORT = {
    "atdata_runtime": {"atdata_runtime", "atdata_gen"},  # atdata_gen: DELEGATES only
    "atdata_gen": {"atdata_gen", "atdata_runtime"},
    "atdata_ingest": {"atdata_ingest", "atdata_runtime", "atdata_gen"},
    "atdata_appview": {
        "atdata_appview",
        "atdata_runtime",
        "atdata_ingest",
        "atdata_gen",
    },
}
#: Modules of the AppView that may use the dev-only test helpers of the others
#: (``atdata_gen.testing``: the local PDS; ``atdata_ingest.testing``: PostgreSQL).
APPVIEW_TEST_HELPERS = ("testing/", "demo.py")


def _first_party(path: Path) -> list[str]:
    """The dotted names of every absolute first-party import in ``path`` (type-only
    ones too: a type annotation naming a package is a dependency on it)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found += [n for n in names if n.split(".")[0] in FIRST_PARTY]
    return found


def _import_violations(package: str, root: Path) -> list[str]:
    wrong = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        for name in _first_party(path):
            if name.split(".")[0] not in MAY_IMPORT[package]:
                wrong.append(f"{package}/{rel}: imports {name}")
    return wrong


def test_nothing_imports_the_appview_and_the_runtime_no_service() -> None:
    """The AppView sits on top: the compiler, the runtime and the ingestion
    service never import it; the runtime imports neither service (its AppView
    client speaks XRPC to it)."""
    wrong = []
    for package, root in (
        ("atdata_gen", COMPILER),
        ("atdata_runtime", RUNTIME),
        ("atdata_ingest", INGEST),
        ("atdata_appview", APPVIEW),
    ):
        wrong += _import_violations(package, root)
    assert wrong == []


def test_the_appview_uses_test_helpers_only_in_its_testing_code_and_demo() -> None:
    """``atdata_gen.testing`` and ``atdata_ingest.testing`` (local PDS, private
    PostgreSQL) are dev tools: the service's own modules never import them."""
    wrong = []
    for path in sorted(APPVIEW.rglob("*.py")):
        rel = path.relative_to(APPVIEW).as_posix()
        if rel.startswith(APPVIEW_TEST_HELPERS):
            continue
        for name in _first_party(path):
            parts = name.split(".")
            if (
                len(parts) > 1
                and parts[1] == "testing"
                and parts[0] != "atdata_appview"
            ):
                wrong.append(f"{rel}: imports {name}")
    assert wrong == []


def test_the_distribution_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The check can fail: a runtime module importing either service, and type-only
    imports, are reported."""
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "probe.py").write_text(
        "from typing import TYPE_CHECKING\nimport atdata_runtime.lex\n"
        "if TYPE_CHECKING:\n    from atdata_appview.app import create_app\n"
        "def f():\n    import atdata_ingest.ratelimit\n",
        encoding="utf-8",
    )
    assert _import_violations("atdata_runtime", tmp_path) == [
        "atdata_runtime/net/probe.py: imports atdata_appview.app",
        "atdata_runtime/net/probe.py: imports atdata_ingest.ratelimit",
    ]
