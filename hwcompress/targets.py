"""Targets: one TOML file per device, validated strictly.

Search order for a name: a path to a ``.toml`` file; the user's target folder
(``$HWCOMPRESS_TARGETS`` or ``~/.config/hwcompress/targets``); the targets shipped
with hwcompress.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any

from hwcompress.errors import TargetError
from hwcompress.profiling.adapters import backend_for, runtime_names
from hwcompress.records import PRECISIONS, Connection, RecordError, Target

CONNECTIONS: tuple[str, ...] = ("local", "ssh")
DEFAULT_TARGET = "x86-cpu"


def shipped_targets_dir() -> Path:
    """Folder of the target files shipped with hwcompress (wheel or source checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_targets", here.parent / "targets"):
        if candidate.is_dir():
            return candidate
    raise TargetError("the shipped target files are missing; reinstall hwcompress")


def user_targets_dir() -> Path:
    env = os.environ.get("HWCOMPRESS_TARGETS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hwcompress" / "targets"


def _target_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for folder in (shipped_targets_dir(), user_targets_dir()):
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                files[path.stem] = path  # user files override shipped ones
    return files


def target_names() -> list[str]:
    return sorted(_target_files())


def parse_target(data: dict[str, Any], source: str, default_name: str) -> Target:
    """Validate a TOML table as a :class:`Target`; errors name ``source`` and the key."""
    data = dict(data)
    data.setdefault("name", default_name)
    if "precisions" in data and isinstance(data["precisions"], list):
        data["precisions"] = tuple(data["precisions"])
    try:
        target = Target._from_fields(data, "")
    except RecordError as exc:
        msg = str(exc).lstrip(":. ").lstrip(".")
        raise TargetError(f"{source}: {msg}") from None
    _check_semantics(target, source)
    return target


def _check_semantics(t: Target, source: str) -> None:
    def bad(key: str, expected: str, got: object) -> TargetError:
        return TargetError(f"{source}: key {key}: expected {expected}, got {got!r}")

    if t.runtime not in runtime_names():  # the runtimes with a registered backend
        raise bad("runtime", " | ".join(runtime_names()), t.runtime)
    if t.connection.kind not in CONNECTIONS:
        raise bad("connection.kind", " | ".join(CONNECTIONS), t.connection.kind)
    if t.threads < 1:
        raise bad("threads", "an integer >= 1", t.threads)
    if t.channel_multiple < 1:
        raise bad("channel_multiple", "an integer >= 1", t.channel_multiple)
    if not t.precisions:
        raise bad("precisions", "a non-empty list", list(t.precisions))
    for p in t.precisions:
        if p not in PRECISIONS:
            raise bad("precisions", "items from " + ", ".join(PRECISIONS), p)
    m = t.measure
    if m.min_runs < 1 or m.max_runs < m.min_runs:
        raise bad("measure.min_runs", "1 <= min_runs <= max_runs", m.min_runs)
    if m.warmup_runs < 0:
        raise bad("measure.warmup_runs", "an integer >= 0", m.warmup_runs)
    if m.max_cv <= 0:
        raise bad("measure.max_cv", "a fraction > 0 (0.03 = 3%)", m.max_cv)
    if m.max_rounds < 1:
        raise bad("measure.max_rounds", "an integer >= 1", m.max_rounds)
    if m.timeout_s <= 0:
        raise bad("measure.timeout_s", "seconds > 0", m.timeout_s)
    if not 0.0 < t.board_tolerance < 1.0:
        raise bad("board_tolerance", "a fraction in (0, 1) (0.05 = 5%)", t.board_tolerance)


def load_target(name_or_path: str, **overrides: Any) -> Target:
    """Load a target by name or path; ``overrides`` replace connection fields (host, port, user, key...)."""
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise TargetError(f"target file {name_or_path} does not exist")
    else:
        files = _target_files()
        if name_or_path not in files:
            raise TargetError(
                f"unknown target {name_or_path!r}; known targets: {', '.join(sorted(files))} "
                "(or give a path to a .toml file)"
            )
        path = files[name_or_path]
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise TargetError(f"{path}: cannot be read ({exc.strerror})") from None
    target = parse_target(data, str(path), path.stem)
    return with_connection(target, **overrides) if overrides else target


def with_connection(target: Target, **overrides: Any) -> Target:
    """Return ``target`` with connection fields replaced (``None`` values are ignored)."""
    known = {f.name for f in dataclasses.fields(Connection)}
    clean = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(clean) - known)
    if unknown:
        raise TargetError(f"unknown connection override(s) {', '.join(unknown)}")
    if not clean:
        return target
    conn = dataclasses.replace(target.connection, **clean)
    if "host" in clean and conn.kind == "local" and backend_for(target).remote_by_default:
        conn = dataclasses.replace(conn, kind="ssh")
    return dataclasses.replace(target, connection=conn)
