"""Budgets: ``--latency-budget 0.5x`` (fraction of the measured baseline) or ``12ms`` / ``12``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from hwcompress.errors import UsageError

_RATIO = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*[x×]\s*$", re.IGNORECASE)
_ABS = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|kb|kib|mb|mib|b)?\s*$", re.IGNORECASE)
_UNITS = {"ms": 1.0, "b": 1.0, "kb": 1e3, "kib": 1024.0, "mb": 1e6, "mib": 2.0**20}


@dataclass(frozen=True)
class BudgetSpec:
    """A budget as the user wrote it: a ratio of the baseline, or an absolute value (ms or bytes)."""

    text: str
    ratio: float | None = None
    absolute: float | None = None

    def resolve(self, baseline: float) -> float:
        """The absolute budget given the baseline's measured value (same unit as ``baseline``)."""
        if self.ratio is not None:
            return self.ratio * baseline
        assert self.absolute is not None
        return self.absolute

    def as_ratio(self, baseline: float) -> float:
        return self.resolve(baseline) / baseline if baseline > 0 else 1.0


def parse_budget(text: str, option: str, *, unit: str = "ms") -> BudgetSpec:
    """Parse ``0.5x`` or an absolute value in ``unit`` (``ms`` for latency, ``b`` for sizes)."""
    m = _RATIO.match(text)
    if m:
        ratio = float(m.group(1))
        if not 0.0 < ratio <= 1.0:
            raise UsageError(f"{option} {text!r}: a ratio must be in (0, 1], e.g. 0.5x")
        return BudgetSpec(text=text, ratio=ratio)
    m = _ABS.match(text)
    if m:
        value = float(m.group(1))
        suffix = (m.group(2) or unit).lower()
        if unit == "ms" and suffix != "ms":
            raise UsageError(f"{option} {text!r}: latency is given as 0.5x or in ms, e.g. 3.2ms")
        if unit != "ms" and suffix == "ms":
            raise UsageError(f"{option} {text!r}: a size is given as 0.25x or in bytes/KB/MB, e.g. 500KB")
        if value <= 0:
            raise UsageError(f"{option} {text!r}: must be positive")
        return BudgetSpec(text=text, absolute=value * _UNITS[suffix])
    example = "0.5x or 3.2ms" if unit == "ms" else "0.25x or 500KB"
    raise UsageError(f"{option} {text!r} is not a budget; write it as {example}")
