"""A runtime installed without an extra says which extra to install: the error for
an ``http(s)://`` shard without httpx, an ``s3://`` shard without s3fs and
``Dataset.torch()`` without torch names ``pip install 'atdata-runtime[<extra>]'``.

Each case runs in a fresh interpreter where ``sys.modules[<module>] = None`` makes
importing the module raise ``ModuleNotFoundError`` as if it were not installed (the
dev venv has every extra); nothing of the runtime is replaced."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import ROOT

SCRIPT = r"""
import json, sys
for module in sys.argv[1].split(","):
    sys.modules[module] = None
from dataclasses import dataclass
from atdata_runtime.samples import PackableSample
from atdata_runtime.shards import Dataset

@dataclass(kw_only=True)
class ImageSample(PackableSample):
    label: str

ds = Dataset[ImageSample](sys.argv[2])
try:
    ds.torch() if sys.argv[3] == "torch" else next(iter(ds))
except ImportError as exc:
    print(json.dumps({"type": type(exc).__name__, "message": str(exc), "name": exc.name}))
else:
    print(json.dumps(None))
"""


def _error(missing: str, url: str, action: str) -> dict[str, str] | None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, missing, url, action],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("missing", "url", "action", "extra", "module"),
    [
        ("httpx", "https://example.com/x-000000.tar", "iter", "http", "httpx"),
        ("s3fs", "s3://bucket/x-000000.tar", "iter", "s3", "s3fs"),
        ("torch", "x-000000.tar", "torch", "torch", "torch"),
    ],
)
def test_a_missing_extra_names_the_pip_install(
    missing: str, url: str, action: str, extra: str, module: str
) -> None:
    error = _error(missing, url, action)
    assert error is not None
    assert error["type"] == "ModuleNotFoundError"
    assert error["name"].split(".")[0] == module
    assert f"pip install 'atdata-runtime[{extra}]'" in error["message"]
    if action != "torch":
        assert error["message"].startswith(f"{url}: ")
    assert module in error["message"]  # the original import error is kept


def test_torch_says_to_pick_a_build_first() -> None:
    error = _error("torch", "x-000000.tar", "torch")
    assert error is not None
    assert "Dataset.torch()" in error["message"]
    assert "CPU or CUDA build of torch" in error["message"]


FIREHOSE = r"""
import asyncio, json, sys
for module in sys.argv[1].split(","):
    sys.modules[module] = None
# the events are plain dataclasses: they import without the extra
from atdata_runtime.firehose import Account, Create, Delete, Event, Update

out = {}
def attempt(what, fn):
    try:
        fn()
    except ImportError as exc:
        out[what] = {"type": type(exc).__name__, "message": str(exc), "name": exc.name}
    except Exception as exc:  # got as far as the network (port 9: refused)
        out[what] = None if getattr(exc, "rule", "") == "SUB_RECONNECTS" else repr(exc)
    else:
        out[what] = None

def package():
    from atdata_runtime.firehose import Subscription

def module():
    from atdata_runtime.firehose.subscribe import Subscription

def run(source):
    def go():
        from atdata_runtime.firehose.subscribe import IngestService, Relay, Subscription
        src = (
            Relay("ws://127.0.0.1:9") if source == "relay"
            else IngestService("http://127.0.0.1:9", "atdi_x_y")
        )
        asyncio.run(Subscription(src, verify="none", max_reconnects=0).run())
    return go

attempt("package", package)
attempt("module", module)
attempt("relay", run("relay"))
attempt("service", run("service"))
print(json.dumps(out))
"""


@pytest.mark.parametrize(
    ("missing", "fails"),
    [
        ("cbrrr", ("package", "module", "relay", "service")),
        ("websockets", ("relay",)),
        ("httpx", ("service",)),
    ],
)
def test_the_firehose_without_its_extra_names_the_pip_install(
    missing: str, fails: tuple[str, ...]
) -> None:
    """Without cbrrr (the ``firehose`` extra not installed), importing the
    subscription from the package or its module names
    ``pip install 'atdata-runtime[firehose]'`` while the event classes still
    import; without websockets a :class:`Relay`, without httpx an
    :class:`IngestService` says the same when run."""
    proc = subprocess.run(
        [sys.executable, "-c", FIREHOSE, missing],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for what, error in out.items():
        if what not in fails:
            assert error is None, (what, error)
            continue
        assert error is not None, what
        assert error["type"] == "ModuleNotFoundError"
        assert error["name"].split(".")[0] == missing
        assert "pip install 'atdata-runtime[firehose]'" in error["message"], error
        assert missing in error["message"]  # the original import error is kept


ATMOSPHERE = r"""
import json, sys
sys.modules[sys.argv[1]] = None
import atdata_runtime.atmosphere as atmosphere
out = {"cid": callable(atmosphere.record_cid)}
for name in ("AtmosphereClient", "publish"):
    try:
        getattr(atmosphere, name)
    except ImportError as exc:
        out[name] = {"type": type(exc).__name__, "message": str(exc), "name": exc.name}
    else:
        out[name] = None
print(json.dumps(out))
"""


@pytest.mark.parametrize("missing", ["httpx"])
def test_the_atmosphere_without_its_extra_names_the_pip_install(missing: str) -> None:
    """Without the ``atproto`` extra, ``import atdata_runtime.atmosphere`` works and
    its CID helpers (no HTTP) still load; the client and the publisher say
    ``pip install 'atdata-runtime[atproto]'`` and keep the original error."""
    proc = subprocess.run(
        [sys.executable, "-c", ATMOSPHERE, missing],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out.pop("cid") is True
    for what, error in out.items():
        assert error is not None, what
        assert error["type"] == "ModuleNotFoundError"
        assert error["name"].split(".")[0] == missing
        assert (
            f"atdata_runtime.atmosphere.{what} needs the 'atproto' extra"
            in error["message"]
        )
        assert "pip install 'atdata-runtime[atproto]'" in error["message"]
        assert missing in error["message"]
