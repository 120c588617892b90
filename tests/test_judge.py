"""hwcompress.judge: the one rule for "is this model within its latency limit on the device".

The rule itself (:func:`decide`) on rounds given by hand; the pair-adding loop (:func:`judge`) and a
search's :class:`Reader` on a scripted profiler (ABBA order, min/max pairs, the fastest profiles, slow
spells); and both on two real ONNX models profiled by the real local ONNX Runtime profiler.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import hwcompress.judge as judge_module
from hwcompress.judge import (
    QUIET_SEEN,
    SPELL_PAIRS,
    Reader,
    Verdict,
    decide,
    judge,
    measure_rounds,
    pair_ratio,
)
from hwcompress.records import LatencyStats, Measurement, MeasureSettings
from hwcompress.targets import load_target


# --------------------------------------------------------------------------- the rule on given rounds
def test_well_under_the_limit_is_within_and_decided() -> None:
    v = decide([1.0, 1.1, 0.9, 1.0], [4.0, 4.0, 4.0, 4.0], 0.5)
    assert v.ratio == pytest.approx(0.225)
    assert v.within and v.decided and v.ci_high <= 0.5
    assert v.pairs == 4 and v.limit == 0.5
    assert "within 0.500x" in v.describe()


def test_well_over_the_limit_is_over_and_decided() -> None:
    v = decide([1.0, 1.1, 0.9, 1.0], [4.0, 4.0, 4.0, 4.0], 0.1)
    assert not v.within and v.decided and v.ci_low > 0.1
    assert "OVER 0.100x" in v.describe()


def test_pairs_straddling_the_limit_are_undecided_and_the_ratio_answers() -> None:
    # the reference's quiet state (1.0) seen once in 4 pairs: the bootstrap drops it a third of the time
    v = decide([0.52, 0.53, 0.54, 0.55], [1.0, 1.1, 1.1, 1.1], 0.5)
    assert not v.decided and v.ci_low <= 0.5 < v.ci_high
    assert v.ratio == pytest.approx(0.52) and not v.within
    assert "undecided after 4 pairs" in v.describe()
    # the model's fast state seen once: within, not confirmed
    w = decide([0.48, 0.52, 0.55, 0.60], [1.0] * 4, 0.5)
    assert w.within and not w.decided and not w.confirmed
    assert decide([0.50, 0.60], [1.0, 1.0], 0.5).within  # 0.5: within is "<= limit"


def test_ratio_is_fastest_over_fastest() -> None:
    model, ref = [1.0, 3.0, 4.0], [4.0, 1.0, 2.0]  # pairs: 0.25, 3, 2
    v = decide(model, ref, 5.0)
    assert v.ratio == pytest.approx(1.0) == pair_ratio(model, ref)
    # not the median of the per-pair ratios (2) nor the ratio of medians (3 / 2)
    assert v.ratio != pytest.approx(2.0) and v.ratio != pytest.approx(np.median(model) / np.median(ref))
    assert v.model_ms == tuple(model) and v.reference_ms == tuple(ref)


def test_a_slow_spell_adds_time_and_the_fastest_profiles_see_through_it() -> None:
    # measured on this VM (tools/results/verdicts.md): a spell adds ~0.12 ms to every inference, so the
    # per-pair ratios of a 0.17 ms model beside a 0.39 ms baseline go from 0.44 to 0.57 as pairs fall in it
    quiet, spell = (0.17, 0.39), (0.29, 0.51)
    pairs = [quiet, spell, spell, quiet, spell, spell, quiet, spell]
    v = decide([m for m, _ in pairs], [r for _, r in pairs], 0.5)
    assert v.ratio == pytest.approx(0.17 / 0.39) and v.within
    assert float(np.median([m / r for m, r in pairs])) > 0.5  # the old rule: over, on the share of spells
    # a verdict wholly in a spell is no verdict: its reference never came near the quiet time known
    caught = decide([0.29] * 6, [0.51] * 6, 0.5, floor_ms=0.39)
    assert not caught.quiet and not caught.decided and not caught.confirmed
    assert "slow spell" in caught.describe()
    assert decide([0.17] * 6, [0.40] * 6, 0.5, floor_ms=0.39).confirmed  # within the quiet band
    # the quiet state seen once among spells is one profile's luck: not a quiet verdict
    once = decide([0.18, 0.29, 0.30, 0.29, 0.31, 0.29], [0.40, 0.51, 0.52, 0.51, 0.53, 0.51], 0.5, floor_ms=0.39)
    assert not once.quiet and not once.decided
    assert decide([0.18, 0.29, 0.30, 0.17, 0.31, 0.29], [0.40, 0.51, 0.52, 0.41, 0.53, 0.51], 0.5, floor_ms=0.39).quiet


def test_absolute_limit_without_a_reference_is_in_ms() -> None:
    v = decide([1.0, 1.2, 1.1, 1.05], [], 2.0)
    assert v.ratio == pytest.approx(1.0) and v.within and v.decided
    assert v.reference_ms == () and v.pairs == 4
    assert " ms" in v.describe() and "within 2.000 ms" in v.describe()
    assert not decide([1.0, 1.2, 1.1, 1.05], [], 0.5).within


def test_mismatched_rounds_raise() -> None:
    with pytest.raises(ValueError, match="one reference round per model round"):
        decide([1.0, 2.0], [1.0], 0.5)
    with pytest.raises(ValueError):
        decide([], [], 0.5)


def test_verdict_round_trips_through_json() -> None:
    v = decide([1.0, 3.0, 4.0], [4.0, 1.0, 2.0], 1.5)
    data = json.loads(json.dumps(v.to_dict()))
    assert data["within"] is v.within and data["model_ms"] == [1.0, 3.0, 4.0]
    back = Verdict.from_dict(data)
    assert back == v and back.pairs == 3 and isinstance(back.model_ms, tuple)
    absolute = decide([1.0, 1.1], [], 2.0)
    assert Verdict.from_dict(absolute.to_dict()) == absolute


# --------------------------------------------------------------------------- the loop on a scripted profiler
def _measurement(ms: float) -> Measurement:
    return Measurement(
        target="x86-cpu", model_sha256="", latency=LatencyStats(ms, ms, ms, ms, 0.0, 0.0, 50),
        peak_memory_bytes=0, model_bytes=0, load_ms=0.0, runtime="onnxruntime", runtime_version="", device="cpu",
        settings=MeasureSettings(), threads=1, timestamp="", profiler_version="",
    )


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``measure`` replaced by a script: ``{name: [ms, ms, ...]}`` (cycled), every call recorded."""
    import hwcompress.profiling.measure as pm

    calls: list[str] = []
    script: dict[str, list[float]] = {}

    def fake(path: Any, target: Any, **kw: Any) -> Measurement:
        assert kw.get("cache") is None and kw.get("force")  # always a fresh profile
        name = Path(path).name
        values = script[name]
        calls.append(name)
        return _measurement(values[(sum(c == name for c in calls) - 1) % len(values)])

    monkeypatch.setattr(pm, "measure", fake)
    monkeypatch.setattr(judge_module, "_fastest", {})  # the references' quiet times learnt: per test
    return calls, script


def test_judge_stops_at_min_pairs_when_decided_and_profiles_abba(scripted: Any) -> None:
    calls, script = scripted
    script.update({"m.onnx": [1.0], "r.onnx": [4.0]})
    v = judge(Path("m.onnx"), load_target("x86-cpu"), 0.5, reference=Path("r.onnx"), min_pairs=3, max_pairs=8)
    assert v.within and v.decided and v.pairs == 3 and v.ratio == pytest.approx(0.25)
    assert calls == ["m.onnx", "r.onnx", "r.onnx", "m.onnx", "m.onnx", "r.onnx"]  # ABBA


def test_judge_adds_pairs_up_to_max_while_undecided(scripted: Any) -> None:
    calls, script = scripted
    script.update({"m.onnx": [0.6, 0.4, 0.6, 0.6], "r.onnx": [1.0]})  # the fast 0.4 seen once: the interval holds 0.5
    v = judge(Path("m.onnx"), load_target("x86-cpu"), 0.5, reference=Path("r.onnx"), min_pairs=2, max_pairs=5)
    assert not v.decided and v.pairs == 5 and len(v.reference_ms) == 5 and len(calls) == 10
    assert calls[8:] == ["m.onnx", "r.onnx"]  # pair 5 (start 4): model first again


def test_judge_waits_out_a_slow_spell_for_a_quiet_pair(scripted: Any) -> None:
    _, script = scripted
    target = load_target("x86-cpu")
    # a search's reading saw the reference quiet (1.0); then a spell: 12 profiles at 1.5, then quiet again
    script.update({"m.onnx": [0.4], "r.onnx": [1.0] * 3 + [1.5] * 12 + [1.0] * 10})
    Reader(target, Path("r.onnx"), scale_ms=1.0).read(Path("m.onnx"))
    v = judge(Path("m.onnx"), target, 0.5, reference=Path("r.onnx"), min_pairs=3, max_pairs=5)
    # in the spell the ratio read 0.27 (decided, by its interval): no verdict until the reference was quiet
    # in QUIET_SEEN profiles (pairs 13 and 14)
    assert v.quiet and v.decided and v.within and v.pairs == 12 + QUIET_SEEN and v.ratio == pytest.approx(0.4)
    script["r.onnx"] = [1.5]  # a spell that lasts: undecided after max_pairs + SPELL_PAIRS, and says why
    v = judge(Path("m.onnx"), target, 0.5, reference=Path("r.onnx"), min_pairs=3, max_pairs=5)
    assert not v.quiet and not v.confirmed and v.pairs == 5 + SPELL_PAIRS and "slow spell" in v.describe()
    # its slow reference profiles count at the top of the quiet band (1.1), not at 1.5: no lucky 0.27
    assert v.ratio == pytest.approx(0.4 / 1.1)
    # a reading in the spell is capped the same way (on the start's scale, 1.0)
    m = Reader(target, Path("r.onnx"), scale_ms=1.0).read(Path("m.onnx"))
    assert m.latency.median_ms == pytest.approx(0.4 / 1.1) and m.board_scale == pytest.approx(1.1)


def test_judge_without_reference_profiles_the_model_alone(scripted: Any) -> None:
    calls, script = scripted
    script["m.onnx"] = [1.0, 1.1]
    v = judge(Path("m.onnx"), load_target("x86-cpu"), 2.0, min_pairs=2, max_pairs=4)
    assert v.within and v.decided and v.pairs == 2 and v.reference_ms == () and calls == ["m.onnx"] * 2


def test_judged_rounds_time_the_targets_round_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A judged round is short (``round_seconds``, 0.1 s by default); a target file may lengthen it, and
    the measurement cache's key for the target's ordinary profiles does not change with it."""
    import hwcompress.profiling.measure as pm

    seen: list[float] = []

    def fake(path: Any, target: Any, **kw: Any) -> Measurement:
        seen.append(target.measure.min_seconds)
        assert target.measure.max_rounds == 1 and target.measure.max_seconds >= target.measure.min_seconds
        return _measurement(1.0 if Path(path).name == "m.onnx" else 4.0)

    monkeypatch.setattr(pm, "measure", fake)
    base = load_target("x86-cpu")
    judge(Path("m.onnx"), base, 0.5, reference=Path("r.onnx"), min_pairs=2, max_pairs=2)
    slow = dataclasses.replace(base, measure=dataclasses.replace(base.measure, round_seconds=1.5))
    Reader(slow, Path("r.onnx"), 4.0, pairs=1).read(Path("m.onnx"))
    assert seen == [0.1] * 4 + [1.5] * 2
    assert slow.settings_digest() == base.settings_digest()
    assert dataclasses.replace(base, measure=dataclasses.replace(base.measure, min_seconds=1.5)).settings_digest() \
        != base.settings_digest()


def test_judge_needs_sane_pair_bounds() -> None:
    with pytest.raises(ValueError):
        judge(Path("m.onnx"), load_target("x86-cpu"), 0.5, min_pairs=3, max_pairs=2)
    with pytest.raises(ValueError):
        judge(Path("m.onnx"), load_target("x86-cpu"), 0.5, min_pairs=0, max_pairs=2)


def test_reader_is_the_fastest_profiles_on_the_start_scale(scripted: Any) -> None:
    calls, script = scripted
    script.update({"m.onnx": [1.0, 3.0, 2.0, 1.0, 3.0, 2.0], "r.onnx": [4.0, 4.0, 8.0, 4.0, 4.0, 8.0]})
    reader = Reader(load_target("x86-cpu"), Path("r.onnx"), scale_ms=4.0)
    m = reader.read(Path("m.onnx"))  # model 1, 3, 2 beside 4, 4, 8: fastest over fastest, 1 / 4
    assert calls == ["m.onnx", "r.onnx", "r.onnx", "m.onnx", "m.onnx", "r.onnx"]  # ABBA, fresh profiles
    assert m.latency.median_ms == pytest.approx(1.0) and m.board_scale == 1.0  # 0.25 x the start's 4 ms
    assert m.rounds == 3 and not m.cached
    assert m.median_cv == pytest.approx(float(np.std([1.0, 3.0, 2.0]) / 2.0))
    m2 = reader.read(Path("m.onnx"))  # the order goes on: this reading starts with the reference
    assert calls[6:] == ["r.onnx", "m.onnx", "m.onnx", "r.onnx", "r.onnx", "m.onnx"]
    assert m2.latency.median_ms == pytest.approx(1.0)


def test_reader_follows_the_device_as_a_pair_does(scripted: Any) -> None:
    _, script = scripted
    script.update({"m.onnx": [4.0], "r.onnx": [16.0]})  # the device now runs everything twice as slow as at start
    m = Reader(load_target("x86-cpu"), Path("r.onnx"), scale_ms=8.0).read(Path("m.onnx"))
    assert m.board_scale == 2.0 and m.latency.median_ms == 2.0  # a quarter of the baseline, on the start's scale


def test_reader_without_reference_reads_the_model_alone(scripted: Any) -> None:
    calls, script = scripted
    script["m.onnx"] = [1.0, 1.2, 1.1]
    m = Reader(load_target("x86-cpu"), None, scale_ms=1.0).read(Path("m.onnx"))
    assert calls == ["m.onnx"] * 3 and m.latency.median_ms == 1.0 and m.board_scale == 1.0


def test_reader_refuses_bad_settings() -> None:
    with pytest.raises(ValueError):
        Reader(load_target("x86-cpu"), None, scale_ms=0.0)
    with pytest.raises(ValueError):
        Reader(load_target("x86-cpu"), None, scale_ms=1.0, pairs=0)


# --------------------------------------------------------------------------- real models, real profiler
def conv_net(path: Path, width: int, size: int = 32) -> Path:
    """Two 3x3 convolutions (8 -> ``width`` -> ``width``) on a ``size`` x ``size`` input, then a pool:
    halving ``width`` makes it ~4x cheaper (the second convolution dominates)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes, prev, cin = [], [], "x", 8
    for i in range(2):
        inits.append(numpy_helper.from_array((rng.standard_normal((width, cin, 3, 3)) * 0.1).astype(np.float32),
                                             f"conv{i}.weight"))
        nodes += [helper.make_node("Conv", [prev, f"conv{i}.weight"], [f"c{i}"], name=f"/conv{i}/Conv",
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"/conv{i}/Relu")]
        prev, cin = f"r{i}", width
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["y"], name="/pool/GlobalAveragePool"))
    graph = helper.make_graph(nodes, "convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width, 1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def real_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    """(cheap model, reference ~4x its MACs, x86-cpu with one short profile per fresh process)."""
    d = tmp_path_factory.mktemp("judge")
    target = load_target("x86-cpu")
    # the pairs are the repetition (as in `hwcompress check`): no re-profiling inside a round
    quick = dataclasses.replace(target.measure, min_seconds=0.1, max_seconds=1.0, max_cv=1.0, max_rounds=1)
    return conv_net(d / "cheap.onnx", 32), conv_net(d / "reference.onnx", 64), dataclasses.replace(target, measure=quick)


def test_real_cheap_model_is_within_a_loose_limit(real_pair: tuple[Path, Path, Any]) -> None:
    cheap, ref, target = real_pair
    v = judge(cheap, target, 0.6, reference=ref, min_pairs=3, max_pairs=6)
    # measured ~0.27x on a 2-core machine; 0.6 leaves more than 2x for noise
    assert v.within and v.ratio < 0.6 and 3 <= v.pairs <= 6 + SPELL_PAIRS  # more while the reference reads slow
    assert len(v.reference_ms) == v.pairs and all(m > 0 for m in v.model_ms + v.reference_ms)
    assert v.ratio == pytest.approx(pair_ratio(v.model_ms, v.reference_ms))


def test_real_cheap_model_is_over_a_tight_limit(real_pair: tuple[Path, Path, Any]) -> None:
    cheap, ref, target = real_pair
    v = judge(cheap, target, 0.1, reference=ref, min_pairs=3, max_pairs=6)
    assert not v.within and v.ratio > 0.1 and 3 <= v.pairs <= 6 + SPELL_PAIRS
    assert Verdict.from_dict(json.loads(json.dumps(v.to_dict()))) == v


def test_real_rounds_alternate_and_stay_fresh(real_pair: tuple[Path, Path, Any]) -> None:
    cheap, ref, target = real_pair
    ms, rs = measure_rounds(cheap, target, 2, reference=ref)
    assert len(ms) == len(rs) == 2 and not any(m.cached for m in ms + rs)
    assert ms[0].model_sha256 != rs[0].model_sha256 and {m.model_sha256 for m in ms} == {ms[0].model_sha256}


def test_real_reader_agrees_with_the_judge(real_pair: tuple[Path, Path, Any]) -> None:
    cheap, ref, target = real_pair
    start, _ = measure_rounds(ref, target, 3)
    scale = float(np.median([m.latency.median_ms for m in start]))
    m = Reader(target, ref, scale_ms=scale).read(cheap)
    assert m.rounds == 3 and not m.cached and 0.5 < m.board_scale < 2.0
    assert m.latency.median_ms / scale < 0.6  # ~0.27x, as the judge's pairs measure it (above)
