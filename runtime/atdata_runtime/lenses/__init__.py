"""Lenses: typed getter/putter pairs between sample types, their laws, the graph of
registered lenses, and lens records bound to installed code.

- :mod:`.core`: ``@lens``, ``Lens``, ``compose``, structural lenses between schema
  versions, ``LensGraph`` (shortest paths), ``check_lens_laws``;
- :mod:`.records`: ``RecordLens``, binding a ``science.alt.dataset.lens`` record's
  code reference to an installed implementation — only of a package on the lens
  allowlist (``allow_lens_packages``, ``ATDATA_LENS_PACKAGES``, ``[tool.atdata-gen]
  lens-packages``), never the standard library, the working or script directory,
  and checked against a distribution's ``direct_url.json``;
- :mod:`.strategies`: hypothesis strategies from sample fields (the ``testing``
  extra).

Uses :mod:`atdata_runtime.samples` only.
"""

from .core import (
    GET_PUT,
    PUT_GET,
    Lens,
    LensError,
    LensGraph,
    LensLawError,
    LensNotFoundError,
    check_lens_laws,
    compose,
    field_copier,
    lens,
    lenses,
    same_field_type,
    structural_lens,
)
from .records import (
    CodeReference,
    LensAllowlistError,
    LensBindingError,
    LensBindRefused,
    LensCommitMismatch,
    RecordLens,
    allow_lens_packages,
    lens_allowlist,
)

__all__ = [
    "GET_PUT",
    "PUT_GET",
    "CodeReference",
    "Lens",
    "LensAllowlistError",
    "LensBindRefused",
    "LensBindingError",
    "LensCommitMismatch",
    "LensError",
    "LensGraph",
    "LensLawError",
    "LensNotFoundError",
    "RecordLens",
    "allow_lens_packages",
    "check_lens_laws",
    "compose",
    "field_copier",
    "lens",
    "lens_allowlist",
    "lenses",
    "same_field_type",
    "structural_lens",
]
