"""Stage 6b, format: run ``ruff format`` over emitted sources, in one batch.

(Import order and ``__all__`` order are already what ruff's ``I001`` and ``RUF022``
want: the emitter sorts them.)

The generated package is part of the product: it must be formatted like any
hand-written Python. ruff (a pinned dependency) is the formatter; its output is a pure
function of its input and version, so builds stay byte-identical.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

__all__ = ["FormatError", "FormatRun", "format_sources", "start_format"]

_CONFIG = """\
line-length = 88
target-version = "py311"
[format]
quote-style = "double"
"""


class FormatError(RuntimeError):
    """ruff could not be run, or refused the emitted code (a compiler bug)."""


def _ruff() -> str:
    try:
        from ruff.__main__ import find_ruff_bin  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - ruff is a dependency
        raise FormatError("ruff is not installed (pip install ruff)") from exc
    return str(find_ruff_bin())


def format_sources(
    files: dict[str, str], workdir: Path | None = None
) -> dict[str, str]:
    """Format every ``*.py`` entry of ``{relative path: text}``; other entries are
    returned unchanged. The files are formatted in a temporary directory under
    ``workdir`` (default: ``/dev/shm`` when writable, else the system's), best
    placed beside the output so that it is on the same file system. Raises
    :class:`FormatError` if ruff fails, ``OSError`` if the scratch files cannot be
    written."""
    return start_format(files, workdir).result()


class FormatRun:
    """ruff running over a scratch copy of some files (:func:`start_format`);
    :meth:`result` waits for it. ruff formats each file on its own, so files may be
    split over several runs without changing a byte."""

    def __init__(
        self,
        files: dict[str, str],
        tmp: tempfile.TemporaryDirectory[str] | None,
        proc: subprocess.Popen[str] | None,
    ) -> None:
        self._files = files
        self._tmp = tmp
        self._proc = proc

    def close(self) -> None:
        """Stop ruff (if running) and remove the scratch files, unread."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.communicate()
        if self._tmp is not None:
            self._tmp.cleanup()

    def result(self) -> dict[str, str]:
        """``files`` with every ``*.py`` entry formatted. Raises
        :class:`FormatError` if ruff failed."""
        if self._tmp is None or self._proc is None:
            return dict(self._files)
        try:
            _, err = self._proc.communicate()
            if self._proc.returncode != 0:
                raise FormatError(f"ruff format failed: {err.strip()}")
            src = Path(self._tmp.name) / "src"
            out = dict(self._files)
            for rel in self._files:
                if rel.endswith(".py"):
                    out[rel] = (src / rel).read_text(encoding="utf-8")
            return out
        finally:
            self._tmp.cleanup()


def start_format(files: dict[str, str], workdir: Path | None = None) -> FormatRun:
    """Write the ``*.py`` entries of ``files`` to a scratch directory (see
    :func:`format_sources`) and start ruff on them; returns at once. Raises
    ``OSError`` (nothing left behind) if the scratch files cannot be written."""
    py = [k for k in files if k.endswith(".py")]
    if not py:
        return FormatRun(files, None, None)
    if workdir is None and os.access("/dev/shm", os.W_OK):
        workdir = Path("/dev/shm")  # tmpfs: creating ~500 files is 10x faster there
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix=".atdata-gen-fmt-", dir=workdir)
    try:
        root = Path(tmp.name)
        (root / "ruff.toml").write_text(_CONFIG)
        made: set[Path] = set()
        for rel in py:
            target = root / "src" / rel
            if target.parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                made.add(target.parent)
            with open(target, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(files[rel])
        proc = subprocess.Popen(
            [
                _ruff(),
                "format",
                "--config",
                str(root / "ruff.toml"),
                "--no-cache",
                "--quiet",
                str(root / "src"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    except BaseException:
        tmp.cleanup()
        raise
    return FormatRun(files, tmp, proc)
