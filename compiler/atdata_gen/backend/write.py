"""Stage 7, write: make the output package equal the emitted files, atomically.

The writer owns ``OUT/PACKAGE/``. It computes the change (:class:`Plan`: added,
modified, deleted files) against what is on disk. ``--check`` stops there. Otherwise
the new tree is assembled in a sibling temporary directory (with any file the
generator did not write copied over unchanged, so nothing of the user's is lost) and
swapped in with two renames; a build killed at any point leaves either the old
package or the new one, and the next build restores the old one if it finds the swap
half done. Only files that carry the generated marker are ever deleted.

The package path may be nested (a dotted package ``a.b`` is ``OUT/a/b/``); missing
parent directories are created. When the package path, or a directory on the way to
it, exists as something other than a directory, nothing is touched:
:class:`OutputPathError` is raised before any rename.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .manifest import GENERATED_MARKER

__all__ = [
    "OutputPathError",
    "Plan",
    "apply_plan",
    "output_path_problem",
    "plan_changes",
]


class OutputPathError(ValueError):
    """``path`` (the package directory or one of its parents) exists but is not a
    directory; the writer refuses to touch it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(
            f"{path}: exists and is not a directory; atdata-gen writes the package "
            "directory there and never replaces a file (move it, or choose another "
            "--out or --package)"
        )


def output_path_problem(root: Path) -> Path | None:
    """The nearest of ``root`` and its parents that exists and is not a directory
    (a file, or a dangling link), or ``None`` when the package can be written."""
    for path in (root, *root.parents):
        if path.is_dir():
            return None
        if path.exists() or path.is_symlink():
            return path
    return None


@dataclass(frozen=True, slots=True)
class Plan:
    """Relative paths to ``added``, ``modified`` and ``deleted`` files; ``files`` is
    the full new content."""

    root: Path
    files: dict[str, str]
    added: tuple[str, ...]
    modified: tuple[str, ...]
    deleted: tuple[str, ...]

    @property
    def stale(self) -> bool:
        return bool(self.added or self.modified or self.deleted)

    def summary(self) -> str:
        lines = [f"  added    {p}" for p in self.added]
        lines += [f"  modified {p}" for p in self.modified]
        lines += [f"  deleted  {p}" for p in self.deleted]
        head = (
            f"{self.root}: {len(self.added)} added, {len(self.modified)} modified, "
            f"{len(self.deleted)} deleted, "
            f"{len(self.files) - len(self.added) - len(self.modified)} unchanged"
        )
        return "\n".join([head, *lines])


def _backup(root: Path) -> Path:
    return root.with_name(f".{root.name}.atdata-gen-old")


def _recover(root: Path) -> None:
    old = _backup(root)
    if old.exists():
        if not root.exists():
            os.rename(old, root)
        else:
            shutil.rmtree(old)


def plan_changes(root: Path, files: dict[str, str]) -> Plan:
    """Compare ``files`` with the package directory ``root``; raises
    :class:`OutputPathError` when ``root`` or a parent of it is a file."""
    problem = output_path_problem(root)
    if problem is not None:
        raise OutputPathError(problem)
    _recover(root)
    existing: dict[str, Path] = {}
    if root.is_dir():
        for path in root.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                existing[path.relative_to(root).as_posix()] = path
    added: list[str] = []
    modified: list[str] = []
    for rel, text in sorted(files.items()):
        current = existing.get(rel)
        if current is None:
            added.append(rel)
        elif current.read_bytes() != text.encode("utf-8"):
            modified.append(rel)
    deleted: list[str] = []
    for rel, path in sorted(existing.items()):
        if rel in files or not (rel.endswith(".py") or rel == "py.typed"):
            continue
        try:
            head = path.read_text(encoding="utf-8")[:2000]
        except (OSError, UnicodeDecodeError):
            continue
        if GENERATED_MARKER in head:
            deleted.append(rel)
    return Plan(root, files, tuple(added), tuple(modified), tuple(deleted))


def apply_plan(plan: Plan) -> None:
    """Write the plan: build the new tree beside ``plan.root`` (creating missing
    parent directories), then swap it in; raises :class:`OutputPathError` when
    ``plan.root`` or a parent of it is a file (nothing is renamed then)."""
    if not plan.stale:
        return
    root = plan.root
    problem = output_path_problem(root)
    if problem is not None:
        raise OutputPathError(problem)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.atdata-gen-", dir=root.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a package directory is not
    try:
        if root.is_dir():
            deleted = set(plan.deleted)
            for path in root.rglob("*"):
                rel = path.relative_to(root).as_posix()
                if (
                    path.is_file()
                    and rel not in plan.files
                    and rel not in deleted
                    and "__pycache__" not in path.parts
                ):
                    dest = tmp / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, dest)
        made: set[Path] = set()
        for rel, text in plan.files.items():
            dest = tmp / rel
            if dest.parent not in made:
                dest.parent.mkdir(parents=True, exist_ok=True)
                made.add(dest.parent)
            with open(dest, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(text)
        old = _backup(root)
        if root.exists():
            os.rename(root, old)
        os.rename(tmp, root)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _recover(root)
        raise
