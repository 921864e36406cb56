"""Rendering compatibility findings: text, JSON, or GitHub workflow commands.

The renderer lives beside the checks it renders (not in the CLI), so that both the
``check`` command and ``publish schema`` (:mod:`atdata_gen.remote`) use it without
importing each other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..diagnostics import Diagnostic, github_base, redact_urls, render

__all__ = ["render_findings", "unlabel"]


def render_findings(
    findings: list[Any], policy: Any, fmt: str, labels: Iterable[str] = ()
) -> str:
    """Findings as ``text`` (``path:line:col: severity RULE message (previously at
    …)``), ``json`` or ``github`` workflow commands; ends with a newline unless
    empty. ``github`` paths are repository-relative: a previous-side location
    ``REV:path`` (``labels`` lists the ``REV:`` prefixes) becomes ``path``, and a
    file-system path is made relative to the git toplevel. Every form is safe to
    print (values and file names escaped, URLs without credentials: see
    :mod:`atdata_gen.diagnostics`)."""
    from .compat import COMPAT_RULES
    from .runner import locate

    if fmt == "json":
        return (
            json.dumps(
                [
                    {
                        "rule": f.rule,
                        "category": COMPAT_RULES[f.rule].category,
                        "message": redact_urls(f.message),
                        "severity": f.severity(policy.mode).label,
                        "breaks": f.breaks.names,
                        "subject": f.subject,
                        "current": redact_urls(str(f.current))
                        if f.current.path
                        else None,
                        "previous": redact_urls(str(f.previous))
                        if f.previous.path
                        else None,
                    }
                    for f in findings
                ],
                indent=2,
            )
            + "\n"
        )
    diags = [
        Diagnostic(
            locate(f),
            f.rule,
            f.severity(policy.mode),
            f.message
            + (
                f" (previously at {f.previous})"
                if f.previous.path and f.previous != f.current and f.current.path
                else ""
            ),
        )
        for f in findings
    ]
    if fmt == "github":
        prefixes, base = tuple(labels), github_base()
        diags = [
            replace(d, span=replace(d.span, path=unlabel(d.span.path, prefixes, base)))
            for d in diags
        ]
        text = render(diags, fmt, base=base)
    else:
        text = render(diags, fmt)
    return text + "\n" if text else ""


def unlabel(path: str, prefixes: tuple[str, ...], top: Path) -> str:
    """``REV:path`` (git's notation for a previous-side location, ``path`` relative
    to the repository root ``top``; ``prefixes`` are the ``REV:`` labels, and a
    12-digit commit from ``--transitive`` is one too) → the file's path under
    ``top``; any other path unchanged."""
    for prefix in (*prefixes, "HEAD:"):
        if path.startswith(prefix):
            return str(top / path[len(prefix) :])
    m = re.match(r"[0-9a-f]{12}:", path)
    return str(top / path[m.end() :]) if m else path
