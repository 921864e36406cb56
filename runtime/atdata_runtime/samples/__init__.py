"""The sample codec: :class:`PackableSample` classes (generated or hand-written),
their msgpack wire form, array payloads, and the schema record of a class.

- :mod:`.codec`: ``PackableSample``, ``FieldSpec``, ``SampleBatch``, pack/unpack;
- :mod:`.ndarray`: the ``.npy`` array payloads (atdata's ndarray shim);
- :mod:`.schema`: class → ``science.alt.dataset.schema`` record;
- :mod:`.errors`: :class:`SampleFormatError` and :class:`ArrayFormatError`, each with
  a location (shard, member, field path) and a rule ID.

Needs ``numpy`` and ``msgpack``; imports nothing above it in the runtime.
"""

from .codec import (
    ENCODINGS,
    MAX_VALUE_DEPTH,
    EncodedBlob,
    FieldSpec,
    PackableSample,
    SampleBatch,
    SampleFormatError,
    Unknown,
    generated_sample_classes,
    sample_class,
)
from .errors import ArrayFormatError
from .schema import schema_record

__all__ = [
    "ENCODINGS",
    "MAX_VALUE_DEPTH",
    "ArrayFormatError",
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
