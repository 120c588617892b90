"""Environment conformance (stable-baselines3 check_env), action mapping, action wall, budgets, rewards."""

from __future__ import annotations

import numpy as np
import pytest

from hwcompress.errors import UsageError
from hwcompress.records import CompressionPolicy
from hwcompress.search.budget import parse_budget
from hwcompress.search.envs import EpisodeOutcome, PruneEnv, QuantEnv, StepLayer
from hwcompress.search.latency_model import LatencyModel, LayerCostModel, estimate_exponents
from hwcompress.search.region import CostRegion
from hwcompress.search.reward import Costs, accuracy_within_budget, within_budget


def _layers(n: int = 4) -> list[StepLayer]:
    return [
        StepLayer(name=f"conv{i}", kind="conv", in_channels=16 * i or 1, out_channels=16 * (i + 1), kernel=3, stride=1,
                  macs=1000 * (i + 1), params=100 * (i + 1), latency_share=0.25, channels=16 * (i + 1))
        for i in range(n)
    ]


def _chain_cost(layers: list[StepLayer]) -> LayerCostModel:
    # A chain: conv i's output is pruned by group i, its input by group i-1.
    n = len(layers)
    exps = np.zeros((n, n))
    for i in range(n):
        exps[i, i] = 1.0
        if i > 0:
            exps[i, i - 1] = 1.0
    return LayerCostModel([la.name for la in layers], np.array([la.macs for la in layers], float), exps,
                          np.array([1.0, 2.0, 3.0, 4.0]))


def test_check_env_prune_and_quant() -> None:
    from stable_baselines3.common.env_checker import check_env

    seen: list[CompressionPolicy] = []

    def evaluate(policy: CompressionPolicy) -> EpisodeOutcome:
        seen.append(policy)
        return EpisodeOutcome(reward=0.5, info={"accuracy": 0.5})

    check_env(PruneEnv(_layers(), evaluate, channel_multiple=8), warn=True)
    check_env(QuantEnv(_layers(), evaluate, precisions=("fp32", "int8", "int4")), warn=True)
    assert seen


def test_prune_action_mapping_and_rounding() -> None:
    env = PruneEnv(_layers(), lambda p: EpisodeOutcome(1.0, {"policy": p}), lower_bound=0.25, channel_multiple=8)
    env.reset(seed=0)
    rewards = []
    for a in (-1.0, 1.0, 0.0, -1.0):
        _, r, done, _, info = env.step(np.array([a], dtype=np.float32))
        rewards.append(r)
    assert done and rewards[:-1] == [0.0, 0.0, 0.0]
    keep = info["policy"].keep
    # conv0: 16 channels, lower bound 0.25 -> smallest multiple of 8 (8/16 = 0.5)
    assert keep["conv0"] == 0.5
    assert "conv1" not in keep  # a = 1 keeps everything
    # conv2: 48 channels, a = 0 -> 0.625 -> nearest multiple of 8 is 32/48
    assert keep["conv2"] == pytest.approx(32 / 48)
    for name, ratio in keep.items():
        channels = {la.name: la.channels for la in _layers()}[name]
        assert round(ratio * channels) % 8 == 0


def test_action_wall_keeps_prediction_within_budget() -> None:
    layers = _layers()
    model = LatencyModel(_chain_cost(layers), baseline_ms=12.0)
    budget = 0.5 * 12.0
    region = CostRegion(model, [la.channels for la in layers], multiple=4, lower_bound=0.2, limit=budget)
    env = PruneEnv(layers, lambda p: EpisodeOutcome(0.0, {}), region=region, lower_bound=0.2, channel_multiple=4)
    for _ in range(3):
        env.reset()
        for _ in layers:
            env.step(np.array([1.0], dtype=np.float32))  # the agent asks to keep everything
        # held to the limit widened by the predictor's error band (10 % before any measurement)
        assert region.wall_limit() == pytest.approx(budget * 1.10)
        assert model.predict(env.keep) <= region.wall_limit() + 1e-9
        assert env.walled > 0
    # measured predictions within 1 %: the band narrows to its 2 % floor
    region.errors.extend([0.01, -0.005, 0.002])
    assert region.wall_limit() == pytest.approx(budget * 1.02)
    exact = CostRegion(model, [la.channels for la in layers], multiple=4, lower_bound=0.2, limit=budget, macs_only=True)
    assert exact.wall_limit() == budget  # MACs carry no error
    # without a finite limit the region only offers choices: the agent keeps everything
    free = PruneEnv(layers, lambda p: EpisodeOutcome(0.0, {}), region=CostRegion(
        model, [la.channels for la in layers], multiple=4, lower_bound=0.2, limit=float("inf")), lower_bound=0.2)
    free.reset()
    for _ in layers:
        free.step(np.array([1.0], dtype=np.float32))
    assert free.keep.tolist() == [1.0] * 4 and free.walled == 0


def test_region_projection_keeps_the_shape_and_fits_the_limit() -> None:
    layers = _layers()
    model = LatencyModel(_chain_cost(layers), baseline_ms=12.0)
    region = CostRegion(model, [la.channels for la in layers], multiple=4, lower_bound=0.2, limit=float("inf"))
    keep = np.array([1.0, 0.5, 1.0, 0.75])
    out = region.project(keep, 0.6 * model.predict(keep))
    assert model.predict(out) <= 0.6 * model.predict(keep) + 1e-9
    assert out[1] < out[0] and out[1] < out[2]  # the pruned group stays the most pruned: the shape is kept
    assert all(round(k * la.channels) % 4 == 0 for k, la in zip(out, layers, strict=True))
    assert np.array_equal(region.project(keep, 1e9), keep)  # within already: unchanged
    floor = region.project(keep, 0.0)  # nothing fits: every group at its smallest choice
    assert floor.tolist() == [region.choices(i)[0] for i in range(4)]


def test_a_projection_of_a_near_miss_lands_just_under_the_limit_where_scaling_drops_far() -> None:
    """Coarse groups (16 channels on a multiple of 8: 8 or 16) are where scaling every group together
    fails: any scale under 1 takes them a whole half down.  The projection moves one group a choice at a
    time and stops just under the limit, the coarse group left whole."""
    layers = _layers()
    model = LatencyModel(_chain_cost(layers), baseline_ms=12.0)
    region = CostRegion(model, [la.channels for la in layers], multiple=8, lower_bound=0.2, limit=float("inf"))
    assert region.choices(0).tolist() == [0.5, 1.0]
    keep = np.array([1.0, 0.75, 0.5, 0.75])
    limit = 0.97 * model.predict(keep)  # judged 3 % over
    out = region.project(keep, limit)
    assert 0.9 * limit < model.predict(out) <= limit
    assert out[0] == 1.0 and int(np.sum(out < keep - 1e-9)) == 1  # one group moved one choice
    scaled = region.scale(keep, limit)
    assert scaled[0] == 0.5 and model.predict(scaled) < model.predict(out)


def test_latency_model_fits_measurements() -> None:
    layers = _layers()
    cost = _chain_cost(layers)
    model = LatencyModel(cost, baseline_ms=12.0)
    rng = np.random.default_rng(0)
    true = lambda k: 1.5 + 0.8 * cost.feature(k)  # noqa: E731
    for _ in range(20):
        k = rng.uniform(0.2, 1.0, size=4)
        model.observe(k, true(k))
    k = rng.uniform(0.2, 1.0, size=4)
    assert abs(model.predict(k) - true(k)) / true(k) < 0.05
    hit, n = model.within(0.10)
    assert n == 20 and hit >= 10


def test_estimate_exponents() -> None:
    base = np.array([100.0, 200.0, 50.0])
    probes = np.array([[50.0, 100.0, 50.0], [100.0, 50.0, 50.0]])  # group 0 at 0.5; group 1 at 0.5 (layer 1 both sides)
    exps = estimate_exponents(base, probes, np.array([0.5, 0.5]))
    assert exps.tolist() == [[1.0, 0.0], [1.0, 2.0], [0.0, 0.0]]


def test_quant_action_mapping() -> None:
    env = QuantEnv(_layers(3), lambda p: EpisodeOutcome(0.0, {"policy": p}), precisions=("int4", "fp32", "int8"),
                   base_keep={"conv0": 0.5})
    env.reset()
    for a in (-1.0, 0.0, 1.0):
        _, _, done, _, info = env.step(np.array([a], dtype=np.float32))
    assert done
    assert info["policy"].precision == {"conv0": "fp32", "conv1": "int8", "conv2": "int4"}
    assert info["policy"].keep == {"conv0": 0.5}


def test_quant_actions_ordered_by_measured_speed() -> None:
    # int4 weight-only measured slower than fp32 (no VNNI): it goes to the slow end of the action axis
    speed = {"fp32": 1.0, "fp16": 3.0, "int8": 0.55, "int4": 1.9}
    env = QuantEnv(_layers(4), lambda p: EpisodeOutcome(0.0, {"policy": p}), precisions=("fp32", "fp16", "int8", "int4"),
                   speed=speed)
    assert env.precisions == ("fp16", "int4", "fp32", "int8")
    env.reset()
    for a in (-1.0, -0.4, 0.1, 1.0):
        _, _, done, _, info = env.step(np.array([a], dtype=np.float32))
    assert done and info["policy"].precision == {"conv0": "fp16", "conv1": "int4", "conv2": "fp32", "conv3": "int8"}


def test_quant_wall_moves_the_biggest_savers_to_the_fastest_precision() -> None:
    from hwcompress.search.stages import MixPredictor

    speed = {"fp32": 1.0, "int8": 0.5, "int4": 2.0}
    layer_ms = [1.0, 4.0, 2.0, 0.5]  # fp32 total 7.5 ms
    predict = MixPredictor(["m0", "m1", "m2", "m3"], layer_ms=layer_ms, speed=speed)
    env = QuantEnv(_layers(4), lambda p: EpisodeOutcome(0.0, {"policy": p}), precisions=("fp32", "int8", "int4"),
                   speed=speed, predict=predict, budget_ms=5.0)
    env.reset()
    for _ in range(4):  # all int4: predicted 15 ms
        _, _, _, _, info = env.step(np.array([-1.0], dtype=np.float32))
    prec = info["policy"].precision
    # largest saving first: conv1 (4 ms x 1.5), then conv2 (2 x 1.5) -> 1*2 + 4*.5 + 2*.5 + .5*2 = 6 ms, then conv0
    assert prec == {"conv0": "int8", "conv1": "int8", "conv2": "int8", "conv3": "int4"}
    assert env.predicted_ms(list(prec.values())) == pytest.approx(4.5) and env.walled == 3
    # within budget already: the wall leaves the agent's choice alone
    env.reset()
    for _ in range(4):
        _, _, _, _, info = env.step(np.array([1.0], dtype=np.float32))
    assert set(info["policy"].precision.values()) == {"int8"} and env.walled == 0


def test_a_mix_judged_over_is_projected_by_the_same_wall_keeping_its_other_layers() -> None:
    from hwcompress.search.envs import mix_wall
    from hwcompress.search.stages import MixPredictor

    speed = {"fp32": 1.0, "int8": 0.5, "fp16": 1.2}
    predict = MixPredictor(["m0", "m1", "m2", "m3"], layer_ms=[1.0, 4.0, 2.0, 0.5], speed=speed)
    mix = ["fp16", "fp32", "fp32", "fp16"]  # 1.2 + 4 + 2 + 0.6 = 7.8 ms
    # judged 10 % over an aim it was predicted at: the goal is 7.8 / 1.1; one move (conv1 to int8, -2 ms) fits
    goal = predict(mix) / 1.1
    new, moved = mix_wall(mix, predict, goal, "int8")
    assert (new, moved) == (["fp16", "int8", "fp32", "fp16"], 1) and predict(new) <= goal
    assert mix == ["fp16", "fp32", "fp32", "fp16"]  # the candidate's own choice is not changed
    # a goal no mix reaches: every layer moved, then it stops
    new, moved = mix_wall(mix, predict, 1.0, "int8")
    assert set(new) == {"int8"} and moved == 4
    # already within: nothing moves (the projection then makes no new candidate)
    assert mix_wall(mix, predict, 8.0, "int8") == (mix, 0)


def test_budget_parsing() -> None:
    assert parse_budget("0.5x", "--latency-budget").resolve(10.0) == 5.0
    assert parse_budget("3.2ms", "--latency-budget").resolve(10.0) == 3.2
    assert parse_budget("500KB", "--size-budget", unit="b").resolve(1e6) == 500_000
    for bad in ("fast", "1.5x", "-2ms", "3MB"):
        with pytest.raises(UsageError):
            parse_budget(bad, "--latency-budget")


def test_reward_penalises_excess_in_proportion() -> None:
    within = accuracy_within_budget(0.9, Costs(latency=4.0, latency_budget=5.0))
    over10 = accuracy_within_budget(0.9, Costs(latency=5.5, latency_budget=5.0))
    over20 = accuracy_within_budget(0.9, Costs(latency=6.0, latency_budget=5.0))
    assert within == pytest.approx(0.9)
    assert over10 == pytest.approx(0.9 - 2.0 * 0.1)
    assert over20 < over10 < within
    assert within_budget(Costs(latency=4.0, latency_budget=5.0))
    assert not within_budget(Costs(latency=4.0, latency_budget=5.0, size=2.0, size_budget=1.0))
    faster = accuracy_within_budget(0.9, Costs(latency=2.0, latency_budget=5.0, latency_ref=4.0), speed_weight=0.1)
    assert faster > within
