"""Reference compressions fitted to a measured latency budget (uniform, global magnitude), measured for real."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwcompress.baselines import builder, fit_to_latency
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


def test_unreachable_budget_returns_smallest_and_says_so(wide_vgg: object, tmp_path: Path) -> None:
    fit = fit_to_latency("uniform", wide_vgg, SHAPE, load_target("x86-cpu"), 1e-6, tmp_path, steps=3)  # type: ignore[arg-type]
    assert not fit.met
    # bisection 0.525 -> 0.2875 -> 0.16875, all over budget: the smallest tried is returned, flagged not met
    assert fit.knob == pytest.approx(0.16875) and fit.measured == 3


def test_unknown_method_is_a_policy_error(wide_vgg: object) -> None:
    with pytest.raises(PolicyError, match="unknown baseline method"):
        builder("random", wide_vgg, SHAPE, 8)  # type: ignore[arg-type]
