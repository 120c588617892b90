"""The report logic of tools/bench_compare.py: what it says about proxies, budgets and goals.

The rows are written by hand here (the benchmark itself takes hours); what is under test is that the
report states a missed budget, a slower precision pick and an unmet goal plainly, and never claims a
goal that the figures do not support.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from hwcompress.judge import SPELL_PAIRS, pair_ratio

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_compare_under_test", TOOLS / "bench_compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


bc = _load()
MET = 10  # the "met" column of bc.table (after budget, method, seeds, acc, Δ, lat, p90, speed-up, budget ms)

BASE = bc.Baseline(
    model="vgg-small",
    accuracy=0.9200,
    latency_ms=2.0,
    p90_ms=2.1,
    peak_memory_bytes=10 * 2**20,
    file_bytes=4_000_000,
    macs=200_000_000,
    params=1_000_000,
    precision_ratio={"fp32": 1.0, "fp16": 0.97, "int8": 0.52, "int4": 1.83},
)


def row(method: str, acc: float, ms: float, *, budget: str = "0.5x", budget_ms: float = 1.0,
        precisions: dict[str, str] | None = None, file_bytes: int = 1_000_000) -> Any:
    layers = precisions or {"conv1": "fp32", "conv2": "fp32"}
    counts: dict[str, int] = {}
    for p in layers.values():
        counts[p] = counts.get(p, 0) + 1
    return bc.Row(
        model="vgg-small",
        accuracy=acc,
        latency_ms=ms,
        p90_ms=ms * 1.05,
        peak_memory_bytes=5 * 2**20,
        file_bytes=file_bytes,
        macs=50_000_000,
        params=250_000,
        budget=budget,
        method=method,
        budget_ms=budget_ms,
        precisions=counts,
        keep={n: 0.5 for n in layers},
        layer_precisions=dict(layers),
    )


def test_proxy_over_budget_and_slower_precision_are_said_plainly() -> None:
    rows = [
        row(bc.MEASURED, 0.9190, 0.95, precisions={"conv1": "int8", "conv2": "int8"}),
        row(bc.PROXY, 0.9195, 1.30, precisions={"conv1": "int4", "conv2": "int8"}),
        row(bc.UNIFORM, 0.9100, 0.99),
    ]
    text = "\n".join(bc.findings("vgg-small", BASE, rows))
    assert "proxy search MISSES the budget" in text and "+30%" in text
    assert "slower precision than measurement for 1 layer(s): int4 where measurement chose int8" in text
    assert "int4 is *slower* than fp32" in text
    # the proxy is over budget, so the comparison is against uniform: +0.90 pt, goal met
    assert "best other method within budget: uniform 91.00% (+0.90 pt; goal met" in text


def test_goal_not_met_is_reported_not_hidden() -> None:
    rows = [
        row(bc.MEASURED, 0.9100, 0.98),
        row(bc.GLOBAL, 0.9080, 0.97),  # only 0.2 pt behind: the +0.5 pt goal is not met
        row(bc.UNIFORM, 0.9300, 1.20),  # more accurate but over budget: not a valid comparison
    ]
    text = "\n".join(bc.findings("vgg-small", BASE, rows))
    assert "budget 1.000 ms met" in text
    assert "global magnitude 90.80% (+0.20 pt; goal NOT met" in text
    over = [row(bc.MEASURED, 0.9100, 1.05)]
    assert "MISSED on measured latency" in "\n".join(bc.findings("vgg-small", BASE, over))


def test_headline_goal_needs_all_three() -> None:
    small_fast = row(bc.HEADLINE, 0.9160, 0.39, budget="0.2x", budget_ms=0.4, file_bytes=190_000)
    small_fast.extra = {"headline": "latency 0.2x, size 0.05x"}
    text = "\n".join(bc.findings("vgg-small", BASE, [small_fast]))
    assert "21.1x smaller" in text and "5.13x faster" in text and "all met" in text and "NOT" not in text
    lossy = row(bc.HEADLINE, 0.9100, 0.39, budget="0.2x", budget_ms=0.4, file_bytes=190_000)
    assert "NOT all met" in "\n".join(bc.findings("vgg-small", BASE, [lossy]))


def test_table_marks_missed_budgets_and_budget_free_rows() -> None:
    rows = [
        row(bc.MEASURED, 0.9190, 0.95),
        row(bc.PROXY, 0.9195, 1.30),
        row(bc.INT8, 0.9190, 1.04, budget="any", budget_ms=0.0),
    ]
    md = bc.table(BASE, rows)
    lines = md.splitlines()
    assert len(lines) == 2 + 1 + 3
    assert "| **NO** |" in lines[4]  # the proxy row
    assert lines[5].split("|")[MET].strip() == "none"  # all-int8 at 1.04 ms meets no 1.0 ms budget
    assert "4.0x" in lines[3]  # compression: 4 MB / 1 MB


def test_goals_table_has_one_line_per_budget_against_the_best_method_within_it() -> None:
    rows = [
        row(bc.MEASURED, 0.9190, 0.95),
        row(bc.PROXY, 0.9195, 1.30),  # over budget: not the comparison
        row(bc.UNIFORM, 0.9100, 0.99),
        row(bc.MEASURED, 0.9000, 0.62, budget="0.3x", budget_ms=0.6),  # over its budget
        row(bc.GLOBAL, 0.8990, 0.58, budget="0.3x", budget_ms=0.6),
        row(bc.UNIFORM, 0.9200, 0.95),  # a 0.5x row does not count at 0.3x
    ]
    lines = bc.goals_table({"vgg-small": (BASE, rows)}).splitlines()
    assert len(lines) == 2 + 2
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[2:]]
    at3, at5 = cells
    assert at3[1] == "0.3x" and at3[4] == "**NO**" and at3[5] == "global magnitude" and at3[8] == "not met"
    assert at3[9] == "—"  # no proxy row at 0.3x
    assert at5[5] == "uniform" and at5[6] == "92.00" and at5[7] == "-0.10" and at5[8] == "not met"
    assert at5[9] == "1.30x budget, **MISSES**"
    alone = bc.goals_table({"vgg-small": (BASE, [row(bc.MEASURED, 0.9190, 0.95)])}).splitlines()[2]
    assert "| none | — | — | — |" in alone


def test_goal_ceiling_is_explained_when_the_other_method_is_near_the_baseline() -> None:
    rows = [row(bc.MEASURED, 0.9195, 0.97), row(bc.UNIFORM, 0.9184, 0.99)]
    text = "\n".join(bc.findings("vgg-small", BASE, rows))
    assert "goal NOT met" in text
    assert "uniform is itself within 0.5 pt of the unpruned baseline (92.00%)" in text


def test_searches_are_judged_against_the_common_budget() -> None:
    searched = row(bc.MEASURED, 0.9195, 1.22, budget_ms=1.25)  # resolved against its own baseline reading
    judged = bc.Bench._common(searched, 1.20)
    assert judged.budget_ms == 1.20 and not judged.met
    assert judged.extra["budget_ms_resolved"] == 1.25
    fitted = bc.Bench._common(row(bc.UNIFORM, 0.91, 1.1, budget_ms=1.20), 1.30)
    assert fitted.budget_ms == 1.20  # fitted methods already used the common budget


def test_budget_fraction_parsing() -> None:
    assert bc._fraction("0.5x") == 0.5 and bc._fraction("any") is None and bc._fraction("0.2x") == 0.2


def _verdict(model_ms: list[float], ref_ms: list[float], limit: float) -> dict[str, Any]:
    from hwcompress.judge import decide

    return decide(model_ms, ref_ms, limit).to_dict()


def test_met_is_the_judges_verdict_not_a_reading() -> None:
    fast_reading = row(bc.UNIFORM, 0.9100, 0.95)  # one reading under the 1.0 ms budget ...
    assert fast_reading.met
    fast_reading.verdict = _verdict([1.1, 1.2, 1.1, 1.15], [2.0, 2.0, 2.0, 2.0], 0.5)  # ... judged 0.56x: over
    assert not fast_reading.met and not fast_reading.meets("0.5x", 1.0)
    meas = row(bc.MEASURED, 0.9000, 0.98)
    # the uniform row is not "within budget" for the comparison any more: no other method met it
    assert bc._best_other([meas, fast_reading], meas) is None
    free = row(bc.INT8, 0.9190, 1.04, budget="any", budget_ms=0.0)  # its reading is over 1.0 ms, its verdict within
    free.extra["verdicts"] = {"0.5x": _verdict([0.9, 0.95, 0.9, 0.92], [2.0, 2.0, 2.0, 2.0], 0.5)}
    assert free.meets("0.5x", 1.0) and bc._best_other([meas, fast_reading, free], meas) is free
    md = bc.table(BASE, [meas, fast_reading, free]).splitlines()
    assert md[4].split("|")[MET].strip() == "**NO**" and md[5].split("|")[MET].strip() == "0.5x"


def test_undecided_verdict_is_marked_in_the_table() -> None:
    r = row(bc.MEASURED, 0.9190, 0.95)
    r.verdict = _verdict([0.40, 0.60, 0.45, 0.55], [1.0] * 4, 0.5)
    assert not r.verdict["decided"] and r.met
    assert bc.table(BASE, [r]).splitlines()[3].split("|")[MET].strip() == "yes (undecided)"


def test_place_row_reports_the_judged_ratio_times_the_baseline() -> None:
    r = row(bc.UNIFORM, 0.91, 0.95)  # p90 = 1.05 x its median
    r.extra.update(first_ms=0.95, first_p90_ms=0.95 * 1.05)
    r.verdict = _verdict([1.0, 1.1, 0.9, 1.0], [2.5] * 4, 0.5)  # 0.36x: fastest over fastest
    bc.place_row(r, 2.0)
    assert r.latency_ms == pytest.approx(0.72) and r.budget_ms == pytest.approx(1.0) and r.met
    assert r.p90_ms == pytest.approx(0.72 * 1.05) and r.extra["budget_ms_at_start"] == 1.0
    headline = row(bc.HEADLINE, 0.91, 0.95, budget="3ms", budget_ms=3.0)
    headline.verdict = _verdict([2.0, 2.2, 2.1, 2.05], [], 3.0)  # an absolute budget: judged in ms, no reference
    bc.place_row(headline, 2.0)
    assert headline.latency_ms == pytest.approx(2.0) and headline.budget_ms == 3.0 and headline.met


def _convnet_onnx(path: Path, width: int) -> Path:
    """8 -> width -> width 3x3 convolutions on 32x32: halving ``width`` makes it ~4x cheaper."""
    import torch
    from torch import nn

    from hwcompress.export import export_onnx

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    return export_onnx(net, (1, 8, 32, 32), path)


def test_rows_are_judged_beside_the_baseline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real profiles, no search: a row whose artifact is ~4x cheaper than the baseline is judged within 0.5x and
    over 0.1x by hwcompress.judge, a budget-free row against every budget on the same pairs, and the baseline's
    precision ratio is the judge's statistic on its pairs."""
    import argparse
    import dataclasses
    import shutil

    import hwcompress.artifact
    from hwcompress.targets import load_target

    target = load_target("x86-cpu")
    target = dataclasses.replace(target, measure=dataclasses.replace(  # the pairs are the repetition
        target.measure, min_seconds=0.1, max_seconds=1.0, max_cv=1.0, max_rounds=1))
    d = tmp_path / "tiny"
    _convnet_onnx(d / "baseline.onnx", 64)  # the fp32 baseline: every row's reference
    cheap = _convnet_onnx(tmp_path / "cheap.onnx", 32)
    shutil.copy(cheap, d / "baseline-int8.onnx")  # a "precision copy" ~4x faster than fp32
    def made() -> list[Any]:
        rows = []
        for budget, method in (("0.5x", bc.UNIFORM), ("0.1x", bc.GLOBAL), ("any", bc.INT8)):
            art = tmp_path / f"{budget}-{method}"
            art.mkdir(exist_ok=True)
            shutil.copy(cheap, art / "model.onnx")
            (art / "manifest.json").write_text("{}")
            r = row(method, 0.9, 5.0, budget=budget, budget_ms=0.0 if budget == "any" else 1.0)  # stale readings
            r.artifact = str(art)
            rows.append(r)
        return rows

    rows = made()
    monkeypatch.setattr(hwcompress.artifact, "read_manifest", lambda art: SimpleNamespace(
        result=SimpleNamespace(file="model.onnx")))
    bench = object.__new__(bc.Bench)
    bench.args = argparse.Namespace(rounds=3)
    bench.work, bench.target = tmp_path, target
    base = bc.Baseline("tiny", 0.92, 9.0, 9.9, 0, 1, 1, 1, {"fp32": 1.0, "int8": 1.0})
    base = bench.remeasure("tiny", base, rows)

    assert 0 < base.latency_ms < 9.0 and base.p90_ms == pytest.approx(base.latency_ms * 1.1)
    assert len(base.ratio_rounds["int8"]) == 3 and base.precision_ratio["int8"] < 0.6
    saved = json.loads((tmp_path / "rows" / "tiny-precisions.judged.json").read_text())["int8"]
    assert base.precision_ratio["int8"] == pytest.approx(pair_ratio(saved["model_ms"], saved["reference_ms"]))
    within, over, free = rows
    for r, limit, met in ((within, 0.5, True), (over, 0.1, False)):
        assert r.verdict is not None and r.verdict["limit"] == limit and r.verdict["within"] is met and r.met is met
        # --rounds 3: min = max pairs, and up to SPELL_PAIRS more while the baseline reads slower than its quiet time
        assert len(r.verdict["model_ms"]) == len(r.verdict["reference_ms"]) in range(3, 4 + SPELL_PAIRS)
        assert r.latency_ms == pytest.approx(r.verdict["ratio"] * base.latency_ms)
        assert r.budget_ms == pytest.approx(limit * base.latency_ms) and r.extra["first_ms"] == 5.0
    assert free.verdict is None and free.extra["verdicts"]["0.5x"]["within"]
    assert not free.extra["verdicts"]["0.1x"]["within"] and free.meets("0.5x", within.budget_ms)
    assert free.latency_ms == pytest.approx(free.extra["ratio"] * base.latency_ms)
    lines = bc.table(base, rows).splitlines()
    # met or over; with 3 pairs on a loaded machine a verdict may still be marked "(undecided)" (tested apart)
    met = [line.split("|")[MET].strip().removesuffix(" (undecided)") for line in lines[3:]]
    assert met == ["yes", "**NO**", "0.5x"]
    assert "over 3 pairs" in bc.findings("tiny", base, rows)[0]
    # a resumed run reuses every saved judgement of the same files: nothing is profiled (no target to profile on)
    bench.target = None
    again = made()
    base2 = bench.remeasure("tiny", bc.Baseline("tiny", 0.92, 9.0, 9.9, 0, 1, 1, 1, {"fp32": 1.0, "int8": 1.0}), again)
    assert base2.latency_ms == base.latency_ms and base2.ratio_rounds == base.ratio_rounds
    assert [r.verdict for r in again] == [r.verdict for r in rows] and again[2].extra["verdicts"] == free.extra["verdicts"]
    assert [r.latency_ms for r in again] == [r.latency_ms for r in rows]
    bench.target = target
    third = made()[:1]
    (Path(third[0].artifact) / "model.onnx").write_bytes((d / "baseline.onnx").read_bytes())  # another model there
    bench.remeasure("tiny", bc.Baseline("tiny", 0.92, 9.0, 9.9, 0, 1, 1, 1, {"fp32": 1.0}), third)
    assert third[0].verdict is not None and not third[0].verdict["within"]  # judged anew: the baseline itself


def test_baseline_is_saved_beside_its_precision_copies_not_over_them(
    tmp_path: Path, fmnist_small: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real quantization and profiles of a small convnet: the baseline's JSON lands in rows/, every precision copy
    stays a loadable ONNX model, and a second call reads the saved baseline instead of measuring again (a loop
    variable once shadowed the JSON's path: the JSON overwrote baseline-int4.onnx and was never saved)."""
    import argparse

    import onnx
    import torch
    from torch import nn

    from hwcompress.targets import load_target

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10)).eval()
    bench = object.__new__(bc.Bench)
    bench.args = argparse.Namespace(test_images=100, fresh=False)
    bench.work = tmp_path
    bench.target = load_target("x86-cpu")
    bench._splits = {0: fmnist_small}
    bench.cache = None
    bench._bases = {("tiny", 0): SimpleNamespace(model=model)}
    (tmp_path / "rows").mkdir()
    monkeypatch.setattr(bc, "BASELINE_ROUNDS", 2)  # 2 ABBA pairs per precision copy: what is tested is the files
    base = bench.baseline("tiny")
    saved = tmp_path / "rows" / "tiny-baseline.json"
    assert saved.exists() and json.loads(saved.read_text())["latency_ms"] == base.latency_ms
    copies = sorted((tmp_path / "tiny").glob("baseline*.onnx"))
    assert len(copies) == len(bench.target.precisions)
    for copy in copies:
        onnx.checker.check_model(onnx.load(str(copy)))
    assert set(base.precision_ratio) == set(bench.target.precisions)
    for prec, pairs in base.ratio_rounds.items():  # each precision's ratio: the judge's, on its 2 pairs
        assert len(pairs) == 2 and 0 < base.precision_ratio[prec] < 10
    bench.target = None  # a second call must not measure: it reads the saved row
    assert bench.baseline("tiny") == base


# --------------------------------------------------------------------------- issue 22: seeds, summary.json, resume
SUMMARY_KEYS = {"model", "budget", "method", "seeds", "accuracy", "accuracy_mean", "accuracy_std",
                "latency_over_budget", "met", "code"}


def _args(tmp_path: Path, **kw: Any) -> Any:
    import argparse

    a = argparse.Namespace(models="vgg-small", budgets="0.5", seed_list=[0, 1, 2], seeds="0,1,2",
                           method_slugs={"measured", "uniform", "knapsack", "int8"}, headline_latency="0.2x",
                           finetune_epochs=3, headline_finetune_epochs=3, episodes=40, quant_episodes=20, warmup=10,
                           test_images=None, rounds=0, fresh=False, saved_only=False, work=tmp_path)
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def _seeded(method: str, acc: float, seed: int, ratio: float, *, budget: str = "0.5x") -> Any:
    """A judged row: latency ratio ``ratio`` to its baseline against a 0.5x budget."""
    r = row(method, acc, 2.0 * ratio, budget=budget, budget_ms=1.0 if budget != "any" else 0.0)
    r.seed, r.finetune_epochs = seed, 3
    if budget == "any":
        r.extra["verdicts"] = {"0.5x": _verdict([2.0 * ratio] * 4, [2.0] * 4, 0.5)}
    else:
        r.verdict = _verdict([2.0 * ratio] * 4, [2.0] * 4, 0.5)
    return r


def _results() -> dict[tuple[str, int], Any]:
    """vgg-small at seeds 0-2: hwcompress, uniform and all-int8 at every seed, knapsack at seeds 0 and 1 only."""
    out = {}
    for seed in (0, 1, 2):
        base = bc.Baseline(**{**asdict_base(), "accuracy": 0.92 + 0.001 * seed, "seed": seed})
        rows = [_seeded(bc.MEASURED, 0.915 + 0.002 * seed, seed, 0.45),
                _seeded(bc.UNIFORM, 0.910, seed, 0.49 if seed else 0.52),  # seed 0: judged over
                _seeded(bc.INT8, 0.919, seed, 0.55, budget="any")]
        if seed == 1:  # the search put a layer in int8 on one seed
            rows[0].precisions = {"fp32": 1, "int8": 1}
        if seed < 2:
            rows.insert(2, _seeded(bc.KNAPSACK, 0.912 + 0.004 * seed, seed, 0.48))
        out["vgg-small", seed] = (base, rows)
    return out


def asdict_base() -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(BASE)


def test_summary_json_has_one_entry_per_model_budget_method_with_per_seed_verdicts(tmp_path: Path) -> None:
    results = _results()
    entries = bc.summary(_args(tmp_path), results)
    assert all(set(e) == SUMMARY_KEYS for e in entries)
    by = {(e["model"], e["budget"], e["method"]): e for e in entries}
    assert set(by) == {("vgg-small", "0.5x", m) for m in ("hwcompress", "uniform", "knapsack", "ort-int8")}
    uni = by["vgg-small", "0.5x", "uniform"]
    assert uni["seeds"] == [0, 1, 2] and uni["accuracy"] == [0.910] * 3
    assert uni["accuracy_mean"] == pytest.approx(0.910) and uni["accuracy_std"] == pytest.approx(0.0)
    assert uni["latency_over_budget"] == pytest.approx([0.04, -0.02, -0.02]) and uni["met"] == [False, True, True]
    knap = by["vgg-small", "0.5x", "knapsack"]
    assert knap["seeds"] == [0, 1] and knap["accuracy_std"] == pytest.approx(statistics.stdev([0.912, 0.916]))
    int8 = by["vgg-small", "0.5x", "ort-int8"]  # budget-free: judged against the grid's budget
    assert int8["met"] == [False] * 3 and int8["latency_over_budget"] == pytest.approx([0.1] * 3)
    one = bc.summary(_args(tmp_path, seed_list=[0]), {("vgg-small", 0): results["vgg-small", 0]})
    assert all(e["accuracy_std"] is None for e in one)  # one seed: no spread claimed
    assert set(bc.NAME.values()) == {"hwcompress", "proxy", "uniform", "global-magnitude", "knapsack", "netadapt",
                                     "uniform+int8", "ort-int8", "hwcompress-headline"}


def test_results_md_shows_mean_and_std_over_seeds_and_lists_missing_rows(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bc, "pareto_png", lambda *a: None)
    out = bc.write_outputs(tmp_path, "x86-cpu", _args(tmp_path), _results(), 60.0, ["vgg-small 0.5x knapsack seed 2 "
                                                                                     "(saved, but stale)"])
    md = out.read_text()
    assert "**Missing rows** (1 of the 12 asked for have no result yet): vgg-small 0.5x knapsack seed 2." in md
    assert "Saved rows not used (1): vgg-small 0.5x knapsack seed 2 (saved, but stale)." in md
    table = next(line for line in md.splitlines() if line.startswith("| 0.5x | uniform |"))
    cells = [c.strip() for c in table.split("|")]
    assert cells[3] == "3" and cells[4] == "91.00 ± 0.00" and cells[MET] == "**2/3**"
    meas = next(line for line in md.splitlines() if line.startswith("| 0.5x | hwcompress |"))
    assert "91.70 ± 0.20" in meas and meas.split("|")[MET].strip() == "3/3"
    # precisions: each seed's where the seeds differ, one figure where they agree
    assert "| fp32:2 / fp32:1 int8:1 / fp32:2 |" in meas and "| fp32:2 |" in table
    # the goal line compares with the best other method within at every seed (knapsack, 2 of 2), paired by seed
    goal = next(line for line in md.splitlines() if line.startswith("| vgg-small | 0.5x |"))
    assert "knapsack (HALP-style)" in goal and "+0.20 ± 0.14" in goal  # seeds 0 and 1: +0.3 and +0.1 pt
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert len(saved) == 4 and all(set(e) == SUMMARY_KEYS for e in saved)
    assert "Code revision of the rows (rows made by an earlier invocation keep theirs): `not recorded` 11." in md
    assert bc.code_revision()  # this checkout is a git one: every row made here records its revision
    assert len(json.loads((tmp_path / "rows.json").read_text())) == 11
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind


def test_saved_rows_resume_and_old_rows_load_as_seed_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A saved row is read, not made again; a row written before seeds existed (no seed, no fine-tune record but
    a search's) is seed 0; a row fine-tuned otherwise is redone, or listed with the reason under --saved-only."""
    from dataclasses import asdict

    bench = object.__new__(bc.Bench)
    bench.args = _args(tmp_path)
    bench.work = tmp_path
    bench.missing = []
    bench.code = "abc1234"
    (tmp_path / "rows").mkdir()
    made: list[tuple[str, int]] = []

    def fake(model: str, budget: str, method: str, budget_ms: float, seed: int = 0) -> Any:
        made.append((method, seed))
        r = _seeded(method, 0.9, seed, 0.4)
        r.finetune_epochs = 3
        r.extra["fit_read"], r.extra["judge_rule"] = bc.FIT_READ, bc.JUDGE_RULE
        return r

    monkeypatch.setattr(bench, "fitted", fake)
    monkeypatch.setattr(bench, "search", fake)
    old = asdict(row(bc.MEASURED, 0.93, 0.9))
    for k in ("seed", "finetune_epochs", "met_seeds"):
        old.pop(k)
    old["extra"] = {"finetune_epochs": 3, "judge_rule": bc.JUDGE_RULE}
    (tmp_path / "rows" / "vgg-small-0.5x-measured.json").write_text(json.dumps(old))  # an older version's row
    stale = asdict(row(bc.UNIFORM, 0.93, 0.9))
    for k in ("seed", "finetune_epochs", "met_seeds"):
        stale.pop(k)
    (tmp_path / "rows" / "vgg-small-0.5x-uniform.json").write_text(json.dumps(stale))  # no fine-tune record
    got = bench.row("vgg-small", "0.5x", bc.MEASURED, 1.0, 0)
    assert got is not None and got.seed == 0 and got.accuracy == 0.93 and made == []
    # a search made under the judge's older rule (median of per-pair ratios) is redone
    median_rule = bc.Row(**(old | {"extra": {"finetune_epochs": 3}}))
    assert bench._stale(median_rule, bc.MEASURED).startswith("its search judged with an older rule")
    bench.args.saved_only = True
    assert bench.row("vgg-small", "0.5x", bc.UNIFORM, 1.0, 0) is None
    assert bench.missing == ["vgg-small 0.5x uniform seed 0 (saved in vgg-small-0.5x-uniform.json, but it records no "
                             "fine-tune epochs (an older bench_compare); this run fine-tunes 3)"]
    assert bench.row("vgg-small", "0.5x", bc.KNAPSACK, 1.0, 1) is None and made == []
    assert len(bench.missing) == 1  # a row never saved is not a saved row refused (results.md: "Missing rows")
    bench.args.saved_only = False
    redone = bench.row("vgg-small", "0.5x", bc.UNIFORM, 1.0, 0)
    assert redone is not None and made == [(bc.UNIFORM, 0)] and redone.accuracy == 0.9
    first = bench.row("vgg-small", "0.5x", bc.KNAPSACK, 1.0, 1)
    assert first is not None and made[-1] == (bc.KNAPSACK, 1)
    assert (tmp_path / "rows" / "vgg-small-0.5x-knapsack-seed1.json").exists()
    again = bench.row("vgg-small", "0.5x", bc.KNAPSACK, 1.0, 1)  # resumed: read back, not made
    assert again is not None and again.seed == 1 and len(made) == 2
    assert again.code == "abc1234" and got.code == ""  # the revision that made a row; older rows have none
    bench.args.finetune_epochs = 1  # the same row asked with another fine-tune is made again
    assert bench.row("vgg-small", "0.5x", bc.KNAPSACK, 1.0, 1) is not None and len(made) == 3
    # a fitted row whose points were plain measurements (before the fits read beside the baseline) is redone
    plain = asdict(_seeded(bc.UNIFORM, 0.91, 2, 0.4)) | {"finetune_epochs": 1}
    (tmp_path / "rows" / "vgg-small-0.5x-uniform-seed2.json").write_text(json.dumps(plain))
    assert bench._stale(bc.Row(**plain), bc.UNIFORM).startswith("it was fitted on plain measurements")
    assert bench.row("vgg-small", "0.5x", bc.UNIFORM, 1.0, 2) is not None and made[-1] == (bc.UNIFORM, 2)
    # so is one fitted on readings the judge had not confirmed (before 2026-12-07)
    read = plain | {"extra": {"finetune_epochs": 1, "fit_read": "readings beside the baseline"}}
    assert bench._stale(bc.Row(**read), bc.UNIFORM).startswith("it was fitted on readings beside the baseline")
    assert bench._stale(bc.Row(**(plain | {"extra": {"finetune_epochs": 1, "fit_read": bc.FIT_READ}})), bc.UNIFORM) == ""


def test_cli_refuses_the_removed_seed_flag_and_takes_summary_names(tmp_path: Path) -> None:
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(TOOLS.parent)}
    out = subprocess.run([sys.executable, str(TOOLS / "bench_compare.py"), "--seed", "1"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 2 and "--seed was replaced by --seeds" in out.stderr and "--seeds 1" in out.stderr
    out = subprocess.run([sys.executable, str(TOOLS / "bench_compare.py"), "--seeds", "0,0"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 2 and "distinct seeds" in out.stderr
    out = subprocess.run([sys.executable, str(TOOLS / "bench_compare.py"), "--methods", "uniform+int8,bogus"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "--methods: unknown bogus;" in out.stderr  # uniform+int8 is a known name
