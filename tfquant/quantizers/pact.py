"""PACT: a learned clipping level for activations (Choi et al. 2018)."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfquant.quantizers.base import MIN_RANGE, Quantizer


@keras.saving.register_keras_serializable(package="tfquant")
class PACTQuantizer(Quantizer):
    """``y = quantize(clip(x, 0, alpha))`` with a trainable ``alpha`` (L2-regularised with the
    spec's ``regularization`` weight).

    The forward is TF's FakeQuant op with ``min = 0, max = alpha``; its built-in gradient is
    PACT's: ``dy/dx = 1`` for ``0 <= x <= alpha``, ``dy/dalpha = 1`` for ``x > alpha``.

    Example:
        >>> q = PACTQuantizer(TensorSpec(bits=4, learner="pact", init_min=0.0, init_max=6.0))
        >>> y = q(tf.random.normal([2, 16]), training=True)
    """

    def build_range(self, shape):
        regularizer = (keras.regularizers.L2(self.spec.regularization)
                       if self.spec.regularization > 0 else None)
        self.alpha = self.add_weight(
            name="alpha", shape=shape, trainable=True, regularizer=regularizer,
            initializer=keras.initializers.Constant(self.spec.init_max))

    def current_range(self):
        alpha = tf.maximum(self.alpha.value, MIN_RANGE)
        return tf.zeros_like(alpha), alpha

    def set_range(self, x_min, x_max) -> None:
        """Sets the clipping level ``alpha = x_max`` (PACT's range starts at 0; PTQ calibration).
        """
        alpha = tf.maximum(tf.cast(x_max, tf.float32), MIN_RANGE)
        self.alpha.assign(tf.broadcast_to(alpha, self.alpha.shape))

    def quantize_training(self, x, step):
        alpha = self.alpha.value
        frozen = self.frozen(step)
        if frozen is not False:
            alpha = tf.where(frozen, tf.stop_gradient(alpha), alpha)
        alpha = tf.maximum(alpha, MIN_RANGE)
        return self.fake_quant(x, tf.zeros_like(alpha), alpha)
