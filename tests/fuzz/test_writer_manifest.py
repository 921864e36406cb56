"""Hostile manifests (issue 14, finding 10): a ``.atdata-gen.json`` whose ``files``
names traversals, absolute paths, backslashes, NUL, links leading out of the package
and FIFOs. Whatever it says, :func:`read_manifest` keeps only plain paths inside the
package, :func:`is_fresh` neither raises nor hangs, and a write deletes nothing
outside the package nor any file the manifest does not own with its exact content."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from atdata_gen.backend.manifest import (
    MANIFEST_NAME,
    is_fresh,
    read_manifest,
    safe_relpath,
)
from atdata_gen.backend.write import write_package
from hypothesis import given, settings
from hypothesis import strategies as st

VICTIM = b"PRECIOUS = 1\n"
DIGEST = hashlib.sha256(VICTIM).hexdigest()

_segment = st.sampled_from(
    ["..", ".", "", "a", "b.py", "mine.py", "link", "pipe.py", "zero", "x\\y", "c:"]
    + ["\0", "é"]
)
_path = st.lists(_segment, min_size=1, max_size=5).map("/".join) | st.sampled_from(
    ["/etc/passwd", "//x", "../victim/precious.py", "link/precious.py", "a" * 300]
)
_digest = st.sampled_from([DIGEST, "0" * 64, "zz", "", 5, None])


def _package(tmp: Path) -> tuple[Path, Path]:
    root = tmp / "out" / "pkg"
    write_package(root, {"a/b.py": "B = 1\n", "keep.py": "K = 1\n"})
    victim_dir = tmp / "victim"
    victim_dir.mkdir()
    (victim_dir / "precious.py").write_bytes(VICTIM)
    (root / "mine.py").write_bytes(VICTIM)  # the user's, with the listed digest
    os.symlink(victim_dir, root / "link")
    os.symlink("/dev/zero", root / "zero")
    os.mkfifo(root / "pipe.py")
    return root, victim_dir


@settings(derandomize=True, max_examples=40, deadline=None)
@given(
    files=st.dictionaries(_path, _digest, max_size=8),
    extra=st.sampled_from([None, [], "x", {"nested": {}}, 1e308]),
)
def test_hostile_manifest_files(
    tmp_path_factory: pytest.TempPathFactory,
    files: dict[str, object],
    extra: object,
) -> None:
    root, victim_dir = _package(tmp_path_factory.mktemp("m"))
    doc: dict[str, object] = {"inputs": "x", "files": files, "diagnostics": extra}
    (root / MANIFEST_NAME).write_text(json.dumps(doc))
    manifest, _ = read_manifest(root)
    assert manifest is not None
    for rel in manifest.files:
        assert safe_relpath(rel)
        full = os.path.normpath(root / rel)
        assert full.startswith(str(root) + os.sep), rel
    assert not is_fresh(root, "x") or all(
        (root / rel).is_file() for rel in manifest.files
    )
    # A build that no longer emits keep.py: only exactly-owned files may go.
    write_package(root, {"a/b.py": "B = 1\n"})
    assert (victim_dir / "precious.py").read_bytes() == VICTIM
    assert (root / "link").is_symlink() and (root / "zero").is_symlink()
    assert (root / "pipe.py").is_fifo(), "the user's FIFO was not carried over"
    mine_listed = files.get("mine.py") == DIGEST
    assert (root / "mine.py").exists() is not mine_listed
    assert (root / "keep.py").exists(), "keep.py was never listed with its digest"
