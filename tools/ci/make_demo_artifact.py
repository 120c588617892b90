#!/usr/bin/env python3
"""(Re)build the demo artifact and its committed latency baseline used by ``tools/ci_check.sh``.

    .venv/bin/python tools/ci/make_demo_artifact.py            # model + baseline
    .venv/bin/python tools/ci/make_demo_artifact.py --no-baseline

``tools/ci/demo-artifact/model.onnx``: ResNet-20 at half width (8/16/32 channels, as a 50 %
channel-pruned ResNet-20 would be), fixed-seed weights (latency does not depend on the values).
``tools/ci/demo-baseline.json``: ``hwcompress baseline`` of that artifact in reference mode against
the built-in ``resnet-20`` (exported deterministically by hwcompress itself, so nothing large is
committed).  Run from anywhere; paths in the baseline are relative to the repository root.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACT = Path("tools/ci/demo-artifact")
BASELINE = Path("tools/ci/demo-baseline.json")
REFERENCE = "resnet-20"


def build_model(dest: Path) -> Path:
    import torch

    from hwcompress.export import export_onnx
    from hwcompress.zoo.models import ResNet20

    torch.manual_seed(0)
    return export_onnx(ResNet20(in_channels=1, num_classes=10, widths=(8, 16, 32)), (1, 1, 28, 28), dest)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-baseline", action="store_true", help="only rebuild model.onnx")
    p.add_argument("--rounds", type=int, default=15, help="baseline rounds")
    args = p.parse_args()
    os.chdir(ROOT)
    model = build_model(ARTIFACT / "model.onnx")
    print(f"wrote {model} ({model.stat().st_size / 1024:.0f} KiB)")
    if args.no_baseline:
        return 0
    cmd = [sys.executable, "-m", "hwcompress", "baseline", str(ARTIFACT), "--target", "x86-cpu",
           "--reference", REFERENCE, "--rounds", str(args.rounds), "--out", str(BASELINE)]
    return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
