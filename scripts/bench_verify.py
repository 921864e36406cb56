"""Cost of repository-verified record reads on the real local PDS.

Publishes ``--records`` records, then reads each with ``get_record`` and lists them
with ``list_records``, once per read mode: ``repo`` (the default: the
``com.atproto.sync.getRecord`` CAR proof, commit signature and MST path checked) and
``server-cid`` (the logged opt-out: ``com.atproto.repo.getRecord``, checked only
against the CID the server returns). Prints medians of ``--runs`` runs and the
ratio, measured in the same run. ``--json PATH`` writes the benchlib part (table
``verify``: the verified mode against the unverified one of the same run).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

from atdata_gen.testing.localnet import LocalNetwork, free_port
from atdata_runtime.atmosphere import AtmosphereClient, IdentityResolver

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

COLLECTION = "com.example.record"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    benchlib.add_json_arg(ap)
    args = ap.parse_args()
    report = benchlib.Report(
        "verify", settings={"runs": args.runs, "records": args.records}
    )
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
        modes: tuple[Literal["repo", "server-cid"], ...] = ("repo", "server-cid")
        clients = {m: AtmosphereClient(resolver=resolver, verify=m) for m in modes}
        for client in clients.values():
            client.get_record(uris[0], validate=False)  # warm the caches
        gets: dict[str, list[float]] = {m: [] for m in modes}
        lists: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(args.runs):  # interleaved, so drift hits both modes alike
            for mode, client in clients.items():
                t0 = time.perf_counter()
                for uri in uris:
                    client.get_record(uri, validate=False)
                gets[mode].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                n = sum(1 for _ in client.list_records(account.did, COLLECTION))
                lists[mode].append(time.perf_counter() - t0)
                assert n == len(uris), n
        for mode in modes:
            medians[mode] = (
                statistics.median(gets[mode]),
                statistics.median(lists[mode]),
            )
            key = mode.replace("-", "_")
            report.metric(
                f"get_record_{key}_ms",
                [1000 * g / len(uris) for g in gets[mode]],
                "ms",
                label=f"get_record per record, verify={mode}",
            )
            report.metric(
                f"list_records_{key}_s",
                lists[mode],
                "s",
                label=f"list_records of {len(uris)} records, verify={mode}",
            )
        n = len(uris)
        print(f"verified reads, {n} records on the local PDS, median of {args.runs}")
        for label, (get, lst) in medians.items():
            print(
                f"  {label:>10}: get_record {1000 * get / n:6.2f} ms/record   "
                f"list_records {lst:.3f} s"
            )
        (vg, vl), (ug, ul) = medians["repo"], medians["server-cid"]
        print(
            f"  verified / unverified: get_record {vg / ug:.2f}x, list {vl / ul:.1f}x"
        )
    report.row(
        "verify",
        "`get_record` (ms/record), repo-verified vs server CID",
        "get_record_repo_ms",
        peer="get_record_server_cid_ms",
        peer_name="unverified (server-cid)",
        fmt=".2f",
    )
    report.row(
        "verify",
        f"`list_records` of {args.records} records (s), repo-verified vs server CID",
        "list_records_repo_s",
        peer="list_records_server_cid_s",
        peer_name="unverified (server-cid)",
        fmt=".3f",
    )
    report.note(
        "the two modes run interleaved against one local PDS; "
        "repo = com.atproto.sync.getRecord CAR proof, commit signature and MST path "
        "checked; server-cid = com.atproto.repo.getRecord, checked only against the "
        "CID the server returns"
    )
    report.write(args.json)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
