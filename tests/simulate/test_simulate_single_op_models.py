"""Hand-built int8 TFLite flatbuffers (one op per tensor pair, many ops per model) against the
LiteRT interpreter with reference kernels: every int8 input value or pair of values, random
scales/zero points, plus the reader's error handling (corrupt files, unsupported ops)."""

from __future__ import annotations

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as S
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tfquant.simulate import IntegerModel, UnsupportedModelError

I8, I32, F32 = S.TensorType.INT8, S.TensorType.INT32, S.TensorType.FLOAT32
ALL_INT8 = np.arange(-128, 128, dtype=np.int8)[None]


class ModelBuilder:
    """Builds a single-subgraph TFLite model with the schema's object API."""

    def __init__(self):
        self.tensors, self.buffers = [], [S.BufferT()]
        self.codes, self.operators, self.inputs, self.outputs = [], [], [], []

    def tensor(self, shape, ttype, scale=None, zp=None, data=None, graph_input=False,
               graph_output=False, name=None, axis=0):
        t = S.TensorT()
        t.shape, t.type = list(shape), ttype
        t.shapeSignature = list(shape)
        t.name = name or f"t{len(self.tensors)}"
        buffer = S.BufferT()
        if data is not None:
            buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
        self.buffers.append(buffer)
        t.buffer = len(self.buffers) - 1
        if scale is not None:
            q = S.QuantizationParametersT()
            q.scale = [float(v) for v in np.atleast_1d(scale)]
            q.zeroPoint = [int(v) for v in np.atleast_1d(zp)]
            q.quantizedDimension = axis
            t.quantization = q
        self.tensors.append(t)
        index = len(self.tensors) - 1
        if graph_input:
            self.inputs.append(index)
        if graph_output:
            self.outputs.append(index)
        return index

    def op(self, name, inputs, outputs, options=None, options_type=None):
        code = getattr(S.BuiltinOperator, name)
        if code not in self.codes:
            self.codes.append(code)
        op = S.OperatorT()
        op.opcodeIndex = self.codes.index(code)
        op.inputs, op.outputs = list(inputs), list(outputs)
        if options is not None:
            op.builtinOptionsType = getattr(S.BuiltinOptions, options_type)
            op.builtinOptions = options
        self.operators.append(op)

    def unary(self, name, shape, in_q, out_q, options=None, options_type=None,
              in_type=I8, out_type=I8):
        x = self.tensor(shape, in_type, *in_q, graph_input=True)
        y = self.tensor(shape, out_type, *out_q, graph_output=True)
        self.op(name, [x], [y], options, options_type)

    def build(self) -> bytes:
        model = S.ModelT()
        model.version = 3
        model.operatorCodes = []
        for code in self.codes:
            c = S.OperatorCodeT()
            c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 1
            model.operatorCodes.append(c)
        graph = S.SubGraphT()
        graph.tensors, graph.operators = self.tensors, self.operators
        graph.inputs, graph.outputs, graph.name = self.inputs, self.outputs, "main"
        model.subgraphs, model.buffers, model.description = [graph], self.buffers, "test"
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def options(cls, **fields):
    o = getattr(S, cls)()
    for k, v in fields.items():
        setattr(o, k, v)
    return o


def reference(model: bytes, xs: list[np.ndarray]) -> list[np.ndarray]:
    it = Interpreter(model_content=model, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    for d, x in zip(it.get_input_details(), xs):
        if tuple(d["shape"]) != x.shape:
            it.resize_tensor_input(d["index"], x.shape)
    it.allocate_tensors()
    for d, x in zip(it.get_input_details(), xs):
        it.set_tensor(d["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


def assert_bit_exact(model: bytes, xs: list[np.ndarray]):
    """The simulator equals the reference kernels, XLA-compiled and run eagerly."""
    want = reference(model, xs)
    for jit_compile in (True, False):
        got = IntegerModel.from_tflite(model, jit_compile=jit_compile)(*xs)
        got = got if isinstance(got, list) else [got]
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want)):
            assert g.dtype == w.dtype and g.shape == w.shape
            mismatch = np.flatnonzero(g != w)
            assert mismatch.size == 0, (f"jit_compile={jit_compile}, output {i}: "
                                        f"{mismatch.size} of {g.size} values differ, "
                                        f"max {np.abs(g.astype(float) - w).max()} LSB")


def random_q(rng, low=-7.0, high=2.0):
    return float(np.exp(rng.uniform(low, high))), int(rng.integers(-128, 128))


# ----------------------------------------------------------------------------------------------
# element-wise unary ops: all 256 int8 inputs
# ----------------------------------------------------------------------------------------------
def test_unary_ops_on_every_int8_value():
    rng = np.random.default_rng(0)
    mb = ModelBuilder()
    for config in range(5):
        for name in ["LOGISTIC", "TANH", "HARD_SWISH", "LEAKY_RELU", "RELU", "RELU6",
                     "RELU_N1_TO_1", "QUANTIZE"]:
            in_q = random_q(rng)
            out_q = {"LOGISTIC": (1 / 256, -128), "TANH": (1 / 128, 0)}.get(name, random_q(rng))
            if name == "HARD_SWISH":     # TFLite requires output_multiplier <= 1 (exponent <= 0)
                out_q = (in_q[0] * float(rng.uniform(0.3, 2.0)), out_q[1])
            opt = (options("LeakyReluOptionsT", alpha=float(rng.uniform(0.01, 0.9))),
                   "LeakyReluOptions") if name == "LEAKY_RELU" else (None, None)
            mb.unary(name, (1, 256), in_q, out_q, *opt)
    model = mb.build()
    assert_bit_exact(model, [ALL_INT8] * len(mb.inputs))


def test_quantize_from_float_and_dequantize():
    rng = np.random.default_rng(1)
    mb = ModelBuilder()
    xs = []
    for _ in range(4):
        scale, zp = random_q(rng)
        mb.unary("QUANTIZE", (1, 2048), (None, None), (scale, zp), in_type=F32)
        x = (rng.normal(size=(1, 2048)) * scale * 60).astype(np.float32)
        x[0, :64] = ((np.arange(-32, 32) + 0.5) * np.float32(scale)).astype(np.float32)  # ties
        xs.append(x)
        mb.unary("DEQUANTIZE", (1, 256), random_q(rng), (None, None), out_type=F32)
        xs.append(ALL_INT8)
    assert_bit_exact(mb.build(), xs)


# ----------------------------------------------------------------------------------------------
# element-wise binary ops: all 65536 pairs of int8 values, fused activations
# ----------------------------------------------------------------------------------------------
def test_binary_ops_on_every_pair():
    rng = np.random.default_rng(2)
    a = np.repeat(ALL_INT8, 256, axis=1)
    b = np.tile(ALL_INT8, (1, 256))
    mb = ModelBuilder()
    for config in range(3):
        for name, opt_name in [("ADD", "AddOptions"), ("SUB", "SubOptions"),
                               ("MUL", "MulOptions")]:
            q1, q2, qo = random_q(rng), random_q(rng), random_q(rng)
            if config == 0:
                q2 = (q1[0], q2[1])                      # equal input scales
            x1 = mb.tensor((1, 65536), I8, *q1, graph_input=True)
            x2 = mb.tensor((1, 65536), I8, *q2, graph_input=True)
            y = mb.tensor((1, 65536), I8, *qo, graph_output=True)
            act = [0, 1, 3, 2][(config + len(mb.operators)) % 4]   # NONE, RELU, RELU6, N1_TO_1
            mb.op(name, [x1, x2], [y], options(opt_name + "T", fusedActivationFunction=act),
                  opt_name)
    assert_bit_exact(mb.build(), [a, b] * (len(mb.inputs) // 2))


def test_binary_ops_broadcast_and_constant_operands():
    rng = np.random.default_rng(3)
    mb = ModelBuilder()
    xs = []
    for name, opt_name in [("ADD", "AddOptions"), ("SUB", "SubOptions"), ("MUL", "MulOptions")]:
        x = mb.tensor((1, 4, 5, 8), I8, *random_q(rng), graph_input=True)
        c = mb.tensor((1, 1, 1, 8), I8, *random_q(rng), graph_input=True)
        k = mb.tensor((8,), I8, *random_q(rng), data=rng.integers(-128, 128, 8).astype(np.int8))
        y1 = mb.tensor((1, 4, 5, 8), I8, *random_q(rng), graph_output=True)
        y2 = mb.tensor((1, 4, 5, 8), I8, *random_q(rng), graph_output=True)
        mb.op(name, [x, c], [y1], options(opt_name + "T"), opt_name)
        mb.op(name, [k, x], [y2], options(opt_name + "T"), opt_name)
        xs += [rng.integers(-128, 128, (1, 4, 5, 8)).astype(np.int8),
               rng.integers(-128, 128, (1, 1, 1, 8)).astype(np.int8)]
    assert_bit_exact(mb.build(), xs)


# ----------------------------------------------------------------------------------------------
# Softmax, Mean
# ----------------------------------------------------------------------------------------------
def test_softmax_reference_fixed_point():
    rng = np.random.default_rng(4)
    mb = ModelBuilder()
    xs = []
    for depth, beta in [(5, 1.0), (10, 0.5), (100, 2.0), (256, 1.0)]:
        for _ in range(1):
            mb.unary("SOFTMAX", (64, depth), random_q(rng, -6, 1), (1 / 256, -128),
                     options("SoftmaxOptionsT", beta=beta), "SoftmaxOptions")
            x = rng.integers(-128, 128, (64, depth)).astype(np.int8)
            x[0] = 7                                       # all equal
            x[1, :] = -128
            x[1, 0] = 127                                  # one dominant value
            xs.append(x)
    assert_bit_exact(mb.build(), xs)


def test_mean_requantised_and_same_scale():
    rng = np.random.default_rng(5)
    mb = ModelBuilder()
    xs = []
    for keep, axes, out_shape in [(True, [1, 2], (1, 1, 1, 8)), (False, [1, 2], (1, 8)),
                                  (False, [2], (1, 7, 8)), (True, [3], (1, 7, 9, 1)),
                                  (False, [-1, 1], (1, 9))]:
        for same in (False, True):
            q_in = random_q(rng)
            q_out = q_in if same else random_q(rng)
            x = mb.tensor((1, 7, 9, 8), I8, *q_in, graph_input=True)
            a = mb.tensor((len(axes),), I32, data=np.array(axes, np.int32))
            y = mb.tensor(out_shape, I8, *q_out, graph_output=True)
            mb.op("MEAN", [x, a], [y], options("ReducerOptionsT", keepDims=keep),
                  "ReducerOptions")
            xs.append(rng.integers(-128, 128, (1, 7, 9, 8)).astype(np.int8))
    assert_bit_exact(mb.build(), xs)


# ----------------------------------------------------------------------------------------------
# Conv / Depthwise / FullyConnected with per-tensor and per-channel weights
# ----------------------------------------------------------------------------------------------
def test_conv_depthwise_fc_per_tensor_and_per_channel():
    rng = np.random.default_rng(6)
    mb = ModelBuilder()
    xs = []
    for per_channel in (False, True):
        q_in = random_q(rng, -4, 0)
        x = mb.tensor((1, 7, 6, 4), I8, *q_in, graph_input=True)
        xs.append(rng.integers(-128, 128, (1, 7, 6, 4)).astype(np.int8))
        w_scale = rng.uniform(0.001, 0.01, 6 if per_channel else 1)
        w = mb.tensor((6, 3, 3, 4), I8, w_scale, np.zeros_like(w_scale, np.int64),
                      data=rng.integers(-127, 128, (6, 3, 3, 4)).astype(np.int8))
        bias = mb.tensor((6,), I32, q_in[0] * w_scale, np.zeros_like(w_scale, np.int64),
                         data=rng.integers(-5000, 5000, 6).astype(np.int32))
        y = mb.tensor((1, 4, 3, 6), I8, *random_q(rng, -3, 0), graph_output=True)
        mb.op("CONV_2D", [x, w, bias], [y],
              options("Conv2DOptionsT", padding=S.Padding.SAME, strideW=2, strideH=2,
                      dilationWFactor=1, dilationHFactor=1, fusedActivationFunction=3),
              "Conv2DOptions")
        dw_scale = rng.uniform(0.001, 0.01, 8 if per_channel else 1)
        dw = mb.tensor((1, 3, 3, 8), I8, dw_scale, np.zeros_like(dw_scale, np.int64), axis=3,
                       data=rng.integers(-127, 128, (1, 3, 3, 8)).astype(np.int8))
        dw_bias = mb.tensor((8,), I32, q_in[0] * dw_scale, np.zeros_like(dw_scale, np.int64),
                            data=rng.integers(-3000, 3000, 8).astype(np.int32))
        y = mb.tensor((1, 3, 2, 8), I8, *random_q(rng, -3, 0), graph_output=True)
        mb.op("DEPTHWISE_CONV_2D", [x, dw, dw_bias], [y],
              options("DepthwiseConv2DOptionsT", padding=S.Padding.VALID, strideW=2, strideH=2,
                      depthMultiplier=2, dilationWFactor=1, dilationHFactor=2,
                      fusedActivationFunction=1), "DepthwiseConv2DOptions")
        fc_scale = rng.uniform(0.001, 0.01, 5 if per_channel else 1)
        fc = mb.tensor((5, 168), I8, fc_scale, np.zeros_like(fc_scale, np.int64),
                       data=rng.integers(-127, 128, (5, 168)).astype(np.int8))
        fc_bias = mb.tensor((5,), I32, q_in[0] * fc_scale, np.zeros_like(fc_scale, np.int64),
                            data=rng.integers(-5000, 5000, 5).astype(np.int32))
        y = mb.tensor((1, 5), I8, *random_q(rng, -3, 0), graph_output=True)
        mb.op("FULLY_CONNECTED", [x, fc, fc_bias], [y],
              options("FullyConnectedOptionsT", fusedActivationFunction=0), "FullyConnectedOptions")
    model = mb.build()
    xs = [np.repeat(x, 1, axis=0) for x in xs]
    assert_bit_exact(model, xs)


def test_fully_connected_requantisation_of_the_installed_litert():
    """LiteRT 2.x reference FullyConnected requantises in double; the fixed-point multiplier of
    older TFLite versions differs by one LSB on some outputs (what ``fc_requantize`` selects)."""
    rng = np.random.default_rng(7)
    mb = ModelBuilder()
    x = mb.tensor((1, 64), I8, 0.05, 3, graph_input=True)
    w = mb.tensor((512, 64), I8, rng.uniform(0.001, 0.01, 512), np.zeros(512, np.int64),
                  data=rng.integers(-127, 128, (512, 64)).astype(np.int8))
    y = mb.tensor((1, 512), I8, 0.11, -5, graph_output=True)
    mb.op("FULLY_CONNECTED", [x, w, -1], [y])
    model = mb.build()
    xs = rng.integers(-128, 128, (32, 64)).astype(np.int8)
    want = np.concatenate([reference(model, [row[None]])[0] for row in xs])
    double = IntegerModel.from_tflite(model, fc_requantize="double")(xs)
    fixed = IntegerModel.from_tflite(model, fc_requantize="fixed_point")(xs)
    np.testing.assert_array_equal(IntegerModel.from_tflite(model)(xs), want)
    np.testing.assert_array_equal(double, want)
    assert 0 < np.count_nonzero(fixed != want) and np.abs(fixed.astype(int) - want).max() == 1


# ----------------------------------------------------------------------------------------------
# data movement
# ----------------------------------------------------------------------------------------------
def test_data_movement_ops():
    rng = np.random.default_rng(8)
    q = (0.1, 3)
    mb = ModelBuilder()
    x = mb.tensor((1, 1, 6, 4), I8, *q, graph_input=True)
    y = mb.tensor((1, 6, 4), I8, *q, graph_output=True)
    mb.op("SQUEEZE", [x], [y], options("SqueezeOptionsT", squeezeDims=[1]), "SqueezeOptions")
    perm = mb.tensor((4,), I32, data=np.array([0, 3, 1, 2], np.int32))
    t = mb.tensor((1, 4, 1, 6), I8, *q, graph_output=True)
    mb.op("TRANSPOSE", [x, perm], [t])
    begin = mb.tensor((4,), I32, data=np.array([0, 0, 1, 0], np.int32))
    end = mb.tensor((4,), I32, data=np.array([1, 1, 6, 3], np.int32))
    stride = mb.tensor((4,), I32, data=np.array([1, 1, 2, 1], np.int32))
    s = mb.tensor((1, 3, 3), I8, *q, graph_output=True)
    mb.op("STRIDED_SLICE", [x, begin, end, stride], [s],
          options("StridedSliceOptionsT", shrinkAxisMask=2), "StridedSliceOptions")
    axis = mb.tensor((1,), I32, data=np.array([3], np.int32))
    parts = [mb.tensor((1, 1, 6, 2), I8, *q, graph_output=True) for _ in range(2)]
    mb.op("SPLIT", [axis, x], parts, options("SplitOptionsT", numSplits=2), "SplitOptions")
    pads = mb.tensor((4, 2), I32, data=np.array([[0, 0], [1, 0], [0, 2], [0, 0]], np.int32))
    p = mb.tensor((1, 2, 8, 4), I8, *q, graph_output=True)
    mb.op("PAD", [x, pads], [p])
    size = mb.tensor((2,), I32, data=np.array([3, 9], np.int32))
    r = mb.tensor((1, 3, 9, 4), I8, *q, graph_output=True)
    mb.op("RESIZE_NEAREST_NEIGHBOR", [x, size], [r],
          options("ResizeNearestNeighborOptionsT", alignCorners=False, halfPixelCenters=True),
          "ResizeNearestNeighborOptions")
    new_shape = mb.tensor((2,), I32, data=np.array([1, 24], np.int32))
    f = mb.tensor((1, 24), I8, *q, graph_output=True)
    mb.op("RESHAPE", [x, new_shape], [f])
    c = mb.tensor((1, 1, 6, 8), I8, *q, graph_output=True)
    mb.op("CONCATENATION", [x, x], [c], options("ConcatenationOptionsT", axis=-1),
          "ConcatenationOptions")
    assert_bit_exact(mb.build(), [rng.integers(-128, 128, (1, 1, 6, 4)).astype(np.int8)])


def test_pooling_paddings():
    rng = np.random.default_rng(9)
    mb = ModelBuilder()
    q = random_q(rng)
    x = mb.tensor((1, 7, 8, 3), I8, *q, graph_input=True)
    for name, (fh, fw, sh, sw, pad, out) in [
            ("AVERAGE_POOL_2D", (3, 3, 2, 2, S.Padding.SAME, (1, 4, 4, 3))),
            ("AVERAGE_POOL_2D", (2, 3, 1, 2, S.Padding.VALID, (1, 6, 3, 3))),
            ("MAX_POOL_2D", (3, 2, 2, 1, S.Padding.SAME, (1, 4, 8, 3))),
            ("MAX_POOL_2D", (2, 2, 2, 2, S.Padding.VALID, (1, 3, 4, 3)))]:
        y = mb.tensor(out, I8, *q, graph_output=True)
        mb.op(name, [x], [y], options("Pool2DOptionsT", padding=pad, strideW=sw, strideH=sh,
                                      filterWidth=fw, filterHeight=fh,
                                      fusedActivationFunction=1 if sh == 1 else 0),
              "Pool2DOptions")
    assert_bit_exact(mb.build(), [rng.integers(-128, 128, (1, 7, 8, 3)).astype(np.int8)])


# ----------------------------------------------------------------------------------------------
# reader errors
# ----------------------------------------------------------------------------------------------
def _small_model() -> bytes:
    mb = ModelBuilder()
    mb.unary("TANH", (1, 16), (0.1, 0), (1 / 128, 0))
    return mb.build()


def test_truncated_and_corrupt_flatbuffers_raise_value_error():
    model = _small_model()
    for cut in [0, 3, 7, 8, 12, 16, 40, len(model) // 3, len(model) // 2, len(model) - 8]:
        with pytest.raises(ValueError):
            IntegerModel.from_tflite(model[:cut])
    with pytest.raises(ValueError, match="file identifier"):
        IntegerModel.from_tflite(b"\x00" * 4 + b"XXXX" + model[8:])
    rng = np.random.default_rng(10)
    positions = list(range(8, len(model), 3)) + [None] * 50
    for position in positions:                 # one byte at every 3rd offset, then random bytes
        corrupt = bytearray(model)
        for i in ([position] if position is not None else rng.integers(8, len(model), 8)):
            corrupt[i] = int(rng.integers(0, 256))
        try:
            IntegerModel.from_tflite(bytes(corrupt))     # parses, or fails cleanly
        except (ValueError, UnsupportedModelError):
            pass
    with pytest.raises(ValueError):
        IntegerModel.from_tflite(rng.integers(0, 256, 4000).astype(np.uint8).tobytes())


def test_unsupported_ops_are_all_listed():
    mb = ModelBuilder()
    x = mb.tensor((1, 8), I8, 0.1, 0, graph_input=True)
    a = mb.tensor((1, 8), I8, 0.1, 0)
    b = mb.tensor((1, 8), I8, 0.1, 0)
    c = mb.tensor((1, 8), I8, 1 / 128, 0)
    d = mb.tensor((1, 8), I8, 0.1, 0, graph_output=True)
    mb.op("ABS", [x], [a])
    mb.op("NEG", [a], [b])
    mb.op("TANH", [b], [c])                              # supported
    mb.op("ELU", [c], [d])
    with pytest.raises(UnsupportedModelError) as info:
        IntegerModel.from_tflite(mb.build())
    message = str(info.value)
    for name in ("ABS", "NEG", "ELU"):
        assert name in message
    assert "TANH" not in message


def test_float_ops_are_reported_as_unsupported():
    mb = ModelBuilder()
    mb.unary("TANH", (1, 8), (None, None), (None, None), in_type=F32, out_type=F32)
    mb.unary("LOGISTIC", (1, 8), (None, None), (None, None), in_type=F32, out_type=F32)
    with pytest.raises(UnsupportedModelError, match="TANH.*float32.*LOGISTIC"):
        IntegerModel.from_tflite(mb.build())
