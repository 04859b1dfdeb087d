"""One self-contained HTML page about a quantized model.

The page holds the annotation report, every quantizer's range and scale / zero point (read from
``Quantizer.quant_params()``, the single source of truth), per-layer SQNR, the sensitivity table
(when a metric is given), the plots (PNG embedded as base64 ``data:`` URIs), and, when a TFLite
file is given, a verification table from ``tfquant.verify``. It references nothing outside the
file: no scripts, no style sheets, no remote images.

Example:
    >>> report(model, x_val, "report.html", metric_fn=accuracy, tflite="model.tflite")
    'report.html'
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import math
import os
import traceback
from typing import Any, Callable

import keras
import numpy as np

from tfquant.analysis import plots
from tfquant.analysis.sensitivity import SensitivityTable, prepare, sensitivity
from tfquant.analysis.sqnr import layer_groups, layer_sqnr
from tfquant.verify import verify

CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em;
       color: #222; max-width: 1200px; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc;
       padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-family: monospace; }
tr.float td { color: #a33; } .note { background: #fff8e1; border-left: 4px solid #f0b400;
       padding: .5em 1em; } img { max-width: 100%; border: 1px solid #eee; margin: .3em 0; }
pre { background: #f7f7f7; padding: .7em; overflow-x: auto; font-size: .8em; }
.small { color: #666; font-size: .85em; }
"""


# -------------------------------------------------------------------- formatting
def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        v = float(value)
    except (TypeError, ValueError):
        return _esc(value)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.6g}"


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] | None = None,
           row_classes: list[str] | None = None) -> str:
    numeric = numeric or set()
    out = ["<table>", "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in headers) + "</tr>"]
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(f'<td class="num">{_num(v)}</td>' if j in numeric
                        else f"<td>{_esc(v)}</td>" for j, v in enumerate(row))
        out.append(f"<tr{cls}>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _error(what: str, err: BaseException) -> str:
    detail = "".join(traceback.format_exception_only(type(err), err)).strip()
    return _note(f"{what} failed: {detail}")


# ---------------------------------------------------------------------- sections
def _annotation_section(qmodel: keras.Model) -> str:
    rep = getattr(qmodel, "quantization_report", None)
    if rep is None:
        return _note("This model carries no annotation report (quantization_report is set by "
                     "tfquant.quantize_model and is not saved with the model).")
    rows = [[e.name, e.type, e.action, e.detail] for e in rep.entries]
    classes = ["float" if e.action == "float" else "" for e in rep.entries]
    floats = ": " + ", ".join(map(_esc, rep.float_layers)) if rep.float_layers else ""
    summary = (f"<p>{len(rep.quantized_layers)} layers quantized, {len(rep.float_layers)} left "
               f"in float{floats}.</p>")
    return summary + _table(["layer", "type", "action", "detail"], rows, row_classes=classes)


def _summarize(values: Any) -> Any:
    arr = np.atleast_1d(np.asarray(values))
    if arr.size == 1:
        return arr.reshape(-1)[0]
    return f"{arr.size} ch.: {_num(arr.min())} .. {_num(arr.max())}"


def quantizer_rows(qmodel: keras.Model) -> list[dict]:
    """Every quantizer's spec and current parameters as plain dicts (one per quantizer).

    Example:
        >>> quantizer_rows(qmodel)[0]["scale"]
        0.0235
    """
    rows = []
    for g in layer_groups(qmodel, include_disabled=True):
        for label, q in g.quantizers.items():
            row = {"layer": g.name, "quantizer": label,
                   "tensor": "weights" if label in g.weight_quantizers else "activations",
                   "learner": q.spec.learner, "bits": q.spec.bits,
                   "symmetric": q.spec.symmetric, "enabled": q.enabled, "min": None,
                   "max": None, "scale": None, "zero_point": None, "channels": 1, "error": ""}
            try:
                p = q.quant_params()
                row.update(min=_summarize(p.min), max=_summarize(p.max),
                           scale=_summarize(p.scale), zero_point=_summarize(p.zero_point),
                           channels=int(np.size(p.scale)), qmin=p.qmin, qmax=p.qmax)
            except Exception as err:  # noqa: BLE001 - e.g. a learner without state yet
                row["error"] = f"{type(err).__name__}: {err}"
            rows.append(row)
    return rows


def _quantizer_section(qmodel: keras.Model) -> str:
    rows = quantizer_rows(qmodel)
    if not rows:
        return _note("The model has no quantizers.")
    cols = ["layer", "quantizer", "tensor", "learner", "bits", "symmetric", "enabled", "min",
            "max", "scale", "zero_point", "error"]
    return ("<p class='small'>Ranges are the nudged float ranges; scale and zero point are "
            "those the exporters and the simulator use (zero point on the signed storage "
            "type). Per-channel parameters are summarised as min .. max over channels.</p>"
            + _table(cols, [[r.get(c) for c in cols] for r in rows], numeric={4, 7, 8, 9, 10}))


def _sensitivity_section(table: SensitivityTable) -> str:
    cols = ["layer", "type", "weights_metric", "activations_metric", "all_but_metric",
            "weights_drop", "activations_drop", "recovery", "impact", "sqnr_db",
            "sqnr_isolated_db"]
    rows = [[getattr(r, c) for c in cols] for r in table.records]
    direction = "higher is better" if table.higher_is_better else "lower is better"
    head = (f"<p>Metric <b>{_esc(table.metric_name)}</b> ({direction}) on {table.samples} "
            f"samples: float <b>{_num(table.float_metric)}</b>, fully quantized "
            f"<b>{_num(table.quantized_metric)}</b>. Drops are positive when quantization "
            "hurts; <i>recovery</i> is what keeping only that layer in float gives back; rows "
            "are sorted by <i>impact</i>, the largest of the three.</p>")
    figs = ""
    for what, make in (("sensitivity chart", plots.sensitivity_figure),
                       ("SQNR chart", plots.sqnr_figure)):
        try:
            figs += _img(plots.save_png(make(table)), what)
        except Exception as err:  # noqa: BLE001 - a plot must not lose the report
            figs += _error(what, err)
    return head + _table(cols, rows, numeric=set(range(2, len(cols)))) + figs


def _sqnr_section(qmodel: keras.Model, data: Any, batch_size: int, steps: int | None) -> str:
    values = layer_sqnr(qmodel, data, batch_size=batch_size, steps=steps)
    text = ("<p>No metric_fn was given, so only SQNR is shown (pass metric_fn for the "
            "sensitivity table).</p>")
    rows = [[n, v] for n, v in values.items()]
    try:
        fig = _img(plots.save_png(plots.sqnr_figure(values)), "SQNR chart")
    except Exception as err:  # noqa: BLE001
        fig = _error("SQNR chart", err)
    return text + _table(["layer", "SQNR dB (all quantized vs float)"], rows, {1}) + fig


def _histogram_section(qmodel: keras.Model, data: Any, batch_size: int, steps: int | None,
                       max_layers: int | None) -> str:
    groups = layer_groups(qmodel)
    names = [g.name for g in groups][:max_layers] if max_layers else None
    figures = plots.histogram_figures(qmodel, data, layers=names, batch_size=batch_size,
                                      steps=steps)
    parts = ["<p class='small'>Histograms (log counts) of the values each quantizer sees, with "
             "the quantization range (red, shaded) and the grid levels (ticks). Activations "
             "are the float activations on the analysis data.</p>"]
    if max_layers and len(groups) > max_layers:
        parts.append(_note(f"Showing the first {max_layers} of {len(groups)} layers."))
    for name, fig in figures.items():
        parts.append(f"<h3>{_esc(name)}</h3>" + _img(plots.save_png(fig), f"histograms {name}"))
    return "\n".join(parts)


def _records(value: Any) -> list[dict] | None:
    """Best-effort conversion of a per-layer result into rows."""
    if value is None:
        return None
    if hasattr(value, "to_records"):
        value = value.to_records()
    if isinstance(value, dict):
        rows = []
        for k, v in value.items():
            if dataclasses.is_dataclass(v) and not isinstance(v, type):
                v = dataclasses.asdict(v)
            rows.append({"layer": k, **v} if isinstance(v, dict) else {"layer": k, "value": v})
        return rows
    if isinstance(value, (list, tuple)):
        rows = []
        for v in value:
            if dataclasses.is_dataclass(v) and not isinstance(v, type):
                v = dataclasses.asdict(v)
            rows.append(v if isinstance(v, dict) else {"value": v})
        return rows
    return None


def _verify_section(qmodel: keras.Model, tflite: Any, data: Any) -> str:
    parts = []
    if isinstance(tflite, (bytes, bytearray)):
        parts.append(f"<p>TFLite model: {len(tflite)} bytes (given in memory).</p>")
    else:
        path = os.fspath(tflite)
        size = os.path.getsize(path) if os.path.exists(path) else None
        parts.append(f"<p>TFLite model: <code>{_esc(os.path.basename(path))}</code>"
                     f"{f', {size} bytes' if size is not None else ' (file not found)'}.</p>")
    try:
        result = verify(qmodel, tflite, data)
    except Exception as err:  # noqa: BLE001 - verification problems are reported, not fatal
        parts.append(_error("tfquant.verify", err))
        return "\n".join(parts)
    summary = [[k, getattr(result, k)] for k in ("bit_exact_fraction", "max_abs_diff_lsb")
               if hasattr(result, k)]
    if summary:
        parts.append(_table(["measure", "value"], summary, {1}))
    rows = _records(getattr(result, "per_layer", None))
    if rows:
        cols = list(dict.fromkeys(k for r in rows for k in r))
        parts.append(_table(cols, [[r.get(c) for c in cols] for r in rows],
                            numeric={i for i, c in enumerate(cols)
                                     if all(isinstance(r.get(c), (int, float, np.number,
                                                                  type(None))) for r in rows)}))
    parts.append(f"<pre>{_esc(result)}</pre>")
    return "\n".join(parts)


# -------------------------------------------------------------------------- main
def report(model: keras.Model | None, data: Any, path: str | os.PathLike,
           qmodel: keras.Model | None = None, tflite: str | os.PathLike | bytes | None = None,
           metric_fn: Callable | None = None, *, config: Any = "tflite_int8",
           calibration: Any = None, observer: str = "minmax", batch_size: int = 32,
           steps: int | None = None, histograms: bool = True,
           max_histogram_layers: int | None = 50, title: str | None = None,
           table: SensitivityTable | None = None, **sensitivity_options: Any) -> str:
    """Writes one self-contained HTML report about a quantized model.

    Sections: the annotation report (``qmodel.quantization_report``); every quantizer's range,
    scale and zero point (``quant_params()``); the sensitivity table and charts when
    ``metric_fn`` is given (:func:`~tfquant.analysis.sensitivity.sensitivity`), else per-layer
    SQNR; histograms of weights and activations against their grids; and, when ``tflite`` is
    given, the verification of that file against the Keras model (``tfquant.verify``). Images
    are embedded as base64 PNG; the page links to nothing outside itself. A failing section
    (verification included) is reported in the page rather than losing the report.

    Args:
        model: the float model (None when ``qmodel`` is given and no float model is at hand).
        data: analysis data (with labels for a ``metric_fn(y_true, y_pred)``).
        path: the HTML file to write.
        qmodel: the quantized model to report on (default: a copy of ``model`` quantized with
            ``config`` and calibrated on ``calibration`` or ``data``). Its quantizer flags are
            left as they were.
        tflite: a ``.tflite`` path or flatbuffer bytes to verify against ``qmodel``.
        metric_fn: metric for the sensitivity analysis (``metric_fn(model)`` or
            ``metric_fn(y_true, y_pred)``, higher is better by default).
        config: quantization config when ``qmodel`` is not given.
        calibration: calibration data when ``qmodel`` is not given (default: ``data``).
        observer: calibration observer when ``qmodel`` is not given.
        batch_size: batch size for arrays.
        steps: batches of ``data`` to use (None: all; histograms use at most 4).
        histograms: include the histogram section.
        max_histogram_layers: at most this many layers get histograms (None: all).
        title: page title (default: from the model name).
        table: a :class:`~tfquant.analysis.sensitivity.SensitivityTable` computed already
            (shown instead of running :func:`~tfquant.analysis.sensitivity.sensitivity`).
        **sensitivity_options: passed to :func:`~tfquant.analysis.sensitivity.sensitivity`
            (``higher_is_better``, ``eager``, ...).

    Returns:
        The path written.

    Example:
        >>> qmodel = tfquant.quantize_model(model); tfquant.ptq.calibrate(qmodel, x_calib)
        >>> tfquant.export.tflite(qmodel, "m.tflite")
        >>> report(model, (x_val, y_val), "report.html", qmodel=qmodel, tflite="m.tflite",
        ...        metric_fn=keras.metrics.SparseCategoricalAccuracy())
        'report.html'
    """
    path = os.fspath(path)
    qmodel = prepare(model, config, calibration, qmodel, data, observer, batch_size, steps)
    name = qmodel.name if model is None else model.name
    title = title or f"tfquant report: {name}"
    sections: list[tuple[str, str]] = []

    def add(heading: str, build: Callable[[], str]) -> None:
        try:
            body = build()
        except Exception as err:  # noqa: BLE001 - one failing section must not lose the rest
            body = _error(heading, err)
        sections.append((heading, body))

    add("Annotation", lambda: _annotation_section(qmodel))
    add("Quantizers", lambda: _quantizer_section(qmodel))
    if table is not None:
        add("Sensitivity and SQNR", lambda: _sensitivity_section(table))
    elif metric_fn is not None:
        def sens() -> str:
            return _sensitivity_section(sensitivity(
                model, data, metric_fn, qmodel=qmodel, batch_size=batch_size, steps=steps,
                **sensitivity_options))
        add("Sensitivity and SQNR", sens)
    else:
        add("SQNR", lambda: _sqnr_section(qmodel, data, batch_size, steps))
    if histograms:
        hist_steps = 4 if steps is None else min(steps, 4)
        add("Histograms", lambda: _histogram_section(qmodel, data, batch_size, hist_steps,
                                                     max_histogram_layers))
    if tflite is not None:
        add("TFLite verification", lambda: _verify_section(qmodel, tflite, data))

    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    nav = " | ".join(f'<a href="#s{i}">{_esc(h)}</a>' for i, (h, _) in enumerate(sections))
    body = "\n".join(f'<h2 id="s{i}">{_esc(h)}</h2>\n{b}' for i, (h, b) in enumerate(sections))
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>\n"
            f"<h1>{_esc(title)}</h1>\n<p class='small'>Generated by tfquant on {stamp}; model "
            f"<code>{_esc(qmodel.name)}</code>, {qmodel.count_params()} parameters.</p>\n"
            f"<p>{nav}</p>\n{body}\n</body></html>\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path
