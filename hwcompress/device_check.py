"""``hwcompress targets check NAME``: is the device reachable and ready to profile?

:func:`check_device` connects (SSH targets) or runs locally, and runs a small stdlib-only probe
with the device's Python: Python version, the target's runtime and numpy (import check and
version), CPU / board / GPU description (/proc/cpuinfo, /proc/device-tree/model, nvidia-smi,
/etc/nv_tegra_release), the tools the SSH runner needs and the free disk in the work folder.
For anything missing the report carries the exact command to run on the device.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass

from hwcompress.errors import RemoteError
from hwcompress.records import Record, Target

log = logging.getLogger(__name__)

#: Oldest Python the profiler scripts run on (benchcore.py).
MIN_PYTHON = (3, 8)
PROBE_TIMEOUT_S = 60.0

# Runs on the device with any Python >= 3.6 and the standard library only.
_PROBE = r'''
import json, os, platform, shutil, subprocess, sys
runtime, workdir = sys.argv[1], os.path.expanduser(sys.argv[2])
out = {"python": platform.python_version(), "executable": sys.executable, "arch": platform.machine(),
       "os": platform.system() + " " + platform.release(), "cores": os.cpu_count() or 0}
def read(p):
    try:
        with open(p, "rb") as fh:
            return fh.read().replace(b"\0", b"").decode("utf-8", "replace").strip()
    except OSError:
        return ""
cpu = ""
fields = {}
for line in read("/proc/cpuinfo").splitlines():
    k, s, v = line.partition(":")
    if s and v.strip():
        fields.setdefault(k.strip().lower(), v.strip())
for k in ("model name", "hardware", "cpu model", "model"):
    if fields.get(k) and not fields[k].isdigit():
        cpu = fields[k]; break
if not cpu and fields.get("cpu part"):
    parts = {"0xd03": "Cortex-A53", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76", "0xd05": "Cortex-A55",
             "0xd07": "Cortex-A57", "0xd42": "Cortex-A78AE", "0xd41": "Cortex-A78"}
    cpu = parts.get(fields["cpu part"].lower(), "ARM part " + fields["cpu part"])
out["cpu"] = cpu or platform.processor() or platform.machine()
out["board"] = read("/proc/device-tree/model")
out["tegra"] = read("/etc/nv_tegra_release").splitlines()[0] if read("/etc/nv_tegra_release") else ""
gpu = ""
if shutil.which("nvidia-smi"):
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=20).stdout.decode().strip()
    except Exception:
        gpu = ""
out["gpu"] = gpu.replace("\n", "; ")
def version(name):
    try:
        mod = __import__(name, fromlist=["_"])
    except Exception as exc:
        return None, (type(exc).__name__ + ": " + str(exc)).splitlines()[0][:200]
    return str(getattr(mod, "__version__", "unknown")), ""
mods = {"tflite": ["ai_edge_litert", "tflite_runtime"], "onnxruntime": ["onnxruntime"],
        "tensorrt": ["tensorrt"]}.get(runtime, [runtime])
out["runtime_module"], out["runtime_version"], out["runtime_error"] = mods[0], "", ""
for m in mods:
    v, err = version(m)
    if v is not None:
        out["runtime_module"], out["runtime_version"], out["runtime_error"] = m, v, ""
        break
    out["runtime_error"] = out["runtime_error"] or err
out["numpy"], out["numpy_error"] = version("numpy")
if runtime == "tensorrt":
    import ctypes, ctypes.util
    names = [ctypes.util.find_library("cudart") or "", "libcudart.so", "libcudart.so.12", "libcudart.so.11.0",
             "libcudart.so.10.2", "/usr/local/cuda/lib64/libcudart.so"]
    out["cudart"], out["cuda_devices"] = "", 0
    for n in filter(None, names):
        try:
            lib = ctypes.CDLL(n)
        except OSError:
            continue
        out["cudart"] = n
        count = ctypes.c_int(0)
        out["cuda_devices"] = count.value if lib.cudaGetDeviceCount(ctypes.byref(count)) == 0 else 0
        break
out["tools"] = {t: bool(shutil.which(t)) for t in ("timeout", "sha256sum")}
d = workdir
while d and not os.path.isdir(d):
    d = os.path.dirname(d)
try:
    st = os.statvfs(d or "/")
    out["free_disk_bytes"] = st.f_bavail * st.f_frsize
except OSError:
    out["free_disk_bytes"] = -1
out["workdir"] = workdir
print(json.dumps(out))
'''


@dataclass(frozen=True)
class DeviceReport(Record):
    """What :func:`check_device` found; ``problems`` and ``fixes`` are parallel, one line each."""

    target: str
    runtime: str
    connection: str
    python: str = ""
    python_version: str = ""
    runtime_module: str = ""
    runtime_version: str = ""
    numpy_version: str = ""
    cpu: str = ""
    board: str = ""
    gpu: str = ""
    tegra_release: str = ""
    arch: str = ""
    os: str = ""
    cores: int = 0
    workdir: str = ""
    free_disk_bytes: int = -1
    connect_s: float = 0.0
    problems: tuple[str, ...] = ()
    fixes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


def install_command(runtime: str, python: str = "python3") -> str:
    """The command that installs ``runtime``'s Python package on the device."""
    py = python if python else "python3"
    if runtime == "tflite":
        return (f"{py} -m pip install ai-edge-litert  (64-bit OS; on an old 32-bit OS: {py} -m pip install "
                "tflite-runtime 'numpy<2'; with an externally-managed Python create a venv first: "
                "python3 -m venv ~/hwc && ~/hwc/bin/pip install ai-edge-litert, then connection.python = "
                "\"~/hwc/bin/python\")")
    if runtime == "onnxruntime":
        return f"{py} -m pip install onnxruntime"
    if runtime == "tensorrt":
        return ("TensorRT comes with JetPack on a Jetson: sudo apt-get install nvidia-jetpack (or python3-libnvinfer); "
                f"on a desktop GPU: {py} -m pip install tensorrt")
    return f"{py} -m pip install {runtime}"


def _probe_local(target: Target) -> tuple[str, float]:
    t0 = time.perf_counter()
    try:
        res = subprocess.run(
            [sys.executable, "-c", _PROBE, target.runtime, target.connection.workdir],
            capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise RemoteError(f"the device probe ran past {PROBE_TIMEOUT_S:g} s on this machine") from None
    if res.returncode != 0:
        raise RemoteError(f"the device probe failed on this machine: {res.stderr.strip()[-300:]}")
    return res.stdout, time.perf_counter() - t0


def _probe_ssh(target: Target, trust_new_host: bool) -> tuple[str, float, str]:
    from hwcompress.profiling.remote import sh_path, ssh_runner

    runner = ssh_runner(target.connection, trust_new_host=trust_new_host)
    t0 = time.perf_counter()
    cmd = (f"{sh_path(target.connection.python)} -c {shlex.quote(_PROBE)} {shlex.quote(target.runtime)} "
           f"{shlex.quote(target.connection.workdir)}")
    res = runner.execute(cmd, PROBE_TIMEOUT_S)
    seconds = time.perf_counter() - t0
    if res.returncode in (126, 127):
        return "", seconds, runner.address
    if res.returncode != 0:
        tail = " | ".join(ln for ln in res.stderr.strip().splitlines()[-3:])
        raise RemoteError(f"the device probe failed on {runner.address} (exit {res.returncode}): {tail[-300:]}")
    return res.stdout, seconds, runner.address


def check_device(target: Target, *, trust_new_host: bool = False) -> DeviceReport:
    """Connect to ``target``'s device and report whether it can profile; raises RemoteError /
    HostKeyError when the device cannot be reached (those messages say what to fix)."""
    conn = target.connection
    if conn.kind == "ssh":
        stdout, seconds, where = _probe_ssh(target, trust_new_host)
        python = conn.python
    else:
        stdout, seconds = _probe_local(target)
        where, python = "local", sys.executable
    base = DeviceReport(target=target.name, runtime=target.runtime, connection=where, python=python,
                        connect_s=seconds)
    if not stdout.strip():
        return _replace(base, problems=(f"Python {python!r} was not found on the device",),
                        fixes=("install Python 3 (sudo apt-get install python3 python3-pip) or set connection.python "
                               "in the target to the device's Python",))
    try:
        data = json.loads(stdout.strip().splitlines()[-1])
    except ValueError:
        raise RemoteError(f"the device probe printed no JSON on {where}: {stdout.strip()[:200]}") from None
    problems: list[str] = []
    fixes: list[str] = []
    version = tuple(int(p) for p in str(data.get("python", "0.0")).split(".")[:2] if p.isdigit())
    if version < MIN_PYTHON:
        problems.append(f"Python {data.get('python')} is too old; the profilers need >= "
                        f"{'.'.join(map(str, MIN_PYTHON))}")
        fixes.append("install a newer Python (e.g. sudo apt-get install python3.8) and set connection.python to it")
    if not data.get("runtime_version"):
        problems.append(f"runtime {target.runtime} is not importable ({data.get('runtime_error') or 'not installed'})")
        fixes.append(install_command(target.runtime, python if conn.kind == "ssh" else sys.executable))
    if not data.get("numpy"):
        problems.append(f"numpy is not importable ({data.get('numpy_error') or 'not installed'})")
        fixes.append(f"{python} -m pip install numpy")
    if target.runtime == "tensorrt" and not data.get("cudart"):
        problems.append("the CUDA runtime library (libcudart) is not found")
        fixes.append("install the CUDA toolkit (on a Jetson: sudo apt-get install nvidia-jetpack) and make sure "
                     "libcudart.so is on the library path")
    elif target.runtime == "tensorrt" and not data.get("cuda_devices"):
        problems.append("no CUDA device is visible (cudaGetDeviceCount failed or found none)")
        fixes.append("check the NVIDIA driver with nvidia-smi (on a Jetson: sudo tegrastats) and that the user may "
                     "use the GPU (group video)")
    if conn.kind == "ssh":
        for tool, present in sorted((data.get("tools") or {}).items()):
            if not present:
                problems.append(f"the `{tool}` command is missing")
                fixes.append("sudo apt-get install coreutils")
    free = int(data.get("free_disk_bytes", -1))
    if 0 <= free < 100 * 2**20:
        problems.append(f"only {free / 2**20:.0f} MiB free in {data.get('workdir')}")
        fixes.append("free disk space on the device or set connection.workdir to a bigger disk")
    return _replace(
        base,
        python_version=str(data.get("python", "")),
        runtime_module=str(data.get("runtime_module", "")),
        runtime_version=str(data.get("runtime_version", "")),
        numpy_version=str(data.get("numpy") or ""),
        cpu=str(data.get("cpu", "")),
        board=str(data.get("board", "")),
        gpu=str(data.get("gpu", "")),
        tegra_release=str(data.get("tegra", "")),
        arch=str(data.get("arch", "")),
        os=str(data.get("os", "")),
        cores=int(data.get("cores", 0)),
        workdir=str(data.get("workdir", "")),
        free_disk_bytes=free,
        problems=tuple(problems),
        fixes=tuple(fixes),
    )


def _replace(report: DeviceReport, **changes: object) -> DeviceReport:
    import dataclasses

    return dataclasses.replace(report, **changes)  # type: ignore[arg-type]


def format_report(report: DeviceReport) -> str:
    """Plain-text report, one ``key  value`` line each, then the problems with their fixes."""
    def size(n: int) -> str:
        return "unknown" if n < 0 else f"{n / 2**30:.1f} GiB free"

    runtime = (f"{report.runtime_module} {report.runtime_version}" if report.runtime_version
               else f"{report.runtime}: MISSING")
    rows = [
        ("target", f"{report.target} ({report.runtime}) via {report.connection}"),
        ("python", f"{report.python} {report.python_version}".strip()),
        ("runtime", runtime),
        ("numpy", report.numpy_version or "MISSING"),
        ("cpu", " | ".join(p for p in (report.board, report.cpu, report.arch,
                                       f"{report.cores} cores" if report.cores else "") if p)),
        ("gpu", report.gpu or report.tegra_release or "-"),
        ("os", report.os or "-"),
        ("workdir", f"{report.workdir}: {size(report.free_disk_bytes)}" if report.workdir else "-"),
        ("probe", f"{report.connect_s:.2f} s"),
        ("status", "ready" if report.ok else f"NOT READY ({len(report.problems)} problem(s))"),
    ]
    if report.tegra_release and report.gpu:
        rows.insert(6, ("jetpack", report.tegra_release))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    for problem, fix in zip(report.problems, report.fixes, strict=False):
        lines.append(f"- {problem}")
        lines.append(f"  fix: {fix}")
    return "\n".join(lines)
