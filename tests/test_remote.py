"""The SSH runner against a real OpenSSH server on 127.0.0.1 (this machine plays the board)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from pathlib import Path

import pytest
from sshd import SshServer, keygen
from tiny_models import write_tiny_onnx, write_tiny_tflite

from hwcompress.device_check import check_device, format_report
from hwcompress.errors import HostKeyError, ModelError, ProfilerError, ProfilerTimeout, RemoteError
from hwcompress.profiling.adapters import profilers_dir
from hwcompress.profiling.measure import measure
from hwcompress.profiling.remote import SshRunner, close_all, runner_for, ssh_runner
from hwcompress.profiling.runner import LocalRunner
from hwcompress.records import Target
from hwcompress.targets import load_target, parse_target, with_connection

pytest.importorskip("paramiko")
pytest.importorskip("ai_edge_litert")


def target_for(server: SshServer, runtime: str = "tflite", **conn: object) -> Target:
    return parse_target(tomllib.loads(server.target_toml(runtime, **conn)), "test", f"loop-{runtime}")


@pytest.fixture(scope="module")
def tflite_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_tflite(tmp_path_factory.mktemp("m") / "model.tflite")


@pytest.fixture
def hang_dir(tmp_path: Path) -> Path:
    """A profilers folder with test-only scripts: one that hangs (ignoring SIGTERM, with a child)
    and one that sleeps, then prints a result."""
    folder = tmp_path / "profilers"
    folder.mkdir()
    shutil.copy(profilers_dir() / "benchcore.py", folder)
    (folder / "hang.py").write_text(
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', sys.argv[1]])\n"
        "print('hanging', file=sys.stderr, flush=True)\n"
        "time.sleep(300)\n"
    )
    (folder / "slow.py").write_text("import sys, time\ntime.sleep(float(sys.argv[1]))\nprint('{\"ok\": true}')\n")
    return folder


def _alive_with(token: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if token.encode() in fh.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


# --------------------------------------------------------------------------- measurements
def test_remote_tflite_matches_local(sshd: SshServer, tflite_model: Path) -> None:
    target = target_for(sshd)
    with SshRunner(target.connection) as runner:
        remote = measure(tflite_model, target, runner=runner)
        assert runner.stats.uploads == 3  # tflite_bench.py, benchcore.py, the model
        session = Path(runner.session_dir)
        assert session.is_dir() and (session / "tflite_bench.py").is_file()
        models = list(Path(runner.models_dir).iterdir())
        assert [p.name for p in models] == [f"{remote.model_sha256}.tflite"]
    assert not session.exists()  # the session folder is removed at close
    local = measure(tflite_model, target, runner=LocalRunner())
    assert remote.model_sha256 == local.model_sha256 and remote.device == local.device
    assert remote.runtime == local.runtime == "tflite" and remote.profiler_version == local.profiler_version
    assert 0.1 < remote.latency.median_ms / local.latency.median_ms < 10
    # a second session finds the model already on the device: only the scripts are uploaded
    with SshRunner(target.connection) as again:
        measure(tflite_model, target, runner=again)
        assert again.stats.uploads == 2 and again.stats.upload_skips == 1


def test_remote_onnxruntime(sshd: SshServer, tmp_path: Path) -> None:
    model = write_tiny_onnx(tmp_path / "tiny.onnx")
    target = target_for(sshd, "onnxruntime")
    runner = runner_for(target)
    assert runner is runner_for(target)  # one pooled connection per device
    first = measure(model, target, runner=runner)
    second = measure(model, target, runner=runner)
    assert first.runtime == "onnxruntime" and first.latency.n >= 20
    assert isinstance(runner, SshRunner) and runner.stats.connects == 1 and runner.stats.uploads == 3
    assert second.model_sha256 == first.model_sha256
    session = Path(runner.session_dir)
    close_all()
    assert not session.exists()


def test_runner_for_local_and_overrides(sshd: SshServer) -> None:
    assert isinstance(runner_for(load_target("x86-cpu")), LocalRunner)
    pi = with_connection(load_target("raspberry-pi-4"), host="127.0.0.1", port=sshd.port, user=sshd.user,
                         key=str(sshd.client_key))
    runner = runner_for(pi)
    assert isinstance(runner, SshRunner) and runner.address == f"{sshd.user}@127.0.0.1:{sshd.port}"
    close_all()


def test_model_errors_pass_through(sshd: SshServer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    target = target_for(sshd)
    with SshRunner(target.connection) as runner, pytest.raises(ModelError, match=r"bad.tflite: cannot load model"):
        measure(bad, target, runner=runner)


def test_hostile_file_and_folder_names_are_literal(sshd: SshServer, tmp_path: Path) -> None:
    marker = Path("/tmp") / f"hwc-pwned-{uuid.uuid4().hex}"
    name = f"we ird 'q\" $(touch {marker}) `touch {marker}`; touch {marker}.tflite"
    model = write_tiny_tflite(tmp_path / name)
    workdir = str(sshd.root / f"w o'rk $(touch {marker})")
    target = target_for(sshd, workdir=workdir)
    with SshRunner(target.connection) as runner:
        m = measure(model, target, runner=runner)
        assert Path(runner.models_dir).parent == Path(workdir) and Path(runner.models_dir).is_dir()
    assert m.latency.n >= 20
    assert not list(marker.parent.glob(marker.name + "*"))


# --------------------------------------------------------------------------- host keys and keys
def test_unknown_host_refused_then_trusted(sshd: SshServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kh = tmp_path / "ssh" / "known_hosts"
    conn = sshd.connection(known_hosts=str(kh))
    with pytest.raises(HostKeyError, match=r"unknown host key.*--trust-new-host") as err:
        SshRunner(conn).execute("true")
    assert "\n" not in str(err.value) and "SHA256:" in str(err.value)
    assert not kh.exists()
    with caplog.at_level(logging.WARNING, "hwcompress.profiling.remote"), SshRunner(conn, trust_new_host=True) as r:
        assert r.execute("echo hi").stdout == "hi\n"
    assert "trusted new host" in caplog.text
    assert kh.read_text().split() == sshd.known_hosts_line.split()
    with SshRunner(conn) as r:  # now known: no flag needed
        assert r.execute("true").returncode == 0


def test_changed_host_key_always_refused(sshd: SshServer, tmp_path: Path) -> None:
    other = keygen(tmp_path / "other_host", "other")
    kind, blob = Path(f"{other}.pub").read_text().split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    for trust in (False, True):
        with pytest.raises(HostKeyError, match=r"CHANGED.*ssh-keygen -R"):
            SshRunner(sshd.connection(known_hosts=str(kh)), trust_new_host=trust).execute("true")
    assert kh.read_text() == f"[127.0.0.1]:{sshd.port} {kind} {blob}\n"


def test_wrong_or_missing_key_refused(sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    wrong = keygen(tmp_path / "wrong", "wrong")
    with pytest.raises(RemoteError, match=r"refused key .*ssh-copy-id") as err:
        SshRunner(sshd.connection(key=str(wrong))).execute("true")
    assert not isinstance(err.value, HostKeyError)
    with pytest.raises(RemoteError, match="does not exist; pass --key"):
        SshRunner(sshd.connection(key=str(tmp_path / "nope"))).execute("true")


def test_nothing_listening_is_a_clear_error(sshd: SshServer) -> None:
    from sshd import free_port

    port = free_port()
    t0 = time.perf_counter()
    with pytest.raises(RemoteError, match=f"cannot connect to .*:{port}"):
        SshRunner(sshd.connection(port=port)).execute("true")
    assert time.perf_counter() - t0 < 5  # no back-off before the first connection ever worked


# --------------------------------------------------------------------------- failures
def test_hanging_profiler_times_out_and_is_killed(sshd: SshServer, hang_dir: Path) -> None:
    token = f"hwc-hang-{uuid.uuid4().hex}"
    with SshRunner(sshd.connection(), profilers_dir=hang_dir) as runner:
        t0 = time.perf_counter()
        with pytest.raises(ProfilerTimeout, match=r"hang.py .*ran past its 1 s limit.*stderr: hanging"):
            runner.run("hang.py", [token], [], timeout_s=1)
        assert time.perf_counter() - t0 < 15
        deadline = time.monotonic() + 5
        while _alive_with(token) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive_with(token)  # the script and its child are gone
        assert runner.execute("echo still-usable").stdout == "still-usable\n"


def test_remote_python_missing(sshd: SshServer, tflite_model: Path) -> None:
    target = target_for(sshd, python="/nonexistent/python3")
    with SshRunner(target.connection) as runner, pytest.raises(ProfilerError, match=r"set connection.python"):
        measure(tflite_model, target, runner=runner)


def test_sshd_killed_midway_then_reconnects(fresh_sshd: SshServer, tflite_model: Path, hang_dir: Path) -> None:
    target = target_for(fresh_sshd)
    runner = SshRunner(target.connection, profilers_dir=hang_dir, max_retries=2, backoff_s=0.1)
    runner.run("slow.py", ["0"], [], timeout_s=30)
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            runner.run("slow.py", ["20"], [], timeout_s=30)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=slow)
    worker.start()
    time.sleep(1.0)
    fresh_sshd.kill()
    worker.join(timeout=20)
    assert not worker.is_alive()
    (err,) = errors
    assert isinstance(err, RemoteError) and "lost connection to" in str(err) and "slow.py" in str(err)
    assert "\n" not in str(err) and runner.stats.retries == 2
    fresh_sshd.start()  # same port, same host key
    runner._profilers_dir = None  # back to the shipped profilers
    m = measure(tflite_model, target, runner=runner)
    assert m.latency.n >= 20 and runner.stats.connects == 2
    runner.close()


# --------------------------------------------------------------------------- device check
def test_check_device_ready(sshd: SshServer) -> None:
    report = check_device(target_for(sshd))
    assert report.ok, report.problems
    assert report.runtime_module == "ai_edge_litert" and report.runtime_version
    assert report.python_version == ".".join(map(str, sys.version_info[:3]))
    assert report.cores >= 1 and report.free_disk_bytes > 0 and report.cpu
    text = format_report(report)
    assert "status" in text and "ready" in text and f"127.0.0.1:{sshd.port}" in text
    close_all()


def test_check_device_missing_runtime_says_how_to_install(sshd: SshServer) -> None:
    if shutil.which("nvidia-smi") or subprocess.run([sys.executable, "-c", "import tensorrt"],
                                                    capture_output=True).returncode == 0:
        pytest.skip("TensorRT is installed here")
    report = check_device(target_for(sshd, "tensorrt"))
    assert not report.ok
    assert any("tensorrt is not importable" in p for p in report.problems)
    assert any("JetPack" in f for f in report.fixes)
    assert "NOT READY" in format_report(report) and "fix:" in format_report(report)
    missing = check_device(target_for(sshd, python="/nonexistent/python3"))
    assert not missing.ok and "was not found" in missing.problems[0]
    close_all()


def test_import_does_not_load_paramiko() -> None:
    code = ("import sys, hwcompress.profiling.remote, hwcompress.device_check, hwcompress.profiling.runtimes; "
            "print('paramiko' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert res.stdout.strip() == "False"


def test_pool_replaces_runner_when_connection_changes(sshd: SshServer) -> None:
    a = ssh_runner(sshd.connection())
    b = ssh_runner(sshd.connection(python="python3"))
    assert a is not b and ssh_runner(sshd.connection(python="python3")) is b
    close_all()


def test_corrupt_upload_is_detected(sshd: SshServer, tflite_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hwcompress.profiling.remote as remote

    real = remote.sha256_file
    monkeypatch.setattr(remote, "sha256_file", lambda p: "0" * 64 if Path(p).suffix == ".tflite" else real(p))
    target = target_for(sshd)
    with SshRunner(target.connection) as runner:
        with pytest.raises(RemoteError, match="arrived corrupt"):
            measure(tflite_model, target, runner=runner)
        assert not [p for p in Path(runner.models_dir).iterdir() if p.name.startswith(("0000", ".tmp-"))]


# --------------------------------------------------------------------------- end to end (slow)
FACTORY = """
from hwcompress.zoo.models import VGGSmall


def tiny():
    return VGGSmall(widths=(8, 16, 32))
"""


def test_search_through_loopback_sshd(sshd: SshServer, tmp_path: Path) -> None:
    if importlib.util.find_spec("litert_torch") is None:
        pytest.skip("litert-torch is not installed: pip install 'hwcompress[tflite]'")
    import numpy as np
    import torch

    (tmp_path / "tinynet.py").write_text(FACTORY)
    sys.path.insert(0, str(tmp_path))
    try:
        from tinynet import tiny
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(0)
    torch.save(tiny().state_dict(), tmp_path / "tiny.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.integers(0, 255, (600, 28, 28), dtype=np.uint8),
             y=np.arange(600) % 10)
    # A user target file overrides the shipped raspberry-pi-4: remote Python, known_hosts, workdir.
    user_targets = tmp_path / "targets"
    user_targets.mkdir()
    workdir = tmp_path / "pi-work"
    (user_targets / "raspberry-pi-4.toml").write_text(
        sshd.target_toml("tflite", workdir=str(workdir)).replace('host = "127.0.0.1"', 'host = "raspberrypi.local"'))
    env = {**os.environ, "HWCOMPRESS_TARGETS": str(user_targets), "HWCOMPRESS_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "hwcompress", "search", "--target", "raspberry-pi-4", "--host", "127.0.0.1",
           "--port", str(sshd.port), "--user", sshd.user, "--key", str(sshd.client_key),
           "--model", f"{tmp_path / 'tinynet.py'}:tiny", "--checkpoint", str(tmp_path / "tiny.pt"),
           "--data", str(tmp_path / "data.npz"), "--episodes", "2", "--quant-episodes", "1", "--warmup", "1",
           "--finetune-epochs", "0", "--val-images", "100", "--out", str(out), "--run-dir", str(tmp_path / "run"),
           "--allow-over-budget"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    met = json.loads((out / "manifest.json").read_text())["budget_met"] if (out / "manifest.json").is_file() else None
    assert met is not None and res.returncode == (0 if met else 3), res.stderr[-2000:]  # exit code = final verdict
    assert list(out.glob("*.tflite"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"]["name"] == "raspberry-pi-4"
    assert manifest["target"]["connection"]["port"] == sshd.port
    remote_models = list((workdir / "models").glob("*.tflite"))
    assert len(remote_models) >= 2  # the baseline and candidates were measured through sshd


def test_check_device_local_targets() -> None:
    ready = check_device(load_target("x86-cpu"))
    assert ready.ok and ready.connection == "local" and ready.runtime_module == "onnxruntime"
    if not HAS_GPU_STACK:
        gpu = check_device(load_target("cuda-gpu"))
        assert not gpu.ok and any("tensorrt" in p for p in gpu.problems)
        assert any("libcudart" in p or "no CUDA device" in p for p in gpu.problems)


HAS_GPU_STACK = importlib.util.find_spec("tensorrt") is not None


def test_host_deadline_kills_the_remote_process_group(sshd: SshServer) -> None:
    """The host-side deadline (for when the device's own `timeout` does not fire) kills the group."""
    import shlex

    token = f"hwc-deadline-{uuid.uuid4().hex}"
    with SshRunner(sshd.connection()) as runner:
        runner._ensure()
        cmd = (f"echo hwcompress-pid $$ >&2; exec {shlex.quote(sys.executable)} -c "
               f"'import time; time.sleep(60)' {token}")
        with pytest.raises(ProfilerTimeout, match="ran past 1 s"):
            runner._exec(cmd, 1.0, pid_mark=True)
        deadline = time.monotonic() + 5
        while _alive_with(token) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive_with(token)
