"""Accuracy of a PyTorch model or of an exported ONNX model on a :class:`~hwcompress.data.Split`.

torch and onnxruntime are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hwcompress.errors import FileMissingError, ModelError

if TYPE_CHECKING:
    from torch import nn

    from hwcompress.data import Split

DEFAULT_BATCH = 500


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count for the block (None: leave it), then restore it."""
    import torch

    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
    """Logits (N, K) float32 of ``model`` on ``x`` (N, C, H, W), in eval mode without gradients.

    The model's train/eval mode is restored afterwards; batches go to the model's device.
    """
    import torch

    if x.ndim != 4:
        raise ModelError(f"expected images of shape (N, C, H, W), got {x.shape}")
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    outs: list[np.ndarray] = []
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], max(1, batch_size)):
                xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)).to(device)
                outs.append(model(xb).float().cpu().numpy())
    except RuntimeError as exc:
        raise ModelError(f"running {type(model).__name__} on {tuple(x.shape[1:])} inputs failed: {_first_line(exc)}") from exc
    finally:
        model.train(was_training)
    if not outs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(outs)


def accuracy(
    model: nn.Module,
    split: Split,
    *,
    batch_size: int = DEFAULT_BATCH,
    threads: int | None = None,
    limit: int | None = None,
) -> float:
    """Top-1 accuracy in [0, 1] on the first ``limit`` samples of ``split`` (all when None)."""
    x, y = split.x[:limit], split.y[:limit]
    if len(y) == 0:
        raise ModelError("cannot measure accuracy on an empty split")
    with torch_threads(threads):
        logits = predict_logits(model, x, batch_size)
    return float(np.mean(logits.argmax(axis=1) == y))


# --------------------------------------------------------------------------- ONNX Runtime
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def onnx_session(onnx_path: str | os.PathLike[str], threads: int = 1) -> Any:
    """An onnxruntime CPU InferenceSession with ``threads`` intra-op threads (one inter-op thread)."""
    import onnxruntime as ort

    path = Path(onnx_path)
    if not path.is_file():
        raise FileMissingError(f"ONNX model {path} does not exist; export the model first")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"onnxruntime cannot load {path}: {_first_line(exc)}") from exc


def onnx_logits(onnx_path: str | os.PathLike[str], x: np.ndarray, *, threads: int = 1, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
    """Logits (N, K) of an ONNX classifier run in onnxruntime on ``x`` (N, C, H, W).

    A model with a static batch dimension b is run b images at a time (the last batch padded);
    a dynamic batch is run ``batch_size`` at a time.  The input name comes from the session.
    """
    sess = onnx_session(onnx_path, threads)
    inp = sess.get_inputs()[0]
    shape = list(inp.shape)
    if len(shape) != 4:
        raise ModelError(f"{onnx_path}: input {inp.name!r} has shape {shape}; expected (N, C, H, W)")
    want = [d if isinstance(d, int) else None for d in shape[1:]]
    for got, exp in zip(x.shape[1:], want, strict=True):
        if exp is not None and got != exp:
            raise ModelError(f"{onnx_path}: model expects input {shape} but the data is {list(x.shape[1:])} (C, H, W)")
    static = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    step = static or max(1, batch_size)
    x = np.ascontiguousarray(x, dtype=np.float32)
    outs: list[np.ndarray] = []
    try:
        for i in range(0, x.shape[0], step):
            xb = x[i : i + step]
            n = xb.shape[0]
            if static is not None and n < static:
                xb = np.concatenate([xb, np.zeros((static - n, *xb.shape[1:]), dtype=np.float32)])
            out = sess.run(None, {inp.name: xb})[0]
            outs.append(np.asarray(out, dtype=np.float32).reshape(out.shape[0], -1)[:n])
    except Exception as exc:
        raise ModelError(f"onnxruntime failed to run {onnx_path}: {_first_line(exc)}") from exc
    if not outs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(outs)


def onnx_accuracy(
    onnx_path: str | os.PathLike[str],
    split: Split,
    *,
    threads: int = 1,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> float:
    """Top-1 accuracy in [0, 1] of an ONNX model in onnxruntime on the first ``limit`` samples."""
    x, y = split.x[:limit], split.y[:limit]
    if len(y) == 0:
        raise ModelError("cannot measure accuracy on an empty split")
    logits = onnx_logits(onnx_path, x, threads=threads, batch_size=batch_size)
    return float(np.mean(logits.argmax(axis=1) == y))


__all__ = ["accuracy", "onnx_accuracy", "onnx_logits", "onnx_session", "predict_logits", "torch_threads"]
