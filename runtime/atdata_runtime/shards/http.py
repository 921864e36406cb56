"""Sequential, resumable reads of one HTTP(S) shard with httpx.

Shards are read front to back exactly once, so a plain streaming GET is all that is
needed: one request, chunks as the socket delivers them, no per-read round trips between threads (fsspec's
HTTP file pays one event-loop hand-off per ``read``; on a loopback PDS that capped
reads at about 25 MB/s, see ``scripts/bench_publish``).

A connection that drops mid-body is resumed where it stopped: the request is sent
again with ``Range: bytes=<position>-`` (RFC 9110 § 14.2). A ``206 Partial Content``
answer must start at that position (``Content-Range``, § 14.4); a server that
ignores ranges and answers ``200`` is read again from the start with the bytes
already delivered skipped. ``Accept-Encoding: identity`` keeps byte positions those
of the resource itself. Connection failures, 5xx and 429 are retried with the
runtime's :class:`~atdata_runtime.net.retry.RetryPolicy` (backoff with
jitter, server hints, bounded attempts and time).

Bounds (issue 14, findings 4 and 5). A shard can be gigabytes, so there is no total
size cap; instead the stream must keep making progress: **within every
``timeout`` seconds spent waiting for the network, at least ``stall_bytes``
(default 64 KiB) must arrive** (or the body must end), else
:class:`~atdata_runtime.net.errors.DeadlineExceededError` (``DEADLINE_EXCEEDED``).
The clock is wall-clock waiting time, not a socket read timeout, so a server that
trickles one byte at a time cannot reset it; a watchdog shuts the socket down when
the budget runs out, so a blocked read returns on time. Time the consumer spends
between reads does not count. The same budget bounds connecting and the response
headers of each attempt. With the defaults (30 s, 64 KiB) the slowest accepted
transfer is about 2 KiB/s.

Redirects are followed by hand (:func:`~atdata_runtime.net.fetch.next_hop`, as
:func:`~atdata_runtime.net.fetch.fetch` does), at most
:data:`~atdata_runtime.net.fetch.MAX_REDIRECTS`, only within the origin of the
shard URL (scheme, host, port), and each target is checked again like the shard
URL: a redirect elsewhere is
:class:`~atdata_runtime.net.errors.RedirectRefusedError`
(``REDIRECT_CROSS_ORIGIN``), so ``headers`` (an ``Authorization`` or ``X-Api-Key``)
never reach another origin. With ``trusted=False`` (a URL from a record) the URL
is checked like any URL from the network (:func:`~atdata_runtime.net.fetch.check_url`:
https, no private or loopback hosts, the connected address included). Every URL
in an error is redacted (:func:`~atdata_runtime.net.redact.redact_url`).
"""

from __future__ import annotations

import io
import math
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx

from ..net.errors import (
    DeadlineExceededError,
    HttpStatusError,
    NetworkError,
    RetryExhaustedError,
)
from ..net.fetch import (
    MAX_REDIRECTS,
    StallGuard,
    check_url,
    next_hop,
    send,
    ssl_context,
)
from ..net.redact import redact_url
from ..net.retry import RetryPolicy

__all__ = ["HttpShardStream"]

_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(?:\d+|\*)")

STALL_BYTES = 64 * 1024
"""Default ``stall_bytes``: bytes that must arrive per ``timeout`` seconds of
waiting (64 KiB, one socket read)."""


class HttpShardStream(io.RawIOBase):
    """A read-only, non-seekable binary stream over ``url`` (``http://`` or
    ``https://``). ``headers`` are sent with every request, to the shard's origin
    only; ``timeout`` (seconds, default 30) bounds connecting plus the response
    headers of each attempt, and each ``stall_bytes`` of the body (see the module
    docstring); ``retry`` bounds reconnections (default: 6 attempts within 120 s);
    ``trusted`` is ``False`` for a URL that came from the network. ``position`` is
    the number of bytes delivered; ``reconnects`` counts mid-body resumptions;
    ``length`` is the first full answer's ``Content-Length`` (``None`` when it
    announced none; a hint of the server's, never trusted as a bound).

    Raises :class:`~atdata_runtime.net.errors.HttpStatusError` (``HTTP_STATUS``)
    for a 4xx answer, :class:`~atdata_runtime.net.errors.RetryExhaustedError`
    when the retry budget runs out,
    :class:`~atdata_runtime.net.errors.DeadlineExceededError` when the stream
    stalls, :class:`~atdata_runtime.net.errors.RedirectRefusedError` for a redirect
    out of the origin, :class:`~atdata_runtime.net.errors.UnsafeUrlError` for a
    refused untrusted URL, and :class:`~atdata_runtime.net.errors.NetworkError`
    (rule ``HTTP_RANGE``) for a 206 answer that does not resume at ``position``."""

    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        stall_bytes: int = STALL_BYTES,
        trusted: bool = True,
    ) -> None:
        super().__init__()
        self.url = url
        self.position = 0
        self.reconnects = 0
        self.length: int | None = None
        self.timeout = timeout
        self.stall_bytes = stall_bytes
        self._shown = redact_url(url)
        self._trusted = trusted
        self._url = check_url(url, what="shard", trusted=trusted)
        self._headers = {**(headers or {}), "Accept-Encoding": "identity"}
        self._retry = retry or RetryPolicy(attempts=6, deadline=120.0)
        self._client = httpx.Client(
            follow_redirects=False,
            timeout=timeout,
            trust_env=trusted,
            verify=ssl_context(trusted),
        )
        self._guard = StallGuard(math.inf, url=url, check_peer=not trusted)
        self._guard.__enter__()
        self._waited = 0.0  # seconds waited for the network in this window
        self._window = 0  # bytes received in this window
        self._response: httpx.Response | None = None
        self._chunks: Iterator[bytes] = iter(())
        self._buffer = memoryview(b"")
        try:
            self._connect()
        except BaseException:
            self._guard.__exit__()
            self._client.close()
            raise

    def readable(self) -> bool:
        return True

    def _stalled(self) -> DeadlineExceededError:
        return DeadlineExceededError(
            self._shown,
            f"shard stalled: fewer than {self.stall_bytes} bytes in {self.timeout:g} s "
            f"of waiting, at byte {self.position}",
            what="shard",
            limit=self.timeout,
        )

    def _send(self, headers: dict[str, str]) -> httpx.Response:
        """Send the GET, following same-origin redirects only; the response is
        streaming and not a redirect."""
        current = self._url
        for hop in range(MAX_REDIRECTS + 1):
            request = self._client.build_request(
                "GET", current, headers=headers, extensions={"trace": self._guard.trace}
            )
            response = send(self._client, request, what="shard")
            try:
                target = next_hop(
                    current,
                    response.status_code,
                    response.headers.get("location"),
                    what="shard",
                    hop=hop,
                    trusted=self._trusted,
                )
            except BaseException:
                response.close()
                raise
            if target is None:
                return response
            response.close()
            current = target
        raise AssertionError("unreachable")  # pragma: no cover

    def _request(self) -> tuple[httpx.Response, Iterator[bytes]]:
        headers = dict(self._headers)
        if self.position:
            headers["Range"] = f"bytes={self.position}-"
        self._guard.arm(time.monotonic() + self.timeout)
        try:
            response = self._send(headers)
        except httpx.HTTPError:
            if self._guard.fired:
                raise self._stalled() from None
            raise
        finally:
            self._guard.disarm()
        try:
            if response.status_code >= 400:
                status = response.status_code
                # never read an error body: it is unbounded and not shown;
                # 5xx/429 are retried by the policy (classify reads the status)
                raise HttpStatusError(
                    self._shown, f"shard: HTTP {status}", response=response
                )
            chunks = response.iter_raw()
            skip = 0
            if self.position and response.status_code == 206:
                match = _CONTENT_RANGE.fullmatch(
                    response.headers.get("content-range", "")
                )
                if match is None or int(match.group(1)) != self.position:
                    raise NetworkError(
                        self._shown,
                        f"asked for bytes from {self.position}, got Content-Range "
                        f"{response.headers.get('content-range', '')[:100]!r}",
                        rule="HTTP_RANGE",
                    )
            elif self.position:
                skip = self.position  # range ignored: the whole body again
            while skip:
                chunk = self._next(chunks)
                if not chunk:
                    raise httpx.RemoteProtocolError(
                        "body ended before the resume point"
                    )
                if len(chunk) > skip:
                    self._buffer = memoryview(chunk)[skip:]
                    break
                skip -= len(chunk)
            if self.length is None and response.status_code == 200:
                try:
                    self.length = int(response.headers.get("content-length", ""))
                except ValueError:
                    self.length = None
            return response, chunks
        except BaseException:
            response.close()
            raise

    def _next(self, chunks: Iterator[bytes]) -> bytes:
        """The next chunk, waiting at most what is left of this window's budget;
        raises the stall error when the watchdog fired."""
        start = time.monotonic()
        self._guard.arm(start + max(0.0, self.timeout - self._waited))
        try:
            chunk = next(chunks, b"")
        except httpx.TransportError:
            if self._guard.fired:
                raise self._stalled() from None
            raise
        finally:
            self._guard.disarm()
            self._waited += time.monotonic() - start
        if self._guard.fired or self._waited >= self.timeout:
            raise self._stalled()
        self._window += len(chunk)
        if self._window >= self.stall_bytes:
            self._window, self._waited = 0, 0.0
        return chunk

    def _connect(self) -> None:
        self._response, self._chunks = self._retry.run(self._request, what=self._shown)

    def _resume(self, exc: Exception) -> None:
        if self._response is not None:
            self._response.close()
        self.reconnects += 1
        if self.reconnects >= self._retry.attempts:
            raise RetryExhaustedError(
                self._shown,
                f"connection dropped {self.reconnects} times "
                f"(last: {type(exc).__name__}) at byte {self.position}",
            ) from exc
        self._retry.stats[f"resume {type(exc).__name__}"] += 1
        self._retry.sleep(self._retry.backoff(self.reconnects - 1))
        self._connect()

    def _fill(self) -> bool:
        """Make ``_buffer`` non-empty (resuming a dropped connection); ``False``
        at the end of the body."""
        while not self._buffer:
            try:
                chunk = self._next(self._chunks)
            except httpx.TransportError as exc:
                self._resume(exc)
                continue
            if not chunk:
                return False
            self._buffer = memoryview(chunk)
        return True

    def read_chunk(self) -> memoryview:
        """The next bytes as the socket delivered them (at most one network chunk,
        64 KiB with httpcore), without copying them into a caller's buffer; an
        empty view at the end. The view is valid until the next call. Same
        errors, bounds and resumption as :meth:`readinto`."""
        if not self._fill():
            return memoryview(b"")
        chunk, self._buffer = self._buffer, memoryview(b"")
        self.position += len(chunk)
        return chunk

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` with up to ``len(buffer)`` bytes; 0 at the end."""
        if not self._fill():
            return 0
        n = min(len(buffer), len(self._buffer))
        buffer[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        self.position += n
        return n

    def close(self) -> None:
        if not self.closed:
            guard = getattr(self, "_guard", None)
            if guard is not None:
                guard.__exit__()
            response = getattr(self, "_response", None)
            if response is not None:
                response.close()
            client = getattr(self, "_client", None)
            if client is not None:
                client.close()
        super().close()
