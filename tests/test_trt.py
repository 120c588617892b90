"""profilers/trt_bench.py and the TensorRT adapter.

Where TensorRT or a CUDA GPU is missing (as on the CI machines) the clean-error paths are
tested: one JSON line, exit 4, locally and over SSH.  The engine tests run only with both.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from sshd import SshServer
from tiny_models import write_tiny_onnx

from hwcompress.errors import PolicyError, ProfilerError
from hwcompress.profiling.adapters import get_adapter, profilers_dir
from hwcompress.profiling.measure import measure
from hwcompress.profiling.remote import SshRunner
from hwcompress.profiling.runner import LocalRunner
from hwcompress.profiling.runtimes import TrtAdapter, precision_sidecar
from hwcompress.targets import load_target, parse_target

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _has_cuda() -> bool:
    for name in ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        return lib.cudaGetDeviceCount(ctypes.byref(count)) == 0 and count.value > 0
    return False


HAS_GPU = HAS_TRT and _has_cuda()
FAST = ["--warmup", "2", "--min-runs", "10", "--min-seconds", "0.02", "--max-seconds", "1"]


def bench(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    res = subprocess.run([sys.executable, str(profilers_dir() / "trt_bench.py"), *args], capture_output=True,
                         text=True, timeout=300, env=env)
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1, res.stdout + res.stderr
    return res.returncode, json.loads(lines[0])


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_onnx(tmp_path_factory.mktemp("trt") / "tiny.onnx")


# --------------------------------------------------------------------------- without TensorRT / CUDA
@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_missing_tensorrt_is_a_clean_error(onnx_model: Path) -> None:
    code, out = bench("--model", str(onnx_model), *FAST)
    assert code == 4 and out["ok"] is False and out["kind"] == "environment"
    assert out["error"].startswith("tensorrt is not installed") and "JetPack" in out["error"]


@pytest.mark.skipif(HAS_TRT or _has_cuda(), reason="tensorrt or CUDA is installed here")
def test_missing_cuda_is_a_clean_error(onnx_model: Path, tmp_path: Path) -> None:
    # An importable (empty) tensorrt package gets the script past the import, to the CUDA check.
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.py").write_text("__version__ = '0.0-stub'\n")
    import os

    env = {**os.environ, "PYTHONPATH": str(tmp_path), "LD_LIBRARY_PATH": ""}
    code, out = bench("--model", str(onnx_model), *FAST, env=env)
    assert code == 4 and out["kind"] == "environment"
    assert "CUDA" in out["error"]


@pytest.mark.parametrize(
    ("value", "words"),
    [('{"a": "bf16"}', "'bf16'"), ("{not json", "not a JSON object"), ("/nonexistent/p.json", "readable JSON"),
     ('{"precision": ["a"]}', "must be an object")],
)
def test_bad_layer_precisions_are_usage_errors(onnx_model: Path, value: str, words: str) -> None:
    code, out = bench("--model", str(onnx_model), "--layer-precisions", value)
    assert code == 2 and out["kind"] == "usage" and words in out["error"]


def test_measure_without_tensorrt_raises_profiler_error(onnx_model: Path) -> None:
    if HAS_GPU:
        pytest.skip("TensorRT and CUDA are installed here")
    with pytest.raises(ProfilerError, match=r"environment problem.*(tensorrt is not installed|CUDA)"):
        measure(onnx_model, load_target("cuda-gpu"), runner=LocalRunner())


def test_remote_tensorrt_missing_over_ssh(sshd: SshServer, onnx_model: Path) -> None:
    if HAS_TRT:
        pytest.skip("tensorrt is installed here")
    target = parse_target(tomllib.loads(sshd.target_toml("tensorrt")), "test", "loop-trt")
    with SshRunner(target.connection) as runner, pytest.raises(ProfilerError, match="tensorrt is not installed"):
        measure(onnx_model, target, runner=runner)


# --------------------------------------------------------------------------- adapter
def test_adapter_arguments_and_sidecar(tmp_path: Path) -> None:
    target = load_target("jetson-orin-nano")
    adapter = get_adapter("tensorrt")
    assert isinstance(adapter, TrtAdapter)
    model = write_tiny_onnx(tmp_path / "m.onnx")
    args = adapter.args(model, target)
    assert args[args.index("--workspace-mb") + 1] == "1024" and "--layer-precisions" not in args
    precision_sidecar(model).write_text(json.dumps({"default_precision": "fp16", "precision": {"features.0": "fp32"}}))
    args = adapter.args(model, target)
    inline = json.loads(args[args.index("--layer-precisions") + 1])
    assert inline == {"default_precision": "fp16", "precision": {"features.0": "fp32"}}
    precision_sidecar(model).write_text(json.dumps({"precision": {"features.0": "int8"}}))
    with pytest.raises(PolicyError, match="supports fp32, fp16"):
        adapter.args(model, load_target("jetson-nano"))  # the Nano has no INT8


# --------------------------------------------------------------------------- with TensorRT and a GPU
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs TensorRT and a CUDA GPU")
def test_engine_fp32_fp16_and_constraints(onnx_model: Path, tmp_path: Path) -> None:
    cache = ["--engine-cache", str(tmp_path / "engines")]
    code, fp32 = bench("--model", str(onnx_model), *FAST, *cache)
    assert code == 0 and fp32["ok"] and fp32["runtime"] == "tensorrt", fp32
    assert fp32["latency"]["n"] >= 10 and fp32["peak_memory_bytes"] >= 0 and not fp32["build"]["cached"]
    code, again = bench("--model", str(onnx_model), *FAST, *cache)
    assert again["build"]["cached"] is True
    layers = json.dumps({"default_precision": "fp16", "precision": {"features.0": "fp32"}})
    code, mixed = bench("--model", str(onnx_model), *FAST, *cache, "--layer-precisions", layers, "--per-node")
    assert code == 0 and mixed["build"]["fp16"] and mixed["build"]["constrained_layers"] >= 1, mixed
    assert mixed["per_node"]["nodes"]
    code, bad = bench("--model", str(onnx_model), *FAST, *cache, "--layer-precisions", '{"nope.layer": "fp16"}')
    assert code == 2 and "nope.layer" in bad["error"]
    m = measure(onnx_model, load_target("cuda-gpu"), runner=LocalRunner())
    assert m.runtime == "tensorrt" and m.latency.median_ms > 0
