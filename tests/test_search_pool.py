"""A search over a pool of boards through the CLI: bad pool input refused up front; a real search on a
local Ray instance over two real sshd "boards" on loopback, one killed mid-search (it comes back and
rejoins), then every board killed (the search stops with the resume command; resume finishes it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from killed_search import kill_when_logged, log_lines
from sshd import SshServer, sshd_available
from test_cli_errors import assert_one_line_error, run_cli


# --------------------------------------------------------------------------- refused before any slow work
@pytest.mark.parametrize(("args", "pattern"), [
    (("--hosts", "pi1,,pi2"), r"--hosts 'pi1,,pi2': an empty entry"),
    (("--hosts", "pi1:99999,pi2"), r"port '99999'; a port is 1-65535"),
    (("--hosts", "pi1,pi2", "--host", "pi3"), r"--host names one device and --hosts / --pool a pool"),
    (("--hosts", "pi1", "--pool", "p.toml"), r"--hosts and --pool both list boards"),
    (("--ray-address", "auto"), r"--ray-address needs a pool of boards"),
    (("--hosts", "pi1,pi2", "--board-wait", "-1"), r"--board-wait must be >= 0"),
])
def test_bad_pool_options(args: tuple[str, ...], pattern: str, tmp_path: Path) -> None:
    res = run_cli("search", *args, "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "out"))
    assert_one_line_error(res, pattern)
    assert not (tmp_path / "run").exists()


def test_bad_pool_file(tmp_path: Path) -> None:
    pool = tmp_path / "pool.toml"
    pool.write_text('[[board]]\nhost = "pi1"\nusr = "pi"\n')
    res = run_cli("search", "--pool", str(pool), "--run-dir", str(tmp_path / "run"))
    assert_one_line_error(res, r"board 1: unknown key\(s\) usr; a board may set host, port, user")
    res = run_cli("search", "--pool", str(tmp_path / "none.json"), "--run-dir", str(tmp_path / "run"))
    assert_one_line_error(res, r"--pool .*none\.json: no such file")


def test_an_unreachable_board_is_refused_before_the_data_is_read(tmp_path: Path) -> None:
    from sshd import free_port

    ports = [free_port(), free_port()]
    t0 = time.monotonic()
    res = run_cli("search", "--hosts", ",".join(f"127.0.0.1:{p}" for p in ports), "--data", str(tmp_path / "no-data"),
                  "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "out"))
    assert_one_line_error(res, rf"board 127\.0\.0\.1:{ports[0]} of the pool: .*cannot connect")
    assert time.monotonic() - t0 < 60


# --------------------------------------------------------------------------- real searches over two boards
def _boards(tmp: Path) -> tuple[list[SshServer], Path, Path]:
    if not sshd_available():
        pytest.skip("OpenSSH server (/usr/sbin/sshd) is not installed: apt-get install openssh-server")
    pytest.importorskip("ray")
    servers = [SshServer(tmp / f"board{i}").start() for i in range(2)]
    # a loose tolerance: both "boards" share this machine's two cores, so a baseline taken while the other
    # board profiles reads slower
    toml = servers[0].target_toml("onnxruntime").replace("channel_multiple = 1", "channel_multiple = 8\n"
                                                                                 "board_tolerance = 0.5")
    target = tmp / "loop.toml"
    target.write_text(toml)
    pool = tmp / "pool.toml"
    pool.write_text("".join(f'[[board]]\nhost = "127.0.0.1"\nport = {s.port}\nkey = "{s.client_key}"\n'
                            f'known_hosts = "{s.known_hosts}"\nworkdir = "{s.root}/work"\n\n' for s in servers))
    return servers, target, pool


def _args(inputs: dict[str, Path], tmp: Path, target: Path, pool: Path, run: str) -> list[str]:
    return [sys.executable, "-m", "hwcompress", "search", "--target", str(target), "--pool", str(pool),
            "--model", "resnet-20", "--checkpoint", str(inputs["checkpoint"]), "--data", str(inputs["data"]),
            "--stages", "prune", "--episodes", "8", "--warmup", "2", "--finetune-epochs", "0", "--val-images", "200",
            "--test-images", "300", "--out", str(tmp / f"{run}-artifact"), "--run-dir", str(tmp / run),
            "--cache", str(tmp / "cache.sqlite"), "--allow-over-budget", "--board-wait", "5"]


def _when_measured(log: Path, n: int, proc: subprocess.Popen[str], act: Any) -> threading.Thread:
    """Run ``act`` once ``n`` candidates are in ``log`` (bounded: 15 minutes, or the search ends)."""
    def wait() -> None:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and proc.poll() is None and len(log_lines(log)) < n:
            time.sleep(0.1)
        if proc.poll() is None:
            act()

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    return t


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "HWCOMPRESS_CACHE": str(tmp / "hw-cache")}


@pytest.mark.slow
def test_a_board_killed_mid_search_hands_on_its_work_and_rejoins(search_inputs: dict[str, Path], tmp_path: Path) -> None:
    servers, target, pool = _boards(tmp_path)
    try:
        proc = subprocess.Popen(_args(search_inputs, tmp_path, target, pool, "run"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=_env(tmp_path))

        def bounce() -> None:
            servers[1].kill()
            time.sleep(3)
            servers[1].start()

        killer = _when_measured(tmp_path / "run" / "search.jsonl", 2, proc, bounce)
        out, err = proc.communicate(timeout=1200)
        killer.join(timeout=30)
    finally:
        for s in servers:
            s.stop()
    manifest = json.loads((tmp_path / "run-artifact" / "manifest.json").read_text())
    assert proc.returncode == (0 if manifest["budget_met"] else 3), err[-3000:]
    lines = log_lines(tmp_path / "run" / "search.jsonl")
    names = {f"127.0.0.1:{s.port}" for s in servers}
    measured = [ln for ln in lines if not ln["error"]]
    assert len(measured) == len(lines) >= 4  # no candidate failed or was lost to the board that went away
    assert {ln["measurement"]["board"] for ln in measured} == names  # both boards measured candidates
    for ln in measured:
        assert ln["measurement"]["board_scale"] > 0
    episodes = [ln["episode"] for ln in lines]
    assert episodes == sorted(episodes) and len(set(episodes)) == len(episodes)
    state = json.loads((tmp_path / "run" / "pool.json").read_text())
    killed = f"127.0.0.1:{servers[1].port}"
    events = [e["event"] for e in state["events"] if e["board"] == killed]
    assert "down" in events and events[-1] == "rejoined", state
    assert all(b["state"] == "up" for b in state["boards"])
    assert f"board {killed} down" in err and f"board {killed} rejoined" in err
    assert "boards (reference" in out


@pytest.mark.slow
def test_every_board_gone_stops_the_search_with_its_resume_command(search_inputs: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    servers, target, pool = _boards(tmp_path)
    run = tmp_path / "gone"
    try:
        proc = subprocess.Popen(_args(search_inputs, tmp_path, target, pool, "gone"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
        killer = _when_measured(run / "search.jsonl", 2, proc, lambda: [s.kill() for s in servers])
        _, err = proc.communicate(timeout=1200)
        killer.join(timeout=30)
        assert proc.returncode == 2, err[-3000:]
        last = [ln for ln in err.splitlines() if ln.strip()][-1]
        assert last.startswith("hwcompress: error: every board of the pool is gone (")
        assert last.endswith(f"continue it with `hwcompress search --resume {run}`")
        assert "Traceback" not in err
        before = log_lines(run / "search.jsonl")
        assert len(before) >= 2
        for s in servers:
            s.start()
        res = subprocess.run([sys.executable, "-m", "hwcompress", "search", "--resume", str(run), "--cache",
                              str(tmp_path / "cache.sqlite"), "--allow-over-budget"], capture_output=True, text=True,
                             timeout=1200, env=_env(tmp_path))
    finally:
        for s in servers:
            s.stop()
    manifest = json.loads((tmp_path / "gone-artifact" / "manifest.json").read_text())
    assert res.returncode == (0 if manifest["budget_met"] else 3), res.stderr[-3000:]
    after = log_lines(run / "search.jsonl")
    assert after[: len(before)] == before  # every candidate measured before the boards went is kept, none again
    digests = [json.dumps(ln["policy"], sort_keys=True) for ln in after]
    assert len(digests) == len(set(digests))
    progress = json.loads((run / "ckpt" / "prune-state.json").read_text())["progress"]
    assert progress["episodes"] >= 8 and progress["finished"]  # the stage ran its episodes to the end


# --------------------------------------------------------------------------- one search, several targets
@pytest.mark.parametrize(("args", "pattern"), [
    (("--target", "x86-cpu", "--target", "x86-cpu"), r"a target is named twice"),
    (("--target", "x86-cpu", "--target", "raspberry-pi-4", "--hosts", "pi1,pi2"),
     r"several --target options and a pool of boards"),
    (("--target", "x86-cpu", "--target", "raspberry-pi-4", "--host", "pi1"), r"set each device in its target file"),
])
def test_bad_multi_target_options(args: tuple[str, ...], pattern: str, tmp_path: Path) -> None:
    res = run_cli("search", *args, "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "out"))
    assert_one_line_error(res, pattern)


@pytest.mark.slow
def test_one_search_two_targets(search_inputs: dict[str, Path], tmp_path: Path) -> None:
    if not sshd_available():
        pytest.skip("OpenSSH server (/usr/sbin/sshd) is not installed: apt-get install openssh-server")
    server = SshServer(tmp_path / "board").start()
    try:
        (tmp_path / "loop.toml").write_text(server.target_toml("onnxruntime"))
        args = [sys.executable, "-m", "hwcompress", "search", "--target", "x86-cpu", "--target",
                str(tmp_path / "loop.toml"), "--model", "resnet-20", "--checkpoint", str(search_inputs["checkpoint"]),
                "--data", str(search_inputs["data"]), "--episodes", "4", "--quant-episodes", "2", "--warmup", "2",
                "--finetune-epochs", "0", "--val-images", "200", "--test-images", "300", "--out", str(tmp_path / "out"),
                "--run-dir", str(tmp_path / "run"), "--cache", str(tmp_path / "cache.sqlite"), "--allow-over-budget"]
        res = subprocess.run(args, capture_output=True, text=True, timeout=2400, env=_env(tmp_path))
    finally:
        server.stop()
    out, run = tmp_path / "out", tmp_path / "run"
    met = {}
    for key in ("x86-cpu", "loop"):
        manifest = json.loads((out / key / "manifest.json").read_text())
        met[key] = manifest["budget_met"]
        assert manifest["target"]["name"] == key
    assert res.returncode == (0 if all(met.values()) else 3), res.stderr[-3000:]
    # stage 1 was shared: the lead's log holds every candidate measured on both devices, scored once
    lead = log_lines(run / "targets" / "x86-cpu" / "search.jsonl")
    prune = [ln for ln in lead if ln["stage"] == "prune" and not ln["error"]]
    assert prune and all(ln["measurement"]["board"] == "local" for ln in prune)
    for ln in prune:
        other = ln["targets"]["loop"]
        assert other["measurement"]["board"] == f"127.0.0.1:{server.port}" and Path(other["file"]).is_file()
    assert not [ln for ln in log_lines(run / "targets" / "loop" / "search.jsonl") if ln["stage"] == "prune"]
    # each target picked its own stage-1 winner, judged on its own device, among the shared candidates
    s1 = json.loads((run / "targets" / "loop" / "stage1.json").read_text())
    assert s1["region"] == "shared with x86-cpu" and s1["judged"]
    assert {json.dumps(s1["policy"]["keep"], sort_keys=True)} <= {json.dumps(ln["policy"]["keep"], sort_keys=True)
                                                                    for ln in prune}
    # stage 2 per target, then one artifact per target and the report with a Pareto plot per device
    assert (run / "targets" / "loop" / "stage2.json").is_file()
    page = (out / "report.html").read_text()
    assert "pareto-x86-cpu.png" in page and "pareto-loop.png" in page
    assert (out / "pareto-x86-cpu.png").stat().st_size > 1000 and (out / "pareto-loop.png").stat().st_size > 1000
    assert "report of every target, side by side" in res.stdout


@pytest.mark.slow
def test_two_targets_resume_after_sigkill(search_inputs: dict[str, Path], tmp_path: Path) -> None:
    """A two-target search killed in its shared stage 1 resumes: nothing measured before the kill is
    measured again, on either device, and every target gets its artifact."""
    if not sshd_available():
        pytest.skip("OpenSSH server (/usr/sbin/sshd) is not installed: apt-get install openssh-server")
    server = SshServer(tmp_path / "board").start()
    run, out = tmp_path / "run", tmp_path / "out"
    try:
        (tmp_path / "loop.toml").write_text(server.target_toml("onnxruntime"))
        args = [sys.executable, "-m", "hwcompress", "search", "--target", "x86-cpu", "--target",
                str(tmp_path / "loop.toml"), "--model", "resnet-20", "--checkpoint", str(search_inputs["checkpoint"]),
                "--data", str(search_inputs["data"]), "--stages", "prune", "--episodes", "6", "--warmup", "2",
                "--latency-budget", "0.8x",  # well within reach: stage 1 plays all its episodes
                "--finetune-epochs", "0", "--val-images", "200", "--test-images", "300", "--out", str(out),
                "--run-dir", str(run), "--cache", str(tmp_path / "cache.sqlite"), "--allow-over-budget"]
        log = run / "targets" / "x86-cpu" / "search.jsonl"
        before = kill_when_logged(args, log, 3, _env(tmp_path), tmp_path / "first.err")
        res = subprocess.run([sys.executable, "-m", "hwcompress", "search", "--resume", str(run),
                              "--cache", str(tmp_path / "cache.sqlite"), "--allow-over-budget"],
                             capture_output=True, text=True, timeout=2400, env=_env(tmp_path))
    finally:
        server.stop()
    met = {key: json.loads((out / key / "manifest.json").read_text())["budget_met"] for key in ("x86-cpu", "loop")}
    assert res.returncode == (0 if all(met.values()) else 3), res.stderr[-3000:]
    after = log_lines(log)
    assert after[: len(before)] == before  # every candidate measured before the kill kept, on both devices
    prune = [ln for ln in after if ln["stage"] == "prune" and not ln["error"]]
    files = [ln["targets"]["loop"]["file"] for ln in prune]
    assert len(set(files)) == len(files)  # and none measured twice on the second device
    episodes = [ln["episode"] for ln in prune]
    assert episodes == sorted(episodes) and len(set(episodes)) == len(episodes)
    assert (out / "report.html").is_file()
