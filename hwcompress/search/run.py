"""The whole search: baseline -> stage 1 (prune) -> fine-tune -> stage 2 (precision) -> artifact.

Everything lives in a run directory:

    RUN_DIR/config.json        the search's settings (a resumed search reads them back)
    RUN_DIR/search.jsonl       every candidate, as it happens
    RUN_DIR/ckpt/              agent, replay buffer, random state and counters per stage
    RUN_DIR/baseline.onnx      the unpruned model as exported
    RUN_DIR/stage1.json        best pruning policy (written when stage 1 ends)
    RUN_DIR/finetuned.pt       the fine-tuned pruned model (written when fine-tuning ends)
    RUN_DIR/stage2.json        best precision policy
    RUN_DIR/candidates/        ONNX files of the candidates
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from hwcompress.errors import BudgetError, HwcompressError, ProfilerError, RemoteError, UsageError
from hwcompress.fsutil import atomic_write_text
from hwcompress.records import Candidate, CompressionPolicy, Manifest, Measurement
from hwcompress.search.agents import AGENTS, AgentConfig
from hwcompress.search.budget import parse_budget
from hwcompress.search.envs import PruneEnv, QuantEnv, StepLayer
from hwcompress.search.evaluator import EvalContext, PruneEvaluator, QuantEvaluator, SearchLog
from hwcompress.search.latency_model import LatencyModel, LayerCostModel
from hwcompress.search.stage import StageRunner

if TYPE_CHECKING:
    from torch import nn

    from hwcompress.data import DataSplits
    from hwcompress.profiling.cache import MeasurementCache
    from hwcompress.prune import PruneGroup
    from hwcompress.records import LayerInfo, Target

log = logging.getLogger(__name__)

STAGES = ("prune", "quant")
COSTS_PRUNE = ("measured", "flops")
COSTS_QUANT = ("measured", "bitops")


@dataclass(frozen=True)
class SearchConfig:
    """Settings of one search (saved to ``RUN_DIR/config.json``)."""

    model: str = "vgg-small"
    checkpoint: str | None = None
    data: str | None = None
    target: str = "x86-cpu"
    connection: dict[str, Any] = field(default_factory=dict)
    latency_budget: str = "0.5x"
    size_budget: str | None = None
    memory_budget: str | None = None
    stages: tuple[str, ...] = STAGES
    prune_episodes: int = 60
    quant_episodes: int = 30
    time_budget_s: float | None = None
    agent: str = "ddpg"
    warmup_episodes: int = 10
    seed: int = 0
    score: str = "accuracy"
    prune_cost: str = "measured"
    quant_cost: str = "measured"
    finetune_epochs: int = 1
    val_limit: int = 2000
    test_limit: int | None = None
    lower_bound: float = 0.2
    speed_weight: float = 0.05
    penalty: float = 2.0
    wall: bool = True
    guard: float = 0.02  # candidates must meet the latency budget with this relative margin
    out: str = "out/search"
    force: bool = False

    def validate(self) -> None:
        bad = [s for s in self.stages if s not in STAGES]
        if bad or not self.stages:
            raise UsageError(f"--stages {','.join(self.stages)}: choose prune, quant or prune,quant")
        if self.agent not in AGENTS:
            raise UsageError(f"--agent {self.agent}: choose one of {', '.join(AGENTS)}")
        if self.prune_cost not in COSTS_PRUNE:
            raise UsageError(f"--cost {self.prune_cost}: stage 1 cost is measured or flops")
        if self.quant_cost not in COSTS_QUANT:
            raise UsageError(f"--cost {self.quant_cost}: stage 2 cost is measured or bitops")
        if self.score not in ("accuracy", "label-free"):
            raise UsageError(f"--reward {self.score}: choose accuracy or label-free")
        if self.prune_episodes < 1 or self.quant_episodes < 1:
            raise UsageError("--episodes must be at least 1")
        if not 0.05 <= self.lower_bound <= 1.0:
            raise UsageError("--lower-bound must be in [0.05, 1]")
        if not 0.0 <= self.guard < 0.5:
            raise UsageError("--guard must be in [0, 0.5)")
        if self.finetune_epochs < 0:
            raise UsageError("--finetune-epochs must be >= 0")
        parse_budget(self.latency_budget, "--latency-budget")
        if self.size_budget:
            parse_budget(self.size_budget, "--size-budget", unit="b")
        if self.memory_budget:
            parse_budget(self.memory_budget, "--memory-budget", unit="b")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stages"] = list(self.stages)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchConfig:
        d = dict(d)
        d["stages"] = tuple(d.get("stages", STAGES))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"search config: unknown key(s) {', '.join(unknown)} (written by another hwcompress "
                             f"version?); known keys are {', '.join(sorted(known))}")
        return cls(**d)


class Reporter(Protocol):
    """What a front end (the CLI's progress bars) is told; the library never prints."""

    def stage(self, name: str, total: int, done: int) -> None: ...

    def candidate(self, stage: str, episode: int, cand: Candidate, best: Candidate | None, within: bool) -> None: ...

    def message(self, text: str) -> None: ...


class NullReporter:
    def stage(self, name: str, total: int, done: int) -> None:
        log.info("stage %s: %d/%d episodes", name, done, total)

    def candidate(self, stage: str, episode: int, cand: Candidate, best: Candidate | None, within: bool) -> None:
        pass

    def message(self, text: str) -> None:
        log.info("%s", text)


@dataclass(frozen=True)
class SearchResult:
    run_dir: Path
    artifact: Path | None
    manifest: Manifest | None
    baseline_ms: float
    budget_ms: float
    prune_best: Candidate | None
    quant_best: Candidate | None
    latency_model_within: tuple[int, int]
    seconds: dict[str, float]
    candidates: int
    verdict: dict[str, Any] = field(default_factory=dict)  # the final winner judged on fresh profiles (_verify)
    final: dict[str, Any] = field(default_factory=dict)  # the artifact judged against every budget (_accept)

    @property
    def budget_met(self) -> bool:
        return bool(self.final.get("met", True))


# How much of a precision's measured speed-up on the baseline stage 1 may count on.
STAGE1_MARGIN = 0.85
PRECISION_ROUNDS = 3  # side-by-side rounds when measuring a precision's speed-up
BASELINE_ROUNDS = 3  # fresh profiles of the baseline; the fastest round's median sets the budget
BASELINE_RECHECK_GAP = 0.005  # a baseline re-profiled this much faster after stage 1's episodes re-resolves the budget
REPAIR_STEPS = 5  # bisection steps when a stage-1 winner is brought within its budget
GROW_STEPS = 4  # bisection steps when a stage-1 winner grows into budget it left unused
GROW_MIN_GAP = 0.03  # a winner this far (relative) under what it may reach grows
# Where a precision's speed-up is credited, the grown fp32 model is held to this fraction of what the
# credited precision's measured ratio on the winner allows: stage 2 keeps room for layers that stay fp32.
GROW_CREDIT_MARGIN = 0.92
VERIFY_ROUNDS = 3  # fresh profiles of a stage's winner and of the baseline, alternating; fastest over fastest judges it
VERIFY_RETRIES = 2  # tighter fits tried after a winner is judged over its budget
STAGE2_REFITS = 2  # times stage 1 prunes further when stage 2's winner is judged over the budget
REFIT_MARGIN = 0.97  # such a refit aims this far under the fp32 latency the shortfall implies
SETTLE_GAP = 0.05  # a stage-1 winner judged this far (relative) under its need grows back towards it, judged
SETTLE_STEPS = 3  # judged steps of that growth
SETTLE_AIM = 0.975  # each step aims this far under the need (verdicts of one model scatter by a few percent)
SETTLE_CLOSE = 0.03  # a fit judged this close under the need ends the growth
REACH_MARGIN = 1.10  # a budget is out of reach when the floor's best prediction is this far over it
FINAL_ROUNDS = 4  # the final verdict's fewest pairs of profiles (result, baseline)
FINAL_ROUNDS_MAX = 10  # ... and most, while the interval still straddles the limit


def _ms(cand: Candidate) -> float:
    """A candidate's measured median latency (inf when it has none)."""
    if cand.error or cand.measurement is None:
        return float("inf")
    return cand.measurement.latency.median_ms


def _meets(cand: Candidate, budget_ms: float) -> bool:
    return _ms(cand) <= budget_ms


def _over(value: float, budget: float) -> str:
    """How far ``value`` is over ``budget``: ``22%`` or ``41x``."""
    r = value / budget if budget > 0 else float("inf")
    return f"{(r - 1) * 100:.0f}%" if r < 3 else f"{r:.0f}x"


@dataclass(frozen=True)
class Stage1Budget:
    final_ms: float  # the search's latency budget, which the result must meet
    latency_ms: float  # what stage 1 holds the fp32 model to
    size_bytes: float | None
    precision_ratios: dict[str, float]
    credited: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- helpers
def _kind(info: LayerInfo) -> str:
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
                kind=_kind(lead) if lead else "conv",
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


# --------------------------------------------------------------------------- the search
class Search:
    """One search in ``run_dir``; ``run()`` does every stage not finished yet."""

    def __init__(self, cfg: SearchConfig, run_dir: Path, *, reporter: Reporter | None = None, resume: bool = False,
                 cache_path: Path | None = None, command: str = "") -> None:
        cfg.validate()
        self.cfg = cfg
        self.run_dir = run_dir
        self.reporter: Reporter = reporter or NullReporter()
        self.resume = resume
        self.cache_path = cache_path
        self.command = command
        self.seconds: dict[str, float] = {}
        self.trust_new_host = False
        self.allow_over_budget = False  # write an artifact whose result is over its budget (exit 3 all the same)
        self.final_verdict: dict[str, Any] = {}  # _accept's verdict on every budget
        self.quiet_libraries = False  # third-party warnings and native stderr to RUN_DIR/libraries.log
        self._exits = contextlib.ExitStack()
        self.latency_within: tuple[int, int] = (0, 0)
        self.verdict: dict[str, Any] = {}  # the last stage's winner judged on fresh profiles (_verify)
        self.stage2_verdict: dict[str, Any] = {}
        self.refits = 0  # times stage 1 was refitted after stage 2's winner was judged over the budget (_refit)

    @classmethod
    def resume_from(cls, run_dir: Path, **kwargs: Any) -> Search:
        cfg_file = run_dir / "config.json"
        if not cfg_file.is_file():
            raise UsageError(f"--resume {run_dir}: no config.json there; is it a search's run directory?")
        try:
            cfg = SearchConfig.from_dict(json.loads(cfg_file.read_text()))
        except (ValueError, TypeError) as exc:
            raise UsageError(f"--resume {run_dir}: config.json cannot be read ({exc})") from None
        except UsageError as exc:
            raise UsageError(f"--resume {run_dir}: {exc}") from None
        return cls(cfg, run_dir, resume=True, **kwargs)

    # ------------------------------------------------------------------ setup
    def _prepare(self) -> None:
        import torch

        from hwcompress.data import load_splits
        from hwcompress.export import export_onnx
        from hwcompress.macs import count_macs
        from hwcompress.profiling.cache import MeasurementCache
        from hwcompress.targets import load_target
        from hwcompress.zoo.train import build_for, ensure_baseline

        cfg = self.cfg
        # Everything checkable is checked before the slow work (training, conversion, measuring).
        from hwcompress import preflight

        if self.resume:
            preflight.writable_folder(Path(cfg.out), "--out")
        else:
            preflight.artifact_destination(Path(cfg.out), cfg.force)
        preflight.writable_folder(self.run_dir, "--run-dir")
        self.target: Target = load_target(cfg.target, **cfg.connection)
        preflight.target_ready(self.target, trust_new_host=self.trust_new_host)
        self.splits: DataSplits = load_splits(cfg.data, seed=cfg.seed)
        net = build_for(cfg.model, self.splits)
        if cfg.checkpoint:  # it must load into the architecture (the baseline loads it again below)
            from hwcompress.zoo.user import load_state_dict

            load_state_dict(net, cfg.checkpoint)
        preflight.labels_fit_model(self.splits, net, cfg.model)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.resume:
            atomic_write_text(self.run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))
        if self.quiet_libraries:
            from hwcompress.runlog import library_output_to

            self._exits.enter_context(library_output_to(self.run_dir / "libraries.log"))
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        if self.target.connection.kind == "ssh":
            from hwcompress.profiling.remote import runner_for

            runner_for(self.target, trust_new_host=self.trust_new_host)  # one pooled connection for the search
        self.base = ensure_baseline(cfg.model, self.splits, checkpoint=cfg.checkpoint)
        self.base.model.eval()
        self.shape = (1, *self.splits.input_shape)
        self.cache = MeasurementCache(self.cache_path)
        self.workdir = self.run_dir / "candidates"
        self.workdir.mkdir(exist_ok=True)
        self.log = SearchLog(self.run_dir / "search.jsonl")
        self.base_onnx = export_onnx(self.base.model, self.shape, self.run_dir / "baseline.onnx")
        self.base_file = self.base_onnx
        if self.target.runtime == "tflite":
            from hwcompress.search.evaluator import device_file

            self.base_file = device_file(self.base.model, self.shape, self.run_dir / "baseline", self.target)
        self.reporter.message(f"measuring the baseline on {self.target.name}")
        self.per_node = self.target.runtime == "onnxruntime"  # per-node times give each layer's latency share
        self._set_baseline(self._baseline_measurement(), save=False)
        self.base_macs, self.base_params = count_macs(self.base.model, self.shape)
        base_bytes = self.base_file.stat().st_size
        self.ctx = EvalContext(
            target=self.target, input_shape=self.shape, splits=self.splits, cache=self.cache, workdir=self.workdir,
            log=self.log, score_mode=cfg.score, val_limit=cfg.val_limit, penalty=cfg.penalty,
            size_budget=parse_budget(cfg.size_budget, "--size-budget", unit="b").resolve(base_bytes) if cfg.size_budget else None,
            memory_budget=parse_budget(cfg.memory_budget, "--memory-budget", unit="b").resolve(
                self.base_measurement.peak_memory_bytes) if cfg.memory_budget else None,
        )
        self.deadline = time.monotonic() + cfg.time_budget_s if cfg.time_budget_s else None
        self.reporter.message(
            f"baseline {self.base_ms:.3f} ms (spread {self.base_measurement.latency.robust_cv * 100:.1f}%), "
            f"accuracy {self.base.test_accuracy * 100:.2f}%; latency budget {self.budget_ms:.3f} ms"
        )

    def _set_baseline(self, m: Measurement, *, save: bool = True) -> None:
        """Take ``m`` as the baseline measurement; the latency budgets are resolved against it."""
        self.base_measurement = m
        self.base_ms = m.latency.median_ms
        self.budget_ms = parse_budget(self.cfg.latency_budget, "--latency-budget").resolve(self.base_ms)
        # Candidates are held to a budget a guard band below the user's, so that the result still meets
        # it when the artifact is measured again (run-to-run spread of a median is 1-3 % here).
        self.inner_ms = self.budget_ms * (1.0 - self.cfg.guard)
        if save:
            atomic_write_text(self.run_dir / "baseline.json", json.dumps(m.to_dict(), indent=2))

    def _recheck_baseline(self) -> dict[str, Any]:
        """Profile the baseline again after stage 1's episodes; a faster quiet state re-resolves the budget.

        The 3 rounds at the start of a search are seconds apart, and a slow spell of a shared machine
        can outlast them (seen here: MobileNetV2-small at 0.502 ms in all three, 0.353 ms six minutes
        later, the 0.3x budget 42 % too loose; the speed-ups of lower precisions measured in the same
        spell were off as well).  Minutes later the baseline is profiled ``BASELINE_ROUNDS`` times more;
        if it is now more than ``BASELINE_RECHECK_GAP`` faster, that measurement becomes the baseline
        (``baseline.json``), the budgets are resolved again, and the caller re-measures the stage-1
        budget's precision credit and re-picks the winner under it before repair, growth and verdict.
        """
        fastest, rounds = self._fastest(self.base_file, BASELINE_ROUNDS, cache=self.cache, per_node=self.per_node)
        info: dict[str, Any] = {"was_ms": self.base_ms, "rounds_ms": rounds, "updated": False}
        if fastest.latency.median_ms >= self.base_ms * (1.0 - BASELINE_RECHECK_GAP):
            return info
        was_budget = self.budget_ms
        self._set_baseline(fastest)
        info.update(updated=True, now_ms=self.base_ms, budget_was_ms=was_budget, budget_ms=self.budget_ms)
        self.reporter.message(
            f"baseline profiled again after stage 1's episodes: {self.base_ms:.3f} ms, faster than the "
            f"{info['was_ms']:.3f} ms at the start (a slow spell then); latency budget now {self.budget_ms:.3f} ms"
        )
        return info

    def _fastest(
        self, path: Path, rounds: int, *, cache: MeasurementCache | None = None, per_node: bool = False,
        cached_first: bool = False,
    ) -> tuple[Measurement, list[float]]:
        """``path`` profiled ``rounds`` times, fresh (the first may come from ``cache`` if ``cached_first``).

        Returns the fastest round's measurement — the quiet state, see :meth:`_judge` — and every
        round's median (ms).
        """
        from hwcompress.profiling.measure import measure

        ms = [measure(path, self.target, cache=cache, per_node=per_node, force=not (cached_first and r == 0))
              for r in range(rounds)]
        return min(ms, key=lambda m: m.latency.median_ms), [m.latency.median_ms for m in ms]

    def _baseline_measurement(self) -> Measurement:
        """The baseline's measurement that a relative budget (``0.5x``) is resolved against.

        One profile can land in a slow spell of a shared machine (seen here: MobileNetV2-small at
        0.507 ms for one search, 0.353 ms minutes before and after), and a budget resolved against
        it would be 44 % too loose.  The baseline is profiled ``BASELINE_ROUNDS`` times and the
        fastest round's median is taken — the machine's quiet state, as the artifact's own check
        and ``bench_compare`` judge it.  The choice is kept in ``baseline.json`` so that a resumed
        search holds the same budget.
        """
        saved = self.run_dir / "baseline.json"
        if self.resume and saved.is_file():
            return Measurement.from_dict(json.loads(saved.read_text()))
        best, rounds = self._fastest(self.base_file, BASELINE_ROUNDS, cache=self.cache, per_node=self.per_node,
                                     cached_first=True)
        log.info("baseline medians per round: %s ms", ", ".join(f"{ms:.3f}" for ms in rounds))
        atomic_write_text(saved, json.dumps(best.to_dict(), indent=2))
        return best

    def _agent_cfg(self, warmup: int) -> AgentConfig:
        return AgentConfig(name=self.cfg.agent, warmup_episodes=warmup, seed=self.cfg.seed)

    # ------------------------------------------------------------------ stage 1
    def _stage1(self) -> tuple[CompressionPolicy, Candidate | None]:
        cfg = self.cfg
        out_file = self.run_dir / "stage1.json"
        if out_file.exists():
            data = json.loads(out_file.read_text())
            best = Candidate.from_dict(data["best"]) if data.get("best") else None
            hit, n = data.get("latency_model_within", (0, 0))
            self.latency_within = (int(hit), int(n))
            self.verdict = data.get("verify") or {}
            self.refits = len(data.get("stage2_refits", []))
            return CompressionPolicy.from_dict(data["policy"]), best
        budget1 = self._stage1_budget()
        groups, lat_model, evaluator, env = self._stage1_tools(budget1)
        self._check_reach(groups, budget1)
        if self.resume:
            evaluator.restore(self.log.read())
        runner = StageRunner("prune", env, len(groups), self._agent_cfg(cfg.warmup_episodes), self.run_dir / "ckpt")
        if self.resume:  # the agent resumes after its last checkpointed episode; number candidates from there
            evaluator.episode = runner.load_progress().episodes
        self.reporter.stage("prune", cfg.prune_episodes, runner.load_progress().episodes if self.resume else 0)
        t0 = time.monotonic()
        runner.run(cfg.prune_episodes, deadline=self.deadline, resume=self.resume)
        self.reporter.stage("prune", cfg.prune_episodes, runner.load_progress().episodes)
        self.seconds["prune_search"] = time.monotonic() - t0
        best = evaluator.state.best
        best_within = evaluator.state.best_within
        recheck: dict[str, Any] = {}
        if cfg.prune_cost == "measured":
            recheck = self._recheck_baseline()
        if recheck.get("updated"):  # tighter budgets: the credit re-measured, the winner re-picked under them
            budget1 = self._stage1_budget()
            evaluator.budget_ms = budget1.latency_ms
            if env.budget_ms is not None:
                env.budget_ms = budget1.latency_ms
            best = self._rescored_best(list(evaluator.state.seen.values()), budget1.latency_ms) or best
            best_within = best is not None and _meets(best, budget1.latency_ms)
        credit: dict[str, Any] = {}
        if best is not None and budget1.credited:
            best, credit = self._check_credit(best, budget1, list(evaluator.state.seen.values()))
            best_within = best_within or bool(credit.get("fallback"))
        # The fp32 latency the winner must reach by pruning alone: the stage-1 budget, or, where the
        # credited precision was found not to pay off on the winner and no candidate fits, the real one.
        need = None
        if not budget1.credited:
            need = budget1.latency_ms
        elif credit.get("holds") is False and not credit.get("fallback"):
            need = self.inner_ms
        repair: dict[str, Any] = {}
        if cfg.prune_cost == "measured" and best is not None and need is not None and not _meets(best, need):
            best, repair = self._repair(env, evaluator, best, need)
            best_within = best_within or bool(repair.get("met"))
        grow: dict[str, Any] = {}
        if cfg.prune_cost == "measured" and best is not None and not repair and _meets(best, float("inf")):
            best, grow = self._grow(env, evaluator, best, budget1, credit, need)
        # What the fp32 winner must meet by itself, judged on fresh profiles: the stage-1 need, or the
        # search's inner budget where the credited precision failed and a candidate within it took over.
        verify_need = need if need is not None else (self.inner_ms if credit.get("fallback") else None)
        verify: dict[str, Any] = {}
        if cfg.prune_cost == "measured" and best is not None and verify_need is not None and _meets(best, verify_need):
            best, verify = self._verify_pruned("stage 1", env, evaluator, best, verify_need)
            best_within = best_within or bool(verify.get("met"))
            self.verdict = verify
        policy = best.policy if best else CompressionPolicy()
        self.latency_within = lat_model.within(0.10)
        atomic_write_text(out_file, json.dumps({
            "policy": policy.to_dict(), "best": best.to_dict() if best else None,
            "within_budget": best_within, "candidates": evaluator.state.evaluated,
            "failures": evaluator.state.failures, "latency_model_within": list(self.latency_within),
            "latency_model_errors": lat_model.errors, "stage1_budget": budget1.to_dict(),
            "credit_check": credit, "repair": repair, "grow": grow, "verify": verify, "baseline_recheck": recheck,
        }, indent=2))
        return policy, best

    def _check_reach(self, groups: list[PruneGroup], budget1: Stage1Budget) -> None:
        """Refuse (exit 3) before stage 1's episodes when even the most pruned model cannot meet the budgets.

        The floor (every group at ``lower_bound``) is exported and profiled twice; its fastest reading
        times the best precision speed-up measured on the baseline is the fastest result the search
        can reach.  Over the latency budget by more than ``REACH_MARGIN`` (the baseline's precision
        ratio carries over to the floor only roughly) — or its file over the size budget at the smallest
        precision the target offers — the search would only spend hours to miss; with
        ``allow_over_budget`` it goes on and says so.
        """
        from hwcompress.search.evaluator import device_file

        floor = CompressionPolicy(keep={g.name: self.cfg.lower_bound for g in groups})
        path = device_file(self._pruned(floor), self.shape, self.workdir / f"floor-{floor.digest()}", self.target)
        fastest, _ = self._fastest(path, 2, cache=self.cache, cached_first=True)
        ratios = [r for r in budget1.precision_ratios.values() if r < 1.0]
        best_ratio = min(ratios, default=1.0)
        reach_ms = fastest.latency.median_ms * best_ratio
        misses: list[str] = []
        hint = ""
        if reach_ms > self.budget_ms * REACH_MARGIN:
            at = f", {reach_ms:.3f} ms at its fastest measured precision" if best_ratio < 1.0 else ""
            misses.append(
                f"--latency-budget {self.cfg.latency_budget} ({self.budget_ms:.3f} ms) is out of reach on {self.target.name}: "
                f"the most pruned model the search can make (keep {self.cfg.lower_bound:g} in every layer) measures "
                f"{fastest.latency.median_ms:.3f} ms{at}, {_over(reach_ms, self.budget_ms)} over the budget"
            )
            hint = f"give --latency-budget {reach_ms / self.base_ms * 1.05:.2f}x or more, or a lower --lower-bound"
        if self.ctx.size_budget is not None:
            bits = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}
            smallest = min((bits.get(p, 32) for p in self.target.precisions), default=32) if "quant" in self.cfg.stages else 32
            reach_b = fastest.model_bytes * smallest / 32
            if reach_b > self.ctx.size_budget:
                misses.append(f"--size-budget {self.cfg.size_budget} is out of reach: the most pruned model is "
                              f"{fastest.model_bytes / 1024:.1f} KiB in fp32 (~{reach_b / 1024:.1f} KiB at {smallest} bits), "
                              f"{_over(reach_b, self.ctx.size_budget)} over")
        if not misses:
            return
        if not self.allow_over_budget:
            raise BudgetError("; ".join(misses) + f"; {hint or 'give a larger budget'}, or pass --allow-over-budget "
                              "to search anyway")
        self.reporter.message("; ".join(misses) + " (searching anyway: --allow-over-budget)")

    def _stage1_tools(self, budget1: Stage1Budget) -> tuple[list[PruneGroup], LatencyModel, PruneEvaluator, PruneEnv]:
        """Stage 1's prunable groups, latency model, candidate evaluator and environment, for ``budget1``."""
        from hwcompress.prune import layer_table, prunable_groups

        cfg = self.cfg
        groups = prunable_groups(self.base.model, self.shape)
        table = layer_table(self.base.model, self.shape)
        times = layer_times_ms(table, self.base_measurement, self.base_onnx)
        cmodel = cost_model(groups, table, times)
        lat_model = LatencyModel(cmodel, self.base_ms)
        evaluator = PruneEvaluator(
            self.ctx, self.base.model, cost=cfg.prune_cost, budget_ms=budget1.latency_ms,
            size_budget=budget1.size_bytes,
            budget_macs=self.base_macs * parse_budget(cfg.latency_budget, "--latency-budget").as_ratio(self.base_ms),
            base_macs=self.base_macs, latency_model=lat_model if cfg.prune_cost == "measured" else None,
            group_index={g.name: g.index for g in groups},
            on_candidate=lambda c, w: self.reporter.candidate("prune", evaluator.episode, c, evaluator.state.best, w),
        )
        wall_model = lat_model if cfg.prune_cost == "measured" else None
        env = PruneEnv(
            prune_step_layers(groups, table, times), evaluator, lower_bound=cfg.lower_bound,
            channel_multiple=self.target.channel_multiple, latency_model=wall_model if cfg.wall else None,
            budget_ms=budget1.latency_ms,
        )
        if cfg.prune_cost == "flops" and cfg.wall:  # AMC's wall on the proxy: MACs within the MACs budget
            flops_model = LatencyModel(LayerCostModel(cmodel.layer_names, cmodel.base_macs, cmodel.exponents,
                                                      cmodel.base_macs.astype(float)), float(self.base_macs))
            env.latency_model = flops_model
            env.budget_ms = evaluator.budget_macs
        return groups, lat_model, evaluator, env

    def _verify_pruned(
        self, stage: str, env: PruneEnv, evaluator: PruneEvaluator, cand: Candidate, need_ms: float
    ) -> tuple[Candidate, dict[str, Any]]:
        """:meth:`_verify` of a stage-1 candidate, each retry a :meth:`_repair` to the tighter need
        (never a candidate already judged); each retry in ``refits``."""
        refits: list[dict[str, Any]] = []
        tried: set[str] = set()

        def refit(c: Candidate, ms: float) -> Candidate:
            tried.add(c.policy.digest())
            found, info = self._repair(env, evaluator, c, ms, exclude=tried)
            refits.append(info)
            return found

        found, verify = self._verify(stage, cand, need_ms, refit)
        verify["refits"] = refits
        return self._settle(stage, env, evaluator, found, verify, need_ms)

    def _settle(
        self, stage: str, env: PruneEnv, evaluator: PruneEvaluator, cand: Candidate, verify: dict[str, Any],
        need_ms: float,
    ) -> tuple[Candidate, dict[str, Any]]:
        """Grow a stage-1 winner judged well under ``need_ms`` back towards it, every step judged.

        The verdict's refits aim at the need scaled by how optimistic one reading was, and the
        readings they pick from scatter by several percent, so the winner they leave is often far
        under: seen on ResNet-20, winners judged at 0.79, 0.77 and 0.90 of their needs, the
        capacity between given away, and a finished model 1.4 pt less accurate than uniform
        pruning fitted to the budget.  Readings taken in this search cannot close that gap (they
        are what was wrong); verdicts can.  The winner's keep ratios are moved along the line
        towards the nearest candidate judged *over* the need (unpruned, at the baseline's own
        latency, if none was), and each point is judged beside the baseline (:meth:`_judge`):
        the line's latency is close to linear, so each step aims at ``SETTLE_AIM`` of the need by
        the straight line through the bracket's judged ends.  A point judged within the last
        ``1 - SETTLE_AIM`` under the need is judged a second time and must stay within on both (one
        verdict scatters: seen, one ResNet-20 winner judged 0.3125x then 0.2912x the baseline; a
        point judged before, an end of the line included, keeps its first verdict).  The largest
        point judged within the need (and the size budget, if any) is kept; ``verify`` then
        describes it.
        """
        ms0 = verify.get("ms")
        if not verify.get("met") or ms0 is None or ms0 >= need_ms * (1.0 - SETTLE_GAP):
            return cand, verify
        overs = [t for t in verify.get("tries", []) if t["ms"] > need_ms and t.get("policy") in evaluator.state.seen]
        if overs:
            top = min(overs, key=lambda t: t["ms"])
            end, ms_hi = Search._keep_vector(env, evaluator.state.seen[top["policy"]]), float(top["ms"])
        else:
            end, ms_hi = np.array([env._choices(i)[-1] for i in range(len(env.layers))]), self.base_ms
        at = Search._line(env, evaluator, Search._keep_vector(env, cand), end)
        size = evaluator.size_budget
        info: dict[str, Any] = {"from_ms": ms0, "need_ms": need_ms, "toward_ms": ms_hi, "steps": [], "settled": False,
                                "points": 0}  # points: line candidates evaluated (logged, like a repair's steps)
        lo, hi, ms_lo, last = 0.0, 1.0, float(ms0), verify["tries"][-1]
        # the line rounds to channel multiples, so points repeat, the ends too: a model's first verdict stands
        # (seen: one ResNet-20 winner judged 0.3125x, then 0.2912x; the need was 0.294x)
        known: dict[str, dict[str, Any]] = {t["policy"]: t for t in verify.get("tries", []) if t.get("policy")}

        def judged(point: Candidate) -> dict[str, Any] | None:
            try:
                return self._judge(self._candidate_file(point))
            except HwcompressError as exc:  # cannot judge: stop growing, keep what was judged within
                info["error"] = str(exc)
                return None

        for _ in range(SETTLE_STEPS):
            if ms_lo >= need_ms * (1.0 - SETTLE_CLOSE) or ms_hi <= ms_lo:
                break
            frac = min(max((need_ms * SETTLE_AIM - ms_lo) / (ms_hi - ms_lo), 0.1), 0.9)
            mid = lo + frac * (hi - lo)
            point = at(mid)
            info["points"] += 1
            if point.policy.digest() == cand.policy.digest():  # under one channel multiple from the winner
                lo = mid
                continue
            if not _meets(point, float("inf")) or (size is not None and point.measurement is not None
                                                    and point.measurement.model_bytes > size):
                hi, ms_hi = mid, need_ms * 1.05  # unusable: treated as just over
                continue
            verdict = known.get(point.policy.digest())
            if verdict is None:
                if (verdict := judged(point)) is None:
                    break
                verdict.update(policy=point.policy.digest(), single_ms=_ms(point), scale=mid)
                info["steps"].append(verdict)
                known[verdict["policy"]] = verdict
            if need_ms * SETTLE_AIM < verdict["ms"] <= need_ms and not verdict.get("confirmed"):
                # close under the need: one verdict scatters by a few percent, so a second one must agree
                if (again := judged(point)) is None:
                    break
                verdict.update(confirmed=True, first_ms=verdict["ms"], ms=max(verdict["ms"], again["ms"]),
                               ratio=max(verdict["ratio"], again["ratio"]), again_rounds_ms=again["rounds_ms"],
                               again_base_rounds_ms=again.get("base_rounds_ms"))
            if verdict["ms"] <= need_ms:
                cand, last, lo, ms_lo = point, verdict, mid, float(verdict["ms"])
                info["settled"] = True
            else:
                hi, ms_hi = mid, float(verdict["ms"])
        if info["settled"]:
            verify.update(ratio=last["ratio"], ms=last["ms"], policy=last["policy"])
            self.reporter.message(
                f"{stage}: the winner was judged at {ms0:.3f} ms, well under {need_ms:.3f} ms; a larger model (more "
                f"channels kept) was judged at {last['ms']:.3f} ms, within it, accuracy {cand.accuracy * 100:.1f}% "
                f"({len(info['steps'])} judged steps)"
            )
        verify["settle"] = info
        return cand, verify

    @staticmethod
    def _best_measured(evaluator: PruneEvaluator, need_ms: float, exclude: set[str]) -> Candidate | None:
        """The most accurate stage-1 candidate measured within ``need_ms`` (and the size budget, if any)."""
        size = evaluator.size_budget
        ok = [c for c in evaluator.state.seen.values()
              if c.measurement is not None and not c.error and _meets(c, need_ms)
              and (size is None or c.measurement.model_bytes <= size) and c.policy.digest() not in exclude]
        return max(ok, key=lambda c: c.accuracy, default=None)

    def _rescored_best(self, seen: list[Candidate], budget_ms: float) -> Candidate | None:
        """The stage-1 candidate with the best reward under ``budget_ms`` (the reward's latency term)."""
        from hwcompress.search.reward import Costs, accuracy_within_budget

        measured = [c for c in seen if _meets(c, float("inf"))]
        return max(measured, default=None, key=lambda c: accuracy_within_budget(
            c.accuracy, Costs(latency=_ms(c), latency_budget=budget_ms), penalty=self.ctx.penalty))

    @staticmethod
    def _line(env: PruneEnv, evaluator: PruneEvaluator, start: np.ndarray, end: np.ndarray) -> Callable[[float], Candidate]:
        """Candidates on the line from keep ratios ``start`` (s = 0) to ``end`` (s = 1), on the channel multiple."""
        names = [la.name for la in env.layers]

        def at(s: float) -> Candidate:
            keep = {n: env._round(i, start[i] + s * (end[i] - start[i])) for i, n in enumerate(names)}
            return evaluator(CompressionPolicy(keep={n: k for n, k in keep.items() if k < 1.0})).info["candidate"]

        return at

    @staticmethod
    def _bisect(
        at: Callable[[float], Candidate], found: Candidate, need_ms: float, steps: int, miss: Candidate | None = None,
    ) -> tuple[Candidate, float]:
        """Largest ``s`` in [0, 1) whose candidate measures within ``need_ms``; ``found`` (s = 0) does.

        ``miss`` is the candidate at s = 1 (over ``need_ms``) where known.  Each step tries the point
        where the straight line through the bracket's two measured ends reaches ``need_ms``, kept
        inside the bracket's middle 80 % (latency is close to linear along these lines, so a fit a
        few percent under the winner is found in two or three steps, not the five of halving); the
        midpoint where the far end's latency is unknown.
        """
        lo, hi = 0.0, 1.0
        ms_lo, ms_hi = _ms(found), _ms(miss) if miss is not None else float("inf")
        for _ in range(steps):
            frac = 0.5
            if ms_lo < need_ms < ms_hi < float("inf"):
                frac = min(max((need_ms - ms_lo) / (ms_hi - ms_lo), 0.1), 0.9)
            mid = lo + frac * (hi - lo)
            cand = at(mid)
            if _meets(cand, need_ms):
                found, lo, ms_lo = cand, mid, _ms(cand)
            else:
                hi, ms_hi = mid, _ms(cand)
        return found, lo

    @staticmethod
    def _keep_vector(env: PruneEnv, cand: Candidate) -> np.ndarray:
        return np.array([cand.policy.keep.get(la.name, 1.0) for la in env.layers])

    def _repair(
        self, env: PruneEnv, evaluator: PruneEvaluator, best: Candidate, need_ms: float,
        exclude: set[str] | None = None,
    ) -> tuple[Candidate, dict[str, Any]]:
        """Bring a stage-1 winner that misses ``need_ms`` within it, keeping the agent's per-layer shape.

        Near a tight budget the latency model behind the action wall can be a few percent optimistic
        (small convolutions do not slow down in proportion to their MACs), and every candidate the
        agent tried may sit just over the budget.  The winner's keep ratios are then moved towards
        each group's lower bound by one common fraction (0 = the winner, 1 = every group at its
        floor), bisected on *measured* latency: the smallest move that measures within is taken.
        Every step is an ordinary candidate (logged, cached, scored).

        The line moves every group together, one channel multiple at a time, which on a small
        network is a coarse step, and a reading a few percent over the need turns a point away: seen
        on ResNet-20, a winner 2 % over its need "repaired" to the floor (0.504 -> 0.427 ms), and one
        0.7 % over refitted from 0.831 to 0.708 ms (proxy accuracy 0.548 -> 0.347) while the agent
        had measured a candidate at 0.822 ms with 0.493.  So the result is the better of the line's
        fit and the most accurate candidate already measured within ``need_ms`` (not in ``exclude``).
        """
        found, info = self._repair_line(env, evaluator, best, need_ms)
        pool = self._best_measured(evaluator, need_ms, exclude=(exclude or set()) | {best.policy.digest()})
        if pool is not None and (not info.get("met") or pool.accuracy > found.accuracy):
            info["taken"] = {"from": "measured candidates", "policy": pool.policy.digest(), "ms": _ms(pool),
                             "accuracy": pool.accuracy, "line_accuracy": found.accuracy, "line_ms": _ms(found)}
            info.update(met=True, to_ms=_ms(pool))
            self.reporter.message(
                f"stage 1: a candidate the agent measured fits {need_ms:.3f} ms better than that: {_ms(pool):.3f} ms, "
                f"accuracy {pool.accuracy * 100:.1f}% (the line's fit: {found.accuracy * 100:.1f}%)"
            )
            found = pool
        return found, info

    def _repair_line(
        self, env: PruneEnv, evaluator: PruneEvaluator, best: Candidate, need_ms: float
    ) -> tuple[Candidate, dict[str, Any]]:
        """The fit of :meth:`_repair` along the line from ``best`` to the floor alone."""
        start = Search._keep_vector(env, best)
        floor = np.array([env._choices(i)[0] for i in range(len(env.layers))])
        at = Search._line(env, evaluator, floor, start)  # s = 0: the floor, s = 1: the winner
        from_ms = _ms(best)
        lowest = at(0.0)
        info: dict[str, Any] = {"need_ms": need_ms, "from_ms": from_ms, "steps": 1, "scale": None, "met": False}
        if not _meets(lowest, need_ms) and _meets(lowest, float("inf")):
            # "out of reach" is decided on the floor's quiet state, not on one reading that may be a slow spell's
            # (seen: ResNet-20's floor read 0.367 ms in an episode, a less pruned candidate 0.236 ms)
            lowest = self._requiet(lowest)
            info["floor_ms"] = _ms(lowest)
        if not _meets(lowest, need_ms):
            self.reporter.message(
                f"stage 1: the winner measures {from_ms:.3f} ms > {need_ms:.3f} ms and even every group at its lower "
                f"bound (keep >= {self.cfg.lower_bound:g}) measures {_ms(lowest):.3f} ms: this budget is out of reach by pruning"
            )
            faster = lowest if _ms(lowest) < from_ms else best
            info["to_ms"] = _ms(faster)
            return faster, info
        found, lo = Search._bisect(at, lowest, need_ms, REPAIR_STEPS, miss=best)
        info["steps"] += REPAIR_STEPS
        info.update(scale=lo, met=True, to_ms=_ms(found))
        self.reporter.message(
            f"stage 1: the winner measured {from_ms:.3f} ms > {need_ms:.3f} ms; its keep ratios moved {1 - lo:.0%} of "
            f"the way to the lower bound: {_ms(found):.3f} ms, accuracy {found.accuracy * 100:.1f}% "
            f"({info['steps']} measured steps)"
        )
        return found, info

    def _requiet(self, cand: Candidate) -> Candidate:
        """``cand`` with the fastest of ``VERIFY_ROUNDS`` fresh profiles as its measurement, where faster than its reading."""
        try:
            fastest, _ = self._fastest(self._candidate_file(cand), VERIFY_ROUNDS)
        except HwcompressError as exc:
            log.warning("could not profile %s again: %s", cand.policy.digest(), exc)
            return cand
        if fastest.latency.median_ms >= _ms(cand):
            return cand
        return dataclasses.replace(cand, measurement=fastest)

    def _grow(
        self, env: PruneEnv, evaluator: PruneEvaluator, best: Candidate, budget1: Stage1Budget,
        credit: dict[str, Any], need: float | None,
    ) -> tuple[Candidate, dict[str, Any]]:
        """Let a stage-1 winner that leaves budget unused grow into it, on measured latency.

        The agent's winner often measures 5-10 % under what it may reach (its action wall works on a
        latency model, and episodes are few), while uniform pruning fitted by bisection sits at the
        budget itself: the unused latency is capacity given away.  The winner's keep ratios are moved
        towards each group's upper bound by one common fraction (0 = the winner, 1 = unpruned), the
        largest fraction that measures within the target is taken, bisected on measured latency.
        The target is what stage 1 must reach in fp32; where a lower precision's speed-up is credited
        and held on the winner, it is the inner budget over that precision's ratio measured on the
        winner (times ``GROW_CREDIT_MARGIN``), and the grown model's own ratio is measured again: if
        the credit no longer holds there, the winner is kept.
        """
        prec = budget1.credited if credit.get("holds") and not credit.get("fallback") else ""
        ratio: float | None = credit.get("ratio_on_winner") if prec else None
        if prec and not ratio:
            return best, {}
        if ratio:  # set only where a credit holds
            target = self.inner_ms / ratio * GROW_CREDIT_MARGIN
        else:
            target = need if need is not None else self.inner_ms
        from_ms = _ms(best)
        info: dict[str, Any] = {"target_ms": target, "from_ms": from_ms, "credited": prec, "steps": 0, "scale": 0.0,
                                "grown": False}
        if from_ms >= target * (1.0 - GROW_MIN_GAP):
            return best, info
        start = Search._keep_vector(env, best)
        ceil = np.array([env._choices(i)[-1] for i in range(len(env.layers))])
        at = Search._line(env, evaluator, start, ceil)
        top = at(1.0)
        info["steps"] = 1
        if _meets(top, target):
            found, scale = top, 1.0
        else:
            found, scale = Search._bisect(at, best, target, GROW_STEPS, miss=top)
            info["steps"] += GROW_STEPS
        info.update(scale=scale, to_ms=_ms(found))
        if found.policy.digest() == best.policy.digest():
            return best, info
        if prec:  # the credited precision must still pay off on the grown model
            after = self._credited_ratio(found, prec, "stage1-grow")
            info["ratio_on_grown"] = after
            if after is None or _ms(found) * after > self.inner_ms:
                shown = "could not be measured" if after is None else f"measures {after:.2f}x fp32 there"
                self.reporter.message(f"stage 1: grown winner kept back: {prec} {shown}, "
                                      f"{_ms(found):.3f} ms in fp32 (stage 2 must reach {self.inner_ms:.3f} ms)")
                info["to_ms"] = from_ms
                return best, info
        info["grown"] = True
        self.reporter.message(
            f"stage 1: the winner measured {from_ms:.3f} ms, under the {target:.3f} ms it may reach; its keep ratios "
            f"moved {scale:.0%} of the way to unpruned: {_ms(found):.3f} ms, accuracy {found.accuracy * 100:.1f}% "
            f"({info['steps']} measured steps)"
        )
        return found, info

    def _pruned(self, policy: CompressionPolicy) -> nn.Module:
        """The baseline pruned by ``policy``, in eval mode (device_file converts a model as it is)."""
        from hwcompress.prune import apply_policy

        model = apply_policy(self.base.model, policy, self.shape, channel_multiple=self.target.channel_multiple)
        model.eval()
        return model

    def _candidate_file(self, cand: Candidate, model: nn.Module | None = None) -> Path:
        """The file a stage's candidate was measured as (rebuilt from its policy if it is gone)."""
        suffix = ".tflite" if self.target.runtime == "tflite" else ".onnx"
        stem = self.workdir / f"{cand.stage}-{cand.policy.digest()}"
        path = stem.with_suffix(suffix)
        if path.is_file():
            return path
        from hwcompress.search.evaluator import device_file

        if cand.stage == "prune":
            return device_file(self._pruned(cand.policy), self.shape, stem, self.target)
        assert model is not None
        if self.target.runtime == "tflite":
            return device_file(model, self.shape, stem, self.target, cand.policy, self.splits.calib.x)
        from hwcompress.export import export_onnx
        from hwcompress.quantize import quantize_onnx

        fp32 = self.run_dir / f"stage2{self._tag}-fp32.onnx"
        if not fp32.is_file():
            export_onnx(model, self.shape, fp32)
        return quantize_onnx(fp32, path, cand.policy, self.splits.calib.x, self.target)

    def _judge(self, path: Path) -> dict[str, Any]:
        """``path`` and the baseline profiled afresh side by side, alternating, ``VERIFY_ROUNDS`` rounds each.

        On a shared machine a neighbour on the same core slows a whole profile by up to 1.9x for
        seconds at a time, one profile slow and the next not (seen: MobileNetV2-small 0.36-0.55 ms
        across profiles a few seconds apart, one process idle beside them).  Noise of that kind
        only ever slows a profile, so the fastest of a few fresh profiles is a model's quiet state.
        The budget is a fraction of the baseline, so the winner is judged as one: the fastest round
        of ``path`` over the fastest round of the baseline, both taken now, in the same state of
        the machine — the rule ``bench_compare`` judges rows by.  A baseline taken minutes earlier
        would not do: seen, ResNet-20's search baseline 0.946 ms (a slow spell lasting all three
        of its profiles and the re-check), the quiet state 0.745 ms, a 0.3x budget 27 % loose and
        a winner that read "within" it at 1.03x the true budget.  ``ms`` is the ratio times the
        search's baseline, on the scale of the search's budgets.
        """
        from hwcompress.profiling.measure import measure

        own: list[Measurement] = []
        base: list[Measurement] = []
        for _ in range(VERIFY_ROUNDS):
            own.append(measure(path, self.target, force=True))
            base.append(measure(self.base_file, self.target, force=True))
        fastest = min(m.latency.median_ms for m in own)
        base_fastest = min(m.latency.median_ms for m in base)
        ratio = fastest / base_fastest
        return {"ms": ratio * self.base_ms, "ratio": ratio, "rounds_ms": [m.latency.median_ms for m in own],
                "base_rounds_ms": [m.latency.median_ms for m in base]}

    def _verify(
        self, stage: str, cand: Candidate, need_ms: float, retry: Callable[[Candidate, float], Candidate | None],
        model: nn.Module | None = None,
    ) -> tuple[Candidate, dict[str, Any]]:
        """Make sure a stage's winner meets ``need_ms`` as a fraction of the baseline; refit it if not.

        The winner is judged with :meth:`_judge`: profiled afresh beside the baseline, its fastest
        round over the baseline's, times the search's baseline.  Its reading in this search does not
        stand on its own, even within ``need_ms``: that proves its quiet state is within the need
        in milliseconds, but the need is a fraction of a baseline measured minutes earlier, maybe
        in a slow spell (then the budget itself is loose).  If the verdict is over ``need_ms``, the
        reading was optimistic by ``verdict / reading``, and ``retry`` is asked for the best
        candidate within ``need_ms`` scaled down by that factor (a refit along the stage-1 repair
        line; the next best stage-2 candidate), which is judged in turn, up to ``VERIFY_RETRIES``
        times.  Kept: the first within, else the fastest judged.
        """
        info: dict[str, Any] = {"need_ms": need_ms, "tries": [], "met": False}
        judged: list[tuple[dict[str, Any], Candidate]] = []
        for attempt in range(VERIFY_RETRIES + 1):
            fresh = cand.measurement is not None and not cand.measurement.cached
            try:
                verdict = self._judge(self._candidate_file(cand, model))
            except HwcompressError as exc:  # cannot judge: keep what the search measured
                info["error"] = str(exc)
                self.reporter.message(f"{stage}: the winner could not be profiled again: {exc}")
                break
            verdict.update(policy=cand.policy.digest(), single_ms=_ms(cand), cached=not fresh)
            info["tries"].append(verdict)
            judged.append((verdict, cand))
            if verdict["ms"] <= need_ms:
                info["met"] = True
                break
            if attempt == VERIFY_RETRIES:
                break
            tighter = need_ms * _ms(cand) / verdict["ms"]
            nxt = retry(cand, tighter)
            if nxt is None or not _meets(nxt, tighter) or nxt.policy.digest() in {c.policy.digest() for _, c in judged}:
                break
            cand = nxt
        if judged:
            last, cand = judged[-1] if info["met"] else min(judged, key=lambda t: t[0]["ms"])
            info.update(ratio=last["ratio"], ms=last["ms"], policy=last["policy"])
            verb = "within" if info["met"] else "OVER"
            how = f"fastest of {len(last['rounds_ms'])} fresh profiles each, beside it"
            self.reporter.message(
                f"{stage}: winner at {last['ms']:.3f} ms ({last['ratio']:.3f}x the baseline; {how}), {verb} "
                f"{need_ms:.3f} ms" + (f" after {len(info['tries']) - 1} refit(s)" if len(info["tries"]) > 1 else "")
            )
        return cand, info

    def _credited_ratio(self, cand: Candidate, prec: str, stem: str) -> float | None:
        """Measured latency of ``cand`` at ``prec`` over its fp32 self, side by side."""
        from hwcompress.export import export_onnx

        model = self._pruned(cand.policy)
        fp32 = export_onnx(model, self.shape, self.run_dir / f"{stem}-fp32.onnx")
        return self._precision_ratios(model, fp32, stem, _ms(cand), only=(prec,)).get(prec)

    def _check_credit(
        self, best: Candidate, budget1: Stage1Budget, seen: list[Candidate]
    ) -> tuple[Candidate, dict[str, Any]]:
        """Check that the credited precision still pays off on the stage-1 winner itself.

        The credit was measured on the unpruned model; on a pruned one the same precision can lose
        its edge (seen: ResNet-20 int8 0.66x fp32 unpruned, 1.02x at 0.58x of its latency, where the
        quantize/dequantize around residual adds dominate).  The winner is quantized to the credited
        precision and measured side by side with its fp32 self.  If it would not reach the budget,
        the most rewarding stage-1 candidate that meets the budget in fp32 alone takes its place
        (when there is one), so that stage 2 starts from a model that can meet the budget.
        """
        prec = budget1.credited
        if not _meets(best, float("inf")):  # failed or unmeasured: nothing to check
            return best, {}
        best_ms = _ms(best)
        ratio = self._credited_ratio(best, prec, "stage1-check")
        info: dict[str, Any] = {"precision": prec, "ratio_unpruned": budget1.precision_ratios.get(prec),
                                "ratio_on_winner": ratio, "winner_ms": best_ms, "holds": True, "fallback": ""}
        if ratio is None:  # could not be measured: keep the winner (already logged)
            return best, info
        head = f"credit check: {prec} measures {ratio:.2f}x fp32 on the stage-1 winner, {best_ms * ratio:.3f} ms"
        if best_ms * ratio <= self.inner_ms:
            self.reporter.message(f"{head}, within {self.inner_ms:.3f} ms")
            return best, info
        info["holds"] = False
        alt = max((c for c in seen if _meets(c, self.inner_ms)), key=lambda c: c.reward, default=None)
        if alt is None:
            self.reporter.message(f"{head} > {self.inner_ms:.3f} ms and no stage-1 candidate meets the budget "
                                  "in fp32; stage 2 will get as close as it can")
            return best, info
        info["fallback"] = alt.policy.digest()
        self.reporter.message(f"{head} > {self.inner_ms:.3f} ms; taking the best stage-1 candidate that meets the "
                              f"budget in fp32 ({_ms(alt):.3f} ms, "
                              f"accuracy {alt.accuracy * 100:.1f}%)")
        return alt, info

    def _stage1_budget(self) -> Stage1Budget:
        """The budgets stage 1 holds the fp32 pruned model to.

        Stage 1 alone: the search's budgets.  When a measured stage 2 follows, the baseline is
        quantized uniformly to each lower precision the target supports and *measured*; the best
        measured speed-up ``r`` (e.g. int8 at 0.55x) lets stage 1 leave the fp32 model at up to
        ``budget * margin / r`` — less pruning, more accuracy — and stage 2 must then meet the real
        budget.  A precision that measures slower than fp32 (int4 weight-only, INT8 without VNNI)
        gives no credit, whatever a bit-ops count says.  The size budget is likewise scaled by the
        bytes per weight of int8 when stage 2 may use it.  Proxy searches (``--cost flops``) keep
        AMC's rule: stage 1 meets the budget fraction on MACs by itself.
        """
        cfg = self.cfg
        size = self.ctx.size_budget
        follows = "quant" in cfg.stages
        if follows and size is not None and "int8" in self.target.precisions:
            size *= 4.0
        if not (follows and cfg.prune_cost == "measured" and cfg.quant_cost == "measured"):
            return Stage1Budget(self.budget_ms, self.inner_ms, size, {}, "")
        ratios = self._precision_ratios(self.base.model, self.base_onnx, "baseline", self.base_ms)
        lower = {k: v for k, v in ratios.items() if k != "fp32"}
        best = min(lower, key=lambda k: lower[k]) if lower else ""
        latency = self.inner_ms
        if best and ratios[best] < STAGE1_MARGIN:
            latency = min(self.inner_ms * STAGE1_MARGIN / ratios[best], self.base_ms)
        else:
            best = ""
        shown = ", ".join(f"{k} {v:.2f}x" for k, v in sorted(lower.items(), key=lambda kv: kv[1]))
        self.reporter.message(
            f"baseline at lower precision, measured: {shown or 'none'}; stage-1 latency budget "
            f"{latency:.3f} ms (stage 2 must reach {self.inner_ms:.3f} ms)"
        )
        return Stage1Budget(self.budget_ms, latency, size, lower, best)

    def _precision_ratios(
        self, model: nn.Module, fp32_onnx: Path, stem: str, fp32_ms: float, only: tuple[str, ...] = ()
    ) -> dict[str, float]:
        """Measured latency of ``model`` with every weight layer at each lower precision, relative to fp32.

        The fp32 model and each lower-precision copy are profiled side by side, interleaved, for
        ``PRECISION_ROUNDS`` rounds, and each ratio is the fastest round of the copy over the fastest
        round of fp32 — each side's quiet state (see :meth:`_judge`): a neighbour's slow spell hits
        one profile and not the next, so a ratio taken round by round can be off by 30 % (seen:
        MobileNetV2-small fp16 "0.70x" fp32 in three searches, 1.0x in quiet profiles), and a
        single reading would decide the whole stage-1 budget.  ``fp32_ms`` is the fallback
        reference when the fp32 copy itself cannot be re-profiled.
        """
        from hwcompress.profiling.measure import measure
        from hwcompress.quantize import quantize_onnx, uniform_policy
        from hwcompress.search.evaluator import device_file

        files: dict[str, Path] = {}
        for prec in self.target.precisions:
            if only and prec not in only and prec != "fp32":
                continue
            path = self.run_dir / f"{stem}-{prec}"
            try:
                if self.target.runtime == "tflite":
                    files[prec] = device_file(model, self.shape, path, self.target, uniform_policy(prec),
                                              self.splits.calib.x)
                elif prec == "fp32":
                    files[prec] = fp32_onnx
                else:
                    files[prec] = quantize_onnx(fp32_onnx, path.with_suffix(".onnx"), uniform_policy(prec),
                                                self.splits.calib.x, self.target)
            except HwcompressError as exc:  # a precision the runtime cannot take gets no credit
                log.warning("%s at %s could not be built: %s", stem, prec, exc)
        per_round: dict[str, list[float]] = {p: [] for p in files}
        for r in range(PRECISION_ROUNDS):
            for prec, path in files.items():
                try:  # the first round may come from the cache; later rounds are fresh profiles
                    per_round[prec].append(measure(path, self.target, cache=self.cache, force=r > 0).latency.median_ms)
                except HwcompressError as exc:
                    log.warning("%s at %s could not be measured: %s", stem, prec, exc)
        ref = min(per_round.get("fp32") or [fp32_ms])
        ratios: dict[str, float] = {"fp32": 1.0}
        for prec, values in per_round.items():
            if values and prec != "fp32":
                ratios[prec] = min(values) / ref
                log.info("%s %s per round: %s ms (fp32 fastest %.3f ms)", stem, prec,
                         ", ".join(f"{v:.3f}" for v in values), ref)
        return ratios

    # ------------------------------------------------------------------ fine-tune
    @property
    def _tag(self) -> str:
        """Suffix of the files fine-tune and stage 2 write for the current stage-1 policy (refits: -r1, -r2)."""
        return f"-r{self.refits}" if self.refits else ""

    def _finetuned(self, policy: CompressionPolicy) -> nn.Module:
        from hwcompress.finetune import finetune
        from hwcompress.prune import apply_policy, load_pruned, save_pruned

        path = self.run_dir / f"finetuned{self._tag}.pt"
        if path.exists():
            return load_pruned(path)
        from hwcompress.evaluate import torch_threads
        from hwcompress.search.evaluator import recalibrate_bn

        model = apply_policy(self.base.model, policy, self.shape, channel_multiple=self.target.channel_multiple)
        with torch_threads(1):  # same adaptive-BN step the stage-1 candidates were scored with
            recalibrate_bn(model, self.splits.train.x, self.ctx.bn_batches)
        if self.cfg.finetune_epochs > 0 and policy.keep:
            self.reporter.message(f"fine-tuning with distillation for {self.cfg.finetune_epochs} epoch(s)")
            t0 = time.monotonic()
            finetune(model, self.base.model, self.splits, epochs=self.cfg.finetune_epochs, seed=self.cfg.seed,
                     checkpoint=self.run_dir / f"finetune-ckpt{self._tag}.pt", test=False)
            self.seconds["finetune"] = self.seconds.get("finetune", 0.0) + time.monotonic() - t0
        model.eval()
        from hwcompress.evaluate import accuracy

        test = self.splits.test.head(self.cfg.test_limit)
        save_pruned(model, path, meta={"policy": policy.to_dict(), "test_accuracy": accuracy(model, test),
                                       "test_images": len(test)},
                    source={"spec": self.cfg.model, "in_channels": self.shape[1], "num_classes": self.splits.num_classes,
                            "input_shape": list(self.shape)})
        return model

    # ------------------------------------------------------------------ stage 2
    def _stage2(self, model: nn.Module, keep: dict[str, float]) -> tuple[CompressionPolicy, Candidate | None, Path]:
        from hwcompress.export import export_onnx
        from hwcompress.macs import layer_macs
        from hwcompress.profiling.measure import measure
        from hwcompress.prune import layer_table
        from hwcompress.quantize import quantizable_layers

        cfg = self.cfg
        fp32 = export_onnx(model, self.shape, self.run_dir / f"stage2{self._tag}-fp32.onnx")
        out_file = self.run_dir / f"stage2{self._tag}.json"
        if out_file.exists():
            data = json.loads(out_file.read_text())
            best = Candidate.from_dict(data["best"]) if data.get("best") else None
            self.stage2_verdict = data.get("verify") or {}
            self.verdict = self.stage2_verdict or self.verdict
            return CompressionPolicy.from_dict(data["policy"]), best, fp32
        if self.target.runtime == "tflite":
            from hwcompress.search.evaluator import device_file

            ref = measure(device_file(model, self.shape, self.run_dir / f"stage2{self._tag}-fp32", self.target), self.target,
                          cache=self.cache)
        else:
            ref = measure(fp32, self.target, cache=self.cache, per_node=self.per_node)
        table = {la.name: la for la in layer_table(model, self.shape, strict=False)}
        qlayers = quantizable_layers(fp32, model)
        macs = layer_macs(model, self.shape)
        times = layer_times_ms(list(table.values()), ref, fp32)
        tshare = dict(zip(table, times / max(times.sum(), 1e-9), strict=True))
        steps = []
        for q in qlayers:
            la = table.get(q.module)
            steps.append(StepLayer(
                name=q.name, kind=_kind(la) if la else "conv", in_channels=la.in_channels if la else 0,
                out_channels=la.out_channels if la else 0, kernel=la.kernel[0] if la and la.kernel else 1,
                stride=la.stride[0] if la and la.stride else 1, macs=macs.get(q.module, 0), params=q.params,
                latency_share=float(tshare.get(q.module, 0.0)),
            ))
        evaluator = QuantEvaluator(
            self.ctx, fp32, model=model, cost=cfg.quant_cost, budget_ms=self.inner_ms, latency_ref=ref.latency.median_ms,
            layer_macs={q.name: macs.get(q.module, 0) for q in qlayers}, speed_weight=cfg.speed_weight,
            base_keep=keep, calib_x=self.splits.calib.x,
            on_candidate=lambda c, w: self.reporter.candidate("quant", evaluator.episode, c, evaluator.state.best, w),
        )
        if self.resume:
            evaluator.restore(self.log.read())
        speed: dict[str, float] | None = None
        layer_ms: list[float] | None = None
        if cfg.quant_cost == "measured":  # order the action axis by measured speed; HAQ-style wall on it
            speed = self._precision_ratios(model, fp32, f"stage2{self._tag}", ref.latency.median_ms)
            ms_of = dict(zip(table, times, strict=True))
            layer_ms = [float(ms_of.get(q.module, 0.0)) for q in qlayers]
            shown = ", ".join(f"{k} {v:.2f}x" for k, v in sorted(speed.items(), key=lambda kv: kv[1]))
            self.reporter.message(f"pruned model per precision, measured: {shown}")
        env = QuantEnv(steps, evaluator, precisions=self.target.precisions, base_keep=keep, speed=speed,
                       layer_ms=layer_ms, budget_ms=self.inner_ms if cfg.wall else None)
        warm = min(cfg.warmup_episodes, max(cfg.quant_episodes // 3, 1))
        runner = StageRunner("quant", env, len(steps), self._agent_cfg(warm), self.run_dir / f"ckpt{self._tag}")
        self.reporter.stage("quant", cfg.quant_episodes, runner.load_progress().episodes if self.resume else 0)
        if speed is not None:
            self._seed_uniform(evaluator, steps, keep, speed)
        if self.resume:
            evaluator.episode = runner.load_progress().episodes
        t0 = time.monotonic()
        runner.run(cfg.quant_episodes, deadline=self.deadline, resume=self.resume)
        self.reporter.stage("quant", cfg.quant_episodes, runner.load_progress().episodes)
        self.seconds["quant_search"] = self.seconds.get("quant_search", 0.0) + time.monotonic() - t0
        best = evaluator.state.best
        verify: dict[str, Any] = {}
        # Judged even when its own reading is over: one reading in a slow spell can double a small model's
        # latency (seen: MobileNetV2-small's all-fp32 policy read 0.199 ms, the same graph 0.105 ms before).
        if cfg.quant_cost == "measured" and best is not None and _meets(best, float("inf")):
            def next_best(c: Candidate, ms: float) -> Candidate | None:
                return max((x for x in evaluator.state.seen.values() if _meets(x, ms)), key=lambda x: x.reward,
                           default=None)

            best, verify = self._verify("stage 2", best, self.inner_ms, next_best, model=model)
            self.verdict = self.stage2_verdict = verify
        policy = best.policy if best else CompressionPolicy(keep=keep)
        atomic_write_text(out_file, json.dumps({
            "policy": policy.to_dict(), "best": best.to_dict() if best else None, "verify": verify,
            "within_budget": verify["met"] if verify.get("tries") else evaluator.state.best_within,
            "candidates": evaluator.state.evaluated,
            "failures": evaluator.state.failures, "fp32_ms": ref.latency.median_ms, "precision_ratios": speed,
            "action_order": list(env.precisions),
        }, indent=2))
        return policy, best, fp32

    def _seed_uniform(
        self, evaluator: QuantEvaluator, steps: list[StepLayer], keep: dict[str, float], speed: dict[str, float]
    ) -> None:
        """Evaluate the uniform policies first: all fp32, and all at each precision measured faster than fp32.

        Stage 2 must never end worse than the plain choices: the agent's mixes are scored against them.
        Its action wall predicts a mix from whole-model ratios, which misses the Cast / Q-DQ nodes a
        boundary between precisions adds (seen: MobileNetV2-small, every one of 20 mixes of fp16 with
        one int8 layer measured 0.19-0.36 ms where the all-fp32 model measures 0.16 ms, the budget
        0.17 ms).  Seeds are ordinary candidates (measured, logged, cached, numbered episode 0); on
        resume they are found in the log and not measured again.
        """
        for prec in [p for p in self.target.precisions if p == "fp32" or speed.get(p, float("inf")) < 1.0]:
            evaluator.episode = -1  # seeds are episode 0; the agent's episodes are numbered from 1
            evaluator(CompressionPolicy(keep=keep, precision={st.name: prec for st in steps}))
        evaluator.episode = 0

    # ------------------------------------------------------------------ refit after stage 2
    def _refit_due(self) -> bool:
        """Stage 2's winner was judged over the budget, and stage 1 may still prune further."""
        v, cfg = self.stage2_verdict, self.cfg
        if not v.get("tries") or v.get("met") or v.get("error") or "prune" not in cfg.stages:
            return False
        if cfg.prune_cost != "measured" or cfg.quant_cost != "measured":
            return False
        if self.refits >= STAGE2_REFITS:
            self.reporter.message(f"stage 2: winner still over the budget after {self.refits} refit(s) of stage 1; "
                                  "keeping it (see stage2 verify in the run folder)")
            return False
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.reporter.message("stage 2: winner over the budget, but the --time-budget is spent: no refit of stage 1")
            return False
        return True

    def _refit(self, prune_best: Candidate) -> tuple[CompressionPolicy, Candidate] | None:
        """Prune further when stage 2's winner was judged over the budget and no stage-2 candidate is within.

        Stage 2 only picks precisions: once the pruned model it was given cannot reach the budget at
        any of them (seen: ResNet-20 0.5x, stage 2's all-int8 winner judged at 0.455 ms against 0.379 ms;
        the int8 credit stage 1 was given was measured before a slow spell ended), only stage 1 can
        close the gap.  The measured shortfall (need / verdict) scales the fp32 latency the stage-1
        winner read in this search, ``REFIT_MARGIN`` lower still, and the stage-1 winner is refitted
        to it along its repair line (keep ratios moved together towards their lower bounds, bisected
        on measured latency), judged beside the baseline, fine-tuned again from the original (the
        same epochs as before) and handed to stage 2 again.  Each refit is appended to ``stage1.json``
        (``stage2_refits``) together with the new policy, in one atomic write, and its fine-tune and
        stage-2 files carry a ``-rN`` suffix, so an interrupted search resumes where it was.  Returns
        None where pruning cannot go further.
        """
        v = self.stage2_verdict
        factor = v["need_ms"] / v["ms"] * REFIT_MARGIN
        from_ms = _ms(prune_best)
        need = from_ms * factor
        s1_file = self.run_dir / "stage1.json"
        data = json.loads(s1_file.read_text())
        size = (data.get("stage1_budget") or {}).get("size_bytes")
        self.reporter.message(
            f"stage 2: winner judged at {v['ms']:.3f} ms > {v['need_ms']:.3f} ms and no stage-2 candidate is within; "
            f"stage 1 prunes further: {from_ms:.3f} -> {need:.3f} ms in fp32 (refit {self.refits + 1} of at most "
            f"{STAGE2_REFITS})"
        )
        _, _, evaluator, env = self._stage1_tools(Stage1Budget(self.budget_ms, need, size, {}, ""))
        evaluator.restore(self.log.read())
        found, repair = self._repair(env, evaluator, prune_best, need)
        if not _meets(found, float("inf")) or _ms(found) >= from_ms:
            self.reporter.message("stage 1 cannot prune further (every group at its lower bound); keeping stage 2's winner")
            return None
        verify: dict[str, Any] = {}
        if repair.get("met"):
            found, verify = self._verify_pruned("stage 1 refit", env, evaluator, found, need)
        data.setdefault("stage2_refits", []).append({
            "stage2_verdict": v, "from_policy": prune_best.policy.to_dict(), "from_ms": from_ms, "factor": factor,
            "need_ms": need, "repair": repair, "verify": verify, "policy": found.policy.to_dict(),
        })
        data.update(policy=found.policy.to_dict(), best=found.to_dict())
        self.refits += 1
        atomic_write_text(s1_file, json.dumps(data, indent=2))
        return found.policy, found

    # ------------------------------------------------------------------ all
    def run(self) -> SearchResult:
        """Every stage not finished yet, then the artifact.

        A device lost mid-run (RemoteError / ProfilerError) keeps everything measured so far; the
        error names the ``--resume`` command that continues from there.
        """
        with self._exits:
            try:
                return self._run()
            except (RemoteError, ProfilerError) as exc:
                if not (self.run_dir / "config.json").is_file():
                    raise
                raise type(exc)(f"{exc}; the search so far is kept in {self.run_dir}: continue it with "
                                f"`hwcompress search --resume {self.run_dir}`") from exc

    def _run(self) -> SearchResult:
        t_all = time.monotonic()
        self._prepare()
        cfg = self.cfg
        prune_best = quant_best = None
        keep: dict[str, float] = {}
        if "prune" in cfg.stages:
            policy1, prune_best = self._stage1()
            keep = dict(policy1.keep)
        model = self._finetuned(CompressionPolicy(keep=keep)) if keep else self.base.model
        final = CompressionPolicy(keep=keep)
        if "quant" in cfg.stages:
            final, quant_best, _ = self._stage2(model, keep)
            while prune_best is not None and self._refit_due():
                got = self._refit(prune_best)
                if got is None:
                    break
                policy1, prune_best = got
                keep = dict(policy1.keep)
                model = self._finetuned(CompressionPolicy(keep=keep)) if keep else self.base.model
                final, quant_best, _ = self._stage2(model, keep)
        self.reporter.message("writing the artifact (quantize, validate, measure baseline and result)")
        t0 = time.monotonic()
        manifest, artifact = self._artifact(model, final)
        self.seconds["artifact"] = time.monotonic() - t0
        self.seconds["total"] = time.monotonic() - t_all
        n = len(self.log.read())
        return SearchResult(
            run_dir=self.run_dir, artifact=artifact, manifest=manifest, baseline_ms=self.base_ms, budget_ms=self.budget_ms,
            prune_best=prune_best, quant_best=quant_best, latency_model_within=self.latency_within,
            seconds=dict(self.seconds), candidates=n, verdict=dict(self.verdict, stage1_refits=self.refits),
            final=dict(self.final_verdict),
        )

    def _artifact(self, model: nn.Module, policy: CompressionPolicy) -> tuple[Manifest, Path]:
        from hwcompress.artifact import export_artifact, measure_figures

        out = Path(self.cfg.out)
        # The baseline is the original, unpruned fp32 model, measured and scored the same way as the result.
        # Both are profiled afresh, one after the other (no cache): a reading cached during the search may
        # come from a slow or quiet spell of the machine (seen: a stage-2 fp32 model at 2.56 ms, 1.85 ms in
        # stage 1), and the manifest's two figures are what `hwcompress check` holds the artifact to.
        baseline = measure_figures(
            self.base_file, self.target, self.splits.test, macs=self.base_macs, params=self.base_params,
            precisions={"fp32": 1}, label=f"baseline{self.base_file.suffix}", cache=None,
            test_limit=self.cfg.test_limit,
        )
        manifest = export_artifact(
            model, policy, self.target, out, calib=self.splits.calib, test=self.splits.test, baseline=baseline,
            source_model=self.cfg.model, force=self.cfg.force or self.resume, command=self.command, seed=self.cfg.seed,
            cache=None, test_limit=self.cfg.test_limit, accept=self._accept,
        )
        return manifest, out

    def _final_judge(self, path: Path, limit: float) -> dict[str, Any]:
        """``path`` against the baseline in pairs of fresh profiles taken seconds apart (ABBA order).

        Each pair's ratio shares the machine's state of that moment, so a slow spell that lasts
        a pair cancels out, where one that hits one side's rounds only would not.  Pairs are added
        (at least ``FINAL_ROUNDS``, at most ``FINAL_ROUNDS_MAX``) until the 95 % bootstrap
        interval of the median ratio lies on one side of ``limit`` — the significance rule of
        ``check`` — and the median then decides.  ``ms`` is the ratio times the search's baseline.
        """
        from hwcompress.check import bootstrap_ratio
        from hwcompress.profiling.measure import measure

        own: list[float] = []
        base: list[float] = []
        low = high = point = 0.0
        for r in range(FINAL_ROUNDS_MAX):
            first, second = (path, self.base_file) if r % 2 == 0 else (self.base_file, path)
            a = measure(first, self.target, force=True).latency.median_ms
            b = measure(second, self.target, force=True).latency.median_ms
            own.append(a if first == path else b)
            base.append(b if first == path else a)
            ratios = [o / x for o, x in zip(own, base, strict=True)]
            point, low, high = bootstrap_ratio(ratios, [1.0], seed=r)
            if len(ratios) >= FINAL_ROUNDS and (high <= limit or low > limit):
                break
        return {"ratio": point, "ci_low": low, "ci_high": high, "ms": point * self.base_ms, "rounds_ms": own,
                "base_rounds_ms": base, "rule": "median of per-pair ratios to the baseline (ABBA), 95% bootstrap "
                f"interval on one side of the limit or {FINAL_ROUNDS_MAX} pairs"}

    def _accept(self, manifest: Manifest, device_file: Path) -> Manifest:
        """The final verdict on every budget, before the artifact is written (``export_artifact``'s ``accept``).

        Latency is judged by :meth:`_final_judge` (the artifact's model and the baseline profiled
        afresh in pairs, check's significance rule): a relative budget (``0.5x``) on the median
        ratio, an absolute one on the model's fastest round.  Size is the model file's bytes, memory the measured peak.
        Over any of them: BudgetError (exit 3, nothing written) unless ``allow_over_budget``, when
        the manifest says ``budget_met: false`` and the CLI still exits 3.
        """
        spec = parse_budget(self.cfg.latency_budget, "--latency-budget")
        judged = self._final_judge(device_file, spec.ratio if spec.ratio is not None else self.budget_ms / self.base_ms)
        if spec.ratio is not None:
            value, limit, shown = judged["ratio"], spec.ratio, f"{judged['ratio']:.3f}x of the baseline for {spec.ratio:g}x"
        else:
            value = min(judged["rounds_ms"])
            limit, shown = self.budget_ms, f"{value:.3f} ms for {self.budget_ms:.3f} ms"
        verdict: dict[str, Any] = {"latency": dict(judged, budget=self.cfg.latency_budget, budget_ms=self.budget_ms,
                                                   judged_ratio=judged["ratio"], judged_ms=judged["ms"],
                                                   met=value <= limit)}
        misses: list[str] = []
        if value > limit:
            misses.append(f"latency {judged['ms']:.3f} ms is {_over(value, limit)} over the {self.budget_ms:.3f} ms budget "
                          f"(judged beside the baseline: {shown})")
        for key, option, have, cap in (
            ("size", self.cfg.size_budget, float(manifest.result.file_bytes), self.ctx.size_budget),
            ("memory", self.cfg.memory_budget,
             float(manifest.result.measurement.peak_memory_bytes) if manifest.result.measurement else 0.0,
             self.ctx.memory_budget),
        ):
            if cap is None:
                continue
            verdict[key] = {"budget": option, "budget_bytes": cap, "bytes": have, "met": have <= cap}
            if have > cap:
                misses.append(f"{key} {have / 1024:.1f} KiB is {_over(have, cap)} over the {cap / 1024:.1f} KiB budget")
        met = not misses
        self.final_verdict = dict(verdict, met=met, misses=misses)
        if not met and not self.allow_over_budget:
            raise BudgetError(
                "the result is over its budget: " + "; ".join(misses) + f"; no artifact written (the run is kept: "
                f"`hwcompress search --resume {self.run_dir} --allow-over-budget` writes it, marked budget_met: false)"
            )
        return dataclasses.replace(manifest, budget=verdict, budget_met=met)
