"""Whole-repository CARs (``com.atproto.sync.getRepo``) read by
:func:`atdata_runtime.atmosphere.repo.verify_repo` and :func:`mst_walk`.

Repositories are built here by the Repository spec's rules with real keys
(:class:`tests.test_verified_reads.Repo`); the AppView's backfill tests read real
ones from the local PDS (``tests/appview/test_backfill.py``). Shown: every record
under a prefix comes back, in key order, with its CID and JSON value, and nothing
else; both decoders (cbrrr, and the pure-Python one without it) agree; each kind
of forgery is refused with its rule, naming the MST key and CID where one is at
fault; and the bounds hold.
"""

from __future__ import annotations

from typing import Any

import pytest
from atdata_runtime.atmosphere import repo as repo_module
from atdata_runtime.atmosphere.cid import Link, cid_to_str, dag_cbor, from_json
from atdata_runtime.atmosphere.errors import RecordVerificationError
from atdata_runtime.atmosphere.repo import (
    RepoVerificationError,
    mst_layer,
    mst_node,
    mst_walk,
    signing_key,
    verify_repo,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from .test_verified_reads import VICTIM, Key, Repo, block_cid, car

PREFIX = "science.alt.dataset."
COLLECTIONS = (
    "app.bsky.feed.post",
    "science.alt.dataset.entry",
    "science.alt.dataset.schema",
    "science.alt.datasetx.other",  # shares the prefix text but not the dot
    "zz.example.last",
)


def record(collection: str, n: int) -> dict[str, Any]:
    return {
        "$type": collection,
        "name": f"record {n}",
        "n": n,
        "blob": {"$bytes": "AAECAw"},
        "ref": {"$link": "bafyreib2rxk3rh6kzwq2bs3v3hiw6q4cfcqwfbzfgmb4xu5bynyt2a6n3a"},
        "nested": [{"a": [1, 2, {"b": None}]}, True, False, -5],
    }


def build(n: int = 60) -> Repo:
    repo = Repo(VICTIM, Key(seed=3))
    for i in range(n):
        collection = COLLECTIONS[i % len(COLLECTIONS)]
        repo.put(f"k{i:04d}", record(collection, i), collection)
    return repo


def whole(repo: Repo, commit: bytes | None = None) -> bytes:
    """The CAR ``getRepo`` would send: the commit first, then every block."""
    root = commit or repo.commit()
    return car(root, [(root, repo.blocks[root])] + list(repo.blocks.items()))


def key_of(repo: Repo) -> str:
    return signing_key(repo.did_document("https://pds.example"), repo.did)


@pytest.fixture(params=["cbrrr", "pure"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs with cbrrr's decoder and with the pure-Python one."""
    if request.param == "pure":
        monkeypatch.setattr(repo_module, "_cbrrr_decode", None)
    else:
        assert repo_module._cbrrr_decode is not None, "cbrrr must be installed"
    return str(request.param)


def refused(data: bytes, rule: str, *, key: str, **kw: Any) -> RecordVerificationError:
    kw.setdefault("prefix", PREFIX)
    with pytest.raises(RecordVerificationError) as info:
        verify_repo(data, did=VICTIM, key=key, **kw)
    assert info.value.rule == rule, str(info.value)
    assert f"[{rule}]" in str(info.value)
    return info.value


# -- the honest case ----------------------------------------------------------------


def test_every_record_under_the_prefix_in_key_order(decoder: str) -> None:
    repo = build(300)
    got = verify_repo(whole(repo), did=VICTIM, key=key_of(repo), prefix=PREFIX)
    expected = sorted(
        (path, value) for path, value in repo.records.items() if path.startswith(PREFIX)
    )
    assert [f"{r.collection}/{r.rkey}" for r in got.records] == [p for p, _ in expected]
    assert [r.value for r in got.records] == [v for _, v in expected]
    for r in got.records:
        value = repo.records[f"{r.collection}/{r.rkey}"]
        assert isinstance(value, dict)
        assert r.cid == cid_to_str(block_cid(dag_cbor(from_json(value))))
    assert {r.collection for r in got.records} == {
        "science.alt.dataset.entry",
        "science.alt.dataset.schema",
    }
    assert got.did == VICTIM and got.rev == repo.rev and got.blocks == len(repo.blocks)
    everything = verify_repo(whole(repo), did=VICTIM, key=key_of(repo))
    assert len(everything.records) == 300
    assert got.nodes < everything.nodes  # subtrees outside the prefix are not read


def test_an_empty_repository_has_no_records(decoder: str) -> None:
    repo = Repo(VICTIM, Key(seed=3))
    got = verify_repo(whole(repo), did=VICTIM, key=key_of(repo), prefix=PREFIX)
    assert got.records == () and got.nodes == 1


_KEY = st.builds(
    lambda c, r: f"{c}/{r}",
    st.sampled_from(COLLECTIONS + ("science.alt.dataset.lens", "a.b.c")),
    st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True),
)


@settings(max_examples=60)
@given(
    keys=st.sets(_KEY, max_size=80),
    prefix=st.sampled_from(["", PREFIX, "science.alt.dataset.s", "app.", "zz", "q"]),
)
def test_the_walk_is_the_sorted_filter_of_the_keys(keys: set[str], prefix: str) -> None:
    repo = Repo(VICTIM, Key(seed=3))
    for path in keys:
        collection, rkey = path.split("/")
        repo.put(rkey, {"k": path}, collection)
    data = repo.mst_root()
    nodes: dict[bytes, Any] = {}

    def node_at(cid: bytes) -> Any:
        nodes[cid] = nodes.get(cid, 0) + 1
        from atdata_runtime.atmosphere.cid import decode_dag_cbor

        return mst_node(decode_dag_cbor(repo.blocks[cid]), cid)

    walked = [k.decode() for k, _ in mst_walk(node_at, data, prefix=prefix.encode())]
    assert walked == sorted(k for k in keys if k.startswith(prefix))
    assert all(n == 1 for n in nodes.values())  # no node read twice


def test_both_decoders_give_the_same_records(monkeypatch: pytest.MonkeyPatch) -> None:
    repo = build(80)
    data, key = whole(repo), key_of(repo)
    fast = verify_repo(data, did=VICTIM, key=key, prefix=PREFIX)
    monkeypatch.setattr(repo_module, "_cbrrr_decode", None)
    slow = verify_repo(data, did=VICTIM, key=key, prefix=PREFIX)
    assert fast == slow and len(fast.records) == 32


# -- forgeries ----------------------------------------------------------------------


def test_a_flipped_byte_in_a_record_block_is_refused(decoder: str) -> None:
    repo = build()
    data = bytearray(whole(repo))
    at = data.index(b"record 7e$type")  # science.alt.dataset.schema/k0007
    data[at] ^= 0x01
    error = refused(bytes(data), "REPO_BLOCK_CID", key=key_of(repo))
    assert isinstance(error, RepoVerificationError)
    assert error.key == f"{PREFIX}schema/k0007"
    value = repo.records[f"{PREFIX}schema/k0007"]
    assert isinstance(value, dict)
    assert error.cid == cid_to_str(block_cid(dag_cbor(from_json(value))))
    assert "does not hash to its CID" in error.reason


def test_a_flipped_byte_in_a_block_never_read_is_not_needed(decoder: str) -> None:
    """Only the blocks the walk reads are hashed: a forged record of another
    collection is not among them (nor in the result)."""
    repo = build()
    data = bytearray(whole(repo))
    at = data.index(b"record 5e$type")  # app.bsky.feed.post/k0005
    data[at] ^= 0x01
    got = verify_repo(bytes(data), did=VICTIM, key=key_of(repo), prefix=PREFIX)
    assert len(got.records) == 24
    refused(bytes(data), "REPO_BLOCK_CID", key=key_of(repo), prefix="")


def test_a_flipped_byte_in_the_commit_or_a_node_is_refused(decoder: str) -> None:
    repo = build()
    commit = repo.commit()
    from atdata_runtime.atmosphere.cid import decode_dag_cbor

    root = decode_dag_cbor(repo.blocks[commit])["data"].raw
    for target in (commit, root):
        data = bytearray(whole(repo, commit))
        block = repo.blocks[target]
        at = data.index(target + block) + len(target) + len(block) // 2
        data[at] ^= 0x01
        error = refused(bytes(data), "REPO_BLOCK_CID", key=key_of(repo))
        assert isinstance(error, RepoVerificationError)
        assert error.cid == cid_to_str(target)


def test_a_commit_signed_by_another_key_is_refused(decoder: str) -> None:
    repo = build()
    other = signing_key(
        repo.did_document("https://pds.example", key=Key(seed=99)), repo.did
    )
    refused(whole(repo), "REPO_BAD_SIGNATURE", key=other)


def test_the_commit_of_another_repository_is_refused(decoder: str) -> None:
    repo = build()
    forged = repo.commit(did="did:plc:attackerattackerattacker")
    refused(whole(repo, forged), "REPO_DID_MISMATCH", key=key_of(repo))


def test_a_missing_record_block_names_its_key_and_cid(decoder: str) -> None:
    repo = build()
    commit = repo.commit()
    gone = block_cid(dag_cbor(from_json(repo.records[f"{PREFIX}schema/k0002"])))
    blocks = [(c, b) for c, b in repo.blocks.items() if c != gone]
    error = refused(car(commit, blocks), "REPO_MST_PROOF", key=key_of(repo))
    assert isinstance(error, RepoVerificationError)
    assert error.key == f"{PREFIX}schema/k0002" and error.cid == cid_to_str(gone)


def test_a_record_outside_the_prefix_may_be_missing(decoder: str) -> None:
    """Only the records kept are read (a getRepo CAR always has them all, but
    nothing outside the prefix is decoded or needed)."""
    repo = build()
    commit = repo.commit()
    gone = block_cid(dag_cbor(from_json(repo.records["app.bsky.feed.post/k0000"])))
    blocks = [(c, b) for c, b in repo.blocks.items() if c != gone]
    got = verify_repo(car(commit, blocks), did=VICTIM, key=key_of(repo), prefix=PREFIX)
    assert len(got.records) == 24


@pytest.mark.parametrize(
    ("block", "why"),
    [
        (bytes([0xA2, 0x61, 0x62, 0x01, 0x61, 0x61, 0x02]), "unsorted keys"),
        (bytes([0xA1, 0x61, 0x61, 0x18, 0x01]), "non-shortest integer"),
        (bytes([0xA1, 0x61, 0x61, 0xFB]) + b"\x3f\xf0" + bytes(6), "a float"),
        (bytes([0x82, 0x01, 0x02]), "an array, not a map"),
        (bytes([0xA0, 0x00]), "trailing bytes"),
        (dag_cbor({"x": {"$link": "bafy"}}), "a reserved $link key"),
        (bytes([0xBF, 0xFF]), "an indefinite-length map"),
    ],
)
def test_records_outside_the_data_model_are_refused(
    decoder: str, block: bytes, why: str
) -> None:
    repo = build(10)
    cid = repo.put("bad", block, f"{PREFIX}entry")
    error = refused(whole(repo), "REPO_RECORD_INVALID", key=key_of(repo))
    assert isinstance(error, RepoVerificationError), why
    assert (error.key, error.cid) == (f"{PREFIX}entry/bad", cid), why
    assert error.uri == f"at://{VICTIM}/{PREFIX}entry/bad"


def test_nesting_past_the_record_depth_is_refused(decoder: str) -> None:
    repo = build(5)
    deep: Any = 1
    for _ in range(20):
        deep = [deep]
    repo.put("deep", {"d": deep}, f"{PREFIX}entry")
    data, key = whole(repo), key_of(repo)
    assert verify_repo(data, did=VICTIM, key=key, prefix=PREFIX, max_record_depth=21)
    refused(data, "REPO_RECORD_INVALID", key=key, max_record_depth=20)


def test_keys_that_are_not_collection_and_record_key_are_refused(decoder: str) -> None:
    repo = build(5)
    repo.put("a/b", {"x": 1}, f"{PREFIX}entry")  # a key with two slashes
    error = refused(whole(repo), "REPO_KEY_INVALID", key=key_of(repo))
    assert isinstance(error, RepoVerificationError)
    assert error.key == f"{PREFIX}entry/a/b"


def _layered_keys(layer: int, count: int, start: str = "") -> list[bytes]:
    """``count`` keys ``{PREFIX}entry/…`` on ``layer``, sorted."""
    out: list[bytes] = []
    n = 0
    while len(out) < count:
        key = f"{PREFIX}entry/{start}{n:05d}".encode()
        if mst_layer(key) == layer:
            out.append(key)
        n += 1
    return sorted(out)


def _node(
    repo: Repo,
    entries: list[tuple[bytes, bytes, bytes | None]],
    left: bytes | None = None,
) -> bytes:
    """An MST node block (prefix-compressed as the spec says) added to ``repo``."""
    out = []
    prev = b""
    for key, value, right in entries:
        p = 0
        while p < min(len(prev), len(key)) and prev[p] == key[p]:
            p += 1
        out.append(
            {
                "p": p,
                "k": key[p:],
                "v": Link(value),
                "t": None if right is None else Link(right),
            }
        )
        prev = key
    return repo.add(dag_cbor({"l": None if left is None else Link(left), "e": out}))


def _signed(repo: Repo, root: bytes) -> bytes:
    return whole(repo, repo.commit(data=root))


def test_a_key_out_of_its_subtree_range_is_refused(decoder: str) -> None:
    repo = Repo(VICTIM, Key(seed=3))
    value = repo.add(dag_cbor({"x": 1}))
    (top,) = _layered_keys(1, 1)
    low = [k for k in _layered_keys(0, 40) if k > top][:1]  # above top: misplaced
    child = _node(repo, [(low[0], value, None)])
    root = _node(repo, [(top, value, None)], left=child)
    error = refused(_signed(repo, root), "REPO_MST_PROOF", key=key_of(repo))
    assert "outside the range" in error.reason


def test_a_subtree_linked_twice_is_refused(decoder: str) -> None:
    """A DAG that reuses a subtree would list its keys twice (and could make the
    walk exponential): the range check refuses the second visit."""
    repo = Repo(VICTIM, Key(seed=3))
    value = repo.add(dag_cbor({"x": 1}))
    tops = _layered_keys(1, 3)
    lows = [k for k in _layered_keys(0, 200) if tops[0] < k < tops[1]][:1]
    child = _node(repo, [(lows[0], value, None)])
    root = _node(
        repo, [(tops[0], value, child), (tops[1], value, child), (tops[2], value, None)]
    )
    refused(_signed(repo, root), "REPO_MST_PROOF", key=key_of(repo))


def test_keys_of_the_wrong_layer_are_refused(decoder: str) -> None:
    repo = Repo(VICTIM, Key(seed=3))
    value = repo.add(dag_cbor({"x": 1}))
    mixed = sorted(_layered_keys(0, 1) + _layered_keys(1, 1, "z"))
    root = _node(repo, [(k, value, None) for k in mixed])
    error = refused(_signed(repo, root), "REPO_MST_PROOF", key=key_of(repo))
    assert "wrong layer" in error.reason


def test_a_missing_mst_node_is_refused(decoder: str) -> None:
    repo = build(40)
    commit = repo.commit()
    from atdata_runtime.atmosphere.cid import decode_dag_cbor

    data = decode_dag_cbor(repo.blocks[commit])["data"].raw
    blocks = [(c, b) for c, b in repo.blocks.items() if c != data]
    error = refused(car(commit, blocks), "REPO_MST_PROOF", key=key_of(repo))
    assert isinstance(error, RepoVerificationError) and error.cid == cid_to_str(data)


def test_an_mst_node_that_is_not_dag_cbor_is_refused(decoder: str) -> None:
    repo = Repo(VICTIM, Key(seed=3))
    # {"l": null, "e": []} with its keys out of canonical order ("e" < "l")
    root = repo.add(bytes([0xA2, 0x61, 0x6C, 0xF6, 0x61, 0x65, 0x80]))
    error = refused(_signed(repo, root), "REPO_MST_PROOF", key=key_of(repo))
    assert isinstance(error, RepoVerificationError) and error.cid == cid_to_str(root)


# -- bounds -------------------------------------------------------------------------


def test_the_byte_and_block_caps_hold(decoder: str) -> None:
    repo = build(30)
    data, key = whole(repo), key_of(repo)
    refused(data, "REPO_CAR_INVALID", key=key, max_bytes=len(data) - 1)
    refused(data, "REPO_CAR_INVALID", key=key, max_blocks=len(repo.blocks) - 1)
    assert verify_repo(data, did=VICTIM, key=key, max_bytes=len(data))


def test_the_record_and_item_caps_hold(decoder: str) -> None:
    repo = build(30)
    data, key = whole(repo), key_of(repo)
    kept = verify_repo(data, did=VICTIM, key=key, prefix=PREFIX)
    n = len(kept.records)
    assert verify_repo(data, did=VICTIM, key=key, prefix=PREFIX, max_records=n)
    refused(data, "REPO_LIMIT", key=key, max_records=n - 1)
    refused(data, "REPO_LIMIT", key=key, max_items=50)
    biggest = max(len(dag_cbor(from_json(r.value))) for r in kept.records)
    assert verify_repo(data, did=VICTIM, key=key, max_record_bytes=biggest)
    error = refused(data, "REPO_LIMIT", key=key, max_record_bytes=biggest - 1)
    assert isinstance(error, RepoVerificationError) and error.key and error.cid


def test_the_mst_depth_cap_holds(decoder: str) -> None:
    repo = build(300)
    data, key = whole(repo), key_of(repo)
    refused(data, "REPO_MST_PROOF", key=key, max_depth=1)


def test_work_is_linear_in_the_nodes(decoder: str) -> None:
    """A full walk reads each node of the tree exactly once."""
    repo = build(300)
    data = whole(repo)
    got = verify_repo(data, did=VICTIM, key=key_of(repo))
    # the blocks that are MST nodes: two-entry maps whose first key is "e"
    nodes = [b for b in repo.blocks.values() if b[:3] == b"\xa2\x61\x65"]
    assert got.nodes == len(nodes) > 20
