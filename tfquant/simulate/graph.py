"""The simulator's intermediate representation (IR): a flat list of integer ops.

The IR is deliberately plain so that several front ends can produce it: ``tflite_reader`` builds
it from a ``.tflite`` flatbuffer, and a Keras front end can build it from tfquant's own
``QuantParams``. Front ends turn scales into integer parameters with the helpers of
:mod:`tfquant.simulate.builders` (which hold TFLite's precision rules); kernels only ever see
integers (plus the float scale of QUANTIZE/DEQUANTIZE, which TFLite applies in float).

Structure:
    * :class:`Graph` -- ``tensors`` (id -> :class:`TensorInfo`), ``constants`` (id -> numpy array,
      used for constant operands such as the second input of an ADD), ``ops`` (topologically
      ordered), ``inputs`` and ``outputs`` (tensor ids).
    * :class:`TensorInfo` -- name, dtype (``"int8"``, ``"float32"``, ``"int32"``), static shape
      (the leading dimension is the batch and is resized freely at run time), scale and zero point.
    * :class:`Op` -- ``type`` (a TFLite builtin name), ``inputs``/``outputs`` (tensor ids of the
      activations; weights live in ``params``), ``params`` (ints, tuples and numpy arrays).

Op parameters (``zp`` = zero point; multipliers/shifts are TFLite ``(m, e)`` pairs from
``tfquant.qparams.quantize_multiplier``: real ~= m * 2^(e - 31); ``act_min``/``act_max`` are
the int8 clamp of the fused activation). A front end fills them with the builders:
``builders.conv_multipliers`` (CONV_2D, DEPTHWISE_CONV_2D), ``fc_multipliers``,
``add_sub_params``, ``mul_params``, ``mean_params``, ``relu_params``, ``leaky_relu_params``,
``hard_swish_params``, ``softmax_params``, ``requantize_params``, ``logistic_lut``/``tanh_lut``
and ``activation_range``; weights and biases are the stored integers (int32 values may be held in
int64 arrays). A CONV_2D filter with fewer input channels than its input is a grouped convolution.

===========================  ===================================================================
op type                      params
===========================  ===================================================================
CONV_2D                      filter int8 [O, KH, KW, I], bias int32 [O] or None, multiplier
                             int32 [O], shift int32 [O], input_zp, output_zp, act_min, act_max,
                             strides (h, w), dilations (h, w), padding "SAME" | "VALID"
DEPTHWISE_CONV_2D            as CONV_2D with filter int8 [1, KH, KW, I * depth_multiplier] and
                             depth_multiplier (output channel o reads input channel o // dm)
FULLY_CONNECTED              filter int8 [O, K], filter_zp (per-tensor legacy, usually 0), bias,
                             multiplier/shift [O], real_multiplier float64 [O] (used when
                             requantize == "double": round-half-away(acc * real_multiplier)),
                             requantize "fixed_point" | "double", input_zp, output_zp, act_min,
                             act_max, keep_num_dims
ADD, SUB                     input_zp (2), left_shift (20), input_multiplier (2), input_shift (2),
                             output_multiplier, output_shift, output_zp, act_min, act_max
MUL                          input_zp (2), output_multiplier, output_shift, output_zp, act_min,
                             act_max
CONCATENATION                axis (inputs share the output's scale and zero point)
MAXIMUM, MINIMUM             none (operands share the output's scale and zero point)
AVERAGE_POOL_2D, MAX_POOL_2D filter (h, w), strides (h, w), padding, act_min, act_max
MEAN                         axes, keep_dims, num_elements (N), input_zp, output_zp, multiplier,
                             shift (already divided by N as TFLite's reference kernel does)
RESHAPE                      new_shape (-1 marks the batch dimension)
SQUEEZE                      axes
TRANSPOSE                    perm
STRIDED_SLICE                begin, end, strides, begin_mask, end_mask, ellipsis_mask,
                             new_axis_mask, shrink_axis_mask
SPLIT, SPLIT_V               axis, sizes (one per output)
PAD, PADV2                   paddings [[before, after], ...], pad_value
RESIZE_NEAREST_NEIGHBOR      size (h, w), align_corners, half_pixel_centers
LOGISTIC, TANH               lut int8 [256] indexed by q + 128
SOFTMAX                      input_multiplier, input_left_shift, diff_min
HARD_SWISH                   input_zp, output_zp, output_multiplier_int16, output_exponent,
                             reluish_multiplier_int16, reluish_exponent
LEAKY_RELU                   input_zp, output_zp, multiplier_identity, shift_identity,
                             multiplier_alpha, shift_alpha
RELU, RELU6, RELU_N1_TO_1    input_zp, output_zp, multiplier, shift, act_min, act_max
QUANTIZE                     mode "float": scale (float32), zp; mode "requantize": input_zp,
                             output_zp, multiplier, shift
DEQUANTIZE                   scale (float32), zp
===========================  ===================================================================

Example:
    >>> g = Graph()
    >>> g.add_tensor(TensorInfo(0, "x", "int8", (1, 4), scale=0.1, zero_point=0))
    >>> g.add_tensor(TensorInfo(1, "y", "int8", (1, 2, 2), scale=0.1, zero_point=0))
    >>> g.ops.append(Op("RESHAPE", (0,), (1,), {"new_shape": (-1, 2, 2)}))
    >>> g.inputs, g.outputs = [0], [1]
    >>> g.validate()
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

#: Op types the kernels implement.
SUPPORTED_OPS = frozenset({
    "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "ADD", "SUB", "MUL",
    "CONCATENATION", "AVERAGE_POOL_2D", "MAX_POOL_2D", "MEAN", "RESHAPE", "SQUEEZE", "TRANSPOSE",
    "STRIDED_SLICE", "SPLIT", "SPLIT_V", "PAD", "PADV2", "RESIZE_NEAREST_NEIGHBOR", "LOGISTIC",
    "TANH", "SOFTMAX", "HARD_SWISH", "LEAKY_RELU", "RELU", "RELU6", "RELU_N1_TO_1", "QUANTIZE",
    "DEQUANTIZE", "MAXIMUM", "MINIMUM",
})


@dataclasses.dataclass
class TensorInfo:
    """One tensor of the graph.

    Attributes:
        index: the tensor id (the TFLite tensor index for models read from a flatbuffer).
        name: the tensor name (TFLite names can be empty or repeated).
        dtype: numpy dtype name of the stored values.
        shape: static shape; dimension 0 is the batch for activations.
        scale: float32 scale (scalar, or per-channel array for weights), None if not quantized.
        zero_point: int zero point (scalar or per-channel), None if not quantized.
        quantized_dimension: axis of per-channel parameters.
    """

    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    scale: Any = None
    zero_point: Any = None
    quantized_dimension: int = 0

    @property
    def quantized(self) -> bool:
        """True when the tensor carries affine quantization parameters."""
        return self.scale is not None


@dataclasses.dataclass
class Op:
    """One integer op: a TFLite builtin name, activation tensor ids and integer parameters."""

    type: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    name: str = ""


@dataclasses.dataclass
class Graph:
    """A topologically ordered list of ops over integer tensors."""

    tensors: dict[int, TensorInfo] = dataclasses.field(default_factory=dict)
    constants: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    ops: list[Op] = dataclasses.field(default_factory=list)
    inputs: list[int] = dataclasses.field(default_factory=list)
    outputs: list[int] = dataclasses.field(default_factory=list)
    #: name -> input tensor id: the serving signature's input names (a .tflite) or the Keras
    #: input names (from_keras), besides the tensor names
    input_names: dict[str, int] = dataclasses.field(default_factory=dict)

    def add_tensor(self, info: TensorInfo) -> None:
        """Registers a tensor under its index."""
        self.tensors[info.index] = info

    def validate(self) -> None:
        """Checks that every op reads tensors that exist before it runs.

        Raises:
            ValueError: naming the first op whose inputs are undefined or whose type is unknown.
        """
        defined = set(self.inputs) | set(self.constants)
        for position, op in enumerate(self.ops):
            if op.type not in SUPPORTED_OPS:
                raise ValueError(f"op #{position} has unsupported type {op.type!r}")
            missing = [t for t in op.inputs if t not in defined]
            if missing:
                raise ValueError(f"op #{position} ({op.type}) reads undefined tensors {missing}")
            defined.update(op.outputs)
        missing = [t for t in self.outputs if t not in defined]
        if missing:
            raise ValueError(f"graph outputs {missing} are never computed")

    def activation_ids(self) -> list[int]:
        """Ids of every tensor computed at run time (graph inputs, then op outputs in order)."""
        ids = list(self.inputs)
        for op in self.ops:
            ids.extend(op.outputs)
        return ids
