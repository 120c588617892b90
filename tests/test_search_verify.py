"""A search's winner judged on fresh profiles, and the baseline re-profiled after stage 1: real ONNX Runtime profiles."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hwcompress.export import export_onnx
from hwcompress.search.run import BASELINE_ROUNDS, VERIFY_ROUNDS, NullReporter, Search, SearchConfig
from hwcompress.targets import load_target


def _convnet(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()


def _fake(tmp_path: Path, base_ms: float) -> SimpleNamespace:
    base = export_onnx(_convnet(64), (1, 1, 28, 28), tmp_path / "baseline.onnx")
    fake = SimpleNamespace(
        cfg=SearchConfig(latency_budget="0.5x", guard=0.02), run_dir=tmp_path, target=load_target("x86-cpu"),
        cache=None, base_file=base, reporter=NullReporter(), per_node=True,
    )
    fake._set_baseline = lambda m, save=True: Search._set_baseline(fake, m, save=save)  # type: ignore[arg-type]
    fake._fastest = lambda *a, **k: Search._fastest(fake, *a, **k)  # type: ignore[arg-type]
    fake.base_ms = base_ms
    fake.budget_ms = 0.5 * base_ms
    return fake


def test_judge_takes_the_fastest_of_fresh_profiles(tmp_path: Path) -> None:
    fake = _fake(tmp_path, base_ms=2.0)
    same = Search._judge(fake, fake.base_file)  # type: ignore[arg-type]
    assert len(same["rounds_ms"]) == VERIFY_ROUNDS and min(same["rounds_ms"]) > 0
    assert same["ms"] == min(same["rounds_ms"]) and same["ratio"] == pytest.approx(same["ms"] / 2.0)
    small = export_onnx(_convnet(8), (1, 1, 28, 28), tmp_path / "small.onnx")  # ~1/64 of the conv work
    assert Search._judge(fake, small)["ms"] < 0.5 * same["ms"]  # type: ignore[arg-type]


def test_recheck_takes_a_faster_baseline_and_resolves_the_budget_again(tmp_path: Path) -> None:
    fake = _fake(tmp_path, base_ms=1000.0)  # "measured in a slow spell": no real profile is that slow
    info = Search._recheck_baseline(fake)  # type: ignore[arg-type]
    assert info["updated"] and info["was_ms"] == 1000.0 and len(info["rounds_ms"]) == BASELINE_ROUNDS
    assert fake.base_ms == min(info["rounds_ms"]) == info["now_ms"]
    assert fake.budget_ms == pytest.approx(0.5 * fake.base_ms) and fake.inner_ms == pytest.approx(0.98 * fake.budget_ms)
    saved = json.loads((tmp_path / "baseline.json").read_text())  # a resumed search holds the same budget
    assert saved["latency"]["median_ms"] == fake.base_ms

    (tmp_path / "x").mkdir()
    fake = _fake(tmp_path / "x", base_ms=1e-6)  # faster than any profile: kept
    info = Search._recheck_baseline(fake)  # type: ignore[arg-type]
    assert not info["updated"] and fake.base_ms == 1e-6 and not (tmp_path / "x" / "baseline.json").exists()
