"""Interoperability with atdata 0.7.0b1 over the network: both libraries publish to
and read from the same real local PDS (``net``), each in its own process.

* atdata publishes a schema and two entries per class (the shard as a PDS blob, and
  the shard's HTTP URL with atdata's placeholder checksum) → ``atdata-gen pull`` pins
  the schemas, ``build --frozen`` compiles them, and ``load_dataset`` reads both
  entries (blobs through the class the lock pins, HTTP through a class compiled in
  process) equal field by field to what atdata wrote;
* we publish the same classes and entries from our account → atdata's
  ``SchemaLoader`` fetches our schema records unchanged, builds its own types from
  them, and its loaders read our blob and HTTP entries equal field by field.
"""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from atdata_gen.testing.httpdir import serve_directory
from atdata_gen.testing.localnet import Account, LocalNetwork, free_port
from atdata_runtime.atmosphere import AtmosphereClient, IdentityResolver
from atdata_runtime.atmosphere.load import load_dataset, resolve_dataset
from atdata_runtime.atmosphere.publish import (
    BlobStorage,
    HttpStorage,
    publish_entry,
    publish_schema,
)
from atdata_runtime.samples.schema import schema_record
from atdata_runtime.shards import write_samples

from .conftest import run_cli, side
from .test_atdata_interop import CLASSES, _equal, _from_json, _samples, _to_json

PACKAGE = "atdata_pds_pkg"


def _cli(
    args: list[str], cwd: Path, net: LocalNetwork
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        args,
        cwd,
        ATDATA_PDS_URL=net.pds_url,
        ATDATA_PLC_URL=net.plc_url,
        ATDATA_HANDLE_SERVICE=net.pds_url,
    )


def _job(net: LocalNetwork, account: Account, **kw: Any) -> dict[str, Any]:
    return {
        "pds": net.pds_url,
        "did": account.did,
        "handle": account.handle,
        "password": account.password,
        "class": "",
        **kw,
    }


@pytest.fixture(scope="module")
def atdata_published(
    net: LocalNetwork, atdata_python: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """atdata's account, its published URIs per class, and the project where we
    pulled and built its schemas (the HTTP shards stay served for the module)."""
    account = net.create_account(f"atdata{free_port()}")
    shards = tmp_path_factory.mktemp("atdata_pds_shards")
    with serve_directory(shards) as base:
        jobs = [
            _job(
                net,
                account,
                command="publish",
                **{"class": name},
                path=str(shards),
                http_base=base,
                data=[{k: _to_json(v) for k, v in s.items()} for s in _samples(name)],
            )
            for name in CLASSES
        ]
        uris = dict(zip(CLASSES, side(atdata_python, "batch", data=jobs), strict=True))
        project = tmp_path_factory.mktemp("atdata_pds_project")
        schemas = ", ".join(f'"{u["schema"]}"' for u in uris.values())
        (project / "pyproject.toml").write_text(
            f'[tool.atdata-gen]\nsources = []\nout = "gen"\npackage = "{PACKAGE}"\n'
            f"schemas = [{schemas}]\n"
        )
        for step in (["pull"], ["build", "--frozen"]):
            proc = _cli(step, project, net)
            assert proc.returncode == 0, proc.stderr + proc.stdout
        sys.path.insert(0, str(project / "gen"))
        try:
            yield {"account": account, "uris": uris, "project": project}
        finally:
            sys.path.remove(str(project / "gen"))


def _reader(net: LocalNetwork) -> AtmosphereClient:
    return AtmosphereClient(
        resolver=IdentityResolver(plc_url=net.plc_url, handle_service=net.pds_url)
    )


@pytest.mark.parametrize("name", CLASSES)
def test_atdata_publishes_we_pull_build_and_load(
    net: LocalNetwork,
    atdata_published: dict[str, Any],
    name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    uris = atdata_published["uris"][name]
    account = atdata_published["account"]
    assert all(u.startswith(f"at://{account.did}/") for u in uris.values())
    # atdata keys its schema records by TID; we found them by AT-URI all the same.
    assert ":" not in uris["schema"].rsplit("/", 1)[1]
    lock = atdata_published["project"] / "atdata-gen.lock"
    client = _reader(net)

    blobs = resolve_dataset(uris["blobs"], client=client, lock=lock)
    assert blobs.class_source == "lock"
    assert blobs.sample_type.__module__.startswith(f"{PACKAGE}.samples.")
    assert blobs.sample_type.__name__ == name and not blobs.unverified

    http = resolve_dataset(uris["http"], client=client, lock=None)
    assert http.class_source == "dynamic" and http.urls[0].startswith("http://")
    assert http.unverified == http.urls  # atdata's placeholder {"algorithm": "none"}

    want = _samples(name)
    for uri, lock_path in ((uris["blobs"], lock), (uris["http"], None)):
        with caplog.at_level(logging.WARNING, "atdata_runtime.atmosphere"):
            got = list(load_dataset(uri, client=client, lock=lock_path, progress=False))
        assert len(got) == len(want)
        for sample, values in zip(got, want, strict=True):
            for spec in type(sample).sample_fields:
                assert _equal(getattr(sample, spec.name), values.get(spec.wire)), (
                    uri,
                    spec.wire,
                )
    assert "read unverified" in caplog.text


def test_we_publish_atdata_loads(
    net: LocalNetwork,
    atdata_python: str,
    atdata_published: dict[str, Any],
    tmp_path: Path,
) -> None:
    account = net.create_account(f"ours{free_port()}")
    client = AtmosphereClient.login(
        account.handle,
        account.password,
        pds_url=net.pds_url,
        resolver=IdentityResolver(plc_url=net.plc_url, handle_service=net.pds_url),
        save_session=False,
    )
    classes = {}
    for name in CLASSES:
        module = importlib.import_module(
            f"{PACKAGE}.samples."
            + next(
                p.stem
                for p in (
                    atdata_published["project"] / "gen" / PACKAGE / "samples"
                ).glob("*.py")
                if f"class {name}(" in p.read_text()
            )
        )
        classes[name] = getattr(module, name)
    written: dict[str, list[Any]] = {}
    jobs = []
    with serve_directory(tmp_path) as base:
        for name, cls in classes.items():
            wire_to_py = {f.wire: f.name for f in cls.sample_fields}
            written[name] = [
                cls(**{wire_to_py[k]: v for k, v in s.items()}) for s in _samples(name)
            ]
            (shard,) = write_samples(
                written[name], str(tmp_path / f"{name}-%06d.tar"), progress=False
            )
            # atdata 0.7 reads only the flat form (README "Publish and load")
            pub = publish_schema(client, schema_record(cls, form="flat"))
            assert pub.write.created
            entries = [
                publish_entry(
                    client,
                    [shard],
                    schema_uri=pub.write.uri,
                    name=f"{name} {kind}",
                    storage=storage,
                    journal_dir=tmp_path / f"journal-{kind}",
                ).uri
                for kind, storage in (
                    ("blobs", BlobStorage()),
                    ("http", HttpStorage([f"{base}/{Path(shard).name}"])),
                )
            ]
            jobs.append(
                _job(
                    net,
                    account,
                    command="load",
                    **{"class": name},
                    schema=pub.write.uri,
                    own_schema=atdata_published["uris"][name]["schema"],
                    entries=entries,
                    published=client.get_record(pub.write.uri).value,
                )
            )
        results = side(atdata_python, "batch", data=jobs)
    dynamic = 0
    for name, job, result in zip(classes, jobs, results, strict=True):
        assert result["schema"] == job["published"], name
        # atdata builds a dataclass with fields in the record's property order, and
        # a PDS returns properties in DAG-CBOR key order: where an optional field
        # sorts before a required one, atdata cannot build a type from any record
        # read back from a PDS, its own included. It then reads with its class.
        assert result["own_type_error"] == result["type_error"], name
        if _optional_before_required(result["schema"]["schema"]):
            assert "follows default argument" in result["type_error"], name
        else:
            assert result["type_error"] is None and result["type"] == name
            dynamic += 1
        assert set(result["entries"]) == set(job["entries"])
        cls = classes[name]
        for uri, loaded in result["entries"].items():
            assert loaded["record"]["schemaRef"] == job["schema"]
            assert len(loaded["samples"]) == len(written[name]), uri
            for got, want in zip(loaded["samples"], written[name], strict=True):
                for spec in cls.sample_fields:
                    assert _equal(
                        _from_json(got.get(spec.wire)), getattr(want, spec.name)
                    ), (uri, spec.wire)
    assert dynamic >= len(CLASSES) // 2


def _optional_before_required(schema: dict[str, Any]) -> bool:
    required = set(schema.get("required", []))
    flags = [p in required for p in schema["properties"]]
    return any(not a and b for i, a in enumerate(flags) for b in flags[i + 1 :])
