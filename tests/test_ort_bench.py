"""profilers/ort_bench.py with real ONNX Runtime on real exported models (fresh subprocesses)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PROFILERS = Path(__file__).resolve().parent.parent / "profilers"
FAST = ["--warmup", "2", "--min-runs", "5", "--min-seconds", "0", "--max-seconds", "2"]
LATENCY_KEYS = {"median_ms", "p10_ms", "p90_ms", "mean_ms", "std_ms", "cv", "robust_cv", "n", "min_ms", "max_ms"}


def run_bench(model: Path, *extra: str, folder: Path = PROFILERS) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, str(folder / "ort_bench.py"), "--model", str(model), *FAST, *extra],
        capture_output=True, text=True, timeout=120,
    )
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"expected one JSON line on stdout, got {proc.stdout!r} (stderr {proc.stderr[-500:]})"
    return proc.returncode, json.loads(lines[0])


@pytest.fixture(scope="module")
def zoo_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    from hwcompress.export import export_onnx
    from hwcompress.zoo import ZOO_NAMES, build_model

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("zoo")
    return {n: export_onnx(build_model(n), (1, 1, 28, 28), folder / f"{n}.onnx") for n in ZOO_NAMES}


def _save(graph: Any, path: Path) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("name", ["vgg-small", "resnet-20", "mobilenetv2-small"])
def test_result_schema(zoo_models: dict[str, Path], name: str) -> None:
    from hwcompress.profiling.adapters import get_adapter

    model = zoo_models[name]
    rc, out = run_bench(model, "--threads", "1", "--graph-optimization", "all", "--seed", "3")
    assert rc == 0, out
    assert out["ok"] is True
    assert set(out["latency"]) == LATENCY_KEYS
    lat = out["latency"]
    assert lat["n"] >= 5 and 0 < lat["min_ms"] <= lat["p10_ms"] <= lat["median_ms"] <= lat["p90_ms"] <= lat["max_ms"]
    assert out["peak_memory_bytes"] > 0
    assert out["memory"]["method"] in {"clear_refs+VmHWM", "VmHWM", "VmRSS-samples"}
    assert out["model_bytes"] == model.stat().st_size
    assert out["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert out["load_ms"] > 0
    assert out["runtime"] == "onnxruntime" and out["runtime_version"]
    assert out["device"] and out["device_info"]["cores"] >= 1
    assert out["threads"] == 1
    assert out["settings"] == {"warmup_runs": 2, "min_runs": 5, "min_seconds": 0.0, "max_runs": 5000,
                               "max_seconds": 2.0, "seed": 3, "per_node": False,
                               "graph_optimization": "all", "provider": "CPUExecutionProvider"}
    assert out["profiler_version"] == get_adapter("onnxruntime").profiler_version()
    assert out["timestamp"].endswith("+00:00")
    assert out["inputs"] == [{"name": "input", "shape": [1, 1, 28, 28], "dtype": "float32"}]
    assert "per_node" not in out


def test_per_node_and_copied_folder(zoo_models: dict[str, Path], tmp_path: Path) -> None:
    for f in ("ort_bench.py", "benchcore.py"):  # works from any folder, next to nothing else
        shutil.copy(PROFILERS / f, tmp_path / f)
    rc, out = run_bench(zoo_models["resnet-20"], "--per-node", folder=tmp_path)
    assert rc == 0, out
    per_node = out["per_node"]
    assert per_node["runs"] >= 5
    convs = [n for n in per_node["nodes"] if n["op_type"] == "Conv"]
    assert len(convs) >= 19  # ResNet-20's convolutions (BN/ReLU fused into them)
    assert all(n["mean_us"] >= 0 and n["calls_per_run"] == 1 for n in per_node["nodes"])
    assert per_node["total_us"] == pytest.approx(sum(n["mean_us"] for n in per_node["nodes"]))


def test_two_inputs_int_and_symbolic_batch(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["y"], ["yf"], to=TensorProto.FLOAT), helper.make_node("Add", ["x", "yf"], ["out"])],
        "two_inputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("y", TensorProto.INT64, [1, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])],
    )
    rc, out = run_bench(_save(graph, tmp_path / "two.onnx"))
    assert rc == 0, out
    assert out["inputs"] == [{"name": "x", "shape": [1, 4], "dtype": "float32"},
                             {"name": "y", "shape": [1, 4], "dtype": "int64"}]


def test_string_input_cannot_be_fed(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["out"])], "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, [1])],
        [helper.make_tensor_value_info("out", TensorProto.STRING, [1])],
    )
    rc, out = run_bench(_save(graph, tmp_path / "strings.onnx"))
    assert rc == 3
    assert out["ok"] is False and out["kind"] == "model"
    assert "'text'" in out["error"] and "tensor(string)" in out["error"]
    assert "\n" not in out["error"]


def test_symbolic_non_batch_axis_refused(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["out"])], "symbolic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "width"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, "width"])],
    )
    rc, out = run_bench(_save(graph, tmp_path / "sym.onnx"))
    assert rc == 3 and out["kind"] == "model"
    assert "'x'" in out["error"] and "axis 1" in out["error"] and "width" in out["error"]


def test_corrupt_model(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    rc, out = run_bench(bad)
    assert rc == 3
    assert out["ok"] is False and out["kind"] == "model"
    assert out["error"].startswith("cannot load model: ")


def test_missing_model_and_bad_arguments(tmp_path: Path) -> None:
    rc, out = run_bench(tmp_path / "nope.onnx")
    assert rc == 3 and "does not exist" in out["error"]
    rc, out = run_bench(tmp_path / "nope.onnx", "--graph-optimization", "fast")
    assert rc == 2 and out["kind"] == "usage" and "--graph-optimization" in out["error"]
    rc, out = run_bench(tmp_path / "nope.onnx", "--provider", "NoSuchExecutionProvider")
    assert rc == 4 and out["kind"] == "environment" and "NoSuchExecutionProvider" in out["error"]
