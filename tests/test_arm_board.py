"""An emulated Raspberry Pi 4: real aarch64 code (Debian arm64 Python + PyPI aarch64 wheels run by
qemu-user, built by tools/arm_board.py) behind the loopback sshd, driven through the real CLI.

Timings under emulation mean nothing: these tests assert correctness (the ARM interpreter's outputs
equal the host's), that every path goes through the aarch64 Python, and that the reports say
"emulated aarch64".  The board is built once (cached: ~30 s the first time, ~0.1 s to reuse);
tests skip only where there is no emulation.  The search through it is marked slow.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny_models import write_tiny_tflite

from hwcompress.profiling.adapters import load_benchcore

benchcore = load_benchcore()

REPO = Path(__file__).resolve().parent.parent
TOOL = REPO / "tools" / "arm_board.py"
EM_AARCH64 = 183  # ELF e_machine of AArch64


def _tool(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=timeout)


def _board(build: bool) -> dict[str, Any]:
    res = _tool("--json", *(() if build else ("--no-build",)))
    if res.returncode == 3:
        pytest.skip("no aarch64 emulation here: " + res.stderr.strip())
    if res.returncode == 4:
        pytest.skip("no emulated board built yet (python3 tools/arm_board.py, about 30 s; "
                    "or pytest -m slow tests/test_arm_board.py)")
    assert res.returncode == 0, res.stderr[-2000:]
    record: dict[str, Any] = json.loads(res.stdout)
    return record


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    """The board's board.json, built when missing (cached; about 30 s the first time; skips without qemu)."""
    return _board(build=True)


@pytest.fixture(scope="module")
def built_board() -> dict[str, Any]:
    """The board's board.json, built first where needed (a few minutes the first time)."""
    return _board(build=True)


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("hwcompress")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "hwcompress"]


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")


def pi4_target(folder: Path, sshd: Any, python: str, **measure: object) -> Path:
    """A copy of targets/raspberry-pi-4.toml reached at the loopback sshd, ``connection.python`` =
    ``python`` (the board's wrapper); ``measure`` overrides [measure] settings.  Named
    raspberry-pi-4.toml, so the target is still called raspberry-pi-4."""
    data = tomllib.loads((REPO / "targets" / "raspberry-pi-4.toml").read_text())
    data["connection"].update(host="127.0.0.1", port=sshd.port, user=sshd.user, key=str(sshd.client_key),
                              known_hosts=str(sshd.known_hosts), python=python, workdir=str(folder / "work"))
    data["measure"].update(measure)
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, table in data.items():
        if isinstance(table, dict):
            lines += ["", f"[{section}]", *(f"{k} = {_toml_value(v)}" for k, v in table.items())]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "raspberry-pi-4.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run_cli(args: list[str], tmp: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HWCOMPRESS_CACHE": str(tmp / "hw-cache"), "COLUMNS": "200"}
    return subprocess.run([*_cli(), *args], capture_output=True, text=True, timeout=timeout, env=env)


# --------------------------------------------------------------------------- the emulation rule
X86_CPUINFO = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel name\t: AMD EPYC 7B13\n"
               "flags\t\t: fpu sse sse2 avx2 fma\n")
PI4_CPUINFO = ("processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
               "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n"
               "CPU revision\t: 3\n\nHardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n")


@pytest.mark.parametrize(("machine", "kernel_arch", "cpuinfo", "expected"), [
    ("aarch64", "x86_64", X86_CPUINFO, "x86_64"),   # qemu-user on x86 (this board)
    ("aarch64", "x86_64", PI4_CPUINFO, "x86_64"),   # qemu >= 8.1 shows an ARM cpuinfo: the kernel still tells
    ("x86_64", "aarch64", PI4_CPUINFO, "aarch64"),  # x86 code emulated on an ARM host
    ("aarch64", "aarch64", PI4_CPUINFO, ""),        # a real Raspberry Pi 4, 64-bit OS
    ("armv7l", "aarch64", PI4_CPUINFO, ""),         # 32-bit Raspberry Pi OS on the 64-bit kernel
    ("i686", "x86_64", X86_CPUINFO, ""),            # 32-bit x86 user space on x86_64
    ("x86_64", "x86_64", X86_CPUINFO, ""),
    ("aarch64", "", X86_CPUINFO, "x86"),            # kernel without /proc/sys/kernel/arch: cpuinfo decides
    ("aarch64", "", PI4_CPUINFO, ""),
    ("x86_64", "", PI4_CPUINFO, "arm"),
    ("aarch64", "", "", ""),                        # nothing to tell by: native
    ("", "x86_64", X86_CPUINFO, ""),
])
def test_emulation_rule(machine: str, kernel_arch: str, cpuinfo: str, expected: str) -> None:
    assert benchcore.emulated_on(machine, kernel_arch, cpuinfo) == expected


def test_device_string_says_emulated() -> None:
    info = {"cpu": "AMD EPYC 7B13", "arch": "aarch64", "usable_cores": 2, "features": [], "os": "Linux 6.1",
            "board": "", "emulated": "x86_64"}
    assert benchcore.device_string(info) == "emulated aarch64 on AMD EPYC 7B13 (x86_64) | 2 cores | Linux 6.1"
    native = {**info, "emulated": "", "features": ["asimd"], "cpu": "Cortex-A72",
              "board": "Raspberry Pi 4 Model B Rev 1.4"}
    assert benchcore.device_string(native) == \
        "Raspberry Pi 4 Model B Rev 1.4 | Cortex-A72 | aarch64 | 2 cores | asimd | Linux 6.1"


def test_this_host_is_native() -> None:
    """The host's own profilers and probe see no emulation (the same rule, sent with the probe)."""
    from hwcompress.device_check import _probe_source, check_device, format_report
    from hwcompress.targets import load_target

    assert "def emulated_on(" in _probe_source()
    info = benchcore.device_info()
    assert info["emulated"] == "" and "emulated" not in benchcore.device_string(info)
    report = check_device(load_target("x86-cpu"))
    assert report.emulated == "" and "emulated" not in format_report(report)


# --------------------------------------------------------------------------- the tool's input checks
@pytest.mark.parametrize(("args", "message"), [
    (["--variant", "riscv"], "invalid choice"),
    (["--sources", "/nonexistent/arm64.sources"], "no such file"),
    (["--root", "/"], "refusing"),
    (["--no-build", "--root", "{tmp}/no-board"], "no up-to-date board"),
    (["--cpu", "cortex a72; rm -rf /"], "not a qemu CPU model"),
])
def test_tool_bad_input_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    res = _tool(*(a.format(tmp=tmp_path) for a in args), timeout=60)
    if res.returncode == 3:  # --no-build without qemu: that is what it says
        pytest.skip(res.stderr.strip())
    assert res.returncode in (2, 4) and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("arm_board: error:") and message in lines[0], res.stderr


def test_tool_without_qemu_says_so(tmp_path: Path) -> None:
    """No qemu-aarch64-static and no way to install it (nothing on PATH): exit 3, one line (the
    tests above skip with that line)."""
    res = subprocess.run([sys.executable, str(TOOL), "--root", str(tmp_path / "board")], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PATH": str(tmp_path)})
    assert res.returncode == 3 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        "arm_board: error: qemu-aarch64-static is not installed and this host has no apt-get; "
        "install QEMU's user-mode emulator for aarch64"]


def test_tool_failure_one_line(tmp_path: Path) -> None:
    """A failing step (here apt-get update of a suite that does not exist) is one line, exit 1."""
    sources = tmp_path / "arm64.list"
    sources.write_text("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                       "http://deb.debian.org/debian hwcompress-no-such-suite main\n")
    res = _tool("--root", str(tmp_path / "board"), "--sources", str(sources), "--no-install", timeout=300)
    if res.returncode == 3:
        pytest.skip(res.stderr.strip().splitlines()[-1])
    errors = [ln for ln in res.stderr.splitlines() if not ln.startswith("[arm-board]")]
    assert res.returncode == 1 and res.stdout == "" and len(errors) == 1, res.stderr
    assert errors[0].startswith("arm_board: error: apt-get update for arm64 failed"), errors
    assert not (tmp_path / "board" / "board.json").exists()


# --------------------------------------------------------------------------- ARM code, correct results
_OUTPUTS = r"""
import json, sys, numpy as np
try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:
    from tflite_runtime.interpreter import Interpreter
with open(sys.executable, "rb") as fh:
    elf = fh.read(20)
out = {"e_machine": int.from_bytes(elf[18:20], "little"), "models": []}
for path in sys.argv[1:]:
    it = Interpreter(model_path=path)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    x = np.load(path + ".npy")
    it.set_tensor(d["index"], x)
    it.invoke()
    out["models"].append(it.get_tensor(it.get_output_details()[0]["index"]).tolist())
print(json.dumps(out))
"""


def _inputs(path: Path, seed: int) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    d = Interpreter(model_path=str(path)).get_input_details()[0]
    rng = np.random.default_rng(seed)
    if np.issubdtype(d["dtype"], np.integer):
        info = np.iinfo(d["dtype"])
        x = rng.integers(info.min, info.max, size=d["shape"], endpoint=True).astype(d["dtype"])
    else:
        x = rng.standard_normal(d["shape"]).astype(d["dtype"])
    np.save(str(path) + ".npy", x)
    return x


def _host_output(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return np.asarray(it.get_tensor(it.get_output_details()[0]["index"]))


@pytest.mark.parametrize("variant", ["litert", "tflite214"])
def test_arm_interpreter_matches_host(board: dict[str, Any], variant: str, tmp_path: Path) -> None:
    """The wrapper's Python is an AArch64 ELF, and its LiteRT gives the host's outputs (float32 to
    1e-4 relative, the fully integer int8 model to one quantization step)."""
    pytest.importorskip("ai_edge_litert")
    if variant not in board["variants"]:
        pytest.skip(f"variant {variant} not built (Debian's Python is {board['python_version']})")
    v = board["variants"][variant]
    models = [write_tiny_tflite(tmp_path / f"{kind}.tflite", kind) for kind in ("float32", "int8", "uint8")]
    inputs = [_inputs(m, seed) for seed, m in enumerate(models)]
    res = subprocess.run([v["wrapper"], "-c", _OUTPUTS, *map(str, models)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["e_machine"] == EM_AARCH64
    with open(os.path.realpath(sys.executable), "rb") as fh:  # the same check on the host's Python: not ARM
        assert int.from_bytes(fh.read(20)[18:20], "little") != EM_AARCH64
    for model, x, arm in zip(models, inputs, got["models"], strict=True):
        host = _host_output(model, x)
        arm_out = np.asarray(arm, dtype=host.dtype)
        assert arm_out.shape == host.shape and np.abs(host).max() > 0
        if np.issubdtype(host.dtype, np.integer):
            assert np.abs(arm_out.astype(np.int64) - host.astype(np.int64)).max() <= 1, model.name
        else:
            np.testing.assert_allclose(arm_out, host, rtol=1e-4, atol=1e-5 * float(np.abs(host).max()))


# --------------------------------------------------------------------------- through SSH and the CLI
@pytest.mark.parametrize("variant", ["litert", "tflite214"])
def test_targets_check_emulated_pi4(board: dict[str, Any], sshd: Any, variant: str, tmp_path: Path) -> None:
    if variant not in board["variants"]:
        pytest.skip(f"variant {variant} not built")
    v = board["variants"][variant]
    toml = pi4_target(tmp_path, sshd, v["wrapper"])
    res = _run_cli(["targets", "check", str(toml)], tmp_path, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = dict(line.split(None, 1) for line in res.stdout.splitlines() if line.strip() and not line.startswith(" "))
    assert rows["target"].startswith(f"raspberry-pi-4 (tflite) via {sshd.user}@127.0.0.1:{sshd.port}")
    assert rows["python"] == f"{v['wrapper']} {v['python']}"
    assert rows["runtime"] == f"{v['module']} {v['runtime_version']}"
    assert rows["numpy"] == v["numpy"]
    assert rows["cpu"].startswith("emulated aarch64 on ") and "(x86_64)" in rows["cpu"]
    assert "timings are the emulator's" in rows["emulated"]
    assert rows["status"] == "ready"


@pytest.mark.parametrize("variant", ["litert", "tflite214"])
def test_profile_emulated_pi4(board: dict[str, Any], sshd: Any, variant: str, tmp_path: Path) -> None:
    """`hwcompress profile model.tflite --target <Pi 4 copy>` measures on the aarch64 interpreter
    with the Pi 4 target's own settings (4 threads, XNNPACK, 50 runs, up to 3 rounds)."""
    if variant not in board["variants"]:
        pytest.skip(f"variant {variant} not built")
    v = board["variants"][variant]
    package = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}[v["module"]]
    toml = pi4_target(tmp_path, sshd, v["wrapper"])
    model = write_tiny_tflite(tmp_path / "tiny.tflite")
    res = _run_cli(["profile", str(model), "--target", str(toml), "--json", "--cache", str(tmp_path / "c.sqlite")],
                   tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    m = json.loads(res.stdout)
    assert m["target"] == "raspberry-pi-4" and m["runtime"] == "tflite"
    assert m["runtime_version"] == f"{package} {v['runtime_version']}"
    assert m["device"].startswith("emulated aarch64 on ") and "(x86_64)" in m["device"], m["device"]
    assert m["threads"] == 4 and m["settings"]["min_runs"] == 50
    lat = m["latency"]
    assert lat["n"] >= 50 and 0 < lat["p10_ms"] <= lat["median_ms"] <= lat["p90_ms"]
    assert m["model_bytes"] == model.stat().st_size and 1 <= m["rounds"] <= 3


TINY_NET = '''
from torch import nn


def tiny_cnn(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, num_classes))
'''


@pytest.mark.slow
def test_search_emulated_pi4(built_board: dict[str, Any], sshd: Any, fashion_dir: Path, tmp_path: Path) -> None:
    """A short stage-1 search on the emulated Pi 4: every candidate measured by the aarch64
    interpreter over SSH, an artifact whose figures say they are emulated (~2 min)."""
    if importlib.util.find_spec("litert_torch") is None:
        pytest.skip("litert-torch is not installed (pip install -e '.[tflite]'): no PyTorch -> .tflite export")
    from hwcompress.data import load_splits

    full = load_splits(fashion_dir, seed=0, val_size=200, calib_size=64, limit_train=600, limit_test=200)

    def raw(x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint((x[:, 0] * full.std + full.mean) * 255.0), 0, 255).astype(np.uint8)  # type: ignore[operator]

    data = tmp_path / "small.npz"
    np.savez(data, x=np.concatenate([raw(full.train.x), raw(full.val.x), raw(full.calib.x)]),
             y=np.concatenate([full.train.y, full.val.y, full.calib.y]), x_test=raw(full.test.x), y_test=full.test.y)
    (tmp_path / "tinynet.py").write_text(TINY_NET)
    v = built_board["variants"]["litert"]
    # the Pi 4 target with fewer runs per profile: the search profiles dozens of models under emulation
    toml = pi4_target(tmp_path / "target", sshd, v["wrapper"], warmup_runs=2, min_runs=10, min_seconds=0.05,
                      max_rounds=1)
    t0 = time.monotonic()
    res = _run_cli(["search", "--target", str(toml), "--model", f"{tmp_path / 'tinynet.py'}:tiny_cnn",
                    "--data", str(data), "--stages", "prune", "--episodes", "2", "--warmup", "1",
                    "--finetune-epochs", "0", "--val-images", "100", "--test-images", "100",
                    "--latency-budget", "0.9x", "--out", str(tmp_path / "art"), "--run-dir", str(tmp_path / "run"),
                    "--cache", str(tmp_path / "c.sqlite"), "--allow-over-budget"], tmp_path, timeout=1200)
    seconds = time.monotonic() - t0
    assert (tmp_path / "art" / "manifest.json").is_file(), (res.stdout + res.stderr)[-4000:]
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    # emulated timings decide nothing: the exit code only has to agree with the final verdict
    assert res.returncode == (0 if manifest["budget_met"] else 3), (res.stdout + res.stderr)[-4000:]
    assert manifest["target"]["name"] == "raspberry-pi-4"
    assert manifest["target"]["connection"]["python"] == v["wrapper"]
    assert (tmp_path / "art" / "model.tflite").is_file()
    for side in ("baseline", "result"):
        m = manifest[side]["measurement"]
        assert m["device"].startswith("emulated aarch64 on "), m["device"]
        assert m["runtime_version"] == f"ai-edge-litert {v['runtime_version']}" and m["latency"]["n"] >= 10
    candidates = [json.loads(line) for line in (tmp_path / "run" / "search.jsonl").read_text().splitlines()]
    measured = [c for c in candidates if not c["error"]]
    assert [c["stage"] for c in candidates].count("prune") >= 2 and measured
    for c in measured:
        assert c["measurement"]["device"].startswith("emulated aarch64 on ") and c["measurement"]["latency"]["n"] > 0
    assert "emulated aarch64 on " in (tmp_path / "art" / "report.html").read_text()
    print(f"search on the emulated Pi 4: {seconds:.0f} s, {len(candidates)} candidates")


@pytest.mark.slow
def test_build_is_cached(tmp_path: Path) -> None:
    """A fresh board in its own folder builds, verifies both variants, and a second run reuses it."""
    root = tmp_path / "board"
    t0 = time.monotonic()
    first = _tool("--root", str(root), "--json")
    if first.returncode == 3:
        pytest.skip("no aarch64 emulation here: " + first.stderr.strip())
    assert first.returncode == 0, first.stderr[-2000:]
    build_s = time.monotonic() - t0
    record = json.loads(first.stdout)
    assert record["root"] == str(root.resolve()) and set(record["variants"]) >= {"litert"}
    assert (root / "usr" / "lib" / "aarch64-linux-gnu").is_dir()  # Debian's arm64 libraries
    t1 = time.monotonic()
    second = _tool("--root", str(root))
    reuse_s = time.monotonic() - t1
    assert second.returncode == 0 and second.stdout.strip() == record["variants"]["litert"]["wrapper"]
    assert reuse_s < 5.0 and json.loads((root / "board.json").read_text()) == record
    wrapper = Path(record["variants"]["litert"]["wrapper"])
    good = wrapper.read_text()
    wrapper.write_text(good.replace("-cpu 'cortex-a72'", "-cpu 'max'"))  # edited by hand: written again
    assert _tool("--root", str(root)).returncode == 0 and wrapper.read_text() == good
    print(f"board build {build_s:.0f} s, reuse {reuse_s:.2f} s")
