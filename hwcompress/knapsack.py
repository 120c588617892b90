"""Latency-aware knapsack pruning (HALP-style): the keep ratio per prunable group that keeps the most
channel importance within a predicted latency limit.

Two functions, shared by ``tools/bench_compare.py``'s ``knapsack`` row and the search (which seeds
its agent with the knapsack's solution):

- :func:`channel_importance`: how much each output channel of each prunable group matters, in units
  that compare across groups (first-order Taylor, summed over every parameter the channel couples);
- :func:`knapsack_keep` (:func:`solve_knapsack` for the details of the answer): one keep ratio per
  group, each among the group's offered choices (``Region.choices(i)``, ascending), maximising the
  importance kept (each group keeps its most important channels) subject to
  ``predict(keep) <= limit``, where ``predict`` is the region's latency prediction from the per-layer
  table measured on the target (``TableRegion.predict``, ms).

How the knapsack is solved (HALP, Shen et al. 2022, "Structural pruning via latency-saliency
knapsack"): a group's latency cost depends on its neighbours' counts (a conv costs about
``c_in x c_out``), so no fixed cost per group exists.  HALP linearises it: each layer's cost of
keeping ``k`` channels is read from the table at its *current* input count, and the resulting
multiple-choice knapsack is solved exactly (dynamic programming); pruning proceeds in small steps
so that the linearisation is re-taken often.  Here, at once rather than over a training run:

1. linearise around a reference ``r``: group ``i`` at choice ``j``
   costs ``predict(r with i at j) - predict(r)`` — the whole table, so every layer the group
   touches (its own convs' outputs, its consumers' inputs, its boundaries) is counted at the
   other groups' counts in ``r``;
2. solve that multiple-choice knapsack exactly (a Pareto frontier of (cost, importance) over the
   groups; no discretisation of the limit);
3. re-predict the solution with the real ``predict``; over the limit by ``e``: the next round's
   linear limit is ``e`` lower; the solution becomes the next reference; repeat (``rounds``) until
   a solution repeats;
4. the best solution within (or, if none was, the last one stepped down greedily — the group
   with the least importance lost per predicted ms saved first, re-predicted after every step —
   until within) is grown back greedily: the step up with the most importance gained per
   predicted ms added that still fits, re-predicted after every step, until none fits.

Steps 1-4 run from three references — the unpruned model (the linearisation over-states what
pruning several coupled groups saves), the floor (it under-states it) and every group at its
middle choice — and the most important answer wins.  Where the predictor is additive over groups
(no coupling), step 2 of the first round is the exact optimum.  With coupling, the answer is a
local optimum of ``predict`` (no single group can grow while within); on 60 random 4-layer chains
of convs (cost ~ c_in x c_out, tests/test_knapsack.py) it kept at least 98.8 % of the brute-force
optimum's importance, the optimum itself in 54.  When even the floor (every group at its lowest choice) is predicted over the
limit, :func:`solve_knapsack` returns the floor with ``within=False`` and :func:`knapsack_keep`
returns the floor and logs a warning (check ``predict(keep) <= limit``, or call
:func:`solve_knapsack`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from hwcompress.errors import PolicyError

if TYPE_CHECKING:
    from torch import nn

    from hwcompress.prune import PruneGroup

log = logging.getLogger(__name__)

IMPORTANCE_BATCHES = 8  # training batches the gradients of channel_importance are summed over
IMPORTANCE_BATCH_SIZE = 64
ROUNDS = 6  # linearise-solve-repredict rounds of solve_knapsack
MAX_STATES = 20000  # Pareto states kept per group in the exact solve (thinned by cost beyond it)


def channel_importance(
    model: nn.Module,
    groups: Sequence[PruneGroup],
    x: np.ndarray,
    y: np.ndarray,
    *,
    batches: int = IMPORTANCE_BATCHES,
    batch_size: int = IMPORTANCE_BATCH_SIZE,
) -> list[np.ndarray]:
    """Per group of ``groups`` (:func:`hwcompress.prune.prunable_groups` of ``model``), the importance
    of each of its output channels (float64, length ``group.channels``), comparable across groups.

    First-order Taylor importance (Molchanov et al. 2019, as HALP uses it): ``sum |w * dL/dw|`` over
    every weight and batch-norm parameter the channel couples in its Torch-Pruning dependency group
    (:func:`hwcompress.prune.taylor_importance`), summed over the first ``batches`` batches of
    ``batch_size`` images of ``x`` (N, C, H, W float32) with labels ``y``, each batch scored on its own
    cross-entropy gradient.
    One torch thread; the model is not modified.  PolicyError when a group is not a group of
    ``model`` or ``x`` holds no image.
    """
    from hwcompress.evaluate import torch_threads
    from hwcompress.prune import taylor_importance

    if batches < 1 or batch_size < 1:
        raise PolicyError(f"channel importance needs batches >= 1 and batch_size >= 1, got {batches} and {batch_size}")
    n = min(len(x), batches * batch_size)
    data = [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n, batch_size)]
    if not data:
        raise PolicyError("channel importance needs at least one training image")
    with torch_threads(1):
        scores = taylor_importance(model, (1, *x.shape[1:]), data)
    out = []
    for g in groups:
        if g.name not in scores or len(scores[g.name]) != g.channels:
            raise PolicyError(f"prune group {g.name} ({g.channels} channels) is not a group of this model")
        out.append(scores[g.name])
    return out


@dataclass(frozen=True)
class KnapsackSolution:
    """What :func:`solve_knapsack` found."""

    keep: np.ndarray  # one keep ratio per group, each one of the group's choices
    predicted: float  # predict(keep) (ms)
    importance: float  # importance kept: the sum over groups of their kept channels' importance
    total: float  # importance of every channel (the unpruned model's)
    within: bool  # predicted <= limit; False only when keep is the floor and even the floor is over
    predictions: int  # distinct keep vectors predicted


def kept_importance(importance: np.ndarray, count: int) -> float:
    """The importance a group keeps with ``count`` channels: the sum of its ``count`` largest."""
    order = np.sort(np.asarray(importance, dtype=np.float64))[::-1]
    return float(order[: max(0, int(count))].sum())


def choice_count(ratio: float, channels: int) -> int:
    """Channels kept at a keep ratio that is a count over ``channels`` (as :func:`keep_choices` makes them)."""
    return min(int(channels), max(1, round(float(ratio) * int(channels))))


def knapsack_keep(
    predict: Callable[[np.ndarray], float],
    choices: Sequence[np.ndarray],
    channels: Sequence[int],
    importance: Sequence[np.ndarray],
    limit: float,
) -> np.ndarray:
    """Keep ratios (one per group, each one of ``choices[i]``) maximising the importance kept subject to
    ``predict(keep) <= limit`` (ms); the floor (every group at its lowest choice), with a warning
    logged, when even the floor is predicted over.  See :func:`solve_knapsack`."""
    sol = solve_knapsack(predict, choices, channels, importance, limit)
    if not sol.within:
        log.warning("knapsack: even the floor is predicted at %.3f ms, over the limit %.3f ms; returning the floor",
                    sol.predicted, limit)
    return sol.keep


def solve_knapsack(
    predict: Callable[[np.ndarray], float],
    choices: Sequence[np.ndarray],
    channels: Sequence[int],
    importance: Sequence[np.ndarray],
    limit: float,
    *,
    rounds: int = ROUNDS,
) -> KnapsackSolution:
    """The latency-aware knapsack of the module docstring.

    ``predict``: keep vector (one ratio per group) -> predicted latency (ms), e.g.
    ``TableRegion.predict``; ``choices[i]``: group ``i``'s offered keep ratios, ascending, each a
    count over ``channels[i]`` (``Region.choices(i)``); ``importance[i]``: one value per channel
    of group ``i`` (:func:`channel_importance`); a group keeps its most important channels.
    PolicyError when the lengths disagree or a group offers no choice.
    """
    n = len(choices)
    if len(channels) != n or len(importance) != n:
        raise PolicyError(f"knapsack: {n} groups of choices, {len(channels)} channel counts, "
                          f"{len(importance)} importance vectors")
    ch = [np.asarray(c, dtype=np.float64) for c in choices]
    for i, c in enumerate(ch):
        if c.size == 0 or np.any(np.diff(c) <= 0):
            raise PolicyError(f"knapsack: group {i} must offer ascending keep ratios, got {c.tolist()}")
        if len(importance[i]) != int(channels[i]):
            raise PolicyError(f"knapsack: group {i} has {channels[i]} channels and {len(importance[i])} importances")
    values = [np.array([kept_importance(importance[i], choice_count(r, channels[i])) for r in ch[i]])
              for i in range(n)]
    total = float(sum(float(np.sum(np.asarray(imp, dtype=np.float64))) for imp in importance))
    memo: dict[tuple[int, ...], float] = {}

    def p(idx: tuple[int, ...]) -> float:
        if idx not in memo:
            memo[idx] = float(predict(np.array([ch[i][j] for i, j in enumerate(idx)])))
        return memo[idx]

    def value(idx: tuple[int, ...]) -> float:
        return float(sum(values[i][j] for i, j in enumerate(idx)))

    def done(idx: tuple[int, ...], within: bool) -> KnapsackSolution:
        keep = np.array([ch[i][j] for i, j in enumerate(idx)])
        return KnapsackSolution(keep, p(idx), value(idx), total, within, len(memo))

    floor = tuple(0 for _ in range(n))
    full = tuple(len(c) - 1 for c in ch)
    if p(floor) > limit:
        return done(floor, False)
    if p(full) <= limit:
        return done(full, True)

    results = [_rounds(start, values, p, limit, rounds) for start in (full, floor, tuple(len(c) // 2 for c in ch))]
    return done(max(results, key=value), True)


def _rounds(ref: tuple[int, ...], values: list[np.ndarray], p: Callable[[tuple[int, ...]], float], limit: float,
            rounds: int) -> tuple[int, ...]:
    """Steps 1-4 of the module docstring from the reference ``ref``: a solution within ``limit``."""

    def value(idx: tuple[int, ...]) -> float:
        return float(sum(values[i][j] for i, j in enumerate(idx)))

    n = len(values)
    shift, best = 0.0, None
    last: tuple[int, ...] = tuple(0 for _ in range(n))
    seen: set[tuple[int, ...]] = set()
    for _ in range(max(1, rounds)):
        base = p(ref)
        costs = [np.array([p(_with(ref, i, j)) - base for j in range(len(values[i]))]) for i in range(n)]
        sol = _multiple_choice(values, costs, limit - shift - base)
        if sol is None:  # the linear model sees no solution under the shifted limit: start from the floor
            break
        last = sol
        over = p(sol) - limit
        if over <= 0 and (best is None or value(sol) > value(best)):
            best = sol
        if sol in seen:
            break
        seen.add(sol)
        if over > 0:
            shift += over
        ref = sol
    start = best if best is not None else _step_down(last, values, p, limit)
    return _grow(start, values, p, limit)


def _with(idx: tuple[int, ...], i: int, j: int) -> tuple[int, ...]:
    return (*idx[:i], j, *idx[i + 1 :])


def _step_down(idx: tuple[int, ...], values: list[np.ndarray], p: Callable[[tuple[int, ...]], float],
               limit: float) -> tuple[int, ...]:
    """Step groups down, the least importance lost per predicted ms saved first (to any lower
    choice), re-predicting after every step, until ``p(idx) <= limit`` (the floor is within)."""
    while p(idx) > limit:
        now = p(idx)
        best: tuple[float, tuple[int, ...]] | None = None
        for i, j0 in enumerate(idx):
            for j in range(j0):
                cand = _with(idx, i, j)
                saved = now - p(cand)
                if saved <= 0:
                    continue
                rate = (values[i][j0] - values[i][j]) / saved
                if best is None or rate < best[0]:
                    best = (rate, cand)
        if best is None:  # no step saves predicted time: the floor (within, checked by the caller)
            return tuple(0 for _ in idx)
        idx = best[1]
    return idx


def _grow(idx: tuple[int, ...], values: list[np.ndarray], p: Callable[[tuple[int, ...]], float],
          limit: float) -> tuple[int, ...]:
    """Fill back: step groups up (to any higher choice) while the prediction stays within ``limit``,
    the most importance gained per predicted ms added first (a step that adds no time first of all),
    re-predicting after every step."""
    while True:
        now = p(idx)
        best: tuple[float, float, tuple[int, ...]] | None = None
        for i, j0 in enumerate(idx):
            for j in range(j0 + 1, len(values[i])):
                cand = _with(idx, i, j)
                pc = p(cand)
                gain = values[i][j] - values[i][j0]
                if pc > limit or gain <= 0:
                    continue
                added = pc - now
                rate = np.inf if added <= 0 else gain / added
                if best is None or (rate, gain) > (best[0], best[1]):
                    best = (rate, gain, cand)
        if best is None:
            return idx
        idx = best[2]


def _multiple_choice(values: list[np.ndarray], costs: list[np.ndarray], cap: float) -> tuple[int, ...] | None:
    """Exact multiple-choice knapsack: one choice ``j_i`` per group maximising ``sum values[i][j_i]``
    with ``sum costs[i][j_i] <= cap`` (costs may be negative).  A Pareto frontier of (cost, value)
    over the groups in turn, states that cannot fit even with the cheapest rest dropped; beyond
    ``MAX_STATES`` states the frontier keeps the best state per cost bin.  None when nothing fits."""
    n = len(values)
    cheapest_rest = np.zeros(n + 1)
    for i in range(n - 1, -1, -1):
        cheapest_rest[i] = cheapest_rest[i + 1] + float(np.min(costs[i]))
    tol = 1e-12 * max(1.0, abs(cap))
    cost, val = np.zeros(1), np.zeros(1)
    parents: list[np.ndarray] = []
    picks: list[np.ndarray] = []
    for i in range(n):
        m = len(values[i])
        c = (cost[:, None] + costs[i][None, :]).ravel()
        v = (val[:, None] + values[i][None, :]).ravel()
        par = np.repeat(np.arange(len(cost)), m)
        pick = np.tile(np.arange(m), len(cost))
        ok = c + cheapest_rest[i + 1] <= cap + tol
        c, v, par, pick = c[ok], v[ok], par[ok], pick[ok]
        if c.size == 0:
            return None
        order = np.lexsort((-v, c))  # by cost, then the most valuable first
        c, v, par, pick = c[order], v[order], par[order], pick[order]
        running = np.maximum.accumulate(v)
        keep = np.concatenate([[True], v[1:] > running[:-1]])  # strictly more valuable than every cheaper state
        c, v, par, pick = c[keep], v[keep], par[keep], pick[keep]
        if c.size > MAX_STATES:  # thin: the last (most valuable) state of each cost bin
            bins = np.floor((c - c[0]) / max((c[-1] - c[0]) / MAX_STATES, 1e-300)).astype(np.int64)
            last = np.concatenate([bins[1:] != bins[:-1], [True]])
            c, v, par, pick = c[last], v[last], par[last], pick[last]
        cost, val = c, v
        parents.append(par)
        picks.append(pick)
    k = int(np.argmax(val))
    out = [0] * n
    for i in range(n - 1, -1, -1):
        out[i] = int(picks[i][k])
        k = int(parents[i][k])
    return tuple(out)
