"""Run inside fresh network and PID namespaces (``unshare --net --pid --fork --mount-proc``) by
test_ray_cluster.py: a real two-node Ray cluster started with ``ray start`` and a pool that joins it.

Its own network namespace holds only loopback, so Ray's node address is 127.0.0.1 (outside one Ray
takes the machine's own address), and its own PID namespace means ``ray stop`` and the end of this
script touch no other Ray on the machine.  The cluster is made the way docs/pool.md tells a user to:

* a head node with no boards (the "GPU host" that trains and evaluates),
* a second node offering the ``hwcompress_boards`` resource (the machine wired to the boards),

both with token authentication on (``RAY_AUTH_MODE=token``, the token in ``RAY_AUTH_TOKEN_PATH``).  Two real sshd "boards" listen on loopback.  The pool joins with ``--ray-address``'s
value while ``RAY_AUTH_MODE`` is unset (the user's shell as it comes), measures six candidates over
both boards, and the script prints one JSON object: where Ray put the board actors, which board
measured what, and what joining cost.

    unshare --net --pid --fork --mount-proc python tests/ray_cluster_run.py WORK_DIR
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sshd import SshServer, free_port
from tiny_models import write_tiny_onnx

from hwcompress.fsutil import sha256_file
from hwcompress.targets import parse_target

RESOURCE = "hwcompress_boards"


def ray_cli(*args: str, env: dict[str, str]) -> None:
    ray = Path(sys.executable).with_name("ray")
    res = subprocess.run([str(ray), *args], env=env, capture_output=True, text=True, timeout=180)
    if res.returncode != 0:
        raise SystemExit(f"ray {' '.join(args[:1])} failed ({res.returncode}): {(res.stderr or res.stdout)[-2000:]}")


def main() -> int:
    work = Path(sys.argv[1])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=30)
    token = work / "auth_token"
    token.write_text(secrets.token_hex(32))
    # the cluster's nodes as Ray's token-auth page has them (a joining `ray start --address` does not turn
    # token mode on by itself, Ray 2.60: it needs RAY_AUTH_MODE=token)
    ray_env = {**os.environ, "RAY_AUTH_TOKEN_PATH": str(token), "RAY_AUTH_MODE": "token"}
    ray_env.pop("RAY_ADDRESS", None)
    temp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    servers = [SshServer(work / f"board{i}").start() for i in range(2)]
    port = free_port()
    address = f"127.0.0.1:{port}"
    try:
        ray_cli("start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                f"--temp-dir={temp}", "--disable-usage-stats", env=ray_env)
        ray_cli("start", f"--address={address}", "--num-cpus=1", f"--resources={json.dumps({RESOURCE: 100})}",
                "--disable-usage-stats", env=ray_env)
        # the driver: the user's environment, RAY_AUTH_MODE unset, the token where Ray keeps it
        os.environ.pop("RAY_AUTH_MODE", None)
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)

        import ray

        from hwcompress.profiling.pool import open_pool

        targets = [dataclasses.replace(parse_target(tomllib.loads(s.target_toml("onnxruntime")), "t", "loop"),
                                       board_tolerance=0.9) for s in servers]
        # the boards' calibration model: wide enough that its time is the convolution's, not the
        # scheduler's jitter (two boards on one loaded 2-core machine, a Ray node each)
        model = write_tiny_onnx(work / "m.onnx", channels=64)
        variants = [write_tiny_onnx(work / f"v{i}.onnx", channels=4 + i) for i in range(6)]
        t0 = time.perf_counter()
        with open_pool(targets[0], targets, model, ray_address=address, record=work / "pool.json",
                       baseline_rounds=3) as pool:
            joined_s = time.perf_counter() - t0
            got = [f.result(timeout=300) for f in [pool.submit(v, targets[0]) for v in variants]]
            nodes = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
            state = pool.state()
            result = {
                "joined_s": joined_s,
                "auth_mode": os.environ.get("RAY_AUTH_MODE"),
                "nodes": len(nodes),
                "node_addresses": sorted({n["NodeManagerAddress"] for n in nodes.values()}),
                "driver_node_has_boards": RESOURCE in nodes[ray.get_runtime_context().get_node_id()]["Resources"],
                "worker_nodes_have_boards": [RESOURCE in nodes[b["worker"]["ray_node"]]["Resources"]
                                             for b in state["boards"]],
                "worker_pids": [b["worker"]["pid"] for b in state["boards"]],
                "measured": [{"sha_ok": m.model_sha256 == sha256_file(v), "board": m.board,
                              "median_ms": m.latency.median_ms} for m, v in zip(got, variants, strict=True)],
                "boards": [f"127.0.0.1:{s.port}" for s in servers],
                "states": [b.state for b in pool.boards],
                "reasons": [b.reason for b in pool.boards],
            }
        print(json.dumps(result))
        return 0
    finally:
        for s in servers:
            s.stop()
        ray_cli("stop", "--force", env=ray_env)
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
