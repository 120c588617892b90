"""Several episodes at once: one environment per board of a pool, stepped together (docs/pool.md).

stable-baselines3 steps a vectorised environment's copies in lockstep.  The copies of a layer-wise
environment (:mod:`hwcompress.search.envs`) all have one step per layer, so their episodes end on
the same step: :class:`BatchVecEnv` hands the finished episodes' policies to ``evaluate_batch`` at
once — the evaluator builds them, the pool's boards measure them side by side while the host scores
them — and each copy then ends its episode with its own outcome.  The agent learns from the batch
(``train_freq`` = one episode's steps), then acts for the next one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from copy import deepcopy
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from hwcompress.records import CompressionPolicy
from hwcompress.search.envs import EpisodeOutcome, _LayerwiseEnv

EvaluateBatch = Callable[[Sequence[CompressionPolicy]], list[EpisodeOutcome]]


class BatchVecEnv(DummyVecEnv):
    """``envs`` (distinct copies of one environment) stepped together; their last steps evaluated as a batch."""

    def __init__(self, envs: Sequence[_LayerwiseEnv], evaluate_batch: EvaluateBatch) -> None:
        if len({len(e.layers) for e in envs}) != 1:
            raise ValueError("the environments of a batch need the same number of steps")
        super().__init__([lambda e=e: e for e in envs])  # type: ignore[misc]
        self.layerwise = list(envs)
        self.evaluate_batch = evaluate_batch

    def step_wait(self) -> VecEnvStepReturn:
        steps = [env.act(action) for env, action in zip(self.layerwise, self.actions, strict=True)]
        final = [i for i, (policy, _) in enumerate(steps) if policy is not None]
        if final and len(final) != self.num_envs:
            raise RuntimeError("the environments of a batch are out of step")
        outcomes = self.evaluate_batch([p for p, _ in steps if p is not None]) if final else []
        if len(outcomes) != len(final):
            raise RuntimeError(f"evaluate_batch returned {len(outcomes)} outcomes for {len(final)} policies")
        for i, env in enumerate(self.layerwise):
            info: dict[str, Any] = steps[i][1]
            if final:
                obs, reward, terminated, truncated, info = env.conclude(outcomes[i], info)
            else:
                obs, reward, terminated, truncated = env.observe(), 0.0, False, False
            self.buf_rews[i] = reward
            self.buf_dones[i] = terminated or truncated
            info["TimeLimit.truncated"] = truncated and not terminated
            if self.buf_dones[i]:
                info["terminal_observation"] = obs
                obs, self.reset_infos[i] = env.reset()
            self.buf_infos[i] = info
            self._save_obs(i, obs)
        return self._obs_from_buf(), np.copy(self.buf_rews), np.copy(self.buf_dones), deepcopy(self.buf_infos)
