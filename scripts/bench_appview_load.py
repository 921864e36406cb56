"""Load generator of ``scripts/bench_appview``: a separate process that sends XRPC
queries to one server on loopback over ``--concurrency`` keep-alive HTTP/1.1
connections and prints, per method, what it measured as one JSON object on
stdout.

Plain asyncio streams, not an HTTP client library: a request costs the client a
few tens of microseconds, so on a 2-core machine the load generator takes as
little CPU from the server as it can. Each connection sends a request, reads the
whole response (``Content-Length`` or chunked), then sends the next (no
pipelining). Latency is measured per request in this process, from just before
the request is written to the last byte of its response
(``time.perf_counter_ns``).

Input: ``--workload FILE``, JSON ``{method: [{"path": "/xrpc/...?...", "page":
bool}, ...]}`` (:meth:`atdata_appview.testing.seed.Seed.workload`). A worker picks
requests at random (``--seed``); a ``page`` request is followed by a second one
for the next page, with the first response's ``cursor`` (both are counted).

Per ``--method`` (in the order given): ``--warmup`` seconds of load that is not
recorded, then ``--duration`` seconds measured. Output per method: ``requests``,
``errors`` (a status other than 200, a malformed response or a dropped
connection; ``error_samples``: the first five, status and body start),
``seconds`` (first request sent to last response of the measured phase),
``rps``, latency ``p50_ms``, ``p90_ms``, ``p99_ms``, ``max_ms``, ``mean_ms``,
``bytes`` (response bodies), ``client_cpu_ms_per_request`` (this process's CPU
per request: what the load generator takes from the server's cores),
``warmup_requests``/``warmup_errors``/``warmup_error_samples``.

    python scripts/bench_appview_load.py --url http://127.0.0.1:8080 \\
        --workload w.json --method searchDatasets --concurrency 16 --duration 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import resource
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

MAX_BODY = 64 * 1024 * 1024


class HttpError(Exception):
    """A response that could not be read (malformed, or the connection closed)."""


@dataclass
class Stats:
    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    samples: list[str] = field(default_factory=list)
    nbytes: int = 0
    first_ns: int = 0
    last_ns: int = 0

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.samples) < 5:
            self.samples.append(what[:300])


class Connection:
    """One keep-alive HTTP/1.1 connection (reopened after a close)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.head = f"Host: {host}:{port}\r\nAccept: application/json\r\n\r\n".encode()

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def get(self, path: str) -> tuple[int, bytes]:
        """``GET path``: ``(status, body)``; :class:`HttpError` when the response
        cannot be read (the connection is then closed)."""
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        try:
            self.writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\n" + self.head)
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            length = -1
            chunked = close = False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                value = value.strip()
                if name == "content-length":
                    length = int(value)
                elif name == "transfer-encoding" and "chunked" in value.lower():
                    chunked = True
                elif name == "connection" and value.lower() == "close":
                    close = True
            if chunked:
                parts = []
                while True:
                    size_line = await self.reader.readuntil(b"\r\n")
                    size = int(size_line.split(b";")[0], 16)
                    if size == 0:
                        await self.reader.readuntil(b"\r\n")
                        break
                    if size > MAX_BODY:
                        raise HttpError("chunk too large")
                    parts.append(await self.reader.readexactly(size))
                    await self.reader.readexactly(2)
                body = b"".join(parts)
            elif length >= 0:
                if length > MAX_BODY:
                    raise HttpError("body too large")
                body = await self.reader.readexactly(length)
            else:
                body = await self.reader.read(MAX_BODY)
                close = True
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, IndexError) as exc:  # fmt: skip
            self.close()
            raise HttpError(f"{type(exc).__name__}: {exc}") from None
        if close:
            self.close()
        return status, body


def _percentile(sorted_ns: list[int], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..1) of sorted nanoseconds, in ms."""
    if not sorted_ns:
        return 0.0
    k = max(0, min(len(sorted_ns) - 1, math.ceil(q * len(sorted_ns)) - 1))
    return sorted_ns[k] / 1e6


async def _one(conn: Connection, path: str, stats: Stats | None) -> bytes | None:
    t0 = time.perf_counter_ns()
    try:
        status, body = await conn.get(path)
    except HttpError as exc:
        if stats is not None:
            stats.error(f"{path[:120]}: {exc}")
        return None
    t1 = time.perf_counter_ns()
    if stats is not None:
        if status != 200:
            stats.error(f"{status} {path[:160]}: {body[:200]!r}")
        else:
            stats.latencies_ns.append(t1 - t0)
            stats.nbytes += len(body)
            if stats.first_ns == 0 or t0 < stats.first_ns:
                stats.first_ns = t0
            stats.last_ns = max(stats.last_ns, t1)
    return body if status == 200 else None


async def _worker(
    conn: Connection,
    requests: list[dict[str, Any]],
    rng: random.Random,
    deadline: float,
    stats: Stats,
    counter: list[int],
) -> None:
    while time.perf_counter() < deadline:
        req = rng.choice(requests)
        path = req["path"]
        counter[0] += 1
        body = await _one(conn, path, stats)
        if req.get("page") and body is not None and time.perf_counter() < deadline:
            try:
                cursor = json.loads(body).get("cursor")
            except ValueError:
                stats.error(f"not JSON: {path[:160]}")
                continue
            if cursor:
                counter[0] += 1
                await _one(conn, f"{path}&cursor={quote(cursor, safe='')}", stats)


async def _phase(
    conns: list[Connection],
    requests: list[dict[str, Any]],
    seconds: float,
    seed: int,
) -> tuple[Stats, int]:
    stats = Stats()
    counter = [0]
    deadline = time.perf_counter() + seconds
    await asyncio.gather(
        *(
            _worker(
                c, requests, random.Random(seed * 1000 + i), deadline, stats, counter
            )
            for i, c in enumerate(conns)
        )
    )
    return stats, counter[0]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    workload = json.loads(Path(args.workload).read_text(encoding="utf-8"))
    conns = [Connection(host, port) for _ in range(args.concurrency)]
    for c in conns:
        await c.open()
    out: dict[str, Any] = {}
    try:
        for n, method in enumerate(args.method):
            requests = workload.get(method) or []
            if not requests:
                out[method] = {"requests": 0, "errors": 0, "skipped": "no requests"}
                continue
            warm = Stats()
            warm_n = 0
            if args.warmup > 0:
                warm, warm_n = await _phase(
                    conns, requests, args.warmup, args.seed + 7 * n
                )
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            stats, _sent = await _phase(conns, requests, args.duration, args.seed + n)
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            client_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (
                cpu1.ru_stime - cpu0.ru_stime
            )
            lat = sorted(stats.latencies_ns)
            ok = len(lat)
            seconds = (stats.last_ns - stats.first_ns) / 1e9 if ok else args.duration
            out[method] = {
                "requests": ok + stats.errors,
                "ok": ok,
                "errors": stats.errors,
                "error_samples": stats.samples,
                "seconds": seconds,
                "rps": ok / seconds if seconds > 0 else 0.0,
                "p50_ms": _percentile(lat, 0.50),
                "p90_ms": _percentile(lat, 0.90),
                "p99_ms": _percentile(lat, 0.99),
                "max_ms": lat[-1] / 1e6 if lat else 0.0,
                "mean_ms": sum(lat) / ok / 1e6 if ok else 0.0,
                "bytes": stats.nbytes,
                "concurrency": args.concurrency,
                "client_cpu_ms_per_request": client_cpu
                / max(1, ok + stats.errors)
                * 1000,
                "warmup_requests": warm_n,
                "warmup_errors": warm.errors,
                "warmup_error_samples": warm.samples,
            }
    finally:
        for c in conns:
            c.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="http://127.0.0.1:PORT")
    ap.add_argument("--workload", required=True, help="JSON file of requests")
    ap.add_argument("--method", action="append", required=True)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds measured")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds not measured")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.concurrency < 1 or args.duration <= 0:
        ap.error("--concurrency >= 1 and --duration > 0")
    result = asyncio.run(run(args))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
