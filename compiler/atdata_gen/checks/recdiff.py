"""Where two JSON records differ, as JSON pointers: the message part of
``SCHEMA_VERSION_CONFLICT`` (and of ``pull --update``'s changed records).

Pure Python on JSON values (dict, list, str, int, float, bool, None), no imports from
the rest of the compiler, so the runtime's publisher can use the same function.

Pointers are RFC 6901 (``~`` → ``~0``, ``/`` → ``~1``); values are rendered as
compact JSON (``"string" != "integer"``), long ones shortened with ``…``; a member
present on one side only is ``absent`` on the other.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from typing import Any

__all__ = [
    "IGNORED",
    "describe_differences",
    "differences",
    "pointer",
    "schema_differences",
]

IGNORED = frozenset({"/createdAt"})
"""Pointers that are not content: a record's creation time may differ between two
copies of one version (atdata-gen publish and atdata 0.7 compare without it)."""

_ABSENT = object()


def pointer(parts: tuple[str | int, ...]) -> str:
    """The RFC 6901 JSON pointer of ``parts`` (``("a/b", 0)`` → ``/a~1b/0``)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _render(value: Any, width: int) -> str:
    if value is _ABSENT:
        return "absent"
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"


def _same(a: Any, b: Any) -> bool:
    # JSON equality: 1 == 1.0, but True is not 1 (bool is an int subclass).
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _walk(
    a: Any, b: Any, parts: tuple[str | int, ...], ignore: Collection[str]
) -> Iterator[tuple[str, Any, Any]]:
    here = pointer(parts)
    if here in ignore:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            yield from _walk(
                a.get(key, _ABSENT), b.get(key, _ABSENT), (*parts, key), ignore
            )
    elif isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            x = a[i] if i < len(a) else _ABSENT
            y = b[i] if i < len(b) else _ABSENT
            yield from _walk(x, y, (*parts, i), ignore)
    elif not _same(a, b):
        yield here, a, b


def differences(
    old: Any, new: Any, *, ignore: Collection[str] = IGNORED, width: int = 60
) -> list[str]:
    """Every difference between the JSON values ``old`` and ``new``, in document
    order (``old``'s member order, then members only ``new`` has):
    ``'/schema/properties/label/type: "string" != "integer"'``. Pointers in
    ``ignore`` (and everything below them) are skipped; values longer than
    ``width`` characters are shortened."""
    return [
        f"{p or '/'}: {_render(x, width)} != {_render(y, width)}"
        for p, x, y in _walk(old, new, (), frozenset(ignore))
    ]


def describe_differences(
    old: Any, new: Any, *, ignore: Collection[str] = IGNORED, limit: int = 3
) -> str:
    """The first ``limit`` :func:`differences`, joined with ``; ``, plus how many
    more there are (``"… and 2 more"``); ``""`` when the values are equal."""
    found = differences(old, new, ignore=ignore)
    text = "; ".join(found[:limit])
    if len(found) > limit:
        text += f"; … and {len(found) - limit} more"
    return text


def schema_differences(old: Any, new: Any, *, limit: int = 3) -> str:
    """:func:`describe_differences` of two ``science.alt.dataset.schema`` records,
    ``old`` first brought into ``new``'s form (envelope or flat, see
    :func:`atdata_runtime.samples.schema.convert_schema_record`), so that only
    content differences are named, at ``new``'s pointers."""
    from atdata_runtime.samples.schema import (
        convert_schema_record,
        schema_record_form,
    )

    form = schema_record_form(new) if isinstance(new, dict) else None
    if form is not None and isinstance(old, dict) and schema_record_form(old) != form:
        try:
            old = convert_schema_record(old, form)
        except ValueError:
            pass  # not convertible: compare as written
    return describe_differences(old, new, limit=limit)
