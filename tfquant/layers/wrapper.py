"""``QuantizeWrapper``: a Keras ``Wrapper`` that fake-quantizes a layer's weights and output.

For weighted layers the wrapper recomputes the layer from quantized weights (the registry's
forward function), optionally with a BatchNormalization folded in:

* inference (and after ``bn_freeze_step``): ``y = conv(x, Q(W * g)) + (b - mean) * g + beta``
  with ``g = gamma / sqrt(moving_var + eps)``: exactly what TFLite runs;
* training: the same quantized weights ``Q(W * g)``, rescaled back by ``1/g`` (on the weight,
  which is cheaper than on the output and equal by linearity), then the BN layer in training
  mode, so batch statistics normalise the output and the moving statistics are updated
  (single-convolution folding, as in Krishnamoorthi 2018, Sec. 3.2).

A folded BN must normalise the layer's last (channel) axis: the wrapper refuses a
``data_format="channels_first"`` layer or a BN over another axis (the annotator folds neither).

Activations that TFLite fuses (ReLU, ReLU6) are applied before the output quantizer; any other
activation gets a quantizer before it too, since TFLite runs it as a separate int8 op.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras import ops

from tfquant.fake_quant import _broadcast_param
from tfquant.layers.registry import (FIXED_OUTPUT_RANGES, FUSABLE_ACTIVATIONS, activation_name,
                                     normalizes_last_axis, rule_for)
from tfquant.quantizers import Quantizer, make_quantizer
from tfquant.quantizers.minmax import MinMaxQuantizer
from tfquant.specs import LayerSpec, TensorSpec


#: TFLite's int16 LOGISTIC, TANH and SOFTMAX write scale 1/32768, zero point 0.
FIXED_OUTPUT_RANGE_INT16 = (-1.0, 32767.0 / 32768.0)


def output_spec(spec: TensorSpec, activation: str) -> TensorSpec:
    """The activation spec, replaced by TFLite's fixed range after sigmoid/softmax/tanh (the
    int8 ranges of ``FIXED_OUTPUT_RANGES``; ``[-1, 32767/32768]`` for int16)."""
    if activation in FIXED_OUTPUT_RANGES and spec.bits in (8, 16):
        lo, hi = FIXED_OUTPUT_RANGES[activation] if spec.bits == 8 else FIXED_OUTPUT_RANGE_INT16
        return spec.replace(learner="fixed", symmetric=False, per_axis=False, init_min=lo,
                            init_max=hi, quant_start_step=0)
    return spec


def _fusable_batchnorm(bn: keras.layers.Layer, x: tf.Tensor) -> bool:
    """Whether :func:`_fused_batchnorm_training` computes exactly what ``bn(x, training=True)``
    does: a trainable, plain (no renorm, not synchronized) float32 BN over the last axis."""
    rank = x.shape.rank
    return (bn.trainable and not getattr(bn, "renorm", False)
            and not getattr(bn, "synchronized", False) and rank is not None and rank >= 2
            and normalizes_last_axis(bn, rank) and x.shape[-1] is not None
            and x.dtype == tf.float32 and bn.compute_dtype == "float32"
            and bn.epsilon > 1.001e-5)  # the fused op raises smaller epsilons to 1.001e-5


def _fused_batchnorm_training(bn: keras.layers.Layer, x: tf.Tensor) -> tf.Tensor:
    """Keras' ``BatchNormalization(training=True)`` as TF's fused kernel (one op forward, one
    backward instead of ~20 element-wise and reduction ops; tf_keras uses it too).

    Same normalisation (biased batch variance) and the same moving-statistics update as
    Keras (``moving * momentum + batch * (1 - momentum)``, biased variance); values equal up
    to float rounding. The fused op reports the Bessel-corrected variance, undone here.
    """
    channels = int(x.shape[-1])
    x4 = x if x.shape.rank == 4 else tf.reshape(x, [-1, 1, 1, channels])
    gamma = tf.convert_to_tensor(bn.gamma) if bn.scale else tf.ones([channels])
    beta = tf.convert_to_tensor(bn.beta) if bn.center else tf.zeros([channels])
    y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        x4, gamma, beta, epsilon=bn.epsilon, data_format="NHWC", is_training=True)
    count = tf.cast(tf.size(x4) // channels, tf.float32)
    variance = variance * (tf.maximum(count - 1.0, 1.0) / count)
    momentum = bn.momentum
    bn.moving_mean.assign(bn.moving_mean * momentum + mean * (1.0 - momentum))
    bn.moving_variance.assign(bn.moving_variance * momentum + variance * (1.0 - momentum))
    return y if x.shape.rank == 4 else tf.reshape(y, tf.shape(x))


def _flatten_leading_axes(x: tf.Tensor):
    """``x`` as ``[-1, channels]`` and the function that restores the leading axes.

    A Dense layer on a sequence (``[batch, steps, channels]``) then quantizes, biases and
    activates a plain matrix product, which converts to one int8 FULLY_CONNECTED between two
    RESHAPEs; Keras' tensordot form leaves its fake-quantized MatMul in float.
    """
    x = tf.convert_to_tensor(x)
    static = x.shape[:-1]
    inner = static[1:]
    # a constant target shape where only the batch is unknown (no SHAPE ops in the TFLite model)
    leading = [-1, *inner.as_list()] if inner.is_fully_defined() else tf.shape(x)[:-1]

    def restore(y):
        if isinstance(leading, list):
            out = tf.reshape(y, leading + [y.shape[-1]])
        else:
            out = tf.reshape(y, tf.concat([leading, tf.shape(y)[-1:]], axis=0))
        out.set_shape(static.concatenate(y.shape[-1:]))
        return out

    return tf.reshape(x, [-1, x.shape[-1]]), restore


@keras.saving.register_keras_serializable(package="tfquant")
class QuantizeWrapper(keras.layers.Wrapper):
    """Quantizes a layer: its weights (weighted layers) and its output.

    Args:
        layer: the float layer (already holding its weights).
        spec: the :class:`~tfquant.specs.LayerSpec` (or its dict form).
        quantize_output: False when a following fused activation quantizes instead.
        batchnorm: a BatchNormalization layer folded into this layer (weighted layers only).

    Example:
        >>> w = QuantizeWrapper(keras.layers.Dense(4), LayerSpec())
        >>> y = w(tf.ones([2, 3]))
    """

    def __init__(self, layer: keras.layers.Layer, spec: LayerSpec | dict | None = None,
                 quantize_output: bool = True, batchnorm: keras.layers.Layer | None = None,
                 **kwargs: Any):
        kwargs.setdefault("name", f"quant_{layer.name}")
        # fake quantization computes in float32, whatever the global mixed-precision policy
        kwargs.setdefault("dtype", "float32")
        super().__init__(layer, **kwargs)
        self.spec = spec if isinstance(spec, LayerSpec) else LayerSpec.from_dict(spec or {})
        self.quantize_output = bool(quantize_output)
        self.batchnorm = batchnorm
        self.rule = rule_for(layer)
        if self.rule is None:
            raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has no quantization "
                             "rule; register it with tfquant.register_layer.")
        self.activation = (activation_name(getattr(layer, "activation", None))
                           if self.rule.kind == "weighted" else activation_name(layer))
        if batchnorm is not None and not self.rule.foldable:
            raise ValueError(f"layer {layer.name!r}: BatchNormalization cannot be folded into "
                             f"{type(layer).__name__}.")
        if batchnorm is not None and getattr(layer, "data_format", None) == "channels_first":
            # the folding broadcasts the BN factors and the bias over the last axis (as the
            # annotator, which folds channels-last layers only, guarantees)
            raise ValueError(f"layer {layer.name!r}: BatchNormalization {batchnorm.name!r} "
                             "cannot be folded into a data_format='channels_first' "
                             f"{type(layer).__name__}; only channels-last layers fold a BN.")

        self.weight_quantizers: dict[str, Quantizer] = {}
        if self.rule.kind == "weighted" and self.spec.weights is not None:
            for attr, axis in self.rule.weights:
                quantizer = self._make(self.spec.weights, axis, f"{attr}_quantizer")
                quantizer.for_weights = True
                self.weight_quantizers[attr] = quantizer
        acts = self.spec.activations
        self.intermediate_quantizer = None
        self.pre_activation_quantizer = None
        self.output_quantizer = None
        if acts is not None:
            if self.rule.kind == "weighted" and len(self.rule.weights) > 1:
                self.intermediate_quantizer = self._make(acts, None, "intermediate_quantizer")
            if self.rule.kind == "weighted" and (self.activation not in FUSABLE_ACTIVATIONS or (
                    self.activation != "linear" and not self.rule.fuses_activation)):
                self.pre_activation_quantizer = self._make(acts, None, "pre_activation_quantizer")
            if self.quantize_output:
                self.output_quantizer = self._make(output_spec(acts, self.activation), None,
                                                   "output_quantizer")

    def _make(self, spec: TensorSpec, axis, name: str) -> Quantizer:
        if spec.per_axis and axis is None:
            raise ValueError(f"layer {self.layer.name!r}: per_axis=True was requested for its "
                             f"{name.replace('_quantizer', '')} tensor, which has no channel "
                             "axis; use per_axis=False there.")
        return make_quantizer(spec, axis=axis, name=name)

    # ------------------------------------------------------------------ build
    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        out_shape = self.compute_output_shape(input_shape)
        if self.batchnorm is not None:
            self._check_batchnorm_axis(out_shape)
            if not self.batchnorm.built:
                self.batchnorm.build(out_shape)
        for attr, quantizer in self.weight_quantizers.items():
            quantizer.build(tuple(getattr(self.layer, attr).shape))
        for quantizer in (self.intermediate_quantizer, self.pre_activation_quantizer,
                          self.output_quantizer):
            if quantizer is not None:
                quantizer.build(out_shape)
        self.built = True
        self.initialize_weight_ranges()

    def _check_batchnorm_axis(self, out_shape) -> None:
        """Raises unless the folded BN normalises the last axis of the layer's output."""
        bn, rank = self.batchnorm, len(out_shape)
        if not normalizes_last_axis(bn, rank):
            raise ValueError(f"layer {self.layer.name!r}: BatchNormalization {bn.name!r} "
                             f"(axis={bn.axis}) cannot be folded into it; a folded BN must "
                             f"normalise the output's last axis (channels), of rank {rank}.")

    def initialize_weight_ranges(self) -> None:
        """Sets observed weight ranges from the current (folded) weights, so the wrapper
        quantizes sensibly before any training step."""
        weights = self.folded_weights()
        for attr, quantizer in self.weight_quantizers.items():
            if isinstance(quantizer, MinMaxQuantizer) and quantizer.spec.learner != "fixed":
                quantizer.set_range(*quantizer.batch_min_max(weights[attr]))

    # --------------------------------------------------------------- weights
    def _fold_factor(self, bn_training: bool = False):
        """``gamma / sqrt(moving_var + eps)`` of the folded BN (per output channel)."""
        bn = self.batchnorm
        gamma = bn.gamma if bn.scale else tf.ones_like(bn.moving_variance)
        return gamma * tf.math.rsqrt(bn.moving_variance + bn.epsilon)

    def folded_weights(self, factor: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        """The weights the quantizers see: BN-folded into the last weight when folding.

        ``factor``: the fold factor if the caller already computed it (one computation, and one
        gradient, per training step).
        """
        weights = {attr: tf.convert_to_tensor(getattr(self.layer, attr))
                   for attr, _ in self.rule.weights}
        if self.batchnorm is not None:
            attr, axis = self.rule.weights[-1]
            factor = self._fold_factor() if factor is None else factor
            weights[attr] = weights[attr] * _broadcast_param(factor, weights[attr], axis)
        return weights

    def folded_bias(self) -> tf.Tensor | None:
        """The bias TFLite will see: ``(b - mean) * g + beta`` when folding, else the bias."""
        bias = self.layer.bias if getattr(self.layer, "use_bias", False) else None
        if self.batchnorm is None:
            return None if bias is None else tf.convert_to_tensor(bias)
        bn = self.batchnorm
        bias = tf.zeros_like(bn.moving_mean) if bias is None else bias
        beta = bn.beta if bn.center else tf.zeros_like(bn.moving_mean)
        return (bias - bn.moving_mean) * self._fold_factor() + beta

    def _add_bias(self, y, bias):
        if bias is None:
            return y
        if getattr(self.layer, "data_format", "channels_last") == "channels_first":
            shape = [1, -1] + [1] * (len(y.shape) - 2)
            return y + ops.reshape(bias, shape)
        return y + bias

    # ------------------------------------------------------------------- call
    def _step_quantizer(self) -> Quantizer:
        """The quantizer whose counter gives this wrapper's training step (its first)."""
        for quantizer in self.quantizers.values():
            return quantizer
        raise ValueError(f"layer {self.layer.name!r}: bn_freeze_step needs at least one "
                         "quantizer to count training steps.")

    def _weighted_call(self, x, training):
        bn_step = None
        if training and self.batchnorm is not None and self.spec.bn_freeze_step is not None:
            # read before the quantizers count this step (0-based, like freeze_step)
            bn_step = self._step_quantizer().training_step()
        factor = None if self.batchnorm is None else self._fold_factor()
        weights = self.folded_weights(factor)
        if self.rule.weight_view is not None:
            weights = self.rule.weight_view(self.layer, weights)
        for attr, quantizer in self.weight_quantizers.items():
            weights[attr] = quantizer(weights[attr], training=training)
        mid = None
        if self.intermediate_quantizer is not None:
            def mid(t):
                return self.intermediate_quantizer(t, training=training)
        if training and self.batchnorm is not None and bn_step is None:
            # Batch statistics: the layer output must be unfolded (divided by g) before the BN.
            # The output is linear in the last weight's output channels, so dividing the
            # quantized weight by g gives the same values (up to float rounding) and the same
            # gradients at the cost of a weight-sized op instead of two activation-sized ones
            # (the division and its gradient w.r.t. g: ~15% of a small CNN's QAT step).
            attr, axis = self.rule.weights[-1]
            weights[attr] = weights[attr] / _broadcast_param(self._safe_fold_factor(factor),
                                                            weights[attr], axis)
            return self._batchnorm_batch_stats(self.rule.forward(self.layer, x, weights, mid))
        y = self.rule.forward(self.layer, x, weights, mid)
        if self.batchnorm is None:
            return self._add_bias(y, self.folded_bias())
        if not training:
            return self._add_bias(y, self.folded_bias())
        return self._batchnorm_training(y, bn_step)

    def _safe_fold_factor(self, factor=None):
        """The fold factor with (near-)zero entries replaced by 1e-12, safe to divide by."""
        factor = self._fold_factor() if factor is None else factor
        return tf.where(tf.abs(factor) < 1e-12, tf.ones_like(factor) * 1e-12, factor)

    def _batchnorm_batch_stats(self, unfolded):
        """The BN in training mode on the unfolded output (plus the layer's own bias)."""
        if getattr(self.layer, "use_bias", False):
            unfolded = unfolded + self.layer.bias
        if _fusable_batchnorm(self.batchnorm, unfolded):
            return _fused_batchnorm_training(self.batchnorm, unfolded)
        return self.batchnorm(unfolded, training=True)

    def _batchnorm_training(self, y, bn_step=None):
        """Training with ``bn_freeze_step``: batch statistics before it, the folded (moving
        statistics) form after; ``y`` is the output of the folded quantized weights."""
        safe = self._safe_fold_factor()

        def batch_stats():
            return self._batchnorm_batch_stats(y / safe)

        freeze = self.spec.bn_freeze_step
        if freeze is None or bn_step is None:
            return batch_stats()
        return tf.cond(bn_step < freeze, batch_stats,
                       lambda: self._add_bias(y, self.folded_bias()))

    def call(self, inputs, training=None, mask=None):
        # a layer applied N times in the model: its quantizers run N times per training step
        calls = max(len(getattr(self, "_inbound_nodes", ())), 1)
        for quantizer in self.quantizers.values():
            quantizer.calls_per_step = calls
        restore = None
        if self.rule.kind == "weighted":
            if self.rule.matrix_input and len(inputs.shape) > 2:
                inputs, restore = _flatten_leading_axes(inputs)
            y = self._weighted_call(inputs, training)
            if self.pre_activation_quantizer is not None:
                y = self.pre_activation_quantizer(y, training=training)
            activation = getattr(self.layer, "activation", None)
            if activation is not None:
                y = activation(y)
        elif self.rule.forward is not None:
            y = self.rule.forward(self.layer, inputs, {}, None)
        else:
            y = self.layer(inputs, training=training)
        if self.output_quantizer is not None:
            y = self.output_quantizer(y, training=training)
        return y if restore is None else restore(y)

    def compute_output_shape(self, input_shape):
        try:
            return self.layer.compute_output_shape(input_shape)
        except NotImplementedError:
            # user layers (register_layer) often rely on Keras' symbolic shape inference
            spec = keras.tree.map_shape_structure(keras.KerasTensor, input_shape)
            out = self.layer.compute_output_spec(spec)
            return keras.tree.map_structure(lambda t: t.shape, out)

    # --------------------------------------------------------- introspection
    @property
    def quantizers(self) -> dict[str, Quantizer]:
        """Every quantizer of this wrapper by role."""
        found = {f"weights/{k}": q for k, q in self.weight_quantizers.items()}
        for role in ("intermediate", "pre_activation", "output"):
            q = getattr(self, f"{role}_quantizer")
            if q is not None:
                found[role] = q
        return found

    # -------------------------------------------------------- serialization
    def get_config(self):
        config = super().get_config()
        config.update({
            "spec": self.spec.to_dict(),
            "quantize_output": self.quantize_output,
            "batchnorm": None if self.batchnorm is None else
            keras.saving.serialize_keras_object(self.batchnorm),
        })
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(config.pop("layer"),
                                                      custom_objects=custom_objects)
        bn = config.pop("batchnorm", None)
        if bn is not None:
            bn = keras.saving.deserialize_keras_object(bn, custom_objects=custom_objects)
        return cls(layer, batchnorm=bn, **config)
