"""Progress lines for long work, readable without a terminal (CI logs, ``make demo > log``).

The library logs them on the ``hwcompress.progress`` logger; the CLI shows that logger at INFO
when stderr is not a terminal (where rich's live bars would print nothing until the end), and
leaves it quiet under a live bar.  Each line says what is done of how much, the elapsed time and
an ETA.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("hwcompress.progress")

EVERY_S = 30.0  # at most one line per this many seconds within a unit of work (an epoch)


def clock(seconds: float) -> str:
    """``1:02:03`` / ``2:03`` for a duration in seconds."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class Ticker:
    """Counts ``total`` steps of one job and logs ``label done/total, elapsed, ETA`` now and then.

    ``step()`` logs at most once per ``every_s`` seconds; ``mark(text)`` always logs (the end of
    an epoch, with its figures).
    """

    def __init__(self, label: str, total: int, *, every_s: float = EVERY_S) -> None:
        self.label = label
        self.total = max(int(total), 1)
        self.every_s = every_s
        self.done = 0
        self.t0 = time.monotonic()
        self._last = self.t0

    def eta(self) -> str:
        elapsed = time.monotonic() - self.t0
        if self.done <= 0:
            return "ETA unknown"
        return f"ETA {clock(elapsed / self.done * (self.total - self.done))}"

    def line(self, text: str = "") -> str:
        elapsed = time.monotonic() - self.t0
        extra = f" · {text}" if text else ""
        return f"{self.label} {min(self.done, self.total)}/{self.total} · {clock(elapsed)} elapsed · {self.eta()}{extra}"

    def step(self, n: int = 1, text: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            log.info("%s", self.line(text))

    def mark(self, text: str = "") -> None:
        self._last = time.monotonic()
        log.info("%s", self.line(text))


__all__ = ["Ticker", "clock"]
