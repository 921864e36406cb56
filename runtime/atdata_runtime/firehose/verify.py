"""Commit signature checks for decoded ``subscribeRepos`` frames (AT Protocol "Sync"
spec § "Firehose Validation Best Practices"; "Repository" spec § "Commit Objects";
"Cryptography" spec).

:class:`CommitVerifier` decides whether a frame needs a check (``policy``), finds
the repository's signing key (the ``#atproto`` key of its DID document, via
:class:`~atdata_runtime.atmosphere.identity.IdentityResolver` and
:func:`~atdata_runtime.atmosphere.repo.signing_key`), and checks the commit block
with :func:`~atdata_runtime.atmosphere.repo.verify_commit` (a v3 commit, ``did``
the frame's repository, ECDSA-SHA256 over the DAG-CBOR of the unsigned commit,
low-S only). The commit block itself was already hash-checked against the frame's
``commit`` CID by :func:`~.frames.decode_frame`, and the CAR's first root is that
CID.

Policies: ``dataset`` (the default) checks commits with an operation in a
``science.alt.dataset.*`` collection; ``all`` checks every commit and ``#sync``;
``none`` checks nothing.

Outcomes (:class:`Verdict`): ``verified`` True (good signature), or ``None`` (not
checked: not required by the policy, a ``tooBig`` commit without its block, or
the key could not be resolved; ``reason`` says which and ``rule`` carries the
resolver's rule). A bad commit raises :class:`~.frames.FrameError`:

``SIG_INVALID``
    the signature does not verify with the DID's current key (after one fresh
    resolution when the cached key is older than ``refresh_after`` seconds: the
    key may have rotated).
``COMMIT_INVALID``
    the commit block is not a v3 commit (``did``, ``version`` 3, ``data``,
    ``rev`` TID, ``prev``, ``sig``; nothing else).
``COMMIT_REPO_MISMATCH``
    the commit is signed for another DID than the frame's ``repo``/``did``.
``COMMIT_REV_MISMATCH``
    the commit's ``rev`` is not the frame's ``rev``.

Keys are cached per DID (LRU of ``cache_size`` entries, ``ttl`` seconds); failed
resolutions too (``negative_ttl`` seconds), so that a DID that does not resolve
costs one lookup per ``negative_ttl``, not one per frame. An ``#identity`` frame (or
:meth:`CommitVerifier.forget`) drops the DID's entry. Resolution is network I/O:
:meth:`CommitVerifier.acheck` runs it in a worker thread (``asyncio.to_thread``), at
most ``max_lookups`` at once and one per DID however many frames wait for it, so an
event loop never blocks on the network; the signature check itself is CPU work
(about 0.3 ms for secp256k1 with ``cryptography``) and runs inline.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from ..atmosphere.cid import cid_to_bytes
from ..atmosphere.errors import RecordVerificationError
from ..atmosphere.identity import IdentityResolver
from ..atmosphere.repo import Car, signing_key, verify_commit
from ..net.errors import NetworkError
from ..net.retry import RetryPolicy
from .frames import Frame, FrameError

__all__ = ["CommitVerifier", "Verdict", "VerifyPolicy"]

VerifyPolicy: TypeAlias = Literal["dataset", "all", "none"]
_POLICIES: Final = ("dataset", "all", "none")
_RULES: Final = {
    "REPO_BAD_SIGNATURE": "SIG_INVALID",
    "REPO_COMMIT_INVALID": "COMMIT_INVALID",
    "REPO_DID_MISMATCH": "COMMIT_REPO_MISMATCH",
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :meth:`CommitVerifier.check` found: ``verified`` (True: the signature
    is good; ``None``: not checked), ``reason`` (why, for logs and the dead-letter
    table) and ``rule`` (the resolver's rule, e.g. ``IDENTITY_UNRESOLVED`` or
    ``REPO_SIGNING_KEY``, when the key could not be resolved)."""

    verified: bool | None
    reason: str
    rule: str | None = None


_NOT_REQUIRED: Final = Verdict(None, "not required by the policy")
_VERIFIED: Final = Verdict(True, "signature verified")
_TOO_BIG: Final = Verdict(None, "tooBig commit: no commit block to check")


@dataclass(frozen=True, slots=True)
class _Entry:
    """A cache entry: ``key`` (``did:key``) or ``None`` with ``reason``/``rule``
    of the failed resolution; ``fetched`` and ``expires`` in monotonic seconds."""

    key: str | None
    fetched: float
    expires: float
    reason: str = ""
    rule: str | None = None


class CommitVerifier:
    """Checks commit signatures of decoded frames (see the module docstring).

    ``resolver``: the identity resolver (default: ``plc.directory``, 5 s per
    lookup, two attempts). ``policy``: ``dataset``, ``all`` or ``none``.
    ``cache_size``: DIDs kept (LRU). ``ttl`` / ``negative_ttl``: seconds a resolved
    key / a failed resolution is kept. ``refresh_after``: a key cached longer than
    this many seconds is re-resolved once when a signature fails with it.
    ``max_lookups``: concurrent resolutions of :meth:`acheck`. ``stats`` counts
    outcomes (``verified``, ``not_required``, ``unresolved``, ``invalid``,
    ``lookups``). Thread-safe. Raises ``ValueError`` for an unknown policy."""

    def __init__(
        self,
        resolver: IdentityResolver | None = None,
        *,
        policy: VerifyPolicy = "dataset",
        cache_size: int = 100_000,
        ttl: float = 3600.0,
        negative_ttl: float = 60.0,
        refresh_after: float = 60.0,
        max_lookups: int = 8,
    ) -> None:
        if policy not in _POLICIES:
            raise ValueError(
                f"verify policy must be one of {', '.join(_POLICIES)}, not {policy!r}"
            )
        if cache_size < 1 or max_lookups < 1:
            raise ValueError("cache_size and max_lookups must be at least 1")
        self.resolver = resolver or IdentityResolver(
            timeout=5.0, retry=RetryPolicy(attempts=2, deadline=5.0)
        )
        self.policy: VerifyPolicy = policy
        self.cache_size = cache_size
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.refresh_after = refresh_after
        self.stats: dict[str, int] = dict.fromkeys(
            ("verified", "not_required", "unresolved", "invalid", "lookups"), 0
        )
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.max_lookups = max_lookups
        self._inflight: dict[str, asyncio.Task[_Entry]] = {}
        self._lookups: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    def __repr__(self) -> str:
        return f"CommitVerifier(policy={self.policy!r}, cached={len(self._cache)})"

    # -- policy ---------------------------------------------------------------------
    def required(self, frame: Frame) -> bool:
        """Whether ``policy`` asks to check ``frame``: ``dataset``, a commit with
        an operation in ``science.alt.dataset.*``; ``all``, every commit and
        ``#sync``; ``none``, nothing."""
        if self.policy == "dataset":
            return frame.kind == "commit" and frame.touches_datasets
        if self.policy == "all":
            return frame.kind in ("commit", "sync")
        return False

    # -- cache ----------------------------------------------------------------------
    def forget(self, did: str) -> None:
        """Drop the cached key (or failure) of ``did``: after an ``#identity``
        event its handle, key or PDS may have changed."""
        with self._lock:
            self._cache.pop(did, None)

    def _cached(self, did: str) -> _Entry | None:
        now = time.monotonic()
        with self._lock:
            entry = self._cache.get(did)
            if entry is None:
                return None
            if entry.expires <= now:
                del self._cache[did]
                return None
            self._cache.move_to_end(did)
            return entry

    def _store(self, did: str, entry: _Entry) -> None:
        with self._lock:
            self._cache[did] = entry
            self._cache.move_to_end(did)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _resolve(self, did: str) -> _Entry:
        """Resolve ``did``'s signing key over the network (blocking); a failure
        becomes a negative entry, never an exception."""
        with self._lock:
            self.stats["lookups"] += 1
        now = time.monotonic()
        try:
            doc = self.resolver.did_document(did)
            key = signing_key(doc.doc, did)
            entry = _Entry(key, now, now + self.ttl)
        except NetworkError as exc:
            entry = _Entry(
                None,
                now,
                now + self.negative_ttl,
                reason=f"signing key of {did[:200]} unresolved: {exc.reason[:300]}",
                rule=exc.rule,
            )
        finally:
            # The resolver keeps documents too (unbounded): this cache is the
            # bounded one.
            self.resolver.forget(did)
        self._store(did, entry)
        return entry

    # -- checks ---------------------------------------------------------------------
    def _precheck(self, frame: Frame) -> Verdict | None:
        """The verdict when no key is needed, else ``None``."""
        if frame.kind == "identity" and frame.did is not None:
            self.forget(frame.did)
        if not self.required(frame):
            self._count("not_required")
            return _NOT_REQUIRED
        if frame.commit_block is None:
            self._count("not_required")
            return _TOO_BIG
        return None

    def _count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1

    def _unresolved(self, entry: _Entry) -> Verdict:
        self._count("unresolved")
        return Verdict(None, entry.reason, entry.rule)

    def check_with_key(self, frame: Frame, key: str) -> None:
        """Check ``frame``'s commit block against ``key`` (a ``did:key``), no
        network. Raises :class:`~.frames.FrameError` (``SIG_INVALID``,
        ``COMMIT_INVALID``, ``COMMIT_REPO_MISMATCH``, ``COMMIT_REV_MISMATCH``);
        ``ValueError`` for a frame without a commit block."""
        block, cid, did = frame.commit_block, frame.commit_cid, frame.did
        if block is None or cid is None or did is None:
            raise ValueError("frame has no commit block to check")
        raw = cid_to_bytes(cid)
        try:
            commit = verify_commit(Car(root=raw, blocks={raw: block}), did, key)
        except RecordVerificationError as exc:
            raise FrameError(
                _RULES.get(exc.rule, "COMMIT_INVALID"),
                exc.reason,
                location="/body/blocks",
                seq=frame.seq,
                repo=did,
                cid=cid,
            ) from None
        rev = getattr(frame.message, "rev", None)
        if commit["rev"] != rev:
            raise FrameError(
                "COMMIT_REV_MISMATCH",
                f"the commit block's rev {commit['rev']} is not the frame's "
                f"rev {str(rev)[:20]}",
                location="/body/rev",
                seq=frame.seq,
                repo=did,
                cid=cid,
            )

    def _signed(self, frame: Frame, entry: _Entry) -> bool:
        """Whether ``frame`` verifies with ``entry``'s key; ``False`` only for a
        bad signature worth a fresh key (other findings raise)."""
        assert entry.key is not None
        try:
            self.check_with_key(frame, entry.key)
        except FrameError as exc:
            if (
                exc.rule == "SIG_INVALID"
                and time.monotonic() - entry.fetched >= self.refresh_after
            ):
                return False
            self._count("invalid")
            raise
        return True

    def check(self, frame: Frame) -> Verdict:
        """Check ``frame`` (blocking: may resolve the DID over the network). Returns
        a :class:`Verdict`; raises :class:`~.frames.FrameError` for a bad commit
        (rules in the module docstring)."""
        early = self._precheck(frame)
        if early is not None:
            return early
        assert frame.did is not None
        entry = self._cached(frame.did) or self._resolve(frame.did)
        if entry.key is None:
            return self._unresolved(entry)
        if not self._signed(frame, entry):
            entry = self._resolve(frame.did)
            if entry.key is None:
                return self._unresolved(entry)
            self._final(frame, entry)
        self._count("verified")
        return _VERIFIED

    def _final(self, frame: Frame, entry: _Entry) -> None:
        assert entry.key is not None
        try:
            self.check_with_key(frame, entry.key)
        except FrameError:
            self._count("invalid")
            raise

    def verify(self, frame: Frame) -> bool | None:
        """:meth:`check`'s ``verified``: True, ``None``, or raises."""
        return self.check(frame).verified

    def _semaphore(self, loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
        if self._lookups is None or self._lookups[0] is not loop:
            self._lookups = (loop, asyncio.Semaphore(self.max_lookups))
        return self._lookups[1]

    async def _resolve_async(self, did: str) -> _Entry:
        loop = asyncio.get_running_loop()
        task = self._inflight.get(did)
        if task is None or task.get_loop() is not loop:
            semaphore = self._semaphore(loop)

            async def lookup() -> _Entry:
                async with semaphore:
                    return await asyncio.to_thread(self._resolve, did)

            task = asyncio.ensure_future(lookup())
            self._inflight[did] = task
            task.add_done_callback(lambda _: self._inflight.pop(did, None))
        # A caller cancelled while waiting leaves the lookup running for others.
        return await asyncio.shield(task)

    async def acheck(self, frame: Frame) -> Verdict:
        """:meth:`check` for an event loop: DID resolution runs in a worker thread
        (deduplicated per DID, at most ``max_lookups`` at once); the signature
        check runs inline (CPU, ~0.3 ms)."""
        early = self._precheck(frame)
        if early is not None:
            return early
        assert frame.did is not None
        entry = self._cached(frame.did) or await self._resolve_async(frame.did)
        if entry.key is None:
            return self._unresolved(entry)
        if not self._signed(frame, entry):
            self.forget(frame.did)
            entry = await self._resolve_async(frame.did)
            if entry.key is None:
                return self._unresolved(entry)
            self._final(frame, entry)
        self._count("verified")
        return _VERIFIED

    async def averify(self, frame: Frame) -> bool | None:
        """:meth:`acheck`'s ``verified``."""
        return (await self.acheck(frame)).verified
