"""Lenses named by code reference: what a generated lens stub binds to.

A lens record (``science.alt.dataset.lens``) names its getter and putter as
``module:function`` at a commit of a repository; it never carries code, and nothing
here fetches or runs code from the network. ``atdata-gen build`` turns each lens
record into a typed stub module whose ``get``/``put`` delegate to a
:class:`RecordLens`. On first use (or :meth:`RecordLens.bind`) the binding looks
for the named module **in the local environment only**.

A lens record comes from a stranger, so it only ever picks a *name*, and a name is
bound only when every rule below holds, checked in this order. Rules 1–3 run before
any import machinery (no ``find_spec``, no parent package imported, no
``sys.modules`` lookup); rules 4–5 locate files without executing them; only then is
the module imported:

1. **Syntax** (``LENS_BIND_REFUSED``): ``path`` is ``module:function`` of at most
   :data:`MAX_CODE_PATH_LENGTH` (512) characters; every module segment and the
   function are Python identifiers (NFKC-normal as PEP 3131 reads them, not
   keywords) and none is a dunder
   (``__main__``, ``__init__``, ``__hello__``, ``__builtins__``…).
2. **Never bound** (``LENS_BIND_REFUSED``), even when allowlisted: standard-library
   top-level names (``sys.stdlib_module_names``, ``sys.builtin_module_names``) and
   the tools of :data:`NEVER_BOUND` (``test``, ``_pytest``, ``pip``,
   ``setuptools``, ``setup``, ``conftest``…).
3. **Allowlist** (``LENS_BIND_REFUSED``): the top-level package is on the lens
   allowlist (see below).
4. **Origin** (``LENS_BIND_REFUSED``): the top-level package is located with
   :class:`importlib.machinery.PathFinder` over ``sys.path`` (submodules over
   their parent's search locations; an already imported module's spec is taken from
   ``sys.modules``, and a module the program built in memory has no file to check),
   and refused when it lies directly in the working directory, the script's
   directory (``__main__.__file__``; ``sys.path[0]`` for a script) or the standard
   library (``sysconfig`` ``stdlib``/``platstdlib`` of the
   running and the base interpreter, ``site-packages`` excepted). A module that is
   not found is unbound (below).
5. **Provenance** (``LENS_COMMIT_MISMATCH``): when the module's file belongs to an
   installed distribution whose ``direct_url.json`` (PEP 610) records a VCS
   install, its URL and ``commit_id`` must match the record's ``repository`` and
   ``commit``; a mismatch is refused. A distribution installed from an index (no
   ``direct_url.json``), from an archive or from a local directory (``dir_info``,
   editable or not) is accepted, and so is a module on a plain ``sys.path`` entry:
   :attr:`RecordLens.where` then says the commit is **not verified**.

Then:

* not installed (or written in another language) → ``get``/``put`` raise
  ``NotImplementedError`` naming the repository, commit and path to install or
  write (``LENS_UNBOUND``);
* installed → the function is imported and its signature checked against the
  stub's generated classes: the getter must be ``(source: A) -> B``, the putter
  ``(view: B, source: A) -> A``, either as plain functions or as an
  :func:`atdata_runtime.lenses.lens` object (its getter / putter). A class of the
  same schema name, version and wire fields generated into another package (the
  implementation's own generated code) is accepted: samples are converted field by
  field at the boundary. A mismatch raises :class:`LensBindingError`
  (``LENS_SIGNATURE``) naming the file and line of the function. Importing an
  allowlisted package runs its code: that is what allowlisting it means.

**The lens allowlist** holds top-level package names (identifiers). Precedence:

* ``allow=`` given to :class:`RecordLens` or :meth:`RecordLens.bind` is the whole
  allowlist of that binding (an empty one allows nothing); nothing else is read;
* otherwise it is the union of the names given to :func:`allow_lens_packages`
  (process-wide), of :data:`LENS_PACKAGES_ENV` (``ATDATA_LENS_PACKAGES``,
  comma-separated) and of ``[tool.atdata-gen] lens-packages`` in the nearest
  ``pyproject.toml`` at or above the working directory (at most
  :data:`MAX_PYPROJECT_PARENTS`, 64, directories up; a regular file of at most
  :data:`MAX_PYPROJECT_BYTES`, 1 MiB; like the compiler, the nearest file is *the*
  project file and no further parent is read).

A malformed allowlist source raises :class:`LensAllowlistError`
(``LENS_ALLOWLIST_INVALID``) naming the file (and line) or variable.
:attr:`RecordLens.where` says where each implementation came from and whether its
commit was verified.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.machinery
import importlib.metadata
import inspect
import json
import keyword
import os
import re
import stat
import sys
import sysconfig
import threading
import tomllib
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import unquote, urlsplit

from ..samples.codec import PackableSample
from .core import Lens, LensError, _hints, _label, field_copier, same_field_type

__all__ = [
    "LENS_PACKAGES_ENV",
    "MAX_CODE_PATH_LENGTH",
    "MAX_DIRECT_URL_BYTES",
    "MAX_PYPROJECT_BYTES",
    "MAX_PYPROJECT_PARENTS",
    "NEVER_BOUND",
    "CodeReference",
    "LensAllowlistError",
    "LensBindRefused",
    "LensBindingError",
    "LensCommitMismatch",
    "RecordLens",
    "allow_lens_packages",
    "lens_allowlist",
    "lens_package_problem",
]

A = TypeVar("A", bound=PackableSample)
B = TypeVar("B", bound=PackableSample)


@dataclass(frozen=True)
class CodeReference:
    """A lens record's ``codeReference``: ``path`` (``module:function``) at
    ``commit`` of ``repository``; ``branch`` and ``language`` informational."""

    repository: str
    commit: str
    path: str
    branch: str | None = None
    language: str | None = None

    @property
    def module(self) -> str:
        """The dotted module name of :attr:`path`."""
        return self.path.partition(":")[0]

    @property
    def function(self) -> str:
        """The function (attribute) name of :attr:`path`."""
        return self.path.partition(":")[2]

    def describe(self) -> str:
        """``path`` in ``repository`` at ``commit`` (one line, for messages)."""
        return f"{self.path} in {self.repository} at commit {self.commit}"


class LensBindingError(LensError):
    """An installed implementation does not fit its lens record (wrong signature,
    missing function; ``LENS_SIGNATURE``), or, in the subclasses, a module that may
    not be bound. ``rule`` is the rule ID (also in the message)."""

    rule = "LENS_SIGNATURE"


class LensBindRefused(LensBindingError):
    """A lens record names a module that may not be bound: bad syntax, a dunder
    segment, a standard-library or tool package, a package off the allowlist, or a
    module found in the working directory, the script's directory or the standard
    library (module docstring, rules 1–4)."""

    rule = "LENS_BIND_REFUSED"


class LensCommitMismatch(LensBindRefused):
    """The installed distribution providing the module was installed from another
    repository or commit than the lens record names (its PEP 610
    ``direct_url.json``)."""

    rule = "LENS_COMMIT_MISMATCH"


class LensAllowlistError(LensBindingError):
    """An allowlist source is malformed: a name that is no identifier, an
    unreadable, oversized or invalid ``pyproject.toml``, a ``lens-packages`` that is
    not a list of strings, a bad ``ATDATA_LENS_PACKAGES``."""

    rule = "LENS_ALLOWLIST_INVALID"


MAX_CODE_PATH_LENGTH = 512
"""Longest ``module:function`` a lens record may name, in characters."""

MAX_PYPROJECT_BYTES = 1024 * 1024
"""Largest ``pyproject.toml`` read for ``lens-packages``, in bytes (1 MiB)."""

MAX_PYPROJECT_PARENTS = 64
"""How many directories, from the working directory up, are searched for the
nearest ``pyproject.toml``."""

LENS_PACKAGES_ENV = "ATDATA_LENS_PACKAGES"
"""Environment variable adding comma-separated names to the lens allowlist."""

NEVER_BOUND = frozenset(
    {
        "__main__",
        "_distutils_hack",
        "_pytest",
        "conftest",
        "distutils",
        "ensurepip",
        "idlelib",
        "manage",
        "noxfile",
        "pip",
        "pkg_resources",
        "py",
        "pytest",
        "setup",
        "setuptools",
        "site",
        "sitecustomize",
        "test",
        "tests",
        "usercustomize",
        "wheel",
    }
)
"""Top-level names never bound, even when allowlisted (besides the standard library's
``sys.stdlib_module_names``/``sys.builtin_module_names``): tools whose import runs a
program or a test suite, and the usual names of scripts beside a project's
``pyproject.toml``."""

_MAX_SHOWN = 80


def _shown(text: object) -> str:
    """``repr`` of untrusted text for a message, cut to :data:`_MAX_SHOWN`."""
    if not isinstance(text, str):
        return f"<{type(text).__name__}>"
    if len(text) <= _MAX_SHOWN:
        return repr(text)
    return f"{text[:_MAX_SHOWN]!r}… ({len(text)} characters)"


def _plain(text: object) -> str:
    """Untrusted text shown as is when short and printable, else as :func:`_shown`."""
    if isinstance(text, str) and len(text) <= _MAX_SHOWN and text.isprintable():
        return text
    return _shown(text)


def _identifier_problem(part: str) -> str | None:
    if not part:
        return "is empty"
    if not part.isidentifier():
        return "is not a Python identifier"
    if unicodedata.normalize("NFKC", part) != part:
        return "is not NFKC-normal (Python would read it as another name)"
    if keyword.iskeyword(part):
        return "is a Python keyword"
    if part.startswith("__") and part.endswith("__"):
        return "is a dunder name"
    return None


def lens_package_problem(name: object, *, stdlib: bool = True) -> str | None:
    """Why ``name`` cannot be on the lens allowlist (``None`` when it can): it must
    be a top-level package name — an identifier (NFKC-normal, no keyword, no
    dunder), no dot — and not one of :data:`NEVER_BOUND` nor (unless ``stdlib`` is
    false) a standard-library name of *this* interpreter. Generated code passes
    ``stdlib=False``: the standard library differs between Python versions, and
    generated modules must be the same everywhere."""
    if not isinstance(name, str):
        return "is not a string"
    if "." in name:
        return "is a dotted name (list the top-level package)"
    problem = _identifier_problem(name)
    if problem:
        return problem
    if stdlib and (name in sys.stdlib_module_names or name in sys.builtin_module_names):
        return "is a standard-library module, never bound"
    if name in NEVER_BOUND:
        return "is a tool or script name, never bound"
    return None


def _checked_names(names: Iterable[object], where: str) -> frozenset[str]:
    if isinstance(names, str):
        raise LensAllowlistError(
            f"{where}: give an iterable of package names, not the string "
            f"{_shown(names)} [LENS_ALLOWLIST_INVALID]"
        )
    out: set[str] = set()
    for n in names:
        problem = lens_package_problem(n)
        if problem:
            raise LensAllowlistError(
                f"{where}: lens package {_shown(n)} {problem} [LENS_ALLOWLIST_INVALID]"
            )
        assert isinstance(n, str)
        out.add(n)
    return frozenset(out)


_ALLOWED: set[str] = set()
_ALLOWED_LOCK = threading.Lock()


def allow_lens_packages(*packages: str) -> frozenset[str]:
    """Add top-level package names to the process-wide lens allowlist (they add to
    ``ATDATA_LENS_PACKAGES`` and ``lens-packages``; see the module docstring) and
    return the names added so far. Raises :class:`LensAllowlistError` for a name
    :func:`lens_package_problem` refuses; nothing is added then."""
    names = _checked_names(packages, "allow_lens_packages()")
    with _ALLOWED_LOCK:
        _ALLOWED.update(names)
        return frozenset(_ALLOWED)


def _pyproject_line(text: str, key: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=", line):
            return i
    return 0


def _pyproject_packages(start: Path) -> tuple[frozenset[str], str | None]:
    """``lens-packages`` of the nearest ``pyproject.toml`` at or above ``start``
    and that file's path (``None`` when there is none)."""
    directory = Path(os.path.abspath(start))
    for level, d in enumerate((directory, *directory.parents)):
        if level >= MAX_PYPROJECT_PARENTS:
            return frozenset(), None
        path = d / "pyproject.toml"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise LensAllowlistError(
                f"{path}: cannot read it ({exc.strerror}) [LENS_ALLOWLIST_INVALID]"
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise LensAllowlistError(
                f"{path}: not a regular file [LENS_ALLOWLIST_INVALID]"
            )
        if st.st_size > MAX_PYPROJECT_BYTES:
            raise LensAllowlistError(
                f"{path}: {st.st_size} bytes, over the {MAX_PYPROJECT_BYTES}-byte "
                "limit for reading lens-packages [LENS_ALLOWLIST_INVALID]"
            )
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_PYPROJECT_BYTES + 1)
            text = raw.decode("utf-8")
            data = tomllib.loads(text)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise LensAllowlistError(
                f"{path}: {exc} [LENS_ALLOWLIST_INVALID]"
            ) from None
        tool = data.get("tool")
        table = tool.get("atdata-gen") if isinstance(tool, dict) else None
        if not isinstance(table, dict) or "lens-packages" not in table:
            return frozenset(), str(path)
        value = table["lens-packages"]
        where = f"{path}:{_pyproject_line(text, 'lens-packages')}"
        if not isinstance(value, list):
            raise LensAllowlistError(
                f"{where}: [tool.atdata-gen] lens-packages must be a list of "
                "strings [LENS_ALLOWLIST_INVALID]"
            )
        return _checked_names(value, f"{where}: [tool.atdata-gen]"), str(path)
    return frozenset(), None


def _env_packages() -> frozenset[str]:
    value = os.environ.get(LENS_PACKAGES_ENV, "")
    names = [n.strip() for n in value.split(",") if n.strip()]
    return _checked_names(names, LENS_PACKAGES_ENV)


@dataclass(frozen=True)
class _Allowlist:
    packages: frozenset[str]
    sources: str  # for messages


def lens_allowlist(allow: Iterable[str] | None = None) -> frozenset[str]:
    """The effective lens allowlist: ``allow`` when given, else the union of
    :func:`allow_lens_packages`, ``ATDATA_LENS_PACKAGES`` and the nearest
    ``pyproject.toml``'s ``[tool.atdata-gen] lens-packages`` (module docstring).
    Raises :class:`LensAllowlistError` for a malformed source."""
    return _allowlist(allow).packages


def _allowlist(allow: Iterable[str] | None) -> _Allowlist:
    if allow is not None:
        return _Allowlist(_checked_names(allow, "allow="), "the allow= argument")
    with _ALLOWED_LOCK:
        process = frozenset(_ALLOWED)
    env = _env_packages()
    project, path = _pyproject_packages(Path.cwd())
    where = (
        f"[tool.atdata-gen] lens-packages in {path}"
        if path
        else "no pyproject.toml found for lens-packages"
    )
    return _Allowlist(
        process | env | project,
        f"allow_lens_packages(), {LENS_PACKAGES_ENV} and {where}",
    )


# -- locating without executing --------------------------------------------------


def _norm(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _site_dirs() -> set[str]:
    import site

    dirs = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    try:
        dirs.update(site.getsitepackages())
    except AttributeError:  # some embedded interpreters
        pass
    user = getattr(site, "USER_SITE", None)
    if isinstance(user, str):
        dirs.add(user)
    return {_norm(d) for d in dirs if d}


def _stdlib_dirs() -> set[str]:
    dirs = set()
    for key in ("stdlib", "platstdlib"):
        dirs.add(sysconfig.get_path(key))
        dirs.add(
            sysconfig.get_path(
                key,
                vars={
                    "installed_base": sys.base_prefix,
                    "base": sys.base_prefix,
                    "installed_platbase": sys.base_exec_prefix,
                    "platbase": sys.base_exec_prefix,
                },
            )
        )
    return {_norm(d) for d in dirs if d}


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _script_dirs() -> dict[str, str]:
    """``{normalized directory: what it is}`` of the directories modules may not be
    bound from: the working directory and the script's directory."""
    dirs = {_norm(os.getcwd()): "the working directory"}
    main = sys.modules.get("__main__")
    file = getattr(main, "__file__", None)
    if isinstance(file, str):
        dirs.setdefault(
            _norm(os.path.dirname(os.path.abspath(file))), "the script's directory"
        )
    return dirs


def _refused_place(location: str) -> str | None:
    """Why a module file or package directory at ``location`` may not be bound: its
    ``sys.path`` entry (the directory holding it) is the working or script directory,
    or it lies in the standard library outside ``site-packages``."""
    full = _norm(location)
    entry = os.path.dirname(full)
    where = _script_dirs().get(entry)
    if where:
        return (
            f"it lies in {where} ({entry}), where any file could claim its name; "
            "install the lens package (e.g. a src/ layout and `pip install -e .`) "
            "and run from elsewhere"
        )
    if any(_under(full, d) for d in _site_dirs()):
        return None
    for d in _stdlib_dirs():
        if _under(full, d):
            return f"it lies in the standard library ({d})"
    return None


@dataclass(frozen=True)
class _Located:
    origin: str | None  # the module's file (None: namespace package)
    places: tuple[str, ...]  # the top-level package's file or directories


def _spec_places(spec: importlib.machinery.ModuleSpec) -> tuple[str, ...]:
    if spec.submodule_search_locations:
        return tuple(str(p) for p in spec.submodule_search_locations)
    return (spec.origin,) if isinstance(spec.origin, str) and spec.has_location else ()


def _imported_spec(name: str) -> importlib.machinery.ModuleSpec | None:
    """The spec of an already imported module ``name`` (a location-less one for a
    module the program built in memory), or ``None`` when it is not imported."""
    module = sys.modules.get(name)
    if module is None:
        return None
    spec = getattr(module, "__spec__", None)
    if isinstance(spec, importlib.machinery.ModuleSpec):
        return spec
    found = importlib.machinery.ModuleSpec(name, None)
    path = getattr(module, "__path__", None)
    if isinstance(path, list):
        found.submodule_search_locations = [str(p) for p in path]
    return found


def _top_spec(top: str) -> importlib.machinery.ModuleSpec | None:
    spec = _imported_spec(top) or importlib.machinery.PathFinder.find_spec(
        top, sys.path
    )
    if spec is not None:
        return spec
    # Other finders installed by the environment (editable installs' finders).
    for finder in sys.meta_path:
        if finder in (
            importlib.machinery.PathFinder,
            importlib.machinery.BuiltinImporter,
            importlib.machinery.FrozenImporter,
        ):
            continue
        find = getattr(finder, "find_spec", None)
        if find is not None:
            found = find(top, None)
            if isinstance(found, importlib.machinery.ModuleSpec):
                return found
    return None


def _locate(parts: list[str]) -> _Located | None | str:
    """Find the module ``parts`` names without executing anything: a
    :class:`_Located`, ``None`` when the top-level package is not installed, or the
    reason a submodule is missing. Already imported modules are taken from
    ``sys.modules`` (their spec, their ``__path__``)."""
    spec = _top_spec(parts[0])
    if spec is None:
        return None
    places = _spec_places(spec)
    for i in range(1, len(parts)):
        name = ".".join(parts[: i + 1])
        sub = _imported_spec(name)
        if sub is None:
            parent = sys.modules.get(".".join(parts[:i]))
            search = getattr(parent, "__path__", None) if parent else None
            if search is None:
                search = spec.submodule_search_locations
            if search is None:
                return f"{'.'.join(parts[:i])!r} is not a package"
            sub = importlib.machinery.PathFinder.find_spec(name, list(search))
        if sub is None:
            return f"module {name!r} is not installed"
        spec = sub
    origin = spec.origin if spec.has_location and isinstance(spec.origin, str) else None
    return _Located(origin, places)


# -- provenance (PEP 610 direct_url.json) -----------------------------------------


def _repo_key(url: str) -> str:
    """A comparable form of a repository URL or path: ``host/path`` without
    credentials, ``git+``, a trailing ``/`` or ``.git`` (``file:`` + path for local
    repositories)."""
    u = url.strip().removeprefix("git+")
    scp = re.match(r"^(?:[\w.-]+@)?([\w.-]+):(?!//)(.+)$", u)
    if "://" not in u and scp and not os.path.isabs(u):
        host, path = scp.group(1).lower(), scp.group(2)
    else:
        parts = urlsplit(u)
        if parts.scheme in ("", "file"):
            local = unquote(parts.path) if parts.scheme else u
            return "file:" + os.path.normpath(local).removesuffix(".git")
        host, path = (parts.hostname or "").lower(), unquote(parts.path)
    path = path.strip("/").removesuffix(".git").rstrip("/")
    return f"{host}/{path}"


MAX_DIRECT_URL_BYTES = 65536
"""Largest ``direct_url.json`` read, in characters; a larger one is not used (the
commit is then not verified)."""


def _direct_url(dist: importlib.metadata.Distribution) -> dict[str, Any] | str | None:
    """``dist``'s PEP 610 ``direct_url.json``: the object, ``None`` when there is
    none, or why it cannot be used."""
    text = dist.read_text("direct_url.json")
    if text is None:
        return None
    if len(text) > MAX_DIRECT_URL_BYTES:
        return f"is over {MAX_DIRECT_URL_BYTES} characters"
    try:
        data = json.loads(text)
    except ValueError:
        return "is not JSON"
    return data if isinstance(data, dict) else "is not a JSON object"


def _owns(
    dist: importlib.metadata.Distribution,
    origin: str,
    direct: dict[str, Any] | None,
    by_record: bool,
) -> bool:
    """Whether the module file ``origin`` belongs to ``dist``: below the directory
    of an editable install (``dir_info.editable``), or (``by_record``) listed in its
    ``RECORD`` below its location."""
    dir_info = direct.get("dir_info") if direct else None
    url = direct.get("url") if direct else None
    if isinstance(dir_info, dict) and dir_info.get("editable") and isinstance(url, str):
        parts = urlsplit(url)
        if parts.scheme == "file" and _under(origin, _norm(unquote(parts.path))):
            return True
    if not by_record:
        return False
    base = _norm(str(dist.locate_file("")))
    if not _under(origin, base):
        return False
    rel = os.path.relpath(origin, base).replace(os.sep, "/")
    return any(str(f).replace(os.sep, "/") == rel for f in dist.files or ())


def _provenance(top: str, origin: str | None, ref: CodeReference, label: str) -> str:
    """Where the module at ``origin`` was installed from, for :attr:`RecordLens.where`.
    Raises :class:`LensCommitMismatch` when a VCS install names another repository or
    commit than ``ref``."""
    if origin is None:
        return (
            "no file (a namespace package or a module built in memory), not from a "
            "distribution — commit not verified"
        )
    full = _norm(origin)
    names = importlib.metadata.packages_distributions().get(top, [])
    candidates = [
        (d, True)
        for n in dict.fromkeys(names)
        for d in importlib.metadata.distributions(name=n)
    ]
    # Editable installs map no names (their RECORD lists a .pth or a finder).
    candidates += [(d, False) for d in importlib.metadata.distributions()]
    for dist, by_record in candidates:
        found = _direct_url(dist)
        direct = found if isinstance(found, dict) else None
        if not _owns(dist, full, direct, by_record):
            continue
        meta = dist.metadata
        who = f"distribution {meta['Name']} {meta['Version']}"
        vcs = direct.get("vcs_info") if direct else None
        if isinstance(found, str):
            return f"from {who} (its direct_url.json {found} — commit not verified)"
        if direct is None:
            return f"from {who} (no direct_url.json — commit not verified)"
        url = direct.get("url")
        if isinstance(vcs, dict) and isinstance(url, str):
            commit = vcs.get("commit_id")
            same_repo = _repo_key(url) == _repo_key(ref.repository)
            same_commit = (
                isinstance(commit, str) and commit.lower() == ref.commit.lower()
            )
            if not (same_repo and same_commit):
                raise LensCommitMismatch(
                    f"{label}: {ref.module!r} comes from {who}, installed from "
                    f"{_shown(url)} at commit {_shown(commit)}, but the lens record "
                    f"names {_shown(ref.repository)} at commit {_shown(ref.commit)}; "
                    "install the recorded commit [LENS_COMMIT_MISMATCH]"
                )
            return f"from {who} ({vcs.get('vcs', 'vcs')} {url} @ {commit}, matches the record)"
        if isinstance(dir_info := direct.get("dir_info"), dict):
            kind = "editable install" if dir_info.get("editable") else "install"
            return f"from {who} ({kind} of {url} — commit not verified)"
        return f"from {who} (archive {url} — commit not verified)"
    return "not from an installed distribution — commit not verified"


def _where(fn: Any) -> str:
    target = getattr(fn, "getter", fn)
    try:
        path = inspect.getsourcefile(target)
        line = inspect.getsourcelines(target)[1]
    except (OSError, TypeError):
        return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', target)}"
    return f"{target.__module__}:{target.__qualname__} ({path}:{line})"


def _wire(cls: type[PackableSample]) -> list[tuple[str, bool, Any]]:
    return sorted(
        ((f.wire, f.optional, f) for f in cls.sample_fields), key=lambda t: t[0]
    )


def same_schema(a: Any, b: type[PackableSample]) -> bool:
    """Whether class ``a`` is ``b`` or another generated class of the same schema
    (name, version, and wire fields of the same types and optionality)."""
    if a is b:
        return True
    if not (isinstance(a, type) and issubclass(a, PackableSample)):
        return False
    if (a.schema_name, a.schema_version) != (b.schema_name, b.schema_version):
        return False
    wa, wb = _wire(a), _wire(b)
    return len(wa) == len(wb) and all(
        x[0] == y[0] and x[1] == y[1] and same_field_type(x[2], y[2])
        for x, y in zip(wa, wb, strict=True)
    )


def _converter(src: type[Any], dst: type[Any]) -> Callable[[Any], Any] | None:
    """A function converting ``src`` samples to ``dst``, a class of the same
    schema (:func:`same_schema`), or ``None`` when they are the same class.

    When both are plain generated dataclasses with the same attribute names (two
    packages generated by the same compiler) the instance dictionary is copied
    into a new ``dst`` object (its ``__init__`` would only assign the same
    values; ``unknown_fields`` travel along); otherwise fields are copied by
    wire name through ``dst(...)``."""
    if src is dst:
        return None
    names = (
        {f.name for f in dataclasses.fields(src)}
        if dataclasses.is_dataclass(src)
        else None
    )
    plain = (
        names is not None
        and dataclasses.is_dataclass(dst)
        and names == {f.name for f in dataclasses.fields(dst)}
        and not hasattr(dst, "__post_init__")
        and "__slots__" not in vars(dst)
    )
    if plain:
        new = object.__new__

        def copy(sample: Any) -> Any:
            obj = new(dst)
            obj.__dict__.update(sample.__dict__)
            return obj

        return copy
    by_wire = {f.wire: f.name for f in src.sample_fields}
    return field_copier(
        [by_wire[f.wire] for f in dst.sample_fields],
        dst,
        [f.name for f in dst.sample_fields],
    )


class RecordLens(Generic[A, B]):
    """The binding behind a generated lens stub: ``source`` → ``target`` classes
    (the stub's generated ones), the ``getter`` and ``putter``
    :class:`CodeReference`, the lens ``name`` and the ``record`` AT-URI (or source
    file), and ``allow``: this binding's whole lens allowlist (default: the
    process-wide, environment and ``pyproject.toml`` sources; module docstring).
    Thread-safe; binds once, on first use."""

    def __init__(
        self,
        source: type[A],
        target: type[B],
        getter: CodeReference,
        putter: CodeReference,
        *,
        name: str,
        record: str,
        allow: Iterable[str] | None = None,
    ) -> None:
        # This binding's whole allowlist, or None for the default sources.
        self.allow = None if allow is None else tuple(allow)
        self.source, self.target = source, target
        self.getter_ref, self.putter_ref = getter, putter
        self.name, self.record = name, record
        self._lock = threading.Lock()
        self._bound = False
        self._get: Callable[[A], B] | None = None
        self._put: Callable[[B, A], A] | None = None
        self._where: dict[str, str] = {}
        self._missing: dict[str, str] = {}
        self._provenance: dict[str, str] = {}
        self._lenses: list[Lens[A, B]] = []

    # -- binding -------------------------------------------------------------------
    def _label(self, role: str) -> str:
        return f"lens {_shown(self.name)} ({_shown(self.record)}): the {role}"

    def _refuse(self, role: str, ref: CodeReference, why: str) -> LensBindRefused:
        return LensBindRefused(
            f"{self._label(role)} {_shown(ref.path)} is refused: {why} "
            "[LENS_BIND_REFUSED]"
        )

    def _parse(self, role: str, ref: CodeReference) -> tuple[list[str], str]:
        """Rule 1 (syntax): the module segments and the function of ``ref.path``."""
        path = ref.path
        if not isinstance(path, str):
            raise self._refuse(role, ref, "the code path is not a string")
        if len(path) > MAX_CODE_PATH_LENGTH:
            raise self._refuse(
                role,
                ref,
                f"{len(path)} characters, over the {MAX_CODE_PATH_LENGTH}-character "
                "limit",
            )
        if path.count(":") != 1:
            raise self._refuse(role, ref, "it is not of the form module:function")
        module, function = path.split(":")
        parts = module.split(".")
        for part in parts:
            problem = _identifier_problem(part)
            if problem:
                raise self._refuse(
                    role, ref, f"module segment {_shown(part)} {problem}"
                )
        problem = _identifier_problem(function)
        if problem:
            raise self._refuse(role, ref, f"function {_shown(function)} {problem}")
        return parts, function

    def _resolve(self, role: str, ref: CodeReference, allowed: _Allowlist) -> Any:
        """The object ``ref`` names, or ``None`` (and a reason in ``_missing``) when
        its module is not installed here; the rules of the module docstring, in
        order."""
        if ref.language is not None and ref.language.lower() != "python":
            self._missing[role] = f"it is written in {_plain(ref.language)}"
            return None
        parts, function = self._parse(role, ref)
        top, module_name = parts[0], ".".join(parts)
        if top in sys.stdlib_module_names or top in sys.builtin_module_names:
            raise self._refuse(
                role,
                ref,
                f"{top!r} is a standard-library module, never a lens",
            )
        if top in NEVER_BOUND:
            raise self._refuse(role, ref, f"{top!r} is a tool or script, never bound")
        if top not in allowed.packages:
            listed = ", ".join(sorted(allowed.packages)) or "empty"
            raise self._refuse(
                role,
                ref,
                f"its top-level package {top!r} is not on the lens allowlist "
                f"({listed}; from {allowed.sources}). If you trust "
                f"{_shown(ref.repository)}, install it and add {top!r} to "
                "[tool.atdata-gen] lens-packages, ATDATA_LENS_PACKAGES, "
                "allow_lens_packages() or allow=",
            )
        located = _locate(parts)
        if located is None or isinstance(located, str):
            self._missing[role] = located or f"module {module_name!r} is not installed"
            return None
        for place in located.places:
            why = _refused_place(place)
            if why:
                raise self._refuse(role, ref, f"package {top!r}: {why}")
        provenance = _provenance(top, located.origin, ref, self._label(role))
        module = sys.modules.get(module_name) or importlib.import_module(module_name)
        spec = getattr(module, "__spec__", None)
        actual = getattr(spec, "origin", None)
        if isinstance(actual, str) and getattr(spec, "has_location", False):
            why = _refused_place(actual)
            if why:  # the package's own code moved it (e.g. __path__ changes)
                raise self._refuse(role, ref, f"module {module_name!r}: {why}")
        if not hasattr(module, function):
            raise LensBindingError(
                f"lens {_shown(self.name)} ({_shown(self.record)}): module "
                f"{module_name!r} ({getattr(module, '__file__', '?')}) has no "
                f"{function!r}; the record names {ref.describe()} (another version "
                "installed?) [LENS_SIGNATURE]"
            )
        self._provenance[role] = provenance
        return getattr(module, function)

    def _mismatch(self, role: str, obj: Any, wanted: str, got: str) -> LensBindingError:
        return LensBindingError(
            f"lens {_shown(self.name)} ({_shown(self.record)}): {role} {_where(obj)} is {got}; the "
            f"lens record needs {wanted} [LENS_SIGNATURE]"
        )

    def _check(
        self, role: str, obj: Any, params: list[Any], ret: Any, want: list[type[Any]]
    ) -> None:
        labels = [_label(c) for c in want]
        wanted = f"({', '.join(labels[:-1])}) -> {labels[-1]}"
        got_types = [*params, ret]
        if len(params) != len(want) - 1 or not all(
            same_schema(g, w) for g, w in zip(got_types, want, strict=True)
        ):
            got = ", ".join(
                _label(g) if isinstance(g, type) else repr(g) for g in params
            )
            shown = _label(ret) if isinstance(ret, type) else repr(ret)
            raise self._mismatch(role, obj, wanted, f"({got}) -> {shown}")

    @staticmethod
    def _signature(obj: Any) -> tuple[list[Any], Any]:
        hints = _hints(obj)
        return [hints.get(p) for p in inspect.signature(obj).parameters], hints.get(
            "return"
        )

    def _bind_getter(self, obj: Any) -> Callable[[A], B]:
        if isinstance(obj, Lens):
            fn, params, ret = obj.getter, [obj.source], obj.target
        elif callable(obj):
            fn = obj
            params, ret = self._signature(obj)
        else:
            raise self._mismatch("getter", obj, "a function", type(obj).__name__)
        self._check("getter", obj, params, ret, [self.source, self.target])
        into, out = _converter(self.source, params[0]), _converter(ret, self.target)
        if into is None and out is None:
            return fn
        into_ = into or (lambda s: s)
        out_ = out or (lambda s: s)
        return lambda source: out_(fn(into_(source)))

    def _bind_putter(self, obj: Any) -> Callable[[B, A], A]:
        if isinstance(obj, Lens):
            if obj.putter_fn is None:
                raise self._mismatch("putter", obj, "a putter", "a read-only lens")
            fn, params, ret = obj.putter_fn, [obj.target, obj.source], obj.source
        elif callable(obj):
            fn = obj
            params, ret = self._signature(obj)
        else:
            raise self._mismatch("putter", obj, "a function", type(obj).__name__)
        self._check("putter", obj, params, ret, [self.target, self.source, self.source])
        view_in = _converter(self.target, params[0])
        src_in = _converter(self.source, params[1])
        out = _converter(ret, self.source)
        if view_in is None and src_in is None and out is None:
            return fn
        v = view_in or (lambda s: s)
        s_ = src_in or (lambda s: s)
        o = out or (lambda s: s)
        return lambda view, source: o(fn(v(view), s_(source)))

    def bind(self, *, allow: Iterable[str] | None = None) -> bool:
        """Look up and check both implementations (once). Returns whether both
        are bound. ``allow``, when given, is the whole lens allowlist of this call
        (else the one given to the constructor, else the default sources; module
        docstring). Raises :class:`LensBindRefused` (``LENS_BIND_REFUSED``) for a
        refused name or place, :class:`LensCommitMismatch`
        (``LENS_COMMIT_MISMATCH``), :class:`LensAllowlistError`
        (``LENS_ALLOWLIST_INVALID``), :class:`LensBindingError`
        (``LENS_SIGNATURE``) for a wrong signature, and whatever importing an
        allowlisted module raises. A refused binding is retried on the next call."""
        with self._lock:
            if not self._bound:
                allowed = _allowlist(allow if allow is not None else self.allow)
                self._missing.clear()
                g = self._resolve("getter", self.getter_ref, allowed)
                p = self._resolve("putter", self.putter_ref, allowed)
                if g is not None:
                    self._get = self._bind_getter(g)
                    self._where["getter"] = f"{_where(g)}; {self._provenance['getter']}"
                if p is not None:
                    self._put = self._bind_putter(p)
                    shown = p.putter_fn if isinstance(p, Lens) and p.putter_fn else p
                    self._where["putter"] = (
                        f"{_where(shown)}; {self._provenance['putter']}"
                    )
                self._bound = True
                for made in self._lenses:  # later calls skip this binding layer
                    self._install(made)
        return self._get is not None and self._put is not None

    def _install(self, made: Lens[A, B]) -> None:
        if self._get is not None:
            object.__setattr__(made, "getter", self._get)
        if self._put is not None:
            object.__setattr__(made, "putter_fn", self._put)

    @property
    def where(self) -> dict[str, str]:
        """Where each bound implementation came from and whether its commit was
        verified: ``{"getter": "pkg.mod:fn (/path/to/mod.py:12); from distribution
        pkg 0.1 (git https://… @ <commit>, matches the record)", "putter": …}``, or
        ``…; not from an installed distribution — commit not verified`` (empty when
        nothing is installed). Binds first (and raises what :meth:`bind` raises)."""
        self.bind()
        return dict(self._where)

    def _unbound(self, role: str, ref: CodeReference) -> NotImplementedError:
        return NotImplementedError(
            f"{self._label(role)} is not available here "
            f"({self._missing.get(role, 'not bound')}) [LENS_UNBOUND]. Install or "
            f"write {_plain(ref.path)} from {_plain(ref.repository)} at commit "
            f"{_plain(ref.commit)}"
        )

    # -- use -----------------------------------------------------------------------
    def get(self, source: A) -> B:
        """The view of ``source`` through the bound getter. Raises
        ``NotImplementedError`` when the getter is not installed here."""
        fn = self._get
        if fn is None:
            self.bind()
            fn = self._get
            if fn is None:
                raise self._unbound("getter", self.getter_ref)
        return fn(source)

    def put(self, view: B, source: A) -> A:
        """``source`` updated with ``view`` through the bound putter. Raises
        ``NotImplementedError`` when the putter is not installed here."""
        fn = self._put
        if fn is None:
            self.bind()
            fn = self._put
            if fn is None:
                raise self._unbound("putter", self.putter_ref)
        return fn(view, source)

    def lens(self) -> Lens[A, B]:
        """This binding as a :class:`~atdata_runtime.lenses.Lens` (for
        :class:`~atdata_runtime.lenses.LensGraph` and ``Dataset.as_type``). It claims
        no law: a lens record's code is unverified until
        :func:`~atdata_runtime.lenses.check_lens_laws` says otherwise."""
        made = Lens(
            self.source,
            self.target,
            self.get,
            self.put,
            name=self.name,
            laws=frozenset(),
            origin="record",
            where=self.record,
        )
        with self._lock:
            self._lenses.append(made)
            if self._bound:
                self._install(made)
        return made
