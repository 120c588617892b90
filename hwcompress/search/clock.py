"""The search's time budget (``--time-budget SECONDS``): the whole run, from its start to the artifact.

A stage's episodes are the only part of a search whose length is free; everything else (a stage's
pick, the fine-tune of stage 1's winner, stage 2's set-up, the artifact) has to be done whatever the
clock says.  So the plan estimates that work from timings taken on this run and gives the episodes
what is left:

* at the start of a stage's episodes, the time left to the end of the budget, less the estimate of
  all the work still to come after them (this stage's pick and everything past it), is shared
  between this stage and the later ones in proportion to their episodes; this stage's episodes stop
  at the first episode end past its share (a stage plays at least one episode, and its seeds);
* time a stage does not use passes on to the next: stage 2's share is worked out when it starts,
  from what stage 1 left;
* a piece of work, once done, is no longer estimated; a pick's measured seconds become the estimate
  of the next stage's pick.

The estimates (:func:`estimate_costs`) are in units measured at the start of the run: one fresh
profile of the baseline (``profile_s``), one distillation step of the fine-tune (``step_s``) and the
evaluation of one image (``image_s``).  A budget that cannot cover them is refused before the
episodes (:meth:`TimePlan.check`), with the estimate, rather than ending hours later past it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from hwcompress.errors import UsageError
from hwcompress.judge import MIN_PAIRS, READING_PAIRS

if TYPE_CHECKING:
    from torch import nn

    from hwcompress.data import DataSplits

#: The work of a two-stage search besides its episodes, in the order it is done: stage 1's episodes
#: come before "prune pick", stage 2's between "quant setup" and "quant pick".
WORK = ("prune pick", "finetune", "quant setup", "quant pick", "artifact")
#: The work that follows each stage's episodes (and comes before the next stage's).
AFTER = {"prune": WORK, "quant": WORK[3:]}
#: Candidates a pick judges in the estimate before one has been timed (the tries; the measured
#: seconds of stage 1's pick replace it for stage 2).
PICK_JUDGES = 3


@dataclass(frozen=True)
class Units:
    """Timings taken on this run, the estimates' units (seconds)."""

    profile_s: float  # one fresh profile of the baseline on the target
    step_s: float = 0.0  # one fine-tune step (batch of the fine-tune, the full model as student)
    image_s: float = 0.0  # the float model's evaluation of one image


def estimate_costs(
    units: Units, *, stages: Sequence[str], finetune_epochs: int, train_images: int, eval_images: int,
    precisions: int, batch_size: int = 128,
) -> dict[str, float]:
    """Seconds of each piece of :data:`WORK` this search will do (0 for what it will not).

    - a pick: ``PICK_JUDGES`` verdicts of ``MIN_PAIRS`` pairs (two profiles each);
    - the fine-tune: its steps, then the validation and test images it scores;
    - stage 2's set-up: each precision of the pruned model read beside fp32 (``READING_PAIRS`` pairs)
      and played once as a plain policy;
    - the artifact: the baseline and the result scored on the test images (twice: float and as the
      runtime runs it), measured, and the final verdict.
    """
    judge = 2 * MIN_PAIRS * units.profile_s
    reading = 2 * READING_PAIRS * units.profile_s
    costs = dict.fromkeys(WORK, 0.0)
    if "prune" in stages:
        costs["prune pick"] = PICK_JUDGES * judge
        if finetune_epochs > 0:
            steps = finetune_epochs * math.ceil(train_images / batch_size)
            costs["finetune"] = steps * units.step_s + 2 * eval_images * units.image_s
    if "quant" in stages:
        costs["quant setup"] = precisions * 2 * reading
        costs["quant pick"] = PICK_JUDGES * judge
    costs["artifact"] = 3 * judge + 4 * eval_images * units.image_s
    return costs


@dataclass
class TimePlan:
    """One search's clock: ``total_s`` seconds from ``start`` (``time.monotonic()``)."""

    total_s: float
    start: float
    costs: dict[str, float]
    episodes: dict[str, int]  # each stage's planned episodes (a stage the search skips: absent)
    done: set[str] = field(default_factory=set)
    log: list[str] = field(default_factory=list)

    @property
    def end(self) -> float:
        return self.start + self.total_s

    def reserve(self, stage: str) -> float:
        """Estimated seconds of the work after ``stage``'s episodes, to the artifact."""
        return sum(self.costs[w] for w in AFTER[stage] if w not in self.done)

    def parts(self) -> str:
        """The estimates of the work still to do besides the episodes, one by one ("finetune 200 s, ...")."""
        return ", ".join(f"{w} {s:.0f} s" for w, s in self.costs.items() if s > 0 and w not in self.done)

    def check(self, now: float | None = None, *, firm: bool = True) -> str:
        """Before the first stage's episodes: refuse a budget that leaves the episodes nothing (``firm``, the
        search's ``--time-budget``), or say so and go on with the stages' seeds and one episode each (a
        target, as the demo's: a slow machine still gets its result, later than the target).  Returns the
        line said ('' when the budget fits)."""
        now = time.monotonic() if now is None else now
        first = next(iter(self.episodes), None)
        if first is None:
            return ""
        need, left = self.reserve(first), self.end - now
        if need < left:
            return ""
        parts = self.parts()
        if firm:
            raise UsageError(
                f"--time-budget {self.total_s:.0f} s: {left:.0f} s are left and the work besides the episodes is "
                f"estimated at {need:.0f} s on this target ({parts}); give at least {self.total_s + need - left + 60:.0f} s "
                f"or fewer --finetune-epochs")
        return (f"time budget {self.total_s:.0f} s: the work besides the episodes is estimated at {need:.0f} s on this "
                f"machine ({parts}), more than the {left:.0f} s left: each stage plays its seeds and one episode, and "
                f"the run ends about {need - left:.0f} s past its target")

    def deadline(self, stage: str, now: float | None = None, done: int = 0) -> float:
        """When ``stage``'s episodes stop (``time.monotonic()`` clock), ``done`` of them played before (a
        resumed stage); notes the share in :attr:`log`."""
        now = time.monotonic() if now is None else now
        stages = list(self.episodes)
        left = {s: self.episodes[s] - (done if s == stage else 0) for s in stages[stages.index(stage):]}
        weight = sum(max(n, 0) for n in left.values())
        room = max(self.end - now - self.reserve(stage), 0.0)
        share = room * max(left[stage], 0) / weight if weight else 0.0
        self.log.append(f"time budget: {stage} episodes get {share:.0f} s of the {self.end - now:.0f} s left "
                        f"({self.reserve(stage):.0f} s kept for the work after them)")
        return now + share

    def finished(self, work: str, seconds: float) -> None:
        """``work`` took ``seconds``: no longer estimated; a pick's time becomes the next pick's estimate."""
        self.done.add(work)
        if work == "prune pick" and "quant pick" not in self.done and self.costs["quant pick"] > 0:
            self.costs["quant pick"] = seconds


def time_units(model: nn.Module, splits: DataSplits, profile_s: float, *, steps: bool, batch_size: int = 128) -> Units:
    """:class:`Units` for a search of ``model``: ``profile_s`` as given; a fine-tune step (SGD on the
    distillation loss, a copy of ``model`` taught by ``model``: the full model, an upper bound for a
    pruned one) timed over two steps after a first; the float model's evaluation of up to 512
    validation images, timed per image."""
    import copy

    import torch

    from hwcompress.evaluate import accuracy

    step_s = 0.0
    n_train = min(batch_size, len(splits.train))
    if steps and n_train:
        with torch.random.fork_rng():  # the search's random state stays as without a time budget
            step_s = _step_seconds(copy.deepcopy(model), model, splits, n_train)
    image_s = 0.0
    n = min(512, len(splits.val))
    if n:
        t0 = time.perf_counter()
        accuracy(model, splits.val, limit=n)
        image_s = (time.perf_counter() - t0) / n
    model.eval()
    return Units(profile_s=profile_s, step_s=step_s, image_s=image_s)


def _step_seconds(student: nn.Module, teacher: nn.Module, splits: DataSplits, n: int) -> float:
    """Seconds of one fine-tune step (the mean of two, after a first that warms up)."""
    import torch

    from hwcompress.finetune import kd_loss

    student.train()
    teacher.eval()
    opt = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9)
    xb = torch.from_numpy(np.ascontiguousarray(splits.train.x[:n], dtype=np.float32))
    yb = torch.from_numpy(np.asarray(splits.train.y[:n], dtype=np.int64))
    t0 = 0.0
    for i in range(3):
        if i == 1:
            t0 = time.perf_counter()
        with torch.no_grad():
            logits = teacher(xb)
        loss = kd_loss(student(xb), logits, yb, temperature=4.0, alpha=0.9)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / 2
