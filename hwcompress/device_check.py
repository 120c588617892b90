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
from hwcompress.profiling.adapters import find_adapter, pip_install_command
from hwcompress.profiling.runner import MIN_DEVICE_PYTHON, parse_version
from hwcompress.records import Record, Target

log = logging.getLogger(__name__)

#: Oldest Python the profiler scripts run on (benchcore.py; tests/test_py36.py checks it).
MIN_PYTHON = MIN_DEVICE_PYTHON
#: Oldest numpy the profiler scripts run on (JetPack 4.6's apt numpy).
MIN_NUMPY = (1, 13)
PROBE_TIMEOUT_S = 60.0

# Runs on the device with the standard library only, under any Python from 2.7 on, so that a
# Python too old for the profilers is still reported with its version (tests/test_device_probe.py).
_PROBE = r"""
import json, os, platform, subprocess, sys
runtime, workdir = sys.argv[1], os.path.expanduser(sys.argv[2])
def which(name):
    for d in os.environ.get("PATH", "").split(os.pathsep):
        p = os.path.join(d, name)
        if d and os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return ""
try:
    cores = os.cpu_count() or 0
except AttributeError:
    import multiprocessing
    cores = multiprocessing.cpu_count()
out = {"python": platform.python_version(), "executable": sys.executable, "arch": platform.machine(),
       "os": platform.system() + " " + platform.release(), "cores": cores}
def read(p):
    try:
        with open(p, "rb") as fh:
            return fh.read().replace(b"\0", b"").decode("utf-8", "replace").strip()
    except (IOError, OSError):
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
rel = {}
for line in read("/etc/os-release").splitlines():
    k, s, v = line.partition("=")
    if s:
        rel[k.strip()] = v.strip().strip('"')
out["os_release"] = {"id": rel.get("ID", ""), "codename": rel.get("VERSION_CODENAME", ""),
                     "name": rel.get("PRETTY_NAME", "")}
try:
    import sysconfig
    out["externally_managed"] = sys.prefix == getattr(sys, "base_prefix", sys.prefix) and os.path.isfile(
        os.path.join(sysconfig.get_paths()["stdlib"], "EXTERNALLY-MANAGED"))
except Exception:
    out["externally_managed"] = False
gpu = ""
if which("nvidia-smi"):
    try:
        proc = subprocess.Popen(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                 "--format=csv,noheader"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        gpu = proc.communicate()[0].decode("utf-8", "replace").strip()
    except Exception:
        gpu = ""
out["gpu"] = gpu.replace("\n", "; ")
try:  # emulated_on() comes from benchcore.py, prepended by _probe_source()
    out["emulated"] = emulated_on(platform.machine(), read("/proc/sys/kernel/arch"), read("/proc/cpuinfo"))
except NameError:
    out["emulated"] = ""
def version(name):
    try:
        mod = __import__(name, fromlist=["_"])
    except Exception as exc:
        return None, (type(exc).__name__ + ": " + str(exc)).splitlines()[0][:200]
    if name == "tensorflow.lite":
        mod = sys.modules.get("tensorflow", mod)
    return str(getattr(mod, "__version__", "unknown")), ""
mods = {"tflite": ["ai_edge_litert", "tflite_runtime", "tensorflow.lite"], "onnxruntime": ["onnxruntime"],
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
    names = [ctypes.util.find_library("cudart") or "", "libcudart.so", "libcudart.so.13", "libcudart.so.12",
             "libcudart.so.11.0", "libcudart.so.10.2", "/usr/local/cuda/lib64/libcudart.so",
             "/usr/local/cuda/targets/aarch64-linux/lib/libcudart.so"]
    out["cudart"], out["cuda_devices"], out["cuda_runtime"] = "", 0, ""
    for n in [x for x in names if x]:
        try:
            lib = ctypes.CDLL(n)
        except OSError:
            continue
        out["cudart"] = n
        count, rt = ctypes.c_int(0), ctypes.c_int(0)
        out["cuda_devices"] = count.value if lib.cudaGetDeviceCount(ctypes.byref(count)) == 0 else 0
        if lib.cudaRuntimeGetVersion(ctypes.byref(rt)) == 0 and rt.value:
            out["cuda_runtime"] = "%d.%d" % (rt.value // 1000, (rt.value % 1000) // 10)
        break
out["tools"] = dict((t, bool(which(t))) for t in ("timeout", "sha256sum"))
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
"""


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
    emulated: str = ""  # the host's architecture when the device's Python runs under an emulator
    os_release: str = ""  # PRETTY_NAME of /etc/os-release
    externally_managed: bool = False  # the device's Python is PEP 668 externally managed (pip refuses)
    cuda_runtime: str = ""  # CUDA runtime version of libcudart ("10.2"), TensorRT targets only
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


def jetpack_of(tegra_release: str) -> str:
    """JetPack generation from the first line of /etc/nv_tegra_release (``# R32 (release), REVISION:
    6.1``: "4" for L4T R32, "5" for R35, "6" for R36), or "" off a Jetson."""
    import re

    m = re.search(r"\bR(\d+)\b", tegra_release or "")
    return {"32": "4", "35": "5", "36": "6"}.get(m.group(1), "") if m else ""


def install_command(runtime: str, python: str = "python3", *, jetpack: str = "", externally_managed: bool = False,
                    arch: str = "") -> str:
    """The command that installs ``runtime``'s Python package on the device, for its board:
    ``jetpack`` ("4", "5", "6" or ""), ``externally_managed`` (PEP 668: Debian 12 Bookworm,
    Raspberry Pi OS Bookworm, Ubuntu 23.04+), ``arch`` (``platform.machine()``); the runtime's
    adapter words it (:meth:`~hwcompress.profiling.adapters.ProfilerAdapter.install_command`)."""
    adapter = find_adapter(runtime)
    if adapter is None:
        return pip_install_command(runtime, python, externally_managed=externally_managed)
    return adapter.install_command(python, jetpack=jetpack, externally_managed=externally_managed, arch=arch)


def _needs_cuda(runtime: str) -> bool:
    adapter = find_adapter(runtime)
    return adapter is not None and adapter.needs_cuda


def numpy_command(python: str = "python3", *, jetpack: str = "", externally_managed: bool = False) -> str:
    """The command that installs numpy on the device (the Debian package for a system Python)."""
    if jetpack or externally_managed:
        return ("sudo apt-get install python3-numpy" + ("" if jetpack else
                " (for the system python3; in a venv: ~/hwc/bin/pip install numpy)"))
    return f"{python or 'python3'} -m pip install numpy"


def _probe_source() -> str:
    """The probe with benchcore's ``emulated_on`` defined first: one emulation rule for the
    profilers' device string and this report."""
    import ast

    from hwcompress.profiling.adapters import profilers_dir

    path = profilers_dir() / "benchcore.py"
    text = path.read_text(encoding="utf-8")
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == "emulated_on":
            return (ast.get_source_segment(text, node) or "") + "\n" + _PROBE
    raise RemoteError(f"{path} has no emulated_on(); reinstall hwcompress")


def _probe_local(target: Target) -> tuple[str, float]:
    t0 = time.perf_counter()
    try:
        res = subprocess.run(
            [sys.executable, "-c", _probe_source(), target.runtime, target.connection.workdir],
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
    cmd = (f"{sh_path(target.connection.python)} -c {shlex.quote(_probe_source())} {shlex.quote(target.runtime)} "
           f"{shlex.quote(target.connection.workdir)}")
    res = runner.execute(cmd, PROBE_TIMEOUT_S)
    seconds = time.perf_counter() - t0
    if res.returncode in (126, 127):
        return "", seconds, runner.address
    if res.returncode != 0:
        if "SyntaxError" in res.stderr:  # a Python too old for the probe: still say which one
            version = runner.python_version()
            if parse_version(version) and parse_version(version) < MIN_PYTHON:
                return json.dumps({"python": version, "too_old": True}), seconds, runner.address
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
    floor = ".".join(map(str, MIN_PYTHON))
    if parse_version(str(data.get("python", ""))) < MIN_PYTHON:
        problems.append(f"Python {data.get('python')} is too old; the profilers need >= {floor}")
        fixes.append(f"set connection.python in the target to a Python {floor}+ on the device (python3 on JetPack "
                     "4.6 is 3.6.9; elsewhere: sudo apt-get install python3)")
    if data.get("too_old"):
        return _replace(base, python_version=str(data.get("python", "")), problems=tuple(problems),
                        fixes=tuple(fixes))
    jetpack = jetpack_of(str(data.get("tegra", "")))
    managed = bool(data.get("externally_managed"))
    if not data.get("runtime_version"):
        problems.append(f"runtime {target.runtime} is not importable ({data.get('runtime_error') or 'not installed'})")
        fixes.append(install_command(target.runtime, python if conn.kind == "ssh" else sys.executable,
                                     jetpack=jetpack, externally_managed=managed, arch=str(data.get("arch", ""))))
    if not data.get("numpy"):
        problems.append(f"numpy is not importable ({data.get('numpy_error') or 'not installed'})")
        fixes.append(numpy_command(python, jetpack=jetpack, externally_managed=managed))
    elif parse_version(str(data.get("numpy"))) < MIN_NUMPY:
        problems.append(f"numpy {data.get('numpy')} is too old; the profilers need >= {'.'.join(map(str, MIN_NUMPY))}")
        fixes.append(numpy_command(python, jetpack=jetpack, externally_managed=managed))
    needs_cuda = _needs_cuda(target.runtime)
    if needs_cuda and not data.get("cudart"):
        problems.append("the CUDA runtime library (libcudart) is not found")
        fixes.append("install the CUDA toolkit (on a Jetson: sudo apt-get install nvidia-jetpack) and make sure "
                     "libcudart.so is on the library path")
    elif needs_cuda and not data.get("cuda_devices"):
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
        emulated=str(data.get("emulated") or ""),
        os_release=str((data.get("os_release") or {}).get("name", "")),
        externally_managed=managed,
        cuda_runtime=str(data.get("cuda_runtime") or ""),
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
    cpu, arch = report.cpu, report.arch
    if report.emulated:  # same wording as the profilers' device string (benchcore.device_string)
        cpu, arch = f"emulated {report.arch or 'code'} on {report.cpu} ({report.emulated})", ""
    rows = [
        ("target", f"{report.target} ({report.runtime}) via {report.connection}"),
        ("python", f"{report.python} {report.python_version}".strip()),
        ("runtime", runtime),
        ("numpy", report.numpy_version or "MISSING"),
        ("cpu", " | ".join(p for p in (report.board, cpu, arch, f"{report.cores} cores" if report.cores else "") if p)),
        ("gpu", report.gpu or report.tegra_release or "-"),
        ("os", " | ".join(p for p in (report.os_release, report.os) if p) or "-"),
        ("workdir", f"{report.workdir}: {size(report.free_disk_bytes)}" if report.workdir else "-"),
        ("probe", f"{report.connect_s:.2f} s"),
        ("status", "ready" if report.ok else f"NOT READY ({len(report.problems)} problem(s))"),
    ]
    if report.tegra_release and report.gpu:
        rows.insert(6, ("jetpack", report.tegra_release))
    if _needs_cuda(report.runtime):
        rows.insert(6, ("cuda", f"runtime {report.cuda_runtime}" if report.cuda_runtime else "-"))
    if report.externally_managed:
        rows.insert(2, ("pip", "externally managed Python (PEP 668): install into a venv, see the fixes"))
    if report.emulated:
        rows.insert(5, ("emulated", f"{report.arch} code on an {report.emulated} host: timings are the emulator's, "
                                    "not a device's"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    for problem, fix in zip(report.problems, report.fixes, strict=False):
        lines.append(f"- {problem}")
        lines.append(f"  fix: {fix}")
    return "\n".join(lines)
