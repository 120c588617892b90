#!/usr/bin/env python3
"""Does stage 1's reward predict the accuracy after fine-tuning? (issue 22, point 1)

For a trained built-in model on Fashion-MNIST: ``--candidates`` random pruned policies at the same
MACs level (each group's keep ratio drawn in [lower bound, 1], then all scaled together to
``--macs`` x the baseline's MACs: candidates a search would compare at one budget, not a range of
sizes that any signal ranks), and for each:

* ``pruned``: validation accuracy right after pruning with BatchNorm re-estimated (the reward before
  issue 22);
* ``recovery-N``: validation accuracy after N distillation steps (:mod:`hwcompress.recovery`, the
  reward's recovery) for each N in ``--steps``;
* ``finetuned``: test accuracy after the full fine-tune a search gives its winner (distillation,
  ``--finetune-epochs``).

Prints, per signal, Spearman against ``finetuned`` and the seconds it costs per candidate; goal
Spearman >= 0.8.  Rows are saved one by one under ``--work`` (a stopped run resumes; a run with other
``--steps`` or ``--val-images`` scores the signals again and keeps the saved fine-tunes).

    .venv/bin/python tools/bench_reward.py [--model resnet-20] [--candidates 20] [--steps 50,100,200]
        [--macs 0.35] [--finetune-epochs 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GOAL = 0.8


def policies(model: Any, shape: tuple[int, ...], n: int, macs_ratio: float, lower: float, multiple: int,
             seed: int) -> list[dict[str, float]]:
    """``n`` random keep-ratio policies, each scaled as a whole to ``macs_ratio`` of the baseline's MACs."""
    import numpy as np

    from hwcompress.baselines import largest_within
    from hwcompress.macs import count_macs
    from hwcompress.prune import apply_policy, prunable_groups
    from hwcompress.records import CompressionPolicy

    groups = prunable_groups(model, shape)
    base_macs, _ = count_macs(model, shape)
    rng = np.random.RandomState(seed)
    out: list[dict[str, float]] = []
    while len(out) < n:
        shape_vec = rng.uniform(lower, 1.0, size=len(groups))

        def keep_at(s: float, v: Any = shape_vec) -> dict[str, float]:
            return {g.name: float(max(lower, min(1.0, k * s))) for g, k in zip(groups, v, strict=True)}

        def macs_at(s: float) -> float:
            pruned = apply_policy(model, CompressionPolicy(keep=keep_at(s)), shape, channel_multiple=multiple)
            return count_macs(pruned, shape)[0] / base_macs

        s = largest_within(macs_at, macs_ratio, 0.0, 1.0 / max(shape_vec.min(), lower), steps=8)
        if s is not None:
            out.append(keep_at(s))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet-20")
    p.add_argument("--candidates", type=int, default=20)
    p.add_argument("--steps", default="50,100,200", help="recovery step counts to compare")
    p.add_argument("--macs", type=float, default=0.35, help="MACs ratio every candidate is scaled to")
    p.add_argument("--lower-bound", type=float, default=0.2)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--train-images", type=int, default=None,
                   help="fine-tune on the first N training images only (cheaper; default: all, as a search does)")
    p.add_argument("--val-images", type=int, default=2000, help="validation images each signal is scored on "
                   "(the search's --val-limit; the split holds 5000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", default="x86-cpu", help="its channel multiple is used")
    p.add_argument("--work", type=Path, default=ROOT / "out" / "bench-reward")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        steps = [int(s) for s in args.steps.split(",") if s]
    except ValueError:
        p.error(f"--steps {args.steps!r}: give step counts, e.g. 50,100,200")
    if args.candidates < 3 or not 0 < args.macs <= 1:
        p.error("need --candidates >= 3 and --macs in (0, 1]")

    import torch

    from hwcompress.data import load_splits
    from hwcompress.evaluate import accuracy, torch_threads
    from hwcompress.finetune import finetune
    from hwcompress.latency.predictor import spearman
    from hwcompress.prune import apply_policy
    from hwcompress.records import CompressionPolicy
    from hwcompress.recovery import make_recovery, recover
    from hwcompress.search.evaluator import BN_BATCHES, recalibrate_bn
    from hwcompress.targets import load_target
    from hwcompress.zoo.train import ensure_baseline

    splits = load_splits(None, seed=args.seed)
    base = ensure_baseline(args.model, splits)
    teacher = base.model.eval()
    shape = (1, *splits.input_shape)
    target = load_target(args.target)
    val = splits.val.head(args.val_images)
    work = args.work / f"{args.model}-s{args.seed}-m{args.macs:g}"
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    print(f"{args.model}: baseline test accuracy {base.test_accuracy * 100:.2f}%; {args.candidates} candidates at "
          f"{args.macs:g}x MACs", flush=True)
    pols = policies(teacher, shape, args.candidates, args.macs, args.lower_bound, target.channel_multiple, args.seed)
    recs = {n: make_recovery(teacher, splits.train, n, seed=args.seed) for n in steps}
    rows: list[dict[str, Any]] = []
    for i, keep in enumerate(pols):
        row_file = work / f"cand-{i:02d}.json"
        policy = CompressionPolicy(keep=keep)
        row = {"keep": keep, "steps": steps, "epochs": args.finetune_epochs, "train_images": args.train_images,
               "val_images": len(val), "scores": {}, "seconds": {}}
        if row_file.is_file():
            saved = json.loads(row_file.read_text())
            same = all(saved.get(k) == row[k] for k in ("keep", "epochs", "train_images"))
            if same and saved.get("steps") == steps and saved.get("val_images", 2000) == len(val):
                rows.append(saved)
                continue
            if same:  # the fine-tune is the same: only the signals are scored again (other steps, more images)
                row["finetuned"], row["seconds"]["finetuned"] = saved["finetuned"], saved["seconds"]["finetuned"]

        def pruned(policy: CompressionPolicy = policy) -> Any:
            m = apply_policy(teacher, policy, shape, channel_multiple=target.channel_multiple)
            with torch_threads(1):
                recalibrate_bn(m, splits.train.x, BN_BATCHES)
            return m

        t0 = time.perf_counter()
        m = pruned()
        row["scores"]["pruned"] = accuracy(m, val, threads=1)
        row["seconds"]["pruned"] = time.perf_counter() - t0
        for n in steps:
            t0 = time.perf_counter()
            m = pruned()
            recover(m, recs[n])
            row["scores"][f"recovery-{n}"] = accuracy(m, val, threads=1)
            row["seconds"][f"recovery-{n}"] = time.perf_counter() - t0
        if "finetuned" not in row:
            t0 = time.perf_counter()
            m = pruned()
            res = finetune(m, teacher, splits, epochs=args.finetune_epochs, seed=args.seed, progress=False, test=True,
                           train_limit=args.train_images)
            row["finetuned"] = res.test_accuracy
            row["seconds"]["finetuned"] = time.perf_counter() - t0
        from hwcompress.fsutil import atomic_write_text

        atomic_write_text(row_file, json.dumps(row, indent=2))
        rows.append(row)
        shown = ", ".join(f"{k} {v * 100:.2f}" for k, v in row["scores"].items())
        print(f"  [{i + 1}/{len(pols)}] {shown}; fine-tuned {row['finetuned'] * 100:.2f}% "
              f"({row['seconds']['finetuned']:.0f} s)", flush=True)
    final = [r["finetuned"] for r in rows]
    signals = list(rows[0]["scores"])
    result: dict[str, Any] = {"model": args.model, "candidates": len(rows), "macs_ratio": args.macs, "val_images": len(val),
                              "finetune_epochs": args.finetune_epochs, "seed": args.seed, "signals": {}}
    print(f"\n{args.model}, {len(rows)} candidates at {args.macs:g}x MACs, fine-tune {args.finetune_epochs} epoch(s): "
          f"fine-tuned test accuracy {min(final) * 100:.2f}-{max(final) * 100:.2f}%")
    for sig in signals:
        rho = spearman([r["scores"][sig] for r in rows], final)
        secs = sum(r["seconds"][sig] for r in rows) / len(rows)
        result["signals"][sig] = {"spearman": rho, "seconds_per_candidate": secs}
        goal = "goal met" if rho >= GOAL else "goal not met"
        print(f"  {sig:>14}: Spearman {rho:+.3f} vs fine-tuned ({goal}: >= {GOAL}), {secs:.1f} s per candidate")
    result["rows"] = rows
    if args.json:
        from hwcompress.fsutil import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
