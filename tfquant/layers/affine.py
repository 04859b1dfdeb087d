"""Affine preprocessing layers (``y = x * a + b``) split into the two int8 ops TFLite runs.

TFLite has no int8 op computing ``x * a + b``: the converter emits a MUL and an ADD, and the
tensor between them needs its own quantization parameters or both ops stay float. So a quantized
``Rescaling`` with a scale and an offset, or a ``Normalization``, is replaced by two standard
``Rescaling`` layers, ``x * a`` then ``+ b``, each with an output quantizer. A layer that only
scales or only shifts is one op already and is left alone.

Example:
    >>> parts = split_affine(keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="pre"))
    >>> [p.name for p in parts]
    ['pre_scale', 'pre']
"""

from __future__ import annotations

import keras
import numpy as np

from tfquant.layers.registry import normalizes_last_axis


def affine_coefficients(layer: keras.layers.Layer) -> tuple[np.ndarray, np.ndarray] | None:
    """``(a, b)`` with ``layer(x) == x * a + b`` (float32, broadcast over the input), or None.

    Args:
        layer: a ``Rescaling`` or a built, non-inverting ``Normalization`` layer.
    """
    if isinstance(layer, keras.layers.Rescaling):
        if keras.backend.image_data_format() == "channels_first" and np.ndim(layer.scale) > 0:
            return None
        return (np.asarray(layer.scale, np.float32), np.asarray(layer.offset, np.float32))
    if isinstance(layer, keras.layers.Normalization):
        if layer.invert or getattr(layer, "mean", None) is None:
            return None
        mean = np.asarray(keras.ops.convert_to_numpy(layer.mean), np.float32)
        variance = np.asarray(keras.ops.convert_to_numpy(layer.variance), np.float32)
        a = np.float32(1.0) / np.maximum(np.sqrt(variance), np.float32(keras.backend.epsilon()))
        return a, -mean * a
    return None


def _compact(v: np.ndarray):
    """A Python float for a constant array (the converter folds scalars best), else the array."""
    flat = v.reshape(-1)
    return float(flat[0]) if flat.size and np.all(flat == flat[0]) else v


def split_affine(layer: keras.layers.Layer) -> tuple[keras.layers.Layer, ...] | None:
    """``Rescaling`` layers computing ``layer`` one int8 op each, or None to keep ``layer``.

    A ``Rescaling`` with both a scale and an offset becomes ``x * a`` (named ``<name>_scale``)
    then ``+ b`` (named ``<name>``); a ``Normalization`` (a SUB and a DIV for the converter)
    becomes the same, or a single ``Rescaling`` when ``a`` or ``b`` is trivial. Layers that are
    one op already, or the identity, are kept.

    Example:
        >>> split_affine(keras.layers.Rescaling(1 / 255.0)) is None   # one MUL: nothing to split
        True
    """
    coefficients = affine_coefficients(layer)
    if coefficients is None:
        return None
    a, b = coefficients
    unit_scale, zero_offset = bool(np.all(a == 1.0)), bool(np.all(b == 0.0))
    if unit_scale and zero_offset:
        return None
    if isinstance(layer, keras.layers.Rescaling) and (unit_scale or zero_offset):
        return None
    shape = np.broadcast_shapes(a.shape, b.shape)
    a = _compact(np.broadcast_to(a, shape).copy())
    b = _compact(np.broadcast_to(b, shape).copy())
    if zero_offset:
        return (keras.layers.Rescaling(a, 0.0, name=layer.name),)
    if unit_scale:
        return (keras.layers.Rescaling(1.0, b, name=layer.name),)
    return (keras.layers.Rescaling(a, 0.0, name=f"{layer.name}_scale"),
            keras.layers.Rescaling(1.0, b, name=layer.name))


def batchnorm_carrier(bn: keras.layers.Layer) -> keras.layers.Layer | None:
    """A 1x1 ``DepthwiseConv2D`` (kernel of ones, no bias, frozen) into which a standalone
    BatchNormalization folds, or None when ``bn`` is not a channels-last 4-D BatchNormalization.

    A BatchNormalization that follows no foldable layer (e.g. after a Concatenate, as in
    DenseNet) is ``x * a + b`` per channel; as a depthwise convolution with the BN folded in it is
    a single int8 op (per-channel int8 weights, int32 bias) that keeps training the BN through
    the wrapper's folding (batch statistics while training, moving statistics otherwise).

    Example:
        >>> bn = keras.layers.BatchNormalization(name="bn")
        >>> _ = bn(keras.Input((4, 4, 3)))
        >>> batchnorm_carrier(bn).name
        'bn_depthwise'
    """
    if not isinstance(bn, keras.layers.BatchNormalization) or not bn.built:
        return None
    rank = len(bn.input.shape) if bn._inbound_nodes else None
    if rank != 4 or not normalizes_last_axis(bn, rank):
        return None
    return keras.layers.DepthwiseConv2D(1, use_bias=False, depthwise_initializer="ones",
                                        trainable=False, name=f"{bn.name}_depthwise")
