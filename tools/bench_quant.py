#!/usr/bin/env python3
"""Benchmark per-layer precision on ONNX Runtime: fp32 vs int8 vs int4 weights vs mixed policies.

For VGG-small and ResNet-20 (trained baselines from ``ensure_baseline``'s cache) write each
policy's ONNX with ``hwcompress.quantize.quantize_onnx`` and print, per policy: file size,
latency measured on the target (``hwcompress.profiling.measure``, fresh subprocess, 1 thread),
test accuracy run in onnxruntime, and top-1 agreement with fp32.

Policies: fp32; int8 (all layers; uint8 activations, int8 per-channel weights, reduce_range
on x86 without VNNI); int4 (all weights, weight-only); mixed-int8 (int8, first conv and
classifier fp32); mixed-int4 (int8, the two largest convs int4 weights).

    .venv/bin/python tools/bench_quant.py [--models vgg-small,resnet-20] [--test-limit 2000] [--json]
    .venv/bin/python tools/bench_quant.py --quick      # briefly trained models, no cached baselines needed

Without ``--quick`` the baselines must already be cached (this tool never starts a full
training run unless ``--allow-train``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODELS = ("vgg-small", "resnet-20")


def policies(layers: list[Any]) -> dict[str, Any]:
    from hwcompress.quantize import uniform_policy

    convs = [layer for layer in layers if layer.op_type == "Conv"]
    biggest = sorted(convs, key=lambda layer: layer.params, reverse=True)[:2]
    return {
        "fp32": uniform_policy("fp32"),
        "int8": uniform_policy("int8"),
        "int4": uniform_policy("int4"),
        "mixed-int8": uniform_policy("int8", {layers[0].name: "fp32", layers[-1].name: "fp32"}),
        "mixed-int4": uniform_policy("int8", {layer.name: "int4" for layer in biggest}),
    }


def quick_model(name: str, splits: Any, steps: int) -> tuple[Any, float]:
    """Zoo model ``name`` trained ``steps`` Adam steps (batch 64, 1 thread): real latency, rough accuracy."""
    import numpy as np
    import torch

    from hwcompress.evaluate import accuracy, torch_threads
    from hwcompress.zoo import build_model

    torch.manual_seed(0)
    model = build_model(name, in_channels=splits.input_shape[0], num_classes=splits.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    rng = np.random.default_rng(0)
    with torch_threads(1):
        model.train()
        for _ in range(steps):
            idx = rng.integers(0, len(splits.train), 64)
            loss = torch.nn.functional.cross_entropy(
                model(torch.from_numpy(splits.train.x[idx])), torch.from_numpy(splits.train.y[idx])
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        return model, accuracy(model, splits.test, limit=500)


def cached_baseline(name: str, splits: Any, allow_train: bool) -> Any:
    from hwcompress.paths import cache_dir
    from hwcompress.zoo.train import ensure_baseline

    if not allow_train and not list((cache_dir() / "models").glob(f"{name}-{splits.digest}-*.pt")):
        raise SystemExit(
            f"no cached trained {name} for these splits in {cache_dir() / 'models'}; run `hwcompress demo` / "
            "ensure_baseline first, or use --quick (briefly trained models) or --allow-train"
        )
    return ensure_baseline(name, splits, progress=False)


def bench_model(name: str, model: Any, splits: Any, target: Any, folder: Path, test_limit: int, calib: int) -> list[dict[str, Any]]:
    import numpy as np

    from hwcompress.evaluate import onnx_logits
    from hwcompress.export import export_onnx
    from hwcompress.profiling.measure import measure
    from hwcompress.quantize import QuantOptions, layer_precisions, quantizable_layers, quantize_onnx

    shape = (1, *splits.input_shape)
    fp32 = export_onnx(model, shape, folder / f"{name}-fp32-src.onnx")
    layers = quantizable_layers(fp32, model)
    x, y = splits.test.x[:test_limit], splits.test.y[:test_limit]
    opts = dataclasses.replace(QuantOptions.for_target(target), calib_images=calib)
    rows: list[dict[str, Any]] = []
    ref: np.ndarray | None = None
    base_ms = 0.0
    for label, pol in policies(layers).items():
        t0 = time.perf_counter()
        path = quantize_onnx(fp32, folder / f"{name}-{label}.onnx", pol, splits.calib.x, target, options=opts)
        q_s = time.perf_counter() - t0
        m = measure(path, target)
        logits = onnx_logits(path, x, threads=target.threads)
        ref = logits if ref is None else ref
        base_ms = base_ms or m.latency.median_ms
        counts: dict[str, int] = {}
        for p in layer_precisions(path, model).values():
            counts[p] = counts.get(p, 0) + 1
        rows.append({
            "model": name, "policy": label,
            "layers": ", ".join(f"{p}:{n}" for p, n in sorted(counts.items())),
            "size_kib": path.stat().st_size / 1024,
            "median_ms": m.latency.median_ms, "p10_ms": m.latency.p10_ms, "p90_ms": m.latency.p90_ms,
            "cv": m.latency.cv, "n": m.latency.n, "peak_mib": m.peak_memory_bytes / 2**20,
            "vs_fp32": m.latency.median_ms / base_ms,
            "accuracy": float(np.mean(logits.argmax(1) == y)),
            "agree_fp32": float(np.mean(logits.argmax(1) == ref.argmax(1))),
            "quantize_s": q_s,
        })
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    head = f"{'model':<10} {'policy':<11} {'layers':<17} {'size KiB':>9} {'median ms':>9} {'p10-p90 ms':>13} {'x fp32':>7} {'acc %':>6} {'agree %':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        flag = "  <- not faster" if r["policy"] != "fp32" and r["vs_fp32"] >= 0.97 else ""
        print(
            f"{r['model']:<10} {r['policy']:<11} {r['layers']:<17} {r['size_kib']:>9.1f} {r['median_ms']:>9.3f} "
            f"{r['p10_ms']:>6.3f}-{r['p90_ms']:<6.3f} {r['vs_fp32']:>7.2f} {100 * r['accuracy']:>6.2f} "
            f"{100 * r['agree_fp32']:>7.2f}{flag}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--target", default="x86-cpu")
    ap.add_argument("--test-limit", type=int, default=2000, help="test images for accuracy (default 2000)")
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--quick", action="store_true", help="briefly trained models instead of cached baselines")
    ap.add_argument("--quick-steps", type=int, default=100)
    ap.add_argument("--allow-train", action="store_true", help="train missing baselines (minutes per model)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import torch

    from hwcompress.data import load_splits
    from hwcompress.targets import load_target

    torch.set_num_threads(1)
    target = load_target(args.target)
    splits = load_splits(calib_size=max(512, args.calib_images), limit_train=10000 if args.quick else None)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        for name in args.models.split(","):
            t0 = time.perf_counter()
            if args.quick:
                model, acc = quick_model(name, splits, args.quick_steps)
                print(f"# {name}: trained {args.quick_steps} steps in {time.perf_counter() - t0:.0f} s (torch accuracy {acc:.3f} on 500)",
                      file=sys.stderr)
            else:
                base = cached_baseline(name, splits, args.allow_train)
                model = base.model
                print(f"# {name}: cached baseline, test accuracy {base.test_accuracy:.4f}", file=sys.stderr)
            rows += bench_model(name, model, splits, target, Path(tmp), args.test_limit, args.calib_images)
    print(f"# target {target.name}, {target.threads} thread(s); accuracy on {args.test_limit} test images, "
          f"{'briefly trained (--quick)' if args.quick else 'trained baselines'}")
    print_table(rows)
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
