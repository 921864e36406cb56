"""Code-first sample classes (atdata's habit): a hand-written
``@dataclass(kw_only=True) class MySample(PackableSample)`` gets its
``sample_fields`` from its annotations and behaves exactly like a generated class:
same fields, same payload bytes, same schema record, same batches; atdata 0.7 reads
what it writes. What cannot be packed is refused when the class is defined."""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional

import msgpack  # type: ignore[import-untyped]
import numpy as np
import pytest
from atdata_runtime.samples import (
    EncodedBlob,
    FieldSpec,
    PackableSample,
    SampleBatch,
    SampleFormatError,
    schema_record,
)
from atdata_runtime.samples.schema import SCHEMA_FORMS
from atdata_runtime.shards import Dataset, write_samples
from numpy.typing import NDArray

from .conftest import CORPUS, compile_to, side

SHARDS = CORPUS / "atdata" / "shards"


# atdata's four fixture classes (tests/interop/atdata_side.py), written by hand.
@dataclass(kw_only=True)
class ImageSample(PackableSample):
    image: NDArray[Any]
    label: str


@dataclass(kw_only=True)
class ScalarSample(PackableSample):
    x: int
    y: float
    name: str
    flag: bool
    blob: bytes


@dataclass(kw_only=True)
class OptionalSample(PackableSample):
    tokens: list[int]
    caption: str
    score: float | None = None
    mask: NDArray[Any] | None = None


@dataclass(kw_only=True)
class ListSample(PackableSample):
    words: list[str]
    values: list[float]
    embedding: np.ndarray  # type: ignore[type-arg]


HAND = {c.__name__: c for c in (ImageSample, ScalarSample, OptionalSample, ListSample)}


@dataclass(kw_only=True)
class Everything(PackableSample):
    image: NDArray[np.uint8]
    depth: NDArray[np.float32] | None = None
    count: int
    score: float
    name: str
    flag: bool
    raw: bytes
    grid: list[list[int]]
    tags: Optional[list[str]] = None  # noqa: UP045 - Optional is accepted too
    note: Annotated[str, "documentation"] = "n/a"


def _everything(i: int = 0) -> Everything:
    return Everything(
        image=np.arange(12, dtype=np.uint8).reshape(3, 4) + i,
        depth=np.full((2, 2), 0.5 + i, np.float32) if i % 2 else None,
        count=i,
        score=1.5 * i,
        name=f"s{i}",
        flag=bool(i % 2),
        raw=bytes([i, 0, 255]),
        grid=[[i], [1, 2]],
        tags=["a", str(i)] if i % 3 else None,
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    out = tmp_path_factory.mktemp("codefirst")
    compile_to(out, [CORPUS / "atdata" / "records"], "codefirst_pkg")
    sys.path.insert(0, str(out))
    try:
        yield {
            name: getattr(
                importlib.import_module(f"codefirst_pkg.samples.{module}_v1_0_0"), name
            )
            for name, module in [
                ("ImageSample", "image_sample"),
                ("ScalarSample", "scalar_sample"),
                ("OptionalSample", "optional_sample"),
                ("ListSample", "list_sample"),
            ]
        }
    finally:
        sys.path.remove(str(out))


def test_fields_come_from_the_annotations() -> None:
    by_name = {f.name: f for f in Everything.sample_fields}
    assert list(by_name) == [
        "image",
        "depth",
        "count",
        "score",
        "name",
        "flag",
        "raw",
        "grid",
        "tags",
        "note",
    ]
    assert by_name["image"] == FieldSpec("image", "image", "ndarray", dtype="uint8")
    assert by_name["depth"] == FieldSpec(
        "depth", "depth", "ndarray", optional=True, dtype="float32"
    )
    assert by_name["grid"].items == FieldSpec(
        "", "", "list", items=FieldSpec("", "", "int")
    )
    assert by_name["tags"].optional and by_name["tags"].kind == "list"
    assert [by_name[n].kind for n in ("count", "score", "name", "flag", "raw")] == [
        "int",
        "float",
        "str",
        "bool",
        "bytes",
    ]
    assert by_name["note"] == FieldSpec("note", "note", "str")


def test_packs_every_field_and_unpacks() -> None:
    for i in range(3):
        sample = _everything(i)
        payload = sample.pack()
        data = msgpack.unpackb(payload)
        assert list(data) == [f.wire for f in Everything.sample_fields]
        back = Everything.unpack(payload)
        assert back == sample  # plain @dataclass: the array-aware __eq__ is kept
        assert back.image.dtype == np.uint8 and back.grid == [[i], [1, 2]]
    assert _everything(1) != _everything(2)


def test_write_read_and_batch_through_shards(tmp_path: Path) -> None:
    samples = [_everything(i) for i in range(6)]
    shards = write_samples(samples, str(tmp_path / "e-%06d.tar"), maxcount=4)
    with tarfile.open(shards[0]) as tar:
        assert min(m.size for m in tar.getmembers()) > 50
    assert list(Dataset[Everything](shards)) == samples
    first, second = Dataset[Everything](shards).ordered(batch_size=3)
    assert first.image.shape == (3, 3, 4) and first.image.dtype == np.uint8
    assert first.count == [0, 1, 2] and first.raw[1] == bytes([1, 0, 255])
    assert isinstance(first.depth, list) and first.depth[0] is None  # ragged policy
    assert second.tags == [s.tags for s in samples[3:]]


@pytest.mark.parametrize("name", list(HAND))
def test_same_fields_payloads_and_record_as_generated(
    generated: dict[str, Any], name: str
) -> None:
    hand, gen = HAND[name], generated[name]
    assert hand.sample_fields == gen.sample_fields
    stamp = "2026-01-01T00:00:00+00:00"
    assert schema_record(
        hand,
        created_at=stamp,
        description=gen.schema_description,
        metadata=gen.schema_metadata,
    ) == schema_record(gen, created_at=stamp)
    # atdata's own shard: read with both classes, packed back to the same bytes
    shard = str(SHARDS / f"{name.removesuffix('Sample').lower()}-000000.tar")
    hand_samples = list(Dataset[hand](shard))
    gen_samples = list(Dataset[gen](shard))
    assert len(hand_samples) == 16
    for h, g in zip(hand_samples, gen_samples, strict=True):
        assert h.pack() == g.pack()
        assert h.to_dict().keys() == g.to_dict().keys()


def test_atdata_fixture_with_optional_fields_batches_with_a_hand_written_class() -> (
    None
):
    shard = str(SHARDS / "optional-000000.tar")
    batches = list(Dataset[OptionalSample](shard).ordered(batch_size=2))
    assert len(batches) == 8
    assert batches[0].score == [0.0, None]
    assert isinstance(batches[0].mask, list) and batches[0].mask[1] is None


def test_atdata_reads_what_a_hand_written_class_writes(
    atdata_python: str, tmp_path: Path
) -> None:
    samples = [
        OptionalSample(
            tokens=list(range(i)),
            caption=f"c{i}",
            score=None if i % 2 else float(i),
            mask=np.eye(2, dtype=np.float32) if i % 3 == 0 else None,
        )
        for i in range(5)
    ]
    (shard,) = write_samples(samples, str(tmp_path / "h-%06d.tar"))
    read = side(atdata_python, "read", "OptionalSample", shard)
    assert [r["caption"] for r in read] == [s.caption for s in samples]
    assert [r["tokens"] for r in read] == [s.tokens for s in samples]
    assert [r["score"] for r in read] == [s.score for s in samples]
    assert [r["mask"] is None for r in read] == [s.mask is None for s in samples]


def test_string_annotations_resolve_in_the_defining_scope() -> None:
    Pixels = NDArray[np.int16]  # a local alias: not visible from the module

    @dataclass(kw_only=True)
    class Local(PackableSample):
        pixels: Pixels
        ids: list[int]

    assert Local.sample_fields[0] == FieldSpec(
        "pixels", "pixels", "ndarray", dtype="int16"
    )
    sample = Local(pixels=np.zeros(3, np.int16), ids=[1])
    assert Local.unpack(sample.pack()) == sample


def test_field_metadata_sets_wire_name_shape_and_encoding(tmp_path: Path) -> None:
    @dataclass(kw_only=True)
    class Meta(PackableSample):
        keys_: list[str] = field(metadata={"wire": "keys"})
        image: NDArray[np.uint8] = field(
            metadata={"shape": (None, 2), "dims": ("row", "col")}
        )
        sparse: EncodedBlob | None = field(
            default=None, metadata={"encoding": "sparse"}
        )
        label: ClassVar[str] = "not a field"

    specs = {f.name: f for f in Meta.sample_fields}
    assert list(specs) == ["keys_", "image", "sparse"]
    assert specs["keys_"].wire == "keys"
    assert specs["image"].shape == (None, 2) and specs["image"].dims == ("row", "col")
    assert specs["sparse"].kind == "encoded" and specs["sparse"].encoding == "sparse"
    sample = Meta(keys_=["a"], image=np.zeros((1, 2), np.uint8))
    assert list(msgpack.unpackb(sample.pack())) == ["keys", "image", "sparse"]
    record = schema_record(Meta)
    body = (
        record["schema"].get("properties") or record["schema"]["content"]["properties"]
    )
    assert body["image"]["shape"] == [None, 2]
    shards = write_samples([sample, sample], str(tmp_path / "m-%06d.tar"))
    (batch,) = Dataset[Meta](shards).ordered(batch_size=2)
    assert batch.keys_ == [["a"], ["a"]] and len(batch.keys) == 2  # API kept
    with pytest.raises(Exception, match="shape"):
        Meta(keys_=[], image=np.zeros((1, 3), np.uint8)).pack()


def test_subclass_adds_fields_after_inherited_ones() -> None:
    @dataclass(kw_only=True)
    class Labelled(ImageSample):
        weight: float = 1.0

    assert [f.name for f in Labelled.sample_fields] == ["image", "label", "weight"]
    sample = Labelled(image=np.zeros(2), label="x", weight=2.0)
    assert Labelled.unpack(sample.pack()) == sample


def test_a_subclass_of_a_generated_class_keeps_its_wire_names(
    generated: dict[str, Any],
) -> None:
    base = generated["OptionalSample"]

    @dataclass(kw_only=True, eq=False)
    class More(base):  # type: ignore[misc,valid-type]
        extra: int = 0

    assert More.sample_fields == (
        *base.sample_fields,
        FieldSpec("extra", "extra", "int"),
    )


@pytest.mark.parametrize(
    ("annotation", "reason"),
    [
        ("dict[str, int]", r"dict\[str, int\] cannot be packed"),
        ("int | str", r"union int \| str cannot be packed"),
        ("list[NDArray[np.uint8]]", "lists of arrays"),
        ("list", "needs its item type"),
        ("list[int | None]", "list items cannot be optional"),
        ("np.float32", "numpy scalar float32"),
        ("NDArray[np.object_]", "object arrays"),
        ("EncodedBlob", "needs field\\(metadata=\\{'encoding'"),
        ("ImageSample", "nested dataclasses"),
        ("Undefined", "cannot resolve the annotation 'Undefined'"),
        ("dataclasses.InitVar[int]", "InitVar"),
    ],
)
def test_unsupported_annotations_are_refused_at_definition(
    annotation: str, reason: str
) -> None:
    source = (
        "@dataclass(kw_only=True)\n"
        "class Bad(PackableSample):\n"
        "    fine: int\n"
        f"    broken: {annotation}\n"
    )
    with pytest.raises(TypeError, match=rf"\.Bad\.broken: .*{reason}"):
        exec(source, globals(), {})  # noqa: S102 - the test source above


@pytest.mark.parametrize(
    "name",
    [
        "keys",
        "samples",
        "sample_type",
        "from_samples",
        "batch_class",
        "pack",
        "to_dict",
    ],
)
def test_names_of_the_sample_and_batch_api_are_refused(name: str) -> None:
    source = (
        f"@dataclass(kw_only=True)\nclass Clash(PackableSample):\n    {name}: int\n"
    )
    with pytest.raises(
        TypeError, match=rf"Clash\.{name}: the name '{name}' is .*field\(metadata="
    ):
        exec(source, globals(), {})  # noqa: S102 - the test source above


def test_init_false_fields_are_refused() -> None:
    with pytest.raises(TypeError, match=r"NoInit\.cache: init=False"):

        @dataclass(kw_only=True)
        class NoInit(PackableSample):
            x: int
            cache: int = field(default=0, init=False)


def test_packing_a_class_whose_fields_were_not_derived_is_refused(
    tmp_path: Path,
) -> None:
    @dataclass(kw_only=True)
    class Hidden(PackableSample):
        sample_fields: ClassVar[tuple[FieldSpec, ...]] = ()
        image: NDArray[np.uint8]

    with pytest.raises(TypeError, match=r"Hidden declares no sample_fields.*image"):
        Hidden(image=np.zeros(2, np.uint8)).pack()
    with pytest.raises(TypeError, match="would lose them"):
        write_samples([Hidden(image=np.zeros(2, np.uint8))], str(tmp_path / "x-%d.tar"))
    assert not list(tmp_path.glob("x-*.tar"))


def test_hand_written_batch_class_is_inferred_and_registered() -> None:
    @dataclass(kw_only=True)
    class Point(PackableSample["PointBatch"]):
        xy: NDArray[np.float64]

    class PointBatch(SampleBatch[Point]):
        xy: NDArray[np.float64]

    assert PointBatch.sample_type is Point and Point.batch_class() is PointBatch
    batch = PointBatch.from_samples([Point(xy=np.zeros(2)), Point(xy=np.ones(2))])
    assert batch.xy.shape == (2, 2)
    json.dumps(schema_record(Point))
    assert dataclasses.fields(Point)[-1].name == "xy"


# -- Literal: a string enum, as a generated class declares it ----------------------


def _pet() -> Any:
    """A class with Literal fields (defined when a test runs: a runtime that
    refuses Literal fails that test, not the module's collection)."""

    @dataclass(kw_only=True)
    class Pet(PackableSample):
        kind: Literal["cat", "dog"]
        tags: list[Literal["a", "b"]]
        mood: Literal["calm", "wild"] | None = None
        size: Optional[Literal["s", "m", "l"]] = None  # noqa: UP045 - Optional too
        name: str

    return Pet


def test_literal_fields_are_string_enums() -> None:
    Pet = _pet()
    specs = {f.name: f for f in Pet.sample_fields}
    assert specs["kind"] == FieldSpec("kind", "kind", "str", enum=("cat", "dog"))
    assert specs["tags"] == FieldSpec(
        "tags", "tags", "list", items=FieldSpec("", "", "str", enum=("a", "b"))
    )
    assert specs["mood"] == FieldSpec(
        "mood", "mood", "str", optional=True, enum=("calm", "wild")
    )
    assert specs["size"].enum == ("s", "m", "l") and specs["size"].optional
    sample = Pet(kind="dog", tags=["b", "a"], mood="calm", name="rex")
    assert Pet.unpack(sample.pack(), validate=True) == sample
    with pytest.raises(SampleFormatError, match=r"'mood': 'sleepy' is not one of"):
        Pet(kind="cat", tags=[], mood="sleepy", name="x").pack()
    props = schema_record(Pet, form="flat")["schema"]["properties"]
    assert props["kind"] == {"type": "string", "enum": ["cat", "dog"]}
    assert props["tags"]["items"] == {"type": "string", "enum": ["a", "b"]}
    assert props["mood"] == {"type": "string", "enum": ["calm", "wild"]}


@pytest.mark.parametrize("form", SCHEMA_FORMS)
def test_literal_record_compiles_back_to_the_same_class(
    tmp_path: Path, form: Any
) -> None:
    Pet = _pet()
    stamp = "2026-01-01T00:00:00+00:00"
    record = schema_record(Pet, form=form, created_at=stamp)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "pet.json").write_text(json.dumps(record))
    package = f"literal_{form}_pkg"
    compile_to(tmp_path / "out", [tmp_path / "src"], package)
    sys.path.insert(0, str(tmp_path / "out"))
    try:
        gen = importlib.import_module(f"{package}.samples.pet_v1_0_0").Pet
    finally:
        sys.path.remove(str(tmp_path / "out"))
    assert gen.sample_fields == Pet.sample_fields
    assert schema_record(gen, form=form, created_at=stamp) == record
    sample = Pet(kind="cat", tags=["a"], name="tom")
    assert gen.unpack(sample.pack()).to_dict() == sample.to_dict()


@pytest.mark.parametrize(
    ("annotation", "reason"),
    [
        ("Literal[1, 2]", r"only string literals .*not 1 \(int\), 2 \(int\)"),
        ("Literal['a', True]", r"only string literals .*not True \(bool\)"),
        ("list[Literal['a', None]]", "list items cannot be optional"),
    ],
)
def test_literals_other_than_strings_are_refused(annotation: str, reason: str) -> None:
    source = (
        "@dataclass(kw_only=True)\n"
        "class Bad(PackableSample):\n"
        f"    broken: {annotation}\n"
    )
    with pytest.raises(TypeError, match=rf"\.Bad\.broken: .*{reason}"):
        exec(source, globals(), {})  # noqa: S102 - the test source above


# -- a forgotten @dataclass --------------------------------------------------------


def test_a_class_without_dataclass_is_named_when_constructed() -> None:
    class Plain(PackableSample):
        label: str
        score: float = 0.0

    expected = (
        r"Plain is not a dataclass: decorate it with @dataclass\(kw_only=True\) "
        r".*'label', 'score'"
    )
    with pytest.raises(TypeError, match=expected):
        Plain(label="x")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=expected):
        Plain()  # every field has a default: would build an empty sample
    with pytest.raises(TypeError, match=expected):
        Plain.unpack(msgpack.packb({"label": "x", "score": 1.0}))


def test_an_undecorated_subclass_that_adds_fields_is_named_when_packed() -> None:
    class Weighted(ImageSample):
        weight: float = 1.0

    sample = Weighted(image=np.zeros(2), label="x")  # ImageSample's __init__
    with pytest.raises(TypeError, match=r"Weighted is not a dataclass.*'weight'"):
        sample.pack()
    with pytest.raises(TypeError, match=r"Weighted is not a dataclass"):
        Weighted.unpack(ImageSample(image=np.zeros(2), label="x").pack())


def test_subclasses_without_new_fields_need_no_decorator() -> None:
    class Same(ImageSample):
        pass

    class Empty(PackableSample):
        pass

    sample = Same(image=np.arange(3), label="x")
    assert Same.unpack(sample.pack()) == sample
    assert Empty(unknown_fields={"k": 1}).unknown_fields == {"k": 1}
    with pytest.raises(TypeError, match=r"Empty\(\) takes only keyword argument"):
        Empty(k=1)  # type: ignore[call-arg]


# -- arrayFormatVersions: the shim versions the fields reference -------------------


@dataclass(kw_only=True)
class Frames(PackableSample):
    image: NDArray[np.uint8]
    mask: NDArray[Any] | None = None
    tracks: NDArray[np.void] | None = None
    label: str


@pytest.mark.parametrize("form", SCHEMA_FORMS)
def test_array_format_versions_are_those_of_the_referenced_shims(
    tmp_path: Path, form: Any
) -> None:
    stamp = "2026-01-01T00:00:00+00:00"
    record = schema_record(Frames, form=form, created_at=stamp)
    body = record["schema"]
    props = body["content"]["properties"] if form == "envelope" else body["properties"]
    assert "/atdata-ndarray-bytes/1.1.0#" in props["image"]["$ref"]
    assert "/atdata-ndarray-bytes/1.0.0#" in props["mask"]["$ref"]
    assert "/atdata-structured-bytes/1.0.0#" in props["tracks"]["$ref"]
    assert body["arrayFormatVersions"] == {
        "ndarrayBytes": "1.1.0",
        "structuredBytes": "1.0.0",
    }
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "frames.json").write_text(json.dumps(record))
    package = f"frames_{form}_pkg"
    compile_to(tmp_path / "out", [tmp_path / "src"], package)
    sys.path.insert(0, str(tmp_path / "out"))
    try:
        gen = importlib.import_module(f"{package}.samples.frames_v1_0_0").Frames
    finally:
        sys.path.remove(str(tmp_path / "out"))
    assert gen.sample_fields == Frames.sample_fields
    assert gen.schema_array_formats == body["arrayFormatVersions"]
    assert schema_record(gen, form=form, created_at=stamp) == record


def test_array_format_versions_also_name_library_encoded_shims() -> None:
    @dataclass(kw_only=True)
    class Sparse(PackableSample):
        m: EncodedBlob = field(metadata={"encoding": "sparse"})
        t: EncodedBlob | None = field(
            default=None, metadata={"encoding": "safetensors"}
        )

    body = schema_record(Sparse, form="flat")["schema"]
    assert body["arrayFormatVersions"] == {
        "sparseBytes": "1.0.0",
        "safetensors": "1.0.0",
    }
    # unannotated arrays only: what atdata 0.7 writes
    body = schema_record(ImageSample, form="flat")["schema"]
    assert body["arrayFormatVersions"] == {"ndarrayBytes": "1.0.0"}


class _HookedBase(PackableSample):
    """A base with its own ``__init_subclass__`` (one more frame between the
    ``class`` statement and the annotation resolver)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)


def test_local_names_resolve_under_a_base_with_init_subclass() -> None:
    Alias = int

    @dataclass(kw_only=True)
    class Sub(_HookedBase):
        x: Alias

    assert [(f.name, f.kind) for f in Sub.sample_fields] == [("x", "int")]
    assert Sub.unpack(Sub(x=3).pack()) == Sub(x=3)
