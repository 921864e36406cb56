"""Figures for publishing and loading on a real local PDS (medians of several runs).

* records/s publishing 200 schema records (ours: verified, exactly-once writes);
* median ms to pull (fetch, verify CID, validate) and compile one remote schema;
* MB/s loading a 100 MB dataset (4 shards of 25 MB) from PDS blobs, sha256 verified.

atdata 0.7's publisher in the same run is not measured yet (see the closing note of
issue 5).
"""

from __future__ import annotations

import json
import statistics
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
from atdata_runtime.dataset import Dataset, write_samples

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT.parent / "shared" / "corpus" / "atdata" / "records"


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
        print(
            f"publish 200 schema records: median {statistics.median(rates):.1f} records/s "
            f"(runs: {', '.join(f'{r:.1f}' for r in rates)})"
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
        print(
            f"load {total / 1e6:.0f} MB ({len(shards)} shards, {n} samples) from PDS blobs: "
            f"median {statistics.median(speeds):.1f} MB/s"
        )


if __name__ == "__main__":
    main()
