"""The compiled per-class fast paths of the sample codec (all-scalar classes) give
exactly what the general path gives: the same bytes, the same sample, the same
error (rule and text), for well-formed and hostile input alike; they are used only
where no class in the MRO defines its own ``pack``/``unpack``; packers are never
shared between calls in flight (threads)."""

from __future__ import annotations

import dataclasses
import enum
import threading
import warnings
from typing import Any

import msgpack
import numpy as np
import pytest
from atdata_runtime.samples import FieldSpec, PackableSample, SampleFormatError
from atdata_runtime.samples import codec as codec_mod
from hypothesis import given, settings
from hypothesis import strategies as st


@dataclasses.dataclass(kw_only=True, eq=False)
class Scalars(PackableSample):
    sample_fields = (
        FieldSpec("x", "x", "int"),
        FieldSpec("y", "y", "float"),
        FieldSpec("name", "name", "str"),
        FieldSpec("flag", "flag", "bool", optional=True),
        FieldSpec("raw", "raw", "bytes", optional=True),
        FieldSpec("color", "color", "str", optional=True, enum=("red", "green")),
        FieldSpec("class_", "class", "str", optional=True),
    )
    x: int
    y: float
    name: str
    flag: bool | None = None
    raw: bytes | None = None
    color: str | None = None
    class_: str | None = None


@dataclasses.dataclass(kw_only=True, eq=False)
class WithArray(PackableSample):
    sample_fields = (
        FieldSpec("a", "a", "ndarray", dtype="uint8"),
        FieldSpec("s", "s", "str"),
        FieldSpec("b", "b", "ndarray", optional=True, dtype="float32", shape=(2,)),
    )
    a: Any
    s: str
    b: Any = None


def general_pack(sample: PackableSample) -> Any:
    try:
        return sample._codec().pack(sample, None)
    except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
        return outcome(exc)


def fast_pack(sample: PackableSample) -> Any:
    try:
        return sample.pack()
    except Exception as exc:  # noqa: BLE001
        return outcome(exc)


def outcome(exc: Exception) -> tuple[str, str, str | None]:
    return (type(exc).__name__, str(exc), getattr(exc, "rule", None))


def as_tuple(sample: PackableSample) -> tuple[Any, ...]:
    return (
        type(sample),
        *[getattr(sample, f.name) for f in sample.sample_fields],
        sample.unknown_fields,
        list(vars(sample).items()),  # the same attributes, set in the same order
    )


def general_unpack(cls: type[PackableSample], payload: Any, **kw: Any) -> Any:
    args = {"unknown": "keep", "validate": False, "copy": False, **kw}
    try:
        return as_tuple(
            cls._codec().unpack(
                payload, None, args["unknown"], args["validate"], args["copy"]
            )
        )
    except Exception as exc:  # noqa: BLE001
        return outcome(exc)


def fast_unpack(cls: type[PackableSample], payload: Any, **kw: Any) -> Any:
    try:
        return as_tuple(cls.unpack(payload, **kw))
    except Exception as exc:  # noqa: BLE001
        return outcome(exc)


def test_fast_paths_are_installed_for_scalar_classes_only() -> None:
    Scalars(x=1, y=2.0, name="n").pack()
    WithArray(a=np.zeros(3, np.uint8), s="s").pack()
    assert getattr(Scalars.__dict__["pack"], "_atdata_fast", False)
    assert getattr(Scalars.__dict__["unpack"].__func__, "_atdata_fast", False)
    assert "pack" not in WithArray.__dict__  # arrays keep the general pack
    assert "unpack" in WithArray.__dict__  # and take the fast unpack


def test_fast_pack_bytes_are_msgpack_packb_of_the_fields() -> None:
    s = Scalars(x=7, y=0.5, name="sample", flag=True, raw=b"\x00", color="red")
    payload = s.pack()
    assert "pack" in Scalars.__dict__
    assert payload == msgpack.packb(s.to_dict())
    assert payload == s._codec().pack(s, None)


class Color(enum.StrEnum):
    RED = "red"


class Big(enum.IntEnum):
    ONE = 1


PACK_CASES = [
    Scalars(x=1, y=1, name="int for float"),
    Scalars(x=np.int64(3), y=np.float32(0.25), name="numpy scalars"),
    Scalars(x=Big.ONE, y=1.0, name="int enum"),
    Scalars(x=1, y=1.0, name=Color.RED, color=Color.RED),
    Scalars(x=True, y=1.0, name="bool for int"),
    Scalars(x=None, y=1.0, name="required None"),  # type: ignore[arg-type]
    Scalars(x=1, y=1.0, name="bad enum", color="blue"),
    Scalars(x=1, y=1.0, name="dict for str", class_={"a": 1}),  # type: ignore[arg-type]
    Scalars(x=1 << 70, y=1.0, name="int out of range"),
    Scalars(x=1, y=1.0, name="unknown", unknown_fields={"z": [1, 2], "x": 9}),
    Scalars(x=1, y=1.0, name="empty unknown", unknown_fields={}),
]


@pytest.mark.parametrize("sample", PACK_CASES, ids=lambda s: s.name)
def test_fast_pack_matches_the_general_path(sample: Scalars) -> None:
    assert fast_pack(sample) == general_pack(sample)


def test_subclass_and_override_keep_their_own_pack() -> None:
    @dataclasses.dataclass(kw_only=True, eq=False)
    class More(Scalars):
        sample_fields = (*Scalars.sample_fields, FieldSpec("z", "z", "int"))
        z: int

    @dataclasses.dataclass(kw_only=True, eq=False)
    class Custom(Scalars):
        def pack(self, *, member: str | None = None) -> bytes:
            return b"custom"

    Scalars(x=1, y=1.0, name="a").pack()  # the parent's fast path is installed
    more = More(x=1, y=1.0, name="a", z=5)
    assert msgpack.unpackb(more.pack())["z"] == 5
    assert More.unpack(more.pack()).z == 5
    assert Custom(x=1, y=1.0, name="a").pack() == b"custom"
    assert "pack" in Custom.__dict__
    assert Custom.__dict__["pack"](Custom(x=1, y=1.0, name="a")) == b"custom"
    with pytest.raises(SampleFormatError, match="z"):  # More's field, not Scalars'
        More.unpack(Scalars(x=1, y=1.0, name="a").pack())


GOOD = {
    "x": 1,
    "y": 2.5,
    "name": "n",
    "flag": None,
    "raw": b"r",
    "color": "green",
    "class": "c",
}

UNPACK_CASES = [
    msgpack.packb(GOOD),
    msgpack.packb({**GOOD, "y": 3}),  # an int in a float field
    msgpack.packb({k: v for k, v in GOOD.items() if k != "raw"}),  # optional absent
    msgpack.packb(
        {**{k: v for k, v in GOOD.items() if k != "raw"}, "zz": 1}
    ),  # same count
    msgpack.packb({**{k: v for k, v in GOOD.items() if k != "x"}, "zz": 1}),
    msgpack.packb({**GOOD, "x": True}),
    msgpack.packb({**GOOD, "flag": "yes"}),  # an optional field of the wrong kind
    msgpack.packb({**GOOD, "raw": 5}),
    msgpack.packb({**GOOD, "x": None}),
    msgpack.packb({**GOOD, "name": {"a": 1}}),
    msgpack.packb({**GOOD, "color": "blue"}),
    msgpack.packb({**GOOD, "extra": [[1]]}),
    msgpack.packb({**GOOD, 5: 1}),
    msgpack.packb([1, 2, 3]),
    msgpack.packb({**GOOD, "raw": msgpack.ExtType(3, b"x")}),
    b"\xc1",
    b"",
    msgpack.packb(GOOD) + b"\x00",
    msgpack.packb(GOOD)[:-2],
    b"\x87" + b"\xa1x" * 20,
]


@pytest.mark.parametrize("payload", UNPACK_CASES)
@pytest.mark.parametrize(
    "kw",
    [{}, {"validate": True}, {"unknown": "error"}, {"unknown": "drop"}],
    ids=["default", "validate", "unknown-error", "unknown-drop"],
)
def test_fast_unpack_matches_the_general_path(
    payload: bytes, kw: dict[str, Any]
) -> None:
    Scalars.unpack(msgpack.packb(GOOD))
    assert "unpack" in Scalars.__dict__
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown="drop" warns (once per key set)
        assert fast_unpack(Scalars, payload, **kw) == general_unpack(
            Scalars, payload, **kw
        )


scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 63), (1 << 64) - 1),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.sampled_from(["red", "green", "blue"]),
)
keys = st.sampled_from(["x", "y", "name", "flag", "raw", "color", "class", "zz"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, scalar, max_size=8), st.booleans())
def test_fast_unpack_matches_the_general_path_on_random_maps(
    data: dict[str, Any], validate: bool
) -> None:
    payload = msgpack.packb(data)
    assert fast_unpack(Scalars, payload, validate=validate) == general_unpack(
        Scalars, payload, validate=validate
    )


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({k: scalar for k in GOOD}))
def test_fast_unpack_matches_the_general_path_on_complete_maps(
    data: dict[str, Any],
) -> None:
    # Every declared key present: the maps the fast path takes (or refuses).
    payload = msgpack.packb(data)
    assert fast_unpack(Scalars, payload) == general_unpack(Scalars, payload)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {"x": scalar, "y": scalar, "name": scalar},
        optional={"flag": scalar, "raw": scalar, "color": scalar, "class_": scalar},
    )
)
def test_fast_pack_matches_the_general_path_on_random_values(
    values: dict[str, Any],
) -> None:
    sample = Scalars(**values)
    assert fast_pack(sample) == general_pack(sample)


def test_packers_are_not_shared_between_threads() -> None:
    samples = [Scalars(x=i, y=i / 2, name="s" * (i % 300)) for i in range(400)]
    expected = [msgpack.packb(s.to_dict()) for s in samples]
    failures: list[int] = []
    barrier = threading.Barrier(8)

    def work(offset: int) -> None:
        barrier.wait()
        for _ in range(50):
            for i in range(offset, len(samples), 8):
                if samples[i].pack() != expected[i]:
                    failures.append(i)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert 1 <= len(codec_mod._PACKERS) <= 8


def test_unpack_of_a_fast_class_stays_bounded_on_hostile_lengths() -> None:
    # A str header claiming 4 GiB in a 10-byte payload: refused by msgpack's
    # limits (from the payload size), as on the general path.
    payload = b"\x81\xa1x\xdb\xff\xff\xff\xff\x00\x00"
    result = fast_unpack(Scalars, payload)
    assert result == general_unpack(Scalars, payload)
    assert result[0] == "SampleFormatError" and result[2] == "SAMPLE_MSGPACK"
    with pytest.raises(SampleFormatError):
        Scalars.unpack(payload)


def test_fast_unpack_runs_what_a_hand_written_init_does() -> None:
    # Only an __init__ that @dataclass wrote is replaced by direct assignment; a
    # __post_init__, a custom __setattr__ or __init__ still run.
    calls: list[str] = []

    @dataclasses.dataclass(kw_only=True, eq=False)
    class Post(PackableSample):
        sample_fields = (FieldSpec("x", "x", "int"),)
        x: int

        def __post_init__(self) -> None:
            calls.append("post")

    @dataclasses.dataclass(kw_only=True, eq=False)
    class Watched(PackableSample):
        sample_fields = (FieldSpec("x", "x", "int"),)
        x: int

        def __setattr__(self, name: str, value: Any) -> None:
            calls.append(f"set {name}")
            object.__setattr__(self, name, value)

    @dataclasses.dataclass(kw_only=True, eq=False, init=False)
    class Manual(PackableSample):
        sample_fields = (FieldSpec("x", "x", "int"),)
        x: int

        def __init__(self, *, x: int, unknown_fields: Any = None) -> None:
            calls.append("init")
            self.x = x * 2
            self.unknown_fields = unknown_fields

    payload = msgpack.packb({"x": 3})
    assert codec_mod._plain_init_order(Scalars) == [
        "unknown_fields",
        *[f.name for f in Scalars.sample_fields],
    ]
    for cls in (Post, Watched, Manual):
        assert codec_mod._plain_init_order(cls) is None
    calls.clear()
    assert Post.unpack(payload).x == 3 and calls == ["post"]
    calls.clear()
    assert Watched.unpack(payload).x == 3
    assert calls == ["set unknown_fields", "set x"]
    calls.clear()
    assert Manual.unpack(payload).x == 6 and calls == ["init"]
    for cls in (Post, Watched, Manual):
        assert getattr(cls.__dict__["unpack"].__func__, "_atdata_fast", False)


def test_wire_names_of_any_text_are_written_as_they_are() -> None:
    # Wire names become literals in the compiled source: quotes, backslashes,
    # newlines, braces and non-ASCII must come out as the same keys.
    wires = ["a'b\"c", "back\\slash\n", "{x}", "ünï\u2028", "", "__import__('os')"]

    @dataclasses.dataclass(kw_only=True, eq=False)
    class Odd(PackableSample):
        sample_fields = tuple(FieldSpec(f"f{i}", w, "int") for i, w in enumerate(wires))
        f0: int
        f1: int
        f2: int
        f3: int
        f4: int
        f5: int

    sample = Odd(**{f"f{i}": i for i in range(len(wires))})
    payload = sample.pack()
    assert getattr(Odd.__dict__["pack"], "_atdata_fast", False)
    assert payload == msgpack.packb({w: i for i, w in enumerate(wires)})
    back = Odd.unpack(payload)
    assert getattr(Odd.__dict__["unpack"].__func__, "_atdata_fast", False)
    assert [getattr(back, f"f{i}") for i in range(len(wires))] == list(range(6))
    assert back.unknown_fields is None


def array_outcome(result: Any) -> Any:
    """An unpack outcome with arrays as (dtype, shape, bytes, writable, owner)."""
    if not (isinstance(result, tuple) and isinstance(result[0], type)):
        return result
    return tuple(
        (v.dtype.str, v.shape, v.tobytes(), v.flags.writeable, v.base is None)
        if isinstance(v, np.ndarray)
        else v
        for v in result[:-1]
    )


def wire(a: Any, s: Any = "s", **extra: Any) -> bytes:
    return msgpack.packb({"a": a, "s": s, **extra})


A = WithArray(a=np.arange(6, dtype=np.uint8).reshape(2, 3), s="s").pack()
A_BIN = msgpack.unpackb(A)["a"]
ARRAY_CASES = [
    A,
    WithArray(a=np.arange(3, dtype=np.uint8), s="s", b=np.ones(2, np.float32)).pack(),
    wire(A_BIN, b=None),
    wire(A_BIN, b=A_BIN),  # wrong dtype and shape for b: validate refuses
    wire(A_BIN[:-1]),  # data shorter than the shape
    wire(A_BIN[:3]),  # header truncated
    wire(b""),
    wire(b"\x01|O\x01" + bytes(8)),  # object dtype
    wire(b"\x93NUMPY\x01\x00\xff\xff"),  # .npy header past the payload
    wire("not bytes"),
    wire(A_BIN, s=b"bytes for str"),
    wire(A_BIN, zz=1),
    WithArray(a=np.zeros(70_000, np.uint8), s="s").pack(),  # the zero-copy walk
]


@pytest.mark.parametrize("payload", ARRAY_CASES)
@pytest.mark.parametrize(
    "kw", [{}, {"validate": True}, {"copy": True}], ids=["default", "validate", "copy"]
)
def test_fast_unpack_of_arrays_matches_the_general_path(
    payload: bytes, kw: dict[str, Any]
) -> None:
    WithArray.unpack(A)
    assert getattr(WithArray.__dict__["unpack"].__func__, "_atdata_fast", False)
    assert array_outcome(fast_unpack(WithArray, payload, **kw)) == array_outcome(
        general_unpack(WithArray, payload, **kw)
    )


def test_fast_unpack_arrays_are_views_of_the_payload() -> None:
    sample = WithArray.unpack(A)
    assert not sample.a.flags.writeable  # a view of the (immutable) payload
    assert np.array_equal(sample.a, np.arange(6, dtype=np.uint8).reshape(2, 3))
    assert WithArray.unpack(A, copy=True).a.flags.writeable
