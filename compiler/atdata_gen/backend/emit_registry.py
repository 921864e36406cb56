"""Stage 6, emit (registry): the package's ``__init__.py`` with its record registry.

The top-level ``__init__.py`` of every generated package holds ``RECORDS``, a
``dict[str, str]`` from the NSID of each record Lexicon compiled into the package
(Lexicon spec § "Primary Types": a ``record`` is always the ``main`` def, so one per
NSID) to ``"<module>:<class>"``: the module path relative to the package, dotted
(a module that is also a package, ``a/b/c/__init__.py``, is ``a.b.c``), and the
name of its :class:`~atdata_runtime.lex.LexRecord` subclass. Keys are sorted; the
text is a pure function of the linked model, so builds stay byte-identical.

The map holds strings only: importing the package imports no record module (a
package of the ~400 official Lexicons would take seconds to import them all).
:func:`atdata_runtime.lex.registry.record_model` imports a model on first use.

Text is written directly (no libcst: this runs in the parent process of a parallel
build, which never imports the emitter). Nothing from a Lexicon is pasted unchecked:
every NSID, module path and class name is checked against a strict pattern first
(:func:`_checked`), so a string literal of them needs no escaping.
"""

from __future__ import annotations

import keyword
import re

from .. import __version__
from ..ir.link import LinkedModel
from ..ir.model import RecordDef
from .manifest import GENERATED_MARKER

__all__ = ["record_entries", "registry_init"]

_NSID_TEXT = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,315}[A-Za-z0-9])?")
"""Characters an NSID may hold (Lexicon spec § "Namespaced Identifiers"); the
frontend has checked the full syntax, this only guards the literal."""


def _identifier(text: str) -> str:
    if not (text.isascii() and text.isidentifier()) or keyword.iskeyword(text):
        raise ValueError(f"refusing to emit non-identifier {text!r}")
    return text


def _checked(nsid: str, module: tuple[str, ...], cls: str) -> tuple[str, str]:
    """``(nsid, "mod.path:Class")``, each part checked (``ValueError``: a compiler
    bug, never user input that got through the frontend)."""
    if _NSID_TEXT.fullmatch(nsid) is None:
        raise ValueError(f"refusing to emit NSID {nsid!r}")
    parts = [p for p in module if p != "__init__"]
    if not parts:
        raise ValueError(f"record {nsid!r} has no module path")
    dotted = ".".join(_identifier(p) for p in parts)
    return nsid, f"{dotted}:{_identifier(cls)}"


def record_entries(model: LinkedModel) -> dict[str, str]:
    """NSID → ``"<module>:<class>"`` for every record Lexicon emitted (externals
    are not), sorted by NSID."""
    entries: dict[str, str] = {}
    for schema in model.schemas:
        for d in schema.defs:
            if isinstance(d.body, RecordDef) and d.id.name == "main":
                key, value = _checked(
                    schema.nsid,
                    model.names.modules[schema.nsid],
                    model.names.objects[(d.id, ())],
                )
                entries[key] = value
    return dict(sorted(entries.items()))


def registry_init(model: LinkedModel, package: str) -> str:
    """The text of the package's top-level ``__init__.py`` (ruff-formatted already:
    one entry per line, a trailing comma, double quotes)."""
    entries = record_entries(model)
    label = ".".join(_identifier(p) for p in package.split("."))
    doc = (
        f'"""Package ``{label}``.\n\n'
        f"{GENERATED_MARKER} {__version__}. Do not edit.\n\n"
        "``RECORDS`` maps the NSID of each record Lexicon of the package to\n"
        '``"<module>:<class>"`` (module relative to the package). Importing the\n'
        "package imports no record module; "
        "``atdata_runtime.lex.registry.record_model``\n"
        'imports one on first use.\n"""\n'
    )
    if not entries:
        return doc + "\nRECORDS: dict[str, str] = {}\n"
    lines = "".join(f'    "{k}": "{v}",\n' for k, v in entries.items())
    return doc + "\nRECORDS: dict[str, str] = {\n" + lines + "}\n"
