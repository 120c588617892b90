"""A latency model fitted to the search's own measurements: the region's predictor where no
latency table can be built (:class:`hwcompress.search.region.CostRegion`), and the MACs model
the latency table is compared with (``hwcompress latency-model``).

Per layer ``l``, a candidate's MACs are ``macs_l * prod_g keep_g ** e[l, g]`` where the exponents
``e`` are found once by probing each prunable group (1 for a layer whose input *or* output
channels the group prunes, 2 for both, 1 for a depthwise conv). Latency is then modelled as

    latency_ms = overhead + scale * sum_l time_l * macs_ratio_l

with ``time_l`` the layer's measured share of the baseline's latency (per-node profiling on the
target; MACs shares when no per-node timing exists). ``overhead`` and ``scale`` start from the
baseline (prior) and are refitted by ridge regression towards that prior after every measured
candidate, so the model follows what the device really does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LayerCostModel:
    """How each layer's MACs scale with the keep ratio of each prunable group."""

    layer_names: list[str]
    base_macs: np.ndarray  # (L,) MACs of the unpruned model
    exponents: np.ndarray  # (L, G)
    times_ms: np.ndarray  # (L,) share of the baseline's measured latency attributed to each layer

    def macs_ratio(self, keep: np.ndarray) -> np.ndarray:
        """(L,) MACs of each layer relative to the baseline for per-group keep ratios ``keep`` (G,)."""
        keep = np.clip(np.asarray(keep, dtype=np.float64), 1e-6, 1.0)
        return np.exp(self.exponents @ np.log(keep))

    def macs(self, keep: np.ndarray) -> float:
        return float(self.base_macs @ self.macs_ratio(keep))

    def feature(self, keep: np.ndarray) -> float:
        """Predicted ms of the layers alone, before the fitted scale."""
        return float(self.times_ms @ self.macs_ratio(keep))


def estimate_exponents(base_macs: np.ndarray, probe_macs: np.ndarray, probe_keep: np.ndarray) -> np.ndarray:
    """Exponents from probes: ``probe_macs[g]`` = per-layer MACs with only group g kept at ``probe_keep[g]``."""
    n_layers, n_groups = base_macs.shape[0], probe_macs.shape[0]
    exps = np.zeros((n_layers, n_groups))
    for g in range(n_groups):
        k = float(probe_keep[g])
        if not 0.0 < k < 1.0:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(base_macs > 0, probe_macs[g] / base_macs, 1.0)
        ratio = np.clip(ratio, 1e-9, None)
        exps[:, g] = np.round(np.log(ratio) / math.log(k), 2)
    return np.clip(exps, 0.0, 2.0)


@dataclass
class LatencyModel:
    """``overhead + scale * feature`` with a ridge prior at the baseline; units: ms."""

    cost: LayerCostModel
    baseline_ms: float
    ridge: float = 1.0
    overhead: float = field(init=False)
    scale: float = field(init=False)
    _x: list[float] = field(default_factory=list, init=False)
    _y: list[float] = field(default_factory=list, init=False)
    errors: list[float] = field(default_factory=list, init=False)  # relative errors on unseen candidates

    def __post_init__(self) -> None:
        layers_ms = float(self.cost.times_ms.sum())
        self._prior = np.array([max(self.baseline_ms - layers_ms, 0.0), 1.0])
        self.overhead, self.scale = float(self._prior[0]), float(self._prior[1])

    def predict(self, keep: np.ndarray) -> float:
        return self.overhead + self.scale * self.cost.feature(keep)

    def observe(self, keep: np.ndarray, measured_ms: float) -> float:
        """Record a measurement; returns the relative error the model had on it before refitting."""
        predicted = self.predict(keep)
        err = (predicted - measured_ms) / measured_ms
        self.errors.append(err)
        self._x.append(self.cost.feature(keep))
        self._y.append(measured_ms)
        self._fit()
        return err

    def _fit(self) -> None:
        feats = np.array(self._x)
        y = np.array(self._y)
        # The baseline itself (all keep = 1) is a measured point too.
        feats = np.append(feats, float(self.cost.times_ms.sum()))
        y = np.append(y, self.baseline_ms)
        x = np.stack([np.ones_like(feats), feats], axis=1)
        # Scale the prior's strength with the size of the numbers so that ridge is unit-free.
        lam = self.ridge * np.diag([1.0, float(np.mean(feats**2)) + 1e-12])
        theta = np.linalg.solve(x.T @ x + lam, x.T @ y + lam @ self._prior)
        self.overhead, self.scale = max(float(theta[0]), 0.0), max(float(theta[1]), 1e-6)

    def within(self, tolerance: float = 0.10) -> tuple[int, int]:
        """(number of unseen candidates predicted within ``tolerance``, number predicted)."""
        return sum(abs(e) <= tolerance for e in self.errors), len(self.errors)

    def state(self) -> dict[str, list[float]]:
        return {"x": list(self._x), "y": list(self._y), "errors": list(self.errors)}

    def load_state(self, state: dict[str, list[float]]) -> None:
        self._x = [float(v) for v in state.get("x", [])]
        self._y = [float(v) for v in state.get("y", [])]
        self.errors = [float(v) for v in state.get("errors", [])]
        if self._x:
            self._fit()
