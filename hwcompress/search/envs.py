"""Gymnasium environments: one step per prunable group (stage 1) or quantizable layer (stage 2).

The environments know nothing of torch or runtimes: the last step of an episode hands the
finished :class:`~hwcompress.records.CompressionPolicy` to an ``evaluate`` callback (which
builds, exports, measures and scores the candidate) and returns its reward.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from hwcompress.records import CompressionPolicy
from hwcompress.search.region import Region, keep_choices

KIND_CODES = {"conv": 0.0, "depthwise": 0.5, "linear": 1.0}
OBS_FEATURES = (
    "index",
    "kind",
    "in_channels",
    "out_channels",
    "kernel",
    "stride",
    "macs",
    "params",
    "latency_share",
    "reduced_so_far",
    "rest",
    "previous_action",
)


@dataclass(frozen=True)
class StepLayer:
    """What the agent sees of one step's layer (a prunable group's leading layer, or a quantizable layer)."""

    name: str
    kind: str  # conv | depthwise | linear
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    macs: int
    params: int
    latency_share: float  # fraction of the baseline's measured latency in this layer/group
    channels: int = 0  # prunable channels (stage 1)


@dataclass(frozen=True)
class EpisodeOutcome:
    """What ``evaluate`` returns for a finished policy."""

    reward: float
    info: dict[str, Any]


def _embedding(layers: list[StepLayer]) -> np.ndarray:
    """(N, 9) static part of the observation, each column scaled to [0, 1] by its maximum."""
    rows = np.array(
        [
            [
                i,
                KIND_CODES.get(la.kind, 0.0),
                la.in_channels,
                la.out_channels,
                la.kernel,
                la.stride,
                la.macs,
                la.params,
                la.latency_share,
            ]
            for i, la in enumerate(layers)
        ],
        dtype=np.float64,
    )
    top = rows.max(axis=0)
    top[top == 0] = 1.0
    top[1] = 1.0  # kind codes are already in [0, 1]
    top[8] = 1.0  # latency share is a fraction already
    return (rows / top).astype(np.float32)


class _LayerwiseEnv(gym.Env[np.ndarray, np.ndarray], abc.ABC):
    """Shared mechanics: a fixed sequence of layers, one continuous action each."""

    metadata = {"render_modes": []}  # noqa: RUF012

    def __init__(self, layers: list[StepLayer], evaluate: Callable[[CompressionPolicy], EpisodeOutcome]) -> None:
        super().__init__()
        if not layers:
            raise ValueError("an environment needs at least one layer")
        self.layers = layers
        self.evaluate = evaluate
        self._static = _embedding(layers)
        self._shares = np.array([la.latency_share for la in layers], dtype=np.float64)
        total = self._shares.sum()
        self._shares = self._shares / total if total > 0 else np.full(len(layers), 1.0 / len(layers))
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(len(OBS_FEATURES),), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.t = 0
        self.prev_action = 1.0
        self.reduced = 0.0
        self.last_outcome: EpisodeOutcome | None = None

    def _obs(self) -> np.ndarray:
        t = min(self.t, len(self.layers) - 1)
        rest = float(self._shares[t + 1 :].sum())
        dyn = np.array([np.clip(self.reduced, 0, 1), rest, np.clip(self.prev_action, 0, 1)], dtype=np.float32)
        return np.concatenate([self._static[t], dyn]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.t = 0
        self.prev_action = 1.0
        self.reduced = 0.0
        self._begin_episode()
        return self._obs(), {}

    @abc.abstractmethod
    def _begin_episode(self) -> None:
        """Reset the subclass's per-episode choices."""

    @abc.abstractmethod
    def _apply(self, a: float) -> tuple[float, float]:
        """Record layer ``t``'s choice; returns (effective action in [-1, 1], fraction of the layer's share removed)."""

    @abc.abstractmethod
    def _policy(self) -> CompressionPolicy:
        """The finished episode's policy."""

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        policy, info = self.act(action)
        if policy is None:
            return self._obs(), 0.0, False, False, info
        return self.conclude(self.evaluate(policy), info)

    def act(self, action: np.ndarray) -> tuple[CompressionPolicy | None, dict[str, Any]]:
        """The first half of :meth:`step`: record layer ``t``'s choice; the finished episode's policy
        after the last layer (to be evaluated, then :meth:`conclude`), else None."""
        a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        effective, removed = self._apply(a)
        self.reduced += removed * self._shares[self.t]
        self.prev_action = (effective + 1.0) / 2.0
        info: dict[str, Any] = {"effective_action": effective}
        self.t += 1
        return (self._policy() if self.t >= len(self.layers) else None), info

    def observe(self) -> np.ndarray:
        """The current observation (what :meth:`step` returns mid-episode)."""
        return self._obs()

    def conclude(self, outcome: EpisodeOutcome, info: dict[str, Any]) -> tuple[np.ndarray, float, bool, bool,
                                                                              dict[str, Any]]:
        """The last step's return, once the episode's policy was evaluated as ``outcome``."""
        self.last_outcome = outcome
        info.update(outcome.info)
        return self._obs(), float(outcome.reward), True, False, info


class PruneEnv(_LayerwiseEnv):
    """Stage 1: action -> keep ratio in [lower_bound, 1], one of the ratios the region offers.

    The region (:mod:`hwcompress.search.region`) offers each group's keep ratios (counts on the
    channel multiple; on a measured table only the fast ones) and predicts a candidate's cost.
    With a finite ``region.limit``, an action wall as in AMC: each keep ratio is capped so that the
    prediction, with every later group at its smallest choice, stays within ``region.wall_limit()``
    (the limit widened by the predictor's observed error band).
    """

    def __init__(
        self,
        layers: list[StepLayer],
        evaluate: Callable[[CompressionPolicy], EpisodeOutcome],
        *,
        region: Region | None = None,
        lower_bound: float = 0.2,
        channel_multiple: int = 1,
    ) -> None:
        super().__init__(layers, evaluate)
        if not 0.0 < lower_bound <= 1.0:
            raise ValueError("need 0 < lower_bound <= 1")
        self.lower_bound = lower_bound
        self.region = region
        self._own = [keep_choices(max(la.channels, 1), channel_multiple, lower_bound) for la in layers]
        self.keep = np.ones(len(layers))
        self.walled = 0  # groups the wall capped in the last episode

    def choices(self, i: int) -> np.ndarray:
        """Keep ratios offered to group ``i``, ascending."""
        return self.region.choices(i) if self.region is not None else self._own[i]

    def _begin_episode(self) -> None:
        self.keep = np.ones(len(self.layers))
        self.walled = 0

    def wall(self, i: int) -> float:
        """Largest choice for group ``i`` whose prediction (later groups at their smallest) fits the wall."""
        region = self.region
        if region is None or not np.isfinite(region.limit):
            return 1.0
        trial = self.keep.copy()
        for j in range(i + 1, len(self.layers)):
            trial[j] = self.choices(j)[0]
        best = float(self.choices(i)[0])
        limit = region.wall_limit()
        for r in self.choices(i):
            trial[i] = r
            if region.predict(trial) <= limit:
                best = float(r)
        return best

    def _apply(self, a: float) -> tuple[float, float]:
        i = self.t
        ratio = self.lower_bound + (a + 1.0) / 2.0 * (1.0 - self.lower_bound)
        cap = self.wall(i)
        if ratio > cap + 1e-9:
            ratio = cap
            self.walled += 1
        ch = self.choices(i)
        allowed = ch[ch <= cap + 1e-9]
        allowed = allowed if allowed.size else ch[:1]
        ratio = float(allowed[np.argmin(np.abs(allowed - ratio))])
        self.keep[i] = ratio
        span = 1.0 - self.lower_bound
        effective = 2.0 * (ratio - self.lower_bound) / span - 1.0 if span > 0 else 1.0
        return float(np.clip(effective, -1.0, 1.0)), 1.0 - ratio

    def _policy(self) -> CompressionPolicy:
        return CompressionPolicy(keep={la.name: float(k) for la, k in zip(self.layers, self.keep, strict=True) if k < 1.0})


class QuantEnv(_LayerwiseEnv):
    """Stage 2: action -> one of the target's precisions.

    Without measurements the precisions are ordered from most to least precise (HAQ's bit axis).
    With ``speed`` (each precision's measured latency relative to fp32 on the target) they are
    ordered slowest to fastest, so that a larger action is a faster layer *on this target* — on a
    CPU without VNNI int4 weight-only sits at the slow end, whatever its bit width.

    With ``predict`` (a policy's predicted latency, ms, from its per-layer precisions: the measured
    table with its precision boundaries, or per-layer times x measured precision ratios) and
    ``budget_ms``, an action wall as in HAQ: when the episode's policy is predicted over budget,
    layers are moved to the fastest precision, largest predicted saving first, until it fits.
    """

    def __init__(
        self,
        layers: list[StepLayer],
        evaluate: Callable[[CompressionPolicy], EpisodeOutcome],
        *,
        precisions: tuple[str, ...],
        base_keep: dict[str, float] | None = None,
        speed: dict[str, float] | None = None,
        predict: Callable[[list[str]], float] | None = None,
        budget_ms: float | None = None,
    ) -> None:
        super().__init__(layers, evaluate)
        order = ["fp32", "fp16", "int8", "int4"]
        chosen = [p for p in order if p in precisions]
        if speed and all(p in speed for p in chosen):
            chosen.sort(key=lambda p: -speed[p])  # slowest first; stable, so ties keep the bit order
        self.precisions = tuple(chosen)
        if not self.precisions:
            raise ValueError("no precisions to choose from")
        self.speed = dict(speed or {})
        self.predict = predict
        self.budget_ms = budget_ms
        self.base_keep = dict(base_keep or {})
        self.choice: list[str] = []
        self.walled = 0  # layers the wall moved in the last episode

    def predicted_ms(self, choice: list[str]) -> float | None:
        """The policy's predicted latency (None without a predictor)."""
        return self.predict(list(choice)) if self.predict is not None else None

    @property
    def fastest(self) -> str:
        """The precision measured fastest (the last on the action axis)."""
        return min(self.precisions, key=lambda p: self.speed.get(p, 1.0))

    def _wall(self) -> None:
        self.walled = 0
        if self.predict is None or self.budget_ms is None:
            return
        self.choice, self.walled = mix_wall(self.choice, self.predict, self.budget_ms, self.fastest)

    def _begin_episode(self) -> None:
        self.choice = []

    def _apply(self, a: float) -> tuple[float, float]:
        k = len(self.precisions)
        idx = min(int((a + 1.0) / 2.0 * k), k - 1)
        self.choice.append(self.precisions[idx])
        bits = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}[self.precisions[idx]]
        effective = (idx + 0.5) / k * 2.0 - 1.0
        return effective, 1.0 - bits / 32.0

    def _policy(self) -> CompressionPolicy:
        self._wall()
        return CompressionPolicy(
            keep=self.base_keep,
            precision={la.name: p for la, p in zip(self.layers, self.choice, strict=True)},
        )


def mix_wall(choice: list[str], predict: Callable[[list[str]], float], goal_ms: float, fastest: str) -> tuple[list[str], int]:
    """HAQ's wall on a mixed-precision policy: layers moved to ``fastest``, largest predicted saving first,
    until ``predict`` puts the mix within ``goal_ms`` (or no move saves more); the new choice and the
    number of layers moved.  The stage-2 action wall, and the projection of a mix the judge found over."""
    choice, moved = list(choice), 0
    predicted = predict(choice)
    while predicted > goal_ms:
        best: tuple[float, int] | None = None
        for i, p in enumerate(choice):
            if p == fastest:
                continue
            after = predict([*choice[:i], fastest, *choice[i + 1:]])
            if best is None or after < best[0]:
                best = (after, i)
        if best is None or best[0] >= predicted:
            break
        predicted, i = best
        choice[i] = fastest
        moved += 1
    return choice, moved
