"""Runs inside the Python 3.12 environment with atdata 0.7.0b1 (scripts/atdata-env).

Usage: python atdata_side.py COMMAND CLASS [PATH]; JSON on stdin and stdout; or
``batch`` with a JSON list of ``{"command", "class", "path", "data"}`` on stdin (one
process for many jobs: importing atdata takes seconds).

* ``pack CLASS``: stdin = list of samples → stdout = list of hex payloads
  (``sample.packed``);
* ``write CLASS PATH``: stdin = samples → ``atdata.write_samples`` to PATH;
* ``read CLASS URL``: → the samples of ``atdata.Dataset[CLASS](URL).ordered()``;
* ``schema CLASS``: → the schema record atdata's SchemaPublisher builds for CLASS;
* ``from_record`` (batch only; ``data`` = a schema record): → ``{"fields": {name:
  annotation}}`` of the type atdata builds from it (``_schema_to_type``), or
  ``{"error": message}``;
* ``publish`` (batch only; job keys ``pds``, ``did``, ``handle``, ``password``,
  ``path``, ``http_base``, ``data``): atdata writes the samples to a shard, publishes
  the schema, an entry with the shard as a PDS blob and an entry with the shard's
  HTTP URL (atdata's placeholder checksums) → their AT-URIs;
* ``load`` (batch only; ``pds``, ``did``, ``class``, ``schema``, ``own_schema``,
  ``entries``): atdata's ``SchemaLoader`` fetches the schema, atdata builds its
  dynamic type from it, and reads each entry (blob entries with
  ``DatasetLoader.to_dataset``, HTTP entries with ``atdata.load_dataset``) → the
  record and the samples per entry. Where atdata cannot build a type from a record
  (``type_error``; ``own_type_error`` is the same attempt on atdata's own published
  record ``own_schema``), the entries are read with atdata's class for ``class``.

``bench_publish`` and ``bench_load`` time atdata's publisher and blob reader for
``scripts/bench_publish``.

Two workarounds for atdata against a loopback PDS, here and not in our product:
atdata's ``login`` fetches a Bluesky profile that a PDS without an AppView cannot
serve (we log in with ``fetch_bsky_profile=False`` and hand atdata the client), and
atdata resolves PDS endpoints only through the public ``plc.directory`` (we pre-fill
its endpoint cache for the test account's DID).

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


def _atmosphere(job, *, authenticated):
    import atdata.atmosphere as atmosphere_module
    from atdata.atmosphere import Atmosphere
    from atproto import Client

    atmosphere_module._pds_endpoint_cache[job["did"]] = job["pds"]
    if not authenticated:
        return Atmosphere(base_url=job["pds"])
    client = Client(base_url=job["pds"])
    client.login(job["handle"], job["password"], fetch_bsky_profile=False)
    atmo = Atmosphere(_client=client)
    atmo._session = {"did": job["did"], "handle": job["handle"]}
    return atmo


def publish(job):
    from pathlib import Path

    from atdata.atmosphere.records import DatasetPublisher

    name = job["class"]
    cls = CLASSES[name]
    atmo = _atmosphere(job, authenticated=True)
    shard = Path(job["path"]) / f"{name}.tar"
    atdata.write_samples(
        [cls(**{k: decode(v) for k, v in s.items()}) for s in job["data"]], shard
    )
    schema_uri = str(SchemaPublisher(atmo).publish(cls, version="1.0.0"))
    publisher = DatasetPublisher(atmo)
    blobs = publisher.publish_with_blobs(
        [shard.read_bytes()], schema_uri, name=f"{name} blobs"
    )
    http = publisher.publish(
        atdata.Dataset[cls](f"{job['http_base']}/{shard.name}"),
        name=f"{name} http",
        schema_uri=schema_uri,
    )
    return {"schema": schema_uri, "blobs": str(blobs), "http": str(http)}


def _dynamic_type(schema):
    from atdata._schema_codec import _schema_to_type

    try:
        return _schema_to_type(schema, use_cache=False), None
    except TypeError as exc:  # atdata orders dataclass fields as the record does
        return None, str(exc)


def load(job):
    from atdata.atmosphere.records import DatasetLoader
    from atdata.atmosphere.schema import SchemaLoader

    atmo = _atmosphere(job, authenticated=False)
    loader = SchemaLoader(atmo)
    schema = loader.get(job["schema"])
    dynamic, error = _dynamic_type(schema)
    sample_type = dynamic or CLASSES[job["class"]]
    out = {
        "schema": schema,
        "type": dynamic and dynamic.__name__,
        "type_error": error,
        "own_type_error": _dynamic_type(loader.get(job["own_schema"]))[1],
        "entries": {},
    }
    for uri in job["entries"]:
        record = DatasetLoader(atmo).get(uri)
        if "storageBlobs" in record["storage"]["$type"]:
            ds = DatasetLoader(atmo).to_dataset(uri, sample_type)
        else:
            ds = atdata.load_dataset(
                uri, None if dynamic else sample_type, split="train", atmosphere=atmo
            )
        samples = [{k: encode(v) for k, v in vars(s).items()} for s in ds.ordered()]
        out["entries"][uri] = {"record": record, "samples": samples}
    return out


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


def bench_publish(job):
    """Seconds for atdata's SchemaPublisher to publish ``count`` ImageSample schema
    records (named Bench0..), login excluded."""
    import time

    publisher = SchemaPublisher(_atmosphere(job, authenticated=True))
    t = time.perf_counter()
    for i in range(job["count"]):
        publisher.publish(ImageSample, name=f"Bench{i}", version="1.0.0")
    return {"seconds": time.perf_counter() - t}


def bench_load(job):
    """Seconds for atdata to read every sample of the blob entry ``entry`` with its
    ImageSample class, ``runs`` times."""
    import time

    from atdata.atmosphere.records import DatasetLoader

    loader = DatasetLoader(_atmosphere(job, authenticated=False))
    seconds, count = [], 0
    for _ in range(job["runs"]):
        t = time.perf_counter()
        count = sum(1 for _ in loader.to_dataset(job["entry"], ImageSample).ordered())
        seconds.append(time.perf_counter() - t)
    return {"seconds": seconds, "samples": count}


def from_record(job):
    from atdata._schema_codec import _schema_to_type

    try:
        cls = _schema_to_type(job["data"], use_cache=False)
    except (ValueError, TypeError, KeyError) as exc:  # what atdata 0.7 raises
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {
        "fields": {
            f.name: str(f.type)
            for f in __import__("dataclasses").fields(cls)
            if not f.name.startswith("_")
        }
    }


NETWORK = {
    "from_record": from_record,
    "publish": publish,
    "load": load,
    "bench_publish": bench_publish,
    "bench_load": bench_load,
}


def main() -> None:
    if sys.argv[1] == "batch":
        # stdin: [{"command", "class", "path"?, "data"?}, ...] -> list of results
        jobs = json.load(sys.stdin)
        json.dump(
            [
                NETWORK[j["command"]](j)
                if j["command"] in NETWORK
                else run(j["command"], j["class"], j.get("path"), j.get("data"))
                for j in jobs
            ],
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
