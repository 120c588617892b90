"""Where hwcompress keeps its caches (checkpoints, measurement DB): override with $HWCOMPRESS_CACHE."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    env = os.environ.get("HWCOMPRESS_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hwcompress"
