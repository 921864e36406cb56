"""Names for schemas and datasets, and their resolution to AT-URIs.

Grammar (:func:`parse_name`)::

    name      = at-uri                      ; passes through unchanged
              | "@" publisher "/" local     ; @alice.example/CellCrop@^1
              | local                       ; CellCrop@^1, CellCrop
    publisher = handle | did                ; @did:plc:…/CellCrop@1.2.0
    local     = NAME [ "@" ( RANGE | "latest" ) ]

``NAME`` is the record's ``name`` (1–200 characters, no ``@``, no ``/``, no
control or format characters). ``RANGE`` is a semver range in npm's syntax with
Cargo's commas (:mod:`.semver`: ``1.2.3`` exact, ``^1``, ``~1.2``, ``>=1.0,<2``,
``*``); absent or ``latest`` means the highest release (the highest prerelease
when there is no release).

Resolution (:class:`NameResolver`) asks the AppView first, then, when the name
names its publisher, the publisher's own PDS (``com.atproto.repo.listRecords``,
bounded pages), as atdata 0.7 does when it has no AppView. The PDS is asked when
the AppView is not configured, unavailable (connection error, timeout, 5xx),
gives an unusable answer, or does not know the name (an index lags behind the
repositories). Without a publisher only the AppView can answer; more than one
publisher is :class:`~.errors.AmbiguousNameError` listing the candidates.

* A **schema** name (``atdata-gen pull``) resolves to a schema record: an exact
  version by ``resolveSchema``; a range by the versions of ``getSchemaHistory``
  (or ``listSchemas`` pages for an AppView without it), the highest that
  satisfies it.
* A **dataset** name (``Dataset.from_atproto``) resolves to an entry: first a
  label of that name (``resolveLabel``; the range applies to the label's
  version), then entries whose ``name`` is NAME, then entries whose schema's
  name is NAME, the range applying to the schema version; the newest
  (``createdAt``) wins. A label, whoever named it (the AppView or the PDS's
  listing), is only used once the label record itself is read from the
  publisher's repository and verified (``com.atproto.repo.listRecords`` on their
  PDS to find it, at most ``max_pds_pages`` pages, then
  ``com.atproto.sync.getRecord``, proven by the repository's signed commit, for
  at most :data:`MAX_LABEL_CHECKS` candidates) with the name, the version (in
  the range) and the entry (``datasetUri``) the resolution names; an AppView
  label that no verified label backs is refused (``NAME_MISMATCH``).

What a resolution returns is only where to look: the record is then read from
its owner's repository and verified, and :meth:`Resolved.check_schema` /
:meth:`Resolved.check_entry` refuse it (``NAME_MISMATCH``) unless it is in the
named publisher's repository (the handle resolved here, bidirectionally, by the
runtime's identity resolver), has the name, and a version in the range (for a
label: the verified label names this entry, with the name and a version in the
range). For a name **with** ``@publisher`` a hostile index can therefore hide
records, but never substitute one. A name **without** ``@publisher`` trusts the
AppView to choose the publisher: the record is checked for the name and the
range, but whose repository it comes from is the index's word (several
publishers are reported as ambiguous only if the index reports them). Name the
publisher whenever it matters.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..atmosphere.client import AtmosphereClient, FetchedRecord
from ..atmosphere.identity import IdentityResolver
from ..atmosphere.records import ENTRY, SCHEMA, AtUri
from ..lex.formats import is_did, is_handle
from ..net.errors import NetworkError
from ..net.fetch import MAX_LIST_BYTES, fetch
from ..net.redact import redact_url
from ..net.retry import RetryPolicy
from .client import AppViewClient
from .errors import (
    AmbiguousNameError,
    AppViewError,
    AppViewNotConfigured,
    AppViewNotFound,
    AppViewQueryError,
    NameMismatchError,
    NameNotFoundError,
    NameSyntaxError,
    clean_text,
)
from .semver import Version, VersionRange, latest

__all__ = [
    "LABEL",
    "MAX_NAME_LENGTH",
    "Name",
    "NameResolver",
    "Resolved",
    "is_name",
    "parse_name",
    "resolve_dataset",
    "resolve_schema",
]

LABEL = "science.alt.dataset.label"

MAX_NAME_LENGTH = 200
"""Characters of NAME (the entry record's ``name`` limit)."""

MAX_TEXT_LENGTH = 1000
"""Characters of a whole name accepted by :func:`parse_name`."""

MAX_PDS_PAGES = 20
"""Pages of ``listRecords`` read per collection in the PDS fallback (100 records
a page: 2,000 records)."""

MAX_APPVIEW_PAGES = 10
"""Pages of an AppView search read per resolution step (100 entries a page)."""

MAX_SCHEMA_LOOKUPS = 20
"""Schema records looked up one by one to learn entries' schema versions."""

MAX_CANDIDATES_SHOWN = 10

MAX_LABEL_CHECKS = 5
"""Label records read and verified (``sync.getRecord``) per label resolution: the
newest listed ones that fit the name."""

_FORBIDDEN = frozenset("@/")


def _bad_char(text: str) -> str | None:
    import unicodedata

    for ch in text:
        if ch in _FORBIDDEN:
            return repr(ch)
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            return f"U+{ord(ch):04X}"
    return None


@dataclass(frozen=True)
class Name:
    """A parsed name. ``text``: as written. For an AT-URI, ``uri`` is set and the
    rest is ``None``. Otherwise ``publisher`` (a handle, lowercased, or a DID;
    ``None`` when not given), ``local`` (NAME) and ``range`` (``None``: latest)."""

    text: str
    local: str | None = None
    publisher: str | None = None
    range: VersionRange | None = None
    uri: str | None = None

    @property
    def is_uri(self) -> bool:
        return self.uri is not None

    @property
    def exact(self) -> str | None:
        """The exact version asked for (``CellCrop@1.2.0``), else ``None``."""
        v = self.range.exact if self.range is not None else None
        return str(v) if v is not None else None

    def matches_version(self, version: object) -> bool:
        """Whether ``version`` is in the range (any semantic version when the name
        asks for the latest)."""
        if self.range is None:
            return Version.try_parse(version) is not None
        return self.range.matches(str(version)) if isinstance(version, str) else False

    def pick(self, items: Iterable[Any], version: Callable[[Any], object]) -> Any:
        """The item with the highest version in the range (latest: highest
        release, else highest prerelease), or ``None``."""
        if self.range is None:
            return latest(items, version)
        return self.range.best(items, version)

    def qualified(self, publisher: str, version: str | None = None) -> str:
        """``@publisher/NAME@VERSION`` (the range when no version is given)."""
        tail = version or (self.range.text if self.range is not None else None)
        return f"@{publisher}/{self.local}" + (f"@{tail}" if tail else "")

    def __str__(self) -> str:
        return self.text


def parse_name(text: str) -> Name:
    """Parse a name (module docstring's grammar). Raises
    :class:`~.errors.NameSyntaxError` (``NAME_INVALID``) saying which part is
    wrong."""
    if not isinstance(text, str):
        raise NameSyntaxError(repr(text)[:100], "a name is text")
    raw = text
    text = text.strip()
    shown = clean_text(text, 200)
    if not text:
        raise NameSyntaxError("", "the name is empty")
    if len(text) > MAX_TEXT_LENGTH:
        raise NameSyntaxError(
            shown, f"the name is longer than {MAX_TEXT_LENGTH} characters"
        )
    if text.startswith("at://"):
        try:
            AtUri.parse(text)
        except ValueError as exc:
            raise NameSyntaxError(shown, clean_text(str(exc), 300)) from None
        return Name(raw, uri=text)
    publisher: str | None = None
    local = text
    if text.startswith("@"):
        head, sep, local = text[1:].partition("/")
        if not sep or not head:
            raise NameSyntaxError(
                shown, "expected @publisher/NAME[@RANGE] (publisher: a handle or DID)"
            )
        if is_did(head):
            publisher = head
        elif is_handle(head):
            publisher = head.lower()
        else:
            raise NameSyntaxError(
                shown, f"publisher {clean_text(head, 100)!r} is not a handle or DID"
            )
    name, sep, range_text = local.partition("@")
    if not name:
        raise NameSyntaxError(
            shown, "NAME is empty (expected [@publisher/]NAME[@RANGE])"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise NameSyntaxError(
            shown, f"NAME is longer than {MAX_NAME_LENGTH} characters"
        )
    if name != name.strip():
        raise NameSyntaxError(shown, "NAME starts or ends with a space")
    bad = _bad_char(name)
    if bad is not None:
        hint = ""
        if bad == "'/'" and publisher is None:
            first = name.partition("/")[0]
            if is_handle(first) or is_did(first):
                hint = f" (a publisher is written @{first}/…)"
        raise NameSyntaxError(shown, f"NAME contains {bad}{hint}")
    version_range: VersionRange | None = None
    if sep:
        if not range_text.strip():
            raise NameSyntaxError(
                shown, "nothing after @: give a version or range (^1, 1.2.0)"
            )
        if range_text.strip() != "latest":
            try:
                version_range = VersionRange.parse(range_text)
            except ValueError as exc:
                raise NameSyntaxError(shown, clean_text(str(exc), 300)) from None
    return Name(raw, local=name, publisher=publisher, range=version_range)


def is_name(text: str) -> bool:
    """Whether ``text`` is a name that is not an AT-URI (so needs resolving)."""
    return isinstance(text, str) and not text.strip().startswith("at://")


# -- what a resolution returns ----------------------------------------------------

Kind = Literal["schema", "entry", "label"]


@dataclass(frozen=True)
class Resolved:
    """Where a name points: ``uri`` (AT-URI with a DID authority, or the AT-URI
    given), ``kind`` (``schema``, ``entry``, or ``label``: an entry named by a
    label), ``did`` (the publisher), ``version`` (the schema's version, or the
    label's), ``via`` (``uri``, ``appview`` or ``pds``), ``match`` (for entries:
    ``name`` or ``schema``, which of the entry's names matched), ``tried`` (the
    sources asked before, with what they said), and for ``kind="label"``
    ``label_uri``/``label``: the label record as read, verified, from the
    publisher's repository (``None`` otherwise)."""

    name: Name
    uri: str
    kind: Kind
    did: str | None
    via: Literal["uri", "appview", "pds"]
    version: str | None = None
    cid: str | None = None
    match: Literal["name", "schema", "label", "uri"] = "name"
    tried: tuple[str, ...] = field(default_factory=tuple)
    label_uri: str | None = None
    label: dict[str, Any] | None = None

    def _fail(self, uri: str, why: str) -> NameMismatchError:
        return NameMismatchError(
            clean_text(self.name.text, 200),
            f"resolved to {uri} ({self.via}), but {why}; the index is wrong or "
            "hostile, nothing is used",
        )

    def _check_repo(self, uri: str) -> None:
        if self.did is None or self.name.publisher is None:
            return
        authority = AtUri.parse(uri).authority
        if authority != self.did:
            raise self._fail(uri, f"the record is in {authority}, not in {self.did}")

    def _check_label(self, entry_uri: str) -> None:
        label, where = self.label, self.label_uri
        if label is None or where is None:
            raise self._fail(
                entry_uri,
                "no label record read, verified, from the publisher's repository "
                "names it",
            )
        authority = AtUri.parse(where).authority
        if self.did is None or authority != self.did:
            raise self._fail(where, f"the label is in {authority}, not in {self.did}")
        if label.get("name") != self.name.local:
            raise self._fail(
                where, f"the label is named {clean_text(str(label.get('name')), 100)!r}"
            )
        target = label.get("datasetUri")
        if target != entry_uri:
            raise self._fail(
                entry_uri,
                f"the verified label {where} names {clean_text(str(target), 300)}",
            )
        version = label.get("version")
        if self.name.range is not None and not self.name.matches_version(version):
            raise self._fail(
                where,
                f"the label's version {clean_text(str(version), 50)!r} is not in "
                f"{self.name.range}",
            )

    def check_schema(self, uri: str, value: dict[str, Any]) -> None:
        """Refuse the verified schema record (``uri`` with a DID authority, its
        ``value``) unless the name asks for it: the publisher's repository, NAME,
        a version in the range. Raises :class:`~.errors.NameMismatchError`."""
        if self.name.is_uri:
            return
        self._check_repo(uri)
        if value.get("name") != self.name.local:
            raise self._fail(
                uri, f"its name is {clean_text(str(value.get('name')), 100)!r}"
            )
        version = value.get("version")
        if not self.name.matches_version(version):
            raise self._fail(
                uri,
                f"its version {clean_text(str(version), 50)!r} is not in {self.name.range or 'semver'}",
            )

    def check_entry(
        self,
        entry_uri: str,
        entry: dict[str, Any],
        schema_uri: str,
        schema: dict[str, Any],
    ) -> None:
        """Refuse a verified entry and its schema record unless the name asks for
        them: the publisher's repository; for a match by entry name, the entry's
        ``name``; for a match by schema, the schema's ``name``; the schema
        version in the range. For a label (``kind="label"``) the label record
        verified at resolution (``label``, ``label_uri``) must be in the
        publisher's repository, have NAME, a version in the range, and name
        this entry (``datasetUri``); the range applies to the label, not the
        schema. Raises :class:`~.errors.NameMismatchError`."""
        if self.name.is_uri:
            return
        self._check_repo(entry_uri)
        if self.kind == "label":
            self._check_label(entry_uri)
            return
        if self.match == "name" and entry.get("name") != self.name.local:
            raise self._fail(
                entry_uri, f"its name is {clean_text(str(entry.get('name')), 100)!r}"
            )
        if self.match == "schema" and schema.get("name") != self.name.local:
            raise self._fail(
                schema_uri,
                f"its schema is named {clean_text(str(schema.get('name')), 100)!r}",
            )
        version = schema.get("version")
        if self.name.range is not None and not self.name.matches_version(version):
            raise self._fail(
                entry_uri,
                f"its schema version {clean_text(str(version), 50)!r} is not in {self.name.range}",
            )


# -- resolution --------------------------------------------------------------------


def _created(value: object) -> dt.datetime:
    """A record's ``createdAt`` for ordering (an unusable one sorts oldest)."""
    if isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            return dt.datetime.min.replace(tzinfo=dt.UTC)
        return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    return dt.datetime.min.replace(tzinfo=dt.UTC)


def _unavailable(exc: BaseException) -> bool:
    """Whether an AppView failure lets the PDS be asked instead (everything but a
    refused query: a bad parameter or an ambiguous name is the caller's)."""
    if isinstance(exc, AppViewNotFound):
        return True
    if isinstance(exc, AppViewQueryError):
        return exc.error in (None, "MethodNotImplemented") and exc.status in (404, 501)
    return isinstance(exc, (AppViewError, NetworkError))


@dataclass
class _Entry:
    """An entry candidate: from an AppView view or a PDS listing."""

    uri: str
    did: str
    handle: str | None
    name: str
    schema_ref: str
    schema_name: str | None
    schema_version: str | None
    created: dt.datetime


class NameResolver:
    """Resolve names (module docstring) through an AppView, falling back to the
    publisher's PDS.

    ``appview``: an :class:`~.client.AppViewClient`, a URL, or ``None`` for the
    ``ATDATA_APPVIEW_URL`` setting (no setting: PDS only, for names with a
    publisher). ``resolver``: the identity resolver (handles, DID documents, PDS
    endpoints; share it with the client that then reads the records).
    ``fallback``: ask the PDS when the AppView cannot answer (default ``True``).
    ``timeout``: seconds per PDS request; ``max_pds_pages``: pages of
    ``listRecords`` per collection."""

    def __init__(
        self,
        appview: AppViewClient | str | None = None,
        *,
        resolver: IdentityResolver | None = None,
        fallback: bool = True,
        timeout: float = 10.0,
        max_pds_pages: int = MAX_PDS_PAGES,
    ) -> None:
        if isinstance(appview, str):
            appview = AppViewClient(appview)
        elif appview is None:
            try:
                appview = AppViewClient()
            except AppViewNotConfigured:
                appview = None
        self.appview = appview
        self.resolver = resolver or IdentityResolver()
        self.fallback = fallback
        self.timeout = timeout
        self.max_pds_pages = max_pds_pages

    # -- shared ---------------------------------------------------------------
    def _publisher_did(self, name: Name) -> str | None:
        """The DID of the name's publisher (a handle is resolved and checked both
        ways by the identity resolver); ``None`` without a publisher."""
        if name.publisher is None:
            return None
        if is_did(name.publisher):
            return name.publisher
        try:
            return self.resolver.resolve(name.publisher).did
        except NetworkError as exc:  # IdentityError, or the lookup kept failing
            raise NameNotFoundError(
                clean_text(name.text, 200),
                f"the publisher {name.publisher} does not resolve: "
                f"{clean_text(str(exc), 300)}",
            ) from exc

    def _no_appview(
        self, name: Name, what: str
    ) -> NameNotFoundError | AppViewNotConfigured:
        if self.appview is None:
            return AppViewNotConfigured(
                f"cannot resolve {clean_text(name.text, 200)!r}: no AppView configured "
                f"(set ATDATA_APPVIEW_URL or pass the URL) and the name has no "
                f"@publisher/ whose PDS could be asked (e.g. @handle/{name.local})"
            )
        return NameNotFoundError(clean_text(name.text, 200), f"no {what} found")

    def _appview_note(self, exc: BaseException | None) -> str:
        where = redact_url(self.appview.url) if self.appview else "no AppView"
        if self.appview is None:
            return "AppView (not configured: ATDATA_APPVIEW_URL unset)"
        if exc is None:
            return f"AppView {where} (not found)"
        return f"AppView {where} ({clean_text(str(exc), 300)})"

    # -- schemas --------------------------------------------------------------
    def resolve_schema(self, name: str | Name) -> Resolved:
        """The schema record a name names (module docstring). Raises
        :class:`~.errors.NameSyntaxError`, :class:`~.errors.NameNotFoundError`
        (with the sources tried), :class:`~.errors.AmbiguousNameError`,
        :class:`~.errors.AppViewNotConfigured` (no AppView and no publisher)."""
        parsed = name if isinstance(name, Name) else parse_name(name)
        if parsed.is_uri:
            at = AtUri.parse(str(parsed.uri))
            return Resolved(
                parsed, str(parsed.uri), "schema", at.authority, "uri", match="uri"
            )
        did = self._publisher_did(parsed)
        failure: BaseException | None = None
        if self.appview is not None:
            try:
                found = self._schema_appview(parsed, did)
                if found is not None:
                    return found
            except (AmbiguousNameError, NameMismatchError):
                raise
            except (AppViewError, NetworkError) as exc:
                if not _unavailable(exc) or did is None or not self.fallback:
                    raise
                failure = exc
        tried = [self._appview_note(failure)]
        if did is None or not self.fallback:
            raise (
                self._no_appview(parsed, "schema record")
                if self.appview is None
                else NameNotFoundError(
                    clean_text(parsed.text, 200), "no schema record found", tried=tried
                )
            )
        found, note = self._schema_pds(parsed, did)
        tried.append(note)
        if found is not None:
            return dataclasses.replace(found, tried=tuple(tried[:-1]))
        raise NameNotFoundError(
            clean_text(parsed.text, 200), "no schema record found", tried=tried
        )

    def _schema_appview(self, name: Name, did: str | None) -> Resolved | None:
        assert self.appview is not None and name.local is not None
        exact = name.exact
        if exact is not None and did is not None:
            try:
                out = self.appview.resolve_schema(did, name.local, exact)
            except AppViewNotFound as exc:
                if exc.error not in (None, "SchemaNotFound", "RepoNotFound"):
                    raise
                return None
            return Resolved(
                name,
                out.uri,
                "schema",
                did,
                "appview",
                version=out.record.version,
                cid=out.cid,
            )
        try:
            history = self.appview.get_schema_history(name.local, repo=did, limit=500)
        except AppViewQueryError as exc:
            if exc.error == "AmbiguousName":
                # several publishers use the name: which of them have a version
                # in the range (listSchemas pages), one is not ambiguous
                return self._schema_listing(name, did)
            if exc.error in ("SchemaNotFound", "RepoNotFound"):
                return None
            if exc.status not in (400, 404, 501):
                raise
            # an AppView without getSchemaHistory (atdata-app 0.4)
            return self._schema_listing(name, did)
        versions = [v for v in history.versions if v.name == name.local]
        if did is not None:
            versions = [v for v in versions if v.did == did]
        chosen = name.pick(versions, lambda v: v.version)
        if chosen is None:
            return None
        return Resolved(
            name,
            chosen.uri,
            "schema",
            chosen.did,
            "appview",
            version=chosen.version,
            cid=chosen.cid,
        )

    def _schema_listing(self, name: Name, did: str | None) -> Resolved | None:
        """The schema a name names, from ``listSchemas`` pages (at most
        :data:`MAX_APPVIEW_PAGES`): the highest version in the range of the one
        publisher that has one (several: :class:`~.errors.AmbiguousNameError`)."""
        assert self.appview is not None
        views = [
            v
            for v in self.appview.iter_schemas(repo=did, max_pages=MAX_APPVIEW_PAGES)
            if v.name == name.local
            and (did is None or v.did == did)
            and name.matches_version(v.version)
        ]
        best: dict[str, Any] = {}
        for v in views:
            best[v.did] = name.pick(
                [v, *([best[v.did]] if v.did in best else [])], lambda x: x.version
            )
        if len(best) > 1:
            shown = sorted(
                clean_text(name.qualified(v.handle or v.did, v.version), 300)
                for v in best.values()
            )
            raise AmbiguousNameError(
                clean_text(name.text, 200),
                shown[:MAX_CANDIDATES_SHOWN],
                more=len(shown) > MAX_CANDIDATES_SHOWN,
            )
        if not best:
            return None
        chosen = next(iter(best.values()))
        return Resolved(
            name,
            chosen.uri,
            "schema",
            chosen.did,
            "appview",
            version=chosen.version,
            cid=chosen.cid,
        )

    def _schema_pds(self, name: Name, did: str) -> tuple[Resolved | None, str]:
        records, note = self._list_records(did, SCHEMA)
        candidates = [
            r
            for r in records
            if isinstance(r.get("value"), dict) and r["value"].get("name") == name.local
        ]
        chosen = name.pick(candidates, lambda r: r["value"].get("version"))
        if chosen is None:
            return None, note
        return (
            Resolved(
                name,
                str(chosen["uri"]),
                "schema",
                did,
                "pds",
                version=str(chosen["value"].get("version")),
                cid=chosen.get("cid") if isinstance(chosen.get("cid"), str) else None,
            ),
            note,
        )

    # -- datasets -------------------------------------------------------------
    def resolve_dataset(self, name: str | Name) -> Resolved:
        """The dataset entry a name names (module docstring). Raises as
        :meth:`resolve_schema`."""
        parsed = name if isinstance(name, Name) else parse_name(name)
        if parsed.is_uri:
            at = AtUri.parse(str(parsed.uri))
            return Resolved(
                parsed, str(parsed.uri), "entry", at.authority, "uri", match="uri"
            )
        did = self._publisher_did(parsed)
        failure: BaseException | None = None
        if self.appview is not None:
            try:
                found = self._dataset_appview(parsed, did)
                if found is not None:
                    return found
            except (AmbiguousNameError, NameMismatchError):
                raise
            except (AppViewError, NetworkError) as exc:
                if not _unavailable(exc) or did is None or not self.fallback:
                    raise
                failure = exc
        tried = [self._appview_note(failure)]
        if did is None or not self.fallback:
            raise (
                self._no_appview(parsed, "dataset")
                if self.appview is None
                else NameNotFoundError(
                    clean_text(parsed.text, 200),
                    "no label or dataset entry found",
                    tried=tried,
                )
            )
        found, notes = self._dataset_pds(parsed, did)
        if found is not None:
            return dataclasses.replace(found, tried=tuple(tried))
        raise NameNotFoundError(
            clean_text(parsed.text, 200),
            "no label or dataset entry found",
            tried=[*tried, *notes],
        )

    def _dataset_appview(self, name: Name, did: str | None) -> Resolved | None:
        assert self.appview is not None and name.local is not None
        if did is not None:
            label = self._label_appview(name, did)
            if label is not None:
                return label
        by_name = [
            self._from_view(v)
            for v in self.appview.iter_search_datasets(
                name.local, repo=did, limit=100, max_pages=MAX_APPVIEW_PAGES
            )
            if v.name == name.local
        ]
        chosen = self._choose(name, did, by_name, "name", "appview")
        if chosen is not None:
            return chosen
        by_schema = [
            self._from_view(v)
            for v in self.appview.iter_search_datasets(
                None,
                schema=name.local,
                repo=did,
                limit=100,
                max_pages=MAX_APPVIEW_PAGES,
            )
            if v.schema_name == name.local
        ]
        return self._choose(name, did, by_schema, "schema", "appview")

    def _label_appview(self, name: Name, did: str) -> Resolved | None:
        assert self.appview is not None and name.local is not None
        try:
            out = self.appview.resolve_label(did, name.local, name.exact)
        except AppViewNotFound as exc:
            if exc.error not in (None, "LabelNotFound", "RepoNotFound"):
                raise
            return None
        version = out.label.version
        if (
            name.range is not None
            and name.exact is None
            and not name.range.matches(version or "")
        ):
            return None  # the newest label is outside the range: try entries
        try:
            authority = AtUri.parse(out.uri).authority
        except ValueError:
            return None
        if authority != did:
            raise NameMismatchError(
                clean_text(name.text, 200),
                f"the label names {out.uri}, an entry in another repository; load "
                "it by its AT-URI if that is intended",
            )
        listed, note = self._list_records(did, LABEL)
        verified, notes = self._verified_label(listed, name, did, out.uri, version)
        if verified is None:
            raise NameMismatchError(
                clean_text(name.text, 200),
                f"the AppView's label {clean_text(name.local, 100)}"
                f"@{clean_text(str(version), 50)} -> {clean_text(out.uri, 300)} is "
                f"not a label record of {did} as its repository proves it "
                f"({'; '.join([note, *notes])}); the index is wrong or hostile, "
                "nothing is used",
            )
        return Resolved(
            name,
            out.uri,
            "label",
            did,
            "appview",
            version=version,
            cid=None,
            match="label",
            label_uri=verified.uri,
            label=verified.value,
        )

    def _verified_label(
        self,
        listed: list[dict[str, Any]],
        name: Name,
        did: str,
        dataset_uri: str | None,
        version: str | None,
    ) -> tuple[FetchedRecord | None, list[str]]:
        """The newest label record of ``listed`` (a ``listRecords`` listing of
        ``did``'s labels) that fits (:func:`_label_fits`), read with
        ``com.atproto.sync.getRecord`` and verified by the repository, whose
        verified value still fits; at most :data:`MAX_LABEL_CHECKS` read. Returns
        it (or ``None``) and notes on the candidates refused."""
        fitting = [
            r
            for r in listed
            if isinstance(r.get("value"), dict)
            and _label_fits(name, r["value"], dataset_uri, version)
        ]
        fitting.sort(
            key=lambda r: (_created(r["value"].get("createdAt")), str(r.get("uri"))),
            reverse=True,
        )
        notes: list[str] = []
        if not fitting:
            notes.append(f"no label of that name in {did}'s listing fits")
        reader = AtmosphereClient(
            resolver=self.resolver,
            timeout=self.timeout,
            retry=RetryPolicy(attempts=2, deadline=self.timeout),
        )
        for r in fitting[:MAX_LABEL_CHECKS]:
            uri = str(r.get("uri"))
            try:
                record = reader.try_get_record(uri, validate=True)
            except (NetworkError, ValueError) as exc:
                notes.append(f"label {uri}: {clean_text(str(exc), 300)}")
                continue
            if record is None:
                notes.append(f"label {uri}: not in the repository")
                continue
            if AtUri.parse(record.uri).authority == did and _label_fits(
                name, record.value, dataset_uri, version
            ):
                return record, notes
            notes.append(f"label {uri}: the verified record is not the listed one")
        return None, notes

    @staticmethod
    def _from_view(v: Any) -> _Entry:
        return _Entry(
            uri=v.uri,
            did=v.did,
            handle=v.handle,
            name=v.name,
            schema_ref=v.schema_ref,
            schema_name=v.schema_name,
            schema_version=v.schema_version,
            created=_created(v.created_at),
        )

    def _schema_version(self, ref: str, cache: dict[str, str | None]) -> str | None:
        """The version of the schema record ``ref``, asked of the AppView
        (``getSchema``), at most :data:`MAX_SCHEMA_LOOKUPS` lookups."""
        if ref in cache:
            return cache[ref]
        if self.appview is None or len(cache) >= MAX_SCHEMA_LOOKUPS:
            return None
        try:
            cache[ref] = self.appview.get_schema(ref).version
        except AppViewNotFound:
            cache[ref] = None
        return cache[ref]

    def _choose(
        self,
        name: Name,
        did: str | None,
        entries: list[_Entry],
        match: Literal["name", "schema"],
        via: Literal["appview", "pds"],
        versions: Callable[[_Entry], str | None] | None = None,
    ) -> Resolved | None:
        if did is not None:
            entries = [e for e in entries if e.did == did]
        if name.range is not None:
            cache: dict[str, str | None] = {}

            def version_of(e: _Entry) -> str | None:
                if e.schema_version is not None:
                    return e.schema_version
                if versions is not None:
                    return versions(e)
                return self._schema_version(e.schema_ref, cache)

            for e in entries:
                e.schema_version = version_of(e)
            entries = [e for e in entries if name.range.matches(e.schema_version or "")]
        if not entries:
            return None
        publishers: dict[str, _Entry] = {}
        for e in entries:  # the newest of each publisher
            if e.did not in publishers or (e.created, e.uri) > (
                publishers[e.did].created,
                publishers[e.did].uri,
            ):
                publishers[e.did] = e
        if len(publishers) > 1:
            shown = sorted(
                name.qualified(e.handle or e.did) + f" ({e.uri})"
                for e in publishers.values()
            )
            raise AmbiguousNameError(
                clean_text(name.text, 200),
                [clean_text(s, 300) for s in shown[:MAX_CANDIDATES_SHOWN]],
                more=len(shown) > MAX_CANDIDATES_SHOWN,
            )
        newest = max(entries, key=lambda e: (e.created, e.uri))
        return Resolved(
            name,
            newest.uri,
            "entry",
            newest.did,
            via,
            version=newest.schema_version,
            match=match,
        )

    def _dataset_pds(self, name: Name, did: str) -> tuple[Resolved | None, list[str]]:
        notes: list[str] = []
        labels, note = self._list_records(did, LABEL)
        notes.append(note)
        verified, refused = (
            self._verified_label(labels, name, did, None, None)
            if labels
            else (None, [])
        )
        notes.extend(refused)
        if verified is not None:
            best = verified.value
            target = str(best.get("datasetUri"))
            try:
                authority = AtUri.parse(target).authority
            except ValueError:
                authority = ""
            if authority == did:
                return (
                    Resolved(
                        name,
                        target,
                        "label",
                        did,
                        "pds",
                        version=best.get("version")
                        if isinstance(best.get("version"), str)
                        else None,
                        match="label",
                        label_uri=verified.uri,
                        label=best,
                    ),
                    notes,
                )
            notes.append(
                f"the label names {clean_text(target, 200)}, in another repository (ignored)"
            )
        raw, note = self._list_records(did, ENTRY)
        notes.append(note)
        entries = [
            _Entry(
                uri=str(r["uri"]),
                did=did,
                handle=None,
                name=str(r["value"].get("name")),
                schema_ref=str(r["value"].get("schemaRef")),
                schema_name=None,
                schema_version=None,
                created=_created(r["value"].get("createdAt")),
            )
            for r in raw
            if isinstance(r.get("value"), dict)
        ]
        schemas: dict[str, tuple[str | None, str | None]] | None = None
        looked_up = 0

        def schema_info(ref: str) -> tuple[str | None, str | None]:
            nonlocal schemas, looked_up
            if schemas is None:
                listed, note = self._list_records(did, SCHEMA)
                notes.append(note)
                schemas = {}
                for r in listed:
                    if isinstance(r.get("value"), dict):
                        schemas[str(r.get("uri"))] = _name_version(r["value"])
            if ref not in schemas and looked_up < MAX_SCHEMA_LOOKUPS:
                # a schema in another repository (or named by a handle): read it
                looked_up += 1
                schemas[ref] = self._foreign_schema(ref)
            return schemas.get(ref, (None, None))

        by_name = [e for e in entries if e.name == name.local]
        chosen = self._choose(
            name,
            did,
            by_name,
            "name",
            "pds",
            versions=lambda e: schema_info(e.schema_ref)[1],
        )
        if chosen is not None:
            return chosen, notes
        by_schema = []
        for e in entries:
            schema_name, version = schema_info(e.schema_ref)
            if schema_name == name.local:
                e.schema_name, e.schema_version = schema_name, version
                by_schema.append(e)
        return self._choose(name, did, by_schema, "schema", "pds"), notes

    # -- the PDS --------------------------------------------------------------
    def _foreign_schema(self, ref: str) -> tuple[str | None, str | None]:
        """``(name, version)`` of the schema record ``ref`` read, verified, from
        its owner's repository; ``(None, None)`` when it cannot be read."""
        try:
            record = AtmosphereClient(
                resolver=self.resolver,
                timeout=self.timeout,
                retry=RetryPolicy(attempts=2, deadline=self.timeout),
            ).try_get_record(ref, validate=False)
        except (NetworkError, ValueError):
            return None, None
        return _name_version(record.value) if record is not None else (None, None)

    def _list_records(
        self, did: str, collection: str
    ) -> tuple[list[dict[str, Any]], str]:
        """Records of ``collection`` in ``did``'s repository as its PDS lists them
        (``com.atproto.repo.listRecords``, at most ``max_pds_pages`` pages of 100,
        each at most 8 MiB within ``timeout`` seconds), and a note for errors
        saying what was asked. The listing is only where to look: the record used
        is then read verified from the repository."""
        try:
            pds = self.resolver.resolve(did).pds
        except NetworkError as exc:  # IdentityError, or the lookup kept failing
            return [], f"PDS of {did} (unresolved: {clean_text(str(exc), 200)})"
        where = f"PDS {redact_url(pds)} listRecords {collection} of {did}"
        records: list[dict[str, Any]] = []
        cursor: str | None = None
        seen: set[str] = set()
        pages = 0
        for pages in range(1, self.max_pds_pages + 1):
            params = {"repo": did, "collection": collection, "limit": "100"}
            if cursor:
                params["cursor"] = cursor
            url = f"{pds}/xrpc/com.atproto.repo.listRecords?" + urllib.parse.urlencode(
                params
            )
            try:
                answer = fetch(
                    url,
                    what="record list",
                    max_bytes=MAX_LIST_BYTES,
                    deadline=self.timeout,
                )
                if answer.status != 200:
                    return records, f"{where} (HTTP {answer.status})"
                data = answer.json()
            except NetworkError as exc:
                return records, f"{where} ({clean_text(str(exc), 300)})"
            items = data.get("records") if isinstance(data, dict) else None
            if not isinstance(items, list):
                return records, f"{where} (malformed answer)"
            for item in items:
                if isinstance(item, dict) and _record_in(
                    item.get("uri"), did, collection
                ):
                    records.append(item)
            cursor = data.get("cursor") if isinstance(data.get("cursor"), str) else None
            if not cursor or not items or cursor in seen:
                return records, f"{where} ({len(records)} records)"
            seen.add(cursor)
        return records, f"{where} ({len(records)} records in {pages} pages, the limit)"


def _label_fits(
    name: Name, value: dict[str, Any], dataset_uri: str | None, version: str | None
) -> bool:
    """Whether a label record ``value`` has NAME, a version in the name's range,
    and (when given) the entry ``dataset_uri`` and the ``version``."""
    if value.get("name") != name.local:
        return False
    if name.range is not None and not name.range.matches(str(value.get("version"))):
        return False
    if version is not None and value.get("version") != version:
        return False
    return dataset_uri is None or value.get("datasetUri") == dataset_uri


def _record_in(uri: object, did: str, collection: str) -> bool:
    try:
        at = AtUri.parse(str(uri))
    except ValueError:
        return False
    return at.authority == did and at.collection == collection


def _name_version(value: dict[str, Any]) -> tuple[str | None, str | None]:
    n, v = value.get("name"), value.get("version")
    return (n if isinstance(n, str) else None, v if isinstance(v, str) else None)


def resolve_schema(name: str, **options: Any) -> Resolved:
    """:meth:`NameResolver.resolve_schema` with a resolver of ``options``."""
    return NameResolver(**options).resolve_schema(name)


def resolve_dataset(name: str, **options: Any) -> Resolved:
    """:meth:`NameResolver.resolve_dataset` with a resolver of ``options``."""
    return NameResolver(**options).resolve_dataset(name)
