"""Generated record models for the records the ingestion service stores.

Two generated packages, tried in this order (:data:`PACKAGES`):

1. ``atdata_runtime.lexicons``: ``science.alt.dataset.*`` (the federation's own);
2. ``atdata_ingest.lexicons``: the 402 official Lexicons (``app.bsky.*``,
   ``chat.bsky.*``, ``com.atproto.*``, ``site.standard.*``, ``tools.ozone.*`` …),
   compiled by atdata-gen from ``../shared/corpus/lexicons/atproto-official``.

Each package's ``RECORDS`` registry names its record models without importing
them (:mod:`atdata_runtime.lex.registry`): :func:`record_model` imports a model on
first use; the lookup of an NSID the packages do not know (any string from the
network) is two dict lookups and caches nothing.

:func:`validate_record` checks one record (JSON data model, as
:mod:`atdata_runtime.firehose.frames` decodes it) against its model and answers in
a short text fit for a column: ``"ok"``, or ``"<RULE> <JSON pointer>"`` of the first
problem, or ``None`` when no model exists for the NSID.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Final, cast

from atdata_runtime.lex import LexRecord
from atdata_runtime.lex.registry import RecordRegistry
from pydantic import ValidationError

__all__ = ["MAX_RECORD_BYTES", "PACKAGES", "record_model", "validate_record"]

PACKAGES: Final = ("atdata_runtime.lexicons", "atdata_ingest.lexicons")
"""The generated packages searched for a record model, in order."""

MAX_RECORD_BYTES: Final = 3 * 1024 * 1024
"""Largest record given as JSON text that :func:`validate_record` parses (bytes):
the frame cap (``atdata_runtime.firehose.frames.MAX_FRAME_BYTES``), which no record
carried in a frame can exceed. Larger text is ``RECORD_TOO_LARGE``."""

_RULE_TEXT: Final = re.compile(r"[^A-Z0-9_]")
_RULE_MAX: Final = 64

_registry: RecordRegistry | None = None


def registry() -> RecordRegistry:
    """The registry over :data:`PACKAGES` (made on first use; importing the
    packages imports no record module)."""
    global _registry
    if _registry is None:
        _registry = RecordRegistry(*PACKAGES)
    return _registry


def record_model(nsid: str) -> type[LexRecord] | None:
    """The generated model of the record Lexicon ``nsid`` (a
    :class:`~atdata_runtime.lex.LexRecord` subclass), or ``None`` when neither
    package has one. Imported on first use, then cached. Raises
    :class:`~atdata_runtime.lex.registry.RecordRegistryError` (rule
    ``RECORD_REGISTRY``) when a package's registry is broken (an edited or stale
    generated package)."""
    return registry().get(nsid)


def validate_record(nsid: str, record: Any) -> str | None:
    """Validate ``record``, a record of the collection ``nsid``, with its generated
    model (Lexicon spec; data model spec for ``$type``, which must be ``nsid``).

    ``record`` is the JSON data model (a ``dict``, ``{"$link": …}`` / ``{"$bytes":
    …}`` for links and bytes) or its JSON text (``str``/``bytes``, at most
    :data:`MAX_RECORD_BYTES`). Returns:

    - ``None``: no generated model for ``nsid`` (nothing checked);
    - ``"ok"``;
    - ``"<RULE> <pointer>"`` for the first problem: ``RULE`` is the validation
      error type in UPPER_SNAKE (``MISSING``, ``STRING_TYPE``, ``LITERAL_ERROR``
      (a wrong ``$type``), ``RECORD_TYPE_MISSING``, ``UNION_TYPE``,
      ``STRING_TOO_LONG``, ``DATETIME``-style format rules of
      :mod:`atdata_runtime.lex`…, ``JSON_INVALID`` for bad text,
      ``RECORD_TOO_LARGE``, ``RECORD_TOO_DEEP``), and ``pointer`` the RFC 6901
      JSON pointer of the offending value in ``record`` (``""``, the whole record,
      leaves a trailing space: split on the first space). Union members are
      discriminated by ``$type``, which is not part of the pointer
      (``/embed/images/0/alt``).

    Never raises for a hostile record; raises
    :class:`~atdata_runtime.lex.registry.RecordRegistryError` as
    :func:`record_model`."""
    model = registry().get(nsid)
    if model is None:
        return None
    text = isinstance(record, str | bytes | bytearray)
    if text and len(record) > MAX_RECORD_BYTES:
        return "RECORD_TOO_LARGE "
    try:
        if text:
            model.from_json(record)
        else:
            model.from_wire(record)
    except ValidationError as exc:
        return _first_problem(exc, record, text)
    except RecursionError:
        return "RECORD_TOO_DEEP "
    return "ok"


def _first_problem(exc: ValidationError, record: Any, text: bool) -> str:
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    if not errors:  # pragma: no cover - pydantic always lists one
        return "INVALID "
    first = errors[0]
    rule = _RULE_TEXT.sub("_", str(first["type"]).upper())[:_RULE_MAX] or "INVALID"
    data = record
    if text:
        try:
            data = json.loads(record)
        except (ValueError, RecursionError):
            data = None
    try:
        pointer = _pointer(first["loc"], data)
    except RecursionError:  # pragma: no cover - loc is as deep as the data
        pointer = ""
    return f"{rule} {pointer}"


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def _pointer(loc: Sequence[int | str], data: Any) -> str:
    """The JSON pointer of a validation error's ``loc`` in ``data``: ``loc`` is
    walked through ``data``; an element that is neither a key of the current
    object nor an index of the current array is a validator's label (a union
    member's ``$type`` tag) and is left out, unless it is the last one (the name of
    a missing field)."""
    out: list[str] = []
    node: Any = data
    last = len(loc) - 1
    for i, part in enumerate(loc):
        if isinstance(node, dict) and isinstance(part, str):
            obj = cast("dict[str, Any]", node)
            if part in obj:
                out.append(_escape(part))
                node = obj[part]
                continue
        elif isinstance(node, list) and type(part) is int:
            items = cast("Sequence[Any]", node)
            if 0 <= part < len(items):
                out.append(str(part))
                node = items[part]
                continue
        if i == last:
            out.append(_escape(str(part)))
    return "".join("/" + p for p in out)
