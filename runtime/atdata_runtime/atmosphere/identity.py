"""Identity: handle → DID → DID document → PDS endpoint (AT Protocol "DID" and
"Handle" specs), with a TTL cache. Every request goes through
:func:`atdata_runtime.net.fetch.fetch`: bounded size, one total deadline, same-origin
redirects only, no response body in any error.

* did:plc (``did:plc:`` + 24 characters of base32 ``a-z2-7``, the did:plc spec)
  documents come from a PLC directory, a URL the user configured (``plc_url``,
  default ``https://plc.directory``, trusted): ``GET {plc_url}/{did}``, the URL
  built from the validated DID.
* did:web documents come from ``https://{host}[:{port}]/.well-known/did.json``.
  The method-specific id must be a hostname (RFC 1123 labels, at most 253
  characters) with an optional ``%3A`` port and nothing else: no other
  percent-escape, no ``:`` path (the W3C did:web spec § 3.2, and the AT Protocol DID
  spec: "atproto only supports hostname-level did:web"). The URL is built from the
  parsed host and port, then checked as a URL from the network: ``https`` only,
  never a loopback/private/link-local host (and never one that resolves to such an
  address). In the test-only loopback mode (``ATDATA_RUNTIME_INSECURE_LOOPBACK=1``,
  see :mod:`atdata_runtime.net.fetch`) a loopback host is fetched over ``http``.
* A handle resolves by the HTTPS well-known method
  (``https://{handle}/.well-known/atproto-did``, an untrusted URL, body at most
  :data:`~atdata_runtime.net.fetch.MAX_HANDLE_DID_BYTES`) or, when
  ``handle_service`` is set (trusted), by ``com.atproto.identity.resolveHandle`` on
  that service. Either way the DID document must list ``at://{handle}`` in
  ``alsoKnownAs`` (bidirectional check); otherwise :class:`~.errors.IdentityError`.
* The PDS endpoint is the ``serviceEndpoint`` of the service with id
  ``#atproto_pds`` and type ``AtprotoPersonalDataServer``. It comes from the
  network (whoever controls the DID wrote it), so it is checked like any URL from
  the network before it is returned, and must be an origin (scheme, host, optional
  port; no path, query, fragment or credentials; AT Protocol DID spec).

Limits (change them per resolver): ``timeout`` (default 10 s) is the total
wall-clock budget of one lookup, retries included; ``max_document_bytes`` (default
:data:`~atdata_runtime.net.fetch.MAX_DID_DOCUMENT_BYTES`, 64 KiB) caps a DID
document. Entries live ``ttl`` seconds; failures are not cached.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from ..lex.formats import is_did, is_handle
from ..net.errors import NetworkError
from ..net.fetch import (
    MAX_DID_DOCUMENT_BYTES,
    MAX_HANDLE_DID_BYTES,
    Fetched,
    check_url,
    fetch,
    insecure_loopback,
    is_loopback_host,
)
from ..net.redact import redact_url
from ..net.retry import RetryPolicy
from .errors import DidDocumentError, IdentityError

__all__ = ["DidDocument", "IdentityResolver", "did_document_url", "parse_did_web"]

_PLC = re.compile(r"did:plc:[a-z2-7]{24}")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE)
_DID_WEB = re.compile(r"did:web:([A-Za-z0-9.-]{1,253})(?:%3[Aa]([0-9]{1,5}))?")

MAX_SERVICES = 64
"""Services and ``alsoKnownAs`` entries read from one DID document (more is an
error: real documents list one or two)."""


def parse_did_web(did: str) -> tuple[str, int | None]:
    """``(host, port)`` of a hostname-level did:web. Raises
    :class:`~.errors.IdentityError` (rule ``DID_INVALID``) for anything else: a
    path, another percent-escape, a bad hostname label or port."""
    match = _DID_WEB.fullmatch(did)
    if match is None:
        raise IdentityError(
            did,
            "did:web must be a hostname with an optional %3A port, nothing else "
            "(AT Protocol DID spec; W3C did:web § 3.2)",
            rule="DID_INVALID",
        )
    host, port_text = match.group(1).lower(), match.group(2)
    labels = host.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise IdentityError(
            did, "did:web host is not a valid hostname", rule="DID_INVALID"
        )
    port = None
    if port_text is not None:
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise IdentityError(did, "did:web port out of range", rule="DID_INVALID")
    return host, port


def did_document_url(
    did: str, plc_url: str = "https://plc.directory"
) -> tuple[str, bool]:
    """``(url, trusted)`` of the DID document of ``did``, built from its validated
    parts: did:plc → ``{plc_url}/{did}`` (trusted: the user's PLC directory);
    did:web → ``https://{host}[:{port}]/.well-known/did.json`` (untrusted; ``http``
    only for a loopback host in the test-only loopback mode). Raises
    :class:`~.errors.IdentityError` (``DID_INVALID``) for any other DID."""
    if did.startswith("did:plc:"):
        if not _PLC.fullmatch(did):
            raise IdentityError(
                did,
                "did:plc must be 24 base32 characters (a-z, 2-7)",
                rule="DID_INVALID",
            )
        return f"{plc_url.rstrip('/')}/{did}", True
    if did.startswith("did:web:"):
        host, port = parse_did_web(did)
        scheme = "http" if insecure_loopback() and is_loopback_host(host) else "https"
        netloc = host if port is None else f"{host}:{port}"
        return f"{scheme}://{netloc}/.well-known/did.json", False
    raise IdentityError(
        did, "only did:plc and did:web are AT Protocol DID methods", rule="DID_INVALID"
    )


def _pds_endpoint(did: str, endpoint: str) -> str:
    """Check a ``#atproto_pds`` endpoint as a URL from the network; return it
    without a trailing slash."""
    try:
        parsed = check_url(endpoint, what="PDS endpoint", trusted=False)
    except NetworkError as exc:
        raise IdentityError(
            did,
            f"#atproto_pds endpoint refused: {exc.reason}",
            rule="PDS_ENDPOINT_REFUSED",
        ) from None
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
        raise IdentityError(
            did,
            f"#atproto_pds endpoint {redact_url(endpoint)} must be an origin "
            "(scheme, host, port; no path, query or fragment)",
            rule="PDS_ENDPOINT_REFUSED",
        )
    return endpoint.rstrip("/")


def parse_did_document(did: str, doc: Any) -> DidDocument:
    """Check a decoded DID document of ``did`` and extract what the runtime uses.
    Raises :class:`~.errors.DidDocumentError` (``DID_DOCUMENT_INVALID``) for a
    document of another DID or of the wrong shape, and
    :class:`~.errors.IdentityError` (``PDS_ENDPOINT_REFUSED``, or
    ``IDENTITY_UNRESOLVED`` when there is none) for its PDS endpoint."""
    if not isinstance(doc, dict):
        raise DidDocumentError(did, "DID document is not a JSON object")
    if doc.get("id") != did:
        raise DidDocumentError(did, "DID document is the document of another DID")
    services = doc.get("service", [])
    aka = doc.get("alsoKnownAs", [])
    if not isinstance(services, list) or not isinstance(aka, list):
        raise DidDocumentError(
            did, "DID document 'service'/'alsoKnownAs' is not a list"
        )
    if len(services) > MAX_SERVICES or len(aka) > MAX_SERVICES:
        raise DidDocumentError(
            did, f"DID document lists more than {MAX_SERVICES} services or aliases"
        )
    pds = None
    for service in services:
        if (
            isinstance(service, dict)
            and isinstance(service.get("id"), str)
            and service["id"] in ("#atproto_pds", f"{did}#atproto_pds")
            and service.get("type") == "AtprotoPersonalDataServer"
        ):
            endpoint = service.get("serviceEndpoint")
            if not isinstance(endpoint, str):
                raise DidDocumentError(
                    did, "#atproto_pds serviceEndpoint is not a string"
                )
            pds = _pds_endpoint(did, endpoint)
            break
    if pds is None:
        raise IdentityError(did, "DID document has no #atproto_pds service")
    handles = tuple(
        entry[len("at://") :]
        for entry in aka
        if isinstance(entry, str) and entry.startswith("at://")
    )
    return DidDocument(did=did, pds=pds, handles=handles, doc=doc)


@dataclass(frozen=True)
class DidDocument:
    """The parts of a DID document the runtime uses: ``did``, ``pds`` (endpoint
    URL, checked, no trailing slash), ``handles`` (from ``alsoKnownAs``) and the raw
    ``doc``."""

    did: str
    pds: str
    handles: tuple[str, ...]
    doc: dict[str, Any]


class IdentityResolver:
    """Resolves identities with a TTL cache (thread-safe).

    ``plc_url`` and ``handle_service`` are trusted (user configuration).
    ``timeout``: total seconds per lookup, retries included (default 10).
    ``max_document_bytes``: cap on a DID document (default 64 KiB). Raises
    :class:`~.errors.IdentityError` (and its rules), or the
    :class:`~atdata_runtime.net.errors.NetworkError` kinds of
    :func:`~atdata_runtime.net.fetch.fetch` (``RESPONSE_TOO_LARGE``,
    ``DEADLINE_EXCEEDED``, ``URL_REFUSED``, ``REDIRECT_CROSS_ORIGIN`` ...)."""

    def __init__(
        self,
        *,
        plc_url: str = "https://plc.directory",
        handle_service: str | None = None,
        ttl: float = 3600.0,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        max_document_bytes: int = MAX_DID_DOCUMENT_BYTES,
    ) -> None:
        self.plc_url = plc_url.rstrip("/")
        self.handle_service = handle_service.rstrip("/") if handle_service else None
        self.ttl = ttl
        self.timeout = timeout
        self.max_document_bytes = max_document_bytes
        self.retry = retry or RetryPolicy(attempts=4, deadline=30.0)
        self._docs: dict[str, tuple[float, DidDocument]] = {}
        self._handles: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self.lookups = 0
        """Network lookups made (cache misses), for tests."""

    def __repr__(self) -> str:
        return f"IdentityResolver(plc_url={self.plc_url!r}, ttl={self.ttl})"

    def _cached(self, table: dict[str, tuple[float, Any]], key: str) -> Any:
        with self._lock:
            hit = table.get(key)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]
            table.pop(key, None)
        return None

    def _store(self, table: dict[str, tuple[float, Any]], key: str, value: Any) -> None:
        with self._lock:
            table[key] = (time.monotonic() + self.ttl, value)

    def _fetch(
        self,
        url: str,
        *,
        what: str,
        max_bytes: int,
        trusted: bool,
        params: dict[str, str] | None = None,
    ) -> Fetched:
        self.lookups += 1
        resp = fetch(
            url,
            what=what,
            max_bytes=max_bytes,
            deadline=self.timeout,
            params=params,
            trusted=trusted,
            retry=self.retry,
        )
        if resp.status != 200:
            raise IdentityError(redact_url(resp.url), f"{what}: HTTP {resp.status}")
        return resp

    def did_document(self, did: str) -> DidDocument:
        """The DID document of ``did`` (did:plc or did:web). Raises
        :class:`IdentityError` when it cannot be fetched or names no usable PDS."""
        hit = self._cached(self._docs, did)
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        if not isinstance(did, str) or len(did) > 2048 or not is_did(did):
            raise IdentityError(str(did)[:200], "not a valid DID", rule="DID_INVALID")
        url, trusted = did_document_url(did, self.plc_url)
        resp = self._fetch(
            url,
            what="DID document",
            max_bytes=self.max_document_bytes,
            trusted=trusted,
        )
        result = parse_did_document(did, resp.json())
        self._store(self._docs, did, result)
        return result

    def forget(self, did: str) -> None:
        """Drop the cached DID document of ``did``, so the next lookup fetches it
        anew (e.g. after a signature check failed: the key may have rotated)."""
        self._docs.pop(did, None)

    def resolve_handle(self, handle: str) -> str:
        """The DID of ``handle``, verified against its DID document."""
        handle = handle.lower()
        hit = self._cached(self._handles, handle)
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        if len(handle) > 253 or not is_handle(handle):
            raise IdentityError(
                handle[:253], "not a valid handle", rule="HANDLE_INVALID"
            )
        did: str | None = None
        errors = []
        if self.handle_service is not None:
            try:
                data = self._fetch(
                    f"{self.handle_service}/xrpc/com.atproto.identity.resolveHandle",
                    what="handle resolution",
                    max_bytes=MAX_HANDLE_DID_BYTES * 2,
                    trusted=True,
                    params={"handle": handle},
                ).json()
                found = data.get("did") if isinstance(data, dict) else None
                did = found if isinstance(found, str) else None
            except NetworkError as exc:  # try the next method
                errors.append(str(exc))
        if did is None:
            try:
                text = self._fetch(
                    f"https://{handle}/.well-known/atproto-did",
                    what="atproto-did",
                    max_bytes=MAX_HANDLE_DID_BYTES,
                    trusted=False,
                ).text.strip()
                did = text.splitlines()[0].strip() if text else None
            except NetworkError as exc:
                errors.append(str(exc))
            except httpx.HTTPError as exc:  # pragma: no cover - fetch wraps these
                errors.append(f"https well-known: {type(exc).__name__}")
        if did is None or len(did) > 2048 or not is_did(did):
            raise IdentityError(handle, "handle did not resolve: " + "; ".join(errors))
        if handle not in (h.lower() for h in self.did_document(did).handles):
            raise IdentityError(
                handle, f"DID document of {did} does not claim this handle"
            )
        self._store(self._handles, handle, did)
        return did

    def resolve(self, identifier: str) -> DidDocument:
        """DID document for a DID or a handle (the AT-URI authority)."""
        did = (
            identifier
            if identifier.startswith("did:")
            else self.resolve_handle(identifier)
        )
        return self.did_document(did)

    def pds_endpoint(self, identifier: str) -> str:
        """PDS URL serving the repository of a DID or handle."""
        return self.resolve(identifier).pds
