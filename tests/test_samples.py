"""Sample schemas → PackableSample classes, and the sample codec: the fixture
records and shards written by atdata 0.7.0b1 compile, decode and re-encode byte for
byte; record → code → class → record is a fixed point; malformed input gets located
errors; forward compatibility."""

from __future__ import annotations

import importlib
import io
import json
import struct
import sys
import tarfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from atdata_gen.diagnostics import Reporter
from atdata_gen.pipeline import BuildOptions, build
from atdata_runtime.samples import FieldSpec, SampleFormatError, sample_class
from atdata_runtime.samples.ndarray import ArrayFormatError, decode_array, encode_array
from atdata_runtime.samples.schema import schema_record
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from .conftest import CORPUS, compile_to

RECORDS = CORPUS / "atdata" / "records"
SHARDS = CORPUS / "atdata" / "shards"
FIXTURES = {
    "ImageSample": "image",
    "ScalarSample": "scalar",
    "OptionalSample": "optional",
    "ListSample": "list",
}


@pytest.fixture(scope="module")
def samples_pkg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    out = tmp_path_factory.mktemp("samples")
    compile_to(out, [RECORDS], "fixture_samples")
    sys.path.insert(0, str(out))
    try:
        yield "fixture_samples"
    finally:
        sys.path.remove(str(out))


def _cls(pkg: str, name: str) -> Any:
    module = importlib.import_module(
        f"{pkg}.samples.{''.join('_' + c.lower() if c.isupper() else c for c in name).lstrip('_')}_v1_0_0"
    )
    return getattr(module, name)


def _members(shard: str) -> list[tuple[str, bytes]]:
    with tarfile.open(SHARDS / f"{shard}-000000.tar") as tar:
        return [
            (m.name, tar.extractfile(m).read())
            for m in tar.getmembers()  # type: ignore[union-attr]
            if m.isfile()
        ]


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_shards_decode_and_reencode_byte_for_byte(
    samples_pkg: str, name: str
) -> None:
    cls = _cls(samples_pkg, name)
    members = _members(FIXTURES[name])
    assert len(members) == 16
    for member, payload in members:
        assert member.endswith(".msgpack")
        sample = cls.unpack(payload, member=member, validate=True)
        assert sample.pack() == payload


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_record_code_class_record_is_a_fixed_point(samples_pkg: str, name: str) -> None:
    record = json.loads((RECORDS / f"{name}.schema.json").read_text())
    cls = _cls(samples_pkg, name)
    again = schema_record(cls, form="flat", created_at=record["createdAt"])
    assert json.dumps(again) == json.dumps(record)


def test_generated_classes_are_typed(samples_pkg: str) -> None:
    cls = _cls(samples_pkg, "OptionalSample")
    sample = cls(caption="c", tokens=[1, 2])  # optional fields default to None
    assert sample.score is None and sample.mask is None
    assert cls.unpack(sample.pack()) == sample
    assert cls.schema_name == "OptionalSample" and cls.schema_version == "1.0.0"


def test_optional_field_before_required_field(tmp_path: Path) -> None:
    """atdata cannot define this class (dataclass field order); we can."""
    record = {
        "$type": "science.alt.dataset.schema",
        "name": "Weird",
        "version": "2.1.0",
        "schemaType": "jsonSchema",
        "schema": {
            "$type": "science.alt.dataset.schema#jsonSchemaFormat",
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {
                "note": {"type": "string"},
                "class": {"type": "integer"},
                "pixels": {
                    "$ref": "https://alt.science/schemas/atdata-ndarray-bytes/1.1.0#/$defs/ndarray",
                    "dtype": "uint8",
                    "shape": [None, 3],
                    "dimensionNames": ["n", "rgb"],
                },
            },
            "required": ["class", "pixels"],
        },
    }
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "w.json").write_text(json.dumps(record))
    compile_to(tmp_path / "out", [tmp_path / "src"], "weird_pkg")
    sys.path.insert(0, str(tmp_path / "out"))
    try:
        mod = importlib.import_module("weird_pkg.samples.weird_v2_1_0")
        cls = mod.Weird
        s = cls(class_=3, pixels=np.zeros((5, 3), np.uint8))
        assert list(msgpack.unpackb(s.pack())) == ["note", "class", "pixels"]
        with pytest.raises(SampleFormatError, match="dtype"):
            cls(class_=3, pixels=np.zeros((5, 3), np.float32)).pack()
        with pytest.raises(SampleFormatError, match="shape"):
            cls(class_=3, pixels=np.zeros((5, 4), np.uint8)).pack()
        again = schema_record(cls, form="flat", created_at="x")
        assert again["schema"]["properties"] == record["schema"]["properties"]
    finally:
        sys.path.remove(str(tmp_path / "out"))


@pytest.mark.parametrize(
    ("properties", "rule"),
    [
        (
            {
                "m": {
                    "$ref": "https://alt.science/schemas/atdata-sparse-bytes/2.0.0#/$defs/sparse"
                }
            },
            "SCHEMA_UNSUPPORTED",
        ),
        ({"m": {"type": "object", "properties": {}}}, "SCHEMA_UNSUPPORTED"),
        (
            {
                "m": {
                    "$ref": "https://alt.science/schemas/atdata-hologram/1.0.0#/$defs/h"
                }
            },
            "SCHEMA_UNSUPPORTED",
        ),
        ({"m": {"$ref": "https://example.com/x"}}, "SCHEMA_REF"),
        ({"m": {"type": "array"}}, "SCHEMA_FIELD"),
        (
            {
                "m": {
                    "$ref": "https://alt.science/schemas/atdata-ndarray-bytes/1.1.0#/$defs/ndarray",
                    "shape": [2, -1],
                }
            },
            "SCHEMA_FIELD",
        ),
    ],
)
def test_unsupported_schema_parts_are_located_errors(
    tmp_path: Path, properties: dict[str, Any], rule: str
) -> None:
    record = {
        "name": "Bad",
        "version": "1.0.0",
        "schemaType": "jsonSchema",
        "schema": {"type": "object", "properties": properties},
    }
    src = tmp_path / "bad.json"
    src.write_text(json.dumps(record, indent=1))
    reporter = Reporter()
    assert build(BuildOptions([src], "p", format=False), reporter).files is None
    (diag,) = reporter.errors
    assert diag.rule == rule and diag.span.line > 1
    assert diag.span.pointer.startswith("/schema/properties/m")


def test_field_list_form_compiles(tmp_path: Path) -> None:
    record = {
        "name": "Legacy",
        "version": "0.1.0",
        "fields": [
            {
                "name": "image",
                "fieldType": {"$type": "local#ndarray", "dtype": "float32"},
            },
            {
                "name": "label",
                "fieldType": {"kind": "primitive", "primitive": "str"},
                "optional": True,
            },
            {
                "name": "ids",
                "type": {
                    "kind": "array",
                    "items": {"kind": "primitive", "primitive": "int"},
                },
            },
        ],
    }
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "legacy.json").write_text(json.dumps(record))
    compile_to(tmp_path / "out", [tmp_path / "src"], "legacy_pkg")
    text = (
        tmp_path / "out" / "legacy_pkg" / "samples" / "legacy_v0_1_0.py"
    ).read_text()
    assert "image: _npt.NDArray[_np.float32]" in text
    assert "label: str | None = None" in text
    assert "ids: list[int]" in text


# -- the array codec ---------------------------------------------------------------------

ARRAYS = hnp.arrays(
    dtype=st.sampled_from(
        [np.uint8, np.int16, np.int64, np.float32, np.float64, np.complex64, np.bool_]
    ),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
)


@settings(max_examples=200, deadline=None)
@given(array=ARRAYS)
def test_array_round_trip_is_exact_and_zero_copy(array: np.ndarray) -> None:
    payload = b"".join(bytes(c) for c in encode_array(array))
    out = decode_array(payload)
    assert out.dtype == array.dtype and out.shape == array.shape
    assert np.array_equal(out, array, equal_nan=array.dtype.kind in "fc")
    if out.size:
        assert np.shares_memory(out, np.frombuffer(payload, np.uint8))
        assert not out.flags.writeable
    assert decode_array(payload, copy=True).flags.writeable


def test_npy_bytes_are_accepted() -> None:
    array = np.arange(12, dtype=">i4").reshape(3, 4)
    for fortran in (False, True):
        buf = io.BytesIO()
        np.save(buf, np.asfortranarray(array) if fortran else array)
        assert np.array_equal(decode_array(buf.getvalue()), array)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x03<f4", "truncated"),
        (
            b"\x03<f4\x01" + struct.pack("<q", 4) + b"\x00" * 15,
            "needs 16 bytes, found 15",
        ),
        (b"\x03<f4\x46", "ndim 70"),
        (b"\x02|O\x00", "unsupported dtype"),
        (b"\x01", "too short"),
        (
            b"\x93NUMPY\x01\x00\x10\x00{'descr': '|O', 'fortran_order': False, 'shape': ()}",
            ".npy header",
        ),
    ],
)
def test_malformed_arrays_are_rejected_with_location(
    payload: bytes, reason: str
) -> None:
    cls = sample_class("S", [FieldSpec("img", "img", "ndarray")])
    raw = msgpack.packb({"img": payload})
    with pytest.raises(ArrayFormatError) as info:
        cls.unpack(raw, member="k1.msgpack")
    text = str(info.value)
    assert reason in text and "'img'" in text and "'k1.msgpack'" in text


def test_large_payloads_encode_identically_and_decode_without_copying() -> None:
    cls = sample_class(
        "Big",
        [
            FieldSpec("a", "a", "ndarray"),
            FieldSpec("n", "n", "str"),
            FieldSpec("b", "b", "ndarray"),
        ],
    )
    big = np.arange(600_000, dtype=np.float32).reshape(600, 1000)
    sample = cls(a=big, n="x", b=np.ones(3, np.uint8))
    payload = sample.pack()
    reference = msgpack.packb(
        {
            "a": b"".join(bytes(c) for c in encode_array(big)),
            "n": "x",
            "b": b"".join(bytes(c) for c in encode_array(sample.b)),
        }
    )
    assert payload == reference
    back = cls.unpack(payload)
    assert np.shares_memory(back.a, np.frombuffer(payload, np.uint8))
    assert back == sample


# -- forward compatibility ---------------------------------------------------------------


def test_unknown_fields_keep_drop_error() -> None:
    old = sample_class("Old", [FieldSpec("x", "x", "int")])
    payload = msgpack.packb({"x": 1, "new": [1, 2]})
    kept = old.unpack(payload)
    assert kept.unknown_fields == {"new": [1, 2]} and kept.pack() == payload
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert old.unpack(payload, unknown="drop").unknown_fields is None
    assert len(caught) == 1 and "new" in str(caught[0].message)
    with pytest.raises(SampleFormatError, match="unknown field"):
        old.unpack(payload, unknown="error")


def test_missing_fields() -> None:
    cls = sample_class(
        "M", [FieldSpec("x", "x", "int"), FieldSpec("y", "y", "str", optional=True)]
    )
    assert cls.unpack(msgpack.packb({"x": 1})).y is None
    with pytest.raises(SampleFormatError, match="'x': required field is missing"):
        cls.unpack(msgpack.packb({"y": "a"}), member="m.msgpack")


def test_golden_sample_record_round_trips_to_its_record(tmp_path: Path) -> None:
    """record (with provenance, v1.1 annotations, metadata) → class → record."""
    wrapped = json.loads(
        (
            Path(__file__).parent
            / "golden"
            / "sample_records"
            / "input"
            / "cell_image.json"
        ).read_text()
    )
    compile_to(
        tmp_path,
        [Path(__file__).parent / "golden" / "sample_records" / "input"],
        "golden_cells",
    )
    sys.path.insert(0, str(tmp_path))
    try:
        mod = importlib.import_module("golden_cells.samples.lab_cell_image_v2_0_0_rc_1")
        record = wrapped["value"]
        again = schema_record(
            mod.CellImage, form="flat", created_at=record["createdAt"]
        )
        expected = json.loads(json.dumps(record))
        # JSON Schema's ["number", "null"] is written back as the optional "number".
        expected["schema"]["properties"]["pixelSize"] = {"type": "number"}
        # Descriptions of properties are documentation; they are not written back.
        del expected["schema"]["properties"]["note"]["description"]
        assert again == expected
        assert mod.CellImage.schema_source == wrapped["uri"]
        assert mod.CellImage.schema_cid == wrapped["cid"]
    finally:
        sys.path.remove(str(tmp_path))


HOSTILE = [
    "class",
    "None",
    "__init__",
    "pack",
    "unknown_fields",
    "schema_name",
    "a b",
    "é",
    "ｆｏｏ",
    "1st",
    '"""',
    "\\",
    "x\ny",
    "__import__('os')",
    "sample_fields",
]


@settings(max_examples=25, deadline=None)
@given(
    names=st.lists(
        st.sampled_from(HOSTILE) | st.text(min_size=1, max_size=8),
        min_size=1,
        max_size=6,
        unique=True,
    ),
    desc=st.sampled_from(HOSTILE) | st.text(max_size=20),
)
def test_hostile_schema_records_compile_to_safe_code(
    names: list[str], desc: str
) -> None:
    import ast
    import tempfile

    record = {
        "name": "Hostile",
        "version": "1.0.0",
        "schemaType": "jsonSchema",
        "description": desc,
        "schema": {
            "type": "object",
            "required": names[:1],
            "properties": {n: {"type": "string", "description": desc} for n in names},
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "h.json"
        src.write_text(json.dumps(record))
        reporter = Reporter()
        result = build(BuildOptions([src], "hostile_samples", jobs=1), reporter)
        if result.files is None:
            assert reporter.errors  # e.g. a lone surrogate in the text
            return
        code = result.files["samples/hostile_v1_0_0.py"]
        tree = ast.parse(code)
        calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        assert calls <= {"_dc.dataclass", "_sample.FieldSpec"}, calls
        namespace: dict[str, Any] = {}
        exec(compile(tree, "hostile", "exec"), namespace)  # noqa: S102 - the test's point
        cls = namespace["Hostile"]
        assert [f.wire for f in cls.sample_fields] == names
        values = {f.name: "v" for f in cls.sample_fields}
        sample = cls(**values)
        assert list(msgpack.unpackb(sample.pack())) == names


def test_structured_shim_round_trip(tmp_path: Path) -> None:
    shim = "https://alt.science/schemas/atdata-structured-bytes/1.0.0#/$defs/structured"
    record = {
        "$type": "science.alt.dataset.schema",
        "name": "Tracks",
        "version": "1.0.0",
        "schemaType": "jsonSchema",
        "schema": {
            "$type": "science.alt.dataset.schema#jsonSchemaFormat",
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {"points": {"$ref": shim}},
            "required": ["points"],
            "arrayFormatVersions": {"structuredBytes": "1.0.0"},
        },
        "createdAt": "2026-01-01T00:00:00+00:00",
        "atdataSchemaVersion": 1,
    }
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "t.json").write_text(json.dumps(record))
    compile_to(tmp_path / "out", [tmp_path / "src"], "tracks_pkg")
    sys.path.insert(0, str(tmp_path / "out"))
    try:
        cls = importlib.import_module("tracks_pkg.samples.tracks_v1_0_0").Tracks
        dt = np.dtype([("t", "<f8"), ("xy", "<f4", (2,)), ("tag", "S4")])
        points = np.zeros(3, dt)
        points["t"] = [0.5, 1.5, 2.5]
        sample = cls(points=points)
        payload = sample.pack()
        assert msgpack.unpackb(payload)["points"][:6] == b"\x93NUMPY"
        back = cls.unpack(payload)
        assert back.points.dtype == dt and np.array_equal(back.points, points)
        assert json.dumps(
            schema_record(cls, form="flat", created_at=record["createdAt"])
        ) == json.dumps(record)
    finally:
        sys.path.remove(str(tmp_path / "out"))


def test_npy_object_dtypes_are_refused_even_when_structured() -> None:
    for descr in ("[('a', '|O')]", "'|O'", "[('a', [('b', '|O')])]", "[(1, '<f4')]"):
        header = "{'descr': " + descr + ", 'fortran_order': False, 'shape': (1,), }"
        header += " " * (-(len(header) + 11) % 64) + "\n"
        raw = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()
        with pytest.raises(ArrayFormatError):
            decode_array(raw + b"\x00" * 8)


def test_library_encoded_shims_round_trip_their_bytes(tmp_path: Path) -> None:
    from atdata_runtime.samples import EncodedBlob

    base = "https://alt.science/schemas/atdata-"
    props = {
        "sp": {"$ref": f"{base}sparse-bytes/1.0.0#/$defs/sparse"},
        "tt": {"$ref": f"{base}arrow-tensor/1.0.0#/$defs/tensor"},
        "st": {"$ref": f"{base}safetensors/1.0.0#/$defs/safetensors"},
        "df": {"$ref": f"{base}dataframe/1.0.0#/$defs/dataframe"},
    }
    record = {
        "$type": "science.alt.dataset.schema",
        "name": "Mixed",
        "version": "1.0.0",
        "schemaType": "jsonSchema",
        "schema": {
            "$type": "science.alt.dataset.schema#jsonSchemaFormat",
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": props,
            "required": ["sp", "tt", "st", "df"],
        },
        "createdAt": "2026-01-01T00:00:00+00:00",
        "atdataSchemaVersion": 1,
    }
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "m.json").write_text(json.dumps(record))
    compile_to(tmp_path / "out", [tmp_path / "src"], "mixed_pkg")
    sys.path.insert(0, str(tmp_path / "out"))
    try:
        cls = importlib.import_module("mixed_pkg.samples.mixed_v1_0_0").Mixed
        assert {f.wire: f.encoding for f in cls.sample_fields} == {
            "sp": "sparse",
            "tt": "arrow_tensor",
            "st": "safetensors",
            "df": "dataframe",
        }
        payload = msgpack.packb(
            {
                "sp": b"PK\x03\x04zip",
                "tt": b"\xff\xff\xff\xff",
                "st": b"\x08\x00",
                "df": b"PAR1..PAR1",
            }
        )
        sample = cls.unpack(payload)
        assert sample.df == EncodedBlob("dataframe", b"PAR1..PAR1")
        assert sample.pack() == payload
        assert json.dumps(
            schema_record(cls, form="flat", created_at=record["createdAt"])
        ) == json.dumps(record)
        with pytest.raises(SampleFormatError, match="EncodedBlob"):
            cls(sp=b"raw", tt=sample.tt, st=sample.st, df=sample.df).pack()
        try:
            import pandas  # noqa: F401
        except ImportError:
            with pytest.raises(ImportError, match="pandas"):
                sample.df.decode()
    finally:
        sys.path.remove(str(tmp_path / "out"))


def test_generated_sample_code_is_ruff_and_mypy_clean(tmp_path: Path) -> None:
    import subprocess

    from .conftest import ROOT

    golden = Path(__file__).parent / "golden" / "sample_records" / "input"
    compile_to(tmp_path, [RECORDS, golden], "clean_samples")
    for args in (
        ["ruff", "check", "--isolated", "clean_samples"],
        ["ruff", "format", "--check", "--isolated", "clean_samples"],
        [
            "mypy",
            "--strict",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "-p",
            "clean_samples",
        ],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", *args], cwd=tmp_path, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    header = (
        tmp_path / "clean_samples" / "samples" / "lab_cell_image_v2_0_0_rc_1.py"
    ).read_text()
    assert (
        "Record: ``at://did:plc:lab123/science.alt.dataset.schema/3kcellimage1``"
        in header
    )
