"""Stage runner: SB3 agents drive the envs; checkpoints every episode; resume continues the count.

The evaluator here is a small deterministic fake (search logic only); the real end-to-end search
is tested in test_search_e2e.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hwcompress.records import CompressionPolicy
from hwcompress.search.agents import AgentConfig
from hwcompress.search.envs import EpisodeOutcome, PruneEnv, StepLayer
from hwcompress.search.stage import StageRunner


def _layers(n: int = 5) -> list[StepLayer]:
    return [StepLayer(f"g{i}", "conv", 16, 32, 3, 1, 1000, 100, 0.2, channels=32) for i in range(n)]


class FakeEval:
    """Reward peaks when every group keeps 0.5 of its channels."""

    def __init__(self) -> None:
        self.calls: list[CompressionPolicy] = []

    def __call__(self, policy: CompressionPolicy) -> EpisodeOutcome:
        self.calls.append(policy)
        keep = np.array([policy.keep.get(f"g{i}", 1.0) for i in range(5)])
        return EpisodeOutcome(float(1.0 - np.abs(keep - 0.5).mean()), {})


@pytest.mark.parametrize("agent", ["ddpg", "td3", "sac", "ppo"])
def test_agents_run_episodes(agent: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    ev = FakeEval()
    env = PruneEnv(_layers(), ev, channel_multiple=8)
    runner = StageRunner("prune", env, 5, AgentConfig(name=agent, warmup_episodes=2, batch_size=8), tmp_path / "ckpt")
    progress = runner.run(episodes=4)
    assert progress.episodes >= 4 and progress.finished
    assert len(ev.calls) >= 4
    assert runner.has_checkpoint()
    assert not list(temp.glob("SB3-*"))  # no logger folder left in the temp dir (SB3 makes one per learn by default)


def test_checkpoint_and_resume_continue(tmp_path: Path) -> None:
    ev = FakeEval()
    env = PruneEnv(_layers(), ev, channel_multiple=8)
    cfg = AgentConfig(warmup_episodes=3, batch_size=8)
    seen: list[int] = []
    runner = StageRunner("prune", env, 5, cfg, tmp_path, on_episode=lambda n, info: seen.append(n))
    runner.run(episodes=6)
    assert seen == [1, 2, 3, 4, 5, 6]
    sigma_after = runner.progress.noise_sigma
    assert sigma_after is not None and sigma_after < cfg.noise_sigma  # decays after the warm-up
    # Pretend the process died mid-way: mark unfinished, then resume to 9 episodes.
    state = runner.load_progress()
    assert state.episodes == 6
    import json

    f = tmp_path / "prune-state.json"
    data = json.loads(f.read_text())
    data["progress"]["finished"] = False
    f.write_text(json.dumps(data))
    runner2 = StageRunner("prune", PruneEnv(_layers(), ev, channel_multiple=8), 5, cfg, tmp_path,
                          on_episode=lambda n, info: seen.append(n))
    runner2.run(episodes=9, resume=True)
    assert seen[-3:] == [7, 8, 9]
    assert runner2.agent is not None and runner2.agent.num_timesteps == 45


def test_shaped_rewards_in_buffer(tmp_path: Path) -> None:
    ev = FakeEval()
    runner = StageRunner("prune", PruneEnv(_layers(), ev, channel_multiple=8), 5,
                         AgentConfig(warmup_episodes=2, batch_size=8), tmp_path)
    runner.run(episodes=3)
    buf = runner.agent.replay_buffer  # type: ignore[union-attr]
    rewards = buf.rewards[: buf.pos, 0]
    # every transition of an episode carries the same shaped reward
    assert np.allclose(rewards.reshape(3, 5), rewards.reshape(3, 5)[:, :1])


def test_deadline_stops_at_episode_boundary(tmp_path: Path) -> None:
    ev = FakeEval()
    runner = StageRunner("prune", PruneEnv(_layers(), ev, channel_multiple=8), 5,
                         AgentConfig(warmup_episodes=2, batch_size=8), tmp_path)
    import time

    progress = runner.run(episodes=1000, deadline=time.monotonic())
    assert progress.episodes == 1 and len(ev.calls) == 1


@pytest.mark.parametrize("agent", ["ddpg", "ppo"])
def test_seed_episodes_play_first_and_fill_the_buffer(agent: str, tmp_path: Path) -> None:
    from hwcompress.search.stages import seed_actions

    ev = FakeEval()
    env = PruneEnv(_layers(), ev, channel_multiple=8, lower_bound=0.25)
    runner = StageRunner("prune", env, 5, AgentConfig(name=agent, warmup_episodes=2, batch_size=8), tmp_path)
    half = np.full(5, 0.5)
    mixed = np.array([0.25, 0.5, 0.75, 1.0, 0.5])
    runner.run(episodes=4, seeds=[seed_actions(half, 0.25), seed_actions(mixed, 0.25)])
    # the seeds are the first two candidates, exactly as given
    assert [ev.calls[0].keep.get(f"g{i}", 1.0) for i in range(5)] == pytest.approx(half)
    assert [ev.calls[1].keep.get(f"g{i}", 1.0) for i in range(5)] == pytest.approx(mixed)
    assert runner.progress.episodes >= 4
    if agent == "ddpg":  # off-policy: the seeds' transitions are in the replay buffer, with the actions taken
        buf = runner.agent.replay_buffer  # type: ignore[union-attr]
        assert buf.pos >= 20
        assert buf.actions[:5, 0, 0] == pytest.approx(seed_actions(half, 0.25), abs=1e-6)
        assert buf.dones[4, 0] == 1 and buf.dones[:4, 0].sum() == 0
    # a resumed stage does not play its seeds again
    calls = len(ev.calls)
    f = tmp_path / "prune-state.json"
    import json

    data = json.loads(f.read_text())
    data["progress"]["finished"] = False
    f.write_text(json.dumps(data))
    again = StageRunner("prune", PruneEnv(_layers(), ev, channel_multiple=8, lower_bound=0.25), 5,
                        AgentConfig(name=agent, warmup_episodes=2, batch_size=8), tmp_path)
    again.run(episodes=runner.progress.episodes + 1, resume=True, seeds=[seed_actions(half, 0.25)])
    assert all(p.keep != ev.calls[0].keep for p in ev.calls[calls:])
