"""Cost of repository-verified record reads on the real local PDS.

Publishes ``--records`` records, then reads each with ``get_record`` and lists them
with ``list_records``, once per read mode: ``repo`` (the default: the
``com.atproto.sync.getRecord`` CAR proof, commit signature and MST path checked) and
``server-cid`` (the logged opt-out: ``com.atproto.repo.getRecord``, checked only
against the CID the server returns). Prints medians of ``--runs`` runs and the
ratio, measured in the same run.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from atdata_gen.testing.localnet import LocalNetwork, free_port
from atdata_runtime.atmosphere import AtmosphereClient, IdentityResolver

COLLECTION = "com.example.record"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # the opt-out's warning, once per client
    with LocalNetwork.start() as net, tempfile.TemporaryDirectory() as tmp:
        account = net.create_account(f"bench{free_port()}")
        resolver = IdentityResolver(plc_url=net.plc_url, handle_service=net.pds_url)
        writer = AtmosphereClient.login(
            account.handle,
            account.password,
            pds_url=net.pds_url,
            session_file=Path(tmp) / "session.json",
            resolver=resolver,
        )
        uris = [
            writer.create_record(
                COLLECTION,
                f"b{i:04d}",
                {"$type": COLLECTION, "name": f"record {i}", "n": i},
                validate=False,
            ).uri
            for i in range(args.records)
        ]
        medians: dict[str, tuple[float, float]] = {}
        for mode in ("repo", "server-cid"):
            client = AtmosphereClient(resolver=resolver, verify=mode)  # type: ignore[arg-type]
            client.get_record(uris[0], validate=False)  # warm the caches
            gets, lists = [], []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                for uri in uris:
                    client.get_record(uri, validate=False)
                gets.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                n = sum(1 for _ in client.list_records(account.did, COLLECTION))
                lists.append(time.perf_counter() - t0)
                assert n == len(uris), n
            medians[mode] = (statistics.median(gets), statistics.median(lists))
        n = len(uris)
        print(f"verified reads, {n} records on the local PDS, median of {args.runs}")
        for mode, (get, lst) in medians.items():
            print(
                f"  {mode:>10}: get_record {1000 * get / n:6.2f} ms/record   "
                f"list_records {lst:.3f} s"
            )
        (vg, vl), (ug, ul) = medians["repo"], medians["server-cid"]
        print(
            f"  verified / unverified: get_record {vg / ug:.2f}x, list {vl / ul:.1f}x"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
