"""The lean tar reader reads what tarfile reads (USTAR, GNU, PAX; long and Unicode
names; any size), groups samples like webdataset, and rejects malformed archives
with a byte offset."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from atdata_runtime.shards.tar import TarFormatError, iter_files, iter_samples
from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import CORPUS

NAMES = st.one_of(
    st.from_regex(r"[a-z0-9_-]{1,12}\.[a-z]{1,8}", fullmatch=True),
    st.from_regex(r"[a-z]{1,40}/[a-z0-9]{60,140}\.msgpack", fullmatch=True),
    st.text(
        st.characters(codec="utf-8", exclude_characters="/\x00."),
        min_size=1,
        max_size=30,
    ).map(lambda s: f"{s}.bin"),
)
FILES = st.lists(
    st.tuples(NAMES, st.binary(max_size=1500)), max_size=8, unique_by=lambda f: f[0]
)


def _archive(files: list[tuple[str, bytes]], fmt: int, extras: bool) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        if extras:
            d = tarfile.TarInfo("somedir")
            d.type = tarfile.DIRTYPE
            tar.addfile(d)
            link = tarfile.TarInfo("alink")
            link.type = tarfile.SYMTYPE
            link.linkname = "target"
            tar.addfile(link)
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@settings(max_examples=150, deadline=None)
@given(
    files=FILES,
    fmt=st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
    extras=st.booleans(),
)
def test_reads_what_tarfile_reads(
    files: list[tuple[str, bytes]], fmt: int, extras: bool
) -> None:
    try:
        raw = _archive(files, fmt, extras)
    except ValueError:
        return  # a name this format cannot store (USTAR limits)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        expected = [
            (m.name, tar.extractfile(m).read())  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isreg()
        ]
    assert list(iter_files(io.BytesIO(raw))) == expected


@pytest.mark.parametrize(
    "shard", sorted((CORPUS / "atdata" / "shards").glob("*.tar")), ids=lambda p: p.name
)
def test_atdata_shards(shard: Path) -> None:
    with tarfile.open(shard) as tar:
        expected = [
            (m.name, tar.extractfile(m).read())  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isreg()
        ]
    with open(shard, "rb") as fh:
        assert list(iter_files(fh)) == expected
    with open(shard, "rb") as fh:
        samples = list(iter_samples(fh))
    assert [k for k, _ in samples] == [n.rsplit(".", 1)[0] for n, _ in expected]


def test_groups_like_webdataset(tmp_path: Path) -> None:
    import webdataset as wds

    path = tmp_path / "g.tar"
    with wds.TarWriter(str(path)) as sink:
        for i in range(5):
            sink.write({"__key__": f"dir/k{i}", "msgpack": b"m%d" % i, "TXT": b"t"})
    from webdataset import tariterators

    with open(path, "rb") as fh:
        files = (dict(f, __url__="x") for f in tariterators.tar_file_iterator(fh))
        theirs = [
            (s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")})
            for s in tariterators.group_by_keys(files)
        ]
    with open(path, "rb") as fh:
        assert list(iter_samples(fh)) == theirs


def test_malformed_archives_are_located() -> None:
    raw = _archive([("a.msgpack", b"x" * 600)], tarfile.USTAR_FORMAT, False)
    with pytest.raises(TarFormatError, match="truncated") as info:
        list(iter_files(io.BytesIO(raw[:900]), shard="s.tar"))
    assert (info.value.rule, info.value.shard, info.value.member) == (
        "TAR_TRUNCATED",
        "s.tar",
        "a.msgpack",
    )
    assert "shard 's.tar', member 'a.msgpack', header at byte 0" in str(info.value)
    corrupt = bytearray(raw)
    corrupt[10] ^= 0xFF
    with pytest.raises(TarFormatError, match="header at byte 0: header checksum"):
        list(iter_files(io.BytesIO(bytes(corrupt))))
    with pytest.raises(TarFormatError, match="truncated header") as info:
        list(iter_files(io.BytesIO(raw[:100])))
    assert info.value.rule == "TAR_TRUNCATED"


def test_short_reads_are_completed() -> None:
    """A network stream may return fewer bytes than asked for; members stay whole."""
    import io

    from atdata_runtime.shards.tar import iter_files as _iter

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(3):
            data = bytes(range(256)) * (7 + i)
            info = tarfile.TarInfo(f"s{i}.bin")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()

    class Trickle(io.RawIOBase):
        def __init__(self) -> None:
            self.pos = 0

        def read(self, n: int = -1) -> bytes:
            n = min(n if n >= 0 else len(raw), 100)
            out = raw[self.pos : self.pos + n]
            self.pos += len(out)
            return out

    files = list(_iter(Trickle()))  # type: ignore[arg-type]
    assert [len(d) for _, d in files] == [256 * 7, 256 * 8, 256 * 9]
