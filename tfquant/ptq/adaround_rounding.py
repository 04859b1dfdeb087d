"""AdaRound's rounding variable and the per-layer rounding problem.

The rectified sigmoid ``h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)`` decides, per
weight, whether ``W / s`` rounds down (``h = 0``) or up (``h = 1``); its regulariser pushes
every ``h`` to 0 or 1. :class:`AdaRoundLayer` holds one layer's float weight, its quantizer's
grid and its forward function, and :func:`reconstruction_loss` scores a rounding of it. The
optimisation loop is :mod:`tfquant.ptq.adaround_optimizer`, the model-level driver
:func:`tfquant.ptq.adaround.adaround`.

Example:
    >>> layer = AdaRoundLayer.from_wrapper(qmodel.get_layer("quant_conv1"), activation=None)
    >>> h = rectified_sigmoid(tf.constant(init_alpha(layer.weight / layer.scale - layer.floor)))
    >>> reconstruction_loss(layer, x_hat, y_float, layer.grid_weight(h))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from tfquant.fake_quant import _broadcast_param
from tfquant.layers.wrapper import QuantizeWrapper
from tfquant.quantizers import Quantizer

ZETA = 1.1
GAMMA = -0.1

__all__ = ["rectified_sigmoid", "init_alpha", "round_regularizer", "AdaRoundLayer",
           "reconstruction_loss", "ZETA", "GAMMA"]


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
