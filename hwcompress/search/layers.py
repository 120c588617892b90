"""The layer analysis both stages start from: each weight layer's share of the baseline's measured
latency (per-node profiling on the target, attributed back to torch modules), how each layer's
MACs scale with each prunable group's keep ratio, and what the agent observes of each step."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hwcompress.search.envs import StepLayer
from hwcompress.search.latency_model import LayerCostModel

if TYPE_CHECKING:
    from hwcompress.prune import PruneGroup
    from hwcompress.records import LayerInfo, Measurement


def step_kind(info: LayerInfo) -> str:
    return {"dwconv": "depthwise", "linear": "linear"}.get(info.kind, "conv")


WEIGHT_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
_SUFFIXES = ("_nchwc", "_nhwc")


def attribute_nodes(onnx_path: Path, node_us: dict[str, float]) -> dict[str, float]:
    """Sum per-node times (us) onto the torch module of the weight layer each node computes.

    ONNX Runtime renames fused nodes after their output tensor (``/layers/layers.0/relu/Relu_output_0_nchwc``
    is conv1 + its ReLU); the tensor is traced back through the original graph to the Conv/Gemm that
    produced it. Nodes that lead to no weight layer (pools, reorders) are left out.
    """
    import onnx

    from hwcompress.quantize import module_name_from_node

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    by_name = {node.name: node for node in graph.node}
    result: dict[str, float] = {}
    for name, us in node_us.items():
        node = by_name.get(name)
        if node is None:
            tensor = name
            for suffix in _SUFFIXES:
                tensor = tensor.removesuffix(suffix)
            node = producer.get(tensor)
        hops = 0
        while node is not None and node.op_type not in WEIGHT_OPS and hops < 6:
            node = producer.get(node.input[0]) if node.input else None
            hops += 1
        if node is None or node.op_type not in WEIGHT_OPS:
            continue
        module = module_name_from_node(node.name)
        if module:
            result[module] = result.get(module, 0.0) + us
    return result


def layer_times_ms(table: list[LayerInfo], baseline: Measurement, onnx_path: Path | None = None) -> np.ndarray:
    """Per-layer share of the baseline's measured latency (ms), from per-node profiling.

    Per-node times are scaled so that they add up to the measured median (profiling adds overhead);
    the time of nodes that belong to no weight layer is spread over the layers by their MACs.
    Without per-node data (runtimes other than ONNX Runtime): MACs shares of the latency.
    """
    names = [la.name for la in table]
    macs = np.array([la.macs for la in table], dtype=np.float64)
    total_ms = baseline.latency.median_ms
    node_us = dict(baseline.per_node_us or {})
    if not node_us or onnx_path is None:
        return total_ms * macs / max(macs.sum(), 1.0)
    per_layer = attribute_nodes(onnx_path, node_us)
    all_us = sum(node_us.values())
    scale = total_ms / (all_us / 1000.0) if all_us > 0 else 1.0
    timed = np.array([per_layer.get(n, 0.0) for n in names]) / 1000.0 * scale
    leftover = max(total_ms - timed.sum(), 0.0)
    timed += leftover * macs / max(macs.sum(), 1.0)
    return timed


def cost_model(groups: list[PruneGroup], table: list[LayerInfo], times_ms: np.ndarray) -> LayerCostModel:
    """Exponents from the groups: a layer scales with the keep ratio of the group pruning its
    outputs and of the group pruning its inputs (once for a depthwise conv)."""
    index = {la.name: i for i, la in enumerate(table)}
    exps = np.zeros((len(table), len(groups)))
    for g in groups:
        for name in g.layers:
            if name in index:
                exps[index[name], g.index] += 1.0
        for name in g.consumers:
            if name in index and table[index[name]].kind != "dwconv":
                exps[index[name], g.index] += 1.0
    for i, la in enumerate(table):
        if la.kind == "dwconv":
            exps[i] = np.minimum(exps[i], 1.0)
    return LayerCostModel([la.name for la in table], np.array([la.macs for la in table], float), exps, times_ms)


def prune_step_layers(groups: list[PruneGroup], table: list[LayerInfo], times_ms: np.ndarray) -> list[StepLayer]:
    by_name = {la.name: la for la in table}
    idx = {la.name: i for i, la in enumerate(table)}
    total = max(float(times_ms.sum()), 1e-9)
    out = []
    for g in groups:
        lead = by_name.get(g.layers[0]) if g.layers else None
        touched = {*g.layers, *g.consumers}
        share = sum(float(times_ms[idx[n]]) for n in touched if n in idx) / total
        out.append(
            StepLayer(
                name=g.name,
                kind=step_kind(lead) if lead else "conv",
                in_channels=lead.in_channels if lead else g.channels,
                out_channels=g.channels,
                kernel=lead.kernel[0] if lead and lead.kernel else 1,
                stride=lead.stride[0] if lead and lead.stride else 1,
                macs=g.macs,
                params=g.params,
                latency_share=min(share, 1.0),
                channels=g.channels,
            )
        )
    return out
