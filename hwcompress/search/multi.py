"""One search, several targets: ``hwcompress search --target x86-cpu --target raspberry-pi-4`` (docs/multi.md).

The accuracy work is done once; every candidate is measured on each target:

- **One stage 1 for all.** The first target leads: its search (:class:`~hwcompress.search.run.Search`)
  runs stage 1 — its agent, region and action wall — and each candidate it prunes, recalibrates and
  scores once is also built in every other target's format and measured there.  The reward holds
  the candidate to every target's budget: score minus ``--penalty`` times the **worst relative excess**
  over the targets' latency budgets (``max_t reading_t / aim_t - 1``, 0 within all of them).
- **A winner per target.** Each target's stage-1 winner is picked from the shared candidates by its
  own judge, on its own device, beside its own baseline (the rule of :meth:`Search.pick`, ranked by
  that target's readings).  Fine-tuning is done once per distinct winner (a target whose winner is the
  lead's copies its fine-tuned model).
- **Then each target alone.** Stage 2 (precisions measured on that device) and the artifact, in
  ``OUT/<target>/``; each target's run folder is ``RUN_DIR/targets/<target>/`` (a complete run: its
  baseline, budget, stage reports), and ``OUT/report.html`` shows every target side by side with a
  Pareto plot per device (the shared candidates' score against that device's latency).

Not combined with a pool of boards (``--hosts``): a target of a multi-target search is one device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwcompress.errors import BudgetError, UsageError
from hwcompress.fsutil import atomic_write_bytes, atomic_write_text
from hwcompress.records import Candidate, Measurement
from hwcompress.search.evaluator import OtherTarget
from hwcompress.search.pooled import target_key
from hwcompress.search.reward import Costs, accuracy_within_budget
from hwcompress.search.run import NullReporter, Reporter, Search, SearchConfig, SearchResult
from hwcompress.search.state import Stage1Report

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

REPORT = "report.html"


class _Prefixed:
    """A reporter whose messages name the target they are about."""

    def __init__(self, inner: Reporter, name: str) -> None:
        self.inner, self.name = inner, name

    def stage(self, name: str, total: int, done: int) -> None:
        self.inner.stage(name, total, done)

    def candidate(self, stage: str, episode: int, cand: Candidate, best: Candidate | None, within: bool) -> None:
        self.inner.candidate(stage, episode, cand, best, within)

    def message(self, text: str) -> None:
        self.inner.message(f"[{self.name}] {text}")


@dataclass(frozen=True)
class MultiResult:
    """Each target's result (in the order given) and the side-by-side report."""

    run_dir: Path
    results: dict[str, SearchResult]
    report: Path | None
    misses: dict[str, str] = field(default_factory=dict)  # target -> why it is over budget (nothing written)

    @property
    def budget_met(self) -> bool:
        return not self.misses and all(r.budget_met for r in self.results.values())


class MultiSearch:
    """A search for several targets in ``run_dir``; ``run()`` does every step not finished yet."""

    def __init__(self, cfg: SearchConfig, run_dir: Path, *, reporter: Reporter | None = None, resume: bool = False,
                 cache_path: Path | None = None, command: str = "") -> None:
        cfg.validate()
        if len(cfg.targets) < 2:
            raise UsageError("a multi-target search needs two --target options or more")
        self.cfg, self.run_dir, self.resume = cfg, run_dir, resume
        self.reporter: Reporter = reporter or NullReporter()
        self.trust_new_host = False
        self.allow_over_budget = False
        self.quiet_libraries = False
        self.keys = [target_key(t) for t in cfg.targets]
        out = Path(cfg.out)
        self.subs: list[Search] = []
        for spec, key in zip(cfg.targets, self.keys, strict=True):
            sub = dataclasses.replace(cfg, target=spec, targets=(), out=str(out / key))
            self.subs.append(Search(sub, run_dir / "targets" / key, reporter=_Prefixed(self.reporter, key),
                                    resume=resume and (run_dir / "targets" / key / "config.json").is_file(),
                                    cache_path=cache_path, command=command))

    # ------------------------------------------------------------------ run
    def run(self) -> MultiResult:
        from hwcompress import preflight

        preflight.writable_folder(self.run_dir, "--run-dir")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.resume:
            atomic_write_text(self.run_dir / "config.json", json.dumps(self.cfg.to_dict(), indent=2))
        with contextlib.ExitStack() as stack:
            if self.quiet_libraries:
                from hwcompress.runlog import library_output_to

                stack.enter_context(library_output_to(self.run_dir / "libraries.log"))
            for sub in self.subs:
                sub.trust_new_host = self.trust_new_host
                sub.allow_over_budget = self.allow_over_budget
                stack.callback(sub._exits.close)  # a later failure still closes what each one opened
            return self._run()

    def _run(self) -> MultiResult:
        lead, others = self.subs[0], self.subs[1:]
        for sub in self.subs:  # every target checked and its baseline measured before the episodes
            sub.prepare()
        multiple = math.lcm(*(s.target.channel_multiple for s in self.subs))
        for sub in self.subs:  # one pruned model serves every target: counts on every target's multiple
            sub.target = dataclasses.replace(sub.target, channel_multiple=multiple)
            sub.ctx.target = sub.target
        lead.others = [OtherTarget(s.target, s.budget.aim_ms, s.cache, s.workdir, s.splits.calib.x, s.reader)
                       for s in others]
        results: dict[str, SearchResult] = {}
        misses: dict[str, str] = {}
        if "prune" not in self.cfg.stages:  # no stage 1 to share: each target searches its precisions alone
            lead.others = []
            for key, sub in zip(self.keys, self.subs, strict=True):
                try:
                    results[key] = sub.run()
                except BudgetError as exc:
                    misses[key] = str(exc)
            return self._finish(results, misses, [])
        try:
            results[self.keys[0]] = lead.run()
        except BudgetError as exc:
            if not (lead.run_dir / "stage1.json").is_file():
                raise  # out of reach before the shared stage 1: nothing to go on with
            misses[self.keys[0]] = str(exc)
        shared = self._shared_candidates(lead)
        for key, sub in zip(self.keys[1:], others, strict=True):
            self._stage1_for(sub, key, shared, lead)
            try:
                results[key] = sub.run()
            except BudgetError as exc:
                misses[key] = str(exc)
        return self._finish(results, misses, shared)

    def _finish(self, results: dict[str, SearchResult], misses: dict[str, str],
                shared: list[dict[str, Any]]) -> MultiResult:
        report = self._report(results, shared)
        if misses and not self.allow_over_budget:
            raise BudgetError("; ".join(f"{k}: {v}" for k, v in misses.items()) + f" (report of every target: {report})")
        return MultiResult(self.run_dir, results, report, misses)

    # ------------------------------------------------------------------ a winner per target
    def _shared_candidates(self, lead: Search) -> list[dict[str, Any]]:
        """Stage 1's candidates as the lead's log holds them, each with every target's reading."""
        return [r for r in lead.log.read() if r.get("stage") == "prune"]

    def _stage1_for(self, sub: Search, key: str, shared: list[dict[str, Any]], lead: Search) -> None:
        """``sub``'s stage-1 report from the shared candidates: its own readings, its judge, its budget."""
        out = sub.run_dir / "stage1.json"
        if out.is_file():
            return
        cands: list[Candidate] = []
        files: dict[str, Path] = {}
        name = sub.target.name
        for rec in shared:
            other = (rec.get("targets") or {}).get(name)
            if rec.get("error") or not other:
                continue
            m = Measurement.from_dict(other["measurement"])
            lead_cand = Candidate.from_dict({k: v for k, v in rec.items() if k in Candidate.__dataclass_fields__})
            policy = dataclasses.replace(lead_cand.policy, default_precision=str(other["precision"]))
            reward = accuracy_within_budget(lead_cand.accuracy, Costs(latency=m.latency.median_ms,
                                                                      latency_budget=sub.budget.aim_ms),
                                            penalty=self.cfg.penalty)
            cand = dataclasses.replace(lead_cand, policy=policy, measurement=m, reward=reward)
            cands.append(cand)
            files[policy.digest()] = Path(other["file"])
        if not cands:
            raise BudgetError(f"target {key}: no stage-1 candidate was measured on it; nothing to pick from")
        best, judged = sub.pick("stage 1", cands, lambda c: files[c.policy.digest()])
        assert best is not None
        lead_s1 = Stage1Report.from_dict(json.loads((lead.run_dir / "stage1.json").read_text()))
        report = Stage1Report(
            policy=best.policy, best=best, within=any(j.verdict.confirmed for j in judged),
            precision=best.policy.default_precision, planned=(best.policy.default_precision,), precision_ratios={},
            region=f"shared with {self.keys[0]}", candidates=len(cands), failures=lead_s1.failures, judged=tuple(judged),
        )
        atomic_write_text(out, json.dumps(report.to_dict(), indent=2))
        if dict(best.policy.keep) == dict(lead_s1.policy.keep) and (lead.run_dir / "finetuned.pt").is_file() \
                and not (sub.run_dir / "finetuned.pt").exists():
            shutil.copyfile(lead.run_dir / "finetuned.pt", sub.run_dir / "finetuned.pt")  # fine-tuned once
            sub.reporter.message(f"stage-1 winner is {self.keys[0]}'s: its fine-tuned model is reused")

    # ------------------------------------------------------------------ report
    def _report(self, results: dict[str, SearchResult], shared: list[dict[str, Any]]) -> Path | None:
        """``OUT/report.html``: each target's figures and its Pareto plot, side by side."""
        out = Path(self.cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        columns = []
        for key, sub in zip(self.keys, self.subs, strict=True):
            png = out / f"pareto-{key}.png"
            atomic_write_bytes(png, pareto_png(sub, shared, lead=sub is self.subs[0]))
            res = results.get(key)
            columns.append(_column(key, sub, res, png.name))
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>hwcompress: one search, several targets</title>"
            "<style>body{font-family:sans-serif;margin:1.5em}.row{display:flex;gap:1.5em;flex-wrap:wrap}"
            ".col{flex:1;min-width:360px}img{max-width:100%}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}</style></head><body>"
            f"<h1>One search, {len(self.keys)} targets</h1><p>Stage 1 was shared (led by {_e(self.keys[0])}): every "
            "candidate was pruned and scored once and measured on every target; each target's winner was judged on "
            "its own device, then its precisions were searched there. Artifacts: "
            + ", ".join(f"<a href='{_e(k)}/report.html'>{_e(k)}/</a>" for k in self.keys)
            + f"</p><div class='row'>{''.join(columns)}</div></body></html>"
        )
        path = out / REPORT
        atomic_write_text(path, page)
        return path


def resume_search(run_dir: Path, **kwargs: Any) -> Search | MultiSearch:
    """The search kept in ``run_dir``, one target or several, ready to continue (``--resume``)."""
    one = Search.resume_from(run_dir, **kwargs)
    return MultiSearch(one.cfg, run_dir, resume=True, **kwargs) if one.cfg.targets else one


def _e(text: object) -> str:
    import html

    return html.escape(str(text))


def _column(key: str, sub: Search, res: SearchResult | None, png: str) -> str:
    rows = [("device", f"{sub.target.name} ({sub.target.runtime}, {sub.target.connection.board})"),
            ("baseline", f"{sub.base_ms:.3f} ms"), ("latency budget", f"{sub.budget.latency_ms:.3f} ms ({sub.budget.spec})")]
    if res is not None and res.manifest is not None:
        m = res.manifest
        lat = (res.final.get("latency") or {})
        rows += [("result (judged)", f"{lat.get('judged_ms', 0.0):.3f} ms, {'within' if res.budget_met else 'OVER'}"),
                 ("accuracy base → result", f"{m.baseline.accuracy * 100:.2f}% → {m.result.accuracy * 100:.2f}%"),
                 ("file", f"{m.result.file_bytes / 1024:.1f} KiB")]
    else:
        rows.append(("result", "no artifact (over budget)"))
    table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<div class='col'><h2>{_e(key)}</h2><table>{table}</table><img src='{_e(png)}' alt='Pareto {_e(key)}'></div>"


def pareto_png(sub: Search, shared: Sequence[dict[str, Any]], *, lead: bool) -> bytes:
    """The shared stage-1 candidates' score against their latency on ``sub``'s device, its budget and
    Pareto front, its stage-1 winner marked."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts: list[tuple[float, float, str]] = []
    for rec in shared:
        if rec.get("error"):
            continue
        if lead:
            m = rec.get("measurement")
        else:
            m = ((rec.get("targets") or {}).get(sub.target.name) or {}).get("measurement")
        if m:
            pts.append((float(m["latency"]["median_ms"]), float(rec["accuracy"]),
                        json.dumps(rec["policy"].get("keep", {}), sort_keys=True)))
    s1 = sub.run_dir / "stage1.json"
    winner = json.dumps(json.loads(s1.read_text())["policy"].get("keep", {}), sort_keys=True) if s1.is_file() else None
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=110)
    if pts:
        ax.scatter([p[0] for p in pts], [p[1] * 100 for p in pts], s=14, alpha=0.6, label="candidates")
        front, best = [], -1.0
        for ms, acc, _ in sorted(pts):
            if acc > best:
                front.append((ms, acc))
                best = acc
        ax.plot([f[0] for f in front], [f[1] * 100 for f in front], "-", color="tab:green", label="Pareto front")
        win = [p for p in pts if p[2] == winner]
        if win:
            ax.scatter([win[0][0]], [win[0][1] * 100], marker="*", s=160, color="tab:red", label="stage-1 winner")
    ax.axvline(sub.budget.latency_ms, color="tab:orange", linestyle="--", label="budget")
    ax.set_xlabel(f"latency on {sub.target.name} (ms, measured)")
    ax.set_ylabel("validation score (%)")
    ax.set_title(f"{sub.target.name}: shared stage-1 candidates")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
