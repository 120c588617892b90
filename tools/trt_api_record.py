#!/usr/bin/env python3
"""Record the TensorRT Python API surface that ``profilers/trt_bench.py`` selects its code path by.

    python tools/trt_api_record.py tests/data/trt_api/trt-10.3.json [--module tensorrt_bindings]

Imports ``tensorrt`` (or ``--module``) and writes, as JSON: the version, the module's public
names, and the public attribute names of the classes and enums listed in ``CLASSES`` (``null``
for a class this version lacks).  The binding needs no GPU to be imported and listed; how the
files under tests/data/trt_api/ were recorded (wheels, stand-in libraries) is in the README there.
"""

import argparse
import importlib
import json
import sys

CLASSES = (
    "Builder", "IBuilderConfig", "INetworkDefinition", "ITensor", "ILayer", "IConvolutionLayer",
    "IDeconvolutionLayer", "IFullyConnectedLayer", "IScaleLayer", "IConstantLayer", "ICastLayer",
    "IIdentityLayer", "ICudaEngine", "IExecutionContext", "IProfiler", "OnnxParser", "Runtime", "Logger",
    "Weights", "BuilderFlag", "NetworkDefinitionCreationFlag", "LayerType", "MemoryPoolType", "DataType",
    "TensorIOMode",
)


def record(trt: object) -> dict:
    def public(obj: object) -> list:
        return sorted(n for n in dir(obj) if not n.startswith("_"))

    return {
        "version": str(getattr(trt, "__version__", "unknown")),
        "module": public(trt),
        "classes": {name: (public(getattr(trt, name)) if hasattr(trt, name) else None) for name in CLASSES},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="JSON file to write")
    p.add_argument("--module", default="tensorrt", help="module to import (tensorrt_bindings for the bindings wheel)")
    p.add_argument("--source", default="", help="where the binding came from (recorded in the file)")
    p.add_argument("--version", default="", help="the version, where the module does not carry __version__ (a "
                   "binding .so imported on its own)")
    args = p.parse_args()
    try:
        trt = importlib.import_module(args.module)
    except ImportError as exc:
        print(f"cannot import {args.module}: {exc}", file=sys.stderr)
        return 1
    data = record(trt)
    data["source"] = args.source or f"import {args.module}"
    if args.version:
        data["version"] = args.version
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=0, sort_keys=True)
        fh.write("\n")
    print(f"{args.out}: TensorRT {data['version']}, {len(data['module'])} module names")
    return 0


if __name__ == "__main__":
    sys.exit(main())
