"""Command line: a thin layer over library calls.

Errors the user can fix (:class:`~hwcompress.errors.HwcompressError`) become one line on
stderr and exit code 2; ``--debug`` (or ``HWCOMPRESS_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hwcompress import __version__
from hwcompress.errors import HwcompressError, UsageError

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


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(console=err, show_time=False, show_path=False, markup=False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler], format="%(message)s")


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
        conn = "local" if t.connection.kind == "local" else f"ssh {t.connection.user}@{t.connection.host}:{t.connection.port}"
        table.add_row(t.name, t.runtime, ",".join(t.precisions), str(t.channel_multiple), str(t.threads), conn)
    out.print(table)


@targets_app.command("show")
def targets_show(name: Annotated[str, typer.Argument(help="Target name or .toml path")]) -> None:
    """Print one target's full, validated settings as JSON."""
    from hwcompress.targets import load_target

    out.print_json(json.dumps(load_target(name).to_dict()))


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
    cfg = default_config(model)
    cfg = dataclasses.replace(cfg, seed=seed, **({"epochs": epochs} if epochs else {}))
    if epochs is not None and epochs < 1:
        raise UsageError("--epochs must be at least 1")
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
    onnx_path = model_to_onnx(model, shape, num_classes=num_classes, checkpoint=checkpoint)
    m = measure(onnx_path, tgt, cache=MeasurementCache(cache), force=no_cache)
    if as_json:
        out.print_json(json.dumps(m.to_dict()))
    else:
        out.print(_measurement_table(f"{Path(model).name} on {tgt.name}", _measurement_rows(m)))


def _parse_shape(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise UsageError(f"--input-shape {text!r} is not C,H,W with three positive integers (e.g. 1,28,28)")
    return parts  # type: ignore[return-value]


# --------------------------------------------------------------------------- demo
@app.command()
def demo(
    model: Annotated[str, typer.Option("--model", "-m", help="Built-in model")] = "vgg-small",
    data: DataOpt = None,
    target: TargetOpt = "x86-cpu",
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write the exported model and figures")] = Path("out/demo"),
    cache: CacheOpt = None,
) -> None:
    """The embedded default job: baseline (trained once, cached) -> ONNX -> measured on the target."""
    from hwcompress.pipeline import run_demo

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
