"""A throwaway downstream repository, as a new user makes one: installed from the
**wheels** (never the source tree), configured in its own ``pyproject.toml``, kept
fresh by our pre-commit hooks through ``pre-commit try-repo`` (from the very first
commit), with training code that installs only the light runtime.

Everything runs for real: ``uv build``, fresh venvs, ``git``, ``pre-commit`` (which
pip-installs this repository's root, the hook bundle), atdata 0.7's own schema
records and shards from the shared corpus.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..conftest import CORPUS, ROOT, make_venv
from ..test_typing import pyright

pytestmark = pytest.mark.slow

ATDATA = CORPUS / "atdata"
PYPROJECT = """\
[project]
name = "mylab"
version = "0.0.1"

[tool.atdata-gen]
sources = ["schemas"]
out = "src"
package = "mylab_types"
"""


@dataclass
class Downstream:
    repo: Path
    bin: Path
    env: dict[str, str]

    def run(
        self, *args: str, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        exe = args[0] if args[0] == "git" else str(self.bin / args[0])
        return subprocess.run(
            [exe, *args[1:]],
            cwd=cwd or self.repo,
            env=self.env,
            capture_output=True,
            text=True,
        )

    def git(self, *args: str) -> None:
        proc = self.run("git", *args)
        assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def dev_venv(wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The developer's environment: atdata-gen from the wheel, pre-commit, mypy, and
    torch (the training script's type checks need its types)."""
    where = tmp_path_factory.mktemp("dev") / "venv"
    make_venv(where, wheels, "atdata-gen", "pre-commit", "mypy", _torch_wheel())
    return where / "bin"


@pytest.fixture
def downstream(dev_venv: Path, tmp_path: Path) -> Iterator[Downstream]:
    repo = tmp_path / "mylab"
    (repo / "schemas").mkdir(parents=True)
    for name in ("ImageSample", "OptionalSample", "ScalarSample", "ListSample"):
        shutil.copy(ATDATA / "records" / f"{name}.schema.json", repo / "schemas")
    (repo / "pyproject.toml").write_text(PYPROJECT, encoding="utf-8")
    env = {
        "PATH": f"{dev_venv}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-cache"),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    for key in ("UV_CACHE_DIR", "PIP_INDEX_URL", "PIP_FIND_LINKS", "LANG"):
        if key in os.environ:
            env[key] = os.environ[key]
    d = Downstream(repo, dev_venv, env)
    d.git("init", "-q", "-b", "main")
    yield d


def test_builds_from_its_pyproject(downstream: Downstream) -> None:
    (downstream.repo / "schemas" / "nested").mkdir()
    proc = downstream.run(
        "atdata-gen", "build", cwd=downstream.repo / "schemas" / "nested"
    )
    assert proc.returncode == 0, proc.stderr
    pkg = downstream.repo / "src" / "mylab_types" / "samples"
    assert (pkg / "image_sample_v1_0_0.py").is_file()
    assert (pkg / "optional_sample_v1_0_0.py").is_file()
    again = downstream.run("atdata-gen", "build", "--format", "json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "up-to-date"


def test_a_typo_in_the_config_deletes_nothing(downstream: Downstream) -> None:
    assert downstream.run("atdata-gen", "build", "-q").returncode == 0
    before = sorted(
        p.name for p in (downstream.repo / "src" / "mylab_types").rglob("*")
    )
    pyproject = downstream.repo / "pyproject.toml"
    pyproject.write_text(PYPROJECT.replace("sources =", "sourcse ="), encoding="utf-8")
    proc = downstream.run("atdata-gen", "build")
    assert proc.returncode == 2
    assert "sourcse" in proc.stderr and "sources" in proc.stderr
    assert "pyproject.toml:6" in proc.stderr
    assert "Traceback" not in proc.stderr
    after = sorted(p.name for p in (downstream.repo / "src" / "mylab_types").rglob("*"))
    assert after == before


def test_a_wrong_path_is_a_located_error(downstream: Downstream) -> None:
    (downstream.repo / "src").write_text("not a directory\n", encoding="utf-8")
    proc = downstream.run("atdata-gen", "build")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "src" in proc.stderr
    assert (downstream.repo / "src").read_text(encoding="utf-8") == "not a directory\n"
    missing = downstream.run("atdata-gen", "build", "schemaz", "--out", "o")
    assert missing.returncode == 2 and "schemaz" in missing.stderr
    assert "Traceback" not in missing.stderr


def _hooks(d: Downstream, *hook: str) -> subprocess.CompletedProcess[str]:
    """This repository's hooks (all three, or ``hook``), as pre-commit runs them."""
    return d.run("pre-commit", "try-repo", str(ROOT), *hook, "--all-files", "--verbose")


def test_pre_commit_hooks_from_the_first_commit(downstream: Downstream) -> None:
    d = downstream
    d.git("add", "-A")
    # No commit yet: build writes the package, check and compat pass.
    first = _hooks(d)
    assert "atdata-gen check (no breaking" in first.stdout, first.stdout + first.stderr
    assert first.returncode == 0, first.stdout + first.stderr
    assert (
        d.repo / "src" / "mylab_types" / "samples" / "image_sample_v1_0_0.py"
    ).exists()
    d.git("add", "-A")
    d.git("commit", "-q", "-m", "types")
    # A breaking change without a major bump fails the compat hook…
    path = d.repo / "schemas" / "ImageSample.schema.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    del record["schema"]["properties"]["label"]
    record["schema"]["required"] = ["image"]
    record["version"] = "1.1.0"
    path.write_text(json.dumps(record, indent=2), encoding="utf-8")
    d.git("add", "-A")
    broken = _hooks(d, "atdata-gen-compat")
    assert broken.returncode != 0
    assert "FIELD_DELETED" in broken.stdout, broken.stdout
    # …and so does the freshness check, until the build hook has run.
    assert _hooks(d, "atdata-gen-check").returncode != 0
    # A declared major version passes compat, pointing at new-lens.
    record["version"] = "2.0.0"
    path.write_text(json.dumps(record, indent=2), encoding="utf-8")
    d.git("add", "-A")
    major = _hooks(d, "atdata-gen-compat")
    assert major.returncode == 0, major.stdout + major.stderr
    assert "new-lens" in major.stdout, major.stdout
    # The build hook regenerates (and fails, as formatters do, because it changed
    # files); once they are staged, the freshness check passes.
    built = _hooks(d, "atdata-gen-build")
    assert built.returncode != 0 and "files were modified" in built.stdout
    d.git("add", "-A")
    fresh = _hooks(d, "atdata-gen-check")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    samples = d.repo / "src" / "mylab_types" / "samples"
    assert (samples / "image_sample_v2_0_0.py").exists()


TRAIN = """\
\"\"\"The user's training script: typed samples and batches from atdata's own shards,
then a torch DataLoader through the documented collate.\"\"\"

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import assert_type

import torch
from atdata_runtime.shards import Dataset
from torch.utils.data import DataLoader

from mylab_types.samples.image_sample import ImageSample, ImageSampleBatch
from mylab_types.samples.list_sample import ListSample, ListSampleBatch
from mylab_types.samples.optional_sample import OptionalSample, OptionalSampleBatch
from mylab_types.samples.scalar_sample import ScalarSample, ScalarSampleBatch

shards = sys.argv[1]
images = Dataset[ImageSample](f"{shards}/image-000000.tar")
assert_type(images.ordered(), Iterator[ImageSample])
assert_type(images.ordered(batch_size=4), Iterator[ImageSampleBatch])
first = next(iter(images))
assert_type(first.label, str)
counts: dict[str, int] = {}
for batch in images.ordered(batch_size=4):
    assert_type(batch, ImageSampleBatch)
    assert_type(batch.label, list[str])
    counts["image"] = counts.get("image", 0) + len(batch.label)
for sbatch in Dataset[ScalarSample](f"{shards}/scalar-000000.tar").ordered(batch_size=5):
    assert_type(sbatch, ScalarSampleBatch)
    counts["scalar"] = counts.get("scalar", 0) + len(sbatch.samples)
for lbatch in Dataset[ListSample](f"{shards}/list-000000.tar").ordered(batch_size=3):
    assert_type(lbatch, ListSampleBatch)
    counts["list"] = counts.get("list", 0) + len(lbatch.samples)
optional = Dataset[OptionalSample](f"{shards}/optional-000000.tar")
for obatch in optional.shuffled(seed=7, batch_size=2):
    assert_type(obatch, OptionalSampleBatch)
    counts["optional"] = counts.get("optional", 0) + len(obatch.caption)
loader = DataLoader(images.torch(), batch_size=8, collate_fn=images.collate)
seen = 0
for tbatch in loader:
    tensor = torch.from_numpy(tbatch.image)
    seen += int(tensor.shape[0])
counts["torch"] = seen
print(sorted(counts.items()))
"""


def _torch_wheel() -> str:
    """The CPU torch wheel this machine kind keeps on disk (as scripts/setup uses
    it): a training venv must not download a multi-GB CUDA build."""
    found = sorted(Path("/opt/wheels").glob("torch-*cp311*.whl"))
    assert found, "no torch wheel in /opt/wheels (scripts/setup installs torch from it)"
    return str(found[0])


def test_training_code_type_checks_and_runs_on_the_runtime_alone(
    downstream: Downstream, wheels: Path, tmp_path: Path
) -> None:
    d = downstream
    assert d.run("atdata-gen", "build", "-q").returncode == 0
    train = d.repo / "train.py"
    train.write_text(TRAIN, encoding="utf-8")
    # mypy --strict, in the developer's venv (atdata-gen brings the runtime).
    d.env["MYPYPATH"] = str(d.repo / "src")
    mypy = d.run("mypy", "--strict", "--no-incremental", "train.py")
    assert mypy.returncode == 0, mypy.stdout
    # pyright (strict), from npm, pinned.
    (d.repo / "pyrightconfig.json").write_text(
        json.dumps(
            {
                "extraPaths": ["src"],
                "typeCheckingMode": "strict",
                "reportMissingTypeStubs": False,
                "reportUnknownMemberType": False,
                "reportUnknownVariableType": False,
                "reportUnknownArgumentType": False,
            }
        ),
        encoding="utf-8",
    )
    report, problems = pyright(
        ["train.py"],
        project=d.repo / "pyrightconfig.json",
        python=str(d.bin / "python"),
        cwd=d.repo,
    )
    assert problems == []
    assert report["summary"]["filesAnalyzed"] == 1
    # Run it where only the light runtime (and torch) is installed.
    python = make_venv(
        tmp_path / "train-venv", wheels, "atdata-runtime", _torch_wheel()
    )
    run = subprocess.run(
        [str(python), "-W", "error::UserWarning", str(train), str(ATDATA / "shards")],
        cwd=d.repo,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(d.repo / "src")},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(
        [("image", 16), ("list", 16), ("optional", 16), ("scalar", 16), ("torch", 16)]
    )
