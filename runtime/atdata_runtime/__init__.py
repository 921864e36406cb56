"""atdata-runtime: what generated code and training code import.

One subpackage per part; each uses only those listed before it:

- :mod:`atdata_runtime.lex`: record-model runtime (pydantic, regex);
- :mod:`atdata_runtime.samples`: ``PackableSample`` and the sample codec (numpy,
  msgpack);
- :mod:`atdata_runtime.lenses`: lenses between sample types;
- :mod:`atdata_runtime.net`: HTTP transport errors and retries (``http`` extra);
- :mod:`atdata_runtime.shards`: WebDataset shards and ``Dataset[T]`` (local files in
  the core; ``http``/``s3`` extras for remote shards);
- :mod:`atdata_runtime.atmosphere`: the AT Protocol client: publish and load
  ``science.alt.dataset.*`` records (``atproto`` extra);
- :mod:`atdata_runtime.lexicons`: the generated ``science.alt.dataset.*`` record
  models.

Nothing is imported here: ``import atdata_runtime`` costs nothing, and the core never
imports the compiler (``atdata-gen``) or an extra it was installed without.
"""
