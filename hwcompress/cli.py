"""Command line: a thin layer over library calls.

Errors the user can fix (:class:`~hwcompress.errors.HwcompressError`) become one line on
stderr and exit code 2; ``--debug`` (or ``HWCOMPRESS_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hwcompress import __version__
from hwcompress.cli_check import register as register_check_commands
from hwcompress.errors import HwcompressError, UsageError
from hwcompress.search.config import VAL_IMAGES

app = typer.Typer(
    name="hwcompress",
    help="Compress CNNs for one device, with latency and memory measured on that device.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
targets_app = typer.Typer(help="List, show and check targets (one TOML file per device).", invoke_without_command=True)
app.add_typer(targets_app, name="targets")

out = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True)
log = logging.getLogger("hwcompress")

ModelArg = Annotated[
    str,
    typer.Argument(help="An .onnx file, a built-in model (vgg-small, resnet-20, mobilenetv2-small) or package.module:factory"),
]
TargetOpt = Annotated[str, typer.Option("--target", "-t", help="Target name (see `hwcompress targets`) or a .toml path")]
DataOpt = Annotated[
    str | None,
    typer.Option("--data", help="IDX folder, image folder or .npz (default: Debian's Fashion-MNIST)"),
]
CacheOpt = Annotated[
    Path | None, typer.Option("--cache", help="Measurement cache file (default: ~/.cache/hwcompress/measurements.sqlite)")
]
CheckpointOpt = Annotated[str | None, typer.Option("--checkpoint", help="Weights for a package.module:factory model")]


class _StderrNow:
    """Writes to whatever ``sys.stderr`` is at the time (the search may point it elsewhere)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(console=err, show_time=False, show_path=False, markup=False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler], format="%(message)s")
    # Without a terminal rich's live bars print nothing until the end: progress lines instead.
    progress = logging.getLogger("hwcompress.progress")
    if not err.is_terminal:
        plain = logging.StreamHandler(_StderrNow())
        plain.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        progress.addHandler(plain)
        progress.setLevel(logging.INFO)
    elif not verbose:
        progress.setLevel(logging.WARNING)
    progress.propagate = False


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors")] = False,
) -> None:
    if debug:
        os.environ["HWCOMPRESS_DEBUG"] = "1"
    _setup_logging(verbose)


@app.command()
def version() -> None:
    """Print the hwcompress version."""
    out.print(f"hwcompress {__version__}")


# --------------------------------------------------------------------------- targets
@targets_app.callback()
def targets_list(ctx: typer.Context) -> None:
    """List the known targets with what each supports."""
    if ctx.invoked_subcommand is not None:
        return
    from hwcompress.targets import load_target, target_names

    table = Table(title="Targets")
    for col in ("name", "runtime", "precisions", "channels ×", "threads", "connection"):
        table.add_column(col, overflow="fold")
    for name in target_names():
        t = load_target(name)
        c = t.connection
        conn = "local" if c.kind == "local" else (f"ssh {c.user}@{c.host}:{c.port}" if c.host else "ssh (host not set: --host)")
        table.add_row(t.name, t.runtime, ",".join(t.precisions), str(t.channel_multiple), str(t.threads), conn)
    out.print(table)


@targets_app.command("show")
def targets_show(name: Annotated[str, typer.Argument(help="Target name or .toml path")]) -> None:
    """Print one target's full, validated settings as JSON."""
    from hwcompress.targets import load_target

    out.print_json(json.dumps(load_target(name).to_dict()))


@targets_app.command("check")
def targets_check(
    name: Annotated[str, typer.Argument(help="Target name or .toml path")],
    host: Annotated[str | None, typer.Option("--host", help="Override the SSH host")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Override the SSH port")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Override the SSH user")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Override the SSH key file")] = None,
    remote_python: Annotated[str | None, typer.Option("--remote-python", help="Python on the device")] = None,
    known_hosts: Annotated[str | None, typer.Option("--known-hosts", help="known_hosts file to verify the device")] = None,
    trust_new_host: Annotated[bool, typer.Option("--trust-new-host", help="Add an unknown host key to known_hosts")] = False,
) -> None:
    """Connect to the target and report Python, runtime and version, CPU/GPU, free disk (exit 1 if unusable)."""
    from hwcompress.device_check import check_device, format_report
    from hwcompress.preflight import host_set
    from hwcompress.targets import load_target

    tgt = load_target(name, host=host, port=port, user=user, key=key, python=remote_python, known_hosts=known_hosts)
    host_set(tgt)
    report = check_device(tgt, trust_new_host=trust_new_host)
    out.print(format_report(report), markup=False, highlight=False)
    if not report.ok:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- training
@app.command()
def train(
    model: Annotated[str, typer.Option("--model", "-m", help="Built-in model name or package.module:factory")] = "vgg-small",
    data: DataOpt = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the model's tuned default)")] = None,
    checkpoint: CheckpointOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Retrain even if a cached checkpoint exists")] = False,
    seed: Annotated[int, typer.Option(help="Seed for splits and training")] = 0,
) -> None:
    """Train a baseline on the data and cache its checkpoint and test accuracy."""
    import dataclasses

    from hwcompress.data import load_splits
    from hwcompress.zoo.train import default_config, ensure_baseline

    splits = load_splits(data, seed=seed)
    if epochs is not None and epochs < 1:
        raise UsageError("--epochs must be at least 1")
    cfg = dataclasses.replace(default_config(model), seed=seed)
    if epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=epochs)
    base = ensure_baseline(model, splits, cfg=cfg, checkpoint=checkpoint, force=force)
    src = "cached checkpoint" if base.from_cache else f"trained in {base.train_seconds:.0f} s"
    out.print(
        f"{base.name}: test accuracy {base.test_accuracy * 100:.2f}% "
        f"(validation {base.val_accuracy * 100:.2f}%), {src}\ncheckpoint: {base.checkpoint}"
    )


# --------------------------------------------------------------------------- profiling
def _measurement_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k, v in rows:
        table.add_row(k, str(v))
    return table


def _measurement_rows(m: Any) -> list[tuple[str, Any]]:
    lat = m.latency
    return [
        ("latency median", f"{lat.median_ms:.3f} ms"),
        ("latency p10 / p90", f"{lat.p10_ms:.3f} / {lat.p90_ms:.3f} ms"),
        ("latency mean ± std", f"{lat.mean_ms:.3f} ± {lat.std_ms:.3f} ms"),
        ("CV (within profile)", f"{lat.cv * 100:.2f}%"),
        ("timed runs", lat.n),
        ("rounds", m.rounds),
        ("peak memory", f"{m.peak_memory_bytes / 2**20:.1f} MiB"),
        ("model file", f"{m.model_bytes / 2**10:.1f} KiB"),
        ("session load", f"{m.load_ms:.1f} ms"),
        ("runtime", f"{m.runtime} {m.runtime_version}, {m.threads} thread(s)"),
        ("device", m.device),
        ("from cache", "yes" if m.cached else "no"),
    ]


@app.command()
def profile(
    model: ModelArg,
    target: TargetOpt = "x86-cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print the Measurement as JSON")] = False,
    cache: CacheOpt = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Measure again even if cached")] = False,
    input_shape: Annotated[
        str, typer.Option("--input-shape", help="C,H,W for a built-in or user model (default 1,28,28)")
    ] = "1,28,28",
    num_classes: Annotated[int, typer.Option(help="Classes for a built-in or user model")] = 10,
    checkpoint: CheckpointOpt = None,
) -> None:
    """Measure a model's latency and memory on a target."""
    from hwcompress.pipeline import model_to_onnx
    from hwcompress.profiling.cache import MeasurementCache
    from hwcompress.profiling.measure import measure
    from hwcompress.targets import load_target

    tgt = load_target(target)
    shape = _parse_shape(input_shape)
    # A .tflite file goes to a tflite target as is (measure() checks that it exists and that the
    # target's runtime takes it); anything else is resolved to ONNX.
    model_path = (Path(model) if model.endswith(".tflite")
                  else model_to_onnx(model, shape, num_classes=num_classes, checkpoint=checkpoint))
    m = measure(model_path, tgt, cache=MeasurementCache(cache), force=no_cache)
    if as_json:
        out.print_json(json.dumps(m.to_dict()))
    else:
        out.print(_measurement_table(f"{Path(model).name} on {tgt.name}", _measurement_rows(m)))


@app.command("latency-model")
def latency_model(
    model: Annotated[str, typer.Argument(help="A built-in model (vgg-small, resnet-20, mobilenetv2-small) or package.module:factory")],
    target: TargetOpt = "x86-cpu",
    candidates: Annotated[int, typer.Option("--candidates", help="Random pruned candidates held out (not used in fitting)")] = 30,
    fit: Annotated[int, typer.Option("--fit", help="Random pruned candidates the residual is fitted to")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random candidates")] = 0,
    max_entries: Annotated[int, typer.Option("--max-entries", help="Most table entries (channel grid thinned beyond)")] = 600,
    mixed: Annotated[int, typer.Option("--mixed", help="Also hold out N random mixed-precision pruned candidates "
                                                       "(table gets the target's precisions and boundary costs)")] = 0,
    passes: Annotated[int, typer.Option("--passes", help="Passes over the candidates, each read between two baseline profiles (median taken)")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures (and every candidate) as JSON")] = False,
    cache: CacheOpt = None,
    input_shape: Annotated[str, typer.Option("--input-shape", help="C,H,W (default 1,28,28)")] = "1,28,28",
    num_classes: Annotated[int, typer.Option(help="Classes")] = 10,
    checkpoint: CheckpointOpt = None,
) -> None:
    """Build or load the per-layer latency table on a target and check its predictor on held-out
    random pruned candidates, beside the MACs model on the same candidates."""
    from hwcompress.latency.predictor import evaluate
    from hwcompress.pipeline import load_torch_model
    from hwcompress.profiling.cache import MeasurementCache
    from hwcompress.targets import load_target

    if model.endswith((".onnx", ".tflite")):
        raise UsageError(f"latency-model prunes the model, so it needs a torch model (built-in or package.module:factory), not {model}")
    if max_entries < 1:
        raise UsageError(f"--max-entries must be >= 1, got {max_entries}")
    if passes < 1:
        raise UsageError(f"--passes must be >= 1, got {passes}")
    if mixed < 0 or mixed == 1:
        raise UsageError(f"--mixed must be 0 or at least 2, got {mixed}")
    tgt = load_target(target)
    shape = (1, *_parse_shape(input_shape))
    import torch

    torch.manual_seed(seed)  # fixed weights: the same files, so a second run hits the measurement cache
    net = load_torch_model(model, shape[1:], num_classes=num_classes, checkpoint=checkpoint)
    ev = evaluate(net, shape, tgt, model_name=model, n_candidates=candidates, n_fit=fit, seed=seed,
                  cache=MeasurementCache(cache), max_entries=max_entries, n_mixed=mixed,
                  passes=passes)
    d = ev.to_dict()
    if as_json:
        out.print_json(json.dumps(d))
        return
    table = Table(title=f"{model} on {tgt.name}: {d['held_out']['n']} held-out candidates, residual fitted on {ev.n_fit}")
    for col in ("model", "within ±10%", "Spearman", "median |error|"):
        table.add_column(col, justify="left" if col == "model" else "right")
    rows = [("layer table + residual", ev.held_out), ("MACs model", ev.macs_model)]
    if ev.mixed:
        rows.append((f"layer table, {mixed} mixed-precision", ev.mixed))
    for label, f in rows:
        table.add_row(label, f"{f['within_10pct'] * 100:.0f}%", f"{f['spearman']:.3f}", f"{f['median_abs_err'] * 100:.1f}%")
    out.print(table)
    t = d["table"]
    repeat = "" if t["repeat_median_rel_diff"] is None else f", repeat median diff {t['repeat_median_rel_diff'] * 100:.1f}%"
    h = d["held_out"]
    if "remeasure_within_10pct" in h:
        out.print(f"noise floor: a 2nd pass re-measures {h['remeasure_within_10pct'] * 100:.0f}% of the held-out "
                  f"candidates within ±10% of the 1st (median |diff| {h['remeasure_median_abs_diff'] * 100:.1f}%)")
    out.print(f"table: {t['entries']} entries ({t['measured']} measured, {t['cached']} from the cache) in "
              f"{t['seconds']:.1f} s{repeat}; residual: {ev.alpha_ms:+.3f} ms + {ev.beta:.3f} x table sum")


def _parse_shape(text: str) -> tuple[int, int, int]:
    from hwcompress.check import parse_shape

    return parse_shape(text)


# --------------------------------------------------------------------------- demo
#: The demo's search, start to artifact: `make demo` (set-up included) within 20 minutes on a 2-core
#: machine; a machine fast enough plays all its episodes sooner.
DEMO_SECONDS = 900.0

@app.command()
def demo(
    model: Annotated[str, typer.Option("--model", "-m", help="Built-in model")] = "vgg-small",
    data: DataOpt = None,
    target: TargetOpt = "x86-cpu",
    out_dir: Annotated[Path, typer.Option("--out", help="Demo artifact folder (a previous demo artifact there is replaced)")] = Path("out/demo"),
    episodes: Annotated[int, typer.Option("--episodes", help="Stage-1 episodes")] = 30,
    quant_episodes: Annotated[int, typer.Option("--quant-episodes", help="Stage-2 episodes")] = 20,
    recovery_steps: Annotated[int, typer.Option(
        "--recovery-steps", help="Distillation steps each stage-1 candidate gets before it is scored")] = 50,
    time_budget: Annotated[float, typer.Option(
        "--time-budget", help="Seconds the whole search aims at (a slow machine plays fewer episodes; one too slow for "
        "the fine-tune and the rest plays the seeds only, and takes longer)")] = DEMO_SECONDS,
    baseline_only: Annotated[bool, typer.Option("--baseline-only", help="Only train (cached), export and profile the baseline")] = False,
    cache: CacheOpt = None,
) -> None:
    """The embedded default job: the two-stage search on the demo model, Fashion-MNIST, local CPU.

    The baseline is trained once and cached; the search measures every candidate on the target,
    fine-tunes the best pruned model with distillation, picks per-layer precisions and writes a
    validated artifact.
    """
    from hwcompress.pipeline import run_demo

    if baseline_only:
        res = run_demo(model=model, data=data, target=target, out_dir=out_dir, cache_path=cache)
        rows: list[tuple[str, Any]] = [
            ("model", res.model),
            ("data", res.data_source),
            ("test accuracy (PyTorch)", f"{res.test_accuracy * 100:.2f}%"),
            ("test accuracy (ONNX on the runtime)", f"{res.onnx_test_accuracy * 100:.2f}%"),
            ("training", "cached checkpoint" if res.from_cache else f"{res.train_seconds:.0f} s"),
            ("MACs", f"{res.macs / 1e6:.1f} M"),
            ("parameters", f"{res.params / 1e3:.1f} k"),
            *_measurement_rows(res.measurement),
            ("ONNX", str(res.onnx_path)),
            ("figures", str(res.figures_path)),
        ]
        out.print(_measurement_table(f"{res.model} on {res.target} (baseline, measured)", rows))
        return
    from hwcompress.artifact import read_manifest

    if out_dir.exists():
        try:  # replace only a previous demo artifact, never a folder the user made
            read_manifest(out_dir)
        except HwcompressError:
            raise UsageError(f"{out_dir} exists and is not a hwcompress artifact; choose another --out") from None
    search(
        target=[target], model=model, checkpoint=None, data=data, latency_budget="0.5x", size_budget=None,
        memory_budget=None, stages="prune,quant", episodes=episodes, quant_episodes=quant_episodes, warmup=10,
        time_budget=time_budget, time_budget_firm=False, agent="ddpg", reward="accuracy", cost="measured", finetune_epochs=1,
        recovery_steps=recovery_steps, val_limit=VAL_IMAGES,
        test_limit=None, seed=0, out_dir=out_dir, run_dir=Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S"),
        resume=None, force=True, cache=cache, host=None, port=None, user=None, key=None, remote_python=None,
        known_hosts=None, trust_new_host=False,
    )


# --------------------------------------------------------------------------- layers
@app.command()
def layers(
    model: ModelArg,
    checkpoint: CheckpointOpt = None,
    input_shape: Annotated[str, typer.Option("--input-shape", help="C,H,W (default 1,28,28)")] = "1,28,28",
    num_classes: Annotated[int, typer.Option(help="Classes")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Print the layer table: prunable groups (Torch-Pruning dependency graph), MACs, params, channels."""
    from hwcompress.pipeline import load_torch_model
    from hwcompress.prune import layer_table, prunable_groups

    shape = (1, *_parse_shape(input_shape))
    net = load_torch_model(model, shape[1:], num_classes=num_classes, checkpoint=checkpoint)
    rows = layer_table(net, shape)
    groups = {g.index: g for g in prunable_groups(net, shape)}
    if as_json:
        out.print_json(json.dumps([r.to_dict(with_schema=False) for r in rows]))
        return
    table = Table(title=f"{model}: {len(rows)} layers, {len(groups)} prunable groups")
    for col in ("layer", "kind", "in", "out", "kernel", "stride", "MACs", "params", "group"):
        table.add_column(col, justify="right" if col not in ("layer", "kind") else "left")
    for r in rows:
        grp = f"{r.group} ({groups[r.group].name})" if r.group >= 0 else "— (not pruned)"
        table.add_row(r.name, r.kind, str(r.in_channels), str(r.out_channels), "x".join(map(str, r.kernel)) or "—",
                      "x".join(map(str, r.stride)) or "—", f"{r.macs:,}", f"{r.params:,}", grp)
    out.print(table)


# --------------------------------------------------------------------------- export
@app.command("export")
def export_cmd(
    model: Annotated[str, typer.Argument(help="Built-in model (its cached trained baseline), package.module:factory, a pruned .pt from a search, or an .onnx")],
    policy: Annotated[Path | None, typer.Option("--policy", help="Policy JSON: per-layer keep ratios and precisions")] = None,
    target: TargetOpt = "x86-cpu",
    out_dir: Annotated[Path, typer.Option("--out", help="Artifact folder")] = Path("out/export"),
    checkpoint: CheckpointOpt = None,
    data: DataOpt = None,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", help="Distillation epochs after pruning")] = 0,
    test_limit: Annotated[int | None, typer.Option("--test-images", help="Test images for the figures (default: all)")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing artifact folder")] = False,
    cache: CacheOpt = None,
    seed: Annotated[int, typer.Option(help="Seed for the data splits")] = 0,
    max_accuracy_drop: Annotated[float, typer.Option(
        "--max-accuracy-drop", help="Refuse an export whose test accuracy falls more than this many points "
        "below the float model's (or the pruned file's own)")] = 10.0,
) -> None:
    """Apply a policy (pruning + per-layer precision), quantize for real and write a validated artifact."""
    from hwcompress.paths import cache_dir
    from hwcompress.pipeline import export_with_policy
    from hwcompress.runlog import library_output_to

    libs = cache_dir() / "logs" / time.strftime("export-%Y%m%d-%H%M%S.log")
    with library_output_to(libs):  # converters' warnings and native logs, out of the terminal
        m = export_with_policy(
            model, policy_file=policy, target=target, out_dir=out_dir, checkpoint=checkpoint, data=data,
            finetune_epochs=finetune_epochs, test_limit=test_limit, force=force, cache_path=cache, seed=seed,
            command=" ".join(["hwcompress", *sys.argv[1:]]), max_accuracy_drop=max_accuracy_drop,
        )
    res = type("R", (), {"manifest": m, "latency_model_within": (0, 0), "budget_ms": 0.0, "baseline_ms": 0.0,
                         "candidates": 0, "seconds": {}, "artifact": out_dir, "run_dir": "—"})()
    _print_search_result(res, summary=False)


# --------------------------------------------------------------------------- search
@dataclass
class _StageClock:
    label: str
    total: int
    start_done: int
    t0: float


class _ProgressReporter:
    """Live bars on a terminal; elsewhere (CI logs, ``> log``) one plain line per episode and stage.

    Each line: stage, episodes done of the total, elapsed time, ETA, the candidate and the best so
    far.  Evaluations past a stage's episodes (the winner's checks) do not move its bar past its total.
    """

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.live = err.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[best]}"), console=err, transient=False, disable=not self.live,
        )
        self.tasks: dict[str, Any] = {}
        self.clocks: dict[str, _StageClock] = {}
        self.t0 = time.monotonic()

    def __enter__(self) -> _ProgressReporter:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def _plain(self, text: str) -> None:
        from hwcompress.progress import clock

        err.print(f"{time.strftime('%H:%M:%S')} [{clock(time.monotonic() - self.t0)}] {text}", markup=False,
                  highlight=False, soft_wrap=True)

    def stage(self, name: str, total: int, done: int) -> None:
        label = {"prune": "stage 1 prune", "quant": "stage 2 precision"}.get(name, name)
        done = min(done, total)
        if name in self.tasks:  # a stage reported again (its end, or a refit): the same bar, new counts
            self.progress.update(self.tasks[name], total=total, completed=done)
        else:
            self.tasks[name] = self.progress.add_task(label, total=total, completed=done, best="")
        clk = self.clocks.get(name)
        first = clk is None
        if clk is None or done < clk.start_done or done == 0:
            self.clocks[name] = _StageClock(label, max(total, 1), done, time.monotonic())
        if not self.live:  # a stage's first report: where it starts; a later one: where it ended
            how = (" (resumed)" if first else " (stopped by --time-budget)") if 0 < done < total else ""
            self._plain(f"{label}: {done}/{total} episodes{how}")

    @staticmethod
    def _best_text(best: Any) -> str:
        if best is None:
            return ""
        lat = f"{best.measurement.latency.median_ms:.3f} ms" if best.measurement else f"{best.macs / 1e6:.1f} MMACs"
        return f"best acc {best.accuracy * 100:.2f}% · {lat} · reward {best.reward:.3f}"

    def candidate(self, stage: str, episode: int, cand: Any, best: Any, within: bool) -> None:
        from hwcompress.progress import clock

        if stage not in self.tasks:
            return
        clk = self.clocks[stage]
        past = episode > clk.total
        completed = min(max(episode, 0), clk.total)
        self.progress.update(self.tasks[stage], completed=completed, best=self._best_text(best))
        if self.live:
            return
        ran = max(completed - clk.start_done, 0)
        elapsed = time.monotonic() - clk.t0
        eta = f"ETA {clock(elapsed / ran * (clk.total - completed))}" if ran and not past else ""
        what = f"{clk.label}: checking the winner" if past else f"{clk.label}: episode {completed}/{clk.total}"
        lat = f"{cand.measurement.latency.median_ms:.3f} ms" if cand.measurement else f"{cand.macs / 1e6:.1f} MMACs"
        parts = [what, f"{clock(elapsed)} elapsed", eta,
                 f"candidate {cand.accuracy * 100:.1f}% {lat}{'' if within else ' (over)'}", self._best_text(best)]
        self._plain(" · ".join(p for p in parts if p))

    def message(self, text: str) -> None:
        if self.live:
            from rich.markup import escape

            self.progress.console.print(f"[dim]{escape(text)}[/dim]", highlight=False)
        else:
            self._plain(text)


@app.command()
def search(
    target: Annotated[list[str] | None, typer.Option(
        "--target", "-t", metavar="TARGET", help="Target name or .toml path (default x86-cpu); repeat it for one "
        "search serving several targets: shared stage 1, an artifact per target (docs/multi.md)")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Built-in model or package.module:factory")] = "vgg-small",
    checkpoint: CheckpointOpt = None,
    data: DataOpt = None,
    latency_budget: Annotated[str, typer.Option("--latency-budget", help="0.5x of the measured baseline, or e.g. 3.2ms")] = "0.5x",
    size_budget: Annotated[str | None, typer.Option("--size-budget", help="File size: 0.1x or e.g. 200KB")] = None,
    memory_budget: Annotated[str | None, typer.Option("--memory-budget", help="Peak memory: 0.5x or e.g. 20MB")] = None,
    stages: Annotated[str, typer.Option("--stages", help="prune, quant or prune,quant")] = "prune,quant",
    episodes: Annotated[int, typer.Option("--episodes", help="Stage-1 episodes")] = 60,
    quant_episodes: Annotated[int, typer.Option("--quant-episodes", help="Stage-2 episodes")] = 30,
    warmup: Annotated[int, typer.Option("--warmup", help="Random warm-up episodes before the agent learns")] = 10,
    time_budget: Annotated[float | None, typer.Option(
        "--time-budget", help="The whole search, start to artifact, in this many seconds: the episodes get what the "
        "rest is estimated to leave (refused up front when it leaves none)")] = None,
    time_budget_firm: Annotated[bool, typer.Option(
        "--time-budget-firm/--time-budget-target", hidden=True,
        help="A time budget the rest overruns is refused (firm) or only said (a target: the demo's)")] = True,
    agent: Annotated[str, typer.Option("--agent", help="ddpg, td3, sac or ppo")] = "ddpg",
    reward: Annotated[str, typer.Option("--reward", help="accuracy (validation) or label-free (similarity to the original)")] = "accuracy",
    cost: Annotated[str, typer.Option("--cost", help="measured, or a proxy: flops (stage 1), bitops (stage 2), flops,bitops")] = "measured",
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", help="Distillation epochs after stage 1")] = 1,
    recovery_steps: Annotated[int, typer.Option(
        "--recovery-steps", help="Distillation steps each stage-1 candidate gets before it is scored (0: none)")] = 100,
    val_limit: Annotated[int, typer.Option("--val-images", help="Validation images per candidate")] = VAL_IMAGES,
    test_limit: Annotated[int | None, typer.Option("--test-images", help="Test images for the final figures (default: all)")] = None,
    guard: Annotated[float, typer.Option("--guard", help="Stage winners must be confirmed this far under the latency budget (0.02 = 2%; default 0: at it)")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed")] = 0,
    out_dir: Annotated[Path, typer.Option("--out", help="Artifact folder")] = Path("out/search"),
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Where the search keeps its log and checkpoints")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue the search in this run folder")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing artifact folder")] = False,
    cache: CacheOpt = None,
    host: Annotated[str | None, typer.Option("--host", help="Override the target's SSH host")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Override the target's SSH port")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Override the target's SSH user")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Override the target's SSH key file")] = None,
    remote_python: Annotated[str | None, typer.Option("--remote-python", help="Python on the device")] = None,
    known_hosts: Annotated[str | None, typer.Option("--known-hosts", help="known_hosts file to verify the device")] = None,
    trust_new_host: Annotated[bool, typer.Option("--trust-new-host", help="Add an unknown host key to known_hosts (says so)")] = False,
    allow_over_budget: Annotated[bool, typer.Option(
        "--allow-over-budget", help="Write the artifact even when the result is over a budget (still exit 3)")] = False,
    hosts: Annotated[str | None, typer.Option(
        "--hosts", help="A pool of boards of the target, measuring at once: \\[user@]host\\[:port],... (Ray; docs/pool.md)")] = None,
    pool_file: Annotated[Path | None, typer.Option(
        "--pool", help="A pool file: TOML \\[\\[board]] tables (or JSON) with host, user, port, key per board")] = None,
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="Join this Ray cluster for the pool (default: a local Ray instance)")] = None,
    board_wait: Annotated[float, typer.Option(
        "--board-wait", help="With every board of the pool down, seconds to wait for one before stopping")] = 60.0,
) -> None:
    """Two-stage DRL search with latency measured on the target; writes an artifact.

    Exit codes: 0 the result meets every budget; 2 bad input (nothing searched), or the device (every board of a pool) lost mid-search (the line names the --resume command); 3 the result is over a budget on the final measurement, or a budget is out of reach (the artifact is written only with --allow-over-budget, its manifest saying budget_met: false).
    """
    from hwcompress.search.multi import MultiResult, MultiSearch, resume_search
    from hwcompress.search.run import Search, SearchConfig

    command = " ".join(["hwcompress", *sys.argv[1:]])
    targets = list(target or ["x86-cpu"])
    s: Search | MultiSearch
    with _ProgressReporter() as rep:
        if resume is not None:
            s = resume_search(resume, reporter=rep, cache_path=cache, command=command)
        else:
            costs = [c.strip() for c in cost.split(",") if c.strip()]
            prune_cost = "flops" if "flops" in costs else "measured"
            quant_cost = "bitops" if "bitops" in costs else "measured"
            unknown = [c for c in costs if c not in ("measured", "flops", "bitops")]
            if unknown:
                raise UsageError(f"--cost {cost}: use measured, flops, bitops or flops,bitops")
            connection = {k: v for k, v in {"host": host, "port": port, "user": user, "key": key, "python": remote_python,
                                            "known_hosts": known_hosts}.items() if v is not None}
            boards = _boards(hosts, pool_file)
            if len(boards) == 1:  # one board is one device: no pool, no Ray
                if host is not None:
                    raise UsageError("--host and --hosts both name the device: give one of them")
                connection.update(boards.pop())
            cfg = SearchConfig(
                model=model, checkpoint=checkpoint, data=data, target=targets[0], connection=connection,
                latency_budget=latency_budget, size_budget=size_budget, memory_budget=memory_budget,
                stages=tuple(s.strip() for s in stages.split(",") if s.strip()), prune_episodes=episodes,
                quant_episodes=quant_episodes, warmup_episodes=warmup, time_budget_s=time_budget,
                time_budget_firm=time_budget_firm, agent=agent,
                score=reward, prune_cost=prune_cost, quant_cost=quant_cost, finetune_epochs=finetune_epochs,
                recovery_steps=recovery_steps, val_limit=val_limit, test_limit=test_limit, seed=seed, out=str(out_dir),
                force=force, guard=guard, boards=tuple(boards), ray_address=ray_address, board_wait_s=board_wait,
                targets=tuple(targets) if len(targets) > 1 else (),
            )
            rd = run_dir or Path("runs") / time.strftime("search-%Y%m%d-%H%M%S")
            if rd.exists() and any(rd.iterdir()):
                raise UsageError(f"run folder {rd} is not empty; use --resume {rd} to continue it or choose --run-dir")
            s = (MultiSearch if cfg.targets else Search)(cfg, rd, reporter=rep, cache_path=cache, command=command)
        s.trust_new_host = trust_new_host
        s.allow_over_budget = allow_over_budget
        s.quiet_libraries = True
        try:
            res = s.run()
        except KeyboardInterrupt:
            if (s.run_dir / "config.json").is_file():
                err.print(f"hwcompress: interrupted; continue with `hwcompress search --resume {s.run_dir}`", markup=False)
                sys.exit(130)
            raise
    if isinstance(res, MultiResult):
        for key, one in res.results.items():
            out.print(f"\n[bold]{key}[/bold]")
            _print_search_result(one)
        out.print(f"\nreport of every target, side by side: {res.report}")
        if not res.budget_met:
            misses = [f"{k}: " + "; ".join(r.final.get("misses", [])) for k, r in res.results.items() if not r.budget_met]
            err.print("hwcompress: over budget: " + " | ".join(misses + [f"{k}: {v}" for k, v in res.misses.items()])
                      + " (artifacts written because of --allow-over-budget)", markup=False, highlight=False,
                      soft_wrap=True)
            raise typer.Exit(3)
        return
    _print_search_result(res)
    if not res.budget_met:
        err.print("hwcompress: over budget: " + "; ".join(res.final.get("misses", [])) + f"; artifact {res.artifact} "
                  "written because of --allow-over-budget (manifest budget_met: false)",
                  markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(3)


def _boards(hosts: str | None, pool_file: Path | None) -> list[dict[str, Any]]:
    """The boards ``--hosts`` or ``--pool`` name (checked: one line and exit 2 on bad input)."""
    from hwcompress.profiling.pool import load_pool_file, parse_hosts

    if hosts is not None and pool_file is not None:
        raise UsageError("--hosts and --pool both list boards: give one of them")
    if hosts is not None:
        return parse_hosts(hosts)
    return load_pool_file(pool_file) if pool_file is not None else []


def times(before: float, after: float, better: str, worse: str) -> str:
    """``2.50x faster`` / ``1.22x slower``: how ``after`` compares with ``before`` (lower is better)."""
    if not before or not after:
        return "—"
    if abs(before - after) / before < 0.005:
        return "same"
    return f"{before / after:.2f}x {better}" if after < before else f"{after / before:.2f}x {worse}"


def _print_search_result(res: Any, summary: bool = True) -> None:
    m = res.manifest
    table = Table(title=f"Baseline vs result on {m.target.name} (measured)" if m else "Search result")
    for col in ("", "baseline", "result", "ratio"):
        table.add_column(col, justify="right" if col else "left")
    if m is not None:
        b, r = m.baseline, m.result
        if b.measurement and r.measurement:
            bl, rl = b.measurement.latency, r.measurement.latency
            table.add_row("latency median", f"{bl.median_ms:.3f} ms", f"{rl.median_ms:.3f} ms",
                          times(bl.median_ms, rl.median_ms, "faster", "slower"))
            table.add_row("latency p90", f"{bl.p90_ms:.3f} ms", f"{rl.p90_ms:.3f} ms", times(bl.p90_ms, rl.p90_ms, "faster", "slower"))
            table.add_row("peak memory", f"{b.measurement.peak_memory_bytes / 2**20:.1f} MiB",
                          f"{r.measurement.peak_memory_bytes / 2**20:.1f} MiB",
                          times(b.measurement.peak_memory_bytes, r.measurement.peak_memory_bytes, "less", "more"))
        table.add_row("file size", f"{b.file_bytes / 1024:.1f} KiB", f"{r.file_bytes / 1024:.1f} KiB",
                      times(b.file_bytes, r.file_bytes, "smaller", "larger"))
        table.add_row("accuracy (test)", f"{b.accuracy * 100:.2f}%", f"{r.accuracy * 100:.2f}%", f"{(r.accuracy - b.accuracy) * 100:+.2f} pt")
        table.add_row("MACs", f"{b.macs / 1e6:.2f} M", f"{r.macs / 1e6:.2f} M", times(b.macs, r.macs, "fewer", "more"))
    out.print(table)
    if not summary:
        out.print(f"artifact: {res.artifact}")
        return
    hit, n = res.latency_model_within
    out.print(f"latency budget {res.budget_ms:.3f} ms (baseline {res.baseline_ms:.3f} ms); "
              f"{res.candidates} candidates; latency model within ±10% on {hit}/{n} unseen candidates")
    lat = (getattr(res, "final", None) or {}).get("latency")
    if lat:
        out.print(f"final check beside the baseline: {lat['judged_ratio']:.3f}x of it ({lat['judged_ms']:.3f} ms) for a "
                  f"{lat['budget']} budget: {'within' if lat['met'] else 'OVER'}")
    for stage, j in (getattr(res, "winners", None) or {}).items():
        v = j.verdict
        how = "beside the baseline" if v.reference_ms else "on fresh profiles"
        out.print(f"{stage} winner judged {how} before it was kept: {v.describe()}"
                  + {"projected": " (projected onto the predicted region)",
                     "earlier stage": " (stage 1's verdict on the same model: none of this stage's was within)"}
                  .get(j.how, ""))
    pool = getattr(res, "pool", None) or {}
    if pool:
        shown = [f"{b['board']} ({b['state']}, scale {b['scale']:.3f}, {b['measured']} measurements)"
                 for b in pool["boards"]]
        out.print(f"boards (reference {pool['reference']}): " + "; ".join(shown))
    out.print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in res.seconds.items()))
    out.print(f"artifact: {res.artifact}\nrun folder: {res.run_dir}")


register_check_commands(app)  # `baseline` and `check` (issue 7)


def main() -> None:
    """Console entry point."""
    try:
        app()
    except HwcompressError as exc:
        if os.environ.get("HWCOMPRESS_DEBUG"):
            raise
        err.print(f"hwcompress: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("hwcompress: interrupted", markup=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
