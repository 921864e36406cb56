"""Stages 2-3 for lenses: a ``science.alt.dataset.lens`` record →
:class:`~atdata_gen.ir.model.LensRecord`.

Accepted inputs: the record itself (``$type`` = ``science.alt.dataset.lens``), or
wrapped as ``com.atproto.repo.getRecord`` returns it (``{"uri", "cid", "value"}``;
also how ``atdata-gen.lock`` pins it). The record's shape follows the Lexicon
``science.alt.dataset.lens`` (this repository's ``lexicons/``) and what atdata
0.7.0b1's ``LensPublisher`` writes.

A lens record is untrusted input that *names* code: it never carries any. Here
the names are checked: ``path`` must be ``module:function`` with dotted Python
identifiers (rule ``LENS_CODE_REF``), ``commit`` a full hexadecimal commit hash,
the two schemas AT-URIs of schema records (``LENS_SCHEMA_URI``) and the version
ranges npm-style semver ranges (``LENS_VERSION_RANGE``, parsed with
``semantic_version.NpmSpec``). Every string later reaches generated code only as a
``repr`` literal or an escaped docstring.
"""

from __future__ import annotations

import re
from typing import Any

from ..diagnostics import Reporter
from ..ir.model import CodeRef, LensRecord, Origin
from ..sources import SourceDoc
from .schema_record import unwrap_record

__all__ = [
    "CODE_PATH_RE",
    "in_range",
    "is_lens_record",
    "parse_lens_record",
    "version_range",
]

CODE_PATH_RE = re.compile(
    r"(?P<module>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)"
    r":(?P<function>[A-Za-z_][A-Za-z0-9_]*)"
)
"""``module:function`` of a code reference (atdata's ``getter_path`` form)."""
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
LENS = "science.alt.dataset.lens"
"""The lens record's NSID (``atdata_runtime.atmosphere.records.LENS``; spelled here
so that recognising a lens record does not import the atmosphere client, ~160 ms;
a test checks the two agree)."""
SCHEMA = "science.alt.dataset.schema"
"""The schema record's NSID (``atdata_runtime.atmosphere.records.SCHEMA``)."""
MAX_LENS_NAME = 100
"""Longest lens name, in UTF-8 bytes: the ``maxLength`` of ``name`` in the Lexicon
``science.alt.dataset.lens`` (Lexicon string lengths count UTF-8 bytes; a name
within it makes a module name of at most
:data:`~atdata_gen.naming.MAX_MODULE_NAME` characters). Longer is
``NAME_TOO_LONG``."""


def is_lens_record(value: Any) -> bool:
    """True when a decoded JSON document is a lens record (plain or wrapped)."""
    value = unwrap_record(value)[0]
    if not isinstance(value, dict):
        return False
    return value.get("$type") == LENS or (
        "getterCode" in value and "sourceSchema" in value
    )


def version_range(text: str) -> Any:
    """``text`` as a ``semantic_version.NpmSpec`` (npm range syntax: ``>=1.0.0
    <2.0.0``, ``^1.2``, ``1.x || 3.0.0 - 3.1.0``). Raises ``ValueError``."""
    import semantic_version

    return semantic_version.NpmSpec(text)


def in_range(text: str, version: str) -> bool:
    """Whether semver ``version`` satisfies the npm range ``text`` (both already
    checked). Raises ``ValueError`` for either malformed."""
    import semantic_version

    return bool(version_range(text).match(semantic_version.Version(version)))


class _Parser:
    def __init__(self, doc: SourceDoc, reporter: Reporter, base: str) -> None:
        self.doc, self.reporter, self.base = doc, reporter, base
        self.ok = True

    def error(self, pointer: str, rule: str, message: str) -> None:
        self.ok = False
        self.reporter.report(self.doc.span(self.base + pointer), rule, message)

    def string(
        self, obj: dict[str, Any], key: str, ptr: str, required: bool
    ) -> str | None:
        value = obj.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or (required and not value):
            self.error(
                f"{ptr}/{key}" if key in obj else ptr,
                "LENS_RECORD",
                f"{key!r} must be a{' non-empty' if required else ''} string",
            )
            return None
        return str(value)

    def code_ref(self, obj: Any, ptr: str) -> CodeRef | None:
        if not isinstance(obj, dict):
            self.error(ptr, "LENS_RECORD", "a code reference must be an object")
            return None
        repo = self.string(obj, "repository", ptr, True)
        commit = self.string(obj, "commit", ptr, True)
        path = self.string(obj, "path", ptr, True)
        branch = self.string(obj, "branch", ptr, False)
        language = self.string(obj, "language", ptr, False)
        if commit is not None and not _COMMIT_RE.fullmatch(commit):
            self.error(
                f"{ptr}/commit",
                "LENS_CODE_REF",
                f"commit {commit!r} is not a full 40-digit hexadecimal commit hash",
            )
            return None
        if path is not None and not CODE_PATH_RE.fullmatch(path):
            self.error(
                f"{ptr}/path",
                "LENS_CODE_REF",
                f"path {path!r} is not module:function (dotted Python identifiers)",
            )
            return None
        if repo is None or commit is None or path is None:
            return None
        return CodeRef(repo, commit, path, branch, language)

    def schema_uri(self, value: dict[str, Any], key: str) -> str | None:
        uri = self.string(value, key, "", True)
        if uri is None:
            return None
        from atdata_runtime.atmosphere.records import AtUri

        try:
            at = AtUri.parse(uri)
        except ValueError as exc:
            self.error(f"/{key}", "LENS_SCHEMA_URI", f"{uri!r}: {exc}")
            return None
        if at.collection != SCHEMA or not at.rkey:
            self.error(
                f"/{key}",
                "LENS_SCHEMA_URI",
                f"{uri!r} is not the AT-URI of a {SCHEMA} record",
            )
            return None
        return uri

    def version_range(self, value: dict[str, Any], key: str) -> str | None:
        text = self.string(value, key, "", False)
        if text is None:
            return None
        try:
            version_range(text)
        except ValueError:
            self.error(
                f"/{key}",
                "LENS_VERSION_RANGE",
                f"{text!r} is not a semver range (npm syntax, e.g. '>=1.0.0 <2.0.0')",
            )
            return None
        return text


def parse_lens_record(doc: SourceDoc, reporter: Reporter) -> LensRecord | None:
    """Parse one lens record document; report problems (rules ``LENS_*``, located
    by JSON pointer) and return ``None`` when the record cannot be compiled."""
    value, base, uri, cid = unwrap_record(doc.value)
    p = _Parser(doc, reporter, base)
    if not isinstance(value, dict):
        p.error("", "LENS_RECORD", "a lens record must be a JSON object")
        return None
    name = p.string(value, "name", "", True)
    if name is not None and len(name.encode("utf-8")) > MAX_LENS_NAME:
        p.error(
            "/name",
            "NAME_TOO_LONG",
            f"lens name is {len(name.encode('utf-8'))} bytes long; the Lexicon "
            f"science.alt.dataset.lens allows at most {MAX_LENS_NAME} (it also "
            "names the lens's stub module, a file)",
        )
        name = None
    description = p.string(value, "description", "", False)
    source = p.schema_uri(value, "sourceSchema")
    target = p.schema_uri(value, "targetSchema")
    getter = p.code_ref(value.get("getterCode"), "/getterCode")
    putter = p.code_ref(value.get("putterCode"), "/putterCode")
    source_range = p.version_range(value, "sourceSchemaVersion")
    target_range = p.version_range(value, "targetSchemaVersion")
    if not p.ok or None in (name, source, target, getter, putter):
        return None
    assert name and source and target and getter and putter  # for the type checker
    return LensRecord(
        name,
        description,
        source,
        target,
        getter,
        putter,
        source_range,
        target_range,
        Origin(doc.path, doc.sha256),
        uri,
        cid,
        doc.span(f"{base}/name"),
        doc.span(f"{base}/sourceSchema"),
        doc.span(f"{base}/targetSchema"),
        doc.span(f"{base}/sourceSchemaVersion"),
        doc.span(f"{base}/targetSchemaVersion"),
    )
