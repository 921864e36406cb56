"""Lenses between sample classes: registered, structural, composed, and checked.

A lens from ``A`` to ``B`` (Foster et al., "Combinators for bidirectional tree
transformations", TOPLAS 2007) is a getter ``get(a: A) -> B`` and, optionally, a
putter ``put(b: B, a: A) -> A`` that writes a changed view back into its source. A
well-behaved lens obeys

* **GetPut** ``put(get(a), a) == a`` (writing back an unchanged view changes
  nothing), and
* **PutGet** ``get(put(b, a)) == b`` (what was written back is what is seen).

``Lens.laws`` says which of the two a lens claims; :func:`check_lens_laws` tests
the claims on samples and on hypothesis-generated samples of the two classes.

Registering (the API mirrors atdata 0.7's ``@lens`` / ``.putter``)::

    @lens
    def v1_to_v2(source: ImageV1) -> ImageV2: ...

    @v1_to_v2.putter
    def v1_to_v2_put(view: ImageV2, source: ImageV1) -> ImageV1: ...

The source and target classes are read from the getter's annotations. ``a | b``
composes ``A → B`` with ``B → C``. :class:`LensGraph` (the default one is
:data:`lenses`) finds the shortest chain of lenses between two classes;
``Dataset[A](…).as_type(C)`` reads through it.

**Structural lenses** come for free between two versions of the same schema
(``schema_name`` equal) when every field of the target is either a field of the
source with the same wire name, type and optionality, or a field the source lacks
and the target declares optional — the
compatibility checker's "added optional field" and "removed field" changes
(``atdata-gen check``, rule catalogue in the README). The getter copies shared
fields and sets added ones to ``None``; the putter copies shared fields back and
keeps the source's removed fields. Such a lens obeys GetPut always and PutGet only
when the target adds no field (an added field's value has nowhere to go in the
source), so that is what its ``laws`` claim.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import operator
import typing
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..samples.codec import FieldSpec, PackableSample

__all__ = [
    "GET_PUT",
    "PUT_GET",
    "Lens",
    "LensError",
    "LensGraph",
    "LensLawError",
    "LensNotFoundError",
    "check_lens_laws",
    "compose",
    "field_copier",
    "lens",
    "lenses",
    "same_field_type",
    "structural_lens",
]

A = TypeVar("A", bound=PackableSample)
B = TypeVar("B", bound=PackableSample)
C = TypeVar("C", bound=PackableSample)

GET_PUT = "GetPut"
PUT_GET = "PutGet"


class LensError(TypeError):
    """A lens cannot be built from a function (missing or wrong annotations, a
    putter whose signature does not match the getter's)."""


class LensNotFoundError(LookupError):
    """No chain of lenses leads from ``source`` to ``target``. ``reachable`` lists
    the classes ``source`` does reach and ``reaching`` those that reach ``target``
    (nearest first), to show where a lens is missing."""

    def __init__(
        self,
        source: type[PackableSample],
        target: type[PackableSample],
        reachable: Sequence[type[PackableSample]],
        reaching: Sequence[type[PackableSample]],
    ) -> None:
        self.source, self.target = source, target
        self.reachable, self.reaching = list(reachable), list(reaching)

        def names(classes: Sequence[type[PackableSample]]) -> str:
            return ", ".join(_label(c) for c in classes) or "none"

        super().__init__(
            f"no lens from {_label(source)} to {_label(target)} [LENS_NO_PATH]; "
            f"{_label(source)} reaches: {names(self.reachable)}; "
            f"{_label(target)} is reached from: {names(self.reaching)}"
        )


class LensLawError(AssertionError):
    """A lens broke a law it claims. ``law`` is ``"GetPut"`` or ``"PutGet"``;
    ``source`` and ``view`` are the counterexample (``view`` is ``None`` for
    GetPut), ``result`` what the round trip produced."""

    def __init__(
        self, lens: Lens[Any, Any], law: str, source: Any, view: Any, result: Any
    ) -> None:
        self.lens, self.law = lens, law
        self.source, self.view, self.result = source, view, result
        given = f"source={source!r}" + ("" if view is None else f", view={view!r}")
        expected = source if law == GET_PUT else view
        super().__init__(
            f"lens {lens.name} breaks {law} [LENS_LAW]: {given}; "
            f"round trip gave {result!r}, expected {expected!r}"
        )


def _label(cls: type[Any]) -> str:
    name = getattr(cls, "schema_name", "") or cls.__name__
    version = getattr(cls, "schema_version", "")
    return f"{name}@{version}" if version else name


@dataclass(frozen=True, eq=False)
class Lens(Generic[A, B]):
    """A lens from ``source`` to ``target`` (see the module docstring).

    ``getter(a) -> B``; ``putter(b, a) -> A`` or ``None`` (read-only lens);
    ``laws`` the laws it claims (both when it has a putter, unless built
    otherwise); ``origin`` is ``"registered"``, ``"structural"``, ``"composed"``
    or ``"identity"``; ``where`` says where the code came from (module:function)."""

    source: type[A]
    target: type[B]
    getter: Callable[[A], B]
    putter_fn: Callable[[B, A], A] | None = None
    name: str = ""
    laws: frozenset[str] = frozenset()
    origin: str = "registered"
    where: str = ""

    def get(self, source: A) -> B:
        """The view of ``source``."""
        return self.getter(source)

    def put(self, view: B, source: A) -> A:
        """``source`` updated with ``view``. Raises ``TypeError`` for a read-only
        lens."""
        if self.putter_fn is None:
            raise TypeError(f"lens {self.name} has no putter (read-only)")
        return self.putter_fn(view, source)

    def __call__(self, source: A) -> B:
        return self.getter(source)

    def putter(self, fn: Callable[[B, A], A]) -> Callable[[B, A], A]:
        """Decorator: register ``fn(view: B, source: A) -> A`` as this lens's
        putter (in place, also in the graph holding it). Raises :class:`LensError`
        when ``fn``'s annotations name other classes."""
        hints = _hints(fn)
        params = list(inspect.signature(fn).parameters)
        if len(params) != 2:
            raise LensError(f"putter {_where(fn)} must take (view, source)")
        wanted = (self.target, self.source, self.source)
        got = (hints.get(params[0]), hints.get(params[1]), hints.get("return"))
        for want, have in zip(wanted, got, strict=True):
            if have is not None and have is not want:
                raise LensError(
                    f"putter {_where(fn)} is annotated {got}, the getter of "
                    f"{self.name} needs ({self.target.__name__}, "
                    f"{self.source.__name__}) -> {self.source.__name__}"
                )
        object.__setattr__(self, "putter_fn", fn)
        object.__setattr__(self, "laws", frozenset({GET_PUT, PUT_GET}))
        return fn

    def __or__(self, other: Lens[B, C]) -> Lens[A, C]:
        """``self`` then ``other``: ``A → B → C``."""
        return compose(self, other)

    @property
    def lawful(self) -> bool:
        """Whether the lens claims both laws (a well-behaved lens)."""
        return self.laws >= {GET_PUT, PUT_GET}

    @staticmethod
    def identity(sample_type: type[A]) -> Lens[A, A]:
        """The lens from ``sample_type`` to itself."""
        return Lens(
            sample_type,
            sample_type,
            lambda a: a,
            lambda b, a: b,
            name=f"id[{_label(sample_type)}]",
            laws=frozenset({GET_PUT, PUT_GET}),
            origin="identity",
        )

    def __repr__(self) -> str:
        mode = "get/put" if self.putter_fn else "get"
        return (
            f"<Lens {self.name}: {_label(self.source)} → {_label(self.target)} "
            f"({self.origin}, {mode})>"
        )


def compose(*chain: Lens[Any, Any]) -> Lens[Any, Any]:
    """The lens ``chain[0] | chain[1] | …`` (each target is the next source).
    ``get`` applies the getters in order; ``put(c, a)`` recomputes the
    intermediate views from ``a`` and puts back from the last lens to the first,
    so composition keeps every law that all parts claim. Raises
    :class:`LensError` for a broken chain or an empty one."""
    if not chain:
        raise LensError("compose needs at least one lens")
    for left, right in itertools.pairwise(chain):
        if left.target is not right.source:
            raise LensError(
                f"cannot compose {left.name} ({_label(left.target)}) with "
                f"{right.name} ({_label(right.source)})"
            )
    if len(chain) == 1:
        return chain[0]
    parts = tuple(chain)

    def get(a: Any) -> Any:
        for part in parts:
            a = part.getter(a)
        return a

    put: Callable[[Any, Any], Any] | None = None
    if all(p.putter_fn is not None for p in parts):

        def put(view: Any, source: Any) -> Any:
            sources = [source]
            for part in parts[:-1]:
                sources.append(part.getter(sources[-1]))
            for part, s in zip(reversed(parts), reversed(sources), strict=True):
                view = part.put(view, s)
            return view

    laws = frozenset.intersection(*(p.laws for p in parts))
    return Lens(
        parts[0].source,
        parts[-1].target,
        get,
        put,
        name=" | ".join(p.name for p in parts),
        laws=laws if put is not None else frozenset(),
        origin="composed",
    )


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception as exc:  # unresolvable forward references
        raise LensError(f"cannot read the annotations of {_where(fn)}: {exc}") from exc


def _where(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', fn)}"


def _sample_class(value: Any, fn: Callable[..., Any], what: str) -> type[Any]:
    if not (isinstance(value, type) and issubclass(value, PackableSample)):
        raise LensError(
            f"{_where(fn)}: the {what} must be annotated with a PackableSample "
            f"class, got {value!r}"
        )
    return value


def _fields(cls: type[PackableSample]) -> dict[str, FieldSpec]:
    return {f.wire: f for f in cls.sample_fields}


def same_field_type(a: FieldSpec, b: FieldSpec) -> bool:
    """Whether two fields hold the same type (kind, dtype, shape, encoding, item
    type), whatever their names and optionality."""

    def shape(f: FieldSpec) -> tuple[Any, ...]:
        return (
            f.kind,
            f.dtype,
            f.shape,
            f.encoding,
            None if f.items is None else shape(f.items),
        )

    return shape(a) == shape(b)


def structural_lens(
    source: type[A], target: type[B], *, same_schema: bool = True
) -> Lens[A, B] | None:
    """The structural lens from ``source`` to ``target`` when it is safe (see the
    module docstring), else ``None``. With ``same_schema`` (default) both classes
    must carry the same non-empty ``schema_name``: unrelated schemas that happen to
    share field names are not silently converted."""
    if source is target:
        return None
    if same_schema and (
        not source.schema_name or source.schema_name != target.schema_name
    ):
        return None
    src, dst = _fields(source), _fields(target)
    shared: list[tuple[str, str]] = []  # (source attribute, target attribute)
    added: list[str] = []
    for wire, spec in dst.items():
        have = src.get(wire)
        if have is None:
            if not spec.optional:
                return None
            added.append(spec.name)
            continue
        if not same_field_type(have, spec) or have.optional != spec.optional:
            return None
        shared.append((have.name, spec.name))

    get = field_copier(
        [s for s, _ in shared], target, [t for _, t in shared], dict.fromkeys(added)
    )

    def put(b: B, a: A) -> A:
        return dataclasses.replace(a, **{s: getattr(b, t) for s, t in shared})

    laws = {GET_PUT} if added else {GET_PUT, PUT_GET}
    return Lens(
        source,
        target,
        get,
        put,
        name=f"structural[{_label(source)} → {_label(target)}]",
        laws=frozenset(laws),
        origin="structural",
    )


def field_copier(
    source_names: Sequence[str],
    target: type[B],
    target_names: Sequence[str],
    constants: dict[str, Any] | None = None,
) -> Callable[[Any], B]:
    """A function making a ``target`` sample from any object: attribute
    ``source_names[i]`` becomes field ``target_names[i]``, ``constants`` fill the
    rest (through ``target``'s own ``__init__``). The hot path of structural
    lenses and of converting between two generated classes of one schema: the
    values are read with one ``operator.attrgetter`` call."""
    names = tuple(target_names)
    extra = dict(constants or {})
    if not names:
        return lambda _: target(**extra)
    read: Callable[[Any], Any] = operator.attrgetter(*source_names)
    if len(names) == 1:
        return lambda a: target(**{names[0]: read(a)}, **extra)
    return lambda a: target(**dict(zip(names, read(a), strict=True)), **extra)


class LensGraph:
    """Lenses between sample classes as a directed graph: registered lenses are
    edges, and structural lenses (:func:`structural_lens`) connect the versions of
    a schema among the classes the graph knows. :meth:`find` returns the shortest
    chain (fewest lenses; registered lenses win ties over structural ones)."""

    def __init__(self) -> None:
        self._edges: dict[type[Any], dict[type[Any], Lens[Any, Any]]] = {}
        self._classes: dict[type[Any], None] = {}

    def add_class(self, *classes: type[PackableSample]) -> None:
        """Make ``classes`` known (for structural lenses) without a lens."""
        for cls in classes:
            self._classes.setdefault(cls)

    def register(self, item: Lens[Any, Any]) -> Lens[Any, Any]:
        """Add ``item`` (replacing an earlier lens between the same two classes)."""
        self.add_class(item.source, item.target)
        self._edges.setdefault(item.source, {})[item.target] = item
        return item

    @property
    def classes(self) -> list[type[PackableSample]]:
        """The classes the graph knows, in registration order."""
        return list(self._classes)

    def _versions(self) -> dict[str, list[type[Any]]]:
        """The known classes by ``schema_name`` (registration order), read now:
        structural lenses only join classes of one name."""
        groups: dict[str, list[type[Any]]] = {}
        for cls in self._classes:
            name = getattr(cls, "schema_name", "")
            if name:
                groups.setdefault(name, []).append(cls)
        return groups

    def _neighbours(
        self, cls: type[Any], groups: dict[str, list[type[Any]]] | None = None
    ) -> list[Lens[Any, Any]]:
        out = dict(self._edges.get(cls, {}))
        if groups is None:
            groups = self._versions()
        for other in groups.get(getattr(cls, "schema_name", ""), ()):
            if other not in out and other is not cls:
                found = structural_lens(cls, other)
                if found is not None:
                    out[other] = found
        return list(out.values())

    def _versions_with(
        self, *classes: type[PackableSample]
    ) -> dict[str, list[type[Any]]]:
        self.add_class(*classes)
        return self._versions()

    def _search(
        self,
        source: type[Any],
        target: type[Any] | None,
        max_steps: int | None,
        groups: dict[str, list[type[Any]]],
    ) -> dict[type[Any], Lens[Any, Any] | None]:
        """Breadth-first from ``source`` (until ``target``, when given): each
        class reached → the lens that reached it first."""
        _check_steps(max_steps)
        via: dict[type[Any], Lens[Any, Any] | None] = {source: None}
        depth = {source: 0}
        queue = deque([source])
        while queue and (target is None or target not in via):
            node = queue.popleft()
            if max_steps is not None and depth[node] >= max_steps:
                continue
            for edge in self._neighbours(node, groups):
                if edge.target not in via:
                    via[edge.target] = edge
                    depth[edge.target] = depth[node] + 1
                    queue.append(edge.target)
        return via

    def reachable(
        self, source: type[PackableSample], *, max_steps: int | None = None
    ) -> list[type[PackableSample]]:
        """The classes a chain of at most ``max_steps`` lenses (``None``: any)
        leads to from ``source``, nearest first, ``source`` left out (what
        :class:`LensNotFoundError` lists as ``reachable``). Makes ``source``
        known. Raises ``ValueError`` for a ``max_steps`` below 1."""
        via = self._search(source, None, max_steps, self._versions_with(source))
        return [c for c in via if c is not source]

    def path(
        self,
        source: type[PackableSample],
        target: type[PackableSample],
        *,
        max_steps: int | None = None,
    ) -> list[Lens[Any, Any]]:
        """The shortest chain of lenses from ``source`` to ``target``, source
        first (``[]`` when they are the same class): the steps :meth:`find`
        composes. Each step's ``origin`` says what it is: ``"registered"`` (a
        lens given to :meth:`register`) or ``"structural"`` (derived by
        :func:`structural_lens` between two known versions of one schema).
        ``max_steps`` (``None``: no bound) is the longest chain considered.
        Makes both classes known (:meth:`add_class`). Raises
        :class:`LensNotFoundError` (``reachable``: the classes ``source``
        reaches within ``max_steps`` steps, nearest first; ``reaching``: those
        that reach ``target``, nearest first) and ``ValueError`` for a
        ``max_steps`` below 1."""
        if source is target:
            _check_steps(max_steps)
            return []
        groups = self._versions_with(source, target)
        via = self._search(source, target, max_steps, groups)
        if target not in via:
            reachable = [c for c in via if c is not source]
            into: dict[type[Any], list[type[Any]]] = {}
            for cls in self._classes:
                for edge in self._neighbours(cls, groups):
                    into.setdefault(edge.target, []).append(cls)
            reverse = self._bfs(target, lambda n: into.get(n, ()))
            reaching = [c for c in reverse if c is not target]
            raise LensNotFoundError(source, target, reachable, reaching)
        chain: list[Lens[Any, Any]] = []
        at: type[Any] = target
        while at is not source:
            step = via[at]
            assert step is not None
            chain.append(step)
            at = step.source
        chain.reverse()
        return chain

    def _bfs(
        self, start: type[Any], step: Callable[[type[Any]], Iterable[type[Any]]]
    ) -> dict[type[Any], type[Any] | None]:
        parent: dict[type[Any], type[Any] | None] = {start: None}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for nxt in step(node):
                if nxt not in parent:
                    parent[nxt] = node
                    queue.append(nxt)
        return parent

    def find(self, source: type[A], target: type[B]) -> Lens[A, B]:
        """The lens from ``source`` to ``target`` along the shortest chain
        (:meth:`path`, composed): the identity when they are the same class.
        Raises :class:`LensNotFoundError` naming the nearest classes on both
        sides."""
        if source is target:
            return Lens.identity(source)  # type: ignore[return-value]
        return compose(*self.path(source, target))


def _check_steps(max_steps: int | None) -> None:
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, not {max_steps}")


lenses = LensGraph()
"""The default lens graph: ``@lens`` registers here; ``Dataset.as_type`` looks
here unless given another graph."""


@typing.overload
def lens(fn: Callable[[A], B], *, graph: LensGraph | None = None) -> Lens[A, B]: ...


@typing.overload
def lens(
    fn: None = None, *, graph: LensGraph | None = None
) -> Callable[[Callable[[A], B]], Lens[A, B]]: ...


def lens(
    fn: Callable[[A], B] | None = None, *, graph: LensGraph | None = None
) -> Lens[A, B] | Callable[[Callable[[A], B]], Lens[A, B]]:
    """Decorator: make ``fn(source: A) -> B`` the getter of a lens from ``A`` to
    ``B`` (both read from the annotations) and register it in ``graph`` (default
    :data:`lenses`). Returns the :class:`Lens`; add a putter with
    ``@<lens>.putter``. Raises :class:`LensError` for missing annotations or
    non-sample classes."""

    def build(getter: Callable[[A], B]) -> Lens[A, B]:
        hints = _hints(getter)
        params = list(inspect.signature(getter).parameters)
        if len(params) != 1:
            raise LensError(f"getter {_where(getter)} must take one source sample")
        source = _sample_class(hints.get(params[0]), getter, "source parameter")
        target = _sample_class(hints.get("return"), getter, "return type")
        made: Lens[A, B] = Lens(
            source,
            target,
            getter,
            name=getattr(getter, "__name__", "lens"),
            where=_where(getter),
        )
        (graph or lenses).register(made)
        return made

    return build if fn is None else build(fn)


def check_lens_laws(
    item: Lens[A, B],
    samples: Iterable[A] = (),
    *,
    views: Iterable[B] = (),
    max_examples: int = 100,
    generate: bool = True,
    derandomize: bool = True,
    laws: Iterable[str] | None = None,
) -> None:
    """Check the ``laws`` (default: those ``item`` claims; a lens bound from a
    lens record claims none, so name them: ``laws=(GET_PUT, PUT_GET)``): GetPut on each of ``samples`` and PutGet on
    each pair of ``views`` × ``samples``, then (``generate``) on up to
    ``max_examples`` samples and views that hypothesis generates from the two
    classes' fields (``atdata_runtime.lenses.strategies``; hypothesis must be installed).
    Equality is :meth:`PackableSample.__eq__` (arrays by dtype and value; NaN is
    not generated). ``derandomize`` (default) makes the generated examples the
    same on every run, so a CI result reproduces. Raises :class:`LensLawError` with the (shrunk)
    counterexample."""
    wanted = item.laws if laws is None else frozenset(laws)
    unknown = wanted - {GET_PUT, PUT_GET}
    if unknown:
        raise ValueError(f"unknown lens laws {sorted(unknown)} (GetPut, PutGet)")
    getput = GET_PUT in wanted
    putget = PUT_GET in wanted
    fixed = list(samples)
    for a in fixed:
        _check_one(item, a, None, getput, False)
    for b in views:
        for a in fixed:
            _check_one(item, a, b, False, putget)
    if not generate or not (getput or putget):
        return
    from hypothesis import HealthCheck, given, settings

    from .strategies import samples as sample_strategy

    checks = settings(
        max_examples=max_examples,
        database=None,
        deadline=None,
        derandomize=derandomize,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )

    if getput:

        @checks
        @given(sample_strategy(item.source))
        def prop_getput(a: A) -> None:
            _check_one(item, a, None, True, False)

        prop_getput()
    if putget:

        @checks
        @given(sample_strategy(item.source), sample_strategy(item.target))
        def prop_putget(a: A, b: B) -> None:
            _check_one(item, a, b, False, True)

        prop_putget()


def _check_one(
    item: Lens[Any, Any], a: Any, b: Any, getput: bool, putget: bool
) -> None:
    if getput:
        back = item.put(item.get(a), a)
        if not back == a:
            raise LensLawError(item, GET_PUT, a, None, back)
    if putget:
        seen = item.get(item.put(b, a))
        if not seen == b:
            raise LensLawError(item, PUT_GET, a, b, seen)
