"""The record registry of generated packages (``RECORDS`` in the top-level
``__init__.py``, ``atdata_gen.backend.emit_registry``), its runtime
(``atdata_runtime.lex.registry``) and the ingestion service's record validation
(``atdata_ingest.records``).

- complete: every record Lexicon of the corpus (read from the JSON files, not from
  the compiler) has an entry, and each entry imports the model of its NSID;
- lazy: importing a package imports no record module (checked in a fresh
  interpreter); a lookup imports only the module asked for;
- deterministic: same text whatever the hash seed or the order of the sources;
- ``validate_record`` on real records (the atdata 0.7 schema records of the shared
  corpus, a Bluesky post/like) and their mutations, whose pointers must name the
  mutated value.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from atdata_gen.backend.format import format_sources
from atdata_gen.diagnostics import Reporter
from atdata_gen.pipeline import BuildOptions, build
from atdata_ingest import records as ingest_records
from atdata_runtime.lex import LexRecord
from atdata_runtime.lex.registry import (
    RecordRegistry,
    RecordRegistryError,
    record_model,
    records_of,
)

from .conftest import ATDATA_LEXICONS, CORPUS, OFFICIAL, ROOT, compile_to

OWN_LEXICONS = ROOT / "lexicons"
RECORDS_DIR = CORPUS / "atdata" / "records"


def _record_nsids(root: Path) -> set[str]:
    """NSIDs of the record Lexicons under ``root``, read from the JSON itself."""
    out = set()
    for path in root.rglob("*.json"):
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("defs", {}).get("main", {}).get("type") == "record":
            out.add(doc["id"])
    return out


def _records_literal(text: str) -> dict[str, str]:
    """``RECORDS`` of an ``__init__.py``, read from its AST (nothing imported)."""
    for node in ast.parse(text).body:
        if isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "RECORDS":
            value = ast.literal_eval(node.value)  # type: ignore[arg-type]
            assert isinstance(value, dict)
            return value
    raise AssertionError("no RECORDS in the package __init__")


def _build(sources: list[Path], package: str = "p", fmt: bool = False) -> str:
    reporter = Reporter()
    result = build(BuildOptions(sources, package, format=fmt, jobs=1), reporter)
    assert result.files is not None, [d.as_text() for d in reporter]
    return result.files["__init__.py"]


# -- complete ---------------------------------------------------------------------------
def test_corpus_registry_lists_every_record_lexicon() -> None:
    expected = _record_nsids(OFFICIAL) | _record_nsids(ATDATA_LEXICONS)
    assert len(expected) > 25  # the corpus has records (the check can fail)
    registry = _records_literal(_build([OFFICIAL, ATDATA_LEXICONS]))
    assert set(registry) == expected
    assert list(registry) == sorted(registry)


def test_committed_packages_list_every_record_lexicon() -> None:
    import atdata_ingest.lexicons as official
    import atdata_runtime.lexicons as own

    assert set(official.RECORDS) == _record_nsids(OFFICIAL)
    assert set(own.RECORDS) == _record_nsids(OWN_LEXICONS)
    assert "app.bsky.feed.post" in official.RECORDS
    assert "science.alt.dataset.entry" in own.RECORDS


def test_every_entry_imports_the_model_of_its_nsid(corpus_package: str) -> None:
    entries = records_of(corpus_package)
    assert len(entries) > 25
    for nsid in entries:
        model = record_model(corpus_package, nsid)
        assert isinstance(model, type) and issubclass(model, LexRecord), nsid
        assert model.lex_type == nsid
        assert model.__module__.startswith(corpus_package + ".")
        assert record_model(corpus_package, nsid) is model  # cached
    assert record_model(corpus_package, "app.bsky.feed.defs") is None  # not a record
    assert record_model(corpus_package, "no.such.record") is None


def test_a_record_whose_module_is_also_a_package(tmp_path: Path) -> None:
    """``com.example.thing`` lives in ``com/example/thing/__init__.py`` when
    ``com.example.thing.part`` exists: its entry is ``com.example.thing:Thing``."""
    src = tmp_path / "src"
    for nsid in ("com.example.thing", "com.example.thing.part"):
        path = src / (nsid.replace(".", "/") + ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"type": "object", "properties": {"n": {"type": "integer"}}}
        doc = {
            "lexicon": 1,
            "id": nsid,
            "defs": {"main": {"type": "record", "key": "tid", "record": record}},
        }
        path.write_text(json.dumps(doc), encoding="utf-8")
    out = compile_to(tmp_path / "out", [src], "nested_pkg")
    text = (out / "nested_pkg" / "__init__.py").read_text(encoding="utf-8")
    assert _records_literal(text) == {
        "com.example.thing": "com.example.thing:Thing",
        "com.example.thing.part": "com.example.thing.part:Part",
    }
    assert (out / "nested_pkg" / "com" / "example" / "thing" / "__init__.py").is_file()
    sys.path.insert(0, str(out))
    try:
        thing = record_model("nested_pkg", "com.example.thing")
        part = record_model("nested_pkg", "com.example.thing.part")
    finally:
        sys.path.remove(str(out))
    assert thing is not None and thing.lex_type == "com.example.thing"
    assert part is not None and part.lex_type == "com.example.thing.part"


def test_a_package_without_records_has_an_empty_registry() -> None:
    xrpc = ROOT / "tests" / "golden" / "xrpc" / "input"
    assert _records_literal(_build([xrpc])) == {}


# -- lazy -------------------------------------------------------------------------------
_LAZY_PROBE = """
import sys
import atdata_ingest.lexicons as official
import atdata_runtime.lexicons as own
from atdata_ingest import records

def loaded():
    return sorted(
        m for m in sys.modules
        if m.startswith(("atdata_ingest.lexicons.", "atdata_runtime.lexicons."))
    )

assert len(official.RECORDS) > 20 and own.RECORDS
assert loaded() == [], loaded()
records.registry()
assert loaded() == [], loaded()
assert records.record_model("no.such.thing") is None
assert loaded() == [], loaded()
like = records.record_model("app.bsky.feed.like")
assert like is not None and like.lex_type == "app.bsky.feed.like"
now = loaded()
assert "atdata_ingest.lexicons.app.bsky.feed.like" in now, now
assert "atdata_ingest.lexicons.app.bsky.feed.post" not in now, now
assert not any(m.startswith("atdata_runtime.lexicons.") for m in now), now
print("lazy ok", len(now))
"""


def test_importing_a_package_imports_no_record_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _LAZY_PROBE], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("lazy ok")


def test_the_lazy_probe_can_fail() -> None:
    """Importing a record module first makes the probe fail (it checks something)."""
    probe = "import atdata_ingest.lexicons.app.bsky.feed.post\n" + _LAZY_PROBE
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode != 0
    assert "AssertionError" in proc.stderr


# -- deterministic ----------------------------------------------------------------------
_SEED_PROBE = """
import sys
from pathlib import Path
from atdata_gen.pipeline import BuildOptions, build
result = build(BuildOptions([Path(p) for p in sys.argv[1:]], "p", format=False, jobs=1))
sys.stdout.write(result.files["__init__.py"])
"""


def test_registry_text_is_the_same_for_every_hash_seed_and_source_order() -> None:
    def run(seed: str, *sources: Path) -> str:
        proc = subprocess.run(
            [sys.executable, "-c", _SEED_PROBE, *map(str, sources)],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONHASHSEED=seed),
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    a = run("0", OFFICIAL, ATDATA_LEXICONS)
    b = run("1", ATDATA_LEXICONS, OFFICIAL)
    assert a == b
    assert '"app.bsky.feed.post": "app.bsky.feed.post:Post",' in a


def test_registry_text_is_already_formatted() -> None:
    """The emitter writes what ruff format would: formatting changes nothing."""
    text = _build([OFFICIAL, ATDATA_LEXICONS])
    assert format_sources({"__init__.py": text})["__init__.py"] == text


def test_committed_packages_are_fresh() -> None:
    """``atdata_ingest/lexicons`` is what the compiler writes for the official
    Lexicons, as configured by ``ingest/pyproject.toml``'s ``[tool.atdata-gen]``
    (``build --check``; the runtime's is checked by test_build)."""
    proc = subprocess.run(
        [sys.executable, "-m", "atdata_gen.cli", "build", "--check", "-q"],
        cwd=ROOT / "ingest",
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, (
        proc.stdout[-2000:]
        + proc.stderr[-2000:]
        + "\nrun: cd ingest && uv run atdata-gen build"
    )


# -- the runtime's errors and order -----------------------------------------------------
@pytest.fixture
def hand_packages(tmp_path: Path) -> Iterator[Path]:
    """Hand-written packages with broken registries, importable for the test."""
    (tmp_path / "no_registry").mkdir()
    (tmp_path / "no_registry" / "__init__.py").write_text('"""Old output."""\n')
    bad = tmp_path / "bad_registry"
    bad.mkdir()
    (bad / "__init__.py").write_text(
        textwrap.dedent(
            """\
            RECORDS: dict[str, str] = {
                "com.example.a": "mod:NotAModel",
                "com.example.b": "mod:Other",
                "com.example.c": "mod-no-colon",
                "com.example.d": "missing_module:X",
            }
            """
        )
    )
    (bad / "mod.py").write_text(
        textwrap.dedent(
            """\
            from atdata_runtime.lex import LexRecord
            NotAModel = int
            class Other(LexRecord):
                lex_type = "com.example.other"
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] in ("bad_registry",)]:
            del sys.modules[name]
        sys.modules.pop("no_registry", None)


def test_a_package_without_registry_is_refused(hand_packages: Path) -> None:
    with pytest.raises(RecordRegistryError) as info:
        record_model("no_registry", "com.example.a")
    assert info.value.rule == "RECORD_REGISTRY"
    assert info.value.package == "no_registry" and info.value.nsid is None
    assert "rebuild" in str(info.value)
    with pytest.raises(RecordRegistryError):
        RecordRegistry("atdata_runtime.lexicons", "no_registry")


@pytest.mark.parametrize(
    ("nsid", "why"),
    [
        ("com.example.a", "not a generated record model"),
        ("com.example.b", "is the model of 'com.example.other'"),
        ("com.example.c", "is not '<module>:<class>'"),
    ],
)
def test_a_wrong_entry_is_refused(hand_packages: Path, nsid: str, why: str) -> None:
    with pytest.raises(RecordRegistryError) as info:
        record_model("bad_registry", nsid)
    assert info.value.nsid == nsid and why in info.value.reason
    assert str(info.value).startswith(f"RECORD_REGISTRY bad_registry.RECORDS['{nsid}']")


def test_a_missing_module_is_an_import_error(hand_packages: Path) -> None:
    with pytest.raises(ImportError):
        record_model("bad_registry", "com.example.d")


def test_registry_tries_packages_in_order(tmp_path: Path) -> None:
    """The live atdata lexicons compiled into a second package: the first package
    listing an NSID provides its model."""
    out = compile_to(tmp_path, [ATDATA_LEXICONS], "shadow_pkg")
    sys.path.insert(0, str(out))
    try:
        first = RecordRegistry("atdata_runtime.lexicons", "shadow_pkg")
        second = RecordRegistry("shadow_pkg", "atdata_runtime.lexicons")
        entry = "science.alt.dataset.entry"
        a, b = first.get(entry), second.get(entry)
    finally:
        sys.path.remove(str(out))
    assert a is not None and a.__module__.startswith("atdata_runtime.lexicons.")
    assert b is not None and b.__module__.startswith("shadow_pkg.")
    assert first.packages == ("atdata_runtime.lexicons", "shadow_pkg")
    assert entry in first and "no.such.record" not in first and 3 not in first
    assert first.get("no.such.record") is None
    assert list(first) == sorted(set(first)) and len(first) == len(list(first))


# -- validate_record ----------------------------------------------------------------------
DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
CID = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"
BLOB = "bafkreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy"
POST: dict[str, Any] = {
    "$type": "app.bsky.feed.post",
    "text": "Hello #atproto",
    "langs": ["en"],
    "createdAt": "2026-01-02T03:04:05.678Z",
    "facets": [
        {
            "index": {"byteStart": 6, "byteEnd": 14},
            "features": [{"$type": "app.bsky.richtext.facet#tag", "tag": "atproto"}],
        }
    ],
    "reply": {
        "root": {"uri": f"at://{DID}/app.bsky.feed.post/3l3qo2vutsw2b", "cid": CID},
        "parent": {"uri": f"at://{DID}/app.bsky.feed.post/3l3qo2vutsw2b", "cid": CID},
    },
    "embed": {
        "$type": "app.bsky.embed.images",
        "images": [
            {
                "alt": "a cat",
                "image": {
                    "$type": "blob",
                    "ref": {"$link": BLOB},
                    "mimeType": "image/jpeg",
                    "size": 123456,
                },
                "aspectRatio": {"width": 1200, "height": 800},
            }
        ],
    },
}
LIKE: dict[str, Any] = {
    "$type": "app.bsky.feed.like",
    "createdAt": "2026-01-02T03:04:05.678Z",
    "subject": {"uri": f"at://{DID}/app.bsky.feed.post/3l3qo2vutsw2b", "cid": CID},
}
ENTRY: dict[str, Any] = {
    "$type": "science.alt.dataset.entry",
    "name": "mnist-train",
    "schemaRef": f"at://{DID}/science.alt.dataset.schema/mnist:1.0.0",
    "storage": {
        "$type": "science.alt.dataset.storageHttp",
        "shards": [
            {
                "url": "https://data.example.org/mnist/00000.tar",
                "checksum": {"algorithm": "sha256", "digest": "ab" * 32},
            }
        ],
    },
    "tags": ["vision"],
    "createdAt": "2026-01-02T03:04:05Z",
}


def _corpus_records() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(RECORDS_DIR.glob("*.json")):
        value = json.loads(path.read_text(encoding="utf-8"))
        out.append((path.name, value))
    assert len(out) == 4
    return out


def _real_records() -> list[tuple[str, dict[str, Any]]]:
    return [
        *_corpus_records(),
        ("post", POST),
        ("like", LIKE),
        ("entry", ENTRY),
    ]


@pytest.mark.parametrize(("name", "record"), _real_records())
def test_real_records_are_valid(name: str, record: dict[str, Any]) -> None:
    nsid = record["$type"]
    assert ingest_records.validate_record(nsid, record) == "ok", name
    text = json.dumps(record)
    assert ingest_records.validate_record(nsid, text) == "ok"
    assert ingest_records.validate_record(nsid, text.encode()) == "ok"


def _mutated(record: dict[str, Any], path: tuple[str | int, ...], value: Any) -> Any:
    out = copy.deepcopy(record)
    node: Any = out
    for part in path[:-1]:
        node = node[part]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


_DELETE = object()


@pytest.mark.parametrize(
    ("record", "path", "value", "expected"),
    [
        (POST, ("text",), _DELETE, "MISSING /text"),
        (POST, ("text",), 7, "STRING_TYPE /text"),
        (POST, ("text",), "x" * 3001, "STRING_UTF8_TOO_LONG /text"),
        (POST, ("$type",), _DELETE, "RECORD_TYPE_MISSING /$type"),
        (POST, ("$type",), "app.bsky.feed.like", "LITERAL_ERROR /$type"),
        (POST, ("$type",), "app.bsky.feed.post#main", "RECORD_TYPE_MAIN /$type"),
        (POST, ("createdAt",), "yesterday", "STRING_FORMAT /createdAt"),
        (POST, ("langs", 0), "!!", "STRING_FORMAT /langs/0"),
        (POST, ("embed", "images", 0, "alt"), 3, "STRING_TYPE /embed/images/0/alt"),
        (POST, ("embed", "images"), _DELETE, "MISSING /embed/images"),
        (POST, ("embed", "$type"), _DELETE, "UNION_TYPE /embed"),
        (POST, ("reply", "root", "cid"), _DELETE, "MISSING /reply/root/cid"),
        (
            POST,
            ("facets", 0, "features", 0, "tag"),
            None,
            "STRING_TYPE /facets/0/features/0/tag",
        ),
        (LIKE, ("subject", "uri"), "https://x", "STRING_FORMAT /subject/uri"),
        (ENTRY, ("storage", "shards"), [], "TOO_SHORT /storage/shards"),
        (ENTRY, ("name",), None, "STRING_TYPE /name"),
    ],
)
def test_invalid_records_name_rule_and_pointer(
    record: dict[str, Any], path: tuple[str | int, ...], value: Any, expected: str
) -> None:
    bad = _mutated(record, path, value)
    assert ingest_records.validate_record(record["$type"], bad) == expected
    assert ingest_records.validate_record(record["$type"], json.dumps(bad)) == expected


def _leaves(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))
    else:
        yield path


def _pointer(path: tuple[str | int, ...]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


@pytest.mark.parametrize(("name", "record"), _real_records())
def test_every_string_leaf_made_a_number_is_found_where_it_is(
    name: str, record: dict[str, Any]
) -> None:
    """Each string of a real record replaced by a number: the answer is ``ok``
    (an ``unknown`` field takes anything) or a problem at that string or above it
    (a union member's ``$type``, a JSON Schema inside a schema record)."""
    nsid = record["$type"]
    exact = checked = 0
    for path in _leaves(record):
        node: Any = record
        for part in path:
            node = node[part]
        if not isinstance(node, str) or path == ("$type",):
            continue
        answer = ingest_records.validate_record(nsid, _mutated(record, path, 12345))
        checked += 1
        if answer == "ok":
            continue
        assert answer is not None
        rule, _, pointer = answer.partition(" ")
        assert rule.isupper() and rule.replace("_", "").isalnum(), answer
        target = _pointer(path)
        assert target == pointer or target.startswith(pointer + "/"), (answer, target)
        exact += target == pointer
    assert checked and exact, name


def test_hostile_records_give_an_answer() -> None:
    validate = ingest_records.validate_record
    assert validate("app.bsky.feed.post", [1]) == "MODEL_TYPE "
    assert validate("app.bsky.feed.post", "[1") == "JSON_INVALID "
    assert validate("app.bsky.feed.post", "{") == "JSON_INVALID "
    huge = " " * (ingest_records.MAX_RECORD_BYTES + 1)
    assert validate("app.bsky.feed.post", huge) == "RECORD_TOO_LARGE "
    deep: Any = "x"
    for _ in range(5000):
        deep = {"a": deep}
    answer = validate("app.bsky.feed.post", {**POST, "text": deep})
    assert answer is not None and answer.startswith("STRING_TYPE /text")
    nested = dict(POST, embed={"$type": "app.bsky.embed.record", "record": deep})
    assert validate("app.bsky.feed.post", nested) not in (None, "ok")
    assert validate("app.bsky.feed.post", {**POST, "extra": deep}) in (
        "ok",
        "RECORD_TOO_DEEP ",
    )


def test_no_model_is_none() -> None:
    assert ingest_records.validate_record("com.example.unknown", POST) is None
    assert ingest_records.validate_record("app.bsky.feed.defs", POST) is None
    assert ingest_records.record_model("com.example.unknown") is None
    post = ingest_records.record_model("app.bsky.feed.post")
    assert post is not None and post.lex_type == "app.bsky.feed.post"
    entry = ingest_records.record_model("science.alt.dataset.entry")
    assert entry is not None and entry.__module__.startswith("atdata_runtime.")
