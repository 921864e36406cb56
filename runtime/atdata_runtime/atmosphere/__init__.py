"""The network half of the runtime: AT Protocol identity, login, reads verified by
the repository (:mod:`.repo`: CAR proof, commit signature, MST path), exactly-once
writes, blobs, publishing and loading (``science.alt.dataset.*``)."""

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
