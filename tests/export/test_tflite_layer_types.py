"""TFLite int8 export of layer types whose kernels or ops the converter handles specially:
Conv1D (kernel quantized in CONV_2D's form), Conv2DTranspose (kernel transposed, activation not
fused) and UpSampling2D (Keras 3 repeats rows/columns). Each exported model computes in int8
only, and its outputs are compared with the fake-quant Keras model by the LiteRT interpreter
(reference kernels) run here."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

import tfquant
from tfquant.simulate import IntegerModel
from tfquant.specs import QuantConfig

L = keras.layers
F32 = np.float32


def _reference_run(flatbuffer: bytes, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Reference-kernel outputs (float32 io) and the output tensor's int8 step."""
    interpreter = Interpreter(model_content=flatbuffer,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x.astype(F32))
    interpreter.invoke()
    out = interpreter.get_output_details()[0]["index"]
    # the step of the int8 tensor the final DEQUANTIZE reads
    producer = [op for op in interpreter._get_ops_details()  # noqa: SLF001
                if out in op["outputs"]][0]
    scale = interpreter.get_tensor_details()[producer["inputs"][0]]["quantization"][0]
    return interpreter.get_tensor(out), float(scale)


def _op_names(flatbuffer: bytes) -> set[str]:
    return {op["op_name"]
            for op in Interpreter(model_content=flatbuffer)._get_ops_details()}  # noqa: SLF001


def _float_ops(flatbuffer: bytes) -> list[str]:
    interpreter = Interpreter(model_content=flatbuffer)
    details = interpreter.get_tensor_details()
    return [op["op_name"] for op in interpreter._get_ops_details()  # noqa: SLF001
            if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE")
            and any(details[t]["dtype"] == np.float32 for t in op["outputs"])]


def _trained(model: keras.Model, x: np.ndarray, config="tflite_int8") -> keras.Model:
    qmodel = tfquant.quantize_model(model, config=config)
    y = model.predict(x, verbose=0)
    qmodel.compile(keras.optimizers.Adam(1e-3), "mse")
    qmodel.fit(x, y, batch_size=16, epochs=1, verbose=0)
    return qmodel


def _assert_matches_keras(qmodel: keras.Model, flatbuffer: bytes, x: np.ndarray) -> None:
    assert _float_ops(flatbuffer) == []
    got, step = _reference_run(flatbuffer, x)
    want = qmodel.predict(x, verbose=0)
    lsb = np.abs(got - want.reshape(got.shape)) / step
    assert np.mean(lsb <= 1.0 + 1e-3) >= 0.999, np.max(lsb)


def _conv1d_model() -> keras.Model:
    keras.utils.set_random_seed(4)
    inp = keras.Input((24, 3))
    x = L.Conv1D(8, 3, use_bias=False, name="conv_a")(inp)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.MaxPooling1D()(x)
    x = L.Conv1D(6, 3, strides=2, padding="same", activation="relu", name="conv_b")(x)
    x = L.Conv1D(6, 3, padding="causal", dilation_rate=2, name="conv_c")(x)
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(inp, L.Dense(4, name="fc")(x))


def test_conv1d_exports_per_channel_to_int8_and_the_simulator_is_bit_exact():
    x = np.random.default_rng(0).uniform(-1, 1, (48, 24, 3)).astype(F32)
    qmodel = _trained(_conv1d_model(), x)
    quantizer = qmodel.get_layer("quant_conv_a").weight_quantizers["kernel"]
    assert quantizer.spec.per_axis and quantizer.quant_params().scale.shape == (8,)
    flatbuffer = tfquant.export.tflite(qmodel)
    interpreter = Interpreter(model_content=flatbuffer)
    details = interpreter.get_tensor_details()
    conv = [op for op in interpreter._get_ops_details()  # noqa: SLF001
            if op["op_name"] == "CONV_2D"][0]
    stored = details[conv["inputs"][1]]["quantization_parameters"]["scales"]
    np.testing.assert_allclose(stored, quantizer.quant_params().scale, rtol=1e-6)
    assert _float_ops(flatbuffer) == []
    # every layer reproduces its TFLite op when fed TFLite's inputs (end to end, the final
    # Dense magnifies the global average pool's 1-LSB double rounding to a few LSB);
    # bit_exact_fraction is None if the simulator could not read the model (EXPAND_DIMS)
    report = tfquant.verify(qmodel, flatbuffer, x)
    assert report.within_tolerance and report.bit_exact_fraction == 1.0, str(report)
    assert report.argmax_agreement == 1.0
    assert IntegerModel.from_tflite(flatbuffer)(x[:4]).shape == (4, 4)


def test_per_channel_depthwise_conv1d_and_transposed_conv_are_refused_before_writing(tmp_path):
    inp = keras.Input((24, 3))
    out = L.DepthwiseConv1D(3, name="dw")(inp)
    config = QuantConfig.preset("tflite_int8").with_overrides(
        by_name={"dw": {"weights": {"per_axis": True}}})
    qmodel = tfquant.quantize_model(keras.Model(inp, out), config=config)
    qmodel(np.ones((2, 24, 3), F32), training=True)
    with pytest.raises(ValueError, match="dw: per-channel DepthwiseConv1D weights are rejected"):
        tfquant.export.tflite(qmodel, tmp_path / "m.tflite")
    inp = keras.Input((4, 4, 2))
    up = L.Conv2DTranspose(3, 3, strides=2, padding="same", name="up")(inp)
    config = QuantConfig.preset("tflite_int8").with_overrides(
        by_name={"up": {"weights": {"per_axis": True}}})
    qmodel = tfquant.quantize_model(keras.Model(inp, up), config=config)
    qmodel(np.ones((2, 4, 4, 2), F32), training=True)
    with pytest.raises(ValueError, match="up: per-channel Conv2DTranspose weights"):
        tfquant.export.tflite(qmodel, tmp_path / "m.tflite")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("head", ["activation", "bn_relu"])
def test_transposed_conv_with_relu_and_upsampling_export_to_int8(head):
    keras.utils.set_random_seed(5)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    if head == "activation":
        x = L.Conv2DTranspose(8, 3, strides=2, padding="same", activation="relu",
                              name="up")(x)
    else:
        x = L.Conv2DTranspose(8, 3, strides=2, padding="same", use_bias=False, name="up")(x)
        x = L.ReLU()(L.BatchNormalization()(x))
    x = L.UpSampling2D(name="upsample")(x)
    model = keras.Model(inp, L.Conv2D(2, 1, name="head")(x))
    x = np.random.default_rng(2).uniform(-1, 1, (32, 8, 8, 3)).astype(F32)
    qmodel = _trained(model, x)
    wrapper = qmodel.get_layer("quant_up")
    # TFLite keeps the ReLU after TRANSPOSE_CONV: the values before it are quantized too
    assert (wrapper.pre_activation_quantizer is not None) == (head == "activation")
    flatbuffer = tfquant.export.tflite(qmodel)
    ops = _op_names(flatbuffer)
    assert {"TRANSPOSE_CONV", "RESIZE_NEAREST_NEIGHBOR"} <= ops and "TILE" not in ops
    _assert_matches_keras(qmodel, flatbuffer, x)
    # the integer simulator runs TRANSPOSE_CONV bit-exact with the reference kernels
    assert tfquant.verify(qmodel, flatbuffer, x).bit_exact_fraction == 1.0


def test_upsampling_matches_keras_repeat_and_round_trips(tmp_path):
    keras.utils.set_random_seed(6)
    inp = keras.Input((5, 7, 2))
    model = keras.Model(inp, L.UpSampling2D((2, 3))(L.Conv2D(3, 1)(inp)))
    x = np.random.default_rng(3).uniform(-1, 1, (4, 5, 7, 2)).astype(F32)
    qmodel = _trained(model, x)
    wrapper = [layer for layer in qmodel.layers if "up_sampling2d" in layer.name][0]
    inner = np.random.default_rng(4).normal(size=(2, 5, 7, 3)).astype(F32)
    np.testing.assert_array_equal(
        np.asarray(wrapper.rule.forward(wrapper.layer, inner, {}, None)),
        np.repeat(np.repeat(inner, 2, axis=1), 3, axis=2))
    path = tmp_path / "q.keras"
    qmodel.save(path)
    np.testing.assert_array_equal(keras.models.load_model(path).predict(x, verbose=0),
                                  qmodel.predict(x, verbose=0))
    flatbuffer = tfquant.export.tflite(qmodel)
    _assert_matches_keras(qmodel, flatbuffer, x)
    assert tfquant.verify(qmodel, flatbuffer, x).bit_exact_fraction == 1.0


def test_dilated_conv2d_is_one_op_with_the_gradient_of_the_space_to_batch_form():
    import tensorflow as tf

    from tfquant.layers.registry import _dilated_conv2d

    rng = np.random.default_rng(7)
    x = tf.constant(rng.normal(size=(2, 11, 12, 3)), tf.float32)
    kernel = tf.constant(rng.normal(size=(3, 3, 3, 4)), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, kernel])
        got = _dilated_conv2d(x, kernel, (1, 1), "SAME", (2, 3))
        want = tf.nn.convolution(x, kernel, padding="SAME", dilations=(2, 3))
        loss_got, loss_want = tf.reduce_sum(got * got), tf.reduce_sum(want * want)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(tape.gradient(loss_got, [x, kernel]), tape.gradient(loss_want, [x, kernel])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["dilated_conv2d", "dilated_depthwise", "dense_on_sequence",
                                  "separable_conv1d", "depthwise_conv1d"])
def test_more_layer_types_export_to_int8_bit_exact_with_the_simulator(case):
    keras.utils.set_random_seed(8)
    rng = np.random.default_rng(8)
    if case == "dilated_conv2d":
        inp = keras.Input((12, 12, 3))
        x = L.Conv2D(4, 3, padding="same", dilation_rate=(2, 3), use_bias=False)(inp)
        x = L.ReLU()(L.BatchNormalization()(x))
        out = L.Dense(2)(L.GlobalAveragePooling2D()(x))
    elif case == "dilated_depthwise":
        inp = keras.Input((12, 12, 3))
        x = L.DepthwiseConv2D(3, padding="same", dilation_rate=2, activation="relu")(inp)
        out = L.Dense(2)(L.GlobalAveragePooling2D()(x))
    elif case == "dense_on_sequence":
        inp = keras.Input((7, 4))
        out = L.Softmax()(L.Dense(5)(L.Dense(8, activation="relu")(inp)))
    elif case == "separable_conv1d":
        inp = keras.Input((20, 3))
        out = L.Dense(2)(L.Flatten()(L.SeparableConv1D(8, 3, activation="relu")(inp)))
    else:
        inp = keras.Input((20, 3))
        out = L.Dense(2)(L.Flatten()(L.DepthwiseConv1D(3, activation="relu")(inp)))
    model = keras.Model(inp, out)
    x = rng.uniform(-1, 1, (32, *inp.shape[1:])).astype(F32)
    qmodel = _trained(model, x)
    flatbuffer = tfquant.export.tflite(qmodel)
    ops = _op_names(flatbuffer)
    assert not ops & {"SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND"}, ops
    report = tfquant.verify(qmodel, flatbuffer, x)
    assert _float_ops(flatbuffer) == []
    assert report.bit_exact_fraction == 1.0 and report.within_tolerance, str(report)
    assert qmodel.predict(x, verbose=0).shape == model.predict(x, verbose=0).shape


def test_maximum_and_minimum_layers_are_refused_before_writing(tmp_path):
    """TFLite would clamp an operand of MAXIMUM/MINIMUM to the other's range (one grid for all);
    the export refuses instead of writing a model that computes something else."""
    keras.utils.set_random_seed(9)
    inp = keras.Input((6,))
    a, b = L.Dense(4)(inp), L.Dense(4, name="wide")(inp)
    model = keras.Model(inp, L.Dense(2)(L.Maximum(name="max")([a, L.Minimum(name="min")([a, b])])))
    qmodel = tfquant.quantize_model(model)
    tfquant.calibrate(qmodel, np.random.default_rng(9).normal(size=(32, 6)).astype(F32),
                      verbose=0)
    with pytest.raises(ValueError) as info:
        tfquant.export.tflite(qmodel, tmp_path / "m.tflite")
    assert "max: TFLite's int8 MAXIMUM" in str(info.value)
    assert "min: TFLite's int8 MINIMUM" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_conv3d_trains_per_channel_and_is_refused_for_tflite(tmp_path):
    """Conv3D kernels have 5 dimensions, one more than TF's per-channel FakeQuant takes: they
    are quantized through a [-1, channels] view (on the grid, per channel, round trip), and
    TFLite, which has no int8 CONV_3D, is refused with the layer named."""
    keras.utils.set_random_seed(10)
    rng = np.random.default_rng(10)
    inp = keras.Input((6, 6, 6, 2))
    model = keras.Model(inp, L.Dense(2)(L.Flatten()(L.Conv3D(4, 3, activation="relu",
                                                             name="c3")(inp))))
    x = rng.normal(size=(16, 6, 6, 6, 2)).astype(F32)
    qmodel = _trained(model, x)
    wrapper = qmodel.get_layer("quant_c3")
    quantizer = wrapper.weight_quantizers["kernel"]
    params = quantizer.quant_params()
    steps = np.asarray(quantizer(wrapper.layer.kernel, training=False)) / params.scale
    assert params.scale.shape == (4,)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert np.abs(np.round(steps)).max() == 127                 # each channel's own scale
    path = tmp_path / "c3.keras"
    qmodel.save(path)
    np.testing.assert_array_equal(keras.models.load_model(path).predict(x, verbose=0),
                                  qmodel.predict(x, verbose=0))
    with pytest.raises(ValueError, match="c3: TFLite runs 3-D convolutions in float only"):
        tfquant.export.tflite(qmodel, tmp_path / "m.tflite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c3.keras"]
