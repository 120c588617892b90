"""A search's winner judged beside the baseline on fresh profiles, and the baseline re-profiled after stage 1: real ONNX Runtime profiles."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hwcompress.export import export_onnx
from hwcompress.records import Candidate, CompressionPolicy
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


def test_judge_is_the_fastest_round_over_the_baselines_taken_beside_it(tmp_path: Path) -> None:
    fake = _fake(tmp_path, base_ms=2.0)
    same = Search._judge(fake, fake.base_file)  # type: ignore[arg-type]
    assert len(same["rounds_ms"]) == len(same["base_rounds_ms"]) == VERIFY_ROUNDS and min(same["rounds_ms"]) > 0
    assert same["ratio"] == pytest.approx(min(same["rounds_ms"]) / min(same["base_rounds_ms"]))
    assert 0.7 < same["ratio"] < 1.4  # the same file: near 1 even on a noisy machine
    assert same["ms"] == pytest.approx(same["ratio"] * 2.0)  # on the scale of the search's budgets
    small = export_onnx(_convnet(8), (1, 1, 28, 28), tmp_path / "small.onnx")  # ~1/64 of the conv work
    assert Search._judge(fake, small)["ratio"] < 0.5  # type: ignore[arg-type]


def test_a_reading_within_a_loose_budget_does_not_stand(tmp_path: Path) -> None:
    """A baseline taken in a slow spell leaves the budget loose in ms: the winner is judged as a fraction."""
    from hwcompress.profiling.measure import measure

    fake = _fake(tmp_path, base_ms=1000.0)  # "measured in a slow spell": the 0.5x budget is 500 ms
    fake._judge = lambda path: Search._judge(fake, path)  # type: ignore[arg-type]
    fake._candidate_file = lambda cand, model=None: fake.base_file
    m = measure(fake.base_file, fake.target, force=True)  # the real file, read well within 500 ms
    cand = Candidate(policy=CompressionPolicy(keep={"x": 0.5}), stage="prune", accuracy=0.9, macs=1, params=1,
                     reward=0.9, seconds=0.0, measurement=m)
    asked: list[float] = []

    def retry(c: Candidate, ms: float) -> None:
        asked.append(ms)
        return None

    kept, info = Search._verify(fake, "stage 1", cand, 0.49 * 1000.0, retry)  # type: ignore[arg-type]
    assert kept is cand and not info["met"] and len(info["tries"]) == 1
    t = info["tries"][0]
    assert 0.7 < t["ratio"] < 1.4 and t["ms"] == pytest.approx(t["ratio"] * 1000.0)  # the baseline itself: ~1x
    assert t["single_ms"] == m.latency.median_ms < 490.0  # its own reading was "within" the need in ms
    # the refit is asked for a fit scaled down by how optimistic the reading was
    assert asked == [pytest.approx(490.0 * m.latency.median_ms / t["ms"])]


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


def _cand(keep: float, accuracy: float, ms: float, model_bytes: int = 1000, error: str = "") -> Candidate:
    from hwcompress.records import LatencyStats, Measurement, MeasureSettings

    m = Measurement(
        target="x86-cpu", model_sha256="ab" * 32,
        latency=LatencyStats(median_ms=ms, p10_ms=ms, p90_ms=ms, mean_ms=ms, std_ms=0.0, cv=0.0, n=50),
        peak_memory_bytes=1, model_bytes=model_bytes, load_ms=1.0, runtime="onnxruntime", runtime_version="1",
        device="test", settings=MeasureSettings(), threads=1, timestamp="2026-01-01T00:00:00+00:00", profiler_version="t",
    )
    return Candidate(policy=CompressionPolicy(keep={"layer": keep}), stage="prune", accuracy=accuracy, macs=1,
                     params=1, reward=accuracy, seconds=0.0, measurement=m, error=error)


def test_a_repair_is_the_better_of_the_line_and_the_candidates_already_measured() -> None:
    """Seen on ResNet-20 0.5x: a winner judged 0.7 % over its need, refitted along its repair line by one coarse
    step to proxy accuracy 0.347, while the agent had measured a candidate within the need at 0.493."""
    winner = _cand(0.75, 0.548, 0.831)
    pool = [winner, _cand(0.7, 0.493, 0.822), _cand(0.65, 0.485, 0.797), _cand(0.72, 0.60, 0.90),
            _cand(0.71, 0.70, 0.80, error="failed"), _cand(0.69, 0.65, 0.80, model_bytes=10**9)]
    refit_to = _cand(0.5, 0.347, 0.708)
    evaluator = SimpleNamespace(state=SimpleNamespace(seen={c.policy.digest(): c for c in pool}), size_budget=10**6)
    fake = SimpleNamespace(reporter=NullReporter())
    fake._best_measured = Search._best_measured
    fake._repair_line = lambda env, ev, c, ms: (refit_to, {"met": True, "to_ms": 0.708})
    fake._repair = lambda *a, **k: Search._repair(fake, *a, **k)  # type: ignore[arg-type]
    got: list[Candidate] = []

    def verify(stage: str, cand: Candidate, need: float, retry: object) -> tuple[Candidate, dict[str, object]]:
        got.append(retry(cand, 0.8256))  # type: ignore[operator]
        got.append(retry(got[0], 0.80))  # type: ignore[operator]
        return got[-1], {"met": True}

    fake._verify = verify
    fake._settle = lambda stage, env, ev, cand, info, need: (cand, info)  # judged growth: tests/test_search_envs.py
    kept, info = Search._verify_pruned(fake, "stage 1", None, evaluator, winner, 0.8325)  # type: ignore[arg-type]
    # within 0.8256 and most accurate (not the over-budget 0.60, the failed one, nor the one over the size budget)
    assert got[0].accuracy == 0.493 and info["refits"][0]["taken"]["line_accuracy"] == 0.347
    # the next retry excludes what was tried and takes the next best within its need
    assert got[1].accuracy == 0.485 and kept is got[1]
    # nothing measured within the need: the line's fit stands
    assert Search._best_measured(evaluator, 0.70, exclude=set()) is None  # type: ignore[arg-type]
    assert Search._repair(fake, None, evaluator, winner, 0.70)[0] is refit_to  # type: ignore[arg-type]
    # the line found nothing within (out of reach): a measured candidate within the need is taken, and met
    fake._repair_line = lambda env, ev, c, ms: (winner, {"met": False, "to_ms": 0.831})
    found, rep = Search._repair(fake, None, evaluator, winner, 0.81)  # type: ignore[arg-type]
    assert found.accuracy == 0.485 and rep["met"] and rep["to_ms"] == 0.797
