"""Replay a PDS's firehose (``com.atproto.sync.subscribeRepos``, from cursor 0) for
one repository: the record operations a test's writes really produced, deletes
included, which ``listRecords`` alone cannot show (a duplicate created and then
deleted leaves no trace there)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import httpx
from atproto_client import models
from atproto_firehose import FirehoseSubscribeReposClient, parse_subscribe_repos_message

__all__ = ["RepoOp", "repo_ops"]


@dataclass(frozen=True)
class RepoOp:
    """One operation of a commit: ``action`` (``create``/``update``/``delete``),
    ``path`` (``collection/rkey``), and the commit's ``seq``."""

    action: str
    path: str
    seq: int


def repo_ops(pds_url: str, did: str, *, timeout: float = 30.0) -> list[RepoOp]:
    """Every record operation of repository ``did`` on the PDS at ``pds_url``, in
    firehose order, up to the repository's latest commit
    (``com.atproto.sync.getLatestCommit``). Raises ``TimeoutError`` when the
    firehose has not reached that commit within ``timeout`` seconds."""
    latest = httpx.get(
        f"{pds_url}/xrpc/com.atproto.sync.getLatestCommit", params={"did": did}
    )
    latest.raise_for_status()
    rev = latest.json()["rev"]
    ops: list[RepoOp] = []
    reached = threading.Event()
    ws = "ws" + pds_url.removeprefix("http") + "/xrpc"
    client = FirehoseSubscribeReposClient({"cursor": 0}, base_uri=ws)

    def on_message(message: object) -> None:
        commit = parse_subscribe_repos_message(message)  # type: ignore[arg-type,unused-ignore]
        if not isinstance(commit, models.ComAtprotoSyncSubscribeRepos.Commit):
            return
        if commit.repo != did:
            return
        ops.extend(RepoOp(op.action, op.path, commit.seq) for op in commit.ops)
        if commit.rev == rev:
            reached.set()
            client.stop()

    timer = threading.Timer(timeout, client.stop)
    timer.start()
    try:
        client.start(on_message)
    finally:
        timer.cancel()
    if not reached.is_set():
        raise TimeoutError(f"firehose of {pds_url} did not reach {did} rev {rev}")
    return ops
