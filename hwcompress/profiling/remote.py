"""SSH runner: run the profiler scripts on a device reached over SSH (paramiko).

One connection per device is opened lazily and kept for a whole search (module pool keyed by
``(host, port, user, key)``; :func:`close_all` runs at exit).  On the device:

- ``<workdir>/session-<id>/`` holds the profiler scripts of this session; removed at close.
- ``<workdir>/models/<sha256><suffix>`` holds the uploaded models, content-addressed: a model
  whose file is already there is not uploaded again.  Uploads go to a temporary name, are checked
  (size by SFTP, sha256 computed on the device) and renamed into place, so a file there is whole.
  Models unused for :data:`MODEL_RETENTION_DAYS` days and stale session folders are removed.

Host keys are checked against the target's known_hosts file: an unknown host is refused unless
``trust_new_host=True`` (the key is then appended to that file and logged); a changed key is
always refused.  Every remote command is built with :func:`shlex.quote` and has a deadline:
profilers run under ``timeout`` in their own process group, which is killed on the deadline.  A
connection lost mid-command is re-opened with exponential back-off and the command is retried.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import logging
import os
import re
import select
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hwcompress.profiling.runtimes  # noqa: F401  (registers the tflite / tensorrt adapters)
from hwcompress.errors import HostKeyError, ProfilerError, ProfilerTimeout, RemoteError
from hwcompress.fsutil import sha256_file
from hwcompress.profiling.runner import PYTHON_VERSION_CODE, LocalRunner, Runner, check_exit, stderr_tail
from hwcompress.records import Connection, Target

if TYPE_CHECKING:
    import paramiko

log = logging.getLogger(__name__)

MODEL_RETENTION_DAYS = 7
#: Seconds the host waits beyond a profiler's own limit before it kills the remote process group.
HOST_GRACE_S = 10.0
#: Seconds between the remote ``timeout``'s TERM and KILL.
KILL_AFTER_S = 3
KEEPALIVE_S = 15
_PID_MARK = "hwcompress-pid "
#: Return code of a remote command that ended by a signal (SSH reports no exit status then).
KILLED_BY_SIGNAL = -1
_SUFFIX_OK = re.compile(r"^\.[A-Za-z0-9_.-]{1,16}$")


class _LinkDown(Exception):
    """The SSH connection dropped or could not be (re)opened: the caller may retry."""


@dataclass
class RemoteResult:
    """Exit status, stdout and stderr of one remote command; ``seconds`` of wall time."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float


@dataclass
class RunnerStats:
    """Counters of one :class:`SshRunner` (for benchmarks and logs)."""

    connects: int = 0
    commands: int = 0
    uploads: int = 0
    upload_bytes: int = 0
    upload_skips: int = 0
    retries: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def add_time(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds


def sh_path(path: str) -> str:
    """``path`` quoted for a POSIX shell; a leading ``~/`` stays expandable (``"$HOME"/...``)."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint of a host key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_path(conn: Connection) -> Path:
    return Path(os.path.expanduser(conn.known_hosts or "~/.ssh/known_hosts"))


def host_key_name(host: str, port: int) -> str:
    """The known_hosts name of a host: ``host`` on port 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


class SshRunner:
    """:class:`~hwcompress.profiling.runner.Runner` that profiles on a device over SSH.

    ``profilers_dir`` defaults to the shipped scripts; ``max_retries`` reconnects (with
    ``backoff_s * 2**i`` seconds between them) are tried when a connection drops mid-command.
    """

    def __init__(
        self,
        connection: Connection,
        *,
        trust_new_host: bool = False,
        profilers_dir: Path | None = None,
        max_retries: int = 3,
        backoff_s: float = 1.0,
    ) -> None:
        if connection.kind != "ssh":
            raise RemoteError(f"SshRunner needs an ssh connection, got kind {connection.kind!r}")
        if not connection.host:
            raise RemoteError("the target has no connection.host; pass --host NAME_OR_IP")
        self.connection = connection
        self.trust_new_host = trust_new_host
        self._profilers_dir = profilers_dir
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.stats = RunnerStats()
        self._lock = threading.RLock()
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._pid = os.getpid()
        self._session_name = f"session-{socket.gethostname()[:20]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._session_name = re.sub(r"[^A-Za-z0-9_.-]", "_", self._session_name)
        self._ever_connected = False
        self.base = ""  # absolute remote workdir, set on connect
        self._has_sha256sum = True
        self._known: dict[str, str] = {}  # path under the workdir -> sha256 known to be there (this link)

    # ----------------------------------------------------------------- naming
    @property
    def address(self) -> str:
        c = self.connection
        return f"{c.user + '@' if c.user else ''}{c.host}:{c.port}"

    @property
    def session_dir(self) -> str:
        return f"{self.base}/{self._session_name}"

    @property
    def models_dir(self) -> str:
        return f"{self.base}/models"

    @property
    def profilers_dir(self) -> Path:
        if self._profilers_dir is None:
            from hwcompress.profiling.adapters import profilers_dir

            self._profilers_dir = profilers_dir()
        return self._profilers_dir

    @property
    def connected(self) -> bool:
        t = self._client.get_transport() if self._client is not None else None
        return bool(t is not None and t.is_active())

    # ----------------------------------------------------------------- connection
    def _connect(self) -> None:
        """Open the SSH connection, SFTP and the remote folders; raise _LinkDown on network errors."""
        import paramiko

        c = self.connection
        client = paramiko.SSHClient()
        kh = known_hosts_path(c)
        system_kh = Path("/etc/ssh/ssh_known_hosts")
        try:
            if system_kh.is_file() and system_kh != kh:
                client.load_system_host_keys(str(system_kh))
            if kh.is_file():
                client.load_host_keys(str(kh))
        except (OSError, paramiko.SSHException) as exc:
            raise HostKeyError(f"cannot read known_hosts file {kh} ({exc}); fix or remove it") from None
        client.set_missing_host_key_policy(_host_key_policy(kh, self.trust_new_host))
        key_file, allow_agent, look_for_keys = self._auth_options()
        t0 = time.perf_counter()
        try:
            client.connect(
                c.host, port=c.port, username=c.user or None, key_filename=key_file,
                allow_agent=allow_agent, look_for_keys=look_for_keys, timeout=c.connect_timeout_s,
                banner_timeout=c.connect_timeout_s, auth_timeout=c.connect_timeout_s,
                channel_timeout=c.connect_timeout_s,
            )
        except HostKeyError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            name = host_key_name(c.host, c.port)
            raise HostKeyError(
                f"host key of {name} CHANGED: got {exc.key.get_name()} {fingerprint(exc.key)}, {kh} has "
                f"{fingerprint(exc.expected_key)}; if the device was reinstalled, verify the new key, run "
                f"ssh-keygen -R {shlex.quote(name)} -f {shlex.quote(str(kh))} and connect with --trust-new-host"
            ) from None
        except paramiko.PasswordRequiredException:
            client.close()
            raise RemoteError(
                f"SSH key {c.key} is encrypted; load it into ssh-agent (ssh-add {c.key}) and set key = \"\" "
                "in the target (or --key '') so the agent is used"
            ) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            what = f"key {c.key}" if key_file else "the ssh-agent / default keys"
            pub = f"{key_file}.pub" if key_file else "~/.ssh/id_ed25519.pub"
            raise RemoteError(
                f"{self.address} refused {what} ({exc}); add the public key to ~/.ssh/authorized_keys of "
                f"{c.user or 'the user'} on the device: ssh-copy-id -i {pub} -p {c.port} {c.user or 'USER'}@{c.host}"
            ) from None
        except socket.gaierror as exc:
            client.close()
            raise RemoteError(f"cannot resolve host {c.host!r} ({exc.strerror}); check --host or connection.host") from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            client.close()
            raise _LinkDown(_describe(exc, c.connect_timeout_s)) from None
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(KEEPALIVE_S)
        try:  # small request/reply packets: do not wait for delayed ACKs (Nagle)
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        self._client = client
        self.stats.connects += 1
        try:
            self._sftp = client.open_sftp()
            self._sftp.get_channel().settimeout(c.command_timeout_s)
            self._setup()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self._drop()
            raise _LinkDown(_describe(exc, c.command_timeout_s)) from None
        except BaseException:
            self._drop()  # never keep a half-set-up link
            raise
        self._ever_connected = True
        self._known = {}
        self.stats.add_time("connect", time.perf_counter() - t0)
        log.info("connected to %s (work folder %s) in %.2f s", self.address, self.session_dir, time.perf_counter() - t0)

    def _auth_options(self) -> tuple[str | None, bool, bool]:
        """(key_filename, allow_agent, look_for_keys): a named key file is used alone, like ``ssh -i``."""
        key = self.connection.key
        if not key:
            return None, True, True
        path = os.path.expanduser(key)
        if os.path.isfile(path):
            return path, False, False
        if os.environ.get("SSH_AUTH_SOCK"):
            log.info("SSH key %s does not exist; trying the keys of ssh-agent", key)
            return None, True, False
        raise RemoteError(f"SSH key file {key} does not exist; pass --key PATH (or set key = \"\" to use ssh-agent)")

    def _setup(self) -> None:
        """Create the remote folders, clean stale ones, learn the absolute workdir and the tools."""
        wd = sh_path(self.connection.workdir.rstrip("/") or "/")
        script = (
            "umask 077; "
            f"mkdir -p -- {wd}/models {wd}/{shlex.quote(self._session_name)} || exit 90; "
            f"cd -- {wd} || exit 90; "
            f"find models -type f -mtime +{MODEL_RETENTION_DAYS} -exec rm -f -- {{}} + 2>/dev/null; "
            "find . -maxdepth 1 -type d -name 'session-*' -mtime +1 -exec rm -rf -- {} + 2>/dev/null; "
            "pwd; command -v sha256sum || echo none; command -v timeout || echo none"
        )
        res = self._exec(script, self.connection.command_timeout_s)
        if res.returncode == 90:
            raise RemoteError(
                f"cannot create the work folder {self.connection.workdir} on {self.address} "
                f"({stderr_tail(res.stderr) or 'permission denied?'}); set connection.workdir in the target"
            )
        lines = res.stdout.strip().splitlines()
        if res.returncode != 0 or len(lines) < 3:
            raise RemoteError(f"setting up {self.address} failed (exit {res.returncode}): "
                              f"{stderr_tail(res.stderr) or res.stdout.strip()[:200]}")
        self.base = lines[-3].strip()
        self._has_sha256sum = lines[-2].strip() != "none"
        if lines[-1].strip() == "none":
            raise RemoteError(f"{self.address} has no `timeout` command; install coreutils on the device")

    def _drop(self) -> None:
        """Forget the current connection without talking to the device."""
        for obj in (self._sftp, self._client):
            try:
                if obj is not None:
                    obj.close()
            except Exception:
                pass
        self._sftp = None
        self._client = None
        self._known = {}

    def _ensure(self) -> None:
        if os.getpid() != self._pid:  # inherited through fork(): never share the parent's socket
            self._client, self._sftp, self._pid = None, None, os.getpid()
            self._known = {}
        if not self.connected:
            if self._client is not None:
                self._drop()
            self._connect()

    def close(self) -> None:
        """Remove this session's remote folder and close the connection (errors are logged only)."""
        with self._lock:
            if self.connected and os.getpid() == self._pid and self.base:
                try:
                    self._exec(f"rm -rf -- {shlex.quote(self.session_dir)}", 10.0)
                except Exception as exc:
                    log.debug("cleaning %s on %s failed: %s", self.session_dir, self.address, exc)
            if os.getpid() == self._pid:
                self._drop()
            self._client = self._sftp = None

    def __enter__(self) -> SshRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- commands
    def _exec(self, command: str, timeout_s: float, *, pid_mark: bool = False) -> RemoteResult:
        """Run ``command`` (a shell string, already quoted) on the open link; _LinkDown if it drops.

        Past ``timeout_s`` the channel is closed (and, with ``pid_mark``, the process group the
        command printed is killed) and ProfilerTimeout is raised.
        """
        import paramiko

        assert self._client is not None
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise _LinkDown("the connection is closed")
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        self.stats.commands += 1
        try:
            chan = transport.open_session(timeout=self.connection.connect_timeout_s)
            chan.settimeout(self.connection.command_timeout_s)
            chan.exec_command(command)
            chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise _LinkDown(_describe(exc, self.connection.connect_timeout_s)) from None
        out, err = bytearray(), bytearray()
        try:
            while True:
                while chan.recv_ready():
                    out += chan.recv(1 << 16)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(1 << 16)
                if chan.exit_status_ready():
                    while chan.recv_ready():
                        out += chan.recv(1 << 16)
                    while chan.recv_stderr_ready():
                        err += chan.recv_stderr(1 << 16)
                    code = chan.recv_exit_status()
                    if code == -1:
                        # Closed without a status: killed by a signal (sshd sends exit-signal, which
                        # paramiko ignores) while the link lives, or the link itself died.
                        time.sleep(0.05)
                        if not transport.is_active():
                            raise _LinkDown("the connection closed while a command was running")
                        code = KILLED_BY_SIGNAL
                    break
                if chan.closed or not transport.is_active():
                    raise _LinkDown("the connection closed while a command was running")
                if time.monotonic() > deadline:
                    self._kill_remote(bytes(err).decode("utf-8", "replace") if pid_mark else "")
                    chan.close()
                    tail = stderr_tail(_strip_mark(bytes(err).decode("utf-8", "replace")))
                    raise ProfilerTimeout(
                        f"command on {self.address} ran past {timeout_s:g} s and was stopped; raise "
                        "measure.timeout_s in the target" + (f" (stderr: {tail})" if tail else "")
                    )
                select.select([chan], [], [], 0.05)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise _LinkDown(_describe(exc, self.connection.command_timeout_s)) from None
        finally:
            chan.close()
        seconds = time.monotonic() - t0
        return RemoteResult(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), seconds)

    def _kill_remote(self, stderr: str) -> None:
        m = re.search(rf"^{_PID_MARK}(\d+)$", stderr, re.MULTILINE)
        if m is None or not self.connected:
            return
        try:
            self._exec(f"kill -KILL -- -{int(m.group(1))} 2>/dev/null; true", 10.0)
        except Exception as exc:
            log.debug("killing remote process group %s failed: %s", m.group(1), exc)

    def execute(self, command: str, timeout_s: float | None = None) -> RemoteResult:
        """Run a shell command (build it with :func:`shlex.quote` / :func:`sh_path`) on the device,
        connecting (and reconnecting) as needed.  Any exit status is returned, not raised."""
        timeout = timeout_s if timeout_s is not None else self.connection.command_timeout_s
        return self._with_retries(lambda: self._exec(command, timeout), "a command")

    def _with_retries(self, fn: Any, what: str) -> Any:
        with self._lock:
            attempt = 0
            while True:
                try:
                    self._ensure()
                    return fn()
                except _LinkDown as exc:
                    self._drop()
                    if not self._ever_connected:
                        c = self.connection
                        raise RemoteError(
                            f"cannot connect to {self.address} ({exc}); check that the device is on, sshd runs "
                            f"and host/port are right (--host/--port), e.g. ssh -p {c.port} {c.user or 'USER'}@{c.host}"
                        ) from None
                    if attempt >= self.max_retries:
                        raise RemoteError(
                            f"lost connection to {self.address} while running {what} ({exc}); {self.max_retries} "
                            "reconnects failed; check the device and its network, then run again"
                        ) from None
                    delay = self.backoff_s * 2**attempt
                    attempt += 1
                    self.stats.retries += 1
                    log.warning("lost connection to %s (%s); reconnecting in %.1f s (try %d of %d)",
                                self.address, exc, delay, attempt, self.max_retries)
                    time.sleep(delay)

    # ----------------------------------------------------------------- uploads
    def _verify_script(self, pending: Sequence[tuple[str, str, str]]) -> str:
        """Shell lines (run in the workdir) that check each uploaded temp file's sha256 on the device
        (exit 92 on a mismatch) and rename it into place (exit 93 if that fails)."""
        if not pending:
            return ""
        temps = " ".join(shlex.quote(tmp) for tmp, _, _ in pending)
        if self._has_sha256sum:
            lines = " ".join(shlex.quote(f"{sha}  {tmp}") for tmp, _, sha in pending)
            check = f"printf '%s\\n' {lines} | sha256sum -c --status -"
        else:
            code = ("import hashlib,sys\na=sys.argv[1:]\nfor s,p in zip(a[::2],a[1::2]):\n"
                    " h=hashlib.sha256(open(p,'rb').read()).hexdigest()\n if h!=s: sys.exit(1)")
            pairs = " ".join(f"{sha} {shlex.quote(tmp)}" for tmp, _, sha in pending)
            check = f"{sh_path(self.connection.python)} -c {shlex.quote(code)} {pairs}"
        moves = " && ".join(f"mv -f -- {shlex.quote(tmp)} {shlex.quote(final)}" for tmp, final, _ in pending)
        return f"{{ {check} || {{ rm -f -- {temps}; exit 92; }}; }}; {{ {moves}; }} || exit 93; "

    def _sync_files(self, script: str, files: Sequence[Path]) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
        """Put the script, benchcore.py and ``files`` on the device where missing (SFTP, to temp names).

        Returns (local path -> remote path, pending): ``pending`` holds (temp, final, sha256) paths
        relative to the workdir, to be checked and renamed by :meth:`_verify_script`.
        """
        assert self._sftp is not None
        wanted: list[tuple[Path, str, str]] = []  # (local, path relative to the workdir, sha256)
        mapping: dict[str, str] = {}
        for name in (script, "benchcore.py"):
            local = self.profilers_dir / name
            if not local.is_file():
                raise ProfilerError(f"profiler script {local} is missing; reinstall hwcompress")
            wanted.append((local, f"{self._session_name}/{name}", sha256_file(local)))
        for f in files:
            local = Path(f)
            if not local.is_file():
                raise ProfilerError(f"model file {local} disappeared before profiling")
            sha = sha256_file(local)
            suffix = local.suffix if _SUFFIX_OK.match(local.suffix) else ""
            rel = f"models/{sha}{suffix}"
            mapping[str(f)] = f"{self.base}/{rel}"
            wanted.append((local, rel, sha))
        pending: list[tuple[str, str, str]] = []
        t0 = time.perf_counter()
        for local, rel, sha in wanted:
            if self._known.get(rel) == sha or any(p[1] == rel for p in pending):
                continue
            if rel.startswith("models/"):
                # Content-addressed: a file under this name was checked before it was renamed in.
                try:
                    if self._sftp.stat(f"{self.base}/{rel}").st_size == local.stat().st_size:
                        self._known[rel] = sha
                        self.stats.upload_skips += 1
                        continue
                except FileNotFoundError:
                    pass
            tmp = f"{rel.rsplit('/', 1)[0]}/.tmp-{uuid.uuid4().hex[:12]}"
            try:
                attrs = self._sftp.put(str(local), f"{self.base}/{tmp}", confirm=True)  # checks the size
            except OSError as exc:
                if isinstance(exc, socket.timeout | ConnectionError) or not self.connected:
                    raise _LinkDown(_describe(exc, self.connection.command_timeout_s)) from None
                raise RemoteError(
                    f"uploading {local.name} to {self.address}:{self.base}/{tmp} failed ({exc}); check free disk "
                    f"space and permissions of {self.connection.workdir} on the device"
                ) from None
            pending.append((tmp, rel, sha))
            self.stats.uploads += 1
            self.stats.upload_bytes += int(attrs.st_size or 0)
        self.stats.add_time("upload", time.perf_counter() - t0)
        return mapping, pending

    def _check_verify_status(self, code: int, pending: Sequence[tuple[str, str, str]]) -> None:
        if code == 92:
            raise RemoteError(
                f"an upload to {self.address} arrived corrupt (sha256 mismatch of {', '.join(p[1] for p in pending)}); "
                "check the device's disk and network, then run again"
            )
        if code == 93:
            raise RemoteError(f"cannot rename uploads into {self.base} on {self.address}; check its permissions")
        for _, rel, sha in pending:
            self._known[rel] = sha

    def upload(self, path: Path) -> str:
        """Upload one model (content-addressed, skipped when present); returns its remote path."""
        def once() -> str:
            mapping, pending = self._sync_files("benchcore.py", [path])
            if pending:
                res = self._exec(f"cd -- {shlex.quote(self.base)} || exit 91; {self._verify_script(pending)}true",
                                 self.connection.command_timeout_s)
                self._check_verify_status(res.returncode, pending)
            return mapping[str(path)]

        return str(self._with_retries(once, "an upload"))

    # ----------------------------------------------------------------- Runner
    def run(self, script: str, args: Sequence[str], files: Sequence[Path], timeout_s: float) -> str:
        """Upload what is missing, run ``script`` on the device; same contract as LocalRunner.run."""
        if not (self.profilers_dir / script).is_file():
            raise ProfilerError(f"profiler script {self.profilers_dir / script} is missing; reinstall hwcompress")
        return str(self._with_retries(lambda: self._run_once(script, list(args), files, timeout_s), script))

    def _run_once(self, script: str, args: list[str], files: Sequence[Path], timeout_s: float) -> str:
        import paramiko

        t0 = time.perf_counter()
        try:
            mapping, pending = self._sync_files(script, files)
        except (EOFError, paramiko.SSHException) as exc:
            raise _LinkDown(_describe(exc, self.connection.command_timeout_s)) from None
        self.stats.add_time("sync", time.perf_counter() - t0)
        remote_args = [mapping.get(a, a) for a in args]
        limit = max(1, int(timeout_s + 0.999))
        command = (
            f"cd -- {shlex.quote(self.base)} || exit 91; {self._verify_script(pending)}"
            f"cd -- {shlex.quote(self._session_name)} || exit 91; echo {_PID_MARK}$$ >&2; "
            f"exec timeout -k {KILL_AFTER_S} {limit} {sh_path(self.connection.python)} "
            f"{shlex.quote(script)} {' '.join(shlex.quote(a) for a in remote_args)}"
        )
        t1 = time.perf_counter()
        res = self._exec(command, limit + KILL_AFTER_S + HOST_GRACE_S, pid_mark=True)
        self.stats.add_time("run", time.perf_counter() - t1)
        stderr = _strip_mark(res.stderr)
        code = res.returncode
        log.debug("%s on %s: exit %s in %.2f s", script, self.address, code, res.seconds)
        if code == 91:  # the work folder vanished (the device cleaned /tmp): set up and upload again
            self._known = {}
            raise _LinkDown(f"the work folder {self.session_dir} vanished on the device")
        self._check_verify_status(code, pending)
        if code == 124 or (code in (137, KILLED_BY_SIGNAL) and res.seconds >= limit):
            tail = stderr_tail(stderr)
            raise ProfilerTimeout(
                f"{script} on {self.address} ran past its {timeout_s:g} s limit and was stopped; raise "
                "measure.timeout_s in the target" + (f" (stderr: {tail})" if tail else "")
            )
        if code == KILLED_BY_SIGNAL:
            raise ProfilerError(f"{script} on {self.address} was killed by a signal under Python "
                                f"{self.python_version() or '(version unknown)'} (out of memory?): "
                                f"{stderr_tail(stderr) or 'no output on stderr'}")
        if code == 127 or code == 126:
            raise ProfilerError(
                f"cannot start {self.connection.python!r} on {self.address} (exit {code}: "
                f"{stderr_tail(stderr) or 'not found'}); set connection.python in the target to the device's Python"
            )
        if code > 128 and code - 128 < 65:
            code = -(code - 128)  # killed by a signal, reported by `timeout` as 128 + n
        return check_exit(f"{script} on {self.address}", code, res.stdout, stderr, self.python_version,
                          self.connection.python)

    def python_version(self) -> str:
        """Version of ``connection.python`` on the device (``"3.6.9"``), or ``""`` if it does not run."""
        try:
            res = self.execute(f"{sh_path(self.connection.python)} -c {shlex.quote(PYTHON_VERSION_CODE)}", 30.0)
        except (RemoteError, ProfilerError):
            return ""
        out = res.stdout.strip().splitlines()
        return out[-1].strip() if res.returncode == 0 and out else ""


def _strip_mark(stderr: str) -> str:
    return "\n".join(ln for ln in stderr.splitlines() if not ln.startswith(_PID_MARK))


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return f"no answer within {timeout_s:g} s"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__


def _host_key_policy(known_hosts: Path, trust_new_host: bool) -> Any:
    """A paramiko policy for unknown hosts: refuse with HostKeyError, or add and save the key."""
    import paramiko
    from paramiko.hostkeys import HostKeyEntry

    class _Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
            fp = fingerprint(key)
            if not trust_new_host:
                raise HostKeyError(
                    f"unknown host key for {hostname} ({key.get_name()} {fp}) in {known_hosts}; check the "
                    "fingerprint on the device (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub) and run again with "
                    "--trust-new-host to add it"
                )
            client.get_host_keys().add(hostname, key.get_name(), key)
            line = HostKeyEntry([hostname], key).to_line()
            try:
                known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                with os.fdopen(fd, "a", encoding="ascii") as fh:
                    fh.write(line)
            except OSError as exc:
                raise HostKeyError(f"cannot add the host key of {hostname} to {known_hosts} ({exc.strerror}); "
                                   "set connection.known_hosts to a writable file") from None
            log.warning("trusted new host %s: added %s %s to %s", hostname, key.get_name(), fp, known_hosts)

    return _Policy()


# --------------------------------------------------------------------------- pool
_POOL: dict[tuple[str, int, str, str], SshRunner] = {}
_POOL_LOCK = threading.Lock()


def ssh_runner(connection: Connection, *, trust_new_host: bool = False) -> SshRunner:
    """The pooled SshRunner for ``connection`` (one per (host, port, user, key) and process)."""
    key = (connection.host, connection.port, connection.user, connection.key)
    with _POOL_LOCK:
        runner = _POOL.get(key)
        if runner is not None and (runner.connection != connection or runner._pid != os.getpid()):
            if runner._pid == os.getpid():
                runner.close()
            runner = None
        if runner is None:
            runner = SshRunner(connection, trust_new_host=trust_new_host)
            _POOL[key] = runner
        elif trust_new_host:
            runner.trust_new_host = True
        return runner


def runner_for(target: Target, *, trust_new_host: bool = False) -> Runner:
    """LocalRunner for a ``local`` target, the pooled :class:`SshRunner` for an ``ssh`` one."""
    if target.connection.kind == "local":
        return LocalRunner()
    if target.connection.kind == "ssh":
        return ssh_runner(target.connection, trust_new_host=trust_new_host)
    raise RemoteError(f"target {target.name}: connection.kind {target.connection.kind!r} is not local or ssh")


def close_all() -> None:
    """Close every pooled connection (removes the remote session folders); runs at exit."""
    with _POOL_LOCK:
        runners = list(_POOL.values())
        _POOL.clear()
    for r in runners:
        if r._pid == os.getpid():
            r.close()


atexit.register(close_all)
