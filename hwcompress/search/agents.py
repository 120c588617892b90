"""Agents from stable-baselines3, selected by name (DDPG by default, as in AMC, HAQ and LFGCL)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hwcompress.errors import UsageError

if TYPE_CHECKING:
    import gymnasium as gym
    from stable_baselines3.common.base_class import BaseAlgorithm

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


def make_agent(cfg: AgentConfig, env: gym.Env[Any, Any], episode_len: int) -> BaseAlgorithm:
    """Build a fresh SB3 agent for ``env`` (one episode = ``episode_len`` steps)."""
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
        train_freq=(1, "episode"),
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


def decay_noise(agent: BaseAlgorithm, factor: float, floor: float = 0.02) -> float:
    """Multiply the agent's Gaussian exploration noise by ``factor``; returns the new sigma."""
    noise = getattr(agent, "action_noise", None)
    if noise is None or not hasattr(noise, "_sigma"):
        return 0.0
    noise._sigma = noise._sigma * factor
    noise._sigma = noise._sigma.clip(min=floor)
    return float(noise._sigma.mean())
