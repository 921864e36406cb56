"""Lint gaps of issue 13 § 6: unknown keys in permission sets and permissions, and
duplicate NSIDs that say which copy is kept and which refs only the rejected copy
would have resolved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from atdata_gen.diagnostics import Diagnostic, Reporter
from atdata_gen.pipeline import BuildOptions, compile_sources

from .conftest import CORPUS


def _diagnose(paths: list[Path]) -> list[Diagnostic]:
    reporter = Reporter()
    compile_sources(BuildOptions(paths, "p"), reporter)
    return list(reporter)


def _write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return path


# A permission set as sprk's was published: `title:langs` / `detail:langs` for the
# spec's `title:lang` / `detail:lang`, and a misspelt permission parameter.
SPRK_LIKE = {
    "lexicon": 1,
    "id": "so.sprk.authFull",
    "defs": {
        "main": {
            "type": "permission-set",
            "title": "Full Spark access",
            "title:langs": {"pt": "Acesso total"},
            "detail": "Everything.",
            "detail:langs": {},
            "permissions": [
                {
                    "type": "permission",
                    "resource": "repo",
                    "collection": ["so.sprk.feed.post"],
                    "actions": ["create"],
                },
                {
                    "type": "permission",
                    "resource": "rpc",
                    "lxm": ["so.sprk.feed.getTimeline"],
                    "inheritAud": True,
                    "audience": "*",
                },
                {"type": "permission", "resource": "blob", "accept": ["video/*"]},
            ],
        }
    },
}


def test_permission_set_unknown_keys_are_linted(tmp_path: Path) -> None:
    found = [
        (d.rule, d.span.pointer, d.message)
        for d in _diagnose([_write(tmp_path / "auth.json", SPRK_LIKE)])
    ]
    unknown = {(p, m) for r, p, m in found if r == "LEX_UNKNOWN_KEY"}
    pointers = {p for p, _ in unknown}
    assert pointers == {
        "/defs/main/title:langs",
        "/defs/main/detail:langs",
        "/defs/main/permissions/0/actions",
        "/defs/main/permissions/1/audience",
    }, found
    messages = " | ".join(m for _, m in sorted(unknown))
    assert "'title:langs' in a 'permission-set'" in messages
    assert "'actions' in a 'repo permission'" in messages


def test_official_permission_sets_have_no_unknown_keys() -> None:
    paths = sorted(
        p
        for p in (CORPUS / "lexicons" / "atproto-official").rglob("*.json")
        if '"permission-set"' in p.read_text(encoding="utf-8")
    )
    paths.append(CORPUS / "interop" / "lexicon" / "catalog" / "permission-set.json")
    assert len(paths) > 5
    for path in paths:
        diagnostics = _diagnose([path])
        assert [d for d in diagnostics if d.rule == "LEX_UNKNOWN_KEY"] == [], path


@pytest.fixture
def duplicate(tmp_path: Path) -> list[Diagnostic]:
    kept = {
        "lexicon": 1,
        "id": "com.example.dup",
        "defs": {"main": {"type": "object", "properties": {}}},
    }
    rejected = {
        "lexicon": 1,
        "id": "com.example.dup",
        "defs": {
            "main": {"type": "object", "properties": {}},
            "extra": {"type": "object", "properties": {}},
        },
    }
    user = {
        "lexicon": 1,
        "id": "com.example.user",
        "defs": {
            "main": {
                "type": "object",
                "properties": {
                    "x": {"type": "ref", "ref": "com.example.dup#extra"},
                    "y": {"type": "ref", "ref": "com.example.dup#nowhere"},
                },
            }
        },
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    return _diagnose(
        [
            _write(tmp_path / "a" / "dup.json", kept),
            _write(tmp_path / "b" / "dup.json", rejected),
            _write(tmp_path / "user.json", user),
        ]
    )


def test_duplicate_nsid_names_kept_and_rejected_copies(
    duplicate: list[Diagnostic],
) -> None:
    (dup,) = [d for d in duplicate if d.rule == "LEX_NSID_DUPLICATE"]
    assert dup.span.path.endswith("b/dup.json")
    assert "b/dup.json) is rejected" in dup.message, dup.message
    assert "a/dup.json is kept" in dup.message, dup.message


def test_ref_resolving_only_in_rejected_copy_says_so(
    duplicate: list[Diagnostic],
) -> None:
    refs = {
        d.span.pointer: d.message for d in duplicate if d.rule == "LEX_REF_UNRESOLVED"
    }
    extra = refs["/defs/main/properties/x/ref"]
    assert "defined only in" in extra and "b/dup.json" in extra, extra
    assert "a/dup.json is kept" in extra, extra
    assert "defined only in" not in refs["/defs/main/properties/y/ref"]
