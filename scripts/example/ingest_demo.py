"""The ingestion service on a real local network (scripts/run-example, part 2).

Starts a private PostgreSQL 15 cluster and the local AT Protocol network (PLC +
PDS), runs ``atdata-ingest run`` against the PDS's firehose and ``atdata-ingest
serve`` in front of the log, publishes a schema record, a dataset entry and some
Bluesky records, then reads them back as typed events through the consumer API
with ``atdata_runtime.firehose.Subscription`` and stops the ingester cleanly.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from atdata_gen.testing.localnet import LocalNetwork, free_port
from atdata_ingest.schema import migrate
from atdata_ingest.testing.postgres import PostgresCluster
from atdata_ingest.tokens import create_token
from atdata_runtime.firehose import Create, Delete, Update
from atdata_runtime.firehose.subscribe import IngestService, Subscription
from atdata_runtime.lexicons.science.alt.dataset.schema import Schema


def xrpc(net: LocalNetwork, jwt: str, method: str, body: dict[str, Any]) -> Any:
    r = httpx.post(
        f"{net.pds_url}/xrpc/{method}",
        json=body,
        headers={"Authorization": f"Bearer {jwt}"},
        timeout=30,
    )
    r.raise_for_status()
    return r.json()


def wait_for(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="atdata-ingest-demo-"))
    with PostgresCluster() as pg, LocalNetwork.start(work / "net") as net:
        dsn = pg.create_database("demo")

        async def setup() -> str:
            conn = await asyncpg.connect(dsn)
            try:
                await migrate(conn)
                return await create_token(
                    conn, "demo-consumer", {"collections": ["science.alt.dataset.*"]}
                )
            finally:
                await conn.close()

        token = asyncio.run(setup())
        print("consumer token (stored hashed):", token[:12] + "…")
        port = free_port()
        api = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "ATDATA_INGEST_DATABASE_URL": dsn,
            "ATDATA_INGEST_RELAY_URL": net.pds_url,
            "ATDATA_INGEST_PLC_URL": net.plc_url,
            # first start: read the PDS's stream from its oldest event
            "ATDATA_INGEST_START": "oldest",
        }
        logs = {name: (work / f"{name}.log").open("wb") for name in ("run", "serve")}
        procs = {
            "run": subprocess.Popen(
                [sys.executable, "-m", "atdata_ingest", "run"],
                env=env, stdout=logs["run"], stderr=subprocess.STDOUT,
            ),
            "serve": subprocess.Popen(
                [sys.executable, "-m", "atdata_ingest", "serve", "--port", str(port)],
                env=env, stdout=logs["serve"], stderr=subprocess.STDOUT,
            ),
        }  # fmt: skip
        try:

            def health() -> dict[str, Any] | None:
                try:
                    body = httpx.get(f"{api}/health", timeout=2).json()
                except (httpx.HTTPError, ValueError):
                    return None
                return body if body.get("ingester_pid") else None

            wait_for("the ingester", health)
            alice = net.create_account("alice")
            session = httpx.post(
                f"{net.pds_url}/xrpc/com.atproto.server.createSession",
                json={"identifier": alice.handle, "password": alice.password},
                timeout=30,
            ).json()
            jwt, did = session["accessJwt"], session["did"]
            now = "2026-12-01T12:00:00.000Z"
            schema = {
                "$type": "science.alt.dataset.schema",
                "name": "CellCrop",
                "version": "1.0.0",
                "schemaType": "jsonSchema",
                "schema": {
                    "$type": "science.alt.dataset.schema#jsonSchemaFormat",
                    "$schema": "http://json-schema.org/draft-07/schema#",
                    "type": "object",
                    "properties": {"label": {"type": "string"}},
                    "required": ["label"],
                },
                "createdAt": now,
            }
            made = xrpc(net, jwt, "com.atproto.repo.createRecord", {
                "repo": did, "collection": "science.alt.dataset.schema",
                "rkey": "CellCrop:1.0.0", "record": schema,
            })  # fmt: skip
            xrpc(net, jwt, "com.atproto.repo.createRecord", {
                "repo": did, "collection": "app.bsky.feed.post",
                "record": {"$type": "app.bsky.feed.post", "text": "new dataset!",
                           "createdAt": now},
            })  # fmt: skip
            schema["description"] = "Cell crops, 64x64"
            xrpc(net, jwt, "com.atproto.repo.putRecord", {
                "repo": did, "collection": "science.alt.dataset.schema",
                "rkey": "CellCrop:1.0.0", "record": schema,
            })  # fmt: skip
            xrpc(net, jwt, "com.atproto.repo.deleteRecord", {
                "repo": did, "collection": "science.alt.dataset.schema",
                "rkey": "CellCrop:1.0.0",
            })  # fmt: skip
            print("published: schema record", made["uri"], "(then updated, deleted)")

            seen: list[str] = []
            sub = Subscription(
                IngestService(api, token, poll_interval=0.1),
                collections=["science.alt.dataset.*"],
                cursor=0,
            )

            @sub.records(Schema)
            def on_schema(event: Create | Update, record: Schema) -> None:
                seen.append(f"{type(event).__name__:6} {record.name}@{record.version}")
                print(
                    f"  seq {event.seq}: {type(event).__name__} {event.uri}"
                    f" -> Schema(name={record.name!r}, version={record.version!r},"
                    f" description={record.description!r})"
                    f" verified={event.verified}"
                )

            @sub.on(Delete)
            def on_delete(event: Delete) -> None:
                seen.append(f"Delete {event.rkey}")
                print(f"  seq {event.seq}: Delete {event.uri}")

            print("typed events from the consumer API (GET /events):")
            sub.run_forever(until=lambda _event: len(seen) >= 3)
            page = httpx.get(
                f"{api}/events",
                params={"since": 0, "collection": "science.alt.dataset.*"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            ).json()
            print("GET /events cursor:", page["cursor"], "events:", len(page["events"]))
            time.sleep(1.1)  # /health is cached for 1 s
            print("GET /health:", json.dumps(health()))
        finally:
            procs["run"].send_signal(signal.SIGTERM)
            code = procs["run"].wait(30)
            procs["serve"].send_signal(signal.SIGTERM)
            procs["serve"].wait(30)
            print("ingester stopped cleanly, exit status", code)
            if code != 0:
                print((work / "run.log").read_text()[-3000:])
                raise SystemExit(1)


if __name__ == "__main__":
    main()
