"""Saved login sessions: one JSON file per account, readable by its owner only.

The file holds the PDS URL, DID, handle and the atproto SDK's session string (access
and refresh JWTs). It is written atomically (a temporary file in the same directory,
``fsync``, ``rename``) with mode 0600 from the moment it exists, so no other user
can ever read a token, and a crash never leaves half a file. The default location
is ``$XDG_STATE_HOME/atdata-gen/sessions/`` (``~/.local/state`` when unset).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SavedSession", "Secret", "SessionStore", "default_session_path"]


class Secret:
    """A string that never prints: ``repr`` and ``str`` are ``'***'``; the value is
    :meth:`reveal`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True)
class SavedSession:
    """What a session file holds; ``session`` (the SDK session string) is a
    :class:`Secret`."""

    pds: str
    did: str
    handle: str
    session: Secret


def default_session_path(identifier: str, pds: str | None = None) -> Path:
    """The session file for an account (handle or DID) on a PDS."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    digest = hashlib.sha256(f"{identifier.lower()}\n{pds or ''}".encode()).hexdigest()
    return base / "atdata-gen" / "sessions" / f"{digest[:24]}.json"


class SessionStore:
    """Load and save one :class:`SavedSession` at ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"SessionStore({str(self.path)!r})"

    def load(self) -> SavedSession | None:
        """The saved session, or ``None`` when there is none or it is unreadable
        (a corrupt file is ignored, not an error: logging in again replaces it)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return SavedSession(
                pds=str(data["pds"]),
                did=str(data["did"]),
                handle=str(data["handle"]),
                session=Secret(str(data["session"])),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, saved: SavedSession) -> None:
        """Write atomically with mode 0600 (the directory is created 0700)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = json.dumps(
            {
                "pds": saved.pds,
                "did": saved.did,
                "handle": saved.handle,
                "session": saved.session.reveal(),
            }
        )
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".session-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def clear(self) -> None:
        """Delete the saved session (logout)."""
        self.path.unlink(missing_ok=True)
