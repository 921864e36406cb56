"""Shard I/O: WebDataset tar shards of packed samples, and the typed
:class:`Dataset` over them.

- :mod:`.tar`: a bounded, streaming tar reader (members grouped into samples by key);
- :mod:`.dataset`: ``Dataset[T]``, ``ShardWriter``, ``write_samples``, splits,
  ``collate`` (the DataLoader ``collate_fn``);
- :mod:`.http`: resumable HTTP shard streams (the ``http`` extra: ``httpx``).

Local shards need only the core; ``http(s)://`` needs the ``http`` extra, ``s3://``
the ``s3`` extra. Uses :mod:`atdata_runtime.samples` and, for ``Dataset.as_type``,
:mod:`atdata_runtime.lenses`.
"""

from .dataset import (
    MAX_SHARD_BYTES,
    MAX_SHARDS,
    SHUFFLE_BUFFER_BYTES,
    Dataset,
    ShardWriter,
    Split,
    collate,
    expand_urls,
    origin_of,
    trusted_origins,
    write_samples,
)
from .errors import ShardChecksumError, ShardListError, ShardReadError
from .tar import MAX_MEMBER_BYTES, TarFormatError, iter_files, iter_samples

__all__ = [
    "MAX_MEMBER_BYTES",
    "MAX_SHARDS",
    "MAX_SHARD_BYTES",
    "SHUFFLE_BUFFER_BYTES",
    "Dataset",
    "ShardChecksumError",
    "ShardListError",
    "ShardReadError",
    "ShardWriter",
    "Split",
    "TarFormatError",
    "collate",
    "expand_urls",
    "iter_files",
    "iter_samples",
    "origin_of",
    "trusted_origins",
    "write_samples",
]
