"""Profiler adapters, registered by runtime name: which script profiles a runtime, which model
file it takes, and the command-line arguments that carry a :class:`Target`'s settings.

The adapter is also the runtime's *backend* on the host: every host-side decision that depends
on ``target.runtime`` is a property or method of it (the file the device runs and how it is
built, per-node timing, remote by default, quantization defaults, the artifact's model file,
CUDA and install hints for ``targets check``).  Callers ask ``backend_for(target)`` instead of
comparing runtime names::

    backend = backend_for(target)
    path = backend.device_file(model, shape, stem, target, policy, calib_x, fp32_onnx=fp32)
    measure(path, target, per_node=backend.per_node)

A new runtime is one script in ``profilers/`` plus one :class:`ProfilerAdapter` subclass passed
to :func:`register_adapter`.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any

from hwcompress.errors import ModelError, ProfilerError, TargetError
from hwcompress.records import CompressionPolicy, Target

if TYPE_CHECKING:
    import numpy as np
    from torch import nn


def profilers_dir() -> Path:
    """Folder of the device-side scripts: ``hwcompress/_profilers`` in a wheel, ``profilers/`` in a checkout."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_profilers", here.parent / "profilers"):
        if (candidate / "benchcore.py").is_file():
            return candidate
    raise ProfilerError("the profiler scripts (benchcore.py, ort_bench.py) are missing; reinstall hwcompress")


@functools.cache
def load_benchcore(folder: Path | None = None) -> ModuleType:
    """``benchcore.py`` loaded by path (it is not part of the package; stdlib only at import)."""
    path = (folder or profilers_dir()) / "benchcore.py"
    spec = importlib.util.spec_from_file_location("hwcompress_benchcore", path)
    if spec is None or spec.loader is None:
        raise ProfilerError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pip_install_command(package: str, python: str = "python3", *, externally_managed: bool = False) -> str:
    """``python -m pip install package``, or the venv recipe for a PEP 668 externally managed Python."""
    py = python if python else "python3"
    if externally_managed:
        return (f"python3 -m venv ~/hwc && ~/hwc/bin/pip install {package}, then set connection.python = "
                f"\"~/hwc/bin/python\" (or, into the system Python: {py} -m pip install --break-system-packages "
                f"{package})")
    return f"{py} -m pip install {package}"


def _calib(calib_x: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    import numpy as np

    return calib_x if calib_x is not None else np.zeros((1, *shape[1:]), np.float32)


class ProfilerAdapter:
    """One runtime's backend: how to profile it (script name, model file type, arguments from a
    Target) and every host-side decision that depends on the runtime.

    The default methods describe an ONNX runtime: the device runs a ``.onnx`` file, quantized
    from the fp32 ONNX export (:func:`hwcompress.quantize.quantize_onnx`).
    """

    runtime: str = ""
    script: str = ""
    model_suffixes: tuple[str, ...] = ()
    #: The script profiles many models in one process (``--batch``); False: one process per model.
    supports_batch: bool = True

    # -- backend questions (host side) -------------------------------------------------------
    #: The runtime's name in messages ("ONNX Runtime", "TFLite", "TensorRT").
    display_name: str = ""
    #: The profiler reports per-node times (``measure(..., per_node=True)``), giving each layer's latency share.
    per_node: bool = False
    #: A ``host`` connection override turns a local target of this runtime into an SSH one
    #: (:func:`hwcompress.targets.with_connection`).
    remote_by_default: bool = True
    #: The device needs CUDA: ``targets check`` looks for libcudart and a visible GPU.
    needs_cuda: bool = False
    #: The device file is converted from the PyTorch model; an fp32 ONNX file is not enough.
    needs_torch_model: bool = False
    #: The Python package that provides the runtime on the device (for install hints).
    pip_package: str = ""
    #: :class:`hwcompress.quantize.QuantOptions` fields of the ONNX int8 quantization for this runtime.
    quant_defaults: Mapping[str, Any] = MappingProxyType({})
    #: ``reduce_range=None`` is detected (local x86 without VNNI, any remote CPU); False: None means full range.
    detect_reduce_range: bool = True

    @property
    def device_suffix(self) -> str:
        """Suffix of the file the device runs (``.onnx``, ``.tflite``)."""
        return self.model_suffixes[0]

    @property
    def artifact_file(self) -> str:
        """The model file of an artifact folder that the device runs (``model.onnx``, ``model.tflite``)."""
        return "model" + self.device_suffix

    def device_file(
        self, model: nn.Module | None, shape: tuple[int, ...], stem: Path, target: Target,
        policy: CompressionPolicy | None = None, calib_x: np.ndarray | None = None, *, fp32_onnx: Path | None = None,
    ) -> Path:
        """Build the file the device runs, ``stem`` + :attr:`device_suffix`, and return its path.

        ``policy=None``: the fp32 model (``fp32_onnx`` itself when given, else ``model`` exported).
        With ``policy``: ``fp32_onnx`` (exported from ``model`` beside ``stem`` when not given)
        quantized with :func:`~hwcompress.quantize.quantize_onnx`.  ``calib_x``: (N, C, H, W)
        float32 calibration images for int8 layers (one zero image when None).
        """
        if fp32_onnx is None:
            from hwcompress.export import export_onnx

            if model is None:
                raise ModelError(f"target {target.name}: give the PyTorch model or its fp32 ONNX file")
            if policy is None:
                return export_onnx(model, shape, stem.with_suffix(".onnx"))
            fp32_onnx = export_onnx(model, shape, stem.with_name(stem.name + "-fp32.onnx"))
        if policy is None:
            return Path(fp32_onnx)
        from hwcompress.quantize import quantize_onnx

        return quantize_onnx(fp32_onnx, stem.with_suffix(".onnx"), policy, _calib(calib_x, shape), target)

    def layer_precisions(self, path: Path, model: nn.Module | None = None) -> dict[str, str]:
        """Precision each weight layer runs at in the device file ``path`` (layer name -> fp32 | ...)."""
        from hwcompress.quantize import layer_precisions

        return layer_precisions(path, model)

    def install_command(self, python: str = "python3", *, jetpack: str = "", externally_managed: bool = False,
                        arch: str = "") -> str:
        """The command that installs this runtime's Python package on the device, for its board:
        ``jetpack`` ("4", "5", "6" or ""), ``externally_managed`` (PEP 668), ``arch`` (``platform.machine()``)."""
        return pip_install_command(self.pip_package or self.runtime, python, externally_managed=externally_managed)

    def script_path(self) -> Path:
        return profilers_dir() / self.script

    def profiler_version(self) -> str:
        """Version string the script reports (script version + hash of script and benchcore)."""
        path = self.script_path()
        if not path.is_file():
            raise ProfilerError(f"profiler script {path} is missing; reinstall hwcompress")
        version: str = load_benchcore(path.parent).profiler_version(str(path))
        return version

    def check_model(self, model: Path) -> None:
        """ModelError unless ``model`` is a file type this runtime takes."""
        if model.suffix.lower() not in self.model_suffixes:
            raise ModelError(
                f"{model.name}: the {self.runtime} profiler takes {' or '.join(self.model_suffixes)} files, "
                f"not {model.suffix or 'files without a suffix'}"
            )

    def args(self, model: Path, target: Target, *, per_node: bool = False, seed: int = 0) -> list[str]:
        """Arguments shared by all scripts (benchcore's parser), then :meth:`runtime_args`."""
        m = target.measure
        out = [
            "--model", str(model),
            "--threads", str(target.threads),
            "--warmup", str(m.warmup_runs),
            "--min-runs", str(m.min_runs),
            "--min-seconds", repr(float(m.min_seconds)),
            "--max-runs", str(m.max_runs),
            "--max-seconds", repr(float(m.max_seconds)),
            "--seed", str(seed),
        ]
        if per_node:
            out.append("--per-node")
        return out + self.runtime_args(target)

    def batch_args(self, models: list[Path], target: Target, *, per_node: bool = False, seed: int = 0) -> list[str]:
        """:meth:`args` for batch mode: ``--batch M1 M2 ...`` in place of ``--model M``."""
        if not models:
            raise ProfilerError("batch mode needs at least one model")
        out = self.args(models[0], target, per_node=per_node, seed=seed)
        i = out.index("--model")
        return [*out[:i], "--batch", *(str(m) for m in models), *out[i + 2:]]

    def probe_args(self, target: Target) -> list[str]:
        """Arguments that only check the runtime on the device (no model)."""
        return ["--probe", *self.runtime_args(target)]

    def runtime_args(self, target: Target) -> list[str]:
        """Runtime-specific arguments from ``target.options``."""
        return []


class OrtAdapter(ProfilerAdapter):
    """ONNX Runtime: ``ort_bench.py`` on ``.onnx`` files; per-node times; runs on this machine by default."""

    runtime = "onnxruntime"
    script = "ort_bench.py"
    model_suffixes = (".onnx",)
    display_name = "ONNX Runtime"
    per_node = True
    remote_by_default = False
    pip_package = "onnxruntime"
    GRAPH_OPTIMIZATIONS = ("all", "extended", "basic", "disable")

    def runtime_args(self, target: Target) -> list[str]:
        opt = target.options
        if opt.graph_optimization not in self.GRAPH_OPTIMIZATIONS:
            raise TargetError(
                f"target {target.name}: options.graph_optimization is {opt.graph_optimization!r}; "
                f"choose one of {', '.join(self.GRAPH_OPTIMIZATIONS)}"
            )
        return ["--graph-optimization", opt.graph_optimization, "--provider", opt.execution_provider]


_ADAPTERS: dict[str, ProfilerAdapter] = {}


def register_adapter(adapter: ProfilerAdapter) -> None:
    """Register (or replace) the adapter for ``adapter.runtime``."""
    _ADAPTERS[adapter.runtime] = adapter


def get_adapter(runtime: str) -> ProfilerAdapter:
    """The adapter for ``runtime``; ProfilerError names the runtimes that have one."""
    try:
        return _ADAPTERS[runtime]
    except KeyError:
        raise ProfilerError(
            f"no profiler for runtime {runtime!r} yet; available: {', '.join(sorted(_ADAPTERS))}"
        ) from None


def adapter_names() -> list[str]:
    return sorted(_ADAPTERS)


def runtime_names() -> list[str]:
    """The registered runtimes in registration order (onnxruntime, tflite, tensorrt, then any added)."""
    return list(_ADAPTERS)


def find_adapter(runtime: str) -> ProfilerAdapter | None:
    """The adapter for ``runtime``, or None."""
    return _ADAPTERS.get(runtime)


def backend_for(target: Target) -> ProfilerAdapter:
    """The backend (adapter) of ``target``'s runtime; a one-line TargetError for a runtime without one."""
    adapter = _ADAPTERS.get(target.runtime)
    if adapter is None:
        raise TargetError(
            f"target {target.name}: runtime {target.runtime!r} is not supported; "
            f"choose one of {', '.join(runtime_names())}"
        )
    return adapter


register_adapter(OrtAdapter())


# The TFLite and TensorRT adapters register themselves on import.
import hwcompress.profiling.runtimes  # noqa: E402,F401
