"""The emitter pool: libcst is imported once (worker 0 forks the others after the
import), a dead worker is an error and not a hang, and every worker exits."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from atdata_gen.backend.parallel import EmitPool, EmitWorkerError
from atdata_gen.pipeline import BuildOptions, compile_sources

from .conftest import OFFICIAL


def test_a_dead_worker_raises_and_does_not_hang() -> None:
    result = compile_sources(BuildOptions([OFFICIAL], "p"))
    assert result.model is not None
    pool = EmitPool(2)
    try:
        pool._proc.kill()  # worker 0 (and with it the pipe of worker 0)
        pool._proc.join(timeout=10)
        with pytest.raises(EmitWorkerError):
            pool.emit(result.model, {})
    finally:
        pool.close()


def test_workers_are_one_process_tree_and_all_exit() -> None:
    # Run in a fresh interpreter: the workers are forked from worker 0, so they are
    # its children and not ours; after close() none of them is left.
    code = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from atdata_gen.backend.parallel import EmitPool
        from atdata_gen.pipeline import BuildOptions, compile_sources
        model = compile_sources(BuildOptions([Path({str(OFFICIAL)!r})], "p")).model
        pool = EmitPool(3)
        codes = pool.emit(model, {{}})
        zygote = pool._proc.pid
        kids = open(f"/proc/{{zygote}}/task/{{zygote}}/children").read().split()
        assert len(kids) == 2, kids
        assert "libcst" not in sys.modules  # the parent never imported it
        pool.close()
        for pid in [zygote, *map(int, kids)]:
            assert not os.path.exists(f"/proc/{{pid}}/stat") or open(
                f"/proc/{{pid}}/stat").read().split()[2] == "Z", pid
        print(len(codes))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) == len(list(OFFICIAL.rglob("*.json")))


def test_the_fast_pickle_rebuilds_an_equal_model() -> None:
    import pickle

    from atdata_gen.backend.parallel import _dumps

    model = compile_sources(BuildOptions([OFFICIAL], "p")).model
    assert model is not None
    data = _dumps(model)
    assert data != pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)  # reduced
    again = pickle.loads(data)
    assert again == model
    # Shared objects stay shared (the memo): a def is the same object in both places.
    d = next(iter(again.schemas[0].defs))
    assert any(v is d for v in again.defs.values())


def test_the_fast_pickle_falls_back_on_a_cycle() -> None:
    import pickle

    from atdata_gen.backend.parallel import _dumps
    from atdata_gen.ir.model import Origin

    box: list[object] = []
    origin = Origin("p", box)  # type: ignore[arg-type]
    box.append(origin)  # origin -> box -> origin: cls(*values) cannot rebuild it
    again = pickle.loads(_dumps(origin))
    assert again.path == "p" and again.sha256[0] is again


def test_a_prestarted_pool_is_taken_by_the_build_and_emits_the_same() -> None:
    from atdata_gen.backend import parallel
    from atdata_gen.pipeline import build

    serial = build(BuildOptions([OFFICIAL], "p", jobs=1)).files
    parallel.prestart(2)
    assert len(parallel._PRESTARTED) == 1
    prestarted = build(BuildOptions([OFFICIAL], "p", jobs=2)).files
    assert parallel._PRESTARTED == []  # taken (and closed by the build)
    assert serial is not None and serial == prestarted
    # A pool of the wrong size is closed, not used.
    parallel.prestart(3)
    assert parallel.take_prestarted(2) is None and parallel._PRESTARTED == []


def test_a_worker_s_format_failures_keep_their_types(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The workers are forked after the patch, so they run the patched formatter.
    import errno

    from atdata_gen.backend import format as fmt
    from atdata_gen.backend.format import FormatError
    from atdata_gen.backend.write import WriteError
    from atdata_gen.pipeline import build

    parent = os.getpid()
    real = fmt.start_format

    def refuse(files: dict[str, str], workdir: object = None) -> fmt.FormatRun:
        if os.getpid() == parent:  # the parent's own files format as usual
            return real(files)
        raise FormatError("ruff format failed: boom")

    monkeypatch.setattr(fmt, "start_format", refuse)
    with pytest.raises(FormatError, match="boom"):
        build(BuildOptions([OFFICIAL], "p", jobs=2))

    def full(files: dict[str, str], workdir: object = None) -> fmt.FormatRun:
        if os.getpid() == parent:
            return real(files)
        raise OSError(errno.ENOSPC, "No space left on device", "/scratch/m0.py")

    monkeypatch.setattr(fmt, "start_format", full)
    with pytest.raises(WriteError) as info:
        build(BuildOptions([OFFICIAL], "p", jobs=2))
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
