"""The runtime backends (profiler adapters): every registered runtime answers the host-side
questions, and a target with an unknown runtime fails in one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from hwcompress.device_check import install_command
from hwcompress.errors import ModelError, TargetError
from hwcompress.profiling.adapters import (
    ProfilerAdapter,
    backend_for,
    find_adapter,
    get_adapter,
    runtime_names,
)
from hwcompress.profiling.runtimes import precision_sidecar
from hwcompress.quantize import QuantOptions, uniform_policy
from hwcompress.targets import load_target, with_connection

#: runtime -> (device_suffix, per_node, remote_by_default, needs_cuda, needs_torch_model)
EXPECTED = {
    "onnxruntime": (".onnx", True, False, False, False),
    "tflite": (".tflite", False, True, False, True),
    "tensorrt": (".onnx", False, True, True, False),
}


def test_builtin_runtimes_in_order() -> None:
    assert runtime_names()[:3] == ["onnxruntime", "tflite", "tensorrt"]


@pytest.mark.parametrize("runtime", runtime_names())
def test_every_runtime_answers_the_backend_questions(runtime: str) -> None:
    b = get_adapter(runtime)
    assert isinstance(b, ProfilerAdapter) and find_adapter(runtime) is b and b.runtime == runtime
    assert b.device_suffix in b.model_suffixes and b.artifact_file == "model" + b.device_suffix
    for flag in (b.per_node, b.remote_by_default, b.needs_cuda, b.needs_torch_model, b.detect_reduce_range):
        assert isinstance(flag, bool)
    assert b.display_name and b.script.endswith(".py")
    QuantOptions(**b.quant_defaults)  # valid QuantOptions fields
    for kwargs in ({}, {"externally_managed": True}, {"jetpack": "6"}, {"arch": "armv7l"}):
        hint = b.install_command("python3", **kwargs)
        assert hint and "\n" not in hint and hint == install_command(runtime, "python3", **kwargs)
    if runtime in EXPECTED:
        assert (b.device_suffix, b.per_node, b.remote_by_default, b.needs_cuda, b.needs_torch_model) == EXPECTED[runtime]


def test_backend_for_target() -> None:
    for name in ("x86-cpu", "raspberry-pi-4", "jetson-nano"):
        t = load_target(name)
        assert backend_for(t) is get_adapter(t.runtime)


def test_remote_by_default_decides_a_host_override() -> None:
    assert with_connection(load_target("x86-cpu"), host="h").connection.kind == "local"
    assert with_connection(load_target("jetson-nano"), host="h").connection.kind == "ssh"


def test_quant_defaults_per_runtime() -> None:
    trt = QuantOptions.for_target(load_target("jetson-nano"))
    assert (trt.activation, trt.symmetric_activations, trt.reduce_range) == ("int8", True, False)
    assert QuantOptions.for_target(load_target("jetson-nano"), reduce_range=True).reduce_range
    pi = QuantOptions.for_target(load_target("raspberry-pi-4"))  # remote CPU: 7-bit weights
    assert (pi.activation, pi.symmetric_activations, pi.reduce_range) == ("uint8", False, True)


def test_unknown_runtime_is_one_line_target_error() -> None:
    t = dataclasses.replace(load_target("x86-cpu"), runtime="coreml")
    for call in (lambda: backend_for(t), lambda: QuantOptions.for_target(t), lambda: with_connection(t, host="h")):
        with pytest.raises(TargetError) as info:
            call()
        msg = str(info.value)
        assert "'coreml'" in msg and "onnxruntime, tflite, tensorrt" in msg and "\n" not in msg
    assert install_command("coreml") == "python3 -m pip install coreml"  # no adapter: a plain pip hint


def test_tflite_device_file_needs_the_torch_model(tmp_path: Path) -> None:
    t = load_target("raspberry-pi-4")
    with pytest.raises(ModelError, match="give the PyTorch model"):
        backend_for(t).device_file(None, (1, 1, 28, 28), tmp_path / "m", t, fp32_onnx=tmp_path / "m.onnx")


def test_onnx_device_files(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 26 * 26, 10)).eval()
    shape = (1, 1, 28, 28)
    ort, trt = load_target("x86-cpu"), load_target("jetson-nano")
    fp32 = backend_for(ort).device_file(model, shape, tmp_path / "base", ort)
    assert fp32 == tmp_path / "base.onnx" and fp32.is_file()
    assert backend_for(trt).device_file(None, shape, tmp_path / "x", trt, fp32_onnx=fp32) == fp32  # fp32 as given
    assert not precision_sidecar(fp32).exists()
    policy = uniform_policy("fp16")
    q = backend_for(ort).device_file(None, shape, tmp_path / "q-ort", ort, policy, fp32_onnx=fp32)
    assert q == tmp_path / "q-ort.onnx" and q.is_file() and not precision_sidecar(q).exists()
    q = backend_for(trt).device_file(None, shape, tmp_path / "q-trt", trt, policy, fp32_onnx=fp32)
    assert q == tmp_path / "q-trt.onnx" and json.loads(precision_sidecar(q).read_text())["default_precision"] == "fp16"
    q = backend_for(ort).device_file(model, shape, tmp_path / "q2", ort, policy)  # fp32 exported beside it
    assert q.is_file() and (tmp_path / "q2-fp32.onnx").is_file()
    assert set(backend_for(ort).layer_precisions(q, model).values()) == {"fp16"}
    with pytest.raises(ModelError, match="give the PyTorch model or its fp32 ONNX file"):
        backend_for(ort).device_file(None, shape, tmp_path / "none", ort)
