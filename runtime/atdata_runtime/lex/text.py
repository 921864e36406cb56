"""Measures of text the Lexicon spec uses: UTF-8 bytes and grapheme clusters.

Kept free of pydantic so that the compiler can use it without importing the model
layer.
"""

from __future__ import annotations

from typing import Final

import regex

__all__ = ["count_graphemes", "utf8_length"]

_GRAPHEME_RE: Final = regex.compile(r"\X")


def utf8_length(text: str) -> int:
    """Length of ``text`` in UTF-8 bytes (the Lexicon ``maxLength`` unit)."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def count_graphemes(text: str) -> int:
    """Number of extended grapheme clusters in ``text`` (Unicode UAX #29, as the
    Lexicon spec's ``maxGraphemes`` requires)."""
    if text.isascii():
        # ASCII graphemes are single code points except CR LF, which is one cluster.
        return len(text) - text.count("\r\n")
    return len(_GRAPHEME_RE.findall(text))
