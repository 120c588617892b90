"""Stage-1 search benchmark: measured-latency DRL vs FLOPs-proxy DRL vs uniform pruning, side by side.

For each model (trained baseline from the cache; trained first if missing), on target x86-cpu, at
one latency budget (default 0.5x of the measured baseline), with the same episodes and the same
distillation fine-tune for every method:

* ``measured``: hwcompress's DRL search with measured latency in the reward (and the action wall);
* ``flops``: the same search with ``--cost flops`` (AMC-style MACs proxy, same budget fraction);
* ``uniform``: one keep ratio for every layer, the largest whose *measured* latency meets the budget.

Prints accuracy (test, in ONNX Runtime), measured latency, MACs, file size, whether the budget was
met on measured latency, search wall time and seconds per candidate. Not a timed test: figures only.

    .venv/bin/python tools/bench_search.py                 # vgg-small and resnet-20, 40 episodes
    .venv/bin/python tools/bench_search.py --quick         # resnet-20 only, 12 episodes, 2k val images
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    model: str
    method: str
    accuracy: float
    latency_ms: float
    p90_ms: float
    macs: int
    file_bytes: int
    budget_ms: float
    search_s: float
    candidates: int

    @property
    def met(self) -> bool:
        return self.latency_ms <= self.budget_ms


def run_search(model: str, cost: str, args: argparse.Namespace, work: Path) -> Row:
    from hwcompress.search.run import Search, SearchConfig

    run_dir = work / f"{model}-{cost}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = SearchConfig(
        model=model, target=args.target, latency_budget=args.budget, stages=("prune",), prune_episodes=args.episodes,
        warmup_episodes=args.warmup, prune_cost=cost, finetune_epochs=args.finetune_epochs, val_limit=args.val_images,
        seed=args.seed, out=str(run_dir / "artifact"), force=True, test_limit=args.test_images,
    )
    t0 = time.monotonic()
    search = Search(cfg, run_dir)
    search.allow_over_budget = True  # the proxy row is expected to miss: it is reported, not refused
    res = search.run()
    m = res.manifest
    assert m is not None and m.result.measurement is not None
    lat = m.result.measurement.latency
    n = res.candidates
    return Row(model, f"DRL {cost}", m.result.accuracy, lat.median_ms, lat.p90_ms, m.result.macs, m.result.file_bytes,
               res.budget_ms, res.seconds.get("prune_search", time.monotonic() - t0), n)


def run_uniform(model: str, budget_ms: float, args: argparse.Namespace, work: Path) -> Row:
    """Largest uniform keep ratio (on the channel multiple) whose measured latency meets the budget."""
    from hwcompress.artifact import export_artifact
    from hwcompress.baselines import fit_to_latency
    from hwcompress.data import load_splits
    from hwcompress.finetune import finetune
    from hwcompress.profiling.cache import MeasurementCache
    from hwcompress.records import CompressionPolicy
    from hwcompress.targets import load_target
    from hwcompress.zoo.train import ensure_baseline

    target = load_target(args.target)
    splits = load_splits(None, seed=args.seed)
    base = ensure_baseline(model, splits, progress=False)
    shape = (1, *splits.input_shape)
    cache = MeasurementCache()
    t0 = time.monotonic()
    fit = fit_to_latency("uniform", base.model, shape, target, budget_ms, work / f"uniform-{model}", cache=cache)
    search_s = time.monotonic() - t0
    pruned = fit.model
    if args.finetune_epochs:
        finetune(pruned, base.model, splits, epochs=args.finetune_epochs, seed=args.seed, test=False, progress=False)
    pruned.eval()
    out = work / f"uniform-{model}-artifact"
    m = export_artifact(pruned, CompressionPolicy(), target, out, calib=splits.calib, test=splits.test, force=True,
                        source_model=f"{model} uniform keep {fit.knob:.3f}", cache=cache, test_limit=args.test_images)
    assert m.result.measurement is not None
    lat = m.result.measurement.latency
    return Row(model, f"uniform keep {fit.knob:.2f}", m.result.accuracy, lat.median_ms, lat.p90_ms, m.result.macs,
               m.result.file_bytes, budget_ms, search_s, fit.measured)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vgg-small,resnet-20")
    ap.add_argument("--target", default="x86-cpu")
    ap.add_argument("--budget", default="0.5x")
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--val-images", type=int, default=2000)
    ap.add_argument("--test-images", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "bench-search")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    ap.add_argument("--quick", action="store_true", help="resnet-20 only, 12 episodes (4 warm-up), 2000 test images")
    args = ap.parse_args()
    if args.quick:
        args.models, args.episodes, args.warmup, args.test_images = "resnet-20", 12, 4, 2000
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    t_all = time.monotonic()
    for model in args.models.split(","):
        measured = run_search(model, "measured", args, args.work)
        rows.append(measured)
        rows.append(run_search(model, "flops", args, args.work))
        rows.append(run_uniform(model, measured.budget_ms, args, args.work))
        print_rows(rows)
    print(f"\ntotal wall {time.monotonic() - t_all:.0f} s; episodes {args.episodes} (warm-up {args.warmup}); "
          f"fine-tune {args.finetune_epochs} epoch(s); budget {args.budget} of the measured baseline; target {args.target}")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ | {"met": r.met} for r in rows], indent=2))


def print_rows(rows: list[Row]) -> None:
    head = (f"{'model':<11} {'method':<20} {'acc %':>6} {'lat ms':>7} {'p90 ms':>7} {'budget':>7} {'met':>4} "
            f"{'MMACs':>7} {'KiB':>7} {'search s':>8} {'s/cand':>6}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        per = r.search_s / r.candidates if r.candidates else 0.0
        print(f"{r.model:<11} {r.method:<20} {r.accuracy * 100:6.2f} {r.latency_ms:7.3f} {r.p90_ms:7.3f} "
              f"{r.budget_ms:7.3f} {'yes' if r.met else 'NO':>4} {r.macs / 1e6:7.1f} {r.file_bytes / 1024:7.0f} "
              f"{r.search_s:8.0f} {per:6.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
