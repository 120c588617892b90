"""Issue 19: a search checks everything it can before the slow work, and its exit code is honest.

Every refusal goes through the real CLI in a subprocess: exit code, one line on stderr, no
traceback, and nothing written (neither --out nor --run-dir appears).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TINY = '''
import torch.nn as nn


def net(in_channels=1, num_classes=10):
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )


def fixed10():
    """A factory without num_classes: always 10 outputs."""
    return net(1, 10)
'''


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    full.pop("HWCOMPRESS_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "hwcompress", *args], capture_output=True, text=True,
                          timeout=timeout, env=full, cwd=cwd)


def one_line(res: subprocess.CompletedProcess[str], code: int, pattern: str, prefix: str = "hwcompress: error: ") -> str:
    assert res.returncode == code, (res.returncode, res.stdout[-2000:], res.stderr[-3000:])
    assert "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith(prefix)]
    assert len(errors) == 1, res.stderr[-3000:]
    assert re.search(pattern, errors[0]), errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, search_inputs: dict[str, Path]) -> dict[str, Path]:
    """The tiny model file, a checkpoint trained for one epoch on real Fashion-MNIST images, and bad data sets."""
    import torch

    root = tmp_path_factory.mktemp("preflight")
    (root / "tiny.py").write_text(TINY)
    with np.load(search_inputs["data"]) as z:
        x, y, x_test, y_test = z["x"], z["y"], z["x_test"], z["y_test"]
    good = root / "good.npz"
    np.savez(good, x=x, y=y, x_test=x_test, y_test=y_test)
    gap = y.copy()
    gap[:5] = 42  # labels 0..9 and 42: not class indices
    np.savez(root / "label42.npz", x=x, y=gap, x_test=x_test, y_test=y_test)
    bad_test = y_test.copy()
    bad_test[:3] = 12  # test labels outside the training classes
    np.savez(root / "test12.npz", x=x, y=y, x_test=x_test, y_test=bad_test)
    twelve = y.copy()
    twelve[:50], twelve[50:100] = 10, 11  # 12 real classes: too many for a 10-output model
    np.savez(root / "twelve.npz", x=x, y=twelve, x_test=x_test, y_test=y_test)

    sys.path.insert(0, str(root))
    try:
        import tiny  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(root))
    from hwcompress.data import load_splits
    from hwcompress.zoo.train import TrainConfig, train_model

    splits = load_splits(good, seed=0, val_size=300, calib_size=64)
    torch.manual_seed(0)
    model = tiny.net()
    train_model(model, splits, TrainConfig(epochs=1, lr=0.05, batch_size=64), progress=False)
    torch.save(model.state_dict(), root / "tiny.pt")
    torch.manual_seed(0)
    torch.save(tiny.net(num_classes=5).state_dict(), root / "five.pt")
    return {"root": root, "model": root / "tiny.py", "ckpt": root / "tiny.pt", "five": root / "five.pt",
            "data": good, "label42": root / "label42.npz", "test12": root / "test12.npz", "twelve": root / "twelve.npz"}


def search_args(inp: dict[str, Path], tmp: Path, *extra: str, model: str = "net", data: Path | None = None,
                ckpt: Path | None = None) -> list[str]:
    return ["search", "--target", "x86-cpu", "--model", f"{inp['model']}:{model}",
            "--checkpoint", str(ckpt or inp["ckpt"]), "--data", str(data or inp["data"]),
            "--cache", str(tmp / "cache.sqlite"), "--run-dir", str(tmp / "run"), *extra]


def nothing_written(tmp: Path, out: Path | None = None) -> None:
    assert not (tmp / "run").exists()
    if out is not None:
        assert not out.exists() or not any(out.iterdir())


def env_for(tmp: Path) -> dict[str, str]:
    return {"HWCOMPRESS_CACHE": str(tmp / "hw-cache")}


# --------------------------------------------------------------------------- --out / --run-dir
def test_out_under_a_file(inputs: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("mine")
    out = tmp_path / "afile" / "art"
    res = run_cli(*search_args(inputs, tmp_path, "--out", str(out)), env=env_for(tmp_path))
    one_line(res, 2, r"--out .*afile is a file")
    nothing_written(tmp_path)
    assert (tmp_path / "afile").read_text() == "mine"


def test_out_in_proc(inputs: dict[str, Path], tmp_path: Path) -> None:
    res = run_cli(*search_args(inputs, tmp_path, "--out", "/proc/sa1out"), env=env_for(tmp_path))
    one_line(res, 2, r"--out /proc/sa1out: /proc is a pseudo file system")
    nothing_written(tmp_path)


def test_out_is_an_existing_artifact_without_force(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "art"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    res = run_cli(*search_args(inputs, tmp_path, "--out", str(out)), env=env_for(tmp_path))
    one_line(res, 2, r"already exists; pass --force")
    nothing_written(tmp_path)
    assert (out / "manifest.json").read_text() == "{}"


def test_force_never_replaces_a_folder_that_is_not_an_artifact(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8")
    res = run_cli(*search_args(inputs, tmp_path, "--out", str(out), "--force"), env=env_for(tmp_path))
    one_line(res, 2, r"holds files but no hwcompress artifact")
    assert (out / "holiday.jpg").read_bytes() == b"\xff\xd8"
    nothing_written(tmp_path)


def test_run_dir_in_proc(inputs: dict[str, Path], tmp_path: Path) -> None:
    args = search_args(inputs, tmp_path, "--out", str(tmp_path / "art"))
    args[args.index("--run-dir") + 1] = "/proc/run"
    one_line(run_cli(*args, env=env_for(tmp_path)), 2, r"--run-dir /proc/run: /proc is a pseudo file system")
    assert not (tmp_path / "art").exists()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to run as nobody")
def test_out_without_permission(inputs: dict[str, Path], tmp_path: Path) -> None:
    """Run as user nobody: a root-owned 0755 folder cannot be written (root would bypass the mode)."""
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="hwc-perm-", dir="/tmp"))
    try:
        for name in ("tiny.py", "tiny.pt", "good.npz"):
            shutil.copy(inputs["root"] / name, shared / name)
        locked = shared / "locked"
        locked.mkdir()
        work = shared / "work"
        work.mkdir()
        os.chmod(shared, 0o755)
        os.chown(work, 65534, 65534)
        for p in shared.iterdir():
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        env = {**os.environ, "HOME": str(work), "HWCOMPRESS_CACHE": str(work / "cache")}
        env.pop("HWCOMPRESS_DEBUG", None)
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "hwcompress",
               "search", "--model", f"{shared / 'tiny.py'}:net", "--checkpoint", str(shared / "tiny.pt"),
               "--data", str(shared / "good.npz"), "--out", str(locked / "art"), "--run-dir", str(work / "run"),
               "--cache", str(work / "c.sqlite")]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=work)
        if "Permission denied" in res.stderr and "python" in res.stderr.lower() and "hwcompress: error" not in res.stderr:
            pytest.skip(f"nobody cannot run this Python: {res.stderr[-300:]}")
        one_line(res, 2, r"cannot write in .*locked \(permission denied\)")
        assert not (work / "run").exists() and not (locked / "art").exists()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


# --------------------------------------------------------------------------- data, model, checkpoint
def test_labels_that_are_not_class_indices(inputs: dict[str, Path], tmp_path: Path) -> None:
    res = run_cli(*search_args(inputs, tmp_path, "--out", str(tmp_path / "art"), data=inputs["label42"]),
                  env=env_for(tmp_path))
    one_line(res, 2, r"training labels are 0\.\.9, 42 \(11 distinct values\).*32 of 0\.\.42 have none")
    nothing_written(tmp_path, tmp_path / "art")


def test_test_labels_outside_the_training_classes(inputs: dict[str, Path], tmp_path: Path) -> None:
    res = run_cli(*search_args(inputs, tmp_path, "--out", str(tmp_path / "art"), data=inputs["test12"]),
                  env=env_for(tmp_path))
    one_line(res, 2, r"test labels go up to 12 but the training labels are 0\.\.9 \(10 classes\)")
    nothing_written(tmp_path, tmp_path / "art")


def test_more_classes_than_the_model_outputs(inputs: dict[str, Path], tmp_path: Path) -> None:
    res = run_cli(*search_args(inputs, tmp_path, "--out", str(tmp_path / "art"), model="fixed10",
                               data=inputs["twelve"]), env=env_for(tmp_path))
    one_line(res, 2, r"labels 0\.\.11 \(12 classes, the largest training label \+ 1\) but the model .*fixed10 outputs 10")
    nothing_written(tmp_path, tmp_path / "art")


def test_checkpoint_of_another_architecture(inputs: dict[str, Path], tmp_path: Path) -> None:
    res = run_cli(*search_args(inputs, tmp_path, "--out", str(tmp_path / "art"), ckpt=inputs["five"]),
                  env=env_for(tmp_path))
    one_line(res, 2, r"does not fit .*\(5, 32\) in the checkpoint but \(10, 32\) in the model")
    nothing_written(tmp_path, tmp_path / "art")


def test_bad_budget_string(inputs: dict[str, Path], tmp_path: Path) -> None:
    res = run_cli(*search_args(inputs, tmp_path, "--out", str(tmp_path / "art"), "--size-budget", "lots"),
                  env=env_for(tmp_path))
    one_line(res, 2, r"--size-budget 'lots' is not a budget")
    nothing_written(tmp_path, tmp_path / "art")


# --------------------------------------------------------------------------- targets
def test_board_without_a_host(inputs: dict[str, Path], tmp_path: Path) -> None:
    args = search_args(inputs, tmp_path, "--out", str(tmp_path / "art"))
    args[args.index("--target") + 1] = "raspberry-pi-4"
    res = run_cli(*args, env=env_for(tmp_path))
    one_line(res, 2, r"target raspberry-pi-4: no device host is set .*pass --host")
    nothing_written(tmp_path, tmp_path / "art")
    assert "absl" not in res.stderr and "torchao" not in res.stderr  # no conversion was started


def test_unreachable_board(inputs: dict[str, Path], tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = search_args(inputs, tmp_path, "--out", str(tmp_path / "art"), "--host", "127.0.0.1", "--port", str(port),
                       "--key", str(tmp_path / "nokey"))
    args[args.index("--target") + 1] = "raspberry-pi-4"
    one_line(run_cli(*args, env=env_for(tmp_path)), 2, r"(?i)key|connect")
    nothing_written(tmp_path, tmp_path / "art")


def test_board_with_an_unknown_host_key(inputs: dict[str, Path], tmp_path: Path, sshd: object) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    args = search_args(inputs, tmp_path, "--out", str(tmp_path / "art"), "--host", "127.0.0.1",
                       "--port", str(sshd.port), "--user", sshd.user, "--key", str(sshd.client_key),  # type: ignore[attr-defined]
                       "--known-hosts", str(known))
    args[args.index("--target") + 1] = "raspberry-pi-4"
    one_line(run_cli(*args, env=env_for(tmp_path)), 2, r"(?i)host key")
    nothing_written(tmp_path, tmp_path / "art")


# --------------------------------------------------------------------------- honest outcome
def test_budget_out_of_reach_exits_3_before_the_episodes(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "art"
    res = run_cli(*search_args(inputs, tmp_path, "--out", str(out), "--latency-budget", "0.001ms",
                               "--episodes", "30"), env=env_for(tmp_path))
    line = one_line(res, 3, r"--latency-budget 0\.001ms \(0\.001 ms\) is out of reach on x86-cpu: the most pruned model "
                            r".* measures [0-9.]+ ms.* over the budget; give --latency-budget [0-9.]+x or more")
    assert "--allow-over-budget" in line
    assert not out.exists()
    log = [json.loads(ln) for ln in (tmp_path / "run" / "search.jsonl").read_text().splitlines()] \
        if (tmp_path / "run" / "search.jsonl").exists() else []
    assert not [c for c in log if c["stage"] == "prune"]  # refused before any episode


def test_over_budget_result_exits_3_and_is_written_only_when_allowed(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "art"
    args = search_args(inputs, tmp_path, "--out", str(out), "--latency-budget", "0.001ms", "--stages", "prune",
                       "--episodes", "2", "--warmup", "1", "--finetune-epochs", "0", "--val-images", "200",
                       "--test-images", "300")
    res = run_cli(*args, "--allow-over-budget", env=env_for(tmp_path))
    line = one_line(res, 3, r"over budget: latency [0-9.]+ ms is \d+x over the 0\.001 ms budget \(judged on \d+ fresh "
                            r"profiles: median [0-9.]+ ms, 95% CI [0-9.]+-[0-9.]+\).*written because of --allow-over-budget",
                    prefix="hwcompress: over budget")
    assert "budget_met: false" in line
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["budget_met"] is False
    assert manifest["budget"]["latency"]["met"] is False and manifest["budget"]["latency"]["budget"] == "0.001ms"
    lat = manifest["budget"]["latency"]
    v = lat["verdict"]  # an absolute budget: the model's own fresh profiles, no baseline beside them
    assert 4 <= len(v["model_ms"]) <= 10 and v["reference_ms"] == [] and v["limit"] == pytest.approx(0.001)
    assert v["ci_low"] <= lat["judged_ratio"] == v["ratio"] <= v["ci_high"] and v["within"] is False
    # progress without a terminal: a line per episode with elapsed time and ETA
    assert re.search(r"stage 1 prune: episode 1/2 · [0-9:]+ elapsed · ETA [0-9:]+ · candidate", res.stderr), res.stderr[-2000:]
    assert "stage 1 prune: 2/2 episodes" in res.stderr
    # third-party warnings went to the run folder, not to the terminal
    assert (tmp_path / "run" / "libraries.log").is_file()
    assert not [ln for ln in res.stderr.splitlines() if "Warning:" in ln or "warnings.warn" in ln], res.stderr[-2000:]
    # the same finished search resumed without the flag: the final verdict refuses, the artifact stays as it was
    before = (out / "manifest.json").read_bytes()
    again = run_cli("search", "--resume", str(tmp_path / "run"), "--cache", str(tmp_path / "cache.sqlite"),
                    env=env_for(tmp_path))
    line = one_line(again, 3, r"the result is over its budget: latency .* no artifact written")
    assert f"hwcompress search --resume {tmp_path / 'run'} --allow-over-budget" in line
    assert (out / "manifest.json").read_bytes() == before

    # issue 19.3: the search's own finetuned.pt of a file.py:factory model exports from another folder,
    # in a fresh process (the model file is found by its absolute path; no pickled classes)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    exp = run_cli("export", str(tmp_path / "run" / "finetuned.pt"), "--out", str(tmp_path / "exported"),
                  "--data", str(inputs["data"]), "--test-images", "300", "--cache", str(tmp_path / "cache.sqlite"),
                  cwd=elsewhere, env=env_for(tmp_path))
    assert exp.returncode == 0, exp.stderr[-3000:]
    exported = json.loads((tmp_path / "exported" / "manifest.json").read_text())
    assert exported["result"]["accuracy"] == pytest.approx(manifest["result"]["accuracy"], abs=0.02)


def test_export_whose_accuracy_collapses_is_an_error(inputs: dict[str, Path], tmp_path: Path) -> None:
    """Pruning a trained model hard without fine-tuning loses accuracy: past --max-accuracy-drop it is refused."""
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"keep": {"0": 0.125, "4": 0.125}, "precision": {}}))
    args = ["export", f"{inputs['model']}:net", "--checkpoint", str(inputs["ckpt"]), "--policy", str(policy),
            "--data", str(inputs["data"]), "--test-images", "300", "--cache", str(tmp_path / "c.sqlite")]
    res = run_cli(*args, "--out", str(tmp_path / "art"), "--max-accuracy-drop", "1", env=env_for(tmp_path))
    one_line(res, 2, r"test accuracy is [0-9.]+%, [0-9.]+ pt below the unpruned model .*at most 1 pt allowed.*"
                     r"--finetune-epochs 1.*nothing written")
    assert not (tmp_path / "art").exists()
    ok = run_cli(*args, "--out", str(tmp_path / "art2"), "--max-accuracy-drop", "100", env=env_for(tmp_path))
    assert ok.returncode == 0, ok.stderr[-2000:]
    m = json.loads((tmp_path / "art2" / "manifest.json").read_text())
    assert m["budget_met"] is None  # export has no budget


def test_targets_check_of_a_board_without_a_host() -> None:
    one_line(run_cli("targets", "check", "jetson-nano"), 2, r"target jetson-nano: no device host is set")


def test_ratios_say_slower_when_slower() -> None:
    from hwcompress.cli import times

    assert times(1.0, 1.22, "faster", "slower") == "1.22x slower"  # not "0.82x faster"
    assert times(2.0, 1.0, "faster", "slower") == "2.00x faster"
    assert times(100, 400, "smaller", "larger") == "4.00x larger"
    assert times(1.0, 1.001, "faster", "slower") == "same"


def test_resume_refuses_a_config_with_unknown_keys(tmp_path: Path) -> None:
    from hwcompress.search.run import SearchConfig

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({**SearchConfig().to_dict(), "tighter_budget": 0.4}))
    one_line(run_cli("search", "--resume", str(run)), 2, r"--resume .*run: search config: unknown key\(s\) tighter_budget")


def test_training_prints_progress_lines_without_a_terminal(inputs: dict[str, Path], tmp_path: Path) -> None:
    res = run_cli("train", "--model", f"{inputs['model']}:net", "--data", str(inputs["data"]), "--epochs", "2",
                  env=env_for(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    done = re.findall(r"training Sequential: steps (\d+)/(\d+) · [0-9:]+ elapsed · ETA [0-9:]+ · epoch (\d)/2 done: "
                      r"loss [0-9.]+, val accuracy [0-9.]+%", res.stderr)
    assert [d[2] for d in done] == ["1", "2"], res.stderr[-2000:]
    assert done[-1][0] == done[-1][1]  # all steps done at the end, never past the total


TIME_ARGS = ("--stages", "prune", "--latency-budget", "0.8x", "--warmup", "1", "--finetune-epochs", "1",
             "--val-images", "200", "--test-images", "300", "--episodes", "400")


def _time_budget_refused(inputs: dict[str, Path], tmp_path: Path) -> int:
    """A 2-second --time-budget: refused before any episode, with the estimate; returns the seconds it asks."""
    out = tmp_path / "art"
    res = run_cli(*search_args(inputs, tmp_path, *TIME_ARGS, "--out", str(out), "--time-budget", "2"),
                  env=env_for(tmp_path))
    line = one_line(res, 2, r"--time-budget 2 s: -?\d+ s are left and the work besides the episodes is estimated at "
                            r"\d+ s on this target \(prune pick \d+ s, finetune \d+ s, artifact \d+ s\); give at least "
                            r"\d+ s or fewer --finetune-epochs")
    assert not out.exists()
    log = tmp_path / "run" / "search.jsonl"
    assert not log.exists() or not log.read_text().strip()  # refused before any episode
    enough = re.search(r"give at least (\d+) s", line)
    assert enough is not None
    return int(enough.group(1))


def test_time_budget_the_rest_of_the_search_does_not_fit_is_refused_up_front(inputs: dict[str, Path],
                                                                             tmp_path: Path) -> None:
    _time_budget_refused(inputs, tmp_path)


@pytest.mark.slow
def test_time_budget_that_fits_cuts_the_episodes(inputs: dict[str, Path], tmp_path: Path) -> None:
    # the figure a refusal gives, less most of its minute of slack: the search runs and its episodes stop at
    # the budget's share (400 episodes of this model take minutes on any machine)
    enough = _time_budget_refused(inputs, tmp_path)
    shutil.rmtree(tmp_path / "run")
    out = tmp_path / "art"
    res = run_cli(*search_args(inputs, tmp_path, *TIME_ARGS, "--out", str(out), "--time-budget", str(enough - 40)),
                  env=env_for(tmp_path))
    assert res.returncode in (0, 3), res.stderr[-3000:]
    assert re.search(r"time budget: prune episodes get \d+ s of the \d+ s left \(\d+ s kept for the work after them\)",
                     res.stdout + res.stderr)
    log = tmp_path / "run" / "search.jsonl"
    played = {c["episode"] for c in map(json.loads, log.read_text().splitlines()) if c["stage"] == "prune"}
    assert 1 <= len(played) < 400
    assert (out / "manifest.json").is_file() or res.returncode == 3
