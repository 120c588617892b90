"""Agents from stable-baselines3, selected by name (DDPG by default, as in AMC, HAQ and LFGCL)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hwcompress.errors import UsageError

if TYPE_CHECKING:
    import gymnasium as gym
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.vec_env import VecEnv

#: The one alias table: agent name -> (stable-baselines3 class name, off-policy with a replay buffer).
_TABLE: dict[str, tuple[str, bool]] = {
    "ddpg": ("DDPG", True),
    "td3": ("TD3", True),
    "sac": ("SAC", True),
    "ppo": ("PPO", False),
}
AGENTS: tuple[str, ...] = tuple(_TABLE)
OFF_POLICY: tuple[str, ...] = tuple(name for name, (_, off) in _TABLE.items() if off)


@dataclass(frozen=True)
class AgentConfig:
    """Hyper-parameters shared by the agents; episode length is the number of layers."""

    name: str = "ddpg"
    warmup_episodes: int = 10
    noise_sigma: float = 0.5  # initial exploration noise (std, action units), AMC's 0.5
    noise_decay: float = 0.95  # multiplied after every episode past the warm-up
    learning_rate: float = 1e-3
    gamma: float = 1.0
    batch_size: int = 64
    buffer_size: int = 20_000
    net_arch: tuple[int, ...] = (64, 64)
    seed: int = 0


def make_agent(cfg: AgentConfig, env: gym.Env[Any, Any] | VecEnv, episode_len: int) -> BaseAlgorithm:
    """Build a fresh SB3 agent for ``env`` (one episode = ``episode_len`` steps).

    With a vectorised ``env`` of several copies stepped together (:mod:`hwcompress.search.batch`) an
    off-policy agent trains once per ``episode_len`` steps — once per batch of episodes — as SB3
    trains on episodes only with one environment."""
    import numpy as np
    from stable_baselines3.common.noise import NormalActionNoise

    name = cfg.name.lower()
    cls: Any = agent_class(name)  # constructor keywords differ per algorithm
    n_act = int(np.prod(env.action_space.shape or (1,)))
    policy_kwargs = {"net_arch": list(cfg.net_arch)}
    if name not in OFF_POLICY:
        return cls(
            "MlpPolicy", env, learning_rate=cfg.learning_rate, n_steps=max(episode_len * 4, 8),
            batch_size=max(episode_len, 4), gamma=cfg.gamma, seed=cfg.seed, policy_kwargs=policy_kwargs, verbose=0,
            device="cpu",
        )
    common: dict[str, Any] = dict(
        learning_rate=cfg.learning_rate,
        buffer_size=cfg.buffer_size,
        learning_starts=cfg.warmup_episodes * episode_len,
        batch_size=cfg.batch_size,
        gamma=cfg.gamma,
        train_freq=(1, "episode") if getattr(env, "num_envs", 1) == 1 else (episode_len, "step"),
        gradient_steps=-1,
        seed=cfg.seed,
        policy_kwargs=policy_kwargs,
        verbose=0,
        device="cpu",
    )
    if name == "sac":  # entropy-driven exploration: no action noise
        return cls("MlpPolicy", env, **common)
    noise = NormalActionNoise(mean=np.zeros(n_act), sigma=np.full(n_act, cfg.noise_sigma))
    return cls("MlpPolicy", env, action_noise=noise, **common)


def agent_class(name: str) -> type[BaseAlgorithm]:
    """The stable-baselines3 class of agent ``name`` (UsageError for an unknown name)."""
    import stable_baselines3

    entry = _TABLE.get(name.lower())
    if entry is None:
        raise UsageError(f"unknown agent {name!r}; choose one of {', '.join(AGENTS)}")
    cls: type[BaseAlgorithm] = getattr(stable_baselines3, entry[0])
    return cls


def _gaussians(agent: BaseAlgorithm) -> list[Any]:
    """The agent's Gaussian noise generators: one, or one per copy of a vectorised env."""
    noise = getattr(agent, "action_noise", None)
    parts = [noise] if noise is None or not hasattr(noise, "noises") else [*noise.noises, noise.base_noise]
    return [n for n in parts if n is not None and hasattr(n, "_sigma")]


def decay_noise(agent: BaseAlgorithm, factor: float, floor: float = 0.02) -> float:
    """Multiply the agent's Gaussian exploration noise by ``factor``; returns the new sigma."""
    sigma = 0.0
    for noise in _gaussians(agent):
        noise._sigma = (noise._sigma * factor).clip(min=floor)
        sigma = float(noise._sigma.mean())
    return sigma


def set_noise(agent: BaseAlgorithm, sigma: float) -> None:
    """Set the agent's Gaussian exploration noise to ``sigma`` (a resumed stage's)."""
    import numpy as np

    for noise in _gaussians(agent):
        noise._sigma = np.full_like(noise._sigma, sigma)
