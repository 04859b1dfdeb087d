"""AdaRound: learned rounding of weights (Nagel et al. 2020, "Up or Down? Adaptive Rounding for
Post-Training Quantization").

Nearest rounding minimises each weight's own error, not the error of the layer's output. For
every weighted layer (Conv, DepthwiseConv, Dense, ... wrapped in a
:class:`~tfquant.layers.wrapper.QuantizeWrapper` with one weight quantizer), AdaRound learns
whether each weight rounds up or down by minimising, over calibration data,

.. math::

    \\| f_a(W x) - f_a(\\tilde W \\hat x) \\|^2_F
    + \\lambda \\sum_{ij} 1 - |2 h(V_{ij}) - 1|^\\beta,
    \\qquad \\tilde W = s \\cdot \\mathrm{clip}(\\lfloor W / s \\rfloor + h(V), n, p)

with the rectified sigmoid ``h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)``
(``zeta = 1.1``, ``gamma = -0.1``), ``V`` initialised so that ``h(V)`` equals the fractional part
of ``W / s``, the regulariser switched on after a warm start and its ``beta`` annealed
linearly from 20 to 2. ``x`` is the float input of the layer (float model, original weights),
``x^`` its input in the quantized model with the layers before it already rounded by AdaRound
(the paper's asymmetric reconstruction), ``f_a`` the ReLU/ReLU6 fused into the layer when
there is one (the paper's "after activation" variant), identity otherwise. The weight
quantizer's scale ``s`` (per channel or per tensor) is kept fixed.

At the end, weights are set to ``s * (floor(W / s) + [h(V) >= 0.5])``, which are points of the
quantizer's grid, so the layer's fake quantization (and the TFLite export) reproduces them
exactly; the range of the weight quantizer is set explicitly to the range that was used, so
inference and export reproduce the learned rounding. The quantizers' configuration is left as
it was: fine-tuning the returned model with QAT trains its weights and ranges as usual (the
learned rounding is the starting point). With ``freeze_weight_ranges=True`` the weight ranges
are frozen instead (``freeze_step=0``, saved with the model), so later training keeps the grid
the rounding was learned on. If on the calibration
data the learned rounding reconstructs the layer worse than nearest rounding (this happens only
with very few iterations), nearest rounding is kept and the report says so.

The pieces live next to this driver: the rounding variable and the per-layer problem in
:mod:`tfquant.ptq.adaround_rounding`, the layer selection and layer inputs in
:mod:`tfquant.ptq.adaround_graph`, the per-layer optimisation loop in
:mod:`tfquant.ptq.adaround_optimizer`; their public names are re-exported here.

Example:
    >>> qmodel = tfquant.quantize_model(model)
    >>> tfquant.ptq.calibrate(qmodel, x_calib)
    >>> adaround(qmodel, x_calib, iterations=2000)
    >>> qmodel.adaround_report["conv1"]["loss_adaround"]
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfquant._retracing import quiet_retracing
from tfquant.fake_quant import _broadcast_param
from tfquant.layers.wrapper import QuantizeWrapper
from tfquant.ptq.adaround_graph import RECONSTRUCT_AFTER  # noqa: F401 - re-exported
from tfquant.ptq.adaround_graph import (_split, _take_batches, adaroundable_layers,
                                        collect_layer_data, fused_activation, layer_consumers)
from tfquant.ptq.adaround_optimizer import _Optimizer
from tfquant.ptq.adaround_rounding import (GAMMA, ZETA, AdaRoundLayer, init_alpha,
                                           reconstruction_loss, rectified_sigmoid,
                                           round_regularizer)
from tfquant.quantizers.minmax import MinMaxQuantizer

__all__ = ["adaround", "AdaRoundLayer", "rectified_sigmoid", "init_alpha", "round_regularizer",
           "adaroundable_layers", "collect_layer_data", "reconstruction_loss", "fused_activation",
           "layer_consumers", "ZETA", "GAMMA"]


def adaround(qmodel: keras.Model, data: Any, iterations: int = 10000,
             reg_weight: float = 0.01, beta_range: tuple[float, float] = (20, 2),
             warm_start: float = 0.2, batch_size: int = 32, num_batches: int | None = 32,
             layers: Sequence[str] | None = None, verbose: int = 1,
             learning_rate: float = 1e-3, after_activation: bool = True,
             keep_better: bool = True, seed: int = 0,
             freeze_weight_ranges: bool = False) -> keras.Model:
    """Learns the rounding of every weighted layer's weights (in place).

    The model must already be calibrated (activation ranges set): the layer inputs are taken
    from the quantized model.

    Args:
        qmodel: a quantized model from :func:`tfquant.quantize_model`, calibrated.
        data: calibration inputs: an array, a ``tf.data.Dataset`` or an iterable of batches
            (``(x, y)`` elements use ``x``).
        iterations: optimisation steps per layer (the paper: 10k-20k; with a few hundred,
            raise ``learning_rate`` to about 1e-2).
        reg_weight: weight ``lambda`` of the rounding regulariser.
        beta_range: ``(start, end)`` of the annealed ``beta``.
        warm_start: fraction of ``iterations`` with the regulariser off.
        batch_size: samples per optimisation step.
        num_batches: batches of ``data`` used (arrays are cut into ``batch_size`` samples,
            datasets keep their batching; None: all of ``data``). The inputs and targets of
            one layer for all these samples are held in memory.
        layers: names (of the float layers, or of the wrappers) to optimise; None: every
            supported layer.
        verbose: 0 silent, 1 a progress bar per layer, 2 one line per layer.
        learning_rate: Adam learning rate for ``V`` (1e-3 suits the default 10k iterations).
        after_activation: reconstruct after a fused ReLU/ReLU6 (else before the activation).
        keep_better: keep nearest rounding for a layer whose learned rounding reconstructs the
            calibration data worse (only happens with very few iterations).
        seed: seed of the mini-batch sampling.
        freeze_weight_ranges: freeze the optimised layers' weight ranges (``freeze_step=0``
            in their specs, saved with the model), so later training (QAT fine-tuning) keeps
            the grid the rounding was learned on. By default the specs are left as configured:
            inference and export reproduce the learned rounding either way, and QAT after
            AdaRound then trains weights and ranges as usual.

    Returns:
        ``qmodel`` (modified in place), with ``qmodel.adaround_report``: per layer name the
        reconstruction losses of nearest and learned rounding on the calibration data, the
        fraction of weights rounded differently from nearest rounding, which rounding was
        kept, and the time taken.

    Raises:
        ValueError: ``layers`` names a layer that is not in the model or cannot be optimised,
            invalid hyper-parameters, or empty / malformed data (checked before any weight
            changes).

    Example:
        >>> qmodel = tfquant.quantize_model(model, config="tflite_int8")
        >>> tfquant.ptq.calibrate(qmodel, x_calib, verbose=0)
        >>> adaround(qmodel, x_calib, iterations=1000, learning_rate=1e-2, verbose=0)
        >>> qmodel.adaround_report["conv1"]["kept"]
        'adaround'
    """
    if iterations < 1:
        raise ValueError(f"iterations={iterations!r} must be >= 1")
    if not 0.0 <= warm_start < 1.0:
        raise ValueError(f"warm_start={warm_start!r} must be in [0, 1)")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be >= 1")
    if len(beta_range) != 2 or min(beta_range) <= 0:
        raise ValueError(f"beta_range={beta_range!r} must be two positive numbers")
    candidates = adaroundable_layers(qmodel)
    if layers is not None:
        wanted = list(layers)
        by_name = {}
        for w in candidates:
            by_name[w.name] = w
            by_name[w.layer.name] = w
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise ValueError(f"AdaRound cannot optimise layer(s) {missing}: not weighted "
                             "quantized layers of this model; candidates: "
                             f"{[w.layer.name for w in candidates]}")
        chosen = {id(by_name[n]) for n in wanted}
        candidates = [w for w in candidates if id(w) in chosen]

    batches = _split(_take_batches(qmodel, data, batch_size, num_batches), 256)
    consumers = layer_consumers(qmodel)
    originals: dict[int, np.ndarray] = {}   # raw (unfolded) weights before AdaRound
    report: dict[str, dict[str, Any]] = {}

    for index, wrapper in enumerate(candidates):
        t0 = time.perf_counter()
        activation = fused_activation(wrapper, consumers) if after_activation else None
        layer = AdaRoundLayer.from_wrapper(wrapper, activation)
        saved_range = None
        if isinstance(layer.quantizer, MinMaxQuantizer):
            saved_range = (layer.quantizer.min.numpy(), layer.quantizer.max.numpy())

        x_hat = collect_layer_data(qmodel, wrapper, batches, quantized=True)
        x_float = _float_input(qmodel, wrapper, batches, candidates[:index], originals)
        target = _float_targets(layer, x_float)
        del x_float

        progbar = None
        if verbose == 1:
            print(f"AdaRound {index + 1}/{len(candidates)}: {layer.name} "
                  f"({layer.weight.size} weights)")
            progbar = keras.utils.Progbar(iterations, verbose=1, unit_name="step")
        opt = _Optimizer(layer, iterations, reg_weight, beta_range, warm_start, batch_size,
                         learning_rate, seed + index)
        # Every layer has its own compiled step (its own variables and shapes), which TF
        # counts as retracing.
        with quiet_retracing():
            opt.run(x_hat, target, progbar)

        nearest = np.asarray(layer.nearest_weight())
        learned = np.asarray(layer.grid_weight(opt.hard_rounding()), np.float32)
        loss_nearest = reconstruction_loss(layer, x_hat, target, nearest)
        loss_learned = reconstruction_loss(layer, x_hat, target, learned)
        kept = "adaround"
        final = learned
        if keep_better and loss_learned > loss_nearest:
            kept, final = "nearest", nearest
        originals[id(wrapper)] = np.asarray(getattr(wrapper.layer, layer.attr))
        _write_weight(layer, final)
        _pin_range(layer, saved_range, freeze_weight_ranges)
        check = np.asarray(layer.quantizer(wrapper.folded_weights()[layer.attr],
                                           training=False))
        if not np.allclose(check, final, rtol=0, atol=1e-6 * float(np.max(layer.scale))):
            raise RuntimeError(f"AdaRound: layer {layer.name!r}: the written weights do not "
                               "reproduce the rounded grid (internal error)")
        flipped = float(np.mean(np.abs(learned - nearest) > 0.5 * layer.scale))
        report[layer.name] = {
            "loss_nearest": loss_nearest, "loss_adaround": loss_learned, "kept": kept,
            "flipped_fraction": flipped, "weights": int(layer.weight.size),
            "after_activation": activation is not None, "seconds": time.perf_counter() - t0,
        }
        if verbose == 2 or (verbose == 1 and progbar is not None):
            print(f"  {layer.name}: reconstruction {loss_nearest:.4g} (nearest) -> "
                  f"{loss_learned:.4g} (adaround), {100 * flipped:.1f}% flipped, kept {kept}")
    qmodel.adaround_report = report
    return qmodel


def _float_input(qmodel: keras.Model, wrapper: QuantizeWrapper, batches: Sequence[Any],
                 done: Sequence[QuantizeWrapper], originals: dict[int, np.ndarray]
                 ) -> np.ndarray:
    """The layer's input in the float model with the original weights of layers already
    rounded (swapped in for the pass, then swapped back)."""
    swapped = []
    try:
        for w in done:
            if id(w) in originals:
                (attr, _), = w.weight_quantizers.items()
                variable = getattr(w.layer, attr)
                swapped.append((variable, np.asarray(variable)))
                variable.assign(originals[id(w)])
        return collect_layer_data(qmodel, wrapper, batches, quantized=False)
    finally:
        for variable, value in swapped:
            variable.assign(value)


def _float_targets(layer: AdaRoundLayer, x_float: np.ndarray, batch_size: int = 256
                   ) -> np.ndarray:
    w = tf.constant(layer.weight)
    return np.concatenate([np.asarray(layer.output(tf.constant(x_float[i:i + batch_size]), w))
                           for i in range(0, len(x_float), batch_size)], axis=0)


def _write_weight(layer: AdaRoundLayer, grid_weight: np.ndarray) -> None:
    """Stores ``grid_weight`` (the BN-folded weight) in the wrapped layer."""
    wrapper = layer.wrapper
    variable = getattr(wrapper.layer, layer.attr)
    value = grid_weight
    if wrapper.batchnorm is not None:
        attr, axis = wrapper.rule.weights[-1]
        if attr == layer.attr:
            factor = np.asarray(_broadcast_param(wrapper._fold_factor(), tf.constant(  # noqa
                grid_weight), axis))
            original = np.asarray(variable)
            safe = np.where(factor == 0, 1.0, factor)
            value = np.where(np.broadcast_to(factor == 0, grid_weight.shape), original,
                             grid_weight / safe)
    variable.assign(value.astype(np.float32))


def _pin_range(layer: "AdaRoundLayer", saved: tuple[np.ndarray, np.ndarray] | None,
               freeze: bool = False) -> None:
    """Sets the weight quantizer's range back to ``saved``; with ``freeze``, also stops later
    training from moving it: ``freeze_step=0`` in the quantizer's spec and in the wrapper's
    weight spec (which the saved model's config holds)."""
    quantizer, wrapper = layer.quantizer, layer.wrapper
    if isinstance(quantizer, MinMaxQuantizer) and saved is not None:
        quantizer.set_range(*saved)
        if freeze and quantizer.spec.learner != "fixed":
            quantizer.spec = quantizer.spec.replace(freeze_step=0)
            if wrapper.spec.weights is not None:
                wrapper.spec = dataclasses.replace(
                    wrapper.spec, weights=wrapper.spec.weights.replace(freeze_step=0))
