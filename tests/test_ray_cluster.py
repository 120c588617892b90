"""``--ray-address``: a pool joins a Ray cluster that is already running (issue 23, point 1).

The cluster is real: ``ray start --head`` (no boards: the host that trains) plus ``ray start --address``
with the ``hwcompress_boards`` resource (the machine wired to the boards), token authentication on,
two real sshd boards on loopback.  It all runs in network and PID namespaces of its own
(tests/ray_cluster_run.py), so Ray's node address is 127.0.0.1 and nothing touches another Ray on
this machine.  Skipped where namespaces cannot be made (no root, no unprivileged user namespaces).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sshd import sshd_available

HERE = Path(__file__).resolve().parent
UNSHARE = ["unshare", "--net", "--pid", "--fork", "--mount-proc"]


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    try:
        return subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_a_pool_joins_a_running_ray_cluster_and_its_boards_live_on_the_boards_node(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    if not sshd_available():
        pytest.skip("OpenSSH server (/usr/sbin/sshd) is not installed: apt-get install openssh-server")
    if not _namespaces_work():
        pytest.skip("cannot make network/PID namespaces here (unshare as root, or unprivileged user namespaces)")
    res = subprocess.run([*UNSHARE, sys.executable, str(HERE / "ray_cluster_run.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["nodes"] == 2 and got["node_addresses"] == ["127.0.0.1"]  # joined that cluster, started none
    assert got["auth_mode"] == "token"  # the token was sent although RAY_AUTH_MODE was unset
    assert not got["driver_node_has_boards"]
    assert got["worker_nodes_have_boards"] == [True, True]  # board actors went to the boards' node
    assert len(set(got["worker_pids"])) == 2
    assert got["states"] == ["up", "up"], got["reasons"]
    assert all(m["sha_ok"] and m["median_ms"] > 0 for m in got["measured"])
    assert {m["board"] for m in got["measured"]} <= set(got["boards"])
    assert len(got["measured"]) == 6
