"""trt_bench.py picks its TensorRT API path by capability (issue 20), checked against the attribute
sets of real bindings recorded in tests/data/trt_api/ (8.2 is derived from NVIDIA's API change
list, see its ``source``; the README there says how the others were recorded)."""

from __future__ import annotations

import importlib.util
import json
import types
from pathlib import Path
from typing import Any

import pytest

from hwcompress.profiling.adapters import profilers_dir

DATA = Path(__file__).parent / "data" / "trt_api"


def _trt_bench() -> Any:
    spec = importlib.util.spec_from_file_location("trt_bench_under_test", profilers_dir() / "trt_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tb = _trt_bench()


def binding(file: str) -> types.SimpleNamespace:
    """A module object with exactly the recorded classes and their attribute names."""
    record = json.loads((DATA / file).read_text())
    mod = types.SimpleNamespace(__version__=record["version"])
    for name, attrs in record["classes"].items():
        if attrs is not None:
            setattr(mod, name, type(name, (), dict.fromkeys(attrs)))
    return mod


EXPECTED = {
    # file: (typing, explicit_batch, workspace, io, constraint_flag, dynamic_range, fast_fp16_query, device_memory)
    "trt-8.2.1-derived.json": ("weak", True, "max_workspace_size", "bindings", "OBEY_PRECISION_CONSTRAINTS", True,
                               True, "device_memory_size"),
    "trt-8.4.1.5.json": ("weak", True, "memory_pool", "bindings", "OBEY_PRECISION_CONSTRAINTS", True, True,
                         "device_memory_size"),
    "trt-8.5.3.1.json": ("weak", True, "memory_pool", "tensors", "OBEY_PRECISION_CONSTRAINTS", True, True,
                         "device_memory_size"),
    "trt-8.6.1.json": ("weak", True, "memory_pool", "tensors", "OBEY_PRECISION_CONSTRAINTS", True, True,
                       "device_memory_size"),
    "trt-10.3.0.json": ("weak", False, "memory_pool", "tensors", "OBEY_PRECISION_CONSTRAINTS", True, True,
                        "device_memory_size_v2"),
    "trt-10.13.0.35.json": ("weak", False, "memory_pool", "tensors", "OBEY_PRECISION_CONSTRAINTS", True, True,
                            "device_memory_size_v2"),
    "trt-11.4.0.106.json": ("strong", False, "memory_pool", "tensors", None, False, False, "device_memory_size_v2"),
}


def test_every_recorded_binding_has_an_expectation() -> None:
    assert sorted(p.name for p in DATA.glob("*.json")) == sorted(EXPECTED)


@pytest.mark.parametrize("file", sorted(EXPECTED))
def test_api_selection_per_version(file: str) -> None:
    api = tb.select_api(binding(file))
    keys = ("typing", "explicit_batch", "workspace", "io", "constraint_flag", "dynamic_range", "fast_fp16_query",
            "device_memory")
    assert tuple(api[k] for k in keys) == EXPECTED[file]
    assert api["cast_layer"] == (file >= "trt-8.6" or file.startswith("trt-1"))  # add_cast arrived in 8.6


@pytest.mark.parametrize("file", sorted(EXPECTED))
def test_selected_names_exist_in_that_binding(file: str) -> None:
    # What the chosen path calls is in that version's recorded attribute set (and the other path's is not
    # required there).
    trt = binding(file)
    api = tb.select_api(trt)
    need = {"IBuilderConfig": ["set_memory_pool_limit" if api["workspace"] == "memory_pool" else "max_workspace_size"],
            "IExecutionContext": ["execute_async_v3", "set_tensor_address", "set_input_shape"]
            if api["io"] == "tensors" else ["execute_async_v2", "set_binding_shape", "get_binding_shape", "execute_v2"],
            "ICudaEngine": ["num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_shape",
                            "get_tensor_dtype"] if api["io"] == "tensors" else
            ["num_bindings", "get_binding_name", "binding_is_input", "get_binding_shape", "get_binding_dtype"],
            "Builder": ["create_network", "create_builder_config", "build_serialized_network",
                        "create_optimization_profile"],
            "OnnxParser": ["parse", "num_errors", "get_error"]}
    if api["typing"] == "weak":
        need["BuilderFlag"] = ["FP16", "INT8", api["constraint_flag"]]
        need["ILayer"] = ["precision", "name", "type", "num_outputs", "get_output"]
    else:
        need["NetworkDefinitionCreationFlag"] = ["STRONGLY_TYPED"]
        need["INetworkDefinition"] = ["add_cast", "mark_output", "unmark_output"]
        need["ILayer"] = ["set_input", "get_input", "num_inputs", "name", "type"]
        need["Weights"] = ["numpy", "dtype", "size"]
    for cls, names in need.items():
        missing = [n for n in names if not hasattr(getattr(trt, cls), n)]
        assert not missing, f"{file}: {cls} lacks {missing}"


def test_tensorrt_11_has_no_weak_typing_api() -> None:
    # The premise of the strongly typed path, as recorded from the 11.4 binding.
    trt = binding("trt-11.4.0.106.json")
    assert not any(hasattr(trt.BuilderFlag, n) for n in ("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "STRICT_TYPES"))
    assert not hasattr(trt.ILayer, "precision") and not hasattr(trt.ITensor, "set_dynamic_range")
    assert not hasattr(trt.Builder, "platform_has_fast_fp16")


def test_unknown_binding_is_an_environment_failure() -> None:
    trt = binding("trt-11.4.0.106.json")
    del trt.NetworkDefinitionCreationFlag
    with pytest.raises(tb.bc.BenchFailure) as info:
        tb.select_api(trt)
    assert info.value.kind == "environment" and "8.2" in str(info.value) and "11.x" in str(info.value)


def test_layer_plan_matches_path_segments() -> None:
    names = ["/features/features.0/Conv", "/features/features.0/Relu", "/features/features.10/Conv", "/fc/Gemm"]
    plan, unmatched = tb.layer_plan(names, {"default_precision": "fp32",
                                            "precision": {"features.0": "fp16", "fc": "int8", "nope": "fp16"}})
    assert plan == {"/features/features.0/Conv": "fp16", "/features/features.0/Relu": "fp16", "/fc/Gemm": "int8"}
    assert unmatched == ["nope"]


# --------------------------------------------------------------------------- strongly typed FP16 casts
# TensorRT does not run without a GPU, so the graph rewrite of cast_layers_to_fp16 (the 11.x path) is
# checked on a small stand-in of the network API: the same calls, a tensor's dtype following its producer.
class _DType:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


F32, F16 = _DType("float32"), _DType("float16")


class _Tensor:
    def __init__(self, name: str, producer: Any = None, dtype: _DType = F32) -> None:
        self.name, self.producer, self._dtype = name, producer, dtype

    @property
    def dtype(self) -> _DType:
        return self._dtype if self.producer is None else self.producer.out_dtype()


class _Weights:
    def __init__(self, arr: Any) -> None:
        import numpy as np

        self.arr = np.asarray(arr)
        self.size = self.arr.size
        self.dtype = F16 if self.arr.dtype == np.float16 else F32

    def numpy(self) -> Any:
        return self.arr


class _Layer:
    def __init__(self, name: str, kind: str, inputs: list[_Tensor], cast_to: _DType | None = None) -> None:
        self.name, self.type, self.inputs, self.cast_to = name, "LayerType." + kind, list(inputs), cast_to
        self.out = _Tensor(name + ":0", self)

    num_outputs = 1

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int) -> _Tensor:
        return self.inputs[i]

    def set_input(self, i: int, t: _Tensor) -> None:
        self.inputs[i] = t

    def get_output(self, j: int) -> _Tensor:
        return self.out

    def out_dtype(self) -> _DType:
        return self.cast_to or (self.inputs[0].dtype if self.inputs else F32)


class _Conv(_Layer):
    pass


class _Network:
    def __init__(self) -> None:
        self.layers: list[_Layer] = []
        self.outputs: list[_Tensor] = []

    def add(self, layer: _Layer) -> _Layer:
        self.layers.append(layer)
        return layer

    def add_cast(self, t: _Tensor, dtype: _DType) -> _Layer:
        return self.add(_Layer("cast", "CAST", [t], dtype))

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_output(self, i: int) -> _Tensor:
        return self.outputs[i]

    def mark_output(self, t: _Tensor) -> None:
        self.outputs.append(t)

    def unmark_output(self, t: _Tensor) -> None:
        self.outputs.remove(t)


def _fake_trt() -> types.SimpleNamespace:
    kinds = ("CONVOLUTION", "ACTIVATION", "SHUFFLE", "MATRIX_MULTIPLY", "CONSTANT", "CAST")
    return types.SimpleNamespace(LayerType=types.SimpleNamespace(**{k: "LayerType." + k for k in kinds}),
                                 float32=F32, float16=F16, Weights=_Weights, IConvolutionLayer=_Conv)


def _graph() -> tuple[_Network, dict[str, _Layer], _Tensor]:
    import numpy as np

    net = _Network()
    x = _Tensor("x")
    conv = net.add(_Conv("/features/features.0/Conv", "CONVOLUTION", [x]))
    conv.kernel = _Weights(np.ones((4, 1, 3, 3), np.float32))  # type: ignore[attr-defined]
    conv.bias = _Weights(np.zeros(0, np.float32))  # type: ignore[attr-defined]
    relu = net.add(_Layer("/features/features.0/Relu", "ACTIVATION", [conv.out]))
    flat = net.add(_Layer("/Flatten", "SHUFFLE", [relu.out]))
    const = net.add(_Layer("fc.weight", "CONSTANT", []))
    gemm = net.add(_Layer("/fc/Gemm", "MATRIX_MULTIPLY", [flat.out, const.out]))
    gemm.out.name = "y"
    net.mark_output(gemm.out)
    return net, {"conv": conv, "relu": relu, "flat": flat, "const": const, "gemm": gemm}, x


def test_fp16_casts_inside_the_network() -> None:
    net, L, x = _graph()
    layers = list(net.layers)
    keep: list[Any] = []
    assert tb.cast_layers_to_fp16(_fake_trt(), net, layers, [L["conv"].name, L["relu"].name, "/Flatten"], keep) == 2
    casts = [layer for layer in net.layers if layer.type == "LayerType.CAST"]
    assert [c.name for c in casts] == ["/features/features.0/Conv/hwc_to_fp16_0", "/features/features.0/Relu/hwc_to_fp32_0"]
    assert L["conv"].get_input(0).dtype is F16 and casts[0].get_input(0) is x
    assert L["relu"].get_input(0) is L["conv"].out and L["relu"].out.dtype is F16  # no cast pair between them
    assert L["flat"].get_input(0).dtype is F32 and L["flat"].get_input(0) is casts[1].out  # SHUFFLE is not cast
    assert L["conv"].kernel.dtype is F16 and keep and keep[0].dtype.name == "float16"  # type: ignore[attr-defined]
    assert L["conv"].bias.size == 0  # type: ignore[attr-defined]
    assert [t.name for t in net.outputs] == ["y"] and net.outputs[0].dtype is F32


def test_fp16_cast_of_the_output_layer_keeps_the_output_name_and_fp32() -> None:
    net, L, _ = _graph()
    assert tb.cast_layers_to_fp16(_fake_trt(), net, list(net.layers), ["/fc/Gemm"], []) == 1
    gemm = L["gemm"]
    assert gemm.get_input(0).dtype is F16 and gemm.get_input(1).dtype is F16  # activation and constant weights
    assert [t.name for t in net.outputs] == ["y"] and net.outputs[0].dtype is F32
    assert net.outputs[0].producer.type == "LayerType.CAST" and gemm.out.name == "y/fp16"


def test_strict_types_fallback_without_obey_precision_constraints() -> None:
    # If TensorRT 8.2 lacks OBEY_PRECISION_CONSTRAINTS (not checked against a real 8.2 binding), the
    # per-layer constraints use STRICT_TYPES, which every 8.x binding recorded here has.
    trt = binding("trt-8.2.1-derived.json")
    delattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS")
    assert tb.select_api(trt)["constraint_flag"] == "STRICT_TYPES"
