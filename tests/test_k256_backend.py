"""The two secp256k1 signature backends of ``atmosphere.repo.verify_signature``
agree: libsecp256k1 (``coincurve``, the fast path) and ``atproto_crypto`` (on
``cryptography``), on valid, high-S, wrong-key, truncated, garbled and
out-of-range (``r``/``s`` = 0 or >= n) signatures (atproto "Cryptography" spec
§ ECDSA Signature Malleability: low-S only). Keys are real curve keys made with
``cryptography``; nothing is mocked except, in one test, the slow path replaced by
one that fails so the fast path is seen to be used."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from atdata_runtime.atmosphere import repo
from atdata_runtime.atmosphere.cid import Link, cid_to_str, dag_cbor
from atdata_runtime.atmosphere.errors import RecordVerificationError
from atproto_crypto.consts import (  # type: ignore[import-untyped]
    P256_JWT_ALG,
    SECP256K1_JWT_ALG,
)
from atproto_crypto.did import format_did_key  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("coincurve")

N = repo._K256_ORDER
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _key(secret: int, curve: ec.EllipticCurve | None = None) -> tuple[Any, str]:
    curve = curve or ec.SECP256K1()
    private = ec.derive_private_key(secret, curve)
    point = private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    alg = SECP256K1_JWT_ALG if isinstance(curve, ec.SECP256K1) else P256_JWT_ALG
    return private, format_did_key(alg, point)


def _sign(private: Any, data: bytes, order: int = N) -> tuple[int, int]:
    r, s = decode_dss_signature(private.sign(data, ec.ECDSA(hashes.SHA256())))
    return r, min(s, order - s)  # low-S, as atproto signers must


def _compact(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _both(did_key: str, data: bytes, sig: bytes) -> tuple[bool | None, bool]:
    return (
        repo._verify_k256_coincurve(did_key, data, sig),
        repo._verify_atproto_crypto(did_key, data, sig),
    )


secrets = st.integers(min_value=1, max_value=N - 1)
MUTATIONS = (
    "none",
    "high_s",
    "wrong_key",
    "other_message",
    "truncated",
    "extended",
    "garbled",
    "r_zero",
    "s_zero",
    "r_n",
    "s_n",
    "r_over_n",
    "s_over_n",
    "s_half_plus_one",
    "all_ones",
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    secret=secrets,
    other=secrets,
    data=st.binary(max_size=300),
    mutation=st.sampled_from(MUTATIONS),
    where=st.integers(min_value=0, max_value=63),
    flip=st.integers(min_value=1, max_value=255),
)
def test_backends_agree(
    secret: int, other: int, data: bytes, mutation: str, where: int, flip: int
) -> None:
    private, did_key = _key(secret)
    r, s = _sign(private, data)
    sig = _compact(r, s)
    key, message = did_key, data
    if mutation == "high_s":
        sig = _compact(r, N - s)
    elif mutation == "wrong_key":
        key = _key(other)[1]
    elif mutation == "other_message":
        message = data + b"\0"
    elif mutation == "truncated":
        sig = sig[:where]
    elif mutation == "extended":
        sig = sig + bytes(where % 3 + 1)
    elif mutation == "garbled":
        sig = sig[:where] + bytes((sig[where] ^ flip,)) + sig[where + 1 :]
    elif mutation == "r_zero":
        sig = _compact(0, s)
    elif mutation == "s_zero":
        sig = _compact(r, 0)
    elif mutation == "r_n":
        sig = _compact(N, s)
    elif mutation == "s_n":
        sig = _compact(r, N)
    elif mutation == "r_over_n":
        sig = _compact(N + (r % (2**256 - N)), s)
    elif mutation == "s_over_n":
        sig = _compact(r, N + (s % (2**256 - N)))
    elif mutation == "s_half_plus_one":
        sig = _compact(r, N // 2 + 1)
    elif mutation == "all_ones":
        sig = b"\xff" * 64
    fast, slow = _both(key, message, sig)
    assert fast == slow, (mutation, sig.hex())
    assert repo.verify_signature(key, message, sig) is slow
    expected = mutation == "none" or (mutation == "wrong_key" and other == secret)
    if mutation == "garbled" and sig == _compact(r, s):  # pragma: no cover
        expected = True
    assert slow is expected, (mutation, sig.hex())


@settings(max_examples=100, deadline=None)
@given(secret=secrets, data=st.binary(max_size=64))
def test_high_s_twin_of_a_valid_signature_is_refused_by_both(
    secret: int, data: bytes
) -> None:
    """(r, s) valid means (r, n - s) is the same signature made malleable: ECDSA
    accepts it, atproto refuses it, and so do both backends."""
    private, did_key = _key(secret)
    r, s = _sign(private, data)
    assert _both(did_key, data, _compact(r, s)) == (True, True)
    assert _both(did_key, data, _compact(r, N - s)) == (False, False)


@settings(max_examples=200, deadline=None)
@given(
    secret=secrets, data=st.binary(max_size=64), sig=st.binary(min_size=64, max_size=64)
)
def test_random_signatures_are_refused_by_both(
    secret: int, data: bytes, sig: bytes
) -> None:
    _, did_key = _key(secret)
    assert _both(did_key, data, sig) == (False, False)


def test_the_fast_path_is_used_when_coincurve_is_present(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    private, did_key = _key(7)
    r, s = _sign(private, b"commit")

    def slow(*_: object) -> bool:
        raise AssertionError("the cryptography path was taken for a k256 key")

    assert repo._coincurve is not None
    monkeypatch.setattr(repo, "_verify_atproto_crypto", slow)
    assert repo.verify_signature(did_key, b"commit", _compact(r, s)) is True
    assert repo.verify_signature(did_key, b"commit", _compact(r, N - s)) is False
    assert repo.verify_signature(did_key, b"commit", _compact(r, s)[:63]) is False
    assert repo._k256_key.cache_info().currsize >= 1


def test_without_coincurve_k256_keys_take_the_cryptography_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    private, did_key = _key(8)
    r, s = _sign(private, b"commit")

    def fast(*_: object) -> bool:
        raise AssertionError("the coincurve path was taken without coincurve")

    monkeypatch.setattr(repo, "_coincurve", None)
    monkeypatch.setattr(repo, "_verify_k256_coincurve", fast)
    assert repo.verify_signature(did_key, b"commit", _compact(r, s)) is True
    assert repo.verify_signature(did_key, b"commit", _compact(r, N - s)) is False


def test_p256_keys_keep_the_cryptography_path(monkeypatch: pytest.MonkeyPatch) -> None:
    private, did_key = _key(9, ec.SECP256R1())
    r, s = _sign(private, b"commit", P256_N)

    def fast(*_: object) -> bool:
        raise AssertionError("the coincurve path was taken for a P-256 key")

    monkeypatch.setattr(repo, "_verify_k256_coincurve", fast)
    assert repo.verify_signature(did_key, b"commit", _compact(r, s)) is True
    assert repo.verify_signature(did_key, b"commit", _compact(r, P256_N - s)) is False


@pytest.mark.parametrize(
    "did_key",
    [
        "did:key:zQ3s",
        "did:key:zQ3sNOTBASE58000",
        "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme" + "x",
        "did:key:zDnae",
        "",
    ],
)
def test_malformed_keys_verify_nothing_in_both(did_key: str) -> None:
    sig = _compact(1, 1)
    assert repo.verify_signature(did_key, b"x", sig) is False
    assert repo._verify_atproto_crypto(did_key, b"x", sig) is False
    assert repo._verify_k256_coincurve(did_key, b"x", sig) in (None, False)


def test_parsed_keys_are_cached_and_bounded() -> None:
    repo._k256_key.cache_clear()
    for secret in range(1, 6):
        _, did_key = _key(secret)
        repo._k256_key(did_key)
        repo._k256_key(did_key)
    info = repo._k256_key.cache_info()
    assert (info.hits, info.misses, info.maxsize) == (5, 5, repo.KEY_CACHE_SIZE)


def test_verify_commit_on_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real v3 commit block, signed here, through ``verify_commit``: accepted
    with its low-S signature, REPO_BAD_SIGNATURE with the high-S twin, and the
    cryptography path never taken."""
    private, did_key = _key(4242)
    did = "did:plc:abcdefghijklmnopqrstuvwx"
    data = Link(bytes.fromhex("01711220") + hashlib.sha256(b"mst").digest())
    unsigned = {
        "did": did,
        "version": 3,
        "data": data,
        "rev": "3l2uygzaf5b2a",
        "prev": None,
    }

    def car(sig: bytes) -> repo.Car:
        block = dag_cbor({**unsigned, "sig": sig})
        cid = bytes.fromhex("01711220") + hashlib.sha256(block).digest()
        return repo.Car(root=cid, blocks={cid: block})

    def slow(*_: object) -> bool:
        raise AssertionError("the cryptography path was taken for a k256 key")

    monkeypatch.setattr(repo, "_verify_atproto_crypto", slow)
    r, s = _sign(private, dag_cbor(unsigned))
    assert repo.verify_commit(car(_compact(r, s)), did, did_key)["sig"] == _compact(
        r, s
    )
    bad = car(_compact(r, N - s))
    with pytest.raises(RecordVerificationError) as info:
        repo.verify_commit(bad, did, did_key)
    assert info.value.rule == "REPO_BAD_SIGNATURE"
    assert cid_to_str(bad.root) in info.value.reason
