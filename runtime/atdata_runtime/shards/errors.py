"""Errors of shard reading that are not format errors (those are
:class:`~atdata_runtime.shards.tar.TarFormatError` and
:class:`~atdata_runtime.samples.SampleFormatError`)."""

from __future__ import annotations

from ..net.errors import NetworkError

__all__ = ["ShardChecksumError"]


class ShardChecksumError(NetworkError):
    """A shard's bytes do not match the checksum its entry records."""

    rule = "SHARD_CHECKSUM_MISMATCH"
