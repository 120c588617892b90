"""A search started as the user would and killed with SIGKILL once it has logged some candidates."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest


def log_lines(path: Path) -> list[dict[str, Any]]:
    """Every whole line of a search.jsonl (the search's own reader: a line torn by a kill is skipped)."""
    from hwcompress.search.evaluator import SearchLog

    return SearchLog(path).read() if path.exists() else []


def kill_when_logged(args: list[str], log: Path, n: int, env: dict[str, str], errors: Path,
                     timeout_s: float = 900) -> list[dict[str, Any]]:
    """Run ``args`` in a session of its own, SIGKILL the whole session once ``log`` holds ``n`` lines;
    the lines it holds then.  Fails the test if the search ends first (its stderr, kept in ``errors``,
    in the message)."""
    with errors.open("w") as err:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(log_lines(log)) < n:
            if proc.poll() is not None:
                pytest.fail(f"search ended ({proc.returncode}) before it could be killed: {errors.read_text()[-3000:]}")
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    before = log_lines(log)
    assert len(before) >= n
    return before
