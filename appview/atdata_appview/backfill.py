"""Backfill: read whole repositories, verified, into the index.

The live index follows the ingestion log from the moment the ingester started;
whatever a repository held before that comes from here. Three steps:

1. **List** the repositories: :func:`list_repos` pages through
   ``com.atproto.sync.listRepos`` on a PDS (every repository it hosts, with its
   ``rev`` and ``active`` flag) or ``com.atproto.sync.listReposByCollection`` on a
   relay (only those with a record in ``collection``; a :class:`Backfiller` asks
   about each of :data:`RELAY_COLLECTIONS`, so publishers of only entries,
   lenses or labels are found too). Both outputs are validated
   with the official Lexicons' generated models
   (:mod:`atdata_ingest.lexicons.com.atproto.sync`).
2. **Read** one repository: :func:`fetch_repo` resolves the DID to its DID
   document (PDS endpoint and ``#atproto`` signing key; PLC directory as
   configured), downloads ``com.atproto.sync.getRepo?did=`` (a CAR of the whole
   repository) from that PDS and verifies it with
   :func:`atdata_runtime.atmosphere.repo.verify_repo`: the hash of every block
   it reads, the commit's signature by the DID document's key, the Merkle Search
   Tree down to every ``science.alt.dataset.*`` key, each record's DAG-CBOR. Only ``science.alt.dataset.*`` records are kept, decoded to
   the JSON data model exactly as the firehose path decodes them (cbrrr's
   ``atjson_mode``), so a backfilled record and a live one compare equal.
3. **Write** it: :class:`Backfiller` runs, per DID, ``indexer.begin_backfill``
   (the repository is ``backfilling``: live log rows for it are buffered in
   ``appview_pending``), :func:`fetch_repo`, then ``indexer.apply_snapshot`` in
   one transaction (the snapshot replaces the repository's records; buffered rows
   newer than its ``rev`` are applied after it, in log order). A failure ends it
   with ``indexer.fail_backfill`` (what was buffered is applied as live rows; the
   repository is ``failed`` with a short error, the attempt counted): also when
   the backfill is cancelled or interrupted (``BF_INTERRUPTED``; marked under
   ``asyncio.shield``), and a backfiller killed outright leaves a lease that
   expires (``indexer.expire_backfills``). The next run retries it (up to
   ``max_attempts``), and repositories already ``synced`` are skipped unless
   ``force``.

   Besides the listing, a run reads the repositories the index **queued**
   (``appview_repos``): ``pending`` ones (an account reactivated after a
   takedown, a ``#sync`` past what was folded, an ingest cursor reset or log
   gap, a snapshot older than the index), ``failed`` ones under
   ``max_attempts`` after a backoff, and abandoned ``backfilling`` ones
   (``run(queued_only=True)`` reads only those; ``atdata-appview run`` does so
   every minute, so they heal without an operator).

Cost, measured on this project's shared 2-core machine with the local PDS, PLC
and PostgreSQL on the same machine (``python -m tests.appview.test_backfill``,
50 repositories of 20 records): 550 to 930 records/s verified and indexed at
concurrency 4 to 8 (the PDS and PostgreSQL take most of the CPU; this process
about 8 ms a repository, verification about 1.5 ms of it).

Everything from the network is bounded: listing pages (``max_pages``), DIDs
(``max_repos``), bytes per page (``max_page_bytes``), seconds per request
(``timeout``) and spent in requests in all (``deadline``); a CAR's bytes
(``max_car_bytes``, 64 MiB) and blocks, its MST depth, the records and decoded
items kept (see :func:`~atdata_runtime.atmosphere.repo.verify_repo`); DID
documents as :class:`~atdata_runtime.atmosphere.identity.IdentityResolver` bounds
them. The listing URL is the user's (trusted); the PDS URL comes from a DID
document (untrusted): ``https`` only, never a loopback or private address, also
after name resolution (each new connection's peer address is checked), same-origin
redirects only. No request carries a credential: there is none to send.

Errors are :class:`BackfillError`: a rule ID from :data:`RULES`, the DID and,
where known, the MST key and CID concerned; no message quotes a response body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

import asyncpg
import httpx
import orjson
from atdata_ingest.lexicons.com.atproto.sync.list_repos import ListReposOutput
from atdata_ingest.lexicons.com.atproto.sync.list_repos_by_collection import (
    ListReposByCollectionOutput,
)
from atdata_runtime.atmosphere.errors import RecordVerificationError
from atdata_runtime.atmosphere.identity import IdentityResolver
from atdata_runtime.atmosphere.repo import (
    MAX_MST_DEPTH,
    MAX_REPO_BLOCKS,
    MAX_REPO_BYTES,
    MAX_REPO_ITEMS,
    MAX_REPO_RECORDS,
    RepoVerificationError,
    signing_key,
    verify_repo,
)
from atdata_runtime.lex.formats import is_did, is_handle, is_nsid
from atdata_runtime.net.errors import (
    NetworkError,
    ResponseTooLargeError,
    UnsafeUrlError,
)
from atdata_runtime.net.fetch import (
    MAX_LIST_BYTES,
    MAX_RECORD_BYTES,
    MAX_REDIRECTS,
    check_url,
    next_hop,
    refuse_address,
    ssl_context,
)
from atdata_runtime.net.redact import redact_url
from atdata_runtime.net.retry import RetryPolicy
from pydantic import ValidationError

__all__ = [
    "DATASET_PREFIX",
    "DEFAULT_COLLECTION",
    "MAX_REREADS",
    "QUEUED_LIMIT",
    "RELAY_COLLECTIONS",
    "RETRY_BASE_SECONDS",
    "RULES",
    "BackfillError",
    "BackfillStats",
    "Backfiller",
    "ListedRepo",
    "RepoOutcome",
    "RepoSnapshot",
    "SnapshotRecord",
    "fetch_repo",
    "handle_claim",
    "list_client",
    "list_repos",
    "repo_client",
]

log = logging.getLogger("atdata_appview.backfill")

DATASET_PREFIX: Final = "science.alt.dataset."
"""MST key prefix of the records a backfill keeps (every ``science.alt.dataset.*``
collection)."""
DEFAULT_COLLECTION: Final = "science.alt.dataset.schema"
"""The collection :func:`list_repos` asks a relay about by default."""
RELAY_COLLECTIONS: Final = (
    "science.alt.dataset.schema",
    "science.alt.dataset.entry",
    "science.alt.dataset.lens",
    "science.alt.dataset.label",
    "science.alt.dataset.lensVerification",
)
"""The collections a :class:`Backfiller` asks a relay about (one
``listReposByCollection`` listing each, DIDs deduplicated): every record
collection the index holds, so a publisher of only entries, lenses or labels
(of someone else's schemas) is found too."""
QUEUED_LIMIT: Final = 10_000
"""Default cap on the queued repositories (``appview_repos``) one run takes."""
RETRY_BASE_SECONDS: Final = 60.0
"""A ``failed`` repository is retried by a queued pass after
``RETRY_BASE_SECONDS * 2 ** (attempts - 1)`` (capped at a day)."""

MAX_LIST_PAGES: Final = 10_000
"""Default cap on listing pages."""
MAX_LIST_REPOS: Final = 1_000_000
"""Default cap on the DIDs one listing yields."""
LIST_PAGE_SIZE: Final = 1000
"""``limit`` asked of each listing page (listRepos allows 1..1000,
listReposByCollection 1..2000)."""
REQUEST_TIMEOUT: Final = 30.0
"""Default seconds for one listing request (connect, headers and body)."""
LIST_DEADLINE: Final = 1800.0
"""Default seconds a whole listing may spend in its requests."""
REPO_TIMEOUT: Final = 120.0
"""Default seconds for one ``getRepo`` download (connect, headers and body)."""
MAX_ERROR_BYTES: Final = 4096
"""Bytes of an XRPC error body read (for its ``error`` name only)."""
MAX_ERROR_TEXT: Final = 300
"""Characters of an error kept in ``appview_repos.error``."""
BACKFILL_LOCK: Final = 0x61766266  # 'avbf'
"""PostgreSQL advisory lock held by a :class:`Backfiller` run: one per database."""

RULES: Final[Mapping[str, str]] = {
    "BF_LIST_FAILED": "a listing request failed: refused URL, connection, HTTP "
    "status (the XRPC error name is given), deadline",
    "BF_LIST_INVALID": "a listing page is not JSON or not the Lexicon's output "
    "(com.atproto.sync.listRepos / listReposByCollection), at a JSON pointer",
    "BF_LIST_LIMIT": "a listing went past a bound: pages, DIDs, bytes of a page, "
    "time spent in requests, or its cursor did not move",
    "BF_IDENTITY": "the DID is not a valid DID, or its DID document cannot be "
    "resolved or names no usable PDS (the resolver's rule is given)",
    "BF_SIGNING_KEY": "the DID document has no usable #atproto signing key",
    "BF_FETCH_FAILED": "com.atproto.sync.getRepo failed: refused URL, connection, "
    "redirect, HTTP status (the XRPC error name is given), deadline",
    "BF_REPO_UNAVAILABLE": "the PDS says the repository is not there: "
    "RepoNotFound, RepoTakendown, RepoSuspended, RepoDeactivated",
    "BF_CAR_TOO_BIG": "the repository CAR is over max_car_bytes",
    "BF_CAR_INVALID": "CAR framing: truncated, bad varint, header not version 1 "
    "with one root, a CID not CIDv1 dag-cbor sha2-256, too many blocks",
    "BF_BLOCK_CID": "a block does not hash (sha2-256) to its CID",
    "BF_COMMIT_INVALID": "the root block is not a v3 repository commit",
    "BF_DID_MISMATCH": "the commit is the commit of another repository",
    "BF_BAD_SIGNATURE": "the commit is not signed by the DID document's #atproto "
    "key (checked again after re-resolving the DID: the key may have rotated)",
    "BF_MST_INVALID": "the Merkle Search Tree: a node missing or malformed, keys "
    "out of order or out of range, wrong layers, too deep",
    "BF_KEY_INVALID": "an MST key is not {NSID}/{record key}",
    "BF_RECORD_INVALID": "a record block is missing or not one canonical "
    "DAG-CBOR map in the JSON data model",
    "BF_REPO_LIMIT": "the repository holds more dataset records or decoded items "
    "than the caps",
    "BF_BUSY": "another backfill holds the database's backfill lock",
    "BF_INDEX_FAILED": "writing the snapshot into the index failed (database "
    "error; the type is given)",
    "BF_INTERRUPTED": "the backfill of the repository was cancelled or "
    "interrupted (shutdown, an outer timeout): what was buffered was applied live",
}
"""Rule ID → summary, for every :class:`BackfillError`."""

_FROM_REPO_RULE: Final = {
    "REPO_CAR_INVALID": "BF_CAR_INVALID",
    "REPO_BLOCK_CID": "BF_BLOCK_CID",
    "REPO_COMMIT_INVALID": "BF_COMMIT_INVALID",
    "REPO_DID_MISMATCH": "BF_DID_MISMATCH",
    "REPO_BAD_SIGNATURE": "BF_BAD_SIGNATURE",
    "REPO_SIGNING_KEY": "BF_SIGNING_KEY",
    "REPO_MST_PROOF": "BF_MST_INVALID",
    "REPO_KEY_INVALID": "BF_KEY_INVALID",
    "REPO_RECORD_INVALID": "BF_RECORD_INVALID",
    "REPO_LIMIT": "BF_REPO_LIMIT",
}
_UNAVAILABLE: Final = frozenset(
    ("RepoNotFound", "RepoTakendown", "RepoSuspended", "RepoDeactivated")
)
_ERROR_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")
_LIST_NSID: Final = {
    "pds": "com.atproto.sync.listRepos",
    "relay": "com.atproto.sync.listReposByCollection",
}

SnapshotRecord: TypeAlias = tuple[str, str, str, dict[str, Any]]
"""One record of a snapshot: ``(collection, rkey, cid, record)`` (record in the
JSON data model)."""


class BackfillError(Exception):
    """A backfill step failed. ``rule`` (a key of :data:`RULES`), ``reason``
    (human text, never a response body), ``did`` (the repository, when the step
    had one), ``key`` (MST key ``{collection}/{rkey}``), ``cid`` (block CID) and
    ``url`` (redacted) where known, ``cause_rule`` (the rule of the runtime error
    behind it, e.g. ``REPO_BLOCK_CID`` or ``DEADLINE_EXCEEDED``).
    ``str()`` is ``"did:plc:… key science.alt.dataset.schema/x cid bafy…: reason
    [BF_…]"``."""

    def __init__(
        self,
        rule: str,
        reason: str,
        *,
        did: str | None = None,
        key: str | None = None,
        cid: str | None = None,
        url: str | None = None,
        cause_rule: str | None = None,
    ) -> None:
        self.rule = rule
        self.reason = reason
        self.did = did
        self.key = key
        self.cid = cid
        self.url = url
        self.cause_rule = cause_rule
        where = " ".join(
            part
            for part in (
                did or "",
                f"key {key}" if key else "",
                f"cid {cid}" if cid else "",
            )
            if part
        )
        super().__init__(
            f"{where}: {reason} [{rule}]" if where else f"{reason} [{rule}]"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (
                self.rule,
                self.reason,
                self.did,
                self.key,
                self.cid,
                self.url,
                self.cause_rule,
            ),
        )


def _rebuild(
    rule: str,
    reason: str,
    did: str | None,
    key: str | None,
    cid: str | None,
    url: str | None,
    cause_rule: str | None,
) -> BackfillError:
    return BackfillError(
        rule, reason, did=did, key=key, cid=cid, url=url, cause_rule=cause_rule
    )


# -- HTTP ---------------------------------------------------------------------------


def list_client() -> httpx.AsyncClient:
    """An HTTP client for listing requests to the configured PDS or relay (a
    trusted URL: environment proxies and CA settings apply). No default headers,
    no auth, redirects followed only by :func:`list_repos` (same origin)."""
    return httpx.AsyncClient(
        follow_redirects=False,
        trust_env=True,
        verify=ssl_context(True),
        limits=httpx.Limits(max_connections=4, max_keepalive_connections=4),
    )


def repo_client(max_connections: int = 32) -> httpx.AsyncClient:
    """An HTTP client for ``getRepo`` downloads from the PDS a DID document names
    (an untrusted URL): no environment (``trust_env=False``: no proxy, no netrc,
    certifi roots only), no auth, no redirects followed by httpx. Use one such
    client only for untrusted requests (:func:`fetch_repo` checks the peer
    address of each connection it opens; a connection opened by another kind of
    request would be reused unchecked)."""
    return httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        verify=ssl_context(False),
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
        ),
    )


@dataclass
class _Response:
    status: int
    body: bytes
    url: str


async def _read_bounded(
    response: httpx.Response, url: str, what: str, max_bytes: int
) -> bytes:
    """The raw body of ``response``, at most ``max_bytes`` (``Content-Length``
    first, then counted). Raises :class:`ResponseTooLargeError`, or
    :class:`NetworkError` (``RESPONSE_FORMAT``) for a compressed body."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise NetworkError(
            redact_url(url),
            f"{what} is {encoding[:40]}-encoded; identity was asked for",
            rule="RESPONSE_FORMAT",
        )
    length = response.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > max_bytes:
        raise ResponseTooLargeError(
            redact_url(url),
            f"{what} is larger than its limit of {max_bytes} bytes "
            f"(Content-Length {int(length)})",
            what=what,
            limit=max_bytes,
        )
    parts: list[bytes] = []
    total = 0
    async for chunk in response.aiter_raw():
        total += len(chunk)
        if total > max_bytes:
            raise ResponseTooLargeError(
                redact_url(url),
                f"{what} is larger than its limit of {max_bytes} bytes "
                f"(more than {max_bytes} received)",
                what=what,
                limit=max_bytes,
            )
        parts.append(chunk)
    return b"".join(parts)


def _peer_check(url: str) -> Callable[[str, Mapping[str, Any]], Awaitable[None]]:
    """An httpx ``trace`` extension (async) that checks the peer address of each
    new TCP connection of a request to an untrusted ``url`` with
    :func:`~atdata_runtime.net.hosts.refuse_address` (loopback, private,
    link-local … refused; names that resolve there included), before anything is
    sent. A connection whose peer address cannot be read is refused too (fail
    closed, ``PEER_UNVERIFIED``). Raises
    :class:`~atdata_runtime.net.errors.UnsafeUrlError`."""

    async def trace(event: str, info: Mapping[str, Any]) -> None:
        if event != "connection.connect_tcp.complete":
            return
        stream = info.get("return_value")
        addr: Any = None
        if stream is not None:
            try:
                addr = stream.get_extra_info("server_addr")
            except Exception:  # noqa: BLE001 - a transport without the info
                addr = None
        rule: str | None = None
        if isinstance(addr, tuple) and addr and isinstance(addr[0], str):
            why = refuse_address(addr[0])
            if why is not None:
                why = f"resolved to {why}"
        else:
            why, rule = "exposes no peer address to check", "PEER_UNVERIFIED"
        if why is None:
            return
        if stream is not None:
            with contextlib.suppress(Exception):
                await stream.aclose()
        raise UnsafeUrlError(
            redact_url(url), f"URL from the network {why}; nothing was sent", rule=rule
        )

    return trace


async def _get(
    client: httpx.AsyncClient,
    url: str,
    params: Mapping[str, str],
    *,
    what: str,
    max_bytes: int,
    error_bytes: int,
    trusted: bool,
) -> _Response:
    """One bounded GET (no timeout here: the caller's). ``max_bytes`` caps a 200
    body, ``error_bytes`` any other. Same-origin redirects only
    (:func:`~atdata_runtime.net.fetch.next_hop`); for an untrusted URL each new
    connection's peer address is checked (:func:`_peer_check`). Raises
    :class:`~atdata_runtime.net.errors.NetworkError` kinds or ``httpx.HTTPError``."""
    current = check_url(url, what=what, trusted=trusted)
    current = check_url(
        current.copy_merge_params(dict(params)), what=what, trusted=trusted
    )
    for hop in range(MAX_REDIRECTS + 1):
        extensions: dict[str, Any] = {}
        if not trusted:
            extensions["trace"] = _peer_check(str(current))
        request = client.build_request(
            "GET",
            current,
            headers={"Accept-Encoding": "identity"},
            extensions=extensions,
        )
        response = await client.send(request, stream=True)
        try:
            target = next_hop(
                current,
                response.status_code,
                response.headers.get("location"),
                what=what,
                hop=hop,
                trusted=trusted,
            )
            if target is not None:
                current = target
                continue
            if response.status_code == 200:
                body = await _read_bounded(response, str(current), what, max_bytes)
            else:
                try:  # only the XRPC error name is read from it
                    body = await _read_bounded(
                        response, str(current), what, error_bytes
                    )
                except NetworkError:
                    body = b""
            return _Response(response.status_code, body, str(current))
        finally:
            await response.aclose()
    raise AssertionError("unreachable: next_hop raises past MAX_REDIRECTS")


def _xrpc_error_name(body: bytes) -> str | None:
    """The ``error`` name of an XRPC error body, when it is a plain identifier."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    name = data.get("error") if isinstance(data, dict) else None
    return name if isinstance(name, str) and _ERROR_NAME.fullmatch(name) else None


def _network_reason(exc: BaseException) -> tuple[str, str | None]:
    """``(reason, rule)`` of a transport failure: a runtime network error's own
    reason and rule, else the exception type (httpx messages may quote URLs)."""
    if isinstance(exc, NetworkError):
        return exc.reason, exc.rule
    if isinstance(exc, TimeoutError):
        return "timed out", "DEADLINE_EXCEEDED"
    return type(exc).__name__, None


# -- listing ------------------------------------------------------------------------


@dataclass(frozen=True)
class ListedRepo:
    """A repository named by a listing: ``did``; from ``listRepos`` also ``rev``
    (TID), ``head`` (commit CID), ``active`` and ``status`` (``takendown``,
    ``deactivated``, …; with ``active`` false). ``None`` where the endpoint gives
    nothing (``listReposByCollection`` gives only the DID)."""

    did: str
    rev: str | None = None
    head: str | None = None
    active: bool | None = None
    status: str | None = None


def _first_problem(exc: ValidationError) -> str:
    """The JSON pointer and message of a validation error's first problem (never
    its input value)."""
    first = exc.errors(include_input=False, include_url=False)[0]
    pointer = "".join(
        "/" + str(p).replace("~", "~0").replace("/", "~1") for p in first["loc"]
    )
    return f"{pointer or '/'}: {first['msg'][:200]}"


async def list_repos(
    base_url: str,
    *,
    kind: Literal["pds", "relay"],
    collection: str = DEFAULT_COLLECTION,
    client: httpx.AsyncClient | None = None,
    page_size: int = LIST_PAGE_SIZE,
    max_pages: int = MAX_LIST_PAGES,
    max_repos: int = MAX_LIST_REPOS,
    max_page_bytes: int = MAX_LIST_BYTES,
    timeout: float = REQUEST_TIMEOUT,
    deadline: float = LIST_DEADLINE,
    cursor: str | None = None,
) -> AsyncIterator[ListedRepo]:
    """The repositories of a PDS (``kind="pds"``: ``com.atproto.sync.listRepos``)
    or of a relay (``kind="relay"``: ``com.atproto.sync.listReposByCollection``
    with ``collection``, an NSID), page by page (``cursor`` to start after, as the
    endpoint gave it), each DID once, in the endpoint's order.

    ``base_url`` is the service's origin as the user configured it (``http`` or
    ``https``; no credentials in it: ``ValueError``). ``page_size``: the
    ``limit`` asked (capped at the Lexicon's maximum). Bounds: ``max_pages``
    pages, ``max_repos`` DIDs, ``max_page_bytes`` bytes per page, ``timeout``
    seconds per request and ``deadline`` seconds spent in requests in all (the
    consumer's time between pages does not count). ``client``: an
    ``httpx.AsyncClient`` (default: :func:`list_client`, closed at the end).

    Raises :class:`BackfillError`: ``BF_LIST_FAILED`` (request failed, non-200
    status), ``BF_LIST_INVALID`` (a page is not the Lexicon's output, at its
    JSON pointer), ``BF_LIST_LIMIT`` (a bound, or a cursor that did not move)."""
    if kind not in _LIST_NSID:
        raise ValueError(f"kind must be 'pds' or 'relay', not {kind!r}")
    if kind == "relay" and not is_nsid(collection):
        raise ValueError(f"collection {collection[:100]!r} is not an NSID")
    parsed = check_url(base_url, what="listing", trusted=True)
    if parsed.userinfo:
        raise ValueError("the listing URL must not carry credentials")
    nsid = _LIST_NSID[kind]
    url = f"{base_url.rstrip('/')}/xrpc/{nsid}"
    shown = redact_url(url)
    limit = max(1, min(page_size, 1000 if kind == "pds" else 2000))
    owned = client is None
    http = client or list_client()
    seen: set[str] = set()
    spent = 0.0
    try:
        for page in range(max_pages + 1):
            if page == max_pages:
                raise BackfillError(
                    "BF_LIST_LIMIT",
                    f"{nsid}: more than {max_pages} pages",
                    url=shown,
                )
            params = {"limit": str(limit)}
            if kind == "relay":
                params["collection"] = collection
            if cursor is not None:
                params["cursor"] = cursor
            budget = min(timeout, deadline - spent)
            if budget <= 0:
                raise BackfillError(
                    "BF_LIST_LIMIT",
                    f"{nsid}: the listing took longer than {deadline:g} s in requests",
                    url=shown,
                    cause_rule="DEADLINE_EXCEEDED",
                )
            started = time.monotonic()
            try:
                async with asyncio.timeout(budget):
                    got = await _get(
                        http,
                        url,
                        params,
                        what="listing page",
                        max_bytes=max_page_bytes,
                        error_bytes=MAX_ERROR_BYTES,
                        trusted=True,
                    )
            except ResponseTooLargeError as exc:
                raise BackfillError(
                    "BF_LIST_LIMIT",
                    f"{nsid}: {exc.reason}",
                    url=shown,
                    cause_rule=exc.rule,
                ) from None
            except (NetworkError, httpx.HTTPError, TimeoutError) as exc:
                reason, rule = _network_reason(exc)
                raise BackfillError(
                    "BF_LIST_FAILED", f"{nsid}: {reason}", url=shown, cause_rule=rule
                ) from None
            finally:
                spent += time.monotonic() - started
            if got.status != 200:
                name = _xrpc_error_name(got.body)
                raise BackfillError(
                    "BF_LIST_FAILED",
                    f"{nsid}: HTTP {got.status}" + (f" {name}" if name else ""),
                    url=shown,
                )
            model = ListReposOutput if kind == "pds" else ListReposByCollectionOutput
            try:
                out: Any = model.from_json(got.body)
            except ValidationError as exc:
                raise BackfillError(
                    "BF_LIST_INVALID",
                    f"{nsid} page {page + 1}: {_first_problem(exc)}",
                    url=shown,
                ) from None
            for repo in out.repos:
                if repo.did in seen:
                    continue
                if len(seen) >= max_repos:
                    raise BackfillError(
                        "BF_LIST_LIMIT",
                        f"{nsid}: more than {max_repos} repositories",
                        url=shown,
                    )
                seen.add(repo.did)
                if kind == "pds":
                    yield ListedRepo(
                        repo.did, repo.rev, repo.head, repo.active, repo.status
                    )
                else:
                    yield ListedRepo(repo.did)
            if out.cursor is None or not out.repos:
                return
            if out.cursor == cursor:
                raise BackfillError(
                    "BF_LIST_LIMIT",
                    f"{nsid}: the cursor did not move (page {page + 1})",
                    url=shown,
                )
            cursor = out.cursor
    finally:
        if owned:
            await http.aclose()


# -- one repository ----------------------------------------------------------------


@dataclass(frozen=True)
class RepoSnapshot:
    """A repository read from its verified ``getRepo`` CAR: ``did``, ``rev`` (the
    signed commit's revision, a TID), ``commit_cid`` (its CID), ``records`` (every
    ``science.alt.dataset.*`` record, in MST key order, as
    :data:`SnapshotRecord`), ``pds`` (the endpoint read, from the DID document),
    ``car_bytes`` and ``blocks`` (size of the CAR), ``seconds`` (download and
    verification)."""

    did: str
    rev: str
    commit_cid: str
    records: list[SnapshotRecord]
    pds: str
    car_bytes: int
    blocks: int
    seconds: float
    handle: str | None = None
    """The handle the DID document claims (its first valid ``at://`` entry of
    ``alsoKnownAs``, lower-cased), unverified; ``None`` when it claims none."""


def handle_claim(handles: Iterable[str]) -> str | None:
    """The handle a DID document claims: the first of its ``alsoKnownAs``
    ``at://`` entries (``handles``, without the prefix) that is a valid handle
    (AT Protocol "Handle" syntax, at most 253 characters), lower-cased; ``None``
    when there is none. A claim only: :mod:`atdata_appview.handles` verifies it
    both ways before any query resolves or shows it."""
    for handle in list(handles)[:64]:
        if isinstance(handle, str) and len(handle) <= 253 and is_handle(handle):
            return handle.lower()
    return None


def _from_repo_error(exc: RecordVerificationError, did: str) -> BackfillError:
    rule = _FROM_REPO_RULE.get(exc.rule, "BF_CAR_INVALID")
    key = cid = None
    if isinstance(exc, RepoVerificationError):
        key, cid = exc.key, exc.cid
    return BackfillError(
        rule, exc.reason, did=did, key=key, cid=cid, cause_rule=exc.rule
    )


async def fetch_repo(
    did: str,
    *,
    resolver: IdentityResolver,
    client: httpx.AsyncClient,
    prefix: str = DATASET_PREFIX,
    max_car_bytes: int = MAX_REPO_BYTES,
    max_blocks: int = MAX_REPO_BLOCKS,
    max_records: int = MAX_REPO_RECORDS,
    max_items: int = MAX_REPO_ITEMS,
    max_record_bytes: int = MAX_RECORD_BYTES,
    max_depth: int = MAX_MST_DEPTH,
    timeout: float = REPO_TIMEOUT,
) -> RepoSnapshot:
    """Read the repository of ``did`` from the PDS its DID document names, verified.

    ``resolver`` resolves the DID (its PLC URL, timeout and document size cap
    apply; run in a thread). ``client`` downloads the CAR: a
    :func:`repo_client` (an untrusted URL: ``https`` only, no loopback or private
    peer, same-origin redirects, at most ``max_car_bytes`` bytes within
    ``timeout`` seconds). The CAR is verified by
    :func:`~atdata_runtime.atmosphere.repo.verify_repo` against the DID
    document's ``#atproto`` key (in a thread; when the signature fails, the DID is
    resolved once more, bypassing the cache, and the CAR checked again if the key
    changed) and only records whose MST key starts with ``prefix`` are kept
    (at most ``max_records``, ``max_items`` decoded items, ``max_record_bytes``
    bytes a record; ``max_blocks`` blocks, MST ``max_depth``).

    Returns a :class:`RepoSnapshot`. Raises :class:`BackfillError` (``BF_IDENTITY``,
    ``BF_SIGNING_KEY``, ``BF_FETCH_FAILED``, ``BF_REPO_UNAVAILABLE``,
    ``BF_CAR_TOO_BIG`` and the verification rules ``BF_CAR_INVALID`` …
    ``BF_REPO_LIMIT``) naming the DID, and the MST key and CID when a record or
    node is at fault."""
    started = time.monotonic()
    if not isinstance(did, str) or len(did) > 2048 or not is_did(did):
        raise BackfillError(
            "BF_IDENTITY",
            "not a valid DID",
            did=str(did)[:200],
            cause_rule="DID_INVALID",
        )

    claimed: list[str | None] = [None]

    async def resolve() -> tuple[str, str]:
        try:
            doc = await asyncio.to_thread(resolver.did_document, did)
        except NetworkError as exc:
            raise BackfillError(
                "BF_IDENTITY", exc.reason, did=did, cause_rule=exc.rule
            ) from None
        claimed[0] = handle_claim(doc.handles)
        try:
            return doc.pds, signing_key(doc.doc, did, uri=f"at://{did}")
        except RecordVerificationError as exc:
            raise BackfillError(
                "BF_SIGNING_KEY", exc.reason, did=did, cause_rule=exc.rule
            ) from None

    pds, key = await resolve()
    url = f"{pds}/xrpc/com.atproto.sync.getRepo"
    shown = redact_url(url)
    try:
        async with asyncio.timeout(timeout):
            got = await _get(
                client,
                url,
                {"did": did},
                what="repository CAR",
                max_bytes=max_car_bytes,
                error_bytes=MAX_ERROR_BYTES,
                trusted=False,
            )
    except ResponseTooLargeError as exc:
        raise BackfillError(
            "BF_CAR_TOO_BIG", exc.reason, did=did, url=shown, cause_rule=exc.rule
        ) from None
    except TimeoutError:
        raise BackfillError(
            "BF_FETCH_FAILED",
            f"getRepo took longer than {timeout:g} s",
            did=did,
            url=shown,
            cause_rule="DEADLINE_EXCEEDED",
        ) from None
    except (NetworkError, httpx.HTTPError) as exc:
        reason, rule = _network_reason(exc)
        raise BackfillError(
            "BF_FETCH_FAILED", f"getRepo: {reason}", did=did, url=shown, cause_rule=rule
        ) from None
    if got.status != 200:
        name = _xrpc_error_name(got.body)
        raise BackfillError(
            "BF_REPO_UNAVAILABLE" if name in _UNAVAILABLE else "BF_FETCH_FAILED",
            f"getRepo: HTTP {got.status}" + (f" {name}" if name else ""),
            did=did,
            url=shown,
        )
    car = got.body

    def verify(with_key: str) -> Any:
        return verify_repo(
            car,
            did=did,
            key=with_key,
            prefix=prefix,
            max_bytes=max_car_bytes,
            max_blocks=max_blocks,
            max_depth=max_depth,
            max_records=max_records,
            max_items=max_items,
            max_record_bytes=max_record_bytes,
        )

    try:
        try:
            repo = await asyncio.to_thread(verify, key)
        except RecordVerificationError as exc:
            if exc.rule != "REPO_BAD_SIGNATURE":
                raise
            resolver.forget(did)  # the key may have rotated since it was cached
            _, fresh = await resolve()
            if fresh == key:
                raise
            repo = await asyncio.to_thread(verify, fresh)
    except RecordVerificationError as exc:
        raise _from_repo_error(exc, did) from None
    return RepoSnapshot(
        did=did,
        rev=repo.rev,
        commit_cid=repo.commit,
        records=[(r.collection, r.rkey, r.cid, r.value) for r in repo.records],
        pds=pds,
        car_bytes=len(car),
        blocks=repo.blocks,
        seconds=time.monotonic() - started,
        handle=claimed[0],
    )


# -- many repositories --------------------------------------------------------------


_CLAIM_HANDLE_SQL: Final = (
    "INSERT INTO appview_accounts (did, handle) VALUES ($1, $2) "
    "ON CONFLICT (did) DO UPDATE SET handle = EXCLUDED.handle, updated_at = now() "
    "WHERE appview_accounts.handle IS NULL"
)
"""Record the DID document's handle claim of a backfilled repository in
``appview_accounts.handle`` when the index knows none (an ``#identity`` event's
claim is newer than a cached document: it is kept). ``verified_handle`` is not
touched: :mod:`atdata_appview.handles` checks the claim (it is due as soon as it
differs from ``handle_checked``)."""

MAX_REREADS: Final = 3
"""Reads of one repository in one :meth:`Backfiller.backfill_repo` call (a
``#sync`` drained with a snapshot asks for another)."""


@dataclass(frozen=True)
class RepoOutcome:
    """One repository backfilled: ``did``, ``rev`` of the snapshot, ``records``
    verified and handed to the index, ``indexed`` (rows written) and ``rejected``
    (dead-lettered by validation) of them, ``car_bytes`` downloaded, ``state``
    after it (``synced``; ``gone`` for a deleted or taken-down account;
    ``pending`` when it must be read again)."""

    did: str
    rev: str
    records: int
    indexed: int
    rejected: int
    car_bytes: int
    state: str


@dataclass
class BackfillStats:
    """Figures of a :class:`Backfiller` run: repositories ``listed``, ``queued``
    (taken from ``appview_repos``: pending, failed to retry, abandoned),
    ``expired`` (abandoned backfills ended first), ``skipped`` (already synced,
    or failed ``max_attempts`` times), ``inactive`` (the listing says not
    active), ``synced``, ``stale`` (every snapshot read was older than the index:
    left ``pending``), ``failed``; ``records`` verified and handed to
    the index, ``indexed`` and ``rejected`` (dead-lettered) of them, ``car_bytes``
    downloaded, ``seconds`` of the run; ``failures``: ``(did, rule, reason)``
    of the first 100 failures (``reason``: the short reason, URLs redacted, at
    most :data:`MAX_FAILURE_REASON` characters; never a response body)."""

    listed: int = 0
    queued: int = 0
    expired: int = 0
    skipped: int = 0
    inactive: int = 0
    synced: int = 0
    stale: int = 0
    failed: int = 0
    records: int = 0
    indexed: int = 0
    rejected: int = 0
    car_bytes: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def repos_per_second(self) -> float:
        """Repositories synced per second of the run."""
        return self.synced / self.seconds if self.seconds > 0 else 0.0

    @property
    def records_per_second(self) -> float:
        """Records verified and handed to the index per second of the run."""
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line: counts and rates."""
        return (
            f"backfill: {self.synced} synced, {self.stale} stale, {self.failed} "
            f"failed, {self.skipped} skipped, {self.inactive} inactive of "
            f"{self.listed} listed and {self.queued} queued; "
            f"{self.records} records ({self.indexed} indexed, {self.rejected} "
            f"rejected), {self.car_bytes} CAR bytes in "
            f"{self.seconds:.2f} s ({self.repos_per_second:.1f} repos/s, "
            f"{self.records_per_second:.0f} records/s)"
        )


MAX_FAILURE_REASON: Final = 200
"""Characters of a failure's reason in :attr:`BackfillStats.failures` at most."""


def _failure_reason(exc: BackfillError) -> str:
    """The short reason of a failed repository: the error's reason (no body;
    URLs in it redacted), where it was (MST key, CID) and the runtime's rule,
    cut to :data:`MAX_FAILURE_REASON` characters."""
    text = exc.reason
    if exc.key:
        text += f" (key {exc.key})"
    if exc.cause_rule and exc.cause_rule != exc.rule:
        text += f" [{exc.cause_rule}]"
    text = _URLISH.sub(lambda m: redact_url(m.group(0)), text)
    if len(text) > MAX_FAILURE_REASON:
        text = text[: MAX_FAILURE_REASON - 1] + "…"
    return text


_URLISH: Final = re.compile(r"https?://[^\s'\"<>]+")


def _short_error(exc: BaseException) -> str:
    """What ``appview_repos.error`` keeps: a :class:`BackfillError`'s rule and
    reason (never a body; URLs already redacted), else only the exception type
    (a database message may quote data)."""
    if isinstance(exc, BackfillError):
        text = f"{exc.rule}: {exc}"
    elif not isinstance(exc, Exception):
        text = f"BF_INTERRUPTED: {type(exc).__name__}"
    else:
        text = f"BF_INDEX_FAILED: {type(exc).__name__}"
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 1] + "…"


class Backfiller:
    """Backfills the repositories a PDS or relay lists into the index.

    ``pool``: an ``asyncpg`` pool on the AppView's database (at least
    ``concurrency + 1`` connections: one holds the run's advisory lock).
    ``source``: the PDS or relay origin (trusted configuration; ``""`` when only
    :meth:`run` with ``dids`` or ``queued_only`` is used), ``kind``: ``"pds"`` or
    ``"relay"``, ``collection``: the one collection a relay is asked for (default
    ``None``: each of :data:`RELAY_COLLECTIONS`, deduplicated).
    ``concurrency``: repositories fetched and written at once. ``resolver``: an
    :class:`~atdata_runtime.atmosphere.identity.IdentityResolver` (default: one on
    ``plc_url``). ``force``: also redo repositories already ``synced`` and those
    failed ``max_attempts`` times. ``require_verified``: the policy for the
    buffered live rows applied after a snapshot; ``None`` (default): the live
    fold's, as the indexer records it (``appview_cursor.require_verified``), so
    that a row is indexed or refused the same with or without a backfill.
    ``lease_seconds``: a repository ``backfilling`` for longer is taken as
    abandoned (``indexer.expire_backfills``) at the start of :meth:`run`;
    ``queued_limit``: most repositories a run takes from ``appview_repos``.
    ``fetch_options``: keyword arguments of
    :func:`fetch_repo` (``max_car_bytes``, ``timeout``, …); ``list_options``: of
    :func:`list_repos` (``page_size``, ``max_repos``, …).

    :meth:`run` lists, skips, and backfills each repository with
    :meth:`backfill_repo`; :meth:`fetch` (one repository's snapshot) may be
    overridden. Never sends a credential anywhere."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        source: str,
        kind: Literal["pds", "relay"],
        collection: str | None = None,
        concurrency: int = 4,
        resolver: IdentityResolver | None = None,
        plc_url: str = "https://plc.directory",
        force: bool = False,
        max_attempts: int = 5,
        require_verified: bool | None = None,
        lease_seconds: float | None = None,
        queued_limit: int = QUEUED_LIMIT,
        fetch_options: Mapping[str, Any] | None = None,
        list_options: Mapping[str, Any] | None = None,
        list_http: httpx.AsyncClient | None = None,
        repo_http: httpx.AsyncClient | None = None,
    ) -> None:
        if kind not in _LIST_NSID:
            raise ValueError(f"kind must be 'pds' or 'relay', not {kind!r}")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.pool = pool
        self.source = source.rstrip("/")
        self.kind: Literal["pds", "relay"] = kind
        self.collection = collection
        self.concurrency = concurrency
        self.resolver = resolver or IdentityResolver(
            plc_url=plc_url, retry=RetryPolicy(attempts=3, deadline=20.0)
        )
        self.force = force
        self.max_attempts = max_attempts
        self.require_verified = require_verified
        from .indexer import BACKFILL_LEASE_SECONDS

        self.lease_seconds = (
            BACKFILL_LEASE_SECONDS if lease_seconds is None else lease_seconds
        )
        if self.lease_seconds <= 0 or queued_limit < 0:
            raise ValueError("lease_seconds must be > 0 and queued_limit >= 0")
        self.queued_limit = queued_limit
        self._sent: set[str] = set()
        self._expired: list[str] = []
        self.fetch_options = dict(fetch_options or {})
        self.list_options = dict(list_options or {})
        self._list_http = list_http
        self._repo_http = repo_http
        self.stats = BackfillStats()

    def __repr__(self) -> str:
        return (
            f"Backfiller(source={redact_url(self.source)!r}, kind={self.kind!r}, "
            f"concurrency={self.concurrency})"
        )

    # -- overridable steps ---------------------------------------------------------

    async def fetch(self, did: str) -> RepoSnapshot:
        """The verified snapshot of ``did`` (:func:`fetch_repo` with this
        backfiller's resolver, client and ``fetch_options``)."""
        if self._repo_http is None:
            raise RuntimeError("Backfiller.fetch runs inside run() or backfill_repo()")
        return await fetch_repo(
            did, resolver=self.resolver, client=self._repo_http, **self.fetch_options
        )

    # -- the database -------------------------------------------------------------

    async def _states(self, dids: list[str]) -> dict[str, tuple[str, int]]:
        rows = await self.pool.fetch(
            "SELECT did, state, attempts FROM appview_repos WHERE did = ANY($1::text[])",
            dids,
        )
        return {r["did"]: (r["state"], r["attempts"]) for r in rows}

    def _wanted(self, state: tuple[str, int] | None) -> bool:
        if state is None or self.force:
            return True
        name, attempts = state
        if name == "synced":
            return False
        return not (name == "failed" and attempts >= self.max_attempts)

    async def backfill_repo(self, did: str) -> RepoOutcome:
        """Backfill one repository: ``indexer.begin_backfill`` (committed: from
        then on the repository's live rows are buffered), :meth:`fetch`, then
        ``indexer.apply_snapshot`` (one transaction: the snapshot replaces the
        repository's records, the buffered rows newer than its ``rev`` follow).
        When a ``#sync`` drained with it asks for another read (state
        ``pending``), the repository is read again (at most
        :data:`MAX_REREADS` times in all).

        On failure ``indexer.fail_backfill`` applies what was buffered as live
        rows and marks the repository ``failed`` with the short error (the
        attempt was counted by ``begin_backfill``); the error is re-raised
        (:class:`BackfillError`; a database error as it came). A malformed DID is
        ``BF_IDENTITY`` with nothing written."""
        from . import indexer

        if not isinstance(did, str) or len(did) > 2048 or not is_did(did):
            raise BackfillError(
                "BF_IDENTITY",
                "not a valid DID",
                did=str(did)[:200],
                cause_rule="DID_INVALID",
            )
        source = redact_url(self.source) if self.source else "(DID document)"
        own_http = self._repo_http is None
        if own_http:
            self._repo_http = repo_client()
        try:
            for _ in range(MAX_REREADS):
                async with self.pool.acquire() as conn:
                    await indexer.begin_backfill(conn, did, source)
                try:
                    snapshot = await self.fetch(did)
                    async with self.pool.acquire() as conn:
                        result = await indexer.apply_snapshot(
                            conn,
                            did,
                            snapshot.rev,
                            snapshot.records,
                            source,
                            require_verified=self.require_verified,
                        )
                except BaseException as exc:
                    # cancelled or interrupted too: never leave it backfilling
                    # (its live rows buffered); shielded from a second cancel
                    await self._mark_failed(did, exc)
                    raise
                if snapshot.handle is not None and result.state != "gone":
                    async with self.pool.acquire() as conn:
                        await conn.execute(_CLAIM_HANDLE_SQL, did, snapshot.handle)
                if result.state not in ("pending", "stale"):
                    break
            return RepoOutcome(
                did=did,
                rev=snapshot.rev,
                records=len(snapshot.records),
                indexed=result.records,
                rejected=result.rejected,
                car_bytes=snapshot.car_bytes,
                state=result.state,
            )
        finally:
            if own_http and self._repo_http is not None:
                await self._repo_http.aclose()
                self._repo_http = None

    async def _mark_failed(self, did: str, exc: BaseException) -> None:
        """``indexer.fail_backfill`` for ``did`` after ``exc``, on its own pool
        connection, shielded from cancellation (a cancel while it runs does not
        interrupt it; it goes on in the background). Its own errors are logged:
        the first error wins (and the indexer's lease ends the backfill if even
        this could not be written)."""
        from . import indexer

        async def mark() -> None:
            try:
                async with self.pool.acquire() as conn:
                    await indexer.fail_backfill(
                        conn,
                        did,
                        _short_error(exc),
                        require_verified=self.require_verified,
                    )
            except Exception as inner:  # noqa: BLE001 - the first error wins
                log.warning(
                    "backfill %s: marking it failed failed too: %s",
                    did,
                    type(inner).__name__,
                )

        task = asyncio.ensure_future(mark())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not isinstance(exc, asyncio.CancelledError):
                raise
            # cancelled again while marking: let the marking finish first
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(task), 30.0)

    # -- the run --------------------------------------------------------------------

    async def _listed(self, dids: Iterable[str] | None) -> AsyncIterator[ListedRepo]:
        if dids is not None:
            for did in dids:
                yield ListedRepo(did)
            return
        if self.kind == "pds":
            async for repo in list_repos(
                self.source, kind="pds", client=self._list_http, **self.list_options
            ):
                yield repo
            return
        collections = (
            (self.collection,) if self.collection is not None else RELAY_COLLECTIONS
        )
        seen: set[str] = set()
        cap = int(self.list_options.get("max_repos", MAX_LIST_REPOS))
        for collection in collections:
            async for repo in list_repos(
                self.source,
                kind="relay",
                collection=collection,
                client=self._list_http,
                **self.list_options,
            ):
                if repo.did in seen:
                    continue
                if len(seen) >= cap:
                    raise BackfillError(
                        "BF_LIST_LIMIT",
                        f"relay listings: more than {cap} repositories",
                        url=redact_url(self.source),
                    )
                seen.add(repo.did)
                yield repo

    async def _queued(self) -> list[str]:
        """DIDs ``appview_repos`` asks to be read: ``pending`` (queued by the
        fold: a reactivation, a ``#sync``, an ingest cursor reset; or a stale
        snapshot), ``failed`` under ``max_attempts`` once their backoff
        (:data:`RETRY_BASE_SECONDS`) passed, ``backfilling`` past the lease
        (abandoned; normally ended first by ``indexer.expire_backfills``),
        oldest first, at most ``queued_limit``."""
        if self.queued_limit == 0:
            return []
        rows = await self.pool.fetch(
            "SELECT did FROM appview_repos WHERE "
            "(state = 'pending' AND attempts < $1) "
            "OR (state = 'failed' AND attempts < $1 AND updated_at < now() - "
            "make_interval(secs => least($2 * power(2, greatest(attempts - 1, 0)), "
            "86400))) "
            "OR (state = 'backfilling' AND updated_at < now() - "
            "make_interval(secs => $3)) "
            "ORDER BY updated_at, did LIMIT $4",
            self.max_attempts,
            RETRY_BASE_SECONDS,
            float(self.lease_seconds),
            self.queued_limit,
        )
        return [r["did"] for r in rows]

    async def run(
        self,
        *,
        dids: Iterable[str] | None = None,
        queued_only: bool = False,
        stop: asyncio.Event | None = None,
        on_repo: Callable[[str, RepoOutcome | BackfillError], Awaitable[None]]
        | None = None,
    ) -> BackfillStats:
        """Backfill every repository the source lists, then those queued in
        ``appview_repos`` (:meth:`_queued`: pending, failed to retry, abandoned)
        — or only ``dids``, when given, or only the queued ones with
        ``queued_only`` — ``concurrency`` at a time, under the database's
        backfill advisory lock. First, backfills past their lease are ended
        (``indexer.expire_backfills``: their buffered rows applied live). Skips
        repositories the listing says are not active, those ``synced`` (unless
        ``force``) and those ``failed`` ``max_attempts`` times. A repository's
        failure is counted and logged, and the run goes on; a listing failure
        ends the run with its :class:`BackfillError` after the repositories
        already queued. ``stop`` (set) ends it after the repositories in
        progress. ``on_repo(did, outcome or error)`` is awaited after each one
        (its exceptions are logged).
        Returns :attr:`stats` (also kept on the object)."""
        self.stats = stats = BackfillStats()
        self._sent = set()
        self._expired = []
        started = time.monotonic()
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=self.concurrency * 4)
        stop = stop or asyncio.Event()
        own_repo = self._repo_http is None
        if own_repo:
            self._repo_http = repo_client(max(8, self.concurrency * 2))
        lock = await self.pool.acquire()
        try:
            if not await lock.fetchval(
                "SELECT pg_try_advisory_lock($1)", BACKFILL_LOCK
            ):
                raise BackfillError(
                    "BF_BUSY", "another backfill is running on this database"
                )
            try:
                from . import indexer

                async with self.pool.acquire() as conn:
                    expired = await indexer.expire_backfills(
                        conn,
                        lease_seconds=self.lease_seconds,
                        require_verified=self.require_verified,
                    )
                stats.expired = len(expired)
                self._expired = expired

                async def worker() -> None:
                    while True:
                        did = await queue.get()
                        if did is None:
                            return
                        if stop.is_set():
                            continue
                        try:
                            outcome = await self.backfill_repo(did)
                        except BackfillError as exc:
                            stats.failed += 1
                            if len(stats.failures) < 100:
                                stats.failures.append(
                                    (did, exc.rule, _failure_reason(exc))
                                )
                            log.warning("backfill %s", exc)
                            result: RepoOutcome | BackfillError = exc
                        except Exception as exc:  # noqa: BLE001 - a repo's failure
                            stats.failed += 1
                            if len(stats.failures) < 100:
                                stats.failures.append(
                                    (did, "BF_INDEX_FAILED", type(exc).__name__)
                                )
                            log.warning(
                                "backfill %s: %s [BF_INDEX_FAILED]",
                                did,
                                type(exc).__name__,
                            )
                            result = BackfillError(
                                "BF_INDEX_FAILED", type(exc).__name__, did=did
                            )
                        else:
                            if outcome.state == "stale":
                                stats.stale += 1
                            else:
                                stats.synced += 1
                            stats.records += outcome.records
                            stats.indexed += outcome.indexed
                            stats.rejected += outcome.rejected
                            stats.car_bytes += outcome.car_bytes
                            result = outcome
                        if on_repo is not None:
                            try:
                                await on_repo(did, result)
                            except Exception:  # the caller's hook
                                log.exception("backfill: on_repo hook failed")

                workers = [
                    asyncio.create_task(worker()) for _ in range(self.concurrency)
                ]
                try:
                    await self._produce(dids, queue, stop, queued_only=queued_only)
                finally:
                    for _ in workers:
                        await queue.put(None)
                    await asyncio.gather(*workers)
            finally:
                await lock.execute("SELECT pg_advisory_unlock($1)", BACKFILL_LOCK)
        finally:
            await self.pool.release(lock)
            if own_repo and self._repo_http is not None:
                await self._repo_http.aclose()
                self._repo_http = None
            stats.seconds = time.monotonic() - started
        # the periodic pass over queued repositories mostly finds nothing
        busy = stats.listed or stats.queued or stats.expired or stats.failed
        log.log(logging.INFO if busy else logging.DEBUG, "%s", stats.summary())
        return stats

    async def _produce(
        self,
        dids: Iterable[str] | None,
        queue: asyncio.Queue[str | None],
        stop: asyncio.Event,
        *,
        queued_only: bool = False,
    ) -> None:
        """Without ``dids``: queue those ``appview_repos`` asks for first (the
        backfills this run found abandoned, then :meth:`_queued`), then (unless ``queued_only``) list, look up the states
        of each batch of DIDs and queue those wanted and not queued already."""
        stats = self.stats
        if dids is None:
            # the abandoned backfills just ended first: read again at once
            for did in [*self._expired, *await self._queued()]:
                if stop.is_set():
                    return
                if did in self._sent:
                    continue
                stats.queued += 1
                self._sent.add(did)
                await queue.put(did)
            if queued_only:
                return
        await self._produce_listed(dids, queue, stop)

    async def _produce_listed(
        self,
        dids: Iterable[str] | None,
        queue: asyncio.Queue[str | None],
        stop: asyncio.Event,
    ) -> None:
        stats = self.stats
        batch: list[ListedRepo] = []

        async def flush() -> None:
            states = await self._states([r.did for r in batch])
            for repo in batch:
                if stop.is_set():
                    return
                if repo.active is False:
                    stats.inactive += 1
                elif repo.did in self._sent:
                    continue  # queued from appview_repos already
                elif self._wanted(states.get(repo.did)):
                    await queue.put(repo.did)
                else:
                    stats.skipped += 1
            batch.clear()

        async for repo in self._listed(dids):
            if stop.is_set():
                return
            stats.listed += 1
            batch.append(repo)
            if len(batch) >= 200:
                await flush()
        if batch:
            await flush()
