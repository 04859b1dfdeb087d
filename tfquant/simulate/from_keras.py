"""Keras front end of the simulator: a quantized tfquant model -> integer IR, no TFLite involved.

Every integer parameter comes from the model's own quantizers (``Quantizer.quant_params()``,
their ranges) and folded weights (``QuantizeWrapper.folded_weights`` / ``folded_bias``), turned
into TFLite's integer parameters by :mod:`tfquant.simulate.builders`:

* weights: the int8 values of the weight quantizer's fake-quant output, per output channel;
* biases: int32 ``round(bias / (s_in * s_w[c]))``;
* requantisation multipliers and shifts, zero points and fused ReLU/ReLU6 clamps.

Scales and zero points are those the TFLite converter derives from each quantizer's range
(:func:`converter_params`): they equal ``QuantParams`` except, for some ranges, in the last bit of
the scale.

The graph follows what TFLite runs for the same model (a QUANTIZE at a float input, one op per
layer with a following ReLU fused, a separate SOFTMAX/LOGISTIC/TANH after a Dense whose activation
TFLite cannot fuse, a DEQUANTIZE at a float output), so ``IntegerModel.from_keras(qmodel)`` and
``IntegerModel.from_tflite(tfquant.export.tflite(qmodel))`` compute the same integers.

Supported layers: the input quantizer, Conv2D, DepthwiseConv2D and Dense (BN folded, fused
ReLU/ReLU6, or softmax/sigmoid/tanh), Add, MaxPooling2D, AveragePooling2D,
GlobalAveragePooling2D, ReLU/ReLU6, Softmax, Flatten/Reshape, ZeroPadding2D, Dropout/Identity.

Example:
    >>> graph = keras_to_graph(qat)                      # doctest: +SKIP
    >>> [op.type for op in graph.ops][:3]                # doctest: +SKIP
    ['QUANTIZE', 'CONV_2D', 'MAX_POOL_2D']
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np

from tfquant.layers.registry import activation_name
from tfquant.layers.wrapper import QuantizeWrapper
from tfquant.quantizers import Quantizer
from tfquant.qparams import converter_scale_zero_point
from tfquant.simulate import builders as B
from tfquant.simulate.graph import Graph, Op, TensorInfo

L = keras.layers


class UnsupportedLayerError(NotImplementedError):
    """The quantized model has layers :func:`keras_to_graph` cannot express (all are listed)."""


@dataclasses.dataclass
class _Value:
    """An IR tensor standing for a Keras tensor (``pending``: a weighted op whose output
    quantizer, and fused activation, come from the next layer)."""

    index: int
    pending: Any = None


class _Builder:
    def __init__(self, qmodel: keras.Model, input_type: str, output_type: str, fc_requantize: str):
        self.model = qmodel
        self.input_type = input_type
        self.output_type = output_type
        self.fc_requantize = fc_requantize
        self.graph = Graph()
        self.values: dict[int, _Value] = {}
        self.problems: list[str] = []

    # -- tensors -------------------------------------------------------------------------------
    def new_tensor(self, name: str, shape, dtype: str = "int8", scale=None, zp=None) -> int:
        index = len(self.graph.tensors)
        shape = tuple(1 if d is None else int(d) for d in shape)
        scale = None if scale is None else np.float32(scale)
        self.graph.add_tensor(TensorInfo(index, name, dtype, shape, scale,
                                         None if zp is None else int(zp)))
        return index

    def info(self, index: int) -> TensorInfo:
        return self.graph.tensors[index]

    def emit(self, op_type: str, inputs, output: int, params: dict, name: str) -> int:
        self.graph.ops.append(Op(op_type, tuple(inputs), (output,), params, name=name))
        return output

    def quantized(self, value: _Value, layer_name: str) -> int:
        if value.pending is not None:
            raise _Skip(f"{layer_name}: its input is a weighted layer without an output "
                        "quantizer that is not followed by a fused ReLU/ReLU6")
        info = self.info(value.index)
        if info.dtype != "int8":
            raise _Skip(f"{layer_name}: its input is not quantized (the layer runs in float, "
                        "before the model's input quantizer)")
        return value.index

    # -- walking the functional graph ----------------------------------------------------------
    def build(self) -> Graph:
        model = self.model
        for t in model.inputs:
            dtype = "float32" if self.input_type == "float32" else "int8"
            self.values[id(t)] = _Value(self.new_tensor(t.name, t.shape, dtype))
            self.graph.inputs.append(self.values[id(t)].index)
            self.graph.input_names[t.name] = self.values[id(t)].index
        for layer in _ordered_layers(model):
            if isinstance(layer, L.InputLayer):
                continue
            try:
                if len(layer._inbound_nodes) != 1:
                    raise _Skip(f"{layer.name}: layers used more than once are not supported")
                node = layer._inbound_nodes[0]
                inputs = [self.values[id(t)] for t in node.input_tensors]
                out = self.layer(layer, inputs, node)
            except _Skip as problem:
                self.problems.append(str(problem))
                continue
            except KeyError:
                continue        # an input was produced by an unsupported layer (listed already)
            self.values[id(node.output_tensors[0])] = out
        if self.problems:
            raise UnsupportedLayerError("IntegerModel.from_keras cannot simulate these layers:\n"
                                        "  - " + "\n  - ".join(self.problems))
        for t in model.outputs:
            index = self.quantized(self.values[id(t)], "model output")
            if self.output_type == "float32":
                info = self.info(index)
                out = self.new_tensor(f"{info.name}/dequantize", info.shape, "float32")
                index = self.emit("DEQUANTIZE", [index], out,
                                  {"scale": info.scale, "zp": info.zero_point}, info.name)
            self.graph.outputs.append(index)
        self.graph.validate()
        return self.graph

    def layer(self, layer, inputs: list[_Value], node) -> _Value:
        if isinstance(layer, Quantizer):
            return _Value(self.quantizer(layer, inputs[0], node))
        if isinstance(layer, QuantizeWrapper):
            return self.wrapper(layer, inputs, node)
        passthrough = _passthrough(self, layer, inputs, node)
        if passthrough is not None:
            return passthrough
        raise _Skip(f"{layer.name} ({type(layer).__name__}): layer type not supported")

    def quantizer(self, q: Quantizer, value: _Value, node) -> int:
        p = _per_tensor(q, q.name)
        info = self.info(value.index)
        if info.dtype == "int8" and info.scale is None:      # an int8 model input
            self.graph.tensors[value.index] = dataclasses.replace(
                info, scale=np.float32(p.scale), zero_point=int(p.zero_point))
            return value.index
        out = self.new_tensor(q.name, node.output_tensors[0].shape, "int8", p.scale, p.zero_point)
        if info.dtype == "float32":
            return self.emit("QUANTIZE", [value.index], out,
                             {"mode": "float", "scale": np.float32(p.scale),
                              "zp": int(p.zero_point)}, q.name)
        src = self.quantized(value, q.name)
        return self.emit("QUANTIZE", [src], out,
                         B.requantize_params(info.scale, info.zero_point, p.scale, p.zero_point),
                         q.name)

    # -- quantized layers ----------------------------------------------------------------------
    def wrapper(self, w: QuantizeWrapper, inputs: list[_Value], node) -> _Value:
        inner = w.layer
        shape = node.output_tensors[0].shape
        if w.rule.kind == "weighted":
            return self.weighted(w, inputs[0], shape)
        if w.rule.kind == "activation":
            return self.activation(w, inputs[0], shape)
        if isinstance(inner, L.Add) and len(inputs) == 2:
            a, b = (self.quantized(v, inner.name) for v in inputs)
            return self.fusable(w, "ADD", [a, b], shape, lambda s, zp, act: B.add_sub_params(
                self.info(a).scale, self.info(a).zero_point, self.info(b).scale,
                self.info(b).zero_point, s, zp, act))
        if isinstance(inner, (L.GlobalAveragePooling2D, L.AveragePooling2D)):
            return _Value(self.average(w, inputs[0], shape))
        raise _Skip(f"{inner.name} ({type(inner).__name__}): layer type not supported")

    def fusable(self, w: QuantizeWrapper, op_type: str, inputs: list[int], shape, make) -> _Value:
        """An op with a fused-activation clamp; without an output quantizer it waits for the
        ReLU/ReLU6 that TFLite fuses into it (which brings the output parameters)."""
        def finish(out_q: Quantizer, activation: str, out_shape, name: str) -> int:
            p = _per_tensor(out_q, name)
            out = self.new_tensor(name, out_shape, "int8", p.scale, p.zero_point)
            return self.emit(op_type, inputs, out, make(p.scale, p.zero_point, activation), name)

        if w.output_quantizer is None:
            return _Value(-1, pending=finish)
        return _Value(finish(w.output_quantizer, "NONE", shape, w.layer.name))

    def weighted(self, w: QuantizeWrapper, value: _Value, shape) -> _Value:
        inner = w.layer
        x = self.quantized(value, inner.name)
        if not isinstance(inner, (L.Conv2D, L.DepthwiseConv2D, L.Dense)) or \
                isinstance(inner, (L.Conv2DTranspose, L.SeparableConv2D)):
            raise _Skip(f"{inner.name} ({type(inner).__name__}): layer type not supported")
        if getattr(inner, "data_format", "channels_last") != "channels_last":
            raise _Skip(f"{inner.name}: only channels_last is supported")
        if isinstance(inner, L.Conv2D) and getattr(inner, "groups", 1) != 1:
            raise _Skip(f"{inner.name}: grouped convolutions are not supported")
        if isinstance(inner, L.Dense) and len(self.info(x).shape) != 2:
            raise _Skip(f"{inner.name}: Dense on inputs of rank > 2 is not supported")
        op_type, params = _weights(w, self.info(x))
        activation = activation_name(getattr(inner, "activation", None))

        def make(s_out, zp_out, fused):
            return _requant_params(op_type, params, self.info(x), s_out, zp_out, fused,
                                   self.fc_requantize)

        if activation in ("relu", "relu6") and w.output_quantizer is not None:
            p = _per_tensor(w.output_quantizer, inner.name)
            out = self.new_tensor(inner.name, shape, "int8", p.scale, p.zero_point)
            return _Value(self.emit(op_type, [x], out,
                                    make(p.scale, p.zero_point, activation.upper()), inner.name))
        if activation == "linear":
            return self.fusable(w, op_type, [x], shape, make)
        if w.pre_activation_quantizer is None or w.output_quantizer is None:
            raise _Skip(f"{inner.name}: activation {activation!r} needs pre-activation and output "
                        "quantizers")
        p = _per_tensor(w.pre_activation_quantizer, inner.name)
        pre = self.new_tensor(f"{inner.name}/pre_activation", shape, "int8", p.scale,
                              p.zero_point)
        self.emit(op_type, [x], pre, make(p.scale, p.zero_point, "NONE"), inner.name)
        return _Value(self.unary(activation, pre, w.output_quantizer, shape, inner.name))

    def unary(self, activation: str, x: int, out_q: Quantizer, shape, name: str) -> int:
        info = self.info(x)
        p = _per_tensor(out_q, name)
        out = self.new_tensor(f"{name}/{activation}", shape, "int8", p.scale, p.zero_point)
        if activation == "softmax":
            if int(p.zero_point) != -128:
                raise _Skip(f"{name}: softmax output zero point must be -128")
            return self.emit("SOFTMAX", [x], out, B.softmax_params(1.0, info.scale), name)
        if activation in ("sigmoid", "tanh"):
            build = B.logistic_lut if activation == "sigmoid" else B.tanh_lut
            return self.emit("LOGISTIC" if activation == "sigmoid" else "TANH", [x], out,
                             {"lut": build(info.scale, info.zero_point, p.scale, p.zero_point)},
                             name)
        if activation in ("relu", "relu6"):
            return self.emit(activation.upper(), [x], out, B.relu_params(
                activation.upper(), info.scale, info.zero_point, p.scale, p.zero_point), name)
        raise _Skip(f"{name}: activation {activation!r} is not supported")

    def activation(self, w: QuantizeWrapper, value: _Value, shape) -> _Value:
        activation = activation_name(w.layer)
        if value.pending is not None:
            if activation not in ("relu", "relu6") or w.output_quantizer is None:
                raise _Skip(f"{w.layer.name}: only ReLU/ReLU6 fuse into the layer before")
            return _Value(value.pending(w.output_quantizer, activation.upper(), shape,
                                        w.layer.name))
        if w.output_quantizer is None:
            raise _Skip(f"{w.layer.name}: activation without an output quantizer")
        x = self.quantized(value, w.layer.name)
        return _Value(self.unary(activation, x, w.output_quantizer, shape, w.layer.name))

    def average(self, w: QuantizeWrapper, value: _Value, shape) -> int:
        inner = w.layer
        x = self.quantized(value, inner.name)
        info = self.info(x)
        if w.output_quantizer is None:
            raise _Skip(f"{inner.name}: average pooling without an output quantizer")
        p = _per_tensor(w.output_quantizer, inner.name)
        out = self.new_tensor(inner.name, shape, "int8", p.scale, p.zero_point)
        if isinstance(inner, L.GlobalAveragePooling2D):
            h, wd = info.shape[1], info.shape[2]
            params = B.mean_params(info.scale, info.zero_point, p.scale, p.zero_point, h * wd)
            params.update(axes=(1, 2), keep_dims=bool(inner.keepdims))
            return self.emit("MEAN", [x], out, params, inner.name)
        # TFLite's int8 AVERAGE_POOL_2D keeps its input's parameters; a requantize follows.
        pooled = self.new_tensor(f"{inner.name}/pool", shape, "int8", info.scale,
                                 info.zero_point)
        self.emit("AVERAGE_POOL_2D", [x], pooled, {
            "filter": tuple(inner.pool_size), "strides": tuple(inner.strides),
            "padding": inner.padding.upper(), "act_min": -128, "act_max": 127}, inner.name)
        if (np.float32(p.scale), int(p.zero_point)) == (info.scale, info.zero_point):
            self.graph.tensors[out] = dataclasses.replace(self.info(pooled), index=out)
            return self.emit("RESHAPE", [pooled], out, {"new_shape": (-1, *shape[1:])},
                             inner.name)
        return self.emit("QUANTIZE", [pooled], out, B.requantize_params(
            info.scale, info.zero_point, p.scale, p.zero_point), inner.name)


class _Skip(Exception):
    """Internal: one layer cannot be expressed (collected into UnsupportedLayerError)."""


def _ordered_layers(model: keras.Model) -> list:
    """Layers in an order where every layer comes after its inputs (Keras keeps that order)."""
    return list(model.layers)


@dataclasses.dataclass(frozen=True)
class ConverterParams:
    """Scale(s) and zero point(s) as the TFLite converter stores them for one quantizer."""

    scale: Any
    zero_point: Any


def converter_params(q: Quantizer) -> ConverterParams:
    """The scale and zero point TFLite stores for a quantizer's FakeQuant op.

    :class:`~tfquant.qparams.QuantParams` follow TF's FakeQuant kernel, which derives the scale
    in float32: ``(max - min) / (qmax - qmin)``. The converter reads the same ``min``/``max``
    and recomputes in double (then stores the scale as float32), taking the zero point from
    whichever end gives the smaller rounding error. The two agree except in the last bit of the
    scale for some ranges (where ``max - min`` is not exact in float32): the integer model must
    then use the converter's value to compute what TFLite computes.

    Example:
        >>> converter_params(qmodel.get_layer("input_quantizer")).scale     # doctest: +SKIP
        0.003921569
    """
    p = q.quant_params()
    lo, hi = (keras.ops.convert_to_numpy(t) for t in q.current_range())
    scale, zp = converter_scale_zero_point(lo, hi, p.bits, p.narrow_range, p.signed)
    if not p.per_axis:
        return ConverterParams(scale[0], int(zp[0]))
    return ConverterParams(scale, zp)


def _per_tensor(q: Quantizer, name: str) -> ConverterParams:
    if not q.enabled:
        raise _Skip(f"{name}: quantizer {q.name!r} is disabled")
    p = q.quant_params()
    if p.per_axis or p.bits != 8 or not p.signed:
        raise _Skip(f"{name}: quantizer {q.name!r} is not per-tensor signed 8-bit")
    return converter_params(q)


def _weights(w: QuantizeWrapper, x_info: TensorInfo) -> tuple[str, dict]:
    """int8 weights and int32 biases from the weight quantizer's fake-quant output."""
    inner = w.layer
    q = w.weight_quantizers.get("kernel")
    if q is None or not q.enabled:
        raise _Skip(f"{inner.name}: weights are not quantized")
    p = q.quant_params()
    if p.bits > 8 or not p.symmetric:
        raise _Skip(f"{inner.name}: weights must be symmetric int8 (zero point 0)")
    folded = w.folded_weights()["kernel"]
    fake = np.asarray(q(folded, training=False), np.float64)
    stored = np.asarray(converter_params(q).scale, np.float32)     # scalar or per channel
    scales = stored.reshape(-1)
    if isinstance(inner, L.DepthwiseConv2D):
        kh, kw, cin, mult = fake.shape
        filt = np.rint(fake.reshape(kh, kw, cin * mult) / scales)
        filt, op_type = filt.reshape(1, kh, kw, cin * mult), "DEPTHWISE_CONV_2D"
    elif isinstance(inner, L.Conv2D):
        filt, op_type = np.rint(fake / scales).transpose(3, 0, 1, 2), "CONV_2D"
    else:
        filt, op_type = np.rint(fake / scales).T, "FULLY_CONNECTED"
    channels = filt.shape[-1] if op_type == "DEPTHWISE_CONV_2D" else filt.shape[0]
    scales = np.repeat(scales, channels) if scales.size == 1 else scales
    bias = w.folded_bias()
    if bias is not None:
        bias_scale = np.float64(x_info.scale) * scales.astype(np.float64)
        bias = np.rint(np.asarray(bias, np.float64) / bias_scale).astype(np.int64)
        bias = np.clip(bias, -(1 << 31), (1 << 31) - 1)
    params = {"filter": np.clip(filt, -127, 127).astype(np.int8), "bias": bias,
              "filter_scales": stored, "channels": channels}
    if op_type != "FULLY_CONNECTED":
        params.update(strides=tuple(inner.strides), dilations=tuple(inner.dilation_rate),
                      padding=inner.padding.upper())
    if op_type == "DEPTHWISE_CONV_2D":
        params["depth_multiplier"] = int(inner.depth_multiplier)
    return op_type, params


def _requant_params(op_type: str, weights: dict, x: TensorInfo, s_out, zp_out,
                    activation: str, fc_requantize: str) -> dict:
    params = {k: v for k, v in weights.items() if k not in ("filter_scales", "channels")}
    act_min, act_max = B.activation_range(activation, s_out, zp_out)
    params.update(input_zp=int(x.zero_point), output_zp=int(zp_out), act_min=act_min,
                  act_max=act_max)
    if op_type == "FULLY_CONNECTED":
        m, e, real = B.fc_multipliers(x.scale, weights["filter_scales"], s_out,
                                      weights["channels"])
        params.update(filter_zp=0, multiplier=m, shift=e, real_multiplier=real,
                      requantize=fc_requantize, keep_num_dims=False)
    else:
        m, e = B.conv_multipliers(x.scale, weights["filter_scales"], s_out, weights["channels"])
        params.update(multiplier=m, shift=e)
    return params


def _passthrough(builder: _Builder, layer, inputs: list[_Value], node) -> _Value | None:
    """Layers that move int8 values without changing their parameters."""
    shape = node.output_tensors[0].shape
    if isinstance(layer, (L.Dropout, L.SpatialDropout2D, L.GaussianNoise, L.GaussianDropout,
                          L.Identity, L.ActivityRegularization)):
        return inputs[0]
    if not isinstance(layer, (L.MaxPooling2D, L.AveragePooling2D, L.Flatten, L.Reshape,
                              L.ZeroPadding2D)):
        return None
    x = builder.quantized(inputs[0], layer.name)
    info = builder.info(x)
    out = builder.new_tensor(layer.name, shape, "int8", info.scale, info.zero_point)
    if isinstance(layer, (L.MaxPooling2D, L.AveragePooling2D)):
        kind = "MAX_POOL_2D" if isinstance(layer, L.MaxPooling2D) else "AVERAGE_POOL_2D"
        return _Value(builder.emit(kind, [x], out, {
            "filter": tuple(layer.pool_size), "strides": tuple(layer.strides),
            "padding": layer.padding.upper(), "act_min": -128, "act_max": 127}, layer.name))
    if isinstance(layer, L.ZeroPadding2D):
        (top, bottom), (left, right) = layer.padding
        return _Value(builder.emit("PAD", [x], out, {
            "paddings": ((0, 0), (top, bottom), (left, right), (0, 0)),
            "pad_value": int(info.zero_point)}, layer.name))
    return _Value(builder.emit("RESHAPE", [x], out, {"new_shape": (-1, *builder.info(
        out).shape[1:])}, layer.name))


def keras_to_graph(qmodel: keras.Model, input_type: str = "float32",
                   output_type: str | None = None, fc_requantize: str = "double") -> Graph:
    """Builds the integer IR of a quantized tfquant model from its QuantParams.

    Args:
        qmodel: a functional model from :func:`tfquant.quantize_model` (QAT or calibrated).
        input_type: ``"float32"`` (a QUANTIZE op at each input, as the default TFLite export) or
            ``"int8"``.
        output_type: like ``input_type`` (default: the same).
        fc_requantize: FullyConnected requantisation (see ``IntegerModel.from_tflite``).

    Raises:
        UnsupportedLayerError: listing every layer that cannot be simulated.

    Example:
        >>> graph = keras_to_graph(qat, input_type="int8")       # doctest: +SKIP
    """
    output_type = output_type or input_type
    for name, value in (("input_type", input_type), ("output_type", output_type)):
        if value not in ("float32", "int8"):
            raise ValueError(f"{name}={value!r} must be 'float32' or 'int8'")
    if not isinstance(qmodel, keras.Model) or not hasattr(qmodel, "_inbound_nodes"):
        raise TypeError(f"expected a Keras model, got {type(qmodel).__name__}")
    return _Builder(qmodel, input_type, output_type, fc_requantize).build()
