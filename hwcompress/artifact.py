"""The deployable artifact: a folder with the model file(s), manifest.json, report and plots.

Layout of ``DIR``::

    model.onnx          the compressed model (QDQ / int4 / fp16 layers as the policy says)
    model.tflite        for TFLite targets: the model the device runs
    reference.npz       x: reference images (calibration split), logits: the float model's logits
    manifest.json       schema-versioned Manifest: every measured figure, policy, versions, sha256s
    report.html         self-contained report; layers.png, baseline_vs_result.png beside it

The folder is built in a temporary folder beside ``DIR`` and renamed into place; an existing
``DIR`` is only replaced with ``force``.  :func:`validate_artifact` re-checks a folder: the
sha256 of every file, ``onnx.checker``, and the model outputs against the float logits within
the manifest's tolerance.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hwcompress.errors import ArtifactError, FileMissingError, HwcompressError, ModelError
from hwcompress.fsutil import atomic_write_text, sha256_file

if TYPE_CHECKING:
    from torch import nn

    from hwcompress.data import Split
    from hwcompress.profiling.cache import MeasurementCache
    from hwcompress.records import CompressionPolicy, LayerRecord, Manifest, ModelFigures, Target

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ONNX_FILE = "model.onnx"
TFLITE_FILE = "model.tflite"
REFERENCE_FILE = "reference.npz"
REPORT_FILE = "report.html"
REFERENCE_IMAGES = 64
TOLERANCE_MARGIN = 1.5
"""output_tolerance = margin x the max logit difference measured at export (runtimes on other CPUs differ a little)."""
AGREEMENT_SLACK = 0.02
"""min_top1_agreement = agreement measured at export minus this."""
_VERSIONED = (
    "torch", "onnx", "onnxruntime", "numpy", "ml_dtypes", "matplotlib",
    "onnxscript", "litert-torch", "ai-edge-quantizer", "ai-edge-litert",
)


# --------------------------------------------------------------------------- helpers
def tool_versions() -> dict[str, str]:
    """Installed versions of the packages that shape an artifact (missing ones left out), plus python."""
    import platform
    from importlib import metadata

    from hwcompress import __version__

    out = {"python": platform.python_version(), "hwcompress": __version__}  # also from a source checkout
    for dist in _VERSIONED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def output_agreement(logits: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(max |logits - reference|, top-1 agreement in [0, 1]) of two (N, K) logit arrays."""
    if logits.shape != reference.shape:
        raise ModelError(f"model outputs have shape {logits.shape}, the reference {reference.shape}")
    if logits.size == 0:
        return 0.0, 1.0
    diff = float(np.max(np.abs(logits.astype(np.float64) - reference.astype(np.float64))))
    agree = float(np.mean(logits.argmax(axis=1) == reference.argmax(axis=1)))
    return diff, agree


def _model_logits(path: Path, x: np.ndarray, threads: int = 1) -> np.ndarray:
    if path.suffix == ".tflite":
        from hwcompress.tflite import tflite_logits

        return tflite_logits(path, x, threads=threads)
    from hwcompress.evaluate import onnx_logits

    return onnx_logits(path, x, threads=threads)


def _precision_counts(precisions: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in precisions.values():
        counts[p] = counts.get(p, 0) + 1
    return counts


# --------------------------------------------------------------------------- writing
def check_destination(out: Path, force: bool) -> None:
    """ArtifactError unless ``out`` is free (or an existing folder and ``force``): call before slow work."""
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out} exists and is not a folder; choose another output folder")
    if out.exists() and not force:
        raise ArtifactError(f"artifact folder {out} already exists; pass --force to replace it")


def write_artifact(
    out_dir: str | os.PathLike[str],
    *,
    onnx_path: str | os.PathLike[str],
    tflite_path: str | os.PathLike[str] | None = None,
    manifest: Manifest,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    force: bool = False,
    plots: bool = True,
) -> Path:
    """Write the artifact folder ``out_dir`` atomically (temp folder beside it, then rename).

    ``reference``: (x float32 (N, C, H, W), float-model logits (N, K)) for :func:`validate_artifact`.
    ``manifest.files`` is filled with the sha256 of every file written.  An existing ``out_dir``
    needs ``force`` (ArtifactError otherwise); it is renamed aside, the new folder renamed in,
    then the old one deleted.  Returns ``out_dir``.
    """
    from hwcompress.report import write_report

    out = Path(out_dir)
    check_destination(out, force)
    sources = {ONNX_FILE: Path(onnx_path)}
    if tflite_path is not None:
        sources[TFLITE_FILE] = Path(tflite_path)
    for src in sources.values():
        if not src.is_file():
            raise FileMissingError(f"model file {src} does not exist")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for name, src in sources.items():
            shutil.copyfile(src, tmp / name)
        if reference is not None:
            x, logits = reference
            with open(tmp / REFERENCE_FILE, "wb") as fh:
                np.savez_compressed(fh, x=np.asarray(x, dtype=np.float32), logits=np.asarray(logits, dtype=np.float32))
        write_report(manifest, tmp, plots=plots)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file() and p.name != MANIFEST}
        final = dataclasses.replace(manifest, files=files)
        atomic_write_text(tmp / MANIFEST, json.dumps(final.to_dict(), indent=2, sort_keys=True) + "\n")
        for p in tmp.iterdir():
            os.chmod(p, 0o644)  # temp files are created 0600
        os.chmod(tmp, 0o755)
        _swap_in(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote artifact %s (%s)", out, ", ".join(sorted(files)))
    return out


def _swap_in(tmp: Path, out: Path, force: bool) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` (force) is renamed aside first, then deleted."""
    old: Path | None = None
    if out.exists():
        check_destination(out, force)  # it may have appeared while we worked
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.rmdir(old)
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError as exc:
        if old is not None:
            os.rename(old, out)  # put the previous artifact back
        raise ArtifactError(f"cannot move the new artifact into {out}: {exc.strerror}") from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(art_dir: str | os.PathLike[str]) -> Manifest:
    """The Manifest of an artifact folder; ArtifactError when missing or unreadable."""
    from hwcompress.records import Manifest, RecordError

    path = Path(art_dir) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{art_dir} is not an artifact folder: {MANIFEST} is missing")
    try:
        return Manifest.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, RecordError) as exc:
        raise ArtifactError(f"{path} cannot be read: {exc}") from exc


# --------------------------------------------------------------------------- validation
@dataclass(frozen=True)
class FileCheck:
    """Outputs of one model file against the float logits in reference.npz."""

    file: str
    max_abs_diff: float
    top1_agreement: float
    ok: bool


@dataclass(frozen=True)
class ValidationResult:
    """What :func:`validate_artifact` found; ``ok`` when ``problems`` is empty."""

    path: Path
    problems: tuple[str, ...]
    checks: tuple[FileCheck, ...] = ()
    sha_mismatches: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        """ArtifactError listing the problems, if any."""
        if self.problems:
            raise ArtifactError(f"artifact {self.path} failed validation: " + "; ".join(self.problems))


def validate_artifact(art_dir: str | os.PathLike[str], *, threads: int = 1) -> ValidationResult:
    """Check an artifact folder: sha256 of every listed file, onnx.checker, ORT (and LiteRT) run.

    Outputs on reference.npz must agree with the float logits: max abs difference <= the file's
    ``output_tolerances`` entry (else ``output_tolerance``) and top-1 agreement >=
    ``min_top1_agreement`` (from the manifest).
    A .tflite file is run when ai-edge-litert is installed (else noted as a problem).
    """
    folder = Path(art_dir)
    m = read_manifest(folder)
    problems: list[str] = []
    mismatched: list[str] = []
    for name, want in sorted(m.files.items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is listed in the manifest but missing")
        elif sha256_file(path) != want:
            mismatched.append(name)
            problems.append(f"{name} was modified (sha256 differs from the manifest)")
    for name in (ONNX_FILE, REFERENCE_FILE):
        if name not in m.files:
            problems.append(f"the manifest lists no {name}")
    checks: list[FileCheck] = []
    onnx_file = folder / ONNX_FILE
    if onnx_file.is_file():
        import onnx

        try:
            onnx.checker.check_model(str(onnx_file))
        except Exception as exc:
            problems.append(f"{ONNX_FILE} fails onnx.checker: {str(exc).splitlines()[0] if str(exc) else exc!r}")
    ref = folder / REFERENCE_FILE
    if ref.is_file():
        with np.load(ref) as data:
            x, ref_logits = data["x"], data["logits"]
        for name in (ONNX_FILE, TFLITE_FILE):
            path = folder / name
            if not path.is_file() or (name == TFLITE_FILE and name not in m.files):
                continue
            try:
                logits = _model_logits(path, x, threads)
            except HwcompressError as exc:
                problems.append(f"{name} does not run: {exc}")
                continue
            diff, agree = output_agreement(logits, ref_logits)
            tolerance = m.output_tolerances.get(name, m.output_tolerance)
            good = diff <= tolerance and agree >= m.min_top1_agreement
            checks.append(FileCheck(name, diff, agree, good))
            if not good:
                problems.append(
                    f"{name} outputs differ from the float model: max |diff| {diff:.4g} (tolerance "
                    f"{tolerance:.4g}), top-1 agreement {agree:.3f} (minimum {m.min_top1_agreement:.3f})"
                )
    return ValidationResult(folder, tuple(problems), tuple(checks), tuple(mismatched))


# --------------------------------------------------------------------------- export pipeline
def _layer_records(
    onnx_fp32: Path, quantized: Path, policy: CompressionPolicy, model: nn.Module | None, effective: dict[str, str] | None
) -> tuple[LayerRecord, ...]:
    from hwcompress.quantize import layer_precisions, quantizable_layers, resolve_precisions
    from hwcompress.records import LayerRecord

    layers = quantizable_layers(onnx_fp32, model)
    asked = resolve_precisions(layers, policy)
    found = effective if effective is not None else layer_precisions(quantized, model)
    return tuple(
        LayerRecord(
            name=layer.name,
            op_type=layer.op_type,
            params=layer.params,
            keep=next((policy.keep[k] for k in layer.keys() if k in policy.keep), 1.0),
            precision=asked[layer.name],
            effective=found.get(layer.name, ""),
        )
        for layer in layers
    )


def measure_figures(
    path: Path, target: Target, test: Split, *, macs: int, params: int, precisions: dict[str, int],
    label: str, cache: MeasurementCache | None = None, test_limit: int | None = None,
) -> ModelFigures:
    """ModelFigures of one model file: measured on ``target``, accuracy on ``test`` run in its runtime."""
    import contextlib

    from hwcompress.profiling.measure import measure
    from hwcompress.records import ModelFigures

    with contextlib.suppress(ImportError):  # registers the tflite / tensorrt profiler adapters
        import hwcompress.profiling.runtimes  # noqa: F401
    meas = measure(path, target, cache=cache)
    logits = _model_logits(path, test.x[:test_limit], target.threads)
    acc = float(np.mean(logits.argmax(axis=1) == test.y[: logits.shape[0]]))
    return ModelFigures(
        accuracy=acc, file_bytes=path.stat().st_size, macs=macs, params=params,
        measurement=meas, file=label, precisions=precisions,
    )


def export_artifact(
    model: nn.Module | str | os.PathLike[str],
    policy: CompressionPolicy,
    target: Target,
    out_dir: str | os.PathLike[str],
    *,
    calib: Split,
    test: Split,
    baseline: ModelFigures | None = None,
    variants: dict[str, CompressionPolicy] | None = None,
    source_model: str = "",
    force: bool = False,
    command: str = "",
    seed: int = 0,
    cache: MeasurementCache | None = None,
    test_limit: int | None = None,
    reference_images: int = REFERENCE_IMAGES,
    reduce_range: bool | None = None,
    plots: bool = True,
    accept: Callable[[Manifest, Path], Manifest] | None = None,
) -> Manifest:
    """Quantize ``model`` with ``policy`` for ``target``, check it, measure it, write ``out_dir``.

    ``model``: the (already pruned) PyTorch model, or its fp32 ``.onnx`` file (ONNX targets only).
    Steps: fp32 ONNX (+ fp32 .tflite for TFLite targets) -> per-layer precision -> outputs vs
    the float model on ``reference_images`` calibration images -> baseline (unless given) and
    result measured on ``target`` with :func:`hwcompress.profiling.measure.measure`, accuracy on
    ``test`` (first ``test_limit``) in the runtime -> :func:`write_artifact` -> validated.
    ``variants`` (label -> policy) are measured the same way and shown in the report.
    ``accept(manifest, device_file)`` is called once everything is measured and before anything
    is written: it returns the manifest to write (e.g. with its budget verdict) or raises, and
    then nothing is written.
    """
    from hwcompress.export import export_onnx
    from hwcompress.profiling.adapters import backend_for
    from hwcompress.quantize import quantizable_layers, quantize_onnx, resolve_precisions
    from hwcompress.records import Manifest

    out = Path(out_dir)
    check_destination(out, force)  # fail before any work
    backend = backend_for(target)
    torch_model = None if isinstance(model, (str, os.PathLike)) else model
    if backend.needs_torch_model and torch_model is None:
        raise ModelError(f"target {target.name} runs {backend.display_name}: give the PyTorch model, not an ONNX file")
    if calib.x.shape[0] == 0:
        raise ModelError("the calibration split is empty")
    shape = (1, *calib.x.shape[1:])
    work = Path(tempfile.mkdtemp(prefix="hwcompress-export-"))
    try:
        fp32 = work / "fp32.onnx"
        if torch_model is not None:
            export_onnx(torch_model, shape, fp32)
            source_sha = sha256_file(fp32)
        else:
            src = Path(model)  # type: ignore[arg-type]
            if not src.is_file():
                raise FileMissingError(f"model file {src} does not exist")
            shutil.copyfile(src, fp32)
            source_sha = sha256_file(src)
        layers = quantizable_layers(fp32, torch_model)
        resolve_precisions(layers, policy, target)  # PolicyError before any slow step
        macs, params = 0, sum(layer.params for layer in layers)
        if torch_model is not None:
            from hwcompress.macs import count_macs

            macs, params = count_macs(torch_model, shape)

        def build(pol: CompressionPolicy, stem: str) -> tuple[Path, Path | None]:
            """(model.onnx, the device file when it is another file: .tflite converted from the torch model)."""
            q = quantize_onnx(fp32, work / f"{stem}.onnx", pol, calib.x, target, reduce_range=reduce_range)
            if not backend.needs_torch_model:
                return q, None
            return q, backend.device_file(torch_model, shape, work / stem, target, pol, calib.x)

        q_onnx, q_tflite = build(policy, "model")
        device_file = q_tflite if q_tflite is not None else q_onnx
        # outputs against the float model, on real calibration images
        x_ref = np.ascontiguousarray(calib.x[:reference_images], dtype=np.float32)
        ref_logits = _model_logits(fp32, x_ref)
        agreement = {
            name: output_agreement(_model_logits(p, x_ref), ref_logits)
            for name, p in ((ONNX_FILE, q_onnx), (TFLITE_FILE, q_tflite)) if p is not None
        }
        tolerances = {name: max(TOLERANCE_MARGIN * d, 1e-4) for name, (d, _) in agreement.items()}
        min_agree = min(a for _, a in agreement.values())
        for name, (d, a) in agreement.items():
            log.info("%s vs float on %d images: max |diff| %.4g, top-1 agreement %.3f", name, x_ref.shape[0], d, a)

        n_layers = len(layers)
        if baseline is None:
            base_file = backend.device_file(torch_model, shape, work / "fp32", target, calib_x=calib.x, fp32_onnx=fp32)
            baseline = measure_figures(base_file, target, test, macs=macs, params=params, precisions={"fp32": n_layers},
                                label=f"fp32{base_file.suffix}", cache=cache, test_limit=test_limit)
        effective = backend.layer_precisions(device_file, torch_model)
        result = measure_figures(device_file, target, test, macs=macs, params=params, precisions=_precision_counts(effective),
                          label=backend.artifact_file, cache=cache, test_limit=test_limit)
        measured_variants: dict[str, ModelFigures] = {}
        for label, pol in (variants or {}).items():
            stem = "variant-" + "".join(c if c.isalnum() else "-" for c in label)
            v_onnx, v_tflite = build(pol, stem)
            v_file = v_tflite if v_tflite is not None else v_onnx
            v_eff = backend.layer_precisions(v_file, torch_model)
            measured_variants[label] = measure_figures(v_file, target, test, macs=macs, params=params,
                                                precisions=_precision_counts(v_eff), label=label, cache=cache, test_limit=test_limit)
        manifest = Manifest(
            source_model=source_model or (type(torch_model).__name__ if torch_model is not None else Path(model).name),  # type: ignore[arg-type]
            source_sha256=source_sha,
            target=target,
            policy=policy,
            baseline=baseline,
            result=result,
            tool_versions=tool_versions(),
            command=command,
            seed=seed,
            output_tolerance=max(tolerances.values()),
            output_tolerances=tolerances,
            min_top1_agreement=max(0.0, min_agree - AGREEMENT_SLACK),
            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            layers=_layer_records(fp32, q_onnx, policy, torch_model, effective),
            variants=measured_variants,
        )
        if accept is not None:
            manifest = accept(manifest, device_file)
        write_artifact(out, onnx_path=q_onnx, tflite_path=q_tflite, manifest=manifest,
                       reference=(x_ref, ref_logits), force=force, plots=plots)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    check = validate_artifact(out, threads=target.threads)
    check.raise_for_problems()
    return read_manifest(out)


__all__ = [
    "FileCheck",
    "ValidationResult",
    "check_destination",
    "export_artifact",
    "measure_figures",
    "output_agreement",
    "read_manifest",
    "tool_versions",
    "validate_artifact",
    "write_artifact",
]
