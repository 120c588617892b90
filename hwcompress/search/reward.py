"""Rewards: accuracy first, within budget; over-budget candidates penalised in proportion to the excess.

A reward function is registered by name and maps (accuracy-like score in [0, 1], costs,
budgets) to a float.  Costs are whatever the search's cost mode says: measured latency (ms)
by default, MACs or bit-ops in proxy mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hwcompress.errors import UsageError

FAILED_REWARD = -1.0


@dataclass(frozen=True)
class Costs:
    """The candidate's costs and the budgets they are held to (same units pairwise)."""

    latency: float
    latency_budget: float
    size: float = 0.0
    size_budget: float | None = None
    memory: float = 0.0
    memory_budget: float | None = None
    latency_ref: float = 0.0  # the stage's starting latency (for the speed bonus)


def excess(value: float, budget: float | None) -> float:
    """Relative excess over budget, 0 when within (e.g. 1.2x the budget -> 0.2)."""
    if budget is None or budget <= 0:
        return 0.0
    return max(0.0, value / budget - 1.0)


def accuracy_within_budget(score: float, c: Costs, *, penalty: float = 2.0, speed_weight: float = 0.0) -> float:
    """``score - penalty * (excess latency + excess size + excess memory) + speed_weight * saving``.

    ``saving`` = 1 - latency / latency_ref: a small tie-break towards faster candidates when two
    are equally accurate (0 by default; stage 2 uses it so that fp32 everywhere is not a free win).
    """
    over = excess(c.latency, c.latency_budget) + excess(c.size, c.size_budget) + excess(c.memory, c.memory_budget)
    saving = 1.0 - c.latency / c.latency_ref if c.latency_ref > 0 else 0.0
    return score - penalty * over + speed_weight * saving


def within_budget(c: Costs, slack: float = 0.0) -> bool:
    return (
        excess(c.latency, c.latency_budget) <= slack
        and excess(c.size, c.size_budget) <= slack
        and excess(c.memory, c.memory_budget) <= slack
    )


RewardFn = Callable[..., float]
REWARDS: dict[str, RewardFn] = {"accuracy-within-budget": accuracy_within_budget}


def get_reward(name: str) -> RewardFn:
    if name not in REWARDS:
        raise UsageError(f"unknown reward {name!r}; choose one of {', '.join(REWARDS)}")
    return REWARDS[name]
