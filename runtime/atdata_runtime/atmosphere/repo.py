"""Repository proofs: a record is checked against its repository's signed commit,
not against what a server says (AT Protocol "Repository" and "Cryptography" specs).

``com.atproto.sync.getRecord?did=&collection=&rkey=`` answers a CAR v1 file whose
root is the repository's signed commit and whose blocks are the MST nodes on the path
to ``{collection}/{rkey}`` and the record itself. :func:`verify_record_proof` checks,
in order, and raises :class:`~.errors.RecordVerificationError` naming the AT-URI with
the rule of the first failure:

``REPO_KEY_INVALID``
    the ``collection`` asked for is not an NSID or the ``rkey`` not a record key
    (Lexicon "NSID" and "Record Key" specs): the MST key ``{collection}/{rkey}``
    must name one record only (``("a", "b/c")`` and ``("a/b", "c")`` would build
    the same key).
``REPO_CAR_INVALID``
    CAR framing (CARv1 spec: varint-prefixed header ``{version: 1, roots: [cid]}``,
    then varint-prefixed ``cid ‖ bytes`` sections): truncation, bad varints, a
    header that is not version 1 with exactly one root, a CID that is not CIDv1
    dag-cbor (0x71) sha2-256, too many bytes or blocks, or the root block missing.
``REPO_BLOCK_CID``
    a block whose bytes do not hash to its CID (sha2-256), or two different blocks
    under one CID.
``REPO_COMMIT_INVALID``
    the root is not a v3 commit (``did``, ``version`` 3, ``data`` link, ``rev`` a
    TID, ``prev`` link or null, ``sig`` bytes; nothing else).
``REPO_DID_MISMATCH``
    the commit is for another repository than the one asked for.
``REPO_SIGNING_KEY``
    the DID document has no usable ``#atproto`` verification method (Multikey, or
    the legacy ``EcdsaSecp256k1VerificationKey2019`` / ``EcdsaSecp256r1…``, for
    secp256k1 or NIST P-256; AT Protocol "DID" spec).
``REPO_BAD_SIGNATURE``
    ``sig`` does not verify over the DAG-CBOR encoding of the commit without
    ``sig`` (ECDSA with SHA-256, 64-byte compact ``r ‖ s``, low-S only; the
    "Cryptography" spec § ECDSA Signature Malleability). Checked by
    :func:`verify_signature`: secp256k1 (``did:key`` multicodec ``0xe7``) keys
    with ``coincurve`` (libsecp256k1, ~25 µs) when it is importable (the
    ``firehose`` extra), else, and for P-256 keys, with ``atproto_crypto`` (on
    ``cryptography``, ~250 µs); both refuse high-S, and ``r`` or ``s`` zero or
    not below the curve order.
``REPO_MST_PROOF``
    the Merkle Search Tree path from the commit's ``data`` to the key: a node
    missing from the CAR, malformed (``l``, ``e`` entries of ``p`` prefix length,
    ``k`` key suffix, ``v`` value, ``t`` subtree), keys out of order, a key on the
    wrong layer (layer = leading zero bits of sha2-256(key) in 2-bit chunks), a
    subtree not below its parent's layer, the path deeper than ``max_depth``, or
    the record block missing.
``REPO_RECORD_INVALID``
    the record block is not a data-model map (decoded strictly, nesting at most
    ``max_record_depth``) in its one canonical DAG-CBOR encoding.

When the verified tree proves the key absent, :func:`verify_record_proof` returns
``None`` (the caller raises :class:`~.errors.RecordNotFoundError`).

Whole repositories (``com.atproto.sync.getRepo``, a CAR of every block of the
repository at its current commit): :func:`verify_repo` parses the CAR (framing as
above; each block hash-checked when it is read), checks the signed commit, walks the MST in key order with
:func:`mst_walk` (only the subtrees that can hold keys under a prefix, e.g.
``science.alt.dataset.``) and decodes every record found there. Its failures are
:class:`RepoVerificationError` (a :class:`~.errors.RecordVerificationError` that
also names the MST ``key`` and the block ``cid`` concerned, when there is one) with
the rules above, ``REPO_KEY_INVALID`` for an MST key that is not
``{NSID}/{record key}``, and ``REPO_LIMIT`` for a repository over ``max_records``
records or ``max_items`` decoded CBOR items, or a record block over
``max_record_bytes`` (see :func:`verify_repo`). Blocks are
decoded with cbrrr (the firehose's strict C decoder, records straight into the
JSON data model) when it is importable (the ``firehose`` extra), else with
:func:`~.cid.decode_dag_cbor`; both refuse the same non-canonical encodings.

Everything is bounded: the CAR by ``max_bytes`` (default
:data:`~atdata_runtime.net.fetch.MAX_CAR_BYTES`, 2 MiB, the cap its download has
too; a proof is a few KiB), the number of blocks by ``max_blocks`` (default
:data:`MAX_BLOCKS`, 512), the MST path by ``max_depth`` (default
:data:`MAX_MST_DEPTH`, 64 nodes) and record nesting by ``max_record_depth`` (default
:data:`~.cid.MAX_DEPTH`, 128). Work is linear in the CAR's size.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..lex.formats import is_nsid, is_record_key, is_tid
from ..net.fetch import MAX_CAR_BYTES, MAX_RECORD_BYTES
from .cid import (
    MAX_DEPTH,
    DataModelError,
    Link,
    cid_to_str,
    dag_cbor,
    decode_dag_cbor,
    read_varint,
    to_json,
)
from .errors import RecordVerificationError

__all__ = [
    "MAX_BLOCKS",
    "MAX_CAR_BYTES",
    "MAX_MST_DEPTH",
    "MAX_MST_NODE_BYTES",
    "MAX_REPO_BLOCKS",
    "MAX_REPO_BYTES",
    "MAX_REPO_ITEMS",
    "MAX_REPO_RECORDS",
    "Car",
    "MstEntries",
    "RepoRecord",
    "RepoVerificationError",
    "VerifiedRecord",
    "VerifiedRepo",
    "mst_find",
    "mst_layer",
    "mst_node",
    "mst_walk",
    "parse_car",
    "signing_key",
    "verify_commit",
    "verify_record_proof",
    "verify_repo",
    "verify_signature",
]

MAX_BLOCKS = 512
"""Default cap on the number of blocks in a proof CAR."""
MAX_MST_DEPTH = 64
"""Default cap on the number of MST nodes on the path from the root to a key."""

_SHA256_CID_PREFIX = bytes((0x01, 0x71, 0x12, 0x20))
"""CIDv1, dag-cbor (0x71), sha2-256 (0x12), 32-byte digest: every repository block."""
_MAX_MULTIBASE = 256
"""Characters of a ``publicKeyMultibase`` (an uncompressed P-256 key in base58 is
under 100), so that base58 decoding stays cheap."""
_COMMIT_FIELDS = {"did", "version", "data", "rev", "prev", "sig"}


def _fail(uri: str, rule: str, why: str) -> RecordVerificationError:
    return RecordVerificationError(uri, why, rule=rule)


@dataclass(frozen=True)
class Car:
    """A parsed, hash-checked CAR: ``root`` (binary CID) and ``blocks`` (binary CID →
    block bytes)."""

    root: bytes
    blocks: dict[bytes, bytes]


@dataclass(frozen=True)
class VerifiedRecord:
    """A record proven by its repository: ``cid`` and ``value`` (JSON form) of the
    record, ``commit`` (CID of the signed commit) and its ``rev``."""

    cid: str
    value: dict[str, Any]
    commit: str
    rev: str


def _varint(data: bytes, pos: int, uri: str) -> tuple[int, int]:
    """:func:`~.cid.read_varint`, its failure a ``REPO_CAR_INVALID`` at ``pos``."""
    try:
        return read_varint(data, pos)
    except DataModelError as exc:
        raise _fail(uri, "REPO_CAR_INVALID", f"{exc} at byte {pos}") from None


def parse_car(
    data: bytes,
    *,
    uri: str = "",
    max_bytes: int = MAX_CAR_BYTES,
    max_blocks: int = MAX_BLOCKS,
) -> Car:
    """Parse a CAR v1 file with one root and check every block against its CID
    (CIDv1, dag-cbor, sha2-256). Raises :class:`RecordVerificationError`
    (``REPO_CAR_INVALID``, ``REPO_BLOCK_CID``) naming ``uri``."""
    if len(data) > max_bytes:
        raise _fail(
            uri, "REPO_CAR_INVALID", f"CAR is over {max_bytes} bytes ({len(data)})"
        )
    size, pos = _varint(data, 0, uri)
    if size > len(data) - pos:
        raise _fail(uri, "REPO_CAR_INVALID", "CAR header runs past the end")
    try:
        header = decode_dag_cbor(data[pos : pos + size], max_depth=2)
    except DataModelError as exc:
        raise _fail(uri, "REPO_CAR_INVALID", f"CAR header: {exc}") from None
    roots = header.get("roots") if isinstance(header, dict) else None
    if (
        not isinstance(header, dict)
        or set(header) != {"roots", "version"}
        or header["version"] != 1
        or not isinstance(roots, list)
        or len(roots) != 1
        or not isinstance(roots[0], Link)
    ):
        raise _fail(
            uri, "REPO_CAR_INVALID", "CAR header is not {version: 1, roots: [one CID]}"
        )
    root = roots[0].raw
    pos += size
    blocks: dict[bytes, bytes] = {}
    count = 0
    while pos < len(data):
        count += 1
        if count > max_blocks:
            raise _fail(uri, "REPO_CAR_INVALID", f"CAR has over {max_blocks} blocks")
        start = pos
        size, pos = _varint(data, pos, uri)
        if size < 36 or size > len(data) - pos:
            raise _fail(
                uri, "REPO_CAR_INVALID", f"CAR section at byte {start} is truncated"
            )
        cid, block = data[pos : pos + 36], data[pos + 36 : pos + size]
        pos += size
        if cid[:4] != _SHA256_CID_PREFIX:
            raise _fail(
                uri,
                "REPO_CAR_INVALID",
                f"block at byte {start}: CID is not CIDv1 dag-cbor sha2-256",
            )
        if hashlib.sha256(block).digest() != cid[4:]:
            raise _fail(
                uri,
                "REPO_BLOCK_CID",
                f"block at byte {start} does not hash to its CID {cid_to_str(cid)}",
            )
        if blocks.setdefault(cid, block) != block:  # pragma: no cover - sha-256
            raise _fail(uri, "REPO_BLOCK_CID", f"two blocks for {cid_to_str(cid)}")
    if root not in blocks:
        raise _fail(uri, "REPO_CAR_INVALID", "CAR lacks its root (commit) block")
    return Car(root=root, blocks=blocks)


def signing_key(doc: dict[str, Any], did: str, *, uri: str = "") -> str:
    """The ``did:key`` of the ``#atproto`` signing key in a DID document (its
    ``verificationMethod`` with id ``#atproto`` or ``{did}#atproto``; type
    ``Multikey`` or the legacy secp256k1 / P-256 2019 types, ``publicKeyMultibase``
    of at most 256 characters). Raises :class:`RecordVerificationError` (``REPO_SIGNING_KEY``)."""
    from atproto_crypto.did import (  # type: ignore[import-untyped]
        get_did_key,
        parse_did_key,
    )

    methods = doc.get("verificationMethod")
    for method in methods if isinstance(methods, list) else []:
        if not isinstance(method, dict) or method.get("id") not in (
            "#atproto",
            f"{did}#atproto",
        ):
            continue
        kind, key = method.get("type"), method.get("publicKeyMultibase")
        if not isinstance(kind, str) or not isinstance(key, str):
            break
        if len(key) > _MAX_MULTIBASE:
            raise _fail(
                uri,
                "REPO_SIGNING_KEY",
                f"the #atproto key of {did} is over {_MAX_MULTIBASE} characters",
            )
        try:
            did_key: str | None = get_did_key(kind, key)
            if did_key is not None:
                parse_did_key(did_key)  # secp256k1 or P-256, a point on the curve
        except Exception:  # noqa: BLE001 - any malformed key is one finding
            did_key = None
        if did_key is not None:
            return did_key
        raise _fail(
            uri,
            "REPO_SIGNING_KEY",
            f"the #atproto key of {did} ({kind}) is not a secp256k1 or P-256 key",
        )
    raise _fail(
        uri, "REPO_SIGNING_KEY", f"the DID document of {did} has no #atproto key"
    )


_K256_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
"""The order ``n`` of the secp256k1 group (SEC 2 § 2.4.1)."""
_K256_DID_KEY = "did:key:zQ3s"
"""Every ``did:key`` of a compressed secp256k1 key (multicodec ``0xe7 0x01``, then a
33-byte point, base58btc) starts so; other keys take the ``atproto_crypto`` path."""
KEY_CACHE_SIZE = 4096
"""Parsed secp256k1 public keys kept (per ``did:key`` string, least recently used
dropped)."""


def _load_coincurve() -> Any:
    try:
        return importlib.import_module("coincurve")
    except ImportError:  # the atproto extra alone: the cryptography path
        return None


_coincurve: Any = _load_coincurve()


@lru_cache(maxsize=KEY_CACHE_SIZE)
def _k256_key(did_key: str) -> Any:
    """The ``coincurve.PublicKey`` of a secp256k1 ``did:key``, or ``None`` when the
    string is not one (other curve, bad multibase, not a point on the curve)."""
    from atproto_crypto.consts import (  # type: ignore[import-untyped]
        SECP256K1_JWT_ALG,
    )
    from atproto_crypto.did import parse_did_key

    try:
        parsed = parse_did_key(did_key)
        if parsed.jwt_alg != SECP256K1_JWT_ALG:
            return None
        return _coincurve.PublicKey(parsed.key_bytes)
    except Exception:  # noqa: BLE001 - a malformed key verifies nothing
        return None


def _der_int(value: bytes) -> bytes:
    """A DER INTEGER of an unsigned big-endian number (X.690 § 8.3: minimal, a
    leading zero byte when the top bit is set)."""
    value = value.lstrip(b"\0") or b"\0"
    if value[0] & 0x80:
        value = b"\0" + value
    return b"\x02" + bytes((len(value),)) + value


def _verify_k256_coincurve(did_key: str, data: bytes, sig: bytes) -> bool | None:
    """The libsecp256k1 check of a 64-byte compact ``r ‖ s`` over sha256(``data``);
    ``None`` when ``did_key`` is not a secp256k1 key coincurve parses (the caller
    then takes the ``atproto_crypto`` path, which fails it the same way). ``r``
    and ``s`` must be in ``[1, n)`` and ``s <= n // 2`` (low-S: the atproto
    "Cryptography" spec § ECDSA Signature Malleability; ``secp256k1_ecdsa_verify``
    refuses a non-normalized ``s`` as well)."""
    key = _k256_key(did_key)
    if key is None:
        return None
    if len(sig) != 64:
        return False
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    if not (0 < r < _K256_ORDER and 0 < s <= _K256_ORDER // 2):
        return False
    body = _der_int(sig[:32]) + _der_int(sig[32:])
    try:
        return bool(key.verify(b"\x30" + bytes((len(body),)) + body, data))
    except ValueError:  # pragma: no cover - the DER built above always parses
        return False


def _verify_atproto_crypto(did_key: str, data: bytes, sig: bytes) -> bool:
    """``atproto_crypto.verify.verify_signature`` (``cryptography``): 64-byte compact
    ``r ‖ s``, high-S refused; any exception (bad key, bad signature) is ``False``."""
    from atproto_crypto.verify import (  # type: ignore[import-untyped]
        verify_signature as crypto_verify,
    )

    try:
        return len(sig) == 64 and bool(crypto_verify(did_key, data, sig))
    except Exception:  # noqa: BLE001 - a malformed signature is not a valid one
        return False


def verify_signature(did_key: str, data: bytes, sig: bytes) -> bool:
    """Whether ``sig`` (64-byte compact ``r ‖ s``, low-S) is an ECDSA-SHA256
    signature of ``data`` by ``did_key`` (secp256k1 or P-256; atproto
    "Cryptography" spec). Never raises: a malformed key or signature is
    ``False``. secp256k1 keys are checked by libsecp256k1 (``coincurve``) when
    it is installed, with the same result as ``atproto_crypto``'s."""
    if _coincurve is not None and did_key.startswith(_K256_DID_KEY):
        fast = _verify_k256_coincurve(did_key, data, sig)
        if fast is not None:
            return fast
    return _verify_atproto_crypto(did_key, data, sig)


def _block(car: Car, cid: bytes, uri: str, rule: str, what: str) -> Any:
    block = car.blocks.get(cid)
    if block is None:
        raise _fail(uri, rule, f"the proof lacks the {what} block {cid_to_str(cid)}")
    try:
        return decode_dag_cbor(block, max_depth=4)
    except DataModelError as exc:
        raise _fail(uri, rule, f"{what} {cid_to_str(cid)}: {exc}") from None


def verify_commit(car: Car, did: str, key: str, *, uri: str = "") -> dict[str, Any]:
    """Check the CAR's root commit: a v3 commit of ``did`` signed by ``key`` (a
    ``did:key``). Returns the commit. Raises :class:`RecordVerificationError`
    (``REPO_COMMIT_INVALID``, ``REPO_DID_MISMATCH``, ``REPO_BAD_SIGNATURE``)."""
    commit = _block(car, car.root, uri, "REPO_COMMIT_INVALID", "commit")
    if (
        not isinstance(commit, dict)
        or set(commit) != _COMMIT_FIELDS
        or commit["version"] != 3
        or not isinstance(commit["did"], str)
        or not isinstance(commit["data"], Link)
        or not isinstance(commit["rev"], str)
        or not is_tid(commit["rev"])
        or not (commit["prev"] is None or isinstance(commit["prev"], Link))
        or not isinstance(commit["sig"], bytes)
    ):
        raise _fail(
            uri,
            "REPO_COMMIT_INVALID",
            "root block is not a v3 repository commit (did, version 3, data, rev, "
            "prev, sig)",
        )
    if commit["did"] != did:
        raise _fail(
            uri,
            "REPO_DID_MISMATCH",
            f"the commit is for {commit['did']!r}, not {did}",
        )
    sig = commit["sig"]
    unsigned = {k: v for k, v in commit.items() if k != "sig"}
    if not verify_signature(key, dag_cbor(unsigned), sig):
        raise _fail(
            uri,
            "REPO_BAD_SIGNATURE",
            f"commit {cid_to_str(car.root)} is not signed by the #atproto key of "
            f"{did} ({key})",
        )
    return commit


def mst_layer(key: bytes) -> int:
    """The MST layer of ``key``: leading zero bits of sha2-256(key) counted in 2-bit
    chunks (AT Protocol "Repository" spec § MST Structure; fanout 4)."""
    zeros = 0
    for b in hashlib.sha256(key).digest():
        if b == 0:
            zeros += 4
            continue
        zeros += (b < 64) + (b < 16) + (b < 4)
        break
    return zeros


MstEntries = list[tuple[bytes, Link, Link | None]]
"""An MST node's entries: ``(full key, value link, right subtree link or None)``."""


def mst_node(node: Any, cid: bytes, *, uri: str = "") -> tuple[MstEntries, Link | None]:
    """Check one decoded MST node (links as :class:`~.cid.Link`, keys as
    ``bytes``): ``{"l": link | None, "e": [{"p": int, "k": bytes, "v": link,
    "t": link | None}, …]}`` with keys rebuilt from their prefixes in strictly
    increasing order ("Repository" spec § MST Structure). Returns ``(entries,
    left subtree link or None)``. Raises :class:`RecordVerificationError`
    (``REPO_MST_PROOF``) naming ``cid``."""

    def bad() -> RecordVerificationError:
        return _fail(uri, "REPO_MST_PROOF", f"MST node {cid_to_str(cid)} is malformed")

    if (
        not isinstance(node, dict)
        or set(node) != {"l", "e"}
        or not isinstance(node["e"], list)
        or not (node["l"] is None or isinstance(node["l"], Link))
    ):
        raise bad()
    entries: MstEntries = []
    prev = b""
    for entry in node["e"]:
        if (
            not isinstance(entry, dict)
            or set(entry) != {"p", "k", "v", "t"}
            or not isinstance(entry["p"], int)
            or not 0 <= entry["p"] <= len(prev)
            or not isinstance(entry["k"], bytes)
            or not isinstance(entry["v"], Link)
            or not (entry["t"] is None or isinstance(entry["t"], Link))
        ):
            raise bad()
        key = prev[: entry["p"]] + entry["k"]
        if entries and key <= prev:
            raise _fail(
                uri, "REPO_MST_PROOF", f"MST node {cid_to_str(cid)}: keys out of order"
            )
        entries.append((key, entry["v"], entry["t"]))
        prev = key
    return entries, node["l"]


def _node(car: Car, cid: bytes, uri: str) -> tuple[MstEntries, Link | None]:
    return mst_node(_block(car, cid, uri, "REPO_MST_PROOF", "MST node"), cid, uri=uri)


def mst_find(
    node_at: Callable[[bytes], tuple[MstEntries, Link | None]],
    data: bytes,
    key: bytes,
    *,
    uri: str = "",
    max_depth: int = MAX_MST_DEPTH,
) -> Link | None:
    """Walk the MST whose root node is ``data`` (binary CID) to ``key``.

    ``node_at(cid)`` gives the checked node of a binary CID (:func:`mst_node` of
    its decoded block; it may raise anything, e.g. for a block it does not have:
    that propagates). Returns the value link stored under ``key``, or ``None`` when
    the tree proves ``key`` absent. Raises :class:`RecordVerificationError`
    (``REPO_MST_PROOF``): an empty node where none may be, keys of mixed layers or
    not below the parent's layer, a subtree under layer 0, a path deeper than
    ``max_depth`` nodes ("Repository" spec § MST Structure)."""
    cid = data
    above: int | None = None
    for depth in range(max_depth):
        entries, left = node_at(cid)
        if not entries:
            # An empty node is the empty repository (the root, nothing below) or an
            # intermediate layer with only a left subtree (Repository spec § MST).
            if depth == 0 and left is None:
                return None
            if depth == 0 or left is None or above is None or above <= 1:
                raise _fail(uri, "REPO_MST_PROOF", f"empty MST node {cid_to_str(cid)}")
            cid, above = left.raw, above - 1
            continue
        layers = {mst_layer(k) for k, _, _ in entries}
        layer = layers.pop()
        if layers or (above is not None and layer >= above):
            raise _fail(
                uri,
                "REPO_MST_PROOF",
                f"MST node {cid_to_str(cid)} holds keys of the wrong layer",
            )
        subtree = left
        for k, value, right in entries:
            if k == key:
                return value
            if key < k:
                break
            subtree = right
        if subtree is None:
            return None
        if layer == 0:
            raise _fail(uri, "REPO_MST_PROOF", "MST node on layer 0 has a subtree")
        cid, above = subtree.raw, layer
    raise _fail(uri, "REPO_MST_PROOF", f"MST path is deeper than {max_depth} nodes")


def _find(car: Car, data: Link, key: bytes, uri: str, max_depth: int) -> Link | None:
    return mst_find(
        lambda cid: _node(car, cid, uri), data.raw, key, uri=uri, max_depth=max_depth
    )


def verify_record_proof(
    car_bytes: bytes,
    *,
    did: str,
    collection: str,
    rkey: str,
    key: str,
    uri: str | None = None,
    max_bytes: int = MAX_CAR_BYTES,
    max_blocks: int = MAX_BLOCKS,
    max_depth: int = MAX_MST_DEPTH,
    max_record_depth: int = MAX_DEPTH,
) -> VerifiedRecord | None:
    """Verify a ``com.atproto.sync.getRecord`` CAR for ``at://{did}/{collection}/
    {rkey}`` against ``key`` (the repository's ``did:key``, :func:`signing_key`).

    Returns the record, or ``None`` when the signed tree proves it absent. Raises
    :class:`RecordVerificationError` with the rule of the first failed check (see
    the module docstring) naming the AT-URI. Limits as in the module docstring."""
    uri = uri or f"at://{did}/{collection}/{rkey}"
    if not isinstance(collection, str) or not is_nsid(collection):
        raise _fail(
            uri, "REPO_KEY_INVALID", f"collection {collection!r:.80} is not an NSID"
        )
    if not isinstance(rkey, str) or not is_record_key(rkey):
        raise _fail(uri, "REPO_KEY_INVALID", f"rkey {rkey!r:.80} is not a record key")
    car = parse_car(car_bytes, uri=uri, max_bytes=max_bytes, max_blocks=max_blocks)
    commit = verify_commit(car, did, key, uri=uri)
    found = _find(car, commit["data"], f"{collection}/{rkey}".encode(), uri, max_depth)
    if found is None:
        return None
    block = car.blocks.get(found.raw)
    if block is None:
        raise _fail(
            uri,
            "REPO_MST_PROOF",
            f"the proof lacks the record block {cid_to_str(found.raw)}",
        )
    try:
        value = decode_dag_cbor(block, max_depth=max_record_depth)
    except DataModelError as exc:
        raise _fail(uri, "REPO_RECORD_INVALID", f"record block: {exc}") from None
    if not isinstance(value, dict):
        raise _fail(uri, "REPO_RECORD_INVALID", "record is not a map")
    if dag_cbor(value) != block:
        raise _fail(
            uri, "REPO_RECORD_INVALID", "record block is not canonical DAG-CBOR"
        )
    return VerifiedRecord(
        cid=cid_to_str(found.raw),
        value=to_json(value),
        commit=cid_to_str(car.root),
        rev=commit["rev"],
    )


# -- whole repositories (com.atproto.sync.getRepo) ------------------------------------

MAX_REPO_BYTES = 64 * 1024 * 1024
"""Default cap on a whole-repository CAR, bytes (64 MiB)."""
MAX_REPO_BLOCKS = 1_000_000
"""Default cap on the blocks of a whole-repository CAR."""
MAX_REPO_RECORDS = 200_000
"""Default cap on the records :func:`verify_repo` keeps (those under its prefix)."""
MAX_REPO_ITEMS = 4_000_000
"""Default cap on the decoded CBOR items (every value and map key counts one) of
the records :func:`verify_repo` keeps, together. An item of one byte on the wire
is a Python object of 30 to 130 bytes decoded: the cap keeps a repository's
records under ~500 MiB of memory whatever their bytes hold."""
MAX_MST_NODE_BYTES = 1024 * 1024
"""Cap on one MST node block, bytes (a real node holds a few dozen entries of at
most a few hundred bytes each; this bounds the memory of one decoded node)."""


class RepoVerificationError(RecordVerificationError):
    """A whole-repository CAR that does not verify (:func:`verify_repo`): the
    ``rule`` of the failed check, ``uri`` (``at://{did}`` or the record's AT-URI),
    and where known the MST ``key`` (``{collection}/{rkey}``, clipped to 300
    characters) and the block ``cid`` (base32 string) concerned."""

    def __init__(
        self,
        uri: str,
        reason: str,
        *,
        rule: str,
        key: str | None = None,
        cid: str | None = None,
    ) -> None:
        self.key = key
        self.cid = cid
        super().__init__(uri, reason, rule=rule)


@dataclass(frozen=True)
class RepoRecord:
    """One record of a verified repository: ``collection`` (NSID), ``rkey``,
    ``cid`` (base32 CID string of its block) and ``value`` (JSON data model:
    ``{"$link": …}``, ``{"$bytes": …}``)."""

    collection: str
    rkey: str
    cid: str
    value: dict[str, Any]


@dataclass(frozen=True)
class VerifiedRepo:
    """A repository read from a signed whole-repository CAR: ``did``, ``rev`` (the
    commit's revision, a TID), ``commit`` (CID string of the signed commit),
    ``records`` (those under the prefix asked for, in MST key order), ``blocks``
    (blocks in the CAR) and ``nodes`` (MST nodes walked)."""

    did: str
    rev: str
    commit: str
    records: tuple[RepoRecord, ...]
    blocks: int
    nodes: int


def _load_cbrrr() -> Any:
    try:
        return importlib.import_module("cbrrr._cbrrr").decode_dag_cbor
    except ImportError:  # without the firehose extra: the pure-Python decoder
        return None


_cbrrr_decode: Any = _load_cbrrr()
"""cbrrr's C decoder ``(buffer, cid_ctor, atjson_mode) -> (value, bytes used)``
(strict DAG-CBOR: shortest heads, sorted unique keys, tag 42 only, no floats in
``atjson_mode``), or ``None``."""


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string above every string starting with ``prefix``
    (``None``: no bound, for an empty prefix or one of ``0xff`` bytes only)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes((trimmed[-1] + 1,))


def mst_walk(
    node_at: Callable[[bytes], tuple[MstEntries, Link | None]],
    data: bytes,
    *,
    prefix: bytes = b"",
    uri: str = "",
    max_depth: int = MAX_MST_DEPTH,
    max_nodes: int = MAX_REPO_BLOCKS,
) -> Iterator[tuple[bytes, Link]]:
    """Every ``(key, value link)`` of the MST whose root node is ``data`` (binary
    CID) with a key starting with ``prefix``, in increasing key order.

    ``node_at(cid)`` gives a checked node as for :func:`mst_find`. Only subtrees
    whose key range can hold a key under ``prefix`` are read. The walk checks,
    besides each node's own order (:func:`mst_node`), that every key lies strictly
    between the keys around the link that led to its node (so that no key is out
    of place or seen twice, a subtree linked twice included), the layer rules of
    :func:`mst_find` ("Repository" spec § MST Structure), at most ``max_depth``
    nodes from the root to any node, and at most ``max_nodes`` nodes read (each
    node of a tree is read once: linear work). Raises
    :class:`RepoVerificationError` (``REPO_MST_PROOF``, naming the node's CID)."""
    low = prefix
    high = _prefix_end(prefix)

    def fail(cid: bytes, why: str) -> RepoVerificationError:
        link = cid_to_str(cid)
        return RepoVerificationError(
            uri, f"MST node {link}: {why}", rule="REPO_MST_PROOF", cid=link
        )

    def wanted(lo: bytes | None, hi: bytes | None) -> bool:
        """Whether the open key range ``(lo, hi)`` meets ``[low, high)``."""
        return (hi is None or hi > low) and (lo is None or high is None or lo < high)

    # A stack of work: ("n", cid, layer above, lo, hi, depth) visits a node whose
    # keys must lie in (lo, hi); ("k", key, link) yields an entry. LIFO, pushed in
    # reverse so that entries come out in key order.
    Task = tuple[Any, ...]
    stack: list[Task] = [("n", data, None, None, None, 0)]
    nodes = 0
    while stack:
        task = stack.pop()
        if task[0] == "k":
            yield task[1], task[2]
            continue
        _, cid, above, lo, hi, depth = task
        if depth >= max_depth:
            raise fail(cid, f"the MST is deeper than {max_depth} nodes")
        nodes += 1
        if nodes > max_nodes:
            raise fail(cid, f"the MST has more than {max_nodes} nodes")
        entries, left = node_at(cid)
        if not entries:
            # the empty repository, or an intermediate layer with only a left
            # subtree (as mst_find reads it)
            if depth == 0 and left is None:
                return
            if depth == 0 or left is None or above is None or above <= 1:
                raise fail(cid, "empty MST node")
            stack.append(("n", left.raw, above - 1, lo, hi, depth + 1))
            continue
        layers = {mst_layer(k) for k, _, _ in entries}
        layer = layers.pop()
        if layers or (above is not None and layer >= above):
            raise fail(cid, "holds keys of the wrong layer")
        if (lo is not None and entries[0][0] <= lo) or (
            hi is not None and entries[-1][0] >= hi
        ):
            raise fail(cid, "holds a key outside the range its parent gives it")
        if layer == 0 and (left is not None or any(t for _, _, t in entries)):
            raise fail(cid, "on layer 0 has a subtree")
        work: list[Task] = []
        bound = lo
        subtree = left
        for key, value, right in entries:
            if subtree is not None and wanted(bound, key):
                work.append(("n", subtree.raw, layer, bound, key, depth + 1))
            if key.startswith(prefix):
                work.append(("k", key, value))
            bound, subtree = key, right
        if subtree is not None and wanted(bound, hi):
            work.append(("n", subtree.raw, layer, bound, hi, depth + 1))
        work.reverse()
        stack.extend(work)


def _measure(value: Any, max_depth: int) -> int:
    """CBOR items of a decoded value (each value and map key one), level by level
    without recursion; ``-1`` when it nests deeper than ``max_depth`` maps/arrays
    (the top-level container is depth 1)."""
    if type(value) is not dict and type(value) is not list:
        return 1
    items = 1
    level: list[Any] = [value]
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            return -1
        below: list[Any] = []
        for item in level:
            if type(item) is dict:
                items += len(item)
                children = item.values()
            else:
                children = item
            for child in children:
                items += 1
                if type(child) is dict or type(child) is list:
                    below.append(child)
        level = below
    return items


def _reserved_keys(value: Any) -> bool:
    """Whether a decoded value holds a map with a ``$link`` or ``$bytes`` key (not
    representable in the JSON data model; cbrrr's ``atjson_mode`` refuses them)."""
    level = [value]
    while level:
        below: list[Any] = []
        for item in level:
            if type(item) is dict:
                if "$link" in item or "$bytes" in item:
                    return True
                below.extend(item.values())
            elif type(item) is list:
                below.extend(item)
        level = [v for v in below if type(v) is dict or type(v) is list]
    return False


def _decode_node(block: bytes) -> Any:
    if _cbrrr_decode is not None:
        try:
            value, used = _cbrrr_decode(block, Link, False)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is one finding
            raise DataModelError(str(exc)[:200]) from None
        if used != len(block):
            raise DataModelError("trailing bytes after the value")
        return value
    return decode_dag_cbor(block, max_depth=4)


def _decode_record(block: bytes, max_depth: int) -> tuple[Any, int]:
    """``(JSON data-model value, items)`` of a record block. Raises
    :class:`DataModelError`."""
    if _cbrrr_decode is not None:
        try:
            value, used = _cbrrr_decode(block, None, True)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is one finding
            raise DataModelError(str(exc)[:200]) from None
        if used != len(block):
            raise DataModelError("trailing bytes after the value")
    else:
        raw = decode_dag_cbor(block, max_depth=max_depth)
        if _reserved_keys(raw):
            raise DataModelError("a map has a reserved $link or $bytes key")
        if dag_cbor(raw) != block:
            raise DataModelError("not the canonical DAG-CBOR encoding")
        value = to_json(raw)
    items = _measure(value, max_depth)
    if items < 0:
        raise DataModelError(
            f"nested deeper than {max_depth} arrays/maps", rule="DATA_MODEL_TOO_DEEP"
        )
    return value, items


_SPAN_END = (1 << 40) - 1


class _LazyCar:
    """A CAR's sections by binary CID (offsets into the bytes), each block hashed
    when first used: a whole-repository CAR holds every collection, and only the
    blocks read are checked (and a forged one is then named with its MST key)."""

    __slots__ = ("checked", "data", "root", "spans", "uri")

    def __init__(self, data: bytes, uri: str, max_bytes: int, max_blocks: int) -> None:
        self.uri = uri
        self.data = memoryview(data)
        self.checked: set[bytes] = set()
        if len(data) > max_bytes:
            raise _fail(
                uri, "REPO_CAR_INVALID", f"CAR is over {max_bytes} bytes ({len(data)})"
            )
        size, pos = _varint(data, 0, uri)
        if size > len(data) - pos:
            raise _fail(uri, "REPO_CAR_INVALID", "CAR header runs past the end")
        try:
            header = decode_dag_cbor(data[pos : pos + size], max_depth=2)
        except DataModelError as exc:
            raise _fail(uri, "REPO_CAR_INVALID", f"CAR header: {exc}") from None
        roots = header.get("roots") if isinstance(header, dict) else None
        if (
            not isinstance(header, dict)
            or set(header) != {"roots", "version"}
            or header["version"] != 1
            or not isinstance(roots, list)
            or len(roots) != 1
            or not isinstance(roots[0], Link)
        ):
            raise _fail(
                uri,
                "REPO_CAR_INVALID",
                "CAR header is not {version: 1, roots: [one CID]}",
            )
        self.root: bytes = roots[0].raw
        pos += size
        spans: dict[bytes, int] = {}
        count = 0
        end = len(data)
        while pos < end:
            count += 1
            if count > max_blocks:
                raise _fail(
                    uri, "REPO_CAR_INVALID", f"CAR has over {max_blocks} blocks"
                )
            start = pos
            size, pos = _varint(data, pos, uri)
            if size < 36 or size > end - pos:
                raise _fail(
                    uri, "REPO_CAR_INVALID", f"CAR section at byte {start} is truncated"
                )
            if not data.startswith(_SHA256_CID_PREFIX, pos):
                raise _fail(
                    uri,
                    "REPO_CAR_INVALID",
                    f"block at byte {start}: CID is not CIDv1 dag-cbor sha2-256",
                )
            # the first section of a CID wins; a different duplicate is never read.
            # One int per block (start << 40 | end): a million blocks stay small.
            spans.setdefault(data[pos : pos + 36], (pos + 36) << 40 | (pos + size))
            pos += size
        if self.root not in spans:
            raise _fail(uri, "REPO_CAR_INVALID", "CAR lacks its root (commit) block")
        self.spans = spans

    def get(self, cid: bytes, *, key: str | None = None) -> bytes | None:
        """The block of ``cid`` (hash-checked), or ``None`` when the CAR lacks it.
        Raises :class:`RepoVerificationError` (``REPO_BLOCK_CID``) naming the
        CID, and ``key`` when given."""
        span = self.spans.get(cid)
        if span is None:
            return None
        start = span >> 40
        block = bytes(self.data[start : span & _SPAN_END])
        if cid not in self.checked:
            if hashlib.sha256(block).digest() != cid[4:]:
                link = cid_to_str(cid)
                raise RepoVerificationError(
                    self.uri if key is None else f"{self.uri}/{key}",
                    f"block {link} (at byte {start - 36}) does not hash to its CID",
                    rule="REPO_BLOCK_CID",
                    key=key,
                    cid=link,
                )
            self.checked.add(cid)
        return block


def verify_repo(
    car_bytes: bytes,
    *,
    did: str,
    key: str,
    prefix: str = "",
    max_bytes: int = MAX_REPO_BYTES,
    max_blocks: int = MAX_REPO_BLOCKS,
    max_depth: int = MAX_MST_DEPTH,
    max_records: int = MAX_REPO_RECORDS,
    max_items: int = MAX_REPO_ITEMS,
    max_record_bytes: int = MAX_RECORD_BYTES,
    max_record_depth: int = MAX_DEPTH,
) -> VerifiedRepo:
    """Verify a whole-repository CAR (``com.atproto.sync.getRepo``) of ``did``
    against ``key`` (its ``did:key``, :func:`signing_key`) and read the records
    whose MST key (``{collection}/{rkey}``) starts with ``prefix`` (``""``: all).

    Checks, in order: the CAR framing (as :func:`parse_car`: at most
    ``max_bytes`` bytes and ``max_blocks`` blocks, one root, CIDv1 dag-cbor
    sha2-256 CIDs), the hash of each block when it is first read (the commit, the
    MST nodes walked and the records kept: a block never read is never needed,
    and a forged one that is read is named with its MST key); the root is a v3 commit
    of ``did`` signed by ``key`` (:func:`verify_commit`); the MST from the
    commit's ``data`` (:func:`mst_walk`: node shapes, key order and ranges,
    layers, at most ``max_depth`` nodes deep, nodes of at most
    :data:`MAX_MST_NODE_BYTES`); each key kept is ``{NSID}/{record key}``; each
    record block is present, at most ``max_record_bytes`` bytes (default
    :data:`~atdata_runtime.net.fetch.MAX_RECORD_BYTES`: the memory of one decoded
    record) and one DAG-CBOR map in the JSON data model (canonical, nesting at
    most ``max_record_depth``); at most ``max_records`` records and ``max_items``
    CBOR items kept. Work is linear in the CAR's size.

    Returns a :class:`VerifiedRepo`. Raises :class:`RepoVerificationError` (or
    its base :class:`~.errors.RecordVerificationError`, for the CAR framing and
    from :func:`verify_commit`) with the rule of the first failure: see the
    module docstring."""
    base = f"at://{did}"
    car = _LazyCar(car_bytes, base, max_bytes, max_blocks)
    root = car.get(car.root)
    assert root is not None  # _LazyCar checked it is there
    commit = verify_commit(Car(car.root, {car.root: root}), did, key, uri=base)
    nodes = 0

    def node_at(cid: bytes) -> tuple[MstEntries, Link | None]:
        nonlocal nodes
        nodes += 1
        block = car.get(cid)
        link = cid_to_str(cid)
        if block is None:
            raise RepoVerificationError(
                base,
                f"the CAR lacks the MST node block {link}",
                rule="REPO_MST_PROOF",
                cid=link,
            )
        if len(block) > MAX_MST_NODE_BYTES:
            raise RepoVerificationError(
                base,
                f"MST node {link} is over {MAX_MST_NODE_BYTES} bytes",
                rule="REPO_MST_PROOF",
                cid=link,
            )
        try:
            value = _decode_node(block)
        except DataModelError as exc:
            raise RepoVerificationError(
                base, f"MST node {link}: {exc}", rule="REPO_MST_PROOF", cid=link
            ) from None
        try:
            return mst_node(value, cid, uri=base)
        except RecordVerificationError as exc:
            raise RepoVerificationError(
                base, exc.reason, rule="REPO_MST_PROOF", cid=link
            ) from None

    records: list[RepoRecord] = []
    items = 0
    walk = mst_walk(
        node_at,
        commit["data"].raw,
        prefix=prefix.encode(),
        uri=base,
        max_depth=max_depth,
        max_nodes=max_blocks,
    )
    for raw_key, link in walk:
        try:
            path = raw_key.decode("ascii")
        except UnicodeDecodeError:
            path = raw_key.decode("ascii", "replace")
            raise RepoVerificationError(
                base,
                "MST key is not ASCII",
                rule="REPO_KEY_INVALID",
                key=path[:300],
            ) from None
        collection, _, rkey = path.partition("/")
        if not is_nsid(collection) or not is_record_key(rkey):
            raise RepoVerificationError(
                base,
                f"MST key {path[:120]!r} is not {{NSID}}/{{record key}}",
                rule="REPO_KEY_INVALID",
                key=path[:300],
            )
        uri = f"{base}/{path}"
        cid = cid_to_str(link.raw)
        block = car.get(link.raw, key=path)
        if block is None:
            raise RepoVerificationError(
                uri,
                f"the CAR lacks the record block {cid}",
                rule="REPO_MST_PROOF",
                key=path,
                cid=cid,
            )
        if len(records) >= max_records:
            raise RepoVerificationError(
                base,
                f"the repository holds more than {max_records} records under "
                f"{prefix!r}",
                rule="REPO_LIMIT",
                key=path,
            )
        if len(block) > max_record_bytes:
            raise RepoVerificationError(
                uri,
                f"record block {cid} is over {max_record_bytes} bytes ({len(block)})",
                rule="REPO_LIMIT",
                key=path,
                cid=cid,
            )
        try:
            value, n = _decode_record(block, max_record_depth)
        except DataModelError as exc:
            raise RepoVerificationError(
                uri,
                f"record block {cid}: {exc}",
                rule="REPO_RECORD_INVALID",
                key=path,
                cid=cid,
            ) from None
        if not isinstance(value, dict):
            raise RepoVerificationError(
                uri,
                f"record block {cid} is not a map",
                rule="REPO_RECORD_INVALID",
                key=path,
                cid=cid,
            )
        items += n
        if items > max_items:
            raise RepoVerificationError(
                base,
                f"the records under {prefix!r} hold more than {max_items} CBOR items",
                rule="REPO_LIMIT",
                key=path,
                cid=cid,
            )
        records.append(RepoRecord(collection, rkey, cid, value))
    return VerifiedRepo(
        did=did,
        rev=commit["rev"],
        commit=cid_to_str(car.root),
        records=tuple(records),
        blocks=len(car.spans),
        nodes=nodes,
    )
