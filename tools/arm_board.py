#!/usr/bin/env python3
"""Build a cached emulated aarch64 "board": Debian arm64 Python + PyPI aarch64 wheels, run by qemu-user.

    python3 tools/arm_board.py                      # build (or reuse) and print the wrapper path
    python3 tools/arm_board.py --variant tflite214  # the tflite-runtime 2.14 + numpy<2 wrapper instead

The root folder (default ``~/.cache/hwcompress/arm64-board``, or ``$HWCOMPRESS_ARM_BOARD``) holds:

- ``usr/``, ``lib/``: Debian's arm64 ``python3`` and the libraries it needs, resolved by apt-get with
  a private state (arm64 as the only architecture, own package lists and download cache): the host's
  dpkg configuration is left alone.  Extracted with ``dpkg-deb -x``; nothing is installed.
- ``opt/<variant>/``: aarch64 wheels from PyPI (``pip download --platform manylinux_2_X_aarch64
  --only-binary=:all:``), unzipped.  ``litert``: ai-edge-litert + numpy 2; ``tflite214``:
  tflite-runtime 2.14 + numpy<2 (only where Debian's Python is 3.11: its last wheels).
- ``python3-arm64`` / ``python3-arm64-tflite214``: wrappers that run that Python with
  ``qemu-aarch64-static -cpu cortex-a72 -L <root>`` and the variant's folder as ``PYTHONPATH``.
  Point a target's ``connection.python`` at one.  Cortex-A72 is the Raspberry Pi 4's CPU (no dot
  product, no SVE); under qemu's default ``-cpu max`` ai-edge-litert 2.1.6's XNNPACK computes wrong
  int8 convolutions (the builtin kernels and tflite-runtime 2.14 are right), which
  tests/test_arm_board.py catches.
- ``board.json``: what was built (versions); written last, so a board without it is rebuilt.

ai-edge-litert is pinned to 2.1.6: 2.2 and later crash (SIGSEGV in ``Interpreter()``) under
Debian 12's qemu 7.2, whose ``/proc/cpuinfo`` shows the x86 host's CPU to the ARM code.

When qemu-user-static is missing it is installed with apt-get if this runs as root.  A second run
with the same settings takes well under a second.  Exit status: 0 built or reused; 2 bad
arguments; 3 emulation not available here (no qemu-aarch64-static and it cannot be installed, or
not a Debian/apt host); 4 no up-to-date board and ``--no-build``; 1 anything else (download,
extraction, verification).  Errors are one line on stderr; progress goes to stderr, the wrapper
path alone to stdout.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, cast

BOARD_FORMAT = 1
DEBIAN_PACKAGES = ("python3", "libstdc++6")  # libstdc++ and libgcc: the runtimes' C++ extensions
VARIANTS: dict[str, dict[str, object]] = {
    "litert": {"wheels": ("ai-edge-litert==2.1.6", "numpy==2.4.6"), "module": "ai_edge_litert",
               "wrapper": "python3-arm64"},
    "tflite214": {"wheels": ("tflite-runtime==2.14.0", "numpy<2"), "module": "tflite_runtime",
                  "wrapper": "python3-arm64-tflite214", "python": "3.11"},
}
QEMU = "qemu-aarch64-static"
DEFAULT_CPU = "cortex-a72"  # the Raspberry Pi 4's
EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_NOT_BUILT = 1, 2, 3, 4
TIMEOUT_S = 900


class BoardError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def log(message: str) -> None:
    print(f"[arm-board] {message}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str], what: str, timeout: float = TIMEOUT_S, **kwargs: object) -> str:
    """Run ``cmd``; its stdout, or BoardError with the last line of its output."""
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False,
                             stdin=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    except FileNotFoundError:
        raise BoardError(f"{what}: {cmd[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise BoardError(f"{what}: no result within {timeout:g} s") from None
    if res.returncode != 0:
        lines = [ln.strip() for ln in (res.stdout + "\n" + res.stderr).splitlines()
                 if ln.strip() and not ln.startswith("WARNING: Location")]
        errors = [ln for ln in lines if ln.startswith(("E: ", "ERROR: ", "error: "))]
        tail = (errors or lines or ["no output"])[-1]
        raise BoardError(f"{what} failed (exit {res.returncode}): {tail[:300]}")
    return str(res.stdout)


def default_root() -> Path:
    env = os.environ.get("HWCOMPRESS_ARM_BOARD")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "hwcompress" / "arm64-board"


# --------------------------------------------------------------------------- qemu
def find_qemu(install: bool) -> str:
    """Path of qemu-aarch64-static; installs Debian's qemu-user-static as root when allowed."""
    found = shutil.which(QEMU)
    if found:
        return found
    if not install:
        raise BoardError(f"{QEMU} is not installed (apt-get install qemu-user-static)", EXIT_UNAVAILABLE)
    if shutil.which("apt-get") is None:
        raise BoardError(f"{QEMU} is not installed and this host has no apt-get; install QEMU's user-mode "
                         "emulator for aarch64", EXIT_UNAVAILABLE)
    if os.geteuid() != 0:
        raise BoardError(f"{QEMU} is not installed; run as root or: sudo apt-get install qemu-user-static",
                         EXIT_UNAVAILABLE)
    log("installing qemu-user-static with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "qemu-user-static"]
    try:
        try:
            run(cmd, "apt-get install qemu-user-static", env=env)
        except BoardError:  # stale package lists: update once, then try again
            run(["apt-get", "update", "-qq"], "apt-get update", env=env)
            run(cmd, "apt-get install qemu-user-static", env=env)
    except BoardError as exc:
        raise BoardError(f"{QEMU} is not installed and could not be: {exc}", EXIT_UNAVAILABLE) from None
    found = shutil.which(QEMU)
    if not found:
        raise BoardError(f"qemu-user-static is installed but {QEMU} is not on PATH", EXIT_UNAVAILABLE)
    return found


# --------------------------------------------------------------------------- Debian arm64 packages
def apt_options(state: Path, sources: Path | None) -> list[str]:
    """apt-get options for a private arm64-only apt: own lists, status and archive cache."""
    opts = {
        "APT::Architecture": "arm64", "APT::Architectures": "arm64",
        "Dir::State": str(state), "Dir::State::Lists": str(state / "lists"),
        "Dir::State::status": str(state / "status"), "Dir::Cache": str(state / "cache"),
        "Dir::Cache::archives": str(state / "archives"), "APT::Install-Recommends": "false",
        "APT::Get::List-Cleanup": "false",
    }
    if os.geteuid() == 0:
        opts["APT::Sandbox::User"] = "root"
    if sources is not None:
        opts["Dir::Etc::sourcelist"] = str(sources)
        opts["Dir::Etc::sourceparts"] = str(state / "no-source-parts")
    out: list[str] = []
    for key, value in opts.items():
        out += ["-o", f"{key}={value}"]
    return out


def fetch_debs(state: Path, sources: Path | None) -> list[Path]:
    """Download DEBIAN_PACKAGES and their dependency closure for arm64; the .deb files."""
    for sub in ("lists/partial", "archives/partial", "cache", "no-source-parts"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "status").touch()  # nothing "installed": apt resolves the whole closure
    for old in (state / "archives").glob("*.deb"):  # only this resolution's .debs get extracted
        old.unlink()
    opts = apt_options(state, sources)
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise BoardError("this host has no apt-get / dpkg-deb (a Debian or Ubuntu host is needed to fetch the "
                         "arm64 packages)", EXIT_UNAVAILABLE)
    log("apt-get update (private arm64 package lists)")
    run(["apt-get", *opts, "update"], "apt-get update for arm64")
    log("apt-get download of arm64 " + " ".join(DEBIAN_PACKAGES) + " and dependencies")
    run(["apt-get", *opts, "install", "--download-only", "-y", "-qq", *DEBIAN_PACKAGES],
        "apt-get install --download-only (arm64); on a host without arm64 in its apt sources pass --sources")
    debs = sorted((state / "archives").glob("*.deb"))
    if not any(d.name.startswith("libc6_") for d in debs):
        raise BoardError(f"apt-get downloaded no arm64 libc6 into {state / 'archives'}")
    return debs


def extract_debs(debs: Sequence[Path], root: Path) -> None:
    for deb in debs:
        run(["dpkg-deb", "-x", str(deb), str(root)], f"dpkg-deb -x {deb.name}")


def root_python(root: Path) -> tuple[str, str]:
    """(interpreter path inside ``root``, "X.Y") of the extracted Debian Python."""
    found = sorted((p.name for p in (root / "usr" / "bin").glob("python3.*")
                    if re.fullmatch(r"python3\.\d+", p.name)), key=lambda n: int(n.split(".")[1]))
    if not found:
        raise BoardError(f"no usr/bin/python3.X in {root} after extraction")
    name = found[-1]
    return f"/usr/bin/{name}", name[len("python"):]


def glibc_minor(debs: Sequence[Path]) -> int:
    for deb in debs:
        m = re.match(r"libc6_(\d+)\.(\d+)", deb.name)
        if m:
            return int(m.group(2))
    raise BoardError("cannot tell the arm64 glibc version (no libc6 .deb)")


# --------------------------------------------------------------------------- PyPI aarch64 wheels
def fetch_wheels(specs: Sequence[str], dest: Path, py: str, glibc: int) -> list[Path]:
    """The wheels of ``specs`` and their dependencies for aarch64 CPython ``py`` (pip's HTTP cache
    makes a repeated download cheap; ``dest`` holds only this resolution's wheels)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    platforms = ["manylinux2014_aarch64"] + [f"manylinux_2_{m}_aarch64" for m in range(17, glibc + 1)]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
           "--python-version", py, "--implementation", "cp", "--abi", "cp" + py.replace(".", ""),
           "-d", str(dest)]
    for p in platforms:
        cmd += ["--platform", p]
    log(f"pip download (aarch64, cp{py.replace('.', '')}): " + " ".join(specs))
    run([*cmd, *specs], "pip download of aarch64 wheels " + " ".join(specs))
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise BoardError(f"pip downloaded no wheels into {dest}")
    return wheels


def unzip_wheel(wheel: Path, site: Path) -> None:
    """Unpack a wheel as pip would into a site folder (purelib/platlib data folded in)."""
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    for data in site.glob("*.data"):
        for kind in ("purelib", "platlib"):
            inner = data / kind
            if inner.is_dir():
                for item in inner.iterdir():
                    target = site / item.name
                    if target.exists():
                        shutil.rmtree(target) if target.is_dir() else target.unlink()
                    item.rename(target)
        shutil.rmtree(data)


# --------------------------------------------------------------------------- wrapper + verification
def write_wrapper(root: Path, qemu: str, cpu: str, python: str, variant: str) -> Path:
    """Write (or rewrite, where it differs) the variant's wrapper script; its path."""
    path = root / str(VARIANTS[variant]["wrapper"])
    site = root / "opt" / variant
    text = (
        "#!/bin/sh\n"
        f"# aarch64 Python of the hwcompress emulated board ({variant}), run by qemu-user; made by "
        "tools/arm_board.py.\n"
        f"PYTHONPATH='{site}'\nPYTHONNOUSERSITE=1\nexport PYTHONPATH PYTHONNOUSERSITE\n"
        f"exec '{qemu}' -cpu '{cpu}' -L '{root}' '{root}{python}' \"$@\"\n"
    )
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    path.chmod(0o755)
    return path


_VERIFY = ("import json, platform, sys, numpy, importlib; m = importlib.import_module(sys.argv[1]); "
           "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(), "
           "'numpy': numpy.__version__, 'runtime': getattr(m, '__version__', 'unknown')}))")


def verify(wrapper: Path, module: str) -> dict[str, str]:
    out = run([str(wrapper), "-c", _VERIFY, module], f"running {wrapper.name} (import numpy, {module})", timeout=300)
    info: dict[str, str] = json.loads(out.strip().splitlines()[-1])
    if info.get("machine") != "aarch64":
        raise BoardError(f"{wrapper.name} reports machine {info.get('machine')!r}, expected aarch64")
    return info


def wanted(sources: Path | None, cpu: str) -> dict[str, object]:
    return {"format": BOARD_FORMAT, "debian": list(DEBIAN_PACKAGES), "cpu": cpu,
            "variants": {k: list(v["wheels"]) for k, v in VARIANTS.items()},  # type: ignore[call-overload]
            "sources": str(sources) if sources else ""}


def build(root: Path, sources: Path | None, rebuild: bool, install_qemu: bool,
          allow_build: bool = True, cpu: str = DEFAULT_CPU) -> dict[str, object]:
    """Build the board in ``root`` (or reuse an up-to-date one); the board.json record."""
    qemu = find_qemu(install_qemu)
    stamp = root / "board.json"
    spec = wanted(sources, cpu)
    if stamp.is_file() and not rebuild:
        try:
            done = json.loads(stamp.read_text())
        except ValueError:
            done = {}
        previous = done.get("variants", {})
        if done.get("spec") == spec and done.get("qemu") == qemu and previous and all(
                (root / "opt" / name).is_dir() for name in previous):
            for name in previous:  # a wrapper edited or removed by hand is written again
                write_wrapper(root, qemu, cpu, str(done["python"]), name)
            return dict(done)
    if not allow_build:
        raise BoardError(f"no up-to-date board in {root}; build it: python3 tools/arm_board.py", EXIT_NOT_BUILT)
    t0 = time.monotonic()
    if root.exists():
        shutil.rmtree(root)
    work = root.parent / (root.name + ".partial")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    state = root.parent / (root.name + "-apt")  # kept between builds: package lists and .debs
    debs = fetch_debs(state, sources)
    log(f"extracting {len(debs)} arm64 packages")
    extract_debs(debs, work)
    python, py = root_python(work)
    glibc = glibc_minor(debs)
    downloads = root.parent / (root.name + "-wheels")
    built: dict[str, str] = {}
    for variant, v in VARIANTS.items():
        if "python" in v and v["python"] != py:
            log(f"skipping variant {variant}: its wheels need Python {v['python']}, Debian's is {py}")
            continue
        wheels = fetch_wheels(list(v["wheels"]), downloads / f"{variant}-cp{py}", py, glibc)  # type: ignore[call-overload]
        site = work / "opt" / variant
        site.mkdir(parents=True)
        for wheel in wheels:
            unzip_wheel(wheel, site)
        built[variant] = str(v["wrapper"])
    work.rename(root)
    record: dict[str, object] = {"spec": spec, "qemu": qemu, "cpu": cpu, "root": str(root), "python": python,
                                 "python_version": py, "variants": {}}
    variants: dict[str, dict[str, str]] = {}
    for variant in built:
        wrapper = write_wrapper(root, qemu, cpu, python, variant)
        info = verify(wrapper, str(VARIANTS[variant]["module"]))
        variants[variant] = {"wrapper": str(wrapper), "module": str(VARIANTS[variant]["module"]),
                             "runtime_version": info["runtime"], "numpy": info["numpy"], "python": info["python"]}
        log(f"{variant}: {wrapper} -> Python {info['python']} aarch64, {VARIANTS[variant]['module']} "
            f"{info['runtime']}, numpy {info['numpy']}")
    record["variants"] = variants
    record["build_s"] = round(time.monotonic() - t0, 1)
    stamp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    log(f"board built in {record['build_s']} s: {root}")
    return record


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"arm_board: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def main(argv: Sequence[str] | None = None) -> int:
    p = _Parser(prog="arm_board", description="Build (or reuse) the cached emulated aarch64 board; print its "
                "Python wrapper's path.")
    p.add_argument("--root", type=Path, default=None, help="board folder (default: $HWCOMPRESS_ARM_BOARD or "
                   "~/.cache/hwcompress/arm64-board)")
    p.add_argument("--variant", default="litert", choices=sorted(VARIANTS),
                   help="whose wrapper to print: litert (ai-edge-litert, numpy 2) or tflite214 (tflite-runtime 2.14)")
    p.add_argument("--sources", type=Path, default=None,
                   help="apt sources file that carries arm64 (default: the host's apt sources)")
    p.add_argument("--cpu", default=DEFAULT_CPU,
                   help="CPU model qemu emulates (default cortex-a72, the Pi 4's; see qemu-aarch64-static -cpu help)")
    p.add_argument("--rebuild", action="store_true", help="build again even if the board is up to date")
    p.add_argument("--no-install", action="store_true", help="never install qemu-user-static (exit 3 if missing)")
    p.add_argument("--no-build", action="store_true", help="only reuse an up-to-date board (exit 4 if there is none)")
    p.add_argument("--json", action="store_true", help="print board.json instead of the wrapper path")
    args = p.parse_args(argv)
    if args.sources is not None and not args.sources.is_file():
        p.error(f"--sources {args.sources}: no such file")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", args.cpu):
        p.error(f"--cpu {args.cpu!r}: not a qemu CPU model name (e.g. cortex-a72, cortex-a53, neoverse-n1)")
    root = (args.root or default_root()).expanduser().resolve()
    if root == Path(root.anchor) or root == Path.home():
        p.error(f"--root {root}: refusing to use (the folder is deleted and rebuilt)")
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        with open(root.parent / (root.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; a second waiter then reuses it
            record = build(root, args.sources, args.rebuild, not args.no_install and not args.no_build,
                           allow_build=not args.no_build, cpu=args.cpu)
    except BoardError as exc:
        print(f"arm_board: error: {exc}", file=sys.stderr)
        return exc.code
    except OSError as exc:
        print(f"arm_board: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    variants = cast(dict[str, dict[str, str]], record["variants"])
    if args.json:
        print(json.dumps(record, indent=1, sort_keys=True))
        return 0
    if args.variant not in variants:
        print(f"arm_board: error: variant {args.variant} was not built (Debian's Python is "
              f"{record['python_version']})", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(variants[args.variant]["wrapper"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
