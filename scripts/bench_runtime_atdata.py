"""atdata 0.7.0b1's side of scripts/bench_runtime (runs in its Python 3.12 env,
``scripts/atdata-env``).

One process for the whole run (importing atdata takes seconds), so that each of
atdata's rounds runs right next to ours: it reads one JSON command per line on stdin
and answers one JSON line on stdout.

* ``{"op": "codec", "n_small": N, "n_image": N, "n_big": N}``: one round of the
  codec timings → ``{"small_pack_us", "small_unpack_us", "image_pack_us",
  "image_unpack_us", "big_pack_s", "big_unpack_s"}`` (per call);
* ``{"op": "read", "url": URL, "cls": "Image" | "Blob", "batch": null | N}``: one
  pass of ``atdata.Dataset[cls](URL).ordered(batch_size=batch)`` →
  ``{"samples", "seconds"}``;
* ``{"op": "quit"}``.

The samples are the same as ours (scripts/bench_runtime.py): ``Small`` (int, float,
str), ``Image`` (ndarray + str; 3×224×224 uint8 for the codec), ``Big`` (one 64 MiB
float32 array), ``Blob`` (uint8 ndarray + str, the size curve's shards).
"""

import json
import sys
import time

import atdata
import numpy as np
from numpy.typing import NDArray


@atdata.packable
class Small:
    x: int
    y: float
    name: str


@atdata.packable
class Image:
    image: NDArray
    label: str


@atdata.packable
class Big:
    data: NDArray


@atdata.packable
class Blob:
    data: NDArray
    key: str


CLASSES = {"Image": Image, "Blob": Blob}


def per_call(fn, n):
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def main() -> None:
    small = Small(x=7, y=0.5, name="sample-000123")
    image = Image(
        image=np.random.default_rng(0).integers(0, 255, (3, 224, 224), dtype=np.uint8),
        label="a photo",
    )
    big = Big(data=np.random.default_rng(1).random(16 * 1024 * 1024, dtype=np.float32))
    sp, ip, bp = small.packed, image.packed, big.packed
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        if cmd["op"] == "codec":
            ns, ni, nb = cmd["n_small"], cmd["n_image"], cmd["n_big"]
            result = {
                "small_pack_us": per_call(lambda: small.packed, ns) * 1e6,
                "small_unpack_us": per_call(lambda: Small.from_bytes(sp), ns) * 1e6,
                "image_pack_us": per_call(lambda: image.packed, ni) * 1e6,
                "image_unpack_us": per_call(lambda: Image.from_bytes(ip), ni) * 1e6,
                "big_pack_s": per_call(lambda: big.packed, nb),
                "big_unpack_s": per_call(lambda: Big.from_bytes(bp), nb),
            }
        elif cmd["op"] == "read":
            cls = CLASSES[cmd["cls"]]
            batch = cmd["batch"]
            t = time.perf_counter()
            if batch:
                n = sum(
                    len(b.samples)
                    for b in atdata.Dataset[cls](cmd["url"]).ordered(batch_size=batch)
                )
            else:
                n = sum(1 for _ in atdata.Dataset[cls](cmd["url"]).ordered())
            result = {"samples": n, "seconds": time.perf_counter() - t}
        else:
            result = {"error": f"unknown op {cmd['op']!r}"}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
