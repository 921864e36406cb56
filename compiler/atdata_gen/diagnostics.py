"""Diagnostics: what the compiler says about its input, with rule IDs and real locations.

Every stage reports problems as :class:`Diagnostic` values into a :class:`Reporter`;
nothing is raised for a user error until the pipeline decides to stop. Output forms:
``text`` (``path:line:col: severity RULE_ID message``), ``json`` (a list of objects)
and ``github`` (GitHub Actions workflow commands).

Messages quote untrusted text (Lexicon values, file names, URLs), so every form is
made safe on output, whatever the message holds:

* ``text``: control characters (C0, DEL, C1, line and paragraph separators) and
  bidirectional overrides are shown as escapes (``\\r``, ``\\x1b``, ``\\u202e``), so
  a value cannot start a new line (a fake diagnostic, or a workflow command that
  GitHub Actions reads from any output line) or drive the terminal;
* ``github``: data and properties are escaped as the Actions toolkit escapes them
  (``@actions/core`` ``command.ts``: ``escapeData`` turns ``%``, ``\\r``, ``\\n``
  into ``%25``, ``%0D``, ``%0A``; ``escapeProperty`` also ``:`` and ``,`` into
  ``%3A``, ``%2C``);
* ``json``: JSON string escapes.

In all three, URLs lose their credentials (:func:`redact_urls`).
"""

from __future__ import annotations

import enum
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from atdata_runtime.net.redact import redact_url


class Severity(enum.IntEnum):
    """How bad a finding is; ordered so that ``max()`` gives the worst."""

    INFO = 0
    WARNING = 1
    ERROR = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, order=True, slots=True)
class Span:
    """A location in a source file: 1-based ``line`` and ``column`` (in code points),
    plus the JSON pointer (RFC 6901) of the value it belongs to, when there is one."""

    path: str
    line: int = 0
    column: int = 0
    pointer: str = ""

    def __str__(self) -> str:
        if self.line:
            return f"{self.path}:{self.line}:{self.column}"
        return self.path


@dataclass(frozen=True, order=True, slots=True)
class Diagnostic:
    """One finding: where (``span``), which rule (``rule``, e.g. ``LEX_REF_UNRESOLVED``),
    how bad (``severity``) and why (``message``). ``related`` holds secondary
    locations (e.g. the previous definition)."""

    span: Span
    rule: str
    severity: Severity
    message: str
    related: tuple[Span, ...] = field(default=(), compare=False)

    def as_text(self) -> str:
        """``path:line:col: severity RULE message (at /pointer)``, one line (plus one
        per related location); untrusted text is escaped (:func:`printable`) and
        URLs redacted (:func:`redact_urls`)."""
        text = (
            f"{_safe(str(self.span))}: {self.severity.label} {self.rule} "
            f"{_safe(self.message)}"
        )
        if self.span.pointer:
            text += f" (at {_safe(self.span.pointer)})"
        for other in self.related:
            text += f"\n  {_safe(str(other))}: related location"
        return text

    def as_json(self) -> dict[str, object]:
        """The diagnostic as a JSON object (URLs redacted, :func:`redact_urls`)."""
        return {
            "path": redact_urls(self.span.path),
            "line": self.span.line,
            "column": self.span.column,
            "pointer": self.span.pointer,
            "rule": self.rule,
            "severity": self.severity.label,
            "message": redact_urls(self.message),
            "related": [redact_urls(str(s)) for s in self.related],
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Diagnostic:
        """The inverse of :meth:`as_json`; raises ``ValueError`` (or ``KeyError``,
        ``TypeError``) for a malformed object."""
        related = []
        for text in data.get("related") or ():  # type: ignore[attr-defined]
            parts = str(text).rsplit(":", 2)
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                related.append(Span(parts[0], int(parts[1]), int(parts[2])))
            else:
                related.append(Span(str(text)))
        return cls(
            Span(
                str(data["path"]),
                int(data.get("line") or 0),  # type: ignore[call-overload]
                int(data.get("column") or 0),  # type: ignore[call-overload]
                str(data.get("pointer") or ""),
            ),
            str(data["rule"]),
            Severity[str(data["severity"]).upper()],
            str(data["message"]),
            tuple(related),
        )

    def as_github(self, base: str | os.PathLike[str] | None = None) -> str:
        """A GitHub Actions workflow command (one line, whatever the message or
        path holds: :func:`escape_data`, :func:`escape_property`); with ``base``, a
        file-system path is made relative to it (the repository root: annotations
        need repository-relative paths)."""
        kind = {Severity.ERROR: "error", Severity.WARNING: "warning"}.get(
            self.severity, "notice"
        )
        message = self.message
        if self.span.pointer:
            message += f" (at {self.span.pointer})"
        path = self.span.path
        if base is not None and path:
            path = relative_to_base(path, base)
        return (
            f"::{kind} file={escape_property(redact_urls(path))},"
            f"line={self.span.line},col={self.span.column},"
            f"title={escape_property(self.rule)}::"
            f"{escape_data(redact_urls(message))}"
        )


def escape_data(text: str) -> str:
    """The data (message) of a GitHub Actions workflow command: ``%`` → ``%25``,
    ``\\r`` → ``%0D``, ``\\n`` → ``%0A`` (``escapeData`` of ``@actions/core``,
    ``src/command.ts``), so no value can end the command and start another
    (``::add-mask::``, ``::error``)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A property value (``file=``, ``title=``) of a workflow command:
    :func:`escape_data`, and ``:`` → ``%3A``, ``,`` → ``%2C`` (``escapeProperty``
    of ``@actions/core``), so a file name cannot add or end properties."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]|\n"
)


def printable(text: str) -> str:
    """``text`` with control characters (C0 but tab, DEL, C1, U+2028/U+2029) and
    bidirectional controls (U+202A-U+202E, U+2066-U+2069) shown as Python escapes
    (``\\n``, ``\\r``, ``\\x1b``, ``\\u202e``): one line that cannot spoof
    another, nor move the terminal's cursor."""

    def escape(m: re.Match[str]) -> str:
        return repr(m.group())[1:-1]

    return _UNSAFE.sub(escape, text)


def safe_text(text: str) -> str:
    """``text`` fit for a terminal, a log or a CI annotation: URLs redacted
    (:func:`redact_urls`) and control characters escaped (:func:`printable`). Every
    message the CLI prints that may hold input or exception text goes through it."""
    return printable(redact_urls(text))


_safe = safe_text


_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def redact_urls(text: str) -> str:
    """``text`` with every URL in it passed through :func:`redact_url`: what every
    diagnostic output form applies to paths and messages, so a ``user:pass@`` or
    ``?access_token=`` never reaches a terminal, a log or a CI annotation."""
    if "://" not in text:
        return text

    def one(m: re.Match[str]) -> str:
        url = m.group()
        tail = len(url) - len(url.rstrip(").,;:!?]"))  # prose after the URL
        return redact_url(url[: len(url) - tail]) + url[len(url) - tail :]

    return _URL.sub(one, text)


def relative_to_base(path: str, base: str | os.PathLike[str]) -> str:
    """``path`` (relative to the current directory, or absolute) relative to
    ``base`` in POSIX form, when it lies below ``base``; else ``path`` unchanged."""
    full = os.path.abspath(path)
    try:
        rel = os.path.relpath(full, os.path.abspath(base))
    except ValueError:
        return path
    if rel.split(os.sep)[0] == os.pardir:
        return path
    return rel.replace(os.sep, "/")


class Reporter:
    """Collects diagnostics from every stage; sorted and de-duplicated on read."""

    def __init__(self) -> None:
        self._items: set[Diagnostic] = set()

    def add(self, diagnostic: Diagnostic) -> None:
        self._items.add(diagnostic)

    def report(
        self, span: Span, rule: str, message: str, severity: Severity = Severity.ERROR
    ) -> None:
        self.add(Diagnostic(span, rule, severity, message))

    def extend(self, diagnostics: Iterable[Diagnostic]) -> None:
        self._items.update(diagnostics)

    def __iter__(self) -> Iterator[Diagnostic]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self if d.severity is Severity.ERROR]

    @property
    def has_errors(self) -> bool:
        return any(d.severity is Severity.ERROR for d in self._items)


def render(
    diagnostics: Iterable[Diagnostic],
    fmt: str,
    base: str | os.PathLike[str] | None = None,
) -> str:
    """Render diagnostics as ``text``, ``json`` or ``github`` (paths relative to
    ``base`` when given); raises ``ValueError`` for another ``fmt``."""
    items = sorted(diagnostics)
    if fmt == "text":
        return "\n".join(d.as_text() for d in items)
    if fmt == "json":
        return json.dumps([d.as_json() for d in items], indent=2, ensure_ascii=False)
    if fmt == "github":
        return "\n".join(d.as_github(base) for d in items)
    raise ValueError(f"unknown diagnostics format {fmt!r}")


def closest(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The candidate closest to ``word`` (difflib ratio at least ``cutoff``,
    compared case-insensitively), or ``None`` when none is close."""
    pool = {c.lower(): c for c in candidates if c != word}
    import difflib  # only when a hint is needed (kept off the start-up path)

    best = difflib.get_close_matches(word.lower(), list(pool), n=1, cutoff=cutoff)
    return pool[best[0]] if best else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the :func:`closest` candidate, or ``""``."""
    best = closest(word, candidates)
    return f"; did you mean {best!r}?" if best is not None else ""


class CompileError(Exception):
    """Raised by the pipeline when a stage reported errors; carries them all."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics)
        super().__init__(f"{len(self.diagnostics)} error(s)")


STAGE_RULES: dict[str, tuple[str, str]] = {
    # config (atdata_gen.config, atdata-gen build options)
    "CONFIG_NOT_FOUND": (
        "config",
        "No SOURCE given and no pyproject.toml here or in a parent directory.",
    ),
    "CONFIG_NO_TABLE": (
        "config",
        "The nearest pyproject.toml has no [tool.atdata-gen] table.",
    ),
    "CONFIG_SYNTAX": ("config", "pyproject.toml is not valid TOML."),
    "CONFIG_UNKNOWN_KEY": (
        "config",
        "A key of a [tool.atdata-gen…] table that atdata-gen does not know.",
    ),
    "CONFIG_VALUE": (
        "config",
        "A [tool.atdata-gen] value has the wrong type, or is an unusable package.",
    ),
    "PACKAGE_NAME": (
        "config",
        "--package is no dotted identifier, or shadows stdlib or atdata-gen.",
    ),
    "OUT_OVERLAPS_SOURCE": (
        "config",
        "The package directory OUT/PACKAGE is, or holds, a source directory.",
    ),
    "OUT_NOT_DIRECTORY": (
        "write",
        "OUT/PACKAGE or a parent is a file or dangling link, or leads outside --out.",
    ),
    "OUT_CLASH": (
        "write",
        "A file or link of yours (not in the manifest) is where a generated one goes.",
    ),
    "OUT_MANIFEST": (
        "write",
        "The package's manifest was ignored or had entries dropped (warning).",
    ),
    "OUT_WRITE": (
        "write",
        "Writing the package failed (read-only directory, full disk); unchanged.",
    ),
    "OUT_LOCKED": (
        "write",
        "Another build held the package's lock past ATDATA_GEN_LOCK_TIMEOUT (60 s).",
    ),
    "EXTERNAL_PACKAGE_NAME": (
        "config",
        "--external DIR=PACKAGE: PACKAGE is not a dotted identifier.",
    ),
    "EXTERNAL_PACKAGE_NOT_FOUND": (
        "config",
        "--external DIR=PACKAGE: PACKAGE is not importable here (warning).",
    ),
    # load (atdata_gen.sources)
    "SRC_NOT_FOUND": ("load", "A SOURCE path does not exist."),
    "SRC_EMPTY": ("load", "A source directory holds no JSON file (warning)."),
    "SRC_READ": ("load", "A file could not be read."),
    "SRC_ENCODING": ("load", "A file is not UTF-8."),
    "SRC_JSON_SYNTAX": ("load", "A file is not valid JSON (RFC 8259)."),
    "SRC_JSON_DUPLICATE_KEY": (
        "load",
        "An object repeats a key (a value would be lost).",
    ),
    "SRC_INVALID_UNICODE": ("load", "A string holds a lone UTF-16 surrogate escape."),
    "SRC_NOT_REGULAR": (
        "load",
        "A source is a FIFO, device or socket, not a regular file (never read).",
    ),
    "SRC_TOO_LARGE": ("load", "A source file is larger than 8 MiB (never read)."),
    "SRC_GENERATED": (
        "load",
        "A source named explicitly is a generated package's .atdata-gen.json.",
    ),
    "SRC_JSON_TOO_DEEP": (
        "load",
        "JSON nesting deeper than 64 levels (checked before parsing).",
    ),
    "SRC_FLOAT": (
        "load",
        "A float (NaN, Infinity, -0.0, 1.5, 1e400): the data model has integers only.",
    ),
    "SRC_INTEGER_RANGE": (
        "load",
        "An integer outside signed 64-bit (atproto data model).",
    ),
    # parse (atdata_gen.frontend.lexicon)
    "LEX_NOT_OBJECT": ("parse", "A document, def or body is not a JSON object."),
    "LEX_VERSION": ("parse", "'lexicon' is not the integer 1."),
    "LEX_ID": ("parse", "'id' is not a string."),
    "LEX_DEFS": ("parse", "'defs' is not an object."),
    "LEX_TYPE_MISSING": ("parse", "A definition has no string 'type'."),
    "LEX_TYPE_UNKNOWN": ("parse", "'type' is not a type of the Lexicon language."),
    "LEX_TYPE_NOT_ALLOWED": (
        "parse",
        "A type appears where the spec does not allow it (e.g. a top-level ref).",
    ),
    "LEX_FIELD_TYPE": ("parse", "A key of a definition has the wrong JSON type."),
    "LEX_FIELD_RANGE": ("parse", "A length or size bound is negative."),
    "LEX_FIELD_MISSING": ("parse", "A required key of a definition is missing."),
    "LEX_UNKNOWN_KEY": ("parse", "A key the spec does not define (warning; ignored)."),
    "LEX_NONSTANDARD_KEY": (
        "parse",
        "A known non-standard key such as 'pattern' (info; kept as documentation).",
    ),
    "LEX_STRING_FORMAT_UNKNOWN": (
        "parse",
        "A string 'format' the spec does not define.",
    ),
    "LEX_RECORD_KEY": (
        "parse",
        "A record key type is not tid, nsid, any or literal:….",
    ),
    "LEX_RECORD_KEY_MISSING": (
        "parse",
        "A record does not name its key type (warning).",
    ),
    "LEX_RECORD_NOT_OBJECT": ("parse", "A record's 'record' is not an object def."),
    "LEX_PERMISSION_TYPE": ("parse", "A permission lacks type 'permission' (warning)."),
    "LEX_PROPERTY_RESERVED": (
        "parse",
        "A property named $link, $bytes, or $type other than the def's own tag.",
    ),
    "LEX_PROPERTY_DOLLAR": (
        "parse",
        "Another property name starting with '$', kept (warning).",
    ),
    # lower (atdata_gen.ir.lower)
    "LEX_REQUIRED_UNDEFINED": (
        "lower",
        "'required' names a missing property (warning).",
    ),
    "LEX_NULLABLE_UNDEFINED": (
        "lower",
        "'nullable' names a missing property (warning).",
    ),
    # link (atdata_gen.ir.link)
    "LEX_NSID_DUPLICATE": ("link", "Two files define the same NSID."),
    "LEX_REF_UNRESOLVED": ("link", "A ref or union member names no known def."),
    "LEX_TYPE_TOO_DEEP": (
        "link",
        "Arrays, objects and unions nest deeper than 32 levels (refs followed).",
    ),
    # schema records (atdata_gen.frontend.schema_record, ir.link.link_samples)
    "SCHEMA_BODY": ("parse", "A schema record lacks a usable JSON Schema body."),
    "SCHEMA_FIELD": ("parse", "A field of a schema record has a malformed type."),
    "SCHEMA_NAME": ("parse", "A schema name is not a dotted identifier."),
    "SCHEMA_PROPERTY_RESERVED": (
        "parse",
        "A sample field name starts with '$' (reserved by the atproto data model).",
    ),
    "SCHEMA_VERSION": ("parse", "A schema version is not semver 2.0.0."),
    "NAME_TOO_LONG": (
        "parse",
        "A schema/lens name or version is too long for its Lexicon or a file name.",
    ),
    "SCHEMA_RECORD_VERSION": (
        "parse",
        "atdataSchemaVersion is not a version this compiler reads.",
    ),
    "SCHEMA_REF": ("parse", "A $ref is not one of atdata's array shims."),
    "SCHEMA_UNSUPPORTED": (
        "parse",
        "A field type atdata-gen cannot type (nested object, unknown shim version).",
    ),
    "SCHEMA_DUPLICATE": (
        "link",
        "The same schema name and version with different fields.",
    ),
    # lens records (atdata_gen.frontend.lens_record, ir.link.link_lenses)
    "LENS_RECORD": ("parse", "A lens record lacks a required string or object."),
    "LENS_CODE_REF": (
        "parse",
        "A code reference's commit is not a full hash or its path not module:fn.",
    ),
    "LENS_SCHEMA_URI": (
        "parse",
        "sourceSchema/targetSchema is not the AT-URI of a schema record.",
    ),
    "LENS_VERSION_RANGE": (
        "link",
        "A version range is not npm semver syntax, or excludes the resolved schema.",
    ),
    "LENS_SCHEMA_UNRESOLVED": (
        "link",
        "A lens record's schema is neither in the sources nor pinned in the lock.",
    ),
    # lock (atdata_gen.lock, atdata-gen build --frozen)
    "LOCK_FORMAT": ("load", "atdata-gen.lock is not a lock of a known version."),
    "LOCK_CID_MISMATCH": (
        "load",
        "A pinned record does not hash to its CID (edited by hand).",
    ),
    "LOCK_MISSING": ("load", "--frozen: [tool.atdata-gen] schemas but no lock."),
    "LOCK_STALE": ("load", "--frozen: a listed schema is not pinned in the lock."),
}
"""Diagnostics of the load, parse, lower and link stages: rule ID → (stage,
purpose). Lint rules live in :data:`atdata_gen.checks.lint.RULES`."""


def github_base() -> Path:
    """What GitHub annotation paths are relative to: the git toplevel of the current
    directory, or the current directory outside a repository."""
    import subprocess  # only for --format github (kept off the start-up path)

    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return Path.cwd()
    top = proc.stdout.strip()
    return Path(top) if proc.returncode == 0 and top else Path.cwd()
