"""profilers/tflite_bench.py with the real LiteRT interpreter on real .tflite flatbuffers."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hwcompress.profiling.adapters import get_adapter, profilers_dir
from hwcompress.profiling.measure import measure, parse_result
from hwcompress.profiling.runner import LocalRunner
from hwcompress.profiling.runtimes import TfliteAdapter
from hwcompress.records import Target
from hwcompress.targets import parse_target

pytest.importorskip("ai_edge_litert")
from tiny_models import write_tiny_onnx, write_tiny_tflite

FAST = ["--warmup", "2", "--min-runs", "10", "--min-seconds", "0.02", "--max-seconds", "1"]


def bench(*args: str, script: str = "tflite_bench.py") -> tuple[int, dict[str, Any]]:
    res = subprocess.run([sys.executable, str(profilers_dir() / script), *args], capture_output=True, text=True,
                         timeout=120)
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1, res.stdout + res.stderr  # exactly one JSON line on stdout
    return res.returncode, json.loads(lines[0])


def tflite_target(xnnpack: bool = True) -> Target:
    data = {"runtime": "tflite", "threads": 1, "options": {"xnnpack": xnnpack},
            "measure": {"warmup_runs": 2, "min_runs": 10, "min_seconds": 0.02, "max_seconds": 1.0, "max_rounds": 1,
                        "max_cv": 1.0}}
    return parse_target(data, "test", "tflite-local")


@pytest.mark.parametrize("kind", ["float32", "int8", "uint8"])
def test_inputs_fed_from_details(tmp_path: Path, kind: str) -> None:
    model = write_tiny_tflite(tmp_path / f"{kind}.tflite", kind)
    code, out = bench("--model", str(model), *FAST)
    assert code == 0 and out["ok"], out
    (inp,) = out["inputs"]
    assert inp["dtype"] == kind and inp["shape"] == [1, 28, 28, 1]
    if kind != "float32":
        assert inp["quantization"]["scale"] > 0
    assert out["runtime"] == "tflite" and out["runtime_version"].startswith("ai-edge-litert ")
    assert out["latency"]["n"] >= 10 and out["latency"]["median_ms"] > 0
    assert out["peak_memory_bytes"] > 0 and out["memory"]["method"]
    assert out["settings"]["xnnpack"] is True and out["graph"]["delegated"] is True


def test_no_xnnpack_uses_builtin_kernels(tmp_path: Path) -> None:
    model = write_tiny_tflite(tmp_path / "m.tflite")
    code, out = bench("--model", str(model), "--no-xnnpack", "--threads", "2", "--per-node", *FAST)
    assert code == 0, out
    assert out["settings"]["xnnpack"] is False and out["graph"]["delegated"] is False
    assert out["graph"]["ops"]["CONV_2D"] == 2 and out["threads"] == 2
    assert out["per_node"]["nodes"] == [] and "not available" in out["per_node"]["note"]


def test_same_schema_as_ort_bench(tmp_path: Path) -> None:
    target = tflite_target()
    _, t_out = bench("--model", str(write_tiny_tflite(tmp_path / "m.tflite")), *FAST)
    _, o_out = bench("--model", str(write_tiny_onnx(tmp_path / "m.onnx")), *FAST, script="ort_bench.py")
    shared = {"ok", "latency", "peak_memory_bytes", "memory", "load_ms", "model_bytes", "model_sha256", "runtime",
              "runtime_version", "device", "device_info", "threads", "settings", "inputs", "profiler_version",
              "timestamp", "phases"}
    assert shared <= set(t_out) and shared <= set(o_out)
    assert set(t_out["latency"]) == set(o_out["latency"])
    assert t_out["device"] == o_out["device"]
    m = parse_result("tflite_bench.py", t_out, target)
    assert m.runtime == "tflite" and re.match(r"tflite_bench \d+\.\d+\+[0-9a-f]{8}$", m.profiler_version)


@pytest.mark.parametrize(
    ("args", "code", "kind", "words"),
    [
        (["--model", "/nonexistent/m.tflite"], 3, "model", "does not exist"),
        (["--model", "BAD"], 3, "model", "cannot load model"),
        (["--model", "m.tflite", "--threads", "0"], 2, "usage", "--threads"),
        (["--model", "m.tflite", "--bogus"], 2, "usage", "unrecognized"),
    ],
)
def test_failures_are_one_json_line(tmp_path: Path, args: list[str], code: int, kind: str, words: str) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer")
    args = [str(bad) if a == "BAD" else a for a in args]
    got, out = bench(*args)
    assert got == code and out == {"ok": False, "kind": kind, "error": out["error"]}
    assert words in out["error"]


def test_measure_through_the_adapter(tmp_path: Path) -> None:
    assert isinstance(get_adapter("tflite"), TfliteAdapter)
    model = write_tiny_tflite(tmp_path / "m.tflite", "int8")
    m = measure(model, tflite_target(xnnpack=False), runner=LocalRunner())
    assert m.runtime == "tflite" and m.target == "tflite-local" and m.latency.n >= 10
    assert TfliteAdapter().runtime_args(tflite_target(False)) == ["--no-xnnpack"]


# --------------------------------------------------------------------------- interpreter fallback (issue 20)
def _shadow(folder: Path, *names: str) -> None:
    """Packages ``names`` in ``folder`` whose import fails, as on a device without them."""
    for name in names:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(f'raise ImportError("No module named {name!r} (hidden by the test)")\n')


def _bench_with_path(path: Path | str, *args: str) -> tuple[int, dict[str, Any]]:
    import os

    env = {**os.environ, "PYTHONPATH": str(path)}
    res = subprocess.run([sys.executable, str(profilers_dir() / "tflite_bench.py"), *args], capture_output=True,
                         text=True, timeout=120, env=env)
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1, res.stdout + res.stderr
    return res.returncode, json.loads(lines[0])


def test_interpreter_order_and_missing_message(tmp_path: Path) -> None:
    model = write_tiny_tflite(tmp_path / "m.tflite")
    code, out = bench("--model", str(model), *FAST)
    assert code == 0 and out["runtime_version"].startswith("ai-edge-litert ")  # first choice when present
    if importlib.util.find_spec("tflite_runtime") is not None or importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("tflite-runtime or tensorflow is installed here: the all-missing case cannot be shown")
    _shadow(tmp_path / "hide", "ai_edge_litert")
    code, out = _bench_with_path(tmp_path / "hide", "--model", str(model), *FAST)
    assert code == 4 and out["kind"] == "environment"
    # All three were tried, in order, and the hint names the venv route for an externally managed Python.
    err = out["error"]
    assert err.startswith("LiteRT is not installed (ai-edge-litert: ")
    assert err.index("ai-edge-litert:") < err.index("tflite-runtime:") < err.index("tensorflow:")
    assert "python3 -m venv" in err


def test_tensorflow_lite_fallback_runs_a_model(tmp_path: Path) -> None:
    # No TensorFlow here: a `tensorflow` package exposing ai-edge-litert's real interpreter under TF's public
    # names (tf.lite.Interpreter, tf.lite.experimental.OpResolverType) stands in for it, with the two LiteRT
    # packages hidden, so the profile runs through the tensorflow.lite branch on a real interpreter.
    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("tensorflow is installed here")
    hide, shim = tmp_path / "hide", tmp_path / "shim"
    _shadow(hide, "ai_edge_litert", "tflite_runtime")
    (shim / "tensorflow" / "lite").mkdir(parents=True)
    (shim / "tensorflow" / "__init__.py").write_text("__version__ = '0.0-shim'\nfrom tensorflow import lite\n")
    (shim / "tensorflow" / "lite" / "__init__.py").write_text(
        "import sys, types\n"
        f"sys.path[:] = [p for p in sys.path if p != {str(hide)!r}]  # un-hide the real package for the shim\n"
        "from ai_edge_litert.interpreter import Interpreter, OpResolverType\n"
        "experimental = types.SimpleNamespace(OpResolverType=OpResolverType)\n"
    )
    model = write_tiny_tflite(tmp_path / "m.tflite")
    code, out = _bench_with_path(f"{hide}:{shim}", "--model", str(model), *FAST)
    assert code == 0 and out["ok"], out
    assert out["runtime_version"] == "tensorflow 0.0-shim" and out["latency"]["n"] >= 10
