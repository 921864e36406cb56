"""Errors of the network half of the runtime. Each carries a rule ID (``rule``) and,
where one exists, the AT-URI it concerns (``uri``), so that a message always says
where and why. None of them ever contains a password, token or session string."""

from __future__ import annotations

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


class AtmosphereError(Exception):
    """Base: ``rule`` (stable ID), ``uri`` (AT-URI or URL concerned, may be empty),
    ``reason`` (human text). ``str()`` is ``"<uri>: <reason> [<rule>]"``."""

    rule = "ATMOSPHERE_ERROR"

    def __init__(self, uri: str, reason: str, *, rule: str | None = None) -> None:
        self.uri = uri
        self.reason = reason
        if rule is not None:
            self.rule = rule
        super().__init__(
            f"{uri}: {reason} [{self.rule}]" if uri else f"{reason} [{self.rule}]"
        )


class AuthError(AtmosphereError):
    """Login failed, or the saved session is invalid and no password was given."""

    rule = "AUTH_FAILED"


class IdentityError(AtmosphereError):
    """A handle or DID could not be resolved, or its DID document names no PDS, or
    the document does not claim the handle (bidirectional check, AT Protocol
    "Handle" spec § Handle Resolution)."""

    rule = "IDENTITY_UNRESOLVED"


class RecordNotFoundError(AtmosphereError):
    """``com.atproto.repo.getRecord`` answered RecordNotFound."""

    rule = "RECORD_NOT_FOUND"


class RecordVerificationError(AtmosphereError):
    """A fetched record does not hash to the CID its server gave (DAG-CBOR, CIDv1,
    sha-256; AT Protocol "Data Model" spec), or is not in the data model at all."""

    rule = "RECORD_CID_MISMATCH"


class RecordValidationError(AtmosphereError):
    """A record does not validate against its Lexicon (the generated models);
    ``reason`` lists each problem with its JSON pointer."""

    rule = "RECORD_INVALID"


class BlobVerificationError(AtmosphereError):
    """Blob bytes do not hash to the blob's CID (raw codec, sha-256)."""

    rule = "BLOB_CID_MISMATCH"


class ShardChecksumError(AtmosphereError):
    """A shard's bytes do not match the checksum its entry records."""

    rule = "SHARD_CHECKSUM_MISMATCH"


class PublishConflictError(AtmosphereError):
    """A record already exists at the target key with different content (schema
    versions are immutable: bump the version)."""

    rule = "SCHEMA_VERSION_CONFLICT"


class RetryExhaustedError(AtmosphereError):
    """A request kept failing with retryable errors until the retry budget (attempts
    or total time) ran out; ``__cause__`` is the last error."""

    rule = "RETRY_EXHAUSTED"
