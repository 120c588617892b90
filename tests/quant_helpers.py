"""Shared by test_quantize, test_artifact and test_tflite: small real data and a briefly trained CNN.

Cached per process, so the ~6 s of training happen once per pytest run.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest


@functools.cache
def small_splits() -> Any:
    """Real Fashion-MNIST: 2000 train, 500 val, 64 calib, 500 test images (seed 0); skips without it."""
    from hwcompress.data import find_fashion_mnist, load_splits

    found = find_fashion_mnist()
    if found is None:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    return load_splits(found, seed=0, val_size=500, calib_size=64, limit_train=2000, limit_test=500)


@functools.cache
def tiny_vgg() -> Any:
    """A narrow VGG-small (8-16-32) trained 150 steps on real Fashion-MNIST (~75%), in eval mode."""
    import numpy as np
    import torch

    from hwcompress.evaluate import torch_threads
    from hwcompress.zoo.models import VGGSmall

    splits = small_splits()
    torch.manual_seed(0)
    model = VGGSmall(in_channels=1, num_classes=10, widths=(8, 16, 32))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    x, y = splits.train.x, splits.train.y
    with torch_threads(1):
        model.train()
        for _ in range(150):
            idx = rng.integers(0, len(y), 64)
            loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()
