"""The contract every package shares: what training, the exporters and inference must agree on.

- :mod:`cropmap.contract.bands`: the canonical Sentinel-2 band names;
- :mod:`cropmap.contract.metadata`: the bundle metadata (:class:`~cropmap.contract.metadata.BundleMetadata`
  and its parts) and its JSON round-trip, the document every bundle carries;
- :mod:`cropmap.contract.timegrid`: placing dates on a bundle's time grid and filling gaps along time;
- :mod:`cropmap.contract.clouds`: the cloud rule, which observations count as invalid before the gap fill.

Training prepares its series, the exporters write their metadata and inference reads stacks with these same
modules, so a model never sees data prepared differently from what it was trained on. The errors they raise are
:mod:`cropmap.errors`' (shared as well).

The package needs numpy alone: it imports neither ONNX Runtime nor torch nor rasterio (a test runs
``import cropmap.contract`` in a fresh interpreter to prove it). Opening a bundle with ONNX Runtime is the runtime
side's business (:mod:`cropmap.runtime`).
"""
