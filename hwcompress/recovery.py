"""A short distillation recovery of a pruned candidate before it is scored (stage 1's reward signal).

The accuracy of a pruned model right after pruning (even with its BatchNorm statistics
re-estimated) ranks candidates by how little they *lost*, not by how well they *recover*: it
prefers cutting wide layers hard, while fine-tuning favours models that keep capacity.  A few
hundred distillation steps from the original, on a fixed set of training images whose teacher
logits are computed once, move each candidate towards what the full fine-tune will make of it
(the "short-term fine-tune" of NetAdapt and EagleEye).  ``tools/bench_reward.py`` measures how well
each signal predicts the accuracy after the full fine-tune.

loss = alpha x T^2 x KL(teacher / T || student / T) + (1 - alpha) x CE(student, y)
(:func:`hwcompress.finetune.kd_loss`; ``alpha`` 1 for label-free searches), SGD with Nesterov
momentum, cosine learning rate over the steps, one torch thread (the profiler has the other core).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from hwcompress.errors import UsageError

if TYPE_CHECKING:
    from torch import nn

    from hwcompress.data import Split

#: Images the recovery draws its batches from (cycled): enough for a few hundred steps without repeats.
MAX_IMAGES = 8192


@dataclass(frozen=True)
class Recovery:
    """What every candidate's recovery uses: the same images, teacher logits, steps and settings."""

    x: np.ndarray  # images, float32, N x C x H x W
    y: np.ndarray  # labels (unused when alpha == 1)
    teacher_logits: np.ndarray  # N x classes, float32
    steps: int
    batch_size: int = 32
    lr: float = 0.01
    temperature: float = 4.0
    alpha: float = 0.9
    seed: int = 0


def make_recovery(
    teacher: nn.Module, train: Split, steps: int, *, batch_size: int = 32, lr: float = 0.01, seed: int = 0,
    labels: bool = True,
) -> Recovery:
    """The recovery of ``steps`` steps: ``min(steps x batch_size, MAX_IMAGES, len(train))`` training images
    drawn with ``seed``, their teacher logits computed once (eval mode).  ``labels`` False: pure
    distillation (alpha 1), for label-free searches."""
    import torch

    from hwcompress.evaluate import torch_threads

    if steps < 1 or batch_size < 1 or lr <= 0:
        raise UsageError(f"recovery needs steps >= 1, batch_size >= 1 and lr > 0 (got {steps}, {batch_size}, {lr})")
    n = min(steps * batch_size, MAX_IMAGES, len(train))
    if n == 0:
        raise UsageError("the training split is empty; a recovery needs training images")
    idx = np.sort(np.random.RandomState(seed).permutation(len(train))[:n])
    x = np.ascontiguousarray(train.x[idx], dtype=np.float32)
    y = np.asarray(train.y[idx], dtype=np.int64)
    teacher.eval()
    out = []
    with torch_threads(1), torch.no_grad():
        for i in range(0, n, 256):
            out.append(teacher(torch.from_numpy(x[i : i + 256])).numpy())
    logits = np.concatenate(out).astype(np.float32)
    return Recovery(x=x, y=y, teacher_logits=logits, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                    alpha=0.9 if labels else 1.0)


def recover(model: nn.Module, rec: Recovery) -> None:
    """Train ``model`` in place for ``rec.steps`` distillation steps (batches in a fixed order, the same for
    every candidate); returns it in eval mode.  Deterministic for a given model and ``rec``."""
    import torch

    from hwcompress.evaluate import torch_threads
    from hwcompress.finetune import kd_loss

    n = len(rec.x)
    order = np.random.RandomState(rec.seed + 1).permutation(n)
    opt = torch.optim.SGD(model.parameters(), lr=rec.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=rec.steps)
    model.train()
    with torch_threads(1):
        torch.manual_seed(rec.seed)
        for step in range(rec.steps):
            start = (step * rec.batch_size) % n
            idx = order[start : start + rec.batch_size]
            if len(idx) < rec.batch_size:  # wrap around the fixed set
                idx = np.concatenate([idx, order[: rec.batch_size - len(idx)]])
            xb = torch.from_numpy(rec.x[idx])
            tb = torch.from_numpy(rec.teacher_logits[idx])
            yb = torch.from_numpy(rec.y[idx])
            loss = kd_loss(model(xb), tb, yb, temperature=rec.temperature, alpha=rec.alpha)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
