"""The type-depth check's pre-pass (``atdata_gen.ir.depth._upper_bounds``) only
skips roots that cannot be reported: on random graphs of defs (nested objects,
arrays, unions, refs, self- and mutual recursion, unresolved refs), the reports are
exactly those of searching every root, in the same order, and the bound is never
below the depth the search reaches."""

from __future__ import annotations

import random

import pytest
from atdata_gen.diagnostics import Reporter, Span
from atdata_gen.ir import depth
from atdata_gen.ir.model import (
    ArrayType,
    Def,
    DefId,
    Field,
    IntegerType,
    IRType,
    ObjectType,
    RefType,
    UnionType,
)


def _type(rng: random.Random, names: list[DefId], path: str, budget: int) -> IRType:
    span = Span("g.json", 1, len(path), path)
    roll = rng.random()
    if budget <= 0 or roll < 0.15:
        return IntegerType()
    if roll < 0.35:
        target = rng.choice(names) if rng.random() < 0.95 else DefId("x.missing")
        return RefType(target, span)
    if roll < 0.45:
        refs = tuple(rng.sample(names, rng.randint(1, min(3, len(names)))))
        return UnionType(refs, False, span)
    if roll < 0.75:
        return ArrayType(_type(rng, names, path + "/items", budget - 1), span=span)
    fields = tuple(
        Field(
            f"f{i}",
            _type(rng, names, f"{path}/properties/f{i}", budget - 1),
            False,
            False,
            None,
            Span("g.json", 2, i + 1, f"{path}/properties/f{i}"),
        )
        for i in range(rng.randint(1, 3))
    )
    return ObjectType(fields, span)


def _graph(seed: int) -> dict[DefId, Def]:
    rng = random.Random(seed)
    names = [
        DefId(f"com.example.n{seed % 3}", f"d{i}") for i in range(rng.randint(1, 9))
    ]
    defs: dict[DefId, Def] = {}
    for name in names:
        body = _type(rng, names, f"/defs/{name.name}", rng.randint(1, 6))
        if not isinstance(body, ObjectType | ArrayType | UnionType | RefType):
            body = ObjectType((), Span("g.json", 3, 1, f"/defs/{name.name}"))
        defs[name] = Def(name, "object", body, None, Span("g.json", 4, 1))
    return defs


def _reports(defs: dict[DefId, Def], limit: int) -> list[tuple[str, str]]:
    reporter = Reporter()
    depth.check_type_depth(list(defs.values()), defs, reporter, limit)
    return [(repr(d.span), d.message) for d in reporter]


def _deepest(defs: dict[DefId, Def], root: DefId) -> int:
    """The deepest level the search reaches from ``root`` (no limit)."""
    search = depth._Search(defs, 10**9)
    deepest = 0
    walk = search.walk

    def spy(t: object, level: int, near: Span, stack: tuple[DefId, ...]) -> None:
        nonlocal deepest
        if isinstance(t, ObjectType | ArrayType | UnionType):
            deepest = max(deepest, level + 1)
        walk(t, level, near, stack)

    search.walk = spy  # type: ignore[method-assign]
    search.enter(root, 0, ())
    return deepest


@pytest.mark.parametrize("limit", [3, 5, 8])
def test_bounds_skip_only_roots_that_cannot_be_reported(
    monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    reported = skipped = cyclic = 0
    for seed in range(400):
        defs = _graph(seed)
        fast = _reports(defs, limit)
        bounds = depth._upper_bounds(defs, 10**9)
        for key in defs:
            assert bounds[key] >= _deepest(defs, key), (seed, key)
        skipped += sum(bounds[k] <= limit for k in defs)
        cyclic += any(t == k for k, d in defs.items() for t, _ in depth._local(d)[1])
        with monkeypatch.context() as m:
            m.setattr(depth, "_upper_bounds", lambda defs, cap: {})
            full = _reports(defs, limit)
        assert fast == full, seed
        reported += bool(full)
    # the generated graphs exercise both sides of the bound, and recursion
    assert reported > 20 and skipped > 100 and cyclic > 20, (reported, skipped, cyclic)


def test_a_cycle_past_the_limit_is_still_searched() -> None:
    """d0 → d1 → d0, each 3 arrays deep: neither alone passes a limit of 5, the
    cycle does (from d0: 3 levels, then d1's 3), and is reported at the innermost
    array of the def entered second, from each root."""
    defs: dict[DefId, Def] = {}
    for j in range(2):
        key = DefId("com.example.c", f"d{j}")
        node: IRType = RefType(DefId("com.example.c", f"d{1 - j}"))
        for k in range(3):
            node = ArrayType(node, span=Span("c.json", j + 1, 3 - k, f"/defs/d{j}/{k}"))
        defs[key] = Def(key, "array", node, None, Span("c.json", j + 1, 1))
    assert depth._upper_bounds(defs, 100)[DefId("com.example.c", "d0")] >= 6
    hits = _reports(defs, 5)
    assert len(hits) == 2, hits
    assert all("nested 6 levels deep" in m and "through" in m for _, m in hits), hits
    assert sorted(s.split("pointer=")[1] for s, _ in hits) == [
        "'/defs/d0/0')",
        "'/defs/d1/0')",
    ], hits
