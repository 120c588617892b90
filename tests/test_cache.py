"""MeasurementCache: round trip, concurrent writers, SIGKILL mid-write, corrupt file."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hwcompress.errors import CacheError
from hwcompress.profiling.cache import CacheKey, MeasurementCache, default_cache_path
from hwcompress.records import LatencyStats, Measurement, MeasureSettings

ROOT = Path(__file__).resolve().parent.parent


def make_measurement(i: int = 0, nodes: int = 0) -> Measurement:
    return Measurement(
        target="x86-cpu", model_sha256=f"{i:064x}",
        latency=LatencyStats(median_ms=1.0 + i, p10_ms=0.9, p90_ms=1.2, mean_ms=1.05, std_ms=0.05, cv=0.05, n=50,
                             min_ms=0.8, max_ms=2.0, robust_cv=0.01),
        peak_memory_bytes=1 << 20, model_bytes=1000, load_ms=5.0, runtime="onnxruntime", runtime_version="1.31.1",
        device="cpu", settings=MeasureSettings(), threads=1, timestamp="2025-01-01T00:00:00+00:00",
        profiler_version="ort_bench 1.0+abc", per_node_us={f"node{j}": float(j) for j in range(nodes)},
    )


def key(i: int, digest: str = "d1") -> CacheKey:
    return CacheKey(f"{i:064x}", digest, "ort_bench 1.0+abc")


def test_round_trip(tmp_path: Path) -> None:
    cache = MeasurementCache(tmp_path / "m.sqlite")
    m = make_measurement(1, nodes=3)
    assert cache.get(key(1)) is None
    cache.put(key(1), m)
    got = cache.get(key(1))
    assert got is not None and got.cached is True
    assert got == m.__class__(**{**m.__dict__, "cached": True})
    assert cache.get(key(1, digest="other")) is None
    assert cache.get(CacheKey(key(1).model_sha256, "d1", "ort_bench 2.0+def")) is None
    cache.put(key(1), make_measurement(5))  # replaces
    replaced = cache.get(key(1))
    assert replaced is not None and replaced.latency.median_ms == 6.0
    st = cache.stats()
    assert (st.entries, st.hits, st.misses) == (1, 2, 3) and st.file_bytes > 0
    assert cache.clear() == 1 and cache.stats().entries == 0
    cache.close()
    mode = sqlite3.connect(tmp_path / "m.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HWCOMPRESS_CACHE", str(tmp_path / "c"))
    assert default_cache_path() == tmp_path / "c" / "measurements.sqlite"
    cache = MeasurementCache()
    cache.put(key(2), make_measurement(2))
    assert (tmp_path / "c" / "measurements.sqlite").is_file()


def _child(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"},
    )


WRITER = """
import sys, time
from pathlib import Path
from test_cache import key, make_measurement
from hwcompress.profiling.cache import MeasurementCache
path, start, offset = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
cache = MeasurementCache(path)
while not start.exists():
    time.sleep(0.005)
for i in range(offset, offset + 150):
    cache.put(key(i), make_measurement(i, nodes=50))
print("done")
"""


def test_two_processes_write_at_once(tmp_path: Path) -> None:
    db, start = tmp_path / "m.sqlite", tmp_path / "start"
    procs = [_child(WRITER, str(db), str(start), str(off)) for off in (0, 1000)]
    time.sleep(0.3)
    start.touch()
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    cache = MeasurementCache(db)
    assert cache.stats().entries == 300
    for i in [*range(150), *range(1000, 1150)]:
        m = cache.get(key(i))
        assert m is not None and m.latency.median_ms == 1.0 + i


KILLED_WRITER = """
import sys
from pathlib import Path
from test_cache import key, make_measurement
from hwcompress.profiling.cache import MeasurementCache
cache = MeasurementCache(Path(sys.argv[1]))
cache.put(key(0), make_measurement(0))
if sys.argv[2] == "open-transaction":
    conn = cache._connect()
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("DELETE FROM measurements")
    print("ready", flush=True)
    import time; time.sleep(60)
i = 1
print("ready", flush=True)
while True:
    cache.put(key(i), make_measurement(i, nodes=2000))
    i += 1
"""


@pytest.mark.parametrize("mode", ["open-transaction", "busy-loop"])
def test_sigkill_mid_write_leaves_a_readable_cache(tmp_path: Path, mode: str) -> None:
    db = tmp_path / "m.sqlite"
    proc = _child(KILLED_WRITER, str(db), mode)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    cache = MeasurementCache(db)
    first = cache.get(key(0))
    assert first is not None and first.latency.median_ms == 1.0  # the uncommitted DELETE rolled back
    entries = cache.stats().entries
    for i in range(1, entries):
        assert cache.get(key(i)) is not None  # every committed row is whole
    t0 = time.perf_counter()
    cache.put(key(99_999), make_measurement(7))  # the dead writer's lock is gone
    assert time.perf_counter() - t0 < 5
    assert cache._execute("PRAGMA integrity_check") == [("ok",)]


def test_corrupt_file_is_a_cache_error(tmp_path: Path) -> None:
    db = tmp_path / "m.sqlite"
    db.write_bytes(b"this is not an SQLite database\n" * 200)
    cache = MeasurementCache(db)
    with pytest.raises(CacheError) as info:
        cache.get(key(1))
    msg = str(info.value)
    assert "\n" not in msg and str(db) in msg and "delete" in msg and "--cache" in msg


def test_truncated_file_is_a_cache_error(tmp_path: Path) -> None:
    db = tmp_path / "m.sqlite"
    cache = MeasurementCache(db)
    for i in range(200):
        cache.put(key(i), make_measurement(i, nodes=20))
    cache._execute("PRAGMA wal_checkpoint(TRUNCATE)")
    cache.close()
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    data = db.read_bytes()
    db.write_bytes(data[:4096] + b"\xff" * 8192 + data[4096 + 8192:])
    with pytest.raises(CacheError):
        cache = MeasurementCache(db)
        for i in range(200):
            cache.get(key(i))
