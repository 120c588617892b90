"""Tiny but real ``.tflite`` and ``.onnx`` CNNs written without a converter or torch (test helper).

Uses the flatbuffer schema and writer that ``ai-edge-litert`` ships
(``schema_py_generated`` + ``tools.flatbuffer_utils``), so tests of the LiteRT profiler do not
need litert-torch.  Three input kinds: ``float32`` (conv-conv-fc), ``int8`` (a fully integer
conv with per-channel weights) and ``uint8`` (a quantized input dequantized before a float conv).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _schema() -> Any:
    from ai_edge_litert import schema_py_generated as s

    return s


class _Builder:
    def __init__(self) -> None:
        s = _schema()
        self.s = s
        self.model = s.ModelT()
        self.model.version = 3
        self.model.description = "hwcompress test model"
        self.model.buffers = [s.BufferT()]  # buffer 0: the empty sentinel
        self.model.operatorCodes = []
        self.sub = s.SubGraphT()
        self.sub.tensors, self.sub.operators, self.sub.name = [], [], "main"
        self.model.subgraphs = [self.sub]
        self._codes: dict[int, int] = {}

    def tensor(self, name: str, shape: list[int], ttype: int, data: np.ndarray | None = None,
               quant: tuple[list[float], list[int], int] | None = None) -> int:
        t = self.s.TensorT()
        t.name, t.shape, t.type = name, shape, ttype
        if data is not None:
            buf = self.s.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
            self.model.buffers.append(buf)
            t.buffer = len(self.model.buffers) - 1
        else:
            t.buffer = 0
        if quant is not None:
            q = self.s.QuantizationParametersT()
            q.scale, q.zeroPoint, q.quantizedDimension = quant
            t.quantization = q
        self.sub.tensors.append(t)
        return len(self.sub.tensors) - 1

    def op(self, code: int, inputs: list[int], outputs: list[int], opt_type: int = 0, opts: Any = None) -> None:
        if code not in self._codes:
            oc = self.s.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
            self.model.operatorCodes.append(oc)
            self._codes[code] = len(self.model.operatorCodes) - 1
        o = self.s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = self._codes[code], inputs, outputs
        o.builtinOptionsType, o.builtinOptions = opt_type, opts
        self.sub.operators.append(o)

    def conv_options(self, stride: int = 1, relu: bool = True) -> Any:
        c = self.s.Conv2DOptionsT()
        c.padding = self.s.Padding.SAME
        c.strideW = c.strideH = stride
        c.dilationWFactor = c.dilationHFactor = 1
        c.fusedActivationFunction = self.s.ActivationFunctionType.RELU if relu else 0
        return c

    def write(self, path: Path, inputs: list[int], outputs: list[int]) -> Path:
        from ai_edge_litert.tools import flatbuffer_utils

        self.sub.inputs, self.sub.outputs = inputs, outputs
        path.parent.mkdir(parents=True, exist_ok=True)
        flatbuffer_utils.write_model(self.model, str(path))
        return path


def write_tiny_tflite(path: str | Path, kind: str = "float32", channels: int = 16, size: int = 28) -> Path:
    """Write a small CNN taking a (1, size, size, 1) input of dtype ``kind``; returns ``path``."""
    b = _Builder()
    s = b.s
    T = s.TensorType
    BO = s.BuiltinOptions
    OP = s.BuiltinOperator
    rng = np.random.default_rng(0)
    path = Path(path)
    if kind == "int8":
        in_scale, out_scale = 0.05, 0.1
        x = b.tensor("input", [1, size, size, 1], T.INT8, quant=([in_scale], [-3], 0))
        w = rng.integers(-100, 100, size=(channels, 3, 3, 1)).astype(np.int8)
        w_scales = [0.01 + 0.001 * i for i in range(channels)]
        wt = b.tensor("conv.weight", [channels, 3, 3, 1], T.INT8, w, (w_scales, [0] * channels, 0))
        bias = rng.integers(-50, 50, size=(channels,)).astype(np.int32)
        bt = b.tensor("conv.bias", [channels], T.INT32, bias, ([in_scale * s_ for s_ in w_scales], [0] * channels, 0))
        y = b.tensor("output", [1, size, size, channels], T.INT8, quant=([out_scale], [-128], 0))
        b.op(OP.CONV_2D, [x, wt, bt], [y], BO.Conv2DOptions, b.conv_options())
        return b.write(path, [x], [y])

    if kind == "uint8":
        xq = b.tensor("input", [1, size, size, 1], T.UINT8, quant=([1 / 255], [0], 0))
        x = b.tensor("input_f", [1, size, size, 1], T.FLOAT32)
        b.op(OP.DEQUANTIZE, [xq], [x], BO.DequantizeOptions, s.DequantizeOptionsT())
        inputs = [xq]
    elif kind == "float32":
        x = b.tensor("input", [1, size, size, 1], T.FLOAT32)
        inputs = [x]
    else:
        raise ValueError(f"kind must be float32, int8 or uint8, got {kind!r}")
    w1 = b.tensor("conv1.weight", [channels, 3, 3, 1], T.FLOAT32,
                  (rng.standard_normal((channels, 3, 3, 1)) * 0.3).astype(np.float32))
    b1 = b.tensor("conv1.bias", [channels], T.FLOAT32, np.zeros(channels, np.float32))
    h1 = b.tensor("conv1.out", [1, size, size, channels], T.FLOAT32)
    b.op(OP.CONV_2D, [x, w1, b1], [h1], BO.Conv2DOptions, b.conv_options())
    c2 = 2 * channels
    w2 = b.tensor("conv2.weight", [c2, 3, 3, channels], T.FLOAT32,
                  (rng.standard_normal((c2, 3, 3, channels)) * 0.1).astype(np.float32))
    b2 = b.tensor("conv2.bias", [c2], T.FLOAT32, np.zeros(c2, np.float32))
    half = (size + 1) // 2
    h2 = b.tensor("conv2.out", [1, half, half, c2], T.FLOAT32)
    b.op(OP.CONV_2D, [h1, w2, b2], [h2], BO.Conv2DOptions, b.conv_options(stride=2))
    flat = b.tensor("flat", [1, half * half * c2], T.FLOAT32)
    shape = b.tensor("flat.shape", [2], T.INT32, np.array([1, half * half * c2], np.int32))
    ro = s.ReshapeOptionsT()
    ro.newShape = [1, half * half * c2]
    b.op(OP.RESHAPE, [h2, shape], [flat], BO.ReshapeOptions, ro)
    wf = b.tensor("fc.weight", [10, half * half * c2], T.FLOAT32,
                  (rng.standard_normal((10, half * half * c2)) * 0.01).astype(np.float32))
    bf = b.tensor("fc.bias", [10], T.FLOAT32, np.zeros(10, np.float32))
    out = b.tensor("logits", [1, 10], T.FLOAT32)
    b.op(OP.FULLY_CONNECTED, [flat, wf, bf], [out], BO.FullyConnectedOptions, s.FullyConnectedOptionsT())
    return b.write(path, inputs, [out])


def write_tiny_onnx(path: str | Path, channels: int = 8, size: int = 28) -> Path:
    """A conv-relu-pool-gemm ONNX model (input ``x``: 1x1xsizexsize float) built with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((channels, 1, 3, 3)) * 0.3).astype(np.float32), "conv.weight")
    b = numpy_helper.from_array(np.zeros(channels, np.float32), "conv.bias")
    fw = numpy_helper.from_array((rng.standard_normal((10, channels)) * 0.1).astype(np.float32), "fc.weight")
    fb = numpy_helper.from_array(np.zeros(10, np.float32), "fc.bias")
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["c"], name="/features/features.0/Conv",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="/features/features.0/Relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="/pool/GlobalAveragePool"),
        helper.make_node("Flatten", ["p"], ["f"], name="/Flatten"),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], name="/classifier/Gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [w, b, fw, fb])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
