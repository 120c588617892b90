"""Every error hwcompress raises on purpose.

The CLI turns any :class:`HwcompressError` into one line on stderr and exit code 2
(3 for :class:`BudgetError`: a result over its budget, or a budget out of reach).
Messages say what was wrong and what to do, in one sentence each.
"""

from __future__ import annotations


class HwcompressError(Exception):
    """Base class: a problem the user can fix (bad input, missing file, unreachable device)."""

    exit_code: int = 2


class UsageError(HwcompressError):
    """Bad command-line value or combination of options."""


class FileMissingError(HwcompressError):
    """A file or folder the user named does not exist."""


class TargetError(HwcompressError):
    """Unknown target or an invalid target TOML file."""


class DataError(HwcompressError):
    """A data set that cannot be read or is not in a supported layout."""


class ModelError(HwcompressError):
    """A model that cannot be loaded, exported, traced or run."""


class UnsupportedLayerError(ModelError):
    """A layer the pruning or quantization engine cannot handle; names the layer."""


class ProfilerError(HwcompressError):
    """The on-device profiler failed, timed out or printed something unreadable."""


class ProfilerTimeout(ProfilerError):
    """The profiler ran past its time limit."""


class RemoteError(HwcompressError):
    """SSH connection, authentication, host-key or remote command failure."""


class HostKeyError(RemoteError):
    """The device's host key is unknown or does not match known_hosts."""


class BoardLost(RemoteError):
    """One board of a pool stopped answering (connection lost, its actor died); the pool retries its work
    on another board and tries the board again later."""


class DevicesLost(RemoteError):
    """Every board of a pool is gone (down past the wait, or dropped): the search stops, resumable."""


class MissingDependencyError(HwcompressError):
    """An optional package (litert-torch, tensorrt, ...) is needed but not installed."""


class PolicyError(HwcompressError):
    """A compression policy that does not fit the model or the target."""


class CacheError(HwcompressError):
    """The measurement cache cannot be opened or written."""


class ArtifactError(HwcompressError):
    """An artifact directory that is missing, incomplete or would be overwritten."""


class BudgetError(HwcompressError):
    """The result is over its latency / size / memory budget, or the budget is out of reach (exit 3)."""

    exit_code = 3
