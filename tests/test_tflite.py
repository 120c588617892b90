"""PyTorch -> .tflite with per-layer precision (litert-torch + ai-edge-quantizer), run in LiteRT.

The conversion tests need the optional extra (pip install 'hwcompress[tflite]') and skip
without it; the dependency check and the policy checks run everywhere.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import quant_helpers

from hwcompress.errors import MissingDependencyError, PolicyError
from hwcompress.quantize import uniform_policy
from hwcompress.targets import load_target
from hwcompress.tflite import require_tflite, tflite_available, tflite_scope, to_tflite, weight_layers

torch = pytest.importorskip("torch")
needs_tflite = pytest.mark.skipif(
    not tflite_available(), reason="litert-torch / ai-edge-quantizer not installed (pip install 'hwcompress[tflite]')"
)


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "litert_torch" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"litert-torch.*pip install 'hwcompress\[tflite\]'"):
        require_tflite()
    from hwcompress.zoo.models import VGGSmall

    with pytest.raises(MissingDependencyError):
        to_tflite(VGGSmall(), (1, 1, 28, 28), tmp_path / "m.tflite", uniform_policy("fp32"), np.zeros((1, 1, 28, 28), np.float32))
    assert not (tmp_path / "m.tflite").exists()


def test_scope_follows_module_path() -> None:
    from hwcompress.zoo.models import ResNet20, VGGSmall

    assert tflite_scope(VGGSmall(), "features.1.0") == (
        "hwcompress.zoo.models.VGGSmall/torch.nn.modules.container.Sequential_features/"
        "torch.nn.modules.container.Sequential_1/torch.nn.modules.conv.Conv2d_0"
    )
    assert tflite_scope(ResNet20(), "layers.3.shortcut.0").endswith(
        "hwcompress.zoo.models.BasicBlock_3/torch.nn.modules.container.Sequential_shortcut/torch.nn.modules.conv.Conv2d_0"
    )
    assert weight_layers(VGGSmall())[-1] == "classifier"


@needs_tflite
def test_policy_is_checked_before_conversion(tmp_path: Path) -> None:
    from hwcompress.zoo.models import VGGSmall

    pi = dataclasses.replace(load_target("raspberry-pi-4"), precisions=("fp32", "int8"))
    x = np.zeros((1, 1, 28, 28), np.float32)
    with pytest.raises(PolicyError, match=r"features\.7\.0.*int4.*raspberry-pi-4"):
        to_tflite(VGGSmall(), (1, 1, 28, 28), tmp_path / "m.tflite", uniform_policy("int8", {"features.7.0": "int4"}), x, target=pi)
    with pytest.raises(PolicyError, match="nonexistent"):
        to_tflite(VGGSmall(), (1, 1, 28, 28), tmp_path / "m.tflite", uniform_policy("int8", {"nonexistent": "fp32"}), x)


@needs_tflite
def test_mixed_precision_tflite_runs_in_litert(tmp_path: Path) -> None:
    from hwcompress.evaluate import predict_logits
    from hwcompress.tflite import tflite_accuracy, tflite_layer_precisions, tflite_logits, tflite_op_counts

    splits = quant_helpers.small_splits()
    model = quant_helpers.tiny_vgg()
    policy = uniform_policy("int8", {"features.0.0": "fp32", "features.7.0": "int4", "classifier": "fp16"})
    out = to_tflite(model, (1, 1, 28, 28), tmp_path / "m.tflite", policy, splits.calib.x, target=load_target("raspberry-pi-4"))
    got = tflite_layer_precisions(out, model)
    assert got == {name: policy.precision.get(name, "int8") for name in weight_layers(model)}
    counts = tflite_op_counts(out)
    assert counts["QUANTIZE"] >= 1 and counts["DEQUANTIZE"] >= 2  # float <-> int8 boundaries, int4 and fp16 weights
    ref = predict_logits(model, splits.test.x)
    y = tflite_logits(out, splits.test.x)
    assert np.mean(y.argmax(1) == ref.argmax(1)) >= 0.93
    torch_acc = float(np.mean(ref.argmax(1) == splits.test.y))
    assert tflite_accuracy(out, splits.test) >= torch_acc - 0.03
