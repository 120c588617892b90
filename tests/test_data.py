"""hwcompress.data on real Fashion-MNIST and real files written in tmp_path (IDX, images, npz)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from hwcompress import data as data_mod
from hwcompress.data import DataSplits, find_fashion_mnist, load_splits
from hwcompress.errors import DataError

SMALL = {"val_size": 40, "calib_size": 16}


# --------------------------------------------------------------------------- helpers
def _real(fashion_dir: Path, n: int = 300, test: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The first ``n`` training and ``test`` test images (uint8 N,H,W) and labels of Fashion-MNIST."""
    raw = data_mod._read_source(fashion_dir)
    assert raw.x_test is not None and raw.y_test is not None
    return raw.x[:n, 0], raw.y[:n], raw.x_test[:test, 0], raw.y_test[:test]


def _idx_bytes(a: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes()


def _write_idx(folder: Path, split: str, x: np.ndarray, y: np.ndarray, gz: bool, sep: str = "-") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for what, ndim, arr in (("images", 3, x), ("labels", 1, y)):
        p = folder / f"{split}-{what}{sep}idx{ndim}-ubyte{'.gz' if gz else ''}"
        blob = _idx_bytes(arr)
        p.write_bytes(gzip.compress(blob) if gz else blob)
        out.append(p)
    return out[0], out[1]


def _raw_rows(split_x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in split_x}


def _write_png_tree(root: Path, x: np.ndarray, y: np.ndarray, rgb: bool = False, ext: str = ".png") -> None:
    from PIL import Image

    for i, (img, lab) in enumerate(zip(x, y, strict=True)):
        d = root / f"class{int(lab)}"
        d.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(img)
        if rgb:
            im = im.convert("RGB")
        im.save(d / f"{i:05d}{ext}")


def _one_line(exc: pytest.ExceptionInfo[DataError]) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg
    return msg


# --------------------------------------------------------------------------- Fashion-MNIST
def test_find_fashion_mnist(fashion_dir: Path) -> None:
    assert find_fashion_mnist() == fashion_dir
    assert (fashion_dir / "train-images-idx3-ubyte.gz").is_file()


def test_default_is_fashion_mnist(fashion_dir: Path) -> None:
    s = load_splits(limit_train=1000, limit_test=300)
    assert isinstance(s, DataSplits)
    assert s.num_classes == 10 and s.input_shape == (1, 28, 28)
    assert (len(s.train), len(s.val), len(s.calib), len(s.test)) == (1000, 5000, 512, 300)
    for sp in (s.train, s.val, s.calib, s.test):
        assert sp.x.dtype == np.float32 and sp.x.ndim == 4 and sp.x.shape[1:] == (1, 28, 28)
        assert sp.y.dtype == np.int64 and sp.y.shape == (sp.x.shape[0],)
        assert sp.x.flags.c_contiguous
    assert isinstance(s.mean, float) and 0.25 < s.mean < 0.32 and 0.32 < s.std < 0.38
    assert abs(float(s.train.x.mean())) < 1e-3 and abs(float(s.train.x.std()) - 1.0) < 1e-3
    assert s.class_names[0] == "T-shirt/top" and len(s.class_names) == 10
    assert set(np.unique(s.test.y)) == set(range(10))
    assert s.source.startswith("idx:") and str(fashion_dir) in s.source


def test_real_idx_decodes_known_labels(fashion_dir: Path) -> None:
    x, y, _, yt = _real(fashion_dir, 5, 5)
    # The first labels of Fashion-MNIST (train: ankle boot, T-shirt, T-shirt, dress, T-shirt; test: ankle boot, ...).
    assert y.tolist() == [9, 0, 0, 3, 0] and yt.tolist() == [9, 2, 1, 1, 6]
    assert x.dtype == np.uint8 and x.shape == (5, 28, 28) and x.max() == 255


def test_splits_deterministic_and_disjoint(fashion_dir: Path) -> None:
    a = load_splits(fashion_dir, seed=3, val_size=300, calib_size=100, limit_train=1000, limit_test=200)
    b = load_splits(fashion_dir, seed=3, val_size=300, calib_size=100, limit_train=1000, limit_test=200)
    c = load_splits(fashion_dir, seed=4, val_size=300, calib_size=100, limit_train=1000, limit_test=200)
    assert a.digest == b.digest != c.digest
    for name in ("train", "val", "calib", "test"):
        assert np.array_equal(getattr(a, name).x, getattr(b, name).x)
        assert np.array_equal(getattr(a, name).y, getattr(b, name).y)
    assert not np.array_equal(a.val.y, c.val.y)
    assert np.array_equal(a.test.y, c.test.y)  # the test split does not depend on the seed
    assert a.digest != load_splits(fashion_dir, seed=3, val_size=301, calib_size=100, limit_train=1000, limit_test=200).digest


def test_disjoint_and_complete_on_unique_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (500, 8, 8), dtype=np.uint8)  # 500 distinct random images
    y = np.arange(500) % 5
    np.savez(tmp_path / "d.npz", x=x, y=y)
    s = load_splits(tmp_path / "d.npz", seed=1, val_size=30, calib_size=20)
    parts = [_raw_rows(sp.x) for sp in (s.train, s.val, s.calib, s.test)]
    assert [len(p) for p in parts] == [len(s.train), 30, 20, len(s.test)]
    assert sum(len(p) for p in parts) == 500 == len(set().union(*parts))
    # no test set in the file: 20% of every class is held out
    assert len(s.test) == 100 and np.bincount(s.test.y).tolist() == [20] * 5
    # val/calib are capped at 10% of the training data each
    capped = load_splits(tmp_path / "d.npz", val_size=5000, calib_size=512)
    assert (len(capped.val), len(capped.calib), len(capped.train)) == (40, 40, 320)


def test_limit_train_keeps_val_and_test(fashion_dir: Path) -> None:
    full = load_splits(fashion_dir, seed=0, val_size=200, calib_size=50, limit_test=100)
    small = load_splits(fashion_dir, seed=0, val_size=200, calib_size=50, limit_train=500, limit_test=100)
    assert np.array_equal(full.val.y, small.val.y) and np.array_equal(full.test.y, small.test.y)
    assert len(small.train) == 500 and full.digest != small.digest


# --------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder(tmp_path: Path, fashion_dir: Path, gz: bool) -> None:
    x, y, xt, yt = _real(fashion_dir)
    _write_idx(tmp_path, "train", x, y, gz)
    _write_idx(tmp_path, "t10k", xt, yt, gz)
    s = load_splits(tmp_path, **SMALL)
    assert (len(s.train), len(s.val), len(s.calib), len(s.test)) == (254, 30, 16, 100)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10
    # same pixels as the source: undo the normalisation
    back = np.round((s.test.x[:, 0] * s.std + s.mean) * 255).astype(np.uint8)
    assert np.array_equal(back, xt) and np.array_equal(s.test.y, yt)


def test_idx_gz_and_plain_give_same_splits(tmp_path: Path, fashion_dir: Path) -> None:
    x, y, xt, yt = _real(fashion_dir)
    _write_idx(tmp_path / "a", "train", x, y, True)
    _write_idx(tmp_path / "a", "t10k", xt, yt, True)
    _write_idx(tmp_path / "b", "train", x, y, False, sep=".")  # the `train-images.idx3-ubyte` spelling
    _write_idx(tmp_path / "b", "t10k", xt, yt, False, sep=".")
    a, b = load_splits(tmp_path / "a", **SMALL), load_splits(tmp_path / "b", **SMALL)
    assert np.array_equal(a.train.x, b.train.x) and np.array_equal(a.val.y, b.val.y)
    assert np.array_equal(a.test.x, b.test.x)


def test_single_idx_file_carves_test(tmp_path: Path, fashion_dir: Path) -> None:
    x, y, _, _ = _real(fashion_dir, 500)
    images, _ = _write_idx(tmp_path, "train", x, y, True)
    s = load_splits(images, **SMALL)
    counts = np.bincount(y, minlength=10)
    assert len(s.test) == sum(int(c * 0.2) for c in counts)
    assert len(s.train) + len(s.val) + len(s.calib) + len(s.test) == 500


def test_idx_only_train_in_folder(tmp_path: Path, fashion_dir: Path) -> None:
    x, y, _, _ = _real(fashion_dir, 400)
    _write_idx(tmp_path, "train", x, y, False)
    s = load_splits(tmp_path, **SMALL)
    assert len(s.test) == sum(int(c * 0.2) for c in np.bincount(y))


# --------------------------------------------------------------------------- image folders
def test_image_folder_train_test(tmp_path: Path, fashion_dir: Path, tmp_cache: Path) -> None:
    x, y, xt, yt = _real(fashion_dir, 200, 50)
    _write_png_tree(tmp_path / "imgs" / "train", x, y)
    _write_png_tree(tmp_path / "imgs" / "test", xt, yt)
    s = load_splits(tmp_path / "imgs", **SMALL)
    assert s.input_shape == (1, 28, 28) and s.source.startswith("images:")
    assert s.class_names == tuple(f"class{k}" for k in sorted(set(y.tolist())))
    assert len(s.test) == 50 and len(s.train) + len(s.val) + len(s.calib) == 200
    # labels follow the class folders: same multiset of (image, label) pairs as the source
    back = np.round((s.test.x[:, 0] * s.std + s.mean) * 255).astype(np.uint8)
    names = [int(s.class_names[k].removeprefix("class")) for k in s.test.y]
    assert sorted((b.tobytes(), n) for b, n in zip(back, names, strict=True)) == sorted(
        (a.tobytes(), int(n)) for a, n in zip(xt, yt, strict=True)
    )
    # decoded arrays are cached; a second load gives the same splits
    assert list((tmp_cache / "data").glob("images-*.npz"))
    again = load_splits(tmp_path / "imgs", **SMALL)
    assert again.digest == s.digest and np.array_equal(again.train.x, s.train.x)
    # changing an image changes the digest and the data (the cache is keyed by content)
    first = sorted((tmp_path / "imgs" / "test").rglob("*.png"))[0]
    from PIL import Image

    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(first)
    changed = load_splits(tmp_path / "imgs", **SMALL)
    assert changed.digest != s.digest and not np.array_equal(changed.test.x, s.test.x)


def test_image_folder_flat_rgb_jpeg(tmp_path: Path, fashion_dir: Path, tmp_cache: Path) -> None:
    x, y, _, _ = _real(fashion_dir, 150)
    _write_png_tree(tmp_path / "imgs", x, y, rgb=True, ext=".jpg")
    s = load_splits(tmp_path / "imgs", **SMALL)
    assert s.input_shape == (3, 28, 28)
    assert isinstance(s.mean, tuple) and len(s.mean) == 3 and isinstance(s.std, tuple)
    assert len(s.test) == sum(int(c * 0.2) for c in np.bincount(y))
    assert s.num_classes == len(set(y.tolist()))


# --------------------------------------------------------------------------- npz
@pytest.mark.parametrize(
    "layout", ["nhw", "nhw1", "n1hw", "float01", "int_labels_float", "with_test"]
)
def test_npz_layouts(tmp_path: Path, fashion_dir: Path, layout: str) -> None:
    x, y, xt, yt = _real(fashion_dir)
    ref_path = tmp_path / "ref.npz"
    np.savez(ref_path, x=x, y=y)
    ref = load_splits(ref_path, **SMALL)
    arrays: dict[str, np.ndarray] = {
        "nhw": {"x": x, "y": y},
        "nhw1": {"x": x[..., None], "y": y.astype(np.uint8)},
        "n1hw": {"x": x[:, None], "y": y.astype(np.int32)},
        "float01": {"x": x.astype(np.float32) / 255.0, "y": y},
        "int_labels_float": {"x": x, "y": y.astype(np.float64)},
        "with_test": {"x": x, "y": y, "x_test": xt, "y_test": yt},
    }[layout]
    np.savez(tmp_path / "d.npz", **arrays)
    s = load_splits(tmp_path / "d.npz", **SMALL)
    assert s.input_shape == (1, 28, 28) and s.train.x.dtype == np.float32 and s.train.y.dtype == np.int64
    if layout == "with_test":
        assert len(s.test) == 100 and np.array_equal(s.test.y, yt)
        assert len(s.train) + len(s.val) + len(s.calib) == 300
    else:
        assert np.allclose(s.train.x, ref.train.x, atol=1e-4) and np.array_equal(s.val.y, ref.val.y)


def test_npz_rgb_channels_last_and_first_agree(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (120, 12, 10, 3), dtype=np.uint8)
    y = np.arange(120) % 3
    np.savez(tmp_path / "last.npz", x=x, y=y)
    np.savez(tmp_path / "first.npz", x=x.transpose(0, 3, 1, 2), y=y)
    a, b = load_splits(tmp_path / "last.npz", **SMALL), load_splits(tmp_path / "first.npz", **SMALL)
    assert a.input_shape == b.input_shape == (3, 12, 10)
    assert np.array_equal(a.train.x, b.train.x)


# --------------------------------------------------------------------------- errors
def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)  # type: ignore[arg-type]
    return p


def _bad_inputs(tmp_path: Path, fashion_dir: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, a phrase the message must contain)."""
    x, y, xt, yt = _real(fashion_dir, 50, 20)
    cases: dict[str, tuple[Path, str]] = {}
    cases["missing"] = (tmp_path / "nope", "does not exist")
    (tmp_path / "empty").mkdir()
    cases["empty folder"] = (tmp_path / "empty", "neither IDX files")
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "notes.txt").write_text("hi")
    cases["folder of wrong files"] = (tmp_path / "wrong", "notes.txt")
    (tmp_path / "data.csv").write_text("1,2\n")
    cases["unknown file"] = (tmp_path / "data.csv", "not a .npz or IDX")

    magic = tmp_path / "magic"
    _write_idx(magic, "train", x, y, False)
    p = magic / "train-images-idx3-ubyte"
    p.write_bytes(b"\x12\x34" + p.read_bytes()[2:])
    cases["idx wrong magic"] = (magic, "bad magic")
    trunc = tmp_path / "trunc"
    _write_idx(trunc, "train", x, y, False)
    p = trunc / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    cases["idx truncated"] = (trunc, "truncated")
    truncgz = tmp_path / "truncgz"
    _write_idx(truncgz, "train", x, y, True)
    p = truncgz / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    cases["idx gzip truncated"] = (truncgz, "damaged gzip")
    header = tmp_path / "header"
    _write_idx(header, "train", x, y, False)
    (header / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    cases["idx header truncated"] = (header, "truncated")
    count = tmp_path / "count"
    _write_idx(count, "train", x, y[:40], False)
    cases["idx count mismatch"] = (count, "50 images but")
    swapped = tmp_path / "swapped"
    _write_idx(swapped, "train", x, y, False)
    (swapped / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(x))
    cases["idx labels are images"] = (swapped, "dimension")
    lonely = tmp_path / "lonely"
    _write_idx(lonely, "train", x, y, False)
    _write_idx(lonely, "t10k", xt, yt, False)
    (lonely / "t10k-labels-idx1-ubyte").unlink()
    cases["idx test images without labels"] = (lonely, "only one of t10k")
    single = tmp_path / "single"
    img, lab = _write_idx(single, "train", x, y, False)
    lab.unlink()
    cases["idx images without labels file"] = (img, "no labels file")

    for i in range(1, 13):
        (tmp_path / f"n{i}").mkdir()
    cases["npz without x"] = (_npz(tmp_path / "n1", y=y), "no x array")
    cases["npz without y"] = (_npz(tmp_path / "n2", x=x), "no y array")
    cases["npz length mismatch"] = (_npz(tmp_path / "n3", x=x, y=y[:10]), "must match")
    cases["npz 2-d x"] = (_npz(tmp_path / "n4", x=x.reshape(50, -1), y=y), "shape")
    cases["npz 2-d labels"] = (_npz(tmp_path / "n5", x=x, y=y[:, None]), "labels must be")
    cases["npz fractional labels"] = (_npz(tmp_path / "n6", x=x, y=y + 0.5), "non-integer")
    cases["npz negative labels"] = (_npz(tmp_path / "n7", x=x, y=y - 5), "negative")
    cases["npz x_test without y_test"] = (_npz(tmp_path / "n8", x=x, y=y, x_test=xt), "only one of x_test")
    cases["npz ambiguous channels"] = (_npz(tmp_path / "n9", x=np.zeros((50, 8, 8, 8), np.uint8), y=y), "channel axis")
    cases["npz nan"] = (_npz(tmp_path / "n10", x=np.full((50, 4, 4), np.nan, np.float32), y=y), "NaN")
    (tmp_path / "n11" / "broken.npz").write_bytes(b"PK not really a zip")
    cases["npz not a zip"] = (tmp_path / "n11" / "broken.npz", "cannot read")
    cases["npz test shape differs"] = (_npz(tmp_path / "n12", x=x, y=y, x_test=xt[:, :20], y_test=yt), "must match")

    noimg = tmp_path / "noimg"
    _write_png_tree(noimg, x[:10], np.zeros(10, dtype=np.int64))
    (noimg / "class1").mkdir()
    (noimg / "class1" / "readme.txt").write_text("no images here")
    cases["class folder without images"] = (noimg, "holds no PNG or JPEG")
    garbage = tmp_path / "garbage"
    _write_png_tree(garbage, x[:10], np.arange(10) % 2)
    (garbage / "class0" / "zz.png").write_bytes(b"\x89PNG but not really")
    cases["unreadable image"] = (garbage, "cannot read image")
    sizes = tmp_path / "sizes"
    _write_png_tree(sizes, x[:10], np.arange(10) % 2)
    from PIL import Image

    Image.fromarray(np.zeros((14, 14), dtype=np.uint8)).save(sizes / "class1" / "zz.png")
    cases["images of different sizes"] = (sizes, "one size")
    half = tmp_path / "half"
    _write_png_tree(half / "train", x[:10], np.arange(10) % 2)
    cases["train without test"] = (half, "no test/ folder")
    extra = tmp_path / "extra"
    _write_png_tree(extra / "train", x[:10], np.arange(10) % 2)
    _write_png_tree(extra / "test", x[:10], np.arange(10) % 3)
    cases["test class unknown"] = (extra, "class2")
    few = tmp_path / "few"
    _write_png_tree(few, x[:4], np.arange(4) % 2)
    cases["too few to carve a test split"] = (few, "too few images")
    one = tmp_path / "one"
    _write_png_tree(one, x[:20], np.zeros(20, dtype=np.int64))
    cases["a single class"] = (one, "single class")
    return cases


def test_every_bad_input_is_one_line_data_error(tmp_path: Path, fashion_dir: Path, tmp_cache: Path) -> None:
    failures = []
    for name, (path, phrase) in _bad_inputs(tmp_path, fashion_dir).items():
        try:
            load_splits(path, val_size=2, calib_size=2)
        except DataError as exc:
            msg = str(exc)
            if "\n" in msg or phrase not in msg:
                failures.append(f"{name}: {msg!r} lacks {phrase!r}")
        except Exception as exc:
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
        else:
            failures.append(f"{name}: no error")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("kwargs", [{"val_size": -1}, {"calib_size": -5}, {"limit_train": 0}, {"limit_test": 0}])
def test_bad_parameters(fashion_dir: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(DataError) as exc:
        load_splits(fashion_dir, **kwargs)
    _one_line(exc)


def test_no_path_without_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Look for the data in an empty folder and under a package name dpkg does not know.
    monkeypatch.setattr(data_mod, "FASHION_MNIST_DIR", tmp_path / "absent")
    monkeypatch.setattr(data_mod, "FASHION_MNIST_PACKAGE", "hwcompress-no-such-package")
    assert find_fashion_mnist() is None
    with pytest.raises(DataError) as exc:
        load_splits()
    msg = _one_line(exc)
    assert "apt-get install hwcompress-no-such-package" in msg and "--data" in msg


def test_data_module_imports_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, hwcompress.data; print('torch' in sys.modules, 'PIL' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "False"]
