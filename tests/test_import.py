"""`import hwcompress` (and the CLI module) stays cheap: no torch, onnxruntime, paramiko or ray."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "onnxruntime", "paramiko", "onnx", "tensorrt", "ai_edge_litert", "stable_baselines3", "matplotlib", "ray")


def _loaded_after(stmt: str) -> set[str]:
    code = f"import sys; {stmt}; print(' '.join(sorted(m for m in sys.modules)))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return set(res.stdout.split())


def test_import_is_light() -> None:
    mods = _loaded_after("import hwcompress, hwcompress.records, hwcompress.targets, hwcompress.errors")
    assert not [m for m in HEAVY if m in mods]


def test_cli_import_is_light() -> None:
    mods = _loaded_after("import hwcompress.cli")
    assert not [m for m in HEAVY if m in mods]


def test_pool_module_import_is_light() -> None:
    """The pool's CLI checks (--hosts, --pool) run before any slow work: no Ray until a pool starts."""
    mods = _loaded_after("import hwcompress.profiling.pool, hwcompress.search.run")
    assert "ray" not in mods
