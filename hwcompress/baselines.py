"""Reference compressions to compare a search against, each fitted to a *measured* latency budget.

* uniform pruning: one keep ratio for every prunable group;
* global magnitude pruning (Torch-Pruning, L1 group magnitude ranked across layers) to a MACs ratio;

For both, the knob is bisected and every point is exported and measured on the target, so the
result is the least-pruned model of that family whose measured latency meets the budget — the
fairest version of the method, not a proxy-sized one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hwcompress.errors import PolicyError

if TYPE_CHECKING:
    from torch import nn

    from hwcompress.profiling.cache import MeasurementCache
    from hwcompress.records import Target

log = logging.getLogger(__name__)

METHODS = ("uniform", "global-magnitude")


@dataclass(frozen=True)
class Fitted:
    """The model a bisection settled on."""

    method: str
    knob: float  # keep ratio (uniform) or MACs ratio (global magnitude)
    model: nn.Module
    latency_ms: float
    met: bool  # False when even the smallest knob tried is over budget
    measured: int  # points measured


def builder(
    method: str, model: nn.Module, input_shape: tuple[int, ...], channel_multiple: int
) -> Callable[[float], nn.Module]:
    """knob -> pruned copy of ``model`` for one of :data:`METHODS`."""
    from hwcompress.prune import global_magnitude_prune, uniform_prune

    if method == "uniform":
        return lambda k: uniform_prune(model, k, input_shape, channel_multiple=channel_multiple)
    if method == "global-magnitude":
        return lambda k: global_magnitude_prune(model, k, input_shape, channel_multiple=channel_multiple)
    raise PolicyError(f"unknown baseline method {method!r}; choose one of {', '.join(METHODS)}")


def fit_to_latency(
    method: str,
    model: nn.Module,
    input_shape: tuple[int, ...],
    target: Target,
    budget_ms: float,
    workdir: Path,
    *,
    cache: MeasurementCache | None = None,
    steps: int = 7,
    lowest: float = 0.05,
) -> Fitted:
    """Bisect the method's knob in [``lowest``, 1] for the largest value whose measured latency <= ``budget_ms``."""
    from hwcompress.export import export_onnx
    from hwcompress.profiling.measure import measure

    build = builder(method, model, input_shape, target.channel_multiple)
    workdir.mkdir(parents=True, exist_ok=True)
    lo, hi = lowest, 1.0
    best: tuple[float, nn.Module, float] | None = None
    smallest: tuple[float, nn.Module, float] | None = None
    measured = 0
    for _ in range(steps):
        mid = (lo + hi) / 2
        try:
            pruned = build(mid)
        except PolicyError as exc:  # the method cannot prune this far: treat as too slow
            log.info("%s at %.4f: %s", method, mid, exc)
            lo = mid
            continue
        path = export_onnx(pruned, input_shape, workdir / f"{method}-{mid:.4f}.onnx")
        ms = measure(path, target, cache=cache).latency.median_ms
        measured += 1
        log.info("%s knob %.4f: %.3f ms (budget %.3f)", method, mid, ms, budget_ms)
        if smallest is None or mid < smallest[0]:
            smallest = (mid, pruned, ms)
        if ms <= budget_ms:
            best, lo = (mid, pruned, ms), mid
        else:
            hi = mid
    if best is not None:
        return Fitted(method, best[0], best[1], best[2], True, measured)
    if smallest is None:
        raise PolicyError(f"{method} pruning could not build any model for {budget_ms:.3f} ms")
    return Fitted(method, smallest[0], smallest[1], smallest[2], False, measured)
