"""Plots of a quantized model: value histograms against the quantization grid, sensitivity, SQNR.

Figures are drawn with matplotlib's object API on an Agg canvas (no ``pyplot``, no global
backend change) and written as PNG. matplotlib is imported only when a plot is made.

Example:
    >>> plot_histograms(qmodel, x_calib, "plots/")          # one PNG per quantized layer
    >>> plot_sensitivity(table, "plots/sensitivity.png")
    >>> plot_sqnr(table, "plots/sqnr.png")
"""

from __future__ import annotations

import io
import math
import os
import re
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfquant.analysis.sqnr import LayerGroup, layer_groups, load_batches
from tfquant.layers.wrapper import QuantizeWrapper
from tfquant.ptq.calibrate import intercept
from tfquant.ptq.data import pack_inputs
from tfquant.qparams import QuantParams
from tfquant.quantizers import Quantizer

# Grids with at most this many levels get every level drawn as a tick.
MAX_DRAWN_LEVELS = 256


def _figure(width: float, height: float, layout: str | None = "constrained"):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # matplotlib is an optional dependency
        raise ImportError("tfquant.analysis plots need matplotlib: pip install matplotlib") \
            from err
    fig = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | os.PathLike | None = None) -> bytes:
    """Renders ``fig`` as PNG; writes it to ``path`` when given. Returns the PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    data = buf.getvalue()
    if path is not None:
        with open(path, "wb") as f:
            f.write(data)
    return data


def safe_filename(name: str) -> str:
    """A file name made of ``[A-Za-z0-9._-]`` only (layer names may contain ``/``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "layer"


# ------------------------------------------------------------------- histograms
def _params(q: Quantizer) -> QuantParams | None:
    try:
        return q.quant_params()
    except Exception:  # noqa: BLE001 - uninitialised learners (DoReFa) have no grid yet
        return None


def _grid_of(params: QuantParams) -> tuple[np.ndarray, float, float, str]:
    """Grid levels, range and a note; for per-axis parameters the widest channel's grid."""
    scale = np.atleast_1d(params.scale).astype(np.float64)
    zp = np.atleast_1d(params.zero_point).astype(np.float64)
    lo = np.atleast_1d(params.min).astype(np.float64)
    hi = np.atleast_1d(params.max).astype(np.float64)
    c = int(np.argmax(hi - lo))
    note = ""
    if params.per_axis:
        note = f"per-channel ({scale.size} ch.): widest channel {c} shown"
    levels = scale[c] * (np.arange(params.qmin, params.qmax + 1, dtype=np.float64) - zp[c])
    return levels, float(lo[c]), float(hi[c]), note


def _subsample(values: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    values = values.reshape(-1)
    if values.size <= limit:
        return values
    return rng.choice(values, limit, replace=False)


def collect_values(qmodel: keras.Model, data: Any, groups: list[LayerGroup] | None = None,
                   batch_size: int = 32, steps: int | None = 4, max_values: int = 200_000,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """The values each quantizer sees: weights (BN-folded) and float activations.

    Activations come from running ``qmodel`` eagerly on ``data`` with every quantizer passing
    values through (the float model's activations, as calibration sees them).

    Returns:
        ``quantizer label -> 1-D float array`` (at most ``max_values`` values, sampled).
    """
    rng = np.random.default_rng(seed)
    groups = layer_groups(qmodel) if groups is None else groups
    values: dict[str, np.ndarray] = {}
    for g in groups:
        if g.weight_quantizers and isinstance(g.layer, QuantizeWrapper):
            folded = g.layer.folded_weights()
            for label in g.weight_quantizers:
                attr = label.rsplit("/", 1)[-1]
                values[label] = _subsample(np.asarray(folded[attr], np.float32), max_values, rng)
    labels = {id(q): label for g in groups for label, q in g.activation_quantizers.items()}
    if not labels:
        return values
    seen: dict[str, list[np.ndarray]] = {label: [] for label in labels.values()}
    batches = load_batches(qmodel, data, batch_size, steps)
    per_batch = max(1, max_values // max(1, len(batches)))

    def observe(q: Quantizer, x: tf.Tensor) -> tf.Tensor:
        label = labels.get(id(q))
        if label is not None:
            seen[label].append(_subsample(np.asarray(x, np.float32), per_batch, rng))
        return x

    every = [q for g in layer_groups(qmodel, include_disabled=True)
             for q in g.quantizers.values()]
    with intercept(every, observe):
        for b in batches:
            qmodel(pack_inputs(qmodel, b.x), training=False)
    for label, parts in seen.items():
        if parts:
            values[label] = np.concatenate(parts)
    return values


def _draw_histogram(ax, label: str, values: np.ndarray | None, q: Quantizer,
                    bins: int) -> None:
    from matplotlib.ticker import FuncFormatter, NullLocator

    params = _params(q)
    spec = q.spec
    title = f"{label}  ({spec.bits}-bit {'sym' if spec.symmetric else 'asym'})"
    if values is None or values.size == 0:
        ax.text(0.5, 0.5, "no values observed", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_title(title, fontsize=9, y=1.0)
        return
    finite = values[np.isfinite(values)]
    lo = hi = None
    levels = np.zeros(0)
    note = ""
    if params is not None:
        levels, lo, hi, note = _grid_of(params)
    span_lo = float(np.min(finite)) if lo is None else min(float(np.min(finite)), lo)
    span_hi = float(np.max(finite)) if hi is None else max(float(np.max(finite)), hi)
    if span_hi <= span_lo:
        span_hi = span_lo + 1e-6
    margin = 0.05 * (span_hi - span_lo)
    counts, edges = np.histogram(finite, bins=bins, range=(span_lo - margin, span_hi + margin))
    # one filled step artist (drawing is much cheaper than one bar patch per bin)
    ax.stairs(counts, edges, fill=True, color="#4c72b0", alpha=0.85, baseline=0.5)
    ax.set_yscale("log")
    ax.set_ylim(0.5, max(2.0, float(counts.max()) * 2.0))
    # plain tick labels, no minor ticks: mathtext labels and tick artists dominate draw time
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if params is not None:
        ax.axvspan(lo, hi, color="#55a868", alpha=0.12, label="quantization range")
        ax.axvline(lo, color="#c44e52", lw=1.2)
        ax.axvline(hi, color="#c44e52", lw=1.2, label=f"range [{lo:.4g}, {hi:.4g}]")
        if levels.size <= MAX_DRAWN_LEVELS:
            # grid levels as ticks along the bottom edge (axes-fraction heights)
            # (one Line2D with NaN breaks: a LineCollection costs ~0.2 s per panel)
            top = 0.06 if levels.size > 32 else 1.0
            xs = np.repeat(levels, 3)
            ys = np.tile([0.0, top, np.nan], levels.size)
            ax.plot(xs, ys, color="#333333", lw=0.5, alpha=0.8 if levels.size > 32 else 0.35,
                    transform=ax.get_xaxis_transform(), label=f"grid ({levels.size} levels)")
        clipped = float(np.mean((finite < lo) | (finite > hi))) if finite.size else 0.0
        step = float(np.max(np.atleast_1d(params.scale)))
        info = f"step {step:.3g}, zero point {np.atleast_1d(params.zero_point)[0]}"
        if levels.size > MAX_DRAWN_LEVELS:
            info += f", {levels.size} levels (not drawn)"
        if not params.per_axis:  # values are pooled over channels: no per-channel clipping
            info += f"\n{100 * clipped:.3g}% of values clipped"
        if note:
            info += f"\n{note}"
        ax.text(0.01, 0.97, info, transform=ax.transAxes, va="top", fontsize=7,
                bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none"})
        ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title, fontsize=9, y=1.0)  # explicit y: no automatic (slow) placement
    ax.set_ylabel("count (log)", fontsize=8)
    ax.tick_params(labelsize=7)


def histogram_figures(qmodel: keras.Model, data: Any, layers: list[str] | None = None,
                      bins: int = 128, batch_size: int = 32, steps: int | None = 4,
                      max_values: int = 200_000) -> dict[str, Any]:
    """One matplotlib Figure per quantized layer (see :func:`plot_histograms`)."""
    groups = layer_groups(qmodel)
    if layers is not None:
        unknown = sorted(set(layers) - {g.name for g in groups})
        if unknown:
            raise ValueError(f"no quantized layer(s) {unknown}; available: "
                             f"{[g.name for g in groups]}")
        groups = [g for g in groups if g.name in set(layers)]
    values = collect_values(qmodel, data, groups, batch_size, steps, max_values)
    figures = {}
    for g in groups:
        quantizers = g.quantizers
        height = 2.4 * len(quantizers) + 0.4
        fig = _figure(7.0, height, layout=None)  # fixed margins: layout engines cost seconds
        fig.subplots_adjust(left=0.1, right=0.98, bottom=0.3 / height, top=1 - 0.65 / height,
                            hspace=0.45)
        axes = fig.subplots(len(quantizers), 1, squeeze=False)[:, 0]
        for ax, (label, q) in zip(axes, quantizers.items()):
            _draw_histogram(ax, label, values.get(label), q, bins)
        fig.suptitle(f"{g.name} ({g.type})", fontsize=10)
        figures[g.name] = fig
    return figures


def plot_histograms(qmodel: keras.Model, data: Any, out_dir: str | os.PathLike,
                    layers: list[str] | None = None, bins: int = 128, batch_size: int = 32,
                    steps: int | None = 4) -> dict[str, str]:
    """Writes one PNG per quantized layer: histograms of its weights and activations with the
    quantization range (red lines, shaded) and the grid levels (ticks) marked.

    Weights are the values the weight quantizer sees (BN folded in); activations are the float
    activations on ``data`` (what calibration observes). Per-channel weights show the widest
    channel's range and grid. The fraction of clipped values is printed on each panel.

    Args:
        qmodel: a quantized model with its ranges set.
        data: inputs (anything :func:`tfquant.analysis.sqnr.load_batches` accepts).
        out_dir: directory to write to (created if missing).
        layers: restrict to these layer names (default: every quantized layer).
        bins: histogram bins.
        batch_size: batch size for arrays.
        steps: batches of ``data`` to run (default 4).

    Returns:
        ``layer name -> PNG path``.

    Example:
        >>> paths = plot_histograms(qmodel, x_calib, "plots/hist")
        >>> paths["conv1"]
        'plots/hist/conv1.png'
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, fig in histogram_figures(qmodel, data, layers, bins, batch_size, steps).items():
        path = os.path.join(out_dir, f"{safe_filename(name)}.png")
        save_png(fig, path)
        paths[name] = path
    return paths


# ------------------------------------------------------------------- sensitivity
def _finite(v: float | None) -> float:
    return 0.0 if v is None or not math.isfinite(v) else float(v)


def sensitivity_figure(table, top: int | None = None):
    """The sensitivity bar chart as a matplotlib Figure (see :func:`plot_sensitivity`)."""
    records = list(table.records)[:top] if top else list(table.records)
    fig = _figure(8.0, 1.2 + 0.45 * max(1, len(records)))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(records))
    h = 0.27
    series = (("weights_drop", "weights only quantized", "#4c72b0"),
              ("activations_drop", "activations only quantized", "#dd8452"),
              ("recovery", "recovery when kept float", "#55a868"))
    for k, (field, label, color) in enumerate(series):
        ax.barh(y + (k - 1) * h, [_finite(getattr(r, field)) for r in records], h,
                label=label, color=color)
    ax.set_yticks(y, [r.layer for r in records], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_xlabel(f"{table.metric_name} drop (positive = quantization hurts)")
    ax.set_title(f"Per-layer sensitivity: float {table.float_metric:.4g}, "
                 f"quantized {table.quantized_metric:.4g}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def plot_sensitivity(table, path: str | os.PathLike, top: int | None = None) -> str:
    """Writes the sensitivity bar chart (PNG): per layer, the metric drop with only its weights
    quantized, with only its activations quantized, and the recovery when it alone stays float;
    layers ordered by impact, largest on top.

    Args:
        table: a :class:`~tfquant.analysis.sensitivity.SensitivityTable`.
        path: PNG file to write.
        top: show only the ``top`` most sensitive layers.

    Returns:
        The path.

    Example:
        >>> plot_sensitivity(sensitivity(model, x, acc), "sensitivity.png", top=20)
        'sensitivity.png'
    """
    save_png(sensitivity_figure(table, top), path)
    return os.fspath(path)


def sqnr_figure(table):
    """The per-layer SQNR chart as a matplotlib Figure (see :func:`plot_sqnr`).

    ``table`` is a SensitivityTable or a ``{layer: dB}`` dict (e.g. from
    :func:`tfquant.analysis.sqnr.layer_sqnr`).
    """
    if isinstance(table, dict):
        names, acc, iso = list(table), [table[n] for n in table], None
    else:
        records = table.in_model_order()
        names = [r.layer for r in records]
        acc = [r.sqnr_db for r in records]
        iso = [r.sqnr_isolated_db for r in records]
    fig = _figure(max(6.0, 0.45 * len(names) + 2.0), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    shown = [v for v in acc + (iso or []) if v is not None and math.isfinite(v)]
    cap = (max(shown) if shown else 0.0) + 10.0  # where identical outputs (inf dB) are drawn
    ax.bar(x, [cap if v == math.inf else _finite(v) for v in acc], 0.6, color="#4c72b0",
           label="all quantizers on (accumulated)")
    if iso is not None:
        ax.plot(x, [cap if v == math.inf else (np.nan if v is None else v) for v in iso], "o",
                color="#c44e52", label="only this layer quantized (isolated)")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("SQNR (dB)")
    ax.set_title("Per-layer output SQNR, quantized vs float (higher is better)", fontsize=10)
    ax.axhline(0.0, color="black", lw=0.8)
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.25 * (high - low))  # headroom for the legend
    ax.legend(fontsize=8, loc="upper left", ncols=2)
    return fig


def plot_sqnr(table, path: str | os.PathLike) -> str:
    """Writes the per-layer SQNR chart (PNG) in graph order: bars for the accumulated SQNR
    (every quantizer on), dots for the isolated SQNR (only that layer quantized).

    Args:
        table: a SensitivityTable, or a ``{layer: dB}`` dict from
            :func:`~tfquant.analysis.sqnr.layer_sqnr`.
        path: PNG file to write.

    Returns:
        The path.

    Example:
        >>> plot_sqnr(layer_sqnr(qmodel, x_calib), "sqnr.png")
        'sqnr.png'
    """
    save_png(sqnr_figure(table), path)
    return os.fspath(path)
