"""Handle verification: the handle each account really has, checked on the network.

An ``#identity`` event (or a backfill) only says which handle an account
*claims*; the indexer stores the claim in ``appview_accounts.handle`` unchecked,
and any PDS can emit any handle for its accounts. The AT Protocol "Handle" spec
(§ Handle Resolution) makes a handle valid for a DID only when both directions
agree:

1. handle → DID: by a configured ``handle_service``
   (``com.atproto.identity.resolveHandle`` on a trusted service, e.g. a PDS or an
   AppView that does the DNS ``_atproto`` TXT lookup), else by the HTTPS method
   (``https://<handle>/.well-known/atproto-did``: a URL from the network, so
   ``https`` only, never a loopback/private host, body at most 8 KiB);
2. DID → DID document (``plc_url`` for did:plc, ``https://<host>/.well-known/
   did.json`` for did:web, at most 64 KiB), whose ``alsoKnownAs`` must list
   ``at://<handle>``.

Both are done by the runtime's :class:`~atdata_runtime.atmosphere.identity.
IdentityResolver` (its bounds: ``timeout`` seconds per request, retries within a
deadline, no caching here). DNS TXT is not queried directly (no DNS client in the
dependencies): a handle published only in DNS verifies through a
``handle_service`` that does it.

:func:`verify_handles` writes the outcome to ``appview_accounts.verified_handle``,
the only handle queries resolve (``repo=alice.test``) and show:

* the handle checked is ``coalesce(handle, verified_handle)``: the claim, or, when
  the events cleared it (the indexer clears the claim of an account when another
  one claims the same handle), the handle verified before. A rival's claim never
  unverifies a handle; only the network does.
* work: every account whose handle to check differs from ``handle_checked`` (the
  one last checked), then re-checks: :data:`RECHECK_SECONDS` (24 h) after a
  success, :data:`RETRY_SECONDS` (10 min) after a failure, oldest first.
* verified (the handle resolves to this DID and its document lists the handle):
  ``verified_handle`` is set, and cleared from every other account in the same
  statement (a handle names one DID at a time). When the handle resolves to
  another account than the claimant's, and that account claims it or nothing
  (its claim was cleared by a rival's), that account gets it (``adopted``).
* refuted (it resolves to another DID; or it resolves to nothing, an error, or a
  document that does not list it, for a handle not verified before; or it is no
  valid handle): ``verified_handle`` is NULL.
* inconclusive: a handle verified before that now resolves to nothing (a
  timeout, the handle's host or the PLC directory down) while the account's own
  DID document still lists it (or cannot be read) stays verified and is
  re-checked after :data:`RETRY_SECONDS`. It goes when the handle resolves to
  another DID or the document stops listing it (so it can outlive its domain
  only until someone else verifies the handle).

Accounts in a batch sharing one handle are resolved once: at most the DID the
handle resolves to is verified. Lookups run in threads, at most ``concurrency``
at once, each abandoned after ``timeout`` seconds (the resolver's own deadline
ends its thread).

:func:`run_handle_verifier` loops :func:`verify_handles` until a stop event
(``atdata-appview index`` and ``run`` start it next to the indexer).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import asyncpg
from atdata_runtime.atmosphere.identity import IdentityResolver
from atdata_runtime.lex.formats import is_handle
from atdata_runtime.net.errors import NetworkError
from atdata_runtime.net.redact import redact_url
from atdata_runtime.net.retry import RetryPolicy

if TYPE_CHECKING:
    from .config import Settings

__all__ = [
    "RECHECK_SECONDS",
    "RETRY_SECONDS",
    "VerifyStats",
    "handle_counts",
    "log_reasons",
    "make_resolver",
    "recheck_handles",
    "run_handle_verifier",
    "verify_handles",
]

log = logging.getLogger("atdata_appview.handles")

RECHECK_SECONDS: Final = 24 * 3600.0
"""A verified handle is checked again this long after its last check (seconds)."""

RETRY_SECONDS: Final = 600.0
"""A handle that failed (or whose re-check was inconclusive) is checked again this
long after (seconds)."""

LOOKUP_TIMEOUT_SECONDS: Final = 10.0
"""The resolver's budget per request (handle service, well-known, DID document)."""

IDLE_SECONDS: Final = 5.0
""":func:`run_handle_verifier`'s pause when a round found less than a batch."""

_TRANSIENT_DB: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.TransactionRollbackError,
    asyncpg.InsufficientResourcesError,
    asyncpg.OperatorInterventionError,
)

# Accounts to check: changed candidates first (a partial index holds them), then
# the re-checks due, oldest first. $1 batch, $2 the smaller interval, $3 RETRY,
# $4 RECHECK (seconds).
_WORK_SQL: Final = """
SELECT did, handle, verified_handle FROM (
    (SELECT did, handle, verified_handle, 0 AS pri, NULL::timestamptz AS at
     FROM appview_accounts
     WHERE coalesce(handle, verified_handle) IS DISTINCT FROM handle_checked
     LIMIT $1)
    UNION ALL
    (SELECT did, handle, verified_handle, 1, handle_checked_at
     FROM appview_accounts
     WHERE handle_checked IS NOT NULL
       AND coalesce(handle, verified_handle) IS NOT DISTINCT FROM handle_checked
       AND handle_checked_at < now() - make_interval(secs => $2::float8)
       AND handle_checked_at < now() - make_interval(secs => CASE
           WHEN verified_handle IS NULL THEN $3::float8 ELSE $4::float8 END)
     ORDER BY handle_checked_at
     LIMIT $1)
) w
ORDER BY pri, at NULLS FIRST
LIMIT $1
"""

# One batch of outcomes. $1 DIDs, $2 the handles checked, $3 the verified handles
# (NULL: none), $4 the age to record, seconds (0: checked now; RECHECK - RETRY for
# a kept handle, so it is due again after RETRY), $5 adopt (the DID the handle
# resolved to, not a claimant: only if it claims that handle or none). Other
# accounts lose a handle verified here, in the same statement.
_WRITE_SQL: Final = """
WITH d AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[],
        $5::boolean[]) AS d(did, checked, verified, age, adopt)
), cleared AS (
    UPDATE appview_accounts a SET verified_handle = NULL
    WHERE a.verified_handle IN (SELECT verified FROM d WHERE verified IS NOT NULL)
      AND a.did NOT IN (SELECT did FROM d)
    RETURNING a.did
), done AS (
    UPDATE appview_accounts a SET
        verified_handle = d.verified,
        handle_checked = d.checked,
        handle_checked_at = now() - make_interval(secs => d.age)
    FROM d
    WHERE a.did = d.did
      AND (NOT d.adopt OR a.handle IS NULL OR a.handle = d.checked)
    RETURNING d.adopt
)
SELECT (SELECT count(*) FROM cleared) AS cleared,
    (SELECT count(*) FROM done WHERE adopt) AS adopted
"""


@dataclass
class VerifyStats:
    """What one :func:`verify_handles` round did: ``checked`` accounts (of which
    ``verified``, ``refuted``, ``inconclusive``: kept, and ``unset``: no handle to
    check), ``lookups`` (distinct handles resolved), ``adopted`` (accounts given
    back a handle the network says is theirs), ``cleared`` (other accounts that
    lost a handle verified here) and ``reasons`` (DID → why a check failed, the
    resolver's message, logged at DEBUG)."""

    checked: int = 0
    verified: int = 0
    refuted: int = 0
    inconclusive: int = 0
    unset: int = 0
    lookups: int = 0
    adopted: int = 0
    cleared: int = 0
    reasons: dict[str, str] = dataclasses.field(default_factory=dict)

    def add(self, other: VerifyStats) -> None:
        for f in ("checked", "verified", "refuted", "inconclusive", "unset"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.lookups += other.lookups
        self.adopted += other.adopted
        self.cleared += other.cleared
        self.reasons.update(other.reasons)


def make_resolver(
    plc_url: str = "https://plc.directory",
    handle_service: str | None = None,
    *,
    timeout: float = LOOKUP_TIMEOUT_SECONDS,
) -> IdentityResolver:
    """The resolver :func:`verify_handles` uses: nothing cached (``ttl`` 0: a
    check asks the network), ``timeout`` seconds per request, two attempts within
    ``2 * timeout``."""
    return IdentityResolver(
        plc_url=plc_url,
        handle_service=handle_service or None,
        ttl=0.0,
        timeout=timeout,
        retry=RetryPolicy(attempts=2, deadline=2 * timeout),
    )


def _lookup(resolver: IdentityResolver, handle: str) -> tuple[str | None, str]:
    """``(did, why)``: the DID ``handle`` resolves to, checked both ways by the
    resolver, or ``None`` and why not (any failure: no answer, an error, a
    document that does not list the handle)."""
    try:
        return resolver.resolve_handle(handle), ""
    except NetworkError as exc:  # IdentityError and the transport's errors
        return None, str(exc)


def _still_listed(resolver: IdentityResolver, did: str, handle: str) -> bool | None:
    """Whether ``did``'s own DID document still lists ``handle`` in
    ``alsoKnownAs`` (``None``: the document could not be read)."""
    try:
        listed = resolver.did_document(did).handles
    except NetworkError:
        return None
    return handle in (h.lower() for h in listed)


@dataclass
class _Row:
    did: str
    checked: str | None
    verified: str | None
    age: float = 0.0
    adopt: bool = False


async def verify_handles(
    pool: Any,
    resolver: IdentityResolver,
    *,
    batch: int = 100,
    concurrency: int = 8,
    timeout: float | None = None,
    recheck_seconds: float = RECHECK_SECONDS,
    retry_seconds: float = RETRY_SECONDS,
    executor: concurrent.futures.Executor | None = None,
) -> VerifyStats:
    """Check at most ``batch`` accounts' handles (module doc) and write the
    outcomes in one statement. ``pool``: an asyncpg pool (or anything with
    ``acquire()``) of the AppView's database. ``resolver``: see
    :func:`make_resolver`. ``concurrency``: lookups at once; ``timeout``: seconds
    after which a lookup is abandoned as unanswered (default four times the
    resolver's per-request timeout, retries included, plus 1). ``executor``: the
    threads lookups run in (default: the loop's). ``recheck_seconds`` /
    ``retry_seconds``: see :data:`RECHECK_SECONDS`, :data:`RETRY_SECONDS`.
    Raises the database's errors; network failures are outcomes, never raised."""
    budget = timeout if timeout is not None else 4 * resolver.timeout + 1.0
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            _WORK_SQL,
            batch,
            min(retry_seconds, recheck_seconds),
            retry_seconds,
            recheck_seconds,
        )
    stats = VerifyStats()
    if not rows:
        return stats
    wanted: dict[str, list[asyncpg.Record]] = {}
    out: list[_Row] = []
    for r in rows:
        candidate = r["handle"] or r["verified_handle"]
        if candidate is None:
            out.append(_Row(r["did"], None, None))
            stats.unset += 1
        else:
            wanted.setdefault(candidate, []).append(r)
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(max(1, concurrency))

    async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
        async with gate:
            return await asyncio.wait_for(
                loop.run_in_executor(executor, fn, resolver, *args), budget
            )

    async def one(handle: str) -> tuple[str, tuple[str | None, str]]:
        if len(handle) > 253 or not is_handle(handle):
            return handle, (None, "not a valid handle")
        try:
            found: tuple[str | None, str] = await in_thread(_lookup, handle)
        except TimeoutError:
            found = (None, f"no answer within {budget:g} s")
        return handle, found

    async def listed(did: str, handle: str) -> bool | None:
        try:
            still: bool | None = await in_thread(_still_listed, did, handle)
        except TimeoutError:
            still = None
        return still

    results = dict(await asyncio.gather(*(one(h) for h in wanted)))
    stats.lookups = len(results)
    # a handle verified before that now resolves to nothing: dropped only when
    # the account's own document no longer lists it, else kept and retried soon
    unanswered = [
        (r["did"], h)
        for h, accounts in wanted.items()
        for r in accounts
        if results[h][0] is None and r["verified_handle"] == h
    ]
    still = dict(
        zip(
            unanswered,
            await asyncio.gather(*(listed(d, h) for d, h in unanswered)),
            strict=True,
        )
    )
    keep_age = max(0.0, recheck_seconds - retry_seconds)
    claimants = {r["did"] for r in rows}
    for handle, accounts in wanted.items():
        did, why = results[handle]
        for r in accounts:
            if did == r["did"]:
                out.append(_Row(r["did"], handle, handle))
                stats.verified += 1
                continue
            key = (r["did"], handle)
            if did is None and key in still and still[key] is not False:
                out.append(_Row(r["did"], handle, handle, age=keep_age))
                stats.inconclusive += 1
                stats.reasons[r["did"]] = f"{handle}: {why} (kept: verified before)"
                continue
            out.append(_Row(r["did"], handle, None))
            stats.refuted += 1
            stats.reasons[r["did"]] = (
                f"{handle}: {why}" if did is None else f"{handle} resolves to {did}"
            )
        if did is not None and did not in claimants:
            # the network names the handle's owner: an account whose claim the
            # events cleared (a rival claimed it since) gets it back
            out.append(_Row(did, handle, handle, adopt=True))
    stats.checked = len(rows)
    async with pool.acquire() as conn:
        done = await conn.fetchrow(
            _WRITE_SQL,
            [o.did for o in out],
            [o.checked for o in out],
            [o.verified for o in out],
            [o.age for o in out],
            [o.adopt for o in out],
        )
    stats.cleared = int(done["cleared"])
    stats.adopted = int(done["adopted"])
    return stats


async def run_handle_verifier(
    pool: Any,
    settings: Settings,
    stop: asyncio.Event,
    *,
    resolver: IdentityResolver | None = None,
    batch: int = 100,
    concurrency: int = 8,
    idle_seconds: float = IDLE_SECONDS,
    on_round: Callable[[VerifyStats], None] | None = None,
) -> None:
    """Run :func:`verify_handles` until ``stop`` is set: a round after another
    while rounds find a full batch, else every ``idle_seconds``. ``resolver``
    defaults to :func:`make_resolver` of ``settings.plc_url`` and
    ``settings.handle_service``. Transient database errors are logged (a WARNING
    at most once a minute) and retried with a backoff up to 30 s; other errors
    propagate. Each round with work is logged at INFO, with the reason of each
    account not verified (:func:`log_reasons`). ``on_round`` (tests) sees each round's stats. Lookups run in this
    function's own ``concurrency`` threads."""
    resolver = resolver or make_resolver(settings.plc_url, settings.handle_service)
    backoff = 0.0
    warned = 0.0
    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, concurrency), thread_name_prefix="appview-handles"
    )
    try:
        while not stop.is_set():
            try:
                stats = await verify_handles(
                    pool,
                    resolver,
                    batch=batch,
                    concurrency=concurrency,
                    executor=executor,
                )
            except _TRANSIENT_DB as exc:
                now = time.monotonic()
                if now - warned >= 60:
                    log.warning("handles: database unavailable (%s); retrying", exc)
                    warned = now
                backoff = min(max(backoff * 2, 0.5), 30.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                continue
            backoff = 0.0
            log_reasons(stats)
            if stats.checked:
                log.info(
                    "handles: %d checked, %d verified, %d refuted, %d inconclusive",
                    stats.checked, stats.verified, stats.refuted, stats.inconclusive,
                )  # fmt: skip
            if on_round is not None:
                on_round(stats)
            if stats.checked >= batch:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), idle_seconds)
    finally:
        # lookups in flight end on the resolver's own deadline; nobody waits
        executor.shutdown(wait=False, cancel_futures=True)


MAX_REASONS_LOGGED: Final = 20
"""Accounts whose reason :func:`log_reasons` logs per round at most."""
MAX_REASON_CHARS: Final = 300
"""Characters of one logged reason at most."""

_URLISH: Final = re.compile(r"https?://[^\s'\"<>]+")


def _shown_reason(why: str) -> str:
    """``why`` fit for a log line: URLs redacted (no credentials or secret query
    parameters), control characters escaped, at most :data:`MAX_REASON_CHARS`."""
    text = _URLISH.sub(lambda m: redact_url(m.group(0)), why)
    text = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 1] + "\u2026"
    return text


def log_reasons(stats: VerifyStats) -> None:
    """Log at INFO why each account of ``stats`` was not verified (refuted or
    inconclusive: ``"<handle>: <the resolver's reason>"``, redacted and bounded;
    at most :data:`MAX_REASONS_LOGGED` accounts, then how many more), so an
    operator sees e.g. a handle service or PLC directory that does not answer."""
    items = list(stats.reasons.items())
    for did, why in items[:MAX_REASONS_LOGGED]:
        log.info("handles: %s not verified: %s", did[:200], _shown_reason(why))
    if len(items) > MAX_REASONS_LOGGED:
        log.info(
            "handles: %d more accounts not verified",
            len(items) - MAX_REASONS_LOGGED,
        )


_COUNTS_SQL: Final = """
SELECT
    count(*) FILTER (WHERE c IS NOT NULL AND c IS DISTINCT FROM handle_checked)
        AS pending,
    count(*) FILTER (WHERE c IS NOT DISTINCT FROM handle_checked
                       AND verified_handle IS NOT NULL) AS verified,
    count(*) FILTER (WHERE c IS NOT NULL AND c IS NOT DISTINCT FROM handle_checked
                       AND verified_handle IS NULL) AS refuted,
    count(*) FILTER (WHERE c IS NULL) AS none
FROM (SELECT coalesce(handle, verified_handle) AS c, handle_checked,
             verified_handle FROM appview_accounts) a
"""


async def handle_counts(conn: Any) -> dict[str, int]:
    """Accounts by handle verification state (each in one): ``verified`` (the
    handle checked is verified), ``refuted`` (checked, not verified; retried
    after :data:`RETRY_SECONDS`), ``pending`` (a claim not checked yet), ``none``
    (no handle to check). ``conn``: an asyncpg connection."""
    row = await conn.fetchrow(_COUNTS_SQL)
    return {k: int(row[k]) for k in ("verified", "refuted", "pending", "none")}


_RECHECK_SQL: Final = """
UPDATE appview_accounts SET handle_checked = NULL
WHERE coalesce(handle, verified_handle) IS NOT NULL
  AND ($1::bool OR verified_handle IS NULL)
"""


async def recheck_handles(
    pool: Any,
    resolver: IdentityResolver,
    *,
    everyone: bool = False,
    batch: int = 100,
    concurrency: int = 8,
    max_rounds: int = 10_000,
) -> VerifyStats:
    """Check now, ignoring the re-check intervals, every account whose handle is
    not verified (``everyone``: every account with a handle), then return the
    summed stats of the :func:`verify_handles` rounds that did it (at most
    ``max_rounds``; the reasons are logged by :func:`log_reasons`). The accounts
    are marked unchecked first (``handle_checked`` NULL: the verifier's work
    query takes them first). For ``atdata-appview verify-handles``: an account
    that fixed its handle or DID document heals at once. Raises the database's
    errors."""
    async with pool.acquire() as conn:
        await conn.execute(_RECHECK_SQL, everyone)
    total = VerifyStats()
    for _ in range(max_rounds):
        stats = await verify_handles(
            pool, resolver, batch=batch, concurrency=concurrency
        )
        log_reasons(stats)
        if not stats.checked:
            break
        total.add(stats)
    return total
