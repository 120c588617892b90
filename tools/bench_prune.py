#!/usr/bin/env python
"""Benchmark stage-1 pruning: uniform keep ratio on trained baselines, measured on a target.

For each model: MACs ratio, measured latency ratio (ONNX Runtime on the target, median of a
fresh profile), and test accuracy of the baseline, of the pruned model, and of the pruned
model after a distillation fine-tune.

    python tools/bench_prune.py                  # trained, cached baselines (never trains them)
    python tools/bench_prune.py --train          # train missing baselines first (slow)
    python tools/bench_prune.py --quick          # 2k-sample subset, baseline trained 1 epoch here
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("bench_prune")


@dataclass(frozen=True)
class Row:
    model: str
    groups: int
    macs: int
    macs_pruned: int
    latency_ms: float
    latency_pruned_ms: float
    acc_base: float
    acc_pruned: float
    acc_finetuned: float
    finetune_s: float


def baseline_cached(name: str, digest: str) -> bool:
    """Whether ensure_baseline has a cached model for ``name`` on these splits (its documented file naming)."""
    from hwcompress.paths import cache_dir

    folder = cache_dir() / "models"
    return any(p.with_suffix(".json").is_file() for p in folder.glob(f"{name}-{digest}-*.pt"))


def run(args: argparse.Namespace) -> list[Row]:
    import torch

    from hwcompress.data import load_splits
    from hwcompress.evaluate import accuracy
    from hwcompress.export import export_onnx
    from hwcompress.finetune import finetune
    from hwcompress.macs import count_macs
    from hwcompress.profiling.measure import measure
    from hwcompress.prune import prunable_groups, uniform_prune
    from hwcompress.targets import load_target
    from hwcompress.zoo import build_model

    torch.set_num_threads(args.threads)
    target = load_target(args.target)
    multiple = args.channel_multiple if args.channel_multiple is not None else target.channel_multiple
    if args.quick:
        splits = load_splits(limit_train=args.limit_train or 2000, limit_test=args.limit_test or 500)
    else:
        splits = load_splits(limit_train=args.limit_train, limit_test=args.limit_test)
    shape = (1, *splits.input_shape)
    log.info("%s", splits.summary())
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
        for name in args.models:
            if args.quick:
                torch.manual_seed(0)
                base = build_model(name, in_channels=splits.input_shape[0], num_classes=splits.num_classes)
                log.info("%s: quick baseline, 1 epoch on %d samples", name, len(splits.train))
                finetune(base, None, splits, epochs=1, lr=0.05, batch_size=64, threads=args.threads,
                         progress=not args.no_progress, test=False)
                base.eval()
            else:
                from hwcompress.zoo.train import ensure_baseline

                if not args.train and not baseline_cached(name, splits.digest):
                    raise SystemExit(f"{name}: no cached baseline for these splits; train it (hwcompress train {name}), "
                                     "pass --train, or run with --quick")
                base = ensure_baseline(name, splits, progress=not args.no_progress).model.eval()
            groups = prunable_groups(base, shape)
            pruned = uniform_prune(base, args.keep, shape, channel_multiple=multiple)
            macs, _ = count_macs(base, shape)
            macs_p, _ = count_macs(pruned, shape)
            lat = measure(export_onnx(base, shape, Path(tmp) / f"{name}.onnx"), target).latency.median_ms
            acc_base = accuracy(base, splits.test, threads=args.threads)
            acc_pruned = accuracy(pruned, splits.test, threads=args.threads)
            t0 = time.perf_counter()
            ft = finetune(pruned, base, splits, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                          threads=args.threads, progress=not args.no_progress)
            ft_s = time.perf_counter() - t0
            lat_p = measure(export_onnx(pruned, shape, Path(tmp) / f"{name}-pruned.onnx"), target).latency.median_ms
            assert ft.test_accuracy is not None
            rows.append(Row(name, len(groups), macs, macs_p, lat, lat_p, acc_base, acc_pruned, ft.test_accuracy, ft_s))
    return rows


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"uniform keep {args.keep} on {args.target}" + (" (--quick: subset, 1-epoch baselines)" if args.quick else "")
    table = Table(title=title)
    for col in ("model", "groups", "MMACs", "MACs ratio", "latency ms", "latency ratio",
                "acc base", "acc pruned", f"acc +KD {args.epochs} ep", "fine-tune s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(
            r.model, str(r.groups), f"{r.macs / 1e6:.1f} -> {r.macs_pruned / 1e6:.1f}", f"{r.macs_pruned / r.macs:.3f}",
            f"{r.latency_ms:.3f} -> {r.latency_pruned_ms:.3f}", f"{r.latency_pruned_ms / r.latency_ms:.3f}",
            f"{r.acc_base:.4f}", f"{r.acc_pruned:.4f}", f"{r.acc_finetuned:.4f}", f"{r.finetune_s:.0f}",
        )
    Console(width=150).print(table)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vgg-small", "resnet-20"])
    p.add_argument("--keep", type=float, default=0.5, help="keep ratio of every prunable group")
    p.add_argument("--target", default="x86-cpu")
    p.add_argument("--channel-multiple", type=int, default=None, help="default: the target's")
    p.add_argument("--epochs", type=int, default=1, help="distillation fine-tune epochs")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="small subset, baselines trained 1 epoch here")
    p.add_argument("--train", action="store_true", help="train baselines that are not cached")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from hwcompress.errors import HwcompressError

    try:
        rows = run(args)
    except HwcompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print_table(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
