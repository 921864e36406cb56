"""Fuzz: shard bytes from strangers (issue 14, "shard bytes: tar headers, msgpack,
array headers, .npy").

Inputs are valid shards (atdata 0.7.0b1's corpus shards and one written by this
project's :class:`~atdata_runtime.shards.ShardWriter`), mutated where it hurts:
header bytes (with and without a fixed-up checksum), numeric fields overwritten
with hostile values, pax records, truncation; msgpack payloads built from random
values and mutated; ``.npy`` and compact array headers built from a grammar of
hostile parts. The only errors allowed are the documented ones:
:class:`~atdata_runtime.shards.tar.TarFormatError` and
:class:`~atdata_runtime.samples.SampleFormatError` (its subclass
:class:`~atdata_runtime.samples.ArrayFormatError` included), each with a rule ID;
anything else (``OverflowError``, ``MemoryError``, ``TypeError``, a bare
``ValueError``) fails. Memory stays bounded: the same kinds of input, seeded, run
in a child process under an address-space cap with its peak RSS asserted.
"""

from __future__ import annotations

import io
import random
import struct
import tarfile
import tempfile
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from atdata_runtime.samples import (
    ArrayFormatError,
    FieldSpec,
    PackableSample,
    SampleFormatError,
    sample_class,
)
from atdata_runtime.samples.ndarray import decode_array
from atdata_runtime.shards import ShardWriter
from atdata_runtime.shards.tar import TarFormatError, iter_samples
from hypothesis import given, settings
from hypothesis import strategies as st

from .bounded import run_bounded

CORPUS_SHARDS = (
    Path(__file__).resolve().parents[2].parent / "shared/corpus/atdata/shards"
)

_STR = FieldSpec("", "", "str")
_FLOAT = FieldSpec("", "", "float")
CLASSES: dict[str, type[PackableSample]] = {
    "image": sample_class(
        "Image",
        [
            FieldSpec("image", "image", "ndarray", dtype="uint8"),
            FieldSpec("label", "label", "str"),
        ],
    ),
    "list": sample_class(
        "ListS",
        [
            FieldSpec("words", "words", "list", items=_STR),
            FieldSpec("values", "values", "list", items=_FLOAT),
            FieldSpec("embedding", "embedding", "ndarray", dtype="float64"),
        ],
    ),
    "optional": sample_class(
        "Optional",
        [
            FieldSpec("tokens", "tokens", "list", optional=True, items=_STR),
            FieldSpec("caption", "caption", "str", optional=True),
            FieldSpec("score", "score", "float", optional=True),
            FieldSpec("mask", "mask", "ndarray", optional=True),
        ],
    ),
    "scalar": sample_class(
        "Scalar",
        [
            FieldSpec("x", "x", "int"),
            FieldSpec("y", "y", "float"),
            FieldSpec("name", "name", "str"),
            FieldSpec("flag", "flag", "bool"),
            FieldSpec("blob", "blob", "bytes"),
        ],
    ),
    "mixed": sample_class(
        "Mixed",
        [
            FieldSpec("a", "a", "ndarray", optional=True),
            FieldSpec("s", "s", "structured", optional=True),
            FieldSpec("name", "name", "str", optional=True),
            FieldSpec(
                "grid",
                "grid",
                "list",
                optional=True,
                items=FieldSpec("", "", "list", items=FieldSpec("", "", "int")),
            ),
        ],
    ),
}


@cache
def shards() -> list[tuple[str, bytes, tuple[int, ...]]]:
    """(class name, shard bytes, header offsets) of every seed shard."""
    found: list[tuple[str, bytes]] = [
        (p.name.split("-")[0], p.read_bytes())
        for p in sorted(CORPUS_SHARDS.glob("*.tar"))
    ]
    mixed: Any = CLASSES["mixed"]
    with tempfile.TemporaryDirectory() as tmp:
        with ShardWriter(str(Path(tmp) / "m-%06d.tar"), progress=False) as sink:
            for i in range(4):
                sink.write(
                    mixed(
                        a=np.arange(i + 3, dtype="<f4"),
                        s=np.zeros(2, dtype=[("x", "<i2"), ("y", "<f8", (2,))]),
                        name="n" * (i * 70 + 1),
                        grid=[[i, 1], []],
                    ),
                    key=f"k{i}",
                )
        found += [("mixed", p.read_bytes()) for p in sorted(Path(tmp).glob("*.tar"))]
    assert len(found) == 5, "corpus shards missing (../shared/corpus/atdata/shards)"
    out = []
    for name, raw in found:
        with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
            offsets = tuple(m.offset for m in tf.getmembers())
        out.append((name, raw, offsets))
    return out


def consume(raw: bytes, cls: type[PackableSample], **unpack: Any) -> int:
    """Read ``raw`` as a shard and decode every sample; allowed errors swallowed
    (after checking their rule and location), anything else propagates. Returns
    how many samples decoded."""
    decoded = 0
    try:
        for key, group in iter_samples(
            io.BytesIO(raw), shard="fuzz.tar", max_member_bytes=1 << 20
        ):
            payload = group.get("msgpack")
            if payload is None:
                continue
            try:
                cls.unpack(payload, member=f"{key}.msgpack", shard="fuzz.tar", **unpack)
                decoded += 1
            except SampleFormatError as exc:
                assert exc.rule and exc.member == f"{key}.msgpack", exc
                assert exc.shard == "fuzz.tar"
    except TarFormatError as exc:
        assert exc.rule and exc.shard == "fuzz.tar" and exc.offset is not None, exc
    return decoded


_HOSTILE_NUMBERS = [
    b"\x80" + b"\xff" * 11,
    b"\xff" * 12,
    b"\x80" + (1 << 40).to_bytes(11, "big"),
    b"77777777777\0",
    b"-0000000001\0",
    b"0x1234\0\0\0\0\0\0",
    b"\0" * 12,
    b"99999999999\0",
    b" 1 2 3 4 5 \0",
]


def _fix_checksum(raw: bytearray, at: int) -> None:
    header = raw[at : at + 512]
    if len(header) < 512:
        return
    header[148:156] = b" " * 8
    raw[at + 148 : at + 156] = b"%06o\0 " % sum(header)


def mutate_shard(
    raw: bytes,
    offsets: tuple[int, ...],
    edits: list[tuple[int, int, int]],
    numbers: list[tuple[int, int, int]],
    fix: bool,
    cut: int | None,
) -> bytes:
    """``edits``: (member, byte in header, value); ``numbers``: (member, field
    [size, checksum, mode], hostile value index); ``fix``: recompute checksums;
    ``cut``: truncate there."""
    out = bytearray(raw)
    touched = set()
    for m, pos, value in edits:
        at = offsets[m % len(offsets)]
        out[at + pos % 512] = value
        touched.add(at)
    for m, field, which in numbers:
        at = offsets[m % len(offsets)]
        start = (124, 148, 100)[field % 3]
        width = 12 if start == 124 else 8
        out[at + start : at + start + width] = _HOSTILE_NUMBERS[
            which % len(_HOSTILE_NUMBERS)
        ][:width].ljust(width, b"\0")
        touched.add(at)
    if fix:
        for at in touched:
            _fix_checksum(out, at)
    if cut is not None:
        del out[cut % (len(out) + 1) :]
    return bytes(out)


@settings(derandomize=True, max_examples=600, deadline=None)
@given(
    shard=st.integers(0, 4),
    edits=st.lists(
        st.tuples(st.integers(0, 64), st.integers(0, 511), st.integers(0, 255)),
        max_size=6,
    ),
    numbers=st.lists(
        st.tuples(st.integers(0, 64), st.integers(0, 2), st.integers(0, 20)),
        max_size=2,
    ),
    fix=st.booleans(),
    cut=st.none() | st.integers(0, 1 << 20),
    validate=st.booleans(),
)
def test_mutated_shards_give_only_documented_errors(
    shard: int,
    edits: list[tuple[int, int, int]],
    numbers: list[tuple[int, int, int]],
    fix: bool,
    cut: int | None,
    validate: bool,
) -> None:
    name, raw, offsets = shards()[shard]
    consume(
        mutate_shard(raw, offsets, edits, numbers, fix, cut),
        CLASSES[name],
        validate=validate,
    )


def pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


@settings(derandomize=True, max_examples=120, deadline=None)
@given(
    records=st.lists(
        st.one_of(
            st.tuples(
                st.sampled_from(["size", "path", "comment", "", "size "]),
                st.one_of(
                    st.integers(-(1 << 70), 1 << 70).map(str),
                    st.text(max_size=12),
                ),
            ).map(lambda kv: pax_record(*kv)),
            st.binary(max_size=24),
        ),
        min_size=1,
        max_size=4,
    ),
    shard=st.integers(0, 4),
)
def test_hostile_pax_headers(records: list[bytes], shard: int) -> None:
    name, raw, offsets = shards()[shard]
    body = b"".join(records)
    info = tarfile.TarInfo("PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = len(body)
    pax = info.tobuf(tarfile.USTAR_FORMAT) + body + bytes(-len(body) % 512)
    # Put the pax member before the shard's second member (a sample's header).
    at = offsets[min(1, len(offsets) - 1)]
    consume(raw[:at] + pax + raw[at:], CLASSES[name])


# -- msgpack payloads ---------------------------------------------------------------

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | st.binary(max_size=16)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)
_KEYS = st.sampled_from(
    [
        "image",
        "label",
        "words",
        "values",
        "embedding",
        "tokens",
        "caption",
        "score",
        "mask",
        "x",
        "y",
        "name",
        "flag",
        "blob",
        "a",
        "s",
        "grid",
        "other",
    ]
)


def _unpack_all(payload: bytes, unknown: Any, validate: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cls in CLASSES.values():
            try:
                cls.unpack(
                    payload, member="k.msgpack", unknown=unknown, validate=validate
                )
            except SampleFormatError as exc:
                assert exc.rule and exc.member == "k.msgpack", exc


@settings(derandomize=True, max_examples=600, deadline=None)
@given(
    fields=st.dictionaries(_KEYS, _VALUES, max_size=6),
    flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=3),
    cut=st.none() | st.integers(0, 1 << 16),
    large=st.booleans(),
    unknown=st.sampled_from(["keep", "drop", "error"]),
    validate=st.booleans(),
)
def test_msgpack_payloads_give_only_sample_format_errors(
    fields: dict[str, Any],
    flips: list[tuple[int, int]],
    cut: int | None,
    large: bool,
    unknown: Any,
    validate: bool,
) -> None:
    if large:  # the large-payload path (hand walk, views, decoded-size budget)
        fields = {**fields, "label": "x" * 70_000}
    payload = bytearray(msgpack.packb(fields))
    for pos, value in flips:
        payload[pos % len(payload)] = value
    if cut is not None:
        del payload[cut % (len(payload) + 1) :]
    _unpack_all(bytes(payload), unknown, validate)


@settings(derandomize=True, max_examples=150, deadline=None)
@given(payload=st.binary(max_size=200), unknown=st.sampled_from(["keep", "drop"]))
def test_random_bytes_as_payloads(payload: bytes, unknown: Any) -> None:
    _unpack_all(payload, unknown, False)


# -- array headers -------------------------------------------------------------------

_DESCRS = st.one_of(
    st.sampled_from(
        [
            "'<f4'",
            "'|u1'",
            "'S0'",
            "'|V0'",
            "'|O'",
            "'<U0'",
            "'<M8[ns]'",
            "'>i8'",
            "'S999999999'",
            "'<f4'  ",
            "'x'",
            "''",
            "'<c16'",
        ]
    ),
    st.lists(
        st.tuples(
            st.sampled_from(["'a'", "''", "'b'", "1", "('t', 'a')"]),
            st.sampled_from(["'<f4'", "'|V4'", "'|O'", "'S0'", "[('c', '<i2')]"]),
            st.none()
            | st.sampled_from(["(0,)", "(2, 3)", "(True,)", "(2**40,)", "(-1,)"]),
        ).map(lambda t: f"({t[0]}, {t[1]}" + (f", {t[2]})" if t[2] else ")")),
        max_size=3,
    ).map(lambda xs: "[" + ", ".join(xs) + "]"),
)
_DIMS = st.one_of(
    st.integers(0, 8),
    st.integers(-(1 << 64), 1 << 64),
    st.sampled_from([1 << 62, 1 << 63, (1 << 63) - 1, 0]),
).map(str) | st.sampled_from(["True", "False", "1.5", "'3'", "None", "2**8"])


@st.composite
def npy_headers(draw: st.DrawFn) -> bytes:
    shape_items = draw(st.lists(_DIMS, max_size=5))
    shape = "(" + "".join(f"{d}, " for d in shape_items) + ")"
    if draw(st.booleans()):
        shape = "(" + ", ".join(shape_items) + ")"
    entries = {
        "'descr'": draw(_DESCRS),
        "'fortran_order'": draw(st.sampled_from(["False", "True", "0", "'x'"])),
        "'shape'": shape,
    }
    keys = draw(st.permutations(list(entries)))
    drop = draw(st.integers(0, 4))
    items = [f"{k}: {entries[k]}" for i, k in enumerate(keys) if i != drop]
    text = (
        "{" + ", ".join(items) + draw(st.sampled_from(["}", ", }", "} x", ""])) + "\n"
    )
    raw = bytearray(text.encode())
    for pos, value in draw(
        st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=2)
    ):
        raw[pos % len(raw)] = value
    return bytes(raw)


@settings(derandomize=True, max_examples=500, deadline=None)
@given(
    header=npy_headers(),
    version=st.sampled_from([1, 2, 3, 4]),
    lie=st.none() | st.integers(0, 1 << 32),
    data=st.binary(max_size=64),
)
def test_npy_headers_give_only_array_format_errors(
    header: bytes, version: int, lie: int | None, data: bytes
) -> None:
    length = len(header) if lie is None else lie
    if version == 1:
        prefix = b"\x93NUMPY\x01\x00" + struct.pack("<H", length & 0xFFFF)
    else:
        prefix = (
            b"\x93NUMPY" + bytes((version, 0)) + struct.pack("<I", length & 0xFFFFFFFF)
        )
    raw = prefix + header + data
    try:
        decode_array(raw)
    except ArrayFormatError as exc:
        assert exc.rule, exc
    _unpack_all(msgpack.packb({"s": raw, "a": raw, "mask": raw}), "keep", True)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(
    dtype=st.sampled_from(
        [b"<f4", b"|u1", b"S0", b"|V0", b"|O", b"<U2", b"zz", b"\xff", b""]
    )
    | st.binary(max_size=6),
    dims=st.lists(st.integers(-(1 << 63), (1 << 63) - 1), max_size=6),
    ndim_lie=st.none() | st.integers(0, 255),
    data=st.binary(max_size=64),
)
def test_compact_headers_give_only_array_format_errors(
    dtype: bytes, dims: list[int], ndim_lie: int | None, data: bytes
) -> None:
    ndim = len(dims) if ndim_lie is None else ndim_lie
    raw = (
        bytes((len(dtype),))
        + dtype
        + bytes((ndim,))
        + struct.pack(f"<{len(dims)}q", *dims)
        + data
    )
    try:
        decode_array(raw)
    except ArrayFormatError as exc:
        assert exc.rule, exc
    _unpack_all(msgpack.packb({"a": raw, "image": raw, "embedding": raw}), "keep", True)


# -- memory ---------------------------------------------------------------------------


def seeded_run(seed: int, count: int) -> dict[str, int]:
    """``count`` seeded hostile inputs of every kind above (for the bounded child):
    allowed error → counted by rule; anything else propagates."""
    rng = random.Random(seed)
    rules: dict[str, int] = {}

    def note(exc: TarFormatError | SampleFormatError) -> None:
        rules[exc.rule] = rules.get(exc.rule, 0) + 1

    seeds = shards()
    for i in range(count):
        name, raw, offsets = seeds[i % len(seeds)]
        edits = [
            (rng.randrange(64), rng.randrange(512), rng.randrange(256))
            for _ in range(rng.randrange(4))
        ]
        numbers = [
            (rng.randrange(64), rng.randrange(3), rng.randrange(20))
            for _ in range(rng.randrange(3))
        ]
        raw = mutate_shard(raw, offsets, edits, numbers, rng.random() < 0.7, None)
        try:
            for _key, group in iter_samples(io.BytesIO(raw), shard="s.tar"):
                try:
                    CLASSES[name].unpack(group.get("msgpack", b""), validate=True)
                except SampleFormatError as exc:
                    note(exc)
        except TarFormatError as exc:
            note(exc)
        # hostile declared sizes at full scale (no max_member_bytes lowered)
        for huge in (b"\x80" + (60 << 30).to_bytes(11, "big"), b"%011o\0" % (2 << 30)):
            cut = bytearray(raw[: offsets[0] + 512])
            cut[offsets[0] + 124 : offsets[0] + 136] = huge
            _fix_checksum(cut, offsets[0])
            try:
                list(iter_samples(io.BytesIO(bytes(cut) + b"x" * rng.randrange(999))))
            except TarFormatError as exc:
                note(exc)
        n = rng.choice([1 << 20, 4 << 20])
        payload = (
            b"\x81\xa1k\xdd" + struct.pack(">I", n) + rng.choice([b"\x80", b"\x90"]) * n
        )
        try:
            CLASSES["optional"].unpack(payload)
        except SampleFormatError as exc:
            note(exc)
        header = (
            b"{'descr': '<f4', 'fortran_order': False, 'shape': ("
            + b"1," * rng.randrange(1 << 20)
            + b")}"
        )
        try:
            decode_array(b"\x93NUMPY\x02\x00" + struct.pack("<I", len(header)) + header)
        except ArrayFormatError as exc:
            note(exc)
    return rules


def test_seeded_hostile_inputs_stay_bounded_in_memory() -> None:
    out = run_bounded(
        """
        from tests.fuzz.test_shard_bytes import seeded_run
        _result["value"] = seeded_run(14, 20)
        """,
        address_space_mib=1536,
        timeout=120,
    )
    assert out.error_type is None, (out.error_type, out.error, out.traceback)
    rules = out.value
    assert isinstance(rules, dict)
    assert {"TAR_MEMBER_TOO_LARGE", "NPY_HEADER", "SAMPLE_TOO_LARGE"} <= set(rules)
    assert out.max_rss_mib < 400
