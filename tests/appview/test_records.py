"""The record normalizer (``atdata_appview.records``): every corpus schema record in
both forms, entries of every storage kind (atdata 0.7.0b1's own records among
them), every rejection rule with its JSON pointer, hostile text, oversize and deep
records, and the rows against the real tables in PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from atdata_appview import records as rec_mod
from atdata_appview.records import (
    MAX_DEPTH,
    MAX_RECORD_BYTES,
    RULES,
    EntryRow,
    IndexedRow,
    LabelRow,
    LensRow,
    LensVerificationRow,
    Rejection,
    SchemaRow,
    dead_letter_json,
    normalize,
    parse_semver,
    schema_cache_clear,
    schema_cache_info,
)
from atdata_appview.schema import RECORD_TABLES
from atdata_gen.dynamic import compile_schema_record
from atdata_runtime.atmosphere.records import schema_rkey
from atdata_runtime.samples.schema import convert_schema_record

from ..conftest import CORPUS

RECORDS = CORPUS / "atdata" / "records"
NAMES = sorted(p.name.split(".")[0] for p in RECORDS.glob("*.schema.json"))

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
OTHER = "did:plc:44ybard66vv44zksje25o7dz"
CID = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"
TID = "3jzfcijpj2z2a"
SCHEMA = "science.alt.dataset.schema"
ENTRY = "science.alt.dataset.entry"
LENS = "science.alt.dataset.lens"
LABEL = "science.alt.dataset.label"
VERIFICATION = "science.alt.dataset.lensVerification"
SCHEMA_URI = f"at://{OTHER}/{SCHEMA}/ImageSample:1.0.0"
ENTRY_URI = f"at://{DID}/{ENTRY}/{TID}"
LENS_URI = f"at://{DID}/{LENS}/{TID}"
BLOB_CID = "bafkreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy"


def _flat(name: str) -> dict[str, Any]:
    return json.loads((RECORDS / f"{name}.schema.json").read_text())  # type: ignore[no-any-return]


def _run(
    collection: str,
    record: Any,
    *,
    rkey: str = TID,
    did: str = DID,
    cid: str = CID,
    **kw: Any,
) -> IndexedRow | Rejection:
    return normalize(collection, did, rkey, cid, record, rev=TID, seq=7, **kw)


def _ok(out: IndexedRow | Rejection) -> Any:
    assert not isinstance(out, Rejection), out
    return out


def _no(out: IndexedRow | Rejection) -> Rejection:
    assert isinstance(out, Rejection), out
    assert out.rule in RULES
    return out


def _shard(i: int, checksum: bool = True) -> dict[str, Any]:
    s: dict[str, Any] = {"url": f"https://data.example.com/cells-{i:04d}.tar"}
    s["checksum"] = (
        {"algorithm": "sha256", "digest": f"{i:064x}"}
        if checksum
        else {"algorithm": "none", "digest": ""}
    )
    return s


def _blob(i: int) -> dict[str, Any]:
    return {
        "$type": "blob",
        "ref": {"$link": BLOB_CID},
        "mimeType": "application/x-tar",
        "size": 1000 + i,
    }


def entry(**over: Any) -> dict[str, Any]:
    """A typical entry: HTTP storage, three checksummed shards, tags, size."""
    out: dict[str, Any] = {
        "$type": ENTRY,
        "name": "cell crops",
        "schemaRef": SCHEMA_URI,
        "storage": {
            "$type": "science.alt.dataset.storageHttp",
            "shards": [_shard(i) for i in range(3)],
        },
        "description": "Cropped microscopy cells",
        "tags": ["microscopy", "cells"],
        "size": {"samples": 48, "bytes": 123456, "shards": 3},
        "license": "CC-BY-4.0",
        "createdAt": "2026-03-01T12:00:00.000Z",
    }
    out.update(over)
    return out


def lens(**over: Any) -> dict[str, Any]:
    code = {
        "repository": "https://github.com/example/lenses",
        "commit": "0" * 40,
        "path": "lenses.crop:getter",
    }
    out: dict[str, Any] = {
        "$type": LENS,
        "name": "crop to thumbnail",
        "sourceSchema": SCHEMA_URI,
        "targetSchema": f"at://{OTHER}/{SCHEMA}/Thumbnail:1.0.0",
        "getterCode": {**code, "language": "python"},
        "putterCode": dict(code, path="lenses.crop:putter"),
        "createdAt": "2026-03-01T12:00:00Z",
    }
    out.update(over)
    return out


def label(**over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "$type": LABEL,
        "name": "latest",
        "datasetUri": ENTRY_URI,
        "version": "1.2.0",
        "createdAt": "2026-03-01T12:00:00Z",
    }
    out.update(over)
    return out


def verification(**over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "$type": VERIFICATION,
        "lens": LENS_URI,
        "lensCommit": CID,
        "verificationMethod": "automatedTest",
        "createdAt": "2026-03-01T12:00:00Z",
    }
    out.update(over)
    return out


def _nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {}
    for _ in range(depth - 1):
        node = {"a": node}
    return node


# -- schema records: both forms -------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_corpus_flat_schema_records_are_indexed(name: str) -> None:
    flat = _flat(name)
    row = _ok(_run(SCHEMA, flat))
    assert isinstance(row, SchemaRow)
    assert (row.table, row.form) == ("appview_schemas", "flat")
    assert (row.name, row.version) == (flat["name"], flat["version"])
    major, minor, patch = (int(x) for x in flat["version"].split("."))
    assert (row.major, row.minor, row.patch, row.prerelease) == (
        major,
        minor,
        patch,
        "",
    )
    assert row.schema_type == flat["schemaType"] == "jsonSchema"
    assert row.description == flat["description"]
    body = {
        k: v
        for k, v in flat["schema"].items()
        if k not in ("$type", "arrayFormatVersions")
    }
    assert json.loads(row.body) == body
    assert row.field_count == len(flat["schema"]["properties"])
    assert row.field_count == len(compile_schema_record(flat).sample_fields)
    assert json.loads(row.record) == flat
    assert row.uri == f"at://{DID}/{SCHEMA}/{TID}"
    assert (row.did, row.rkey, row.cid, row.rev, row.seq) == (DID, TID, CID, TID, 7)
    assert row.created_at == dt.datetime.fromisoformat(flat["createdAt"])


@pytest.mark.parametrize("name", NAMES)
def test_envelope_form_of_each_corpus_record_is_indexed(name: str) -> None:
    """atdata-lexicon 0.4's envelope (the corpus has no envelope record: each
    atdata 0.7 record converted by the runtime's converter)."""
    flat = _flat(name)
    envelope = convert_schema_record(flat, "envelope")
    assert set(envelope["schema"]) >= {"draft", "content"}
    row = _ok(_run(SCHEMA, envelope))
    assert isinstance(row, SchemaRow)
    assert row.form == "envelope"
    assert json.loads(row.body) == envelope["schema"]["content"]
    flat_row = _ok(_run(SCHEMA, flat))
    assert row.field_count == flat_row.field_count
    assert (row.name, row.version, row.major) == (
        flat_row.name,
        flat_row.version,
        flat_row.major,
    )


def test_a_display_name_need_not_be_an_identifier() -> None:
    """atdata-lexicon: ``name`` is a "Human-readable display name"; the compiler's
    identifier rule for generated class names does not apply to the index."""
    record = dict(_flat("ScalarSample"), name="Cell crops <b>v2</b> \u202e")
    row = _ok(_run(SCHEMA, record))
    assert row.name == "Cell crops <b>v2</b> \u202e"


def test_prerelease_and_build_metadata() -> None:
    row = _ok(_run(SCHEMA, dict(_flat("ImageSample"), version="2.10.3-rc.1+build.5")))
    assert (row.major, row.minor, row.patch, row.prerelease) == (2, 10, 3, "rc.1")
    assert row.version == "2.10.3-rc.1+build.5"


def test_schema_record_keys() -> None:
    """TIDs (atdata 0.7: createRecord without a key) and any key that claims no
    version are accepted; a ``{name}:{version}`` key must be this record's."""
    flat = _flat("ImageSample")
    for key in (TID, schema_rkey("ImageSample", "1.0.0"), "self", "ImageSample"):
        assert _ok(_run(SCHEMA, flat, rkey=key)).rkey == key
    odd = dict(flat, name="my sample", version="1.0.0+exp.5")
    key = schema_rkey("my sample", "1.0.0+exp.5")
    assert key == "my~20sample:1.0.0~2Bexp.5"
    assert _ok(_run(SCHEMA, odd, rkey=key)).rkey == key
    for wrong in ("ImageSample:2.0.0", "Other:1.0.0", "my~20sample:1.0.0~2Bexp.6"):
        out = _no(_run(SCHEMA, odd if "my" in wrong else flat, rkey=wrong))
        assert (out.rule, out.pointer) == ("AV_RKEY_MISMATCH", "")
        assert repr(wrong) in out.message
    # atdata-app's {NSID}@{semver} cannot be a record key at all
    out = _no(_run(SCHEMA, flat, rkey="ImageSample@1.0.0"))
    assert out.rule == "AV_BAD_RKEY"


def test_schema_compile_cache_is_keyed_by_body_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    schema_cache_clear()
    flat = _flat("ImageSample")
    _ok(_run(SCHEMA, flat))
    _ok(_run(SCHEMA, dict(flat, name="Renamed", version="9.9.9", description="x")))
    info = schema_cache_info()
    assert (info["misses"], info["hits"], info["size"]) == (1, 1, 1)
    monkeypatch.setattr(rec_mod, "SCHEMA_CACHE_SIZE", 2)
    for name in NAMES:
        _ok(_run(SCHEMA, _flat(name)))
    assert schema_cache_info()["size"] == 2
    # a refusal is cached too, and stays a refusal
    bad = dict(flat, schema=dict(flat["schema"], properties={"x": {"type": "object"}}))
    hits = schema_cache_info()["hits"]
    first, second = _no(_run(SCHEMA, bad)), _no(_run(SCHEMA, bad))
    assert first == second
    assert first.rule == "AV_SCHEMA_BODY"
    assert schema_cache_info()["hits"] == hits + 1
    schema_cache_clear()
    assert schema_cache_info() == {"hits": 0, "misses": 0, "size": 0, "maxsize": 2}


# -- entries: every storage kind --------------------------------------------------------


def test_typical_entry() -> None:
    record = entry(tags=["microscopy", "cells", "microscopy", "", "  ", "Cells"])
    row = _ok(_run(ENTRY, record))
    assert isinstance(row, EntryRow)
    assert row.table == "appview_entries"
    assert (row.name, row.description, row.license) == (
        "cell crops",
        "Cropped microscopy cells",
        "CC-BY-4.0",
    )
    assert row.tags == ["microscopy", "cells", "Cells"]
    assert row.schema_ref == SCHEMA_URI
    assert json.loads(row.storage) == record["storage"]
    assert (row.storage_kind, row.shard_count, row.checksums) == ("http", 3, "all")
    assert (row.size_samples, row.size_bytes, row.size_shards) == (48, 123456, 3)
    assert row.created_at == dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("storage", "kind", "count", "checksums"),
    [
        (
            {
                "$type": "science.alt.dataset.storageHttp",
                "shards": [_shard(0), _shard(1, checksum=False)],
            },
            "http",
            2,
            "some",
        ),
        (
            {
                "$type": "science.alt.dataset.storageHttp#main",
                "shards": [_shard(0, checksum=False)],
            },
            "http",
            1,
            "none",
        ),
        (
            {
                "$type": "science.alt.dataset.storageHttp",
                "shards": [
                    dict(_shard(0), checksum={"algorithm": "none", "digest": "ab"}),
                    dict(_shard(1), checksum={"algorithm": " NONE", "digest": "ab"}),
                ],
            },
            "http",
            2,
            "none",
        ),
        (
            {
                "$type": "science.alt.dataset.storageHttp",
                "shards": [
                    dict(_shard(0), checksum={"algorithm": "sha256", "digest": " "}),
                    dict(_shard(1), checksum={"algorithm": "sha256", "digest": ""}),
                ],
            },
            "http",
            2,
            "none",
        ),
        # a digest counts only in its algorithm's shape (hex of its length)
        (
            {
                "$type": "science.alt.dataset.storageHttp",
                "shards": [
                    dict(_shard(0), checksum={"algorithm": "sha256", "digest": "00"}),
                    dict(
                        _shard(1), checksum={"algorithm": "sha256", "digest": "zz" * 32}
                    ),
                    dict(
                        _shard(2), checksum={"algorithm": "sha512", "digest": "ab" * 32}
                    ),
                    dict(
                        _shard(3), checksum={"algorithm": "blake3", "digest": "ab" * 33}
                    ),
                    dict(_shard(4), checksum={"algorithm": "md5", "digest": "ab" * 8}),
                    dict(
                        _shard(5), checksum={"algorithm": "crc-9", "digest": "ab" * 32}
                    ),
                ],
            },
            "http",
            6,
            "none",
        ),
        (
            {
                "$type": "science.alt.dataset.storageHttp",
                "shards": [
                    dict(
                        _shard(0), checksum={"algorithm": "sha256", "digest": "AB" * 32}
                    ),
                    dict(
                        _shard(1), checksum={"algorithm": "sha512", "digest": "ab" * 64}
                    ),
                    dict(
                        _shard(2), checksum={"algorithm": "blake3", "digest": "0f" * 32}
                    ),
                    dict(
                        _shard(3), checksum={"algorithm": "SHA256", "digest": "1" * 64}
                    ),
                ],
            },
            "http",
            4,
            "all",
        ),
        (
            {
                "$type": "science.alt.dataset.storageHttp",
                "shards": [
                    _shard(0),
                    dict(_shard(1), checksum={"algorithm": "sha256", "digest": "00"}),
                ],
            },
            "http",
            2,
            "some",
        ),
        (
            {
                "$type": "science.alt.dataset.storageS3",
                "bucket": "cells",
                "region": "eu-west-1",
                "endpoint": "https://s3.example.com",
                "shards": [
                    {
                        "key": f"crops/{i}.tar",
                        "checksum": {"algorithm": "sha256", "digest": "ab" * 32},
                    }
                    for i in range(5)
                ],
            },
            "s3",
            5,
            "all",
        ),
        (
            {
                "$type": "science.alt.dataset.storageBlobs",
                "blobs": [
                    {
                        "blob": _blob(0),
                        "checksum": {"algorithm": "sha256", "digest": "cd" * 32},
                    },
                    {"blob": _blob(1)},
                ],
            },
            "blobs",
            2,
            "some",
        ),
        (
            {
                "$type": "science.alt.dataset.storageBlobs",
                "blobs": [{"blob": _blob(i)} for i in range(4)],
            },
            "blobs",
            4,
            "none",
        ),
        (
            {
                "$type": "science.alt.dataset.storageExternal",
                "urls": ["https://data.example.com/cells-{0000..0009}.tar"],
            },
            "external",
            1,
            "none",
        ),
    ],
)
def test_storage_kinds(
    storage: dict[str, Any], kind: str, count: int, checksums: str
) -> None:
    row = _ok(_run(ENTRY, entry(storage=storage)))
    assert (row.storage_kind, row.shard_count, row.checksums) == (
        kind,
        count,
        checksums,
    )
    assert json.loads(row.storage) == storage


def test_tags_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rec_mod, "MAX_TAGS", 2)
    row = _ok(_run(ENTRY, entry(tags=["a", "a", "b", "c"])))
    assert row.tags == ["a", "b"]


def test_optional_entry_fields_absent() -> None:
    record = {
        k: v
        for k, v in entry().items()
        if k not in ("description", "tags", "size", "license")
    }
    row = _ok(_run(ENTRY, record))
    assert (row.description, row.tags, row.license) == (None, [], None)
    assert (row.size_samples, row.size_bytes, row.size_shards) == (None, None, None)


_ATDATA_RECORDS = r"""
import json
from datetime import datetime, timezone
from atdata.atmosphere._lexicon_types import (
    BlobEntry, DatasetMetadata, DatasetSize, HttpShardEntry, LexCodeReference,
    LexDatasetEntry, LexLabelRecord, LexLensRecord, LexLensVerification,
    S3ShardEntry, ShardChecksum, StorageBlobs, StorageHttp, StorageS3,
)
from atdata.atmosphere.records import _placeholder_checksum

schema, entry, lens = json.loads(input())
blob = {"$type": "blob", "ref": {"$link": "BLOB"}, "mimeType": "application/x-tar",
        "size": 2048}
when = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
code = LexCodeReference("https://github.com/example/lenses", "0" * 40, "m:get",
                        language="python")
out = {
    "http": LexDatasetEntry(
        "cells", schema, StorageHttp([HttpShardEntry(
            f"https://data.example.com/{i}.tar", _placeholder_checksum())
            for i in range(3)]), created_at=when, tags=["microscopy"],
        size=DatasetSize(samples=48, bytes_=4096, shards=3), license="MIT",
    ).to_record(),
    "s3": LexDatasetEntry(
        "cells", schema, StorageS3("bucket", [S3ShardEntry(
            "k/0.tar", ShardChecksum("sha256", "ab" * 32))], region="us-east-1"),
        created_at=when,
    ).to_record(),
    "blobs": LexDatasetEntry(
        "cells", schema, StorageBlobs([BlobEntry(blob, ShardChecksum("sha256",
            "cd" * 32))]), created_at=when, description="blob shards",
        metadata=DatasetMetadata(split="train", custom={"lab": "x"}),
    ).to_record(),
    "lens": LexLensRecord("crop", schema, schema, code, code,
                          created_at=when).to_record(),
    "label": LexLabelRecord("latest", entry, created_at=when,
                            version="1.0.0").to_record(),
    "verification": LexLensVerification(
        lens, "bafy", "codeReview",
        created_at=when).to_record(),
}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def atdata_records(atdata_python: str) -> dict[str, Any]:
    """Records built by atdata 0.7.0b1's own record classes (``to_record``), as
    its publishers send them to ``createRecord``."""
    proc = subprocess.run(
        [atdata_python, "-c", _ATDATA_RECORDS],
        input=json.dumps([SCHEMA_URI, ENTRY_URI, LENS_URI]),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(f"atdata 0.7.0b1 could not build its records:\n{proc.stderr}")
    text = proc.stdout.strip().splitlines()[-1].replace("BLOB", BLOB_CID)
    return json.loads(text)  # type: ignore[no-any-return]


def test_atdata_07_records_are_indexed(atdata_records: dict[str, Any]) -> None:
    http = _ok(_run(ENTRY, atdata_records["http"]))
    # atdata's placeholder checksums ({"algorithm": "none", "digest": ""}) are none
    assert (http.storage_kind, http.shard_count, http.checksums) == ("http", 3, "none")
    assert (http.tags, http.license, http.size_bytes) == (["microscopy"], "MIT", 4096)
    assert http.created_at == dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    s3 = _ok(_run(ENTRY, atdata_records["s3"]))
    assert (s3.storage_kind, s3.shard_count, s3.checksums) == ("s3", 1, "all")
    # atdata writes `metadata` as an object (the Lexicons say bytes): accepted
    blobs_record = atdata_records["blobs"]
    assert isinstance(blobs_record["metadata"], dict)
    blobs = _ok(_run(ENTRY, blobs_record))
    assert (blobs.storage_kind, blobs.shard_count, blobs.checksums) == (
        "blobs",
        1,
        "all",
    )
    assert json.loads(blobs.record)["metadata"] == blobs_record["metadata"]
    lens_row = _ok(_run(LENS, atdata_records["lens"]))
    assert isinstance(lens_row, LensRow)
    assert (lens_row.source_schema, lens_row.language) == (SCHEMA_URI, "python")
    label_row = _ok(_run(LABEL, atdata_records["label"]))
    assert isinstance(label_row, LabelRow)
    assert (label_row.dataset_uri, label_row.version) == (ENTRY_URI, "1.0.0")
    ver = _ok(_run(VERIFICATION, atdata_records["verification"]))
    assert isinstance(ver, LensVerificationRow)
    assert (ver.lens_uri, ver.lens_commit, ver.method) == (
        LENS_URI,
        "bafy",
        "codeReview",
    )


def test_entry_metadata_as_bytes_is_validated() -> None:
    assert _ok(_run(ENTRY, entry(metadata={"$bytes": "gaFhAQ"})))
    out = _no(_run(ENTRY, entry(metadata={"$bytes": "not base64!"})))
    assert (out.rule, out.pointer) == ("AV_INVALID_RECORD", "/metadata")
    out = _no(_run(ENTRY, entry(metadata="a string")))
    assert (out.rule, out.pointer) == ("AV_INVALID_RECORD", "/metadata")


# -- lenses, labels, verifications ------------------------------------------------------


def test_lens_label_verification_rows() -> None:
    row = _ok(_run(LENS, lens(description="crops")))
    assert isinstance(row, LensRow)
    assert (row.name, row.source_schema, row.target_schema) == (
        "crop to thumbnail",
        SCHEMA_URI,
        f"at://{OTHER}/{SCHEMA}/Thumbnail:1.0.0",
    )
    assert (row.language, row.description) == ("python", "crops")
    # the deprecated top-level language wins over the getter's
    assert _ok(_run(LENS, lens(language="rust"))).language == "rust"
    bare = lens()
    del bare["getterCode"]["language"]
    assert _ok(_run(LENS, bare)).language is None
    lab = _ok(_run(LABEL, label(description="the newest")))
    assert (lab.name, lab.dataset_uri, lab.version, lab.description) == (
        "latest",
        ENTRY_URI,
        "1.2.0",
        "the newest",
    )
    ver = _ok(_run(VERIFICATION, verification()))
    assert (ver.lens_uri, ver.lens_commit, ver.method) == (
        LENS_URI,
        CID,
        "automatedTest",
    )
    # a handle as the authority is a valid AT-URI
    assert _ok(_run(LABEL, label(datasetUri=f"at://alice.test/{ENTRY}/{TID}")))


# -- every rejection rule, with its pointer ---------------------------------------------


def _deep_entry() -> dict[str, Any]:
    return entry(contentMetadata=_nested(MAX_DEPTH + 5))


CASES: list[tuple[str, str, Callable[[], IndexedRow | Rejection]]] = [
    ("AV_UNKNOWN_COLLECTION", "", lambda: _run("app.bsky.feed.post", entry())),
    (
        "AV_UNKNOWN_COLLECTION",
        "",
        lambda: _run("science.alt.dataset.storageHttp", entry()),
    ),
    ("AV_BAD_DID", "", lambda: _run(ENTRY, entry(), did="alice.test")),
    ("AV_BAD_RKEY", "", lambda: _run(ENTRY, entry(), rkey="a/b")),
    ("AV_BAD_RKEY", "", lambda: _run(ENTRY, entry(), rkey="..")),
    ("AV_BAD_CID", "", lambda: _run(ENTRY, entry(), cid="not a cid")),
    (
        "AV_RECORD_TOO_LARGE",
        "",
        lambda: _run(ENTRY, entry(contentMetadata={"x": "y" * MAX_RECORD_BYTES})),
    ),
    (
        "AV_RECORD_TOO_LARGE",
        "",
        lambda: _run(ENTRY, json.dumps(entry(contentMetadata={"x": "é" * 600_000}))),
    ),
    (
        "AV_RECORD_TOO_DEEP",
        "/contentMetadata" + "/a" * (MAX_DEPTH - 1),
        lambda: _run(ENTRY, _deep_entry()),
    ),
    ("AV_RECORD_TOO_DEEP", "", lambda: _run(ENTRY, "[" * 5000 + "]" * 5000)),
    ("AV_RECORD_NUL", "/name", lambda: _run(ENTRY, entry(name="cells\x00"))),
    (
        "AV_RECORD_NUL",
        "/tags/1",
        lambda: _run(ENTRY, entry(tags=["ok", "n\x00ul"])),
    ),
    (
        "AV_RECORD_NUL",
        "/contentMetadata/k\ufffd",
        lambda: _run(ENTRY, entry(contentMetadata={"k\x00": 1})),
    ),
    (
        "AV_RECORD_NUL",
        "/description",
        lambda: _run(
            ENTRY, entry(description="bad \ufffd here"), log_valid="RECORD_NUL"
        ),
    ),
    (
        "AV_RECORD_ENCODING",
        "/contentMetadata/big",
        lambda: _run(ENTRY, entry(contentMetadata={"big": 2**70})),
    ),
    (
        "AV_RECORD_ENCODING",
        "/description",
        lambda: _run(ENTRY, entry(description="lone \ud800 surrogate")),
    ),
    ("AV_TYPE_MISMATCH", "/$type", lambda: _run(ENTRY, entry(**{"$type": LENS}))),
    (
        "AV_TYPE_MISMATCH",
        "/$type",
        lambda: _run(ENTRY, entry(**{"$type": ENTRY + "#main"})),
    ),
    (
        "AV_TYPE_MISMATCH",
        "/$type",
        lambda: _run(ENTRY, {k: v for k, v in entry().items() if k != "$type"}),
    ),
    ("AV_INVALID_RECORD", "", lambda: _run(ENTRY, [entry()])),
    ("AV_INVALID_RECORD", "", lambda: _run(ENTRY, "{not json")),
    (
        "AV_INVALID_RECORD",
        "/name",
        lambda: _run(ENTRY, {k: v for k, v in entry().items() if k != "name"}),
    ),
    ("AV_INVALID_RECORD", "/name", lambda: _run(ENTRY, entry(name="é" * 101))),
    (
        "AV_INVALID_RECORD",
        "/createdAt",
        lambda: _run(ENTRY, entry(createdAt="yesterday")),
    ),
    (
        "AV_INVALID_RECORD",
        "/storage/shards/1/url",
        lambda: _run(
            ENTRY,
            entry(
                storage={
                    "$type": "science.alt.dataset.storageHttp",
                    "shards": [_shard(0), dict(_shard(1), url="no scheme")],
                }
            ),
        ),
    ),
    (
        "AV_INVALID_RECORD",
        "/storage/urls",
        lambda: _run(
            ENTRY,
            entry(storage={"$type": "science.alt.dataset.storageExternal", "urls": []}),
        ),
    ),
    (
        "AV_INVALID_RECORD",
        "/tags",
        lambda: _run(ENTRY, entry(tags=[f"t{i}" for i in range(31)])),
    ),
    (
        "AV_INVALID_RECORD",
        "/schema/draft",
        lambda: _run(
            SCHEMA,
            {
                **(env := convert_schema_record(_flat("ImageSample"), "envelope")),
                "schema": dict(env["schema"], draft="2020-12"),
            },
        ),
    ),
    (
        "AV_BAD_VERSION",
        "/version",
        lambda: _run(SCHEMA, dict(_flat("ImageSample"), version="1.0")),
    ),
    (
        "AV_BAD_VERSION",
        "/version",
        lambda: _run(SCHEMA, dict(_flat("ImageSample"), version="01.0.0")),
    ),
    (
        "AV_BAD_VERSION",
        "/version",
        lambda: _run(SCHEMA, dict(_flat("ImageSample"), version="2147483648.0.0")),
    ),
    (
        "AV_BAD_VERSION",
        "/version",
        lambda: _run(SCHEMA, dict(_flat("ImageSample"), version="١.0.0")),
    ),
    (
        "AV_RKEY_MISMATCH",
        "",
        lambda: _run(SCHEMA, _flat("ImageSample"), rkey="ImageSample:1.0.1"),
    ),
    (
        "AV_SCHEMA_BODY",
        "/schema/properties/x",
        lambda: _run(
            SCHEMA,
            dict(
                (f := _flat("ImageSample")),
                schema=dict(f["schema"], properties={"x": {"type": "object"}}),
            ),
        ),
    ),
    (
        "AV_SCHEMA_BODY",
        "/schema/content/properties/image/$ref",
        lambda: _run(
            SCHEMA,
            {
                **(env := convert_schema_record(_flat("ImageSample"), "envelope")),
                "schema": dict(
                    env["schema"],
                    content=dict(
                        env["schema"]["content"],
                        properties={"image": {"$ref": "https://evil.example/x"}},
                    ),
                ),
            },
        ),
    ),
    (
        "AV_SCHEMA_BODY",
        "/schemaType",
        lambda: _run(SCHEMA, dict(_flat("ImageSample"), schemaType="avro")),
    ),
    (
        "AV_SCHEMA_BODY",
        "/$atdataSchemaVersion",
        lambda: _run(
            SCHEMA,
            {
                **convert_schema_record(_flat("ImageSample"), "envelope"),
                "$atdataSchemaVersion": 2,
            },
        ),
    ),
    (
        "AV_BAD_REF",
        "/schemaRef",
        lambda: _run(ENTRY, entry(schemaRef=f"at://{DID}/{ENTRY}/{TID}")),
    ),
    (
        "AV_BAD_REF",
        "/schemaRef",
        lambda: _run(ENTRY, entry(schemaRef=f"at://{DID}/{SCHEMA}")),
    ),
    (
        "AV_BAD_REF",
        "/schemaRef",
        lambda: _run(ENTRY, entry(schemaRef=f"{SCHEMA_URI}#/frag")),
    ),
    (
        "AV_BAD_REF",
        "/metadataSchemaRef",
        lambda: _run(ENTRY, entry(metadataSchemaRef=f"at://{DID}/{LENS}/{TID}")),
    ),
    (
        "AV_BAD_REF",
        "/targetSchema",
        lambda: _run(LENS, lens(targetSchema=ENTRY_URI)),
    ),
    ("AV_BAD_REF", "/sourceSchema", lambda: _run(LENS, lens(sourceSchema=LENS_URI))),
    ("AV_BAD_REF", "/datasetUri", lambda: _run(LABEL, label(datasetUri=SCHEMA_URI))),
    ("AV_BAD_REF", "/lens", lambda: _run(VERIFICATION, verification(lens=ENTRY_URI))),
    (
        "AV_UNKNOWN_STORAGE",
        "/storage/$type",
        lambda: _run(
            ENTRY,
            entry(storage={"$type": "org.example.storageIpfs", "cids": ["x"]}),
        ),
    ),
    (
        "AV_INT_RANGE",
        "/size/bytes",
        lambda: _run(ENTRY, entry(size={"bytes": 2**63})),
    ),
    (
        "AV_INT_RANGE",
        "/size/shards",
        lambda: _run(ENTRY, entry(size={"shards": 2**31})),
    ),
]


@pytest.mark.parametrize(
    ("rule", "pointer", "make"),
    CASES,
    ids=[f"{rule}-{i}" for i, (rule, _, _) in enumerate(CASES)],
)
def test_rejections(
    rule: str, pointer: str, make: Callable[[], IndexedRow | Rejection]
) -> None:
    out = _no(make())
    assert (out.rule, out.pointer) == (rule, pointer), out.message
    assert out.message
    assert len(out.message) <= rec_mod.MAX_MESSAGE
    assert "\x00" not in out.message + out.pointer
    out.message.encode("utf-8")  # storable: no lone surrogates
    out.pointer.encode("utf-8")


def test_every_rule_is_exercised() -> None:
    assert {rule for rule, _, _ in CASES} == set(RULES)
    assert all(k.startswith("AV_") and v for k, v in RULES.items())


def test_schema_body_message_carries_the_compiler_rule() -> None:
    flat = _flat("ImageSample")
    bad = dict(flat, schema=dict(flat["schema"], properties={"x": {"type": "object"}}))
    out = _no(_run(SCHEMA, bad))
    assert out.message.startswith("SCHEMA_UNSUPPORTED at /schema/properties/x: ")


def test_limits_are_exact() -> None:
    """A record at :data:`MAX_DEPTH` and at :data:`MAX_RECORD_BYTES` passes."""
    assert _ok(_run(ENTRY, entry(contentMetadata=_nested(MAX_DEPTH - 1))))
    base = len(json.dumps(entry(contentMetadata={"x": ""}), separators=(",", ":")))
    fits = entry(contentMetadata={"x": "y" * (MAX_RECORD_BYTES - base)})
    row = _ok(_run(ENTRY, fits))
    assert len(row.record.encode()) == MAX_RECORD_BYTES
    over = entry(contentMetadata={"x": "y" * (MAX_RECORD_BYTES - base + 1)})
    assert _no(_run(ENTRY, over)).rule == "AV_RECORD_TOO_LARGE"


# -- hostile text, text input, dead letters ---------------------------------------------

HOSTILE = [
    "<script>alert(1)</script>",
    "\u202egnp.exe",  # RTL override
    "שלום עולם",  # RTL text
    "e\u0301" * 50,  # combining marks
    "\x01\x1b[31mred\x7f",  # control characters
    "'; DROP TABLE appview_entries; --",
    "𝕳𝖊𝖑𝖑𝖔 " * 10,  # astral plane
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_is_kept_as_data(text: str) -> None:
    row = _ok(
        _run(
            ENTRY,
            entry(name=text[:50], description=text, tags=[text[:40], "ok"]),
        )
    )
    assert (row.name, row.description, row.tags) == (text[:50], text, [text[:40], "ok"])
    assert json.loads(row.record)["description"] == text


def test_json_text_input_gives_the_same_row() -> None:
    record = entry(description="é <b>")
    as_dict = _ok(_run(ENTRY, record))
    text = json.dumps(record, indent=1)
    for given in (text, text.encode()):
        row = _ok(_run(ENTRY, given))
        assert row.record == text
        assert row.values()[7:] == as_dict.values()[7:]
        assert row.values()[:6] == as_dict.values()[:6]
    schema = _ok(_run(SCHEMA, json.dumps(_flat("ImageSample"))))
    assert schema.field_count == 2


def test_dead_letter_json() -> None:
    assert (
        json.loads(dead_letter_json(entry(name="a\x00b")) or "")["name"] == "a\ufffdb"
    )
    assert dead_letter_json(json.dumps({"k\x00": 1})) == '{"k\ufffd":1}'
    assert dead_letter_json({"big": 2**70}) is None
    assert dead_letter_json(_nested(MAX_DEPTH + 1)) is None
    assert dead_letter_json({"x": "y" * MAX_RECORD_BYTES}) is None
    assert dead_letter_json(b"{nope") is None
    assert json.loads(dead_letter_json(entry()) or "") == entry()


def test_created_at() -> None:
    row = _ok(_run(LABEL, label(createdAt="2026-03-01T12:00:00.123456789+05:30")))
    assert row.created_at == dt.datetime(2026, 3, 1, 6, 30, 0, 123456, tzinfo=dt.UTC)
    # a valid Lexicon datetime outside what Python/PostgreSQL hold in UTC
    row = _ok(_run(LABEL, label(createdAt="0001-01-01T00:00:00+01:00")))
    assert row.created_at is None


def test_parse_semver() -> None:
    assert parse_semver("1.2.3") == (1, 2, 3, "")
    assert parse_semver("0.0.0-alpha.0.x+b") == (0, 0, 0, "alpha.0.x")
    for bad in ("1.2", "1.2.3.4", "v1.2.3", "1.2.3-01", "1.2.3-", "1.2.3+", " 1.2.3"):
        assert parse_semver(bad) is None, bad


# -- rows against the real tables ----------------------------------------------------------


def _all_rows() -> list[IndexedRow]:
    rows: list[IndexedRow] = [
        _ok(_run(SCHEMA, _flat(n), rkey=schema_rkey(n, "1.0.0"))) for n in NAMES
    ]
    rows.append(
        _ok(
            _run(
                SCHEMA,
                convert_schema_record(_flat("ImageSample"), "envelope"),
                rkey="3jzfcijpj2z2b",
            )
        )
    )
    for i, text in enumerate(HOSTILE):
        rows.append(
            _ok(
                _run(
                    ENTRY,
                    entry(name=text[:50], description=text, tags=[text[:40]]),
                    rkey=f"hostile-{i}",
                )
            )
        )
    rows.append(_ok(_run(ENTRY, entry(size={"bytes": 2**63 - 1, "shards": 2**31 - 1}))))
    rows.append(_ok(_run(LENS, lens())))
    rows.append(_ok(_run(LABEL, label(createdAt="0001-01-01T00:00:00+01:00"))))
    rows.append(_ok(_run(VERIFICATION, verification())))
    return rows


def test_rows_insert_into_the_tables(appview_dsn: str) -> None:
    rows = _all_rows()
    assert {type(r).table for r in rows} == set(RECORD_TABLES.values())

    async def go() -> None:
        conn = await asyncpg.connect(appview_dsn)
        try:
            for table in RECORD_TABLES.values():
                table_cols = [
                    r["column_name"]
                    for r in await conn.fetch(
                        "SELECT column_name FROM information_schema.columns "
                        "WHERE table_name = $1 ORDER BY ordinal_position",
                        table,
                    )
                ]
                cls = next(type(r) for r in rows if type(r).table == table)
                assert cls.columns() == tuple(
                    c
                    for c in table_cols
                    if c not in ("indexed_at", "first_indexed_at", "search")
                )
            for row in rows:
                cols = row.columns()
                marks = ", ".join(f"${i + 1}" for i in range(len(cols)))
                await conn.execute(
                    f"INSERT INTO {row.table} ({', '.join(cols)}) VALUES ({marks})",
                    *row.values(),
                )
                back = await conn.fetchrow(
                    f"SELECT {', '.join(cols)} FROM {row.table} "
                    "WHERE did = $1 AND rkey = $2",
                    row.did,
                    row.rkey,
                )
                assert back is not None
                for name, value in zip(cols, row.values(), strict=True):
                    got = back[name]
                    if name in ("record", "body", "storage"):
                        assert json.loads(got) == json.loads(value), name
                    else:
                        assert got == value, name
            # the same rows through binary COPY, as a batch writer may use
            await conn.execute("DELETE FROM appview_entries")
            entries = [r for r in rows if isinstance(r, EntryRow)]
            await conn.copy_records_to_table(
                "appview_entries",
                records=[r.values() for r in entries],
                columns=list(EntryRow.columns()),
            )
            assert await conn.fetchval("SELECT count(*) FROM appview_entries") == len(
                entries
            )
            found = await conn.fetch(
                "SELECT rkey FROM appview_entries WHERE search @@ "
                "plainto_tsquery('english', 'microscopy')"
            )
            # only the entry with the default description and tags says so
            assert [r["rkey"] for r in found] == [TID]
        finally:
            await conn.close()

    asyncio.run(go())


def test_rejections_are_storable_as_dead_letters(appview_dsn: str) -> None:
    """Each case's rule, pointer, message and dead-letter JSON insert into
    ``appview_dead_letters`` (no U+0000, no lone surrogates)."""

    async def go() -> None:
        conn = await asyncpg.connect(appview_dsn)
        try:
            for rule, _, make in CASES:
                out = _no(make())
                await conn.execute(
                    "INSERT INTO appview_dead_letters (did, collection, rkey, rule, "
                    "pointer, message, record) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    DID,
                    ENTRY,
                    TID,
                    out.rule,
                    out.pointer,
                    out.message,
                    None,
                )
                assert out.rule == rule
            n = await conn.fetchval("SELECT count(*) FROM appview_dead_letters")
            assert n == len(CASES)
            text = dead_letter_json(entry(contentMetadata={"k\x00": "v\x00"}))
            await conn.execute(
                "INSERT INTO appview_dead_letters (did, collection, rkey, rule, "
                "message, record) VALUES ($1, $2, $3, 'AV_RECORD_NUL', 'x', $4)",
                DID,
                ENTRY,
                TID,
                text,
            )
        finally:
            await conn.close()

    asyncio.run(go())


def test_rows_are_frozen() -> None:
    row = _ok(_run(ENTRY, entry()))
    with pytest.raises(AttributeError):
        row.name = "changed"
    assert not hasattr(row, "__dict__")


def test_corpus_is_present() -> None:
    assert len(NAMES) >= 4, RECORDS
    assert Path(RECORDS).is_dir()
