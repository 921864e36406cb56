"""The sample codec: :class:`PackableSample` classes (generated or hand-written),
their msgpack wire form, array payloads, and the schema record of a class.

- :mod:`.codec`: ``PackableSample``, ``FieldSpec``, ``SampleBatch``, pack/unpack;
- :mod:`.ndarray`: the ``.npy`` array payloads (atdata's ndarray shim);
- :mod:`.schema`: class → ``science.alt.dataset.schema`` record.

Needs ``numpy`` and ``msgpack``; imports nothing above it in the runtime.
"""

from .codec import (
    ENCODINGS,
    EncodedBlob,
    FieldSpec,
    PackableSample,
    SampleBatch,
    SampleFormatError,
    Unknown,
    generated_sample_classes,
    sample_class,
)
from .schema import schema_record

__all__ = [
    "ENCODINGS",
    "EncodedBlob",
    "FieldSpec",
    "PackableSample",
    "SampleBatch",
    "SampleFormatError",
    "Unknown",
    "generated_sample_classes",
    "sample_class",
    "schema_record",
]
