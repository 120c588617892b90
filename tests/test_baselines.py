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
