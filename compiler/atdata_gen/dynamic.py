"""Schema record → PackableSample class, in-process, without generating code.

For a schema that was not compiled ahead of time (not pinned in the lock, not in
``generated/``), the loader still needs a class with the same codec. This runs the
same front end and naming as ``atdata-gen build`` (so field names and specs are what
the generated class would have) and builds the class with
:func:`atdata_runtime.samples.sample_class`. Nothing from the record is ever
executed or imported: the record only supplies data (names, kinds, dtypes, shapes),
and names are checked by the front end before use.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from atdata_runtime.samples import PackableSample, sample_class

from .backend.emit_samples import field_spec
from .diagnostics import Reporter
from .frontend.schema_record import parse_schema_record
from .ir.link import link, link_samples
from .sources import SourceDoc

__all__ = ["SchemaCompileError", "compile_schema_record"]


class SchemaCompileError(ValueError):
    """The record does not compile; ``diagnostics`` carries each problem (rule ID,
    JSON pointer). The message names the record's AT-URI."""

    def __init__(self, where: str, reporter: Reporter) -> None:
        self.where = where
        self.diagnostics = list(reporter.errors)
        lines = [
            f"{d.span.pointer or '/'}: {d.message} [{d.rule}]" for d in self.diagnostics
        ]
        super().__init__(
            f"{where}: schema record does not compile: " + "; ".join(lines)
        )


def compile_schema_record(
    record: dict[str, Any], *, uri: str | None = None, cid: str | None = None
) -> type[PackableSample]:
    """A PackableSample class for ``record`` (the JSON form of a
    ``science.alt.dataset.schema`` record), with ``schema_name``,
    ``schema_version``, ``schema_source`` (``uri``) and ``schema_cid`` set as on a
    generated class. Raises :class:`SchemaCompileError`."""
    wrapped: dict[str, Any] = {"value": record}
    if uri is not None:
        wrapped["uri"] = uri
    if cid is not None:
        wrapped["cid"] = cid
    text = json.dumps(wrapped, ensure_ascii=False)
    where = uri or "<schema record>"
    doc = SourceDoc(
        path=where,
        text=text,
        value=wrapped,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
    )
    reporter = Reporter()
    schema = parse_schema_record(doc, reporter)
    if schema is None or reporter.has_errors:
        raise SchemaCompileError(where, reporter)
    model = link_samples(link([], [], reporter), [schema], reporter)
    if reporter.has_errors:
        raise SchemaCompileError(where, reporter)
    _, cls_name, py_names = model.names.samples[(schema.name, schema.version)]
    specs = [
        field_spec(f, py, f.type) for f, py in zip(schema.fields, py_names, strict=True)
    ]
    return sample_class(
        cls_name,
        specs,
        module="atdata_gen.dynamic",
        schema_name=schema.name,
        schema_version=schema.version,
        schema_source=uri or "",
        schema_cid=cid,
        schema_description=schema.description,
        schema_array_formats=dict(schema.array_formats)
        if schema.array_formats
        else None,
        schema_metadata=json.loads(schema.metadata_json)
        if schema.metadata_json
        else None,
    )
