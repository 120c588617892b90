"""Run one search stage with a stable-baselines3 agent: episodes, checkpoints, resume.

After every episode the agent, its replay buffer, the random states and the stage's counters are
checkpointed (written to temporary files and renamed), so a search killed with SIGKILL loses at
most the episode in flight; every measured candidate is in ``search.jsonl`` and the measurement
cache anyway.

For off-policy agents the episode's transitions get the episode's final reward minus a moving
average baseline (AMC's shaping), and the action actually taken (after the action wall) replaces
the agent's raw action in the buffer.
"""

from __future__ import annotations

import json
import logging
import pickle
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hwcompress.fsutil import atomic_write_bytes, atomic_write_text
from hwcompress.search.agents import OFF_POLICY, AgentConfig, agent_class, decay_noise, make_agent, set_noise

if TYPE_CHECKING:
    import gymnasium as gym
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.vec_env import VecEnv

log = logging.getLogger(__name__)


@dataclass
class StageProgress:
    """Counters persisted in the stage checkpoint."""

    episodes: int = 0
    reward_baseline: float | None = None
    noise_sigma: float | None = None
    finished: bool = False
    seconds: float = 0.0


def _rng_state() -> bytes:
    import torch

    return pickle.dumps({"np": np.random.get_state(), "py": random.getstate(), "torch": torch.get_rng_state()})


def _set_rng_state(blob: bytes) -> None:
    import torch

    state = pickle.loads(blob)  # our own checkpoint file
    np.random.set_state(state["np"])
    random.setstate(state["py"])
    torch.set_rng_state(state["torch"])


class StageRunner:
    """Drives ``env`` for ``episodes`` episodes (or until ``deadline``), checkpointing into ``ckpt_dir``.

    ``env`` is one environment, or copies of it stepped together (:class:`hwcompress.search.batch.BatchVecEnv`,
    one per board of a pool): episodes are counted over every copy, each copy's transitions are shaped
    on its own, and the checkpoint is written when a batch of episodes ends."""

    def __init__(
        self,
        name: str,
        env: gym.Env[Any, Any] | VecEnv,
        episode_len: int,
        agent_cfg: AgentConfig,
        ckpt_dir: Path,
        *,
        on_episode: Callable[[int, dict[str, Any]], None] | None = None,
        extra_state: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.name = name
        self.env = env
        self.episode_len = episode_len
        self.cfg = agent_cfg
        self.ckpt_dir = ckpt_dir
        self.on_episode = on_episode
        self.extra_state = extra_state
        self.progress = StageProgress()
        self.agent: BaseAlgorithm | None = None
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------- files
    @property
    def _agent_file(self) -> Path:
        return self.ckpt_dir / f"{self.name}-agent.zip"

    @property
    def _buffer_file(self) -> Path:
        return self.ckpt_dir / f"{self.name}-buffer.pkl"

    @property
    def _state_file(self) -> Path:
        return self.ckpt_dir / f"{self.name}-state.json"

    @property
    def _rng_file(self) -> Path:
        return self.ckpt_dir / f"{self.name}-rng.pkl"

    def has_checkpoint(self) -> bool:
        return self._state_file.exists() and self._agent_file.exists()

    def load_progress(self) -> StageProgress:
        if not self._state_file.exists():
            return StageProgress()
        data = json.loads(self._state_file.read_text())
        return StageProgress(**data["progress"])

    def saved_extra(self) -> dict[str, Any]:
        if not self._state_file.exists():
            return {}
        return dict(json.loads(self._state_file.read_text()).get("extra", {}))

    def checkpoint(self) -> None:
        assert self.agent is not None
        import io

        buf = io.BytesIO()
        self.agent.save(buf)
        atomic_write_bytes(self._agent_file, buf.getvalue())
        if self.cfg.name in OFF_POLICY and hasattr(self.agent, "replay_buffer"):
            atomic_write_bytes(self._buffer_file, pickle.dumps(self.agent.replay_buffer))
        atomic_write_bytes(self._rng_file, _rng_state())
        state = {"progress": self.progress.__dict__, "extra": self.extra_state() if self.extra_state else {}}
        atomic_write_text(self._state_file, json.dumps(state))

    def _restore(self) -> None:
        cls = agent_class(self.cfg.name)
        self.agent = cls.load(str(self._agent_file), env=self.env, device="cpu")
        if self._buffer_file.exists() and hasattr(self.agent, "replay_buffer"):
            self.agent.replay_buffer = pickle.loads(self._buffer_file.read_bytes())  # our own checkpoint file
        self.progress = self.load_progress()
        if self.progress.noise_sigma is not None:
            set_noise(self.agent, self.progress.noise_sigma)
        if self._rng_file.exists():
            _set_rng_state(self._rng_file.read_bytes())
        log.info("%s: resumed after %d episodes", self.name, self.progress.episodes)

    # ----------------------------------------------------------------- run
    def run(self, episodes: int, deadline: float | None = None, resume: bool = False,
            seeds: Sequence[Sequence[float]] = ()) -> StageProgress:
        """``seeds``: episodes given as one raw action per step, played first on a fresh start (a resumed
        stage has them in its checkpoint): known good policies the agent starts from."""
        from stable_baselines3.common.callbacks import BaseCallback

        if resume and self.has_checkpoint():
            self._restore()
        else:
            self.agent = make_agent(self.cfg, self.env, self.episode_len)
            self.progress = StageProgress()
            for actions in seeds:
                if self.progress.episodes >= episodes:
                    break
                self._seed_episode(actions)
        if self.progress.finished or self.progress.episodes >= episodes:
            self.progress.finished = True
            return self.progress
        runner = self
        started = time.monotonic()
        seconds_before = self.progress.seconds

        class _Callback(BaseCallback):
            """Per copy of the env (one, or one per board): its effective actions and finished episodes."""

            def __init__(self) -> None:
                super().__init__()
                self.effective: list[list[float]] = []
                self.finished: list[tuple[int, float, dict[str, Any], int]] = []  # (copy, reward, info, episode)
                self.stop = False

            def _on_step(self) -> bool:
                infos, dones, rewards = self.locals["infos"], self.locals["dones"], self.locals["rewards"]
                if not self.effective:
                    self.effective = [[] for _ in infos]
                ended = False
                for i, info in enumerate(infos):
                    self.effective[i].append(float(info.get("effective_action", 0.0)))
                    if not dones[i]:
                        continue
                    ended = True
                    runner.progress.episodes += 1
                    if runner.cfg.name not in OFF_POLICY:
                        runner._end_episode(float(rewards[i]), info, runner.progress.episodes)
                        self.effective[i] = []
                    else:
                        self.finished.append((i, float(rewards[i]), info, runner.progress.episodes))
                if ended:
                    if deadline is not None and time.monotonic() >= deadline:
                        self.stop = True
                    if runner.progress.episodes >= episodes:
                        self.stop = True
                    if self.stop and runner.cfg.name not in OFF_POLICY:
                        return False
                return True

            def _on_rollout_end(self) -> None:
                if runner.cfg.name not in OFF_POLICY or not self.finished:
                    return
                for i, final, _, _ in self.finished:
                    runner._shape_buffer(self.effective[i], final, i)
                    self.effective[i] = []
                for k, (_, final, info, episode) in enumerate(self.finished):
                    runner._end_episode(final, info, episode, save=k == len(self.finished) - 1)
                self.finished = []

            def _on_rollout_start(self) -> None:
                if self.stop:
                    raise _StopStage

        assert self.agent is not None
        # SB3's default logger makes a folder in the temp dir on every learn(), one per stage and search
        # (hundreds in a user's /tmp); the stage reports its progress itself
        from stable_baselines3.common.logger import Logger

        self.agent.set_logger(Logger(folder=None, output_formats=[]))
        remaining = (episodes - self.progress.episodes) * self.episode_len
        try:
            self.agent.learn(
                total_timesteps=remaining,  # SB3 adds num_timesteps itself when not resetting
                callback=_Callback(),
                reset_num_timesteps=self.agent.num_timesteps == 0,
                progress_bar=False,
            )
        except _StopStage:
            pass
        self.progress.seconds = seconds_before + (time.monotonic() - started)
        self.progress.finished = True
        self.checkpoint()
        return self.progress

    def _seed_episode(self, actions: Sequence[float]) -> None:
        """One episode with the given actions (the env's wall may still cap them): its candidate is evaluated
        like any other and, for off-policy agents, its transitions go into the replay buffer, shaped as
        the agent's own (:meth:`_shape_buffer`), so that learning starts from it."""
        assert self.agent is not None
        if len(actions) != self.episode_len:
            raise ValueError(f"a seed episode needs {self.episode_len} actions, got {len(actions)}")
        batch: list[Any] | None = getattr(self.env, "layerwise", None)  # one env copy per board: seed on the first
        env: Any = batch[0] if batch else self.env
        # a vectorised buffer holds a transition per copy and step: the seed is a candidate there, not a transition
        buf = self.agent.replay_buffer if self.cfg.name in OFF_POLICY and not batch else None  # type: ignore[attr-defined]
        obs, _ = env.reset()
        effective: list[float] = []
        reward, info = 0.0, dict[str, Any]()
        for a in actions:
            act = np.array([float(np.clip(a, -1.0, 1.0))], dtype=np.float32)
            nxt, r, done, _, info = env.step(act)
            reward = float(r)
            effective.append(float(info.get("effective_action", act[0])))
            if buf is not None:
                buf.add(obs[None], nxt[None], act[None], np.array([reward]), np.array([done]), [info])
            obs = nxt
        self.progress.episodes += 1
        if buf is not None:
            self._shape_buffer(effective, float(reward))
        self._end_episode(float(reward), info, self.progress.episodes)

    def _shape_buffer(self, effective: list[float], final_reward: float, env: int = 0) -> None:
        """AMC: every transition of the episode (of copy ``env`` of the env) gets (final reward - moving
        baseline); real actions stored."""
        assert self.agent is not None
        buf = self.agent.replay_buffer  # type: ignore[attr-defined]
        n = len(effective)
        idx = (np.arange(buf.pos - n, buf.pos)) % buf.buffer_size
        base = self.progress.reward_baseline
        shaped = final_reward - (base if base is not None else final_reward)
        buf.rewards[idx, env] = shaped
        buf.actions[idx, env, 0] = np.asarray(effective, dtype=buf.actions.dtype)
        self.progress.reward_baseline = final_reward if base is None else 0.95 * base + 0.05 * final_reward

    def _end_episode(self, final_reward: float, info: dict[str, Any], episode: int, save: bool = True) -> None:
        """Episode number ``episode`` ended: decay the noise past the warm-up, checkpoint (``save``: the
        last episode of a batch), tell ``on_episode``."""
        assert self.agent is not None
        if episode > self.cfg.warmup_episodes:
            self.progress.noise_sigma = decay_noise(self.agent, self.cfg.noise_decay)
        if save:
            self.checkpoint()
        if self.on_episode:
            self.on_episode(episode, info)


class _StopStage(Exception):
    """Raised inside SB3's loop to end a stage at an episode boundary."""
