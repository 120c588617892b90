"""Every record round-trips through JSON; schema versions and unknown keys are checked."""

from __future__ import annotations

import json

import pytest

from hwcompress.records import (
    Candidate,
    CompressionPolicy,
    LatencyStats,
    LayerInfo,
    Manifest,
    Measurement,
    MeasureSettings,
    ModelFigures,
    RecordError,
    Target,
)
from hwcompress.targets import load_target, target_names


def _measurement() -> Measurement:
    return Measurement(
        target="x86-cpu",
        model_sha256="ab" * 32,
        latency=LatencyStats(median_ms=1.5, p10_ms=1.4, p90_ms=1.7, mean_ms=1.55, std_ms=0.05, cv=0.03, n=100),
        peak_memory_bytes=12_345_678,
        model_bytes=4_000_000,
        load_ms=12.5,
        runtime="onnxruntime",
        runtime_version="1.31.1",
        device="AMD EPYC",
        settings=MeasureSettings(min_runs=20),
        threads=1,
        timestamp="2026-11-22T00:00:00Z",
        profiler_version="1",
    )


def _policy() -> CompressionPolicy:
    return CompressionPolicy(keep={"features.0.0": 0.5, "features.1.0": 0.75}, precision={"features.0.0": "int8"})


def _all_records() -> list[object]:
    target = load_target("x86-cpu")
    m = _measurement()
    figures = ModelFigures(accuracy=0.92, file_bytes=4_000_000, macs=10**8, params=10**6, measurement=m)
    return [
        target,
        m,
        _policy(),
        LayerInfo(name="features.0.0", kind="Conv2d", in_channels=1, out_channels=64, kernel=(3, 3), stride=(1, 1), macs=451584, params=576, group=0),
        Candidate(policy=_policy(), stage="prune", accuracy=0.9, macs=10, params=5, reward=0.9, seconds=1.0, measurement=m),
        Candidate(policy=_policy(), stage="quant", accuracy=0.0, macs=10, params=5, reward=-1.0, seconds=1.0, error="export failed"),
        Manifest(source_model="vgg-small", source_sha256="cd" * 32, target=target, policy=_policy(), baseline=figures, result=figures, files={"model.onnx": "ef" * 32}),
    ]


@pytest.mark.parametrize("record", _all_records(), ids=lambda r: type(r).__name__)
def test_round_trip(record: object) -> None:
    cls = type(record)
    data = json.loads(json.dumps(record.to_dict()))  # type: ignore[attr-defined]
    assert data["schema"] == cls.SCHEMA  # type: ignore[attr-defined]
    again = cls.from_dict(data)  # type: ignore[attr-defined]
    assert again == record
    assert again.digest() == record.digest()  # type: ignore[attr-defined]


def test_every_shipped_target_round_trips() -> None:
    for name in target_names():
        t = load_target(name)
        assert Target.from_json(t.to_json()) == t


def test_unknown_key_and_schema_refused() -> None:
    data = _measurement().to_dict()
    data["latencyy"] = 1
    with pytest.raises(RecordError, match=r"unknown key.*latencyy"):
        Measurement.from_dict(data)
    data = _measurement().to_dict()
    data["schema"] = 99
    with pytest.raises(RecordError, match="schema version 99"):
        Measurement.from_dict(data)


def test_wrong_type_and_missing_key() -> None:
    data = _measurement().to_dict()
    data["latency"]["n"] = "many"
    with pytest.raises(RecordError, match=r"latency\.n: expected int"):
        Measurement.from_dict(data)
    data = _measurement().to_dict()
    del data["model_sha256"]
    with pytest.raises(RecordError, match=r"missing required key.*model_sha256"):
        Measurement.from_dict(data)


def test_policy_validation_and_digest() -> None:
    with pytest.raises(RecordError, match="keep ratio"):
        CompressionPolicy(keep={"a": 0.0})
    with pytest.raises(RecordError, match="precision"):
        CompressionPolicy(precision={"a": "int2"})
    a = CompressionPolicy(keep={"x": 0.5, "y": 0.25})
    b = CompressionPolicy(keep={"y": 0.25, "x": 0.5})
    assert a.digest() == b.digest()
    assert a.digest() != CompressionPolicy(keep={"x": 0.5, "y": 0.5}).digest()


def test_measurement_names_its_board_and_old_records_still_read() -> None:
    import dataclasses

    m = dataclasses.replace(_measurement(), board="10.0.0.7:22", board_scale=1.031)
    again = Measurement.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again.board == "10.0.0.7:22" and again.board_scale == pytest.approx(1.031)
    old = m.to_dict()
    del old["board"], old["board_scale"]  # a search.jsonl / cache entry written before boards were named
    legacy = Measurement.from_dict(old)
    assert legacy.board == "" and legacy.board_scale == 1.0
    old_target = load_target("raspberry-pi-4").to_dict()
    del old_target["board_tolerance"]  # a manifest written before pools
    assert Target.from_dict(old_target).board_tolerance == 0.05


def test_board_tolerance_is_validated(tmp_path: object) -> None:
    from hwcompress.errors import TargetError
    from hwcompress.targets import parse_target

    with pytest.raises(TargetError, match="board_tolerance"):
        parse_target({"runtime": "onnxruntime", "board_tolerance": 1.5}, "pool.toml", "t")
