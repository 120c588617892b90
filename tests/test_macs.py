"""MACs/params counter against hand counts and Torch-Pruning's counter."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn

from hwcompress.macs import count_macs, layer_macs
from hwcompress.zoo import build_model

torch.set_num_threads(1)
SHAPE = (1, 1, 28, 28)


def test_single_conv_by_hand() -> None:
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)  # 16x16 -> 8x8
    macs, params = count_macs(conv, (1, 3, 16, 16))
    assert macs == 8 * 8 * 8 * (3 * 3 * 3)
    assert params == 8 * 3 * 3 * 3 + 8


def test_depthwise_and_grouped_conv_by_hand() -> None:
    dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
    assert count_macs(dw, (1, 16, 10, 10)) == (16 * 10 * 10 * 9, 16 * 9)
    g = nn.Conv2d(16, 32, 1, groups=4, bias=False)
    assert count_macs(g, (1, 16, 10, 10))[0] == 32 * 10 * 10 * (16 // 4)


def test_linear_and_batch_scaling() -> None:
    fc = nn.Linear(64, 10)
    assert count_macs(fc, (1, 64)) == (640, 650)
    assert count_macs(fc, (4, 64))[0] == 4 * 640  # MACs are for the whole input shape


def test_vgg_first_conv_by_hand() -> None:
    model = build_model("vgg-small")
    per_layer = layer_macs(model, SHAPE)
    assert per_layer["features.0.0"] == 64 * 28 * 28 * (1 * 3 * 3)
    assert per_layer["features.1.0"] == 64 * 28 * 28 * (64 * 3 * 3)
    assert per_layer["classifier"] == 256 * 10
    assert count_macs(model, SHAPE)[1] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["vgg-small", "resnet-20", "mobilenetv2-small"])
def test_matches_torch_pruning_counter(name: str) -> None:
    """Per conv/linear layer, tp's count = our MACs + one add per output element for a bias."""
    model = build_model(name)
    ours = layer_macs(model, SHAPE)
    example = torch.zeros(SHAPE)
    _, tp_params, tp_layers, _ = tp.utils.count_ops_and_params(model, example, layer_wise=True)
    for lname, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            out_elems = ours[lname] // ((m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]) if isinstance(m, nn.Conv2d) else m.out_features
            bias = out_elems if m.bias is not None else 0
            assert tp_layers[m] == ours[lname] + bias, lname
    assert count_macs(model, SHAPE)[1] == tp_params
