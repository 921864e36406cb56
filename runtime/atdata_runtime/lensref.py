"""Lenses named by code reference: what a generated lens stub binds to.

A lens record (``science.alt.dataset.lens``) names its getter and putter as
``module:function`` at a commit of a repository; it never carries code, and nothing
here fetches or runs code from the network. ``atdata-gen build`` turns each lens
record into a typed stub module whose ``get``/``put`` delegate to a
:class:`RecordLens`. On first use (or :meth:`RecordLens.bind`) the binding looks
for the named module **in the local environment only**:

* not installed (or written in another language) → ``get``/``put`` raise
  ``NotImplementedError`` naming the repository, commit and path to install or
  write (``LENS_UNBOUND``);
* installed → the function is imported and its signature checked against the
  stub's generated classes: the getter must be ``(source: A) -> B``, the putter
  ``(view: B, source: A) -> A``, either as plain functions or as an
  :func:`atdata_runtime.lens.lens` object (its getter / putter). A class of the
  same schema name, version and wire fields generated into another package (the
  implementation's own generated code) is accepted: samples are converted field by
  field at the boundary. A mismatch raises :class:`LensBindingError`
  (``LENS_SIGNATURE``) naming the file and line of the function.

The record only chooses a *name*: a standard-library module is refused
(``LENS_BIND_REFUSED``; ``os:system`` is not a lens), and whatever is bound must
pass the signature check before it is ever called. :attr:`RecordLens.where` says
where the implementation came from.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .lens import Lens, LensError, _hints, _label, same_field_type
from .sample import PackableSample

__all__ = ["CodeReference", "LensBindingError", "RecordLens"]

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
    missing function) or names a module that may not be bound."""


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
    """A function converting ``src`` samples to the same-schema class ``dst``
    (field by field, by wire name), or ``None`` when they are the same class."""
    if src is dst:
        return None
    by_wire = {f.wire: f.name for f in src.sample_fields}
    pairs = [(by_wire[f.wire], f.name) for f in dst.sample_fields]

    def convert(sample: Any) -> Any:
        return dst(**{d: getattr(sample, s) for s, d in pairs})

    return convert


class RecordLens(Generic[A, B]):
    """The binding behind a generated lens stub: ``source`` → ``target`` classes
    (the stub's generated ones), the ``getter`` and ``putter``
    :class:`CodeReference`, the lens ``name`` and the ``record`` AT-URI (or source
    file). Thread-safe; binds once, on first use."""

    def __init__(
        self,
        source: type[A],
        target: type[B],
        getter: CodeReference,
        putter: CodeReference,
        *,
        name: str,
        record: str,
    ) -> None:
        self.source, self.target = source, target
        self.getter_ref, self.putter_ref = getter, putter
        self.name, self.record = name, record
        self._lock = threading.Lock()
        self._bound = False
        self._get: Callable[[A], B] | None = None
        self._put: Callable[[B, A], A] | None = None
        self._where: dict[str, str] = {}
        self._missing: dict[str, str] = {}

    # -- binding -------------------------------------------------------------------
    def _resolve(self, role: str, ref: CodeReference) -> Any:
        """The object ``ref`` names, or ``None`` (and a reason) when its module is
        not installed here."""
        if ref.language is not None and ref.language.lower() != "python":
            self._missing[role] = f"it is written in {ref.language}"
            return None
        top = ref.module.split(".")[0]
        if top in sys.stdlib_module_names or top in sys.builtin_module_names:
            raise LensBindingError(
                f"lens {self.name} ({self.record}): refusing to bind the {role} to "
                f"standard-library module {ref.module!r} [LENS_BIND_REFUSED]"
            )
        try:
            spec = importlib.util.find_spec(ref.module)
        except ModuleNotFoundError as exc:  # a parent package is missing
            if exc.name is None or not ref.module.startswith(exc.name):
                raise
            spec = None
        if spec is None:
            self._missing[role] = f"module {ref.module!r} is not installed"
            return None
        module = importlib.import_module(ref.module)
        if not hasattr(module, ref.function):
            raise LensBindingError(
                f"lens {self.name} ({self.record}): module {ref.module!r} "
                f"({getattr(module, '__file__', '?')}) has no {ref.function!r}; the "
                f"record names {ref.describe()} (another version installed?) "
                "[LENS_SIGNATURE]"
            )
        return getattr(module, ref.function)

    def _mismatch(self, role: str, obj: Any, wanted: str, got: str) -> LensBindingError:
        return LensBindingError(
            f"lens {self.name} ({self.record}): {role} {_where(obj)} is {got}; the "
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

    def bind(self) -> bool:
        """Look up and check both implementations (once). Returns whether both
        are bound. Raises :class:`LensBindingError` for a refused module or a
        wrong signature, and whatever importing an installed module raises."""
        with self._lock:
            if not self._bound:
                g = self._resolve("getter", self.getter_ref)
                p = self._resolve("putter", self.putter_ref)
                if g is not None:
                    self._get = self._bind_getter(g)
                    self._where["getter"] = _where(g)
                if p is not None:
                    self._put = self._bind_putter(p)
                    self._where["putter"] = _where(
                        p.putter_fn if isinstance(p, Lens) and p.putter_fn else p
                    )
                self._bound = True
        return self._get is not None and self._put is not None

    @property
    def where(self) -> dict[str, str]:
        """Where each bound implementation came from: ``{"getter": "pkg.mod:fn
        (/path/to/mod.py:12)", "putter": …}`` (empty before binding, or when
        nothing is installed)."""
        self.bind()
        return dict(self._where)

    def _unbound(self, role: str, ref: CodeReference) -> NotImplementedError:
        return NotImplementedError(
            f"lens {self.name} ({self.record}): the {role} is not available here "
            f"({self._missing.get(role, 'not bound')}) [LENS_UNBOUND]. Install or "
            f"write {ref.path} from {ref.repository} at commit {ref.commit}"
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
        """This binding as a :class:`~atdata_runtime.lens.Lens` (for
        :class:`~atdata_runtime.lens.LensGraph` and ``Dataset.as_type``). It claims
        no law: a lens record's code is unverified until
        :func:`~atdata_runtime.lens.check_lens_laws` says otherwise."""
        return Lens(
            self.source,
            self.target,
            self.get,
            self.put,
            name=self.name,
            laws=frozenset(),
            origin="record",
            where=self.record,
        )
