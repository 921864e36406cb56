"""Fuzz: hostile entry records through the entry → shard list path
(:func:`atdata_runtime.atmosphere.load.entry_shards`, what ``resolve_dataset`` and
``load_dataset`` run on every entry) and hostile brace patterns through
:func:`atdata_runtime.shards.expand_urls`.

Entries mix shard URLs with brace notation, long lists, odd schemes
(``file:///etc/passwd``, ``gopher:``), internal addresses
(``http://169.254.169.254/``, private and loopback IPs, ``localhost``), credentials
in URLs, ``s3://`` storages with odd buckets, regions and endpoints, checksums of
the wrong length and kinds, and blob CIDs that are not CIDs. Each must either be
refused with an :class:`EntryStorageError` that names the entry, the JSON pointer
and a known rule (and no secret of the URL), or give a shard list that keeps every
promise: URLs literal and listed once, no more than ``max_shards``, checksums keyed
by the final URLs and 64 hex digits, every HTTP URL and S3 endpoint https on a
public host unless the user trusts its origin, untrusted endpoints anonymous. The
socket layer refuses any connection or name lookup during the run, so a check that
happened only at connect time would fail the test. Fixed seeds; about 20 s.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import braceexpand
import pytest
from atdata_runtime.atmosphere.client import FetchedRecord
from atdata_runtime.atmosphere.load import EntryStorageError, entry_shards
from atdata_runtime.atmosphere.records import ENTRY
from atdata_runtime.net.fetch import INSECURE_LOOPBACK_ENV
from atdata_runtime.shards import ShardListError, expand_urls, origin_of
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from .bounded import run_bounded

OWNER = "did:plc:abcdefghijklmnopqrstuvwx"
ENTRY_URI = f"at://{OWNER}/{ENTRY}/3kabcdefghijk"
SECRET = "hunter2secret"
TRUSTED = "https://s3.trusted.example"

RULES = {
    "CHECKSUM_ALGORITHM",
    "ENTRY_INVALID",
    "ENTRY_NO_SHARDS",
    "ENTRY_TOO_MANY_SHARDS",
    "SHARD_URL",
    "SHARD_URL_BRACES",
    "SHARD_DUPLICATE",
    "SHARD_CHECKSUM_INVALID",
    "S3_ENDPOINT",
    "S3_BUCKET",
    "S3_REGION",
    "S3_KEY",
    "BLOB_CID",
    "STORAGE_UNSUPPORTED",
}

HOSTS = [
    "data.example.org",
    "169.254.169.254",
    "10.0.0.7",
    "192.168.1.1",
    "127.0.0.1",
    "[::1]",
    "[fe80::1]",
    "[::ffff:127.0.0.1]",
    "0.0.0.0",
    "localhost",
    "a.localhost",
    "224.0.0.1",
    f"user:{SECRET}@data.example.org",
    "s3.trusted.example",
    "xn--e1afmkfd.example",
    "",
]
SCHEMES = ["https", "http", "file", "gopher", "ftp", "s3", "data", "javascript", ""]
PATHS = [
    "/s.tar",
    "/s{0..9}{0..9}{0..9}{0..9}{0..9}{0..9}{0..9}{0..9}{0..9}.tar",
    "/shard{,-again}.tar",
    "/etc/passwd",
    "/latest/meta-data/iam/security-credentials/",
    f"/s.tar?access_token={SECRET}",
    "/s\x00.tar",
    "/s\r\nX-Injected: 1",
    "/" + "a" * 1900,
    "/é.tar",
    "",
]


@st.composite
def urls(draw: st.DrawFn) -> str:
    """Half plausible https shard URLs, half hostile ones."""
    if draw(st.booleans()):
        name = draw(st.text(alphabet="abc-_.0123456789", min_size=1, max_size=12))
        host = draw(st.sampled_from(["data.example.org", "s3.trusted.example"]))
        scheme = draw(st.sampled_from(["https", "https", "http"]))
        return f"{scheme}://{host}/{name}.tar"
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=40))
    scheme = draw(st.sampled_from(SCHEMES))
    host = draw(st.sampled_from(HOSTS))
    port = draw(st.sampled_from(["", ":443", ":80", ":9000", ":0", ":99999"]))
    path = draw(st.sampled_from(PATHS))
    sep = "://" if scheme else ""
    return f"{scheme}{sep}{host}{port}{path}"


GOOD_DIGEST = "ab" * 32


def checksums() -> st.SearchStrategy[Any]:
    hexes = st.sampled_from(["ab" * 31, "ab" * 33, "zz" * 32, "", "AB" * 32])
    return st.one_of(
        st.just({"algorithm": "sha256", "digest": GOOD_DIGEST}),
        st.just({"algorithm": "none", "digest": ""}),
        st.fixed_dictionaries(
            {
                "algorithm": st.sampled_from(["sha256", "SHA256", "none", "md5", ""]),
                "digest": st.one_of(hexes, st.integers(), st.none()),
            }
        ),
        st.sampled_from([None, "sha256:" + "ab" * 32, 7, [], {"algorithm": 1}]),
    )


def _items(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.one_of(
        st.lists(inner, min_size=1, max_size=8, unique_by=repr),
        st.lists(inner, min_size=1, max_size=8, unique_by=repr),
        st.lists(inner, min_size=0, max_size=3),
        st.builds(lambda x, n: [x] * n, inner, st.integers(20, 60)),
    )


def http_storage() -> st.SearchStrategy[dict[str, Any]]:
    url = st.one_of(urls(), urls(), urls(), st.sampled_from([7, None, ["x"]]))
    shard = st.fixed_dictionaries({"url": url}, optional={"checksum": checksums()})
    return st.fixed_dictionaries(
        {
            "$type": st.just("science.alt.dataset.storageHttp"),
            "shards": st.one_of(
                _items(shard),
                _items(shard),
                _items(shard),
                st.sampled_from(["s", None]),
            ),
        }
    )


def s3_storage() -> st.SearchStrategy[dict[str, Any]]:
    key = st.one_of(
        st.text(alphabet="abc/-_.0123456789{}", min_size=1, max_size=20),
        st.text(max_size=20),
        st.sampled_from(["a/../b", "k\n", "{0..9}", ""]),
    )
    shard = st.fixed_dictionaries({"key": key}, optional={"checksum": checksums()})
    return st.fixed_dictionaries(
        {
            "$type": st.just("science.alt.dataset.storageS3"),
            "bucket": st.one_of(
                st.just("bucket"),
                st.just("bucket"),
                st.sampled_from(["evil.example", "a/b", "", "x" * 300, "b?x", 3]),
            ),
            "shards": _items(shard),
        },
        optional={
            "endpoint": st.one_of(urls(), st.just(TRUSTED), st.integers()),
            "region": st.sampled_from(
                ["us-east-1", "eu-west-1", "evil.example#", "", "a" * 60, 5]
            ),
        },
    )


def blob_storage() -> st.SearchStrategy[dict[str, Any]]:
    link = st.sampled_from(
        [
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
            "bafyreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
            "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
            "b&did=did:plc:evil",
            "b",
            "",
        ]
    )
    blob = st.fixed_dictionaries(
        {
            "blob": st.one_of(
                st.fixed_dictionaries(
                    {
                        "ref": st.fixed_dictionaries(
                            {"$link": st.one_of(link, st.integers())}
                        )
                    }
                ),
                st.none(),
            )
        },
        optional={"checksum": checksums()},
    )
    return st.fixed_dictionaries(
        {"$type": st.just("science.alt.dataset.storageBlobs"), "blobs": _items(blob)}
    )


storages = st.one_of(
    http_storage(),
    s3_storage(),
    blob_storage(),
    st.fixed_dictionaries(
        {"$type": st.sampled_from(["science.alt.dataset.storageExternal", "", "x"])}
    ),
    st.sampled_from([None, [], "storage", 3]),
)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Any connection during the test fails it. Name lookups (of an S3 endpoint a
    record names, checked before use) answer a public address without a
    resolver: nothing leaves the machine."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise AssertionError(f"network access during entry resolution: {args!r}")

    def lookup(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("1.1.1.1", port or 0))]

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.delenv(INSECURE_LOOPBACK_ENV, raising=False)
    yield attempts
    assert attempts == []


def _public_https(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or "@" in parts.netloc:
        return False
    host = parts.hostname
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global


def _blob_url(did: str, cid: str) -> str:
    return f"https://pds.example.org/xrpc/com.atproto.sync.getBlob?did={did}&cid={cid}"


@settings(
    derandomize=True,
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    storage=storages,
    max_shards=st.sampled_from([1, 10, *[100_000] * 6]),
    trust=st.booleans(),
)
def test_hostile_entries_are_refused_cleanly_or_resolve_safely(
    no_network: list[Any], storage: Any, max_shards: int, trust: bool
) -> None:
    entry = FetchedRecord(
        uri=ENTRY_URI,
        cid="bafyreientry",
        value={"$type": ENTRY, "schemaRef": "x", "storage": storage},
    )
    trusted = [TRUSTED] if trust else []
    try:
        shards = entry_shards(
            entry, blob_url=_blob_url, trusted_endpoints=trusted, max_shards=max_shards
        )
    except EntryStorageError as exc:
        event(f"refused {exc.rule}")
        message = str(exc)
        assert exc.rule in RULES, message
        assert (
            message.startswith(f"{ENTRY_URI}: /storage") and f"[{exc.rule}]" in message
        )
        assert SECRET not in message
        assert len(message) < 1200
        return
    assert 1 <= len(shards.urls) <= max_shards
    assert len(set(shards.urls)) == len(shards.urls)
    assert set(shards.checksums) <= set(shards.urls)
    assert all(re.fullmatch(r"[0-9a-f]{64}", d) for d in shards.checksums.values())
    kind = storage["$type"]
    event(f"accepted {kind}")
    if kind == "science.alt.dataset.storageHttp":
        assert shards.urls == [s["url"] for s in storage["shards"]]  # literal
        for url in shards.urls:
            assert "{" not in url and "}" not in url
            assert _public_https(url) or origin_of(url) in {TRUSTED} and trust
    if kind == "science.alt.dataset.storageS3":
        endpoint = storage.get("endpoint")
        assert all(u.startswith(f"s3://{storage['bucket']}/") for u in shards.urls)
        if endpoint is None:
            assert "anon" not in shards.storage_options
        elif trust and origin_of(endpoint) == TRUSTED:
            assert shards.endpoint_trusted and "anon" not in shards.storage_options
        else:
            assert _public_https(endpoint)
            assert (
                shards.storage_options["anon"] is True and not shards.endpoint_trusted
            )
    if kind == "science.alt.dataset.storageBlobs":
        assert all(u.startswith("https://pds.example.org/") for u in shards.urls)
        assert all("&did=did:plc:evil" not in u for u in shards.urls)


# -- user-side brace patterns: counted exactly, capped before expanding -----------
patterns = st.lists(
    st.sampled_from(["{", "}", ",", "..", "0", "1", "9", "-", "a", "b", "Z", "\\"]),
    max_size=16,
).map("".join)


@settings(derandomize=True, max_examples=1500, deadline=None)
@given(pattern=patterns, cap=st.sampled_from([1, 3, 50, 100_000]))
def test_expansion_is_counted_exactly_and_capped(pattern: str, cap: int) -> None:
    try:
        expected: list[str] | None = list(braceexpand.braceexpand(pattern))
    except ValueError:
        expected = None
    try:
        got = expand_urls(pattern, max_shards=cap)
    except ShardListError as exc:
        if expected is None:
            assert exc.rule == "SHARD_PATTERN", str(exc)
        else:
            assert exc.rule == "SHARD_LIST_TOO_LONG" and len(expected) > cap, str(exc)
        return
    assert expected is not None and got == expected and len(got) <= cap


@pytest.mark.parametrize(
    "pattern",
    [
        "https://h/s" + "{0..9}" * 9 + ".tar",
        "https://h/s{0..999999999999999}.tar",
        "https://h/" + "{a,b}" * 60,
        "https://h/" + "{" * 2000 + "a,b" + "}" * 2000,
    ],
)
def test_brace_bombs_cost_no_memory(pattern: str) -> None:
    """In a child with its address space capped (2 GiB): refused in well under a
    second, with a peak RSS under 128 MiB (the old expansion hit MemoryError after
    56 s). The child resets its RSS high-water mark first (``/proc/self/clear_refs``
    5, Linux): ``ru_maxrss`` is inherited from the parent across fork and exec."""
    out = run_bounded(
        f"""
        import re, time
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        from atdata_runtime.shards import expand_urls
        start = time.monotonic()
        try:
            expand_urls({pattern!r})
        finally:
            with open("/proc/self/status") as f:
                hwm = int(re.search(r"VmHWM:\\s+(\\d+) kB", f.read()).group(1))
            _result["value"] = [time.monotonic() - start, hwm / 1024]
        """,
        address_space_mib=2048,
        timeout=30,
    )
    assert not out.timed_out
    assert out.error_type == "atdata_runtime.shards.errors.ShardListError", (
        out.traceback
    )
    assert "SHARD_LIST_TOO_LONG" in (out.error or "") or "SHARD_PATTERN" in (
        out.error or ""
    )
    assert isinstance(out.value, list)
    seconds, peak_mib = out.value
    assert seconds < 2.0 and peak_mib < 128, out.value
