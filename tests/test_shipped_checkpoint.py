"""Issue 19.6: the demo's trained baseline ships in the package, checked by sha256 and accuracy before use."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def _tiny_splits(tmp_path: Path) -> Any:
    from hwcompress.data import load_splits

    rng = np.random.default_rng(0)
    y = np.arange(600) % 4
    x = (rng.integers(0, 40, (600, 12, 12)) + (y[:, None, None] * 50)).astype(np.uint8)  # separable classes
    np.savez(tmp_path / "d.npz", x=x, y=y)
    return load_splits(tmp_path / "d.npz", seed=0, val_size=60, calib_size=20)


def _ship(stem: str, src: Path, info: dict, folder: Path) -> Path:
    from hwcompress.fsutil import sha256_file

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, folder / f"{stem}.pt")
    (folder / f"{stem}.json").write_text(json.dumps({**info, "sha256": sha256_file(folder / f"{stem}.pt")}))
    return folder / f"{stem}.pt"


def test_a_shipped_checkpoint_is_used_only_when_sha256_and_accuracy_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hwcompress.zoo import train

    monkeypatch.setenv("HWCOMPRESS_CACHE", str(tmp_path / "cache"))
    splits = _tiny_splits(tmp_path)
    cfg = train.TrainConfig(epochs=1, lr=0.05, batch_size=32)
    first = train.ensure_baseline("resnet-20", splits, cfg=cfg, progress=False)  # trains, caches
    assert not first.from_cache
    cached = Path(first.checkpoint)
    info = json.loads(cached.with_suffix(".json").read_text())
    shipped_dir = tmp_path / "shipped"
    monkeypatch.setattr(train, "SHIPPED_DIR", shipped_dir)
    stem = cached.stem

    def fresh_cache() -> None:
        shutil.rmtree(tmp_path / "cache")

    # 1. sha256 and accuracy agree: used (no training), copied into the cache
    _ship(stem, cached, info, shipped_dir)
    fresh_cache()
    got = train.ensure_baseline("resnet-20", splits, cfg=cfg, progress=False)
    assert got.from_cache and got.train_seconds == 0.0
    assert got.test_accuracy == pytest.approx(first.test_accuracy)
    assert Path(got.checkpoint).is_file() and Path(got.checkpoint).parent == tmp_path / "cache" / "models"

    # 2. a file that does not match its recorded sha256 is not used: the model is trained
    pt = _ship(stem, cached, info, shipped_dir)
    pt.write_bytes(pt.read_bytes() + b"x")
    fresh_cache()
    assert not train.ensure_baseline("resnet-20", splits, cfg=cfg, progress=False).from_cache

    # 3. a recorded accuracy this machine does not reproduce: not used either
    _ship(stem, cached, {**info, "result": {**info["result"], "test_accuracy": info["result"]["test_accuracy"] - 0.2}},
          shipped_dir)
    fresh_cache()
    assert not train.ensure_baseline("resnet-20", splits, cfg=cfg, progress=False).from_cache


def test_the_shipped_demo_checkpoint_matches_the_demo_configuration(fashion_dir: Path) -> None:
    """The file in the package is found for `make demo`'s model, data, split and recipe, and is intact."""
    from hwcompress.data import load_splits
    from hwcompress.fsutil import sha256_file
    from hwcompress.zoo import build_model
    from hwcompress.zoo.train import SHIPPED_DIR, architecture_digest, cache_stem, default_config

    files = sorted(SHIPPED_DIR.glob("vgg-small-*.pt"))
    assert len(files) == 1, files
    info = json.loads(files[0].with_suffix(".json").read_text())
    assert sha256_file(files[0]) == info["sha256"]
    assert info["result"]["test_accuracy"] >= 0.90
    splits = load_splits(fashion_dir, seed=0)
    net = build_model("vgg-small", in_channels=1, num_classes=splits.num_classes)
    assert files[0].stem == cache_stem("vgg-small", splits, default_config("vgg-small"), architecture_digest(net))
