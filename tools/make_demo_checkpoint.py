#!/usr/bin/env python3
"""Make the trained demo checkpoint shipped in the package (hwcompress/zoo/checkpoints/).

    .venv/bin/python tools/make_demo_checkpoint.py [--model vgg-small] [--retrain]

Trains the model with its default recipe on Debian's Fashion-MNIST, seed 0 — exactly what
`hwcompress train --model vgg-small` caches — or takes that cached checkpoint when it exists
(``--retrain`` trains again), and writes ``<cache stem>.pt`` + ``.json`` (sha256, accuracies,
recipe, torch version, the command) into the package.  `ensure_baseline` then uses the shipped
file on a machine with an empty cache after checking its sha256 and its test accuracy there,
so `make demo` starts searching within a minute instead of training for 15-50 minutes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--model", default="vgg-small")
    ap.add_argument("--retrain", action="store_true", help="train again even if a cached checkpoint exists")
    args = ap.parse_args()

    from hwcompress.data import load_splits
    from hwcompress.errors import HwcompressError
    from hwcompress.fsutil import atomic_write_text, sha256_file
    from hwcompress.zoo import is_zoo_name
    from hwcompress.zoo.train import SHIPPED_DIR, ensure_baseline

    if not is_zoo_name(args.model):
        print(f"make_demo_checkpoint: {args.model} is not a built-in model", file=sys.stderr)
        return 2
    try:
        splits = load_splits(None, seed=0)
        base = ensure_baseline(args.model, splits, force=args.retrain)
    except HwcompressError as exc:
        print(f"make_demo_checkpoint: {exc}", file=sys.stderr)
        return 2
    cached = Path(base.checkpoint)
    info = json.loads(cached.with_suffix(".json").read_text())
    info.pop("from", None)
    SHIPPED_DIR.mkdir(parents=True, exist_ok=True)
    for old in SHIPPED_DIR.glob(f"{args.model}-*"):
        old.unlink()
    dest = SHIPPED_DIR / cached.name
    shutil.copyfile(cached, dest)
    info.update(sha256=sha256_file(dest), made_by=f"tools/make_demo_checkpoint.py --model {args.model}")
    atomic_write_text(dest.with_suffix(".json"), json.dumps(info, indent=1) + "\n")
    print(f"{dest} ({dest.stat().st_size / 2**20:.1f} MiB): test accuracy {base.test_accuracy * 100:.2f}%, "
          f"validation {base.val_accuracy * 100:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
