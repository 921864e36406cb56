"""HTTP transport shared by remote shards and the AT Protocol client: the retry
policy (backoff, server hints, total deadline) and the base error type.

- :mod:`.errors`: ``NetworkError`` (pure Python, importable without extras);
- :mod:`.retry`: ``RetryPolicy`` (needs ``httpx``, the ``http`` extra).

Imports nothing else of the runtime.
"""

from .errors import NetworkError, RetryExhaustedError

__all__ = ["NetworkError", "RetryExhaustedError"]
