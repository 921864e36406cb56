"""Offline parts of the network runtime: CIDs against the official interop vectors,
the schema record key scheme, TIDs, retry classification and backoff, session files,
secrets, the lock file and in-process schema compilation."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from atdata_gen.diagnostics import Reporter
from atdata_gen.dynamic import SchemaCompileError, compile_schema_record
from atdata_gen.lock import LockEntry, read_lock, render_lock, write_lock
from atdata_runtime.atmosphere import (
    AtUri,
    RetryExhaustedError,
    RetryPolicy,
    Secret,
    SessionStore,
    parse_schema_rkey,
    record_cid,
    schema_rkey,
)
from atdata_runtime.atmosphere.cid import DataModelError, blob_cid, dag_cbor, from_json
from atdata_runtime.atmosphere.publish import _semver_key, new_tid
from atdata_runtime.atmosphere.session import SavedSession
from atdata_runtime.lex.formats import is_record_key, is_tid
from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import CORPUS, INTEROP

DATA_MODEL = INTEROP / "data-model"


def test_dag_cbor_and_cid_match_interop_fixtures() -> None:
    fixtures = json.loads((DATA_MODEL / "data-model-fixtures.json").read_text())
    assert len(fixtures) >= 3
    for f in fixtures:
        raw = base64.b64decode(f["cbor_base64"] + "=" * (-len(f["cbor_base64"]) % 4))
        assert dag_cbor(from_json(f["json"])) == raw
        assert record_cid(f["json"]) == f["cid"]


def test_valid_data_model_vectors_encode() -> None:
    for case in json.loads((DATA_MODEL / "data-model-valid.json").read_text()):
        assert record_cid(case["json"]).startswith("bafyrei"), case["note"]


def test_floats_are_outside_the_data_model() -> None:
    with pytest.raises(DataModelError, match="/a"):
        record_cid({"a": 1.5})


def test_bytes_that_look_like_a_cid_stay_bytes() -> None:
    # libipld would encode these bytes as a CID link; the data model says bytes.
    raw = bytes((1, 0x71, 0x12, 0x20)) + bytes(32)
    encoded = dag_cbor(from_json({"b": {"$bytes": base64.b64encode(raw).decode()}}))
    assert b"\xd8\x2a" not in encoded


# Plain maps: keys starting with "$" ({"$link": …}, {"$bytes": …}) are data-model
# specials in the JSON form, not plain keys (AT Protocol "Data Model" § JSON).
_PLAIN_KEYS = st.text(max_size=8).filter(lambda k: not k.startswith("$"))


@given(st.dictionaries(_PLAIN_KEYS, st.integers(-(2**63), 2**64 - 1), max_size=6))
def test_cid_matches_libipld_on_plain_maps(value: dict[str, int]) -> None:
    import hashlib

    import libipld

    assert dag_cbor(value) == libipld.encode_dag_cbor(value)
    digest = hashlib.sha256(dag_cbor(value)).digest()
    assert record_cid(value) == libipld.encode_cid(b"\x01\x71\x12\x20" + digest)


def test_blob_cid_is_raw_sha256() -> None:
    assert (
        blob_cid(b"") == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    )


@pytest.mark.parametrize(
    ("name", "version", "key"),
    [
        ("ImageSample", "1.2.0", "ImageSample:1.2.0"),
        ("a.b-c_d", "0.1.0-rc.1", "a.b-c_d:0.1.0-rc.1"),
        ("my sample", "1.0.0+exp.sha.5114f85", "my~20sample:1.0.0~2Bexp.sha.5114f85"),
        ("x:y~z", "2.0.0", "x~3Ay~7Ez:2.0.0"),
        ("Ünï", "1.0.0", "~C3~9Cn~C3~AF:1.0.0"),
    ],
)
def test_schema_rkey_scheme(name: str, version: str, key: str) -> None:
    assert schema_rkey(name, version) == key
    assert is_record_key(key)
    assert parse_schema_rkey(key) == (name, version)


@given(st.text(min_size=1, max_size=40), st.sampled_from(["1.0.0", "0.0.1-a.b+c.d"]))
def test_schema_rkey_is_valid_and_injective(name: str, version: str) -> None:
    key = schema_rkey(name, version)
    assert is_record_key(key)
    assert parse_schema_rkey(key) == (name, version)


def test_schema_rkey_refuses_non_semver_and_reads_tids_as_foreign() -> None:
    with pytest.raises(ValueError, match="semantic version"):
        schema_rkey("A", "1.0")
    assert parse_schema_rkey("3lbqzqzqzqz22") is None


def test_tids_are_valid_and_sortable() -> None:
    a, b = new_tid(1_700_000_000_000_000, 5), new_tid(1_700_000_000_000_001, 0)
    assert is_tid(a) and is_tid(b) and a < b and len(a) == 13


def test_semver_precedence() -> None:
    versions = ["1.0.0", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta", "0.9.9", "1.0.1"]
    assert sorted(versions, key=_semver_key) == [
        "0.9.9",
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-beta",
        "1.0.0",
        "1.0.1",
    ]


def test_at_uri_parse_errors_say_what() -> None:
    assert str(AtUri.parse("at://alice.test/science.alt.dataset.entry/3lbq")) == (
        "at://alice.test/science.alt.dataset.entry/3lbq"
    )
    with pytest.raises(ValueError, match="not a record AT-URI"):
        AtUri.parse("at://alice.test/science.alt.dataset.entry")
    with pytest.raises(ValueError, match="not a valid AT-URI"):
        AtUri.parse("https://example.com/x")


class _Resp:
    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status_code, self.headers = status, headers


class _Err(Exception):
    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.response = _Resp(status, headers or {})


def _policy(**kw: object) -> tuple[RetryPolicy, list[float]]:
    slept: list[float] = []
    return RetryPolicy(sleep=slept.append, **kw), slept  # type: ignore[arg-type]


def test_retry_honours_server_hints_and_counts() -> None:
    policy, slept = _policy(base=0.01)
    calls = iter(
        [
            _Err(503),
            _Err(429, {"retry-after": "2"}),
            httpx.ConnectError("refused"),
            "ok",
        ]
    )

    def fn() -> str:
        item = next(calls)
        if isinstance(item, BaseException):
            raise item
        return item

    assert policy.run(fn, what="x") == "ok"
    assert slept[1] >= 2.0 and all(s <= 0.08 for s in (slept[0], slept[2]))
    assert policy.stats == Counter({"HTTP 503": 1, "HTTP 429": 1, "ConnectError": 1})


def test_retry_does_not_retry_client_errors() -> None:
    policy, slept = _policy()
    with pytest.raises(_Err):
        policy.run(lambda: (_ for _ in ()).throw(_Err(400)), what="x")
    assert slept == []


def test_retry_is_bounded_in_attempts_and_time() -> None:
    policy, slept = _policy(attempts=3, base=0.01)

    def boom() -> None:
        raise _Err(500)

    with pytest.raises(RetryExhaustedError, match="after 3 attempts"):
        policy.run(boom, what="at://x/y/z")
    assert len(slept) == 2
    policy, slept = _policy(deadline=1.0)
    with pytest.raises(RetryExhaustedError):
        policy.run(
            lambda: (_ for _ in ()).throw(_Err(429, {"retry-after": "5"})), what="x"
        )
    assert slept == []


def test_session_file_is_0600_and_secrets_never_print(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "s" / "session.json")
    saved = SavedSession("http://pds", "did:plc:abc", "a.test", Secret("TOKEN-xyz"))
    store.save(saved)
    mode = stat.S_IMODE(os.stat(store.path).st_mode)
    assert mode == 0o600
    loaded = store.load()
    assert loaded == saved and loaded is not None
    assert "TOKEN" not in repr(loaded) and "TOKEN" not in str(loaded.session)
    assert loaded.session.reveal() == "TOKEN-xyz"
    store.path.write_text("{not json")
    assert store.load() is None


def test_lock_is_deterministic_and_verified(tmp_path: Path) -> None:
    record = json.loads((CORPUS / "atdata/records/ImageSample.schema.json").read_text())
    entry = LockEntry(
        "at://did:plc:abc/science.alt.dataset.schema/ImageSample:1.0.0",
        "at://a.test/science.alt.dataset.schema/ImageSample:1.0.0",
        "did:plc:abc",
        record_cid(record),
        record,
    )
    path = tmp_path / "atdata-gen.lock"
    assert write_lock(path, [entry]) is True
    assert write_lock(path, [entry]) is False
    assert path.read_text() == render_lock([entry])
    lock = read_lock(path, Reporter())
    assert lock is not None and lock.entries == [entry]
    assert lock.find(entry.requested) == entry
    tampered = json.loads(path.read_text())
    tampered["schemas"][0]["value"]["version"] = "9.9.9"
    path.write_text(json.dumps(tampered, indent=2))
    reporter = Reporter()
    assert read_lock(path, reporter) is None
    (diag,) = reporter.errors
    assert diag.rule == "LOCK_CID_MISMATCH"
    assert diag.span.line > 1 and diag.span.pointer == "/schemas/0/cid"


def test_dynamic_class_reads_atdata_shards() -> None:
    from atdata_runtime.shards import Dataset

    record = json.loads(
        (CORPUS / "atdata/records/OptionalSample.schema.json").read_text()
    )
    cls = compile_schema_record(
        record, uri="at://did:plc:abc/science.alt.dataset.schema/x"
    )
    assert cls.schema_name == "OptionalSample"
    samples = list(
        Dataset[cls](str(CORPUS / "atdata/shards/optional-000000.tar"), progress=False)
    )
    assert samples and all(type(s) is cls for s in samples)


def test_dynamic_class_refuses_bad_records_with_pointer() -> None:
    with pytest.raises(SchemaCompileError, match=r"/value/name.*SCHEMA_NAME"):
        compile_schema_record(
            {"name": "__import__('os')", "version": "1.0.0"}, uri="at://x"
        )


# -- the strict DAG-CBOR decoder (repository proofs, issue 14 finding 9) ------------


def test_decoder_round_trips_the_interop_fixtures() -> None:
    from atdata_runtime.atmosphere.cid import decode_dag_cbor, to_json

    fixtures = json.loads((DATA_MODEL / "data-model-fixtures.json").read_text())
    for f in fixtures:
        raw = base64.b64decode(f["cbor_base64"] + "=" * (-len(f["cbor_base64"]) % 4))
        value = decode_dag_cbor(raw)
        assert dag_cbor(value) == raw
        assert record_cid(to_json(value)) == f["cid"]


def test_decoder_keeps_links_and_bytes_apart() -> None:
    # libipld decodes both to bytes; the data model (and a record's CID) differ.
    from atdata_runtime.atmosphere.cid import Link, decode_dag_cbor, to_json

    cid = record_cid({"x": 1})
    raw = bytes((1, 0x71, 0x12, 0x20)) + bytes(32)
    value = {"l": {"$link": cid}, "b": {"$bytes": base64.b64encode(raw).decode()}}
    decoded = decode_dag_cbor(dag_cbor(from_json(value)))
    assert isinstance(decoded["l"], Link) and decoded["b"] == raw
    assert record_cid(to_json(decoded)) == record_cid(value)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x18\x01", "shortest"),  # 1 in a 1-byte head
        (b"\x19\x00\x10", "shortest"),
        (b"\x9f\x01\xff", "indefinite"),
        (b"\xfb\x3f\xf0\x00\x00\x00\x00\x00\x00", "float"),
        (b"\xa2\x61b\x01\x61a\x02", "sorted"),
        (b"\xa2\x61a\x01\x61a\x02", "unique"),
        (b"\xa1\x01\x02", "not a string"),
        (b"\xc1\x01", "tag 1"),
        (b"\xd8\x2a\x45\x01\x71\x12\x20\x00", "0x00"),
        (b"\xd8\x2a\x44\x00\x01\x71\x12", "varint"),
        (b"\x01\x01", "trailing"),
        (b"\x62\xff\xfe", "UTF-8"),
        (b"\x5b\x7f\xff\xff\xff\xff\xff\xff\xff", "past the end"),
        (b"\x9b\x00\x00\x00\x01\x00\x00\x00\x00", "cannot fit"),
        (b"\xf7", "simple value"),
        (b"\x81" * 200 + b"\x01", "deeper than 128"),
        (b"", "truncated"),
    ],
)
def test_decoder_refuses_what_is_not_the_one_encoding(data: bytes, why: str) -> None:
    from atdata_runtime.atmosphere.cid import decode_dag_cbor

    with pytest.raises(DataModelError, match=why) as info:
        decode_dag_cbor(data)
    assert str(info.value).startswith("byte ")


@settings(derandomize=True, max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_decoder_raises_only_data_model_errors(data: bytes) -> None:
    from atdata_runtime.atmosphere.cid import decode_dag_cbor

    try:
        value = decode_dag_cbor(data)
    except DataModelError:
        return
    assert dag_cbor(value) == data  # what it accepts is canonical


@pytest.mark.parametrize("depth", [129, 980, 5000])
def test_record_cid_of_deep_values_is_a_located_data_model_error(depth: int) -> None:
    """Issue 14 (low): ``record_cid`` at depth 980 raised RecursionError. Nesting past
    MAX_DEPTH (128) is a DataModelError naming the pointer, in every direction."""
    from atdata_runtime.atmosphere.cid import (
        MAX_DEPTH,
        DataModelError,
        dag_cbor,
        to_json,
    )

    record: dict[str, Any] = {"$type": "x"}
    cur = record
    for _ in range(depth):
        cur["a"] = {}
        cur = cur["a"]
    with pytest.raises(DataModelError) as info:
        record_cid(record)
    assert info.value.rule == "DATA_MODEL_TOO_DEEP"
    assert str(info.value).startswith("/a/a/a") and str(MAX_DEPTH) in str(info.value)
    nested: list[Any] = []
    for _ in range(depth):
        nested = [nested]
    for encode in (dag_cbor, to_json):
        with pytest.raises(DataModelError):
            encode(nested)
    shallow: dict[str, Any] = {"$type": "x"}
    cur = shallow
    for _ in range(MAX_DEPTH - 1):
        cur["a"] = {}
        cur = cur["a"]
    assert record_cid(shallow).startswith("bafyrei")
