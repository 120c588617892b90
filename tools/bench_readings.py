#!/usr/bin/env python3
"""How well does a search's reading of a candidate agree with the judge's verdict on it? (issue 21)

A search keeps the candidates it *reads* within its aim; the judge then decides on fresh pairs
beside the baseline.  Where a reading is noisier than the judge, or on another statistic, the
search keeps candidates that the judge finds over (the resnet-20 0.5x misses of
tools/results/search-budgets.md).  This bench measures the gap, side by side in one run, for:

- ``old``: the rule the search used before: one ``measure()`` with the target's settings (re-profiled
  while its spread is above ``max_cv``, the steadiest round kept), over the fastest of 3 such
  profiles of the baseline taken at the start;
- ``reader``: :class:`hwcompress.judge.Reader` (the median of 3 ABBA pairs beside the baseline, with
  the judge's settings), times the median of 7 start profiles over the same;

against the judge's ratio on the same candidate, taken right after: the median of ``--pairs`` ABBA
pairs beside the baseline (what :func:`hwcompress.judge.judge` decides on).  Candidates are random pruned shapes of a
demo model (fixed-seed weights; latency does not depend on them), keep ratios uniform in 0.2-1.0 on
the target's channel multiple.  Prints, per rule, the median |reading / judged - 1|, the fraction
within +-5 % and +-10 %, and the mean signed error; ``--json`` keeps every figure.

    PYTHONPATH=. .venv/bin/python tools/bench_readings.py [--models resnet-20,mobilenetv2-small]
        [--candidates 20] [--pairs 6] [--json tools/results/readings/readings.json]

Run it alone: other work on the cores moves every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def bench(name: str, target_name: str, n: int, pairs: int, seed: int, work: Path) -> dict[str, Any]:
    import torch

    from hwcompress.baselines import device_file
    from hwcompress.judge import Reader, measure_rounds, round_target
    from hwcompress.latency.predictor import random_counts
    from hwcompress.profiling.measure import measure
    from hwcompress.prune import apply_policy, prunable_groups
    from hwcompress.records import CompressionPolicy
    from hwcompress.targets import load_target
    from hwcompress.zoo import build_model

    torch.manual_seed(seed)
    target = load_target(target_name)
    shape = (1, 1, 28, 28)
    net = build_model(name, in_channels=1, num_classes=10).eval()
    base = device_file(net, shape, work / f"{name}-base", target)
    groups = prunable_groups(net, shape)
    rng = random.Random(seed)
    files = []
    for i in range(n):
        counts = random_counts(groups, target.channel_multiple, rng)
        pruned = apply_policy(net, CompressionPolicy(), shape, counts={g.name: counts[g.index] for g in groups})
        files.append(device_file(pruned, shape, work / f"{name}-{i}", target))

    old_scale = min(measure(base, target, force=True).latency.median_ms for _ in range(3))
    start, _ = measure_rounds(base, round_target(target), 7)
    start_ms = [m.latency.median_ms for m in start]
    reader = Reader(target, base, statistics.median(start_ms))
    rows = []
    t0 = time.perf_counter()
    for i, f in enumerate(files):
        old = measure(f, target, force=True).latency.median_ms / old_scale
        new = reader.read(f).latency.median_ms / reader.scale_ms
        ms, rs = measure_rounds(f, round_target(target), pairs, reference=base, start=i)
        judged = statistics.median(m.latency.median_ms / r.latency.median_ms for m, r in zip(ms, rs, strict=True))
        rows.append({"candidate": i, "old": old, "reader": new, "judged": judged})
        print(f"  {name} #{i:2d}: judged {judged:.3f}x  old {old:.3f}x ({(old / judged - 1) * 100:+5.1f}%)  "
              f"reader {new:.3f}x ({(new / judged - 1) * 100:+5.1f}%)", flush=True)
    out: dict[str, Any] = {"model": name, "target": target_name, "candidates": n, "pairs": pairs,
                           "old_scale_ms": old_scale, "reader_scale_ms": reader.scale_ms, "start_ms": start_ms,
                           "seconds": time.perf_counter() - t0, "rows": rows}
    for rule in ("old", "reader"):
        err = [r[rule] / r["judged"] - 1 for r in rows]
        out[rule] = {"median_abs_err": statistics.median(abs(e) for e in err),
                     "within_5pct": sum(abs(e) <= 0.05 for e in err) / len(err),
                     "within_10pct": sum(abs(e) <= 0.10 for e in err) / len(err),
                     "mean_err": statistics.fmean(err)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet-20,mobilenetv2-small")
    p.add_argument("--target", default="x86-cpu")
    p.add_argument("--candidates", type=int, default=20)
    p.add_argument("--pairs", type=int, default=6, help="the judge's pairs per candidate (its median is the truth)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.candidates < 2 or args.pairs < 1:
        sys.exit("need --candidates >= 2 and --pairs >= 1")
    logging.basicConfig(level=logging.ERROR)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-readings-") as tmp:
        for name in args.models.split(","):
            results.append(bench(name.strip(), args.target, args.candidates, args.pairs, args.seed, Path(tmp)))
    print("\n| model | rule | median abs(reading / judged - 1) | within 5 % | within 10 % | mean signed error |")
    print("|---|---|---|---|---|---|")
    for d in results:
        for rule in ("old", "reader"):
            r = d[rule]
            print(f"| {d['model']} | {rule} | {r['median_abs_err'] * 100:.1f} % | {r['within_5pct'] * 100:.0f} % | "
                  f"{r['within_10pct'] * 100:.0f} % | {r['mean_err'] * 100:+.1f} % |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
