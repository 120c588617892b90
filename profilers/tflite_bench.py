#!/usr/bin/env python3
"""Profile one .tflite model with the LiteRT interpreter; print one JSON object (see benchcore.py).

Standalone: needs numpy, ``ai-edge-litert`` (or the older ``tflite-runtime``, or a full TensorFlow's
``tensorflow.lite``) and ``benchcore.py`` in the same folder (Python 3.6+, numpy 1.13+).

    python3 tflite_bench.py --model model.tflite --threads 4 --xnnpack --warmup 10 --min-runs 50

Inputs are random (seeded) from the model's input details: float tensors get N(0, 1) values;
quantized int8 / uint8 / int16 inputs get N(0, 1) values quantized with the input's own scale
and zero point; other integer and bool inputs get 0 / 1.  A dynamic batch axis (-1 in the
shape signature) becomes 1; any other dynamic axis is refused.  XNNPACK is LiteRT's default
delegate; ``--no-xnnpack`` uses the op resolver without default delegates (plain builtin kernels).
"""

import time

_T_START = time.perf_counter()

import importlib.util  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any, Dict, List, Optional, Tuple  # noqa: E402

SCRIPT_VERSION = "1.1"


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
    p = bc.base_parser("tflite_bench.py", "Profile a .tflite model with the LiteRT interpreter.")
    p.add_argument("--xnnpack", dest="xnnpack", action="store_true", default=True,
                   help="apply LiteRT's default XNNPACK delegate (default)")
    p.add_argument("--no-xnnpack", dest="xnnpack", action="store_false",
                   help="builtin kernels only (op resolver without default delegates)")
    args = p.parse_args(argv)
    bc.check_args(args)
    return args


#: Interpreter packages in the order they are tried: (import name, package name on PyPI).
INTERPRETERS = (("ai_edge_litert", "ai-edge-litert"), ("tflite_runtime", "tflite-runtime"),
                ("tensorflow", "tensorflow"))


class _TfLite:
    """``tensorflow.lite`` seen as an interpreter module (``Interpreter``, ``OpResolverType``)."""

    def __init__(self, tf: Any) -> None:
        self.Interpreter = tf.lite.Interpreter
        self.OpResolverType = tf.lite.experimental.OpResolverType


def import_interpreter() -> Tuple[Any, str, str]:
    """(interpreter module, package name, version): ai-edge-litert, else tflite-runtime, else the
    ``tensorflow.lite`` of a full TensorFlow; BenchFailure ("environment") naming all three."""
    errors = []
    for name, package in INTERPRETERS:
        try:
            if name == "tensorflow":
                import tensorflow as tf

                mod: Any = _TfLite(tf)
                top: Any = tf
            else:
                top = __import__(name)
                mod = __import__(name + ".interpreter", fromlist=["Interpreter"])
        except ImportError as exc:
            errors.append(f"{package}: {bc.one_line(str(exc)) or type(exc).__name__}")
            continue
        except Exception as exc:  # a tensorflow without lite.Interpreter, a wheel built for another numpy
            errors.append(f"{package}: {type(exc).__name__}: {bc.one_line(str(exc))}")
            continue
        return mod, package, str(getattr(top, "__version__", "unknown"))
    raise bc.BenchFailure(
        "LiteRT is not installed (" + "; ".join(errors) + "); on the device run: python3 -m pip install "
        "ai-edge-litert (with an externally managed Python, in a venv: python3 -m venv ~/hwc && ~/hwc/bin/pip "
        "install ai-edge-litert; 32-bit OS: tflite-runtime)", "environment")


def make_feeds(interp: Any, seed: int) -> Tuple[List[Tuple[int, Any]], List[Dict[str, Any]]]:
    """Random arrays for the interpreter's inputs (after any batch resize) and their description."""
    import numpy as np

    rng = bc.make_rng(seed)
    feeds: List[Tuple[int, Any]] = []
    described: List[Dict[str, Any]] = []
    for d in interp.get_input_details():
        dtype = np.dtype(d["dtype"])
        shape = [int(v) for v in d["shape"]]
        scale, zero_point = d.get("quantization", (0.0, 0))
        q = d.get("quantization_parameters") or {}
        scales = q.get("scales")
        zps = q.get("zero_points")
        if scales is not None and len(scales) > 1:
            raise bc.BenchFailure(f"cannot feed input {d['name']!r}: per-channel quantized inputs are not supported",
                                  "model")
        if dtype.kind == "f":
            arr = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu" and scale and float(scale) > 0:
            info = np.iinfo(dtype)
            zp = int(zps[0]) if zps is not None and len(zps) else int(zero_point)
            values = np.round(rng.standard_normal(shape) / float(scale)) + zp
            arr = np.clip(values, info.min, info.max).astype(dtype)
        elif dtype.kind in "iu":
            arr = rng.integers(0, 2, size=shape).astype(dtype)  # small values: valid as indices too
        elif dtype.kind == "b":
            arr = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise bc.BenchFailure(f"cannot feed input {d['name']!r}: dtype {dtype} is not supported "
                                  "(supported: float, int, uint, bool tensors)", "model")
        feeds.append((int(d["index"]), arr))
        entry: Dict[str, Any] = {"name": d["name"], "shape": shape, "dtype": str(dtype)}
        if scale:
            entry["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
        described.append(entry)
    return feeds, described


def _resize_dynamic_inputs(interp: Any) -> None:
    """Give a dynamic batch axis (-1 in the shape signature) the size 1; refuse other dynamic axes."""
    resized = False
    for d in interp.get_input_details():
        sig = [int(v) for v in d.get("shape_signature", d["shape"])]
        if all(v >= 0 for v in sig):
            continue
        for axis, v in enumerate(sig):
            if v < 0 and axis != 0:
                raise bc.BenchFailure(
                    f"cannot feed input {d['name']!r}: axis {axis} is dynamic (shape signature {sig}); "
                    "only the batch axis 0 may be dynamic, convert with static sizes", "model")
        interp.resize_tensor_input(d["index"], [1 if v < 0 else v for v in sig], strict=False)
        resized = True
    if resized:
        interp.allocate_tensors()


def load_interpreter(mod: Any, args: Any) -> Any:
    resolver = mod.OpResolverType.AUTO if args.xnnpack else mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interp = mod.Interpreter(model_path=args.model, num_threads=args.threads,
                                 experimental_op_resolver_type=resolver)
        interp.allocate_tensors()
    except Exception as exc:  # the interpreter raises ValueError / RuntimeError for every load problem
        raise bc.BenchFailure(f"cannot load model: {bc.one_line(str(exc)) or type(exc).__name__}", "model") from None
    _resize_dynamic_inputs(interp)
    return interp


def ops_summary(interp: Any) -> Dict[str, Any]:
    """Op counts by name and how many delegate kernels (XNNPACK) took part of the graph."""
    counts: Dict[str, int] = {}
    try:
        ops = interp._get_ops_details()  # private but stable since TF 2.5; best effort
    except Exception:
        return {}
    for op in ops:
        name = str(op.get("op_name", "?"))
        counts[name] = counts.get(name, 0) + 1
    return {"ops": counts, "delegated": counts.get("DELEGATE", 0) > 0}


def _run_fn(interp: Any, feeds: List[Tuple[int, Any]]) -> Any:
    for index, arr in feeds:
        interp.set_tensor(index, arr)
    invoke = interp.invoke

    def fn() -> Any:
        return invoke()

    try:
        fn()
    except Exception as exc:
        raise bc.BenchFailure(f"model failed to run: {bc.one_line(str(exc)) or type(exc).__name__}", "model") from None
    return fn


def main() -> Dict[str, Any]:
    args = parse_args()
    phases: Dict[str, float] = {}
    t = time.perf_counter()
    try:
        import numpy as np  # noqa: F401
    except ImportError as exc:
        raise bc.BenchFailure(f"cannot import numpy: {exc}; on the device run: python3 -m pip install numpy",
                              "environment") from None
    mod, package, version = import_interpreter()
    phases["import_ms"] = (time.perf_counter() - t) * 1e3
    if args.batch:
        summary = bc.run_batch(args, lambda: profile_model(mod, package, version, args))
        summary["phases"] = dict(phases, script_ms=(time.perf_counter() - _T_START) * 1e3)
        return summary
    result = profile_model(mod, package, version, args)
    result["phases"] = dict(phases, **result["phases"])
    result["phases"]["script_ms"] = (time.perf_counter() - _T_START) * 1e3
    return result


def profile_model(mod: Any, package: str, version: str, args: Any) -> Dict[str, Any]:
    """The result of one model (``args.model``) without ``ok``; BenchFailure when it cannot be profiled."""
    phases: Dict[str, float] = {}
    if not os.path.isfile(args.model):
        raise bc.BenchFailure(f"cannot load model: file {args.model} does not exist", "model")
    model_bytes = os.path.getsize(args.model)
    model_sha256 = bc.sha256_file(args.model)

    memory = bc.PeakMemory()
    memory.start()
    t = time.perf_counter()
    interp = load_interpreter(mod, args)
    load_ms = (time.perf_counter() - t) * 1e3
    memory.sample()
    feeds, described = make_feeds(interp, args.seed)
    fn = _run_fn(interp, feeds)
    t = time.perf_counter()
    samples = bc.time_runs(fn, warmup=args.warmup, min_runs=args.min_runs, min_seconds=args.min_seconds,
                           max_runs=args.max_runs, max_seconds=args.max_seconds)
    phases["runs_ms"] = (time.perf_counter() - t) * 1e3
    mem = memory.stop()
    graph = ops_summary(interp)
    del interp, fn

    info = bc.device_info()
    result: Dict[str, Any] = {
        "latency": bc.latency_stats(samples),
        **mem,
        "load_ms": load_ms,
        "model_bytes": model_bytes,
        "model_sha256": model_sha256,
        "runtime": "tflite",
        "runtime_version": f"{package} {version}",
        "device": bc.device_string(info),
        "device_info": info,
        "threads": args.threads,
        "settings": {**bc.settings_echo(args), "xnnpack": bool(args.xnnpack)},
        "graph": graph,
        "inputs": described,
        "profiler_version": bc.profiler_version(os.path.abspath(__file__)),
        "timestamp": bc.utc_now(),
    }
    if args.per_node:
        # LiteRT's Python API exposes no per-op timings; say so instead of guessing.
        result["per_node"] = {"runs": 0, "nodes": [], "total_us": 0.0,
                              "note": "per-op times are not available from the LiteRT Python interpreter"}
    phases["load_ms"] = load_ms
    result["phases"] = phases
    return result


if __name__ == "__main__":
    bc.run_main(main)
