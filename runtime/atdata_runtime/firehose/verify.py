"""Commit checks for decoded ``subscribeRepos`` frames (AT Protocol "Sync" spec
§ "Firehose Validation Best Practices"; "Repository" spec § "Commit Objects" and
§ "MST Structure"; "Cryptography" spec).

:class:`CommitVerifier` decides whether a frame needs a check (``policy``), finds
the repository's signing key (the ``#atproto`` key of its DID document, via
:class:`~atdata_runtime.atmosphere.identity.IdentityResolver` and
:func:`~atdata_runtime.atmosphere.repo.signing_key`), and then, in this order:

1. **signature**: the commit block with
   :func:`~atdata_runtime.atmosphere.repo.verify_commit` (a v3 commit, ``did`` the
   frame's repository, ECDSA-SHA256 over the DAG-CBOR of the unsigned commit,
   low-S only). The commit block was already hash-checked against the frame's
   ``commit`` CID, and its ``version``/``did``/``rev`` against the body, by
   :func:`~.frames.decode_frame`.
2. **operations** (commits): the signature covers the commit block only, so each
   operation is proven against the signed MST (``data``) with
   :func:`~.frames.prove_ops`: a create/update's ``path → cid`` is in the tree, a
   delete's path is not. Sync 1.1 commits carry the MST nodes this needs (the
   local ``@atproto/pds`` does).
3. **rev**: the last good-signature ``rev`` (and ``data`` CID) of each DID is kept
   (LRU of ``cache_size`` DIDs). A commit whose ``rev`` is not above it (a replay,
   or reordering), a ``#sync`` whose ``rev`` is below it, or any ``rev`` whose TID
   timestamp is more than ``max_future`` seconds (5 minutes) ahead of the wall
   clock, is not called verified. The signature is checked first even when the
   rev will fail, so that the cost of a check does not depend on the stream.

Policies: ``dataset`` (the default) checks commits with an operation in a
``science.alt.dataset.*`` collection; ``all`` checks every commit and ``#sync``;
``none`` checks nothing.

Outcomes (:class:`Verdict`, whose ``rule`` the ingester stores): ``verified``
True (all three checks passed, ``rule`` ``None``), or ``None`` (not verified; the
event is still stored, only not claimed verified):

``None`` rule
    not required by the policy.
``COMMIT_TOO_BIG``
    a ``tooBig`` commit, without its blocks.
the resolver's rule (``IDENTITY_UNRESOLVED``, ``REPO_SIGNING_KEY``, …)
    the key could not be resolved.
``PROOF_INCOMPLETE``
    good signature, but an MST node a proof needs is not in the CAR (a PDS before
    Sync 1.1): the operations are neither proven nor disproven.
``REV_STALE`` / ``REV_FUTURE``
    good signature (and proofs), but the rev is not after the last one of this DID
    / is too far in the future (see 3.).
``KEY_REFRESH_LIMITED``
    the signature fails with the cached key, an ``#identity`` event said the key
    may have changed, and the forced refresh is rate-limited (see below): no
    verdict either way until it may be refreshed.

A bad commit raises :class:`~.frames.FrameError` (the ingester dead-letters it):

``SIG_INVALID``
    the signature does not verify with the DID's current key (after one forced
    re-resolution when the cached key is older than ``refresh_after`` seconds:
    the key may have rotated).
``COMMIT_INVALID``
    the commit block is not a v3 commit (``did``, ``version`` 3, ``data``,
    ``rev`` TID, ``prev``, ``sig``; nothing else).
``COMMIT_REPO_MISMATCH`` / ``COMMIT_REV_MISMATCH``
    the commit is signed for another DID / rev than the frame's (a frame not made
    by :func:`~.frames.decode_frame`, which refuses those as ``COMMIT_MISMATCH``).
``OP_NOT_IN_COMMIT`` / ``MST_INVALID`` / ``BLOCK_CID_MISMATCH``
    an operation is disproven by the signed tree (see :func:`~.frames.prove_ops`).

**Replay protection covers checked commits only.** Under ``dataset`` a commit
outside ``science.alt.dataset.*`` is not checked, so it neither gets nor gives
rev protection (``verified`` ``None``: a relay can replay or reorder it freely);
a DID evicted from the rev LRU starts afresh.

Keys are cached per DID (LRU of ``cache_size`` entries, ``ttl`` seconds); failed
resolutions too (``negative_ttl`` seconds), so that a DID that does not resolve
costs one lookup per ``negative_ttl``, not one per frame. **Forced refreshes** —
an ``#identity`` frame (or :meth:`CommitVerifier.forget`) dropping a cached key,
and the re-resolution after a bad signature — happen at most once per DID per
``refresh_interval`` seconds (60), so a relay cannot make the verifier look up a
DID on every commit by interleaving ``#identity`` frames or forged signatures. A
``forget`` inside the interval is deferred instead of dropped: the entry expires
when the interval ends and is marked suspect meanwhile (a bad signature with a
suspect key is ``KEY_REFRESH_LIMITED``, not ``SIG_INVALID``).

Resolution is network I/O. :meth:`CommitVerifier.start` (for an event loop) runs
it in worker threads (``asyncio.to_thread``), at most ``max_lookups`` at once and
one per DID however many frames wait for it, and returns a future at once, so the
caller keeps decoding while keys are fetched; :meth:`CommitVerifier.acheck` is
``await start(frame)``. The signature check itself is CPU work and runs in the
loop: :func:`~atdata_runtime.atmosphere.repo.verify_signature`, secp256k1 with
libsecp256k1 (``coincurve``, in the ``firehose`` extra) about 25 µs, else with
``cryptography`` about 0.3 ms; P-256 always with ``cryptography``; the proofs
~30 µs. :meth:`CommitVerifier.check` with a cached key is about 0.1 ms per commit
with ``coincurve``, 0.37 ms without (local PDS frames, process time).
:meth:`CommitVerifier.check` is the blocking form.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from ..atmosphere.cid import cid_to_bytes, cid_to_str
from ..atmosphere.errors import RecordVerificationError
from ..atmosphere.identity import IdentityResolver
from ..atmosphere.repo import Car, signing_key, verify_commit
from ..net.errors import NetworkError
from ..net.retry import RetryPolicy
from .frames import Frame, FrameError, prove_ops

__all__ = ["MAX_REV_FUTURE", "CommitVerifier", "Verdict", "VerifyPolicy"]

VerifyPolicy: TypeAlias = Literal["dataset", "all", "none"]
_POLICIES: Final = ("dataset", "all", "none")
_RULES: Final = {
    "REPO_BAD_SIGNATURE": "SIG_INVALID",
    "REPO_COMMIT_INVALID": "COMMIT_INVALID",
    "REPO_DID_MISMATCH": "COMMIT_REPO_MISMATCH",
}
MAX_REV_FUTURE: Final = 300.0
"""Default ``max_future``: seconds a rev's TID timestamp may be ahead of the wall
clock (5 minutes, the "Sync" spec's suggested clock-skew allowance)."""
_TID_DIGITS: Final = {c: i for i, c in enumerate("234567abcdefghijklmnopqrstuvwxyz")}
_STATS: Final = (
    "verified",
    "not_required",
    "unresolved",
    "invalid",
    "lookups",
    "forced_lookups",
    "incomplete",
    "stale",
    "future",
    "limited",
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the verifier found about one frame (see the module docstring).

    ``verified``: ``True`` (signature, operation proofs and rev all good) or
    ``None`` (not claimed verified; the event is stored all the same).
    ``reason``: human text for logs and the events table. ``rule``: ``None`` for
    ``True`` and for "not required by the policy"; else why not verified, one of
    ``COMMIT_TOO_BIG``, ``PROOF_INCOMPLETE``, ``REV_STALE``, ``REV_FUTURE``,
    ``KEY_REFRESH_LIMITED`` or the resolver's rule (``IDENTITY_UNRESOLVED``,
    ``REPO_SIGNING_KEY``, …). A bad commit is not a verdict: it raises."""

    verified: bool | None
    reason: str
    rule: str | None = None


_NOT_REQUIRED: Final = Verdict(None, "not required by the policy")
_VERIFIED: Final = Verdict(True, "signature, operations and rev verified")
_TOO_BIG: Final = Verdict(
    None, "tooBig commit: no commit block to check", "COMMIT_TOO_BIG"
)


@dataclass(frozen=True, slots=True)
class _Entry:
    """A cache entry: ``key`` (``did:key``) or ``None`` with ``reason``/``rule``
    of the failed resolution; ``fetched`` and ``expires`` in monotonic seconds;
    ``suspect``: an ``#identity`` asked for a refresh that the rate limit
    deferred."""

    key: str | None
    fetched: float
    expires: float
    reason: str = ""
    rule: str | None = None
    suspect: bool = False


def _tid_seconds(tid: str) -> float:
    """The timestamp of a TID (13 base32-sortable characters: 53 bits of
    microseconds since the UNIX epoch, then 10 bits of clock id; "Record Key"
    spec § TID), in seconds. ``KeyError`` for a character outside the alphabet."""
    n = 0
    for c in tid:
        n = n * 32 + _TID_DIGITS[c]
    return (n >> 10) / 1e6


class CommitVerifier:
    """Checks commits of decoded frames (see the module docstring).

    ``resolver``: the identity resolver (default: ``plc.directory``, 5 s per
    lookup, two attempts). ``policy``: ``dataset``, ``all`` or ``none``.
    ``cache_size``: DIDs kept (LRU), for keys and for last revs alike. ``ttl`` /
    ``negative_ttl``: seconds a resolved key / a failed resolution is kept.
    ``refresh_after``: a key cached longer than this many seconds is re-resolved
    once when a signature fails with it. ``refresh_interval``: at most one forced
    refresh per DID per this many seconds. ``max_future``: seconds a rev may be
    ahead of the wall clock. ``max_lookups``: concurrent resolutions of
    :meth:`start`. ``clock``: the wall clock (``time.time``; for tests).
    ``stats`` counts outcomes (``verified``, ``not_required``, ``unresolved``,
    ``invalid``, ``lookups``, ``forced_lookups``, ``incomplete``, ``stale``,
    ``future``, ``limited``). Thread-safe; :meth:`start` and :meth:`acheck` on
    one event loop at a time. Raises ``ValueError`` for an unknown policy or a
    size under 1."""

    def __init__(
        self,
        resolver: IdentityResolver | None = None,
        *,
        policy: VerifyPolicy = "dataset",
        cache_size: int = 100_000,
        ttl: float = 3600.0,
        negative_ttl: float = 60.0,
        refresh_after: float = 60.0,
        refresh_interval: float = 60.0,
        max_future: float = MAX_REV_FUTURE,
        max_lookups: int = 8,
        clock: Callable[[], float] = time.time,
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
        self.refresh_interval = refresh_interval
        self.max_future = max_future
        self.max_lookups = max_lookups
        self.clock = clock
        self.stats: dict[str, int] = dict.fromkeys(_STATS, 0)
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._revs: OrderedDict[str, tuple[str, bytes | None, bool]] = OrderedDict()
        """DID → (last good-signature rev, its data CID, whether from a #sync)."""
        self._forced: OrderedDict[str, float] = OrderedDict()
        """DID → monotonic time of its last forced refresh."""
        self._lock = threading.Lock()
        self._inflight: dict[str, asyncio.Task[_Entry]] = {}
        self._lookups: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self._lanes: dict[str, asyncio.Future[Verdict]] = {}
        self._pending = 0

    def __repr__(self) -> str:
        return f"CommitVerifier(policy={self.policy!r}, cached={len(self._cache)})"

    @property
    def pending(self) -> int:
        """Futures of :meth:`start` not done yet (for the caller's bound)."""
        return self._pending

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
        event its handle, key or PDS may have changed. At most once per
        ``refresh_interval`` per DID; within it, the entry is kept until the
        interval ends and marked suspect (see the module docstring)."""
        now = time.monotonic()
        with self._lock:
            entry = self._cache.get(did)
            if entry is None:
                return
            if self._claim_locked(did, now):
                del self._cache[did]
                return
            last = self._forced[did]
            self._cache[did] = dataclasses.replace(
                entry,
                expires=min(entry.expires, last + self.refresh_interval),
                suspect=True,
            )

    def _claim_locked(self, did: str, now: float) -> bool:
        """Whether a forced refresh of ``did`` may happen now (and record it)."""
        last = self._forced.get(did)
        if last is not None and now - last < self.refresh_interval:
            return False
        self._forced[did] = now
        self._forced.move_to_end(did)
        while len(self._forced) > self.cache_size:
            self._forced.popitem(last=False)
        return True

    def _claim(self, did: str) -> bool:
        with self._lock:
            return self._claim_locked(did, time.monotonic())

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

    def _resolve(self, did: str, forced: bool = False) -> _Entry:
        """Resolve ``did``'s signing key over the network (blocking); a failure
        becomes a negative entry, never an exception."""
        with self._lock:
            self.stats["lookups"] += 1
            if forced:
                self.stats["forced_lookups"] += 1
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

    def _signed(self, frame: Frame, key: str) -> dict[str, Any]:
        """The commit of ``frame``'s block, its signature checked against ``key``.
        Raises :class:`~.frames.FrameError` (see :meth:`check_with_key`)."""
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
        return commit

    def check_with_key(self, frame: Frame, key: str) -> None:
        """Check ``frame``'s commit signature against ``key`` (a ``did:key``), no
        network, no operation proofs, no rev state. Raises
        :class:`~.frames.FrameError` (``SIG_INVALID``, ``COMMIT_INVALID``,
        ``COMMIT_REPO_MISMATCH``, ``COMMIT_REV_MISMATCH``); ``ValueError`` for a
        frame without a commit block."""
        self._signed(frame, key)

    def _attempt(self, frame: Frame, entry: _Entry) -> Verdict | None:
        """The verdict with ``entry``'s key; ``None`` when the signature failed and
        a forced refresh was granted (the caller resolves again, then
        :meth:`_final`). Raises for a bad commit."""
        if entry.key is None:
            return self._unresolved(entry)
        try:
            commit = self._signed(frame, entry.key)
        except FrameError as exc:
            assert frame.did is not None
            if exc.rule == "SIG_INVALID":
                aged = time.monotonic() - entry.fetched >= self.refresh_after
                if (entry.suspect or aged) and self._claim(frame.did):
                    return None
                if entry.suspect:
                    self._count("limited")
                    return Verdict(
                        None,
                        "the signature fails with the cached key, which an #identity "
                        "event made suspect; its refresh is rate-limited "
                        f"(one per {self.refresh_interval:g} s)",
                        "KEY_REFRESH_LIMITED",
                    )
            self._count("invalid")
            raise
        return self._settle(frame, commit)

    def _final(self, frame: Frame, entry: _Entry) -> Verdict:
        """The verdict with a freshly resolved ``entry`` (no further refresh)."""
        if entry.key is None:
            return self._unresolved(entry)
        try:
            commit = self._signed(frame, entry.key)
        except FrameError:
            self._count("invalid")
            raise
        return self._settle(frame, commit)

    def _settle(self, frame: Frame, commit: dict[str, Any]) -> Verdict:
        """After a good signature: operation proofs, then the rev."""
        did = frame.did
        assert did is not None
        proven = True
        if frame.kind == "commit":
            try:
                proven = prove_ops(frame)
            except FrameError:
                self._count("invalid")
                raise
        rev: str = commit["rev"]
        sync = frame.kind == "sync"
        ahead = _tid_seconds(rev) - self.clock()
        with self._lock:
            if ahead > self.max_future:
                self.stats["future"] += 1
                return Verdict(
                    None,
                    f"rev {rev} is {ahead:.0f} s ahead of the clock "
                    f"(over {self.max_future:g} s)",
                    "REV_FUTURE",
                )
            last = self._revs.get(did)
            if last is not None:
                last_rev, last_data, last_sync = last
                if rev < last_rev or (
                    rev == last_rev
                    and not sync
                    # a commit after the #sync that announced it
                    and not (last_sync and last_data == frame.commit_data)
                ):
                    self._revs.move_to_end(did)
                    self.stats["stale"] += 1
                    return Verdict(
                        None,
                        f"rev {rev} is not after the last verified rev {last_rev} "
                        f"of {did[:200]} (a replay or reordering)",
                        "REV_STALE",
                    )
            self._revs[did] = (rev, frame.commit_data, sync)
            self._revs.move_to_end(did)
            while len(self._revs) > self.cache_size:
                self._revs.popitem(last=False)
            if not proven:
                self.stats["incomplete"] += 1
                return Verdict(
                    None,
                    "good signature, but the CAR lacks MST nodes that the operation "
                    "proofs need (a PDS before Sync 1.1?)",
                    "PROOF_INCOMPLETE",
                )
            self.stats["verified"] += 1
        return _VERIFIED

    def last_rev(self, did: str) -> tuple[str, str | None] | None:
        """``(rev, data CID)`` of the last good-signature commit or ``#sync`` of
        ``did`` seen, or ``None``."""
        with self._lock:
            last = self._revs.get(did)
        if last is None:
            return None
        return last[0], None if last[1] is None else cid_to_str(last[1])

    def check(self, frame: Frame) -> Verdict:
        """Check ``frame`` (blocking: may resolve the DID over the network). Returns
        a :class:`Verdict`; raises :class:`~.frames.FrameError` for a bad commit
        (rules in the module docstring). Frames of one DID must be checked in
        stream order (the rev state)."""
        early = self._precheck(frame)
        if early is not None:
            return early
        assert frame.did is not None
        entry = self._cached(frame.did) or self._resolve(frame.did)
        verdict = self._attempt(frame, entry)
        if verdict is None:
            verdict = self._final(frame, self._resolve(frame.did, forced=True))
        return verdict

    def verify(self, frame: Frame) -> bool | None:
        """:meth:`check`'s ``verified``: True, ``None``, or raises."""
        return self.check(frame).verified

    # -- event loop -----------------------------------------------------------------
    def _semaphore(self, loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
        if self._lookups is None or self._lookups[0] is not loop:
            self._lookups = (loop, asyncio.Semaphore(self.max_lookups))
        return self._lookups[1]

    async def _resolve_async(self, did: str, forced: bool = False) -> _Entry:
        loop = asyncio.get_running_loop()
        task = self._inflight.get(did)
        if task is None or task.get_loop() is not loop:
            semaphore = self._semaphore(loop)

            async def lookup() -> _Entry:
                async with semaphore:
                    return await asyncio.to_thread(self._resolve, did, forced)

            task = asyncio.ensure_future(lookup())
            self._inflight[did] = task
            task.add_done_callback(lambda _: self._inflight.pop(did, None))
        # A caller cancelled while waiting leaves the lookup running for others.
        return await asyncio.shield(task)

    def start(self, frame: Frame) -> asyncio.Future[Verdict]:
        """Start checking ``frame`` and return at once (call from a running event
        loop): a future of its :class:`Verdict`, or of the
        :class:`~.frames.FrameError` of a bad commit (``await`` re-raises it).

        Use it to pipeline: call ``start`` for each frame as it is decoded, keep
        the futures in a FIFO (bounded by the caller: :attr:`pending` counts the
        unfinished ones), and ``await`` them in stream order. DID resolutions run
        concurrently in worker threads (at most ``max_lookups`` at once, one per
        DID), so one slow PLC lookup does not stall the frames behind it; the
        signature checks and proofs run in the loop. Frames of one DID are
        settled in the order ``start`` was called (each waits for the previous
        one of its DID), which the rev state needs; frames of other DIDs do not
        wait. A frame needing no key (policy, ``tooBig``, a key in the cache)
        gets an already-done future, without a task.

        Cancelling a future cancels its check only (the DID's next frame still
        runs). The future must be awaited (or its exception retrieved)."""
        loop = asyncio.get_running_loop()
        early = self._precheck(frame)
        if early is not None:
            return _done(loop, early)
        did = frame.did
        assert did is not None
        prev = self._lanes.get(did)
        if prev is not None and prev.done():
            prev = None
        if prev is None:
            entry = self._cached(did)
            if entry is not None:
                try:
                    verdict = self._attempt(frame, entry)
                except FrameError as exc:
                    failed: asyncio.Future[Verdict] = loop.create_future()
                    failed.set_exception(exc)
                    return failed
                if verdict is not None:
                    return _done(loop, verdict)
                # a granted forced refresh: resolve again in a task
                task = loop.create_task(self._refresh(frame))
                return self._enlist(did, task)
        return self._enlist(did, loop.create_task(self._run(frame, prev)))

    def _enlist(self, did: str, task: asyncio.Task[Verdict]) -> asyncio.Task[Verdict]:
        self._lanes[did] = task
        self._pending += 1

        def done(_: object) -> None:
            self._pending -= 1
            if self._lanes.get(did) is task:
                del self._lanes[did]

        task.add_done_callback(done)
        return task

    async def _run(self, frame: Frame, prev: asyncio.Future[Verdict] | None) -> Verdict:
        did = frame.did
        assert did is not None
        if prev is not None:
            await asyncio.wait((prev,))  # its outcome is its caller's business
        entry = self._cached(did) or await self._resolve_async(did)
        verdict = self._attempt(frame, entry)
        if verdict is None:
            return await self._refresh(frame)
        return verdict

    async def _refresh(self, frame: Frame) -> Verdict:
        assert frame.did is not None
        entry = await self._resolve_async(frame.did, forced=True)
        return self._final(frame, entry)

    async def acheck(self, frame: Frame) -> Verdict:
        """:meth:`check` for an event loop: ``await self.start(frame)``."""
        return await self.start(frame)

    async def averify(self, frame: Frame) -> bool | None:
        """:meth:`acheck`'s ``verified``."""
        return (await self.acheck(frame)).verified


def _done(loop: asyncio.AbstractEventLoop, verdict: Verdict) -> asyncio.Future[Verdict]:
    future: asyncio.Future[Verdict] = loop.create_future()
    future.set_result(verdict)
    return future
