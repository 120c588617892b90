"""Fine-tuning of a pruned model with knowledge distillation from the original.

loss = alpha x T^2 x KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) x CE(student, y)

SGD with Nesterov momentum, learning rate on a cosine schedule over all steps (down to 0).
The student is trained in place.  With ``checkpoint`` the state (student weights, optimizer,
scheduler, finished epochs) is written atomically after every epoch; a later call with the
same settings and student shapes resumes after the last finished epoch.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hwcompress.errors import ModelError, UsageError

if TYPE_CHECKING:
    from torch import nn

    from hwcompress.data import DataSplits

log = logging.getLogger(__name__)
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class FinetuneResult:
    """Accuracies in [0, 1] after fine-tuning; ``test_accuracy`` is None when not measured."""

    val_accuracy: float
    test_accuracy: float | None
    seconds: float
    epochs: int
    train_loss: float
    resumed_from_epoch: int = 0


def kd_loss(
    student_logits: Any, teacher_logits: Any, labels: Any, *, temperature: float, alpha: float
) -> Any:
    """Distillation loss (see the module docstring); ``teacher_logits`` None gives plain cross-entropy."""
    import torch.nn.functional as F

    ce = F.cross_entropy(student_logits, labels)
    if teacher_logits is None or alpha == 0.0:
        return ce
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1), reduction="batchmean", log_target=True)
    return alpha * t * t * kl + (1.0 - alpha) * ce


def _shapes(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def finetune(
    student: nn.Module,
    teacher: nn.Module | None,
    splits: DataSplits,
    *,
    epochs: int = 1,
    lr: float = 0.01,
    temperature: float = 4.0,
    alpha: float = 0.9,
    batch_size: int = 128,
    threads: int | None = None,
    progress: bool = True,
    checkpoint: Path | None = None,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 0,
    train_limit: int | None = None,
    eval_limit: int | None = None,
    test: bool = True,
) -> FinetuneResult:
    """Train ``student`` in place for ``epochs`` on ``splits.train`` with distillation from ``teacher``
    (``teacher`` None: plain cross-entropy training).

    ``alpha``: weight of the distillation term in [0, 1]; ``temperature`` > 0.  Returns the
    validation accuracy (first ``eval_limit`` samples of ``splits.val``) and, with ``test``,
    the test accuracy.  ``train_limit`` uses only the first samples of the training split.
    """
    import torch

    from hwcompress.evaluate import accuracy, torch_threads
    from hwcompress.fsutil import atomic_write_bytes

    if epochs < 0:
        raise UsageError(f"epochs must be >= 0, got {epochs}")
    if lr <= 0 or batch_size < 1 or temperature <= 0 or not 0.0 <= alpha <= 1.0:
        raise UsageError(
            f"fine-tuning needs lr > 0, batch_size >= 1, temperature > 0 and 0 <= alpha <= 1 "
            f"(got lr={lr}, batch_size={batch_size}, temperature={temperature}, alpha={alpha})"
        )
    train = splits.train.head(train_limit)
    n = len(train)
    if n == 0 and epochs > 0:
        raise UsageError("the training split is empty; nothing to fine-tune on")
    steps_per_epoch = (n + batch_size - 1) // batch_size
    total_steps = max(1, epochs * steps_per_epoch)
    config = {
        "epochs": epochs, "lr": lr, "temperature": temperature, "alpha": alpha, "batch_size": batch_size,
        "momentum": momentum, "weight_decay": weight_decay, "seed": seed, "train_size": n,
        "data": getattr(splits, "digest", ""),
    }
    start = time.perf_counter()
    param = next(student.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    first_epoch = 0
    if checkpoint is not None and Path(checkpoint).is_file():
        first_epoch = _resume(Path(checkpoint), student, optimizer, scheduler, config)
    resumed = first_epoch
    if teacher is not None:
        teacher.eval()
    last_loss = float("nan")
    from hwcompress.progress import Ticker

    ticker = Ticker("fine-tune: steps", (epochs - first_epoch) * steps_per_epoch)
    with torch_threads(threads), _progress(progress) as bar:
        task = bar.add_task("fine-tune", total=(epochs - first_epoch) * steps_per_epoch, loss=float("nan")) if bar else None
        for epoch in range(first_epoch, epochs):
            student.train()
            order = np.random.default_rng(seed + epoch).permutation(n)
            running, seen = 0.0, 0
            for i in range(0, n, batch_size):
                idx = np.sort(order[i : i + batch_size])
                xb = torch.from_numpy(np.ascontiguousarray(train.x[idx], dtype=np.float32)).to(device)
                yb = torch.from_numpy(np.asarray(train.y[idx], dtype=np.int64)).to(device)
                with torch.no_grad():
                    tlogits = teacher(xb) if teacher is not None else None
                loss = kd_loss(student(xb), tlogits, yb, temperature=temperature, alpha=alpha)
                value = float(loss.detach())
                if not np.isfinite(value):
                    raise ModelError(f"fine-tuning diverged (loss {value} at epoch {epoch + 1}); lower the learning rate")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                running += value * len(idx)
                seen += len(idx)
                if bar is not None:
                    bar.update(task, advance=1, loss=running / seen, description=f"fine-tune {epoch + 1}/{epochs}")
                ticker.step(text=f"epoch {epoch + 1}/{epochs}, loss {running / seen:.3f}")
            last_loss = running / max(seen, 1)
            log.info("fine-tune epoch %d/%d: loss %.4f", epoch + 1, epochs, last_loss)
            ticker.mark(f"epoch {epoch + 1}/{epochs} done: loss {last_loss:.3f}")
            if checkpoint is not None:
                buf = io.BytesIO()
                torch.save(
                    {
                        "version": CHECKPOINT_VERSION, "epoch": epoch + 1, "config": config, "shapes": _shapes(student),
                        "student": student.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "loss": last_loss,
                    },
                    buf,
                )
                atomic_write_bytes(checkpoint, buf.getvalue())
    student.eval()
    val = accuracy(student, splits.val, threads=threads, limit=eval_limit) if len(splits.val) else float("nan")
    tst = accuracy(student, splits.test, threads=threads, limit=eval_limit) if test and len(splits.test) else None
    return FinetuneResult(
        val_accuracy=val,
        test_accuracy=tst,
        seconds=time.perf_counter() - start,
        epochs=epochs,
        train_loss=last_loss,
        resumed_from_epoch=resumed,
    )


def _resume(path: Path, student: nn.Module, optimizer: Any, scheduler: Any, config: dict[str, Any]) -> int:
    """Load a checkpoint written with the same settings; returns the finished epochs (0: none used)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable or foreign file: start over, it is rewritten after epoch 1
        log.warning("ignoring unreadable fine-tune checkpoint %s (%s)", path, exc)
        return 0
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        log.warning("ignoring fine-tune checkpoint %s: unknown format", path)
        return 0
    if state.get("config") != config or state.get("shapes") != _shapes(student):
        log.warning("ignoring fine-tune checkpoint %s: it was written for other settings or another model", path)
        return 0
    student.load_state_dict(state["student"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    epoch = int(state["epoch"])
    log.info("resuming fine-tuning from %s after epoch %d", path, epoch)
    return epoch


class _NoBar:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=True,
    )
