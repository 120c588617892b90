"""Profiler adapters for the device runtimes: LiteRT (``tflite_bench.py``) and TensorRT
(``trt_bench.py``).  Importing this module registers both in the adapter registry.

TensorRT takes the candidate's per-layer precisions from a sidecar next to the ONNX file,
``<model>.precisions.json`` (:func:`precision_sidecar`), holding a CompressionPolicy's
``{"default_precision": ..., "precision": {layer: fp32|fp16|int8}}``; layer names are torch
module names, matched by trt_bench.py against the ONNX node names (path segments).  The JSON is
passed inline on the command line, so a remote run needs no extra upload.
"""

from __future__ import annotations

import json
from pathlib import Path

from hwcompress.errors import PolicyError, TargetError
from hwcompress.profiling.adapters import ProfilerAdapter, register_adapter
from hwcompress.records import Target

TRT_PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")


def precision_sidecar(model: Path) -> Path:
    """``model.onnx`` -> ``model.precisions.json``: per-layer precisions for TensorRT."""
    return model.with_suffix(".precisions.json")


class TfliteAdapter(ProfilerAdapter):
    """LiteRT interpreter: ``tflite_bench.py`` on ``.tflite`` files; XNNPACK from ``options.xnnpack``."""

    runtime = "tflite"
    script = "tflite_bench.py"
    model_suffixes = (".tflite",)

    def runtime_args(self, target: Target) -> list[str]:
        return ["--xnnpack" if target.options.xnnpack else "--no-xnnpack"]


class TrtAdapter(ProfilerAdapter):
    """TensorRT: ``trt_bench.py`` builds an engine from ``.onnx`` on the device and times it."""

    runtime = "tensorrt"
    script = "trt_bench.py"
    model_suffixes = (".onnx",)
    supports_batch = False  # batch mode not supported for this runtime: one engine build per model

    def runtime_args(self, target: Target) -> list[str]:
        opt = target.options
        if opt.trt_workspace_mb < 16:
            raise TargetError(f"target {target.name}: options.trt_workspace_mb is {opt.trt_workspace_mb}; use >= 16 (MiB)")
        if opt.device_index < 0:
            raise TargetError(f"target {target.name}: options.device_index is {opt.device_index}; use >= 0")
        return ["--workspace-mb", str(opt.trt_workspace_mb), "--device", str(opt.device_index)]

    def args(self, model: Path, target: Target, *, per_node: bool = False, seed: int = 0) -> list[str]:
        out = super().args(model, target, per_node=per_node, seed=seed)
        sidecar = precision_sidecar(model)
        if sidecar.is_file():
            out += ["--layer-precisions", _inline_precisions(sidecar, target)]
        return out


def _inline_precisions(path: Path, target: Target) -> str:
    """The sidecar as compact JSON, checked against the precisions TensorRT and the target support."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PolicyError(f"{path}: not a readable JSON file ({exc}); delete it or rewrite it") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: expected a JSON object with default_precision and precision")
    layers = data.get("precision", {})
    default = data.get("default_precision", "fp32")
    if not isinstance(layers, dict):
        raise PolicyError(f"{path}: precision must map layer names to fp32 | fp16 | int8")
    allowed = [p for p in TRT_PRECISIONS if p in target.precisions]
    for name, prec in {**layers, "<default>": default}.items():
        if prec not in allowed:
            raise PolicyError(f"{path}: {name} asks for {prec!r}; target {target.name} with TensorRT supports "
                              f"{', '.join(allowed)}")
    return json.dumps({"default_precision": default, "precision": layers}, separators=(",", ":"), sort_keys=True)


register_adapter(TfliteAdapter())
register_adapter(TrtAdapter())
