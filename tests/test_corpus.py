"""The 402 official Lexicons and the 15 atdata ones compile with zero errors; the
package imports, passes ruff and mypy --strict; records round-trip unchanged."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from atdata_gen.diagnostics import Reporter, Severity
from atdata_gen.pipeline import BuildOptions, build
from atdata_runtime.lex import LexObject

from .conftest import ATDATA_LEXICONS, OFFICIAL, ROOT


def test_corpus_counts() -> None:
    assert len(list(OFFICIAL.rglob("*.json"))) == 402
    assert len(list(ATDATA_LEXICONS.rglob("*.json"))) == 15


def test_corpus_compiles_without_errors() -> None:
    reporter = Reporter()
    result = build(
        BuildOptions([OFFICIAL, ATDATA_LEXICONS], "p", format=False), reporter
    )
    errors = [d.as_text() for d in reporter if d.severity is Severity.ERROR]
    assert errors == []
    assert result.files is not None
    modules = [
        f for f in result.files if f.endswith(".py") and not f.endswith("__init__.py")
    ]
    assert len(modules) == 417


def test_every_module_imports(corpus_package: str) -> None:
    root = _out_dir(corpus_package)
    count = built = 0
    for path in sorted((root / corpus_package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        module = importlib.import_module(".".join(parts))
        count += 1
        # Models build their validators lazily (defer_build); build every one now.
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, LexObject)
                and (value.__module__ == module.__name__)
            ):
                value.model_rebuild(force=True)
                built += 1
    assert count > 417
    assert built > 900


def _out_dir(corpus_package: str) -> Path:
    return Path(importlib.import_module(corpus_package).__file__ or "").parent.parent


def test_ruff_clean(corpus_package: str) -> None:
    out = _out_dir(corpus_package)
    ruff = [sys.executable, "-m", "ruff"]
    check = subprocess.run(
        [*ruff, "check", "--isolated", "--no-cache", corpus_package],
        cwd=out,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout[-3000:]
    fmt = subprocess.run(
        [*ruff, "format", "--check", "--isolated", "--no-cache", corpus_package],
        cwd=out,
        capture_output=True,
        text=True,
    )
    assert fmt.returncode == 0, fmt.stdout[-3000:]


@pytest.mark.slow
def test_mypy_strict_clean(corpus_package: str) -> None:
    out = _out_dir(corpus_package)
    env = dict(os.environ, MYPYPATH="")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "-p",
            corpus_package,
        ],
        cwd=out,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-5000:]


POST = {
    "$type": "app.bsky.feed.post",
    "text": "hello 👋🏽 world",
    "langs": ["en", "pt-BR"],
    "createdAt": "2024-01-01T00:00:00.000Z",
    "facets": [
        {
            "index": {"byteStart": 0, "byteEnd": 5},
            "features": [
                {"$type": "app.bsky.richtext.facet#link", "uri": "https://example.com"}
            ],
        }
    ],
    "reply": {
        "root": {
            "uri": "at://did:plc:abc/app.bsky.feed.post/3k2a",
            "cid": "bafyreib2rxk3rybk3aobmv5cjuql3bm2twh4jo5uxgf5u3tjoqlzhxygje",
        },
        "parent": {
            "cid": "bafyreib2rxk3rybk3aobmv5cjuql3bm2twh4jo5uxgf5u3tjoqlzhxygje",
            "uri": "at://did:plc:abc/app.bsky.feed.post/3k2a",
        },
    },
    "embed": {
        "$type": "app.bsky.embed.images",
        "images": [
            {
                "alt": "x",
                "image": {
                    "$type": "blob",
                    "ref": {
                        "$link": "bafkreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy"
                    },
                    "mimeType": "image/jpeg",
                    "size": 1234,
                },
                "aspectRatio": {"width": 1, "height": 2},
            }
        ],
    },
    "zzUnknownField": {"kept": [1, 2, 3]},
}


def test_post_round_trip_is_exact(corpus_package: str) -> None:
    post = importlib.import_module(f"{corpus_package}.app.bsky.feed.post").Post
    text = json.dumps(POST, ensure_ascii=False, separators=(",", ":"))
    assert post.from_json(text).to_json() == text
    assert json.dumps(post.from_wire(POST).to_wire()) == json.dumps(POST)


@pytest.mark.parametrize(
    ("mutate", "error_type"),
    [
        (lambda r: r.update(text="é" * 1501), "string_utf8_too_long"),
        (lambda r: r.update(text="👋🏽" * 301), "string_graphemes_too_long"),
        (lambda r: r.update(langs=["en", "not a language"]), "string_format"),
        (lambda r: r.pop("createdAt"), "missing"),
        (lambda r: r.update(reply=None), "model_type"),
        (lambda r: r.update(text=5), "string_type"),
        (
            lambda r: r["embed"]["images"][0]["image"].update(mimeType="text/plain"),
            "blob_mime_type",
        ),
    ],
)
def test_post_mutations_rejected(corpus_package: str, mutate, error_type: str) -> None:  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    post = importlib.import_module(f"{corpus_package}.app.bsky.feed.post").Post
    record = json.loads(json.dumps(POST))
    mutate(record)
    with pytest.raises(ValidationError) as info:
        post.from_wire(record)
    assert error_type in {e["type"] for e in info.value.errors()}


def test_closed_union_rejects_unknown_type(corpus_package: str) -> None:
    from pydantic import ValidationError

    mod = importlib.import_module(f"{corpus_package}.com.atproto.repo.apply_writes")
    with pytest.raises(ValidationError):
        mod.ApplyWritesInput.from_wire(
            {
                "repo": "did:plc:abc",
                "writes": [
                    {
                        "$type": "com.atproto.repo.applyWrites#nope",
                        "collection": "a.b.c",
                    }
                ],
            }
        )
    ok = mod.ApplyWritesInput.from_wire(
        {
            "repo": "did:plc:abc",
            "writes": [
                {
                    "$type": "com.atproto.repo.applyWrites#delete",
                    "collection": "a.b.c",
                    "rkey": "x",
                }
            ],
        }
    )
    assert type(ok.writes[0]).__name__ == "Delete"


def test_open_union_keeps_unknown_member(corpus_package: str) -> None:
    post = importlib.import_module(f"{corpus_package}.app.bsky.feed.post").Post
    record = dict(POST, embed={"$type": "com.example.embed#thing", "x": [1]})
    parsed = post.from_wire(record)
    assert parsed.embed.py_type == "com.example.embed#thing"
    assert parsed.to_wire() == record


def test_python_construction_writes_type(corpus_package: str) -> None:
    mod = importlib.import_module(f"{corpus_package}.app.bsky.feed.post")
    images = importlib.import_module(f"{corpus_package}.app.bsky.embed.images")
    post = mod.Post(
        text="hi", created_at="2024-01-01T00:00:00Z", embed=images.Images(images=[])
    )
    wire = post.to_wire()
    assert wire["$type"] == "app.bsky.feed.post"
    assert wire["embed"]["$type"] == "app.bsky.embed.images"
    assert wire["createdAt"] == "2024-01-01T00:00:00Z"
