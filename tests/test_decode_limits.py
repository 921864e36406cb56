"""Hostile shard bytes get clean, located errors and bounded memory (issue 14,
findings 2, 7 and 8, and the "decoder errors without a location" items).

Every hostile input here is built by hand (tar headers, ``.npy`` headers, msgpack
bytes), and every error is checked for its class, its rule ID and where it says
the problem is (shard, member, field path). Memory claims run in a child process
(:func:`tests.fuzz.bounded.run_bounded`) under an address-space cap, asserting the
child's peak RSS.
"""

from __future__ import annotations

import io
import struct
import tarfile
import warnings
from typing import Any

import msgpack
import numpy as np
import pytest
from atdata_runtime.samples import (
    ArrayFormatError,
    FieldSpec,
    PackableSample,
    SampleFormatError,
    sample_class,
)
from atdata_runtime.samples.ndarray import MAX_NPY_HEADER_BYTES, decode_array
from atdata_runtime.shards.tar import (
    MAX_MEMBER_BYTES,
    TarFormatError,
    iter_files,
    iter_samples,
)

from .fuzz.bounded import run_bounded

# -- hand-built tar ---------------------------------------------------------------------


def tar_header(name: bytes, size_field: bytes | int, typeflag: bytes = b"0") -> bytes:
    """One ustar header block; ``size_field``: the 12 raw bytes, or a size written
    in octal."""
    if isinstance(size_field, int):
        size_field = b"%011o\0" % size_field
    assert len(size_field) == 12
    h = bytearray(512)
    h[: len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = size_field
    h[136:148] = b"00000000000\0"
    h[156:157] = typeflag
    h[257:265] = b"ustar\x0000"
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def pax_member(records: bytes) -> bytes:
    return tar_header(b"PaxHeader", len(records), b"x") + pad(records)


def member(name: str, data: bytes) -> bytes:
    return tar_header(name.encode(), len(data)) + pad(data)


END = bytes(1024)


def tar_error(raw: bytes, **kwargs: Any) -> TarFormatError:
    with pytest.raises(TarFormatError) as info:
        list(iter_files(io.BytesIO(raw), shard="https://h.test/s-0.tar", **kwargs))
    assert info.value.shard == "https://h.test/s-0.tar"
    assert "shard 'https://h.test/s-0.tar'" in str(info.value)
    assert f"[{info.value.rule}]" in str(info.value)
    return info.value


def test_pax_size_of_60_gib_is_refused_before_allocating() -> None:
    raw = pax_member(pax_record("size", str(60 << 30))) + member("k.msgpack", b"x")
    exc = tar_error(raw)
    assert exc.rule == "TAR_MEMBER_TOO_LARGE"
    assert (exc.member, exc.offset) == ("k.msgpack", 1024)
    assert str(60 << 30) in exc.reason and str(MAX_MEMBER_BYTES) in exc.reason


def test_pax_size_of_60_gib_stays_bounded_in_memory() -> None:
    out = run_bounded(
        """
        import io
        from tests.test_decode_limits import pax_member, pax_record, member
        from atdata_runtime.shards.tar import iter_files
        raw = pax_member(pax_record("size", str(60 << 30))) + member("k.msgpack", b"x")
        list(iter_files(io.BytesIO(raw), shard="s.tar"))
        """,
        address_space_mib=1024,
        timeout=60,
    )
    assert out.error_type == "atdata_runtime.shards.tar.TarFormatError", out
    assert "[TAR_MEMBER_TOO_LARGE]" in (out.error or "")
    assert out.max_rss_mib < 150


@pytest.mark.parametrize(
    "size_field",
    [
        b"\x80" + (1 << 80).to_bytes(11, "big"),  # base-256, 2**80
        b"\x80" + (2 << 30).to_bytes(11, "big"),  # base-256, 2 GiB
        b"%011o\0" % (2 << 30),  # octal 2 GiB
        b"77777777777\0",  # octal, the largest there is
    ],
    ids=["base256-2**80", "base256-2GiB", "octal-2GiB", "octal-max"],
)
def test_huge_sizes_are_refused_from_the_header(size_field: bytes) -> None:
    raw = tar_header(b"k.msgpack", size_field) + b"tiny" + END
    exc = tar_error(raw)
    assert (exc.rule, exc.member, exc.offset) == (
        "TAR_MEMBER_TOO_LARGE",
        "k.msgpack",
        0,
    )


def test_2_gib_member_with_a_few_bytes_present_stays_bounded() -> None:
    """Refused from its header at the default limit; with the limit raised over
    it, reading stops at the truncation after one chunk, not 2 GiB."""
    code = """
        import io, os, tempfile
        from tests.test_decode_limits import tar_header
        from atdata_runtime.shards.tar import iter_files
        raw = tar_header(b"k.msgpack", 2 << 30) + b"only a few bytes"
        fd, path = tempfile.mkstemp()
        os.write(fd, raw); os.close(fd)
        try:
            with open(path, "rb") as fh:
                list(iter_files(fh, shard=path{extra}))
        finally:
            os.unlink(path)
    """
    out = run_bounded(code.format(extra=""), address_space_mib=768, timeout=60)
    assert out.error_type == "atdata_runtime.shards.tar.TarFormatError", out
    assert "[TAR_MEMBER_TOO_LARGE]" in (out.error or "")
    assert out.max_rss_mib < 150
    out = run_bounded(
        code.format(extra=", max_member_bytes=4 << 30"),
        address_space_mib=768,
        timeout=60,
    )
    assert out.error_type == "atdata_runtime.shards.tar.TarFormatError", out
    assert "member 'k.msgpack'" in (out.error or "")
    assert "[TAR_TRUNCATED]" in (out.error or "")
    assert out.max_rss_mib < 250


def test_2_gib_member_present_in_full_is_refused_without_buffering() -> None:
    out = run_bounded(
        """
        from tests.test_decode_limits import tar_header
        from atdata_runtime.shards.tar import iter_samples

        class Endless:  # a 2 GiB member that really is there, made on demand
            def __init__(self):
                self.head = tar_header(b"k.msgpack", 2 << 30)
            def read(self, n):
                out, self.head = self.head[:n], self.head[n:]
                return out + bytes(n - len(out))

        list(iter_samples(Endless(), shard="big.tar"))
        """,
        address_space_mib=768,
        timeout=60,
    )
    assert out.error_type == "atdata_runtime.shards.tar.TarFormatError", out
    assert "[TAR_MEMBER_TOO_LARGE]" in (out.error or "")
    assert out.max_rss_mib < 150


def test_skipped_members_are_not_buffered() -> None:
    """A 300 MiB directory entry (data nobody reads) streams past in chunks."""
    out = run_bounded(
        """
        from tests.test_decode_limits import tar_header, member, END
        from atdata_runtime.shards.tar import iter_files

        class Stream:
            def __init__(self):
                self.parts = [tar_header(b"d/", 300 << 20, b"5"), 300 << 20,
                              member("k.msgpack", b"payload") + END]
            def read(self, n):
                while self.parts:
                    part = self.parts[0]
                    if isinstance(part, int):
                        take = min(n, part)
                        self.parts[0] -= take
                        if not self.parts[0]:
                            self.parts.pop(0)
                        return bytearray(take)  # written: counts in RSS
                    out = part[:n]
                    if len(out) == len(part):
                        self.parts.pop(0)
                    else:
                        self.parts[0] = part[n:]
                    return out
                return b""

        _result["value"] = [(n, bytes(d)) for n, d in iter_files(Stream())]
        """,
        address_space_mib=1024,
        timeout=60,
    )
    assert out.error_type is None, out
    assert out.value == [["k.msgpack", "b'payload'"]]  # bytes come back as repr
    assert out.max_rss_mib < 250  # one 64 MiB chunk at a time, not 300 MiB


@pytest.mark.parametrize(
    ("records", "rule"),
    [
        (pax_record("size", "-512"), "TAR_NUMBER"),
        (pax_record("size", "+5"), "TAR_NUMBER"),
        (pax_record("size", "0x10"), "TAR_NUMBER"),
        (pax_record("size", "9" * 30), "TAR_NUMBER"),
        (b"zz path=a\n", "TAR_PAX"),
        (b"999 path=a\n", "TAR_PAX"),
        (b"3 x\n", "TAR_PAX"),
        (b"11 pathxyz\n", "TAR_PAX"),
        (b"-5 path=a\n", "TAR_PAX"),
    ],
    ids=[
        "size-negative",
        "size-plus",
        "size-hex",
        "size-30-digits",
        "length-not-digits",
        "length-past-end",
        "length-too-short",
        "no-equals",
        "length-negative",
    ],
)
def test_malformed_pax_headers(records: bytes, rule: str) -> None:
    raw = pax_member(records) + member("k.msgpack", b"x") + END
    exc = tar_error(raw)
    assert exc.rule == rule
    assert exc.offset in (0, 1024)


@pytest.mark.parametrize(
    "size_field",
    [b"-0000000001\0", b"\xff" * 12, b"0000000008\0\0", b"12 34\0\0\0\0\0\0\0"],
    ids=["octal-negative", "base256-negative", "octal-digit-8", "inner-space"],
)
def test_bad_numeric_fields(size_field: bytes) -> None:
    exc = tar_error(tar_header(b"k.msgpack", size_field) + END)
    assert (exc.rule, exc.member, exc.offset) == ("TAR_NUMBER", "k.msgpack", 0)


def test_bad_checksum_field_and_mismatch() -> None:
    good = member("a.msgpack", b"1") + member("b.msgpack", b"2") + END
    bad = bytearray(good)
    bad[512 + 512 + 148 : 512 + 512 + 156] = b"zzzzzz\0 "
    exc = tar_error(bytes(bad))
    assert (exc.rule, exc.offset) == ("TAR_NUMBER", 1024)
    bad = bytearray(good)
    bad[1024 + 5] ^= 1
    exc = tar_error(bytes(bad))
    assert (exc.rule, exc.offset) == ("TAR_CHECKSUM", 1024)


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b"", 0),
        (member("a.msgpack", b"x"), 1024),
        (member("a.msgpack", b"x")[:700], 0),
        (member("a.msgpack", b"x") + b"\x01" * 100, 1024),
        (pax_member(pax_record("path", "long/" * 30 + "k.msgpack")), 1024),
    ],
    ids=["empty", "no-end-block", "in-data", "in-header", "after-pax"],
)
def test_truncated_archives(raw: bytes, where: int) -> None:
    exc = tar_error(raw)
    assert (exc.rule, exc.offset) == ("TAR_TRUNCATED", where)


def test_signed_checksums_of_old_writers_still_read() -> None:
    h = bytearray(tar_header("é.msgpack".encode(), 1))
    h[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in h)
    h[148:156] = b"%06o\0 " % signed
    raw = bytes(h) + pad(b"1") + END
    assert list(iter_files(io.BytesIO(raw))) == [("é.msgpack", b"1")]


def test_max_member_bytes_is_the_boundary() -> None:
    raw = member("a.msgpack", b"x" * 1000) + END
    assert list(iter_files(io.BytesIO(raw), max_member_bytes=1000)) == [
        ("a.msgpack", b"x" * 1000)
    ]
    exc = tar_error(raw, max_member_bytes=999)
    assert (exc.rule, exc.member) == ("TAR_MEMBER_TOO_LARGE", "a.msgpack")
    with pytest.raises(ValueError, match="max_member_bytes"):
        list(iter_files(io.BytesIO(raw), max_member_bytes=-1))


def test_metadata_members_have_their_own_small_limit() -> None:
    raw = tar_header(b"././@LongLink", 2 << 20, b"L") + END
    exc = tar_error(raw, max_member_bytes=1 << 30)
    assert exc.rule == "TAR_MEMBER_TOO_LARGE" and "MAX_META_BYTES" in exc.reason


def test_one_sample_s_members_are_capped_together() -> None:
    raw = (
        member("k.a", b"x" * 600)
        + member("k.b", b"x" * 600)
        + member("j.a", b"y")
        + END
    )
    with pytest.raises(TarFormatError) as info:
        list(iter_samples(io.BytesIO(raw), shard="s.tar", max_sample_bytes=1000))
    assert (info.value.rule, info.value.member) == ("TAR_SAMPLE_TOO_LARGE", "k.b")
    assert [k for k, _ in iter_samples(io.BytesIO(raw), max_sample_bytes=1200)] == [
        "k",
        "j",
    ]


def test_tarfile_archives_still_read() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in [("ü/" + "n" * 120 + ".msgpack", b"1" * 700), ("b.x", b"")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.pax_headers = {"comment": "é"}
            tf.addfile(info, io.BytesIO(data))
    files = list(iter_files(io.BytesIO(buf.getvalue())))
    assert files == [("ü/" + "n" * 120 + ".msgpack", b"1" * 700), ("b.x", b"")]


# -- .npy headers ------------------------------------------------------------------------


def npy(header: bytes, data: bytes = b"", version: int = 1) -> bytes:
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data
    return (
        b"\x93NUMPY"
        + bytes((version, 0))
        + struct.pack("<I", len(header))
        + header
        + data
    )


def compact(dtype: bytes, shape: tuple[int, ...], data: bytes = b"") -> bytes:
    return (
        bytes((len(dtype),))
        + dtype
        + struct.pack(f"<B{len(shape)}q", len(shape), *shape)
        + data
    )


Arrays = sample_class(
    "Arrays",
    [
        FieldSpec("a", "a", "ndarray", optional=True),
        FieldSpec("s", "s", "structured", optional=True),
        FieldSpec("name", "name", "str", optional=True),
    ],
)


def sample_error(
    cls: type[PackableSample], payload: bytes, **kwargs: Any
) -> SampleFormatError:
    with pytest.raises(SampleFormatError) as info:
        cls.unpack(
            payload, member="k7.msgpack", shard="https://h.test/s-3.tar", **kwargs
        )
    exc = info.value
    assert (exc.member, exc.shard) == ("k7.msgpack", "https://h.test/s-3.tar")
    assert "shard 'https://h.test/s-3.tar', member 'k7.msgpack'" in str(exc)
    assert f"[{exc.rule}]" in str(exc)
    return exc


def test_npy_header_over_numpy_s_limit_is_refused_unparsed() -> None:
    body = b"{'descr': '<f4', 'fortran_order': False, 'shape': (" + b"1," * 6000 + b")}"
    exc = sample_error(Arrays, msgpack.packb({"a": npy(body, version=2)}))
    assert isinstance(exc, ArrayFormatError)
    assert (exc.rule, exc.field) == ("NPY_HEADER", "a")
    assert str(MAX_NPY_HEADER_BYTES) in exc.reason


def test_npy_header_at_the_limit_reads() -> None:
    body = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }"
    body += b" " * (MAX_NPY_HEADER_BYTES - len(body) - 1) + b"\n"
    assert len(body) == MAX_NPY_HEADER_BYTES
    array = decode_array(npy(body, np.arange(2, dtype="<f4").tobytes(), version=2))
    assert array.tolist() == [0.0, 1.0]
    with pytest.raises(ArrayFormatError, match="NPY_HEADER"):
        decode_array(npy(body + b" ", np.arange(2, dtype="<f4").tobytes(), version=2))


def test_10_mib_npy_header_stays_bounded() -> None:
    out = run_bounded(
        """
        import struct, msgpack
        from atdata_runtime.samples import FieldSpec, sample_class
        body = b"{'descr': '<f4', 'fortran_order': False, 'shape': (" + b"1," * (5 << 20) + b")}"
        raw = b"\\x93NUMPY\\x02\\x00" + struct.pack("<I", len(body)) + body
        cls = sample_class("A", [FieldSpec("a", "a", "ndarray")])
        cls.unpack(msgpack.packb({"a": raw}), member="k.msgpack")
        """,
        address_space_mib=1024,
        timeout=60,
    )
    assert out.error_type == "atdata_runtime.samples.errors.ArrayFormatError", out
    assert "[NPY_HEADER]" in (out.error or "")
    assert "member 'k.msgpack', field 'a'" in (out.error or "")
    assert out.max_rss_mib < 200


@pytest.mark.parametrize(
    ("header", "rule"),
    [
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': (True,)}", "ARRAY_SHAPE"),
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': [2]}", "ARRAY_SHAPE"),
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': 2}", "ARRAY_SHAPE"),
        (b"{'descr': 'S0', 'fortran_order': False, 'shape': (1,)}", "ARRAY_DTYPE"),
        (b"{'descr': '|V0', 'fortran_order': False, 'shape': (5,)}", "ARRAY_DTYPE"),
        (b"{'descr': '|O', 'fortran_order': False, 'shape': ()}", "ARRAY_DTYPE"),
        (
            (
                b"{'descr': [('a', '<f4', (0,))], 'fortran_order': False, "
                b"'shape': (4611686018427387904, 4611686018427387904)}"
            ),
            "ARRAY_DTYPE",
        ),
        (
            b"{'descr': [('a', '|O')], 'fortran_order': False, 'shape': (1,)}",
            "ARRAY_DTYPE",
        ),
        (
            (
                b"{'descr': '<f4', 'fortran_order': False, "
                b"'shape': (4611686018427387904, 4611686018427387904, 0)}"
            ),
            "ARRAY_SHAPE",
        ),
        (b"{'descr': '<f4', 'fortran_order': 0, 'shape': ()}", "NPY_HEADER"),
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': (2**62,)}", "NPY_HEADER"),
        (b"{'descr': '<f4', 'shape': ()}", "NPY_HEADER"),
        (
            b"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': ()}",
            "NPY_HEADER",
        ),
        (
            b"{'descr': '<f4', 'fortran_order': False, 'shape': (), 'x': 1}",
            "NPY_HEADER",
        ),
        (b"{'descr': __import__('os'), 'fortran_order': False}", "NPY_HEADER"),
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': ()} junk", "NPY_HEADER"),
        (b"[" * 5000, "NPY_HEADER"),
        (
            b"{'descr': "
            + b"[('a', " * 20
            + b"'<f4'"
            + b")]" * 20
            + b", 'fortran_order': False, 'shape': ()}",
            "NPY_HEADER",
        ),
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}", "NPY_HEADER"),
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,)}", "ARRAY_SHAPE"),
    ],
    ids=[
        "shape-true",
        "shape-list",
        "shape-int",
        "S0",
        "V0",
        "object",
        "zero-size-structured-huge-shape",
        "structured-object",
        "huge-dims-with-zero",
        "fortran-int",
        "expression",
        "missing-key",
        "duplicate-key",
        "extra-key",
        "call",
        "trailing-text",
        "deep-brackets",
        "deep-structured",
        "negative-dim",
        "bytes-missing",
    ],
)
def test_hostile_npy_headers_are_located(header: bytes, rule: str) -> None:
    exc = sample_error(Arrays, msgpack.packb({"s": npy(header, b"\0" * 8)}))
    assert isinstance(exc, ArrayFormatError)
    assert (exc.rule, exc.field) == (rule, "s")


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        (compact(b"S0", (4,)), "ARRAY_DTYPE"),
        (compact(b"|V0", (1 << 40,)), "ARRAY_DTYPE"),
        (compact(b"<f4", (1 << 62, 1 << 62, 0)), "ARRAY_SHAPE"),
        (compact(b"<f4", (-1,)), "ARRAY_SHAPE"),
        (compact(b"<f4", (1 << 61, 8)), "ARRAY_SHAPE"),
        (compact(b"|O", (1,)), "ARRAY_DTYPE"),
        (compact(b"<f4", (2,))[:-3], "ARRAY_TRUNCATED"),
    ],
    ids=["S0", "V0", "huge-dims-with-zero", "negative", "overflow", "object", "cut"],
)
def test_hostile_compact_headers_are_located(raw: bytes, rule: str) -> None:
    exc = sample_error(Arrays, msgpack.packb({"a": raw}))
    assert (exc.rule, exc.field) == (rule, "a")
    # the same on the large-payload path (views into the payload)
    exc = sample_error(Arrays, msgpack.packb({"name": "x" * 70_000, "a": raw}))
    assert (exc.rule, exc.field) == (rule, "a")


def test_npy_written_by_numpy_still_reads() -> None:
    for array in [
        np.arange(6, dtype="<f4").reshape(2, 3),
        np.zeros(3, dtype=[("x", "<f4"), ("y", "<i8", (2,))]),
        np.zeros(
            2,
            dtype={
                "names": ["a", "b"],
                "formats": ["u1", "<f8"],
                "offsets": [0, 8],
                "itemsize": 16,
            },
        ),
        np.asfortranarray(np.ones((3, 4))),
        np.array(7),
    ]:
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        got = decode_array(buf.getvalue())
        assert got.dtype == array.dtype and np.array_equal(got, array)


# -- msgpack kinds and limits -----------------------------------------------------------

Scalars = sample_class(
    "Scalars",
    [
        FieldSpec("n", "n", "int", optional=True),
        FieldSpec("x", "x", "float", optional=True),
        FieldSpec("flag", "flag", "bool", optional=True),
        FieldSpec("name", "name", "str", optional=True),
        FieldSpec("blob", "blob", "bytes", optional=True),
        FieldSpec(
            "grid",
            "grid",
            "list",
            optional=True,
            items=FieldSpec("", "", "list", items=FieldSpec("", "", "int")),
        ),
        FieldSpec(
            "tags", "tags", "list", optional=True, items=FieldSpec("", "", "str")
        ),
    ],
)


@pytest.mark.parametrize("validate", [False, True])
@pytest.mark.parametrize(
    ("value", "field", "path"),
    [
        ({"a": 1}, "name", "name"),
        (msgpack.ExtType(5, b"xyz"), "name", None),
        (True, "n", "n"),
        ("7", "n", "n"),
        (1.5, "n", "n"),
        (1, "flag", "flag"),
        ("1.0", "x", "x"),
        ("abc", "blob", "blob"),
        ([1, 2], "name", "name"),
        (["a", {"b": 1}], "tags", "tags[1]"),
        ([[1, 2], [3, "4"]], "grid", "grid[1][1]"),
        ([[1], 2], "grid", "grid[1]"),
        ("abc", "tags", "tags"),
    ],
)
def test_declared_kinds_are_checked_on_read(
    value: Any, field: str, path: str | None, validate: bool
) -> None:
    payload = msgpack.packb({field: value})
    exc = sample_error(Scalars, payload, validate=validate)
    if path is None:  # an ext type: refused by the decoder itself
        assert exc.rule == "SAMPLE_MSGPACK" and "ext type" in exc.reason
    else:
        assert (exc.rule, exc.field) == ("SAMPLE_KIND", path)


def test_right_kinds_read() -> None:
    s: Any = Scalars.unpack(
        msgpack.packb(
            {
                "n": 3,
                "x": 2,
                "flag": False,
                "name": "a",
                "blob": b"\0",
                "grid": [[1], []],
                "tags": [],
            }
        )
    )
    assert (s.n, s.x, s.flag, s.name, s.blob, s.grid, s.tags) == (
        3,
        2,
        False,
        "a",
        b"\0",
        [[1], []],
        [],
    )


def test_pack_checks_kinds_too() -> None:
    with pytest.raises(SampleFormatError) as info:
        Scalars(name={"a": 1}).pack(member="k.msgpack")  # type: ignore[call-arg]
    assert (info.value.rule, info.value.field) == ("SAMPLE_KIND", "name")
    with pytest.raises(SampleFormatError) as info:
        Scalars(tags=["a", 3]).pack()  # type: ignore[call-arg]
    assert (info.value.rule, info.value.field) == ("SAMPLE_KIND", "tags[1]")
    # tuples for lists and numpy scalars still pack
    back: Any = Scalars.unpack(
        Scalars(tags=("a",), n=np.int64(3)).pack()  # type: ignore[call-arg]
    )
    assert (back.tags, back.n) == (["a"], 3)


@pytest.mark.parametrize("large", [False, True], ids=["small", "large"])
@pytest.mark.parametrize(
    "ext",
    [
        b"\xc7\x00\x05",  # ext 8, type 5, no data
        b"\xd6\xff\x00\x00\x00\x00",  # a Timestamp (type -1)
        b"\xd4\x01x",  # fixext 1
        b"\xc8\x01\x2c\x09" + b"x" * 300,  # ext 16, type 9, 300 bytes
    ],
    ids=["ext8-empty", "timestamp", "fixext1", "ext16"],
)
def test_ext_types_are_refused_anywhere(large: bool, ext: bytes) -> None:
    head = (
        b"\x82" + msgpack.packb("name") + msgpack.packb("x" * 70_000)
        if large
        else b"\x81"
    )
    payload = head + msgpack.packb("extra") + b"\x92\x01\x81\xa1k" + ext
    for cls in (Scalars, Arrays):
        exc = sample_error(cls, payload)
        assert exc.rule == "SAMPLE_MSGPACK" and "ext type refused" in exc.reason
    exc = sample_error(Scalars, b"\x81" + msgpack.packb("name") + ext)
    assert exc.rule == "SAMPLE_MSGPACK" and "ext type refused" in exc.reason


def _large_map(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A msgpack map of raw (key, value) encodings, with a 70 KB ``name`` entry so
    that it takes the large-payload path."""
    entries = [(msgpack.packb("name"), msgpack.packb("x" * 70_000)), *entries]
    return (
        b"\xde" + struct.pack(">H", len(entries)) + b"".join(k + v for k, v in entries)
    )


@pytest.mark.parametrize("cls", [Arrays, Scalars], ids=["arrays", "scalars"])
@pytest.mark.parametrize(
    "key",
    [msgpack.packb([1, 2]), msgpack.packb(5), msgpack.packb(b"k"), msgpack.packb(None)],
    ids=["list", "int", "bytes", "nil"],
)
@pytest.mark.parametrize("unknown", ["keep", "drop", "error"])
def test_non_string_map_keys_on_the_large_path(
    cls: type[PackableSample], key: bytes, unknown: Any
) -> None:
    payload = _large_map([(key, msgpack.packb(1))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exc = sample_error(cls, payload, unknown=unknown)
    assert exc.rule in ("SAMPLE_MAP_KEY", "SAMPLE_MSGPACK")
    if cls is Arrays:  # the hand walk sees each key
        assert exc.rule == "SAMPLE_MAP_KEY"


@pytest.mark.parametrize("unknown", ["keep", "drop", "error"])
def test_non_string_map_keys_on_the_small_path(unknown: Any) -> None:
    for key in (5, b"k"):
        payload = msgpack.packb({"name": "a", key: 1})
        exc = sample_error(Scalars, payload, unknown=unknown)
        assert exc.rule in ("SAMPLE_MAP_KEY", "SAMPLE_MSGPACK")
    exc = sample_error(Scalars, msgpack.packb({"name": "a", b"k": 1}), unknown=unknown)
    assert exc.rule == "SAMPLE_MAP_KEY"


def test_int_key_with_unknown_drop_is_located() -> None:
    exc = sample_error(
        Arrays, _large_map([(msgpack.packb(7), b"\x01")]), unknown="drop"
    )
    assert exc.rule == "SAMPLE_MAP_KEY" and "7" in exc.reason


@pytest.mark.parametrize("depth", [33, 980])
def test_deep_undeclared_values_are_refused(depth: int) -> None:
    payload = b"\x82" + msgpack.packb("name") + msgpack.packb("a")
    payload += msgpack.packb("deep") + b"\x91" * depth + b"\x01"
    exc = sample_error(Scalars, payload)
    assert (exc.rule, exc.field) == ("SAMPLE_DEPTH", "deep")
    ok = b"\x82" + msgpack.packb("name") + msgpack.packb("a")
    ok += msgpack.packb("deep") + b"\x91" * 31 + b"\x01"
    sample = Scalars.unpack(ok)
    assert Scalars.unpack(sample.pack()).unknown_fields == sample.unknown_fields


@pytest.mark.parametrize(
    "raw",
    [
        b"\x81\xa4name\xdb\xff\xff\xff\xff",  # str of 4 GiB declared
        b"\x81\xa4blob\xc6\xff\xff\xff\xff",  # bin of 4 GiB declared
        b"\x81\xa4tags\xdd\xff\xff\xff\xff",  # array of 4 G items declared
        b"\x81\xa4tags\xdf\xff\xff\xff\xff",  # map of 4 G entries declared
        b"\xdf\xff\xff\xff\xff",  # top-level map of 4 G entries declared
    ],
    ids=["str", "bin", "array", "map", "top-map"],
)
def test_declared_lengths_past_the_payload_are_refused(raw: bytes) -> None:
    exc = sample_error(Scalars, raw)
    assert exc.rule == "SAMPLE_MSGPACK"
    big = _large_map([(msgpack.packb("tags"), raw[-5:])])
    exc = sample_error(Arrays, big)
    assert exc.rule == "SAMPLE_MSGPACK"


@pytest.mark.parametrize("cls_fields", ["scalars", "arrays"])
@pytest.mark.parametrize(
    ("mib", "nested"),
    [
        (15, b"\x80"),
        (4, b"\x80"),
        (4, b"\x90"),
        (15, b"\x91\x80"),
        (12, b"\xa2ab"),
        (90, b"\xa2ab"),
        (12, b"\xe0"),
        (12, b"\xcb" + bytes(8)),
    ],
    ids=[
        "15MiB-maps",
        "4MiB-maps",
        "4MiB-lists",
        "15MiB-lists-of-maps",
        "12MiB-short-strings",
        "90MiB-short-strings",
        "12MiB-ints",
        "12MiB-floats",
    ],
)
def test_empty_maps_and_lists_stay_bounded(
    cls_fields: str, mib: int, nested: bytes
) -> None:
    """15 MiB: the list is longer than the budget allows and is refused before
    msgpack allocates it; 4 MiB: it is allocated, and its maps (lists) are counted
    until the budget runs out. Strings and numbers count at their size too: 3
    bytes (``"ab"``) become a 51-byte str, so 12 MiB of them grew RSS by 292 MiB
    and 90 MiB by 2 GiB when only the list slots were counted."""
    out = run_bounded(
        f"""
        import struct, msgpack
        from atdata_runtime.samples import FieldSpec, sample_class
        fields = [FieldSpec("x", "x", "int")]
        if {cls_fields!r} == "arrays":
            fields.append(FieldSpec("a", "a", "ndarray", optional=True))
        cls = sample_class("S", fields)
        n = ({mib} << 20) // {len(nested)}
        payload = (b"\\x82" + msgpack.packb("x") + msgpack.packb(1) + msgpack.packb("junk")
                   + b"\\xdd" + struct.pack(">I", n) + {nested!r} * n)
        cls.unpack(payload, member="k.msgpack", shard="s.tar")
        """,
        address_space_mib=1536,
        timeout=90,
    )
    assert out.error_type == "atdata_runtime.samples.errors.SampleFormatError", out
    assert "[SAMPLE_TOO_LARGE]" in (out.error or "")
    assert "shard 's.tar', member 'k.msgpack'" in (out.error or "")
    assert "DECODED_MAX_BYTES" in (out.error or "")
    assert out.max_rss_mib < 250  # unbounded, 15 MiB of maps took 1.16 GiB


@pytest.mark.parametrize("cls_fields", ["scalars", "arrays"])
def test_wide_maps_of_distinct_keys_stay_bounded(cls_fields: str) -> None:
    """A payload map (or a value map) of millions of distinct short keys: each
    entry is a dict slot and a fresh str, counted before they are built."""
    out = run_bounded(
        f"""
        import struct, msgpack
        from atdata_runtime.samples import FieldSpec, sample_class
        fields = [FieldSpec("x", "x", "int")]
        if {cls_fields!r} == "arrays":
            fields.append(FieldSpec("a", "a", "ndarray", optional=True))
        cls = sample_class("S", fields)
        n = (15 << 20) // 6
        import numpy as np
        table = np.zeros(n, dtype=[("m", "u1"), ("k", "u1", 4), ("v", "u1")])
        i = np.arange(n)
        table["m"] = 0xA4  # fixstr of 4 distinct ASCII characters: 0
        for d in range(4):
            table["k"][:, d] = 0x30 + (i >> (6 * d)) % 64
        del i
        entries = table.tobytes()
        del table
        payload = b"\\xdf" + struct.pack(">I", n + 1) + msgpack.packb("x") + b"\\x01" + entries
        cls.unpack(payload, member="k.msgpack", shard="s.tar")
        """,
        address_space_mib=1536,
        timeout=90,
    )
    assert out.error_type == "atdata_runtime.samples.errors.SampleFormatError", out
    assert "[SAMPLE_TOO_LARGE]" in (out.error or "")
    assert out.max_rss_mib < 250


def test_a_large_payload_of_real_lists_still_reads() -> None:
    grid = [[i, i + 1] for i in range(40_000)]  # ~3 bytes per pair: 120 KB
    s: Any = Scalars.unpack(Scalars(grid=grid).pack())  # type: ignore[call-arg]
    assert s.grid == grid


def test_schema_checks_carry_their_rule() -> None:
    cls = sample_class(
        "Typed",
        [
            FieldSpec("a", "a", "ndarray", dtype="uint8", shape=(2,)),
            FieldSpec("name", "name", "str", enum=("x", "y")),
        ],
    )
    payload = msgpack.packb({"a": compact(b"<f4", (2,), b"\0" * 8), "name": "x"})
    exc = sample_error(cls, payload, validate=True)
    assert (exc.rule, exc.field) == ("SAMPLE_SCHEMA", "a")
    payload = msgpack.packb({"a": compact(b"|u1", (2,), b"\0" * 2), "name": "z"})
    exc = sample_error(cls, payload, validate=True)
    assert (exc.rule, exc.field) == ("SAMPLE_SCHEMA", "name")
    exc = sample_error(cls, msgpack.packb({"name": "x"}))
    assert (exc.rule, exc.field) == ("SAMPLE_MISSING", "a")
    extra = {"a": compact(b"|u1", (2,), b"\0" * 2), "name": "x", "q": 1}
    exc = sample_error(cls, msgpack.packb(extra), unknown="error")
    assert exc.rule == "SAMPLE_UNKNOWN_FIELD" and "'q'" in exc.reason


@pytest.mark.parametrize(
    "name, payload, reason",
    [
        ("format-small", b"\xc1", "starts no msgpack value"),
        ("stack-small", b"\x91" * 5000 + b"\xc0", "stack limit"),
        (
            "stack-large",
            b"\x82\xa1a" + b"\x91" * 100_000 + b"\xc0" + b"\xa1b\xc4" + b"\x00",
            "stack limit",
        ),
    ],
)
def test_msgpack_errors_always_say_why(name: str, payload: bytes, reason: str) -> None:
    """Trial of issue 14: msgpack's own errors carry no text, so the message read
    "payload is not msgpack:  [SAMPLE_MSGPACK]", and a too-deep map on the large
    path was called "not a msgpack map". Each now names its reason."""
    for cls in (Scalars, Arrays):
        exc = sample_error(cls, payload)
        assert exc.rule in ("SAMPLE_MSGPACK", "SAMPLE_KIND", "SAMPLE_DEPTH"), exc
        text = str(exc)
        assert ":  [" not in text and not text.rstrip().endswith(": ["), text
        if exc.rule == "SAMPLE_MSGPACK":
            assert reason in text, text
