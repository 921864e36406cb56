"""Typed datasets over WebDataset shards: ``Dataset[ImageSample](urls)``.

Shards are tar files whose members are ``<key>.msgpack`` (one sample each), as atdata
writes them. URLs the user writes use brace notation (``data-{000000..000009}.tar``,
bash's syntax as the ``braceexpand`` package implements it, at most ``max_shards``
URLs, default :data:`MAX_SHARDS`); URLs that a record named (``urls_from="record"``,
as :func:`~atdata_runtime.atmosphere.load.load_dataset` passes them) are used as
they are. They may be local paths (core), ``http(s)://`` (the ``http`` extra) or
``s3://`` URLs (the ``s3`` extra), or anything else fsspec opens (``storage_options``
go to fsspec, e.g. ``{"client_kwargs": {"endpoint_url": …}}`` for an S3-compatible
server). HTTP headers in ``storage_options["headers"]`` are scoped to hosts: plain
headers go only to the origins of URLs the user passed, headers keyed by an origin
(``{"https://data.example.org": {"X-Api-Key": …}}``) only to that origin
(RFC 6454 origins: scheme, host, port). Shards are written by
:class:`ShardWriter` (stdlib ``tarfile``, each shard renamed into place when
complete) and read with :mod:`atdata_runtime.shards.tar` (a lean streaming reader,
checked against ``tarfile`` and webdataset); decoding is
:mod:`atdata_runtime.samples`.

Splitting: each (node, worker) pair reads a disjoint share, so that a
``torch.utils.data.DataLoader`` with workers under distributed training sees every
sample exactly once per epoch. Shards are dealt round-robin when there are at least
as many shards as consumers; otherwise every consumer reads every shard and keeps
every n-th sample. Rank and world size come from ``torch.distributed`` when it is
initialised, else from ``RANK``/``WORLD_SIZE``; the worker from
``torch.utils.data.get_worker_info()``; all can be given explicitly. torch is
optional.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import re
import sys
import tarfile
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    BinaryIO,
    ClassVar,
    Generic,
    Literal,
    Self,
    TypeVar,
    overload,
)
from urllib.parse import urlsplit

import braceexpand
from tqdm import tqdm  # type: ignore[import-untyped]

from ..net.hosts import origin
from ..net.redact import redact_url
from ..samples.codec import (
    PackableSample,
    Ragged,
    SampleBatch,
    SampleFormatError,
    Unknown,
)
from .errors import ShardChecksumError, ShardListError, ShardReadError, missing_extra
from .tar import MAX_MEMBER_BYTES, iter_samples

if TYPE_CHECKING:
    from ..lenses.core import Lens, LensGraph

__all__ = [
    "MAX_SHARDS",
    "MAX_SHARD_BYTES",
    "SHUFFLE_BUFFER_BYTES",
    "Dataset",
    "ShardWriter",
    "Split",
    "collate",
    "expand_urls",
    "origin_of",
    "trusted_origins",
    "write_samples",
]

MAX_SHARDS = 100_000
"""Default for ``max_shards``: the most shard URLs one :class:`Dataset` takes, after
brace expansion (:func:`expand_urls`). A pattern that would expand to more is refused
before anything is expanded (``SHARD_LIST_TOO_LONG``); pass ``max_shards=`` to
change it."""

MAX_SHARD_BYTES = 4 << 30
"""Default for ``max_shard_bytes``: the largest shard (4 GiB) read whole (in memory
up to :data:`SPOOL_MEMORY_BYTES`, else to a temporary file) to verify its sha256 before any of its samples is used (``verify="before"``).
A larger one raises :class:`~atdata_runtime.shards.errors.ShardChecksumError`
(``SHARD_TOO_LARGE``) once that many bytes were read."""

SHUFFLE_BUFFER_BYTES = 1 << 30
"""Default for ``buffer_bytes`` of :meth:`Dataset.shuffled`: the most payload bytes
(1 GiB) the shuffle buffer holds, besides its ``buffer`` samples (each sample's
arrays are views that keep its whole payload alive)."""

UrlsFrom = Literal["user", "record"]
Verify = Literal["before", "stream"]
"""When a shard's sha256 is checked: ``"before"`` any sample of it is yielded (the
shard is read whole first, in memory up to :data:`SPOOL_MEMORY_BYTES` else to a
temporary file, at most ``max_shard_bytes``), or
``"stream"``: while its samples are yielded, the mismatch raised after the last
one (a consumer that stops early never learns of it)."""

T_co = TypeVar("T_co", bound=PackableSample, covariant=True)
U = TypeVar("U", bound=PackableSample)
S = TypeVar("S", bound=PackableSample)
B = TypeVar("B", bound=SampleBatch[Any])


def _quiet(progress: bool | None) -> bool:
    """Progress bars: on when asked, off when told; by default only on a terminal."""
    if progress is None:
        return not sys.stderr.isatty()
    return not progress


_INT_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.-?(\d+))?$")
_CHAR_RANGE = re.compile(r"^([A-Za-z])\.\.([A-Za-z])(?:\.\.-?(\d+))?$")
_ALPHABET = braceexpand.alphabet


def _count_expression(expr: str, cap: int) -> int | None:
    """How many strings ``{expr}`` stands for (at most ``cap + 1``), or ``None``
    when it is neither a range nor a sequence (braceexpand then keeps the braces)."""
    if (m := _INT_RANGE.match(expr)) is not None:
        start, end = int(m.group(1)), int(m.group(2))
        step = (int(m.group(3)) or 1) if m.group(3) else 1
        return min(abs(end - start) // step + 1, cap + 1)
    if (m := _CHAR_RANGE.match(expr)) is not None:
        step = (int(m.group(3)) or 1) if m.group(3) else 1
        a, b = _ALPHABET.index(m.group(1)), _ALPHABET.index(m.group(2))
        if a < b:
            return len(_ALPHABET[a : b + 1 : step])
        b = b or -len(_ALPHABET)
        return len(_ALPHABET[a : b - 1 : -step])
    # a sequence: top-level commas
    parts: list[str] = []
    start = pos = depth = 0
    while pos < len(expr):
        c = expr[pos]
        if c == "\\":
            pos += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(expr[start:pos])
            start = pos + 1
        pos += 1
    if depth != 0 or not parts:
        return None
    parts.append(expr[start:])
    return min(sum(_count_pattern(part, cap) for part in parts), cap + 1)


def _count_pattern(pattern: str, cap: int) -> int:
    """How many URLs ``braceexpand(pattern)`` yields, computed without expanding
    (the same grammar), saturating at ``cap + 1``."""
    total = 1
    start = pos = depth = 0
    while pos < len(pattern):
        c = pattern[pos]
        if c == "\\":
            pos += 2
            continue
        if c == "{":
            if depth == 0:
                start = pos
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                expr = pattern[start + 1 : pos]
                n = _count_expression(expr, cap)
                if n is None:
                    n = _count_pattern(expr, cap)
                total = min(total * n, cap + 1)
        pos += 1
    if depth != 0:
        raise ValueError("unbalanced braces")
    return total


def expand_urls(
    urls: str | Sequence[str], *, max_shards: int = MAX_SHARDS
) -> list[str]:
    """Expand brace notation (``a-{000..009}.tar``, ``{x,y}``, nested, with ranges
    and steps as in bash; ``\\{`` is a literal brace) in one URL or a list; order
    is kept. For URLs the user writes, never for URLs from records.

    The count is computed first, without expanding: more than ``max_shards`` URLs
    in all (default :data:`MAX_SHARDS`, 100,000) raises
    :class:`~atdata_runtime.shards.errors.ShardListError` (``SHARD_LIST_TOO_LONG``)
    before any URL is built; unbalanced braces, ranges of numbers over 4,300
    digits and nesting deeper than the interpreter's recursion limit raise it too
    (``SHARD_PATTERN``)."""
    items = [urls] if isinstance(urls, str) else list(urls)
    total = 0
    for item in items:
        if not isinstance(item, str):
            raise ShardListError(
                repr(item)[:80], "a shard URL must be a string", rule="SHARD_PATTERN"
            )
        try:
            total += _count_pattern(item, max_shards)
        except (ValueError, RecursionError) as exc:
            raise ShardListError(
                redact_url(item)[:200],
                f"not a usable brace pattern ({type(exc).__name__})",
                rule="SHARD_PATTERN",
            ) from None
        if total > max_shards:
            raise ShardListError(
                redact_url(item)[:200],
                f"brace notation expands to more than max_shards={max_shards:,} "
                "URLs; pass max_shards= to allow more",
                rule="SHARD_LIST_TOO_LONG",
            )
    out: list[str] = []
    for item in items:
        out.extend(braceexpand.braceexpand(item))
    return out


def origin_of(url: str) -> str | None:
    """The origin of an absolute URL, ``scheme://host[:port]`` as
    :func:`atdata_runtime.net.hosts.origin` serializes it (RFC 6454 § 6.2: scheme
    and host lowercased, IDNA, a trailing dot stripped, the default port left
    out; the same origin the fetcher compares redirects by), or ``None`` for a URL
    without a host (a local path) or one that does not parse."""
    found = origin(url)
    return None if found == "null" else found


_ORIGIN_HOST = re.compile(
    r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?|\[[0-9a-f:.]{2,45}\]"
)
"""A serialized origin's host: an LDH name (after IDNA, lowercased) or an IP
literal (RFC 3986 § 3.2.2); no ``*`` wildcard, no spaces."""


def bare_origin(text: str) -> str | None:
    """The origin (:func:`origin_of`) of ``text`` when ``text`` is exactly an
    origin, ``http(s)://host[:port]`` with at most a trailing ``/``; ``None`` for
    anything more (``user:pass@``, a path, ``?``, ``#``), another scheme, a
    wildcard or otherwise invalid host, or a bad port. Used for
    ``trusted_endpoints`` (``TRUSTED_ENDPOINT``) and for the origin keys of
    ``storage_options["headers"]`` (``HEADERS_SCOPE``), so that nothing is
    silently widened to a whole origin or silently ignored."""
    if any(c in text for c in "?#@\\") or any(c.isspace() for c in text):
        return None
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or parts.path not in ("", "/"):
        return None
    found = origin_of(text)
    if found is None:
        return None
    host = found.partition("://")[2]
    if host.startswith("["):
        host = host[: host.index("]") + 1]
    else:
        host = host.rpartition(":")[0] if ":" in host else host
    return found if _ORIGIN_HOST.fullmatch(host) else None


def trusted_origins(endpoints: Iterable[str]) -> frozenset[str]:
    """The origins (:func:`origin_of`) of ``trusted_endpoints`` (one URL or many).
    Raises :class:`~atdata_runtime.shards.errors.ShardListError`
    (``TRUSTED_ENDPOINT``) for an entry that is not exactly an origin
    (:func:`bare_origin`: ``http(s)://host[:port]``, optionally a trailing ``/``;
    no credentials, path, query, fragment or wildcard)."""
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    origins: set[str] = set()
    for endpoint in endpoints:
        origin = bare_origin(endpoint) if isinstance(endpoint, str) else None
        if origin is None:
            raise ShardListError(
                redact_url(str(endpoint))[:200],
                "a trusted endpoint must be exactly an origin, "
                "http(s)://host[:port] (no user:pass@, path, query, fragment or "
                "wildcard: trust is granted to whole origins only)",
                rule="TRUSTED_ENDPOINT",
            )
        origins.add(origin)
    return frozenset(origins)


def check_size(name: str, value: object, *, optional: bool = False) -> int | None:
    """``value`` as a byte limit named ``name``: an ``int`` (not a ``bool``) of at
    least 0, or ``None`` when ``optional``. Raises ``TypeError`` / ``ValueError``
    naming the parameter (rather than a later "limit of True bytes")."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be an int (bytes), not {type(value).__name__} "
            f"{repr(value)[:60]}"
        )
    if value < 0:
        raise ValueError(f"{name} must be >= 0 bytes, not {value}")
    return value


def _scope_headers(
    headers: Any, urls: Sequence[str], urls_from: UrlsFrom
) -> dict[str, dict[str, str]]:
    """``storage_options["headers"]`` → origin → the headers sent to it. Plain
    entries (``name: value``) go to the origins of ``urls`` when the user gave
    them (``urls_from="user"``); entries keyed by an origin (``origin: {name:
    value}``) to that origin only, over plain ones."""
    where = 'storage_options["headers"]'
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise ShardListError(where, "must be a mapping", rule="HEADERS_SCOPE")
    plain: dict[str, str] = {}
    scoped: dict[str, dict[str, str]] = {}
    for key, value in headers.items():
        if not isinstance(value, Mapping):
            plain[str(key)] = str(value)
            continue
        origin = bare_origin(key) if isinstance(key, str) else None
        if origin is None:
            raise ShardListError(
                where,
                f"key {redact_url(str(key))!r} holds headers but is not an origin "
                "(scheme://host[:port])",
                rule="HEADERS_SCOPE",
            )
        scoped.setdefault(origin, {}).update({str(k): str(v) for k, v in value.items()})
    if plain:
        if urls_from == "record":
            raise ShardListError(
                where,
                f"plain headers ({', '.join(sorted(plain))}) would go to hosts that "
                "only a record named; key them by the origin they are for: "
                '{"https://host": {"Name": "value"}}',
                rule="HEADERS_SCOPE",
            )
        for url in urls:
            origin = origin_of(url)
            if origin is not None and origin.startswith(("http://", "https://")):
                scoped[origin] = {**plain, **scoped.get(origin, {})}
    return scoped


@dataclass(frozen=True)
class Split:
    """Which share of the data this consumer reads: node ``rank`` of ``world_size``,
    DataLoader ``worker`` of ``num_workers``."""

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    @property
    def consumers(self) -> int:
        return self.world_size * self.num_workers

    @property
    def index(self) -> int:
        return self.rank * self.num_workers + self.worker

    @classmethod
    def detect(cls) -> Split:
        """The current consumer, from torch (when it is imported already) or the
        environment. torch is never imported here: a DataLoader worker or an
        initialized ``torch.distributed`` has imported it, and importing it
        otherwise costs seconds and ~200 MiB of RSS for an answer it cannot
        change."""
        rank, world = (
            int(os.environ.get("RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")),
        )
        worker, workers = 0, 1
        if "torch" not in sys.modules:
            return cls(rank, world, worker, workers)
        try:
            import torch.distributed as dist  # type: ignore[import-not-found,unused-ignore]
            from torch.utils.data import (  # type: ignore[import-not-found,unused-ignore]
                get_worker_info,
            )
        except ImportError:
            pass
        else:
            if dist.is_available() and dist.is_initialized():
                rank, world = dist.get_rank(), dist.get_world_size()
            info = get_worker_info()
            if info is not None:
                worker, workers = info.id, info.num_workers
        return cls(rank, world, worker, workers)


_RECORD_SCHEMES = ("http://", "https://", "s3://")
"""The schemes a URL from a record may use (fsspec opens many more, ``memory://``
and ``file://`` among them)."""


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


def _read_error(
    url: str, exc: Exception, doing: str, entry: str | None
) -> ShardReadError:
    """A :class:`ShardReadError` (``SHARD_READ``) for ``exc`` raised by fsspec (or
    s3fs, botocore, aiohttp) while ``doing`` something with shard ``url``: the
    original class name and message, URLs in it redacted, at most 300
    characters."""
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group()), str(exc))
    text = text if len(text) <= 300 else text[:299] + "…"
    return ShardReadError(
        redact_url(url)[:200],
        f"{doing} the shard failed: {type(exc).__name__}: {text}",
        entry=entry,
    )


class _FsspecShard:
    """A file fsspec opened, whose errors on reading are :class:`ShardReadError`
    (``SHARD_READ``) naming the shard and the entry (``__cause__``: the original
    error)."""

    def __init__(self, file: Any, url: str, entry: str | None) -> None:
        self.file, self.url, self.entry = file, url, entry

    def read(self, n: int = -1) -> bytes:
        try:
            return self.file.read(n)  # type: ignore[no-any-return]
        except Exception as exc:
            raise _read_error(self.url, exc, "reading", self.entry) from exc

    def close(self) -> None:
        with contextlib.suppress(Exception):  # nothing more is read from it
            self.file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open(
    url: str,
    storage_options: dict[str, Any],
    *,
    trusted: bool = True,
    entry: str | None = None,
    buffered: bool = True,
) -> BinaryIO:
    """A binary stream for one shard (``buffered=False``: an HTTP shard's
    :class:`~atdata_runtime.shards.http.HttpShardStream` itself, not wrapped in a
    1 MiB ``io.BufferedReader``, for readers of whole chunks): local paths directly; ``http(s)://`` always
    with :class:`~atdata_runtime.shards.http.HttpShardStream` (streaming,
    resumable, no cross-origin redirects, so headers never leave their origin;
    untrusted URLs, those a record named, are checked as URLs from the network),
    which uses only ``headers`` and ``timeout`` of ``storage_options`` (the other
    options are fsspec's, for its other protocols: fsspec's HTTP client follows
    redirects to any host with the headers attached); anything else through
    fsspec with ``storage_options``. Untrusted local paths (``SHARD_URL_LOCAL``)
    and schemes other than http(s) and s3 (``SHARD_URL_SCHEME``) are refused. An
    error of fsspec (s3fs, botocore…) while opening or reading is a
    :class:`~atdata_runtime.shards.errors.ShardReadError` (``SHARD_READ``) naming
    the redacted URL and ``entry`` (the AT-URI of the entry that listed it)."""
    if "://" not in url or url.startswith("file://"):
        if not trusted:
            raise ShardListError(
                redact_url(url)[:200],
                "a URL from a record may not name a local path",
                rule="SHARD_URL_LOCAL",
            )
        return open(url.removeprefix("file://"), "rb", buffering=1 << 20)
    if not trusted and not url.startswith(_RECORD_SCHEMES):
        raise ShardListError(
            redact_url(url)[:200],
            "a URL from a record must be http(s):// or s3://",
            rule="SHARD_URL_SCHEME",
        )
    if url.lower().startswith(("http://", "https://")):
        try:
            from .http import HttpShardStream
        except ImportError as exc:
            raise missing_extra(
                exc, f"{redact_url(url)}: reading http(s):// shards", "http"
            ) from exc

        raw = HttpShardStream(
            url,
            headers=storage_options.get("headers"),
            timeout=float(storage_options.get("timeout", 30.0)),
            trusted=trusted,
        )
        return io.BufferedReader(raw, 1 << 20) if buffered else raw  # type: ignore[return-value]
    try:
        import fsspec
    except ImportError as exc:
        raise missing_extra(
            exc,
            f"{redact_url(url)}: reading this URL (fsspec) for s3:// and others",
            "s3",
        ) from exc
    try:
        # expand=False: a key is a name, never a glob or a pattern.
        opened = fsspec.open(url, "rb", expand=False, **storage_options).open()
    except ImportError as exc:
        if url.startswith(("s3://", "s3a://")):
            raise missing_extra(
                exc, f"{redact_url(url)}: reading s3:// shards", "s3", module="s3fs"
            ) from exc
        raise
    except Exception as exc:
        raise _read_error(url, exc, "opening", entry) from exc
    return _FsspecShard(opened, url, entry)  # type: ignore[return-value]


class Sha256Reader:
    """Passes reads through and hashes them (checksums verified while streaming);
    ``size`` counts the bytes read."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.hash.update(data)
        self.size += len(data)
        return data

    def drain(self) -> str:
        """Read to the end; the hex sha256 of everything read."""
        while self.read(1 << 20):
            pass
        return self.hash.hexdigest()


SPOOL_MEMORY_BYTES = 32 << 20
"""A shard verified before use (``verify="before"``) is held in memory while it is
at most this many bytes (32 MiB), else in an anonymous temporary file: the memory
the verified copy of one shard can take, whatever the dataset's size."""


PREFETCH_SHARDS = 1
"""Shards verified before use (``verify="before"``) that are downloaded and hashed
ahead of the one whose samples are being used, in background threads: 1, so at
most two verified copies exist at once (each at most :data:`SPOOL_MEMORY_BYTES`
in memory, the rest in a temporary file)."""


class _Cancelled(Exception):
    """A prefetch that its consumer no longer wants."""


def _verified_copy(
    raw: Any,
    sha256: str,
    shown: str,
    max_shard_bytes: int,
    cancel: threading.Event | None = None,
) -> BinaryIO:
    """The whole of ``raw``, positioned at its start, once its sha256 is
    ``sha256``: in memory while at most :data:`SPOOL_MEMORY_BYTES`, else in an
    anonymous temporary file (``tempfile``'s directory, ``TMPDIR``; deleted when
    closed). A stream with ``read_chunk`` (:class:`~.http.HttpShardStream`) is
    read chunk by chunk as the network delivers them, without copying them into
    an intermediate buffer. Raises :class:`ShardChecksumError` for another digest
    (``SHARD_CHECKSUM_MISMATCH``) or more than ``max_shard_bytes`` bytes
    (``SHARD_TOO_LARGE``; at most one read, 1 MiB or one network chunk, past the
    cap), and :class:`_Cancelled` once ``cancel`` is set. A stream whose
    ``length`` (an HTTP ``Content-Length``) is over :data:`SPOOL_MEMORY_BYTES`
    goes to the file from its first byte."""
    read_chunk: Callable[[], Any] | None = getattr(raw, "read_chunk", None)
    if read_chunk is None:

        def read_chunk() -> bytes:
            return raw.read(min(1 << 20, max_shard_bytes - size + 1))  # type: ignore[no-any-return]

    digest = hashlib.sha256()
    size = 0
    parts: list[Any] = []  # chunks (immutable bytes or views of them) in memory
    spool: Any = None
    announced = getattr(raw, "length", None)
    if announced is not None and announced > SPOOL_MEMORY_BYTES:
        spool = tempfile.TemporaryFile(prefix="atdata-shard-")  # noqa: SIM115
    try:
        while chunk := read_chunk():
            if cancel is not None and cancel.is_set():
                raise _Cancelled
            size += len(chunk)
            if size > max_shard_bytes:
                raise ShardChecksumError(
                    shown,
                    f"shard is larger than max_shard_bytes={max_shard_bytes:,} "
                    "bytes, the most read to verify its sha256 before use "
                    '(pass max_shard_bytes=, or verify="stream")',
                    rule="SHARD_TOO_LARGE",
                )
            digest.update(chunk)
            if spool is not None:
                spool.write(chunk)
                continue
            parts.append(chunk)
            if size > SPOOL_MEMORY_BYTES:
                spool = tempfile.TemporaryFile(prefix="atdata-shard-")  # noqa: SIM115
                for part in parts:
                    spool.write(part)
                parts.clear()
        actual = digest.hexdigest()
        if actual != sha256.lower():
            raise ShardChecksumError(
                shown,
                f"shard sha256 is {actual}, its entry says {sha256}; "
                "none of its samples was used",
            )
        if spool is None:
            data = b"".join(parts)
            parts.clear()
            return io.BytesIO(data)
        spool.seek(0)
    except BaseException:
        if spool is not None:
            spool.close()
        raise
    return spool  # type: ignore[no-any-return]


def _fetch_verified(
    url: str,
    storage_options: dict[str, Any],
    sha256: str,
    *,
    trusted: bool,
    entry: str | None,
    max_shard_bytes: int,
    cancel: threading.Event | None = None,
) -> BinaryIO:
    """Open shard ``url`` (:func:`_open`), read it whole and verify it
    (:func:`_verified_copy`); the connection is closed before this returns."""
    with _open(
        url, storage_options, trusted=trusted, entry=entry, buffered=False
    ) as raw:
        return _verified_copy(raw, sha256, redact_url(url), max_shard_bytes, cancel)


def _shard_samples(
    stream: Any, shown: str, max_member_bytes: int, max_sample_bytes: int | None
) -> Iterator[tuple[str, bytes]]:
    """``(key, .msgpack payload)`` of each sample in the tar read from ``stream``."""
    for key, group in iter_samples(
        stream,
        shard=shown,
        max_member_bytes=max_member_bytes,
        max_sample_bytes=max_sample_bytes,
    ):
        payload = group.get("msgpack")
        if payload is None:
            raise SampleFormatError(
                f"sample has no .msgpack member (has: {', '.join(group)})",
                shard=shown,
                member=key,
                rule="SAMPLE_NO_PAYLOAD",
            )
        yield key, payload


def iter_shard(
    url: str,
    storage_options: dict[str, Any] | None = None,
    sha256: str | None = None,
    *,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_sample_bytes: int | None = None,
    trusted: bool = True,
    verify: Verify = "stream",
    max_shard_bytes: int = MAX_SHARD_BYTES,
    entry: str | None = None,
) -> Iterator[tuple[str, bytes]]:
    """``(key, payload)`` for each sample of one shard, in tar order. Raises
    :class:`SampleFormatError` for a sample without a ``.msgpack`` member, and
    :class:`~atdata_runtime.shards.tar.TarFormatError` naming the shard (its URL
    redacted) for a malformed tar or a member over ``max_member_bytes`` (default
    :data:`~atdata_runtime.shards.tar.MAX_MEMBER_BYTES`, 1 GiB) or a sample over
    ``max_sample_bytes`` (default: ``max_member_bytes``).

    With ``sha256`` (hex) a mismatch raises
    :class:`~atdata_runtime.shards.errors.ShardChecksumError` naming the URL:
    ``verify="before"``: the shard is read whole (in memory up to
    :data:`SPOOL_MEMORY_BYTES`, 32 MiB, else to a temporary file; at most
    ``max_shard_bytes``, default :data:`MAX_SHARD_BYTES`, 4 GiB; over it:
    ``SHARD_TOO_LARGE``) and hashed before the first sample is yielded, so no
    sample of a tampered shard is ever used; ``"stream"`` (the default here): the
    bytes are hashed as they stream and the mismatch is raised once the shard has
    been read to its end, after its samples. ``trusted=False``: the URL came from
    a record (see :func:`_open`). ``entry``: the AT-URI of the entry that listed
    the shard, named in :class:`~atdata_runtime.shards.errors.ShardReadError`
    (``SHARD_READ``, an fsspec error opening or reading the shard)."""
    if verify not in ("before", "stream"):
        raise ValueError(f"verify must be 'before' or 'stream', not {verify!r}")
    shown = redact_url(url)
    options = storage_options or {}
    if sha256 and verify == "before":
        spool = _fetch_verified(
            url,
            options,
            sha256,
            trusted=trusted,
            entry=entry,
            max_shard_bytes=max_shard_bytes,
        )
        with spool:
            yield from _shard_samples(spool, shown, max_member_bytes, max_sample_bytes)
        return
    with _open(url, options, trusted=trusted, entry=entry) as raw:
        stream: Any = Sha256Reader(raw) if sha256 else raw
        yield from _shard_samples(stream, shown, max_member_bytes, max_sample_bytes)
        if sha256:
            actual = stream.drain()
            if actual != sha256.lower():
                raise ShardChecksumError(
                    shown, f"shard sha256 is {actual}, its entry says {sha256}"
                )


class _Prefetch:
    """Verified shards fetched ahead of their consumer, each in its own daemon
    thread: while shard *i* is downloaded or its samples are used, the next
    :data:`PREFETCH_SHARDS` are downloaded and hashed. Errors are raised
    where the shard is :meth:`take`-n, in shard order, as a serial read raises
    them. :meth:`close` cancels what is pending (a running download stops at its
    next chunk) and closes copies nobody took."""

    def __init__(self, fetch: Callable[[int, threading.Event], BinaryIO]) -> None:
        self._fetch = fetch
        self._cancel = threading.Event()
        self._jobs: dict[int, Future[BinaryIO]] = {}
        self._pool: ThreadPoolExecutor | None = None

    def start(self, index: int) -> None:
        if index in self._jobs or self._cancel.is_set():
            return
        if self._pool is None:  # a few long-lived threads: few malloc arenas
            self._pool = ThreadPoolExecutor(
                PREFETCH_SHARDS + 1, thread_name_prefix="atdata-prefetch"
            )
        self._jobs[index] = self._pool.submit(self._fetch, index, self._cancel)

    def take(self, index: int) -> BinaryIO:
        self.start(index)
        return self._jobs.pop(index).result()

    def close(self) -> None:
        self._cancel.set()
        for future in self._jobs.values():
            future.add_done_callback(_close_result)
        self._jobs.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _close_result(future: Future[BinaryIO]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


class Dataset(Generic[T_co]):
    """Typed samples from WebDataset shards. ``Dataset[ImageSample](urls)`` binds the
    sample class; iterating yields ``ImageSample`` instances (``ordered()``,
    ``shuffled()``), or typed batches with ``batch_size``.

    ``unknown``, ``validate`` and ``copy`` are passed to
    :meth:`PackableSample.unpack` (``copy=True``: writable arrays, one copy of each
    array's data per sample; default: read-only views into the shard payload);
    ``ragged`` is how batches hold array fields that cannot be stacked (see
    :class:`~atdata_runtime.samples.SampleBatch`: ``"list"``, ``"pad"`` or
    ``"error"``); ``split`` (``None`` = detect per iteration) selects this
    consumer's share; ``progress`` shows a progress bar (default: when stderr is a
    terminal; ``False`` turns it off).

    URLs and what goes with them (untrusted input, see ``SECURITY.md``):

    - ``urls_from="user"`` (default): ``urls`` are the user's own; brace notation is
      expanded (:func:`expand_urls`) and plain ``storage_options["headers"]`` go to
      the origins of these URLs. ``"record"``: the URLs come from a record (as
      :func:`~atdata_runtime.atmosphere.load.load_dataset` passes them): used as
      they are, never expanded, and only headers keyed by an origin are sent
      (plain ones raise ``HEADERS_SCOPE``).
    - ``entry``: the AT-URI of the entry the URLs come from (``load_dataset`` sets
      it), named in :class:`~atdata_runtime.shards.errors.ShardReadError`
      (``SHARD_READ``): an error of fsspec (s3fs, botocore) opening or reading a
      shard, which keeps the original error as ``__cause__``.
    - ``trusted_endpoints``: origins (``http(s)://host[:port]``, nothing more:
      ``TRUSTED_ENDPOINT``) whose URLs are read
      as the user's own even with ``urls_from="record"``. Other record-named
      ``http(s)`` URLs are read as URLs from the network
      (:func:`~atdata_runtime.net.fetch.check_url`: https only, no loopback or
      private hosts, no cross-origin redirects); local paths
      (``SHARD_URL_LOCAL``) and schemes other than ``http(s)``/``s3``
      (``SHARD_URL_SCHEME``) are refused when read.
    - ``max_shards`` (default :data:`MAX_SHARDS`, 100,000): the most URLs, after
      expansion (``SHARD_LIST_TOO_LONG``).
    - ``max_member_bytes`` (default
      :data:`~atdata_runtime.shards.tar.MAX_MEMBER_BYTES`, 1 GiB) and
      ``max_sample_bytes`` (default: ``max_member_bytes``): the largest tar member
      and the most bytes of one sample read into memory, in bytes (checked before
      reading; :class:`~atdata_runtime.shards.tar.TarFormatError`
      ``TAR_MEMBER_TOO_LARGE`` / ``TAR_SAMPLE_TOO_LARGE``). These, and
      ``max_shard_bytes``, must be an ``int`` >= 0, not a ``bool``
      (``TypeError`` / ``ValueError`` naming the parameter, raised here).
    - ``checksums``: shard URL (after expansion) → sha256 (hex); a key that is none
      of the URLs raises ``CHECKSUM_URL_UNKNOWN`` (it would verify nothing). A
      mismatch is a :class:`~atdata_runtime.shards.errors.ShardChecksumError`
      (``SHARD_CHECKSUM_MISMATCH``) raised per ``verify``: ``"before"`` (the
      default for ``urls_from="record"``) reads each shard with a checksum to a
      temporary file (``TMPDIR``; at most ``max_shard_bytes``, default
      :data:`MAX_SHARD_BYTES`, 4 GiB, else ``SHARD_TOO_LARGE``) and checks it
      before any of its samples is yielded, so no sample of a tampered shard is
      ever used; ``"stream"`` (the default for the user's own URLs) hashes while
      the samples are yielded and raises after the shard's last sample, so a
      consumer that stops early has used unverified samples.
    - http(s) URLs are always read by
      :class:`~atdata_runtime.shards.http.HttpShardStream` (no cross-origin
      redirects: headers stay with their origin), which uses ``headers`` and
      ``timeout`` of ``storage_options``; other options go to fsspec for the other
      protocols (``s3://``…).
    - ``storage_options["headers"]``: ``{"Name": "value"}`` for the hosts of the
      user's URLs, or ``{"https://host[:port]": {"Name": "value"}}`` for one origin
      (RFC 6454); each HTTP request carries only the headers of its URL's origin.

    These raise :class:`~atdata_runtime.shards.errors.ShardListError` (a
    ``ValueError``) with the rule named.

    Typed for mypy and pyright: ``ordered()`` / ``shuffled()`` are
    ``Iterator[T]``, and with ``batch_size`` an iterator of ``T``'s batch class
    (the ``B`` of ``class T(PackableSample[B])``, as generated classes declare;
    ``SampleBatch[Any]`` for a bare ``PackableSample`` base)."""

    sample_type: ClassVar[type[PackableSample]]
    _bound: ClassVar[dict[type[PackableSample], type[Dataset[Any]]]] = {}

    def __class_getitem__(cls, item: Any) -> Any:
        if isinstance(item, type) and issubclass(item, PackableSample):
            bound = cls._bound.get(item)
            if bound is None:
                bound = type(f"Dataset[{item.__name__}]", (cls,), {"sample_type": item})
                cls._bound[item] = bound
            return bound
        return super().__class_getitem__(item)  # type: ignore[misc]

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        storage_options: dict[str, Any] | None = None,
        unknown: Unknown = "keep",
        validate: bool = False,
        copy: bool = False,
        ragged: Ragged = "list",
        split: Split | None = None,
        progress: bool | None = None,
        checksums: dict[str, str] | None = None,
        urls_from: UrlsFrom = "user",
        max_shards: int = MAX_SHARDS,
        max_member_bytes: int = MAX_MEMBER_BYTES,
        max_sample_bytes: int | None = None,
        trusted_endpoints: Iterable[str] = (),
        verify: Verify | None = None,
        max_shard_bytes: int = MAX_SHARD_BYTES,
        entry: str | None = None,
    ) -> None:
        if not hasattr(type(self), "sample_type"):
            raise TypeError("bind a sample class first: Dataset[MySample](urls)")
        if urls_from not in ("user", "record"):
            raise ValueError(f"urls_from must be 'user' or 'record', not {urls_from!r}")
        if isinstance(max_shards, bool) or not isinstance(max_shards, int):
            raise TypeError(f"max_shards must be an int, not {max_shards!r}")
        if max_shards < 1:
            raise ValueError(f"max_shards must be at least 1, not {max_shards}")
        if urls_from == "user":
            self.shards = expand_urls(urls, max_shards=max_shards)
        else:
            self.shards = [urls] if isinstance(urls, str) else list(urls)
            if len(self.shards) > max_shards:
                raise ShardListError(
                    "urls",
                    f"{len(self.shards):,} shard URLs, more than "
                    f"max_shards={max_shards:,}",
                    rule="SHARD_LIST_TOO_LONG",
                )
            bad = next((u for u in self.shards if not isinstance(u, str)), None)
            if bad is not None:
                raise ShardListError(
                    repr(bad)[:80], "a shard URL must be a string", rule="SHARD_PATTERN"
                )
        if not self.shards:
            raise ShardListError("urls", "no shard URLs", rule="SHARD_LIST_EMPTY")
        self.urls_from: UrlsFrom = urls_from
        self.entry = entry
        """The AT-URI of the entry the URLs come from (``load_dataset`` sets it),
        named in shard read errors; ``None`` for URLs of the user's own."""
        self.max_shards = max_shards
        check_size("max_member_bytes", max_member_bytes)
        self.max_member_bytes = max_member_bytes
        self.max_sample_bytes = check_size(
            "max_sample_bytes", max_sample_bytes, optional=True
        )
        if verify is None:
            verify = "before" if urls_from == "record" else "stream"
        if verify not in ("before", "stream"):
            raise ValueError(f"verify must be 'before' or 'stream', not {verify!r}")
        check_size("max_shard_bytes", max_shard_bytes)
        self.verify: Verify = verify
        """When checksums are checked: ``"before"`` a shard's samples are used, or
        ``"stream"``ing (see :data:`Verify`)."""
        self.max_shard_bytes = max_shard_bytes
        self.trusted_origins = trusted_origins(trusted_endpoints)
        """Origins whose record-named URLs are read as the user's own."""
        self.storage_options = dict(storage_options or {})
        self._headers = _scope_headers(
            self.storage_options.get("headers"), self.shards, urls_from
        )
        """Origin → the HTTP headers sent to it (nothing to other hosts)."""
        self.unknown: Unknown = unknown
        self.validate = validate
        self.copy = copy
        if ragged not in ("list", "pad", "error"):
            raise ValueError(f"ragged must be 'list', 'pad' or 'error', not {ragged!r}")
        self.ragged: Ragged = ragged
        self.split = split
        self.progress = progress
        self.checksums = dict(checksums or {})
        """Shard URL → expected sha256 (hex), verified while streaming."""
        known = set(self.shards)
        stray = [url for url in self.checksums if url not in known]
        if stray:
            raise ShardListError(
                redact_url(str(stray[0]))[:200],
                f"a checksum is given for {len(stray)} URL(s) that are none of the "
                "dataset's shard URLs (after brace expansion), so it would verify "
                "nothing; key checksums by the expanded URLs",
                rule="CHECKSUM_URL_UNKNOWN",
            )
        self.stored_type: type[PackableSample] = type(self).sample_type
        """The class the shards are decoded with (differs from ``sample_type``
        after :meth:`as_type`)."""
        self.lens: Lens[Any, Any] | None = None
        """The lens from ``stored_type`` to ``sample_type`` (``None``: same)."""

    def as_type(self, target: type[U], *, graph: LensGraph | None = None) -> Dataset[U]:
        """This dataset read as ``target``: each sample is decoded with its stored
        class and viewed through the shortest chain of lenses to ``target``
        (:meth:`atdata_runtime.lenses.LensGraph.find` on ``graph``, default the
        global :data:`~atdata_runtime.lenses.lenses`: registered lenses, and
        structural ones between versions of a schema). Raises
        :class:`~atdata_runtime.lenses.LensNotFoundError` naming the nearest classes
        when no chain exists."""
        from ..lenses.core import compose, lenses

        step = (graph or lenses).find(self.sample_type, target)
        bound: Any = Dataset[target]  # type: ignore[valid-type]
        view: Dataset[U] = object.__new__(bound)
        view.__dict__.update(self.__dict__)
        view.lens = step if self.lens is None else compose(self.lens, step)
        if view.lens.source is view.lens.target:
            view.lens = None
        return view

    @classmethod
    def from_atproto(cls, name: str, **kwargs: Any) -> Dataset[Any]:
        """The dataset published at ``name``: a ``science.alt.dataset.entry``
        AT-URI, or a name resolved through the AppView (``@alice.example/
        CellCrop@^1``, ``CellCrop@1.2.0``, ``CellCrop``; see
        :mod:`atdata_runtime.appview.names`: the AppView of ``appview=`` or
        ``ATDATA_APPVIEW_URL``, falling back to the publisher's PDS), typed by
        its schema record. See :func:`atdata_runtime.atmosphere.load.load_dataset`
        for ``kwargs`` (``client``, ``lock``, ``storage_options``…). On a bound
        class (``Dataset[ImageSample].from_atproto(…)``) that class is used."""
        try:
            from ..atmosphere.load import load_dataset
        except ImportError as exc:
            raise missing_extra(exc, "Dataset.from_atproto", "atproto") from exc

        bound = cls.__dict__.get("sample_type")
        if bound is not None:
            kwargs.setdefault("sample_type", bound)
        if isinstance(name, str) and name.strip().startswith("at://"):
            if kwargs.get("appview") is not None:
                raise TypeError("appview= is for names; an AT-URI needs no AppView")
            kwargs.pop("appview", None)
            return load_dataset(name.strip(), **kwargs)  # type: ignore[no-any-return]
        from ..appview.load import load_named_dataset

        return load_named_dataset(name, **kwargs)  # type: ignore[no-any-return]

    # -- iteration --------------------------------------------------------------------
    def _trusted(self, url: str) -> bool:
        """Whether ``url`` is the user's: given by them, or at an origin they
        trust."""
        return self.urls_from == "user" or origin_of(url) in self.trusted_origins

    def _options_for(self, url: str) -> dict[str, Any]:
        """``storage_options`` for one shard: the headers of its origin only."""
        if "headers" not in self.storage_options:
            return self.storage_options
        options = {k: v for k, v in self.storage_options.items() if k != "headers"}
        headers = self._headers.get(origin_of(url) or "")
        if headers:
            options["headers"] = headers
        return options

    def _plan(self, shards: list[str]) -> tuple[list[str], int, int]:
        split = self.split or Split.detect()
        n, k = split.consumers, split.index
        if n <= 1:
            return shards, 1, 0
        if len(shards) >= n:
            return shards[k::n], 1, 0
        return shards, n, k  # fewer shards than consumers: every n-th sample

    def _payloads(self, shards: list[str]) -> Iterator[tuple[str, str, bytes]]:
        """``(shard, key, payload)``: ``shard`` is the URL as errors name it."""
        mine, stride, offset = self._plan(shards)
        index = 0
        ahead = [self.verify == "before" and bool(self.checksums.get(u)) for u in mine]

        def fetch(i: int, cancel: threading.Event) -> BinaryIO:
            url = mine[i]
            return _fetch_verified(
                url,
                self._options_for(url),
                self.checksums[url],
                trusted=self._trusted(url),
                entry=self.entry,
                max_shard_bytes=self.max_shard_bytes,
                cancel=cancel,
            )

        prefetch = _Prefetch(fetch)
        try:
            for i, url in enumerate(
                tqdm(mine, desc="shards", unit="shard", disable=_quiet(self.progress))
            ):
                shown = redact_url(url)
                if ahead[i]:
                    for j in range(i + 1, min(i + 1 + PREFETCH_SHARDS, len(mine))):
                        if not ahead[j]:
                            break
                        prefetch.start(j)
                    spool = prefetch.take(i)
                    with spool:
                        for key, payload in _shard_samples(
                            spool, shown, self.max_member_bytes, self.max_sample_bytes
                        ):
                            if stride == 1 or index % stride == offset:
                                yield shown, key, payload
                            index += 1
                    continue
                for key, payload in iter_shard(
                    url,
                    self._options_for(url),
                    self.checksums.get(url),
                    max_member_bytes=self.max_member_bytes,
                    max_sample_bytes=self.max_sample_bytes,
                    trusted=self._trusted(url),
                    verify=self.verify,
                    max_shard_bytes=self.max_shard_bytes,
                    entry=self.entry,
                ):
                    if stride == 1 or index % stride == offset:
                        yield shown, key, payload
                    index += 1
        finally:
            prefetch.close()

    @overload
    def ordered(
        self, batch_size: None = None, *, drop_last: bool = False
    ) -> Iterator[T_co]: ...
    @overload
    def ordered(
        self: Dataset[PackableSample[B]], batch_size: int, *, drop_last: bool = False
    ) -> Iterator[B]: ...
    def ordered(
        self, batch_size: int | None = None, *, drop_last: bool = False
    ) -> Iterator[Any]:
        """Samples in shard order (this consumer's share), or batches of
        ``batch_size`` (the sample class's batch class; the last one may be smaller
        unless ``drop_last``; array fields per ``ragged``). Raises ``ValueError`` for
        ``batch_size < 1``; while iterating, :class:`SampleFormatError` for a
        payload that does not fit the class, or a batch that cannot be built."""
        samples = self._decode_keyed(self._payloads(self.shards))
        return self._maybe_batch(samples, batch_size, drop_last)

    @overload
    def shuffled(
        self,
        *,
        buffer: int = 1000,
        seed: int | None = None,
        epoch: int = 0,
        batch_size: None = None,
        drop_last: bool = False,
        buffer_bytes: int = SHUFFLE_BUFFER_BYTES,
    ) -> Iterator[T_co]: ...
    @overload
    def shuffled(
        self: Dataset[PackableSample[B]],
        *,
        buffer: int = 1000,
        seed: int | None = None,
        epoch: int = 0,
        batch_size: int,
        drop_last: bool = False,
        buffer_bytes: int = SHUFFLE_BUFFER_BYTES,
    ) -> Iterator[B]: ...
    def shuffled(
        self,
        *,
        buffer: int = 1000,
        seed: int | None = None,
        epoch: int = 0,
        batch_size: int | None = None,
        drop_last: bool = False,
        buffer_bytes: int = SHUFFLE_BUFFER_BYTES,
    ) -> Iterator[Any]:
        """Samples in random order: shards shuffled (the same order on every
        consumer for a given ``seed`` and ``epoch``), then samples through a shuffle
        buffer of at most ``buffer`` samples and ``buffer_bytes`` bytes of their
        payloads (default :data:`SHUFFLE_BUFFER_BYTES`, 1 GiB: a sample's arrays
        are views that keep its payload, up to ``max_sample_bytes``, in memory);
        when either is reached, a random sample leaves the buffer. Batches as in
        :meth:`ordered`. Raises ``TypeError`` for a ``buffer`` or ``buffer_bytes``
        that is not an ``int`` (or is a ``bool``), ``ValueError`` for
        ``buffer < 1`` or ``buffer_bytes < 0`` (0: a buffer of one sample)."""
        if isinstance(buffer, bool) or not isinstance(buffer, int):
            raise TypeError(f"buffer must be an int, not {repr(buffer)[:60]}")
        if buffer < 1:
            raise ValueError(f"buffer must be at least 1, not {buffer}")
        check_size("buffer_bytes", buffer_bytes)
        rng = random.Random(None if seed is None else seed * 1_000_003 + epoch)
        shards = list(self.shards)
        rng.shuffle(shards)
        keyed = self._shuffle_buffer(
            self._decode_sized(self._payloads(shards)), buffer, buffer_bytes, rng
        )
        return self._maybe_batch(keyed, batch_size, drop_last)

    def __iter__(self) -> Iterator[T_co]:
        return self.ordered()

    def collate(
        self: Dataset[PackableSample[B]], samples: Sequence[PackableSample[B]]
    ) -> B:
        """A ``collate_fn`` for ``torch.utils.data.DataLoader``: a list of samples →
        one batch of this dataset's batch class, arrays stacked (fresh, writable
        numpy arrays) under this dataset's ``ragged`` policy:
        ``DataLoader(ds.torch(), batch_size=16, collate_fn=ds.collate)``. See
        :func:`collate`."""
        return collate(samples, ragged=self.ragged)

    def torch(
        self,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        buffer: int = 1000,
        batch_size: int | None = None,
        drop_last: bool = False,
        buffer_bytes: int = SHUFFLE_BUFFER_BYTES,
    ) -> Any:
        """This dataset as a ``torch.utils.data.IterableDataset`` (torch must be
        installed). Each DataLoader worker (and each distributed rank) reads its own
        share, detected in the worker. Two ways to batch:

        - in the DataLoader: ``DataLoader(ds.torch(), batch_size=16,
          collate_fn=ds.collate, num_workers=4)`` (samples cannot go through
          torch's default collate: it does not know sample classes);
        - here: ``DataLoader(ds.torch(batch_size=16), batch_size=None,
          num_workers=4)`` (batches pass through the DataLoader unchanged).

        Either way a batch holds numpy arrays (``torch.from_numpy(batch.image)``
        shares their memory; stacked arrays are writable). With ``shuffle``, call
        ``set_epoch(n)`` on the returned object each epoch (as with
        ``DistributedSampler``). ``buffer_bytes`` is checked here (an ``int`` >= 0:
        ``TypeError`` / ``ValueError``)."""
        check_size("buffer_bytes", buffer_bytes)
        try:
            from torch.utils.data import IterableDataset  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise missing_extra(
                exc,
                "Dataset.torch()",
                "torch",
                " (install the CPU or CUDA build of torch you want first)",
            ) from exc

        outer = self

        class TorchView(IterableDataset):  # type: ignore[misc,type-arg,unused-ignore]
            epoch = 0

            def set_epoch(self, epoch: int) -> None:
                self.epoch = epoch

            def __iter__(self) -> Iterator[Any]:
                if shuffle:
                    return outer.shuffled(
                        buffer=buffer,
                        buffer_bytes=buffer_bytes,
                        seed=seed,
                        epoch=self.epoch,
                        batch_size=batch_size,
                        drop_last=drop_last,
                    )
                return outer.ordered(batch_size, drop_last=drop_last)

        return TorchView()

    def _decode_keyed(
        self, items: Iterable[tuple[str, str, bytes]]
    ) -> Iterator[tuple[str, Any]]:
        """``(key, sample)`` for each ``(shard, key, payload)``."""
        for key, sample, _ in self._decode_sized(items):
            yield key, sample

    def _decode_sized(
        self, items: Iterable[tuple[str, str, bytes]]
    ) -> Iterator[tuple[str, Any, int]]:
        """:meth:`_decode_keyed` with each sample's payload size."""
        unpack = self.stored_type.unpack
        get = None if self.lens is None else self.lens.getter
        for shard, key, payload in items:
            sample = unpack(
                payload,
                shard=shard,
                member=f"{key}.msgpack",
                unknown=self.unknown,
                validate=self.validate,
                copy=self.copy,
            )
            yield key, sample if get is None else get(sample), len(payload)

    @staticmethod
    def _shuffle_buffer(
        items: Iterator[tuple[str, S, int]],
        size: int,
        max_bytes: int,
        rng: random.Random,
    ) -> Iterator[tuple[str, S]]:
        """A shuffle buffer of at most ``size`` items and ``max_bytes`` bytes (the
        item's size counts as soon as it arrives: a random item leaves first)."""
        pool: list[tuple[str, S, int]] = []
        held = 0
        for item in items:
            pool.append(item)
            held += item[2]
            if len(pool) <= size and held <= max_bytes:
                continue
            i = rng.randrange(len(pool))
            pool[i], pool[-1] = pool[-1], pool[i]
            key, sample, n = pool.pop()
            held -= n
            yield key, sample
            while held > max_bytes and pool:  # one large arrival can evict several
                i = rng.randrange(len(pool))
                pool[i], pool[-1] = pool[-1], pool[i]
                key, sample, n = pool.pop()
                held -= n
                yield key, sample
        rng.shuffle(pool)
        for key, sample, _ in pool:
            yield key, sample

    def _maybe_batch(
        self, keyed: Iterator[tuple[str, Any]], batch_size: int | None, drop_last: bool
    ) -> Iterator[Any]:
        if batch_size is None:
            return (sample for _, sample in keyed)
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        return self._batches(keyed, batch_size, drop_last)

    def _batches(
        self, keyed: Iterator[tuple[str, Any]], size: int, drop_last: bool
    ) -> Iterator[SampleBatch[Any]]:
        batch_cls = self.sample_type.batch_class()
        chunk: list[tuple[str, Any]] = []
        for item in keyed:
            chunk.append(item)
            if len(chunk) == size:
                yield batch_cls.from_samples(
                    [s for _, s in chunk],
                    keys=[k for k, _ in chunk],
                    ragged=self.ragged,
                )
                chunk = []
        if chunk and not drop_last:
            yield batch_cls.from_samples(
                [s for _, s in chunk],
                keys=[k for k, _ in chunk],
                ragged=self.ragged,
            )


def collate(samples: Sequence[PackableSample[B]], *, ragged: Ragged = "list") -> B:
    """Samples of one class → one batch of their batch class (arrays stacked into
    new, writable numpy arrays; other fields lists; array fields that cannot be
    stacked per ``ragged``, see :class:`~atdata_runtime.samples.SampleBatch`).
    The ``collate_fn`` for a ``torch.utils.data.DataLoader`` over samples:
    ``DataLoader(ds.torch(), batch_size=16, collate_fn=collate)`` (or
    ``ds.collate``, which uses the dataset's ``ragged``). Raises ``ValueError`` for
    no samples, ``TypeError`` for samples of different classes,
    :class:`SampleFormatError` as :meth:`SampleBatch.from_samples`."""
    items = list(samples)
    if not items:
        raise ValueError("collate: no samples")
    cls = type(items[0])
    other = next((s for s in items if type(s) is not cls), None)
    if other is not None:
        raise TypeError(
            f"collate: samples of different classes ({cls.__name__}, "
            f"{type(other).__name__})"
        )
    batch: B = cls.batch_class().from_samples(items, ragged=ragged)  # type: ignore[assignment]
    return batch


class ShardWriter:
    """Write samples into WebDataset shards ``pattern % index`` (e.g.
    ``out/data-%06d.tar``), starting a new shard after ``maxcount`` samples or once
    a shard holds ``maxsize`` bytes of member payloads (checked before each sample,
    as WebDataset's ``ShardWriter`` counts). Members are ``<key>.msgpack`` (POSIX pax tar, mode
    0444, mtime 0); keys default to ``uuid1(0, 0)`` as atdata's writer uses and must
    not contain dots. Arrays are checked against the schema (dtype/shape) on write.

    Each shard is written to a hidden temporary file beside it and renamed into
    place when it is complete (POSIX ``rename``): a crash or an exception leaves no
    partial shard under the shard's name. ``shards`` lists the completed files.

    Raises ``ValueError`` for a pattern without a ``%`` index or a key with a dot,
    ``OSError`` from the file system. After an error the current shard is discarded
    (completed shards stay) and every later ``write`` raises ``ValueError``: no
    shard ever silently lacks samples that were written to it. Files get the
    permissions of the umask, as ``open()`` gives them.
    """

    def __init__(
        self,
        pattern: str,
        *,
        maxcount: int = 100_000,
        maxsize: float = 3e9,
        progress: bool | None = None,
        start: int = 0,
    ) -> None:
        if "%" not in pattern:
            raise ValueError(
                "pattern needs a %-format for the shard index, e.g. data-%06d.tar"
            )
        self.pattern = pattern
        self.maxcount = maxcount
        self.maxsize = maxsize
        self.shards: list[str] = []
        self.count = 0
        self._index = start
        self._tar: tarfile.TarFile | None = None
        self._file: BinaryIO | None = None
        self._tmp = ""
        self._final = ""
        self._in_shard = 0
        self._bytes = 0
        self._failed: BaseException | None = None
        self._bar = tqdm(desc="writing", unit="sample", disable=_quiet(progress))

    def _roll(self) -> None:
        self._finish()
        final = self.pattern % self._index
        self._index += 1
        directory, name = os.path.split(final)
        tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.partial")
        # O_EXCL with mode 0666: a fresh file, permissions from the umask (as open()).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._file = os.fdopen(fd, "wb")
        # Closed in _finish/_abort: the shard outlives this call.
        self._tar = tarfile.open(  # noqa: SIM115
            fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT
        )
        self._tmp, self._final, self._in_shard, self._bytes = tmp, final, 0, 0

    def _finish(self) -> None:
        if self._tar is None or self._file is None:
            return
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self._final)
        self.shards.append(self._final)
        self._tar = self._file = None

    def _abort(self) -> None:
        if self._file is not None:
            self._file.close()
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
        self._tar = self._file = None

    def write(self, sample: PackableSample, key: str | None = None) -> str:
        """Write one sample; returns its key."""
        key = key if key is not None else str(uuid.uuid1(0, 0))
        if "." in key or "/" in key or not key:
            raise ValueError(
                f"sample key {key!r} must be non-empty, without '.' or '/' "
                "(WebDataset splits member names at the first dot)"
            )
        if self._failed is not None:
            raise ValueError(
                "ShardWriter: an earlier write failed and its shard was discarded; "
                "start a new writer"
            ) from self._failed
        payload = sample.pack(member=f"{key}.msgpack")
        try:
            if (
                self._tar is None
                or self._in_shard >= self.maxcount
                or self._bytes >= self.maxsize
            ):
                self._roll()
            assert self._tar is not None
            info = tarfile.TarInfo(f"{key}.msgpack")
            info.size = len(payload)
            info.mode = 0o444
            self._tar.addfile(info, io.BytesIO(payload))
        except BaseException as exc:
            self._abort()
            self._failed = exc
            raise
        self._in_shard += 1
        self._bytes += len(payload)
        self.count += 1
        self._bar.update()
        return key

    def close(self) -> None:
        """Complete the current shard (renamed into place) and close."""
        try:
            self._finish()
        finally:
            self._abort()
            self._bar.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self._abort()
            self._bar.close()
        else:
            self.close()


def write_samples(
    samples: Iterable[PackableSample],
    pattern: str,
    *,
    maxcount: int = 100_000,
    maxsize: float = 3e9,
    key: Callable[[int, PackableSample], str] | None = None,
    progress: bool | None = None,
) -> list[str]:
    """Write ``samples`` to shards (see :class:`ShardWriter`); returns the shard
    paths."""
    with ShardWriter(
        pattern, maxcount=maxcount, maxsize=maxsize, progress=progress
    ) as writer:
        for i, sample in enumerate(samples):
            writer.write(sample, None if key is None else key(i, sample))
    return writer.shards
