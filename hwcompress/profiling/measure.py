"""Measure a model on a target: cache lookup, profiler run(s), re-measure on noise, store.

The profiler's JSON is parsed here (:func:`parse_result`) into a :class:`Measurement`.  The
re-measure rule uses the round's ``robust_cv`` (1.4826 * MAD / median): the reported figure is
the median, and one scheduler hiccup inflates std / mean without moving the median.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from hwcompress.errors import FileMissingError, ModelError, ProfilerError
from hwcompress.fsutil import sha256_file
from hwcompress.profiling.adapters import ProfilerAdapter, get_adapter
from hwcompress.profiling.cache import CacheKey, MeasurementCache
from hwcompress.profiling.remote import runner_for
from hwcompress.profiling.runner import Runner
from hwcompress.records import LatencyStats, Measurement, RecordError, Target

log = logging.getLogger(__name__)

_LATENCY_KEYS = ("median_ms", "p10_ms", "p90_ms", "mean_ms", "std_ms", "cv", "n", "min_ms", "max_ms")
_REQUIRED = ("latency", "peak_memory_bytes", "model_bytes", "model_sha256", "load_ms", "runtime",
             "runtime_version", "device", "threads", "timestamp", "profiler_version")


def parse_json(script: str, stdout: str) -> dict[str, Any]:
    """The one JSON object a profiler printed; ProfilerError if there is none."""
    text = stdout.strip()
    candidates = [text, *[ln for ln in reversed(text.splitlines()) if ln.startswith("{")][:1]]
    for cand in candidates:
        try:
            obj = json.loads(cand)
        except ValueError:
            continue
        if isinstance(obj, dict):
            if cand is not text:
                log.warning("%s printed more than its JSON result on stdout; using the last JSON line", script)
            return obj
    shown = text[:200].replace("\n", " ") or "nothing"
    raise ProfilerError(f"{script} printed no JSON result (stdout: {shown})")


def parse_result(script: str, result: dict[str, Any], target: Target) -> Measurement:
    """A profiler's JSON result as a Measurement (``ok`` must be true; see :func:`raise_failure`)."""
    missing = [k for k in _REQUIRED if k not in result]
    latency = result.get("latency") or {}
    missing += [f"latency.{k}" for k in _LATENCY_KEYS if k not in latency]
    if missing:
        raise ProfilerError(f"{script} result lacks {', '.join(missing)}; the profiler and hwcompress versions differ")
    _check_echo(script, result.get("settings") or {}, target)
    per_node = result.get("per_node") or {}
    try:
        stats = LatencyStats.from_dict(
            {k: latency[k] for k in (*_LATENCY_KEYS, "robust_cv") if latency.get(k) is not None}
        )
        return Measurement(
            target=target.name,
            model_sha256=str(result["model_sha256"]),
            latency=stats,
            peak_memory_bytes=int(result["peak_memory_bytes"]),
            model_bytes=int(result["model_bytes"]),
            load_ms=float(result["load_ms"]),
            runtime=str(result["runtime"]),
            runtime_version=str(result["runtime_version"]),
            device=str(result["device"]),
            settings=target.measure,
            threads=int(result["threads"]),
            timestamp=str(result["timestamp"]),
            profiler_version=str(result["profiler_version"]),
            per_node_us={str(n["name"]): float(n["mean_us"]) for n in per_node.get("nodes", [])},
            board=target.connection.board,
        )
    except (RecordError, TypeError, ValueError, KeyError) as exc:
        raise ProfilerError(f"{script} result is malformed: {exc}") from None


def _check_echo(script: str, echo: dict[str, Any], target: Target) -> None:
    """Warn when the profiler applied other settings than asked (a stale copy on the device)."""
    m = target.measure
    asked = {"warmup_runs": m.warmup_runs, "min_runs": m.min_runs, "min_seconds": m.min_seconds,
             "max_runs": m.max_runs, "max_seconds": m.max_seconds}
    differ = [f"{k}={echo[k]!r} (asked {v!r})" for k, v in asked.items() if k in echo and echo[k] != v]
    if differ:
        log.warning("%s used other settings than asked: %s", script, ", ".join(differ))


def raise_failure(script: str, model: Path, result: dict[str, Any]) -> None:
    """Turn an ``ok: false`` result into ModelError (kind "model") or ProfilerError (others)."""
    message = str(result.get("error") or "no error message").replace("\n", " ")
    kind = result.get("kind", "")
    if kind == "model":
        raise ModelError(f"{model.name}: {message}")
    raise ProfilerError(f"{script} failed on {model.name} ({kind or 'unknown'} problem): {message}")


class MeasureRoute(Protocol):
    """Where a target's measurements go instead of its one device: a pool of boards
    (:class:`hwcompress.profiling.pool.DevicePool`).  Same contracts as :func:`measure` /
    :func:`measure_batch`; each result names the board that took it."""

    def measure(self, model: Path, target: Target, *, cache: MeasurementCache | None, per_node: bool,
                force: bool) -> Measurement: ...

    def measure_batch(self, models: list[Path], target: Target, *, cache: MeasurementCache | None, force: bool,
                      cache_ids: list[str] | None) -> list[Measurement]: ...


_ROUTES: dict[str, MeasureRoute] = {}


@contextlib.contextmanager
def routed(target_name: str, route: MeasureRoute) -> Iterator[MeasureRoute]:
    """While open, :func:`measure` and :func:`measure_batch` calls for target ``target_name`` that name no
    ``runner`` go to ``route`` (a search over a pool: its baseline, candidates, table and verdicts)."""
    if target_name in _ROUTES:
        raise RuntimeError(f"measurements of {target_name} are already routed")
    _ROUTES[target_name] = route
    try:
        yield route
    finally:
        _ROUTES.pop(target_name, None)


def cache_key(sha256: str, target: Target, adapter: ProfilerAdapter | None = None) -> CacheKey:
    """The cache key of a model (by sha256, or another id) measured on ``target`` with its settings."""
    adapter = adapter if adapter is not None else get_adapter(target.runtime)
    return CacheKey(sha256, target.settings_digest(), adapter.profiler_version())


def relative_spread(values: Sequence[float]) -> float:
    """Population standard deviation over mean (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    mean = statistics.fmean(values)
    return statistics.pstdev(values) / mean if mean > 0 else 0.0


def _noise(m: Measurement) -> float:
    """The spread compared with ``max_cv``: robust CV when the profiler reports it, else CV."""
    return m.latency.robust_cv if m.latency.robust_cv > 0 else m.latency.cv


def measure(
    model_path: str | os.PathLike[str],
    target: Target,
    *,
    cache: MeasurementCache | None = None,
    runner: Runner | None = None,
    per_node: bool = False,
    force: bool = False,
) -> Measurement:
    """Latency / memory of ``model_path`` on ``target`` (one fresh profiler run per round).

    Looks in ``cache`` first (result has ``cached=True``; ``force`` skips the lookup).  When a
    round's spread exceeds ``target.measure.max_cv`` the model is profiled again, up to
    ``max_rounds`` rounds; the round with the lowest spread is kept, with ``rounds``,
    ``median_cv`` (CV of the rounds' medians) and ``wall_s`` (seconds for all rounds) set.
    ``per_node`` adds per-node mean times (us) from the first round.  The result is stored in
    ``cache``.  Without ``runner``, a target whose measurements are :func:`routed` is measured by
    its route.  Raises FileMissingError, ModelError (the model cannot be loaded, fed or run),
    ProfilerError / ProfilerTimeout (the profiler or the device failed).
    """
    model = Path(model_path)
    if not model.is_file():
        raise FileMissingError(f"model file {model} does not exist")
    adapter = get_adapter(target.runtime)
    adapter.check_model(model)
    if runner is None and target.name in _ROUTES:
        return _ROUTES[target.name].measure(model, target, cache=cache, per_node=per_node, force=force)
    runner = runner if runner is not None else runner_for(target)
    sha = sha256_file(model)
    key = cache_key(sha, target, adapter)
    if cache is not None and not force:
        hit = cache.get(key)
        if hit is not None and (hit.per_node_us or not per_node):
            log.debug("cache hit for %s on %s", model.name, target.name)
            return replace_target(hit, target)

    t0 = time.perf_counter()
    rounds: list[Measurement] = []
    node_times: dict[str, float] = {}
    settings = target.measure
    while len(rounds) < settings.max_rounds:
        m = _profile_once(adapter, runner, model, target, per_node=per_node and not rounds)
        if m.model_sha256 != sha:
            raise ProfilerError(
                f"{model.name} changed while it was profiled (sha256 {m.model_sha256[:12]} != {sha[:12]})"
            )
        if m.profiler_version != key.profiler_version:
            log.warning("%s reports version %s, expected %s: the device runs another copy of the script",
                        adapter.script, m.profiler_version, key.profiler_version)
        node_times = node_times or m.per_node_us
        rounds.append(m)
        if _noise(m) <= settings.max_cv:
            break
        log.info("%s on %s: spread %.1f%% > %.1f%% (round %d of %d)", model.name, target.name,
                 100 * _noise(m), 100 * settings.max_cv, len(rounds), settings.max_rounds)
    best = min(rounds, key=_noise)
    if _noise(best) > settings.max_cv:
        log.warning("%s on %s: latency spread %.1f%% still above %.1f%% after %d rounds; the device is noisy",
                    model.name, target.name, 100 * _noise(best), 100 * settings.max_cv, len(rounds))
    result = dataclasses.replace(
        best,
        rounds=len(rounds),
        median_cv=relative_spread([r.latency.median_ms for r in rounds]),
        wall_s=time.perf_counter() - t0,
        per_node_us=node_times,
        cached=False,
    )
    log.info("%s on %s: %.3f ms median (spread %.1f%%, n=%d, %d round(s), %.2f s)", model.name, target.name,
             result.latency.median_ms, 100 * _noise(result), result.latency.n, result.rounds, result.wall_s)
    if cache is not None:
        cache.put(key, result)
    return result


def _profile_once(adapter: ProfilerAdapter, runner: Runner, model: Path, target: Target, *, per_node: bool) -> Measurement:
    args = adapter.args(model, target, per_node=per_node)
    stdout = runner.run(adapter.script, args, [model], target.measure.timeout_s)
    result = parse_json(adapter.script, stdout)
    if not result.get("ok"):
        raise_failure(adapter.script, model, result)
    m = parse_result(adapter.script, result, target)
    if not all(math.isfinite(v) for v in (m.latency.median_ms, m.latency.cv)):
        raise ProfilerError(f"{adapter.script} reported a non-finite latency for {model.name}")
    return m


def replace_target(m: Measurement, target: Target) -> Measurement:
    """``m`` labelled with ``target``'s name (two targets with equal settings share cache entries) and,
    for a record from before boards were named, with the board its settings digest names."""
    if m.target == target.name and m.board:
        return m
    return dataclasses.replace(m, target=target.name, board=m.board or target.connection.board)


def scaled(m: Measurement, scale: float) -> Measurement:
    """``m`` with its times divided by ``scale``: the device's speed when ``m`` was taken relative to a
    reference reading (a pool board's calibration, or a search's paired reading: :class:`hwcompress.judge.Reader`)."""
    if scale == 1.0:
        return dataclasses.replace(m, board_scale=1.0)
    lat = m.latency
    latency = LatencyStats(
        median_ms=lat.median_ms / scale, p10_ms=lat.p10_ms / scale, p90_ms=lat.p90_ms / scale,
        mean_ms=lat.mean_ms / scale, std_ms=lat.std_ms / scale, cv=lat.cv, n=lat.n, min_ms=lat.min_ms / scale,
        max_ms=lat.max_ms / scale, robust_cv=lat.robust_cv,
    )
    return dataclasses.replace(m, latency=latency, per_node_us={k: v / scale for k, v in m.per_node_us.items()},
                               board_scale=scale)


def probe(target: Target, runner: Runner | None = None, timeout_s: float | None = None) -> dict[str, Any]:
    """Check that ``target``'s runtime loads on the device (the connection test): returns the
    profiler's JSON (runtime_version, device, device_info, providers, profiler_version).
    Raises ProfilerError / ProfilerTimeout with the reason on one line."""
    adapter = get_adapter(target.runtime)
    runner = runner if runner is not None else runner_for(target)
    stdout = runner.run(adapter.script, adapter.probe_args(target), [], timeout_s or target.measure.timeout_s)
    result = parse_json(adapter.script, stdout)
    if not result.get("ok"):
        raise ProfilerError(
            f"{adapter.script} cannot run on target {target.name}: {result.get('error') or 'no error message'}"
        )
    return result


def measure_many(
    paths: Iterable[str | os.PathLike[str]],
    target: Target,
    *,
    cache: MeasurementCache | None = None,
    runner: Runner | None = None,
    per_node: bool = False,
    force: bool = False,
) -> list[Measurement]:
    """:func:`measure` each model in turn (never in parallel: profiles would disturb each other)."""
    return [measure(p, target, cache=cache, runner=runner, per_node=per_node, force=force) for p in paths]


#: Models per profiler process in :func:`measure_batch` (bounds one timeout's loss and the command line).
BATCH_CHUNK = 48


def _batch_timeout_s(target: Target, n: int) -> float:
    """Limit of one batch process: the target's per-profile limit plus a per-model allowance."""
    m = target.measure
    per_model = min(m.timeout_s, 5.0 + 2.0 * m.max_seconds)
    return m.timeout_s + n * per_model


def parse_batch(script: str, stdout: str, models: list[Path]) -> list[dict[str, Any]]:
    """The per-model JSON lines of a batch run, in the order of ``models``.

    A run that failed before its first model (runtime missing, ...) raises ProfilerError; a batch
    cut short (fewer lines than models, no summary line) raises ProfilerError too.
    """
    lines: list[dict[str, Any]] = []
    for ln in stdout.splitlines():
        ln = ln.strip()
        if not ln.startswith("{"):
            continue
        try:
            obj = json.loads(ln)
        except ValueError:
            raise ProfilerError(f"{script} printed a broken JSON line in batch mode: {ln[:200]}") from None
        if isinstance(obj, dict):
            lines.append(obj)
    if not lines:
        raise ProfilerError(f"{script} printed no JSON result in batch mode (stdout: {stdout.strip()[:200] or 'nothing'})")
    summary = lines[-1]
    if "batch" not in summary:
        if not summary.get("ok") and "model" not in summary:  # failed before the first model
            raise_failure(script, models[0], summary)
        raise ProfilerError(f"{script} batch run was cut short after {len(lines)} of {len(models)} models")
    per_model = lines[:-1]
    if len(per_model) != len(models):
        raise ProfilerError(f"{script} batch run reported {len(per_model)} results for {len(models)} models")
    return per_model


def _profile_batch(adapter: ProfilerAdapter, runner: Runner, models: list[Path], target: Target) -> list[Measurement]:
    """One round of every model in ``models``: one profiler process per :data:`BATCH_CHUNK` models
    where the runtime's script has a batch mode, else one process per model."""
    if not adapter.supports_batch:
        return [_profile_once(adapter, runner, m, target, per_node=False) for m in models]
    out: list[Measurement] = []
    for start in range(0, len(models), BATCH_CHUNK):
        chunk = models[start:start + BATCH_CHUNK]
        args = adapter.batch_args(chunk, target)
        stdout = runner.run(adapter.script, args, chunk, _batch_timeout_s(target, len(chunk)))
        for model, result in zip(chunk, parse_batch(adapter.script, stdout, chunk), strict=True):
            if not result.get("ok"):
                raise_failure(adapter.script, model, result)
            m = parse_result(adapter.script, result, target)
            if not all(math.isfinite(v) for v in (m.latency.median_ms, m.latency.cv)):
                raise ProfilerError(f"{adapter.script} reported a non-finite latency for {model.name}")
            out.append(m)
    return out


def measure_batch(
    paths: list[Path],
    target: Target,
    *,
    cache: MeasurementCache | None = None,
    runner: Runner | None = None,
    force: bool = False,
    cache_ids: list[str] | None = None,
) -> list[Measurement]:
    """:func:`measure` for many models, in order, with the profiler's batch mode: one process (or
    one SSH command) profiles up to :data:`BATCH_CHUNK` models, so a long list does not pay a
    process start (~1 s here, more on a board) per model.  Same cache, noise and re-measure rules:
    models whose round spread exceeds ``max_cv`` are profiled again in a further batch (at most
    ``max_rounds`` rounds; the lowest-spread round is kept).  ``cache_ids`` (one per path) replace
    the file's sha256 in the cache key, for models identified by what they stand for (the layer
    table keys its entries by layer signature).  Runtimes without a batch mode (TensorRT) fall
    back to one process per model.  Raises as :func:`measure`.
    """
    models = [Path(p) for p in paths]
    if cache_ids is not None and len(cache_ids) != len(models):
        raise ValueError("cache_ids needs one id per model")
    if runner is None and target.name in _ROUTES:
        return _ROUTES[target.name].measure_batch(models, target, cache=cache, force=force, cache_ids=cache_ids)
    adapter = get_adapter(target.runtime)
    runner = runner if runner is not None else runner_for(target)
    version = adapter.profiler_version()
    digest = target.settings_digest()
    results: list[Measurement | None] = [None] * len(models)
    keys: list[CacheKey] = []
    shas: list[str] = []
    for i, model in enumerate(models):
        if not model.is_file():
            raise FileMissingError(f"model file {model} does not exist")
        adapter.check_model(model)
        sha = sha256_file(model)
        shas.append(sha)
        keys.append(CacheKey(cache_ids[i] if cache_ids is not None else sha, digest, version))
        if cache is not None and not force:
            hit = cache.get(keys[i])
            if hit is not None:
                results[i] = replace_target(hit, target)
    pending = [i for i, r in enumerate(results) if r is None]
    rounds: dict[int, list[Measurement]] = {i: [] for i in pending}
    t0 = time.perf_counter()
    settings = target.measure
    while pending:
        measured = _profile_batch(adapter, runner, [models[i] for i in pending], target)
        again = []
        for i, m in zip(pending, measured, strict=True):
            if m.model_sha256 != shas[i]:
                raise ProfilerError(f"{models[i].name} changed while it was profiled "
                                    f"(sha256 {m.model_sha256[:12]} != {shas[i][:12]})")
            rounds[i].append(m)
            if _noise(m) > settings.max_cv and len(rounds[i]) < settings.max_rounds:
                again.append(i)
        pending = again
    wall = time.perf_counter() - t0
    n_measured = len(rounds)
    for i, got in rounds.items():
        best = min(got, key=_noise)
        if best.profiler_version != version:
            log.warning("%s reports version %s, expected %s: the device runs another copy of the script",
                        adapter.script, best.profiler_version, version)
        result = dataclasses.replace(best, rounds=len(got), median_cv=relative_spread([r.latency.median_ms for r in got]),
                                     wall_s=wall / max(n_measured, 1), cached=False)
        if cache is not None:
            cache.put(keys[i], result)
        results[i] = result
    if n_measured:
        log.info("measured %d of %d models on %s in batch mode (%.1f s)", n_measured, len(models), target.name, wall)
    return [r for r in results if r is not None]
