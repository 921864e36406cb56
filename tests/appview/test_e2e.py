"""The AppView end to end on the local network (issue 16, "Shown by", first bullet).

Every part is real: the local PDS and PLC (``net``), a private PostgreSQL database
(``appview_dsn``), the ingester (``python -m atdata_ingest run`` on the PDS's
``subscribeRepos``, verifying dataset commits against the PLC), the indexer
(:meth:`atdata_appview.indexer.Indexer.run`) and the server
(:func:`atdata_appview.app.create_app` under uvicorn on a loopback port), a local
HTTP server for one entry's shards, atdata 0.7.0b1's own client in its Python 3.12
environment (``tests/interop/atdata_appview_side.py``), our client
(:class:`atdata_runtime.appview.AppViewClient`), the ``atdata-gen search`` and
``atdata-gen pull`` commands, and ``Dataset.from_atproto``.

1. alice publishes CellCrop 1.0.0, 1.1.0 (an optional ``stain``: minor) and 2.0.0
   (``label`` renamed ``cellType``: major), a lens 1.1.0 -> 2.0.0 and four
   entries with shards written by our writer (PDS blobs, and HTTP for one); bob
   publishes his own schema and an entry of alice's CellCrop 1.0.0.
2. The ingester logs them, the indexer folds them (waited for by seq: the log's
   row of each record, then ``describeService``'s cursor).
3. atdata's client and ours (library and CLI) find them by text, tag and schema.
4. ``Dataset.from_atproto("@alice.test/CellCrop@^1")`` loads the typed samples
   of the newest ^1 entry (HTTP shards), ``@alice.test/cell-crops-v2`` those of
   an entry by its name (blobs), both through the AppView only (no PDS
   fallback); ``atdata-gen pull`` pins CellCrop 1.1.0, the highest ^1.
5. ``getSchemaHistory`` carries ``atdata-gen check``'s findings and
   ``getLensPath`` 1.0.0 -> 2.0.0 is a structural step, then the lens.
6. Deleting an entry (``com.atproto.repo.deleteRecord``) and bob's account
   (``com.atproto.admin.deleteAccount`` with the PDS's admin password: the
   user's ``server.deleteAccount`` needs an emailed token) take them out of
   every answer of both clients, and bob's rows out of every record table.

Other tests may share the session's PDS; answers are compared on the records of
alice and bob, whose accounts only this test creates.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import numpy as np
import pytest
import uvicorn
from atdata_appview.app import create_app, server_config
from atdata_appview.config import Settings
from atdata_appview.handles import run_handle_verifier
from atdata_appview.indexer import Indexer, status
from atdata_appview.schema import RECORD_TABLES
from atdata_gen.dynamic import compile_schema_record
from atdata_gen.testing.localnet import Account, LocalNetwork, free_port
from atdata_runtime.appview import (
    AppViewClient,
    AppViewNotFound,
    NameNotFoundError,
    NameResolver,
)
from atdata_runtime.atmosphere import AtmosphereClient, IdentityResolver
from atdata_runtime.atmosphere.publish import (
    BlobStorage,
    HttpStorage,
    publish_entry,
    publish_lens,
    publish_schema,
    publish_schemas,
)
from atdata_runtime.shards import Dataset, write_samples

from ..conftest import ROOT

pytestmark = pytest.mark.slow

_T = TypeVar("_T")

SIDE = ROOT / "tests" / "interop" / "atdata_appview_side.py"
ENTRY = "science.alt.dataset.entry"
GUARD = 60.0
"""Seconds any one wait may take (a stage that has not finished by then fails
the test, naming the stage, with the indexer's status and the logs)."""
_NDARRAY = "https://alt.science/schemas/atdata-ndarray-bytes/1.1.0#/$defs/ndarray"
_NOW = "2026-12-01T12:00:00.000Z"
NAME = "@alice.test/CellCrop@^1"


# -- the records ------------------------------------------------------------------


def cellcrop(
    version: str, props: dict[str, Any], required: list[str]
) -> dict[str, Any]:
    """A CellCrop schema record in atdata 0.7's flat form."""
    return {
        "$type": "science.alt.dataset.schema",
        "name": "CellCrop",
        "version": version,
        "schemaType": "jsonSchema",
        "description": f"A cropped microscopy image of one cell ({version}).",
        "schema": {
            "$type": "science.alt.dataset.schema#jsonSchemaFormat",
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {
                "image": {
                    "$ref": _NDARRAY,
                    "dtype": "uint8",
                    "shape": [3, 16, 16],
                    "dimensionNames": ["channel", "y", "x"],
                },
                **props,
                "confidence": {"type": "number"},
            },
            "required": ["image", *required, "confidence"],
            "arrayFormatVersions": {"ndarrayBytes": "1.1.0"},
        },
        "createdAt": _NOW,
        "atdataSchemaVersion": 1,
    }


SCHEMAS = [
    cellcrop("1.0.0", {"label": {"type": "string"}}, ["label"]),
    cellcrop(
        "1.1.0",
        {"label": {"type": "string"}, "stain": {"type": "string"}},
        ["label"],
    ),
    cellcrop(
        "2.0.0",
        {"cellType": {"type": "string"}, "stain": {"type": "string"}},
        ["cellType"],
    ),
]

BLOOD_CELL = {
    **cellcrop("1.0.0", {"label": {"type": "string"}}, ["label"]),
    "name": "BloodCell",
    "description": "A white blood cell from a smear.",
}


def lens_record(source: str, target: str) -> dict[str, Any]:
    code = {
        "repository": "https://github.com/alice-lab/cellcrop-lenses",
        "commit": "4f3c2a1b0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b",
        "language": "python",
    }
    return {
        "$type": "science.alt.dataset.lens",
        "name": "CellCrop 1.1 to 2.0",
        "sourceSchema": source,
        "targetSchema": target,
        "description": "label becomes cellType; image, stain and confidence kept",
        "getterCode": {**code, "path": "cellcrop_lenses.v2:upgrade"},
        "putterCode": {**code, "path": "cellcrop_lenses.v2:downgrade"},
        "language": "python",
        "createdAt": _NOW,
    }


def sample_values(record: dict[str, Any], seed: int, n: int) -> list[dict[str, Any]]:
    """``n`` samples' field values (Python names) for schema ``record``."""
    rng = np.random.default_rng(seed)
    props = record["schema"]["properties"]
    classes = ("healthy", "mitotic", "apoptotic")
    out = []
    for i in range(n):
        values: dict[str, Any] = {
            "image": rng.integers(0, 255, (3, 16, 16), dtype=np.uint8),
            "confidence": round(float(rng.random()), 6),
        }
        values["cell_type" if "cellType" in props else "label"] = classes[i % 3]
        if "stain" in props:
            values["stain"] = ("DAPI", "Hoechst")[i % 2]
        out.append(values)
    return out


# -- the services -----------------------------------------------------------------


class Loop:
    """An asyncio loop in a thread (the indexer and the server run there)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="e2e-appview", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float = GUARD) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


class Stack:
    """The ingester (a child process), the indexer and the AppView server (in
    :class:`Loop`) on one database, and a local HTTP server for shards."""

    def __init__(self, net: LocalNetwork, dsn: str, work: Path) -> None:
        self.net = net
        self.dsn = dsn
        self.work = work
        self.shards = work / "shards"
        self.shards.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ingester: subprocess.Popen[bytes] | None = None
        self.ingester_log = work / "ingester.log"
        self.loop = Loop()
        self.pool: Any = None
        self.indexer: Indexer | None = None
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.server: uvicorn.Server | None = None
        self.stop_index: asyncio.Event | None = None
        self.http: http.server.ThreadingHTTPServer | None = None

    # -- start, stop -------------------------------------------------------------
    def start(self) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ATDATA_")},
            "ATDATA_RUNTIME_INSECURE_LOOPBACK": "1",
            "ATDATA_INGEST_DATABASE_URL": self.dsn,
            "ATDATA_INGEST_RELAY_URL": self.net.pds_url,
            "ATDATA_INGEST_PLC_URL": self.net.plc_url,
            "ATDATA_INGEST_START": "oldest",
            "ATDATA_INGEST_VERIFY": "dataset",
            "ATDATA_INGEST_RECONNECT_MIN_SECONDS": "0.1",
            "ATDATA_INGEST_RECONNECT_MAX_SECONDS": "1",
        }
        with self.ingester_log.open("wb") as log:
            self.ingester = subprocess.Popen(
                [sys.executable, "-m", "atdata_ingest", "run"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        settings = Settings.from_env(
            {
                "ATDATA_APPVIEW_DSN": self.dsn,
                # handles verified on the local network: PLC and the PDS's
                # resolveHandle (as `atdata-appview run` would be configured)
                "ATDATA_APPVIEW_PLC_URL": self.net.plc_url,
                "ATDATA_APPVIEW_HANDLE_SERVICE": self.net.pds_url,
            },
            host="127.0.0.1",
            port=self.port,
        )
        self.loop.run(self._start_appview(settings))
        handler = functools.partial(_QuietHandler, directory=str(self.shards))
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(
            target=self.http.serve_forever, name="e2e-shards", daemon=True
        ).start()
        self.wait_until("the AppView to serve /health", self._serving)

    async def _start_appview(self, settings: Settings) -> None:
        self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
        # The indexer as `atdata-appview index` builds it: only commits whose
        # signature the ingester verified are indexed.
        self.indexer = Indexer(
            self.pool, batch_size=settings.index_batch_size, require_verified=True
        )
        self.stop_index = asyncio.Event()
        self.tasks["indexer"] = asyncio.create_task(self.indexer.run(self.stop_index))
        self.tasks["handle verifier"] = asyncio.create_task(
            run_handle_verifier(self.pool, settings, self.stop_index, idle_seconds=0.5)
        )
        self.server = uvicorn.Server(
            server_config(create_app(settings), settings, log_level="warning")
        )
        self.tasks["server"] = asyncio.create_task(self.server.serve())

    @property
    def shard_base(self) -> str:
        assert self.http is not None
        return f"http://127.0.0.1:{self.http.server_address[1]}"

    def _serving(self) -> bool:
        assert self.server is not None
        if not self.server.started:
            return False
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/health", timeout=5).status_code in (200, 503)
        return False

    def close(self) -> None:
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        if self.ingester is not None and self.ingester.poll() is None:
            self.ingester.send_signal(signal.SIGTERM)
            try:
                self.ingester.wait(20)
            except subprocess.TimeoutExpired:
                self.ingester.kill()
                self.ingester.wait(10)
        with contextlib.suppress(Exception):
            self.loop.run(self._stop_appview(), timeout=30)
        self.loop.close()

    async def _stop_appview(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.stop_index is not None:
            self.stop_index.set()
        for task in self.tasks.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 20)
        if self.pool is not None:
            await self.pool.close()

    # -- the database, for waits and failure messages ------------------------------
    def db(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async def fetch() -> list[asyncpg.Record]:
            async with self.pool.acquire() as conn:
                return list(await conn.fetch(query, *args))

        return self.loop.run(fetch())

    def diagnose(self) -> str:
        """What each stage did: the tasks, the indexer's status, the dead
        letters, the ingester's exit status and log."""
        lines = []
        for name, task in self.tasks.items():
            if task.done():
                exc = None if task.cancelled() else task.exception()
                lines.append(f"{name} task ended: {exc!r}")
        try:

            async def state() -> dict[str, Any]:
                async with self.pool.acquire() as conn:
                    found: dict[str, Any] = await status(conn)
                    return found

            lines.append(
                "indexer status: "
                + json.dumps(self.loop.run(state(), timeout=10), default=str)
            )
            dead = self.db(
                "SELECT did, collection, rkey, rule, pointer, message "
                "FROM appview_dead_letters ORDER BY id LIMIT 20"
            )
            lines.append(f"dead letters ({len(dead)} shown):")
            lines += [f"  {dict(r)}" for r in dead]
        except Exception as exc:  # noqa: BLE001 - a failure message, never masked
            lines.append(f"status unavailable: {exc!r}")
        if self.ingester is not None:
            lines.append(f"ingester exit status: {self.ingester.poll()}")
        text = self.ingester_log.read_text(errors="replace")
        lines.append("ingester log (tail):\n" + "\n".join(text.splitlines()[-30:]))
        return "\n".join(lines)

    def _alive(self) -> None:
        if self.ingester is not None and self.ingester.poll() is not None:
            pytest.fail(f"the ingester exited\n{self.diagnose()}")
        for name, task in self.tasks.items():
            if task.done():
                pytest.fail(f"the {name} stopped\n{self.diagnose()}")

    def wait_until(
        self,
        what: str,
        check: Callable[[], _T | None | bool],
        *,
        explain: Callable[[], str] = str,
        timeout: float = GUARD,
    ) -> _T:
        """Poll ``check`` (every 0.1 s) until it returns a true value; fail after
        ``timeout`` seconds naming ``what``, with ``explain()`` and
        :meth:`diagnose`; fail at once when a service has stopped."""
        deadline = time.monotonic() + timeout
        while True:
            self._alive()
            value = check()
            if value:
                return value  # type: ignore[return-value]
            if time.monotonic() > deadline:
                pytest.fail(
                    f"timed out after {timeout:g} s waiting for {what}. "
                    f"{explain()}\n{self.diagnose()}"
                )
            time.sleep(0.1)

    def folded_cursor(self) -> int:
        """``describeService``'s cursor: the seq of the last log event folded."""
        r = httpx.get(
            f"{self.url}/xrpc/science.alt.dataset.describeService", timeout=10
        )
        assert r.status_code == 200, r.text
        return int(r.json()["cursor"])

    def wait_folded(self, what: str, query: str, *args: Any) -> int:
        """Wait until the ingestion log holds the event(s) ``query`` finds (its
        first column: their highest seq, else NULL), then until the indexer has
        folded past it (``describeService``); returns that seq."""
        seq: int = self.wait_until(
            f"the ingester to log {what}",
            lambda: self.db(query, *args)[0][0],
        )
        self.wait_until(
            f"the indexer to fold {what} (log seq {seq})",
            lambda: self.folded_cursor() >= seq,
            explain=lambda: f"describeService cursor: {self.folded_cursor()}.",
        )
        return seq


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def stack(net: LocalNetwork, appview_dsn: str, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(net, appview_dsn, tmp_path)
    try:
        s.start()
        yield s
    finally:
        s.close()


# -- helpers ----------------------------------------------------------------------


def login(net: LocalNetwork, account: Account, tmp: Path) -> AtmosphereClient:
    return AtmosphereClient.login(
        account.handle,
        account.password,
        session_file=tmp / f"{account.handle}.session",
        resolver=resolver(net),
        pds_url=net.pds_url,
    )


def resolver(net: LocalNetwork) -> IdentityResolver:
    return IdentityResolver(plc_url=net.plc_url, handle_service=net.pds_url)


def cli(args: list[str], cwd: Path, **env: str) -> subprocess.Popen[str]:
    """``atdata-gen ARGS`` started (not waited for), output captured."""
    path = os.pathsep.join(str(ROOT / p) for p in ("compiler", "runtime"))
    return subprocess.Popen(
        [sys.executable, "-m", "atdata_gen.cli", *args],
        cwd=cwd,
        env={**os.environ, **env, "PYTHONPATH": path},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(proc: subprocess.Popen[str], what: str) -> str:
    """The stdout of ``proc`` once it exits 0 (else the test fails)."""
    try:
        out, err = proc.communicate(timeout=GUARD)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{what} did not finish in {GUARD:g} s:\n{err[-3000:]}")
    assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{err[-3000:]}"
    return out


class AtdataClient:
    """atdata 0.7.0b1's own client in its environment, one process for the whole
    test (``tests/interop/atdata_appview_side.py``: importing atdata takes
    seconds, so it is started first and imports while the test publishes)."""

    def __init__(self, python: str, work: Path) -> None:
        self.stderr = work / "atdata-side.stderr"
        with self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [python, str(SIDE)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, name="e2e-atdata", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")  # end of output

    def _line(self, what: str) -> Any:
        try:
            line = self.lines.get(timeout=GUARD)
        except queue.Empty:
            pytest.fail(f"atdata's client gave no answer to {what} in {GUARD:g} s")
        if not line:
            self.proc.wait(10)
            tail = self.stderr.read_text(errors="replace")[-3000:]
            pytest.fail(
                f"atdata's client exited ({self.proc.returncode}) on {what}:\n{tail}"
            )
        return json.loads(line)

    def ask(self, url: str, calls: list[dict[str, Any]]) -> list[Any]:
        """The answers of atdata's client to ``calls`` (see the side script)."""
        if not self._ready:
            started = self._line("its start")
            assert started == {"ready": True}, started
            self._ready = True
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"appview": url, "calls": calls}) + "\n")
        self.proc.stdin.flush()
        answer: list[Any] = self._line(f"{len(calls)} calls")
        for call, value in zip(calls, answer, strict=True):
            if isinstance(value, dict) and {"error", "message"} <= set(value):
                pytest.fail(f"atdata's client failed on {call}: {value}")
        return answer

    _ready = False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def atdata_client(atdata_python: str, tmp_path: Path) -> Iterator[AtdataClient]:
    client = AtdataClient(atdata_python, tmp_path)
    try:
        yield client
    finally:
        client.close()


def rules_of_check(
    old: dict[str, Any], new: dict[str, Any], work: Path
) -> tuple[int, set[tuple[str, str]]]:
    """``atdata-gen check NEW --against OLD --format json``: its exit status
    and the (rule ID, severity) of each finding: the oracle of the stored
    verdicts."""
    from atdata_gen.cli import main
    from click.testing import CliRunner

    for side, record in (("old", old), ("new", new)):
        (work / side).mkdir(parents=True, exist_ok=True)
        (work / side / "CellCrop.json").write_text(json.dumps(record))
    result = CliRunner().invoke(
        main,
        [
            "check",
            str(work / "new" / "CellCrop.json"),
            "--against",
            str(work / "old" / "CellCrop.json"),
            "--format",
            "json",
        ],
    )
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, {
        (f["rule"], f["severity"]) for f in json.loads(result.stdout)
    }


# -- the test -----------------------------------------------------------------------


def test_publish_index_discover_load_delete_on_the_local_network(
    atdata_client: AtdataClient, net: LocalNetwork, stack: Stack, tmp_path: Path
) -> None:
    # 1. publish -------------------------------------------------------------------
    alice_acct = net.create_account("alice")
    bob_acct = net.create_account("bob")
    alice, bob = login(net, alice_acct, tmp_path), login(net, bob_acct, tmp_path)
    pubs = publish_schemas(alice, SCHEMAS)
    v1, v11, v2 = (p.write.uri for p in pubs)
    lens = publish_lens(alice, lens_record(v11, v2))
    blood_schema = publish_schema(bob, BLOOD_CELL).write.uri

    written: dict[str, list[dict[str, Any]]] = {}
    uris: dict[str, str] = {}
    journal = tmp_path / "journal"
    entries = [
        # (publisher, schema index, name, tags, http?, description)
        (alice, 0, "cell-crops-train", ["microscopy", "cells"], False,
         "Training cell crops of fluorescence microscopy, three classes."),
        (alice, 1, "cell-crops-stained", ["microscopy", "stain"], True,
         "DAPI and Hoechst stained cell crops, the stain recorded."),
        (alice, 2, "cell-crops-v2", ["microscopy", "cells"], False,
         "The cell crops again in the 2.0 schema (cellType)."),
        (alice, 2, "nuclei-masks", ["microscopy", "segmentation"], False,
         "Segmentation masks of nuclei from a confocal scope."),
        (bob, 0, "blood-smear-crops", ["microscopy", "hematology"], False,
         "White blood cell crops from smears, in alice's CellCrop."),
    ]  # fmt: skip
    for seed, (client, k, name, tags, by_http, description) in enumerate(entries):
        schema_uri = pubs[k].write.uri
        cls = compile_schema_record(SCHEMAS[k], uri=schema_uri)
        values = sample_values(SCHEMAS[k], seed, 12)
        (stack.shards / name).mkdir()
        paths = write_samples(
            [cls(**v) for v in values],
            str(stack.shards / name / f"{name}-%06d.tar"),
            maxcount=5,
        )
        assert len(paths) == 3
        storage = (
            HttpStorage([f"{stack.shard_base}/{name}/{Path(p).name}" for p in paths])
            if by_http
            else BlobStorage()
        )
        uris[name] = publish_entry(
            client,
            paths,
            schema_uri=schema_uri,
            name=name,
            storage=storage,
            description=description,
            tags=tags,
            license="CC-BY-4.0",
            journal_dir=journal,
        ).uri
        written[name] = values
    dids = {alice_acct.did, bob_acct.did}

    # 2. ingested and indexed --------------------------------------------------------
    keys = [*(p.write.uri for p in pubs), lens.uri, blood_schema, *uris.values()]
    repo_, coll_, rkey_ = zip(*(u.removeprefix("at://").split("/") for u in keys))

    def missing() -> str:
        rows = stack.db(
            "SELECT repo, collection, rkey FROM ingest_events WHERE "
            "(repo, collection, rkey) IN (SELECT * FROM unnest($1::text[], "
            "$2::text[], $3::text[]))",
            list(repo_), list(coll_), list(rkey_),
        )  # fmt: skip
        seen = {f"at://{r[0]}/{r[1]}/{r[2]}" for r in rows}
        return f"Not in the log: {sorted(u for u in keys if u not in seen)}."

    stack.wait_until(
        f"the ingester to log all {len(keys)} records",
        lambda: stack.db(
            "SELECT count(DISTINCT (repo, collection, rkey)) = $4 FROM ingest_events "
            "WHERE action = 'create' AND (repo, collection, rkey) IN (SELECT * FROM "
            "unnest($1::text[], $2::text[], $3::text[]))",
            list(repo_),
            list(coll_),
            list(rkey_),
            len(keys),
        )[0][0],
        explain=missing,
    )
    top = stack.db(
        "SELECT max(seq) FROM ingest_events WHERE (repo, collection, rkey) IN "
        "(SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))",
        list(repo_), list(coll_), list(rkey_),
    )[0][0]  # fmt: skip
    stack.wait_until(
        f"the indexer to fold the log up to seq {top}",
        lambda: stack.folded_cursor() >= top,
        explain=lambda: f"describeService cursor: {stack.folded_cursor()}.",
    )
    dead = stack.db(
        "SELECT collection, rkey, rule, pointer, message FROM appview_dead_letters "
        "WHERE did = ANY($1::text[])",
        list(dids),
    )
    assert dead == [], f"our records were refused: {[dict(r) for r in dead]}"
    # handles resolve once verified (handle -> DID on the PDS, alsoKnownAs in PLC)
    stack.wait_until(
        "the AppView to verify alice's and bob's handles",
        lambda: stack.db(
            "SELECT count(*) = 2 FROM appview_accounts WHERE did = ANY($1::text[]) "
            "AND verified_handle = handle",
            list(dids),
        )[0][0],
        explain=lambda: str(
            stack.db(
                "SELECT did, handle, verified_handle, handle_checked FROM "
                "appview_accounts WHERE did = ANY($1::text[])",
                list(dids),
            )
        ),
    )

    # 3. discovery: atdata's client (its own process), the CLI, our client -----------
    ours = AppViewClient(stack.url)
    env = {"ATDATA_APPVIEW_URL": stack.url}
    text, tag, by_ref, by_range = (
        ("cell crops",),
        ("--tag", "microscopy"),
        ("--schema", v11),
        ("--schema", "CellCrop@^1"),
    )
    searches = {
        "text": cli(["search", *text, "--limit", "100", "--format", "json"], tmp_path, **env),
        "tag": cli(["search", *tag, "--limit", "100", "--format", "json"], tmp_path, **env),
        "ref": cli(["search", *by_ref, "--limit", "100", "--format", "json"], tmp_path, **env),
        "range": cli(["search", *by_range, "--limit", "100", "--format", "json"], tmp_path, **env),
        "table": cli(["search", *text, *tag, *by_range, "--limit", "100"], tmp_path, **env),
    }  # fmt: skip
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[tool.atdata-gen]\nsources = []\nout = "gen"\npackage = "labschemas"\n'
    )
    pull = cli(
        ["pull", NAME],
        project,
        **env,
        ATDATA_PLC_URL=net.plc_url,
        ATDATA_HANDLE_SERVICE=net.pds_url,
    )
    theirs = atdata_client.ask(
        stack.url,
        [
            {"op": "backend", "text": "cell crops", "limit": 100},
            {"op": "backend", "tags": ["microscopy"], "limit": 100},
            {"op": "backend", "schema_ref": v11, "limit": 100},
            {"op": "backend", "schema_ref": v1, "limit": 100},
            {"op": "search_datasets", "q": "cell crops", "tags": ["hematology"],
             "limit": 100},
            {"op": "health_check"},
            {"op": "describe_service"},
            {"op": "xrpc", "nsid": "science.alt.dataset.resolveSchema",
             "params": {"handle": "alice.test", "schemaId": "CellCrop",
                        "version": "1.1.0"}},
        ],
    )  # fmt: skip

    def ours_(uris_: Any) -> set[str]:
        """The AT-URIs of alice's and bob's records among ``uris_``."""
        return {u for u in uris_ if u.removeprefix("at://").split("/")[0] in dids}

    every = set(uris.values())
    cell = every - {uris["nuclei-masks"]}
    ranged = {
        uris[n] for n in ("cell-crops-train", "cell-crops-stained", "blood-smear-crops")
    }

    def search(q: str | None = None, **kw: Any) -> set[str]:
        return ours_(e.uri for e in ours.iter_search_datasets(q, limit=100, **kw))

    assert search("cell crops") == cell
    assert search(tags=["microscopy"]) == every
    assert search(tags=["hematology"]) == {uris["blood-smear-crops"]}
    assert search(schema_ref=v11) == {uris["cell-crops-stained"]}
    assert search(schema_ref=v1) == {
        uris["cell-crops-train"],
        uris["blood-smear-crops"],
    }
    assert search(schema="CellCrop@^1") == ranged
    assert search(schema="CellCrop@^2") == {uris["cell-crops-v2"], uris["nuclei-masks"]}
    assert search("cell crops", tags=["microscopy"], schema="CellCrop@^1") == ranged
    assert search(repo=bob_acct.did) == {uris["blood-smear-crops"]}
    got = {e.uri: e for e in ours.get_entries(sorted(every))}
    assert set(got) == every
    stained = got[uris["cell-crops-stained"]]
    assert (stained.name, stained.schema_ref, stained.tags) == (
        "cell-crops-stained",
        v11,
        ["microscopy", "stain"],
    )
    assert stained.handle == "alice.test" and stained.did == alice_acct.did

    def cli_uris(key: str, proc: subprocess.Popen[str] | None = None) -> set[str]:
        out = finished(proc or searches[key], f"atdata-gen search ({key})")
        return ours_(e["uri"] for e in json.loads(out)["entries"])

    assert cli_uris("text") == cell
    assert cli_uris("tag") == every
    assert cli_uris("ref") == {uris["cell-crops-stained"]}
    assert cli_uris("range") == ranged
    table = finished(searches["table"], "atdata-gen search (table)").splitlines()
    assert table[0].split()[:3] == ["NAME", "PUBLISHER", "SCHEMA"]
    assert ours_(line.split()[-1] for line in table[1:]) == ranged

    (a_text, a_tag, a_ref, a_v1, a_hema, a_health, a_describe, a_resolved) = theirs
    assert ours_(i["uri"] for i in a_text["items"]) == cell
    assert ours_(i["uri"] for i in a_tag["items"]) == every
    assert ours_(i["uri"] for i in a_ref["items"]) == {uris["cell-crops-stained"]}
    assert ours_(i["uri"] for i in a_v1["items"]) == {
        uris["cell-crops-train"],
        uris["blood-smear-crops"],
    }
    assert ours_(e["uri"] for e in a_hema) == {uris["blood-smear-crops"]}
    item = next(i for i in a_ref["items"] if i["uri"] == uris["cell-crops-stained"])
    assert (item["name"], item["schema_ref"], item["tags"]) == (
        "cell-crops-stained", v11, ["microscopy", "stain"]
    )  # fmt: skip
    assert a_health is True
    assert a_describe["did"] == f"did:web:127.0.0.1%3A{stack.port}"
    assert a_describe["cursor"] >= top
    assert ENTRY in a_describe["availableCollections"]
    assert a_resolved["uri"] == v11 and a_resolved["record"]["version"] == "1.1.0"

    # 4. load by name (the AppView only), pull by name ----------------------------------
    reader = AtmosphereClient(resolver=resolver(net))
    ds = Dataset.from_atproto(
        NAME, appview=stack.url, fallback=False, client=reader, progress=False
    )
    loaded = list(ds.ordered())
    assert len(loaded) == len(written["cell-crops-stained"]) == 12
    cls = type(loaded[0])
    assert cls.__name__ == "CellCrop"
    assert (cls.schema_name, cls.schema_version, cls.schema_source) == (
        "CellCrop", "1.1.0", v11
    )  # fmt: skip
    assert all(type(s) is cls for s in loaded)
    for sample, expected in zip(loaded, written["cell-crops-stained"], strict=True):
        assert isinstance(sample.image, np.ndarray) and sample.image.dtype == np.uint8
        np.testing.assert_array_equal(sample.image, expected["image"])
        assert (sample.label, sample.stain, sample.confidence) == (
            expected["label"], expected["stain"], expected["confidence"]
        )  # fmt: skip

    # by an entry's name (PDS blobs, the 2.0.0 schema: cellType is cell_type)
    by_name = list(
        Dataset.from_atproto(
            "@alice.test/cell-crops-v2",
            appview=stack.url,
            fallback=False,
            client=reader,
            progress=False,
        ).ordered()
    )
    assert type(by_name[0]).schema_version == "2.0.0"  # type: ignore[attr-defined]
    assert [(s.cell_type, s.stain) for s in by_name] == [
        (v["cell_type"], v["stain"]) for v in written["cell-crops-v2"]
    ]
    np.testing.assert_array_equal(
        by_name[-1].image, written["cell-crops-v2"][-1]["image"]
    )
    names = NameResolver(stack.url, resolver=resolver(net), fallback=False)
    assert (
        names.resolve_dataset("@alice.test/cell-crops-train").uri
        == (uris["cell-crops-train"])
    )

    finished(pull, "atdata-gen pull")
    lock = json.loads((project / "atdata-gen.lock").read_text())
    pinned = {e["requested"]: e for e in lock["schemas"]}
    assert set(pinned) == {NAME}
    assert pinned[NAME]["uri"] == v11 and pinned[NAME]["did"] == alice_acct.did
    assert pinned[NAME]["value"]["version"] == "1.1.0"

    # 5. history with the checker's verdicts, the lens path -----------------------------
    history = ours.get_schema_history("CellCrop", repo="alice.test")
    assert [(v.version, v.uri) for v in history.versions] == [
        ("1.0.0", v1), ("1.1.0", v11), ("2.0.0", v2)
    ]  # fmt: skip
    verdicts = {(v.from_version, v.to_version): v for v in history.verdicts}
    assert set(verdicts) == {("1.0.0", "1.1.0"), ("1.1.0", "2.0.0")}
    for i, (old, new) in enumerate((("1.0.0", "1.1.0"), ("1.1.0", "2.0.0"))):
        v = verdicts[(old, new)]
        code, rules = rules_of_check(SCHEMAS[i], SCHEMAS[i + 1], tmp_path / f"check{i}")
        assert (v.from_uri, v.to_uri) == (pubs[i].write.uri, pubs[i + 1].write.uri)
        assert v.verdict == ("compatible" if code == 0 else "breaking"), v
        assert {(f.rule, f.severity) for f in v.findings} == rules, (v.findings, rules)
    assert verdicts[("1.0.0", "1.1.0")].verdict == "compatible"
    assert verdicts[("1.0.0", "1.1.0")].declared_bump == "minor"
    assert verdicts[("1.0.0", "1.1.0")].needed_bump == "minor"
    assert "FIELD_OPTIONAL_ADDED" in {
        f.rule for f in verdicts[("1.0.0", "1.1.0")].findings
    }
    major = verdicts[("1.1.0", "2.0.0")]
    assert (major.declared_bump, major.needed_bump) == ("major", "major")
    assert {"FIELD_DELETED", "FIELD_REQUIRED_ADDED"} <= {f.rule for f in major.findings}

    path = ours.get_lens_path(v1, v2)
    assert [(s.kind, s.source_schema, s.target_schema) for s in path.steps] == [
        ("structural", v1, v11),
        ("lens", v11, v2),
    ]
    assert path.steps[0].lens is None
    assert path.steps[1].lens is not None and path.steps[1].lens.uri == lens.uri

    # 6. a deleted entry, a deleted account ---------------------------------------------
    session = httpx.post(
        f"{net.pds_url}/xrpc/com.atproto.server.createSession",
        json={"identifier": alice_acct.handle, "password": alice_acct.password},
        timeout=30,
    )
    assert session.status_code == 200, session.text
    gone = uris["cell-crops-train"]
    _, _, rkey = gone.removeprefix("at://").split("/")
    r = httpx.post(
        f"{net.pds_url}/xrpc/com.atproto.repo.deleteRecord",
        headers={"Authorization": f"Bearer {session.json()['accessJwt']}"},
        json={"repo": alice_acct.did, "collection": ENTRY, "rkey": rkey},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    r = httpx.post(
        f"{net.pds_url}/xrpc/com.atproto.admin.deleteAccount",
        auth=("admin", net.admin_password),
        json={"did": bob_acct.did},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    stack.wait_folded(
        f"the deletion of {gone}",
        "SELECT max(seq) FROM ingest_events WHERE action = 'delete' AND repo = $1 "
        "AND collection = $2 AND rkey = $3",
        alice_acct.did,
        ENTRY,
        rkey,
    )
    stack.wait_folded(
        f"the deletion of bob's account {bob_acct.did}",
        "SELECT max(seq) FROM ingest_events WHERE event_type = 'account' AND "
        "repo = $1 AND record->>'status' = 'deleted'",
        bob_acct.did,
    )
    left = cell - {gone, uris["blood-smear-crops"]}
    after_cli = cli(
        ["search", *text, "--limit", "100", "--format", "json"], tmp_path, **env
    )
    after_theirs = atdata_client.ask(
        stack.url,
        [
            {"op": "backend", "text": "cell crops", "limit": 100},
            {"op": "backend", "tags": ["microscopy"], "limit": 100},
            {"op": "backend", "schema_ref": v1, "limit": 100},
            {"op": "search_datasets", "q": "cell crops", "tags": ["hematology"],
             "limit": 100},
            {"op": "xrpc", "nsid": "science.alt.dataset.getEntries",
             "params": {"uris": sorted(every)}},
        ],
    )  # fmt: skip
    assert search("cell crops") == left
    assert search(tags=["microscopy"]) == every - {gone, uris["blood-smear-crops"]}
    assert search(schema_ref=v1) == set()
    assert search(tags=["hematology"]) == set()
    assert search(repo=alice_acct.did) == every - {gone, uris["blood-smear-crops"]}
    for uri in (gone, uris["blood-smear-crops"]):
        with pytest.raises(AppViewNotFound):
            ours.get_entry(uri)
    with pytest.raises(AppViewNotFound):
        ours.get_schema(blood_schema)
    with pytest.raises(NameNotFoundError):
        names.resolve_dataset("@alice.test/cell-crops-train")
    assert {e.uri for e in ours.get_entries(sorted(every))} == every - {
        gone,
        uris["blood-smear-crops"],
    }
    assert ours_(s.uri for s in ours.iter_schemas(limit=100)) == {v1, v11, v2}
    # purged, not only hidden: no row of bob's is left in any record table
    # (the queries also hide inactive accounts' rows; this is the fold's purge)
    left_rows = {
        table: stack.db(f"SELECT count(*) FROM {table} WHERE did = $1", bob_acct.did)[
            0
        ][0]
        for table in RECORD_TABLES.values()
    }
    assert set(left_rows.values()) == {0}, f"bob's rows left: {left_rows}"
    assert (
        stack.db(
            "SELECT count(*) FROM appview_entries WHERE did = $1 AND rkey = $2",
            alice_acct.did,
            rkey,
        )[0][0]
        == 0
    )
    # alice's schemas and lens do not go with bob's account
    assert ours.get_lens_path(v1, v2).steps[1].lens.uri == lens.uri  # type: ignore[union-attr]

    assert cli_uris("text, after the deletions", after_cli) == left
    a_text, a_tag, a_v1, a_hema, a_entries = after_theirs
    assert ours_(i["uri"] for i in a_text["items"]) == left
    assert ours_(i["uri"] for i in a_tag["items"]) == every - {
        gone,
        uris["blood-smear-crops"],
    }
    assert ours_(i["uri"] for i in a_v1["items"]) == set()
    assert ours_(e["uri"] for e in a_hema) == set()
    assert {e["uri"] for e in a_entries["entries"]} == every - {
        gone,
        uris["blood-smear-crops"],
    }
