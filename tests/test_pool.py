"""A pool of boards: which boards, calibration, failover, rejoin, every board gone.

The scheduling tests use a small deterministic fake board (threads instead of Ray actors, canned
profiler results); the last test is the real thing: a local Ray instance, two real sshd "boards" on
loopback running the real ONNX Runtime profiler, one killed mid-run and brought back.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import tomllib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sshd import SshServer
from tiny_models import write_tiny_onnx

from hwcompress.errors import DevicesLost, UsageError
from hwcompress.fsutil import sha256_file
from hwcompress.profiling.adapters import get_adapter
from hwcompress.profiling.cache import MeasurementCache
from hwcompress.profiling.measure import measure, routed, scaled
from hwcompress.profiling.pool import DevicePool, board_targets, load_pool_file, parse_hosts
from hwcompress.records import Target
from hwcompress.targets import parse_target


# --------------------------------------------------------------------------- which boards
def test_hosts_are_parsed_and_checked() -> None:
    assert parse_hosts("pi1, pi@pi2:2222,[fe80::1]:22") == [
        {"host": "pi1"}, {"host": "pi2", "user": "pi", "port": 2222}, {"host": "fe80::1", "port": 22}]
    for bad, why in (("pi1,,pi2", "empty entry"), ("pi1:0", "port"), ("pi1:ssh", "port"), ("@pi1", "empty user"),
                     ("pi1,pi1:22", "listed twice"), ("[::1", "IPv6")):
        with pytest.raises(UsageError, match=why):
            parse_hosts(bad)


def test_pool_files_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "pool.toml"
    toml.write_text('[[board]]\nhost = "pi1"\nuser = "pi"\nport = 22\nkey = "~/.ssh/k"\n\n[[board]]\nhost = "pi2"\n')
    assert load_pool_file(toml) == [{"host": "pi1", "user": "pi", "port": 22, "key": "~/.ssh/k"}, {"host": "pi2"}]
    js = tmp_path / "pool.json"
    js.write_text(json.dumps({"boards": [{"host": "a"}, {"host": "b", "port": 2200}]}))
    assert load_pool_file(js) == [{"host": "a"}, {"host": "b", "port": 2200}]
    cases = {
        "missing.toml": (None, "no such file"),
        "broken.toml": ("[[board]\nhost=", "not valid TOML"),
        "empty.toml": ("", "no boards"),
        "typo.toml": ('[[board]]\nhost = "a"\nprot = 22\n', "unknown key"),
        "port.toml": ('[[board]]\nhost = "a"\nport = "22"\n', "port must be an integer"),
        "nohost.toml": ('[[board]]\nuser = "pi"\n', "has no host"),
        "other.toml": ('[boards]\nhost = "a"\n', "unknown key"),
        "broken.json": ("{", "not valid JSON"),
        "list.json": ('[{"host": "a"}, "b"]', "board 2 is str"),
    }
    for name, (text, why) in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(UsageError, match=why):
            load_pool_file(path)


def test_board_targets_are_the_target_over_ssh() -> None:
    target = parse_target({"runtime": "onnxruntime", "threads": 1}, "t", "x")
    boards = board_targets(target, [{"host": "a"}, {"host": "b", "port": 2200, "user": "pi"}])
    assert [b.connection.board for b in boards] == ["a:22", "b:2200"]
    assert all(b.connection.kind == "ssh" and b.name == "x" for b in boards)
    assert boards[0].settings_digest() != boards[1].settings_digest()  # each board caches its own readings


# --------------------------------------------------------------------------- a fake board (scheduling only)
class FakeBoard:
    """Answers like a BoardWorker with a canned profile of ``ms`` after ``delay_s``; ``alive`` False = lost."""

    def __init__(self, ms: float, delay_s: float = 0.05) -> None:
        self.ms, self.delay_s, self.alive = ms, delay_s, True
        self.runs = 0
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def run(self, script: str, args: list[str], files: list[tuple[str, str, bytes | None]], timeout_s: float) -> dict[str, Any]:
        if not self.alive:
            return {"ok": False, "error": "RemoteError", "message": "lost connection (fake)"}
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(self.delay_s)
        with self._lock:
            self.active -= 1
            self.runs += 1
        if not self.alive:
            return {"ok": False, "error": "RemoteError", "message": "lost connection mid-profile (fake)"}
        _, sha, data = files[0]
        m = self.ms
        result = {
            "ok": True, "latency": {"median_ms": m, "p10_ms": m, "p90_ms": m, "mean_ms": m, "std_ms": 0.0, "cv": 0.0,
                                    "n": 50, "min_ms": m, "max_ms": m},
            "peak_memory_bytes": 1, "model_bytes": len(data or b""), "model_sha256": sha, "load_ms": 1.0,
            "runtime": "onnxruntime", "runtime_version": "fake", "device": "fake", "threads": 1,
            "timestamp": "2026-12-06T00:00:00Z", "profiler_version": get_adapter("onnxruntime").profiler_version(),
        }
        return {"ok": True, "stdout": json.dumps(result)}

    def ping(self, timeout_s: float) -> dict[str, Any]:
        return {"ok": True} if self.alive else {"ok": False, "error": "RemoteError", "message": "refused (fake)"}

    def where(self) -> dict[str, Any]:
        return {"host": "fake", "pid": 0, "ray_node": ""}

    def close(self) -> None:
        pass


class FakeHandle:
    def __init__(self, board: FakeBoard) -> None:
        self.board = board
        self.threads = ThreadPoolExecutor(max_workers=1)  # an actor runs one call at a time

    def call(self, method: str, *args: Any) -> Future[Any]:
        return self.threads.submit(getattr(self.board, method), *args)

    def kill(self) -> None:
        self.threads.shutdown(wait=False)


class FakeBackend:
    def __init__(self, boards: dict[str, FakeBoard]) -> None:
        self.boards = boards

    def spawn(self, target: Target, trust_new_host: bool) -> FakeHandle:
        return FakeHandle(self.boards[target.connection.board])

    def shutdown(self) -> None:
        pass


def _target(tolerance: float = 0.05) -> Target:
    return parse_target({"runtime": "onnxruntime", "board_tolerance": tolerance,
                         "measure": {"max_cv": 0.5, "max_rounds": 1}}, "t", "farm")


def _pool(tmp_path: Path, speeds: list[float], **kwargs: Any) -> tuple[DevicePool, dict[str, FakeBoard], Path]:
    target = _target(kwargs.pop("tolerance", 0.05))
    boards = board_targets(target, [{"host": f"b{i}"} for i in range(len(speeds))])
    fakes = {b.connection.board: FakeBoard(ms) for b, ms in zip(boards, speeds, strict=True)}
    pool = DevicePool(boards[0], boards, FakeBackend(fakes), record=tmp_path / "pool.json", baseline_rounds=2,
                      backoff_s=0.1, max_backoff_s=0.2, **kwargs)
    model = write_tiny_onnx(tmp_path / "base.onnx")
    pool.start(model)
    return pool, fakes, model


def _wait_for(cond: Any, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_calibration_drops_a_board_past_the_tolerance_and_scales_the_others(tmp_path: Path) -> None:
    pool, fakes, model = _pool(tmp_path, [1.0, 1.02, 1.30])
    with pool:
        state = json.loads((tmp_path / "pool.json").read_text())
        by = {b["board"]: b for b in state["boards"]}
        assert state["reference"] == "b1:22" and state["reference_ms"] == pytest.approx(1.02)  # the lower median
        assert by["b0:22"]["state"] == "up" and by["b0:22"]["scale"] == pytest.approx(1.0 / 1.02)
        assert by["b2:22"]["state"] == "dropped" and "board_tolerance 5%" in by["b2:22"]["reason"]
        assert [e["event"] for e in state["events"] if e["board"] == "b2:22"] == ["dropped"]
        runs = fakes["b2:22"].runs
        got = [f.result(timeout=30) for f in [pool.submit(model, pool.target) for _ in range(6)]]
        assert {m.board for m in got} == {"b0:22", "b1:22"} and fakes["b2:22"].runs == runs  # never used again
        for m in got:  # every reading on the reference's scale
            assert m.latency.median_ms == pytest.approx(1.02) and m.board_scale == pytest.approx(fakes[m.board].ms / 1.02)
        # the routed calls (baseline, table, judge) stay on the reference board
        assert pool.measure(model, pool.target, force=True).board == "b1:22"


def test_a_lost_board_hands_its_work_on_and_rejoins(tmp_path: Path) -> None:
    pool, fakes, model = _pool(tmp_path, [1.0, 1.0], lost_after_s=5.0)
    with pool:
        for f in fakes.values():
            f.delay_s = 0.2
        first = [pool.submit(model, pool.target) for _ in range(2)]
        time.sleep(0.1)
        fakes["b1:22"].alive = False  # dies mid-profile
        rest = [pool.submit(model, pool.target) for _ in range(4)]
        got = [f.result(timeout=30) for f in first + rest]
        assert len(got) == 6 and all(m.board == "b0:22" for m in got[1:])  # nothing lost, the survivor took it
        assert max(f.max_active for f in fakes.values()) == 1  # a board profiles one model at a time
        state = pool.state()
        assert {b["board"]: b["state"] for b in state["boards"]}["b1:22"] == "down"
        fakes["b1:22"].alive = True
        def events() -> list[str]:  # pool.json is written just after the board is up again
            return [e["event"] for e in json.loads((tmp_path / "pool.json").read_text())["events"] if e["board"] == "b1:22"]

        assert _wait_for(lambda: all(b.state == "up" for b in pool.boards) and events()[-1:] == ["rejoined"])
        assert events()[:2] == ["up", "down"]
        again = [f.result(timeout=30) for f in [pool.submit(model, pool.target) for _ in range(4)]]
        assert {m.board for m in again} == {"b0:22", "b1:22"}


def test_every_board_gone_stops_the_work_waiting(tmp_path: Path) -> None:
    pool, fakes, model = _pool(tmp_path, [1.0, 1.0], lost_after_s=1.0)
    with pool:
        for f in fakes.values():
            f.alive = False
        t0 = time.monotonic()
        with pytest.raises(DevicesLost, match=r"every board of the pool is gone .*b0:22 down.*b1:22 down"):
            pool.submit(model, pool.target).result(timeout=30)
        assert time.monotonic() - t0 < 10


def test_the_cache_serves_any_board_on_the_pool_scale(tmp_path: Path) -> None:
    pool, fakes, model = _pool(tmp_path, [1.0, 1.04])
    cache = MeasurementCache(tmp_path / "cache.sqlite")
    with pool:
        other = pool.boards[1]
        raw = measure(model, other.target_for(pool.target), cache=cache, runner=_Runner(other))
        assert raw.latency.median_ms == pytest.approx(1.04) and raw.board == "b1:22"
        runs = sum(f.runs for f in fakes.values())
        with routed(pool.target.name, pool):  # measure() of the target now goes to the pool
            hit = measure(model, pool.target, cache=cache)
        assert sum(f.runs for f in fakes.values()) == runs  # from the cache, not measured again
        assert hit.board == "b1:22" and hit.latency.median_ms == pytest.approx(1.0)


def _Runner(board: Any) -> Any:
    from hwcompress.profiling.pool import BoardRunner

    return BoardRunner(board)


def test_scaled_divides_every_time() -> None:
    from hwcompress.records import LatencyStats, Measurement, MeasureSettings

    lat = LatencyStats(median_ms=2.0, p10_ms=1.8, p90_ms=2.4, mean_ms=2.1, std_ms=0.2, cv=0.1, n=9, min_ms=1.7,
                       max_ms=3.0, robust_cv=0.05)
    m = Measurement(target="t", model_sha256="a", latency=lat, peak_memory_bytes=5, model_bytes=6, load_ms=1.0,
                    runtime="r", runtime_version="1", device="d", settings=MeasureSettings(), threads=1,
                    timestamp="t", profiler_version="1", per_node_us={"conv": 100.0}, board="b:22")
    s = scaled(m, 2.0)
    assert dataclasses.astuple(s.latency) == (1.0, 0.9, 1.2, 1.05, 0.1, 0.1, 9, 0.85, 1.5, 0.05)
    assert s.per_node_us == {"conv": 50.0} and s.board_scale == 2.0 and s.peak_memory_bytes == 5


# --------------------------------------------------------------------------- the real thing
@pytest.fixture
def two_boards(tmp_path: Path) -> Any:
    from sshd import sshd_available

    if not sshd_available():
        pytest.skip("OpenSSH server (/usr/sbin/sshd) is not installed: apt-get install openssh-server")
    servers = [SshServer(tmp_path / f"board{i}").start() for i in range(2)]
    yield servers
    for s in servers:
        s.stop()


def test_ray_pool_of_two_sshd_boards_one_killed_mid_run(two_boards: list[SshServer], tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from hwcompress.profiling.pool import open_pool

    targets = [dataclasses.replace(parse_target(tomllib.loads(s.target_toml("onnxruntime")), "t", "loop"),
                                   board_tolerance=0.9) for s in two_boards]
    # the boards' calibration model: wide enough that its time is the convolution's, not the scheduler's
    # jitter (two boards on one loaded 2-core machine; CI dropped board 1 at its rejoin, calibrated on one
    # round of an 8-channel model, 0.03 ms)
    model = write_tiny_onnx(tmp_path / "m.onnx", channels=64)
    variants = [write_tiny_onnx(tmp_path / f"v{i}.onnx", channels=4 + i) for i in range(6)]
    events: list[str] = []
    with open_pool(targets[0], targets, model, record=tmp_path / "pool.json", backoff_s=0.5, max_backoff_s=1.0,
                   lost_after_s=20.0, baseline_rounds=3, on_event=events.append) as pool:
        assert [b.state for b in pool.boards] == ["up", "up"]
        futures = [pool.submit(v, targets[0]) for v in variants]
        deadline = time.monotonic() + 60
        while pool.boards[1].measured == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        two_boards[1].kill()  # board 1 vanishes mid-run: its work goes to board 0
        assert not all(f.done() for f in futures)
        got = [f.result(timeout=120) for f in futures]
        assert [m.model_sha256 for m in got] == [sha256_file(v) for v in variants]
        boards = {m.board for m in got}
        assert boards <= {t.connection.board for t in targets} and targets[0].connection.board in boards
        assert pool.boards[1].state == "down" and any("down" in e for e in events)
        two_boards[1].start()  # back on the same port: it calibrates again and rejoins
        assert _wait_for(lambda: pool.boards[1].state == "up", 60.0), pool.state()
        assert any("rejoined" in e for e in events)
        again = [f.result(timeout=120) for f in [pool.submit(v, targets[0]) for v in variants[:2]]]
        assert all(m.board for m in again)
        # open_pool routes the target's measurements (a search's baseline, table, verdicts) to the reference
        assert measure(model, targets[0], force=True).board == pool.state()["reference"]


def test_board_worker_asks_again_for_files_it_no_longer_has(sshd: SshServer, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's side, in this process against a real sshd: files by sha256, sent once, evicted past a bound."""
    import hwcompress.profiling.pool as pool_module
    from hwcompress.profiling.pool import BoardWorker

    monkeypatch.setattr(pool_module, "STORE_FILES", 2)
    target = parse_target(tomllib.loads(sshd.target_toml("onnxruntime")), "t", "loop")
    adapter = get_adapter("onnxruntime")
    worker = BoardWorker(target.connection.to_dict())
    try:
        models = [write_tiny_onnx(tmp_path / f"m{i}.onnx", channels=4 + i) for i in range(3)]
        for m in models:
            sha = sha256_file(m)
            args = adapter.args(m, target, per_node=False)
            assert worker.run(adapter.script, args, [(str(m), sha, None)], 60.0) == {"ok": False, "missing": [sha]}
            reply = worker.run(adapter.script, args, [(str(m), sha, m.read_bytes())], 60.0)
            assert reply["ok"] and json.loads(reply["stdout"].strip().splitlines()[-1])["model_sha256"] == sha
            assert reply["seconds"] > 0
            again = worker.run(adapter.script, args, [(str(m), sha, None)], 60.0)  # known now: no bytes needed
            assert again["ok"]
        assert len(list(worker.store.iterdir())) == 2  # the oldest model file was let go
        first = models[0]
        gone = worker.run(adapter.script, adapter.args(first, target, per_node=False),
                          [(str(first), sha256_file(first), None)], 60.0)
        assert gone == {"ok": False, "missing": [sha256_file(first)]}
        assert worker.stats()["uploads"] >= 3
    finally:
        worker.close()
    assert not worker.store.exists()
