"""End-to-end jobs built from the library's parts (the CLI stays a thin layer over these)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwcompress.errors import FileMissingError, ModelError
from hwcompress.fsutil import atomic_write_text, sha256_file
from hwcompress.paths import cache_dir
from hwcompress.zoo import is_zoo_name

if TYPE_CHECKING:
    from torch import nn

    from hwcompress.records import Manifest, Measurement

log = logging.getLogger(__name__)


def model_to_onnx(
    model: str,
    input_shape: tuple[int, int, int],
    *,
    num_classes: int = 10,
    checkpoint: str | None = None,
) -> Path:
    """Resolve a model reference to an ONNX file (static batch 1).

    ``model`` is an ``.onnx`` path (used as is), a built-in name (exported with fixed-seed
    weights: latency does not depend on the weight values, and the file is reused) or a
    ``package.module:factory`` spec (with an optional ``checkpoint``).
    """
    path = Path(model)
    if model.endswith(".onnx"):
        if not path.is_file():
            raise FileMissingError(f"model file {model} does not exist")
        return path
    c, h, w = input_shape
    if is_zoo_name(model):
        dest = cache_dir() / "onnx" / f"{model}-{c}x{h}x{w}-{num_classes}.onnx"
        if dest.is_file():
            return dest
        import torch

        from hwcompress.export import export_onnx
        from hwcompress.zoo import build_model

        torch.manual_seed(0)
        return export_onnx(build_model(model, in_channels=c, num_classes=num_classes), (1, c, h, w), dest)
    if ":" in model:
        from hwcompress.export import export_onnx
        from hwcompress.zoo.user import load_user_model

        key = model.replace("/", "_").replace(":", "-")
        if checkpoint:
            if not Path(checkpoint).is_file():
                raise FileMissingError(f"checkpoint {checkpoint} does not exist")
            key += "-" + sha256_file(checkpoint)[:12]
        user = load_user_model(model, checkpoint, in_channels=c, num_classes=num_classes)
        return export_onnx(user, (1, c, h, w), cache_dir() / "onnx" / f"{key}-{c}x{h}x{w}.onnx")
    if path.exists():
        raise ModelError(
            f"{model} is not a model hwcompress reads; give an .onnx file, a built-in model name "
            "or package.module:factory with --checkpoint"
        )
    raise FileMissingError(
        f"{model} is neither a file nor a built-in model (vgg-small, resnet-20, mobilenetv2-small) "
        "nor a package.module:factory spec"
    )


def load_torch_model(
    model: str, input_chw: tuple[int, ...], *, num_classes: int = 10, checkpoint: str | None = None
) -> nn.Module:
    """A torch model from a built-in name (fresh weights unless ``checkpoint``) or a user spec."""
    c = int(input_chw[0])
    if is_zoo_name(model):
        from hwcompress.zoo import build_model

        net = build_model(model, in_channels=c, num_classes=num_classes)
        if checkpoint:
            from hwcompress.zoo.user import load_state_dict

            load_state_dict(net, checkpoint)
        return net
    if ":" in model:
        from hwcompress.zoo.user import load_user_model

        return load_user_model(model, checkpoint, in_channels=c, num_classes=num_classes)
    raise FileMissingError(
        f"{model} is neither a built-in model (vgg-small, resnet-20, mobilenetv2-small) nor a package.module:factory spec"
    )


@dataclass(frozen=True)
class DemoResult:
    model: str
    target: str
    data_source: str
    test_accuracy: float
    onnx_test_accuracy: float
    from_cache: bool
    train_seconds: float
    macs: int
    params: int
    measurement: Measurement
    onnx_path: Path
    figures_path: Path


def run_demo(
    *,
    model: str = "vgg-small",
    data: str | None = None,
    target: str = "x86-cpu",
    out_dir: Path = Path("out/demo"),
    cache_path: Path | None = None,
    seed: int = 0,
) -> DemoResult:
    """Baseline (trained once and cached) -> ONNX -> measured on ``target``; figures to ``out_dir``."""
    from hwcompress.data import load_splits
    from hwcompress.evaluate import onnx_accuracy
    from hwcompress.export import export_onnx
    from hwcompress.macs import count_macs
    from hwcompress.profiling.cache import MeasurementCache
    from hwcompress.profiling.measure import measure
    from hwcompress.targets import load_target
    from hwcompress.zoo.train import ensure_baseline

    tgt = load_target(target)  # fail fast on a bad target, before any training
    splits = load_splits(data, seed=seed)
    base = ensure_baseline(model, splits)
    shape = (1, *splits.input_shape)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(base.model, shape, out_dir / f"{model}.onnx")
    macs, params = count_macs(base.model, shape)
    log.info("measuring %s on %s", onnx_path, tgt.name)
    m = measure(onnx_path, tgt, cache=MeasurementCache(cache_path))
    onnx_acc = onnx_accuracy(onnx_path, splits.test, threads=tgt.threads)
    figures = {
        "model": model,
        "target": tgt.name,
        "data": splits.source,
        "test_accuracy": base.test_accuracy,
        "onnx_test_accuracy": onnx_acc,
        "train_seconds": base.train_seconds,
        "macs": macs,
        "params": params,
        "onnx": str(onnx_path),
        "onnx_sha256": sha256_file(onnx_path),
        "measurement": m.to_dict(),
    }
    figures_path = out_dir / f"{model}.json"
    atomic_write_text(figures_path, json.dumps(figures, indent=2))
    return DemoResult(
        model=model,
        target=tgt.name,
        data_source=splits.source,
        test_accuracy=base.test_accuracy,
        onnx_test_accuracy=onnx_acc,
        from_cache=base.from_cache,
        train_seconds=base.train_seconds,
        macs=macs,
        params=params,
        measurement=m,
        onnx_path=onnx_path,
        figures_path=figures_path,
    )


def export_with_policy(
    model: str,
    *,
    policy_file: Path | None,
    target: str,
    out_dir: Path,
    checkpoint: str | None = None,
    data: str | None = None,
    finetune_epochs: int = 0,
    test_limit: int | None = None,
    force: bool = False,
    cache_path: Path | None = None,
    seed: int = 0,
    command: str = "",
    max_accuracy_drop: float = 10.0,
) -> Manifest:
    """``hwcompress export``: model + policy -> pruned (optionally fine-tuned) -> quantized artifact."""
    from hwcompress import preflight
    from hwcompress.artifact import export_artifact
    from hwcompress.data import load_splits
    from hwcompress.errors import PolicyError, UsageError
    from hwcompress.profiling.cache import MeasurementCache
    from hwcompress.records import CompressionPolicy, RecordError
    from hwcompress.targets import load_target

    tgt = load_target(target)
    preflight.artifact_destination(Path(out_dir), force)
    if finetune_epochs < 0:
        raise UsageError("--finetune-epochs must be >= 0")
    if not 0 <= max_accuracy_drop <= 100:
        raise UsageError("--max-accuracy-drop is in points, from 0 to 100")
    policy = CompressionPolicy()
    if policy_file is not None:
        if not Path(policy_file).is_file():
            raise FileMissingError(f"policy file {policy_file} does not exist")
        try:
            raw = json.loads(Path(policy_file).read_text())
            if isinstance(raw, dict) and "policy" in raw and isinstance(raw["policy"], dict):
                raw = raw["policy"]  # a search's stage1.json / stage2.json
            policy = CompressionPolicy.from_dict(raw)
        except (json.JSONDecodeError, RecordError) as exc:
            raise PolicyError(f"policy file {policy_file}: {exc}") from None
    preflight.target_ready(tgt)
    splits = load_splits(data, seed=seed)
    # The accuracy the export must keep (within max_accuracy_drop): the float model's, or the pruned file's own.
    reference: tuple[float, str] | None = None
    prune_here = bool(policy.keep)
    if model.endswith(".onnx"):
        if policy.keep:
            raise PolicyError("an .onnx model cannot be pruned here; give the PyTorch model, or a policy without keep ratios")
        if not Path(model).is_file():
            raise FileMissingError(f"model file {model} does not exist")
        net: Any = model
        teacher = None
    elif model.endswith(".pt") and Path(model).is_file() and ":" not in model:
        from hwcompress.prune import load_pruned

        net, meta = load_pruned(model, with_meta=True)
        teacher = None
        prune_here = False  # the file is pruned already; a stage2.json's keep ratios describe it
        if isinstance(meta.get("test_accuracy"), float):
            reference = (meta["test_accuracy"], f"{Path(model).name} as the search saved it")
    else:
        from hwcompress.zoo.train import ensure_baseline

        base = ensure_baseline(model, splits, checkpoint=checkpoint)
        preflight.labels_fit_model(splits, base.model, model)
        teacher = net = base.model
        reference = (base.test_accuracy, "the unpruned model")
    if prune_here:
        from hwcompress.evaluate import torch_threads
        from hwcompress.prune import apply_policy
        from hwcompress.search.evaluator import BN_BATCHES, recalibrate_bn

        net = apply_policy(net, policy, (1, *splits.input_shape), channel_multiple=tgt.channel_multiple)
        with torch_threads(1):  # the adaptive-BN step every search candidate gets
            recalibrate_bn(net, splits.train.x, BN_BATCHES)
        if finetune_epochs > 0:
            from hwcompress.finetune import finetune

            finetune(net, teacher, splits, epochs=finetune_epochs, seed=seed, test=False)
    if not isinstance(net, str):
        net.eval()

    def accept(manifest: Manifest, _device_file: Path) -> Manifest:
        ref_acc, ref_name = reference or (manifest.baseline.accuracy, f"its fp32 copy ({manifest.baseline.file})")
        drop = (ref_acc - manifest.result.accuracy) * 100
        if drop > max_accuracy_drop:
            hint = ("pruned layers need recovery: pass --finetune-epochs 1 or more, or export the search's finetuned.pt"
                    if prune_here and finetune_epochs == 0 else "check the policy's precisions and the calibration data")
            raise ModelError(
                f"the exported model's test accuracy is {manifest.result.accuracy * 100:.2f}%, {drop:.1f} pt below "
                f"{ref_name} ({ref_acc * 100:.2f}%; at most {max_accuracy_drop:g} pt allowed, --max-accuracy-drop); "
                f"{hint}; nothing written"
            )
        return manifest

    return export_artifact(
        net, policy, tgt, out_dir, calib=splits.calib, test=splits.test, source_model=model, force=force,
        command=command, seed=seed, cache=MeasurementCache(cache_path), test_limit=test_limit, accept=accept,
    )
