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
(:mod:`hwcompress.latency`): ``alpha + beta * sum of the candidate's units``, at the precision the
candidates are measured in, with ``alpha``/``beta`` refitted (Theil-Sen) on the baseline and every
candidate measured in this search.  :class:`CostRegion` is the fallback where no table can be built
(runtimes whose profiler has no batch mode on ONNX files: LiteRT, TensorRT): each layer's measured
share of the baseline scaled by its MACs ratio (:class:`~hwcompress.search.latency_model.LatencyModel`),
or MACs alone for ``--cost flops``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from hwcompress.latency.predictor import TablePredictor
    from hwcompress.prune import PruneGroup
    from hwcompress.search.latency_model import LatencyModel


class Region(Protocol):
    """What the action wall and the projection need (see the module docstring)."""

    limit: float  # predict() must stay within this (ms, or MACs); inf: no wall

    def choices(self, i: int) -> np.ndarray: ...

    def predict(self, keep: np.ndarray) -> float: ...

    def observe(self, keep: np.ndarray, measured: float) -> float: ...

    def project(self, keep: np.ndarray, limit: float, steps: int = 24) -> np.ndarray: ...

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


class _Base:
    """Choices on the channel multiple; a projection that keeps a candidate's shape."""

    def __init__(self, channels: Sequence[int], *, multiple: int, lower_bound: float, limit: float) -> None:
        self.channels = [int(c) for c in channels]
        self.multiple = max(1, int(multiple))
        self.lower_bound = lower_bound
        self.limit = limit
        self._choices = [keep_choices(c, self.multiple, lower_bound) for c in self.channels]

    def choices(self, i: int) -> np.ndarray:
        return self._choices[i]

    def predict(self, keep: np.ndarray) -> float:
        raise NotImplementedError

    def snap(self, keep: np.ndarray) -> np.ndarray:
        """Each ratio moved to the largest offered choice not above it (the smallest if none)."""
        out = np.empty(len(self.channels))
        for i, k in enumerate(np.asarray(keep, dtype=np.float64)):
            ch = self._choices[i]
            below = ch[ch <= k + 1e-9]
            out[i] = below[-1] if below.size else ch[0]
        return out

    def project(self, keep: np.ndarray, limit: float, steps: int = 24) -> np.ndarray:
        """``keep`` scaled down as a whole (``max(lower_bound, s * keep)``, snapped to the choices;
        each group keeps its share of the shape) to the largest ``s`` whose prediction is within
        ``limit``; the floor (every group at its lowest choice) when none is."""
        from hwcompress.baselines import largest_within

        keep = np.asarray(keep, dtype=np.float64)

        def at(s: float) -> np.ndarray:
            return self.snap(np.maximum(keep * s, self.lower_bound))

        s = largest_within(lambda s: self.predict(at(s)), limit, 0.0, 1.0, steps=steps,
                           cost_hi=self.predict(at(1.0)))
        return at(s if s is not None else 0.0)


class TableRegion(_Base):
    """The measured table's region: see the module docstring."""

    def __init__(
        self,
        predictor: TablePredictor,
        groups: Sequence[PruneGroup],
        *,
        multiple: int,
        lower_bound: float,
        limit: float,
        baseline_ms: float,
        precision: str = "fp32",
    ) -> None:
        super().__init__([g.channels for g in groups], multiple=multiple, lower_bound=lower_bound, limit=limit)
        self.predictor = predictor
        self.groups = list(groups)
        self.precision = precision
        self._precisions = ({t.module: precision for t in predictor.templates if t.module}
                            if precision != "fp32" else None)
        full = np.ones(len(self.groups))
        self._x: list[float] = [self.feature(full)]
        self._y: list[float] = [float(baseline_ms)]
        self.errors: list[float] = []  # relative error of each prediction before its measurement refitted
        self._refit()
        self._choices = [self._fast(i) for i in range(len(self.groups))]

    def counts(self, keep: np.ndarray) -> dict[int, int]:
        from hwcompress.prune import keep_count

        return {g.index: keep_count(g.channels, float(min(max(k, 1e-6), 1.0)), self.multiple)
                for g, k in zip(self.groups, keep, strict=True)}

    def feature(self, keep: np.ndarray) -> float:
        return self.predictor.feature(self.counts(keep), self._precisions)

    def predict(self, keep: np.ndarray) -> float:
        return self.predictor.alpha + self.predictor.beta * self.feature(keep)

    def observe(self, keep: np.ndarray, measured: float) -> float:
        err = (self.predict(keep) - measured) / measured
        self.errors.append(err)
        self._x.append(self.feature(keep))
        self._y.append(float(measured))
        self._refit()
        return err

    def within(self, tolerance: float = 0.10) -> tuple[int, int]:
        """(predictions within ``tolerance`` of the measurement that followed, predictions made)."""
        return sum(abs(e) <= tolerance for e in self.errors), len(self.errors)

    def _refit(self) -> None:
        from hwcompress.latency.predictor import theil_sen

        x, y = np.array(self._x), np.array(self._y)
        if len(x) < 2 or np.ptp(x) <= 1e-12:  # the baseline alone: its measurement over the table's sum
            self.predictor.alpha, self.predictor.beta = 0.0, float(y[0] / max(x[0], 1e-12))
        else:
            alpha, beta = theil_sen(x, y)
            if beta <= 0:  # measurements too noisy for a slope yet: proportional through the baseline
                alpha, beta = 0.0, float(y[0] / max(x[0], 1e-12))
            self.predictor.alpha, self.predictor.beta = alpha, beta
        self.predictor.fitted_on = len(x)

    def _fast(self, i: int) -> np.ndarray:
        """Group ``i``'s choices whose table time (other groups unpruned) is below every larger choice's."""
        base = keep_choices(self.channels[i], self.multiple, self.lower_bound)
        keep = np.ones(len(self.groups))
        times = []
        for r in base:
            keep[i] = r
            times.append(self.feature(keep))
        out = [r for j, r in enumerate(base) if j == len(base) - 1 or times[j] < min(times[j + 1:])]
        return np.asarray(out, dtype=np.float64)


class CostRegion(_Base):
    """Where no table exists: :class:`LatencyModel` (measured per-layer shares x MACs ratios,
    refitted on the search's measurements), or MACs for the ``--cost flops`` proxy."""

    def __init__(self, model: LatencyModel, channels: Sequence[int], *, multiple: int, lower_bound: float,
                 limit: float, macs_only: bool = False) -> None:
        super().__init__(channels, multiple=multiple, lower_bound=lower_bound, limit=limit)
        self.model = model
        self.macs_only = macs_only
        self.errors = model.errors

    def predict(self, keep: np.ndarray) -> float:
        return self.model.cost.macs(keep) if self.macs_only else self.model.predict(keep)

    def observe(self, keep: np.ndarray, measured: float) -> float:
        return 0.0 if self.macs_only else self.model.observe(keep, measured)

    def within(self, tolerance: float = 0.10) -> tuple[int, int]:
        return self.model.within(tolerance)
