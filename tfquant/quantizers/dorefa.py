"""DoReFa-Net weight quantization (Zhou et al. 2016) and the base of the "zoo" quantizers.

The zoo quantizers (DoReFa, binary, ternary) do not merely round their input onto a range: they
first *transform* it (``tanh`` normalisation, ``sign``, thresholding). Their forward still ends
with TF's FakeQuant op applied to the transformed tensor, on a grid that contains every value the
transform produces (so that op is an identity on them) and that
:meth:`~tfquant.quantizers.Quantizer.quant_params` reports. The TFLite converter therefore sees
ordinary symmetric weights: DoReFa (k <= 7 bits), binary and ternary weights are stored exactly
as int8 (tested against hand-computed integers).

Like the min/max learner, the data-dependent quantities (DoReFa's ``max|tanh(w)|``, a binary or
ternary scale) are *state*: every training step recomputes and stores them, inference reads
the stored values (before the first training step, inference computes them from its input
without storing anything). Training forward and inference forward therefore agree for the same
state, and ``quant_params()`` describes what inference computes.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfquant.fake_quant import fake_quant
from tfquant.qparams import MAX_BITS, QuantParams
from tfquant.quantizers.base import MIN_RANGE, Quantizer, replica_all_gather_reduce


class TransformQuantizer(Quantizer):
    """Base class of quantizers whose forward is ``FakeQuant(transform(x, state))``.

    Subclasses implement :meth:`build_state` (create state variables), :meth:`observe_state`
    (the state computed from a tensor), :meth:`stored_state` (the state variables' values),
    :meth:`assign_state` and :meth:`transform` (the forward given a state, with its
    straight-through gradient). This class provides the training/inference plumbing:

    * training: ``state = observe_state(x)`` (or the stored state once ``freeze_step`` is
      reached), stored, then ``transform(x, state)``;
    * inference: ``transform(x, stored_state())``, or ``transform(x, observe_state(x))`` while
      no training step has run (nothing is stored in inference).
    """

    def build_range(self, shape):
        self.build_state(shape)
        self.initialized = self.add_weight(
            name="initialized", shape=(), dtype="bool", trainable=False,
            initializer="zeros", aggregation="only_first_replica")

    # ------------------------------------------------------------ subclass API
    def build_state(self, shape: tuple) -> None:
        raise NotImplementedError

    def observe_state(self, x: tf.Tensor) -> tuple[tf.Tensor, ...]:
        raise NotImplementedError

    def stored_state(self) -> tuple[tf.Tensor, ...]:
        raise NotImplementedError

    def assign_state(self, state: tuple[tf.Tensor, ...]) -> None:
        raise NotImplementedError

    def transform(self, x: tf.Tensor, state: tuple[tf.Tensor, ...]) -> tf.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ plumbing
    def observe(self, x: Any) -> None:
        """Computes the state from ``x`` and stores it (e.g. from a layer's weights before
        training, so that ``quant_params()`` and inference are defined)."""
        if not self.built:
            self.build(tuple(np.shape(x)))
        self.assign_state(self.observe_state(tf.cast(tf.convert_to_tensor(x), tf.float32)))
        self.initialized.assign(True)

    def quantize_training(self, x, step):
        state = self.observe_state(x)
        frozen = self.frozen(step)
        if frozen is not False:
            ready = tf.logical_and(frozen, self.initialized.value)
            state = tuple(tf.where(ready, old, new)
                          for old, new in zip(self.stored_state(), state))
        self.assign_state(state)
        self.initialized.assign(True)
        return self.transform(x, state)

    def quantize_inference(self, x: tf.Tensor) -> tf.Tensor:
        stored = self.stored_state()
        observed = self.observe_state(x)
        ready = self.initialized.value
        state = tuple(tf.where(ready, s, o) for s, o in zip(stored, observed))
        return self.transform(x, state)

    def call(self, x, training=None):
        if training or not self.enabled:
            return super().call(x, training=training)
        x = tf.convert_to_tensor(x)
        if x.dtype != tf.float32:
            x = tf.cast(x, tf.float32)
        return self.quantize_inference(x)

    def _require_initialized(self) -> None:
        if not bool(keras.ops.convert_to_numpy(self.initialized.value)):
            raise ValueError(
                f"quantizer {self.name!r} ({type(self).__name__}) has no state yet: its scale "
                "depends on the tensor it quantizes. Run a training step, or call "
                "quantizer.observe(tensor) first.")

    def broadcast(self, p: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
        """Reshapes a per-channel state vector to broadcast against ``x``."""
        if self.axis is None:
            return p
        axes = [self.axis] if isinstance(self.axis, int) else list(self.axis)
        axes = [a % x.shape.rank for a in axes]
        shape = [1] * x.shape.rank
        for a in axes:
            shape[a] = x.shape[a]
        return tf.reshape(p, shape)


def quantize_k(r: tf.Tensor, k: int) -> tf.Tensor:
    """DoReFa's ``quantize_k`` on ``[0, 1]``: ``round((2^k - 1) r) / (2^k - 1)``, identity
    gradient (straight-through estimator).

    Rounds half up, ``floor(r * n + 0.5)``, which is exactly what TF's FakeQuant kernel computes
    on the range ``[0, 1]`` with ``k`` bits (scale ``1/n``, zero point 0). It is written with
    plain ops rather than a FakeQuant op because the TFLite converter does not fold a chain of
    FakeQuant ops on a constant weight; the DoReFa forward ends with one FakeQuant op on the
    storage grid instead.

    Example:
        >>> quantize_k(tf.constant([0.0, 0.2, 0.5, 1.0]), 2).numpy()
        array([0.        , 0.33333334, 0.6666667 , 1.        ], dtype=float32)
    """
    n = float((1 << k) - 1)

    @tf.custom_gradient
    def _quantize(r):
        y = tf.floor(tf.clip_by_value(r, 0.0, 1.0) * n + 0.5) / n

        def grad(upstream):
            return upstream
        return y, grad

    return _quantize(r)


@keras.saving.register_keras_serializable(package="tfquant")
class DoReFaQuantizer(TransformQuantizer):
    """DoReFa-Net quantization (Zhou et al. 2016), ``learner="dorefa"``.

    Weights (``k = spec.bits``)::

        w_t = tanh(w) / (2 * max|tanh(w)|) + 1/2             # in [0, 1]
        w_q = 2 * quantize_k(w_t) - 1,  quantize_k(r) = round((2^k - 1) r) / (2^k - 1)

    ``quantize_k`` (:func:`quantize_k`) rounds like TF's FakeQuant op on ``[0, 1]`` with ``k``
    bits and has the straight-through gradient, so gradients flow through ``tanh`` and the
    normalisation unchanged. ``max|tanh(w)|`` is per tensor, or per
    output channel when ``spec.per_axis``; it is the quantizer's state (see the module doc).

    The ``2^k`` weight levels are the odd multiples of ``1 / (2^k - 1)`` in ``[-1, 1]``: they
    contain no zero, so no ``k``-bit affine grid with an integer zero point holds them. They are
    exactly representable on the ``(k+1)``-bit symmetric narrow-range grid with scale
    ``1 / (2^k - 1)``; a final FakeQuant op on that grid (an identity on these values) is what
    the TFLite converter sees, and :meth:`quant_params` reports that grid. So ``k <= 7`` exports
    exactly to int8 (set ``symmetric=True`` in the spec, which the exporter checks); ``k = 8``
    needs 9-bit storage and is not exportable to TFLite int8.

    Activations (when the quantizer is not a weight quantizer): DoReFa's
    ``quantize_k(clip(x, 0, 1))``, i.e. FakeQuant on ``[0, 1]`` with ``k`` bits.

    Example:
        >>> q = DoReFaQuantizer(TensorSpec(bits=2, learner="dorefa", symmetric=True))
        >>> q.for_weights = True
        >>> np.unique(np.round(q(tf.random.normal([64, 8]), training=True).numpy(), 4))
        array([-1.    , -0.3333,  0.3333,  1.    ], dtype=float32)
    """

    def build_state(self, shape):
        self.tanh_max = self.add_weight(
            name="tanh_max", shape=shape, trainable=False, aggregation="only_first_replica",
            initializer="ones")

    def observe_state(self, x):
        if not self.for_weights:
            return (tf.ones(self.param_shape),)
        m = self.channel_reduce(tf.abs(tf.tanh(x)), tf.reduce_max)
        m = replica_all_gather_reduce(self.assert_finite(m), tf.reduce_max)
        return (tf.maximum(m, MIN_RANGE),)

    def stored_state(self):
        return (self.tanh_max.value,)

    def assign_state(self, state):
        self.tanh_max.assign(state[0])

    @property
    def storage_bits(self) -> int:
        """Bits of the grid the quantized tensor is stored on (``k + 1`` for weights)."""
        if not self.for_weights:
            return self.spec.bits
        if self.spec.bits + 1 > MAX_BITS:
            raise ValueError(f"quantizer {self.name!r}: DoReFa weights with bits="
                             f"{self.spec.bits} need {self.spec.bits + 1}-bit storage; use "
                             f"bits <= {MAX_BITS - 1}.")
        return self.spec.bits + 1

    def transform(self, x, state):
        k = self.spec.bits
        if not self.for_weights:
            return fake_quant(x, 0.0, 1.0, bits=k, narrow_range=False)
        bits = self.storage_bits
        (m,) = state
        w_t = tf.tanh(x) / (2.0 * self.broadcast(m, x)) + 0.5
        w_q = 2.0 * quantize_k(w_t, k) - 1.0
        # The storage grid: an identity on DoReFa's levels, and the op the converter sees.
        return fake_quant(w_q, -1.0, 1.0, bits=bits, narrow_range=True, constant=True)

    def current_range(self):
        if self.for_weights:
            return tf.constant(-1.0), tf.constant(1.0)
        return tf.constant(0.0), tf.constant(1.0)

    def quant_params(self) -> QuantParams:
        """Weights: the ``(k+1)``-bit symmetric narrow grid of scale ``1/(2^k - 1)`` on
        ``[-1, 1]``; activations: ``k`` bits on ``[0, 1]``."""
        if self.for_weights:
            return QuantParams.from_min_max(-1.0, 1.0, bits=self.storage_bits,
                                            narrow_range=True, signed=True)
        return QuantParams.from_min_max(0.0, 1.0, bits=self.spec.bits, narrow_range=False,
                                        signed=self.spec.signed)
