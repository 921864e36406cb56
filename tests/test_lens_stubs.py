"""Lens records → typed stub modules (``lenses/``): the stubs type-check, bind to
an installed implementation (signature checked, also across two generated packages
of the same schema), say what to install when it is missing, bind only allowlisted packages
(``ATDATA_LENS_PACKAGES`` here), refuse standard library names, and a v1 dataset
reads as v2 through a bound record lens."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from atdata_runtime.lenses import GET_PUT, LensGraph, check_lens_laws
from atdata_runtime.lenses.records import (
    CodeReference,
    LensBindingError,
    LensBindRefused,
    RecordLens,
)
from atdata_runtime.shards import Dataset, write_samples

from .conftest import ROOT, compile_to

INPUT = ROOT / "tests" / "golden" / "lens_records" / "input"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

IMPL = """
from __future__ import annotations

from atdata_runtime.lenses import lens
from {package}.samples.lab_image_v1_0_0 import Image as V1
from {package}.samples.lab_image_v2_0_0 import Image as V2


@lens
def v1_to_v2(source: V1) -> V2:
    return V2(image=source.image, caption=source.label, width=None)


@v1_to_v2.putter
def v1_to_v2_put(view: V2, source: V1) -> V1:
    return V1(image=view.image, label=view.caption)


def wrong(source: V2) -> V2:
    return source


def untyped(source):  # no annotations
    return source
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The golden lens input compiled as ``labgen`` (the user's package) and as
    ``labimpl`` (the implementation's own generated classes), plus the
    implementation ``lab_lenses.image`` importing ``labimpl``."""
    out = tmp_path_factory.mktemp("lensstubs")
    compile_to(out, [INPUT], "labgen")
    compile_to(out, [INPUT], "labimpl")
    (out / "lab_lenses").mkdir()
    (out / "lab_lenses" / "__init__.py").write_text("")
    (out / "lab_lenses" / "image.py").write_text(IMPL.format(package="labimpl"))
    (out / "mine.py").write_text(IMPL.format(package="labgen"))
    sys.path.insert(0, str(out))
    try:
        yield out
    finally:
        sys.path.remove(str(out))
        for name in list(sys.modules):
            if name.split(".")[0] in ("labgen", "labimpl", "lab_lenses", "mine"):
                del sys.modules[name]


@pytest.fixture(autouse=True)
def allowlisted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The implementations' packages on the lens allowlist (read at bind time)."""
    monkeypatch.setenv("ATDATA_LENS_PACKAGES", "lab_lenses, mine, other")


def _stub(name: str) -> ModuleType:
    return importlib.import_module(f"labgen.lenses.{name}")


def _v1(i: int) -> Any:
    cls = _stub("image_v1_to_v2").Source
    return cls(image=np.full((2, i + 1), i, np.uint8), label=f"label {i}")


def test_stub_binds_to_installed_implementation(built: Path) -> None:
    stub = _stub("image_v1_to_v2")
    a = _v1(3)
    b = stub.get(a)
    assert type(b) is stub.Target  # converted from labimpl's class
    assert b.caption == "label 3" and b.width is None
    assert np.array_equal(b.image, a.image)
    back = stub.put(stub.Target(image=a.image, caption="new", width=7), a)
    assert type(back) is stub.Source and back.label == "new"
    where = stub.binding.where
    assert where["getter"].startswith("lab_lenses.image:v1_to_v2 (")
    assert str(built / "lab_lenses" / "image.py") in where["getter"]
    assert where["getter"].endswith(
        "; not from an installed distribution — commit not verified"
    )
    assert where["putter"].startswith("lab_lenses.image:v1_to_v2_put (")
    samples = [_v1(i) for i in range(4)]
    check_lens_laws(stub.lens, samples, laws=(GET_PUT,), max_examples=30)


def test_missing_implementation_says_what_to_install(built: Path) -> None:
    stub = _stub("import_")  # keyword-named lens: module import_
    v2 = stub.Source(image=np.zeros(3, np.uint8), caption="c")
    with pytest.raises(NotImplementedError) as err:
        stub.get(v2)
    text = str(err.value)
    assert "[LENS_UNBOUND]" in text and "module 'other.pkg' is not installed" in text
    assert "other.pkg:down from https://example.org/other.git" in text
    assert "fedcba9876543210fedcba9876543210fedcba98" in text
    with pytest.raises(NotImplementedError, match="other.pkg:up"):
        stub.put(stub.Target(image=np.zeros(3, np.uint8), label="x"), v2)
    assert stub.binding.where == {}


def _record_lens(path: str, language: str | None = None) -> RecordLens[Any, Any]:
    stub = _stub("image_v1_to_v2")
    ref = CodeReference("https://github.com/lab/x", COMMIT, path, language=language)
    good = CodeReference("https://github.com/lab/x", COMMIT, "mine:v1_to_v2_put")
    return RecordLens(stub.Source, stub.Target, ref, good, name="t", record="at://x")


def test_wrong_signature_is_located(built: Path) -> None:
    with pytest.raises(LensBindingError) as err:
        _record_lens("mine:wrong").bind()
    text = str(err.value)
    assert "[LENS_SIGNATURE]" in text and f"{built / 'mine.py'}:" in text
    assert "(lab.Image@2.0.0) -> lab.Image@2.0.0" in text
    assert "needs (lab.Image@1.0.0) -> lab.Image@2.0.0" in text
    with pytest.raises(LensBindingError, match="annotat|None"):
        _record_lens("mine:untyped").bind()
    with pytest.raises(LensBindingError, match=r"has no 'gone'.*\[LENS_SIGNATURE\]"):
        _record_lens("mine:gone").bind()


def test_same_package_implementation_binds_without_conversion(built: Path) -> None:
    rl = _record_lens("mine:v1_to_v2")
    assert rl.bind()
    import mine

    assert rl._get is mine.v1_to_v2.getter  # no conversion layer


def test_package_off_the_allowlist_is_refused_before_lookup(
    built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ATDATA_LENS_PACKAGES")
    stub = _stub("image_v1_to_v2")
    rl = RecordLens(
        stub.Source,
        stub.Target,
        stub.GETTER_CODE,
        stub.PUTTER_CODE,
        name="fresh",
        record="at://fresh",
    )
    with pytest.raises(LensBindRefused) as err:
        rl.bind()
    assert err.value.rule == "LENS_BIND_REFUSED"
    assert "top-level package 'lab_lenses' is not on the lens allowlist" in str(
        err.value
    )
    assert rl.bind(allow=["lab_lenses"])  # retried after a refusal


def test_standard_library_and_other_languages_never_bind(built: Path) -> None:
    with pytest.raises(LensBindingError, match=r"standard-library.*LENS_BIND_REFUSED"):
        _record_lens("os:system").bind()
    rl = _record_lens("mine:v1_to_v2", language="rust")
    with pytest.raises(NotImplementedError, match="written in rust"):
        rl.get(_v1(0))


def test_v1_dataset_reads_as_v2_through_record_lens(
    built: Path, tmp_path: Path
) -> None:
    stub = _stub("image_v1_to_v2")
    graph = LensGraph()
    graph.register(stub.lens)
    samples = [_v1(i) for i in range(6)]
    shards = write_samples(samples, str(tmp_path / "v1-%06d.tar"), progress=False)
    read = list(
        Dataset[stub.Source](shards, progress=False).as_type(stub.Target, graph=graph)
    )
    assert [r.caption for r in read] == [s.label for s in samples]
    assert all(type(r) is stub.Target for r in read)


def test_stub_docstrings_keep_untrusted_text(built: Path) -> None:
    text = (built / "labgen" / "lenses" / "image_v1_to_v2.py").read_text()
    doc = ast.get_docstring(ast.parse(text)) or ""
    assert "Untrusted text: \"\"\" and \\ and ''' stay text." in doc
    assert "Source versions: ``>=1.0.0 <2.0.0``; target versions: ``^2.0.0``." in doc
    assert "lab_lenses.image:v1_to_v2_put" in doc and COMMIT in doc


def test_stubs_are_typed(built: Path) -> None:
    """mypy --strict: the stubs are clean, a correct use passes, and passing a v2
    sample to the v1 → v2 getter is a type error."""
    use = built / "use_stub.py"
    use.write_text(
        textwrap.dedent(
            """
            from labgen.lenses import image_v1_to_v2 as l12
            from labgen.samples.lab_image_v1_0_0 import Image as V1
            from labgen.samples.lab_image_v2_0_0 import Image as V2

            def ok(a: V1) -> V2:
                return l12.get(a)

            def back(b: V2, a: V1) -> V1:
                return l12.put(b, a)

            def wrong(b: V2) -> V2:
                return l12.get(b)
            """
        )
    )
    env = dict(os.environ, MYPYPATH=str(ROOT / "runtime"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "labgen",
            str(use),
        ],
        cwd=built,
        env=env,
        capture_output=True,
        text=True,
    )
    errors = [ln for ln in proc.stdout.splitlines() if ": error:" in ln]
    assert len(errors) == 1, proc.stdout + proc.stderr
    assert "use_stub.py:13:" in errors[0] and "arg-type" in errors[0], errors
