"""Loading figures: MB/s reading a published dataset, ours (sha256 verified) next to
atdata 0.7.0b1 (unverified) in the same run, and RSS while streaming ~10 GB over HTTP.

* ``network``: a ~100 MB dataset (4 shards of ~26 MB, 256×256×3 uint8 images)
  published on a real local PDS twice: as PDS blobs and as HTTP shards served from
  loopback by a separate `http.server` process. Ours reads each entry with
  ``Dataset.from_atproto`` (entry and schema verified, every shard's sha256
  checked before its samples are used, the HTTP shard URLs treated as URLs from
  the network under the test-only loopback mode); atdata reads the same entries
  with ``DatasetLoader.to_dataset(…).ordered()`` in its own Python 3.12
  environment (``tests/interop/atdata_side.py``, ``bench_load``). MB/s = shard
  bytes / wall seconds of one full pass, medians of ``--runs``.
* ``memory``: ``--stream-gb`` (default 10) GB of shards generated on the fly by a
  local HTTP server in another process (nothing hits the disk but the verified
  spool of one shard at a time), read by a fresh process as a record's shard
  list (``urls_from="record"``, sha256 verified before use, the
  ``load_dataset`` default): bytes, GB/s, that process's peak RSS (``VmHWM``)
  and its RSS at 1/4, 1/2, 3/4 and the end of the bytes.

Usage: ``scripts/bench_load [--runs N] [--stream-gb G] [--skip-stream]
[--profile] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.server
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

ROOT = benchlib.ROOT
RECORDS = ROOT.parent / "shared" / "corpus" / "atdata" / "records"
SIDE = ROOT / "tests" / "interop" / "atdata_side.py"
LOOPBACK = "ATDATA_RUNTIME_INSECURE_LOOPBACK"


def atdata(jobs: list[dict[str, object]]) -> list[dict[str, Any]]:
    """Run ``jobs`` in one atdata 0.7.0b1 process (tests/interop/atdata_side.py)."""
    env = subprocess.run(
        [str(ROOT / "scripts" / "atdata-env")],
        capture_output=True,
        text=True,
        check=True,
    )
    python = env.stdout.strip().splitlines()[-1]
    proc = subprocess.run(
        [python, str(SIDE), "batch"],
        check=False,
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode:
        raise SystemExit(f"atdata side failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def figures(values: list[float]) -> str:
    runs = ", ".join(f"{v:.1f}" for v in values)
    return f"median {statistics.median(values):.1f} (runs: {runs})"


# -- the network part -------------------------------------------------------------


@contextlib.contextmanager
def served_directory(directory: str) -> Iterator[str]:
    """Serve ``directory`` on loopback from *another process* (the standard
    library's ``http.server``, the handler ``atdata_gen.testing.httpdir`` uses):
    a server thread in this process would share our GIL while we read and not
    while atdata's process does. Yields the base URL."""
    from atdata_gen.testing.localnet import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise SystemExit("the HTTP file server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def network(args: argparse.Namespace, report: benchlib.Report) -> None:
    import numpy as np
    from atdata_gen.dynamic import compile_schema_record
    from atdata_gen.testing.localnet import LocalNetwork
    from atdata_runtime.atmosphere import AtmosphereClient, IdentityResolver
    from atdata_runtime.atmosphere.publish import (
        BlobStorage,
        HttpStorage,
        publish_entry,
        publish_schemas,
    )
    from atdata_runtime.shards import Dataset, write_samples

    base = json.loads((RECORDS / "ImageSample.schema.json").read_text())
    with (
        LocalNetwork.start() as net,
        tempfile.TemporaryDirectory() as tmp,
        served_directory(tmp) as http_base,
    ):
        res = IdentityResolver(plc_url=net.plc_url, handle_service=net.pds_url)
        acct = net.create_account("benchload")
        client = AtmosphereClient.login(
            acct.handle,
            acct.password,
            resolver=res,
            pds_url=net.pds_url,
            session_file=Path(tmp) / "s.session",
        )
        img = compile_schema_record(base)
        rng = np.random.default_rng(0)
        samples = (
            img(image=rng.integers(0, 255, (256, 256, 3), dtype=np.uint8), label=str(i))
            for i in range(520)
        )
        shards = write_samples(
            samples, f"{tmp}/big-%06d.tar", maxsize=26e6, progress=False
        )
        total = sum(Path(s).stat().st_size for s in shards)
        pub = publish_schemas(client, [dict(base, name="BigImage")])[0]
        entries = {
            "blobs": publish_entry(
                client,
                shards,
                schema_uri=pub.write.uri,
                name="big blobs",
                storage=BlobStorage(),
                journal_dir=f"{tmp}/j",
            ).uri,
            "http": publish_entry(
                client,
                shards,
                schema_uri=pub.write.uri,
                name="big http",
                storage=HttpStorage([f"{http_base}/{Path(s).name}" for s in shards]),
                journal_dir=f"{tmp}/j2",
            ).uri,
        }
        reader = AtmosphereClient(
            resolver=IdentityResolver(plc_url=net.plc_url, handle_service=net.pds_url)
        )

        def ours(uri: str) -> int:
            ds = Dataset.from_atproto(uri, client=reader, progress=False)
            return sum(1 for _ in ds)

        if args.profile:
            import cProfile
            import pstats

            from atdata_runtime.atmosphere.load import resolve_dataset

            for kind, uri in entries.items():
                ours(uri)  # warm: imports, the compiled class
                t0 = time.perf_counter()
                resolve_dataset(uri, client=reader)
                t1 = time.perf_counter()
                ours(uri)
                t2 = time.perf_counter()
                print(
                    f"--- {kind}: resolve {1000 * (t1 - t0):.0f} ms, "
                    f"whole load {1000 * (t2 - t1):.0f} ms ---"
                )
                prof = cProfile.Profile()
                prof.enable()
                ours(uri)
                prof.disable()
                print(f"--- profile: ours, {kind} ---")
                stats = pstats.Stats(prof)
                stats.sort_stats("tottime").print_stats(14)
                stats.sort_stats("cumtime").print_stats(30)
        # Interleaved rounds (ours, then atdata, per round) so that a change in the
        # shared machine's load hits both sides alike.
        for uri in entries.values():
            ours(uri)  # warm: imports, the compiled class, connections
        speeds: dict[str, list[float]] = {kind: [] for kind in entries}
        theirs_s: dict[str, list[float]] = {kind: [] for kind in entries}
        counts: dict[str, int] = {}
        for _ in range(args.runs):
            for kind, uri in entries.items():
                t = time.perf_counter()
                counts[kind] = ours(uri)
                speeds[kind].append(total / 1e6 / (time.perf_counter() - t))
            results = atdata(
                [
                    {
                        "command": "bench_load",
                        "class": "ImageSample",
                        "entry": uri,
                        "runs": 2,  # the first warms atdata's lazy imports
                        "pds": net.pds_url,
                        "did": client.did,
                    }
                    for uri in entries.values()
                ]
            )
            for kind, result in zip(entries, results, strict=True):
                if result["samples"] != counts[kind]:
                    raise SystemExit(
                        f"atdata read {result['samples']} samples, ours {counts[kind]}"
                    )
                theirs_s[kind].append(float(result["seconds"][-1]))
        for kind in entries:
            n = counts[kind]
            theirs = [total / 1e6 / t for t in theirs_s[kind]]
            where = "PDS blobs" if kind == "blobs" else "HTTP"
            what = f"load {total / 1e6:.0f} MB ({len(shards)} shards, {n} samples) from {where}"
            print(f"{what}, ours (sha256 verified): {figures(speeds[kind])} MB/s")
            print(f"{what}, atdata (unverified):    {figures(theirs)} MB/s")
            print(
                "  ratio ours/atdata (medians): "
                f"{statistics.median(speeds[kind]) / statistics.median(theirs):.2f}"
            )
            report.metric(
                f"load_{kind}_mb_s",
                speeds[kind],
                "MB/s",
                better="higher",
                label=f"load from {where}, sha256 verified",
            )
            report.metric(
                f"atdata_load_{kind}_mb_s",
                theirs,
                "MB/s",
                better="higher",
                label=f"atdata 0.7.0b1 load from {where}, unverified",
            )
            report.row(
                "network",
                f"load {total / 1e6:.0f} MB from {where} (MB/s; ours sha256-verified)",
                f"load_{kind}_mb_s",
                peer=f"atdata_load_{kind}_mb_s",
                peer_name="atdata 0.7.0b1",
                fmt=".0f",
                goal={
                    "text": "≥ 1.2× atdata",
                    "of": "speedup",
                    "op": ">=",
                    "target": 1.2,
                },
            )
        report.settings["network_bytes"] = total
        report.settings["network_shards"] = len(shards)


# -- the memory part: a generated dataset streamed over HTTP ----------------------


def _member_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def shard_parts(payload: bytes, samples: int) -> list[bytes]:
    """The pieces of one generated shard (every shard is byte-identical): per
    sample a ustar header, the payload and its padding; then the end blocks."""
    pad = bytes(-len(payload) % 512)
    parts = []
    for i in range(samples):
        parts += [_member_header(f"{i:08d}.msgpack", len(payload)), payload, pad]
    parts.append(bytes(1024))
    return parts


def serve_generated(payload_file: str, samples: int, port_file: str) -> None:
    """Child process: serve ``/shard-N.tar`` (any N), each the same generated tar of
    ``samples`` copies of the payload, until stdin closes."""
    payload = Path(payload_file).read_bytes()
    pad = bytes(-len(payload) % 512)
    headers = [_member_header(f"{i:08d}.msgpack", len(payload)) for i in range(samples)]
    length = samples * (512 + len(payload) + len(pad)) + 1024

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *a: Any) -> None:
            pass

        def do_GET(self) -> None:
            if not self.path.startswith("/shard-"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-tar")
            self.send_header("Content-Length", str(length))
            self.end_headers()
            out = self.wfile
            try:
                for h in headers:
                    out.write(h)
                    out.write(payload)
                    out.write(pad)
                out.write(bytes(1024))
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    Path(port_file).write_text(str(server.server_port))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()
    server.shutdown()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm() -> int:
    """This process's peak RSS in bytes: ``VmHWM`` of ``/proc/self/status``, the
    high-water mark of this address space (``ru_maxrss`` would not do: Linux
    carries the parent's peak across ``fork`` + ``exec``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def stream_child(config: dict[str, Any]) -> None:
    """Child process: read the generated shards as a record's shard list; print
    JSON with bytes, seconds, peak RSS and (bytes, RSS) samples."""
    from atdata_gen.dynamic import compile_schema_record
    from atdata_runtime.shards import Dataset

    base = json.loads((RECORDS / "ImageSample.schema.json").read_text())
    cls = compile_schema_record(base)
    urls = [f"{config['base']}/shard-{i:05d}.tar" for i in range(config["shards"])]
    ds = Dataset[cls](  # type: ignore[valid-type]
        urls,
        checksums=dict.fromkeys(urls, config["sha256"]),
        urls_from="record",
        verify=config["verify"],
        progress=False,
    )
    shard_bytes = config["shard_bytes"]
    state = {"bytes": 0, "stop": False}
    trace: list[tuple[float, int, int]] = []
    start_rss = _rss()

    def sample() -> None:
        while not state["stop"]:
            trace.append((time.perf_counter(), state["bytes"], _rss()))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    t = time.perf_counter()
    sampler.start()
    count = 0
    per_sample = config["sample_stride"]
    for _ in ds:
        count += 1
        state["bytes"] = count * per_sample
    seconds = time.perf_counter() - t
    state["stop"] = True
    sampler.join()
    trace.append((time.perf_counter(), state["bytes"], _rss()))
    peak = _hwm()
    print(
        json.dumps(
            {
                "samples": count,
                "bytes": shard_bytes * config["shards"],
                "seconds": seconds,
                "peak_rss": peak,
                "start_rss": start_rss,
                "trace": [(b, r) for _, b, r in trace],
            }
        )
    )


def memory(args: argparse.Namespace, report: benchlib.Report) -> None:
    import numpy as np
    from atdata_gen.dynamic import compile_schema_record

    base = json.loads((RECORDS / "ImageSample.schema.json").read_text())
    cls = compile_schema_record(base)
    rng = np.random.default_rng(1)
    side = args.member_side
    payload = cls(
        image=rng.integers(0, 255, (side, side, 3), dtype=np.uint8), label="x"
    ).packed
    stride = 512 + len(payload) + (-len(payload) % 512)
    samples = max(1, args.shard_mb * 2**20 // stride)
    digest = hashlib.sha256()
    for part in shard_parts(payload, samples):
        digest.update(part)
    shard_bytes = samples * stride + 1024
    shards = max(1, round(args.stream_gb * 1e9 / shard_bytes))
    with tempfile.TemporaryDirectory() as tmp:
        pfile = Path(tmp) / "payload"
        pfile.write_bytes(payload)
        port_file = Path(tmp) / "port"
        server = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve-generated",
                str(pfile),
                str(samples),
                str(port_file),
            ],
            stdin=subprocess.PIPE,
        )
        try:
            for _ in range(200):
                if port_file.exists() and port_file.read_text():
                    break
                time.sleep(0.05)
            else:
                raise SystemExit("the generating server did not start")
            config = {
                "base": f"http://127.0.0.1:{port_file.read_text()}",
                "shards": shards,
                "sha256": digest.hexdigest(),
                "shard_bytes": shard_bytes,
                "sample_stride": stride,
                "verify": args.verify,
            }
            env = dict(os.environ, **{LOOPBACK: "1"})
            proc = subprocess.run(
                [sys.executable, __file__, "--stream-child", json.dumps(config)],
                capture_output=True,
                text=True,
                env=env,
                timeout=3600,
                check=False,
            )
        finally:
            assert server.stdin is not None
            server.stdin.close()
            server.wait(timeout=30)
    if proc.returncode:
        raise SystemExit(f"stream child failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["samples"] != samples * shards:
        raise SystemExit(f"read {out['samples']} samples, expected {samples * shards}")
    mib = 2**20
    trace = out["trace"]
    total = out["bytes"]

    def rss_at(frac: float) -> float:
        target = frac * samples * shards * stride
        for b, r in trace:
            if b >= target:
                return float(r) / mib
        return float(trace[-1][1]) / mib

    quarters = {q: rss_at(q) for q in (0.25, 0.5, 0.75)}
    end = float(trace[-1][1]) / mib
    gbs = total / 1e9 / out["seconds"]
    peak = out["peak_rss"] / mib
    print(
        f"stream {total / 1e9:.2f} GB over HTTP ({shards} shards of "
        f"{shard_bytes / mib:.0f} MiB, members of {len(payload) / mib:.2f} MiB, "
        f"verify={args.verify}): {gbs:.2f} GB/s"
    )
    print(
        f"  RSS MiB: start {out['start_rss'] / mib:.0f}, 1/4 {quarters[0.25]:.0f}, "
        f"1/2 {quarters[0.5]:.0f}, 3/4 {quarters[0.75]:.0f}, end {end:.0f}; "
        f"peak {peak:.0f} (highest sampled {max(r for _, r in trace) / mib:.0f})"
    )
    report.metric("stream_bytes", [total], "bytes", better="higher", label="bytes")
    report.metric("stream_gb_s", [gbs], "GB/s", better="higher", label="GB/s")
    report.metric("stream_peak_rss_mib", [peak], "MiB", label="peak RSS")
    for q, key in ((0.25, "q1"), (0.5, "half"), (0.75, "q3")):
        report.metric(
            f"stream_rss_{key}_mib", [quarters[q]], "MiB", label=f"RSS at {q}"
        )
    report.metric("stream_rss_end_mib", [end], "MiB", label="RSS at the end")
    report.metric("stream_member_mib", [len(payload) / mib], "MiB", label="member")
    what = f"stream {total / 1e9:.0f} GB over HTTP"
    report.row("memory", f"{what}: GB/s", "stream_gb_s", fmt=".2f")
    report.row("memory", f"{what}: peak RSS (MiB)", "stream_peak_rss_mib", fmt=".0f")
    for key, text in (
        ("q1", "1/4"),
        ("half", "1/2"),
        ("q3", "3/4"),
        ("end", "end"),
    ):
        report.row(
            "memory", f"{what}: RSS at {text} (MiB)", f"stream_rss_{key}_mib", fmt=".0f"
        )
    report.settings.update(
        stream_shards=shards,
        stream_shard_bytes=shard_bytes,
        stream_member_bytes=len(payload),
        stream_verify=args.verify,
    )
    report.note(
        f"memory: {shards} shards of {shard_bytes:,} bytes generated by a local HTTP "
        f"server; members of {len(payload):,} bytes; RSS sampled every 50 ms"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-generated":
        serve_generated(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--stream-child":
        stream_child(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--stream-gb", type=float, default=10.0)
    ap.add_argument("--shard-mb", type=int, default=256)
    ap.add_argument("--member-side", type=int, default=512, help="image side (px)")
    ap.add_argument("--verify", choices=("before", "stream"), default="before")
    ap.add_argument("--skip-stream", action="store_true")
    ap.add_argument("--skip-network", action="store_true")
    ap.add_argument("--profile", action="store_true", help="cProfile our loads")
    benchlib.add_json_arg(ap)
    args = ap.parse_args()
    os.environ[LOOPBACK] = "1"  # HTTP shard URLs on loopback, as from a record
    report = benchlib.Report(
        "load",
        settings={"runs": args.runs, "stream_gb": args.stream_gb},
    )
    if not args.skip_network:
        network(args, report)
    if not args.skip_stream:
        memory(args, report)
    report.write(args.json)


if __name__ == "__main__":
    main()
