"""Realistic, generated ``science.alt.dataset.*`` records for benchmarks and tests
(``scripts/bench_appview``): publishers, schemas in several versions, lenses,
dataset entries and labels, drawn from a vocabulary of ML dataset words, and the
queries a load generator sends about them.

Deterministic: the same arguments give the same records (``random.Random(seed)``).
Nothing here touches the network or a database; :meth:`Seed.log_rows` gives rows
for :func:`atdata_appview.testing.log.append_rows` (the ingestion log, as the
ingester writes it) and :meth:`Seed.records` the records themselves (for another
service's own upserts).

What is generated (:func:`generate`):

- ``publishers`` accounts (``did:plc:`` DIDs of 24 base32 characters, handles such
  as ``kim-lab-microscopy.bsky.social``), each working in one or two domains
  (microscopy, genomics, vision, audio, text, climate, medical, robotics) drawn
  with fixed weights; how much each publishes is skewed (a few publish a lot);
- ``schemas`` schema records: per publisher a few names of its domains' families
  (``CellCrop``, ``StainedCellCrop3D``, ``SpeechUtterance``, ...), each in a
  chain of versions (mostly ``1.0.0, 1.1.0, 2.0.0``; also single versions, a
  ``0.x`` prehistory, ``1.2.0``, ``1.2.1``, ``2.1.0``, ``3.0.0``). A minor version
  adds an optional field, a patch changes only the description, a major renames a
  required field (so consecutive versions of one major are structurally
  compatible both ways, and majors are not). Array fields use atdata's ndarray
  shim with ``dtype``/``shape``/``dimensionNames``. Bodies differ per name
  (shapes, extra fields). Most publishers write atdata 0.7's flat form with
  ``{name}:{version}`` record keys (atdata-gen's) or TIDs (atdata 0.7's
  ``createRecord``); about 15 % write atdata-lexicon 0.4's envelope form
  (:func:`atdata_runtime.samples.schema.convert_schema_record`);
- ``lenses`` lens records: about 60 % upgrade a name across a major version
  (last ``1.x`` → ``2.0.0``) by its publisher, the rest map one publisher's schema
  to another's in the same domain; code by reference (repository, 40-hex commit,
  ``module:function`` path);
- ``entries`` dataset entries: a name (slug or title), a description of one to
  three sentences, 2-6 tags, a licence (or none), a ``schemaRef`` (mostly the
  publisher's own schemas, some another publisher's), storage of every kind
  (``storageHttp`` 40 %, ``storageS3`` 30 %, ``storageBlobs`` 20 %,
  ``storageExternal`` 10 %) with 1-64 shards (median 3), sha-256 checksums (5 %
  atdata's ``{"algorithm": "none", "digest": ""}`` placeholder), sizes;
- ``labels`` label records (``latest``, ``stable``, ``v1``, ...) naming entries.

CIDs are the records' real CIDs (:func:`atdata_runtime.atmosphere.cid.record_cid`:
DAG-CBOR, sha2-256) unless ``real_cids=False`` (then CIDv1 dag-cbor text of the
sha-256 of the record's JSON: well formed, cheaper). Record keys of entries,
lenses and labels are TIDs taken from ``createdAt``.

:meth:`Seed.workload` gives the queries (XRPC paths) of a benchmark:
``searchDatasets`` (one word, two words, with ``tags``, with ``schemaRef``, and
paged: the load generator follows the first page's ``cursor``), ``getEntry``,
``resolveSchema`` (by DID, exact version or latest) and ``getLensPath`` (pairs
joined by a chain of one to four steps, lenses and structural steps).
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import itertools
import random
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode

import orjson
from atdata_runtime.atmosphere.cid import record_cid
from atdata_runtime.atmosphere.publish import new_tid
from atdata_runtime.atmosphere.records import schema_rkey
from atdata_runtime.samples.schema import convert_schema_record

from .log import LogWriter

__all__ = [
    "DOMAINS",
    "ENTRY",
    "LABEL",
    "LENS",
    "SCHEMA",
    "Publisher",
    "SchemaInfo",
    "Seed",
    "SeedRecord",
    "generate",
    "repo_records",
]

SCHEMA: Final = "science.alt.dataset.schema"
ENTRY: Final = "science.alt.dataset.entry"
LENS: Final = "science.alt.dataset.lens"
LABEL: Final = "science.alt.dataset.label"
XRPC: Final = "/xrpc/science.alt.dataset."

_B32: Final = "abcdefghijklmnopqrstuvwxyz234567"
_NDARRAY: Final = (
    "https://alt.science/schemas/atdata-ndarray-bytes/1.1.0#/$defs/ndarray"
)
_FORMAT: Final = "science.alt.dataset.schema#jsonSchemaFormat"
_DRAFT7: Final = "http://json-schema.org/draft-07/schema#"
_EPOCH_START: Final = _dt.datetime(2024, 1, 1, tzinfo=_dt.UTC)
_EPOCH_SPAN_S: Final = int(
    (_dt.datetime(2026, 11, 1, tzinfo=_dt.UTC) - _EPOCH_START).total_seconds()
)


# -- the vocabulary --------------------------------------------------------------------


@dataclass(frozen=True)
class _Family:
    """A schema family: its array field (name, dtype, rank, dimension names),
    scalar fields, optional fields a minor version may add, and the required
    field a major version renames (old → new)."""

    name: str
    array: tuple[str, str, tuple[str, ...]]
    fields: tuple[tuple[str, dict[str, Any]], ...]
    optional: tuple[tuple[str, dict[str, Any]], ...]
    rename: tuple[str, str]


@dataclass(frozen=True)
class _Domain:
    weight: int
    words: tuple[str, ...]  # Zipf-ordered: the first is the most common
    nouns: tuple[str, ...]
    sources: tuple[str, ...]
    tags: tuple[str, ...]
    families: tuple[_Family, ...]


_S: Final[dict[str, Any]] = {"type": "string"}
_I: Final[dict[str, Any]] = {"type": "integer"}
_N: Final[dict[str, Any]] = {"type": "number"}
_B: Final[dict[str, Any]] = {"type": "boolean"}
_SL: Final[dict[str, Any]] = {"type": "array", "items": {"type": "string"}}
_IL: Final[dict[str, Any]] = {"type": "array", "items": {"type": "integer"}}
_NL: Final[dict[str, Any]] = {"type": "array", "items": {"type": "number"}}

# fmt: off
DOMAINS: Final[dict[str, _Domain]] = {
    "microscopy": _Domain(
        20,
        ("cell", "microscopy", "crops", "fluorescence", "nucleus", "cells",
         "confocal", "histology", "tissue", "stained", "mitosis", "segmentation",
         "organoid", "brightfield", "dapi", "phase-contrast", "live-cell"),
        ("crops", "images", "tiles", "masks", "frames", "stacks"),
        ("a spinning-disk confocal", "whole-slide scans", "a high-content screen",
         "time-lapse imaging", "the Human Protein Atlas", "patient biopsies"),
        ("microscopy", "cells", "imaging", "biology", "segmentation",
         "histopathology", "fluorescence"),
        (
            _Family("CellCrop", ("image", "uint8", ("channel", "y", "x")),
                    (("label", _S), ("confidence", _N)),
                    (("stain", _S), ("plate", _S), ("well", _I)), ("label", "cellType")),
            _Family("MicroscopyImage", ("pixels", "uint16", ("channel", "y", "x")),
                    (("objective", _S), ("exposureMs", _I)),
                    (("zSlice", _I), ("channelNames", _SL)), ("objective", "lens")),
            _Family("NucleusMask", ("mask", "uint8", ("y", "x")),
                    (("nuclei", _I), ("source", _S)),
                    (("area", _NL), ("annotator", _S)), ("nuclei", "count")),
            _Family("TissueTile", ("tile", "uint8", ("y", "x", "channel")),
                    (("diagnosis", _S), ("magnification", _I)),
                    (("patientAge", _I), ("site", _S)), ("diagnosis", "grade")),
        ),
    ),
    "vision": _Domain(
        20,
        ("images", "imagenet", "classification", "object", "detection", "crops",
         "scenes", "thumbnails", "bounding", "boxes", "satellite", "aerial",
         "faces", "street", "landcover", "pets", "food"),
        ("images", "photos", "crops", "tiles", "frames", "annotations"),
        ("web crawls", "Flickr", "Sentinel-2 passes", "dashcam footage",
         "crowd-sourced labels", "ImageNet-1k"),
        ("computer-vision", "images", "classification", "detection",
         "remote-sensing", "imagenet"),
        (
            _Family("ImageSample", ("image", "uint8", ("y", "x", "channel")),
                    (("label", _S),), (("caption", _S), ("source", _S)),
                    ("label", "className")),
            _Family("LabeledImage", ("pixels", "uint8", ("channel", "y", "x")),
                    (("classId", _I), ("className", _S)),
                    (("split", _S), ("hash", _S)), ("classId", "labelId")),
            _Family("DetectionBox", ("crop", "uint8", ("y", "x", "channel")),
                    (("boxes", _NL), ("categories", _SL)),
                    (("scores", _NL), ("occluded", _B)), ("categories", "labels")),
            _Family("SatelliteTile", ("bands", "float32", ("band", "y", "x")),
                    (("landcover", _S), ("cloudCover", _N)),
                    (("acquired", _S), ("sensor", _S)), ("landcover", "classLabel")),
        ),
    ),
    "text": _Domain(
        18,
        ("text", "corpus", "documents", "tokens", "articles", "wikipedia", "news",
         "dialogue", "sentences", "translation", "parallel", "code", "abstracts",
         "instructions", "multilingual", "reviews", "questions"),
        ("documents", "sentences", "passages", "conversations", "snippets"),
        ("Common Crawl", "arXiv", "Wikipedia dumps", "public forums",
         "GitHub repositories", "news wires"),
        ("nlp", "text", "language-modeling", "translation", "code", "qa"),
        (
            _Family("TextDocument", ("embedding", "float32", ("dim",)),
                    (("text", _S), ("language", _S)),
                    (("url", _S), ("title", _S)), ("text", "body")),
            _Family("TokenizedText", ("ids", "int32", ("token",)),
                    (("tokenizer", _S), ("length", _I)),
                    (("attentionMask", _IL), ("source", _S)), ("tokenizer", "vocab")),
            _Family("DialogueTurn", ("embedding", "float16", ("dim",)),
                    (("speaker", _S), ("utterance", _S)),
                    (("turn", _I), ("emotion", _S)), ("utterance", "content")),
            _Family("ParallelSentence", ("alignment", "int16", ("pair",)),
                    (("source", _S), ("target", _S)),
                    (("sourceLang", _S), ("targetLang", _S)), ("target", "translation")),
        ),
    ),
    "genomics": _Domain(
        12,
        ("genome", "sequencing", "reads", "variants", "rna", "expression",
         "single-cell", "dna", "transcriptome", "protein", "methylation",
         "chromatin", "gene", "atlas", "mutations"),
        ("reads", "profiles", "matrices", "sequences", "calls"),
        ("Illumina runs", "10x Chromium", "nanopore sequencing", "TCGA",
         "UK Biobank", "the Human Cell Atlas"),
        ("genomics", "sequencing", "bioinformatics", "single-cell", "proteomics"),
        (
            _Family("GenomeRead", ("quality", "uint8", ("base",)),
                    (("sequence", _S), ("readId", _S)),
                    (("mate", _I), ("barcode", _S)), ("readId", "name")),
            _Family("ExpressionProfile", ("counts", "float32", ("gene",)),
                    (("cellType", _S), ("donor", _S)),
                    (("batch", _S), ("tissue", _S)), ("cellType", "annotation")),
            _Family("VariantCall", ("genotype", "int8", ("sample",)),
                    (("chrom", _S), ("pos", _I), ("ref", _S), ("alt", _S)),
                    (("qual", _N), ("filter", _S)), ("chrom", "contig")),
            _Family("ProteinSequence", ("contacts", "float16", ("residue", "residue")),
                    (("sequence", _S), ("organism", _S)),
                    (("structureId", _S), ("length", _I)), ("organism", "species")),
        ),
    ),
    "audio": _Domain(
        10,
        ("audio", "speech", "clips", "spectrogram", "music", "utterances",
         "transcripts", "birdsong", "noise", "environmental", "phonemes",
         "podcasts", "speakers"),
        ("clips", "recordings", "utterances", "segments"),
        ("audiobooks", "field recordings", "call centres", "radio archives",
         "volunteer readers"),
        ("audio", "speech", "asr", "music", "bioacoustics"),
        (
            _Family("AudioClip", ("waveform", "float32", ("sample",)),
                    (("sampleRate", _I), ("label", _S)),
                    (("durationMs", _I), ("device", _S)), ("label", "category")),
            _Family("SpeechUtterance", ("waveform", "int16", ("sample",)),
                    (("transcript", _S), ("speaker", _S)),
                    (("accent", _S), ("gender", _S)), ("transcript", "text")),
            _Family("Spectrogram", ("mel", "float16", ("mel", "frame")),
                    (("hopLength", _I), ("label", _S)),
                    (("nMels", _I), ("source", _S)), ("label", "tag")),
        ),
    ),
    "medical": _Domain(
        8,
        ("mri", "scans", "radiology", "ct", "xray", "chest", "brain", "ecg",
         "retina", "de-identified", "volumes", "lesions", "ultrasound"),
        ("scans", "volumes", "slices", "traces", "studies"),
        ("a teaching hospital", "public screening programmes", "MIMIC",
         "multi-site trials"),
        ("medical-imaging", "radiology", "neuroscience", "healthcare"),
        (
            _Family("MriVolume", ("voxels", "int16", ("z", "y", "x")),
                    (("modality", _S), ("diagnosis", _S)),
                    (("scanner", _S), ("fieldStrength", _N)), ("diagnosis", "finding")),
            _Family("ChestXray", ("image", "uint8", ("y", "x")),
                    (("findings", _SL), ("view", _S)),
                    (("age", _I), ("sex", _S)), ("findings", "labels")),
            _Family("EcgTrace", ("signal", "float32", ("lead", "sample")),
                    (("rhythm", _S), ("sampleRate", _I)),
                    (("leads", _SL), ("age", _I)), ("rhythm", "diagnosis")),
        ),
    ),
    "climate": _Domain(
        7,
        ("weather", "climate", "temperature", "ocean", "simulation", "sensor",
         "timeseries", "precipitation", "reanalysis", "wind", "particles",
         "collisions", "trajectories"),
        ("grids", "readings", "events", "fields", "runs"),
        ("ERA5", "buoy networks", "weather stations", "LHC runs",
         "ensemble simulations"),
        ("climate", "physics", "timeseries", "simulation", "earth-science"),
        (
            _Family("WeatherGrid", ("field", "float32", ("level", "lat", "lon")),
                    (("variable", _S), ("validTime", _S)),
                    (("ensemble", _I), ("units", _S)), ("variable", "quantity")),
            _Family("SensorReading", ("values", "float64", ("time",)),
                    (("station", _S), ("unit", _S)),
                    (("latitude", _N), ("longitude", _N)), ("station", "sensorId")),
            _Family("ParticleEvent", ("hits", "float32", ("hit", "coord")),
                    (("energy", _N), ("runId", _I)),
                    (("trigger", _S), ("pileup", _I)), ("runId", "run")),
        ),
    ),
    "robotics": _Domain(
        5,
        ("robot", "episodes", "grasping", "manipulation", "lidar", "point",
         "clouds", "actions", "observations", "driving", "navigation", "teleop"),
        ("episodes", "sweeps", "trajectories", "demonstrations"),
        ("teleoperation", "simulated kitchens", "test-track drives",
         "warehouse robots"),
        ("robotics", "reinforcement-learning", "lidar", "autonomous-driving"),
        (
            _Family("RobotEpisode", ("observation", "uint8", ("y", "x", "channel")),
                    (("action", _NL), ("reward", _N)),
                    (("done", _B), ("task", _S)), ("reward", "return")),
            _Family("LidarSweep", ("points", "float32", ("point", "coord")),
                    (("frame", _I), ("sensor", _S)),
                    (("intensity", _NL), ("scene", _S)), ("frame", "frameId")),
        ),
    ),
}

# fmt: on
"""Domain name -> its words (Zipf-ordered), nouns, sources, tags and schema
families."""

_QUALIFIERS: Final = (
    "train", "validation", "test", "subset", "curated", "filtered", "annotated",
    "synthetic", "augmented", "balanced", "raw", "processed", "high-resolution",
    "benchmark", "mini", "full", "v2", "large", "small", "cleaned",
)  # fmt: skip
_GENERIC_TAGS: Final = (
    "train", "benchmark", "curated", "open-data", "annotated", "synthetic",
    "large-scale", "2025", "2026", "baseline",
)  # fmt: skip
_LICENSES: Final = (
    ("CC-BY-4.0", 30), ("CC0-1.0", 15), ("MIT", 12), ("Apache-2.0", 10),
    ("CC-BY-SA-4.0", 8), ("CC-BY-NC-4.0", 8), ("ODbL-1.0", 3), (None, 14),
)  # fmt: skip
_NAME_PREFIXES: Final = (
    "", "", "", "Stained", "Raw", "Curated", "Annotated", "Multi", "Synthetic",
    "HighRes", "Lab", "Clinical", "Field",
)  # fmt: skip
_NAME_SUFFIXES: Final = ("", "", "", "3D", "Patch", "Set", "Record", "Item", "Lite")
_SURNAMES: Final = (
    "kim", "garcia", "chen", "okafor", "nguyen", "silva", "kowalski", "haddad",
    "tanaka", "muller", "rossi", "patel", "johansson", "moreau", "ivanova",
    "abebe", "santos", "larsen", "cohen", "wang", "ali", "fischer", "dubois",
    "novak", "costa", "yilmaz", "sato", "murphy", "reyes", "lindqvist",
)  # fmt: skip
_ORGS: Final = (
    "lab", "group", "institute", "data", "ai", "bio", "research", "center",
)  # fmt: skip
_TLDS: Final = ("bsky.social", "bsky.social", "science.social", "dataset.example")
_HOSTS: Final = (
    "data.{h}", "huggingface.co/datasets/{h}", "zenodo.org/records", "storage.{h}",
    "files.{h}", "mirror.{h}",
)  # fmt: skip
_BUCKETS: Final = ("datasets", "ml-data", "open-data", "shards", "public")
_REGIONS: Final = ("us-east-1", "us-west-2", "eu-west-1", "eu-central-1")
# versions: chain -> weight (minor: +optional field; patch: description; major: rename)
_CHAINS: Final = (
    (("1.0.0", "1.1.0", "2.0.0"), 50),
    (("1.0.0",), 10),
    (("1.0.0", "1.1.0"), 12),
    (("1.0.0", "1.1.0", "1.2.0", "2.0.0"), 8),
    (("0.1.0", "0.2.0", "1.0.0", "1.1.0", "2.0.0"), 5),
    (("1.0.0", "1.1.0", "1.1.1", "2.0.0", "2.1.0"), 6),
    (("1.0.0", "1.1.0", "2.0.0", "2.1.0", "3.0.0"), 5),
    (("1.0.0", "2.0.0"), 4),
)
_LABEL_NAMES: Final = (
    "latest",
    "stable",
    "v1",
    "v2",
    "baseline",
    "paper-2025",
    "release",
)


# -- what is generated ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publisher:
    """An account: ``did`` (``did:plc:``), ``handle``, the ``domains`` it works in."""

    did: str
    handle: str
    domains: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SeedRecord:
    """One record: ``collection`` (NSID), repository ``did``, record key ``rkey``,
    ``cid`` (CIDv1 text), the record value ``record`` (JSON data model)."""

    collection: str
    did: str
    rkey: str
    cid: str
    record: dict[str, Any]

    @property
    def uri(self) -> str:
        """``at://did/collection/rkey``."""
        return f"at://{self.did}/{self.collection}/{self.rkey}"


@dataclass(frozen=True, slots=True)
class SchemaInfo:
    """A generated schema: its AT-URI, publisher ``did``, ``name``, ``version``,
    record key, ``domain`` and record ``form`` (``flat`` | ``envelope``)."""

    uri: str
    did: str
    name: str
    version: str
    rkey: str
    domain: str
    form: str


@dataclass
class Seed:
    """Everything :func:`generate` made (see the module doc). ``lens_pairs``:
    ``(source, target, steps)`` schema AT-URIs joined by a chain of ``steps``
    lenses or structural steps."""

    publishers: list[Publisher]
    schemas: list[SeedRecord]
    schema_info: list[SchemaInfo]
    lenses: list[SeedRecord]
    entries: list[SeedRecord]
    labels: list[SeedRecord]
    lens_pairs: list[tuple[str, str, int]]
    seed: int
    entry_domains: list[str] = field(default_factory=list)

    def records(self) -> Iterator[SeedRecord]:
        """Every record in publication order: schemas, lenses, entries, labels."""
        yield from self.schemas
        yield from self.lenses
        yield from self.entries
        yield from self.labels

    def counts(self) -> dict[str, int]:
        """Records per collection NSID, and ``publishers``."""
        return {
            "publishers": len(self.publishers),
            SCHEMA: len(self.schemas),
            LENS: len(self.lenses),
            ENTRY: len(self.entries),
            LABEL: len(self.labels),
        }

    def log_rows(
        self,
        records: Sequence[SeedRecord] | None = None,
        *,
        writer: LogWriter | None = None,
        identities: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Ingestion-log rows (:func:`~atdata_appview.testing.log.append_rows`
        input): an ``#identity`` row per publisher (its handle) when
        ``identities``, then a create per record of ``records`` (default: all,
        :meth:`records` order), with the records' CIDs; ``writer`` numbers them
        (pass one writer across calls to keep ``seq``/``rev`` increasing)."""
        log = writer or LogWriter()
        if identities:
            for p in self.publishers:
                yield log.identity(p.did, p.handle)
        for r in self.records() if records is None else records:
            yield log.create(r.did, r.collection, r.rkey, r.record, cid=r.cid)

    # -- the queries -------------------------------------------------------------------

    def workload(self, *, size: int = 2000, seed: int | None = None) -> dict[str, Any]:
        """Requests of a benchmark: ``{method: [{"path": "/xrpc/...?...",
        "page": bool}]}`` for ``searchDatasets``, ``getEntry``, ``resolveSchema``,
        ``getLensPath`` (``size`` each, fewer lens paths when there are fewer
        pairs). ``page``: the load generator follows the response's ``cursor``
        once (a second request). Every parameter of those is one both atdata-app
        and this AppView accept (``q`` always given; repos as DIDs).
        ``resolveSchemaByHandle``: the same resolveSchema requests with the
        publisher's handle instead of its DID."""
        rng = random.Random(self.seed * 7919 + 1 if seed is None else seed)
        by_domain: dict[str, list[int]] = {}
        for i, d in enumerate(self.entry_domains):
            by_domain.setdefault(d, []).append(i)
        domains = [d for d in DOMAINS if d in by_domain]
        weights = [DOMAINS[d].weight for d in domains]

        def word(d: str) -> str:
            words = DOMAINS[d].words
            return words[_zipf(rng, len(words))]

        search: list[dict[str, Any]] = []
        for _ in range(size):
            d = rng.choices(domains, weights)[0]
            kind = rng.random()
            params: list[tuple[str, str]]
            page = False
            if kind < 0.40:
                params = [("q", word(d))]
            elif kind < 0.65:
                a, b = word(d), rng.choice(DOMAINS[d].nouns + DOMAINS[d].words)
                params = [("q", f"{a} {b}" if a != b else a)]
            elif kind < 0.80:
                params = [("q", word(d)), ("tags", rng.choice(DOMAINS[d].tags))]
            elif kind < 0.90:
                e = self.entries[rng.choice(by_domain[d])]
                params = [("q", word(d)), ("schemaRef", e.record["schemaRef"])]
            else:
                params = [("q", word(d))]
                page = True
            search.append(
                {"path": f"{XRPC}searchDatasets?{urlencode(params)}", "page": page}
            )

        get_entry = [
            {
                "path": f"{XRPC}getEntry?{urlencode({'uri': rng.choice(self.entries).uri})}",
                "page": False,
            }
            for _ in range(size)
        ]
        handles = {p.did: p.handle for p in self.publishers}
        resolve: list[dict[str, Any]] = []
        by_handle: list[dict[str, Any]] = []
        for _ in range(size):
            s = rng.choice(self.schema_info)
            q = {"handle": s.did, "schemaId": s.name}
            if rng.random() < 0.7:
                q["version"] = s.version
            resolve.append(
                {"path": f"{XRPC}resolveSchema?{urlencode(q)}", "page": False}
            )
            q["handle"] = handles[s.did]
            by_handle.append(
                {"path": f"{XRPC}resolveSchema?{urlencode(q)}", "page": False}
            )
        pairs = self.lens_pairs
        lens_path = [
            {
                "path": f"{XRPC}getLensPath?"
                + urlencode({"sourceSchema": src, "targetSchema": dst}),
                "page": False,
            }
            for src, dst, _ in (
                rng.sample(pairs, min(size, len(pairs))) if pairs else []
            )
        ]
        return {
            "searchDatasets": search,
            "getEntry": get_entry,
            "resolveSchema": resolve,
            "getLensPath": lens_path,
            "resolveSchemaByHandle": by_handle,
        }


# -- helpers ---------------------------------------------------------------------------


def _zipf(rng: random.Random, n: int, s: float = 1.1) -> int:
    """An index in ``0..n-1``, index ``k`` with weight ``1 / (k + 1) ** s``."""
    weights = _ZIPF_CACHE.get((n, s))
    if weights is None:
        weights = [1 / (k + 1) ** s for k in range(n)]
        _ZIPF_CACHE[(n, s)] = weights
    return rng.choices(range(n), weights)[0]


_ZIPF_CACHE: dict[tuple[int, float], list[float]] = {}


def _did(rng: random.Random) -> str:
    return "did:plc:" + "".join(rng.choice(_B32) for _ in range(24))


def _hex(rng: random.Random, nbytes: int) -> str:
    return rng.getrandbits(nbytes * 8).to_bytes(nbytes, "big").hex()


def _fast_cid(record: dict[str, Any]) -> str:
    digest = hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).digest()
    raw = bytes((1, 0x71, 0x12, 0x20)) + digest
    return "b" + base64.b32encode(raw).decode("ascii").lower().rstrip("=")


def _when(rng: random.Random, lo: float = 0.0, hi: float = 1.0) -> _dt.datetime:
    return _EPOCH_START + _dt.timedelta(
        seconds=rng.uniform(lo, hi) * _EPOCH_SPAN_S, microseconds=rng.randrange(10**6)
    )


def _stamp(when: _dt.datetime, style: int) -> str:
    """``createdAt`` text: atdata-gen's milliseconds ``Z`` or atdata 0.7's
    microseconds ``+00:00``."""
    if style == 0:
        return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    return when.isoformat()


def _micros(when: _dt.datetime) -> int:
    return int(when.timestamp()) * 1_000_000 + when.microsecond


class _Keys:
    """Unique TIDs per repository."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[tuple[str, str]] = set()

    def tid(self, did: str, when: _dt.datetime) -> str:
        us = _micros(when)
        while True:
            key = new_tid(us, self.rng.randrange(1024))
            if (did, key) not in self.used:
                self.used.add((did, key))
                return key
            us += 1


def _slug(words: Sequence[str]) -> str:
    return "-".join(w.lower() for w in words)


# -- schemas ----------------------------------------------------------------------------


def _schema_body(
    fam: _Family,
    version: str,
    shape: list[int],
    extra: Sequence[tuple[str, dict[str, Any]]],
    *,
    sloppy: bool = False,
) -> tuple[dict[str, Any], list[str]]:
    """Properties and required list of ``fam`` at ``version``: each minor step
    (within a major) adds the next optional field; the major number counts
    renames of the family's renamed field (and, from 3, of the array).
    ``sloppy``: a minor version also drops the last required scalar field (a
    breaking change under a minor bump, as careless publishers make)."""
    major, minor, _patch = (int(x) for x in version.split("."))
    arr_name, dtype, dims = fam.array
    old, new = fam.rename
    props: dict[str, Any] = {}
    required: list[str] = []
    if major >= 3:
        arr_name = arr_name + "Data"
    props[arr_name] = {
        "$ref": _NDARRAY,
        "dtype": dtype,
        "shape": shape,
        "dimensionNames": list(dims),
    }
    required.append(arr_name)
    scalars = [*fam.fields, *extra]
    if sloppy and minor > 0 and len(scalars) > 1:
        scalars = scalars[:-1]
    for name, spec in scalars:
        if name == old and major >= 2:
            name = new
        props[name] = dict(spec)
        required.append(name)
    # minors within this major: the k-th minor adds the k-th optional field
    for k, (name, spec) in enumerate(fam.optional):
        if k < minor:
            props[name] = dict(spec)
    return props, required


def _flat_schema(
    name: str,
    version: str,
    description: str,
    props: dict[str, Any],
    required: list[str],
    created: str,
    license_: str | None,
    tags: list[str],
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "$type": SCHEMA,
        "name": name,
        "version": version,
        "schemaType": "jsonSchema",
        "schema": {
            "$type": _FORMAT,
            "$schema": _DRAFT7,
            "type": "object",
            "properties": props,
            "required": required,
            "arrayFormatVersions": {"ndarrayBytes": "1.1.0"},
        },
        "createdAt": created,
        "atdataSchemaVersion": 1,
        "description": description,
    }
    meta: dict[str, Any] = {"tags": tags}
    if license_:
        meta["license"] = license_
    record["metadata"] = meta
    return record


# -- the generator ------------------------------------------------------------------------


def generate(
    *,
    entries: int = 100_000,
    schemas: int = 10_000,
    lenses: int = 2_000,
    labels: int | None = None,
    publishers: int = 300,
    seed: int = 0,
    real_cids: bool = True,
) -> Seed:
    """Generate a federation (see the module doc): exactly ``schemas`` schema
    records, ``lenses`` lens records (fewer when there are not enough schema
    pairs), ``entries`` entries and ``labels`` labels (default ``entries // 30``)
    by ``publishers`` accounts. ``real_cids``: the records' DAG-CBOR CIDs (about
    0.1 ms per record), else a cheaper well-formed CID. Raises ``ValueError``
    for sizes below 1 schema or 1 publisher."""
    if schemas < 1 or publishers < 1 or entries < 0 or lenses < 0:
        raise ValueError("need at least one schema and one publisher")
    rng = random.Random(seed)
    cid_of = record_cid if real_cids else _fast_cid
    keys = _Keys(rng)
    dnames = list(DOMAINS)
    dweights = [DOMAINS[d].weight for d in dnames]

    # publishers
    pubs: list[Publisher] = []
    handles: set[str] = set()
    for _ in range(publishers):
        first = rng.choices(dnames, dweights)[0]
        picked = [first] if rng.random() < 0.6 else [first, rng.choice(dnames)]
        doms = tuple(dict.fromkeys(picked))
        base = f"{rng.choice(_SURNAMES)}-{rng.choice(_ORGS)}-{first}"
        handle = f"{base}.{rng.choice(_TLDS)}"
        n = 2
        while handle in handles:
            handle = f"{base}{n}.{rng.choice(_TLDS)}"
            n += 1
        handles.add(handle)
        pubs.append(Publisher(_did(rng), handle, doms))
    # how much each publisher publishes: skewed
    activity = [rng.paretovariate(1.3) for _ in pubs]
    envelope_pub = {p.did for p in pubs if rng.random() < 0.15}
    tid_pub = {p.did for p in pubs if rng.random() < 0.25}

    # schemas: names with version chains, until `schemas` records
    schema_recs: list[SeedRecord] = []
    infos: list[SchemaInfo] = []
    # (did, name) -> versions' SchemaInfo in order
    chains: dict[tuple[str, str], list[SchemaInfo]] = {}
    names_of: dict[str, set[str]] = {p.did: set() for p in pubs}
    sloppy_names: set[tuple[str, str]] = set()
    chain_list = [c for c, _ in _CHAINS]
    chain_w = [w for _, w in _CHAINS]
    while len(schema_recs) < schemas:
        p = rng.choices(pubs, activity)[0]
        dom = rng.choice(p.domains)
        fam = rng.choice(DOMAINS[dom].families)
        name = rng.choice(_NAME_PREFIXES) + fam.name + rng.choice(_NAME_SUFFIXES)
        if name in names_of[p.did]:
            name = f"{name}{len(names_of[p.did]) + 2}"
            if name in names_of[p.did]:
                continue
        names_of[p.did].add(name)
        chain = rng.choices(chain_list, chain_w)[0]
        rank = len(fam.array[2])
        side = rng.choice((16, 32, 64, 128, 224, 256, 512))
        shape = [rng.choice((1, 3, 4)) if rank > 2 else side] + [side] * (rank - 1)
        if rank == 1:
            shape = [rng.choice((128, 256, 384, 512, 768, 1024, 16000, 22050))]
        extra_pool = [("notes", _S), ("sourceId", _S), ("weight", _N), ("index", _I),
                      ("flags", _SL), ("qc", _B)]  # fmt: skip
        extra = rng.sample(extra_pool, rng.randrange(0, 3))
        lic = rng.choices([x for x, _ in _LICENSES], [w for _, w in _LICENSES])[0]
        tags = sorted(
            {rng.choice(DOMAINS[dom].tags) for _ in range(rng.randrange(1, 4))}
        )
        t0 = rng.uniform(0, 0.6)
        form = "envelope" if p.did in envelope_pub else "flat"
        sloppy = rng.random() < 0.05
        if sloppy:
            sloppy_names.add((p.did, name))
        style = 1 if p.did in tid_pub else 0
        for i, version in enumerate(chain):
            if len(schema_recs) >= schemas:
                break
            props, required = _schema_body(fam, version, shape, extra, sloppy=sloppy)
            words = DOMAINS[dom].words
            desc = (
                f"One {rng.choice(DOMAINS[dom].nouns)[:-1]} of "
                f"{words[_zipf(rng, len(words))]} {rng.choice(DOMAINS[dom].nouns)}"
                f" ({fam.name}), version {version}."
            )
            when = _when(rng, t0 + i * 0.05, t0 + i * 0.05 + 0.04)
            record = _flat_schema(
                name, version, desc, props, required, _stamp(when, style), lic, tags
            )
            if form == "envelope":
                record = convert_schema_record(record, "envelope")
            rkey = (
                keys.tid(p.did, when)
                if p.did in tid_pub
                else schema_rkey(name, version)
            )
            rec = SeedRecord(SCHEMA, p.did, rkey, cid_of(record), record)
            schema_recs.append(rec)
            info = SchemaInfo(rec.uri, p.did, name, version, rkey, dom, form)
            infos.append(info)
            chains.setdefault((p.did, name), []).append(info)
    handle_of = {p.did: p.handle for p in pubs}

    # lenses: upgrades across a major, and between publishers of one domain
    lens_recs: list[SeedRecord] = []
    edges: dict[str, set[str]] = {}
    upgrades: list[tuple[SchemaInfo, SchemaInfo]] = []
    for versions in chains.values():
        for a, b in itertools.pairwise(versions):
            if a.version.split(".")[0] != b.version.split(".")[0]:
                upgrades.append((a, b))
    rng.shuffle(upgrades)
    by_dom: dict[str, list[SchemaInfo]] = {}
    for info in infos:
        by_dom.setdefault(info.domain, []).append(info)
    n_upgrade = min(len(upgrades), round(lenses * 0.6))
    planned: list[tuple[SchemaInfo, SchemaInfo]] = list(upgrades[:n_upgrade])
    seen_pairs = {(a.uri, b.uri) for a, b in planned}
    tries = 0
    while len(planned) < lenses and tries < lenses * 20:
        tries += 1
        a = rng.choice(infos)
        b = rng.choice(by_dom[a.domain])
        if a.did == b.did or (a.uri, b.uri) in seen_pairs:
            continue
        seen_pairs.add((a.uri, b.uri))
        planned.append((a, b))
    for a, b in planned:
        when = _when(rng, 0.6, 0.7)
        repo = a.did if rng.random() < 0.8 else b.did
        owner = handle_of[repo].split(".")[0]
        commit = _hex(rng, 20)
        module = _slug([a.name, "to", b.name]).replace("-", "_")
        code = {
            "repository": f"https://github.com/{owner}/{module}-lenses",
            "commit": commit,
            "language": "python",
        }
        record = {
            "$type": LENS,
            "name": f"{a.name} {a.version} to {b.name} {b.version}"[:100],
            "sourceSchema": a.uri,
            "targetSchema": b.uri,
            "description": f"maps {a.name} {a.version} samples onto {b.name} {b.version}",
            "getterCode": {**code, "path": f"{module}.lens:get"},
            "putterCode": {**code, "path": f"{module}.lens:put"},
            "language": "python",
            "createdAt": _stamp(when, 0),
        }
        rec = SeedRecord(LENS, repo, keys.tid(repo, when), cid_of(record), record)
        lens_recs.append(rec)
        edges.setdefault(a.uri, set()).add(b.uri)

    # structural steps: consecutive versions of one major of one name, both ways
    # (not for the sloppy names, whose minors drop a field)
    structural: dict[str, set[str]] = {}
    for key, versions in chains.items():
        if key in sloppy_names:
            continue
        for a, b in itertools.pairwise(versions):
            if a.version.split(".")[0] == b.version.split(".")[0]:
                structural.setdefault(a.uri, set()).add(b.uri)
                structural.setdefault(b.uri, set()).add(a.uri)
    lens_pairs = _pairs(rng, lens_recs, edges, structural)

    # entries
    entry_recs: list[SeedRecord] = []
    entry_domains: list[str] = []
    own: dict[str, list[SchemaInfo]] = {}
    for info in infos:
        own.setdefault(info.did, []).append(info)
    publishing = [p for p in pubs if p.did in own]
    pub_w = [activity[pubs.index(p)] for p in publishing]
    for _ in range(entries):
        p = rng.choices(publishing, pub_w)[0]
        if rng.random() < 0.85:
            s = rng.choice(own[p.did])
        else:
            s = rng.choice(by_dom[rng.choice(p.domains)])
        dom = s.domain
        d = DOMAINS[dom]
        w1 = d.words[_zipf(rng, len(d.words))]
        w2 = d.words[_zipf(rng, len(d.words))]
        noun = rng.choice(d.nouns)
        qual = rng.choice(_QUALIFIERS)
        parts = [w1] + ([w2] if w2 != w1 and rng.random() < 0.5 else []) + [noun, qual]
        if rng.random() < 0.6:
            name = _slug(parts) + (
                f"-{rng.randrange(1, 60)}" if rng.random() < 0.3 else ""
            )
        else:
            name = " ".join(
                w.capitalize() if i == 0 else w for i, w in enumerate(parts)
            )
        shards = min(64, max(1, int(rng.lognormvariate(1.1, 0.9))))
        per_shard = rng.choice((256, 500, 1000, 2000, 5000, 10_000))
        samples = shards * per_shard - rng.randrange(per_shard // 2 + 1)
        sample_bytes = rng.choice((200, 800, 3_000, 12_288, 50_000, 150_528, 600_000))
        sentences = [
            f"{qual.capitalize()} {w1} {noun} from {rng.choice(d.sources)}.",
            (
                f"{samples:,} samples of {s.name} {s.version}, in {shards} "
                f"WebDataset shard{'s' if shards > 1 else ''}."
            ),
        ]
        if rng.random() < 0.5:
            w3 = d.words[_zipf(rng, len(d.words))]
            sentences.append(f"Useful for {w3} and {rng.choice(d.words)} models.")
        tagset = {rng.choice(d.tags) for _ in range(rng.randrange(1, 4))}
        tagset.update(rng.sample(_GENERIC_TAGS, rng.randrange(0, 3)))
        if qual in ("train", "validation", "test"):
            tagset.add(qual)
        lic = rng.choices([x for x, _ in _LICENSES], [w for _, w in _LICENSES])[0]
        when = _when(rng, 0.1, 1.0)
        style = 1 if p.did in tid_pub else 0
        slug = _slug(parts)
        entry: dict[str, Any] = {
            "$type": ENTRY,
            "name": name[:200],
            "schemaRef": s.uri,
            "storage": _storage(rng, slug, shards, p.handle, per_shard * sample_bytes),
            "description": " ".join(sentences),
            "tags": sorted(tagset),
            "size": {
                "samples": samples,
                "bytes": samples * sample_bytes,
                "shards": shards,
            },
            "createdAt": _stamp(when, style),
        }
        if lic:
            entry["license"] = lic
        rec = SeedRecord(ENTRY, p.did, keys.tid(p.did, when), cid_of(entry), entry)
        entry_recs.append(rec)
        entry_domains.append(dom)

    # labels
    n_labels = entries // 30 if labels is None else labels
    label_recs: list[SeedRecord] = []
    for _ in range(n_labels if entry_recs else 0):
        e = rng.choice(entry_recs)
        when = _when(rng, 0.9, 1.0)
        label: dict[str, Any] = {
            "$type": LABEL,
            "name": rng.choice(_LABEL_NAMES),
            "datasetUri": e.uri,
            "createdAt": _stamp(when, 0),
        }
        if rng.random() < 0.5:
            label["version"] = f"{rng.randrange(1, 4)}.{rng.randrange(0, 5)}.0"
        if rng.random() < 0.4:
            label["description"] = f"the {label['name']} release of {e.record['name']}"
        label_recs.append(
            SeedRecord(LABEL, e.did, keys.tid(e.did, when), cid_of(label), label)
        )
    return Seed(
        publishers=pubs,
        schemas=schema_recs,
        schema_info=infos,
        lenses=lens_recs,
        entries=entry_recs,
        labels=label_recs,
        lens_pairs=lens_pairs,
        seed=seed,
        entry_domains=entry_domains,
    )


def _storage(
    rng: random.Random,
    slug: str,
    shards: int,
    handle: str,
    shard_bytes: int,
    *,
    blobs: bool = True,
) -> dict[str, Any]:
    """A storage union member of a random kind with ``shards`` shards (not
    ``storageBlobs`` unless ``blobs``: a PDS refuses a record naming blobs it does
    not hold)."""
    weights = (40, 30, 20 if blobs else 0, 10)
    kind = rng.choices(("http", "s3", "blobs", "external"), weights)[0]
    host_of = handle.split(".")[0]

    def checksum() -> dict[str, str]:
        if rng.random() < 0.05:
            return {"algorithm": "none", "digest": ""}
        return {"algorithm": "sha256", "digest": _hex(rng, 32)}

    if kind == "http":
        host = rng.choice(_HOSTS).format(h=f"{host_of}.example.org")
        return {
            "$type": "science.alt.dataset.storageHttp",
            "shards": [
                {
                    "url": f"https://{host}/{slug}/{slug}-{i:06d}.tar",
                    "checksum": checksum(),
                }
                for i in range(shards)
            ],
        }
    if kind == "s3":
        out: dict[str, Any] = {
            "$type": "science.alt.dataset.storageS3",
            "bucket": f"{host_of[:40]}-{rng.choice(_BUCKETS)}",
            "region": rng.choice(_REGIONS),
            "shards": [
                {"key": f"{slug}/{slug}-{i:06d}.tar", "checksum": checksum()}
                for i in range(shards)
            ],
        }
        if rng.random() < 0.3:
            out["endpoint"] = "https://s3.example-cloud.org"
        return out
    if kind == "blobs":
        items: list[dict[str, Any]] = []
        for _ in range(shards):
            raw = bytes((1, 0x55, 0x12, 0x20)) + rng.getrandbits(256).to_bytes(
                32, "big"
            )
            cid = "b" + base64.b32encode(raw).decode("ascii").lower().rstrip("=")
            size = max(1024, int(shard_bytes * rng.uniform(0.9, 1.1)))
            items.append(
                {
                    "blob": {
                        "$type": "blob",
                        "ref": {"$link": cid},
                        "mimeType": "application/x-tar",
                        "size": min(size, 50 * 1024 * 1024),
                    },
                    "checksum": checksum(),
                }
            )
        return {"$type": "science.alt.dataset.storageBlobs", "blobs": items}
    host = rng.choice(_HOSTS).format(h=f"{host_of}.example.org")
    last = f"{shards - 1:06d}"
    return {
        "$type": "science.alt.dataset.storageExternal",
        "urls": [f"https://{host}/{slug}/{slug}-{{000000..{last}}}.tar"],
    }


def _pairs(
    rng: random.Random,
    lens_recs: Sequence[SeedRecord],
    edges: dict[str, set[str]],
    structural: dict[str, set[str]],
    *,
    max_steps: int = 4,
    limit: int = 5000,
) -> list[tuple[str, str, int]]:
    """``(source, target, steps)`` joined by a shortest chain of 1..``max_steps``
    steps (lens edges and structural steps), each chain using at least one lens,
    from breadth-first searches starting at lens sources and at the structural
    neighbours of lens sources."""
    starts: list[str] = []
    for rec in lens_recs:
        src = str(rec.record["sourceSchema"])
        starts.append(src)
        starts.extend(sorted(structural.get(src, ())))
    starts = list(dict.fromkeys(starts))
    rng.shuffle(starts)
    out: list[tuple[str, str, int]] = []
    for start in starts:
        if len(out) >= limit:
            break
        dist = {start: 0}
        used_lens = {start: False}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            if dist[node] >= max_steps:
                continue
            for nxt, is_lens in [(n, True) for n in sorted(edges.get(node, ()))] + [
                (n, False) for n in sorted(structural.get(node, ()))
            ]:
                if nxt not in dist:
                    dist[nxt] = dist[node] + 1
                    used_lens[nxt] = used_lens[node] or is_lens
                    queue.append(nxt)
        reach = [(n, k) for n, k in dist.items() if k > 0 and used_lens[n]]
        if reach:
            rng.shuffle(reach)
            for n, k in reach[:3]:
                out.append((start, n, k))
    return out


# -- small repositories (backfill) ----------------------------------------------------


def repo_records(
    handle: str, did: str, n: int = 3, *, seed: int = 0
) -> list[tuple[str, str, dict[str, Any]]]:
    """``n`` records of one small repository, in write order: a schema (flat form,
    key ``{name}:{version}``), then entries of it (HTTP, S3 or external storage:
    no blobs) and, when ``n >= 4``, a label: ``(collection, rkey, record)``. For
    seeding a real PDS."""
    rng = random.Random(f"{seed}:{did}")
    keys = _Keys(rng)
    dom = rng.choices(list(DOMAINS), [d.weight for d in DOMAINS.values()])[0]
    d = DOMAINS[dom]
    fam = rng.choice(d.families)
    name = rng.choice(_NAME_PREFIXES) + fam.name
    shape = [3, 64, 64][: len(fam.array[2])]
    props, required = _schema_body(fam, "1.0.0", shape, ())
    when = _when(rng, 0.0, 0.5)
    schema = _flat_schema(
        name, "1.0.0", f"{fam.name} samples of {handle}", props, required,
        _stamp(when, 0), "CC-BY-4.0", [d.tags[0]],
    )  # fmt: skip
    out: list[tuple[str, str, dict[str, Any]]] = [
        (SCHEMA, schema_rkey(name, "1.0.0"), schema)
    ]
    schema_uri = f"at://{did}/{SCHEMA}/{schema_rkey(name, '1.0.0')}"
    last_entry = ""
    for i in range(max(0, n - 1)):
        if i == n - 2 and n >= 4:
            when = _when(rng, 0.9, 1.0)
            out.append(
                (LABEL, keys.tid(did, when),
                 {"$type": LABEL, "name": "latest", "datasetUri": last_entry,
                  "createdAt": _stamp(when, 0)})
            )  # fmt: skip
            continue
        w = d.words[_zipf(rng, len(d.words))]
        slug = _slug([w, rng.choice(d.nouns), rng.choice(_QUALIFIERS)])
        shards = rng.randrange(1, 6)
        when = _when(rng, 0.5, 0.9)
        entry = {
            "$type": ENTRY,
            "name": slug,
            "schemaRef": schema_uri,
            "storage": _storage(rng, slug, shards, handle, 10_000_000, blobs=False),
            "description": f"{w} {rng.choice(d.nouns)} from {rng.choice(d.sources)}.",
            "tags": sorted({rng.choice(d.tags), rng.choice(_GENERIC_TAGS)}),
            "license": "CC-BY-4.0",
            "size": {
                "samples": shards * 1000,
                "bytes": shards * 10_000_000,
                "shards": shards,
            },
            "createdAt": _stamp(when, 0),
        }
        rkey = keys.tid(did, when)
        last_entry = f"at://{did}/{ENTRY}/{rkey}"
        out.append((ENTRY, rkey, entry))
    return out
