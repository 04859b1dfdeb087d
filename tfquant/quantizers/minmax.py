"""Observed ranges: last-value min/max, EMA min/max (TFLite's QAT recipe) and fixed ranges."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfquant.quantizers.base import Quantizer


@keras.saving.register_keras_serializable(package="tfquant")
class MinMaxQuantizer(Quantizer):
    """Range from batch statistics: ``learner="minmax"`` keeps the last batch's min/max,
    ``"ema"`` an exponential moving average of them, ``"fixed"`` never changes
    (``init_min``/``init_max``, e.g. the [0, 255/256] range TFLite enforces on sigmoid outputs).

    The stored ``min``/``max`` variables are the raw statistics; :meth:`current_range` turns
    them into a valid range (0 inside, symmetric when asked). Under ``tf.distribute`` the batch
    statistics are reduced across replicas first, so every replica stores the same range.

    Example:
        >>> q = MinMaxQuantizer(TensorSpec(bits=8, learner="ema"))
        >>> y = q(tf.random.normal([4, 8]), training=True)
    """

    def build_range(self, shape):
        self.min = self.add_weight(
            name="min", shape=shape, trainable=False, aggregation="only_first_replica",
            initializer=keras.initializers.Constant(self.spec.init_min))
        self.max = self.add_weight(
            name="max", shape=shape, trainable=False, aggregation="only_first_replica",
            initializer=keras.initializers.Constant(self.spec.init_max))

    def current_range(self):
        return self.finalize_range(self.min.value, self.max.value)

    def quantize_training(self, x, step):
        if self.spec.learner == "fixed":
            return self.fake_quant(x, *self.current_range())
        # Observed ranges are statistics, not parameters (as in TF's and tfmot's QAT, where
        # the range reaches the FakeQuant op through a variable assignment): no gradient flows
        # from the range back into x through reduce_min/reduce_max. Same forward values; saves
        # ~12 ops per quantizer in every backward pass.
        b_min, b_max = (tf.stop_gradient(t) for t in self.batch_min_max(x))
        old_min, old_max = self.min.value, self.max.value  # one read each per step
        if self.spec.learner == "ema":
            decay = self.spec.ema_decay
            # The first step seeds the average from the batch, unless a range was set before
            # training (PTQ calibration, set_range): QAT then continues from the calibrated range.
            first = tf.logical_and(tf.equal(step, 0), self._at_initial_range(old_min, old_max))
            new_min = tf.where(first, b_min, decay * old_min + (1.0 - decay) * b_min)
            new_max = tf.where(first, b_max, decay * old_max + (1.0 - decay) * b_max)
        else:
            new_min, new_max = b_min, b_max
        frozen = self.frozen(step)
        if frozen is not False:
            new_min = tf.where(frozen, old_min, new_min)
            new_max = tf.where(frozen, old_max, new_max)
        self.min.assign(new_min)
        self.max.assign(new_max)
        return self.fake_quant(x, *self.finalize_range(new_min, new_max))

    def _at_initial_range(self, x_min: tf.Tensor, x_max: tf.Tensor) -> tf.Tensor:
        """True while ``min``/``max`` (read as ``x_min``/``x_max``) still hold
        ``init_min``/``init_max`` (never set)."""
        return tf.logical_and(tf.reduce_all(tf.equal(x_min, self.spec.init_min)),
                              tf.reduce_all(tf.equal(x_max, self.spec.init_max)))

    def set_range(self, x_min, x_max) -> None:
        """Sets the raw range statistics (calibration and PTQ algorithms use this).

        An ``"ema"`` quantizer then continues its average from this range in training instead
        of restarting from the first batch (unless the range equals ``init_min``/``init_max``).
        """
        self.min.assign(tf.broadcast_to(tf.cast(x_min, tf.float32), self.min.shape))
        self.max.assign(tf.broadcast_to(tf.cast(x_max, tf.float32), self.max.shape))
