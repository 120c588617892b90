#!/usr/bin/env python3
"""Build the demo artifact that ``tools/ci_check.sh`` checks (and variants of it).

    .venv/bin/python tools/ci/make_demo_artifact.py                       # tools/ci/demo-artifact/
    .venv/bin/python tools/ci/make_demo_artifact.py --dest out/ci/rebuilt
    .venv/bin/python tools/ci/make_demo_artifact.py --dest out/ci/slower --blocks 5

``model.onnx``: ResNet-20 at half width (8/16/32 channels, as a 50 % channel-pruned
ResNet-20 would be), fixed-seed weights (latency does not depend on the values), exported by
hwcompress itself.  ``--blocks 5`` (a half-width ResNet-32) is slower by about 31/19 on any
machine, since per-operator overhead and compute both grow with depth (wider layers are not:
their cost depends on the machine, and widths that are not a multiple of 8 ran ~2x slow here);
CI uses it to prove that ``hwcompress check`` fails on a real slowdown.

No baseline is committed: a latency baseline belongs to the machine class it was recorded on
(a model/reference ratio drifted from 0.37 to 0.60 between two CI machines), so
``tools/ci_check.sh`` records one on the CI machine, in the same run, before it checks.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACT = Path("tools/ci/demo-artifact")
WIDTHS = (8, 16, 32)


def build_model(dest: Path, blocks: int = 3) -> Path:
    import torch

    from hwcompress.export import export_onnx
    from hwcompress.zoo.models import ResNet20

    torch.manual_seed(0)
    return export_onnx(ResNet20(in_channels=1, num_classes=10, widths=WIDTHS, blocks=blocks), (1, 1, 28, 28), dest)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dest", type=Path, default=ARTIFACT, help="artifact folder to write (model.onnx)")
    p.add_argument("--blocks", type=int, default=3, help="basic blocks per stage (default 3: ResNet-20)")
    args = p.parse_args()
    if args.blocks < 1:
        p.error(f"--blocks {args.blocks}: give 1 or more")
    dest = args.dest if args.dest.is_absolute() else Path.cwd() / args.dest
    os.chdir(ROOT)
    model = build_model(dest / "model.onnx", args.blocks)
    print(f"wrote {model} ({model.stat().st_size / 1024:.0f} KiB, {args.blocks} blocks per stage)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
