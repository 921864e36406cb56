"""Serve a local directory over HTTP on loopback (the standard library's
``ThreadingHTTPServer``): shard URLs for ``storageHttp`` entries in tests and
benchmarks, where the public internet is out of reach."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_directory(directory: str | Path) -> Iterator[str]:
    """Serve ``directory`` read-only at ``http://127.0.0.1:{free port}`` until the
    ``with`` block ends; yields that base URL (no trailing slash)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
