"""The supervisor of ``atdata-ingest run --supervise`` (:mod:`atdata_ingest.supervise`)
and the systemd unit (``scripts/atdata-ingest.service``), for real: the supervisor
runs in its own process, its children are real processes (small ``sh`` scripts that
exit with a chosen status, or ignore SIGTERM), and the signals are real.

The ingester itself under the supervisor is exercised by ``test_faults.py``; here
the children are stand-ins so that every exit status can be produced on demand.
No assertion is about elapsed time: backoff is checked on the delays the supervisor
logs, and timeouts are failure guards only.
"""

from __future__ import annotations

import configparser
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from atdata_ingest import exits
from atdata_ingest.supervise import (
    EXIT_NAMES,
    NO_RESTART,
    USAGE,
    Backoff,
    child_command,
    describe_exit,
)

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "scripts" / "atdata-ingest.service"
GUARD = 60.0  # seconds: failure guard of every wait


# -- helpers ----------------------------------------------------------------------


def _supervisor(
    tmp: Path,
    child: str,
    *,
    initial: float = 0.05,
    maximum: float = 0.4,
    reset_after: float = 60.0,
    stop_timeout: float = 10.0,
    max_restarts: int | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """A real supervisor process (this interpreter, :func:`supervise`) running the
    shell script ``child`` (``$STATE`` is a directory for the child's files);
    stderr (the log) is captured."""
    script = tmp / "child.sh"
    script.write_text(textwrap.dedent(child))
    code = textwrap.dedent(
        f"""
        import logging, random, sys
        from atdata_ingest.supervise import Backoff, supervise
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(levelname)s %(message)s")
        sys.exit(supervise(
            ["/bin/sh", {str(script)!r}],
            backoff=Backoff(initial={initial}, maximum={maximum},
                            reset_after={reset_after}),
            stop_timeout={stop_timeout},
            rng=random.Random(7),
            max_restarts={max_restarts!r},
        ))
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=dict(os.environ, STATE=str(tmp), **(env or {})),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=GUARD)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"supervisor did not finish within {GUARD}s:\n{err}")
    return proc.returncode, err


def _wait_for(path: Path, what: str) -> str:
    deadline = time.monotonic() + GUARD
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.02)
    pytest.fail(f"{what}: {path} never written")


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


def _wait_dead(pid: int) -> bool:
    deadline = time.monotonic() + GUARD
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def reap() -> Iterator[list[int]]:
    """pids to SIGKILL at the end whatever happened (no test leaves a process)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# A child that exits with the statuses listed in $STATE/plan, one per start
# ("kill" = SIGKILL itself, "sleep:S" = sleep S seconds then exit 75), appending
# its pid to $STATE/pids.
_PLANNED = """
    echo $$ >> "$STATE/pids"
    n=$(wc -l < "$STATE/pids")
    step=$(sed -n "${n}p" "$STATE/plan")
    case "$step" in
      kill) kill -KILL $$ ;;
      sleep:*) sleep "${step#sleep:}"; exit 75 ;;
      "") exit 0 ;;
      *) exit "$step" ;;
    esac
"""

_RESTART = re.compile(
    r"ended: (?P<what>.+?) uptime=[0-9.]+s; restart=(?P<n>\d+) "
    r"backoff=(?P<base>[0-9.]+)s restart_in=(?P<delay>[0-9.]+)s"
)


def _restarts(log: str) -> list[tuple[str, int, float, float]]:
    return [
        (m["what"], int(m["n"]), float(m["base"]), float(m["delay"]))
        for m in _RESTART.finditer(log)
    ]


# -- pure parts -------------------------------------------------------------------


def test_backoff_doubles_to_the_cap_with_bounded_jitter() -> None:
    b = Backoff(initial=0.5, maximum=30.0, jitter=0.2)
    assert [b.base(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    rng = random.Random(0)
    for _ in range(200):
        delays = [b.delay(n, rng) for n in range(1, 7)]
        assert all(
            0.8 * b.base(n) <= d <= 1.2 * b.base(n) for n, d in enumerate(delays, 1)
        )
        # jitter below 50 %: each delay exceeds the one before until the cap
        assert delays == sorted(delays) and len(set(delays)) == len(delays)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0},
        {"initial": 2, "maximum": 1},
        {"jitter": 0.5},
        {"jitter": -0.1},
        {"reset_after": -1},
    ],
)
def test_backoff_refuses_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(**kwargs)


def test_exit_statuses_are_named() -> None:
    assert describe_exit(exits.TEMPFAIL) == "75 EX_TEMPFAIL (buffer overflow)"
    assert describe_exit(exits.IOERR) == "74 EX_IOERR (database unavailable)"
    assert describe_exit(exits.CANTCREAT).startswith("73 EX_CANTCREAT")
    assert describe_exit(exits.CONFIG).startswith("78 EX_CONFIG")
    assert describe_exit(exits.SOFTWARE).startswith("70 EX_SOFTWARE")
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(3) == "exit status 3"
    assert describe_exit(2) == "2 USAGE (bad usage)"
    assert set(EXIT_NAMES) == {0, 2, 70, 73, 74, 75, 78}
    from atdata_ingest.cli import EXIT_USAGE

    assert USAGE == EXIT_USAGE == 2
    assert NO_RESTART == {exits.CONFIG, USAGE}


def test_child_command_is_this_interpreter_without_supervise() -> None:
    assert child_command(["--x"]) == [
        sys.executable,
        "-m",
        "atdata_ingest",
        "run",
        "--x",
    ]
    with pytest.raises(ValueError):
        child_command(["--supervise"])


# -- the supervisor process ------------------------------------------------------------


def test_every_failure_status_is_restarted_named_with_growing_backoff(
    tmp_path: Path,
) -> None:
    """74, 73, 70, 75, a SIGKILL and an unknown status are each restarted, logged
    by name; the delays grow (doubling to the cap, jitter within ±20 %); the
    child's exit 0 ends the supervisor with 0."""
    plan = ["74", "73", "70", "75", "kill", "3", "75", "0"]
    (tmp_path / "plan").write_text("\n".join(plan) + "\n")
    rc, log = _finish(_supervisor(tmp_path, _PLANNED, initial=0.02, maximum=0.16))
    assert rc == 0, log
    assert len((tmp_path / "pids").read_text().split()) == len(plan), log
    got = _restarts(log)
    assert [what for what, *_ in got] == [
        "74 EX_IOERR (database unavailable)",
        "73 EX_CANTCREAT (another ingester holds the lock)",
        "70 EX_SOFTWARE (a bug)",
        "75 EX_TEMPFAIL (buffer overflow)",
        "killed by SIGKILL",
        "exit status 3",
        "75 EX_TEMPFAIL (buffer overflow)",
    ], log
    assert [n for _, n, _, _ in got] == [1, 2, 3, 4, 5, 6, 7]
    assert [base for _, _, base, _ in got] == [0.02, 0.04, 0.08, 0.16, 0.16, 0.16, 0.16]
    delays = [delay for *_, delay in got]
    assert delays[:4] == sorted(delays[:4]) and len(set(delays[:4])) == 4
    assert all(0.8 * b - 1e-3 <= d <= 1.2 * b + 1e-3 for _, _, b, d in got)
    assert "clean stop, exiting 0" in log


@pytest.mark.parametrize(
    ("status", "named"),
    [(exits.CONFIG, "78 EX_CONFIG (bad settings)"), (USAGE, "2 USAGE (bad usage)")],
)
def test_config_and_usage_errors_are_not_restarted(
    tmp_path: Path, status: int, named: str
) -> None:
    """78 (bad settings) and 2 (argparse's bad usage): the supervisor exits with
    the child's status after one start."""
    (tmp_path / "plan").write_text(f"{status}\n0\n")
    rc, log = _finish(_supervisor(tmp_path, _PLANNED))
    assert rc == status, log
    assert len((tmp_path / "pids").read_text().split()) == 1
    assert named in log and "not restarting" in log
    assert _restarts(log) == []


@pytest.mark.slow
def test_backoff_resets_after_a_child_stayed_up(tmp_path: Path) -> None:
    """Quick failures count up (restart=1, 2, 3); a child that stayed up longer
    than reset_after (1 s) starts the count again at 1."""
    (tmp_path / "plan").write_text("75\n75\n75\nsleep:1.5\n75\n0\n")
    rc, log = _finish(_supervisor(tmp_path, _PLANNED, reset_after=1.0))
    assert rc == 0, log
    assert [n for _, n, _, _ in _restarts(log)] == [1, 2, 3, 1, 2], log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_stop_signal_is_forwarded_once_and_the_supervisor_exits_0(
    tmp_path: Path, sig: signal.Signals, reap: list[int]
) -> None:
    """The child (in its own process group) gets the signal exactly once, stops
    cleanly, is not restarted, and the supervisor exits 0."""
    child = """
        trap 'echo TERM >> "$STATE/signals"; exit 0' TERM
        trap 'echo INT >> "$STATE/signals"; exit 0' INT
        echo $$ >> "$STATE/pids"
        while :; do sleep 0.05; done
    """
    sup = _supervisor(tmp_path, child)
    reap.append(sup.pid)
    pid = int(_wait_for(tmp_path / "pids", "child start"))
    reap.append(pid)
    assert os.getpgid(pid) == pid != os.getpgid(sup.pid)
    sup.send_signal(sig)
    rc, log = _finish(sup)
    assert rc == 0, log
    forwarded = "INT" if sig == signal.SIGINT else "TERM"  # SIGHUP becomes SIGTERM
    assert (tmp_path / "signals").read_text().split() == [forwarded]
    assert (tmp_path / "pids").read_text().split() == [str(pid)]
    assert f"received {sig.name}, forwarding" in log
    assert _wait_dead(pid)


def test_a_child_that_ignores_sigterm_is_killed_after_the_stop_timeout(
    tmp_path: Path, reap: list[int]
) -> None:
    child = """
        trap '' TERM
        echo $$ >> "$STATE/pids"
        while :; do sleep 0.05; done
    """
    sup = _supervisor(tmp_path, child, stop_timeout=0.5)
    reap.append(sup.pid)
    pid = int(_wait_for(tmp_path / "pids", "child start"))
    reap.append(pid)
    sup.terminate()
    rc, log = _finish(sup)
    assert rc == 0, log
    assert "sending SIGKILL" in log and "killed by SIGKILL" in log
    assert _wait_dead(pid)


def test_a_stop_signal_during_the_backoff_ends_it(
    tmp_path: Path, reap: list[int]
) -> None:
    """The child failed and the next start is 30 s away: SIGTERM ends the wait
    (no new child) and the supervisor exits 0 well before the guard."""
    (tmp_path / "plan").write_text("75\n0\n")
    sup = _supervisor(tmp_path, _PLANNED, initial=30, maximum=30)
    reap.append(sup.pid)
    _wait_for(tmp_path / "pids", "child start")
    deadline = time.monotonic() + GUARD
    assert sup.stderr is not None
    seen = ""
    while "restart_in=" not in seen and time.monotonic() < deadline:
        seen += sup.stderr.readline()
    sup.terminate()
    rc, log = _finish(sup)
    assert rc == 0, seen + log
    assert "stop signal during backoff" in log
    assert len((tmp_path / "pids").read_text().split()) == 1


@pytest.mark.parametrize("victim", ["supervisor", "supervisor-then-early"])
def test_sigkill_of_the_supervisor_leaves_no_child(
    tmp_path: Path, victim: str, reap: list[int]
) -> None:
    """PR_SET_PDEATHSIG: a SIGKILLed supervisor takes its child with it, also a
    child that ignores SIGTERM and SIGHUP, and also one started after restarts."""
    child = """
        trap '' TERM HUP INT
        echo $$ >> "$STATE/pids"
        n=$(wc -l < "$STATE/pids")
        if [ "$n" -lt 3 ] && [ "$VICTIM" = supervisor-then-early ]; then exit 75; fi
        while :; do sleep 0.05; done
    """
    sup = _supervisor(tmp_path, child, env={"VICTIM": victim})
    reap.append(sup.pid)
    want = 3 if victim == "supervisor-then-early" else 1
    deadline = time.monotonic() + GUARD
    pids: list[int] = []
    while len(pids) < want and time.monotonic() < deadline:
        text = (tmp_path / "pids").read_text() if (tmp_path / "pids").exists() else ""
        pids = [int(p) for p in text.split()]
        time.sleep(0.02)
    assert len(pids) == want
    reap.extend(pids)
    pid = pids[-1]
    assert _alive(pid)
    sup.kill()
    sup.communicate(timeout=GUARD)
    assert _wait_dead(pid), f"child {pid} outlived its SIGKILLed supervisor"


# -- the systemd unit -----------------------------------------------------------------


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        strict=False, interpolation=None, delimiters=("=",), comment_prefixes=("#", ";")
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_systemd_unit_settings() -> None:
    unit = _unit()
    service = unit["Service"]
    assert service["Type"] == "exec"
    assert service["ExecStart"] == "/usr/bin/env atdata-ingest run"
    assert "--supervise" not in service["ExecStart"]
    assert service["Restart"] == "on-failure"
    assert service["RestartSec"] == "1"
    # the statuses neither the unit nor --supervise restarts: 78 and argparse's 2
    prevented = {int(x) for x in service["RestartPreventExitStatus"].split()}
    assert prevented == NO_RESTART == {exits.CONFIG, 2}
    assert service["KillSignal"] == "SIGTERM"
    assert service["TimeoutStopSec"] == "30"
    assert service["EnvironmentFile"].startswith("/")
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["DynamicUser"] == "yes"
    assert {"StartLimitIntervalSec", "StartLimitBurst"} <= set(unit["Unit"])
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_unit_names_the_console_script() -> None:
    """ExecStart's program is the console script the ingest distribution declares
    and that is installed next to this interpreter."""
    program = _unit()["Service"]["ExecStart"].split()[1]
    scripts = tomllib.loads((ROOT / "ingest" / "pyproject.toml").read_text())
    assert scripts["project"]["scripts"][program] == "atdata_ingest.cli:main"
    installed = Path(sys.executable).parent / program
    assert installed.is_file() and os.access(installed, os.X_OK)
    done = subprocess.run(
        [str(installed), "run", "--help"], capture_output=True, text=True, timeout=GUARD
    )
    assert done.returncode == 0 and "--supervise" in done.stdout


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="no systemd-analyze"
)
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` prints nothing for the unit (it exits 0 even on
    unknown keys, so its output is what counts); a broken copy is noticed."""

    def verify(path: Path) -> str:
        done = subprocess.run(
            ["systemd-analyze", "verify", str(path)],
            capture_output=True,
            text=True,
            timeout=GUARD,
            cwd=tmp_path,
        )
        return (done.stdout + done.stderr).strip() + (
            "" if done.returncode == 0 else "!"
        )

    assert verify(UNIT) == ""
    broken = tmp_path / "atdata-ingest.service"
    broken.write_text(UNIT.read_text().replace("Type=exec", "Type=exce"))
    assert "Type" in verify(broken) or "type" in verify(broken)
