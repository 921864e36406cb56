"""The AppView on a real local network, in one command (``scripts/appview``).

Starts a private PostgreSQL 15 cluster (:class:`atdata_ingest.testing.postgres.
PostgresCluster`, data in a temporary directory, run as the ``postgres`` user) and
the local AT Protocol network (PLC + PDS, :class:`atdata_gen.testing.localnet.
LocalNetwork`), migrates the database (``atdata-appview migrate``), starts the
ingester on the PDS's firehose (``atdata-ingest run``, from its oldest event) and
the AppView (``atdata-appview run``: indexer and server in one process), then
publishes a bundled example through the runtime's publishing API
(:mod:`atdata_runtime.atmosphere.publish`):

- ``alice.test``: the schema ``CellCrop`` in three versions, 1.0.0, 1.1.0 (adds an
  optional ``stain``: a minor bump) and 2.0.0 (``label`` renamed ``cellType``: a
  breaking change, a major bump); a lens from 1.1.0 to 2.0.0; three dataset
  entries with tags and licences (shards written here, uploaded as PDS blobs);
  and the label ``latest`` on the 2.0.0 entry;
- ``bob.test``: an entry of alice's CellCrop 1.0.0.

When the AppView has indexed it all, it prints the URL and example queries and
stays up until Ctrl-C (or SIGTERM). ``--check`` (``--once``) instead runs the
example queries, checks their answers (text, tag and schema search, schema
resolution, version history with the compatibility verdicts, the lens path with
its structural step, the label, the home page) and exits 0, or 1 naming the
first wrong answer (with the tail of each service's log).

Everything runs on loopback; nothing is fetched from the internet.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final, TypeVar

import httpx
import numpy as np
from atdata_gen.dynamic import compile_schema_record
from atdata_gen.testing.localnet import Account, LocalNetwork, free_port
from atdata_ingest.testing.postgres import PostgresCluster
from atdata_runtime.atmosphere import AtmosphereClient, IdentityResolver
from atdata_runtime.atmosphere.publish import (
    BlobStorage,
    new_tid,
    publish_entry,
    publish_lens,
    publish_schemas,
)
from atdata_runtime.shards import write_samples

__all__ = ["Demo", "DemoFailed", "main", "schema_records"]

_T = TypeVar("_T")

SCHEMA: Final = "science.alt.dataset.schema"
LABEL: Final = "science.alt.dataset.label"
XRPC: Final = "/xrpc/science.alt.dataset."
#: Seconds the example may take to be indexed (publishing is done by then).
INDEX_TIMEOUT_S: Final = 240.0
_NDARRAY: Final = (
    "https://alt.science/schemas/atdata-ndarray-bytes/1.1.0#/$defs/ndarray"
)
_NOW: Final = "2026-12-01T12:00:00.000Z"


class DemoFailed(Exception):
    """A service did not start, or an example query answered wrongly."""


def schema_records() -> list[dict[str, Any]]:
    """The three CellCrop schema records (atdata 0.7's flat form): 1.0.0, 1.1.0
    (an optional ``stain``), 2.0.0 (``label`` renamed ``cellType``)."""

    def record(
        version: str, description: str, props: dict[str, Any], required: list[str]
    ) -> dict[str, Any]:
        return {
            "$type": SCHEMA,
            "name": "CellCrop",
            "version": version,
            "schemaType": "jsonSchema",
            "description": description,
            "schema": {
                "$type": "science.alt.dataset.schema#jsonSchemaFormat",
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {
                    "image": {
                        "$ref": _NDARRAY,
                        "dtype": "uint8",
                        "shape": [3, 32, 32],
                        "dimensionNames": ["channel", "y", "x"],
                    },
                    **props,
                    "confidence": {"type": "number"},
                },
                "required": ["image", *required],
                "arrayFormatVersions": {"ndarrayBytes": "1.1.0"},
            },
            "createdAt": _NOW,
            "atdataSchemaVersion": 1,
        }

    return [
        record(
            "1.0.0",
            "A cropped microscopy image of one cell, with its class.",
            {"label": {"type": "string"}},
            ["label"],
        ),
        record(
            "1.1.0",
            "A cropped microscopy image of one cell, with its class and stain.",
            {"label": {"type": "string"}, "stain": {"type": "string"}},
            ["label"],
        ),
        record(
            "2.0.0",
            "A cropped microscopy image of one cell; the class is now cellType.",
            {"cellType": {"type": "string"}, "stain": {"type": "string"}},
            ["cellType"],
        ),
    ]


def _lens_record(source: str, target: str) -> dict[str, Any]:
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
        "description": "label becomes cellType; the image and stain are kept",
        "getterCode": {**code, "path": "cellcrop_lenses.v2:upgrade"},
        "putterCode": {**code, "path": "cellcrop_lenses.v2:downgrade"},
        "language": "python",
        "createdAt": _NOW,
    }


# -- processes ------------------------------------------------------------------------


@dataclass
class _Service:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _wait_for(
    what: str,
    check: Callable[[], _T | None],
    timeout: float,
    services: Sequence[_Service],
) -> _T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in services:
            if s.popen.poll() is not None:
                raise DemoFailed(
                    f"{s.name} exited with status {s.popen.returncode} while waiting "
                    f"for {what}:\n{s.tail()}"
                )
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise DemoFailed(f"timed out after {timeout:g} s waiting for {what}")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Demo:
    """One run of the demo: the cluster, the network, the services, and what was
    published (AT-URIs by role)."""

    work: Path
    port: int
    pg: PostgresCluster
    net: LocalNetwork
    dsn: str = ""
    services: list[_Service] = field(default_factory=list)
    uris: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment of the ingester and the AppView: the database, the
        PDS as the relay, the local PLC directory (both verify signatures)."""
        drop = ("ATDATA_APPVIEW_", "ATDATA_INGEST_")
        base = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        base.pop("DATABASE_URL", None)
        return {
            **base,
            "ATDATA_INGEST_DATABASE_URL": self.dsn,
            "ATDATA_INGEST_RELAY_URL": self.net.pds_url,
            "ATDATA_INGEST_PLC_URL": self.net.plc_url,
            "ATDATA_INGEST_START": "oldest",
            "ATDATA_APPVIEW_DSN": self.dsn,
            "ATDATA_APPVIEW_PLC_URL": self.net.plc_url,
            # handles are verified (handle -> DID by the PDS, alsoKnownAs in PLC)
            "ATDATA_APPVIEW_HANDLE_SERVICE": self.net.pds_url,
            "ATDATA_APPVIEW_PORT": str(self.port),
        }

    def start(self, name: str, argv: list[str]) -> _Service:
        log = self.work / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", *argv],
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        service = _Service(name, popen, log)
        self.services.append(service)
        return service

    def stop(self) -> None:
        """SIGTERM each service (newest first), SIGKILL after 20 s."""
        for s in reversed(self.services):
            if s.popen.poll() is None:
                s.popen.send_signal(signal.SIGTERM)
        for s in reversed(self.services):
            try:
                s.popen.wait(20)
            except subprocess.TimeoutExpired:
                s.popen.kill()
                s.popen.wait(5)

    # -- the steps -------------------------------------------------------------------

    def migrate(self) -> None:
        self.dsn = self.pg.create_database("appview")
        done = subprocess.run(
            [sys.executable, "-m", "atdata_appview", "migrate"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise DemoFailed(f"atdata-appview migrate failed:\n{done.stderr}")

    def start_services(self) -> None:
        self.start("ingester", ["atdata_ingest", "run"])
        self.start("appview", ["atdata_appview", "run"])

        def healthy() -> bool:
            try:
                return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_for("the AppView's /health", healthy, 180, self.services)

    def login(self, account: Account) -> AtmosphereClient:
        return AtmosphereClient.login(
            account.handle,
            account.password,
            session_file=self.work / f"{account.handle}.session",
            resolver=IdentityResolver(
                plc_url=self.net.plc_url, handle_service=self.net.pds_url
            ),
            pds_url=self.net.pds_url,
        )

    def _shards(self, record: dict[str, Any], uri: str, name: str, n: int) -> list[str]:
        cls = compile_schema_record(record, uri=uri)
        rng = np.random.default_rng(len(name))
        classes = ["healthy", "mitotic", "apoptotic"]
        samples = []
        for i in range(n):
            values: dict[str, Any] = {
                "image": rng.integers(0, 255, (3, 32, 32), dtype=np.uint8),
                "confidence": float(rng.random()),
            }
            if "cellType" in record["schema"]["properties"]:
                values["cell_type"] = classes[i % 3]
            else:
                values["label"] = classes[i % 3]
            if "stain" in record["schema"]["properties"]:
                values["stain"] = "DAPI"
            samples.append(cls(**values))
        out = self.work / "shards" / name
        out.mkdir(parents=True, exist_ok=True)
        return write_samples(samples, f"{out}/{name}-%06d.tar", maxcount=8)

    def publish(self) -> None:
        """Publish the example (see the module doc); fills :attr:`uris`."""
        alice = self.net.create_account("alice")
        bob = self.net.create_account("bob")
        self.uris["alice"], self.uris["bob"] = alice.did, bob.did
        a = self.login(alice)
        records = schema_records()
        pubs = publish_schemas(a, records)
        for rec, pub in zip(records, pubs, strict=True):
            self.uris[f"schema {rec['version']}"] = pub.write.uri
        lens = publish_lens(
            a, _lens_record(self.uris["schema 1.1.0"], self.uris["schema 2.0.0"])
        )
        self.uris["lens"] = lens.uri
        journal = self.work / "journal"
        entries = [
            (a, records[0], "cell-crops-train", ["microscopy", "cells"], "CC-BY-4.0",
             "Training crops of fluorescence microscopy cells, three classes."),
            (a, records[1], "cell-crops-stained", ["microscopy", "stain"], "CC0-1.0",
             "DAPI-stained cell crops with the stain recorded."),
            (a, records[2], "cell-crops-v2", ["microscopy", "cells"], "CC-BY-4.0",
             "The cell crops in the 2.0 schema (cellType)."),
            (self.login(bob), records[0], "blood-smear-crops",
             ["microscopy", "hematology"], "CC-BY-SA-4.0",
             "White blood cells cropped from blood smears, in alice's CellCrop."),
        ]  # fmt: skip
        for client, rec, name, tags, licence, description in entries:
            schema_uri = self.uris[f"schema {rec['version']}"]
            result = publish_entry(
                client,
                self._shards(rec, schema_uri, name, 16),
                schema_uri=schema_uri,
                name=name,
                storage=BlobStorage(),
                description=description,
                tags=tags,
                license=licence,
                journal_dir=journal,
            )
            self.uris[name] = result.uri
        label = a.create_record(
            LABEL,
            new_tid(),
            {
                "$type": LABEL,
                "name": "latest",
                "datasetUri": self.uris["cell-crops-v2"],
                "version": "2.0.0",
                "description": "the newest release of the cell crops",
                "createdAt": _NOW,
            },
        )
        self.uris["label"] = label.uri

    # -- the queries -----------------------------------------------------------------

    def query(self, method: str, **params: Any) -> Any:
        r = httpx.get(f"{self.url}{XRPC}{method}", params=params, timeout=10)
        if r.status_code != 200:
            raise DemoFailed(f"{method} {params}: {r.status_code} {r.text[:500]}")
        return r.json()

    def wait_indexed(self, timeout: float = INDEX_TIMEOUT_S) -> None:
        """Until every published record is answered by the AppView."""

        def ready() -> bool:
            try:
                found = self.query("searchDatasets", tags="microscopy", limit=20)
                history = self.query(
                    "getSchemaHistory", name="CellCrop", repo="alice.test"
                )
                self.query("resolveLabel", handle="alice.test", name="latest")
                self.query("getLensPath", **self._path_params())
            except (DemoFailed, httpx.HTTPError):
                return False
            return len(found["entries"]) == 4 and len(history["verdicts"]) == 2

        _wait_for("the example to be indexed", ready, timeout, self.services)

    def _path_params(self) -> dict[str, str]:
        return {
            "sourceSchema": self.uris["schema 1.0.0"],
            "targetSchema": self.uris["schema 2.0.0"],
        }

    def check(self) -> list[str]:
        """Run the example queries and check each answer; return one line per
        check. Raises :class:`DemoFailed` at the first wrong answer."""
        done: list[str] = []

        def expect(ok: bool, what: str, got: Any) -> None:
            if not ok:
                raise DemoFailed(f"{what}: got {json.dumps(got)[:800]}")
            done.append(what)

        def names(body: Any) -> list[str]:
            return sorted(e["name"] for e in body["entries"])

        body = self.query("searchDatasets", q="cell crops")
        expect(
            {"cell-crops-train", "cell-crops-stained", "cell-crops-v2"}
            <= set(names(body)),
            "searchDatasets q='cell crops' finds alice's three entries",
            names(body),
        )
        body = self.query("searchDatasets", tags="hematology")
        expect(
            names(body) == ["blood-smear-crops"],
            "searchDatasets tags=hematology finds bob's entry only",
            names(body),
        )
        body = self.query("searchDatasets", schemaRef=self.uris["schema 1.0.0"])
        expect(
            names(body) == ["blood-smear-crops", "cell-crops-train"],
            "searchDatasets schemaRef=CellCrop 1.0.0 finds both publishers' entries",
            names(body),
        )
        body = self.query("resolveSchema", handle="alice.test", schemaId="CellCrop")
        expect(
            body["uri"] == self.uris["schema 2.0.0"],
            "resolveSchema CellCrop (no version) is the newest, 2.0.0",
            body.get("uri"),
        )
        body = self.query(
            "resolveSchema", handle="alice.test", schemaId="CellCrop", version="1.1.0"
        )
        expect(
            body["uri"] == self.uris["schema 1.1.0"],
            "resolveSchema CellCrop 1.1.0",
            body.get("uri"),
        )
        body = self.query("getSchemaHistory", name="CellCrop", repo="alice.test")
        verdicts = {
            (v["fromVersion"], v["toVersion"]): v.get("neededBump")
            for v in body["verdicts"]
        }
        expect(
            [v["version"] for v in body["versions"]] == ["1.0.0", "1.1.0", "2.0.0"]
            and verdicts == {("1.0.0", "1.1.0"): "minor", ("1.1.0", "2.0.0"): "major"},
            "getSchemaHistory: 3 versions; 1.0.0->1.1.0 needs minor, "
            "1.1.0->2.0.0 needs major",
            body,
        )
        body = self.query("getLensPath", **self._path_params())
        kinds = [(s["kind"], (s.get("lens") or {}).get("uri")) for s in body["steps"]]
        expect(
            kinds == [("structural", None), ("lens", self.uris["lens"])],
            "getLensPath 1.0.0 -> 2.0.0: a structural step, then alice's lens",
            body,
        )
        body = self.query("resolveLabel", handle="alice.test", name="latest")
        expect(
            body["uri"] == self.uris["cell-crops-v2"],
            "resolveLabel alice.test/latest is the 2.0.0 entry",
            body,
        )
        body = self.query("describeService")
        expect(
            body.get("did") == f"did:web:127.0.0.1%3A{self.port}",
            "describeService names the did:web",
            body,
        )
        r = httpx.get(f"{self.url}/", params={"q": "cell"}, timeout=10)
        expect(
            r.status_code == 200 and "cell-crops-train" in r.text,
            "the home page finds the entries",
            r.status_code,
        )
        return done

    def examples(self) -> str:
        """What to try against the running AppView."""
        u = self.url
        v1 = self.uris["schema 1.0.0"]
        lines = [
            f"AppView at {u}  ({self._did()})",
            f"  pages        {u}/",
            f"  health       curl -s {u}/health",
            f"  search       curl -s '{u}{XRPC}searchDatasets?q=cell+crops&tags=microscopy'",
            f"  by schema    curl -s '{u}{XRPC}searchDatasets?schemaRef={v1}'",
            f"  resolve      curl -s '{u}{XRPC}resolveSchema?handle=alice.test&schemaId=CellCrop'",
            f"  history      curl -s '{u}{XRPC}getSchemaHistory?name=CellCrop&repo=alice.test'",
            (f"  lens path    curl -s '{u}{XRPC}getLensPath?sourceSchema={v1}"
            f"&targetSchema={self.uris['schema 2.0.0']}'"),
            f"  label        curl -s '{u}{XRPC}resolveLabel?handle=alice.test&name=latest'",
            (f"  CLI          ATDATA_APPVIEW_URL={u} atdata-gen search 'cell crops' "
            "--tag microscopy"),
            f"  status       ATDATA_APPVIEW_DSN={self.dsn} atdata-appview status",
            f"logs in {self.work}",
        ]  # fmt: skip
        return "\n".join(lines)

    def _did(self) -> str:
        return f"did:web:127.0.0.1%3A{self.port}"


@contextlib.contextmanager
def _terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the demo as Ctrl-C does (cleanly)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/appview [--check] [--port N] [--keep]``; the exit status."""
    parser = argparse.ArgumentParser(
        prog="scripts/appview",
        description="Run the AppView locally on a bundled example: PostgreSQL, a "
        "local PDS and PLC, the ingester, the indexer and the server.",
    )
    parser.add_argument(
        "--check",
        "--once",
        action="store_true",
        help="run the example queries, check the answers and exit (0: all right)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8080,
        help="the AppView's port on 127.0.0.1 (default 8080; 0: any free port)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs, data)"
    )
    args = parser.parse_args(argv)
    port = args.port or free_port()
    if not _port_free(port):
        sys.stderr.write(f"scripts/appview: port {port} is in use (try --port 0)\n")
        return 78
    work = Path(tempfile.mkdtemp(prefix="atdata-appview-demo-"))
    demo: Demo | None = None
    status = 0
    try:
        with (
            _terminated_as_interrupt(),
            PostgresCluster() as pg,
            LocalNetwork.start(work / "net") as net,
        ):
            demo = Demo(work=work, port=port, pg=pg, net=net)
            try:
                print("starting: PostgreSQL, PLC, PDS, ingester, AppView", flush=True)
                demo.migrate()
                demo.start_services()
                print("publishing the example (alice.test, bob.test)", flush=True)
                demo.publish()
                demo.wait_indexed()
                if args.check:
                    for line in demo.check():
                        print(f"ok  {line}")
                    print("all example queries answered correctly")
                else:
                    print(demo.examples())
                    print("Ctrl-C to stop.", flush=True)
                    while all(s.popen.poll() is None for s in demo.services):
                        time.sleep(0.5)
                    raise DemoFailed("a service exited")
            except DemoFailed as exc:
                sys.stderr.write(f"scripts/appview: failed: {exc}\n")
                for s in demo.services:
                    sys.stderr.write(f"--- {s.name} ({s.log}):\n{s.tail()}\n")
                status = 1
            finally:
                demo.stop()
    except KeyboardInterrupt:
        print("stopped")
        if args.check:
            status = 130
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
