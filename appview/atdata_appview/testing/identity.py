"""A stand-in for the public internet's identity services, for tests and
benchmarks whose DIDs exist on no network (seeded ``did:plc:`` DIDs).

:class:`IdentityDirectory` serves, on a loopback port, what the network would
say about each seeded account (``handles``: DID → handle, the *truth*, whatever
the log's ``#identity`` rows claim):

* ``GET /{did}``: the DID document, as a PLC directory serves it (``id``,
  ``alsoKnownAs: ["at://{handle}"]``, an ``#atproto_pds`` service at
  :data:`PDS_ENDPOINT`); 404 for a DID it does not know;
* ``GET /xrpc/com.atproto.identity.resolveHandle?handle=H``: ``{"did": ...}``,
  as a PDS answers it; 400 ``HandleNotFound`` for a handle it does not know.

Its :meth:`~IdentityDirectory.resolver` is the runtime's resolver configured as
``atdata-appview`` configures it (``plc_url`` and ``handle_service`` both this
server), so :func:`verify_all` runs the real :func:`atdata_appview.handles.
verify_handles` against it. Tests on the real local network (PDS + PLC) use the
real services instead.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from atdata_runtime.atmosphere.identity import IdentityResolver

from ..handles import VerifyStats, make_resolver, verify_handles

__all__ = ["PDS_ENDPOINT", "IdentityDirectory", "verify_all"]

PDS_ENDPOINT = "https://pds.example.org"
"""The ``#atproto_pds`` endpoint of every document served (never contacted)."""


class IdentityDirectory:
    """A PLC directory and handle service on ``127.0.0.1`` (module doc) telling
    ``handles`` (DID → handle; :meth:`set` changes one). A context manager;
    :attr:`url` is its base URL; :attr:`requests` counts the requests served."""

    def __init__(self, handles: Mapping[str, str] | None = None) -> None:
        self.handles: dict[str, str] = {
            did: h.lower() for did, h in (handles or {}).items()
        }
        self.requests = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with outer._lock:
                    outer.requests += 1
                    status, body = outer._answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="identity-directory", daemon=True
        )
        self._thread.start()

    def _answer(self, path: str) -> tuple[int, Any]:
        parts = urllib.parse.urlsplit(path)
        if parts.path == "/xrpc/com.atproto.identity.resolveHandle":
            handle = (urllib.parse.parse_qs(parts.query).get("handle") or [""])[0]
            for did, h in self.handles.items():
                if h == handle.lower():
                    return 200, {"did": did}
            return 400, {"error": "HandleNotFound", "message": "unknown handle"}
        did = urllib.parse.unquote(parts.path.lstrip("/"))
        if did in self.handles:
            return 200, {
                "@context": ["https://www.w3.org/ns/did/v1"],
                "id": did,
                "alsoKnownAs": [f"at://{self.handles[did]}"],
                "service": [
                    {
                        "id": "#atproto_pds",
                        "type": "AtprotoPersonalDataServer",
                        "serviceEndpoint": PDS_ENDPOINT,
                    }
                ],
            }
        return 404, {"message": "DID not registered"}

    def set(self, did: str, handle: str | None) -> None:
        """What the network now says of ``did``: ``handle`` (``None``: nothing)."""
        with self._lock:
            if handle is None:
                self.handles.pop(did, None)
            else:
                self.handles[did] = handle.lower()

    def resolver(self, *, timeout: float = 5.0) -> IdentityResolver:
        """The runtime's resolver with this server as PLC directory and handle
        service (as :func:`atdata_appview.handles.make_resolver` builds it)."""
        return make_resolver(self.url, self.url, timeout=timeout)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def verify_all(
    pool: Any, resolver: IdentityResolver, *, max_rounds: int = 1000
) -> VerifyStats:
    """:func:`~atdata_appview.handles.verify_handles` until a round finds no
    work (at most ``max_rounds``); the stats summed. Raises ``RuntimeError``
    when work remains after ``max_rounds``."""
    total = VerifyStats()
    for _ in range(max_rounds):
        stats = await verify_handles(pool, resolver)
        if not stats.checked:
            return total
        total.add(stats)
    raise RuntimeError(f"handle verification not done after {max_rounds} rounds")
