"""The network half of the runtime: AT Protocol identity, login, reads verified by
the repository (:mod:`.repo`: CAR proof, commit signature, MST path), exactly-once
writes, blobs, publishing and loading (``science.alt.dataset.*``).

The names below are imported from their submodules on first use, not by ``import
atdata_runtime.atmosphere``: :mod:`.cid` (which the compiler's lock reader needs)
does not pull in the HTTP client and pydantic (~160 ms; issue 17). Type checkers
see the names as before."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..net.retry import RetryPolicy
    from .cid import blob_cid, record_cid
    from .client import AtmosphereClient, FetchedRecord, VerifyMode, WriteResult
    from .errors import (
        AtmosphereError,
        AuthError,
        BlobVerificationError,
        IdentityError,
        PublishConflictError,
        RecordNotFoundError,
        RecordValidationError,
        RecordVerificationError,
        RetryExhaustedError,
        ShardChecksumError,
    )
    from .identity import DidDocument, IdentityResolver
    from .records import AtUri, parse_schema_rkey, schema_rkey, validate_record
    from .repo import VerifiedRecord, signing_key, verify_record_proof
    from .session import Secret, SessionStore

__all__ = [
    "AtUri",
    "AtmosphereClient",
    "AtmosphereError",
    "AuthError",
    "BlobVerificationError",
    "DidDocument",
    "FetchedRecord",
    "IdentityError",
    "IdentityResolver",
    "PublishConflictError",
    "RecordNotFoundError",
    "RecordValidationError",
    "RecordVerificationError",
    "RetryExhaustedError",
    "RetryPolicy",
    "Secret",
    "SessionStore",
    "ShardChecksumError",
    "VerifiedRecord",
    "VerifyMode",
    "WriteResult",
    "blob_cid",
    "parse_schema_rkey",
    "record_cid",
    "schema_rkey",
    "signing_key",
    "validate_record",
    "verify_record_proof",
]

_WHERE = {
    "AtUri": ".records",
    "AtmosphereClient": ".client",
    "AtmosphereError": ".errors",
    "AuthError": ".errors",
    "BlobVerificationError": ".errors",
    "DidDocument": ".identity",
    "FetchedRecord": ".client",
    "IdentityError": ".errors",
    "IdentityResolver": ".identity",
    "PublishConflictError": ".errors",
    "RecordNotFoundError": ".errors",
    "RecordValidationError": ".errors",
    "RecordVerificationError": ".errors",
    "RetryExhaustedError": ".errors",
    "RetryPolicy": "..net.retry",
    "Secret": ".session",
    "SessionStore": ".session",
    "ShardChecksumError": ".errors",
    "VerifiedRecord": ".repo",
    "VerifyMode": ".client",
    "WriteResult": ".client",
    "blob_cid": ".cid",
    "parse_schema_rkey": ".records",
    "record_cid": ".cid",
    "schema_rkey": ".records",
    "signing_key": ".repo",
    "validate_record": ".records",
    "verify_record_proof": ".repo",
}
"""Which module (relative to this package) defines each exported name."""

_SUBMODULES = frozenset(
    {
        "cid",
        "client",
        "errors",
        "identity",
        "load",
        "publish",
        "records",
        "repo",
        "s3resolver",
        "session",
    }
)

_EXTRA_MODULES = frozenset(
    {"httpx", "atproto", "atproto_client", "atproto_core", "atproto_crypto"}
)
"""The top-level modules the ``atproto`` extra installs (a missing one gets the
``pip install 'atdata-runtime[atproto]'`` hint)."""

if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        """An exported name (its module imported now, the value then cached here)
        or a submodule; else ``AttributeError``."""
        import importlib

        if name in _SUBMODULES:
            module, where = f".{name}", f"{__name__}.{name}"
        elif name in _WHERE:
            module, where = _WHERE[name], f"{__name__}.{name}"
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        try:
            found = importlib.import_module(module, __name__)
        except ModuleNotFoundError as exc:
            root = (exc.name or "").partition(".")[0]
            if root not in _EXTRA_MODULES or "atdata-runtime[" in str(exc):
                raise
            from ..shards.errors import missing_extra  # only on this error path

            raise missing_extra(exc, where, "atproto") from exc
        value = found if name in _SUBMODULES else getattr(found, name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
