"""Checks made before any slow work: a search refuses bad input in seconds, not after hours.

Each check raises a :class:`~hwcompress.errors.HwcompressError` with one line that says what is
wrong and what to do; none of them writes anything the user keeps (a writability probe creates
and removes one empty temp file).
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from hwcompress.errors import ArtifactError, DataError, ModelError, TargetError, UsageError

if TYPE_CHECKING:
    from torch import nn

    from hwcompress.data import DataSplits
    from hwcompress.records import Target

log = logging.getLogger(__name__)

# Pseudo file systems where a folder may seem writable but files cannot be made (or should not be).
_PSEUDO_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def writable_folder(path: Path, option: str, *, exists_ok: bool = True) -> None:
    """Refuse ``path`` as a folder to create or write into, unless it can be.

    ``path`` may not exist yet; its missing parents are then created later, so the nearest
    existing ancestor must be a folder in which files can be made (probed with a real temp file).
    """
    path = Path(os.path.abspath(Path(path).expanduser()))
    for root in _PSEUDO_ROOTS:
        if path == root or root in path.parents:
            raise UsageError(f"{option} {path}: {root} is a pseudo file system; choose a folder on a disk")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file, not a folder; choose another path")
    if path.exists() and not exists_ok:
        raise UsageError(f"{option} {path} already exists")
    anchor = _nearest_existing(path)
    if not anchor.is_dir():
        raise UsageError(f"{option} {path}: {anchor} is a file, so no folder can be made below it; choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".hwcompress-probe-", dir=anchor)
    except OSError as exc:
        why = "permission denied" if exc.errno in (errno.EACCES, errno.EPERM) else (exc.strerror or str(exc))
        if exc.errno == errno.EROFS:
            why = "read-only file system"
        raise UsageError(f"{option} {path}: cannot write in {anchor} ({why}); choose a folder you can write to") from None
    os.close(fd)
    os.unlink(probe)


def artifact_destination(out: Path, force: bool) -> None:
    """``--out``: a folder that can be written, and not an existing one without ``force``."""
    writable_folder(out, "--out")
    if Path(out).exists():
        from hwcompress.artifact import MANIFEST

        if not force:
            raise ArtifactError(f"artifact folder {out} already exists; pass --force to replace it or choose another --out")
        if any(Path(out).iterdir()) and not (Path(out) / MANIFEST).is_file():
            raise ArtifactError(f"--out {out} is a folder that holds files but no hwcompress artifact; "
                                "--force only replaces an artifact: choose another --out")


def model_classes(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """How many classes ``model`` outputs (the width of its output for one input of ``input_shape``)."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            y = model(torch.zeros((1, *input_shape[-3:])))
    except Exception as exc:
        raise ModelError(f"the model cannot run on an input of shape 1x{'x'.join(map(str, input_shape[-3:]))} "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                         "check --input-shape / the data's image size") from None
    finally:
        model.train(was_training)
    if not isinstance(y, torch.Tensor) or y.ndim != 2 or y.shape[0] != 1:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ModelError(f"the model's output is {shape}; a classifier must return logits of shape (batch, classes)")
    return int(y.shape[1])


def labels_fit_model(splits: DataSplits, model: nn.Module, spec: str) -> None:
    """Every label of every split is a class the model outputs."""
    k = model_classes(model, splits.input_shape)
    top = max(int(s.y.max()) for s in (splits.train, splits.val, splits.calib, splits.test) if len(s))
    if top >= k:
        raise DataError(
            f"the data has labels 0..{top} ({splits.num_classes} classes, {splits.class_rule}) but the model {spec} "
            f"outputs {k} classes; give data whose labels are 0..{k - 1} or a model with {top + 1} outputs"
        )


def host_set(target: Target) -> None:
    """An SSH target names its device's host (the shipped board files leave it empty)."""
    conn = target.connection
    if conn.kind == "ssh" and not conn.host:
        raise TargetError(
            f"target {target.name}: no device host is set (the shipped {target.name}.toml leaves connection.host "
            f"empty); pass --host NAME_OR_IP, or copy it to ~/.config/hwcompress/targets/{target.name}.toml and set it"
        )


def target_ready(target: Target, *, trust_new_host: bool = False) -> None:
    """The target's device can profile now: host set, reachable, host key known, Python and runtime usable.

    Runs ``targets check``'s probe (about a second locally, a few over SSH).
    """
    host_set(target)
    from hwcompress.device_check import check_device

    report = check_device(target, trust_new_host=trust_new_host)
    if not report.ok:
        first = report.problems[0] if report.problems else "not ready"
        fix = f"; fix: {report.fixes[0]}" if report.fixes else ""
        more = f" (+{len(report.problems) - 1} more: run `hwcompress targets check {target.name}`)" if len(report.problems) > 1 else ""
        raise TargetError(f"target {target.name} ({report.connection}) cannot profile: {first}{fix}{more}")


def boards_ready(boards: list[Target], *, trust_new_host: bool = False) -> None:
    """Every board of a pool can profile now (:func:`target_ready` on each, all at once); the first
    board that cannot, in the order given, is refused with its reason.  The probes' connections are
    closed: each board's worker opens its own."""
    from concurrent.futures import ThreadPoolExecutor

    from hwcompress.errors import HwcompressError
    from hwcompress.profiling.remote import ssh_runner

    def one(board: Target) -> HwcompressError | None:
        try:
            target_ready(board, trust_new_host=trust_new_host)
        except HwcompressError as exc:
            return exc
        finally:
            if board.connection.kind == "ssh" and board.connection.host:
                ssh_runner(board.connection).close()
        return None

    with ThreadPoolExecutor(max_workers=min(len(boards), 16)) as pool:
        failures = list(pool.map(one, boards))
    for board, exc in zip(boards, failures, strict=True):
        if exc is not None:
            raise type(exc)(f"board {board.connection.board} of the pool: {exc}; fix it or leave it out of "
                            "--hosts / --pool") from None


__all__ = [
    "artifact_destination", "boards_ready", "host_set", "labels_fit_model", "model_classes", "target_ready",
    "writable_folder",
]
