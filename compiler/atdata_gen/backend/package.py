"""Assemble the package's file set from emitted modules (no libcst needed here)."""

from __future__ import annotations

from .. import __version__
from ..ir.link import LinkedModel
from .emit_registry import registry_init
from .manifest import GENERATED_MARKER

__all__ = ["assemble_package"]


def assemble_package(
    model: LinkedModel,
    package: str,
    codes: list[str],
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """``{relative path: text}`` for the package directory: one module per schema
    (``codes`` in schema order), an ``__init__.py`` for every package directory that
    is not itself a Lexicon's module (the top-level one holds the record registry,
    :func:`~.emit_registry.registry_init`), and ``py.typed`` (PEP 561)."""
    files: dict[str, str] = {}
    for schema, code in zip(model.schemas, codes, strict=True):
        files["/".join(model.names.modules[schema.nsid]) + ".py"] = code
    files.update(extra or {})
    packages = {tuple(p.split("/")[:i]) for p in files for i in range(p.count("/") + 1)}
    packages.add(())  # the top-level package, even with no Lexicon
    for pkg in sorted(packages):
        init = "/".join((*pkg, "__init__.py"))
        if not pkg:
            files[init] = registry_init(model, package)
        elif init not in files:
            label = ".".join((package, *pkg))
            files[init] = (
                f'"""Package ``{label}``.\n\n{GENERATED_MARKER} '
                f'{__version__}. Do not edit."""\n'
            )
    files["py.typed"] = ""
    return files
