"""The repository event stream (``com.atproto.sync.subscribeRepos``): frame
decoding (:mod:`.frames`), ``match``-friendly events (:mod:`.events`), commit
signature checks (:mod:`.verify`) and typed subscriptions over a relay or the
ingestion service (:mod:`.subscribe`). Needs the ``firehose`` extra (cbrrr,
websockets); :mod:`.verify` also the ``atproto`` extra.

The names of :mod:`.frames` and :mod:`.verify` are exported lazily (on first use),
so that importing the events alone stays cheap."""

from typing import TYPE_CHECKING, Any

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
    Update,
)

if TYPE_CHECKING:
    from .acks import AckError, AckTracker
    from .frames import (
        MAX_FRAME_BYTES,
        Frame,
        FrameError,
        FrameOp,
        decode_frame,
        to_event,
        to_events,
    )
    from .subscribe import (
        CursorStore,
        FileCursorStore,
        IngestService,
        Relay,
        Subscription,
        SubscriptionError,
    )
    from .verify import CommitVerifier, Verdict, VerifyPolicy

_LAZY = {
    "MAX_FRAME_BYTES": "frames",
    "Frame": "frames",
    "FrameError": "frames",
    "FrameOp": "frames",
    "decode_frame": "frames",
    "to_event": "frames",
    "to_events": "frames",
    "CommitVerifier": "verify",
    "Verdict": "verify",
    "VerifyPolicy": "verify",
    "AckError": "acks",
    "AckTracker": "acks",
    "CursorStore": "subscribe",
    "FileCursorStore": "subscribe",
    "IngestService": "subscribe",
    "Relay": "subscribe",
    "Subscription": "subscribe",
    "SubscriptionError": "subscribe",
}


def __getattr__(name: str) -> Any:
    part = _LAZY.get(name)
    if part is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{part}", __name__), name)


__all__ = [
    "MAX_FRAME_BYTES",
    "Account",
    "AckError",
    "AckTracker",
    "Commit",
    "CommitVerifier",
    "Create",
    "CursorStore",
    "Delete",
    "Event",
    "FileCursorStore",
    "Frame",
    "FrameError",
    "FrameOp",
    "Identity",
    "Info",
    "IngestService",
    "RecordEvent",
    "Relay",
    "Subscription",
    "SubscriptionError",
    "Sync",
    "Update",
    "Verdict",
    "VerifyPolicy",
    "decode_frame",
    "to_event",
    "to_events",
]
