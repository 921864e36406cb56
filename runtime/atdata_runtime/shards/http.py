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
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

import httpx

from ..net.errors import NetworkError, RetryExhaustedError
from ..net.retry import RetryPolicy

__all__ = ["HttpShardStream"]

_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(?:\d+|\*)")


class HttpShardStream(io.RawIOBase):
    """A read-only, non-seekable binary stream over ``url`` (``http://`` or
    ``https://``). ``headers`` are sent with every request; ``timeout`` (seconds)
    bounds connecting and each read; ``retry`` bounds reconnections (default: 6
    attempts within 120 s). ``position`` is the number of bytes delivered;
    ``reconnects`` counts mid-body resumptions.

    Raises ``httpx.HTTPStatusError`` for a 4xx answer,
    :class:`~atdata_runtime.net.errors.RetryExhaustedError` when the retry
    budget runs out, and :class:`~atdata_runtime.net.errors.NetworkError`
    (rule ``HTTP_RANGE``) for a 206 answer that does not resume at ``position``."""

    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self.position = 0
        self.reconnects = 0
        self._headers = {"Accept-Encoding": "identity", **(headers or {})}
        self._retry = retry or RetryPolicy(attempts=6, deadline=120.0)
        self._client = httpx.Client(follow_redirects=True, timeout=timeout)
        self._response: httpx.Response | None = None
        self._chunks: Iterator[bytes] = iter(())
        self._buffer = memoryview(b"")
        try:
            self._connect()
        except BaseException:
            self._client.close()
            raise

    def readable(self) -> bool:
        return True

    def _request(self) -> tuple[httpx.Response, Iterator[bytes]]:
        headers = dict(self._headers)
        if self.position:
            headers["Range"] = f"bytes={self.position}-"
        request = self._client.build_request("GET", self.url, headers=headers)
        response = self._client.send(request, stream=True)
        try:
            if response.status_code >= 400:
                response.read()
                response.raise_for_status()
            chunks = response.iter_raw()
            skip = 0
            if self.position and response.status_code == 206:
                match = _CONTENT_RANGE.fullmatch(
                    response.headers.get("content-range", "")
                )
                if match is None or int(match.group(1)) != self.position:
                    raise NetworkError(
                        self.url,
                        f"asked for bytes from {self.position}, got Content-Range "
                        f"{response.headers.get('content-range')!r}",
                        rule="HTTP_RANGE",
                    )
            elif self.position:
                skip = self.position  # range ignored: the whole body again
            while skip:
                chunk = next(chunks, b"")
                if not chunk:
                    raise httpx.RemoteProtocolError(
                        "body ended before the resume point"
                    )
                if len(chunk) > skip:
                    self._buffer = memoryview(chunk)[skip:]
                    break
                skip -= len(chunk)
            return response, chunks
        except BaseException:
            response.close()
            raise

    def _connect(self) -> None:
        self._response, self._chunks = self._retry.run(self._request, what=self.url)

    def _resume(self, exc: Exception) -> None:
        if self._response is not None:
            self._response.close()
        self.reconnects += 1
        if self.reconnects >= self._retry.attempts:
            raise RetryExhaustedError(
                self.url,
                f"connection dropped {self.reconnects} times "
                f"(last: {type(exc).__name__}) at byte {self.position}",
            ) from exc
        self._retry.stats[f"resume {type(exc).__name__}"] += 1
        self._retry.sleep(self._retry.backoff(self.reconnects - 1))
        self._connect()

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` with up to ``len(buffer)`` bytes; 0 at the end."""
        while not self._buffer:
            try:
                chunk = next(self._chunks, b"")
            except httpx.TransportError as exc:
                self._resume(exc)
                continue
            if not chunk:
                return 0
            self._buffer = memoryview(chunk)
        n = min(len(buffer), len(self._buffer))
        buffer[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        self.position += n
        return n

    def close(self) -> None:
        if not self.closed:
            if self._response is not None:
                self._response.close()
            self._client.close()
        super().close()
