"""Learned step size quantization (LSQ, Esser et al. 2019) and LSQ+ learned offsets."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfquant.fake_quant import fake_quant_lsq, lsq_levels, lsq_range
from tfquant.quantizers.base import MIN_RANGE, Quantizer, replica_all_gather_reduce, replica_mean


@keras.saving.register_keras_serializable(package="tfquant")
class LSQQuantizer(Quantizer):
    """A trainable step size ``s`` (and, for ``learner="lsq_plus"``, a trainable offset).

    * Initialisation on the first training batch: ``s = 2 * mean(|x|) / sqrt(Q_P)`` (the LSQ
      paper), capped at ``max(|x|) / Q_P``: a larger step clips nothing and only wastes levels
      (at 8 bits the paper's value spans ~18 standard deviations of a Gaussian and leaves ~90 %
      of the grid unused, which costs accuracy and makes TFLite's fixed-point requantisation
      of the small accumulators that result visibly inexact). LSQ+ offsets start at the batch
      minimum and the step at ``range / levels``.
    * Gradient scale ``g = 1 / sqrt(N * Q_P)`` with ``N`` the number of elements one step size
      covers (per channel for per-axis weights, per sample for activations).
    * After ``freeze_step`` the step and offset receive no gradient.

    ``learner="lsq"`` is symmetric (zero point at the middle of the signed grid);
    ``"lsq_plus"`` is asymmetric.

    Example:
        >>> q = LSQQuantizer(TensorSpec(bits=4, symmetric=True, narrow_range=True,
        ...                              learner="lsq"))
        >>> y = q(tf.random.normal([2, 16]), training=True)
    """

    @property
    def symmetric(self) -> bool:
        return self.spec.learner == "lsq"

    def build_range(self, shape):
        lo, hi = lsq_levels(self.spec.bits, self.spec.narrow_range, self.symmetric)
        init_step = (self.spec.init_max - self.spec.init_min) / float(hi - lo)
        self.step_size = self.add_weight(
            name="step_size", shape=shape, trainable=True,
            initializer=keras.initializers.Constant(init_step))
        self.offset = None
        if not self.symmetric:
            self.offset = self.add_weight(
                name="offset", shape=shape, trainable=True,
                initializer=keras.initializers.Constant(self.spec.init_min))
        self.initialized = self.add_weight(
            name="initialized", shape=(), dtype="bool", trainable=False,
            initializer="zeros", aggregation="only_first_replica")

    def current_range(self):
        offset = None if self.offset is None else self.offset.value
        # Exactly the range the training path hands to the FakeQuant op. An offset above 0 (or
        # a range below 0) needs no clamping here: TF's nudging moves the grid, keeping the
        # learned step, so that 0 is representable, in training, inference and QuantParams.
        return lsq_range(tf.abs(self.step_size.value) + 1e-12, offset,
                         bits=self.spec.bits, narrow_range=self.spec.narrow_range,
                         symmetric=self.symmetric)

    def set_range(self, x_min, x_max) -> None:
        """Sets step (and offset) so the quantizer covers ``[x_min, x_max]`` (PTQ calibration).

        Symmetric: ``step = max(-x_min, x_max) / Q_P``; LSQ+: ``offset = min(x_min, 0)``,
        ``step = (max(x_max, 0) - offset) / levels``. Marks the quantizer initialised, so QAT
        fine-tuning starts from this range.
        """
        lo, hi = lsq_levels(self.spec.bits, self.spec.narrow_range, self.symmetric)
        x_min = tf.minimum(tf.cast(x_min, tf.float32), 0.0)
        x_max = tf.maximum(tf.cast(x_max, tf.float32), 0.0)
        if self.symmetric:
            step = tf.maximum(-x_min, x_max) / float(hi)
        else:
            step = (x_max - x_min) / float(hi - lo)
            self.offset.assign(tf.broadcast_to(x_min, self.offset.shape))
        self.step_size.assign(tf.broadcast_to(tf.maximum(step, MIN_RANGE), self.step_size.shape))
        self.initialized.assign(True)

    def _initial_values(self, x):
        lo, hi = lsq_levels(self.spec.bits, self.spec.narrow_range, self.symmetric)
        if self.symmetric:
            mean_abs = replica_mean(self.assert_finite(
                self.channel_reduce(tf.abs(x), tf.reduce_mean)))
            max_abs = replica_all_gather_reduce(self.channel_reduce(tf.abs(x), tf.reduce_max),
                                                tf.reduce_max)
            step = tf.minimum(2.0 * mean_abs / math.sqrt(hi), max_abs / float(hi))
            return tf.maximum(step, MIN_RANGE), None
        b_min, b_max = self.batch_min_max(x)
        b_min = tf.minimum(b_min, 0.0)
        step = tf.maximum((tf.maximum(b_max, 0.0) - b_min) / float(hi - lo), MIN_RANGE)
        return step, b_min

    def quantize_training(self, x, step):
        init_step, init_offset = self._initial_values(x)
        ready = self.initialized.value
        s = tf.where(ready, self.step_size.value, tf.stop_gradient(init_step))
        offset = None
        if self.offset is not None:
            offset = tf.where(ready, self.offset.value, tf.stop_gradient(init_offset))
        frozen = self.frozen(step)
        if frozen is not False:
            s = tf.where(frozen, tf.stop_gradient(s), s)
            if offset is not None:
                offset = tf.where(frozen, tf.stop_gradient(offset), offset)
        self.step_size.assign(s)
        if offset is not None:
            self.offset.assign(offset)
        self.initialized.assign(True)
        _, hi = lsq_levels(self.spec.bits, self.spec.narrow_range, self.symmetric)
        per_step = 1
        for a in self.reduce_axes(x):
            if self.axis is None and a == 0 and not self.for_weights:
                continue  # activations: N counts features of one sample
            per_step *= int(x.shape[a]) if x.shape[a] is not None else 1
        grad_scale = 1.0 / math.sqrt(max(per_step, 1) * hi)
        return fake_quant_lsq(x, tf.abs(s) + 1e-12, offset, bits=self.spec.bits,
                              narrow_range=self.spec.narrow_range, symmetric=self.symmetric,
                              grad_scale=grad_scale, axis=self.axis)
