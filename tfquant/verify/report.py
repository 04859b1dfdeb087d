"""``VerificationReport``: what :func:`tfquant.verify` measured, printable and JSON-ready.

Three comparisons, all against the TFLite interpreter with its reference kernels ("ref"):

* simulator vs ref: the integer simulator must be bit-exact (``bit_exact_fraction == 1.0``);
* Keras fake-quant vs ref: differences in output steps (LSB), ideally at most 1;
* XNNPACK vs ref: reported only (XNNPACK requantises in float and may differ by 1 LSB).

Example:
    >>> report = tfquant.verify(qat, "m.tflite", x_test)        # doctest: +SKIP
    >>> print(report)                                          # doctest: +SKIP
    >>> json.dumps(report.to_dict())                           # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

#: Fraction of outputs that must be within 1 LSB (Keras vs TFLite) for ``within_tolerance``
#: when no per-layer table was taken.
MIN_WITHIN_1LSB = 0.999
#: Fraction of a layer's outputs it must reproduce exactly when fed the reference kernels' own
#: inputs (``keras_local_exact_fraction``) for ``within_tolerance``. What is left below 1.0 is
#: TFLite's integer rounding (int32 bias, double-rounding requantisation) at near-ties.
MIN_LOCAL_EXACT = 0.99
#: TFLite ops that round where the Keras layer does not, or twice where it rounds once, with
#: the largest local difference (in LSB) that leaves the layer faithful; for these ops
#: ``within_tolerance`` asks that the layer, fed the reference kernels' inputs, stays within
#: that bound on every output instead of being exact on :data:`MIN_LOCAL_EXACT` of them.
#:
#: * MEAN folds ``1/N`` into its multiplier, which leaves a right shift of only a few bits, so
#:   its ``MultiplyByQuantizedMultiplier`` first rounds to ``2^-r`` of a step and then to a
#:   step: one step off the once-rounded mean wherever the roundings disagree (often ~10 % of a
#:   global average pool's outputs).
#: * AVERAGE_POOL_2D rounds the average to its input's grid; the Keras pooling layer shares that
#:   grid without a quantizer of its own (another would make TFLite requantize), so it keeps the
#:   exact average, at most half a step away.
#: * LEAKY_RELU scales negative inputs with a multiplier of about alpha (0.1: a right shift of
#:   3 bits), so those round twice as in MEAN, and exact half steps round away from zero where
#:   TF's FakeQuant rounds half up: one step lower on a few percent of the negative outputs.
#: * REQUANTIZE (an int8 -> int8 QUANTIZE the converter inserts where a tensor read by several
#:   ops must also sit on a concatenation's grid) rounds twice too: with a multiplier of
#:   about 0.46 (a right shift of one bit), 13 % of the values of a test model landed one step
#:   above the exactly rounded value. A CONCATENATION of such values gets the same bound.
ROUNDING_TOLERANCE_LSB = {"MEAN": 1.0, "AVERAGE_POOL_2D": 0.5, "LEAKY_RELU": 1.0,
                          "REQUANTIZE": 1.0}
#: int16 activations (int16x8 mode): the 16-bit kernels requantize with the same fixed-point
#: double rounding, which leaves ~5 % of a convolution's outputs one 16-bit step (1/65536 of
#: the range) from the once-rounded value; such a layer is faithful within one step everywhere.
INT16_TOLERANCE_LSB = 1.0


@dataclasses.dataclass
class LayerComparison:
    """One TFLite op output compared across executions.

    Attributes:
        position: the op's position in the TFLite model.
        op: the TFLite op type.
        tensor: the TFLite tensor name.
        layer: the Keras layer whose output this tensor is (None: an internal tensor, e.g.
            the pre-activation of a Dense with softmax, or a tensor not named after a layer).
        scale: the tensor's scale (the size of 1 LSB), None for float tensors.
        zero_point: the tensor's zero point.
        bit_exact_fraction: fraction of elements where the simulator equals the reference
            kernels (None when the simulator did not run).
        keras_exact_fraction: Keras fake-quant vs reference kernels, fraction of elements on
            the same integer (None without a Keras counterpart).
        keras_local_exact_fraction: the same when the Keras layer is fed the reference
            kernels' values of its inputs (:mod:`tfquant.verify.local`): the differences this
            layer makes itself, not those carried in from earlier layers.
        max_abs_diff_lsb: Keras fake-quant vs reference kernels, max |difference| in LSB.
        within_1lsb_fraction: fraction of elements within 1 LSB (Keras vs reference).
        keras_local_max_diff_lsb: the largest difference, in LSB, of the Keras layer fed the
            reference kernels' inputs (None without a local run).
        computed_by: for a reshape of another op's output (a 1-D pooling runs as EXPAND_DIMS,
            the 2-D op, then a RESHAPE), that op; None when ``op`` computed the values.
        bits: the tensor's integer width (16 in int16x8 mode).
    """

    position: int
    op: str
    tensor: str
    layer: str | None
    scale: float | None
    zero_point: int | None
    bit_exact_fraction: float | None
    keras_exact_fraction: float | None
    keras_local_exact_fraction: float | None
    max_abs_diff_lsb: float | None
    within_1lsb_fraction: float | None
    keras_local_max_diff_lsb: float | None = None
    computed_by: str | None = None
    bits: int = 8

    def locally_faithful(self) -> bool | None:
        """Whether the Keras layer reproduces this op, fed the op's own inputs: exact on
        :data:`MIN_LOCAL_EXACT` of the outputs, or, for the ops of
        :data:`ROUNDING_TOLERANCE_LSB`, within their bound on all of them (None without a
        local run)."""
        if self.keras_local_exact_fraction is None:
            return None
        if self.keras_local_exact_fraction >= MIN_LOCAL_EXACT:
            return True
        bound = ROUNDING_TOLERANCE_LSB.get(self.computed_by or self.op)
        if self.bits == 16:
            bound = max(bound or 0.0, INT16_TOLERANCE_LSB)
        return (bound is not None and self.keras_local_max_diff_lsb is not None
                and self.keras_local_max_diff_lsb <= bound + 1e-3)


def lsb_diff(a: np.ndarray, b: np.ndarray, scale: float | None) -> np.ndarray:
    """``|a - b|`` in steps of ``scale`` (float64; raw difference when scale is None).

    Within 0.01 of a whole number of steps the result is that number: float32 values on a
    16-bit grid carry rounding of ~1e-3 steps (``1.001`` is one step).
    """
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    if not scale:
        return diff
    steps = diff / float(scale)
    whole = np.round(steps)
    return np.where(np.abs(steps - whole) < 0.01, whole, steps)


def within_1lsb(diff_lsb: np.ndarray) -> float:
    """Fraction of differences of at most 1 LSB (with float slack for dequantized values)."""
    return float(np.mean(diff_lsb <= 1.0 + 1e-3)) if diff_lsb.size else 1.0


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


@dataclasses.dataclass
class VerificationReport:
    """The result of :func:`tfquant.verify` (all comparisons against TFLite's reference kernels).

    Attributes:
        samples: number of inputs compared.
        bit_exact_fraction: integer simulator vs reference kernels, fraction of model output
            elements that are identical (None when the simulator cannot run the model; see
            ``simulator_error``).
        simulator_all_tensors_exact: every intermediate tensor identical too.
        max_abs_diff_lsb: Keras fake-quant model vs reference kernels, max |difference| of the
            outputs in output steps (LSB).
        mean_abs_diff_lsb: the same, averaged.
        within_1lsb_fraction: fraction of output elements within 1 LSB (Keras vs reference).
        diff_histogram: {difference in LSB (rounded): number of output elements}.
        argmax_agreement: fraction of samples whose output argmax agrees (Keras vs reference).
        xnnpack_bit_exact_fraction: default TFLite path (XNNPACK) vs reference kernels
            (None when not run).
        xnnpack_max_abs_diff_lsb: the same, max |difference| in LSB.
        per_layer: one :class:`LayerComparison` per TFLite op output, in execution order.
        simulator_error: why the simulator could not run the model, else None.
        io_types: the ``.tflite`` input and output dtypes.

    Example:
        >>> report.bit_exact_fraction, report.within_1lsb_fraction     # doctest: +SKIP
        (1.0, 0.9994)
        >>> report.first_disagreeing_layer                            # doctest: +SKIP
        'conv3'
    """

    samples: int
    bit_exact_fraction: float | None
    simulator_all_tensors_exact: bool | None
    max_abs_diff_lsb: float
    mean_abs_diff_lsb: float
    within_1lsb_fraction: float
    diff_histogram: dict[int, int]
    argmax_agreement: float | None
    xnnpack_bit_exact_fraction: float | None
    xnnpack_max_abs_diff_lsb: float | None
    per_layer: list[LayerComparison]
    simulator_error: str | None = None
    io_types: tuple[str, str] = ("float32", "float32")

    # ------------------------------------------------------------------ summaries
    def first_disagreement(self, pair: str = "simulator") -> LayerComparison | None:
        """The first op output (execution order) where two executions disagree.

        Args:
            pair: ``"simulator"`` (simulator vs reference kernels: any element differs) or
                ``"keras"`` (Keras fake-quant vs reference: some element is 1 LSB or more off).
        """
        if pair not in ("simulator", "keras"):
            raise ValueError(f"pair must be 'simulator' or 'keras', got {pair!r}")
        for row in self.per_layer:
            if pair == "simulator" and row.bit_exact_fraction is not None \
                    and row.bit_exact_fraction < 1.0:
                return row
            if pair == "keras" and row.max_abs_diff_lsb is not None \
                    and row.max_abs_diff_lsb >= 0.5:
                return row
        return None

    @property
    def first_disagreeing_layer(self) -> str | None:
        """Name of the first layer where two executions disagree: the simulator vs the reference
        kernels if they differ anywhere, else Keras fake-quant vs the reference kernels."""
        row = self.first_disagreement("simulator") or self.first_disagreement("keras")
        if row is None:
            return None
        return row.layer or row.tensor

    @property
    def within_tolerance(self) -> bool:
        """The export computes what the Keras model computes, up to TFLite's own rounding.

        True when the simulator is bit-exact with the reference kernels (when it runs) and
        either every layer, fed the reference kernels' values of its inputs, reproduces at least
        :data:`MIN_LOCAL_EXACT` of its outputs exactly (within a bound everywhere for the ops
        of :data:`ROUNDING_TOLERANCE_LSB`; see :meth:`LayerComparison.locally_faithful`) with a
        per-layer table, or, without one, at least :data:`MIN_WITHIN_1LSB` of the model outputs
        are within 1 LSB. End-to-end
        differences are judged layer by layer because single-step rounding differences grow
        through a deep network and softmax amplifies a 1-LSB logit difference to several
        output LSB: they say nothing about whether one layer was exported wrongly.
        """
        exact = self.bit_exact_fraction is None or self.bit_exact_fraction == 1.0
        local = [row.locally_faithful() for row in self.per_layer
                 if row.keras_local_exact_fraction is not None]
        if local:
            return bool(exact and all(local))
        return bool(exact and self.within_1lsb_fraction >= MIN_WITHIN_1LSB)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every figure and the per-layer table."""
        out = dataclasses.asdict(self)
        out["diff_histogram"] = {str(k): v for k, v in self.diff_histogram.items()}
        out["io_types"] = list(self.io_types)
        out["first_disagreeing_layer"] = self.first_disagreeing_layer
        for pair in ("simulator", "keras"):
            row = self.first_disagreement(pair)
            out[f"first_disagreement_{pair}"] = None if row is None else dataclasses.asdict(row)
        out["within_tolerance"] = self.within_tolerance
        return out

    def __str__(self) -> str:
        lines = [f"tfquant.verify on {self.samples} samples (TFLite io "
                 f"{self.io_types[0]} -> {self.io_types[1]}; 'ref' = reference kernels)"]
        if self.bit_exact_fraction is None:
            lines.append(f"  simulator vs ref:  not run ({self.simulator_error})")
        else:
            lines.append(f"  simulator vs ref:  {100 * self.bit_exact_fraction:.2f} % of outputs "
                         f"bit-exact (all tensors exact: {self.simulator_all_tensors_exact})")
        hist = ", ".join(f"{k} LSB: {v}" for k, v in sorted(self.diff_histogram.items()))
        lines.append(f"  Keras vs ref:      {100 * self.within_1lsb_fraction:.3f} % of outputs "
                     f"within 1 LSB, max {self.max_abs_diff_lsb:.3g} LSB ({hist})")
        if self.argmax_agreement is not None:
            lines.append(f"                     argmax agreement "
                         f"{100 * self.argmax_agreement:.2f} %")
        if self.xnnpack_bit_exact_fraction is not None:
            lines.append(f"  XNNPACK vs ref:    {100 * self.xnnpack_bit_exact_fraction:.2f} % "
                         f"bit-exact, max {self.xnnpack_max_abs_diff_lsb:.3g} LSB (reported "
                         "only)")
        first = {p: self.first_disagreement(p) for p in ("simulator", "keras")}
        for pair, row in first.items():
            where = "none" if row is None else f"{row.layer or row.tensor} (op {row.position} " \
                                               f"{row.op})"
            lines.append(f"  first disagreement ({pair} vs ref): {where}")
        lines.append("")
        header = f"{'#':>3} {'op':<16} {'layer':<30} {'sim exact':>9} {'keras exact':>11} " \
                 f"{'(local)':>8} {'max LSB':>7} {'<=1 LSB':>8}  tensor"
        lines.append(header)
        lines.append("-" * len(header))
        for row in self.per_layer:
            tensor = row.tensor.split(";")[0]
            tensor = tensor if len(tensor) <= 40 else "..." + tensor[-37:]
            lines.append(f"{row.position:>3} {row.op[:16]:<16} {(row.layer or '-')[:30]:<30} "
                         f"{_fmt(row.bit_exact_fraction):>9} "
                         f"{_fmt(row.keras_exact_fraction):>11} "
                         f"{_fmt(row.keras_local_exact_fraction):>8} "
                         f"{_fmt(row.max_abs_diff_lsb, '.3g'):>7} "
                         f"{_fmt(row.within_1lsb_fraction):>8}  {tensor}")
        return "\n".join(lines)
