"""Finding 3 of issue 14: did:web SSRF. Identity resolution against loopback servers
this test starts: a did:web that smuggles a path and query, plain http, loopback
and private hosts, cross-origin redirects, response bodies in errors, and hostile
``#atproto_pds`` endpoints. Every server records what reached it."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from atdata_runtime.atmosphere.errors import DidDocumentError, IdentityError
from atdata_runtime.atmosphere.identity import (
    IdentityResolver,
    did_document_url,
    parse_did_document,
)
from atdata_runtime.net import is_loopback_host, origin, refuse_address
from atdata_runtime.net.errors import (
    NetworkError,
    RedirectRefusedError,
    UnsafeUrlError,
)
from atdata_runtime.net.fetch import INSECURE_LOOPBACK_ENV, check_url, same_origin
from atdata_runtime.net.retry import RetryPolicy

SECRET = "s3cr3t-admin-token-7f1c"
PLC_DID = "did:plc:abcdefghijklmnopqrstuvwx"

Route = Callable[[http.server.BaseHTTPRequestHandler], None]


@dataclass
class Server:
    port: int
    routes: dict[str, Route] = field(default_factory=dict)
    hits: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.hits]


def _send(
    handler: http.server.BaseHTTPRequestHandler,
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _json(doc: Any) -> Route:
    return lambda h: _send(
        h, 200, json.dumps(doc).encode(), {"Content-Type": "application/json"}
    )


def _redirect(status: int, location: str) -> Route:
    return lambda h: _send(h, status, headers={"Location": location})


def _start() -> tuple[Server, Callable[[], None]]:
    state: list[Server] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            server = state[0]
            server.hits.append((self.path, dict(self.headers.items())))
            route = server.routes.get(self.path.split("?")[0])
            if route is None:
                _send(self, 404, f"not here; {SECRET}".encode())
            else:
                route(self)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.append(Server(port=srv.server_port))
    thread = threading.Thread(
        target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()

    def stop() -> None:
        srv.shutdown()
        srv.server_close()

    return state[0], stop


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


@pytest.fixture
def loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INSECURE_LOOPBACK_ENV, "1")


@pytest.fixture(autouse=True)
def _no_loopback_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # a LocalNetwork started earlier in the session turns the test mode on
    monkeypatch.delenv(INSECURE_LOOPBACK_ENV, raising=False)


def _resolver(**kw: Any) -> IdentityResolver:
    return IdentityResolver(
        timeout=5.0, retry=RetryPolicy(attempts=1, sleep=lambda s: None), **kw
    )


def _doc(did: str, endpoint: Any = "https://pds.example.com") -> dict[str, Any]:
    return {
        "id": did,
        "alsoKnownAs": ["at://alice.example.com"],
        "service": [
            {
                "id": "#atproto_pds",
                "type": "AtprotoPersonalDataServer",
                "serviceEndpoint": endpoint,
            }
        ],
    }


# -- the reported attack ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["default", "loopback-test-mode"])
def test_did_web_smuggling_a_path_and_query_makes_no_request(
    server: Server, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    if mode != "default":
        monkeypatch.setenv(INSECURE_LOOPBACK_ENV, "1")
    server.routes["/admin/delete-user"] = lambda h: _send(h, 200, SECRET.encode())
    did = f"did:web:localhost%3A{server.port}%2Fadmin%2Fdelete-user%3Fid%3D7%23"
    with pytest.raises(IdentityError) as info:
        _resolver().did_document(did)
    assert info.value.rule == "DID_INVALID"
    assert "hostname with an optional %3A port" in str(info.value)
    assert server.hits == []  # /admin/delete-user was never called


@pytest.mark.parametrize(
    "msid",
    [
        "example.com:admin",  # a did:web path
        "example.com%2Fadmin",
        "example.com%3A443%2F",
        "example.com%40evil.com",
        "user%3Apass%40example.com",
        "example.com%3A99999",
        "example.com%3A",
        "-bad.example.com",
        "exa_mple.com",
        "example..com",
        "a" * 64 + ".com",
        "example.com%3a80%3a81",
    ],
)
def test_only_hostname_and_port_did_web_is_accepted(msid: str) -> None:
    with pytest.raises(IdentityError) as info:
        did_document_url(f"did:web:{msid}")
    assert info.value.rule == "DID_INVALID"


def test_did_web_url_is_built_from_parsed_parts() -> None:
    assert did_document_url("did:web:Example.COM%3a8443") == (
        "https://example.com:8443/.well-known/did.json",
        False,
    )
    assert did_document_url("did:web:example.com") == (
        "https://example.com/.well-known/did.json",
        False,
    )


@pytest.mark.parametrize(
    "did",
    [
        "did:plc:ABCDEFGHIJKLMNOPQRSTUVWX",
        "did:plc:abc",
        "did:plc:abcdefghijklmnopqrstuvw1",
    ],
)
def test_did_plc_must_be_24_base32_characters(did: str) -> None:
    with pytest.raises(IdentityError) as info:
        did_document_url(did, "http://127.0.0.1:1")
    assert info.value.rule == "DID_INVALID"


# -- https only, no loopback or private hosts ----------------------------------------


def test_plain_http_loopback_did_web_is_refused_outside_test_mode(
    server: Server,
) -> None:
    server.routes["/.well-known/did.json"] = _json(_doc("x"))
    for did in (
        f"did:web:localhost%3A{server.port}",
        f"did:web:127.0.0.1%3A{server.port}",
    ):
        with pytest.raises(UnsafeUrlError) as info:
            _resolver().did_document(did)
        assert info.value.rule == "URL_REFUSED"
        assert "https" not in info.value.uri or "http" in info.value.uri
    assert server.hits == []


def test_names_that_resolve_to_loopback_are_refused_after_connect(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DNS rebinding: a public-looking name whose A record is 127.0.0.1. The test
    # cannot run a DNS server, so the resolver answers for that one name (a
    # stand-in for DNS only); the connection, its peer check and the server are
    # real, and the peer is checked before anything (even TLS) is sent.
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host == "rebind.example" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(UnsafeUrlError, match="resolved to a loopback address"):
        _resolver().did_document(f"did:web:rebind.example%3A{server.port}")
    assert server.hits == []


@pytest.mark.parametrize(
    "host", ["10.0.0.7", "192.168.1.1", "169.254.169.254", "0.0.0.0", "172.16.0.1"]
)
def test_private_hosts_are_refused_even_in_test_mode(host: str, loopback: None) -> None:
    with pytest.raises(UnsafeUrlError) as info:
        _resolver().did_document(f"did:web:{host}")
    assert info.value.rule == "URL_REFUSED"


def test_loopback_test_mode_allows_http_on_loopback(
    server: Server, loopback: None
) -> None:
    did = f"did:web:localhost%3A{server.port}"
    server.routes["/.well-known/did.json"] = _json(_doc(did))
    doc = _resolver().did_document(did)
    assert doc.pds == "https://pds.example.com"
    assert server.paths == ["/.well-known/did.json"]


# -- redirects and bodies -----------------------------------------------------------


def test_cross_origin_redirect_is_refused(
    server: Server, other: Server, loopback: None
) -> None:
    did = f"did:web:localhost%3A{server.port}"
    other.routes["/.well-known/did.json"] = _json(_doc(did))
    for target in (
        f"http://127.0.0.1:{other.port}/.well-known/did.json",  # other port
        f"http://127.0.0.1:{server.port}/.well-known/did.json",  # other host
        f"https://localhost:{server.port}/.well-known/did.json",  # other scheme
    ):
        server.routes["/.well-known/did.json"] = _redirect(302, target)
        with pytest.raises(RedirectRefusedError) as info:
            _resolver().did_document(did)
        assert info.value.rule == "REDIRECT_CROSS_ORIGIN"
    assert other.hits == []


def test_same_origin_redirects_are_followed_up_to_five(
    server: Server, loopback: None
) -> None:
    did = f"did:web:localhost%3A{server.port}"
    server.routes["/.well-known/did.json"] = lambda h: _send(
        h, 307, headers={"Location": "/hop/1"}
    )
    for i in range(1, 5):
        server.routes[f"/hop/{i}"] = _redirect(302, f"/hop/{i + 1}")
    server.routes["/hop/5"] = _json(_doc(did))
    assert _resolver().did_document(did).did == did
    server.routes["/hop/5"] = lambda h: _send(h, 302, headers={"Location": "/hop/6"})
    with pytest.raises(RedirectRefusedError) as info:
        _resolver().did_document(did)
    assert info.value.rule == "TOO_MANY_REDIRECTS"


@pytest.mark.parametrize("status", [200, 403, 404, 500])
def test_errors_never_carry_the_response_body(
    server: Server, loopback: None, status: int
) -> None:
    did = f"did:web:localhost%3A{server.port}"
    body = f"<html>{SECRET}</html>".encode()
    server.routes["/.well-known/did.json"] = lambda h: _send(h, status, body)
    with pytest.raises(NetworkError) as info:
        _resolver().did_document(did)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value.args)
    assert info.value.rule in (
        "IDENTITY_UNRESOLVED",
        "RESPONSE_MALFORMED",
        "RETRY_EXHAUSTED",
    )


# -- the PDS endpoint named by a DID document ----------------------------------------


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://pds.example.com",  # not https
        "https://10.0.0.5:2583",
        "https://169.254.169.254",
        "https://localhost:2583",
        "https://127.0.0.1",
        "https://[::1]:2583",
        "https://user:pw@pds.example.com",
        "https://pds.example.com/xrpc/admin",
        "https://pds.example.com?x=1",
        "file:///etc/passwd",
        "gopher://pds.example.com",
        "",
    ],
)
def test_hostile_pds_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(IdentityError) as info:
        parse_did_document(PLC_DID, _doc(PLC_DID, endpoint))
    assert info.value.rule == "PDS_ENDPOINT_REFUSED"
    assert "pw" not in str(info.value)


@pytest.mark.parametrize(
    "doc",
    [
        [],
        "x",
        {"id": "did:plc:someoneelse"},
        {"id": PLC_DID, "service": {"id": "#atproto_pds"}},
        {"id": PLC_DID, "alsoKnownAs": "at://x"},
        {"id": PLC_DID, "service": [{}] * 65},
        _doc(PLC_DID, 12),
        _doc(PLC_DID, {"uri": "https://x"}),
    ],
)
def test_malformed_documents_are_did_document_errors(doc: Any) -> None:
    with pytest.raises(DidDocumentError) as info:
        parse_did_document(PLC_DID, doc)
    assert info.value.rule == "DID_DOCUMENT_INVALID"


def test_plc_directory_is_trusted_but_its_documents_are_not(server: Server) -> None:
    # the user's PLC directory may be plain http on loopback (no test mode) ...
    server.routes[f"/{PLC_DID}"] = _json(_doc(PLC_DID))
    resolver = _resolver(plc_url=f"http://127.0.0.1:{server.port}")
    assert resolver.did_document(PLC_DID).pds == "https://pds.example.com"
    # ... but the PDS endpoint its document names is a URL from the network
    server.routes[f"/{PLC_DID}"] = _json(_doc(PLC_DID, "http://127.0.0.1:2583"))
    with pytest.raises(IdentityError) as info:
        _resolver(plc_url=f"http://127.0.0.1:{server.port}").did_document(PLC_DID)
    assert info.value.rule == "PDS_ENDPOINT_REFUSED"


def test_handle_well_known_is_refused_for_local_names(server: Server) -> None:
    with pytest.raises(IdentityError) as info:
        _resolver().resolve_handle("localhost.localhost")
    assert "URL_REFUSED" in str(info.value)
    assert server.hits == []


# -- IPv4 in disguise (review of the bounded HTTP layer, item 1) ----------------------

# Each names 127.0.0.1 (or another refused address) in a form that a check reading
# IP literals with ``ipaddress`` alone took for a host name, while inet_aton,
# getaddrinfo, WHATWG URL parsing or an IPv6 transition mechanism reach the
# refused address. Clients without a peer check (s3fs/botocore) would connect.
DISGUISED = [
    "https://2130706433/",  # 127.0.0.1 as one decimal number
    "https://0x7f000001/",  # hexadecimal
    "https://017700000001/",  # octal
    "https://127.1/",  # short form
    "https://0x7f.0.0.1/",  # hexadecimal part
    "https://127.000.000.001/",  # zero-padded (octal to inet_aton)
    "https://0177.0.0.1./",  # octal part, trailing dot
    "https://3232235777/",  # 192.168.1.1
    "https://2852039166/",  # 169.254.169.254 (cloud metadata)
    "https://example.0x10/",  # WHATWG: ends in a number, so IPv4
    "https://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "https://[2002:a9fe:a9fe::]/",  # 6to4 of 169.254.169.254
    "https://[64:ff9b::7f00:1]/",  # NAT64 of 127.0.0.1
    "https://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
    "https://[::ffff:7f00:1]/",  # IPv4-mapped 127.0.0.1
    "https://[::ffff:10.0.0.1]/",  # IPv4-mapped 10.0.0.1
    "https://[::127.0.0.1]/",  # IPv4-compatible
    "https://[2001:0:808:808::80ff:fffe]/",  # Teredo, client 127.0.0.1 (XOR-ed)
    "https://[2001:0:a00:1::f7f7:f7f7]/",  # Teredo, server 10.0.0.1
]


@pytest.mark.parametrize("url", DISGUISED)
def test_disguised_ipv4_hosts_are_refused_before_connecting(url: str) -> None:
    with pytest.raises(UnsafeUrlError) as info:
        check_url(url, what="PDS endpoint")
    assert info.value.rule == "URL_REFUSED"
    with pytest.raises(IdentityError) as info2:
        parse_did_document(PLC_DID, _doc(PLC_DID, url.rstrip("/")))
    assert info2.value.rule == "PDS_ENDPOINT_REFUSED"


@pytest.mark.parametrize("url", DISGUISED)
def test_disguised_loopback_stays_refused_in_test_mode(
    url: str, loopback: None
) -> None:
    # the test mode allows 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104 as written,
    # never a spelling that only a resolver or a relay turns into them
    if url in ("https://[::ffff:7f00:1]/",):
        assert check_url(url, what="PDS endpoint").host == "::ffff:7f00:1"
        return
    with pytest.raises(UnsafeUrlError):
        check_url(url, what="PDS endpoint")


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "127.1"])
def test_did_web_with_a_numeric_host_is_refused_before_connecting(
    host: str, server: Server, loopback: None
) -> None:
    with pytest.raises(UnsafeUrlError) as info:
        _resolver().did_document(f"did:web:{host}%3A{server.port}")
    assert info.value.rule == "URL_REFUSED" and "non-canonical" in info.value.reason
    assert server.hits == []


@pytest.mark.parametrize(
    "address, why",
    [
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("2002:808:808::1", None),  # 6to4 of a global address
        ("64:ff9b::808:808", None),  # NAT64 of a global address
        ("::ffff:8.8.8.8", None),
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("fe80::1%eth0", "a link-local address"),
        ("2002:7f00:1::", "a 6to4 address embedding a loopback address (127.0.0.1)"),
        ("64:ff9b::a9fe:a9fe", "a NAT64 address embedding a link-local address"),
        ("::10.0.0.1", "an IPv4-compatible address embedding a private address"),
        ("2001:0:808:808::80ff:fffe", "a Teredo address embedding a loopback"),
        ("not an address", "not an IP address"),
    ],
)
def test_refuse_address(address: str, why: str | None) -> None:
    got = refuse_address(address)
    assert got == why if why is None else (got or "").startswith(why)


def test_refuse_address_honours_the_test_mode(loopback: None) -> None:
    assert refuse_address("127.0.0.1") is None
    assert refuse_address("::1") is None
    assert refuse_address("::ffff:127.0.0.1") is None
    assert refuse_address("2002:7f00:1::") is not None  # through a relay: never
    assert refuse_address("10.0.0.1") == "a private address"


def test_peer_check_unwraps_embedded_ipv4() -> None:
    # the post-connect check uses the same rules (a 6to4 peer embedding
    # 169.254.169.254 is refused even though ipaddress calls it global)
    assert refuse_address("2002:a9fe:a9fe::1") is not None


@pytest.mark.parametrize(
    "host, loop",
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("pds.localhost", True),
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("127.1", False),  # refused, not loopback
        ("2130706433", False),
        ("example.com", False),
        ("10.0.0.1", False),
    ],
)
def test_one_loopback_test(host: str, loop: bool) -> None:
    assert is_loopback_host(host) is loop


# -- URLs that do not parse (item 2) --------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://xn--localhost",  # invalid A-label: idna raises InvalidCodepoint
        "https://xn--ls8h.xn--zz",
        "https://pds.example.com:99999",
        "https://pds.example.com:x",
        "https://[::1",
        "https://exa mple.com",  # httpx sends exa%20mple.com
        "https://\udcff.example.com",
    ],
)
def test_unparsable_urls_are_ruled_errors(url: str) -> None:
    with pytest.raises(UnsafeUrlError) as info:
        check_url(url, what="PDS endpoint")
    assert info.value.rule == "URL_REFUSED"
    assert any(w in info.value.reason for w in ("does not parse", "not a DNS name"))
    with pytest.raises(IdentityError) as info2:
        parse_did_document(PLC_DID, _doc(PLC_DID, url))
    assert info2.value.rule == "PDS_ENDPOINT_REFUSED"


def test_redirect_to_an_unparsable_location_is_a_ruled_error(
    server: Server, loopback: None
) -> None:
    did = f"did:web:localhost%3A{server.port}"
    server.routes["/.well-known/did.json"] = _redirect(302, "https://xn--localhost/")
    with pytest.raises(RedirectRefusedError) as info:
        _resolver().did_document(did)
    assert info.value.rule in ("REDIRECT_INVALID", "REDIRECT_CROSS_ORIGIN")


# -- origins (item 6) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "url, expected",
    [
        ("https://PDS.Example.COM/xrpc?x=1#f", "https://pds.example.com"),
        ("HTTPS://pds.example.com:443/", "https://pds.example.com"),
        ("http://pds.example.com:80", "http://pds.example.com"),
        ("https://pds.example.com:8443/a", "https://pds.example.com:8443"),
        ("https://pds.example.com./", "https://pds.example.com"),
        ("https://u:p@pds.example.com/", "https://pds.example.com"),
        ("https://[0:0::1]:8080/", "https://[::1]:8080"),
        ("https://bücher.example/", "https://xn--bcher-kva.example"),
        ("s3://bucket/key", "s3://bucket"),
        ("/local/path.tar", "null"),
        ("https://host:99999/", "null"),
        ("not a url", "null"),
    ],
)
def test_origin(url: str, expected: str) -> None:
    assert origin(url) == expected


def test_opaque_origins_are_never_the_same() -> None:
    assert not same_origin("/a", "/a")
    assert same_origin("https://a.example/x", "https://A.example.:443/y")


def test_the_loopback_hint_is_given_only_where_it_helps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The test-mode hint is offered for loopback hosts only: the mode never
    allows link-local or private addresses, so suggesting it there misleads."""
    monkeypatch.delenv(INSECURE_LOOPBACK_ENV, raising=False)
    with pytest.raises(UnsafeUrlError) as loop:
        check_url("https://127.0.0.1/x", what="shard")
    assert INSECURE_LOOPBACK_ENV in str(loop.value)
    for url in (
        "https://169.254.169.254/latest",
        "https://10.0.0.1/",
        "https://[fe80::1]/",
    ):
        with pytest.raises(UnsafeUrlError) as other:
            check_url(url, what="shard")
        assert INSECURE_LOOPBACK_ENV not in str(other.value), url
