"""torch -> ONNX export of cropmap bundles, with a numeric parity check against torch."""
