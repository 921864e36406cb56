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
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

__all__ = ["RateLimiter", "TokenBucket", "retry_after_header"]

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

    def check(self, key: str, rate: float, burst: int) -> float:
        """Take one request from ``key``'s bucket: ``0.0`` when allowed, else the
        seconds to wait. A changed ``rate``/``burst`` (the row was edited) applies
        at once, keeping the current fill (capped at the new burst)."""
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
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after_header(wait: float) -> str:
    """``Retry-After`` value for a wait of ``wait`` seconds: an integer, rounded up,
    at least 1 (RFC 9110 §10.2.3 delay-seconds)."""
    return str(max(1, math.ceil(wait)))
