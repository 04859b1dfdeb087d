"""``IntegerModel.from_keras`` (parameters from QuantParams, no TFLite) against
``IntegerModel.from_tflite`` of the exported model and the LiteRT reference kernels."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

import tfquant
from tfquant.simulate import IntegerModel
from tfquant.simulate.from_keras import UnsupportedLayerError

L = keras.layers


def _randomize_bn(model: keras.Model, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c),
                               rng.normal(0, 0.3, c), rng.uniform(0.3, 2.0, c)])


def residual_model() -> keras.Model:
    inp = keras.Input((10, 10, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inp)
    x = L.BatchNormalization()(x)
    x = L.ReLU(max_value=6.0)(x)
    y = L.ZeroPadding2D(1)(x)
    y = L.DepthwiseConv2D(3, padding="valid", depth_multiplier=1)(y)
    y = L.BatchNormalization()(y)
    y = L.ReLU()(y)
    y = L.Conv2D(8, 1)(y)
    y = L.BatchNormalization()(y)
    x = L.ReLU()(L.Add()([x, y]))                      # residual Add with a fused ReLU
    z = L.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = L.Add()([x, z])                                # residual Add, no activation
    a = L.AveragePooling2D(2)(x)
    a = L.DepthwiseConv2D(2, depth_multiplier=2, activation="relu6")(a)
    a = L.GlobalAveragePooling2D()(a)
    m = L.MaxPooling2D(2)(x)
    m = L.Flatten()(m)
    m = L.Dropout(0.1)(m)
    m = L.Dense(16, activation="relu")(m)
    m = L.Dense(6, activation="softmax")(m)
    return keras.Model(inp, [m, L.Dense(4)(a)])


@pytest.fixture(scope="module")
def calibrated():
    keras.utils.set_random_seed(3)
    model = residual_model()
    _randomize_bn(model, 3)
    x = np.random.default_rng(3).normal(0, 1, (64, 10, 10, 3)).astype(np.float32)
    qmodel = tfquant.quantize_model(model)
    tfquant.calibrate(qmodel, x, verbose=0)
    return qmodel, x


def _reference(data: bytes, xs: np.ndarray) -> list[np.ndarray]:
    interpreter = Interpreter(model_content=data,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], list(xs.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], xs)
    interpreter.invoke()
    return [interpreter.get_tensor(o["index"]) for o in interpreter.get_output_details()]


def _same_outputs(a, b) -> None:
    a = a if isinstance(a, list) else [a]
    b = b if isinstance(b, list) else [b]
    # the converter may order outputs differently: match them by shape
    assert sorted(o.shape for o in a) == sorted(o.shape for o in b)
    for out in a:
        assert any(o.shape == out.shape and np.array_equal(o, out) for o in b), out.shape


@pytest.fixture(scope="module")
def simulators(calibrated):
    """io type -> (flatbuffer, from_tflite, from_keras), built once per io type."""
    qmodel, _ = calibrated
    cache = {}

    def get(io):
        if io not in cache:
            data = tfquant.export.tflite(qmodel, input_type=io)
            cache[io] = (data, IntegerModel.from_tflite(data),
                         IntegerModel.from_keras(qmodel, input_type=io))
        return cache[io]
    return get


@pytest.mark.parametrize("io", ["float32", "int8"])
def test_from_keras_is_bit_exact_with_the_exported_tflite(calibrated, simulators, io):
    qmodel, x = calibrated
    data, from_tflite, from_keras = simulators(io)
    if io == "int8":
        info = from_tflite.inputs[0]
        scaled = x / info.scale
        fed = np.clip(np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) + info.zero_point,
                      -128, 127).astype(np.int8)
    else:
        fed = x
    keras_out = from_keras(fed)
    _same_outputs(keras_out, from_tflite(fed))
    _same_outputs(keras_out, _reference(data, fed))        # the interpreter itself
    types = [op.type for op in from_keras.graph.ops]
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "AVERAGE_POOL_2D", "MAX_POOL_2D", "MEAN",
            "PAD", "FULLY_CONNECTED", "SOFTMAX", "RESHAPE"} <= set(types)
    assert (types[0] == "QUANTIZE") == (io == "float32")      # the input QUANTIZE


def test_weights_and_biases_equal_the_exported_ones(simulators):
    _, from_tflite, from_keras = simulators("float32")
    ours = [op for op in from_keras.graph.ops
            if op.type in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    theirs = [op for op in from_tflite.graph.ops
              if op.type in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    assert len(ours) == len(theirs) == 8
    unmatched = list(theirs)
    for op in ours:       # ops may come in another order: find each one's exact twin
        twin = [t for t in unmatched if t.type == op.type
                and t.params["filter"].shape == op.params["filter"].shape
                and np.array_equal(t.params["filter"], op.params["filter"])]
        assert twin, op.name
        t = twin[0]
        unmatched.remove(t)
        channels = len(op.params["multiplier"])
        for key in ("bias", "multiplier", "shift", "input_zp", "output_zp", "act_min", "act_max"):
            a, b = op.params[key], t.params[key]
            if key == "bias":          # the converter drops an all-zero bias
                a = np.zeros(channels, np.int64) if a is None else a
                b = np.zeros(channels, np.int64) if b is None else b
            assert np.array_equal(np.asarray(a), np.asarray(b)), (op.name, key)


def test_qat_trained_model_matches_too():
    keras.utils.set_random_seed(5)
    inp = keras.Input((8, 8, 1))
    x = L.Conv2D(6, 3, padding="same", use_bias=False)(inp)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    model = keras.Model(inp, L.Dense(3, activation="softmax")(x))
    qat = tfquant.quantize_model(model)
    qat.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1, (64, 8, 8, 1)).astype(np.float32)
    qat.fit(x, rng.integers(0, 3, 64), batch_size=16, epochs=1, verbose=0)
    data = tfquant.export.tflite(qat)
    _same_outputs(IntegerModel.from_keras(qat)(x), _reference(data, x))


def test_unsupported_layers_are_all_listed():
    inp = keras.Input((6, 6, 2))
    a = L.Conv2D(4, 3, padding="same")(inp)
    b = L.Conv2D(4, 3, padding="same")(inp)
    c = L.Concatenate(name="joined")([a, b])
    m = L.Multiply(name="product")([a, b])
    out = L.Add()([L.Conv2D(8, 1)(c), L.Conv2D(8, 1)(L.Concatenate()([m, m]))])
    qmodel = tfquant.quantize_model(keras.Model(inp, out))
    with pytest.raises(UnsupportedLayerError) as info:
        IntegerModel.from_keras(qmodel)
    message = str(info.value)
    assert "joined (Concatenate)" in message and "product (Multiply)" in message


def test_bad_arguments():
    with pytest.raises(ValueError, match="input_type='int16'"):
        IntegerModel.from_keras(keras.Sequential([keras.Input((2,)), L.Dense(1)]),
                                input_type="int16")
    with pytest.raises(TypeError, match="expected a Keras model"):
        IntegerModel.from_keras("model.keras")


def test_converter_params_follow_the_converter_where_float32_rounds_differently():
    from tfquant.simulate.from_keras import converter_params

    inp = keras.Input((4,))
    qmodel = tfquant.quantize_model(keras.Model(inp, L.Dense(2)(inp)))
    quantizer = [layer for layer in qmodel.layers if isinstance(layer, tfquant.Quantizer)][0]
    quantizer.set_range(-1.6327684, 2.3831048)     # max - min is inexact in float32
    data = tfquant.export.tflite(qmodel, input_type="int8")
    interpreter = Interpreter(model_content=data)
    scale, zero_point = interpreter.get_input_details()[0]["quantization"]
    ours = converter_params(quantizer)
    assert np.float32(ours.scale) == np.float32(scale) and ours.zero_point == zero_point
    fake_quant_scale = np.float32(quantizer.quant_params().scale)
    assert abs(fake_quant_scale - np.float32(scale)) <= np.spacing(np.float32(scale))
