"""Fuzz: hostile DIDs and DID documents (issue 14, findings 3 and 4).

Hypothesis (fixed seeds) generates DIDs that try to smuggle paths, queries,
credentials and odd ports into did:web, and DID documents that are huge, deeply
nested, of the wrong types, or that name hostile PDS endpoints. Each must end in a
clean, ruled :class:`~atdata_runtime.net.errors.NetworkError` (``IdentityError``
included) in bounded time, and a DID that is accepted must map to exactly one
``https://<host>[:port]/.well-known/did.json``. Served over a loopback server this
test starts; memory is measured in a bounded child."""

from __future__ import annotations

import http.server
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from atdata_runtime.atmosphere.errors import IdentityError
from atdata_runtime.atmosphere.identity import (
    IdentityResolver,
    did_document_url,
    parse_did_document,
)
from atdata_runtime.net.errors import NetworkError
from atdata_runtime.net.fetch import INSECURE_LOOPBACK_ENV, check_url
from atdata_runtime.net.retry import RetryPolicy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .bounded import run_bounded

DID = "did:plc:abcdefghijklmnopqrstuvwx"

RULES = {
    "DID_INVALID",
    "DID_DOCUMENT_INVALID",
    "PDS_ENDPOINT_REFUSED",
    "IDENTITY_UNRESOLVED",
    "RESPONSE_TOO_LARGE",
    "RESPONSE_MALFORMED",
    "DEADLINE_EXCEEDED",
    "URL_REFUSED",
    "REDIRECT_CROSS_ORIGIN",
    "CONNECTION_FAILED",
    "RETRY_EXHAUSTED",
}

_PIECES = st.sampled_from(
    [
        "example.com",
        "localhost",
        "127.0.0.1",
        "10.0.0.1",
        "%3A",
        "%3a",
        "%2F",
        "%3F",
        "%23",
        "%40",
        "%25",
        "%00",
        ":",
        "/",
        "?",
        "#",
        "@",
        "[::1]",
        "..",
        ".",
        "-",
        "admin",
        "8080",
        "99999",
        "0",
        "ß",
        "\u0130",
        "\n",
        " ",
        "xn--bcher-kva",
    ]
)

hostile_dids = st.one_of(
    st.lists(_PIECES, min_size=1, max_size=8).map(lambda p: "did:web:" + "".join(p)),
    st.text(alphabet="abcxyz019.-:%/?#@AF3", min_size=0, max_size=40).map(
        lambda t: "did:web:" + t
    ),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567ABC01/.:%", max_size=30).map(
        lambda t: "did:plc:" + t
    ),
)


@pytest.fixture(scope="module", autouse=True)
def _no_loopback_mode() -> Iterator[None]:
    """These properties hold for the product's mode: the local network of another
    test in this worker (the session fixture ``net``) turns the test-only loopback
    mode on for its lifetime, so it is turned off here (tests that need it set it
    themselves)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(INSECURE_LOOPBACK_ENV, raising=False)
        yield


@settings(derandomize=True, max_examples=600, deadline=None)
@given(hostile_dids)
def test_hostile_dids_map_to_one_well_known_url_or_are_refused(did: str) -> None:
    try:
        url, trusted = did_document_url(did, "https://plc.example.com")
    except IdentityError as exc:
        assert exc.rule == "DID_INVALID"
        return
    parsed = httpx.URL(url)
    assert not parsed.userinfo and not parsed.query and not parsed.fragment
    if did.startswith("did:plc:"):
        assert trusted and url == f"https://plc.example.com/{did}"
        assert "/" not in did and "%" not in did
        return
    assert not trusted
    assert parsed.scheme == "https" and parsed.path == "/.well-known/did.json"
    authority = did[len("did:web:") :].lower().replace("%3a", ":")
    host = parsed.raw_host.decode("ascii")  # .host decodes punycode
    assert authority == (host if parsed.port is None else f"{host}:{parsed.port}")


_ENDPOINTS = st.one_of(
    st.sampled_from(
        [
            "https://pds.example.com",
            "https://pds.example.com/",
            "http://pds.example.com",
            "https://127.0.0.1",
            "https://localhost",
            "https://10.1.1.1:443",
            "https://169.254.169.254/latest",
            "https://[fe80::1]",
            "https://u:p@pds.example.com",
            "https://pds.example.com/path",
            "https://pds.example.com?q",
            "https://pds.example.com#f",
            "ftp://pds.example.com",
            "javascript:alert(1)",
            "https://",
            "",
        ]
    ),
    st.text(max_size=30),
    st.integers(),
    st.none(),
    st.lists(st.text(max_size=5), max_size=3),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)

_SERVICES = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {
                "id": st.sampled_from(
                    ["#atproto_pds", f"{DID}#atproto_pds", "#other", "atproto_pds"]
                ),
                "type": st.sampled_from(["AtprotoPersonalDataServer", "Other", 1]),
                "serviceEndpoint": _ENDPOINTS,
            }
        ),
        json_values,
    ),
    max_size=4,
)

hostile_documents = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {
            "id": st.sampled_from([DID, DID.upper(), "did:plc:other", 7]),
            "service": st.one_of(_SERVICES, json_values),
            "alsoKnownAs": st.one_of(
                st.lists(st.text(max_size=20), max_size=3), json_values
            ),
        }
    ),
)


def _check_accepted_pds(pds: str) -> None:
    parsed = check_url(pds, what="PDS endpoint", trusted=False)
    assert parsed.scheme == "https" and parsed.path in ("", "/")
    assert not parsed.query and not parsed.userinfo


@settings(derandomize=True, max_examples=500, deadline=None)
@given(hostile_documents)
def test_hostile_documents_parse_to_a_checked_pds_or_a_ruled_error(doc: Any) -> None:
    try:
        result = parse_did_document(DID, doc)
    except IdentityError as exc:
        assert exc.rule in RULES
        return
    _check_accepted_pds(result.pds)
    assert all(isinstance(h, str) for h in result.handles)


class _Body:
    data = b""


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[int, type[_Body]]]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = _Body.data
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:
                pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(
        target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    yield srv.server_port, _Body
    srv.shutdown()
    srv.server_close()


hostile_bodies = st.one_of(
    hostile_documents.map(lambda d: json.dumps(d).encode()),
    st.integers(min_value=1, max_value=200_000).map(lambda n: b"[" * n),
    st.integers(min_value=1, max_value=20_000).map(lambda n: b'{"a":' * n),
    st.integers(min_value=4300, max_value=60_000).map(lambda n: b"1" * n),
    st.binary(max_size=200),
    st.integers(min_value=65_537, max_value=300_000).map(lambda n: b" " * n),
)


@settings(
    derandomize=True,
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=hostile_bodies)
def test_served_hostile_documents_fail_cleanly_and_fast(
    served: tuple[int, type[_Body]], monkeypatch: pytest.MonkeyPatch, body: bytes
) -> None:
    port, holder = served
    monkeypatch.setenv(INSECURE_LOOPBACK_ENV, "1")
    holder.data = body
    did = f"did:web:localhost%3A{port}"
    resolver = IdentityResolver(timeout=3.0, retry=RetryPolicy(attempts=1))
    start = time.monotonic()
    try:
        doc = resolver.did_document(did)
    except NetworkError as exc:
        assert exc.rule in RULES, exc
        assert "serviceEndpoint" not in str(exc)  # never quotes the document
    else:
        _check_accepted_pds(doc.pds)
    assert time.monotonic() - start < 3.5


def test_hostile_bodies_keep_memory_bounded() -> None:
    code = """
    import http.server, threading
    from atdata_runtime.atmosphere.identity import IdentityResolver
    from atdata_runtime.net.retry import RetryPolicy
    bodies = [b"[" * 65_000, b'{"a":' * 13_000, b"9" * 65_000,
              b'{"id": "x", "service": [' + b'{"id": "#atproto_pds"},' * 2700 + b'{}]}',
              b" " * 50_000_000]
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *a): pass
        def do_GET(self):
            body = bodies[H.n]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:
                pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    rules = []
    for n in range(len(bodies)):
        H.n = n
        try:
            IdentityResolver(timeout=5, retry=RetryPolicy(attempts=1)).did_document(
                f"did:web:localhost%3A{srv.server_port}")
        except Exception as exc:
            rules.append(type(exc).__name__ + ":" + getattr(exc, "rule", "?"))
    _result["value"] = rules
    """
    out = run_bounded(
        code, address_space_mib=1024, timeout=60, env={INSECURE_LOOPBACK_ENV: "1"}
    )
    assert out.error_type is None, out.traceback
    assert out.value == [
        "ResponseFormatError:RESPONSE_MALFORMED",
        "ResponseFormatError:RESPONSE_MALFORMED",
        "ResponseFormatError:RESPONSE_MALFORMED",
        "DidDocumentError:DID_DOCUMENT_INVALID",
        "ResponseTooLargeError:RESPONSE_TOO_LARGE",
    ]
    assert out.max_rss_mib < 150, out.max_rss_mib


# -- hosts in disguise: numeric IPv4 spellings, IPv6 transition forms, bad IDNA --------

_SPECIAL_V4 = st.sampled_from(
    [
        "127.0.0.1",
        "127.255.0.9",
        "10.0.0.1",
        "192.168.1.1",
        "172.16.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "8.8.8.8",  # global: may be accepted, but only when written canonically
    ]
)


def _spellings(dotted: str) -> st.SearchStrategy[str]:
    value = int(ipaddress.IPv4Address(dotted))
    a, b, c, d = (int(x) for x in dotted.split("."))
    return st.sampled_from(
        [
            dotted,
            str(value),
            hex(value),
            "0" + oct(value)[2:],
            f"{a}.{(b << 16) | (c << 8) | d}",
            f"{a}.{b}.{(c << 8) | d}",
            f"{hex(a)}.{b}.{c}.{d}",
            f"0{a:o}.{b}.{c}.{d}",
            f"{a:03d}.{b:03d}.{c:03d}.{d:03d}",
            dotted + ".",
            f"[::ffff:{dotted}]",
            f"[::{dotted}]",
            f"[2002:{a:02x}{b:02x}:{c:02x}{d:02x}::1]",
            f"[64:ff9b::{dotted}]",
            f"[2001:0:{a:02x}{b:02x}:{c:02x}{d:02x}::1]",  # Teredo server
            f"[2001:0:808:808::{a ^ 255:02x}{b ^ 255:02x}:{c ^ 255:02x}{d ^ 255:02x}]",
        ]
    )


hostile_hosts = st.one_of(
    _SPECIAL_V4.flatmap(_spellings),
    st.text(alphabet="0123456789abcdefx.", min_size=1, max_size=20),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", max_size=12).map(
        lambda t: "xn--" + t
    ),
    st.text(max_size=12),
)


def _reaches(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """What a resolver or WHATWG URL parsing connects to for ``host``, when that
    is an address (independent of the code under test: inet_aton and ipaddress)."""
    name = host.strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(name))
    except (OSError, ValueError):
        return None


@settings(derandomize=True, max_examples=800, deadline=None)
@given(hostile_hosts)
def test_disguised_hosts_never_become_an_accepted_special_address(host: str) -> None:
    endpoint = f"https://{host}"
    try:
        result = parse_did_document(DID, {"id": DID, "service": [_pds(endpoint)]})
    except IdentityError as exc:
        assert exc.rule in RULES
        return
    parsed = check_url(result.pds, what="PDS endpoint", trusted=False)
    target = _reaches(parsed.raw_host.decode("ascii"))
    if target is None:
        return  # a DNS name: its addresses are checked on the connected peer
    # an address: only a canonical, global one, with nothing embedded that is not
    if isinstance(target, ipaddress.IPv6Address):
        embedded = [
            target.ipv4_mapped,
            target.sixtofour,
            *(target.teredo or ()),
        ]
        assert all(v4 is None or v4.is_global for v4 in embedded)
    else:
        assert str(target) == parsed.raw_host.decode("ascii").rstrip(".")
    assert target.is_global and not target.is_multicast


def _pds(endpoint: str) -> dict[str, Any]:
    return {
        "id": "#atproto_pds",
        "type": "AtprotoPersonalDataServer",
        "serviceEndpoint": endpoint,
    }
