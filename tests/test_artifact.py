"""The artifact folder: export end to end (quantize, measure, write), report, validation, --force."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import quant_helpers

from hwcompress.artifact import (
    MANIFEST,
    ONNX_FILE,
    REFERENCE_FILE,
    export_artifact,
    read_manifest,
    validate_artifact,
    write_artifact,
)
from hwcompress.errors import ArtifactError
from hwcompress.fsutil import sha256_file
from hwcompress.quantize import uniform_policy
from hwcompress.records import (
    LatencyStats,
    Manifest,
    Measurement,
    MeasureSettings,
    ModelFigures,
)
from hwcompress.report import render_html, speed_findings
from hwcompress.targets import load_target

POLICY = uniform_policy("int8", {"features.0.0": "fp32", "classifier": "fp32"})


@pytest.fixture(scope="module")
def fmnist_small():  # type: ignore[no-untyped-def]
    return quant_helpers.small_splits()


@pytest.fixture(scope="module")
def tiny_vgg():  # type: ignore[no-untyped-def]
    return quant_helpers.tiny_vgg()


@pytest.fixture(scope="module")
def artifact(tiny_vgg, fmnist_small, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("art") / "out"
    export_artifact(
        tiny_vgg, POLICY, load_target("x86-cpu"), out,
        calib=fmnist_small.calib, test=fmnist_small.test, source_model="vgg-small-tiny",
        command="hwcompress export vgg-small --policy p.json --target x86-cpu --out out", seed=7,
        variants={"all-int4": uniform_policy("int4")},
    )
    return out


def test_export_writes_every_file_and_figure(artifact: Path) -> None:
    names = {p.name for p in artifact.iterdir()}
    assert {ONNX_FILE, MANIFEST, REFERENCE_FILE, "report.html", "layers.png", "baseline_vs_result.png"} <= names
    assert not [p for p in artifact.parent.iterdir() if p.name.startswith(".")]  # no temp folders left
    raw = json.loads((artifact / MANIFEST).read_text())
    assert raw["schema"] == Manifest.SCHEMA
    m = read_manifest(artifact)
    assert Manifest.from_dict(m.to_dict()) == m
    assert set(m.files) == names - {MANIFEST}
    assert all(sha256_file(artifact / f) == sha for f, sha in m.files.items())
    assert m.command.startswith("hwcompress export") and m.seed == 7 and m.policy == POLICY
    for fig in (m.baseline, m.result, m.variants["all-int4"]):
        assert fig.measurement is not None and fig.measurement.latency.median_ms > 0 and fig.measurement.latency.n > 0
        assert fig.measurement.peak_memory_bytes > 0 and fig.file_bytes > 0
        assert 0.5 < fig.accuracy <= 1.0 and fig.macs > 0 and fig.params > 0
    assert m.result.file_bytes < m.baseline.file_bytes
    assert m.result.precisions == {"fp32": 2, "int8": 5} and m.baseline.precisions == {"fp32": 7}
    assert [(layer.name, layer.precision, layer.effective) for layer in m.layers][:2] == [
        ("features.0.0", "fp32", "fp32"), ("features.1.0", "int8", "int8"),
    ]
    assert {"hwcompress", "torch", "onnx", "onnxruntime", "numpy", "python"} <= set(m.tool_versions)
    assert 0 < m.output_tolerance and 0 < m.min_top1_agreement <= 1


def test_report_shows_int4_not_faster(artifact: Path) -> None:
    m = read_manifest(artifact)
    html = (artifact / "report.html").read_text()
    assert "data:image/png;base64," in html and 'href="layers.png"' in html
    int4 = next(f for f in speed_findings(m) if f.label == "all-int4")
    assert int4.not_faster  # int4 weights run as DequantizeLinear + float conv: slower on x86
    assert "NOT faster than fp32" in html and "all-int4" in html


def test_validate_passes_and_detects_tampering(artifact: Path, tmp_path: Path) -> None:
    res = validate_artifact(artifact)
    assert res.ok, res.problems
    assert res.checks[0].file == ONNX_FILE and res.checks[0].top1_agreement >= read_manifest(artifact).min_top1_agreement

    bad = tmp_path / "tampered"
    shutil.copytree(artifact, bad)
    data = bytearray((bad / ONNX_FILE).read_bytes())
    data[-1] ^= 0xFF
    (bad / ONNX_FILE).write_bytes(bytes(data))
    res = validate_artifact(bad)
    assert not res.ok and res.sha_mismatches == (ONNX_FILE,)
    with pytest.raises(ArtifactError, match=r"model\.onnx was modified"):
        res.raise_for_problems()


def test_validate_catches_a_swapped_model_with_fixed_sha(artifact: Path, tmp_path: Path) -> None:
    """A different model with an updated manifest still fails the output check."""
    import torch

    from hwcompress.export import export_onnx
    from hwcompress.zoo.models import VGGSmall

    bad = tmp_path / "swapped"
    shutil.copytree(artifact, bad)
    torch.manual_seed(123)
    export_onnx(VGGSmall(widths=(8, 16, 32)), (1, 1, 28, 28), bad / ONNX_FILE)
    m = read_manifest(bad)
    fixed = dataclasses.replace(m, files={**m.files, ONNX_FILE: sha256_file(bad / ONNX_FILE)})
    (bad / MANIFEST).write_text(json.dumps(fixed.to_dict()))
    res = validate_artifact(bad)
    assert not res.ok and not res.sha_mismatches
    assert any("outputs differ from the float model" in p for p in res.problems)


def test_existing_folder_needs_force(artifact: Path, tmp_path: Path) -> None:
    m = read_manifest(artifact)
    ref = np.load(artifact / REFERENCE_FILE)
    out = tmp_path / "dest"
    out.mkdir()
    (out / "old.txt").write_text("previous artifact")
    with pytest.raises(ArtifactError, match=rf"{out}.*--force"):
        write_artifact(out, onnx_path=artifact / ONNX_FILE, manifest=m, plots=False)
    assert (out / "old.txt").exists()
    write_artifact(out, onnx_path=artifact / ONNX_FILE, manifest=m, reference=(ref["x"], ref["logits"]), force=True, plots=False)
    assert not (out / "old.txt").exists() and (out / ONNX_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]  # nothing left beside it
    assert validate_artifact(out).ok


def test_validate_needs_a_manifest(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"manifest\.json is missing"):
        validate_artifact(tmp_path)


# --------------------------------------------------------------------------- report logic alone
def _meas(median_ms: float) -> Measurement:
    lat = LatencyStats(median_ms=median_ms, p10_ms=median_ms * 0.95, p90_ms=median_ms * 1.1, mean_ms=median_ms,
                       std_ms=0.01, cv=0.01, n=100)
    return Measurement(target="x86-cpu", model_sha256="ab" * 32, latency=lat, peak_memory_bytes=10 << 20,
                       model_bytes=1000, load_ms=5.0, runtime="onnxruntime", runtime_version="1.31.1", device="cpu",
                       settings=MeasureSettings(), threads=1, timestamp="2025-01-01T00:00:00Z", profiler_version="1")


def _manifest(result_ms: float, precisions: dict[str, int]) -> Manifest:
    base = ModelFigures(accuracy=0.9, file_bytes=4000, macs=10, params=10, measurement=_meas(1.0), precisions={"fp32": 7})
    res = dataclasses.replace(base, measurement=_meas(result_ms), precisions=precisions)
    return Manifest(source_model="m", source_sha256="cd" * 32, target=load_target("x86-cpu"), policy=POLICY,
                    baseline=base, result=res)


def test_report_flags_lower_precision_that_is_not_faster() -> None:
    slow = _manifest(1.02, {"int8": 7})
    assert [f.not_faster for f in speed_findings(slow)] == [True]
    assert "NOT faster than fp32" in render_html(slow, {})
    fast = _manifest(0.6, {"int8": 5, "fp32": 2})
    assert [f.not_faster for f in speed_findings(fast)] == [False]
    assert "NOT faster" not in render_html(fast, {})
    assert speed_findings(_manifest(1.5, {"fp32": 7})) == []  # no lower precision: nothing to compare


@pytest.mark.slow
def test_tflite_target_artifact(tmp_path: Path) -> None:
    """A TFLite target (LiteRT on this CPU): model.tflite + model.onnx, both checked against the float model."""
    from hwcompress.tflite import tflite_available

    if not tflite_available():
        pytest.skip("litert-torch / ai-edge-quantizer not installed (pip install 'hwcompress[tflite]')")
    toml = tmp_path / "local-tflite.toml"
    toml.write_text(
        'runtime = "tflite"\nthreads = 1\nprecisions = ["fp32", "fp16", "int8", "int4"]\n'
        '[connection]\nkind = "local"\n[measure]\nwarmup_runs = 5\nmin_runs = 30\nmin_seconds = 0.1\n'
    )
    splits = quant_helpers.small_splits()
    m = export_artifact(
        quant_helpers.tiny_vgg(), POLICY, load_target(str(toml)), tmp_path / "art",
        calib=splits.calib, test=splits.test,
    )
    assert {"model.onnx", "model.tflite"} <= set(m.files)
    assert m.result.file == "model.tflite" and m.result.measurement is not None
    assert m.result.measurement.runtime != "onnxruntime"
    assert set(m.output_tolerances) == {"model.onnx", "model.tflite"}
    res = validate_artifact(tmp_path / "art")
    assert res.ok and [c.file for c in res.checks] == ["model.onnx", "model.tflite"]
