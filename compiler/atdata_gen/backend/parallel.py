"""Emission in worker processes, forked before the heavy imports.

One worker is forked when a build starts, before the parent has imported libcst. It
imports the emitter (≈0.3 s) while the parent loads, parses and links the sources,
and then forks the other workers from itself, so libcst is imported once, not once
per worker (on a 2-core machine the imports would otherwise compete with the
parent's front end for the cores). The parent pickles the linked model once and
sends the same bytes to every worker; each emits its share of the modules. Shares
are fixed (module ``i`` goes to worker ``i mod n``) and results are put back in
schema order, so the output never depends on the number of workers.

Every worker closes the pipe ends it does not use, so a worker whose parent died
sees end-of-file and exits.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import traceback
from multiprocessing.connection import Connection
from typing import Any, Self

from ..ir.link import LinkedModel

__all__ = ["EmitPool", "EmitWorkerError"]


class EmitWorkerError(RuntimeError):
    """A worker failed (a compiler bug); carries the worker's traceback."""


def _serve(conn: Connection) -> None:
    """Answer jobs on ``conn`` until ``None`` or end-of-file."""
    from . import emit

    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not data:
            return
        try:
            share = conn.recv()
            model, rels = pickle.loads(data)
            codes = emit.emit_modules(model, rels, share)
            conn.send(("ok", codes))
        except BaseException:  # noqa: BLE001 - report any failure, never hang the parent
            try:
                conn.send(("error", traceback.format_exc()))
            except OSError:
                return


def _zygote(mine: list[Connection], theirs: list[Connection]) -> None:
    """Worker 0: import the emitter, fork workers 1…n-1 from this process (libcst
    already imported), then serve pipe 0."""
    for c in theirs:
        c.close()
    from . import emit  # noqa: F401 - the heavy import, overlapped with the front end

    children = []
    for k in range(1, len(mine)):
        pid = os.fork()
        if pid == 0:  # worker k
            code = 0
            try:
                for j, c in enumerate(mine):
                    if j != k:
                        c.close()
                _serve(mine[k])
            except BaseException:  # noqa: BLE001 - never return into the parent's code
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    for c in mine[1:]:
        c.close()
    try:
        _serve(mine[0])
    finally:
        mine[0].close()
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


class EmitPool:
    """``n`` forked emitter processes. Use as a context manager."""

    def __init__(self, n: int) -> None:
        ctx = multiprocessing.get_context("fork")
        pipes = [ctx.Pipe() for _ in range(max(n, 1))]
        self._conns: list[Connection] = [p for p, _ in pipes]
        children = [c for _, c in pipes]
        self._proc: Any = ctx.Process(
            target=_zygote, args=(children, self._conns), daemon=True
        )
        self._proc.start()
        for c in children:
            c.close()

    @staticmethod
    def available() -> bool:
        return "fork" in multiprocessing.get_all_start_methods()

    def emit(self, model: LinkedModel, rels: dict[str, str]) -> list[str]:
        """Module sources in ``model.schemas`` order. Raises
        :class:`EmitWorkerError` when a worker fails or dies."""
        n = len(self._conns)
        total = len(model.schemas)
        shares = [list(range(k, total, n)) for k in range(n)]
        # One pickle of the model for every worker; then each worker's share.
        data = pickle.dumps((model, rels), protocol=pickle.HIGHEST_PROTOCOL)
        for conn, share in zip(self._conns, shares, strict=True):
            try:
                conn.send_bytes(data)
                conn.send(share)
            except OSError as exc:
                raise EmitWorkerError(f"an emitter process died: {exc!r}") from exc
        out: list[str] = [""] * total
        for conn, share in zip(self._conns, shares, strict=True):
            try:
                status, payload = conn.recv()
            except (EOFError, OSError) as exc:
                raise EmitWorkerError(f"an emitter process died: {exc!r}") from exc
            if status != "ok":
                raise EmitWorkerError(payload)
            for index, code in zip(share, payload, strict=True):
                out[index] = code
        return out

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send_bytes(b"")
            except OSError:
                pass
            conn.close()
        self._conns = []
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
