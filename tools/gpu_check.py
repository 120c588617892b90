#!/usr/bin/env python3
"""On a machine with an NVIDIA GPU: exercise profilers/trt_bench.py's CUDA layer (ctypes on libcudart:
device, memory, copies, streams, event timing) and, where TensorRT is installed, a real engine
profile of a small ONNX model; without TensorRT, check that the profiler fails with its one-line
environment error.  Prints what it saw; exit 1 on a failed check.

    python3 tools/gpu_check.py [model.onnx]
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("trt_bench", ROOT / "profilers" / "trt_bench.py")
assert spec is not None and spec.loader is not None
tb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tb)

failed = 0


def check(ok: bool, what: str) -> None:
    global failed
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    failed += not ok


cuda = tb.Cuda(0)
check(True, f"libcudart loaded, device: {cuda.device_name()}")
free, total = cuda.mem_get_info()
check(total > 0 and 0 < free <= total, f"memory: {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB")
x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
ptr = cuda.malloc(x.nbytes * 64)
stream = cuda.stream()
a, b = cuda.event(), cuda.event()
times = []
for _ in range(20):
    cuda.record(a, stream)
    for i in range(64):
        cuda.copy_to_device(ptr + i * x.nbytes, x)
    cuda.record(b, stream)
    times.append(cuda.elapsed_ms(a, b))
cuda.synchronize(stream)
gb = 64 * x.nbytes / 1e9
check(all(t >= 0 for t in times), f"event timing: 64 host-to-device copies of {x.nbytes} B, median "
      f"{sorted(times)[10]:.3f} ms ({gb / (sorted(times)[10] / 1e3):.1f} GB/s)")

model = sys.argv[1] if len(sys.argv) > 1 else None
t0 = time.perf_counter()
cmd = [sys.executable, str(ROOT / "profilers" / "trt_bench.py"), "--model", model or str(ROOT / "no-model.onnx")]
res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
lines = res.stdout.strip().splitlines()
out = json.loads(lines[-1]) if lines else {}
has_trt = importlib.util.find_spec("tensorrt") is not None
if has_trt and model:
    check(res.returncode == 0 and out.get("ok") is True, f"TensorRT profile ({time.perf_counter() - t0:.1f} s): "
          + json.dumps({k: out.get(k) for k in ("latency", "peak_memory_bytes", "device", "runtime_version")})[:600])
else:
    check(len(lines) == 1 and res.returncode != 0 and out.get("ok") is False,
          f"trt_bench.py without {'TensorRT' if not has_trt else 'a model'}: exit {res.returncode}, {lines[-1] if lines else res.stderr[-300:]}")
sys.exit(1 if failed else 0)
