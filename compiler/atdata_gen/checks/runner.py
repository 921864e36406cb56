"""Run a compatibility check: resolve the previous side (paths or ``git:REV``),
compile both sides, compare, and apply the policy.

``git:REV`` reads the given source paths as they were at ``REV`` with ``git
archive`` (no checkout, the working tree is untouched). Locations on that side are
reported as ``REV:path:line:col`` (git's own ``rev:path`` notation). With
``transitive``, every earlier revision of ``REV``'s history that changed the sources
is compared too (newest first, at most ``history_limit``), and sample schemas are
compared with every earlier version present.

``git:HEAD`` in a repository without a commit yet (a pre-commit hook on the first
commit) has nothing to compare with: that side is skipped with a note
(:attr:`CheckResult.notes`), not an error. No location ever names the temporary
directory a revision is read into, not even in the errors of a side that does not
compile.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .. import ircache
from ..diagnostics import Diagnostic, Reporter, Span
from ..ir.link import LinkedModel
from ..sources import SourceDoc, discover, read_reported
from .compat import Finding, compare
from .policy import CheckPolicy

if TYPE_CHECKING:
    from ..pipeline import BuildResult

__all__ = ["CheckError", "CheckResult", "git_history", "run_check"]


class CheckError(Exception):
    """The check could not run: a side does not compile (``diagnostics``), or a
    ``git:`` revision cannot be read."""

    def __init__(self, message: str, diagnostics: Sequence[Diagnostic] = ()) -> None:
        super().__init__(message)
        self.diagnostics = list(diagnostics)


@dataclass
class CheckResult:
    """The kept findings (sorted, de-duplicated), the previous versions compared
    (labels), and how many findings the policy dropped."""

    findings: list[Finding]
    compared: list[str] = field(default_factory=list)
    dropped: int = 0
    notes: list[str] = field(default_factory=list)
    """Informational lines (e.g. a ``git:HEAD`` side skipped: no commit yet)."""


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)


def _toplevel(cwd: Path) -> Path:
    top = _git(["rev-parse", "--show-toplevel"], cwd)
    if top.returncode != 0:
        raise CheckError(f"{cwd}: not inside a git repository")
    return Path(top.stdout.decode().strip())


def _unborn(root: Path) -> bool:
    """True when the repository at ``root`` has no commit yet (HEAD names a branch
    that does not exist)."""
    head = _git(["rev-parse", "--verify", "-q", "HEAD"], root)
    if head.returncode == 0:
        return False
    return _git(["symbolic-ref", "-q", "HEAD"], root).returncode == 0


def _commit(rev: str, root: Path) -> str:
    """The commit id ``rev`` names; raises :class:`CheckError`."""
    out = _git(["rev-parse", "--verify", f"{rev}^{{commit}}"], root)
    if out.returncode != 0:
        raise CheckError(f"git:{rev}: unknown revision")
    return out.stdout.decode().strip()


def git_history(rev: str, rels: Sequence[str], root: Path, limit: int) -> list[str]:
    """Commits reachable from ``rev`` (``rev`` itself first) that changed the
    repository-relative paths ``rels``, newest first, at most ``limit``; raises
    :class:`CheckError`."""
    first = _commit(rev, root)
    out = _git(["rev-list", f"--max-count={limit}", rev, "--", *rels], root)
    if out.returncode != 0:
        raise CheckError(f"git:{rev}: {out.stderr.decode(errors='replace').strip()}")
    revs = out.stdout.decode().split()
    return [first, *(r for r in revs if r != first)][:limit]


def materialize(rev: str, rels: Sequence[str], root: Path, tmp: Path) -> list[Path]:
    """The repository-relative paths ``rels`` as they were at ``rev`` (a verified
    commit), written under ``tmp`` with the same relative paths; raises
    :class:`CheckError`. Paths that did not exist at ``rev`` are left out
    (everything in them counts as added)."""
    present = [
        rel
        for rel in rels
        if _git(["cat-file", "-e", f"{rev}:{rel}"], root).returncode == 0
    ]
    tmp.mkdir(parents=True, exist_ok=True)
    if not present:
        return []
    archive = _git(["archive", "--format=tar", rev, "--", *present], root)
    if archive.returncode != 0:
        raise CheckError(f"git:{rev}: {archive.stderr.decode(errors='replace')}")
    import tarfile  # only for a git: side

    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tmp, filter="data")
    return [tmp / r for r in present]


def _identity(paths: Sequence[Path]) -> list[tuple[str, str]] | None:
    """``(path, sha256)`` of every source file ``paths`` expands to, in discovery
    order, read with the loader's own limits; ``None`` when discovery or a read
    reports anything (then the side is compiled, which reports it)."""
    probe = Reporter()
    found = discover(paths, probe)
    out: list[tuple[str, str]] = []
    for path, _rel in found:
        data = read_reported(path, probe)
        if data is None:
            return None
        out.append((str(path), hashlib.sha256(data).hexdigest()))
    return None if len(probe) else out


def _same_docs(docs: Sequence[SourceDoc], identity: list[tuple[str, str]]) -> bool:
    """Whether the compiled ``docs`` are exactly the files of ``identity`` (the same
    paths with the same bytes): the side would compile to the same model."""
    return [(d.path, d.sha256) for d in docs] == identity


@dataclass
class _Side:
    """A compiled side: its model and, when known, the identity of its sources
    (:func:`_identity`)."""

    model: LinkedModel
    identity: list[tuple[str, str]] | None


def _cache_key(
    paths: Sequence[Path],
    externals: Sequence[Path],
    identity: list[tuple[str, str]],
    ext_identity: list[tuple[str, str]],
) -> str:
    """The IR-cache key of one side: the paths as given (spans cite them), the
    externals as given (``DIR=PACKAGE`` included), and every file's path and
    sha256 (:mod:`atdata_gen.ircache` adds the compiler's own digest)."""
    return ircache.entry_key(
        [
            "check-side",
            *map(str, paths),
            "|",
            *map(str, externals),
            "|",
            *(f"{p}\0{h}" for p, h in identity),
            "|",
            *(f"{p}\0{h}" for p, h in ext_identity),
        ]
    )


def _compile_side(
    paths: Sequence[Path],
    externals: Sequence[Path],
    label: str,
    scratch: tuple[str, str] | None = None,
) -> _Side:
    """Compile one side (see :func:`_compile_result`), through the IR cache when
    its files can be identified: a side that compiled without errors is stored
    under :func:`_cache_key` and a later check of the same bytes loads it instead
    of compiling (a side with errors is never stored: it is compiled again, so its
    errors are reported). A scratch side (a ``git:`` revision read into a fresh
    temporary directory) is never cached."""
    identity = _identity(paths) if scratch is None else None
    ext_identity = _identity(externals) if identity is not None else None
    key = None
    if identity is not None and ext_identity is not None:
        try:
            key = _cache_key(paths, externals, identity, ext_identity)
        except OSError:  # the compiler's own files unreadable: no cache
            key = None
        cached = ircache.load(key) if key is not None else None
        if isinstance(cached, LinkedModel):
            return _Side(cached, identity)
    result = _compile_result(paths, externals, label, scratch)
    assert result.model is not None
    if (
        key is not None
        and identity is not None
        and _same_docs(result.docs, identity)
        and _identity(externals) == ext_identity  # nothing changed meanwhile
    ):
        ircache.store(key, result.model)
    return _Side(result.model, identity)


def _compile_result(
    paths: Sequence[Path],
    externals: Sequence[Path],
    label: str,
    scratch: tuple[str, str] | None = None,
) -> BuildResult:
    """Compile one side; raises :class:`CheckError` (with its errors, the scratch
    directory's paths relabelled) when it does not compile."""
    # The front end is imported only when a side is compiled (not when both come
    # from the IR cache).
    from ..pipeline import BuildOptions, compile_sources

    reporter = Reporter()
    result = compile_sources(BuildOptions(paths, externals=externals), reporter)
    if reporter.has_errors or result.model is None:
        errors = reporter.errors
        if scratch is not None:  # never cite the temporary checkout
            prefix, as_label = scratch
            errors = [
                replace(
                    d,
                    span=replace(d.span, path=as_label + d.span.path[len(prefix) :]),
                )
                if d.span.path.startswith(prefix)
                else d
                for d in errors
            ]
        unread = any(
            d.rule in ("SRC_NOT_FOUND", "SRC_NOT_REGULAR", "SRC_READ") for d in errors
        )
        why = "cannot be read" if unread else "do not compile"
        raise CheckError(f"cannot compare: the {label} schemas {why}", errors)
    return result


def _relabel(findings: list[Finding], prefix: str, label: str) -> list[Finding]:
    """Locations under the scratch ``prefix`` become ``label:rel``: the previous
    side's, and the current one's where a finding has only the previous location
    (a deleted def is reported where it was)."""
    out = []
    for f in findings:
        for side in ("previous", "current"):
            at = getattr(f, side)
            if at.path.startswith(prefix):
                at = replace(at, path=label + at.path[len(prefix) :])
                f = replace(f, **{side: at})
        out.append(f)
    return out


def run_check(
    sources: Sequence[Path],
    against: Sequence[str],
    *,
    externals: Sequence[Path] = (),
    policy: CheckPolicy | None = None,
    transitive: bool = False,
    cwd: Path | None = None,
    history_limit: int = 50,
) -> CheckResult:
    """Compare ``sources`` (the current side) with ``against`` (files/directories
    and ``git:REV`` specs; together they are the previous side). Raises
    :class:`CheckError` when a side cannot be read or compiled."""
    policy = policy or CheckPolicy()
    cwd = cwd or Path.cwd()
    compiled = _compile_side(sources, externals, "current")
    current = compiled.model
    plain = [Path(a) for a in against if not a.startswith("git:")]
    revs = [a.removeprefix("git:") or "HEAD" for a in against if a.startswith("git:")]
    findings: set[Finding] = set()
    compared: list[str] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="atdata-gen-check-") as tmp:
        # (label, paths, (scratch prefix, label it stands for) or None)
        sides: list[tuple[str, list[Path], tuple[str, str] | None]] = []
        if not revs:
            sides.append((", ".join(map(str, plain)), plain, None))
        else:
            root = _toplevel(cwd)
            rels = [str(p.resolve().relative_to(root)) for p in sources]
            for rev in revs:
                if rev == "HEAD" and _unborn(root):
                    notes.append(
                        "git:HEAD: the repository has no commit yet; nothing to "
                        "compare with (every schema is new)"
                    )
                    continue
                history = (
                    git_history(rev, rels, root, history_limit)
                    if transitive
                    else [_commit(rev, root)]
                )
                for i, commit in enumerate(history):
                    scratch = Path(tmp) / f"{len(sides)}"
                    paths = materialize(commit, rels, root, scratch)
                    label = rev if i == 0 else commit[:12]
                    sides.append(
                        (f"git:{label}", [*paths, *plain], (f"{scratch}/", f"{label}:"))
                    )
            if not sides and plain:  # every git side skipped (no commit yet)
                sides.append((", ".join(map(str, plain)), plain, None))
        for label, paths, scratch_label in sides:
            # The same files with the same bytes (`check DIR --against DIR`, or a
            # revision equal to the working tree read from it) compile to the same
            # model: it is reused, not compiled twice (issue 17). Externals are
            # the same on both sides by construction.
            identity = None
            if scratch_label is None:
                same_paths = list(map(str, paths)) == list(map(str, sources))
                identity = compiled.identity if same_paths else _identity(paths)
            if identity is not None and identity == compiled.identity:
                previous = current
            else:
                previous = _compile_side(
                    paths, externals, f"previous ({label})", scratch_label
                ).model
            found = compare(previous, current, policy.mode, transitive=transitive)
            if scratch_label is not None:
                found = _relabel(found, *scratch_label)
            findings.update(found)
            compared.append(label)
    kept = sorted(f for f in findings if policy.keeps(f))
    return CheckResult(kept, compared, len(findings) - len(kept), notes)


def locate(f: Finding) -> Span:
    """The location a finding is reported at (current side, else previous)."""
    return f.current if f.current.path else f.previous
