"""Image-classification data: IDX files, image folders and .npz, split deterministically.

numpy only (PIL is imported only to read an image folder).  Nothing is ever downloaded:
with no path, Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package.

Every problem with the input raises :class:`~hwcompress.errors.DataError` with one line
that says what was wrong and what to do.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hwcompress.errors import DataError
from hwcompress.fsutil import sha256_file, temp_path_beside
from hwcompress.paths import cache_dir

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
TEST_FRACTION = 0.2
"""Share of each class held out as the test split when the source has no test set of its own."""
_CARVE_SEED = 20240601  # fixed: the carved test split does not change with ``seed``
_FORMAT_VERSION = 1  # bump when decoding or splitting changes, so digests (and cached models) change
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True, eq=False)
class Split:
    """``x``: float32 (N, C, H, W) normalised with the data set's mean/std; ``y``: int64 (N,)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def head(self, n: int | None) -> Split:
        """The first ``n`` samples (all when ``n`` is None), as views."""
        return self if n is None or n >= len(self) else Split(self.x[:n], self.y[:n])


@dataclass(frozen=True, eq=False)
class DataSplits:
    """Disjoint train/val/calib splits of the training data plus the test split.

    ``mean``/``std`` are on the [0, 1] scale for 8-bit sources (a float for one channel, a
    tuple per channel otherwise).  ``digest`` is a stable hash of the source files' contents
    and the split parameters: equal digests mean equal splits.
    """

    train: Split
    val: Split
    calib: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]
    source: str
    digest: str
    class_names: tuple[str, ...] = ()
    class_rule: str = ""  # how num_classes was decided, for messages

    def summary(self) -> str:
        c, h, w = self.input_shape
        return (
            f"{self.source}: {self.num_classes} classes, {c}x{h}x{w}, train {len(self.train)}, "
            f"val {len(self.val)}, calib {len(self.calib)}, test {len(self.test)}"
        )


@dataclass(frozen=True, eq=False)
class _Raw:
    """Decoded data before splitting: x (N, C, H, W) uint8 or float32, y int64."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    kind: str
    files_digest: str
    class_names: tuple[str, ...] = ()


# --------------------------------------------------------------------------- public API
def find_fashion_mnist() -> Path | None:
    """The folder of Debian's ``dataset-fashion-mnist`` IDX files, or None when not installed."""
    if _has_idx_pair(FASHION_MNIST_DIR, "train"):
        return FASHION_MNIST_DIR
    if shutil.which("dpkg") is None:
        return None
    try:
        proc = subprocess.run(
            ["dpkg", "-L", FASHION_MNIST_PACKAGE], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    for line in proc.stdout.splitlines():
        p = Path(line.strip())
        if p.name.startswith("train-images-idx3-ubyte") and _has_idx_pair(p.parent, "train"):
            return p.parent
    return None


def load_splits(
    path: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    val_size: int = 5000,
    calib_size: int = 512,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> DataSplits:
    """Load a data set and split it deterministically.

    ``path``: a folder of IDX files (MNIST naming, gzipped or not) or one IDX images file; an
    image folder (``train/`` + ``test/`` of class folders, or class folders only); or a
    ``.npz`` with ``x``, ``y`` and optionally ``x_test``, ``y_test``.  None means Fashion-MNIST
    from Debian's package.  Without a test set, :data:`TEST_FRACTION` of each class is held out
    (independently of ``seed``).  ``val`` and ``calib`` (disjoint, drawn with ``seed``) come
    from the training data and are capped at 10% of it each; ``limit_train`` then keeps a
    seeded subset of the rest and ``limit_test`` a fixed subset of the test split.
    """
    for name, value in (("val_size", val_size), ("calib_size", calib_size)):
        if value < 0:
            raise DataError(f"{name} must be >= 0, got {value}")
    for name, lim in (("limit_train", limit_train), ("limit_test", limit_test)):
        if lim is not None and lim < 1:
            raise DataError(f"{name} must be >= 1, got {lim}")
    if path is None:
        found = find_fashion_mnist()
        if found is None:
            raise DataError(
                f"no data set given and Fashion-MNIST is not installed; run `apt-get install "
                f"{FASHION_MNIST_PACKAGE}` or pass --data PATH (IDX folder, image folder or .npz)"
            )
        src = found
    else:
        src = Path(path).expanduser()
    raw = _read_source(src)
    return _make_splits(
        raw,
        source=f"{raw.kind}:{src.resolve()}",
        seed=seed,
        val_size=val_size,
        calib_size=calib_size,
        limit_train=limit_train,
        limit_test=limit_test,
    )


# --------------------------------------------------------------------------- dispatch
def _read_source(src: Path) -> _Raw:
    if not src.exists():
        raise DataError(f"data path {src} does not exist; pass an IDX folder, an image folder or a .npz file")
    if src.is_file():
        if src.suffix.lower() == ".npz":
            return _read_npz(src)
        if _looks_like_idx(src):
            return _read_idx_file(src)
        raise DataError(
            f"{src} is not a .npz or IDX images file; pass an IDX folder, an image folder or a .npz file"
        )
    if _has_idx_pair(src, "train"):
        return _read_idx_folder(src)
    if any(p.is_dir() for p in _list_dir(src)):
        return _read_image_tree(src)
    names = sorted(p.name for p in _list_dir(src))[:5]
    raise DataError(
        f"{src} holds neither IDX files (train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz]) "
        f"nor class folders of images (found: {', '.join(names) or 'nothing'}); see `hwcompress --help` for the layouts"
    )


def _list_dir(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise DataError(f"cannot list {folder}: {exc.strerror or exc}; check the path and its permissions") from None


# --------------------------------------------------------------------------- IDX
def _idx_file(folder: Path, split: str, what: str) -> Path | None:
    """``<split>-<what>-idxN-ubyte`` (or ``.idxN-ubyte``), gzipped or not, in ``folder``."""
    ndim = 3 if what == "images" else 1
    for sep in ("-", "."):
        for suffix in ("", ".gz"):
            p = folder / f"{split}-{what}{sep}idx{ndim}-ubyte{suffix}"
            if p.is_file():
                return p
    return None


def _has_idx_pair(folder: Path, split: str) -> bool:
    return folder.is_dir() and _idx_file(folder, split, "images") is not None and _idx_file(folder, split, "labels") is not None


def _looks_like_idx(path: Path) -> bool:
    name = path.name.lower()
    return "idx" in name or name.endswith("-ubyte") or name.endswith("-ubyte.gz")


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        if data[:2] == b"\x1f\x8b":
            return gzip.decompress(data)
        return data
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path} is a damaged gzip file ({exc}); re-copy or re-install it") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}; check the path and its permissions") from None


def _parse_idx(path: Path, want_ndim: int) -> np.ndarray:
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'}); pass MNIST-style IDX files")
    dtype = _IDX_DTYPES.get(data[2])
    ndim = data[3]
    if dtype is None:
        raise DataError(f"{path} has an unknown IDX element type 0x{data[2]:02x}; pass MNIST-style IDX files")
    if ndim != want_ndim:
        kind = "images (3 dimensions)" if want_ndim == 3 else "labels (1 dimension)"
        raise DataError(f"{path} has {ndim} dimension(s) but should hold {kind}; check which file is which")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated (header incomplete); re-copy the file")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header < need:
        raise DataError(
            f"{path} is truncated: header says {shape} ({need} bytes) but only {len(data) - header} bytes follow; re-copy the file"
        )
    if len(data) - header > need:
        raise DataError(f"{path} has {len(data) - header - need} bytes more than its header {shape} says; re-copy the file")
    arr = np.frombuffer(data, dtype=dtype, count=need // dtype.itemsize, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True) if dtype.itemsize > 1 else arr.copy()


def _read_idx_pair(images: Path, labels: Path | None) -> tuple[np.ndarray, np.ndarray]:
    if labels is None:
        raise DataError(f"no labels file found next to {images} (expected *-labels-idx1-ubyte[.gz]); put it beside the images file")
    x = _parse_idx(images, 3)
    y = _parse_idx(labels, 1)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{images} holds {x.shape[0]} images but {labels} holds {y.shape[0]} labels; use files of the same split")
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
    return x[:, None, :, :], _check_labels(y, str(labels))


def _read_idx_folder(folder: Path) -> _Raw:
    tr_img, tr_lab = _idx_file(folder, "train", "images"), _idx_file(folder, "train", "labels")
    te_img, te_lab = _idx_file(folder, "t10k", "images"), _idx_file(folder, "t10k", "labels")
    assert tr_img is not None
    files = [p for p in (tr_img, tr_lab, te_img, te_lab) if p is not None]
    x, y = _read_idx_pair(tr_img, tr_lab)
    x_test = y_test = None
    if te_img is not None or te_lab is not None:
        if te_img is None or te_lab is None:
            raise DataError(f"{folder} has only one of t10k-images/t10k-labels; add the other or remove it")
        x_test, y_test = _read_idx_pair(te_img, te_lab)
        if x_test.shape[1:] != x.shape[1:] or x_test.dtype != x.dtype:
            raise DataError(
                f"{te_img} holds {x_test.dtype} images of {x_test.shape[2:]} but {tr_img} holds {x.dtype} images of "
                f"{x.shape[2:]}; use train and test files of the same data set"
            )
    names = FASHION_MNIST_CLASSES if folder.resolve() == FASHION_MNIST_DIR.resolve() else ()
    return _Raw(x, y, x_test, y_test, "idx", _files_digest(files, folder), names)


def _read_idx_file(images: Path) -> _Raw:
    name = images.name
    labels = None
    for a, b in (("images-idx3", "labels-idx1"), ("images.idx3", "labels.idx1")):
        if a in name:
            stem = name.replace(a, b)
            for cand in (stem, stem.removesuffix(".gz"), stem + ".gz"):
                if (images.parent / cand).is_file():
                    labels = images.parent / cand
                    break
    x, y = _read_idx_pair(images, labels)
    assert labels is not None
    return _Raw(x, y, None, None, "idx", _files_digest([images, labels], images.parent))


# --------------------------------------------------------------------------- npz
def _read_npz(path: Path) -> _Raw:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zlib.error) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {path} as .npz ({msg}); write it with numpy.savez") from None
    except Exception as exc:  # zipfile.BadZipFile and friends
        raise DataError(f"cannot read {path} as .npz ({type(exc).__name__}); write it with numpy.savez") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(
            f"{path} has no {' or '.join(missing)} array (it has: {', '.join(sorted(arrays)) or 'nothing'}); "
            "save images as x and labels as y (optionally x_test, y_test)"
        )
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path} has only one of x_test/y_test; save both or neither")
    x = _npz_images(arrays["x"], f"{path}: x")
    y = _check_labels(arrays["y"], f"{path}: y")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{path}: x holds {x.shape[0]} images but y holds {y.shape[0]} labels; they must match")
    x_test = y_test = None
    if "x_test" in arrays:
        x_test = _npz_images(arrays["x_test"], f"{path}: x_test")
        y_test = _check_labels(arrays["y_test"], f"{path}: y_test")
        if x_test.shape[0] != y_test.shape[0]:
            raise DataError(f"{path}: x_test holds {x_test.shape[0]} images but y_test holds {y_test.shape[0]} labels; they must match")
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"{path}: x_test images are {x_test.shape[1:]} but x images are {x.shape[1:]} (C, H, W); they must match")
        if (x_test.dtype == np.uint8) != (x.dtype == np.uint8):
            raise DataError(f"{path}: x is {arrays['x'].dtype} but x_test is {arrays['x_test'].dtype}; save both with the same dtype")
    return _Raw(x, y, x_test, y_test, "npz", _files_digest([path], path.parent))


def _npz_images(a: np.ndarray, what: str) -> np.ndarray:
    """(N,H,W) / (N,H,W,C) / (N,C,H,W) -> (N,C,H,W); uint8 kept, other numbers -> float32."""
    if a.dtype.kind not in "uif" and a.dtype != np.bool_:
        raise DataError(f"{what} has dtype {a.dtype}; save images as uint8 or float arrays")
    if a.ndim == 3:
        a = a[:, None, :, :]
    elif a.ndim == 4:
        c_first, c_last = a.shape[1], a.shape[3]
        if c_last <= 4 < c_first:
            a = a.transpose(0, 3, 1, 2)
        elif not c_first <= 4:
            raise DataError(
                f"{what} has shape {a.shape}: cannot tell the channel axis; use (N,H,W), (N,H,W,C) or (N,C,H,W) with C <= 4"
            )
    else:
        raise DataError(f"{what} has shape {a.shape}; use (N,H,W), (N,H,W,C) or (N,C,H,W)")
    if a.shape[0] == 0:
        raise DataError(f"{what} is empty; save at least one image")
    if a.dtype != np.uint8:
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise DataError(f"{what} contains NaN or infinite values; clean the data first")
    return np.ascontiguousarray(a)


def _check_labels(y: np.ndarray, what: str) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(f"{what} has shape {y.shape}; labels must be one integer class index per image, shape (N,)")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or not np.all(y == np.round(y)):
            raise DataError(f"{what} holds non-integer labels; labels must be class indices 0..K-1")
    elif y.dtype.kind not in "iub":
        raise DataError(f"{what} has dtype {y.dtype}; labels must be integer class indices 0..K-1")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise DataError(f"{what} holds negative labels ({int(y.min())}); labels must be class indices 0..K-1")
    return y


# --------------------------------------------------------------------------- image folders
def _class_dirs(folder: Path) -> list[Path]:
    dirs = [p for p in _list_dir(folder) if p.is_dir()]
    if not dirs:
        raise DataError(f"{folder} has no class folders; put the images of each class in a folder of their own")
    return dirs


def _image_files(class_dir: Path) -> list[Path]:
    files = [p for p in _list_dir(class_dir) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"class folder {class_dir} holds no PNG or JPEG images; add images or remove the folder")
    return files


def _read_image_tree(root: Path) -> _Raw:
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir() and test_dir.is_dir():
        classes = [d.name for d in _class_dirs(train_dir)]
        test_classes = [d.name for d in _class_dirs(test_dir)]
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise DataError(f"{test_dir} has class folder(s) {', '.join(unknown[:3])} that {train_dir} lacks; use the same class names")
        train_files = [(f, i) for i, c in enumerate(classes) for f in _image_files(train_dir / c)]
        test_files = [(f, classes.index(c)) for c in test_classes for f in _image_files(test_dir / c)]
    elif train_dir.is_dir() or test_dir.is_dir():
        raise DataError(f"{root} has a {'train' if train_dir.is_dir() else 'test'}/ folder but no "
                        f"{'test' if train_dir.is_dir() else 'train'}/ folder; add it, or put the class folders directly in {root}")
    else:
        classes = [d.name for d in _class_dirs(root)]
        train_files = [(f, i) for i, c in enumerate(classes) for f in _image_files(root / c)]
        test_files = []
    all_files = [f for f, _ in train_files + test_files]
    digest = _files_digest(all_files, root)
    cached = _cache_load(digest)
    if cached is None:
        x_all = _decode_images(all_files)
        cached = (x_all, np.array([lab for _, lab in train_files + test_files], dtype=np.int64))
        _cache_store(digest, *cached)
    x_all, y_all = cached
    n = len(train_files)
    x_test = x_all[n:] if test_files else None
    y_test = y_all[n:] if test_files else None
    return _Raw(x_all[:n], y_all[:n], x_test, y_test, "images", digest, tuple(classes))


def _decode_images(files: list[Path]) -> np.ndarray:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:  # pragma: no cover - pillow comes with matplotlib
        from hwcompress.errors import MissingDependencyError

        raise MissingDependencyError("reading an image folder needs Pillow; run `pip install pillow`") from exc
    gray_modes = {"1", "L", "LA", "I", "I;16", "F"}
    images: list[Image.Image] = []
    for f in files:
        try:
            with Image.open(f) as opened:
                opened.load()
                images.append(opened.copy())
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"cannot read image {f} ({type(exc).__name__}); replace or remove it") from None
    color = any(im.mode not in gray_modes for im in images)
    size = images[0].size
    out = np.empty((len(images), 3 if color else 1, size[1], size[0]), dtype=np.uint8)
    for i, (f, im) in enumerate(zip(files, images, strict=True)):
        if im.size != size:
            raise DataError(
                f"image {f} is {im.size[0]}x{im.size[1]} but {files[0]} is {size[0]}x{size[1]}; resize all images to one size"
            )
        if im.mode in ("I", "I;16", "F"):  # 16-bit / float grey: scale to 8 bits
            a = np.asarray(im, dtype=np.float64)
            top = 65535.0 if a.max() > 255 else 255.0
            out[i] = np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8)[None]
        elif color:
            out[i] = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
        else:
            out[i] = np.asarray(im.convert("L"))[None]
    return out


def _cache_path(digest: str) -> Path:
    return cache_dir() / "data" / f"images-{digest[:24]}.npz"


def _cache_load(digest: str) -> tuple[np.ndarray, np.ndarray] | None:
    path = _cache_path(digest)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["digest"]) != digest:
                return None
            return npz["x"], npz["y"]
    except Exception as exc:  # a damaged cache entry is decoded again, never trusted
        log.warning("ignoring damaged data cache %s (%s)", path, type(exc).__name__)
        return None


def _cache_store(digest: str, x: np.ndarray, y: np.ndarray) -> None:
    path = _cache_path(digest)
    try:
        tmp = temp_path_beside(path, ".npz")
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, x=x, y=y, digest=np.array(digest))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:  # the cache is an optimisation: never fail a load because of it
        log.warning("cannot write data cache %s: %s", path, exc)


# --------------------------------------------------------------------------- splitting
def _files_digest(files: list[Path], root: Path) -> str:
    h = hashlib.sha256(f"hwcompress-data-v{_FORMAT_VERSION}".encode())
    for f in files:
        try:
            rel = f.relative_to(root).as_posix()
        except ValueError:
            rel = f.name
        # Names matter only inside folders (class names); a renamed IDX/npz file is the same data.
        key = rel if "/" in rel else ""
        try:
            h.update(f"{key}\0{sha256_file(f)}\n".encode())
        except OSError as exc:
            raise DataError(f"cannot read {f}: {exc.strerror or exc}; check the path and its permissions") from None
    return h.hexdigest()


def _stratified_holdout(y: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(keep, held) index arrays; ``fraction`` of each class held out with a fixed seed."""
    rng = np.random.default_rng(_CARVE_SEED)
    held: list[np.ndarray] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        held.append(rng.permutation(idx)[: int(len(idx) * fraction)])
    held_idx = np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


def _channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of (N, C, H, W) on the [0,1] scale for uint8, raw scale otherwise."""
    c = x.shape[1]
    s = np.zeros(c)
    ss = np.zeros(c)
    for i in range(0, x.shape[0], chunk):
        b = x[i : i + chunk].astype(np.float64)
        if x.dtype == np.uint8:
            b /= 255.0
        s += b.sum(axis=(0, 2, 3))
        ss += np.square(b).sum(axis=(0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean**2, 0.0))
    std[std < 1e-6] = 1.0
    return mean, std


def _normalised(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    out = x.astype(np.float32)
    if x.dtype == np.uint8:
        out *= np.float32(1 / 255)
    out -= mean.astype(np.float32)[None, :, None, None]
    out /= std.astype(np.float32)[None, :, None, None]
    return out


def _make_splits(
    raw: _Raw,
    *,
    source: str,
    seed: int,
    val_size: int,
    calib_size: int,
    limit_train: int | None,
    limit_test: int | None,
) -> DataSplits:
    x, y = raw.x, raw.y
    if raw.x_test is None or raw.y_test is None:
        keep, held = _stratified_holdout(y, TEST_FRACTION)
        if held.size == 0:
            raise DataError(
                f"{source} has too few images per class to hold out a test split ({TEST_FRACTION:.0%} of each class); "
                "add images or give a separate test set"
            )
        x_test, y_test = x[held], y[held]
        x, y = x[keep], y[keep]
    else:
        x_test, y_test = raw.x_test, raw.y_test
    n = len(y)
    cap = n // 10
    val_n, calib_n = min(val_size, cap), min(calib_size, cap)
    if (val_n, calib_n) != (val_size, calib_size):
        log.info("training set has %d images: val %d, calib %d (capped at 10%% each)", n, val_n, calib_n)
    if n - val_n - calib_n < 1:
        raise DataError(f"{source} has only {n} training images; add images")
    perm = np.random.default_rng(seed).permutation(n)
    val_idx = np.sort(perm[:val_n])
    calib_idx = np.sort(perm[val_n : val_n + calib_n])
    train_idx = perm[val_n + calib_n :]
    if limit_train is not None:
        train_idx = train_idx[:limit_train]
    train_idx = np.sort(train_idx)
    test_idx = np.arange(len(y_test))
    if limit_test is not None and limit_test < len(test_idx):
        test_idx = np.sort(np.random.default_rng(_CARVE_SEED + 1).permutation(len(test_idx))[:limit_test])

    mean, std = _channel_stats(x[train_idx])
    num_classes, class_rule = _class_count(raw, y, y_test, source)
    params = {
        "files": raw.files_digest,
        "seed": seed,
        "val": val_n,
        "calib": calib_n,
        "limit_train": limit_train,
        "limit_test": limit_test,
        "test_fraction": TEST_FRACTION if raw.x_test is None else None,
    }
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]

    def split(xs: np.ndarray, ys: np.ndarray, idx: np.ndarray) -> Split:
        return Split(_normalised(xs[idx], mean, std), np.ascontiguousarray(ys[idx]))

    c, h, w = (int(d) for d in x.shape[1:])
    return DataSplits(
        train=split(x, y, train_idx),
        val=split(x, y, val_idx),
        calib=split(x, y, calib_idx),
        test=split(x_test, y_test, test_idx),
        num_classes=num_classes,
        input_shape=(c, h, w),
        mean=float(mean[0]) if c == 1 else tuple(float(m) for m in mean),
        std=float(std[0]) if c == 1 else tuple(float(s) for s in std),
        source=source,
        digest=digest,
        class_names=raw.class_names,
        class_rule=class_rule,
    )


def _class_count(raw: _Raw, y: np.ndarray, y_test: np.ndarray, source: str) -> tuple[int, str]:
    """(number of classes, how it was decided); DataError for labels that are not class indices.

    The class count is the number of class names where the source has them (image folders,
    Fashion-MNIST); otherwise the largest training label + 1, and then every class 0..K-1 must
    have training images (labels such as 0..9 and 42 are not class indices).  Test labels must
    be classes of the training data.
    """
    low = min(int(y.min()), int(y_test.min()) if y_test.size else 0)
    if low < 0:
        raise DataError(f"{source}: labels must be class indices 0..K-1, found {low}")
    if raw.class_names:
        k, rule = len(raw.class_names), f"one per class name of the data ({_names_shown(raw.class_names)})"
        top = max(int(y.max()), int(y_test.max()) if y_test.size else 0)
        if top >= k:
            raise DataError(f"{source}: label {top} found but the data names {k} classes (labels 0..{k - 1}); fix the labels")
    else:
        k = int(y.max()) + 1
        rule = "the largest training label + 1"
        present = np.unique(y)
        if present.size != k:
            missing = sorted(set(range(k)) - {int(v) for v in present})
            shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
            raise DataError(
                f"{source}: training labels are {_ranges(present)} ({present.size} distinct values): class labels must be "
                f"0..K-1 with training images for each, but {len(missing)} of 0..{k - 1} have none ({shown}); renumber the labels"
            )
        if y_test.size and int(y_test.max()) >= k:
            raise DataError(
                f"{source}: test labels go up to {int(y_test.max())} but the training labels are 0..{k - 1} "
                f"({k} classes); the test split must use the training data's classes"
            )
    if k < 2:
        raise DataError(f"{source} has a single class; a classifier needs at least two")
    return k, rule


def _names_shown(names: tuple[str, ...]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def _ranges(values: np.ndarray) -> str:
    """``0..9, 42`` for sorted unique integers."""
    vals = [int(v) for v in values]
    parts: list[str] = []
    start = prev = vals[0]
    for v in [*vals[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}..{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(parts[:6]) + (" ..." if len(parts) > 6 else "")


__all__ = ["FASHION_MNIST_CLASSES", "DataSplits", "Split", "find_fashion_mnist", "load_splits"]
