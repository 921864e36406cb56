"""`atdata-gen check`: compatibility findings between two versions (first cut of the
rule catalogue; per-rule fixture directories and the data oracle come next)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from atdata_gen.checks.compat import COMPAT_RULES, Direction, compare
from atdata_gen.pipeline import BuildOptions, compile_sources

from .conftest import ATDATA_LEXICONS, OFFICIAL

CLI = [sys.executable, "-m", "atdata_gen.cli"]


def _record(
    props: dict[str, Any],
    required: list[str] | None = None,
    key: str = "tid",
    **defs: Any,
) -> dict[str, Any]:
    return {
        "lexicon": 1,
        "id": "com.ex.doc",
        "defs": {
            "main": {
                "type": "record",
                "key": key,
                "record": {
                    "type": "object",
                    "required": required or [],
                    "properties": props,
                },
            },
            **defs,
        },
    }


def _rules(tmp_path: Path, old: dict[str, Any], new: dict[str, Any]) -> set[str]:
    for side, doc in (("old", old), ("new", new)):
        (tmp_path / side).mkdir(exist_ok=True)
        (tmp_path / side / "doc.json").write_text(json.dumps(doc, indent=1))
    a = compile_sources(BuildOptions([tmp_path / "old"]))
    b = compile_sources(BuildOptions([tmp_path / "new"]))
    assert a.model is not None and b.model is not None
    assert not a.reporter.has_errors and not b.reporter.has_errors
    return {f.rule for f in compare(a.model, b.model)}


S = {"type": "string"}
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "FIELD_DELETED": (_record({"a": S, "b": S}), _record({"a": S})),
    "FIELD_REQUIRED_ADDED": (_record({"a": S}), _record({"a": S, "b": S}, ["b"])),
    "FIELD_OPTIONAL_ADDED": (_record({"a": S}), _record({"a": S, "b": S})),
    "FIELD_MADE_REQUIRED": (_record({"a": S}), _record({"a": S}, ["a"])),
    "FIELD_MADE_OPTIONAL": (_record({"a": S}, ["a"]), _record({"a": S})),
    "RECORD_KEY_CHANGED": (_record({"a": S}), _record({"a": S}, key="nsid")),
    "TYPE_CHANGED": (_record({"a": S}), _record({"a": {"type": "integer"}})),
    "FORMAT_ADDED": (
        _record({"a": S}),
        _record({"a": {"type": "string", "format": "did"}}),
    ),
    "BOUND_NARROWED": (
        _record({"a": {"type": "string", "maxLength": 10}}),
        _record({"a": {"type": "string", "maxLength": 5}}),
    ),
    "BOUND_WIDENED": (
        _record({"a": {"type": "integer", "maximum": 5}}),
        _record({"a": {"type": "integer", "maximum": 9}}),
    ),
    "ENUM_EXTENDED": (
        _record({"a": {"type": "string", "enum": ["x"]}}),
        _record({"a": {"type": "string", "enum": ["x", "y"]}}),
    ),
    "ENUM_NARROWED": (
        _record({"a": {"type": "string", "enum": ["x", "y"]}}),
        _record({"a": {"type": "string", "enum": ["x"]}}),
    ),
    "DEF_DELETED": (_record({"a": S}, t={"type": "token"}), _record({"a": S})),
    "DEF_ADDED": (_record({"a": S}), _record({"a": S}, t={"type": "token"})),
    "UNION_CLOSED": (
        _record(
            {"u": {"type": "union", "refs": ["#o"]}},
            o={"type": "object", "properties": {}},
        ),
        _record(
            {"u": {"type": "union", "refs": ["#o"], "closed": True}},
            o={"type": "object", "properties": {}},
        ),
    ),
}


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_fires(tmp_path: Path, rule: str) -> None:
    old, new = CASES[rule]
    assert rule in _rules(tmp_path, old, new)
    assert rule in COMPAT_RULES


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_does_not_fire_on_identical(tmp_path: Path, rule: str) -> None:
    old, _ = CASES[rule]
    assert _rules(tmp_path, old, old) == set()


def test_directions() -> None:
    assert COMPAT_RULES["FIELD_REQUIRED_ADDED"].breaks == Direction.BACKWARD
    assert COMPAT_RULES["ENUM_EXTENDED"].breaks == Direction.FORWARD
    assert COMPAT_RULES["TYPE_CHANGED"].breaks == Direction.FULL
    assert COMPAT_RULES["FIELD_OPTIONAL_ADDED"].breaks == Direction.NONE


def test_corpus_against_itself_is_clean() -> None:
    a = compile_sources(BuildOptions([OFFICIAL, ATDATA_LEXICONS]))
    assert a.model is not None
    assert compare(a.model, a.model) == []


def test_cli_modes_and_exit_codes(tmp_path: Path) -> None:
    old, new = CASES["ENUM_EXTENDED"]
    _rules(tmp_path, old, new)
    args = [*CLI, "check", str(tmp_path / "new"), "--against", str(tmp_path / "old")]
    assert (
        subprocess.run([*args, "--mode", "forward"], capture_output=True).returncode
        == 1
    )
    assert (
        subprocess.run([*args, "--mode", "backward"], capture_output=True).returncode
        == 0
    )
    proc = subprocess.run([*args, "--format", "json"], capture_output=True, text=True)
    assert proc.returncode == 1
    (finding,) = json.loads(proc.stdout)
    assert finding["rule"] == "ENUM_EXTENDED" and finding["breaks"] == ["FORWARD"]
    assert finding["current"].startswith(str(tmp_path / "new" / "doc.json") + ":")
    assert finding["previous"].startswith(str(tmp_path / "old" / "doc.json") + ":")


def test_git_revision_as_previous(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "lex").mkdir(parents=True)
    doc = repo / "lex" / "doc.json"
    doc.write_text(json.dumps(_record({"a": S, "b": S})))
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], cwd=repo, check=True)
    doc.write_text(json.dumps(_record({"a": S})))
    proc = subprocess.run(
        [*CLI, "check", "lex", "--against", "git:HEAD"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stderr
    assert "FIELD_DELETED" in proc.stdout and "'b'" in proc.stdout


# -- real-world edits of the official corpus ------------------------------------------


def _corpus_edit(
    tmp_path: Path, rel: str, edit: Any
) -> tuple[list[tuple[str, str]], Path]:
    """Copy the official corpus, apply ``edit`` to one Lexicon, run the CLI check
    and return (rule, message) pairs and the edited file."""
    import shutil

    copy = tmp_path / "current"
    shutil.copytree(OFFICIAL, copy)
    path = copy / rel
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc, indent=2))
    proc = subprocess.run(
        [*CLI, "check", str(copy), "--against", str(OFFICIAL), "--format", "json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return [(f["rule"], f["message"]) for f in json.loads(proc.stdout)], path


def test_corpus_property_removed(tmp_path: Path) -> None:
    def edit(doc: dict[str, Any]) -> None:
        del doc["defs"]["main"]["record"]["properties"]["langs"]

    found, _ = _corpus_edit(tmp_path, "app/bsky/feed/post.json", edit)
    assert found == [
        (
            "FIELD_DELETED",
            "Property 'langs' of app.bsky.feed.post was deleted.",
        )
    ]


def test_corpus_union_closed(tmp_path: Path) -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["defs"]["main"]["record"]["properties"]["embed"]["closed"] = True

    found, _ = _corpus_edit(tmp_path, "app/bsky/feed/post.json", edit)
    assert found == [
        ("UNION_CLOSED", "The union property 'embed' of app.bsky.feed.post was closed.")
    ]


def test_corpus_max_length_lowered(tmp_path: Path) -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["defs"]["main"]["record"]["properties"]["text"]["maxLength"] = 1000

    found, _ = _corpus_edit(tmp_path, "app/bsky/feed/post.json", edit)
    assert found == [
        (
            "BOUND_NARROWED",
            (
                "The UTF-8 length bounds of property 'text' of app.bsky.feed.post "
                "narrowed: -..3000 → -..1000."
            ),
        )
    ]


def test_corpus_record_key_changed(tmp_path: Path) -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["defs"]["main"]["key"] = "tid"

    found, _ = _corpus_edit(tmp_path, "app/bsky/actor/profile.json", edit)
    assert found == [
        (
            "RECORD_KEY_CHANGED",
            (
                "The record key of 'app.bsky.actor.profile' changed from "
                "'literal:self' to 'tid'."
            ),
        )
    ]


def test_text_output_gives_both_locations(tmp_path: Path) -> None:
    old, new = CASES["FIELD_DELETED"]
    _rules(tmp_path, old, new)
    proc = subprocess.run(
        [*CLI, "check", "new", "--against", "old"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    (line,) = proc.stdout.splitlines()
    assert line.startswith("new/doc.json:")
    assert " error FIELD_DELETED Property 'b' of com.ex.doc was deleted." in line
    assert "(previously at old/doc.json:" in line


UPSTREAM_BREAKS = {
    # Following forecast-bio/atdata-lexicon 0.4.x (issue 13 § 7; its CHANGELOG):
    # resolveLabel's params got maxLength (0.2.2b1, "Fixed") ...
    ("BOUND_NARROWED", "/defs/main/parameters/properties/name"),
    ("BOUND_NARROWED", "/defs/main/parameters/properties/version"),
    # ... and 0.4.0b1 moved the JSON Schema into an envelope: the flat form's keys
    # stay declared but cannot stay required (an envelope has none of them) ...
    ("FIELD_MADE_OPTIONAL", "/defs/jsonSchemaFormat/properties/$type"),
    ("FIELD_MADE_OPTIONAL", "/defs/jsonSchemaFormat/properties/$schema"),
    ("FIELD_MADE_OPTIONAL", "/defs/jsonSchemaFormat/properties/type"),
    ("FIELD_MADE_OPTIONAL", "/defs/jsonSchemaFormat/properties/properties"),
    # ... and '$atdataSchemaVersion' (upstream's) now holds the Python name
    # 'atdata_schema_version'; atdata 0.7's 'atdataSchemaVersion' is
    # 'atdata_schema_version_2'.
    ("FIELD_PYTHON_NAME_CHANGED", "/defs/main/record/properties/$atdataSchemaVersion"),
}
"""The breaking changes of science.alt.dataset.* that upstream made and we follow,
each by rule and JSON pointer: nothing else may break."""


#: Breaks of our own AppView query Lexicons made before any release, while they were
#: being written (issue 16): the cursor's maxLength went 512 → 4096 so that a record
#: with the longest legal DID and record key cannot make its page's cursor too long.
#: (rule, subject, pointer); nothing else of ours may break.
UNRELEASED_BREAKS = {
    (rule, f"science.alt.dataset.{method}", pointer)
    for rule in ("BOUND_WIDENED",)
    for method in (
        "listEntries",
        "listLenses",
        "listSchemas",
        "searchDatasets",
        "searchLenses",
    )
    for pointer in (
        "/defs/main/parameters/properties/cursor",
        "/defs/main/output/schema/properties/cursor",
    )
}


def test_own_lexicons_across_git_history() -> None:
    """This repository's lexicons/ compared with every earlier revision that
    changed them: no breaking change was ever committed, but the ones upstream
    made (:data:`UPSTREAM_BREAKS`) and the listed ones of our query Lexicons before
    their release (:data:`UNRELEASED_BREAKS`)."""
    root = Path(__file__).parent.parent
    if subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True
    ).returncode:
        pytest.fail("the test suite must run inside the git checkout")
    from atdata_gen.checks.runner import run_check

    result = run_check([root / "lexicons"], ["git:HEAD"], transitive=True, cwd=root)
    assert result.compared and result.compared[0] == "git:HEAD"
    assert [
        f
        for f in result.findings
        if f.breaks
        and (f.rule, f.current.pointer) not in UPSTREAM_BREAKS
        and (f.rule, f.subject, f.current.pointer) not in UNRELEASED_BREAKS
    ] == []


def test_git_history_catches_a_change_two_revisions_back(tmp_path: Path) -> None:
    """--transitive: v1 had 'b', v2 deleted it and v3 re-adds it as an integer.
    Against HEAD (v2→v3) that is only an added property; against history the type
    change from v1 is caught."""
    repo = tmp_path / "repo"
    (repo / "lex").mkdir(parents=True)
    doc = repo / "lex" / "doc.json"
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    for i, props in enumerate([{"a": S, "b": S}, {"a": S}], start=1):
        doc.write_text(json.dumps(_record(props)))
        subprocess.run([*git, "add", "."], cwd=repo, check=True)
        subprocess.run([*git, "commit", "-qm", f"v{i}"], cwd=repo, check=True)
    doc.write_text(json.dumps(_record({"a": S, "b": {"type": "integer"}})))
    plain = subprocess.run(
        [*CLI, "check", "lex", "--format", "json", "--against", "git:HEAD"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert [f["rule"] for f in json.loads(plain.stdout)] == ["FIELD_OPTIONAL_ADDED"]
    deep = subprocess.run(
        [*CLI, "check", "lex", "--format", "json", "--transitive"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert deep.returncode == 1, deep.stderr
    rules = {f["rule"]: f for f in json.loads(deep.stdout)}
    assert "TYPE_CHANGED" in rules
    # Located in the earlier revision, in git's rev:path notation.
    previous = rules["TYPE_CHANGED"]["previous"]
    assert re.match(r"[0-9a-f]{12}:lex/doc\.json:\d+:\d+$", previous), previous


# -- [tool.atdata-gen.check] -----------------------------------------------------------


def _project(tmp_path: Path, check_table: str) -> Path:
    old, new = CASES["FIELD_DELETED"]
    _rules(tmp_path, old, new)
    doc = json.loads((tmp_path / "new" / "doc.json").read_text())
    doc["defs"]["other"] = {"type": "object", "properties": {}}
    (tmp_path / "new" / "doc.json").write_text(json.dumps(doc))
    (tmp_path / "pyproject.toml").write_text(
        '[tool.atdata-gen]\nsources = ["new"]\n\n[tool.atdata-gen.check]\n'
        + check_table
    )
    return tmp_path


def _run(project: Path, *extra: str) -> tuple[int, list[str]]:
    proc = subprocess.run(
        [*CLI, "check", "new", "--against", "old", "--format", "json", *extra],
        cwd=project,
        capture_output=True,
        text=True,
    )
    if proc.returncode == 2:
        return 2, [proc.stderr]
    return proc.returncode, sorted(f["rule"] for f in json.loads(proc.stdout))


@pytest.mark.parametrize(
    ("table", "code", "rules"),
    [
        ("", 1, ["DEF_ADDED", "FIELD_DELETED"]),
        ('mode = "backward"\n', 0, ["DEF_ADDED", "FIELD_DELETED"]),
        ('use = ["FIELD"]\n', 1, ["FIELD_DELETED"]),
        ('use = ["DEF_ADDED"]\n', 0, ["DEF_ADDED"]),
        ('use = ["FIELD", "DEF_ADDED"]\n', 1, ["DEF_ADDED", "FIELD_DELETED"]),
        ('use = ["FIELD"]\nexcept = ["FIELD_DELETED"]\n', 0, []),
        ('ignore = ["com.ex.*"]\n', 0, []),
        ('ignore = ["app.*"]\n', 1, ["DEF_ADDED", "FIELD_DELETED"]),
        (
            '[tool.atdata-gen.check.ignore_only]\nFIELD_DELETED = ["com.ex.doc"]\n',
            0,
            ["DEF_ADDED"],
        ),
        ('fail_on = "info"\nexcept = ["FIELD"]\n', 1, ["DEF_ADDED"]),
    ],
)
def test_check_policy(tmp_path: Path, table: str, code: int, rules: list[str]) -> None:
    assert _run(_project(tmp_path, table)) == (code, rules)


def test_check_policy_rejects_unknown_rules(tmp_path: Path) -> None:
    code, (err,) = _run(_project(tmp_path, 'use = ["FIELD_GONE"]\n'))
    assert code == 2 and "'FIELD_GONE' is neither a rule ID nor a category" in err


def test_single_changed_file_with_external(tmp_path: Path) -> None:
    """One changed Lexicon checked on its own: refs resolve through --external,
    whose copy of the same NSID the source shadows."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(OFFICIAL, repo / "lex")
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], cwd=repo, check=True)
    post = repo / "lex" / "app" / "bsky" / "feed" / "post.json"
    doc = json.loads(post.read_text())
    doc["defs"]["main"]["record"]["properties"]["reply"]["ref"] = (
        "com.atproto.repo.strongRef"
    )
    post.write_text(json.dumps(doc, indent=2))
    proc = subprocess.run(
        [
            *CLI,
            "check",
            "lex/app/bsky/feed/post.json",
            "--external",
            "lex",
            "--format",
            "json",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stderr
    found = json.loads(proc.stdout)
    assert {f["rule"] for f in found} >= {"REF_TARGET_CHANGED", "FIELD_DELETED"}
    ref = next(f for f in found if f["rule"] == "REF_TARGET_CHANGED")
    assert ref["current"].startswith("lex/app/bsky/feed/post.json:")
    assert ref["previous"].startswith("HEAD:lex/app/bsky/feed/post.json:")
