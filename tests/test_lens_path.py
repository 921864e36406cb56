"""``LensGraph.path``: the chain :meth:`LensGraph.find` composes, each step marked
registered or structural, bounded by ``max_steps``; ``find`` keeps its answers."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from atdata_runtime.lenses import Lens, LensGraph, LensNotFoundError
from atdata_runtime.samples import FieldSpec, PackableSample, sample_class

LABEL = FieldSpec("label", "label", "str")
SCORE = FieldSpec("score", "score", "float", optional=True)
NOTE = FieldSpec("note", "note", "str", optional=True)
COUNT = FieldSpec("count", "count", "int")


def version(name: str, ver: str, *fields: FieldSpec) -> type[PackableSample]:
    return sample_class(
        f"{name}_{ver.replace('.', '_')}",
        fields,
        schema_name=name,
        schema_version=ver,
    )


def _never(*_: Any) -> Any:
    raise AssertionError("a getter ran")


def registered(source: type[Any], target: type[Any], name: str) -> Lens[Any, Any]:
    return Lens(source, target, _never, name=name)


A1 = version("A", "1.0.0", LABEL)
A2 = version("A", "1.1.0", LABEL, SCORE)  # adds an optional field: structural
A3 = version("A", "2.0.0", COUNT)  # no structural lens from A1/A2
B1 = version("B", "1.0.0", LABEL)  # same fields, another schema: not structural
C1 = version("C", "1.0.0", COUNT, NOTE)


def test_same_class_is_the_empty_chain() -> None:
    assert LensGraph().path(A1, A1) == []


def test_structural_step_is_marked_structural() -> None:
    graph = LensGraph()
    graph.add_class(A1, A2)
    chain = graph.path(A1, A2)
    assert [(s.origin, s.source, s.target) for s in chain] == [("structural", A1, A2)]
    # and back: the source's extra optional field is dropped, still structural
    assert [s.origin for s in graph.path(A2, A1)] == ["structural"]


def test_chain_mixes_registered_and_structural_steps_and_find_composes_it() -> None:
    graph = LensGraph()
    lens_a2_c1 = graph.register(registered(A2, C1, "a2-to-c1"))
    chain = graph.path(A1, C1)
    assert [(s.origin, s.source, s.target) for s in chain] == [
        ("structural", A1, A2),
        ("registered", A2, C1),
    ]
    assert chain[1] is lens_a2_c1
    found = graph.find(A1, C1)
    assert found.origin == "composed"
    assert found.name == f"{chain[0].name} | a2-to-c1"


def test_registered_lens_wins_over_a_structural_one_between_the_same_classes() -> None:
    graph = LensGraph()
    made = graph.register(registered(A1, A2, "by-hand"))
    assert graph.path(A1, A2) == [made]


def test_no_structural_step_between_schemas_of_other_names() -> None:
    graph = LensGraph()
    graph.add_class(A1, B1)
    with pytest.raises(LensNotFoundError) as caught:
        graph.path(A1, B1)
    assert caught.value.reachable == []
    assert caught.value.reaching == []


def test_not_found_names_what_is_reachable_and_what_reaches() -> None:
    graph = LensGraph()
    graph.add_class(A2)
    graph.register(registered(A3, C1, "a3-to-c1"))
    with pytest.raises(LensNotFoundError) as caught:
        graph.path(A1, C1)
    assert caught.value.reachable == [A2]
    assert caught.value.reaching == [A3]


def test_cycles_end() -> None:
    graph = LensGraph()
    graph.register(registered(B1, C1, "b-c"))
    graph.register(registered(C1, B1, "c-b"))
    graph.register(registered(C1, A3, "c-a3"))
    assert [s.name for s in graph.path(B1, A3)] == ["b-c", "c-a3"]
    with pytest.raises(LensNotFoundError) as caught:
        graph.path(B1, A1)
    assert set(caught.value.reachable) == {C1, A3}


def _line(n: int) -> tuple[LensGraph, list[type[PackableSample]]]:
    graph = LensGraph()
    nodes = [version(f"N{i}", "1.0.0", LABEL) for i in range(n)]
    for a, b in itertools.pairwise(nodes):
        graph.register(registered(a, b, f"{a.schema_name}-{b.schema_name}"))
    return graph, nodes


def test_max_steps_bounds_the_chain_and_the_reachable_set() -> None:
    graph, nodes = _line(6)
    assert len(graph.path(nodes[0], nodes[5], max_steps=5)) == 5
    with pytest.raises(LensNotFoundError) as caught:
        graph.path(nodes[0], nodes[5], max_steps=4)
    assert caught.value.reachable == nodes[1:5]
    assert len(graph.path(nodes[0], nodes[5])) == 5  # no bound
    with pytest.raises(ValueError, match="max_steps"):
        graph.path(nodes[0], nodes[1], max_steps=0)


def test_shortest_chain_is_chosen() -> None:
    graph, nodes = _line(5)
    short = graph.register(registered(nodes[0], nodes[3], "shortcut"))
    chain = graph.path(nodes[0], nodes[4])
    assert chain[0] is short and len(chain) == 2


def test_reachable_lists_what_a_chain_leads_to_nearest_first() -> None:
    graph, nodes = _line(5)
    graph.add_class(A1, A2)
    assert graph.reachable(nodes[0]) == nodes[1:]
    assert graph.reachable(nodes[0], max_steps=2) == nodes[1:3]
    assert graph.reachable(nodes[4]) == []
    assert graph.reachable(A1) == [A2]  # structural
    with pytest.raises(ValueError, match="max_steps"):
        graph.reachable(nodes[0], max_steps=0)
    # the same set the error of a failed search names
    with pytest.raises(LensNotFoundError) as caught:
        graph.path(nodes[1], A1, max_steps=2)
    assert caught.value.reachable == graph.reachable(nodes[1], max_steps=2)
