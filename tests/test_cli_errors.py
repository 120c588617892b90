"""Bad input gives one line on stderr and exit 2 — never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HWCOMPRESS_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "hwcompress", *args], capture_output=True, text=True, timeout=timeout, env=full_env
    )


def assert_one_line_error(res: subprocess.CompletedProcess[str], pattern: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("hwcompress: error: "), lines[0]
    assert "Traceback" not in res.stderr
    import re

    assert re.search(pattern, lines[0]), lines[0]


def _string_input_onnx(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("text", TensorProto.STRING, [1])
    outp = helper.make_tensor_value_info("out", TensorProto.STRING, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["text"], ["out"])], "g", [inp], [outp])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime 1.31 reads
    onnx.save(model, str(path))


def test_missing_model_file(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("profile", str(tmp_path / "nope.onnx")), r"nope\.onnx does not exist")


def test_corrupt_onnx(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"this is not a protobuf" * 10)
    assert_one_line_error(run_cli("profile", str(bad), "--cache", str(tmp_path / "c.sqlite")), r"(?i)cannot load|corrupt|invalid")


def test_unfeedable_onnx(tmp_path: Path) -> None:
    model = tmp_path / "strings.onnx"
    _string_input_onnx(model)
    assert_one_line_error(run_cli("profile", str(model), "--cache", str(tmp_path / "c.sqlite")), r"text")


def test_unknown_target(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("profile", "vgg-small", "--target", "pi-zero"), r"unknown target 'pi-zero'")


def test_misspelt_target_key(tmp_path: Path) -> None:
    toml = tmp_path / "board.toml"
    toml.write_text('runtime = "onnxruntime"\nthreds = 1\n')
    assert_one_line_error(run_cli("targets", "show", str(toml)), r"board\.toml: unknown key\(s\) threds")


def test_data_folder_with_wrong_files(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    assert_one_line_error(
        run_cli("train", "--data", str(folder), env={"HWCOMPRESS_CACHE": str(tmp_path / "cache")}), r"data"
    )


def test_bad_input_shape() -> None:
    assert_one_line_error(run_cli("profile", "vgg-small", "--input-shape", "28,28"), r"--input-shape")


def test_not_a_model(tmp_path: Path) -> None:
    f = tmp_path / "model.txt"
    f.write_text("x")
    assert_one_line_error(run_cli("profile", str(f)), r"not a model hwcompress reads")


def test_usage_error_exit_code() -> None:
    res = run_cli("profile")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("args", [("--help",), ("targets",), ("targets", "show", "x86-cpu"), ("version",)])
def test_informational_commands(args: tuple[str, ...]) -> None:
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip()
