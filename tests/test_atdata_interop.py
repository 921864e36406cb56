"""Interoperability with the public atdata 0.7.0b1 library, run for real in its own
Python 3.12 environment (``scripts/atdata-env``, installed by ``scripts/setup``).

* atdata's schema records (built offline by its SchemaPublisher) compile with us into
  classes whose fields, types and optionality match atdata's classes;
* our class → record equals atdata's record, ``createdAt`` aside;
* for the same samples both sides write byte-identical msgpack payloads;
* atdata writes shards → we read them, equal field by field;
* we write shards → atdata's ``Dataset[...]`` reads them.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import sys
import tarfile
import uuid
from typing import Any

import numpy as np
import pytest
from atdata_runtime.samples.schema import schema_record

from .conftest import compile_to, side

CLASSES = [
    "ImageSample",
    "ScalarSample",
    "OptionalSample",
    "ListSample",
    "NestedSample",
    "RecordArraySample",
]
POINT = np.dtype([("x", "<f4"), ("y", "<f4"), ("id", "<i8")])


def _samples(name: str) -> list[dict[str, Any]]:
    return [_values(name, i) for i in range(1, 9)]


@pytest.fixture(scope="session")
def atdata_batch(
    atdata_python: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], Any]:
    """One atdata process: its schema records, payloads and shards for every class."""
    out = tmp_path_factory.mktemp("atdata_shards")
    jobs = []
    for name in CLASSES:
        data = [{k: _to_json(v) for k, v in s.items()} for s in _samples(name)]
        jobs += [
            {"command": "schema", "class": name},
            {"command": "pack", "class": name, "data": data},
            {
                "command": "write",
                "class": name,
                "path": str(out / f"{name}.tar"),
                "data": data,
            },
        ]
    results = side(atdata_python, "batch", data=jobs)
    batch = {(j["command"], j["class"]): r for j, r in zip(jobs, results, strict=True)}
    for name in CLASSES:
        batch[("shard", name)] = out / f"{name}.tar"
    return batch


@pytest.fixture(scope="session")
def atdata_records(
    atdata_batch: dict[tuple[str, str], Any],
) -> dict[str, dict[str, Any]]:
    return {name: atdata_batch[("schema", name)] for name in CLASSES}


@pytest.fixture(scope="session")
def atdata_reads(
    atdata_python: str,
    classes: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """Shards we write (one per class), and what atdata's Dataset reads from them."""
    out = tmp_path_factory.mktemp("our_shards")
    jobs, written = [], {}
    for name in CLASSES:
        cls = classes[name]
        wire_to_py = {f.wire: f.name for f in cls.sample_fields}
        samples = [
            cls(**{wire_to_py[k]: v for k, v in s.items()}) for s in _samples(name)
        ]
        shard = out / f"{name}.tar"
        with tarfile.open(shard, "w") as tar:
            for sample in samples:
                wds = sample.as_wds(str(uuid.uuid1(0, 0)))
                info = tarfile.TarInfo(f"{wds['__key__']}.msgpack")
                info.size = len(wds["msgpack"])
                tar.addfile(info, io.BytesIO(wds["msgpack"]))
        written[name] = samples
        jobs.append({"command": "read", "class": name, "path": str(shard)})
    results = side(atdata_python, "batch", data=jobs)
    return {name: (written[name], r) for name, r in zip(CLASSES, results, strict=True)}


@pytest.fixture(scope="session")
def classes(
    atdata_records: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    src = tmp_path_factory.mktemp("records")
    for name, record in atdata_records.items():
        (src / f"{name}.json").write_text(json.dumps(record))
    out = tmp_path_factory.mktemp("interop_pkg")
    compile_to(out, [src], "interop_pkg")
    sys.path.insert(0, str(out))
    result = {}
    for path in sorted((out / "interop_pkg" / "samples").glob("*.py")):
        if path.stem == "__init__":
            continue
        module = importlib.import_module(f"interop_pkg.samples.{path.stem}")
        cls = getattr(module, module.__all__[0])
        result[cls.schema_name] = cls
    return result


def _values(name: str, i: int) -> dict[str, Any]:
    rng = np.random.default_rng(i)
    if name == "ImageSample":
        return {
            "image": rng.integers(0, 255, (3, 8, 8), dtype=np.uint8),
            "label": f"img-{i} ✓",
        }
    if name == "ScalarSample":
        return {
            "x": i * 1_000_003 - 7,
            "y": i / 3,
            "name": f"n{i}",
            "flag": i % 2 == 0,
            "blob": bytes([i]) * i,
        }
    if name == "OptionalSample":
        out: dict[str, Any] = {"tokens": list(range(i)), "caption": f"c{i}"}
        if i % 2:
            out["score"] = i * 0.5
        if i % 3:
            out["mask"] = rng.random((2, i + 1)).astype(np.float32)
        return out
    if name == "ListSample":
        return {
            "words": [f"w{j}" for j in range(i)],
            "values": [j * 1.5 for j in range(i)],
            "embedding": np.arange(i * 4, dtype=np.float64).reshape(i, 4),
        }
    if name == "RecordArraySample":
        points = np.zeros(i, POINT)
        points["x"], points["y"], points["id"] = np.arange(i), -np.arange(i), range(i)
        return {"points": points, "name": f"r{i}"}
    return {"grid": [[j, -j] for j in range(i)], "tags": ["a"] * i, "weight": 1e-3 * i}


def _to_json(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {
            "__ndarray__": {
                "dtype": value.dtype.descr if value.dtype.names else value.dtype.str,
                "shape": list(value.shape),
                "b64": base64.b64encode(value.tobytes()).decode(),
            }
        }
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode()}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and "__ndarray__" in value:
        spec = value["__ndarray__"]
        dtype = (
            np.dtype([tuple(f) for f in spec["dtype"]])
            if isinstance(spec["dtype"], list)
            else np.dtype(spec["dtype"])
        )
        return np.frombuffer(base64.b64decode(spec["b64"]), dtype).reshape(
            spec["shape"]
        )
    if isinstance(value, dict) and "__bytes__" in value:
        return base64.b64decode(value["__bytes__"])
    return value


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and np.array_equal(a, b)
        )
    return bool(a == b)


@pytest.mark.parametrize("name", CLASSES)
def test_atdata_records_compile_to_matching_classes(
    classes: dict[str, Any], atdata_records: dict[str, Any], name: str
) -> None:
    cls = classes[name]
    props = atdata_records[name]["schema"]["properties"]
    required = set(atdata_records[name]["schema"].get("required", []))
    assert [f.wire for f in cls.sample_fields] == list(props)
    for spec in cls.sample_fields:
        assert spec.optional == (spec.wire not in required)
    kinds = {f.wire: f.kind for f in cls.sample_fields}
    expected = {
        "ImageSample": {"image": "ndarray", "label": "str"},
        "ScalarSample": {
            "x": "int",
            "y": "float",
            "name": "str",
            "flag": "bool",
            "blob": "bytes",
        },
        "OptionalSample": {
            "tokens": "list",
            "caption": "str",
            "score": "float",
            "mask": "ndarray",
        },
        "ListSample": {"words": "list", "values": "list", "embedding": "ndarray"},
        "NestedSample": {"grid": "list", "tags": "list", "weight": "float"},
        "RecordArraySample": {"points": "ndarray", "name": "str"},
    }[name]
    assert kinds == expected


@pytest.mark.parametrize("name", CLASSES)
def test_our_record_equals_atdatas(
    classes: dict[str, Any], atdata_records: dict[str, Any], name: str
) -> None:
    theirs = atdata_records[name]
    ours = schema_record(classes[name], form="flat", created_at=theirs["createdAt"])
    assert json.dumps(ours) == json.dumps(theirs)


@pytest.mark.parametrize("name", CLASSES)
def test_payloads_are_byte_identical(
    atdata_batch: dict[tuple[str, str], Any], classes: dict[str, Any], name: str
) -> None:
    cls = classes[name]
    wire_to_py = {f.wire: f.name for f in cls.sample_fields}
    ours = [
        cls(**{wire_to_py[k]: v for k, v in s.items()}).pack().hex()
        for s in _samples(name)
    ]
    assert ours == atdata_batch[("pack", name)]


@pytest.mark.parametrize("name", CLASSES)
def test_atdata_writes_we_read(
    atdata_batch: dict[tuple[str, str], Any], classes: dict[str, Any], name: str
) -> None:
    cls = classes[name]
    with tarfile.open(atdata_batch[("shard", name)]) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        read = [
            cls.unpack(tar.extractfile(m).read(), member=m.name)  # type: ignore[union-attr]
            for m in members
        ]
    assert all(m.name.endswith(".msgpack") and m.name.count(".") == 1 for m in members)
    samples = _samples(name)
    assert len(read) == len(samples)
    for got, want in zip(read, samples, strict=True):
        for spec in cls.sample_fields:
            assert _equal(getattr(got, spec.name), want.get(spec.wire)), spec.wire


@pytest.mark.parametrize("name", CLASSES)
def test_we_write_atdata_reads(
    atdata_reads: dict[str, Any], classes: dict[str, Any], name: str
) -> None:
    cls = classes[name]
    written, read = atdata_reads[name]
    assert len(read) == len(written)
    for got, want in zip(read, written, strict=True):
        for spec in cls.sample_fields:
            assert _equal(_from_json(got.get(spec.wire)), getattr(want, spec.name)), (
                spec.wire
            )


@pytest.fixture(scope="session")
def atdata_types_from_ours(
    atdata_python: str, classes: dict[str, Any]
) -> dict[tuple[str, str], Any]:
    """What atdata 0.7 builds (``_schema_to_type``) from our record of each class,
    in each form."""
    jobs, keys = [], []
    for name in CLASSES:
        for form in ("flat", "envelope"):
            record = schema_record(classes[name], form=form)  # type: ignore[arg-type]
            jobs.append({"command": "from_record", "data": record})
            keys.append((name, form))
    results = side(atdata_python, "batch", data=jobs)
    return dict(zip(keys, results, strict=True))


@pytest.mark.parametrize("name", CLASSES)
def test_atdata_reads_our_flat_records_not_the_envelope(
    atdata_types_from_ours: dict[tuple[str, str], Any],
    classes: dict[str, Any],
    name: str,
) -> None:
    """atdata 0.7.0b1 builds its class from our flat record (the wire names of our
    fields); it cannot read the envelope of atdata-lexicon 0.4.x (it looks for
    ``schema.properties``), which is why README says to publish with
    ``--schema-form flat`` for readers on atdata 0.7."""
    flat = atdata_types_from_ours[(name, "flat")]
    assert "error" not in flat, flat
    assert list(flat["fields"]) == [f.wire for f in classes[name].sample_fields]
    envelope = atdata_types_from_ours[(name, "envelope")]
    assert envelope == {"error": "ValueError: Schema must have at least one field"}
