"""Per-token rate limiting of the consumer API: a token bucket per token (seed 002
§10 "rate limiting per token").

Each token's bucket holds up to ``burst`` requests and refills at
``rate_per_second`` (both from its ``ingest_tokens`` row). A request takes one; an
empty bucket answers how long until one is back, which the API sends as
``Retry-After`` (integer seconds, rounded up, at least 1) with a 429
``RateLimitExceeded``. Buckets live in the API process (one uvicorn worker by
design): a second worker would double every limit. At most ``max_keys`` buckets are
kept; the least recently used is forgotten first (it comes back full, which only
favours a token that has been idle longest).

Failed authentications are throttled too (:class:`AuthThrottle`): each costs a
token lookup in PostgreSQL and a SHA-256, so an unauthenticated client must not
be able to spend them without limit. A bucket per client address and one for the
whole process count failures; a request that presents a token while its
address's bucket, or the global one, is empty is answered 429 before any lookup.
Addresses that authenticated successfully within ``trust_seconds`` skip the
global bucket (only their own applies), so a distributed spray of bad tokens
sheds unknown clients, not the consumers already at work.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

__all__ = ["AuthThrottle", "RateLimiter", "TokenBucket", "retry_after_header"]

_DEFAULT_MAX_KEYS: Final = 10_000


class TokenBucket:
    """``burst`` tokens, refilled continuously at ``rate`` per second (``rate`` > 0,
    ``burst`` >= 1); starts full at time ``now`` (seconds, monotonic)."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if not rate > 0 or burst < 1:
            raise ValueError(f"rate {rate!r} must be > 0 and burst {burst!r} >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens at time ``now``: ``0.0`` when granted, else the
        seconds until ``cost`` tokens will be available (nothing is taken)."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate

    def wait(self, now: float, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens are available at time ``now`` (``0.0``:
        now); nothing is taken."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return 0.0 if self.tokens >= cost else (cost - self.tokens) / self.rate

    def drain(self, now: float, cost: float = 1.0) -> None:
        """Take ``cost`` tokens at time ``now`` even when fewer are left (the
        bucket goes no lower than empty)."""
        self.wait(now)
        self.tokens = max(0.0, self.tokens - cost)


class RateLimiter:
    """Buckets by key (the token id). ``clock`` returns seconds (monotonic)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = _DEFAULT_MAX_KEYS,
    ) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def check(self, key: str, rate: float, burst: int, cost: float = 1.0) -> float:
        """Take one request (``cost`` tokens, at most ``burst``: a request dearer
        than the whole bucket costs the whole bucket) from ``key``'s bucket:
        ``0.0`` when allowed, else the seconds to wait. A changed ``rate``/
        ``burst`` (the row was edited) applies at once, keeping the current fill
        (capped at the new burst)."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(rate, burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            if bucket.rate != float(rate) or bucket.burst != float(burst):
                bucket.take(now, 0.0)  # settle the refill at the old rate
                bucket.rate = float(rate)
                bucket.burst = float(burst)
                bucket.tokens = min(bucket.tokens, bucket.burst)
        return bucket.take(now, min(float(cost), bucket.burst))

    def __len__(self) -> int:
        return len(self._buckets)


class AuthThrottle:
    """Buckets of failed authentications: one per client address (``per_ip_rate``
    failures/s refilled, ``per_ip_burst`` deep) and one for the process
    (``global_rate``, ``global_burst``). At most ``max_keys`` addresses are kept
    per table (least recently used forgotten first); ``clock`` returns seconds
    (monotonic).

    Use: :meth:`check` before a lookup (``0.0``: go on; else the seconds to
    send as ``Retry-After``), then :meth:`failed` or :meth:`succeeded`."""

    def __init__(
        self,
        *,
        per_ip_rate: float = 1.0,
        per_ip_burst: int = 20,
        global_rate: float = 50.0,
        global_burst: int = 200,
        trust_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = _DEFAULT_MAX_KEYS,
    ) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._ip_rate = float(per_ip_rate)
        self._ip_burst = per_ip_burst
        self._trust_seconds = trust_seconds
        TokenBucket(per_ip_rate, per_ip_burst, 0.0)  # checks the arguments
        self._global = TokenBucket(global_rate, global_burst, clock())
        self._ips: OrderedDict[str, TokenBucket] = OrderedDict()
        self._trusted: OrderedDict[str, float] = OrderedDict()
        #: failures counted, and requests refused by the throttle
        self.failures = 0
        self.refused = 0

    def _trusted_now(self, ip: str, now: float) -> bool:
        at = self._trusted.get(ip)
        return at is not None and now - at <= self._trust_seconds

    def check(self, ip: str) -> float:
        """``0.0`` when ``ip`` may try to authenticate now, else the seconds until
        it may (its own bucket, then the global one unless ``ip`` is trusted)."""
        now = self._clock()
        bucket = self._ips.get(ip)
        wait = bucket.wait(now) if bucket is not None else 0.0
        if wait == 0.0 and not self._trusted_now(ip, now):
            wait = self._global.wait(now)
        if wait > 0:
            self.refused += 1
        return wait

    def failed(self, ip: str) -> None:
        """Count one failed authentication from ``ip`` (in its bucket and the
        global one)."""
        now = self._clock()
        self.failures += 1
        bucket = self._ips.get(ip)
        if bucket is None:
            bucket = TokenBucket(self._ip_rate, self._ip_burst, now)
            self._ips[ip] = bucket
            if len(self._ips) > self._max_keys:
                self._ips.popitem(last=False)
        else:
            self._ips.move_to_end(ip)
        bucket.drain(now)
        self._global.drain(now)

    def succeeded(self, ip: str) -> None:
        """Record that ``ip`` presented a live token: it skips the global bucket
        for ``trust_seconds``."""
        self._trusted[ip] = self._clock()
        self._trusted.move_to_end(ip)
        if len(self._trusted) > self._max_keys:
            self._trusted.popitem(last=False)


def retry_after_header(wait: float) -> str:
    """``Retry-After`` value for a wait of ``wait`` seconds: an integer, rounded up,
    at least 1 (RFC 9110 §10.2.3 delay-seconds)."""
    return str(max(1, math.ceil(wait)))
