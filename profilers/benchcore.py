"""Shared device-side helpers of the profiler scripts: the one timing loop, statistics,
peak memory, device description, argument parsing and the single JSON result.

Standard library + numpy only (numpy imported lazily), Python >= 3.8, so that a profiler script
can be copied with this file into any folder of a device and run as ``python3 <x>_bench.py ...``.

Result contract of every profiler script: exactly one JSON object on stdout.  Success:
``{"ok": true, ...}``, exit 0.  Failure: ``{"ok": false, "error": "<one line>", "kind": K}`` with
exit code ``EXIT_CODES[K]``: 2 usage (bad arguments), 3 model (the model cannot be loaded, fed or
run), 4 environment (runtime missing, provider unavailable), 5 internal (a bug in the script).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

CORE_VERSION = "1.0"
EXIT_CODES: dict[str, int] = {"usage": 2, "model": 3, "environment": 4, "internal": 5}

_PAGE_KB = 1024


class BenchFailure(Exception):
    """A failure to report as ``{"ok": false}``; ``kind`` is a key of :data:`EXIT_CODES`."""

    def __init__(self, message: str, kind: str = "model") -> None:
        super().__init__(message)
        self.kind = kind if kind in EXIT_CODES else "internal"


# --------------------------------------------------------------------------- timing
def time_runs(
    fn: Callable[[], object],
    *,
    warmup: int,
    min_runs: int,
    min_seconds: float,
    max_runs: int,
    max_seconds: float,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then time single calls (seconds each).

    Timed runs continue until BOTH ``min_runs`` runs and ``min_seconds`` of timed runs are done,
    and stop early at ``max_runs`` runs or ``max_seconds`` (the caps win over the minimums).
    Every sample is returned, in order; none is dropped.  The garbage collector is paused
    during the loop so that a collection does not land inside one sample.
    """
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if min_runs < 1 or max_runs < min_runs:
        raise ValueError(f"need 1 <= min_runs <= max_runs, got {min_runs}, {max_runs}")
    if min_seconds < 0 or max_seconds <= 0:
        raise ValueError(f"need min_seconds >= 0 and max_seconds > 0, got {min_seconds}, {max_seconds}")
    import gc

    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(warmup):
            fn()
        samples: list[float] = []
        start = clock()
        while True:
            t0 = clock()
            fn()
            t1 = clock()
            samples.append(t1 - t0)
            n = len(samples)
            elapsed = t1 - start
            if n >= max_runs or elapsed >= max_seconds:
                break
            if n >= min_runs and elapsed >= min_seconds:
                break
        return samples
    finally:
        if gc_was_enabled:
            gc.enable()


def latency_stats(samples_s: Sequence[float]) -> dict[str, float | int]:
    """Statistics of per-run times given in seconds, reported in ms.

    Keys: median_ms, p10_ms, p90_ms (linear interpolation, as ``numpy.percentile``), mean_ms,
    std_ms (population std, ddof=0), cv (= std / mean), robust_cv (= 1.4826 * MAD / median, the
    normal-consistent spread that one scheduler hiccup does not inflate), n, min_ms, max_ms.
    """
    if len(samples_s) == 0:
        raise ValueError("latency_stats needs at least one sample")
    import numpy as np

    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    p10, median, p90 = np.percentile(ms, [10.0, 50.0, 90.0])
    mean = float(ms.mean())
    std = float(ms.std())
    mad = float(np.median(np.abs(ms - median)))
    return {
        "median_ms": float(median),
        "p10_ms": float(p10),
        "p90_ms": float(p90),
        "mean_ms": mean,
        "std_ms": std,
        "cv": std / mean if mean > 0 else 0.0,
        "robust_cv": 1.4826 * mad / float(median) if median > 0 else 0.0,
        "n": int(ms.size),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
    }


# --------------------------------------------------------------------------- memory
def _status_kb(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM) in bytes, or None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * _PAGE_KB
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes() -> int | None:
    """Current resident set size (bytes), or None where /proc is unavailable."""
    return _status_kb("VmRSS")


def hwm_bytes() -> int | None:
    """Peak resident set size since start or the last reset (bytes), or None."""
    return _status_kb("VmHWM")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ``/proc/self/clear_refs`` "5"); False if not permitted."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak RSS attributable to the work between :meth:`start` and :meth:`stop` (bytes).

    ``start()`` before the model is loaded records the RSS baseline and resets the kernel's
    peak; ``sample()`` at checkpoints (after loading, after runs) records the RSS as a fallback;
    ``stop()`` returns ``peak - baseline``.  Where the peak cannot be reset the result is the
    kernel peak if it rose during the window, else the highest sampled RSS (a lower bound),
    and ``method``/``note`` say so.
    """

    def __init__(self) -> None:
        self.baseline: int | None = None
        self.reset_ok = False
        self.hwm_start: int | None = None
        self.samples: list[int] = []

    def start(self) -> None:
        self.baseline = rss_bytes()
        self.reset_ok = reset_peak_rss()
        self.hwm_start = hwm_bytes()
        self.samples = [] if self.baseline is None else [self.baseline]

    def sample(self) -> None:
        rss = rss_bytes()
        if rss is not None:
            self.samples.append(rss)

    def stop(self) -> dict[str, Any]:
        """``{"peak_memory_bytes": int, "memory": {method, baseline_rss_bytes, peak_rss_bytes, note}}``."""
        self.sample()
        hwm = hwm_bytes()
        if self.baseline is None or hwm is None:
            return {
                "peak_memory_bytes": 0,
                "memory": {"method": "unavailable", "baseline_rss_bytes": 0, "peak_rss_bytes": 0,
                           "note": "no /proc/self/status on this system; peak memory not measured"},
            }
        sampled = max(self.samples)
        note = ""
        if self.reset_ok:
            method = "clear_refs+VmHWM"
            peak = max(hwm, sampled)
        elif self.hwm_start is not None and hwm > self.hwm_start:
            method = "VmHWM"
            peak = hwm
            note = "/proc/self/clear_refs not permitted; the peak rose during the profile, so VmHWM is used"
        else:
            method = "VmRSS-samples"
            peak = sampled
            note = ("/proc/self/clear_refs not permitted and VmHWM was set before the model was loaded; "
                    "peak is the highest sampled RSS (a lower bound)")
        return {
            "peak_memory_bytes": max(0, peak - self.baseline),
            "memory": {"method": method, "baseline_rss_bytes": self.baseline, "peak_rss_bytes": peak,
                       "note": note},
        }


# --------------------------------------------------------------------------- device
def _read(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read().replace(b"\x00", b"").decode("utf-8", "replace").strip()
    except OSError:
        return ""


_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "f16c",
             "neon", "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve")


def device_info() -> dict[str, Any]:
    """CPU model (from /proc/cpuinfo), board model, logical/usable cores, arch, OS, and the
    CPU features that decide kernel choice (AVX2, VNNI, NEON dot product, ...)."""
    import platform

    cpu = ""
    fields: dict[str, str] = {}
    for line in _read("/proc/cpuinfo").splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip().lower(), value.strip())
    for key in ("model name", "processor", "cpu model", "hardware", "model"):
        value = fields.get(key, "")
        if value and not value.isdigit():
            cpu = value
            break
    cpu = cpu or platform.processor() or platform.machine()
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    return {
        "cpu": re.sub(r"\s+", " ", cpu),
        "board": _read("/proc/device-tree/model"),
        "cores": os.cpu_count() or 0,
        "usable_cores": usable,
        "arch": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "features": [f for f in _FEATURES if f in flags],
    }


def device_string(info: dict[str, Any]) -> str:
    """One-line description, e.g. ``"AMD EPYC 7B13 | x86_64 | 2 cores | Linux 6.1.0"``."""
    parts = [info.get("board") or "", info.get("cpu") or "", info.get("arch") or "",
             f"{info.get('usable_cores', 0)} cores", ",".join(info.get("features") or []),
             info.get("os") or ""]
    return " | ".join(p for p in parts if p)


# --------------------------------------------------------------------------- versions
def profiler_version(script_path: str) -> str:
    """``"<script> <SCRIPT_VERSION>+<hash>"``: the hash covers the script and this file's bytes,
    so any edit of either changes the version (and so the measurement-cache key)."""
    with open(script_path, "rb") as fh:
        script = fh.read()
    with open(os.path.join(os.path.dirname(os.path.abspath(script_path)), "benchcore.py"), "rb") as fh:
        core = fh.read()
    m = re.search(rb'^SCRIPT_VERSION\s*=\s*"([^"]+)"', script, re.MULTILINE)
    version = m.group(1).decode() if m else "0"
    digest = hashlib.sha256(script + b"\0" + core).hexdigest()[:8]
    name = os.path.splitext(os.path.basename(script_path))[0]
    return f"{name} {version}+{digest}"


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def utc_now() -> str:
    """UTC ISO-8601 timestamp with seconds, e.g. ``2025-01-31T12:00:00+00:00``."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")  # noqa: UP017 (Python 3.8 devices)


# --------------------------------------------------------------------------- arguments
def base_parser(prog: str, description: str) -> Any:
    """An ``argparse`` parser with the arguments every runtime script takes.

    Errors are reported as one JSON object with kind "usage" (exit 2), not as argparse's text.
    """
    import argparse

    class _JsonParser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            fail(f"{prog}: {message}", "usage")

    p = _JsonParser(prog=prog, description=description)
    p.add_argument("--model", default="", help="model file (required unless --probe)")
    p.add_argument("--probe", action="store_true",
                   help="only check that the runtime loads; report its version and the device")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (>= 1)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs before timing")
    p.add_argument("--min-runs", type=int, default=50, help="timed runs at least")
    p.add_argument("--min-seconds", type=float, default=0.25, help="seconds of timed runs at least")
    p.add_argument("--max-runs", type=int, default=5000, help="timed runs at most")
    p.add_argument("--max-seconds", type=float, default=5.0, help="seconds of timed runs at most")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("--per-node", action="store_true", help="also report per-node mean time (us)")
    return p


def check_args(args: Any) -> None:
    """Range checks of the shared arguments; a bad value is a "usage" failure."""
    if not args.model and not args.probe:
        fail("--model is required (or --probe)", "usage")
    if args.threads < 1:
        fail(f"--threads must be >= 1, got {args.threads}", "usage")
    if args.warmup < 0:
        fail(f"--warmup must be >= 0, got {args.warmup}", "usage")
    if args.min_runs < 1 or args.max_runs < args.min_runs:
        fail(f"need 1 <= --min-runs <= --max-runs, got {args.min_runs}, {args.max_runs}", "usage")
    if args.min_seconds < 0 or args.max_seconds <= 0:
        fail(f"need --min-seconds >= 0 and --max-seconds > 0, got {args.min_seconds}, {args.max_seconds}", "usage")


def settings_echo(args: Any) -> dict[str, Any]:
    """The shared settings as they were applied (echoed in the result)."""
    return {
        "warmup_runs": args.warmup,
        "min_runs": args.min_runs,
        "min_seconds": args.min_seconds,
        "max_runs": args.max_runs,
        "max_seconds": args.max_seconds,
        "seed": args.seed,
        "per_node": bool(args.per_node),
    }


# --------------------------------------------------------------------------- result
_result_fd: int | None = None
_emitted = False


def guard_stdout() -> None:
    """Send anything written to fd 1 (runtime logs, stray prints) to stderr from now on;
    only :func:`emit` writes to the real stdout."""
    global _result_fd
    if _result_fd is None:
        sys.stdout.flush()
        _result_fd = os.dup(1)
        os.dup2(2, 1)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def emit(obj: dict[str, Any]) -> None:
    """Write ``obj`` as one line of JSON on stdout (non-finite floats become null); once only."""
    global _emitted
    if _emitted:
        raise RuntimeError("emit() called twice: a profiler prints exactly one JSON object")
    _emitted = True
    data = (json.dumps(_finite(obj), allow_nan=False, sort_keys=True) + "\n").encode("utf-8")
    if _result_fd is None:
        sys.stdout.write(data.decode("utf-8"))
        sys.stdout.flush()
        return
    view = memoryview(data)
    while view:
        written = os.write(_result_fd, view)
        view = view[written:]


def one_line(text: str, limit: int = 500) -> str:
    """First non-empty line of ``text``, at most ``limit`` characters."""
    for line in str(text).splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return ""


def fail(message: str, kind: str = "model") -> NoReturn:
    """Emit ``{"ok": false, "error": message, "kind": kind}`` and exit with ``EXIT_CODES[kind]``."""
    kind = kind if kind in EXIT_CODES else "internal"
    emit({"ok": False, "error": one_line(message) or kind, "kind": kind})
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_CODES[kind])  # no atexit handlers of the runtime: the result is out


def run_main(main: Callable[[], dict[str, Any]]) -> NoReturn:
    """Run ``main`` with stdout guarded; emit its result (``ok`` added) or the failure; exit."""
    guard_stdout()
    try:
        result = main()
    except BenchFailure as exc:
        fail(str(exc), exc.kind)
    except MemoryError:
        fail("out of memory while profiling the model", "environment")
    except Exception as exc:  # a bug in the script: still one JSON object
        fail(f"internal error: {type(exc).__name__}: {one_line(str(exc))}", "internal")
    emit({"ok": True, **result})
    sys.stderr.flush()
    os._exit(0)
