"""Issue 13 § 5: ``SCHEMA_VERSION_CONFLICT`` says which part of the record differs
(JSON pointers, ``checks.recdiff``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from atdata_gen.checks.recdiff import describe_differences, differences, pointer
from atdata_gen.checks.runner import run_check

from .conftest import flat_schema_record


def _schema(label: str, **extra: Any) -> dict[str, Any]:
    record = flat_schema_record("Frame", "1.0.0", {"label": {"type": label}}, **extra)
    if "atdataSchemaVersion" not in extra:
        del record["atdataSchemaVersion"]
    return record


def test_check_names_the_differing_pointer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same name and version, ``label`` string → integer, another createdAt."""
    for side, doc in (
        ("previous", _schema("string")),
        ("current", _schema("integer", createdAt="2026-02-02T00:00:00+00:00")),
    ):
        (tmp_path / side).mkdir()
        (tmp_path / side / "frame.json").write_text(json.dumps(doc, indent=1))
    monkeypatch.chdir(tmp_path)
    result = run_check([Path("current")], ["previous"])
    (conflict,) = [f for f in result.findings if f.rule == "SCHEMA_VERSION_CONFLICT"]
    assert '(/schema/properties/label/type: "string" != "integer")' in conflict.message
    assert "createdAt" not in conflict.message


def test_check_reads_the_pointer_inside_get_record_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pointers are relative to the record, also for ``{uri, cid, value}`` files."""
    uri = "at://did:plc:abc/science.alt.dataset.schema/Frame:1.0.0"
    for side, doc in (("previous", _schema("string")), ("current", _schema("number"))):
        (tmp_path / side).mkdir()
        wrapped = {"uri": uri, "cid": "bafyreib", "value": doc}
        (tmp_path / side / "frame.json").write_text(json.dumps(wrapped))
    monkeypatch.chdir(tmp_path)
    result = run_check([Path("current")], ["previous"])
    (conflict,) = [f for f in result.findings if f.rule == "SCHEMA_VERSION_CONFLICT"]
    assert '/schema/properties/label/type: "string" != "number"' in conflict.message


def test_differences_in_document_order() -> None:
    old = {"a": 1, "b": [1, 2], "c": {"d": True}, "createdAt": "x"}
    new = {"a": 1.0, "b": [1], "c": {"d": 1}, "e": None, "createdAt": "y"}
    assert differences(old, new) == [
        "/b/1: 2 != absent",
        "/c/d: true != 1",  # JSON booleans are not numbers
        "/e: absent != null",
    ]


def test_pointer_escapes_and_root() -> None:
    assert pointer(("a/b", "m~n", 0)) == "/a~1b/m~0n/0"
    assert differences({"a/b": 1}, {"a/b": 2}) == ["/a~1b: 1 != 2"]
    assert differences([1], {"x": 1}) == ['/: [1] != {"x":1}']


def test_long_values_are_shortened_and_limited() -> None:
    old = {f"k{i}": "v" * 100 for i in range(5)}
    new = {f"k{i}": "w" for i in range(5)}
    text = describe_differences(old, new, limit=2)
    assert text.startswith('/k0: "' + "v" * 58 + '… != "w"; /k1: ')  # 60 chars
    assert text.endswith("; … and 3 more")
    assert describe_differences(old, old) == ""


def test_schema_records_in_two_forms_differ_only_in_content() -> None:
    """A flat record against an envelope: the form is not a difference."""
    from atdata_gen.checks.recdiff import schema_differences
    from atdata_runtime.samples.schema import convert_schema_record

    old = _schema("string", atdataSchemaVersion=1)
    new = convert_schema_record(_schema("integer", atdataSchemaVersion=1), "envelope")
    assert schema_differences(old, new) == (
        '/schema/content/properties/label/type: "string" != "integer"'
    )
    assert schema_differences(old, convert_schema_record(old, "envelope")) == ""
