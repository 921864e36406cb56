"""Errors of the network half of the runtime. Each carries a rule ID (``rule``) and,
where one exists, the AT-URI it concerns (``uri``), so that a message always says
where and why. None of them ever contains a password, token, session string or a
response body; URLs in them go through :func:`atdata_runtime.net.redact_url`.

Rule IDs of identity resolution: ``DID_INVALID`` (syntax: did:plc, hostname-level
did:web only), ``HANDLE_INVALID``, ``DID_DOCUMENT_INVALID``,
``PDS_ENDPOINT_REFUSED`` (the ``#atproto_pds`` endpoint is not an https origin on a
public host), ``IDENTITY_UNRESOLVED`` (everything else)."""

from __future__ import annotations

from ..net.errors import NetworkError, RetryExhaustedError
from ..shards.errors import ShardChecksumError

__all__ = [
    "AtmosphereError",
    "AuthError",
    "BlobVerificationError",
    "DidDocumentError",
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


class DidDocumentError(IdentityError):
    """A fetched DID document is not the document of the DID asked for, or has the
    wrong shape (not an object, ``service``/``alsoKnownAs`` not lists, too many
    entries, a non-string ``#atproto_pds`` endpoint). W3C DID Core § 5; AT Protocol
    DID spec. The message never quotes the document."""

    rule = "DID_DOCUMENT_INVALID"


class RecordNotFoundError(NetworkError):
    """``com.atproto.repo.getRecord`` answered RecordNotFound."""

    rule = "RECORD_NOT_FOUND"


class RecordVerificationError(NetworkError):
    """A fetched record is not what its repository holds. With repository-verified
    reads (the default) the instance's ``rule`` names the failed check of the
    ``com.atproto.sync.getRecord`` proof (``REPO_CAR_INVALID``, ``REPO_BLOCK_CID``,
    ``REPO_COMMIT_INVALID``, ``REPO_DID_MISMATCH``, ``REPO_BAD_SIGNATURE``,
    ``REPO_SIGNING_KEY``, ``REPO_MST_PROOF``, ``REPO_RECORD_INVALID``; see
    :mod:`atdata_runtime.atmosphere.repo`); with the ``server-cid`` opt-out, the
    record does not hash to the CID its server gave (DAG-CBOR, CIDv1, sha-256; AT
    Protocol "Data Model" spec), or is not in the data model at all."""

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
