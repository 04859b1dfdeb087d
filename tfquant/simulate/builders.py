"""Scales -> integer op parameters, in the float precision TFLite uses for each op.

These helpers are shared by every front end of the simulator (the TFLite reader and the Keras
front end): given float32 scales and zero points they return the integer parameters stored in
the IR (see :mod:`tfquant.simulate.graph`). Every real multiplier becomes an integer pair through
:func:`tfquant.qparams.quantize_multiplier`; what differs between ops is the precision in which
the real multiplier is computed on the host, which is copied from TFLite's ``Prepare`` functions:

* Conv / Depthwise / FullyConnected per channel: ``double(s_in) * double(s_w[c]) / double(s_out)``
* FullyConnected per tensor: ``double(float32(s_in * s_w)) / double(s_out)``
* Mul, LeakyReLU, ReLU, HardSwish: float32 arithmetic, widened to double
* Add/Sub: ``2 * max(s1, s2)`` with a left shift of 20; Mean, Quantize: ``double / double``

Example:
    >>> activation_range("RELU6", 6.0 / 255, -128)
    (-128, 127)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from typing import Any, Callable

import numpy as np

from tfquant.qparams import quantize_multiplier

F32 = np.float32
INT8_MIN, INT8_MAX = -128, 127
ADD_LEFT_SHIFT = 20

ACTIVATIONS = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")


def _round_half_away(value: float) -> int:
    """``std::round`` of a (float32 or double) value, exactly."""
    magnitude = abs(float(value))
    whole = math.floor(magnitude)
    rounded = whole + (1 if magnitude - whole >= 0.5 else 0)
    return int(-rounded if value < 0 else rounded)


def _f32_div(a: Any, b: Any) -> np.float32:
    with np.errstate(all="ignore"):
        return F32(F32(a) / F32(b))


def _f32_mul(a: Any, b: Any) -> np.float32:
    with np.errstate(all="ignore"):
        return F32(F32(a) * F32(b))


def _scalar(v: Any) -> Any:
    arr = np.asarray(v)
    if arr.size != 1:
        raise ValueError(f"expected a per-tensor (scalar) quantization parameter, got {arr.shape}")
    return arr.reshape(()).item()


def multipliers(real: Any) -> tuple[np.ndarray, np.ndarray]:
    """Quantizes an array of real multipliers (doubles) into int32 multipliers and shifts."""
    pairs = [quantize_multiplier(float(r)) for r in np.asarray(real, np.float64).reshape(-1)]
    m = np.array([p[0] for p in pairs], np.int64)
    e = np.array([p[1] for p in pairs], np.int64)
    return m, e


def activation_range(activation: str, out_scale: Any, out_zp: Any) -> tuple[int, int]:
    """TFLite's ``CalculateActivationRangeQuantized`` for int8 outputs.

    Args:
        activation: ``"NONE"``, ``"RELU"``, ``"RELU6"`` or ``"RELU_N1_TO_1"``.
        out_scale: output scale (float32).
        out_zp: output zero point.

    Returns:
        ``(act_min, act_max)`` within [-128, 127].
    """
    zp = int(_scalar(out_zp))

    def quantize(f: float) -> int:
        return zp + _round_half_away(_f32_div(f, _scalar(out_scale)))

    if activation == "NONE":
        return INT8_MIN, INT8_MAX
    if activation == "RELU":
        return max(INT8_MIN, quantize(0.0)), INT8_MAX
    if activation == "RELU6":
        return max(INT8_MIN, quantize(0.0)), min(INT8_MAX, quantize(6.0))
    if activation == "RELU_N1_TO_1":
        return max(INT8_MIN, quantize(-1.0)), min(INT8_MAX, quantize(1.0))
    raise ValueError(f"unsupported fused activation {activation!r}; expected one of {ACTIVATIONS}")


def conv_multipliers(in_scale: Any, filter_scales: Any, out_scale: Any,
                     channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel Conv/Depthwise multipliers: ``double(s_in) * double(s_w[c]) / double(s_out)``."""
    filter_scales = np.asarray(filter_scales, np.float32).reshape(-1)
    if filter_scales.size == 1:
        filter_scales = np.repeat(filter_scales, channels)
    if filter_scales.size != channels:
        raise ValueError(f"{filter_scales.size} weight scales for {channels} output channels")
    real = (np.float64(_scalar(in_scale)) * filter_scales.astype(np.float64)
            / np.float64(_scalar(out_scale)))
    return multipliers(real)


def fc_multipliers(in_scale: Any, filter_scales: Any, out_scale: Any,
                   channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FullyConnected multipliers for both requantisation styles.

    Returns:
        ``(multiplier, shift, real_multiplier)``: the fixed-point pair per output channel (per
        tensor: the product ``s_in * s_w`` is taken in float32, as ``GetQuantizedConvolution
        Multipler`` does), and the double ``s_in * s_w / s_out`` used by the reference kernels that
        requantise in double.
    """
    filter_scales = np.asarray(filter_scales, np.float32).reshape(-1)
    s_in = np.float64(_scalar(in_scale))
    s_out = np.float64(_scalar(out_scale))
    if filter_scales.size == 1:
        product = np.float64(_f32_mul(_scalar(in_scale), filter_scales[0]))
        m, e = multipliers([product / s_out])
        real = np.full(channels, s_in * np.float64(filter_scales[0]) / s_out)
        return np.repeat(m, channels), np.repeat(e, channels), real
    real = s_in * filter_scales.astype(np.float64) / s_out
    m, e = multipliers(real)
    return m, e, real


def add_sub_params(s1: Any, zp1: Any, s2: Any, zp2: Any, s_out: Any, zp_out: Any,
                   activation: str = "NONE") -> dict[str, Any]:
    """ADD/SUB parameters (int8 path: inputs left-shifted by 20 before their multipliers)."""
    twice_max = 2.0 * float(max(F32(_scalar(s1)), F32(_scalar(s2))))
    m1, e1 = quantize_multiplier(float(F32(_scalar(s1))) / twice_max)
    m2, e2 = quantize_multiplier(float(F32(_scalar(s2))) / twice_max)
    mo, eo = quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * float(F32(_scalar(s_out)))))
    act_min, act_max = activation_range(activation, s_out, zp_out)
    return {"input_zp": (int(_scalar(zp1)), int(_scalar(zp2))), "left_shift": ADD_LEFT_SHIFT,
            "input_multiplier": (m1, m2), "input_shift": (e1, e2), "output_multiplier": mo,
            "output_shift": eo, "output_zp": int(_scalar(zp_out)), "act_min": act_min,
            "act_max": act_max}


def mul_params(s1: Any, zp1: Any, s2: Any, zp2: Any, s_out: Any, zp_out: Any,
               activation: str = "NONE") -> dict[str, Any]:
    """MUL parameters: multiplier ``float32(s1 * s2 / s_out)``."""
    real = _f32_div(_f32_mul(_scalar(s1), _scalar(s2)), _scalar(s_out))
    m, e = quantize_multiplier(float(real))
    act_min, act_max = activation_range(activation, s_out, zp_out)
    return {"input_zp": (int(_scalar(zp1)), int(_scalar(zp2))), "output_multiplier": m,
            "output_shift": e, "output_zp": int(_scalar(zp_out)), "act_min": act_min,
            "act_max": act_max}


def requantize_params(s_in: Any, zp_in: Any, s_out: Any, zp_out: Any) -> dict[str, Any]:
    """int8 -> int8 QUANTIZE: ``double(s_in) / double(s_out)``."""
    m, e = quantize_multiplier(float(F32(_scalar(s_in))) / float(F32(_scalar(s_out))))
    return {"mode": "requantize", "input_zp": int(_scalar(zp_in)),
            "output_zp": int(_scalar(zp_out)), "multiplier": m, "shift": e}


def mean_params(s_in: Any, zp_in: Any, s_out: Any, zp_out: Any,
                num_elements: int) -> dict[str, Any]:
    """MEAN parameters, with the 1/N factor folded in as TFLite's ``QuantizedMeanOrSum`` does."""
    m, e = quantize_multiplier(float(F32(_scalar(s_in))) / float(F32(_scalar(s_out))))
    n = int(num_elements)
    if n <= 0:
        raise ValueError("MEAN over an empty axis")
    shift = max(min(n.bit_length() - 1, 32, 31 + e), 0)   # e >= -31 (quantize_multiplier)
    m = (m << shift) // n
    return {"input_zp": int(_scalar(zp_in)), "output_zp": int(_scalar(zp_out)),
            "multiplier": m, "shift": e - shift, "num_elements": n}


def relu_params(kind: str, s_in: Any, zp_in: Any, s_out: Any, zp_out: Any) -> dict[str, Any]:
    """Standalone RELU / RELU6 / RELU_N1_TO_1 (``QuantizedReluX``): requantize then clamp."""
    lo, hi = {"RELU": (0.0, math.inf), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0)}[kind]
    zp = int(_scalar(zp_out))
    m, e = quantize_multiplier(float(_f32_div(_scalar(s_in), _scalar(s_out))))
    act_min = max(INT8_MIN, zp + _round_half_away(_f32_div(lo, _scalar(s_out))))
    act_max = INT8_MAX if math.isinf(hi) else min(
        INT8_MAX, zp + _round_half_away(_f32_div(hi, _scalar(s_out))))
    return {"input_zp": int(_scalar(zp_in)), "output_zp": zp, "multiplier": m, "shift": e,
            "act_min": act_min, "act_max": act_max}


def leaky_relu_params(alpha: float, s_in: Any, zp_in: Any, s_out: Any,
                      zp_out: Any) -> dict[str, Any]:
    """LEAKY_RELU: identity and alpha multipliers computed in float32."""
    alpha_real = _f32_div(_f32_mul(_scalar(s_in), alpha), _scalar(s_out))
    identity_real = _f32_div(_scalar(s_in), _scalar(s_out))
    ma, ea = quantize_multiplier(float(alpha_real))
    mi, ei = quantize_multiplier(float(identity_real))
    return {"input_zp": int(_scalar(zp_in)), "output_zp": int(_scalar(zp_out)),
            "multiplier_identity": mi, "shift_identity": ei, "multiplier_alpha": ma,
            "shift_alpha": ea}


def _downscale_int32_to_int16_multiplier(m: int) -> int:
    rounding_offset = 1 << 15
    if m >= (1 << 31) - 1 - rounding_offset:
        return (1 << 15) - 1
    return (m + rounding_offset) >> 16


def hard_swish_params(s_in: Any, zp_in: Any, s_out: Any, zp_out: Any) -> dict[str, Any]:
    """HARD_SWISH: 16-bit fixed-point multipliers derived in float32 (TFLite's HardSwishPrepare)."""
    hires_input_scale = _f32_mul(F32(1.0) / F32(128.0), _scalar(s_in))
    reluish_scale = F32(3.0) / F32(32768.0)
    output_real = _f32_div(hires_input_scale, _scalar(s_out))
    reluish_real = _f32_div(hires_input_scale, reluish_scale)
    mo, eo = quantize_multiplier(float(output_real))
    mr, er = quantize_multiplier(float(reluish_real))
    if eo > 0:
        raise ValueError("HARD_SWISH output multiplier exponent must be <= 0 (TFLite rejects it)")
    return {"input_zp": int(_scalar(zp_in)), "output_zp": int(_scalar(zp_out)),
            "output_multiplier_int16": _downscale_int32_to_int16_multiplier(mo),
            "output_exponent": eo,
            "reluish_multiplier_int16": _downscale_int32_to_int16_multiplier(mr),
            "reluish_exponent": er}


def softmax_params(beta: float, s_in: Any) -> dict[str, Any]:
    """SOFTMAX (reference kernel): Q5.26 input scaling and the smallest difference kept."""
    scaled_diff_integer_bits = 5
    real = min(float(beta) * float(F32(_scalar(s_in)))
               * float(1 << (31 - scaled_diff_integer_bits)), float((1 << 31) - 1))
    m, left_shift = quantize_multiplier(real)
    if left_shift < 0:
        raise ValueError("SOFTMAX input scale too small for the reference kernel (shift < 0)")
    max_input_rescaled = (1.0 * ((1 << scaled_diff_integer_bits) - 1)
                          * float(1 << (31 - scaled_diff_integer_bits)) / float(1 << left_shift))
    radius = int(math.floor(max_input_rescaled))
    return {"input_multiplier": m, "input_left_shift": left_shift, "diff_min": -radius}


# ----------------------------------------------------------------------------------------------
# float32 lookup tables (Logistic, Tanh): TFLite's LUTPopulate with libm's expf/tanhf
# ----------------------------------------------------------------------------------------------
def _libm() -> Any:
    name = ctypes.util.find_library("m")
    try:
        lib = ctypes.CDLL(name) if name else ctypes.CDLL(None)
        for fn in ("expf", "tanhf"):
            getattr(lib, fn).restype = ctypes.c_float
            getattr(lib, fn).argtypes = [ctypes.c_float]
        return lib
    except (OSError, AttributeError):
        return None


_LIBM = _libm()


def _expf(x: np.float32) -> np.float32:
    if _LIBM is not None:
        return F32(_LIBM.expf(float(x)))
    return F32(np.exp(np.float64(x)))


def _tanhf(x: np.float32) -> np.float32:
    if _LIBM is not None:
        return F32(_LIBM.tanhf(float(x)))
    return F32(np.tanh(np.float64(x)))


def _logistic_f32(v: np.float32) -> np.float32:
    with np.errstate(all="ignore"):
        return F32(F32(1.0) / F32(F32(1.0) + _expf(F32(-v))))


def lut_int8(s_in: Any, zp_in: Any, s_out: Any, zp_out: Any,
             transform: Callable[[np.float32], np.float32]) -> np.ndarray:
    """TFLite's ``LUTPopulate<int8_t>`` in float32: entry ``q + 128`` holds f(q)."""
    s_in, s_out = F32(_scalar(s_in)), F32(_scalar(s_out))
    zp_in, zp_out = int(_scalar(zp_in)), int(_scalar(zp_out))
    inverse_scale = F32(F32(1.0) / s_out)
    table = np.empty(256, np.int8)
    with np.errstate(all="ignore"):
        for q in range(INT8_MIN, INT8_MAX + 1):
            dequantized = F32(s_in * F32(q - zp_in))
            transformed = transform(dequantized)
            rescaled = F32(_round_half_away(F32(transformed * inverse_scale)))
            quantized = int(F32(rescaled + F32(zp_out)))
            table[q + 128] = min(max(quantized, INT8_MIN), INT8_MAX)
    return table


def logistic_lut(s_in: Any, zp_in: Any, s_out: Any, zp_out: Any) -> np.ndarray:
    """LOGISTIC table: ``1 / (1 + expf(-x))`` in float32."""
    return lut_int8(s_in, zp_in, s_out, zp_out, _logistic_f32)


def tanh_lut(s_in: Any, zp_in: Any, s_out: Any, zp_out: Any) -> np.ndarray:
    """TANH table: ``tanhf(x)``."""
    return lut_int8(s_in, zp_in, s_out, zp_out, _tanhf)
