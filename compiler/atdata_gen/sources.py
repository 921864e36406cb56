"""Stage 1, load: files and directories → :class:`SourceDoc` (decoded JSON plus spans).

A :class:`SourceDoc` keeps the original text so that every JSON pointer (RFC 6901) in
it maps to ``file:line:column`` (:meth:`SourceDoc.span`). The position index is built
lazily, the first time a diagnostic needs it, so clean builds pay nothing for it.

No file is ever skipped silently: unreadable files, invalid UTF-8, JSON syntax errors
and duplicate object keys are all reported with their location (rules ``SRC_*``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

from .diagnostics import Diagnostic, Reporter, Severity, Span

__all__ = [
    "SourceDoc",
    "discover",
    "escape_pointer",
    "external_problems",
    "load_paths",
    "load_text",
    "split_external",
]


def escape_pointer(token: str) -> str:
    """Escape one JSON pointer reference token (RFC 6901 § 3)."""
    return token.replace("~", "~0").replace("/", "~1")


_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def _index_positions(text: str) -> dict[str, int]:
    """Map every JSON pointer in ``text`` to the offset where its value starts (for a
    member, where its key starts). ``text`` must be valid JSON."""
    positions: dict[str, int] = {}

    def value(i: int, pointer: str, at: int) -> int:
        i = _WS.match(text, i).end()  # type: ignore[union-attr]
        positions.setdefault(pointer, at if at >= 0 else i)
        ch = text[i]
        if ch == "{":
            i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
            if text[i] == "}":
                return i + 1
            while True:
                key_at = i
                key, i = scanstring(text, i + 1)
                i = _WS.match(text, i).end()  # type: ignore[union-attr]
                i = value(i + 1, f"{pointer}/{escape_pointer(key)}", key_at)
                i = _WS.match(text, i).end()  # type: ignore[union-attr]
                if text[i] == "}":
                    return i + 1
                i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
        if ch == "[":
            i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
            if text[i] == "]":
                return i + 1
            n = 0
            while True:
                i = value(i, f"{pointer}/{n}", -1)
                n += 1
                i = _WS.match(text, i).end()  # type: ignore[union-attr]
                if text[i] == "]":
                    return i + 1
                i += 1
        if ch == '"':
            return int(scanstring(text, i + 1)[1])
        for word in ("true", "false", "null"):
            if text.startswith(word, i):
                return i + len(word)
        m = _NUMBER.match(text, i)
        assert m is not None
        return m.end()

    value(0, "", -1)
    return positions


@dataclass(eq=False)
class SourceDoc:
    """One loaded JSON document: ``path`` (as given, for messages), ``text``, decoded
    ``value``, ``sha256`` of the bytes, and a lazily built pointer → offset index."""

    path: str
    text: str
    value: Any
    sha256: str
    rel: str = ""
    base: str = ""
    """JSON pointer of ``value`` inside ``text`` (a document embedded in a larger
    file, e.g. one record of ``atdata-gen.lock``); spans are located in ``text``."""
    _positions: dict[str, int] | None = field(default=None, repr=False)
    _line_starts: list[int] | None = field(default=None, repr=False)

    def offset(self, pointer: str) -> int | None:
        if self._positions is None:
            self._positions = _index_positions(self.text)
        return self._positions.get(self.base + pointer)

    def position(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) of a character offset."""
        if self._line_starts is None:
            starts = [0]
            starts.extend(m.end() for m in re.finditer("\n", self.text))
            self._line_starts = starts
        import bisect

        line = bisect.bisect_right(self._line_starts, offset)
        return line, offset - self._line_starts[line - 1] + 1

    def span(self, pointer: str = "") -> Span:
        """The span of the value at ``pointer``; falls back to the nearest existing
        parent pointer (e.g. for a missing required key, the object that lacks it)."""
        probe = pointer
        while True:
            off = self.offset(probe)
            if off is not None:
                line, col = self.position(off)
                return Span(self.path, line, col, pointer)
            if not probe:
                return Span(self.path, 1, 1, pointer)
            probe = probe.rsplit("/", 1)[0]


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, val in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = val
    return out


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _find_duplicate(text: str, key: str) -> int:
    """Offset of the second occurrence of ``"key":`` in ``text`` (best effort)."""
    needle = json.dumps(key)
    first = text.find(needle)
    second = text.find(needle, first + 1) if first >= 0 else -1
    return second if second >= 0 else max(first, 0)


def load_text(
    path: str, data: bytes, reporter: Reporter, rel: str = ""
) -> SourceDoc | None:
    """Decode ``data`` (UTF-8 JSON) into a :class:`SourceDoc`; report and return
    ``None`` on invalid UTF-8 (``SRC_ENCODING``), JSON syntax (``SRC_JSON_SYNTAX``) or
    duplicate keys (``SRC_JSON_DUPLICATE_KEY``, RFC 8259 § 4 says names SHOULD be
    unique; we require it so that no value is silently lost)."""
    digest = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        reporter.report(
            Span(path, 1, 1),
            "SRC_ENCODING",
            f"file is not valid UTF-8 (byte {exc.start}: {exc.reason})",
        )
        return None
    text = text.removeprefix("\ufeff")
    try:
        value = json.loads(text, object_pairs_hook=_reject_duplicates)
    except _DuplicateKey as exc:
        doc = SourceDoc(path, text, None, digest)
        line, col = doc.position(_find_duplicate(text, exc.key))
        reporter.report(
            Span(path, line, col),
            "SRC_JSON_DUPLICATE_KEY",
            f"duplicate object key {exc.key!r}",
        )
        return None
    except json.JSONDecodeError as exc:
        reporter.report(Span(path, exc.lineno, exc.colno), "SRC_JSON_SYNTAX", exc.msg)
        return None
    except RecursionError:
        reporter.report(Span(path, 1, 1), "SRC_JSON_SYNTAX", "JSON nesting too deep")
        return None
    doc = SourceDoc(path, text, value, digest, rel or Path(path).name)
    if _SURROGATE_ESCAPE.search(text):
        bad = _lone_surrogate(value, "")
        if bad is not None:
            reporter.report(
                doc.span(bad),
                "SRC_INVALID_UNICODE",
                "string holds a lone UTF-16 surrogate escape; Lexicon "
                "strings must be valid Unicode (data model spec)",
            )
            return None
    return doc


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: Any, pointer: str) -> str | None:
    """JSON pointer of the first key or string holding a lone surrogate (JSON allows
    ``"\\ud800"``; json.loads keeps it; it cannot be encoded as UTF-8)."""
    if isinstance(value, str):
        return pointer if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{pointer}/{escape_pointer(key)}"
            if _SURROGATE.search(key):
                return here
            found = _lone_surrogate(item, here)
            if found is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _lone_surrogate(item, f"{pointer}/{i}")
            if found is not None:
                return found
    return None


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) for p in patterns)


_SKIPPED_DIRS = frozenset({"node_modules", "__pycache__", "site-packages"})
GENERATED_MANIFEST = ".atdata-gen.json"
"""The manifest file name of a generated package (``backend.manifest.MANIFEST_NAME``,
repeated here so that discovery imports nothing of the backend)."""


def _json_files(root: Path) -> list[Path]:
    """Every ``*.json`` file below ``root``, sorted, pruning the directories that
    :func:`discover` skips."""
    out: list[Path] = []
    for directory, dirs, files in os.walk(root):
        here = Path(directory)
        if here != root and GENERATED_MANIFEST in files:
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _SKIPPED_DIRS]
        out.extend(
            here / f for f in files if f.endswith(".json") and not f.startswith(".")
        )
    return sorted(out)


def discover(
    roots: Iterable[str | Path],
    reporter: Reporter,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[tuple[Path, str]]:
    """Expand files and directories into a sorted list of ``(path, relative path)``
    for every ``*.json`` file (the relative path is what generated headers cite).

    ``include`` / ``exclude`` are glob patterns matched against the path relative to
    its root (``app/bsky/*.json``); a file is taken when it matches an include (or
    there are none) and no exclude. A root that does not exist is an error
    (``SRC_NOT_FOUND``); a directory with no JSON file is a warning
    (``SRC_EMPTY``). Directories are walked as ruff and pytest walk them: hidden
    ones (``.git``, ``.venv``), ``node_modules``, ``__pycache__`` and any package
    this generator wrote (it holds a ``.atdata-gen.json`` manifest, so an output
    directory inside a source root is never read back as input) are skipped."""
    found: dict[str, tuple[Path, str]] = {}
    for root in roots:
        root_path = Path(root)
        if root_path.is_file():
            found.setdefault(str(root_path), (root_path, root_path.name))
            continue
        if not root_path.is_dir():
            reporter.report(
                Span(str(root_path)), "SRC_NOT_FOUND", "no such file or directory"
            )
            continue
        count = 0
        for path in _json_files(root_path):
            rel = path.relative_to(root_path).as_posix()
            if include and not _matches(rel, include):
                continue
            if exclude and _matches(rel, exclude):
                continue
            found.setdefault(str(path), (path, rel))
            count += 1
        if count == 0:
            reporter.report(
                Span(str(root_path)),
                "SRC_EMPTY",
                "directory holds no JSON file (after include/exclude)",
                Severity.WARNING,
            )
    return [found[k] for k in sorted(found)]


def load_paths(
    paths: Iterable[tuple[Path, str]], reporter: Reporter
) -> list[SourceDoc]:
    """Read and decode each path (see :func:`load_text`); unreadable files are
    reported as ``SRC_READ``."""
    docs: list[SourceDoc] = []
    for path, rel in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            reporter.report(Span(str(path)), "SRC_READ", exc.strerror or str(exc))
            continue
        doc = load_text(str(path), data, reporter, rel)
        if doc is not None:
            docs.append(doc)
    return docs


def split_external(entry: str | Path) -> tuple[Path, str | None]:
    """``DIR`` or ``DIR=PACKAGE``: the Lexicons in DIR are resolved but not emitted;
    with PACKAGE (an importable package built from exactly those Lexicons) refs into
    them import its classes, otherwise they are typed as opaque JSON objects."""
    text = str(entry)
    root, eq, package = text.rpartition("=")
    if eq and root and all(p.isidentifier() for p in package.split(".")):
        return Path(root), package
    return Path(text), None


def external_problems(
    entries: Iterable[str | Path], out: Path | None = None
) -> list[Diagnostic]:
    """Check ``--external`` entries of the form ``DIR=PACKAGE`` (an entry naming an
    existing path is a plain ``DIR``): ``EXTERNAL_PACKAGE_NAME`` (error) when
    PACKAGE is not a dotted identifier without keywords;
    ``EXTERNAL_PACKAGE_NOT_FOUND`` (warning) when its top-level package is neither
    importable here (:func:`importlib.util.find_spec`) nor a directory in ``out``
    (where generated packages usually sit side by side), since the generated code
    imports it."""
    import importlib.util

    from .naming import package_name_problem

    found: list[Diagnostic] = []
    for entry in entries:
        text = str(entry)
        root, eq, package = text.rpartition("=")
        if not (eq and root) or Path(text).exists():
            continue
        problem = package_name_problem(package, generated=False)
        if problem:
            found.append(
                Diagnostic(
                    Span(text),
                    "EXTERNAL_PACKAGE_NAME",
                    Severity.ERROR,
                    f"--external DIR=PACKAGE: PACKAGE {package!r} is not a "
                    f"package name: {problem}",
                )
            )
            continue
        top = package.split(".")[0]
        if out is not None and (out / top).is_dir():
            continue
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            found.append(
                Diagnostic(
                    Span(text),
                    "EXTERNAL_PACKAGE_NOT_FOUND",
                    Severity.WARNING,
                    f"--external DIR=PACKAGE: package {top!r} cannot be imported "
                    "here, and the generated code imports its classes (install it, "
                    "or build it into the same --out)",
                )
            )
    return found
