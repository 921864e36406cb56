"""The build writer killed at every step (issue 14, "the build writer, under kills").

A real child process writes a package and ``SIGKILL``s itself at a named step
(``ATDATA_GEN_TEST_KILL_AT``, :data:`atdata_gen.backend.write.KILL_STEPS`), with the
``renameat2(RENAME_EXCHANGE)`` swap and with the two-rename fallback. After each kill
the package directory must hold exactly the old tree or exactly the new one (the
user's files included) and import as that version; the next write (or ``--check``'s
plan) must recover: exactly the new tree, no ``.PACKAGE.atdata-gen-*`` leftovers, no
lock file. Hypothesis (fixed seed) varies the old and new file sets, the user's
files, the step and the swap."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from atdata_gen.backend import write
from atdata_gen.backend.manifest import MANIFEST_NAME, manifest_text
from atdata_gen.backend.write import KILL_STEPS, lock_path, plan_changes
from hypothesis import given, settings
from hypothesis import strategies as st

_WRITE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from atdata_gen.backend import write
    write._USE_EXCHANGE = sys.argv[3] == "exchange"
    write.write_package(Path(sys.argv[1]), json.loads(sys.argv[2]))
    """
)

_IMPORT = textwrap.dedent(
    """
    import importlib, json, sys
    from pathlib import Path
    out = Path(sys.argv[1])
    sys.path.insert(0, str(out))
    seen = {}
    for path in sorted((out / "pkg").rglob("*.py")):
        rel = path.relative_to(out).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        module = importlib.import_module(".".join(parts))
        seen[".".join(parts)] = getattr(module, "VERSION", None)
    print(json.dumps(seen))
    """
)

POOL = ("a", "b", "c/d", "c/e", "f/g/h", "f/i")


def _generated(modules: list[str], tag: str) -> dict[str, str]:
    """A package of ``modules`` (relative paths without ``.py``) whose every module
    says ``VERSION = tag``, with its manifest (what makes the files owned)."""
    files = {"__init__.py": f'VERSION = "{tag}"\n', "py.typed": ""}
    for m in modules:
        files[f"{m}.py"] = f'VERSION = "{tag}"\nNAME = "{m}"\n'
        parts = m.split("/")
        for i in range(1, len(parts)):
            files["/".join(parts[:i]) + "/__init__.py"] = f'VERSION = "{tag}"\n'
    files[MANIFEST_NAME] = manifest_text(tag, files)
    return files


def _tree(root: Path) -> dict[str, bytes] | None:
    if not root.exists():
        return None
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _write(root: Path, files: dict[str, str], swap: str, kill: str = "") -> int:
    env = dict(os.environ, ATDATA_GEN_TEST_KILL_AT=kill)
    proc = subprocess.run(
        [sys.executable, "-c", _WRITE, str(root), json.dumps(files), swap],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr
    return proc.returncode


def _imports(out: Path) -> set[str | None]:
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT, str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
    )
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout).values())


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".pkg."))


def _write_here(root: Path, files: dict[str, str], swap: str) -> None:
    """Write in this process (no kill): the set-up and the recovering build."""
    saved = write._USE_EXCHANGE
    write._USE_EXCHANGE = swap == "exchange"
    try:
        write.write_package(root, files)
    finally:
        write._USE_EXCHANGE = saved


def _kill_and_recover(
    out: Path,
    old: list[str] | None,
    new: list[str],
    user: dict[str, str],
    step: str,
    swap: str,
) -> int:
    root = out / "pkg"
    if old is not None:
        _write_here(root, _generated(old, "old"), swap)
        for rel, text in user.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
    before = _tree(root)
    new_files = _generated(new, "new")
    user_kept = user if old is not None else {}
    expected_new = {k: v.encode() for k, v in {**user_kept, **new_files}.items()}
    code = _write(root, new_files, swap, kill=step)
    after = _tree(root)
    if swap == "fallback" and step == "moved-aside" and before is not None:
        # The one window of the two-rename fallback: no package directory until
        # the next build (or --check) completes the swap, as documented.
        assert after is None
    else:
        assert after == before or after == expected_new, (step, swap)
    if after is not None:
        assert _imports(out) - {None} == ({"old"} if after == before else {"new"})
    # The next build recovers and finishes.
    _write_here(root, new_files, swap)
    assert _tree(root) == expected_new
    assert _leftovers(out) == [] and not lock_path(root).exists()
    return code


@pytest.mark.parametrize("swap", ["exchange", "fallback"])
@pytest.mark.parametrize("step", KILL_STEPS)
def test_kill_at_every_step_leaves_old_or_new(
    tmp_path: Path, step: str, swap: str
) -> None:
    code = _kill_and_recover(
        tmp_path / "out",
        ["a", "c/d", "f/g/h"],
        ["a", "c/e", "f/i"],
        {"mine.py": "MINE = 1\n", "c/notes.txt": "mine\n"},
        step,
        swap,
    )
    reached = step != "moved-aside" or swap == "fallback"
    assert code == (-signal.SIGKILL if reached else 0), "the kill hook never fired"


def test_check_recovers_a_half_done_fallback_swap(tmp_path: Path) -> None:
    """Killed between the two renames (no package directory at all): ``--check``'s
    plan completes the swap from the complete new tree and finds nothing stale."""
    root = tmp_path / "out" / "pkg"
    old, new = _generated(["a"], "old"), _generated(["b"], "new")
    _write_here(root, old, "fallback")
    assert _write(root, new, "fallback", kill="moved-aside") == -signal.SIGKILL
    assert not root.exists()
    plan = plan_changes(root, new)
    assert not plan.stale and _tree(root) == {k: v.encode() for k, v in new.items()}
    assert _leftovers(root.parent) == []


@settings(derandomize=True, max_examples=14, deadline=None)
@given(
    old=st.none() | st.lists(st.sampled_from(POOL), unique=True, max_size=4),
    new=st.lists(st.sampled_from(POOL), unique=True, max_size=4),
    user=st.dictionaries(
        st.sampled_from(["mine.py", "c/mine.py", "z/data.bin", "notes.txt"]),
        st.text("xyz\n", max_size=8).map(lambda t: f"USER = {t!r}\n"),
        max_size=2,
    ),
    step=st.sampled_from(KILL_STEPS),
    swap=st.sampled_from(["exchange", "fallback"]),
)
def test_kills_fuzzed(
    tmp_path_factory: pytest.TempPathFactory,
    old: list[str] | None,
    new: list[str],
    user: dict[str, str],
    step: str,
    swap: str,
) -> None:
    out = tmp_path_factory.mktemp("kill") / "out"
    # A user's file may not sit where the new package writes a directory or file.
    clash = {p for m in new for p in (f"{m}.py", m.split("/")[0])}
    user = {
        k: v for k, v in user.items() if k not in clash and k.split("/")[0] not in clash
    }
    _kill_and_recover(out, old, new, user, step, swap)
