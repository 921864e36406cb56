"""Batching policy (optional and ragged array fields), the DataLoader collate, and
field names that clash with the batch API in generated code."""

from __future__ import annotations

import importlib
import json
import os
import pickle
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from atdata_gen.naming import SAMPLE_RESERVED
from atdata_runtime.samples import PackableSample, SampleFormatError
from atdata_runtime.samples.codec import RESERVED_NAMES
from atdata_runtime.shards import Dataset, collate, write_samples
from numpy.typing import NDArray

from .conftest import CORPUS, ROOT, compile_to, flat_schema_record

SHARDS = CORPUS / "atdata" / "shards"


@pytest.fixture(scope="module")
def pkg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    out = tmp_path_factory.mktemp("batching")
    compile_to(out, [CORPUS / "atdata" / "records"], "batching_pkg")
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("batching_pkg.samples.optional_sample_v1_0_0")
    finally:
        sys.path.remove(str(out))


@dataclass(kw_only=True)
class Clip(PackableSample):
    audio: NDArray[np.float32]
    name: str


@dataclass(kw_only=True)
class Fixed(PackableSample):
    frame: NDArray[np.uint8] = field(metadata={"shape": (2, 2)})
    name: str


def _clips() -> list[Clip]:
    return [Clip(audio=np.arange(n, dtype=np.float32), name=f"c{n}") for n in (3, 1, 2)]


def test_atdata_optional_fixture_batches_by_default(pkg: Any) -> None:
    shard = str(SHARDS / "optional-000000.tar")
    batches = list(Dataset[pkg.OptionalSample](shard).ordered(batch_size=2))
    assert [len(b) for b in batches] == [2] * 8
    first = batches[0]
    assert type(first).__name__ == "OptionalSampleBatch"
    assert first.score == [0.0, None]
    assert isinstance(first.mask, list)
    assert first.mask[0].shape == (2, 2) and first.mask[1] is None
    # masks in samples 0, 3, 6, 9, 12, 15: samples 4 and 5 have none
    assert batches[2].mask is None
    assert all(isinstance(b.tokens, list) for b in batches)


def test_atdata_optional_fixture_padded(pkg: Any) -> None:
    shard = str(SHARDS / "optional-000000.tar")
    ds = Dataset[pkg.OptionalSample](shard, ragged="pad")
    first = next(ds.ordered(batch_size=2))
    assert isinstance(first.mask, np.ma.MaskedArray)
    assert first.mask.shape == (2, 2, 2)
    assert not first.mask.mask[0].any() and first.mask.mask[1].all()
    with pytest.raises(SampleFormatError, match=r"'mask'.*None in some samples"):
        list(Dataset[pkg.OptionalSample](shard, ragged="error").ordered(batch_size=2))


def test_ragged_shapes_list_pad_error(tmp_path: Path) -> None:
    shards = write_samples(
        _clips(), str(tmp_path / "r-%06d.tar"), key=lambda i, s: f"k{i}"
    )
    (as_list,) = Dataset[Clip](shards).ordered(batch_size=3)
    assert [a.shape for a in as_list.audio] == [(3,), (1,), (2,)]
    (padded,) = Dataset[Clip](shards, ragged="pad").ordered(batch_size=3)
    assert padded.audio.shape == (3, 3) and padded.audio.dtype == np.float32
    assert padded.audio.mask.tolist() == [
        [False, False, False],
        [False, True, True],
        [False, False, True],
    ]
    assert padded.audio.filled(-1).tolist() == [[0, 1, 2], [0, -1, -1], [0, 1, -1]]
    with pytest.raises(SampleFormatError, match=r"'k1\.msgpack'.*'audio'.*\(1,\)"):
        list(Dataset[Clip](shards, ragged="error").ordered(batch_size=3))
    uniform = [Clip(audio=np.zeros(2, np.float32), name="u")] * 2
    batch = Clip.batch_class().from_samples(uniform, ragged="pad")
    assert type(batch.audio) is np.ndarray and batch.audio.shape == (2, 2)
    with pytest.raises(ValueError, match="ragged"):
        Dataset[Clip](shards, ragged="stack")  # type: ignore[arg-type]


def test_pad_refuses_different_ranks() -> None:
    clips = [
        Clip(audio=np.zeros(2, np.float32), name="a"),
        Clip(audio=np.zeros((2, 2), np.float32), name="b"),
    ]
    with pytest.raises(SampleFormatError, match=r"'1\.msgpack'.*rank or dtype"):
        Clip.batch_class().from_samples(clips, ragged="pad")


def test_a_fixed_shape_required_field_always_stacks() -> None:
    assert Fixed.sample_fields[0].always_stacks
    bad = [
        Fixed(frame=np.zeros((2, 2), np.uint8), name="a"),
        Fixed(frame=np.zeros((3, 3), np.uint8), name="b"),
    ]
    for ragged in ("list", "pad", "error"):
        with pytest.raises(SampleFormatError, match=r"'1\.msgpack'.*'frame'"):
            Fixed.batch_class().from_samples(bad, ragged=ragged)  # type: ignore[arg-type]


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("torch is not installed (scripts/setup installs it in CI)")
        pytest.skip("torch is optional and not installed here")
    return torch


def test_dataloader_with_the_documented_collate(pkg: Any) -> None:
    torch = _torch()
    image_mod = importlib.import_module("batching_pkg.samples.image_sample_v1_0_0")
    ds = Dataset[image_mod.ImageSample](str(SHARDS / "image-000000.tar"))
    with pytest.raises(TypeError, match="ImageSample"):
        next(iter(torch.utils.data.DataLoader(ds.torch(), batch_size=16)))
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(
            ds.torch(),
            batch_size=16,
            collate_fn=ds.collate,
            num_workers=workers,
            multiprocessing_context="fork" if workers else None,
        )
        batches = list(loader)  # one shard, 2 workers: each reads every 2nd sample
        assert len(batches) == max(workers, 1)
        assert sorted(x for b in batches for x in b.label) == sorted(
            s.label for s in ds
        )
        for batch in batches:
            assert type(batch).__name__ == "ImageSampleBatch"
            assert batch.image.shape == (16 // len(batches), 8, 8, 3)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # stacked arrays are writable
                assert torch.from_numpy(batch.image).shape[1:] == (8, 8, 3)
    opt = Dataset[pkg.OptionalSample](str(SHARDS / "optional-000000.tar"))
    loader = torch.utils.data.DataLoader(opt.torch(), batch_size=4, collate_fn=collate)
    assert [len(b) for b in loader] == [4, 4, 4, 4]


@pytest.mark.parametrize("size", [4, 1 << 15])  # small and zero-copy payload paths
def test_writable_arrays_with_copy(size: int) -> None:
    torch = _torch()
    sample = Clip(audio=np.arange(size, dtype=np.float32), name="w")
    payload = sample.pack()
    view = Clip.unpack(payload)
    assert not view.audio.flags.writeable  # torch.from_numpy warns (once a process)
    copied = Clip.unpack(payload, copy=True)
    assert copied.audio.flags.writeable and copied == sample
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.from_numpy(copied.audio)


def test_batches_pickle_also_generic_ones() -> None:
    batch = Clip.batch_class().from_samples(_clips())
    back = pickle.loads(pickle.dumps(batch))
    assert type(back) is Clip.batch_class() and back.name == ["c3", "c1", "c2"]
    assert [a.tolist() for a in back.audio] == [a.tolist() for a in batch.audio]


def test_collate_refuses_mixed_or_no_samples() -> None:
    with pytest.raises(ValueError, match="no samples"):
        collate([])
    with pytest.raises(TypeError, match="different classes"):
        collate([_clips()[0], Fixed(frame=np.zeros((2, 2), np.uint8), name="f")])


def test_compiler_escapes_every_name_the_runtime_reserves() -> None:
    assert RESERVED_NAMES <= SAMPLE_RESERVED


def test_field_names_of_the_batch_api_are_escaped(tmp_path: Path) -> None:
    wire = ["samples", "keys", "sample_type", "from_samples", "batch_class"]
    record = flat_schema_record(
        "Clash", "1.0.0", {w: {"type": "integer"} for w in wire}
    )
    (tmp_path / "clash.json").write_text(json.dumps(record))
    out = tmp_path / "out"
    compile_to(out, [tmp_path / "clash.json"], "clash_pkg")
    sys.path.insert(0, str(out))
    try:
        mod = importlib.import_module("clash_pkg.samples.clash_v1_0_0")
    finally:
        sys.path.remove(str(out))
    assert [f.name for f in mod.Clash.sample_fields] == [f"{w}_" for w in wire]
    assert [f.wire for f in mod.Clash.sample_fields] == wire
    samples = [mod.Clash(**{f"{w}_": i for w in wire}) for i in range(2)]
    batch = mod.ClashBatch.from_samples(samples, keys=["a", "b"])
    assert batch.keys == ["a", "b"] and batch.samples == samples
    assert batch.keys_ == [0, 1] and batch.from_samples_ == [0, 1]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "-p",
            "clash_pkg",
        ],
        cwd=out,
        capture_output=True,
        text=True,
        env=dict(os.environ, MYPYPATH=""),
    )
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_a_batch_class_declared_after_first_use_takes_over() -> None:
    from dataclasses import dataclass

    from atdata_runtime.samples import PackableSample, SampleBatch
    from atdata_runtime.shards import collate

    @dataclass(kw_only=True)
    class Late(PackableSample):
        x: int

    generic = Late.batch_class()  # e.g. an earlier Dataset iteration

    class LateBatch(SampleBatch[Late]):
        x: list[int]

    assert generic is not LateBatch
    assert Late.batch_class() is LateBatch
    assert type(collate([Late(x=1), Late(x=2)])) is LateBatch
