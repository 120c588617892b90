"""Reference compressions to compare a search against, each fitted to a *measured* latency budget.

* ``uniform``: one keep ratio for every prunable group (fp32);
* ``global-magnitude``: Torch-Pruning global L1 group-magnitude pruning (ranked across layers) to a
  MACs ratio (fp32);
* ``uniform+int8``: uniform pruning, the model measured as ONNX Runtime static INT8 (QDQ) — the
  obvious two-stage baseline: its keep ratio is fitted with the int8 model's latency;
* ``knapsack``: HALP-style latency-aware knapsack (:mod:`hwcompress.knapsack`): channel importance
  against the latency the table measured on the target predicts, at a predicted limit;
* ``netadapt``: NetAdapt-style greedy (:func:`netadapt`): one group at a time, every proposal
  measured on the target, the most accurate kept.

The first four have one knob each (keep ratio, MACs ratio, keep ratio, predicted limit): it is
fitted by :func:`fit_knob` with :func:`largest_within` (the code base's one line search), every
point built, written as the target runs it, and measured on the target, so the result is the
least-pruned model of that family whose *measured* latency meets the budget — the fairest
version of the method, not a proxy-sized one.  NetAdapt finds each proposal's count with the same
line search.  Every method takes ``read``, how a device file's latency is read (ms on the budget's
scale): by default one :func:`~hwcompress.profiling.measure.measure` through the cache.  A comparison
holds every method to the rule the search keeps its winner by: it passes a ``read`` that returns the
judge's confirmation figure (the high end of its interval, within the budget exactly when the judge
*confirms* the point within), and NetAdapt, whose hundreds of proposals cannot each be judged, reads
them on one pair beside the baseline and has its end point confirmed (``confirm``) before it stops.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from hwcompress.errors import PolicyError

if TYPE_CHECKING:
    from torch import nn

    from hwcompress.data import DataSplits
    from hwcompress.profiling.cache import MeasurementCache
    from hwcompress.records import Target
    from hwcompress.search.region import TableRegion

log = logging.getLogger(__name__)

ReadMs = Callable[[Path], float]  # a device file's latency in ms, on the budget's scale


def _reader(target: Target, cache: MeasurementCache | None, read: ReadMs | None) -> ReadMs:
    """``read``, or one measurement through ``cache``."""
    if read is not None:
        return read
    from hwcompress.profiling.measure import measure

    return lambda path: measure(path, target, cache=cache).latency.median_ms

METHODS = ("uniform", "global-magnitude", "uniform+int8")  # fitted by fit_to_latency
PRECISION = {"uniform": "fp32", "global-magnitude": "fp32", "uniform+int8": "int8"}  # what each is measured as
KNOB = {"uniform": "keep", "global-magnitude": "MACs ratio", "uniform+int8": "keep",
        "knapsack": "predicted limit / unpruned prediction", "netadapt": "iterations"}


@dataclass(frozen=True)
class Fitted:
    """The model a fit settled on.

    ``knob``: what was fitted (:data:`KNOB`); ``model``: the pruned torch model (fp32; a
    ``uniform+int8`` row quantizes it); ``latency_ms``: its measurement as the target runs it
    (``file``: fp32 ONNX, or the int8 QDQ model); ``met``: that measurement is within the budget
    (False: the smallest point tried, still over); ``measured``: models profiled; ``info``: what
    else the method reports (knapsack: importance kept, predicted ms; netadapt: its iterations).
    """

    method: str
    knob: float
    model: nn.Module
    latency_ms: float
    met: bool
    measured: int
    file: Path | None = None
    info: Mapping[str, Any] = field(default_factory=dict)


def builder(
    method: str, model: nn.Module, input_shape: tuple[int, ...], channel_multiple: int
) -> Callable[[float], nn.Module]:
    """knob -> pruned copy of ``model`` for one of :data:`METHODS`."""
    from hwcompress.prune import global_magnitude_prune, uniform_prune

    if method in ("uniform", "uniform+int8"):
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


def device_file(model: nn.Module, input_shape: tuple[int, ...], stem: Path, target: Target, precision: str = "fp32",
                calib_x: np.ndarray | None = None) -> Path:
    """``model`` written as ``target``'s runtime runs it (``stem`` + its suffix), every weight layer at
    ``precision`` (int8: ONNX Runtime static QDQ calibrated on ``calib_x``, as :mod:`hwcompress.quantize`
    writes it)."""
    from hwcompress.profiling.adapters import backend_for
    from hwcompress.quantize import uniform_policy

    policy = None if precision == "fp32" else uniform_policy(precision)
    return backend_for(target).device_file(model, input_shape, stem, target, policy, calib_x)


def _stem(workdir: Path, method: str, knob: float) -> Path:
    return workdir / f"{method.replace('+', '-')}-{knob:.4f}".replace(".", "p")


def fit_knob(
    method: str,
    build: Callable[[float], nn.Module],
    input_shape: tuple[int, ...],
    target: Target,
    budget_ms: float,
    workdir: Path,
    *,
    lo: float,
    hi: float = 1.0,
    steps: int = 7,
    precision: str = "fp32",
    calib_x: np.ndarray | None = None,
    cache: MeasurementCache | None = None,
    read: ReadMs | None = None,
) -> Fitted:
    """The largest knob in [``lo``, ``hi``] whose model, ``build(knob)`` written at ``precision``
    (:func:`device_file`), reads within ``budget_ms`` on ``target`` (``read``, default one measurement
    through ``cache``): :func:`largest_within`, ``steps`` probes; a knob ``build`` cannot make
    (PolicyError) counts as too far (the search looks higher).
    Not met: the smallest knob tried, ``met=False``.  PolicyError when no point could be built."""
    read_ms = _reader(target, cache, read)
    workdir.mkdir(parents=True, exist_ok=True)
    tried: dict[float, tuple[nn.Module, float, Path]] = {}  # knob -> (model, measured ms, file)

    def latency(knob: float) -> float | None:
        try:
            pruned = build(knob)
        except PolicyError as exc:  # the method cannot prune this far
            log.info("%s at %.4f: %s", method, knob, exc)
            return None
        path = device_file(pruned, input_shape, _stem(workdir, method, knob), target, precision, calib_x)
        ms = read_ms(path)
        log.info("%s knob %.4f: %.3f ms (budget %.3f)", method, knob, ms, budget_ms)
        tried[knob] = (pruned, ms, path)
        return ms

    knob = largest_within(latency, budget_ms, lo, hi, steps=steps, unusable="higher")
    if knob is not None:
        model, ms, path = tried[knob]
        return Fitted(method, knob, model, ms, True, len(tried), path)
    if not tried:
        raise PolicyError(f"{method} pruning could not build any model for {budget_ms:.3f} ms")
    smallest = min(tried)
    model, ms, path = tried[smallest]
    return Fitted(method, smallest, model, ms, False, len(tried), path)


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
    calib_x: np.ndarray | None = None,
    read: ReadMs | None = None,
) -> Fitted:
    """One of :data:`METHODS` fitted by :func:`fit_knob`, its knob in [``lowest``, 1], measured at the
    method's precision (:data:`PRECISION`; ``uniform+int8`` needs ``calib_x``, real images
    normalised like the training data, for the int8 calibration)."""
    build = builder(method, model, input_shape, target.channel_multiple)
    precision = PRECISION[method]
    if precision != "fp32" and (calib_x is None or len(calib_x) == 0):
        raise PolicyError(f"{method} needs calibration images (calib_x) for its {precision} model")
    return fit_knob(method, build, input_shape, target, budget_ms, workdir, lo=lowest, steps=steps,
                    precision=precision, calib_x=calib_x, cache=cache, read=read)


def fit_knapsack(
    model: nn.Module,
    input_shape: tuple[int, ...],
    target: Target,
    budget_ms: float,
    workdir: Path,
    *,
    region: TableRegion,
    importance: Sequence[np.ndarray],
    cache: MeasurementCache | None = None,
    steps: int = 7,
    read: ReadMs | None = None,
) -> Fitted:
    """HALP-style knapsack pruning fitted to a measured budget.

    ``region``: the measured table's region of ``model`` (:func:`~hwcompress.search.region.build_table_region`);
    ``importance``: :func:`~hwcompress.knapsack.channel_importance` of its groups.  The knob is the
    predicted limit as a fraction of the region's prediction of the unpruned model, in [the floor's
    fraction, 1]; at each, :func:`~hwcompress.knapsack.solve_knapsack` gives the keep ratios and each
    group keeps its most important channels (by ``importance``).  :func:`fit_knob` picks the largest
    fraction whose model *measures* within ``budget_ms``: the least pruned knapsack model within.
    ``info``: the keep ratio per group name, the predicted ms and the importance kept (fraction of
    the total) at the fitted knob.
    """
    from hwcompress.knapsack import choice_count, solve_knapsack
    from hwcompress.prune import apply_policy
    from hwcompress.records import CompressionPolicy

    groups = region.groups
    choices = [region.choices(i) for i in range(len(groups))]
    channels = [g.channels for g in groups]
    full = region.predict(np.ones(len(groups)))
    floor = region.predict(np.array([c[0] for c in choices]))
    scores = {g.name: [float(v) for v in imp] for g, imp in zip(groups, importance, strict=True)}
    solved: dict[float, Any] = {}

    def build(frac: float) -> nn.Module:
        sol = solve_knapsack(region.predict, choices, channels, importance, frac * full)
        solved[frac] = sol
        counts = {g.name: choice_count(k, g.channels) for g, k in zip(groups, sol.keep, strict=True)}
        return apply_policy(model, CompressionPolicy(), input_shape, counts=counts, scores=scores)

    fit = fit_knob("knapsack", build, input_shape, target, budget_ms, workdir, lo=min(floor / full, 1.0),
                   steps=steps, cache=cache, read=read)
    sol = solved[fit.knob]
    info = {"keep": {g.name: float(k) for g, k in zip(groups, sol.keep, strict=True)},
            "predicted_ms": sol.predicted, "importance_kept": sol.importance / sol.total if sol.total > 0 else 1.0,
            "predictions": sol.predictions}
    return Fitted(fit.method, fit.knob, fit.model, fit.latency_ms, fit.met, fit.measured, fit.file, info)


class _Exhausted(Exception):
    """NetAdapt's measurement bound is reached."""


NETADAPT_STEP = 0.1  # each iteration's latency reduction target, as a fraction of the unpruned model's latency
NETADAPT_MEASUREMENTS = 400  # ~7 iterations x 15 groups x ~4 probes (MobileNetV2-small at 0.3x) fit


def netadapt(
    model: nn.Module,
    input_shape: tuple[int, ...],
    target: Target,
    budget_ms: float,
    workdir: Path,
    *,
    splits: DataSplits,
    cache: MeasurementCache | None = None,
    lower_bound: float = 0.2,
    step: float = NETADAPT_STEP,
    max_measurements: int = NETADAPT_MEASUREMENTS,
    val_limit: int | None = 2000,
    bn_batches: int = 8,
    recover: Callable[[nn.Module], None] | None = None,
    read: ReadMs | None = None,
    confirm: ReadMs | None = None,
) -> Fitted:
    """NetAdapt-style greedy pruning (Yang et al. 2018) to a measured latency budget.

    Starts from ``model`` (unpruned, measured once).  Each iteration sets a latency target
    ``max(budget_ms, current - step x unpruned)`` and, for each prunable group in turn, proposes
    the largest channel count (on the target's channel multiple, at least ``lower_bound`` of the
    group's original width, below its current count) whose *measured* latency — the current model
    with that group pruned (L1 group magnitude), written as the target runs it, profiled through
    :func:`~hwcompress.profiling.measure.measure` and ``cache``, or ``read`` — meets the target: the count found by
    :func:`largest_within` over the group's counts.  Each proposal gets short-term recovery (batch-
    norm statistics re-estimated on ``bn_batches`` training batches, then ``recover(model)`` when
    given, e.g. a few distillation steps) and is scored on the first ``val_limit`` validation images;
    the most accurate becomes the current model (its weights carried on).  Where no group alone meets
    the target, each group's fastest measured count is proposed and the proposal losing the least
    accuracy per ms saved is kept (the most accurate one where none reads faster than the current
    model: its one reading was then a fast outlier).  Repeats until the current model measures within ``budget_ms``, no
    group can shrink, or ``max_measurements`` profiles were taken (the iteration in flight then
    decides among the proposals it has).

    ``confirm``: a careful reading of the model that read within (e.g. the judge's confirmation
    figure).  The greedy step keeps the best of many quick readings, so the one that reads within is
    often a lucky one: with ``confirm`` the loop stops only where the confirmation is within too; where
    it is over, its figure replaces the reading and the pruning goes on (each confirmation counts as
    one of ``max_measurements``; met only when confirmed).  ``knob``: iterations made; ``measured``:
    profiles taken; ``info['history']``: per iteration, the group pruned, its new count, the measured
    ms and score (and ``confirm_ms`` where its model was confirmed); ``info['confirmed']``.
    """
    from hwcompress.evaluate import accuracy, torch_threads
    from hwcompress.knapsack import choice_count
    from hwcompress.prune import apply_policy, prunable_groups
    from hwcompress.records import CompressionPolicy
    from hwcompress.search.evaluator import recalibrate_bn
    from hwcompress.search.region import keep_choices

    if not 0 < step <= 1 or max_measurements < 1:
        raise PolicyError(f"netadapt needs 0 < step <= 1 and max_measurements >= 1, got {step} and {max_measurements}")
    workdir.mkdir(parents=True, exist_ok=True)
    groups = prunable_groups(model, input_shape)
    options = {g.name: [choice_count(r, g.channels) for r in keep_choices(g.channels, target.channel_multiple,
                                                                            lower_bound)] for g in groups}
    counts = {g.name: g.channels for g in groups}
    val = splits.val.head(val_limit)
    taken = 0

    read_ms = _reader(target, cache, read)

    files: dict[int, Path] = {}  # id(model) -> its device file

    def timed(net: nn.Module, name: str) -> float:
        nonlocal taken
        if taken >= max_measurements:
            raise _Exhausted
        taken += 1
        files[id(net)] = path = device_file(net, input_shape, workdir / name, target)
        return read_ms(path)

    def confirmed_ms(net: nn.Module, reading: float) -> float:
        nonlocal taken
        if confirm is None:
            return reading
        if taken >= max_measurements:
            raise _Exhausted
        taken += 1
        return confirm(files[id(net)])

    def recovered(net: nn.Module) -> float:
        recalibrate_bn(net, splits.train.x, bn_batches)
        if recover is not None:
            recover(net)
        net.eval()
        return accuracy(net, val)

    Proposal = tuple[str, int, float, "nn.Module"]  # group, count, measured ms, pruned model

    def propose(current: nn.Module, name: str, index: int, opts: list[int], goal: float,
                tag: str) -> tuple[Proposal | None, Proposal | None]:
        """(the largest count of ``opts`` measured within ``goal``, or None; the fastest count measured)."""
        probes: dict[int, tuple[float, nn.Module]] = {}

        def cost(s: float) -> float:
            c = opts[min(int(s), len(opts) - 1)]
            if c not in probes:
                net = apply_policy(current, CompressionPolicy(), input_shape, counts={name: c})
                probes[c] = (timed(net, f"{tag}-{index}-{c}"), net)
            return probes[c][0]

        s = largest_within(cost, goal, 0.0, float(len(opts)), steps=math.ceil(math.log2(len(opts))) + 1)
        within = None if s is None else opts[min(int(s), len(opts) - 1)]
        fast = min(probes, key=lambda k: probes[k][0]) if probes else None
        return ((name, within, *probes[within]) if within is not None else None,
                (name, fast, *probes[fast]) if fast is not None else None)

    with torch_threads(1):
        current = copy.deepcopy(model).eval()
        base_ms = cur_ms = timed(current, "netadapt-start")
        cur_score: float | None = None
        history: list[dict[str, Any]] = []
        exhausted = confirmed = False
        while not exhausted:
            if cur_ms <= budget_ms:  # read within: confirmed, or the confirmation's figure goes on
                try:
                    check = confirmed_ms(current, cur_ms)
                except _Exhausted:
                    exhausted = True
                    break
                if confirm is not None:
                    log.info("netadapt: %.3f ms read within %.3f ms; confirmation %.3f ms", cur_ms, budget_ms, check)
                    if history:
                        history[-1]["confirm_ms"] = check
                cur_ms = check
                if check <= budget_ms:
                    confirmed = True
                    break
            goal = max(budget_ms, cur_ms - step * base_ms)
            met: list[Proposal] = []
            fastest: list[Proposal] = []
            for g in groups:
                opts = [c for c in options[g.name] if c < counts[g.name]]
                if not opts:
                    continue
                try:
                    within, fast = propose(current, g.name, g.index, opts, goal, f"netadapt-{len(history)}")
                except _Exhausted:
                    exhausted = True
                    break
                if within is not None:
                    met.append(within)
                elif fast is not None:
                    fastest.append(fast)
            # a proposal has strictly fewer channels than the current model, so the loop ends; where
            # none *reads* faster than the current model's one reading (a fast outlier on a noisy host),
            # the most accurate one is taken and its reading replaces the outlier
            faster = [p for p in fastest if p[2] < cur_ms]
            pool = met or faster or fastest
            if not pool:
                break
            scored = [(recovered(net), name, c, ms, net) for name, c, ms, net in pool]
            if met or not faster:
                score, name, c, ms, net = max(scored, key=lambda t: t[0])
            else:
                if cur_score is None:
                    cur_score = recovered(current)
                ref = cur_score
                score, name, c, ms, net = max(scored, key=lambda t: (t[0] - ref) / max(cur_ms - t[3], 1e-9))
            current, cur_ms, cur_score = net, ms, score
            counts[name] = c
            history.append({"group": name, "count": c, "ms": ms, "score": score, "goal_ms": goal,
                            "met_goal": bool(met)})
            log.info("netadapt iteration %d: %s -> %d channels, %.3f ms (goal %.3f, budget %.3f), score %.4f",
                     len(history), name, c, ms, goal, budget_ms, score)
    current.eval()
    reached = confirmed if confirm is not None else cur_ms <= budget_ms  # (the bound may stop it after a last step)
    info = {"history": history, "counts": dict(counts), "exhausted": exhausted, "base_ms": base_ms,
            "confirmed": confirmed}
    return Fitted("netadapt", float(len(history)), current, cur_ms, reached, taken, files.get(id(current)), info)
