"""Channel pruning on Torch-Pruning's dependency graph: groups, policies, export, save/load, similarity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from hwcompress import prune
from hwcompress.errors import ModelError, PolicyError, UnsupportedLayerError
from hwcompress.macs import count_macs
from hwcompress.records import CompressionPolicy, LayerInfo
from hwcompress.similarity import logit_similarity, similarity
from hwcompress.zoo import build_model

torch.set_num_threads(1)
SHAPE = (1, 1, 28, 28)
ZOO = ["vgg-small", "resnet-20", "mobilenetv2-small"]


def _x(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *SHAPE[1:], generator=torch.Generator().manual_seed(seed))


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give batch norms non-trivial statistics so that pruning bugs change outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


class ConcatNet(nn.Module):
    """A model defined only here: two branches joined by torch.cat, then flatten + linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.left = nn.Sequential(nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32 * 14 * 14, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        return self.fc(torch.flatten(self.head(x), 1))


class ChannelFold(nn.Module):
    """Sums the two halves of the channels: a reshape on channels Torch-Pruning cannot follow."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, 2, c // 2, h, w).sum(1)


class FoldNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.fold = ChannelFold()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.relu(self.fold(torch.relu(self.conv1(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    torch.manual_seed(0)
    return {name: _randomise_bn(build_model(name)) for name in ZOO}


# --------------------------------------------------------------------------- layer table
@pytest.mark.parametrize("name", ZOO)
def test_layer_table_rows_and_classifier(models: dict[str, Any], name: str) -> None:
    model = models[name]
    rows = prune.layer_table(model, SHAPE)
    groups = prune.prunable_groups(model, SHAPE)
    assert all(isinstance(r, LayerInfo) for r in rows)
    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [r.name for r in rows] == convs
    by_name = {r.name: r for r in rows}
    assert by_name["classifier"].prunable is False and by_name["classifier"].group == -1
    assert [g.index for g in groups] == list(range(len(groups)))
    for g in groups:
        assert g.layers[0] == g.name
        for layer in g.layers:
            assert by_name[layer].group == g.index and by_name[layer].prunable
            assert by_name[layer].out_channels == g.channels
        assert g.macs == sum(by_name[n].macs for n in (*g.layers, *g.consumers))
    assert sum(r.macs for r in rows) == count_macs(model, SHAPE)[0]
    assert LayerInfo.from_dict(rows[0].to_dict()) == rows[0]


def test_resnet_groups_couple_residual_adds(models: dict[str, Any]) -> None:
    groups = {g.name: g for g in prune.prunable_groups(models["resnet-20"], SHAPE)}
    stage1 = groups["stem.0"]
    assert set(stage1.layers) == {"stem.0", "layers.0.conv2", "layers.1.conv2", "layers.2.conv2"}
    assert "layers.3.shortcut.0" in stage1.consumers
    assert set(groups["layers.3.conv2"].layers) == {"layers.3.conv2", "layers.3.shortcut.0", "layers.4.conv2", "layers.5.conv2"}
    assert "classifier" in groups["layers.6.conv2"].consumers
    assert len(groups) == 12  # 3 stage groups + 9 inner block groups
    assert prune.PruneGroup.from_dict(stage1.to_dict()) == stage1


def test_mobilenet_depthwise_goes_with_its_producer(models: dict[str, Any]) -> None:
    groups = {g.name: g for g in prune.prunable_groups(models["mobilenetv2-small"], SHAPE)}
    g = groups["features.2.block.0.0"]
    assert g.layers == ("features.2.block.0.0", "features.2.block.1.0") and g.depthwise
    assert groups["features.0.0"].layers == ("features.0.0", "features.1.block.0.0")


# --------------------------------------------------------------------------- policies
def test_keep_count_rounding() -> None:
    assert prune.keep_count(64, 0.5, 8) == 32
    assert prune.keep_count(64, 0.55, 8) == 32  # 35.2 -> nearest multiple
    assert prune.keep_count(64, 0.01, 8) == 8  # never below one multiple
    assert prune.keep_count(22, 0.95, 8) == 22  # 20.9 -> 24: never above the original
    assert prune.keep_count(24, 0.99, 16) == 16
    assert prune.keep_count(6, 0.5, 8) == 6  # narrower than one multiple: untouched
    assert prune.keep_count(10, 0.5) == 5
    assert prune.keep_count(10, 1.0, 4) == 10
    with pytest.raises(PolicyError):
        prune.keep_count(10, 0.0)


@pytest.mark.parametrize("name", ZOO)
def test_apply_policy_keeps_original_and_rounds(models: dict[str, Any], name: str) -> None:
    model = models[name]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = prune.prunable_groups(model, SHAPE)
    keep = {g.name: 0.3 + 0.6 * (i % 3) / 2 for i, g in enumerate(groups)}
    pruned: Any = prune.apply_policy(model, CompressionPolicy(keep=keep), SHAPE, channel_multiple=8)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # original untouched
    got = prune.group_channels(pruned, SHAPE)
    for g in groups:
        assert got[g.name] == prune.keep_count(g.channels, keep[g.name], 8)
        assert got[g.name] % 8 == 0 or got[g.name] == g.channels
    assert pruned(_x()).shape == (4, 10)
    assert count_macs(pruned, SHAPE)[0] < count_macs(model, SHAPE)[0]


def test_full_keep_is_identity(models: dict[str, Any]) -> None:
    model = models["resnet-20"]
    same = prune.apply_policy(model, CompressionPolicy(keep={"stem.0": 1.0}), SHAPE, channel_multiple=8)
    with torch.no_grad():
        assert torch.equal(same(_x()), model(_x()))


def test_l1_keeps_the_largest_filters() -> None:
    torch.manual_seed(0)
    model: Any = _randomise_bn(build_model("vgg-small"))
    conv = model.features[0][0]
    big = [3, 10, 40, 63]
    with torch.no_grad():
        conv.weight.mul_(0.01)
        conv.weight[big] *= 1000.0
    pruned: Any = prune.apply_policy(model, CompressionPolicy(keep={"features.0.0": 4 / 64}), SHAPE, importance="l1")
    kept = pruned.features[0][0].weight
    assert kept.shape[0] == 4
    assert torch.allclose(kept, conv.weight[big])


def test_pruned_equals_masked_original(models: dict[str, Any]) -> None:
    """Removing channels = zeroing their inputs in every consumer (BN + ReLU outputs aside)."""
    model = models["vgg-small"]
    pruned: Any = prune.apply_policy(model, CompressionPolicy(keep={"features.3.0": 0.5}), SHAPE)
    w_before = model.features[3][0].weight.detach()
    w_after = pruned.features[3][0].weight.detach()
    kept = [int(torch.nonzero((w_before == row).all(dim=(1, 2, 3)))[0]) for row in w_after]
    masked: Any = _copy(model)
    dropped = sorted(set(range(128)) - set(kept))
    with torch.no_grad():
        masked.features[4][0].weight[:, dropped] = 0.0
        assert torch.allclose(pruned(_x()), masked(_x()), atol=1e-5)


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


@pytest.mark.parametrize("importance", ["l2", "bn", "taylor"])
def test_other_importances(models: dict[str, Any], importance: str) -> None:
    model = models["resnet-20"]
    batches = [(np.random.default_rng(i).standard_normal((8, *SHAPE[1:])).astype(np.float32), np.arange(8) % 10) for i in range(2)]
    policy = CompressionPolicy(keep={"stem.0": 0.5, "layers.4.conv1": 0.5})
    pruned: Any = prune.apply_policy(model, policy, SHAPE, importance=importance, example_batches=batches if importance == "taylor" else None)
    ch = prune.group_channels(pruned, SHAPE)
    assert ch["stem.0"] == 8 and ch["layers.4.conv1"] == 16
    assert all(p.grad is None for p in model.parameters())


def test_policy_errors(models: dict[str, Any]) -> None:
    model = models["vgg-small"]
    with pytest.raises(PolicyError, match=r"features\.0\.0"):
        prune.apply_policy(model, CompressionPolicy(keep={"nope": 0.5}), SHAPE)
    with pytest.raises(PolicyError, match="not prunable"):
        prune.apply_policy(model, CompressionPolicy(keep={"classifier": 0.5}), SHAPE)
    with pytest.raises(PolicyError, match=r"group stem\.0"):
        prune.apply_policy(models["resnet-20"], CompressionPolicy(keep={"layers.0.conv2": 0.5}), SHAPE)
    with pytest.raises(PolicyError, match="example_batches"):
        prune.apply_policy(model, CompressionPolicy(keep={"features.0.0": 0.5}), SHAPE, importance="taylor")
    with pytest.raises(PolicyError, match="importance"):
        prune.apply_policy(model, CompressionPolicy(), SHAPE, importance="random")


def test_uniform_prune_quarters_vgg_macs(models: dict[str, Any]) -> None:
    model = models["vgg-small"]
    pruned: Any = prune.uniform_prune(model, 0.5, SHAPE, channel_multiple=8)
    ratio = count_macs(pruned, SHAPE)[0] / count_macs(model, SHAPE)[0]
    assert 0.24 < ratio < 0.26  # 50% of channels -> ~4x fewer MACs


def test_global_magnitude_prune_reaches_target(models: dict[str, Any]) -> None:
    model = models["resnet-20"]
    pruned: Any = prune.global_magnitude_prune(model, 0.5, SHAPE, channel_multiple=4)
    ratio = count_macs(pruned, SHAPE)[0] / count_macs(model, SHAPE)[0]
    assert 0.3 < ratio <= 0.5
    assert all(c % 4 == 0 for c in prune.group_channels(pruned, SHAPE).values())
    assert pruned(_x()).shape == (4, 10)


# --------------------------------------------------------------------------- other models
def test_concat_model_in_tests_only() -> None:
    torch.manual_seed(0)
    model = _randomise_bn(ConcatNet())
    groups = {g.name: g for g in prune.prunable_groups(model, SHAPE)}
    assert set(groups) == {"stem.0", "left.0", "right.0", "head.0"}
    assert groups["left.0"].consumers == ("head.0",) and groups["right.0"].consumers == ("head.0",)
    pruned: Any = prune.uniform_prune(model, 0.5, SHAPE, channel_multiple=4)
    assert prune.group_channels(pruned, SHAPE) == {"stem.0": 8, "left.0": 4, "right.0": 12, "head.0": 16}
    assert pruned.head[0].in_channels == 16 and pruned.fc.in_features == 16 * 14 * 14
    assert pruned(_x()).shape == (4, 10)


def test_unsupported_layer_is_named() -> None:
    model: Any = FoldNet().eval()
    with pytest.raises(UnsupportedLayerError, match=r"'fold' \(ChannelFold\)"):
        prune.prunable_groups(model, SHAPE)
    with pytest.raises(UnsupportedLayerError, match="fold"):
        prune.apply_policy(model, CompressionPolicy(keep={"conv1": 0.5}), SHAPE)
    # the other group is still usable
    assert [g.name for g in prune.prunable_groups(model, SHAPE, strict=False)] == ["conv2"]
    pruned: Any = prune.apply_policy(model, CompressionPolicy(keep={"conv2": 0.5}), SHAPE)
    assert pruned.conv2.out_channels == 8 and pruned(_x()).shape == (4, 10)


# --------------------------------------------------------------------------- export, save, similarity
@pytest.mark.parametrize("dynamic", [False, True])
def test_pruned_onnx_matches_torch(models: dict[str, Any], tmp_path: Path, dynamic: bool) -> None:
    ort = pytest.importorskip("onnxruntime")
    from hwcompress.export import export_onnx

    pruned: Any = prune.uniform_prune(models["resnet-20"], 0.5, SHAPE, channel_multiple=8)
    path = export_onnx(pruned, SHAPE, tmp_path / "m.onnx", dynamic_batch=dynamic)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = _x(3 if dynamic else 1)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = pruned(x).numpy()
    assert np.abs(got - want).max() < 1e-4


def test_save_and_load_pruned(models: dict[str, Any], tmp_path: Path) -> None:
    pruned: Any = prune.uniform_prune(models["mobilenetv2-small"], 0.5, SHAPE)
    path = prune.save_pruned(pruned, tmp_path / "sub" / "p.pt", meta={"input_shape": list(SHAPE)})
    assert sorted(p.name for p in path.parent.iterdir()) == ["p.pt"]  # atomic: no temp file left
    loaded, meta = prune.load_pruned(path, with_meta=True)
    assert meta == {"input_shape": list(SHAPE)}
    with torch.no_grad():
        assert torch.equal(loaded(_x()), pruned.eval()(_x()))
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="not written by hwcompress"):
        prune.load_pruned(tmp_path / "other.pt")


def test_similarity(models: dict[str, Any]) -> None:
    model = models["vgg-small"]
    x = _x(16).numpy()
    assert similarity(model, model, x) == pytest.approx(1.0)
    pruned: Any = prune.uniform_prune(model, 0.25, SHAPE)
    s = similarity(pruned, model, x, batch_size=5)
    assert 0.0 <= s < 1.0
    a = np.eye(3, dtype=np.float32)
    assert logit_similarity(a, a) == pytest.approx(1.0)
    assert logit_similarity(a, -a) == pytest.approx(0.0)
    assert logit_similarity(a, a[[1, 2, 0]]) == pytest.approx(0.0)
