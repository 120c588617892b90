"""report.html + PNG plots of an artifact's manifest (matplotlib's Agg canvas, no pyplot state).

The report is self-contained (plots embedded as data URIs) and the same plots are written as
PNG files beside it.  Where a model with a lower precision than fp32 was measured *not faster*
than the fp32 baseline, the report says so in a highlighted box at the top: on x86 CPUs int4
ONNX and int8 TFLite are slower than fp32, and a measured search must keep that visible.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hwcompress.fsutil import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from hwcompress.records import Manifest, ModelFigures

log = logging.getLogger(__name__)

NOT_FASTER_RATIO = 0.97
"""A lower-precision model whose median latency is above this fraction of fp32's is flagged."""
PRECISION_COLOURS: dict[str, str] = {
    "fp32": "#4c72b0",
    "fp16": "#55a868",
    "int8": "#dd8452",
    "int4": "#c44e52",
}
PLOT_FILES: tuple[str, ...] = ("layers.png", "baseline_vs_result.png")


@dataclass(frozen=True)
class SpeedFinding:
    """A measured model with lower precision than fp32 compared with the fp32 baseline."""

    label: str
    precisions: str
    baseline_ms: float
    model_ms: float

    @property
    def ratio(self) -> float:
        """Model latency / baseline latency (< 1: faster)."""
        return self.model_ms / self.baseline_ms if self.baseline_ms > 0 else float("nan")

    @property
    def not_faster(self) -> bool:
        return not self.ratio < NOT_FASTER_RATIO


def _lowered(fig: ModelFigures) -> str:
    """Lower precisions ``fig``'s model runs at ("int8 x5, int4 x1"); "" when none (or unknown)."""
    return ", ".join(f"{p} x{n}" for p, n in sorted(fig.precisions.items()) if p != "fp32" and n > 0)


def speed_findings(m: Manifest) -> list[SpeedFinding]:
    """Result and variants with a lower precision than fp32, each against the fp32 baseline."""
    base = m.baseline.measurement
    if base is None:
        return []
    out: list[SpeedFinding] = []
    for label, fig in [("result", m.result), *sorted(m.variants.items())]:
        lowered = _lowered(fig)
        if fig.measurement is None or not lowered:
            continue
        out.append(SpeedFinding(label, lowered, base.latency.median_ms, fig.measurement.latency.median_ms))
    return out


# --------------------------------------------------------------------------- plots
def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def layers_plot(m: Manifest) -> bytes:
    """PNG: per-layer keep ratio (bars, coloured by precision) and parameter count."""
    from matplotlib.patches import Patch

    layers = m.layers
    n = max(1, len(layers))
    fig = _figure(max(6.0, 0.45 * n + 2), 4.8)
    ax_keep, ax_params = fig.subplots(2, 1, sharex=True)
    xs = list(range(len(layers)))
    colours = [PRECISION_COLOURS.get(layer.effective or layer.precision, "#8c8c8c") for layer in layers]
    ax_keep.bar(xs, [layer.keep for layer in layers], color=colours)
    ax_keep.set_ylim(0, 1.05)
    ax_keep.set_ylabel("keep ratio")
    ax_keep.set_title("Per-layer keep ratio and precision")
    used = sorted({layer.effective or layer.precision for layer in layers})
    ax_keep.legend(
        handles=[Patch(color=PRECISION_COLOURS.get(p, "#8c8c8c"), label=p) for p in used],
        loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8,
    )
    ax_params.bar(xs, [layer.params for layer in layers], color=colours)
    ax_params.set_ylabel("parameters")
    ax_params.set_xticks(xs, [layer.name for layer in layers], rotation=60, ha="right", fontsize=8)
    return _png(fig)


def _models(m: Manifest) -> list[tuple[str, ModelFigures]]:
    return [("baseline (fp32)", m.baseline), ("result", m.result), *sorted(m.variants.items())]


def comparison_plot(m: Manifest) -> bytes:
    """PNG: baseline vs result (and variants): median latency (p10-p90 bars), file size, accuracy."""
    models = _models(m)
    labels = [label for label, _ in models]
    base_ms = m.baseline.measurement.latency.median_ms if m.baseline.measurement else 0.0
    fig = _figure(max(9.0, 1.6 * len(models) + 6), 3.8)
    ax_lat, ax_size, ax_acc = fig.subplots(1, 3)
    xs = list(range(len(models)))
    lat = [f.measurement.latency.median_ms if f.measurement else 0.0 for _, f in models]
    err_lo = [max(0.0, f.measurement.latency.median_ms - f.measurement.latency.p10_ms) if f.measurement else 0.0 for _, f in models]
    err_hi = [max(0.0, f.measurement.latency.p90_ms - f.measurement.latency.median_ms) if f.measurement else 0.0 for _, f in models]
    colours = ["#4c72b0" if i == 0 else ("#c44e52" if base_ms and v >= NOT_FASTER_RATIO * base_ms else "#55a868") for i, v in enumerate(lat)]
    ax_lat.bar(xs, lat, yerr=[err_lo, err_hi], color=colours, capsize=3)
    ax_lat.set_ylabel("median latency (ms), p10-p90")
    ax_lat.set_title("Latency (red: not faster than fp32)", fontsize=9)
    for x, v in zip(xs, lat, strict=True):
        if base_ms and v:
            ax_lat.annotate(f"{v / base_ms:.2f}x", (x, v), ha="center", va="bottom", fontsize=8)
    ax_size.bar(xs, [f.file_bytes / 1024 for _, f in models], color="#8172b3")
    ax_size.set_ylabel("file size (KiB)")
    ax_size.set_title("Model file size", fontsize=9)
    ax_acc.bar(xs, [100 * f.accuracy for _, f in models], color="#937860")
    accs = [100 * f.accuracy for _, f in models]
    lo = min(accs) if accs else 0.0
    ax_acc.set_ylim(max(0.0, lo - 5), 100)
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_title("Accuracy (measured on the runtime)", fontsize=9)
    for ax in (ax_lat, ax_size, ax_acc):
        ax.set_xticks(xs, labels, rotation=30, ha="right", fontsize=8)
    return _png(fig)


# --------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:0.9em}
th{background:#f2f2f2} td.l,th.l{text-align:left}
.warn{background:#fde8e8;border:2px solid #c44e52;padding:0.6em 1em;margin:1em 0}
.ok{background:#e8f5e9;border:1px solid #55a868;padding:0.6em 1em;margin:1em 0}
tr.slow td{background:#fde8e8}
code{background:#f6f6f6;padding:1px 4px}
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _fmt_bytes(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def _figures_table(m: Manifest) -> str:
    rows = []
    for label, f in _models(m):
        me = f.measurement
        lat = me.latency if me else None
        cells = [
            f'<td class="l">{_e(label)}</td>',
            f'<td class="l">{_e(f.file)}</td>',
            f"<td>{100 * f.accuracy:.2f}%</td>",
            f"<td>{_fmt_bytes(f.file_bytes)}</td>",
            f"<td>{lat.median_ms:.3f}</td><td>{lat.p10_ms:.3f}</td><td>{lat.p90_ms:.3f}</td>"
            f"<td>{100 * (lat.robust_cv or lat.cv):.1f}%</td><td>{lat.n}</td>" if lat else "<td colspan=5>not measured</td>",
            f"<td>{_fmt_bytes(me.peak_memory_bytes)}</td>" if me else "<td></td>",
            f"<td>{f.macs:,}</td><td>{f.params:,}</td>",
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = (
        '<tr><th class="l">model</th><th class="l">file</th><th>accuracy</th><th>size</th>'
        "<th>median ms</th><th>p10 ms</th><th>p90 ms</th><th>spread (robust CV)</th><th>n</th><th>peak memory</th>"
        "<th>MACs</th><th>params</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _speed_box(m: Manifest) -> str:
    findings = speed_findings(m)
    if not findings:
        return '<div class="ok">No lower-precision model was measured against the fp32 baseline.</div>'
    slow = [f for f in findings if f.not_faster]
    rows = "".join(
        f'<tr class="{"slow" if f.not_faster else ""}"><td class="l">{_e(f.label)}</td><td class="l">{_e(f.precisions)}</td>'
        f"<td>{f.baseline_ms:.3f}</td><td>{f.model_ms:.3f}</td><td>{f.ratio:.2f}x</td>"
        f'<td class="l">{"NOT faster than fp32" if f.not_faster else "faster"}</td></tr>'
        for f in findings
    )
    table = (
        '<table><tr><th class="l">model</th><th class="l">lower precisions</th><th>fp32 ms</th>'
        f'<th>model ms</th><th>latency / fp32</th><th class="l">verdict</th></tr>{rows}</table>'
    )
    if slow:
        names = ", ".join(f"{f.label} ({f.ratio:.2f}x)" for f in slow)
        return (
            f'<div class="warn"><b>Lower precision was NOT faster than fp32 on {_e(m.target.name)}:</b> '
            f"{_e(names)}. Smaller files and fewer bits do not mean lower latency on this device; "
            f"these figures are measured, not estimated.{table}</div>"
        )
    return f'<div class="ok">Every lower-precision model measured was faster than fp32.{table}</div>'


def _layers_table(m: Manifest) -> str:
    rows = "".join(
        f'<tr><td class="l">{_e(layer.name)}</td><td class="l">{_e(layer.op_type)}</td><td>{layer.params:,}</td>'
        f'<td>{layer.keep:.3f}</td><td class="l">{_e(layer.precision)}</td>'
        f'<td class="l">{_e(layer.effective or "")}</td></tr>'
        for layer in m.layers
    )
    return (
        '<table><tr><th class="l">layer</th><th class="l">op</th><th>params</th><th>keep</th>'
        f'<th class="l">precision (policy)</th><th class="l">precision (in file)</th></tr>{rows}</table>'
    )


def _kv_table(items: dict[str, str]) -> str:
    rows = "".join(f'<tr><td class="l">{_e(k)}</td><td class="l">{_e(v)}</td></tr>' for k, v in sorted(items.items()))
    return f"<table>{rows}</table>"


def render_html(m: Manifest, plots: dict[str, bytes]) -> str:
    """The report page for ``m``; ``plots`` (file name -> PNG bytes) are embedded and linked."""
    imgs = "".join(
        f'<p><a href="{_e(name)}"><img alt="{_e(name)}" style="max-width:100%" '
        f'src="data:image/png;base64,{base64.b64encode(data).decode()}"></a></p>'
        for name, data in plots.items()
    )
    meas = m.result.measurement
    tol = ", ".join(f"{k}: {v:.4g}" for k, v in sorted(m.output_tolerances.items())) or f"{m.output_tolerance:.4g}"
    device = f"{_e(meas.device)}, {_e(meas.runtime)} {_e(meas.runtime_version)}, {meas.threads} thread(s)" if meas else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hwcompress report: {_e(m.source_model)} on {_e(m.target.name)}</title>
<style>{_CSS}</style></head><body>
<h1>{_e(m.source_model)} on {_e(m.target.name)}</h1>
<p>Created {_e(m.created)}. Device: {device}. Command: <code>{_e(m.command)}</code>, seed {m.seed}.</p>
<h2>Speed of lower precisions</h2>
{_speed_box(m)}
<h2>Baseline vs result</h2>
{_figures_table(m)}
<p>Accuracy is top-1 on the test split, measured by running each model file in its runtime.
Output check: max |logit difference| to the float model &le; {_e(tol)} and top-1 agreement
&ge; {100 * m.min_top1_agreement:.1f}% on the reference images in <code>reference.npz</code>.</p>
{imgs}
<h2>Per-layer policy</h2>
{_layers_table(m)}
<h2>Tool versions</h2>
{_kv_table(m.tool_versions)}
</body></html>
"""


def write_report(m: Manifest, out_dir: str | os.PathLike[str], *, plots: bool = True) -> list[Path]:
    """Write report.html (and the PNG plots when ``plots``) into ``out_dir``; returns the paths written."""
    folder = Path(out_dir)
    pngs: dict[str, bytes] = {}
    if plots:
        if m.layers:
            pngs["layers.png"] = layers_plot(m)
        pngs["baseline_vs_result.png"] = comparison_plot(m)
    written: list[Path] = []
    for name, data in pngs.items():
        atomic_write_bytes(folder / name, data)
        written.append(folder / name)
    atomic_write_text(folder / "report.html", render_html(m, pngs))
    written.append(folder / "report.html")
    for f in speed_findings(m):
        if f.not_faster:
            log.warning("%s (%s) is not faster than fp32 on %s: %.3f ms vs %.3f ms (%.2fx)",
                        f.label, f.precisions, m.target.name, f.model_ms, f.baseline_ms, f.ratio)
    return written


__all__ = ["NOT_FASTER_RATIO", "SpeedFinding", "comparison_plot", "layers_plot", "render_html", "speed_findings", "write_report"]
