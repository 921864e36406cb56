"""Schema records in both forms (issue 13 § 7): the envelope of atdata-lexicon 0.4.x
(``schema = {draft, content, arrayFormatVersions}``, ``$atdataSchemaVersion``,
shims under ``json-schema.alt.science``) and the flat form atdata 0.7.0b1 writes.

Both are read everywhere (build, pull/load through ``compile_schema_record``, the
record models, ``check``); ``schema_record(cls, form=…)`` and publish write either,
by default the pinned lexicons' form. Records are validated with the upstream
lexicons compiled by us, and with atdata 0.7's."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from atdata_gen.diagnostics import Reporter
from atdata_gen.dynamic import SchemaCompileError, compile_schema_record
from atdata_gen.frontend.schema_record import parse_schema_record
from atdata_gen.sources import load_text
from atdata_runtime.atmosphere.records import validate_record
from atdata_runtime.samples.schema import (
    DEFAULT_SCHEMA_FORM,
    convert_schema_record,
    schema_record,
    schema_record_form,
)
from pydantic import ValidationError

from .conftest import ATDATA_LEXICONS, CORPUS, ROOT, compile_to

RECORDS = CORPUS / "atdata" / "records"
UPSTREAM = CORPUS / "atdata-lexicon"
NAMES = sorted(p.name.split(".")[0] for p in RECORDS.glob("*.schema.json"))


def _flat(name: str) -> dict[str, Any]:
    return json.loads((RECORDS / f"{name}.schema.json").read_text())  # type: ignore[no-any-return]


def _parse(record: dict[str, Any]) -> tuple[Any, Reporter]:
    reporter = Reporter()
    doc = load_text("record.json", json.dumps(record, indent=1).encode(), reporter)
    assert doc is not None
    return parse_schema_record(doc, reporter), reporter


def _errors(record: dict[str, Any]) -> list[tuple[str, str | None]]:
    schema, reporter = _parse(record)
    assert schema is None
    return [(d.rule, d.span.pointer) for d in reporter.errors]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``Schema`` record models of the upstream lexicons (atdata-lexicon 0.4.x) and
    of atdata 0.7's, each compiled by us into its own package."""
    out = tmp_path_factory.mktemp("forms")
    compile_to(out, [UPSTREAM / "lexicons"], "upstream_lex")
    compile_to(out, [ATDATA_LEXICONS], "atdata07_lex")
    sys.path.insert(0, str(out))
    try:
        yield {
            pkg: importlib.import_module(f"{pkg}.science.alt.dataset.schema").Schema
            for pkg in ("upstream_lex", "atdata07_lex")
        }
    finally:
        sys.path.remove(str(out))


# -- reading both forms --------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_envelope_and_flat_compile_to_the_same_schema(name: str) -> None:
    flat = _flat(name)
    envelope = convert_schema_record(flat, "envelope")
    assert schema_record_form(flat) == "flat"
    assert schema_record_form(envelope) == "envelope"
    assert "properties" not in envelope["schema"]
    assert (
        envelope["$atdataSchemaVersion"] == 1 and "atdataSchemaVersion" not in envelope
    )
    a, ra = _parse(flat)
    b, rb = _parse(envelope)
    assert not ra.has_errors and not rb.has_errors
    assert a == replace(b, origin=a.origin)  # record_form is kept, not compared
    assert (a.record_form, b.record_form) == ("flat", "envelope")
    assert (
        compile_schema_record(flat).sample_fields
        == compile_schema_record(envelope).sample_fields
    )


@pytest.mark.parametrize("name", NAMES)
def test_conversion_round_trips_atdatas_records_exactly(name: str) -> None:
    flat = _flat(name)
    there = convert_schema_record(flat, "envelope")
    assert json.dumps(convert_schema_record(there, "flat")) == json.dumps(flat)
    assert json.dumps(convert_schema_record(there, "envelope")) == json.dumps(there)


def test_both_shim_hosts_are_read() -> None:
    flat = _flat("ImageSample")
    envelope = convert_schema_record(flat, "envelope")
    ref = envelope["schema"]["content"]["properties"]["image"]["$ref"]
    assert (
        ref
        == "https://json-schema.alt.science/atdata-ndarray-bytes/1.0.0#/$defs/ndarray"
    )
    # upstream's new $id inside a flat record, too
    mixed = json.loads(json.dumps(flat))
    mixed["schema"]["properties"]["image"]["$ref"] = ref
    assert (
        compile_schema_record(mixed).sample_fields
        == compile_schema_record(flat).sample_fields
    )


def test_envelope_errors_are_located() -> None:
    envelope = convert_schema_record(_flat("ScalarSample"), "envelope")
    bad_draft = dict(envelope, schema=dict(envelope["schema"], draft="2020-12"))
    assert _errors(bad_draft) == [("SCHEMA_UNSUPPORTED", "/schema/draft")]
    bad_content = dict(envelope, schema=dict(envelope["schema"], content=[1]))
    assert _errors(bad_content) == [("SCHEMA_BODY", "/schema/content")]
    no_content = dict(envelope, schema={"draft": "draft-07"})
    assert _errors(no_content) == [("SCHEMA_BODY", "/schema")]
    content = dict(
        envelope["schema"]["content"], properties={"x": {"type": "object"}}, required=[]
    )
    nested = dict(envelope, schema=dict(envelope["schema"], content=content))
    assert _errors(nested) == [("SCHEMA_UNSUPPORTED", "/schema/content/properties/x")]
    newer = dict(envelope, **{"$atdataSchemaVersion": 2})
    assert _errors(newer) == [("SCHEMA_RECORD_VERSION", "/$atdataSchemaVersion")]
    with pytest.raises(
        SchemaCompileError, match=r"/schema/draft: .*SCHEMA_UNSUPPORTED"
    ):
        compile_schema_record(
            bad_draft, uri="at://did:plc:x/science.alt.dataset.schema/k"
        )


# -- the record models ---------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_envelope_validates_with_upstream_flat_with_atdata07(
    models: dict[str, Any], name: str
) -> None:
    flat = _flat(name)
    envelope = convert_schema_record(flat, "envelope")
    assert models["upstream_lex"].from_wire(envelope).to_wire() == envelope
    assert models["atdata07_lex"].from_wire(flat).to_wire() == flat
    # Each upstream version accepts only its own form: the envelope lacks the flat
    # form's required keys, the flat form lacks 'draft' and 'content'.
    with pytest.raises(ValidationError, match="draft|content"):
        models["upstream_lex"].from_wire(flat)
    with pytest.raises(ValidationError, match="properties|schema"):
        models["atdata07_lex"].from_wire(envelope)


@pytest.mark.parametrize("name", NAMES)
def test_pinned_lexicons_read_both_forms(name: str) -> None:
    flat = _flat(name)
    for record in (flat, convert_schema_record(flat, "envelope")):
        model = validate_record(
            "at://x/science.alt.dataset.schema/k", record["$type"], record
        )
        assert model.to_wire() == record


def test_default_form_is_the_pinned_lexicons_form() -> None:
    pinned = json.loads((ROOT / "lexicons/science/alt/dataset/schema.json").read_text())
    upstream = json.loads(
        (UPSTREAM / "lexicons/science/alt/dataset/schema.json").read_text()
    )
    ours = pinned["defs"]["jsonSchemaFormat"]["properties"]
    for key in upstream["defs"]["jsonSchemaFormat"]["required"]:  # draft, content
        assert key in ours
    assert "$atdataSchemaVersion" in pinned["defs"]["main"]["record"]["properties"]
    assert DEFAULT_SCHEMA_FORM == "envelope"
    from atdata_gen.remote import publish_schema_cmd

    (option,) = [p for p in publish_schema_cmd.params if p.name == "form"]
    assert option.default == DEFAULT_SCHEMA_FORM
    assert "--schema-form" in option.opts


# -- writing -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def atdata_classes(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    out = tmp_path_factory.mktemp("forms_samples")
    compile_to(out, [RECORDS], "forms_samples")
    sys.path.insert(0, str(out))
    try:
        found = {}
        for name in NAMES:
            module = importlib.import_module(f"forms_samples.samples.{_snake(name)}")
            found[name] = getattr(module, name)
        yield found
    finally:
        sys.path.remove(str(out))


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


@pytest.mark.parametrize("name", NAMES)
def test_schema_record_writes_either_form(
    models: dict[str, Any], atdata_classes: dict[str, Any], name: str
) -> None:
    flat = _flat(name)
    cls = atdata_classes[name]
    default = schema_record(cls, created_at=flat["createdAt"])
    envelope = schema_record(cls, form="envelope", created_at=flat["createdAt"])
    assert default == envelope and schema_record_form(envelope) == "envelope"
    assert json.dumps(envelope) == json.dumps(convert_schema_record(flat, "envelope"))
    assert json.dumps(
        schema_record(cls, form="flat", created_at=flat["createdAt"])
    ) == (json.dumps(flat))
    models["upstream_lex"].from_wire(envelope)
    with pytest.raises(ValueError, match="form 'nested'"):
        schema_record(cls, form="nested")  # type: ignore[arg-type]


def test_publish_compares_content_across_forms() -> None:
    """A version published in one form is the same version in the other
    (``createdAt`` aside); a real difference is still one."""
    from atdata_runtime.atmosphere.publish import _schema_content

    flat = _flat("ListSample")
    envelope = dict(
        convert_schema_record(flat, "envelope"), createdAt="2031-01-01T00:00:00Z"
    )
    assert _schema_content(flat) == _schema_content(envelope)
    changed = dict(envelope, description="other")
    assert _schema_content(flat) != _schema_content(changed)


# -- check ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_check_finds_nothing_between_the_forms_of_one_schema(
    tmp_path: Path, name: str
) -> None:
    from atdata_gen.checks.runner import run_check

    flat = _flat(name)
    (tmp_path / "prev").mkdir()
    (tmp_path / "curr").mkdir()
    (tmp_path / "prev" / "s.json").write_text(json.dumps(flat))
    envelope = dict(
        convert_schema_record(flat, "envelope"), createdAt="2031-01-01T00:00:00Z"
    )
    (tmp_path / "curr" / "s.json").write_text(json.dumps(envelope))
    for a, b in (("curr", "prev"), ("prev", "curr")):
        result = run_check([tmp_path / a], [str(tmp_path / b)])
        assert result.findings == [], [f.message for f in result.findings]
    # a real change in the envelope is still found
    content = dict(envelope["schema"]["content"])
    content["required"] = content.get("required", [])[:-1]
    changed = dict(envelope, schema=dict(envelope["schema"], content=content))
    if changed != envelope:
        (tmp_path / "curr" / "s.json").write_text(json.dumps(changed))
        result = run_check([tmp_path / "curr"], [str(tmp_path / "prev")])
        assert result.findings
