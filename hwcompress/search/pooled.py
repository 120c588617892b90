"""A search over a pool of boards (``--hosts`` / ``--pool``): what :class:`~hwcompress.search.run.Search` adds.

The pool (:mod:`hwcompress.profiling.pool`) starts once the baseline file exists; from then on every
measurement of the search's target is routed to it (baseline, latency table, candidates, the
judge's pairs, the artifact's figures), and each stage steps one copy of its environment per board,
so that a batch of candidates — one episode per board — is measured at once
(:mod:`hwcompress.search.batch`).  ``RUN_DIR/pool.json`` keeps the boards' calibration and events.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hwcompress.errors import UsageError

if TYPE_CHECKING:
    from concurrent.futures import Future

    import gymnasium as gym
    from stable_baselines3.common.vec_env import VecEnv

    from hwcompress.profiling.pool import DevicePool
    from hwcompress.records import CompressionPolicy, Measurement
    from hwcompress.search.envs import EpisodeOutcome, _LayerwiseEnv
    from hwcompress.search.evaluator import _Batched
    from hwcompress.search.run import Search, SearchConfig

POOL_RECORD = "pool.json"


def target_key(spec: str) -> str:
    """A target's folder name in a multi-target search: its name, or a target file's stem."""
    return Path(spec).stem if spec.endswith(".toml") else spec


def check_devices(cfg: SearchConfig) -> None:
    """The options that spread a search over devices: a pool of boards, or several targets (UsageError)."""
    if cfg.boards:
        from hwcompress.profiling.pool import check_boards

        check_boards(cfg.boards, "--hosts / --pool")
        if len(cfg.boards) < 2:
            raise UsageError("a pool needs two boards or more; give one board with --host")
        if "host" in cfg.connection:
            raise UsageError("--host names one device and --hosts / --pool a pool of boards: give one of them")
    elif cfg.ray_address:
        raise UsageError("--ray-address needs a pool of boards (--hosts or --pool): a one-device search runs no Ray")
    if cfg.board_wait_s < 0:
        raise UsageError("--board-wait must be >= 0 seconds")
    if cfg.targets:
        keys = [target_key(t) for t in cfg.targets]
        if len(set(keys)) != len(keys):
            raise UsageError(f"--target {' --target '.join(cfg.targets)}: a target is named twice")
        if cfg.boards:
            raise UsageError("several --target options and a pool of boards (--hosts / --pool) cannot be combined: "
                             "search each target's pool on its own")
        if cfg.connection:
            raise UsageError("--host/--port/--user/--key/--remote-python/--known-hosts name one device; with several "
                             "--target options set each device in its target file")
E = TypeVar("E", bound="_LayerwiseEnv")


@contextlib.contextmanager
def start_pool(s: Search) -> Iterator[DevicePool]:
    """The search's pool, started (Ray, a worker per board, every board calibrated on the baseline) and routed."""
    from hwcompress.profiling.pool import open_pool

    cfg = s.cfg
    where = f"the Ray cluster at {cfg.ray_address}" if cfg.ray_address else "a local Ray instance"
    s.reporter.message(f"starting a pool of {len(s.boards)} boards on {where}; each board measures the baseline")
    with open_pool(s.target, s.boards, s.base_file, ray_address=cfg.ray_address, trust_new_host=s.trust_new_host,
                   lost_after_s=cfg.board_wait_s, record=s.run_dir / POOL_RECORD, on_event=s.reporter.message) as pool:
        up = pool.up()
        s.reporter.message(f"pool: {len(up)} of {pool.size} boards up, reference {pool.state()['reference']} "
                           f"({pool.reference_ms:.3f} ms); scales " + ", ".join(f"{b.name} {b.scale:.3f}" for b in up))
        yield pool


def submitter(s: Search) -> Callable[[Path], Future[Measurement]]:
    """Hands a candidate's file to the search's pool (any free board)."""
    pool = s.pool
    assert pool is not None
    return lambda path: pool.submit(path, s.target, cache=s.cache, reader=s.reader)


def stage_env(s: Search, make: Callable[[], E], evaluator: _Batched) -> tuple[E, gym.Env[Any, Any] | VecEnv]:
    """(the first copy, what the agent steps): ``make()`` alone, or one copy per board of the pool stepped
    together, the batch's candidates measured at once."""
    first = make()
    if s.pool is None:
        return first, first
    from hwcompress.search.batch import BatchVecEnv

    submit = submitter(s)

    def evaluate_batch(policies: Sequence[CompressionPolicy]) -> list[EpisodeOutcome]:
        return evaluator.evaluate_batch(policies, submit)

    return first, BatchVecEnv([first, *(make() for _ in range(len(s.boards) - 1))], evaluate_batch)
