#!/usr/bin/env python3
"""False alarms and detections of ``hwcompress check`` on this machine (not a timed test).

Records one baseline of ResNet-20 (reference mode), then runs ``hwcompress check`` ``--runs``
times on the unchanged model and ``--runs`` times on a really slower variant (ResNet-20 with one
extra basic block in stages 2 and 3: ~1.2x the latency), alternating the two so both see the same
machine load.  ``--small``: both at half width (a pruned model) against the full ResNet-20 as the
reference, the case a slow spell's added time does not cancel in.  Every check is a separate ``python -m hwcompress check --json`` process.  For
comparison, the absolute-mode verdict (model ms now vs model ms in the baseline, no reference) and
the rule ``check`` had until 2026-12-07 (the median of per-round model/reference ratios, same
significance test: :func:`median_rule`) are computed from the same measurements.

    .venv/bin/python tools/bench_check.py [--runs 20] [--reference resnet-20] [--small]

Prints counts, the achieved slowdown factor, timings and the load average; exit 1 if the goal
(0 false alarms, all slow runs detected) is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def build_models(workdir: Path, small: bool = False) -> tuple[Path, Path]:
    """The built-in ResNet-20 (fixed-seed weights) and the same network with two extra blocks; with
    ``small``, both at half width (8/16/32 channels: a pruned model, checked against the full reference)."""
    import torch
    from torch import nn

    from hwcompress.export import export_onnx
    from hwcompress.pipeline import model_to_onnx
    from hwcompress.zoo.models import BasicBlock, ResNet20

    widths = (8, 16, 32) if small else (16, 32, 64)
    torch.manual_seed(0)
    if small:
        base = export_onnx(ResNet20(in_channels=1, num_classes=10, widths=widths), (1, 1, 28, 28),
                           workdir / "resnet-20-half.onnx")
    else:
        base = model_to_onnx("resnet-20", (1, 28, 28))
    net = ResNet20(in_channels=1, num_classes=10, widths=widths)
    blocks = list(net.layers)
    # 3 blocks per stage; add one block after stage 2 and one after stage 3
    net.layers = nn.Sequential(*blocks[:6], BasicBlock(widths[1], widths[1], 1), *blocks[6:],
                               BasicBlock(widths[2], widths[2], 1))
    slow = export_onnx(net, (1, 1, 28, 28), workdir / f"resnet-20{'-half' if small else ''}-plus2blocks.onnx")
    return base, slow


def median_rule(now_m: list[float], now_r: list[float], base_m: list[float], base_r: list[float], tol: float) -> tuple[str, float]:
    """The check's rule until 2026-12-07 on the same rounds: R = median of now's per-round ratios over the
    baseline's, percentile bootstrap of medians; fail iff R > 1 + tol and its low end > 1 + tol / 4."""
    from hwcompress.judge import bootstrap_ratio

    point, low, _ = bootstrap_ratio([m / r for m, r in zip(now_m, now_r, strict=True)],
                                    [m / r for m, r in zip(base_m, base_r, strict=True)])
    status = "pass" if point <= 1 + tol else "fail" if low > 1 + tol / 4 else "inconclusive"
    return status, point


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hwcompress", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def load() -> float:
    return os.getloadavg()[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20, help="checks per model")
    p.add_argument("--reference", default="resnet-20", help="reference model (best: one like the model checked)")
    p.add_argument("--rounds", type=int, default=5, help="check rounds")
    p.add_argument("--baseline-rounds", type=int, default=20)
    p.add_argument("--tolerance", default="10%")
    p.add_argument("--metric", default="p50")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--save", type=Path, default=None, help="write every check's rounds and verdicts here (JSON)")
    p.add_argument("--small", action="store_true",
                   help="check a half-width ResNet-20 (a pruned model) against the full reference: a slow spell's "
                        "added time moves their ratio (tools/results/verdicts.md)")
    args = p.parse_args()

    from hwcompress.check import LatencyBaseline, latency_verdict, parse_fraction

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_check_"))
    workdir.mkdir(parents=True, exist_ok=True)
    base, slow = build_models(workdir, args.small)
    baseline = workdir / "baseline.json"
    print(f"load average at start: {load():.2f} on {os.cpu_count()} CPUs")
    t = time.perf_counter()
    res = cli("baseline", str(base), "--reference", args.reference, "--rounds", str(args.baseline_rounds),
              "--out", str(baseline))
    if res.returncode != 0:
        print(res.stdout, res.stderr, file=sys.stderr)
        return 2
    print(f"baseline ({args.baseline_rounds} rounds, reference {args.reference}): {time.perf_counter() - t:.1f} s")
    b = LatencyBaseline.from_dict(json.loads(baseline.read_text()))
    base_ms = [r.latency.median_ms if args.metric == "p50" else r.latency.p90_ms for r in b.rounds]
    base_ref = [r.latency.median_ms if args.metric == "p50" else r.latency.p90_ms for r in b.reference_rounds]
    tol = parse_fraction(args.tolerance)

    results: dict[str, list[dict[str, Any]]] = {"unchanged": [], "slower": []}
    for i in range(args.runs):
        for label, model in (("unchanged", base), ("slower", slow)) if i % 2 == 0 else (("slower", slow), ("unchanged", base)):
            t = time.perf_counter()
            res = cli("check", str(model), "--baseline", str(baseline), "--reference", args.reference,
                      "--rounds", str(args.rounds), "--tolerance", args.tolerance, "--metric", args.metric, "--json")
            wall = time.perf_counter() - t
            if res.returncode not in (0, 1):
                print(f"check failed (exit {res.returncode}): {res.stderr.strip()}", file=sys.stderr)
                return 2
            r = json.loads(res.stdout)
            key = "median_ms" if args.metric == "p50" else "p90_ms"
            now_ms = [m["latency"][key] for m in r["rounds"]]
            now_ref = [m["latency"][key] for m in r["reference_rounds"]]
            absolute = latency_verdict(now_ms, base_ms, tolerance=tol, name="absolute")
            old, old_ratio = median_rule(now_ms, now_ref, base_ms, base_ref, tol)
            lat = r["latency"]
            results[label].append({"exit": res.returncode, "status": lat["status"], "ratio": lat["ratio"],
                                   "lo": lat["ci_low"], "hi": lat["ci_high"], "rounds": len(r["rounds"]),
                                   "wall": wall, "model_ms": r["current_model_ms"], "abs": absolute.status,
                                   "abs_ratio": absolute.ratio, "load": r["machine"]["load_1min"], "quiet": lat["quiet"],
                                   "median_rule": old, "median_ratio": old_ratio, "model_ms_rounds": now_ms,
                                   "reference_ms_rounds": now_ref})
            print(f"{label:9s} run {i + 1:2d}: exit {res.returncode} {lat['status']:12s} ratio {lat['ratio']:.3f} "
                  f"[{lat['ci_low']:.3f}, {lat['ci_high']:.3f}] rounds {len(r['rounds']):2d} {wall:5.1f} s | "
                  f"absolute {absolute.ratio:.3f} {absolute.status:12s} | median rule {old_ratio:.3f} {old:12s} | "
                  f"load {r['machine']['load_1min']:.2f}",
                  flush=True)

    un, sl = results["unchanged"], results["slower"]
    # latency verdicts (a slower model with more layers may also fail on peak memory: counted apart)
    false_alarms = sum(r["status"] == "fail" for r in un)
    detections = sum(r["status"] == "fail" for r in sl)
    memory_fails = {k: sum(r["exit"] == 1 and r["status"] != "fail" for r in v) for k, v in results.items()}
    factor = statistics.median(r["model_ms"] for r in sl) / statistics.median(r["model_ms"] for r in un)
    norm = statistics.median(r["ratio"] for r in sl) / statistics.median(r["ratio"] for r in un)
    walls = [r["wall"] for r in un + sl]
    loads = [r["load"] for r in un + sl]
    print()
    print(f"slowdown achieved: {factor:.3f}x model latency (same-time medians), {norm:.3f}x model/reference ratio")
    print(f"reference mode, tolerance {args.tolerance}, {args.rounds} rounds (up to {4 * args.rounds}):")
    print(f"  false alarms {false_alarms}/{len(un)} (inconclusive {sum(r['status'] == 'inconclusive' for r in un)}), "
          f"detections {detections}/{len(sl)} (inconclusive {sum(r['status'] == 'inconclusive' for r in sl)})")
    print(f"  peak-memory failures without a latency failure: unchanged {memory_fails['unchanged']}, "
          f"slower {memory_fails['slower']}")
    print(f"  extended to more rounds: {sum(r['rounds'] > args.rounds for r in un + sl)}/{len(walls)} checks")
    print(f"absolute mode on the same measurements: false alarms {sum(r['abs'] == 'fail' for r in un)}/{len(un)}, "
          f"detections {sum(r['abs'] == 'fail' for r in sl)}/{len(sl)}; unchanged ratio range "
          f"{min(r['abs_ratio'] for r in un):.3f}-{max(r['abs_ratio'] for r in un):.3f}")
    print(f"the median rule (until 2026-12-07) on the same rounds: false alarms "
          f"{sum(r['median_rule'] == 'fail' for r in un)}/{len(un)}, detections "
          f"{sum(r['median_rule'] == 'fail' for r in sl)}/{len(sl)}; unchanged ratio range "
          f"{min(r['median_ratio'] for r in un):.3f}-{max(r['median_ratio'] for r in un):.3f}")
    print(f"  not at the reference's recorded speed (no quiet round): {sum(not r['quiet'] for r in un + sl)}/{len(walls)}")
    print(f"reference-mode unchanged ratio range {min(r['ratio'] for r in un):.3f}-{max(r['ratio'] for r in un):.3f}, "
          f"slower {min(r['ratio'] for r in sl):.3f}-{max(r['ratio'] for r in sl):.3f}")
    print(f"one check: median {statistics.median(walls):.1f} s, max {max(walls):.1f} s (wall, incl. CLI start)")
    print(f"load average (1 min) during checks: {min(loads):.2f}-{max(loads):.2f}, now {load():.2f} "
          f"on {os.cpu_count()} CPUs")
    if args.save:
        args.save.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "baseline": {"model_ms": base_ms, "reference_ms": base_ref},
                                         "checks": results}, indent=1) + "\n")
        print(f"wrote {args.save}")
    return 0 if false_alarms == 0 and memory_fails["unchanged"] == 0 and detections == len(sl) else 1


if __name__ == "__main__":
    sys.exit(main())
