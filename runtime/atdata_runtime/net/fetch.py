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
  not be ``localhost``/``*.localhost`` (RFC 6761 § 6.3), an IP literal that is
  loopback, private, link-local, unspecified, multicast or reserved (IANA special-
  purpose registries, RFC 6890), also when embedded in an IPv6 address
  (IPv4-mapped, 6to4, NAT64, Teredo), nor a non-canonical IPv4 spelling
  (``2130706433``, ``0x7f000001``, ``127.1``): see :mod:`.hosts`. The address
  actually connected to is checked the same way before anything is sent
  (:func:`~.hosts.refuse_address`), which also covers names that resolve to such
  addresses (DNS rebinding included); a connection whose socket cannot be seen
  is refused (fail closed). Untrusted requests ignore the environment (httpx
  ``trust_env=False``: no ``HTTP(S)_PROXY``/``ALL_PROXY``, no
  ``SSL_CERT_FILE``/``SSL_CERT_DIR``), so the check sees the real peer. (httpx
  0.28 never reads ``~/.netrc`` on its own; no netrc credential is sent.)
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
import json
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Self

import httpx

from .errors import (
    ConnectionFailedError,
    DeadlineExceededError,
    HttpStatusError,
    NetworkError,
    RedirectRefusedError,
    ResponseFormatError,
    ResponseTooLargeError,
    UnsafeUrlError,
)
from .hosts import (
    INSECURE_LOOPBACK_ENV,
    insecure_loopback,
    is_loopback_host,
    origin,
    refuse_address,
    refuse_host,
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
    "is_loopback_host",
    "next_hop",
    "origin",
    "refuse_address",
    "refuse_host",
    "same_origin",
    "send",
    "ssl_context",
]

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


def _parse(url: str | httpx.URL, what: str) -> tuple[httpx.URL, str]:
    """``(parsed, ascii_host)``; every failure (httpx's own, and the ``idna``
    errors it lets through when the host is read) is :class:`UnsafeUrlError`."""
    try:
        parsed = httpx.URL(url)
        parsed.host  # noqa: B018 - decodes IDNA, raises for an invalid A-label
        host = parsed.raw_host.decode("ascii")
        if parsed.port is not None and not 0 < parsed.port <= 65535:
            raise ValueError("port out of range")
    except Exception as exc:  # noqa: BLE001 - httpx, idna, UnicodeError, TypeError
        raise UnsafeUrlError(
            redact_url(str(url)), f"{what} URL does not parse ({type(exc).__name__})"
        ) from None
    return parsed, host


def check_url(url: str | httpx.URL, *, what: str, trusted: bool = False) -> httpx.URL:
    """Parse and check ``url`` before any request; return it parsed.

    Trusted (configured by the user): ``http`` or ``https`` with a host.
    Untrusted (from a record or a DID document): also ``https`` (``http`` only to
    a loopback host in the test-only loopback mode), no ``user:pass@``, and a host
    :func:`~.hosts.refuse_host` accepts (no ``localhost``, no loopback, private or
    other special address, embedded in IPv6 or not, no non-canonical IPv4
    spelling such as ``2130706433`` or ``127.1``). Raises
    :class:`~.errors.UnsafeUrlError` (``URL_REFUSED``) naming the redacted URL, the
    kind ``what`` and why, also for a URL that does not parse (bad port, invalid
    IDNA host such as ``xn--localhost``)."""
    shown = redact_url(str(url))
    parsed, host = _parse(url, what)
    scheme = parsed.scheme
    if scheme not in ("http", "https") or not host:
        raise UnsafeUrlError(shown, f"{what} URL must be http(s) with a host")
    if trusted:
        return parsed
    if parsed.userinfo:
        raise UnsafeUrlError(shown, f"{what} URL from the network carries credentials")
    why = refuse_host(host)
    if why is not None:
        hint = (
            f"; tests may allow loopback with {INSECURE_LOOPBACK_ENV}=1"
            if is_loopback_host(host) and not insecure_loopback()
            else ""
        )
        raise UnsafeUrlError(shown, f"{what} URL from the network names {why}{hint}")
    if scheme != "https" and not (insecure_loopback() and is_loopback_host(host)):
        raise UnsafeUrlError(shown, f"{what} URL from the network must be https")
    return parsed


def same_origin(a: httpx.URL | str, b: httpx.URL | str) -> bool:
    """Whether two URLs share scheme, host and port (RFC 6454 § 5, by
    :func:`~.hosts.origin`; default ports made explicit); an opaque origin (no
    host, does not parse) is never the same as any."""
    first = origin(str(a))
    return first != "null" and first == origin(str(b))


def next_hop(
    current: httpx.URL,
    status: int,
    location: str | None,
    *,
    what: str,
    hop: int,
    trusted: bool,
) -> httpx.URL | None:
    """Where a response to ``current`` sends the client next: ``None`` when
    ``status`` is not a redirect (301, 302, 303, 307, 308; RFC 9110 § 15.4),
    else the ``Location`` resolved against ``current`` (RFC 3986 § 5), after
    ``hop`` redirects already followed. The target must stay in the origin of
    ``current`` (RFC 6454) and passes :func:`check_url` again (``trusted`` as for
    ``current``: credentials or a refused host in a same-origin ``Location`` are
    still refused).

    Raises :class:`~.errors.RedirectRefusedError`: ``REDIRECT_INVALID`` (no or
    unparsable ``Location``), ``TOO_MANY_REDIRECTS`` (``hop`` reached
    :data:`MAX_REDIRECTS`), ``REDIRECT_CROSS_ORIGIN`` (another origin; the target
    is named redacted, nothing is sent there); or :class:`~.errors.UnsafeUrlError`
    (``URL_REFUSED``)."""
    if status not in _REDIRECTS:
        return None
    shown = redact_url(str(current))
    if not location:
        raise RedirectRefusedError(
            shown, f"{what}: HTTP {status} without Location", rule="REDIRECT_INVALID"
        )
    try:
        target = current.join(location)
        _parse(target, what)
    except (httpx.InvalidURL, NetworkError, TypeError, ValueError):
        raise RedirectRefusedError(
            shown, f"{what}: redirect Location does not parse", rule="REDIRECT_INVALID"
        ) from None
    if hop >= MAX_REDIRECTS:
        raise RedirectRefusedError(
            shown,
            f"{what}: more than {MAX_REDIRECTS} redirects",
            rule="TOO_MANY_REDIRECTS",
        )
    if not same_origin(current, target):
        raise RedirectRefusedError(
            shown,
            f"{what}: redirect to another origin ({redact_url(str(target))}) "
            "refused; headers are never sent there",
        )
    return check_url(target, what=what, trusted=trusted)


def send(client: httpx.Client, request: httpx.Request, *, what: str) -> httpx.Response:
    """``client.send(request, stream=True)``, except that a response httpx cannot
    take apart (it resolves every redirect's ``Location`` even when not following
    it, and lets ``idna`` errors of an invalid host through) is
    :class:`~.errors.RedirectRefusedError` (``REDIRECT_INVALID``) instead of a raw
    ``ValueError``. httpx's own errors (``httpx.HTTPError``) pass through."""
    try:
        return client.send(request, stream=True)
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        raise RedirectRefusedError(
            redact_url(str(request.url)),
            f"{what}: the response does not parse, its redirect Location is not a "
            f"usable URL ({type(exc).__name__})",
            rule="REDIRECT_INVALID",
        ) from None


_LIVE: weakref.WeakSet[StallGuard] = weakref.WeakSet()
"""Every guard of this process, for the fork handler (their locks are renewed)."""


class _Watchdog:
    """One daemon thread that fires guards whose deadline passed (checked every
    50 ms). Registering costs a lock; moving a deadline costs the guard's lock.

    Fork-safe (DataLoader workers are forked): in the child the thread is
    restarted, the watchdog's and every guard's lock renewed (another thread may
    have held one at the fork), and the guards registered in the parent stay
    registered, so a stream opened before the fork keeps its deadline."""

    def __init__(self) -> None:
        self._guards: weakref.WeakSet[StallGuard] = weakref.WeakSet()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def after_fork_in_child(self) -> None:
        global _LIVE
        # threads other than the forking one are gone; nothing runs concurrently
        self._cond = threading.Condition()
        self._thread = None
        _LIVE = weakref.WeakSet(list(_LIVE))
        for guard in _LIVE:
            guard._after_fork_in_child()
        self._guards = weakref.WeakSet(list(self._guards))
        if len(self._guards):
            self._start()

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="atdata-net-watchdog", daemon=True
            )
            self._thread.start()

    def add(self, guard: StallGuard) -> None:
        with self._cond:
            self._guards.add(guard)
            self._start()
            self._cond.notify()

    def discard(self, guard: StallGuard) -> None:
        with self._cond:
            self._guards.discard(guard)

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not len(self._guards):
                    cond.wait()
                guards = list(self._guards)
            now = time.monotonic()
            for guard in guards:
                guard._expire(now)
            del guards
            time.sleep(0.05)


_WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG.after_fork_in_child)


class StallGuard:
    """Ties a wall-clock deadline to the sockets of one request (or one stream).

    Pass :meth:`trace` as the httpx ``trace`` request extension: it records each
    new connection's socket and, when ``check_peer`` is set, refuses a peer address
    an untrusted URL may not reach (:func:`~.hosts.refuse_address`), or a
    connection whose socket it cannot see (fail closed, ``PEER_UNVERIFIED``).

    :meth:`arm` sets a ``deadline`` (``time.monotonic()`` seconds) and starts a new
    *generation*; :meth:`disarm` ends it. When the deadline of the current
    generation passes while registered, the watchdog shuts the sockets down, so a
    blocked read returns at once, and ``fired`` is set. The test and the shutdown
    happen under the guard's lock, against the generation, so a read that
    finished (and disarmed) can never have the next read's socket shut down. Use
    as a context manager (registers/unregisters)."""

    def __init__(
        self, deadline: float, *, url: str = "", check_peer: bool = False
    ) -> None:
        self.url = url
        self.check_peer = check_peer
        self._deadline = deadline
        self._generation = 0
        self._fired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        _LIVE.add(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    @property
    def deadline(self) -> float:
        """The current deadline (``time.monotonic()`` seconds; ``inf``: none)."""
        return self._deadline

    @property
    def fired(self) -> bool:
        """Whether the current generation's deadline passed and the sockets were
        shut down."""
        return self._fired

    @property
    def generation(self) -> int:
        """Counts :meth:`arm` and :meth:`disarm` calls."""
        return self._generation

    def arm(self, deadline: float) -> int:
        """Start a new generation with ``deadline`` (``fired`` cleared); returns
        its number."""
        with self._lock:
            self._generation += 1
            self._fired = False
            self._deadline = deadline
            return self._generation

    def disarm(self) -> None:
        """End the current generation: no deadline until the next :meth:`arm`
        (``fired`` is kept, for the caller to read)."""
        with self._lock:
            self._generation += 1
            self._deadline = math.inf

    def __enter__(self) -> Self:
        _WATCHDOG.add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _WATCHDOG.discard(self)

    def _shutdown_locked(self) -> None:
        self._fired = True
        for sock in self._sockets:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def _expire(self, now: float) -> None:
        with self._lock:
            if not self._fired and now >= self._deadline:
                self._shutdown_locked()

    def fire(self, generation: int | None = None) -> bool:
        """Shut the sockets down now and set ``fired``, if ``generation`` (default:
        the current one) is still current; returns whether it fired."""
        with self._lock:
            if generation is not None and generation != self._generation:
                return False
            self._shutdown_locked()
            return True

    def _refuse(self, stream: Any, why: str, rule: str | None = None) -> None:
        stream.close()
        raise UnsafeUrlError(
            redact_url(self.url),
            f"URL from the network {why}; nothing was sent",
            rule=rule,
        )

    def trace(self, event: str, info: Mapping[str, Any]) -> None:
        if event != "connection.connect_tcp.complete":
            return
        stream: Any = info.get("return_value")
        sock = None
        if stream is not None:
            try:
                sock = stream.get_extra_info("socket")
            except Exception:  # noqa: BLE001 - any transport without the info
                sock = None
        if not isinstance(sock, socket.socket):
            if self.check_peer:
                if stream is None:
                    raise UnsafeUrlError(
                        redact_url(self.url),
                        "URL from the network: the connection exposes no socket, "
                        "its peer address cannot be checked; nothing was sent",
                        rule="PEER_UNVERIFIED",
                    )
                self._refuse(
                    stream,
                    "connected through a transport that exposes no socket, so its "
                    "peer address cannot be checked",
                    rule="PEER_UNVERIFIED",
                )
            return
        if self.check_peer:
            try:
                why = refuse_address(str(sock.getpeername()[0]))
            except (OSError, IndexError, TypeError):
                why = "an unknown address"
            if why is not None:
                self._refuse(stream, f"resolved to {why}")
        with self._lock:
            self._sockets = [s for s in self._sockets if s.fileno() != -1]
            self._sockets.append(sock)
            if self._fired:
                self._shutdown_locked()


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
) -> Fetched:
    """One bounded HTTP request; returns a :class:`Fetched` for any status.

    ``what`` names the kind in errors ("DID document", "record", "CAR", "blob",
    "list"); ``max_bytes`` caps the body (bytes); ``deadline`` is the total
    wall-clock budget in seconds for connect, headers and body of all redirects and
    retries together; ``trusted`` marks a URL the user configured (see the module
    docstring). ``retry``: when given, connection failures, 5xx and 429 are retried
    with it inside the same deadline (a final retryable status raises
    :class:`~.errors.RetryExhaustedError`). Redirects: see :func:`next_hop`.

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
    base = check_url(url, what=what, trusted=trusted)
    if params:
        try:
            base = base.copy_merge_params(dict(params))
        except Exception as exc:  # noqa: BLE001 - httpx raises several kinds
            raise UnsafeUrlError(
                redact_url(url),
                f"{what} URL parameters do not encode ({type(exc).__name__})",
            ) from None
        base = check_url(base, what=what, trusted=trusted)

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
) -> Fetched:
    if time.monotonic() >= end:
        raise _deadline_error(url, what, deadline)
    send_headers = {**headers, "Accept-Encoding": "identity"}
    current = httpx.URL(url)
    guard = StallGuard(end, url=url, check_peer=not trusted)
    client = httpx.Client(
        follow_redirects=False, trust_env=trusted, verify=ssl_context(trusted)
    )
    try:
        with guard:
            for hop in range(MAX_REDIRECTS + 1):
                guard.url = str(current)
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
                    response = send(client, request, what=what)
                except NetworkError:
                    raise
                except httpx.HTTPError as exc:
                    if guard.fired or time.monotonic() >= end:
                        raise _deadline_error(str(current), what, deadline) from None
                    raise ConnectionFailedError(
                        redact_url(str(current)),
                        f"{what}: {type(exc).__name__}",
                    ) from None
                try:
                    target = next_hop(
                        current,
                        response.status_code,
                        response.headers.get("location"),
                        what=what,
                        hop=hop,
                        trusted=trusted,
                    )
                    if target is not None:
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
