"""Several episodes in flight: one copy of the env per board, stepped together, candidates evaluated as a batch.

The evaluator here is a small deterministic fake (search logic only); the real search over a pool
of sshd boards is tests/test_search_pool.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from hwcompress.records import CompressionPolicy
from hwcompress.search.agents import AgentConfig
from hwcompress.search.batch import BatchVecEnv
from hwcompress.search.envs import EpisodeOutcome, PruneEnv, QuantEnv, StepLayer
from hwcompress.search.stage import StageRunner


def _layers(n: int = 5) -> list[StepLayer]:
    return [StepLayer(f"g{i}", "conv", 16, 32, 3, 1, 1000, 100, 0.2, channels=32) for i in range(n)]


def _reward(policy: CompressionPolicy) -> float:
    keep = np.array([policy.keep.get(f"g{i}", 1.0) for i in range(5)])
    return float(1.0 - np.abs(keep - 0.5).mean())


class FakeBatch:
    """Rewards a batch of policies; remembers each batch."""

    def __init__(self) -> None:
        self.batches: list[list[CompressionPolicy]] = []

    def __call__(self, policies: Sequence[CompressionPolicy]) -> list[EpisodeOutcome]:
        self.batches.append(list(policies))
        return [EpisodeOutcome(_reward(p), {"n": len(self.batches)}) for p in policies]


def _never(policy: CompressionPolicy) -> EpisodeOutcome:
    raise AssertionError("a batched env never evaluates one policy on its own")


def _env(ev: FakeBatch, n: int = 2) -> BatchVecEnv:
    return BatchVecEnv([PruneEnv(_layers(), _never, channel_multiple=8) for _ in range(n)], ev)


@pytest.mark.parametrize("agent", ["ddpg", "ppo"])
def test_episodes_end_together_and_are_evaluated_as_one_batch(agent: str, tmp_path: Path) -> None:
    ev = FakeBatch()
    seen: list[int] = []
    runner = StageRunner("prune", _env(ev), 5, AgentConfig(name=agent, warmup_episodes=2, batch_size=8), tmp_path,
                         on_episode=lambda n, info: seen.append(n))
    progress = runner.run(episodes=6)
    assert progress.episodes == 6 and progress.finished
    assert [len(b) for b in ev.batches] == [2, 2, 2]  # one candidate per board, both at the end of the episode
    assert seen == [1, 2, 3, 4, 5, 6]
    assert runner.has_checkpoint()


def test_each_copy_gets_its_own_shaped_rewards_and_actions(tmp_path: Path) -> None:
    ev = FakeBatch()
    runner = StageRunner("prune", _env(ev), 5, AgentConfig(warmup_episodes=2, batch_size=8), tmp_path)
    runner.run(episodes=4)
    buf = runner.agent.replay_buffer  # type: ignore[union-attr]
    assert buf.n_envs == 2 and buf.pos == 10  # 2 batches x 5 steps, each step one transition per copy
    rewards = buf.rewards[: buf.pos]
    for env in range(2):  # every transition of an episode carries its episode's shaped reward
        per_episode = rewards[:, env].reshape(2, 5)
        assert np.allclose(per_episode, per_episode[:, :1])
    # the two copies' episodes differ (their own exploration), and so do their shaped rewards
    policies = ev.batches[1]
    assert policies[0] != policies[1]
    assert not np.allclose(rewards[5:, 0], rewards[5:, 1])
    # the stored actions are the effective ones (snapped to the offered keep ratios), per copy
    acts = buf.actions[: buf.pos, :, 0]
    keeps = 0.2 + (acts + 1.0) / 2.0 * 0.8
    for env in range(2):
        got = [dict(policies[env].keep).get(f"g{i}", 1.0) for i in range(5)]
        assert np.allclose(keeps[5:, env], got, atol=1e-5)


def test_noise_decays_per_episode_and_resume_continues_the_batches(tmp_path: Path) -> None:
    ev = FakeBatch()
    cfg = AgentConfig(warmup_episodes=2, batch_size=8)
    runner = StageRunner("prune", _env(ev), 5, cfg, tmp_path)
    runner.run(episodes=6)
    sigma = runner.progress.noise_sigma
    assert sigma is not None and sigma == pytest.approx(cfg.noise_sigma * cfg.noise_decay ** 4)  # episodes 3-6
    state = tmp_path / "prune-state.json"
    data = json.loads(state.read_text())
    data["progress"]["finished"] = False  # as if the process died after the third batch
    state.write_text(json.dumps(data))
    ev2 = FakeBatch()
    seen: list[int] = []
    runner2 = StageRunner("prune", _env(ev2), 5, cfg, tmp_path, on_episode=lambda n, info: seen.append(n))
    runner2.run(episodes=10, resume=True)
    assert seen == [7, 8, 9, 10] and [len(b) for b in ev2.batches] == [2, 2]
    assert runner2.agent is not None and runner2.agent.num_timesteps == 50
    noise = runner2.agent.action_noise  # type: ignore[attr-defined]
    assert all(float(n._sigma.mean()) < sigma for n in noise.noises)  # restored, then decayed on


def test_copies_must_step_together() -> None:
    quant = QuantEnv(_layers(3), _never, precisions=("fp32", "int8"))
    with pytest.raises(ValueError, match="same number of steps"):
        BatchVecEnv([PruneEnv(_layers(), _never), quant], FakeBatch())
