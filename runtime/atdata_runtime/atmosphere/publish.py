"""Publishing schema records, lens records and dataset entries, exactly once and
resumable.

Schema records go to ``science.alt.dataset.schema`` under the deterministic key of
:func:`~.records.schema_rkey`. A version is immutable: publishing the same name and
version again is a no-op when the content is the same (``createdAt`` aside, and
whichever form, envelope or flat, either copy has: see
:mod:`atdata_runtime.samples.schema`), and a :class:`~.errors.PublishConflictError`
advising a version bump when it differs. The same holds for a record of that name
and version under any other key (atdata 0.7 keys its schema records by TID), found
by listing the collection. :func:`publish_schemas` lists once and writes the new
records in ``com.atproto.repo.applyWrites`` batches (exactly once: see
:meth:`~.client.AtmosphereClient.create_records`).

Dataset entries go to ``science.alt.dataset.entry`` under a TID chosen by the client
and saved in a journal before the first attempt, with everything already done
(checksums, uploaded blobs, S3 objects). A re-run after a crash reads the journal,
skips the finished steps and writes the entry under the same key: never twice.
Shard blobs upload a few at a time (:data:`UPLOAD_WORKERS`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from ..samples.schema import SchemaForm, convert_schema_record
from ..shards.dataset import Sha256Reader
from ..shards.errors import missing_extra
from ..shards.tar import iter_samples
from .cid import record_cid
from .client import MAX_BATCH_WRITES, AtmosphereClient, FetchedRecord, WriteResult
from .errors import AtmosphereError, PublishConflictError
from .records import ENTRY, LENS, SCHEMA, is_semver, schema_rkey, validate_record

__all__ = [
    "BLOB_LIMIT",
    "UPLOAD_WORKERS",
    "BlobStorage",
    "HttpStorage",
    "S3Storage",
    "ShardInfo",
    "find_schema_versions",
    "new_tid",
    "publish_entry",
    "publish_lens",
    "publish_schema",
    "publish_schemas",
    "shard_info",
]

BLOB_LIMIT = 52_428_800
"""``maxSize`` of a shard blob in ``science.alt.dataset.storageBlobs`` (50 MiB)."""

UPLOAD_WORKERS = 3
"""Shard blobs uploaded at once by :func:`publish_entry` (each in memory while it
goes: at most 3 × 50 MiB)."""

_TID_CHARS = "234567abcdefghijklmnopqrstuvwxyz"


def new_tid(now_us: int | None = None, clock_id: int | None = None) -> str:
    """A TID (AT Protocol "Record Key" spec § TID): 64 bits — a zero bit, 53 bits of
    microseconds since the Unix epoch, 10 bits of clock id — in base32-sortable,
    13 characters."""
    us = time.time_ns() // 1000 if now_us is None else now_us
    clock = random.randrange(1024) if clock_id is None else clock_id
    n = (us & ((1 << 53) - 1)) << 10 | clock
    return "".join(_TID_CHARS[(n >> (60 - 5 * i)) & 31] for i in range(13))


def _semver_key(version: str) -> tuple[Any, ...]:
    """Precedence key (semver.org § 11): build metadata ignored; a pre-release is
    lower than its release; identifiers compare numerically or lexically."""
    core, _, _build = version.partition("+")
    main, dash, pre = core.partition("-")
    nums = tuple(int(x) for x in main.split("."))
    if not dash:
        return (nums, 1, ())
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (nums, 0, ids)


def _content(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "createdAt"}


def _schema_content(record: dict[str, Any]) -> dict[str, Any]:
    """What makes two schema records the same version: everything but
    ``createdAt``, in one form (the flat one), so that the envelope and the flat
    form of one schema are equal."""
    try:
        return _content(convert_schema_record(record, "flat"))
    except ValueError:
        return _content(record)


def find_schema_versions(
    client: AtmosphereClient, repo: str, name: str
) -> list[FetchedRecord]:
    """Every schema record named ``name`` in ``repo``, whatever its key (TIDs as
    atdata writes them, or ours), oldest version first."""
    return _versions_of(client.list_records(repo, SCHEMA, validate=False), name)


def _versions_of(records: Iterable[FetchedRecord], name: str) -> list[FetchedRecord]:
    """The schema records named ``name`` with a semver version, oldest first."""
    found = [
        r
        for r in records
        if r.value.get("name") == name and is_semver(str(r.value.get("version", "")))
    ]
    return sorted(found, key=lambda r: _semver_key(str(r.value["version"])))


@dataclass(frozen=True)
class SchemaPublication:
    """Outcome of :func:`publish_schema`: the write, and the previously published
    version it was checked against (``None`` for the first version)."""

    write: WriteResult
    previous: FetchedRecord | None


CheckHook = Callable[[FetchedRecord, dict[str, Any]], None]
"""Called with (previous published version, new record) before publishing; raises
to refuse (the compiler passes ``atdata-gen check``)."""


def publish_schema(
    client: AtmosphereClient,
    record: dict[str, Any],
    *,
    check: CheckHook | None = None,
    existing: list[FetchedRecord] | None = None,
    form: SchemaForm | None = None,
) -> SchemaPublication:
    """Publish one schema record (a JSON dict, validated here) to the logged-in
    account. ``existing`` is the account's schema records (listed once by
    :func:`publish_schemas`; listed here when ``None``). ``form``: write the record
    in that form (``"envelope"``, ``"flat"``; ``None``: as given). A version already
    published in the other form with the same content is not written again.
    Raises :class:`PublishConflictError` when this name and version exist with
    different content; whatever ``check`` raises; the client's errors."""
    if form is not None:
        record = convert_schema_record(record, form)
    if existing is None:
        existing = list(client.list_records(client.did, SCHEMA, validate=False))
    name = str(record.get("name", ""))
    plan = _plan_schema(client, record, _versions_of(existing, name), check)
    if isinstance(plan, SchemaPublication):
        return plan
    rkey, previous = plan
    return SchemaPublication(client.create_record(SCHEMA, rkey, record), previous)


def _plan_schema(
    client: AtmosphereClient,
    record: dict[str, Any],
    same_name: list[FetchedRecord],
    check: CheckHook | None,
) -> SchemaPublication | tuple[str, FetchedRecord | None]:
    """What publishing ``record`` takes, given the published versions of its name
    (``same_name``, oldest first): the :class:`SchemaPublication` of the same
    version already there (a no-op), or ``(rkey, previous version)`` to create,
    after ``check`` passed. Raises :class:`PublishConflictError`, ``ValueError``
    for a bad name or version, and whatever ``check`` raises."""
    name, version = str(record.get("name", "")), str(record.get("version", ""))
    rkey = schema_rkey(name, version)
    for r in same_name:
        if r.value.get("version") == version:
            if _schema_content(r.value) != _schema_content(record):
                raise PublishConflictError(
                    r.uri,
                    f"schema {name} {version} is already published with different "
                    "content; versions are immutable: bump the version "
                    "(atdata-gen check tells which bump)",
                )
            return SchemaPublication(
                WriteResult(uri=r.uri, cid=r.cid, created=False),
                _previous(same_name, version),
            )
    previous = _previous(same_name, version)
    if previous is not None and check is not None:
        check(previous, record)
    return rkey, previous


def _previous(records: list[FetchedRecord], version: str) -> FetchedRecord | None:
    key = _semver_key(version)
    older = [r for r in records if _semver_key(str(r.value["version"])) < key]
    return older[-1] if older else None


def publish_schemas(
    client: AtmosphereClient,
    records: Iterable[dict[str, Any]],
    *,
    check: CheckHook | None = None,
    progress: Callable[[int, SchemaPublication], None] | None = None,
    form: SchemaForm | None = None,
    batch_size: int = MAX_BATCH_WRITES,
) -> list[SchemaPublication]:
    """Publish many schema records (in ``form``, see :func:`publish_schema`); the
    collection is listed once, and the new records are written in
    ``com.atproto.repo.applyWrites`` batches of up to ``batch_size`` (at most
    :data:`~.client.MAX_BATCH_WRITES`, 200), exactly once
    (:meth:`AtmosphereClient.create_records`: deterministic keys, and a read-back of
    the batch before any retry whose outcome is unknown).

    Each record is checked in order as :func:`publish_schema` would (validated,
    versions compared, ``check`` called), seeing the records before it in the same
    call as published; when one fails, the records before it are written first and
    then its error is raised, as publishing them one by one would. A re-run after a
    crash (or a partial failure) creates only the missing ones. ``progress`` is
    called with each record's index, in order, once its batch is written.
    Raises what :func:`publish_schema` raises, and the client's errors."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    batch_size = min(batch_size, MAX_BATCH_WRITES)
    did = client.did
    by_name: dict[str, list[FetchedRecord]] = {}
    for r in client.list_records(did, SCHEMA, validate=False):
        by_name.setdefault(str(r.value.get("name")), []).append(r)
    for name, found in by_name.items():
        by_name[name] = _versions_of(found, name)
    out: list[SchemaPublication] = []
    # the records checked but not yet reported: a publication, or (rkey, record,
    # previous) still to write
    window: list[SchemaPublication | tuple[str, dict[str, Any], FetchedRecord | None]]
    window = []

    def flush() -> None:
        creates = [w for w in window if not isinstance(w, SchemaPublication)]
        written = iter(
            client.create_records(
                SCHEMA,
                [(rkey, record) for rkey, record, _ in creates],
                validate=False,
                batch_size=batch_size,
            )
            if creates
            else ()
        )
        for w in window:
            pub = (
                w
                if isinstance(w, SchemaPublication)
                else SchemaPublication(next(written), w[2])
            )
            out.append(pub)
            if progress is not None:
                progress(len(out) - 1, pub)
        window.clear()

    pending = 0
    todo = iter(records)
    while True:
        try:
            record = next(todo, None)
            if record is None:
                break
            if form is not None:
                record = convert_schema_record(record, form)
            same_name = by_name.setdefault(str(record.get("name", "")), [])
            plan = _plan_schema(client, record, same_name, check)
            if not isinstance(plan, SchemaPublication):
                uri = f"at://{did}/{SCHEMA}/{plan[0]}"
                validate_record(uri, SCHEMA, record)
        except Exception:
            flush()  # the records checked before the failing one are published
            raise
        if isinstance(plan, SchemaPublication):
            window.append(plan)
            continue
        rkey, previous = plan
        window.append((rkey, record, previous))
        same_name.append(FetchedRecord(uri, record_cid(record), record))
        same_name.sort(key=lambda r: _semver_key(str(r.value["version"])))
        pending += 1
        if pending >= batch_size:
            flush()
            pending = 0
    flush()
    return out


# -- lenses ---------------------------------------------------------------------------
def publish_lens(client: AtmosphereClient, record: dict[str, Any]) -> WriteResult:
    """Publish a ``science.alt.dataset.lens`` record (a JSON dict, validated here)
    to the logged-in account, exactly once: when the account already holds a lens
    record with the same content (``createdAt`` aside), that one is returned with
    ``created=False``; otherwise it is created under a TID chosen before the first
    attempt (a retried write whose response was lost is found by that key, see
    :meth:`AtmosphereClient.create_record`). Raises the client's errors and
    :class:`~.errors.RecordValidationError`."""
    for existing in client.list_records(client.did, LENS, validate=False):
        if _content(existing.value) == _content(record):
            return WriteResult(uri=existing.uri, cid=existing.cid, created=False)
    return client.create_record(LENS, new_tid(), record)


# -- dataset entries ------------------------------------------------------------------
@dataclass(frozen=True)
class ShardInfo:
    """One local shard: ``path``, ``size`` (bytes), ``sha256`` (hex) and ``samples``
    (number of distinct sample keys in the tar)."""

    path: str
    size: int
    sha256: str
    samples: int


def shard_info(path: str | os.PathLike[str]) -> ShardInfo:
    """Size, sha256 and sample count of a local tar shard, in one pass."""
    with open(path, "rb") as fh:
        reader = Sha256Reader(fh)
        samples = sum(1 for _ in iter_samples(cast(BinaryIO, reader)))
        digest = reader.drain()
    return ShardInfo(str(path), reader.size, digest, samples)


@dataclass(frozen=True)
class HttpStorage:
    """Shards served over HTTP(S): shard *i* is at ``urls[i]``."""

    urls: Sequence[str]


@dataclass(frozen=True)
class S3Storage:
    """Shards uploaded to an S3-compatible bucket under ``prefix`` (object key =
    prefix + file name). ``options`` go to s3fs (``key``, ``secret``,
    ``client_kwargs``…); credentials are never written to the record."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    options: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class BlobStorage:
    """Shards uploaded as PDS blobs (``application/x-tar``, at most 50 MiB each)."""


Storage = HttpStorage | S3Storage | BlobStorage


class _Journal:
    """A JSON file of finished steps, rewritten atomically after each one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.data = {}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".journal-")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


def _checksum(info: ShardInfo) -> dict[str, str]:
    return {"algorithm": "sha256", "digest": info.sha256}


def publish_entry(
    client: AtmosphereClient,
    shards: Sequence[str | os.PathLike[str]],
    *,
    schema_uri: str,
    name: str,
    storage: Storage,
    description: str | None = None,
    tags: Sequence[str] = (),
    license: str | None = None,
    journal_dir: str | os.PathLike[str] = ".atdata-gen/journal",
    progress: Callable[[str, int, int], None] | None = None,
    upload_workers: int = UPLOAD_WORKERS,
) -> WriteResult:
    """Publish a ``science.alt.dataset.entry`` for local tar ``shards``.

    Computes each shard's sha256, size and sample count; uploads the shards
    (PDS blobs, or S3 objects) or takes their HTTP URLs; writes the entry with its
    ``size`` (samples, bytes, shards) and per-shard checksums, pointing at
    ``schema_uri``. ``progress(step, done, total)`` reports ``"hash"``,
    ``"upload"`` and ``"entry"`` steps. Resumable: the journal (one file per
    account, schema and shard set in ``journal_dir``) records the chosen TID and
    every finished upload, so a re-run finishes the job without duplicates.
    PDS blobs are uploaded ``upload_workers`` at a time (default
    :data:`UPLOAD_WORKERS`; each holds one shard, at most 50 MiB, in memory).
    Raises ``ValueError`` for a blob over 50 MiB or a URL count that does not
    match, and the client's errors."""
    paths = [str(p) for p in shards]
    if not paths:
        raise ValueError("no shards to publish")
    ident = hashlib.sha256(
        json.dumps(
            [client.did, schema_uri, name, [os.path.abspath(p) for p in paths]]
        ).encode()
    ).hexdigest()[:20]
    journal = _Journal(Path(journal_dir) / f"entry-{ident}.json")
    infos: list[ShardInfo] = []
    cached = {s["path"]: s for s in journal.data.get("shards", [])}
    for i, p in enumerate(paths):
        st = os.stat(p)
        hit = cached.get(p)
        if hit and hit["size"] == st.st_size and hit.get("mtime") == st.st_mtime_ns:
            infos.append(ShardInfo(p, hit["size"], hit["sha256"], hit["samples"]))
        else:
            infos.append(shard_info(p))
        if progress:
            progress("hash", i + 1, len(paths))
    journal.data["shards"] = [
        {**vars(info), "mtime": os.stat(info.path).st_mtime_ns} for info in infos
    ]
    journal.data.setdefault("rkey", new_tid())
    journal.save()

    if isinstance(storage, BlobStorage):
        for info in infos:
            if info.size > BLOB_LIMIT:
                raise ValueError(
                    f"{info.path}: {info.size} bytes is over the 50 MiB blob limit of "
                    "science.alt.dataset.storageBlobs; write smaller shards"
                )
        uploaded = _upload_blobs(client, infos, journal, upload_workers, progress)
        store: dict[str, Any] = {
            "$type": "science.alt.dataset.storageBlobs",
            "blobs": [
                {"blob": uploaded[info.sha256], "checksum": _checksum(info)}
                for info in infos
            ],
        }
    elif isinstance(storage, S3Storage):
        store = _upload_s3(storage, infos, journal, progress)
    else:
        if len(storage.urls) != len(infos):
            raise ValueError(f"{len(infos)} shards but {len(storage.urls)} URLs")
        store = {
            "$type": "science.alt.dataset.storageHttp",
            "shards": [
                {"url": url, "checksum": _checksum(info)}
                for url, info in zip(storage.urls, infos, strict=True)
            ],
        }
    record: dict[str, Any] = {
        "$type": ENTRY,
        "name": name,
        "schemaRef": schema_uri,
        "storage": store,
        "size": {
            "samples": sum(i.samples for i in infos),
            "bytes": sum(i.size for i in infos),
            "shards": len(infos),
        },
        "createdAt": journal.data.setdefault(
            "createdAt", _dt.datetime.now(_dt.UTC).isoformat().replace("+00:00", "Z")
        ),
    }
    if description:
        record["description"] = description
    if tags:
        record["tags"] = list(tags)
    if license:
        record["license"] = license
    journal.save()
    rkey = journal.data["rkey"]
    done = client.try_get_record(f"at://{client.did}/{ENTRY}/{rkey}", validate=False)
    if done is not None:
        result = WriteResult(done.uri, done.cid, created=False)
        if _content(done.value) != _content(record):
            raise PublishConflictError(
                done.uri, "the journal's entry key holds another record"
            )
    else:
        result = client.create_record(ENTRY, rkey, record)
    journal.data["uri"] = result.uri
    journal.save()
    if progress:
        progress("entry", 1, 1)
    return result


def _upload_blobs(
    client: AtmosphereClient,
    infos: list[ShardInfo],
    journal: _Journal,
    workers: int,
    progress: Callable[[str, int, int], None] | None,
) -> dict[str, Any]:
    """Upload the shards the journal does not list yet as PDS blobs, ``workers`` at
    a time; each finished upload is journaled at once (from this thread). The first
    failure cancels the uploads not started and is raised once the running ones
    ended (theirs are journaled too). Returns the journal's sha256 → blob map."""
    uploaded: dict[str, Any] = journal.data.setdefault("blobs", {})
    todo: dict[str, ShardInfo] = {}
    for info in infos:
        if info.sha256 not in uploaded:
            todo.setdefault(info.sha256, info)
    done = len(infos) - sum(1 for info in infos if info.sha256 in todo)
    if progress and done:
        progress("upload", done, len(infos))
    if not todo:
        return uploaded
    copies = Counter(info.sha256 for info in infos)

    def upload(info: ShardInfo) -> dict[str, Any]:
        return client.upload_blob(Path(info.path).read_bytes(), "application/x-tar")

    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
        futures = {pool.submit(upload, info): info for info in todo.values()}
        for future in as_completed(futures):
            if future.cancelled():
                continue
            try:
                blob = future.result()
            except BaseException as exc:  # noqa: BLE001 - raised below
                if failure is None:
                    failure = exc
                    for other in futures:
                        other.cancel()
                continue
            sha = futures[future].sha256
            uploaded[sha] = blob
            journal.save()
            done += copies[sha]
            if progress:
                progress("upload", done, len(infos))
    if failure is not None:
        raise failure
    return uploaded


def _upload_s3(
    storage: S3Storage,
    infos: list[ShardInfo],
    journal: _Journal,
    progress: Callable[[str, int, int], None] | None,
) -> dict[str, Any]:
    try:
        import fsspec
        import s3fs  # noqa: F401  (fsspec's s3:// filesystem)
    except ImportError as exc:
        raise missing_extra(exc, "uploading shards to S3", "s3") from exc

    options = dict(storage.options)
    if storage.endpoint:
        options.setdefault("client_kwargs", {})["endpoint_url"] = storage.endpoint
    fs = fsspec.filesystem("s3", **options)
    done: dict[str, str] = journal.data.setdefault("s3", {})
    shards = []
    for i, info in enumerate(infos):
        key = storage.prefix + Path(info.path).name
        if done.get(key) != info.sha256:
            try:
                fs.put_file(info.path, f"{storage.bucket}/{key}")
            except Exception as exc:
                raise AtmosphereError(
                    f"s3://{storage.bucket}/{key}",
                    f"upload failed: {exc}",
                    rule="S3_UPLOAD_FAILED",
                ) from exc
            done[key] = info.sha256
            journal.save()
        shards.append({"key": key, "checksum": _checksum(info)})
        if progress:
            progress("upload", i + 1, len(infos))
    store: dict[str, Any] = {
        "$type": "science.alt.dataset.storageS3",
        "bucket": storage.bucket,
        "shards": shards,
    }
    if storage.region:
        store["region"] = storage.region
    if storage.endpoint:
        store["endpoint"] = storage.endpoint
    return store
