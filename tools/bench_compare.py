"""Results: measured-latency two-stage search vs proxies and peers' methods, side by side, over seeds, with plots.

On Fashion-MNIST, target x86-cpu (or --target), for each model, each latency budget (a fraction of
the *measured* fp32 baseline) and each seed, with the same episodes and the same distillation
fine-tune (--finetune-epochs, 3) for every method that trains:

* ``hwcompress``        two-stage DRL search, measured latency in the reward (stage 1 credited with
                        the measured speed-up of the target's best lower precision);
* ``proxy (AMC+HAQ)``   the same search with ``--cost flops`` (stage 1) and ``--cost bitops`` (stage 2);
* ``uniform``           one keep ratio for all layers, bisected to the measured budget, fp32;
* ``global magnitude``  Torch-Pruning global L1 magnitude pruning, bisected to the measured budget, fp32;
* ``knapsack (HALP-style)``  channel Taylor importance vs the latency table measured on the target
                        (:mod:`hwcompress.knapsack`), the predicted limit bisected to the measured budget, fp32;
* ``NetAdapt-style greedy``  one group at a time, every proposal measured on the target, BN-recalibrated
                        and scored on validation images, until the measured budget is met, fp32;
* ``uniform + all-int8`` one keep ratio bisected so that the ONNX Runtime static INT8 (QDQ) model meets
                        the measured budget; the fine-tuned model quantized to int8 is the row;
* ``ORT all-int8``      ONNX Runtime static INT8 (QDQ) of the unpruned model (no search, no training).

The fitted methods (uniform, global magnitude, knapsack, NetAdapt, uniform + int8) live in
:mod:`hwcompress.baselines`; each keeps a point only where the judge *confirms* it within the budget,
the rule the search keeps its winner by: every point of a line search is judged beside the fp32
baseline (6-10 ABBA pairs, the interval's high end within the budget's fraction); NetAdapt reads its
hundreds of proposals on one pair each and has the model that reads within confirmed, pruning on
where it is not.  (Until 2026-12-06 the fits read plain measurements against the baseline's fastest
start profile, then until 2026-12-07 three pairs' median: points fitted on the edge were judged
0.50-0.57x for a 0.5x budget, NetAdapt's luckiest one-pair reading 0.735x; rows fitted so are redone.)  On VGG-small a ``hwcompress headline`` row adds the seed paper's goal:
latency 0.2x and file 0.05x (with --headline-finetune-epochs, default 3).

Seeds (--seeds, default 0,1,2): a seed sets the data split (and so the trained baseline, cached per
split in ~/.cache/hwcompress/models: seeds other than 0 train their own), the agent and the
fine-tune, as ``--seed`` did.  Every row is an artifact written by the export writer, measured on the
target and scored on the test set in its runtime.  Whether a row meets its budget is decided at the
end by the judge (:mod:`hwcompress.judge`, the rule the search and ``hwcompress check`` use): fresh
profiles of the row's artifact in ABBA pairs with its seed's fp32 baseline, the fastest profile's ratio
to the baseline's fastest (``hwcompress.judge.pair_ratio``) with a 95 % bootstrap interval against the budget's fraction, pairs added (up to
``--rounds``) until the interval is on one side of it.  A row's reported latency is that ratio times
the baseline's latency; the "met" column is the judge's verdict (over seeds: how many met).

Rows are saved one by one under --work (rows/<model>-<budget>-<method>[-seed<N>].json; seed 0 keeps
the names older versions wrote, which load as seed 0 when their fine-tune epochs match, and are
redone — or, with --saved-only, listed as missing with the reason — when they do not): a run that is
stopped continues where it was with the same command; --fresh redoes.  Each judgement is saved too
(rows/*.judged.json, keyed by the artifact's and the baseline's sha256): a resumed run judges only
what is new (--rejudge redoes them).  Rows are made seed by seed (all of seed 0 first), so a grid
stopped early has every cell at one seed before any at three.
Output: results.md (mean ± std over seeds, goals, findings, the rows still missing),
summary.json (one row per model, budget and method: seeds, accuracies, mean, std, latency / budget - 1
and the judge's verdict per seed), pareto-<model>.png, policy-<model>.png, rows.json (every seed's row).

Wall time.  Measured on a smoke run (VGG-small, 0.5x, seed 0, --val-images 500 --test-images 1000
--rounds 4, on the 2 shared cores of an AMD EPYC at a load of ~5, 2026-12-06): the baseline row
2.5 min; the knapsack fit 88 s (its 524-entry latency table already in the measurement cache; a
first build measures it, ~1-3 min); NetAdapt 225 s (102 profiles, 5 iterations); the uniform + int8
fit 24-45 s; each row's export and first measurement ~5 s; judging ~5 s per row at 4 pairs; one
distillation epoch of VGG-small 955 s (DESIGN.md: ~250-280 s on quiet cores, ResNet-20 ~110-260 s).
Extrapolated, not measured: the fine-tune dominates — 7 trained rows per model, budget and seed
at 3 epochs each are 0.6-1.6 h on quiet cores and ~3.5x that at the smoke run's load; with the two
searches (~5-10 min each before their fine-tune: the published grid's search seconds) and the fits
(~5-20 min, NetAdapt most), one cell (model x budget x seed) takes ~1-2.2 h quiet, and the default
grid (27 cells, plus ORT int8 and 3 headline rows, plus training each model's baseline for seeds 1
and 2, ~1-1.5 h in all) ~30-60 h of compute on quiet cores, several days when shared.  It resumes row by
row: run it as far as a session allows; results.md lists the rows still missing.

    .venv/bin/python tools/bench_compare.py               # 3 models x budgets 0.3/0.5/0.7 x seeds 0,1,2 (days on 2 cores)
    .venv/bin/python tools/bench_compare.py --quick       # resnet-20 at 0.5x, seed 0, short searches, 1 fine-tune epoch
    .venv/bin/python tools/bench_compare.py --models vgg-small --budgets 0.5 --seeds 0 --publish tools/results
    .venv/bin/python tools/bench_compare.py --saved-only --publish tools/results   # no new rows: judge, publish
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import shutil
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hwcompress.fsutil import atomic_write_bytes, atomic_write_text
from hwcompress.judge import MAX_PAIRS
from hwcompress.search.config import VAL_IMAGES

ROOT = Path(__file__).resolve().parent.parent

MEASURED = "hwcompress"
PROXY = "proxy (AMC+HAQ)"
UNIFORM = "uniform"
GLOBAL = "global magnitude"
KNAPSACK = "knapsack (HALP-style)"
NETADAPT = "NetAdapt-style greedy"
UNIFORM_INT8 = "uniform + all-int8"
INT8 = "ORT all-int8"
HEADLINE = "hwcompress headline"
METHODS = (MEASURED, PROXY, UNIFORM, GLOBAL, KNAPSACK, NETADAPT, UNIFORM_INT8, INT8)
FITTED = (UNIFORM, GLOBAL, KNAPSACK, NETADAPT, UNIFORM_INT8)  # hwcompress.baselines, fitted to the measured budget
SLUG = {
    MEASURED: "measured",
    PROXY: "proxy",
    UNIFORM: "uniform",
    GLOBAL: "global",
    KNAPSACK: "knapsack",
    NETADAPT: "netadapt",
    UNIFORM_INT8: "uniform-int8",
    INT8: "int8",
    HEADLINE: "headline",
}
NAME = {  # the method's name in summary.json (and accepted by --methods beside its slug)
    MEASURED: "hwcompress",
    PROXY: "proxy",
    UNIFORM: "uniform",
    GLOBAL: "global-magnitude",
    KNAPSACK: "knapsack",
    NETADAPT: "netadapt",
    UNIFORM_INT8: "uniform+int8",
    INT8: "ort-int8",
    HEADLINE: "hwcompress-headline",
}
FIT_READ = "confirmed by the judge, fastest profiles, reference capped"  # how fitted methods read their points (rows record it)
JUDGE_RULE = "fastest over fastest, reference capped at its quiet band"  # the judge's statistic saved judgements were made with (others are redone)
BASELINE_ROUNDS = 5  # fresh pairs of each model's baseline with each of its precision copies, before the rows
DEFAULT_SEEDS = "0,1,2"
DEFAULT_FINETUNE_EPOCHS = 3

# what a bit-ops count (HAQ) takes each precision to cost relative to fp32 (weight bits x activation bits)
BITOPS_RATIO = {"fp32": 1.0, "fp16": 16 * 16 / 1024, "int8": 8 * 8 / 1024, "int4": 4 * 8 / 1024}


@dataclass
class Figures:
    """What is measured of one model: test accuracy in its runtime, latency on the target, size."""

    model: str
    accuracy: float
    latency_ms: float
    p90_ms: float
    peak_memory_bytes: int
    file_bytes: int
    macs: int
    params: int


@dataclass
class Baseline(Figures):
    precision_ratio: dict[str, float]  # the unpruned model at each precision / fp32: the judge's pair_ratio
    ratio_rounds: dict[str, list[float]] = field(default_factory=dict)  # per ABBA pair with the fp32 model
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # combined over seeds: seeds, accuracy, accuracy_std


@dataclass
class Row(Figures):
    budget: str  # "0.5x"
    method: str
    budget_ms: float
    precisions: dict[str, int]
    keep: dict[str, float]
    layer_precisions: dict[str, str]
    search_s: float = 0.0
    finetune_s: float = 0.0
    candidates: int = 0
    artifact: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    verdict: dict[str, Any] | None = None  # hwcompress.judge.Verdict.to_dict() of the side-by-side judgement
    seed: int = 0  # rows written before seeds existed are seed 0 (the old default)
    finetune_epochs: int | None = None  # None: not recorded (older rows; searches kept it in extra)
    met_seeds: list[bool] | None = None  # a row combined over seeds (:func:`combine`): each seed's verdict
    code: str = ""  # the git revision the row was made with ("+dirty": uncommitted changes; "": not recorded)

    @property
    def met(self) -> bool:
        """The judge's verdict where the row was judged side by side (over seeds: every seed's); else its first
        reading against the budget."""
        if self.met_seeds is not None:
            return bool(self.met_seeds) and all(self.met_seeds)
        if self.verdict is not None:
            return bool(self.verdict["within"])
        return self.latency_ms <= self.budget_ms

    def meets(self, budget: str, budget_ms: float) -> bool:
        """Within ``budget`` ("0.5x"): a row's own budget, or for a budget-free row (all-int8) any budget it
        was judged against (``extra['verdicts']``); a first reading against ``budget_ms`` where none was."""
        if budget == self.budget and self.budget_ms > 0:
            return self.met
        judged = self.extra.get("verdicts", {}).get(budget)
        if judged is not None:
            return bool(judged["within"])
        return self.latency_ms <= budget_ms

    def epochs(self) -> int | None:
        """Fine-tune epochs the row was made with (None: not recorded)."""
        if self.finetune_epochs is not None:
            return self.finetune_epochs
        got = self.extra.get("finetune_epochs")
        return int(got) if isinstance(got, int) else None


def parse_seeds(text: str) -> list[int]:
    """"0,1,2" -> [0, 1, 2] (distinct, >= 0, in the order given); ValueError otherwise."""
    seeds = [int(s) for s in text.split(",") if s.strip()]
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(text)
    return seeds


def code_revision() -> str:
    """This checkout's git revision, "+dirty" with uncommitted changes to the code ("" outside git)."""
    import subprocess

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "hwcompress", "tools",
                                "profilers", "targets"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{rev}+dirty" if rev and dirty.strip() else rev


def seed_suffix(seed: int) -> str:
    """Seed 0 keeps the file names older versions wrote (their rows are seed 0)."""
    return "" if seed == 0 else f"-seed{seed}"


# --------------------------------------------------------------------------- context
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from hwcompress.profiling.cache import MeasurementCache
        from hwcompress.targets import load_target

        self.args = args
        self.work: Path = args.work
        (self.work / "rows").mkdir(parents=True, exist_ok=True)
        self.target = load_target(args.target)
        self.cache = MeasurementCache()
        self._splits: dict[int, Any] = {}
        self._bases: dict[tuple[str, int], Any] = {}
        self.missing: list[str] = []  # saved rows --saved-only refused, with the reason (rows never saved: not here)
        self.code = code_revision()  # the code this process loaded, recorded in every row it makes

    def splits(self, seed: int) -> Any:
        from hwcompress.data import load_splits

        if seed not in self._splits:
            self._splits[seed] = load_splits(None, seed=seed)
        return self._splits[seed]

    def shape(self, seed: int) -> tuple[int, ...]:
        return (1, *self.splits(seed).input_shape)

    def trained(self, model: str, seed: int) -> Any:
        from hwcompress.zoo.train import ensure_baseline

        if (model, seed) not in self._bases:
            self._bases[model, seed] = ensure_baseline(model, self.splits(seed), progress=True)
            self._bases[model, seed].model.eval()
        return self._bases[model, seed]

    def folder(self, model: str, seed: int) -> Path:
        """Where one model's files of one seed go (seed 0: where older versions put them)."""
        return self.work / f"{model}{seed_suffix(seed)}"

    # ------------------------------------------------------------------ cached rows
    def _row_file(self, model: str, budget: str, method: str, seed: int = 0) -> Path:
        return self.work / "rows" / f"{model}-{budget}-{SLUG[method]}{seed_suffix(seed)}.json"

    def _stale(self, saved: Row, method: str) -> str:
        """Why a saved row cannot stand for this run ('' when it can): it was fine-tuned otherwise, or (a fitted
        method) fitted by an older rule than the judge's confirmation."""
        if method == INT8:
            return ""
        want = self.args.headline_finetune_epochs if method == HEADLINE else self.args.finetune_epochs
        got = saved.epochs()
        if got is None:
            return f"it records no fine-tune epochs (an older bench_compare); this run fine-tunes {want}"
        if got != want:
            return f"it was fine-tuned {got} epoch(s); this run fine-tunes {want}"
        if method in (MEASURED, PROXY, HEADLINE) and saved.extra.get("judge_rule") != JUDGE_RULE:
            return f"its search judged with an older rule than the judge's {JUDGE_RULE}"
        if method in FITTED and saved.extra.get("fit_read") != FIT_READ:
            how = saved.extra.get("fit_read") or "plain measurements"
            return f"it was fitted on {how} (an older bench_compare); this run's fits are {FIT_READ}"
        return ""

    def row(self, model: str, budget: str, method: str, budget_ms: float, seed: int = 0) -> Row | None:
        """The row of one method and seed, from --work when a run already made it (None: not saved, --saved-only)."""
        path = self._row_file(model, budget, method, seed)
        label = f"{model} {budget} {method} seed {seed}"
        if path.exists() and not self.args.fresh:
            saved = Row(**json.loads(path.read_text()))
            saved.seed = seed
            why = self._stale(saved, method)
            if not why:
                return self._common(saved, budget_ms)
            if self.args.saved_only:
                self.missing.append(f"{label} (saved in {path.name}, but {why})")
                return None
            print(f"[{time.strftime('%H:%M:%S')}] {path.name}: {why}; redoing it", flush=True)
        if self.args.saved_only:  # not saved: results.md lists it among the missing rows (missing_rows)
            return None
        print(f"[{time.strftime('%H:%M:%S')}] {label} ...", flush=True)
        if method in (MEASURED, PROXY, HEADLINE):
            row = self.search(model, budget, method, budget_ms, seed)
        elif method in FITTED:
            row = self.fitted(model, budget, method, budget_ms, seed)
        else:
            row = self.int8(model, seed)
        row.seed, row.code = seed, self.code
        atomic_write_text(path, json.dumps(asdict(row), indent=2))
        return self._common(row, budget_ms)

    @staticmethod
    def _common(row: Row, budget_ms: float) -> Row:
        """Judge every method against the same budget: this run's fraction of *its* baseline measurement.

        A search resolves ``0.5x`` against its own measurement of the baseline (as a user's search
        does), which can differ by a few percent; what it resolved is kept in ``extra``.
        """
        if row.method in (MEASURED, PROXY) and budget_ms > 0:
            row.extra.setdefault("budget_ms_resolved", row.budget_ms)
            row.budget_ms = budget_ms
        return row

    # ------------------------------------------------------------------ side by side
    def remeasure(self, model: str, base: Baseline, rows: list[Row], seed: int = 0) -> Baseline:
        """Judge every row's artifact against its seed's fp32 baseline, side by side (:mod:`hwcompress.judge`).

        Rows are made minutes or hours apart; a machine that is busier at one moment than at another
        would otherwise decide the comparison.  Each precision copy of the baseline is profiled in
        ``--rounds`` ABBA pairs with the fp32 model (``precision_ratio``: the judge's statistic,
        :func:`hwcompress.judge.pair_ratio`); each row is judged (:func:`judge_row`, at most ``--rounds``
        pairs).  The baseline's latency becomes the fastest of all its profiles in those pairs, and each row's latency its
        judged ratio times it (:func:`place_row`); a row's first measurement is kept in
        ``extra['first_ms']``.  Every judgement is saved beside the row (``*.judged.json``) with the
        sha256 of what it judged, and reused while they match (unless ``--rejudge``).  Returns the
        re-measured baseline.
        """
        from hwcompress.artifact import read_manifest
        from hwcompress.fsutil import sha256_file
        from hwcompress.judge import measure_rounds

        pairs = self.args.rounds
        if pairs <= 0:
            return base
        rejudge = bool(getattr(self.args, "rejudge", False))
        d = self.folder(model, seed)
        ref = d / "baseline.onnx"
        ref_sha = sha256_file(ref)
        precs = [p for p in base.precision_ratio if p != "fp32" and (d / f"baseline-{p}.onnx").exists()]
        live = [r for r in rows if r.artifact and (Path(r.artifact) / "manifest.json").exists()]
        fractions = {r.budget: f for r in rows
                     if r.method != HEADLINE and r.budget_ms > 0 and (f := _fraction(r.budget)) is not None}
        print(f"[{time.strftime('%H:%M:%S')}] {model} seed {seed}: judging {len(live)} rows and {len(precs)} "
              f"precision copies beside the baseline, up to {pairs} ABBA pairs each (saved judgements reused)",
              flush=True)
        ref_ms: list[float] = []
        store = self.work / "rows" / f"{model}{seed_suffix(seed)}-precisions.judged.json"
        saved = json.loads(store.read_text()) if store.exists() and not rejudge else {}
        for prec in precs:
            copy = d / f"baseline-{prec}.onnx"
            key = {"sha256": sha256_file(copy), "baseline_sha256": ref_sha, "pairs": pairs, "rule": JUDGE_RULE}
            hit = saved.get(prec)
            if hit is None or any(hit.get(k) != v for k, v in key.items()):
                ms, rs = measure_rounds(copy, self.target, pairs, reference=ref)
                hit = {**key, "ratios": _pair_ratios(ms, rs), "reference_ms": [r.latency.median_ms for r in rs],
                       "model_ms": [m.latency.median_ms for m in ms]}
                saved[prec] = hit
                atomic_write_text(store, json.dumps(saved, indent=1))
            ref_ms += hit["reference_ms"]
            base.ratio_rounds[prec] = list(hit["ratios"])
            base.precision_ratio[prec] = _ratio(hit)
        for r in live:
            art = Path(r.artifact)
            file = art / read_manifest(art).result.file
            ref_ms += self._judged(r, file, ref, ref_sha, fractions, pairs, rejudge)
        first = base.latency_ms
        if ref_ms:
            spread = base.p90_ms / base.latency_ms
            base.latency_ms = min(ref_ms)  # its quiet time: the judge's ratios are to the fastest profile
            base.p90_ms = base.latency_ms * spread
        for r in live:
            place_row(r, base.latency_ms)
        print(f"  baseline {first:.3f} -> {base.latency_ms:.3f} ms; "
              + "; ".join(f"{r.method} {r.budget} {r.extra['first_ms']:.3f} -> {r.latency_ms:.3f} "
                          f"({'met' if r.meets(r.budget, r.budget_ms) else 'over'})" for r in live), flush=True)
        return base

    def _judged(self, r: Row, file: Path, ref: Path, ref_sha: str, fractions: dict[str, float], pairs: int,
                rejudge: bool) -> list[float]:
        """:func:`judge_row`, or its saved judgement of the same files; returns the reference's round medians."""
        from hwcompress.fsutil import sha256_file

        store = self._row_file(r.model, r.budget, r.method, r.seed).with_suffix(".judged.json")
        key = {"sha256": sha256_file(file), "baseline_sha256": ref_sha, "pairs": pairs, "rule": JUDGE_RULE,
               "budgets": sorted(fractions) if r.budget_ms <= 0 else [r.budget]}
        hit = json.loads(store.read_text()) if store.exists() and not rejudge else None
        if hit is not None and all(hit.get(k) == v for k, v in key.items()):
            r.verdict = hit["verdict"]
            r.extra.update(hit["extra"])
            return list(hit["reference_ms"])
        got = judge_row(r, file, ref, self.target, fractions, max_pairs=pairs)
        kept = ("first_ms", "first_p90_ms", "verdicts", "ratio", "rounds_ms", "reference_rounds_ms")
        atomic_write_text(store, json.dumps({**key, "verdict": r.verdict, "reference_ms": got,
                                             "extra": {k: r.extra[k] for k in kept if k in r.extra}}, indent=1))
        return got

    # ------------------------------------------------------------------ the baseline
    def _baseline_file(self, model: str, seed: int) -> Path:
        return self.work / "rows" / f"{model}{seed_suffix(seed)}-baseline.json"

    def saved_baseline(self, model: str, seed: int = 0) -> Baseline | None:
        path = self._baseline_file(model, seed)
        if path.exists() and not self.args.fresh:
            return Baseline(**{**json.loads(path.read_text()), "seed": seed})
        return None

    def baseline(self, model: str, seed: int = 0) -> Baseline:
        saved = self.saved_baseline(model, seed)
        if saved is not None:
            return saved
        from hwcompress.artifact import measure_figures
        from hwcompress.export import export_onnx
        from hwcompress.judge import capped, measure_rounds, pair_ratio, reference_floor
        from hwcompress.macs import count_macs
        from hwcompress.quantize import quantize_onnx, uniform_policy

        base = self.trained(model, seed)
        splits, shape = self.splits(seed), self.shape(seed)
        d = self.folder(model, seed)
        d.mkdir(parents=True, exist_ok=True)
        fp32 = export_onnx(base.model, shape, d / "baseline.onnx")
        macs, params = count_macs(base.model, shape)
        fig = measure_figures(
            fp32,
            self.target,
            splits.test,
            macs=macs,
            params=params,
            precisions={"fp32": 1},
            label="baseline",
            cache=self.cache,
            test_limit=self.args.test_images,
        )
        assert fig.measurement is not None
        copies = {"fp32": fp32}
        for prec in self.target.precisions:
            if prec != "fp32":
                copies[prec] = quantize_onnx(
                    fp32, d / f"baseline-{prec}.onnx", uniform_policy(prec), splits.calib.x, self.target
                )
        # The budgets every method is fitted to are fractions of this latency: the quiet state, the fastest of the
        # fp32 model's fresh profiles (seen: one profile of ResNet-20's baseline at 0.774 ms, 0.50 ms quiet, which
        # left uniform and global pruning fitted to budgets 55 % loose).  Each precision copy is profiled in
        # BASELINE_ROUNDS ABBA pairs beside it; its ratio is the judge's statistic (pair_ratio: fastest over fastest).
        fp32_rounds: list[Any] = []
        ratios: dict[str, float] = {"fp32": 1.0}
        ratio_rounds: dict[str, list[float]] = {}
        others = [p for p in copies if p != "fp32"]
        if not others:
            fp32_rounds, _ = measure_rounds(fp32, self.target, BASELINE_ROUNDS)
        for prec in others:
            ms, rs = measure_rounds(copies[prec], self.target, BASELINE_ROUNDS, reference=fp32)
            fp32_rounds += rs
            ratio_rounds[prec] = _pair_ratios(ms, rs)
            ref = capped([r.latency.median_ms for r in rs], reference_floor(fp32, self.target))
            ratios[prec] = pair_ratio([m.latency.median_ms for m in ms], ref)
        quiet = min(fp32_rounds, key=lambda m: m.latency.median_ms)
        print(f"  {model} seed {seed} baseline: fastest of {len(fp32_rounds)} profiles {quiet.latency.median_ms:.3f} ms "
              f"(first {fig.measurement.latency.median_ms:.3f}); "
              + ", ".join(f"{p} {r:.2f}x" for p, r in ratios.items() if p != "fp32"), flush=True)
        b = Baseline(
            model,
            fig.accuracy,
            quiet.latency.median_ms,
            quiet.latency.p90_ms,
            fig.measurement.peak_memory_bytes,
            fig.file_bytes,
            macs,
            params,
            ratios,
            ratio_rounds,
            seed,
        )
        atomic_write_text(self._baseline_file(model, seed), json.dumps(asdict(b), indent=2))
        return b

    # ------------------------------------------------------------------ methods
    def _from_manifest(
        self, model: str, budget: str, method: str, budget_ms: float, art: Path, **kw: Any
    ) -> Row:
        from hwcompress.artifact import read_manifest

        m = read_manifest(art)
        r = m.result
        assert r.measurement is not None
        return Row(
            model=model,
            budget=budget,
            method=method,
            budget_ms=budget_ms,
            accuracy=r.accuracy,
            latency_ms=r.measurement.latency.median_ms,
            p90_ms=r.measurement.latency.p90_ms,
            peak_memory_bytes=r.measurement.peak_memory_bytes,
            file_bytes=r.file_bytes,
            macs=r.macs,
            params=r.params,
            precisions=dict(r.precisions),
            keep={la.name: la.keep for la in m.layers},
            layer_precisions={la.name: la.effective or la.precision for la in m.layers},
            artifact=str(art),
            **kw,
        )

    def search(self, model: str, budget: str, method: str, budget_ms: float, seed: int = 0) -> Row:
        from hwcompress.search.run import Search, SearchConfig

        a = self.args
        run_dir = self.folder(model, seed) / f"{budget}-{SLUG[method]}"
        shutil.rmtree(run_dir, ignore_errors=True)
        latency, size = (budget, None) if method != HEADLINE else (a.headline_latency, a.headline_size)
        proxy = method == PROXY
        cfg = SearchConfig(
            model=model,
            target=a.target,
            latency_budget=latency,
            size_budget=size,
            prune_episodes=a.episodes,
            quant_episodes=a.quant_episodes,
            warmup_episodes=a.warmup,
            prune_cost="flops" if proxy else "measured",
            quant_cost="bitops" if proxy else "measured",
            finetune_epochs=a.headline_finetune_epochs if method == HEADLINE else a.finetune_epochs,
            val_limit=a.val_images,
            test_limit=a.test_images,
            seed=seed,
            out=str(run_dir / "artifact"),
            force=True,
        )
        search = Search(cfg, run_dir, cache_path=None)
        search.allow_over_budget = True  # every row is written; this benchmark judges budgets side by side itself
        res = search.run()
        s1 = json.loads((run_dir / "stage1.json").read_text())
        extra = {
            "judge_rule": JUDGE_RULE,
            "headline": (
                f"latency {latency}, size {size}, {a.headline_finetune_epochs} fine-tune epoch(s)"
                if method == HEADLINE
                else ""
            ),
            "finetune_epochs": cfg.finetune_epochs,
            "stage1_precision": s1.get("precision"),
            "stage1_best_ms": _median(s1.get("best")),
            "stage1_judged": [j["verdict"]["ratio"] for j in s1.get("judged", [])],
            "latency_model_within": list(res.latency_model_within),
            "budget_ms_resolved": res.budget_ms,
            "size_budget": size,
        }
        search_s = res.seconds.get("prune_search", 0.0) + res.seconds.get("quant_search", 0.0)
        return self._from_manifest(
            model,
            budget,
            method,
            res.budget_ms,
            run_dir / "artifact",
            search_s=search_s,
            finetune_s=res.seconds.get("finetune", 0.0),
            candidates=res.candidates,
            extra=extra,
            seed=seed,
            finetune_epochs=cfg.finetune_epochs,
        )

    def fit(self, model: str, method: str, budget_ms: float, workdir: Path, seed: int) -> Any:
        """The fitted method's :class:`hwcompress.baselines.Fitted` model at ``budget_ms`` (before fine-tuning)."""
        from hwcompress import baselines
        from hwcompress.judge import Reader, judge

        net, splits, shape = self.trained(model, seed).model, self.splits(seed), self.shape(seed)
        base = self.baseline(model, seed)
        base_file = self.folder(model, seed) / "baseline.onnx"

        def confirmed(path: Path) -> float:
            """Every point is held to the rule the search keeps its winner by: the judge's verdict beside the fp32
            baseline at the budget's fraction, as ms on the budget's scale (its interval's high end: within
            ``budget_ms`` exactly when the judge confirms the point within)."""
            v = judge(path, self.target, budget_ms / base.latency_ms, reference=base_file)
            print(f"[{time.strftime('%H:%M:%S')}]   {method} {path.name}: {v.describe()}", flush=True)
            return v.ci_high * base.latency_ms

        read = confirmed
        if method == NETADAPT:  # hundreds of proposals, one pair each beside the baseline; its end point confirmed
            reader = Reader(self.target, base_file, base.latency_ms, pairs=1)

            def read(path: Path) -> float:
                return reader.read(path).latency.median_ms

        if method in (UNIFORM, GLOBAL, UNIFORM_INT8):
            return baselines.fit_to_latency(NAME[method], net, shape, self.target, budget_ms, workdir,
                                            cache=self.cache, calib_x=splits.calib.x, read=read)
        from hwcompress.search.run import SearchConfig

        lower_bound = SearchConfig.lower_bound  # the search's default action space
        if method == KNAPSACK:
            from hwcompress.knapsack import channel_importance
            from hwcompress.search.region import build_table_region

            region = build_table_region(net, shape, self.target, base_onnx=self.folder(model, seed) / "baseline.onnx",
                                        baseline_ms={"fp32": base.latency_ms}, limit=math.inf, lower_bound=lower_bound,
                                        workdir=workdir, cache=self.cache)
            importance = channel_importance(net, region.groups, splits.train.x, splits.train.y)
            return baselines.fit_knapsack(net, shape, self.target, budget_ms, workdir, region=region,
                                          importance=importance, cache=self.cache, read=read)
        kd_images = self.args.netadapt_kd_images

        def distil(student: Any) -> None:  # a few distillation steps on the first training images
            from hwcompress.finetune import finetune

            finetune(student, net, splits, epochs=1, seed=seed, train_limit=kd_images, eval_limit=1, test=False,
                     progress=False, threads=1)

        return baselines.netadapt(net, shape, self.target, budget_ms, workdir, splits=splits, cache=self.cache,
                                  lower_bound=lower_bound, max_measurements=self.args.netadapt_measurements,
                                  val_limit=self.args.val_images, recover=distil if kd_images > 0 else None,
                                  read=read, confirm=confirmed)

    def fitted(self, model: str, budget: str, method: str, budget_ms: float, seed: int = 0) -> Row:
        """A method of :mod:`hwcompress.baselines` fitted to ``budget_ms``, fine-tuned with distillation like every
        trained method, then written (uniform + int8: quantized to all-int8) and measured."""
        from hwcompress.baselines import KNOB
        from hwcompress.finetune import finetune
        from hwcompress.quantize import uniform_policy
        from hwcompress.records import CompressionPolicy

        d = self.folder(model, seed) / f"{budget}-{SLUG[method]}"
        shutil.rmtree(d, ignore_errors=True)
        t0 = time.monotonic()
        fit = self.fit(model, method, budget_ms, d / "points", seed)
        search_s = time.monotonic() - t0
        t0 = time.monotonic()
        if self.args.finetune_epochs:
            finetune(fit.model, self.trained(model, seed).model, self.splits(seed), epochs=self.args.finetune_epochs,
                     seed=seed, test=False, progress=False, checkpoint=None)
        ft_s = time.monotonic() - t0
        fit.model.eval()
        knob = KNOB[NAME[method]]
        policy = uniform_policy("int8") if method == UNIFORM_INT8 else CompressionPolicy()
        self._export(fit.model, policy, d / "artifact", f"{model} {method} {knob} {fit.knob:.3f}", seed)
        info = {k: v for k, v in fit.info.items() if k != "history"}
        if "history" in fit.info:
            info["iterations"] = len(fit.info["history"])
        return self._from_manifest(
            model,
            budget,
            method,
            budget_ms,
            d / "artifact",
            search_s=search_s,
            finetune_s=ft_s,
            candidates=fit.measured,
            note=f"{knob} {fit.knob:.3f}" + ("" if fit.met else " (the fit missed the budget)"),
            extra={"knob": fit.knob, "fit_ms": fit.latency_ms, "fit_met": fit.met, "fit_read": FIT_READ, **info},
            seed=seed,
            finetune_epochs=self.args.finetune_epochs,
        )

    def _export(self, model: Any, policy: Any, out: Path, label: str, seed: int = 0) -> None:
        from hwcompress.artifact import export_artifact

        splits = self.splits(seed)
        export_artifact(model, policy, self.target, out, calib=splits.calib, test=splits.test, force=True,
                        source_model=label, cache=self.cache, test_limit=self.args.test_images, plots=False,
                        seed=seed)

    def int8(self, model: str, seed: int = 0) -> Row:
        from hwcompress.quantize import uniform_policy

        d = self.folder(model, seed) / "int8"
        self._export(self.trained(model, seed).model, uniform_policy("int8"), d, f"{model} ORT static int8", seed)
        return self._from_manifest(model, "any", INT8, 0.0, d, seed=seed)


def _fraction(budget: str) -> float | None:
    """The ratio of a row's budget ("0.5x"), or None for a budget-free row ("any")."""
    from hwcompress.errors import UsageError
    from hwcompress.search.budget import parse_budget

    try:
        return parse_budget(budget, "budget").ratio
    except UsageError:
        return None


def _pair_ratios(ms: list[Any], rs: list[Any]) -> list[float]:
    """model / reference median of each ABBA pair of :func:`hwcompress.judge.measure_rounds`."""
    return [m.latency.median_ms / r.latency.median_ms for m, r in zip(ms, rs, strict=True)]


def _ratio(hit: dict[str, Any]) -> float:
    """A saved precision judgement's ratio by the judge's statistic (:func:`hwcompress.judge.pair_ratio`); the
    model's rounds are rebuilt from the pair ratios where an older file kept only those."""
    from hwcompress.judge import pair_ratio

    ref = list(hit["reference_ms"])
    model = hit.get("model_ms") or [q * r for q, r in zip(hit["ratios"], ref, strict=True)]
    return pair_ratio(model, ref)


def judge_row(
    row: Row,
    model: Path,
    reference: Path,
    target: Any,
    fractions: dict[str, float],
    *,
    max_pairs: int,
    min_pairs: int | None = None,
    runner: Any = None,
) -> list[float]:
    """Judge ``row``'s ``model`` on ``target`` by :mod:`hwcompress.judge`; returns ``reference``'s round medians (ms).

    A row with a budget: ``judge(model, target, limit=<fraction>, reference=reference)`` (an absolute
    budget, ``3ms``: ``limit`` in ms and no reference); the :class:`~hwcompress.judge.Verdict` goes to
    ``row.verdict``.  A budget-free row (all-int8) is judged against every budget of ``fractions``
    ({"0.5x": 0.5}) on the same pairs, added while any verdict is undecided (``extra['verdicts']``).
    Latencies are set by :func:`place_row` once the baseline's latency is known.
    """
    from hwcompress.errors import UsageError
    from hwcompress.judge import MIN_PAIRS, capped, decide, judge, measure_rounds, pair_ratio, reference_floor
    from hwcompress.search.budget import parse_budget

    lo = min(MIN_PAIRS if min_pairs is None else min_pairs, max_pairs)
    row.extra.setdefault("first_ms", row.latency_ms)
    row.extra.setdefault("first_p90_ms", row.p90_ms)
    try:
        spec = parse_budget(row.budget, "budget") if row.budget_ms > 0 else None
    except UsageError:
        spec = None
    if spec is not None:
        relative = spec.ratio is not None
        limit = spec.ratio if spec.ratio is not None else float(spec.absolute or 0.0)
        v = judge(model, target, limit, reference=reference if relative else None, min_pairs=lo,
                  max_pairs=max_pairs, runner=runner)
        row.verdict = v.to_dict()
        return list(v.reference_ms)
    ms, rs = measure_rounds(model, target, lo, reference=reference, runner=runner)
    while True:
        m_ms, r_ms = [m.latency.median_ms for m in ms], [r.latency.median_ms for r in rs]
        floor = reference_floor(reference, target, runner)
        verdicts = {b: decide(m_ms, r_ms, f, floor_ms=floor) for b, f in sorted(fractions.items())}
        if all(v.decided for v in verdicts.values()) or len(ms) >= max_pairs:
            break
        m2, r2 = measure_rounds(model, target, 1, reference=reference, runner=runner, start=len(ms))
        ms, rs = ms + m2, rs + r2
    row.extra["verdicts"] = {b: v.to_dict() for b, v in verdicts.items()}
    row.extra["ratio"] = pair_ratio(m_ms, capped(r_ms, floor))  # the verdicts' ratio
    row.extra["rounds_ms"], row.extra["reference_rounds_ms"] = m_ms, r_ms
    return r_ms


def place_row(row: Row, base_ms: float) -> None:
    """A judged row's figures: latency = judged ratio x the baseline's ``base_ms`` (the judged ms for an
    absolute budget); its budget in ms at the same baseline; p90 at the row's own p90/median spread."""
    v = row.verdict
    if v is not None and not v["reference_ms"]:  # an absolute budget: the verdict is in ms
        row.latency_ms, row.budget_ms = float(v["ratio"]), float(v["limit"])
    elif v is not None:
        row.latency_ms = float(v["ratio"]) * base_ms
        row.extra.setdefault("budget_ms_at_start", row.budget_ms)
        row.budget_ms = float(v["limit"]) * base_ms
    elif "ratio" in row.extra:
        row.latency_ms = float(row.extra["ratio"]) * base_ms
    else:
        return
    first, first_p90 = row.extra.get("first_ms"), row.extra.get("first_p90_ms")
    if first and first_p90:
        row.p90_ms = row.latency_ms * float(first_p90) / float(first)


def _median(cand: dict[str, Any] | None) -> float | None:
    if not cand or not cand.get("measurement"):
        return None
    return float(cand["measurement"]["latency"]["median_ms"])


# --------------------------------------------------------------------------- findings
def _best_other(rows: list[Row], meas: Row) -> Row | None:
    """The most accurate other method within hwcompress's budget on measured latency (judged: :meth:`Row.meets`)."""
    within = [
        r
        for r in rows
        if r.budget in (meas.budget, "any") and r.method not in (MEASURED, HEADLINE)
        and r.meets(meas.budget, meas.budget_ms)
    ]
    return max(within, key=lambda r: r.accuracy, default=None)


def _gap(meas: Row, other: Row) -> tuple[float, float | None]:
    """hwcompress's accuracy minus ``other``'s (pt): over seeds, the mean of the per-seed differences on the
    seeds both have (their sample std; None for one seed); a budget-free row counts for every seed."""
    a = dict(zip(meas.extra.get("seeds", [meas.seed]), meas.extra.get("accuracy", [meas.accuracy]), strict=True))
    b = dict(zip(other.extra.get("seeds", [other.seed]), other.extra.get("accuracy", [other.accuracy]), strict=True))
    diffs = [(a[s] - b[s]) * 100 for s in a if s in b]
    if not diffs:
        return (meas.accuracy - other.accuracy) * 100, None
    return statistics.fmean(diffs), (statistics.stdev(diffs) if len(diffs) > 1 else None)


def _pm(mean: float, std: float | None, digits: int = 2) -> str:
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def goals_table(results: dict[str, tuple[Baseline, list[Row]]]) -> str:
    """One line per model and budget: hwcompress against the best other method within the same budget (over
    seeds: means, within = judged within at every seed; the gap is the mean ± std of the per-seed gaps)."""
    head = (
        "| model | budget | hwcompress acc % | lat / budget | met | best other within budget | acc % | gap pt | "
        "+0.5 pt goal | proxy on measured latency |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for model, (_base, rows) in results.items():
        for meas in sorted((r for r in rows if r.method == MEASURED), key=lambda r: r.budget):
            best = _best_other(rows, meas)
            prox = next((r for r in rows if r.method == PROXY and r.budget == meas.budget), None)
            gap, sd = _gap(meas, best) if best is not None else (None, None)
            goal = "—" if gap is None else ("met" if gap >= 0.5 and meas.met else "not met")
            proxy = (
                "—"
                if prox is None
                else f"{prox.latency_ms / prox.budget_ms:.2f}x budget, " + ("met" if prox.met else "**MISSES**")
            )
            lines.append(
                f"| {model} | {meas.budget} | {_acc(meas)} | {meas.latency_ms / meas.budget_ms:.2f} | "
                f"{_met(meas)} | {best.method if best else 'none'} | {_acc(best) if best else '—'} | "
                f"{'—' if gap is None else ('+' if gap >= 0 else '') + _pm(gap, sd)} | {goal} | {proxy} |"
            )
    return "\n".join(lines)


def findings(model: str, base: Baseline, rows: list[Row]) -> list[str]:
    """Plain statements on where a proxy went wrong, and the goals met or missed."""
    out: list[str] = []
    ratio = base.precision_ratio
    order = sorted(ratio, key=lambda p: ratio[p])
    def spread(p: str) -> str:
        v = base.ratio_rounds.get(p)
        return f", {min(v):.2f}-{max(v):.2f}x over {len(v)} pairs" if v else ""

    shown = ", ".join(f"{p} {ratio[p]:.2f}x ({'reference' if p == 'fp32' else f'bit-ops {BITOPS_RATIO.get(p, 1):.3f}x'}"
                      f"{spread(p)})" for p in order)
    out.append(
        f"Measured latency of the unpruned {model} per precision on the target, vs what bit-ops assume: {shown}."
    )
    slower = [p for p in ratio if p != "fp32" and ratio[p] >= 1.0]
    if slower:
        out.append(
            f"On this target {', '.join(slower)} is *slower* than fp32 although bit-ops count it "
            f"{', '.join(f'{1 / BITOPS_RATIO[p]:.0f}x' for p in slower)} cheaper."
        )
    by = {(r.budget, r.method): r for r in rows}
    for budget in sorted({r.budget for r in rows if r.method != INT8}):
        meas, prox = by.get((budget, MEASURED)), by.get((budget, PROXY))
        if prox is not None and not prox.met:
            out.append(
                f"{budget}: the proxy search MISSES the budget on measured latency: {prox.latency_ms:.3f} ms "
                f"vs {prox.budget_ms:.3f} ms (+{(prox.latency_ms / prox.budget_ms - 1) * 100:.0f}%)."
            )
        if prox is not None and meas is not None:
            worse = [
                (n, p, meas.layer_precisions.get(n, "fp32"))
                for n, p in prox.layer_precisions.items()
                if ratio.get(p, 1.0) > ratio.get(meas.layer_precisions.get(n, "fp32"), 1.0) * 1.05
            ]
            if worse:
                picks = sorted({f"{p} where measurement chose {m}" for _, p, m in worse})
                out.append(
                    f"{budget}: the proxy picked a slower precision than measurement for {len(worse)} layer(s): "
                    f"{'; '.join(picks)}."
                )
            elif any(p in slower for p in prox.layer_precisions.values()):
                out.append(
                    f"{budget}: the proxy put layers in {', '.join(sorted(set(prox.layer_precisions.values()) & set(slower)))}, "
                    "which measures slower than fp32 here."
                )
        if meas is not None:
            best = _best_other(rows, meas)
            status = "met" if meas.met else "MISSED"
            line = (
                f"{budget}: hwcompress {meas.accuracy * 100:.2f}% at {meas.latency_ms:.3f} ms — budget "
                f"{meas.budget_ms:.3f} ms {status} on measured latency"
            )
            if best is not None:
                gap, _sd = _gap(meas, best)
                goal = "goal met" if gap >= 0.5 and meas.met else "goal NOT met"
                line += f"; best other method within budget: {best.method} {best.accuracy * 100:.2f}% ({gap:+.2f} pt; {goal}: >= +0.5 pt)"
                if gap < 0.5 and (base.accuracy - best.accuracy) * 100 < 0.5:
                    line += (
                        f" — {best.method} is itself within 0.5 pt of the unpruned baseline "
                        f"({base.accuracy * 100:.2f}%), so +0.5 pt over it would mean beating the baseline"
                    )
            else:
                line += "; no other method met this budget"
            out.append(line + ".")
    head = by.get((next((r.budget for r in rows if r.method == HEADLINE), ""), HEADLINE))
    if head is not None:
        comp = base.file_bytes / head.file_bytes
        speed = base.latency_ms / head.latency_ms
        loss = (base.accuracy - head.accuracy) * 100
        ok = comp >= 20 and speed >= 5 and loss <= 0.5
        out.append(
            f"Headline ({head.extra.get('headline', '')}): file {comp:.1f}x smaller (goal 20x), "
            f"{speed:.2f}x faster measured (goal 5x), accuracy {base.accuracy * 100:.2f}% -> "
            f"{head.accuracy * 100:.2f}% ({loss:+.2f} pt loss; goal <= 0.5) — {'all met' if ok else 'NOT all met'}."
        )
    return out


# --------------------------------------------------------------------------- output
def _acc(r: Row) -> str:
    """Accuracy in %: over seeds, mean ± sample std."""
    return _pm(r.accuracy * 100, r.extra["accuracy_std"] * 100 if r.extra.get("accuracy_std") is not None else None)


def _met(r: Row) -> str:
    """The judge's verdict: yes / **NO** (one seed), or how many seeds met (several)."""
    if r.met_seeds is not None and len(r.met_seeds) > 1:
        n = sum(r.met_seeds)
        return f"{n}/{len(r.met_seeds)}" if n == len(r.met_seeds) else f"**{n}/{len(r.met_seeds)}**"
    met = "yes" if r.met else "**NO**"
    if r.verdict is not None and not r.verdict["decided"]:
        met += " (undecided)"
    return met


def _acc_base(base: Baseline) -> str:
    std = base.extra.get("accuracy_std")
    return _pm(base.accuracy * 100, std * 100 if std is not None else None)


def _precisions(r: Row) -> str:
    """A row's layers per precision; a row over seeds whose seeds differ: each seed's, in seed order, " / "."""
    per_seed = r.extra.get("precisions") or [r.precisions]
    shown = [" ".join(f"{k}:{v}" for k, v in sorted(p.items())) for p in per_seed]
    return shown[0] if len(set(shown)) == 1 else " / ".join(shown)


def table(base: Baseline, rows: list[Row]) -> str:
    """One model's rows.  Where rows were judged side by side (``--rounds``), "lat ms" is the judged ratio
    (fastest profile over the baseline's fastest) x the baseline's latency, and "met" the judge's verdict
    ("(undecided)": its interval still held the budget after ``--rounds`` pairs; the ratio decided).
    Rows combined over seeds (:func:`combine`): "acc %" is the mean ± sample std, "Δ pt" the mean of each
    seed's difference to its own baseline, latencies and sizes are means, "met" counts the seeds judged within,
    "precisions" is each seed's where they differ."""
    head = (
        "| budget | method | seeds | acc % | Δ pt | lat ms (median) | p90 ms | speed-up | budget ms | met | peak MiB | "
        "file KiB | compression | MMACs | precisions | search s | fine-tune s |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    budgets = sorted({(r.budget, r.budget_ms) for r in rows if r.budget_ms > 0 and r.method != HEADLINE})
    seeds = base.extra.get("seeds", [base.seed])
    lines.append(
        f"| — | fp32 baseline | {len(seeds)} | {_acc_base(base)} | — | {base.latency_ms:.3f} | {base.p90_ms:.3f} | 1.00x | "
        f"— | — | {base.peak_memory_bytes / 2**20:.1f} | {base.file_bytes / 1024:.0f} | 1.0x | {base.macs / 1e6:.1f} | "
        "fp32 | — | — |"
    )
    for r in rows:
        if r.budget_ms > 0:
            met = _met(r)
        else:  # a budget-free row (all-int8): which budgets it meets
            met = ", ".join(b for b, ms in budgets if r.meets(b, ms)) or "none"
        prec = _precisions(r)
        delta = r.extra.get("delta_pt", (r.accuracy - base.accuracy) * 100)
        lines.append(
            f"| {r.budget} | {r.method} | {len(r.extra.get('seeds', [r.seed]))} | {_acc(r)} | {delta:+.2f} | "
            f"{r.latency_ms:.3f} | {r.p90_ms:.3f} | {base.latency_ms / r.latency_ms:.2f}x | "
            f"{r.budget_ms:.3f} | {met} | {r.peak_memory_bytes / 2**20:.1f} | {r.file_bytes / 1024:.0f} | "
            f"{base.file_bytes / r.file_bytes:.1f}x | {r.macs / 1e6:.1f} | {prec} | {r.search_s:.0f} | {r.finetune_s:.0f} |"
        )
    return "\n".join(lines)


def pareto_png(model: str, base: Baseline, rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    markers = {MEASURED: "o", PROXY: "s", UNIFORM: "^", GLOBAL: "v", KNAPSACK: "P", NETADAPT: "h", UNIFORM_INT8: "<",
               INT8: "D", HEADLINE: "*"}
    colours = {
        MEASURED: "#d62728",
        PROXY: "#1f77b4",
        UNIFORM: "#2ca02c",
        GLOBAL: "#9467bd",
        KNAPSACK: "#17becf",
        NETADAPT: "#bcbd22",
        UNIFORM_INT8: "#7f7f7f",
        INT8: "#8c564b",
        HEADLINE: "#ff7f0e",
    }
    ax.scatter(
        [base.latency_ms], [base.accuracy * 100], c="black", marker="X", s=70, label="fp32 baseline", zorder=3
    )
    for method in (*METHODS, HEADLINE):
        pts = [r for r in rows if r.method == method]
        if not pts:
            continue
        ax.scatter(
            [r.latency_ms for r in pts],
            [r.accuracy * 100 for r in pts],
            marker=markers[method],
            c=colours[method],
            s=60,
            label=method,
            zorder=3,
            edgecolors="black",
            linewidths=0.4,
        )
        for r in pts:
            if r.budget != "any":
                ax.annotate(
                    r.budget,
                    (r.latency_ms, r.accuracy * 100),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    for b in sorted({r.budget_ms for r in rows if r.budget_ms > 0 and r.method != HEADLINE}):
        ax.axvline(b, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("measured latency, median (ms) — dotted: budgets")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{model}: accuracy vs measured latency")
    lo = min([r.accuracy for r in rows] + [base.accuracy]) * 100
    ax.set_ylim(max(lo - 1.0, 0), base.accuracy * 100 + 1.0)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def policy_png(row: Row, path: Path) -> None:
    from hwcompress.artifact import read_manifest
    from hwcompress.report import layers_plot

    atomic_write_bytes(path, layers_plot(read_manifest(row.artifact)))


# --------------------------------------------------------------------------- over seeds
def _std(values: list[float]) -> float | None:
    """Sample standard deviation; None for fewer than two values."""
    return statistics.stdev(values) if len(values) > 1 else None


def combine(rows: list[Row], bases: dict[int, Baseline]) -> Row:
    """One model, budget and method over its seeds as one row (for the report): figures are means over the
    seeds; ``extra`` gets ``seeds``, ``accuracy`` (per seed), ``accuracy_std`` (sample std, None for one
    seed), ``precisions`` (each seed's layer count per precision) and ``delta_pt`` (the mean of each seed's
    accuracy minus its own baseline's, pt); ``met_seeds``
    holds each seed's verdict; a budget-free row is within a budget where every seed's verdict was."""
    rows = sorted(rows, key=lambda r: r.seed)
    first = rows[0]

    def mean(values: list[float]) -> float:
        return statistics.fmean(values)

    extra = dict(first.extra)
    extra.update(seeds=[r.seed for r in rows], accuracy=[r.accuracy for r in rows],
                 accuracy_std=_std([r.accuracy for r in rows]), precisions=[dict(r.precisions) for r in rows])
    deltas = [(r.accuracy - bases[r.seed].accuracy) * 100 for r in rows if r.seed in bases]
    if deltas:
        extra["delta_pt"] = mean(deltas)
    judged = sorted(set().union(*(r.extra.get("verdicts", {}) for r in rows)))
    if judged:
        extra["verdicts"] = {b: {"within": all(r.extra.get("verdicts", {}).get(b, {}).get("within", False)
                                               for r in rows)} for b in judged}
    return replace(
        first,
        accuracy=mean([r.accuracy for r in rows]),
        latency_ms=mean([r.latency_ms for r in rows]),
        p90_ms=mean([r.p90_ms for r in rows]),
        budget_ms=mean([r.budget_ms for r in rows]),
        peak_memory_bytes=round(mean([r.peak_memory_bytes for r in rows])),
        file_bytes=round(mean([r.file_bytes for r in rows])),
        macs=round(mean([r.macs for r in rows])),
        params=round(mean([r.params for r in rows])),
        search_s=mean([r.search_s for r in rows]),
        finetune_s=mean([r.finetune_s for r in rows]),
        candidates=round(mean([r.candidates for r in rows])),
        extra=extra,
        verdict=None,
        met_seeds=[r.met for r in rows] if first.budget_ms > 0 else None,
    )


def combine_baselines(bases: list[Baseline]) -> Baseline:
    """One model's baselines over seeds: means (precision ratios too; their pairs pooled)."""
    bases = sorted(bases, key=lambda b: b.seed)
    precs = sorted(set().union(*(b.precision_ratio for b in bases)))
    return replace(
        bases[0],
        accuracy=statistics.fmean(b.accuracy for b in bases),
        latency_ms=statistics.fmean(b.latency_ms for b in bases),
        p90_ms=statistics.fmean(b.p90_ms for b in bases),
        precision_ratio={p: statistics.fmean(b.precision_ratio[p] for b in bases if p in b.precision_ratio)
                         for p in precs},
        ratio_rounds={p: [x for b in bases for x in b.ratio_rounds.get(p, [])] for p in precs
                      if any(p in b.ratio_rounds for b in bases)},
        extra={"seeds": [b.seed for b in bases], "accuracy": [b.accuracy for b in bases],
               "accuracy_std": _std([b.accuracy for b in bases])},
    )


def aggregate(results: dict[tuple[str, int], tuple[Baseline, list[Row]]]) -> dict[str, tuple[Baseline, list[Row]]]:
    """Per model: its baselines and rows combined over seeds (:func:`combine`), in the order first made."""
    out: dict[str, tuple[Baseline, list[Row]]] = {}
    for model in dict.fromkeys(m for m, _ in results):
        seeds = [s for m, s in results if m == model]
        bases = {s: results[model, s][0] for s in seeds}
        groups: dict[tuple[str, str], list[Row]] = {}
        for s in seeds:
            for r in results[model, s][1]:
                groups.setdefault((r.budget, r.method), []).append(r)
        out[model] = (combine_baselines(list(bases.values())), [combine(rs, bases) for rs in groups.values()])
    return out


def expected_rows(args: argparse.Namespace) -> list[tuple[str, str, str, int]]:
    """(model, budget, method, seed) of every row the command asks for, in the order they are made."""
    wanted = [m for m in (*METHODS, HEADLINE) if SLUG[m] in args.method_slugs]
    out = []
    for seed in args.seed_list:
        for model in args.models.split(","):
            for frac in args.budgets.split(","):
                out += [(model, f"{float(frac):g}x", m, seed) for m in METHODS if m in wanted and m != INT8]
            if INT8 in wanted:
                out.append((model, "any", INT8, seed))
            if HEADLINE in wanted and model == "vgg-small":
                out.append((model, args.headline_latency, HEADLINE, seed))
    return out


def missing_rows(args: argparse.Namespace, results: dict[tuple[str, int], tuple[Baseline, list[Row]]]) -> list[str]:
    have = {(r.model, r.budget, r.method, r.seed) for _, rows in results.values() for r in rows}
    return [f"{m} {b} {NAME[k]} seed {s}" for m, b, k, s in expected_rows(args) if (m, b, k, s) not in have]


def _over(r: Row, budget: str, base: Baseline) -> tuple[float, bool]:
    """(judged latency / budget - 1, the judge's verdict) of one seed's row at ``budget``."""
    if r.budget_ms > 0:
        v = r.verdict
        over = float(v["ratio"]) / float(v["limit"]) - 1 if v is not None else r.latency_ms / r.budget_ms - 1
        return over, r.met
    frac = _fraction(budget) or 1.0
    judged = r.extra.get("verdicts", {}).get(budget)
    if judged is not None:
        return float(judged["ratio"]) / float(judged["limit"]) - 1, bool(judged["within"])
    over = r.latency_ms / (frac * base.latency_ms) - 1
    return over, over <= 0


def summary(args: argparse.Namespace, results: dict[tuple[str, int], tuple[Baseline, list[Row]]]) -> list[dict[str, Any]]:
    """summary.json: one entry per (model, budget, method) with the rows made, seeds in order: ``accuracy`` per
    seed, its mean and sample std (null for one seed), ``latency_over_budget`` (the judged latency / the budget
    - 1), ``met`` (the judge's verdict) and ``code`` (the git revision that made the row) per seed.  The budget-free ORT all-int8 row is listed at every budget
    of the grid (judged against each)."""
    grid = [f"{float(f):g}x" for f in args.budgets.split(",")]
    cells: dict[tuple[str, str, str], list[tuple[Row, Baseline]]] = {}
    for (model, _seed), (base, rows) in results.items():
        for r in rows:
            for budget in (grid if r.method == INT8 else [r.budget]):
                cells.setdefault((model, budget, r.method), []).append((r, base))
    out = []
    for (model, budget, method), got in cells.items():
        got.sort(key=lambda rb: rb[0].seed)
        acc = [r.accuracy for r, _ in got]
        judged = [_over(r, budget, base) for r, base in got]
        out.append({"model": model, "budget": budget, "method": NAME[method], "seeds": [r.seed for r, _ in got],
                    "accuracy": acc, "accuracy_mean": statistics.fmean(acc), "accuracy_std": _std(acc),
                    "latency_over_budget": [o for o, _ in judged], "met": [m for _, m in judged],
                    "code": [r.code for r, _ in got]})
    return out


def write_outputs(
    work: Path,
    target: str,
    args: argparse.Namespace,
    results: dict[tuple[str, int], tuple[Baseline, list[Row]]],
    wall_s: float,
    reasons: list[str] | None = None,
) -> Path:
    """results.md (over seeds), summary.json, rows.json and the plots under ``work``; returns results.md's path.
    ``results``: (model, seed) -> that seed's baseline and rows; ``reasons``: saved rows refused, with why."""
    combined = aggregate(results)
    seeds = ", ".join(str(s) for s in args.seed_list)
    md = [
        "# hwcompress results: measured-latency search vs proxies and peers' methods\n",
        f"Target `{target}`, Fashion-MNIST test set{f' (first {args.test_images} images)' if args.test_images else ''}; "
        f"seeds {seeds} (a seed sets the data split and so the trained baseline, the agent and the fine-tune); "
        f"searches: {args.episodes} pruning + {args.quant_episodes} precision episodes ({args.warmup} warm-up); "
        f"every trained method: {args.finetune_epochs} epoch(s) of distillation fine-tuning. Figures over seeds are "
        "means; accuracies mean ± sample std; 'met' counts the seeds the judge found within. Budgets are fractions "
        "of each seed's baseline latency. Latency = median of the target's profiler (ONNX Runtime, 1 thread)"
        + (f". At the end every row is judged by `hwcompress.judge` (the rule of the search and `hwcompress check`): "
           f"fresh profiles of its artifact in ABBA pairs with its seed's fp32 baseline, its fastest profile over the "
           f"baseline's fastest with a 95 % bootstrap interval against the budget's fraction, pairs added (at most "
           f"{args.rounds}, more in a slow spell) until the interval lies on one side of it; 'met' is that verdict, and "
           "a row's 'lat ms' is its judged ratio x the baseline's latency (the fastest of the baseline's profiles in "
           "those pairs: its quiet time; p90 at the row's own p90/median spread). Per-precision ratios of the "
           "baseline are taken the same way (this shared machine's slow spells add time to every inference, which "
           "moves a small model's per-pair ratios by 30 %; the fastest profiles do not move: "
           "tools/results/verdicts.md)"
           if args.rounds > 0
           else "; budgets are fractions of the baseline as measured at the start, each row's first measurement")
        + f"; 'compression' = fp32 ONNX bytes / artifact bytes. Wall time of this invocation: {wall_s / 60:.0f} min "
        f"(rows saved by an earlier invocation are not redone; their search and fine-tune seconds are in the table). "
        "Per-seed figures: `summary.json` and `rows.json`.\n",
        f"Reproduce: `.venv/bin/python tools/bench_compare.py {' '.join(sys.argv[1:])}`\n",
    ]
    codes = Counter(r.code or "not recorded" for _, rows in results.values() for r in rows)
    if codes:
        md.append("Code revision of the rows (rows made by an earlier invocation keep theirs): "
                  + ", ".join(f"`{c}` {n}" for c, n in sorted(codes.items())) + ".\n")
    missing = missing_rows(args, results)
    if missing:
        md.append(f"**Missing rows** ({len(missing)} of the {len(expected_rows(args))} asked for have no result yet): "
                  f"{'; '.join(missing)}.\n")
    if reasons:
        md.append(f"Saved rows not used ({len(reasons)}): {'; '.join(reasons)}.\n")
    if any(r.method == MEASURED for _, rows in combined.values() for r in rows):
        md += ["## Goals at a glance\n", goals_table(combined) + "\n"]
    for model, (base, rows) in combined.items():
        md.append(f"## {model}\n")
        md.append(table(base, rows) + "\n")
        md.append("\n".join(f"- {f}" for f in findings(model, base, rows)) + "\n")
        pareto_png(model, base, rows, work / f"pareto-{model}.png")
        md.append(f"![Pareto {model}](pareto-{model}.png)\n")
        winners = [
            r for r in rows if r.method in (MEASURED, HEADLINE) and r.artifact and Path(r.artifact).exists()
        ]
        if winners:
            win = max(winners, key=lambda r: (r.met, r.method == MEASURED, r.accuracy))
            policy_png(win, work / f"policy-{model}.png")
            md.append(
                f"Per-layer policy of hwcompress at {win.budget} ({win.method}, seed {win.seed}):\n\n"
                f"![policy {model}](policy-{model}.png)\n"
            )
    all_rows = [asdict(r) | {"met": r.met} for _, rows in results.values() for r in rows]
    atomic_write_text(work / "rows.json", json.dumps(all_rows, indent=2))
    atomic_write_text(work / "summary.json", json.dumps(summary(args, results), indent=2))
    out = work / "results.md"
    atomic_write_text(out, "\n".join(md))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vgg-small,resnet-20,mobilenetv2-small")
    ap.add_argument("--budgets", default="0.3,0.5,0.7", help="fractions of the measured fp32 baseline")
    slugs = [SLUG[k] for k in (*METHODS, HEADLINE)]
    ap.add_argument("--methods", default=",".join(slugs),
                    help=f"subset of: {','.join(slugs)} (or their summary.json names)")
    ap.add_argument("--seeds", default=None, help=f"comma-separated seeds (default {DEFAULT_SEEDS}; --quick: 0)")
    ap.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)  # tombstone: replaced by --seeds
    ap.add_argument("--target", default="x86-cpu")
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--quant-episodes", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--finetune-epochs", type=int, default=None,
                    help=f"distillation epochs of every trained method (default {DEFAULT_FINETUNE_EPOCHS}; --quick: 1)")
    ap.add_argument("--val-images", type=int, default=VAL_IMAGES, help="validation images per candidate (the search's default)")
    ap.add_argument("--test-images", type=int, default=None)
    from hwcompress.baselines import NETADAPT_MEASUREMENTS

    ap.add_argument("--netadapt-measurements", type=int, default=NETADAPT_MEASUREMENTS,
                    help="profiles a NetAdapt row may take (its proposals are measured on the target)")
    ap.add_argument("--netadapt-kd-images", type=int, default=0,
                    help="short-term recovery of each NetAdapt proposal: distillation on this many training images "
                    "after the BN re-estimation (0: BN re-estimation only)")
    ap.add_argument("--headline-latency", default="0.2x")
    ap.add_argument("--headline-size", default="0.05x")
    ap.add_argument(
        "--headline-finetune-epochs",
        type=int,
        default=3,
        help="the headline row is the seed paper's goal, not the side-by-side comparison: it may train longer",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=MAX_PAIRS,
        help="at the end, judge every row against the baseline (hwcompress.judge) in at most this many ABBA "
        "pairs (the judge's max pairs; it stops earlier once decided), and profile each precision copy of the "
        "baseline in this many pairs (0: keep first measurements)",
    )
    ap.add_argument("--rejudge", action="store_true", help="judge every row again, not reusing saved judgements")
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "bench-compare")
    ap.add_argument("--fresh", action="store_true", help="redo rows already saved under --work")
    ap.add_argument("--publish", type=Path, default=None,
                    help="also copy results.md, summary.json and the PNGs here")
    ap.add_argument(
        "--saved-only",
        action="store_true",
        help="make no new rows: report (and judge) the rows already saved under --work, and list the missing",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="resnet-20 at 0.5x, seed 0, 16+8 episodes (4 warm-up), 1 fine-tune epoch, 1000 val / 2000 test images",
    )
    args = ap.parse_args()
    if args.seed is not None:
        ap.error(f"--seed was replaced by --seeds (a comma-separated list): give --seeds {args.seed}")
    if args.quick:
        args.models, args.budgets, args.episodes, args.quant_episodes, args.warmup = (
            "resnet-20",
            "0.5",
            16,
            8,
            4,
        )
        args.val_images, args.test_images = 1000, 2000
        args.seeds = "0" if args.seeds is None else args.seeds
        args.finetune_epochs = 1 if args.finetune_epochs is None else args.finetune_epochs
        if args.work == ROOT / "out" / "bench-compare":
            args.work = ROOT / "out" / "bench-compare-quick"
    args.seeds = DEFAULT_SEEDS if args.seeds is None else args.seeds
    args.finetune_epochs = DEFAULT_FINETUNE_EPOCHS if args.finetune_epochs is None else args.finetune_epochs
    try:
        args.seed_list = parse_seeds(args.seeds)
    except ValueError:
        ap.error(f"--seeds {args.seeds!r}: give distinct seeds >= 0, e.g. 0,1,2")
    try:
        fracs = [float(f) for f in args.budgets.split(",")]
    except ValueError:
        ap.error(f"--budgets {args.budgets!r}: give fractions of the baseline, e.g. 0.3,0.5,0.7")
    if not all(0 < f <= 1 for f in fracs):
        ap.error(f"--budgets {args.budgets!r}: each fraction must be in (0, 1]")
    if args.fresh and args.saved_only:
        ap.error("--fresh redoes saved rows and --saved-only makes none: give one of them")
    if args.finetune_epochs < 0 or args.netadapt_measurements < 1 or args.netadapt_kd_images < 0:
        ap.error("--finetune-epochs and --netadapt-kd-images must be >= 0, --netadapt-measurements >= 1")
    from hwcompress.zoo import ZOO_NAMES

    unknown = [m for m in args.models.split(",") if m not in ZOO_NAMES]
    if unknown:
        ap.error(f"--models: unknown {', '.join(unknown)}; the comparison covers the built-in {', '.join(ZOO_NAMES)}")
    alias = {**{s: s for s in slugs}, **{NAME[k]: SLUG[k] for k in NAME}}
    asked = args.methods.split(",")
    unknown = [m for m in asked if m not in alias]
    if unknown:
        ap.error(f"--methods: unknown {', '.join(unknown)}; choose from {','.join(slugs)}")
    args.method_slugs = {alias[m] for m in asked}
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    wanted = {m for m in (*METHODS, HEADLINE) if SLUG[m] in args.method_slugs}
    bench = Bench(args)
    t0 = time.monotonic()
    results: dict[tuple[str, int], tuple[Baseline, list[Row]]] = {}

    def publish() -> Path:
        return write_outputs(args.work, args.target, args, results, time.monotonic() - t0, bench.missing)

    out = publish()
    for seed in args.seed_list:  # seed by seed: a grid stopped early has every cell at one seed first
        for model in args.models.split(","):
            base = bench.saved_baseline(model, seed) if args.saved_only else bench.baseline(model, seed)
            if base is None:
                bench.missing.append(f"{model} seed {seed} (no saved baseline)")
                continue
            rows: list[Row] = []
            for frac in args.budgets.split(","):
                budget = f"{float(frac):g}x"
                budget_ms = float(frac) * base.latency_ms
                for method in METHODS:
                    if method in wanted and method != INT8 and (r := bench.row(model, budget, method, budget_ms, seed)):
                        rows.append(r)
                        results[model, seed] = (base, rows)
                        out = publish()
            if INT8 in wanted and (r := bench.row(model, "any", INT8, 0.0, seed)):
                rows.append(r)
            if HEADLINE in wanted and model == "vgg-small" and (
                    r := bench.row(model, args.headline_latency, HEADLINE, 0.0, seed)):
                rows.append(r)
            if rows:
                results[model, seed] = (bench.remeasure(model, base, rows, seed), rows)
            out = publish()
    print(out.read_text())
    if args.publish:
        args.publish.mkdir(parents=True, exist_ok=True)
        for f in [args.work / "results.md", args.work / "summary.json", *args.work.glob("*.png")]:
            atomic_write_bytes(args.publish / f.name, f.read_bytes())
        print(f"published to {args.publish}")


if __name__ == "__main__":
    from hwcompress.errors import HwcompressError

    try:
        main()
    except HwcompressError as exc:  # a device, file or model problem mid-run: one line; saved rows stay
        print(f"bench_compare.py: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
