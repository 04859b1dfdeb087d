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

Example:
    >>> qmodel = tfquant.quantize_model(model)
    >>> tfquant.ptq.calibrate(qmodel, x_calib)
    >>> adaround(qmodel, x_calib, iterations=2000)
    >>> qmodel.adaround_report["conv1"]["loss_adaround"]
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfquant.fake_quant import _broadcast_param
from tfquant.layers.registry import activation_name
from tfquant.layers.wrapper import QuantizeWrapper
from tfquant.ptq.data import input_specs, iter_batches, pack_inputs
from tfquant.quantizers import Quantizer
from tfquant.quantizers.minmax import MinMaxQuantizer

ZETA = 1.1
GAMMA = -0.1
#: Activations a reconstruction may be taken after (they are fused into the layer by TFLite).
RECONSTRUCT_AFTER = ("relu", "relu6")

__all__ = ["adaround", "AdaRoundLayer", "rectified_sigmoid", "init_alpha", "round_regularizer",
           "adaroundable_layers", "collect_layer_data", "reconstruction_loss", "fused_activation",
           "layer_consumers", "ZETA", "GAMMA"]


# ----------------------------------------------------------------------------------- math
def rectified_sigmoid(v: tf.Tensor) -> tf.Tensor:
    """``h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``.

    Example:
        >>> float(rectified_sigmoid(tf.constant(0.0)))
        0.5
    """
    return tf.clip_by_value(tf.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def init_alpha(fraction: Any) -> np.ndarray:
    """The ``V`` for which ``h(V)`` equals ``fraction`` (values in [0, 1)).

    Example:
        >>> v = init_alpha(np.array([0.25], np.float32))
        >>> np.allclose(rectified_sigmoid(tf.constant(v)).numpy(), 0.25)
        True
    """
    fraction = np.asarray(fraction, np.float64)
    p = (fraction - GAMMA) / (ZETA - GAMMA)  # in [1/12, 11/12]: finite logit
    return np.log(p / (1.0 - p)).astype(np.float32)


def round_regularizer(h: tf.Tensor, beta: tf.Tensor | float) -> tf.Tensor:
    """``sum(1 - |2 h - 1| ** beta)``: 0 when every ``h`` is 0 or 1.

    Example:
        >>> float(round_regularizer(tf.constant([0.0, 1.0, 0.5]), 2.0))
        1.0
    """
    return tf.reduce_sum(1.0 - tf.pow(tf.abs(2.0 * h - 1.0), beta))


def _squared_error(y: tf.Tensor, target: tf.Tensor, channel_axis: int = -1) -> tf.Tensor:
    """Sum of squared differences over the channel axis, mean over everything else."""
    return tf.reduce_mean(tf.reduce_sum(tf.square(y - target), axis=channel_axis))


# ------------------------------------------------------------------------- model plumbing
def _all_quantizers(model: keras.Model) -> list[Quantizer]:
    found = []
    for layer in model.layers:
        if isinstance(layer, Quantizer):
            found.append(layer)
        elif isinstance(layer, QuantizeWrapper):
            found.extend(layer.quantizers.values())
    return found


def layer_consumers(model: keras.Model) -> dict[int, list[Any]]:
    """``id(layer) -> [layers reading its output]`` in a Functional model."""
    result: dict[int, list[Any]] = {}
    for nodes in model._nodes_by_depth.values():  # noqa: SLF001 - Functional graph walk
        for node in nodes:
            if node.operation is None or node.is_input:
                continue
            for t in node.input_tensors:
                result.setdefault(id(t._keras_history.operation), []).append(node.operation)
    return result


def fused_activation(wrapper: QuantizeWrapper, consumers: dict | None = None
                     ) -> Callable | None:
    """The ReLU/ReLU6 applied to ``wrapper``'s output before it is quantized, if any: its own
    activation, or a ReLU layer that TFLite fuses into it (after a folded BN's stand-in).

    Args:
        wrapper: a weighted layer's wrapper.
        consumers: :func:`layer_consumers` of its model (None: follow the layers' outbound
            nodes, right when the wrapper belongs to a single model).

    Example:
        >>> fused_activation(qmodel.get_layer("quant_conv1"), layer_consumers(qmodel))
        <ReLU name=relu1, built=True>
    """
    def following(op) -> list[Any]:
        if consumers is not None:
            return consumers.get(id(op), [])
        return [node.operation for node in getattr(op, "_outbound_nodes", [])]

    own = activation_name(getattr(wrapper.layer, "activation", None))
    if own in RECONSTRUCT_AFTER:
        return wrapper.layer.activation
    if own != "linear" or wrapper.quantize_output:
        return None
    op = wrapper
    while True:
        after = following(op)
        if len(after) != 1:
            return None
        op = after[0]
        if isinstance(op, keras.layers.Identity):  # stands in for a folded BatchNormalization
            continue
        break
    if (isinstance(op, QuantizeWrapper) and op.rule.kind == "activation"
            and activation_name(op.layer) in RECONSTRUCT_AFTER):
        return op.layer
    return None


def adaroundable_layers(qmodel: keras.Model) -> list[QuantizeWrapper]:
    """The wrappers AdaRound can optimise, in topological order: weighted layers with exactly
    one enabled weight quantizer, called once in the model.

    Example:
        >>> [w.layer.name for w in adaroundable_layers(qmodel)]
        ['conv1', 'conv2', 'predictions']
    """
    found = []
    for op in qmodel.operations:
        if not isinstance(op, QuantizeWrapper) or op.rule.kind != "weighted":
            continue
        if len(op.weight_quantizers) != 1 or len(op._inbound_nodes) != 1:  # noqa: SLF001
            continue
        if not next(iter(op.weight_quantizers.values())).enabled:
            continue
        found.append(op)
    return found


def _input_tensor(wrapper: QuantizeWrapper):
    tensors = wrapper._inbound_nodes[0].input_tensors  # noqa: SLF001
    if len(tensors) != 1:
        raise ValueError(f"layer {wrapper.layer.name!r} has {len(tensors)} inputs; AdaRound "
                         "handles single-input layers")
    return tensors[0]


def _take_batches(qmodel: keras.Model, data: Any, batch_size: int,
                  num_batches: int | None) -> list[Any]:
    """Up to ``num_batches`` checked batches of ``data`` (the rules of
    :func:`tfquant.ptq.data.iter_batches`), packed the way ``qmodel`` is called."""
    batches = []
    try:
        for arrays in iter_batches(data, input_specs(qmodel), batch_size, num_batches):
            batches.append(pack_inputs(qmodel, [a.astype(np.float32, copy=False)
                                                if a.dtype.kind == "f" else a
                                                for a in arrays]))
    except ValueError as err:
        raise ValueError(f"AdaRound: {err}") from err
    return batches


def _split(batches: list[Any], size: int) -> list[Any]:
    """Re-batches ``batches`` into chunks of at most ``size`` samples (for memory)."""
    out = []
    for x in batches:
        n = int(keras.tree.flatten(x)[0].shape[0])
        for start in range(0, n, size):
            out.append(keras.tree.map_structure(lambda t: t[start:start + size], x))
    return out


class _QuietRetracing(logging.Filter):
    """Drops TensorFlow's "triggered tf.function retracing" warning: every layer has its own
    compiled step (its own variables and shapes), which TF counts as retracing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def _quiet_retracing():
    logger = tf.get_logger()
    quiet = _QuietRetracing()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


class _Toggle:
    """Context manager: every quantizer of a model disabled (float model) inside."""

    def __init__(self, model: keras.Model):
        self.quantizers = _all_quantizers(model)

    def __enter__(self):
        self.saved = [q.enabled for q in self.quantizers]
        for q in self.quantizers:
            q.enabled = False
        return self

    def __exit__(self, *exc):
        for q, flag in zip(self.quantizers, self.saved):
            q.enabled = flag
        return False


def collect_layer_data(qmodel: keras.Model, wrapper: QuantizeWrapper, batches: Sequence[Any],
                       quantized: bool = True) -> np.ndarray:
    """The input of ``wrapper`` in ``qmodel`` for every sample of ``batches``.

    Args:
        qmodel: the quantized model.
        wrapper: one of its :class:`QuantizeWrapper` layers.
        batches: model-input batches.
        quantized: True: the input as the quantized model computes it (every quantizer as it
            is now); False: with every quantizer disabled (the float model, current weights).

    Returns:
        The concatenated inputs, float32 numpy.

    Example:
        >>> x_hat = collect_layer_data(qmodel, qmodel.get_layer("quant_conv2"), [x])
    """
    tensor = _input_tensor(wrapper)
    inputs = qmodel.inputs[0] if len(qmodel.inputs) == 1 else qmodel.inputs
    sub = keras.Model(inputs, tensor)
    outs = []

    def run():
        # Eager calls: quantizers read their ``enabled`` flag when called, and a fresh
        # tf.function per layer would retrace (and warn) for every layer.
        for x in batches:
            outs.append(np.asarray(sub(x, training=False)))

    if quantized:
        run()
    else:
        with _Toggle(qmodel):
            run()
    return np.concatenate(outs, axis=0)


@dataclasses.dataclass
class AdaRoundLayer:
    """Everything AdaRound needs about one layer (float weights, grid, forward function).

    Attributes:
        wrapper: the layer's QuantizeWrapper.
        attr: name of the quantized weight (``"kernel"``).
        quantizer: its weight quantizer.
        weight: the float (BN-folded) weight the quantizer sees, numpy.
        scale: the quantizer's scale broadcast against ``weight``.
        low: lowest grid integer (``qmin - zero_point``) broadcast against ``weight``.
        high: highest grid integer (``qmax - zero_point``) broadcast against ``weight``.
        activation: the ReLU/ReLU6 the reconstruction is taken after (None: before).
    """

    wrapper: QuantizeWrapper
    attr: str
    quantizer: Quantizer
    weight: np.ndarray
    scale: np.ndarray
    low: np.ndarray
    high: np.ndarray
    activation: Callable | None

    @classmethod
    def from_wrapper(cls, wrapper: QuantizeWrapper, activation: Callable | None
                     ) -> "AdaRoundLayer":
        (attr, quantizer), = wrapper.weight_quantizers.items()
        weight = wrapper.folded_weights()[attr]
        params = quantizer.quant_params()
        axis = quantizer.axis

        def shaped(v):
            v = tf.constant(np.asarray(v, np.float32))
            return np.asarray(_broadcast_param(v, weight, axis) if params.per_axis else v)

        return cls(wrapper, attr, quantizer, np.asarray(weight, np.float32),
                   shaped(params.scale), shaped(params.qmin - params.zero_point),
                   shaped(params.qmax - params.zero_point), activation)

    @property
    def name(self) -> str:
        return self.wrapper.layer.name

    @property
    def floor(self) -> np.ndarray:
        """``floor(W / s)``."""
        return np.floor(self.weight / self.scale).astype(np.float32)

    def grid_weight(self, rounding: Any) -> tf.Tensor:
        """``s * clip(floor(W / s) + rounding, low, high)``: soft or hard rounding."""
        return self.scale * tf.clip_by_value(self.floor + rounding, self.low, self.high)

    def nearest_weight(self) -> tf.Tensor:
        """The weight as the quantizer rounds it now (nearest rounding)."""
        return self.quantizer(tf.constant(self.weight), training=False)

    def output(self, x: tf.Tensor, weight: tf.Tensor, after_activation: bool = True
               ) -> tf.Tensor:
        """The layer's output (before the output quantizer) from ``x`` and ``weight``."""
        wrapper = self.wrapper
        weights = wrapper.folded_weights()
        weights[self.attr] = weight
        y = wrapper.rule.forward(wrapper.layer, x, weights, None)
        y = wrapper._add_bias(y, wrapper.folded_bias())  # noqa: SLF001
        if after_activation and self.activation is not None:
            y = self.activation(y)
        return y

    def channel_axis(self) -> int:
        return 1 if getattr(self.wrapper.layer, "data_format", "") == "channels_first" else -1


def reconstruction_loss(layer: AdaRoundLayer, x: np.ndarray, target: np.ndarray,
                        weight: Any, batch_size: int = 256) -> float:
    """Mean over samples (and positions) of the squared output error summed over channels.

    Args:
        layer: the :class:`AdaRoundLayer`.
        x: inputs of the layer (typically from the quantized model).
        target: the float layer's outputs for the matching float inputs.
        weight: the (grid) weight to evaluate.
        batch_size: evaluation batch size.

    Example:
        >>> reconstruction_loss(layer, x_hat, y_float, layer.nearest_weight())
    """
    total, count = 0.0, 0
    weight = tf.convert_to_tensor(weight)
    for start in range(0, len(x), batch_size):
        y = layer.output(tf.constant(x[start:start + batch_size]), weight)
        err = _squared_error(y, tf.constant(target[start:start + batch_size]),
                             layer.channel_axis())
        n = min(batch_size, len(x) - start)
        total += float(err) * n
        count += n
    return total / max(count, 1)


def _float_targets(layer: AdaRoundLayer, x_float: np.ndarray, batch_size: int = 256
                   ) -> np.ndarray:
    w = tf.constant(layer.weight)
    return np.concatenate([np.asarray(layer.output(tf.constant(x_float[i:i + batch_size]), w))
                           for i in range(0, len(x_float), batch_size)], axis=0)


# --------------------------------------------------------------------------- optimisation
class _Optimizer:
    """The AdaRound optimisation of one layer: ``V``, Adam and a compiled chunk of steps."""

    def __init__(self, layer: AdaRoundLayer, iterations: int, reg_weight: float,
                 beta_range: tuple[float, float], warm_start: float, batch_size: int,
                 learning_rate: float, seed: int):
        self.layer = layer
        self.iterations = int(iterations)
        self.warm_iters = int(round(warm_start * self.iterations))
        self.reg_weight = float(reg_weight)
        self.beta_start, self.beta_end = (float(b) for b in beta_range)
        self.batch_size = int(batch_size)
        fraction = layer.weight / layer.scale - layer.floor
        self.v = tf.Variable(init_alpha(np.clip(fraction, 0.0, 1.0)), name="adaround_v")
        self.optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
        self.optimizer.build([self.v])
        self.rng = tf.random.Generator.from_seed(seed)
        self.chunk = tf.function(self._chunk, jit_compile=False, reduce_retracing=True)

    def beta(self, it):
        rel = (tf.cast(it, tf.float32) - self.warm_iters) / max(
            self.iterations - self.warm_iters, 1)
        return self.beta_end + (self.beta_start - self.beta_end) * tf.maximum(0.0, 1.0 - rel)

    def _chunk(self, x_all, y_all, start, steps):
        n = tf.shape(x_all)[0]
        rec_sum = tf.constant(0.0)
        reg_sum = tf.constant(0.0)
        layer = self.layer
        for i in tf.range(steps):
            it = start + i
            idx = self.rng.uniform([self.batch_size], 0, n, dtype=tf.int32)
            x = tf.gather(x_all, idx)
            target = tf.gather(y_all, idx)
            beta = self.beta(it)
            use_reg = tf.cast(it >= self.warm_iters, tf.float32)
            with tf.GradientTape() as tape:
                h = rectified_sigmoid(self.v)
                y = layer.output(x, layer.grid_weight(h))
                rec = _squared_error(y, target, layer.channel_axis())
                reg = use_reg * self.reg_weight * round_regularizer(h, beta)
                loss = rec + reg
            grad = tape.gradient(loss, self.v)
            self.optimizer.apply_gradients([(grad, self.v)])
            rec_sum += rec
            reg_sum += reg
        steps_f = tf.cast(tf.maximum(steps, 1), tf.float32)
        return rec_sum / steps_f, reg_sum / steps_f

    def run(self, x_hat: np.ndarray, target: np.ndarray, progbar: keras.utils.Progbar | None,
            chunk_steps: int = 100) -> None:
        x_all, y_all = tf.constant(x_hat), tf.constant(target)
        done = 0
        while done < self.iterations:
            steps = min(chunk_steps, self.iterations - done)
            rec, reg = self.chunk(x_all, y_all, tf.constant(done), tf.constant(steps))
            done += steps
            if progbar is not None:
                progbar.update(done, [("rec_loss", float(rec)), ("round_loss", float(reg))])

    def hard_rounding(self) -> np.ndarray:
        """``[h(V) >= 0.5]`` (``V >= 0``) as 0/1 floats."""
        return (rectified_sigmoid(self.v).numpy() >= 0.5).astype(np.float32)


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


# ----------------------------------------------------------------------------- public API
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
        with _quiet_retracing():
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
