"""Unit tests of the one timing loop and the statistics in profilers/benchcore.py."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

PROFILERS = Path(__file__).resolve().parent.parent / "profilers"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchcore_under_test", PROFILERS / "benchcore.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bc = _load()


class FakeClock:
    """A clock that only moves when the fake workload runs."""

    def __init__(self, durations: list[float] | None = None, step: float = 0.01) -> None:
        self.now = 100.0
        self.durations = list(durations or [])
        self.step = step
        self.calls = 0

    def clock(self) -> float:
        return self.now

    def fn(self) -> None:
        self.calls += 1
        self.now += self.durations.pop(0) if self.durations else self.step


def _run(fc: FakeClock, **kw: float) -> list[float]:
    settings = {"warmup": 0, "min_runs": 1, "min_seconds": 0.0, "max_runs": 10_000, "max_seconds": 1e9}
    settings.update(kw)
    return bc.time_runs(fc.fn, clock=fc.clock, **settings)


def test_min_runs_reached_when_time_is_short() -> None:
    fc = FakeClock(step=0.001)
    samples = _run(fc, warmup=3, min_runs=20, min_seconds=0.0)
    assert len(samples) == 20
    assert fc.calls == 23  # warm-up runs are called but not timed


def test_min_seconds_honoured_beyond_min_runs() -> None:
    fc = FakeClock(step=1 / 64)  # exact in binary: no rounding at the boundary
    samples = _run(fc, min_runs=5, min_seconds=0.5)
    assert sum(samples) >= 0.5
    assert len(samples) == 32  # the first run that reaches 0.5 s ends the loop
    assert len(samples) > 5


def test_max_runs_caps_min_seconds() -> None:
    fc = FakeClock(step=0.01)
    assert len(_run(fc, min_runs=5, min_seconds=100.0, max_runs=30)) == 30


def test_max_seconds_caps_min_runs() -> None:
    fc = FakeClock(step=0.125)
    samples = _run(fc, min_runs=1000, min_seconds=0.0, max_seconds=1.0)
    assert len(samples) == 8
    assert sum(samples) == pytest.approx(1.0)


def test_every_sample_kept_in_order() -> None:
    durations = [0.5, 0.001, 0.002, 0.003, 0.9, 0.004]  # a warm-up, then outliers stay in
    fc = FakeClock(durations=durations)
    samples = _run(fc, warmup=1, min_runs=5)
    assert samples == pytest.approx(durations[1:])


def test_gc_state_restored() -> None:
    import gc

    assert gc.isenabled()
    _run(FakeClock(), min_runs=3)
    assert gc.isenabled()


@pytest.mark.parametrize(
    "kw",
    [{"warmup": -1}, {"min_runs": 0}, {"min_runs": 5, "max_runs": 4}, {"min_seconds": -1.0}, {"max_seconds": 0.0}],
)
def test_bad_settings_rejected(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        _run(FakeClock(), **kw)


def test_real_clock_runs() -> None:
    samples = bc.time_runs(lambda: sum(range(100)), warmup=2, min_runs=10, min_seconds=0.01,
                           max_runs=100_000, max_seconds=1.0)
    assert len(samples) >= 10 and all(s >= 0 for s in samples)


def test_latency_stats_match_numpy() -> None:
    rng = np.random.default_rng(1)
    samples = list(rng.lognormal(-7, 0.3, size=501))
    st = bc.latency_stats(samples)
    ms = np.asarray(samples) * 1e3
    assert st["n"] == 501
    assert st["median_ms"] == pytest.approx(np.median(ms))
    assert st["p10_ms"] == pytest.approx(np.percentile(ms, 10))
    assert st["p90_ms"] == pytest.approx(np.percentile(ms, 90))
    assert st["mean_ms"] == pytest.approx(ms.mean())
    assert st["std_ms"] == pytest.approx(ms.std())
    assert st["cv"] == pytest.approx(ms.std() / ms.mean())
    assert st["min_ms"] == pytest.approx(ms.min()) and st["max_ms"] == pytest.approx(ms.max())
    mad = np.median(np.abs(ms - np.median(ms)))
    assert st["robust_cv"] == pytest.approx(1.4826 * mad / np.median(ms))
    json.dumps(st)  # plain JSON types


def test_latency_stats_robust_cv_ignores_one_outlier() -> None:
    samples = [0.001] * 50 + [0.001 * (1 + 0.01 * (i % 3)) for i in range(49)] + [0.05]
    st = bc.latency_stats(samples)
    assert st["cv"] > 0.3
    assert st["robust_cv"] < 0.03


def test_latency_stats_single_and_empty() -> None:
    st = bc.latency_stats([0.002])
    assert st["n"] == 1 and st["median_ms"] == pytest.approx(2.0) and st["cv"] == 0.0
    with pytest.raises(ValueError):
        bc.latency_stats([])


def test_peak_memory_sees_an_allocation() -> None:
    mem = bc.PeakMemory()
    mem.start()
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched
    block.sum()
    out = mem.stop()
    del block
    if out["memory"]["method"] == "unavailable":
        pytest.skip("no /proc on this system")
    assert out["peak_memory_bytes"] >= 60 * 1024 * 1024
    assert out["memory"]["method"] in {"clear_refs+VmHWM", "VmHWM", "VmRSS-samples"}


def test_device_info_and_version() -> None:
    info = bc.device_info()
    assert info["cores"] >= 1 and info["arch"]
    assert bc.device_string(info)
    version = bc.profiler_version(str(PROFILERS / "ort_bench.py"))
    assert version.startswith("ort_bench ") and "+" in version


def test_emit_usage_error_is_one_json_object(tmp_path: Path) -> None:
    script = tmp_path / "x_bench.py"
    (tmp_path / "benchcore.py").write_bytes((PROFILERS / "benchcore.py").read_bytes())
    script.write_text(
        "import benchcore as bc\n"
        "def main():\n"
        "    args = bc.base_parser('x_bench.py', 'test').parse_args()\n"
        "    print('stray print goes to stderr')\n"
        "    if args.threads == 7:\n"
        "        raise bc.BenchFailure('no such runtime', 'environment')\n"
        "    return {'threads': args.threads, 'nan': float('nan')}\n"
        "bc.run_main(main)\n"
    )
    ok = subprocess.run([sys.executable, str(script), "--model", "m"], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"ok": True, "threads": 1, "nan": None}
    assert "stray print" in ok.stderr
    env = subprocess.run([sys.executable, str(script), "--model", "m", "--threads", "7"],
                         capture_output=True, text=True, timeout=30)
    assert env.returncode == 4
    assert json.loads(env.stdout) == {"ok": False, "kind": "environment", "error": "no such runtime"}
    usage = subprocess.run([sys.executable, str(script), "--threads", "x"], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2
    out = json.loads(usage.stdout)
    assert out["ok"] is False and out["kind"] == "usage" and "--threads" in out["error"]
