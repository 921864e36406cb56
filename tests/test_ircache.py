"""Issue 17: the IR cache that lets ``atdata-gen check`` skip compiling bytes it has
compiled before. A check through the cache finds exactly what a check without it
finds; an entry that is corrupted, foreign (classes outside the IR), or not
private is ignored, never trusted."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
from atdata_gen import ircache, pipeline
from atdata_gen.checks.runner import run_check

THING = {
    "lexicon": 1,
    "id": "com.example.cache.thing",
    "defs": {
        "main": {
            "type": "record",
            "key": "tid",
            "record": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "maxLength": 64},
                    "size": {"type": "integer", "minimum": 0},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
            },
        }
    },
}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = tmp_path / "cache"
    monkeypatch.setenv("ATDATA_GEN_CACHE_DIR", str(where))
    monkeypatch.delenv("ATDATA_GEN_CACHE", raising=False)
    return where


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many sides were really compiled (``[n]``)."""
    count = [0]
    real = pipeline.compile_sources

    def counting(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "compile_sources", counting)
    return count


def _sides(tmp_path: Path) -> tuple[Path, Path]:
    new, old = tmp_path / "new", tmp_path / "old"
    new.mkdir()
    old.mkdir()
    (new / "thing.json").write_text(json.dumps(THING, indent=1))
    doc = json.loads(json.dumps(THING))
    props = doc["defs"]["main"]["record"]["properties"]
    props["gone"] = {"type": "integer"}
    props["size"] = {"type": "string"}
    (old / "thing.json").write_text(json.dumps(doc, indent=1))
    return new, old


def _entries(where: Path) -> list[Path]:
    return sorted(where.glob("*.ir"))


def test_cached_check_equals_uncached(
    tmp_path: Path, cache: Path, compiles: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    new, old = _sides(tmp_path)
    first = run_check([new], [str(old)]).findings
    assert compiles[0] == 2 and len(_entries(cache)) == 2
    second = run_check([new], [str(old)]).findings
    assert compiles[0] == 2  # both sides came from the cache
    monkeypatch.setenv("ATDATA_GEN_CACHE", "off")
    uncached = run_check([new], [str(old)]).findings
    assert compiles[0] == 4
    assert first == second == uncached
    assert {f.rule for f in first} >= {"FIELD_DELETED"}
    assert oct(cache.stat().st_mode & 0o777) == oct(0o700)


def test_an_edited_file_misses(
    tmp_path: Path, cache: Path, compiles: list[int]
) -> None:
    new, old = _sides(tmp_path)
    run_check([new], [str(old)])
    (old / "thing.json").write_text(json.dumps(THING, indent=1))
    assert run_check([new], [str(old)]).findings == []
    assert compiles[0] == 3  # the edited side compiled again, the other cached


@pytest.mark.parametrize("damage", ["flip", "truncate", "magic"])
def test_corrupted_entry_is_ignored(
    tmp_path: Path, cache: Path, compiles: list[int], damage: str
) -> None:
    new, old = _sides(tmp_path)
    expected = run_check([new], [str(old)]).findings
    for entry in _entries(cache):
        data = bytearray(entry.read_bytes())
        if damage == "flip":
            data[len(data) // 2] ^= 0xFF
        elif damage == "truncate":
            del data[len(data) // 3 :]
        else:
            data[:4] = b"XXXX"
        entry.write_bytes(bytes(data))
    assert run_check([new], [str(old)]).findings == expected
    assert compiles[0] == 4  # both compiled again


def test_an_entry_under_another_key_is_a_miss(
    tmp_path: Path, cache: Path, compiles: list[int]
) -> None:
    """Two valid entries swapped (a copied or renamed cache): each is sealed to its
    own key, so both miss and the check still finds the truth (a new user's trial
    found a swapped pair reporting the opposite change)."""
    new, old = _sides(tmp_path)
    expected = run_check([new], [str(old)]).findings
    a, b = _entries(cache)
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    assert run_check([new], [str(old)]).findings == expected
    assert compiles[0] == 4  # both compiled again
    key = ircache.entry_key(["one"])
    assert ircache.store(key, {"a": 1})
    other = ircache.entry_key(["two"])
    (cache / f"{other}.ir").write_bytes((cache / f"{key}.ir").read_bytes())
    (cache / f"{other}.ir").chmod(0o600)
    assert ircache.load(key) == {"a": 1} and ircache.load(other) is None


class _Evil:
    def __reduce__(self) -> Any:
        return (os.getpid, ())


def _forge(path: Path, obj: Any, key: str) -> None:
    """An entry for ``key`` with a valid header and checksum around ``obj``'s plain
    pickle."""
    payload = pickle.dumps(obj)
    digest = hashlib.sha256(key.encode() + b"\n" + payload).hexdigest().encode()
    digest += b"\n"
    path.write_bytes(ircache.MAGIC + digest + payload)
    path.chmod(0o600)


def test_foreign_classes_are_not_unpickled(cache: Path) -> None:
    assert ircache.cache_dir() == cache
    key = ircache.entry_key(["forged"])
    _forge(cache / f"{key}.ir", _Evil(), key)
    assert ircache.load(key) is None
    _forge(cache / f"{key}.ir", {"a": 1}, key)  # plain data is fine
    assert ircache.load(key) == {"a": 1}


def test_entry_writable_by_others_is_ignored(cache: Path) -> None:
    key = ircache.entry_key(["shared"])
    assert ircache.store(key, {"a": 1})
    assert ircache.load(key) == {"a": 1}
    (cache / f"{key}.ir").chmod(0o666)
    assert ircache.load(key) is None


def test_open_directory_is_not_used(cache: Path) -> None:
    assert ircache.cache_dir() == cache
    cache.chmod(0o770)
    assert ircache.cache_dir() is None
    assert not ircache.store(ircache.entry_key(["x"]), 1)


def test_linked_entry_is_not_followed(tmp_path: Path, cache: Path) -> None:
    key = ircache.entry_key(["linked"])
    assert ircache.cache_dir() == cache
    target = tmp_path / "elsewhere.ir"
    _forge(target, {"a": 1}, key)
    (cache / f"{key}.ir").symlink_to(target)
    assert ircache.load(key) is None


def test_bounded(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ircache, "MAX_ENTRIES", 3)
    for i in range(6):
        assert ircache.store(ircache.entry_key([str(i)]), i)
        os.utime(cache / f"{ircache.entry_key([str(i)])}.ir", (i, i))
    kept = {p.name for p in _entries(cache)}
    assert len(kept) == 3
    assert f"{ircache.entry_key(['5'])}.ir" in kept
    assert ircache.load(ircache.entry_key(["0"])) is None
