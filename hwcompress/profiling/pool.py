"""A pool of boards of one target: several candidates measured at once, boards that fail retried.

``hwcompress search --hosts pi1,pi2,pi3`` (or ``--pool FILE``) measures on every board.  Each board
is a :class:`BoardWorker` — the board's :class:`~hwcompress.profiling.remote.SshRunner` (its
connection and upload cache) and a store of the model files it was sent — living in a Ray actor
(:class:`RayBackend`: ``ray.init()`` locally, or a cluster's address).  On the host, a
:class:`BoardRunner` is that board's :class:`~hwcompress.profiling.runner.Runner`, so a board's
measurement is :func:`~hwcompress.profiling.measure.measure` as for one device (rounds, parsing and
the cache stay on the host; only the profiler runs go through the actor).

:class:`DevicePool`:

- **Calibration.** At start every board profiles the baseline (fastest of ``baseline_rounds``).
  The reference is the lower median of the boards' figures (an actual board; with two boards the
  faster one: throttling slows a board, nothing speeds one up).  A board further than the
  target's ``board_tolerance`` from it is *dropped* (flagged in the log and ``pool.json``): a board
  that throttles, or runs another OS image or runtime, is not slower by one constant factor, so no
  factor would make its readings right.  Every other board's readings are divided by its
  ``scale`` (its baseline over the reference's), so all readings are on the reference's scale;
  each :class:`~hwcompress.records.Measurement` names its ``board`` and its ``board_scale``.
- **Where work goes.** :meth:`DevicePool.submit` (a search's candidates) takes any free board;
  :meth:`DevicePool.measure` / :meth:`DevicePool.measure_batch` (baseline, latency table, the
  judge's pairs: the search's :func:`~hwcompress.profiling.measure.routed` calls) take the primary
  board — the reference while it is up — so that a pair of profiles runs on one board.  A board
  runs one profile at a time.  The cache is read on the host under each board's own key.
- **Faults.** A board that stops answering (:class:`~hwcompress.errors.BoardLost`) is marked down
  and its work goes to another board at once.  A background thread tries it again with
  exponential back-off (``backoff_s`` doubling up to ``max_backoff_s``, at most ``max_rejoins``
  times); when it answers it profiles the baseline again and rejoins with its new scale (or is
  dropped, as above).  When no board is up for ``lost_after_s`` seconds (or none can come back),
  the work waiting raises :class:`~hwcompress.errors.DevicesLost`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import socket
import statistics
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from hwcompress.errors import (
    BoardLost,
    DevicesLost,
    FileMissingError,
    HwcompressError,
    ModelError,
    ProfilerError,
    ProfilerTimeout,
    RemoteError,
    UsageError,
)
from hwcompress.fsutil import atomic_write_text, sha256_file
from hwcompress.profiling.measure import scaled
from hwcompress.records import Connection, Measurement, Target

if TYPE_CHECKING:
    from hwcompress.judge import Reader
    from hwcompress.profiling.cache import MeasurementCache

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Connection fields a board of a pool may set (the target's file gives the rest).
BOARD_KEYS: tuple[str, ...] = ("host", "port", "user", "key", "known_hosts", "python", "workdir")
#: Seconds a host waits for an actor beyond the profiler's own limit (upload, SSH, Ray).
CALL_GRACE_S = 60.0
#: Reconnects a board's SshRunner tries itself before the board counts as lost (the pool retries it later).
BOARD_RECONNECTS = 1
MAX_EVENTS = 500  # events kept in pool.json
STORE_FILES = 256  # model files a board's worker keeps on its node
OVERHEADS_KEPT = 1000  # per board: the latest profiles' Ray overheads (their median is in pool.json)

# board states
UP, DOWN, DROPPED, GONE = "up", "down", "dropped", "gone"


# --------------------------------------------------------------------------- which boards
def parse_hosts(text: str) -> list[dict[str, Any]]:
    """``--hosts``: comma-separated ``[user@]host[:port]`` (``[v6]:port`` for IPv6) -> board overrides."""
    boards: list[dict[str, Any]] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise UsageError(f"--hosts {text!r}: an empty entry; give host names separated by commas, "
                             "e.g. --hosts pi1,pi2 or --hosts pi@pi1:22,pi@pi2:2222")
        board: dict[str, Any] = {}
        if "@" in item:
            user, item = item.rsplit("@", 1)
            if not user:
                raise UsageError(f"--hosts: {raw.strip()!r} has an empty user before '@'")
            board["user"] = user
        port = ""
        if item.startswith("["):
            host, sep, rest = item[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise UsageError(f"--hosts: {raw.strip()!r} is not [IPv6]:port")
            port = rest[1:]
        elif item.count(":") == 1:
            host, port = item.split(":")
        else:
            host = item
        if not host or any(c.isspace() for c in host):
            raise UsageError(f"--hosts: {raw.strip()!r} has no valid host name")
        board["host"] = host
        if port:
            if not port.isdigit() or not 1 <= int(port) <= 65535:
                raise UsageError(f"--hosts: {raw.strip()!r} has port {port!r}; a port is 1-65535")
            board["port"] = int(port)
        boards.append(board)
    check_boards(boards, "--hosts")
    return boards


def load_pool_file(path: Path) -> list[dict[str, Any]]:
    """``--pool FILE``: TOML with ``[[board]]`` tables, or JSON (``{"boards": [...]}`` or a list), each
    board with ``host`` and optionally ``port``, ``user``, ``key``, ``known_hosts``, ``python``, ``workdir``."""
    where = f"--pool {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{where}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    data: Any
    if Path(path).suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"{where}: not valid JSON ({exc})") from None
        if isinstance(data, dict):
            unknown = sorted(set(data) - {"boards"})
            if unknown:
                raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; the file holds \"boards\": [...]")
            data = data.get("boards")
    else:
        try:
            table = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{where}: not valid TOML ({exc}); a .json file is read as JSON") from None
        unknown = sorted(set(table) - {"board"})
        if unknown:
            raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; list boards as [[board]] tables")
        data = table.get("board")
    if not isinstance(data, list) or not data:
        raise UsageError(f"{where}: no boards; list them as [[board]] tables with host = \"...\" (TOML) "
                         "or {\"boards\": [{\"host\": \"...\"}]} (JSON)")
    boards = []
    for i, entry in enumerate(data, 1):
        if not isinstance(entry, dict):
            raise UsageError(f"{where}: board {i} is {type(entry).__name__}, not a table of host/user/port/key")
        boards.append(dict(entry))
    check_boards(boards, where)
    return boards


def check_boards(boards: Sequence[dict[str, Any]], where: str) -> None:
    """Each board names a host, only known keys of the right types; no board twice."""
    if not boards:
        raise UsageError(f"{where}: no boards given")
    seen: set[str] = set()
    for i, b in enumerate(boards, 1):
        unknown = sorted(set(b) - set(BOARD_KEYS))
        if unknown:
            raise UsageError(f"{where}: board {i}: unknown key(s) {', '.join(unknown)}; a board may set "
                             f"{', '.join(BOARD_KEYS)}")
        host = b.get("host")
        if not isinstance(host, str) or not host.strip():
            raise UsageError(f"{where}: board {i} has no host")
        port = b.get("port", 22)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise UsageError(f"{where}: board {i} ({host}): port must be an integer 1-65535, got {port!r}")
        for k in ("user", "key", "known_hosts", "python", "workdir"):
            if k in b and not isinstance(b[k], str):
                raise UsageError(f"{where}: board {i} ({host}): {k} must be a string, got {b[k]!r}")
        name = f"{host}:{port}"
        if name in seen:
            raise UsageError(f"{where}: board {name} is listed twice")
        seen.add(name)


def board_targets(target: Target, boards: Sequence[dict[str, Any]]) -> list[Target]:
    """``target`` once per board, reached over SSH with the board's connection fields."""
    from hwcompress.targets import with_connection

    return [with_connection(target, kind="ssh", **b) for b in boards]


# --------------------------------------------------------------------------- the board side
def _failure(exc: BaseException) -> dict[str, Any]:
    return {"ok": False, "error": type(exc).__name__, "message": str(exc)}


class BoardWorker:
    """One board, in its actor: the board's SshRunner and the model files the host sent it.

    Methods return plain dicts (``ok`` true, or the error's class name and message): a Ray actor
    hands them back without pickling exception classes.
    """

    def __init__(self, connection: dict[str, Any], *, trust_new_host: bool = False,
                 reconnects: int = BOARD_RECONNECTS, backoff_s: float = 0.5) -> None:
        from hwcompress.profiling.remote import SshRunner

        self.connection = Connection.from_dict(connection)
        self.runner = SshRunner(self.connection, trust_new_host=trust_new_host, max_retries=reconnects,
                                backoff_s=backoff_s)
        self.store = Path(tempfile.mkdtemp(prefix="hwc-board-"))

    def run(self, script: str, args: list[str], files: list[tuple[str, str, bytes | None]],
            timeout_s: float) -> dict[str, Any]:
        """:meth:`SshRunner.run` of ``script``; ``files`` are (host path as in ``args``, sha256, bytes or
        None when sent before).  Files this worker lacks are answered ``missing`` (send them again)."""
        local: dict[str, str] = {}
        missing = []
        for name, sha, data in files:
            path = self.store / f"{sha}{Path(name).suffix}"
            if data is not None and not path.is_file():
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)
            if path.is_file():
                path.touch()  # recently used: evicted last
            else:
                missing.append(sha)
            local[name] = str(path)
        if missing:
            return {"ok": False, "missing": missing}
        self._evict(keep=set(local.values()))
        t0 = time.perf_counter()
        try:
            stdout = self.runner.run(script, [local.get(a, a) for a in args], [Path(p) for p in local.values()],
                                     timeout_s)
        except HwcompressError as exc:
            return _failure(exc)
        return {"ok": True, "stdout": stdout, "seconds": time.perf_counter() - t0}

    def _evict(self, keep: set[str]) -> None:
        """Keep at most :data:`STORE_FILES` model files (the oldest go; the host sends one again when asked)."""
        files = sorted(self.store.iterdir(), key=lambda p: p.stat().st_mtime)
        for old in files[: max(0, len(files) - STORE_FILES)]:
            if str(old) not in keep:
                old.unlink(missing_ok=True)

    def ping(self, timeout_s: float) -> dict[str, Any]:
        """One command on the board (connecting if needed): is it back?"""
        try:
            res = self.runner.execute("true", timeout_s)
        except HwcompressError as exc:
            return _failure(exc)
        if res.returncode != 0:
            return {"ok": False, "error": "RemoteError", "message": f"`true` exited {res.returncode}"}
        return {"ok": True}

    def where(self) -> dict[str, Any]:
        """Where this worker runs: host name, process, and its Ray node when it is an actor."""
        node = ""
        with contextlib.suppress(Exception):  # not in Ray (the thread backend), or Ray without a context
            import ray

            if ray.is_initialized():
                node = ray.get_runtime_context().get_node_id()
        return {"host": socket.gethostname(), "pid": os.getpid(), "ray_node": node}

    def stats(self) -> dict[str, Any]:
        """The SSH runner's counters (connects, uploads, retries, seconds per phase)."""
        return dataclasses.asdict(self.runner.stats)

    def close(self) -> None:
        self.runner.close()
        shutil.rmtree(self.store, ignore_errors=True)


class WorkerHandle(Protocol):
    """A :class:`BoardWorker` wherever it lives; calls return futures (Ray's, or a thread's)."""

    def call(self, method: str, *args: Any) -> Future[Any]: ...

    def kill(self) -> None: ...


class Backend(Protocol):
    """Starts one worker per board (:class:`RayBackend`; tests use threads)."""

    def spawn(self, target: Target, trust_new_host: bool) -> WorkerHandle: ...

    def shutdown(self) -> None: ...


class _RayHandle:
    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def call(self, method: str, *args: Any) -> Future[Any]:
        fut: Future[Any] = getattr(self.actor, method).remote(*args).future()
        return fut

    def kill(self) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.kill(self.actor, no_restart=True)


def _token_auth_as_ray_start_does() -> None:
    """Send this host's Ray token when joining a cluster, as ``ray start`` does.

    Since Ray 2.5x ``ray start`` (and a local ``ray.init()``) turn token authentication on whenever a
    token exists (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``) and
    ``RAY_AUTH_MODE`` is unset, but ``ray.init(address=...)`` does not: joining such a cluster then
    fails with "InvalidAuthToken" after ~20 s of retries (seen with Ray 2.60).  An explicit
    ``RAY_AUTH_MODE`` is left as the user set it.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    token_file = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    if not (os.environ.get("RAY_AUTH_TOKEN") or Path(token_file).is_file()):
        return
    try:  # what `ray start` calls: sets the variable and refreshes Ray's config, read once at import
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # another Ray: the variable alone (enough where ray reads it at init)
        os.environ["RAY_AUTH_MODE"] = "token"
    else:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


class RayBackend:
    """Board workers as Ray actors.

    ``address`` None starts a local Ray instance (stopped by :meth:`shutdown`); an address (``auto``,
    ``ray://host:10001``, ``host:6379``) joins a running cluster, whose nodes need this hwcompress
    installed.  Actors go to a node that offers the custom resource ``hwcompress_boards`` (start the
    machine wired to the boards with ``ray start --resources '{"hwcompress_boards": 100}'``), else to
    this host's node.  An actor takes no CPU of Ray's: it waits on SSH.
    """

    RESOURCE = "hwcompress_boards"

    def __init__(self, address: str | None = None) -> None:
        import ray

        t0 = time.perf_counter()
        self.started = not ray.is_initialized()
        if self.started:
            # Ray's logger prints to the terminal itself: its records go where the application's logs go
            ray_log = logging.getLogger("ray")
            for h in list(ray_log.handlers):
                ray_log.removeHandler(h)
            ray_log.propagate = True
            if address:
                _token_auth_as_ray_start_does()
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING, configure_logging=False)
            except Exception as exc:  # ConnectionError, RuntimeError, ValueError, ray's AuthenticationError
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                chain = f"{type(exc).__name__} {exc} {type(exc.__cause__).__name__} {exc.__cause__}"
                if "authenticat" in chain.lower():
                    why += ("; the cluster wants a token: put the head node's ~/.ray/auth_token on this host "
                            "(or set RAY_AUTH_TOKEN) and RAY_AUTH_MODE=token")
                raise RemoteError(f"cannot start or join {where} ({why}); "
                                  "check --ray-address (`ray status` on the head node)") from None
        self.startup_s = time.perf_counter() - t0
        self._cls = ray.remote(num_cpus=0, max_restarts=0)(BoardWorker)
        self._options: dict[str, Any] = {}
        if any(self.RESOURCE in n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")):
            self._options["resources"] = {self.RESOURCE: 0.01}
        else:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            self._options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False)
        log.info("Ray %s in %.1f s", "started" if self.started else "joined", self.startup_s)

    def spawn(self, target: Target, trust_new_host: bool) -> WorkerHandle:
        actor = self._cls.options(**self._options).remote(target.connection.to_dict(), trust_new_host=trust_new_host)
        return _RayHandle(actor)

    def shutdown(self) -> None:
        import ray

        if self.started and ray.is_initialized():
            ray.shutdown()


# --------------------------------------------------------------------------- the host side
_RAISE: dict[str, type[HwcompressError]] = {
    "ProfilerTimeout": ProfilerTimeout, "ProfilerError": ProfilerError, "ModelError": ModelError,
    "UnsupportedLayerError": ModelError, "FileMissingError": FileMissingError,
}


def call(handle: WorkerHandle, method: str, *args: Any, wait_s: float) -> Any:
    """``handle.method(*args)`` within ``wait_s`` seconds; a worker that died or does not answer is a lost board."""
    fut = handle.call(method, *args)
    try:
        return fut.result(timeout=wait_s)
    except FutureTimeout:
        fut.cancel()
        raise BoardLost(f"no answer within {wait_s:g} s") from None
    except HwcompressError:
        raise
    except Exception as exc:  # the actor process died (RayActorError) or the call could not be made
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BoardLost(f"its worker failed ({type(exc).__name__}: {first})") from None


@dataclass
class Board:
    """The host's view of one board."""

    target: Target
    handle: WorkerHandle | None = None
    state: str = DOWN
    busy: bool = False
    baseline_ms: float = 0.0
    scale: float = 1.0
    reason: str = ""
    attempts: int = 0
    retry_at: float = 0.0
    measured: int = 0
    shipped: set[str] = field(default_factory=set)
    overhead_s: list[float] = field(default_factory=list)  # per profile: host wall - seconds in the board's SshRunner
    worker: dict[str, Any] = field(default_factory=dict)  # BoardWorker.where(): host, pid, Ray node of its worker

    @property
    def name(self) -> str:
        return self.target.connection.board

    def target_for(self, target: Target) -> Target:
        """``target`` (its name and timing settings) on this board."""
        return dataclasses.replace(target, connection=self.target.connection)

    def summary(self) -> dict[str, Any]:
        over = statistics.median(self.overhead_s) * 1000 if self.overhead_s else None
        return {"board": self.name, "state": self.state, "baseline_ms": self.baseline_ms, "scale": self.scale,
                "measured": self.measured, "reason": self.reason, "overhead_ms": over, "worker": self.worker}


class BoardRunner:
    """The :class:`~hwcompress.profiling.runner.Runner` of one board of a pool: runs through its worker.

    Model files go by sha256: bytes only the first time a worker sees them.  A board that does not
    answer raises :class:`BoardLost`; the profiler's own failures raise as from a local SshRunner.
    """

    def __init__(self, board: Board) -> None:
        self.board = board

    def run(self, script: str, args: Sequence[str], files: Sequence[Path], timeout_s: float) -> str:
        b = self.board
        if b.handle is None:
            raise BoardLost(f"board {b.name} has no worker")
        items: list[tuple[str, str, bytes | None]] = []
        for f in files:
            if not Path(f).is_file():
                raise ProfilerError(f"model file {f} disappeared before profiling")
            sha = sha256_file(f)
            items.append((str(f), sha, None if sha in b.shipped else Path(f).read_bytes()))
        limit = timeout_s + CALL_GRACE_S
        t0 = time.perf_counter()
        reply = call(b.handle, "run", script, list(args), items, timeout_s, wait_s=limit)
        if reply.get("missing"):  # the worker was restarted: send them again
            items = [(n, s, Path(n).read_bytes()) for n, s, _ in items]
            reply = call(b.handle, "run", script, list(args), items, timeout_s, wait_s=limit)
        if reply.get("ok"):
            b.shipped.update(s for _, s, _ in items)
            b.overhead_s.append(time.perf_counter() - t0 - float(reply.get("seconds", 0.0)))
            del b.overhead_s[:-OVERHEADS_KEPT]
            return str(reply["stdout"])
        kind, message = str(reply.get("error", "")), str(reply.get("message", "no message"))
        if kind in _RAISE:
            raise _RAISE[kind](message)
        raise BoardLost(message)


class DevicePool:
    """Boards of one target measuring at once (see the module's docstring for the rules).

    ``target`` is the search's target (its name and settings); ``boards`` the same target on each
    board.  ``on_event`` gets one line per board event (down, rejoined, dropped) for the user;
    ``record`` is the file (``RUN_DIR/pool.json``) that keeps the boards' state and events.
    """

    def __init__(
        self,
        target: Target,
        boards: Sequence[Target],
        backend: Backend,
        *,
        trust_new_host: bool = False,
        baseline_rounds: int = 3,
        lost_after_s: float = 60.0,
        backoff_s: float = 2.0,
        max_backoff_s: float = 60.0,
        max_rejoins: int = 10,
        record: Path | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        if not boards:
            raise UsageError("a pool needs at least one board")
        if baseline_rounds < 1 or lost_after_s < 0 or backoff_s <= 0 or max_rejoins < 0:
            raise ValueError("baseline_rounds >= 1, lost_after_s >= 0, backoff_s > 0 and max_rejoins >= 0")
        self.target = target
        self.boards = [Board(t) for t in boards]
        self.backend = backend
        self.trust_new_host = trust_new_host
        self.baseline_rounds = baseline_rounds
        self.lost_after_s = lost_after_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_rejoins = max_rejoins
        self.record = record
        self.on_event = on_event
        self.reference: Board | None = None
        self.reference_ms = 0.0
        self.baseline: Path | None = None
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._jobs = ThreadPoolExecutor(max_workers=len(self.boards), thread_name_prefix="hwc-pool")
        self._rejoiner: threading.Thread | None = None

    # ------------------------------------------------------------------ start, stop
    @property
    def size(self) -> int:
        return len(self.boards)

    def up(self) -> list[Board]:
        with self._cond:
            return [b for b in self.boards if b.state == UP]

    def start(self, baseline: Path) -> None:
        """Start a worker per board and calibrate every board on ``baseline`` at once; drop outliers.

        Raises DevicesLost when no board could profile it."""
        self.baseline = Path(baseline)
        for b in self.boards:
            b.handle = self.backend.spawn(b.target, self.trust_new_host)
        figures = list(self._jobs.map(self._calibrate_quietly, self.boards))
        ok = [(b, ms) for b, ms in zip(self.boards, figures, strict=True) if ms is not None]
        if not ok:
            raise DevicesLost("no board of the pool could profile the baseline: "
                              + "; ".join(f"{b.name}: {b.reason}" for b in self.boards))
        self.reference_ms = statistics.median_low(ms for _, ms in ok)
        self.reference = next(b for b, ms in ok if ms == self.reference_ms)
        for b, ms in ok:
            self._admit(b, ms)
        for b in self.boards:
            if b.state == DOWN:
                self._down(b, b.reason)
        self._save()
        self._rejoiner = threading.Thread(target=self._rejoin_loop, name="hwc-pool-rejoin", daemon=True)
        self._rejoiner.start()

    def close(self) -> None:
        """Stop the rejoin thread, close every board's SSH session and stop the workers (and Ray if started)."""
        self._save()
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._rejoiner is not None:
            self._rejoiner.join(timeout=30)
        self._jobs.shutdown(wait=False, cancel_futures=True)
        for b in self.boards:
            if b.handle is not None:
                with contextlib.suppress(HwcompressError):
                    call(b.handle, "close", wait_s=20.0)
                b.handle.kill()
                b.handle = None
        self.backend.shutdown()

    def __enter__(self) -> DevicePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ calibration
    def _calibrate(self, b: Board) -> float:
        """The fastest of ``baseline_rounds`` fresh profiles of the baseline on board ``b`` (ms)."""
        from hwcompress.profiling.measure import measure

        assert self.baseline is not None
        runner = BoardRunner(b)
        return min(measure(self.baseline, b.target_for(self.target), cache=None, runner=runner, force=True)
                   .latency.median_ms for _ in range(self.baseline_rounds))

    def _calibrate_quietly(self, b: Board) -> float | None:
        try:
            assert b.handle is not None
            b.worker = call(b.handle, "where", wait_s=60.0)
            return self._calibrate(b)
        except HwcompressError as exc:
            b.reason = str(exc)
            return None

    def _admit(self, b: Board, ms: float) -> None:
        """Board ``b`` measured the baseline at ``ms``: up with its scale, or dropped past the tolerance."""
        tol = self.target.board_tolerance
        scale = ms / self.reference_ms
        with self._cond:
            b.baseline_ms, b.scale, b.attempts = ms, scale, 0
            if abs(scale - 1.0) > tol:
                b.state = DROPPED
                b.reason = (f"its baseline {ms:.3f} ms is {abs(scale - 1) * 100:.1f}% "
                            f"{'slower' if scale > 1 else 'faster'} than the reference board {self._ref_name()} "
                            f"({self.reference_ms:.3f} ms), past board_tolerance {tol * 100:g}% (throttling, "
                            f"another OS image or runtime?)")
                self._event(b, "dropped", b.reason, warn=True)
            else:
                b.state, b.reason = UP, ""
                self._event(b, "up", f"baseline {ms:.3f} ms, scale {scale:.3f} of the reference")
            self._cond.notify_all()

    def _ref_name(self) -> str:
        return self.reference.name if self.reference is not None else "?"

    # ------------------------------------------------------------------ faults
    def _down(self, b: Board, why: str) -> None:
        with self._cond:
            if b.state in (DROPPED, GONE):
                return
            b.state, b.reason = DOWN, why
            b.retry_at = time.monotonic() + self._delay(b.attempts)
            self._event(b, "down", f"{why}; its work goes to the other boards, it is tried again in "
                                   f"{self._delay(b.attempts):.1f} s", warn=True)
            self._cond.notify_all()

    def _delay(self, attempts: int) -> float:
        return float(min(self.backoff_s * 2 ** attempts, self.max_backoff_s))

    def _rejoin_loop(self) -> None:
        while not self._stop.wait(0.2):
            now = time.monotonic()
            with self._cond:
                due = [b for b in self.boards if b.state == DOWN and b.retry_at <= now]
            for b in due:
                if self._stop.is_set():
                    return
                self._try_rejoin(b)

    def _try_rejoin(self, b: Board) -> None:
        """Ping board ``b`` (a fresh worker if its actor died); when it answers, calibrate it again."""
        try:
            if b.handle is None:
                b.handle = self.backend.spawn(b.target, self.trust_new_host)
                b.shipped = set()
            try:
                reply = call(b.handle, "ping", 10.0, wait_s=30.0)
            except BoardLost:  # the worker itself died or hangs: a fresh one next time
                b.handle.kill()
                b.handle = None
                raise
            if not reply.get("ok"):
                raise BoardLost(str(reply.get("message", "no answer")))
            b.worker = call(b.handle, "where", wait_s=30.0)
            ms = self._calibrate(b)
        except HwcompressError as exc:
            with self._cond:
                b.attempts += 1
                if b.attempts > self.max_rejoins:
                    b.state = GONE
                    self._event(b, "gone", f"still not answering after {self.max_rejoins} tries ({exc})", warn=True)
                else:
                    b.retry_at = time.monotonic() + self._delay(b.attempts)
                    log.info("board %s not back (%s); next try in %.0f s", b.name, exc, self._delay(b.attempts))
                self._cond.notify_all()
            self._save()
            return
        self._admit(b, ms)
        if b.state == UP:
            self._event(b, "rejoined", f"scale {b.scale:.3f}")
        self._save()

    # ------------------------------------------------------------------ scheduling
    def _acquire(self, primary: bool) -> Board:
        """A free board that is up (``primary``: the reference while it is up, else the one nearest its scale);
        waits while boards are busy, or down but may come back (at most ``lost_after_s``)."""
        lost_since: float | None = None
        with self._cond:
            while True:
                if self._stop.is_set():
                    raise DevicesLost("the pool was closed")
                up = [b for b in self.boards if b.state == UP]
                if up:
                    lost_since = None
                    if primary:
                        first = min(up, key=lambda b: (b is not self.reference, abs(b.scale - 1.0)))
                        free = [first] if not first.busy else []
                    else:
                        free = sorted((b for b in up if not b.busy), key=lambda b: (b.measured, abs(b.scale - 1.0)))
                    if free:
                        free[0].busy = True
                        return free[0]
                else:
                    if not any(b.state == DOWN for b in self.boards):
                        raise DevicesLost(self._lost_line())
                    now = time.monotonic()
                    lost_since = now if lost_since is None else lost_since
                    if now - lost_since >= self.lost_after_s:
                        raise DevicesLost(self._lost_line())
                self._cond.wait(timeout=0.25)

    def _release(self, b: Board) -> None:
        with self._cond:
            b.busy = False
            self._cond.notify_all()

    def _lost_line(self) -> str:
        why = next((b.reason for b in self.boards if b.reason), "")
        cut = why if len(why) <= 200 else why[:197] + "..."
        return ("every board of the pool is gone (" + ", ".join(f"{b.name} {b.state}" for b in self.boards)
                + (f"; {cut}" if cut else "") + ")")

    def _on_board(self, work: Callable[[Board], T], primary: bool) -> T:
        """``work`` on a board; a board lost meanwhile is marked down and ``work`` goes to another."""
        while True:
            b = self._acquire(primary)
            try:
                out = work(b)
            except BoardLost as exc:
                self._down(b, str(exc))
                continue
            finally:
                self._release(b)
            with self._cond:
                b.measured += 1
            return out

    def _cached(self, model: Path, target: Target, cache: MeasurementCache | None, per_node: bool) -> Measurement | None:
        """A cached measurement of ``model`` from any board not dropped, on the pool's scale."""
        from hwcompress.profiling.measure import cache_key, replace_target

        if cache is None:
            return None
        sha = sha256_file(model)
        with self._cond:
            boards = sorted((b for b in self.boards if b.state in (UP, DOWN)), key=lambda b: b is not self.reference)
        for b in boards:
            hit = cache.get(cache_key(sha, b.target_for(target)))
            if hit is not None and (hit.per_node_us or not per_node):
                return scaled(replace_target(hit, b.target_for(target)), b.scale)
        return None

    # ------------------------------------------------------------------ measuring (the route)
    def measure(self, model: Path, target: Target, *, cache: MeasurementCache | None = None,
                per_node: bool = False, force: bool = False) -> Measurement:
        """:func:`~hwcompress.profiling.measure.measure` on the primary board, on the pool's scale."""
        from hwcompress.profiling.measure import measure

        if not force:
            hit = self._cached(model, target, cache, per_node)
            if hit is not None:
                return hit

        def work(b: Board) -> Measurement:
            m = measure(model, b.target_for(target), cache=cache, runner=BoardRunner(b), per_node=per_node,
                        force=force)
            return scaled(m, b.scale)

        return self._on_board(work, primary=True)

    def measure_batch(self, models: list[Path], target: Target, *, cache: MeasurementCache | None = None,
                      force: bool = False, cache_ids: list[str] | None = None) -> list[Measurement]:
        """:func:`~hwcompress.profiling.measure.measure_batch` on the primary board, on the pool's scale."""
        from hwcompress.profiling.measure import measure_batch

        def work(b: Board) -> list[Measurement]:
            got = measure_batch(models, b.target_for(target), cache=cache, runner=BoardRunner(b), force=force,
                                cache_ids=cache_ids)
            return [scaled(m, b.scale) for m in got]

        return self._on_board(work, primary=True)

    def submit(self, model: Path, target: Target, *, cache: MeasurementCache | None = None,
               reader: Reader | None = None) -> Future[Measurement]:
        """Measure ``model`` on the first free board, in the background (the search's candidates).
        With ``reader`` (a search's: :class:`~hwcompress.judge.Reader`) the board reads it that way: in
        pairs beside the baseline, on that board (the cache is not used)."""
        from hwcompress.profiling.measure import measure

        def work(b: Board) -> Measurement:
            if reader is not None:
                return reader.read(model, runner=BoardRunner(b), target=b.target_for(target))
            return scaled(measure(model, b.target_for(target), cache=cache, runner=BoardRunner(b)), b.scale)

        def job() -> Measurement:
            hit = None if reader is not None else self._cached(model, target, cache, False)
            return hit if hit is not None else self._on_board(work, primary=False)

        return self._jobs.submit(job)

    # ------------------------------------------------------------------ record
    def _event(self, b: Board, what: str, detail: str, warn: bool = False) -> None:
        self.events.append({"t": time.strftime("%Y-%m-%dT%H:%M:%S"), "board": b.name, "event": what, "detail": detail})
        del self.events[:-MAX_EVENTS]
        line = f"board {b.name} {what}: {detail}"
        if self.on_event is not None:  # the front end shows it; the log keeps it
            log.info("%s", line)
            self.on_event(line)
        else:
            (log.warning if warn else log.info)("%s", line)

    def state(self) -> dict[str, Any]:
        """The pool as ``pool.json`` keeps it: reference, tolerance, each board, the events."""
        with self._cond:
            return {"target": self.target.name, "reference": self._ref_name(), "reference_ms": self.reference_ms,
                    "board_tolerance": self.target.board_tolerance, "boards": [b.summary() for b in self.boards],
                    "events": list(self.events)}

    def _save(self) -> None:
        if self.record is not None:
            atomic_write_text(self.record, json.dumps(self.state(), indent=2))


@contextlib.contextmanager
def open_pool(target: Target, boards: Sequence[Target], baseline: Path, *, ray_address: str | None = None,
              backend: Backend | None = None, **kwargs: Any) -> Iterator[DevicePool]:
    """A started :class:`DevicePool` (Ray by default) whose boards measure every routed call for ``target``."""
    from hwcompress.profiling.measure import routed

    pool = DevicePool(target, boards, backend if backend is not None else RayBackend(ray_address), **kwargs)
    with pool:
        pool.start(baseline)
        with routed(target.name, pool):
            yield pool
