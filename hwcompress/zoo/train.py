"""Baseline training for the zoo (and user models without a checkpoint), with a checkpoint cache.

``ensure_baseline`` trains a model once per (model architecture, data splits, training config)
and keeps the weights in ``cache_dir()/models/``; later calls load them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hwcompress.errors import CacheError, ModelError
from hwcompress.fsutil import atomic_write_bytes, atomic_write_text, sha256_file, temp_path_beside
from hwcompress.paths import cache_dir
from hwcompress.records import Record
from hwcompress.zoo import ZOO_NAMES, build_model, is_zoo_name
from hwcompress.zoo.user import build_user_model, is_user_spec, load_state_dict

if TYPE_CHECKING:
    import torch
    from torch import nn

    from hwcompress.data import DataSplits

log = logging.getLogger(__name__)
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
SCHEDULES: tuple[str, ...] = ("onecycle", "cosine")
_CACHE_VERSION = 1


@dataclass(frozen=True)
class TrainConfig(Record):
    """Supervised training recipe.  ``lr`` is the peak learning rate of the schedule.

    ``threads`` (None: all cores) and ``channels_last`` (a faster memory layout on CPUs) do not
    change the result, so they are not part of :meth:`result_digest`.  Augmentation: random crop after padding by ``crop_padding``
    pixels (with the value of a black pixel) and, when ``flip``, random horizontal flips.
    """

    epochs: int
    lr: float
    batch_size: int = 128
    weight_decay: float = 5e-4
    seed: int = 0
    threads: int | None = None
    augment: bool = True
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    schedule: str = "onecycle"
    warmup_fraction: float = 0.2
    label_smoothing: float = 0.0
    crop_padding: int = 2
    flip: bool = True
    channels_last: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ModelError(f"training needs epochs >= 1 and batch_size >= 1, got {self.epochs} and {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ModelError(f"learning rate must be a positive number, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ModelError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ModelError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not 0.0 <= self.warmup_fraction < 1.0 or not 0.0 <= self.label_smoothing < 1.0:
            raise ModelError("warmup_fraction and label_smoothing must lie in [0, 1)")

    def result_digest(self) -> str:
        """sha256 (16 hex digits) of every field that changes the trained weights."""
        d = self.to_dict()
        d.pop("threads", None)
        d.pop("channels_last", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


_DEFAULTS: dict[str, TrainConfig] = {
    # ~250 s/epoch on 2 quiet cores (up to 1450 s when shared); 3 epochs: 92.13% test, 92.44% val.
    "vgg-small": TrainConfig(epochs=3, lr=0.1, batch_size=128, weight_decay=5e-4, label_smoothing=0.1),
    # 115-160 s/epoch on 2 cores; 4 epochs: 92.13% test, 92.68% val (569 s).
    "resnet-20": TrainConfig(epochs=4, lr=0.1, batch_size=128, weight_decay=5e-4, label_smoothing=0.1),
    # depthwise convs: lighter weight decay.
    "mobilenetv2-small": TrainConfig(epochs=5, lr=0.1, batch_size=128, weight_decay=1e-4, label_smoothing=0.1),
}
_GENERIC = TrainConfig(epochs=5, lr=0.05, batch_size=128, weight_decay=5e-4)


def default_config(model_name: str) -> TrainConfig:
    """The recipe for a zoo model (VGG-small >= 92%, ResNet-20 >= 91% on Fashion-MNIST), else a generic one."""
    return _DEFAULTS.get(model_name, _GENERIC)


@dataclass(frozen=True)
class EpochStats(Record):
    epoch: int
    loss: float
    val_accuracy: float
    seconds: float


@dataclass(frozen=True)
class TrainResult(Record):
    """Accuracies in [0, 1]; ``seconds`` is the wall time of the whole call (training and evaluation)."""

    val_accuracy: float
    test_accuracy: float
    seconds: float
    epochs: int
    history: tuple[EpochStats, ...] = ()


@dataclass(frozen=True, eq=False)
class Baseline:
    """A trained model ready to compress.  ``from_cache``: loaded, not trained by this call."""

    model: nn.Module
    name: str
    test_accuracy: float
    val_accuracy: float
    checkpoint: Path
    train_seconds: float
    from_cache: bool
    config: TrainConfig | None = None


# --------------------------------------------------------------------------- training
def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights only, not on biases or BatchNorm parameters."""
    decay: list[Any] = []
    no_decay: list[Any] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _make_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, total: int) -> Any:
    import torch

    if cfg.schedule == "onecycle" and total >= 10:  # OneCycleLR needs a few steps per phase
        return torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=cfg.lr,
            total_steps=total,
            pct_start=min(max(cfg.warmup_fraction, 2.0 / total), 0.5),
            cycle_momentum=cfg.optimizer == "sgd",
        )
    warm = int(total * cfg.warmup_fraction)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _augment(xb: torch.Tensor, cfg: TrainConfig, fill: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop of the ``crop_padding``-padded batch, then random horizontal flips."""
    import torch

    b, c, h, w = xb.shape
    p = cfg.crop_padding
    if p > 0:
        padded = fill.view(1, c, 1, 1).expand(b, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p : p + h, p : p + w] = xb
        oy = torch.randint(0, 2 * p + 1, (b, 1), generator=gen)
        ox = torch.randint(0, 2 * p + 1, (b, 1), generator=gen)
        rows = (oy + torch.arange(h)).view(b, 1, h, 1)
        cols = (ox + torch.arange(w)).view(b, 1, 1, w)
        xb = padded[torch.arange(b).view(b, 1, 1, 1), torch.arange(c).view(1, c, 1, 1), rows, cols]
    if cfg.flip:
        mask = torch.rand(b, generator=gen) < 0.5
        xb = torch.where(mask.view(b, 1, 1, 1), xb.flip(3), xb)
    return xb


@contextlib.contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TextColumn("{task.fields[ips]:.0f} img/s"),
        TextColumn("{task.fields[val]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    from rich.errors import LiveError

    prog = Progress(*columns, console=Console(stderr=True))
    try:
        prog.start()
    except LiveError:  # the caller already shows a live display: log lines only
        yield None
        return
    try:
        task = prog.add_task("training", total=total, loss=float("nan"), ips=0.0, val="")
        yield prog, task
    finally:
        prog.stop()


def train_model(
    model: nn.Module,
    splits: DataSplits,
    cfg: TrainConfig,
    *,
    progress: bool = True,
    log_every: int = 100,
) -> TrainResult:
    """Train ``model`` in place on ``splits.train`` and return val/test accuracy after the last epoch.

    ``progress`` shows a rich progress bar on stderr (epoch, loss, images/s); ``log_every``
    logs a line every that many steps (0: only once per epoch).  Uses ``cfg.threads`` threads
    (None: all cores) and restores the previous count; the model is left in eval mode.
    """
    import torch
    from torch import nn

    from hwcompress.evaluate import accuracy, torch_threads

    start = time.perf_counter()
    train = splits.train
    n = len(train)
    if n == 0:
        raise ModelError("cannot train on an empty training split")
    bs = min(cfg.batch_size, n)
    steps = n // bs  # drop the last partial batch: a batch of 1 breaks BatchNorm
    total = steps * cfg.epochs
    threads = cfg.threads or _cpu_count()
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    mean = np.atleast_1d(np.asarray(splits.mean, dtype=np.float64))
    std = np.atleast_1d(np.asarray(splits.std, dtype=np.float64))
    c = splits.input_shape[0]
    fill = torch.from_numpy(np.broadcast_to(-mean / std, (c,)).astype(np.float32).copy())
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=layout)  # type: ignore[call-overload]
    groups = _param_groups(model, cfg.weight_decay)
    opt: torch.optim.Optimizer
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    sched = _make_schedule(opt, cfg, total)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    history: list[EpochStats] = []
    val_acc = 0.0
    log.info("training %s: %d images, %d epochs x %d steps, %d thread(s)", type(model).__name__, n, cfg.epochs, steps, threads)
    from hwcompress.progress import Ticker

    ticker = Ticker(f"training {type(model).__name__}: steps", total)
    try:
        with torch_threads(threads), _progress(progress, total) as bar:
            for epoch in range(1, cfg.epochs + 1):
                model.train()
                t0 = time.perf_counter()
                perm = rng.permutation(n)
                run_loss, seen = 0.0, 0
                for step in range(steps):
                    idx = np.sort(perm[step * bs : (step + 1) * bs])
                    xb = torch.from_numpy(train.x[idx])
                    yb = torch.from_numpy(train.y[idx])
                    if cfg.augment:
                        xb = _augment(xb, cfg, fill, gen)
                    xb = xb.contiguous(memory_format=layout)
                    loss = loss_fn(model(xb), yb)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    lv = float(loss.detach())
                    if not math.isfinite(lv):
                        raise ModelError(
                            f"training {type(model).__name__} diverged (loss {lv}) at epoch {epoch} step {step + 1}; lower the learning rate"
                        )
                    run_loss += lv * len(idx)
                    seen += len(idx)
                    ips = seen / max(1e-9, time.perf_counter() - t0)
                    if bar is not None:
                        prog, task = bar
                        prog.update(task, advance=1, description=f"epoch {epoch}/{cfg.epochs}", loss=run_loss / seen, ips=ips)
                    ticker.step(text=f"epoch {epoch}/{cfg.epochs}, loss {run_loss / seen:.3f}, {ips:.0f} img/s")
                    if log_every and (step + 1) % log_every == 0:
                        log.info("epoch %d/%d step %d/%d loss %.4f %.0f img/s", epoch, cfg.epochs, step + 1, steps, run_loss / seen, ips)
                val_acc = accuracy(model, splits.val) if len(splits.val) else float("nan")
                secs = time.perf_counter() - t0
                history.append(EpochStats(epoch=epoch, loss=run_loss / max(1, seen), val_accuracy=val_acc, seconds=secs))
                if bar is not None:
                    prog, task = bar
                    prog.update(task, val=f"val {val_acc:.2%}")
                log.info("epoch %d/%d: loss %.4f, val accuracy %.4f, %.1f s", epoch, cfg.epochs, run_loss / max(1, seen), val_acc, secs)
                ticker.mark(f"epoch {epoch}/{cfg.epochs} done: loss {run_loss / max(1, seen):.3f}, val accuracy {val_acc:.2%}, {secs:.0f} s")
            test_acc = accuracy(model, splits.test)
    finally:
        model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    model.eval()
    return TrainResult(
        val_accuracy=val_acc,
        test_accuracy=test_acc,
        seconds=time.perf_counter() - start,
        epochs=cfg.epochs,
        history=tuple(history),
    )


# --------------------------------------------------------------------------- cache
def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:60] or "model"


def architecture_digest(model: nn.Module) -> str:
    """sha256 (16 hex digits) of the module classes and every parameter/buffer name and shape."""
    h = hashlib.sha256()
    for name, mod in model.named_modules():
        h.update(f"{name}:{type(mod).__module__}.{type(mod).__qualname__}\n".encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}\n".encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock, so two processes do not train the same baseline at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _save_state(model: nn.Module, path: Path) -> None:
    import torch

    tmp = temp_path_beside(path, ".pt")
    try:
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


SHIPPED_DIR = Path(__file__).parent / "checkpoints"
"""Trained checkpoints shipped in the package (the demo's baseline), made by tools/make_demo_checkpoint.py."""
SHIPPED_TOLERANCE = 0.003  # a shipped checkpoint must score its recorded test accuracy within this here


def _shipped(stem: str, net: nn.Module, splits: DataSplits) -> tuple[TrainResult, Path, dict[str, Any]] | None:
    """A shipped checkpoint for exactly this model, data, split and recipe (``stem``), checked and loaded
    into ``net`` (eval mode): (its result, its file, its recorded info); else None.

    Checked by the sha256 recorded beside it and by its test accuracy, measured now on these
    splits against the recorded figure: a file that fails either is not used (the model is trained).
    """
    source = SHIPPED_DIR / f"{stem}.pt"
    info = _read_json(source.with_suffix(".json"))
    if not source.is_file() or info is None:
        return None
    if sha256_file(source) != info.get("sha256"):
        log.warning("shipped checkpoint %s does not match its recorded sha256: training instead", source)
        return None
    try:
        load_state_dict(net, source)
        result = TrainResult.from_dict(info["result"])
    except Exception as exc:
        log.warning("shipped checkpoint %s is unusable (%s): training instead", source, exc)
        return None
    from hwcompress.evaluate import accuracy

    net.eval()
    test = accuracy(net, splits.test)
    if abs(test - result.test_accuracy) > SHIPPED_TOLERANCE:
        log.warning("shipped checkpoint %s scores %.4f on the test split here, %.4f when it was made: training instead",
                    source, test, result.test_accuracy)
        return None
    log.info("using the shipped checkpoint %s (test accuracy %.4f, recorded %.4f)", source, test, result.test_accuracy)
    return result, source, info


def _models_dir() -> Path:
    d = cache_dir() / "models"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create the model cache {d}: {exc.strerror or exc}; set $HWCOMPRESS_CACHE to a writable folder") from None
    return d


def _evaluate_checkpoint(model: nn.Module, spec: str, checkpoint: Path, splits: DataSplits) -> tuple[float, float]:
    """(val, test) accuracy of a user's checkpoint, cached by checkpoint content and splits."""
    from hwcompress.evaluate import accuracy

    key = hashlib.sha256(f"{spec}\0{sha256_file(checkpoint)}\0{splits.digest}".encode()).hexdigest()[:24]
    path = _models_dir() / f"eval-{key}.json"
    data = _read_json(path)
    if data and isinstance(data.get("val_accuracy"), float) and isinstance(data.get("test_accuracy"), float):
        return data["val_accuracy"], data["test_accuracy"]
    val = accuracy(model, splits.val) if len(splits.val) else float("nan")
    test = accuracy(model, splits.test)
    try:
        atomic_write_text(path, json.dumps({"spec": spec, "checkpoint": str(checkpoint), "splits": splits.digest,
                                            "val_accuracy": val, "test_accuracy": test}, indent=1))
    except OSError as exc:
        log.warning("cannot cache the evaluation of %s: %s", checkpoint, exc)
    return val, test


def cache_stem(name: str, splits: DataSplits, cfg: TrainConfig, arch: str) -> str:
    """File stem of a trained checkpoint: model name, data + split digest, digest of recipe and architecture."""
    key = hashlib.sha256(f"v{_CACHE_VERSION}\0{cfg.result_digest()}\0{arch}".encode()).hexdigest()[:16]
    return f"{name}-{splits.digest}-{key}"


def build_for(model: str, splits: DataSplits) -> nn.Module:
    """A fresh (untrained) ``model`` for the data: a zoo name or ``package.module:factory`` spec."""
    c, _, _ = splits.input_shape
    if is_zoo_name(model):
        return build_model(model, in_channels=c, num_classes=splits.num_classes)
    if is_user_spec(model):
        return build_user_model(model, in_channels=c, num_classes=splits.num_classes)
    raise ModelError(
        f"unknown model {model!r}; built-in models: {', '.join(ZOO_NAMES)}, or give package.module:factory "
        "or path/to/file.py:factory"
    )


def ensure_baseline(
    model: str,
    splits: DataSplits,
    *,
    cfg: TrainConfig | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: bool = True,
) -> Baseline:
    """A trained model and its accuracy on ``splits``, trained only when no cached copy exists.

    ``model``: a zoo name (:data:`~hwcompress.zoo.ZOO_NAMES`) or a user spec
    ``package.module:factory`` / ``path/to/file.py:factory``.  With ``checkpoint`` the weights
    come from that file and nothing is trained.  Otherwise the model is trained with ``cfg``
    (default: :func:`default_config`) and cached in ``cache_dir()/models/`` as
    ``<name>-<splits.digest>-<digest of config and architecture>.pt`` plus a ``.json`` with the
    accuracies, training seconds and config; ``force`` retrains.
    """
    import torch

    def build() -> nn.Module:
        return build_for(model, splits)

    name = model if is_zoo_name(model) else _slug(model)

    if checkpoint is not None:
        ckpt = Path(checkpoint).expanduser()
        net = build()
        load_state_dict(net, ckpt)
        net.eval()
        val, test = _evaluate_checkpoint(net, model, ckpt, splits)
        return Baseline(net, name, test, val, ckpt, 0.0, True, None)

    cfg = cfg or default_config(model)
    torch.manual_seed(cfg.seed)
    net = build()
    arch = architecture_digest(net)
    folder = _models_dir()
    stem = cache_stem(name, splits, cfg, arch)
    pt, meta = folder / f"{stem}.pt", folder / f"{stem}.json"
    with _file_lock(folder / f".{stem}.lock"):
        if not force and pt.is_file():
            data = _read_json(meta)
            if data is not None:
                try:
                    load_state_dict(net, pt)
                    result = TrainResult.from_dict(data["result"])
                except Exception as exc:  # a damaged cache entry is retrained, never trusted
                    log.warning("retraining %s: cached checkpoint %s is unusable (%s)", name, pt, exc)
                else:
                    net.eval()
                    log.info("loaded cached %s (test accuracy %.4f) from %s", name, result.test_accuracy, pt)
                    return Baseline(net, name, result.test_accuracy, result.val_accuracy, pt,
                                    result.seconds, True, cfg)
                torch.manual_seed(cfg.seed)
                net = build()
        shipped = None if force else _shipped(stem, net, splits)
        if shipped is not None:
            result, source, info = shipped
            atomic_write_bytes(pt, source.read_bytes())
            atomic_write_text(meta, json.dumps({**info, "from": str(source)}, indent=1))
            return Baseline(net, name, result.test_accuracy, result.val_accuracy, pt, 0.0, True, cfg)
        result = train_model(net, splits, cfg, progress=progress)
        _save_state(net, pt)
        info = {
            "schema": _CACHE_VERSION,
            "model": model,
            "architecture": arch,
            "splits": splits.digest,
            "source": splits.source,
            "config": cfg.to_dict(),
            "result": result.to_dict(),
            "torch": torch.__version__,
            "threads": cfg.threads or _cpu_count(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_text(meta, json.dumps(info, indent=1))
    log.info("trained %s: test accuracy %.4f in %.0f s, saved to %s", name, result.test_accuracy, result.seconds, pt)
    return Baseline(net, name, result.test_accuracy, result.val_accuracy, pt, result.seconds, False, cfg)


__all__ = [
    "Baseline",
    "EpochStats",
    "TrainConfig",
    "TrainResult",
    "architecture_digest",
    "default_config",
    "ensure_baseline",
    "train_model",
]
