"""Profiler adapters, registered by runtime name: which script profiles a runtime, which model
file it takes, and the command-line arguments that carry a :class:`Target`'s settings.

A new runtime is one script in ``profilers/`` plus one :class:`ProfilerAdapter` subclass passed
to :func:`register_adapter`.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType

from hwcompress.errors import ModelError, ProfilerError, TargetError
from hwcompress.records import Target


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


class ProfilerAdapter:
    """How to profile one runtime: script name, model file type and arguments from a Target."""

    runtime: str = ""
    script: str = ""
    model_suffixes: tuple[str, ...] = ()
    #: The script profiles many models in one process (``--batch``); False: one process per model.
    supports_batch: bool = True

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
    """ONNX Runtime: ``ort_bench.py`` on ``.onnx`` files."""

    runtime = "onnxruntime"
    script = "ort_bench.py"
    model_suffixes = (".onnx",)
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


register_adapter(OrtAdapter())


# The TFLite and TensorRT adapters register themselves on import.
import hwcompress.profiling.runtimes  # noqa: E402,F401
