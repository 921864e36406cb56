"""Configuration and CLI edges (issue 13 § 5): strict, located config keys; config
discovery; output paths that are files; --external validation; warnings replayed by
no-op builds; --fail-on; one JSON document; repository-relative GitHub
annotations; `check` before the first commit; did-you-mean hints; `rules RULE_ID`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, run_cli

GIT = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]


def _lexicon(nsid: str = "com.ex.a", **props: Any) -> str:
    return json.dumps(
        {
            "lexicon": 1,
            "id": nsid,
            "defs": {"main": {"type": "object", "properties": props}},
        },
        indent=1,
    )


def _project(tmp: Path, config: str, **props: Any) -> Path:
    (tmp / "lex" / "com" / "ex").mkdir(parents=True, exist_ok=True)
    (tmp / "lex" / "com" / "ex" / "a.json").write_text(
        _lexicon(**(props or {"s": {"type": "string"}}))
    )
    (tmp / "pyproject.toml").write_text(config)
    return tmp


GOOD = '[project]\nname = "x"\n\n[tool.atdata-gen]\nsources = ["lex"]\nout = "gen"\npackage = "mypkg"\n'


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# -- 1. unknown keys -------------------------------------------------------------------
def test_unknown_key_is_located_error_with_hint_and_nothing_is_touched(
    tmp_path: Path,
) -> None:
    _project(tmp_path, GOOD)
    assert run_cli(["build", "-q"], tmp_path).returncode == 0
    before = _tree(tmp_path / "gen")
    # A typo of 'sources' used to be ignored: the build then had no sources and
    # deleted the whole generated package, exiting 0.
    (tmp_path / "pyproject.toml").write_text(
        GOOD.replace('sources = ["lex"]', 'sourcs = ["lex"]')
    )
    proc = run_cli(["build"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert (
        "pyproject.toml:5:1: error CONFIG_UNKNOWN_KEY unknown key 'sourcs' in "
        "[tool.atdata-gen]; did you mean 'sources'?"
    ) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _tree(tmp_path / "gen") == before
    assert run_cli(["build", "--check"], tmp_path).returncode == 2


def test_unknown_keys_in_subtables_share_the_mechanism(tmp_path: Path) -> None:
    _project(
        tmp_path,
        GOOD + '\n[tool.atdata-gen.check]\nmdoe = "full"\n\n[tool.atdata-gen.chek]\n',
    )
    for args in (["build"], ["check", "lex", "--against", "lex"]):
        proc = run_cli(args, tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        assert (
            "pyproject.toml:10:1: error CONFIG_UNKNOWN_KEY unknown key 'mdoe' in "
            "[tool.atdata-gen.check]; did you mean 'mode'?"
        ) in proc.stderr
        assert (
            "pyproject.toml:12:1: error CONFIG_UNKNOWN_KEY unknown key 'chek' in "
            "[tool.atdata-gen]; did you mean 'check'?"
        ) in proc.stderr
    assert not (tmp_path / "gen").exists()


def test_check_policy_from_table_uses_the_shared_message() -> None:
    from atdata_gen.checks.policy import CheckPolicy, PolicyError
    from atdata_gen.config import TomlFile

    file = TomlFile("p.toml", '[tool.atdata-gen.check]\nfail_onn = "error"\n')
    with pytest.raises(PolicyError) as info:
        CheckPolicy.from_table({"fail_onn": "error"}, file)
    assert str(info.value) == (
        "p.toml:2:1: error CONFIG_UNKNOWN_KEY unknown key 'fail_onn' in "
        "[tool.atdata-gen.check]; did you mean 'fail_on'?"
    )


def test_pull_does_not_ignore_a_broken_config(tmp_path: Path) -> None:
    _project(tmp_path, GOOD + "schemass = []\n")
    proc = run_cli(["pull"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "unknown key 'schemass' in [tool.atdata-gen]; did you mean 'schemas'?" in (
        proc.stderr
    )


# -- 2. discovery ----------------------------------------------------------------------
def test_config_is_found_in_a_parent_directory(tmp_path: Path) -> None:
    _project(tmp_path, GOOD)
    sub = tmp_path / "lex" / "com"
    proc = run_cli(["build", "-q"], sub)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "gen" / "mypkg" / "com" / "ex" / "a.py").is_file()
    assert not (sub / "gen").exists(), "paths are relative to pyproject.toml"
    proc = run_cli(["build", "--check", "--format", "json"], sub)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "up-to-date"


def test_nearest_pyproject_without_table_is_reported(tmp_path: Path) -> None:
    _project(tmp_path, GOOD)
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "pyproject.toml").write_text('[project]\nname = "inner"\n')
    proc = run_cli(["build"], sub)
    assert proc.returncode == 2
    assert "pyproject.toml: error CONFIG_NO_TABLE" in proc.stderr
    assert "nearest pyproject.toml has no [tool.atdata-gen]" in proc.stderr
    assert not (tmp_path / "gen").exists()


# -- 3. output paths -------------------------------------------------------------------
def test_out_that_is_a_file_is_a_located_error(tmp_path: Path) -> None:
    _project(tmp_path, GOOD)
    out = tmp_path / "od"
    out.write_text("mine\n")
    for extra in ([], ["--check"]):
        proc = run_cli(
            ["build", "lex", "--out", "od", "--package", "p", *extra], tmp_path
        )
        assert proc.returncode == 2, proc.stderr
        assert "od: error OUT_NOT_DIRECTORY --out is a file" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert out.read_text() == "mine\n"


def test_package_path_that_is_a_file_is_never_renamed(tmp_path: Path) -> None:
    _project(tmp_path, GOOD)
    (tmp_path / "od").mkdir()
    user = tmp_path / "od" / "p"
    user.write_text("mine\n")
    proc = run_cli(["build", "lex", "--out", "od", "--package", "p"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "od/p: error OUT_NOT_DIRECTORY the package path" in proc.stderr
    assert "Traceback" not in proc.stderr and "FileExistsError" not in proc.stderr
    assert user.read_text() == "mine\n"
    assert sorted(p.name for p in (tmp_path / "od").iterdir()) == ["p"]
    # A dotted package whose first segment is that file: same error.
    proc = run_cli(["build", "lex", "--out", "od", "--package", "p.q"], tmp_path)
    assert proc.returncode == 2 and "OUT_NOT_DIRECTORY" in proc.stderr
    assert user.read_text() == "mine\n"


def test_writer_refuses_a_file_at_the_package_path(tmp_path: Path) -> None:
    from atdata_gen.backend.write import OutputPathError, apply_plan, plan_changes

    (tmp_path / "p").write_text("mine\n")
    with pytest.raises(OutputPathError):
        plan_changes(tmp_path / "p" / "q", {"a.py": "x\n"})
    # Nested (dotted) packages get their missing parents.
    apply_plan(plan_changes(tmp_path / "a" / "b" / "c", {"m.py": "x\n"}))
    assert (tmp_path / "a" / "b" / "c" / "m.py").read_text() == "x\n"
    assert (tmp_path / "p").read_text() == "mine\n"


# -- 4. --external ---------------------------------------------------------------------
def test_external_package_is_validated(tmp_path: Path) -> None:
    _project(tmp_path, GOOD)
    (tmp_path / "base" / "com" / "ex").mkdir(parents=True)
    (tmp_path / "base" / "com" / "ex" / "b.json").write_text(_lexicon("com.ex.b"))
    args = ["build", "lex", "--out", "gen", "--package", "app"]
    bad = run_cli([*args, "--external", "base=1bad.pkg"], tmp_path)
    assert bad.returncode == 2, bad.stderr
    assert "base=1bad.pkg: error EXTERNAL_PACKAGE_NAME" in bad.stderr
    assert "'1bad'" in bad.stderr and not (tmp_path / "gen").exists()
    missing = run_cli([*args, "--external", "base=nowhere_pkg_xyz"], tmp_path)
    assert missing.returncode == 0, missing.stderr
    assert "warning EXTERNAL_PACKAGE_NOT_FOUND" in missing.stderr
    assert "'nowhere_pkg_xyz' cannot be imported" in missing.stderr
    # Importable (here: a package of the environment): no warning.
    ok = run_cli([*args, "--external", "base=json"], tmp_path)
    assert ok.returncode == 0 and "EXTERNAL_PACKAGE" not in ok.stderr, ok.stderr
    helptext = run_cli(["build", "--help"], tmp_path).stdout
    assert "--external DIR[=PACKAGE]" in helptext and "=PACKAGE" in helptext


# -- 5. warnings are never lost; --fail-on --------------------------------------------
def test_noop_build_and_check_replay_warnings(tmp_path: Path) -> None:
    _project(tmp_path, GOOD, s={"type": "string", "maxLenght": 3})
    first = run_cli(["build", "-q"], tmp_path)
    assert first.returncode == 0, first.stderr
    warning = "warning LEX_UNKNOWN_KEY unknown key 'maxLenght'"
    assert warning in first.stderr
    for args in (["build", "-q"], ["build", "--check", "-q"]):
        again = run_cli(args, tmp_path, ATDATA_GEN_TIMINGS="")
        assert again.returncode == 0, again.stderr
        assert warning in again.stderr, (args, again.stderr)
        assert "lex/com/ex/a.json:" in again.stderr
    manifest = json.loads((tmp_path / "gen" / "mypkg" / ".atdata-gen.json").read_text())
    assert [d["rule"] for d in manifest["diagnostics"]] == ["LEX_UNKNOWN_KEY"]
    assert manifest["diagnostics"][0]["path"] == "../../lex/com/ex/a.json"
    for args in (
        ["build", "--fail-on", "warning"],
        ["build", "--check", "--fail-on", "warning"],
    ):
        failing = run_cli(args, tmp_path)
        assert failing.returncode == 1, (args, failing.stderr)
        assert "at or above --fail-on warning" in failing.stderr
    assert run_cli(["build", "--fail-on", "error"], tmp_path).returncode == 0


def test_fail_on_warning_on_a_fresh_build_writes_and_exits_1(tmp_path: Path) -> None:
    _project(tmp_path, GOOD, s={"type": "string", "maxLenght": 3})
    proc = run_cli(["build", "--fail-on", "warning"], tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert (tmp_path / "gen" / "mypkg" / "com" / "ex" / "a.py").is_file()


# -- 6. machine-readable output --------------------------------------------------------
def test_json_is_one_document_with_status(tmp_path: Path) -> None:
    _project(tmp_path, GOOD)
    runs = [
        (["build", "--check"], 1, "stale"),
        (["build"], 0, "written"),
        (["build"], 0, "up-to-date"),
        (["build", "--check"], 0, "up-to-date"),
    ]
    for args, code, status in runs:
        proc = run_cli([*args, "--format", "json"], tmp_path)
        assert proc.returncode == code, (args, proc.stderr)
        doc = json.loads(proc.stdout)  # exactly one document, or this raises
        assert doc["status"] == status, (args, doc)
        assert doc["exit_code"] == code
        assert doc["package"] == "gen/mypkg"
    written = json.loads(run_cli(["build", "--format", "json"], tmp_path).stdout)
    assert written["added"] == []
    (tmp_path / "lex" / "com" / "ex" / "a.json").write_text(
        _lexicon(t={"type": "strin"})
    )
    err = run_cli(["build", "--format", "json"], tmp_path)
    assert err.returncode == 2
    doc = json.loads(err.stdout)
    assert doc["status"] == "error"
    assert [d["rule"] for d in doc["diagnostics"]] == ["LEX_TYPE_UNKNOWN"]


def _git_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run([*GIT, "init", "-q"], cwd=path, check=True)
    return path


def test_github_annotations_are_repository_relative(tmp_path: Path) -> None:
    repo = _project(_git_repo(tmp_path / "repo"), GOOD, s={"type": "strin"})
    proc = run_cli(["build", "--format", "github"], repo / "lex" / "com")
    assert proc.returncode == 2, proc.stderr
    assert "::error file=lex/com/ex/a.json,line=" in proc.stdout, proc.stdout
    # check: a def deleted since HEAD is located only on the previous side, which
    # is read from a temporary directory; the annotation names the repository path.
    doc = repo / "lex" / "com" / "ex" / "b.json"
    doc.write_text(_lexicon("com.ex.b", n={"type": "integer"}))
    (repo / "lex" / "com" / "ex" / "a.json").write_text(_lexicon())
    subprocess.run([*GIT, "add", "."], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", "v1"], cwd=repo, check=True)
    doc.unlink()
    proc = run_cli(["check", "--format", "github"], repo / "lex")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(
        "file=lex/com/ex/b.json," in line and "title=DEF_DELETED" in line
        for line in lines
    ), proc.stdout
    assert "file=HEAD:" not in proc.stdout and "atdata-gen-check-" not in proc.stdout


def test_previous_side_errors_never_name_the_scratch_checkout(tmp_path: Path) -> None:
    repo = _project(_git_repo(tmp_path / "repo"), GOOD, s={"type": "strin"})
    subprocess.run([*GIT, "add", "."], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", "broken"], cwd=repo, check=True)
    (repo / "lex" / "com" / "ex" / "a.json").write_text(_lexicon())
    proc = run_cli(["check"], repo)
    assert proc.returncode == 2
    assert "HEAD:lex/com/ex/a.json:" in proc.stderr, proc.stderr
    assert "atdata-gen-check-" not in proc.stderr
    gh = run_cli(["check", "--format", "github"], repo)
    assert "::error file=lex/com/ex/a.json," in gh.stdout, gh.stdout


# -- 7. check before the first commit -------------------------------------------------
def test_check_passes_in_a_repository_without_commits(tmp_path: Path) -> None:
    repo = _project(_git_repo(tmp_path / "repo"), GOOD)
    proc = run_cli(["check"], repo)
    assert proc.returncode == 0, proc.stderr
    assert "info: git:HEAD: the repository has no commit yet" in proc.stderr
    assert "unknown revision" not in proc.stderr
    # The current side must still compile.
    (repo / "lex" / "com" / "ex" / "a.json").write_text(_lexicon(s={"type": "strin"}))
    assert run_cli(["check"], repo).returncode == 2


# -- 8. hints and rules ----------------------------------------------------------------
def test_did_you_mean_hints(tmp_path: Path) -> None:
    (tmp_path / "defs.json").write_text(
        json.dumps(
            {
                "lexicon": 1,
                "id": "app.bsky.feed.defs",
                "defs": {
                    "postView": {"type": "object", "properties": {}},
                    "main": {
                        "type": "object",
                        "properties": {
                            "a": {"type": "ref", "ref": "app.bsky.feed.defs#postVieww"},
                            "b": {"type": "ref", "ref": "app.bsky.feed.deff#postView"},
                            "c": {"type": "strin"},
                            "d": {"type": "string", "maxLenght": 3},
                        },
                    },
                },
            },
            indent=1,
        )
    )
    proc = run_cli(["build", "defs.json", "--out", "o"], tmp_path)
    assert proc.returncode == 2
    err = proc.stderr
    assert (
        "ref 'app.bsky.feed.defs#postVieww' does not resolve to any def; did you "
        "mean 'app.bsky.feed.defs#postView'?"
    ) in err
    assert (
        "ref 'app.bsky.feed.deff#postView' does not resolve to any def; did you mean 'app.bsky.feed.defs#postView'?"
        in err
    )
    assert "unknown type 'strin'; did you mean 'string'?" in err
    assert (
        "unknown key 'maxLenght' in a 'string' definition (ignored); did you mean 'maxLength'?"
        in err
    )


def test_rules_explains_one_rule_with_a_real_example(tmp_path: Path) -> None:
    proc = run_cli(["rules", "LEX_TYPE_UNKNOWN"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("LEX_TYPE_UNKNOWN  (stage: parse; severity: error)")
    assert '"type": "strin"' in out
    assert "error LEX_TYPE_UNKNOWN unknown type 'strin'; did you mean 'string'?" in out
    bad = run_cli(["rules", "LEX_TYPE_UNKNWN"], tmp_path)
    assert bad.returncode == 2
    assert "did you mean 'LEX_TYPE_UNKNOWN'?" in bad.stderr
    compat = run_cli(["rules", "FIELD_DELETED"], tmp_path)
    assert "breaks BACKWARD" in compat.stdout or "breaks" in compat.stdout
    assert (
        "FIELD_DELETED Property 'b' of com.example.rule was deleted." in compat.stdout
    )


def test_every_rule_example_fires_its_rule() -> None:
    from atdata_gen.explain import EXAMPLES, all_rule_ids, run_example

    assert set(EXAMPLES) <= set(all_rule_ids())
    for rule_id in EXAMPLES:
        _, reported = run_example(rule_id)
        assert rule_id in reported, rule_id
        assert "atdata-gen-rule-" not in reported, reported


def test_readme_documents_shell_completion() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "_ATDATA_GEN_COMPLETE=bash_source atdata-gen" in readme


# -- found in a new-user trial ---------------------------------------------------------
@pytest.mark.parametrize(
    "package", ["json", "atdata_runtime", "atdata_gen.cli", "os.x"]
)
def test_a_package_that_would_shadow_stdlib_or_ours_is_refused(
    tmp_path: Path, package: str
) -> None:
    _project(tmp_path, GOOD)
    proc = run_cli(["build", "lex", "--out", "gen", "--package", package], tmp_path)
    assert proc.returncode == 2
    assert "PACKAGE_NAME" in proc.stderr and "shadow" in proc.stderr
    assert not (tmp_path / "gen").exists()


@pytest.mark.parametrize(("value", "why"), [("", "empty"), ("json", "shadow")])
def test_a_bad_package_in_the_config_is_located(
    tmp_path: Path, value: str, why: str
) -> None:
    _project(tmp_path, GOOD.replace('package = "mypkg"', f'package = "{value}"'))
    proc = run_cli(["build"], tmp_path)
    assert proc.returncode == 2
    assert "pyproject.toml:7" in proc.stderr and "CONFIG_VALUE" in proc.stderr
    assert why in proc.stderr
    assert not (tmp_path / "gen").exists()


def test_a_package_directory_that_is_a_source_is_refused(tmp_path: Path) -> None:
    config = GOOD.replace('out = "gen"', 'out = "."').replace('"mypkg"', '"lex"')
    _project(tmp_path, config)
    before = _tree(tmp_path / "lex")
    proc = run_cli(["build"], tmp_path)
    assert proc.returncode == 2 and "OUT_OVERLAPS_SOURCE" in proc.stderr
    assert _tree(tmp_path / "lex") == before


def test_output_inside_a_source_directory_is_not_read_back(tmp_path: Path) -> None:
    """The package may live inside a source root: its manifest (and any directory
    holding one) is skipped by discovery, so the second build is up to date instead
    of failing on the generator's own JSON."""
    _project(tmp_path, GOOD.replace('out = "gen"', 'out = "lex"'))
    assert run_cli(["build", "-q"], tmp_path).returncode == 0
    assert (tmp_path / "lex" / "mypkg" / ".atdata-gen.json").is_file()
    again = run_cli(["build", "--format", "json"], tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["status"] == "up-to-date"


def test_hidden_and_tool_directories_are_not_sources(tmp_path: Path) -> None:
    _project(tmp_path, GOOD.replace('sources = ["lex"]', 'sources = ["."]'))
    for junk in (".venv/lib/x", "node_modules/p", ".git/objects"):
        (tmp_path / junk).mkdir(parents=True)
        (tmp_path / junk / "bad.json").write_text("{not json")
    proc = run_cli(["build", "-q"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "gen" / "mypkg" / "com" / "ex" / "a.py").is_file()


def test_rule_purposes_are_whole_sentences() -> None:
    from atdata_gen.checks.compat import COMPAT_RULES

    assert "may reuse the name" in COMPAT_RULES["FIELD_DELETED"].purpose
    cut = [
        r.id
        for r in COMPAT_RULES.values()
        if not r.purpose.rstrip().endswith((".", ")"))
    ]
    assert cut == []


def test_a_nullable_schema_field_is_typed_optional(tmp_path: Path) -> None:
    """``"type": ["integer", "null"]`` used to be typed ``int``, its null lost."""
    from .conftest import flat_schema_record

    record = flat_schema_record(
        "Nul", "1.0.0", {"x": {"type": ["integer", "null"]}, "y": {"type": "string"}}
    )
    (tmp_path / "nul.json").write_text(json.dumps(record))
    proc = run_cli(["build", "nul.json", "--out", "o", "--package", "p"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    code = (tmp_path / "o" / "p" / "samples" / "nul_v1_0_0.py").read_text()
    assert "    x: int | None = None\n" in code
    assert "    y: str\n" in code


def test_frozen_without_a_lock_is_one_json_document(tmp_path: Path) -> None:
    _project(tmp_path, GOOD)
    proc = run_cli(
        ["build", "lex", "--out", "o", "--frozen", "--format", "json"], tmp_path
    )
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["status"] == "error"
    assert [d["rule"] for d in doc["diagnostics"]] == ["LOCK_MISSING"]


def test_check_against_a_missing_path_says_it_cannot_be_read(tmp_path: Path) -> None:
    _project(tmp_path, GOOD)
    proc = run_cli(["check", "lex", "--against", "nope"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "nope: error SRC_NOT_FOUND" in proc.stderr
    assert "the previous (nope) schemas cannot be read" in proc.stderr
    (tmp_path / "old" / "com" / "ex").mkdir(parents=True)
    (tmp_path / "old" / "com" / "ex" / "a.json").write_text('{"lexicon": 1,')
    proc = run_cli(["check", "lex", "--against", "old"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "the previous (old) schemas do not compile" in proc.stderr
