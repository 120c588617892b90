"""Candidate evaluation: policy -> real model -> ONNX -> measured on the target -> scored.

An identical policy is never built or measured twice (in-memory table by policy digest, filled
again from ``search.jsonl`` on resume; the measurement cache below it is keyed by the model's
sha256). A candidate whose build, export or profile fails is logged with its error and gets
:data:`~hwcompress.search.reward.FAILED_REWARD`; the search goes on.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hwcompress.errors import DevicesLost, HwcompressError
from hwcompress.fsutil import sha256_file
from hwcompress.records import Candidate, CompressionPolicy, Measurement, Target
from hwcompress.search.envs import EpisodeOutcome
from hwcompress.search.region import Region
from hwcompress.search.reward import FAILED_REWARD, Costs, accuracy_within_budget, within_budget

if TYPE_CHECKING:
    from torch import nn

    from hwcompress.data import DataSplits, Split
    from hwcompress.judge import Reader
    from hwcompress.profiling.cache import MeasurementCache
    from hwcompress.recovery import Recovery

log = logging.getLogger(__name__)

BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}
ACT_BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 8}  # int4 is weight-only; activations stay 8-bit


class SearchLog:
    """Append-only ``search.jsonl``: one line per evaluated candidate, flushed and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict[str, Any]) -> None:
        import os

        line = json.dumps(record, sort_keys=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def read(self) -> list[dict[str, Any]]:
        """Every complete line (a line torn by a crash mid-write is skipped)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("skipping a torn line in %s", self.path)
        return out


@dataclass
class StageState:
    """What an evaluator accumulates: every candidate by policy digest, and the best one."""

    stage: str
    seen: dict[str, Candidate] = field(default_factory=dict)
    best: Candidate | None = None
    best_within: bool = False
    evaluated: int = 0
    failures: int = 0

    def restore(self, records: list[dict[str, Any]]) -> list[Candidate]:
        """Refill from ``search.jsonl`` lines of this stage; returns the restored candidates."""
        restored = []
        for rec in records:
            if rec.get("stage") != self.stage:
                continue
            extra = {k: rec.pop(k) for k in list(rec) if k not in Candidate.__dataclass_fields__ and k != "schema"}
            cand = Candidate.from_dict(rec)
            self.seen[cand.policy.digest()] = cand
            self.evaluated += 1
            self.consider(cand, bool(extra.get("within_budget")))
            restored.append(cand)
        return restored

    def consider(self, cand: Candidate, within: bool) -> None:
        """Best = within budget first, then highest reward."""
        if cand.error:
            return
        better = (
            self.best is None
            or (within and not self.best_within)
            or (within == self.best_within and cand.reward > self.best.reward)
        )
        if better:
            self.best, self.best_within = cand, within


BN_BATCHES = 8  # training batches the adaptive-BN step runs on a pruned model


@dataclass
class EvalContext:
    """Everything both stages need to score a candidate."""

    target: Target
    input_shape: tuple[int, int, int, int]
    splits: DataSplits
    cache: MeasurementCache | None
    workdir: Path
    log: SearchLog
    reader: Reader | None = None  # how a candidate is read on the target (None: one measure(), cached)
    score_mode: str = "accuracy"  # accuracy | label-free
    val_limit: int = 2000
    bn_batches: int = BN_BATCHES
    penalty: float = 2.0
    size_budget: float | None = None
    memory_budget: float | None = None
    recovery: Recovery | None = None  # stage 1: a short distillation before a candidate is scored

    def val(self) -> Split:
        return self.splits.val.head(self.val_limit)


def recalibrate_bn(model: nn.Module, x: np.ndarray, batches: int, batch_size: int = 64) -> None:
    """Re-estimate BatchNorm statistics on ``batches`` training batches (adaptive BN, as EagleEye).

    A pruned network's BN statistics no longer match its activations; a few forward passes fix
    that and make the accuracy of an un-fine-tuned candidate a far better predictor of its
    accuracy after fine-tuning.
    """
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or batches <= 0:
        return
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    model.train()
    with torch.no_grad():
        for i in range(batches):
            chunk = x[i * batch_size : (i + 1) * batch_size]
            if len(chunk) == 0:
                break
            model(torch.from_numpy(np.ascontiguousarray(chunk)))
    for m, mom in saved:
        m.momentum = mom
    model.eval()


def device_file(
    model: nn.Module, shape: tuple[int, ...], stem: Path, target: Target, policy: CompressionPolicy | None = None,
    calib_x: np.ndarray | None = None,
) -> Path:
    """The file the target's runtime runs: .tflite for TFLite targets, ONNX otherwise (fp32 unless ``policy``);
    see :meth:`hwcompress.profiling.adapters.ProfilerAdapter.device_file`."""
    from hwcompress.profiling.adapters import backend_for

    return backend_for(target).device_file(model, shape, stem, target, policy, calib_x)


def runtime_accuracy(path: Path, split: Split, threads: int) -> float:
    """Accuracy of a model file run in its runtime (ONNX Runtime or the LiteRT interpreter)."""
    if path.suffix == ".tflite":
        from hwcompress.tflite import tflite_accuracy

        return tflite_accuracy(path, split, threads=threads)
    from hwcompress.evaluate import onnx_accuracy

    return onnx_accuracy(path, split, threads=threads)


def _candidate_record(cand: Candidate, extra: dict[str, Any]) -> dict[str, Any]:
    return {**cand.to_dict(), **extra}


@dataclass(frozen=True)
class OtherTarget:
    """A further target every stage-1 candidate is measured on (one search, several targets:
    :mod:`hwcompress.search.multi`), held to its own latency aim (ms)."""

    target: Target
    aim_ms: float
    cache: MeasurementCache | None
    workdir: Path
    calib_x: np.ndarray | None = None
    reader: Reader | None = None  # that target's search's (None: one measure(), cached)

    def precision(self, wanted: str) -> str:
        """The candidate's precision where this target offers it, else fp32."""
        return wanted if wanted in self.target.precisions else "fp32"

    def device_file(self, model: nn.Module, shape: tuple[int, ...], stem: Path, precision: str) -> Path:
        from hwcompress.quantize import uniform_policy

        prec = self.precision(precision)
        return device_file(model, shape, stem, self.target, None if prec == "fp32" else uniform_policy(prec),
                           self.calib_x)


#: Measures one device file somewhere else (a pool of boards) and hands back its future.
Submit = Callable[[Path], "Future[Measurement]"]


@dataclass
class Job:
    """One candidate from its build to its record (a pool of boards measures it in between)."""

    policy: CompressionPolicy
    key: str
    episode: int = -1
    t0: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    done: EpisodeOutcome | None = None  # a policy evaluated before: its outcome
    twin: bool = False  # the same policy as an earlier job of its batch
    model: Any = None  # the pruned torch model (stage 1)
    path: Path | None = None  # the file the device runs
    macs: int = 0
    params: int = 0
    measurement: Measurement | None = None
    score: float = 0.0
    error: HwcompressError | None = None
    others: dict[str, tuple[Path, Measurement | None]] = field(default_factory=dict)  # target -> (file, reading)

    @property
    def ready(self) -> bool:
        """Built, not a repeat, no error so far."""
        return self.done is None and not self.twin and self.error is None


class _Batched(abc.ABC):
    """What both evaluators share: several candidates at once, measured by a pool of boards.

    A subclass builds a job (:meth:`_begin`), scores it (:meth:`_score`) and records it (:meth:`_end`);
    :meth:`evaluate_batch` builds every candidate of the batch and hands their files to the boards,
    scores them while the boards measure, then records each in order.
    """

    cost: str
    ctx: EvalContext
    state: StageState

    @abc.abstractmethod
    def _begin(self, policy: CompressionPolicy, batch: set[str] | None = None) -> Job:
        """Build the candidate of ``policy`` (its model and device file), or its earlier outcome."""

    @abc.abstractmethod
    def _score(self, job: Job) -> float:
        """The candidate's score (accuracy or similarity in [0, 1]) on the validation images."""

    @abc.abstractmethod
    def _rewarded(self, job: Job) -> tuple[Candidate, bool]:
        """The built, measured and scored ``job`` as a rewarded candidate, and whether it is within the
        budgets (raises HwcompressError when a figure cannot be had)."""

    STAGE = ""  # prune | quant: the stage its candidates are logged under

    def _end(self, job: Job) -> EpisodeOutcome:
        """Reward the measured, scored candidate (or record its failure) and log it."""
        cand: Candidate | None = None
        within = False
        if job.error is None:
            try:
                cand, within = self._rewarded(job)
            except HwcompressError as exc:
                job.error = exc
        if cand is None:
            cand = self._failed(job, self.STAGE)
        return self._record(job, cand, within)

    @abc.abstractmethod
    def _repeat(self, key: str) -> EpisodeOutcome:
        """The outcome of a policy evaluated before."""

    on_candidate: Callable[[Candidate, bool], None] | None

    def _failed(self, job: Job, stage: str) -> Candidate:
        """The record of a candidate whose build, export, measurement or scoring failed."""
        self.state.failures += 1
        log.warning("candidate %s failed: %s", job.key, job.error)
        return Candidate(policy=job.policy, stage=stage, accuracy=0.0, macs=0, params=0, reward=FAILED_REWARD,
                         seconds=time.perf_counter() - job.t0, error=str(job.error), episode=job.episode)

    def _record(self, job: Job, cand: Candidate, within: bool) -> EpisodeOutcome:
        """Keep ``cand`` (never evaluated again), log it to ``search.jsonl``, tell the front end."""
        job.extra["within_budget"] = within
        self.state.seen[job.key] = cand
        self.state.evaluated += 1
        self.state.consider(cand, within)
        self.ctx.log.append(_candidate_record(cand, job.extra))
        if self.on_candidate:
            self.on_candidate(cand, within)
        return EpisodeOutcome(cand.reward, {"candidate": cand, "repeat": False, "within_budget": within})

    def _measure(self, path: Path) -> Measurement:
        from hwcompress.profiling.measure import measure

        if self.ctx.reader is not None:
            return self.ctx.reader.read(path)
        return measure(path, self.ctx.target, cache=self.ctx.cache)

    def _measure_others(self, job: Job) -> None:  # noqa: B027  (a no-op unless a stage measures other targets)
        """Measure the job's files for the other targets (a multi-target search's stage 1)."""

    def __call__(self, policy: CompressionPolicy) -> EpisodeOutcome:
        from hwcompress.evaluate import torch_threads

        # One torch thread: small per-candidate work, and no fight with the profiler for the cores.
        with torch_threads(1):
            return self._evaluate(policy)

    def _evaluate(self, policy: CompressionPolicy) -> EpisodeOutcome:
        """One candidate, measured here and now (one device): build, measure, score, record."""
        job = self._begin(policy)
        if job.done is not None:
            return job.done
        if job.error is None:
            try:
                assert job.path is not None
                job.measurement = self._measure(job.path) if self.cost == "measured" else None
                self._measure_others(job)
                job.score = self._score(job)
            except HwcompressError as exc:
                job.error = exc
        return self._end(job)

    def evaluate_batch(self, policies: Sequence[CompressionPolicy], submit: Submit) -> list[EpisodeOutcome]:
        """The outcomes of ``policies`` (in order; episode numbers follow it), measured through ``submit``.

        Every measurement that came back is recorded before a DevicesLost (every board gone) is raised.
        """
        from hwcompress.evaluate import torch_threads

        with torch_threads(1):
            batch: set[str] = set()
            jobs: list[Job] = []
            futures: dict[str, Future[Measurement]] = {}
            for p in policies:  # each candidate goes to a board as soon as it is built: the next one is
                job = self._begin(p, batch)  # built while the boards measure
                jobs.append(job)
                if self.cost == "measured" and job.ready:
                    assert job.path is not None
                    futures[job.key] = submit(job.path)
            for job in jobs:  # the host scores while the boards measure
                if job.ready:
                    try:
                        job.score = self._score(job)
                    except HwcompressError as exc:
                        job.error = exc
            outcomes: list[EpisodeOutcome] = []
            lost: DevicesLost | None = None
            for job in jobs:
                if job.done is not None:
                    outcomes.append(job.done)
                    continue
                fut = futures.get(job.key)
                if fut is not None and not job.twin:
                    try:
                        measurement = fut.result()
                    except DevicesLost as exc:
                        lost = lost or exc
                        continue
                    except HwcompressError as exc:
                        job.error = job.error or exc
                    else:
                        job.measurement = measurement
                if job.ready:
                    try:
                        self._measure_others(job)
                    except HwcompressError as exc:
                        job.error = exc
                if job.twin:
                    if job.key in self.state.seen:
                        outcomes.append(self._repeat(job.key))
                    continue
                outcomes.append(self._end(job))
            if lost is not None:
                raise lost
            return outcomes


class PruneEvaluator(_Batched):
    """Stage 1: keep-ratio policy -> pruned torch model -> ONNX -> measured -> accuracy/similarity."""

    STAGE = "prune"

    def __init__(
        self,
        ctx: EvalContext,
        model: nn.Module,
        *,
        cost: str,
        budget_ms: float,
        budget_macs: float,
        base_macs: int,
        region: Region | None,
        group_index: dict[str, int],
        size_budget: float | None = None,
        precision: str = "fp32",
        calib_x: np.ndarray | None = None,
        on_candidate: Callable[[Candidate, bool], None] | None = None,
        others: Sequence[OtherTarget] = (),
    ) -> None:
        """``others``: further targets each candidate is also built for and measured on; its reward then
        holds it to the worst relative excess over every target's latency aim (``budget_ms`` is the first's)."""
        self.ctx = ctx
        self.others = list(others)
        self.size_budget = size_budget
        self.model = model
        self.cost = cost
        self.budget_ms = budget_ms
        self.budget_macs = budget_macs
        self.base_macs = base_macs
        self.region = region
        self.precision = precision  # candidates are built in it where no region chooses per candidate
        self.calib_x = calib_x
        self.group_index = group_index
        self.state = StageState("prune")
        self.on_candidate = on_candidate
        self.episode = 0

    def keep_vector(self, policy: CompressionPolicy) -> np.ndarray:
        keep = np.ones(len(self.group_index))
        for name, ratio in policy.keep.items():
            keep[self.group_index[name]] = ratio
        return keep

    def build(self, policy: CompressionPolicy) -> nn.Module:
        from hwcompress.prune import apply_policy

        pruned = apply_policy(self.model, policy, self.ctx.input_shape, channel_multiple=self.ctx.target.channel_multiple)
        recalibrate_bn(pruned, self.ctx.splits.train.x, self.ctx.bn_batches)
        return pruned

    def measured_file(self, pruned: nn.Module, stem: Path, precision: str) -> Path:
        """The file a candidate is measured as: the device's format, every weight layer at ``precision``."""
        from hwcompress.quantize import uniform_policy

        policy = None if precision == "fp32" else uniform_policy(precision)
        return device_file(pruned, self.ctx.input_shape, stem, self.ctx.target, policy, self.calib_x)

    def score(self, pruned: nn.Module) -> float:
        """Accuracy (or similarity) on the validation images, after the context's short recovery when it has
        one (``pruned`` is trained in place: measure it first)."""
        if self.ctx.recovery is not None:
            from hwcompress.recovery import recover

            recover(pruned, self.ctx.recovery)
        if self.ctx.score_mode == "label-free":
            from hwcompress.similarity import similarity

            return similarity(pruned, self.model, self.ctx.val().x)
        from hwcompress.evaluate import accuracy

        return accuracy(pruned, self.ctx.val())

    def _repeat(self, key: str) -> EpisodeOutcome:
        cand = self.state.seen[key]
        within = self._within(cand)
        return EpisodeOutcome(cand.reward, {"candidate": cand, "repeat": True, "within_budget": within})

    def _begin(self, policy: CompressionPolicy, batch: set[str] | None = None) -> Job:
        """Number the candidate, build it in its precision and write the device's file."""
        self.episode += 1
        # built in the uniform precision the region predicts fastest for it (the policy says which)
        prec = self.region.precision_for(self.keep_vector(policy)) if self.region is not None else self.precision
        policy = dataclasses.replace(policy, default_precision=prec, precision={})
        key = policy.digest()
        if key in self.state.seen:
            return Job(policy, key, done=self._repeat(key))
        if batch is not None:
            if key in batch:
                return Job(policy, key, twin=True)
            batch.add(key)
        from hwcompress.macs import count_macs

        predicted = self.region.predict(self.keep_vector(policy)) if self.region is not None else None
        job = Job(policy, key, self.episode, time.perf_counter(), {"predicted_ms": predicted})
        try:
            job.model = self.build(policy)
            job.macs, job.params = count_macs(job.model, self.ctx.input_shape)
            job.path = self.ctx.workdir / f"prune-{key}.onnx"
            if self.cost == "measured":
                job.path = self.measured_file(job.model, self.ctx.workdir / f"prune-{key}", prec)
            else:  # proxy mode: the file is written for the record, not measured
                from hwcompress.export import export_onnx

                export_onnx(job.model, self.ctx.input_shape, job.path)
            for o in self.others:
                stem = o.workdir / f"prune-{key}"
                job.others[o.target.name] = (o.device_file(job.model, self.ctx.input_shape, stem, prec), None)
        except HwcompressError as exc:
            job.error = exc
        return job

    def _measure_others(self, job: Job) -> None:
        from hwcompress.profiling.measure import measure

        for o in self.others:
            path, _ = job.others[o.target.name]
            m = o.reader.read(path) if o.reader is not None else measure(path, o.target, cache=o.cache)
            job.others[o.target.name] = (path, m)

    def _score(self, job: Job) -> float:
        return self.score(job.model)

    def _rewarded(self, job: Job) -> tuple[Candidate, bool]:
        extra, policy = job.extra, job.policy
        assert job.path is not None
        measurement, onnx_path = job.measurement, job.path
        if self.cost == "measured":
            assert measurement is not None
            costs = Costs(
                latency=self._worst(job, measurement.latency.median_ms),
                latency_budget=self.budget_ms,
                size=float(onnx_path.stat().st_size),
                size_budget=self.size_budget,
                memory=float(measurement.peak_memory_bytes),
                memory_budget=self.ctx.memory_budget,
            )
            if self.region is not None:
                err = self.region.observe(self.keep_vector(policy), measurement.latency.median_ms,
                                          policy.default_precision)
                extra["latency_model_error"] = err
        else:  # flops proxy: MACs against the same fraction of the baseline's MACs
            costs = Costs(latency=float(job.macs), latency_budget=self.budget_macs,
                          size=float(onnx_path.stat().st_size), size_budget=self.size_budget)
        reward = accuracy_within_budget(job.score, costs, penalty=self.ctx.penalty)
        cand = Candidate(
            policy=policy, stage=self.STAGE, accuracy=job.score, macs=job.macs, params=job.params, reward=reward,
            seconds=time.perf_counter() - job.t0, measurement=measurement, episode=job.episode,
        )
        extra["onnx"] = str(onnx_path)
        extra["file_bytes"] = onnx_path.stat().st_size
        if self.others:  # each other target's reading, file and precision (multi.py picks from them)
            extra["targets"] = {}
            for o in self.others:
                path, m = job.others[o.target.name]
                extra["targets"][o.target.name] = {"measurement": m.to_dict() if m else None, "file": str(path),
                                                   "precision": o.precision(policy.default_precision)}
        return cand, within_budget(costs)

    def _worst(self, job: Job, ms: float) -> float:
        """The reading held to the budget: ``ms`` alone, or with other targets the worst ratio to each
        target's aim, on the first target's scale (``budget_ms`` x the worst ratio)."""
        if not self.others:
            return ms
        ratios = [ms / self.budget_ms]
        for o in self.others:
            m = job.others[o.target.name][1]
            assert m is not None
            ratios.append(m.latency.median_ms / o.aim_ms)
        return max(ratios) * self.budget_ms

    def _within(self, cand: Candidate) -> bool:
        if cand.error:
            return False
        if self.cost == "measured" and cand.measurement is not None:
            return cand.measurement.latency.median_ms <= self.budget_ms
        return cand.macs <= self.budget_macs

    def restore(self, records: list[dict[str, Any]]) -> None:
        """Refill the table of seen candidates (and the region's fit) from ``search.jsonl``."""
        for cand in self.state.restore(records):
            if self.region is not None and cand.measurement is not None:
                self.region.observe(self.keep_vector(cand.policy), cand.measurement.latency.median_ms,
                                    cand.policy.default_precision)
            self.episode = max(self.episode, cand.episode)


class QuantEvaluator(_Batched):
    """Stage 2: precision policy -> QDQ ONNX (real quantization) -> measured -> accuracy on the runtime."""

    STAGE = "quant"

    def __init__(
        self,
        ctx: EvalContext,
        fp32_onnx: Path,
        *,
        model: nn.Module | None = None,
        cost: str,
        budget_ms: float,
        latency_ref: float,
        layer_macs: dict[str, int],
        speed_weight: float,
        base_keep: dict[str, float],
        calib_x: np.ndarray,
        on_candidate: Callable[[Candidate, bool], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.fp32_onnx = fp32_onnx
        self.model = model
        self.cost = cost
        self.budget_ms = budget_ms
        self.latency_ref = latency_ref
        self.layer_macs = layer_macs
        self.speed_weight = speed_weight
        self.base_keep = base_keep
        self.calib_x = calib_x
        self.state = StageState("quant")
        self.on_candidate = on_candidate
        self.episode = 0
        self.base_bitops = sum(self.layer_macs.values()) * 32 * 32
        self.budget_bitops = self.base_bitops * (budget_ms / latency_ref if latency_ref > 0 else 1.0)

    def bitops(self, policy: CompressionPolicy) -> int:
        """HAQ's bit-ops: sum over layers of MACs x weight bits x activation bits."""
        total = 0
        for name, macs in self.layer_macs.items():
            p = policy.precision.get(name, policy.default_precision)
            total += macs * BITS[p] * ACT_BITS[p]
        return total

    def _repeat(self, key: str) -> EpisodeOutcome:
        cand = self.state.seen[key]
        return EpisodeOutcome(cand.reward, {"candidate": cand, "repeat": True})

    def _begin(self, policy: CompressionPolicy, batch: set[str] | None = None) -> Job:
        """Number the candidate and quantize it for real into the device's file."""
        self.episode += 1
        key = policy.digest()
        if key in self.state.seen:
            return Job(policy, key, done=self._repeat(key))
        if batch is not None:
            if key in batch:
                return Job(policy, key, twin=True)
            batch.add(key)
        job = Job(policy, key, self.episode, time.perf_counter())
        try:
            stem = self.ctx.workdir / f"quant-{key}"
            from hwcompress.profiling.adapters import backend_for

            # .tflite converted from the torch model, or the fp32 ONNX quantized (+ TensorRT's precision sidecar)
            job.path = backend_for(self.ctx.target).device_file(
                self.model, self.ctx.input_shape, stem, self.ctx.target, policy, self.calib_x, fp32_onnx=self.fp32_onnx,
            )
        except HwcompressError as exc:
            job.error = exc
        return job

    def _score(self, job: Job) -> float:
        assert job.path is not None
        return runtime_accuracy(job.path, self.ctx.val(), self.ctx.target.threads)

    def _rewarded(self, job: Job) -> tuple[Candidate, bool]:
        policy = job.policy
        assert job.path is not None
        q_path, measurement = job.path, job.measurement
        size = float(q_path.stat().st_size)
        bitops = self.bitops(policy)
        if self.cost == "measured":
            assert measurement is not None
            costs = Costs(
                latency=measurement.latency.median_ms, latency_budget=self.budget_ms, size=size,
                size_budget=self.ctx.size_budget, memory=float(measurement.peak_memory_bytes),
                memory_budget=self.ctx.memory_budget, latency_ref=self.latency_ref,
            )
        else:  # bit-ops proxy (HAQ)
            costs = Costs(latency=float(bitops), latency_budget=self.budget_bitops, size=size,
                          size_budget=self.ctx.size_budget, latency_ref=float(self.base_bitops))
        reward = accuracy_within_budget(job.score, costs, penalty=self.ctx.penalty, speed_weight=self.speed_weight)
        cand = Candidate(
            policy=policy, stage=self.STAGE, accuracy=job.score, macs=sum(self.layer_macs.values()), params=0,
            reward=reward, seconds=time.perf_counter() - job.t0, measurement=measurement, episode=job.episode,
        )
        job.extra.update({"onnx": str(q_path), "file_bytes": int(size), "bitops": bitops, "sha256": sha256_file(q_path)})
        return cand, within_budget(costs)

    def restore(self, records: list[dict[str, Any]]) -> None:
        """Refill from ``search.jsonl``: only stage-2 candidates of this pruned model (``base_keep``).

        After stage 1 is refitted the log also holds stage 2's candidates of the model it refitted,
        measured on other graphs; they are not candidates of this one.
        """
        ours = [r for r in records
                if r.get("stage") != "quant" or CompressionPolicy.from_dict(r["policy"]).keep == self.base_keep]
        for cand in self.state.restore(ours):
            self.episode = max(self.episode, cand.episode)
