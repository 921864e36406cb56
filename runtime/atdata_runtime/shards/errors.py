"""Errors of shard reading that are not format errors (those are
:class:`~atdata_runtime.shards.tar.TarFormatError` and
:class:`~atdata_runtime.samples.SampleFormatError`), and :func:`missing_extra`, the
one error for an optional dependency (an extra) that is not installed, used
wherever the runtime imports one."""

from __future__ import annotations

from ..net.errors import NetworkError

__all__ = ["ShardChecksumError", "missing_extra"]


class ShardChecksumError(NetworkError):
    """A shard's bytes do not match the checksum its entry records."""

    rule = "SHARD_CHECKSUM_MISMATCH"


def missing_extra(
    exc: ImportError,
    what: str,
    extra: str,
    note: str = "",
    *,
    module: str | None = None,
) -> ModuleNotFoundError:
    """The error for an optional dependency that is not installed: what needed it,
    the extra that installs it and the original import error (``name``: the
    missing module, ``module`` or the one ``exc`` names)."""
    return ModuleNotFoundError(
        f"{what} needs the '{extra}' extra: pip install 'atdata-runtime[{extra}]'"
        f"{note} ({type(exc).__name__}: {exc})",
        name=module or exc.name,
    )
