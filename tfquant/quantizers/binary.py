"""Binary (BinaryConnect / BNN / XNOR-Net) and ternary (TWN) quantizers.

* :class:`BinaryQuantizer` (``learner="binary"``): ``y = alpha * sign(x)`` with ``sign(0) = +1``
  and the hardtanh straight-through gradient ``dy/dx = alpha * 1[|x| <= 1]``. ``alpha`` is
  ``mean|w|`` (per output channel when ``per_axis``, as XNOR-Net) for weights and 1 for
  activations by default.
* :class:`TernaryQuantizer` (``learner="ternary"``): Ternary Weight Networks (Li et al. 2016),
  ``delta = 0.7 * mean|w|``, ``alpha = mean(|w| : |w| > delta)``,
  ``y = alpha * sign(w) * 1[|w| > delta]`` with the identity straight-through gradient.

Both outputs lie on the 2-bit symmetric narrow-range grid ``{-alpha, 0, alpha}`` (scale
``alpha``, zero point 0): the forward ends with a FakeQuant op on that grid (an identity on these
values), :meth:`quant_params` reports it, and binary/ternary *weights* export to TFLite as int8
weights holding -1, 0, 1. Binary *activations* have no integer TFLite kernel (``sign`` stays a
float op), so the TFLite exporter rejects them by name.

Latent weights: with the hardtanh gradient, a latent weight beyond +-1 receives no gradient
(BinaryConnect and BNN clip latent weights to [-1, 1] after every update). tfquant does this
with a Keras constraint, which ``model.fit`` applies after each optimizer step:
:func:`constrain_latent_weights` attaches :class:`LatentWeightClip` to every weight read by a
binary quantizer of a quantized model (it is stored in the layer config, so it survives
``.keras`` round trips); or pass ``kernel_constraint=LatentWeightClip()`` to the float layers.

Example:
    >>> qat = tfquant.quantize_model(model, config=binary_config)
    >>> constrain_latent_weights(qat)
    >>> qat.compile("adam", "sparse_categorical_crossentropy"); qat.fit(x, y)
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import tensorflow as tf

from tfquant.fake_quant import fake_quant
from tfquant.qparams import QuantParams
from tfquant.quantizers.base import MIN_RANGE, replica_mean
from tfquant.quantizers.dorefa import TransformQuantizer
from tfquant.specs import TensorSpec

SCALES = ("auto", "mean", "none")


@tf.custom_gradient
def sign_hardtanh_ste(x: tf.Tensor) -> tf.Tensor:
    """``sign(x)`` with ``sign(0) = +1``; gradient ``1[|x| <= 1]`` (hardtanh STE).

    Example:
        >>> sign_hardtanh_ste(tf.constant([-2.0, 0.0, 0.5])).numpy()
        array([-1.,  1.,  1.], dtype=float32)
    """
    y = tf.where(x >= 0.0, tf.ones_like(x), -tf.ones_like(x))

    def grad(upstream):
        return upstream * tf.cast(tf.abs(x) <= 1.0, upstream.dtype)

    return y, grad


def _identity_ste(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """``y`` forward, the identity gradient to ``x`` (``y`` is exact, unlike ``x + sg(y-x)``)."""
    @tf.custom_gradient
    def _ste(x):
        def grad(upstream):
            return upstream
        return tf.identity(y), grad
    return _ste(x)


class _TwoBitGrid(TransformQuantizer):
    """Shared output grid of binary and ternary quantizers: ``{-alpha, 0, alpha}``."""

    def on_grid(self, y: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
        """The final FakeQuant op on the 2-bit narrow grid of scale ``alpha`` (identity on
        ``{-alpha, 0, alpha}``)."""
        alpha = tf.stop_gradient(alpha)
        return self.fake_quant_grid(y, -alpha, alpha)

    def fake_quant_grid(self, y, lo, hi):
        return fake_quant(y, lo, hi, bits=2, narrow_range=True, axis=self.axis,
                          constant=self.for_weights)

    def alpha(self) -> tf.Tensor:
        raise NotImplementedError

    @property
    def needs_state(self) -> bool:
        """Whether ``alpha`` depends on the quantized tensor (False: a constant 1)."""
        return True

    def current_range(self):
        alpha = self.alpha()
        return -alpha, alpha

    def quant_params(self) -> QuantParams:
        """The 2-bit symmetric narrow-range grid: scale ``alpha``, zero point 0, levels
        -1, 0, 1 (per channel when ``per_axis``)."""
        if self.needs_state:
            self._require_initialized()
        alpha = keras.ops.convert_to_numpy(self.alpha())
        return QuantParams.from_min_max(-alpha, alpha, bits=2, narrow_range=True, signed=True,
                                        axis=self._params_axis())


@keras.saving.register_keras_serializable(package="tfquant")
class BinaryQuantizer(_TwoBitGrid):
    """Binary quantizer: ``y = alpha * sign(x)``, hardtanh straight-through gradient.

    Args:
        spec: the :class:`~tfquant.specs.TensorSpec` (``learner="binary"``; ``bits`` is ignored,
            ``per_axis`` chooses a per-channel ``alpha`` for weights).
        axis: channel axis for per-axis specs.
        scale: ``"auto"`` (weights: ``mean|w|``, XNOR-Net; activations: 1), ``"mean"``
            (always ``mean|x|``) or ``"none"`` (``alpha = 1``, BinaryConnect / BNN).

    ``alpha`` is state: recomputed and stored at every training step, read in inference.
    The gradient is ``upstream * alpha * 1[|x| <= 1]`` (``alpha`` receives no gradient).

    Example:
        >>> q = BinaryQuantizer(TensorSpec(learner="binary"), scale="none")
        >>> q(tf.constant([-0.3, 0.0, 2.0]), training=True).numpy()
        array([-1.,  1.,  1.], dtype=float32)
    """

    def __init__(self, spec: TensorSpec | dict | None = None,
                 axis: int | Sequence[int] | None = None, scale: str = "auto", **kwargs: Any):
        super().__init__(spec, axis=axis, **kwargs)
        if scale not in SCALES:
            raise ValueError(f"BinaryQuantizer scale={scale!r} must be one of {SCALES}.")
        self.scale = scale

    @property
    def scale_mode(self) -> str:
        """The effective scale mode (``"mean"`` or ``"none"``)."""
        if self.scale == "auto":
            return "mean" if self.for_weights else "none"
        return self.scale

    def build_state(self, shape):
        self.alpha_var = self.add_weight(
            name="alpha", shape=shape, trainable=False, aggregation="only_first_replica",
            initializer="ones")

    def observe_state(self, x):
        if self.scale_mode == "none":
            return (tf.ones(self.param_shape),)
        mean_abs = replica_mean(self.assert_finite(self.channel_reduce(tf.abs(x),
                                                                       tf.reduce_mean)))
        return (tf.maximum(mean_abs, MIN_RANGE),)

    def stored_state(self):
        return (self.alpha_var.value,)

    def assign_state(self, state):
        self.alpha_var.assign(state[0])

    def alpha(self):
        return self.alpha_var.value

    def transform(self, x, state):
        alpha = tf.stop_gradient(self.broadcast(state[0], x))
        return self.on_grid(alpha * sign_hardtanh_ste(x), state[0])

    @property
    def needs_state(self) -> bool:
        return self.scale_mode != "none"

    def get_config(self):
        config = super().get_config()
        config["scale"] = self.scale
        return config


@keras.saving.register_keras_serializable(package="tfquant")
class TernaryQuantizer(_TwoBitGrid):
    """Ternary Weight Networks (Li et al. 2016): ``y = alpha * sign(x) * 1[|x| > delta]``.

    ``delta = threshold_factor * mean|x|`` (0.7 in the paper) and
    ``alpha = mean(|x| : |x| > delta)``, per tensor or per output channel (``per_axis``),
    both state (recomputed at each training step, read in inference). The gradient is the
    identity (straight-through estimator).

    Args:
        spec: the :class:`~tfquant.specs.TensorSpec` (``learner="ternary"``; bits ignored).
        axis: channel axis for per-axis specs.
        threshold_factor: ``delta / mean|x|``.

    Example:
        >>> q = TernaryQuantizer(TensorSpec(learner="ternary"))
        >>> q(tf.constant([-1.0, -0.1, 0.2, 1.4]), training=True).numpy()
        array([-1.2,  0. ,  0. ,  1.2], dtype=float32)
    """

    def __init__(self, spec: TensorSpec | dict | None = None,
                 axis: int | Sequence[int] | None = None, threshold_factor: float = 0.7,
                 **kwargs: Any):
        super().__init__(spec, axis=axis, **kwargs)
        if not threshold_factor > 0:
            raise ValueError(f"threshold_factor={threshold_factor!r} must be > 0.")
        self.threshold_factor = float(threshold_factor)

    def build_state(self, shape):
        self.delta = self.add_weight(
            name="delta", shape=shape, trainable=False, aggregation="only_first_replica",
            initializer="zeros")
        self.alpha_var = self.add_weight(
            name="alpha", shape=shape, trainable=False, aggregation="only_first_replica",
            initializer="ones")

    def observe_state(self, x):
        abs_x = tf.abs(x)
        mean_abs = replica_mean(self.assert_finite(self.channel_reduce(abs_x, tf.reduce_mean)))
        delta = self.threshold_factor * mean_abs
        above = tf.cast(abs_x > self.broadcast(delta, x), tf.float32)
        total = replica_mean(self.channel_reduce(abs_x * above, tf.reduce_sum))
        count = replica_mean(self.channel_reduce(above, tf.reduce_sum))
        alpha = tf.where(count > 0, total / tf.maximum(count, 1.0), mean_abs)
        return delta, tf.maximum(alpha, MIN_RANGE)

    def stored_state(self):
        return self.delta.value, self.alpha_var.value

    def assign_state(self, state):
        self.delta.assign(state[0])
        self.alpha_var.assign(state[1])

    def alpha(self):
        return self.alpha_var.value

    def transform(self, x, state):
        delta, alpha = (self.broadcast(s, x) for s in state)
        y = tf.where(tf.abs(x) > delta, tf.where(x > 0, alpha, -alpha), tf.zeros_like(x))
        return _identity_ste(x, self.on_grid(tf.stop_gradient(y), state[1]))

    def get_config(self):
        config = super().get_config()
        config["threshold_factor"] = self.threshold_factor
        return config


# --------------------------------------------------------------- latent weights
@keras.saving.register_keras_serializable(package="tfquant")
class LatentWeightClip(keras.constraints.Constraint):
    """Clips latent (float) weights to ``[-limit, limit]`` after each optimizer step.

    Example:
        >>> keras.layers.Dense(64, kernel_constraint=LatentWeightClip())
    """

    def __init__(self, limit: float = 1.0):
        if not limit > 0:
            raise ValueError(f"limit={limit!r} must be > 0.")
        self.limit = float(limit)

    def __call__(self, w):
        return keras.ops.clip(w, -self.limit, self.limit)

    def get_config(self):
        return {"limit": self.limit}


def constrain_latent_weights(model: keras.Model, limit: float = 1.0,
                             learners: Sequence[str] = ("binary",)) -> list[str]:
    """Attaches :class:`LatentWeightClip` to every weight quantized by one of ``learners``.

    ``model.fit`` then clips those latent weights to ``[-limit, limit]`` after every optimizer
    step (Keras applies variable constraints in ``optimizer.apply``). The constraint is also
    set on the layer attribute (``kernel_constraint``, ...), so it is saved in the layer config.

    Args:
        model: a quantized model (from :func:`tfquant.quantize_model`), built.
        limit: the clipping bound.
        learners: which weight learners to constrain.

    Returns:
        ``"layer/attribute"`` labels of the constrained weights.

    Example:
        >>> constrain_latent_weights(qat)
        ['fc1/kernel', 'fc2/kernel']
    """
    from tfquant.layers.wrapper import QuantizeWrapper

    constraint = LatentWeightClip(limit)
    done = []
    stack = list(model.layers)
    while stack:
        layer = stack.pop(0)
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
            continue
        if not isinstance(layer, QuantizeWrapper):
            continue
        for attr, quantizer in layer.weight_quantizers.items():
            if quantizer.spec.learner not in learners:
                continue
            variable = getattr(layer.layer, attr)
            variable.constraint = constraint
            if hasattr(layer.layer, f"{attr}_constraint"):
                setattr(layer.layer, f"{attr}_constraint", constraint)
            variable.assign(constraint(variable))
            done.append(f"{layer.layer.name}/{attr}")
    return done


__all__ = ["BinaryQuantizer", "TernaryQuantizer", "LatentWeightClip",
           "constrain_latent_weights", "sign_hardtanh_ste"]
