"""Kernels of the element-wise activations, QUANTIZE/DEQUANTIZE and SOFTMAX.

int8 -> int8 element-wise functions (LOGISTIC, TANH, HARD_SWISH, LEAKY_RELU, the ReLU family,
int8 requantisation) are applied as 256-entry tables: LOGISTIC/TANH tables come from the IR (TFLite
builds them in float32), the others are computed on the host at trace time by evaluating TFLite's
exact fixed-point formula (numpy backend of :mod:`tfquant.simulate.primitives`) on all 256 inputs.

Example:
    >>> from tfquant.simulate.builders import hard_swish_params
    >>> hard_swish_values(np.array([-128, 0, 127]), hard_swish_params(0.05, 0, 0.05, 0)).tolist()
    [0, 0, 127]
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from tfquant.simulate import primitives as P
from tfquant.simulate.graph import Op
from tfquant.simulate.kernels import INT8_MAX, INT8_MIN, _i64, _lut, _to_int8, register

_ALL_INT8 = np.arange(INT8_MIN, INT8_MAX + 1, dtype=np.int64)


@register("LOGISTIC", "TANH")
def table_lookup(op: Op, inputs: list) -> list:
    """Logistic / Tanh: TFLite's float32-built lookup table."""
    return [_lut(inputs[0], op.params["lut"])]


def hard_swish_values(q: np.ndarray, p: dict) -> np.ndarray:
    """TFLite's reference int8 HardSwish (16-bit fixed point) on int8 values ``q`` (host)."""
    input_value = np.asarray(q, np.int64) - p["input_zp"]
    hires = input_value * (1 << 7)
    preshift_output = P.saturating_rounding_doubling_high_mul_int16(
        hires, p["output_multiplier_int16"])
    reluish = hires
    exponent = p["reluish_exponent"]
    if exponent > 0:
        reluish = P.saturating_left_shift_int16(reluish, exponent - 1)
    reluish = P.saturating_rounding_doubling_high_mul_int16(reluish, p["reluish_multiplier_int16"])
    if exponent > 0:
        reluish = P.saturating_left_shift_int16(reluish, 1)
    if exponent < 0:
        reluish = P.rounding_divide_by_pot(reluish, -exponent)
    reluish = (reluish + (1 << 15)) >> 1                  # int16 [-1, 1] -> [0, 1]
    preshift = P.saturating_doubling_high_mul_int16(reluish, preshift_output)
    out = P.rounding_divide_by_pot(preshift, -p["output_exponent"]) + p["output_zp"]
    return np.clip(out, INT8_MIN, INT8_MAX)


def leaky_relu_values(q: np.ndarray, p: dict) -> np.ndarray:
    """TFLite's ``QuantizeLeakyRelu`` on int8 values ``q`` (host)."""
    v = np.asarray(q, np.int64) - p["input_zp"]
    identity = P.multiply_by_quantized_multiplier(v, p["multiplier_identity"], p["shift_identity"])
    alpha = P.multiply_by_quantized_multiplier(v, p["multiplier_alpha"], p["shift_alpha"])
    return np.clip(np.where(v >= 0, identity, alpha) + p["output_zp"], INT8_MIN, INT8_MAX)


def relu_values(q: np.ndarray, p: dict) -> np.ndarray:
    """TFLite's ``ReluX`` (requantise then clamp) on int8 values ``q`` (host)."""
    v = np.asarray(q, np.int64) - p["input_zp"]
    out = P.multiply_by_quantized_multiplier(v, p["multiplier"], p["shift"]) + p["output_zp"]
    return np.clip(out, p["act_min"], p["act_max"])


def requantize_values(q: np.ndarray, p: dict) -> np.ndarray:
    """TFLite's ``Requantize`` (int8/uint8 -> int8/uint8 QUANTIZE) on values ``q`` (host),
    clamped to the output type."""
    v = np.asarray(q, np.int64) - p["input_zp"]
    out = P.multiply_by_quantized_multiplier(v, p["multiplier"], p["shift"]) + p["output_zp"]
    info = np.iinfo(p.get("output_dtype", "int8"))
    return np.clip(out, info.min, info.max)


def _elementwise_table(fn: Callable[[np.ndarray, dict], np.ndarray], p: dict) -> np.ndarray:
    """Evaluates an int8 -> int8 formula on all 256 inputs on the host (numpy primitives)."""
    return np.asarray(fn(_ALL_INT8, p)).astype(np.int8)


@register("HARD_SWISH")
def hard_swish(op: Op, inputs: list) -> list:
    """int8 HardSwish via a table of the exact fixed-point formula."""
    return [_lut(inputs[0], _elementwise_table(hard_swish_values, op.params))]


@register("LEAKY_RELU")
def leaky_relu(op: Op, inputs: list) -> list:
    """int8 LeakyReLU via a table of the exact fixed-point formula."""
    return [_lut(inputs[0], _elementwise_table(leaky_relu_values, op.params))]


@register("RELU", "RELU6", "RELU_N1_TO_1")
def relu(op: Op, inputs: list) -> list:
    """Standalone int8 ReLU family (requantise + clamp)."""
    return [_lut(inputs[0], _elementwise_table(relu_values, op.params))]


@register("QUANTIZE")
def quantize(op: Op, inputs: list) -> list:
    """float -> int8 (``round(x / scale) + zp`` in float32) or int8 -> int8 requantisation."""
    p = op.params
    x = inputs[0]
    if p["mode"] == "requantize":
        # a table over every stored input value (int8, or uint8 at a model's edge)
        info = np.iinfo(p.get("input_dtype", "int8"))
        table = requantize_values(np.arange(info.min, info.max + 1), p)
        table = table.astype(p.get("output_dtype", "int8"))
        return [tf.gather(tf.constant(table), tf.cast(x, tf.int32) - info.min)]
    # float32 division as C does it: XLA rewrites division by a constant into a multiplication
    # by the reciprocal, so divide in float64 and round to float32 (exact: a float32 quotient
    # is never a float32 midpoint, and the float64 error is far below the distance to one).
    quotient = tf.cast(tf.cast(x, tf.float32), tf.float64) / tf.constant(np.float64(p["scale"]))
    scaled = tf.clip_by_value(P.round_half_away(tf.cast(quotient, tf.float32)), -1e9, 1e9)
    out = _i64(scaled) + int(p["zp"])
    return [_to_int8(out, INT8_MIN, INT8_MAX)]


@register("DEQUANTIZE")
def dequantize(op: Op, inputs: list) -> list:
    """int8 -> float32: ``scale * (q - zp)``."""
    p = op.params
    v = tf.cast(tf.cast(inputs[0], tf.int32) - int(p["zp"]), tf.float32)
    return [v * tf.constant(np.float32(p["scale"]))]


# ----------------------------------------------------------------------------------------------
# softmax
# ----------------------------------------------------------------------------------------------
@register("SOFTMAX")
def softmax(op: Op, inputs: list) -> list:
    """int8 Softmax over the last axis (TFLite's reference gemmlowp fixed-point kernel).

    The output is ``unsat - 128`` (TFLite enforces scale 1/256, zero point -128). TFLite's kernel
    aborts (``TFLITE_CHECK``) when ``num_bits_over_unit + 23 > 31``, which needs more than 256
    logits within the input radius; the simulator has no such check.
    """
    p = op.params
    x = tf.cast(inputs[0], tf.int64)
    diff = x - tf.reduce_max(x, axis=-1, keepdims=True)            # in [-255, 0]
    # exp(diff) depends on diff only: tabulate the 256 possible values on the host.
    d = -np.arange(256, dtype=np.int64)
    kept_table = d >= p["diff_min"]
    rescaled = P.saturating_rounding_doubling_high_mul(
        P.wrap_int32(d * (1 << p["input_left_shift"])), p["input_multiplier"])
    exp_table = np.where(kept_table, P.exp_on_negative_values(rescaled, 5), 0)
    acc_table = P.rounding_divide_by_pot(exp_table, 12)
    index = tf.cast(-diff, tf.int32)
    exp_values = tf.gather(tf.constant(exp_table), index)
    kept = tf.gather(tf.constant(kept_table), index)
    sum_of_exps = P.wrap_int32(tf.reduce_sum(tf.gather(tf.constant(acc_table), index), axis=-1,
                                             keepdims=True))
    shifted_scale, num_bits_over_unit = P.get_reciprocal(sum_of_exps, 12)
    exponent = num_bits_over_unit + 31 - 8
    unsat = P.rounding_divide_by_pot(P.saturating_rounding_doubling_high_mul(shifted_scale,
                                                                             exp_values), exponent)
    out = tf.where(kept, unsat - 128, tf.constant(INT8_MIN, tf.int64))
    return [_to_int8(out, INT8_MIN, INT8_MAX)]
