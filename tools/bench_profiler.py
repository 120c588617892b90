#!/usr/bin/env python3
"""Benchmark the profiler itself: how repeatable and how fast is one profile?

For each demo model (input 1x1x28x28, exported with hwcompress.export.export_onnx) run N
independent profiles, each a fresh subprocess with the target's settings, cache bypassed, and
print: median latency, CV of the N medians (goal <= 3% at 1 thread), mean within-profile CV
(std/mean) and robust CV (MAD), wall seconds per profile including process start (goal <= 1.5 s),
and where that wall time goes (interpreter start, numpy+ORT import, session creation, runs, rest).

    .venv/bin/python tools/bench_profiler.py [--profiles 5] [--target x86-cpu] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODELS = ("vgg-small", "resnet-20", "mobilenetv2-small")
GOAL_MEDIAN_CV = 0.03
GOAL_WALL_S = 1.5


def _cv(values: list[float]) -> float:
    return statistics.pstdev(values) / statistics.fmean(values) if len(values) > 1 else 0.0


def bench_model(name: str, folder: Path, target: Any, profiles: int) -> dict[str, Any]:
    import torch

    from hwcompress.export import export_onnx
    from hwcompress.profiling.adapters import get_adapter
    from hwcompress.profiling.measure import parse_json, parse_result
    from hwcompress.profiling.runner import LocalRunner
    from hwcompress.zoo import build_model

    torch.manual_seed(0)
    model = export_onnx(build_model(name), (1, 1, 28, 28), folder / f"{name}.onnx")
    adapter = get_adapter(target.runtime)
    runner = LocalRunner()
    args = adapter.args(model, target)
    medians, cvs, rcvs, walls, phases = [], [], [], [], []
    for _ in range(profiles):
        t0 = time.perf_counter()
        raw = parse_json(adapter.script, runner.run(adapter.script, args, [model], target.measure.timeout_s))
        wall = time.perf_counter() - t0
        if not raw.get("ok"):
            raise SystemExit(f"{name}: {raw.get('error')}")
        m = parse_result(adapter.script, raw, target)
        medians.append(m.latency.median_ms)
        cvs.append(m.latency.cv)
        rcvs.append(m.latency.robust_cv)
        walls.append(wall)
        ph = raw.get("phases", {})
        script_s = ph.get("script_ms", 0.0) / 1e3
        phases.append({
            "start": wall - script_s,
            "import": ph.get("import_ms", 0.0) / 1e3,
            "load": ph.get("load_ms", 0.0) / 1e3,
            "runs": ph.get("runs_ms", 0.0) / 1e3,
            "n": m.latency.n,
        })
        phases[-1]["rest"] = script_s - phases[-1]["import"] - phases[-1]["load"] - phases[-1]["runs"]
    mean_phase = {k: statistics.fmean(p[k] for p in phases) for k in phases[0]}
    return {
        "model": name,
        "median_ms": statistics.median(medians),
        "medians_ms": medians,
        "cv_of_median": _cv(medians),
        "within_cv": statistics.fmean(cvs),
        "within_robust_cv": statistics.fmean(rcvs),
        "wall_s_mean": statistics.fmean(walls),
        "wall_s_max": max(walls),
        "phases_s": mean_phase,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profiles", type=int, default=5, help="independent profiles per model")
    p.add_argument("--target", default="x86-cpu")
    p.add_argument("--threads", type=int, default=None, help="override the target's threads")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = p.parse_args(argv)

    import torch

    from hwcompress.targets import load_target

    torch.set_num_threads(1)
    target = load_target(args.target)
    if args.threads:
        target = dataclasses.replace(target, threads=args.threads)
    m = target.measure
    with tempfile.TemporaryDirectory(prefix="bench_profiler_") as tmp:
        rows = [bench_model(name, Path(tmp), target, args.profiles) for name in args.models]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"target {target.name}: {target.threads} thread(s), warm-up {m.warmup_runs}, min {m.min_runs} runs "
          f"and {m.min_seconds:g} s, {args.profiles} fresh-process profiles per model, cache bypassed")
    head = (f"{'model':<18} {'median ms':>9} {'CV median':>9} {'CV in':>6} {'rCV in':>6} {'n':>5} "
            f"{'wall s':>6} {'max s':>6} | {'start':>5} {'import':>6} {'load':>5} {'runs':>5} {'rest':>5}")
    print(head)
    print("-" * len(head))
    ok = True
    for r in rows:
        ph = r["phases_s"]
        print(f"{r['model']:<18} {r['median_ms']:>9.3f} {100 * r['cv_of_median']:>8.2f}% "
              f"{100 * r['within_cv']:>5.1f}% {100 * r['within_robust_cv']:>5.1f}% {ph['n']:>5.0f} "
              f"{r['wall_s_mean']:>6.2f} {r['wall_s_max']:>6.2f} | {ph['start']:>5.2f} {ph['import']:>6.2f} "
              f"{ph['load']:>5.2f} {ph['runs']:>5.2f} {ph['rest']:>5.2f}")
        ok &= r["cv_of_median"] <= GOAL_MEDIAN_CV and r["wall_s_max"] <= GOAL_WALL_S
    print(f"goals: CV of the median <= {100 * GOAL_MEDIAN_CV:g}%, one profile <= {GOAL_WALL_S:g} s wall: "
          + ("met" if ok else "NOT met"))
    print("columns: CV in = mean std/mean within a profile, rCV in = mean 1.4826*MAD/median; phases in s "
          "(start = interpreter start + process spawn, rest = arguments, hashing, device info)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
