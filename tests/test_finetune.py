"""Distillation fine-tuning: it learns, writes checkpoints atomically and resumes exactly."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hwcompress.data import DataSplits, Split
from hwcompress.finetune import FinetuneResult, finetune, kd_loss
from hwcompress.prune import uniform_prune

torch.set_num_threads(1)
SHAPE = (1, 1, 8, 8)


def _split(n: int, seed: int) -> Split:
    """Class k = a bright 2x2 patch at position k of a 4x4 grid of patches, plus noise (4 classes)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n).astype(np.int64)
    x = rng.normal(0, 0.3, (n, 1, 8, 8)).astype(np.float32)
    for i, k in enumerate(y):
        r, c = divmod(int(k), 2)
        x[i, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 1.0
    return Split(x, y)


def _splits() -> DataSplits:
    return DataSplits(
        train=_split(512, 0), val=_split(128, 1), calib=_split(16, 2), test=_split(128, 3),
        num_classes=4, input_shape=(1, 8, 8), mean=0.0, std=1.0, source="synthetic", digest="synthetic-1",
    )


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )


class _Interrupting(nn.Module):
    """A teacher that stops the run on its ``stop_at``-th call (to simulate a killed job)."""

    def __init__(self, inner: nn.Module, stop_at: int) -> None:
        super().__init__()
        self.inner, self.calls, self.stop_at = inner, 0, stop_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self.inner(x)


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    t = _net()
    res = finetune(t, None, _splits(), epochs=2, lr=0.05, batch_size=32, progress=False, test=False)
    assert res.val_accuracy > 0.9
    return t.eval()


def test_kd_loss_terms() -> None:
    s = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    ce = nn.functional.cross_entropy(s, y)
    assert torch.allclose(kd_loss(s, None, y, temperature=4.0, alpha=0.9), ce)
    assert torch.allclose(kd_loss(s, s.clone(), y, temperature=4.0, alpha=0.9), 0.1 * ce, atol=1e-6)


def test_distillation_recovers_a_pruned_student(teacher: nn.Module, tmp_path: Path) -> None:
    student = uniform_prune(teacher, 0.25, SHAPE)
    before = copy.deepcopy(student.state_dict())
    ckpt = tmp_path / "ft" / "ckpt.pt"
    res = finetune(student, teacher, _splits(), epochs=2, lr=0.02, batch_size=32, progress=True, checkpoint=ckpt)
    assert isinstance(res, FinetuneResult) and res.epochs == 2 and res.resumed_from_epoch == 0
    assert res.val_accuracy > 0.9 and res.test_accuracy is not None and res.test_accuracy > 0.9
    assert res.seconds > 0 and np.isfinite(res.train_loss)
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())  # trained in place
    assert [p.name for p in ckpt.parent.iterdir()] == ["ckpt.pt"]
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 2
    # a finished checkpoint with the same settings: nothing left to train
    again = finetune(student, teacher, _splits(), epochs=2, lr=0.02, batch_size=32, progress=False, checkpoint=ckpt)
    assert again.resumed_from_epoch == 2 and again.val_accuracy == res.val_accuracy


def test_resume_after_interruption_is_exact(teacher: nn.Module, tmp_path: Path) -> None:
    base = uniform_prune(teacher, 0.5, SHAPE)
    kw = dict(epochs=2, lr=0.02, batch_size=64, progress=False, test=False)
    straight = copy.deepcopy(base)
    finetune(straight, teacher, _splits(), checkpoint=tmp_path / "a.pt", **kw)  # type: ignore[arg-type]

    ckpt = tmp_path / "b.pt"
    interrupted = copy.deepcopy(base)
    with pytest.raises(KeyboardInterrupt):  # dies in epoch 2 (512 / 64 = 8 batches per epoch)
        finetune(interrupted, _Interrupting(teacher, 11), _splits(), checkpoint=ckpt, **kw)  # type: ignore[arg-type]
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    resumed = copy.deepcopy(base)
    res = finetune(resumed, teacher, _splits(), checkpoint=ckpt, **kw)  # type: ignore[arg-type]
    assert res.resumed_from_epoch == 1
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
