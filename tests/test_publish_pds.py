"""Publish and load against a real PDS and PLC directory on loopback (the official
``@atproto/pds`` and ``@did-plc/server``), a real S3-compatible server (moto), and a
fault-injecting proxy. Nothing here is mocked; a network that cannot start fails the
tests (it never skips them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from atdata_gen.testing.faults import FaultProxy
from atdata_gen.testing.firehose import repo_ops
from atdata_gen.testing.localnet import Account, LocalNetwork, free_port
from atdata_runtime.atmosphere import (
    AtmosphereClient,
    AuthError,
    IdentityResolver,
    PublishConflictError,
    RecordValidationError,
    RecordVerificationError,
    RetryExhaustedError,
    RetryPolicy,
    ShardChecksumError,
)
from atdata_runtime.atmosphere.load import load_dataset, resolve_dataset
from atdata_runtime.atmosphere.publish import (
    BlobStorage,
    HttpStorage,
    S3Storage,
    publish_entry,
    publish_schema,
    publish_schemas,
)
from atdata_runtime.atmosphere.records import SCHEMA
from atdata_runtime.shards import Dataset

from .conftest import CORPUS

RECORDS = CORPUS / "atdata" / "records"
SHARDS = CORPUS / "atdata" / "shards"


_accounts = iter(range(10_000))


@pytest.fixture
def account(net: LocalNetwork) -> Account:
    return net.create_account(f"user{next(_accounts)}-{free_port()}")


def resolver(net: LocalNetwork) -> IdentityResolver:
    return IdentityResolver(plc_url=net.plc_url, handle_service=net.pds_url)


def login(
    net: LocalNetwork, account: Account, tmp_path: Path, **kw: Any
) -> AtmosphereClient:
    kw.setdefault("pds_url", net.pds_url)
    return AtmosphereClient.login(
        account.handle,
        account.password,
        session_file=tmp_path / f"{account.handle}.session",
        resolver=resolver(net),
        **kw,
    )


def schema(name: str = "ImageSample") -> dict[str, Any]:
    return json.loads((RECORDS / f"{name}.schema.json").read_text())  # type: ignore[no-any-return]


def test_publish_schema_and_blob_entry_then_load(
    net: LocalNetwork, account: Account, tmp_path: Path
) -> None:
    client = login(net, account, tmp_path)
    pub = publish_schema(client, schema())
    assert pub.write.created and pub.write.uri.endswith("/ImageSample:1.0.0")
    again = publish_schema(client, dict(schema(), createdAt="2030-01-01T00:00:00Z"))
    assert not again.write.created and again.write.uri == pub.write.uri
    entry = publish_entry(
        client,
        [SHARDS / "image-000000.tar"],
        schema_uri=pub.write.uri,
        name="images",
        storage=BlobStorage(),
        journal_dir=tmp_path / "journal",
    )
    assert entry.created
    # A reader with no account resolves the owner's DID to its PDS.
    reader = AtmosphereClient(resolver=resolver(net))
    resolved = resolve_dataset(entry.uri, client=reader)
    assert resolved.class_source == "dynamic"
    assert resolved.entry.value["size"] == {"samples": 16, "bytes": 40960, "shards": 1}
    ours = list(Dataset.from_atproto(entry.uri, client=reader, progress=False))
    theirs = list(
        Dataset[resolved.sample_type](str(SHARDS / "image-000000.tar"), progress=False)
    )
    assert len(ours) == 16
    assert [s.pack() for s in ours] == [s.pack() for s in theirs]


def test_envelope_record_publishes_loads_and_equals_its_flat_form(
    net: LocalNetwork, account: Account, tmp_path: Path
) -> None:
    """The envelope of atdata-lexicon 0.4.x through a real PDS: validated on
    publish and on fetch, compiled in-process by the loader; the flat form of the
    same version is a no-op, a changed one still a conflict."""
    from atdata_runtime.samples.schema import convert_schema_record

    client = login(net, account, tmp_path)
    pub = publish_schema(client, schema("OptionalSample"), form="envelope")
    assert pub.write.created
    fetched = client.get_record(pub.write.uri)
    assert fetched.value["schema"]["draft"] == "draft-07"
    assert "properties" in fetched.value["schema"]["content"]
    assert convert_schema_record(fetched.value, "flat") == schema("OptionalSample")
    again = publish_schema(client, schema("OptionalSample"), form="flat")
    assert not again.write.created and again.write.uri == pub.write.uri
    with pytest.raises(PublishConflictError):
        publish_schema(client, dict(schema("OptionalSample"), description="x"))
    entry = publish_entry(
        client,
        [SHARDS / "optional-000000.tar"],
        schema_uri=pub.write.uri,
        name="optional",
        storage=BlobStorage(),
        journal_dir=tmp_path / "journal",
    )
    reader = AtmosphereClient(resolver=resolver(net))
    resolved = resolve_dataset(entry.uri, client=reader)
    assert resolved.class_source == "dynamic"
    fields = {f.wire: f.optional for f in resolved.sample_type.sample_fields}
    assert fields == {"tokens": False, "caption": False, "score": True, "mask": True}
    assert (
        len(list(Dataset.from_atproto(entry.uri, client=reader, progress=False))) == 16
    )


def test_schema_versions_are_immutable(
    net: LocalNetwork, account: Account, tmp_path: Path
) -> None:
    client = login(net, account, tmp_path)
    publish_schema(client, schema("ScalarSample"))
    changed = dict(schema("ScalarSample"), description="something else")
    with pytest.raises(PublishConflictError, match=r"at://did:plc:.*bump the version"):
        publish_schema(client, changed)
    records = list(client.list_records(client.did, SCHEMA))
    assert len(records) == 1


def test_check_hook_sees_previous_version(
    net: LocalNetwork, account: Account, tmp_path: Path
) -> None:
    client = login(net, account, tmp_path)
    publish_schema(client, schema("ListSample"))
    seen: list[str] = []
    v2 = dict(schema("ListSample"), version="1.1.0")
    publish_schema(
        client, v2, check=lambda prev, new: seen.append(prev.value["version"])
    )
    assert seen == ["1.0.0"]


def test_session_is_saved_reused_and_secret(
    net: LocalNetwork, account: Account, tmp_path: Path
) -> None:
    client = login(net, account, tmp_path)
    path = tmp_path / f"{account.handle}.session"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert account.password not in repr(client)
    resumed = AtmosphereClient.login(
        account.handle, session_file=path, resolver=resolver(net), pds_url=net.pds_url
    )
    assert resumed.did == client.did
    with pytest.raises(AuthError) as info:
        AtmosphereClient.login(
            account.handle,
            "wrong-password-123",
            session_file=tmp_path / "other.session",
            resolver=resolver(net),
            pds_url=net.pds_url,
        )
    assert "wrong-password-123" not in str(info.value)


def test_identity_resolution_is_cached(net: LocalNetwork, account: Account) -> None:
    res = resolver(net)
    doc = res.resolve(account.handle)
    assert doc.did == account.did and doc.pds == net.pds_url
    before = res.lookups
    for _ in range(5):
        assert res.pds_endpoint(account.handle) == net.pds_url
    assert res.lookups == before


def test_batch_of_100_through_faults_is_exactly_once(
    net: LocalNetwork, account: Account, tmp_path: Path
) -> None:
    rates = {
        "500_before": 0.06,
        "500_after": 0.06,
        "429": 0.04,
        "reset_before": 0.04,
        "reset_after": 0.04,
        "stall_after": 0.03,
    }
    with FaultProxy(net.pds_url, rates, seed=7, stall=2.5) as proxy:
        proxy.enabled = False
        client = login(
            net,
            account,
            tmp_path,
            pds_url=proxy.url,
            timeout=1.0,
            retry=RetryPolicy(base=0.05, cap=0.5, attempts=12, deadline=60),
        )
        proxy.enabled = True
        records = [dict(schema(), name=f"Batch{i}") for i in range(100)]
        # small batches: many writes and read-backs for the faults to land on
        pubs = publish_schemas(client, records, batch_size=4)
    stored = list(
        AtmosphereClient(resolver=resolver(net)).list_records(client.did, SCHEMA)
    )
    names = sorted(r.value["name"] for r in stored)
    assert names == sorted(f"Batch{i}" for i in range(100))
    injected = {k: v for k, v in proxy.counts.items() if k != "pass"}
    assert set(injected) == set(rates), injected
    assert sum(client.retry.stats.values()) >= sum(injected.values()) - 2
    assert sum(not p.write.created for p in pubs) >= 1  # a lost response was seen
    # The firehose shows every write the PDS committed: 100 creates, nothing else.
    ops = repo_ops(net.pds_url, client.did)
    assert [op.action for op in ops] == ["create"] * 100
    assert len({op.path for op in ops}) == 100
    print("faults injected:", dict(proxy.counts), "retries:", dict(client.retry.stats))


def test_pds_killed_mid_batch_then_resumed(
    net: LocalNetwork, account: Account, tmp_path: Path
) -> None:
    client = login(
        net, account, tmp_path, retry=RetryPolicy(base=0.05, attempts=3, deadline=2)
    )
    records = [dict(schema(), name=f"Crash{i}") for i in range(30)]

    def crash(i: int, _pub: object) -> None:
        if i == 11:
            net.kill_pds()

    try:
        with pytest.raises(RetryExhaustedError):
            # batches of 4: the PDS dies after the third (records 0-11) landed
            publish_schemas(client, records, progress=crash, batch_size=4)
    finally:
        if not net.pds_running:
            net.start_pds()
    client = login(net, account, tmp_path)
    pubs = publish_schemas(client, records)
    assert sum(p.write.created for p in pubs) == 18
    stored = [r.value["name"] for r in client.list_records(client.did, SCHEMA)]
    assert sorted(stored) == sorted(r["name"] for r in records)
    ops = repo_ops(net.pds_url, client.did)  # replayed across the restart
    assert [op.action for op in ops] == ["create"] * 30
    assert len({op.path for op in ops}) == 30


def test_blob_entry_resumes_after_crash(
    net: LocalNetwork, account: Account, tmp_path: Path
) -> None:
    client = login(net, account, tmp_path)
    pub = publish_schema(client, schema("ListSample"))
    shards = [SHARDS / "list-000000.tar"]
    journal = tmp_path / "journal"
    calls = {"n": 0}
    real = client.create_record

    def crash_before_entry(*a: Any, **k: Any) -> Any:
        calls["n"] += 1
        raise ConnectionError("simulated crash before the entry was written")

    client.create_record = crash_before_entry  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        publish_entry(
            client,
            shards,
            schema_uri=pub.write.uri,
            name="l",
            storage=BlobStorage(),
            journal_dir=journal,
        )
    client.create_record = real  # type: ignore[method-assign]
    (state,) = journal.iterdir()
    assert json.loads(state.read_text())["blobs"]  # the upload is remembered
    first = publish_entry(
        client,
        shards,
        schema_uri=pub.write.uri,
        name="l",
        storage=BlobStorage(),
        journal_dir=journal,
    )
    second = publish_entry(
        client,
        shards,
        schema_uri=pub.write.uri,
        name="l",
        storage=BlobStorage(),
        journal_dir=journal,
    )
    assert first.created and not second.created and first.uri == second.uri
    entries = list(client.list_records(client.did, "science.alt.dataset.entry"))
    assert len(entries) == 1


def test_tampered_record_is_rejected_naming_the_uri(
    net: LocalNetwork, account: Account, tmp_path: Path
) -> None:
    """A proxy rewrites every ``repo.getRecord`` answer: the explicit opt-out
    (``verify="server-cid"``) still catches the CID mismatch, and the default,
    repository-verified read is not fooled at all (it reads the signed proof)."""
    client = login(net, account, tmp_path)
    pub = publish_schema(client, schema("OptionalSample"))
    with FaultProxy(net.pds_url, {"tamper": 1.0}) as proxy:
        trusting = login(
            net,
            account,
            tmp_path,
            pds_url=proxy.url,
            verify="server-cid",
            retry=RetryPolicy(attempts=1),
        )
        with pytest.raises(RecordVerificationError) as info:
            trusting.get_record(pub.write.uri)
        verified = login(
            net, account, tmp_path, pds_url=proxy.url, retry=RetryPolicy(attempts=1)
        )
        assert verified.get_record(pub.write.uri).cid == pub.write.cid
    assert pub.write.uri in str(info.value) and "RECORD_CID_MISMATCH" in str(info.value)


def test_invalid_record_is_rejected_with_pointer(
    net: LocalNetwork, account: Account, tmp_path: Path
) -> None:
    client = login(net, account, tmp_path)
    session = httpx.post(
        f"{net.pds_url}/xrpc/com.atproto.server.createSession",
        json={"identifier": account.handle, "password": account.password},
    ).json()
    bad = {"$type": "science.alt.dataset.entry", "name": "x" * 300, "createdAt": "now"}
    resp = httpx.post(
        f"{net.pds_url}/xrpc/com.atproto.repo.createRecord",
        headers={"Authorization": f"Bearer {session['accessJwt']}"},
        json={
            "repo": client.did,
            "collection": "science.alt.dataset.entry",
            "record": bad,
            "validate": False,
        },
    )
    uri = resp.json()["uri"]
    with pytest.raises(RecordValidationError) as info:
        client.get_record(uri)
    text = str(info.value)
    assert (
        uri in text
        and "/name" in text
        and "/schemaRef" in text
        and "RECORD_INVALID" in text
    )


def test_http_checksum_mismatch_is_detected(
    net: LocalNetwork, account: Account, tmp_path: Path
) -> None:
    client = login(net, account, tmp_path)
    pub = publish_schema(client, schema("ImageSample"))
    blobs = publish_entry(
        client,
        [SHARDS / "image-000000.tar"],
        schema_uri=pub.write.uri,
        name="blobs",
        storage=BlobStorage(),
        journal_dir=tmp_path / "j0",
    )
    (url,) = resolve_dataset(blobs.uri, client=client).urls  # served: referenced
    fake = tmp_path / "other.tar"
    shutil.copy(SHARDS / "scalar-000000.tar", fake)
    entry = publish_entry(
        client,
        [fake],
        schema_uri=pub.write.uri,
        name="x",
        storage=HttpStorage([url]),
        journal_dir=tmp_path / "j",
    )
    ds = load_dataset(
        entry.uri, client=client, progress=False, storage_options={"block_size": 0}
    )
    with pytest.raises(ShardChecksumError, match="sha256"):
        list(ds)


def test_s3_entry_round_trip(
    net: LocalNetwork, account: Account, tmp_path: Path
) -> None:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        creds = {"key": "testing", "secret": "testing"}
        import s3fs

        s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, **creds).mkdir(
            "shards"
        )
        client = login(net, account, tmp_path)
        pub = publish_schema(client, schema("ScalarSample"))
        entry = publish_entry(
            client,
            [SHARDS / "scalar-000000.tar"],
            schema_uri=pub.write.uri,
            name="s3",
            storage=S3Storage("shards", "v1/", endpoint=endpoint, options=creds),
            journal_dir=tmp_path / "j",
        )
        record = client.get_record(entry.uri).value
        assert record["storage"]["shards"][0]["key"] == "v1/scalar-000000.tar"
        assert "testing" not in json.dumps(record)
        samples = list(
            load_dataset(
                entry.uri,
                client=client,
                progress=False,
                storage_options=creds,
                trusted_endpoints=[endpoint],  # credentials only for endpoints we trust
            )
        )
        assert len(samples) == record["size"]["samples"] > 0
    finally:
        server.stop()


def test_blob_uploads_overlap_resume_and_keep_shard_order(
    net: LocalNetwork, account: Account, tmp_path: Path
) -> None:
    """Six shards uploaded three at a time through a proxy that fails some uploads
    (no retries): the failure is raised, the uploads that finished are journaled;
    the re-run uploads only the rest, and the entry lists every shard's blob and
    checksum in shard order; the dataset reads back whole."""
    import hashlib

    import numpy as np
    from atdata_gen.dynamic import compile_schema_record
    from atdata_runtime.shards import write_samples

    client = login(net, account, tmp_path)
    pub = publish_schema(client, schema("ImageSample"))
    img = compile_schema_record(schema("ImageSample"))
    rng = np.random.default_rng(5)
    shards = write_samples(
        (
            img(image=rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), label=str(i))
            for i in range(24)
        ),
        str(tmp_path / "s-%06d.tar"),
        maxcount=4,
        progress=False,
    )
    assert len(shards) == 6
    journal = tmp_path / "journal"
    with FaultProxy(
        net.pds_url, {"500_before": 0.5}, seed=11, only=("uploadBlob",)
    ) as proxy:
        flaky = login(
            net, account, tmp_path, pds_url=proxy.url, retry=RetryPolicy(attempts=1)
        )
        with pytest.raises(RetryExhaustedError):
            publish_entry(
                flaky,
                shards,
                schema_uri=pub.write.uri,
                name="six",
                storage=BlobStorage(),
                journal_dir=journal,
                upload_workers=3,
            )
    failed = proxy.counts["500_before"]
    assert 1 <= failed < 6, proxy.counts
    (state,) = journal.iterdir()
    kept = json.loads(state.read_text())["blobs"]
    assert 0 < len(kept) < 6
    steps: list[tuple[str, int, int]] = []
    entry = publish_entry(
        client,
        shards,
        schema_uri=pub.write.uri,
        name="six",
        storage=BlobStorage(),
        journal_dir=journal,
        upload_workers=3,
        progress=lambda step, done, total: steps.append((step, done, total)),
    )
    uploads = [s for s in steps if s[0] == "upload"]
    assert uploads[0] == ("upload", len(kept), 6) and uploads[-1] == ("upload", 6, 6)
    assert len(uploads) == 1 + 6 - len(kept)  # only the missing ones went again
    blobs = client.get_record(entry.uri).value["storage"]["blobs"]
    assert [b["checksum"]["digest"] for b in blobs] == [
        hashlib.sha256(Path(s).read_bytes()).hexdigest() for s in shards
    ]
    got = list(Dataset.from_atproto(entry.uri, client=client, progress=False))
    assert [s.label for s in got] == [str(i) for i in range(24)]
