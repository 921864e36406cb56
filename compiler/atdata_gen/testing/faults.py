"""A fault-injecting HTTP proxy on loopback, between a client and a real PDS.

Each request gets one action from a seeded random schedule (``rates``):

* ``pass``: forwarded unchanged;
* ``500_before`` / ``500_after``: answered 500 without forwarding / after the PDS
  has processed the request (the write happened, its response is lost);
* ``429``: answered 429 with ``ratelimit-reset`` (Unix seconds) and ``retry-after``;
* ``reset_before`` / ``reset_after``: the connection is aborted (TCP RST) without
  forwarding / after forwarding;
* ``stall_after``: forwarded, then the response is held ``stall`` seconds (past the
  client's timeout) before it is sent;
* ``tamper``: forwarded, and a string in the returned record ``value`` is altered
  (what a malicious or broken server could do; the CID no longer matches).

``counts`` records how many of each were injected. Runs its own event loop in a
daemon thread; use as a context manager.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from typing import Any, Self

import aiohttp
from aiohttp import web

from .localnet import free_port

__all__ = ["FaultProxy"]

_HOP = {
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "upgrade",
}


class FaultProxy:
    """Proxy ``upstream`` at ``url``; ``rates`` maps action → probability (the rest
    pass); only requests whose path contains one of ``only`` get faults (default:
    every XRPC call)."""

    def __init__(
        self,
        upstream: str,
        rates: dict[str, float],
        *,
        seed: int = 0,
        stall: float = 3.0,
        only: tuple[str, ...] = ("/xrpc/",),
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.rates = dict(rates)
        self.rng = random.Random(seed)
        self.stall = stall
        self.only = only
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.counts: Counter[str] = Counter()
        self.enabled = True
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def _pick(self, path: str) -> str:
        if not self.enabled or not any(o in path for o in self.only):
            return "pass"
        x = self.rng.random()
        for action, p in self.rates.items():
            if x < p:
                return action
            x -= p
        return "pass"

    async def _forward(
        self, request: web.Request, body: bytes
    ) -> tuple[int, Any, bytes]:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
        ) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}
            return resp.status, out, data

    def _abort(self, request: web.Request) -> web.Response:
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise ConnectionResetError("fault proxy: connection reset")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        action = self._pick(request.path)
        self.counts[action] += 1
        if action == "500_before":
            return web.json_response({"error": "InternalServerError"}, status=500)
        if action == "429":
            reset = int(time.time()) + 1
            return web.json_response(
                {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"},
                status=429,
                headers={"ratelimit-reset": str(reset), "retry-after": "1"},
            )
        if action == "reset_before":
            return self._abort(request)
        status, headers, data = await self._forward(request, body)
        if action == "500_after":
            return web.json_response({"error": "InternalServerError"}, status=500)
        if action == "reset_after":
            return self._abort(request)
        if action == "stall_after":
            await asyncio.sleep(self.stall)
        if action == "tamper" and status == 200:
            data = _tamper(data)
        return web.Response(status=status, headers=headers, body=data)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=120), auto_decompress=True
            )
            app = web.Application(client_max_size=200 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def start(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            if self._session is not None:
                await self._session.close()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tamper(data: bytes) -> bytes:
    try:
        body = json.loads(data)
    except ValueError:
        return data
    for record in [body, *body.get("records", [])] if isinstance(body, dict) else []:
        value = record.get("value") if isinstance(record, dict) else None
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, str) and not key.startswith("$"):
                    value[key] = item + " (tampered)"
                    break
    return json.dumps(body).encode()
