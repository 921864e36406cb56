"""A streaming reader of tar archives, for shard reading on the hot path.

Python's ``tarfile`` (which webdataset's reader is built on) spends most of a shard
read building ``TarInfo`` objects and parsing the pax headers that webdataset's
writer puts before every member. This reader does only what reading samples
needs: it walks 512-byte headers (POSIX ustar; pax ``x`` records for ``path`` and
``size``; GNU ``L`` long names; base-256 sizes), verifies each header's checksum,
and yields regular files as ``(name, bytes)``. Everything else (directories, links,
global pax headers) is skipped without being buffered.

It reads the same archives ``tarfile`` reads for this purpose; the tests check it
against ``tarfile`` on USTAR, GNU and PAX archives and on webdataset's and atdata's
shards.

Shards come from strangers, so every size is checked before anything is allocated
for it (POSIX.1-2008 ``pax``, "ustar Interchange Format" and "pax Extended Header";
GNU tar's base-256 numbers). Limits, keywords of :func:`iter_files` and
:func:`iter_samples`:

- ``max_member_bytes`` (:data:`MAX_MEMBER_BYTES`, 1 GiB): the largest member read.
  A member is one sample's payload, decoded in memory whole (arrays are zero-copy
  views into it), so this is the most memory one sample can pin; 1 GiB is 16x the
  64 MiB arrays of the project's benchmark and above what atdata's and
  webdataset's writers produce per sample in practice, yet keeps one hostile
  header from claiming the machine. Readers of larger samples raise it.
- :data:`MAX_META_BYTES` (1 MiB): the largest pax ``x``/``g`` or GNU ``L``/``K``
  header member (names and attributes; a real one is a few hundred bytes).
- ``max_sample_bytes`` (default: ``max_member_bytes``): the total of one sample's
  members, which :func:`iter_samples` holds at once.

Every malformed archive is a :class:`TarFormatError` naming the shard (when the
caller says which), the member (its name when the header was read that far, and
the header's byte offset) and a rule ID.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import BinaryIO, Final

__all__ = [
    "MAX_MEMBER_BYTES",
    "MAX_META_BYTES",
    "TarFormatError",
    "iter_files",
    "iter_samples",
]

MAX_MEMBER_BYTES: Final = 1 << 30
"""Default ``max_member_bytes``: 1 GiB (see the module docstring)."""
MAX_META_BYTES: Final = 1 << 20
"""Largest pax extended header or GNU long-name member: 1 MiB."""

_BLOCK: Final = 512
_ZERO_BLOCK: Final = bytes(_BLOCK)
_REGULAR: Final = frozenset({ord("0"), 0, ord("7")})
_META: Final = frozenset({ord("x"), ord("g"), ord("L"), ord("K")})
_KEY_RE: Final = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
_DECIMAL_RE: Final = re.compile(r"[0-9]{1,20}")
_CHUNK: Final = 64 << 20
"""Members larger than this are read in chunks of this size, so that a header
claiming more bytes than the stream holds costs at most one chunk before the
truncation is seen."""


class TarFormatError(ValueError):
    """A tar archive that cannot be read. Attributes: ``reason`` (what), ``shard``
    (URL or path, when the caller gave it), ``member`` (the member's name, when its
    header was read that far), ``offset`` (byte offset of the member's header) and
    ``rule``:

    - ``TAR_TRUNCATED``: the stream ends inside a header or member data, or
      without the end-of-archive zero block;
    - ``TAR_CHECKSUM``: a header's checksum does not match its bytes;
    - ``TAR_NUMBER``: a numeric field (size, checksum) that is not octal,
      base-256 or (pax) decimal digits, or is negative;
    - ``TAR_PAX``: a malformed pax extended header record;
    - ``TAR_MEMBER_TOO_LARGE``: a member over ``max_member_bytes`` (metadata
      members over :data:`MAX_META_BYTES`), refused before reading it;
    - ``TAR_SAMPLE_TOO_LARGE``: one sample's members over ``max_sample_bytes``.

    ``str()`` is ``"shard 'u', member 'm', header at byte N: reason [RULE]"``."""

    rule = "TAR_MALFORMED"

    def __init__(
        self,
        reason: str,
        *,
        shard: str | None = None,
        member: str | None = None,
        offset: int | None = None,
        rule: str | None = None,
    ) -> None:
        self.reason, self.shard, self.member = reason, shard, member
        self.offset = offset
        if rule is not None:
            self.rule = rule
        where = []
        if shard:
            where.append(f"shard {shard!r}")
        if member is not None:
            where.append(f"member {member!r}")
        if offset is not None:
            where.append(f"header at byte {offset}")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(f"{prefix}{reason} [{self.rule}]")


def _number(field: bytes, what: str, fail: Callable[[str, str], TarFormatError]) -> int:
    """A ustar numeric field: octal digits (NUL/space padded), or GNU base-256
    (first byte 0x80 positive; 0xff, negative, is refused)."""
    if field[:1] and field[0] & 0x80:
        if field[0] != 0x80:
            raise fail(f"negative or invalid base-256 {what}", "TAR_NUMBER")
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if text.isdigit():  # ASCII digits only: no sign, space or "_" reaches int()
        try:
            return int(text, 8)
        except ValueError:
            pass  # an 8 or a 9
    raise fail(f"bad octal {what} {field!r}", "TAR_NUMBER")


def _signed_checksum(header: bytes) -> int:
    """The checksum some old writers compute over signed bytes (``tarfile``
    accepts it too)."""
    signed = sum(b - 256 if b > 127 else b for b in header)
    return signed - sum(b - 256 if b > 127 else b for b in header[148:156]) + 8 * 32


def _pax(data: bytes, fail: Callable[[str, str], TarFormatError]) -> dict[str, str]:
    """Records ``"<length> <key>=<value>\\n"`` of a pax extended header (POSIX
    pax, "pax Extended Header"); ``length`` counts the whole record."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0 and not data[pos:].strip(b"\0"):
            break  # NUL padding after the last record
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space]
        if space < 0 or not digits.isdigit():
            raise fail(f"bad pax record length at record byte {pos}", "TAR_PAX")
        length = int(digits)
        end = pos + length
        if length <= space - pos + 1 or end > len(data) or data[end - 1] != 0x0A:
            raise fail(f"bad pax record at record byte {pos}", "TAR_PAX")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise fail(f"pax record without '=' at record byte {pos}", "TAR_PAX")
        records[key.decode("utf-8", "replace")] = value.decode(
            "utf-8", "surrogateescape"
        )
        pos = end
    return records


def iter_files(
    stream: BinaryIO,
    *,
    shard: str | None = None,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> Iterator[tuple[str, bytes]]:
    """``(name, data)`` of each regular file of the tar archive read from
    ``stream``, in archive order. ``shard`` (URL or path) is named in errors.

    A member larger than ``max_member_bytes`` (default :data:`MAX_MEMBER_BYTES`,
    1 GiB) is refused from its header, before anything is read or allocated for
    it; so is a pax or GNU long-name member over :data:`MAX_META_BYTES`. Members
    other than regular files are skipped in chunks, never buffered. Raises
    :class:`TarFormatError` (rules in its docstring) for every malformed or
    truncated archive, including one that ends without its end-of-archive
    block; ``ValueError`` for a negative ``max_member_bytes``."""
    if max_member_bytes < 0:
        raise ValueError(f"max_member_bytes must be >= 0, not {max_member_bytes}")
    offset = 0
    member: str | None = None
    long_name: str | None = None
    pax: dict[str, str] = {}
    raw_read = stream.read

    def fail(reason: str, rule: str) -> TarFormatError:
        return TarFormatError(
            reason, shard=shard, member=member, offset=offset, rule=rule
        )

    def read(n: int) -> bytes:
        # Network streams (HTTP, S3) may return fewer bytes than asked for before
        # the end: read until ``n`` bytes or end of stream.
        data = raw_read(n)
        if len(data) == n or not data:
            return data
        parts = [data]
        got = len(data)
        while got < n:
            more = raw_read(n - got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def read_member(n: int, keep: bool) -> bytes:
        # At most _CHUNK bytes per read: a header that claims more than the stream
        # holds costs one chunk before the truncation shows.
        if n <= _CHUNK:
            data = read(n)
            if len(data) < n:
                raise fail(
                    f"member data truncated: {len(data)} of {n} bytes", "TAR_TRUNCATED"
                )
            return data if keep else b""
        parts: list[bytes] = []
        left = n
        while left:
            want = min(left, _CHUNK)
            chunk = read(want)
            left -= len(chunk)
            if len(chunk) < want:
                raise fail(
                    f"member data truncated: {n - left} of {n} bytes", "TAR_TRUNCATED"
                )
            if keep:
                if left == 0 and not parts:
                    return chunk
                parts.append(chunk)
        return b"".join(parts)

    while True:
        member = None
        header = read(_BLOCK)
        if not header:
            raise fail(
                "archive ends without its end-of-archive block"
                + (" (empty stream)" if offset == 0 else ""),
                "TAR_TRUNCATED",
            )
        if len(header) < _BLOCK:
            raise fail(
                f"truncated header ({len(header)} of {_BLOCK} bytes)", "TAR_TRUNCATED"
            )
        if header == _ZERO_BLOCK:
            return
        stored = _number(header[148:156], "checksum", fail)
        computed = sum(header) - sum(header[148:156]) + 8 * 32
        if stored != computed and stored != _signed_checksum(header):
            raise fail("header checksum mismatch", "TAR_CHECKSUM")
        typeflag = header[156]
        regular = typeflag in _REGULAR
        if regular:
            if "path" in pax:
                member = pax["path"]
            elif long_name is not None:
                member = long_name
            else:
                member = (
                    header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                )
                if header[257:262] == b"ustar" and header[345] != 0:
                    prefix = (
                        header[345:500]
                        .split(b"\0", 1)[0]
                        .decode("utf-8", "surrogateescape")
                    )
                    member = f"{prefix}/{member}"
        if "size" in pax:
            if not _DECIMAL_RE.fullmatch(pax["size"]):
                raise fail(f"bad pax size {pax['size'][:40]!r}", "TAR_NUMBER")
            size = int(pax["size"])
        else:
            size = _number(header[124:136], "size", fail)
        meta = typeflag in _META
        limit = MAX_META_BYTES if meta else max_member_bytes
        if size > limit:
            raise fail(
                f"member of {size} bytes is larger than the "
                f"{'MAX_META_BYTES' if meta else 'max_member_bytes'} limit of "
                f"{limit} bytes",
                "TAR_MEMBER_TOO_LARGE",
            )
        padded = (size + _BLOCK - 1) // _BLOCK * _BLOCK
        keep = meta or regular
        data = read_member(padded, keep)
        if keep and padded != size:
            data = data[:size]
        if typeflag == ord("x"):
            pax = _pax(data, fail)
        elif typeflag == ord("L"):
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif typeflag in (ord("g"), ord("K")):
            pass  # global pax header, GNU long link name: nothing we use
        else:
            if member is not None:
                yield member, data
            pax = {}
            long_name = None
        offset += _BLOCK + padded


def iter_samples(
    stream: BinaryIO,
    *,
    shard: str | None = None,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_sample_bytes: int | None = None,
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """WebDataset samples: consecutive files sharing a key (the name up to the first
    dot of its last path component) grouped as ``(key, {extension: data})``, as
    webdataset's ``group_by_keys`` groups them. Files without an extension and
    ``__*__`` metadata files are skipped.

    ``shard`` and ``max_member_bytes`` as :func:`iter_files`; ``max_sample_bytes``
    (default: ``max_member_bytes``) caps the total bytes of one sample's members,
    which are held together (``TAR_SAMPLE_TOO_LARGE``). Raises
    :class:`TarFormatError`."""
    cap = max_member_bytes if max_sample_bytes is None else max_sample_bytes
    key: str | None = None
    group: dict[str, bytes] = {}
    total = 0
    files = iter_files(stream, shard=shard, max_member_bytes=max_member_bytes)
    for name, data in files:
        m = _KEY_RE.match(name)
        if m is None or m.group(1).rsplit("/", 1)[-1].startswith("__"):
            continue
        prefix, ext = m.group(1), m.group(2).lower()
        if prefix != key or ext in group:
            if key is not None:
                yield key, group
            key, group, total = prefix, {}, 0
        total += len(data)
        if total > cap:
            raise TarFormatError(
                f"sample {prefix!r} holds more than the max_sample_bytes limit of "
                f"{cap} bytes",
                shard=shard,
                member=name,
                rule="TAR_SAMPLE_TOO_LARGE",
            )
        group[ext] = data
    if key is not None:
        yield key, group
