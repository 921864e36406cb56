"""Code references from git (``atdata-gen publish lens``): credentials never reach
a record, and functions that readers could not bind are refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from atdata_gen.gitref import GitRefError, code_reference, strip_credentials


@pytest.mark.parametrize(
    ("url", "clean"),
    [
        (
            "https://user:ghp_secret@github.com/lab/x.git",
            "https://github.com/lab/x.git",
        ),
        ("https://token@example.org:8443/x", "https://example.org:8443/x"),
        ("git@github.com:lab/x.git", "git@github.com:lab/x.git"),
        ("/srv/git/x.git", "/srv/git/x.git"),
        # credential-like query and fragment parameters are dropped (issue 14)
        (
            "https://gitlab.example.org/lab/x.git?private_token=glpat-1&ref=main",
            "https://gitlab.example.org/lab/x.git?ref=main",
        ),
        ("https://h.example/x.git?access_token=abc", "https://h.example/x.git"),
        (
            (
                "https://u:p@h.example/x?X-Amz-Credential=a&X-Amz-Signature=b&sig=c"
                "&api_key=d&key=e&token=f#id_token=g"
            ),
            "https://h.example/x",
        ),
        ("https://h.example/x?q=token", "https://h.example/x?q=token"),
    ],
)
def test_credentials_are_stripped(url: str, clean: str) -> None:
    assert strip_credentials(url) == clean


def test_git_errors_carry_no_credentials(tmp_path: Path) -> None:
    """git's stderr names the remote URL; a GitRefError message must not."""
    err = GitRefError(
        "GIT_ERROR",
        "fatal: unable to access 'https://bob:ghp_tok@github.com/x.git/?token=t2'",
    )
    assert "ghp_tok" not in str(err) and "bob" not in str(err)
    assert "t2" not in str(err) and "github.com/x.git" in str(err)


def test_remote_url_in_reference_has_no_credentials(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@e", *args],
            cwd=tmp_path / "w",
            check=True,
            capture_output=True,
        )

    subprocess.run(
        ["git", "init", "-q", "--bare", "-b", "main", str(tmp_path / "r")], check=True
    )
    (tmp_path / "w").mkdir()
    git("init", "-q", "-b", "main")
    (tmp_path / "w" / "refmod.py").write_text("def f(x: int) -> int:\n    return x\n")
    git("add", "-A")
    git("commit", "-q", "-m", "m")
    git("remote", "add", "origin", str(tmp_path / "r"))
    git("push", "-q", "origin", "main")
    git("remote", "set-url", "origin", "https://u:secret@example.org/lab/x.git")
    git("fetch", "-q", str(tmp_path / "r"), "main:refs/remotes/origin/main")
    sys.path.insert(0, str(tmp_path / "w"))
    try:
        import refmod

        ref = code_reference(refmod.f)
        assert ref.repository == "https://example.org/lab/x.git"
        assert ref.path == "refmod:f" and ref.branch == "main" and len(ref.commit) == 40
        assert ref.file == "refmod.py"
        with pytest.raises(GitRefError, match="GIT_NOT_IMPORTABLE"):
            code_reference(lambda x: x)
    finally:
        sys.path.remove(str(tmp_path / "w"))
        sys.modules.pop("refmod", None)
