#!/usr/bin/env python3
"""Seconds per candidate on a remote (SSH) target vs the same work locally.

One candidate = convert (torch -> .tflite with litert-torch, or -> .onnx) + upload + profiler
run + parse, i.e. what one search step costs besides accuracy.  Each candidate has slightly
different weights, so every upload is a real one.  One SSH connection serves all candidates.

Without ``--host`` a loopback sshd (tests/sshd.py) plays the board on this machine, with this
interpreter as the remote Python.  .tflite rows need litert-torch (``pip install
'hwcompress[tflite]'``); without it they are skipped and ONNX Runtime rows are shown.

    python tools/bench_remote.py --candidates 3
    python tools/bench_remote.py --target raspberry-pi-4 --host pi5.local --user pi --key ~/.ssh/id_ed25519
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loopback_sshd import sshd_module  # tools/ is the script's folder, first on sys.path

REPO = Path(__file__).resolve().parent.parent


def _loopback_server(root: Path) -> Any:
    return sshd_module().SshServer(root).start()


def _convert(model: Any, target: Any, path: Path) -> Path:
    """The fp32 file the target's runtime runs (.tflite or .onnx), from its backend."""
    from hwcompress.profiling.adapters import backend_for

    return backend_for(target).device_file(model, (1, 1, 28, 28), path, target)


def _perturb(model: Any, i: int) -> None:
    import torch

    with torch.no_grad():
        p = next(model.parameters())
        p.add_(torch.randn_like(p) * 1e-4 * (i + 1))


def bench(models: list[str], runtimes: list[str], candidates: int, base_target: Any, work: Path,
          trust_new_host: bool = False) -> list[dict[str, Any]]:
    import torch

    from hwcompress.profiling.measure import measure
    from hwcompress.profiling.remote import SshRunner, runner_for
    from hwcompress.profiling.runner import LocalRunner
    from hwcompress.zoo import build_model

    torch.set_num_threads(1)
    rows = []
    for runtime in runtimes:
        target = dataclasses.replace(base_target, runtime=runtime)
        remote = runner_for(target, trust_new_host=trust_new_host)
        assert isinstance(remote, SshRunner)
        for name in models:
            torch.manual_seed(0)
            model = build_model(name).eval()
            for where, runner in (("remote", remote), ("local", LocalRunner())):
                times: dict[str, list[float]] = {"convert": [], "upload": [], "run": [], "parse": [], "total": []}
                latency = []
                for i in range(candidates):
                    _perturb(model, i)
                    t0 = time.perf_counter()
                    path = _convert(model, target, work / f"{name}-{where}-{i}")
                    t1 = time.perf_counter()
                    before = dict(remote.stats.seconds)
                    m = measure(path, target, runner=runner)
                    t2 = time.perf_counter()
                    sync = remote.stats.seconds.get("sync", 0) - before.get("sync", 0)
                    run = remote.stats.seconds.get("run", 0) - before.get("run", 0) if where == "remote" else t2 - t1
                    times["convert"].append(t1 - t0)
                    times["upload"].append(sync)
                    times["run"].append(run)
                    times["parse"].append(max(0.0, (t2 - t1) - sync - run))
                    times["total"].append(t2 - t0)
                    latency.append(m.latency.median_ms)
                rows.append({"model": name, "runtime": runtime, "where": where,
                             **{k: statistics.median(v) for k, v in times.items()},
                             "latency_ms": statistics.median(latency)})
        rows.append({"stats": dataclasses.asdict(remote.stats), "runtime": runtime})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="raspberry-pi-4", help="target whose measure settings are used")
    p.add_argument("--models", default="vgg-small,resnet-20,mobilenetv2-small")
    p.add_argument("--runtimes", default="", help="tflite,onnxruntime (default: tflite when litert-torch is "
                                                  "installed, and onnxruntime)")
    p.add_argument("--candidates", type=int, default=3)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--user")
    p.add_argument("--key")
    p.add_argument("--remote-python")
    p.add_argument("--threads", type=int, help="profiler threads (default: the target's; 1 on the loopback device)")
    p.add_argument("--trust-new-host", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    sys.path.insert(0, str(REPO))
    from hwcompress.profiling.remote import close_all
    from hwcompress.targets import load_target, with_connection

    runtimes = [r for r in args.runtimes.split(",") if r] or (
        (["tflite"] if importlib.util.find_spec("litert_torch") else []) + ["onnxruntime"])
    with tempfile.TemporaryDirectory(prefix="bench_remote_") as tmp:
        work = Path(tmp)
        server = None
        if args.host is None:
            server = _loopback_server(work / "sshd")
            conn = dataclasses.asdict(server.connection())
            del conn["kind"]
            target = with_connection(load_target(args.target), **conn)
        else:
            target = with_connection(load_target(args.target), host=args.host, port=args.port, user=args.user,
                                     key=args.key, python=args.remote_python)
        threads = args.threads or (1 if server is not None else target.threads)
        target = dataclasses.replace(target, threads=threads,
                                     measure=dataclasses.replace(target.measure, max_rounds=1))
        try:
            rows = bench(args.models.split(","), runtimes, args.candidates, target, work, args.trust_new_host)
        finally:
            close_all()
            if server is not None:
                server.stop()
    where = f"{target.connection.user}@{target.connection.host}:{target.connection.port}"
    m = target.measure
    print(f"\nseconds per candidate (median of {args.candidates}); device {where}, {target.threads} thread(s); "
          f"measure: warm-up {m.warmup_runs}, >= {m.min_runs} runs and >= {m.min_seconds:g} s, 1 round")
    header = f"{'model':<18} {'runtime':<12} {'where':<7} {'convert':>8} {'upload':>7} {'run':>7} {'parse':>7} " \
             f"{'total':>7} {'latency ms':>11}"
    print(header)
    print("-" * len(header))
    for r in rows:
        if "stats" in r:
            s = r["stats"]
            print(f"  ({r['runtime']}: {s['connects']} connection(s), {s['commands']} commands, {s['uploads']} uploads, "
                  f"{s['upload_bytes'] / 1e6:.1f} MB, {s['upload_skips']} skipped)")
            continue
        print(f"{r['model']:<18} {r['runtime']:<12} {r['where']:<7} {r['convert']:>8.2f} {r['upload']:>7.2f} "
              f"{r['run']:>7.2f} {r['parse']:>7.2f} {r['total']:>7.2f} {r['latency_ms']:>11.3f}")


if __name__ == "__main__":
    main()
