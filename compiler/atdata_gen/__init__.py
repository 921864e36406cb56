"""atdata-gen: a compiler from Lexicons (and atdata schema records) to typed Python.

Stages, one module each, one data type between them (see ``pipeline.STAGES``):
load (:mod:`.sources`) → parse (:mod:`.frontend.lexicon`) → lower (:mod:`.ir.lower`)
→ link (:mod:`.ir.link`) → lint (:mod:`.checks.lint`) → emit (:mod:`.backend.emit`)
→ format (:mod:`.backend.format`) → write (:mod:`.backend.write`).
"""

__version__ = "0.1.0"
