"""Packaging: both wheels build, and the runtime wheel alone (no compiler, no extras)
is enough for training code: it imports a generated package, validates a record with
the shipped ``science.alt.dataset.*`` models, writes and reads shards, and reads
atdata 0.7's own shards. The wheels are built and installed for real (``uv build``,
``uv pip install`` into fresh venvs); dependencies come from the package index."""

from __future__ import annotations

import json
import re
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from .conftest import CORPUS, ROOT, make_venv, run_cli

pytestmark = pytest.mark.slow

ATDATA = CORPUS / "atdata"


def _wheel(wheels: Path, name: str) -> zipfile.ZipFile:
    (path,) = wheels.glob(f"{name}-*.whl")
    return zipfile.ZipFile(path)


def test_each_wheel_holds_one_distribution(wheels: Path) -> None:
    runtime = _wheel(wheels, "atdata_runtime").namelist()
    compiler = _wheel(wheels, "atdata_gen").namelist()
    assert not [n for n in runtime if n.startswith("atdata_gen/")]
    assert not [n for n in compiler if n.startswith("atdata_runtime/")]
    # The shipped science.alt.dataset models live inside the runtime, under a name
    # that a user's build (default package atdata_lexicons) cannot shadow.
    assert "atdata_runtime/lexicons/science/alt/dataset/schema.py" in runtime
    assert not [n for n in runtime + compiler if n.startswith("atdata_lexicons/")]
    for names in (runtime, compiler):
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    meta = _wheel(wheels, "atdata_gen").read(
        next(n for n in compiler if n.endswith(".dist-info/METADATA"))
    )
    assert b"Requires-Dist: atdata-runtime[atproto]==" in meta
    core = _wheel(wheels, "atdata_runtime").read(
        next(n for n in runtime if n.endswith(".dist-info/METADATA"))
    )
    required = [
        re.split(rb"[<>=!~;\[ ]", line.split(b":", 1)[1].strip())[0]
        for line in core.splitlines()
        if line.startswith(b"Requires-Dist:") and b"extra ==" not in line
    ]
    assert sorted(required) == sorted(
        [b"braceexpand", b"msgpack", b"numpy", b"pydantic", b"regex", b"tqdm"]
    )


TRAINING = r"""
import importlib.util, json, sys
from pathlib import Path
from typing import Any
import numpy as np
from atdata_runtime.shards import Dataset, write_samples
from atdata_runtime.lexicons.science.alt.dataset.schema import Schema
from userpkg.samples.image_sample_v1_0_0 import ImageSample

args = json.loads(sys.argv[1])
samples = [
    ImageSample(image=np.full((2, 3), i, dtype=np.uint8), label=f"s{i}")
    for i in range(10)
]
shards = write_samples(samples, str(Path(args["out"]) / "d-%06d.tar"), maxcount=4)
back = list(Dataset[ImageSample](shards))
theirs = list(Dataset[ImageSample](args["atdata_shard"]))
record = json.loads(Path(args["record"]).read_text())
Schema.model_validate(record)  # atdata 0.7's record, through the shipped models
absent = [m for m in args["absent"] if importlib.util.find_spec(m) is not None]
print(json.dumps({
    "shards": len(shards),
    "same": back == samples,
    "theirs": len(theirs),
    "first_label": theirs[0].label,
    "present_but_should_not_be": absent,
}))
"""


def test_runtime_wheel_alone_runs_training_code(wheels: Path, tmp_path: Path) -> None:
    python = make_venv(tmp_path / "venv", wheels, "atdata-runtime")
    # The user's build (the compiler, here from the source tree) into their package.
    proc = run_cli(
        [
            "build",
            str(ATDATA / "records" / "ImageSample.schema.json"),
            "--out",
            str(tmp_path / "gen"),
            "--package",
            "userpkg",
            "-q",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "out").mkdir()
    args = {
        "out": str(tmp_path / "out"),
        "atdata_shard": str(ATDATA / "shards" / "image-000000.tar"),
        "record": str(ATDATA / "records" / "ImageSample.schema.json"),
        "absent": ["atdata_gen", "libcst", "click", "ruff", "httpx", "fsspec"]
        + ["s3fs", "botocore", "aiohttp", "atproto", "webdataset", "hypothesis"],
    }
    run = subprocess.run(
        [str(python), "-c", TRAINING, json.dumps(args)],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "gen")},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert got == {
        "shards": 3,
        "same": True,
        "theirs": 16,
        "first_label": got["first_label"],
        "present_but_should_not_be": [],
    }
    assert isinstance(got["first_label"], str) and got["first_label"]


MISSING_EXTRA = r"""
from atdata_runtime.shards import Dataset
try:
    Dataset.from_atproto("at://did:plc:abc/science.alt.dataset.entry/x")
except ImportError as exc:
    print(exc)
"""

NO_COMPILER = r"""
from atdata_runtime.atmosphere.client import FetchedRecord
from atdata_runtime.atmosphere.errors import AtmosphereError
from atdata_runtime.atmosphere.load import _compile_in_process

record = FetchedRecord(uri="at://did:plc:abc/science.alt.dataset.schema/x", cid="bafy", value={})
try:
    _compile_in_process(record)
except AtmosphereError as exc:
    print(exc.rule, "|", exc)
"""


def test_missing_extras_and_compiler_say_what_to_install(
    wheels: Path, tmp_path: Path
) -> None:
    core = make_venv(tmp_path / "core", wheels, "atdata-runtime")
    run = subprocess.run(
        [str(core), "-c", MISSING_EXTRA], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "pip install 'atdata-runtime[atproto]'" in run.stdout
    net = make_venv(tmp_path / "net", wheels, "atdata-runtime[atproto]")
    run = subprocess.run([str(net), "-c", NO_COMPILER], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rule, _, message = run.stdout.partition(" | ")
    assert rule == "COMPILER_NOT_INSTALLED"
    assert "pip install atdata-gen" in message


def test_the_pre_commit_bundle_has_the_members_dependencies() -> None:
    """The root distribution (what pre-commit installs from this repository) lists
    exactly the runtime's core and atproto dependencies plus the compiler's."""
    import tomllib

    def load(path: Path) -> dict[str, Any]:
        return tomllib.loads(path.read_text(encoding="utf-8"))["project"]  # type: ignore[no-any-return]

    root = load(ROOT / "pyproject.toml")
    runtime = load(ROOT / "runtime" / "pyproject.toml")
    compiler = load(ROOT / "compiler" / "pyproject.toml")
    members = {
        *runtime["dependencies"],
        *runtime["optional-dependencies"]["atproto"],
        *(d for d in compiler["dependencies"] if not d.startswith("atdata-runtime")),
    }
    assert set(root["dependencies"]) == members
    assert root["scripts"] == compiler["scripts"]
    assert root["version"] == runtime["version"] == compiler["version"]
    assert f"atdata-runtime[atproto]=={runtime['version']}" in compiler["dependencies"]
