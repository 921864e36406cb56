"""Loading a published dataset: entry AT-URI → typed :class:`~atdata_runtime.shards.Dataset`.

1. The entry and its schema record are fetched from their owners' PDSs, verified
   against their CIDs and validated (:class:`~.client.AtmosphereClient`).
2. The sample class is, in order: the one passed in; the generated class pinned for
   that schema record (same AT-URI and CID in ``atdata-gen.lock``, class found in the
   package named by ``[tool.atdata-gen] package`` beside the lock); otherwise a class
   compiled in-process from the record (:func:`atdata_gen.dynamic.compile_schema_record`,
   same codec, no code generated or executed).
3. Shards stream from HTTP(S), S3 (``s3://bucket/key``, with the entry's endpoint)
   or PDS blobs (``com.atproto.sync.getBlob`` on the owner's PDS), and every shard's
   sha256 is verified as it is read: the entry's checksum, or for a blob without one
   the sha-256 inside the blob's CID.

Shard locations are untrusted input: only ``http``/``https`` URLs and S3 keys are
accepted, never local paths.
"""

from __future__ import annotations

import json
import logging
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..samples.codec import PackableSample, generated_sample_classes
from ..shards.dataset import Dataset
from .cid import cid_to_bytes
from .client import AtmosphereClient, FetchedRecord
from .errors import AtmosphereError
from .records import ENTRY, SCHEMA, AtUri

log = logging.getLogger("atdata_runtime.atmosphere")

__all__ = ["ResolvedDataset", "find_lock", "load_dataset", "resolve_dataset"]


@dataclass
class ResolvedDataset:
    """Everything needed to read a published dataset: the verified ``entry`` and
    ``schema`` records, the ``sample_type``, shard ``urls`` with their expected
    sha256 ``checksums``, ``storage_options`` for fsspec, and ``class_source``
    (``"given"``, ``"lock"`` or ``"dynamic"``)."""

    entry: FetchedRecord
    schema: FetchedRecord
    sample_type: type[PackableSample]
    urls: list[str]
    checksums: dict[str, str]
    storage_options: dict[str, Any] = field(default_factory=dict)
    class_source: str = "dynamic"

    @property
    def unverified(self) -> list[str]:
        """Shard URLs the entry gives no usable checksum for (atdata 0.7 writes
        ``{"algorithm": "none", "digest": ""}`` for HTTP and S3 shards); these are
        read without verification and :func:`load_dataset` logs a warning."""
        return [url for url in self.urls if url not in self.checksums]


def find_lock(start: Path | None = None) -> Path | None:
    """The nearest ``atdata-gen.lock`` in ``start`` (default: cwd) or a parent."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "atdata-gen.lock").is_file():
            return d / "atdata-gen.lock"
    return None


def _locked_class(lock: Path, schema: FetchedRecord) -> type[PackableSample] | None:
    try:
        data = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pinned = [
        e
        for e in data.get("schemas", [])
        if isinstance(e, dict) and e.get("uri") == schema.uri
    ]
    if not pinned:
        return None
    if pinned[0].get("cid") != schema.cid:
        warnings.warn(
            f"{schema.uri}: the lock pins CID {pinned[0].get('cid')}, the PDS now has "
            f"{schema.cid}; compiling the current record (run atdata-gen pull --update)",
            stacklevel=3,
        )
        return None
    try:
        config = tomllib.loads(
            (lock.parent / "pyproject.toml").read_text(encoding="utf-8")
        )
        package = config["tool"]["atdata-gen"].get("package", "atdata_lexicons")
        classes = generated_sample_classes(package)
    except (OSError, KeyError, ValueError, ImportError):
        return None
    for cls in classes:
        if cls.schema_cid == schema.cid:
            return cls
    return None


def _sha256_of_blob_cid(cid: str) -> str | None:
    raw = cid_to_bytes(cid)
    if raw[1:4] == b"\x55\x12\x20" and len(raw) == 36:
        return raw[4:].hex()
    return None


def _checksum(entry: dict[str, Any]) -> str | None:
    checksum = entry.get("checksum") or {}
    if str(checksum.get("algorithm", "")).lower() == "sha256" and checksum.get(
        "digest"
    ):
        return str(checksum["digest"]).lower()
    return None


def resolve_dataset(
    uri: str,
    *,
    client: AtmosphereClient | None = None,
    sample_type: type[PackableSample] | None = None,
    lock: Path | None = None,
) -> ResolvedDataset:
    """Fetch and verify entry and schema, pick the sample class and list the
    shards (see the module docstring). Raises the client's errors (naming the
    AT-URI), :class:`~.errors.AtmosphereError` for an unusable storage, and
    ``atdata_gen.dynamic.SchemaCompileError`` for a schema that does not compile."""
    client = client or AtmosphereClient()
    at = AtUri.parse(uri)
    if at.collection != ENTRY:
        raise AtmosphereError(uri, f"not a {ENTRY} record", rule="NOT_AN_ENTRY")
    entry = client.get_record(at)
    schema_uri = str(entry.value["schemaRef"])
    schema_at = AtUri.parse(schema_uri)
    if schema_at.collection != SCHEMA:
        raise AtmosphereError(
            entry.uri,
            f"schemaRef {schema_uri} is not a schema record",
            rule="NOT_A_SCHEMA",
        )
    schema = client.get_record(schema_at)
    source = "given"
    cls = sample_type
    if cls is None:
        lock = lock or find_lock()
        cls = _locked_class(lock, schema) if lock is not None else None
        source = "lock"
    if cls is None:
        cls = _compile_in_process(schema)
        source = "dynamic"
    storage = entry.value["storage"]
    kind = storage.get("$type", "")
    urls: list[str] = []
    checksums: dict[str, str] = {}
    options: dict[str, Any] = {}
    owner = AtUri.parse(entry.uri).authority
    if kind == "science.alt.dataset.storageHttp":
        for shard in storage["shards"]:
            url = str(shard["url"])
            if not url.startswith(("https://", "http://")):
                raise AtmosphereError(
                    entry.uri, f"shard URL {url!r} is not http(s)", rule="SHARD_URL"
                )
            urls.append(url)
            if (digest := _checksum(shard)) is not None:
                checksums[url] = digest
    elif kind == "science.alt.dataset.storageS3":
        bucket = str(storage["bucket"])
        for shard in storage["shards"]:
            url = f"s3://{bucket}/{shard['key']}"
            urls.append(url)
            if (digest := _checksum(shard)) is not None:
                checksums[url] = digest
        if storage.get("endpoint"):
            options["client_kwargs"] = {"endpoint_url": storage["endpoint"]}
        if storage.get("region"):
            options.setdefault("client_kwargs", {})["region_name"] = storage["region"]
    elif kind == "science.alt.dataset.storageBlobs":
        for item in storage["blobs"]:
            cid = str(item["blob"]["ref"]["$link"])
            url = client.blob_url(owner, cid)
            urls.append(url)
            digest = _checksum(item) or _sha256_of_blob_cid(cid)
            if digest is not None:
                checksums[url] = digest
        options["block_size"] = 0
    else:
        raise AtmosphereError(
            entry.uri, f"storage {kind!r} is not supported", rule="STORAGE_UNSUPPORTED"
        )
    return ResolvedDataset(entry, schema, cls, urls, checksums, options, source)


def _compile_in_process(schema: FetchedRecord) -> type[PackableSample]:
    """Compile a fetched schema record into a class with the compiler, which is a
    separate distribution (``atdata-gen``): the runtime never needs it when the
    sample class is given or pinned in ``atdata-gen.lock``."""
    try:
        from atdata_gen.dynamic import compile_schema_record
    except ImportError as exc:
        raise AtmosphereError(
            schema.uri,
            "no sample class was given and atdata-gen.lock does not pin this "
            "schema record, so it must be compiled in-process, which needs the "
            "compiler: `pip install atdata-gen` (or pass sample_type=, or run "
            "`atdata-gen pull` and build)",
            rule="COMPILER_NOT_INSTALLED",
        ) from exc
    return compile_schema_record(schema.value, uri=schema.uri, cid=schema.cid)


def load_dataset(
    uri: str,
    *,
    client: AtmosphereClient | None = None,
    sample_type: type[PackableSample] | None = None,
    lock: Path | None = None,
    storage_options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """``Dataset[SampleClass]`` for a published entry (see :func:`resolve_dataset`);
    ``storage_options`` are merged over the entry's (e.g. S3 credentials);
    ``kwargs`` go to :class:`~atdata_runtime.shards.Dataset`."""
    r = resolve_dataset(uri, client=client, sample_type=sample_type, lock=lock)
    if r.unverified:
        log.warning(
            "%s: %d of %d shards have no sha256 checksum and are read unverified",
            r.entry.uri,
            len(r.unverified),
            len(r.urls),
        )
    options = {**r.storage_options, **(storage_options or {})}
    if (
        "client_kwargs" in r.storage_options
        and storage_options
        and "client_kwargs" in storage_options
    ):
        options["client_kwargs"] = {
            **r.storage_options["client_kwargs"],
            **storage_options["client_kwargs"],
        }
    bound: Any = Dataset[r.sample_type]  # type: ignore[name-defined]
    return bound(r.urls, storage_options=options, checksums=r.checksums, **kwargs)
