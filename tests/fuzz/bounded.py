"""Run hostile input in a child process with hard limits, and report what it cost.

The fuzz and limits suite (``tests/fuzz/``) asserts two things of every hostile
input: the error is a clean, located one, and memory stays bounded. Memory is
measured where it cannot be confused with the test runner's own: in a fresh
``python`` child whose address space is capped (``RLIMIT_AS``), whose peak RSS
(``VmHWM`` of ``/proc/self/status``, not ``ru_maxrss``, which survives
``execve``) is reported back, and which is killed after
``timeout`` seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

__all__ = ["Outcome", "run_bounded"]

_PRELUDE = """
import json as _json, resource as _resource, sys as _sys, traceback as _tb
_limit = {limit}
_resource.setrlimit(_resource.RLIMIT_AS, (_limit, _limit))
_result = {{"error": None, "error_type": None, "value": None}}
try:
{body}
except BaseException as _exc:  # noqa: BLE001 - reported to the parent
    _result["error"] = str(_exc)[:4000]
    _result["error_type"] = type(_exc).__module__ + "." + type(_exc).__qualname__
    _result["traceback"] = _tb.format_exc()[-4000:]
# ru_maxrss survives execve (the parent's peak would be reported): VmHWM is this
# process image's own high-water mark.
with open("/proc/self/status") as _status:
    _result["max_rss_kib"] = next(
        int(line.split()[1]) for line in _status if line.startswith("VmHWM:")
    )
_sys.stdout.write("\\n@@RESULT@@" + _json.dumps(_result, default=repr) + "\\n")
"""


@dataclass(frozen=True)
class Outcome:
    """What the child did: ``error_type`` (qualified class name, ``None`` when the
    body returned), ``error`` (its message), ``value`` (whatever the body stored in
    ``_result["value"]``), ``max_rss_mib`` (peak resident memory) and
    ``timed_out``."""

    error_type: str | None
    error: str | None
    value: object
    max_rss_mib: float
    timed_out: bool
    stderr: str
    traceback: str = ""


def run_bounded(
    code: str,
    *,
    address_space_mib: int = 3072,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> Outcome:
    """Run ``code`` (a Python snippet; it may set ``_result["value"]``) in a child
    interpreter with its address space capped at ``address_space_mib`` MiB and a
    wall-clock ``timeout`` in seconds. Returns the :class:`Outcome`; a child that
    crashes without reporting (a segfault, an exceeded limit outside Python) is an
    ``AssertionError`` with its stderr."""
    body = textwrap.indent(textwrap.dedent(code).strip() or "pass", "    ")
    script = _PRELUDE.format(limit=address_space_mib * 1024 * 1024, body=body)
    child_env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        **(env or {}),
    }
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr
        stderr = err.decode(errors="replace") if isinstance(err, bytes) else err or ""
        return Outcome(None, None, None, 0.0, True, stderr)
    marker = proc.stdout.rfind("@@RESULT@@")
    if marker < 0:
        raise AssertionError(
            f"child exited {proc.returncode} without a result:\n{proc.stderr[-4000:]}"
        )
    data = json.loads(proc.stdout[marker + len("@@RESULT@@") :])
    return Outcome(
        error_type=data["error_type"],
        error=data["error"],
        value=data["value"],
        max_rss_mib=data["max_rss_kib"] / 1024,
        timed_out=False,
        stderr=proc.stderr,
        traceback=data.get("traceback", ""),
    )
