"""The network commands end to end on the real local PDS: ``publish schema`` (with
the compatibility check against the previous version), ``publish entry``, ``pull``
into a project's lock, ``build`` / ``build --frozen`` from the lock, and loading
through the generated class the lock pins."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from atdata_gen.testing.localnet import Account, LocalNetwork, free_port
from atdata_runtime.atmosphere import AtmosphereClient, IdentityResolver
from atdata_runtime.atmosphere.load import resolve_dataset

from .conftest import CORPUS, run_cli

RECORDS = CORPUS / "atdata" / "records"
SHARDS = CORPUS / "atdata" / "shards"


@pytest.fixture
def account(net: LocalNetwork) -> Account:
    return net.create_account(f"cli{free_port()}")


def run(
    args: list[str], cwd: Path, net: LocalNetwork, account: Account, home: Path
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        args,
        cwd,
        ATDATA_HANDLE=account.handle,
        ATDATA_PASSWORD=account.password,
        ATDATA_PDS_URL=net.pds_url,
        ATDATA_PLC_URL=net.plc_url,
        ATDATA_HANDLE_SERVICE=net.pds_url,
        XDG_STATE_HOME=str(home),
    )


def test_publish_pull_build_frozen_load(
    net: LocalNetwork,
    account: Account,
    tmp_path: Path,
) -> None:
    home = tmp_path / "state"
    pub = run(
        ["publish", "schema", str(RECORDS / "ImageSample.schema.json")],
        tmp_path,
        net,
        account,
        home,
    )
    assert pub.returncode == 0, pub.stderr
    uri = pub.stdout.split("published: ")[1].split()[0]
    assert uri.endswith("/science.alt.dataset.schema/ImageSample:1.0.0")
    # atdata's flat record went out in the pinned lexicons' form, the envelope;
    # the same schema in the flat form is the same version, not a conflict.
    flat = run(
        [
            "publish",
            "schema",
            "--schema-form",
            "flat",
            str(RECORDS / "ImageSample.schema.json"),
        ],
        tmp_path,
        net,
        account,
        home,
    )
    assert flat.returncode == 0 and f"already published: {uri}" in flat.stdout
    sessions = list((home / "atdata-gen" / "sessions").iterdir())
    assert len(sessions) == 1 and (sessions[0].stat().st_mode & 0o777) == 0o600
    assert account.password not in sessions[0].read_text()

    entry = run(
        [
            "publish",
            "entry",
            str(SHARDS / "image-000000.tar"),
            "--schema",
            uri,
            "--name",
            "imgs",
            "--blobs",
        ],
        tmp_path,
        net,
        account,
        home,
    )
    assert entry.returncode == 0, entry.stderr
    entry_uri = entry.stdout.split()[-1]

    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[tool.atdata-gen]\nsources = []\nout = "gen"\npackage = "labschemas"\n'
        f'schemas = ["{uri}"]\n'
    )
    frozen = run(["build", "--frozen"], project, net, account, home)
    assert frozen.returncode == 1 and "LOCK_MISSING" in frozen.stderr
    pull = run(["pull"], project, net, account, home)
    assert pull.returncode == 0, pull.stderr
    lock_text = (project / "atdata-gen.lock").read_text()
    assert json.loads(lock_text)["schemas"][0]["uri"] == uri
    pinned = json.loads(lock_text)["schemas"][0]["value"]
    assert pinned["schema"]["draft"] == "draft-07" and "content" in pinned["schema"]
    assert pinned["$atdataSchemaVersion"] == 1
    again = run(["pull", "--update"], project, net, account, home)
    assert (
        again.returncode == 0 and (project / "atdata-gen.lock").read_text() == lock_text
    )
    built = run(["build", "--frozen"], project, net, account, home)
    assert built.returncode == 0, built.stderr
    samples = project / "gen" / "labschemas" / "samples"
    (module,) = samples.glob("image_sample_v*.py")
    assert (
        "from .image_sample_v1_0_0 import" in (samples / "image_sample.py").read_text()
    )
    assert "class ImageSample(_sample.PackableSample[" in module.read_text()
    assert uri in module.read_text()

    # The generated class pinned by the lock is the one the loader uses.
    sys.path.insert(0, str(project / "gen"))
    try:
        reader = AtmosphereClient(
            resolver=IdentityResolver(plc_url=net.plc_url, handle_service=net.pds_url)
        )
        resolved = resolve_dataset(
            entry_uri, client=reader, lock=project / "atdata-gen.lock"
        )
        assert resolved.class_source == "lock"
        assert resolved.sample_type.__module__.startswith("labschemas.samples")
    finally:
        sys.path.remove(str(project / "gen"))

    # A pinned record edited by hand is caught.
    data = json.loads(lock_text)
    data["schemas"][0]["value"]["name"] = "Other"
    (project / "atdata-gen.lock").write_text(json.dumps(data, indent=2))
    broken = run(["build"], project, net, account, home)
    assert (
        broken.returncode == 2 and "LOCK_CID_MISMATCH" in broken.stderr + broken.stdout
    )


def test_publish_refuses_breaking_minor_bump(
    net: LocalNetwork,
    account: Account,
    tmp_path: Path,
) -> None:
    home = tmp_path / "state"
    v1 = json.loads((RECORDS / "ScalarSample.schema.json").read_text())
    first = run(
        ["publish", "schema", str(RECORDS / "ScalarSample.schema.json")],
        tmp_path,
        net,
        account,
        home,
    )
    assert first.returncode == 0, first.stderr
    v2 = json.loads(json.dumps(v1))
    removed = min(v2["schema"]["properties"])
    del v2["schema"]["properties"][removed]
    v2["schema"]["required"] = [
        r for r in v2["schema"].get("required", []) if r != removed
    ]
    v2["version"] = "1.1.0"
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(v2))
    refused = run(["publish", "schema", str(path)], tmp_path, net, account, home)
    assert refused.returncode == 2
    assert "refusing to publish ScalarSample 1.1.0" in refused.stderr
    assert "SCHEMA_VERSION_BUMP_TOO_SMALL" in refused.stderr
    v2["version"] = "2.0.0"
    path.write_text(json.dumps(v2))
    ok = run(["publish", "schema", str(path)], tmp_path, net, account, home)
    assert ok.returncode == 0, ok.stderr
    changed = dict(v1, description="edited after publication")
    path.write_text(json.dumps(changed))
    conflict = run(["publish", "schema", str(path)], tmp_path, net, account, home)
    assert conflict.returncode == 2 and "SCHEMA_VERSION_CONFLICT" in conflict.stderr
    # …naming what differs (issue 13 § 5)
    assert '(/description: "scalar fields" != "edited after publication")' in (
        conflict.stderr
    )
