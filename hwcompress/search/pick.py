"""A stage's winner, decided by the judge: :func:`pick`.

The search ranks its candidates on an estimate of their latency and the judge decides.  Two
estimates exist for every candidate: its reading (:class:`hwcompress.judge.Reader`, three ABBA pairs
beside the baseline) and the stage's predictor (the latency table plus the residual fitted to the
readings).  A reading is a noisy figure, and the candidate with the best reward among those read
within the aim is, by that very choice, one whose reading was low: the judge often finds it over.
The prediction does not share that luck.  A candidate is therefore ranked on the higher of the two
(:func:`estimate_ms`): within only when both say so.  Over the 27 stage-1 candidates judged in the
budget runs of tools/results/search-budgets.md, the reading was a median 12 % under the judge's
figure and within +-10 % of it for 33 %; the higher of reading and prediction 0.9 % under, within
+-10 % for 59 %.

Each verdict then calibrates the estimates the ranking uses (the median of judged / estimated over
the quiet verdicts so far: one taken in a slow spell is no figure), and the winner is the top of
the ranking once the judge has found it within: a verdict that finds the machine faster than
estimated brings wider, better-rewarded candidates into the ranking, and they are judged before a
narrower one wins.  A candidate judged over is
projected onto the predictor's region (its shape kept: a little narrower in stage 1, a few more
layers at the fastest precision in stage 2) to compete with the rest; so is, before any verdict, the
best-scored candidate of all when it is estimated over and outscores every one estimated within (seen
on the budget cells: seeded candidates built in int8 at the 0.55-0.6x fp32 measured at the start, read
when int8 ran nearer 1.0x, scored 92.0 % and 91.7 % and read 21 % and 93 % over the aim, where the best
candidate estimated within scored 89.3 % and 80.3 %: docs/search.md).
A later stage never ends worse: where none is judged within, the model the earlier stage's judge
found within (``settled``) stays.

"Judged within" means confirmed (:attr:`hwcompress.judge.Verdict.confirmed`): the verdict's 95 %
interval lies under the aim.  A verdict the judge could not decide within its pairs says neither:
one taken in a slow spell, or whose median is under the aim with an interval across it, is taken
again once (:data:`AGAIN`; not one of the tries), and then the last counts, a median within with its
interval across the aim as over: the stage must keep a model the final verdict at the limit will find
within, and on a device whose profiles are bimodal per load (tools/results/readings.md) a median of a
few pairs is not that.

Rewards closer than their own noise do not rank: among the candidates estimated within whose reward
is within ``tie`` of the best (the search passes one standard error of an accuracy on its validation
images, :func:`tie_margin`), the one estimated slowest (the most capacity the budget allows) is
judged first.  Fine-tuning recovers a wider network better, and a winner far under the aim gives
away capacity the budget paid for.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

from hwcompress.judge import Verdict
from hwcompress.records import Candidate
from hwcompress.search.state import Judged

PICK_TRIES = 3  # a stage's best-ranked candidates judged
PROJECTIONS = 2  # projections of candidates judged over, at most, per stage
AGAIN = 1  # judgements more (not tries) of a candidate judged undecided in a slow spell or within

Estimate = Callable[[Candidate], float]


def reading_ms(cand: Candidate) -> float:
    """A candidate's reading in the search (inf when it has none)."""
    if cand.error or cand.measurement is None:
        return float("inf")
    return cand.measurement.latency.median_ms


def estimate_ms(cand: Candidate, predict: Callable[[Candidate], float | None] | None = None) -> float:
    """The higher of the candidate's reading and its prediction (the reading alone without a predictor or
    where it has no figure; inf when the candidate has no reading)."""
    r = reading_ms(cand)
    p = predict(cand) if predict is not None and r < float("inf") else None
    return max(r, p) if p is not None and math.isfinite(p) and p > 0 else r


def tie_margin(accuracy: float, images: int) -> float:
    """One standard error of an accuracy measured on ``images`` images: rewards closer than this are tied."""
    if images <= 0 or not 0.0 <= accuracy <= 1.0:
        return 0.0
    return math.sqrt(accuracy * (1.0 - accuracy) / images)


def ranked(cands: Sequence[Candidate], within_ms: float, tie: float = 0.0, estimate: Estimate = reading_ms) -> list[Candidate]:
    """Measured candidates in the order they are judged: those whose ``estimate`` is within ``within_ms``
    (those tied with the best reward, slowest estimate first; then the rest by reward), then the others
    by estimate (fastest first)."""
    est = {id(c): estimate(c) for c in cands}
    ok = [c for c in cands if est[id(c)] < float("inf")]
    inside = sorted((c for c in ok if est[id(c)] <= within_ms), key=lambda c: -c.reward)
    if inside and tie > 0:
        top = [c for c in inside if c.reward >= inside[0].reward - tie]
        inside = sorted(top, key=lambda c: -est[id(c)]) + inside[len(top):]
    return inside + sorted((c for c in ok if est[id(c)] > within_ms), key=lambda c: est[id(c)])


def pick(
    cands: Sequence[Candidate],
    judge: Callable[[Candidate], Verdict],
    aim_ms: float,
    scale_ms: float,
    *,
    project: Callable[[Candidate, float], Candidate | None] | None = None,
    settled: tuple[Candidate, Verdict] | None = None,
    on_verdict: Callable[[Candidate, str, Verdict], None] | None = None,
    tie: float = 0.0,
    predict: Callable[[Candidate], float | None] | None = None,
) -> tuple[Candidate | None, list[Judged]]:
    """The winner among ``cands`` and every verdict taken, in order.

    ``judge(c)``: the judge's verdict on ``c`` at the aim; a verdict's ratio times ``scale_ms`` (the
    baseline's reading for a relative budget, 1 for an absolute one) is on the readings' scale.
    ``predict(c)``: the stage predictor's figure for ``c`` on that scale (None: none).
    ``project(c, ratio)``: ``c`` projected onto the region, given its ratio to the baseline (the judge's, or
    its estimate / ``scale_ms``); None where nothing new fits.

    1. The candidates are ranked (:func:`ranked` at ``aim_ms``, rewards within ``tie`` of the best tied)
       on their calibrated figure: the judge's for a judged one, else :func:`estimate_ms` times k, the
       median of judged / estimated over the quiet verdicts so far (1 at first); those judged over leave the
       ranking.  A candidate whose verdicts, at most :data:`AGAIN`, were all undecided in a slow spell
       (ranked as one not judged) or undecided within (ranked on the verdict) stays and is judged again
       when on top, outside the tries and not projected; after that its last verdict counts.  The top
       one wins once the judge has found it within; until then it is judged (up to
       :data:`PICK_TRIES` judgements).  So a first verdict that finds the machine faster than estimated
       brings wider, better-rewarded candidates into the ranking, and they are judged before the
       narrower one wins: the capacity the budget pays for is not given away on a slow estimate.
       First, the best-scored candidate (by accuracy: the reward of one over the aim carries its penalty),
       when it is estimated over the aim and outscores every candidate estimated within by more than
       ``tie``, is projected at its estimate.  Each one judged over is projected by ``project`` onto the
       predictor's region (keeping its shape, measured and scored like any candidate), and the projection
       joins the ranking: a best candidate judged just over competes, a little narrower, with the next
       best instead of giving way to it.
       :data:`PROJECTIONS` projections at most, each judged when it tops the ranking, tries spent or not
       (seen: stage 1 spent its tries on a candidate confirmed at 0.74 of the limit and two judged over,
       and kept the first while both projections, ranked above it, waited).  Tries spent with no
       projection on top: the best-ranked candidate judged within.
    2. Else the projections not judged yet are judged (the latest first), then the last judged is
       projected and the projection judged, while projections are left.  A projection onto a policy
       among the candidates that was not judged is that candidate (the predictor's choice is judged).
    3. Else ``settled`` wins when its verdict was within (recorded as judged "earlier stage").
    4. Else the candidate judged fastest (the final verdict says it is over); with none judged, the
       first ranked.
    """
    judged: list[tuple[Candidate, Judged]] = []
    memo: dict[int, float] = {}
    pool, made = list(cands), set[str]()  # made: the projections' policies
    spent = 0  # projections asked for (each measures a candidate, or finds one measured): PROJECTIONS at most

    def est(c: Candidate) -> float:
        if id(c) not in memo:
            memo[id(c)] = estimate_ms(c, predict)
        return memo[id(c)]

    def one(c: Candidate, how: str) -> bool:
        v = judge(c)
        judged.append((c, Judged(policy=c.policy.digest(), how=how, reading_ms=reading_ms(c), verdict=v)))
        if on_verdict is not None:
            on_verdict(c, how, v)
        return v.confirmed

    def verdicts() -> list[Judged]:
        return [j for _, j in judged]

    def projected(c: Candidate, ratio: float) -> Candidate | None:
        """``c``'s projection, measured and scored, added to the candidates (a policy already among them, not
        yet judged: that candidate, now a projection); None when no projection is left or it was judged."""
        nonlocal spent
        if project is None or spent >= PROJECTIONS:
            return None
        spent += 1
        p = project(c, ratio)
        if p is None:
            return None
        digest = p.policy.digest()
        same = next((x for x in pool if x.policy.digest() == digest), None)
        if same is not None and (digest in made or verdict_of(same) is not None):
            return None
        if same is None:
            pool.append(p)
        made.add(digest)
        return same or p

    def verdict_of(c: Candidate) -> Verdict | None:
        digest = c.policy.digest()
        return next((j.verdict for _, j in reversed(judged) if j.policy == digest), None)

    def pending(c: Candidate) -> bool:
        """Judged at most AGAIN times, each verdict undecided in a slow spell or within: to be judged again."""
        vs = [j.verdict for _, j in judged if j.policy == c.policy.digest()]
        return 0 < len(vs) <= AGAIN and all(not v.decided and (v.within or not v.quiet) for v in vs)

    def order() -> list[Candidate]:
        """The ranking now: judged over left out; each candidate on its calibrated figure (the judge's for a
        judged one, else its estimate times k, the quiet verdicts' correction); a candidate judged only in
        a slow spell as one not judged; one to be judged again stays."""
        quiet = [(x, j) for x, j in judged if j.verdict.quiet]
        k = statistics.median(j.verdict.ratio * scale_ms / est(x) for x, j in quiet) if quiet else 1.0

        def calibrated(c: Candidate) -> float:
            v = verdict_of(c)
            return v.ratio * scale_ms if v is not None and v.quiet else est(c) * k

        return ranked([c for c in pool if (v := verdict_of(c)) is None or v.confirmed or pending(c)], aim_ms, tie,
                      calibrated)

    ok = [c for c in pool if est(c) < math.inf]
    if ok:  # the best-scored candidate estimated over, outscoring all estimated within: its projection competes
        top_scored = max(ok, key=lambda c: c.accuracy)
        scores = [c.accuracy for c in ok if est(c) <= aim_ms]
        if est(top_scored) > aim_ms and (not scores or top_scored.accuracy > max(scores) + tie):
            projected(top_scored, est(top_scored) / scale_ms)
    tries = 0
    while (top := next(iter(order()), None)) is not None:
        if (v := verdict_of(top)) is not None and v.confirmed:
            return top, verdicts()  # the top of the ranking, confirmed by the judge
        again = pending(top)  # its verdict was undecided (within, or in a slow spell): judged again, not a try
        if tries >= PICK_TRIES and top.policy.digest() not in made and not again:
            break  # the tries bound the agent's candidates; a projection on top is judged (PROJECTIONS at most)
        tries += 0 if again else 1
        if not one(top, "projected" if top.policy.digest() in made else "ranked") and not pending(top):
            projected(top, judged[-1][1].verdict.ratio)
    inside = [c for c in order() if (v := verdict_of(c)) is not None and v.confirmed]
    if inside:
        return inside[0], verdicts()  # tries spent: the best-ranked candidate the judge found within
    while (p := next((x for x in reversed(pool) if x.policy.digest() in made and (verdict_of(x) is None or pending(x))),
                     None)
           or (projected(judged[-1][0], judged[-1][1].verdict.ratio) if judged else None)) is not None:
        if one(p, "projected"):  # the projections not judged yet (ranked below others), then new ones
            return p, verdicts()
    if settled is not None and settled[1].confirmed:
        c, v = settled
        if on_verdict is not None:
            on_verdict(c, "earlier stage", v)
        return c, [*verdicts(), Judged(c.policy.digest(), "earlier stage", reading_ms(c), v)]
    if not judged:
        first = ranked(pool, aim_ms, tie, est)
        return (first[0] if first else None), []
    return min(judged, key=lambda t: t[1].verdict.ratio)[0], verdicts()
