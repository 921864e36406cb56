"""Figures for publishing on a real local PDS (medians of several runs).

* records/s publishing ``--records`` (200) schema records (ours:
  :func:`~atdata_runtime.atmosphere.publish.publish_schemas` — validated,
  version lookup, exactly-once ``com.atproto.repo.applyWrites`` batches of
  ``--batch-size``), and atdata 0.7.0b1's ``SchemaPublisher`` (one
  ``createRecord`` per record) on the same PDS in the same run, each of its runs
  right after one of ours (its own Python 3.12 environment, ``scripts/atdata-env``;
  login, imports and process start excluded on both sides; a fresh account per run);
* median ms to pull (fetch, verify the repository proof, validate) and compile one
  remote schema.

Loading from PDS blobs and HTTP is ``scripts/bench_load``.

Usage: ``scripts/bench_publish [--runs N] [--records N] [--batch-size N]
[--json PATH]`` (a bare number is ``--runs``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib
from atdata_gen.dynamic import compile_schema_record
from atdata_gen.testing.localnet import LocalNetwork, install_dir
from atdata_runtime.atmosphere import AtmosphereClient, IdentityResolver
from atdata_runtime.atmosphere.client import MAX_BATCH_WRITES
from atdata_runtime.atmosphere.publish import publish_schemas

ROOT = benchlib.ROOT
RECORDS = ROOT.parent / "shared" / "corpus" / "atdata" / "records"
SIDE = ROOT / "tests" / "interop" / "atdata_side.py"


def atdata_python() -> str:
    env = subprocess.run(
        [str(ROOT / "scripts" / "atdata-env")],
        capture_output=True,
        text=True,
        check=True,
    )
    return env.stdout.strip().splitlines()[-1]


def atdata(python: str, jobs: list[dict[str, object]]) -> list[dict[str, object]]:
    """Run ``jobs`` in one atdata 0.7.0b1 process (see tests/interop/atdata_side.py)."""
    proc = subprocess.run(
        [python, str(SIDE), "batch"],
        check=False,
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"atdata side failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def pds_version() -> str:
    package = install_dir() / "node_modules" / "@atproto" / "pds" / "package.json"
    return str(json.loads(package.read_text())["version"])


def figures(values: list[float]) -> str:
    return f"median {statistics.median(values):.1f} (runs: {', '.join(f'{v:.1f}' for v in values)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs_pos", nargs="?", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=MAX_BATCH_WRITES)
    benchlib.add_json_arg(ap)
    args = ap.parse_args()
    runs = args.runs_pos or args.runs
    count = args.records
    report = benchlib.Report(
        "publish",
        settings={
            "runs": runs,
            "records": count,
            "batch_size": args.batch_size,
            "schema": "ImageSample",
            "pds": f"@atproto/pds {pds_version()} on loopback (scripts/pds-install)",
        },
    )
    base = json.loads((RECORDS / "ImageSample.schema.json").read_text())
    python = atdata_python()
    ours: list[float] = []
    theirs: list[float] = []
    with LocalNetwork.start() as net, tempfile.TemporaryDirectory() as tmp:
        res = IdentityResolver(plc_url=net.plc_url, handle_service=net.pds_url)
        for run in range(runs):
            acct = net.create_account(f"bench{run}")
            client = AtmosphereClient.login(
                acct.handle,
                acct.password,
                resolver=res,
                pds_url=net.pds_url,
                session_file=Path(tmp) / f"{run}.session",
            )
            records = [dict(base, name=f"Bench{i}") for i in range(count)]
            t = time.perf_counter()
            pubs = publish_schemas(client, records, batch_size=args.batch_size)
            ours.append(count / (time.perf_counter() - t))
            assert sum(p.write.created for p in pubs) == count
            peer = net.create_account(f"atdata{run}")
            (result,) = atdata(
                python,
                [
                    {
                        "command": "bench_publish",
                        "class": "ImageSample",
                        "count": count,
                        "pds": net.pds_url,
                        "did": peer.did,
                        "handle": peer.handle,
                        "password": peer.password,
                    }
                ],
            )
            theirs.append(count / float(result["seconds"]))  # type: ignore[arg-type]
        print(
            f"publish {count} schema records, ours (batches of {args.batch_size}): "
            f"{figures(ours)} records/s"
        )
        print(f"publish {count} schema records, atdata: {figures(theirs)} records/s")
        print(
            "  ratio ours/atdata (medians): "
            f"{statistics.median(ours) / statistics.median(theirs):.2f}"
        )

        reader = AtmosphereClient(
            resolver=IdentityResolver(plc_url=net.plc_url, handle_service=net.pds_url)
        )
        uri = f"at://{client.did}/science.alt.dataset.schema/Bench7:1.0.0"
        times = []
        for _ in range(max(5, runs)):
            reader.resolver._docs.clear()
            t = time.perf_counter()
            rec = reader.get_record(uri)
            compile_schema_record(rec.value, uri=rec.uri, cid=rec.cid)
            times.append((time.perf_counter() - t) * 1000)
        print(f"pull + compile one remote schema: {figures(times)} ms")

    report.metric(
        "publish_records_per_s",
        ours,
        "records/s",
        better="higher",
        label=f"publish {count} schema records, ours",
    )
    report.metric(
        "atdata_publish_records_per_s",
        theirs,
        "records/s",
        better="higher",
        label=f"publish {count} schema records, atdata 0.7.0b1",
    )
    report.metric(
        "pull_compile_ms", times, "ms", label="pull + compile one remote schema"
    )
    report.row(
        "network",
        f"publish {count} schema records (records/s; ours: applyWrites batches of "
        f"{args.batch_size}, exactly once)",
        "publish_records_per_s",
        peer="atdata_publish_records_per_s",
        peer_name="atdata 0.7.0b1",
        fmt=".0f",
        goal={"text": "≥ 1.5× atdata", "of": "speedup", "op": ">=", "target": 1.5},
    )
    report.row(
        "network",
        "pull (repository-verified) + compile one remote schema (ms)",
        "pull_compile_ms",
        fmt=".1f",
    )
    report.note(
        "atdata's SchemaPublisher writes one createRecord per record (TID keys); ours "
        "lists the collection once (version lookup), validates every record and "
        "writes applyWrites batches under deterministic keys, reading a batch back "
        "before any retry whose outcome is unknown (tests/test_publish_batches.py "
        "proves exactly-once under faults with a firehose count)."
    )
    report.write(args.json)


if __name__ == "__main__":
    main()
