"""Lenses: registration from annotations, putters, composition, structural lenses
between schema versions, shortest paths over a graph of 24 schema versions, the
lens laws (a broken lens is caught with its counterexample), and reading a v1
dataset as v2 through ``Dataset.as_type``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from atdata_runtime.lenses import (
    GET_PUT,
    PUT_GET,
    Lens,
    LensError,
    LensGraph,
    LensLawError,
    LensNotFoundError,
    check_lens_laws,
    compose,
    lens,
    structural_lens,
)
from atdata_runtime.samples import FieldSpec, PackableSample, sample_class
from atdata_runtime.shards import Dataset, write_samples


def version(name: str, ver: str, *fields: FieldSpec) -> type[PackableSample]:
    return sample_class(
        f"{name}_{ver.replace('.', '_')}",
        fields,
        schema_name=name,
        schema_version=ver,
    )


IMAGE = FieldSpec("image", "image", "ndarray", dtype="uint8", shape=(None, None))
LABEL = FieldSpec("label", "label", "str")
SCORE = FieldSpec("score", "score", "float", optional=True)
TAGS = FieldSpec("tags", "tags", "list", items=FieldSpec("item", "item", "str"))
CAPTION = FieldSpec("caption", "caption", "str")

ImageV1 = version("Image", "1.0.0", IMAGE, LABEL)
ImageV2 = version("Image", "2.0.0", IMAGE, CAPTION, TAGS)  # label → caption, tags
Thumb = sample_class(
    "Thumb", [IMAGE], schema_name="Thumb", schema_version="1.0.0"
)  # another schema


def _v1(i: int) -> Any:
    return ImageV1(image=np.full((2, 3), i, np.uint8), label=f"cat,{i}")


def _migration(graph: LensGraph) -> Lens[Any, Any]:
    def v1_to_v2(source: ImageV1) -> ImageV2:  # type: ignore[valid-type]
        caption, sep, rest = source.label.partition(",")
        return ImageV2(image=source.image, caption=caption, tags=[rest] if sep else [])

    made: Lens[Any, Any] = lens(v1_to_v2, graph=graph)

    def v1_to_v2_put(view: ImageV2, source: ImageV1) -> ImageV1:  # type: ignore[valid-type]
        label = view.caption + ("," + view.tags[0] if view.tags else "")
        return ImageV1(image=view.image, label=label)

    made.putter(v1_to_v2_put)
    return made


def test_lens_reads_classes_from_annotations_and_takes_a_putter() -> None:
    graph = LensGraph()
    made = _migration(graph)
    assert made.source is ImageV1 and made.target is ImageV2
    assert made.laws == {GET_PUT, PUT_GET} and made.lawful
    a = _v1(3)
    b = made(a)
    assert b.caption == "cat" and b.tags == ["3"]
    assert made.put(b, a) == a
    assert graph.find(ImageV1, ImageV2) is made
    assert "test_lens:" in made.where


def test_bad_annotations_are_refused() -> None:
    graph = LensGraph()

    def no_hints(source):  # type: ignore[no-untyped-def]
        return source

    with pytest.raises(LensError, match="PackableSample"):
        lens(no_hints, graph=graph)
    made = _migration(graph)

    def wrong(view: Any, source: Any) -> Any:
        return source

    wrong.__annotations__ = {"view": ImageV1, "source": ImageV1, "return": ImageV1}
    with pytest.raises(LensError, match="needs"):
        made.putter(wrong)


def test_decorator_form_registers_in_the_graph() -> None:
    graph = LensGraph()

    @lens(graph=graph)
    def thumb(source: ImageV1) -> Thumb:  # type: ignore[valid-type]
        return Thumb(image=source.image[:1, :1])

    assert graph.find(ImageV1, Thumb) is thumb
    assert thumb.putter_fn is None and thumb.laws == frozenset()
    assert thumb(_v1(4)).image.shape == (1, 1)


def test_registered_lens_passes_the_laws() -> None:
    made = _migration(LensGraph())
    # Views whose caption holds no comma and at most one tag: the lens's domain.
    views = [ImageV2(image=np.zeros((1, 1), np.uint8), caption="dog", tags=["x"])]
    check_lens_laws(made, [_v1(i) for i in range(5)], views=views, generate=False)


def test_broken_lens_is_caught_with_its_counterexample() -> None:
    graph = LensGraph()
    made = _migration(graph)
    broken = Lens(
        ImageV1,
        ImageV2,
        made.getter,
        lambda view, source: ImageV1(image=view.image, label=view.caption),
        name="drops_tags",
        laws=frozenset({GET_PUT, PUT_GET}),
    )
    with pytest.raises(LensLawError) as info:
        check_lens_laws(broken, [_v1(7)], generate=False)
    err = info.value
    assert err.law == GET_PUT and err.source == _v1(7) and err.result.label == "cat"
    assert "drops_tags breaks GetPut" in str(err) and "LENS_LAW" in str(err)
    # Found by generation too: the reported counterexample reproduces.
    with pytest.raises(LensLawError) as gen:
        check_lens_laws(broken, max_examples=200)
    e = gen.value
    if e.law == GET_PUT:
        assert broken.put(broken.get(e.source), e.source) != e.source
    else:
        assert broken.get(broken.put(e.view, e.source)) != e.view


def test_putget_violation_is_caught() -> None:
    graph = LensGraph()
    made = _migration(graph)
    with pytest.raises(LensLawError) as info:
        check_lens_laws(made, max_examples=200)  # captions with commas, 2+ tags
    assert info.value.law == PUT_GET and info.value.view is not None


SCALAR = [FieldSpec("x", "x", "int"), FieldSpec("name", "name", "str")]


def test_structural_lenses_follow_the_checker_rules() -> None:
    v1 = version("S", "1.0.0", *SCALAR)
    added = version("S", "1.1.0", *SCALAR, SCORE)
    removed = version("S", "2.0.0", SCALAR[0])
    retyped = version("S", "3.0.0", FieldSpec("x", "x", "float"), SCALAR[1])
    required = version("S", "4.0.0", *SCALAR, FieldSpec("y", "y", "int"))
    other = sample_class("Other", SCALAR, schema_name="Other", schema_version="1.0.0")

    widen = structural_lens(v1, added)
    assert widen is not None and widen.laws == {GET_PUT}
    assert widen(v1(x=1, name="a")) == added(x=1, name="a", score=None)
    narrow = structural_lens(added, v1)
    assert narrow is not None and narrow.lawful
    proj = structural_lens(v1, removed)
    assert proj is not None and proj.lawful
    assert proj.put(removed(x=5), v1(x=1, name="kept")) == v1(x=5, name="kept")
    assert structural_lens(v1, retyped) is None
    assert structural_lens(v1, required) is None
    assert structural_lens(v1, other) is None  # different schema
    assert structural_lens(v1, other, same_schema=False) is not None
    for item in (widen, narrow, proj):
        check_lens_laws(item, max_examples=50)


def test_shortest_path_over_24_versions() -> None:
    """A chain of 24 versions of one schema: each minor version adds an optional
    field (structural lenses both ways), each major version renames one field
    (registered lenses); plus a shortcut lens from v0 to v12."""
    graph = LensGraph()
    classes: list[type[PackableSample]] = []
    fields = [FieldSpec("f0", "f0", "int")]
    renames = {}
    for i in range(24):
        if i and i % 4 == 0:  # rename the first field: a major version
            old = fields[0]
            fields = [FieldSpec(f"r{i}", f"r{i}", "int"), *fields[1:]]
            renames[i] = (old.name, fields[0].name)
        elif i:
            fields = [*fields, FieldSpec(f"o{i}", f"o{i}", "str", optional=True)]
        classes.append(version("Chain", f"{i}.0.0", *fields))
    graph.add_class(*classes)
    for i, (old, new) in renames.items():
        src, dst = classes[i - 1], classes[i]
        graph.register(_rename(src, dst, old, new))
        graph.register(_rename(dst, src, new, old))

    path = graph.find(classes[0], classes[23])
    # Structural lenses jump across the minor versions between two majors
    # (0→3, 4→7, …): 6 structural + 5 registered lenses.
    assert path.origin == "composed" and path.name.count(" | ") == 10
    assert path.name.count("rename[") == 5
    sample = classes[0](f0=41)
    out = path(sample)
    assert out.r20 == 41 and all(
        getattr(out, f.name) is None for f in classes[23].sample_fields[1:]
    )
    back = graph.find(classes[23], classes[0])
    assert back(out) == sample
    check_lens_laws(back, max_examples=25)  # every step narrows: lawful
    assert back.lawful and not path.lawful  # widening steps claim GetPut only
    check_lens_laws(path, max_examples=25)

    # A registered shortcut shortens the path.
    shortcut = _rename(classes[0], classes[12], "f0", "r12")
    graph.register(shortcut)
    short = graph.find(classes[0], classes[23])
    assert short.name.count(" | ") == 5 and short.name.startswith(shortcut.name)
    assert short(sample).r20 == 41


def _rename(
    src: type[PackableSample], dst: type[PackableSample], old: str, new: str
) -> Lens[Any, Any]:
    shared = [f.name for f in dst.sample_fields if f.name != new]
    known = {f.name for f in src.sample_fields}

    def get(a: Any) -> Any:
        values = {n: getattr(a, n) if n in known else None for n in shared}
        return dst(**{new: getattr(a, old)}, **values)

    def put(b: Any, a: Any) -> Any:
        values = {
            f.name: getattr(b, f.name) if f.name in shared else getattr(a, f.name)
            for f in src.sample_fields
            if f.name != old
        }
        return src(**{old: getattr(b, new)}, **values)

    return Lens(
        src,
        dst,
        get,
        put,
        name=f"rename[{src.schema_version}→{dst.schema_version}]",
        laws=frozenset({GET_PUT, PUT_GET})
        if len(shared) >= len(src.sample_fields) - 1
        else frozenset({GET_PUT}),
    )


def test_no_path_names_the_nearest_classes() -> None:
    graph = LensGraph()
    _migration(graph)
    v3 = version("Image", "3.0.0", IMAGE, CAPTION, TAGS, SCORE)  # from v2: structural
    graph.add_class(v3, Thumb)
    with pytest.raises(LensNotFoundError) as info:
        graph.find(ImageV1, Thumb)
    err = info.value
    assert err.reachable == [ImageV2, v3]
    assert err.reaching == []
    assert "Image@2.0.0, Image@3.0.0" in str(err) and "LENS_NO_PATH" in str(err)


def test_compose_checks_the_chain() -> None:
    graph = LensGraph()
    made = _migration(graph)
    with pytest.raises(LensError, match="cannot compose"):
        compose(made, made)
    v3 = version("Image", "3.0.0", IMAGE, CAPTION, TAGS, SCORE)
    chain = made | structural_lens(ImageV2, v3)  # type: ignore[operator]
    assert chain.laws == {GET_PUT} and chain(_v1(2)).score is None
    check_lens_laws(chain, [_v1(i) for i in range(3)], generate=False)


def test_dataset_written_as_v1_reads_as_v2(tmp_path: Path) -> None:
    graph = LensGraph()
    _migration(graph)
    v3 = version("Image", "3.0.0", IMAGE, CAPTION, TAGS, SCORE)
    graph.add_class(v3)
    shards = write_samples(
        [_v1(i) for i in range(10)], str(tmp_path / "v1-%06d.tar"), progress=False
    )
    ds = Dataset[ImageV1](shards, progress=False)
    as_v2 = ds.as_type(ImageV2, graph=graph)
    got = list(as_v2)
    assert [s.tags for s in got] == [[str(i)] for i in range(10)]
    assert all(type(s) is ImageV2 for s in got)
    as_v3 = as_v2.as_type(v3, graph=graph)  # chained: v1 → v2 → v3
    batch = next(as_v3.ordered(batch_size=4))
    assert len(batch.samples) == 4 and batch.samples[0].score is None
    assert list(ds) == [_v1(i) for i in range(10)]  # the original is unchanged
    with pytest.raises(LensNotFoundError):
        ds.as_type(Thumb, graph=graph)
