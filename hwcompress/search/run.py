"""The whole search: baseline -> stage 1 (prune) -> fine-tune -> stage 2 (precision) -> artifact.

Everything lives in a run directory:

    RUN_DIR/config.json        the search's settings (a resumed search reads them back)
    RUN_DIR/search.jsonl       every candidate, as it happens
    RUN_DIR/ckpt/              agent, replay buffer, random state and counters per stage
    RUN_DIR/baseline.onnx      the unpruned model as exported
    RUN_DIR/baseline.json      the baseline's measurement; RUN_DIR/budget.json the budgets resolved on it (fixed)
    RUN_DIR/precisions-*.json  each precision's speed over fp32, measured once per stage (fixed)
    RUN_DIR/stage1.json        stage 1's report: pruning policy, judged winner (written when stage 1 ends)
    RUN_DIR/finetuned.pt       the fine-tuned pruned model (written when fine-tuning ends)
    RUN_DIR/stage2.json        stage 2's report: precision policy, judged winner
    RUN_DIR/candidates/        the candidates' files as the device ran them
    RUN_DIR/pool.json          a pool of boards (--hosts / --pool): each board's calibration, state, events

How the loop decides (docs/search.md): every candidate is measured on the target for its reward;
the agent acts inside a region predicted from a latency table measured on the target
(:mod:`hwcompress.search.region`); each stage's winner, and the result, are judged beside the
baseline by one rule (:mod:`hwcompress.judge`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from hwcompress.errors import BudgetError, ProfilerError, RemoteError, UsageError
from hwcompress.fsutil import atomic_write_text
from hwcompress.judge import Reader, Verdict, judge
from hwcompress.records import Candidate, CompressionPolicy, Manifest, Measurement
from hwcompress.search.agents import AgentConfig
from hwcompress.search.budget import parse_budget
from hwcompress.search.config import SearchConfig
from hwcompress.search.evaluator import EvalContext, SearchLog
from hwcompress.search.pick import pick, reading_ms, tie_margin
from hwcompress.search.state import Budget, Judged, Stage1Report, Stage2Report, kept

if TYPE_CHECKING:
    from torch import nn

    from hwcompress.data import DataSplits
    from hwcompress.profiling.pool import DevicePool
    from hwcompress.records import Target
    from hwcompress.search.clock import TimePlan
    from hwcompress.search.evaluator import OtherTarget

log = logging.getLogger(__name__)

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
    winners: dict[str, Judged] = field(default_factory=dict)  # each stage's winner: the verdict that kept it
    final: dict[str, Any] = field(default_factory=dict)  # the artifact judged against every budget (_accept)
    pool: dict[str, Any] = field(default_factory=dict)  # the boards of a pool as pool.json keeps them

    @property
    def budget_met(self) -> bool:
        return bool(self.final.get("met", True))


BASELINE_ROUNDS = 7  # fresh profiles of the baseline; their median is the search's scale


def _over(value: float, budget: float) -> str:
    """How far ``value`` is over ``budget``: ``22%`` or ``41x``."""
    r = value / budget if budget > 0 else float("inf")
    return f"{(r - 1) * 100:.0f}%" if r < 3 else f"{r:.0f}x"


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
        self.quiet_libraries = False  # third-party warnings and native stderr to RUN_DIR/libraries.log
        self.final_verdict: dict[str, Any] = {}  # _accept's verdict on every budget
        self.pool: DevicePool | None = None  # the boards measuring (a pool search), else the target's device
        self.others: list[OtherTarget] = []  # further targets stage 1's candidates are measured on (search/multi.py)
        self._prepared = False
        self.started = time.monotonic()  # the time budget's start (a search over several targets: all of it)
        self.plan: TimePlan | None = None
        self._exits = contextlib.ExitStack()

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
    def prepare(self) -> None:
        """Check everything, then load the data and model and measure the baseline (once; run() calls it)."""
        if not self._prepared:
            self._prepare()
            self._prepared = True

    def _prepare(self) -> None:
        import torch

        from hwcompress import preflight
        from hwcompress.data import load_splits
        from hwcompress.export import export_onnx
        from hwcompress.macs import count_macs
        from hwcompress.profiling.adapters import backend_for
        from hwcompress.profiling.cache import MeasurementCache
        from hwcompress.recovery import make_recovery
        from hwcompress.targets import load_target
        from hwcompress.zoo.train import build_for, ensure_baseline

        cfg = self.cfg
        # Everything checkable is checked before the slow work (training, conversion, measuring).
        if self.resume:
            preflight.writable_folder(Path(cfg.out), "--out")
        else:
            preflight.artifact_destination(Path(cfg.out), cfg.force)
        preflight.writable_folder(self.run_dir, "--run-dir")
        self.target: Target = load_target(cfg.target, **cfg.connection)
        self.boards: list[Target] = []
        if cfg.boards:  # a pool: the search's target is its first board's (name, settings, manifest)
            from hwcompress.profiling.pool import board_targets

            self.boards = board_targets(self.target, cfg.boards)
            self.target = self.boards[0]
            preflight.boards_ready(self.boards, trust_new_host=self.trust_new_host)
        else:
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
        if self.target.connection.kind == "ssh" and not self.boards:
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
        backend = backend_for(self.target)
        self.base_file = backend.device_file(self.base.model, self.shape, self.run_dir / "baseline", self.target,
                                             fp32_onnx=self.base_onnx)
        self.suffix = backend.device_suffix
        self.per_node = backend.per_node  # per-node times: each layer's share of the latency
        if self.boards:  # from here on every measurement of the target goes to the pool's boards
            from hwcompress.search.pooled import start_pool

            self.pool = self._exits.enter_context(start_pool(self))
        self.reporter.message(f"measuring the baseline on {self.target.name}")
        self.base_measurement = self._baseline_measurement()
        self.base_ms = self.base_measurement.latency.median_ms
        self.base_macs, self.base_params = count_macs(self.base.model, self.shape)
        self.budget = self._budget()
        self.reader = Reader(self.target, self.base_file if self.budget.relative else None, self.base_ms)
        self.ctx = EvalContext(
            target=self.target, input_shape=self.shape, splits=self.splits, cache=self.cache, workdir=self.workdir,
            log=self.log, reader=self.reader, score_mode=cfg.score, val_limit=cfg.val_limit, penalty=cfg.penalty,
            size_budget=self.budget.size_bytes, memory_budget=self.budget.memory_bytes,
            recovery=make_recovery(self.base.model, self.splits.train, cfg.recovery_steps, seed=cfg.seed,
                                   labels=cfg.score == "accuracy") if cfg.recovery_steps > 0 else None,
        )
        self.plan = self._time_plan() if cfg.time_budget_s else None
        self.reporter.message(
            f"baseline {self.base_ms:.3f} ms (spread {self.base_measurement.latency.robust_cv * 100:.1f}%), "
            f"accuracy {self.base.test_accuracy * 100:.2f}%; latency budget {self.budget.latency_ms:.3f} ms"
        )

    def _baseline_measurement(self) -> Measurement:
        """The baseline's measurement, the scale of the search's readings: the median of
        ``BASELINE_ROUNDS`` fresh profiles (the judge's settings), with per-node times from one
        profile more where the runtime gives them; kept in ``baseline.json`` so that a resumed search
        holds the same scale (a candidate's reading is its ratio to the baseline beside it times this:
        :class:`Reader`)."""
        from hwcompress.profiling.measure import measure

        def fresh() -> Measurement:
            best = Reader(self.target, None, 1.0, pairs=BASELINE_ROUNDS).read(self.base_file)  # the median round
            log.info("baseline: %.3f ms, the median of %d fresh profiles (spread of their medians %.1f%%)",
                     best.latency.median_ms, best.rounds, best.median_cv * 100)
            if self.per_node:
                nodes = measure(self.base_file, self.target, cache=self.cache, per_node=True).per_node_us
                best = dataclasses.replace(best, per_node_us=nodes)
            return best

        return kept(self.run_dir / "baseline.json", self.resume, fresh, Measurement.to_dict, Measurement.from_dict)

    def _time_plan(self) -> TimePlan:
        """The clock of ``--time-budget`` (:mod:`hwcompress.search.clock`), checked before any episode."""
        from hwcompress.search.clock import TimePlan, estimate_costs, time_units

        cfg = self.cfg
        m = self.base_measurement
        profile_s = m.wall_s / max(m.rounds, 1)
        if profile_s <= 0:  # a baseline.json from before wall_s was kept: time one profile
            from hwcompress.profiling.measure import measure

            t0 = time.perf_counter()
            measure(self.base_file, self.target, cache=None, force=True)
            profile_s = time.perf_counter() - t0
        tuned = (self.run_dir / "finetuned.pt").exists()
        units = time_units(self.base.model, self.splits, profile_s,
                           steps="prune" in cfg.stages and cfg.finetune_epochs > 0 and not tuned)
        costs = estimate_costs(units, stages=cfg.stages, finetune_epochs=cfg.finetune_epochs,
                               train_images=len(self.splits.train), eval_images=len(self.splits.test.head(cfg.test_limit)),
                               precisions=len(self.target.precisions))
        episodes = {stage: n for stage, n in (("prune", cfg.prune_episodes), ("quant", cfg.quant_episodes))
                    if stage in cfg.stages}
        plan = TimePlan(cfg.time_budget_s or 0.0, self.started, costs, episodes)
        for work, stage, file in (("prune pick", "prune", "stage1.json"), ("finetune", "", "finetuned.pt"),
                                  ("quant pick", "quant", "stage2.json")):
            if (self.run_dir / file).exists():  # a resumed search: done before the interruption
                plan.done.add(work)
                episodes.pop(stage, None)
        log.info("time budget %.0f s; units: profile %.3f s, fine-tune step %.3f s, image %.5f s",
                 plan.total_s, units.profile_s, units.step_s, units.image_s)
        self.reporter.message(plan.check(firm=cfg.time_budget_firm) or (
            f"time budget {plan.total_s:.0f} s: {plan.end - time.monotonic():.0f} s left; the work besides the "
            f"episodes is estimated at {plan.parts()}"))
        return plan

    def episodes_deadline(self, stage: str, done: int = 0) -> float | None:
        """When ``stage``'s episodes stop under ``--time-budget`` (None: no time budget); ``done``: played
        before a resume."""
        if self.plan is None:
            return None
        deadline = self.plan.deadline(stage, done=done)
        self.reporter.message(self.plan.log[-1])
        return deadline

    def work_done(self, work: str, seconds: float) -> None:
        """Tell the time plan ``work`` (one of :data:`hwcompress.search.clock.WORK`) took ``seconds``."""
        self.seconds[work.replace(" ", "_")] = seconds
        if self.plan is not None:
            self.plan.finished(work, seconds)

    def _budget(self) -> Budget:
        """The budgets, resolved once on the baseline's measurement and kept in ``budget.json``."""
        def fresh() -> Budget:
            cfg = self.cfg
            size = memory = None
            if cfg.size_budget:
                size = parse_budget(cfg.size_budget, "--size-budget", unit="b").resolve(self.base_file.stat().st_size)
            if cfg.memory_budget:
                memory = parse_budget(cfg.memory_budget, "--memory-budget", unit="b").resolve(
                    self.base_measurement.peak_memory_bytes)
            return Budget.resolve(cfg.latency_budget, self.base_ms, cfg.guard, size_bytes=size, memory_bytes=memory)

        return kept(self.run_dir / "budget.json", self.resume, fresh, Budget.to_dict, Budget.from_dict)

    def agent_cfg(self, warmup: int) -> AgentConfig:
        return AgentConfig(name=self.cfg.agent, warmup_episodes=warmup, seed=self.cfg.seed)

    # ------------------------------------------------------------------ the one judge
    def judge(self, path: Path, limit: float) -> Verdict:
        """``path`` judged beside the baseline (relative budgets) or alone (absolute ones): :func:`judge`."""
        reference = self.base_file if self.budget.relative else None
        return judge(path, self.target, limit, reference=reference, seed=self.cfg.seed)

    @property
    def verdict_scale_ms(self) -> float:
        """A verdict's ratio times this is on the readings' scale (ms): the baseline's ms for a relative
        budget (the verdict is a ratio to it), 1 for an absolute one (the verdict is in ms)."""
        return self.base_ms if self.budget.relative else 1.0

    def pick(
        self, stage: str, cands: Sequence[Candidate], file_of: Callable[[Candidate], Path],
        project: Callable[[Candidate, float], Candidate | None] | None = None,
        settled: tuple[Candidate, Verdict] | None = None,
        predict: Callable[[Candidate], float | None] | None = None,
    ) -> tuple[Candidate | None, list[Judged]]:
        """A stage's winner among ``cands``, by the judge at the budget's aim: :func:`pick` (``predict``: the
        stage predictor's figure for a candidate, in the readings' milliseconds)."""
        where = "beside the baseline" if self.budget.relative else "on fresh profiles"

        def judged(c: Candidate, how: str, v: Verdict) -> None:
            if how == "earlier stage":
                self.reporter.message(f"{stage}: none judged within; stage 1's winner stays ({v.describe()})")
            else:
                self.reporter.message(f"{stage}: {how} candidate ({reading_ms(c):.3f} ms in the search, score "
                                      f"{c.accuracy * 100:.1f}%) judged {where}: {v.describe()}")

        t0 = time.monotonic()
        got = pick(cands, lambda c: self.judge(file_of(c), self.budget.aim), self.budget.aim_ms,
                   self.verdict_scale_ms, project=project, settled=settled, on_verdict=judged,
                   tie=self.tie(cands), predict=predict)
        self.work_done("prune pick" if stage == "stage 1" else "quant pick", time.monotonic() - t0)
        return got

    def tie(self, cands: Sequence[Candidate]) -> float:
        """Rewards closer than this rank as tied in :func:`pick`: one standard error of the best accuracy on
        the validation images the candidates were scored on (0 for the label-free score, which has none)."""
        scores = [c.accuracy for c in cands if not c.error]
        if self.cfg.score != "accuracy" or not scores:
            return 0.0
        return tie_margin(max(scores), len(self.ctx.val()))

    def candidate_file(self, cand: Candidate) -> Path:
        """The file a candidate was measured as (``candidates/<stage>-<digest>``)."""
        return self.workdir / f"{cand.stage}-{cand.policy.digest()}{self.suffix}"

    # ------------------------------------------------------------------ stages
    def _stage1(self) -> Stage1Report:
        from hwcompress.search.stages import run_stage1

        # a stage that ended before an interruption is read back
        return kept(self.run_dir / "stage1.json", True, lambda: run_stage1(self), Stage1Report.to_dict,
                    Stage1Report.from_dict)

    def _stage2(self, model: nn.Module, keep: dict[str, float], precision: str,
                settled: Verdict | None = None) -> Stage2Report:
        from hwcompress.search.stages import run_stage2

        # a stage that ended before an interruption is read back
        return kept(self.run_dir / "stage2.json", True, lambda: run_stage2(self, model, keep, precision, settled),
                    Stage2Report.to_dict, Stage2Report.from_dict)

    def pruned(self, policy: CompressionPolicy) -> nn.Module:
        """The baseline pruned by ``policy``, in eval mode."""
        from hwcompress.prune import apply_policy

        model = apply_policy(self.base.model, policy, self.shape, channel_multiple=self.target.channel_multiple)
        model.eval()
        return model

    def _finetuned(self, policy: CompressionPolicy) -> nn.Module:
        from hwcompress.evaluate import accuracy, torch_threads
        from hwcompress.finetune import finetune
        from hwcompress.prune import load_pruned, save_pruned
        from hwcompress.search.evaluator import recalibrate_bn

        path = self.run_dir / "finetuned.pt"
        if path.exists():
            return load_pruned(path)
        model = self.pruned(policy)
        with torch_threads(1):  # same adaptive-BN step and recovery the stage-1 candidates were scored with
            recalibrate_bn(model, self.splits.train.x, self.ctx.bn_batches)
            if self.ctx.recovery is not None and policy.keep:
                from hwcompress.recovery import recover

                recover(model, self.ctx.recovery)
        if self.cfg.finetune_epochs > 0 and policy.keep:
            self.reporter.message(f"fine-tuning with distillation for {self.cfg.finetune_epochs} epoch(s)")
            t0 = time.monotonic()
            finetune(model, self.base.model, self.splits, epochs=self.cfg.finetune_epochs, seed=self.cfg.seed,
                     checkpoint=self.run_dir / "finetune-ckpt.pt", test=False)
            self.work_done("finetune", time.monotonic() - t0)
        model.eval()
        test = self.splits.test.head(self.cfg.test_limit)
        save_pruned(model, path, meta={"policy": policy.to_dict(), "test_accuracy": accuracy(model, test),
                                       "test_images": len(test)},
                    source={"spec": self.cfg.model, "in_channels": self.shape[1], "num_classes": self.splits.num_classes,
                            "input_shape": list(self.shape)})
        return model

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
        self.prepare()
        cfg = self.cfg
        s1: Stage1Report | None = None
        s2: Stage2Report | None = None
        keep: dict[str, float] = {}
        precision = "fp32"
        if "prune" in cfg.stages:
            s1 = self._stage1()
            keep, precision = dict(s1.policy.keep), s1.precision
        model = self._finetuned(CompressionPolicy(keep=keep)) if keep else self.base.model
        final = CompressionPolicy(keep=keep)
        if "quant" in cfg.stages:
            s2 = self._stage2(model, keep, precision, settled=s1.winner_verdict() if s1 else None)
            final = s2.policy
        self.reporter.message("writing the artifact (quantize, validate, measure baseline and result)")
        t0 = time.monotonic()
        manifest, artifact = self._artifact(model, final)
        self.seconds["artifact"] = time.monotonic() - t0
        self.seconds["total"] = time.monotonic() - t_all
        winners = {name: next(j for j in reversed(rep.judged) if rep.best and j.policy == rep.best.policy.digest())
                   for name, rep in (("stage 1", s1), ("stage 2", s2))
                   if rep is not None and rep.best is not None and any(j.policy == rep.best.policy.digest()
                                                                       for j in rep.judged)}
        return SearchResult(
            run_dir=self.run_dir, artifact=artifact, manifest=manifest, baseline_ms=self.base_ms,
            budget_ms=self.budget.latency_ms, prune_best=s1.best if s1 else None, quant_best=s2.best if s2 else None,
            latency_model_within=s1.predictions_within_10pct if s1 else (0, 0), seconds=dict(self.seconds),
            candidates=len(self.log.read()), winners=winners, final=dict(self.final_verdict),
            pool=self.pool.state() if self.pool is not None else {},
        )

    def _artifact(self, model: nn.Module, policy: CompressionPolicy) -> tuple[Manifest, Path]:
        from hwcompress.artifact import export_artifact, measure_figures

        out = Path(self.cfg.out)
        # The baseline is the original, unpruned fp32 model, measured and scored the same way as the result,
        # both profiled afresh (no cache): the manifest's two figures are what `hwcompress check` holds it to.
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

    def _accept(self, manifest: Manifest, device_file: Path) -> Manifest:
        """The final verdict on every budget, before the artifact is written (``export_artifact``'s ``accept``).

        Latency: the artifact's model judged at the budget's ``limit`` (:meth:`judge`); size: the model
        file's bytes; memory: the measured peak.  Over any: BudgetError (exit 3, nothing written) unless
        ``allow_over_budget``, when the manifest says ``budget_met: false`` and the CLI still exits 3.
        """
        b = self.budget
        v = self.judge(device_file, b.limit)
        judged_ms = v.ratio * b.baseline_ms if b.relative else v.ratio
        ci = f"95% CI {v.ci_low:.3f}-{v.ci_high:.3f}"
        shown = (f"judged beside the baseline: {v.ratio:.3f}x of it for {b.spec}, {ci}, {v.pairs} pairs" if b.relative
                 else f"judged on {v.pairs} fresh profiles: median {v.ratio:.3f} ms, {ci}")
        verdict: dict[str, Any] = {"latency": {"budget": b.spec, "budget_ms": b.latency_ms, "judged_ratio": v.ratio,
                                               "judged_ms": judged_ms, "met": v.within, "verdict": v.to_dict()}}
        misses: list[str] = []
        if not v.within:
            misses.append(f"latency {judged_ms:.3f} ms is {_over(v.ratio, b.limit)} over the {b.latency_ms:.3f} ms "
                          f"budget ({shown})")
        for key, option, have, cap in (
            ("size", self.cfg.size_budget, float(manifest.result.file_bytes), b.size_bytes),
            ("memory", self.cfg.memory_budget,
             float(manifest.result.measurement.peak_memory_bytes) if manifest.result.measurement else 0.0,
             b.memory_bytes),
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
