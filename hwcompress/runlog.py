"""Keep third-party output out of the user's terminal: it goes to a log file in the run folder.

Converters and runtimes (litert-torch, torchao, absl, TensorFlow Lite's C++ core, ONNX Runtime)
print warnings and banners that say nothing to a user of hwcompress.  Inside
:func:`library_output_to` they are written to one file instead:

- log records of every logger outside ``hwcompress`` (and Python warnings, captured as the
  ``py.warnings`` logger) go to the file and not to the console handlers;
- native writes to file descriptor 2 (C++ logging) go to the file, while Python's
  ``sys.stderr`` (hwcompress's own messages and progress) still reaches the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path


class _OursOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == "hwcompress" or record.name.startswith("hwcompress.")


@contextlib.contextmanager
def library_output_to(path: Path, *, native: bool = True) -> Iterator[Path]:
    """Within the block, third-party log records, warnings and native stderr go to ``path`` (appended)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:  # nowhere to write the log: leave the output where it is
        yield path
        return
    root = logging.getLogger()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    ours = _OursOnly()
    consoles = list(root.handlers)
    for h in consoles:
        h.addFilter(ours)
    root.addHandler(handler)
    was_capturing = logging.getLogger("py.warnings").handlers or None
    logging.captureWarnings(True)
    saved_fd = None
    saved_stderr = sys.stderr
    log_file = None
    if native:
        try:
            sys.stderr.flush()
            fd = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):  # no real stderr (captured): leave native output alone
            fd = -1
        if fd == 2:
            saved_fd = os.dup(2)
            log_file = open(path, "ab", buffering=0)  # closed in finally
            os.dup2(log_file.fileno(), 2)
            sys.stderr = open(saved_fd, "w", buffering=1, encoding=getattr(saved_stderr, "encoding", None) or "utf-8",
                              errors="backslashreplace", closefd=False)
    # console handlers bound to the old stream (whose fd 2 now goes to the file) follow the terminal
    moved = [h for h in consoles if saved_fd is not None and isinstance(h, logging.StreamHandler)
             and getattr(h, "stream", None) is saved_stderr]
    for h in moved:
        h.setStream(sys.stderr)
    try:
        yield path
    finally:
        for h in moved:
            h.setStream(saved_stderr)
        if saved_fd is not None:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            sys.stderr = saved_stderr
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
        if log_file is not None:
            log_file.close()
        if not was_capturing:
            logging.captureWarnings(False)
        root.removeHandler(handler)
        handler.close()
        for h in consoles:
            h.removeFilter(ours)


__all__ = ["library_output_to"]
