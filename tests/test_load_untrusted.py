"""Entries are untrusted input (issue 14, findings 5, 6 and the lock half of 9).

Each attack is replayed for real: loopback HTTP servers the tests start record the
headers they receive (the user's AWS credentials, session token, custom API keys),
moto's S3 server stands in for S3, and entries are published to the real local PDS
(``net``) and loaded with ``load_dataset``. Nothing here talks to another address
than 127.0.0.1; the URLs that must be refused are refused before any connection
(the tests that check them run without the test-only loopback mode, so that the
loopback servers would be refused too).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from atdata_gen.dynamic import compile_schema_record
from atdata_gen.testing.localnet import Account, LocalNetwork, free_port
from atdata_runtime.atmosphere import AtmosphereClient, IdentityResolver
from atdata_runtime.atmosphere.client import FetchedRecord
from atdata_runtime.atmosphere.load import (
    CredentialScopeError,
    EntryStorageError,
    LockMismatchError,
    ResolvedDataset,
    entry_shards,
    load_dataset,
    resolve_dataset,
)
from atdata_runtime.atmosphere.publish import publish_schema
from atdata_runtime.atmosphere.records import ENTRY
from atdata_runtime.net.fetch import INSECURE_LOOPBACK_ENV
from atdata_runtime.shards import Dataset, ShardListError, TarFormatError

from .conftest import CORPUS

RECORDS = CORPUS / "atdata" / "records"
SHARDS = CORPUS / "atdata" / "shards"
SCALAR = SHARDS / "scalar-000000.tar"
SCALAR_SHA = hashlib.sha256(SCALAR.read_bytes()).hexdigest()
OWNER = "did:plc:abcdefghijklmnopqrstuvwx"
ENTRY_URI = f"at://{OWNER}/{ENTRY}/3kabcdefghijk"

FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEUSERKEY00001",
    "AWS_SECRET_ACCESS_KEY": "fake-user-secret-0000000000000000000000",
    "AWS_SESSION_TOKEN": "FAKE-SESSION-TOKEN-of-the-user",
}


# -- loopback servers that record what they receive -----------------------------
@dataclass
class Recorder:
    """A loopback HTTP server: every request's method, path and headers are
    recorded; files of ``root`` are served for GET (404 otherwise, an S3-style
    403 under ``/s3``)."""

    root: Path | None = None
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    def headers(self, name: str) -> list[str | None]:
        return [
            next((v for k, v in h.items() if k.lower() == name.lower()), None)
            for _, _, h in self.requests
        ]


@pytest.fixture
def recorder_factory() -> Iterator[Any]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(root: Path | None = None) -> Recorder:
        rec = Recorder(root)

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                rec.requests.append((self.command, self.path, dict(self.headers)))
                path = self.path.split("?", 1)[0].lstrip("/")
                target = (rec.root / path) if rec.root is not None else None
                if target is not None and path and target.is_file():
                    data = target.read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command == "GET":
                        self.wfile.write(data)
                    return
                body = b"<Error><Code>AccessDenied</Code></Error>"
                self.send_response(403)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_PUT = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        rec.url = f"http://127.0.0.1:{server.server_port}"
        return rec

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def scalar_cls() -> Any:
    record = json.loads((RECORDS / "ScalarSample.schema.json").read_text())
    return compile_schema_record(record, uri="file:ScalarSample", cid="bafytest")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The user's AWS credentials in the environment (fake ones), no other
    credential source; returns where a credential_process would leave a mark."""
    for name, value in FAKE_AWS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-creds"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv(INSECURE_LOOPBACK_ENV, "1")
    return tmp_path / "credential-chain-was-consulted"


def _entry(storage: dict[str, Any], uri: str = ENTRY_URI) -> FetchedRecord:
    return FetchedRecord(
        uri=uri,
        cid="bafyreientry",
        value={
            "$type": ENTRY,
            "name": "x",
            "schemaRef": f"at://{OWNER}/science.alt.dataset.schema/s@1.0.0",
            "storage": storage,
            "createdAt": "2026-01-01T00:00:00Z",
        },
    )


def _no_blobs(did: str, cid: str) -> str:
    raise AssertionError("no blob URL expected")


def _http(*urls: str, digest: str | None = None) -> dict[str, Any]:
    checksum = (
        {"algorithm": "sha256", "digest": digest}
        if digest
        else {"algorithm": "none", "digest": ""}
    )
    return {
        "$type": "science.alt.dataset.storageHttp",
        "shards": [{"url": u, "checksum": checksum} for u in urls],
    }


def _s3(endpoint: str | None, *keys: str, bucket: str = "bucket") -> dict[str, Any]:
    storage: dict[str, Any] = {
        "$type": "science.alt.dataset.storageS3",
        "bucket": bucket,
        "shards": [
            {"key": k, "checksum": {"algorithm": "none", "digest": ""}} for k in keys
        ],
    }
    if endpoint is not None:
        storage["endpoint"] = endpoint
    return storage


# -- the real network: an entry published to the local PDS ----------------------
_accounts = iter(range(10_000))


@pytest.fixture
def publisher(net: LocalNetwork, tmp_path: Path) -> AtmosphereClient:
    account: Account = net.create_account(f"untr{next(_accounts)}-{free_port()}")
    return AtmosphereClient.login(
        account.handle,
        account.password,
        session_file=tmp_path / "s.session",
        resolver=_resolver(net),
        pds_url=net.pds_url,
    )


def _resolver(net: LocalNetwork) -> IdentityResolver:
    return IdentityResolver(plc_url=net.plc_url, handle_service=net.pds_url)


def _publish(client: AtmosphereClient, storage: dict[str, Any]) -> tuple[str, str]:
    """(entry AT-URI, schema AT-URI) of a hostile entry written to the PDS."""
    from atdata_runtime.atmosphere.publish import new_tid

    schema = json.loads((RECORDS / "ScalarSample.schema.json").read_text())
    pub = publish_schema(client, schema)
    rkey = new_tid()
    record = {
        "$type": ENTRY,
        "name": "hostile",
        "schemaRef": pub.write.uri,
        "storage": storage,
        "createdAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    write = client.create_record(ENTRY, rkey, record)
    return write.uri, pub.write.uri


# == finding 5: credentials go only where the user sent them ======================
def test_record_named_s3_endpoint_gets_no_credentials(
    net: LocalNetwork,
    publisher: AtmosphereClient,
    recorder_factory: Any,
    aws_env: Path,
) -> None:
    """The attack: with AWS_* set, an entry naming its own S3 endpoint received a
    signed request with the session token. Now the endpoint only ever sees
    unsigned requests."""
    attacker = recorder_factory()
    uri, _ = _publish(publisher, _s3(attacker.url, "k/shard-0.tar"))
    reader = AtmosphereClient(resolver=_resolver(net))
    ds = load_dataset(uri, client=reader, progress=False)
    assert ds.storage_options["anon"] is True
    with pytest.raises(Exception):  # noqa: B017 - the attacker answers 403
        list(ds)
    assert attacker.requests, "the anonymous read reached the endpoint"
    assert attacker.headers("Authorization") == [None] * len(attacker.requests)
    assert attacker.headers("X-Amz-Security-Token") == [None] * len(attacker.requests)
    seen = json.dumps(attacker.requests)
    for secret in FAKE_AWS.values():
        assert secret not in seen


def test_trusted_endpoint_gets_signed_requests(
    net: LocalNetwork,
    publisher: AtmosphereClient,
    recorder_factory: Any,
    aws_env: Path,
) -> None:
    mine = recorder_factory()
    uri, _ = _publish(publisher, _s3(mine.url, "k/shard-0.tar"))
    reader = AtmosphereClient(resolver=_resolver(net))
    ds = load_dataset(uri, client=reader, progress=False, trusted_endpoints=[mine.url])
    assert "anon" not in ds.storage_options
    with pytest.raises(Exception):  # noqa: B017 - 403 from the recorder
        list(ds)
    auth = [h for h in mine.headers("Authorization") if h]
    assert auth and all(FAKE_AWS["AWS_ACCESS_KEY_ID"] in h for h in auth)
    assert FAKE_AWS["AWS_SESSION_TOKEN"] in mine.headers("X-Amz-Security-Token")


def test_user_endpoint_replaces_the_records_and_gets_the_credentials(
    net: LocalNetwork,
    publisher: AtmosphereClient,
    recorder_factory: Any,
    aws_env: Path,
) -> None:
    attacker, mine = recorder_factory(), recorder_factory()
    uri, _ = _publish(publisher, _s3(attacker.url, "k/shard-0.tar"))
    reader = AtmosphereClient(resolver=_resolver(net))
    ds = load_dataset(
        uri,
        client=reader,
        progress=False,
        storage_options={"client_kwargs": {"endpoint_url": mine.url}},
    )
    with pytest.raises(Exception):  # noqa: B017 - 403 from the recorder
        list(ds)
    assert attacker.requests == []
    assert any(
        h and FAKE_AWS["AWS_ACCESS_KEY_ID"] in h for h in mine.headers("Authorization")
    )


def test_anonymous_read_consults_no_credential_source(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    recorder_factory: Any,
    scalar_cls: Any,
) -> None:
    """anon=True means no credential chain lookup at all: a credential_process in
    the user's AWS config (which would run for any lookup) never runs."""
    marker = tmp_path / "credential-chain-was-consulted"
    config = tmp_path / "config"
    config.write_text(
        "[default]\ncredential_process = sh -c 'touch "
        f'{marker}; echo {{\\"Version\\":1,\\"AccessKeyId\\":\\"A\\",'
        '\\"SecretAccessKey\\":\\"B\\"}\'\n'
    )
    for name in FAKE_AWS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv(INSECURE_LOOPBACK_ENV, "1")
    attacker = recorder_factory()
    shards = entry_shards(_entry(_s3(attacker.url, "k.tar")), blob_url=_no_blobs)
    ds = Dataset[scalar_cls](
        shards.urls, storage_options=shards.storage_options, urls_from="record"
    )
    with pytest.raises(Exception):  # noqa: B017 - 403 from the recorder
        list(ds)
    assert attacker.requests and not marker.exists()
    assert attacker.headers("Authorization") == [None] * len(attacker.requests)


def test_user_credentials_for_a_record_endpoint_are_refused_before_any_request(
    net: LocalNetwork,
    publisher: AtmosphereClient,
    recorder_factory: Any,
    aws_env: Path,
) -> None:
    """storage_options={"key", "secret"} with an entry that names the endpoint: the
    record would redirect the user's own credentials. Refused, nothing sent."""
    attacker = recorder_factory()
    uri, _ = _publish(publisher, _s3(attacker.url, "k/shard-0.tar"))
    reader = AtmosphereClient(resolver=_resolver(net))
    for options in (
        {"key": "AKIAUSER", "secret": "s3cr3t"},
        {"profile": "work"},
        {"client_kwargs": {"aws_session_token": "tok-value-9"}},
        {"anon": False},
    ):
        with pytest.raises(CredentialScopeError) as info:
            load_dataset(uri, client=reader, storage_options=options)
        message = str(info.value)
        assert "CREDENTIALS_SCOPE" in message and uri in message
        assert attacker.url in message and "trusted_endpoints" in message
        assert "s3cr3t" not in message and "tok-value-9" not in message
    assert attacker.requests == []


@pytest.mark.parametrize(
    ("endpoint", "why"),
    [
        ("http://s3.example.org", "must be https"),
        ("http://127.0.0.1:9000", "loopback"),
        ("https://169.254.169.254", "link-local"),
        ("https://10.0.0.1:9000", "private"),
        ("https://localhost:9000", "localhost"),
        ("https://key:secret@s3.example.org", "credentials"),
        ("file:///etc/passwd", "http(s)"),
    ],
)
def test_record_endpoints_must_be_public_https(
    endpoint: str, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(INSECURE_LOOPBACK_ENV, raising=False)
    with pytest.raises(EntryStorageError) as info:
        entry_shards(_entry(_s3(endpoint, "k.tar")), blob_url=_no_blobs)
    assert info.value.rule == "S3_ENDPOINT" and why in str(info.value)
    assert "/storage/endpoint" in str(info.value) and ENTRY_URI in str(info.value)
    assert "secret" not in str(info.value)
    # the user can vouch for an endpoint of their own (a LAN MinIO over http)
    if endpoint.startswith("http://"):
        trusted = entry_shards(
            _entry(_s3(endpoint, "k.tar")),
            blob_url=_no_blobs,
            trusted_endpoints=[endpoint],
        )
        assert trusted.endpoint_trusted and "anon" not in trusted.storage_options


def test_s3_bucket_and_region_are_checked() -> None:
    with pytest.raises(EntryStorageError, match="S3_BUCKET"):
        entry_shards(_entry(_s3(None, "k", bucket="evil/../x")), blob_url=_no_blobs)
    storage = {**_s3(None, "k"), "region": "x.evil.example#"}
    with pytest.raises(EntryStorageError, match="S3_REGION"):
        entry_shards(_entry(storage), blob_url=_no_blobs)
    # no endpoint: AWS S3 itself, the user's usual credentials (nothing anonymous)
    aws = entry_shards(
        _entry({**_s3(None, "k"), "region": "eu-west-1"}), blob_url=_no_blobs
    )
    assert aws.storage_options == {"client_kwargs": {"region_name": "eu-west-1"}}


def _serve_shards(recorder_factory: Any, tmp_path: Path, name: str) -> Recorder:
    root = tmp_path / name
    root.mkdir()
    shutil.copy(SCALAR, root / "s.tar")
    return recorder_factory(root)


def test_headers_go_only_to_the_origin_they_are_keyed_by(
    net: LocalNetwork,
    publisher: AtmosphereClient,
    recorder_factory: Any,
    tmp_path: Path,
) -> None:
    """The attack: the user's X-Api-Key went to every host an entry named. Now a
    header keyed by one origin reaches that origin only, and plain headers (which
    would reach hosts only the record chose) are refused."""
    mine = _serve_shards(recorder_factory, tmp_path, "mine")
    other = _serve_shards(recorder_factory, tmp_path, "other")
    uri, _ = _publish(
        publisher, _http(f"{mine.url}/s.tar", f"{other.url}/s.tar", digest=SCALAR_SHA)
    )
    reader = AtmosphereClient(resolver=_resolver(net))
    key = {"X-Api-Key": "user-api-key-1"}
    with pytest.raises(ShardListError) as info:
        load_dataset(uri, client=reader, storage_options={"headers": key})
    assert info.value.rule == "HEADERS_SCOPE" and uri in str(info.value)
    assert "user-api-key-1" not in str(info.value)
    assert mine.requests == other.requests == []

    ds = load_dataset(
        uri, client=reader, progress=False, storage_options={"headers": {mine.url: key}}
    )
    assert len(list(ds)) > 0
    assert mine.headers("X-Api-Key") == ["user-api-key-1"] * len(mine.requests)
    assert other.requests and other.headers("X-Api-Key") == [None] * len(other.requests)
    # the tar reader's limits are load_dataset settings too (through Dataset)
    small = load_dataset(uri, client=reader, progress=False, max_member_bytes=8)
    with pytest.raises(TarFormatError, match="TAR_MEMBER_TOO_LARGE"):
        list(small)


def test_user_urls_keep_plain_headers_for_their_own_hosts(
    recorder_factory: Any, tmp_path: Path, scalar_cls: Any
) -> None:
    a = _serve_shards(recorder_factory, tmp_path, "a")
    b = _serve_shards(recorder_factory, tmp_path, "b")
    key = {"X-Api-Key": "k1"}
    urls = [f"{a.url}/s.tar", f"{b.url}/s.tar"]
    n = len(
        list(
            Dataset[scalar_cls](urls, storage_options={"headers": key}, progress=False)
        )
    )
    assert (
        n > 0 and a.headers("X-Api-Key") == ["k1"] and b.headers("X-Api-Key") == ["k1"]
    )
    scoped = {"headers": {a.url: {"X-Api-Key": "only-a"}}}
    list(Dataset[scalar_cls](urls, storage_options=scoped, progress=False))
    assert a.headers("X-Api-Key")[-1] == "only-a" and b.headers("X-Api-Key")[-1] is None
    with pytest.raises(ShardListError, match="HEADERS_SCOPE"):
        Dataset[scalar_cls](urls, storage_options={"headers": {f"{a.url}/path": key}})


# == finding 6: record URLs are never brace-expanded ==============================
def test_brace_bomb_in_a_record_is_refused_at_once() -> None:
    """The attack: one URL of nine {0..9} groups (10⁹ URLs) ran out of memory after
    56 s. Now it is refused before anything is expanded."""
    bomb = "https://data.example.org/s" + "{0..9}" * 9 + ".tar"
    start = time.monotonic()
    with pytest.raises(EntryStorageError) as info:
        entry_shards(_entry(_http(bomb)), blob_url=_no_blobs)
    assert time.monotonic() - start < 1.0
    assert info.value.rule == "SHARD_URL_BRACES"
    assert "/storage/shards/0/url" in str(info.value)


def test_braces_cannot_read_a_second_shard_unverified(
    net: LocalNetwork,
    publisher: AtmosphereClient,
    tmp_path: Path,
    recorder_factory: Any,
) -> None:
    """The attack: ``…/shard{,-again}`` with a sha256 read both shards UNVERIFIED
    (checksums keyed by the unexpanded URL) and ``unverified`` was empty."""
    server = _serve_shards(recorder_factory, tmp_path, "d")
    shutil.copy(SHARDS / "image-000000.tar", tmp_path / "d" / "s-again.tar")
    uri, _ = _publish(
        publisher, _http(f"{server.url}/s{{,-again}}.tar", digest=SCALAR_SHA)
    )
    reader = AtmosphereClient(resolver=_resolver(net))
    with pytest.raises(EntryStorageError) as info:
        load_dataset(uri, client=reader, progress=False)
    assert info.value.rule == "SHARD_URL_BRACES" and uri in str(info.value)
    assert server.requests == []


def test_user_brace_expansion_is_capped_before_expanding(scalar_cls: Any) -> None:
    bomb = "/data/s" + "{0..9}" * 9 + ".tar"
    start = time.monotonic()
    with pytest.raises(ShardListError) as info:
        Dataset[scalar_cls](bomb)
    assert time.monotonic() - start < 1.0 and info.value.rule == "SHARD_LIST_TOO_LONG"
    assert "max_shards=100,000" in str(info.value)
    assert (
        len(Dataset[scalar_cls]("/d/s{0..9}{0..9}.tar", max_shards=100).shards) == 100
    )
    with pytest.raises(ShardListError, match="SHARD_LIST_TOO_LONG"):
        Dataset[scalar_cls]("/d/s{0..9}{0..9}.tar", max_shards=99)
    with pytest.raises(ShardListError, match="SHARD_PATTERN"):
        Dataset[scalar_cls]("/d/s{0..9.tar")


def test_checksums_are_keyed_by_the_final_urls(scalar_cls: Any, tmp_path: Path) -> None:
    """A checksum keyed by a brace pattern verified nothing; now it is refused."""
    (tmp_path / "s-0.tar").write_bytes(SCALAR.read_bytes())
    (tmp_path / "s-1.tar").write_bytes(SCALAR.read_bytes())
    pattern = str(tmp_path / "s-{0..1}.tar")
    with pytest.raises(ShardListError) as info:
        Dataset[scalar_cls](pattern, checksums={pattern: SCALAR_SHA})
    assert info.value.rule == "CHECKSUM_URL_UNKNOWN"
    good = {str(tmp_path / f"s-{i}.tar"): SCALAR_SHA for i in range(2)}
    assert len(list(Dataset[scalar_cls](pattern, checksums=good, progress=False))) > 0


def test_record_urls_are_literal_and_verified_one_by_one() -> None:
    urls = [f"https://data.example.org/s-{i}.tar" for i in range(3)]
    shards = entry_shards(_entry(_http(*urls, digest=SCALAR_SHA)), blob_url=_no_blobs)
    assert shards.urls == urls and set(shards.checksums) == set(urls)
    with pytest.raises(EntryStorageError, match="SHARD_DUPLICATE"):
        entry_shards(_entry(_http(urls[0], urls[0])), blob_url=_no_blobs)


def test_entry_shard_count_is_capped() -> None:
    urls = [f"https://data.example.org/s-{i}.tar" for i in range(11)]
    with pytest.raises(EntryStorageError) as info:
        entry_shards(_entry(_http(*urls)), blob_url=_no_blobs, max_shards=10)
    assert info.value.rule == "ENTRY_TOO_MANY_SHARDS" and "/storage/shards" in str(
        info.value
    )
    assert (
        len(entry_shards(_entry(_http(*urls)), blob_url=_no_blobs, max_shards=11).urls)
        == 11
    )


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("file:///etc/passwd", "SHARD_URL"),
        ("/etc/passwd", "SHARD_URL"),
        ("http://169.254.169.254/latest/meta-data/", "SHARD_URL"),
        ("http://data.example.org/s.tar", "SHARD_URL"),
        ("https://[::1]/s.tar", "SHARD_URL"),
        ("gopher://data.example.org/s.tar", "SHARD_URL"),
    ],
)
def test_record_shard_urls_are_checked(
    url: str, rule: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(INSECURE_LOOPBACK_ENV, raising=False)
    with pytest.raises(EntryStorageError) as info:
        entry_shards(_entry(_http(url)), blob_url=_no_blobs)
    assert info.value.rule == rule and "/storage/shards/0/url" in str(info.value)


def test_record_local_paths_are_refused_by_the_dataset(scalar_cls: Any) -> None:
    ds = Dataset[scalar_cls]([str(SCALAR)], urls_from="record", progress=False)
    with pytest.raises(ShardListError, match="SHARD_URL_LOCAL"):
        list(ds)


@pytest.mark.parametrize("digest", ["ab" * 31, "ab" * 33, "zz" * 32, ""])
def test_sha256_digests_must_be_64_hex_digits(digest: str) -> None:
    storage = _http("https://data.example.org/s.tar")
    storage["shards"][0]["checksum"] = {"algorithm": "sha256", "digest": digest}
    with pytest.raises(EntryStorageError) as info:
        entry_shards(_entry(storage), blob_url=_no_blobs)
    assert info.value.rule == "SHARD_CHECKSUM_INVALID"
    assert "/storage/shards/0/checksum/digest" in str(info.value)


def test_urls_in_errors_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INSECURE_LOOPBACK_ENV, raising=False)
    url = "http://user:hunter2@data.example.org/s.tar?access_token=tok123"
    for storage in (_http(url), _http(url.replace("s.tar", "s{1,2}.tar"))):
        with pytest.raises(EntryStorageError) as info:
            entry_shards(_entry(storage), blob_url=_no_blobs)
        assert "hunter2" not in str(info.value) and "tok123" not in str(info.value)
    with pytest.raises(ShardListError) as ds_info:
        Dataset.__class_getitem__  # noqa: B018 - keep the name bound
        from atdata_runtime.shards.dataset import expand_urls

        expand_urls(url.replace("s.tar", "s" + "{0..9}" * 6), max_shards=10)
    assert "hunter2" not in str(ds_info.value) and "tok123" not in str(ds_info.value)


# == finding 9, lock half: a lock mismatch is an error ============================
def test_lock_pinning_another_cid_is_an_error(
    net: LocalNetwork,
    publisher: AtmosphereClient,
    tmp_path: Path,
    recorder_factory: Any,
) -> None:
    """The attack: the lock pinned one CID, the PDS served another record at the
    same AT-URI, and loading only warned and used the new record."""
    server = _serve_shards(recorder_factory, tmp_path, "l")
    uri, schema_uri = _publish(
        publisher, _http(f"{server.url}/s.tar", digest=SCALAR_SHA)
    )
    reader = AtmosphereClient(resolver=_resolver(net))
    schema = reader.get_record(schema_uri)
    pinned = "bafyreiaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    lock = tmp_path / "atdata-gen.lock"
    lock.write_text(
        json.dumps({"version": 1, "schemas": [{"uri": schema.uri, "cid": pinned}]})
    )
    with pytest.raises(LockMismatchError) as info:
        resolve_dataset(uri, client=reader, lock=lock)
    message = str(info.value)
    assert info.value.rule == "LOCK_PIN_MISMATCH" and "LOCK_PIN_MISMATCH" in message
    assert schema.uri in message and pinned in message and schema.cid in message
    assert "atdata-gen pull --update" in message and str(lock) in message
    with pytest.raises(LockMismatchError):
        load_dataset(uri, client=reader, lock=lock)
    assert server.requests == []
    # pinned at the CID the repository has: no error (the class is compiled, as
    # the lock's package is not importable here)
    lock.write_text(json.dumps({"schemas": [{"uri": schema.uri, "cid": schema.cid}]}))
    assert resolve_dataset(uri, client=reader, lock=lock).sample_type is not None


def test_trusted_endpoints_must_be_origins() -> None:
    storage = _s3("https://s3.example.org", "k.tar")
    with pytest.raises(ShardListError, match="TRUSTED_ENDPOINT"):
        entry_shards(
            _entry(storage), blob_url=_no_blobs, trusted_endpoints=["s3.example.org"]
        )
    # one string is one endpoint (not its characters), compared by origin
    one = entry_shards(
        _entry(storage),
        blob_url=_no_blobs,
        trusted_endpoints="HTTPS://S3.example.org:443/",
    )
    assert one.endpoint_trusted and "anon" not in one.storage_options


def test_public_bucket_reads_anonymously_with_literal_keys(
    monkeypatch: pytest.MonkeyPatch, scalar_cls: Any
) -> None:
    """A real S3 server (moto) on loopback: an entry's endpoint is read with
    unsigned requests, and a key holding braces is one object, read as named."""
    import boto3
    from moto.server import ThreadedMotoServer

    monkeypatch.setenv(INSECURE_LOOPBACK_ENV, "1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="owner",
            aws_secret_access_key="owner",
        )
        s3.create_bucket(Bucket="public", ACL="public-read")
        s3.upload_file(
            str(SCALAR), "public", "v1/s{0..1}.tar", ExtraArgs={"ACL": "public-read"}
        )
        storage = _s3(endpoint, "v1/s{0..1}.tar", bucket="public")
        storage["shards"][0]["checksum"] = {"algorithm": "sha256", "digest": SCALAR_SHA}
        shards = entry_shards(_entry(storage), blob_url=_no_blobs)
        assert shards.urls == ["s3://public/v1/s{0..1}.tar"]
        assert shards.storage_options["anon"] is True
        ds = Dataset[scalar_cls](
            shards.urls,
            storage_options=shards.storage_options,
            checksums=shards.checksums,
            urls_from="record",
            progress=False,
        )
        assert len(list(ds)) > 0
    finally:
        server.stop()


# == issue 14 review: headers through fsspec, S3 endpoint names, verify before use ==
def _redirector(target: str) -> tuple[str, Any]:
    """A loopback server answering every GET with ``302 Location: target``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", server


@pytest.mark.parametrize(
    "extra", [{}, {"client_kwargs": {}}, {"block_size": 0, "cache_type": "none"}]
)
def test_headers_never_follow_a_cross_origin_redirect_whatever_the_options(
    recorder_factory: Any, tmp_path: Path, scalar_cls: Any, extra: dict[str, Any]
) -> None:
    """The attack: any storage option besides headers/timeout/block_size sent the
    user's http(s) URLs to fsspec (aiohttp), which followed A's 302 to another
    port with X-Api-Key attached. Now http(s) shards always go through
    HttpShardStream, which refuses the redirect before the other host is asked."""
    from atdata_runtime.net.errors import RedirectRefusedError

    other = _serve_shards(recorder_factory, tmp_path, "other")
    a_url, a = _redirector(f"{other.url}/s.tar")
    try:
        options = {"headers": {"X-Api-Key": "user-api-key-2"}, **extra}
        ds = Dataset[scalar_cls](
            f"{a_url}/s.tar", storage_options=options, progress=False
        )
        with pytest.raises(RedirectRefusedError) as info:
            list(ds)
        assert info.value.rule == "REDIRECT_CROSS_ORIGIN"
        assert "user-api-key-2" not in str(info.value)
        assert other.requests == []
        # the same options read a shard of the origin itself
        direct = Dataset[scalar_cls](
            f"{other.url}/s.tar", storage_options=options, progress=False
        )
        assert len(list(direct)) > 0
        assert other.headers("X-Api-Key") == ["user-api-key-2"] * len(other.requests)
    finally:
        a.shutdown()
        a.server_close()


def _loopback_name() -> str:
    """A host name (not ``localhost``, not an IP literal) that resolves here to a
    loopback address: the machine's own name, or one from ``/etc/hosts``."""
    import ipaddress
    import socket

    candidates = [socket.gethostname()]
    for line in Path("/etc/hosts").read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        candidates += fields[1:]
    for name in candidates:
        if "localhost" in name.lower() or not name.replace("-", "").isalnum():
            continue
        try:
            infos = socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)
        except OSError:
            continue
        if infos and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos):
            return name
    raise AssertionError("no host name resolves to a loopback address here")


def test_record_s3_endpoint_whose_name_resolves_to_loopback_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The attack: ``https://vm:PORT`` (``vm`` → 127.0.0.1 in /etc/hosts) passed,
    the name check knowing only IP literals and localhost; s3fs then connected
    without a check of the peer. Now the name is resolved and refused."""
    monkeypatch.delenv(INSECURE_LOOPBACK_ENV, raising=False)
    name = _loopback_name()
    with pytest.raises(EntryStorageError) as info:
        entry_shards(_entry(_s3(f"https://{name}:9443", "k.tar")), blob_url=_no_blobs)
    message = str(info.value)
    assert info.value.rule == "S3_ENDPOINT" and "/storage/endpoint" in message
    assert name in message and "loopback" in message and "127." in message
    with pytest.raises(EntryStorageError, match="does not resolve"):
        entry_shards(
            _entry(_s3("https://no-such-host.invalid", "k.tar")), blob_url=_no_blobs
        )
    # the user may vouch for it
    mine = entry_shards(
        _entry(_s3(f"https://{name}:9443", "k.tar")),
        blob_url=_no_blobs,
        trusted_endpoints=[f"https://{name}:9443"],
    )
    assert mine.endpoint_trusted and "config_kwargs" not in mine.storage_options


def _counting_listener() -> tuple[int, list[int], Any]:
    """A loopback TCP listener that counts connections and closes them."""
    import socket

    sock = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def run() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=run, daemon=True).start()
    return sock.getsockname()[1], accepted, sock


@pytest.mark.parametrize("rebound", [False, True])
def test_s3_reads_check_every_lookup_of_a_record_endpoint(
    monkeypatch: pytest.MonkeyPatch, scalar_cls: Any, rebound: bool
) -> None:
    """DNS rebinding between the check and the connection, replayed: the name is
    accepted when the entry is resolved (test loopback mode on), and refused when
    s3fs looks it up again to connect (the mode turned off, as a name that now
    resolves to an internal address). The aiohttp resolver s3fs is given checks
    every answer: no connection is made. Control: with the mode left on, the
    same read does reach the listener."""
    port, accepted, sock = _counting_listener()
    name = _loopback_name()
    monkeypatch.setenv(INSECURE_LOOPBACK_ENV, "1")
    try:
        shards = entry_shards(
            _entry(_s3(f"https://{name}:{port}", "k.tar")), blob_url=_no_blobs
        )
        assert shards.storage_options["anon"] is True
        if rebound:
            monkeypatch.delenv(INSECURE_LOOPBACK_ENV)
        ds = Dataset[scalar_cls](
            shards.urls,
            storage_options={
                **shards.storage_options,
                "config_kwargs": {
                    **shards.storage_options["config_kwargs"],
                    "retries": {"max_attempts": 1},
                    "connect_timeout": 2,
                },
            },
            urls_from="record",
            progress=False,
        )
        start = time.monotonic()
        with pytest.raises(Exception) as info:  # s3fs/botocore errors
            list(ds)
        assert time.monotonic() - start < 30
        if rebound:
            assert accepted == [], "the rebound name was connected to"
            chain, exc = [], info.value
            while exc is not None and len(chain) < 10:
                chain.append(str(exc))
                exc = exc.__cause__ or exc.__context__
            assert any("S3_ENDPOINT" in text for text in chain), chain
        else:
            assert accepted, "control: the allowed name was connected to"
    finally:
        sock.close()


def _record_dataset(
    cls: Any, url: str, digest: str, **kw: Any
) -> tuple[list[Any], BaseException | None]:
    ds = Dataset[cls](
        url, checksums={url: digest}, urls_from="record", progress=False, **kw
    )
    got: list[Any] = []
    try:
        got.extend(ds)
    except Exception as exc:  # noqa: BLE001 - returned to the test
        return got, exc
    return got, None


def test_no_sample_of_a_tampered_record_shard_is_ever_yielded(
    monkeypatch: pytest.MonkeyPatch,
    recorder_factory: Any,
    tmp_path: Path,
    scalar_cls: Any,
) -> None:
    """The attack: checksums were checked only after a shard's samples had been
    yielded, so a consumer that stops early (or trains as it reads) used tampered
    samples. Now a record's shard with a sha256 is verified before its first
    sample (verify="before", the default for record URLs)."""
    from atdata_runtime.shards import ShardChecksumError

    monkeypatch.setenv(INSECURE_LOOPBACK_ENV, "1")
    server = _serve_shards(recorder_factory, tmp_path, "tampered")
    url = f"{server.url}/s.tar"
    wrong = hashlib.sha256(b"the shard the entry describes").hexdigest()
    got, exc = _record_dataset(scalar_cls, url, wrong)
    assert got == [] and isinstance(exc, ShardChecksumError), exc
    assert exc.rule == "SHARD_CHECKSUM_MISMATCH" and url in str(exc)
    assert "none of its samples was used" in str(exc)
    # a consumer that stops after one sample gets none either
    ds = Dataset[scalar_cls](url, checksums={url: wrong}, urls_from="record")
    assert ds.verify == "before"
    with pytest.raises(ShardChecksumError):
        next(iter(ds))
    # the right digest reads every sample; the streaming mode is an explicit choice
    good, exc = _record_dataset(scalar_cls, url, SCALAR_SHA)
    assert exc is None and len(good) > 0
    streamed, exc = _record_dataset(scalar_cls, url, wrong, verify="stream")
    assert len(streamed) == len(good) and isinstance(exc, ShardChecksumError)
    # the spool is bounded: a shard over max_shard_bytes is not read further
    got, exc = _record_dataset(scalar_cls, url, SCALAR_SHA, max_shard_bytes=1024)
    assert got == [] and isinstance(exc, ShardChecksumError), exc
    assert exc.rule == "SHARD_TOO_LARGE" and "max_shard_bytes=1,024" in str(exc)
    with pytest.raises(ValueError, match="verify"):
        Dataset[scalar_cls](url, verify="later")  # type: ignore[arg-type]


def test_header_scoping_uses_the_fetchers_origin() -> None:
    """One origin for header scoping and for redirect checks: a trailing dot,
    case and a default port do not make another origin (net.hosts.origin)."""
    from atdata_runtime.net.hosts import origin
    from atdata_runtime.shards import origin_of

    for url in [
        "https://Data.Example.org.:443/s.tar",
        "https://data.example.org/s.tar",
        "HTTPS://data.example.org./x?y",
    ]:
        assert origin_of(url) == origin(url) == "https://data.example.org"
    assert origin_of("/local/path.tar") is None and origin_of("https://h:x/") is None


# == issue 14 new-user trial: checksum algorithms, trusted origins, S3 errors ==
@pytest.mark.parametrize("algorithm", ["SHA-256", "sha-256", "SHA_256", "Sha256"])
def test_sha256_spellings_are_verified(
    net: LocalNetwork,
    publisher: AtmosphereClient,
    recorder_factory: Any,
    tmp_path: Path,
    algorithm: str,
) -> None:
    """The attack: ``{"algorithm": "SHA-256"}`` (the lexicon's own spelling) was
    read unverified, even with a wrong digest. Now every sha256 spelling is
    verified before a sample is used."""
    from atdata_runtime.shards import ShardChecksumError

    server = _serve_shards(recorder_factory, tmp_path, "spelled")
    url = f"{server.url}/s.tar"
    wrong = hashlib.sha256(b"another shard").hexdigest()
    storage = _http(url, digest=wrong)
    storage["shards"][0]["checksum"]["algorithm"] = algorithm
    uri, _ = _publish(publisher, storage)
    reader = AtmosphereClient(resolver=_resolver(net))
    resolved = resolve_dataset(uri, client=reader)
    assert resolved.checksums == {url: wrong} and resolved.unverified == []
    ds = load_dataset(uri, client=reader, progress=False)
    with pytest.raises(ShardChecksumError) as info:
        next(iter(ds))
    assert info.value.rule == "SHARD_CHECKSUM_MISMATCH" and url in str(info.value)


@pytest.mark.parametrize(
    "algorithm", ["md5", "MD5", "sha1", "sha512", "blake3", "crc32", "sha256x"]
)
def test_other_checksum_algorithms_are_refused(algorithm: str) -> None:
    """md5 (or any algorithm this runtime does not verify) used to mean: read
    unverified, with a log warning only. Now the entry is refused, naming the
    AT-URI and the shard's JSON pointer."""
    storage = _http("https://data.example.org/s.tar", digest="ab" * 16)
    storage["shards"][0]["checksum"]["algorithm"] = algorithm
    with pytest.raises(EntryStorageError) as info:
        entry_shards(_entry(storage), blob_url=_no_blobs)
    message = str(info.value)
    assert info.value.rule == "CHECKSUM_ALGORITHM", message
    assert message.startswith(f"{ENTRY_URI}: /storage/shards/0/checksum/algorithm")
    assert repr(algorithm) in message
    if algorithm.lower() in ("md5", "sha1"):
        assert "weak" in message
    # the same for an S3 shard
    s3 = _s3("https://s3.example.org", "k.tar")
    s3["shards"][0]["checksum"] = {"algorithm": algorithm, "digest": "ab" * 16}
    with pytest.raises(EntryStorageError, match="CHECKSUM_ALGORITHM"):
        entry_shards(
            _entry(s3), blob_url=_no_blobs, trusted_endpoints=["https://s3.example.org"]
        )


@pytest.mark.parametrize(
    "checksum",
    [
        {"algorithm": "none", "digest": ""},
        {"algorithm": "NONE", "digest": ""},
        {"algorithm": "", "digest": ""},
        {"digest": ""},
    ],
)
def test_no_checksum_is_listed_as_unverified(checksum: dict[str, str]) -> None:
    url = "https://data.example.org/s.tar"
    storage = {
        "$type": "science.alt.dataset.storageHttp",
        "shards": [
            {"url": url, "checksum": checksum},
            {
                "url": url + "2",
                "checksum": {"algorithm": "SHA-256", "digest": SCALAR_SHA},
            },
        ],
    }
    entry = _entry(storage)
    shards = entry_shards(entry, blob_url=_no_blobs)
    assert shards.checksums == {url + "2": SCALAR_SHA}
    resolved = ResolvedDataset(
        entry,
        entry,
        object,
        shards.urls,
        shards.checksums,  # type: ignore[arg-type]
    )
    assert resolved.unverified == [url]


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:18777/shard",
        "https://u:p@a.example",
        "https://a.example?x",
        "https://a.example?",
        "https://a.example#top",
        "ftp://a.example",
        "s3://bucket",
        "https://*.example.org",
        "https://a.example//",
        "https://a.example:99999",
        "a.example",
    ],
)
def test_trusted_endpoints_are_bare_origins_only(
    endpoint: str, scalar_cls: Any
) -> None:
    """Trust used to be widened silently (a path, user:pass@ or a query dropped)
    or to do nothing (ftp://, a wildcard). Now anything but an origin is
    refused, by entry_shards, load_dataset and Dataset alike."""
    storage = _s3("https://s3.example.org", "k.tar")
    with pytest.raises(ShardListError) as info:
        entry_shards(_entry(storage), blob_url=_no_blobs, trusted_endpoints=[endpoint])
    assert info.value.rule == "TRUSTED_ENDPOINT"
    assert "u:p" not in str(info.value)
    with pytest.raises(ShardListError, match="TRUSTED_ENDPOINT"):
        Dataset[scalar_cls](
            "https://a.example/s.tar", urls_from="record", trusted_endpoints=[endpoint]
        )
    # headers keyed by the same non-origin are refused the same way
    with pytest.raises(ShardListError, match="HEADERS_SCOPE"):
        Dataset[scalar_cls](
            "https://a.example/s.tar",
            storage_options={"headers": {endpoint: {"X-Api-Key": "k"}}},
        )


@pytest.mark.parametrize(
    "origin",
    ["http://127.0.0.1:18777", "http://127.0.0.1:18777/", "HTTPS://A.Example:443/"],
)
def test_bare_origins_are_trusted(origin: str, scalar_cls: Any) -> None:
    ds = Dataset[scalar_cls](
        "https://a.example/s.tar", urls_from="record", trusted_endpoints=[origin]
    )
    assert len(ds.trusted_origins) == 1
    assert origin.lower().rstrip("/").removesuffix(":443") in ds.trusted_origins


@pytest.mark.parametrize("trust", [False, True])
@pytest.mark.parametrize(
    "suffix", ["/admin", "/admin/", "/?x=1", "/#f", "?versionId=1"]
)
def test_record_s3_endpoint_with_a_path_is_refused(
    monkeypatch: pytest.MonkeyPatch,
    recorder_factory: Any,
    suffix: str,
    trust: bool,
) -> None:
    """The attack: ``endpoint: "http://127.0.0.1:18777/admin"`` sent
    ``HEAD /admin/bkt/shard``. Now a record's endpoint must be an origin, even
    at a trusted origin; nothing is requested."""
    monkeypatch.setenv(INSECURE_LOOPBACK_ENV, "1")
    server = recorder_factory()
    endpoint = server.url + suffix
    with pytest.raises(EntryStorageError) as info:
        entry_shards(
            _entry(_s3(endpoint, "shard.tar", bucket="bkt")),
            blob_url=_no_blobs,
            trusted_endpoints=[server.url] if trust else [],
        )
    assert info.value.rule == "S3_ENDPOINT", info.value
    assert "/storage/endpoint" in str(info.value) and ENTRY_URI in str(info.value)
    assert "must be an origin" in str(info.value)
    assert server.requests == []


def test_s3_errors_name_the_shard_and_the_entry(
    monkeypatch: pytest.MonkeyPatch, recorder_factory: Any, scalar_cls: Any
) -> None:
    """The trial saw a bare ``PermissionError: Forbidden`` from s3fs. Now it is a
    ShardReadError (SHARD_READ) naming the shard URL and the entry, the original
    error kept as __cause__ and named in the message."""
    from atdata_runtime.net.errors import NetworkError
    from atdata_runtime.shards.errors import ShardReadError

    monkeypatch.setenv(INSECURE_LOOPBACK_ENV, "1")
    server = recorder_factory()  # answers 403 AccessDenied to everything
    entry = _entry(_s3(server.url, "k/shard-0.tar", bucket="bkt"))
    shards = entry_shards(entry, blob_url=_no_blobs)
    ds = Dataset[scalar_cls](
        shards.urls,
        storage_options=shards.storage_options,
        urls_from="record",
        progress=False,
        entry=ENTRY_URI,
    )
    with pytest.raises(ShardReadError) as info:
        next(iter(ds))
    exc = info.value
    assert isinstance(exc, NetworkError) and exc.rule == "SHARD_READ"
    assert exc.uri == "s3://bkt/k/shard-0.tar" and exc.entry == ENTRY_URI
    assert str(exc).startswith("s3://bkt/k/shard-0.tar: opening the shard failed: ")
    assert ENTRY_URI in str(exc) and str(exc).endswith("[SHARD_READ]")
    assert exc.__cause__ is not None
    assert f"{type(exc.__cause__).__name__}: " in str(exc)
    assert server.requests  # the endpoint answered: this is its error


def test_s3_errors_without_credentials_are_located(
    monkeypatch: pytest.MonkeyPatch,
    recorder_factory: Any,
    tmp_path: Path,
    scalar_cls: Any,
) -> None:
    """botocore's NoCredentialsError (the user's own endpoint, no credentials
    configured anywhere) is located too, and keeps its class name."""
    from atdata_runtime.shards.errors import ShardReadError

    for name in [*FAKE_AWS, "AWS_PROFILE", "AWS_DEFAULT_PROFILE"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-creds"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    server = recorder_factory()
    ds = Dataset[scalar_cls](
        "s3://bkt/k.tar",
        storage_options={"client_kwargs": {"endpoint_url": server.url}},
        progress=False,
    )
    with pytest.raises(ShardReadError) as info:
        next(iter(ds))
    assert info.value.rule == "SHARD_READ" and info.value.entry is None
    assert "NoCredentialsError" in str(info.value), info.value
    assert type(info.value.__cause__).__name__ == "NoCredentialsError"


def test_s3_read_errors_are_located_and_redacted(scalar_cls: Any) -> None:
    """An error while *reading* an fsspec shard (not only opening it) is a
    ShardReadError too, and URLs in the original message are redacted."""
    import fsspec
    from atdata_runtime.shards.errors import ShardReadError

    class Failing(fsspec.AbstractFileSystem):  # type: ignore[misc]
        protocol = "failing14"

        def _open(self, path: str, mode: str = "rb", **kw: Any) -> Any:
            class Broken:
                def read(self, n: int = -1) -> bytes:
                    raise OSError(
                        38, "read https://h.example/x?X-Amz-Signature=topsecret"
                    )

                def close(self) -> None:
                    pass

            return Broken()

    fsspec.register_implementation("failing14", Failing, clobber=True)
    ds = Dataset[scalar_cls]("failing14://bkt/k.tar", progress=False, entry=ENTRY_URI)
    with pytest.raises(ShardReadError) as info:
        next(iter(ds))
    message = str(info.value)
    assert "reading the shard failed: OSError: " in message
    assert "topsecret" not in message and "h.example" in message
    assert ENTRY_URI in message and isinstance(info.value.__cause__, OSError)
