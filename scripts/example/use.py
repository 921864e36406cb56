"""Use the package compiled by scripts/run-example: validate, round-trip, reject."""

import json
import tempfile

import numpy as np
from atdata_runtime.shards import Dataset, write_samples
from example_pkg.com.example.dataset.image_run import HfCheckpoint, ImageRun
from example_pkg.samples.cell_crop_v1_0_0 import CellCrop
from example_pkg.science.alt.dataset.entry import Entry
from pydantic import ValidationError

wire = {
    "$type": "com.example.dataset.imageRun",
    "dataset": "at://did:plc:abc123/science.alt.dataset.entry/3kabc2xyz22",
    "title": "resnet on tiny images",
    "bestLoss": None,
    "checkpoint": {
        "$type": "science.alt.dataset.storageHttp",
        "shards": [
            {
                "url": "https://example.com/ckpt-000000.tar",
                "checksum": {"algorithm": "sha256", "digest": "ab" * 32},
            }
        ],
    },
    "createdAt": "2026-11-22T10:00:00Z",
}
run = ImageRun.from_wire(wire)
print(
    "validated:",
    type(run).__name__,
    "epochs (default) =",
    run.epochs,
    "| checkpoint is",
    type(run.checkpoint).__name__,
)
assert run.to_wire() == wire, "round trip must be exact"
print("round trip: exact")

built = ImageRun(
    dataset=wire["dataset"],
    title="from python",
    created_at="2026-11-22T10:00:00Z",
    best_loss="0.25",
    checkpoint=HfCheckpoint(repo="lab/model"),
)
print("built in Python:", json.dumps(built.to_wire()))

try:
    ImageRun.from_wire(dict(wire, title="x" * 31))
except ValidationError as exc:
    first = exc.errors()[0]
    print("rejected as expected:", first["loc"], first["type"], "-", first["msg"])

print("atdata entry model:", Entry.lex_type, "record key:", Entry.lex_key)

# -- a sample schema record compiled to a typed PackableSample class -------------------

rng = np.random.default_rng(0)
crops = [
    CellCrop(
        image=rng.integers(0, 255, (3, 32, 32), dtype=np.uint8),
        label=["healthy", "mitotic"][i % 2],
    )
    for i in range(100)
]
with tempfile.TemporaryDirectory() as tmp:
    shards = write_samples(crops, f"{tmp}/cells-%06d.tar", maxcount=25, progress=False)
    print(f"wrote {len(shards)} shards of CellCrop samples")
    dataset = Dataset[CellCrop](f"{tmp}/cells-{{000000..000003}}.tar")
    for batch in dataset.ordered(batch_size=32):
        print(
            f"batch: image {batch.image.shape} {batch.image.dtype}, "
            f"labels {batch.label[:2]}…"
        )
        break
    assert list(dataset.ordered()) == crops
    print("read back: all 100 samples equal")
try:
    CellCrop(image=np.zeros((3, 32, 31), np.uint8), label="x").pack()
except ValueError as exc:
    print("rejected as expected:", exc)
