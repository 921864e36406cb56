"""Hostile build inputs through the real command line (issue 14, "Low"): each one
used to end in a traceback (exit 1, which means "stale"), a hang, a memory blow-up,
a package that cannot be imported, or a forged CI annotation. Now each is a located
diagnostic (file:line:column and JSON pointer) with a registered rule ID, exit code
2, and nothing written to ``--out``.

Every command runs in a child process with a timeout, so a regression (a FIFO that
blocks, ``/dev/zero`` read to the end) fails the test instead of hanging CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from atdata_gen.diagnostics import (
    Diagnostic,
    Severity,
    Span,
    escape_data,
    escape_property,
    printable,
    redact_url,
    redact_urls,
)
from atdata_gen.explain import all_rule_ids
from atdata_gen.naming import WINDOWS_RESERVED, module_name, package_name_problem
from atdata_gen.sources import (
    MAX_JSON_DEPTH,
    MAX_SOURCE_BYTES,
    json_too_deep,
    load_text,
)

from .conftest import ROOT, flat_schema_record

TIMEOUT = 120.0
"""Seconds any one command may take (a clean build of these inputs takes ~2 s)."""


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m atdata_gen.cli ARGS`` in ``cwd``, bounded by :data:`TIMEOUT`
    (``subprocess.TimeoutExpired`` fails the test)."""
    path = os.pathsep.join(str(ROOT / p) for p in ("compiler", "runtime"))
    return subprocess.run(
        [sys.executable, "-m", "atdata_gen.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _build(tmp: Path, *sources: str | Path) -> tuple[int, list[dict[str, Any]]]:
    """``atdata-gen build SOURCES --out tmp/out --format json``: the exit code and
    the diagnostics of its one JSON document."""
    proc = _cli(
        ["build", *map(str, sources), "--out", str(tmp / "out"), "--format", "json"],
        tmp,
    )
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"no JSON document (exit {proc.returncode}):\n{proc.stderr}")
    assert doc["exit_code"] == proc.returncode
    return proc.returncode, doc["diagnostics"]


def _nothing_written(tmp: Path) -> None:
    out = tmp / "out"
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


def _refused(
    tmp: Path, rule: str, *sources: str | Path, located: bool = True
) -> list[dict[str, Any]]:
    """Build ``sources``; assert exit 2, an error ``rule``, nothing written, and
    (``located``) a line, column and JSON pointer on each ``rule`` diagnostic.
    Returns the ``rule`` diagnostics."""
    code, diags = _build(tmp, *sources)
    hits = [d for d in diags if d["rule"] == rule]
    assert code == 2, diags
    assert hits and all(d["severity"] == "error" for d in hits), diags
    if located:
        for d in hits:
            assert d["line"] >= 1 and d["column"] >= 1, d
            assert d["pointer"].startswith("/"), d
    _nothing_written(tmp)
    return hits


def _lexicon(nsid: str, defs: dict[str, Any]) -> dict[str, Any]:
    return {"lexicon": 1, "id": nsid, "defs": defs}


def _write(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return path


def _record_with(token: str, key: str = "default") -> str:
    """A record Lexicon whose integer property has ``key`` = raw JSON ``token``."""
    doc = _lexicon(
        "com.example.num",
        {
            "main": {
                "type": "record",
                "key": "tid",
                "record": {
                    "type": "object",
                    "properties": {"n": {"type": "integer", key: "@"}},
                },
            }
        },
    )
    return json.dumps(doc, indent=2).replace('"@"', token)


# -- numbers: NaN, Infinity, 1e400, -0.0, 4,301 digits, beyond int64 -----------------
@pytest.mark.parametrize(
    ("token", "rule"),
    [
        ("NaN", "SRC_FLOAT"),  # was: AssertionError in the position index
        ("Infinity", "SRC_FLOAT"),
        ("-Infinity", "SRC_FLOAT"),
        ("1e400", "SRC_FLOAT"),  # overflows to inf
        ("-0.0", "SRC_FLOAT"),
        ("0.5", "SRC_FLOAT"),
        ("1" * 4301, "SRC_INTEGER_RANGE"),  # was: ValueError (int-str limit)
        ("9" * 100_000, "SRC_INTEGER_RANGE"),
        (str(2**63), "SRC_INTEGER_RANGE"),  # was: exit 0
        (str(-(2**63) - 1), "SRC_INTEGER_RANGE"),
    ],
)
def test_out_of_model_number_in_lexicon(tmp_path: Path, token: str, rule: str) -> None:
    (tmp_path / "lex.json").write_text(_record_with(token), encoding="utf-8")
    (hit,) = _refused(tmp_path, rule, tmp_path / "lex.json")
    assert hit["pointer"] == "/defs/main/record/properties/n/default"
    assert hit["path"].endswith("lex.json") and hit["line"] == 13
    assert "Data Model spec" in hit["message"]


@pytest.mark.parametrize("value", [2**63 - 1, -(2**63), 2**53 + 1])
def test_int64_bounds_are_accepted(tmp_path: Path, value: int) -> None:
    (tmp_path / "lex.json").write_text(
        _record_with(str(value), "maximum"), encoding="utf-8"
    )
    code, diags = _build(tmp_path, tmp_path / "lex.json")
    assert code == 0, diags


@pytest.mark.parametrize("token", ["NaN", "1e400", "-0.0", "1" * 5000])
def test_out_of_model_number_in_schema_record(tmp_path: Path, token: str) -> None:
    record = flat_schema_record(
        "lab.Sample",
        "1.0.0",
        {"x": {"type": "number"}},
        metadata={"scale": "@"},
    )
    text = json.dumps(record, indent=2).replace('"@"', token)
    (tmp_path / "schema.json").write_text(text, encoding="utf-8")
    rule = "SRC_INTEGER_RANGE" if token.isdigit() else "SRC_FLOAT"
    (hit,) = _refused(tmp_path, rule, tmp_path / "schema.json")
    assert hit["pointer"] == "/metadata/scale"


def test_many_bad_numbers_are_reported_bounded(tmp_path: Path) -> None:
    text = _record_with("[" + ", ".join(["0.5"] * 5000) + "]", "enum")
    (tmp_path / "lex.json").write_text(text, encoding="utf-8")
    hits = _refused(tmp_path, "SRC_FLOAT", tmp_path / "lex.json", located=False)
    assert len(hits) == 21
    assert any("4980 more" in d["message"] for d in hits)


# -- nesting ---------------------------------------------------------------------------
def _nested_arrays(arrays: int) -> dict[str, Any]:
    items: dict[str, Any] = {"type": "string"}
    for _ in range(arrays):
        items = {"type": "array", "items": items}
    return _lexicon(
        "com.example.deep",
        {"main": {"type": "object", "properties": {"a": items}}},
    )


@pytest.mark.parametrize(
    "arrays",
    [
        250,  # was: exit 0, and the module failed to import (too many nested parentheses)
        400,  # was: RecursionError
        5000,
    ],
)
def test_deep_lexicon_is_refused(tmp_path: Path, arrays: int) -> None:
    # Built as text: json.dumps itself recurses once per level.
    text = (
        '{"lexicon": 1, "id": "com.example.deep", "defs": {"main": {"type": '
        '"object", "properties": {"a": '
        + '{"type": "array", "items": ' * arrays
        + '{"type": "string"}'
        + "}" * arrays
        + "}}}}"
    )
    assert json_too_deep(text, limit=10_000) is None  # well-formed, just deep
    (tmp_path / "deep.json").write_text(text, encoding="utf-8")
    (hit,) = _refused(tmp_path, "SRC_JSON_TOO_DEEP", tmp_path / "deep.json")
    # The value that opens level 65: the top object, defs, main, properties, a,
    # then 59 nested `items`.
    assert hit["pointer"] == "/defs/main/properties/a" + "/items" * 60
    line = (tmp_path / "deep.json").read_text().splitlines()[hit["line"] - 1]
    assert line[hit["column"] - 1] == "{", line


def test_deep_raw_json_never_reaches_the_parser(tmp_path: Path) -> None:
    """200,000 opening brackets (json.loads alone raises RecursionError)."""
    (tmp_path / "deep.json").write_text('{"a": ' + "[" * 200_000, encoding="utf-8")
    (hit,) = _refused(tmp_path, "SRC_JSON_TOO_DEEP", tmp_path / "deep.json")
    assert hit["pointer"] == "/a" + "/0" * (MAX_JSON_DEPTH - 1)
    assert (hit["line"], hit["column"]) == (1, 7 + MAX_JSON_DEPTH - 1)


def test_deep_schema_record_metadata_is_refused(tmp_path: Path) -> None:
    """metadata is emitted as a Python literal: 300 levels made an unimportable
    module."""
    deep: Any = 1
    for _ in range(300):
        deep = {"k": deep}
    record = flat_schema_record(
        "lab.Sample", "1.0.0", {"x": {"type": "string"}}, metadata=deep
    )
    _write(tmp_path / "schema.json", record)
    (hit,) = _refused(tmp_path, "SRC_JSON_TOO_DEEP", tmp_path / "schema.json")
    assert hit["pointer"] == "/metadata" + "/k" * 63


def test_deepest_json_accepted_lexicon_is_refused_by_type_depth(tmp_path: Path) -> None:
    """At the JSON limit (64 levels: 59 nested arrays) a Lexicon used to build and
    import, then fail at first use; now the type nesting limit refuses it, at the
    first array past 32 levels (the object def is level 1)."""
    doc = _nested_arrays(MAX_JSON_DEPTH - 5)  # top, defs, main, properties, a
    assert json_too_deep(json.dumps(doc)) is None
    assert json_too_deep(json.dumps(_nested_arrays(MAX_JSON_DEPTH - 4))) is not None
    _write(tmp_path / "deep.json", doc)
    (hit,) = _refused(tmp_path, "LEX_TYPE_TOO_DEEP", tmp_path / "deep.json")
    assert hit["pointer"] == "/defs/main/properties/a" + "/items" * 31


def test_depth_scan_ignores_brackets_in_strings() -> None:
    text = json.dumps({"a": "[" * 10_000, "b": ["]{" * 500, {"c": '\\"[[['}]})
    assert json_too_deep(text) is None
    assert json_too_deep('{"k\\"[": [[[' + "]" * 3 + "}", limit=3) == (11, '/k"[/0/0')


def test_depth_scan_is_linear() -> None:
    """An 8 MiB file of brackets is scanned without recursion, quickly."""
    import time

    text = "[" * (MAX_SOURCE_BYTES // 2) + "]" * (MAX_SOURCE_BYTES // 2)
    t0 = time.perf_counter()
    found = json_too_deep(text)
    assert found == (MAX_JSON_DEPTH, "/0" * MAX_JSON_DEPTH)
    assert time.perf_counter() - t0 < 10


# -- names that become file names ------------------------------------------------------
def test_300_character_version_is_refused(tmp_path: Path) -> None:
    record = flat_schema_record(
        "lab.Sample", "1.0.0-" + "a" * 294, {"x": {"type": "string"}}
    )
    _write(tmp_path / "schema.json", record)
    (hit,) = _refused(tmp_path, "NAME_TOO_LONG", tmp_path / "schema.json")
    assert hit["pointer"] == "/version"


def test_long_name_and_version_together_are_refused(tmp_path: Path) -> None:
    """Each within the Lexicon's 100, but the module name would pass 200."""
    record = flat_schema_record(
        "lab." + "aB" * 48, "1.0.0-" + "x" * 94, {"x": {"type": "string"}}
    )
    _write(tmp_path / "schema.json", record)
    (hit,) = _refused(tmp_path, "NAME_TOO_LONG", tmp_path / "schema.json")
    assert hit["pointer"] == "/version"


def test_longest_allowed_version_builds(tmp_path: Path) -> None:
    record = flat_schema_record(
        "lab.Sample", "1.0.0-" + "a" * 94, {"x": {"type": "string"}}
    )
    _write(tmp_path / "schema.json", record)
    code, diags = _build(tmp_path, tmp_path / "schema.json")
    assert code == 0, diags


def _lens(name: str, target: str | None = None) -> dict[str, Any]:
    code = {"repository": "https://example.org/r", "commit": "0" * 40}
    uri = "at://did:plc:lab123/science.alt.dataset.schema/lab.Sample:1.0.0"
    return {
        "$type": "science.alt.dataset.lens",
        "name": name,
        "sourceSchema": uri,
        "targetSchema": target or uri,
        "getterCode": {**code, "path": "lab.lenses:get"},
        "putterCode": {**code, "path": "lab.lenses:put"},
    }


def test_300_character_lens_name_is_refused(tmp_path: Path) -> None:
    """Was: OSError ENAMETOOLONG writing lenses/<name>.py."""
    _write(
        tmp_path / "src" / "schema.json",
        flat_schema_record("lab.Sample", "1.0.0", {"x": {"type": "string"}}),
    )
    _write(tmp_path / "src" / "lens.json", _lens("l" * 300))
    (hit,) = _refused(tmp_path, "NAME_TOO_LONG", tmp_path / "src")
    assert hit["pointer"] == "/name"


# -- Windows-reserved module names -----------------------------------------------------
def test_windows_reserved_nsid_segments_are_escaped(tmp_path: Path) -> None:
    nsids = ["com.example.con", "com.example.aux.lpt1", "com.example.Nul", "com.com9.x"]
    for nsid in nsids:
        _write(
            tmp_path / "src" / f"{nsid}.json",
            _lexicon(nsid, {"main": {"type": "token"}}),
        )
    code, diags = _build(tmp_path, tmp_path / "src")
    assert code == 0, diags
    package = tmp_path / "out" / "atdata_lexicons"
    written = sorted(p.relative_to(package).as_posix() for p in package.rglob("*.py"))
    assert "com/example/con_.py" in written
    assert "com/example/aux_/lpt1_.py" in written
    assert "com/example/nul_.py" in written
    assert "com/com9_/x.py" in written
    for rel in written:
        for part in rel.split("/"):
            assert part.split(".")[0].lower() not in WINDOWS_RESERVED, rel


def test_windows_reserved_lens_and_sample_modules_are_escaped(tmp_path: Path) -> None:
    _write(
        tmp_path / "src" / "schema.json",
        flat_schema_record("Aux", "1.0.0", {"x": {"type": "string"}}),
    )
    uri = "at://did:plc:lab123/science.alt.dataset.schema/Aux:1.0.0"
    _write(tmp_path / "src" / "lens.json", _lens("PRN", uri) | {"sourceSchema": uri})
    code, diags = _build(tmp_path, tmp_path / "src")
    assert code == 0, diags
    package = tmp_path / "out" / "atdata_lexicons"
    assert (package / "lenses" / "prn_.py").is_file()
    assert (package / "samples" / "aux_.py").is_file()
    for path in package.rglob("*"):
        assert path.name.split(".")[0].lower() not in WINDOWS_RESERVED, path


def test_windows_reserved_names_are_deterministic() -> None:
    assert [module_name(s) for s in ("con", "CON", "com1", "lpt9", "aux")] == [
        "con_",
        "con_",
        "com1_",
        "lpt9_",
        "aux_",
    ]
    # Neighbours keep their names: nothing else moves.
    assert [module_name(s) for s in ("console", "com", "com10", "auxiliary")] == [
        "console",
        "com",
        "com10",
        "auxiliary",
    ]
    assert package_name_problem("lab.con") is not None
    assert package_name_problem("lab.console") is None


# -- --format github and text: no forged lines ----------------------------------------
def test_github_format_escapes_values_and_file_names(tmp_path: Path) -> None:
    """A file name with a newline, ':' and ',' and enum values with '\\r' and '\\n'
    (quoted raw in the check's messages) cannot start another workflow command."""
    name = "a\n::add-mask::x,line=1:y.json"

    def lexicon(values: list[str]) -> dict[str, Any]:
        prop = {"type": "string", "enum": values}
        return _lexicon(
            "com.example.gh",
            {
                "main": {
                    "type": "record",
                    "key": "tid",
                    "record": {"type": "object", "properties": {"s": prop}},
                }
            },
        )

    _write(tmp_path / "old" / name, lexicon(["a"]))
    _write(tmp_path / "new" / name, lexicon(["a", "b\r::add-mask::x\n::error::y"]))
    proc = _cli(
        ["check", "new", "--against", "old", "--format", "github"], cwd=tmp_path
    )
    assert proc.returncode in (0, 1), proc.stderr
    lines = proc.stdout.splitlines()
    assert lines, proc.stderr
    for line in lines:
        assert line.startswith(("::error file=", "::warning file=")), lines
        assert "\r" not in line
        props = line[2:].partition("::")[0]
        assert props.count(",") == 3 and props.count("=") == 5, props
    assert any("b%0D::add-mask::x%0A::error::y" in line for line in lines), lines
    assert any("a%0A%3A%3Aadd-mask%3A%3Ax%2Cline=1%3Ay.json" in line for line in lines)


def test_build_github_format_escapes_file_names(tmp_path: Path) -> None:
    doc = _lexicon("com.example.gh", {"main": {"type": "token", "maxLenght": 1}})
    _write(tmp_path / "src" / "x\n::error file=forged::boom.json", doc)
    proc = _cli(["build", "src", "--out", "out", "--format", "github"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines and all(line.startswith("::warning file=") for line in lines), lines
    text = _cli(["build", "src", "--out", "out2"], cwd=tmp_path)
    warnings = [line for line in text.stderr.splitlines() if "LEX_UNKNOWN_KEY" in line]
    assert len(warnings) == 1 and "x\\n::error file=forged" in warnings[0]
    assert not any(line.startswith("::") for line in text.stderr.splitlines())


def test_escape_like_the_actions_toolkit() -> None:
    """``escapeData`` / ``escapeProperty`` of @actions/core src/command.ts."""
    assert escape_data("100% a\r\nb:c,d") == "100%25 a%0D%0Ab:c,d"
    assert escape_property("100% a\r\nb:c,d") == "100%25 a%0D%0Ab%3Ac%2Cd"
    d = Diagnostic(Span("a,b:c\n.json", 1, 2, "/x"), "R", Severity.ERROR, "m\r::x")
    assert (
        d.as_github()
        == "::error file=a%2Cb%3Ac%0A.json,line=1,col=2,title=R::m%0D::x (at /x)"
    )
    assert "\n" not in d.as_text() and "\r" not in d.as_text()
    assert printable("a\x1b[31mb\u202ec") == "a\\x1b[31mb\\u202ec"


# -- source discovery ------------------------------------------------------------------
def _one_lexicon(where: Path) -> Path:
    return _write(
        where / "ok.json", _lexicon("com.example.ok", {"main": {"type": "token"}})
    )


def test_fifo_in_a_source_directory_is_refused(tmp_path: Path) -> None:
    """Was: the build blocked forever reading the FIFO."""
    _one_lexicon(tmp_path / "src")
    os.mkfifo(tmp_path / "src" / "pipe.json")
    (hit,) = _refused(tmp_path, "SRC_NOT_REGULAR", tmp_path / "src", located=False)
    assert hit["path"].endswith("pipe.json") and "FIFO" in hit["message"]


def test_fifo_named_explicitly_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.json")
    _refused(tmp_path, "SRC_NOT_REGULAR", tmp_path / "pipe.json", located=False)


def test_symlink_to_dev_zero_is_refused(tmp_path: Path) -> None:
    """Was: the build read /dev/zero until memory ran out."""
    _one_lexicon(tmp_path / "src")
    (tmp_path / "src" / "zero.json").symlink_to("/dev/zero")
    (hit,) = _refused(tmp_path, "SRC_NOT_REGULAR", tmp_path / "src", located=False)
    assert "character device" in hit["message"]


def test_oversized_source_is_refused(tmp_path: Path) -> None:
    _one_lexicon(tmp_path / "src")
    with open(tmp_path / "src" / "huge.json", "wb") as f:
        f.truncate(MAX_SOURCE_BYTES + 1)  # sparse: costs no disk
    (hit,) = _refused(tmp_path, "SRC_TOO_LARGE", tmp_path / "src", located=False)
    assert hit["path"].endswith("huge.json")


def test_file_swapped_for_a_fifo_after_discovery_is_not_read(tmp_path: Path) -> None:
    """load_paths checks the opened descriptor, not the name discovery saw."""
    code = f"""
    from pathlib import Path
    from atdata_gen.diagnostics import Reporter
    from atdata_gen.sources import load_paths
    import os
    p = Path({str(tmp_path / "late.json")!r})
    os.mkfifo(p)
    r = Reporter()
    assert load_paths([(p, "late.json")], r) == []
    _result["value"] = [d.rule for d in r]
    """
    from .fuzz.bounded import run_bounded

    outcome = run_bounded(code, timeout=60, address_space_mib=2048)
    assert not outcome.timed_out and outcome.error is None, outcome.traceback
    assert outcome.value == ["SRC_NOT_REGULAR"]


def test_output_inside_a_source_root_is_not_read_back(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _one_lexicon(src)
    for _ in range(2):
        proc = _cli(
            ["build", "src", "--out", "src/gen", "--format", "json"], cwd=tmp_path
        )
        doc = json.loads(proc.stdout)
        assert proc.returncode == 0 and doc["diagnostics"] == [], doc
    assert (src / "gen" / "atdata_lexicons" / ".atdata-gen.json").is_file()
    manifest = src / "gen" / "atdata_lexicons" / ".atdata-gen.json"
    _refused(tmp_path, "SRC_GENERATED", manifest, located=False)


# -- credentials in URLs ---------------------------------------------------------------
SECRET_URL = (
    "https://alice:hunter2@example.org/x?access_token=tok123&v=1"
    "&X-Amz-Signature=amzsig&sig=azsig#token=fragtok"
)
SECRETS = ("alice", "hunter2", "tok123", "amzsig", "azsig", "fragtok")


@pytest.mark.parametrize("fmt", ["text", "json", "github"])
def test_credentials_never_reach_compiler_output(tmp_path: Path, fmt: str) -> None:
    _write(tmp_path / "src" / "lens.json", _lens("l", SECRET_URL))
    proc = _cli(["build", "src", "--out", "out", "--format", fmt], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    shown = proc.stdout + proc.stderr
    assert "LENS_SCHEMA_URI" in shown and "example.org/x" in shown
    for secret in SECRETS:
        assert secret not in shown, (secret, shown)
    _nothing_written(tmp_path)


def test_redact_url() -> None:
    assert redact_url(SECRET_URL) == (
        "https://example.org/x?access_token=REDACTED&v=1"
        "&X-Amz-Signature=REDACTED&sig=REDACTED#token=REDACTED"
    )
    assert redact_url(SECRET_URL, drop=True) == "https://example.org/x?v=1"
    assert redact_url("git@github.com:lab/x.git") == "git@github.com:lab/x.git"
    assert redact_url("https://example.org/a?q=1#frag") == (
        "https://example.org/a?q=1#frag"
    )
    assert redact_urls(f"fetch {SECRET_URL!r} failed") == (
        "fetch 'https://example.org/x?access_token=REDACTED&v=1"
        "&X-Amz-Signature=REDACTED&sig=REDACTED#token=REDACTED' failed"
    )


def test_new_rules_are_catalogued() -> None:
    rules = set(all_rule_ids())
    for rule in (
        "SRC_FLOAT",
        "SRC_INTEGER_RANGE",
        "SRC_JSON_TOO_DEEP",
        "SRC_NOT_REGULAR",
        "SRC_TOO_LARGE",
        "SRC_GENERATED",
        "NAME_TOO_LONG",
        "LEX_PROPERTY_RESERVED",
        "LEX_PROPERTY_DOLLAR",
        "SCHEMA_PROPERTY_RESERVED",
        "LEX_TYPE_TOO_DEEP",
    ):
        assert rule in rules


def test_load_text_never_raises_on_hostile_numbers() -> None:
    from atdata_gen.diagnostics import Reporter

    for text in ("[NaN]", "[-Infinity]", "[1e999]", "[" + "7" * 50_000 + "]"):
        reporter = Reporter()
        assert load_text("x.json", text.encode(), reporter) is None
        (d,) = reporter
        assert d.span.pointer == "/0" and (d.span.line, d.span.column) == (1, 2)


@pytest.mark.parametrize("fmt", ["text", "json", "github"])
def test_credentials_never_reach_check_output(tmp_path: Path, fmt: str) -> None:
    def lexicon(values: list[str]) -> dict[str, Any]:
        prop = {"type": "string", "knownValues": values}
        return _lexicon(
            "com.example.kv",
            {"main": {"type": "object", "properties": {"s": prop}}},
        )

    _write(tmp_path / "old" / "kv.json", lexicon(["a"]))
    _write(tmp_path / "new" / "kv.json", lexicon(["a", SECRET_URL]))
    proc = _cli(["check", "new", "--against", "old", "--format", fmt], cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr
    shown = proc.stdout + proc.stderr
    assert "example.org/x" in shown, shown
    for secret in SECRETS:
        assert secret not in shown, (secret, shown)


# -- `$`-prefixed property names (reserved by the atproto data model) ----------------
_DOLLAR = {
    "lexicon": 1,
    "id": "com.example.dollar",
    "defs": {
        "main": {
            "type": "record",
            "key": "tid",
            "record": {
                "type": "object",
                "properties": {"u": {"type": "union", "refs": ["#thing"]}},
            },
        },
        "thing": {
            "type": "object",
            "properties": {"$type": {"type": "object", "properties": {}}},
        },
    },
}


def test_dollar_type_property_is_refused(tmp_path: Path) -> None:
    """The fuzz's reproducer: a property named ``$type`` built (exit 0), and the
    def could then not hold its own tagged value (``Dollar.from_wire({"$type":
    ..., "u": {"$type": "com.example.dollar#thing"}})`` raised a
    ValidationError)."""
    src = tmp_path / "src" / "dollar.json"
    src.parent.mkdir()
    src.write_text(json.dumps(_DOLLAR), encoding="utf-8")
    (hit,) = _refused(tmp_path, "LEX_PROPERTY_RESERVED", src)
    assert hit["pointer"] == "/defs/thing/properties/$type"
    text = src.read_text(encoding="utf-8")
    assert text[_offset(text, hit["line"], hit["column"]) :].startswith('"$type"')
    assert "Data Model" in hit["message"]


def _offset(text: str, line: int, column: int) -> int:
    lines = text.splitlines(keepends=True)
    return sum(len(x) for x in lines[: line - 1]) + column - 1


@pytest.mark.parametrize(
    ("where", "name"),
    [
        ("record", "$link"),
        ("object", "$bytes"),
        ("params", "$type"),
        ("input", "$type"),  # an inline object: it carries no tag of its own
        ("inline", "$type"),
    ],
)
def test_dollar_property_names_are_refused_everywhere(
    tmp_path: Path, where: str, name: str
) -> None:
    prop = {"type": "string"}
    obj = {"type": "object", "properties": {"ok": prop, name: prop}}
    main: dict[str, Any] = {
        "record": {"type": "record", "key": "tid", "record": obj},
        "object": obj,
        "params": {
            "type": "query",
            "parameters": {"type": "params", "properties": {name: prop}},
        },
        "input": {
            "type": "procedure",
            "input": {"encoding": "application/json", "schema": obj},
        },
        "inline": {"type": "object", "properties": {"o": obj}},
    }[where]
    _write(tmp_path / "d.json", _lexicon("com.example.dollar", {"main": main}))
    (hit,) = _refused(tmp_path, "LEX_PROPERTY_RESERVED", tmp_path / "d.json")
    assert hit["pointer"].endswith("/properties/" + name), hit


@pytest.mark.parametrize(
    ("where", "prop"),
    [
        ("main", {"type": "integer"}),
        ("main", {"type": "string", "const": "com.example.other"}),
        ("thing", {"type": "string", "const": "com.example.dollar"}),
    ],
)
def test_dollar_type_of_another_kind_or_tag_is_refused(
    tmp_path: Path, where: str, prop: dict[str, Any]
) -> None:
    defs: dict[str, Any] = {
        "main": {
            "type": "record",
            "key": "tid",
            "record": {"type": "object", "properties": {}},
        },
        "thing": {"type": "object", "properties": {}},
    }
    body = defs[where]["record"] if where == "main" else defs[where]
    body["properties"]["$type"] = prop
    _write(tmp_path / "d.json", _lexicon("com.example.dollar", defs))
    (hit,) = _refused(tmp_path, "LEX_PROPERTY_RESERVED", tmp_path / "d.json")
    assert hit["pointer"].endswith("/properties/$type"), hit


def test_own_dollar_type_and_other_dollar_names_are_kept(tmp_path: Path) -> None:
    """What atdata's own Lexicons declare (``$type`` as a string const of the def's
    own tag, ``$schema``, ``$atdataSchemaVersion``) still builds: ``$type`` so
    declared is harmless, other ``$`` names are a warning (LEX_PROPERTY_DOLLAR)."""
    tag = {"type": "string", "const": "com.example.dollar#fmt"}
    defs = {
        "main": {
            "type": "record",
            "key": "tid",
            "record": {
                "type": "object",
                "properties": {
                    "$type": {"type": "string", "const": "com.example.dollar"},
                    "$atdataSchemaVersion": {"type": "integer", "minimum": 1},
                },
            },
        },
        "fmt": {
            "type": "object",
            "properties": {"$type": tag, "$schema": {"type": "string"}},
        },
    }
    _write(tmp_path / "d.json", _lexicon("com.example.dollar", defs))
    code, diags = _build(tmp_path, tmp_path / "d.json")
    assert code == 0, diags
    warned = sorted(d["pointer"] for d in diags if d["rule"] == "LEX_PROPERTY_DOLLAR")
    assert warned == [
        "/defs/fmt/properties/$schema",
        "/defs/main/record/properties/$atdataSchemaVersion",
    ], diags
    assert all(d["severity"] == "warning" for d in diags), diags


def test_dollar_field_names_of_schema_records_are_refused(tmp_path: Path) -> None:
    """A sample field named ``$x``: as a key of the record's JSON Schema it is a
    reserved data-model key (readers may ignore it); JSON Schema's own ``$schema``
    / ``$type`` keywords beside ``properties`` stay accepted."""
    record = flat_schema_record(
        "lab.Sample", "1.0.0", {"x": {"type": "string"}, "$x": {"type": "string"}}
    )
    _write(tmp_path / "schema.json", record)
    (hit,) = _refused(tmp_path, "SCHEMA_PROPERTY_RESERVED", tmp_path / "schema.json")
    assert hit["pointer"] == "/schema/properties/$x"
    ok = flat_schema_record("lab.Sample", "1.0.0", {"x": {"type": "string"}})
    _write(tmp_path / "ok" / "schema.json", ok)
    code, diags = _build(tmp_path / "ok", tmp_path / "ok" / "schema.json")
    assert code == 0, diags


def test_dollar_field_names_of_field_list_records_are_refused(tmp_path: Path) -> None:
    record = {
        "name": "lab.Sample",
        "version": "1.0.0",
        "fields": [
            {"name": "x", "fieldType": {"$type": "primitive", "primitive": "str"}},
            {"name": "$x", "fieldType": {"$type": "primitive", "primitive": "str"}},
        ],
    }
    _write(tmp_path / "schema.json", record)
    (hit,) = _refused(tmp_path, "SCHEMA_PROPERTY_RESERVED", tmp_path / "schema.json")
    assert hit["pointer"] == "/fields/1/name"


# -- type nesting (LEX_TYPE_TOO_DEEP) ------------------------------------------------
_NS = "com.example.deep"
_THING = {"type": "object", "properties": {"x": {"type": "integer"}}}


def _deep_construct(kind: str, levels: int) -> tuple[dict[str, Any], Any]:
    """A record Lexicon whose one required property ``f`` nests ``levels`` levels
    (the record body is level 1), and wire data of full depth for it."""
    defs: dict[str, Any] = {}
    inner = levels - 1
    if kind == "constrained arrays":
        node: dict[str, Any] = {"type": "integer", "maximum": 3}
        data: Any = 1
        for _ in range(inner):
            node, data = {"type": "array", "items": node, "maxLength": 4}, [data]
    elif kind == "union in arrays":
        defs["thing"] = _THING
        node = {"type": "union", "refs": ["#thing"]}
        data = {"$type": f"{_NS}#thing", "x": 1}
        for _ in range(inner - 2):  # the union and the member's object are levels
            node, data = {"type": "array", "items": node, "maxLength": 4}, [data]
    elif kind == "objects and arrays":
        defs["thing"] = _THING
        node = {"type": "union", "refs": ["#thing"]}
        data = {"$type": f"{_NS}#thing", "x": 1}
        for i in range(inner - 2):
            if i % 2:
                node, data = {"type": "array", "items": node, "maxLength": 4}, [data]
            else:
                node = {"type": "object", "properties": {"p": node}, "required": ["p"]}
                data = {"p": data}
    elif kind == "refs chain":
        # defs d0 → d1 → … each an object of 7 arrays, the last holding an integer
        per, count = 7, (inner - 1) // 8 + 1
        leaf: dict[str, Any] = {"type": "integer"}
        data = 1
        for j in reversed(range(count)):
            n = per if j else inner - 8 * (count - 1) - 1
            node, d = leaf, data
            for _ in range(n):
                node, d = {"type": "array", "items": node, "maxLength": 4}, [d]
            defs[f"d{j}"] = {
                "type": "object",
                "properties": {"p": node},
                "required": ["p"],
            }
            leaf, data = {"type": "ref", "ref": f"#d{j}"}, {"p": d}
        node = leaf
    else:
        raise AssertionError(kind)
    defs["main"] = {
        "type": "record",
        "key": "tid",
        "record": {"type": "object", "required": ["f"], "properties": {"f": node}},
    }
    return _lexicon(_NS, defs), {"$type": _NS, "f": data}


_USE_DEEP = """
import json, sys
import atdata_lexicons.com.example.deep as m
assert sys.getrecursionlimit() == 1000
sys.setrecursionlimit({limit})
data = json.loads(sys.stdin.read())
for name in m.__all__:
    getattr(m, name).model_rebuild()
value = m.Deep.from_wire(data)
assert value.to_wire() == data
assert m.Deep.from_json(json.dumps(data)).to_wire() == data
print("ok")
"""


@pytest.mark.parametrize(
    "kind",
    ["constrained arrays", "union in arrays", "objects and arrays", "refs chain"],
)
def test_type_nesting_at_the_limit_validates_deep_data(
    tmp_path: Path, kind: str
) -> None:
    """At ``MAX_TYPE_DEPTH`` levels the worst constructs (arrays with
    ``maxLength``: ~18 frames a level; a union inside them; objects between
    them; levels spread over a chain of refs) build, and the model validates and
    dumps data of full depth with a margin: under a recursion limit of 700, 300
    frames short of Python's default of 1000 (measured need: ~580)."""
    from atdata_gen.ir.depth import MAX_TYPE_DEPTH

    doc, data = _deep_construct(kind, MAX_TYPE_DEPTH)
    _write(tmp_path / "deep.json", doc)
    code, diags = _build(tmp_path, tmp_path / "deep.json")
    assert code == 0, diags
    proc = subprocess.run(
        [sys.executable, "-c", _USE_DEEP.format(limit=700)],
        input=json.dumps(data),
        cwd=tmp_path / "out",
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(tmp_path / "out"), str(ROOT / "runtime")]
            ),
        },
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


@pytest.mark.parametrize(
    "kind",
    ["constrained arrays", "union in arrays", "objects and arrays", "refs chain"],
)
def test_type_nesting_one_past_the_limit_is_refused(tmp_path: Path, kind: str) -> None:
    from atdata_gen.ir.depth import MAX_TYPE_DEPTH

    doc, _ = _deep_construct(kind, MAX_TYPE_DEPTH + 1)
    _write(tmp_path / "deep.json", doc)
    (hit,) = _refused(tmp_path, "LEX_TYPE_TOO_DEEP", tmp_path / "deep.json")
    assert f"nested {MAX_TYPE_DEPTH + 1} levels deep" in hit["message"], hit
    assert f"limit is {MAX_TYPE_DEPTH}" in hit["message"], hit


def test_type_nesting_is_refused_at_the_first_deep_type(tmp_path: Path) -> None:
    """Located at the array that opens level 33, not at the def or the leaf."""
    doc, _ = _deep_construct("constrained arrays", 40)
    _write(tmp_path / "deep.json", doc)
    (hit,) = _refused(tmp_path, "LEX_TYPE_TOO_DEEP", tmp_path / "deep.json")
    assert hit["pointer"] == "/defs/main/record/properties/f" + "/items" * 31


def test_recursive_refs_are_not_counted_again(tmp_path: Path) -> None:
    """Self- and mutual recursion through refs are legitimate (pydantic refers to
    the model being built): a def of 20 levels that refers to itself and to a
    partner that refers back builds, and validates data 100 levels deep."""
    arrays: dict[str, Any] = {"type": "ref", "ref": "#node"}
    for _ in range(18):
        arrays = {"type": "array", "items": arrays, "maxLength": 4}
    doc = _lexicon(
        _NS,
        {
            "main": {
                "type": "record",
                "key": "tid",
                "record": {
                    "type": "object",
                    "required": ["f"],
                    "properties": {"f": {"type": "ref", "ref": "#node"}},
                },
            },
            "node": {
                "type": "object",
                "properties": {
                    "deep": arrays,
                    "next": {"type": "ref", "ref": "#node"},
                    "other": {"type": "ref", "ref": "#partner"},
                },
            },
            "partner": {
                "type": "object",
                "properties": {"back": {"type": "ref", "ref": "#node"}},
            },
        },
    )
    _write(tmp_path / "deep.json", doc)
    code, diags = _build(tmp_path, tmp_path / "deep.json")
    assert code == 0, diags
    data: Any = {}
    for i in range(100):
        data = {"next": data} if i % 2 else {"other": {"back": data}}
    proc = subprocess.run(
        [sys.executable, "-c", _USE_DEEP.format(limit=1000)],
        input=json.dumps({"$type": _NS, "f": data}),
        cwd=tmp_path / "out",
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(tmp_path / "out"), str(ROOT / "runtime")]
            ),
        },
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_mutual_recursion_does_not_hide_a_chain(tmp_path: Path) -> None:
    """A cycle of defs (d0 → d1 → … → d4 → d0), each 20 levels deep: each def is
    within the limit alone, and the back edge does not stop the count before the
    chain has added up (pydantic builds d1 inside d0, and so on)."""
    defs: dict[str, Any] = {}
    for j in range(5):
        node: dict[str, Any] = {"type": "ref", "ref": f"#d{(j + 1) % 5}"}
        for _ in range(19):
            node = {"type": "array", "items": node}
        defs[f"d{j}"] = {"type": "object", "properties": {"p": node}}
    _write(tmp_path / "deep.json", _lexicon(_NS, defs))
    hits = _refused(tmp_path, "LEX_TYPE_TOO_DEEP", tmp_path / "deep.json")
    assert any("through" in h["message"] for h in hits), hits
