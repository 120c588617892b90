"""PyTorch -> .tflite with per-layer precision, for TFLite (LiteRT) targets.

FP32 conversion with ``litert-torch``; per-layer int8 (static, uint8-style asymmetric
activations + int8 per-channel weights), int4 weights (weight-only) and fp16 weights with
``ai-edge-quantizer`` recipes on the FP32 flatbuffer; accuracy with the LiteRT interpreter
(``ai-edge-litert``).  ``litert-torch`` and ``ai-edge-quantizer`` are an optional extra:
``pip install 'hwcompress[tflite]'``.

A layer is named by its torch module name (``features.0.0``); the converter names tensors by
module path (``pkg.VGGSmall/torch.nn.modules.container.Sequential_features/...``), which is
how a recipe entry is matched to one layer.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hwcompress.errors import FileMissingError, MissingDependencyError, ModelError, PolicyError
from hwcompress.fsutil import atomic_write_bytes

if TYPE_CHECKING:
    from torch import nn

    from hwcompress.data import Split
    from hwcompress.records import CompressionPolicy, Target

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'hwcompress[tflite]'"
WEIGHT_OPS: tuple[str, ...] = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "CONV_2D_TRANSPOSE")
DEFAULT_CALIB_IMAGES = 128

_INT8_STATIC: dict[str, Any] = {
    "activation_tensor_config": {"num_bits": 8, "symmetric": False, "granularity": "TENSORWISE", "dtype": "INT"},
    "weight_tensor_config": {"num_bits": 8, "symmetric": True, "granularity": "CHANNELWISE", "dtype": "INT"},
    "compute_precision": "INTEGER",
    "explicit_dequantize": False,
    "skip_checks": False,
    "min_weight_elements": 0,
}
_INT4_WEIGHTS: dict[str, Any] = {
    "weight_tensor_config": {"num_bits": 4, "symmetric": True, "granularity": "CHANNELWISE", "dtype": "INT"},
    "compute_precision": "FLOAT",
    "explicit_dequantize": True,
    "skip_checks": False,
    "min_weight_elements": 0,
}
_FP16_WEIGHTS: dict[str, Any] = {
    "weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"},
    "compute_precision": "FLOAT",
    "explicit_dequantize": True,
    "skip_checks": False,
    "min_weight_elements": 0,
}
_ALGORITHM = {"int8": "min_max_uniform_quantize", "int4": "min_max_uniform_quantize", "fp16": "float_casting", "fp32": "no_quantize"}
_OP_CONFIG: dict[str, dict[str, Any] | None] = {"int8": _INT8_STATIC, "int4": _INT4_WEIGHTS, "fp16": _FP16_WEIGHTS, "fp32": None}


def tflite_available() -> bool:
    """True when litert-torch, ai-edge-quantizer and ai-edge-litert are importable."""
    return all(importlib.util.find_spec(m) is not None for m in ("litert_torch", "ai_edge_quantizer", "ai_edge_litert"))


def require_tflite() -> None:
    """MissingDependencyError (with the install command) unless the TFLite extra is installed."""
    missing = [
        pkg
        for mod, pkg in (("litert_torch", "litert-torch"), ("ai_edge_quantizer", "ai-edge-quantizer"), ("ai_edge_litert", "ai-edge-litert"))
        if importlib.util.find_spec(mod) is None
    ]
    if missing:
        raise MissingDependencyError(
            f"TFLite conversion needs {', '.join(missing)}, which is not installed; run: {INSTALL_HINT}"
        )


def _require_interpreter() -> None:
    if importlib.util.find_spec("ai_edge_litert") is None:
        raise MissingDependencyError(f"running .tflite models needs ai-edge-litert; run: {INSTALL_HINT}")


# --------------------------------------------------------------------------- layers and recipes
def weight_layers(model: nn.Module) -> list[str]:
    """Torch module names of the layers a TFLite policy sets: Conv*d and Linear modules."""
    from torch import nn

    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)
    return [name for name, mod in model.named_modules() if name and isinstance(mod, kinds)]


def tflite_scope(model: nn.Module, module_name: str) -> str:
    """The tensor-name path litert-torch gives module ``module_name`` (class path + attribute)."""
    parts = [f"{type(model).__module__}.{type(model).__qualname__}"]
    mod = model
    for attr in module_name.split("."):
        mod = getattr(mod, attr)  # nn.Module resolves "0" of a Sequential through _modules too
        parts.append(f"{type(mod).__module__}.{type(mod).__qualname__}_{attr}")
    return "/".join(parts)


def _precisions(model: nn.Module, policy: CompressionPolicy, target: Target | None) -> dict[str, str]:
    from hwcompress.quantize import check_supported

    layers = weight_layers(model)
    unknown = sorted(set(policy.precision) - set(layers))
    if unknown:
        raise PolicyError(f"policy names unknown layer(s) {', '.join(unknown)}; the model's layers are: {', '.join(layers)}")
    precisions = {name: policy.precision.get(name, policy.default_precision) for name in layers}
    if target is not None:
        check_supported(precisions, target)
    return precisions


def _weight_ops(content: bytes | bytearray, model: nn.Module) -> dict[str, tuple[Any, Any, Any]]:
    """Layer name -> (flatbuffer model, subgraph, op) of the op whose weight comes from that layer.

    The weight tensor (or the tensor a DEQUANTIZE of it reads) carries the module path; the op's
    own output name need not (the last layer's output is ``serving_default_output_0_output``).
    """
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    fb = fu.read_model(bytearray(content))
    sg = fb.subgraphs[0]
    names = {i: fu.get_tensor_name(t) for i, t in enumerate(sg.tensors)}
    op_names = {v: k for k, v in vars(qtyping.BuiltinOperator).items() if not k.startswith("_")}
    producer: dict[int, Any] = {o: op for op in sg.operators for o in op.outputs}

    def op_name(op: Any) -> str:
        code = fb.operatorCodes[op.opcodeIndex]
        return str(op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?"))

    out: dict[str, tuple[Any, Any, Any]] = {}
    for layer in weight_layers(model):
        pat = re.compile(re.escape(tflite_scope(model, layer)) + r"(?![\w.])")
        for op in sg.operators:
            if op_name(op) not in WEIGHT_OPS or len(op.inputs) < 2:
                continue
            w = int(op.inputs[1])
            src = producer.get(w)
            cands = [names[w]] + ([names[int(src.inputs[0])]] if src is not None and op_name(src) == "DEQUANTIZE" else [])
            if any(pat.search(c) for c in cands):
                out[layer] = (fb, sg, op)
                break
    return out


def tflite_recipe(
    model: nn.Module, policy: CompressionPolicy, fp32_tflite: bytes | bytearray, target: Target | None = None
) -> list[dict[str, Any]]:
    """An ai-edge-quantizer recipe (JSON list) for ``policy`` on the FP32 flatbuffer of ``model``.

    A default entry (``.*``, every op), then one entry per layer that differs, matched on that
    layer's exact op scope (later entries win).  Raises PolicyError for an unknown layer, a
    precision ``target`` does not list, or a layer not found in the flatbuffer.
    """
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    precisions = _precisions(model, policy, target)
    default = policy.default_precision
    recipe: list[dict[str, Any]] = []

    def entry(regex: str, prec: str) -> dict[str, Any]:
        # "*" (every op in scope): ai-edge-quantizer skips a config an op does not support (int4
        # on a DEPTHWISE_CONV_2D) instead of refusing the recipe; tflite_layer_precisions() says
        # what each layer really got.
        e: dict[str, Any] = {"regex": regex, "operation": "*", "algorithm_key": _ALGORITHM[prec]}
        cfg = _OP_CONFIG[prec]
        if cfg is not None:
            e["op_config"] = dict(cfg)
        return e

    if default != "fp32":
        recipe.append(entry(".*", default))
    differing = [name for name, prec in precisions.items() if prec != default]
    if differing:
        ops = _weight_ops(fp32_tflite, model)
        for name in differing:
            if name not in ops:
                raise PolicyError(f"layer {name} was not found in the converted .tflite model; it cannot get its own precision")
            _, sg, op = ops[name]
            scope = fu.get_op_scope(op, sg.tensors)
            recipe.append(entry("^" + re.escape(scope) + "$", precisions[name]))
    return recipe


def tflite_layer_precisions(tflite_path: str | os.PathLike[str], model: nn.Module) -> dict[str, str]:
    """Precision each weight layer of a .tflite model really runs at, read from the flatbuffer.

    ``int8``: integer op on int8 weights; ``int4``/``fp16``: a DEQUANTIZE of 4-bit / float16
    weights feeds a float op; ``int8-weights``: weight-only int8; ``fp32`` otherwise.
    """
    require_tflite()
    from ai_edge_quantizer import qtyping

    types = {v: k for k, v in vars(qtyping.TensorType).items() if not k.startswith("_")}
    content = Path(tflite_path).read_bytes()
    out: dict[str, str] = {}
    for layer, (_, sg, op) in _weight_ops(content, model).items():
        producer = {o: p for p in sg.operators for o in p.outputs}
        w = int(op.inputs[1])
        wtype = types.get(sg.tensors[w].type, "?")
        src = producer.get(w)
        if wtype == "INT8":
            out[layer] = "int8"
        elif src is not None and len(src.inputs) == 1:
            stype = types.get(sg.tensors[int(src.inputs[0])].type, "?")
            out[layer] = {"INT4": "int4", "FLOAT16": "fp16", "INT8": "int8-weights"}.get(stype, stype.lower())
        else:
            out[layer] = "fp32" if wtype == "FLOAT32" else wtype.lower()
    return out


# --------------------------------------------------------------------------- conversion
def _convert_fp32(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    import litert_torch
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            edge = litert_torch.convert(model, (torch.zeros(*input_shape, dtype=torch.float32),))
        return bytes(edge.model_content())
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"litert-torch could not convert {type(model).__name__}: {first}") from exc
    finally:
        model.train(was_training)


def _signature(content: bytes) -> tuple[str, str]:
    from ai_edge_litert.interpreter import Interpreter

    sigs = Interpreter(model_content=content).get_signature_list()
    if not sigs:
        raise ModelError("the converted .tflite model has no signature")
    key = next(iter(sigs))
    return key, sigs[key]["inputs"][0]


def to_tflite(
    model: nn.Module,
    input_shape: tuple[int, ...],
    out_path: str | os.PathLike[str],
    policy: CompressionPolicy,
    calib_x: np.ndarray,
    *,
    target: Target | None = None,
    calib_images: int = DEFAULT_CALIB_IMAGES,
    threads: int = 1,
) -> Path:
    """Convert ``model`` (input (N, C, H, W), static batch) to .tflite with ``policy``'s precisions.

    ``calib_x`` float32 (N, C, H, W): real images for int8 layers (the first ``calib_images``).
    Raises MissingDependencyError without the TFLite extra, PolicyError for a bad policy.
    """
    require_tflite()
    _precisions(model, policy, target)  # fail before the slow conversion
    out = Path(out_path)
    content = _convert_fp32(model, input_shape)
    recipe = tflite_recipe(model, policy, content, target)
    if recipe:
        content = _quantize(content, recipe, calib_x, input_shape, calib_images, threads)
    atomic_write_bytes(out, content)
    log.info("wrote %s (%d bytes, %d recipe entries)", out, len(content), len(recipe))
    if recipe:
        asked = _precisions(model, policy, None)
        got = tflite_layer_precisions(out, model)
        for name, prec in got.items():
            if prec != asked[name]:  # e.g. int4 on a DEPTHWISE_CONV_2D, which ai-edge-quantizer skips
                log.warning("layer %s runs at %s in %s, not %s (not supported for its TFLite op)", name, prec, out.name, asked[name])
    return out


def _quantize(
    content: bytes, recipe: list[dict[str, Any]], calib_x: np.ndarray, input_shape: tuple[int, ...], n: int, threads: int
) -> bytes:
    from ai_edge_quantizer import quantizer

    try:
        os.environ.setdefault("TQDM_DISABLE", "1")  # calibration progress bar
        qt = quantizer.Quantizer(bytearray(content), recipe)
        calibration = None
        if qt.need_calibration:
            key, name = _signature(content)
            batch = int(input_shape[0])
            x = np.ascontiguousarray(calib_x[: max(batch, n - n % batch)], dtype=np.float32)
            if x.shape[0] < batch:
                raise PolicyError(f"need at least {batch} calibration image(s) for int8 layers, got {calib_x.shape[0]}")
            data = [{name: x[i : i + batch]} for i in range(0, x.shape[0] - batch + 1, batch)]
            calibration = qt.calibrate({key: data}, num_threads=threads)
        result = qt.quantize(calibration, enable_progress_report=False)
    except PolicyError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"ai-edge-quantizer failed: {first}") from exc
    if result.quantized_model is None:
        raise ModelError("ai-edge-quantizer returned no model")
    return bytes(result.quantized_model)


# --------------------------------------------------------------------------- running
def tflite_logits(tflite_path: str | os.PathLike[str], x: np.ndarray, *, threads: int = 1) -> np.ndarray:
    """Logits (N, K) float32 of a .tflite classifier in the LiteRT interpreter on ``x`` (N, C, H, W)."""
    _require_interpreter()
    from ai_edge_litert.interpreter import Interpreter

    path = Path(tflite_path)
    if not path.is_file():
        raise FileMissingError(f"TFLite model {path} does not exist")
    try:
        it = Interpreter(model_path=str(path), num_threads=max(1, threads))
        it.allocate_tensors()
    except Exception as exc:
        raise ModelError(f"LiteRT cannot load {path}: {exc}") from exc
    inp = it.get_input_details()[0]
    outd = it.get_output_details()[0]
    shape = [int(d) for d in inp["shape"]]
    batch = shape[0] if shape[0] > 0 else 1
    if list(x.shape[1:]) != shape[1:]:
        raise ModelError(f"{path}: model expects input {shape} but the data is {list(x.shape[1:])}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    outs: list[np.ndarray] = []
    for i in range(0, x.shape[0], batch):
        xb = x[i : i + batch]
        n = xb.shape[0]
        if n < batch:
            xb = np.concatenate([xb, np.zeros((batch - n, *xb.shape[1:]), dtype=np.float32)])
        if inp["dtype"] != np.float32:  # fully integer input: quantize with the tensor's parameters
            scale, zp = inp["quantization"]
            xb = np.clip(np.rint(xb / scale + zp), np.iinfo(inp["dtype"]).min, np.iinfo(inp["dtype"]).max).astype(inp["dtype"])
        it.set_tensor(inp["index"], xb)
        it.invoke()
        y = it.get_tensor(outd["index"])
        if outd["dtype"] != np.float32:
            scale, zp = outd["quantization"]
            y = (y.astype(np.float32) - zp) * scale
        outs.append(np.asarray(y, dtype=np.float32).reshape(batch, -1)[:n])
    return np.concatenate(outs) if outs else np.zeros((0, 0), dtype=np.float32)


def tflite_accuracy(tflite_path: str | os.PathLike[str], split: Split, *, threads: int = 1, limit: int | None = None) -> float:
    """Top-1 accuracy in [0, 1] of a .tflite model in the LiteRT interpreter on the first ``limit`` samples."""
    x, y = split.x[:limit], split.y[:limit]
    if len(y) == 0:
        raise ModelError("cannot measure accuracy on an empty split")
    return float(np.mean(tflite_logits(tflite_path, x, threads=threads).argmax(axis=1) == y))


def tflite_op_counts(tflite_path: str | os.PathLike[str]) -> dict[str, int]:
    """Number of ops per TFLite builtin op name (CONV_2D, QUANTIZE, DEQUANTIZE, ...)."""
    _require_interpreter()
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(tflite_path))
    counts: dict[str, int] = {}
    for op in it._get_ops_details():
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return counts


__all__ = [
    "INSTALL_HINT",
    "require_tflite",
    "tflite_accuracy",
    "tflite_available",
    "tflite_layer_precisions",
    "tflite_logits",
    "tflite_op_counts",
    "tflite_recipe",
    "tflite_scope",
    "to_tflite",
    "weight_layers",
]
