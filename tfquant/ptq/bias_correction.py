"""Bias correction: remove the mean output shift that weight quantization causes.

Quantizing weights (``W~ = W + eps``) shifts a layer's expected output by ``eps E[x]``; at low
bit widths or with per-tensor ranges that shift is systematic and compounds through the network.
Both methods add the shift's negative to each weighted layer's bias (per output channel):

* empirical: ``E[y_float] - E[y_quant]`` measured on calibration data, layer by layer, with
  ``y_float`` the float model's pre-activation output and ``y_quant`` the quantized layer's on
  the quantized model's own (already corrected) inputs;
* analytic (Nagel et al. 2019, Sec. 4.2): ``-eps E[x]`` with ``E[x]`` from the statistics of
  the BatchNormalization before the layer: a BN output is about ``N(beta, gamma^2)`` per
  channel, and ``E[x]`` is the mean of that Gaussian through the (clipped-linear) activation.

Example:
    >>> tfquant.calibrate(qmodel, x_calib)
    >>> report = correct_bias(qmodel, x_calib)            # empirical
    >>> report = correct_bias(qmodel, method="analytic")  # data-free
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from tfquant.export.folding import folded_float_model
from tfquant.layers.registry import activation_name, rule_for
from tfquant.layers.wrapper import QuantizeWrapper
from tfquant.ptq.cle import contract_inputs, layer_kind
from tfquant.ptq.data import input_specs, is_one_shot, iter_batches, pack_inputs
from tfquant.ptq.fold import OutputStatistics
from tfquant.quantizers import Quantizer

METHODS = ("auto", "empirical", "analytic")


@dataclasses.dataclass
class BiasCorrectionReport:
    """What bias correction did.

    Attributes:
        method: ``"empirical"`` or ``"analytic"``.
        corrected: ``layer name -> correction`` added to the (folded) bias.
        skipped: ``layer name -> reason``.
        passes: passes over the data (empirical).
    """

    method: str
    corrected: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    passes: int = 0

    def __str__(self) -> str:
        lines = [f"{self.method} bias correction of {len(self.corrected)} layers"
                 + (f" ({self.passes} data passes)" if self.passes else "")]
        lines += [f"  {name}: max |correction| {float(np.max(np.abs(d))):.4g}"
                  for name, d in self.corrected.items()]
        lines += [f"  {name}: skipped ({why})" for name, why in self.skipped.items()]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- helpers
def _weighted_wrappers(qmodel: keras.Model) -> list[QuantizeWrapper]:
    return [op for op in qmodel.operations if isinstance(op, QuantizeWrapper)
            and op.rule.kind == "weighted" and op.weight_quantizers]


def _bias_problem(wrapper: QuantizeWrapper) -> str | None:
    if len(getattr(wrapper, "_inbound_nodes", [])) != 1:
        return "layer is called more than once"
    if wrapper.batchnorm is None and not getattr(wrapper.layer, "use_bias", False):
        return "layer has no bias to correct"
    if wrapper.batchnorm is not None and not wrapper.batchnorm.center and \
            not getattr(wrapper.layer, "use_bias", False):
        return "layer has no bias and its BN no beta"
    return None


def add_to_bias(wrapper: QuantizeWrapper, delta: np.ndarray) -> None:
    """Adds ``delta`` to the bias the wrapper applies (its folded bias when a BN is folded)."""
    delta = tf.constant(np.asarray(delta, np.float32))
    bn = wrapper.batchnorm
    if bn is None:
        wrapper.layer.bias.assign_add(delta)
    elif bn.center:
        bn.beta.assign_add(delta)
    else:  # folded bias = (b - mean) * g + beta
        wrapper.layer.bias.assign_add(delta / wrapper._fold_factor())


def _channel_axis(layer: keras.layers.Layer) -> int:
    return 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else -1


def _pre_activation(wrapper: QuantizeWrapper, layer: keras.layers.Layer, x: tf.Tensor,
                    weights: dict, quantized: bool) -> tf.Tensor:
    """``layer``'s output before activation, with ``weights`` (fake-quantized if asked)."""
    mid = None
    if quantized:
        weights = {attr: wrapper.weight_quantizers[attr](w, training=False)
                   if attr in wrapper.weight_quantizers else w for attr, w in weights.items()}
        if wrapper.intermediate_quantizer is not None:
            def mid(t):
                return wrapper.intermediate_quantizer(t, training=False)
    return wrapper.rule.forward(layer, x, weights, mid)


def _channel_sums(y: tf.Tensor, axis: int) -> tuple[np.ndarray, int]:
    y = np.asarray(y, np.float64)
    moved = np.moveaxis(y, axis, -1).reshape(-1, y.shape[axis])
    return moved.sum(axis=0), moved.shape[0]


def _channel_means(probe: keras.Model, data, specs, batch_size, steps,
                   output: Callable[[int, tf.Tensor], tuple[tf.Tensor, int]]) -> list[np.ndarray]:
    """Per-channel means over ``data`` of ``output(i, x)`` for each output ``x`` of ``probe``.

    ``output`` returns the tensor to average and its channel axis.
    """
    n = len(probe.outputs)
    sums = [0.0] * n
    counts = [0] * n
    for arrays in iter_batches(data, specs, batch_size, steps):
        inputs = probe(pack_inputs(probe, arrays), training=False)
        inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        for i, x in enumerate(inputs):
            s, c = _channel_sums(*output(i, x))
            sums[i], counts[i] = sums[i] + s, counts[i] + c
    return [total / count for total, count in zip(sums, counts)]


# --------------------------------------------------------------------------- empirical
def _levels(qmodel: keras.Model, targets: list[QuantizeWrapper]) -> list[list[QuantizeWrapper]]:
    """Groups targets so that each group's weighted ancestors are all in earlier groups."""
    target_ids = {id(t) for t in targets}
    level: dict[int, int] = {}
    for depth in sorted(qmodel._nodes_by_depth, reverse=True):  # inputs first
        for node in qmodel._nodes_by_depth[depth]:
            op = node.operation
            value = 0
            for t in node.input_tensors:
                producer = t._keras_history.operation
                value = max(value, level.get(id(producer), 0) + (id(producer) in target_ids))
            level[id(op)] = max(level.get(id(op), 0), value)
    groups: dict[int, list] = {}
    for t in targets:
        groups.setdefault(level[id(t)], []).append(t)
    return [groups[k] for k in sorted(groups)]


def _float_means(reference: keras.Model, targets: list[QuantizeWrapper], data, specs,
                 batch_size, steps) -> dict[int, np.ndarray]:
    layers = [reference.get_layer(t.layer.name) for t in targets]
    probe = keras.Model(reference.inputs, [layer.input for layer in layers])

    def output(i, x):
        t, layer = targets[i], layers[i]
        weights = {attr: tf.convert_to_tensor(getattr(layer, attr)) for attr, _ in t.rule.weights}
        y = _pre_activation(t, layer, x, weights, quantized=False)
        if getattr(layer, "use_bias", False):
            y = t._add_bias(y, tf.convert_to_tensor(layer.bias))
        return y, _channel_axis(layer)

    means = _channel_means(probe, data, specs, batch_size, steps, output)
    return {id(t): m for t, m in zip(targets, means)}


def _quant_means(qmodel: keras.Model, group: list[QuantizeWrapper], data, specs, batch_size,
                 steps) -> dict[int, np.ndarray]:
    probe = keras.Model(qmodel.inputs, [t.input for t in group])

    def output(i, x):
        t = group[i]
        y = _pre_activation(t, t.layer, x, t.folded_weights(), quantized=True)
        return t._add_bias(y, t.folded_bias()), _channel_axis(t.layer)

    means = _channel_means(probe, data, specs, batch_size, steps, output)
    return {id(t): m for t, m in zip(group, means)}


def empirical_bias_correction(qmodel: keras.Model, data: Any, steps: int | None = None,
                              batch_size: int = 32, reference: keras.Model | None = None,
                              sequential: bool = True) -> BiasCorrectionReport:
    """Adds ``E[y_float] - E[y_quant]`` (per output channel) to each weighted layer's bias.

    Args:
        qmodel: a calibrated quantized model (modified in place).
        data: calibration data (see :func:`tfquant.ptq.calibrate`); read ``1 + depth`` times
            with ``sequential`` (depth: weighted layers on the longest path), twice without, so
            it must be re-iterable (an array, a dataset, a list; not a generator).
        steps: batches per pass (None: all).
        batch_size: batch size for arrays.
        reference: the float model whose layer outputs are the target, with the inner layers'
            names (default: ``folded_float_model(qmodel)`` taken before any correction).
        sequential: correct layers in dependency order, each measured on inputs that already
            include the upstream corrections (False: all layers from one pass).

    Returns:
        A :class:`BiasCorrectionReport`.

    Example:
        >>> empirical_bias_correction(qmodel, x_calib, steps=8)
    """
    if is_one_shot(data):
        raise ValueError("empirical bias correction reads the data several times; pass an "
                         "array, a tf.data.Dataset or a list of batches, not a one-shot "
                         "iterator/generator.")
    report = BiasCorrectionReport("empirical")
    targets = []
    for t in _weighted_wrappers(qmodel):
        problem = _bias_problem(t)
        if problem:
            report.skipped[t.layer.name] = problem
        else:
            targets.append(t)
    if not targets:
        return report
    specs = input_specs(qmodel)
    reference = reference or folded_float_model(qmodel)
    float_means = _float_means(reference, targets, data, specs, batch_size, steps)
    report.passes = 1
    for group in (_levels(qmodel, targets) if sequential else [targets]):
        quant_means = _quant_means(qmodel, group, data, specs, batch_size, steps)
        report.passes += 1
        for t in group:
            delta = float_means[id(t)] - quant_means[id(t)]
            add_to_bias(t, delta)
            report.corrected[t.layer.name] = delta.astype(np.float32)
    return report


# ---------------------------------------------------------------------------- analytic
def _normal_pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * (1.0 + erf(np.asarray(z, np.float64) / math.sqrt(2.0)))


def clipped_normal_mean(mean: np.ndarray, std: np.ndarray, low: float = -np.inf,
                        high: float = np.inf) -> np.ndarray:
    """``E[clip(z, low, high)]`` for ``z ~ N(mean, std^2)`` (per channel).

    Example:
        >>> float(clipped_normal_mean(np.array([0.0]), np.array([1.0]), 0.0)[0])  # E[relu(z)]
        0.3989422804014327
    """
    mean = np.asarray(mean, np.float64)
    std = np.maximum(np.asarray(std, np.float64), 1e-12)
    a = (low - mean) / std
    b = (high - mean) / std
    cdf_a, cdf_b = _normal_cdf(a), _normal_cdf(b)
    pdf_a = np.where(np.isfinite(a), _normal_pdf(np.where(np.isfinite(a), a, 0.0)), 0.0)
    pdf_b = np.where(np.isfinite(b), _normal_pdf(np.where(np.isfinite(b), b, 0.0)), 0.0)
    result = mean * (cdf_b - cdf_a) + std * (pdf_a - pdf_b)
    if np.isfinite(low):
        result = result + low * cdf_a
    if np.isfinite(high):
        result = result + high * (1.0 - cdf_b)
    return result


_CLIPS = {"linear": (-np.inf, np.inf), "relu": (0.0, np.inf), "relu6": (0.0, 6.0)}
_MEAN_PRESERVING = (keras.layers.Dropout, keras.layers.SpatialDropout1D,
                    keras.layers.SpatialDropout2D, keras.layers.Identity,
                    keras.layers.AveragePooling1D, keras.layers.AveragePooling2D,
                    keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D)


def _producer(op) -> Any:
    nodes = getattr(op, "_inbound_nodes", [])
    if len(nodes) != 1 or len(nodes[0].input_tensors) != 1:
        return None
    return nodes[0].input_tensors[0]._keras_history.operation


def _input_mean(wrapper: QuantizeWrapper, stats: dict[str, OutputStatistics]
                ) -> tuple[np.ndarray | None, str]:
    """``E[x]`` of the wrapper's input from the statistics of the layer before it."""
    clip = None
    op = _producer(wrapper)
    while op is not None:
        inner = op.layer if isinstance(op, QuantizeWrapper) else op
        if isinstance(op, QuantizeWrapper) and op.rule.kind == "weighted":
            if inner.name not in stats:
                return None, f"no BatchNormalization statistics for {inner.name}"
            act = activation_name(getattr(inner, "activation", None))
            for name in ([act] if act != "linear" else []):
                if clip is not None or name not in _CLIPS:
                    return None, f"activation {name!r} after {inner.name} is not supported"
                clip = _CLIPS[name]
            st = stats[inner.name]
            return clipped_normal_mean(st.mean, st.std, *(clip or _CLIPS["linear"])), ""
        if isinstance(inner, keras.layers.InputLayer):
            return None, "its input is a model input (no statistics)"
        rule = rule_for(inner)
        if isinstance(op, Quantizer) or isinstance(inner, _MEAN_PRESERVING):
            pass
        elif rule is not None and rule.kind == "activation":
            name = activation_name(inner)
            if name != "linear":
                if clip is not None or name not in _CLIPS:
                    return None, f"activation {name!r} ({inner.name}) is not supported"
                clip = _CLIPS[name]
        else:
            return None, f"{inner.name} ({type(inner).__name__}) between layers"
        op = _producer(op)
    return None, "no weighted layer before it"


def analytic_bias_correction(qmodel: keras.Model,
                             statistics: dict[str, OutputStatistics] | None = None
                             ) -> BiasCorrectionReport:
    """Data-free bias correction from BatchNormalization statistics (Nagel et al. 2019).

    For each Conv / Depthwise / Dense wrapper whose input comes from a layer with known output
    statistics (a BN folded in the wrapper, or ``statistics`` from
    :func:`~tfquant.ptq.fold.fold_batchnorm`) through ReLU / ReLU6 / identity and
    mean-preserving layers, adds ``-(Q(W) - W) E[x]`` to the bias (borders of padded
    convolutions are treated like the interior).

    Args:
        qmodel: a quantized model with weight ranges set (modified in place).
        statistics: extra ``layer name -> OutputStatistics`` (names of the inner layers).

    Returns:
        A :class:`BiasCorrectionReport`; layers without usable statistics are skipped.

    Example:
        >>> analytic_bias_correction(qmodel)
    """
    report = BiasCorrectionReport("analytic")
    stats = dict(statistics or {})
    for op in qmodel.operations:
        if isinstance(op, QuantizeWrapper) and op.batchnorm is not None and \
                op.layer.name not in stats:
            bn = op.batchnorm
            channels = bn.moving_mean.shape[0]
            stats[op.layer.name] = OutputStatistics(
                bn.name, np.asarray(bn.beta, np.float64) if bn.center else np.zeros(channels),
                np.abs(np.asarray(bn.gamma, np.float64)) if bn.scale else np.ones(channels))
    for t in _weighted_wrappers(qmodel):
        kind = layer_kind(t.layer)
        problem = _bias_problem(t) or (None if kind is not None and len(t.rule.weights) == 1
                                       else "only Conv, Depthwise and Dense are supported")
        mean = None
        if problem is None:
            mean, problem = _input_mean(t, stats)
        if mean is None:
            report.skipped[t.layer.name] = problem
            continue
        attr = t.rule.weights[0][0]
        weight = t.folded_weights()[attr]
        error = np.asarray(t.weight_quantizers[attr](weight, training=False), np.float64) - \
            np.asarray(weight, np.float64)
        if error.shape[-2] != mean.shape[0]:
            report.skipped[t.layer.name] = "input channels do not match the statistics"
            continue
        delta = -contract_inputs(kind, error, mean)
        add_to_bias(t, delta)
        report.corrected[t.layer.name] = delta.astype(np.float32)
    return report


def correct_bias(qmodel: keras.Model, data: Any = None, method: str = "auto",
                 statistics: dict[str, OutputStatistics] | None = None,
                 **options: Any) -> BiasCorrectionReport:
    """Empirical bias correction when ``data`` is given, analytic otherwise (``method="auto"``).

    Args:
        qmodel: a calibrated quantized model (modified in place).
        data: calibration data, or None.
        method: ``"auto"``, ``"empirical"`` or ``"analytic"``.
        statistics: BN output statistics for the analytic method.
        **options: options of :func:`empirical_bias_correction` (steps, batch_size, ...).

    Example:
        >>> correct_bias(qmodel, x_calib)
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    if method == "auto":
        method = "analytic" if data is None else "empirical"
    if method == "empirical":
        if data is None:
            raise ValueError("empirical bias correction needs calibration data")
        return empirical_bias_correction(qmodel, data, **options)
    if options:
        raise ValueError(f"analytic bias correction takes no options {sorted(options)}")
    return analytic_bias_correction(qmodel, statistics)
