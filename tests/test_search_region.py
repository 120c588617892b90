"""Stage 1's feasible region on the measured latency table: fast counts only, refit on measurements,
predictions of a real model's candidates, projection within the limit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hwcompress.latency.graph import LayerSignature, LayerTemplate
from hwcompress.latency.predictor import analyse, table_for
from hwcompress.latency.table import LatencyTable
from hwcompress.profiling.cache import MeasurementCache
from hwcompress.profiling.measure import measure
from hwcompress.prune import PruneGroup, apply_policy
from hwcompress.records import CompressionPolicy
from hwcompress.search.region import TableRegion
from hwcompress.targets import load_target
from tests.test_latency_table import SHAPE, tiny_resnet


def _conv(cin: int, cout: int) -> LayerSignature:
    return LayerSignature("Conv", cin, cout, (8, 8), (8, 8), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, fused="relu")


def _one_layer_region(times: dict[int, float], limit: float = float("inf")) -> TableRegion:
    """A region over one conv whose output group (32 channels, multiple 8) takes ``times[count]`` ms."""
    tmpl = LayerTemplate("conv", "conv", _conv(8, 32), in_group=-1, out_group=0)
    entries = {tmpl.signature({0: c}).key(): ms for c, ms in times.items()}
    table = LatencyTable("t", entries, {0: sorted(times)})
    group = PruneGroup(index=0, name="conv", channels=32, layers=("conv",))
    return TableRegion(table, [tmpl], [group], multiple=8, lower_bound=0.2, limit=limit,
                       baseline_ms={"fp32": 2.0 * times[32]})


def test_a_count_the_table_shows_no_faster_than_a_larger_one_is_never_offered() -> None:
    # 24 channels run slower than 32 (an unaligned kernel): 0.75 is not offered; 8 and 16 are
    region = _one_layer_region({8: 0.10, 16: 0.20, 24: 0.45, 32: 0.40})
    assert region.choices(0).tolist() == [0.25, 0.5, 1.0]
    # equal time is no faster either
    assert _one_layer_region({8: 0.2, 16: 0.2, 24: 0.3, 32: 0.4}).choices(0).tolist() == [0.5, 0.75, 1.0]


def test_the_residual_starts_at_the_baseline_and_refits_on_measurements() -> None:
    region = _one_layer_region({8: 0.10, 16: 0.20, 24: 0.30, 32: 0.40})
    full = np.ones(1)
    assert region.predict(full) == pytest.approx(0.8)  # the baseline: measured 2x the table's sum
    # the device really runs 0.1 ms of overhead + 1.5x the units: two measurements give the line
    for k, units in ((0.25, 0.10), (0.5, 0.20)):
        err = region.observe(np.array([k]), 0.1 + 1.5 * units, "fp32")
        assert np.isfinite(err)
    assert region.within(0.10)[1] == 2
    # the refit line goes through what was measured (Theil-Sen over baseline + 2 points)
    assert region.predict(np.array([0.5])) == pytest.approx(0.4, rel=0.3)
    assert region.predict(np.array([0.25])) < region.predict(np.array([0.5])) < region.predict(full)


def test_region_on_a_measured_table_predicts_real_candidates_and_projects_within(tmp_path: Path) -> None:
    target = load_target("x86-cpu")
    net = tiny_resnet()
    an = analyse(net, SHAPE, tmp_path)
    table = table_for(an, target, cache=MeasurementCache(tmp_path / "cache.sqlite"))
    base = measure(an.onnx_path, target, cache=None)
    region = TableRegion(table, an.templates, an.groups, multiple=target.channel_multiple,
                         lower_bound=0.25, limit=float("inf"), baseline_ms={"fp32": base.latency.median_ms})
    for i, g in enumerate(an.groups):
        ch = region.choices(i)
        assert ch[-1] == 1.0 and ch[0] >= 0.25 - 1e-9 and np.all(np.diff(ch) > 0)
        assert all(round(k * g.channels) % target.channel_multiple == 0 or k == 1.0 for k in ch)
    keep = np.array([region.choices(i)[len(region.choices(i)) // 2] for i in range(len(an.groups))])
    predicted = region.predict(keep)
    assert 0 < predicted < region.predict(np.ones(len(an.groups))) * 1.5
    # a real candidate, exported and measured: the measurement refits the region
    from hwcompress.export import export_onnx

    policy = CompressionPolicy(keep={g.name: float(k) for g, k in zip(an.groups, keep, strict=True) if k < 1.0})
    pruned = apply_policy(net, policy, SHAPE, channel_multiple=target.channel_multiple).eval()
    ms = measure(export_onnx(pruned, SHAPE, tmp_path / "cand.onnx"), target, cache=None).latency.median_ms
    region.observe(keep, ms, "fp32")
    assert region.within(10.0) == (1, 1) and region.precision_for(keep) == "fp32"
    goal = 0.8 * region.predict(keep)
    out = region.project(keep, goal)
    assert region.predict(out) <= goal + 1e-9 or np.array_equal(out, region.project(keep, 0.0))
    assert np.all(out <= keep + 1e-9)


def test_each_candidate_is_built_in_the_precision_predicted_fastest_for_it() -> None:
    """int8 pays on the wide model and not on a narrow one (its boundaries stay while the conv shrinks)."""
    tmpl = LayerTemplate("conv", "conv", _conv(8, 32), in_group=-1, out_group=0)
    fp32 = {8: 0.10, 16: 0.20, 24: 0.30, 32: 0.40}
    int8 = {8: 0.12, 16: 0.14, 24: 0.16, 32: 0.18}  # a fixed cost per call, little per channel
    entries = {tmpl.signature({0: c}).key(): ms for c, ms in fp32.items()}
    entries.update({tmpl.signature({0: c}, "int8").key(): ms for c, ms in int8.items()})
    table = LatencyTable("t", entries, {0: [8, 16, 24, 32]})
    group = PruneGroup(index=0, name="conv", channels=32, layers=("conv",))
    region = TableRegion(table, [tmpl], [group], multiple=8, lower_bound=0.2, limit=float("inf"),
                         baseline_ms={"fp32": 0.40, "int8": 0.18})
    assert region.precisions == ("fp32", "int8")
    assert region.precision_for(np.array([1.0])) == "int8" and region.precision_for(np.array([0.25])) == "fp32"
    assert region.predict(np.array([0.25])) == pytest.approx(0.10)
    assert region.predict(np.array([1.0])) == pytest.approx(0.18)
