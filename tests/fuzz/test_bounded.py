"""The harness itself can fail: a runaway allocation is caught by the cap, a hang
by the timeout, and a clean error is reported with its type."""

from __future__ import annotations

from .bounded import run_bounded


def test_reports_error_type_and_rss() -> None:
    out = run_bounded("raise ValueError('where: why')")
    assert out.error_type == "builtins.ValueError"
    assert out.error == "where: why"
    assert 1 < out.max_rss_mib < 200


def test_address_space_cap_stops_runaway_memory() -> None:
    out = run_bounded("x = bytearray(2 * 1024**3)", address_space_mib=512)
    assert out.error_type == "builtins.MemoryError"


def test_timeout_reports_hang() -> None:
    out = run_bounded("import time\ntime.sleep(30)", timeout=2)
    assert out.timed_out


def test_value_round_trips() -> None:
    out = run_bounded("_result['value'] = [1, 'a']")
    assert out.error_type is None and out.value == [1, "a"]


def test_rss_is_the_childs_own_not_the_parents() -> None:
    ballast = bytearray(300 * 1024 * 1024)
    ballast[::4096] = b"x" * len(ballast[::4096])  # touch every page
    out = run_bounded("pass")
    assert out.max_rss_mib < 150, out.max_rss_mib
    del ballast
