"""hwcompress.evaluate: PyTorch accuracy and the same accuracy through onnxruntime, on real Fashion-MNIST."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hwcompress.data import DataSplits, Split
from hwcompress.errors import FileMissingError, ModelError
from hwcompress.evaluate import accuracy, onnx_accuracy, onnx_logits, predict_logits, torch_threads
from hwcompress.export import export_onnx
from hwcompress.zoo.models import VGGSmall
from hwcompress.zoo.train import TrainConfig, train_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(fmnist_small: DataSplits) -> nn.Module:
    """A narrow VGG trained for two epochs on 2000 real images (about 70% accurate)."""
    torch.manual_seed(0)
    model = VGGSmall(widths=(8, 16, 32))
    train_model(model, fmnist_small, TrainConfig(epochs=2, lr=0.1, batch_size=64, threads=1), progress=False)
    return model


def test_accuracy_in_range_and_restores_mode(trained: nn.Module, fmnist_small: DataSplits) -> None:
    trained.train()
    acc = accuracy(trained, fmnist_small.test)
    assert trained.training  # mode restored
    assert 0.5 < acc <= 1.0
    # the same value in eval mode, any batch size, with a thread setting that is restored
    before = torch.get_num_threads()
    assert accuracy(trained, fmnist_small.test, batch_size=37, threads=2) == pytest.approx(acc)
    assert torch.get_num_threads() == before
    y = fmnist_small.test.y
    manual = float(np.mean(predict_logits(trained, fmnist_small.test.x).argmax(1) == y))
    assert manual == pytest.approx(acc)


def test_accuracy_limit(trained: nn.Module, fmnist_small: DataSplits) -> None:
    head = Split(fmnist_small.test.x[:100], fmnist_small.test.y[:100])
    assert accuracy(trained, fmnist_small.test, limit=100) == accuracy(trained, head)


def test_predict_logits_shape_and_batching(trained: nn.Module, fmnist_small: DataSplits) -> None:
    x = fmnist_small.val.x[:123]
    a = predict_logits(trained, x, batch_size=500)
    b = predict_logits(trained, x, batch_size=10)
    assert a.shape == (123, 10) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    with pytest.raises(ModelError):
        predict_logits(trained, x[:, 0])


def test_empty_split_is_an_error(trained: nn.Module) -> None:
    empty = Split(np.zeros((0, 1, 28, 28), np.float32), np.zeros(0, np.int64))
    with pytest.raises(ModelError):
        accuracy(trained, empty)


def test_wrong_input_shape_is_model_error(trained: nn.Module) -> None:
    bad = Split(np.zeros((4, 3, 28, 28), np.float32), np.zeros(4, np.int64))
    with pytest.raises(ModelError, match="failed"):
        accuracy(trained, bad)


def test_torch_threads_restores() -> None:
    before = torch.get_num_threads()
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


@pytest.mark.parametrize("dynamic", [False, True])
def test_onnx_accuracy_matches_torch(trained: nn.Module, fmnist_small: DataSplits, tmp_path: Path, dynamic: bool) -> None:
    path = export_onnx(trained, (1, 1, 28, 28), tmp_path / "m.onnx", dynamic_batch=dynamic)
    torch_acc = accuracy(trained, fmnist_small.test, limit=300)
    onnx_acc = onnx_accuracy(path, fmnist_small.test, threads=1, limit=300)
    assert onnx_acc == pytest.approx(torch_acc, abs=1 / 300 + 1e-9)  # at most one near-tie may flip
    logits = onnx_logits(path, fmnist_small.test.x[:50], batch_size=16)
    np.testing.assert_allclose(logits, predict_logits(trained, fmnist_small.test.x[:50]), rtol=1e-3, atol=1e-3)


def test_onnx_static_batch_pads_last_batch(trained: nn.Module, fmnist_small: DataSplits, tmp_path: Path) -> None:
    path = export_onnx(trained, (8, 1, 28, 28), tmp_path / "b8.onnx")
    x = fmnist_small.test.x[:21]  # 8 + 8 + 5 (padded)
    np.testing.assert_allclose(onnx_logits(path, x), predict_logits(trained, x), rtol=1e-3, atol=1e-3)


def test_onnx_errors(trained: nn.Module, fmnist_small: DataSplits, tmp_path: Path) -> None:
    with pytest.raises(FileMissingError):
        onnx_accuracy(tmp_path / "absent.onnx", fmnist_small.test)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load"):
        onnx_accuracy(tmp_path / "junk.onnx", fmnist_small.test)
    path = export_onnx(trained, (1, 1, 32, 32), tmp_path / "m32.onnx")
    with pytest.raises(ModelError, match="expects input"):
        onnx_accuracy(path, fmnist_small.test, limit=4)


def test_evaluate_imports_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, hwcompress.evaluate; print('torch' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "False"]
