"""The repository event stream (``com.atproto.sync.subscribeRepos``): frame
decoding (:mod:`.frames`), ``match``-friendly events (:mod:`.events`), commit
signature checks (:mod:`.verify`) and typed subscriptions over a relay or the
ingestion service (:mod:`.subscribe`). Needs the ``firehose`` extra (cbrrr,
websockets)."""

from .events import (
    Account,
    Commit,
    Create,
    Delete,
    Event,
    Identity,
    Info,
    RecordEvent,
    Sync,
)

__all__ = [
    "Account",
    "Commit",
    "Create",
    "Delete",
    "Event",
    "Identity",
    "Info",
    "RecordEvent",
    "Sync",
]
