"""Schema records in ``com.atproto.repo.applyWrites`` batches on a real local PDS
(``@atproto/pds``), exactly once: what the PDS committed is read from its firehose
(``com.atproto.sync.subscribeRepos``), so a duplicate, a split batch or a stray
write cannot hide. Faults come from the fault proxy between client and PDS (lost
responses after the PDS applied the batch, resets, stalls past the timeout); a
conflicting record at a key must be reported with its AT-URI. Nothing is mocked."""

from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import groupby
from pathlib import Path
from typing import Any

import httpx
import pytest
from atdata_gen.testing.faults import FaultProxy
from atdata_gen.testing.firehose import RepoOp, repo_ops
from atdata_gen.testing.localnet import Account, LocalNetwork, free_port
from atdata_runtime.atmosphere import (
    AtmosphereClient,
    AtmosphereError,
    IdentityResolver,
    PublishConflictError,
    RetryPolicy,
)
from atdata_runtime.atmosphere.publish import publish_schemas
from atdata_runtime.atmosphere.records import SCHEMA, schema_rkey

from .conftest import CORPUS

RECORDS = CORPUS / "atdata" / "records"

_accounts = iter(range(10_000))


@pytest.fixture
def account(net: LocalNetwork) -> Account:
    return net.create_account(f"batch{next(_accounts)}-{free_port()}")


def login(
    net: LocalNetwork, account: Account, tmp_path: Path, **kw: Any
) -> AtmosphereClient:
    kw.setdefault("pds_url", net.pds_url)
    return AtmosphereClient.login(
        account.handle,
        account.password,
        session_file=tmp_path / f"{account.handle}.session",
        resolver=IdentityResolver(plc_url=net.plc_url, handle_service=net.pds_url),
        **kw,
    )


def schemas(prefix: str, n: int, **extra: Any) -> list[dict[str, Any]]:
    base = json.loads((RECORDS / "ImageSample.schema.json").read_text())
    return [dict(base, name=f"{prefix}{i}", **extra) for i in range(n)]


def commits(ops: Iterable[RepoOp]) -> list[list[RepoOp]]:
    """The firehose's operations grouped by commit, in order."""
    return [list(group) for _, group in groupby(ops, key=lambda op: op.seq)]


def paths(records: Iterable[dict[str, Any]]) -> list[str]:
    return [f"{SCHEMA}/{schema_rkey(r['name'], r['version'])}" for r in records]


def foreign_create(
    net: LocalNetwork, account: Account, rkey: str, record: dict[str, Any]
) -> None:
    """Another writer (not our client) creates ``record`` at ``rkey``."""
    session = httpx.post(
        f"{net.pds_url}/xrpc/com.atproto.server.createSession",
        json={"identifier": account.handle, "password": account.password},
    ).json()
    httpx.post(
        f"{net.pds_url}/xrpc/com.atproto.repo.createRecord",
        headers={"Authorization": f"Bearer {session['accessJwt']}"},
        json={
            "repo": account.did,
            "collection": SCHEMA,
            "rkey": rkey,
            "record": record,
            "validate": False,
        },
    ).raise_for_status()


def test_each_batch_is_one_commit_of_at_most_200(
    net: LocalNetwork, account: Account, tmp_path: Path
) -> None:
    """250 records with batch_size=500 asked: the PDS's cap of 200 writes a call
    holds, so two commits (200 + 50); a re-run writes nothing."""
    client = login(net, account, tmp_path)
    records = schemas("Cap", 250)
    pubs = publish_schemas(client, records, batch_size=500)
    assert all(p.write.created for p in pubs)
    assert [p.write.uri for p in pubs] == [
        f"at://{client.did}/{path}" for path in paths(records)
    ]
    again = publish_schemas(client, records)
    assert not any(p.write.created for p in again)
    assert [p.write.cid for p in again] == [p.write.cid for p in pubs]
    ops = repo_ops(net.pds_url, client.did)
    assert {op.action for op in ops} == {"create"}
    assert sorted(op.path for op in ops) == sorted(paths(records))
    assert [len(c) for c in commits(ops)] == [200, 50]


def test_batches_respect_the_body_limit(
    net: LocalNetwork, account: Account, tmp_path: Path
) -> None:
    """Records of ~5.7 KB under a 12,400-byte body limit: two a call; a record
    bigger than the limit on its own goes alone; one bigger than the PDS takes is
    its refusal (HTTP 413), at once."""
    client = login(net, account, tmp_path)
    records = schemas("Wide", 7, description="d" * 5000)
    items = [(schema_rkey(r["name"], r["version"]), r) for r in records]
    alone = schemas("Tiny", 1)[0]
    items.insert(3, (schema_rkey(alone["name"], alone["version"]), alone))
    results = client.create_records(SCHEMA, items, max_batch_bytes=12_400)
    assert [r.uri.rsplit("/", 1)[1] for r in results] == [k for k, _ in items]
    assert all(r.created for r in results)
    sizes = [len(c) for c in commits(repo_ops(net.pds_url, client.did))]
    assert sizes == [2, 2, 2, 2]  # Wide0+1, Wide2+Tiny0, Wide3+4, Wide5+6
    huge = client.create_records(
        SCHEMA,
        [(schema_rkey(f"Huge{i}", "1.0.0"), r) for i, r in enumerate(records[:3])],
        max_batch_bytes=1_000,
    )
    assert all(r.created for r in huge)
    sizes = [len(c) for c in commits(repo_ops(net.pds_url, client.did))]
    assert sizes == [2, 2, 2, 2, 1, 1, 1]
    # over the PDS's own limit (1,000,000 bytes a call): refused, not retried
    giant = dict(records[0], name="Giant", description="g" * 1_100_000)
    with pytest.raises(AtmosphereError) as info:
        client.create_records(SCHEMA, [("Giant:1.0.0", giant)], validate=False)
    assert info.value.rule == "XRPC_ERROR" and "HTTP 413" in str(info.value)
    assert not client.retry.stats
    assert len(commits(repo_ops(net.pds_url, client.did))) == 7


def test_lost_and_refused_batches_land_exactly_once(
    net: LocalNetwork, account: Account, tmp_path: Path
) -> None:
    """Every applyWrites call goes through faults: answers lost after the PDS
    committed (500, reset, stall past the 1 s timeout) and refusals before it did.
    Each batch is read back before its retry, so every record lands once, each
    batch as one commit, and a batch found by the read-back is reported as not
    created by us."""
    rates = {
        "500_after": 0.3,
        "reset_after": 0.2,
        "stall_after": 0.15,
        "500_before": 0.1,
        "reset_before": 0.05,
        "429": 0.05,
    }
    with FaultProxy(
        net.pds_url, rates, seed=3, stall=2.5, only=("com.atproto.repo.applyWrites",)
    ) as proxy:
        client = login(
            net,
            account,
            tmp_path,
            pds_url=proxy.url,
            timeout=1.0,
            retry=RetryPolicy(base=0.05, cap=0.5, attempts=15, deadline=120),
        )
        records = schemas("Lost", 120)
        pubs = publish_schemas(client, records, batch_size=10)
    for kind in ("500_after", "reset_after", "stall_after"):
        assert proxy.counts[kind] >= 1, proxy.counts
    assert [p.write.uri for p in pubs] == [
        f"at://{client.did}/{path}" for path in paths(records)
    ]
    flags = [p.write.created for p in pubs]
    batches = [set(flags[i : i + 10]) for i in range(0, 120, 10)]
    assert all(len(b) == 1 for b in batches), flags  # a batch lands whole
    assert sum(not p.write.created for p in pubs) >= 10  # a lost answer was seen
    stored = AtmosphereClient(
        resolver=IdentityResolver(plc_url=net.plc_url, handle_service=net.pds_url)
    ).list_records(client.did, SCHEMA)
    assert sorted(r.value["name"] for r in stored) == sorted(r["name"] for r in records)
    ops = repo_ops(net.pds_url, client.did)
    assert [op.action for op in ops] == ["create"] * 120
    assert sorted(op.path for op in ops) == sorted(paths(records))
    assert [len(c) for c in commits(ops)] == [10] * 12


def test_a_different_record_at_a_key_is_a_conflict_naming_it(
    net: LocalNetwork, account: Account, tmp_path: Path
) -> None:
    """Another writer put a different record at one of the batch's keys: the PDS
    refuses the whole commit, the read-back finds the other record, and the error
    names its AT-URI; nothing of the batch lands. The same record at a key is not a
    conflict: that key is reported as already there, the rest is written."""
    client = login(net, account, tmp_path)
    records = schemas("Clash", 5)
    theirs = dict(records[2], description="someone else's")
    foreign_create(net, account, "Clash2:1.0.0", theirs)
    items = [(schema_rkey(r["name"], r["version"]), r) for r in records]
    with pytest.raises(PublishConflictError) as info:
        client.create_records(SCHEMA, items)
    uri = f"at://{client.did}/{SCHEMA}/Clash2:1.0.0"
    assert info.value.uri == uri and uri in str(info.value)
    assert [op.path for op in repo_ops(net.pds_url, client.did)] == [
        f"{SCHEMA}/Clash2:1.0.0"
    ]

    same = schemas("Same", 4)
    foreign_create(net, account, "Same1:1.0.0", same[1])
    results = client.create_records(
        SCHEMA, [(schema_rkey(r["name"], r["version"]), r) for r in same]
    )
    assert [r.created for r in results] == [True, False, True, True]
    ops = repo_ops(net.pds_url, client.did)
    assert [op.action for op in ops] == ["create"] * 5
    assert sorted(op.path for op in ops[1:]) == sorted(paths(same))


def test_a_record_written_between_listing_and_batch_is_a_conflict(
    net: LocalNetwork, account: Account, tmp_path: Path
) -> None:
    """A different record appears at a key of the second batch after the listing
    (another writer, racing us): the first batch stands, the second is refused
    whole, and the conflict names the key's AT-URI."""
    client = login(net, account, tmp_path)
    records = schemas("Race", 8)
    seen: list[int] = []

    def intrude(i: int, _pub: object) -> None:
        seen.append(i)
        if i == 3:
            foreign_create(
                net, account, "Race5:1.0.0", dict(records[5], description="racer")
            )

    with pytest.raises(PublishConflictError) as info:
        publish_schemas(client, records, batch_size=4, progress=intrude)
    assert info.value.uri == f"at://{client.did}/{SCHEMA}/Race5:1.0.0"
    assert seen == [0, 1, 2, 3]
    ops = repo_ops(net.pds_url, client.did)
    assert [op.path for op in ops] == [
        *sorted(paths(records[:4])),
        f"{SCHEMA}/Race5:1.0.0",
    ]


def test_a_failing_record_publishes_the_ones_before_it(
    net: LocalNetwork, account: Account, tmp_path: Path
) -> None:
    """As one by one: the records checked before an invalid one are written, the
    invalid one raises, nothing after it is written."""
    client = login(net, account, tmp_path)
    records = schemas("Part", 6)
    records[4] = dict(records[4], description="x" * 6000)  # over maxLength 5000
    with pytest.raises(Exception, match="description"):
        publish_schemas(client, records)
    ops = repo_ops(net.pds_url, client.did)
    assert sorted(op.path for op in ops) == sorted(paths(records[:4]))
    assert len(commits(ops)) == 1
