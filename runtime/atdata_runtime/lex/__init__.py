"""Record-model runtime: what generated ``science.alt.dataset.*`` (and any other
Lexicon) record models import as ``from atdata_runtime import lex as _lex``.

- :mod:`.models`: the pydantic building blocks (``LexObject``, ``LexRecord``,
  ``String``, ``Integer``, ``Blob``, ``union`` …) carrying the Lexicon spec's
  semantics;
- :mod:`.formats`: the eleven string formats of the Lexicon spec (§ "String
  Formats"), exact checks and the fast patterns pydantic-core runs;
- :mod:`.text`: UTF-8 byte and grapheme (UAX #29) counting.

Needs only ``pydantic`` and ``regex``; imports nothing else of the runtime.
"""

from .models import *
from .models import __all__ as _models_all

__all__ = list(_models_all)
