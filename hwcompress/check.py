"""Latency regression checks for CI: record a baseline, re-measure later, decide.

``record_baseline`` measures a model ``rounds`` times (each round a fresh profiler process, cache
bypassed) -- optionally interleaved with a *reference* model -- and returns a
:class:`LatencyBaseline`.  ``run_check`` re-measures the same way and compares with a baseline
file (or an artifact's ``manifest.json``), returning a :class:`CheckResult`.

The decision rule (:func:`latency_verdict`)
-------------------------------------------
The judge's statistic (:mod:`hwcompress.judge`: the one rule of the search, ``check`` and the
benchmarks).  Unit of evidence: one *round* = one fresh profiler process; its statistic is the
round's median (or p90) latency in ms.  In *reference mode* each round profiles the model and the
reference back to back (ABBA order), and a side's figure is :func:`hwcompress.judge.pair_ratio`:
the model's fastest round over the reference's fastest round -- the device's speed without the
time a shared machine's slow spells add (a spell adds the same ~0.12 ms to every inference of a
small and a large network alike, so it does *not* cancel in a ratio: a pruned ResNet-20 at 0.44x
of the full one read 0.57x in one; the median of per-round ratios, this module's rule until
2026-12-07, then failed an unchanged small model checked in a spell against a baseline recorded
out of one).  Without a reference, a side's figure is the model's fastest round.

* point estimate ``R = figure(now) / figure(baseline)``;
* a percentile bootstrap (each of the four samples -- model and reference, now and in the
  baseline -- resampled with replacement, independently; seeded, so deterministic) gives a
  ``confidence`` interval ``[lo, hi]`` of R.  The sides whose quiet time is known from their own
  rounds (both references, the baseline's model) count at most at the top of their quiet band
  (:func:`hwcompress.judge.capped` at their fastest round), as the judge caps its reference;
* **regression iff R > 1 + tolerance AND lo > 1 + tolerance / 4**, and the reference ran at its
  recorded speed (its fastest round now at most :data:`hwcompress.judge.QUIET_BAND` slower than
  in the baseline); where it ran faster, the baseline's reference was slow and R may be overstated
  by up to that factor, so R and lo are scaled by it before they are compared (seen: a baseline
  whose reference's fastest round was 0.342 ms, 0.301 ms quiet, read an unchanged model 1.14x).  A
  check whose reference ran more than that slower than recorded ran in a slow spell (or on a slower
  machine: seen, a 1.15x slower model read 1.00x).  The spell slowed the model somewhere between not
  at all (R understated by the reference's ``speed``) and by the reference's whole added time (R
  overstated: the model's fastest round less that time, over its baseline's); the check fails only
  where the lower of these fails, passes only where R x ``speed`` is within, and is ``inconclusive``
  between.

Why both conditions: ``R > 1 + tol`` alone fires whenever noise pushes an estimate over the limit;
``lo > 1 + tol`` would miss real slowdowns of about the tolerance whenever the interval is wide.
The AND asks for a slowdown that is both *large* (the best estimate is over the limit) and *real*
(even the optimistic end of the interval is more than a quarter of the tolerance slower than the
baseline).  While the evidence does not stand -- as the judge adds pairs: the interval straddles the
limit, or no round of the reference ran at its recorded speed yet; and a failure, which stands only
on ``max_rounds`` rounds (a small model's profile can stay in its slow state through a short check:
its fastest round then reads it slower than it is) -- and ``max_rounds`` allows, the same number of
rounds again is measured and the rule applied once more to all rounds.
A result that stays over the limit but not significant is reported as ``inconclusive`` (exit 0,
with a warning): CI is not failed on noise.  Measured with ``tools/bench_check.py``:
tools/results/check.md.

Memory: median peak memory of the rounds; regression iff it exceeds the baseline's median by more
than ``memory_tolerance`` *and* by more than :data:`MEMORY_FLOOR_BYTES` (page-granularity noise of
small models).  Memory does not scale with machine speed, so it is compared in absolute terms.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from hwcompress.errors import ArtifactError, FileMissingError, UsageError
from hwcompress.fsutil import atomic_write_bytes, atomic_write_text, sha256_file
from hwcompress.judge import (
    QUIET_BAND,
    bootstrap_pairs,
    capped,
    measure_rounds,
    pair_ratio,
    round_settings,
    round_target,
)
from hwcompress.records import Manifest, Measurement, MeasureSettings, Record, RecordError, Target

if TYPE_CHECKING:
    from hwcompress.profiling.runner import Runner

log = logging.getLogger(__name__)

BASELINE_KIND = "hwcompress-latency-baseline"
METRICS: tuple[str, ...] = ("p50", "p90")
#: Peak-memory growth below this many bytes is never a regression (allocator / page noise).
MEMORY_FLOOR_BYTES = 256 * 1024
DEFAULT_CHECK_ROUNDS = 5
#: A baseline's rounds: enough for its reference's quiet state to show (10 rounds taken in one slow phase of this
#: VM never did, and every check against that baseline was inconclusive: tools/results/check.md).
DEFAULT_BASELINE_ROUNDS = 20
MIN_ROUNDS = 3
#: Reference speed outside [1/x, x] of its baseline: warn that the ratio may not carry over.
REFERENCE_DRIFT = 1.25

# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Machine(Record):
    """Where a baseline or check ran: host name, the profiler's device line, load averages."""

    hostname: str
    device: str
    os: str
    python: str
    cpu_count: int
    load_1min: float
    load_5min: float

    @classmethod
    def here(cls, device: str = "") -> Machine:
        try:
            l1, l5, _ = os.getloadavg()
        except OSError:
            l1 = l5 = -1.0
        return cls(hostname=platform.node(), device=device, os=f"{platform.system()} {platform.release()}",
                   python=platform.python_version(), cpu_count=os.cpu_count() or 0,
                   load_1min=round(l1, 2), load_5min=round(l5, 2))


@dataclass(frozen=True)
class LatencyBaseline(Record):
    """Latency and memory of one model on one target, measured over fresh-process rounds.

    ``rounds`` are the model's profiles (full statistics each); ``reference_rounds`` the
    reference model's, interleaved with them (empty without a reference).  Summary fields are the
    medians over rounds (ms, bytes); ``ratio_p50`` / ``ratio_p90`` the check's statistic, the model's
    fastest round over the reference's (:func:`hwcompress.judge.pair_ratio`; 0 without a reference).
    """

    SCHEMA: ClassVar[int] = 1

    kind: str
    model: str
    model_sha256: str
    target: Target
    rounds: tuple[Measurement, ...]
    machine: Machine
    p50_ms: float
    p90_ms: float
    peak_memory_bytes: int
    reference: str = ""
    reference_sha256: str = ""
    reference_rounds: tuple[Measurement, ...] = ()
    ratio_p50: float = 0.0
    ratio_p90: float = 0.0
    created: str = ""
    hwcompress_version: str = ""
    command: str = ""

    def __post_init__(self) -> None:
        if self.kind != BASELINE_KIND:
            raise RecordError(f"LatencyBaseline: kind is {self.kind!r}, expected {BASELINE_KIND!r}")
        if not self.rounds:
            raise RecordError("LatencyBaseline: no rounds")
        if self.reference_rounds and len(self.reference_rounds) != len(self.rounds):
            raise RecordError(
                f"LatencyBaseline: {len(self.rounds)} model rounds but {len(self.reference_rounds)} reference rounds"
            )


@dataclass(frozen=True)
class MetricVerdict(Record):
    """The decision on one metric.  ``ratio`` = now / baseline with its bootstrap interval
    [``ci_low``, ``ci_high``]; ``limit`` = 1 + tolerance; ``status``: pass | fail | inconclusive."""

    name: str
    unit: str
    baseline: float
    current: float
    ratio: float
    ci_low: float
    ci_high: float
    limit: float
    status: str
    reason: str
    n_current: int = 0
    n_baseline: int = 0
    quiet: bool = True  # the reference ran at its recorded speed (reference mode); else the check is not failed

    @property
    def regression(self) -> bool:
        return self.status == "fail"


@dataclass(frozen=True)
class CheckResult(Record):
    """Everything one check measured and decided; ``exit_code`` 0 pass, 1 regression."""

    SCHEMA: ClassVar[int] = 1

    model: str
    model_sha256: str
    target: str
    baseline_source: str
    baseline_kind: str  # "baseline" (a LatencyBaseline file) or "manifest"
    mode: str  # "reference" or "absolute"
    metric: str
    tolerance: float
    memory_tolerance: float
    confidence: float
    latency: MetricVerdict
    memory: MetricVerdict
    rounds: tuple[Measurement, ...]
    machine: Machine
    model_changed: bool
    reference: str = ""
    reference_rounds: tuple[Measurement, ...] = ()
    baseline_model_ms: float = 0.0  # the model's own fastest round (metric) in the baseline
    current_model_ms: float = 0.0
    baseline_reference_ms: float = 0.0
    current_reference_ms: float = 0.0
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0
    created: str = ""

    @property
    def regression(self) -> bool:
        return self.latency.regression or self.memory.regression

    @property
    def exit_code(self) -> int:
        return 1 if self.regression else 0


# --------------------------------------------------------------------------- parsing helpers
def parse_fraction(text: str, option: str = "--tolerance") -> float:
    """``"10%"`` or ``"0.1"`` -> 0.1; UsageError for anything else or outside [0, 10]."""
    s = text.strip()
    try:
        value = float(s[:-1]) / 100.0 if s.endswith("%") else float(s)
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a fraction; write e.g. 10% or 0.1") from None
    if not s.endswith("%") and value >= 1.0:
        raise UsageError(f"{option} {text!r} is ambiguous; write {s}% for a percentage or a fraction below 1")
    if not 0.0 <= value <= 10.0:
        raise UsageError(f"{option} {text!r} is out of range; use 0% to 1000%")
    return value


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"1,28,28"`` -> (1, 28, 28); UsageError otherwise."""
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise UsageError(f"--input-shape {text!r} is not C,H,W with three positive integers (e.g. 1,28,28)")
    return parts[0], parts[1], parts[2]


# --------------------------------------------------------------------------- statistics
def latency_verdict(
    current: Sequence[float],
    baseline: Sequence[float],
    *,
    tolerance: float,
    current_reference: Sequence[float] = (),
    baseline_reference: Sequence[float] = (),
    name: str = "latency p50",
    unit: str = "ms",
    confidence: float = 0.95,
    seed: int = 0,
) -> MetricVerdict:
    """Apply the rule of the module docstring to per-round values (ms): the model's rounds now and in
    the baseline, and in reference mode the reference's rounds beside each (one per model round).

    fail iff ratio > 1 + tolerance, ci_low > 1 + tolerance / 4 (significant) and the reference ran at
    its recorded speed; inconclusive if the ratio is over the limit but not significant, or the
    reference never ran at its recorded speed; else pass.
    """
    if bool(current_reference) != bool(baseline_reference):
        raise ValueError("latency_verdict needs reference rounds on both sides or on neither")
    if not current or not baseline:
        raise ValueError("latency_verdict needs rounds on each side")
    # the sides whose quiet time their own rounds show count at most at the top of its band, as the judge's reference
    base_m, now_r, base_r = (capped(v, min(v)) if v else [] for v in (baseline, current_reference, baseline_reference))
    point, low, high = bootstrap_pairs(current, now_r, base_m, base_r, confidence=confidence, seed=seed)
    now_fig, base_fig = pair_ratio(current, now_r), pair_ratio(base_m, base_r)
    limit = 1.0 + tolerance
    pct = f"{100 * confidence:.0f}%"
    span = f"{point:.3f}x the baseline ({pct} CI {low:.3f}-{high:.3f})"
    # the reference's fastest round now over its fastest in the baseline (a baseline's few rounds: no percentile)
    speed = min(current_reference) / min(baseline_reference) if baseline_reference else 1.0
    # the range of R the reference's speed leaves open; decided only where the whole range agrees.  A reference
    # faster now: the baseline's was slow, its figure understated by at most ``speed`` (seen in CI: a 1.89x slower
    # model beside a reference at 0.87x of its baseline's fastest).  A reference slower now: a slow spell now (or
    # a slower machine), which slowed the model between not at all (R understates by ``speed``) and by the
    # reference's whole added time (a spell adds the same ~0.12 ms to a small and a large network: R overstates)
    quiet = speed <= 1.0 + QUIET_BAND
    added = min(current_reference) - min(baseline_reference) if baseline_reference else 0.0
    if quiet:
        lower, upper = point * min(speed, 1.0), point
    else:
        lower, upper = min(point, (min(current) - added) / min(baseline)), point * speed
    if lower > limit and low * lower / point > _significant(limit):
        status, reason = "fail", f"{name} is {span}: over the {limit:.2f}x limit and significantly slower" + (
            f", even with the time a slow spell added to the reference ({added:.3f} {unit}, {speed:.2f}x its recorded "
            f"speed) taken off the model ({lower:.3f}x)" if not quiet else
            f", even with the baseline's reference taken as slow as it may have been ({speed:.2f}x)" if speed < 1 else "")
    elif upper <= limit:
        status, reason = "pass", f"{name} is {span}: " + (
            f"within the {limit:.2f}x limit even if the slow spell the reference ran in ({speed:.2f}x its recorded "
            f"speed) slowed only the reference ({upper:.3f}x)" if not quiet else
            f"slower but within the {limit:.2f}x limit" if low > 1.0 else f"within the {limit:.2f}x limit")
    elif not quiet:
        status, reason = "inconclusive", (
            f"{name} is {span}, but the reference never ran at its recorded speed (fastest round {speed:.2f}x "
            f"its baseline's): a slow spell or a slower machine, which may explain {lower:.3f}x to "
            f"{upper:.3f}x; not the device's quiet speed")
    elif speed < 1.0 / (1.0 + QUIET_BAND):
        status, reason = "inconclusive", (
            f"{name} is {span}, but the reference ran {speed:.2f}x its baseline's fastest round: the baseline was "
            "recorded in a slow spell or on a slower machine, which may explain it; record it again on a quiet one")
    else:
        status, reason = "inconclusive", (
            f"{name} is {span}: over the {limit:.2f}x limit but not significantly slower (too noisy to call)")
    return MetricVerdict(
        name=name, unit=unit, baseline=base_fig, current=now_fig,
        ratio=point, ci_low=low, ci_high=high, limit=limit, status=status, reason=reason,
        n_current=len(current), n_baseline=len(baseline), quiet=quiet,
    )


def _significant(limit: float) -> float:
    """The interval's low end must exceed this for a slowdown to count as real: a quarter of the tolerance."""
    return 1.0 + (limit - 1.0) / 4.0


def needs_more_rounds(v: MetricVerdict) -> bool:
    """Evidence that does not stand yet: the interval straddles the limit (the judge's rule), the reference has
    not run at its recorded speed yet, or a failure (a failure stands only on all of ``max_rounds``: a small
    model's profile can stay in its slow state for every round of a short check, which its fastest round cannot
    show -- seen twice in 20 same-model checks of 5 rounds, 1.46x and 1.52x, and once in 20 of 10 rounds, 1.15x:
    tools/results/check.md)."""
    return not v.quiet or v.ci_low <= v.limit < v.ci_high or v.status == "fail"


def memory_verdict(
    current_bytes: Sequence[int], baseline_bytes: Sequence[int], *, tolerance: float,
    floor_bytes: int = MEMORY_FLOOR_BYTES,
) -> MetricVerdict:
    """fail iff median(current) > median(baseline) * (1 + tolerance) and the growth > ``floor_bytes``."""
    cur = float(statistics.median(current_bytes))
    base = float(statistics.median(baseline_bytes))
    limit = 1.0 + tolerance
    ratio = cur / base if base > 0 else (1.0 if cur <= 0 else float("inf"))
    mib = 2.0**20
    text = f"peak memory {cur / mib:.2f} MiB vs {base / mib:.2f} MiB ({ratio:.3f}x)"
    if base <= 0 and cur <= 0:
        status, reason = "pass", "peak memory was not measured on this device"
    elif ratio > limit and cur - base > floor_bytes:
        status, reason = "fail", f"{text}: over the {limit:.2f}x limit"
    elif ratio > limit:
        status, reason = "pass", f"{text}: over {limit:.2f}x but only {(cur - base) / 1024:.0f} KiB more"
    else:
        status, reason = "pass", f"{text}: within the {limit:.2f}x limit"
    return MetricVerdict(
        name="peak memory", unit="bytes", baseline=base, current=cur, ratio=ratio, ci_low=ratio, ci_high=ratio,
        limit=limit, status=status, reason=reason, n_current=len(current_bytes), n_baseline=len(baseline_bytes),
    )


def metric_values(rounds: Sequence[Measurement], metric: str) -> list[float]:
    """Per-round latency for ``metric`` (p50 = median, p90), ms."""
    if metric not in METRICS:
        raise UsageError(f"--metric {metric!r}: choose one of {', '.join(METRICS)}")
    return [r.latency.median_ms if metric == "p50" else r.latency.p90_ms for r in rounds]


# --------------------------------------------------------------------------- models and baselines
@dataclass(frozen=True)
class ResolvedModel:
    """A model argument resolved to a file; ``manifest`` when it was an artifact folder with one."""

    spec: str
    path: Path
    manifest: Manifest | None = None
    manifest_path: Path | None = None


def resolve_model(
    spec: str, target: Target, *, input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
) -> ResolvedModel:
    """An .onnx/.tflite file, a built-in model name, ``package.module:factory`` or an artifact folder
    (its ``model.tflite`` for tflite targets, else ``model.onnx``; ``manifest.json`` read when present)."""
    path = Path(spec)
    if path.is_dir():
        from hwcompress.profiling.adapters import backend_for

        name = backend_for(target).artifact_file
        model = path / name
        if not model.is_file():
            raise ArtifactError(f"artifact folder {path} has no {name} (for a {target.runtime} target)")
        manifest = artifact_manifest(path)
        return ResolvedModel(spec, model, manifest, path / "manifest.json" if manifest else None)
    if spec.endswith(".tflite"):
        if not path.is_file():
            raise FileMissingError(f"model file {spec} does not exist")
        return ResolvedModel(spec, path)
    from hwcompress.pipeline import model_to_onnx

    return ResolvedModel(spec, model_to_onnx(spec, input_shape, num_classes=num_classes))


def artifact_manifest(folder: str | os.PathLike[str]) -> Manifest | None:
    """The ``manifest.json`` of an artifact folder; None when ``folder`` is not a folder, has none,
    or it is unreadable (logged as a warning)."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        return None
    try:
        return Manifest.from_dict(_read_json(path))
    except (RecordError, UsageError) as exc:
        log.warning("%s is unreadable and is ignored: %s", path, exc)
        return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FileMissingError(f"{path} cannot be read ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data


def load_baseline(path: str | os.PathLike[str]) -> LatencyBaseline | Manifest:
    """A baseline file written by ``hwcompress baseline``, or a manifest.json (a folder means its
    manifest.json).  FileMissingError, UsageError or RecordError for anything else."""
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.json"
    if not p.is_file():
        raise FileMissingError(f"baseline file {p} does not exist")
    data = _read_json(p)
    if data.get("kind") == BASELINE_KIND:
        return LatencyBaseline.from_dict(data)
    if {"result", "baseline", "target"} <= set(data):
        manifest = Manifest.from_dict(data)
        if manifest.result.measurement is None:
            raise UsageError(f"{p}: the manifest has no measured result to compare with")
        return manifest
    raise UsageError(f"{p} is neither a latency baseline (from `hwcompress baseline`) nor an artifact manifest.json")


# --------------------------------------------------------------------------- measuring
def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def _median_int(values: Sequence[int]) -> int:
    return int(statistics.median(values))


def record_baseline(
    model: ResolvedModel,
    target: Target,
    *,
    rounds: int = DEFAULT_BASELINE_ROUNDS,
    reference: ResolvedModel | None = None,
    settings: MeasureSettings | None = None,
    runner: Runner | None = None,
    command: str = "",
) -> LatencyBaseline:
    """Measure ``model`` (interleaved with ``reference`` when given) ``rounds`` times (``settings``: the
    target's judged rounds by default, :func:`hwcompress.judge.round_settings`)."""
    from hwcompress import __version__

    if rounds < MIN_ROUNDS:
        raise UsageError(f"--rounds {rounds}: a baseline needs at least {MIN_ROUNDS} rounds")
    tgt = round_target(target, settings)
    ms, rs = measure_rounds(model.path, tgt, rounds, reference=reference.path if reference else None, runner=runner)
    ratios = {m: pair_ratio(metric_values(ms, m), metric_values(rs, m)) if rs else 0.0 for m in METRICS}
    return LatencyBaseline(
        kind=BASELINE_KIND,
        model=model.spec,
        model_sha256=sha256_file(model.path),
        target=tgt,
        rounds=tuple(ms),
        machine=Machine.here(ms[0].device),
        p50_ms=statistics.median(metric_values(ms, "p50")),
        p90_ms=statistics.median(metric_values(ms, "p90")),
        peak_memory_bytes=_median_int([m.peak_memory_bytes for m in ms]),
        reference=reference.spec if reference else "",
        reference_sha256=sha256_file(reference.path) if reference else "",
        reference_rounds=tuple(rs),
        ratio_p50=ratios["p50"],
        ratio_p90=ratios["p90"],
        created=_now(),
        hwcompress_version=__version__,
        command=command,
    )


def write_baseline(baseline: LatencyBaseline, path: str | os.PathLike[str]) -> Path:
    """Write ``baseline`` as indented JSON, atomically."""
    out = Path(path)
    atomic_write_text(out, json.dumps(baseline.to_dict(), indent=1, sort_keys=False) + "\n")
    return out


@dataclass(frozen=True)
class CheckOptions:
    """Knobs of :func:`run_check` (fractions: 0.1 = 10 %)."""

    tolerance: float = 0.10
    memory_tolerance: float = 0.10
    metric: str = "p50"
    rounds: int = DEFAULT_CHECK_ROUNDS
    max_rounds: int = 4 * DEFAULT_CHECK_ROUNDS  # while the evidence is mixed; a failure stands only on all of them
    confidence: float = 0.95
    seed: int = 0
    settings: MeasureSettings | None = None  # per-round settings; default: the baseline's, else the target's rounds


def _comparable(baseline: LatencyBaseline | Manifest, target: Target) -> list[str]:
    """Warnings about a baseline taken with other settings; UsageError when the runtime differs."""
    warns: list[str] = []
    bt = baseline.target
    if bt.runtime != target.runtime:
        raise UsageError(f"the baseline was measured with {bt.runtime}, target {target.name} uses {target.runtime}")
    if bt.name != target.name:
        warns.append(f"the baseline was recorded for target {bt.name}, this check runs on {target.name}")
    if bt.threads != target.threads:
        warns.append(f"the baseline used {bt.threads} thread(s), target {target.name} uses {target.threads}")
    if bt.options != target.options:
        warns.append("the baseline's runtime options differ from the target's")
    return warns


def run_check(
    model: ResolvedModel,
    target: Target,
    baseline: LatencyBaseline | Manifest,
    *,
    baseline_source: str,
    reference: ResolvedModel | None = None,
    options: CheckOptions | None = None,
    runner: Runner | None = None,
) -> CheckResult:
    """Re-measure ``model`` (and ``reference``) and decide against ``baseline``.

    Reference mode needs a :class:`LatencyBaseline` recorded with a reference; with a manifest
    (no reference recorded) the comparison is absolute and a warning says so.  Raises UsageError
    for incompatible inputs; profiler errors propagate.
    """
    opts = options or CheckOptions()
    if opts.rounds < MIN_ROUNDS:
        raise UsageError(f"--rounds {opts.rounds}: a check needs at least {MIN_ROUNDS} rounds")
    if opts.metric not in METRICS:
        raise UsageError(f"--metric {opts.metric!r}: choose one of {', '.join(METRICS)}")
    t0 = time.perf_counter()
    warns = _comparable(baseline, target)

    if isinstance(baseline, LatencyBaseline):
        kind = "baseline"
        base_rounds, base_ref = list(baseline.rounds), list(baseline.reference_rounds)
        base_sha = baseline.model_sha256
        settings = opts.settings or baseline.target.measure
    else:
        kind = "manifest"
        assert baseline.result.measurement is not None
        base_rounds, base_ref = [baseline.result.measurement], []
        base_sha = baseline.result.measurement.model_sha256
        settings = opts.settings or round_settings(target)
        warns.append("the manifest records no reference measurement, so latency is compared in absolute terms; "
                     "reference mode is more robust (record one with `hwcompress baseline --reference`)")
        if reference is not None:
            warns.append("--reference is ignored with a manifest baseline")
            reference = None
    if reference is not None and not base_ref:
        raise UsageError(f"{baseline_source} was recorded without a reference model; record it again with "
                         "--reference, or check without --reference")
    if reference is None and base_ref:
        warns.append("the baseline has reference rounds but no --reference was given: comparing absolute latency")
        base_ref = []
    if reference is not None and isinstance(baseline, LatencyBaseline):
        ref_sha = sha256_file(reference.path)
        if ref_sha != baseline.reference_sha256:
            warns.append(f"the reference model differs from the baseline's (sha256 {ref_sha[:12]} != "
                         f"{baseline.reference_sha256[:12]}); ratios compare only if it is the same network")
    tgt = round_target(target, settings)
    model_sha = sha256_file(model.path)
    ref_path = reference.path if reference else None
    mode = "reference" if ref_path else "absolute"
    name = f"latency {opts.metric}" + (" (model/reference)" if ref_path else "")

    def decide(ms: list[Measurement], rs: list[Measurement]) -> MetricVerdict:
        return latency_verdict(metric_values(ms, opts.metric), metric_values(base_rounds, opts.metric),
                               current_reference=metric_values(rs, opts.metric),
                               baseline_reference=metric_values(base_ref, opts.metric), tolerance=opts.tolerance,
                               name=name, unit="ratio" if ref_path else "ms", confidence=opts.confidence,
                               seed=opts.seed)

    ms, rs = measure_rounds(model.path, tgt, opts.rounds, reference=ref_path, runner=runner)
    verdict = decide(ms, rs)
    while needs_more_rounds(verdict) and len(ms) < opts.max_rounds:
        more = min(opts.rounds, opts.max_rounds - len(ms))
        log.info("%s: mixed evidence after %d rounds; measuring %d more", verdict.name, len(ms), more)
        m2, r2 = measure_rounds(model.path, tgt, more, reference=ref_path, runner=runner, start=len(ms))
        ms, rs = ms + m2, rs + r2
        verdict = decide(ms, rs)
    if verdict.status == "inconclusive":
        warns.append(f"{verdict.reason}; not failing the check on noise — re-run on a quieter machine or with more --rounds")
    mem = memory_verdict([m.peak_memory_bytes for m in ms], [m.peak_memory_bytes for m in base_rounds],
                         tolerance=opts.memory_tolerance)
    base_device = base_rounds[0].device
    if mode == "absolute" and base_device != ms[0].device:
        warns.append(f"absolute latency compared across machines: the baseline ran on '{base_device}', this check "
                     f"on '{ms[0].device}'; use --reference to cancel machine speed")
    base_ref_ms = min(metric_values(base_ref, opts.metric)) if base_ref else 0.0
    ref_ms = min(metric_values(rs, opts.metric)) if rs else 0.0
    if base_ref_ms and ref_ms:
        speed = ref_ms / base_ref_ms
        if not 1 / REFERENCE_DRIFT <= speed <= REFERENCE_DRIFT:
            warns.append(f"the reference ran {speed:.2f}x its baseline time"
                         + ("" if base_device == ms[0].device else f" (baseline on '{base_device}', now '{ms[0].device}')")
                         + ": a different machine or a busy one; model/reference ratios carry over only as far as the "
                         "two networks spend their time alike — record the baseline on this machine class")
    for w in warns:
        log.warning("%s", w)
    return CheckResult(
        model=model.spec,
        model_sha256=model_sha,
        target=target.name,
        baseline_source=baseline_source,
        baseline_kind=kind,
        mode=mode,
        metric=opts.metric,
        tolerance=opts.tolerance,
        memory_tolerance=opts.memory_tolerance,
        confidence=opts.confidence,
        latency=verdict,
        memory=mem,
        rounds=tuple(ms),
        machine=Machine.here(ms[0].device if ms else ""),
        model_changed=model_sha != base_sha,
        reference=reference.spec if reference else "",
        reference_rounds=tuple(rs),
        baseline_model_ms=min(metric_values(base_rounds, opts.metric)),
        current_model_ms=min(metric_values(ms, opts.metric)),
        baseline_reference_ms=base_ref_ms,
        current_reference_ms=ref_ms,
        warnings=tuple(warns),
        seconds=time.perf_counter() - t0,
        created=_now(),
    )


# --------------------------------------------------------------------------- JUnit
def junit_xml(result: CheckResult) -> bytes:
    """JUnit XML: ``<testsuites>`` holding one ``<testsuite>`` with a testcase per metric
    (latency, memory); a regression is a ``<failure>``, an inconclusive latency a ``<system-err>`` note."""
    import xml.etree.ElementTree as ET

    cases = (result.latency, result.memory)
    failures = sum(v.regression for v in cases)
    suite_name = f"hwcompress check {Path(result.model).name} on {result.target}"
    root = ET.Element("testsuites", name="hwcompress check", tests=str(len(cases)), failures=str(failures),
                      errors="0", time=f"{result.seconds:.3f}")
    suite = ET.SubElement(root, "testsuite", name=suite_name, tests=str(len(cases)), failures=str(failures),
                          errors="0", skipped="0", time=f"{result.seconds:.3f}", timestamp=result.created,
                          hostname=result.machine.hostname)
    props = ET.SubElement(suite, "properties")
    for key, val in (("model", result.model), ("model_sha256", result.model_sha256), ("target", result.target),
                 ("baseline", result.baseline_source), ("mode", result.mode), ("metric", result.metric),
                 ("reference", result.reference), ("rounds", str(len(result.rounds))),
                 ("tolerance", f"{result.tolerance:g}"), ("memory_tolerance", f"{result.memory_tolerance:g}"),
                 ("device", result.machine.device), ("load_1min", f"{result.machine.load_1min:g}")):
        ET.SubElement(props, "property", name=key, value=val)
    per_case = result.seconds / len(cases)
    classname = f"hwcompress.check.{result.target}"
    for v in cases:
        case = ET.SubElement(suite, "testcase", classname=classname, name=f"{v.name} {Path(result.model).name}",
                             time=f"{per_case:.3f}")
        if v.regression:
            fail = ET.SubElement(case, "failure", message=v.reason, type="LatencyRegression"
                                 if v is result.latency else "MemoryRegression")
            fail.text = _case_details(result, v)
        else:
            out = ET.SubElement(case, "system-out")
            out.text = _case_details(result, v)
            if v.status == "inconclusive":
                ET.SubElement(case, "system-err").text = v.reason
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _case_details(result: CheckResult, v: MetricVerdict) -> str:
    fmt = "{:.0f}" if v.unit == "bytes" else "{:.6g}"
    lines = [v.reason, f"baseline {fmt.format(v.baseline)} {v.unit}, now {fmt.format(v.current)} {v.unit}, "
                       f"ratio {v.ratio:.4f} [{v.ci_low:.4f}, {v.ci_high:.4f}], limit {v.limit:.4f}, "
                       f"rounds {v.n_current} now / {v.n_baseline} baseline"]
    if v is result.latency and result.mode == "reference":
        lines.append(f"model {result.baseline_model_ms:.4f} -> {result.current_model_ms:.4f} ms, reference "
                     f"{result.baseline_reference_ms:.4f} -> {result.current_reference_ms:.4f} ms")
    lines += [f"warning: {w}" for w in result.warnings]
    return "\n".join(lines)


def write_junit(result: CheckResult, path: str | os.PathLike[str]) -> Path:
    """Write :func:`junit_xml` atomically after checking that it parses back."""
    import xml.etree.ElementTree as ET

    data = junit_xml(result)
    ET.fromstring(data)  # never publish a report CI cannot read
    out = Path(path)
    atomic_write_bytes(out, data)
    return out
