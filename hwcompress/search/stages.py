"""The two stages of a search (:class:`~hwcompress.search.run.Search` runs them in turn).

Stage 1 prunes.  When a measured stage 2 follows, the baseline is first judged at each lower
precision the target offers, beside its fp32 self; fp32 and each one that pays (confirmed at most
``PLAN_MIN_GAIN`` of fp32) are *planned*: every stage-1 candidate is built and measured in the
planned precision the region predicts fastest for it (the model stage 2 starts from), so that what
the agent is rewarded for is what will run.  The agent acts inside the region of
:mod:`hwcompress.search.region` (the latency table measured on the target at the planned
precisions, residuals refitted on every measured candidate), and the winner is
picked by :meth:`Search.pick`: the best candidates judged beside the baseline, else the best one
projected onto the region and judged again.

Stage 2 picks a precision per layer of the fine-tuned model.  Its action wall predicts a mix from
the table at the pruned model's channel counts (each layer at its precision, plus the Q/DQ
boundaries the mix implies), the residual fitted to the uniform policies it measures first, or,
without a table, from each layer's time times its precision's measured ratio.  Its winner is
picked by the same judge, a mix judged over projected by the same wall (the fewest layers moved to
the fastest precision that the corrected prediction puts within); the uniform policy at stage 1's
precision is among its candidates, so a stage-1 winner judged within leaves stage 2 a candidate within.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hwcompress.errors import BudgetError, HwcompressError
from hwcompress.records import Candidate, CompressionPolicy
from hwcompress.search.envs import PruneEnv, QuantEnv, StepLayer, mix_wall
from hwcompress.search.evaluator import PruneEvaluator, QuantEvaluator
from hwcompress.search.latency_model import LatencyModel
from hwcompress.search.layers import cost_model, layer_times_ms, prune_step_layers, step_kind
from hwcompress.search.pooled import stage_env
from hwcompress.search.region import CostRegion, Region, build_table_region
from hwcompress.search.stage import StageRunner
from hwcompress.search.state import Judged, Stage1Report, Stage2Report, kept

if TYPE_CHECKING:
    from torch import nn

    from hwcompress.judge import Verdict
    from hwcompress.latency.graph import LayerTemplate
    from hwcompress.latency.table import LatencyTable
    from hwcompress.prune import PruneGroup
    from hwcompress.records import Target
    from hwcompress.search.run import Search

log = logging.getLogger(__name__)

PLAN_MIN_GAIN = 0.95  # a lower precision plans stage 1 when the judge confirms it at most this fraction of fp32
PRECISION_PAIRS = 3  # pairs of fresh profiles (copy, fp32) at least behind each precision's verdict
PRECISION_MAX_PAIRS = 8  # ... at most (a precision the judge cannot decide within them does not pay)
#: A projection aims this far under the aim, on the predictor corrected by the judge's ratio: the room a
#: confirmation needs (its interval's high end within the aim; the confirmed verdicts of the grid's seeds
#: 1-2 had their high ends 1-8 % over their ratio, tools/results/search-budgets.md).  Corrected by the
#: interval's high end instead, a verdict that saw the model's fast state once (0.517x, high end 0.708x)
#: projected 31 % down and kept 0.81 of the budget.
PROJECT_AIM = 0.95
REACH_MARGIN = 1.10  # a budget is out of reach when the most pruned model measures this far over it
BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}


def has_table(target: Target) -> bool:
    """Whether a latency table can be built on ``target``: its profiler runs ONNX files in batch mode."""
    from hwcompress.profiling.adapters import get_adapter

    adapter = get_adapter(target.runtime)
    return adapter.supports_batch and ".onnx" in adapter.model_suffixes


def precision_file(s: Search, model: nn.Module, fp32_onnx: Path, policy: CompressionPolicy, stem: Path) -> Path:
    """``model`` at ``policy``'s precisions, as the target's runtime runs it (``stem`` + suffix)."""
    from hwcompress.profiling.adapters import backend_for

    return backend_for(s.target).device_file(model, s.shape, stem, s.target, policy, s.splits.calib.x,
                                             fp32_onnx=fp32_onnx)


def precision_verdicts(s: Search, model: nn.Module, fp32_onnx: Path, fp32_file: Path, stem: str) -> dict[str, Verdict]:
    """Each lower precision's latency over fp32 on ``model`` (every weight layer at it), decided by the
    judge (:func:`~hwcompress.judge.judge`) beside the fp32 file at ``PLAN_MIN_GAIN``: within (it pays)
    when the interval's high end lies under it.  ``PRECISION_PAIRS`` to ``PRECISION_MAX_PAIRS`` ABBA
    pairs; one the judge cannot decide there does not pay.  The ratio is the judge's statistic (the
    region's fits and stage 2's action order are built on it).  A precision the runtime cannot build
    or run gets no verdict (logged).  Measured once per search and kept in
    ``RUN_DIR/precisions-<stem>.json``: what is built on them (stage 1's planned precisions and the
    region's fits, stage 2's action order) must be the same after a resume as before it."""
    from hwcompress.judge import judge
    from hwcompress.quantize import uniform_policy

    def fresh() -> dict[str, Verdict]:
        out: dict[str, Verdict] = {}
        for prec in s.target.precisions:
            if prec == "fp32":
                continue
            try:
                path = precision_file(s, model, fp32_onnx, uniform_policy(prec), s.run_dir / f"{stem}-{prec}")
                out[prec] = judge(path, s.target, PLAN_MIN_GAIN, reference=fp32_file, min_pairs=PRECISION_PAIRS,
                                  max_pairs=PRECISION_MAX_PAIRS)
            except HwcompressError as exc:
                log.warning("%s at %s could not be built or measured: %s", stem, prec, exc)
        return out

    return kept(s.run_dir / f"precisions-{stem}.json", s.resume, fresh,
                lambda vs: {p: v.to_dict() for p, v in vs.items()}, load_precision_verdicts)


def load_precision_verdicts(data: dict[str, Any]) -> dict[str, Verdict]:
    """:func:`precision_verdicts`' kept file read back.  A run folder from before the judge decided the
    plan holds bare ratios (fp32 among them): they decide as they did then (at most ``PLAN_MIN_GAIN``)."""
    from hwcompress.judge import Verdict

    return {p: Verdict.from_dict(v) if isinstance(v, dict)
            else Verdict(ratio=float(v), ci_low=float(v), ci_high=float(v), limit=PLAN_MIN_GAIN,
                         within=float(v) <= PLAN_MIN_GAIN, decided=True)
            for p, v in data.items() if p != "fp32"}


def ratios_of(verdicts: dict[str, Verdict]) -> dict[str, float]:
    """The precisions' latency over fp32 (fp32 1.0) from their verdicts."""
    return {"fp32": 1.0, **{p: v.ratio for p, v in verdicts.items()}}


def planned_of(verdicts: dict[str, Verdict]) -> dict[str, float]:
    """The precisions stage 1 plans, with their ratios: fp32 and each the judge confirmed at ``PLAN_MIN_GAIN``."""
    return {p: r for p, r in ratios_of(verdicts).items() if p == "fp32" or verdicts[p].confirmed}


def describe_precisions(verdicts: dict[str, Verdict], planned: bool) -> str:
    """One line of the precisions' verdicts (:meth:`Verdict.describe`), fastest first (``planned``: say which pay)."""
    return "; ".join(f"{p} {v.describe()}" + ((" (pays)" if v.confirmed else " (does not pay)") if planned else "")
                     for p, v in sorted(verdicts.items(), key=lambda kv: kv[1].ratio)) or "none"


# --------------------------------------------------------------------------- stage 1
def stage1_region(s: Search, planned: dict[str, float]) -> tuple[list[PruneGroup], list[StepLayer], Region, str,
                                                                 dict[str, float]]:
    """Stage 1's groups, the agent's steps and the region (see :mod:`hwcompress.search.region`) over
    the uniform precisions ``planned`` (:func:`planned_of`: fp32 and each lower one the judge confirmed
    at ``PLAN_MIN_GAIN`` x fp32 on the baseline), with their ratios."""
    from hwcompress.prune import layer_table, prunable_groups

    cfg = s.cfg
    groups = prunable_groups(s.base.model, s.shape)
    rows = layer_table(s.base.model, s.shape)
    times = layer_times_ms(rows, s.base_measurement, s.base_onnx)
    steps = prune_step_layers(groups, rows, times)
    common: dict[str, Any] = {"multiple": s.target.channel_multiple, "lower_bound": cfg.lower_bound}
    channels = [g.channels for g in groups]
    wall = s.budget.aim_ms if cfg.wall else float("inf")
    if cfg.prune_cost == "flops":  # AMC's wall on the proxy: MACs within the budget's fraction of the baseline's
        macs_wall = s.base_macs * s.budget.aim_ms / s.base_ms if cfg.wall else float("inf")
        model = LatencyModel(cost_model(groups, rows, times), s.base_ms)
        return groups, steps, CostRegion(model, channels, limit=macs_wall, macs_only=True, **common), "macs", {}
    if not has_table(s.target):  # one precision: the fastest planned (no table to predict the others per candidate)
        prec = min(planned, key=lambda p: planned[p])
        model = LatencyModel(cost_model(groups, rows, times), s.base_ms * planned[prec])
        return groups, steps, CostRegion(model, channels, limit=wall, precision=prec, **common), "cost", {}
    s.reporter.message(f"latency table of {s.cfg.model} on {s.target.name} at {', '.join(planned)} (cached entries "
                       "are reused)")
    region = build_table_region(s.base.model, s.shape, s.target, base_onnx=s.base_onnx, limit=wall,
                                baseline_ms={p: s.base_ms * r for p, r in planned.items()}, lower_bound=cfg.lower_bound,
                                workdir=s.run_dir, cache=s.cache, groups=groups, rows=rows)
    table = region.table
    s.reporter.message(f"latency table: {len(table)} entries ({table.measured} measured, {table.cached} from the "
                       f"cache) in {table.seconds:.1f} s")
    info = {"entries": float(len(table)), "measured": float(table.measured), "cached": float(table.cached),
            "seconds": table.seconds}
    return groups, steps, region, "table", info


def floor_figure(reading_ms: float, verdict: Verdict | None, scale_ms: float) -> float:
    """What the region is fitted to at its far end, the most pruned model: the judge's figure (the verdict's
    ratio x ``scale_ms``) where it was judged, in a quiet moment; else its reading.

    :func:`_check_reach` judges the floor where its reading is over the aim.  A floor predicted over the
    aim walls every action off: the agent can only build the floor, and the stage plays its episodes on
    one candidate (mobilenetv2-small at 0.3x: the floor read 0.38x on the 3 pairs of a reading, beside a
    reference slow in them, and all 40 episodes built it; the judge put the same file at 0.23-0.29x on
    16 pairs).  A reading is a few pairs, a verdict up to 16: where the reading alone would leave the
    agent no choice, the judge's figure decides."""
    return verdict.ratio * scale_ms if verdict is not None and verdict.quiet else reading_ms


def _check_reach(s: Search, evaluator: PruneEvaluator, region: Region, steps: list[StepLayer]) -> None:
    """Refuse (exit 3) before the episodes when even the most pruned model misses the budgets.

    The floor (every group at its smallest choice) is built in each precision the region may build
    and read as candidates are; the region's fit gets its far end from it (:func:`floor_figure`).  Its
    fastest figure over the latency budget by more than ``REACH_MARGIN``, or its file over the size
    budget at the smallest precision the target offers, ends the search unless ``allow_over_budget``.
    """
    from hwcompress.search.run import _over

    cfg, b = s.cfg, s.budget
    floor = CompressionPolicy(keep={st.name: float(region.choices(i)[0]) for i, st in enumerate(steps)
                                    if region.choices(i)[0] < 1.0})
    model = evaluator.build(floor)
    readings, figures = {}, {}
    keep = evaluator.keep_vector(floor)
    for prec in region.precisions:
        path = evaluator.measured_file(model, s.workdir / f"floor-{prec}-{floor.digest()}", prec)
        readings[prec] = s.reader.read(path)
        ms = readings[prec].latency.median_ms
        v = s.judge(path, b.aim) if ms > b.aim_ms else None  # over the aim: would the wall leave the agent no choice?
        figures[prec] = floor_figure(ms, v, s.verdict_scale_ms)
        if v is not None:
            s.reporter.message(f"stage 1: the most pruned model in {prec} read {ms:.3f} ms, over the aim "
                               f"({b.aim_ms:.3f} ms); judged {v.describe()}: the region takes {figures[prec]:.3f} ms")
        region.observe(keep, figures[prec], prec)  # the floor is a measured candidate too
    precision = min(figures, key=lambda p: figures[p])
    fastest = readings[precision]
    reach_ms = figures[precision]
    misses: list[str] = []
    hint = ""
    if reach_ms > b.latency_ms * REACH_MARGIN:
        misses.append(
            f"--latency-budget {b.spec} ({b.latency_ms:.3f} ms) is out of reach on {s.target.name}: the most pruned "
            f"model the search can make (keep {cfg.lower_bound:g} in every layer) measures {reach_ms:.3f} ms "
            f"at its fastest precision ({precision}), {_over(reach_ms, b.latency_ms)} over the budget")
        hint = f"give --latency-budget {reach_ms / s.base_ms * 1.05:.2f}x or more, or a lower --lower-bound"
    if b.size_bytes is not None:
        bits = min((BITS.get(p, 32) for p in s.target.precisions), default=32) if "quant" in cfg.stages else 32
        reach_b = fastest.model_bytes * bits / BITS.get(precision, 32)
        if reach_b > b.size_bytes:
            misses.append(f"--size-budget {cfg.size_budget} is out of reach: the most pruned model is "
                          f"{fastest.model_bytes / 1024:.1f} KiB at {precision} (~{reach_b / 1024:.1f} KiB at {bits} "
                          f"bits), {_over(reach_b, b.size_bytes)} over")
    if not misses:
        return
    if not s.allow_over_budget:
        raise BudgetError("; ".join(misses) + f"; {hint or 'give a larger budget'}, or pass --allow-over-budget "
                          "to search anyway")
    s.reporter.message("; ".join(misses) + " (searching anyway: --allow-over-budget)")


def stage1_seeds(s: Search, region: Region, groups: Sequence[PruneGroup]) -> dict[str, np.ndarray]:
    """Known good keep vectors the agent's first episodes play (the agent refines the best known policy
    instead of starting from noise), both on the region's predictor at its limit: uniform pruning (every
    group scaled down together) and, with labels, the latency-aware knapsack (HALP: the most Taylor
    importance kept within the predicted limit, :mod:`hwcompress.knapsack`)."""
    seeds = {"uniform": region.scale(np.ones(len(groups)), region.limit)}
    if s.cfg.score == "accuracy":
        from hwcompress.knapsack import channel_importance, knapsack_keep

        importance = channel_importance(s.base.model, groups, s.splits.train.x, s.splits.train.y)
        seeds["knapsack"] = knapsack_keep(region.predict, [region.choices(i) for i in range(len(groups))],
                                          [g.channels for g in groups], importance, region.limit)
    return seeds


def seed_actions(keep: np.ndarray, lower_bound: float) -> list[float]:
    """The raw actions that make :class:`PruneEnv` choose ``keep`` (the inverse of its action mapping)."""
    span = 1.0 - lower_bound
    return [float(np.clip(2.0 * (k - lower_bound) / span - 1.0, -1.0, 1.0)) if span > 0 else 1.0 for k in keep]


def run_stage1(s: Search) -> Stage1Report:
    cfg = s.cfg
    measured = cfg.prune_cost == "measured"
    verdicts: dict[str, Verdict] = {}
    if measured and "quant" in cfg.stages and cfg.quant_cost == "measured":
        verdicts = precision_verdicts(s, s.base.model, s.base_onnx, s.base_file, "baseline")
        s.reporter.message(f"baseline at lower precision, judged beside fp32 at {PLAN_MIN_GAIN}x: "
                           f"{describe_precisions(verdicts, planned=True)}")
    ratios = ratios_of(verdicts)
    groups, steps, region, kind, table_info = stage1_region(s, planned_of(verdicts))
    size = s.budget.size_bytes
    if size is not None and region.precisions == ("fp32",) and "quant" in cfg.stages and "int8" in s.target.precisions:
        size *= 4.0  # stage 2 may store the weights in int8
    evaluator = PruneEvaluator(
        s.ctx, s.base.model, cost=cfg.prune_cost, budget_ms=s.budget.aim_ms, size_budget=size,
        budget_macs=s.base_macs * s.budget.aim_ms / s.base_ms, base_macs=s.base_macs,
        region=region if measured else None, group_index={g.name: g.index for g in groups},
        calib_x=s.splits.calib.x, others=s.others,
        on_candidate=lambda c, w: s.reporter.candidate("prune", c.episode, c, evaluator.state.best, w),
    )
    if measured:
        _check_reach(s, evaluator, region, steps)
    _, env = stage_env(s, lambda: PruneEnv(steps, evaluator, region=region, lower_bound=cfg.lower_bound,
                                           channel_multiple=s.target.channel_multiple), evaluator)
    runner = StageRunner("prune", env, len(steps), s.agent_cfg(cfg.warmup_episodes), s.run_dir / "ckpt")
    done = runner.load_progress().episodes if s.resume else 0  # episodes played before an interruption
    if s.resume:  # candidates measured before the interruption; the agent resumes after its last checkpoint
        evaluator.restore(s.log.read())
        evaluator.episode = done
    s.reporter.stage("prune", cfg.prune_episodes, done)
    fresh = not (s.resume and runner.has_checkpoint())  # a resumed stage played its seeds before
    seeds = stage1_seeds(s, region, groups) if fresh and measured and np.isfinite(region.limit) else {}
    if seeds:
        s.reporter.message(f"stage 1 starts from the {' and '.join(seeds)} solution(s) on the predicted region")
    t0 = time.monotonic()
    runner.run(cfg.prune_episodes, deadline=s.episodes_deadline("prune", done), resume=s.resume,
               seeds=[seed_actions(k, cfg.lower_bound) for k in seeds.values()])
    s.reporter.stage("prune", cfg.prune_episodes, runner.load_progress().episodes)
    s.seconds["prune_search"] = time.monotonic() - t0
    best, judged = evaluator.state.best, list[Judged]()
    if measured:
        def file_of(c: Candidate) -> Path:
            path = s.candidate_file(c)
            return path if path.is_file() else evaluator.measured_file(evaluator.build(c.policy), path.with_suffix(""),
                                                                       c.policy.default_precision)

        def project(c: Candidate, ratio: float) -> Candidate | None:
            keep = evaluator.keep_vector(c.policy)
            goal = region.predict(keep) * s.budget.aim / ratio * PROJECT_AIM
            new = region.project(keep, goal)
            policy = CompressionPolicy(keep={st.name: float(k) for st, k in zip(steps, new, strict=True) if k < 1.0})
            s.reporter.message(f"stage 1: projecting the best candidate onto the predicted region at {goal:.3f} ms")
            got = evaluator(policy).info["candidate"]
            return None if got.error else got

        def predict(c: Candidate) -> float:
            return region.predict_at(evaluator.keep_vector(c.policy), c.policy.default_precision)

        best, judged = s.pick("stage 1", list(evaluator.state.seen.values()), file_of, project, predict=predict)
    within_rate = region.within(0.10) if measured else (0, 0)
    return Stage1Report(
        policy=best.policy if best else CompressionPolicy(), best=best,
        within=any(j.verdict.confirmed for j in judged) if measured else evaluator.state.best_within,
        precision=best.policy.default_precision if best else "fp32", planned=tuple(region.precisions),
        precision_ratios=ratios, region=kind, candidates=evaluator.state.evaluated,
        failures=evaluator.state.failures, predictions_within_10pct=within_rate, table=table_info, judged=tuple(judged),
    )


# --------------------------------------------------------------------------- stage 2
class MixPredictor:
    """A mixed-precision policy's latency: ``alpha + beta * table sum`` at the pruned model's channel
    counts (each layer at its precision, plus the boundaries the mix implies), fitted on measured
    policies; without a table, each layer's fp32 time times its precision's measured ratio."""

    def __init__(self, modules: Sequence[str], *, table: LatencyTable | None = None,
                 templates: Sequence[LayerTemplate] = (), counts: dict[int, int] | None = None,
                 layer_ms: Sequence[float] = (), speed: dict[str, float] | None = None) -> None:
        self.modules = list(modules)
        self.table, self.templates, self.counts = table, list(templates), dict(counts or {})
        self.layer_ms, self.speed = list(layer_ms), dict(speed or {})
        self.alpha, self.beta = 0.0, 1.0
        self.kind = "table" if table is not None else "ratios"

    def feature(self, choice: Sequence[str]) -> float:
        if self.table is None:
            return float(sum(t * self.speed.get(p, 1.0) for t, p in zip(self.layer_ms, choice, strict=True)))
        prec = {m: p for m, p in zip(self.modules, choice, strict=True) if m}
        return self.table.total_ms(self.templates, self.counts, prec)

    def __call__(self, choice: list[str]) -> float:
        return self.alpha + self.beta * self.feature(choice)

    def fit(self, points: Sequence[tuple[Sequence[str], float]]) -> None:
        from hwcompress.latency.predictor import theil_sen

        if self.table is None or not points:
            return
        x = np.array([self.feature(c) for c, _ in points])
        y = np.array([ms for _, ms in points])
        alpha, beta = theil_sen(x, y) if len(x) >= 2 and np.ptp(x) > 1e-12 else (0.0, float(y[0] / max(x[0], 1e-12)))
        self.alpha, self.beta = (alpha, beta) if beta > 0 else (0.0, float(np.median(y / np.maximum(x, 1e-12))))


def _mix_predictor(s: Search, qlayers: Sequence[Any], keep: dict[str, float], layer_ms: list[float],
                   speed: dict[str, float]) -> MixPredictor:
    modules = [q.module for q in qlayers]
    if not has_table(s.target):
        return MixPredictor(modules, layer_ms=layer_ms, speed=speed)
    from hwcompress.latency.graph import extract_templates
    from hwcompress.latency.table import build_table
    from hwcompress.prune import keep_count, layer_table, prunable_groups

    groups = prunable_groups(s.base.model, s.shape)
    rows = layer_table(s.base.model, s.shape)
    templates = extract_templates(s.base_onnx, {r.name: r.group for r in rows})
    counts = {g.index: keep_count(g.channels, keep.get(g.name, 1.0), s.target.channel_multiple) for g in groups}
    precs = tuple(p for p in s.target.precisions if p == "fp32" or p in speed)
    table = build_table(templates, {g: [c] for g, c in counts.items()}, s.target, cache=s.cache, precisions=precs,
                        workdir=s.run_dir)
    s.reporter.message(f"latency table at the pruned counts: {len(table)} entries ({table.measured} measured) in "
                       f"{table.seconds:.1f} s")
    return MixPredictor(modules, table=table, templates=templates, counts=counts)


def run_stage2(s: Search, model: nn.Module, keep: dict[str, float], precision: str,
               settled: Verdict | None = None) -> Stage2Report:
    """Stage 2 on the fine-tuned stage-1 winner ``model``; ``settled``: the judge's verdict on that
    winner at ``precision`` in stage 1 (its uniform policy here is the same model: the fallback)."""
    from hwcompress.export import export_onnx
    from hwcompress.macs import layer_macs
    from hwcompress.profiling.adapters import backend_for
    from hwcompress.profiling.measure import measure
    from hwcompress.prune import layer_table
    from hwcompress.quantize import quantizable_layers

    cfg = s.cfg
    setup_t0 = time.monotonic()
    fp32 = export_onnx(model, s.shape, s.run_dir / "stage2-fp32.onnx")
    fp32_file = backend_for(s.target).device_file(model, s.shape, s.run_dir / "stage2-fp32", s.target, fp32_onnx=fp32)
    ref = measure(fp32_file, s.target, cache=s.cache, per_node=s.per_node)
    table = {la.name: la for la in layer_table(model, s.shape, strict=False)}
    qlayers = quantizable_layers(fp32, model)
    macs = layer_macs(model, s.shape)
    times = layer_times_ms(list(table.values()), ref, fp32)
    ms_of = dict(zip(table, times, strict=True))
    total = max(float(times.sum()), 1e-9)
    steps = []
    for q in qlayers:
        la = table.get(q.module)
        steps.append(StepLayer(
            name=q.name, kind=step_kind(la) if la else "conv", in_channels=la.in_channels if la else 0,
            out_channels=la.out_channels if la else 0, kernel=la.kernel[0] if la and la.kernel else 1,
            stride=la.stride[0] if la and la.stride else 1, macs=macs.get(q.module, 0), params=q.params,
            latency_share=float(ms_of.get(q.module, 0.0)) / total,
        ))
    measured = cfg.quant_cost == "measured"
    evaluator = QuantEvaluator(
        s.ctx, fp32, model=model, cost=cfg.quant_cost, budget_ms=s.budget.aim_ms,
        latency_ref=s.reader.read(fp32_file).latency.median_ms,
        layer_macs={q.name: macs.get(q.module, 0) for q in qlayers}, speed_weight=cfg.speed_weight,
        base_keep=keep, calib_x=s.splits.calib.x,
        on_candidate=lambda c, w: s.reporter.candidate("quant", c.episode, c, evaluator.state.best, w),
    )
    if s.resume:
        evaluator.restore(s.log.read())
    speed: dict[str, float] = {}
    predictor: MixPredictor | None = None
    if measured:  # the action axis ordered by measured speed; HAQ's wall on the predicted mix
        at_prec = precision_verdicts(s, model, fp32, fp32_file, "stage2")
        speed = ratios_of(at_prec)
        s.reporter.message(f"pruned model per precision, judged beside fp32: {describe_precisions(at_prec, planned=False)}")
        predictor = _mix_predictor(s, qlayers, keep, [float(ms_of.get(q.module, 0.0)) for q in qlayers], speed)
    env, stepped = stage_env(s, lambda: QuantEnv(steps, evaluator, precisions=s.target.precisions, base_keep=keep,
                                                 speed=speed or None, predict=predictor,
                                                 budget_ms=s.budget.aim_ms if cfg.wall else None), evaluator)
    warm = min(cfg.warmup_episodes, max(cfg.quant_episodes // 3, 1))
    runner = StageRunner("quant", stepped, len(steps), s.agent_cfg(warm), s.run_dir / "ckpt")
    done = runner.load_progress().episodes if s.resume else 0  # episodes played before an interruption
    s.reporter.stage("quant", cfg.quant_episodes, done)
    if measured:
        # The plain choices first, as ordinary candidates (episode 0): all fp32, and all at each precision
        # measured faster than fp32 (stage 1's precision among them); the mix predictor is fitted on them.
        seeds = [p for p in s.target.precisions if p in ("fp32", precision) or speed.get(p, 2.0) < 1.0]
        points = []
        for prec in seeds:
            evaluator.episode = -1
            cand = evaluator(CompressionPolicy(keep=keep, precision={st.name: prec for st in steps})).info["candidate"]
            if cand.measurement is not None and not cand.error:
                points.append(([prec] * len(steps), cand.measurement.latency.median_ms))
        evaluator.episode = 0
        assert predictor is not None
        predictor.fit(points)
    if s.resume:
        evaluator.episode = done
    s.work_done("quant setup", time.monotonic() - setup_t0)
    t0 = time.monotonic()
    runner.run(cfg.quant_episodes, deadline=s.episodes_deadline("quant", done), resume=s.resume)
    s.reporter.stage("quant", cfg.quant_episodes, runner.load_progress().episodes)
    s.seconds["quant_search"] = time.monotonic() - t0
    best, judged = evaluator.state.best, list[Judged]()
    if measured:
        def file_of(c: Candidate) -> Path:
            path = s.candidate_file(c)
            return path if path.is_file() else precision_file(s, model, fp32, c.policy, path.with_suffix(""))

        cands = list(evaluator.state.seen.values())
        plain = next((c for c in cands if not c.error and c.measurement is not None
                      and set(c.policy.precision.values()) == {precision}), None)

        def choice_of(c: Candidate) -> list[str]:
            return [c.policy.precision.get(st.name, "fp32") for st in steps]

        def predict_mix(c: Candidate) -> float:
            assert predictor is not None
            return predictor(choice_of(c))

        def project(c: Candidate, ratio: float) -> Candidate | None:
            """``c`` with the fewest layers moved to the fastest precision (the action wall) that the mix
            predictor, corrected by the ratio the judge measured (or the estimate), puts within the aim; its
            other layers kept."""
            goal = predict_mix(c) * s.budget.aim / ratio * PROJECT_AIM
            assert predictor is not None
            choice, moved = mix_wall(choice_of(c), predictor, goal, env.fastest)
            if not moved:
                return None
            s.reporter.message(f"stage 2: projecting a mix over the aim onto the predicted region at {goal:.3f} ms "
                               f"({moved} layer(s) to {env.fastest})")
            got = evaluator(CompressionPolicy(keep=keep, precision={st.name: p for st, p in zip(steps, choice,
                                                                                               strict=True)}))
            cand = got.info["candidate"]
            return None if cand.error else cand

        best, judged = s.pick("stage 2", cands, file_of, project,
                              settled=(plain, settled) if plain is not None and settled is not None else None,
                              predict=predict_mix)
    return Stage2Report(
        policy=best.policy if best else CompressionPolicy(keep=keep), best=best,
        within=any(j.verdict.confirmed for j in judged) if measured else evaluator.state.best_within,
        fp32_ms=ref.latency.median_ms, precision_ratios=speed, action_order=tuple(env.precisions),
        predictor=predictor.kind if predictor else "", candidates=evaluator.state.evaluated,
        failures=evaluator.state.failures, judged=tuple(judged),
    )
