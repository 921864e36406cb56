"""The repository event stream (``com.atproto.sync.subscribeRepos``): frame
decoding (:mod:`.frames`), ``match``-friendly events (:mod:`.events`), commit
signature checks (:mod:`.verify`) and typed subscriptions over a relay or the
ingestion service (:mod:`.subscribe`). Needs the ``firehose`` extra (cbrrr,
websockets, httpx: ``pip install 'atdata-runtime[firehose]'``).

The names of :mod:`.frames`, :mod:`.verify`, :mod:`.acks` and :mod:`.subscribe`
are exported lazily (on first use), so that importing the events alone stays
cheap and works without the extra; using one of the others without it raises
``ModuleNotFoundError`` naming the extra to install (as the runtime's other
extras do: :func:`~atdata_runtime.shards.errors.missing_extra`)."""

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


_EXTRA_MODULES = frozenset({"cbrrr", "websockets", "httpx"})
"""The top-level modules the ``firehose`` extra installs."""


def _missing_extra(exc: ImportError, what: str) -> ModuleNotFoundError | None:
    """The error naming ``pip install 'atdata-runtime[firehose]'`` for ``exc``
    when it is the import of a module of the ``firehose`` extra (``name`` kept:
    the missing module), else ``None`` (re-raise ``exc``). ``what`` says what
    needed it. An error that already names an extra is left alone."""
    root = (exc.name or "").partition(".")[0]
    if root not in _EXTRA_MODULES or "atdata-runtime[" in str(exc):
        return None
    from ..shards.errors import missing_extra  # only on this error path

    return missing_extra(exc, what, "firehose")


def __getattr__(name: str) -> Any:
    part = _LAZY.get(name)
    if part is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    try:
        module = importlib.import_module(f".{part}", __name__)
    except ModuleNotFoundError as exc:
        hint = _missing_extra(exc, f"{__name__}.{name}")
        if hint is None:
            raise
        raise hint from exc
    return getattr(module, name)


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
