"""Cached virtual environments of an old Python for the device-script tests (issue 20).

A device may run Python 3.6 with numpy 1.13 (JetPack 4.6); the tests run the profiler scripts
under such a Python where this machine has one.  :func:`find_python` looks on ``PATH``
(``python3.6``) and in pyenv's versions folder; :func:`cached_venv` creates a venv with pinned
wheels once, under ``$XDG_CACHE_HOME/hwcompress/old-python-venvs`` (``~/.cache`` by default),
and reuses it while the interpreter and the pins are unchanged (a ``.complete`` stamp is
written last, so a half-built venv is rebuilt).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

#: The last pip for Python 3.6; 3.6's bundled pip 18 does not know manylinux2014 wheel tags.
PIP_FOR = {"3.6": "pip==21.3.1", "3.7": "pip==24.0"}
INSTALL_TIMEOUT_S = 300.0


def find_python(minor: str) -> str | None:
    """A working interpreter of Python ``minor`` (e.g. ``"3.6"``) on this machine, or None:
    pyenv's versions folder first (its shims on PATH fail when the version is not selected),
    then ``python<minor>`` on PATH."""
    root = Path(os.environ.get("PYENV_ROOT") or "~/.pyenv").expanduser() / "versions"
    candidates = [str(folder / "bin" / f"python{minor}") for folder in sorted(root.glob(f"{minor}.*"), reverse=True)]
    candidates += [p for p in [shutil.which(f"python{minor}")] if p]
    for exe in candidates:
        try:
            res = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if res.returncode == 0 and res.stdout.strip() == minor:
            return exe
    return None


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hwcompress" / "old-python-venvs"


def _run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip() and "is ignored" not in ln]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {res.returncode}): {' | '.join(lines[-3:])}")


def cached_venv(python: str, requirements: tuple[str, ...]) -> Path:
    """A venv of ``python`` with exactly ``requirements`` (wheels only, no dependencies pulled)."""
    version = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    key = hashlib.sha256("\n".join([os.path.realpath(python), version, *requirements]).encode()).hexdigest()[:12]
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / f"py{version}-{key}"
    stamp = venv / ".complete"
    if stamp.is_file():
        return venv
    with open(root / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be building the same venv
        if stamp.is_file():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        _run([python, "-m", "venv", str(venv)])
        py = str(venv / "bin" / "python")
        minor = ".".join(version.split(".")[:2])
        pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        if minor in PIP_FOR:
            _run([*pip, PIP_FOR[minor]])
        _run([*pip, "--no-deps", "--only-binary=:all:", *requirements])
        stamp.write_text("\n".join(requirements) + "\n")
    return venv
