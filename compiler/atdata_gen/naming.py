"""Naming: wire names → Python identifiers. The one place that decides names.

Every function returns a plain-ASCII identifier that is not a keyword (Python
identifiers are NFKC-normalized by the parser, so non-ASCII letters could make two
different wire names collide after normalization; we never emit them). Collisions
of def, module and class names are settled by :class:`Scope`, first come first
served, in a deterministic order; field names by :func:`field_names`, which never
depends on the order of the fields.
"""

from __future__ import annotations

import builtins
import keyword
import re
import sys
from collections.abc import Callable, Sequence

__all__ = [
    "MAX_MODULE_NAME",
    "WINDOWS_RESERVED",
    "Scope",
    "constant_name",
    "field_names",
    "module_name",
    "module_stem",
    "package_name_problem",
    "pascal_case",
    "sample_module_stem",
    "snake_case",
]

_CAMEL_1 = re.compile(r"([a-z0-9])([A-Z])")
_CAMEL_2 = re.compile(r"([A-Z]+)([A-Z][a-z])")
_NON_IDENT = re.compile(r"[^A-Za-z0-9]+")

RESERVED_FIELD_NAMES = frozenset(
    {
        # pydantic BaseModel API
        "model_config",
        "model_fields",
        "model_computed_fields",
        "model_extra",
        "model_fields_set",
        "model_construct",
        "model_copy",
        "model_dump",
        "model_dump_json",
        "model_json_schema",
        "model_parametrized_name",
        "model_post_init",
        "model_rebuild",
        "model_validate",
        "model_validate_json",
        "model_validate_strings",
        "dict",
        "json",
        "parse_obj",
        "parse_raw",
        "parse_file",
        "from_orm",
        "construct",
        "copy",
        "schema",
        "schema_json",
        "validate",
        "update_forward_refs",
        "fields",
        "register",
        # atdata_runtime.lex API
        "py_type",
        "lex_id",
        "lex_def",
        "lex_type",
        "lex_key",
        "lex_params",
        "from_wire",
        "from_json",
        "from_query",
        "to_wire",
        "to_json",
    }
)
_BUILTINS = frozenset(dir(builtins))


_ONE_WORD = re.compile(r"[a-z0-9]+")
# The word breaks of _CAMEL_1 and _CAMEL_2 as zero-width matches: the same breaks
# (the character classes around each break do not overlap), replaced by a literal
# "_", which re.sub does without a Python call per match.
_CAMEL_1_BREAK = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_CAMEL_2_BREAK = re.compile(r"(?<=[A-Z])(?=[A-Z][a-z])")


def _words(name: str) -> list[str]:
    """The words of ``name``: camel-case humps (``threadViewPost``, ``HTTPCode``
    → ``HTTP``, ``Code``) and runs of ASCII letters and digits between other
    characters."""
    if _ONE_WORD.fullmatch(name):
        return [name]
    text = _CAMEL_2_BREAK.sub("_", _CAMEL_1_BREAK.sub("_", name))
    return [w for w in _NON_IDENT.sub("_", text).split("_") if w]


def snake_case(name: str) -> str:
    """``createdAt`` → ``created_at``; ``cid-link`` → ``cid_link``; non-ASCII and
    punctuation become word breaks; never empty, never starts with a digit or ``_``."""
    words = [w.lower() for w in _words(name)]
    out = "_".join(words) or "field"
    return f"f_{out}" if out[0].isdigit() else out


def pascal_case(name: str) -> str:
    """``threadViewPost`` → ``ThreadViewPost``; never empty, never starts with a
    digit, never a keyword (``None`` → ``None_``)."""
    out = "".join(w[:1].upper() + w[1:] for w in _words(name)) or "Def"
    if out[0].isdigit():
        out = f"D{out}"
    return f"{out}_" if keyword.iskeyword(out) else out


def constant_name(name: str) -> str:
    """``requestLess`` → ``REQUEST_LESS`` (for tokens)."""
    out = "_".join(w.upper() for w in _words(name)) or "TOKEN"
    return f"T_{out}" if out[0].isdigit() else out


WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"}
    | {f"com{i}" for i in range(10)}
    | {f"lpt{i}" for i in range(10)}
)
"""File names Windows reserves for devices, with any extension and in any case
(``con.py``, ``AUX``, ``lpt1.pyi``): Microsoft, "Naming Files, Paths, and
Namespaces", § Naming Conventions (CON, PRN, AUX, NUL, COM0-COM9, LPT0-LPT9; the
superscript-digit forms cannot occur, names here are ASCII). A module or package
named so cannot be written or imported on Windows."""

MAX_MODULE_NAME = 200
"""Longest module or package name (characters, all ASCII) the compiler derives
from a name in its input. A file name may have 255 bytes (``NAME_MAX`` of Linux
and macOS file systems, and NTFS); 200 leaves room for a ``_2`` collision suffix,
``.py`` and the byte-code cache's ``.cpython-3XX.pyc``. A longer one is reported
(``NAME_TOO_LONG``), never truncated."""


def _escape_module(out: str) -> str:
    """``out`` with ``_`` appended when it is a keyword, a soft keyword or a
    Windows-reserved device name (case-insensitively): deterministic, and it
    never changes any other name."""
    if (
        keyword.iskeyword(out)
        or keyword.issoftkeyword(out)
        or out.lower() in WINDOWS_RESERVED
    ):
        return f"{out}_"
    return out


def module_name(segment: str) -> str:
    """One NSID segment → a module or package name (``getTimeline`` →
    ``get_timeline``; ``8`` → ``n8``; ``import`` → ``import_``; the Windows device
    names of :data:`WINDOWS_RESERVED` too: ``con`` → ``con_``, ``lpt1`` →
    ``lpt1_``)."""
    out = snake_case(segment)
    if out.startswith("f_") and segment[:1].isdigit():
        out = "n" + out[2:]
    return _escape_module(out)


def module_stem(name: str) -> str:
    """A free-form name (a schema or lens name, a version) → a module name: snake
    case, escaped like :func:`module_name` (keywords, :data:`WINDOWS_RESERVED`).
    The result may be longer than :data:`MAX_MODULE_NAME`; callers check."""
    return _escape_module(snake_case(name))


def sample_module_stem(name: str, version: str) -> str:
    """The module name of a sample schema's version: ``image_sample_v1_0_0`` for
    ``ImageSample`` 1.0.0 (before collision suffixes)."""
    return f"{snake_case(name)}_v{re.sub(r'[^0-9A-Za-z]+', '_', version)}"


SAMPLE_RESERVED = frozenset(
    {
        # atdata_runtime.samples.PackableSample API
        "pack",
        "packed",
        "unpack",
        "from_bytes",
        "as_wds",
        "to_dict",
        "unknown_fields",
        "sample_fields",
        "schema_name",
        "schema_version",
        "schema_source",
        "schema_cid",
        "schema_description",
        "schema_metadata",
        "schema_array_formats",
        "batch_class",
        # atdata_runtime.samples.SampleBatch API (a field is a batch attribute too)
        "samples",
        "keys",
        "sample_type",
        "from_samples",
    }
)
"""Sample field names escaped with ``_``; a superset of
``atdata_runtime.samples.codec.RESERVED_NAMES`` (checked by a test)."""


def sample_field_name(wire: str) -> str:
    """A sample field's Python name: like :func:`field_name`, with the sample API's
    names escaped instead of the model API's."""
    out = snake_case(wire)
    if keyword.iskeyword(out) or out in _BUILTINS or out in SAMPLE_RESERVED:
        out += "_"
    return out


def field_name(wire: str) -> str:
    """A property's Python name before collision handling: snake case, with Python
    keywords, builtins and names the model API uses escaped by a trailing ``_``."""
    out = snake_case(wire)
    if keyword.iskeyword(out) or out in _BUILTINS or out in RESERVED_FIELD_NAMES:
        out += "_"
    return out


def field_names(
    wires: Sequence[str], base: Callable[[str], str] = field_name
) -> tuple[str, ...]:
    """The Python names of one object's fields (``wires``, the distinct wire names),
    in the same order: a name depends on the field's own wire name and on the *set*
    of its siblings' names, never on their order, so inserting, moving or deleting
    a sibling cannot silently hand a name to another field.

    ``base`` gives each field's wanted name (:func:`field_name` for record models,
    :func:`sample_field_name` for samples). The rule:

    1. a wire name that is its own wanted name (already a snake-case identifier,
       not a keyword, builtin or reserved name) keeps exactly that name;
    2. every other (converted) wire name gets its wanted name when no rule-1 name
       took it; when several converted wire names want the same name, the one
       that sorts first (code-point order of the wire names) gets it;
    3. the others of each group, in that order, get the first free ``name_2``,
       ``name_3``, … (groups taken in the order of their wanted names).

    So ``foo_bar`` stays ``foo_bar`` whatever is added next to it, and a ``fooBar``
    added next to it becomes ``foo_bar_2``. A name changes only when a sibling that
    ranks before the field in its group (rule 1, then code-point order) is added or
    removed; ``atdata-gen check`` reports that as ``FIELD_PYTHON_NAME_CHANGED``.
    """
    wanted = [base(w) for w in wires]
    out: dict[str, str] = {w: w for w, b in zip(wires, wanted, strict=True) if w == b}
    taken = set(out.values())
    groups: dict[str, list[str]] = {}
    for w, b in zip(wires, wanted, strict=True):
        if w not in out:
            groups.setdefault(b, []).append(w)
    rest: list[tuple[str, str]] = []
    for b in sorted(groups):
        members = sorted(groups[b])
        if b not in taken:
            out[members.pop(0)] = b
            taken.add(b)
        rest += [(b, w) for w in members]
    for b, w in rest:
        out[w] = _suffixed(b, taken)
    # A repeated wire name (invalid input, reported elsewhere) still gets its own
    # Python name, so that the emitted class stays valid.
    seen: set[str] = set()
    names = []
    for w in wires:
        names.append(out[w] if w not in seen else _suffixed(out[w], taken))
        seen.add(w)
    return tuple(names)


def _suffixed(name: str, taken: set[str]) -> str:
    n = 2
    while f"{name}_{n}" in taken:
        n += 1
    taken.add(f"{name}_{n}")
    return f"{name}_{n}"


class Scope:
    """A namespace in which every name is taken once: :meth:`claim` returns the
    wanted name, or the first free ``name_2``, ``name_3``, …"""

    def __init__(self, reserved: frozenset[str] | set[str] = frozenset()) -> None:
        self._taken: set[str] = set(reserved)

    def claim(self, wanted: str) -> str:
        name, n = wanted, 1
        while name in self._taken:
            n += 1
            name = f"{wanted}_{n}"
        self._taken.add(name)
        return name


def package_name_problem(name: str, *, generated: bool = True) -> str | None:
    """Why ``name`` cannot be the import name of a generated package, or ``None``.

    A package name is a dotted path of ASCII identifiers (``my_lexicons`` or
    ``myproject.lexicons``), none of them a keyword (Python reference, § 2.3
    "Identifiers and keywords"); ASCII only, so NFKC normalization cannot change it.
    A dotted name is written to ``OUT/myproject/lexicons/``. Refused too: a first
    segment that is a standard-library module (``sys.stdlib_module_names``: the
    package would shadow ``json`` for everything on its path) or one of
    atdata-gen's own packages (``atdata_runtime``, ``atdata_gen``), unless
    ``generated`` is false (the name of an existing package, as in ``--external
    DIR=PACKAGE``).
    """
    if not name:
        return "the package name is empty"
    for part in name.split("."):
        if not part:
            return "empty segment in the dotted name"
        if not (part.isascii() and part.isidentifier()):
            return f"segment {part!r} is not an ASCII identifier"
        if keyword.iskeyword(part):
            return f"segment {part!r} is a Python keyword"
    top = name.split(".")[0]
    if not generated:
        return None
    for part in name.split("."):
        if part.lower() in WINDOWS_RESERVED:
            return (
                f"segment {part!r} is a device name Windows reserves (CON, PRN, "
                "AUX, NUL, COM0-COM9, LPT0-LPT9): the package could not be "
                "written or imported there"
            )
        if len(part) > MAX_MODULE_NAME:
            return f"segment {part[:20]!r}… is longer than {MAX_MODULE_NAME} characters"
    if top in sys.stdlib_module_names:
        return (
            f"{top!r} is a standard-library module: the generated package would "
            "shadow it for every import on its path"
        )
    if top in _OWN_PACKAGES and name != SHIPPED_PACKAGE:
        return (
            f"{top!r} is atdata-gen's own package: the generated package would "
            "shadow it (pick a name of your project's, e.g. 'mylab_types')"
        )
    return None


SHIPPED_PACKAGE = "atdata_runtime.lexicons"
"""The one package inside the runtime that the compiler builds (this repository's
``lexicons/``)."""
_OWN_PACKAGES = frozenset({"atdata_runtime", "atdata_gen"})
