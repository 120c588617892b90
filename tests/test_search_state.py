"""The search's own records: the budget fixed once, stage reports that round-trip and refuse unknown keys."""

from __future__ import annotations

import pytest

from hwcompress.errors import UsageError
from hwcompress.judge import decide
from hwcompress.records import CompressionPolicy, RecordError
from hwcompress.search.run import ranked
from hwcompress.search.state import Budget, Judged, Stage1Report


def test_budget_resolves_relative_and_absolute_once() -> None:
    rel = Budget.resolve("0.5x", 2.0, 0.02, size_bytes=1000.0)
    assert rel.relative and rel.limit == 0.5 and rel.latency_ms == 1.0
    assert rel.aim == pytest.approx(0.49) and rel.aim_ms == pytest.approx(0.98) and rel.size_bytes == 1000.0
    ab = Budget.resolve("3ms", 10.0, 0.1)
    assert not ab.relative and ab.limit == 3.0 and ab.latency_ms == 3.0 and ab.aim_ms == pytest.approx(2.7)
    assert Budget.from_dict(rel.to_dict()) == rel
    with pytest.raises(UsageError):
        Budget.resolve("fast", 1.0, 0.0)
    with pytest.raises(dataclass_frozen()):
        rel.limit = 0.7  # type: ignore[misc]


def dataclass_frozen() -> type[Exception]:
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_stage_report_round_trips_and_refuses_unknown_keys() -> None:
    v = decide([0.4, 0.41, 0.39, 0.4], [1.0, 1.0, 1.01, 0.99], 0.49)
    rep = Stage1Report(policy=CompressionPolicy(keep={"a": 0.5}), best=None, within=True, precision="int8",
                       planned=("fp32", "int8"),
                       precision_ratios={"fp32": 1.0, "int8": 0.6}, region="table", candidates=3, failures=0,
                       predictions_within_10pct=(2, 3), table={"entries": 10.0},
                       judged=(Judged(policy="abc", how="ranked", reading_ms=0.4, verdict=v),))
    again = Stage1Report.from_dict(rep.to_dict())
    assert again == rep and again.judged[0].verdict.within
    bad = rep.to_dict()
    bad["repair"] = {}
    with pytest.raises(RecordError, match="unknown key"):
        Stage1Report.from_dict(bad)


def test_candidates_are_judged_within_first_by_reward_then_the_fastest() -> None:
    from hwcompress.records import Candidate, LatencyStats, Measurement, MeasureSettings

    def cand(name: str, ms: float, reward: float, error: str = "") -> Candidate:
        lat = LatencyStats(median_ms=ms, p10_ms=ms, p90_ms=ms, mean_ms=ms, std_ms=0.0, cv=0.0, n=10)
        m = Measurement(target="x86-cpu", model_sha256="ab" * 32, latency=lat, peak_memory_bytes=1, model_bytes=1,
                        load_ms=1.0, runtime="onnxruntime", runtime_version="1", device="cpu",
                        settings=MeasureSettings(), threads=1, timestamp="2026-12-04T00:00:00Z", profiler_version="1")
        return Candidate(policy=CompressionPolicy(keep={name: 0.5}), stage="prune", accuracy=reward, macs=1, params=1,
                         reward=reward, seconds=0.0, measurement=None if error else m, error=error)

    cands = [cand("a", 0.9, 0.8), cand("b", 0.5, 0.7), cand("c", 0.45, 0.75), cand("d", 1.2, 0.1),
             cand("e", 0.1, 0.99, error="failed")]
    order = [c.policy.keep for c in ranked(cands, 0.5)]
    assert order == [{"c": 0.5}, {"b": 0.5}, {"a": 0.5}, {"d": 0.5}]
