"""Errors of the HTTP transport, the base of every network error of the runtime.

Each carries a rule ID (``rule``) and, where one exists, the URL or AT-URI it
concerns (``uri``), so that a message always says where and why. None of them ever
contains a password, token, session string or a response body.
"""

from __future__ import annotations

__all__ = ["NetworkError", "RetryExhaustedError"]


class NetworkError(Exception):
    """Base: ``rule`` (stable ID), ``uri`` (AT-URI or URL concerned, may be empty),
    ``reason`` (human text). ``str()`` is ``"<uri>: <reason> [<rule>]"``."""

    rule = "NETWORK_ERROR"

    def __init__(self, uri: str, reason: str, *, rule: str | None = None) -> None:
        self.uri = uri
        self.reason = reason
        if rule is not None:
            self.rule = rule
        super().__init__(
            f"{uri}: {reason} [{self.rule}]" if uri else f"{reason} [{self.rule}]"
        )


class RetryExhaustedError(NetworkError):
    """A request kept failing with retryable errors until the retry budget (attempts
    or total time) ran out; ``__cause__`` is the last error."""

    rule = "RETRY_EXHAUSTED"
