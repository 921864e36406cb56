"""Hosts and origins (pure Python, importable without extras): which address a URL
from the network may reach (:func:`refuse_address`, :func:`refuse_host`), which
host is the local machine (:func:`is_loopback_host`), and the origin of a URL
(:func:`origin`).

The address rules are those of :mod:`atdata_runtime.net.fetch` (issue 14,
finding 3): a URL from a record or a DID document must not reach the local
machine or a private network, however the address is spelled.

* **IP literals** are judged by the IANA special-purpose address registries
  (RFC 6890): loopback, unspecified, link-local, private, multicast, reserved and
  any other non-global address is refused.
* **IPv6 addresses that carry an IPv4 address** are judged by it (:func:`refuse_address`):
  IPv4-mapped ``::ffff:0:0/96`` and IPv4-compatible ``::/96`` (RFC 4291
  § 2.5.5), 6to4 ``2002::/16`` (RFC 3056), NAT64 ``64:ff9b::/96`` (RFC 6052),
  Teredo ``2001::/32`` (RFC 4380; the client address is stored XOR-ed).
* **Non-canonical IPv4 spellings** (``2130706433``, ``0x7f000001``, ``127.1``,
  ``017700000001``, ``127.000.0.1``) are refused outright: resolvers
  (``inet_aton``, glibc ``getaddrinfo``) and WHATWG URL parsing (the "ends in a
  number" rule) read them as IPv4 addresses, so a check that reads them as names
  would be bypassed by any client without a check on the connected peer.

Test-only loopback mode: with ``ATDATA_RUNTIME_INSECURE_LOOPBACK=1``
(:data:`INSECURE_LOOPBACK_ENV`) loopback hosts (``localhost``, ``*.localhost``,
``127.0.0.0/8``, ``::1``, ``::ffff:127.0.0.0/104``) are allowed. Never set it in
production.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from urllib.parse import urlsplit

__all__ = [
    "INSECURE_LOOPBACK_ENV",
    "insecure_loopback",
    "is_loopback_host",
    "origin",
    "refuse_address",
    "refuse_host",
]

INSECURE_LOOPBACK_ENV = "ATDATA_RUNTIME_INSECURE_LOOPBACK"
"""Environment variable that, set to ``1``, lets untrusted URLs use ``http`` and
loopback hosts. For tests against a local PDS/PLC only."""

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NUMBER = re.compile(r"[0-9]+|0x[0-9a-f]*")
_DNS_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}


def insecure_loopback() -> bool:
    """Whether the test-only loopback mode (:data:`INSECURE_LOOPBACK_ENV`) is on."""
    return os.environ.get(INSECURE_LOOPBACK_ENV, "") == "1"


def _embedded_ipv4(
    ip: ipaddress.IPv6Address,
) -> tuple[str, tuple[ipaddress.IPv4Address, ...]]:
    """``(form, addresses)``: the IPv4 addresses an IPv6 address carries, by the
    transition mechanism that routes it there, or ``("", ())``."""
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", (ip.ipv4_mapped,)
    if ip.sixtofour is not None:
        return "6to4", (ip.sixtofour,)
    if ip in _TEREDO and ip.teredo is not None:
        return "Teredo", ip.teredo  # (server, client), the client un-XOR-ed
    low = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _NAT64:
        return "NAT64", (low,)
    if ip in _COMPATIBLE and int(ip) > 1:  # neither :: nor ::1
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


def ip_refusal(ip: _IP) -> str | None:
    """:func:`refuse_address` for a parsed address."""
    if isinstance(ip, ipaddress.IPv6Address):
        form, embedded = _embedded_ipv4(ip)
        for v4 in embedded:
            why = _plain_refusal(v4)
            if form == "IPv4-mapped":
                return why  # the same host as v4 on a dual-stack socket
            if why is None and v4.is_loopback:
                # through a relay or translator: never the local machine
                why = "a loopback address"
            if why is not None:
                article = "an" if form[0] in "AEIOU" else "a"
                return f"{article} {form} address embedding {why} ({v4})"
        if form in ("6to4", "NAT64"):
            return None
    return _plain_refusal(ip)


def refuse_address(ip: str) -> str | None:
    """Why the address ``ip`` (an IPv4 or IPv6 literal; a ``%zone`` is ignored) may
    not be contacted for a URL from the network, or ``None`` when it may.

    Refused: loopback (allowed only in the test-only loopback mode,
    :data:`INSECURE_LOOPBACK_ENV`), unspecified, link-local, private, multicast,
    reserved and any other non-global address (IANA special-purpose address
    registries, RFC 6890); an IPv6 address that embeds an IPv4 address is judged
    by it: IPv4-mapped exactly as that address, 6to4, NAT64, Teredo (server and
    client) and IPv4-compatible ones refused when the embedded address would be,
    or is loopback (even in the test mode: they reach it only through a relay),
    and Teredo and IPv4-compatible ones then also as IPv6 (both non-global).
    Text that is not an address is refused (``"not an IP address"``).

    Use it on every address a name resolves to before connecting: it is the check
    :func:`~atdata_runtime.net.fetch.fetch` makes on the connected peer."""
    try:
        parsed = ipaddress.ip_address(str(ip).split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    return ip_refusal(parsed)


def _name(host: str) -> str:
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name.rstrip(".")


def _ip_literal(name: str) -> _IP | None:
    try:
        return ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return None


def _non_canonical_ipv4(name: str) -> str | None:
    """The dotted quad a non-canonical IPv4 spelling means, or ``None``."""
    try:
        return socket.inet_ntoa(socket.inet_aton(name))
    except (OSError, ValueError):
        pass
    last = name.rsplit(".", 1)[-1]
    if last and _NUMBER.fullmatch(last):
        return "an IPv4 address by URL host parsing"  # WHATWG "ends in a number"
    return None


def refuse_host(host: str) -> str | None:
    """Why the host of a URL from the network (a name or an IP literal, brackets
    and a trailing dot allowed, ASCII as sent: IDNA-encoded) may not be contacted,
    or ``None``: ``localhost`` and ``*.localhost`` (RFC 6761 § 6.3) unless in the
    test-only loopback mode, IP literals by :func:`refuse_address`, any
    non-canonical IPv4 spelling (see the module docstring), and anything but
    dot-separated labels of ``a-z 0-9 - _`` (a percent-escape, a space). A name that resolves
    to a refused address is caught on the connected peer, not here."""
    name = _name(host)
    if name == "localhost" or name.endswith(".localhost"):
        return None if insecure_loopback() else "a localhost name"
    ip = _ip_literal(name)
    if ip is not None:
        return ip_refusal(ip)
    meant = _non_canonical_ipv4(name)
    if meant is not None:
        return f"an IPv4 address in a non-canonical form (read as {meant})"
    if not _DNS_NAME.fullmatch(name):
        return "a host that is not a DNS name nor an IP address"
    return None


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names the local machine: ``localhost``, ``*.localhost``
    (RFC 6761 § 6.3), an address in ``127.0.0.0/8`` or ``::1``, or their
    IPv4-mapped form (case, brackets and a trailing dot ignored; non-canonical
    IPv4 spellings are not loopback hosts, they are refused)."""
    name = _name(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    ip = _ip_literal(name)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip is not None and ip.is_loopback


def _ascii_host(host: str) -> str | None:
    if host.isascii():
        return host
    try:
        import idna  # IDNA 2008 + UTS 46, as httpx encodes hosts

        return str(idna.encode(host, uts46=True).decode("ascii"))
    except ImportError:  # pragma: no cover - httpx (the http extra) brings idna
        try:
            return host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    except (UnicodeError, ValueError):
        return None


def origin(url: str) -> str:
    """The origin of ``url`` serialized as RFC 6454 § 6.2 says:
    ``scheme://host[:port]`` with the scheme and host lowercased, a non-ASCII host
    IDNA-encoded (RFC 6454 § 4), a trailing dot of the host stripped, IPv6 hosts
    in brackets and compressed, and the scheme's default port (``http`` 80,
    ``https``/``wss`` 443, ``ws`` 80, ``ftp`` 21) left out. Userinfo, path, query
    and fragment are not part of it.

    A URL without a scheme or host (a local path), or one that does not parse
    (bad port, bad IDNA), has an opaque origin, serialized ``"null"``; an opaque
    origin equals no other origin, itself included, so compare with
    ``origin(a) == origin(b) != "null"`` (what
    :func:`~atdata_runtime.net.fetch.same_origin` does)."""
    try:
        parts = urlsplit(str(url))
        port = parts.port
        host = parts.hostname
    except ValueError:
        return "null"
    if not parts.scheme or not host:
        return "null"
    scheme = parts.scheme.lower()
    name = _ascii_host(_name(host))
    if not name:
        return "null"
    ip = _ip_literal(name)
    if isinstance(ip, ipaddress.IPv6Address):
        name = f"[{ip.compressed}]"
    if port is None or _DEFAULT_PORTS.get(scheme) == port:
        return f"{scheme}://{name}"
    return f"{scheme}://{name}:{port}"
