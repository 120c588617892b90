#!/usr/bin/env python3
"""Profile one ONNX model with TensorRT on an NVIDIA GPU; print one JSON object (see benchcore.py).

Standalone: needs numpy, ``tensorrt`` (8.2+ or 10.x; on Jetson it comes with JetPack), the CUDA
runtime library ``libcudart`` (called through ctypes: no pycuda / cuda-python needed) and
``benchcore.py`` in the same folder (Python >= 3.8).

    python3 trt_bench.py --model model.onnx --fp16 --layer-precisions '{"precision": {"features.0": "fp32"}}'

The engine is built on this machine from the ONNX file: FP32 by default; ``--fp16`` / ``--int8``
allow those kernels; a model with Q/DQ nodes enables INT8 (explicit quantization); INT8 without
Q/DQ uses placeholder dynamic ranges (timing only).  ``--layer-precisions`` (a JSON object, or a
path to one: ``{"default_precision": "fp16", "precision": {"<layer>": "fp32"}}``) pins layers to a
precision with OBEY_PRECISION_CONSTRAINTS; a key matches a TensorRT layer whose name equals it
or contains it as a ``/``-separated path segment (torch module ``features.0`` matches
``/features/features.0/Conv``).  Built engines are cached by content in ``--engine-cache``.

Latency is GPU time between CUDA events around each enqueue (the host wall time per run, which
adds launch and synchronisation, is reported as ``host_latency``).  Memory: the device memory
taken by engine, context and I/O buffers (cudaMemGetInfo before/after) as ``peak_memory_bytes``.
"""

from __future__ import annotations

import time

_T_START = time.perf_counter()

import ctypes  # noqa: E402
import ctypes.util  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

SCRIPT_VERSION = "1.0"
TRT_INSTALL_HINT = ("on a Jetson it comes with JetPack (sudo apt-get install nvidia-jetpack); "
                    "on a desktop GPU: python3 -m pip install tensorrt")


def _load_benchcore() -> Any:
    """Import benchcore.py from this script's own folder (no sys.path edit, no package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchcore.py")
    try:
        spec = importlib.util.spec_from_file_location("benchcore", path)
        if spec is None or spec.loader is None:
            raise ImportError(path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except (ImportError, OSError, SyntaxError) as exc:
        sys.stdout.write('{"ok": false, "kind": "environment", "error": "cannot import benchcore.py next to '
                         + os.path.basename(__file__) + ": " + type(exc).__name__ + '"}\n')
        sys.stdout.flush()
        os._exit(4)


bc = _load_benchcore()


def parse_args(argv: list[str] | None = None) -> Any:
    p = bc.base_parser("trt_bench.py", "Build a TensorRT engine from an ONNX model and time it.")
    p.add_argument("--fp16", action="store_true", help="allow FP16 kernels")
    p.add_argument("--int8", action="store_true", help="allow INT8 kernels")
    p.add_argument("--layer-precisions", default="",
                   help="JSON object (or a path to one) with default_precision and precision {layer: fp32|fp16|int8}")
    p.add_argument("--workspace-mb", type=int, default=1024, help="builder workspace limit (MiB)")
    p.add_argument("--device", type=int, default=0, help="CUDA device index")
    p.add_argument("--engine-cache", default="",
                   help="folder of built engines (default ~/.cache/hwcompress/trt-engines; 'none' disables)")
    args = p.parse_args(argv)
    bc.check_args(args)
    if args.workspace_mb < 1:
        bc.fail(f"--workspace-mb must be >= 1, got {args.workspace_mb}", "usage")
    if args.device < 0:
        bc.fail(f"--device must be >= 0, got {args.device}", "usage")
    args.precisions = parse_layer_precisions(args.layer_precisions)
    return args


PRECISIONS = ("fp32", "fp16", "int8")


def parse_layer_precisions(text: str) -> dict[str, Any]:
    """``{"default_precision": str, "precision": {layer: str}}`` from inline JSON or a file path."""
    if not text:
        return {"default_precision": "fp32", "precision": {}}
    try:
        if text.lstrip().startswith("{"):
            data = json.loads(text)
        else:
            with open(text, encoding="utf-8") as fh:
                data = json.load(fh)
    except (OSError, ValueError) as exc:
        bc.fail(f"--layer-precisions: not a JSON object or readable JSON file ({bc.one_line(str(exc))})", "usage")
    if not isinstance(data, dict):
        bc.fail("--layer-precisions: expected a JSON object", "usage")
    if "precision" not in data and "default_precision" not in data:
        data = {"precision": data}  # a bare {layer: precision} map
    layers = data.get("precision") or {}
    default = data.get("default_precision", "fp32")
    if not isinstance(layers, dict):
        bc.fail("--layer-precisions: precision must be an object {layer: fp32|fp16|int8}", "usage")
    for name, prec in [*layers.items(), ("default_precision", default)]:
        if prec not in PRECISIONS:
            bc.fail(f"--layer-precisions: {name} is {prec!r}; use one of {', '.join(PRECISIONS)}", "usage")
    return {"default_precision": default, "precision": {str(k): v for k, v in layers.items()}}


# --------------------------------------------------------------------------- CUDA via ctypes
_CUDART_NAMES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so.10.2",
                 "libcudart.so.10.0")


def _cudart_candidates() -> list[str]:
    out = list(_CUDART_NAMES)
    found = ctypes.util.find_library("cudart")
    if found:
        out.insert(0, found)
    for folder in ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/aarch64-linux/lib",
                   "/usr/lib/aarch64-linux-gnu", "/usr/lib/x86_64-linux-gnu"):
        out += [os.path.join(folder, n) for n in _CUDART_NAMES]
    try:  # the nvidia-cuda-runtime wheel that pip-installed tensorrt pulls in
        spec = importlib.util.find_spec("nvidia.cuda_runtime")
        if spec is not None and spec.submodule_search_locations:
            lib = os.path.join(next(iter(spec.submodule_search_locations)), "lib")
            out += [os.path.join(lib, n) for n in _CUDART_NAMES]
    except (ImportError, ValueError):
        pass
    return out


class Cuda:
    """The few CUDA runtime calls a benchmark needs, through ctypes on libcudart."""

    H2D = 1

    def __init__(self, device: int) -> None:
        lib = None
        for name in _cudart_candidates():
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        if lib is None:
            raise bc.BenchFailure("the CUDA runtime (libcudart) is not installed or not on the library path; "
                                  "install the CUDA toolkit / JetPack", "environment")
        self.lib: ctypes.CDLL = lib
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p
        count = ctypes.c_int(0)
        code = self.lib.cudaGetDeviceCount(ctypes.byref(count))
        if code != 0 or count.value == 0:
            raise bc.BenchFailure(f"no CUDA device is available ({self._message(code) if code else '0 devices'}); "
                                  "check the NVIDIA driver (nvidia-smi)", "environment")
        if device >= count.value:
            raise bc.BenchFailure(f"CUDA device {device} does not exist ({count.value} device(s))", "environment")
        self.check(self.lib.cudaSetDevice(device), "cudaSetDevice")
        self.check(self.lib.cudaFree(ctypes.c_void_p(0)), "CUDA context creation")
        self.device = device

    def _message(self, code: int) -> str:
        msg = self.lib.cudaGetErrorString(code)
        return msg.decode() if msg else f"error {code}"

    def check(self, code: int, what: str) -> None:
        if code != 0:
            raise bc.BenchFailure(f"{what} failed: {self._message(code)}", "environment")

    def device_name(self) -> str:
        buf = ctypes.create_string_buffer(8192)  # cudaDeviceProp starts with char name[256] in every version
        fn = getattr(self.lib, "cudaGetDeviceProperties_v2", None) or self.lib.cudaGetDeviceProperties
        if fn(buf, self.device) != 0:
            return f"CUDA device {self.device}"
        return buf.raw[:256].split(b"\0", 1)[0].decode("utf-8", "replace")

    def mem_get_info(self) -> tuple[int, int]:
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        self.check(self.lib.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)), "cudaMemGetInfo")
        return free.value, total.value

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(1, nbytes))), "cudaMalloc")
        return int(ptr.value or 0)

    def copy_to_device(self, dst: int, array: Any) -> None:
        self.check(self.lib.cudaMemcpy(ctypes.c_void_p(dst), ctypes.c_void_p(array.ctypes.data),
                                       ctypes.c_size_t(array.nbytes), self.H2D), "cudaMemcpy")

    def stream(self) -> int:
        s = ctypes.c_void_p()
        self.check(self.lib.cudaStreamCreate(ctypes.byref(s)), "cudaStreamCreate")
        return int(s.value or 0)

    def event(self) -> ctypes.c_void_p:
        e = ctypes.c_void_p()
        self.check(self.lib.cudaEventCreate(ctypes.byref(e)), "cudaEventCreate")
        return e

    def record(self, event: ctypes.c_void_p, stream: int) -> None:
        self.lib.cudaEventRecord(event, ctypes.c_void_p(stream))

    def elapsed_ms(self, start: ctypes.c_void_p, end: ctypes.c_void_p) -> float:
        self.check(self.lib.cudaEventSynchronize(end), "cudaEventSynchronize")
        ms = ctypes.c_float(0.0)
        self.check(self.lib.cudaEventElapsedTime(ctypes.byref(ms), start, end), "cudaEventElapsedTime")
        return float(ms.value)

    def synchronize(self, stream: int) -> None:
        self.check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")


# --------------------------------------------------------------------------- TensorRT
def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise bc.BenchFailure(f"tensorrt is not installed ({bc.one_line(str(exc))}); {TRT_INSTALL_HINT}",
                              "environment") from None
    return trt


def _major(trt: Any) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        return 0


def _layer_matches(layer_name: str, key: str) -> bool:
    return layer_name == key or ("/" + key + "/") in ("/" + layer_name + "/")


def build_engine(trt: Any, logger: Any, args: Any, notes: list[str]) -> tuple[bytes, dict[str, Any]]:
    """Parse the ONNX file, apply precision flags and constraints, build; (serialized engine, build info)."""
    builder = trt.Builder(logger)
    flags = 0
    if _major(trt) < 10 and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(args.model) if hasattr(parser, "parse_from_file") else \
        parser.parse(open(args.model, "rb").read())
    if not ok:
        errors = [bc.one_line(str(parser.get_error(i))) for i in range(parser.num_errors)]
        raise bc.BenchFailure("TensorRT cannot parse the ONNX model: " + ("; ".join(errors[:3]) or "unknown error"),
                              "model")
    config = builder.create_builder_config()
    workspace = args.workspace_mb << 20
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    else:
        config.max_workspace_size = workspace

    # Static shapes: a dynamic batch axis becomes 1 through an optimization profile.
    profile = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        if all(d >= 0 for d in shape):
            continue
        if any(d < 0 for d in shape[1:]):
            raise bc.BenchFailure(f"cannot feed input {tensor.name!r}: shape {shape} has a dynamic axis other than "
                                  "the batch axis 0; export with static sizes", "model")
        fixed = [1, *shape[1:]]
        profile = profile or builder.create_optimization_profile()
        profile.set_shape(tensor.name, fixed, fixed, fixed)
    if profile is not None:
        config.add_optimization_profile(profile)

    layers = [network.get_layer(i) for i in range(network.num_layers)]
    qdq_types = tuple(getattr(trt.LayerType, n) for n in ("QUANTIZE", "DEQUANTIZE") if hasattr(trt.LayerType, n))
    has_qdq = any(layer.type in qdq_types for layer in layers)
    wanted = args.precisions
    used = set(wanted["precision"].values()) | {wanted["default_precision"]}
    fp16 = args.fp16 or "fp16" in used
    int8 = args.int8 or has_qdq or "int8" in used
    if fp16:
        if not builder.platform_has_fast_fp16:
            notes.append("this GPU has no fast FP16; FP16 kernels may be slower than FP32")
        config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
        if not has_qdq:
            _placeholder_ranges(network, layers)
            notes.append("INT8 without Q/DQ nodes: placeholder dynamic ranges (latency only, outputs meaningless)")

    dtypes = {"fp32": trt.float32, "fp16": trt.float16, "int8": trt.int8}
    constrained = 0
    unmatched = set(wanted["precision"])
    if wanted["precision"] or wanted["default_precision"] != "fp32":
        for layer in layers:
            prec = None
            for key, value in wanted["precision"].items():
                if _layer_matches(layer.name, key):
                    prec = value
                    unmatched.discard(key)
            if prec is None or (prec == "int8" and has_qdq):
                continue  # unnamed layers: builder's choice among the allowed precisions
            try:
                layer.precision = dtypes[prec]
                constrained += 1
            except (TypeError, ValueError, RuntimeError):
                pass  # shape / constant layers take no precision
        if unmatched:
            names = ", ".join(sorted(unmatched)[:5])
            raise bc.BenchFailure(f"--layer-precisions names no TensorRT layer for {names} (layers are named like "
                                  f"{', '.join(layer.name for layer in layers[:3])})", "usage")
        if constrained:
            flag = getattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS", None) or trt.BuilderFlag.STRICT_TYPES
            config.set_flag(flag)
    t = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_ms = (time.perf_counter() - t) * 1e3
    if serialized is None:
        raise bc.BenchFailure("TensorRT could not build an engine for this model (see its log on stderr)", "model")
    info = {"fp16": fp16, "int8": int8, "explicit_quantization": has_qdq, "constrained_layers": constrained,
            "layers": len(layers), "build_ms": build_ms}
    return bytes(serialized), info


def _placeholder_ranges(network: Any, layers: list[Any]) -> None:
    for i in range(network.num_inputs):
        network.get_input(i).set_dynamic_range(-4.0, 4.0)
    for layer in layers:
        for j in range(layer.num_outputs):
            try:
                layer.get_output(j).set_dynamic_range(-4.0, 4.0)
            except (TypeError, ValueError, RuntimeError, AttributeError):
                pass


def engine_cache_path(args: Any, trt: Any, gpu: str) -> str | None:
    """Content-addressed engine file for these inputs, or None when the cache is off."""
    folder = args.engine_cache
    if folder.lower() == "none":
        return None
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "hwcompress", "trt-engines")
    import hashlib

    h = hashlib.sha256()
    h.update(bc.sha256_file(args.model).encode())
    h.update(json.dumps({"fp16": args.fp16, "int8": args.int8, "precisions": args.precisions,
                         "workspace_mb": args.workspace_mb, "trt": str(trt.__version__), "gpu": gpu,
                         "script": SCRIPT_VERSION}, sort_keys=True).encode())
    return os.path.join(folder, h.hexdigest()[:32] + ".engine")


def load_or_build(trt: Any, logger: Any, args: Any, gpu: str, notes: list[str]) -> tuple[bytes, dict[str, Any]]:
    path = engine_cache_path(args, trt, gpu)
    if path and os.path.isfile(path):
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            meta_path = path + ".json"
            info = {}
            if os.path.isfile(meta_path):
                with open(meta_path, encoding="utf-8") as fh:
                    info = json.load(fh)
            info["cached"] = True
            return data, info
        except (OSError, ValueError):
            pass
    data, info = build_engine(trt, logger, args, notes)
    info["cached"] = False
    if path:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            for target, payload in ((path + ".json", json.dumps(info).encode()), (path, data)):
                tmp = f"{target}.{os.getpid()}.tmp"
                with open(tmp, "wb") as fh:
                    fh.write(payload)
                os.replace(tmp, target)
        except OSError as exc:
            notes.append(f"engine cache not written: {bc.one_line(str(exc))}")
    return data, info


class Io:
    """The engine's I/O tensors with device buffers, for the tensor API (TRT >= 8.5) or bindings."""

    def __init__(self, trt: Any, engine: Any, context: Any, cuda: Cuda, seed: int) -> None:
        import numpy as np

        rng = np.random.default_rng(seed)
        self.v3 = hasattr(engine, "num_io_tensors") and hasattr(context, "execute_async_v3")
        self.described: list[dict[str, Any]] = []
        self.bytes = 0
        self.bindings: list[int] = []
        if self.v3:
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            for n in inputs:
                shape = [1 if d < 0 else int(d) for d in engine.get_tensor_shape(n)]
                context.set_input_shape(n, shape)
            for n in names:
                is_input = n in inputs
                shape = [int(d) for d in context.get_tensor_shape(n)]
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(n)))
                ptr = self._alloc(cuda, rng, shape, dtype, is_input, n)
                context.set_tensor_address(n, ptr)
        else:
            for i in range(engine.num_bindings):
                n = engine.get_binding_name(i)
                is_input = engine.binding_is_input(i)
                shape = [int(d) for d in engine.get_binding_shape(i)]
                if is_input and any(d < 0 for d in shape):
                    shape = [1 if d < 0 else d for d in shape]
                    context.set_binding_shape(i, shape)
                if not is_input:
                    shape = [int(d) for d in context.get_binding_shape(i)]
                dtype = np.dtype(trt.nptype(engine.get_binding_dtype(i)))
                self.bindings.append(self._alloc(cuda, rng, shape, dtype, is_input, n))

    def _alloc(self, cuda: Cuda, rng: Any, shape: list[int], dtype: Any, is_input: bool, name: str) -> int:
        import numpy as np

        n = int(np.prod(shape)) if shape else 1
        nbytes = n * dtype.itemsize
        ptr = cuda.malloc(nbytes)
        self.bytes += nbytes
        if is_input:
            if dtype.kind == "f":
                arr = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind == "b":
                arr = rng.integers(0, 2, size=shape).astype(bool)
            else:
                arr = rng.integers(0, 2, size=shape).astype(dtype)
            cuda.copy_to_device(ptr, np.ascontiguousarray(arr))
            self.described.append({"name": name, "shape": shape, "dtype": str(dtype)})
        return ptr


class _Profiler:
    """Per-layer times (ms) from TensorRT's IProfiler, summed over runs."""

    def __init__(self, trt: Any) -> None:
        outer = self

        class P(trt.IProfiler):
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                entry = outer.totals.setdefault(layer_name, [0.0, 0])
                entry[0] += ms
                entry[1] += 1

        self.totals: dict[str, list[Any]] = {}
        self.impl = P()


def main() -> dict[str, Any]:
    args = parse_args()
    phases: dict[str, float] = {}
    notes: list[str] = []
    t = time.perf_counter()
    try:
        import numpy as np  # noqa: F401
    except ImportError as exc:
        raise bc.BenchFailure(f"cannot import numpy: {exc}; on the device run: python3 -m pip install numpy",
                              "environment") from None
    trt = import_tensorrt()
    cuda = Cuda(args.device)
    phases["import_ms"] = (time.perf_counter() - t) * 1e3
    if not os.path.isfile(args.model):
        raise bc.BenchFailure(f"cannot load model: file {args.model} does not exist", "model")
    model_bytes = os.path.getsize(args.model)
    model_sha256 = bc.sha256_file(args.model)
    gpu = cuda.device_name()

    logger = trt.Logger(trt.Logger.WARNING)
    t = time.perf_counter()
    serialized, build = load_or_build(trt, logger, args, gpu, notes)
    phases["build_ms"] = (time.perf_counter() - t) * 1e3

    host_memory = bc.PeakMemory()
    host_memory.start()
    free_before, total = cuda.mem_get_info()
    t = time.perf_counter()
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise bc.BenchFailure("TensorRT could not deserialize the engine it built", "internal")
    context = engine.create_execution_context()
    if context is None:
        raise bc.BenchFailure("TensorRT could not create an execution context (out of GPU memory?)", "environment")
    io = Io(trt, engine, context, cuda, args.seed)
    load_ms = (time.perf_counter() - t) * 1e3
    free_after, _ = cuda.mem_get_info()
    stream = cuda.stream()
    start, end = cuda.event(), cuda.event()
    gpu_ms: list[float] = []

    if io.v3:
        def enqueue() -> Any:
            return context.execute_async_v3(stream)
    else:
        bindings = io.bindings

        def enqueue() -> Any:
            return context.execute_async_v2(bindings, stream)

    def fn() -> None:
        cuda.record(start, stream)
        if not enqueue():
            raise bc.BenchFailure("TensorRT failed to run the engine", "model")
        cuda.record(end, stream)
        gpu_ms.append(cuda.elapsed_ms(start, end))  # waits for the run to finish

    fn()
    t = time.perf_counter()
    host_samples = bc.time_runs(fn, warmup=args.warmup, min_runs=args.min_runs, min_seconds=args.min_seconds,
                                max_runs=args.max_runs, max_seconds=args.max_seconds)
    phases["runs_ms"] = (time.perf_counter() - t) * 1e3
    samples = [ms / 1e3 for ms in gpu_ms[-len(host_samples):]]
    host_mem = host_memory.stop()
    device_mem = max(0, free_before - free_after)
    engine_mem = int(getattr(engine, "device_memory_size_v2", 0) or getattr(engine, "device_memory_size", 0) or 0)

    info = bc.device_info()
    info["gpu"] = gpu
    result: dict[str, Any] = {
        "latency": bc.latency_stats(samples),
        "host_latency": bc.latency_stats(host_samples),
        "peak_memory_bytes": device_mem,
        "memory": {"method": "cudaMemGetInfo", "device_delta_bytes": device_mem,
                   "engine_device_memory_bytes": engine_mem, "io_bytes": io.bytes, "device_total_bytes": total,
                   "host_peak_bytes": host_mem["peak_memory_bytes"], "host": host_mem["memory"]},
        "load_ms": load_ms,
        "model_bytes": model_bytes,
        "model_sha256": model_sha256,
        "runtime": "tensorrt",
        "runtime_version": str(trt.__version__),
        "device": gpu + " | " + bc.device_string(info),
        "device_info": info,
        "threads": args.threads,
        "settings": {**bc.settings_echo(args), "fp16": bool(args.fp16), "int8": bool(args.int8),
                     "layer_precisions": args.precisions, "workspace_mb": args.workspace_mb,
                     "device": args.device},
        "build": build,
        "engine_bytes": len(serialized),
        "inputs": io.described,
        "notes": notes,
        "profiler_version": bc.profiler_version(os.path.abspath(__file__)),
        "timestamp": bc.utc_now(),
    }
    if args.per_node:
        t = time.perf_counter()
        prof = _Profiler(trt)
        context.profiler = prof.impl
        runs = min(args.min_runs, 100)
        for _ in range(runs):
            if io.v3:
                context.execute_async_v3(stream)
            else:
                context.execute_v2(io.bindings)
            cuda.synchronize(stream)
        nodes = [{"name": name, "op_type": "", "mean_us": 1e3 * v[0] / runs, "calls_per_run": v[1] / runs}
                 for name, v in prof.totals.items()]
        nodes.sort(key=lambda d: -d["mean_us"])
        result["per_node"] = {"runs": runs, "nodes": nodes, "total_us": sum(d["mean_us"] for d in nodes)}
        phases["per_node_ms"] = (time.perf_counter() - t) * 1e3
    phases["load_ms"] = load_ms
    phases["script_ms"] = (time.perf_counter() - _T_START) * 1e3
    result["phases"] = phases
    return result


if __name__ == "__main__":
    bc.run_main(main)
