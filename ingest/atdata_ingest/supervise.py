"""``atdata-ingest run --supervise``: the supervisor, the Python way.

The ingester is built to crash on purpose (seed 002 §4, "crashes are expected and
healthy"): a full buffer exits 75, a database gone beyond the retry window exits
74, and the last committed cursor is the only state that matters. Something must
restart it. Under systemd that is the unit (``scripts/atdata-ingest.service``:
``Restart=on-failure``, ``RestartPreventExitStatus=2 78``); without systemd it is
this module.

The supervisor runs the ingester as a **child process**
(``sys.executable -m atdata_ingest run …`` with the same environment, never in
the supervisor's own interpreter), waits for it, and decides by its exit status
(:mod:`atdata_ingest.exits`):

====================  =========================================================
child exit status     supervisor
====================  =========================================================
0 (clean stop)        exits 0
78 EX_CONFIG          exits 78, no restart: the settings will not fix themselves
2 (bad usage)         exits 2, no restart: argparse refused the command line (the
                      child gets none, so only a broken installation does this)
anything else         restarts after a backoff: 75 buffer overflow, 74 database
                      unavailable, 73 another ingester holds the lock, 70 a bug,
                      death by a signal (SIGKILL, the OOM killer, …)
====================  =========================================================

**Backoff.** The n-th consecutive restart waits ``min(initial · 2ⁿ⁻¹, maximum)``
seconds (defaults 0.5 s doubling to 30 s), times a jitter factor drawn uniformly
from ``[1 − jitter, 1 + jitter]`` (default ±20 %, so a delay always exceeds the
one before it until the cap). A child that stayed up ``reset_after`` seconds
(default 60 s) resets the count. Every exit is logged with its status *by name*
and the delay chosen (``restart_in=…s``).

**Stopping.** SIGTERM, SIGINT or SIGHUP to the supervisor is forwarded to the
child (SIGHUP as SIGTERM, which the ingester handles; each signal received is
forwarded once: a second Ctrl-C reaches the child too); the supervisor waits up to ``stop_timeout`` seconds (default 25 s, below
systemd's default ``TimeoutStopSec``) for the child's clean stop (stop reading,
flush, commit, exit 0), SIGKILLs it after that, and exits 0. A signal during a
backoff wait ends the wait at once.

**No orphans.** The child asks the kernel for ``PR_SET_PDEATHSIG = SIGKILL``
(``prctl(2)``, Linux) before it executes the ingester, and checks that its parent
is still the supervisor right after (the parent may have died between ``fork``
and ``prctl``): a SIGKILLed supervisor takes its child with it. Nothing is lost
by that SIGKILL: the cursor advances only in the transaction that stored the
batch. The child runs in its own process group, so a terminal's Ctrl-C reaches
it only through the supervisor (once, not twice). On a system without
``prctl`` (not Linux) the supervisor still works but cannot promise this.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Final

from . import exits

__all__ = [
    "NO_RESTART",
    "STOP_SIGNALS",
    "USAGE",
    "Backoff",
    "child_command",
    "describe_exit",
    "supervise",
]

log = logging.getLogger("atdata_ingest.supervise")

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""Signals that stop the supervisor cleanly (forwarded to the child)."""

USAGE: Final = 2
"""argparse's status for a command line it refuses (``atdata_ingest.cli.EXIT_USAGE``)."""

#: Child statuses after which the supervisor exits with the same status instead
#: of restarting: restarting cannot fix them (0, a clean stop, ends it too).
NO_RESTART: Final = frozenset({exits.CONFIG, USAGE})

#: Exit statuses of ``atdata-ingest run`` (:mod:`atdata_ingest.exits`), by their
#: ``sysexits.h`` name (argparse's 2 has none), with what they mean here.
EXIT_NAMES: Final[dict[int, tuple[str, str]]] = {
    exits.OK: ("EX_OK", "clean stop"),
    USAGE: ("USAGE", "bad usage"),
    exits.SOFTWARE: ("EX_SOFTWARE", "a bug"),
    exits.CANTCREAT: ("EX_CANTCREAT", "another ingester holds the lock"),
    exits.IOERR: ("EX_IOERR", "database unavailable"),
    exits.TEMPFAIL: ("EX_TEMPFAIL", "buffer overflow"),
    exits.CONFIG: ("EX_CONFIG", "bad settings"),
}

_PR_SET_PDEATHSIG: Final = 1  # <linux/prctl.h>
_POLL_S: Final = 0.1  # how often the main loop looks at its child and its signals


@dataclass(frozen=True)
class Backoff:
    """Restart delays, in seconds: ``initial`` doubling up to ``maximum``, times a
    factor uniform in ``[1 - jitter, 1 + jitter]``; the count of consecutive
    restarts is reset when a child stayed up ``reset_after`` seconds.

    Raises :class:`ValueError` for a non-positive ``initial``, ``maximum <
    initial``, ``jitter`` outside ``[0, 0.5)`` or a negative ``reset_after``."""

    initial: float = 0.5
    maximum: float = 30.0
    jitter: float = 0.2
    reset_after: float = 60.0

    def __post_init__(self) -> None:
        if not self.initial > 0:
            raise ValueError(f"backoff initial must be > 0 s, got {self.initial}")
        if not self.maximum >= self.initial:
            raise ValueError(
                f"backoff maximum ({self.maximum} s) must be >= initial "
                f"({self.initial} s)"
            )
        if not 0 <= self.jitter < 0.5:
            raise ValueError(f"backoff jitter must be in [0, 0.5), got {self.jitter}")
        if not self.reset_after >= 0:
            raise ValueError(
                f"backoff reset_after must be >= 0 s, got {self.reset_after}"
            )

    def base(self, attempt: int) -> float:
        """The delay before restart number ``attempt`` (1, 2, …) without jitter."""
        return min(self.initial * 2.0 ** max(attempt - 1, 0), self.maximum)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """:meth:`base` with jitter (never above ``maximum · (1 + jitter)``)."""
        return self.base(attempt) * rng.uniform(1 - self.jitter, 1 + self.jitter)


def describe_exit(returncode: int) -> str:
    """``returncode`` (as :attr:`subprocess.Popen.returncode`: negative for a
    signal) by name: ``"75 EX_TEMPFAIL (buffer overflow)"``,
    ``"killed by SIGKILL"``, ``"exit status 3"``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    known = EXIT_NAMES.get(returncode)
    if known is None:
        return f"exit status {returncode}"
    return f"{returncode} {known[0]} ({known[1]})"


def child_command(args: Sequence[str]) -> list[str]:
    """The child's argv: this interpreter running ``atdata_ingest run ARGS``
    (``--supervise`` must not be among ``args``)."""
    if "--supervise" in args:
        raise ValueError("the child command must not supervise itself")
    return [sys.executable, "-m", "atdata_ingest", "run", *args]


def _pdeathsig_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that sets ``PR_SET_PDEATHSIG = SIGKILL`` and kills the child
    at once when its parent already died; ``None`` where there is no ``prctl``.
    libc is loaded here, before any fork."""
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
    prctl.argtypes += [ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    sigkill = int(signal.SIGKILL)

    def hook() -> None:
        # runs in the child between fork and exec: no logging, no allocation-heavy
        # work; the signal mask and dispositions are the parent's until exec
        if prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0) != 0:
            os._exit(exits.SOFTWARE)
        if os.getppid() != parent:  # the supervisor died before prctl
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


class _Signals:
    """Stop signals received and not yet forwarded to the child (handlers only
    record; the main loop forwards)."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.forwarded = 0
        self._previous: dict[int, object] = {}

    @property
    def stopping(self) -> bool:
        return bool(self.received)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()

    def pending(self) -> list[int]:
        new = self.received[self.forwarded :]
        self.forwarded += len(new)
        return new


def supervise(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    backoff: Backoff | None = None,
    stop_timeout: float = 25.0,
    rng: random.Random | None = None,
    max_restarts: int | None = None,
) -> int:
    """Run ``command`` (normally :func:`child_command`) as a child process and
    restart it by the rules of this module; return the supervisor's exit status:
    0 after a clean stop (the child's exit 0, or a stop signal to the supervisor),
    78 or 2 when the child exits with it (bad settings, bad usage:
    :data:`NO_RESTART`).

    ``env``: the child's environment (default: this process's). ``max_restarts``
    (tests): give up after that many restarts and return the last child's status
    (a signal death as ``128 + signal``). Must run in the main thread (it installs
    signal handlers, and restores the previous ones on return).

    Raises :class:`OSError` when the child cannot be started at all (no such
    interpreter): that is a broken installation, not a fault to retry."""
    backoff = backoff or Backoff()
    rng = rng or random.Random()
    signals = _Signals()
    hook = _pdeathsig_hook()
    if hook is None:
        log.warning(
            "supervise: no prctl(PR_SET_PDEATHSIG) on this system: a SIGKILLed "
            "supervisor leaves its child running"
        )
    signals.install()
    attempt = 0
    restarts = 0
    try:
        while True:
            if signals.stopping:
                log.info("supervise: stop signal before start; exiting 0")
                return exits.OK
            child = subprocess.Popen(
                list(command),
                env=dict(env) if env is not None else None,
                # the supervisor is single-threaded: fork + preexec_fn is safe
                preexec_fn=hook,  # noqa: PLW1509
                process_group=0,
                stdin=subprocess.DEVNULL,
            )
            started = time.monotonic()
            log.info("supervise: started child pid=%d", child.pid)
            returncode = _wait(child, signals, stop_timeout)
            uptime = time.monotonic() - started
            what = describe_exit(returncode)
            if signals.stopping:
                log.info(
                    "supervise: child pid=%d ended: %s uptime=%.3fs; exiting 0",
                    child.pid, what, uptime,
                )  # fmt: skip
                return exits.OK
            if returncode == exits.OK:
                log.info(
                    "supervise: child pid=%d ended: %s uptime=%.3fs; clean stop, "
                    "exiting 0",
                    child.pid, what, uptime,
                )  # fmt: skip
                return exits.OK
            if returncode in NO_RESTART:
                fix = "the settings" if returncode == exits.CONFIG else "the command"
                log.error(
                    "supervise: child pid=%d ended: %s uptime=%.3fs; not restarting "
                    "(fix %s), exiting %d",
                    child.pid, what, uptime, fix, returncode,
                )  # fmt: skip
                return returncode
            if uptime >= backoff.reset_after:
                attempt = 0
            attempt += 1
            if max_restarts is not None and restarts >= max_restarts:
                log.error(
                    "supervise: child pid=%d ended: %s uptime=%.3fs; "
                    "%d restarts done, giving up",
                    child.pid, what, uptime, restarts,
                )  # fmt: skip
                return returncode if returncode >= 0 else 128 - returncode
            delay = backoff.delay(attempt, rng)
            log.warning(
                "supervise: child pid=%d ended: %s uptime=%.3fs; restart=%d "
                "backoff=%.3fs restart_in=%.3fs",
                child.pid, what, uptime, attempt, backoff.base(attempt), delay,
            )  # fmt: skip
            if _sleep(delay, signals):
                log.info("supervise: stop signal during backoff; exiting 0")
                return exits.OK
            restarts += 1
    finally:
        signals.restore()


def _wait(
    child: subprocess.Popen[bytes], signals: _Signals, stop_timeout: float
) -> int:
    """Wait for ``child``; forward stop signals; SIGKILL it ``stop_timeout`` seconds
    after the first one. Returns its return code."""
    deadline: float | None = None
    while True:
        for sig in signals.pending():
            log.info(
                "supervise: received %s, forwarding to child pid=%d",
                signal.Signals(sig).name, child.pid,
            )  # fmt: skip
            _send(child, signal.SIGTERM if sig == signal.SIGHUP else sig)
            if deadline is None:
                deadline = time.monotonic() + stop_timeout
        try:
            return child.wait(timeout=_POLL_S)
        except subprocess.TimeoutExpired:
            pass
        if deadline is not None and time.monotonic() > deadline:
            log.error(
                "supervise: child pid=%d still running %.1fs after the stop "
                "signal; sending SIGKILL",
                child.pid, stop_timeout,
            )  # fmt: skip
            _send(child, signal.SIGKILL)
            return child.wait()


def _send(child: subprocess.Popen[bytes], sig: int) -> None:
    try:
        child.send_signal(sig)
    except ProcessLookupError:  # already gone; wait() collects it
        pass


def _sleep(seconds: float, signals: _Signals) -> bool:
    """Sleep ``seconds``, in slices; ``True`` when a stop signal came."""
    end = time.monotonic() + seconds
    while not signals.stopping:
        left = end - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(left, _POLL_S))
    return True
