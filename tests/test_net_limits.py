"""Finding 4 of issue 14 (no size or deadline limits on network reads), the
cross-origin header leak of the shard stream (finding 5's redirect half), and
credentials in URLs in runtime error messages. Loopback servers this test starts
trickle bytes, block, send huge or compressed bodies, and redirect to a second
server that records what reached it."""

from __future__ import annotations

import gzip
import inspect
import io
import math
import multiprocessing
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from atdata_runtime import net
from atdata_runtime.atmosphere.identity import IdentityResolver
from atdata_runtime.net import redact_url
from atdata_runtime.net.errors import (
    DeadlineExceededError,
    NetworkError,
    RedirectRefusedError,
    ResponseTooLargeError,
    UnsafeUrlError,
)
from atdata_runtime.net.fetch import (
    INSECURE_LOOPBACK_ENV,
    MAX_DID_DOCUMENT_BYTES,
    ResponseFormatError,
    StallGuard,
    fetch,
)
from atdata_runtime.net.retry import RetryPolicy
from atdata_runtime.shards.http import HttpShardStream

from tests.fuzz.bounded import run_bounded

Behaviour = Callable[["Conn"], None]


@dataclass
class Conn:
    """One accepted connection: the request line's path, its headers, the socket."""

    path: str
    headers: dict[str, str]
    wfile: Any
    closed: bool = False

    def send(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def head(self, status: int = 200, headers: dict[str, str] | None = None) -> None:
        lines = [f"HTTP/1.1 {status} X"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode())

    def body(
        self, data: bytes, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        self.head(status, {"Content-Length": str(len(data)), **(headers or {})})
        self.send(data)


@dataclass
class Server:
    port: int
    routes: dict[str, Behaviour] = field(default_factory=dict)
    hits: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _start() -> tuple[Server, Callable[[], None]]:
    holder: list[Server] = []

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            server = holder[0]
            while True:
                line = self.rfile.readline(65536).decode("latin-1")
                if not line:
                    return
                headers: dict[str, str] = {}
                while (h := self.rfile.readline(65536).decode("latin-1")) not in (
                    "\r\n",
                    "\n",
                    "",
                ):
                    name, _, value = h.partition(":")
                    headers[name.strip().lower()] = value.strip()
                path = line.split(" ")[1] if " " in line else "/"
                server.hits.append((path, headers))
                route = server.routes.get(path.split("?")[0])
                conn = Conn(path, headers, self.wfile)
                try:
                    if route is None:
                        conn.body(b"not found", 404)
                    else:
                        route(conn)
                except OSError:
                    return
                if conn.closed:
                    return  # the body ends with the connection

    class Srv(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    srv = Srv(("127.0.0.1", 0), Handler)
    holder.append(Server(port=srv.server_address[1]))
    threading.Thread(
        target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()

    def stop() -> None:
        srv.shutdown()
        srv.server_close()

    return holder[0], stop


@pytest.fixture
def server() -> Iterator[Server]:
    s, stop = _start()
    yield s
    stop()


@pytest.fixture
def other() -> Iterator[Server]:
    s, stop = _start()
    yield s
    stop()


@pytest.fixture(autouse=True)
def _no_loopback_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INSECURE_LOOPBACK_ENV, raising=False)


def _trickle(every: float, count: int, length: int | None = None) -> Behaviour:
    def run(conn: Conn) -> None:
        conn.head(200, {"Content-Length": str(length or count)})
        for _ in range(count):
            conn.send(b"x")
            time.sleep(every)

    return run


def _byte_then_block(after: float, block: float) -> Behaviour:
    def run(conn: Conn) -> None:
        conn.head(200, {"Content-Length": "100"})
        time.sleep(after)
        conn.send(b"{")
        time.sleep(block)

    return run


def _endless(announce: int | None) -> Behaviour:
    def run(conn: Conn) -> None:
        headers = {"Connection": "close"}
        if announce is not None:
            headers["Content-Length"] = str(announce)
        conn.head(200, headers)
        block = b" " * 65536
        for _ in range(800_000_000 // 65536):
            conn.send(block)
        conn.closed = True

    return run


# -- deadlines --------------------------------------------------------------------


def test_trickled_did_document_fails_at_the_total_deadline(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(INSECURE_LOOPBACK_ENV, "1")
    server.routes["/.well-known/did.json"] = _trickle(0.25, 200)
    resolver = IdentityResolver(timeout=2.0, retry=RetryPolicy(attempts=3))
    start = time.monotonic()
    with pytest.raises(DeadlineExceededError) as info:
        resolver.did_document(f"did:web:localhost%3A{server.port}")
    elapsed = time.monotonic() - start
    assert 1.9 < elapsed < 3.0
    assert info.value.rule == "DEADLINE_EXCEEDED"
    assert "DID document" in str(info.value) and "2 s" in str(info.value)


def test_trickled_headers_fail_at_the_total_deadline(server: Server) -> None:
    def headers_slowly(conn: Conn) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}":
            conn.send(bytes([byte]))
            time.sleep(0.2)

    server.routes["/doc"] = headers_slowly
    start = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        fetch(
            f"{server.base}/doc",
            what="record",
            max_bytes=1000,
            deadline=1.5,
            trusted=True,
        )
    assert time.monotonic() - start < 2.3


def test_one_blocked_read_cannot_outlast_the_deadline(server: Server) -> None:
    # One byte just before the deadline, then silence: a read timeout would be
    # reset by that byte; the watchdog shuts the socket down at the deadline.
    server.routes["/doc"] = _byte_then_block(0.8, 5.0)
    start = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        fetch(
            f"{server.base}/doc",
            what="record",
            max_bytes=1000,
            deadline=1.0,
            trusted=True,
        )
    assert time.monotonic() - start < 1.5


def test_deadline_covers_retries(server: Server) -> None:
    server.routes["/doc"] = lambda c: c.body(b"busy", 503, {"Retry-After": "1"})
    start = time.monotonic()
    with pytest.raises(NetworkError) as info:
        fetch(
            f"{server.base}/doc",
            what="record",
            max_bytes=100,
            deadline=1.5,
            trusted=True,
            retry=RetryPolicy(attempts=20, deadline=60.0),
        )
    assert info.value.rule in ("DEADLINE_EXCEEDED", "RETRY_EXHAUSTED")
    assert time.monotonic() - start < 1.9


# -- size caps ---------------------------------------------------------------------


def test_announced_oversize_body_is_refused_before_reading(server: Server) -> None:
    server.routes["/doc"] = _endless(800_000_000)
    with pytest.raises(ResponseTooLargeError) as info:
        fetch(
            f"{server.base}/doc",
            what="DID document",
            max_bytes=65536,
            deadline=5,
            trusted=True,
        )
    assert info.value.rule == "RESPONSE_TOO_LARGE" and info.value.limit == 65536
    assert "Content-Length 800000000" in str(info.value)


@pytest.mark.parametrize("size, ok", [(4096, True), (4097, False)])
def test_streamed_body_is_capped_exactly(server: Server, size: int, ok: bool) -> None:
    def unannounced(conn: Conn) -> None:
        conn.head(200, {"Connection": "close"})
        conn.send(b"y" * size)
        conn.closed = True

    server.routes["/doc"] = unannounced

    def call() -> bytes:
        return fetch(
            f"{server.base}/doc", what="list", max_bytes=4096, deadline=5, trusted=True
        ).content

    if ok:
        assert call() == b"y" * size
    else:
        with pytest.raises(ResponseTooLargeError, match="list is larger than"):
            call()


def test_compressed_bodies_are_refused(server: Server) -> None:
    bomb = gzip.compress(b"\0" * 10_000_000)
    server.routes["/doc"] = lambda c: c.body(bomb, headers={"Content-Encoding": "gzip"})
    with pytest.raises(ResponseFormatError, match="gzip-encoded"):
        fetch(
            f"{server.base}/doc",
            what="record",
            max_bytes=1 << 20,
            deadline=5,
            trusted=True,
        )
    assert server.hits[0][1]["accept-encoding"] == "identity"


@pytest.mark.parametrize("announce", [800_000_000, None])
def test_huge_did_document_keeps_memory_bounded(
    server: Server, announce: int | None
) -> None:
    server.routes["/.well-known/did.json"] = _endless(announce)
    outcome = run_bounded(
        f"""
        from atdata_runtime.atmosphere.identity import IdentityResolver
        from atdata_runtime.net.retry import RetryPolicy
        IdentityResolver(timeout=20, retry=RetryPolicy(attempts=1)).did_document(
            "did:web:localhost%3A{server.port}")
        """,
        address_space_mib=1536,
        timeout=60,
        env={INSECURE_LOOPBACK_ENV: "1"},
    )
    assert outcome.error_type == "atdata_runtime.net.errors.ResponseTooLargeError", (
        outcome.traceback
    )
    assert f"{MAX_DID_DOCUMENT_BYTES} bytes" in (outcome.error or "")
    assert outcome.max_rss_mib < 200, outcome.max_rss_mib


# -- the shard stream --------------------------------------------------------------


def _shard_policy() -> RetryPolicy:
    return RetryPolicy(attempts=3, sleep=lambda s: None)


def test_trickled_shard_stalls_at_the_timeout(server: Server) -> None:
    server.routes["/shard.tar"] = _trickle(0.1, 40)  # 4 s in all
    start = time.monotonic()
    with (
        pytest.raises(DeadlineExceededError) as info,
        HttpShardStream(
            f"{server.base}/shard.tar", timeout=1.0, retry=_shard_policy()
        ) as s,
    ):
        while s.read(65536):
            pass
    assert time.monotonic() - start < 1.6
    assert info.value.rule == "DEADLINE_EXCEEDED"
    assert "fewer than 65536 bytes in 1 s" in str(info.value)


def test_blocked_shard_read_returns_at_the_timeout(server: Server) -> None:
    def part_then_block(conn: Conn) -> None:
        conn.head(200, {"Content-Length": "100000"})
        conn.send(b"z" * 1000)
        time.sleep(0.6)
        conn.send(b"z")  # resets a socket read timeout, not the stall clock
        time.sleep(5)

    server.routes["/shard.tar"] = part_then_block
    start = time.monotonic()
    with (
        pytest.raises(DeadlineExceededError),
        HttpShardStream(
            f"{server.base}/shard.tar", timeout=1.0, retry=_shard_policy()
        ) as s,
    ):
        while s.read(65536):
            pass
    assert time.monotonic() - start < 1.5


def test_slow_consumer_is_not_a_stall(server: Server) -> None:
    payload = bytes(range(256)) * 512  # 128 KiB
    server.routes["/shard.tar"] = lambda c: c.body(payload)
    out = io.BytesIO()
    with HttpShardStream(
        f"{server.base}/shard.tar", timeout=0.4, retry=_shard_policy()
    ) as s:
        while chunk := s.read(65536):
            out.write(chunk)
            time.sleep(0.6)  # longer than the timeout, between reads
    assert out.getvalue() == payload


def test_shard_redirect_to_another_origin_is_refused_without_headers(
    server: Server, other: Server
) -> None:
    other.routes["/shard.tar"] = lambda c: c.body(b"stolen")
    server.routes["/shard.tar"] = lambda c: c.body(
        b"", 302, {"Location": f"{other.base}/shard.tar"}
    )
    with pytest.raises(RedirectRefusedError) as info:
        HttpShardStream(
            f"{server.base}/shard.tar",
            headers={"X-Api-Key": "k-123"},
            retry=_shard_policy(),
        )
    assert info.value.rule == "REDIRECT_CROSS_ORIGIN"
    assert other.hits == []


def test_shard_same_origin_redirect_keeps_headers(server: Server) -> None:
    server.routes["/shard.tar"] = lambda c: c.body(b"", 307, {"Location": "/real.tar"})
    server.routes["/real.tar"] = lambda c: c.body(b"data")
    with HttpShardStream(
        f"{server.base}/shard.tar",
        headers={"X-Api-Key": "k-123"},
        retry=_shard_policy(),
    ) as s:
        assert s.read() == b"data"
    assert [(p, h.get("x-api-key")) for p, h in server.hits] == [
        ("/shard.tar", "k-123"),
        ("/real.tar", "k-123"),
    ]


def test_untrusted_shard_url_is_checked(server: Server) -> None:
    with pytest.raises(UnsafeUrlError):
        HttpShardStream(f"{server.base}/shard.tar", trusted=False)
    assert server.hits == []


def test_fetch_cross_origin_redirect_never_forwards_headers(
    server: Server, other: Server
) -> None:
    other.routes["/doc"] = lambda c: c.body(b"{}")
    server.routes["/doc"] = lambda c: c.body(
        b"", 302, {"Location": f"{other.base}/doc"}
    )
    with pytest.raises(RedirectRefusedError):
        fetch(
            f"{server.base}/doc",
            what="record",
            max_bytes=100,
            deadline=5,
            trusted=True,
            headers={"Authorization": "Bearer t0k"},
        )
    assert other.hits == []


# -- credentials in URLs -----------------------------------------------------------


@pytest.mark.parametrize(
    "url, shown",
    [
        ("https://user:pw@host/x", "https://host/x"),
        ("https://u@host:8443/x?a=1", "https://host:8443/x?a=1"),
        (
            "https://h/p?access_token=T1&x=2&Token=T2",
            "https://h/p?access_token=REDACTED&x=2&Token=REDACTED",
        ),
        (
            (
                "https://b.s3.amazonaws.com/k?X-Amz-Credential=AK%2F1&X-Amz-Signature=ab"
                "&X-Amz-Security-Token=ST&X-Amz-Expires=60"
            ),
            (
                "https://b.s3.amazonaws.com/k?X-Amz-Credential=REDACTED&"
                "X-Amz-Signature=REDACTED&X-Amz-Security-Token=REDACTED&X-Amz-Expires=REDACTED"
            ),
        ),
        ("https://h/p?sig=s&sv=2020", "https://h/p?sig=REDACTED&sv=2020"),
        ("https://h/p?%61ccess_token=T", "https://h/p?%61ccess_token=REDACTED"),
        ("http://[::1", "<unparsable URL>"),
        ("user:secret@host/x?token=T", "host/x?token=REDACTED"),
        (
            "data.example.org/s.tar?access_token=T",
            "data.example.org/s.tar?access_token=REDACTED",
        ),
        ("alice@example.org", "alice@example.org"),  # not a URL
        ("git@github.com:lab/x.git", "git@github.com:lab/x.git"),  # scp-like
        ("https://h/p#access_token=T&x=1", "https://h/p#access_token=REDACTED&x=1"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_errors_name_the_url_without_credentials(server: Server) -> None:
    server.routes["/doc"] = _trickle(0.2, 100)
    port = server.port
    url = f"http://alice:hunter2@127.0.0.1:{port}/doc?access_token=T0K3N&x=1"
    with pytest.raises(DeadlineExceededError) as info:
        fetch(url, what="record", max_bytes=1000, deadline=0.6, trusted=True)
    message = str(info.value)
    assert f"http://127.0.0.1:{port}/doc?access_token=REDACTED&x=1" in message
    assert (
        "hunter2" not in message and "T0K3N" not in message and "alice" not in message
    )
    with (
        pytest.raises(DeadlineExceededError) as info2,
        HttpShardStream(url, timeout=0.5, retry=_shard_policy()) as s,
    ):
        s.read()
    assert "hunter2" not in str(info2.value) and "T0K3N" not in str(info2.value)
    with pytest.raises(UnsafeUrlError) as info3:
        fetch(url, what="record", max_bytes=1, deadline=1)
    assert "hunter2" not in str(info3.value) and "T0K3N" not in str(info3.value)


def _fetch_in_child(url: str, queue: Any) -> None:
    start = time.monotonic()
    try:
        fetch(url, what="record", max_bytes=1000, deadline=1.0, trusted=True)
        queue.put(("returned", time.monotonic() - start))
    except NetworkError as exc:
        queue.put((exc.rule, time.monotonic() - start))


def test_watchdog_works_in_a_forked_child(server: Server) -> None:
    # DataLoader workers are forked: the watchdog thread must be restarted there
    server.routes["/doc"] = _byte_then_block(0.8, 5.0)
    fetch(
        f"{server.base}/missing", what="record", max_bytes=100, deadline=5, trusted=True
    )
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_fetch_in_child, args=(f"{server.base}/doc", queue))
    child.start()
    rule, elapsed = queue.get(timeout=10)
    child.join(10)
    assert rule == "DEADLINE_EXCEEDED" and elapsed < 1.5


def test_trickled_shard_headers_stall_at_the_timeout(server: Server) -> None:
    def headers_slowly(conn: Conn) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab":
            conn.send(bytes([byte]))
            time.sleep(0.1)

    server.routes["/shard.tar"] = headers_slowly
    start = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        HttpShardStream(f"{server.base}/shard.tar", timeout=1.0, retry=_shard_policy())
    assert time.monotonic() - start < 1.5


# -- review of the bounded HTTP layer (items 3-6) ---------------------------------


def _read_stream_in_child(stream: HttpShardStream, queue: Any) -> None:
    start = time.monotonic()
    try:
        while stream.read(65536):
            pass
        queue.put(("returned", time.monotonic() - start))
    except NetworkError as exc:
        queue.put((exc.rule, time.monotonic() - start))


@pytest.mark.parametrize("lock_held", [False, True])
def test_stream_opened_before_a_fork_keeps_its_deadline_in_the_child(
    server: Server, lock_held: bool
) -> None:
    # A DataLoader opens a shard, then forks its workers. One byte every 0.9 s
    # against a 1 s stall budget: each read is shorter than the socket timeout,
    # so only the watchdog (which must know the parent's guard in the child)
    # ends the read at 1 s; without it the stall shows only after the next byte
    # (1.8 s). With lock_held another thread of the parent holds the guard's lock
    # at the fork: the child must not inherit it locked.
    server.routes["/shard.tar"] = _trickle(0.9, 20)
    stream = HttpShardStream(
        f"{server.base}/shard.tar", timeout=1.0, retry=_shard_policy()
    )
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_stream_in_child, args=(stream, queue))
    lock = stream._guard._lock
    if lock_held:
        lock.acquire()
    try:
        child.start()
    finally:
        if lock_held:
            lock.release()
    try:
        rule, elapsed = queue.get(timeout=10)
    finally:
        child.join(5)
        if child.is_alive():
            child.kill()
        stream.close()
    assert rule == "DEADLINE_EXCEEDED"
    assert elapsed < 1.45


def test_a_finished_read_cannot_shut_down_the_next_one(server: Server) -> None:
    # The watchdog fires against the generation it saw expire, under the guard's
    # lock: once a read has disarmed its deadline, that expiry cannot shut down
    # the socket the next read is using.
    payload = b"y" * 200_000
    server.routes["/shard.tar"] = lambda c: c.body(payload)
    guard = StallGuard(math.inf, url=f"{server.base}/shard.tar")
    with guard, httpx.Client() as client:
        request = client.build_request(
            "GET", f"{server.base}/shard.tar", extensions={"trace": guard.trace}
        )
        response = client.send(request, stream=True)
        expired = guard.arm(time.monotonic() + 60)
        guard.disarm()  # that read finished
        current = guard.arm(time.monotonic() + 60)  # the next read
        assert current != expired
        assert guard.fire(expired) is False and not guard.fired
        assert b"".join(response.iter_raw()) == payload
        response.close()
        assert guard.fire(current) is True and guard.fired
    # and the watchdog itself only fires the generation whose deadline passed
    again = StallGuard(math.inf)
    with again:
        again.arm(time.monotonic() - 1)
        deadline = time.monotonic() + 2
        while not again.fired and time.monotonic() < deadline:
            time.sleep(0.01)
        assert again.fired
        again.arm(time.monotonic() + 60)
        time.sleep(0.2)
        assert not again.fired


class _NoSocketStream:
    """A transport stream that does not expose its socket (a proxy, a custom
    httpcore backend)."""

    closed = False

    def get_extra_info(self, name: str) -> Any:
        return None

    def close(self) -> None:
        self.closed = True


def test_peer_check_fails_closed_without_a_socket() -> None:
    stream = _NoSocketStream()
    guard = StallGuard(math.inf, url="https://u:pw@pds.example.com/", check_peer=True)
    with pytest.raises(UnsafeUrlError) as info:
        guard.trace("connection.connect_tcp.complete", {"return_value": stream})
    assert info.value.rule == "PEER_UNVERIFIED" and stream.closed
    assert "pw" not in str(info.value)
    # trusted URLs have no peer check: nothing to refuse
    trusting = StallGuard(math.inf, url="https://pds.example.com/")
    trusting.trace("connection.connect_tcp.complete", {"return_value": stream})


def test_untrusted_shard_redirect_target_is_checked_again(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # same origin, but the Location carries credentials: refused like the URL
    # itself would be (fetch checked redirect targets, the shard stream did not)
    monkeypatch.setenv(INSECURE_LOOPBACK_ENV, "1")
    server.routes["/shard.tar"] = lambda c: c.body(
        b"", 302, {"Location": f"http://u:pw@127.0.0.1:{server.port}/real.tar"}
    )
    server.routes["/real.tar"] = lambda c: c.body(b"data")
    with pytest.raises(UnsafeUrlError) as info:
        HttpShardStream(
            f"{server.base}/shard.tar", trusted=False, retry=_shard_policy()
        )
    assert info.value.rule == "URL_REFUSED" and "pw" not in str(info.value)
    assert [path for path, _ in server.hits] == ["/shard.tar"]


def test_shard_and_fetch_share_one_redirect_rule(server: Server) -> None:
    server.routes["/a"] = lambda c: c.body(
        b"", 302, {"Location": "https://xn--localhost/"}
    )
    with pytest.raises(RedirectRefusedError) as info:
        HttpShardStream(f"{server.base}/a", retry=_shard_policy())
    assert info.value.rule == "REDIRECT_INVALID"
    with pytest.raises(RedirectRefusedError) as info2:
        fetch(f"{server.base}/a", what="record", max_bytes=10, deadline=5, trusted=True)
    assert info2.value.rule == "REDIRECT_INVALID"


def test_no_cross_origin_redirect_switch() -> None:
    # the removed opt-in would have followed redirects anywhere; there is none
    assert "allow_cross_origin_redirects" not in inspect.signature(fetch).parameters


def test_transport_errors_live_in_net_errors() -> None:
    from atdata_runtime.net import errors
    from atdata_runtime.net import fetch as fetch_module

    for name in ("ConnectionFailedError", "ResponseFormatError"):
        assert name in net.__all__ and name in errors.__all__
        assert getattr(net, name) is getattr(errors, name)
        assert getattr(fetch_module, name) is getattr(errors, name)
    assert errors.ConnectionFailedError.rule == "CONNECTION_FAILED"
    assert errors.ResponseFormatError.rule == "RESPONSE_MALFORMED"
    for name in ("origin", "refuse_address", "refuse_host", "is_loopback_host"):
        assert name in net.__all__
