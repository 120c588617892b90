"""Per-layer precision on ONNX: graph structure (op counts, initializer types) and numerics in ORT."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import quant_helpers
from quant_helpers import small_splits

from hwcompress.errors import PolicyError
from hwcompress.quantize import (
    QuantOptions,
    has_vnni,
    layer_precisions,
    module_name_from_node,
    op_counts,
    quantizable_layers,
    quantize_onnx,
    resolve_precisions,
    uniform_policy,
)
from hwcompress.targets import load_target

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def fmnist_small():  # type: ignore[no-untyped-def]
    return small_splits()


@pytest.fixture(scope="module")
def tiny_vgg():  # type: ignore[no-untyped-def]
    return quant_helpers.tiny_vgg()


@pytest.fixture(scope="module")
def x86():  # type: ignore[no-untyped-def]
    return load_target("x86-cpu")


@pytest.fixture(scope="module")
def vgg_onnx(tiny_vgg, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    from hwcompress.export import export_onnx

    return export_onnx(tiny_vgg, (1, 1, 28, 28), tmp_path_factory.mktemp("q") / "vgg.onnx")


@pytest.fixture(scope="module")
def float_logits(vgg_onnx: Path, fmnist_small) -> np.ndarray:  # type: ignore[no-untyped-def]
    from hwcompress.evaluate import onnx_logits

    return onnx_logits(vgg_onnx, fmnist_small.test.x)


def _graph(path: Path):  # type: ignore[no-untyped-def]
    return onnx.load(str(path)).graph


def _weight_source(graph, node_name: str):  # type: ignore[no-untyped-def]
    """(producer op type or 'initializer', TensorProto data type of the stored weight)."""
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    node = next(n for n in graph.node if n.name == node_name)
    w = node.input[1]
    if w in inits:
        return "initializer", inits[w].data_type
    src = producers[w]
    return src.op_type, inits[src.input[0]].data_type


def _agreement(path: Path, x: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    from hwcompress.evaluate import onnx_logits

    y = onnx_logits(path, x)
    return float(np.abs(y - ref).max()), float(np.mean(y.argmax(1) == ref.argmax(1)))


# --------------------------------------------------------------------------- names and policies
@pytest.mark.parametrize(
    ("node", "module"),
    [
        ("/features/features.0/features.0.0/Conv", "features.0.0"),
        ("/layers/layers.3/shortcut/shortcut.0/Conv", "layers.3.shortcut.0"),
        ("/features/features.1/block/block.0/block.0.0/Conv", "features.1.block.0.0"),
        ("/classifier/Gemm", "classifier"),
        ("/Conv", ""),
        ("node_conv2d_3", ""),
    ],
)
def test_module_name_from_node(node: str, module: str) -> None:
    assert module_name_from_node(node) == module


@pytest.mark.parametrize("name", ["vgg-small", "resnet-20", "mobilenetv2-small"])
def test_quantizable_layers_use_torch_module_names(name: str, tmp_path: Path) -> None:
    from hwcompress.export import export_onnx
    from hwcompress.zoo import build_model

    model = build_model(name)
    path = export_onnx(model, (1, 1, 28, 28), tmp_path / "m.onnx")
    layers = quantizable_layers(path, model)
    expected = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert {layer.name for layer in layers} == expected
    assert all(layer.module == layer.name and layer.params > 0 for layer in layers)
    assert quantizable_layers(path)[0].name == layers[0].name  # the same without the model


def test_unsupported_precision_is_refused(vgg_onnx: Path, x86, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    narrow = dataclasses.replace(x86, precisions=("fp32", "int8"))
    policy = uniform_policy("int8", {"features.7.0": "int4"})
    with pytest.raises(PolicyError, match=r"features\.7\.0.*int4.*x86-cpu.*fp32, int8"):
        quantize_onnx(vgg_onnx, tmp_path / "q.onnx", policy, np.zeros((1, 1, 28, 28), np.float32), narrow)
    assert not (tmp_path / "q.onnx").exists()


def test_unknown_layer_is_refused(vgg_onnx: Path, x86) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PolicyError, match=r"features\.99"):
        resolve_precisions(quantizable_layers(vgg_onnx), uniform_policy("int8", {"features.99": "fp32"}), x86)


def test_onnx_node_names_work_as_policy_keys(vgg_onnx: Path) -> None:
    layers = quantizable_layers(vgg_onnx)
    got = resolve_precisions(layers, uniform_policy("fp32", {"/classifier/Gemm": "int8"}))
    assert got["classifier"] == "int8" and got["features.0.0"] == "fp32"


def test_vnni_detection_and_options(x86) -> None:  # type: ignore[no-untyped-def]
    assert has_vnni("flags\t: fpu sse avx2 avx512_vnni\n")
    assert has_vnni("flags : avx2 avx_vnni\n")
    assert not has_vnni("flags : fpu avx avx2 fma\n")
    assert QuantOptions.for_target(x86, reduce_range=False).reduce_range is False
    assert QuantOptions.for_target(x86, reduce_range=True).reduce_range is True
    trt = dataclasses.replace(x86, runtime="tensorrt")
    opts = QuantOptions.for_target(trt)
    assert opts.activation == "int8" and opts.symmetric_activations and not opts.reduce_range
    with pytest.raises(PolicyError):
        QuantOptions(activation="int16")


# --------------------------------------------------------------------------- graph structure + numerics
def test_all_int8_graph_and_numerics(vgg_onnx: Path, float_logits, fmnist_small, x86, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from hwcompress.evaluate import onnx_accuracy

    out = quantize_onnx(vgg_onnx, tmp_path / "int8.onnx", uniform_policy("int8"), fmnist_small.calib.x, x86, reduce_range=True)
    onnx.checker.check_model(str(out))
    counts = op_counts(out)
    assert counts["QuantizeLinear"] >= 7 and counts["DequantizeLinear"] >= 14
    g = _graph(out)
    for layer in quantizable_layers(vgg_onnx):
        src, dtype = _weight_source(g, layer.node)
        assert (src, dtype) == ("DequantizeLinear", onnx.TensorProto.INT8), layer.name
    # reduce_range: 7-bit weights
    for init in g.initializer:
        if init.data_type == onnx.TensorProto.INT8 and init.name.endswith("_quantized"):
            w = onnx.numpy_helper.to_array(init)
            assert np.abs(w.astype(np.int16)).max() <= 64, init.name  # 7-bit range, symmetric
    assert set(layer_precisions(out).values()) == {"int8"}
    diff, agree = _agreement(out, fmnist_small.test.x, float_logits)
    assert agree >= 0.95 and diff < 0.25 * float(np.abs(float_logits).max())
    acc_fp32 = onnx_accuracy(vgg_onnx, fmnist_small.test)
    assert onnx_accuracy(out, fmnist_small.test) >= acc_fp32 - 0.02


def test_mixed_policy_keeps_fp32_layers_float(vgg_onnx: Path, float_logits, fmnist_small, x86, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    policy = uniform_policy("int8", {"features.0.0": "fp32", "classifier": "fp32"})
    out = quantize_onnx(vgg_onnx, tmp_path / "mixed.onnx", policy, fmnist_small.calib.x, x86)
    g = _graph(out)
    layers = {layer.name: layer for layer in quantizable_layers(vgg_onnx)}
    assert _weight_source(g, layers["features.0.0"].node) == ("initializer", onnx.TensorProto.FLOAT)
    assert _weight_source(g, layers["classifier"].node) == ("initializer", onnx.TensorProto.FLOAT)
    first = next(n for n in g.node if n.name == layers["features.0.0"].node)
    assert first.input[0] == g.input[0].name  # no Q/DQ in front of the float first conv
    assert _weight_source(g, layers["features.4.0"].node)[0] == "DequantizeLinear"
    assert layer_precisions(out, None) == {name: policy.precision.get(name, "int8") for name in layers}
    _, agree = _agreement(out, fmnist_small.test.x, float_logits)
    assert agree >= 0.95


def test_int4_weights_native_opset21(vgg_onnx: Path, float_logits, fmnist_small, x86, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    policy = uniform_policy("fp32", {"features.6.0": "int4", "features.7.0": "int4"})
    out = quantize_onnx(vgg_onnx, tmp_path / "int4.onnx", policy, fmnist_small.calib.x, x86)
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    assert next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 21
    assert all(o.domain != "com.microsoft" for o in m.opset_import)
    counts = op_counts(out)
    assert counts.get("DequantizeLinear") == 2 and "QuantizeLinear" not in counts  # weight-only
    int4 = [i for i in m.graph.initializer if i.data_type == onnx.TensorProto.INT4]
    assert len(int4) == 4  # two weights + two zero points
    assert layer_precisions(out) == {
        name: ("int4" if name in policy.precision else "fp32") for name in layer_precisions(vgg_onnx)
    }
    assert out.stat().st_size < vgg_onnx.stat().st_size
    _, agree = _agreement(out, fmnist_small.test.x, float_logits)
    assert agree >= 0.9


def test_fp16_layers_cast_in_and_out(vgg_onnx: Path, float_logits, fmnist_small, x86, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    policy = uniform_policy("fp32", {"features.3.0": "fp16", "features.4.0": "fp16", "classifier": "fp16"})
    out = quantize_onnx(vgg_onnx, tmp_path / "fp16.onnx", policy, fmnist_small.calib.x, x86)
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    casts = [n for n in m.graph.node if n.op_type == "Cast"]
    assert len(casts) == 6
    assert sum(1 for i in m.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16) >= 3
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [k for k, v in layer_precisions(out).items() if v == "fp16"] == ["features.3.0", "features.4.0", "classifier"]
    diff, agree = _agreement(out, fmnist_small.test.x, float_logits)
    assert diff < 0.05 and agree >= 0.99


def test_all_fp32_policy_changes_nothing(vgg_onnx: Path, float_logits, fmnist_small, x86, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = quantize_onnx(vgg_onnx, tmp_path / "fp32.onnx", uniform_policy("fp32"), fmnist_small.calib.x, x86)
    assert "QuantizeLinear" not in op_counts(out)
    diff, _ = _agreement(out, fmnist_small.test.x[:50], float_logits[:50])
    assert diff < 1e-5


def test_resnet_mixed_precisions_run(fmnist_small, x86, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Residual Adds, 1x1 shortcuts and all four precisions in one graph still load and run."""
    from hwcompress.evaluate import onnx_logits
    from hwcompress.export import export_onnx
    from hwcompress.zoo.models import ResNet20

    torch.manual_seed(0)
    model = ResNet20(widths=(8, 16, 32), blocks=1).eval()
    src = export_onnx(model, (1, 1, 28, 28), tmp_path / "res.onnx")
    policy = uniform_policy("int8", {"stem.0": "fp32", "layers.1.shortcut.0": "int4", "layers.2.conv1": "fp16"})
    out = quantize_onnx(src, tmp_path / "res-q.onnx", policy, fmnist_small.calib.x, x86)
    onnx.checker.check_model(str(out))
    got = layer_precisions(out, model)
    assert got["stem.0"] == "fp32" and got["layers.1.shortcut.0"] == "int4" and got["layers.2.conv1"] == "fp16"
    assert got["layers.0.conv1"] == "int8"
    y = onnx_logits(out, fmnist_small.test.x[:20])
    assert y.shape == (20, 10) and np.isfinite(y).all()
