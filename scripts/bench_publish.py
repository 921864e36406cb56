"""Figures for publishing and loading on a real local PDS (medians of several runs).

* records/s publishing 200 schema records (ours: verified, exactly-once writes,
  version lookup), and atdata 0.7.0b1's ``SchemaPublisher`` on the same PDS in the
  same run (its own Python 3.12 environment, ``scripts/atdata-env``; login and
  imports excluded on both sides);
* median ms to pull (fetch, verify CID, validate) and compile one remote schema;
* MB/s loading a 100 MB dataset (4 shards of 25 MB) from PDS blobs, sha256 verified,
  and atdata's ``DatasetLoader.to_dataset`` reading the same entry.

Usage: ``scripts/bench_publish [RUNS]`` (default 3).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from atdata_gen.dynamic import compile_schema_record
from atdata_gen.testing.localnet import LocalNetwork
from atdata_runtime.atmosphere import AtmosphereClient, IdentityResolver
from atdata_runtime.atmosphere.publish import (
    BlobStorage,
    publish_entry,
    publish_schemas,
)
from atdata_runtime.shards import Dataset, write_samples

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT.parent / "shared" / "corpus" / "atdata" / "records"
SIDE = ROOT / "tests" / "interop" / "atdata_side.py"


def atdata(jobs: list[dict[str, object]]) -> list[dict[str, object]]:
    """Run ``jobs`` in one atdata 0.7.0b1 process (see tests/interop/atdata_side.py)."""
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
    )
    if proc.returncode:
        raise SystemExit(f"atdata side failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def figures(values: list[float]) -> str:
    return f"median {statistics.median(values):.1f} (runs: {', '.join(f'{v:.1f}' for v in values)})"


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    base = json.loads((RECORDS / "ImageSample.schema.json").read_text())
    with LocalNetwork.start() as net, tempfile.TemporaryDirectory() as tmp:
        res = IdentityResolver(plc_url=net.plc_url, handle_service=net.pds_url)
        rates = []
        for run in range(runs):
            acct = net.create_account(f"bench{run}")
            client = AtmosphereClient.login(
                acct.handle,
                acct.password,
                resolver=res,
                pds_url=net.pds_url,
                session_file=Path(tmp) / f"{run}.session",
            )
            records = [dict(base, name=f"Bench{i}") for i in range(200)]
            t = time.perf_counter()
            publish_schemas(client, records)
            rates.append(200 / (time.perf_counter() - t))
        jobs: list[dict[str, object]] = []
        for run in range(runs):
            acct = net.create_account(f"atdata{run}")
            jobs.append(
                {
                    "command": "bench_publish",
                    "class": "ImageSample",
                    "count": 200,
                    "pds": net.pds_url,
                    "did": acct.did,
                    "handle": acct.handle,
                    "password": acct.password,
                }
            )
        theirs = [200 / float(r["seconds"]) for r in atdata(jobs)]  # type: ignore[arg-type]
        print(f"publish 200 schema records, ours:   {figures(rates)} records/s")
        print(f"publish 200 schema records, atdata: {figures(theirs)} records/s")
        print(
            "  ratio ours/atdata (medians): "
            f"{statistics.median(rates) / statistics.median(theirs):.2f}"
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
        print(
            f"pull + compile one remote schema: median {statistics.median(times):.1f} ms"
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
        entry = publish_entry(
            client,
            shards,
            schema_uri=pub.write.uri,
            name="big",
            storage=BlobStorage(),
            journal_dir=f"{tmp}/j",
        )
        speeds = []
        for _ in range(runs):
            t = time.perf_counter()
            n = sum(
                1
                for _ in Dataset.from_atproto(entry.uri, client=reader, progress=False)
            )
            speeds.append(total / 1e6 / (time.perf_counter() - t))
        (result,) = atdata(
            [
                {
                    "command": "bench_load",
                    "class": "ImageSample",
                    "entry": entry.uri,
                    "runs": runs,
                    "pds": net.pds_url,
                    "did": client.did,
                }
            ]
        )
        assert result["samples"] == n, result
        theirs = [total / 1e6 / float(t) for t in result["seconds"]]  # type: ignore[attr-defined]
        what = f"load {total / 1e6:.0f} MB ({len(shards)} shards, {n} samples) from PDS blobs"
        print(f"{what}, ours (sha256 verified): {figures(speeds)} MB/s")
        print(f"{what}, atdata (unverified):    {figures(theirs)} MB/s")
        print(
            "  ratio ours/atdata (medians): "
            f"{statistics.median(speeds) / statistics.median(theirs):.2f}"
        )


if __name__ == "__main__":
    main()
