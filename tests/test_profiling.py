"""measure() end to end with the local runner on the x86-cpu target, the cache, re-measuring,
timeouts and failures; plus the re-measure rule with a scripted runner."""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from hwcompress.errors import FileMissingError, ModelError, ProfilerError, ProfilerTimeout
from hwcompress.profiling.adapters import get_adapter, profilers_dir
from hwcompress.profiling.cache import MeasurementCache
from hwcompress.profiling.measure import measure, measure_many, probe
from hwcompress.profiling.runner import LocalRunner, Runner
from hwcompress.records import Target
from hwcompress.targets import load_target


@pytest.fixture(scope="module")
def target() -> Target:
    t = load_target("x86-cpu")
    return dataclasses.replace(t, measure=dataclasses.replace(t.measure, warmup_runs=2, min_runs=10, min_seconds=0.02))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    from hwcompress.export import export_onnx
    from hwcompress.zoo import build_model

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("models")
    return {n: export_onnx(build_model(n), (1, 1, 28, 28), folder / f"{n}.onnx") for n in ("resnet-20", "mobilenetv2-small")}


def test_measure_then_cache_hit(target: Target, models: dict[str, Path], tmp_path: Path) -> None:
    cache = MeasurementCache(tmp_path / "m.sqlite")
    m = measure(models["resnet-20"], target, cache=cache)
    assert m.cached is False and m.target == "x86-cpu" and m.runtime == "onnxruntime"
    assert m.latency.n >= 10 and m.latency.median_ms > 0 and m.peak_memory_bytes > 0
    assert 1 <= m.rounds <= target.measure.max_rounds and m.wall_s > 0
    assert m.settings == target.measure and m.threads == 1
    assert m.profiler_version == get_adapter("onnxruntime").profiler_version()
    t0 = time.perf_counter()
    hit = measure(models["resnet-20"], target, cache=cache)
    assert time.perf_counter() - t0 < 1.0
    assert hit.cached is True and hit.latency == m.latency and hit.model_sha256 == m.model_sha256
    other = dataclasses.replace(target, name="renamed")  # same settings: shares the entry
    assert measure(models["resnet-20"], other, cache=cache).target == "renamed"
    fresh = measure(models["resnet-20"], target, cache=cache, force=True)
    assert fresh.cached is False
    nodes = measure(models["resnet-20"], target, cache=cache, per_node=True)  # cached entry lacks per-node
    assert nodes.cached is False and len(nodes.per_node_us) >= 19
    again = measure(models["resnet-20"], target, cache=cache, per_node=True)
    assert again.cached is True and again.per_node_us == nodes.per_node_us
    assert cache.stats().entries == 1


def test_noisy_rounds_are_repeated(target: Target, models: dict[str, Path]) -> None:
    strict = dataclasses.replace(target, measure=dataclasses.replace(target.measure, max_cv=1e-9, max_rounds=3))
    m = measure(models["mobilenetv2-small"], strict)
    assert m.rounds == 3
    assert m.median_cv > 0 and m.wall_s > 0
    loose = dataclasses.replace(target, measure=dataclasses.replace(target.measure, max_cv=10.0))
    assert measure(models["mobilenetv2-small"], loose).rounds == 1


def test_measure_many(target: Target, models: dict[str, Path], tmp_path: Path) -> None:
    cache = MeasurementCache(tmp_path / "m.sqlite")
    out = measure_many([models["mobilenetv2-small"], models["mobilenetv2-small"]], target, cache=cache)
    assert [m.cached for m in out] == [False, True]


class ScriptedRunner:
    """Returns canned profiler results (a deterministic stand-in for the re-measure logic only)."""

    def __init__(self, model: Path, rounds: list[tuple[float, float]]) -> None:
        from hwcompress.fsutil import sha256_file

        self.sha = sha256_file(model)
        self.rounds = list(rounds)  # (median_ms, robust_cv) per round
        self.calls: list[list[str]] = []

    def run(self, script: str, args: Sequence[str], files: Sequence[Path], timeout_s: float) -> str:
        self.calls.append(list(args))
        median, rcv = self.rounds.pop(0)
        lat = {"median_ms": median, "p10_ms": median, "p90_ms": median, "mean_ms": median, "std_ms": 0.5 * median,
               "cv": 0.5, "robust_cv": rcv, "n": 50, "min_ms": median, "max_ms": median}
        return json.dumps({
            "ok": True, "latency": lat, "peak_memory_bytes": 1, "model_bytes": 1, "model_sha256": self.sha,
            "load_ms": 1.0, "runtime": "onnxruntime", "runtime_version": "x", "device": "d", "threads": 1,
            "timestamp": "t", "profiler_version": get_adapter("onnxruntime").profiler_version(),
        })


def test_remeasure_keeps_the_least_noisy_round(target: Target, models: dict[str, Path]) -> None:
    model = models["mobilenetv2-small"]
    runner = ScriptedRunner(model, [(1.0, 0.20), (2.0, 0.05), (3.0, 0.10)])
    assert isinstance(runner, Runner)
    m = measure(model, target, runner=runner)
    assert m.rounds == 3 and m.latency.median_ms == 2.0 and m.latency.robust_cv == 0.05
    assert m.median_cv == pytest.approx(0.408248, rel=1e-4)  # pstdev([1, 2, 3]) / 2
    runner = ScriptedRunner(model, [(1.0, 0.20), (1.1, 0.01), (9.0, 0.0)])
    m = measure(model, target, runner=runner, per_node=True)
    assert m.rounds == 2 and m.latency.median_ms == 1.1
    assert "--per-node" in runner.calls[0] and "--per-node" not in runner.calls[1]


def test_failures_are_one_line(target: Target, models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileMissingError):
        measure(tmp_path / "missing.onnx", target)
    tfl = tmp_path / "model.tflite"
    tfl.write_bytes(b"x")
    with pytest.raises(ModelError, match=r"takes \.onnx"):
        measure(tfl, target)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage" * 64)
    with pytest.raises(ModelError) as info:
        measure(bad, target)
    assert "cannot load model" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ProfilerError, match="no profiler for runtime 'coreml'"):
        measure(models["resnet-20"], dataclasses.replace(target, runtime="coreml"))


def _fake_profilers(tmp_path: Path, body: str) -> Path:
    folder = tmp_path / "profilers"
    folder.mkdir()
    (folder / "benchcore.py").write_bytes((profilers_dir() / "benchcore.py").read_bytes())
    (folder / "ort_bench.py").write_text(body)
    return folder


def test_runner_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    folder = _fake_profilers(tmp_path, (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    ))
    t0 = time.perf_counter()
    with pytest.raises(ProfilerTimeout, match="ran past its 2 s limit"):
        LocalRunner(profilers_dir=folder).run("ort_bench.py", [], [], timeout_s=2.0)
    assert time.perf_counter() - t0 < 10
    pid = int(pidfile.read_text())
    assert _gone(pid), "the grandchild outlived the timeout"  # it went with the process group


def _gone(pid: int, wait_s: float = 5.0) -> bool:
    """True once ``pid`` no longer exists or is a zombie waiting for init to reap it."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_measure_timeout(target: Target, models: dict[str, Path]) -> None:
    tiny = dataclasses.replace(target, measure=dataclasses.replace(target.measure, timeout_s=0.05))
    with pytest.raises(ProfilerTimeout):
        measure(models["resnet-20"], tiny)


def test_crash_and_garbage_output(target: Target, models: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    crash = _fake_profilers(tmp_path / "a", "import sys\nprint('line one', file=sys.stderr)\nraise SystemExit('boom: died')\n")
    with pytest.raises(ProfilerError) as info:
        measure(models["resnet-20"], target, runner=LocalRunner(profilers_dir=crash))
    # Not a bare "exited with status 1": the Python that ran it, the stderr, and what to do.
    msg = str(info.value)
    assert msg.startswith(f"ort_bench.py stopped without a result (exit 1) under Python {platform.python_version()}:")
    assert "boom: died" in msg and "fix: run it by hand" in msg and "\n" not in msg
    (tmp_path / "b").mkdir()
    garbage = _fake_profilers(tmp_path / "b", "print('hello')\n")
    with pytest.raises(ProfilerError, match="printed no JSON"):
        measure(models["resnet-20"], target, runner=LocalRunner(profilers_dir=garbage))


def test_probe_and_environment_failure(target: Target, models: dict[str, Path]) -> None:
    info = probe(target)
    assert info["ok"] is True and info["runtime"] == "onnxruntime" and "CPUExecutionProvider" in info["providers"]
    assert info["profiler_version"] == get_adapter("onnxruntime").profiler_version()
    no_ep = dataclasses.replace(target, options=dataclasses.replace(target.options, execution_provider="NoSuchEP"))
    with pytest.raises(ProfilerError, match=r"environment problem.*NoSuchEP"):
        measure(models["resnet-20"], no_ep)
    with pytest.raises(ProfilerError, match="cannot run on target"):
        probe(no_ep)


def test_import_is_light() -> None:
    code = ("import sys, hwcompress.profiling.measure, hwcompress.profiling.runner, hwcompress.profiling.cache\n"
            "heavy = [m for m in ('torch', 'onnxruntime', 'numpy', 'onnx') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
