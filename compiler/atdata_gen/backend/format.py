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

__all__ = ["FormatError", "format_sources"]

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
    ``workdir`` (default: the system's), best placed beside the output so that it is
    on the same file system. Raises :class:`FormatError` if ruff fails."""
    py = {k: v for k, v in files.items() if k.endswith(".py")}
    if not py:
        return dict(files)
    if workdir is None and os.access("/dev/shm", os.W_OK):
        workdir = Path("/dev/shm")  # tmpfs: creating ~500 files is 10x faster there
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".atdata-gen-fmt-", dir=workdir) as tmp:
        root = Path(tmp)
        (root / "ruff.toml").write_text(_CONFIG)
        made: set[Path] = set()
        for rel, text in py.items():
            target = root / "src" / rel
            if target.parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                made.add(target.parent)
            with open(target, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(text)
        proc = subprocess.run(
            [
                _ruff(),
                "format",
                "--config",
                str(root / "ruff.toml"),
                "--no-cache",
                "--quiet",
                str(root / "src"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise FormatError(f"ruff format failed: {proc.stderr.strip()}")
        out = dict(files)
        for rel in py:
            out[rel] = (root / "src" / rel).read_text(encoding="utf-8")
    return out
