"""Atomic writes: whole file or nothing, and the mode a plain open() would give (not the temp file's 0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hwcompress.fsutil import atomic_write_bytes, atomic_write_text


def test_atomic_write_replaces_whole_and_keeps_the_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        target = tmp_path / "sub" / "rows.json"
        atomic_write_text(target, "first")
        atomic_write_bytes(target, b"second")
        assert target.read_bytes() == b"second"
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
        assert [p.name for p in target.parent.iterdir()] == ["rows.json"]  # no temp file left behind
    finally:
        os.umask(old)


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "rows.json"
    atomic_write_text(target, "kept")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, None)  # type: ignore[arg-type]  # the write itself fails
    assert target.read_text() == "kept" and [p.name for p in tmp_path.iterdir()] == ["rows.json"]
