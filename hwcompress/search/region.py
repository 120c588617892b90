"""Stage 1's feasible region: which keep ratios the agent may choose, and what they will cost.

A region answers three questions for :class:`~hwcompress.search.envs.PruneEnv` (AMC's action wall)
and for the search's winner projection:

- ``choices(i)``: the keep ratios offered to group ``i`` — counts on the target's channel
  multiple, at least ``lower_bound``, and (on the measured table) only counts that are *fast*: a
  count the table shows no faster than a larger one is never offered (the kernels' blocking
  makes some unaligned counts slower than wider aligned ones);
- ``predict(keep)``: the candidate's latency (ms; MACs for the proxy region);
- ``observe(keep, ms)``: a full-model measurement of the search, which refits the residual.

:class:`TableRegion` predicts from the per-layer latency table measured on the target
(:mod:`hwcompress.latency`): ``alpha_p + beta_p * sum of the candidate's units`` at each uniform
precision ``p`` the table holds, each residual refitted (Theil-Sen) on the baseline and every
candidate measured at ``p``; a candidate is built in the precision predicted fastest for it.  :class:`CostRegion` is the fallback where no table can be built
(runtimes whose profiler has no batch mode on ONNX files: LiteRT, TensorRT): each layer's measured
share of the baseline scaled by its MACs ratio (:class:`~hwcompress.search.latency_model.LatencyModel`),
or MACs alone for ``--cost flops``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from pathlib import Path

    from torch import nn

    from hwcompress.latency.graph import LayerTemplate
    from hwcompress.latency.table import LatencyTable
    from hwcompress.profiling.cache import MeasurementCache
    from hwcompress.prune import PruneGroup
    from hwcompress.records import LayerInfo, Target
    from hwcompress.search.latency_model import LatencyModel


class Region(Protocol):
    """What the action wall and the projection need (see the module docstring)."""

    limit: float  # predict() must stay within this (ms, or MACs); inf: no wall
    precisions: tuple[str, ...]  # the uniform precisions a candidate may be built in

    def choices(self, i: int) -> np.ndarray: ...

    def predict(self, keep: np.ndarray) -> float: ...

    def predict_at(self, keep: np.ndarray, precision: str) -> float: ...

    def precision_for(self, keep: np.ndarray) -> str: ...

    def wall_limit(self) -> float: ...

    def observe(self, keep: np.ndarray, measured: float, precision: str = "fp32") -> float: ...

    def scale(self, keep: np.ndarray, limit: float, steps: int = 24) -> np.ndarray: ...

    def project(self, keep: np.ndarray, limit: float) -> np.ndarray: ...

    def within(self, tolerance: float = 0.10) -> tuple[int, int]: ...


def keep_choices(channels: int, multiple: int, lower_bound: float) -> np.ndarray:
    """Keep ratios of a group of ``channels`` whose counts lie on ``multiple``, >= ``lower_bound``
    (the lowest count if none is), ascending; 1.0 always included."""
    c = max(int(channels), 1)
    m = min(max(1, multiple), c)
    counts = np.arange(m, c + 1, m)
    if counts[-1] != c:
        counts = np.append(counts, c)
    ratios = counts / c
    ok = ratios[ratios >= min(lower_bound - 1e-9, ratios[-1])]
    return np.asarray(ok if ok.size else ratios[:1], dtype=np.float64)


BAND_PRIOR = 0.10  # the wall's error band before the region has seen a measurement
BAND_RANGE = (0.02, 0.15)  # ... and the range of the observed one (median |error| of recent predictions)
BAND_WINDOW = 20


class _Base(abc.ABC):
    """Choices on the channel multiple; a projection that keeps a candidate's shape; the wall's limit."""

    exact = False  # predictions carry no error (MACs): the wall holds them to the limit itself

    def __init__(self, channels: Sequence[int], *, multiple: int, lower_bound: float, limit: float) -> None:
        self.channels = [int(c) for c in channels]
        self.multiple = max(1, int(multiple))
        self.lower_bound = lower_bound
        self.limit = limit
        self._choices = [keep_choices(c, self.multiple, lower_bound) for c in self.channels]
        self.errors: list[float] = []  # relative error of each prediction before its measurement refitted

    def choices(self, i: int) -> np.ndarray:
        return self._choices[i]

    def wall_limit(self) -> float:
        """What the action wall holds predictions to: ``limit`` widened by the predictor's error band
        (the median |relative error| of its last predictions, within ``BAND_RANGE``), so that a
        candidate the predictor cannot tell from within is measured rather than walled off; the
        measurement, the reward's penalty and the judge decide it."""
        if self.exact or not np.isfinite(self.limit):
            return self.limit
        recent = [abs(e) for e in self.errors[-BAND_WINDOW:]]
        band = float(np.median(recent)) if recent else BAND_PRIOR
        return self.limit * (1.0 + min(max(band, BAND_RANGE[0]), BAND_RANGE[1]))

    @abc.abstractmethod
    def predict(self, keep: np.ndarray) -> float:
        """The candidate's predicted cost."""

    def snap(self, keep: np.ndarray) -> np.ndarray:
        """Each ratio moved to the largest offered choice not above it (the smallest if none)."""
        out = np.empty(len(self.channels))
        for i, k in enumerate(np.asarray(keep, dtype=np.float64)):
            ch = self._choices[i]
            below = ch[ch <= k + 1e-9]
            out[i] = below[-1] if below.size else ch[0]
        return out

    def project(self, keep: np.ndarray, limit: float) -> np.ndarray:
        """``keep`` (snapped to the choices) taken down one group by one choice at a time until its
        prediction is within ``limit``, keeping its shape: each time the move that leaves its group the
        largest share of the width it started with, among the moves predicted to save time (ties: the
        larger saving; where no move saves, the least costly).  A candidate judged just over loses a
        little and keeps the rest of its shape; scaling every group down together would take each
        coarse group (a 16-channel layer offers 8 or 16) a whole choice down at once (resnet-20 at
        0.7x: a 0.72x candidate so scaled was predicted at 0.35x).  The floor (every group at its
        lowest choice) when nothing is within."""
        k = self.snap(np.asarray(keep, dtype=np.float64))
        width = np.maximum(k, 1e-9)
        cur = self.predict(k)
        while cur > limit:
            moves = []
            for i, ch in enumerate(self._choices):
                lower = ch[ch < k[i] - 1e-9]
                if lower.size:
                    t = k.copy()
                    t[i] = lower[-1]
                    p = self.predict(t)
                    moves.append((p < cur, t[i] / width[i] if p < cur else 0.0, cur - p, t, p))
            if not moves:
                break
            *_, k, cur = max(moves, key=lambda m: m[:3])
        return k

    def scale(self, keep: np.ndarray, limit: float, steps: int = 24) -> np.ndarray:
        """``keep`` scaled down as a whole (``max(lower_bound, s * keep)``, snapped to the choices) to the
        largest ``s`` whose prediction is within ``limit``; the floor when none is (uniform pruning:
        ``scale(ones, limit)``)."""
        from hwcompress.baselines import largest_within

        keep = np.asarray(keep, dtype=np.float64)

        def at(s: float) -> np.ndarray:
            return self.snap(np.maximum(keep * s, self.lower_bound))

        s = largest_within(lambda s: self.predict(at(s)), limit, 0.0, 1.0, steps=steps,
                           cost_hi=self.predict(at(1.0)))
        return at(s if s is not None else 0.0)


class _Fit:
    """``alpha + beta * x`` fitted (Theil-Sen) on the points measured at one precision."""

    def __init__(self, x0: float, y0: float) -> None:
        self.x, self.y = [x0], [y0]
        self.alpha, self.beta = 0.0, y0 / max(x0, 1e-12)

    def add(self, x: float, y: float) -> None:
        from hwcompress.latency.predictor import theil_sen

        self.x.append(x)
        self.y.append(y)
        xs, ys = np.array(self.x), np.array(self.y)
        if np.ptp(xs) > 1e-12:
            alpha, beta = theil_sen(xs, ys)
            if beta > 0:  # else: measurements too noisy for a slope yet, keep the last line
                self.alpha, self.beta = alpha, beta

    def __call__(self, x: float) -> float:
        return self.alpha + self.beta * x


class TableRegion(_Base):
    """The measured table's region (see the module docstring), at every uniform precision the table
    holds: a candidate is predicted at each (``alpha_p + beta_p * its units at p``, one residual per
    precision, starting from the baseline measured at it) and built in the fastest
    (:meth:`precision_for`); small pruned models often run *slower* in int8 than in fp32 (the
    Quantize/Dequantize pairs around each layer stay while the convs shrink)."""

    def __init__(
        self,
        table: LatencyTable,
        templates: Sequence[LayerTemplate],
        groups: Sequence[PruneGroup],
        *,
        multiple: int,
        lower_bound: float,
        limit: float,
        baseline_ms: dict[str, float],
    ) -> None:
        super().__init__([g.channels for g in groups], multiple=multiple, lower_bound=lower_bound, limit=limit)
        self.table, self.templates, self.groups = table, list(templates), list(groups)
        self.precisions = tuple(baseline_ms)
        full = np.ones(len(self.groups))
        self._fits = {p: _Fit(self.feature(full, p), float(ms)) for p, ms in baseline_ms.items()}
        self._choices = [self._fast(i) for i in range(len(self.groups))]

    def counts(self, keep: np.ndarray) -> dict[int, int]:
        from hwcompress.prune import keep_count

        return {g.index: keep_count(g.channels, float(min(max(k, 1e-6), 1.0)), self.multiple)
                for g, k in zip(self.groups, keep, strict=True)}

    def feature(self, keep: np.ndarray, precision: str) -> float:
        """The table's sum for the candidate with every weight layer at ``precision`` (ms)."""
        prec = {t.module: precision for t in self.templates if t.module} if precision != "fp32" else None
        return self.table.total_ms(self.templates, self.counts(keep), prec)

    def predict_at(self, keep: np.ndarray, precision: str) -> float:
        """The prediction in ms with every layer at ``precision`` (nan for a precision the table lacks)."""
        fit = self._fits.get(precision)
        return fit(self.feature(keep, precision)) if fit is not None else float("nan")

    def precision_for(self, keep: np.ndarray) -> str:
        return min(self.precisions, key=lambda p: self.predict_at(keep, p))

    def predict(self, keep: np.ndarray) -> float:
        return min(self.predict_at(keep, p) for p in self.precisions)

    def observe(self, keep: np.ndarray, measured: float, precision: str = "fp32") -> float:
        err = (self.predict_at(keep, precision) - measured) / measured
        self.errors.append(err)
        self._fits[precision].add(self.feature(keep, precision), float(measured))
        return err

    def within(self, tolerance: float = 0.10) -> tuple[int, int]:
        """(predictions within ``tolerance`` of the measurement that followed, predictions made)."""
        return sum(abs(e) <= tolerance for e in self.errors), len(self.errors)

    def _fast(self, i: int) -> np.ndarray:
        """Group ``i``'s choices predicted (other groups unpruned) faster than every larger choice."""
        base = keep_choices(self.channels[i], self.multiple, self.lower_bound)
        keep = np.ones(len(self.groups))
        times = []
        for r in base:
            keep[i] = r
            times.append(self.predict(keep))
        out = [r for j, r in enumerate(base) if j == len(base) - 1 or times[j] < min(times[j + 1:])]
        return np.asarray(out, dtype=np.float64)


class CostRegion(_Base):
    """Where no table exists: :class:`LatencyModel` (measured per-layer shares x MACs ratios,
    refitted on the search's measurements), or MACs for the ``--cost flops`` proxy."""

    def __init__(self, model: LatencyModel, channels: Sequence[int], *, multiple: int, lower_bound: float,
                 limit: float, macs_only: bool = False, precision: str = "fp32") -> None:
        super().__init__(channels, multiple=multiple, lower_bound=lower_bound, limit=limit)
        self.model = model
        self.macs_only = self.exact = macs_only
        self.precisions: tuple[str, ...] = (precision,)
        self.errors = model.errors

    def precision_for(self, keep: np.ndarray) -> str:
        return self.precisions[0]

    def predict(self, keep: np.ndarray) -> float:
        return self.model.cost.macs(keep) if self.macs_only else self.model.predict(keep)

    def predict_at(self, keep: np.ndarray, precision: str) -> float:
        """The prediction in ms at ``precision``; nan where there is none (MACs, another precision)."""
        return float("nan") if self.macs_only or precision not in self.precisions else self.model.predict(keep)

    def observe(self, keep: np.ndarray, measured: float, precision: str = "fp32") -> float:
        return 0.0 if self.macs_only else self.model.observe(keep, measured)

    def within(self, tolerance: float = 0.10) -> tuple[int, int]:
        return self.model.within(tolerance)


def build_table_region(
    model: nn.Module,
    input_shape: tuple[int, ...],
    target: Target,
    *,
    base_onnx: Path,
    baseline_ms: dict[str, float],
    limit: float,
    lower_bound: float,
    workdir: Path,
    cache: MeasurementCache | None = None,
    groups: Sequence[PruneGroup] | None = None,
    rows: Sequence[LayerInfo] | None = None,
) -> TableRegion:
    """Stage 1's :class:`TableRegion` of ``model`` on ``target``, outside a search (the search's stage 1
    and ``tools/bench_compare.py``'s knapsack row build it the same way).

    ``base_onnx``: the unpruned model exported at ``input_shape`` (its graph's units are timed);
    ``baseline_ms``: each precision the region may build a candidate in -> the unpruned model's
    measured latency at it (ms; ``{"fp32": ms}`` for fp32 only), where each residual starts;
    ``limit`` (ms, inf for none) and ``lower_bound`` (smallest keep ratio offered) as in
    :class:`TableRegion`.  The table is measured on the target at the counts the channel multiple
    allows (``plan_grid``), every entry looked up in ``cache`` first and stored there; ``workdir``
    holds the entries' one-unit models while they are measured.  ``groups`` / ``rows``
    (:func:`~hwcompress.prune.prunable_groups` / :func:`~hwcompress.prune.layer_table` of ``model``)
    where the caller has them.  The built table is ``region.table`` (its ``measured``, ``cached``
    and ``seconds`` say what the build cost).  ``workdir`` is made if missing.
    """
    from hwcompress.latency.graph import extract_templates
    from hwcompress.latency.table import build_table, plan_grid
    from hwcompress.prune import layer_table, prunable_groups

    workdir.mkdir(parents=True, exist_ok=True)
    groups = list(groups) if groups is not None else prunable_groups(model, input_shape)
    rows = list(rows) if rows is not None else layer_table(model, input_shape)
    templates = extract_templates(base_onnx, {r.name: r.group for r in rows})
    grid = plan_grid(templates, {g.index: g.channels for g in groups}, target.channel_multiple)
    table = build_table(templates, grid, target, cache=cache, precisions=tuple(baseline_ms), workdir=workdir)
    return TableRegion(table, templates, groups, multiple=target.channel_multiple, lower_bound=lower_bound,
                       limit=limit, baseline_ms=baseline_ms)
