"""Per-layer latency table and its predictor (issue 21, points 1 and 2): real ONNX Runtime
measurements on tiny models, the profilers' batch mode, the cache, the CLI's JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from hwcompress.errors import UsageError
from hwcompress.latency.graph import LayerSignature, extract_templates
from hwcompress.latency.predictor import analyse, evaluate, figures, random_counts, spearman
from hwcompress.latency.table import (
    LatencyTable,
    build_entry_model,
    build_table,
    channel_options,
    plan_grid,
    table_signatures,
    thin,
)
from hwcompress.profiling.adapters import profilers_dir
from hwcompress.profiling.cache import MeasurementCache
from hwcompress.profiling.measure import measure_batch
from hwcompress.profiling.runner import LocalRunner
from hwcompress.targets import load_target
from hwcompress.zoo.models import MobileNetV2Small, ResNet20

SHAPE = (1, 1, 16, 16)


def tiny_resnet(in_channels: int = 1, num_classes: int = 10) -> torch.nn.Module:
    """Two stages, one block each: 8 and 16 channels (the CLI test loads it as file.py:tiny_resnet)."""
    torch.manual_seed(0)
    return ResNet20(in_channels, num_classes, widths=(8, 16, 16), blocks=1)


class CountingRunner:
    """A LocalRunner that counts its profiler runs (and may refuse to run at all)."""

    def __init__(self, refuse: bool = False) -> None:
        self.inner = LocalRunner()
        self.refuse = refuse
        self.calls = 0

    def run(self, script: str, args: Sequence[str], files: Sequence[Path], timeout_s: float) -> str:
        self.calls += 1
        if self.refuse:
            raise AssertionError(f"{script} was started, but everything should come from the cache")
        return self.inner.run(script, args, files, timeout_s)


def _conv(cin: int, cout: int, hw: int = 8, fused: str = "relu", groups: int = 1) -> LayerSignature:
    return LayerSignature("Conv", cin, cout, (hw, hw), (hw, hw), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), groups,
                          fused=fused)


# --------------------------------------------------------------------------- batch mode
def test_ort_batch_mode_one_line_per_model(tmp_path: Path) -> None:
    a = build_entry_model(_conv(8, 8), tmp_path / "a.onnx")
    b = build_entry_model(_conv(8, 16, fused="add+relu"), tmp_path / "b.onnx")
    missing = tmp_path / "missing.onnx"
    res = subprocess.run(
        [sys.executable, str(profilers_dir() / "ort_bench.py"), "--warmup", "1", "--min-runs", "3", "--min-seconds",
         "0", "--batch", str(a), str(missing), str(b)],
        capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(ln) for ln in res.stdout.splitlines()]
    assert len(lines) == 4
    assert [ln.get("model") for ln in lines[:3]] == [str(a), str(missing), str(b)]
    assert lines[0]["ok"] and lines[2]["ok"] and lines[0]["latency"]["n"] >= 3
    assert lines[1]["ok"] is False and lines[1]["kind"] == "model" and "does not exist" in lines[1]["error"]
    assert lines[0]["model_sha256"] != lines[2]["model_sha256"]
    assert [i["name"] for i in lines[2]["inputs"]] == ["x", "r"]  # the residual add is a second input
    assert lines[3] == {**lines[3], "ok": True, "batch": {"models": 3, "failed": 1}}


def test_batch_and_model_together_is_a_usage_error(tmp_path: Path) -> None:
    a = build_entry_model(_conv(8, 8), tmp_path / "a.onnx")
    res = subprocess.run([sys.executable, str(profilers_dir() / "ort_bench.py"), "--model", str(a), "--batch", str(a)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert json.loads(res.stdout)["kind"] == "usage"


def test_trt_refuses_batch_mode_and_its_adapter_falls_back() -> None:
    from hwcompress.profiling.adapters import get_adapter

    res = subprocess.run([sys.executable, str(profilers_dir() / "trt_bench.py"), "--batch", "x.onnx"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "batch mode not supported for this runtime" in json.loads(res.stdout)["error"]
    assert get_adapter("tensorrt").supports_batch is False
    assert get_adapter("onnxruntime").supports_batch is True


def test_measure_batch_orders_results_and_caches(tmp_path: Path) -> None:
    target = load_target("x86-cpu")
    target = target.__class__(**{**target.__dict__, "measure": target.measure.__class__(
        warmup_runs=2, min_runs=5, min_seconds=0.0, max_runs=200, max_seconds=0.2, max_cv=1.0, max_rounds=1)})
    small = build_entry_model(_conv(8, 8, hw=4), tmp_path / "small.onnx")
    big = build_entry_model(_conv(64, 64, hw=32), tmp_path / "big.onnx")
    cache = MeasurementCache(tmp_path / "c.sqlite")
    runner = CountingRunner()
    first = measure_batch([small, big], target, cache=cache, runner=runner)
    assert runner.calls == 1  # one process for both
    assert [m.cached for m in first] == [False, False]
    assert first[1].latency.median_ms > 3 * first[0].latency.median_ms  # 64x the MACs
    again = measure_batch([big, small], target, cache=cache, runner=CountingRunner(refuse=True))
    assert [m.cached for m in again] == [True, True]
    assert again[0].latency.median_ms == first[1].latency.median_ms


def test_table_over_ssh_uses_batch_mode(sshd, tmp_path: Path) -> None:
    """The same table build through the SSH runner: one remote command per batch, not per entry."""
    import tomllib

    pytest.importorskip("paramiko")
    from hwcompress.profiling.remote import SshRunner, close_all, runner_for
    from hwcompress.targets import parse_target

    target = parse_target(tomllib.loads(sshd.target_toml("onnxruntime")), "test", "loop-ort")
    an = analyse(tiny_resnet(), SHAPE, tmp_path)
    grid = plan_grid(an.templates, an.group_channels, 8)
    runner = runner_for(target)
    assert isinstance(runner, SshRunner)
    try:
        table = build_table(an.templates, grid, target, cache=MeasurementCache(tmp_path / "c.sqlite"), runner=runner,
                            repeat_check=False)
        n = len(table_signatures(an.templates, grid))
        assert table.measured == len(table) == n
        assert runner.stats.commands <= 6  # set-up and one batch; far fewer than the entries
        assert n > 10
        assert all(v > 0 for v in table.entries.values())
    finally:
        close_all()


# --------------------------------------------------------------------------- graph units
def test_units_fuse_bn_activation_and_residual_add(tmp_path: Path) -> None:
    net = tiny_resnet()
    an = analyse(net, SHAPE, tmp_path)
    by_module = {t.module: t for t in an.templates}
    assert by_module["stem.0"].base.fused == "relu"
    assert by_module["layers.0.conv2"].base.fused == "add+relu"  # identity shortcut
    assert by_module["layers.1.conv2"].base.fused == "add+relu"  # claims the add over the shortcut conv
    assert by_module["layers.1.shortcut.0"].base.fused == ""
    assert by_module["classifier"].base.op == "Gemm"
    assert not any(t.base.op == "Add" for t in an.templates)  # every add is fused into a conv
    # conv2's input channels are conv1's group; its output channels the stem's (coupled) group
    groups = {g.name: g.index for g in an.groups}
    assert by_module["layers.0.conv2"].in_group == groups["layers.0.conv1"]
    assert by_module["layers.0.conv2"].out_group == groups["stem.0"]
    assert by_module["classifier"].in_group == by_module["layers.2.conv2"].out_group


@pytest.mark.parametrize("factory", [tiny_resnet, lambda: MobileNetV2Small(1, 10, stem=16, last=32)])
def test_signatures_from_counts_match_the_pruned_export(tmp_path: Path, factory) -> None:
    """What the predictor derives from per-group counts is what the pruned model's graph holds."""
    import random

    from hwcompress.export import export_onnx
    from hwcompress.prune import apply_policy
    from hwcompress.records import CompressionPolicy

    net = factory()
    an = analyse(net, SHAPE, tmp_path)
    counts = random_counts(an.groups, 8, random.Random(3))
    assert any(counts[g.index] < g.channels for g in an.groups)
    pruned = apply_policy(net, CompressionPolicy(), SHAPE, counts={g.name: counts[g.index] for g in an.groups})
    path = export_onnx(pruned, SHAPE, tmp_path / "pruned.onnx")
    actual = Counter(t.base.key() for t in extract_templates(path, {}))
    predicted = Counter(t.signature(counts).key() for t in an.templates)
    assert actual == predicted


# --------------------------------------------------------------------------- the table
def test_channel_grid_and_thinning() -> None:
    assert channel_options(16, 8) == [8, 16]
    assert channel_options(20, 8) == [8, 16, 20]
    assert channel_options(4, 8) == [4]
    assert thin([8, 16, 24, 32, 40, 48, 56, 64], 3) == [8, 40, 64]
    assert thin([8, 16], 5) == [8, 16]


def test_plan_grid_keeps_within_max_entries(tmp_path: Path) -> None:
    an = analyse(tiny_resnet(), SHAPE, tmp_path)
    full = plan_grid(an.templates, an.group_channels, 2)
    n_full = len(table_signatures(an.templates, full))
    thinned = plan_grid(an.templates, an.group_channels, 2, max_entries=n_full // 3)
    assert len(table_signatures(an.templates, thinned)) <= n_full // 3
    assert all(v[-1] == an.group_channels[g] for g, v in thinned.items())  # the full width is always there


def test_table_build_then_cache_hit_measures_nothing(tmp_path: Path) -> None:
    target = load_target("x86-cpu")
    an = analyse(tiny_resnet(), SHAPE, tmp_path)
    grid = plan_grid(an.templates, an.group_channels, target.channel_multiple)
    cache = MeasurementCache(tmp_path / "cache.sqlite")
    runner = CountingRunner()
    first = build_table(an.templates, grid, target, cache=cache, runner=runner)
    n = len(table_signatures(an.templates, grid))
    assert len(first) == n == first.measured and first.cached == 0
    assert 1 <= runner.calls <= 4  # batch mode: the entries, then the repeatability sample
    # the repeatability figure is reported, not bounded: how much a second timing differs depends on the machine's load
    assert first.repeat_rel_diff is not None and 0.0 <= first.repeat_rel_diff < float("inf")
    # entries are timed on the device: the conv entry with the most MACs costs more than the one with the fewest
    def macs(sig: LayerSignature) -> int:
        return sig.in_ch // sig.groups * sig.out_ch * sig.kernel[0] * sig.kernel[1] * sig.out_hw[0] * sig.out_hw[1]

    convs = [s for s in first.signatures.values() if s.op == "Conv"]
    cheap, dear = min(convs, key=macs), max(convs, key=macs)
    assert macs(dear) >= 16 * macs(cheap)
    assert first.entries[dear.key()] > first.entries[cheap.key()]
    second = build_table(an.templates, grid, target, cache=cache, runner=CountingRunner(refuse=True))
    assert second.measured == 0 and second.cached == n
    assert second.entries == first.entries


def test_unit_ms_interpolates_between_grid_counts() -> None:
    from hwcompress.latency.graph import LayerTemplate

    tmpl = LayerTemplate("n", "m", _conv(16, 16), in_group=0, out_group=1)
    grid = {0: [8, 16], 1: [8, 24]}
    entries = {tmpl.signature({0: i, 1: o}).key(): float(i * o) for i in (8, 16) for o in (8, 24)}
    table = LatencyTable("t", entries, grid)
    assert table.unit_ms(tmpl, {0: 8, 1: 24}) == 192.0
    assert table.unit_ms(tmpl, {0: 8, 1: 16}) == pytest.approx(128.0)  # bilinear: i * o is exact here
    assert table.unit_ms(tmpl, {0: 12, 1: 16}) == pytest.approx(192.0)
    with pytest.raises(UsageError):
        table.unit_ms(tmpl, {0: 32, 1: 8})


# --------------------------------------------------------------------------- predictor
def test_figures_and_spearman() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    f = figures([1.0, 2.1, 2.9], [1.0, 2.0, 3.0])
    assert f["within_10pct"] == pytest.approx(1.0)
    assert f["median_abs_err"] == pytest.approx(1 / 30)
    assert figures([1.5, 2.0], [1.0, 2.0])["within_10pct"] == 0.5


def test_evaluate_reports_held_out_figures(tmp_path: Path) -> None:
    target = load_target("x86-cpu")
    cache = MeasurementCache(tmp_path / "cache.sqlite")
    ev = evaluate(tiny_resnet(), SHAPE, target, n_candidates=4, n_fit=2, cache=cache, workdir=tmp_path, passes=2)
    d = ev.to_dict()
    assert all(len(c["passes_ms"]) == 2 for c in d["candidates"])
    assert 0.0 <= d["held_out"]["remeasure_within_10pct"] <= 1.0
    assert d["held_out"]["n"] == 4 and len(d["candidates"]) == 6
    assert sum(c["fit"] for c in d["candidates"]) == 2
    assert 0.0 <= d["held_out"]["within_10pct"] <= 1.0
    assert d["table"]["entries"] > 0 and d["table"]["measured"] == d["table"]["entries"]
    for c in d["candidates"]:
        assert c["measured_ms"] > 0 and c["table_ms"] > 0
        assert c["measured_ms"] == sorted(c["passes_ms"])[len(c["passes_ms"]) // 2] or len(c["passes_ms"]) == 2
    assert d["fit"]["n"] == 2
    assert d["held_out_p10"]["within_10pct"] >= 0.0
    # read beside the baseline, fresh: a second evaluation serves the table from the cache, not the readings
    again = evaluate(tiny_resnet(), SHAPE, target, n_candidates=4, n_fit=2, cache=cache, workdir=tmp_path, passes=1).to_dict()
    assert again["table"]["measured"] == 0 and not any(c["cached"] for c in again["candidates"])


def test_cli_latency_model_json_and_bad_input(tmp_path: Path) -> None:
    env = {**os.environ, "HWCOMPRESS_CACHE": str(tmp_path / "cachedir")}
    spec = f"{Path(__file__).resolve()}:tiny_resnet"
    base = [sys.executable, "-m", "hwcompress", "latency-model", spec, "--input-shape", "1,16,16",
            "--cache", str(tmp_path / "c.sqlite")]
    res = subprocess.run([*base, "--candidates", "3", "--fit", "2", "--passes", "1", "--json"], capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    for path in ("held_out.n", "held_out.within_10pct", "held_out.spearman", "held_out.median_abs_err",
                 "macs_model.within_10pct", "macs_model.spearman", "table.entries", "table.seconds"):
        obj = d
        for part in path.split("."):
            obj = obj[part]
        assert isinstance(obj, (int, float)), path
    assert d["held_out"]["n"] == 3
    bad = subprocess.run([*base, "--candidates", "1"], capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "--candidates must be at least 2" in bad.stderr
    onnx = subprocess.run([sys.executable, "-m", "hwcompress", "latency-model", "model.onnx"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert onnx.returncode == 2 and "needs a torch model" in onnx.stderr


@pytest.mark.slow
def test_resnet20_predictor_beats_the_macs_model(tmp_path: Path) -> None:
    """The issue's goals on ResNet-20 (noisy shared CPUs: asserted with some slack)."""
    from hwcompress.zoo.models import MODELS

    torch.manual_seed(0)
    ev = evaluate(MODELS["resnet-20"](), (1, 1, 28, 28), load_target("x86-cpu"), n_candidates=20, n_fit=8,
                  cache=MeasurementCache(tmp_path / "c.sqlite"), workdir=tmp_path)
    assert ev.held_out["within_10pct"] >= 0.85
    assert ev.held_out["spearman"] >= 0.9
    assert ev.held_out["median_abs_err"] < ev.macs_model["median_abs_err"]
    assert ev.table["seconds"] < 120


# --------------------------------------------------------------------------- precisions
def test_boundaries_follow_the_int8_regions(tmp_path: Path) -> None:
    from hwcompress.latency.graph import boundaries, unit_precisions

    an = analyse(tiny_resnet(), SHAPE, tmp_path)
    modules = [t.module for t in an.templates if t.module]
    all_int8 = unit_precisions(an.templates, {m: "int8" for m in modules})
    kinds = Counter(b.base.op for b in boundaries(an.templates, all_int8))
    assert kinds == {"Quantize": 1, "Dequantize": 1}  # into the first conv, out of the classifier
    assert not boundaries(an.templates, unit_precisions(an.templates, {}))
    # one fp32 conv inside an int8 model: its input is dequantized, its output quantized for the next
    one = unit_precisions(an.templates, {m: ("fp32" if m == "layers.0.conv1" else "int8") for m in modules})
    kinds = Counter(b.base.op for b in boundaries(an.templates, one))
    assert kinds == {"Quantize": 2, "Dequantize": 2}
    # fp16 / int4 layers are float on both sides, like fp32
    assert Counter(b.base.op for b in boundaries(an.templates, unit_precisions(
        an.templates, {m: ("fp16" if m == "layers.0.conv1" else "int8") for m in modules}))) == kinds


def test_precision_entries_run_the_kernels_the_quantizer_makes(tmp_path: Path) -> None:
    from dataclasses import replace

    sig = _conv(16, 16, hw=8)
    paths = [build_entry_model(replace(sig, precision=p), tmp_path / f"{p}.onnx") for p in ("int8", "fp16", "int4")]
    paths.append(build_entry_model(LayerSignature("Quantize", 16, 16, (8, 8), (8, 8), precision="int8"),
                                   tmp_path / "q.onnx"))
    res = subprocess.run(
        [sys.executable, str(profilers_dir() / "ort_bench.py"), "--warmup", "1", "--min-runs", "3", "--min-seconds",
         "0", "--per-node", "--batch", *map(str, paths)], capture_output=True, text=True, timeout=120)
    lines = [json.loads(ln) for ln in res.stdout.splitlines()[:-1]]
    assert all(ln["ok"] for ln in lines), lines
    ops = [{n["op_type"] for n in ln["per_node"]["nodes"]} for ln in lines]
    assert "QLinearConv" in ops[0] and "DequantizeLinear" not in ops[0]  # one integer kernel, uint8 in and out
    assert lines[0]["inputs"][0]["dtype"] == "uint8"
    assert "DequantizeLinear" in ops[2]  # int4 weights are dequantized every run
    assert ops[3] == {"QuantizeLinear"}


def test_theil_sen_ignores_one_slowed_measurement() -> None:
    import numpy as np

    from hwcompress.latency.predictor import theil_sen

    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    y = 0.5 + 2.0 * x
    y[2] *= 1.5  # one measurement during a burst of other load
    alpha, beta = theil_sen(x, y)
    assert beta == pytest.approx(2.0) and alpha == pytest.approx(0.5)
    assert theil_sen(np.array([2.0]), np.array([3.0])) == (1.0, 1.0)
