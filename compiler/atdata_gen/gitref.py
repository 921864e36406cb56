"""Code references from git, for ``atdata-gen publish lens``.

A lens record names its getter and putter as ``module:function`` at a commit of a
repository (Lexicon ``science.alt.dataset.lens#codeReference``). Anyone reading the
record must be able to fetch exactly that code, so :func:`code_reference` refuses
what would make the reference a lie:

* the function's file has uncommitted changes, or is not tracked
  (``GIT_DIRTY``): the published commit would not hold the code that was run;
* the commit is on no remote-tracking branch (``GIT_UNPUSHED``): nobody else can
  fetch it;
* the function is not importable by module name (defined in ``__main__``, nested,
  a lambda) (``GIT_NOT_IMPORTABLE``).

The repository URL is the remote's fetch URL with any credentials removed (an
``https://user:token@host/…`` URL, or one with ``?access_token=…``, never reaches a
record: :func:`strip_credentials`). Git is run as a
subprocess (``git`` on ``PATH``); nothing here writes to the repository.
"""

from __future__ import annotations

import inspect
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atdata_runtime.net.redact import redact_url

from .diagnostics import redact_urls

__all__ = ["GitRefError", "SourceRef", "code_reference", "strip_credentials"]


class GitRefError(ValueError):
    """A code reference cannot be made honestly; ``rule`` says why (``GIT_*``).
    URLs in the message (git's own output included) carry no credentials
    (:func:`atdata_gen.diagnostics.redact_urls`)."""

    def __init__(self, rule: str, message: str) -> None:
        self.rule = rule
        super().__init__(f"{redact_urls(message)} [{rule}]")


@dataclass(frozen=True)
class SourceRef:
    """Where a function lives: ``repository`` (remote URL), ``commit`` (40 hex
    digits), ``branch`` (the remote branch holding the commit, e.g. ``main``),
    ``path`` (``module:function``) and ``file`` (path in the repository)."""

    repository: str
    commit: str
    branch: str
    path: str
    file: str

    def to_record(self) -> dict[str, str]:
        """The ``codeReference`` object of a lens record."""
        return {
            "repository": self.repository,
            "commit": self.commit,
            "path": self.path,
            "branch": self.branch,
            "language": "python",
        }


def _git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise GitRefError(
            "GIT_ERROR", f"git {' '.join(args)} failed in {cwd}: {proc.stderr.strip()}"
        )
    return proc.stdout


def strip_credentials(url: str) -> str:
    """``url`` without credentials, as it may be published: no user name or
    password (``https://u:t@h/r`` → ``https://h/r``) and no credential-like query or
    fragment parameter (``access_token``, ``token``, ``private_token``, ``sig``,
    ``signature``, ``key``, ``api_key``, ``X-Amz-*``…:
    :func:`atdata_runtime.net.redact.is_secret_param`), which are dropped. scp-like
    ``git@host:path`` addresses are kept (the user there is the SSH account, not a
    secret)."""
    return redact_url(url, drop=True)


def code_reference(fn: Any, *, remote: str | None = None) -> SourceRef:
    """The code reference of function ``fn`` at the current commit of the git
    repository holding its file. ``remote`` picks the remote (default: the one of
    the first remote branch that contains the commit, ``origin`` preferred).
    Raises :class:`GitRefError` (rules ``GIT_NOT_IMPORTABLE``, ``GIT_DIRTY``,
    ``GIT_UNPUSHED``, ``GIT_NO_REMOTE``, ``GIT_ERROR``)."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or not qualname.isidentifier():
        raise GitRefError(
            "GIT_NOT_IMPORTABLE",
            f"{module}:{qualname} is not a module-level function of an importable "
            "module (readers bind it by module:function)",
        )
    try:
        source = inspect.getsourcefile(fn)
    except TypeError:
        source = None
    if source is None:
        raise GitRefError(
            "GIT_NOT_IMPORTABLE", f"{module}:{qualname} has no source file"
        )
    file = Path(source).resolve()
    top = Path(_git(file.parent, "rev-parse", "--show-toplevel").strip())
    rel = file.relative_to(top).as_posix()
    if not _git(top, "ls-files", "--", rel).strip():
        raise GitRefError("GIT_DIRTY", f"{rel} is not tracked by git: commit it first")
    dirty = _git(top, "status", "--porcelain", "--", rel).strip()
    if dirty:
        raise GitRefError(
            "GIT_DIRTY",
            f"{rel} has uncommitted changes ({dirty.split()[0]}): commit and push "
            "first, so the published commit holds the code you ran",
        )
    commit = _git(top, "rev-parse", "HEAD").strip()
    branches = [
        b.strip()
        for b in _git(top, "branch", "-r", "--contains", commit).splitlines()
        if b.strip() and "->" not in b
    ]
    if remote is not None:
        branches = [b for b in branches if b.startswith(remote + "/")]
    if not branches:
        raise GitRefError(
            "GIT_UNPUSHED",
            f"commit {commit[:12]} is on no remote branch"
            + (f" of {remote!r}" if remote else "")
            + ": push it first, so readers can fetch it",
        )
    branches.sort(key=lambda b: (not b.startswith("origin/"), b))
    chosen = branches[0]
    remote_name, _, branch = chosen.partition("/")
    url = _git(top, "remote", "get-url", remote_name).strip()
    if not url:
        raise GitRefError("GIT_NO_REMOTE", f"remote {remote_name!r} has no URL")
    return SourceRef(
        strip_credentials(url), commit, branch, f"{module}:{qualname}", rel
    )
