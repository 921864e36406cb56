"""Memory and ordering of verified reads (``verify="before"``, the default for a
record's shards) over HTTP: what is held does not grow with the number of shards,
a tampered shard is refused in shard order even though the next shard is fetched
ahead, a consumer that stops early leaves no download running, and iterating does
not import torch. Structural properties only: nothing here is timed."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from atdata_gen.dynamic import compile_schema_record
from atdata_gen.testing.httpdir import serve_directory
from atdata_runtime.net.fetch import INSECURE_LOOPBACK_ENV
from atdata_runtime.shards import Dataset, ShardChecksumError, write_samples
from atdata_runtime.shards import dataset as dataset_module

from .conftest import CORPUS

IMAGE = CORPUS / "atdata" / "records" / "ImageSample.schema.json"
SAMPLES_PER_SHARD = 12
SIDE = 160  # 160×160×3 uint8: members of ~77 KB
_ROOTS: list[Path] = []  # the served directory of the current test


@pytest.fixture(scope="module")
def image_cls() -> Any:
    return compile_schema_record(json.loads(IMAGE.read_text()))


@pytest.fixture
def served(tmp_path: Path, image_cls: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``make(n)``: ``n`` shard URLs (all with the same bytes) on a loopback HTTP
    server, and their sha256."""
    monkeypatch.setenv(INSECURE_LOOPBACK_ENV, "1")
    rng = np.random.default_rng(0)
    samples = [
        image_cls(
            image=rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8), label=str(i)
        )
        for i in range(SAMPLES_PER_SHARD)
    ]
    (first,) = write_samples(samples, str(tmp_path / "one-%06d.tar"), progress=False)
    digest = hashlib.sha256(Path(first).read_bytes()).hexdigest()
    _ROOTS[:] = [tmp_path]
    with serve_directory(tmp_path) as base:

        def make(n: int) -> tuple[list[str], str]:
            urls = []
            for i in range(n):
                name = f"s-{i:04d}.tar"
                if not (tmp_path / name).exists():
                    shutil.copy(first, tmp_path / name)
                urls.append(f"{base}/{name}")
            return urls, digest

        yield make


def _read(cls: Any, urls: list[str], checksums: dict[str, str]) -> tuple[int, int]:
    """(samples read, tracemalloc peak bytes while reading them)."""
    ds = Dataset[cls](urls, checksums=checksums, urls_from="record", progress=False)
    tracemalloc.start()
    try:
        count = 0
        for sample in ds:
            count += 1
            del sample
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return count, peak


def test_verified_read_memory_does_not_grow_with_the_number_of_shards(
    served: Any, image_cls: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading 2 shards and reading 12 both stay under one constant bound, far
    below the dataset's bytes: (PREFETCH_SHARDS + 1) verified copies of at most
    SPOOL_MEMORY_BYTES (plus a network chunk, 64 KiB; 256 KiB allowed) and a few
    members. SPOOL_MEMORY_BYTES is lowered so that shards go to temporary files,
    as large ones do. (The two peaks differ by how the prefetch overlaps, within
    the bound; they do not grow with the count.)"""
    monkeypatch.setattr(dataset_module, "SPOOL_MEMORY_BYTES", 128 << 10)
    urls, digest = served(12)
    _read(image_cls, urls[:1], {urls[0]: digest})  # warm: imports, caches
    n_few, few = _read(image_cls, urls[:2], dict.fromkeys(urls[:2], digest))
    n_many, many = _read(image_cls, urls, dict.fromkeys(urls, digest))
    assert (n_few, n_many) == (2 * SAMPLES_PER_SHARD, 12 * SAMPLES_PER_SHARD)
    member = SIDE * SIDE * 3 + 1024
    bound = (dataset_module.PREFETCH_SHARDS + 1) * (
        dataset_module.SPOOL_MEMORY_BYTES + (256 << 10)
    ) + 8 * member
    dataset_bytes = sum(Path(u).stat().st_size for u in _files(urls))
    assert bound < dataset_bytes // 4
    assert few < bound and many < bound, (few, many, bound)


def _files(urls: list[str]) -> list[Path]:
    return [_ROOTS[0] / u.rsplit("/", 1)[1] for u in urls]


def test_a_tampered_shard_is_refused_in_order_while_the_next_is_prefetched(
    served: Any, image_cls: Any
) -> None:
    """Shard 1 of 3 is declared with another digest: every sample of shard 0 is
    yielded, then SHARD_CHECKSUM_MISMATCH names shard 1, and no sample of shard 1
    or 2 is ever yielded (shard 2 may have been fetched ahead; it is not used)."""
    urls, digest = served(3)
    checksums = dict.fromkeys(urls, digest)
    checksums[urls[1]] = "0" * 64
    ds = Dataset[image_cls](
        urls, checksums=checksums, urls_from="record", progress=False
    )
    got = []
    with pytest.raises(ShardChecksumError) as info:
        for sample in ds:
            got.append(sample.label)
    assert info.value.rule == "SHARD_CHECKSUM_MISMATCH"
    assert "s-0001.tar" in str(info.value) and "none of its samples" in str(info.value)
    assert got == [str(i) for i in range(SAMPLES_PER_SHARD)]


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("atdata-prefetch")]


def test_a_consumer_that_stops_early_leaves_no_download_running(
    served: Any, image_cls: Any
) -> None:
    """Closing the iterator after one sample cancels the shard fetched ahead: its
    thread ends (it stops at its next chunk), and nothing more is fetched."""
    urls, digest = served(4)
    for t in _prefetch_threads():
        t.join(60)
    ds = Dataset[image_cls](
        urls, checksums=dict.fromkeys(urls, digest), urls_from="record", progress=False
    )
    it = iter(ds)
    assert next(it).label == "0"
    assert len(_prefetch_threads()) <= dataset_module.PREFETCH_SHARDS + 1
    it.close()  # type: ignore[attr-defined]
    for t in _prefetch_threads():
        t.join(60)
    assert _prefetch_threads() == []


def test_iterating_does_not_import_torch(tmp_path: Path) -> None:
    """torch is installed here, but a plain read never imports it (Split.detect
    consults torch only when it is already imported)."""
    code = f"""
import json, sys
import numpy as np
from atdata_gen.dynamic import compile_schema_record
from atdata_runtime.shards import Dataset, write_samples
cls = compile_schema_record(json.loads(open({str(IMAGE)!r}).read()))
shards = write_samples(
    [cls(image=np.zeros((4, 4, 3), dtype=np.uint8), label="a")],
    {str(tmp_path / "t-%06d.tar")!r}, progress=False)
assert [s.label for s in Dataset[cls](shards, progress=False)] == ["a"]
print(json.dumps("torch" in sys.modules))
"""
    pytest.importorskip("torch")  # the property is about torch being installed
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) is False
