"""Reads verified by the repository, not by the server's word (issue 14, finding 9).

A record is read with ``com.atproto.sync.getRecord`` and proven by the CAR: blocks
hash to their CIDs, the commit is v3 for the DID asked for and signed by the
``#atproto`` key of its DID document (low-S ECDSA, secp256k1 or P-256), and the MST
path from the commit leads to ``{collection}/{rkey}`` (AT Protocol "Repository" and
"Cryptography" specs). The attacks run against a fake PDS + PLC directory on
loopback (:class:`FakeNetwork`) serving repositories this file builds with real
keys (:class:`Repo`); the end-to-end case runs against the real local PDS.

Benchmark (verified vs unverified reads of 200 records from the local PDS)::

    uv run --frozen python -m tests.test_verified_reads
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from atdata_gen.testing.localnet import Account, LocalNetwork, free_port
from atdata_runtime.atmosphere import (
    AtmosphereClient,
    IdentityResolver,
    RecordNotFoundError,
    RecordVerificationError,
    RetryPolicy,
)
from atdata_runtime.atmosphere.cid import Link, cid_to_str, dag_cbor, from_json, to_json
from atdata_runtime.atmosphere.repo import (
    mst_layer,
    parse_car,
    signing_key,
    verify_record_proof,
)
from atdata_runtime.net.errors import NetworkError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

LOOPBACK_ENV = "ATDATA_RUNTIME_INSECURE_LOOPBACK"
COLLECTION = "com.example.record"
_ORDER = {
    "ES256K": 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
    "ES256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
}


# -- building repositories --------------------------------------------------------


def _block_of(value: dict[str, Any] | bytes) -> bytes:
    return value if isinstance(value, bytes) else dag_cbor(from_json(value))


def block_cid(data: bytes) -> bytes:
    """Binary CIDv1 dag-cbor sha2-256 of a block."""
    return bytes((1, 0x71, 0x12, 0x20)) + hashlib.sha256(data).digest()


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def car(root: bytes, blocks: list[tuple[bytes, bytes]]) -> bytes:
    """A CAR v1 file: header ``{version: 1, roots: [root]}`` then the sections."""
    header = dag_cbor({"version": 1, "roots": [Link(root)]})
    out = bytearray(varint(len(header)) + header)
    for cid, data in blocks:
        out += varint(len(cid) + len(data)) + cid + data
    return bytes(out)


@dataclass
class Key:
    """A signing key: ``alg`` ``ES256K`` (secp256k1) or ``ES256`` (P-256)."""

    alg: str = "ES256K"
    seed: int = 1

    def __post_init__(self) -> None:
        curve = ec.SECP256K1() if self.alg == "ES256K" else ec.SECP256R1()
        self.private = ec.derive_private_key(self.seed * 7919 + 12345, curve)

    @property
    def multikey(self) -> str:
        from atproto_crypto.did import format_multikey

        raw = self.private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return str(format_multikey(self.alg, raw))

    def sign(self, data: bytes, *, high_s: bool = False) -> bytes:
        der = self.private.sign(data, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        n = _ORDER[self.alg]
        s = min(s, n - s)
        if high_s:
            s = n - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@dataclass
class Repo:
    """A repository of ``did`` signed by ``key``: records by ``collection/rkey``,
    an MST built by the Repository spec's rules, and a signed v3 commit."""

    did: str
    key: Key
    records: dict[str, dict[str, Any] | bytes] = field(default_factory=dict)
    blocks: dict[bytes, bytes] = field(default_factory=dict)
    rev: str = "3l3qo2vutsw2b"

    def put(
        self, rkey: str, value: dict[str, Any] | bytes, collection: str = COLLECTION
    ) -> str:
        """Add a record (JSON form, or raw block bytes); returns its CID."""
        self.records[f"{collection}/{rkey}"] = value
        return cid_to_str(self.add(_block_of(value)))

    def add(self, data: bytes) -> bytes:
        cid = block_cid(data)
        self.blocks[cid] = data
        return cid

    def _node(self, items: list[tuple[bytes, bytes]], layer: int) -> bytes | None:
        if not items:
            return None
        if layer < 0:  # pragma: no cover - layers are computed from the keys
            raise AssertionError("negative layer")
        here = [i for i, (k, _) in enumerate(items) if mst_layer(k) == layer]
        if not here:
            node = {"l": self._link(items, layer - 1), "e": []}
        else:
            entries = []
            prev = b""
            for n, i in enumerate(here):
                key, value = items[i]
                nxt = here[n + 1] if n + 1 < len(here) else len(items)
                p = 0
                while p < min(len(prev), len(key)) and prev[p] == key[p]:
                    p += 1
                entries.append(
                    {
                        "p": p,
                        "k": key[p:],
                        "v": Link(value),
                        "t": self._link(items[i + 1 : nxt], layer - 1),
                    }
                )
                prev = key
            node = {"l": self._link(items[: here[0]], layer - 1), "e": entries}
        return self.add(dag_cbor(node))

    def _link(self, items: list[tuple[bytes, bytes]], layer: int) -> Link | None:
        cid = self._node(items, layer)
        return None if cid is None else Link(cid)

    def mst_root(self) -> bytes:
        items = sorted(
            (k.encode(), block_cid(_block_of(v))) for k, v in self.records.items()
        )
        if not items:
            return self.add(dag_cbor({"l": None, "e": []}))
        root = self._node(items, max(mst_layer(k) for k, _ in items))
        assert root is not None
        return root

    def commit(
        self,
        *,
        did: str | None = None,
        signer: Key | None = None,
        high_s: bool = False,
        version: int = 3,
        data: bytes | None = None,
    ) -> bytes:
        unsigned = {
            "did": did or self.did,
            "version": version,
            "data": Link(data or self.mst_root()),
            "rev": self.rev,
            "prev": None,
        }
        sig = (signer or self.key).sign(dag_cbor(unsigned), high_s=high_s)
        return self.add(dag_cbor({**unsigned, "sig": sig}))

    def path(self, root: bytes, key: bytes) -> list[bytes]:
        """CIDs of the MST nodes from ``root`` towards ``key`` (a getRecord proof)."""
        from atdata_runtime.atmosphere.cid import decode_dag_cbor

        out, cid = [], root
        while cid is not None:
            out.append(cid)
            node = decode_dag_cbor(self.blocks[cid])
            prev, nxt = b"", node["l"]
            for e in node["e"]:
                full = prev[: e["p"]] + e["k"]
                if full == key:
                    return out
                if key < full:
                    break
                nxt, prev = e["t"], full
            cid = nxt.raw if nxt is not None else None
        return out

    def proof(self, rkey: str, commit: bytes | None = None) -> bytes:
        """The CAR ``sync.getRecord`` would send for ``rkey``: commit, MST path,
        record."""
        commit = commit or self.commit()
        from atdata_runtime.atmosphere.cid import decode_dag_cbor

        data = decode_dag_cbor(self.blocks[commit])["data"].raw
        key = f"{COLLECTION}/{rkey}".encode()
        cids = [commit, *self.path(data, key)]
        value = self.records.get(key.decode())
        if value is not None:
            cids.append(block_cid(_block_of(value)))
        return car(commit, [(c, self.blocks[c]) for c in cids])

    def did_document(self, pds: str, *, key: Key | None = None) -> dict[str, Any]:
        return {
            "id": self.did,
            "alsoKnownAs": [],
            "verificationMethod": [
                {
                    "id": f"{self.did}#atproto",
                    "type": "Multikey",
                    "controller": self.did,
                    "publicKeyMultibase": (key or self.key).multikey,
                }
            ],
            "service": [
                {
                    "id": "#atproto_pds",
                    "type": "AtprotoPersonalDataServer",
                    "serviceEndpoint": pds,
                }
            ],
        }


def lens_record(n: int) -> dict[str, Any]:
    return {"$type": COLLECTION, "name": f"lens {n}", "n": n}


# -- a fake PDS + PLC directory on loopback ----------------------------------------


class FakeNetwork:
    """One loopback HTTP server that is both a PLC directory (``GET /{did}``) and a
    PDS (``sync.getRecord`` → ``cars[rkey]``, ``repo.getRecord`` → ``json_records``
    [rkey]). Counts requests per XRPC method in ``hits``."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.cars: dict[str, Any] = {}
        self.json_records: dict[str, dict[str, Any]] = {}
        self.listing: Any = {"records": []}
        self.faults: list[str] = []
        self.blobs: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                name = url.path.rsplit("/", 1)[-1]
                fake.hits[name] = fake.hits.get(name, 0) + 1
                if url.path.startswith("/did:"):
                    doc = fake.docs.get(url.path[1:])
                    self.send(200 if doc else 404, "application/json", doc or {})
                elif name == "com.atproto.sync.getRecord":
                    fault = fake.faults.pop(0) if fake.faults else None
                    if fault == "stall":
                        time.sleep(1.5)
                    elif fault == "503":
                        self.send(503, "application/json", {"error": "Unavailable"})
                        return
                    data = fake.cars.get(query.get("rkey", ""))
                    if data is None:
                        self.send(400, "application/json", {"error": "RecordNotFound"})
                    elif isinstance(data, tuple):
                        self.send(data[0], "application/json", data[1])
                    else:
                        self.send(200, "application/vnd.ipld.car", data)
                elif name == "com.atproto.repo.getRecord":
                    rec = fake.json_records.get(query.get("rkey", ""))
                    if rec is None:
                        self.send(400, "application/json", {"error": "RecordNotFound"})
                    else:
                        self.send(200, "application/json", rec)
                elif name == "com.atproto.sync.getBlob":
                    blob = fake.blobs.get(query.get("cid", ""))
                    if blob is None:
                        self.send(400, "application/json", {"error": "BlobNotFound"})
                    else:
                        self.send(200, "application/octet-stream", blob)
                elif name == "com.atproto.repo.listRecords":
                    page = fake.listing
                    self.send(
                        200, "application/json", page(query) if callable(page) else page
                    )
                else:
                    self.send(404, "application/json", {"error": "NotFound"})

            def send(self, status: int, kind: str, body: Any) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a stalled answer), as tested

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, repo: Repo, *, key: Key | None = None) -> None:
        """Serve ``repo``'s DID document (with ``key``, default the repo's own)."""
        self.docs[repo.did] = repo.did_document(self.url, key=key)

    def client(self, **kw: Any) -> AtmosphereClient:
        resolver = IdentityResolver(plc_url=self.url, retry=RetryPolicy(attempts=1))
        return AtmosphereClient(resolver=resolver, retry=RetryPolicy(attempts=1), **kw)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


VICTIM = "did:plc:victimvictimvictimvictim"
ATTACKER = "did:plc:attackerattackerattacker"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNetwork]:
    monkeypatch.setenv(LOOPBACK_ENV, "1")
    network = FakeNetwork()
    try:
        yield network
    finally:
        network.close()


def victim_repo(n: int = 40) -> Repo:
    repo = Repo(VICTIM, Key(seed=1))
    for i in range(n):
        repo.put(f"r{i:03d}", lens_record(i))
    return repo


def uri(rkey: str, did: str = VICTIM) -> str:
    return f"at://{did}/{COLLECTION}/{rkey}"


def refused(client: AtmosphereClient, rkey: str, rule: str) -> RecordVerificationError:
    with pytest.raises(RecordVerificationError) as info:
        client.get_record(uri(rkey), validate=False)
    assert info.value.rule == rule, str(info.value)
    assert uri(rkey) in str(info.value) and f"[{rule}]" in str(info.value)
    return info.value


# -- the honest case, and absence --------------------------------------------------


def test_a_proven_record_is_returned_with_its_rev(fake: FakeNetwork) -> None:
    repo = victim_repo()
    cid = repo.put("r007", lens_record(7))
    fake.publish(repo)
    fake.cars["r007"] = repo.proof("r007")
    got = fake.client().get_record(uri("r007"), validate=False)
    assert (got.cid, got.value, got.verified, got.rev) == (
        cid,
        lens_record(7),
        "repo",
        repo.rev,
    )
    assert fake.hits.get("com.atproto.repo.getRecord") is None


def test_p256_signing_keys_verify(fake: FakeNetwork) -> None:
    repo = Repo(VICTIM, Key("ES256", seed=3))
    repo.put("a", lens_record(1))
    fake.publish(repo)
    fake.cars["a"] = repo.proof("a")
    assert fake.client().get_record(uri("a"), validate=False).value == lens_record(1)


def test_absence_proven_by_the_signed_tree_is_not_found(fake: FakeNetwork) -> None:
    repo = victim_repo()
    fake.publish(repo)
    fake.cars["r999"] = repo.proof("r999")  # the path shows where it would be
    client = fake.client()
    assert client.try_get_record(uri("r999")) is None
    with pytest.raises(RecordNotFoundError):
        client.get_record(uri("r999"))


def test_record_not_found_answer_is_not_found(fake: FakeNetwork) -> None:
    fake.publish(victim_repo(3))
    assert fake.client().try_get_record(uri("gone")) is None


def test_other_xrpc_errors_name_the_uri_not_the_body(fake: FakeNetwork) -> None:
    fake.publish(victim_repo(3))
    secret = "token=hunter2 internal detail"
    fake.cars["x"] = (400, {"error": "RepoTakendown", "message": secret})
    with pytest.raises(NetworkError) as info:
        fake.client().get_record(uri("x"))
    assert info.value.rule == "XRPC_ERROR" and uri("x") in str(info.value)
    assert "HTTP 400 RepoTakendown" in str(info.value)
    assert "hunter2" not in str(info.value)
    fake.cars["x"] = (400, {"error": "Not a name\n::error::x", "message": secret})
    with pytest.raises(NetworkError) as info:
        fake.client().get_record(uri("x"))
    assert str(info.value).endswith("HTTP 400 [XRPC_ERROR]")


# -- the attacks -------------------------------------------------------------------


def test_self_hashed_record_from_repo_get_record_is_refused(fake: FakeNetwork) -> None:
    """Today's accepted attack: a fake PDS answers ``repo.getRecord`` with a record
    and its own correct CID. The verified read never asks ``repo.getRecord``; the
    proof it asks for can only be signed with the attacker's key."""
    forged = lens_record(666)
    fake.json_records["r001"] = {
        "uri": uri("r001"),
        "cid": from_json_cid(forged),
        "value": forged,
    }
    honest = victim_repo()
    fake.publish(honest)
    evil = Repo(VICTIM, Key(seed=666))
    evil.put("r001", forged)
    fake.cars["r001"] = evil.proof("r001")
    refused(fake.client(), "r001", "REPO_BAD_SIGNATURE")
    # The opt-out is exactly today's check, and is fooled: that is why it warns.
    assert fake.client(verify="server-cid").get_record(uri("r001")).value == forged


def from_json_cid(value: dict[str, Any]) -> str:
    from atdata_runtime.atmosphere import record_cid

    return record_cid(value)


def test_commit_signed_by_another_key_is_refused(fake: FakeNetwork) -> None:
    repo = victim_repo()
    fake.publish(repo)
    fake.cars["r003"] = repo.proof("r003", repo.commit(signer=Key(seed=2)))
    refused(fake.client(), "r003", "REPO_BAD_SIGNATURE")


def test_a_rotated_key_is_picked_up_without_waiting_for_the_cache(
    fake: FakeNetwork,
) -> None:
    """The DID document is cached (TTL 1 h); after the repository's signing key
    rotates, a commit signed by the new key fails against the cached key, so the
    client fetches the DID document once more and verifies against its key. A
    signature that fits neither is still refused, and the retry costs one lookup."""
    repo = victim_repo()
    fake.publish(repo)
    fake.cars["r003"] = repo.proof("r003")
    client = fake.client()
    assert client.get_record(uri("r003"), validate=False).verified == "repo"
    new_key = Key(seed=2)
    fake.publish(repo, key=new_key)  # the PLC directory now names the new key
    fake.cars["r003"] = repo.proof("r003", repo.commit(signer=new_key))
    assert client.get_record(uri("r003"), validate=False).verified == "repo"
    fake.cars["r003"] = repo.proof("r003", repo.commit(signer=Key(seed=3)))
    refused(client, "r003", "REPO_BAD_SIGNATURE")


def test_high_s_signature_is_refused(fake: FakeNetwork) -> None:
    # Cryptography spec § ECDSA Signature Malleability: only low-S is valid.
    repo = victim_repo()
    fake.publish(repo)
    fake.cars["r003"] = repo.proof("r003", repo.commit(high_s=True))
    refused(fake.client(), "r003", "REPO_BAD_SIGNATURE")
    fake.cars["r003"] = repo.proof("r003")
    assert fake.client().get_record(uri("r003"), validate=False).cid


def test_commit_of_another_repository_is_refused(fake: FakeNetwork) -> None:
    """The attacker's own genuine repository, served for the victim's DID."""
    fake.publish(victim_repo())
    evil = Repo(ATTACKER, Key(seed=9))
    evil.put("r001", lens_record(666))
    fake.cars["r001"] = evil.proof("r001")
    refused(fake.client(), "r001", "REPO_DID_MISMATCH")


def test_a_proof_of_another_record_is_refused(fake: FakeNetwork) -> None:
    """A genuine signed proof, but of a different key: the path to the record asked
    for needs MST nodes the CAR does not have."""
    repo = victim_repo(200)
    fake.publish(repo)
    commit = repo.commit()
    rkeys = [f"r{i:03d}" for i in range(200)]
    other = next(
        k
        for k in rkeys[1:]
        if set(repo.path(*_data_and_key(repo, commit, k)))
        != set(repo.path(*_data_and_key(repo, commit, "r000")))
    )
    fake.cars["r000"] = repo.proof(other, commit)
    refused(fake.client(), "r000", "REPO_MST_PROOF")


def _data_and_key(repo: Repo, commit: bytes, rkey: str) -> tuple[bytes, bytes]:
    from atdata_runtime.atmosphere.cid import decode_dag_cbor

    data = decode_dag_cbor(repo.blocks[commit])["data"].raw
    return data, f"{COLLECTION}/{rkey}".encode()


def test_a_swapped_record_block_is_refused(fake: FakeNetwork) -> None:
    """Right commit and path, but another record (under its own CID) instead of the
    one the tree names."""
    repo = victim_repo()
    fake.publish(repo)
    proof = parse_car(repo.proof("r005"))
    record = block_cid(dag_cbor(from_json(lens_record(5))))
    swapped = dag_cbor(from_json(lens_record(666)))
    blocks = [(c, b) for c, b in proof.blocks.items() if c != record]
    fake.cars["r005"] = car(proof.root, [*blocks, (block_cid(swapped), swapped)])
    refused(fake.client(), "r005", "REPO_MST_PROOF")


def test_a_block_that_does_not_hash_to_its_cid_is_refused(fake: FakeNetwork) -> None:
    repo = victim_repo()
    fake.publish(repo)
    proof = parse_car(repo.proof("r005"))
    record = block_cid(dag_cbor(from_json(lens_record(5))))
    forged = dag_cbor(from_json(lens_record(6)))  # other bytes under the real CID
    blocks = [(c, forged if c == record else b) for c, b in proof.blocks.items()]
    fake.cars["r005"] = car(proof.root, blocks)
    refused(fake.client(), "r005", "REPO_BLOCK_CID")


def test_malformed_car_and_commit_are_refused(fake: FakeNetwork) -> None:
    repo = victim_repo()
    fake.publish(repo)
    good = repo.proof("r005")
    fake.cars["r005"] = good[: len(good) // 2]
    refused(fake.client(), "r005", "REPO_CAR_INVALID")
    fake.cars["r005"] = repo.proof("r005", repo.commit(version=2))
    refused(fake.client(), "r005", "REPO_COMMIT_INVALID")


def test_a_did_document_without_a_signing_key_is_refused(fake: FakeNetwork) -> None:
    repo = victim_repo(3)
    fake.publish(repo)
    fake.docs[VICTIM]["verificationMethod"] = []
    fake.cars["r001"] = repo.proof("r001")
    refused(fake.client(), "r001", "REPO_SIGNING_KEY")


def test_a_proof_over_the_size_cap_is_refused(fake: FakeNetwork) -> None:
    repo = victim_repo(3)
    repo.put("big", {"$type": COLLECTION, "blob": "x" * 50_000})
    fake.publish(repo)
    fake.cars["big"] = repo.proof("big")
    with pytest.raises(NetworkError) as info:
        fake.client(max_car_bytes=10_000).get_record(uri("big"))
    assert info.value.rule == "RESPONSE_TOO_LARGE"
    assert fake.client().get_record(uri("big"), validate=False).value["blob"]


def test_list_records_yields_only_proven_records(fake: FakeNetwork) -> None:
    """The listing may say anything; each record yielded is the proven one."""
    repo = victim_repo(3)
    fake.publish(repo)
    for rkey in ("r000", "r001"):
        fake.cars[rkey] = repo.proof(rkey)
    evil = Repo(VICTIM, Key(seed=666))
    evil.put("r002", lens_record(666))
    fake.cars["r002"] = evil.proof("r002")

    listing = [
        {"uri": uri(k), "cid": from_json_cid(v), "value": v}
        for k, v in (("r000", lens_record(0)), ("r001", lens_record(666)))
    ]
    fake.listing = {"records": listing}
    client = fake.client()
    got = list(client.list_records(VICTIM, COLLECTION, validate=False))
    assert [r.value for r in got] == [lens_record(0), lens_record(1)]
    listing.append({"uri": uri("r002"), "cid": "x", "value": {}})
    with pytest.raises(RecordVerificationError) as info:
        list(client.list_records(VICTIM, COLLECTION, validate=False))
    assert info.value.rule == "REPO_BAD_SIGNATURE"


def test_list_records_is_bounded(fake: FakeNetwork) -> None:
    repo = victim_repo(3)
    fake.publish(repo)
    fake.cars["r000"] = repo.proof("r000")
    item = {"uri": uri("r000"), "cid": "x", "value": {}}
    fake.listing = {"records": [item], "cursor": "again"}  # an endless listing
    with pytest.raises(RecordVerificationError) as info:
        list(fake.client().list_records(VICTIM, COLLECTION, validate=False))
    assert info.value.rule == "XRPC_MALFORMED" and "cursor" in str(info.value)
    fake.listing = {"records": [item] * 20, "pad": "x" * (9 * 1024 * 1024)}
    with pytest.raises(NetworkError) as big:
        list(fake.client().list_records(VICTIM, COLLECTION, validate=False))
    assert big.value.rule == "RESPONSE_TOO_LARGE"
    fake.listing = {"records": "nope"}
    with pytest.raises(RecordVerificationError, match="malformed"):
        list(fake.client().list_records(VICTIM, COLLECTION, validate=False))


@pytest.mark.parametrize(
    ("item", "verify", "rule"),
    [
        ({"uri": "not an at-uri", "cid": "x", "value": {}}, "repo", "LIST_URI_INVALID"),
        (
            {"uri": f"at://{VICTIM}/app.other.thing/r000", "cid": "x", "value": {}},
            "repo",
            "LIST_OTHER_COLLECTION",
        ),
        ({"uri": "u", "value": lens_record(0)}, "server-cid", "RECORD_NO_CID"),
        (
            {"uri": "u", "cid": 7, "value": lens_record(0)},
            "server-cid",
            "RECORD_NO_CID",
        ),
        (
            {"uri": "u", "cid": "x", "value": {"f": 1.5}},
            "server-cid",
            "RECORD_DATA_MODEL",
        ),
    ],
    ids=["invalid-uri", "other-collection", "no-cid", "cid-not-a-string", "a-float"],
)
def test_each_listing_failure_has_its_own_rule(
    fake: FakeNetwork, item: dict[str, Any], verify: str, rule: str
) -> None:
    """RECORD_CID_MISMATCH means only "does not hash to the CID"."""
    fake.publish(victim_repo(1))
    fake.listing = {"records": [item]}
    with pytest.raises(RecordVerificationError) as info:
        list(
            fake.client(verify=verify).list_records(VICTIM, COLLECTION, validate=False)
        )
    assert info.value.rule == rule, str(info.value)
    assert f"[{rule}]" in str(info.value)


def test_an_attempt_timeout_is_a_deadline_error_and_retried(fake: FakeNetwork) -> None:
    from atdata_runtime.atmosphere.client import _AttemptTimedOut
    from atdata_runtime.net.errors import DeadlineExceededError

    assert issubclass(_AttemptTimedOut, DeadlineExceededError)
    repo = victim_repo(3)
    fake.publish(repo)
    fake.cars["r001"] = repo.proof("r001")
    client = AtmosphereClient(
        resolver=IdentityResolver(plc_url=fake.url),
        timeout=0.5,
        retry=RetryPolicy(base=0.01, attempts=1),
    )
    fake.faults = ["stall"]
    with pytest.raises(NetworkError) as info:
        client.get_record(uri("r001"), validate=False)
    cause = info.value.__cause__ or info.value
    assert isinstance(cause, DeadlineExceededError), repr(info.value)
    assert cause.rule == "DEADLINE_EXCEEDED" and cause.limit > 0


def test_proof_reads_retry_stalls_and_5xx_within_bounds(fake: FakeNetwork) -> None:
    """``timeout`` bounds each attempt as a whole (a stalled server cannot hold a
    read past it); the retry policy retries stalls and 5xx, then gives up."""
    repo = victim_repo(3)
    fake.publish(repo)
    fake.cars["r001"] = repo.proof("r001")
    resolver = IdentityResolver(plc_url=fake.url)
    client = AtmosphereClient(
        resolver=resolver, timeout=0.5, retry=RetryPolicy(base=0.01, attempts=3)
    )
    fake.faults = ["stall", "503"]
    assert client.get_record(uri("r001"), validate=False).value == lens_record(1)
    assert set(client.retry.stats) == {"DEADLINE_EXCEEDED", "HTTP 503"}
    fake.faults = ["stall"] * 3
    start = time.monotonic()
    with pytest.raises(NetworkError) as info:
        client.get_record(uri("r001"), validate=False)
    assert info.value.rule == "RETRY_EXHAUSTED" and uri("r001") in str(info.value)
    assert time.monotonic() - start < 3 * 0.5 + 1.0


def test_blobs_are_checked_and_capped(fake: FakeNetwork) -> None:
    from atdata_runtime.atmosphere import BlobVerificationError, blob_cid

    fake.publish(victim_repo(1))
    data = b"shard bytes" * 1000
    cid = blob_cid(data)
    fake.blobs[cid] = data
    client = fake.client()
    assert client.get_blob(VICTIM, cid) == data
    with pytest.raises(NetworkError) as big:
        client.get_blob(VICTIM, cid, max_bytes=1000)
    assert big.value.rule == "RESPONSE_TOO_LARGE"
    fake.blobs[cid] = data + b"!"
    with pytest.raises(BlobVerificationError):
        client.get_blob(VICTIM, cid)
    with pytest.raises(NetworkError) as missing:
        client.get_blob(VICTIM, blob_cid(b"other"))
    assert missing.value.rule == "XRPC_ERROR" and "BlobNotFound" in str(missing.value)


def test_the_opt_out_still_checks_the_server_cid(fake: FakeNetwork) -> None:
    """``verify="server-cid"``: a record that does not hash to the CID its server
    gives is refused (the old check, kept for the opt-out)."""
    fake.publish(victim_repo(3))
    value = lens_record(1)
    fake.json_records["r001"] = {
        "uri": uri("r001"),
        "cid": from_json_cid(lens_record(2)),
        "value": value,
    }
    client = fake.client(verify="server-cid")
    with pytest.raises(RecordVerificationError) as info:
        client.get_record(uri("r001"), validate=False)
    assert info.value.rule == "RECORD_CID_MISMATCH" and uri("r001") in str(info.value)
    fake.json_records["r001"]["value"] = "x" * (3 * 1024 * 1024)
    with pytest.raises(NetworkError) as big:
        client.get_record(uri("r001"), validate=False)
    assert big.value.rule == "RESPONSE_TOO_LARGE"
    assert client.try_get_record(uri("absent")) is None


def test_the_opt_out_warns_once_per_client(
    fake: FakeNetwork, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "atdata_runtime.atmosphere"):
        client = fake.client(verify=False)
    assert client.verify == "server-cid"
    assert [
        r.getMessage()
        for r in caplog.records
        if "not repository-verified" in r.getMessage()
    ]
    with pytest.raises(ValueError, match="verify"):
        fake.client(verify="maybe")
    caplog.clear()
    with caplog.at_level(logging.WARNING, "atdata_runtime.atmosphere"):
        assert fake.client().verify == "repo"
    assert not caplog.records


# -- spec vectors ------------------------------------------------------------------


def test_mst_layers_match_the_repository_spec_examples() -> None:
    # AT Protocol "Repository" spec § Merkle Search Tree: example keys and depths.
    for key, layer in (
        ("2653ae71", 0),
        ("blue", 1),
        ("app.bsky.feed.post/454397e440ec", 4),
        ("app.bsky.feed.post/9adeb165882c", 8),
    ):
        assert mst_layer(key.encode()) == layer, key


def test_signing_keys_of_every_supported_form() -> None:
    k256, p256 = Key("ES256K", 5), Key("ES256", 5)
    for key, prefix in ((k256, "did:key:zQ3s"), (p256, "did:key:zDn")):
        doc = {
            "verificationMethod": [
                {
                    "id": "#atproto",
                    "type": "Multikey",
                    "publicKeyMultibase": key.multikey,
                }
            ]
        }
        assert signing_key(doc, VICTIM).startswith(prefix)
    bad = {
        "verificationMethod": [
            {"id": "#atproto", "type": "Multikey", "publicKeyMultibase": "zzzz"}
        ]
    }
    with pytest.raises(RecordVerificationError) as info:
        signing_key(bad, VICTIM)
    assert info.value.rule == "REPO_SIGNING_KEY"
    other = {
        "verificationMethod": [
            {
                "id": "did:plc:other#atproto",
                "type": "Multikey",
                "publicKeyMultibase": k256.multikey,
            }
        ]
    }
    with pytest.raises(RecordVerificationError):
        signing_key(other, VICTIM)


def test_proof_checks_in_isolation() -> None:
    repo = victim_repo(5)
    key = signing_key(repo.did_document("https://pds.example"), VICTIM)
    got = verify_record_proof(
        repo.proof("r002"), did=VICTIM, collection=COLLECTION, rkey="r002", key=key
    )
    assert got is not None and got.value == lens_record(2)
    assert to_json(from_json(got.value)) == got.value


# -- the real local PDS ------------------------------------------------------------


@pytest.fixture
def account(net: LocalNetwork) -> Account:
    return net.create_account(f"verify{free_port()}")


def _writer(net: LocalNetwork, account: Account, tmp_path: Any) -> AtmosphereClient:
    return AtmosphereClient.login(
        account.handle,
        account.password,
        pds_url=net.pds_url,
        session_file=tmp_path / "session.json",
        resolver=IdentityResolver(plc_url=net.plc_url, handle_service=net.pds_url),
    )


def test_a_published_record_verifies_end_to_end_on_the_real_pds(
    net: LocalNetwork, account: Account, tmp_path: Any
) -> None:
    writer = _writer(net, account, tmp_path)
    written = [
        writer.create_record(COLLECTION, f"k{i}", lens_record(i), validate=False)
        for i in range(12)
    ]
    reader = AtmosphereClient(
        resolver=IdentityResolver(plc_url=net.plc_url, handle_service=net.pds_url)
    )
    for i, w in enumerate(written):
        got = reader.get_record(w.uri, validate=False)
        assert (got.cid, got.value, got.verified) == (w.cid, lens_record(i), "repo")
        assert got.rev
    by_handle = f"at://{account.handle}/{COLLECTION}/k3"
    assert reader.get_record(by_handle, validate=False).uri == written[3].uri
    with pytest.raises(RecordNotFoundError):
        reader.get_record(f"at://{account.did}/{COLLECTION}/absent")
    listed = list(reader.list_records(account.did, COLLECTION, validate=False))
    assert sorted(r.cid for r in listed) == sorted(w.cid for w in written)
    assert {r.verified for r in listed} == {"repo"}
    blob = writer.upload_blob(b"\x00blob" * 100, "application/octet-stream")
    holder = {"$type": COLLECTION, "blob": blob}  # a PDS serves referenced blobs
    writer.create_record(COLLECTION, "holder", holder, validate=False)
    assert reader.get_record(f"at://{account.did}/{COLLECTION}/holder").value == holder
    assert reader.get_blob(account.did, blob["ref"]["$link"]) == b"\x00blob" * 100


# -- the CLI -----------------------------------------------------------------------


def test_pull_refuses_a_forged_schema_and_the_opt_out_is_explicit(
    fake: FakeNetwork, tmp_path: Any
) -> None:
    """``atdata-gen pull`` reads through the repository proof; a fake PDS serving a
    self-hashed schema record (and a proof signed by its own key) is refused and
    nothing is written. ``--unverified-reads`` is the explicit opt-out, and says so."""
    from atdata_runtime.atmosphere import record_cid

    from .conftest import flat_schema_record, run_cli

    schema = "science.alt.dataset.schema"
    record = flat_schema_record("Forged", "1.0.0", {"x": {"type": "integer"}})
    target = f"at://{VICTIM}/{schema}/Forged:1.0.0"
    fake.json_records["Forged:1.0.0"] = {
        "uri": target,
        "cid": record_cid(record),
        "value": record,
    }
    fake.publish(victim_repo(3))
    evil = Repo(VICTIM, Key(seed=666))
    evil.put("Forged:1.0.0", record, collection=schema)
    commit = evil.commit()
    key = f"{schema}/Forged:1.0.0".encode()
    data = evil.path(_data_and_key(evil, commit, "x")[0], key)
    fake.cars["Forged:1.0.0"] = car(
        commit,
        [(c, evil.blocks[c]) for c in [commit, *data, block_cid(_block_of(record))]],
    )
    env = {"ATDATA_PLC_URL": fake.url, LOOPBACK_ENV: "1"}
    lock = tmp_path / "atdata-gen.lock"
    proc = run_cli(["pull", target, "--lock", str(lock)], tmp_path, **env)
    assert proc.returncode == 2, proc.stderr
    assert "REPO_BAD_SIGNATURE" in proc.stderr and target in proc.stderr
    assert not lock.exists()
    proc = run_cli(
        ["pull", target, "--lock", str(lock), "--unverified-reads"], tmp_path, **env
    )
    assert proc.returncode == 0, proc.stderr
    assert "not repository-verified" in proc.stderr
    assert lock.exists()
