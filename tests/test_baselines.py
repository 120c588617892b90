"""Reference compressions fitted to a measured latency budget (uniform, global magnitude), measured for real."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hwcompress.baselines import builder, fit_to_latency, largest_within
from hwcompress.errors import PolicyError
from hwcompress.targets import load_target

SHAPE = (1, 1, 28, 28)


@pytest.fixture(scope="module")
def wide_vgg() -> object:
    import torch

    from hwcompress.zoo.models import VGGSmall

    torch.manual_seed(0)
    return VGGSmall(widths=(32, 64, 128)).eval()


@pytest.mark.parametrize("method", ["uniform", "global-magnitude"])
def test_fit_meets_a_measured_budget(method: str, wide_vgg: object, tmp_path: Path) -> None:
    from hwcompress.export import export_onnx
    from hwcompress.macs import count_macs
    from hwcompress.profiling.measure import measure

    target = load_target("x86-cpu")
    base_ms = measure(export_onnx(wide_vgg, SHAPE, tmp_path / "base.onnx"), target).latency.median_ms  # type: ignore[arg-type]
    budget = 0.5 * base_ms
    fit = fit_to_latency(method, wide_vgg, SHAPE, target, budget, tmp_path / "w", steps=5)  # type: ignore[arg-type]
    assert fit.met and fit.latency_ms <= budget
    assert 0.05 < fit.knob < 1.0 and fit.measured >= 1
    # the fitted model really is smaller than the original, and the original is untouched
    assert count_macs(fit.model, SHAPE)[0] < count_macs(wide_vgg, SHAPE)[0]  # type: ignore[arg-type]
    assert sum(1 for _ in (tmp_path / "w").glob("*.onnx")) == fit.measured


def test_fit_reads_through_the_searchs_reader_when_given(wide_vgg: object, tmp_path: Path) -> None:
    """bench_compare fits every method with the search's Reader (pairs beside the baseline, on its scale):
    each probe is read that way, none through a plain measurement."""
    from hwcompress.export import export_onnx
    from hwcompress.judge import Reader
    from hwcompress.profiling.measure import measure

    target = load_target("x86-cpu")
    base = export_onnx(wide_vgg, SHAPE, tmp_path / "base.onnx")  # type: ignore[arg-type]
    base_ms = measure(base, target).latency.median_ms
    reader = Reader(target, base, base_ms, pairs=1)
    read: dict[str, float] = {}

    def through_reader(path: Path) -> float:
        read[path.name] = reader.read(path).latency.median_ms
        return read[path.name]

    fit = fit_to_latency("uniform", wide_vgg, SHAPE, target, 0.5 * base_ms, tmp_path / "w", steps=4,  # type: ignore[arg-type]
                         read=through_reader)
    assert len(read) == fit.measured == sum(1 for _ in (tmp_path / "w").glob("*.onnx"))
    assert fit.file is not None and fit.latency_ms == read[fit.file.name]
    assert fit.met == (fit.latency_ms <= 0.5 * base_ms)


def test_unreachable_budget_returns_smallest_and_says_so(wide_vgg: object, tmp_path: Path) -> None:
    fit = fit_to_latency("uniform", wide_vgg, SHAPE, load_target("x86-cpu"), 1e-6, tmp_path, steps=3)  # type: ignore[arg-type]
    assert not fit.met
    # bisection 0.525 -> 0.2875 -> 0.16875, all over budget: the smallest tried is returned, flagged not met
    assert fit.knob == pytest.approx(0.16875) and fit.measured == 3


def test_unknown_method_is_a_policy_error(wide_vgg: object) -> None:
    with pytest.raises(PolicyError, match="unknown baseline method"):
        builder("random", wide_vgg, SHAPE, 8)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- largest_within: the one line search
def _probe(cost: Callable[[float], float | None]) -> tuple[list[float], Callable[[float], float | None]]:
    """``cost`` that records where it was called."""
    seen: list[float] = []

    def f(s: float) -> float | None:
        seen.append(s)
        return cost(s)

    return seen, f


def test_line_search_bisects_to_the_largest_point_within() -> None:
    seen, f = _probe(lambda s: 10 * s)  # within 4.0 up to s = 0.4
    s = largest_within(f, 4.0, 0.0, 1.0, steps=10)
    assert s is not None and 0.4 - 1 / 2**10 <= s <= 0.4 and 10 * s <= 4.0
    assert seen[:3] == [0.5, 0.25, 0.375]  # midpoints
    assert largest_within(lambda s: 10 * s, -1.0, 0.0, 1.0, steps=4) is None  # nothing within


def test_line_search_secant_uses_both_known_ends() -> None:
    seen, f = _probe(lambda s: 1.0 + 2.0 * s)  # linear: the secant hits 2.0 at s = 0.5 at once, then closes in
    s = largest_within(f, 2.0, 0.0, 1.0, steps=3, cost_lo=1.0, cost_hi=3.0, secant=True)
    assert seen[0] == pytest.approx(0.5) and s == pytest.approx(0.5)
    seen, f = _probe(lambda s: 1.0 + 2.0 * s)
    largest_within(f, 1.02, 0.0, 1.0, steps=1, cost_lo=1.0, cost_hi=3.0, secant=True)
    assert seen == [pytest.approx(0.1)]  # kept inside the bracket's middle 80 %
    seen, f = _probe(lambda s: 1.0 + 2.0 * s)
    largest_within(f, 2.0, 0.0, 1.0, steps=1, cost_lo=1.0, cost_hi=3.0, secant=True, aim=1.5)
    assert seen == [pytest.approx(0.25)]  # aimed under the limit


def test_line_search_known_ends() -> None:
    never, f = _probe(lambda s: 99.0)
    assert largest_within(f, 2.0, 0.0, 1.0, steps=5, cost_hi=1.5) == 1.0 and never == []  # the far end is within
    assert largest_within(lambda s: 99.0, 2.0, 0.2, 1.0, steps=3, cost_lo=1.0) == 0.2  # only the near end is
    seen, f = _probe(lambda s: 1.9)
    largest_within(f, 2.0, 0.0, 1.0, steps=5, cost_lo=1.0, close=0.1)
    assert len(seen) == 1  # within 10 % under the limit after one probe: stop


def test_line_search_unusable_points() -> None:
    # "lower": an unusable point counts as over (look lower)
    seen, f = _probe(lambda s: None if s > 0.3 else s)
    assert largest_within(f, 1.0, 0.0, 1.0, steps=4) == pytest.approx(0.25) and seen[:2] == [0.5, 0.25]
    # "higher": too far to build (look higher, never the answer)
    seen, f = _probe(lambda s: None if s < 0.3 else s)
    assert largest_within(f, 0.6, 0.0, 1.0, steps=3, unusable="higher") == 0.5 and seen == [0.5, 0.75, 0.625]
    assert largest_within(lambda s: None, 1.0, 0.0, 1.0, steps=3, unusable="higher") is None
    with pytest.raises(ValueError):
        largest_within(lambda s: s, 1.0, 1.0, 0.0, steps=3)


# --------------------------------------------------------------------------- issue 22: knapsack, NetAdapt, uniform + int8
def _quick(target: object) -> object:
    """x86-cpu with shorter profiles (one point per fit step is what is under test, not the profiler)."""
    import dataclasses

    m = target.measure  # type: ignore[attr-defined]
    return dataclasses.replace(target, measure=dataclasses.replace(m, min_seconds=0.1, max_rounds=2, max_cv=0.05))


def test_uniform_int8_fit_measures_the_int8_qdq_model_within_budget(wide_vgg: object, tmp_path: Path) -> None:
    import numpy as np

    from hwcompress.export import export_onnx
    from hwcompress.profiling.cache import MeasurementCache
    from hwcompress.profiling.measure import measure
    from hwcompress.quantize import layer_precisions, op_counts

    target = _quick(load_target("x86-cpu"))
    base_ms = measure(export_onnx(wide_vgg, SHAPE, tmp_path / "base.onnx"), target).latency.median_ms  # type: ignore[arg-type]
    calib = np.random.default_rng(0).standard_normal((16, 1, 28, 28)).astype(np.float32)
    cache = MeasurementCache(tmp_path / "cache.sqlite")
    fit = fit_to_latency("uniform+int8", wide_vgg, SHAPE, target, 0.5 * base_ms, tmp_path / "w", steps=4,  # type: ignore[arg-type]
                         calib_x=calib, cache=cache)
    assert fit.met and fit.latency_ms <= 0.5 * base_ms and 0.05 < fit.knob < 1.0
    assert fit.file is not None and fit.file.suffix == ".onnx"
    assert set(layer_precisions(fit.file).values()) == {"int8"}  # every weight layer runs as int8
    ops = op_counts(fit.file)
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    again = measure(fit.file, target, cache=cache)  # type: ignore[arg-type]
    assert again.cached and again.latency.median_ms == fit.latency_ms  # the fit's reading is of this very file
    with pytest.raises(PolicyError, match="calibration images"):
        fit_to_latency("uniform+int8", wide_vgg, SHAPE, target, 1.0, tmp_path / "x", steps=1)  # type: ignore[arg-type]


def test_knapsack_fit_meets_a_measured_budget_and_keeps_more_importance_than_uniform(wide_vgg: object,
                                                                                      tmp_path: Path) -> None:
    """Importance concentrated against cost: features.6.0 (128 channels) is unimportant but for 8 channels,
    features.7.0 (128 channels too) is important.  At the knapsack's predicted latency the best uniform keep
    ratio keeps clearly less importance; the knapsack's model measures within the budget, has the counts it
    chose, and keeps each group's most important channels."""
    import dataclasses

    import numpy as np
    import torch

    from hwcompress.baselines import fit_knapsack
    from hwcompress.export import export_onnx
    from hwcompress.knapsack import choice_count, kept_importance
    from hwcompress.profiling.cache import MeasurementCache
    from hwcompress.profiling.measure import measure
    from hwcompress.prune import group_channels
    from hwcompress.search.region import build_table_region

    target = dataclasses.replace(_quick(load_target("x86-cpu")), channel_multiple=32)  # a small table
    base = export_onnx(wide_vgg, SHAPE, tmp_path / "base.onnx")  # type: ignore[arg-type]
    base_ms = measure(base, target).latency.median_ms  # type: ignore[arg-type]
    region = build_table_region(wide_vgg, SHAPE, target, base_onnx=base, baseline_ms={"fp32": base_ms},  # type: ignore[arg-type]
                                limit=float("inf"), lower_bound=0.2, workdir=tmp_path,
                                cache=MeasurementCache(tmp_path / "cache.sqlite"))
    names = [g.name for g in region.groups]
    rng = np.random.default_rng(0)
    importance = [rng.uniform(0.5, 1.0, g.channels) for g in region.groups]
    cheap = names.index("features.6.0")
    importance[cheap] = np.where(np.arange(128) % 16 == 3, 5.0, 0.01)  # 8 channels matter
    importance[names.index("features.7.0")] *= 4.0
    budget = 0.85 * base_ms  # the floor (128-channel groups at a quarter, 64 at a half) measures ~0.65-0.75x
    fit = fit_knapsack(wide_vgg, SHAPE, target, budget, tmp_path / "w", region=region, importance=importance,  # type: ignore[arg-type]
                       steps=4)
    assert fit.met and fit.latency_ms <= budget and fit.method == "knapsack"
    keep = fit.info["keep"]
    assert group_channels(fit.model, SHAPE) == {g.name: choice_count(keep[g.name], g.channels) for g in region.groups}
    # the same predicted latency: the best uniform ratio (snapped to each group's choices) within it
    pred = fit.info["predicted_ms"]
    channels = [g.channels for g in region.groups]

    def kept(k: np.ndarray) -> float:
        return sum(kept_importance(i, choice_count(r, c)) for i, r, c in zip(importance, k, channels, strict=True))

    uniform = [region.snap(np.full(len(names), r)) for r in np.linspace(0.2, 1.0, 33)]
    best_uniform = max(kept(u) for u in uniform if region.predict(u) <= pred)
    total = sum(float(i.sum()) for i in importance)
    assert fit.info["importance_kept"] * total > best_uniform * 1.05
    assert keep["features.6.0"] < 1.0 and keep["features.7.0"] == 1.0  # the unimportant group went, not the important
    # the 8 channels that matter in features.6.0 are among those kept: their input slices of the next conv
    # (features.7.0, unpruned, so its filters keep every row) survive unchanged
    orig = wide_vgg.features[7][0].weight.detach()  # type: ignore[attr-defined]
    got = fit.model.features[7][0].weight.detach()  # type: ignore[attr-defined]
    assert got.shape[1] == choice_count(keep["features.6.0"], 128) < 128
    for i in np.flatnonzero(np.arange(128) % 16 == 3):
        assert any(torch.equal(orig[:, i], got[:, j]) for j in range(got.shape[1]))


def test_netadapt_meets_a_measured_budget_one_group_at_a_time(wide_vgg: object, fmnist_small: object,
                                                              tmp_path: Path) -> None:
    import dataclasses

    from hwcompress.baselines import netadapt
    from hwcompress.export import export_onnx
    from hwcompress.profiling.measure import measure
    from hwcompress.prune import group_channels

    target = dataclasses.replace(_quick(load_target("x86-cpu")), channel_multiple=32)
    base = export_onnx(wide_vgg, SHAPE, tmp_path / "base.onnx")  # type: ignore[arg-type]
    # the fastest of 3 readings: a budget made from one slow reading can let the unpruned model in
    base_ms = min(measure(base, target, force=r > 0).latency.median_ms for r in range(3))
    budget = 0.7 * base_ms
    fit = netadapt(wide_vgg, SHAPE, target, budget, tmp_path / "w", splits=fmnist_small, step=0.15,  # type: ignore[arg-type]
                   max_measurements=120, val_limit=200)
    assert fit.met and fit.latency_ms <= budget and fit.method == "netadapt"
    history = fit.info["history"]
    assert fit.knob == len(history) >= 1 and 2 <= fit.measured <= 120
    assert [h["ms"] for h in history][-1] == fit.latency_ms
    assert all(0.0 <= h["score"] <= 1.0 for h in history)
    # one group pruned per iteration, each to a count on the multiple; the model has the recorded counts
    assert group_channels(fit.model, SHAPE) == fit.info["counts"]
    assert all(c % 32 == 0 for c in fit.info["counts"].values())
    assert sum(c < group_channels(wide_vgg, SHAPE)[n] for n, c in fit.info["counts"].items()) <= len(history)  # type: ignore[arg-type]


def test_netadapt_stops_at_its_measurement_bound(wide_vgg: object, fmnist_small: object, tmp_path: Path) -> None:
    import dataclasses

    from hwcompress.baselines import netadapt

    target = dataclasses.replace(_quick(load_target("x86-cpu")), channel_multiple=32)
    fit = netadapt(wide_vgg, SHAPE, target, 1e-6, tmp_path, splits=fmnist_small, max_measurements=4,  # type: ignore[arg-type]
                   val_limit=100)
    assert fit.measured == 4 and not fit.met and fit.info["exhausted"]
    assert len(list(tmp_path.glob("*.onnx"))) == 4  # the start and three proposals' probes: nothing more profiled


def test_netadapt_goes_on_where_its_end_point_is_not_confirmed(wide_vgg: object, fmnist_small: object,
                                                               tmp_path: Path) -> None:
    """The greedy step keeps the best of many quick readings, so the model that first reads within may be a
    lucky reading: a confirmation that finds it over sends the pruning on, and only a confirmed model stops it."""
    import dataclasses

    from hwcompress.baselines import netadapt
    from hwcompress.export import export_onnx
    from hwcompress.profiling.measure import measure

    target = dataclasses.replace(_quick(load_target("x86-cpu")), channel_multiple=32)
    base = export_onnx(wide_vgg, SHAPE, tmp_path / "base.onnx")  # type: ignore[arg-type]
    budget = 0.7 * min(measure(base, target, force=r > 0).latency.median_ms for r in range(3))
    confirmations: list[tuple[Path, float]] = []

    def confirm(path: Path) -> float:  # the first end point is found over (as the judge found NetAdapt's), then real
        ms = budget * 1.25 if not confirmations else measure(path, target, force=True).latency.median_ms
        confirmations.append((path, ms))
        return ms

    fit = netadapt(wide_vgg, SHAPE, target, budget, tmp_path / "w", splits=fmnist_small, step=0.15,  # type: ignore[arg-type]
                   max_measurements=160, val_limit=200, confirm=confirm)
    assert len(confirmations) >= 2 and fit.met and fit.info["confirmed"]
    first, last = confirmations[0][0], confirmations[-1][0]
    assert first != last and fit.file == last and fit.latency_ms == confirmations[-1][1] <= budget
    history = fit.info["history"]
    refused = [i for i, h in enumerate(history) if h.get("confirm_ms") == budget * 1.25]
    assert len(refused) == 1 and refused[0] < len(history) - 1  # pruning went on after the refused end point
    assert history[-1]["confirm_ms"] == fit.latency_ms
