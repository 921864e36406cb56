"""A streaming reader of tar archives, for shard reading on the hot path.

Python's ``tarfile`` (which webdataset's reader is built on) spends most of a shard
read building ``TarInfo`` objects and parsing the pax headers that webdataset's
writer puts before every member. This reader does only what reading samples
needs: it walks 512-byte headers (POSIX ustar; pax ``x`` records for ``path`` and
``size``; GNU ``L`` long names; base-256 sizes), verifies each header's checksum,
and yields regular files as ``(name, bytes)``. Everything else (directories, links,
global pax headers) is skipped. Malformed archives raise :class:`TarFormatError`
with the byte offset.

It reads the same archives ``tarfile`` reads for this purpose; the tests check it
against ``tarfile`` on USTAR, GNU and PAX archives and on webdataset's and atdata's
shards.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO, Final

__all__ = ["TarFormatError", "iter_files", "iter_samples"]

_BLOCK: Final = 512
_ZERO_BLOCK: Final = bytes(_BLOCK)
_REGULAR: Final = frozenset({ord("0"), 0, ord("7")})
_KEY_RE: Final = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


class TarFormatError(ValueError):
    """A tar archive that cannot be read: says what and at which byte offset."""


def _octal(field: bytes, offset: int) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 (big numbers)
        value = field[0] & 0x7F
        for byte in field[1:]:
            value = (value << 8) | byte
        return value
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarFormatError(f"bad octal number {field!r} at byte {offset}") from None


def _pax(data: bytes, offset: int) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            raise TarFormatError(f"bad pax record at byte {offset}") from None
        if length <= 0:
            raise TarFormatError(f"bad pax record length at byte {offset}")
        record = data[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode(
            "utf-8", "surrogateescape"
        )
        pos += length
    return records


def iter_files(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """``(name, data)`` of each regular file of the tar archive read from
    ``stream``, in archive order."""
    offset = 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    raw_read = stream.read

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

    while True:
        header = read(_BLOCK)
        if not header:
            return
        if len(header) < _BLOCK:
            raise TarFormatError(f"truncated header at byte {offset}")
        if header == _ZERO_BLOCK:
            return
        stored = _octal(header[148:156], offset + 148)
        computed = sum(header) - sum(header[148:156]) + 8 * 32
        if stored != computed:
            raise TarFormatError(f"header checksum mismatch at byte {offset}")
        size = (
            int(pax["size"]) if "size" in pax else _octal(header[124:136], offset + 124)
        )
        typeflag = header[156]
        padded = (size + _BLOCK - 1) // _BLOCK * _BLOCK
        data = read(padded)
        if len(data) < padded:
            raise TarFormatError(f"member data truncated at byte {offset + _BLOCK}")
        if padded != size:
            data = data[:size]
        if typeflag == ord("x"):
            pax = _pax(data, offset)
        elif typeflag == ord("L"):
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif typeflag == ord("g"):
            pass  # global pax header: nothing we use
        else:
            if typeflag in _REGULAR:
                if "path" in pax:
                    name = pax["path"]
                elif long_name is not None:
                    name = long_name
                else:
                    name = (
                        header[:100]
                        .split(b"\0", 1)[0]
                        .decode("utf-8", "surrogateescape")
                    )
                    if header[257:262] == b"ustar" and header[345] != 0:
                        prefix = (
                            header[345:500]
                            .split(b"\0", 1)[0]
                            .decode("utf-8", "surrogateescape")
                        )
                        name = f"{prefix}/{name}"
                yield name, data
            pax = {}
            long_name = None
        offset += _BLOCK + padded


def iter_samples(stream: BinaryIO) -> Iterator[tuple[str, dict[str, bytes]]]:
    """WebDataset samples: consecutive files sharing a key (the name up to the first
    dot of its last path component) grouped as ``(key, {extension: data})``, as
    webdataset's ``group_by_keys`` groups them. Files without an extension and
    ``__*__`` metadata files are skipped."""
    key: str | None = None
    group: dict[str, bytes] = {}
    for name, data in iter_files(stream):
        m = _KEY_RE.match(name)
        if m is None or m.group(1).rsplit("/", 1)[-1].startswith("__"):
            continue
        prefix, ext = m.group(1), m.group(2).lower()
        if prefix != key or ext in group:
            if key is not None:
                yield key, group
            key, group = prefix, {}
        group[ext] = data
    if key is not None:
        yield key, group
