"""The search's own records (the budget fixed once, stage reports that round-trip and refuse unknown keys)
and how a stage's winner is picked by the judge (scripted verdicts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hwcompress.errors import UsageError
from hwcompress.judge import Verdict, decide
from hwcompress.records import Candidate, CompressionPolicy, RecordError
from hwcompress.search.pick import estimate_ms, pick, ranked, tie_margin
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


def cand(name: str, ms: float, reward: float, error: str = "") -> Candidate:
    """A measured candidate (``name`` makes its policy) read at ``ms``."""
    from hwcompress.records import LatencyStats, Measurement, MeasureSettings

    lat = LatencyStats(median_ms=ms, p10_ms=ms, p90_ms=ms, mean_ms=ms, std_ms=0.0, cv=0.0, n=10)
    m = Measurement(target="x86-cpu", model_sha256="ab" * 32, latency=lat, peak_memory_bytes=1, model_bytes=1,
                    load_ms=1.0, runtime="onnxruntime", runtime_version="1", device="cpu",
                    settings=MeasureSettings(), threads=1, timestamp="2026-12-04T00:00:00Z", profiler_version="1")
    return Candidate(policy=CompressionPolicy(keep={name: 0.5}), stage="prune", accuracy=reward, macs=1, params=1,
                     reward=reward, seconds=0.0, measurement=None if error else m, error=error)


def verdict(ratio: float, limit: float = 0.5) -> Verdict:
    return Verdict(ratio=ratio, ci_low=ratio * 0.95, ci_high=ratio * 1.05, limit=limit, within=ratio <= limit,
                   decided=True, model_ms=(ratio,), reference_ms=(1.0,))


def test_candidates_are_judged_within_first_by_reward_then_the_fastest() -> None:
    cands = [cand("a", 0.9, 0.8), cand("b", 0.5, 0.7), cand("c", 0.45, 0.75), cand("d", 1.2, 0.1),
             cand("e", 0.1, 0.99, error="failed")]
    order = [c.policy.keep for c in ranked(cands, 0.5)]
    assert order == [{"c": 0.5}, {"b": 0.5}, {"a": 0.5}, {"d": 0.5}]


def test_rewards_within_their_noise_are_tied_and_the_widest_is_judged_first() -> None:
    # mobilenetv2-small at 0.7x (out/bench-21e): 0.9032 read 0.109 ms won over 0.9000 read 0.1315 ms,
    # 0.3 pt apart on 5000 validation images, where one standard error is 0.42 pt
    tie = tie_margin(0.9032, 5000)
    assert tie == pytest.approx(0.00418, abs=1e-5) and tie_margin(0.9, 0) == 0.0
    cands = [cand("a", 0.109, 0.9032), cand("b", 0.1315, 0.9000), cand("c", 0.1293, 0.9002),
             cand("d", 0.125, 0.8950), cand("e", 0.140, 0.9100)]
    names = [next(iter(c.policy.keep)) for c in ranked(cands, 0.1327, tie)]
    assert names == ["b", "c", "a", "d", "e"]  # tied by the slowest reading, then by reward, then those over
    assert [next(iter(c.policy.keep)) for c in ranked(cands, 0.1327)] == ["a", "c", "b", "d", "e"]
    # on a 0.1935 ms baseline: "b" is judged just over (0.69 -> k = 1.015), "c" is still read within and wins
    calls, judge = _judge({"a": 0.56, "b": 0.69, "c": 0.675, "d": 0.65, "e": 0.72}, limit=0.686)
    best, _ = pick(cands, judge, aim_ms=0.1327, scale_ms=0.1935, tie=tie)
    assert calls == ["b", "c"] and best is cands[2]


def test_a_lucky_reading_is_ranked_on_the_prediction_it_contradicts() -> None:
    # mobilenetv2-small at 0.7x (out/bench-21f): read 0.144 ms, predicted 0.216 ms, judged 0.234 ms
    lucky, honest = cand("lucky", 0.144, 0.917), cand("honest", 0.180, 0.905)
    slow_read = cand("slow", 0.200, 0.90)
    preds = {"lucky": 0.216, "honest": 0.175, "slow": 0.150}

    def predict(c: Candidate) -> float:
        return preds[next(iter(c.policy.keep))]

    assert estimate_ms(lucky, predict) == 0.216 and estimate_ms(slow_read, predict) == 0.200
    assert estimate_ms(lucky) == 0.144 and estimate_ms(lucky, lambda c: float("nan")) == 0.144
    assert estimate_ms(cand("x", 0.1, 0.9, error="failed"), predict) == float("inf")
    cands = [lucky, honest, slow_read]
    calls, judge = _judge({"lucky": 1.08, "honest": 0.83, "slow": 0.93}, limit=1.0)
    # on the readings alone the lucky one is judged first and found over; on the estimates it is not judged
    best, _ = pick(cands, judge, aim_ms=0.2, scale_ms=0.2)
    assert calls == ["lucky", "honest"] and best is honest
    calls, judge = _judge({"lucky": 1.08, "honest": 0.83, "slow": 0.93}, limit=1.0)
    best, _ = pick(cands, judge, aim_ms=0.2, scale_ms=0.2, predict=predict)
    # on the estimates "honest" is judged first (0.166 ms); that verdict brings the lucky one's estimate to
    # 0.216 x 0.922 = 0.199 ms, inside the aim, so it is judged too (the judge finds it over) before "honest" wins
    assert calls == ["honest", "lucky"] and best is honest


def test_a_machine_faster_than_estimated_lets_the_wider_better_candidate_in() -> None:
    # resnet-20 at 0.5x, seed 0 of the grid (out/grid): the unpruned int8 model read 0.369x (predicted
    # 0.533x, so estimated over the 0.49x aim) scored 92.56 %; "narrow" (read 0.481x, predicted 0.475x)
    # 91.12 % was judged 0.393x: the machine ran 18 % faster than estimated, so "wide" is estimated at
    # 0.533 x 0.817 = 0.436x and judged next; within, it wins over the narrower one judged first
    wide, narrow, other = cand("wide", 0.369, 0.9256), cand("narrow", 0.481, 0.9112), cand("o", 0.466, 0.9042)
    preds = {"wide": 0.533, "narrow": 0.475, "o": 0.481, "p1": 0.50, "p2": 0.49}

    def predict(c: Candidate) -> float:
        return preds[next(iter(c.policy.keep))]

    calls, judge = _judge({"wide": 0.44, "narrow": 0.393, "o": 0.38}, limit=0.49)
    best, judged = pick([wide, narrow, other], judge, aim_ms=0.49, scale_ms=1.0, predict=predict)
    assert calls == ["narrow", "wide"] and best is wide and [j.verdict.within for j in judged] == [True, True]
    # judged over instead, it leaves the ranking and the narrower candidate judged within wins, not judged again
    calls, judge = _judge({"wide": 0.52, "narrow": 0.393, "o": 0.38}, limit=0.49)
    best, _ = pick([wide, narrow, other], judge, aim_ms=0.49, scale_ms=1.0, predict=predict)
    assert calls == ["narrow", "wide"] and best is narrow
    # with the tries spent (the wide one and its projection judged over), the second projection, on top of
    # the ranking, is still judged: confirmed, it wins over the narrower candidate judged within first ...
    calls, judge = _judge({"wide": 0.52, "narrow": 0.393, "o": 0.38, "p1": 0.50, "p2": 0.48}, limit=0.49)
    shots = iter([cand("p1", 0.36, 0.925), cand("p2", 0.35, 0.924)])
    best, judged = pick([wide, narrow, other], judge, aim_ms=0.49, scale_ms=1.0, predict=predict,
                        project=lambda c, v: next(shots))
    assert calls == ["narrow", "wide", "p1", "p2"] and best is not None and best.policy.keep == {"p2": 0.5}
    assert [j.how for j in judged] == ["ranked", "ranked", "projected", "projected"]
    # ... and judged over, the best-ranked candidate judged within wins (no third projection: two at most)
    calls, judge = _judge({"wide": 0.52, "narrow": 0.393, "o": 0.38, "p1": 0.50, "p2": 0.50}, limit=0.49)
    shots = iter([cand("p1", 0.36, 0.925), cand("p2", 0.35, 0.924)])
    best, judged = pick([wide, narrow, other], judge, aim_ms=0.49, scale_ms=1.0, predict=predict,
                        project=lambda c, v: next(shots))
    assert calls == ["narrow", "wide", "p1", "p2"] and best is narrow and len(judged) == 4


def test_a_candidate_judged_over_competes_again_as_its_projection() -> None:
    # "a" (best reward) is judged just over; its projection, a little narrower and scored 0.1 pt lower,
    # is tied with it and wider than "b" (the next best), so it is judged next and wins
    cands = [cand("a", 0.48, 0.910), cand("b", 0.36, 0.903)]
    calls, judge = _judge({"a": 0.51, "p": 0.49, "b": 0.37})
    made: list[str] = []

    def project(c: Candidate, ratio: float) -> Candidate:
        made.append(next(iter(c.policy.keep)))
        return cand("p", 0.46, 0.909)

    best, judged = pick(cands, judge, aim_ms=0.5, scale_ms=1.0, project=project, tie=0.004)
    assert made == ["a"] and calls == ["a", "p"] and best is not None and best.policy.keep == {"p": 0.5}
    assert [j.how for j in judged] == ["ranked", "projected"]
    # a projection scored well below the next best waits its turn: "b" is judged before it
    calls, judge = _judge({"a": 0.51, "p": 0.49, "b": 0.37})
    best, _ = pick(cands, judge, aim_ms=0.5, scale_ms=1.0, project=lambda c, v: cand("p", 0.46, 0.85), tie=0.004)
    assert calls == ["a", "b"] and best is cands[1]


def test_projections_ranked_below_others_are_judged_before_the_stage_gives_up() -> None:
    # the tries go to "a" and to fast candidates whose readings the verdicts correct (f1, then q); "a"'s
    # projection p ranked below them is still judged once the tries are spent, and is confirmed within
    # (seen on a grid row: both projections made, neither judged, the stage kept a model over its aim)
    cands = [cand("a", 0.45, 0.95), cand("f1", 0.20, 0.50), cand("f2", 0.21, 0.49), cand("f3", 0.22, 0.48)]
    calls, judge = _judge({"a": 0.9, "f1": 0.6, "f2": 0.6, "f3": 0.6, "p": 0.45, "q": 0.58})
    projections = {"a": cand("p", 0.30, 0.90), "f1": cand("q", 0.19, 0.45)}
    best, judged = pick(cands, judge, aim_ms=0.5, scale_ms=1.0,
                        project=lambda c, v: projections.get(next(iter(c.policy.keep))))
    assert calls == ["a", "f1", "q", "p"] and best is not None and best.policy.keep == {"p": 0.5}
    assert [j.how for j in judged] == ["ranked", "ranked", "projected", "projected"]


def test_a_projection_onto_a_candidate_not_yet_judged_judges_that_candidate() -> None:
    # "a" is judged over; the predictor projects it onto "f", a candidate the agent had already measured:
    # "f" is judged as the projection (before: the projection was dropped as a duplicate)
    cands = [cand("a", 0.45, 0.95), cand("b", 0.46, 0.94), cand("f", 0.30, 0.30)]
    calls, judge = _judge({"a": 0.9, "b": 0.92, "f": 0.45})
    best, judged = pick(cands, judge, aim_ms=0.5, scale_ms=1.0, project=lambda c, v: cand("f", 0.31, 0.30))
    assert calls == ["a", "f"] and best is cands[2] and [j.how for j in judged] == ["ranked", "projected"]


def _judge(ratios: dict[str, float], limit: float = 0.5) -> tuple[list[str], Any]:
    """A scripted judge: the true ratio of each candidate (by its policy's name); the calls it got."""
    calls: list[str] = []

    def judge(c: Candidate) -> Verdict:
        name = next(iter(c.policy.keep))
        calls.append(name)
        return verdict(ratios[name], limit)

    return calls, judge


def test_a_median_within_whose_interval_crosses_the_aim_twice_counts_as_over() -> None:
    # "a"'s median (0.48) is under the 0.5 aim but its interval (0.40-0.56) is not, twice: it is projected,
    # and the projection, confirmed within, wins; "b" never needed judging
    shaky = Verdict(ratio=0.48, ci_low=0.40, ci_high=0.56, limit=0.5, within=True, decided=False,
                    model_ms=(0.48,) * 10, reference_ms=(1.0,) * 10)
    assert shaky.within and not shaky.confirmed and verdict(0.45).confirmed
    cands = [cand("a", 0.47, 0.91), cand("b", 0.30, 0.85)]
    calls: list[str] = []

    def judge(c: Candidate) -> Verdict:
        calls.append(next(iter(c.policy.keep)))
        return shaky if calls[-1] == "a" else verdict(0.45)

    best, judged = pick(cands, judge, aim_ms=0.5, scale_ms=1.0, project=lambda c, v: cand("p", 0.44, 0.905))
    assert calls == ["a", "a", "p"] and best is not None and best.policy.keep == {"p": 0.5}
    assert [j.verdict.within for j in judged] == [True] * 3 and [j.how for j in judged] == ["ranked", "ranked", "projected"]
    # nothing else to judge: the earlier stage's model, confirmed, stays rather than the shaky one
    best, _ = pick(cands[:1], judge, aim_ms=0.5, scale_ms=1.0, settled=(cand("s", 0.4, 0.8), verdict(0.42)))
    assert best is not None and best.policy.keep == {"s": 0.5}


def test_pick_takes_the_best_rewarded_candidate_the_judge_finds_within() -> None:
    cands = [cand("a", 0.48, 0.9), cand("b", 0.40, 0.8), cand("c", 0.7, 0.99)]
    calls, judge = _judge({"a": 0.49, "b": 0.41, "c": 0.7})
    best, judged = pick(cands, judge, aim_ms=0.5, scale_ms=1.0)
    assert best is cands[0] and calls == ["a"] and [j.how for j in judged] == ["ranked"]


def test_each_verdict_calibrates_the_readings_the_next_try_is_ranked_on() -> None:
    # read on a scale 20 % low: "a" (read 0.48) is judged 0.576; "b" read 0.45 is then 0.54 by the
    # correction, over the aim, so the next try is "c" (read 0.40 -> 0.48), the one the judge finds within
    cands = [cand("a", 0.48, 0.9), cand("b", 0.45, 0.85), cand("c", 0.40, 0.8)]
    calls, judge = _judge({"a": 0.576, "b": 0.54, "c": 0.48})
    best, judged = pick(cands, judge, aim_ms=0.5, scale_ms=1.0)
    assert calls == ["a", "c"] and best is cands[2]
    assert [j.verdict.within for j in judged] == [False, True] and judged[0].reading_ms == 0.48
    # without calibration (the ranking of the readings alone), "b" would have been judged second
    assert [c.policy.keep for c in ranked(cands, 0.5)][1] == {"b": 0.5}


def test_pick_projects_then_falls_back_on_the_earlier_stage_then_the_fastest() -> None:
    cands = [cand("a", 0.48, 0.9)]
    projected = cand("p", 0.45, 0.85)
    calls, judge = _judge({"a": 0.6, "p": 0.55, "s": 0.45})
    seen: list[tuple[str, str]] = []
    best, judged = pick(cands, judge, aim_ms=0.5, scale_ms=1.0, project=lambda c, v: projected,
                        settled=(cand("s", 0.44, 0.8), verdict(0.45)), on_verdict=lambda c, how, v: seen.append(
                            (next(iter(c.policy.keep)), how)))
    # the projection is judged once (projecting it again gives the same policy), then stage 1's model stays
    assert calls == ["a", "p"] and best is not None and best.policy.keep == {"s": 0.5}
    assert [j.how for j in judged] == ["ranked", "projected", "earlier stage"]
    assert seen == [("a", "ranked"), ("p", "projected"), ("s", "earlier stage")]
    best, judged = pick(cands, judge, aim_ms=0.5, scale_ms=1.0)  # nothing to fall back on: the fastest judged
    assert best is cands[0] and not judged[-1].verdict.within
    assert pick([], judge, aim_ms=0.5, scale_ms=1.0) == (None, [])


def test_a_relative_verdict_is_put_on_the_readings_scale() -> None:
    # readings in ms on a 2 ms baseline, verdicts as ratios at a 0.25x aim (0.5 ms): "a" read 0.5 ms is
    # judged 0.3 (0.6 ms): k = 1.2, so "b" (read 0.45 -> 0.54 ms) is passed over for "c" (0.38 -> 0.456 ms)
    cands = [cand("a", 0.5, 0.9), cand("b", 0.45, 0.85), cand("c", 0.38, 0.8)]
    calls, judge = _judge({"a": 0.3, "b": 0.27, "c": 0.23}, limit=0.25)
    best, _ = pick(cands, judge, aim_ms=0.5, scale_ms=2.0)
    assert calls == ["a", "c"] and best is cands[2]


def test_the_best_scored_candidate_estimated_over_is_projected_before_any_verdict() -> None:
    # the demo on the 2-core VM (tools/results/demo): the knapsack and uniform seeds scored 92.4 % and read
    # 0.54x for a 0.49x aim; the one candidate read within, 0.28x at 91.2 %, was judged and kept.  Now the
    # best-scored seed is projected at its estimate (0.54x) first, and its projection, within and scored
    # above the narrow one, is judged and wins
    seeds, narrow = [cand("k", 0.54, 0.924), cand("u", 0.55, 0.923)], cand("e", 0.28, 0.912)
    asked: list[tuple[str, float]] = []

    def project(c: Candidate, ratio: float) -> Candidate:
        asked.append((next(iter(c.policy.keep)), ratio))
        return cand("p", 0.47, 0.921)

    calls, judge = _judge({"k": 0.55, "u": 0.56, "e": 0.28, "p": 0.47}, limit=0.49)
    best, judged = pick([*seeds, narrow], judge, aim_ms=0.49, scale_ms=1.0, project=project)
    assert asked == [("k", pytest.approx(0.54))] and calls == ["p"] and best is not None
    assert best.policy.keep == {"p": 0.5} and [j.how for j in judged] == ["projected"]
    # a best-scored candidate estimated over but tied (within ``tie``) with one estimated within is not projected
    asked.clear()
    calls, judge = _judge({"k": 0.55, "u": 0.56, "e": 0.28, "p": 0.47}, limit=0.49)
    best, _ = pick([*seeds, narrow], judge, aim_ms=0.49, scale_ms=1.0, project=project, tie=0.02)
    assert asked == [] and calls == ["e"] and best is narrow


def test_an_undecided_verdict_is_taken_again_before_it_counts_as_over() -> None:
    # the demo beside CI (tools/results/demo): a projection judged 0.430x (95 % CI 0.397-0.525) for a 0.49x
    # aim was dropped as over, re-projected onto itself, and a 0.262x candidate was kept.  Now it is judged
    # once more, which is not one of the tries, and confirmed there it wins
    shaky = Verdict(ratio=0.43, ci_low=0.397, ci_high=0.525, limit=0.49, within=True, decided=False,
                    model_ms=(0.43,) * 16, reference_ms=(1.0,) * 16)
    cands = [cand("s", 0.48, 0.92), cand("n", 0.26, 0.90)]
    calls: list[str] = []
    script = {"s": [shaky, verdict(0.44, limit=0.49)], "n": [verdict(0.262, limit=0.49)]}

    def judge(c: Candidate) -> Verdict:
        calls.append(next(iter(c.policy.keep)))
        return script[calls[-1]].pop(0)

    best, judged = pick(cands, judge, aim_ms=0.49, scale_ms=1.0)
    assert calls == ["s", "s"] and best is cands[0]
    # a verdict taken in a slow spell (the baseline never reached its quiet time beside the candidate) is
    # no figure either, and it does not calibrate the others: "a" judged 0.9 there is judged again
    spell = Verdict(ratio=0.9, ci_low=0.6, ci_high=1.2, limit=0.5, within=False, decided=False,
                    model_ms=(0.9,) * 26, reference_ms=(1.0,) * 26, quiet=False)
    assert not spell.confirmed
    cands = [cand("a", 0.48, 0.9), cand("b", 0.30, 0.8)]
    calls.clear()
    script = {"a": [spell, verdict(0.49)], "b": [verdict(0.31)]}
    best, judged = pick(cands, judge, aim_ms=0.5, scale_ms=1.0)
    assert calls == ["a", "a"] and best is cands[0] and [j.verdict.quiet for j in judged] == [False, True]
    # the judgement again is not a try: "a" (a spell, then over) and "b" (over) take two of the three, and
    # "d" is judged with the third
    cands = [cand("a", 0.48, 0.95), cand("b", 0.44, 0.94), cand("d", 0.30, 0.80)]
    calls.clear()
    script = {"a": [spell, verdict(0.52)], "b": [verdict(0.52)], "d": [verdict(0.35)]}
    best, judged = pick(cands, judge, aim_ms=0.5, scale_ms=1.0)
    assert calls == ["a", "a", "b", "d"] and best is cands[2]
    # two spells: the second verdict stands, and the candidate judged over by it is projected
    calls.clear()
    script = {"a": [spell, spell], "p": [verdict(0.45)]}
    best, judged = pick(cands[:1], judge, aim_ms=0.5, scale_ms=1.0, project=lambda c, v: cand("p", 0.4, 0.9))
    assert calls == ["a", "a", "p"] and best is not None and best.policy.keep == {"p": 0.5}


def test_the_floor_read_over_the_aim_is_fitted_at_the_judges_figure() -> None:
    # mobilenetv2-small at 0.3x (tools/results/search-budgets.md): the floor read 0.38x on a reading's 3
    # pairs, the wall then left the agent the floor alone for 40 episodes; judged on 16 pairs it was 0.23x.
    # The region takes the judge's figure, on the readings' scale (x the baseline's 0.38 ms)
    from hwcompress.search.stages import floor_figure

    quiet = Verdict(ratio=0.23, ci_low=0.218, ci_high=0.326, limit=0.294, within=True, decided=False,
                    model_ms=(0.09,) * 16, reference_ms=(0.38,) * 16)
    assert floor_figure(0.1445, quiet, 0.38) == pytest.approx(0.23 * 0.38)
    assert floor_figure(0.1445, None, 0.38) == 0.1445  # not judged: read within the aim
    spell = Verdict(ratio=0.23, ci_low=0.218, ci_high=0.326, limit=0.294, within=True, decided=False,
                    model_ms=(0.09,) * 16, reference_ms=(0.38,) * 16, quiet=False)  # a slow spell's: no figure
    assert floor_figure(0.1445, spell, 0.38) == 0.1445


def test_a_figure_measured_once_is_read_back_on_resume_not_measured_again(tmp_path: Path) -> None:
    """The precisions' speed, the baseline and the budget are measured once: a resumed search builds its
    region on the figures its logged candidates were built on, whatever a new measurement would say."""
    from hwcompress.search.state import kept

    calls: list[dict[str, float]] = []

    def measure(value: dict[str, float]) -> Any:
        def fresh() -> dict[str, float]:
            calls.append(value)
            return value
        return fresh

    path = tmp_path / "precisions-baseline.json"
    first = kept(path, False, measure({"fp32": 1.0, "fp16": 0.9}), dict, dict)
    assert first == {"fp32": 1.0, "fp16": 0.9} and json.loads(path.read_text()) == first
    # resumed: the kept figure, although the machine would now measure fp16 slower than fp32
    again = kept(path, True, measure({"fp32": 1.0, "fp16": 1.2}), dict, dict)
    assert again == first and len(calls) == 1
    # a new search in the same folder measures again and keeps the new figure
    assert kept(path, False, measure({"fp32": 1.0}), dict, dict) == {"fp32": 1.0} and len(calls) == 2
    assert json.loads(path.read_text()) == {"fp32": 1.0}
    # resumed before the figure was ever kept: measured then
    other = tmp_path / "precisions-stage2.json"
    assert kept(other, True, measure({"fp32": 1.0, "int8": 1.5}), dict, dict)["int8"] == 1.5 and len(calls) == 3


def test_stage1_plans_only_the_precisions_the_judge_confirms_faster() -> None:
    """A lower precision is planned only when the judge's interval lies under PLAN_MIN_GAIN x fp32: a median
    under it with the interval across (the fp16 readings of 0.98-1.30x on one baseline) does not pay."""
    from hwcompress.search.stages import PLAN_MIN_GAIN, load_precision_verdicts, planned_of, ratios_of

    def verdict(ratio: float, low: float, high: float) -> Verdict:
        return Verdict(ratio=ratio, ci_low=low, ci_high=high, limit=PLAN_MIN_GAIN, within=ratio <= PLAN_MIN_GAIN,
                       decided=high <= PLAN_MIN_GAIN or low > PLAN_MIN_GAIN, model_ms=(1.0,) * 8,
                       reference_ms=(1.0,) * 8)

    vs = {"int8": verdict(0.66, 0.62, 0.70), "fp16": verdict(0.93, 0.88, 1.02), "int4": verdict(2.2, 2.0, 2.4)}
    assert planned_of(vs) == {"fp32": 1.0, "int8": 0.66}
    assert ratios_of(vs) == {"fp32": 1.0, "int8": 0.66, "fp16": 0.93, "int4": 2.2}
    # kept and read back as verdicts; a run folder kept before held bare ratios, which decide as they did then
    assert load_precision_verdicts({p: v.to_dict() for p, v in vs.items()}) == vs
    old = load_precision_verdicts({"fp32": 1.0, "fp16": 0.94, "int8": 0.6, "int4": 1.8})
    assert planned_of(old) == {"fp32": 1.0, "fp16": 0.94, "int8": 0.6} and ratios_of(old)["int4"] == 1.8
