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

import dataclasses
import gc
import io
import multiprocessing
import operator
import os
import pickle
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Self

from ..ir.link import LinkedModel
from .format import FormatError

__all__ = ["EmitPool", "EmitWorkerError", "prestart", "take_prestarted"]


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
        # The cyclic collector finds nothing in a job (the model and the trees are
        # freed by reference counting) but would walk them again and again.
        gc.disable()
        try:
            share, fmt, workdir = conn.recv()
            model, rels = pickle.loads(data)
            with emit.unvalidated():  # this process is single-threaded
                if fmt:
                    codes = _emit_and_format(
                        emit.emit_modules, model, rels, share, workdir
                    )
                else:
                    codes = emit.emit_modules(model, rels, share)
            conn.send(("ok", codes))
        except FormatError as exc:
            conn.send(("format", str(exc)))
        except OSError as exc:  # the formatter's scratch files
            conn.send(("oserror", (exc.errno, exc.strerror, exc.filename)))
        except BaseException:  # noqa: BLE001 - report any failure, never hang the parent
            try:
                conn.send(("error", traceback.format_exc()))
            except OSError:
                return
        finally:
            gc.enable()


def _emit_and_format(
    emit_modules: Callable[[LinkedModel, dict[str, str], list[int]], list[str]],
    model: LinkedModel,
    rels: dict[str, str],
    share: list[int],
    workdir: Path | None,
) -> list[str]:
    """Emit ``share`` and format it with ruff, pipelined: ruff formats the first
    three quarters while the last quarter is emitted, so only a short ruff run is
    left when emission ends."""
    from .format import FormatRun, start_format

    cut = (len(share) * 3 + 3) // 4
    runs: list[tuple[list[str], FormatRun]] = []
    try:
        for part in (share[:cut], share[cut:]):
            if not part:
                continue
            codes = emit_modules(model, rels, part)
            names = [f"m{i}.py" for i in part]
            runs.append(
                (names, start_format(dict(zip(names, codes, strict=True)), workdir))
            )
        out: list[str] = []
        while runs:
            names, run = runs[0]
            done = run.result()
            runs.pop(0)
            out.extend(done[n] for n in names)
        return out
    finally:
        for _, run in runs:
            run.close()


def _zygote(mine: list[Connection], theirs: list[Connection]) -> None:
    """Worker 0: import the emitter, fork workers 1…n-1 from this process (libcst
    already imported), then serve pipe 0."""
    for c in theirs:
        c.close()
    gc.disable()  # an import makes no garbage: collecting during it is wasted (~15%)
    from . import emit  # noqa: F401 - the heavy import, overlapped with the front end

    gc.freeze()  # the imported modules: never scanned again, and shared pages stay shared
    gc.enable()

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
        self._shares: list[list[int]] = []
        self._total = 0
        children = [c for _, c in pipes]
        self._proc: Any = ctx.Process(
            target=_zygote, args=(children, self._conns), daemon=True
        )
        self._proc.start()
        for c in children:
            c.close()

    def __len__(self) -> int:
        return len(self._conns)

    @staticmethod
    def available() -> bool:
        return "fork" in multiprocessing.get_all_start_methods()

    def emit(
        self,
        model: LinkedModel,
        rels: dict[str, str],
        fmt: bool = False,
        workdir: Path | None = None,
    ) -> list[str]:
        """Module sources in ``model.schemas`` order (with ``fmt``: formatted by
        ruff, each worker formatting its share with scratch files under
        ``workdir``, as :func:`~.format.format_sources`). Raises
        :class:`EmitWorkerError` when a worker fails or dies, and, with ``fmt``,
        :class:`~.format.FormatError` or ``OSError`` as ``format_sources``."""
        self.submit(model, rels, fmt, workdir)
        return self.collect()

    def submit(
        self,
        model: LinkedModel,
        rels: dict[str, str],
        fmt: bool = False,
        workdir: Path | None = None,
    ) -> None:
        """Start :meth:`emit` without waiting; :meth:`collect` gets the result."""
        n = len(self._conns)
        total = len(model.schemas)
        self._shares = [list(range(k, total, n)) for k in range(n)]
        # One pickle of the model for every worker; then each worker's share.
        data = _dumps((model, rels))
        for conn, share in zip(self._conns, self._shares, strict=True):
            try:
                conn.send_bytes(data)
                conn.send((share, fmt, workdir))
            except OSError as exc:
                raise EmitWorkerError(f"an emitter process died: {exc!r}") from exc
        self._total = total

    def collect(self) -> list[str]:
        """The result of the last :meth:`submit` (raises as :meth:`emit`)."""
        out: list[str] = [""] * self._total
        failure: BaseException | None = None
        for conn, share in zip(self._conns, self._shares, strict=True):
            try:
                status, payload = conn.recv()
            except (EOFError, OSError) as exc:
                raise EmitWorkerError(f"an emitter process died: {exc!r}") from exc
            if status == "ok":
                for index, code in zip(share, payload, strict=True):
                    out[index] = code
            elif failure is None:  # read every answer, then raise the first failure
                failure = _failure(status, payload)
        if failure is not None:
            raise failure
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


def _failure(status: str, payload: Any) -> BaseException:
    if status == "format":
        return FormatError(payload)
    if status == "oserror":
        errno, strerror, filename = payload
        return OSError(errno, strerror, filename)
    return EmitWorkerError(payload)


_PRESTARTED: list[EmitPool] = []


def prestart(n: int) -> None:
    """Fork an ``n``-worker pool now, for a build that is about to start: the CLI
    calls this as soon as it knows it will build (before its own checks), so that
    libcst's import overlaps with more of the parent's work. The next
    :func:`take_prestarted` hands it over; one that is never taken is stopped at
    interpreter exit (its workers are daemonic). No-op without ``fork``."""
    if n > 1 and not _PRESTARTED and EmitPool.available():
        _PRESTARTED.append(EmitPool(n))


def take_prestarted(n: int) -> EmitPool | None:
    """The pool :func:`prestart` forked, if it has ``n`` workers; any other
    prestarted pool is closed. The caller owns (and closes) the pool."""
    while _PRESTARTED:
        pool = _PRESTARTED.pop()
        if len(pool) == n:
            return pool
        pool.close()
    return None


_Reducer = Callable[[Any], Any]
_REDUCERS: dict[type, _Reducer] = {}


def _no_reducer(obj: Any) -> Any:
    return NotImplemented


def _reducer_for(cls: type) -> _Reducer:
    """``obj -> (cls, field values)`` for a slotted dataclass whose fields are all
    ``__init__`` arguments and which has no ``__post_init__`` (so ``cls(*values)``
    rebuilds an equal object). The IR's frozen slotted dataclasses otherwise pickle
    through dataclasses' Python-level ``__getstate__``, which calls ``fields()`` for
    every object: this halves the time to pickle the linked model."""
    if (
        not dataclasses.is_dataclass(cls)
        or "__slots__" not in vars(cls)
        or hasattr(cls, "__post_init__")
        or not all(f.init for f in dataclasses.fields(cls))
    ):
        return _no_reducer
    names = [f.name for f in dataclasses.fields(cls)]
    if not names:
        return lambda obj: (cls, ())
    if len(names) == 1:
        get_one = operator.attrgetter(names[0])
        return lambda obj: (cls, (get_one(obj),))
    get = operator.attrgetter(*names)
    return lambda obj: (cls, get(obj))


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        reducer = _REDUCERS.get(cls)
        if reducer is None:
            reducer = _REDUCERS[cls] = _reducer_for(cls)
        return reducer(obj)


def _dumps(obj: Any) -> bytes:
    """``pickle.dumps(obj)``, faster for the IR (see :func:`_reducer_for`); falls
    back to plain pickle for a structure the reducers cannot rebuild (a cycle)."""
    buf = io.BytesIO()
    try:
        _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    except RecursionError:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return buf.getvalue()
