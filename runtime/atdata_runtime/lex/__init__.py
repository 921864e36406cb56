"""Record-model runtime: what generated ``science.alt.dataset.*`` (and any other
Lexicon) record models import as ``from atdata_runtime import lex as _lex``.

- :mod:`.models`: the pydantic building blocks (``LexObject``, ``LexRecord``,
  ``String``, ``Integer``, ``Blob``, ``union`` …) carrying the Lexicon spec's
  semantics;
- :mod:`.formats`: the eleven string formats of the Lexicon spec (§ "String
  Formats"), exact checks and the fast patterns pydantic-core runs;
- :mod:`.text`: UTF-8 byte and grapheme (UAX #29) counting.

Needs only ``pydantic`` and ``regex``; imports nothing else of the runtime.

:mod:`.models` (and with it pydantic, ~65 ms) is imported on the first use of one of
its names, not by ``import atdata_runtime.lex``: the compiler uses
:mod:`.formats` and :mod:`.text` without it (issue 17). Type checkers see the
names as before.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import *
    from .models import __all__ as _models_all

    __all__ = list(_models_all)
else:
    _SUBMODULES = frozenset({"formats", "models", "text"})

    def __getattr__(name: str) -> object:
        """A name of :mod:`.models` (imported now, then cached in this module),
        ``__all__``, or one of the submodules; else ``AttributeError``."""
        import importlib

        if name in _SUBMODULES:
            return importlib.import_module(f"{__name__}.{name}")
        models = importlib.import_module(f"{__name__}.models")
        names = list(models.__all__)
        if name == "__all__":
            value: object = names
        elif name in names:
            value = getattr(models, name)
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        import importlib

        models = importlib.import_module(f"{__name__}.models")
        return sorted({*globals(), *models.__all__})
