"""Runners: run a profiler script where the target is and return its stdout.

A runner is the only part that knows *where* a profile runs.  :class:`LocalRunner` starts a
fresh local subprocess (clean memory figures, isolation from the search process); an SSH runner
implements the same :class:`Runner` protocol by uploading the script, ``benchcore.py`` and the
model files.  Exit-status rules shared by all runners live in :func:`check_exit`.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from hwcompress.errors import ProfilerError, ProfilerTimeout

log = logging.getLogger(__name__)

#: Exit codes with which a profiler script reports a failure as JSON on stdout (see benchcore.py).
PROFILER_FAILURE_CODES: frozenset[int] = frozenset({2, 3, 4, 5})
_TAIL_CHARS = 400
#: Oldest Python the profiler scripts run on (benchcore.py; vermin and a real 3.6 run test it).
MIN_DEVICE_PYTHON = (3, 6)
#: Prints the interpreter's version under any Python 2.6+ or 3.x.
PYTHON_VERSION_CODE = "import platform; print(platform.python_version())"
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt))(?::\s*(.*))?$")
_FILE_LINE = re.compile(r'^\s*File "([^"]+)", line (\d+)')


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


def parse_version(text: str) -> tuple[int, ...]:
    """``"3.6.9"`` -> ``(3, 6, 9)``; ``()`` when ``text`` holds no version."""
    m = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(g) for g in m.groups() if g is not None) if m else ()


def python_version_of(python: str, timeout_s: float = 20.0) -> str:
    """Version of the local interpreter ``python`` (``"3.6.15"``), or ``""`` if it does not run."""
    if python == sys.executable:
        return platform.python_version()
    try:
        res = subprocess.run([python, "-c", PYTHON_VERSION_CODE], capture_output=True, text=True,
                             timeout=timeout_s, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return res.stdout.strip() if res.returncode == 0 else ""


def _last_exception(stderr: str) -> tuple[str, str, str]:
    """(exception type, message, ``file:line``) of the last Python error printed on ``stderr``."""
    kind = message = where = ""
    for line in stderr.splitlines():
        f = _FILE_LINE.match(line)
        if f:
            where = f"{os.path.basename(f.group(1))}:{f.group(2)}"
            continue
        m = _EXC_LINE.match(line.strip())
        if m:
            kind, message = m.group(1), (m.group(2) or "").strip()
    return kind, message, where


def diagnose_death(script: str, returncode: int, stderr: str, python_version: str, python: str) -> str:
    """One line for a profiler that ended without its JSON result: what happened, under which
    Python (``python_version``, ``""`` when unknown), and the fix."""
    name = script.split(" ", 1)[0]
    under = f"Python {python_version}" if python_version else f"{python!r} (version unknown)"
    tail = stderr_tail(stderr) or "no output on stderr"
    version = parse_version(python_version)
    floor = ".".join(map(str, MIN_DEVICE_PYTHON))
    kind, message, where = _last_exception(stderr)
    if (version and version < MIN_DEVICE_PYTHON) or (not version and kind == "SyntaxError"):
        return (f"{script} cannot run under {under}: the profilers need Python >= {floor}"
                f"{f' ({kind} at {where})' if kind else ''}; fix: set connection.python in the target to a "
                f"Python {floor}+ on the device (JetPack 4.6: python3 is 3.6.9) and check it with "
                "`hwcompress targets check`")
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode).name
        except ValueError:
            sig = f"signal {-returncode}"
        if -returncode == signal.SIGKILL:
            fix = "the device ran out of memory or something killed it: free memory or profile a smaller model"
        elif -returncode in (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGABRT):
            fix = (f"the runtime crashed; a runtime wheel built for a newer numpy crashes on an older one (onnxruntime "
                   f"1.10 needs numpy >= 1.16.6): compare versions with `hwcompress targets check` and reinstall "
                   f"with {python} -m pip")
        else:
            fix = f"run it by hand on the device to see why: {python} {name} --probe"
        return f"{script} was killed by {sig} under {under}: {tail}; fix: {fix}"
    if kind in ("ModuleNotFoundError", "ImportError"):
        missing = re.search(r"No module named '([\w.]+)'", message)
        module = missing.group(1).split(".")[0] if missing else ""
        fix = (f"install it on the device: {python} -m pip install {module}" if module
               else f"reinstall the runtime on the device with {python} -m pip")
        return f"{script} died under {under}: {kind}: {message} (at {where or '?'}); fix: {fix}"
    if kind == "SyntaxError":
        return (f"{script} cannot be compiled by {under} ({message or 'invalid syntax'} at {where or '?'}); fix: the "
                "scripts on the device are not this hwcompress's: reinstall hwcompress (they are uploaded per "
                "session), or report a profiler incompatible with this Python")
    if kind == "MemoryError":
        return f"{script} ran out of memory under {under} (at {where or '?'}); fix: free memory or profile a smaller model"
    if kind:
        return (f"{script} died under {under}: {kind}: {message} (at {where or '?'}); fix: this is a profiler bug: "
                f"report it with the traceback that `{python} {name} --probe` prints on the device")
    return (f"{script} stopped without a result (exit {returncode}) under {under}: {tail}; fix: run it by hand "
            f"on the device to see why: {python} {name} --probe")


def check_exit(
    script: str,
    returncode: int,
    stdout: str,
    stderr: str,
    python_version: Callable[[], str] | None = None,
    python: str = "python3",
) -> str:
    """Apply the exit-status rules of :meth:`Runner.run`; return stdout or raise ProfilerError.

    A run that ended without its JSON result is described by :func:`diagnose_death`;
    ``python_version`` is called only then, to name the interpreter (``python``) that ran it.
    """
    if returncode == 0 or (returncode in PROFILER_FAILURE_CODES and stdout.strip()):
        if stderr.strip():
            log.debug("%s stderr: %s", script, stderr_tail(stderr))
        return stdout
    version = python_version() if python_version is not None else ""
    raise ProfilerError(diagnose_death(script, returncode, stderr, version, python))


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
        return check_exit(script, proc.returncode, stdout, stderr, lambda: python_version_of(self.python),
                          self.python)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the process group led by ``proc`` (started with a new session); ignore if gone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
