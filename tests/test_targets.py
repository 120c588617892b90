"""Target files: every shipped file validates; bad files name the file, the key and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwcompress.errors import TargetError
from hwcompress.targets import load_target, target_names, with_connection

GOOD = """
runtime = "onnxruntime"
threads = 1
precisions = ["fp32", "int8"]
channel_multiple = 8
[connection]
kind = "local"
[measure]
min_runs = 20
"""


def test_shipped_targets() -> None:
    names = target_names()
    for required in ("x86-cpu", "raspberry-pi-4", "jetson-nano"):
        assert required in names
    x86 = load_target("x86-cpu")
    assert x86.runtime == "onnxruntime" and x86.threads == 1 and x86.connection.kind == "local"
    pi = load_target("raspberry-pi-4")
    assert pi.runtime == "tflite" and pi.connection.kind == "ssh"
    assert load_target("jetson-nano").runtime == "tensorrt"


def _write(tmp_path: Path, text: str, name: str = "board.toml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_user_file_by_path(tmp_path: Path) -> None:
    t = load_target(_write(tmp_path, GOOD))
    assert t.name == "board" and t.measure.min_runs == 20 and t.precisions == ("fp32", "int8")


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (GOOD.replace("threads = 1", "thread = 1"), r"board\.toml: unknown key\(s\) thread"),
        (GOOD.replace("min_runs = 20", "min_run = 20"), r"board\.toml: measure: unknown key\(s\) min_run"),
        (GOOD.replace("threads = 1", 'threads = "one"'), r"board\.toml: threads: expected int, got str"),
        (GOOD.replace('runtime = "onnxruntime"', ""), r"board\.toml: missing required key\(s\) runtime"),
        (GOOD.replace('"onnxruntime"', '"openvino"'), r"key runtime: expected onnxruntime \| tflite \| tensorrt"),
        (GOOD.replace('"int8"]', '"int2"]'), r"key precisions: expected items from"),
        (GOOD.replace('kind = "local"', 'kind = "telnet"'), r"key connection.kind"),
        (GOOD + "\n[[oops", r"board\.toml: not valid TOML"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, pattern: str) -> None:
    with pytest.raises(TargetError, match=pattern):
        load_target(_write(tmp_path, text))


def test_unknown_target_lists_known() -> None:
    with pytest.raises(TargetError, match=r"unknown target 'jetson-nanoo'.*jetson-nano"):
        load_target("jetson-nanoo")


def test_missing_file() -> None:
    with pytest.raises(TargetError, match="does not exist"):
        load_target("/nonexistent/board.toml")


def test_user_folder_and_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HWCOMPRESS_TARGETS", str(tmp_path))
    _write(tmp_path, GOOD, "my-board.toml")
    assert "my-board" in target_names()
    t = load_target("raspberry-pi-4", host="127.0.0.1", port=2222, user=None)
    assert t.connection.host == "127.0.0.1" and t.connection.port == 2222 and t.connection.user == "pi"
    with pytest.raises(TargetError, match="unknown connection override"):
        with_connection(t, hots="x")
