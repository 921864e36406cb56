"""A content-addressed cache of compiled IR: the linked, linted model of a set of
source documents, and the diagnostics the stages reported, so that compiling the
same bytes again (``atdata-gen check`` of a tree that did not change) replays them
instead of parsing, lowering, linking and linting (issue 17).

**Key.** sha256 over the compiler's own code (:func:`compiler_digest`: every module
of ``atdata_gen`` and the runtime modules it reads, as the build manifest
fingerprints it), the Python version, and each document's path, relative path,
JSON-pointer base and sha256, in order, with the options that change the result
(externals and their packages). The same key means the same inputs to the same
code, so the entry is exactly what the stages would compute; paths are part of it
because every diagnostic and span cites them.

**Where.** ``$XDG_CACHE_HOME/atdata-gen/ir`` (default ``~/.cache/atdata-gen/ir``),
created with mode 0700; ``ATDATA_GEN_CACHE_DIR`` overrides it and
``ATDATA_GEN_CACHE=0`` (or ``off``, ``no``, ``false``) turns the cache off. A
directory that is a symbolic link, not ours (``st_uid``), or open to the group or
others is not used.

**Trust.** An entry is untrusted bytes: it is read only when it is a regular file
(never through a link) owned by us, not writable by others, at most
:data:`MAX_ENTRY_BYTES`; it must start with :data:`MAGIC` and the sha256 of its own
key and the rest (:func:`_seal`: an entry copied or renamed under another key is a
miss, never another side's model),
and it is unpickled by an unpickler that resolves only classes defined in
``atdata_gen``'s IR and diagnostics modules (never a function, never another
module). Anything else — a truncated, corrupted or foreign entry — is ignored (a
miss), never an error. Entries are written to a private temporary file and renamed
into place (a reader never sees half an entry). The cache holds at most
:data:`MAX_ENTRIES` entries and :data:`MAX_TOTAL_BYTES` bytes; the least recently
written are deleted first.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import stat
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "MAGIC",
    "MAX_ENTRIES",
    "MAX_ENTRY_BYTES",
    "MAX_TOTAL_BYTES",
    "cache_dir",
    "compiler_digest",
    "entry_key",
    "load",
    "store",
]

MAGIC = b"atdata-gen IR cache 2\n"
"""The first bytes of every entry (the format version is in it)."""
MAX_ENTRY_BYTES = 64 * 2**20
"""Largest entry read or written, in bytes (the 402 official Lexicons: ~1 MB)."""
MAX_ENTRIES = 32
"""Most entries kept."""
MAX_TOTAL_BYTES = 256 * 2**20
"""Most bytes kept, all entries together."""

_ALLOWED_MODULES = frozenset(
    {"atdata_gen.diagnostics", "atdata_gen.ir.link", "atdata_gen.ir.model"}
)
_OFF = frozenset({"0", "off", "no", "false"})


def cache_dir(create: bool = True) -> Path | None:
    """The private cache directory (created with mode 0700 when ``create``), or
    ``None`` when the cache is off or the directory is not safe to use (a link,
    another owner, group/other permissions)."""
    if os.environ.get("ATDATA_GEN_CACHE", "").strip().lower() in _OFF:
        return None
    explicit = os.environ.get("ATDATA_GEN_CACHE_DIR")
    if explicit:
        path = Path(explicit)
    else:
        base = os.environ.get("XDG_CACHE_HOME", "")
        if not os.path.isabs(base):  # the XDG spec: a relative path is ignored
            base = os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "atdata-gen" / "ir"
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                pass
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        return None
    if st.st_mode & 0o077:
        return None
    return path


_DIGEST: str | None = None


def compiler_digest() -> str:
    """sha256 of the compiler's code (see the build manifest's fingerprint), the
    runtime module the front end and linker call (``atmosphere/records.py``: AT-URIs
    and schema record keys) and the Python version; computed once per process."""
    global _DIGEST
    if _DIGEST is None:
        from .backend.manifest import _compiler_digest, _runtime_file

        h = hashlib.sha256(_compiler_digest().encode())
        h.update(_runtime_file("atmosphere", "records.py").read_bytes())
        h.update(sys.version.encode())
        _DIGEST = h.hexdigest()
    return _DIGEST


def entry_key(parts: Iterable[str]) -> str:
    """The key of an entry: sha256 of the compiler digest and ``parts`` (each
    document's identity and the options), NUL-separated. Raises ``OSError`` when
    the compiler's own files cannot be read."""
    h = hashlib.sha256(compiler_digest().encode())
    for part in parts:
        h.update(b"\0")
        h.update(part.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


class _Unpickler(pickle.Unpickler):
    """Resolves only classes defined in the IR and diagnostics modules."""

    def find_class(self, module: str, name: str) -> Any:
        if module not in _ALLOWED_MODULES or name.startswith("_"):
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed")
        obj = super().find_class(module, name)
        if not isinstance(obj, type) or obj.__module__ != module:
            raise pickle.UnpicklingError(f"{module}.{name} is not an IR class")
        return obj


_PLANS: dict[type, tuple[str, ...] | None] = {}


def _plan(cls: type) -> tuple[str, ...] | None:
    """The field names to rebuild an instance of ``cls`` from by calling
    ``cls(*values)``: for a dataclass of the allowed modules whose fields are all
    ``__init__`` parameters and that has no ``__post_init__``; else ``None``
    (pickled the default way). Calling the class is ~2x faster to unpickle than a
    slotted dataclass's ``__setstate__``."""
    if cls in _PLANS:
        return _PLANS[cls]
    import dataclasses

    plan = None
    if (
        dataclasses.is_dataclass(cls)
        and cls.__module__ in _ALLOWED_MODULES
        and not hasattr(cls, "__post_init__")
    ):
        fields = dataclasses.fields(cls)
        if all(f.init for f in fields):
            plan = tuple(f.name for f in fields)
    _PLANS[cls] = plan
    return plan


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        names = _plan(type(obj))
        if names is None:
            return NotImplemented
        return type(obj), tuple(getattr(obj, n) for n in names)


def _dumps(obj: Any) -> bytes:
    out = io.BytesIO()
    _Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return out.getvalue()


def _entry(key: str) -> Path | None:
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        return None
    where = cache_dir(create=False)
    return None if where is None else where / f"{key}.ir"


def _seal(key: str, payload: bytes) -> bytes:
    """The header line of an entry: sha256 of its key and payload, in hex."""
    return hashlib.sha256(key.encode() + b"\n" + payload).hexdigest().encode() + b"\n"


def load(key: str) -> Any | None:
    """The object stored under ``key``, or ``None`` (a miss: no entry, the cache
    off, or an entry that is not to be trusted; see the module docstring)."""
    path = _entry(key)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_uid != os.getuid()
            or st.st_mode & 0o022
            or st.st_size > MAX_ENTRY_BYTES
        ):
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(MAX_ENTRY_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    head = len(MAGIC) + 65
    if len(data) <= head or not data.startswith(MAGIC):
        return None
    digest, payload = data[len(MAGIC) : head], data[head:]
    if digest != _seal(key, payload):
        return None
    try:
        return _Unpickler(io.BytesIO(payload)).load()
    except Exception:  # noqa: BLE001  (a corrupted entry is a miss, whatever it raises)
        return None


def store(key: str, obj: Any) -> bool:
    """Store ``obj`` under ``key`` (atomically); ``False`` when the cache is off, the
    entry would be over :data:`MAX_ENTRY_BYTES`, or writing fails (a cache never
    fails the build)."""
    where = cache_dir()
    path = _entry(key)
    if where is None or path is None:
        return False
    try:
        payload = _dumps(obj)
        # Stored only when it reads back equal (a class whose constructor does
        # not rebuild it exactly is never cached wrong).
        if _Unpickler(io.BytesIO(payload)).load() != obj:
            return False
    except Exception:  # noqa: BLE001  (an object that does not pickle is not cached)
        return False
    if len(payload) + len(MAGIC) + 65 > MAX_ENTRY_BYTES:
        return False
    digest = _seal(key, payload)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=where)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(MAGIC + digest + payload)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError:
        return False
    _prune(where)
    return True


def _prune(where: Path) -> None:
    """Keep at most :data:`MAX_ENTRIES` entries and :data:`MAX_TOTAL_BYTES` bytes,
    deleting the oldest first; leftover temporary files older than an hour go."""
    try:
        names = os.listdir(where)
    except OSError:
        return
    entries: list[tuple[float, int, str]] = []
    for name in names:
        try:
            st = os.lstat(where / name)
        except OSError:
            continue
        if name.startswith(".tmp-"):
            import time

            if time.time() - st.st_mtime > 3600:
                _unlink(where / name)
            continue
        if name.endswith(".ir") and stat.S_ISREG(st.st_mode):
            entries.append((st.st_mtime, st.st_size, name))
    entries.sort(reverse=True)
    total = 0
    for i, (_, size, name) in enumerate(entries):
        total += size
        if i >= MAX_ENTRIES or total > MAX_TOTAL_BYTES:
            _unlink(where / name)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
