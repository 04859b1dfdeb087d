"""Insight into a quantized model: per-layer sensitivity, SQNR, histograms, an HTML report.

Every analysis works on one quantized copy of the float model and toggles
``Quantizer.enabled`` to compare configurations; the float model is never modified. Plots need
matplotlib (imported only when a plot is drawn).

Example:
    >>> import tfquant
    >>> table = tfquant.analysis.sensitivity(model, (x_val, y_val),
    ...                                      keras.metrics.SparseCategoricalAccuracy())
    >>> print(table)                                    # most sensitive layer first
    >>> tfquant.analysis.plot_sensitivity(table, "sensitivity.png")
    >>> tfquant.analysis.report(model, (x_val, y_val), "report.html",
    ...                         metric_fn=keras.metrics.SparseCategoricalAccuracy())
"""

from tfquant.analysis.html_report import quantizer_rows, report
from tfquant.analysis.plots import (collect_values, plot_histograms, plot_sensitivity,
                                    plot_sqnr)
from tfquant.analysis.sensitivity import (SensitivityRecord, SensitivityTable, metric_inputs,
                                          sensitivity)
from tfquant.analysis.sqnr import (LayerGroup, enabled_only, layer_groups, layer_sqnr,
                                   load_batches, sqnr)

__all__ = [
    "sensitivity", "SensitivityTable", "SensitivityRecord", "metric_inputs",
    "sqnr", "layer_sqnr", "layer_groups", "LayerGroup", "enabled_only", "load_batches",
    "plot_histograms", "plot_sensitivity", "plot_sqnr", "collect_values",
    "report", "quantizer_rows",
]
