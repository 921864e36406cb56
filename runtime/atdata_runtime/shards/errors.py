"""Errors of shard reading that are not format errors (those are
:class:`~atdata_runtime.shards.tar.TarFormatError` and
:class:`~atdata_runtime.samples.SampleFormatError`), and :func:`missing_extra`, the
one error for an optional dependency (an extra) that is not installed, used
wherever the runtime imports one."""

from __future__ import annotations

from ..net.errors import NetworkError

__all__ = ["ShardChecksumError", "ShardListError", "ShardReadError", "missing_extra"]


class ShardChecksumError(NetworkError):
    """A shard's bytes do not match the checksum its entry records
    (``SHARD_CHECKSUM_MISMATCH``), or (``SHARD_TOO_LARGE``) a shard verified
    before use is larger than ``max_shard_bytes`` and was not read further."""

    rule = "SHARD_CHECKSUM_MISMATCH"


class ShardReadError(NetworkError):
    """Opening or reading a shard through fsspec (``s3://`` and the other
    protocols it handles) failed (``SHARD_READ``): ``uri`` is the shard URL
    (redacted), and, for shards an entry listed, ``entry`` is its AT-URI (else
    ``None``). The message holds the original error's class name and message
    (URLs in it redacted, at most 300 characters); the original exception is
    ``__cause__``. HTTP(S) shards raise the fetcher's own
    :class:`~atdata_runtime.net.errors.NetworkError` subclasses instead."""

    rule = "SHARD_READ"

    def __init__(self, uri: str, reason: str, *, entry: str | None = None) -> None:
        self.entry = entry
        super().__init__(uri, f"{reason} (entry {entry})" if entry else reason)


class ShardListError(ValueError):
    """A :class:`~atdata_runtime.shards.Dataset` was given an unusable list of
    shards or settings for it: ``where`` (the URL, pattern or setting concerned,
    credentials redacted), ``reason``, and a stable ``rule``:

    - ``SHARD_LIST_TOO_LONG``: brace notation expands to more URLs than
      ``max_shards`` (or more URLs than that were given);
    - ``SHARD_LIST_EMPTY``: no shard URLs;
    - ``CHECKSUM_URL_UNKNOWN``: a checksum is keyed by a URL that is not one of the
      dataset's shard URLs after expansion (it would verify nothing);
    - ``SHARD_PATTERN``: a URL that is not a string, or a brace pattern that
      cannot be expanded (unbalanced braces, a number over 4,300 digits, nesting
      deeper than the recursion limit);
    - ``HEADERS_SCOPE``: ``storage_options["headers"]`` cannot be scoped to hosts
      (an origin key that is not ``scheme://host[:port]``, or plain headers for URLs
      that a record named);
    - ``TRUSTED_ENDPOINT``: a ``trusted_endpoints`` entry that is not exactly an
      origin: ``http``/``https``, a host (no ``*`` wildcard), an optional port and
      at most a trailing ``/`` (no ``user:pass@``, path, query or fragment, which
      would silently be widened to the whole origin);
    - ``SHARD_URL_LOCAL`` / ``SHARD_URL_SCHEME``: a URL from a record
      (``urls_from="record"``) that names a local path, or a scheme other than
      ``http``, ``https`` and ``s3``, refused when the shard is opened.

    A ``ValueError``, so that code catching the old errors still does.
    ``str()`` is ``"<where>: <reason> [<rule>]"``."""

    rule = "SHARD_LIST"

    def __init__(self, where: str, reason: str, *, rule: str | None = None) -> None:
        self.where = where
        self.reason = reason
        if rule is not None:
            self.rule = rule
        super().__init__(
            f"{where}: {reason} [{self.rule}]" if where else f"{reason} [{self.rule}]"
        )


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
