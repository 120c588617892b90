"""A stage's winner, decided by the judge: :func:`pick`.

The search ranks its candidates on their readings (:class:`hwcompress.judge.Reader`) and the judge
decides.  A reading is a noisy figure, and the candidate with the best reward among those read
within the aim is, by that very choice, one whose reading was low: the judge often finds it just
over.  Each verdict therefore calibrates the readings the next try is ranked on (the median of
judged / read over the verdicts so far), before the best one is projected onto the predictor's
region.  A later stage never ends worse: where none is judged within, the model the earlier stage's
judge found within (``settled``) stays.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

from hwcompress.judge import Verdict
from hwcompress.records import Candidate
from hwcompress.search.state import Judged

PICK_TRIES = 3  # a stage's best-ranked candidates judged before its best is projected onto the region
PROJECTIONS = 2  # projections of stage 1's best, each judged


def reading_ms(cand: Candidate) -> float:
    """A candidate's reading in the search (inf when it has none)."""
    if cand.error or cand.measurement is None:
        return float("inf")
    return cand.measurement.latency.median_ms


def ranked(cands: Sequence[Candidate], within_ms: float) -> list[Candidate]:
    """Measured candidates in the order they are judged: those whose reading is within ``within_ms``
    by reward (best first), then the others by reading (fastest first)."""
    ok = [c for c in cands if reading_ms(c) < float("inf")]
    inside = sorted((c for c in ok if reading_ms(c) <= within_ms), key=lambda c: -c.reward)
    return inside + sorted((c for c in ok if reading_ms(c) > within_ms), key=reading_ms)


def pick(
    cands: Sequence[Candidate],
    judge: Callable[[Candidate], Verdict],
    aim_ms: float,
    scale_ms: float,
    *,
    project: Callable[[Candidate, Verdict], Candidate | None] | None = None,
    settled: tuple[Candidate, Verdict] | None = None,
    on_verdict: Callable[[Candidate, str, Verdict], None] | None = None,
) -> tuple[Candidate | None, list[Judged]]:
    """The winner among ``cands`` and every verdict taken, in order.

    ``judge(c)``: the judge's verdict on ``c`` at the aim; a verdict's ratio times ``scale_ms`` (the
    baseline's reading for a relative budget, 1 for an absolute one) is on the readings' scale.

    1. Up to :data:`PICK_TRIES` candidates: each the first of :func:`ranked` at ``aim_ms`` / k among
       those not judged yet, k the median of judged / read over the verdicts so far (1 at first);
       the first judged within wins.
    2. Else ``project`` moves the first judged onto the predictor's region (keeping its shape), and
       the projection is judged, up to :data:`PROJECTIONS` times.
    3. Else ``settled`` wins when its verdict was within (recorded as judged "earlier stage").
    4. Else the candidate judged fastest (the final verdict says it is over); with none judged, the
       first ranked.
    """
    judged: list[tuple[Candidate, Judged]] = []

    def one(c: Candidate, how: str) -> bool:
        v = judge(c)
        judged.append((c, Judged(policy=c.policy.digest(), how=how, reading_ms=reading_ms(c), verdict=v)))
        if on_verdict is not None:
            on_verdict(c, how, v)
        return v.within

    def verdicts() -> list[Judged]:
        return [j for _, j in judged]

    for _ in range(PICK_TRIES):
        k = statistics.median(j.verdict.ratio * scale_ms / j.reading_ms for _, j in judged) if judged else 1.0
        tried = {j.policy for _, j in judged}
        order = [c for c in ranked(cands, aim_ms / k) if c.policy.digest() not in tried]
        if not order:
            break
        if one(order[0], "ranked"):
            return order[0], verdicts()
    if project is not None and judged:
        c, j = judged[0]
        for _ in range(PROJECTIONS):
            p = project(c, j.verdict)
            if p is None or p.policy.digest() in {x.policy for _, x in judged}:
                break
            if one(p, "projected"):
                return p, verdicts()
            c, j = judged[-1]
    if settled is not None and settled[1].within:
        c, v = settled
        if on_verdict is not None:
            on_verdict(c, "earlier stage", v)
        return c, [*verdicts(), Judged(c.policy.digest(), "earlier stage", reading_ms(c), v)]
    if not judged:
        first = ranked(cands, aim_ms)
        return (first[0] if first else None), []
    return min(judged, key=lambda t: t[1].verdict.ratio)[0], verdicts()
