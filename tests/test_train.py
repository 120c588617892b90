"""Baseline training, the checkpoint cache and user models, on real Fashion-MNIST."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hwcompress.data import DataSplits
from hwcompress.errors import ModelError
from hwcompress.evaluate import accuracy
from hwcompress.zoo import ZOO_NAMES
from hwcompress.zoo.train import (
    TrainConfig,
    TrainResult,
    _augment,
    default_config,
    ensure_baseline,
    train_model,
)
from hwcompress.zoo.user import load_user_model

torch.set_num_threads(1)
TINY = TrainConfig(epochs=1, lr=0.1, batch_size=64, threads=1)

MODEL_SOURCE = """
from torch import nn

class Tiny(nn.Module):
    def __init__(self, in_channels=1, num_classes=10, width=16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.head(self.features(x))

def make(in_channels=1, num_classes=10):
    return Tiny(in_channels, num_classes)

def make_plain():
    return Tiny(1, 10)

def make_kwargs(**kw):
    return Tiny(**kw)

def broken(in_channels=1, num_classes=10):
    raise RuntimeError("factory exploded")

def not_a_module():
    return 42
"""


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "models_src" / "tiny_model.py"
    path.parent.mkdir()
    path.write_text(MODEL_SOURCE)
    return path


@pytest.fixture
def model_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A uniquely named importable module in the current working directory."""
    name = f"usermods_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(MODEL_SOURCE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


# --------------------------------------------------------------------------- config
def test_config_round_trip_and_digest() -> None:
    cfg = default_config("vgg-small")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    from dataclasses import replace

    assert replace(cfg, threads=1).result_digest() == cfg.result_digest()
    assert replace(cfg, channels_last=False).result_digest() == cfg.result_digest()
    assert replace(cfg, epochs=cfg.epochs + 1).result_digest() != cfg.result_digest()
    for name in ZOO_NAMES:
        assert default_config(name).epochs >= 2
    assert default_config("pkg.mod:factory").epochs >= 1


@pytest.mark.parametrize(
    "kwargs",
    [{"epochs": 0, "lr": 0.1}, {"epochs": 1, "lr": -1.0}, {"epochs": 1, "lr": 0.1, "optimizer": "lbfgs"},
     {"epochs": 1, "lr": 0.1, "schedule": "step"}, {"epochs": 1, "lr": 0.1, "label_smoothing": 1.5}],
)
def test_bad_config(kwargs: dict[str, object]) -> None:
    with pytest.raises(ModelError):
        TrainConfig(**kwargs)  # type: ignore[arg-type]


def test_augment_crops_and_flips() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    fill = torch.tensor([-7.0])
    same = _augment(x, TrainConfig(epochs=1, lr=0.1, crop_padding=0, flip=False), fill, gen)
    assert torch.equal(same, x)
    out = _augment(x.repeat(512, 1, 1, 1), TrainConfig(epochs=1, lr=0.1, crop_padding=2, flip=True), fill, gen)
    assert out.shape == (1024, 1, 6, 6)
    assert (out == -7.0).any()  # some crops show the padding value
    assert any(torch.equal(o, x[0]) for o in out[::2])  # some are unshifted and unflipped
    assert any(torch.equal(o, x[0].flip(2)) for o in out[::2])  # some are flipped only


# --------------------------------------------------------------------------- training
def test_train_model_learns(fmnist_small: DataSplits, model_file: Path) -> None:
    torch.manual_seed(0)
    model = load_user_model(f"{model_file}:make", None, in_channels=1, num_classes=10)
    before = torch.get_num_threads()
    res = train_model(model, fmnist_small, TrainConfig(epochs=2, lr=0.1, batch_size=64, threads=1), progress=True)
    assert isinstance(res, TrainResult) and res.epochs == 2 and len(res.history) == 2
    assert res.test_accuracy > 0.3 and res.val_accuracy > 0.3  # chance is 0.1
    assert res.test_accuracy == pytest.approx(accuracy(model, fmnist_small.test))
    assert res.seconds > 0 and not model.training and torch.get_num_threads() == before
    assert all(p.is_contiguous() for p in model.parameters())  # back from channels_last
    assert TrainResult.from_dict(res.to_dict()) == res


# --------------------------------------------------------------------------- ensure_baseline
def _few(s: DataSplits, n: int, digest: str) -> DataSplits:
    """The first ``n`` training images of ``s`` (and 64 val/test images), under another digest."""
    from hwcompress.data import Split

    return DataSplits(
        train=Split(s.train.x[:n], s.train.y[:n]), val=s.val.head(64), calib=s.calib, test=s.test.head(64),
        num_classes=s.num_classes, input_shape=s.input_shape, mean=s.mean, std=s.std, source="few", digest=digest,
    )


def test_ensure_baseline_caches(fmnist_small: DataSplits, model_file: Path, tmp_cache: Path) -> None:
    spec = f"{model_file}:make"
    fmnist_small = _few(fmnist_small, 512, "fewdigest0000512")
    first = ensure_baseline(spec, fmnist_small, cfg=TINY, progress=False)
    assert not first.from_cache and first.train_seconds > 0
    assert first.checkpoint.is_file() and first.checkpoint.parent == tmp_cache / "models"
    assert fmnist_small.digest in first.checkpoint.name
    meta = json.loads(first.checkpoint.with_suffix(".json").read_text())
    assert meta["result"]["test_accuracy"] == first.test_accuracy and meta["config"]["epochs"] == 1

    second = ensure_baseline(spec, fmnist_small, cfg=TINY, progress=False)
    assert second.from_cache and second.checkpoint == first.checkpoint
    assert (second.test_accuracy, second.val_accuracy, second.train_seconds) == (
        first.test_accuracy, first.val_accuracy, first.train_seconds)
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert accuracy(second.model, fmnist_small.test) == pytest.approx(first.test_accuracy)

    # threads do not change the cache key; another recipe does; force retrains
    from dataclasses import replace

    assert ensure_baseline(spec, fmnist_small, cfg=replace(TINY, threads=2), progress=False).from_cache
    forced = ensure_baseline(spec, fmnist_small, cfg=TINY, force=True, progress=False)
    assert not forced.from_cache and forced.checkpoint == first.checkpoint

    # a damaged cached checkpoint is retrained, not trusted
    first.checkpoint.write_bytes(b"garbage")
    again = ensure_baseline(spec, fmnist_small, cfg=TINY, progress=False)
    assert not again.from_cache and again.checkpoint.stat().st_size > 100


def test_ensure_baseline_zoo_model_cached_by_name(fmnist_small: DataSplits, tmp_cache: Path) -> None:
    # A zoo name on a few images, to check naming and the cache hit (full training is the slow test).
    few = _few(fmnist_small, 128, "fewdigest0000001")
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=64, threads=1)
    a = ensure_baseline("resnet-20", few, cfg=cfg, progress=False)
    assert a.name == "resnet-20" and a.checkpoint.name.startswith("resnet-20-fewdigest0000001-")
    b = ensure_baseline("resnet-20", few, cfg=cfg, progress=False)
    assert b.from_cache and not a.from_cache and b.config == cfg
    with pytest.raises(ModelError, match="unknown model"):
        ensure_baseline("vgg-huge", few, cfg=cfg)


def test_ensure_baseline_with_checkpoint(fmnist_small: DataSplits, model_module: str, tmp_path: Path, tmp_cache: Path) -> None:
    spec = f"{model_module}:make"
    torch.manual_seed(1)
    net = load_user_model(spec, None, in_channels=1, num_classes=10)
    train_model(net, fmnist_small, TINY, progress=False)
    ckpt = tmp_path / "user.pt"
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, ckpt)
    base = ensure_baseline(spec, fmnist_small, checkpoint=str(ckpt))
    assert base.from_cache and base.train_seconds == 0.0 and base.checkpoint == ckpt
    assert base.test_accuracy == pytest.approx(accuracy(net, fmnist_small.test))
    assert base.val_accuracy == pytest.approx(accuracy(net, fmnist_small.val))
    assert list((tmp_cache / "models").glob("eval-*.json"))  # evaluation is cached
    assert ensure_baseline(spec, fmnist_small, checkpoint=str(ckpt)).test_accuracy == base.test_accuracy


# --------------------------------------------------------------------------- user models
def test_user_model_from_module_and_file(model_module: str, model_file: Path, tmp_path: Path) -> None:
    a = load_user_model(f"{model_module}:make", None, in_channels=3, num_classes=5)
    assert a(torch.zeros(2, 3, 16, 16)).shape == (2, 5)
    b = load_user_model(f"{model_module}:make_plain", None, in_channels=3, num_classes=5)  # takes no kwargs
    assert b(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    c = load_user_model(f"{model_file}:make_kwargs", None, in_channels=2, num_classes=4)
    assert c(torch.zeros(1, 2, 8, 8)).shape == (1, 4)
    # a class works as a factory too
    d = load_user_model(f"{model_file}:Tiny", None, in_channels=1, num_classes=7)
    assert d(torch.zeros(1, 1, 8, 8)).shape == (1, 7) and not d.training


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "dataparallel"])
def test_user_model_checkpoint_formats(model_file: Path, tmp_path: Path, wrap: str) -> None:
    torch.manual_seed(5)
    src = load_user_model(f"{model_file}:make", None, in_channels=1, num_classes=10)
    for p in src.parameters():
        nn.init.normal_(p)
    sd = src.state_dict()
    obj = {
        "plain": sd,
        "state_dict": {"state_dict": sd, "optimizer": {}},
        "model": {"model": sd},
        "dataparallel": {f"module.{k}": v for k, v in sd.items()},
    }[wrap]
    torch.save(obj, tmp_path / "c.pt")
    m = load_user_model(f"{model_file}:make", str(tmp_path / "c.pt"), in_channels=1, num_classes=10)
    x = torch.randn(3, 1, 12, 12)
    src.eval()
    assert torch.allclose(m(x), src(x))


def test_user_model_errors(model_file: Path, model_module: str, tmp_path: Path) -> None:
    good = load_user_model(f"{model_file}:make", None, in_channels=1, num_classes=10)
    torch.save(good.state_dict(), tmp_path / "good.pt")
    torch.save({"conv.weight": torch.zeros(1), "fc.bias": torch.zeros(1)}, tmp_path / "keys.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    cases = [
        ("no colon here", None, "not 'package.module:factory'"),
        (f"{model_file}:", None, "not 'package.module:factory'"),
        (f"{tmp_path / 'absent.py'}:make", None, "does not exist"),
        ("no_such_module_xyz:make", None, "cannot import module"),
        (f"{model_module}:nope", None, "no callable 'nope'"),
        (f"{model_file}:broken", None, "factory exploded"),
        (f"{model_file}:not_a_module", None, "not a torch.nn.Module"),
        (f"{model_file}:make", str(tmp_path / "absent.pt"), "does not exist"),
        (f"{model_file}:make", str(tmp_path / "junk.pt"), "cannot load checkpoint"),
        (f"{model_file}:make", str(tmp_path / "list.pt"), "holds no state_dict"),
        (f"{model_file}:make", str(tmp_path / "keys.pt"), "missing features.0.weight"),
    ]
    for spec, ckpt, phrase in cases:
        with pytest.raises(ModelError) as exc:
            load_user_model(spec, ckpt, in_channels=1, num_classes=10)
        msg = str(exc.value)
        assert phrase in msg and "\n" not in msg, (spec, ckpt, msg)
    # the right keys with the wrong shapes (another number of classes) name the tensor
    with pytest.raises(ModelError, match=r"head\.weight is \(10, 32\) in the checkpoint but \(3, 32\)"):
        load_user_model(f"{model_file}:make", str(tmp_path / "good.pt"), in_channels=1, num_classes=3)
    bad_syntax = tmp_path / "bad_syntax.py"
    bad_syntax.write_text("def make(:\n")
    with pytest.raises(ModelError, match="importing"):
        load_user_model(f"{bad_syntax}:make", None, in_channels=1, num_classes=10)


# --------------------------------------------------------------------------- the bar (slow)
@pytest.mark.slow
@pytest.mark.parametrize(("name", "bar"), [("vgg-small", 0.92), ("resnet-20", 0.91)])
def test_default_config_reaches_the_bar(name: str, bar: float) -> None:
    """Full Fashion-MNIST with default_config (uses the default cache: fast once trained)."""
    from hwcompress.data import load_splits

    splits = load_splits()
    base = ensure_baseline(name, splits, progress=False)
    assert base.test_accuracy >= bar
    assert accuracy(base.model, splits.test) == pytest.approx(base.test_accuracy, abs=2e-3)
    assert np.isfinite(base.train_seconds)
