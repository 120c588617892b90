"""Per-layer latency table measured on the target (nn-Meter / HALP style).

Every unit of the exported graph (:mod:`hwcompress.latency.graph`: a conv or linear layer with the
ops the runtime fuses into it, or a stand-alone pool / add) is timed as a one-unit ONNX model at
each channel count the target's channel multiple allows for the groups that set its input and
output channels.  Entries are keyed by :class:`LayerSignature`, so repeated blocks share them.
All entries go through the target's own profiler in batch mode (:func:`measure_batch`: one
process, or one SSH command, per 48 entries), locally and over SSH alike, with short timing
settings (:data:`ENTRY_SETTINGS`) in two passes far apart in time (the lower p10 is kept), and are
stored in the measurement cache under the signature's digest (the cache key also holds the target's
settings digest and the profiler version): a second build of the same architecture on the same
target measures nothing.

Precisions: with int8 / fp16 / int4 among the table's precisions each weight unit also gets an
entry per precision (built as :mod:`hwcompress.quantize` writes that precision), pools and adds an
int8 entry, and every unit's input and output tensor a Quantize and a Dequantize entry: the cost of
a precision boundary, which a mixed policy pays wherever an int8 region begins or ends.

When a group allows many counts, the grid is thinned (at most ``cap`` evenly spaced counts per
group, always the smallest and the full width) so that the fp32 table stays under
``max_entries``; counts between grid points are interpolated (linear in each of input and output
channels).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwcompress.errors import ModelError, UsageError
from hwcompress.latency.graph import (
    BOUNDARIES,
    POOLS,
    WEIGHT_UNITS,
    LayerSignature,
    LayerTemplate,
    boundaries,
    boundary_template,
    unit_precisions,
)
from hwcompress.profiling.cache import MeasurementCache
from hwcompress.profiling.runner import Runner
from hwcompress.records import MeasureSettings, Target

log = logging.getLogger(__name__)

#: Timing settings of one table entry (a single layer runs in microseconds; its spread is checked).
ENTRY_SETTINGS = MeasureSettings(warmup_runs=5, min_runs=15, min_seconds=0.03, max_runs=2000, max_seconds=0.3,
                                 max_cv=0.05, max_rounds=2, timeout_s=60.0)
DEFAULT_MAX_ENTRIES = 600
TABLE_PASSES = 2  # each entry is measured this many times, far apart in time; the lowest p10 is kept
OPSET = 17


def entry_target(target: Target) -> Target:
    """``target`` with the table's timing settings (the settings digest, and so the cache key, follows)."""
    return dataclasses.replace(target, measure=dataclasses.replace(ENTRY_SETTINGS, timeout_s=target.measure.timeout_s))


def channel_options(channels: int, multiple: int) -> list[int]:
    """Counts a group of ``channels`` can keep at the channel ``multiple`` (as :func:`keep_count` rounds)."""
    if channels <= multiple or multiple <= 1:
        return list(range(1, channels + 1)) if multiple <= 1 else [channels]
    return [*range(multiple, channels, multiple), channels]


def thin(options: Sequence[int], cap: int) -> list[int]:
    """At most ``cap`` (>= 2) of ``options``, evenly spaced, always the first and the last."""
    n = len(options)
    if n <= cap:
        return list(options)
    picks = sorted({round(i * (n - 1) / (cap - 1)) for i in range(cap)})
    return [options[i] for i in picks]


# --------------------------------------------------------------------------- one-unit models
def build_entry_model(sig: LayerSignature, path: Path) -> Path:
    """Write the one-unit ONNX model of ``sig`` to ``path`` (random weights, static batch 1).

    As :mod:`hwcompress.quantize` writes each precision: ``fp32`` the unit as exported; ``int8``
    QDQ (uint8 activations, int8 per-channel weights, int32 bias; a ReLU / ReLU6 folded into the
    output's quantization range, as ORT's quantizer does) with uint8 tensors in and out,
    so that ONNX Runtime runs the integer kernel alone (the float<->int8 conversions are the
    separate Quantize / Dequantize boundary entries); ``fp16`` the weight op between two Casts,
    the fused ops after it in fp32; ``int4`` an opset-21 DequantizeLinear of int4 weights feeding
    the float op.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    seed = int(sig.digest()[-8:], 16)
    rng = np.random.RandomState(seed)
    inits: list[Any] = []
    inputs: list[Any] = []
    nodes: list[Any] = []
    prec = sig.precision
    q8 = prec == "int8"
    opset = 21 if prec == "int4" else OPSET

    def value(name: str, shape: Sequence[int], elem: int = TensorProto.FLOAT) -> Any:
        return helper.make_tensor_value_info(name, elem, list(shape))

    def const(name: str, arr: Any) -> str:
        inits.append(numpy_helper.from_array(arr, name))
        return name

    def node(op: str, ins: list[str], outs: list[str], **attrs: Any) -> str:
        nodes.append(helper.make_node(op, ins, outs, name=f"{op}_{len(nodes)}", **attrs))
        return outs[0]

    sx = const("act_scale", np.array(0.02, np.float32))
    zx = const("act_zero", np.array(128, np.uint8))

    def act_input(name: str, shape: Sequence[int]) -> str:
        """A graph input: float, or uint8 dequantized for an int8 unit."""
        if not q8:
            inputs.append(value(name, shape))
            return name
        inputs.append(value(f"{name}_q", shape, TensorProto.UINT8))
        return node("DequantizeLinear", [f"{name}_q", sx, zx], [f"{name}_f"])

    def weights(cout: int, wshape: Sequence[int], transposed: bool = False) -> tuple[str, str]:
        w = (rng.standard_normal(wshape) * 0.1).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        if prec == "int8":
            sw = (np.abs(w).reshape(cout, -1).max(axis=1) / 127.0).astype(np.float32)
            wq = np.clip(np.rint(w / sw.reshape([-1] + [1] * (len(wshape) - 1))), -127, 127).astype(np.int8)
            wd = node("DequantizeLinear", [const("w_q", wq), const("w_scale", sw), const("w_zero", np.zeros(cout, np.int8))],
                      ["w"], axis=0)
            sb = (sw * 0.02).astype(np.float32)
            bq = np.rint(b / sb).astype(np.int32)
            bd = node("DequantizeLinear", [const("b_q", bq), const("b_scale", sb), const("b_zero", np.zeros(cout, np.int32))],
                      ["b"], axis=0)
            return wd, bd
        if prec == "int4":
            import ml_dtypes

            sw = (np.abs(w).reshape(cout, -1).max(axis=1) / 7.0).astype(np.float32)
            wq = np.clip(np.rint(w / sw.reshape([-1] + [1] * (len(wshape) - 1))), -8, 7).astype(ml_dtypes.int4)
            wd = node("DequantizeLinear", [const("w_q", wq), const("w_scale", sw),
                                           const("w_zero", np.zeros(cout, ml_dtypes.int4))], ["w"], axis=0)
            return wd, const("b", b)
        if prec == "fp16":
            return const("w", w.astype(np.float16)), const("b", b.astype(np.float16))
        return const("w", w), const("b", b)

    h, w = sig.in_hw
    ho, wo = sig.out_hw
    out_shape: list[int] = [1, sig.out_ch, ho, wo]
    if sig.op in ("Quantize", "Dequantize"):
        shape = [1, sig.in_ch, h, w]
        if sig.op == "Quantize":
            inputs.append(value("x", shape))
            last = node("QuantizeLinear", ["x", sx, zx], ["y"])
        else:
            inputs.append(value("x_q", shape, TensorProto.UINT8))
            last = node("DequantizeLinear", ["x_q", sx, zx], ["y"])
        out_elem = TensorProto.UINT8 if sig.op == "Quantize" else TensorProto.FLOAT
        graph = helper.make_graph(nodes, "boundary", inputs, [value(last, shape, out_elem)], initializer=inits)
        return _save(graph, path, OPSET)
    if sig.op in ("Conv", "Gemm"):
        if sig.op == "Gemm":
            x = act_input("x", [1, sig.in_ch])
            out_shape = [1, sig.out_ch]
            wname, bname = weights(sig.out_ch, [sig.out_ch, sig.in_ch])
        else:
            x = act_input("x", [1, sig.in_ch, h, w])
            wname, bname = weights(sig.out_ch, [sig.out_ch, sig.in_ch // sig.groups, *sig.kernel])
        if prec == "fp16":
            x = node("Cast", [x], ["x16"], to=TensorProto.FLOAT16)
        if sig.op == "Gemm":
            last = node("Gemm", [x, wname, bname], ["y0"], transB=1)
        else:
            last = node("Conv", [x, wname, bname], ["y0"], kernel_shape=list(sig.kernel), strides=list(sig.stride),
                        pads=list(sig.pads), dilations=list(sig.dilations), group=sig.groups)
        if prec == "fp16":
            last = node("Cast", [last], ["y0f"], to=TensorProto.FLOAT)
    elif sig.op in POOLS:
        x = act_input("x", [1, sig.in_ch, h, w])
        attrs: dict[str, Any] = {}
        if sig.op != "GlobalAveragePool":
            attrs = {"kernel_shape": list(sig.kernel), "strides": list(sig.stride), "pads": list(sig.pads),
                     "ceil_mode": sig.ceil_mode}
        last = node(sig.op, [x], ["y0"], **attrs)
    elif sig.op == "Add":
        last = node("Add", [act_input("x", [1, sig.in_ch, h, w]), act_input("r", [1, sig.in_ch, h, w])], ["y0"])
    else:
        raise ModelError(f"no one-unit model for op {sig.op}")
    for i, op in enumerate(filter(None, sig.fused.split("+"))):
        out = f"y{i + 1}"
        if op == "add":
            if q8:  # the conv's int8 output, requantized, added to the int8 residual
                last = node("QuantizeLinear", [last, sx, zx], ["y_pre_add_q"])
                last = node("DequantizeLinear", [last, sx, zx], ["y_pre_add"])
            last = node("Add", [last, act_input("r", out_shape)], [out])
        elif q8 and op in ("relu", "clip"):
            continue  # the quantizer folds a ReLU / ReLU6 into the output's QuantizeLinear range
        elif op == "relu":
            last = node("Relu", [last], [out])
        elif op == "clip":
            last = node("Clip", [last, const("clip_lo", np.array(sig.clip[0], np.float32)),
                                 const("clip_hi", np.array(sig.clip[1], np.float32))], [out])
        elif op == "leakyrelu":
            last = node("LeakyRelu", [last], [out])
        elif op == "sigmoid":
            last = node("Sigmoid", [last], [out])
        elif op == "hardswish":
            last = node("HardSwish", [last], [out])
        else:
            raise ModelError(f"no one-unit model for fused op {op}")
    out_elem = TensorProto.FLOAT
    if q8:
        last = node("QuantizeLinear", [last, sx, zx], ["y_q"])
        out_elem = TensorProto.UINT8
    graph = helper.make_graph(nodes, "entry", inputs, [value(last, out_shape, out_elem)], initializer=inits)
    return _save(graph, path, opset)


def _save(graph: Any, path: Path, opset: int) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="hwcompress")
    model.ir_version = 10 if opset >= 21 else 8
    onnx.save(model, str(path))
    return path


# --------------------------------------------------------------------------- the table
@dataclass
class LatencyTable:
    """Per-unit latency (ms) by signature key, on one target: the 10th percentile of the entry's
    timed runs (a unit runs for microseconds; the p10 moves less than the median when the CPU is
    shared, and the residual's scale absorbs the level).

    ``grid`` holds each group's channel counts that have entries; ``seconds`` the wall time of the
    build (measurement and model writing); ``measured`` / ``cached`` how many entries came from the
    profiler / the cache in that build; ``repeat_rel_diff`` the median relative difference of the
    two measurement passes of the entries (None when nothing was measured)."""

    target: str
    entries: dict[str, float]
    grid: dict[int, list[int]]
    seconds: float = 0.0
    measured: int = 0
    cached: int = 0
    repeat_rel_diff: float | None = None
    signatures: dict[str, LayerSignature] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def ms(self, sig: LayerSignature) -> float | None:
        return self.entries.get(sig.key())

    def unit_ms(self, template: LayerTemplate, counts: Mapping[int, int], precision: str = "fp32") -> float:
        """The unit's time (ms) at ``counts``: its entry, or the linear interpolation of the grid
        entries around it.  UsageError when the counts lie outside the grid."""
        sig = template.signature(counts, precision)
        hit = self.ms(sig)
        if hit is not None:
            return hit
        cin_opts = self._axis(template.in_group, template.base.in_ch)
        (i0, i1, wi) = _bracket(cin_opts, sig.in_ch)
        if template.one_axis:
            a = self._need(template.signature({template.in_group: i0}, precision))
            b = self._need(template.signature({template.in_group: i1}, precision))
            return a + wi * (b - a)
        cout_opts = self._axis(template.out_group, template.base.out_ch)
        (o0, o1, wo) = _bracket(cout_opts, sig.out_ch)
        vals = {}
        for ci in (i0, i1):
            for co in (o0, o1):
                vals[ci, co] = self._need(template.signature({template.in_group: ci, template.out_group: co}, precision))
        lo = vals[i0, o0] + wo * (vals[i0, o1] - vals[i0, o0])
        hi = vals[i1, o0] + wo * (vals[i1, o1] - vals[i1, o0])
        return lo + wi * (hi - lo)

    def _axis(self, group: int, base: int) -> list[int]:
        return self.grid.get(group, [base]) if group >= 0 else [base]

    def _need(self, sig: LayerSignature) -> float:
        v = self.ms(sig)
        if v is None:
            raise UsageError(f"the latency table has no entry for {sig.short()}; build it for this model, target "
                             "and precisions")
        return v

    def total_ms(self, templates: Sequence[LayerTemplate], counts: Mapping[int, int],
                 precisions: Mapping[str, str] | None = None, default: str = "fp32") -> float:
        """Sum of the units' times at ``counts`` with per-layer ``precisions`` (torch module name ->
        precision, else ``default``), plus the cost of every precision boundary they imply."""
        if not precisions and default == "fp32":
            return sum(self.unit_ms(t, counts) for t in templates)
        prec = unit_precisions(templates, precisions or {}, default)
        total = sum(self.unit_ms(t, counts, prec[t.name]) for t in templates)
        return total + sum(self.unit_ms(b, counts, "int8") for b in boundaries(templates, prec))


def _bracket(options: Sequence[int], value: int) -> tuple[int, int, float]:
    """(lower grid value, upper grid value, weight of the upper) around ``value``."""
    if value in options:
        return value, value, 0.0
    lower = [o for o in options if o < value]
    upper = [o for o in options if o > value]
    if not lower or not upper:
        raise UsageError(f"channel count {value} lies outside the latency table's grid {list(options)}")
    lo, hi = lower[-1], upper[0]
    return lo, hi, (value - lo) / (hi - lo)


def unit_precision_choices(template: LayerTemplate, precisions: Sequence[str]) -> list[str]:
    """Precisions a unit can run in: a weight unit any of ``precisions``; a pool or add fp32, and
    int8 when int8 is among them (inside an int8 region)."""
    if template.base.op in WEIGHT_UNITS:
        return list(precisions)
    return ["fp32", *(["int8"] if "int8" in precisions else [])]


def table_signatures(templates: Sequence[LayerTemplate], grid: Mapping[int, Sequence[int]],
                     precisions: Sequence[str] = ("fp32",)) -> list[LayerSignature]:
    """Every signature the table needs: each unit at each grid count of its input and output groups
    and each precision it can take; with int8, the Quantize / Dequantize boundaries on every
    unit's input and output tensors."""
    seen: dict[str, LayerSignature] = {}
    units: list[tuple[LayerTemplate, list[str]]] = [(t, unit_precision_choices(t, precisions)) for t in templates]
    if "int8" in precisions:
        for t in templates:
            for kind in BOUNDARIES:
                units.append((boundary_template(kind, t.in_group, t.base.in_ch, t.base.in_hw), ["int8"]))
                units.append((boundary_template(kind, t.out_group, t.base.out_ch, t.base.out_hw), ["int8"]))
    for t, precs in units:
        ins = list(grid.get(t.in_group, [t.base.in_ch])) if t.in_group >= 0 else [t.base.in_ch]
        outs = list(grid.get(t.out_group, [t.base.out_ch])) if t.out_group >= 0 else [t.base.out_ch]
        combos = [{t.in_group: c} for c in ins] if t.one_axis else [{t.in_group: i, t.out_group: o} for i in ins for o in outs]
        for prec in precs:
            for c in combos:
                sig = t.signature(c, prec)
                seen.setdefault(sig.key(), sig)
    return list(seen.values())


def plan_grid(templates: Sequence[LayerTemplate], group_channels: Mapping[int, int], multiple: int,
              max_entries: int = DEFAULT_MAX_ENTRIES, precisions: Sequence[str] = ("fp32",)) -> dict[int, list[int]]:
    """Channel counts per group: all that the multiple allows, or, when that makes more than
    ``max_entries`` entries, at most ``cap`` evenly spaced counts per group for the largest ``cap``
    that fits (narrow groups keep every count)."""
    full = {g: channel_options(c, multiple) for g, c in group_channels.items()}
    n_full = len(table_signatures(templates, full, precisions))
    if n_full <= max_entries:
        return full
    cap = max((len(v) for v in full.values()), default=2)
    grid, n = full, n_full
    while cap > 2:
        cap -= 1
        grid = {g: thin(opts, cap) for g, opts in full.items()}
        n = len(table_signatures(templates, grid, precisions))
        if n <= max_entries:
            break
    log.info("latency table: at most %d channel counts per group (%d entries; every count would need %d)",
             cap, n, n_full)
    return grid


def build_table(
    templates: Sequence[LayerTemplate],
    grid: Mapping[int, Sequence[int]],
    target: Target,
    *,
    cache: MeasurementCache | None = None,
    runner: Runner | None = None,
    repeat_check: bool = True,
    workdir: str | os.PathLike[str] | None = None,
    precisions: Sequence[str] = ("fp32",),
    passes: int = TABLE_PASSES,
) -> LatencyTable:
    """Measure (or load from ``cache``) every entry :func:`table_signatures` lists (at ``precisions``)
    on ``target``.

    Entries missing from the cache are written as one-unit models and profiled in batch mode, in
    ``passes`` passes (the second in reverse order); an entry keeps its lower p10.  With two passes
    and ``repeat_check``, the median relative difference of the passes is the table's repeatability.
    """
    from hwcompress.profiling.adapters import get_adapter
    from hwcompress.profiling.cache import CacheKey
    from hwcompress.profiling.measure import measure_batch

    t0 = time.perf_counter()
    etarget = entry_target(target)  # runner None: measure_batch resolves it (a pool of boards routes it)
    sigs = table_signatures(templates, grid, precisions)
    if not sigs:
        raise ModelError("the model has no conv, linear or pool layer to time")
    entries: dict[str, float] = {}
    measured = cached = 0
    repeat: float | None = None
    with tempfile.TemporaryDirectory(prefix="hwc-table-", dir=workdir) as tmp:
        missing = sigs
        version = get_adapter(etarget.runtime).profiler_version()
        digest = etarget.settings_digest()
        if cache is not None:
            missing = []
            for s in sigs:
                hit = cache.get(CacheKey(s.digest(), digest, version))
                if hit is None:
                    missing.append(s)
                else:
                    entries[s.key()] = hit.latency.p10_ms
                    cached += 1
        if missing:
            paths = [build_entry_model(s, Path(tmp) / f"{s.digest()}.onnx") for s in missing]
            first = measure_batch(paths, etarget, cache=None, runner=runner)
            chosen = first
            if passes >= 2:
                # A second pass in reverse order, so that each entry's two runs lie far apart in time:
                # load from other work on the device comes in bursts of seconds and slows one of them.
                second = measure_batch(paths[::-1], etarget, cache=None, runner=runner)[::-1]
                chosen = [a if a.latency.p10_ms <= b.latency.p10_ms else b for a, b in zip(first, second, strict=True)]
                if repeat_check:
                    repeat = statistics.median(abs(a.latency.p10_ms - b.latency.p10_ms) / a.latency.p10_ms
                                               for a, b in zip(first, second, strict=True))
            for s, m in zip(missing, chosen, strict=True):
                entries[s.key()] = m.latency.p10_ms
                if cache is not None:
                    cache.put(CacheKey(s.digest(), digest, version), m)
            measured = len(missing)
    seconds = time.perf_counter() - t0
    log.info("latency table on %s: %d entries (%d measured, %d cached) in %.1f s", target.name, len(entries),
             measured, cached, seconds)
    return LatencyTable(target.name, entries, {g: list(v) for g, v in grid.items()}, seconds, measured, cached,
                        repeat, {s.key(): s for s in sigs})
