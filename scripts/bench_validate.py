"""Benchmark: validating one realistic ``app.bsky.feed.post`` record from JSON.

Compiles the official corpus into a temporary package, then times, interleaved and
repeated (median of ``--runs`` runs of ``--n`` records each):

* ours: ``Post.from_json(text)`` (formats, UTF-8 byte lengths and graphemes checked);
* ours, from a decoded dict: ``Post.from_wire(obj)``;
* the atproto SDK: ``models.AppBskyFeedPost.Record.model_validate(obj)`` and
  ``model_validate_json(text)`` (its default, non-strict string formats).

Prints records/s and the ratio ours / SDK.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

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


def rate(fn, arg, n: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for _ in range(n):
        fn(arg)
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args()

    from atproto import models
    from conftest import OFFICIAL, compile_to

    with tempfile.TemporaryDirectory(
        dir="/dev/shm" if Path("/dev/shm").is_dir() else None
    ) as tmp:
        compile_to(Path(tmp), [OFFICIAL], "bench_pkg")
        sys.path.insert(0, tmp)
        from bench_pkg.app.bsky.feed.post import Post

        text = json.dumps(RECORD)
        assert Post.from_json(text).to_wire() == RECORD
        sdk = models.AppBskyFeedPost.Record
        sdk.model_validate(RECORD)
        strict = {"strict_string_format": True}
        cases = {
            "ours    from_json(text)": (Post.from_json, text),
            "ours    from_wire(dict)": (Post.from_wire, RECORD),
            "atproto model_validate_json(text)": (sdk.model_validate_json, text),
            "atproto model_validate(dict)": (sdk.model_validate, RECORD),
            "atproto model_validate(dict), strict formats": (
                lambda obj: sdk.model_validate(obj, context=strict),
                RECORD,
            ),
        }
        results: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.runs):
            for label, (fn, arg) in cases.items():
                results[label].append(rate(fn, arg, args.n))
        med = {k: statistics.median(v) for k, v in results.items()}
        print(
            f"validate app.bsky.feed.post: median of {args.runs} runs x {args.n} records"
        )
        for label, value in med.items():
            print(f"  {label:46} {value:10,.0f} records/s")
        ours_text = med["ours    from_json(text)"]
        ours_dict = med["ours    from_wire(dict)"]
        text_sdk = med["atproto model_validate_json(text)"]
        dict_sdk = med["atproto model_validate(dict)"]
        strict_sdk = med["atproto model_validate(dict), strict formats"]
        print(
            f"  ratio ours/atproto, text:                       {ours_text / text_sdk:.2f}"
        )
        print(
            f"  ratio ours/atproto, dict:                       {ours_dict / dict_sdk:.2f}"
        )
        print(
            f"  ratio ours/atproto with strict formats, dict:   {ours_dict / strict_sdk:.2f}"
        )


if __name__ == "__main__":
    main()
