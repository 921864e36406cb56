"""Errors of the network half of the runtime. Each carries a rule ID (``rule``) and,
where one exists, the AT-URI it concerns (``uri``), so that a message always says
where and why. None of them ever contains a password, token or session string."""

from __future__ import annotations

from ..net.errors import NetworkError, RetryExhaustedError
from ..shards.errors import ShardChecksumError

__all__ = [
    "AtmosphereError",
    "AuthError",
    "BlobVerificationError",
    "IdentityError",
    "PublishConflictError",
    "RecordNotFoundError",
    "RecordValidationError",
    "RecordVerificationError",
    "RetryExhaustedError",
    "ShardChecksumError",
]


AtmosphereError = NetworkError
"""The base of every network error (:class:`atdata_runtime.net.NetworkError`): catch
it to catch them all, retry exhaustion included."""


class AuthError(NetworkError):
    """Login failed, or the saved session is invalid and no password was given."""

    rule = "AUTH_FAILED"


class IdentityError(NetworkError):
    """A handle or DID could not be resolved, or its DID document names no PDS, or
    the document does not claim the handle (bidirectional check, AT Protocol
    "Handle" spec § Handle Resolution)."""

    rule = "IDENTITY_UNRESOLVED"


class RecordNotFoundError(NetworkError):
    """``com.atproto.repo.getRecord`` answered RecordNotFound."""

    rule = "RECORD_NOT_FOUND"


class RecordVerificationError(NetworkError):
    """A fetched record does not hash to the CID its server gave (DAG-CBOR, CIDv1,
    sha-256; AT Protocol "Data Model" spec), or is not in the data model at all."""

    rule = "RECORD_CID_MISMATCH"


class RecordValidationError(NetworkError):
    """A record does not validate against its Lexicon (the generated models);
    ``reason`` lists each problem with its JSON pointer."""

    rule = "RECORD_INVALID"


class BlobVerificationError(NetworkError):
    """Blob bytes do not hash to the blob's CID (raw codec, sha-256)."""

    rule = "BLOB_CID_MISMATCH"


class PublishConflictError(NetworkError):
    """A record already exists at the target key with different content (schema
    versions are immutable: bump the version)."""

    rule = "SCHEMA_VERSION_CONFLICT"
