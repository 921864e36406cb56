"""Identity: handle → DID → DID document → PDS endpoint (AT Protocol "DID" and
"Handle" specs), with a TTL cache.

* did:plc documents come from a PLC directory (``plc_url``, default
  ``https://plc.directory``): ``GET {plc_url}/{did}``.
* did:web documents come from ``https://{host}/.well-known/did.json`` (a ``%3A``
  in the method-specific id is a port; ``http`` only for ``localhost``, as the
  atproto reference implementation allows in development).
* A handle resolves by the HTTPS well-known method
  (``https://{handle}/.well-known/atproto-did``) or, when ``handle_service`` is set,
  by ``com.atproto.identity.resolveHandle`` on that service (how a PDS resolves
  handles it hosts, e.g. ``.test`` handles on a local PDS). Either way the DID
  document must list ``at://{handle}`` in ``alsoKnownAs`` (bidirectional check);
  otherwise :class:`~.errors.IdentityError`.
* The PDS endpoint is the ``serviceEndpoint`` of the service with id ``#atproto_pds``
  and type ``AtprotoPersonalDataServer``.

Entries live ``ttl`` seconds; failures are not cached. Lookups retry like every
other request (:class:`~.retry.RetryPolicy`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpx

from ..lex.formats import is_did, is_handle
from ..net.retry import RetryPolicy
from .errors import IdentityError

__all__ = ["DidDocument", "IdentityResolver"]


@dataclass(frozen=True)
class DidDocument:
    """The parts of a DID document the runtime uses: ``did``, ``pds`` (endpoint
    URL, no trailing slash), ``handles`` (from ``alsoKnownAs``) and the raw ``doc``."""

    did: str
    pds: str
    handles: tuple[str, ...]
    doc: dict[str, Any]


class IdentityResolver:
    """Resolves identities with a TTL cache (thread-safe). ``overrides`` maps a DID
    to a PDS URL without any lookup (for tests and private deployments)."""

    def __init__(
        self,
        *,
        plc_url: str = "https://plc.directory",
        handle_service: str | None = None,
        ttl: float = 3600.0,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.plc_url = plc_url.rstrip("/")
        self.handle_service = handle_service.rstrip("/") if handle_service else None
        self.ttl = ttl
        self.timeout = timeout
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

    def _get_json(self, url: str, params: dict[str, str] | None = None) -> Any:
        def once() -> Any:
            self.lookups += 1
            resp = httpx.get(
                url, params=params, timeout=self.timeout, follow_redirects=True
            )
            if resp.status_code == 429 or resp.status_code >= 500:
                resp.raise_for_status()
            return resp

        resp = self.retry.run(once, what=url)
        if resp.status_code != 200:
            raise IdentityError(url, f"HTTP {resp.status_code}: {resp.text[:200]}")
        try:
            return resp.json()
        except ValueError as exc:
            raise IdentityError(url, "response is not JSON") from exc

    def did_document(self, did: str) -> DidDocument:
        """The DID document of ``did`` (did:plc or did:web). Raises
        :class:`IdentityError` when it cannot be fetched or names no PDS."""
        hit = self._cached(self._docs, did)
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        if not is_did(did):
            raise IdentityError(did, "not a valid DID")
        if did.startswith("did:plc:"):
            url = f"{self.plc_url}/{did}"
        elif did.startswith("did:web:"):
            msid = did[len("did:web:") :]
            if ":" in msid:
                raise IdentityError(
                    did, "did:web with a path is not allowed in AT Protocol"
                )
            host = unquote(msid)
            scheme = "http" if host.split(":")[0] == "localhost" else "https"
            url = f"{scheme}://{host}/.well-known/did.json"
        else:
            raise IdentityError(
                did, "only did:plc and did:web are AT Protocol DID methods"
            )
        doc = self._get_json(url)
        if not isinstance(doc, dict) or doc.get("id") != did:
            raise IdentityError(did, f"document at {url} is not the document of {did}")
        pds = None
        for service in doc.get("service") or []:
            if (
                isinstance(service, dict)
                and str(service.get("id", "")).endswith("#atproto_pds")
                and service.get("type") == "AtprotoPersonalDataServer"
                and isinstance(service.get("serviceEndpoint"), str)
            ):
                pds = service["serviceEndpoint"].rstrip("/")
        if pds is None:
            raise IdentityError(did, "DID document has no #atproto_pds service")
        handles = tuple(
            aka[len("at://") :]
            for aka in doc.get("alsoKnownAs") or []
            if isinstance(aka, str) and aka.startswith("at://")
        )
        result = DidDocument(did=did, pds=pds, handles=handles, doc=doc)
        self._store(self._docs, did, result)
        return result

    def resolve_handle(self, handle: str) -> str:
        """The DID of ``handle``, verified against its DID document."""
        handle = handle.lower()
        hit = self._cached(self._handles, handle)
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        if not is_handle(handle):
            raise IdentityError(handle, "not a valid handle")
        did: str | None = None
        errors = []
        if self.handle_service is not None:
            try:
                data = self._get_json(
                    f"{self.handle_service}/xrpc/com.atproto.identity.resolveHandle",
                    {"handle": handle},
                )
                did = data.get("did") if isinstance(data, dict) else None
            except Exception as exc:  # noqa: BLE001 - try the next method
                errors.append(str(exc))
        if did is None:
            try:
                resp = httpx.get(
                    f"https://{handle}/.well-known/atproto-did", timeout=self.timeout
                )
                self.lookups += 1
                if resp.status_code == 200:
                    did = (
                        resp.text.strip().splitlines()[0] if resp.text.strip() else None
                    )
            except httpx.HTTPError as exc:
                errors.append(f"https well-known: {type(exc).__name__}")
        if did is None or not is_did(did):
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
