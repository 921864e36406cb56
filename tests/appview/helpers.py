"""Record builders and names shared by the AppView's query and page tests
(tests/appview/test_xrpc.py, tests/appview/test_pages.py): NSIDs, the seed's DIDs,
and ``science.alt.dataset.*`` records as a publisher writes them."""

from __future__ import annotations

from typing import Any

SCHEMA = "science.alt.dataset.schema"
ENTRY = "science.alt.dataset.entry"
LENS = "science.alt.dataset.lens"
VERIFY = "science.alt.dataset.lensVerification"
LABEL = "science.alt.dataset.label"

ALICE = "did:plc:" + "alice".ljust(24, "a")
BOB = "did:plc:" + "bob".ljust(24, "b")
MALLORY = "did:plc:" + "mallory".ljust(24, "m")

CREATED = "2026-01-01T00:00:00Z"


def at(did: str, collection: str, rkey: str) -> str:
    """The AT-URI ``at://<did>/<collection>/<rkey>``."""
    return f"at://{did}/{collection}/{rkey}"


def checksum(n: int) -> dict[str, str]:
    """A sha-256 checksum object whose digest is ``n`` in 64 hex digits."""
    return {"algorithm": "sha256", "digest": f"{n:064x}"}


def http_storage(*urls: str) -> dict[str, Any]:
    """A ``storageHttp`` object: one shard per URL, checksums 0, 1, ..."""
    return {
        "$type": "science.alt.dataset.storageHttp",
        "shards": [{"url": u, "checksum": checksum(i)} for i, u in enumerate(urls)],
    }


def entry(
    name: str,
    schema: str,
    storage: dict[str, Any] | None = None,
    *,
    tags: list[str] | None = None,
    license: str | None = None,
    size: int | None = None,
    description: str | None = None,
    created: str = CREATED,
) -> dict[str, Any]:
    """An entry record named ``name`` of schema AT-URI ``schema``; ``storage``
    by default one HTTP shard; ``size`` in bytes (samples: size // 1000)."""
    rec: dict[str, Any] = {
        "$type": ENTRY,
        "name": name,
        "schemaRef": schema,
        "storage": storage or http_storage(f"https://data.example.org/{len(name)}.tar"),
        "createdAt": created,
    }
    if tags:
        rec["tags"] = tags
    if license:
        rec["license"] = license
    if size is not None:
        rec["size"] = {"samples": size // 1000, "bytes": size, "shards": 1}
    if description:
        rec["description"] = description
    return rec


def code(path: str) -> dict[str, str]:
    """A code reference (repository, 40-hex commit, ``module:function`` path)."""
    return {
        "repository": "https://github.com/example/lenses",
        "commit": "0123456789abcdef0123456789abcdef01234567",
        "path": path,
    }
