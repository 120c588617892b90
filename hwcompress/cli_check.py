"""CLI commands ``hwcompress baseline`` and ``hwcompress check`` (latency regression checks for CI).

Thin layer over :mod:`hwcompress.check`; call :func:`register` on the main typer app.  Exit codes
of ``check``: 0 pass, 1 regression, 2 usage error (any :class:`~hwcompress.errors.HwcompressError`).
Module-level imports stay light (no numpy, torch or onnxruntime).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from hwcompress.check import CheckResult, LatencyBaseline, MetricVerdict, ResolvedModel
    from hwcompress.records import Target

out = Console(width=None if sys.stdout.isatty() else 120)

ModelOrArtifact = Annotated[
    str,
    typer.Argument(help="An .onnx/.tflite file, a built-in model (resnet-20, ...), package.module:factory, "
                        "or an artifact folder (its model.onnx / model.tflite)"),
]
ReferenceOpt = Annotated[
    str | None,
    typer.Option("--reference", help="Reference model measured interleaved with MODEL (A B B A ...): "
                                     "compares model/reference ratios, so machine speed and load cancel"),
]
RoundsHelp = "Rounds: one fresh profiler process per model per round"
ShapeOpt = Annotated[str, typer.Option("--input-shape", help="C,H,W for a built-in or user model")]
ClassesOpt = Annotated[int, typer.Option("--num-classes", help="Classes for a built-in or user model")]
MinSecondsOpt = Annotated[
    float | None,
    typer.Option("--min-seconds", help="Seconds of timed runs per profile (default 0.1; check: the baseline's)"),
]


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def _command_line() -> str:
    return " ".join(["hwcompress", *sys.argv[1:]])


def _load_target(name: str | None, recorded: Target | None = None) -> Target:
    """``--target`` if given; else the target recorded in the baseline/manifest (by name when this
    machine knows it, else the recorded settings); else ``x86-cpu``."""
    from hwcompress.errors import TargetError
    from hwcompress.targets import DEFAULT_TARGET, load_target

    if name is not None:
        return load_target(name)
    if recorded is None:
        return load_target(DEFAULT_TARGET)
    try:
        return load_target(recorded.name)
    except TargetError:
        return recorded


def _resolve(spec: str, target: Target, input_shape: str, num_classes: int) -> ResolvedModel:
    from hwcompress.check import parse_shape, resolve_model

    return resolve_model(spec, target, input_shape=parse_shape(input_shape), num_classes=num_classes)


def baseline(
    model: ModelOrArtifact,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Baseline file to write (JSON)")],
    target: Annotated[
        str | None,
        typer.Option("--target", "-t", help="Target name or .toml path (default: an artifact's manifest target, else x86-cpu)"),
    ] = None,
    reference: ReferenceOpt = None,
    rounds: Annotated[int, typer.Option("--rounds", help=RoundsHelp)] = 20,  # check.DEFAULT_BASELINE_ROUNDS
    min_seconds: MinSecondsOpt = None,
    input_shape: ShapeOpt = "1,28,28",
    num_classes: ClassesOpt = 10,
) -> None:
    """Record a latency/memory baseline (full statistics per round, machine description) for `check`."""

    from hwcompress.check import artifact_manifest, record_baseline, write_baseline
    from hwcompress.errors import UsageError
    from hwcompress.judge import round_settings

    if min_seconds is not None and min_seconds <= 0:
        raise UsageError("--min-seconds must be > 0")
    manifest = artifact_manifest(model)
    tgt = _load_target(target, manifest.target if manifest else None)
    m = _resolve(model, tgt, input_shape, num_classes)
    ref = _resolve(reference, tgt, input_shape, num_classes) if reference else None
    settings = round_settings(tgt, min_seconds)
    b = record_baseline(m, tgt, rounds=rounds, reference=ref, settings=settings, command=_command_line())
    path = write_baseline(b, out_path)
    out.print(_baseline_table(b))
    out.print(f"wrote {path}")


def _baseline_table(b: LatencyBaseline) -> Table:
    import statistics

    table = Table(title=f"baseline: {Path(b.model).name} on {b.target.name}", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    meds = [r.latency.median_ms for r in b.rounds]
    table.add_row("latency p50 (median of rounds)", f"{b.p50_ms:.4f} ms")
    table.add_row("latency p90 (median of rounds)", f"{b.p90_ms:.4f} ms")
    table.add_row("p50 range over rounds", f"{min(meds):.4f} – {max(meds):.4f} ms")
    table.add_row("peak memory", _mib(b.peak_memory_bytes))
    if b.reference_rounds:
        table.add_row("reference", b.reference)
        table.add_row("reference p50", f"{statistics.median(r.latency.median_ms for r in b.reference_rounds):.4f} ms")
        table.add_row("model / reference p50 (fastest rounds)", f"{b.ratio_p50:.4f}")
    table.add_row("rounds", f"{len(b.rounds)} (fresh process each, {b.target.measure.min_seconds:g} s timed)")
    table.add_row("device", b.machine.device)
    table.add_row("load average (1 min)", f"{b.machine.load_1min:g} on {b.machine.cpu_count} CPUs")
    return table


def check(
    model: ModelOrArtifact,
    baseline_path: Annotated[
        Path | None,
        typer.Option("--baseline", "-b", help="Baseline from `hwcompress baseline`, or an artifact's manifest.json "
                                              "(default: MODEL's manifest.json when MODEL is an artifact folder)"),
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", "-t", help="Target name or .toml path (default: the baseline's)")
    ] = None,
    tolerance: Annotated[str, typer.Option("--tolerance", help="Allowed latency growth, e.g. 10% or 0.1")] = "10%",
    metric: Annotated[str, typer.Option("--metric", help="p50 (median) or p90")] = "p50",
    memory_tolerance: Annotated[str, typer.Option("--memory-tolerance", help="Allowed peak-memory growth")] = "10%",
    reference: ReferenceOpt = None,
    rounds: Annotated[int, typer.Option("--rounds", help=RoundsHelp)] = 5,
    max_rounds: Annotated[
        int | None, typer.Option("--max-rounds", help="Rounds at most while the evidence is mixed, and before a failure stands (default 4x)")
    ] = None,
    confidence: Annotated[float, typer.Option("--confidence", help="Bootstrap confidence level")] = 0.95,
    min_seconds: MinSecondsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict and all figures as JSON")] = False,
    junit: Annotated[Path | None, typer.Option("--junit", help="Write a JUnit XML report here")] = None,
    input_shape: ShapeOpt = "1,28,28",
    num_classes: ClassesOpt = 10,
) -> None:
    """Re-measure and compare with a baseline: exit 0 pass, 1 regression, 2 usage error."""
    from hwcompress.check import (
        CheckOptions,
        LatencyBaseline,
        load_baseline,
        parse_fraction,
        run_check,
        write_junit,
    )
    from hwcompress.errors import UsageError

    tol = parse_fraction(tolerance, "--tolerance")
    mem_tol = parse_fraction(memory_tolerance, "--memory-tolerance")
    if not 0.5 <= confidence < 1.0:
        raise UsageError(f"--confidence {confidence}: use a level in [0.5, 1), e.g. 0.95")
    if min_seconds is not None and min_seconds <= 0:
        raise UsageError("--min-seconds must be > 0")
    source = baseline_path
    if source is None:
        if not Path(model).is_dir():
            raise UsageError("give --baseline FILE (or an artifact folder with a manifest.json as MODEL)")
        source = Path(model) / "manifest.json"
    base = load_baseline(source)
    tgt = _load_target(target, base.target)
    m = _resolve(model, tgt, input_shape, num_classes)
    ref_spec = reference
    if ref_spec is None and isinstance(base, LatencyBaseline) and base.reference:
        ref_spec = base.reference  # the baseline's own reference: reference mode by default
        if not (Path(ref_spec).exists() or ":" in ref_spec or _is_builtin(ref_spec)):
            raise UsageError(f"the baseline's reference {ref_spec} is not found here; pass --reference")
    ref = _resolve(ref_spec, tgt, input_shape, num_classes) if ref_spec else None
    settings = None
    if min_seconds is not None:
        from hwcompress.judge import round_settings

        settings = round_settings(tgt, min_seconds)
    opts = CheckOptions(
        tolerance=tol, memory_tolerance=mem_tol, metric=metric, rounds=rounds,
        max_rounds=max(rounds, max_rounds if max_rounds is not None else 4 * rounds),
        confidence=confidence, settings=settings,
    )
    result = run_check(m, tgt, base, baseline_source=str(source), reference=ref, options=opts)
    if junit is not None:
        write_junit(result, junit)
    if as_json:
        typer.echo(json.dumps({"status": "fail" if result.regression else "pass", "exit_code": result.exit_code,
                               **result.to_dict()}, indent=1))
    else:
        _print_check(result, junit)
    raise typer.Exit(result.exit_code)


def _is_builtin(name: str) -> bool:
    from hwcompress.zoo import is_zoo_name

    return is_zoo_name(name)


_STYLE = {"pass": "green", "fail": "bold red", "inconclusive": "yellow"}


def _verdict_row(table: Table, v: MetricVerdict, baseline: str, current: str) -> None:
    ci = "" if v.ci_low == v.ci_high else f" ({v.ci_low:.3f}–{v.ci_high:.3f})"
    table.add_row(v.name, baseline, current, f"{v.ratio:.3f}{ci}", f"≤ {v.limit:.2f}",
                  f"[{_STYLE[v.status]}]{v.status}[/]")


def _print_check(r: CheckResult, junit: Path | None) -> None:
    mode = f"reference mode (reference {r.reference})" if r.mode == "reference" else "absolute mode"
    pct = f"{100 * r.confidence:.0f}%"
    table = Table(title=f"check: {Path(r.model).name} on {r.target} — {mode}, {len(r.rounds)} rounds")
    for col, justify in (("check", "left"), ("baseline", "right"), ("now", "right"),
                         (f"now / baseline ({pct} CI)", "right"), ("limit", "right"), ("result", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    lat = r.latency
    unit = "" if r.mode == "reference" else " ms"
    _verdict_row(table, lat, f"{lat.baseline:.4f}{unit}", f"{lat.current:.4f}{unit}")
    _verdict_row(table, r.memory, _mib(r.memory.baseline), _mib(r.memory.current))
    if r.mode == "reference":
        table.add_row(f"  model {r.metric}, fastest round", f"{r.baseline_model_ms:.4f} ms", f"{r.current_model_ms:.4f} ms",
                      f"{r.current_model_ms / r.baseline_model_ms:.3f}", "", "[dim]info[/]")
        table.add_row(f"  reference {r.metric}, fastest (machine speed)", f"{r.baseline_reference_ms:.4f} ms",
                      f"{r.current_reference_ms:.4f} ms", f"{r.current_reference_ms / r.baseline_reference_ms:.3f}",
                      "", "[dim]info[/]")
    out.print(table)
    load = f"load {r.machine.load_1min:g} on {r.machine.cpu_count} CPUs"
    changed = "model changed since the baseline" if r.model_changed else "same model file as the baseline"
    if r.regression:
        failed = "; ".join(v.reason for v in (r.latency, r.memory) if v.regression)
        out.print(f"[bold red]REGRESSION[/]: {failed}", soft_wrap=True)
    else:
        extra = " (latency inconclusive: too noisy to call)" if lat.status == "inconclusive" else ""
        out.print(f"[green]PASS[/]: no regression{extra}", soft_wrap=True)
    out.print(f"[dim]baseline {r.baseline_source} ({r.baseline_kind}); {changed}; {r.seconds:.1f} s; {load}"
              + (f"; JUnit report {junit}" if junit else "") + "[/]", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the ``baseline`` and ``check`` commands to ``app``."""
    app.command("baseline")(baseline)
    app.command("check")(check)
