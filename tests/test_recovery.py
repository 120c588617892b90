"""The short distillation recovery a stage-1 candidate gets before it is scored (hwcompress.recovery)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hwcompress.data import Split
from hwcompress.errors import UsageError
from hwcompress.recovery import make_recovery, recover


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))


def _split(n: int = 256) -> Split:
    rng = np.random.RandomState(0)
    return Split(rng.rand(n, 1, 10, 10).astype(np.float32), rng.randint(0, 4, n).astype(np.int64))


def _kl(student: torch.nn.Module, teacher: torch.nn.Module, x: np.ndarray) -> float:
    with torch.no_grad():
        s = torch.log_softmax(student(torch.from_numpy(x)), 1)
        t = torch.log_softmax(teacher(torch.from_numpy(x)), 1)
    return float(torch.nn.functional.kl_div(s, t, reduction="batchmean", log_target=True))


def test_recovery_moves_the_student_towards_the_teacher_deterministically() -> None:
    teacher, train = _net(0).eval(), _split()
    rec = make_recovery(teacher, train, steps=60, batch_size=16, lr=0.05, seed=3)
    assert len(rec.x) == min(60 * 16, len(train)) and rec.teacher_logits.shape == (len(rec.x), 4)
    a, b = _net(1), _net(1)
    before = _kl(a.eval(), teacher, train.x)
    recover(a, rec)
    recover(b, rec)
    assert not a.training
    assert _kl(a, teacher, train.x) < 0.5 * before
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)  # the same candidate always gets the same score


def test_label_free_recovery_is_pure_distillation() -> None:
    rec = make_recovery(_net(0).eval(), _split(), steps=2, labels=False)
    assert rec.alpha == 1.0


@pytest.mark.parametrize("kw", [{"steps": 0}, {"steps": 5, "lr": 0.0}])
def test_bad_settings_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(UsageError):
        make_recovery(_net(0).eval(), _split(), **kw)  # type: ignore[arg-type]
