"""The search's own records: its budget, fixed once, and what each stage reports.

``RUN_DIR/budget.json`` (:class:`Budget`), ``RUN_DIR/stage1.json`` (:class:`Stage1Report`) and
``RUN_DIR/stage2.json`` (:class:`Stage2Report`) are written atomically when each is final; a
resumed search reads them back and refuses files of another schema.  Every figure the search
measures once and builds on (the baseline, the budget, the precisions' speed) is kept the same way,
by :func:`kept`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hwcompress.fsutil import atomic_write_text
from hwcompress.judge import Verdict
from hwcompress.records import Candidate, CompressionPolicy, Record
from hwcompress.search.budget import parse_budget

T = TypeVar("T")


def kept(path: Path, reuse: bool, compute: Callable[[], T], dump: Callable[[T], dict[str, Any]],
         load: Callable[[dict[str, Any]], T]) -> T:
    """``compute()``, resolved once per search and kept in ``path``: a resumed search (``reuse``) reads it back
    instead of measuring it again, so what was built on it before the interruption (the region's
    precisions, the agent's action order, the candidates' scale) still holds after."""
    if reuse and path.is_file():
        return load(json.loads(path.read_text()))
    value = compute()
    atomic_write_text(path, json.dumps(dump(value), indent=2))
    return value


@dataclass(frozen=True)
class Budget(Record):
    """The search's budgets, resolved once against the baseline measured at its start.

    ``limit`` is what the judge holds the result to: a ratio to the baseline profiled beside it for
    a relative budget (``0.5x`` -> 0.5), milliseconds for an absolute one.  ``aim`` is ``limit``
    less the guard band: stage winners are judged at it, so that the final verdict at ``limit``,
    on fresh profiles, still holds.  ``aim_ms`` is the same on the scale of one measurement in
    this search (the baseline's ``baseline_ms``): candidates' readings and the action wall use it.
    """

    spec: str
    relative: bool
    baseline_ms: float
    latency_ms: float
    limit: float
    aim: float
    aim_ms: float
    guard: float
    size_bytes: float | None = None
    memory_bytes: float | None = None

    @classmethod
    def resolve(cls, spec: str, baseline_ms: float, guard: float, *, size_bytes: float | None = None,
                memory_bytes: float | None = None) -> Budget:
        b = parse_budget(spec, "--latency-budget")
        latency_ms = b.resolve(baseline_ms)
        relative = b.ratio is not None
        limit = float(b.ratio) if b.ratio is not None else latency_ms
        return cls(spec=spec, relative=relative, baseline_ms=baseline_ms, latency_ms=latency_ms, limit=limit,
                   aim=limit * (1.0 - guard), aim_ms=latency_ms * (1.0 - guard), guard=guard,
                   size_bytes=size_bytes, memory_bytes=memory_bytes)


@dataclass(frozen=True)
class Judged(Record):
    """One candidate judged beside the baseline: how it was chosen, its reading in the search, the verdict."""

    policy: str  # digest
    how: str  # ranked (by reward, among the candidates) | projected (onto the predictor's region) | earlier stage (the same model, judged in stage 1)
    reading_ms: float
    verdict: Verdict


@dataclass(frozen=True)
class Stage1Report(Record):
    """Stage 1's outcome.  ``planned``: the uniform precisions candidates could be built in (fp32 and,
    when a measured stage 2 follows, each lower one the judge confirmed at most 0.95x fp32 on the baseline); each
    candidate was built in the one the region predicted fastest for it; ``precision``: the winner's
    (stage 2 starts from it).  ``region``: table | cost | macs (see :mod:`hwcompress.search.region`)."""

    policy: CompressionPolicy
    best: Candidate | None
    within: bool
    precision: str
    planned: tuple[str, ...]
    precision_ratios: dict[str, float]
    region: str
    candidates: int
    failures: int
    predictions_within_10pct: tuple[int, int] = (0, 0)
    table: dict[str, float] = field(default_factory=dict)  # entries, measured, cached, seconds
    judged: tuple[Judged, ...] = ()

    def winner_verdict(self) -> Verdict | None:
        """The judge's (last) verdict on the winner; None when the winner was not judged."""
        if self.best is None:
            return None
        digest = self.best.policy.digest()
        return next((j.verdict for j in reversed(self.judged) if j.policy == digest), None)


@dataclass(frozen=True)
class Stage2Report(Record):
    """Stage 2's outcome: the precision policy, its judged winner, the measured precision ratios
    of the pruned model (the order of the agent's action axis)."""

    policy: CompressionPolicy
    best: Candidate | None
    within: bool
    fp32_ms: float
    precision_ratios: dict[str, float]
    action_order: tuple[str, ...]
    predictor: str  # table | ratios (what the action wall predicts mixes with)
    candidates: int
    failures: int
    judged: tuple[Judged, ...] = ()
