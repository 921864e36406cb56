"""Emission in worker processes, forked before the heavy imports.

Workers are forked when a build starts, before the parent has imported libcst. Each
worker imports the emitter (≈0.3 s) while the parent loads, parses and links the
sources, then receives the linked model once and emits its share of the modules.
Shares are fixed (module ``i`` goes to worker ``i mod n``) and results are put back
in schema order, so the output never depends on the number of workers.
"""

from __future__ import annotations

import multiprocessing
import traceback
from multiprocessing.connection import Connection
from typing import Any, Self

from ..ir.link import LinkedModel

__all__ = ["EmitPool", "EmitWorkerError"]


class EmitWorkerError(RuntimeError):
    """A worker failed (a compiler bug); carries the worker's traceback."""


def _worker(conn: Connection) -> None:
    from . import emit  # the heavy import, overlapped with the parent's front end

    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        model, rels, indices = job
        try:
            conn.send(("ok", emit.emit_modules(model, rels, indices)))
        except BaseException:  # noqa: BLE001 - report any failure, never hang the parent
            conn.send(("error", traceback.format_exc()))


class EmitPool:
    """``n`` forked emitter processes. Use as a context manager."""

    def __init__(self, n: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self._workers: list[tuple[Any, Connection]] = []
        for _ in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child,), daemon=True)
            proc.start()
            child.close()
            self._workers.append((proc, parent))

    @staticmethod
    def available() -> bool:
        return "fork" in multiprocessing.get_all_start_methods()

    def emit(self, model: LinkedModel, rels: dict[str, str]) -> list[str]:
        """Module sources in ``model.schemas`` order."""
        n = len(self._workers)
        total = len(model.schemas)
        shares = [list(range(k, total, n)) for k in range(n)]
        for (_, conn), share in zip(self._workers, shares, strict=True):
            conn.send((model, rels, share))
        out: list[str] = [""] * total
        for (_, conn), share in zip(self._workers, shares, strict=True):
            status, payload = conn.recv()
            if status != "ok":
                raise EmitWorkerError(payload)
            for index, code in zip(share, payload, strict=True):
                out[index] = code
        return out

    def close(self) -> None:
        for proc, conn in self._workers:
            try:
                conn.send(None)
            except OSError:
                pass
            conn.close()
        for proc, _ in self._workers:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        self._workers = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
