"""Latency predictor: the per-layer table's entries for a candidate plus a residual fitted to
full-model measurements, and its evaluation against the MACs model on held-out candidates.

    predicted_ms = alpha + beta * sum_units table_ms(unit at the candidate's channel counts)

``alpha`` takes what the table does not hold (graph overhead, the session's run call, reshapes,
layout reorders between units); ``beta`` how the units' sum in one-unit models relates to the same
units inside the whole graph.  Both are fitted by least squares to full-model measurements (the
baseline and the fitting candidates) only, never to the candidates the figures are reported on.
"""

from __future__ import annotations

import logging
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hwcompress.errors import UsageError
from hwcompress.latency.graph import LayerTemplate, boundaries, extract_templates, unit_precisions
from hwcompress.latency.table import DEFAULT_MAX_ENTRIES, LatencyTable, build_table, plan_grid
from hwcompress.profiling.cache import MeasurementCache
from hwcompress.profiling.runner import Runner
from hwcompress.records import LayerInfo, Measurement, Target

if TYPE_CHECKING:
    from torch import nn

    from hwcompress.prune import PruneGroup

log = logging.getLogger(__name__)

KEEP_RANGE = (0.25, 1.0)  # keep ratios of the random candidates
TOLERANCE = 0.10


@dataclass
class Analysis:
    """What the predictor needs of a model: its layers, prunable groups and graph units."""

    shape: tuple[int, ...]
    rows: list[LayerInfo]
    groups: list[PruneGroup]
    templates: list[LayerTemplate]
    onnx_path: Path

    @property
    def group_channels(self) -> dict[int, int]:
        return {g.index: g.channels for g in self.groups}


def analyse(net: nn.Module, input_shape: Sequence[int], workdir: Path) -> Analysis:
    """Layer table, prunable groups and units of ``net`` (exported to ``workdir/baseline.onnx``)."""
    from hwcompress.export import export_onnx
    from hwcompress.prune import layer_table, prunable_groups

    shape = tuple(int(s) for s in input_shape)
    rows = layer_table(net, shape)
    groups = prunable_groups(net, shape)
    path = export_onnx(net, shape, workdir / "baseline.onnx")
    templates = extract_templates(path, {r.name: r.group for r in rows})
    return Analysis(shape, rows, groups, templates, path)


def table_for(analysis: Analysis, target: Target, *, cache: MeasurementCache | None = None,
              runner: Runner | None = None, max_entries: int = DEFAULT_MAX_ENTRIES,
              precisions: Sequence[str] = ("fp32",)) -> LatencyTable:
    """Build (or load from ``cache``) the latency table of ``analysis`` on ``target`` at ``precisions``
    (the grid is planned on fp32 entries; each further precision adds its own entries)."""
    grid = plan_grid(analysis.templates, analysis.group_channels, target.channel_multiple, max_entries)
    return build_table(analysis.templates, grid, target, cache=cache, runner=runner, precisions=precisions)


@dataclass
class TablePredictor:
    """``alpha + beta * table sum`` (ms); :meth:`fit` sets alpha and beta."""

    table: LatencyTable
    templates: list[LayerTemplate]
    alpha: float = 0.0
    beta: float = 1.0
    fitted_on: int = 0

    def feature(self, counts: Mapping[int, int], precisions: Mapping[str, str] | None = None) -> float:
        """Sum of the table's entries for the candidate (ms)."""
        return self.table.total_ms(self.templates, counts, precisions)

    def predict(self, counts: Mapping[int, int], precisions: Mapping[str, str] | None = None) -> float:
        return self.alpha + self.beta * self.feature(counts, precisions)

    def fit(self, counts: Sequence[Mapping[int, int]], measured_ms: Sequence[float],
            precisions: Sequence[Mapping[str, str] | None] | None = None) -> None:
        """``measured = alpha + beta * table sum`` fitted by :func:`theil_sen` (robust: one measurement
        slowed by other work on the device does not tilt the line)."""
        if not counts or len(counts) != len(measured_ms):
            raise UsageError("the residual needs at least one full-model measurement (and one per candidate)")
        precs = list(precisions) if precisions is not None else [None] * len(counts)
        x = np.array([self.feature(c, p) for c, p in zip(counts, precs, strict=True)])
        y = np.array(measured_ms, dtype=np.float64)
        self.alpha, self.beta = theil_sen(x, y)
        self.fitted_on = len(x)


# --------------------------------------------------------------------------- statistics
def theil_sen(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(intercept, slope) of the Theil-Sen line: slope = median of pairwise slopes, intercept =
    median of ``y - slope * x``; a single point (or equal x) keeps slope 1."""
    slopes = [(y[j] - y[i]) / (x[j] - x[i]) for i in range(len(x)) for j in range(i + 1, len(x))
              if abs(x[j] - x[i]) > 1e-12]
    slope = float(np.median(slopes)) if slopes else 1.0
    return float(np.median(y - slope * x)), slope



def ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    a = np.asarray(values, dtype=np.float64)
    order = np.argsort(a, kind="stable")
    r = np.empty(len(a))
    r[order] = np.arange(1, len(a) + 1)
    for v in np.unique(a):
        idx = np.where(a == v)[0]
        if len(idx) > 1:
            r[idx] = r[idx].mean()
    return r


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (nan for fewer than 2 points or a constant series)."""
    if len(a) < 2:
        return float("nan")
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def figures(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """``within_10pct`` (fraction), ``spearman``, ``median_abs_err`` (relative) of predictions."""
    rel = [abs(p - m) / m for p, m in zip(predicted, measured, strict=True)]
    return {
        "within_10pct": sum(e <= TOLERANCE for e in rel) / len(rel) if rel else float("nan"),
        "spearman": spearman(predicted, measured),
        "median_abs_err": statistics.median(rel) if rel else float("nan"),
    }


# --------------------------------------------------------------------------- evaluation
def random_counts(groups: Sequence[PruneGroup], multiple: int, rng: random.Random) -> dict[int, int]:
    """Per-group keep counts of one random candidate: keep ratios uniform in :data:`KEEP_RANGE`,
    rounded to the channel ``multiple`` as :func:`keep_count` does."""
    from hwcompress.prune import keep_count

    return {g.index: keep_count(g.channels, rng.uniform(*KEEP_RANGE), multiple) for g in groups}


TABLE_PRECISIONS = ("fp32", "int8", "fp16", "int4")


def random_precisions(analysis: Analysis, precisions: Sequence[str], rng: random.Random) -> dict[str, str]:
    """Per-layer precisions of one random mixed candidate: a base precision for the candidate,
    each weight layer switched to another of ``precisions`` with probability 0.3."""
    base = rng.choice(list(precisions))
    out = {}
    for t in analysis.templates:
        if t.module and t.base.op in ("Conv", "Gemm"):
            out[t.module] = rng.choice(list(precisions)) if rng.random() < 0.3 else base
    return out


def _macs_model(analysis: Analysis, baseline: Measurement, base_ms: float) -> Any:
    """Today's MACs-based latency model of the search (hwcompress.search.latency_model): ``baseline``'s
    per-node times, on the scale of ``base_ms`` (the baseline's figure the candidates are read on)."""
    from hwcompress.search.latency_model import LatencyModel
    from hwcompress.search.layers import cost_model, layer_times_ms

    times = layer_times_ms(analysis.rows, baseline, analysis.onnx_path)
    return LatencyModel(cost_model(analysis.groups, analysis.rows, times), base_ms)


def _keep_vector(analysis: Analysis, counts: Mapping[int, int]) -> np.ndarray:
    return np.array([counts.get(g.index, g.channels) / g.channels for g in analysis.groups])


@dataclass
class Evaluation:
    """Held-out figures of the table predictor and the MACs model on the same candidates."""

    model: str
    target: str
    n_fit: int
    held_out: dict[str, float]
    macs_model: dict[str, float]
    table: dict[str, Any]
    alpha_ms: float
    beta: float
    baseline_ms: float
    seconds: dict[str, float] = field(default_factory=dict)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    mixed: dict[str, float] = field(default_factory=dict)  # held-out mixed-precision figures (empty: not checked)
    held_out_p10: dict[str, float] = field(default_factory=dict)  # the same against each candidate's p10 latency
    mixed_candidates: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "target": self.target,
            "held_out": {"n": len([c for c in self.candidates if not c["fit"]]), **self.held_out},
            "macs_model": self.macs_model,
            "held_out_p10": self.held_out_p10,
            "table": self.table,
            "fit": {"n": self.n_fit, "alpha_ms": self.alpha_ms, "beta": self.beta},
            "baseline_ms": self.baseline_ms,
            "seconds": self.seconds,
            "candidates": self.candidates,
            **({"mixed": self.mixed, "mixed_candidates": self.mixed_candidates} if self.mixed else {}),
        }


def evaluate(
    net: nn.Module,
    input_shape: Sequence[int],
    target: Target,
    *,
    model_name: str = "model",
    n_candidates: int = 30,
    n_fit: int = 8,
    seed: int = 0,
    cache: MeasurementCache | None = None,
    runner: Runner | None = None,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    workdir: str | os.PathLike[str] | None = None,
    n_mixed: int = 0,
    passes: int = 3,
) -> Evaluation:
    """Build or load the table, measure ``n_fit`` random pruned candidates to fit the residual
    (and the MACs model's scale, which sees the same points), then ``n_candidates`` other random
    candidates held out; figures of both models on those.  The table and the baseline's per-node
    profile go through ``cache``; the candidates are read fresh (below).

    ``n_mixed`` > 0 also checks mixed precision: the table gets entries at the target's precisions
    (of fp32, int8, fp16, int4) and the precision boundaries, ``n_fit`` + ``n_mixed`` random pruned
    candidates with random per-layer precisions are quantized (:func:`quantize_onnx`, random
    calibration images: latency does not depend on them) and measured; the residual is refitted on
    all fitting candidates, fp32 and mixed, and ``mixed`` reports the held-out mixed figures.

    Candidates are read as the search reads them (:class:`hwcompress.judge.Reader`): relative to the
    baseline beside them.  Each of ``passes`` passes profiles every candidate in its own random order,
    in one batch with the baseline before and after each candidate (one process per chunk: the
    process's fast or slow state and a slow spell of the device cancel in the ratio); a candidate's
    figure is the median over passes of its ratio to the geometric mean of its two neighbouring
    baseline profiles, times the median of every baseline profile.  Nothing comes from the cache: a
    reading belongs to its moment.  The agreement of pass 2 with pass 1 (``remeasure_*``) is the
    noise floor of a single pass."""
    from hwcompress.export import export_onnx
    from hwcompress.profiling.measure import measure, measure_batch
    from hwcompress.profiling.remote import runner_for
    from hwcompress.prune import apply_policy
    from hwcompress.records import CompressionPolicy

    if n_candidates < 2:
        raise UsageError(f"--candidates must be at least 2 (got {n_candidates}): Spearman needs two points")
    if n_fit < 1:
        raise UsageError(f"the residual needs at least one fitting candidate (got {n_fit})")
    runner = runner if runner is not None else runner_for(target)
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="hwc-latency-", dir=workdir) as tmp_s:
        tmp = Path(tmp_s)
        t = time.perf_counter()
        analysis = analyse(net, input_shape, tmp)
        seconds["analyse"] = time.perf_counter() - t
        precs = [p for p in TABLE_PRECISIONS if p in target.precisions] if n_mixed > 0 else ["fp32"]
        if n_mixed > 0 and len(precs) < 2:
            raise UsageError(f"target {target.name} lists no precision besides fp32 that the table models "
                             f"({', '.join(TABLE_PRECISIONS)}); --mixed needs two")
        table = table_for(analysis, target, cache=cache, runner=runner, max_entries=max_entries, precisions=precs)
        seconds["table"] = table.seconds

        t = time.perf_counter()
        baseline = measure(analysis.onnx_path, target, cache=cache, runner=runner, per_node=True)
        rng = random.Random(seed)
        cands: list[dict[int, int]] = []
        seen: set[tuple[int, ...]] = {tuple(g.channels for g in analysis.groups)}
        tries = 0
        while len(cands) < n_fit + n_candidates and tries < 100 * (n_fit + n_candidates):
            tries += 1
            c = random_counts(analysis.groups, target.channel_multiple, rng)
            sig = tuple(c[g.index] for g in analysis.groups)
            if sig not in seen:
                seen.add(sig)
                cands.append(c)
        if len(cands) < n_fit + n_candidates:
            raise UsageError(f"the model allows only {len(cands)} distinct pruned candidates at channel multiple "
                             f"{target.channel_multiple}; ask for fewer --candidates")
        paths = []
        for i, c in enumerate(cands):
            names = {g.name: c[g.index] for g in analysis.groups}
            pruned = apply_policy(net, CompressionPolicy(), analysis.shape, counts=names)
            paths.append(export_onnx(pruned, analysis.shape, tmp / f"cand-{i}.onnx"))
        mixed: list[tuple[dict[int, int], dict[str, str]]] = []
        if n_mixed > 0:
            from hwcompress.quantize import quantize_onnx

            calib = np.random.RandomState(seed).standard_normal((8, *analysis.shape[1:])).astype(np.float32)
            for i in range(n_fit + n_mixed):
                c = random_counts(analysis.groups, target.channel_multiple, rng)
                pr = random_precisions(analysis, precs, rng)
                names = {g.name: c[g.index] for g in analysis.groups}
                pruned = apply_policy(net, CompressionPolicy(), analysis.shape, counts=names)
                fp32 = export_onnx(pruned, analysis.shape, tmp / f"mixed-{i}.fp32.onnx")
                paths.append(quantize_onnx(fp32, tmp / f"mixed-{i}.onnx", CompressionPolicy(precision=pr), calib, target))
                mixed.append((c, pr))
        seconds["prune_export"] = time.perf_counter() - t
        t = time.perf_counter()
        if passes < 1:
            raise UsageError(f"passes must be >= 1, got {passes}")
        # Each pass measures the candidates in its own random order, so that a burst of load from other
        # work on the device lands on random candidates, not on the fitting ones (measured together);
        # the baseline sits between every two candidates, and each candidate is taken relative to it.
        one_round = replace(target, measure=replace(target.measure, max_rounds=1, max_cv=1.0))
        order_rng = random.Random(seed + 1)
        runs: list[tuple[list[int], list[Measurement]]] = []  # per pass: the order, then B c B c ... B
        for _ in range(passes):
            order = list(range(len(paths)))
            order_rng.shuffle(order)
            files = [analysis.onnx_path]
            for j in order:
                files += [paths[j], analysis.onnx_path]
            runs.append((order, measure_batch(files, one_round, runner=runner, force=True)))

        def read(stat: Callable[[Measurement], float]) -> tuple[list[list[float]], float]:
            """Per pass, each candidate's ``stat`` over the geometric mean of its two neighbouring baseline
            profiles, times the median baseline profile (the scale, also returned)."""
            scale = statistics.median(stat(m) for _, got in runs for m in got[0::2])
            out = []
            for order, got in runs:
                r = [0.0] * len(paths)
                for pos, j in enumerate(order):
                    r[j] = scale * stat(got[2 * pos + 1]) / math.sqrt(stat(got[2 * pos]) * stat(got[2 * pos + 2]))
                out.append(r)
            return out, scale

        per_pass, scale = read(lambda m: m.latency.median_ms)
        per_pass_p10, scale_p10 = read(lambda m: m.latency.p10_ms)
        first_order, first_got = runs[0]
        cached = [False] * len(paths)
        for pos, j in enumerate(first_order):
            cached[j] = first_got[2 * pos + 1].cached
        seconds["measure_candidates"] = time.perf_counter() - t
        macs = _macs_model(analysis, baseline, scale)  # reads the baseline's ONNX: inside the work folder

    ms = [statistics.median(v) for v in zip(*per_pass, strict=True)]
    noise: dict[str, float] = {}
    if passes >= 2:
        held_first = [per_pass[0][i] for i in range(n_fit, len(cands))]
        held_second = [per_pass[1][i] for i in range(n_fit, len(cands))]
        floor = figures(held_second, held_first)
        noise = {"remeasure_within_10pct": floor["within_10pct"], "remeasure_median_abs_diff": floor["median_abs_err"]}
    mixed_ms = ms[len(cands):]
    ms = ms[:len(cands)]
    fit_idx, held_idx = list(range(n_fit)), list(range(n_fit, len(cands)))
    pred = TablePredictor(table, analysis.templates)
    pred.fit([{}] + [cands[i] for i in fit_idx], [scale] + [ms[i] for i in fit_idx])
    # The same check against each candidate's 10th-percentile latency: less moved by other work on
    # a shared device than the median, so it shows the model's own error where the median is noisy.
    p10 = [statistics.median(v) for v in zip(*per_pass_p10, strict=True)]
    pred_p10 = TablePredictor(table, analysis.templates)
    pred_p10.fit([{}] + [cands[i] for i in fit_idx], [scale_p10] + [p10[i] for i in fit_idx])
    held_p10 = figures([pred_p10.predict(cands[i]) for i in held_idx], [p10[i] for i in held_idx])
    if passes >= 2:
        floor = figures([per_pass_p10[1][i] for i in held_idx], [per_pass_p10[0][i] for i in held_idx])
        held_p10["remeasure_within_10pct"] = floor["within_10pct"]
        held_p10["remeasure_median_abs_diff"] = floor["median_abs_err"]
    mixed_figures: dict[str, float] = {}
    mixed_rows: list[dict[str, Any]] = []
    if mixed:
        both = TablePredictor(table, analysis.templates)
        both.fit([{}] + [cands[i] for i in fit_idx] + [c for c, _ in mixed[:n_fit]],
                 [scale] + [ms[i] for i in fit_idx] + mixed_ms[:n_fit],
                 [None] * (1 + n_fit) + [p for _, p in mixed[:n_fit]])
        fp32_same = [both.predict(c) for c, _ in mixed]
        preds = [both.predict(c, p) for c, p in mixed]
        mixed_figures = {**figures(preds[n_fit:], mixed_ms[n_fit:]), "n": float(n_mixed),
                         "alpha_ms": both.alpha, "beta": both.beta}
        for i, ((c, p), m) in enumerate(zip(mixed, mixed_ms, strict=True)):
            mixed_rows.append({"fit": i < n_fit, "counts": {g.name: c[g.index] for g in analysis.groups},
                               "precisions": p, "measured_ms": m, "table_ms": preds[i], "fp32_table_ms": fp32_same[i],
                               "boundaries": len(boundaries(analysis.templates, unit_precisions(analysis.templates, p)))})
    for i in fit_idx:
        macs.observe(_keep_vector(analysis, cands[i]), ms[i])
    table_pred = [pred.predict(cands[i]) for i in held_idx]
    macs_pred = [float(macs.predict(_keep_vector(analysis, cands[i]))) for i in held_idx]
    held = [ms[i] for i in held_idx]
    rows = []
    for i, c in enumerate(cands):
        rows.append({"fit": i < n_fit, "counts": {g.name: c[g.index] for g in analysis.groups},
                     "measured_ms": ms[i], "table_ms": pred.predict(c),
                     "macs_model_ms": float(macs.predict(_keep_vector(analysis, c))),
                     "macs": float(macs.cost.macs(_keep_vector(analysis, c))), "cached": cached[i], "passes_ms": [p[i] for p in per_pass],
                     "p10_ms": p10[i] if i < len(p10) else None})
    table_info: dict[str, Any] = {"entries": len(table), "seconds": table.seconds, "measured": table.measured, "cached": table.cached,
                  "repeat_median_rel_diff": table.repeat_rel_diff,
                  "grid": {analysis.groups[g].name: v for g, v in table.grid.items()}}
    table_info["precisions"] = precs
    ev = Evaluation(model_name, target.name, n_fit, {**figures(table_pred, held), "passes": float(passes), **noise},
                    figures(macs_pred, held), table_info,
                    pred.alpha, pred.beta, scale, seconds, rows, mixed=mixed_figures,
                    mixed_candidates=mixed_rows, held_out_p10=held_p10)
    log.info("latency model on %s: %s", target.name, {k: v for k, v in ev.held_out.items()})
    if not all(math.isfinite(v) for v in ms):
        log.warning("some candidate measurements are not finite")
    return ev
