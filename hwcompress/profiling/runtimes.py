"""Profiler adapters (backends) for the device runtimes: LiteRT (``tflite_bench.py``) and
TensorRT (``trt_bench.py``).  Importing this module registers both in the adapter registry.

The device file of a TFLite target is converted from the PyTorch model with the policy
(:func:`hwcompress.tflite.to_tflite`); a TensorRT target runs the quantized ONNX file, with
the policy beside it as a precision sidecar.

TensorRT takes the candidate's per-layer precisions from a sidecar next to the ONNX file,
``<model>.precisions.json`` (:func:`precision_sidecar`), holding a CompressionPolicy's
``{"default_precision": ..., "precision": {layer: fp32|fp16|int8}}``; layer names are torch
module names, matched by trt_bench.py against the ONNX node names (path segments).  The JSON is
passed inline on the command line, so a remote run needs no extra upload.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from hwcompress.errors import ModelError, PolicyError, TargetError
from hwcompress.profiling.adapters import ProfilerAdapter, _calib, pip_install_command, register_adapter
from hwcompress.records import CompressionPolicy, Target

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

TRT_PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")


def precision_sidecar(model: Path) -> Path:
    """``model.onnx`` -> ``model.precisions.json``: per-layer precisions for TensorRT."""
    return model.with_suffix(".precisions.json")


class TfliteAdapter(ProfilerAdapter):
    """LiteRT interpreter: ``tflite_bench.py`` on ``.tflite`` files; XNNPACK from ``options.xnnpack``."""

    runtime = "tflite"
    script = "tflite_bench.py"
    model_suffixes = (".tflite",)
    display_name = "TFLite"
    needs_torch_model = True
    pip_package = "ai-edge-litert"

    def runtime_args(self, target: Target) -> list[str]:
        return ["--xnnpack" if target.options.xnnpack else "--no-xnnpack"]

    def device_file(
        self, model: nn.Module | None, shape: tuple[int, ...], stem: Path, target: Target,
        policy: CompressionPolicy | None = None, calib_x: np.ndarray | None = None, *, fp32_onnx: Path | None = None,
    ) -> Path:
        """``stem.tflite`` converted from the PyTorch ``model`` with ``policy`` (fp32 when None);
        ``fp32_onnx`` is not used."""
        from hwcompress.quantize import uniform_policy
        from hwcompress.tflite import to_tflite

        if model is None:
            raise ModelError(f"target {target.name} runs TFLite: give the PyTorch model, not an ONNX file")
        pol = policy or uniform_policy("fp32")
        return to_tflite(model, shape, stem.with_suffix(".tflite"), pol, _calib(calib_x, shape), target=target,
                         threads=target.threads)

    def layer_precisions(self, path: Path, model: nn.Module | None = None) -> dict[str, str]:
        from hwcompress.tflite import tflite_layer_precisions

        if model is None:
            raise ModelError(f"{path.name}: the layer precisions of a .tflite file need the PyTorch model")
        return tflite_layer_precisions(path, model)

    def install_command(self, python: str = "python3", *, jetpack: str = "", externally_managed: bool = False,
                        arch: str = "") -> str:
        cmd = pip_install_command(self.pip_package, python, externally_managed=externally_managed)
        if arch in ("armv7l", "armv6l"):
            cmd = cmd.replace("ai-edge-litert", "tflite-runtime 'numpy<2'")
            return cmd + "  (32-bit OS: ai-edge-litert has no armv7 wheels)"
        return cmd + "  (a device with full TensorFlow needs nothing more: tensorflow.lite is used)"


class TrtAdapter(ProfilerAdapter):
    """TensorRT: ``trt_bench.py`` builds an engine from ``.onnx`` on the device and times it."""

    runtime = "tensorrt"
    script = "trt_bench.py"
    model_suffixes = (".onnx",)
    supports_batch = False  # batch mode not supported for this runtime: one engine build per model
    display_name = "TensorRT"
    needs_cuda = True
    pip_package = "tensorrt"
    #: symmetric int8 activations (TensorRT's explicit quantization); full-range weights unless asked
    quant_defaults: Mapping[str, Any] = MappingProxyType({"activation": "int8", "symmetric_activations": True})
    detect_reduce_range = False

    def device_file(
        self, model: nn.Module | None, shape: tuple[int, ...], stem: Path, target: Target,
        policy: CompressionPolicy | None = None, calib_x: np.ndarray | None = None, *, fp32_onnx: Path | None = None,
    ) -> Path:
        """The ONNX file of :meth:`ProfilerAdapter.device_file`; with ``policy``, also its precision
        sidecar (per-layer precision constraints for the engine builder)."""
        path = super().device_file(model, shape, stem, target, policy, calib_x, fp32_onnx=fp32_onnx)
        if policy is not None:
            from hwcompress.fsutil import atomic_write_text

            atomic_write_text(precision_sidecar(path), policy.to_json())
        return path

    def install_command(self, python: str = "python3", *, jetpack: str = "", externally_managed: bool = False,
                        arch: str = "") -> str:
        py = python if python else "python3"
        if jetpack == "4":
            return ("TensorRT 8.2 comes with JetPack 4.6; its Python binding and numpy are Debian packages: "
                    "sudo apt-get install python3-libnvinfer python3-numpy (use the system python3, 3.6.9)")
        if jetpack:
            return (f"TensorRT comes with JetPack {jetpack}: sudo apt-get install nvidia-jetpack (or just "
                    "python3-libnvinfer python3-numpy), with the system python3")
        pip = f"{py} -m pip install 'tensorrt>=8.5,<12'"
        if externally_managed:
            return ("python3 -m venv ~/hwc && ~/hwc/bin/pip install 'tensorrt>=8.5,<12' numpy, then set "
                    "connection.python = \"~/hwc/bin/python\" (PyPI's tensorrt 8.5-11.x; trt_bench.py supports those "
                    "and JetPack's 8.2)")
        return f"{pip}  (PyPI's tensorrt 8.5-11.x; trt_bench.py supports those and JetPack's 8.2)"

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
