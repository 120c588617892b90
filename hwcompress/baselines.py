"""Reference compressions to compare a search against, each fitted to a *measured* latency budget.

* uniform pruning: one keep ratio for every prunable group;
* global magnitude pruning (Torch-Pruning, L1 group magnitude ranked across layers) to a MACs ratio;

For both, the knob is bisected (:func:`largest_within`, the code base's one line search) and every
point is exported and measured on the target, so the result is the least-pruned model of that
family whose measured latency meets the budget — the fairest version of the method, not a
proxy-sized one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

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


def largest_within(
    cost: Callable[[float], float | None],
    limit: float,
    lo: float,
    hi: float,
    *,
    steps: int,
    cost_lo: float | None = None,
    cost_hi: float | None = None,
    secant: bool = False,
    aim: float | None = None,
    close: float = 0.0,
    unusable: Literal["lower", "higher"] = "lower",
) -> float | None:
    """The largest ``s`` in [``lo``, ``hi``] found with ``cost(s) <= limit``, for a cost that grows with ``s``.

    The one line search of hwcompress (a knob fitted to a budget, a winner moved along a line of
    keep ratios).  Each of ``steps`` probes calls ``cost`` once, at the bracket's midpoint, or with
    ``secant`` where both ends' costs are known (and ``aim`` lies between them) at the point where
    the straight line through them reaches ``aim`` (default ``limit``), kept inside the bracket's
    middle 80 %.  A probe within moves ``lo`` up to it, one over moves ``hi`` down.

    ``cost_lo`` / ``cost_hi``: the ends' costs where already known (never probed): a ``cost_lo``
    within makes ``lo`` the answer when no probe is within, a ``cost_hi`` within returns ``hi`` at
    once.  ``cost`` returns None where there is no usable point: ``unusable="lower"`` treats it as
    over (look lower), ``"higher"`` as below the usable range (look higher; never the answer).
    ``close``: stop once the within end costs at least ``limit * (1 - close)``.
    Returns None when nothing probed (or given) was within.
    """
    if steps < 0 or lo > hi:
        raise ValueError("largest_within needs steps >= 0 and lo <= hi")
    if cost_hi is not None and cost_hi <= limit:
        return hi
    found = lo if cost_lo is not None and cost_lo <= limit else None
    if found is None:
        cost_lo = None  # a known end over the limit is no end of the bracket's secant
    goal = limit if aim is None else aim
    for _ in range(steps):
        if cost_lo is not None and cost_lo >= limit * (1.0 - close):
            break
        frac = 0.5
        if secant and cost_lo is not None and cost_hi is not None and cost_lo < goal < cost_hi:
            frac = min(max((goal - cost_lo) / (cost_hi - cost_lo), 0.1), 0.9)
        mid = lo + frac * (hi - lo)
        c = cost(mid)
        if c is None:
            if unusable == "higher":
                lo, cost_lo = mid, None
            else:
                hi, cost_hi = mid, None
        elif c <= limit:
            found, lo, cost_lo = mid, mid, c
        else:
            hi, cost_hi = mid, c
    return found


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
    """Bisect the method's knob in [``lowest``, 1] for the largest value whose measured latency <= ``budget_ms``
    (:func:`largest_within`; a knob the method cannot prune to counts as too far: the search looks higher)."""
    from hwcompress.export import export_onnx
    from hwcompress.profiling.measure import measure

    build = builder(method, model, input_shape, target.channel_multiple)
    workdir.mkdir(parents=True, exist_ok=True)
    tried: dict[float, tuple[nn.Module, float]] = {}  # knob -> (model, measured ms)

    def latency(knob: float) -> float | None:
        try:
            pruned = build(knob)
        except PolicyError as exc:  # the method cannot prune this far
            log.info("%s at %.4f: %s", method, knob, exc)
            return None
        path = export_onnx(pruned, input_shape, workdir / f"{method}-{knob:.4f}.onnx")
        ms = measure(path, target, cache=cache).latency.median_ms
        log.info("%s knob %.4f: %.3f ms (budget %.3f)", method, knob, ms, budget_ms)
        tried[knob] = (pruned, ms)
        return ms

    knob = largest_within(latency, budget_ms, lowest, 1.0, steps=steps, unusable="higher")
    if knob is not None:
        return Fitted(method, knob, *tried[knob], True, len(tried))
    if not tried:
        raise PolicyError(f"{method} pruning could not build any model for {budget_ms:.3f} ms")
    smallest = min(tried)
    return Fitted(method, smallest, *tried[smallest], False, len(tried))
