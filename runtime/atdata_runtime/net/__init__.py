"""HTTP transport shared by remote shards and the AT Protocol client: bounded
requests, the retry policy (backoff, server hints, total deadline), URL redaction
and the base error type.

- :mod:`.errors`: ``NetworkError`` and its kinds (pure Python, importable without
  extras);
- :mod:`.redact`: ``redact_url`` (pure Python): every URL in a message goes
  through it;
- :mod:`.retry`: ``RetryPolicy`` (needs ``httpx``, the ``http`` extra);
- :mod:`.fetch`: ``fetch`` (needs ``httpx``): size caps per kind, one total
  deadline per request, same-origin redirects only, SSRF checks for URLs from the
  network, and the test-only ``ATDATA_RUNTIME_INSECURE_LOOPBACK`` mode.

Imports nothing else of the runtime.
"""

from .errors import (
    DeadlineExceededError,
    HttpStatusError,
    NetworkError,
    RedirectRefusedError,
    ResponseTooLargeError,
    RetryExhaustedError,
    UnsafeUrlError,
)
from .redact import redact_url

__all__ = [
    "DeadlineExceededError",
    "HttpStatusError",
    "NetworkError",
    "RedirectRefusedError",
    "ResponseTooLargeError",
    "RetryExhaustedError",
    "UnsafeUrlError",
    "redact_url",
]
