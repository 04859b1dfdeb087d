"""Which tensors of which layer type are quantized, looked up by class hierarchy.

Kinds of layers:

* ``"weighted"``: weights are fake-quantized and the layer is recomputed from them
  (Conv*, DepthwiseConv*, SeparableConv*, Conv*Transpose, Dense); a following
  BatchNormalization can be folded in and a following ReLU/ReLU6 fused.
* ``"output"``: only the output is quantized (Add, Concatenate, pooling that averages, ...).
* ``"activation"``: an activation layer; ReLU/ReLU6 fuse into the preceding layer, sigmoid /
  softmax / tanh get the fixed output ranges TFLite enforces.
* ``"passthrough"``: TFLite shares the input's parameters (reshape, max-pool, padding,
  dropout ..., and average pooling, whose int8 kernel rounds to the input's grid): no quantizer.

Users add their own layer type with :func:`register_layer`.

Example:
    >>> class Scale(keras.layers.Layer):
    ...     def call(self, x):
    ...         return 2.0 * x
    >>> register_layer(Scale, kind="output")
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import keras
import tensorflow as tf
from keras import ops

from tfquant.fake_quant import tracing_for_tflite

KINDS = ("weighted", "output", "activation", "passthrough")

# forward(layer, inputs, weights, quantize_intermediate) -> output before bias and activation
Forward = Callable[..., object]


@dataclasses.dataclass(frozen=True)
class LayerRule:
    """How one layer type is quantized.

    Attributes:
        kind: one of :data:`KINDS`.
        weights: ``(attribute, channel_axis)`` pairs of the weights to quantize; the channel
            axis is an int or a tuple of contiguous axes (depthwise: ``(in, multiplier)``).
        forward: for weighted layers, computes the layer from (quantized) weights, without
            bias and activation: ``forward(layer, x, weights, quantize_intermediate)``. Other
            kinds may set it to compute the layer in a form TFLite converts to an int8 op
            (called with empty weights).
        foldable: whether a following BatchNormalization may be folded into the last weight.
        fuses_activation: whether TFLite fuses a ReLU/ReLU6 into the op (it does not for
            TRANSPOSE_CONV): if not, the pre-activation values get their own quantizer.
        matrix_input: the layer acts on the last axis of any-rank inputs (Dense): the wrapper
            computes it on a ``[-1, channels]`` view, one FULLY_CONNECTED in TFLite.
        weight_view: ``weight_view(layer, weights) -> weights``: the form the weights are
            quantized in (and ``forward`` receives) during training and export, when the
            converter needs the FakeQuant on that form (a Conv1D kernel with the leading axis
            of CONV_2D). It must only reshape, so quantizing before or after it gives the same
            values; ``forward`` also accepts the plain weights (PTQ passes those).
    """

    kind: str
    weights: tuple[tuple[str, int | tuple[int, ...]], ...] = ()
    forward: Forward | None = None
    foldable: bool = False
    fuses_activation: bool = True
    matrix_input: bool = False
    weight_view: Callable[..., dict] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r} must be one of {KINDS}")
        if self.kind == "weighted" and (not self.weights or self.forward is None):
            raise ValueError("a 'weighted' rule needs weights and a forward function")


_REGISTRY: dict[type, LayerRule] = {}


def register_layer(layer_cls: type, kind: str = "output",
                   weights: Sequence[tuple[str, int | tuple[int, ...]]] = (),
                   forward: Forward | None = None, foldable: bool = False,
                   fuses_activation: bool = True, matrix_input: bool = False,
                   weight_view: Callable[..., dict] | None = None) -> LayerRule:
    """Registers how ``layer_cls`` (and its subclasses) are quantized.

    Args:
        layer_cls: a ``keras.layers.Layer`` subclass.
        kind: ``"weighted"``, ``"output"``, ``"activation"`` or ``"passthrough"``.
        weights: for weighted layers, ``(attribute_name, channel_axis)`` pairs.
        forward: for weighted layers, ``forward(layer, x, weights, quantize_intermediate)``
            returning the output before bias and activation.
        foldable: allow folding a following BatchNormalization into the last weight.
        fuses_activation: False when TFLite keeps a ReLU/ReLU6 after this op as its own op
            (its input then gets a quantizer too).
        matrix_input: True for layers that act on the last axis only (like Dense): inputs of
            rank > 2 are then flattened to a matrix around the quantized computation.
        weight_view: see :class:`LayerRule`.

    Returns:
        The registered :class:`LayerRule`.

    Example:
        >>> register_layer(MyPassThrough, kind="passthrough")
    """
    if not (isinstance(layer_cls, type) and issubclass(layer_cls, keras.layers.Layer)):
        raise TypeError(f"register_layer needs a keras.layers.Layer subclass, got {layer_cls!r}")
    rule = LayerRule(kind, tuple((w, a) for w, a in weights), forward, foldable,
                     fuses_activation, matrix_input, weight_view)
    _REGISTRY[layer_cls] = rule
    return rule


def registered_type_names() -> set[str]:
    """Class names of every registered layer type (built-in and user-registered)."""
    return {cls.__name__ for cls in _REGISTRY}


def rule_for(layer) -> LayerRule | None:
    """The rule of the most derived registered class of ``layer`` (None: unsupported).

    ``layer`` is a Keras layer or a ``keras.ops`` operation of a Functional graph (element-wise
    ``+ - *`` written as ``x + 3.0`` become ``Add``/``Subtract``/``Multiply`` operations)."""
    for cls in type(layer).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    return None


# ------------------------------------------------------------------ activations
FUSABLE_ACTIVATIONS = ("linear", "relu", "relu6")
# Output ranges TFLite enforces for int8 (real = scale * (q - zp)): sigmoid/softmax
# scale 1/256, zp -128 -> [0, 255/256]; tanh scale 1/128, zp 0 -> [-1, 127/128].
FIXED_OUTPUT_RANGES = {"sigmoid": (0.0, 255.0 / 256.0), "softmax": (0.0, 255.0 / 256.0),
                       "tanh": (-1.0, 127.0 / 128.0)}


def normalizes_last_axis(bn: keras.layers.Layer, rank: int | None) -> bool:
    """Whether BatchNormalization ``bn`` normalises the last (channel) axis of a tensor of
    rank ``rank``: the only BN a weighted layer can fold (per output channel) or carry.

    Example:
        >>> normalizes_last_axis(keras.layers.BatchNormalization(), 4)
        True
    """
    axis = bn.axis if isinstance(bn.axis, int) else (bn.axis[0] if len(bn.axis) == 1 else None)
    return axis is not None and rank is not None and axis % rank == rank - 1


def activation_name(fn_or_layer) -> str:
    """A canonical name for an activation function or activation layer ("relu", "relu6",
    "sigmoid", "softmax", "tanh", "linear", ... or "other")."""
    layer = fn_or_layer
    if isinstance(layer, keras.layers.ReLU):
        slope = float(layer.negative_slope)
        threshold = float(layer.threshold)
        if slope != 0.0 or threshold != 0.0:
            return "other"
        if layer.max_value is None:
            return "relu"
        return "relu6" if float(layer.max_value) == 6.0 else "other"
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    if isinstance(layer, keras.layers.LeakyReLU):
        return "leaky_relu"
    if isinstance(layer, keras.layers.Activation):
        return activation_name(layer.activation)
    fn = fn_or_layer
    if fn is None:
        return "linear"
    name = getattr(fn, "__name__", "") or ""
    aliases = {"silu": "swish", "hard_silu": "hard_swish"}
    name = aliases.get(name, name)
    known = ("linear", "relu", "relu6", "sigmoid", "softmax", "tanh", "hard_sigmoid",
             "hard_swish", "swish", "elu", "gelu", "leaky_relu")
    return name if name in known else "other"


# --------------------------------------------------------------- forward passes
def _conv_forward(layer, x, weights, quantize_intermediate=None):
    if getattr(layer, "padding", None) == "causal":
        k = (layer.kernel_size[0] - 1) * layer.dilation_rate[0]
        x = ops.pad(x, [[0, 0], [k, 0], [0, 0]])
        padding = "valid"
    else:
        padding = layer.padding
    kernel = weights["kernel"]
    if layer.rank == 1 and len(kernel.shape) == 4:         # the CONV_2D view of a Conv1D
        strides, dilations = (1, *layer.strides), (1, *layer.dilation_rate)
        x = tf.expand_dims(x, 1)
        if max(dilations) > 1:
            y = _dilated_conv2d(x, kernel, strides, padding.upper(), dilations)
        else:
            y = tf.nn.conv2d(x, kernel, strides=(1, *strides, 1), padding=padding.upper())
        return tf.squeeze(y, 1)
    if (layer.rank == 2 and layer.data_format == "channels_last" and layer.groups == 1
            and max(layer.dilation_rate) > 1):
        return _dilated_conv2d(x, kernel, tuple(layer.strides), padding.upper(),
                               tuple(layer.dilation_rate))
    return ops.conv(x, kernel, strides=layer.strides, padding=padding,
                    data_format=layer.data_format, dilation_rate=layer.dilation_rate)


def _conv_weight_view(layer, weights: dict) -> dict:
    # A Conv1D kernel [k, in, out] as CONV_2D's [1, k, in, out]: the converter rejects a
    # per-channel FakeQuant followed by the reshape TF's conv1d adds.
    if layer.rank == 1 and layer.data_format == "channels_last" and layer.groups == 1:
        return {**weights, "kernel": tf.expand_dims(weights["kernel"], 0)}
    return weights


def _dilated_conv2d(x, kernel, strides: tuple, padding: str, dilations: tuple):
    """A dilated 2-D convolution as one ``Conv2D`` op, which converts to a dilated CONV_2D.

    ``keras.ops.conv`` dilates through SpaceToBatchND/BatchToSpaceND, which the TFLite
    converter leaves in float around a fake-quantized kernel. TF's CPU kernels have the dilated
    forward op but not its gradient, so the gradient is that of the SpaceToBatch form (the
    same function).
    """
    @tf.custom_gradient
    def conv(x, kernel):
        y = tf.nn.conv2d(x, kernel, strides=(1, *strides, 1), padding=padding,
                         dilations=(1, *dilations, 1))

        def grad(dy):
            with tf.GradientTape() as tape:
                tape.watch([x, kernel])
                same = tf.nn.convolution(x, kernel, strides=strides, padding=padding,
                                         dilations=dilations)
            return tape.gradient(same, [x, kernel], output_gradients=dy)

        return y, grad

    return conv(x, kernel)


def _depthwise_forward(layer, x, weights, quantize_intermediate=None):
    if (max(layer.dilation_rate) > 1 and layer.rank == 2 and tracing_for_tflite()
            and layer.data_format == "channels_last"):
        # One dilated DepthwiseConv2dNative converts to a dilated DEPTHWISE_CONV_2D; TF's CPU
        # kernel lacks it, so training and Keras inference keep the SpaceToBatch form (the same
        # function), which the converter would leave in float.
        return tf.raw_ops.DepthwiseConv2dNative(
            input=x, filter=weights["kernel"], strides=[1, *layer.strides, 1],
            padding=layer.padding.upper(), dilations=[1, *layer.dilation_rate, 1])
    return ops.depthwise_conv(x, weights["kernel"], strides=layer.strides,
                              padding=layer.padding, data_format=layer.data_format,
                              dilation_rate=layer.dilation_rate)


def _separable_forward(layer, x, weights, quantize_intermediate=None):
    # TFLite runs this as DEPTHWISE_CONV_2D then CONV_2D: the intermediate is quantized.
    y = ops.depthwise_conv(x, weights["depthwise_kernel"], strides=layer.strides,
                           padding=layer.padding, data_format=layer.data_format,
                           dilation_rate=layer.dilation_rate)
    if quantize_intermediate is not None:
        y = quantize_intermediate(y)
    return ops.conv(y, weights["pointwise_kernel"], strides=1, padding="valid",
                    data_format=layer.data_format)


def _conv_transpose_forward(layer, x, weights, quantize_intermediate=None):
    return ops.conv_transpose(x, weights["kernel"], strides=layer.strides,
                              padding=layer.padding, output_padding=layer.output_padding,
                              data_format=layer.data_format, dilation_rate=layer.dilation_rate)


def _upsampling_forward(layer, x, weights=None, quantize_intermediate=None):
    # Keras 3 repeats rows and columns for "nearest", which converts to TILE ops (version 3 for
    # int8, newer than the LiteRT runtime knows); the same values as RESIZE_NEAREST_NEIGHBOR.
    if (layer.interpolation != "nearest" or layer.data_format != "channels_last"
            or x.shape[1] is None or x.shape[2] is None):
        return layer(x)
    height, width = int(x.shape[1]), int(x.shape[2])
    size = (height * layer.size[0], width * layer.size[1])
    return tf.compat.v1.image.resize_nearest_neighbor(x, size, align_corners=False,
                                                      half_pixel_centers=False)


def _dense_forward(layer, x, weights, quantize_intermediate=None):
    return ops.matmul(x, weights["kernel"])


def _register_builtins() -> None:
    L = keras.layers
    from keras.src.layers.convolutional.base_conv import BaseConv
    from keras.src.layers.convolutional.base_conv_transpose import BaseConvTranspose
    from keras.src.layers.convolutional.base_depthwise_conv import BaseDepthwiseConv
    from keras.src.layers.convolutional.base_separable_conv import BaseSeparableConv

    register_layer(BaseConv, "weighted", [("kernel", -1)], _conv_forward, foldable=True,
                   weight_view=_conv_weight_view)
    # depthwise kernel (..., in, multiplier): TFLite's output channel is in * multiplier.
    register_layer(BaseDepthwiseConv, "weighted", [("kernel", (-2, -1))],
                   _depthwise_forward, foldable=True)
    register_layer(BaseSeparableConv, "weighted",
                   [("depthwise_kernel", (-2, -1)), ("pointwise_kernel", -1)],
                   _separable_forward, foldable=True)
    # transpose-conv kernel (..., out, in); the converter leaves its activation a separate op
    register_layer(BaseConvTranspose, "weighted", [("kernel", -2)], _conv_transpose_forward,
                   foldable=True, fuses_activation=False)
    register_layer(L.Dense, "weighted", [("kernel", -1)], _dense_forward, foldable=True,
                   matrix_input=True)

    for cls in (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum, L.Concatenate,
                L.GlobalAveragePooling1D,
                L.GlobalAveragePooling2D, L.Rescaling, L.Normalization, L.BatchNormalization,
                L.Resizing):
        register_layer(cls, "output")
    register_layer(L.UpSampling2D, "output", forward=_upsampling_forward)
    for cls in (L.ReLU, L.Activation, L.Softmax, L.LeakyReLU, L.ELU, L.PReLU):
        register_layer(cls, "activation")
    # int8 AVERAGE_POOL_2D keeps its input's scale and zero point (the converter rejects a
    # different output range where the scale propagates, e.g. into a Concatenate: DenseNet)
    for cls in (L.InputLayer, L.Reshape, L.Flatten, L.MaxPooling1D, L.MaxPooling2D,
                L.AveragePooling1D, L.AveragePooling2D,
                L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.ZeroPadding1D, L.ZeroPadding2D,
                L.Cropping1D, L.Cropping2D, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D,
                L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.Permute, L.Identity,
                L.RepeatVector, L.ActivityRegularization):
        register_layer(cls, "passthrough")
    # keras.ops operations recorded in Functional graphs (e.g. MobileNetV3's hard sigmoid
    # ``ReLU(6.0)(x + 3.0) * (1.0 / 6.0)``): output-quantized like the matching layers.
    from keras.src.ops import numpy as knp
    for cls in (knp.Add, knp.Subtract, knp.Multiply):
        _REGISTRY[cls] = LayerRule("output")


_register_builtins()
