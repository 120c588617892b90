"""Device latency model (issue 21): a per-layer latency table measured on the target
(:mod:`hwcompress.latency.table`, units from :mod:`hwcompress.latency.graph`) and a predictor =
table entries + a residual fitted to full-model measurements (:mod:`hwcompress.latency.predictor`).

Nothing heavy is imported here: onnx, onnxruntime and torch load inside the functions that use them.
"""
