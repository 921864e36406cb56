"""Dataset over WebDataset shards: local, HTTP (a real server on loopback) and S3 (a
real moto S3 server on loopback); batching; sharded writing; splitting by node and
worker so every sample is seen exactly once per epoch."""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from atdata_gen.testing.httpdir import serve_directory
from atdata_runtime.samples import SampleFormatError
from atdata_runtime.shards import (
    Dataset,
    ShardListError,
    Split,
    TarFormatError,
    expand_urls,
    write_samples,
)

from .conftest import CORPUS, compile_to

SHARDS = CORPUS / "atdata" / "shards"


@pytest.fixture(scope="module")
def pkg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    out = tmp_path_factory.mktemp("ds")
    compile_to(out, [CORPUS / "atdata" / "records"], "ds_pkg")
    sys.path.insert(0, str(out))
    try:
        yield (
            importlib.import_module("ds_pkg.samples.image_sample_v1_0_0"),
            importlib.import_module("ds_pkg.samples.optional_sample_v1_0_0"),
        )
    finally:
        sys.path.remove(str(out))


def _images(cls: Any, n: int, shape: tuple[int, ...] = (3, 4, 4)) -> list[Any]:
    return [
        cls(image=np.full(shape, i % 256, np.uint8), label=f"s{i}") for i in range(n)
    ]


def test_reads_atdata_fixture_shard(pkg: Any) -> None:
    image_mod, _ = pkg
    samples = list(Dataset[image_mod.ImageSample](str(SHARDS / "image-000000.tar")))
    assert len(samples) == 16
    assert all(isinstance(s, image_mod.ImageSample) for s in samples)
    with tarfile.open(SHARDS / "image-000000.tar") as tar:
        first = tar.extractfile(tar.getmembers()[0]).read()  # type: ignore[union-attr]
    assert samples[0] == image_mod.ImageSample.unpack(first)


def test_brace_expansion() -> None:
    assert expand_urls("d-{000..002}.tar") == ["d-000.tar", "d-001.tar", "d-002.tar"]
    assert expand_urls(["a.tar", "b-{x,y}.tar"]) == ["a.tar", "b-x.tar", "b-y.tar"]


def test_brace_expansion_is_capped_and_record_urls_are_literal(pkg: Any) -> None:
    cls = pkg[0].ImageSample
    with pytest.raises(ShardListError) as info:
        expand_urls("d-{0..9}{0..9}{0..9}.tar", max_shards=999)
    assert info.value.rule == "SHARD_LIST_TOO_LONG"
    assert len(expand_urls("d-{0..9}{0..9}{0..9}.tar", max_shards=1000)) == 1000
    literal = Dataset[cls](["d-{0..9}.tar"], urls_from="record")
    assert literal.shards == ["d-{0..9}.tar"]
    with pytest.raises(ShardListError, match="SHARD_LIST_TOO_LONG"):
        Dataset[cls](["a.tar", "b.tar"], urls_from="record", max_shards=1)


def test_record_urls_may_not_name_local_files_or_other_schemes(pkg: Any) -> None:
    cls = pkg[0].ImageSample
    for url, rule in (
        (str(SHARDS / "image-000000.tar"), "SHARD_URL_LOCAL"),
        ("file://" + str(SHARDS / "image-000000.tar"), "SHARD_URL_LOCAL"),
        ("memory://image-000000.tar", "SHARD_URL_SCHEME"),
    ):
        ds = Dataset[cls]([url], urls_from="record", progress=False)
        with pytest.raises(ShardListError) as info:
            list(ds)
        assert info.value.rule == rule


def test_member_and_sample_size_limits_are_dataset_settings(pkg: Any) -> None:
    """The tar reader's ``max_member_bytes`` is a user setting of ``Dataset``."""
    cls = pkg[0].ImageSample
    shard = str(SHARDS / "image-000000.tar")
    assert len(list(Dataset[cls](shard, progress=False))) == 16
    with pytest.raises(TarFormatError) as info:
        list(Dataset[cls](shard, max_member_bytes=64, progress=False))
    assert info.value.rule == "TAR_MEMBER_TOO_LARGE" and shard in str(info.value)
    with pytest.raises(TarFormatError) as sample_info:
        list(Dataset[cls](shard, max_sample_bytes=64, progress=False))
    assert sample_info.value.rule == "TAR_SAMPLE_TOO_LARGE"


def test_write_by_count_and_size_then_read_back(pkg: Any, tmp_path: Path) -> None:
    cls = pkg[0].ImageSample
    samples = _images(cls, 95)
    shards = write_samples(samples, str(tmp_path / "c-%06d.tar"), maxcount=20)
    assert [Path(s).name for s in shards] == [f"c-{i:06d}.tar" for i in range(5)]
    with tarfile.open(shards[0]) as tar:
        names = tar.getnames()
    assert len(names) == 20 and all(
        n.endswith(".msgpack") and n.count(".") == 1 for n in names
    )
    assert list(Dataset[cls](shards)) == samples
    by_size = write_samples(samples, str(tmp_path / "s-%06d.tar"), maxsize=2_000)
    assert len(by_size) > 3
    biggest = max(len(s.pack()) for s in samples)
    for shard in by_size[:-1]:
        with tarfile.open(shard) as tar:
            payload = sum(m.size for m in tar.getmembers())
        assert 2_000 <= payload < 2_000 + biggest
    assert (
        list(Dataset[cls](str(tmp_path / f"s-{{000000..{len(by_size) - 1:06d}}}.tar")))
        == samples
    )


def test_keys_with_dots_are_refused(pkg: Any, tmp_path: Path) -> None:
    cls = pkg[0].ImageSample
    with pytest.raises(ValueError, match="dot"):
        write_samples(
            _images(cls, 1), str(tmp_path / "k-%06d.tar"), key=lambda i, s: "a.b"
        )


def test_a_failed_write_stops_the_writer_and_loses_no_shard_silently(
    pkg: Any, tmp_path: Path
) -> None:
    from atdata_runtime.shards import ShardWriter

    cls = pkg[0].ImageSample
    a, b, c, d = _images(cls, 4)
    writer = ShardWriter(str(tmp_path / "f-%06d.tar"), maxcount=10)
    writer.write(a, "k1")
    writer.write(b, "k2")
    assert writer._tar is not None

    def failing(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    writer._tar.addfile = failing  # type: ignore[method-assign]
    with pytest.raises(OSError, match="No space"):
        writer.write(c, "k3")
    # The shard in progress is discarded, and the writer refuses to go on as if
    # nothing happened (which would silently drop k1 and k2).
    with pytest.raises(ValueError, match="earlier write failed"):
        writer.write(d, "k4")
    writer.close()
    assert writer.shards == []
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_shards_get_the_umask_permissions(pkg: Any, tmp_path: Path) -> None:
    cls = pkg[0].ImageSample
    old = os.umask(0o077)
    try:
        (shard,) = write_samples(_images(cls, 2), str(tmp_path / "u-%06d.tar"))
    finally:
        os.umask(old)
    assert Path(shard).stat().st_mode & 0o777 == 0o600


def test_batches_are_typed_and_stacked(pkg: Any, tmp_path: Path) -> None:
    cls = pkg[0].ImageSample
    shards = write_samples(_images(cls, 10), str(tmp_path / "b-%06d.tar"), maxcount=4)
    batches = list(Dataset[cls](shards).ordered(batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert type(batches[0]).__name__ == "ImageSampleBatch"
    assert batches[0].image.shape == (4, 3, 4, 4) and batches[0].image.dtype == np.uint8
    assert batches[1].label == ["s4", "s5", "s6", "s7"]
    assert len(list(Dataset[cls](shards).ordered(batch_size=4, drop_last=True))) == 2


def test_batch_shape_mismatch_names_the_sample(pkg: Any, tmp_path: Path) -> None:
    cls = pkg[0].ImageSample
    samples = _images(cls, 3) + [cls(image=np.zeros((3, 5, 5), np.uint8), label="odd")]
    shards = write_samples(
        samples, str(tmp_path / "m-%06d.tar"), key=lambda i, s: f"k{i}"
    )
    with pytest.raises(SampleFormatError, match=r"'k3\.msgpack'.*'image'.*\(3, 5, 5\)"):
        list(Dataset[cls](shards, ragged="error").ordered(batch_size=4))
    (batch,) = Dataset[cls](shards).ordered(batch_size=4)  # default: ragged="list"
    assert [a.shape for a in batch.image] == [(3, 4, 4)] * 3 + [(3, 5, 5)]


def test_optional_arrays_in_batches(pkg: Any, tmp_path: Path) -> None:
    cls = pkg[1].OptionalSample
    samples = [cls(tokens=[i], caption=str(i)) for i in range(3)]
    shards = write_samples(samples, str(tmp_path / "o-%06d.tar"))
    (batch,) = Dataset[cls](shards).ordered(batch_size=3)
    assert batch.mask is None and batch.score == [None, None, None]


@pytest.mark.parametrize(
    ("n_shards", "ranks", "workers"), [(12, 2, 3), (4, 2, 3), (1, 3, 2), (7, 1, 1)]
)
def test_every_sample_exactly_once_across_ranks_and_workers(
    pkg: Any, tmp_path: Path, n_shards: int, ranks: int, workers: int
) -> None:
    cls = pkg[0].ImageSample
    samples = _images(cls, 10 * n_shards)
    shards = write_samples(samples, str(tmp_path / "e-%06d.tar"), maxcount=10)
    assert len(shards) == n_shards
    for epoch_order in ("ordered", "shuffled"):
        seen: Counter[str] = Counter()
        for rank in range(ranks):
            for worker in range(workers):
                ds = Dataset[cls](shards, split=Split(rank, ranks, worker, workers))
                it = ds.ordered() if epoch_order == "ordered" else ds.shuffled(seed=3)
                seen.update(s.label for s in it)
        assert seen == Counter(s.label for s in samples), epoch_order


def test_shuffled_is_seeded_and_a_permutation(pkg: Any, tmp_path: Path) -> None:
    cls = pkg[0].ImageSample
    shards = write_samples(_images(cls, 60), str(tmp_path / "r-%06d.tar"), maxcount=10)
    a = [s.label for s in Dataset[cls](shards).shuffled(seed=1, buffer=16)]
    b = [s.label for s in Dataset[cls](shards).shuffled(seed=1, buffer=16)]
    c = [s.label for s in Dataset[cls](shards).shuffled(seed=2, buffer=16)]
    assert a == b and a != c and sorted(a) == sorted(f"s{i}" for i in range(60))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_reads_over_http(pkg: Any, tmp_path: Path) -> None:
    cls = pkg[0].ImageSample
    samples = _images(cls, 25)
    write_samples(samples, str(tmp_path / "h-%06d.tar"), maxcount=10)
    with serve_directory(tmp_path) as base:
        url = f"{base}/h-{{000000..000002}}.tar"
        assert list(Dataset[cls](url)) == samples


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible server (moto) on loopback."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("moto S3 server did not start")
    try:
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_reads_from_s3_compatible_server(
    pkg: Any, tmp_path: Path, s3_endpoint: str
) -> None:
    import boto3

    cls = pkg[0].ImageSample
    samples = _images(cls, 30)
    shards = write_samples(samples, str(tmp_path / "s3-%06d.tar"), maxcount=10)
    options = {
        "key": "test",
        "secret": "test",
        "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
    }
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    client.create_bucket(Bucket="bucket-a")
    for shard in shards:
        client.upload_file(shard, "bucket-a", f"data/{Path(shard).name}")
    url = "s3://bucket-a/data/s3-{000000..000002}.tar"
    assert list(Dataset[cls](url, storage_options=options)) == samples


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("torch is not installed (scripts/setup installs it in CI)")
        pytest.skip("torch is optional and not installed here")
    return torch


@pytest.mark.parametrize(
    ("ranks", "workers", "n_shards"), [(1, 2, 6), (2, 2, 8), (2, 3, 3)]
)
def test_torch_dataloader_sees_every_sample_once(
    pkg: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ranks: int,
    workers: int,
    n_shards: int,
) -> None:
    torch = _torch()
    cls = pkg[0].ImageSample
    samples = _images(cls, 8 * n_shards)
    shards = write_samples(samples, str(tmp_path / "t-%06d.tar"), maxcount=8)
    for shuffle in (False, True):
        seen: Counter[str] = Counter()
        for rank in range(ranks):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", str(ranks))
            view = Dataset[cls](shards).torch(batch_size=4, shuffle=shuffle, seed=5)
            view.set_epoch(1)
            loader = torch.utils.data.DataLoader(
                view,
                batch_size=None,
                num_workers=workers,
                multiprocessing_context="fork",
            )
            for batch in loader:
                assert batch.image.shape[1:] == (3, 4, 4)
                seen.update(batch.label)
        assert seen == Counter(s.label for s in samples), shuffle


def test_sample_errors_name_the_shard_member_and_field(
    pkg: Any, tmp_path: Path
) -> None:
    """A payload that does not fit the class is a SampleFormatError naming the
    shard (URL or path, credentials redacted), the member and the field; a sample
    without a .msgpack member names the shard and key."""
    import io

    import msgpack

    image_mod, _ = pkg
    good = image_mod.ImageSample(image=np.zeros((1, 1, 1), np.uint8), label="x")
    payload = msgpack.unpackb(good.pack())
    payload["label"] = {"not": "a string"}
    shard = tmp_path / "bad-000000.tar"
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (
            ("k0.msgpack", msgpack.packb(payload)),
            ("k1.txt", b"no payload"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(SampleFormatError) as info_:
        list(Dataset[image_mod.ImageSample](str(shard)))
    text = str(info_.value)
    assert str(shard) in text and "k0.msgpack" in text and "label" in text, text
    assert info_.value.rule == "SAMPLE_KIND"
    kept = Dataset[image_mod.ImageSample](str(shard), unknown="drop")
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("k1.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(SampleFormatError) as missing:
        list(kept)
    assert str(shard) in str(missing.value) and "k1" in str(missing.value)
    assert missing.value.rule == "SAMPLE_NO_PAYLOAD"


def test_shuffle_buffer_is_capped_by_payload_bytes(tmp_path: Path) -> None:
    """Each buffered sample's arrays are views that pin its whole payload: 1,000
    samples of up to max_sample_bytes each. ``buffer_bytes`` caps what the buffer
    holds (default SHUFFLE_BUFFER_BYTES, 1 GiB); control: without a small cap,
    the same read holds every payload."""
    from atdata_runtime.samples import FieldSpec, sample_class

    from .fuzz.bounded import run_bounded

    cls = sample_class("Big", [FieldSpec("a", "a", "ndarray", dtype="uint8")])
    write_samples(
        (cls(a=np.full(1 << 20, i, np.uint8)) for i in range(160)),
        str(tmp_path / "big-%06d.tar"),
        maxcount=40,
    )
    code = f"""
        import numpy as np
        from atdata_runtime.samples import FieldSpec, sample_class
        from atdata_runtime.shards import Dataset
        cls = sample_class("Big", [FieldSpec("a", "a", "ndarray", dtype="uint8")])
        ds = Dataset[cls]({str(tmp_path / "big-{000000..000003}.tar")!r}, progress=False)
        seen = [int(s.a[0]) for s in ds.shuffled(seed=1, buffer=1000, **KW)]
        assert sorted(seen) == list(range(160)), seen
        _result["value"] = seen[:10]
        """
    capped = run_bounded(
        code.replace("**KW", "buffer_bytes=16 << 20"),
        address_space_mib=2048,
        timeout=120,
    )
    assert capped.error is None, capped
    full = run_bounded(code.replace("**KW", ""), address_space_mib=2048, timeout=120)
    assert full.error is None, full
    assert capped.value != list(range(10))  # still shuffled
    one = run_bounded(code.replace("**KW", "buffer_bytes=0"), address_space_mib=2048)
    assert one.error is None, one  # a buffer of one sample: the reader's own RSS
    assert full.max_rss_mib > one.max_rss_mib + 120, (full, one)  # 160 MiB held
    assert capped.max_rss_mib < one.max_rss_mib + 40, (capped, one)  # 16 MiB
    assert Dataset.shuffled.__defaults__ is None  # keyword-only, documented default
    from atdata_runtime.shards.dataset import SHUFFLE_BUFFER_BYTES

    assert SHUFFLE_BUFFER_BYTES == 1 << 30


_SIZE_PARAMETERS = ["max_member_bytes", "max_sample_bytes", "max_shard_bytes"]


@pytest.mark.parametrize("name", _SIZE_PARAMETERS)
@pytest.mark.parametrize(
    ("value", "error"),
    [
        (True, TypeError),
        (False, TypeError),
        ("abc", TypeError),
        ("1024", TypeError),
        (1.5, TypeError),
        (-1, ValueError),
    ],
)
def test_byte_limits_are_checked_at_construction(
    pkg: Any, name: str, value: Any, error: type[Exception]
) -> None:
    """The trial: ``max_member_bytes=True`` was accepted (later "a limit of True
    bytes") and ``"abc"`` a raw TypeError mid-read. Now each byte limit is an
    int >= 0 (not a bool), checked when the Dataset is built, the parameter
    named."""
    cls = pkg[0].ImageSample
    with pytest.raises(error, match=name):
        Dataset[cls](str(SHARDS / "image-000000.tar"), **{name: value})


@pytest.mark.parametrize(
    ("value", "error"),
    [(True, TypeError), ("abc", TypeError), (2.0, TypeError), (-1, ValueError)],
)
def test_buffer_bytes_is_checked_before_reading(
    pkg: Any, value: Any, error: type[Exception]
) -> None:
    cls = pkg[0].ImageSample
    ds = Dataset[cls](str(SHARDS / "image-000000.tar"), progress=False)
    with pytest.raises(error, match="buffer_bytes"):
        ds.shuffled(buffer_bytes=value)
    with pytest.raises(error, match="buffer_bytes"):
        ds.torch(shuffle=True, buffer_bytes=value)
    with pytest.raises(TypeError, match="buffer"):
        ds.shuffled(buffer=True)


def test_valid_byte_limits_are_kept(pkg: Any) -> None:
    cls = pkg[0].ImageSample
    ds = Dataset[cls](
        str(SHARDS / "image-000000.tar"),
        max_member_bytes=1 << 20,
        max_sample_bytes=None,
        max_shard_bytes=0,
        progress=False,
    )
    assert (ds.max_member_bytes, ds.max_sample_bytes, ds.max_shard_bytes) == (
        1 << 20,
        None,
        0,
    )
    assert len(list(ds.shuffled(seed=1, buffer_bytes=0))) == len(list(ds))
