"""Shared device-side helpers of the profiler scripts: the one timing loop, statistics,
peak memory, device description, argument parsing and the single JSON result.

Standard library + numpy only (numpy imported lazily), so that a profiler script can be copied
with this file into any folder of a device and run as ``python3 <x>_bench.py ...``.  Supported:
Python 3.6 to 3.13 and numpy 1.13 to 2.x (JetPack 4.6 ships Python 3.6.9 and numpy 1.13.3), so
no ``from __future__ import annotations``, builtin generics, ``X | Y`` or walrus here; the
default test suite checks it with ``vermin -t=3.6-`` and a real run under Python 3.6.

Result contract of every profiler script: exactly one JSON object on stdout.  Success:
``{"ok": true, ...}``, exit 0.  Failure: ``{"ok": false, "error": "<one line>", "kind": K}`` with
exit code ``EXIT_CODES[K]``: 2 usage (bad arguments), 3 model (the model cannot be loaded, fed or
run), 4 environment (runtime missing, provider unavailable), 5 internal (a bug in the script).
Batch mode (``--batch M1 M2 ...``, scripts that support it): one JSON line per model, each with
its ``"model"`` and its own ``ok``, then one summary line ``{"ok": true, "batch": {...}}``, exit 0
(a failure before the first model, e.g. a missing runtime, is one failure object as above).
"""

import hashlib
import json
import math
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Union

if TYPE_CHECKING:  # typing.NoReturn needs Python 3.6.2: used only in string annotations
    from typing import NoReturn

CORE_VERSION = "1.0"
EXIT_CODES: Dict[str, int] = {"usage": 2, "model": 3, "environment": 4, "internal": 5}

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
) -> List[float]:
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
        samples: List[float] = []
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


def latency_stats(samples_s: Sequence[float]) -> Dict[str, Union[float, int]]:
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


# --------------------------------------------------------------------------- random inputs
class _LegacyRng:
    """The two ``numpy.random.Generator`` methods the profilers use, on ``RandomState``
    (numpy < 1.17 has no ``default_rng``)."""

    def __init__(self, seed: int) -> None:
        import numpy as np

        self._np = np
        self._state = np.random.RandomState(seed)

    def standard_normal(self, size: Any) -> Any:
        return self._np.asarray(self._state.standard_normal(size))

    def integers(self, low: int, high: int, size: Any = None) -> Any:
        """Integers in ``[low, high)``, like ``Generator.integers``."""
        return self._np.asarray(self._state.randint(low, high, size=size))


def make_rng(seed: int) -> Any:
    """Seeded source of random inputs: ``numpy.random.default_rng(seed)`` where numpy has it
    (>= 1.17, unchanged values there), else a ``RandomState`` with the same two methods
    (``standard_normal(size)``, ``integers(low, high, size)``)."""
    import numpy as np

    if hasattr(np.random, "default_rng"):
        return np.random.default_rng(seed)
    return _LegacyRng(seed)


# --------------------------------------------------------------------------- memory
def _status_kb(field: str) -> Optional[int]:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM) in bytes, or None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * _PAGE_KB
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes() -> Optional[int]:
    """Current resident set size (bytes), or None where /proc is unavailable."""
    return _status_kb("VmRSS")


def hwm_bytes() -> Optional[int]:
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
        self.baseline: Optional[int] = None
        self.reset_ok = False
        self.hwm_start: Optional[int] = None
        self.samples: List[int] = []

    def start(self) -> None:
        self.baseline = rss_bytes()
        self.reset_ok = reset_peak_rss()
        self.hwm_start = hwm_bytes()
        self.samples = [] if self.baseline is None else [self.baseline]

    def sample(self) -> None:
        rss = rss_bytes()
        if rss is not None:
            self.samples.append(rss)

    def stop(self) -> Dict[str, Any]:
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


def emulated_on(machine: str, kernel_arch: str, cpuinfo: str) -> str:
    """The host's architecture when this process's instruction set is emulated (qemu-user), else "".

    ``machine``: the process's own view (``platform.machine()``; qemu-user reports the guest's).
    ``kernel_arch``: the running kernel's (``/proc/sys/kernel/arch``, which qemu-user does not
    translate; "" where the kernel lacks it).  ``cpuinfo``: the text of ``/proc/cpuinfo`` (qemu
    before 8.1 shows the host's).  Emulated when the kernel's architecture is of another family
    than the process's (x86 vs ARM, ...); without ``kernel_arch``, when an ARM process reads an x86
    cpuinfo (``vendor_id``, no ``CPU implementer``) or an x86 process an ARM one.  A 32-bit user
    space on a 64-bit kernel of the same family (armv7l on aarch64, i686 on x86_64) is native.
    Self-contained (``hwcompress targets check`` sends this function's source to the device).
    """
    def family(arch: str) -> str:
        a = arch.strip().lower()
        if a in ("x86_64", "amd64", "x64", "i386", "i486", "i586", "i686", "x86"):
            return "x86"
        if a.startswith("aarch64") or a.startswith("arm"):
            return "arm"
        if a.startswith("riscv"):
            return "riscv"
        if a.startswith("ppc") or a.startswith("powerpc"):
            return "ppc"
        return a

    own = family(machine)
    if not own:
        return ""
    if kernel_arch.strip():
        return kernel_arch.strip() if family(kernel_arch) != own else ""
    keys = set(line.partition(":")[0].strip().lower() for line in cpuinfo.splitlines())
    x86, arm = "vendor_id" in keys, "cpu implementer" in keys
    if own == "arm" and x86 and not arm:
        return "x86"
    if own == "x86" and arm and not x86:
        return "arm"
    return ""


def device_info() -> Dict[str, Any]:
    """CPU model (from /proc/cpuinfo), board model, logical/usable cores, arch, OS, the CPU
    features that decide kernel choice (AVX2, VNNI, NEON dot product, ...) and ``emulated``: the
    host's architecture when this process runs under an emulator (:func:`emulated_on`), else "".
    Under emulation ``cpu`` is what /proc/cpuinfo names (qemu < 8.1: the host's CPU) and
    ``features`` is empty (the host's flags are not the emulated instruction set's)."""
    import platform

    cpu = ""
    cpuinfo = _read("/proc/cpuinfo")
    fields: Dict[str, str] = {}
    for line in cpuinfo.splitlines():
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
    emulated = emulated_on(platform.machine(), _read("/proc/sys/kernel/arch"), cpuinfo)
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
        "features": [] if emulated else [f for f in _FEATURES if f in flags],
        "emulated": emulated,
    }


def device_string(info: Dict[str, Any]) -> str:
    """One-line description, e.g. ``"AMD EPYC 7B13 | x86_64 | 2 cores | Linux 6.1.0"``; under
    emulation ``"emulated aarch64 on AMD EPYC 7B13 (x86_64) | 2 cores | Linux 6.1.0"``."""
    cpu, arch = info.get("cpu") or "", info.get("arch") or ""
    if info.get("emulated"):
        cpu, arch = f"emulated {arch or 'code'} on {cpu} ({info['emulated']})", ""
    parts = [info.get("board") or "", cpu, arch,
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
        block = fh.read(chunk)
        while block:
            h.update(block)
            block = fh.read(chunk)
    return h.hexdigest()


def utc_now() -> str:
    """UTC ISO-8601 timestamp with seconds, e.g. ``2025-01-31T12:00:00+00:00``."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")  # not datetime.UTC: Python 3.6 devices


# --------------------------------------------------------------------------- arguments
def base_parser(prog: str, description: str) -> Any:
    """An ``argparse`` parser with the arguments every runtime script takes.

    Errors are reported as one JSON object with kind "usage" (exit 2), not as argparse's text.
    """
    import argparse

    class _JsonParser(argparse.ArgumentParser):
        def error(self, message: str) -> "NoReturn":
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
    p.add_argument("--batch", nargs="+", default=None, metavar="MODEL",
                   help="batch mode: profile each MODEL in this one process; one JSON line per model "
                        "(with its \"model\"), then one summary line")
    return p


def check_args(args: Any) -> None:
    """Range checks of the shared arguments; a bad value is a "usage" failure."""
    if not args.model and not args.probe and not getattr(args, "batch", None):
        fail("--model is required (or --batch, or --probe)", "usage")
    if getattr(args, "batch", None) and args.model:
        fail("give either --model or --batch, not both", "usage")
    if args.threads < 1:
        fail(f"--threads must be >= 1, got {args.threads}", "usage")
    if args.warmup < 0:
        fail(f"--warmup must be >= 0, got {args.warmup}", "usage")
    if args.min_runs < 1 or args.max_runs < args.min_runs:
        fail(f"need 1 <= --min-runs <= --max-runs, got {args.min_runs}, {args.max_runs}", "usage")
    if args.min_seconds < 0 or args.max_seconds <= 0:
        fail(f"need --min-seconds >= 0 and --max-seconds > 0, got {args.min_seconds}, {args.max_seconds}", "usage")


def settings_echo(args: Any) -> Dict[str, Any]:
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
_result_fd: Optional[int] = None
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


def _write_line(obj: Dict[str, Any]) -> None:
    """``obj`` as one line of JSON (non-finite floats become null) on the result stream."""
    data = (json.dumps(_finite(obj), allow_nan=False, sort_keys=True) + "\n").encode("utf-8")
    if _result_fd is None:
        sys.stdout.write(data.decode("utf-8"))
        sys.stdout.flush()
        return
    view = memoryview(data)
    while view:
        written = os.write(_result_fd, view)
        view = view[written:]


def emit(obj: Dict[str, Any]) -> None:
    """Write ``obj`` as one line of JSON on stdout (non-finite floats become null); once only."""
    global _emitted
    if _emitted:
        raise RuntimeError("emit() called twice: a profiler prints exactly one JSON object")
    _emitted = True
    _write_line(obj)


def emit_line(obj: Dict[str, Any]) -> None:
    """Write one JSON line of a batch (see :func:`run_batch`); the summary goes through :func:`emit`."""
    if _emitted:
        raise RuntimeError("emit_line() after emit(): the summary line is the last one")
    _write_line(obj)


def run_batch(args: Any, profile_one: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    """Batch mode: for each path of ``args.batch`` set ``args.model`` and call ``profile_one``;
    write its result as one JSON line (``{"ok": true, "model": path, ...}``, or ``{"ok": false,
    "model": path, "error": ..., "kind": ...}`` when that model fails: the others still run).

    Returns the summary (``{"batch": {"models": n, "failed": k}}``) that :func:`run_main` prints
    as the last line, so the host can tell a complete batch from one cut short.
    """
    import gc

    failed = 0
    for path in args.batch:
        args.model = path
        try:
            line = profile_one()
            line = dict(line, ok=True, model=path)
        except BenchFailure as exc:
            failed += 1
            line = {"ok": False, "model": path, "error": one_line(str(exc)) or exc.kind, "kind": exc.kind}
        except MemoryError:
            failed += 1
            line = {"ok": False, "model": path, "error": "out of memory while profiling the model",
                    "kind": "environment"}
        emit_line(line)
        gc.collect()
    args.model = ""
    return {"batch": {"models": len(args.batch), "failed": failed}}


def one_line(text: str, limit: int = 500) -> str:
    """First non-empty line of ``text``, at most ``limit`` characters."""
    for line in str(text).splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return ""


def fail(message: str, kind: str = "model") -> "NoReturn":
    """Emit ``{"ok": false, "error": message, "kind": kind}`` and exit with ``EXIT_CODES[kind]``."""
    kind = kind if kind in EXIT_CODES else "internal"
    emit({"ok": False, "error": one_line(message) or kind, "kind": kind})
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_CODES[kind])  # no atexit handlers of the runtime: the result is out


def run_main(main: Callable[[], Dict[str, Any]]) -> "NoReturn":
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
