"""``atdata-gen rules RULE_ID``: one rule explained, with an example that is run.

An example is a small input (a Lexicon, a pair of Lexicon versions, or a
``pyproject.toml``) kept in :data:`EXAMPLES`. :func:`explain` compiles or checks it
in a scratch directory and prints the diagnostics the compiler really reports, so
an example can never drift from the message users see (the tests run all of them).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

__all__ = [
    "EXAMPLES",
    "RuleInfo",
    "RuleNotFound",
    "all_rule_ids",
    "catalogue",
    "explain",
    "run_example",
]


class RuleNotFound(LookupError):
    """No rule has this ID; the message has a did-you-mean."""


def _lexicon(defs: dict[str, Any], nsid: str = "com.example.rule") -> str:
    return json.dumps({"lexicon": 1, "id": nsid, "defs": defs}, indent=2)


def _record(properties: dict[str, Any], required: tuple[str, ...] = ()) -> str:
    return _lexicon(
        {
            "main": {
                "type": "record",
                "key": "tid",
                "record": {
                    "type": "object",
                    "required": list(required),
                    "properties": properties,
                },
            }
        }
    )


_S = {"type": "string"}


def _deep(arrays: int) -> str:
    """A Lexicon whose property is an array of arrays, ``arrays`` deep (compact)."""
    items: dict[str, Any] = {"type": "string"}
    for _ in range(arrays):
        items = {"type": "array", "items": items}
    main = {"type": "object", "properties": {"a": items}}
    return json.dumps({"lexicon": 1, "id": "com.example.rule", "defs": {"main": main}})


EXAMPLES: dict[str, tuple[str, ...]] = {
    # (kind, input...) — kind "lexicon": one file; "check": old, new; "toml": text
    "SRC_JSON_SYNTAX": ("lexicon", '{"lexicon": 1,\n "id": "com.example.rule",,\n}'),
    "SRC_JSON_DUPLICATE_KEY": (
        "lexicon",
        (
            '{"lexicon": 1, "id": "com.example.rule",\n "id": "com.example.other",'
            '\n "defs": {}}'
        ),
    ),
    "LEX_VERSION": ("lexicon", json.dumps({"lexicon": 2, "id": "a.b.c", "defs": {}})),
    "SRC_FLOAT": (
        "lexicon",
        _lexicon({"main": {"type": "integer", "default": 0}}).replace(
            '"default": 0', '"default": -0.0'
        ),
    ),
    "SRC_INTEGER_RANGE": (
        "lexicon",
        _lexicon({"main": {"type": "integer", "maximum": 2**63}}),
    ),
    "SRC_JSON_TOO_DEEP": ("lexicon", _deep(65)),
    "LEX_TYPE_TOO_DEEP": ("lexicon", _deep(32)),
    "LEX_PROPERTY_RESERVED": (
        "lexicon",
        _lexicon(
            {
                "main": {
                    "type": "object",
                    "properties": {"$type": {"type": "integer"}},
                }
            }
        ),
    ),
    "LEX_PROPERTY_DOLLAR": ("lexicon", _record({"$schema": _S})),
    "SCHEMA_PROPERTY_RESERVED": (
        "lexicon",
        json.dumps(
            {
                "$type": "science.alt.dataset.schema",
                "name": "lab.Image",
                "version": "1.0.0",
                "schemaType": "jsonSchema",
                "schema": {"type": "object", "properties": {"$label": _S}},
            },
            indent=2,
        ),
    ),
    "NAME_TOO_LONG": (
        "lexicon",
        json.dumps(
            {
                "$type": "science.alt.dataset.schema",
                "name": "lab.Image",
                "version": "1.0.0-" + "x" * 120,
                "schemaType": "jsonSchema",
                "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
            },
            indent=2,
        ),
    ),
    "LEX_TYPE_MISSING": ("lexicon", _lexicon({"main": {"description": "no type"}})),
    "LEX_TYPE_UNKNOWN": ("lexicon", _record({"title": {"type": "strin"}})),
    "LEX_TYPE_NOT_ALLOWED": (
        "lexicon",
        _lexicon(
            {"main": {"type": "ref", "ref": "#other"}, "other": {"type": "token"}}
        ),
    ),
    "LEX_FIELD_TYPE": ("lexicon", _record({"n": {"type": "integer", "minimum": "1"}})),
    "LEX_FIELD_RANGE": ("lexicon", _record({"s": {"type": "string", "maxLength": -1}})),
    "LEX_UNKNOWN_KEY": ("lexicon", _record({"s": {"type": "string", "maxLenght": 3}})),
    "LEX_STRING_FORMAT_UNKNOWN": (
        "lexicon",
        _record({"s": {"type": "string", "format": "email"}}),
    ),
    "LEX_RECORD_KEY": (
        "lexicon",
        _lexicon(
            {"main": {"type": "record", "key": "uuid", "record": {"type": "object"}}}
        ),
    ),
    "LEX_REQUIRED_UNDEFINED": ("lexicon", _record({"a": _S}, required=("b",))),
    "LEX_REF_UNRESOLVED": (
        "lexicon",
        _lexicon(
            {
                "main": {
                    "type": "object",
                    "properties": {"v": {"type": "ref", "ref": "#postVieww"}},
                },
                "postView": {"type": "object", "properties": {}},
            }
        ),
    ),
    "LEX_PRIMARY_NOT_MAIN": (
        "lexicon",
        _lexicon(
            {
                "main": {"type": "token"},
                "other": {"type": "record", "key": "tid", "record": {"type": "object"}},
            }
        ),
    ),
    "LEX_REF_TO_TOKEN": (
        "lexicon",
        _lexicon(
            {
                "main": {
                    "type": "object",
                    "properties": {"kind": {"type": "ref", "ref": "#tok"}},
                },
                "tok": {"type": "token"},
            }
        ),
    ),
    "LEX_RANGE_INVERTED": (
        "lexicon",
        _record({"n": {"type": "integer", "minimum": 5, "maximum": 1}}),
    ),
    "FIELD_DELETED": ("check", _record({"a": _S, "b": _S}), _record({"a": _S})),
    "FIELD_REQUIRED_ADDED": (
        "check",
        _record({"a": _S}),
        _record({"a": _S, "b": _S}, required=("b",)),
    ),
    "FIELD_OPTIONAL_ADDED": ("check", _record({"a": _S}), _record({"a": _S, "b": _S})),
    "TYPE_CHANGED": ("check", _record({"a": _S}), _record({"a": {"type": "integer"}})),
    "CONFIG_UNKNOWN_KEY": (
        "toml",
        '[tool.atdata-gen]\nsourcs = ["lexicons"]\nout = "generated"\n',
    ),
    "CONFIG_VALUE": ("toml", '[tool.atdata-gen]\nsources = "lexicons"\n'),
}
"""Rule ID → an example input that makes the compiler report that rule."""


@dataclass(frozen=True)
class RuleInfo:
    """One rule of the catalogue: ``stage``, default ``severity`` label,
    ``purpose``; for compatibility rules also ``category`` and ``breaks`` (the
    directions it breaks, ``BACKWARD/FORWARD`` or ``nothing``)."""

    stage: str
    severity: str
    purpose: str
    category: str = ""
    breaks: str = ""


def catalogue() -> dict[str, RuleInfo]:
    """Rule ID → :class:`RuleInfo` over every catalogue (stage rules, lint rules,
    compatibility rules): what ``atdata-gen rules`` lists and explains."""
    from .checks.compat import COMPAT_RULES
    from .checks.lint import RULES
    from .diagnostics import STAGE_RULES

    rows = {rid: RuleInfo(stage, "error", p) for rid, (stage, p) in STAGE_RULES.items()}
    rows |= {
        r.id: RuleInfo("lint", r.severity.label, r.purpose) for r in RULES.values()
    }
    for c in COMPAT_RULES.values():
        rows[c.id] = RuleInfo(
            "check",
            "error" if c.breaks else c.severity.label,
            c.purpose,
            c.category,
            "/".join(c.breaks.names) or "nothing",
        )
    return rows


def all_rule_ids() -> list[str]:
    return sorted(catalogue())


def run_example(rule_id: str) -> tuple[str, str]:
    """Run the example of ``rule_id``: returns (the input as shown, what atdata-gen
    reports for it, only that rule's lines). Raises ``KeyError`` when the rule has
    no example."""
    kind, *inputs = EXAMPLES[rule_id]
    with tempfile.TemporaryDirectory(prefix="atdata-gen-rule-") as tmp:
        base = Path(tmp)
        if kind == "toml":
            from .config import ConfigError, load_config

            (base / "pyproject.toml").write_text(inputs[0], encoding="utf-8")
            shown = f"pyproject.toml:\n{inputs[0]}"
            try:
                load_config(base)
                lines: list[str] = []
            except ConfigError as exc:
                lines = [
                    replace(d, span=replace(d.span, path="pyproject.toml")).as_text()
                    for d in exc.diagnostics
                    if d.rule == rule_id
                ]
        elif kind == "lexicon":
            from .diagnostics import Reporter
            from .pipeline import BuildOptions, compile_sources

            (base / "rule.json").write_text(inputs[0], encoding="utf-8")
            shown = f"rule.json:\n{inputs[0]}"
            reporter = Reporter()
            compile_sources(BuildOptions([base / "rule.json"]), reporter)
            lines = [d.as_text() for d in reporter if d.rule == rule_id]
        else:
            from .checks.runner import locate, run_check

            for side, text in zip(("old", "new"), inputs, strict=True):
                (base / side).mkdir()
                (base / side / "rule.json").write_text(text, encoding="utf-8")
            shown = f"old/rule.json:\n{inputs[0]}\nnew/rule.json:\n{inputs[1]}"
            result = run_check([base / "new"], [str(base / "old")])
            lines = [
                f"{locate(f)}: {f.rule} {f.message}"
                for f in result.findings
                if f.rule == rule_id
            ]
        text = "\n".join(lines).replace(str(base) + os.sep, "")
    return shown, text


def explain(rule_id: str) -> str:
    """``rule_id`` explained: stage, severity, purpose and, when there is one, its
    example with the diagnostics it really produces. Raises :class:`RuleNotFound`
    (with a did-you-mean) for an unknown ID; IDs are matched case-insensitively."""
    from .diagnostics import did_you_mean

    rows = catalogue()
    wanted = rule_id.upper()
    if wanted not in rows:
        raise RuleNotFound(
            f"no rule {rule_id!r}{did_you_mean(wanted, rows)} (`atdata-gen rules` "
            "lists them all)"
        )
    rule = rows[wanted]
    out = [f"{wanted}  (stage: {rule.stage}; severity: {rule.severity})", ""]
    out.append(rule.purpose)
    if rule.category:
        out.append(
            f"Category {rule.category}; breaks {rule.breaks} compatibility "
            "(an error when that is the checked direction, else a warning)."
        )
    if wanted in EXAMPLES:
        shown, reported = run_example(wanted)
        out += ["", "Example input:", _indent(shown), "", "atdata-gen reports:"]
        out.append(_indent(reported or "(nothing: the example no longer fires)"))
    else:
        out += ["", "(no example recorded for this rule yet)"]
    return "\n".join(out)


def _indent(text: str) -> str:
    return "\n".join("    " + line if line else "" for line in text.splitlines())
