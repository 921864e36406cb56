"""Stage 6b, format: run ``ruff format`` over emitted sources, in one batch.

The generated package is part of the product: it must be formatted like any
hand-written Python. ruff (a pinned dependency) is the formatter; its output is a pure
function of its input and version, so builds stay byte-identical.
"""

from __future__ import annotations

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
        from ruff.__main__ import find_ruff_bin
    except ImportError as exc:  # pragma: no cover - ruff is a dependency
        raise FormatError("ruff is not installed (pip install ruff)") from exc
    return str(find_ruff_bin())


def format_sources(files: dict[str, str]) -> dict[str, str]:
    """Format every ``*.py`` entry of ``{relative path: text}``; other entries are
    returned unchanged. Raises :class:`FormatError` if ruff fails."""
    py = {k: v for k, v in files.items() if k.endswith(".py")}
    if not py:
        return dict(files)
    with tempfile.TemporaryDirectory(prefix="atdata-gen-fmt-") as tmp:
        root = Path(tmp)
        (root / "ruff.toml").write_text(_CONFIG)
        for rel, text in py.items():
            target = root / "src" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        # Import order and __all__ order are formatting too: ruff's isort (I001)
        # and RUF022 fixes, then the formatter.
        proc = subprocess.run(
            [_ruff(), "check", "--fix-only", "--isolated", "--no-cache", "--quiet",
             "--select", "I001,RUF022", "--target-version", "py311",
             str(root / "src")],
            capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise FormatError(f"ruff check --fix failed: {proc.stderr.strip()}")
        proc = subprocess.run(
            [_ruff(), "format", "--config", str(root / "ruff.toml"), "--no-cache",
             "--quiet", str(root / "src")],
            capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise FormatError(f"ruff format failed: {proc.stderr.strip()}")
        out = dict(files)
        for rel in py:
            out[rel] = (root / "src" / rel).read_text(encoding="utf-8")
    return out
