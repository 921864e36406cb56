"""String formats against the official interop vectors (every line of every file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from atdata_runtime.lex.formats import FORMAT_CHECKS

from .conftest import INTEROP

_FILE_FORMAT = {
    "atidentifier": "at-identifier",
    "aturi": "at-uri",
    "cid": "cid",
    "datetime": "datetime",
    "did": "did",
    "handle": "handle",
    "language": "language",
    "nsid": "nsid",
    "recordkey": "record-key",
    "tid": "tid",
    "uri": "uri",
}


def _vectors() -> list[tuple[str, str, bool]]:
    out = []
    for path in sorted((INTEROP / "syntax").glob("*.txt")):
        fmt = _FILE_FORMAT[path.name.split("_")[0]]
        valid = path.name.endswith("_valid.txt")
        for line in path.read_text(encoding="utf-8").split("\n"):
            if line and not line.startswith("#"):
                out.append((fmt, line, valid))
    return out


VECTORS = _vectors()


def test_every_format_file_is_covered() -> None:
    formats = {fmt for fmt, _, _ in VECTORS}
    assert formats == set(FORMAT_CHECKS), formats ^ set(FORMAT_CHECKS)
    assert len(VECTORS) > 500


@pytest.mark.parametrize(
    ("fmt", "value", "valid"),
    VECTORS,
    ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(VECTORS)],
)
def test_syntax_vector(fmt: str, value: str, valid: bool) -> None:
    assert FORMAT_CHECKS[fmt](value) is valid, (fmt, value)


def test_vectors_path_exists() -> None:
    assert Path(INTEROP).is_dir()


_ADAPTERS: dict[str, object] = {}


def _adapter(fmt: str):  # type: ignore[no-untyped-def]
    from typing import Annotated

    from atdata_runtime.lex import String
    from pydantic import StrictStr, TypeAdapter

    if fmt not in _ADAPTERS:
        _ADAPTERS[fmt] = TypeAdapter(Annotated[StrictStr, String(format=fmt)])
    return _ADAPTERS[fmt]


@pytest.mark.parametrize(
    ("fmt", "value", "valid"),
    VECTORS,
    ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(VECTORS)],
)
def test_syntax_vector_through_model_validation(
    fmt: str, value: str, valid: bool
) -> None:
    """The path generated models take: the native fast pattern, then the exact
    check; errors are typed ``string_format``."""
    from pydantic import ValidationError

    adapter = _adapter(fmt)
    if valid:
        assert adapter.validate_python(value) == value  # type: ignore[attr-defined]
    else:
        with pytest.raises(ValidationError) as info:
            adapter.validate_python(value)  # type: ignore[attr-defined]
        assert info.value.errors()[0]["type"] == "string_format"
