"""Runs inside the Python 3.12 environment with atdata 0.7.0b1 (scripts/atdata-env).

Usage: python atdata_side.py COMMAND CLASS [PATH]; JSON on stdin and stdout; or
``batch`` with a JSON list of ``{"command", "class", "path", "data"}`` on stdin (one
process for many jobs: importing atdata takes seconds).

* ``pack CLASS``: stdin = list of samples → stdout = list of hex payloads
  (``sample.packed``);
* ``write CLASS PATH``: stdin = samples → ``atdata.write_samples`` to PATH;
* ``read CLASS URL``: → the samples of ``atdata.Dataset[CLASS](URL).ordered()``;
* ``schema CLASS``: → the schema record atdata's SchemaPublisher builds for CLASS.

Samples travel as JSON: arrays as ``{"__ndarray__": {"dtype", "shape", "b64"}}``,
bytes as ``{"__bytes__": b64}``.
"""

import base64
import json
import sys

import atdata
import numpy as np
from atdata.atmosphere.schema import SchemaPublisher
from numpy.typing import NDArray


@atdata.packable
class ImageSample:
    image: NDArray
    label: str


@atdata.packable
class ScalarSample:
    x: int
    y: float
    name: str
    flag: bool
    blob: bytes


@atdata.packable
class OptionalSample:
    tokens: list[int]
    caption: str
    score: float | None = None
    mask: NDArray | None = None


@atdata.packable
class ListSample:
    words: list[str]
    values: list[float]
    embedding: NDArray


@atdata.packable
class NestedSample:
    grid: list[list[int]]
    tags: list[str]
    weight: float


@atdata.packable
class RecordArraySample:
    points: NDArray
    name: str


CLASSES = {
    c.__name__: c
    for c in (
        ImageSample,
        ScalarSample,
        OptionalSample,
        ListSample,
        NestedSample,
        RecordArraySample,
    )
}


def _dtype(spec):
    if isinstance(spec, list):  # structured: a descr list
        return np.dtype([tuple(f) for f in spec])
    return np.dtype(spec)


def decode(value):
    if isinstance(value, dict) and "__ndarray__" in value:
        spec = value["__ndarray__"]
        data = base64.b64decode(spec["b64"])
        return (
            np.frombuffer(data, dtype=_dtype(spec["dtype"]))
            .reshape(spec["shape"])
            .copy()
        )
    if isinstance(value, dict) and "__bytes__" in value:
        return base64.b64decode(value["__bytes__"])
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def encode(value):
    if isinstance(value, np.ndarray):
        return {
            "__ndarray__": {
                "dtype": value.dtype.descr if value.dtype.names else value.dtype.str,
                "shape": list(value.shape),
                "b64": base64.b64encode(np.ascontiguousarray(value).tobytes()).decode(),
            }
        }
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode()}
    if isinstance(value, list):
        return [encode(v) for v in value]
    return value


def run(command, name, path=None, data=None):
    cls = CLASSES[name]
    if command in ("pack", "write"):
        samples = [cls(**{k: decode(v) for k, v in s.items()}) for s in data]
        if command == "pack":
            return [s.packed.hex() for s in samples]
        atdata.write_samples(samples, path)
        return {"written": len(samples)}
    if command == "read":
        ds = atdata.Dataset[cls](path)
        return [{k: encode(v) for k, v in vars(s).items()} for s in ds.ordered()]
    if command == "schema":
        record = SchemaPublisher(client=None)._build_schema_record(
            cls,
            name=None,
            version="1.0.0",
            description=f"{name} fixture",
            metadata=None,
        )
        return record.to_record()
    raise SystemExit(f"unknown command {command}")


def main() -> None:
    if sys.argv[1] == "batch":
        # stdin: [{"command", "class", "path"?, "data"?}, ...] -> list of results
        jobs = json.load(sys.stdin)
        json.dump(
            [run(j["command"], j["class"], j.get("path"), j.get("data")) for j in jobs],
            sys.stdout,
        )
        return
    data = json.load(sys.stdin) if sys.argv[1] in ("pack", "write") else None
    json.dump(
        run(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None, data),
        sys.stdout,
    )


if __name__ == "__main__":
    main()
