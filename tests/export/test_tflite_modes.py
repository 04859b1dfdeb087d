"""TFLite export modes against the TFLite interpreter: int16x8, dynamic range, int8 size, and
models TFLite cannot run (refused before any file is written).

References: the fake-quant Keras model (``qmodel.predict``), weights quantized by hand in numpy
(BN folding and rounding written out), the TFLite interpreter, the float TFLite conversion of
the same float model (size).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

import tfquant  # noqa: E402
from tfquant import zoo  # noqa: E402
from tfquant.specs import LayerSpec, QuantConfig, TensorSpec  # noqa: E402

L = keras.layers
F32 = np.float32


def _run(flatbuffer: bytes, x: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(model_content=flatbuffer)
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _residual_cnn(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = L.ReLU(6.0, name="relu2")(y)
    y = L.Conv2D(8, 1, name="pw")(y)
    x = L.Add(name="add")([x, y])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(5, name="fc")(x))


# ----------------------------------------------------------------------- int16x8
def test_int16x8_matches_fake_quant_within_two_lsb():
    data = np.random.default_rng(0).normal(0.5, 0.5, size=(64, 8, 8, 3)).astype(F32)
    qmodel = tfquant.quantize_model(_residual_cnn(), "tflite_int16x8")
    tfquant.calibrate(qmodel, data, verbose=0)
    flat = tfquant.export.tflite(qmodel, mode="int16x8")

    interpreter = Interpreter(model_content=flat)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "FULLY_CONNECTED"} <= ops
    tensors = interpreter.get_tensor_details()
    assert any(t["dtype"] == np.int16 for t in tensors)
    assert tfquant.export.float_ops(flat) == []

    got, want = _run(flat, data), qmodel.predict(data, verbose=0)
    lsb = float(qmodel.get_layer("quant_fc").output_quantizer.quant_params().scale)
    diff = np.abs(got - want) / lsb
    print(f"int16x8 vs fake-quant: {np.mean(diff <= 1.001):.2%} within 1 LSB, "
          f"{np.mean(diff <= 2.001):.2%} within 2 LSB, max {diff.max():.2f} LSB, "
          f"mean {diff.mean():.3f} LSB (LSB = {lsb:.3g})")
    # measured: 99.7 % within 2 LSB, max 3 LSB (the fake-quant model rounds in float)
    assert np.mean(diff <= 2.001) >= 0.99, np.mean(diff <= 2.001)
    assert diff.max() <= 4.001, diff.max()

    # int16 inputs/outputs: the same model behind the interface quantization
    flat16 = tfquant.export.tflite(qmodel, mode="int16x8", input_type="int16")
    interpreter = Interpreter(model_content=flat16)
    (in_scale, in_zp), (out_scale, out_zp) = (interpreter.get_input_details()[0]["quantization"],
                                              interpreter.get_output_details()[0]["quantization"])
    assert in_zp == 0 and out_zp == 0 and out_scale == pytest.approx(lsb, rel=1e-6)
    x16 = np.clip(np.round(data / in_scale), -32768, 32767).astype(np.int16)
    y16 = _run(flat16, x16)
    assert y16.dtype == np.int16
    np.testing.assert_allclose(y16 * out_scale, got, atol=1.001 * lsb, rtol=0)


def test_int16x8_refuses_8bit_activations(tmp_path):
    qmodel = tfquant.quantize_model(_residual_cnn(), "tflite_int8")
    with pytest.raises(ValueError, match="int16x8 mode needs 16-bit activations"):
        tfquant.export.tflite(qmodel, tmp_path / "m.tflite", mode="int16x8")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ dynamic range
def _np_folded_kernel(model: keras.Model, conv: str, bn: str | None) -> np.ndarray:
    kernel = model.get_layer(conv).kernel.numpy()
    if bn is None:
        return kernel
    b = model.get_layer(bn)
    return kernel * (b.gamma.numpy() / np.sqrt(b.moving_variance.numpy() + b.epsilon))


def test_dynamic_range_uses_the_quantizers_integers_and_scales(recwarn):
    keras.utils.set_random_seed(5)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(48, 3, use_bias=False, name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=3, name="dw")(x)  # (1, 3, 3, 144) in TFLite
    x = L.Conv2D(32, 1, name="pw")(x)
    x = L.Flatten(name="flat")(x)
    x = L.Dense(48, activation="relu", name="fc1")(x)
    x = L.Dense(32, name="fc2")(x)
    model = keras.Model(inp, L.Dense(16, name="fc3")(x))  # 512 weights: TFLite keeps float
    bn = model.get_layer("bn")  # non-trivial BN statistics, folded into conv
    bn.moving_mean.assign(np.linspace(-0.2, 0.2, 48).astype(F32))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 48).astype(F32))
    bn.gamma.assign(np.linspace(0.8, 1.3, 48).astype(F32))

    # 4-bit weights: weight rounding dominates the error, so the TFLite output shows which
    # weights it used; ranges widened 1.5x (as after QAT): max|w| no longer gives the scale
    w4 = TensorSpec(bits=4, symmetric=True, per_axis=True, narrow_range=True, learner="minmax")
    config = QuantConfig(LayerSpec(w4, None), by_type={"Dense": {"weights": {"per_axis": False}}})
    qmodel = tfquant.ptq.dynamic_range(model, config)
    scales = {}
    for name in ("conv", "dw", "pw", "fc1", "fc2", "fc3"):
        q = qmodel.get_layer(f"quant_{name}").weight_quantizers["kernel"]
        lo, hi = q.current_range()
        q.set_range(np.asarray(lo) * 1.5, np.asarray(hi) * 1.5)
        scales[name] = np.asarray(q.quant_params().scale, F32)

    flat = tfquant.export.tflite(qmodel, mode="dynamic_range")
    assert not [w for w in recwarn if "own scales" in str(w.message)]  # every weight matched
    interpreter = Interpreter(model_content=flat)
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    weights = {}
    for op in interpreter._get_ops_details():
        if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        t = tensors[op["inputs"][1]]
        if t["dtype"] == np.int8:
            assert tensors[op["inputs"][0]]["dtype"] == np.float32  # hybrid: float activations
            weights[tuple(t["shape"])] = (interpreter.get_tensor(t["index"]),
                                          t["quantization_parameters"])
    assert len(weights) == 5  # fc3 is float

    expected = {  # TFLite layouts and channel axes: conv OHWI (0), depthwise 1HW(C*M) (3),
        # fully connected (out, in) (0)
        "conv": (np.transpose(_np_folded_kernel(model, "conv", "bn"), (3, 0, 1, 2)), 0),
        "dw": (_np_folded_kernel(model, "dw", None).reshape(1, 3, 3, 144), 3),
        "pw": (np.transpose(_np_folded_kernel(model, "pw", None), (3, 0, 1, 2)), 0),
        "fc1": (_np_folded_kernel(model, "fc1", None).T, 0),
        "fc2": (_np_folded_kernel(model, "fc2", None).T, 0)}
    for name, (kernel, axis) in expected.items():
        ints, quantization = weights[kernel.shape]
        s = scales[name]
        shape = [1] * kernel.ndim
        shape[axis] = -1
        per_channel = (s if s.ndim else np.full(kernel.shape[axis], s)).reshape(shape)
        np.testing.assert_array_equal(ints, np.clip(np.round(kernel / per_channel), -7, 7), name)
        assert quantization["quantized_dimension"] == axis, name
        np.testing.assert_allclose(quantization["scales"], per_channel.ravel(), rtol=1e-6,
                                   err_msg=name)
        assert np.abs(ints).max() < 7  # the widened range: the converter alone would use 127

    x = np.random.default_rng(1).normal(size=(8, 8, 8, 3)).astype(F32)
    got, fake_quant = _run(flat, x), qmodel.predict(x, verbose=0)
    float_out = model.predict(x, verbose=0)
    err = np.abs(got - fake_quant).max()
    # only the run-time 8-bit quantization of activations separates TFLite from fake-quant
    assert err < 0.02 * np.abs(fake_quant).max(), err
    assert err < 0.25 * np.abs(float_out - fake_quant).max()


# --------------------------------------------------------------------- int8 size
def test_int8_tflite_is_at_most_0_27_of_float():
    model = zoo.small_cnn((28, 28, 1), widths=(32, 64, 128))  # 156k parameters
    qmodel = tfquant.quantize_model(model)
    data = np.random.default_rng(0).normal(size=(8, 28, 28, 1)).astype(F32)
    tfquant.calibrate(qmodel, data, verbose=0)
    int8 = tfquant.export.tflite(qmodel, input_type="int8")
    float_flat = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    ratio = len(int8) / len(float_flat)
    print(f"int8 {len(int8)} B / float {len(float_flat)} B = {ratio:.3f}")
    assert ratio <= 0.27, ratio  # measured 0.266


# ------------------------------------------------------------------ refused models
def _small(config) -> keras.Model:
    keras.utils.set_random_seed(2)
    inp = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 3, name="conv")(inp)
    x = L.Flatten(name="flat")(x)
    qmodel = tfquant.quantize_model(keras.Model(inp, L.Dense(3, name="fc")(x)), config)
    qmodel(np.random.default_rng(0).normal(size=(4, 6, 6, 2)).astype(F32), training=True)
    return qmodel


@pytest.mark.parametrize("override, messages", [
    ({"conv": {"weights": {"symmetric": False, "narrow_range": False}}},
     ["conv: kernel quantizer is asymmetric"]),
    ({"fc": {"weights": {"per_axis": True}}}, ["fc: per-channel Dense weights"]),
    ({"conv": {"activations": {"bits": 16}}}, ["conv/output: 16-bit activations"]),
])
def test_unexportable_layers_are_named_before_writing(tmp_path, override, messages):
    qmodel = _small(QuantConfig.preset("tflite_int8").with_overrides(by_name=override))
    target = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match="cannot be exported to TFLite int8") as info:
        tfquant.export.tflite(qmodel, target)
    for message in messages:
        assert message in str(info.value), str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_float_ops_refused_before_writing(tmp_path):
    config = QuantConfig.preset("tflite_int8").with_overrides(
        by_name={"fc": {"activations": {"learner": "binary"}}})  # sign(): no int8 kernel
    qmodel = _small(config)
    with pytest.raises(ValueError, match="still computes these ops in float"):
        tfquant.export.tflite(qmodel, tmp_path / "m.tflite")
    assert list(tmp_path.iterdir()) == []
    with pytest.warns(UserWarning, match="still computes"):
        tfquant.export.tflite(qmodel, tmp_path / "m.tflite", strict=False)
    assert [p.name for p in tmp_path.iterdir()] == ["m.tflite"]


def test_dynamic_range_refuses_asymmetric_and_wide_weights(tmp_path):
    config = QuantConfig(LayerSpec(TensorSpec(bits=8, symmetric=True, learner="minmax"), None),
                         by_name={"conv": {"weights": {"symmetric": False}},
                                  "fc": {"weights": {"bits": 12}}})
    qmodel = _small(config)
    with pytest.raises(ValueError, match="dynamic_range") as info:
        tfquant.export.tflite(qmodel, tmp_path / "m.tflite", mode="dynamic_range")
    message = str(info.value)
    assert "conv: kernel quantizer is asymmetric" in message, message
    assert "fc: 12-bit kernel" in message, message
    assert list(tmp_path.iterdir()) == []


def test_dynamic_range_warns_about_weights_without_quantizer():
    keras.utils.set_random_seed(3)
    inp = keras.Input((64,))
    x = L.Dense(48, name="fc1")(inp)
    model = keras.Model(inp, L.Dense(40, name="fc2")(x))  # 1920 weights, left in float
    qmodel = tfquant.ptq.dynamic_range(model, {"preset": "tflite_int8",
                                               "by_name": {"fc2": {"skip": True}}})
    with pytest.warns(UserWarning, match="own scales"):
        tfquant.export.tflite(qmodel, mode="dynamic_range")


def test_dynamic_range_matches_weights_one_step_apart_on_their_channel(recwarn):
    """The converter re-rounds the fake-quantized weights to its own per-channel grid; a value
    can land one step of its own (small) channel away, more than half the model's largest step
    (seed 2 of this network: pw, one weight 86 vs 85). The weights must still be matched."""
    keras.utils.set_random_seed(2)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(48, 3, padding="same", use_bias=False, name="conv1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.ReLU(6.0, name="relu2")(x)
    x = L.Conv2D(48, 1, name="pw")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inp, L.Dense(5, name="fc")(x))
    qmodel = tfquant.ptq.dynamic_range(model)
    flat = tfquant.export.tflite(qmodel, mode="dynamic_range")
    assert not [w for w in recwarn if "own scales" in str(w.message)]

    q = qmodel.get_layer("quant_pw").weight_quantizers["kernel"]
    scale = np.asarray(q.quant_params().scale, F32)
    kernel = np.transpose(model.get_layer("pw").kernel.numpy(), (3, 0, 1, 2))  # OHWI
    expected = np.clip(np.round(kernel / scale.reshape(-1, 1, 1, 1)), -127, 127)
    interpreter = Interpreter(model_content=flat)
    found = [interpreter.get_tensor(t["index"]) for t in interpreter.get_tensor_details()
             if t["dtype"] == np.int8 and tuple(t["shape"]) == kernel.shape]
    assert len(found) == 1
    np.testing.assert_array_equal(found[0], expected)
