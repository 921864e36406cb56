"""The AT Protocol client of the runtime: writes on the ``atproto`` SDK's XRPC
transport, reads through the bounded :func:`atdata_runtime.net.fetch.fetch`.

What it adds to the SDK:

* **Login** with an app password or a saved session (:mod:`.session`, mode 0600),
  refreshed by the SDK and re-saved on every change; no Bluesky profile fetch (a
  bare PDS has no AppView). Passwords and tokens are :class:`~.session.Secret`\\ s
  and never appear in reprs, logs or errors.
* **Reads go to the owner's PDS**: the AT-URI authority is resolved
  (:class:`~.identity.IdentityResolver`) and the request is sent to the PDS of its
  DID document (a URL from the network: https only), or, for the logged-in
  account's own repository, to the client's ``pds_url``. Each attempt is bounded
  in size (proof CAR 2 MiB, record 2 MiB, list page 8 MiB, blob 64 MiB) and in
  total time (``timeout``); error messages carry the status and XRPC error name,
  never a response body.
* **Every record fetched is verified by its repository** (``verify="repo"``, the
  default): it is read with ``com.atproto.sync.getRecord``, whose CAR proof is
  checked by :func:`~.repo.verify_record_proof` — every block against its CID, the
  commit's signature against the ``#atproto`` key of the DID document, the MST path
  from the signed commit to ``{collection}/{rkey}`` — so a server can serve only
  what the repository's key signed (AT Protocol "Repository" and "Cryptography"
  specs). Failures are :class:`~.errors.RecordVerificationError` with a ``REPO_*``
  rule naming the AT-URI. Then the record is validated with the generated
  ``science.alt.dataset.*`` models. Blobs are checked against their CID (raw
  codec, sha-256).
* **Opt-out**: ``verify="server-cid"`` (or ``False``) reads with plain
  ``com.atproto.repo.getRecord`` and only checks that the record hashes to the CID
  *the same server* returned, which proves nothing about who wrote it; a warning is
  logged once per client. ``atdata-gen pull --unverified-reads`` is the CLI form.
* **Retries** (:class:`~.retry.RetryPolicy`) on every call, and **exactly-once
  writes**: :meth:`AtmosphereClient.create_record` takes the record key from the
  caller; when a retried ``createRecord`` finds the key taken, it reads the record
  back and succeeds if it is the same record (same CID), so a lost response never
  produces a second record and never an error.
  :meth:`AtmosphereClient.create_records` does the same for many records in
  ``com.atproto.repo.applyWrites`` batches (one commit each, at most 200 writes and
  1,000,000 bytes): before re-sending a batch whose outcome is unknown it reads
  every pending key back and sends only the keys still empty; a key holding another
  record is a :class:`~.errors.PublishConflictError` naming its AT-URI.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from os import PathLike
from typing import Any, Literal

from ..net.errors import DeadlineExceededError, HttpStatusError, NetworkError
from ..net.fetch import MAX_LIST_BYTES, MAX_RECORD_BYTES, Fetched, fetch
from ..net.retry import RetryPolicy
from .cid import DataModelError, blob_cid, record_cid
from .errors import (
    AuthError,
    BlobVerificationError,
    PublishConflictError,
    RecordNotFoundError,
    RecordVerificationError,
)
from .identity import DidDocument, IdentityResolver
from .records import AtUri, validate_record
from .repo import MAX_CAR_BYTES, VerifiedRecord, signing_key, verify_record_proof
from .session import SavedSession, Secret, SessionStore, default_session_path

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_WRITES",
    "AtmosphereClient",
    "FetchedRecord",
    "VerifyMode",
    "WriteResult",
]

log = logging.getLogger("atdata_runtime.atmosphere")

_JSON = "application/json"

VerifyMode = Literal["repo", "server-cid"]
"""How reads are verified: ``"repo"`` (repository proof, the default) or
``"server-cid"`` (the record hashes to the CID its server returned; an opt-out)."""

MAX_BLOB_BYTES = 64 * 1024 * 1024
"""Default cap of :meth:`AtmosphereClient.get_blob`, bytes (64 MiB; blobs read
whole into memory; shards stream through :mod:`atdata_runtime.shards` instead)."""

MAX_LIST_PAGES = 10_000
"""Pages of ``listRecords`` followed at most (1,000,000 records at 100 a page)."""

_XRPC_ERROR_MAX = 4096
"""Bytes of an XRPC error body read for its ``error`` name (never shown whole)."""


@dataclass(frozen=True)
class FetchedRecord:
    """A record read from a repository: ``uri`` (DID authority), ``cid`` (verified)
    and ``value`` (the JSON form, validated). ``verified`` says how: ``"repo"``
    (proven by the repository's signed commit, whose revision is ``rev``) or
    ``"server-cid"`` (only checked against the CID its server returned)."""

    uri: str
    cid: str
    value: dict[str, Any]
    verified: VerifyMode = "repo"
    rev: str | None = None


@dataclass(frozen=True)
class WriteResult:
    """Outcome of an exactly-once write: ``created`` is ``False`` when the same
    record was already there (a retry or a re-run), which is not an error."""

    uri: str
    cid: str
    created: bool


MAX_BATCH_WRITES = 200
"""Writes in one ``com.atproto.repo.applyWrites`` call at most (the reference PDS,
``@atproto/pds`` ``api/com/atproto/repo/applyWrites``: "Too many writes. Max: 200")."""

MAX_BATCH_BYTES = 1_000_000
"""JSON body bytes of one ``applyWrites`` call at most (the reference PDS's
``jsonLimit`` for that method)."""

_READ_BACK_WORKERS = 8
"""Keys of a batch read back at once before a retry (requests to the account's own
PDS)."""

_BATCH_OVERHEAD = 256
"""Bytes of an ``applyWrites`` body around its writes (repo DID, flags), counted
generously."""


@dataclass(frozen=True)
class _Write:
    """One create of :meth:`AtmosphereClient.create_records`: its AT-URI, key, the
    record's CID and its JSON-encoded ``#create`` operation."""

    uri: str
    rkey: str
    cid: str
    op: bytes


def _sdk_client(base_url: str, timeout: float) -> Any:
    from atproto_client import Client
    from atproto_client.request import Request

    return Client(base_url=base_url, request=Request(timeout=timeout))


def _xrpc_error(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    content = getattr(response, "content", None)
    return getattr(content, "error", None) or (
        content.get("error") if isinstance(content, dict) else None
    )


class _AttemptTimedOut(DeadlineExceededError):
    """One attempt of a read ran out of its ``timeout``: a
    :class:`DeadlineExceededError` (same rule, ``what`` and ``limit``) that the
    retry policy retries (``retryable``), unlike a request's own deadline."""

    retryable = True


def _error_name(body: bytes) -> str | None:
    """The ``error`` name of an XRPC error body (an identifier of at most 64
    characters), never anything else from the body."""
    if len(body) > _XRPC_ERROR_MAX:
        return None
    try:
        name = json.loads(body).get("error")
    except (ValueError, AttributeError, RecursionError):
        return None
    if (
        isinstance(name, str)
        and 0 < len(name) <= 64
        and name.isascii()
        and name.isalnum()
    ):
        return name
    return None


def _xrpc_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    content = getattr(response, "content", None)
    msg = getattr(content, "message", None) or (
        content.get("message") if isinstance(content, dict) else None
    )
    return str(msg or _xrpc_error(exc) or exc)


class AtmosphereClient:
    """A client for one PDS account (after :meth:`login`) that can also read any
    repository on the network.

    ``resolver`` resolves identities (default: the public PLC directory);
    ``retry`` is the retry policy of every request; ``timeout`` is the per-request
    timeout in seconds (blob uploads get 30 s + 1 s per MB on top; a record proof
    read has it as its total deadline, retries included).

    ``verify`` (default ``"repo"``) is how reads are verified (see the module
    docstring); ``False`` or ``"server-cid"`` opts out, with a warning logged once
    per client; ``True`` is ``"repo"``. ``max_car_bytes`` caps one record proof
    (default :data:`~.repo.MAX_CAR_BYTES`, 2 MiB).
    """

    def __init__(
        self,
        *,
        pds_url: str | None = None,
        resolver: IdentityResolver | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        verify: VerifyMode | bool = "repo",
        max_car_bytes: int = MAX_CAR_BYTES,
    ) -> None:
        if verify is True:
            verify = "repo"
        elif verify is False:
            verify = "server-cid"
        if verify not in ("repo", "server-cid"):
            raise ValueError(f"verify must be 'repo' or 'server-cid', not {verify!r}")
        self.verify: VerifyMode = verify
        self.max_car_bytes = max_car_bytes
        if verify == "server-cid":
            log.warning(
                "reads are not repository-verified (verify=%r): a record is only "
                "checked against the CID its own server returns, so a hostile or "
                "impersonating server can serve any record",
                verify,
            )
        self.resolver = resolver or IdentityResolver()
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.pds_url = pds_url.rstrip("/") if pds_url else None
        self._pds_trusted = self.pds_url is not None
        self._sdk: Any = _sdk_client(self.pds_url, timeout) if self.pds_url else None
        self._store: SessionStore | None = None
        self._did: str | None = None
        self._handle: str | None = None

    def __repr__(self) -> str:
        who = self._handle or self._did or "anonymous"
        return f"AtmosphereClient({who}, pds={self.pds_url!r})"

    # -- login --------------------------------------------------------------------
    @classmethod
    def login(
        cls,
        identifier: str,
        password: str | Secret | None = None,
        *,
        pds_url: str | None = None,
        session_file: str | PathLike[str] | None = None,
        save_session: bool = True,
        resolver: IdentityResolver | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        verify: VerifyMode | bool = "repo",
    ) -> AtmosphereClient:
        """Log in as ``identifier`` (handle or DID). A saved session (``session_file``,
        default :func:`~.session.default_session_path`) is reused when it is for this
        account and still valid (the SDK refreshes it); otherwise ``password`` (an app
        password) creates a new session. The session file is (re)written with mode
        0600 whenever the session changes, unless ``save_session`` is false. The PDS
        is ``pds_url`` or the one named in the account's DID document. ``verify`` as
        in the constructor. Raises :class:`AuthError` when neither works."""
        resolver = resolver or IdentityResolver()
        explicit = pds_url is not None
        if pds_url is None:
            pds_url = resolver.pds_endpoint(identifier)
        client = cls(
            pds_url=pds_url,
            resolver=resolver,
            retry=retry,
            timeout=timeout,
            verify=verify,
        )
        client._pds_trusted = explicit
        path = session_file or default_session_path(identifier, client.pds_url)
        store = SessionStore(path)
        client._store = store if save_session else None
        secret = (
            password
            if isinstance(password, Secret)
            else (Secret(password) if password is not None else None)
        )
        saved = store.load()
        if (
            saved is not None
            and saved.pds == client.pds_url
            and identifier.lower()
            in (
                saved.did,
                saved.handle.lower(),
            )
        ):
            try:
                client._resume(saved)
                return client
            except Exception as exc:  # noqa: BLE001 - fall back to the password
                log.info(
                    "saved session for %s not usable (%s)",
                    identifier,
                    type(exc).__name__,
                )
        if secret is None:
            raise AuthError(
                client.pds_url or "",
                f"no valid saved session for {identifier} and no password",
            )
        client._password_login(identifier, secret)
        return client

    def _watch(self) -> None:
        from atproto_client import SessionEvent

        def changed(event: Any, session: Any) -> None:
            if event in (SessionEvent.CREATE, SessionEvent.REFRESH) and self._store:
                self._save(session)

        self._sdk.on_session_change(changed)

    def _save(self, session: Any) -> None:
        assert self._store is not None and self.pds_url is not None
        self._store.save(
            SavedSession(
                pds=self.pds_url,
                did=session.did,
                handle=session.handle,
                session=Secret(session.encode()),
            )
        )

    def _password_login(self, identifier: str, password: Secret) -> None:
        from atproto_client.exceptions import BadRequestError, UnauthorizedError

        self._watch()
        try:
            self.retry.run(
                lambda: self._sdk.login(
                    identifier, password.reveal(), fetch_bsky_profile=False
                ),
                what=f"{self.pds_url} createSession",
            )
        except (BadRequestError, UnauthorizedError) as exc:
            raise AuthError(
                self.pds_url or "",
                f"login as {identifier} failed: {_xrpc_message(exc)}",
            ) from None
        session = self._sdk._session
        self._did, self._handle = session.did, session.handle

    def _resume(self, saved: SavedSession) -> None:
        self._watch()
        self._sdk.login(session_string=saved.session.reveal(), fetch_bsky_profile=False)
        data = self.retry.run(
            lambda: (
                self._sdk.invoke_query(
                    "com.atproto.server.getSession", output_encoding=_JSON
                ).content
            ),
            what=f"{self.pds_url} getSession",
        )
        if data.get("did") != saved.did:
            raise AuthError(self.pds_url or "", "saved session is for another account")
        self._did, self._handle = saved.did, str(data.get("handle", saved.handle))

    def logout(self) -> None:
        """Forget the session (delete the session file)."""
        if self._store is not None:
            self._store.clear()
        self._did = self._handle = None

    @property
    def did(self) -> str:
        """DID of the logged-in account; ``AuthError`` when not logged in."""
        if self._did is None:
            raise AuthError(self.pds_url or "", "not logged in")
        return self._did

    @property
    def handle(self) -> str:
        if self._handle is None:
            raise AuthError(self.pds_url or "", "not logged in")
        return self._handle

    # -- reads --------------------------------------------------------------------
    def _where(self, authority: str) -> tuple[DidDocument, str, bool]:
        """(DID document, PDS URL to ask, whether that URL is trusted) for the
        repository of ``authority``: the logged-in account's own repository is read
        from the client's ``pds_url``, any other from its DID document's PDS (a URL
        from the network: https only, see :func:`~atdata_runtime.net.fetch.fetch`)."""
        doc = self.resolver.resolve(authority)
        pds = self.pds_url if doc.did == self._did and self.pds_url else doc.pds
        return doc, pds, self._pds_trusted and pds == self.pds_url

    def _xrpc(
        self,
        pds: str,
        trusted: bool,
        nsid: str,
        params: dict[str, str],
        *,
        uri: str,
        what: str,
        max_bytes: int,
        deadline: float | None = None,
    ) -> Fetched | None:
        """One bounded XRPC query: each attempt is one :func:`~atdata_runtime.net.
        fetch.fetch` of at most ``max_bytes`` with a total deadline of ``timeout``
        seconds; attempts that fail to connect, run out of time, or get a 5xx or
        429 are retried by ``retry`` (its attempts and deadline). ``None`` for a
        ``RecordNotFound`` answer. Another error status is a ``XRPC_ERROR``
        :class:`~.errors.AtmosphereError` naming ``uri``, the status and the XRPC
        error name, never the body."""

        def attempt() -> Fetched:
            try:
                got = fetch(
                    f"{pds}/xrpc/{nsid}",
                    what=what,
                    max_bytes=max_bytes,
                    deadline=deadline or self.timeout,
                    params=params,
                    trusted=trusted,
                )
            except DeadlineExceededError as exc:
                raise _AttemptTimedOut(
                    exc.uri, exc.reason, what=exc.what, limit=exc.limit
                ) from exc
            if got.status == 429 or got.status >= 500:
                raise HttpStatusError(uri, f"{nsid}: HTTP {got.status}", response=got)
            return got

        answer = self.retry.run(attempt, what=uri)
        if answer.status == 200:
            return answer
        error = _error_name(answer.content)
        if answer.status in (400, 404) and error == "RecordNotFound":
            return None
        raise NetworkError(
            uri,
            f"{nsid} answered HTTP {answer.status}" + (f" {error}" if error else ""),
            rule="XRPC_ERROR",
        )

    def _server_cid_checked(
        self, uri: str, collection: str, cid: Any, value: Any, validate: bool
    ) -> FetchedRecord:
        """The opt-out check: ``value`` hashes to the ``cid`` its server returned."""
        if not isinstance(cid, str) or not isinstance(value, dict):
            raise RecordVerificationError(
                uri, "response carries no CID or no record value", rule="RECORD_NO_CID"
            )
        try:
            actual = record_cid(value)
        except DataModelError as exc:
            raise RecordVerificationError(
                uri, f"record is not in the data model: {exc}", rule="RECORD_DATA_MODEL"
            ) from None
        if actual != cid:
            raise RecordVerificationError(
                uri, f"record content hashes to {actual}, server says {cid}"
            )
        if validate:
            validate_record(uri, collection, value)
        return FetchedRecord(uri=uri, cid=cid, value=value, verified="server-cid")

    def _proven(self, at: AtUri, validate: bool) -> FetchedRecord | None:
        """Read ``at`` with ``com.atproto.sync.getRecord`` and verify the proof
        (:func:`~.repo.verify_record_proof`) against the ``#atproto`` key of the
        authority's DID document; ``None`` when the proof shows it absent or the
        server answers ``RecordNotFound``."""
        doc, pds, trusted = self._where(at.authority)
        at = at.with_authority(doc.did)
        uri = str(at)
        key = signing_key(doc.doc, doc.did, uri=uri)
        answer = self._xrpc(
            pds,
            trusted,
            "com.atproto.sync.getRecord",
            {"did": doc.did, "collection": at.collection, "rkey": at.rkey},
            uri=uri,
            what="record proof (CAR)",
            max_bytes=self.max_car_bytes,
        )
        if answer is None:
            return None

        def verify(key: str) -> VerifiedRecord | None:
            return verify_record_proof(
                answer.content,
                did=doc.did,
                collection=at.collection,
                rkey=at.rkey,
                key=key,
                uri=uri,
                max_bytes=self.max_car_bytes,
            )

        try:
            proven = verify(key)
        except RecordVerificationError as exc:
            # The cached DID document may predate a key rotation: check once more
            # against a freshly fetched one, and only if its key differs.
            if exc.rule != "REPO_BAD_SIGNATURE":
                raise
            self.resolver.forget(doc.did)
            fresh = signing_key(
                self.resolver.did_document(doc.did).doc, doc.did, uri=uri
            )
            if fresh == key:
                raise
            proven = verify(fresh)
        if proven is None:
            return None
        if validate:
            validate_record(uri, at.collection, proven.value)
        return FetchedRecord(
            uri=uri, cid=proven.cid, value=proven.value, verified="repo", rev=proven.rev
        )

    def try_get_record(
        self, uri: str | AtUri, *, validate: bool = True
    ) -> FetchedRecord | None:
        """The record at ``uri`` from its owner's PDS, verified and validated, or
        ``None`` when it does not exist (the signed tree proves it absent, or the
        server answers ``RecordNotFound``).

        By default (``verify="repo"``) the record is proven by its repository
        (``com.atproto.sync.getRecord``; see :mod:`.repo` for the checks, their
        ``REPO_*`` rules and the limits: CAR at most ``max_car_bytes``, default
        2 MiB); with ``verify="server-cid"`` it is read with
        ``com.atproto.repo.getRecord`` and only checked against the server's CID.
        Raises :class:`RecordVerificationError` /
        :class:`~.errors.RecordValidationError` naming the AT-URI, or a
        :class:`~.errors.AtmosphereError` for transport failures."""
        at = uri if isinstance(uri, AtUri) else AtUri.parse(uri)
        if self.verify == "repo":
            return self._proven(at, validate)
        return self._server_record(at, validate)

    def _server_record(self, at: AtUri, validate: bool) -> FetchedRecord | None:
        doc, pds, trusted = self._where(at.authority)
        at = at.with_authority(doc.did)
        answer = self._xrpc(
            pds,
            trusted,
            "com.atproto.repo.getRecord",
            {"repo": doc.did, "collection": at.collection, "rkey": at.rkey},
            uri=str(at),
            what="record",
            max_bytes=MAX_RECORD_BYTES,
        )
        if answer is None:
            return None
        data = answer.json()
        if not isinstance(data, dict):
            raise RecordVerificationError(
                str(at), "getRecord answer is not an object", rule="XRPC_MALFORMED"
            )
        return self._server_cid_checked(
            str(at), at.collection, data.get("cid"), data.get("value"), validate
        )

    def get_record(self, uri: str | AtUri, *, validate: bool = True) -> FetchedRecord:
        """As :meth:`try_get_record`; a missing record is :class:`RecordNotFoundError`."""
        record = self.try_get_record(uri, validate=validate)
        if record is None:
            raise RecordNotFoundError(str(uri), "record not found")
        return record

    def list_records(
        self, repo: str, collection: str, *, validate: bool = True, page: int = 100
    ) -> Iterator[FetchedRecord]:
        """Every record of ``collection`` in ``repo`` (DID or handle); pages through
        ``com.atproto.repo.listRecords``.

        With ``verify="repo"`` (the default) each listed record is then read and
        proven by its repository like :meth:`try_get_record` (one
        ``sync.getRecord`` per record): what is yielded is what the repository
        signed, and a record deleted since the listing is skipped. Which records
        the listing names, and whether it names them all, remains the server's word
        (only a whole-repository export, ``sync.getRepo``, could prove
        completeness). With ``verify="server-cid"`` each record is only checked
        against the CID in the listing.

        Limits: a page is at most :data:`~atdata_runtime.net.fetch.MAX_LIST_BYTES`
        (8 MiB), at most :data:`MAX_LIST_PAGES` pages (10,000) are followed, and a
        cursor seen before ends the listing with an ``XRPC_MALFORMED``
        :class:`RecordVerificationError`, as does a malformed page."""
        doc, pds, trusted = self._where(repo)
        did = doc.did
        where = f"at://{did}/{collection}"
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_LIST_PAGES):
            params = {"repo": did, "collection": collection, "limit": str(page)}
            if cursor is not None:
                params["cursor"] = cursor
            answer = self._xrpc(
                pds,
                trusted,
                "com.atproto.repo.listRecords",
                params,
                uri=where,
                what="record list",
                max_bytes=MAX_LIST_BYTES,
            )
            data = answer.json() if answer is not None else {}
            if not isinstance(data, dict) or not isinstance(
                data.get("records", []), list
            ):
                raise RecordVerificationError(
                    where, "listRecords answer is malformed", rule="XRPC_MALFORMED"
                )
            for item in data.get("records") or []:
                if self.verify == "server-cid":
                    if not isinstance(item, dict):
                        raise RecordVerificationError(
                            where, "malformed list item", rule="XRPC_MALFORMED"
                        )
                    yield self._server_cid_checked(
                        str(item.get("uri")),
                        collection,
                        item.get("cid"),
                        item.get("value"),
                        validate,
                    )
                    continue
                try:
                    at = AtUri.parse(
                        str(item.get("uri") if isinstance(item, dict) else "")
                    )
                except ValueError as exc:
                    raise RecordVerificationError(
                        where,
                        f"listRecords named an invalid record URI: {exc}",
                        rule="LIST_URI_INVALID",
                    ) from None
                if at.collection != collection:
                    raise RecordVerificationError(
                        str(at),
                        f"listRecords of {collection} named another collection",
                        rule="LIST_OTHER_COLLECTION",
                    )
                proven = self._proven(at.with_authority(did), validate)
                if proven is not None:
                    yield proven
            cursor = data.get("cursor")
            if not cursor or not data.get("records"):
                return
            if not isinstance(cursor, str) or cursor in seen:
                raise RecordVerificationError(
                    where,
                    "listRecords returned a cursor it returned before",
                    rule="XRPC_MALFORMED",
                )
            seen.add(cursor)
        raise RecordVerificationError(
            where,
            f"listRecords did not end within {MAX_LIST_PAGES} pages",
            rule="XRPC_MALFORMED",
        )

    # -- writes -------------------------------------------------------------------
    def create_record(
        self,
        collection: str,
        rkey: str,
        record: dict[str, Any],
        *,
        validate: bool = True,
    ) -> WriteResult:
        """Create ``record`` at ``at://{did}/{collection}/{rkey}`` exactly once.

        The record is validated first (our models). If the key is already taken by
        the same record (same CID) — a retry whose first response was lost, or a
        re-run — the result has ``created=False``. If it is taken by a different
        record, :class:`PublishConflictError`. The PDS is asked not to validate
        (it does not know ``science.alt.dataset.*``)."""
        from atproto_client.exceptions import BadRequestError

        did = self.did
        uri = f"at://{did}/{collection}/{rkey}"
        if validate:
            validate_record(uri, collection, record)
        cid = record_cid(record)
        body = json.dumps(
            {
                "repo": did,
                "collection": collection,
                "rkey": rkey,
                "record": record,
                "validate": False,
            },
            ensure_ascii=False,
        ).encode("utf-8")
        attempts = {"n": 0}

        def already_there() -> WriteResult | None:
            existing = self.try_get_record(uri, validate=False)
            if existing is None:
                return None
            if existing.cid != cid:
                raise PublishConflictError(
                    uri,
                    f"a different record already exists here (CID {existing.cid}, "
                    f"ours would be {cid})",
                )
            return WriteResult(uri=uri, cid=cid, created=False)

        def write() -> WriteResult:
            attempts["n"] += 1
            if attempts["n"] > 1:
                # The previous attempt may have been applied with its response lost.
                found = already_there()
                if found is not None:
                    return found
            try:
                data = self._sdk.invoke_procedure(
                    "com.atproto.repo.createRecord",
                    content=body,
                    headers={"Content-Type": _JSON},
                    output_encoding=_JSON,
                ).content
            except BadRequestError as exc:
                if "exist" not in _xrpc_message(exc).lower():
                    raise
                found = already_there()
                if found is None:
                    raise
                return found
            if data.get("cid") != cid:
                raise RecordVerificationError(
                    uri, f"server stored CID {data.get('cid')}, we computed {cid}"
                )
            return WriteResult(uri=uri, cid=cid, created=True)

        return self.retry.run(write, what=uri)

    def create_records(
        self,
        collection: str,
        items: Sequence[tuple[str, dict[str, Any]]],
        *,
        validate: bool = True,
        batch_size: int = MAX_BATCH_WRITES,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> list[WriteResult]:
        """Create each ``(rkey, record)`` of ``items`` at
        ``at://{did}/{collection}/{rkey}`` exactly once, in
        ``com.atproto.repo.applyWrites`` batches; one :class:`WriteResult` per item,
        in order.

        A batch holds at most ``batch_size`` writes (capped at
        :data:`MAX_BATCH_WRITES`, 200: the reference PDS refuses more) and at most
        ``max_batch_bytes`` of JSON body (:data:`MAX_BATCH_BYTES`; the reference
        PDS's ``applyWrites`` body limit is 1,000,000 bytes); a single record larger
        than that goes alone, and the PDS's refusal (HTTP 413) is raised. Keys must
        be distinct. The records are validated first (our models) unless
        ``validate`` is false; the PDS is asked not to validate.

        Exactly once: the keys are the caller's, so a re-sent batch targets the same
        keys, and a batch is one repository commit (all of it lands, or none). When
        an attempt's outcome is unknown (timeout, connection reset, 5xx or 429 —
        which may come after the PDS applied it), each key still pending is read
        back (:meth:`try_get_record`, verified as the client's reads are; 8 at a
        time) before the retry: a key holding our record (same CID) is done with
        ``created=False``, a key holding another record is a
        :class:`PublishConflictError` naming its AT-URI, and only the keys still
        empty are sent again. Creating a key that is already taken fails the whole
        commit on the PDS, so a re-sent batch can never land twice. Retries follow
        ``retry``; a CID in the answer that is not ours is a
        :class:`RecordVerificationError`."""
        did = self.did
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        batch_size = min(batch_size, MAX_BATCH_WRITES)
        writes: list[_Write] = []
        seen: set[str] = set()
        for rkey, record in items:
            uri = f"at://{did}/{collection}/{rkey}"
            if rkey in seen:
                raise ValueError(f"{uri}: the same key twice in one call")
            seen.add(rkey)
            if validate:
                validate_record(uri, collection, record)
            op = json.dumps(
                {
                    "$type": "com.atproto.repo.applyWrites#create",
                    "collection": collection,
                    "rkey": rkey,
                    "value": record,
                },
                ensure_ascii=False,
            ).encode("utf-8")
            writes.append(_Write(uri, rkey, record_cid(record), op))
        results: dict[str, WriteResult] = {}
        batch: list[_Write] = []
        size = _BATCH_OVERHEAD
        for w in writes:
            if batch and (
                len(batch) >= batch_size or size + len(w.op) + 1 > max_batch_bytes
            ):
                results.update(self._apply_creates(did, collection, batch))
                batch, size = [], _BATCH_OVERHEAD
            batch.append(w)
            size += len(w.op) + 1
        if batch:
            results.update(self._apply_creates(did, collection, batch))
        return [results[w.uri] for w in writes]

    def _apply_creates(
        self, did: str, collection: str, batch: list[_Write]
    ) -> dict[str, WriteResult]:
        """One batch of :meth:`create_records`: applyWrites, retried with a
        read-back of every pending key before each re-send."""
        from atproto_client.exceptions import RequestErrorBase

        done: dict[str, WriteResult] = {}
        pending = list(batch)
        # whether the last attempt may have been applied: anything but a 429 (the
        # PDS's rate limiter answers before the handler runs)
        unknown = {"outcome": False}
        what = f"at://{did}/{collection} applyWrites ({len(batch)} records)"

        def read_back() -> None:
            still: list[_Write] = []
            with ThreadPoolExecutor(
                max_workers=min(_READ_BACK_WORKERS, len(pending))
            ) as pool:
                found = list(
                    pool.map(
                        lambda w: self.try_get_record(w.uri, validate=False), pending
                    )
                )
            for w, existing in zip(pending, found, strict=True):
                if existing is None:
                    still.append(w)
                elif existing.cid != w.cid:
                    raise PublishConflictError(
                        w.uri,
                        f"a different record already exists here (CID "
                        f"{existing.cid}, ours would be {w.cid})",
                    )
                else:
                    done[w.uri] = WriteResult(uri=w.uri, cid=w.cid, created=False)
            pending[:] = still

        def retried(exc: BaseException) -> None:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            unknown["outcome"] = unknown["outcome"] or status != 429

        def attempt() -> None:
            if unknown["outcome"]:
                # The previous attempt may have been applied with its answer lost.
                read_back()
                unknown["outcome"] = False
                if not pending:
                    return
            body = b"".join(
                (
                    b'{"repo":',
                    json.dumps(did).encode(),
                    b',"validate":false,"writes":[',
                    b",".join(w.op for w in pending),
                    b"]}",
                )
            )
            try:
                data = self._sdk.invoke_procedure(
                    "com.atproto.repo.applyWrites",
                    content=body,
                    headers={"Content-Type": _JSON},
                    output_encoding=_JSON,
                ).content
            except RequestErrorBase as exc:
                status = getattr(exc.response, "status_code", None)
                if status is None or status >= 500 or status == 429:
                    raise  # retried: the outcome is unknown (a 429 excepted)
                name = _xrpc_error(exc)
                if not (isinstance(name, str) and len(name) <= 64 and name.isalnum()):
                    name = None
                raise NetworkError(
                    what,
                    f"applyWrites answered HTTP {status}"
                    + (f" {name}" if name else ""),
                    rule="XRPC_ERROR",
                ) from None
            answers = data.get("results") if isinstance(data, dict) else None
            if not isinstance(answers, list) or len(answers) != len(pending):
                raise RecordVerificationError(
                    what,
                    "applyWrites answered a malformed result list",
                    rule="XRPC_MALFORMED",
                )
            for w, got in zip(pending, answers, strict=True):
                cid = got.get("cid") if isinstance(got, dict) else None
                if cid != w.cid:
                    raise RecordVerificationError(
                        w.uri, f"server stored CID {cid}, we computed {w.cid}"
                    )
                done[w.uri] = WriteResult(uri=w.uri, cid=w.cid, created=True)
            pending.clear()

        self.retry.run(attempt, what=what, on_retry=retried)
        return done

    def upload_blob(self, data: bytes, mime_type: str) -> dict[str, Any]:
        """Upload ``data`` (``com.atproto.repo.uploadBlob``) and return the blob
        object for a record (``$type: blob``, ``ref.$link``, ``mimeType``, ``size``).
        Idempotent (blobs are content-addressed), so retried freely; the CID the PDS
        returns is checked against our own."""
        expected = blob_cid(data)
        timeout = self.timeout + 30.0 + len(data) / 1e6

        def upload() -> Any:
            return self._sdk.invoke_procedure(
                "com.atproto.repo.uploadBlob",
                content=data,
                headers={"Content-Type": mime_type},
                output_encoding=_JSON,
                timeout=timeout,
            ).content

        blob = self.retry.run(upload, what=f"{self.pds_url} uploadBlob")["blob"]
        link = blob.get("ref", {}).get("$link")
        if link != expected:
            raise BlobVerificationError(
                f"{self.pds_url}",
                f"uploaded blob has CID {link}, content hashes to {expected}",
            )
        return {
            "$type": "blob",
            "ref": {"$link": link},
            "mimeType": blob.get("mimeType", mime_type),
            "size": int(blob.get("size", len(data))),
        }

    def blob_url(self, repo: str, cid: str) -> str:
        """``com.atproto.sync.getBlob`` URL of a blob, on its owner's PDS."""
        doc = self.resolver.resolve(repo)
        pds = self.pds_url if doc.did == self._did and self.pds_url else doc.pds
        return f"{pds}/xrpc/com.atproto.sync.getBlob?did={doc.did}&cid={cid}"

    def get_blob(
        self, repo: str, cid: str, *, max_bytes: int = MAX_BLOB_BYTES
    ) -> bytes:
        """The bytes of a blob (``com.atproto.sync.getBlob`` on its owner's PDS),
        checked against ``cid``. At most ``max_bytes`` are read (default
        :data:`MAX_BLOB_BYTES`, 64 MiB; larger is ``RESPONSE_TOO_LARGE``), each
        attempt within ``timeout`` + 300 s. Raises :class:`BlobVerificationError`
        when the bytes do not hash to ``cid``."""
        doc, pds, trusted = self._where(repo)
        where = f"at://{doc.did}"
        answer = self._xrpc(
            pds,
            trusted,
            "com.atproto.sync.getBlob",
            {"did": doc.did, "cid": cid},
            uri=where,
            what="blob",
            max_bytes=max_bytes,
            deadline=self.timeout + 300.0,
        )
        if answer is None or blob_cid(answer.content) != cid:
            raise BlobVerificationError(where, f"blob content does not hash to {cid}")
        return answer.content
