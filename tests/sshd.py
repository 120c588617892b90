"""A real OpenSSH server on 127.0.0.1 for tests (this machine plays the device).

Own host key, client key, authorized_keys and sshd_config in a temp folder; ``UsePAM no``,
``StrictModes no``, internal SFTP.  :meth:`SshServer.kill` kills sshd *and* its per-connection
children (a device that vanished); :meth:`SshServer.start` brings it back on the same port with
the same host key.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hwcompress.records import Connection

SSHD = "/usr/sbin/sshd"
REPO = Path(__file__).resolve().parent.parent


def sshd_available() -> bool:
    return os.path.isfile(SSHD) and shutil.which("ssh-keygen") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path, comment: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, timeout=30, stdin=subprocess.DEVNULL)
    return path


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc), deepest last."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


@dataclass
class SshServer:
    """One sshd on 127.0.0.1:``port``; ``client_key`` may log in as the current user."""

    root: Path
    port: int = field(default_factory=free_port)
    user: str = field(default_factory=getpass.getuser)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.host_key = keygen(self.root / "host_ed25519", "hwcompress-test-host")
        self.client_key = keygen(self.root / "client_ed25519", "hwcompress-test-client")
        self.authorized_keys = self.root / "authorized_keys"
        self.authorized_keys.write_text((self.root / "client_ed25519.pub").read_text())
        self.known_hosts = self.root / "known_hosts"
        pub = (self.root / "host_ed25519.pub").read_text().split()
        self.known_hosts_line = f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n"
        self.known_hosts.write_text(self.known_hosts_line)
        self.log = self.root / "sshd.log"
        self.config = self.root / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\nPidFile {self.root / 'sshd.pid'}\n"
            "UsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
            "PrintMotd no\nMaxSessions 64\nMaxStartups 64\nLogLevel ERROR\n"
            # Debian's bash sources ~/.bashrc for commands run by sshd; a pyenv there rehashes its shims
            # under a lock file, waiting up to 60 s for it, and a session killed mid-rehash (the tests
            # kill remote process groups) leaves the lock behind: every later session waited 60 s
            "SetEnv PYENV_REHASH_TIMEOUT=0\n"
        )

    def start(self, timeout_s: float = 10.0) -> SshServer:
        """Start sshd (``-D -e``) and wait until the port accepts connections."""
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege-separation folder
        log = open(self.log, "ab")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: {self.log.read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"sshd did not listen on port {self.port} within {timeout_s} s")

    def kill(self) -> None:
        """SIGKILL sshd and every process it started (connections drop at once)."""
        if self.proc is None:
            return
        victims = [self.proc.pid, *_children(self.proc.pid)]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        self.kill()

    def connection(self, **overrides: object) -> Connection:
        """An ssh Connection to this server; the remote Python is this test run's interpreter."""
        fields: dict[str, object] = {
            "kind": "ssh", "host": "127.0.0.1", "port": self.port, "user": self.user,
            "key": str(self.client_key), "known_hosts": str(self.known_hosts), "python": sys.executable,
            "workdir": str(self.root / "remote work"), "connect_timeout_s": 5.0, "command_timeout_s": 30.0,
        }
        fields.update(overrides)
        return Connection(**fields)  # type: ignore[arg-type]

    def target_toml(self, runtime: str = "tflite", **overrides: object) -> str:
        """A target file text for this server (``runtime`` tflite or onnxruntime)."""
        conn = self.connection(**overrides)
        return (
            f'description = "loopback sshd test device"\nruntime = "{runtime}"\nthreads = 1\n'
            'precisions = ["fp32", "int8"]\nchannel_multiple = 1\n\n[connection]\n'
            f'kind = "ssh"\nhost = "{conn.host}"\nport = {conn.port}\nuser = "{conn.user}"\nkey = "{conn.key}"\n'
            f'known_hosts = "{conn.known_hosts}"\npython = "{conn.python}"\nworkdir = "{conn.workdir}"\n\n'
            "[measure]\nwarmup_runs = 5\nmin_runs = 20\nmin_seconds = 0.05\nmax_seconds = 2.0\nmax_cv = 0.5\n"
            "max_rounds = 1\ntimeout_s = 60.0\n"
        )
