"""Fuzz: hostile lens records never make the binding import anything.

Hypothesis builds code references from pieces a hostile PDS would try — dunder
segments (``__main__``, ``__init__``, ``__hello__``), standard-library and tool
names, dotted paths with empty segments (``a..b``), extra or missing ``:``, keywords,
digits, unicode (non-NFKC letters, confusables, controls), very long paths, empty
text — around a package ``fuzzlens`` that *is* allowlisted, installed on
``sys.path`` and whose ``__init__`` would write a marker file (it lies in the working
directory, so even a well-formed path to it is refused). Every binding must end in a
:class:`LensBindingError` carrying a rule ID (also in its message) or, for a package
that is not installed, be unbound; ``sys.modules`` must not change and the marker
must never appear."""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
from atdata_runtime.lenses.records import (
    MAX_CODE_PATH_LENGTH,
    CodeReference,
    LensBindingError,
    RecordLens,
)
from atdata_runtime.samples import PackableSample
from hypothesis import event, given, settings
from hypothesis import strategies as st

RULES = {
    "LENS_BIND_REFUSED",
    "LENS_SIGNATURE",
    "LENS_COMMIT_MISMATCH",
    "LENS_ALLOWLIST_INVALID",
}

SEGMENTS = st.one_of(
    st.sampled_from(
        [
            "fuzzlens",
            "sub",
            "__main__",
            "__init__",
            "__hello__",
            "__phello__",
            "__builtins__",
            "os",
            "importlib",
            "test",
            "_pytest",
            "pip",
            "setuptools",
            "setup",
            "tqdm",
            "",
            "..",
            ".",
            ":",
            "class",
            "1abc",
            "ｆuzzlens",  # fullwidth f: not NFKC-normal
            "fuzzlеns",  # Cyrillic е: an identifier, but not the allowlisted one
            "a\x00b",
            "a b",
            "a/b",
            "x" * (MAX_CODE_PATH_LENGTH + 1),
        ]
    ),
    st.text(min_size=0, max_size=12),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True),
)

PATHS = st.one_of(
    st.builds(
        lambda mod, fn, sep: sep.join([".".join(mod), fn]),
        st.lists(SEGMENTS, min_size=0, max_size=5),
        SEGMENTS,
        st.sampled_from([":", ":", ":", ":", "::", ".", ""]),
    ),
    st.builds(
        lambda tail, fn: ".".join(["fuzzlens", *tail]) + ":" + fn,
        st.lists(SEGMENTS, max_size=3),
        SEGMENTS,
    ),
    st.text(max_size=40),
    st.builds(lambda n: "fuzzlens." * n + "x:f", st.integers(0, 200)),
)


@pytest.fixture(scope="module")
def hostile_cwd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The working directory and a ``sys.path`` entry holding ``fuzzlens`` (whose
    ``__init__`` writes a marker), with ``ATDATA_LENS_PACKAGES`` unset."""
    root = tmp_path_factory.mktemp("lensfuzz")
    marker = root / "imported"
    pkg = root / "fuzzlens"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (pkg / "sub.py").write_text("def f(x): return x\n")
    sysconfig.get_paths()  # its lazy imports are not the binding's
    old_cwd, old_env = os.getcwd(), os.environ.pop("ATDATA_LENS_PACKAGES", None)
    os.chdir(root)
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        os.chdir(old_cwd)
        if old_env is not None:
            os.environ["ATDATA_LENS_PACKAGES"] = old_env
        assert not marker.exists(), "a hostile lens record imported fuzzlens"


@settings(derandomize=True, max_examples=600, deadline=None)
@given(
    path=PATHS,
    putter=PATHS,
    allow=st.sampled_from([None, [], ["fuzzlens"], ["fuzzlens", "tqdm"]]),
    language=st.sampled_from([None, "python", "Python", "rust", "x" * 5000]),
    repository=st.text(max_size=30),
)
def test_hostile_code_reference_never_imports(
    hostile_cwd: Path,
    path: str,
    putter: str,
    allow: list[str] | None,
    language: str | None,
    repository: str,
) -> None:
    before = set(sys.modules)
    rl = RecordLens(
        PackableSample,
        PackableSample,
        CodeReference(repository, "0" * 40, path, language=language),
        CodeReference(repository, "0" * 40, putter, language=language),
        name="fuzz",
        record="at://did:plc:fuzz/science.alt.dataset.lens/1",
        allow=allow,
    )
    try:
        bound = rl.bind()
    except LensBindingError as exc:
        assert exc.rule in RULES
        assert f"[{exc.rule}]" in str(exc)
        assert len(str(exc)) < 2000  # hostile text is cut when shown
        event(exc.rule + ": " + str(exc).split(" is refused: ")[-1][:14])
    else:
        assert not bound  # only "not installed" may get here
        event("unbound")
        with pytest.raises(NotImplementedError, match="LENS_UNBOUND") as err:
            rl.get(None)  # type: ignore[arg-type]
        assert len(str(err.value)) < 2000
    assert set(sys.modules) == before
    assert not (hostile_cwd / "imported").exists()
