"""The device scripts on old Pythons and numpys (issue 20: JetPack 4.6 has Python 3.6.9, numpy 1.13.3).

Static: ``vermin -t=3.6-`` over ``profilers/`` (with a control that the same flags do catch newer
syntax).  Real: where this machine has a Python 3.6, the scripts run in cached venvs
(tests/py36_env.py): ``ort_bench.py`` with the newest onnxruntime that ships a cp36 wheel
(1.10.0; it needs numpy >= 1.16.6: with 1.13.3 its import fails and the process segfaults, as
measured), and benchcore plus the TensorRT / LiteRT scripts' start-up with numpy 1.13.3.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from py36_env import cached_venv, find_python

from hwcompress.profiling.adapters import load_benchcore, profilers_dir

PROFILERS = profilers_dir()
ORT_PY36 = ("numpy==1.16.6", "onnxruntime==1.10.0")
NUMPY_113 = ("numpy==1.13.3",)
VERMIN = [sys.executable, "-c", "import sys; from vermin.main import main; sys.exit(main())", "-t=3.6-", "--violations", "--no-tips", "--eval-annotations",
          "--no-make-paths-absolute"]

PY36 = find_python("3.6")
needs_py36 = pytest.mark.skipif(PY36 is None, reason="no Python 3.6 on this machine (python3.6 or pyenv 3.6.x)")


def test_vermin_floor_of_profilers() -> None:
    res = subprocess.run([*VERMIN, str(PROFILERS)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Minimum required versions: 3.6" in res.stdout, res.stdout


def test_vermin_flags_catch_newer_syntax(tmp_path: Path) -> None:
    # The control: the same command refuses each construct issue 20 found in the scripts.
    snippets = {
        "future": "from __future__ import annotations\n",
        "walrus": "import sys\nif (n := len(sys.argv)) > 1:\n    print(n)\n",
        "generic": "def f(x: dict[str, int]) -> list[int]:\n    return list(x.values())\n",
        "abc": "from collections.abc import Callable\ndef g(c: Callable[[], int]) -> int:\n    return c()\n",
    }
    for name, code in snippets.items():
        path = tmp_path / f"{name}.py"
        path.write_text(code)
        res = subprocess.run([*VERMIN, str(path)], capture_output=True, text=True, timeout=60)
        assert res.returncode != 0, f"vermin accepted {name}: {res.stdout}"


@pytest.fixture(scope="module")
def ort_py36() -> str:
    assert PY36 is not None
    return str(cached_venv(PY36, ORT_PY36) / "bin" / "python")


@pytest.fixture(scope="module")
def numpy113_py36() -> str:
    assert PY36 is not None
    return str(cached_venv(PY36, NUMPY_113) / "bin" / "python")


def _run(python: str, script: str, *args: str) -> tuple[int, dict, str]:
    res = subprocess.run([python, str(PROFILERS / script), *args], capture_output=True, text=True, timeout=120)
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line, got stdout {res.stdout!r} stderr {res.stderr[-500:]!r}"
    return res.returncode, json.loads(lines[0]), res.stderr


@needs_py36
def test_ort_bench_real_run_on_python36(ort_py36: str, tmp_path: Path) -> None:
    import onnx
    from tiny_models import write_tiny_onnx

    # onnxruntime 1.10 reads opsets <= 15: the same ops, stamped opset 13 / IR 7.
    proto = onnx.load(str(write_tiny_onnx(tmp_path / "tiny17.onnx")))
    proto.opset_import[0].version, proto.ir_version = 13, 7
    onnx.checker.check_model(proto)
    model = tmp_path / "tiny.onnx"
    onnx.save(proto, str(model))
    code, out, stderr = _run(ort_py36, "ort_bench.py", "--model", str(model), "--warmup", "2", "--min-runs", "20",
                             "--min-seconds", "0", "--max-seconds", "2", "--per-node")
    assert code == 0 and out["ok"] is True, (out, stderr[-500:])
    assert out["device_info"]["python"].startswith("3.6."), out["device_info"]
    assert out["runtime_version"] == "1.10.0"
    assert out["latency"]["n"] >= 20 and out["latency"]["median_ms"] > 0
    assert out["inputs"] == [{"name": "x", "shape": [1, 1, 28, 28], "dtype": "float32"}]
    assert out["per_node"]["nodes"] and out["per_node"]["runs"] >= 20
    assert out["profiler_version"] == load_benchcore().profiler_version(str(PROFILERS / "ort_bench.py"))
    # A failure is still one JSON object with its exit code under 3.6.
    code, out, _ = _run(ort_py36, "ort_bench.py", "--model", str(tmp_path / "missing.onnx"))
    assert code == 3 and out == {"ok": False, "kind": "model",
                                 "error": f"cannot load model: file {tmp_path / 'missing.onnx'} does not exist"}
    code, out, _ = _run(ort_py36, "ort_bench.py", "--threads", "0", "--probe")
    assert code == 2 and out["kind"] == "usage" and "--threads" in out["error"]


_NUMPY_113_CHECK = r"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("benchcore", sys.argv[1] + "/benchcore.py")
bc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bc)
import numpy as np
rng = bc.make_rng(3)
arrays = {
    "f16": rng.standard_normal([2, 3]).astype("float16"),
    "i32": rng.integers(0, 2, size=[4]).astype("int32"),
    "b": rng.integers(0, 2, size=[5]).astype(bool),
}
samples = [0.001, 0.002, 0.0015, 0.003, 0.0012]
times = bc.time_runs(lambda: None, warmup=1, min_runs=3, min_seconds=0.0, max_runs=3, max_seconds=1.0)
mem = bc.PeakMemory()
mem.start()
block = np.ones(4 << 20, dtype=np.uint8)
mem.sample()
bc.emit({"numpy": np.__version__, "rng": type(rng).__name__,
         "arrays": {k: [str(v.dtype), list(v.shape), v.ravel().tolist()] for k, v in arrays.items()},
         "stats": bc.latency_stats(samples), "n_times": len(times), "memory": mem.stop(),
         "device": bc.device_info(), "when": bc.utc_now()})
"""


@needs_py36
def test_benchcore_on_numpy_113(numpy113_py36: str) -> None:
    res = subprocess.run([numpy113_py36, "-c", _NUMPY_113_CHECK, str(PROFILERS)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr[-800:]
    out = json.loads(res.stdout)
    assert out["numpy"] == "1.13.3" and out["rng"] == "_LegacyRng"
    assert out["arrays"]["f16"][:2] == ["float16", [2, 3]]
    assert out["arrays"]["i32"][:2] == ["int32", [4]] and set(out["arrays"]["i32"][2]) <= {0, 1}
    assert out["arrays"]["b"][:2] == ["bool", [5]]
    # The same statistics as on this machine's numpy 2.x.
    host = load_benchcore().latency_stats([0.001, 0.002, 0.0015, 0.003, 0.0012])
    assert out["stats"].keys() == host.keys()
    for key, value in host.items():
        assert out["stats"][key] == pytest.approx(value, rel=1e-12), key
    assert out["n_times"] == 3
    assert out["memory"]["peak_memory_bytes"] >= 4 << 20, out["memory"]
    assert out["device"]["python"].startswith("3.6.") and out["device"]["cores"] >= 1
    assert out["when"].endswith("+00:00")


def test_make_rng_keeps_generator_values_on_new_numpy() -> None:
    bc = load_benchcore()
    rng = bc.make_rng(7)
    assert isinstance(rng, np.random.Generator)
    assert np.array_equal(rng.standard_normal([3, 2]), np.random.default_rng(7).standard_normal([3, 2]))


@needs_py36
@pytest.mark.parametrize(("script", "needle"), [("trt_bench.py", "tensorrt is not installed"),
                                                 ("tflite_bench.py", "LiteRT is not installed")])
def test_runtime_scripts_start_on_python36_numpy_113(numpy113_py36: str, script: str, needle: str,
                                                      tmp_path: Path) -> None:
    model = tmp_path / ("m.onnx" if script == "trt_bench.py" else "m.tflite")
    model.write_bytes(b"\0" * 16)
    code, out, stderr = _run(numpy113_py36, script, "--model", str(model), "--min-runs", "5")
    assert code == 4 and out["ok"] is False and out["kind"] == "environment", out
    assert out["error"].startswith(needle) and "Traceback" not in stderr


@pytest.fixture(scope="module")
def opset13_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import onnx
    from tiny_models import write_tiny_onnx

    folder = tmp_path_factory.mktemp("op13")
    proto = onnx.load(str(write_tiny_onnx(folder / "tiny17.onnx")))
    proto.opset_import[0].version, proto.ir_version = 13, 7
    path = folder / "tiny13.onnx"
    onnx.save(proto, str(path))
    return path


@needs_py36
def test_measure_through_a_python36_device_locally_and_over_ssh(ort_py36: str, opset13_model: Path,
                                                              sshd) -> None:  # type: ignore[no-untyped-def]
    # The host side end to end against a Python 3.6 "device": LocalRunner with that interpreter, then
    # the SSH runner with connection.python pointing at it (as a Jetson Nano's python3 would).
    import dataclasses
    import tomllib

    from hwcompress.device_check import check_device
    from hwcompress.profiling.measure import measure
    from hwcompress.profiling.remote import SshRunner, close_all
    from hwcompress.profiling.runner import LocalRunner
    from hwcompress.targets import load_target, parse_target

    local = load_target("x86-cpu")
    local = dataclasses.replace(local, measure=dataclasses.replace(local.measure, min_runs=20, min_seconds=0.0,
                                                                   max_rounds=1))
    m = measure(opset13_model, local, runner=LocalRunner(python=ort_py36))
    assert m.runtime_version == "1.10.0" and m.latency.n >= 20 and m.latency.median_ms > 0
    remote = parse_target(tomllib.loads(sshd.target_toml("onnxruntime", python=ort_py36)), "test", "loop-py36")
    with SshRunner(remote.connection) as runner:
        m2 = measure(opset13_model, remote, runner=runner)
    assert m2.runtime_version == "1.10.0" and m2.latency.n >= 20 and m2.model_sha256 == m.model_sha256
    report = check_device(remote)
    assert report.ok, report.problems
    assert report.python_version.startswith("3.6.") and report.numpy_version == "1.16.6"
    assert report.runtime_version == "1.10.0"
    close_all()


@needs_py36
def test_runtime_built_for_a_newer_numpy_is_reported_with_the_fix(opset13_model: Path) -> None:
    # Measured: onnxruntime 1.10 (built against numpy >= 1.16) on numpy 1.13.3 fails numpy's C-API import
    # and crashes in its first run.  The host names the crash, the device's Python and the numpy pitfall.
    from hwcompress.errors import ProfilerError
    from hwcompress.profiling.runner import LocalRunner

    assert PY36 is not None
    python = str(cached_venv(PY36, ("numpy==1.13.3", "onnxruntime==1.10.0")) / "bin" / "python")
    with pytest.raises(ProfilerError) as info:
        LocalRunner(python=python).run("ort_bench.py", ["--model", str(opset13_model), "--min-runs", "5"],
                                       [opset13_model], timeout_s=120)
    msg = str(info.value)
    assert msg.startswith("ort_bench.py was killed by SIGSEGV under Python 3.6."), msg
    assert "numpy >= 1.16.6" in msg and "\n" not in msg
