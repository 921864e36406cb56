"""Exit statuses of ``atdata-ingest run`` and the exceptions that carry them.

The statuses follow BSD ``sysexits.h`` so that a supervisor (``--supervise``,
systemd's ``RestartPreventExitStatus=``) can tell an intentional crash from a
configuration mistake:

====  ==============  =====================================================  =======
code  name            meaning                                                restart
====  ==============  =====================================================  =======
0     OK              clean stop (SIGTERM/SIGINT): reading stopped, every    no
                      buffered event committed
70    SOFTWARE        a bug (an unexpected exception)                        yes
73    CANTCREAT       another ingester holds the advisory lock               yes
74    IOERR           PostgreSQL unavailable beyond ``db_retry_seconds``     yes
75    TEMPFAIL        the in-memory buffer overflowed (intentional: the      yes
                      restart resumes from the committed cursor, seed 002
                      §12 "Backpressure behavior"); or the stored cursor
                      went back below what this process committed
                      (PostgreSQL lost acknowledged commits: the restart
                      resumes from the stored cursor and the relay replays
                      the lost seqs)
78    CONFIG          bad settings (an unknown relay for the stored cursor,  **no**
                      a malformed variable)
====  ==============  =====================================================  =======
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CANTCREAT",
    "CONFIG",
    "IOERR",
    "NO_RESTART",
    "OK",
    "SOFTWARE",
    "TEMPFAIL",
    "BufferOverflow",
    "ConfigError",
    "CursorRegressed",
    "DatabaseUnavailable",
    "IngestExit",
    "LockHeld",
]

OK: Final = 0
SOFTWARE: Final = 70
CANTCREAT: Final = 73
IOERR: Final = 74
TEMPFAIL: Final = 75
CONFIG: Final = 78

#: Statuses after which restarting cannot help (the supervisor gives up).
NO_RESTART: Final = frozenset({OK, CONFIG})


class IngestExit(Exception):
    """Ends the ingester with :attr:`status`; ``str(exc)`` is the one log line that
    says why (credentials already redacted)."""

    status: int = SOFTWARE


class ConfigError(IngestExit, ValueError):
    """A setting is malformed or contradicts the stored state (exit 78). The message
    names the variable (``ATDATA_INGEST_BATCH_MAX: ...``) and why."""

    status = CONFIG


class LockHeld(IngestExit):
    """Another ingester holds the advisory lock of this database (exit 73)."""

    status = CANTCREAT


class DatabaseUnavailable(IngestExit):
    """PostgreSQL stayed unreachable for longer than the retry window (exit 74)."""

    status = IOERR


class BufferOverflow(IngestExit):
    """The bounded in-memory buffer is full: the database cannot keep up. Exiting
    is the designed response (exit 75); nothing is lost, the restart resumes from
    the committed cursor."""

    status = TEMPFAIL


class CursorRegressed(IngestExit):
    """The stored cursor (``ingest_cursor.last_seq``, read under ``FOR UPDATE``)
    is below the last seq this process committed: PostgreSQL lost commits it had
    acknowledged (``synchronous_commit`` off and a server crash, or a failover to
    a standby that was behind). Carrying on from memory would leave a permanent
    hole (the lost seqs are not in the buffer any more); exiting (75) makes the
    restart resume from the stored cursor, and the relay replays the gap."""

    status = TEMPFAIL
