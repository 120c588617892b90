"""Per-layer mixed precision for ONNX models: fp32, fp16, int8 (QDQ) and int4 weights.

One precision per weight layer (Conv, Gemm, MatMul with a constant weight), named like the
torch module it came from (``features.0.0``), so stage 1 (pruning) and stage 2 use the same
names.  What each precision becomes in the graph:

- ``int8``: ``onnxruntime.quantization.quantize_static`` in QDQ format over real calibration
  images; by default uint8 activations + int8 per-channel weights, ``reduce_range`` on x86
  without VNNI (measured here: int8 activations fuse badly and full-range weights cost
  0.7-1.0 pt of accuracy).  Ops between int8 layers (Relu, MaxPool, Add, ...) join them.
- ``int4``: weight-only, per output channel, symmetric; a native opset-21 ``DequantizeLinear``
  of an INT4 initializer feeds the float op.  Smaller, but on x86 CPUs *slower* than fp32.
- ``fp16``: the layer's weights in float16 between two ``Cast`` nodes (fp32 elsewhere).
- ``fp32``: left alone (excluded from quantization).

onnx, onnxruntime and ml_dtypes are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hwcompress.errors import FileMissingError, ModelError, PolicyError, UnsupportedLayerError
from hwcompress.fsutil import temp_path_beside

if TYPE_CHECKING:
    import onnx
    from torch import nn

    from hwcompress.records import CompressionPolicy, Target

log = logging.getLogger(__name__)

WEIGHT_OPS: tuple[str, ...] = ("Conv", "Gemm", "MatMul")
INT4_OPSET = 21
DEFAULT_CALIB_IMAGES = 256
ACTIVATION_TYPES: tuple[str, ...] = ("uint8", "int8")
CALIB_METHODS: tuple[str, ...] = ("minmax", "percentile", "entropy")


# --------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class QuantLayer:
    """One weight layer of an ONNX graph; ``name`` is the key a policy uses for it."""

    name: str
    node: str
    op_type: str
    module: str
    weight: str
    params: int

    def keys(self) -> tuple[str, ...]:
        """Every name a policy may use for this layer: torch module name, then ONNX node name."""
        return tuple(k for k in (self.module, self.node) if k)


def module_name_from_node(node_name: str) -> str:
    """Torch module name from a legacy-exporter node name, "" when there is no scope.

    ``/features/features.0/features.0.0/Conv`` -> ``features.0.0``;
    ``/layers/layers.3/shortcut/shortcut.0/Conv`` -> ``layers.3.shortcut.0``;
    ``/classifier/Gemm`` -> ``classifier``.
    """
    if not node_name.startswith("/"):
        return ""
    scopes = [s for s in node_name.strip("/").split("/")[:-1] if s]
    parts: list[str] = []
    prev = ""
    for scope in scopes:
        # A child of a Sequential/ModuleList is named "<parent attr>.<index>" in its scope.
        parts.append(scope[len(prev) + 1 :] if prev and scope.startswith(prev + ".") else scope)
        prev = scope
    return ".".join(parts)


def _load(onnx_path: str | os.PathLike[str]) -> onnx.ModelProto:
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise FileMissingError(f"ONNX model {path} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise ModelError(f"{path} is not a readable ONNX model: {exc}") from exc


def _layers_of(model: onnx.ModelProto, module_names: set[str] | None = None) -> list[QuantLayer]:
    inits = {i.name: i for i in model.graph.initializer}
    # Weights sometimes reach the op through an Identity of an initializer (shared constants).
    aliases = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity" and n.input[0] in inits}
    out: list[QuantLayer] = []
    for n in model.graph.node:
        if n.op_type not in WEIGHT_OPS or len(n.input) < 2:
            continue
        wname = aliases.get(n.input[1], n.input[1])
        if wname not in inits:
            continue  # activation x activation MatMul: nothing to quantize per layer
        module = module_name_from_node(n.name)
        if module_names is not None and module not in module_names:
            module = ""
        params = int(np.prod(inits[wname].dims)) if inits[wname].dims else 1
        out.append(QuantLayer(module or n.name, n.name, n.op_type, module, n.input[1], params))
    names = [layer.name for layer in out]
    if len(set(names)) != len(names):  # two nodes from one module (rare): fall back to node names
        out = [dataclasses.replace(layer, name=layer.node) for layer in out]
    return out


def quantizable_layers(onnx_path: str | os.PathLike[str], model: nn.Module | None = None) -> list[QuantLayer]:
    """Weight layers of an ONNX model in graph order; names are torch module names where recoverable.

    With ``model``, only names that exist in ``model.named_modules()`` are used as module names.
    """
    known = {name for name, _ in model.named_modules()} if model is not None else None
    return _layers_of(_load(onnx_path), known)


def resolve_precisions(
    layers: list[QuantLayer], policy: CompressionPolicy, target: Target | None = None
) -> dict[str, str]:
    """Precision per layer name (policy entry, else the policy's default).

    Raises PolicyError for a policy entry that names no layer, or a precision ``target`` does
    not list.
    """
    by_key: dict[str, QuantLayer] = {}
    for layer in layers:
        for key in layer.keys():
            by_key.setdefault(key, layer)
    unknown = sorted(k for k in policy.precision if k not in by_key)
    if unknown:
        names = ", ".join(layer.name for layer in layers)
        raise PolicyError(f"policy names unknown layer(s) {', '.join(unknown)}; the model's layers are: {names}")
    out: dict[str, str] = {}
    for layer in layers:
        prec = next((policy.precision[k] for k in layer.keys() if k in policy.precision), policy.default_precision)
        out[layer.name] = prec
    if target is not None:
        check_supported(out, target)
    return out


def check_supported(precisions: dict[str, str], target: Target) -> None:
    """PolicyError naming the first layer whose precision ``target.precisions`` does not list."""
    for name, prec in precisions.items():
        if prec not in target.precisions:
            raise PolicyError(
                f"layer {name}: precision {prec} is not supported by target {target.name} "
                f"(it supports {', '.join(target.precisions)}); change the policy or the target's precisions"
            )


# --------------------------------------------------------------------------- options
def has_vnni(cpuinfo: str | None = None) -> bool:
    """Whether this x86 CPU has VNNI (flags avx512_vnni or avx_vnni in /proc/cpuinfo)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & {"avx512_vnni", "avx_vnni"})


def _is_x86() -> bool:
    import platform

    return platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


@dataclass(frozen=True)
class QuantOptions:
    """Settings for int8 quantization; :meth:`for_target` picks them for a device.

    ``reduce_range``: 7-bit weights, needed on x86 without VNNI (u8s8 saturation).
    ``activation``: ``uint8`` (asymmetric, ORT CPU) or ``int8`` (symmetric, TensorRT).
    """

    activation: str = "uint8"
    per_channel: bool = True
    reduce_range: bool = False
    symmetric_activations: bool = False
    calib_method: str = "minmax"
    calib_images: int = DEFAULT_CALIB_IMAGES

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATION_TYPES:
            raise PolicyError(f"activation type {self.activation!r}: choose one of {', '.join(ACTIVATION_TYPES)}")
        if self.calib_method not in CALIB_METHODS:
            raise PolicyError(f"calibration method {self.calib_method!r}: choose one of {', '.join(CALIB_METHODS)}")
        if self.calib_images < 1:
            raise PolicyError(f"calib_images must be >= 1, got {self.calib_images}")

    @classmethod
    def for_target(cls, target: Target, *, reduce_range: bool | None = None) -> QuantOptions:
        """Defaults per runtime (its backend's ``quant_defaults``); ``reduce_range=None`` detects it
        (local x86 without VNNI -> True) where the backend does (``detect_reduce_range``), else False."""
        from hwcompress.profiling.adapters import backend_for

        backend = backend_for(target)
        if reduce_range is None:
            if not backend.detect_reduce_range:
                reduce_range = False
            elif target.connection.kind == "local":
                reduce_range = _is_x86() and not has_vnni()
            else:  # unknown remote CPU: 7-bit weights are safe everywhere, at ~no accuracy cost
                reduce_range = True
        return cls(reduce_range=reduce_range, **backend.quant_defaults)


# --------------------------------------------------------------------------- quantize
class _ArrayReader:
    """onnxruntime CalibrationDataReader over an (N, C, H, W) float32 array."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int) -> None:
        self.input_name = input_name
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.batch = batch
        self.pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos + self.batch > self.x.shape[0]:
            return None
        xb = self.x[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return {self.input_name: xb}

    def rewind(self) -> None:
        self.pos = 0

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while (item := self.get_next()) is not None:
            yield item


_ORT_NOISE = re.compile(r"pre-process|Expected bias|do not support 16-bit/4-bit|Please consider")


class _DropOrtNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _ORT_NOISE.search(record.getMessage())


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """onnxruntime.quantization logs advice on the root logger; keep it out of our output."""
    root = logging.getLogger()
    filt = _DropOrtNoise()
    root.addFilter(filt)
    handlers = list(root.handlers)
    for h in handlers:
        h.addFilter(filt)
    try:
        yield
    finally:
        root.removeFilter(filt)
        for h in handlers:
            h.removeFilter(filt)


def _inline_constant_identities(model: onnx.ModelProto) -> None:
    """Replace ``Identity(initializer)`` nodes (deduplicated constants) by initializers."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    outputs = {o.name for o in g.output}
    for n in list(g.node):
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs:
            arr = numpy_helper.to_array(inits[n.input[0]])
            g.initializer.append(numpy_helper.from_array(arr, n.output[0]))
            g.node.remove(n)
    used = {i for n in g.node for i in n.input} | outputs
    for init in list(g.initializer):
        if init.name not in used:
            g.initializer.remove(init)


def _region_nodes(model: onnx.ModelProto, weight_prec: dict[str, str]) -> list[str]:
    """Nodes to quantize: int8 weight nodes, plus other ops whose every activation input is int8."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    label: dict[str, str] = {i.name: "float" for i in g.input}
    chosen: list[str] = []
    for n in g.node:
        if n.name in weight_prec:
            prec = weight_prec[n.name]
        else:
            acts = [label.get(i, "float") for i in n.input if i and i not in inits]
            prec = "int8" if acts and all(a == "int8" for a in acts) else "float"
        if prec == "int8":
            chosen.append(n.name)
        for o in n.output:
            label[o] = "int8" if prec == "int8" else "float"
    return chosen


def _int4_weights(model: onnx.ModelProto, layers: list[QuantLayer]) -> None:
    """Weight-only int4 (symmetric, per output channel) through opset-21 DequantizeLinear."""
    import ml_dtypes
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    nodes = {n.name: n for n in g.node}
    new: list[onnx.NodeProto] = []
    for layer in layers:
        node = nodes[layer.node]
        wname = node.input[1]
        if wname not in inits:
            raise UnsupportedLayerError(f"layer {layer.name} ({layer.op_type}): int4 needs a constant weight initializer")
        w = numpy_helper.to_array(inits[wname]).astype(np.float32)
        if node.op_type == "Conv":
            axis = 0
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 0 if trans_b else 1
        else:  # MatMul: (K, N), channels on the last axis
            axis = w.ndim - 1
        moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
        amax = np.abs(moved).max(axis=1)
        scale = np.where(amax > 0, amax / 7.0, 1.0).astype(np.float32)
        bshape = [1] * w.ndim
        bshape[axis] = -1
        q = np.clip(np.rint(w / scale.reshape(bshape)), -8, 7).astype(ml_dtypes.int4)
        base = f"{wname}_int4"
        g.initializer.extend(
            [
                numpy_helper.from_array(q, base),
                numpy_helper.from_array(scale, f"{base}_scale"),
                numpy_helper.from_array(np.zeros(w.shape[axis], dtype=ml_dtypes.int4), f"{base}_zero_point"),
            ]
        )
        deq_out = f"{base}_dequantized"
        new.append(
            helper.make_node(
                "DequantizeLinear", [base, f"{base}_scale", f"{base}_zero_point"], [deq_out], name=f"{base}_DequantizeLinear", axis=axis
            )
        )
        node.input[1] = deq_out
    for n in reversed(new):
        g.node.insert(0, n)
    _drop_unused_initializers(model)


def _fp16_layers(model: onnx.ModelProto, layers: list[QuantLayer]) -> None:
    """Run each layer in float16: weights/bias stored as float16, Cast in and out of the op."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    targets = {layer.node for layer in layers}
    nodes = list(g.node)
    del g.node[:]
    for n in nodes:
        if n.name not in targets:
            g.node.append(n)
            continue
        for idx, name in enumerate(list(n.input)):
            if not name:
                continue
            if name in inits:
                arr = numpy_helper.to_array(inits[name])
                if arr.dtype == np.float32:
                    h_name = f"{name}_fp16"
                    if h_name not in inits:
                        inits[h_name] = numpy_helper.from_array(arr.astype(np.float16), h_name)
                        g.initializer.append(inits[h_name])
                    n.input[idx] = h_name
                continue
            cast_out = f"{n.name}_input{idx}_fp16"
            g.node.append(helper.make_node("Cast", [name], [cast_out], name=f"{n.name}/CastToFp16_{idx}", to=TensorProto.FLOAT16))
            n.input[idx] = cast_out
        outs = list(n.output)
        for idx, name in enumerate(outs):
            n.output[idx] = f"{name}_fp16"
        g.node.append(n)
        for idx, name in enumerate(outs):
            g.node.append(helper.make_node("Cast", [f"{name}_fp16"], [name], name=f"{n.name}/CastToFp32_{idx}", to=TensorProto.FLOAT))
    _drop_unused_initializers(model)


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    for init in list(g.initializer):
        if init.name not in used:
            g.initializer.remove(init)


def _upgrade_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    from onnx import version_converter

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current >= opset:
        return model
    try:
        return version_converter.convert_version(model, opset)
    except Exception as exc:
        raise ModelError(f"cannot convert the model from opset {current} to {opset} (needed for int4): {exc}") from exc


def _input_batch(model: onnx.ModelProto) -> tuple[str, int]:
    inits = {i.name for i in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    dims = inp.type.tensor_type.shape.dim
    batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else 0
    return inp.name, batch


def _quantize_int8(
    model: onnx.ModelProto,
    out_path: Path,
    int8_nodes: list[str],
    calib_x: np.ndarray,
    options: QuantOptions,
) -> onnx.ModelProto:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    input_name, batch = _input_batch(model)
    n = min(options.calib_images, calib_x.shape[0])
    step = batch or min(n, 32)
    n -= n % step
    if n < 1:
        raise PolicyError(f"need at least {step} calibration image(s) for int8 layers, got {calib_x.shape[0]}")
    reader = _ArrayReader(input_name, calib_x[:n], step)
    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[options.calib_method]
    src = temp_path_beside(out_path, ".fp32.onnx")
    dst = temp_path_beside(out_path, ".int8.onnx")
    try:
        onnx.save(model, str(src))
        with _quiet_ort():
            quantize_static(
                str(src),
                str(dst),
                reader,  # duck-typed CalibrationDataReader (get_next, rewind)
                quant_format=QuantFormat.QDQ,
                per_channel=options.per_channel,
                reduce_range=options.reduce_range,
                activation_type=QuantType.QUInt8 if options.activation == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=int8_nodes,
                calibrate_method=method,
                extra_options={"ActivationSymmetric": options.symmetric_activations, "WeightSymmetric": True},
            )
        return onnx.load(str(dst))
    except (PolicyError, ModelError):
        raise
    except Exception as exc:
        raise ModelError(f"onnxruntime int8 quantization failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    finally:
        src.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)


def quantize_onnx(
    fp32_onnx: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    policy: CompressionPolicy,
    calib_x: np.ndarray,
    target: Target,
    *,
    options: QuantOptions | None = None,
    reduce_range: bool | None = None,
) -> Path:
    """Write ``fp32_onnx`` with the per-layer precisions of ``policy`` to ``out_path`` (atomic).

    ``calib_x``: float32 (N, C, H, W) real images, normalised like the training data; used
    for int8 layers (the first ``options.calib_images``).  ``options`` default to
    :meth:`QuantOptions.for_target` (``reduce_range`` overrides detection).  Raises
    PolicyError for an unknown layer name or a precision the target does not list.
    """
    import onnx

    out = Path(out_path)
    model = _load(fp32_onnx)
    layers = _layers_of(model)
    prec = resolve_precisions(layers, policy, target)
    opts = options or QuantOptions.for_target(target, reduce_range=reduce_range)
    by_node = {layer.node: prec[layer.name] for layer in layers}
    wanted = set(by_node.values())
    if calib_x.ndim != 4:
        raise PolicyError(f"calibration images must be (N, C, H, W), got shape {calib_x.shape}")

    _inline_constant_identities(model)
    if "int4" in wanted:
        model = _upgrade_opset(model, INT4_OPSET)
    if "int8" in wanted:
        int8_nodes = _region_nodes(model, {n: ("int8" if p == "int8" else "float") for n, p in by_node.items()})
        model = _quantize_int8(model, out, int8_nodes, calib_x, opts)
    int4 = [layer for layer in layers if by_node[layer.node] == "int4"]
    if int4:
        _int4_weights(model, int4)
    fp16 = [layer for layer in layers if by_node[layer.node] == "fp16"]
    if fp16:
        _fp16_layers(model, fp16)
    model.producer_name = "hwcompress"
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelError(f"the quantized model fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    tmp = temp_path_beside(out, ".onnx")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    counts = {p: sum(1 for v in by_node.values() if v == p) for p in sorted(wanted)}
    log.info("quantized %s -> %s (%s; reduce_range=%s)", fp32_onnx, out, counts, opts.reduce_range)
    return out


# --------------------------------------------------------------------------- inspection
def layer_precisions(onnx_path: str | os.PathLike[str], model: nn.Module | None = None) -> dict[str, str]:
    """Precision each weight layer of a (quantized) ONNX model actually runs at, read from the graph.

    int8/int4: the weight comes from a DequantizeLinear of an 8-/4-bit initializer; fp16: a
    float16 weight; fp32 otherwise.
    """
    from onnx import TensorProto

    m = _load(onnx_path)
    known = {name for name, _ in model.named_modules()} if model is not None else None
    inits = {i.name: i for i in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    out: dict[str, str] = {}
    for n in m.graph.node:
        if n.op_type not in WEIGHT_OPS or len(n.input) < 2:
            continue
        w = n.input[1]
        prec = "fp32"
        src = producers.get(w)
        if w in inits and inits[w].data_type == TensorProto.FLOAT16:
            prec = "fp16"
        elif src is not None and src.op_type == "DequantizeLinear" and src.input[0] in inits:
            dt = inits[src.input[0]].data_type
            if dt in (TensorProto.INT4, TensorProto.UINT4):
                prec = "int4"
            elif dt in (TensorProto.INT8, TensorProto.UINT8):
                prec = "int8"
        elif w not in inits and src is None:
            continue
        module = module_name_from_node(n.name)
        if known is not None and module not in known:
            module = ""
        out[module or n.name] = prec
    return out


def op_counts(onnx_path: str | os.PathLike[str]) -> dict[str, int]:
    """Number of nodes per op type."""
    counts: dict[str, int] = {}
    for n in _load(onnx_path).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def uniform_policy(precision: str, overrides: dict[str, str] | None = None) -> CompressionPolicy:
    """A policy with ``precision`` everywhere except the layers in ``overrides`` (name -> precision)."""
    from hwcompress.records import CompressionPolicy

    return CompressionPolicy(precision=dict(overrides or {}), default_precision=precision)


__all__ = [
    "QuantLayer",
    "QuantOptions",
    "check_supported",
    "has_vnni",
    "layer_precisions",
    "module_name_from_node",
    "op_counts",
    "quantizable_layers",
    "quantize_onnx",
    "resolve_precisions",
    "uniform_policy",
]
