"""End-to-end: Keras 3 models, full-integer PTQ with ``tf.lite.TFLiteConverter``, simulated and
compared tensor by tensor with the LiteRT interpreter running its reference kernels (100 %
bit-exact required). XNNPACK (the default resolver) is only reported, never asserted."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tfquant.simulate import IntegerModel

L = keras.layers
SAMPLES = 32

REQUIRED_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "SUB", "MUL",
                "CONCATENATION", "AVERAGE_POOL_2D", "MAX_POOL_2D", "MEAN", "RESHAPE", "PAD",
                "PADV2", "LOGISTIC", "TANH", "SOFTMAX", "HARD_SWISH", "LEAKY_RELU", "QUANTIZE",
                "DEQUANTIZE", "RELU", "RELU6", "TRANSPOSE", "STRIDED_SLICE", "SPLIT", "SPLIT_V",
                "RESIZE_NEAREST_NEIGHBOR", "TRANSPOSE_CONV"}


# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------
def conv_model() -> keras.Model:
    inp = keras.Input((15, 15, 3), batch_size=1)
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="relu6")(x)
    x = L.BatchNormalization()(x)
    x = L.Conv2D(12, 3, dilation_rate=2, padding="same")(x)
    x = L.DepthwiseConv2D(3, dilation_rate=2, padding="same")(x)
    a = L.AveragePooling2D(3, strides=2, padding="same")(x)
    m = L.MaxPooling2D(2, strides=1, padding="valid")(x)
    m = L.ZeroPadding2D(((1, 0), (0, 1)))(m)
    m = L.Conv2D(12, 2, strides=2, padding="valid")(m)
    x = L.Concatenate()([a, m])
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(40, activation="relu")(x)
    x = L.Dense(10)(x)
    return keras.Model(inp, L.Softmax()(x))


def elementwise_model() -> keras.Model:
    inp = keras.Input((8, 8, 4), batch_size=1)
    a = L.Conv2D(4, 1)(inp)
    b = L.Conv2D(4, 1)(inp)
    s = L.Add()([a, b])
    d = L.Subtract()([a, b])
    p = L.Multiply()([s, d])
    h = L.Activation("hard_swish")(p)
    lr = L.LeakyReLU(negative_slope=0.2)(s)
    sg = L.Activation("sigmoid")(d)
    th = L.Activation("tanh")(a)
    r6 = L.ReLU(max_value=6.0)(b)
    x = L.Concatenate()([h, lr, sg, th, r6])          # inputs requantised: QUANTIZE int8 -> int8
    x = L.Resizing(13, 17, interpolation="nearest")(x)
    x = L.Permute((2, 1, 3))(x)
    x = L.Cropping2D(((1, 2), (3, 0)))(x)
    x = L.Reshape((10 * 14, 20))(x)
    x = L.Dense(6)(x)
    y1, y2 = L.Lambda(lambda t: keras.ops.split(t, 2, axis=-1))(x)
    return keras.Model(inp, L.Subtract()([y1, y2]))


def misc_model() -> keras.Model:
    inp = keras.Input((9, 9, 6), batch_size=1)
    x = L.Conv2D(6, 3, padding="same")(inp)
    g = L.GlobalAveragePooling2D(keepdims=True)(x)
    x = L.Multiply()([x, g])                                       # broadcast MUL
    x = L.ReLU()(L.Concatenate()([x, inp]))                        # standalone RELU
    a = L.Lambda(lambda t: t + tf.constant(np.linspace(-1, 1, 12), tf.float32))(x)
    s = L.Lambda(lambda t: tf.constant(0.5) - t)(a)
    c = L.Lambda(lambda t: tf.clip_by_value(t, -1.0, 1.0))(s)
    p = L.Lambda(lambda t: tf.pad(t, [[0, 0], [1, 1], [2, 0], [0, 0]], constant_values=0.3))(c)
    p = L.AveragePooling2D(2, strides=2, padding="valid")(p)
    q = L.MaxPooling2D(3, strides=2, padding="same")(c)
    q = L.DepthwiseConv2D(3, strides=2, depth_multiplier=3, padding="same")(q)
    sp = L.Lambda(lambda t: tf.split(t, [2, 4, 6], axis=-1))(p)
    m = L.Lambda(lambda t: tf.reduce_mean(t, axis=2))(sp[2])
    m = L.Lambda(lambda t: tf.squeeze(t[:, :1], axis=1))(m)
    out = L.Concatenate()([L.Reshape((-1,))(q), m, L.Flatten()(sp[0])])
    return keras.Model(inp, L.Dense(7)(out))


def transpose_conv_model() -> keras.Model:
    """Conv2DTranspose: SAME and VALID, strides 1 and 2, non-square, with and without bias."""
    inp = keras.Input((6, 6, 3), batch_size=1)
    x = L.Conv2DTranspose(5, 3, strides=2, padding="same")(inp)
    x = L.Conv2DTranspose(4, 3, strides=2, padding="valid", use_bias=False)(x)
    x = L.Conv2DTranspose(6, 2, strides=1, padding="same", activation="relu")(x)
    return keras.Model(inp, L.Conv2DTranspose(3, (3, 2), strides=(1, 2), padding="same")(x))


def wide_dense_model() -> keras.Model:
    """Dense layers whose int8 sums exceed 2^24: the simulator splits the float reduction."""
    inp = keras.Input((1100,), batch_size=1)
    x = L.Dense(16, kernel_initializer=keras.initializers.RandomUniform(0.9, 1.0))(inp)
    x = L.Dense(8, kernel_initializer=keras.initializers.Constant(1.0))(x)
    return keras.Model(inp, x)


def convert(model: keras.Model, float_io: bool = False, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    shape = tuple(model.inputs[0].shape[1:])

    def representative():
        for _ in range(24):
            yield [rng.normal(size=(1, *shape)).astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if not float_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    keras.utils.set_random_seed(0)
    elementwise = elementwise_model()
    return {"conv": convert(conv_model()), "elementwise": convert(elementwise),
            "elementwise_float_io": convert(elementwise, float_io=True),
            "misc": convert(misc_model()), "wide_dense": convert(wide_dense_model()),
            "transpose_conv": convert(transpose_conv_model())}


def inputs_for(sim: IntegerModel, seed: int) -> np.ndarray:
    info = sim.inputs[0]
    rng = np.random.default_rng(seed)
    shape = (SAMPLES, *info.shape[1:])
    if info.dtype == "float32":
        return rng.normal(0, 2, shape).astype(np.float32)
    x = rng.integers(-128, 128, shape).astype(np.int8)
    # half of the batch: realistic values (a quantized normal distribution around the zero point)
    real = np.round(rng.normal(0, 0.5, shape) / info.scale + info.zero_point)
    x[SAMPLES // 2:] = np.clip(real, -128, 127).astype(np.int8)[SAMPLES // 2:]
    return x


def interpreter_tensors(model: bytes, x: np.ndarray, resolver) -> dict[int, np.ndarray]:
    """Every tensor of every sample, run one sample at a time."""
    it = Interpreter(model_content=model, experimental_op_resolver_type=resolver,
                     experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    index = it.get_input_details()[0]["index"]
    details = it.get_tensor_details()
    per_tensor: dict[int, list] = {}
    for sample in x:
        it.set_tensor(index, sample[None])
        it.invoke()
        for d in details:
            try:
                per_tensor.setdefault(d["index"], []).append(it.get_tensor(d["index"]))
            except ValueError:
                pass
    return {k: np.concatenate(v) for k, v in per_tensor.items() if v[0].ndim and v[0].shape[0] == 1}


class Runs:
    """Simulators and interpreter results, computed once per model for the whole module."""

    def __init__(self, models: dict[str, bytes]):
        self.models, self._sims, self._results = models, {}, {}

    def sim(self, name: str) -> IntegerModel:
        if name not in self._sims:
            self._sims[name] = IntegerModel.from_tflite(self.models[name])
        return self._sims[name]

    def result(self, name: str):
        """(inputs, simulator tensors, reference-kernel tensors) of one model."""
        if name not in self._results:
            sim = self.sim(name)
            x = inputs_for(sim, seed=len(name))
            self._results[name] = (x, sim.run(x, return_all=True),
                                   interpreter_tensors(self.models[name], x,
                                                       OpResolverType.BUILTIN_REF))
        return self._results[name]


@pytest.fixture(scope="module")
def runs(models) -> Runs:
    return Runs(models)


# ----------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["conv", "elementwise", "elementwise_float_io", "misc",
                                  "wide_dense", "transpose_conv"])
def test_every_tensor_bit_exact_with_reference_kernels(runs, name, record_property):
    sim = runs.sim(name)
    _, got, want = runs.result(name)
    compared = 0
    for op in sim.graph.ops:
        for index in op.outputs:
            g, w = got[index], want[index].reshape(got[index].shape)
            assert g.dtype == w.dtype
            exact = np.mean(g == w)
            assert exact == 1.0, (f"{name}: {op.type} output {index} "
                                  f"({sim.graph.tensors[index].name}) is {exact:.4%} bit-exact, "
                                  f"max diff {np.abs(g.astype(float) - w).max()}")
            compared += 1
    assert compared == sum(len(op.outputs) for op in sim.graph.ops) > 0
    record_property("ops", sorted({op.type for op in sim.graph.ops}))


@pytest.mark.parametrize("name", ["conv", "elementwise", "elementwise_float_io", "misc",
                                  "wide_dense", "transpose_conv"])
def test_eager_execution_is_bit_exact_with_reference_kernels(runs, name):
    """``jit_compile=False`` (TF's own kernels, op by op) gives every tensor of the reference."""
    x, _, want = runs.result(name)
    eager = IntegerModel.from_tflite(runs.models[name], jit_compile=False)
    assert not eager.jit_compile
    got = eager.run(x, return_all=True)
    outputs = [index for op in eager.graph.ops for index in op.outputs]
    for index in outputs:
        np.testing.assert_array_equal(got[index], want[index].reshape(got[index].shape),
                                      err_msg=f"{name}: tensor {index}")
    assert outputs


def test_models_cover_every_required_op(runs):
    ops = set()
    for name in runs.models:
        ops |= {op.type for op in runs.sim(name).graph.ops}
    # SQUEEZE and RELU_N1_TO_1 do not survive the converter's folding here; the single-op
    # flatbuffer tests cover them.
    assert REQUIRED_OPS <= ops, f"not covered: {sorted(REQUIRED_OPS - ops)}"


def test_wide_dense_needs_split_reductions(runs):
    fc = runs.sim("wide_dense").graph.ops[0]
    w = np.abs(np.asarray(fc.params["filter"], np.int64)).sum(axis=1)
    x_range = max(127 - fc.params["input_zp"], fc.params["input_zp"] + 128)
    assert (w * x_range).max() > (1 << 24)


def test_xnnpack_is_reported_not_asserted(runs, record_property, capsys):
    """XNNPACK requantises in float: within a few LSB of the reference, rarely all equal."""
    lines = []
    for name in ["conv", "elementwise", "misc"]:
        x, got, want = runs.result(name)
        out_index = runs.sim(name).graph.outputs[0]
        ref = want[out_index]
        xnn = interpreter_tensors(runs.models[name], x, OpResolverType.AUTO)[out_index]
        diff = np.abs(xnn.astype(int) - ref)
        ours = np.abs(got[out_index].astype(int) - ref.reshape(got[out_index].shape)).max()
        lines.append(f"{name}: XNNPACK vs reference kernels: max {diff.max()} LSB, "
                     f"{np.mean(diff == 0):.2%} equal; simulator vs reference: max {ours} LSB")
        record_property(f"xnnpack_max_lsb_{name}", int(diff.max()))
    with capsys.disabled():
        print("\n" + "\n".join(lines))


@pytest.mark.parametrize("concurrent_calls", [1, 3])
def test_call_chunked_batches_and_names(runs, concurrent_calls):
    x, got, want = runs.result("wide_dense")
    small = IntegerModel.from_tflite(runs.models["wide_dense"], chunk_size=7,   # 32 = 4*7 + 4
                                     concurrent_calls=concurrent_calls)
    out_index = small.graph.outputs[0]
    np.testing.assert_array_equal(small(x), want[out_index])   # chunks back in order
    by_name = small.run(x, return_all=True, key="name")
    names = small.tensor_names
    for index, name in names.items():
        key = name if name and list(names.values()).count(name) == 1 else f"#{index}"
        np.testing.assert_array_equal(by_name[key], got[index])
    output = small.outputs[0]
    assert small.tensor_index(output.name) == output.index
    np.testing.assert_array_equal(small(x[0]), want[out_index][:1])   # no batch dimension


def test_inputs_are_validated(runs):
    sim = runs.sim("conv")
    with pytest.raises(TypeError):
        sim(np.zeros((2, 15, 15, 3), np.float32))
    with pytest.raises(ValueError):
        sim(np.zeros((2, 15, 14, 3), np.int8))
    with pytest.raises(ValueError):
        sim(np.full((2, 15, 15, 3), 300))


def test_truncated_real_model_raises_value_error(models):
    model = models["conv"]
    for cut in np.linspace(0, len(model) - 1, 12).astype(int):
        with pytest.raises(ValueError):
            IntegerModel.from_tflite(model[:cut])


def test_from_path(models, tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(models["misc"])
    assert [op.type for op in IntegerModel.from_tflite(path).graph.ops] == \
        [op.type for op in IntegerModel.from_tflite(models["misc"]).graph.ops]


def test_concurrent_calls_must_be_positive(runs):
    with pytest.raises(ValueError, match="concurrent_calls must be >= 1, got 0"):
        IntegerModel.from_tflite(runs.models["wide_dense"], concurrent_calls=0)


def _interpreter_all(flatbuffer: bytes, feeds: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Every tensor of a reference-kernel run fed by signature name, and the outputs by name."""
    interp = Interpreter(model_content=flatbuffer,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                         experimental_preserve_all_tensors=True)
    runner = interp.get_signature_runner()
    outputs = runner(**feeds)
    tensors = {}
    for op in interp._get_ops_details():  # noqa: SLF001
        for index in op["outputs"]:
            tensors[int(index)] = interp.get_tensor(int(index))
    return tensors, outputs


def test_multi_input_model_takes_inputs_by_signature_name():
    """Two same-shaped inputs whose flatbuffer order differs from the Keras order: a dict keyed
    by the signature (Keras) names feeds each where it belongs, as the interpreter's signature
    runner does; positional calls follow ``input_names``."""
    keras.utils.set_random_seed(2)
    rng = np.random.default_rng(2)
    first, second = L.Input((6,), name="first"), L.Input((6,), name="second")
    out = L.Dense(3)(L.Concatenate()([L.Dense(4)(first), L.Dense(4, activation="relu")(second)]))
    model = keras.Model([first, second], out)
    a = rng.normal(size=(32, 6)).astype(np.float32)
    b = (3.0 * rng.normal(size=(32, 6))).astype(np.float32)

    def data():
        for i in range(8):
            yield [a[i:i + 1], b[i:i + 1]]
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = data
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    flatbuffer = converter.convert()
    sim = IntegerModel.from_tflite(flatbuffer)
    assert sorted(sim.input_names) == ["first", "second"]
    _, ref = _interpreter_all(flatbuffer, {"first": a, "second": b})
    (ref_out,) = ref.values()
    np.testing.assert_array_equal(sim({"first": a, "second": b}), ref_out)
    positional = [{"first": a, "second": b}[name] for name in sim.input_names]
    np.testing.assert_array_equal(sim(*positional), ref_out)
    with pytest.raises(ValueError, match="unknown input name"):
        sim({"first": a, "second": b, "third": a})
    with pytest.raises(ValueError, match="no value for input"):
        sim({"first": a})


def test_return_all_keeps_every_row_of_a_sequence_intermediate():
    """A Dense on a sequence runs as FULLY_CONNECTED on [batch * steps, channels]: run(...,
    return_all=True) returns all of those rows (it returned the first ``batch`` only)."""
    keras.utils.set_random_seed(4)
    x = np.random.default_rng(4).normal(size=(8, 10, 6)).astype(np.float32)
    import tfquant

    qmodel = tfquant.quantize_model(
        keras.Sequential([keras.Input((10, 6)), L.Dense(7), L.Flatten(), L.Dense(3)]))
    tfquant.calibrate(qmodel, x, verbose=0)
    flatbuffer = tfquant.export.tflite(qmodel)    # Dense on [8, 10, 6]: FC on [80, 6]
    sim = IntegerModel.from_tflite(flatbuffer)
    (name,) = sim.input_names
    tensors, _ = _interpreter_all(flatbuffer, {name: x})
    got = sim.run({name: x}, return_all=True)
    checked = [i for i in got if i in tensors]
    assert any(tensors[i].shape[0] == 80 for i in checked)
    for i in checked:
        np.testing.assert_array_equal(got[i], tensors[i])
