"""A device Python too old for the profilers, or a profiler that dies, is reported with that
Python's version and the fix (issue 20), locally and over SSH, with real interpreters (pyenv's
2.7 where this machine has it: the profilers' syntax needs 3.6)."""

from __future__ import annotations

import platform
import tomllib
from pathlib import Path

import pytest
from py36_env import find_python

from hwcompress.device_check import check_device, format_report, install_command, jetpack_of, numpy_command
from hwcompress.errors import ProfilerError
from hwcompress.profiling.adapters import profilers_dir
from hwcompress.profiling.remote import SshRunner, close_all
from hwcompress.profiling.runner import LocalRunner, diagnose_death
from hwcompress.targets import parse_target

PY27 = find_python("2.7")
needs_py27 = pytest.mark.skipif(PY27 is None, reason="no Python 2.7 on this machine (pyenv 2.7.x)")


def _profilers(tmp_path: Path, body: str) -> Path:
    folder = tmp_path / "profilers"
    folder.mkdir()
    (folder / "benchcore.py").write_bytes((profilers_dir() / "benchcore.py").read_bytes())
    (folder / "ort_bench.py").write_text(body)
    return folder


@needs_py27
def test_too_old_python_locally_names_version_and_fix() -> None:
    assert PY27 is not None
    with pytest.raises(ProfilerError) as info:
        LocalRunner(python=PY27).run("ort_bench.py", ["--probe"], [], timeout_s=60)
    msg = str(info.value)
    assert msg.startswith("ort_bench.py cannot run under Python 2.7.")
    assert "the profilers need Python >= 3.6" in msg and "(SyntaxError at ort_bench.py:" in msg
    assert "fix: set connection.python" in msg and "exited with status" not in msg and "\n" not in msg


def test_missing_module_names_the_install_command(tmp_path: Path) -> None:
    folder = _profilers(tmp_path, "import sys\nimport no_such_module_hwc\n")
    with pytest.raises(ProfilerError) as info:
        LocalRunner(profilers_dir=folder).run("ort_bench.py", [], [], timeout_s=60)
    msg = str(info.value)
    assert msg.startswith(f"ort_bench.py died under Python {platform.python_version()}: ModuleNotFoundError: "
                          "No module named 'no_such_module_hwc' (at ort_bench.py:2)")
    assert msg.endswith("-m pip install no_such_module_hwc")


def test_a_crash_names_the_signal_and_the_numpy_pitfall(tmp_path: Path) -> None:
    folder = _profilers(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    with pytest.raises(ProfilerError) as info:
        LocalRunner(profilers_dir=folder).run("ort_bench.py", [], [], timeout_s=60)
    msg = str(info.value)
    assert msg.startswith(f"ort_bench.py was killed by SIGSEGV under Python {platform.python_version()}")
    assert "numpy >= 1.16.6" in msg and "targets check" in msg


def test_a_bug_in_the_script_is_reported_as_one(tmp_path: Path) -> None:
    folder = _profilers(tmp_path, "def f():\n    return {}['x']\nf()\n")
    with pytest.raises(ProfilerError) as info:
        LocalRunner(profilers_dir=folder).run("ort_bench.py", [], [], timeout_s=60)
    assert f"died under Python {platform.python_version()}: KeyError: 'x' (at ort_bench.py:2)" in str(info.value)
    assert "profiler bug" in str(info.value)


def test_unknown_version_with_a_syntax_error_is_called_too_old() -> None:
    stderr = '  File "ort_bench.py", line 12\n    def f() -> Any:\n            ^\nSyntaxError: invalid syntax\n'
    msg = diagnose_death("ort_bench.py on pi:22", 1, stderr, "", "python3")
    assert msg.startswith("ort_bench.py on pi:22 cannot run under 'python3' (version unknown): the profilers need "
                          "Python >= 3.6 (SyntaxError at ort_bench.py:12)")
    assert "Python 3.6.9" not in diagnose_death("x", 1, stderr, "3.11.7", "python3")
    assert diagnose_death("x", 1, stderr, "3.11.7", "python3").startswith("x cannot be compiled by Python 3.11.7")


# --------------------------------------------------------------------------- over SSH
@needs_py27
def test_too_old_python_over_ssh(sshd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tiny_models import write_tiny_onnx

    target = parse_target(tomllib.loads(sshd.target_toml("onnxruntime", python=PY27)), "test", "loop-py27")
    model = write_tiny_onnx(tmp_path / "m.onnx")
    with SshRunner(target.connection) as runner, pytest.raises(ProfilerError) as info:
        runner.run("ort_bench.py", ["--model", str(model)], [model], timeout_s=60)
    msg = str(info.value)
    assert msg.startswith(f"ort_bench.py on {sshd.connection().user}@127.0.0.1:{sshd.port} cannot run under Python 2.7.")
    assert "need Python >= 3.6" in msg and "fix: set connection.python" in msg
    report = check_device(target)
    assert not report.ok and report.python_version.startswith("2.7.")
    assert report.problems[0].startswith("Python 2.7.") and "too old" in report.problems[0]
    assert "connection.python" in report.fixes[0]
    assert "NOT READY" in format_report(report)
    close_all()


@pytest.mark.skipif(find_python("3.6") is None, reason="no Python 3.6 on this machine")
def test_python36_device_is_accepted_by_targets_check(sshd) -> None:  # type: ignore[no-untyped-def]
    # The Jetson Nano's Python (3.6) passes the Python check; what is missing is named with its fix.
    py36 = find_python("3.6")
    target = parse_target(tomllib.loads(sshd.target_toml("tensorrt", python=py36)), "test", "loop-py36")
    report = check_device(target)
    assert report.python_version.startswith("3.6.")
    assert not any("too old" in p for p in report.problems), report.problems
    assert any("tensorrt is not importable" in p for p in report.problems)
    assert any("numpy is not importable" in p for p in report.problems)
    close_all()


def test_install_hints_per_board() -> None:
    assert jetpack_of("# R32 (release), REVISION: 6.1, GCID: 27863751, BOARD: t210ref, EABI: aarch64") == "4"
    assert jetpack_of("# R36 (release), REVISION: 3.0") == "6" and jetpack_of("") == ""
    nano = install_command("tensorrt", jetpack="4")
    assert "python3-libnvinfer python3-numpy" in nano and "pip" not in nano
    assert "nvidia-jetpack" in install_command("tensorrt", jetpack="6")
    desktop = install_command("tensorrt")
    assert "pip install 'tensorrt>=8.5,<12'" in desktop
    assert "~/hwc/bin/pip install 'tensorrt>=8.5,<12'" in install_command("tensorrt", externally_managed=True)
    bookworm = install_command("tflite", externally_managed=True, arch="aarch64")
    assert "python3 -m venv ~/hwc && ~/hwc/bin/pip install ai-edge-litert" in bookworm
    assert "--break-system-packages ai-edge-litert" in bookworm and "tensorflow.lite" in bookworm
    assert "tflite-runtime 'numpy<2'" in install_command("tflite", arch="armv7l")
    assert install_command("onnxruntime") == "python3 -m pip install onnxruntime"
    assert numpy_command(jetpack="4") == "sudo apt-get install python3-numpy"
    assert numpy_command(externally_managed=True).startswith("sudo apt-get install python3-numpy")
    assert numpy_command("py") == "py -m pip install numpy"
