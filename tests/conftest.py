"""Shared pytest fixtures; each engineer's fixtures live in their own marked section."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


# --- data fixtures (hwcompress.data, hwcompress.zoo.train, hwcompress.evaluate) -------------
@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    """Folder of Debian's Fashion-MNIST IDX files; skips where the package is missing."""
    from hwcompress.data import find_fashion_mnist

    found = find_fashion_mnist()
    if found is None:
        pytest.skip("Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist")
    return found


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$HWCOMPRESS_CACHE`` pointed at an empty folder for one test."""
    path = tmp_path / "cache"
    monkeypatch.setenv("HWCOMPRESS_CACHE", str(path))
    return path


@pytest.fixture(scope="session")
def fmnist_small(fashion_dir: Path) -> Any:
    """Real Fashion-MNIST, small: 2000 train, 500 val, 64 calib, 500 test images (seed 0)."""
    from hwcompress.data import load_splits

    return load_splits(fashion_dir, seed=0, val_size=500, calib_size=64, limit_train=2000, limit_test=500)


@pytest.fixture(scope="session")
def tiny_vgg(fmnist_small: Any) -> Any:
    """A narrow VGG-small (widths 8-16-32) trained for one epoch on ``fmnist_small``."""
    import torch

    from hwcompress.zoo.models import VGGSmall
    from hwcompress.zoo.train import TrainConfig, train_model

    torch.manual_seed(0)
    model = VGGSmall(widths=(8, 16, 32))
    train_model(model, fmnist_small, TrainConfig(epochs=1, lr=0.1, batch_size=64, threads=1), progress=False)
    return model.eval()
# --- end data fixtures ---------------------------------------------------------------------


# --- sshd fixtures (issue 6: remote targets over SSH; helpers in tests/sshd.py) ---------------
@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real OpenSSH server on 127.0.0.1 (own host key, client key and known_hosts), per test module."""
    from sshd import SshServer, sshd_available

    if not sshd_available():
        pytest.skip("OpenSSH server (/usr/sbin/sshd) is not installed: apt-get install openssh-server")
    server = SshServer(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.fixture
def fresh_sshd(tmp_path: Path) -> Iterator[Any]:
    """An sshd for one test (for tests that kill and restart it)."""
    from sshd import SshServer, sshd_available

    if not sshd_available():
        pytest.skip("OpenSSH server (/usr/sbin/sshd) is not installed: apt-get install openssh-server")
    server = SshServer(tmp_path / "sshd").start()
    yield server
    server.stop()
# --- end sshd fixtures -----------------------------------------------------------------------


# --- search fixtures (issue 5: end-to-end search) ---------------------------------------------
@pytest.fixture(scope="session")
def search_inputs(tmp_path_factory: pytest.TempPathFactory, fashion_dir: Path) -> dict[str, Path]:
    """A small real Fashion-MNIST .npz (3000 train, 500 test) and a seeded ResNet-20 checkpoint.

    The weights are not trained: these tests check the search's mechanics (measure, log, resume,
    artifact); how good its results are is what tools/bench_search.py measures.
    """
    import numpy as np
    import torch

    from hwcompress.data import load_splits
    from hwcompress.zoo import build_model

    root = tmp_path_factory.mktemp("search-inputs")
    full = load_splits(fashion_dir, seed=0, val_size=500, calib_size=64, limit_train=3000, limit_test=500)
    # Undo the normalisation: the .npz holds raw uint8 images as a user's file would.
    def raw(x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint((x[:, 0] * full.std + full.mean) * 255.0), 0, 255).astype(np.uint8)  # type: ignore[operator]

    x = np.concatenate([raw(full.train.x), raw(full.val.x), raw(full.calib.x)])
    y = np.concatenate([full.train.y, full.val.y, full.calib.y])
    npz = root / "fmnist-small.npz"
    np.savez(npz, x=x, y=y, x_test=raw(full.test.x), y_test=full.test.y)
    torch.manual_seed(0)
    model = build_model("resnet-20")
    ckpt = root / "resnet20.pt"
    torch.save(model.state_dict(), ckpt)
    return {"data": npz, "checkpoint": ckpt}
# --- end search fixtures ---------------------------------------------------------------------
