"""Lens records bind only allowlisted packages (issue 14, finding 1).

Each attack seen in the hostile-input review is replayed in a child interpreter with
a timeout (a regression hangs nothing): ``tqdm.__main__:get`` (ran tqdm's CLI),
``test.__main__:get`` (ran CPython's regression suite), ``setup:get`` beside the
script (ran a ``setup.py``), ``__main__:s`` (bound a script variable and showed its
repr), ``os:system``, ``importlib:import_module`` and a parent package whose
``__init__`` runs code. Each must be refused with its rule before anything is
imported, and no marker file may appear. Then: allowlisted packages bind, from the
allowlist's every source (``allow=``, ``allow_lens_packages``,
``ATDATA_LENS_PACKAGES``, ``[tool.atdata-gen] lens-packages``) with the documented
precedence; a distribution's PEP 610 ``direct_url.json`` is checked against the
record's repository and commit (real ``importlib.metadata`` over a dist-info on a
temporary ``sys.path`` entry); and the compiler validates ``lens-packages``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from atdata_gen.config import ConfigError, load_config
from atdata_runtime.lenses.records import (
    MAX_PYPROJECT_BYTES,
    CodeReference,
    LensAllowlistError,
    LensBindRefused,
    LensCommitMismatch,
    RecordLens,
    lens_allowlist,
)
from atdata_runtime.samples import FieldSpec, sample_class

from .conftest import UV
from .fuzz.bounded import run_bounded

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"
REPO = "https://github.com/lab/mylab-lenses"

# The child: bind ``path`` and report the error's rule, type and message, and which
# modules of the watched top-level packages appeared in ``sys.modules``.
CHILD = """
import json, os, sys
from atdata_runtime.lenses.records import CodeReference, LensBindingError, RecordLens
from atdata_runtime.samples import PackableSample
{setup}
before = set(sys.modules)
ref = CodeReference({repo!r}, {commit!r}, {path!r})
rl = RecordLens(PackableSample, PackableSample, ref, ref, name="attack",
                record="at://did:plc:x/science.alt.dataset.lens/1", allow={allow!r})
try:
    rl.bind()
    outcome = {{"bound": True, "where": rl.where}}
except LensBindingError as exc:
    outcome = {{"rule": exc.rule, "type": type(exc).__name__, "message": str(exc)}}
outcome["new"] = sorted(
    m for m in set(sys.modules) - before if m.split(".")[0] in {watch!r}
)
outcome["cwd"] = os.getcwd()
"""


def _child(
    path: str,
    allow: list[str] | None,
    watch: set[str],
    setup: str = "",
) -> str:
    return CHILD.format(
        setup=setup, repo=REPO, commit=COMMIT, path=path, allow=allow, watch=watch
    )


def _bounded(code: str, **env: str) -> dict[str, Any]:
    out = run_bounded(code + "\n_result['value'] = outcome\n", timeout=60, env=env)
    assert not out.timed_out, "the binding hung (it ran the named module)"
    assert out.error_type is None, out.traceback or out.stderr
    assert isinstance(out.value, dict)
    return out.value


def _script(directory: Path, code: str, cwd: Path) -> dict[str, Any]:
    """Run ``code`` as ``directory/main.py`` (so ``sys.path[0]`` is ``directory``)
    from ``cwd``, with a timeout and no stdin."""
    script = directory / "main.py"
    script.write_text(code + "\nprint('@@' + json.dumps(outcome))\n")
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "ATDATA_LENS_PACKAGES"},
    )
    assert "@@" in proc.stdout, proc.stderr
    return json.loads(proc.stdout.rsplit("@@", 1)[1])  # type: ignore[no-any-return]


def _refused(outcome: dict[str, Any], why: str, rule: str = "LENS_BIND_REFUSED") -> str:
    assert not outcome.get("bound"), outcome
    assert outcome["rule"] == rule, outcome
    assert f"[{rule}]" in outcome["message"]
    assert why in outcome["message"], outcome["message"]
    assert outcome["new"] == [], f"imported {outcome['new']}"
    return str(outcome["message"])


# -- the attacks of the review ---------------------------------------------------


def test_tqdm_main_never_runs_even_allowlisted() -> None:
    outcome = _bounded(_child("tqdm.__main__:get", ["tqdm"], {"tqdm"}))
    _refused(outcome, "module segment '__main__' is a dunder name")


def test_cpython_test_main_never_runs() -> None:
    for allow in (None, []):
        outcome = _bounded(_child("test.__main__:get", allow, {"test"}))
        _refused(outcome, "module segment '__main__' is a dunder name")
    # Without the dunder: ``test`` is never bound, even with everything allowed.
    outcome = _bounded(_child("test.regrtest:main", None, {"test"}))
    _refused(outcome, "'test' is a tool or script, never bound")


def test_setup_py_beside_the_script_never_runs(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    marker = tmp_path / "setup-ran"
    (app / "setup.py").write_text(f"open({str(marker)!r}, 'w').close()\nget = 1\n")
    outcome = _script(app, _child("setup:get", None, {"setup"}), cwd=tmp_path)
    _refused(outcome, "'setup' is a tool or script, never bound")
    assert not marker.exists()


def test_allowlisted_module_in_the_script_directory_is_refused(
    tmp_path: Path,
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    marker = tmp_path / "helpers-ran"
    (app / "helpers.py").write_text(f"open({str(marker)!r}, 'w').close()\nget = 1\n")
    outcome = _script(app, _child("helpers:get", ["helpers"], {"helpers"}), tmp_path)
    _refused(outcome, f"lies in the script's directory ({app.resolve()})")
    assert not marker.exists()


def test_allowlisted_package_in_the_working_directory_is_refused(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "init-ran"
    (tmp_path / "cwdpkg").mkdir()
    (tmp_path / "cwdpkg" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
    )
    (tmp_path / "cwdpkg" / "lens.py").write_text("get = 1\n")
    setup = f"os.chdir({str(tmp_path)!r})"  # python -c: sys.path[0] is ''
    outcome = _bounded(_child("cwdpkg.lens:get", ["cwdpkg"], {"cwdpkg"}, setup))
    assert outcome["cwd"] == str(tmp_path)
    _refused(outcome, f"lies in the working directory ({tmp_path.resolve()})")
    assert not marker.exists()


def test_main_variable_is_neither_bound_nor_shown(tmp_path: Path) -> None:
    code = "s = 'SECRET-7f3a'\n" + _child("__main__:s", None, {"__main__"})
    outcome = _script(tmp_path, code, cwd=tmp_path)
    message = _refused(outcome, "module segment '__main__' is a dunder name")
    assert "SECRET" not in message


def test_standard_library_is_refused_even_allowlisted() -> None:
    for path in ("os:system", "importlib:import_module", "subprocess:run"):
        outcome = _bounded(_child(path, None, {"importlib"}))
        _refused(outcome, "is a standard-library module, never a lens")
        allowed = _bounded(_child(path, [path.split(":")[0]], set()))
        _refused(allowed, "is a standard-library module", "LENS_ALLOWLIST_INVALID")


def test_path_entry_inside_the_standard_library_is_refused() -> None:
    """``sys.path`` holding a directory of the standard library: its modules are not
    standard-library names, but their files are."""
    inside = os.path.join(sysconfig.get_path("stdlib"), "json")
    setup = f"sys.path.insert(0, {inside!r})"
    outcome = _bounded(_child("decoder:JSONDecoder", ["decoder"], {"decoder"}, setup))
    _refused(outcome, "lies in the standard library")


def test_parent_package_init_never_runs_when_not_allowlisted(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "evilpkg").mkdir(parents=True)
    marker = tmp_path / "evil-ran"
    (site / "evilpkg" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
    )
    (site / "evilpkg" / "sub.py").write_text("get = 1\n")
    setup = f"sys.path.insert(0, {str(site)!r})"
    outcome = _bounded(_child("evilpkg.sub:get", None, {"evilpkg"}, setup))
    message = _refused(
        outcome, "top-level package 'evilpkg' is not on the lens allowlist"
    )
    assert "lens-packages" in message and "allow_lens_packages()" in message
    assert not marker.exists()
    init = _bounded(_child("evilpkg.__init__:get", ["evilpkg"], {"evilpkg"}, setup))
    _refused(init, "module segment '__init__' is a dunder name")
    assert not marker.exists()


# -- allowlisted packages bind ---------------------------------------------------

LABEL = FieldSpec("label", "label", "str")
CAPTION = FieldSpec("caption", "caption", "str")
SrcA = sample_class("SrcA", [LABEL], schema_name="lab.A", schema_version="1.0.0")
DstB = sample_class("DstB", [CAPTION], schema_name="lab.B", schema_version="1.0.0")

IMPL = """
from atdata_runtime.samples import FieldSpec, sample_class

A = sample_class("A", [FieldSpec("label", "label", "str")], schema_name="lab.A",
                 schema_version="1.0.0")
B = sample_class("B", [FieldSpec("caption", "caption", "str")], schema_name="lab.B",
                 schema_version="1.0.0")


def get(source: A) -> B:
    return B(caption=source.label.upper())


def put(view: B, source: A) -> A:
    return A(label=view.caption.lower())
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary ``sys.path`` entry (outside the working directory); packages
    written there are forgotten afterwards."""
    directory = tmp_path / "site-packages"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    monkeypatch.delenv("ATDATA_LENS_PACKAGES", raising=False)
    before = set(sys.modules)
    yield directory
    for name in set(sys.modules) - before:
        del sys.modules[name]


def _package(site: Path, name: str) -> list[str]:
    (site / name).mkdir()
    (site / name / "__init__.py").write_text("")
    (site / name / "v1.py").write_text(IMPL)
    return [f"{name}/__init__.py", f"{name}/v1.py"]


def _dist(
    site: Path, name: str, files: list[str], direct_url: dict[str, Any] | None
) -> None:
    """A real dist-info (METADATA, RECORD, top_level.txt, optional PEP 610
    direct_url.json), as an installer writes it."""
    dist = name.replace("_", "-")
    info = site / f"{name}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n"
    )
    (info / "top_level.txt").write_text(name + "\n")
    (info / "INSTALLER").write_text("uv\n")
    listed = [*files, f"{info.name}/METADATA", f"{info.name}/RECORD"]
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))
        listed.append(f"{info.name}/direct_url.json")
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in listed))


def _lens(
    module: str,
    allow: list[str] | None = None,
    repository: str = REPO,
    commit: str = COMMIT,
) -> RecordLens[Any, Any]:
    return RecordLens(
        SrcA,
        DstB,
        CodeReference(repository, commit, f"{module}:get"),
        CodeReference(repository, commit, f"{module}:put"),
        name="a_to_b",
        record="at://did:plc:lab/science.alt.dataset.lens/1",
        allow=allow,
    )


def test_allowlisted_package_binds_and_works(site: Path) -> None:
    _package(site, "plainlens")
    rl = _lens("plainlens.v1", allow=["plainlens"])
    assert rl.bind()
    view = rl.get(SrcA(label="cat"))
    assert type(view) is DstB and view.caption == "CAT"
    assert rl.put(DstB(caption="DOG"), SrcA(label="x")).label == "dog"
    getter = rl.where["getter"]
    assert getter.startswith("plainlens.v1:get (")
    assert str(site / "plainlens" / "v1.py") in getter
    assert getter.endswith("; not from an installed distribution — commit not verified")


def test_module_built_in_memory_binds_when_allowlisted(site: Path) -> None:
    """A module the program registered itself (``sys.modules``, no file): nothing to
    import or locate, still only when allowlisted."""
    module = types.ModuleType("memlens")
    exec(IMPL, module.__dict__)  # noqa: S102 - the test's own code
    sys.modules["memlens"] = module
    with pytest.raises(LensBindRefused, match="'memlens' is not on the lens"):
        _lens("memlens", allow=[]).bind()
    rl = _lens("memlens", allow=["memlens"])
    assert rl.bind() and rl.get(SrcA(label="a")).caption == "A"
    assert rl.where["getter"].endswith(
        "; no file (a namespace package or a module built in memory), not from a "
        "distribution — commit not verified"
    )


def test_not_installed_is_unbound_not_refused(site: Path) -> None:
    rl = _lens("absentlens.v1", allow=["absentlens"])
    assert not rl.bind()
    with pytest.raises(NotImplementedError, match=r"not installed.*LENS_UNBOUND"):
        rl.get(SrcA(label="x"))
    _package(site, "halflens")
    missing = _lens("halflens.nope", allow=["halflens"])
    assert not missing.bind()
    with pytest.raises(NotImplementedError, match="'halflens.nope' is not installed"):
        missing.get(SrcA(label="x"))
    assert "halflens" not in sys.modules  # found by file, nothing imported


def test_vcs_install_matching_the_record_is_verified(site: Path) -> None:
    files = _package(site, "vcslens")
    _dist(
        site,
        "vcslens",
        files,
        {
            "url": "git+https://github.com/lab/mylab-lenses.git",
            "vcs_info": {"vcs": "git", "commit_id": COMMIT},
        },
    )
    rl = _lens("vcslens.v1", allow=["vcslens"])
    assert rl.bind()
    assert rl.where["getter"].endswith(
        "; from distribution vcslens 0.1.0 (git git+https://github.com/lab/"
        f"mylab-lenses.git @ {COMMIT}, matches the record)"
    )


def test_vcs_install_of_another_commit_or_repository_is_refused(site: Path) -> None:
    files = _package(site, "mislens")
    _dist(
        site,
        "mislens",
        files,
        {"url": REPO + ".git", "vcs_info": {"vcs": "git", "commit_id": OTHER}},
    )
    with pytest.raises(LensCommitMismatch) as err:
        _lens("mislens.v1", allow=["mislens"]).bind()
    assert err.value.rule == "LENS_COMMIT_MISMATCH"
    text = str(err.value)
    assert f"installed from '{REPO}.git' at commit '{OTHER}'" in text
    assert f"names '{REPO}' at commit '{COMMIT}'" in text
    assert "[LENS_COMMIT_MISMATCH]" in text
    assert "mislens.v1" not in sys.modules  # refused before the import
    fork = "git@github.com:someone-else/mylab-lenses.git"
    with pytest.raises(LensCommitMismatch, match="someone-else"):
        _lens("mislens.v1", allow=["mislens"], repository=fork, commit=OTHER).bind()
    same = "git@github.com:lab/mylab-lenses.git"  # scp form of the same repository
    assert _lens("mislens.v1", allow=["mislens"], repository=same, commit=OTHER).bind()


def _git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_real_uv_git_install_is_verified_against_the_record(site: Path) -> None:
    """``uv pip install`` from a git repository writes the PEP 610 record itself."""
    repo = site.parent / "repo"
    (repo / "uvlens").mkdir(parents=True)
    (repo / "uvlens" / "__init__.py").write_text("")
    (repo / "uvlens" / "v1.py").write_text(IMPL)
    (repo / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\n'
        'build-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "uvlens"\nversion = "0.2.0"\n\n'
        '[tool.setuptools]\npackages = ["uvlens"]\n'
    )
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "lens")
    commit = _git(repo, "rev-parse", "HEAD")
    proc = subprocess.run(
        [UV, "pip", "install", "-q", "--offline", "--no-build-isolation"]
        + ["--python", sys.executable, "--target", str(site)]
        + [f"uvlens @ git+{repo.as_uri()}@{commit}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(LensCommitMismatch, match=f"at commit '{commit}'"):
        _lens("uvlens.v1", allow=["uvlens"], repository=str(repo)).bind()
    rl = _lens("uvlens.v1", allow=["uvlens"], repository=str(repo), commit=commit)
    assert rl.bind()
    assert rl.where["getter"].endswith(
        f"; from distribution uvlens 0.2.0 (git {repo.as_uri()} @ {commit}, "
        "matches the record)"
    )


def test_index_and_directory_installs_bind_unverified(site: Path) -> None:
    _dist(site, "pypilens", _package(site, "pypilens"), None)
    rl = _lens("pypilens.v1", allow=["pypilens"])
    assert rl.bind()
    assert rl.where["getter"].endswith(
        "; from distribution pypilens 0.1.0 (no direct_url.json — commit not verified)"
    )
    _dist(site, "badurllens", _package(site, "badurllens"), None)
    (site / "badurllens-0.1.0.dist-info" / "direct_url.json").write_text("{not json")
    rl = _lens("badurllens.v1", allow=["badurllens"])
    assert rl.bind()
    assert rl.where["getter"].endswith(
        "(its direct_url.json is not JSON — commit not verified)"
    )
    src = site.parent / "checkout"
    src.mkdir()
    url = src.as_uri()
    _dist(site, "dirlens", _package(site, "dirlens"), {"url": url, "dir_info": {}})
    rl = _lens("dirlens.v1", allow=["dirlens"])
    assert rl.bind()
    assert rl.where["getter"].endswith(
        f"; from distribution dirlens 0.1.0 (install of {url} — commit not verified)"
    )


def test_editable_install_is_matched_by_its_directory(site: Path) -> None:
    project = site.parent / "project" / "src"
    project.mkdir(parents=True)
    _package(project, "editlens")
    # An editable install: a .pth-style path entry, a dist-info naming no files of
    # the package, and dir_info.editable in direct_url.json.
    sys.path.insert(0, str(project))
    try:
        url = project.parent.as_uri()
        _dist(site, "editlens", [], {"url": url, "dir_info": {"editable": True}})
        rl = _lens("editlens.v1", allow=["editlens"])
        assert rl.bind()
        assert rl.where["putter"].endswith(
            f"; from distribution editlens 0.1.0 (editable install of {url} — "
            "commit not verified)"
        )
    finally:
        sys.path.remove(str(project))


# -- the allowlist's sources -----------------------------------------------------


def test_environment_variable_and_explicit_allow_precedence(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _package(site, "envlens")
    monkeypatch.setenv("ATDATA_LENS_PACKAGES", " envlens , other_pkg")
    assert {"envlens", "other_pkg"} <= lens_allowlist()
    with pytest.raises(LensBindRefused, match="not on the lens allowlist \\(empty"):
        _lens("envlens.v1", allow=[]).bind()  # allow= replaces every other source
    assert _lens("envlens.v1").bind()
    monkeypatch.setenv("ATDATA_LENS_PACKAGES", "good,not-a-name")
    with pytest.raises(LensAllowlistError) as err:
        lens_allowlist()
    assert err.value.rule == "LENS_ALLOWLIST_INVALID"
    assert "ATDATA_LENS_PACKAGES: lens package 'not-a-name' is not a Python" in str(
        err.value
    )


def test_allow_lens_packages_is_process_wide(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _package(site, "proclens")
    code = f"""
    import sys
    sys.path.insert(0, {str(site)!r})
    from atdata_runtime.lenses import allow_lens_packages, lens_allowlist
    from atdata_runtime.lenses.records import LensAllowlistError
    try:
        allow_lens_packages("pip")
    except LensAllowlistError as exc:
        refused = exc.rule
    added = sorted(allow_lens_packages("proclens"))
    _result["value"] = [refused, added, "proclens" in lens_allowlist()]
    """
    out = run_bounded(textwrap.dedent(code), timeout=60)
    assert out.error_type is None, out.traceback
    assert out.value == ["LENS_ALLOWLIST_INVALID", ["proclens"], True]


def _project_child(site: Path, module: str) -> str:
    return textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(site)!r})
        from atdata_runtime.lenses.records import (
            CodeReference, LensBindingError, RecordLens)
        from atdata_runtime.samples import PackableSample
        ref = CodeReference("r", "c", {module!r})
        try:
            RecordLens(PackableSample, PackableSample, ref, ref, name="n",
                       record="r").bind()
            _result["value"] = "bound"
        except LensBindingError as exc:
            _result["value"] = [exc.rule, str(exc)]
        """
    )


def test_pyproject_lens_packages_found_from_a_subdirectory(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _package(site, "projlens")
    project = tmp_path / "project"
    (project / "deep" / "er").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.atdata-gen]\nsources = []\n'
        'lens-packages = ["projlens"]\n'
    )
    code = f"import os\nos.chdir({str(project / 'deep' / 'er')!r})\n"
    out = run_bounded(code + _project_child(site, "projlens.v1:get"), timeout=60)
    assert out.error_type is None, out.traceback
    # Allowed, so it was looked up and reached the signature check.
    assert out.value[0] == "LENS_SIGNATURE", out.value
    # The nearest pyproject.toml is the project file: a parent's is not read.
    (project / "deep" / "pyproject.toml").write_text('[project]\nname = "y"\n')
    out = run_bounded(code + _project_child(site, "projlens.v1:get"), timeout=60)
    assert out.value[0] == "LENS_BIND_REFUSED", out.value
    assert str(project / "deep" / "pyproject.toml") in out.value[1]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('[tool.atdata-gen]\nlens-packages = "projlens"\n', ":2: [tool.atdata-gen] "),
        ('[tool.atdata-gen]\nlens-packages = ["__main__"]\n', "is a dunder name"),
        ('[tool.atdata-gen]\nlens-packages = ["setuptools"]\n', "never bound"),
        ("[tool.atdata-gen\n", "pyproject.toml: "),
    ],
)
def test_malformed_pyproject_is_a_located_error(
    tmp_path: Path, text: str, why: str
) -> None:
    (tmp_path / "pyproject.toml").write_text(text)
    code = f"import os\nos.chdir({str(tmp_path)!r})\n"
    out = run_bounded(code + _project_child(tmp_path, "projlens.v1:get"), timeout=60)
    assert out.error_type is None, out.traceback
    rule, message = out.value
    assert rule == "LENS_ALLOWLIST_INVALID" and why in message, message
    assert str(tmp_path / "pyproject.toml") in message


def test_fifo_or_huge_pyproject_is_refused_without_reading(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "pyproject.toml")
    huge = tmp_path / "huge"
    huge.mkdir()
    (huge / "pyproject.toml").write_text("#" * (MAX_PYPROJECT_BYTES + 1))
    for directory, why in ((fifo, "not a regular file"), (huge, "-byte limit")):
        code = f"import os\nos.chdir({str(directory)!r})\n"
        out = run_bounded(code + _project_child(tmp_path, "x.y:z"), timeout=20)
        assert not out.timed_out and out.error_type is None, out
        assert out.value[0] == "LENS_ALLOWLIST_INVALID" and why in out.value[1]


# -- the compiler's key ----------------------------------------------------------


def test_compiler_config_validates_lens_packages(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.atdata-gen]\nsources = []\n\nlens-packages = ["mylab_lenses", '
        '"mylab_lenses", "os", "a.b", "__main__", "1x", "pip"]\n'
    )
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    found = {(d.rule, d.span.line, d.message) for d in err.value.diagnostics}
    prefix = "[tool.atdata-gen] lens-packages entry"
    assert found == {
        ("CONFIG_VALUE", 4, f"{prefix} 'os' is a standard-library module, never bound"),
        (
            "CONFIG_VALUE",
            4,
            f"{prefix} 'a.b' is a dotted name (list the top-level package)",
        ),
        ("CONFIG_VALUE", 4, f"{prefix} '__main__' is a dunder name"),
        ("CONFIG_VALUE", 4, f"{prefix} '1x' is not a Python identifier"),
        ("CONFIG_VALUE", 4, f"{prefix} 'pip' is a tool or script name, never bound"),
    }
    (tmp_path / "pyproject.toml").write_text(
        '[tool.atdata-gen]\nlens-packages = ["mylab_lenses", "b", "mylab_lenses"]\n'
    )
    assert load_config(tmp_path).lens_packages == ["mylab_lenses", "b"]
    (tmp_path / "pyproject.toml").write_text("[tool.atdata-gen]\nlens-packages = [1]\n")
    with pytest.raises(ConfigError, match=r":2:1: .*lens-packages must be a list"):
        load_config(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.atdata-gen]\nlens-package = []\n")
    with pytest.raises(ConfigError, match="did you mean 'lens-packages'"):
        load_config(tmp_path)
