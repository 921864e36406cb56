"""Bounded HTTP requests: :func:`fetch` caps the body, enforces one wall-clock
deadline for the whole request, follows only same-origin redirects, and refuses
URLs from the network that point at the local machine or a private network.

Why each bound exists (issue 14, findings 3 and 4):

* **Size.** A body is read as a stream and counted; ``Content-Length`` is checked
  first, and reading stops at ``max_bytes`` (at most one socket read, 64 KiB, past
  it is ever held). Compressed bodies are not accepted (``Accept-Encoding:
  identity`` is sent, a ``Content-Encoding`` other than ``identity`` is refused), so
  a small body cannot inflate past the cap. Per-kind caps are the module constants
  below.
* **Time.** ``deadline`` seconds bound connecting, sending, the headers and the
  body *together*. Socket timeouts are set to the remaining budget, each chunk
  checks the clock, and a watchdog thread shuts the socket down when the budget
  runs out, so a server that trickles one byte per second cannot stretch a request
  past its deadline (a read timeout alone is reset by every byte). Name
  resolution (``getaddrinfo``) is the one step the watchdog cannot interrupt.
* **Where.** A URL is *trusted* when the user configured it (their PDS, their PLC
  directory): ``http`` and ``https`` are allowed. Otherwise (a URL from a record or
  a DID document) it must be ``https``, carry no ``user:pass@``, and its host must
  not be ``localhost``/``*.localhost`` (RFC 6761 § 6.3) or an IP literal that is
  loopback, private, link-local, unspecified, multicast or reserved (IANA special-
  purpose registries, RFC 6890); the address actually connected to is checked the
  same way before anything is sent, which also covers names that resolve to such
  addresses (DNS rebinding included). Untrusted requests ignore the environment
  (``HTTP(S)_PROXY``, ``~/.netrc``, ``SSL_CERT_FILE``; httpx ``trust_env=False``):
  the check must see the real peer, and no netrc credential may reach a host a
  record named.
* **Redirects** are followed by hand, at most :data:`MAX_REDIRECTS`, and only to
  the same origin (scheme, host, port; RFC 6454 § 4); anything else is
  :class:`~.errors.RedirectRefusedError` (``REDIRECT_CROSS_ORIGIN``), so a custom
  header (``Authorization``, ``X-Api-Key``) never reaches another origin.

Test-only loopback mode: with ``ATDATA_RUNTIME_INSECURE_LOOPBACK=1`` in the
environment (:data:`INSECURE_LOOPBACK_ENV`), untrusted URLs may also use ``http``
and loopback hosts (``localhost``, 127.0.0.0/8, ``::1``), as a local PDS and PLC
directory need (``atdata_gen.testing.localnet`` sets it). Private and other
special addresses stay refused. Never set it in production.

Errors never contain a response body, and every URL in them goes through
:func:`~.redact.redact_url`.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Self

import httpx

from .errors import (
    DeadlineExceededError,
    HttpStatusError,
    NetworkError,
    RedirectRefusedError,
    ResponseTooLargeError,
    UnsafeUrlError,
)
from .redact import redact_url
from .retry import RetryPolicy

__all__ = [
    "DEFAULT_DEADLINE",
    "INSECURE_LOOPBACK_ENV",
    "MAX_CAR_BYTES",
    "MAX_DID_DOCUMENT_BYTES",
    "MAX_HANDLE_DID_BYTES",
    "MAX_LIST_BYTES",
    "MAX_RECORD_BYTES",
    "MAX_REDIRECTS",
    "ConnectionFailedError",
    "Fetched",
    "ResponseFormatError",
    "StallGuard",
    "check_url",
    "fetch",
    "insecure_loopback",
    "refuse_address",
    "same_origin",
]

INSECURE_LOOPBACK_ENV = "ATDATA_RUNTIME_INSECURE_LOOPBACK"
"""Environment variable that, set to ``1``, lets untrusted URLs use ``http`` and
loopback hosts. For tests against a local PDS/PLC only."""

MAX_DID_DOCUMENT_BYTES = 64 * 1024
"""64 KiB: a DID document. Real ones are under 2 KiB (a few keys, one or two
services, handles); the PLC directory refuses operations over 7,500 bytes
(``@did-plc/server``), so 64 KiB leaves wide room for did:web documents."""

MAX_HANDLE_DID_BYTES = 2048
"""2 KiB: the body of ``/.well-known/atproto-did`` (one DID; the AT Protocol DID
spec limits a DID to 2 KiB)."""

MAX_RECORD_BYTES = 2 * 1024 * 1024
"""2 MiB: one record as JSON (``com.atproto.repo.getRecord``). The reference
implementations cap a record at 1 MiB of DAG-CBOR and 2 MiB of JSON (indigo
``atproto/data``: ``MAX_CBOR_RECORD_SIZE``, ``MAX_JSON_RECORD_SIZE``)."""

MAX_CAR_BYTES = 2 * 1024 * 1024
"""2 MiB: a record proof CAR (``com.atproto.sync.getRecord``): the commit, the MST
nodes on the path (a few KiB each) and the record block (at most 1 MiB of
DAG-CBOR, see :data:`MAX_RECORD_BYTES`)."""

MAX_LIST_BYTES = 8 * 1024 * 1024
"""8 MiB: one page of a list (``com.atproto.repo.listRecords``, at most 100 records
per page). Typical pages are tens of KiB; the cap bounds a hostile server without
refusing pages of large records."""

DEFAULT_DEADLINE = 30.0
"""Seconds: the default total budget of one request when a caller has none."""

MAX_REDIRECTS = 5
"""Same-origin redirects followed per request."""

_REDIRECTS = (301, 302, 303, 307, 308)


class ConnectionFailedError(NetworkError):
    """The connection failed (refused, reset, TLS error, protocol error). Retryable
    (``retryable = True``: :func:`~.retry.classify` retries it)."""

    rule = "CONNECTION_FAILED"
    retryable = True


class ResponseFormatError(NetworkError):
    """A body is not what its kind requires (not JSON, or compressed when identity
    was asked for). The message names the URL and kind, never the body."""

    rule = "RESPONSE_MALFORMED"


def insecure_loopback() -> bool:
    """Whether the test-only loopback mode (:data:`INSECURE_LOOPBACK_ENV`) is on."""
    return os.environ.get(INSECURE_LOOPBACK_ENV, "") == "1"


_IP = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_SIXTOFOUR = ipaddress.IPv6Network("2002::/16")
_COMPATIBLE = ipaddress.IPv6Network("::/96")


def _embedded_ipv4(
    ip: ipaddress.IPv6Address,
) -> tuple[str, tuple[ipaddress.IPv4Address, ...]]:
    """``(form, addresses)``: the IPv4 addresses an IPv6 address carries, by the
    transition mechanism that routes it there, or ``("", ())``. IPv4-mapped
    ``::ffff:0:0/96`` and IPv4-compatible ``::/96`` (RFC 4291 § 2.5.5), 6to4
    ``2002::/16`` (RFC 3056 § 2), the NAT64 well-known prefix ``64:ff9b::/96``
    (RFC 6052 § 2.1), Teredo ``2001::/32`` (RFC 4380 § 4: the server, and the
    client, stored XOR-ed with all ones)."""
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", (ip.ipv4_mapped,)
    if ip.sixtofour is not None:
        return "6to4", (ip.sixtofour,)
    if ip in _TEREDO and ip.teredo is not None:
        return "Teredo", ip.teredo
    low = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _NAT64:
        return "NAT64", (low,)
    if ip in _COMPATIBLE and int(ip) > 1:  # not :: nor ::1
        return "IPv4-compatible", (low,)
    return "", ()


def _plain_refusal(ip: _IP) -> str | None:
    if ip.is_loopback:
        return None if insecure_loopback() else "a loopback address"
    for test, label in (
        (ip.is_unspecified, "the unspecified address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_private, "a private address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_reserved, "a reserved address"),
    ):
        if test:
            return label
    if not ip.is_global:
        return "a non-global address"
    return None


def _ip_refusal(ip: _IP) -> str | None:
    """Why an address may not be contacted for an untrusted URL (``None``: fine).
    An IPv6 address that embeds IPv4 addresses (:func:`_embedded_ipv4`) is judged
    by them: IPv4-mapped exactly as its IPv4 address (the same host on a dual-stack
    socket); 6to4, NAT64, Teredo and IPv4-compatible ones are refused when an
    embedded address would be, loopback included even in the test mode (they
    reach the local machine only through a relay or a translator), and Teredo and
    IPv4-compatible ones are then also judged as IPv6 (both are non-global)."""
    if isinstance(ip, ipaddress.IPv6Address):
        form, embedded = _embedded_ipv4(ip)
        for v4 in embedded:
            why = _plain_refusal(v4)
            if form == "IPv4-mapped":
                return why
            if why is None and v4.is_loopback:
                why = "a loopback address"
            if why is not None:
                article = "an" if form[0] in "AEIOU" else "a"
                return f"{article} {form} address embedding {why} ({v4})"
        if form in ("6to4", "NAT64"):
            return None
    return _plain_refusal(ip)


def refuse_address(ip: str) -> str | None:
    """Why the address ``ip`` (an IPv4 or IPv6 literal, an optional ``%zone``
    ignored) may not be contacted for a URL from the network, or ``None`` when it
    may. Refused: loopback (allowed only in the test-only loopback mode,
    :data:`INSECURE_LOOPBACK_ENV`), unspecified, link-local, private, multicast,
    reserved and any other non-global address (IANA special-purpose address
    registries, RFC 6890), an IPv6 address whose embedded IPv4 address (IPv4-mapped
    and -compatible, RFC 4291 § 2.5.5; 6to4, RFC 3056; NAT64, RFC 6052; Teredo,
    RFC 4380) is one of those, and text that is not an address. Use it on every
    address a name resolves to before connecting (the check :func:`fetch` makes on
    the connected peer). Pure; reads only the environment."""
    try:
        parsed = ipaddress.ip_address(str(ip).split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    return _ip_refusal(parsed)


def _host_refusal(host: str) -> str | None:
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return None if insecure_loopback() else "a localhost name"
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return None
    return _ip_refusal(ip)


def check_url(url: str, *, what: str, trusted: bool = False) -> httpx.URL:
    """Parse and check ``url`` before any request. Trusted: ``http``/``https``.
    Untrusted: see the module docstring. Raises :class:`~.errors.UnsafeUrlError`
    (``URL_REFUSED``) naming the redacted URL, the kind ``what`` and why."""
    shown = redact_url(url)
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise UnsafeUrlError(shown, f"{what} URL does not parse: {exc}") from None
    scheme = parsed.scheme
    if scheme not in ("http", "https") or not parsed.host:
        raise UnsafeUrlError(shown, f"{what} URL must be http(s) with a host")
    if trusted:
        return parsed
    if parsed.userinfo:
        raise UnsafeUrlError(shown, f"{what} URL from the network carries credentials")
    why = _host_refusal(parsed.host)
    if why is not None:
        raise UnsafeUrlError(
            shown,
            f"{what} URL from the network names {why}; set {INSECURE_LOOPBACK_ENV}=1 "
            "only in tests to allow loopback",
        )
    if scheme != "https":
        name = parsed.host.rstrip(".").lower()
        loop = name == "localhost" or name.endswith(".localhost")
        if not loop:
            try:
                loop = ipaddress.ip_address(name).is_loopback
            except ValueError:
                loop = False
        if not (loop and insecure_loopback()):
            raise UnsafeUrlError(shown, f"{what} URL from the network must be https")
    return parsed


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host.rstrip(".").lower(), url.port or default


def same_origin(a: httpx.URL | str, b: httpx.URL | str) -> bool:
    """Whether two URLs share scheme, host and port (RFC 6454 § 4; default ports
    made explicit)."""
    return _origin(httpx.URL(a)) == _origin(httpx.URL(b))


class _Watchdog:
    """One daemon thread that fires guards whose deadline passed (checked every
    50 ms). Registering costs a lock; moving a deadline is an attribute write."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        # also in a forked child (DataLoader workers): the thread did not survive
        # the fork and the lock may have been held by it
        self._guards: set[StallGuard] = set()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, guard: StallGuard) -> None:
        with self._cond:
            self._guards.add(guard)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="atdata-net-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def discard(self, guard: StallGuard) -> None:
        with self._cond:
            self._guards.discard(guard)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._guards:
                    self._cond.wait()
                guards = list(self._guards)
            now = time.monotonic()
            for guard in guards:
                if not guard.fired and now >= guard.deadline:
                    guard.fire()
            time.sleep(0.05)


_WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG._reset)


class StallGuard:
    """Ties a wall-clock deadline to the sockets of one request (or one stream).

    Pass :meth:`trace` as the httpx ``trace`` request extension: it records each
    new connection's socket and, when ``check_peer`` is set, refuses a peer address
    an untrusted URL may not reach (see :func:`check_url`). When ``deadline``
    (``time.monotonic()`` seconds; move it freely) passes while registered, the
    watchdog shuts the sockets down, so a blocked read returns at once, and
    ``fired`` is set. Use as a context manager (registers/unregisters)."""

    def __init__(
        self, deadline: float, *, url: str = "", check_peer: bool = False
    ) -> None:
        self.deadline = deadline
        self.url = url
        self.check_peer = check_peer
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        _WATCHDOG.add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _WATCHDOG.discard(self)

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def trace(self, event: str, info: Mapping[str, Any]) -> None:
        if event != "connection.connect_tcp.complete":
            return
        stream: Any = info.get("return_value")
        if stream is None:
            return
        sock = stream.get_extra_info("socket")
        if not isinstance(sock, socket.socket):
            return
        if self.check_peer:
            try:
                peer = sock.getpeername()[0]
                why = _ip_refusal(ipaddress.ip_address(str(peer).split("%")[0]))
            except (OSError, ValueError):
                why = "an unknown address"
            if why is not None:
                stream.close()
                raise UnsafeUrlError(
                    redact_url(self.url),
                    f"URL from the network resolved to {why}; nothing was sent",
                )
        with self._lock:
            self._sockets.append(sock)
            fired = self.fired
        if fired:
            self.fire()


@dataclass(frozen=True)
class Fetched:
    """A bounded response: ``status``, ``headers``, the whole ``content`` (at most
    the caller's ``max_bytes``) and the final ``url`` (after same-origin
    redirects). ``what`` is the kind the caller named."""

    status: int
    headers: httpx.Headers
    content: bytes
    url: str
    what: str = "response"

    @property
    def status_code(self) -> int:
        """``status`` (the name :func:`~.retry.classify` reads)."""
        return self.status

    @property
    def text(self) -> str:
        """``content`` decoded as UTF-8 (invalid bytes replaced)."""
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """``content`` parsed as JSON. Raises :class:`ResponseFormatError`
        (never showing the body) for invalid JSON, nesting past the interpreter's
        recursion limit, or integers over Python's digit limit."""
        try:
            return json.loads(self.content)
        except (ValueError, RecursionError) as exc:
            raise ResponseFormatError(
                redact_url(self.url),
                f"{self.what} is not valid JSON ({type(exc).__name__})",
            ) from None


def _deadline_error(url: str, what: str, deadline: float) -> DeadlineExceededError:
    return DeadlineExceededError(
        redact_url(url),
        f"{what} took longer than its total deadline of {deadline:g} s",
        what=what,
        limit=deadline,
    )


def _too_large(url: str, what: str, limit: int, seen: str) -> ResponseTooLargeError:
    return ResponseTooLargeError(
        redact_url(url),
        f"{what} is larger than its limit of {limit} bytes ({seen})",
        what=what,
        limit=limit,
    )


def _read_body(
    response: httpx.Response,
    url: str,
    what: str,
    max_bytes: int,
    guard: StallGuard,
    deadline: float,
) -> bytes:
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ResponseFormatError(
            redact_url(url), f"{what} is {encoding}-encoded; identity was asked for"
        )
    length = response.headers.get("content-length")
    if length is not None:
        try:
            announced = int(length)
        except ValueError:
            announced = -1
        if announced > max_bytes:
            raise _too_large(url, what, max_bytes, f"Content-Length {announced}")
    parts: list[bytes] = []
    total = 0
    chunks: Iterator[bytes] = response.iter_raw()
    for chunk in chunks:
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(url, what, max_bytes, f"more than {max_bytes} received")
        parts.append(chunk)
        if time.monotonic() >= guard.deadline:
            raise _deadline_error(url, what, deadline)
    return b"".join(parts)


def fetch(
    url: str,
    *,
    what: str,
    max_bytes: int,
    deadline: float,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    method: str = "GET",
    content: bytes | None = None,
    trusted: bool = False,
    retry: RetryPolicy | None = None,
    allow_cross_origin_redirects: bool = False,
) -> Fetched:
    """One bounded HTTP request; returns a :class:`Fetched` for any status.

    ``what`` names the kind in errors ("DID document", "record", "CAR", "blob",
    "list"); ``max_bytes`` caps the body (bytes); ``deadline`` is the total
    wall-clock budget in seconds for connect, headers and body of all redirects and
    retries together; ``trusted`` marks a URL the user configured (see the module
    docstring). ``retry``: when given, connection failures, 5xx and 429 are retried
    with it inside the same deadline (a final retryable status raises
    :class:`~.errors.RetryExhaustedError`). ``allow_cross_origin_redirects``: follow
    them after all, but with none of ``headers`` and the target checked as an
    untrusted URL (for blob CDNs).

    Raises :class:`~.errors.UnsafeUrlError` (``URL_REFUSED``),
    :class:`~.errors.RedirectRefusedError` (``REDIRECT_CROSS_ORIGIN``,
    ``TOO_MANY_REDIRECTS``), :class:`~.errors.ResponseTooLargeError`
    (``RESPONSE_TOO_LARGE``), :class:`~.errors.DeadlineExceededError`
    (``DEADLINE_EXCEEDED``), :class:`ResponseFormatError`,
    :class:`ConnectionFailedError` (``CONNECTION_FAILED``) or
    :class:`~.errors.RetryExhaustedError`. No message contains the body or a
    credential."""
    if max_bytes < 0 or deadline <= 0:
        raise ValueError("max_bytes must be >= 0 and deadline > 0")
    start = time.monotonic()
    end = start + deadline
    try:
        base = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise UnsafeUrlError(
            redact_url(url), f"{what} URL does not parse: {exc}"
        ) from None
    if params:
        base = base.copy_merge_params(dict(params))
    check_url(str(base), what=what, trusted=trusted)

    def once() -> Fetched:
        result = _fetch_once(
            str(base),
            what=what,
            max_bytes=max_bytes,
            end=end,
            deadline=deadline,
            headers=dict(headers or {}),
            method=method,
            content=content,
            trusted=trusted,
            cross_origin=allow_cross_origin_redirects,
        )
        if retry is not None and (result.status == 429 or result.status >= 500):
            raise HttpStatusError(
                redact_url(result.url), f"{what}: HTTP {result.status}", response=result
            )
        return result

    if retry is None:
        return once()
    # the policy never sleeps past this request's own deadline
    bounded = dataclasses.replace(retry, deadline=min(retry.deadline, deadline))
    return bounded.run(once, what=redact_url(url))


@functools.cache
def _ssl_context(trusted: bool, cert_file: str | None, cert_dir: str | None) -> Any:
    return httpx.create_ssl_context(trust_env=trusted)


def ssl_context(trusted: bool) -> Any:
    """The TLS context (``ssl.SSLContext``) of a request: certifi's roots, or for a
    *trusted* URL also ``SSL_CERT_FILE``/``SSL_CERT_DIR`` as httpx reads them.
    Built once per process and setting (loading the roots costs ~25 ms, more than a
    local request), shared by every client; contexts are thread-safe."""
    if not trusted:
        return _ssl_context(False, None, None)
    env = os.environ
    return _ssl_context(True, env.get("SSL_CERT_FILE"), env.get("SSL_CERT_DIR"))


def _fetch_once(
    url: str,
    *,
    what: str,
    max_bytes: int,
    end: float,
    deadline: float,
    headers: dict[str, str],
    method: str,
    content: bytes | None,
    trusted: bool,
    cross_origin: bool,
) -> Fetched:
    if time.monotonic() >= end:
        raise _deadline_error(url, what, deadline)
    send_headers = {**headers, "Accept-Encoding": "identity"}
    current = httpx.URL(url)
    current_trusted = trusted
    guard = StallGuard(end, url=url, check_peer=not trusted)
    client = httpx.Client(
        follow_redirects=False, trust_env=trusted, verify=ssl_context(trusted)
    )
    try:
        with guard:
            for hop in range(MAX_REDIRECTS + 1):
                guard.url = str(current)
                guard.check_peer = not current_trusted
                remaining = max(0.001, end - time.monotonic())
                request = client.build_request(
                    method,
                    current,
                    headers=send_headers,
                    content=content,
                    timeout=httpx.Timeout(remaining),
                    extensions={"trace": guard.trace},
                )
                try:
                    response = client.send(request, stream=True)
                except UnsafeUrlError:
                    raise
                except httpx.HTTPError as exc:
                    if guard.fired or time.monotonic() >= end:
                        raise _deadline_error(str(current), what, deadline) from None
                    raise ConnectionFailedError(
                        redact_url(str(current)),
                        f"{what}: {type(exc).__name__}",
                    ) from None
                try:
                    if response.status_code in _REDIRECTS:
                        location = response.headers.get("location")
                        if not location:
                            raise RedirectRefusedError(
                                redact_url(str(current)),
                                f"{what}: HTTP {response.status_code} without Location",
                                rule="REDIRECT_INVALID",
                            )
                        try:
                            target = current.join(location)
                        except (httpx.InvalidURL, ValueError):
                            raise RedirectRefusedError(
                                redact_url(str(current)),
                                f"{what}: redirect Location does not parse",
                                rule="REDIRECT_INVALID",
                            ) from None
                        if hop == MAX_REDIRECTS:
                            raise RedirectRefusedError(
                                redact_url(url),
                                f"{what}: more than {MAX_REDIRECTS} redirects",
                                rule="TOO_MANY_REDIRECTS",
                            )
                        if not same_origin(current, target):
                            if not cross_origin:
                                raise RedirectRefusedError(
                                    redact_url(str(current)),
                                    f"{what}: redirect to another origin "
                                    f"({redact_url(str(target))}) refused",
                                )
                            send_headers = {"Accept-Encoding": "identity"}
                            current_trusted = False
                        check_url(str(target), what=what, trusted=current_trusted)
                        if response.status_code == 303 or (
                            response.status_code in (301, 302) and method == "POST"
                        ):
                            method, content = "GET", None
                        current = target
                        continue
                    body = _read_body(
                        response, str(current), what, max_bytes, guard, deadline
                    )
                except httpx.HTTPError as exc:
                    if guard.fired or time.monotonic() >= end:
                        raise _deadline_error(str(current), what, deadline) from None
                    raise ConnectionFailedError(
                        redact_url(str(current)), f"{what}: {type(exc).__name__}"
                    ) from None
                finally:
                    response.close()
                if guard.fired:
                    raise _deadline_error(str(current), what, deadline)
                return Fetched(
                    status=response.status_code,
                    headers=response.headers,
                    content=body,
                    url=str(current),
                    what=what,
                )
    finally:
        client.close()
    raise AssertionError("unreachable")  # pragma: no cover
