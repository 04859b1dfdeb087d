"""The table :func:`tfquant.analysis.sensitivity.sensitivity` returns: one record per layer.

:class:`SensitivityRecord` is one layer's metrics, drops and SQNR; :class:`SensitivityTable`
sorts them by impact and prints them, or writes them as CSV or plain dicts.

Example:
    >>> table = tfquant.analysis.sensitivity(model, x_val, accuracy)
    >>> table.layers[0] == table.records[0].layer      # most sensitive first
    True
    >>> table.to_csv("sensitivity.csv")
    'sensitivity.csv'
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import Any

__all__ = ["SensitivityRecord", "SensitivityTable", "FIELDS"]


@dataclasses.dataclass(frozen=True)
class SensitivityRecord:
    """Sensitivity of one layer.

    Metric values are None where the configuration does not exist (a layer without weight
    quantizers has no ``weights_metric``). Drops are positive when quantizing hurts, whatever
    the metric's direction (``higher_is_better``).

    Attributes:
        layer: float layer name (a standalone input quantizer's name for model inputs).
        type: layer class name.
        index: position in the model (graph order).
        weights_metric: metric with only this layer's weights quantized.
        activations_metric: metric with only this layer's activations quantized.
        all_but_metric: metric with everything quantized except this layer.
        weights_drop: float metric minus ``weights_metric``.
        activations_drop: float metric minus ``activations_metric``.
        recovery: ``all_but_metric`` minus the fully quantized metric (what keeping this layer
            in float gives back).
        impact: the largest of the three above: the sort key.
        sqnr_db: SQNR of the layer output with every quantizer on (error accumulated so far).
        sqnr_isolated_db: SQNR of the layer output with only this layer's quantizers on.
        quantizers: labels of the layer's quantizers (``layer/role``).
    """

    layer: str
    type: str
    index: int
    weights_metric: float | None
    activations_metric: float | None
    all_but_metric: float | None
    weights_drop: float | None
    activations_drop: float | None
    recovery: float | None
    impact: float
    sqnr_db: float | None
    sqnr_isolated_db: float | None
    quantizers: tuple[str, ...] = ()


FIELDS = tuple(f.name for f in dataclasses.fields(SensitivityRecord))


def _fmt(v: Any, width: int = 0) -> str:
    if v is None:
        text = "-"
    elif isinstance(v, float):
        text = "inf" if v == math.inf else "-inf" if v == -math.inf else f"{v:.4g}"
    elif isinstance(v, tuple):
        text = " ".join(v)
    else:
        text = str(v)
    return text.rjust(width) if width else text


@dataclasses.dataclass
class SensitivityTable:
    """The result of :func:`sensitivity`: one :class:`SensitivityRecord` per quantized layer,
    sorted by impact (largest first).

    Attributes:
        records: the rows, largest impact first.
        float_metric: metric of the float model (every quantizer off).
        quantized_metric: metric of the fully quantized model.
        metric_name: a label for the metric (the function's name).
        higher_is_better: the metric's direction.
        samples: number of samples the metric and SQNR were computed on.

    Example:
        >>> table.records[0].layer            # the most sensitive layer
        'fc2'
        >>> table["fc2"].weights_drop
        0.62
        >>> table.to_csv("sens.csv"); rows = table.to_records()
    """

    records: list[SensitivityRecord]
    float_metric: float
    quantized_metric: float
    metric_name: str = "metric"
    higher_is_better: bool = True
    samples: int = 0

    def __post_init__(self):
        self.records = sorted(self.records, key=lambda r: (
            math.isnan(r.impact), 0.0 if math.isnan(r.impact) else -r.impact, r.index))

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, key: int | str) -> SensitivityRecord:
        if isinstance(key, str):
            for r in self.records:
                if r.layer == key:
                    return r
            raise KeyError(f"no layer {key!r} in the sensitivity table; layers: {self.layers}")
        return self.records[key]

    @property
    def layers(self) -> list[str]:
        """Layer names, most sensitive first."""
        return [r.layer for r in self.records]

    def in_model_order(self) -> list[SensitivityRecord]:
        """The records in graph order (for per-layer plots)."""
        return sorted(self.records, key=lambda r: r.index)

    def to_records(self) -> list[dict]:
        """The rows as plain dicts (``quantizers`` as a list), most sensitive first."""
        rows = []
        for r in self.records:
            d = dataclasses.asdict(r)
            d["quantizers"] = list(r.quantizers)
            rows.append(d)
        return rows

    def to_csv(self, path: str | os.PathLike) -> str:
        """Writes the table as CSV (one header row, one row per layer); returns the path.

        Empty cells stand for configurations that do not exist; ``quantizers`` are joined with
        spaces.
        """
        path = os.fspath(path)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(FIELDS)
            for r in self.records:
                writer.writerow(["" if v is None else (" ".join(v) if isinstance(v, tuple) else v)
                                 for v in dataclasses.astuple(r)])
        return path

    def __str__(self) -> str:
        cols = ("layer", "type", "weights_drop", "activations_drop", "recovery", "impact",
                "sqnr_db", "sqnr_isolated_db")
        heads = ("layer", "type", "w drop", "a drop", "recovery", "impact", "SQNR dB",
                 "isolated dB")
        rows = [[_fmt(getattr(r, c)) for c in cols] for r in self.records]
        widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(heads)]
        direction = "higher is better" if self.higher_is_better else "lower is better"
        lines = [f"{self.metric_name} ({direction}, {self.samples} samples): float "
                 f"{_fmt(self.float_metric)}, quantized {_fmt(self.quantized_metric)}",
                 "  ".join(h.ljust(w) if i < 2 else h.rjust(w)
                           for i, (h, w) in enumerate(zip(heads, widths)))]
        lines.append("-" * len(lines[-1]))
        for row in rows:
            lines.append("  ".join(v.ljust(w) if i < 2 else v.rjust(w)
                                   for i, (v, w) in enumerate(zip(row, widths))))
        return "\n".join(lines)
