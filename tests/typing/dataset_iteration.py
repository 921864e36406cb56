"""Type-checker test cases, in the style of typeshed's ``test_cases``: checked (never
run) by ``tests/test_typing.py`` under ``mypy --strict`` and pyright (strict), with
unused ``# type: ignore`` comments reported, so every ignore below marks an error
that must stay an error.

``typing_samples`` is atdata's four fixture schemas compiled by the test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, assert_type

import numpy as np
from atdata_runtime.samples import PackableSample, SampleBatch
from atdata_runtime.shards import Dataset, collate
from numpy.typing import NDArray
from typing_samples.samples.image_sample_v1_0_0 import ImageSample, ImageSampleBatch
from typing_samples.samples.optional_sample_v1_0_0 import (
    OptionalSample,
    OptionalSampleBatch,
)


@dataclass(kw_only=True)
class Handwritten(PackableSample):
    image: NDArray[np.uint8]
    label: str


@dataclass(kw_only=True)
class Typed(PackableSample["TypedBatch"]):
    x: NDArray[np.float32]


class TypedBatch(SampleBatch[Typed]):
    x: NDArray[np.float32]


def generated(ds: Dataset[ImageSample], opt: Dataset[OptionalSample]) -> None:
    assert_type(ds.ordered(), Iterator[ImageSample])
    assert_type(ds.ordered(None), Iterator[ImageSample])
    assert_type(ds.ordered(batch_size=4), Iterator[ImageSampleBatch])
    assert_type(ds.ordered(4, drop_last=True), Iterator[ImageSampleBatch])
    assert_type(ds.shuffled(seed=1), Iterator[ImageSample])
    assert_type(ds.shuffled(seed=1, batch_size=4), Iterator[ImageSampleBatch])
    for sample in ds:
        assert_type(sample, ImageSample)
        assert_type(sample.image, NDArray[Any])
        assert_type(sample.label, str)
    for batch in ds.ordered(batch_size=4):
        assert_type(batch.image, NDArray[Any] | list[NDArray[Any] | None])
        assert_type(batch.label, list[str])
        assert_type(batch.keys, list[str])
        assert_type(batch.samples, list[ImageSample])
    for ob in opt.shuffled(batch_size=8):
        assert_type(ob, OptionalSampleBatch)
        assert_type(ob.mask, NDArray[Any] | list[NDArray[Any] | None] | None)
        assert_type(ob.score, list[float | None])
        assert_type(ob.tokens, list[list[int]])


def collated(
    images: list[ImageSample],
    mine: list[Handwritten],
    ds: Dataset[ImageSample],
    hw: Dataset[Handwritten],
) -> None:
    assert_type(collate(images), ImageSampleBatch)
    assert_type(collate(mine), SampleBatch[Any])
    # Dataset.collate, the DataLoader's collate_fn, is typed by the dataset's class.
    assert_type(ds.collate(images), ImageSampleBatch)
    assert_type(hw.collate(mine), SampleBatch[Any])


def hand_written(ds: Dataset[Handwritten], typed: Dataset[Typed]) -> None:
    assert_type(ds.ordered(), Iterator[Handwritten])
    assert_type(next(ds.ordered()).image, NDArray[np.uint8])
    assert_type(ds.ordered(batch_size=2), Iterator[SampleBatch[Any]])
    assert_type(typed.ordered(batch_size=2), Iterator[TypedBatch])
    assert_type(next(typed.shuffled(batch_size=2)).x, NDArray[np.float32])


def errors(ds: Dataset[ImageSample]) -> None:
    _ = next(ds.ordered()).keys  # type: ignore[attr-defined]
    _ = next(ds.ordered(batch_size=2)).caption  # type: ignore[attr-defined]
    ds.ordered(batch_size="2")  # type: ignore[call-overload]
    ds.shuffled(4)  # type: ignore[call-overload]
