"""HttpShardStream against a real HTTP server on loopback that drops connections
mid-body, honours or ignores ``Range``, or answers a wrong ``Content-Range``."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from atdata_runtime.atmosphere.errors import AtmosphereError, RetryExhaustedError
from atdata_runtime.net.errors import HttpStatusError
from atdata_runtime.net.retry import RetryPolicy
from atdata_runtime.shards.http import HttpShardStream

BODY = os.urandom(3 * (1 << 20) + 12345)


@dataclass
class Behaviour:
    drops: int = 0  # the first N answers stop after `cut` bytes of body
    cut: int = 700_000
    ranges: bool = True  # honour Range with 206
    wrong_range: bool = False
    requests: list[str | None] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[tuple[str, Behaviour]]:
    behaviour = Behaviour()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path != "/shard.tar":
                self.send_error(404)
                return
            rng = self.headers.get("Range")
            behaviour.requests.append(rng)
            start = 0
            if rng and behaviour.ranges:
                start = int(rng.removeprefix("bytes=").rstrip("-"))
                self.send_response(206)
                first = start + 1 if behaviour.wrong_range else start
                self.send_header(
                    "Content-Range", f"bytes {first}-{len(BODY) - 1}/{len(BODY)}"
                )
            else:
                self.send_response(200)
            body = BODY[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if behaviour.drops > 0:
                behaviour.drops -= 1
                self.wfile.write(body[: behaviour.cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}", behaviour
    finally:
        srv.shutdown()
        srv.server_close()


def _policy(attempts: int = 6) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, sleep=lambda s: None)


def _read_all(stream: HttpShardStream, size: int = 65_536) -> bytes:
    parts = []
    while chunk := stream.read(size):
        parts.append(chunk)
    return b"".join(parts)


def test_reads_whole_body(server: tuple[str, Behaviour]) -> None:
    base, behaviour = server
    with HttpShardStream(f"{base}/shard.tar", retry=_policy()) as s:
        assert _read_all(s) == BODY
        assert s.reconnects == 0 and s.position == len(BODY)
    assert behaviour.requests == [None]


@pytest.mark.parametrize("ranges", [True, False])
def test_resumes_after_dropped_connections(
    server: tuple[str, Behaviour], ranges: bool
) -> None:
    base, behaviour = server
    behaviour.drops, behaviour.ranges = 2, ranges
    with HttpShardStream(f"{base}/shard.tar", retry=_policy()) as s:
        assert _read_all(s, 100_003) == BODY
        assert s.reconnects == 2
    assert behaviour.requests[0] is None
    # Each resume asks for the bytes from where the stream stopped.
    assert all(r is not None and r.startswith("bytes=") for r in behaviour.requests[1:])
    assert len(behaviour.requests) == 3


def test_gives_up_after_the_budget(server: tuple[str, Behaviour]) -> None:
    base, behaviour = server
    behaviour.drops = 100
    stream = HttpShardStream(f"{base}/shard.tar", retry=_policy(attempts=3))
    with stream, pytest.raises(RetryExhaustedError, match="dropped 3 times"):
        _read_all(stream)


def test_wrong_content_range_is_refused(server: tuple[str, Behaviour]) -> None:
    base, behaviour = server
    behaviour.drops, behaviour.wrong_range = 1, True
    stream = HttpShardStream(f"{base}/shard.tar", retry=_policy())
    with stream, pytest.raises(AtmosphereError, match="HTTP_RANGE"):
        _read_all(stream)


def test_client_errors_are_not_retried(server: tuple[str, Behaviour]) -> None:
    base, behaviour = server
    with pytest.raises(HttpStatusError, match=r"HTTP 404 \[HTTP_STATUS\]"):
        HttpShardStream(f"{base}/missing.tar", retry=_policy())
    assert behaviour.requests == []
