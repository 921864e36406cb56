"""Stage 1, load: files and directories → :class:`SourceDoc` (decoded JSON plus spans).

A :class:`SourceDoc` keeps the original text so that every JSON pointer (RFC 6901) in
it maps to ``file:line:column`` (:meth:`SourceDoc.span`). The position index is built
lazily, the first time a diagnostic needs it, so clean builds pay nothing for it.

No file is ever skipped silently: unreadable files, invalid UTF-8, JSON syntax errors
and duplicate object keys are all reported with their location (rules ``SRC_*``).

Sources are untrusted, so loading is bounded (each limit has its own rule ID):

* only regular files are read (a FIFO would block the build, ``/dev/zero`` would
  never end): ``SRC_NOT_REGULAR``;
* at most :data:`MAX_SOURCE_BYTES` (8 MiB) per file: ``SRC_TOO_LARGE``;
* JSON nesting of at most :data:`MAX_JSON_DEPTH` (64) levels, checked on the raw
  text before any recursive parser runs: ``SRC_JSON_TOO_DEEP``;
* numbers of the atproto data model only (atproto.com/specs/data-model, § Data
  Types: no floats; integers are signed 64-bit): ``SRC_FLOAT`` (any fraction or
  exponent, ``NaN``, ``Infinity``, ``-0.0``, ``1e400``) and ``SRC_INTEGER_RANGE``.
  This is stricter than the interop vectors, which read an integer-like ``123.0``
  as the integer 123 (as :func:`atdata_runtime.atmosphere.cid.record_cid` does for
  records from the network): sources are written by hand, and ``123`` says it.

The limits can be changed per call (:func:`load_text`, :func:`load_paths`,
:func:`discover` take ``max_bytes`` / ``max_depth``); the defaults are what the
command line uses.
"""

from __future__ import annotations

import bisect
import fnmatch
import hashlib
import itertools
import json
import math
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

from .diagnostics import Diagnostic, Reporter, Severity, Span

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_SOURCE_BYTES",
    "SourceDoc",
    "SourceNotRegular",
    "SourceTooLarge",
    "discover",
    "escape_pointer",
    "external_problems",
    "load_paths",
    "load_text",
    "read_source",
    "split_external",
]

MAX_SOURCE_BYTES = 8 * 1024 * 1024
"""Largest source file read, in bytes (8 MiB; the largest official Lexicon is
under 100 KiB). A larger file is ``SRC_TOO_LARGE``."""

MAX_JSON_DEPTH = 64
"""Deepest JSON nesting (objects and arrays, the top-level value counting as level
1) of a source document. The official Lexicons nest at most 10 levels; 64 keeps
every recursive stage (the JSON parser, the position index, the frontends, and the
generated code: Python refuses more than 200 nested brackets, "too many nested
parentheses") far from its limit. Deeper is ``SRC_JSON_TOO_DEEP``."""

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""The integer range of the atproto data model (signed 64-bit, Data Model spec §
Data Types). Integers beyond ±(2**53 - 1) are in range but lose precision in
JavaScript implementations (the spec warns of this); they are accepted."""


def escape_pointer(token: str) -> str:
    """Escape one JSON pointer reference token (RFC 6901 § 3)."""
    return token.replace("~", "~0").replace("/", "~1")


_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(
    r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|NaN|-?Infinity"
)


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


_PLAIN_KEY = re.compile(r'[^\s"\\/~,:\[\]{}\x00-\x1f][^"\\/~\x00-\x1f]*')
"""Keys the fast index finds by search (every key of the official Lexicons): no
quote, backslash, control character, ``/`` or ``~`` (so the key's text is the key
itself, and needs no escaping in a JSON pointer), and a first character that is
neither whitespace nor JSON structure."""
_COLON = re.compile(r"[ \t\n\r]*:")


class _NotPlain(Exception):
    """The fast index cannot vouch for this text: use :func:`_index_positions`."""


def _index_members(text: str, value: Any) -> dict[str, int] | None:
    """The offsets :func:`_index_positions` gives the root and every object member
    of ``text`` (``value`` must be ``json.loads(text)``), found by string search
    instead of a scan: ``None`` when a key is not plain (:data:`_PLAIN_KEY`) or the
    text holds a ``\\u`` escape (a key could be spelt with one).

    Why a search finds the right key: the members are visited in document order
    (``json.loads`` keeps it), each search starting after the previous member's
    key. A plain key's text is ``"key"`` exactly (no ``\\u`` escape anywhere,
    and no character a JSON string must or may otherwise escape); a match whose
    quote follows no backslash opens a string (after a closing quote only
    ``,:}]`` or whitespace may follow, none of them a plain key's first
    character) that ends at the match's last quote (a plain key holds no quote
    or backslash), so ``"key"`` followed by a colon is a key token named
    ``key``, and the first one after the previous member is this member. Array elements
    are not indexed (their offsets come from the full index, when asked)."""
    if "\\u" in text:
        return None
    positions = {"": _WS.match(text, 0).end()}  # type: ignore[union-attr]
    cursor = 0
    find = text.find
    plain = _PLAIN_KEY.fullmatch
    colon = _COLON.match
    needles: dict[str, str] = {}

    def walk(node: Any, pointer: str) -> None:
        nonlocal cursor
        if type(node) is list:
            for i, item in enumerate(node):
                if type(item) is dict or type(item) is list:
                    walk(item, f"{pointer}/{i}")
            return
        for key, item in node.items():
            needle = needles.get(key)
            if needle is None:
                if plain(key) is None:
                    raise _NotPlain
                needle = needles[key] = f'"{key}"'
            at = find(needle, cursor)
            while True:
                if at < 0:
                    raise _NotPlain
                end = at + len(needle)
                if text[at - 1] != "\\" and (
                    text.startswith(":", end) or colon(text, end)
                ):
                    break
                at = find(needle, at + 1)
            here = f"{pointer}/{key}"
            positions[here] = at
            cursor = end
            if type(item) is dict or type(item) is list:
                walk(item, here)

    if type(value) is dict or type(value) is list:
        try:
            walk(value, "")
        except _NotPlain:
            return None
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
    _decoded: bool = field(default=False, repr=False)
    """``value`` is ``json.loads(text)`` (set by :func:`load_text`): the members
    can be indexed by :func:`_index_members` first."""
    _complete: bool = field(default=False, repr=False)

    def offset(self, pointer: str) -> int | None:
        """Offset in ``text`` of the value at ``pointer`` (of a member: of its key),
        or ``None`` if there is none."""
        if self._positions is None:
            if self._decoded and not self.base:
                self._positions = _index_members(self.text, self.value)
            if self._positions is None:
                self._positions = _index_positions(self.text)
                self._complete = True
        found = self._positions.get(self.base + pointer)
        if found is None and not self._complete:
            self._positions = _index_positions(self.text)
            self._complete = True
            found = self._positions.get(self.base + pointer)
        return found

    def position(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) of a character offset."""
        if self._line_starts is None:
            # line k + 1 starts after the k-th "\n": the running sum of line lengths
            # plus their newlines (all in C; the last sum is past the text).
            starts = [0]
            lengths = map(len, self.text.split("\n"))
            starts.extend(itertools.accumulate(map((1).__add__, lengths)))
            starts.pop()
            self._line_starts = starts
        line = bisect.bisect_right(self._line_starts, offset)
        return line, offset - self._line_starts[line - 1] + 1

    def span(self, pointer: str = "") -> Span:
        """The span of the value at ``pointer``; falls back to the nearest existing
        parent pointer (e.g. for a missing required key, the object that lacks it)."""
        # Fast path (most calls): an indexed pointer whose line starts are known.
        positions, starts = self._positions, self._line_starts
        if positions is not None and starts is not None and not self.base:
            off = positions.get(pointer)
            if off is not None:
                line = bisect.bisect_right(starts, off)
                return Span(self.path, line, off - starts[line - 1] + 1, pointer)
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
    """The object of ``pairs``; raises :class:`_DuplicateKey` with the first key
    (in document order) that repeats an earlier one."""
    out = dict(pairs)  # in C; a repeated key makes the dict shorter
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
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


# A string token; its closing quote is optional, so an unclosed string runs to the
# end of the text once instead of being retried from every quote inside it (the
# pattern is unambiguous: each character is consumed one way, nothing backtracks).
_STRING_TOKEN = r'"[^"\\]*(?:\\.[^"\\]*)*"?'
_STRINGS = re.compile(_STRING_TOKEN, re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_TOKENS = re.compile(_STRING_TOKEN + r"|[\[\]{},]", re.DOTALL)


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> tuple[int, str] | None:
    """``(offset, JSON pointer)`` of the first array or object of ``text`` nested
    deeper than ``limit`` levels (the top-level value is level 1), or ``None``.

    Iterative and linear in ``len(text)``, so it is safe to run before
    :func:`json.loads` (which recurses once per level and raises ``RecursionError``
    near 1,000 levels) and before every recursive stage. Brackets inside strings
    do not count. Text that is not JSON gives a best-effort answer (the JSON parser
    then reports the syntax error)."""
    if text.count("[") + text.count("{") <= limit:
        return None
    brackets = _NOT_BRACKET.sub("", _STRINGS.sub("", text))
    steps = itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets))
    if max(steps, default=0) <= limit:
        return None
    # Slow path, only for text that is too deep: find where, with its pointer.
    stack: list[list[Any]] = []  # [is_object, key or index, expecting a key]
    for m in _TOKENS.finditer(text):
        tok = m.group()
        if tok == "[" or tok == "{":
            if len(stack) >= limit:
                return m.start(), "".join(
                    f"/{escape_pointer(str(key))}" for _, key, _ in stack
                )
            stack.append([tok == "{", None if tok == "{" else 0, tok == "{"])
        elif tok == "]" or tok == "}":
            if stack:
                stack.pop()
        elif tok == ",":
            if stack:
                top = stack[-1]
                if top[0]:
                    top[2] = True
                else:
                    top[1] += 1
        elif stack and stack[-1][0] and stack[-1][2]:  # an object key
            try:
                key = json.loads(tok)
            except ValueError:
                key = tok[1:-1]
            stack[-1][1], stack[-1][2] = key, False
    return None


class _BadNumber:
    """A number the data model does not allow, kept in the decoded value (where
    the JSON parser found it) so that its JSON pointer can be reported."""

    __slots__ = ("rule", "text", "why")

    def __init__(self, text: str, rule: str, why: str) -> None:
        self.text, self.rule, self.why = text, rule, why


def _shown(token: str) -> str:
    return token if len(token) <= 40 else f"{token[:20]}… ({len(token)} characters)"


def _decode(text: str) -> tuple[Any, list[_BadNumber]]:
    """``json.loads`` with duplicate keys refused and every number checked against
    the atproto data model (integers only, signed 64-bit); out-of-model numbers
    become :class:`_BadNumber` markers (listed in the second value). Never raises
    ``ValueError`` for a long integer (Python's int-str conversion limit is never
    reached: an integer token longer than 20 characters is out of range anyway)."""
    bad: list[_BadNumber] = []

    def parse_float(token: str) -> _BadNumber:
        value = float(token)
        if math.isinf(value):
            why = "overflows a 64-bit float (IEEE 754 binary64) to infinity"
        elif value == 0 and token.startswith("-"):
            why = "is negative zero, which only a float can hold"
        elif value.is_integer() and INT64_MIN <= value <= INT64_MAX:
            why = f"is written as a float (write {int(value)})"
        else:
            why = "is a float"
        mark = _BadNumber(
            token,
            "SRC_FLOAT",
            f"number {_shown(token)} {why}; the atproto data model has no floats "
            "(integers only: Data Model spec, § Data Types)",
        )
        bad.append(mark)
        return mark

    def parse_constant(token: str) -> _BadNumber:
        mark = _BadNumber(
            token,
            "SRC_FLOAT",
            f"{token} is not a JSON number (RFC 8259 § 6 forbids NaN and Infinity), "
            "and the atproto data model has no floats (Data Model spec, § Data "
            "Types)",
        )
        bad.append(mark)
        return mark

    def parse_int(token: str) -> int | _BadNumber:
        if len(token) <= 18:
            return int(token)
        if len(token) <= 20:
            value = int(token)
            if INT64_MIN <= value <= INT64_MAX:
                return value
        mark = _BadNumber(
            token,
            "SRC_INTEGER_RANGE",
            f"integer {_shown(token)} is outside the signed 64-bit range of the "
            "atproto data model (-2**63 … 2**63-1; Data Model spec, § Data Types)",
        )
        bad.append(mark)
        return mark

    value = json.loads(
        text,
        object_pairs_hook=_reject_duplicates,
        parse_float=parse_float,
        parse_int=parse_int,
        parse_constant=parse_constant,
    )
    return value, bad


_MAX_NUMBER_REPORTS = 20
"""At most this many out-of-model numbers are reported per document."""


def _bad_numbers(value: Any, pointer: str, out: list[tuple[str, _BadNumber]]) -> None:
    """Append ``(pointer, marker)`` for each :class:`_BadNumber` in ``value``, in
    document order, up to :data:`_MAX_NUMBER_REPORTS` (the depth is bounded by
    :data:`MAX_JSON_DEPTH`, checked before decoding)."""
    if len(out) >= _MAX_NUMBER_REPORTS:
        return
    if isinstance(value, _BadNumber):
        out.append((pointer, value))
    elif isinstance(value, dict):
        for key, item in value.items():
            _bad_numbers(item, f"{pointer}/{escape_pointer(key)}", out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _bad_numbers(item, f"{pointer}/{i}", out)


def load_text(
    path: str,
    data: bytes,
    reporter: Reporter,
    rel: str = "",
    *,
    max_depth: int = MAX_JSON_DEPTH,
) -> SourceDoc | None:
    """Decode ``data`` (UTF-8 JSON) into a :class:`SourceDoc`; report and return
    ``None`` on invalid UTF-8 (``SRC_ENCODING``), nesting deeper than ``max_depth``
    levels (``SRC_JSON_TOO_DEEP``, checked on the raw text first, see
    :func:`json_too_deep`), JSON syntax (``SRC_JSON_SYNTAX``), duplicate keys
    (``SRC_JSON_DUPLICATE_KEY``, RFC 8259 § 4 says names SHOULD be unique; we
    require it so that no value is silently lost), numbers outside the atproto
    data model (``SRC_FLOAT``: a fraction or exponent, ``NaN``, ``Infinity``,
    ``-0.0``, ``1e400``; ``SRC_INTEGER_RANGE``: beyond signed 64-bit) and lone
    surrogates (``SRC_INVALID_UNICODE``). Every report is located (line, column
    and JSON pointer where there is one); nothing here raises for bad input."""
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
    deep = json_too_deep(text, max_depth)
    if deep is not None:
        offset, pointer = deep
        line, col = SourceDoc(path, text, None, digest).position(offset)
        reporter.report(
            Span(path, line, col, pointer),
            "SRC_JSON_TOO_DEEP",
            f"JSON nesting deeper than {max_depth} levels (atdata-gen's limit for "
            "Lexicons and records; the official Lexicons nest at most 10)",
        )
        return None
    try:
        value, bad = _decode(text)
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
    except (RecursionError, ValueError) as exc:  # defensive: bounded above
        reporter.report(Span(path, 1, 1), "SRC_JSON_SYNTAX", f"unreadable JSON: {exc}")
        return None
    doc = SourceDoc(path, text, value, digest, rel or Path(path).name, _decoded=True)
    if bad:
        found: list[tuple[str, _BadNumber]] = []
        _bad_numbers(value, "", found)
        for pointer, mark in found:
            reporter.report(doc.span(pointer), mark.rule, mark.why)
        if len(bad) > len(found):
            reporter.report(
                Span(path, 1, 1),
                found[-1][1].rule if found else "SRC_FLOAT",
                f"{len(bad) - len(found)} more number(s) outside the data model "
                "not shown",
            )
        return None
    if _SURROGATE_ESCAPE.search(text):
        where = _lone_surrogate(value, "")
        if where is not None:
            reporter.report(
                doc.span(where),
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


class SourceNotRegular(OSError):
    """A source path is not a regular file (a FIFO, a device, a socket): reading it
    could block forever or never end (rule ``SRC_NOT_REGULAR``)."""


class SourceTooLarge(OSError):
    """A source file is larger than the limit (rule ``SRC_TOO_LARGE``)."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _too_large(size: int, limit: int) -> SourceTooLarge:
    return SourceTooLarge(
        f"file is larger than {limit} bytes ({size} bytes or more); atdata-gen "
        "reads source files of at most 8 MiB by default"
        if limit == MAX_SOURCE_BYTES
        else f"file is larger than {limit} bytes ({size} bytes or more)"
    )


def read_source(path: str | Path, max_bytes: int = MAX_SOURCE_BYTES) -> bytes:
    """The bytes of source file ``path``, read safely from untrusted places.

    The file is opened with ``O_NONBLOCK`` (opening a FIFO never waits for a
    writer) and checked with ``fstat`` on the open descriptor (no race with a
    rename): only a regular file is read (symlinks are followed: a link to
    ``/dev/zero`` is a character device and refused). At most ``max_bytes``
    (default :data:`MAX_SOURCE_BYTES`, 8 MiB) are read, even if the file grows
    while it is read.

    Raises :class:`SourceNotRegular`, :class:`SourceTooLarge` (both ``OSError``)
    or the ``OSError`` of ``open``/``read``."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SourceNotRegular(f"{_kind(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes:
            raise _too_large(info.st_size, max_bytes)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise _too_large(total, max_bytes)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _check_file(
    path: Path, info: os.stat_result, reporter: Reporter, max_bytes: int
) -> bool:
    """Whether discovery may take ``path`` (``info`` its ``os.stat``): a regular
    file of at most ``max_bytes``; else reported (``SRC_NOT_REGULAR``,
    ``SRC_TOO_LARGE``)."""
    if not stat.S_ISREG(info.st_mode):
        reporter.report(
            Span(str(path)),
            "SRC_NOT_REGULAR",
            f"{_kind(info.st_mode)}, not a regular file: only regular files are "
            "read as sources (a FIFO could block the build, a device never end)",
        )
        return False
    if info.st_size > max_bytes:
        reporter.report(
            Span(str(path)), "SRC_TOO_LARGE", str(_too_large(info.st_size, max_bytes))
        )
        return False
    return True


def _json_files(root: Path) -> list[tuple[Path, str]]:
    """Every ``*.json`` file below ``root`` with its path relative to ``root``
    (POSIX form), in the order of the paths, pruning the directories that
    :func:`discover` skips."""
    out: list[tuple[tuple[str, ...], str]] = []
    top = os.fspath(root)
    for directory, dirs, files in os.walk(root):
        if directory != top and GENERATED_MANIFEST in files:
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _SKIPPED_DIRS]
        # os.walk joins names below `top` with the separator: the rest is relative
        below = directory[len(top) :].lstrip(os.sep) if directory != top else ""
        prefix = f"{below}/" if below else ""
        out.extend(
            (tuple(f"{prefix}{f}".split("/")), f"{prefix}{f}")
            for f in files
            if f.endswith(".json") and not f.startswith(".")
        )
    out.sort()  # by path components, as sorting the Paths does
    return [(root / rel, rel) for _, rel in out]


def discover(
    roots: Iterable[str | Path],
    reporter: Reporter,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    max_bytes: int = MAX_SOURCE_BYTES,
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
    directory inside a source root is never read back as input) are skipped, and
    so are hidden files (the manifest itself).

    Only regular files of at most ``max_bytes`` (default 8 MiB) are taken, found
    in a directory or named explicitly (symlinks are followed and judged by their
    target); anything else is an error, never read: ``SRC_NOT_REGULAR`` (a FIFO, a
    device, a socket), ``SRC_TOO_LARGE``. A file named explicitly is taken whatever
    its extension, except a generated package's manifest (``SRC_GENERATED``)."""
    found: dict[str, tuple[Path, str]] = {}
    for root in roots:
        root_path = Path(root)
        try:
            info = root_path.stat()
        except OSError as exc:
            missing = isinstance(exc, FileNotFoundError | NotADirectoryError)
            reporter.report(
                Span(str(root_path)),
                "SRC_NOT_FOUND" if missing else "SRC_READ",
                "no such file or directory" if missing else exc.strerror or str(exc),
            )
            continue
        if not stat.S_ISDIR(info.st_mode):
            if root_path.name == GENERATED_MANIFEST:
                reporter.report(
                    Span(str(root_path)),
                    "SRC_GENERATED",
                    "this is the manifest of a package atdata-gen generated, not a "
                    "Lexicon or record: it is never read as a source",
                )
            elif _check_file(root_path, info, reporter, max_bytes):
                found.setdefault(str(root_path), (root_path, root_path.name))
            continue
        count = 0
        for path, rel in _json_files(root_path):
            if include and not _matches(rel, include):
                continue
            if exclude and _matches(rel, exclude):
                continue
            count += 1
            try:
                info = path.stat()
            except OSError as exc:  # e.g. a dangling symlink
                reporter.report(Span(str(path)), "SRC_READ", exc.strerror or str(exc))
                continue
            if _check_file(path, info, reporter, max_bytes):
                found.setdefault(str(path), (path, rel))
        if count == 0:
            reporter.report(
                Span(str(root_path)),
                "SRC_EMPTY",
                "directory holds no JSON file (after include/exclude)",
                Severity.WARNING,
            )
    return [found[k] for k in sorted(found)]


def load_paths(
    paths: Iterable[tuple[Path, str]],
    reporter: Reporter,
    *,
    max_bytes: int = MAX_SOURCE_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> list[SourceDoc]:
    """Read (with :func:`read_source`: regular files of at most ``max_bytes``) and
    decode each path (see :func:`load_text`); a file that cannot be read is
    reported as ``SRC_NOT_REGULAR``, ``SRC_TOO_LARGE`` or ``SRC_READ``."""
    docs: list[SourceDoc] = []
    for path, rel in paths:
        data = read_reported(path, reporter, max_bytes)
        if data is None:
            continue
        doc = load_text(str(path), data, reporter, rel, max_depth=max_depth)
        if doc is not None:
            docs.append(doc)
    return docs


def read_reported(
    path: Path, reporter: Reporter, max_bytes: int = MAX_SOURCE_BYTES
) -> bytes | None:
    """:func:`read_source`, with a failure reported at ``path`` instead of raised:
    ``SRC_NOT_REGULAR``, ``SRC_TOO_LARGE`` or ``SRC_READ`` (then ``None``)."""
    try:
        return read_source(path, max_bytes)
    except SourceNotRegular as exc:
        reporter.report(Span(str(path)), "SRC_NOT_REGULAR", str(exc))
    except SourceTooLarge as exc:
        reporter.report(Span(str(path)), "SRC_TOO_LARGE", str(exc))
    except OSError as exc:
        reporter.report(Span(str(path)), "SRC_READ", exc.strerror or str(exc))
    return None


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
