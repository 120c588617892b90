"""The layers of an exported model as the runtime runs them: one *unit* per weight layer with the
ops ONNX Runtime fuses into it (bias + folded batch norm, activation, a residual add and the
activation after it), plus the stand-alone pools and adds.

Each unit is a :class:`LayerTemplate`: its attributes and spatial sizes from the baseline ONNX
graph, and which prunable group sets its input and output channel counts (channel sources are
propagated through the graph: a conv/linear's output belongs to the group that owns its module;
every other op passes its first input's channels on).  :meth:`LayerTemplate.signature` gives
the unit's :class:`LayerSignature` for any per-group channel counts, without exporting the
pruned model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hwcompress.errors import ModelError

ACTIVATIONS = {"Relu": "relu", "Clip": "clip", "LeakyRelu": "leakyrelu", "Sigmoid": "sigmoid", "HardSwish": "hardswish"}
POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool")
#: Precision boundaries: a float tensor quantized into an int8 unit, an int8 tensor dequantized out of one.
BOUNDARIES = ("Quantize", "Dequantize")
#: Units whose output channels are their input channels (one channel axis in the table).
ONE_AXIS_OPS = (*POOLS, "Add", *BOUNDARIES)
WEIGHT_UNITS = ("Conv", "Gemm")
SIGNATURE_VERSION = 1


@dataclass(frozen=True)
class LayerSignature:
    """What a unit's cost depends on.  ``op``: Conv, Gemm, MaxPool, AveragePool, GlobalAveragePool
    or Add; ``fused``: ops fused after it (``"clip"``, ``"add"``, ``"add+relu"``, ...); ``clip``:
    the Clip bounds when an activation is a Clip; ``in_hw``/``out_hw``: spatial sizes (1x1 for Gemm)."""

    op: str
    in_ch: int
    out_ch: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    groups: int = 1
    ceil_mode: int = 0
    fused: str = ""
    clip: tuple[float, float] = (0.0, 0.0)
    precision: str = "fp32"

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for k in ("in_hw", "out_hw", "kernel", "stride", "pads", "dilations", "clip"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LayerSignature:
        tup = {k: tuple(d[k]) for k in ("in_hw", "out_hw", "kernel", "stride", "pads", "dilations", "clip") if k in d}
        return cls(**{**d, **tup})

    def key(self) -> str:
        """Stable text key (sorted JSON)."""
        return json.dumps({"v": SIGNATURE_VERSION, **self.to_json()}, sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """``layer-<sha256[:32]>`` of :meth:`key`: the entry's id in the measurement cache."""
        return "layer-" + hashlib.sha256(self.key().encode()).hexdigest()[:32]

    def short(self) -> str:
        k = "x".join(map(str, self.kernel)) if self.kernel else ""
        s = f"/s{self.stride[0]}" if self.stride else ""
        g = f" g{self.groups}" if self.groups > 1 else ""
        f = f"+{self.fused}" if self.fused else ""
        return (f"{self.op}{k and ' ' + k}{s}{g}{f} {self.in_ch}->{self.out_ch} @{self.in_hw[0]}x{self.in_hw[1]}"
                f" {self.precision}")


@dataclass(frozen=True)
class LayerTemplate:
    """One unit of the baseline graph.  ``in_group``/``out_group``: index of the prunable group
    whose keep count sets the unit's input/output channels (-1: fixed).  ``depthwise``: a conv with
    ``groups == in == out`` (its groups follow the channel count)."""

    name: str  # the ONNX node name of the unit's first op
    module: str  # torch module name ("" for a pool or an add)
    base: LayerSignature
    in_group: int
    out_group: int
    depthwise: bool = False
    #: Units whose outputs this unit reads (its input, then a residual / second add input); "" = graph input.
    inputs: tuple[str, ...] = ()
    #: Whether the unit's output is (or leads without another unit to) a graph output.
    feeds_output: bool = False

    @property
    def one_axis(self) -> bool:
        """Output channels follow the input channels (depthwise conv, pool, add, boundary)."""
        return self.depthwise or self.base.op in ONE_AXIS_OPS or (self.in_group == self.out_group >= 0)

    def signature(self, counts: Mapping[int, int], precision: str = "fp32") -> LayerSignature:
        """The unit's signature when group ``g`` keeps ``counts[g]`` channels (missing groups: unpruned)."""
        cin = counts.get(self.in_group, self.base.in_ch) if self.in_group >= 0 else self.base.in_ch
        cout = counts.get(self.out_group, self.base.out_ch) if self.out_group >= 0 else self.base.out_ch
        if self.base.op in ONE_AXIS_OPS:
            cout = cin
        if self.depthwise:
            cout = cin
            return replace(self.base, in_ch=cin, out_ch=cout, groups=cin, precision=precision)
        return replace(self.base, in_ch=cin, out_ch=cout, precision=precision)


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _shapes(model: Any) -> dict[str, list[int]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    out: dict[str, list[int]] = {}
    g = inferred.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [int(d.dim_value) if d.HasField("dim_value") else -1 for d in dims]
    return out


def _hw(shape: list[int]) -> tuple[int, int]:
    if len(shape) >= 4:
        return int(shape[2]), int(shape[3])
    return 1, 1


def extract_templates(onnx_path: str | os.PathLike[str], group_of: Mapping[str, int]) -> list[LayerTemplate]:
    """The units of ``onnx_path`` (exported with static shapes by :func:`hwcompress.export.export_onnx`)
    in graph order.  ``group_of`` maps a torch module name to the prunable group owning its output
    channels (:attr:`LayerInfo.group`; absent or -1: fixed).  Raises ModelError when a unit's
    shapes cannot be inferred."""
    import onnx
    from onnx import numpy_helper

    from hwcompress.quantize import module_name_from_node

    path = Path(onnx_path)
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    shapes = _shapes(model)
    init = {t.name for t in graph.initializer}
    consts: dict[str, Any] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer: dict[str, Any] = {}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for o in node.output:
            producer[o] = node
        for i in node.input:
            consumers.setdefault(i, []).append(node)
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(_attr(node, "value", None))
        if node.op_type == "Identity" and node.input and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
    const_names = set(consts) | init

    def shape_of(t: str) -> list[int]:
        s = shapes.get(t)
        if not s or any(d < 0 for d in s):
            raise ModelError(f"{path.name}: the shape of tensor {t!r} cannot be inferred; export with static sizes")
        return s

    source: dict[str, int] = {}  # tensor -> group index of its channels (-1: fixed)
    unit_of: dict[str, str] = {}  # tensor -> the unit that produced it ("" = a graph input)
    for inp in graph.input:
        source[inp.name] = -1
        unit_of[inp.name] = ""

    def sole_consumer(t: str) -> Any | None:
        users = consumers.get(t, [])
        return users[0] if len(users) == 1 and t not in {o.name for o in graph.output} else None

    def claims_add(t: str, add: Any) -> bool:
        """Whether the weight layer producing ``t`` takes ``add`` into its fused kernel."""
        a, b = add.input[0], add.input[1]
        if a in const_names or b in const_names:
            return False

        def claimable(x: str) -> bool:
            p = producer.get(x)
            return p is not None and p.op_type in ("Conv", "Gemm") and sole_consumer(x) is add

        return t == a or not claimable(a)

    def clip_bounds(node: Any) -> tuple[float, float]:
        lo, hi = float(_attr(node, "min", -3.4e38)), float(_attr(node, "max", 3.4e38))
        if len(node.input) > 1 and node.input[1] in consts:
            lo = float(consts[node.input[1]])
        if len(node.input) > 2 and node.input[2] in consts:
            hi = float(consts[node.input[2]])
        return lo, hi

    claimed: set[str] = set()
    owner_unit: dict[str, str] = {}  # claimed node -> the unit it is fused into
    templates: list[LayerTemplate] = []
    for node in graph.node:
        op = node.op_type
        if node.name in claimed:
            for o in node.output:
                source[o] = source.get(node.input[0], -1)
                unit_of[o] = owner_unit[node.name]
            continue
        if op in ("Conv", "Gemm"):
            module = module_name_from_node(node.name)
            x = node.input[0]
            in_shape = shape_of(x)
            w_shape = list(consts[node.input[1]].shape) if node.input[1] in consts else []
            out_t = node.output[0]
            out_src = int(group_of.get(module, -1))
            out_shape = shape_of(out_t)
            fused: list[str] = []
            clip = (0.0, 0.0)
            tail = out_t  # the output of the last op fused so far
            nxt = sole_consumer(tail)
            residual: list[str] = []
            if nxt is not None and nxt.op_type == "Add" and claims_add(tail, nxt):
                fused.append("add")
                claimed.add(nxt.name)
                owner_unit[nxt.name] = node.name
                residual = [i for i in nxt.input if i != tail][:1]
                tail = nxt.output[0]
                nxt = sole_consumer(tail)
            if nxt is not None and nxt.op_type in ACTIVATIONS:
                fused.append(ACTIVATIONS[nxt.op_type])
                if nxt.op_type == "Clip":
                    clip = clip_bounds(nxt)
                claimed.add(nxt.name)
                owner_unit[nxt.name] = node.name
            groups = int(_attr(node, "group", 1))
            in_src = source.get(x, -1)
            if op == "Conv":
                kernel = tuple(int(k) for k in _attr(node, "kernel_shape", w_shape[2:]))
                depthwise = groups > 1 and groups == in_shape[1] == out_shape[1]
                sig = LayerSignature(
                    op="Conv", in_ch=in_shape[1], out_ch=out_shape[1], in_hw=_hw(in_shape), out_hw=_hw(out_shape),
                    kernel=kernel, stride=tuple(int(s) for s in _attr(node, "strides", [1] * len(kernel))),
                    pads=tuple(int(p) for p in _attr(node, "pads", [0] * 2 * len(kernel))),
                    dilations=tuple(int(d) for d in _attr(node, "dilations", [1] * len(kernel))),
                    groups=groups, fused="+".join(fused), clip=clip,
                )
                if depthwise:
                    out_src = in_src
            else:
                if int(_attr(node, "transA", 0)) or len(in_shape) != 2:
                    raise ModelError(f"{path.name}: Gemm {node.name} takes a transposed or non-2-D input")
                depthwise = False
                sig = LayerSignature(op="Gemm", in_ch=in_shape[1], out_ch=out_shape[1], in_hw=(1, 1), out_hw=(1, 1),
                                     fused="+".join(fused), clip=clip)
            templates.append(LayerTemplate(node.name, module, sig, in_src, out_src, depthwise, (x, *residual)))
            source[out_t] = out_src
            unit_of[out_t] = node.name
            continue
        if op in POOLS or (op == "Add" and not any(i in const_names for i in node.input)):
            x = node.input[0]
            in_shape, out_shape = shape_of(x), shape_of(node.output[0])
            kernel = tuple(int(k) for k in _attr(node, "kernel_shape", []))
            sig = LayerSignature(
                op=op, in_ch=in_shape[1], out_ch=out_shape[1], in_hw=_hw(in_shape), out_hw=_hw(out_shape),
                kernel=kernel, stride=tuple(int(s) for s in _attr(node, "strides", [1] * len(kernel))) if kernel else (),
                pads=tuple(int(p) for p in _attr(node, "pads", [0] * 2 * len(kernel))) if kernel else (),
                ceil_mode=int(_attr(node, "ceil_mode", 0)),
            )
            data = [i for i in node.input if i and i not in const_names]
            templates.append(LayerTemplate(node.name, "", sig, source.get(x, -1), source.get(x, -1), inputs=tuple(data)))
            for o in node.output:
                source[o] = source.get(x, -1)
                unit_of[o] = node.name
            continue
        for o in node.output:
            source[o] = source.get(node.input[0], -1) if node.input else -1
            unit_of[o] = unit_of.get(node.input[0], "") if node.input else ""
    # inputs were recorded as tensor names (a residual's producer may come later in node order)
    outputs = {unit_of.get(o.name, "") for o in graph.output}
    return [replace(t, inputs=tuple(unit_of.get(x, "") for x in t.inputs), feeds_output=t.name in outputs)
            for t in templates]


def boundary_template(kind: str, group: int, channels: int, hw: tuple[int, int]) -> LayerTemplate:
    """A precision boundary (``kind`` Quantize or Dequantize) on a (channels, H, W) tensor whose
    channel count group ``group`` sets."""
    sig = LayerSignature(op=kind, in_ch=channels, out_ch=channels, in_hw=hw, out_hw=hw,
                         precision="int8")
    return LayerTemplate(f"{kind}@{group}:{channels}x{hw[0]}x{hw[1]}", "", sig, group, group)


def unit_precisions(templates: Sequence[LayerTemplate], precisions: Mapping[str, str],
                    default: str = "fp32") -> dict[str, str]:
    """Each unit's precision: a weight unit's from ``precisions`` (torch module name -> precision,
    else ``default``); a pool or add runs in int8 when every unit it reads is int8 (as the
    quantizer's region rule makes it), else in fp32."""
    out: dict[str, str] = {}
    for t in templates:
        if t.base.op in WEIGHT_UNITS:
            out[t.name] = precisions.get(t.module, default)
        else:
            ins = [out.get(u, "fp32") if u else "fp32" for u in t.inputs]
            out[t.name] = "int8" if ins and all(p == "int8" for p in ins) else "fp32"
    return out


def boundaries(templates: Sequence[LayerTemplate], prec: Mapping[str, str]) -> list[LayerTemplate]:
    """The precision boundaries of a mixed candidate: a Quantize where a unit in int8 reads a float
    tensor (a graph input, a unit in another precision), a Dequantize where a float unit reads an
    int8 unit's output or an int8 unit feeds the graph output."""
    out: list[LayerTemplate] = []
    for t in templates:
        mine = prec.get(t.name, "fp32") == "int8"
        for i, u in enumerate(t.inputs):
            theirs = bool(u) and prec.get(u, "fp32") == "int8"
            residual = i > 0 and t.base.op in WEIGHT_UNITS  # a fused add's second input: the output's size
            group, ch, hw = ((t.out_group, t.base.out_ch, t.base.out_hw) if residual
                             else (t.in_group, t.base.in_ch, t.base.in_hw))
            if mine and not theirs:
                out.append(boundary_template("Quantize", group, ch, hw))
            elif theirs and not mine:
                out.append(boundary_template("Dequantize", group, ch, hw))
        if mine and t.feeds_output:
            out.append(boundary_template("Dequantize", t.out_group, t.base.out_ch, t.base.out_hw))
    return out
