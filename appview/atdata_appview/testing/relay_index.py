"""A relay's collection index over a real PDS, for tests and benchmarks of the
relay path of the backfill (:func:`atdata_appview.backfill.list_repos` with
``kind="relay"``): no relay can run here, so this serves the one relay method the
backfill calls, computed from what a real PDS says.

``com.atproto.sync.listReposByCollection?collection=&limit=&cursor=`` (the
official Lexicon; parameters validated with its generated model, errors in the
XRPC shape ``{"error", "message"}``): every repository of the PDS
(``com.atproto.sync.listRepos``, all pages) whose ``com.atproto.repo.describeRepo``
lists ``collection``, in DID order; the cursor is the last DID of a page. Computed
afresh on every request, so it follows the PDS as records are published. Every
request's path and headers are kept in :attr:`RelayIndex.requests` (tests check
that no credential was sent). Any other path is 404 ``MethodNotImplemented``.

>>> with RelayIndex(net.pds_url) as relay:                 # doctest: +SKIP
...     relay.url
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import urlsplit

import httpx
from atdata_ingest.lexicons.com.atproto.sync.list_repos_by_collection import (
    ListReposByCollectionParams,
)
from pydantic import ValidationError

__all__ = ["RelayIndex"]

_METHOD = "/xrpc/com.atproto.sync.listReposByCollection"


class RelayIndex:
    """A loopback HTTP server answering ``listReposByCollection`` from the PDS at
    ``pds_url``. ``url`` is its origin once started (``http://127.0.0.1:<port>``).
    Use as a context manager, or :meth:`start` / :meth:`stop`."""

    def __init__(self, pds_url: str, *, timeout: float = 30.0) -> None:
        self.pds_url = pds_url.rstrip("/")
        self.timeout = timeout
        self.requests: list[dict[str, Any]] = []
        """``{"path": …, "headers": {name: value}}`` of each request received."""
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def repos_with(self, collection: str) -> list[str]:
        """DIDs of the PDS's repositories holding ``collection``, sorted."""
        dids: list[str] = []
        with httpx.Client(base_url=self.pds_url, timeout=self.timeout) as http:
            cursor: str | None = None
            for _ in range(10_000):
                params = {"limit": "1000"}
                if cursor:
                    params["cursor"] = cursor
                page = http.get("/xrpc/com.atproto.sync.listRepos", params=params)
                page.raise_for_status()
                body = page.json()
                dids.extend(r["did"] for r in body["repos"] if r.get("active", True))
                cursor = body.get("cursor")
                if not cursor or not body["repos"]:
                    break
            held = []
            for did in dids:
                described = http.get(
                    "/xrpc/com.atproto.repo.describeRepo", params={"repo": did}
                )
                if described.status_code == 200 and collection in described.json().get(
                    "collections", []
                ):
                    held.append(did)
        return sorted(held)

    def _answer(self, query: str) -> tuple[int, dict[str, Any]]:
        try:
            params = ListReposByCollectionParams.from_query(query)
        except ValidationError as exc:
            first = exc.errors(include_input=False, include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            return 400, {
                "error": "InvalidRequest",
                "message": f"{where}: {first['msg']}",
            }
        dids = self.repos_with(params.collection)
        if params.cursor:
            dids = [d for d in dids if d > params.cursor]
        page = dids[: params.limit]
        out: dict[str, Any] = {"repos": [{"did": d} for d in page]}
        if len(dids) > params.limit:
            out["cursor"] = page[-1]
        return 200, out

    def start(self) -> Self:
        """Serve on a free loopback port (a daemon thread)."""
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                with relay._lock:
                    relay.requests.append(
                        {"path": self.path, "headers": dict(self.headers.items())}
                    )
                if url.path != _METHOD:
                    status, body = (
                        404,
                        {
                            "error": "MethodNotImplemented",
                            "message": "this test relay serves listReposByCollection only",
                        },
                    )
                else:
                    try:
                        status, body = relay._answer(url.query)
                    except httpx.HTTPError as exc:
                        status, body = (
                            502,
                            {
                                "error": "UpstreamFailure",
                                "message": f"the PDS failed: {type(exc).__name__}",
                            },
                        )
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
