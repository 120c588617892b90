#!/usr/bin/env python3
"""Profile one ONNX model with ONNX Runtime; print one JSON object (see benchcore.py).

Standalone: needs numpy, onnxruntime and ``benchcore.py`` in the same folder (Python 3.6+, numpy 1.13+).

    python3 ort_bench.py --model model.onnx --threads 1 --warmup 10 --min-runs 50 --min-seconds 0.25

Inputs are random (seeded) from the model's declared inputs: float/float16/double/int/bool
tensors; a symbolic batch axis (0) becomes 1; any other symbolic or unknown axis is refused.
With ``--per-node`` a second, profiled session gives each node's mean time per run (us),
so the main latency is never measured with profiling overhead.  ``--batch M1 M2 ...`` profiles
many models in this one process (one JSON line each, then a summary line; see benchcore.py).
"""

import time

_T_START = time.perf_counter()

import importlib.util  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any, Dict, List, Optional, Tuple  # noqa: E402

SCRIPT_VERSION = "1.1"
GRAPH_OPT = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
             "disable": "ORT_DISABLE_ALL"}
DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(int16)": "int16", "tensor(int32)": "int32", "tensor(int64)": "int64",
    "tensor(uint8)": "uint8", "tensor(uint16)": "uint16", "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64", "tensor(bool)": "bool",
}


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
    p = bc.base_parser("ort_bench.py", "Profile an ONNX model with ONNX Runtime.")
    p.add_argument("--graph-optimization", choices=sorted(GRAPH_OPT), default="all")
    p.add_argument("--provider", default="CPUExecutionProvider", help="ONNX Runtime execution provider")
    args = p.parse_args(argv)
    bc.check_args(args)
    return args


def make_feeds(inputs: List[Any], seed: int) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """Random arrays for the session's inputs and their description; BenchFailure if one cannot be fed."""
    rng = bc.make_rng(seed)
    feeds: Dict[str, Any] = {}
    described: List[Dict[str, Any]] = []
    for inp in inputs:
        dtype = DTYPES.get(inp.type)
        if dtype is None:
            raise bc.BenchFailure(
                f"cannot feed input {inp.name!r}: type {inp.type} is not supported "
                f"(supported: float, float16, double, int, uint, bool tensors)", "model")
        shape: List[int] = []
        for axis, dim in enumerate(inp.shape):
            if isinstance(dim, int) and dim >= 0:
                shape.append(dim)
            elif axis == 0:
                shape.append(1)  # symbolic or unknown batch axis
            else:
                raise bc.BenchFailure(
                    f"cannot feed input {inp.name!r}: axis {axis} has symbolic or unknown size {dim!r} "
                    f"(shape {list(inp.shape)}); only the batch axis 0 may be symbolic, export with static sizes",
                    "model")
        if dtype.startswith("float"):
            arr = rng.standard_normal(shape).astype(dtype)
        elif dtype == "bool":
            arr = rng.integers(0, 2, size=shape).astype(bool)
        else:
            arr = rng.integers(0, 2, size=shape).astype(dtype)  # small values: valid as indices too
        feeds[inp.name] = arr
        described.append({"name": inp.name, "shape": shape, "dtype": dtype})
    return feeds, described


def _session_options(ort: Any, args: Any, profile_prefix: Optional[str] = None) -> Any:
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPT[args.graph_optimization])
    so.log_severity_level = 3  # errors only, on stderr
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def _create_session(ort: Any, args: Any, profile_prefix: Optional[str] = None) -> Any:
    try:
        return ort.InferenceSession(args.model, sess_options=_session_options(ort, args, profile_prefix),
                                    providers=[args.provider])
    except Exception as exc:  # ORT raises its own exception types for every load problem
        raise bc.BenchFailure(f"cannot load model: {bc.one_line(str(exc)) or type(exc).__name__}", "model") from None


def _run_fn(sess: Any, feeds: Dict[str, Any]) -> Any:
    run = sess.run

    def fn() -> Any:
        return run(None, feeds)

    try:
        fn()
    except Exception as exc:
        raise bc.BenchFailure(f"model failed to run: {bc.one_line(str(exc)) or type(exc).__name__}", "model") from None
    return fn


def per_node_profile(ort: Any, args: Any, feeds: Dict[str, Any]) -> Dict[str, Any]:
    """Mean time per run of each node (us), from ORT's profiler, warm-up runs excluded."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ort_bench_") as tmp:
        sess = _create_session(ort, args, os.path.join(tmp, "profile"))
        fn = _run_fn(sess, feeds)  # one extra untimed run
        runs = bc.time_runs(fn, warmup=args.warmup, min_runs=args.min_runs, min_seconds=0.0,
                            max_runs=args.max_runs, max_seconds=args.max_seconds)
        path = sess.end_profiling()
        with open(path, encoding="utf-8") as fh:
            events = json.load(fh)
    if isinstance(events, dict):
        events = events.get("traceEvents", [])
    run_starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    skip = len(run_starts) - len(runs)  # the first run and the warm-up runs
    if skip < 0 or not runs:
        raise bc.BenchFailure("ONNX Runtime profile has fewer model_run events than runs", "environment")
    first_ts = run_starts[skip]
    nodes: Dict[str, Dict[str, Any]] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time") or e.get("ts", 0) < first_ts:
            continue
        node = name[: -len("_kernel_time")]
        entry = nodes.setdefault(node, {"name": node, "op_type": e.get("args", {}).get("op_name", ""),
                                        "total_us": 0.0, "calls": 0})
        entry["total_us"] += float(e.get("dur", 0))
        entry["calls"] += 1
    n_runs = len(run_starts) - skip
    out = []
    for entry in nodes.values():
        out.append({"name": entry["name"], "op_type": entry["op_type"],
                    "mean_us": entry["total_us"] / n_runs, "calls_per_run": entry["calls"] / n_runs})
    out.sort(key=lambda d: -d["mean_us"])
    return {"runs": n_runs, "nodes": out, "total_us": sum(d["mean_us"] for d in out)}


def import_runtime(args: Any, phases: Dict[str, float]) -> Any:
    """numpy and onnxruntime imported, the provider checked; returns the ``onnxruntime`` module."""
    t = time.perf_counter()
    try:
        import numpy as np
    except ImportError as exc:
        raise bc.BenchFailure(f"cannot import numpy: {exc}; on the device run: python3 -m pip install numpy",
                              "environment") from None
    try:
        import onnxruntime as ort
    except Exception as exc:  # ImportError, or what an onnxruntime built for another numpy raises
        raise bc.BenchFailure(
            f"cannot import onnxruntime ({type(exc).__name__}: {bc.one_line(str(exc))}) with numpy {np.__version__}; "
            "on the device run: python3 -m pip install onnxruntime (an onnxruntime wheel needs the numpy it was "
            "built for: 1.10 on Python 3.6 needs numpy >= 1.16.6)", "environment") from None
    phases["import_ms"] = (time.perf_counter() - t) * 1e3
    if args.provider not in ort.get_available_providers():
        raise bc.BenchFailure(
            f"execution provider {args.provider} is not available in onnxruntime {ort.__version__} "
            f"(available: {', '.join(ort.get_available_providers())})", "environment")
    return ort


def profile_model(ort: Any, args: Any) -> Dict[str, Any]:
    """The result of one model (``args.model``) without ``ok``; BenchFailure when it cannot be profiled."""
    phases: Dict[str, float] = {}
    if not os.path.isfile(args.model):
        raise bc.BenchFailure(f"cannot load model: file {args.model} does not exist", "model")
    model_bytes = os.path.getsize(args.model)
    model_sha256 = bc.sha256_file(args.model)

    memory = bc.PeakMemory()
    memory.start()
    t = time.perf_counter()
    sess = _create_session(ort, args)
    load_ms = (time.perf_counter() - t) * 1e3
    memory.sample()
    feeds, described = make_feeds(sess.get_inputs(), args.seed)
    fn = _run_fn(sess, feeds)
    t = time.perf_counter()
    samples = bc.time_runs(fn, warmup=args.warmup, min_runs=args.min_runs, min_seconds=args.min_seconds,
                           max_runs=args.max_runs, max_seconds=args.max_seconds)
    phases["runs_ms"] = (time.perf_counter() - t) * 1e3
    mem = memory.stop()
    providers = sess.get_providers()
    del sess

    info = bc.device_info()
    result: Dict[str, Any] = {
        "latency": bc.latency_stats(samples),
        **mem,
        "load_ms": load_ms,
        "model_bytes": model_bytes,
        "model_sha256": model_sha256,
        "runtime": "onnxruntime",
        "runtime_version": ort.__version__,
        "device": bc.device_string(info),
        "device_info": info,
        "threads": args.threads,
        "settings": {**bc.settings_echo(args), "graph_optimization": args.graph_optimization,
                     "provider": args.provider},
        "providers": providers,
        "inputs": described,
        "profiler_version": bc.profiler_version(os.path.abspath(__file__)),
        "timestamp": bc.utc_now(),
    }
    if args.per_node:
        t = time.perf_counter()
        result["per_node"] = per_node_profile(ort, args, feeds)
        phases["per_node_ms"] = (time.perf_counter() - t) * 1e3
    phases["load_ms"] = load_ms
    result["phases"] = phases
    return result


def main() -> Dict[str, Any]:
    args = parse_args()
    phases: Dict[str, float] = {}
    ort = import_runtime(args, phases)
    if args.probe:
        info = bc.device_info()
        return {"runtime": "onnxruntime", "runtime_version": ort.__version__, "device": bc.device_string(info),
                "device_info": info, "providers": ort.get_available_providers(),
                "profiler_version": bc.profiler_version(os.path.abspath(__file__)), "timestamp": bc.utc_now()}
    if args.batch:
        summary = bc.run_batch(args, lambda: profile_model(ort, args))
        summary["phases"] = dict(phases, script_ms=(time.perf_counter() - _T_START) * 1e3)
        return summary
    result = profile_model(ort, args)
    result["phases"] = dict(phases, **result["phases"])
    result["phases"]["script_ms"] = (time.perf_counter() - _T_START) * 1e3
    return result


if __name__ == "__main__":
    bc.run_main(main)
