"""A search's settings: :class:`SearchConfig`, saved to ``RUN_DIR/config.json`` and read back on resume."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hwcompress.errors import UsageError
from hwcompress.search.agents import AGENTS
from hwcompress.search.budget import parse_budget

STAGES = ("prune", "quant")
COSTS_PRUNE = ("measured", "flops")
COSTS_QUANT = ("measured", "bitops")
#: Distillation steps each stage-1 candidate gets before it is scored (:mod:`hwcompress.recovery`;
#: ``tools/bench_reward.py`` measured how well the signal predicts the accuracy after fine-tuning).
RECOVERY_STEPS = 100
#: Validation images a candidate is scored on: the whole validation split of the demo data.  With 2000,
#: the recovery score's Spearman against the accuracy after fine-tuning was 0.71; with 5000, 0.85
#: (``tools/results/reward.md``), for ~0.9 s more per candidate.
VAL_IMAGES = 5000


@dataclass(frozen=True)
class SearchConfig:
    """Settings of one search (saved to ``RUN_DIR/config.json``)."""

    model: str = "vgg-small"
    checkpoint: str | None = None
    data: str | None = None
    target: str = "x86-cpu"
    connection: dict[str, Any] = field(default_factory=dict)
    latency_budget: str = "0.5x"
    size_budget: str | None = None
    memory_budget: str | None = None
    stages: tuple[str, ...] = STAGES
    prune_episodes: int = 60
    quant_episodes: int = 30
    time_budget_s: float | None = None
    time_budget_firm: bool = True  # refuse a time budget the work besides the episodes overruns (False: a target)
    agent: str = "ddpg"
    warmup_episodes: int = 10
    seed: int = 0
    score: str = "accuracy"
    prune_cost: str = "measured"
    quant_cost: str = "measured"
    finetune_epochs: int = 1
    recovery_steps: int = RECOVERY_STEPS  # distillation steps before a stage-1 candidate is scored (0: none)
    val_limit: int = VAL_IMAGES
    test_limit: int | None = None
    lower_bound: float = 0.2
    speed_weight: float = 0.05
    penalty: float = 2.0
    wall: bool = True
    guard: float = 0.0  # stage winners must be confirmed this far under the latency budget (0: at it, as baselines are)
    out: str = "out/search"
    force: bool = False
    # A pool of boards of the target (docs/pool.md): each board's connection fields; () = the target's one device
    boards: tuple[dict[str, Any], ...] = ()
    ray_address: str | None = None  # join this Ray cluster (None: a local instance, started for a pool only)
    board_wait_s: float = 60.0  # with every board down, wait this long for one to come back before stopping
    targets: tuple[str, ...] = ()  # one search for several targets (search/multi.py); () = just `target`

    def validate(self) -> None:
        bad = [s for s in self.stages if s not in STAGES]
        if bad or not self.stages:
            raise UsageError(f"--stages {','.join(self.stages)}: choose prune, quant or prune,quant")
        if self.agent not in AGENTS:
            raise UsageError(f"--agent {self.agent}: choose one of {', '.join(AGENTS)}")
        if self.prune_cost not in COSTS_PRUNE:
            raise UsageError(f"--cost {self.prune_cost}: stage 1 cost is measured or flops")
        if self.quant_cost not in COSTS_QUANT:
            raise UsageError(f"--cost {self.quant_cost}: stage 2 cost is measured or bitops")
        if self.score not in ("accuracy", "label-free"):
            raise UsageError(f"--reward {self.score}: choose accuracy or label-free")
        if self.prune_episodes < 1 or self.quant_episodes < 1:
            raise UsageError("--episodes must be at least 1")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise UsageError(f"--time-budget must be a number of seconds > 0, got {self.time_budget_s}")
        if not 0.05 <= self.lower_bound <= 1.0:
            raise UsageError("--lower-bound must be in [0.05, 1]")
        if not 0.0 <= self.guard < 0.5:
            raise UsageError("--guard must be in [0, 0.5)")
        if self.finetune_epochs < 0:
            raise UsageError("--finetune-epochs must be >= 0")
        if not 0 <= self.recovery_steps <= 5000:
            raise UsageError(f"--recovery-steps {self.recovery_steps}: give 0 (score right after pruning) to 5000")
        parse_budget(self.latency_budget, "--latency-budget")
        if self.size_budget:
            parse_budget(self.size_budget, "--size-budget", unit="b")
        if self.memory_budget:
            parse_budget(self.memory_budget, "--memory-budget", unit="b")
        from hwcompress.search.pooled import check_devices

        check_devices(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stages"] = list(self.stages)
        d["boards"] = [dict(b) for b in self.boards]
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchConfig:
        d = dict(d)
        d["stages"] = tuple(d.get("stages", STAGES))
        d["boards"] = tuple(dict(b) for b in d.get("boards", ()))
        d["targets"] = tuple(d.get("targets", ()))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"search config: unknown key(s) {', '.join(unknown)} (written by another hwcompress "
                             f"version?); known keys are {', '.join(sorted(known))}")
        return cls(**d)
