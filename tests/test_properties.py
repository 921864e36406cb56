"""Property tests on official record Lexicons: generated valid records round-trip
unchanged; every single invalidating edit is rejected; the atproto SDK's models
accept the same valid records (differential test)."""

from __future__ import annotations

import importlib
import json
from typing import Any

import pytest
from atdata_gen.ir.link import LinkedModel
from atdata_gen.ir.model import DefId
from atdata_gen.pipeline import BuildOptions, compile_sources
from atdata_gen.testing.strategies import mutation_sites, wire_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from .conftest import OFFICIAL

TARGETS = [
    # (def, module, class, atproto SDK model path)
    (
        DefId("app.bsky.feed.post"),
        "app.bsky.feed.post",
        "Post",
        "AppBskyFeedPost.Record",
    ),
    (
        DefId("app.bsky.actor.profile"),
        "app.bsky.actor.profile",
        "Profile",
        "AppBskyActorProfile.Record",
    ),
    (
        DefId("app.bsky.feed.defs", "postView"),
        "app.bsky.feed.defs",
        "PostView",
        "AppBskyFeedDefs.PostView",
    ),
    (
        DefId("com.atproto.repo.strongRef"),
        "com.atproto.repo.strong_ref",
        "StrongRef",
        "ComAtprotoRepoStrongRef.Main",
    ),
    (
        DefId("app.bsky.feed.threadgate"),
        "app.bsky.feed.threadgate",
        "Threadgate",
        "AppBskyFeedThreadgate.Record",
    ),
    (
        DefId("app.bsky.graph.list"),
        "app.bsky.graph.list",
        "List",
        "AppBskyGraphList.Record",
    ),
]
IDS = [str(t[0]) for t in TARGETS]

_MODEL: list[LinkedModel] = []


def linked() -> LinkedModel:
    if not _MODEL:
        result = compile_sources(BuildOptions([OFFICIAL], "p"))
        assert result.model is not None and not result.reporter.has_errors
        _MODEL.append(result.model)
    return _MODEL[0]


def _cls(package: str, module: str, name: str) -> Any:
    return getattr(importlib.import_module(f"{package}.{module}"), name)


def _sdk(path: str) -> Any:
    from atproto import models

    obj: Any = models
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.filter_too_much,
    ],
)


@pytest.mark.parametrize(("target", "module", "name", "sdk"), TARGETS, ids=IDS)
@SETTINGS
@given(data=st.data())
def test_valid_records_round_trip_exactly(
    corpus_package: str,
    target: DefId,
    module: str,
    name: str,
    sdk: str,
    data: st.DataObject,
) -> None:
    record = data.draw(wire_data(linked(), target))
    cls = _cls(corpus_package, module, name)
    text = json.dumps(record, ensure_ascii=False)
    assert json.dumps(cls.from_wire(record).to_wire(), ensure_ascii=False) == text
    assert (
        json.dumps(json.loads(cls.from_json(text).to_json()), ensure_ascii=False)
        == text
    )


@pytest.mark.parametrize(("target", "module", "name", "sdk"), TARGETS, ids=IDS)
@SETTINGS
@given(data=st.data())
def test_every_mutation_is_rejected(
    corpus_package: str,
    target: DefId,
    module: str,
    name: str,
    sdk: str,
    data: st.DataObject,
) -> None:
    record = data.draw(wire_data(linked(), target))
    sites = mutation_sites(linked(), target, record)
    if not sites:
        return
    mutation = data.draw(st.sampled_from(sites))
    bad = mutation.apply(record)
    cls = _cls(corpus_package, module, name)
    with pytest.raises(ValidationError):
        cls.from_wire(bad)
        pytest.fail(f"accepted {mutation.kind} at {mutation.path}")


@pytest.mark.parametrize(("target", "module", "name", "sdk"), TARGETS, ids=IDS)
@SETTINGS
@given(data=st.data())
def test_atproto_sdk_agrees_on_valid_records(
    corpus_package: str,
    target: DefId,
    module: str,
    name: str,
    sdk: str,
    data: st.DataObject,
) -> None:
    record = data.draw(wire_data(linked(), target, unknown_fields=False))
    ours = _cls(corpus_package, module, name).from_wire(record)
    theirs = _sdk(sdk).model_validate(record, context={"strict_string_format": True})
    assert ours.to_wire() == record
    assert theirs is not None


def test_mutation_kinds_cover_the_issue_list() -> None:
    """Across the targets, the generator finds every kind of edit the issue lists
    (a closed union's $type is exercised in tests/test_corpus.py)."""
    kinds: set[str] = set()
    model = linked()

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(data=st.data())
    def collect(data: st.DataObject) -> None:
        target = data.draw(st.sampled_from([t[0] for t in TARGETS]))
        record = data.draw(wire_data(model, target))
        kinds.update(m.kind for m in mutation_sites(model, target, record))

    collect()
    assert {
        "utf8_too_long",
        "graphemes_too_long",
        "required_missing",
        "bad_format",
        "null_not_allowed",
    } <= kinds, kinds
