"""``Quantizer``: a Keras layer that owns one tensor's range state and fake-quantizes it."""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfquant.fake_quant import _to_channels_last, fake_quant
from tfquant.qparams import QuantParams, symmetric_range
from tfquant.specs import TensorSpec

# Smallest half-width a range may have: keeps all-zero tensors quantizable (scale > 0).
MIN_RANGE = 1e-6


def replica_all_gather_reduce(value: tf.Tensor, reduce_fn) -> tf.Tensor:
    """Reduces ``value`` across replicas of a ``tf.distribute`` strategy (identity otherwise).

    ``tf.distribute.ReduceOp`` has only SUM and MEAN, so MIN/MAX first gather every replica's
    value: each replica puts its value in its own slot of a zero tensor of shape
    ``[replicas, *value.shape]`` and one SUM all-reduce fills every slot, exactly (a slot adds
    one value to zeros). ``ReplicaContext.all_gather`` would give the same, but under
    MultiWorkerMirroredStrategy it gathers the shapes first and pads: two collectives and ~30
    ops per call, which made tracing a multi-worker QAT step 2-3x slower.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    value = tf.convert_to_tensor(value)
    replica = tf.reshape(tf.cast(ctx.replica_id_in_sync_group, tf.int32), [1, 1])
    slots = tf.scatter_nd(replica, tf.expand_dims(value, 0),
                          tf.concat([[ctx.num_replicas_in_sync], tf.shape(value)], 0))
    return reduce_fn(ctx.all_reduce(tf.distribute.ReduceOp.SUM, slots), axis=0)


def replica_mean(value: tf.Tensor) -> tf.Tensor:
    """Mean of ``value`` across replicas (identity outside a strategy)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    return ctx.all_reduce(tf.distribute.ReduceOp.MEAN, value)


class Quantizer(keras.layers.Layer):
    """Base class: fake-quantizes its input with a range held in its own variables.

    Subclasses implement :meth:`build_range` (create variables), :meth:`quantize_training`
    (update state, return the fake-quantized tensor with the learner's gradient) and
    :meth:`current_range` (the ``(min, max)`` used in inference).

    Args:
        spec: the :class:`~tfquant.specs.TensorSpec` (or its dict form).
        axis: channel axis (int or contiguous tuple) for per-axis specs, else None.

    Attributes:
        enabled: when False the quantizer passes its input through untouched (analysis tools
            toggle it; call ``model.make_predict_function(force=True)`` or re-trace after).
    """

    def __init__(self, spec: TensorSpec | dict | None = None,
                 axis: int | Sequence[int] | None = None, **kwargs: Any):
        # TF's FakeQuant ops take float32 only: float32 state and compute under any global
        # mixed-precision policy
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.spec = spec if isinstance(spec, TensorSpec) else TensorSpec.from_dict(spec or {})
        if self.spec.per_axis and axis is None:
            raise ValueError(f"quantizer {self.name!r}: per_axis=True needs a channel axis, "
                             "and none was given (the tensor has no channel axis).")
        self.axis = None if not self.spec.per_axis else (
            axis if isinstance(axis, int) else tuple(axis))
        self.enabled = True
        # Set by QuantizeWrapper on weight quantizers (weights are constants in the exported
        # graph); derived from the model structure, so not part of the config.
        self.for_weights = False
        # Calls per training step: a QuantizeWrapper of a layer applied N times in the model
        # sets N, so ``steps`` (one count per call) reads as training steps.
        self.calls_per_step = 1

    # ----------------------------------------------------------------- state
    def build(self, input_shape):
        shape = ()
        if self.axis is not None:
            axes = [self.axis] if isinstance(self.axis, int) else list(self.axis)
            channels = 1
            for a in axes:
                if input_shape[a] is None:
                    raise ValueError(f"quantizer {self.name!r}: per-axis quantization needs a "
                                     f"known size on axis {a}, input shape is {input_shape}.")
                channels *= int(input_shape[a])
            shape = (channels,)
        self.param_shape = shape
        self.steps = self.add_weight(name="steps", shape=(), dtype="int64", initializer="zeros",
                                     trainable=False, aggregation="only_first_replica")
        self.build_range(shape)

    def build_range(self, shape: tuple) -> None:
        raise NotImplementedError

    def current_range(self) -> tuple[tf.Tensor, tf.Tensor]:
        raise NotImplementedError

    def quantize_training(self, x: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def set_range(self, x_min, x_max) -> None:
        """Sets the range to cover ``[x_min, x_max]`` (scalars or one value per channel).

        The quantizer applies its own rules on top (0 inside the range, symmetric when its spec
        says so), as for a range it learned; PTQ calibration uses this to hand over ranges.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot take a calibrated range")

    # --------------------------------------------------------------- helpers
    def reduce_axes(self, x: tf.Tensor) -> list[int]:
        """Axes reduced when taking statistics (all but the channel axes)."""
        if self.axis is None:
            return list(range(x.shape.rank))
        keep = [self.axis] if isinstance(self.axis, int) else list(self.axis)
        keep = [a % x.shape.rank for a in keep]
        return [a for a in range(x.shape.rank) if a not in keep]

    def channel_reduce(self, x: tf.Tensor, reduce_fn) -> tf.Tensor:
        """Reduces ``x`` to the parameter shape: a scalar, or one value per channel."""
        if self.axis is None:
            return reduce_fn(x)
        moved, _ = _to_channels_last(x, self.axis)
        return reduce_fn(tf.reshape(moved, [-1, moved.shape[-1]]), 0)

    def batch_min_max(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-tensor or per-channel min and max of ``x``, reduced across replicas."""
        b_min = self.channel_reduce(x, tf.reduce_min)
        b_max = self.channel_reduce(x, tf.reduce_max)
        b_min, b_max = self.assert_finite(b_min), self.assert_finite(b_max)
        return (replica_all_gather_reduce(b_min, tf.reduce_min),
                replica_all_gather_reduce(b_max, tf.reduce_max))

    def assert_finite(self, statistic: tf.Tensor) -> tf.Tensor:
        """``statistic``, or an InvalidArgumentError naming this quantizer if it is NaN/Inf."""
        return tf.debugging.assert_all_finite(
            statistic, f"quantizer {self.name!r}: non-finite values (NaN/Inf) reached the range "
            "update")

    def finalize_range(self, x_min: tf.Tensor, x_max: tf.Tensor):
        """Turns observed statistics into a valid range: contains 0, non-empty, symmetric if
        the spec says so."""
        spec = self.spec
        x_min = tf.minimum(x_min, 0.0)
        x_max = tf.maximum(x_max, 0.0)
        if spec.symmetric:
            abs_max = tf.maximum(tf.maximum(-x_min, x_max), MIN_RANGE)
            return symmetric_range(abs_max, spec.bits, spec.narrow_range)
        x_max = tf.maximum(x_max, x_min + MIN_RANGE)
        return x_min, x_max

    def fake_quant(self, x: tf.Tensor, x_min: tf.Tensor, x_max: tf.Tensor) -> tf.Tensor:
        """TF FakeQuant with this quantizer's bits, narrow range and axis."""
        return fake_quant(x, x_min, x_max, bits=self.spec.bits,
                          narrow_range=self.spec.narrow_range, axis=self.axis,
                          constant=self.for_weights)

    def frozen(self, step: tf.Tensor) -> tf.Tensor | bool:
        """True once the range must stop changing (``freeze_step`` reached)."""
        if self.spec.freeze_step is None:
            return False
        return step >= self.spec.freeze_step

    def training_step(self) -> tf.Tensor:
        """The 0-based training step of this call: ``steps`` counts calls, ``calls_per_step``
        of them per step. A snapshot (``steps.value`` is the variable itself: read after
        ``assign_add`` it would give the new count, and step 0 would never occur)."""
        step = tf.identity(self.steps.value)
        return step // self.calls_per_step if self.calls_per_step > 1 else step

    # ------------------------------------------------------------------ call
    # Set (per instance) by tfquant.ptq.calibrate.intercept: ``hook(quantizer, x)`` replaces
    # the fake-quant op while it is set (calibration observes and passes values through).
    calibration_hook = None

    def call(self, x, training=None):
        if not self.enabled:
            return x
        x = tf.convert_to_tensor(x)
        if x.dtype != tf.float32:
            x = tf.cast(x, tf.float32)
        if self.calibration_hook is not None:
            return self.calibration_hook(self, x)
        if training:
            step = self.training_step()      # read before counting this call
            self.steps.assign_add(1)
            y = self.quantize_training(x, step)
            if self.spec.quant_start_step > 0:
                y = tf.where(step >= self.spec.quant_start_step, y, x)
            return y
        x_min, x_max = self.current_range()
        return self.fake_quant(x, x_min, x_max)

    def compute_output_shape(self, input_shape):
        return input_shape

    # ------------------------------------------------------------- reporting
    def quant_params(self) -> QuantParams:
        """The current :class:`~tfquant.qparams.QuantParams` (numpy), the single source of truth
        for exporters and the simulator."""
        x_min, x_max = (np.asarray(keras.ops.convert_to_numpy(t)) for t in self.current_range())
        return QuantParams.from_min_max(x_min, x_max, bits=self.spec.bits,
                                        narrow_range=self.spec.narrow_range,
                                        signed=self.spec.signed,
                                        axis=self._params_axis())

    def _params_axis(self) -> int | None:
        # A multi-axis channel (depthwise kernels: in x multiplier) is reported by its last axis:
        # the parameters then apply to the kernel reshaped so those axes are flattened into one.
        if self.axis is None:
            return None
        return self.axis if isinstance(self.axis, int) else self.axis[-1]

    def get_config(self):
        config = super().get_config()
        config.update({"spec": self.spec.to_dict(),
                       "axis": list(self.axis) if isinstance(self.axis, tuple) else self.axis})
        return config
