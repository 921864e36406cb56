"""Hostile repository proofs: mutations of real ``com.atproto.sync.getRecord`` CARs
(one from the real local PDS, one from a 200-record repository built with a real
key) — bit flips, truncations, reordered and duplicated blocks, huge or overlong
varints, spliced garbage — go through :func:`~atdata_runtime.atmosphere.repo.
verify_record_proof`.

Every mutant must either verify to exactly the original record (a reorder is still
the same proof) or be refused with a :class:`RecordVerificationError` carrying a
``REPO_*`` rule; anything else escaping is a failure, and each example must finish
in well under a second. Inputs built to exhaust memory or the stack (a varint
claiming 2⁶² bytes, a map claiming 2³² entries, a record nested 200,000 deep, a CAR
of 50,000 tiny blocks) run in a bounded child process whose peak RSS is asserted.

Fixed seeds (``derandomize=True``); the file runs in about 30 s.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from atdata_gen.testing.localnet import LocalNetwork, free_port
from atdata_runtime.atmosphere import AtmosphereClient, IdentityResolver
from atdata_runtime.atmosphere.errors import RecordVerificationError
from atdata_runtime.atmosphere.repo import (
    VerifiedRecord,
    parse_car,
    signing_key,
    verify_record_proof,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..test_verified_reads import (
    COLLECTION,
    Key,
    Repo,
    block_cid,
    car,
    lens_record,
    varint,
)
from .bounded import run_bounded

RULES = {
    "REPO_CAR_INVALID",
    "REPO_BLOCK_CID",
    "REPO_COMMIT_INVALID",
    "REPO_DID_MISMATCH",
    "REPO_BAD_SIGNATURE",
    "REPO_MST_PROOF",
    "REPO_RECORD_INVALID",
    "REPO_KEY_INVALID",
}
DID = "did:plc:fuzzfuzzfuzzfuzzfuzzfuzz"
SETTINGS = settings(
    derandomize=True,
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Case:
    """A proof CAR and what verifying it must give."""

    def __init__(self, data: bytes, did: str, rkey: str, key: str) -> None:
        self.data, self.did, self.rkey, self.key = data, did, rkey, key
        self.expected = self.verify(data)
        assert isinstance(self.expected, VerifiedRecord)

    def verify(self, data: bytes) -> VerifiedRecord | None:
        return verify_record_proof(
            data, did=self.did, collection=COLLECTION, rkey=self.rkey, key=self.key
        )

    def check(self, mutant: bytes) -> None:
        start = time.monotonic()
        try:
            got = self.verify(mutant)
        except RecordVerificationError as exc:
            assert exc.rule in RULES, exc
            assert exc.uri == f"at://{self.did}/{COLLECTION}/{self.rkey}"
        else:
            assert got == self.expected, (got, self.expected)
        assert time.monotonic() - start < 1.0


def built_case() -> Case:
    repo = Repo(DID, Key(seed=11))
    for i in range(200):
        repo.put(f"r{i:03d}", lens_record(i))
    key = signing_key(repo.did_document("https://pds.example"), DID)
    return Case(repo.proof("r123"), DID, "r123", key)


@pytest.fixture(scope="module")
def cases(net: LocalNetwork, tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    """A CAR from the real local PDS (a 30-record repository) and a built one."""
    account = net.create_account(f"fuzz{free_port()}")
    writer = AtmosphereClient.login(
        account.handle,
        account.password,
        pds_url=net.pds_url,
        session_file=tmp_path_factory.mktemp("s") / "session.json",
        resolver=IdentityResolver(plc_url=net.plc_url, handle_service=net.pds_url),
    )
    for i in range(30):
        writer.create_record(COLLECTION, f"k{i:02d}", lens_record(i), validate=False)
    real = httpx.get(
        f"{net.pds_url}/xrpc/com.atproto.sync.getRecord",
        params={"did": account.did, "collection": COLLECTION, "rkey": "k17"},
        headers={"Accept-Encoding": "identity"},
    ).content
    doc = httpx.get(f"{net.plc_url}/{account.did}").json()
    return [Case(real, account.did, "k17", signing_key(doc, account.did)), built_case()]


def sections(data: bytes) -> tuple[bytes, list[bytes]]:
    """(header section, block sections) of a well-formed CAR, bytes as they are."""
    parsed = parse_car(data)
    n, pos = 0, 0
    size = shift = 0
    while True:
        b = data[pos]
        size |= (b & 0x7F) << shift
        shift += 7
        pos += 1
        if not b & 0x80:
            break
    header = data[: pos + size]
    rest = data[pos + size :]
    out = []
    while rest:
        size = shift = n = 0
        while True:
            b = rest[n]
            size |= (b & 0x7F) << shift
            shift += 7
            n += 1
            if not b & 0x80:
                break
        out.append(rest[: n + size])
        rest = rest[n + size :]
    assert len(out) == len(parsed.blocks)
    return header, out


@SETTINGS
@given(st.data())
def test_bit_flips(cases: list[Case], data: st.DataObject) -> None:
    case = cases[data.draw(st.integers(0, len(cases) - 1))]
    mutant = bytearray(case.data)
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(mutant) - 1))
        mutant[pos] ^= 1 << data.draw(st.integers(0, 7))
    case.check(bytes(mutant))


@SETTINGS
@given(st.data())
def test_truncations_and_splices(cases: list[Case], data: st.DataObject) -> None:
    case = cases[data.draw(st.integers(0, len(cases) - 1))]
    cut = data.draw(st.integers(0, len(case.data) - 1))
    junk = data.draw(st.binary(max_size=64))
    case.check(case.data[:cut])
    case.check(case.data[:cut] + junk + case.data[cut:])
    case.check(case.data + junk)


@SETTINGS
@given(st.data())
def test_reordered_dropped_and_duplicated_blocks(
    cases: list[Case], data: st.DataObject
) -> None:
    case = cases[data.draw(st.integers(0, len(cases) - 1))]
    header, blocks = sections(case.data)
    order = data.draw(st.permutations(blocks))
    case.check(header + b"".join(order))  # still the same proof
    drop = data.draw(st.integers(0, len(blocks) - 1))
    case.check(header + b"".join(b for i, b in enumerate(order) if i != drop))
    dup = data.draw(st.sampled_from(blocks))
    case.check(header + b"".join(order) + dup)


@SETTINGS
@given(st.data())
def test_huge_and_overlong_varints(cases: list[Case], data: st.DataObject) -> None:
    case = cases[data.draw(st.integers(0, len(cases) - 1))]
    header, blocks = sections(case.data)
    which = data.draw(st.integers(0, len(blocks)))
    size = data.draw(
        st.one_of(st.integers(0, 2**70), st.sampled_from([2**62, 2**63 - 1, 2**64]))
    )
    overlong = data.draw(st.booleans())
    prefix = varint(size)
    if overlong:  # the same number with a redundant continuation byte
        prefix = bytes([*prefix[:-1], prefix[-1] | 0x80, 0x00])
    parts = [header, *blocks]
    target = parts[which]
    n = 0
    while target[n] & 0x80:
        n += 1
    parts[which] = prefix + target[n + 1 :]
    case.check(b"".join(parts))


def _write(tmp: Path, name: str, data: bytes) -> str:
    path = tmp / name
    path.write_bytes(data)
    return str(path)


def _hostile_cars(tmp: Path) -> dict[str, tuple[str, str]]:
    """name → (CAR path, rkey) of inputs built to cost memory or stack."""
    repo = Repo(DID, Key(seed=11))
    repo.put("deep", b"\x81" * 200_000 + b"\x01")
    repo.put("wide", b"\xbb" + (2**32).to_bytes(8, "big"))
    repo.put("fine", lens_record(1))
    commit = repo.commit()
    out = {
        "deep": (_write(tmp, "deep.car", repo.proof("deep", commit)), "deep"),
        "wide": (_write(tmp, "wide.car", repo.proof("wide", commit)), "wide"),
    }
    fine = repo.proof("fine", commit)
    header, blocks = sections(fine)
    out["huge-varint"] = (
        _write(tmp, "huge.car", header + varint(2**62) + blocks[0][1:]),
        "fine",
    )
    null = (block_cid(b"\xf6"), b"\xf6")  # 38 bytes a section: 50,000 < 2 MiB
    tiny = car(commit, [(commit, repo.blocks[commit]), *[null] * 50_000])
    out["many-blocks"] = (_write(tmp, "many.car", tiny), "fine")
    out["fine"] = (_write(tmp, "fine.car", fine), "fine")
    return out


_CHILD = """
import time
from pathlib import Path
from atdata_runtime.atmosphere.repo import verify_record_proof
t = time.monotonic()
try:
    verify_record_proof(Path({path!r}).read_bytes(), did={did!r},
                        collection={collection!r}, rkey={rkey!r}, key={key!r})
finally:
    _result["value"] = time.monotonic() - t
"""


def test_hostile_proofs_stay_bounded_in_a_child(tmp_path: Path) -> None:
    """Peak RSS is compared with a child verifying an honest proof (``ru_maxrss``
    of a fresh child also counts what it shared with this process at fork)."""
    key = signing_key(Repo(DID, Key(seed=11)).did_document("https://x"), DID)
    hostile = _hostile_cars(tmp_path)
    fine_path = hostile.pop("fine")[0]

    def run(path: str, rkey: str) -> Any:
        code = _CHILD.format(
            path=path, did=DID, collection=COLLECTION, rkey=rkey, key=key
        )
        return run_bounded(code, address_space_mib=1024, timeout=30)

    baseline = run(fine_path, "fine")
    assert baseline.error_type is None, baseline.traceback
    for name, (path, rkey) in hostile.items():
        out = run(path, rkey)
        assert not out.timed_out, name
        assert out.error_type == (
            "atdata_runtime.atmosphere.errors.RecordVerificationError"
        ), (name, out.error_type, out.error, out.traceback)
        assert "[REPO_" in str(out.error), (name, out.error)
        assert out.max_rss_mib < baseline.max_rss_mib + 64, (
            name,
            out.max_rss_mib,
            baseline.max_rss_mib,
        )
        assert isinstance(out.value, float) and out.value < 5.0, (name, out.value)


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_METHOD = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["#atproto", f"{DID}#atproto", "#other", 7]),
        "type": st.sampled_from(
            [
                "Multikey",
                "EcdsaSecp256k1VerificationKey2019",
                "EcdsaSecp256r1VerificationKey2019",
                "Ed25519VerificationKey2020",
                None,
            ]
        ),
        "publicKeyMultibase": st.one_of(
            st.just(Key(seed=4).multikey),
            st.just(Key("ES256", seed=4).multikey),
            st.text(max_size=60).map(lambda t: "z" + t),
            st.text(
                alphabet="123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz",
                max_size=300,
            ).map(lambda t: "z" + t),
            _JSONISH,
        ),
    }
)


@SETTINGS
@given(st.one_of(st.lists(_METHOD, max_size=3), _JSONISH))
def test_hostile_did_document_keys(methods: object) -> None:
    """A DID document's ``verificationMethod`` from a hostile PLC/did:web host:
    a did:key or a ``REPO_SIGNING_KEY`` error, nothing else, quickly."""
    start = time.monotonic()
    try:
        key = signing_key({"verificationMethod": methods}, DID)
    except RecordVerificationError as exc:
        assert exc.rule == "REPO_SIGNING_KEY"
    else:
        assert key.startswith(("did:key:zQ3s", "did:key:zDn"))
    assert time.monotonic() - start < 0.5


@pytest.mark.parametrize(
    ("collection", "rkey", "what"),
    [
        (COLLECTION, "b/c", "rkey"),
        (f"{COLLECTION}/b", "c", "collection"),
        ("not-an-nsid", "c", "collection"),
        (COLLECTION, "..", "rkey"),
    ],
)
def test_collection_and_rkey_must_name_one_record(
    collection: str, rkey: str, what: str
) -> None:
    """The MST key is ``{collection}/{rkey}``: unchecked, ``(c, "b/c")`` and
    ``(c + "/b", "c")`` named the same key, so a proof of one record was accepted
    for another (here both are the record stored at ``c/b/c``)."""
    repo = Repo(DID, Key(seed=5))
    repo.put("b/c", lens_record(1))
    proof = repo.proof("b/c")
    key = signing_key(repo.did_document("https://pds.example"), DID)
    with pytest.raises(RecordVerificationError) as info:
        verify_record_proof(proof, did=DID, collection=collection, rkey=rkey, key=key)
    assert info.value.rule == "REPO_KEY_INVALID" and what in str(info.value)
