"""Runners: run a profiler script where the target is and return its stdout.

A runner is the only part that knows *where* a profile runs.  :class:`LocalRunner` starts a
fresh local subprocess (clean memory figures, isolation from the search process); an SSH runner
implements the same :class:`Runner` protocol by uploading the script, ``benchcore.py`` and the
model files.  Exit-status rules shared by all runners live in :func:`check_exit`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from hwcompress.errors import ProfilerError, ProfilerTimeout

log = logging.getLogger(__name__)

#: Exit codes with which a profiler script reports a failure as JSON on stdout (see benchcore.py).
PROFILER_FAILURE_CODES: frozenset[int] = frozenset({2, 3, 4, 5})
_TAIL_CHARS = 400


@runtime_checkable
class Runner(Protocol):
    """Runs one profiler script to completion on the device."""

    def run(self, script: str, args: Sequence[str], files: Sequence[Path], timeout_s: float) -> str:
        """Run ``script`` (a file name in the profilers folder, e.g. ``"ort_bench.py"``) with ``args``.

        ``files`` are the model files the script reads; an item of ``args`` equal to ``str(f)``
        for one of them names that file, and a remote runner replaces it by the device-side path
        (the local runner uses files in place).  Returns stdout of a run that exited 0, or of a
        run that exited with a code in :data:`PROFILER_FAILURE_CODES` and printed its failure as
        JSON.  Raises :class:`ProfilerTimeout` after ``timeout_s`` seconds (the process is killed)
        and :class:`ProfilerError` for any other exit, with the stderr tail on one line.
        """
        ...


def stderr_tail(stderr: str, limit: int = _TAIL_CHARS) -> str:
    """The last non-empty lines of ``stderr`` joined on one line, at most ``limit`` characters."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    text = " | ".join(lines[-4:])
    return text if len(text) <= limit else "..." + text[-(limit - 3):]


def check_exit(script: str, returncode: int, stdout: str, stderr: str) -> str:
    """Apply the exit-status rules of :meth:`Runner.run`; return stdout or raise ProfilerError."""
    if returncode == 0 or (returncode in PROFILER_FAILURE_CODES and stdout.strip()):
        if stderr.strip():
            log.debug("%s stderr: %s", script, stderr_tail(stderr))
        return stdout
    tail = stderr_tail(stderr) or "no output on stderr"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (out of memory?)" if -returncode == signal.SIGKILL else ""
        raise ProfilerError(f"{script} was killed by {name}{hint}: {tail}")
    raise ProfilerError(f"{script} exited with status {returncode}: {tail}")


class LocalRunner:
    """Runs a profiler as a fresh subprocess of this machine's Python (``sys.executable``)."""

    def __init__(
        self,
        python: str | None = None,
        profilers_dir: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``profilers_dir`` defaults to the shipped profilers; ``env`` entries are added to os.environ."""
        self.python = python or sys.executable
        self._profilers_dir = profilers_dir
        self.env = env or {}

    @property
    def profilers_dir(self) -> Path:
        if self._profilers_dir is None:
            from hwcompress.profiling.adapters import profilers_dir

            self._profilers_dir = profilers_dir()
        return self._profilers_dir

    def run(self, script: str, args: Sequence[str], files: Sequence[Path], timeout_s: float) -> str:
        path = self.profilers_dir / script
        if not path.is_file():
            raise ProfilerError(f"profiler script {path} is missing; reinstall hwcompress")
        for f in files:
            if not Path(f).exists():
                raise ProfilerError(f"model file {f} disappeared before profiling")
        cmd = [self.python, str(path), *args]
        env = {**os.environ, **self.env}
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                env=env, text=True, start_new_session=True,
            )
        except OSError as exc:
            raise ProfilerError(f"cannot start {self.python}: {exc.strerror or exc}") from None
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            _, stderr = proc.communicate()
            tail = stderr_tail(stderr)
            raise ProfilerTimeout(
                f"{script} ran past its {timeout_s:g} s limit and was stopped; raise measure.timeout_s "
                f"in the target" + (f" (stderr: {tail})" if tail else "")
            ) from None
        except BaseException:
            _kill_group(proc)
            proc.communicate()
            raise
        finally:
            _kill_group(proc)  # children the script may have left behind
        log.debug("%s %s: exit %s in %.2f s", script, " ".join(args), proc.returncode, time.perf_counter() - t0)
        return check_exit(script, proc.returncode, stdout, stderr)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the process group led by ``proc`` (started with a new session); ignore if gone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
