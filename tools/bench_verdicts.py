#!/usr/bin/env python3
"""Do the judge's verdicts on one model hold from one minute to the next?  (issue 21/22)

A search keeps a model because the judge confirmed it within its aim; minutes later the final
verdict, on fresh pairs of the same two files, must agree.  This bench judges one ``--model``
beside one ``--reference`` ``--verdicts`` times, ``--gap`` seconds apart, each verdict on
``--pairs`` fresh ABBA pairs (:func:`hwcompress.judge.measure_rounds`, the judge's settings), and
puts each verdict's pairs through several statistics side by side (the same profiles for all):

- ``median-ratio``: the median of the per-pair model/reference ratios (the judge's rule to date);
- ``min-ratio``: the fastest model profile over the fastest reference profile of the verdict;
- ``p25-ratio``: the lower quartiles' ratio;
- ``judge``: the judge's rule as it stands (:func:`hwcompress.judge.decide`: fastest over fastest, with
  the slow-spell check against the reference's quiet time learnt over the verdicts so far); its
  verdicts taken in a spell (``quiet`` false: the judge would have added pairs) are left out of
  its spread.

Per statistic it prints the verdicts' values, their spread (max / min - 1, and the coefficient of
variation) and how many land on each side of ``--limit``.  A statistic whose verdicts disagree by
more than the gap between a candidate and its aim cannot keep a promise made minutes earlier.

    PYTHONPATH=. .venv/bin/python tools/bench_verdicts.py --model M.onnx --reference BASE.onnx
        [--verdicts 8] [--pairs 10] [--gap 30] [--limit 0.5] [--json out.json]
    PYTHONPATH=. .venv/bin/python tools/bench_verdicts.py --replay out.json   # the figures again, no profiling

Run it beside whatever load the verdicts must survive (alone, for a device's quiet figures).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

STATS = ("median-ratio", "min-ratio", "p25-ratio")


def ratio(stat: str, model_ms: list[float], reference_ms: list[float]) -> float:
    """One verdict's ratio under ``stat`` (see the module docstring)."""
    if stat == "median-ratio":
        return float(statistics.median(m / r for m, r in zip(model_ms, reference_ms, strict=True)))
    if stat == "min-ratio":
        return min(model_ms) / min(reference_ms)
    if stat == "p25-ratio":
        return float(np.quantile(model_ms, 0.25) / np.quantile(reference_ms, 0.25))
    raise ValueError(stat)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--reference", type=Path)
    ap.add_argument("--replay", type=Path, help="a --json file of an earlier run: its figures, without profiling")
    ap.add_argument("--target", default="x86-cpu")
    ap.add_argument("--verdicts", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--gap", type=float, default=30.0, help="seconds between verdicts")
    ap.add_argument("--limit", type=float, default=0.5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from hwcompress.judge import decide, measure_rounds, reference_floor, round_target
    from hwcompress.targets import load_target

    if args.replay is not None:
        if not args.replay.is_file():
            print(f"error: {args.replay} is not a file (a --json file of an earlier run)", file=sys.stderr)
            return 2
        saved = json.loads(args.replay.read_text())
        old = saved["args"]
        args.verdicts, args.pairs, args.gap = int(old["verdicts"]), int(old["pairs"]), float(old["gap"])
        args.limit = float(old["limit"]) if args.limit == ap.get_default("limit") else args.limit
        recorded = saved["runs"]
    else:
        for p in (args.model, args.reference):
            if p is None or not p.is_file():
                print(f"error: --model and --reference must be files (got {p}); or --replay a saved run",
                      file=sys.stderr)
                return 2
        if args.verdicts < 2 or args.pairs < 1 or args.gap < 0:
            print("error: need --verdicts >= 2, --pairs >= 1, --gap >= 0", file=sys.stderr)
            return 2
        recorded = []

    target = round_target(load_target(args.target))
    # the reference's quiet time, learnt over its profiles so far as the judge learns it (a replay has no file)
    ref_key = args.reference if recorded == [] else Path(f"replay:{args.replay}")
    runs: list[dict[str, Any]] = []
    for i in range(args.verdicts):
        if recorded:
            m, r, at = recorded[i]["model_ms"], recorded[i]["reference_ms"], recorded[i]["at"]
            reference_floor(ref_key, target, None, r)
        else:
            if i:
                time.sleep(args.gap)
            ms, rs = measure_rounds(args.model, target, args.pairs, reference=args.reference)
            m, r, at = [x.latency.median_ms for x in ms], [x.latency.median_ms for x in rs], time.strftime("%H:%M:%S")
        v = decide(m, r, args.limit, floor_ms=reference_floor(ref_key, target))
        run = {"at": at, "model_ms": m, "reference_ms": r, **{s: ratio(s, m, r) for s in STATS},
               "judge": v.ratio, "judge_ci": [v.ci_low, v.ci_high], "quiet": v.quiet, "confirmed": v.confirmed}
        runs.append(run)
        print(f"[{run['at']}] verdict {i + 1}: " + ", ".join(f"{s} {run[s]:.3f}" for s in STATS)
              + f"; judge {v.describe()}; model {min(m):.3f}-{max(m):.3f} ms, reference {min(r):.3f}-{max(r):.3f} ms",
              flush=True)
    summary: dict[str, Any] = {}
    print(f"\n{args.verdicts} verdicts of {args.pairs} pairs, {args.gap:.0f} s apart; limit {args.limit}")
    print("| statistic | verdicts | spread (max/min - 1) | CV | within / over the limit |")
    print("|---|---|---|---|---|")
    for s in (*STATS, "judge"):
        vals = [run[s] for run in runs if s != "judge" or run["quiet"]]
        spread = max(vals) / min(vals) - 1
        cv = statistics.pstdev(vals) / statistics.mean(vals)
        within = sum(v <= args.limit for v in vals)
        summary[s] = {"values": vals, "spread": spread, "cv": cv, "within": within}
        print(f"| {s} | {' '.join(f'{v:.3f}' for v in vals)} | {spread * 100:.1f} % | {cv * 100:.1f} % | "
              f"{within} / {len(vals) - within} |")
    left = sum(not run["quiet"] for run in runs)
    print(f"(judge: {left} of {len(runs)} verdicts taken in a slow spell left out; the judge would have added pairs)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                                         "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
