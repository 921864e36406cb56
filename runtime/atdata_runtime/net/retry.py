"""Retries: exponential backoff with full jitter, server hints honoured, total time
bounded.

What is retried: transport failures (connection refused/reset, protocol errors,
timeouts), HTTP 5xx, and 429. For 429 and 503 the server's hint wins when it is
longer than the backoff: ``retry-after`` (seconds or an HTTP-date, RFC 9110
§ 10.2.3) or ``ratelimit-reset`` (Unix time in seconds, IETF draft "RateLimit header
fields for HTTP", as the Bluesky PDS sends it). Everything else (4xx) fails at once.

Backoff is "full jitter" (AWS Architecture Blog, "Exponential Backoff and Jitter"):
attempt *n* sleeps ``uniform(0, min(cap, base * 2**n))`` seconds. The run stops after
``attempts`` tries or when the next sleep would pass ``deadline`` seconds since the
first try, raising :class:`~.errors.RetryExhaustedError` from the last error.

Retrying is only safe for idempotent requests; the callers make writes idempotent
(deterministic record keys, ``createRecord`` + read-back on retry).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx

from .errors import NetworkError as OurNetworkError
from .errors import RetryExhaustedError

__all__ = ["RetryPolicy", "classify"]

log = logging.getLogger("atdata_runtime.atmosphere")

T = TypeVar("T")


def _header(headers: Any, name: str) -> str | None:
    if not headers:
        return None
    for key, value in dict(headers).items():
        if str(key).lower() == name:
            return str(value)
    return None


def _hint(status: int | None, headers: Any) -> float | None:
    """Seconds the server asks us to wait, from ``retry-after`` or
    ``ratelimit-reset``; ``None`` when absent or unparsable."""
    if status not in (429, 503):
        return None
    value = _header(headers, "retry-after")
    if value is not None:
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return max(0.0, (when - datetime.now(UTC)).total_seconds())
    reset = _header(headers, "ratelimit-reset")
    if reset is not None and reset.strip().isdigit():
        return max(0.0, int(reset) - time.time())
    return None


def classify(exc: BaseException) -> tuple[bool, float | None, str]:
    """``(retryable, server_hint_seconds, reason)`` for an exception raised by the
    atproto SDK, httpx or the socket layer."""
    response = getattr(exc, "response", None)
    status: int | None = getattr(response, "status_code", None)
    headers = getattr(response, "headers", None)
    if status is not None:
        if status == 429 or status >= 500:
            return True, _hint(status, headers), f"HTTP {status}"
        return False, None, f"HTTP {status}"
    if isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)):
        return True, None, type(exc).__name__
    if isinstance(exc, OurNetworkError):
        # the runtime's own errors: retryable only when they say so (a refused
        # URL, an exceeded deadline or size cap would fail the same way again)
        return getattr(exc, "retryable", False) is True, None, exc.rule
    try:
        from atproto_client.exceptions import NetworkError
    except ImportError:  # pragma: no cover - atproto is a dependency
        NetworkError = ()  # type: ignore[assignment,misc,unused-ignore]
    if isinstance(exc, NetworkError):
        cause = exc.__cause__
        return True, None, type(cause).__name__ if cause else type(exc).__name__
    return False, None, type(exc).__name__


@dataclass(frozen=True)
class RetryPolicy:
    """How to retry: at most ``attempts`` tries; backoff ``base`` × 2ⁿ seconds capped
    at ``cap``, fully jittered; never sleep past ``deadline`` seconds after the first
    try; server hints are honoured up to ``max_hint`` seconds (a longer hint fails
    the call instead of hanging). ``stats`` counts retries by reason (for reports
    and tests)."""

    attempts: int = 8
    base: float = 0.2
    cap: float = 8.0
    deadline: float = 120.0
    max_hint: float = 60.0
    rng: random.Random = field(default_factory=random.Random, compare=False)
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    stats: Counter[str] = field(default_factory=Counter, compare=False)

    def backoff(self, attempt: int) -> float:
        """Jittered sleep before retry number ``attempt`` (0-based), seconds."""
        return self.rng.uniform(0.0, min(self.cap, self.base * 2**attempt))

    def run(
        self,
        fn: Callable[[], T],
        *,
        what: str,
        on_retry: Callable[[BaseException], None] | None = None,
    ) -> T:
        """Call ``fn`` until it returns, retrying retryable errors. ``what`` names
        the operation (an AT-URI or XRPC method) in logs and errors; ``on_retry`` is
        called with each retried error before sleeping. Raises the error itself when
        it is not retryable, :class:`RetryExhaustedError` when the budget ran out."""
        start = time.monotonic()
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                retryable, hint, reason = classify(exc)
                if not retryable:
                    raise
                wait = self.backoff(attempt)
                if hint is not None:
                    if hint > self.max_hint:
                        raise RetryExhaustedError(
                            what, f"server asks to wait {hint:.0f} s ({reason})"
                        ) from exc
                    wait = max(wait, hint)
                attempt += 1
                elapsed = time.monotonic() - start
                if attempt >= self.attempts or elapsed + wait > self.deadline:
                    raise RetryExhaustedError(
                        what,
                        f"gave up after {attempt} attempts in {elapsed:.1f} s "
                        f"(last: {reason})",
                    ) from exc
                self.stats[reason] += 1
                log.info("%s: %s; retry %d in %.2f s", what, reason, attempt, wait)
                if on_retry is not None:
                    on_retry(exc)
                self.sleep(wait)
