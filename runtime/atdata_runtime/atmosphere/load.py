"""Loading a published dataset: entry AT-URI → typed :class:`~atdata_runtime.shards.Dataset`.

1. The entry and its schema record are fetched from their owners' PDSs, verified
   and validated (:class:`~.client.AtmosphereClient`).
2. The sample class is, in order: the one passed in; the generated class pinned for
   that schema record (same AT-URI and CID in ``atdata-gen.lock``, class found in the
   package named by ``[tool.atdata-gen] package`` beside the lock; a lock that pins
   the AT-URI at another CID is :class:`LockMismatchError`); otherwise a class
   compiled in-process from the record (:func:`atdata_gen.dynamic.compile_schema_record`,
   same codec, no code generated or executed).
3. Shards stream from HTTP(S), S3 (``s3://bucket/key``, with the entry's endpoint)
   or PDS blobs (``com.atproto.sync.getBlob`` on the owner's PDS), and every shard's
   sha256 is verified before any of its samples is used: the entry's checksum, or
   for a blob without one the sha-256 inside the blob's CID.

An entry is untrusted input (see ``SECURITY.md``); :func:`entry_shards` turns its
storage into shard URLs under these rules, each refusal an :class:`EntryStorageError`
naming the entry's AT-URI, the JSON pointer and the rule:

- shard URLs are used as written: never brace-expanded (``{``/``}`` are refused,
  ``SHARD_URL_BRACES``: they are not URI characters, RFC 3986 § 2, and each shard
  must carry its own checksum), checksums are keyed by the final URLs, a URL listed
  twice is ``SHARD_DUPLICATE``;
- at most ``max_shards`` shards (default :data:`~atdata_runtime.shards.MAX_SHARDS`,
  100,000; ``ENTRY_TOO_MANY_SHARDS``, checked before any is read);
- HTTP shard URLs and S3 endpoints are URLs from the network
  (:func:`~atdata_runtime.net.fetch.check_url`: ``https`` only, no ``user:pass@``,
  no localhost, loopback, private, link-local or reserved addresses, also checked
  at connect time; the test-only loopback mode
  ``ATDATA_RUNTIME_INSECURE_LOOPBACK=1`` allows loopback) unless their origin is in
  the user's ``trusted_endpoints`` (``SHARD_URL``, ``S3_ENDPOINT``); an S3
  endpoint's host is resolved and refused when any of its addresses is, and
  every lookup s3fs makes while reading is checked again (a DNS-rebinding name
  is refused at connect time: :mod:`~atdata_runtime.atmosphere.s3resolver`);
- an S3 endpoint the entry names is read **anonymously** (s3fs ``anon=True``:
  unsigned requests, no credential lookup at all), and storage options carrying
  credentials are refused for it (``CREDENTIALS_SCOPE``), unless the user trusts it:
  ``trusted_endpoints=["https://s3.example.org"]``, or their own
  ``storage_options={"client_kwargs": {"endpoint_url": …}}``, which replaces the
  entry's endpoint. An entry without an endpoint is read from AWS S3 itself with
  the user's usual credentials (the bucket name is checked: ``S3_BUCKET``);
- a checksum's algorithm is compared case-insensitively without ``-``/``_``
  (``SHA-256`` as the lexicon's description spells it, ``sha256`` as atdata
  writes it); ``none`` or empty (atdata 0.7 writes ``none``) means no
  checksum (the shard is read unverified, listed in
  :attr:`ResolvedDataset.unverified`); any other algorithm, md5 and sha1
  included, is refused (``CHECKSUM_ALGORITHM``): a shard is never read
  unverified while its entry claims a checksum;
- an S3 endpoint must be exactly an origin, no path (``S3_ENDPOINT``);
- an S3 (or other fsspec) shard that cannot be opened or read is a
  :class:`~atdata_runtime.shards.errors.ShardReadError` (``SHARD_READ``) naming
  the redacted URL and the entry's AT-URI, with the original error as
  ``__cause__``;
- sha256 digests must be 64 hex digits (``SHARD_CHECKSUM_INVALID``); a blob's CID
  must be a base32 CIDv1 (``BLOB_CID``);
- HTTP headers the user gives go only to the origins they are keyed by
  (``storage_options={"headers": {"https://host": {"X-Api-Key": …}}}``); plain
  headers would reach hosts only the record named and are refused
  (``HEADERS_SCOPE``).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..net.errors import UnsafeUrlError
from ..net.fetch import check_url
from ..net.hosts import refuse_address
from ..net.redact import redact_url
from ..samples.codec import PackableSample, generated_sample_classes
from ..shards.dataset import (
    MAX_SHARDS,
    Dataset,
    bare_origin,
    origin_of,
    trusted_origins,
)
from ..shards.errors import ShardListError
from .cid import DataModelError, cid_to_bytes
from .client import AtmosphereClient, FetchedRecord
from .errors import AtmosphereError
from .records import ENTRY, SCHEMA, AtUri

log = logging.getLogger("atdata_runtime.atmosphere")

__all__ = [
    "CredentialScopeError",
    "EntryShards",
    "EntryStorageError",
    "LockMismatchError",
    "ResolvedDataset",
    "entry_shards",
    "find_lock",
    "load_dataset",
    "resolve_dataset",
]


class EntryStorageError(AtmosphereError):
    """An entry's storage cannot be read safely or at all: ``uri`` is the entry's
    AT-URI, ``reason`` starts with the JSON pointer into the record, ``rule`` says
    which check (see the module docstring)."""

    rule = "ENTRY_STORAGE"


class CredentialScopeError(AtmosphereError):
    """The user's credentials would go to an endpoint that only a record named:
    ``storage_options`` carry S3 credentials (``key``, ``secret``, ``token``,
    ``profile``…) while the entry names an S3 endpoint outside
    ``trusted_endpoints``."""

    rule = "CREDENTIALS_SCOPE"


class LockMismatchError(AtmosphereError):
    """``atdata-gen.lock`` pins a schema record's AT-URI at one CID and its owner's
    repository now holds another: ``uri`` (the AT-URI), ``pinned`` and ``fetched``
    (the two CIDs), ``lock`` (the lock file). Nothing is read: the lock says which
    record the code was generated from. Re-pin with ``atdata-gen pull --update``
    (and rebuild), or pass ``sample_type=`` / another ``lock=``."""

    rule = "LOCK_PIN_MISMATCH"

    def __init__(self, uri: str, pinned: str, fetched: str, lock: Path) -> None:
        self.pinned, self.fetched, self.lock = pinned, fetched, lock
        super().__init__(
            uri,
            f"{lock} pins CID {pinned}, the repository now has {fetched}; if the "
            "new record is the one you want, re-pin it with `atdata-gen pull "
            "--update` and rebuild",
        )


@dataclass
class ResolvedDataset:
    """Everything needed to read a published dataset: the verified ``entry`` and
    ``schema`` records, the ``sample_type``, shard ``urls`` (as the entry lists
    them) with their expected sha256 ``checksums``, ``storage_options`` for fsspec
    (``anon=True`` for an untrusted S3 endpoint), ``class_source`` (``"given"``,
    ``"lock"`` or ``"dynamic"``), the entry's S3 ``endpoint``, whether the user
    trusts it (``endpoint_trusted``) and the origins the user trusts
    (``trusted_endpoints``). A validly signed *older* commit of the repository is
    accepted as well as the newest: there is no rollback protection (that needs
    the repository's current ``rev`` from a relay or firehose)."""

    entry: FetchedRecord
    schema: FetchedRecord
    sample_type: type[PackableSample]
    urls: list[str]
    checksums: dict[str, str]
    storage_options: dict[str, Any] = field(default_factory=dict)
    class_source: str = "dynamic"
    endpoint: str | None = None
    endpoint_trusted: bool = False
    trusted_endpoints: frozenset[str] = frozenset()

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
    """The generated class the lock pins for ``schema``; ``None`` when the lock
    does not pin it (or cannot be read, or the package is not importable).
    Raises :class:`LockMismatchError` when it pins the AT-URI at another CID."""
    try:
        data = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    schemas = data.get("schemas", []) if isinstance(data, dict) else []
    pinned = [
        e
        for e in (schemas if isinstance(schemas, list) else [])
        if isinstance(e, dict) and e.get("uri") == schema.uri
    ]
    if not pinned:
        return None
    if pinned[0].get("cid") != schema.cid:
        raise LockMismatchError(schema.uri, str(pinned[0].get("cid")), schema.cid, lock)
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


_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_WEAK = frozenset({"md5", "sha1", "md4"})
"""Algorithms named as weak in ``CHECKSUM_ALGORITHM`` messages."""


def _algorithm_name(algorithm: str) -> str:
    """A checksum algorithm's name compared normalized: lowercased, without
    ``-``, ``_`` and surrounding spaces (the lexicon's description says
    ``SHA-256``, atdata writes ``sha256``)."""
    return re.sub(r"[-_]", "", algorithm.strip().lower())


_BASE32_CID = re.compile(r"b[a-z2-7]{7,200}")
_BUCKET = re.compile(r"[A-Za-z0-9._-]{1,255}")
"""Bucket names botocore accepts (its ``VALID_BUCKET``; AWS's own rules are
stricter: 3–63 lowercase characters)."""
_REGION = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,48}[A-Za-z0-9])?")
"""Region names as botocore validates them (``validate_region_name``)."""


@dataclass(frozen=True)
class EntryShards:
    """What an entry's storage resolves to (see :func:`entry_shards`)."""

    urls: list[str]
    checksums: dict[str, str]
    storage_options: dict[str, Any]
    endpoint: str | None = None
    endpoint_trusted: bool = False


def _sha256_of_blob_cid(cid: str) -> str | None:
    raw = cid_to_bytes(cid)
    if raw[1:4] == b"\x55\x12\x20" and len(raw) == 36:
        return raw[4:].hex()
    return None


def _shown(url: str, limit: int = 200) -> str:
    """A URL for a message: redacted, at most ``limit`` characters."""
    if "://" in url:
        text = redact_url(url)
    else:  # redacted as if it had a scheme: userinfo and query secrets too
        text = redact_url(f"https://{url}").removeprefix("https://")
    return text if len(text) <= limit else text[: limit - 1] + "…"


_KIND_NAMES: dict[type, str] = {str: "a string", dict: "an object", list: "an array"}


class _Storage:
    """Reading one entry's storage with errors located by JSON pointer."""

    def __init__(self, entry: FetchedRecord) -> None:
        self.uri = entry.uri

    def fail(self, pointer: str, reason: str, rule: str) -> EntryStorageError:
        return EntryStorageError(self.uri, f"{pointer}: {reason}", rule=rule)

    def get(self, obj: Mapping[str, Any], key: str, kind: type, pointer: str) -> Any:
        value = obj.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise self.fail(
                f"{pointer}/{key}",
                f"must be {_KIND_NAMES.get(kind, kind.__name__)}",
                "ENTRY_INVALID",
            )
        return value

    def items(
        self, storage: Mapping[str, Any], key: str, max_shards: int
    ) -> list[Mapping[str, Any]]:
        items = storage.get(key)
        pointer = f"/storage/{key}"
        if not isinstance(items, list):
            raise self.fail(pointer, "must be an array", "ENTRY_INVALID")
        if not items:
            raise self.fail(pointer, "lists no shards", "ENTRY_NO_SHARDS")
        if len(items) > max_shards:
            raise self.fail(
                pointer,
                f"lists {len(items):,} shards, more than max_shards={max_shards:,} "
                "(pass max_shards= to allow more)",
                "ENTRY_TOO_MANY_SHARDS",
            )
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise self.fail(f"{pointer}/{i}", "must be an object", "ENTRY_INVALID")
        return items

    def checksum(self, item: Mapping[str, Any], pointer: str) -> str | None:
        """The sha256 hex digest an item declares, ``None`` when it declares no
        checksum (no ``checksum``, or algorithm ``none`` or empty).
        The algorithm name is compared normalized (:func:`_algorithm_name`:
        ``SHA-256``, ``sha_256`` and ``sha256`` are one). Any other algorithm is
        refused (``CHECKSUM_ALGORITHM``): the shard would be read unverified
        while the entry claims a checksum."""
        checksum = item.get("checksum")
        if checksum is None:
            return None
        pointer = f"{pointer}/checksum"
        if not isinstance(checksum, Mapping):
            raise self.fail(pointer, "must be an object", "ENTRY_INVALID")
        algorithm = checksum.get("algorithm", "")
        if not isinstance(algorithm, str):
            raise self.fail(f"{pointer}/algorithm", "must be a string", "ENTRY_INVALID")
        name = _algorithm_name(algorithm)
        digest = checksum.get("digest")
        if name in ("", "none"):  # no checksum: its digest, if any, means nothing
            return None
        if name != "sha256":
            weak = " (a weak hash: collisions can be made)" if name in _WEAK else ""
            raise self.fail(
                f"{pointer}/algorithm",
                f"checksum algorithm {algorithm[:40]!r}{weak} is not one this "
                "runtime verifies (sha256; 'none' for no checksum): the shard is "
                "not read unverified while its entry claims a checksum",
                "CHECKSUM_ALGORITHM",
            )
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
            raise self.fail(
                f"{pointer}/digest",
                "a sha256 digest must be 64 hex digits "
                f"(got {len(digest) if isinstance(digest, str) else type(digest).__name__}"
                f"{' characters' if isinstance(digest, str) else ''})",
                "SHARD_CHECKSUM_INVALID",
            )
        return digest.lower()

    def url(
        self, url: str, pointer: str, what: str, rule: str, trusted: frozenset[str]
    ) -> bool:
        """Check a URL from the record; whether its origin is trusted."""
        if "{" in url or "}" in url:
            raise self.fail(
                pointer,
                f"{what} URL {_shown(url)} holds '{{' or '}}': brace notation is "
                "not expanded in records (list each shard with its own checksum)",
                "SHARD_URL_BRACES",
            )
        is_trusted = origin_of(url) in trusted
        try:
            check_url(url, what=what, trusted=is_trusted)
        except UnsafeUrlError as exc:
            raise self.fail(pointer, f"{_shown(url)}: {exc.reason}", rule) from None
        return is_trusted


def _check_endpoint_addresses(check: _Storage, endpoint: str) -> None:
    """Resolve the host of an S3 endpoint a record named and refuse it
    (``S3_ENDPOINT``) when any address is refused
    (:func:`~atdata_runtime.net.hosts.refuse_address`) or it does not resolve:
    s3fs connects without the fetcher's check of the connected peer. (A name
    can still rebind after this check: :func:`_pinned_config` checks every
    lookup made while reading.) The system resolver's own timeouts bound the
    lookup."""
    try:
        parts = urlsplit(endpoint)
        host, port = parts.hostname or "", parts.port or 443
    except ValueError:
        return  # check_url refused it already
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise check.fail(
            "/storage/endpoint",
            f"{_shown(endpoint)}: host {host!r} does not resolve "
            f"({type(exc).__name__})",
            "S3_ENDPOINT",
        ) from None
    for *_, sockaddr in infos:
        address = str(sockaddr[0])
        why = refuse_address(address)
        if why is not None:
            raise check.fail(
                "/storage/endpoint",
                f"{_shown(endpoint)}: host {host!r} resolves to {why} ({address})",
                "S3_ENDPOINT",
            )


def _pinned_config() -> dict[str, Any]:
    """s3fs ``config_kwargs`` whose aiohttp connector checks every address it
    resolves (:class:`~atdata_runtime.atmosphere.s3resolver.CheckedResolver`), or
    nothing without the ``s3`` extra (nothing could read the shard then)."""
    try:
        from .s3resolver import CheckedResolver
    except ImportError:
        return {}
    return {"connector_args": {"resolver": CheckedResolver()}}


def entry_shards(
    entry: FetchedRecord,
    *,
    blob_url: Callable[[str, str], str],
    trusted_endpoints: Iterable[str] = (),
    max_shards: int = MAX_SHARDS,
) -> EntryShards:
    """The shard URLs, checksums and fsspec options of an entry's storage, under
    the rules of the module docstring. ``blob_url(did, cid)`` builds the
    ``getBlob`` URL of a blob (:meth:`AtmosphereClient.blob_url`);
    ``trusted_endpoints`` are the origins the user trusts (S3 endpoints that get
    their credentials, HTTP origins read as their own); ``max_shards`` bounds the
    list. Nothing is fetched here. Raises :class:`EntryStorageError`, and
    :class:`~atdata_runtime.shards.errors.ShardListError` (``TRUSTED_ENDPOINT``)
    for a trusted endpoint that is not ``scheme://host[:port]``."""
    trusted = trusted_origins(trusted_endpoints)
    check = _Storage(entry)
    storage = entry.value.get("storage")
    if not isinstance(storage, Mapping):
        raise check.fail("/storage", "must be an object", "ENTRY_INVALID")
    kind = storage.get("$type", "")
    urls: list[str] = []
    checksums: dict[str, str] = {}
    options: dict[str, Any] = {}
    endpoint: str | None = None
    endpoint_trusted = False

    def add(url: str, digest: str | None, pointer: str) -> None:
        if url in checksums or url in seen:
            raise check.fail(
                pointer, f"{_shown(url)} is listed twice", "SHARD_DUPLICATE"
            )
        seen.add(url)
        urls.append(url)
        if digest is not None:
            checksums[url] = digest

    seen: set[str] = set()
    if kind == "science.alt.dataset.storageHttp":
        for i, shard in enumerate(check.items(storage, "shards", max_shards)):
            pointer = f"/storage/shards/{i}"
            url = check.get(shard, "url", str, pointer)
            check.url(url, f"{pointer}/url", "shard", "SHARD_URL", trusted)
            add(url, check.checksum(shard, pointer), f"{pointer}/url")
    elif kind == "science.alt.dataset.storageS3":
        bucket = check.get(storage, "bucket", str, "/storage")
        if not _BUCKET.fullmatch(bucket):
            raise check.fail(
                "/storage/bucket",
                f"{bucket[:80]!r} is not an S3 bucket name",
                "S3_BUCKET",
            )
        client_kwargs: dict[str, Any] = {}
        if storage.get("endpoint") is not None:
            endpoint = check.get(storage, "endpoint", str, "/storage")
            endpoint_trusted = check.url(
                endpoint, "/storage/endpoint", "S3 endpoint", "S3_ENDPOINT", trusted
            )
            if bare_origin(endpoint) is None:
                raise check.fail(
                    "/storage/endpoint",
                    f"{_shown(endpoint)}: an S3 endpoint must be an origin, "
                    "https://host[:port] (no path, query, fragment or user:pass@: "
                    "a path would prefix every request)",
                    "S3_ENDPOINT",
                )
            client_kwargs["endpoint_url"] = endpoint
            if not endpoint_trusted:
                _check_endpoint_addresses(check, endpoint)
                options["anon"] = True
                options["config_kwargs"] = _pinned_config()
        if storage.get("region") is not None:
            region = check.get(storage, "region", str, "/storage")
            if not _REGION.fullmatch(region):
                raise check.fail(
                    "/storage/region",
                    f"{region[:60]!r} is not a region name",
                    "S3_REGION",
                )
            client_kwargs["region_name"] = region
        if client_kwargs:
            options["client_kwargs"] = client_kwargs
        for i, shard in enumerate(check.items(storage, "shards", max_shards)):
            pointer = f"/storage/shards/{i}"
            key = check.get(shard, "key", str, pointer)
            if not key or any(ord(c) < 0x20 or c == "\x7f" for c in key):
                raise check.fail(
                    f"{pointer}/key",
                    "an S3 key must be non-empty, without control characters",
                    "S3_KEY",
                )
            add(f"s3://{bucket}/{key}", check.checksum(shard, pointer), pointer)
    elif kind == "science.alt.dataset.storageBlobs":
        owner = AtUri.parse(entry.uri).authority
        for i, item in enumerate(check.items(storage, "blobs", max_shards)):
            pointer = f"/storage/blobs/{i}"
            blob = check.get(item, "blob", dict, pointer)
            ref = check.get(blob, "ref", dict, f"{pointer}/blob")
            cid = check.get(ref, "$link", str, f"{pointer}/blob/ref")
            try:
                if not _BASE32_CID.fullmatch(cid):
                    raise DataModelError("not base32")
                from_cid = _sha256_of_blob_cid(cid)
            except (DataModelError, IndexError):
                raise check.fail(
                    f"{pointer}/blob/ref/$link",
                    f"{cid[:80]!r} is not a base32 CIDv1",
                    "BLOB_CID",
                ) from None
            digest = check.checksum(item, pointer) or from_cid
            add(blob_url(owner, cid), digest, pointer)
        options["block_size"] = 0
    else:
        raise check.fail(
            "/storage/$type",
            f"storage {str(kind)[:80]!r} is not supported",
            "STORAGE_UNSUPPORTED",
        )
    return EntryShards(urls, checksums, options, endpoint, endpoint_trusted)


def resolve_dataset(
    uri: str,
    *,
    client: AtmosphereClient | None = None,
    sample_type: type[PackableSample] | None = None,
    lock: Path | None = None,
    trusted_endpoints: Iterable[str] = (),
    max_shards: int = MAX_SHARDS,
    check: Callable[[FetchedRecord, FetchedRecord], None] | None = None,
) -> ResolvedDataset:
    """Fetch and verify entry and schema, pick the sample class and list the
    shards (see the module docstring; ``trusted_endpoints`` and ``max_shards`` as
    :func:`entry_shards`). ``check(entry, schema)``, when given, sees both
    verified records before any class is picked or compiled and may refuse them
    by raising (a name's resolution checks that they are what the name asks for:
    :meth:`atdata_runtime.appview.names.Resolved.check_entry`). Raises the client's errors (naming the AT-URI),
    :class:`LockMismatchError` (``LOCK_PIN_MISMATCH``) when the lock pins the
    schema at another CID, :class:`EntryStorageError` for a storage that is
    refused or unusable, :class:`~.errors.AtmosphereError` for a record of the
    wrong kind, and ``atdata_gen.dynamic.SchemaCompileError`` for a schema that
    does not compile."""
    client = client or AtmosphereClient()
    trusted = trusted_origins(trusted_endpoints)
    at = AtUri.parse(uri)
    if at.collection != ENTRY:
        raise AtmosphereError(uri, f"not a {ENTRY} record", rule="NOT_AN_ENTRY")
    entry = client.get_record(at)
    schema_uri = entry.value.get("schemaRef")
    try:
        schema_at = AtUri.parse(str(schema_uri))
    except ValueError:
        schema_at = None
    if schema_at is None or schema_at.collection != SCHEMA:
        raise AtmosphereError(
            entry.uri,
            f"schemaRef {str(schema_uri)[:200]} is not a schema record",
            rule="NOT_A_SCHEMA",
        )
    # Storage first: a refused entry costs no schema fetch and no compilation.
    shards = entry_shards(
        entry,
        blob_url=client.blob_url,
        trusted_endpoints=trusted,
        max_shards=max_shards,
    )
    schema = client.get_record(schema_at)
    if check is not None:
        check(entry, schema)
    source = "given"
    cls = sample_type
    if cls is None:
        lock = lock or find_lock()
        cls = _locked_class(lock, schema) if lock is not None else None
        source = "lock"
    if cls is None:
        cls = _compile_in_process(schema)
        source = "dynamic"
    return ResolvedDataset(
        entry,
        schema,
        cls,
        shards.urls,
        shards.checksums,
        shards.storage_options,
        source,
        shards.endpoint,
        shards.endpoint_trusted,
        trusted,
    )


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


_CREDENTIAL_OPTIONS = frozenset(
    {"key", "secret", "token", "profile", "session", "username", "password"}
)
"""s3fs options that carry or select credentials."""
_CREDENTIAL_CLIENT_KWARGS = frozenset(
    {"aws_access_key_id", "aws_secret_access_key", "aws_session_token"}
)
"""botocore client arguments that carry credentials."""
_SECRET_OPTIONS = frozenset({"s3_additional_kwargs"})
"""s3fs options sent along with requests, which may hold secrets (an SSE-C key)."""


def _storage_options(
    r: ResolvedDataset, user: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The entry's fsspec options with the user's merged over them; the user's
    credentials never go to an S3 endpoint that only the entry named."""
    user = dict(user or {})
    options = {**r.storage_options}
    user_kwargs = dict(user.get("client_kwargs") or {})
    if "endpoint_url" in user_kwargs:
        # The user names the endpoint: they trust it, the entry's is not used.
        options.pop("anon", None)
        options.pop("config_kwargs", None)
    elif r.endpoint is not None and not r.endpoint_trusted:
        offending = sorted(
            {k for k in user if k in _CREDENTIAL_OPTIONS | _SECRET_OPTIONS}
            | {
                f"client_kwargs.{k}"
                for k in user_kwargs
                if k in _CREDENTIAL_CLIENT_KWARGS
            }
            | ({"anon=False"} if user.get("anon") is False else set())
        )
        if offending:
            origin = origin_of(r.endpoint) or _shown(r.endpoint)
            raise CredentialScopeError(
                r.entry.uri,
                f"storage_options carry credentials ({', '.join(offending)}) but "
                f"the entry names the S3 endpoint {_shown(r.endpoint)}, which "
                "only the record chose; it is read anonymously. If you trust it "
                f"with your credentials, pass trusted_endpoints=[{origin!r}]",
            )
    merged = {**options, **user}
    if "client_kwargs" in options and user_kwargs:
        merged["client_kwargs"] = {**options["client_kwargs"], **user_kwargs}
    pinned = options.get("config_kwargs")
    if pinned and "anon" in options:  # the record's endpoint: keep its resolver
        config = {**dict(user.get("config_kwargs") or {}), **pinned}
        config["connector_args"] = {
            **dict(dict(user.get("config_kwargs") or {}).get("connector_args") or {}),
            **pinned["connector_args"],
        }
        merged["config_kwargs"] = config
    return merged


def load_dataset(
    uri: str,
    *,
    client: AtmosphereClient | None = None,
    sample_type: type[PackableSample] | None = None,
    lock: Path | None = None,
    storage_options: dict[str, Any] | None = None,
    trusted_endpoints: Iterable[str] = (),
    max_shards: int = MAX_SHARDS,
    check: Callable[[FetchedRecord, FetchedRecord], None] | None = None,
    **kwargs: Any,
) -> Any:
    """``Dataset[SampleClass]`` for a published entry (see :func:`resolve_dataset`).

    ``storage_options`` are merged over the entry's. S3 credentials in them (or the
    user's environment and profiles) go only to AWS S3 itself, to an endpoint the
    user names (``{"client_kwargs": {"endpoint_url": …}}``, which replaces the
    entry's) or to one in ``trusted_endpoints``; an endpoint only the entry names
    is read anonymously, and credentials given for it raise
    :class:`CredentialScopeError` (``CREDENTIALS_SCOPE``). HTTP ``headers`` must be
    keyed by the origin they are for (``{"headers": {"https://host": {…}}}``);
    plain headers raise :class:`~atdata_runtime.shards.errors.ShardListError`
    (``HEADERS_SCOPE``). ``trusted_endpoints``: origins (exactly
    ``http(s)://host[:port]``, else ``TRUSTED_ENDPOINT``) trusted as the user's own (S3 endpoints that get their credentials; HTTP shard
    origins read without the network checks, ``http`` allowed); ``max_shards``
    (default 100,000) bounds the entry's shard list; ``check`` as
    :func:`resolve_dataset`. ``kwargs`` go to
    :class:`~atdata_runtime.shards.Dataset` (``max_member_bytes``, ``progress``,
    ``verify``, ``max_shard_bytes``…), which reads the URLs as
    ``urls_from="record"``: each shard with a sha256 is verified before any of its
    samples is yielded (``verify="before"``: held in memory up to 32 MiB, else
    spooled to a temporary file, at most ``max_shard_bytes``, default 4 GiB; the
    next shard is downloaded and hashed while the current one is used). Records are verified against a
    validly signed commit of their repository, which may be an *older* one than
    the newest (no rollback protection: that needs a current ``rev`` from a
    relay). An S3 shard that cannot be opened or read raises
    :class:`~atdata_runtime.shards.errors.ShardReadError` (``SHARD_READ``) naming
    the shard URL and the entry's AT-URI."""
    r = resolve_dataset(
        uri,
        client=client,
        sample_type=sample_type,
        lock=lock,
        trusted_endpoints=trusted_endpoints,
        max_shards=max_shards,
        check=check,
    )
    if r.unverified:
        log.warning(
            "%s: %d of %d shards have no sha256 checksum and are read unverified",
            r.entry.uri,
            len(r.unverified),
            len(r.urls),
        )
    options = _storage_options(r, storage_options)
    bound: Any = Dataset[r.sample_type]  # type: ignore[name-defined]
    try:
        return bound(
            r.urls,
            storage_options=options,
            checksums=r.checksums,
            urls_from="record",
            max_shards=max_shards,
            trusted_endpoints=r.trusted_endpoints,
            entry=r.entry.uri,
            **kwargs,
        )
    except ShardListError as exc:
        raise ShardListError(
            f"{r.entry.uri}: {exc.where}", exc.reason, rule=exc.rule
        ) from None
