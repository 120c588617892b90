"""The test suite's loopback sshd (tests/sshd.py) for the benchmarks in tools/ that need a real SSH "board"."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def sshd_module() -> Any:
    """tests/sshd.py as a module (its ``SshServer`` starts an sshd on 127.0.0.1); exits with one line
    when OpenSSH's server is not installed."""
    spec = importlib.util.spec_from_file_location("hwc_test_sshd", REPO / "tests" / "sshd.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    if not module.sshd_available():
        sys.exit("/usr/sbin/sshd is missing (apt-get install openssh-server)")
    return module
