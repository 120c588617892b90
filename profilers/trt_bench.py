#!/usr/bin/env python3
"""Profile one ONNX model with TensorRT on an NVIDIA GPU; print one JSON object (see benchcore.py).

Standalone: needs numpy, ``tensorrt`` (8.2, 8.4-8.6, 10.x or 11.x; on Jetson it comes with JetPack), the CUDA
runtime library ``libcudart`` (called through ctypes: no pycuda / cuda-python needed) and
``benchcore.py`` in the same folder (Python 3.6+, numpy 1.13+).

    python3 trt_bench.py --model model.onnx --fp16 --layer-precisions '{"precision": {"features.0": "fp32"}}'

The engine is built on this machine from the ONNX file: FP32 by default; ``--fp16`` / ``--int8``
allow those kernels; a model with Q/DQ nodes enables INT8 (explicit quantization); INT8 without
Q/DQ uses placeholder dynamic ranges (timing only).  ``--layer-precisions`` (a JSON object, or a
path to one: ``{"default_precision": "fp16", "precision": {"<layer>": "fp32"}}``) pins layers to a
precision with OBEY_PRECISION_CONSTRAINTS; a key matches a TensorRT layer whose name equals it
or contains it as a ``/``-separated path segment (torch module ``features.0`` matches
``/features/features.0/Conv``).  Built engines are cached by content in ``--engine-cache``.

The API path is chosen by what the binding has (:func:`select_api`).  TensorRT 11 has no
precision flags, constraints or dynamic ranges (strongly typed networks only): there the network
is created STRONGLY_TYPED, FP16 layers (``--fp16``: all float layers; ``--layer-precisions``: the
named ones or the default) get float16 casts of their inputs and weights and float32 casts of
their outputs, and INT8 comes only from Q/DQ nodes in the ONNX model.

Latency is GPU time between CUDA events around each enqueue (the host wall time per run, which
adds launch and synchronisation, is reported as ``host_latency``).  Memory: the device memory
taken by engine, context and I/O buffers (cudaMemGetInfo before/after) as ``peak_memory_bytes``.
"""

import time

_T_START = time.perf_counter()

import ctypes  # noqa: E402
import ctypes.util  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any, Dict, List, Optional, Tuple  # noqa: E402

SCRIPT_VERSION = "1.0"
SUPPORTED_TRT = "TensorRT 8.2 (JetPack 4.6), 8.4-8.6, 10.x and 11.x"
TRT_INSTALL_HINT = ("on a Jetson it comes with JetPack (JetPack 4.6: sudo apt-get install python3-libnvinfer "
                    "python3-numpy; JetPack 6: sudo apt-get install nvidia-jetpack); on a desktop GPU: "
                    "python3 -m pip install 'tensorrt>=8.5,<12' (in a venv where the system Python is externally managed)")


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
    except Exception as exc:  # missing, unreadable or broken: still one JSON object, exit 4
        import json
        import platform

        sys.stdout.write(json.dumps({
            "ok": False, "kind": "environment",
            "error": "cannot import benchcore.py next to {} (Python {}): {}: {}".format(
                os.path.basename(__file__), platform.python_version(), type(exc).__name__,
                (str(exc).strip().splitlines() or [""])[0][:300])}) + "\n")
        sys.stdout.flush()
        os._exit(4)


bc = _load_benchcore()


def parse_args(argv: Optional[List[str]] = None) -> Any:
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


def parse_layer_precisions(text: str) -> Dict[str, Any]:
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


def _cudart_candidates() -> List[str]:
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

    def mem_get_info(self) -> Tuple[int, int]:
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
    except Exception as exc:  # a binding whose libraries do not load, or built for another numpy
        raise bc.BenchFailure(f"tensorrt does not import ({type(exc).__name__}: {bc.one_line(str(exc))}); "
                              f"{TRT_INSTALL_HINT}", "environment") from None
    return trt


def _major(trt: Any) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        return 0


def select_api(trt: Any) -> Dict[str, Any]:
    """The TensorRT API paths this binding offers, chosen by what its classes have (not by version
    number), so that 8.2 (JetPack 4.6), 8.4-8.6, 10.x and 11.x each get a path that exists there:

    - ``typing``: "weak" (builder flags FP16/INT8, ``layer.precision`` with OBEY_PRECISION_CONSTRAINTS or
      STRICT_TYPES, dynamic ranges for INT8 without Q/DQ: <= 10.x) or "strong" (no precision flags: the
      network is STRONGLY_TYPED and per-layer FP16 is built with casts: 11.x);
    - ``explicit_batch``: the network needs the EXPLICIT_BATCH flag (8.x still has implicit batch);
    - ``workspace``: "memory_pool" (``set_memory_pool_limit``, 8.4+) or "max_workspace_size" (8.2/8.3);
    - ``io``: "tensors" (named tensors + ``execute_async_v3``, 8.5+) or "bindings" (8.2/8.4);
    - ``constraint_flag``: the BuilderFlag that makes ``layer.precision`` binding, or None;
    - ``dynamic_range``, ``fast_fp16_query``, ``cast_layer``: whether ``ITensor.set_dynamic_range``,
      ``Builder.platform_has_fast_fp16`` and ``INetworkDefinition.add_cast`` exist;
    - ``device_memory``: the ICudaEngine attribute with the engine's device memory size.

    BenchFailure ("environment") when a binding offers no known path for one of them.
    """
    def has(cls: str, name: str) -> bool:
        return hasattr(getattr(trt, cls, None), name)

    version = str(getattr(trt, "__version__", "?"))
    api: Dict[str, Any] = {"version": version}
    if has("BuilderFlag", "FP16") and has("BuilderFlag", "INT8"):
        api["typing"] = "weak"
    elif has("NetworkDefinitionCreationFlag", "STRONGLY_TYPED") and has("INetworkDefinition", "add_cast"):
        api["typing"] = "strong"
    else:
        raise bc.BenchFailure(f"TensorRT {version} has neither FP16/INT8 builder flags nor strongly typed "
                              f"networks; trt_bench.py supports {SUPPORTED_TRT}", "environment")
    api["explicit_batch"] = has("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH") and has("Builder", "max_batch_size")
    if has("IBuilderConfig", "set_memory_pool_limit") and hasattr(trt, "MemoryPoolType"):
        api["workspace"] = "memory_pool"
    elif has("IBuilderConfig", "max_workspace_size"):
        api["workspace"] = "max_workspace_size"
    else:
        raise bc.BenchFailure(f"TensorRT {version} has no workspace limit API known to trt_bench.py "
                              f"(supported: {SUPPORTED_TRT})", "environment")
    if all(has("ICudaEngine", n) for n in ("num_io_tensors", "get_tensor_name", "get_tensor_mode")) and \
            all(has("IExecutionContext", n) for n in ("execute_async_v3", "set_tensor_address", "set_input_shape")):
        api["io"] = "tensors"
    elif has("ICudaEngine", "num_bindings") and has("IExecutionContext", "execute_async_v2"):
        api["io"] = "bindings"
    else:
        raise bc.BenchFailure(f"TensorRT {version} has neither named I/O tensors nor bindings; trt_bench.py "
                              f"supports {SUPPORTED_TRT}", "environment")
    api["constraint_flag"] = None
    if api["typing"] == "weak":
        for flag in ("OBEY_PRECISION_CONSTRAINTS", "STRICT_TYPES"):
            if has("BuilderFlag", flag):
                api["constraint_flag"] = flag
                break
    api["dynamic_range"] = has("ITensor", "set_dynamic_range")
    api["fast_fp16_query"] = has("Builder", "platform_has_fast_fp16")
    api["cast_layer"] = has("INetworkDefinition", "add_cast")
    api["device_memory"] = next((n for n in ("device_memory_size_v2", "device_memory_size") if has("ICudaEngine", n)),
                                "")
    return api


def _layer_matches(layer_name: str, key: str) -> bool:
    return layer_name == key or ("/" + key + "/") in ("/" + layer_name + "/")


def layer_plan(layer_names: List[str], wanted: Dict[str, Any]) -> Tuple[Dict[str, str], List[str]]:
    """``({layer: precision} for the layers a key of wanted["precision"] names, unmatched keys)``;
    where several keys match a layer, the last one wins."""
    plan: Dict[str, str] = {}
    unmatched = set(wanted["precision"])
    for name in layer_names:
        for key, value in wanted["precision"].items():
            if _layer_matches(name, key):
                plan[name] = value
                unmatched.discard(key)
    return plan, sorted(unmatched)


#: Layer types that compute in floating point and so follow a per-layer FP16 request on a
#: strongly typed network; others (shape, constant, cast, Q/DQ, data movement) follow their inputs.
FP16_LAYER_TYPES = ("CONVOLUTION", "DECONVOLUTION", "MATRIX_MULTIPLY", "FULLY_CONNECTED", "ACTIVATION", "POOLING",
                    "ELEMENTWISE", "SCALE", "SOFTMAX", "REDUCE", "NORMALIZATION", "UNARY", "LRN", "RESIZE",
                    "EINSUM", "PARAMETRIC_RELU", "TOPK")
_WEIGHT_ATTRS = {"CONVOLUTION": ("IConvolutionLayer", ("kernel", "bias")),
                 "DECONVOLUTION": ("IDeconvolutionLayer", ("kernel", "bias")),
                 "FULLY_CONNECTED": ("IFullyConnectedLayer", ("kernel", "bias")),
                 "SCALE": ("IScaleLayer", ("shift", "scale", "power"))}


def cast_layers_to_fp16(trt: Any, network: Any, layers: List[Any], fp16: List[str], keep: List[Any]) -> int:
    """Run the layers named in ``fp16`` in FP16 on a strongly typed network: their float32 inputs
    are cast to float16 (unless a layer of ``fp16`` made them), their float32 weights are converted
    (arrays kept alive in ``keep`` until the build), and each output is cast back to float32 for
    consumers outside ``fp16`` and for network outputs.  Returns the number of layers cast."""
    import numpy as np

    wanted = set(fp16)
    types = {getattr(trt.LayerType, n) for n in FP16_LAYER_TYPES if hasattr(trt.LayerType, n)}
    producer: Dict[str, Any] = {}
    for layer in layers:
        for j in range(layer.num_outputs):
            producer[layer.get_output(j).name] = layer
    chosen = [layer for layer in layers if layer.name in wanted and layer.type in types]
    chosen_names = {layer.name for layer in chosen}
    outputs = {network.get_output(i).name for i in range(network.num_outputs)}
    for layer in chosen:
        for i in range(layer.num_inputs):
            t = layer.get_input(i)
            if t is None or t.dtype != trt.float32:
                continue
            src = producer.get(t.name)
            if src is not None and src.name in chosen_names:
                continue  # already float16
            cast = network.add_cast(t, trt.float16)
            cast.name = layer.name + "/hwc_to_fp16_" + str(i)
            layer.set_input(i, cast.get_output(0))
        spec = _WEIGHT_ATTRS.get(str(layer.type).split(".")[-1])
        if spec is not None and hasattr(trt, spec[0]):
            layer.__class__ = getattr(trt, spec[0])  # the binding's idiom to reach a layer's own attributes
            for attr in spec[1]:
                w = getattr(layer, attr, None)
                if w is None or not getattr(w, "size", 0) or w.dtype != trt.float32:
                    continue
                arr = np.ascontiguousarray(w.numpy().astype(np.float16))
                keep.append(arr)
                setattr(layer, attr, trt.Weights(arr))
    for layer in chosen:
        for j in range(layer.num_outputs):
            out = layer.get_output(j)
            consumers = [(other, i) for other in layers if other.name not in chosen_names
                         for i in range(other.num_inputs)
                         if other.get_input(i) is not None and other.get_input(i).name == out.name]
            if not consumers and out.name not in outputs:
                continue
            back = network.add_cast(out, trt.float32)
            back.name = layer.name + "/hwc_to_fp32_" + str(j)
            restored = back.get_output(0)
            for other, i in consumers:
                other.set_input(i, restored)
            if out.name in outputs:
                name = out.name
                network.unmark_output(out)
                out.name = name + "/fp16"
                restored.name = name
                network.mark_output(restored)
    return len(chosen)


def build_engine(trt: Any, logger: Any, args: Any, notes: List[str]) -> Tuple[bytes, Dict[str, Any]]:
    """Parse the ONNX file, apply precisions (flags and constraints, or casts on a strongly typed
    network), build; (serialized engine, build info)."""
    api = select_api(trt)
    builder = trt.Builder(logger)
    flags = 0
    if api["explicit_batch"]:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if api["typing"] == "strong":
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if hasattr(parser, "parse_from_file"):
        ok = parser.parse_from_file(args.model)
    else:
        with open(args.model, "rb") as fh:
            ok = parser.parse(fh.read())
    if not ok:
        errors = [bc.one_line(str(parser.get_error(i))) for i in range(parser.num_errors)]
        raise bc.BenchFailure("TensorRT cannot parse the ONNX model: " + ("; ".join(errors[:3]) or "unknown error"),
                              "model")
    config = builder.create_builder_config()
    workspace = args.workspace_mb << 20
    if api["workspace"] == "memory_pool":
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
    plan, unmatched = layer_plan([layer.name for layer in layers], wanted)
    if unmatched:
        raise bc.BenchFailure(f"--layer-precisions names no TensorRT layer for {', '.join(unmatched[:5])} (layers are "
                              f"named like {', '.join(layer.name for layer in layers[:3])})", "usage")
    used = set(wanted["precision"].values()) | {wanted["default_precision"]}
    fp16 = args.fp16 or "fp16" in used
    int8 = args.int8 or has_qdq or "int8" in used
    constrained = 0
    keep: List[Any] = []
    if api["typing"] == "strong":
        if (args.int8 or "int8" in used) and not has_qdq:
            raise bc.BenchFailure(
                f"TensorRT {api['version']} builds strongly typed networks only: INT8 comes from Q/DQ nodes in the "
                "ONNX model (export it quantized, e.g. an int8 policy), not from --int8 or --layer-precisions", "usage")
        default = "fp16" if args.fp16 else wanted["default_precision"]
        if args.fp16:
            notes.append(f"TensorRT {api['version']} is strongly typed: --fp16 runs every float layer in FP16 "
                         "(cast per layer) instead of letting the builder choose")
        fp16_layers = [layer.name for layer in layers if plan.get(layer.name, default) == "fp16"]
        constrained = cast_layers_to_fp16(trt, network, layers, fp16_layers, keep) if fp16_layers else 0
        fp16 = constrained > 0
    else:
        if fp16:
            if api["fast_fp16_query"] and not builder.platform_has_fast_fp16:
                notes.append("this GPU has no fast FP16; FP16 kernels may be slower than FP32")
            config.set_flag(trt.BuilderFlag.FP16)
        if int8:
            config.set_flag(trt.BuilderFlag.INT8)
            if not has_qdq:
                if not api["dynamic_range"]:
                    raise bc.BenchFailure(f"TensorRT {api['version']} has no dynamic ranges: INT8 needs Q/DQ nodes "
                                          "in the ONNX model", "usage")
                _placeholder_ranges(network, layers)
                notes.append("INT8 without Q/DQ nodes: placeholder dynamic ranges (latency only, outputs meaningless)")
        dtypes = {"fp32": trt.float32, "fp16": trt.float16, "int8": trt.int8}
        for layer in layers:
            prec = plan.get(layer.name)
            if prec is None or (prec == "int8" and has_qdq):
                continue  # unnamed layers: builder's choice among the allowed precisions
            try:
                layer.precision = dtypes[prec]
                constrained += 1
            except (TypeError, ValueError, RuntimeError):
                pass  # shape / constant layers take no precision
        if constrained:
            if api["constraint_flag"] is None:
                raise bc.BenchFailure(f"TensorRT {api['version']} has no precision-constraint flag; "
                                      "--layer-precisions cannot be applied", "environment")
            config.set_flag(getattr(trt.BuilderFlag, api["constraint_flag"]))
    t = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_ms = (time.perf_counter() - t) * 1e3
    del keep  # the builder has copied the converted weights
    if serialized is None:
        raise bc.BenchFailure("TensorRT could not build an engine for this model (see its log on stderr)", "model")
    info = {"fp16": fp16, "int8": int8, "explicit_quantization": has_qdq, "constrained_layers": constrained,
            "layers": len(layers), "build_ms": build_ms, "typing": api["typing"], "io": api["io"],
            "workspace_api": api["workspace"]}
    return bytes(serialized), info


def _placeholder_ranges(network: Any, layers: List[Any]) -> None:
    for i in range(network.num_inputs):
        network.get_input(i).set_dynamic_range(-4.0, 4.0)
    for layer in layers:
        for j in range(layer.num_outputs):
            try:
                layer.get_output(j).set_dynamic_range(-4.0, 4.0)
            except (TypeError, ValueError, RuntimeError, AttributeError):
                pass


def engine_cache_path(args: Any, trt: Any, gpu: str) -> Optional[str]:
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


def load_or_build(trt: Any, logger: Any, args: Any, gpu: str, notes: List[str]) -> Tuple[bytes, Dict[str, Any]]:
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

    def __init__(self, trt: Any, engine: Any, context: Any, cuda: Cuda, seed: int, api: Dict[str, Any]) -> None:
        import numpy as np

        rng = bc.make_rng(seed)
        self.v3 = api["io"] == "tensors"
        self.described: List[Dict[str, Any]] = []
        self.bytes = 0
        self.bindings: List[int] = []
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

    def _alloc(self, cuda: Cuda, rng: Any, shape: List[int], dtype: Any, is_input: bool, name: str) -> int:
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

        self.totals: Dict[str, List[Any]] = {}
        self.impl = P()


def main() -> Dict[str, Any]:
    args = parse_args()
    if args.batch:
        raise bc.BenchFailure("batch mode not supported for this runtime (TensorRT builds one engine per model); "
                              "profile each model with --model", "usage")
    phases: Dict[str, float] = {}
    notes: List[str] = []
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
    io = Io(trt, engine, context, cuda, args.seed, select_api(trt))
    load_ms = (time.perf_counter() - t) * 1e3
    free_after, _ = cuda.mem_get_info()
    stream = cuda.stream()
    start, end = cuda.event(), cuda.event()
    gpu_ms: List[float] = []

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
    attr = select_api(trt)["device_memory"]
    engine_mem = int(getattr(engine, attr, 0) or 0) if attr else 0

    info = bc.device_info()
    info["gpu"] = gpu
    result: Dict[str, Any] = {
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
