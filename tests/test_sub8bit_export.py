"""Sub-8-bit (LSQ W4A4) models exported to TFLite int8 keep their QAT behaviour.

TFLite has no int4 kernels, so :func:`tfquant.fake_quant.int8_container` stores each b-bit
tensor as its b-bit integers shifted left by ``8 - b`` bits. A small MobileNetV2-style model
(inverted residuals, depthwise, ReLU6, folded BN, Add, per-channel 4-bit LSQ weights, asymmetric
4-bit LSQ+ activations, 8-bit first/last layers) is trained briefly on scikit-learn's digits and
exported; the checks are

* the TFLite model predicts the Keras fake-quant model's class on >= 99 % of the test images
  with the default (XNNPACK) kernels, >= 97 % with the reference kernels (``BUILTIN_REF``),
  and (XNNPACK) its accuracy is within 0.5 pp of the Keras model's;
* with every layer fed TFLite's own input (teacher forcing), each quantized layer's TFLite
  output is within one b-bit step of the Keras layer's output, and off at all on < 1 % of the
  elements of every convolution, depthwise and Add (< 10 % for the global average pool).

Why the reference kernels and MEAN get looser bounds: their fixed-point requantisation
rounds twice, with an intermediate resolution of ``2**e`` output steps for a multiplier
``m * 2**e``; near a rounding tie they can differ from exact (and from Keras' float32) by one
step. For convolutions the int8 container keeps ``e`` very negative (the b-bit integers are
shifted left, so accumulators are large); MEAN rescales its sum before dividing by the count
(``e`` around -5 to -7 for a 4-bit output), and the few levels of a 4-bit input make the same
near-tie value recur, so a few percent of pooled values are one step off. A 4-bit network
amplifies any one-step difference, hence a few flipped predictions. XNNPACK requantises in
float with a single rounding, like the Keras model.
* read from the flatbuffer itself (not through the interpreter): every 4-bit weight tensor
  holds multiples of ``2**4`` within ``+-7 * 2**4``, with the per-channel scale ``step / 16``
  of the Keras LSQ quantizer, and its integers equal a numpy LSQ quantization of the folded
  Keras kernel; every 4-bit activation tensor the interpreter computes sits on the 16-level
  grid of its quantizer.
"""

from __future__ import annotations

import contextlib
import io

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfquant
from tfquant import datasets, zoo
from tfquant.layers import QuantizeWrapper

F32 = np.float32
BLOCKS = ((2, 8, 1), (2, 16, 2), (2, 16, 1))


def _interpreter(flatbuffer: bytes, x: np.ndarray, reference: bool):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {}
    if reference:
        kwargs = dict(experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                      experimental_preserve_all_tensors=True)
    interp = Interpreter(model_content=flatbuffer, **kwargs)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], [len(x), *x.shape[1:]])
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x.astype(F32))
    interp.invoke()
    return interp


def _output(interp) -> np.ndarray:
    return interp.get_tensor(interp.get_output_details()[0]["index"])


@pytest.fixture(scope="module")
def w4a4():
    (x_train, y_train), (x_test, y_test) = datasets.load_digits()
    keras.utils.set_random_seed(0)
    model = zoo.mobilenet_v2_style(x_train.shape[1:], 10, seed=0, stem_filters=8, blocks=BLOCKS)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, batch_size=64, epochs=8, verbose=0)
    qmodel = tfquant.quantize_model(model, config="lsq_w4a4")
    qmodel.compile(optimizer=keras.optimizers.Adam(1e-3),
                   loss="sparse_categorical_crossentropy")
    qmodel.fit(x_train, y_train, batch_size=64, epochs=1, verbose=0)
    with contextlib.redirect_stdout(io.StringIO()):
        flatbuffer = tfquant.export.tflite(qmodel)
    return {"qmodel": qmodel, "flatbuffer": flatbuffer, "x": x_test, "y": y_test,
            "keras": qmodel.predict(x_test, verbose=0)}


@pytest.mark.parametrize("reference,min_agreement,max_acc_gap",
                         [(True, 0.97, None), (False, 0.99, 0.005)],
                         ids=["builtin_ref", "xnnpack"])
def test_tflite_predicts_like_the_keras_w4a4_model(w4a4, reference, min_agreement, max_acc_gap):
    keras_pred = w4a4["keras"].argmax(-1)
    tfl_pred = _output(_interpreter(w4a4["flatbuffer"], w4a4["x"], reference)).argmax(-1)
    agreement = float(np.mean(tfl_pred == keras_pred))
    keras_acc = float(np.mean(keras_pred == w4a4["y"]))
    tfl_acc = float(np.mean(tfl_pred == w4a4["y"]))
    assert keras_acc > 0.6, f"the W4A4 model did not train: accuracy {keras_acc:.3f}"
    assert agreement >= min_agreement, f"TFLite agrees with Keras on {100 * agreement:.1f}%"
    if max_acc_gap is not None:  # reference kernels: the agreement bound is the check
        assert abs(tfl_acc - keras_acc) <= max_acc_gap, (tfl_acc, keras_acc)


def _last_tensor_of_each_layer(interp, names):
    """Keras layer name -> index of the last TFLite tensor computed for it (op order)."""
    details = {t["index"]: t for t in interp.get_tensor_details()}
    found = {}
    for op in interp._get_ops_details():  # noqa: SLF001 - no public op list
        out = op["outputs"][0]
        tensor_name = details[out]["name"]
        hits = [n for n in names if f"{n}_1/" in tensor_name]
        if hits:
            found[min(hits, key=lambda n: tensor_name.find(f"{n}_1/"))] = out
    return found, details


def test_each_layer_matches_keras_given_the_same_input(w4a4):
    """Teacher forcing: each Keras layer runs on TFLite's own (dequantized) input tensor."""
    qmodel, x = w4a4["qmodel"], w4a4["x"][:200]
    interp = _interpreter(w4a4["flatbuffer"], x, reference=True)
    found, details = _last_tensor_of_each_layer(interp, [layer.name for layer in qmodel.layers])

    def dequantized(index):
        scale, zero = details[index]["quantization"]
        return (interp.get_tensor(index).astype(F32) - zero) * scale

    values = {qmodel.layers[0].name: x.astype(F32)}
    checked = 0
    for layer in qmodel.layers[1:]:
        sources = [t._keras_history.operation.name
                   for t in layer._inbound_nodes[0].input_tensors]
        inputs = [values[s] for s in sources]
        y = np.asarray(layer(inputs if len(inputs) > 1 else inputs[0], training=False))
        values[layer.name] = y
        quantized = isinstance(layer, QuantizeWrapper) and layer.output_quantizer is not None
        if not quantized or layer.name not in found or layer.name == "quant_predictions":
            continue
        step = float(layer.output_quantizer.quant_params().scale)
        got = dequantized(found[layer.name])
        off = np.abs(got - y) / step
        assert off.max() <= 1.0 + 1e-3, (layer.name, off.max())
        limit = 0.1 if isinstance(layer.layer, keras.layers.GlobalAveragePooling2D) else 0.01
        assert np.mean(off > 0.5) < limit, (layer.name, np.mean(off > 0.5))
        values[layer.name] = got  # teacher forcing
        checked += 1
    assert checked >= 10


def _flatbuffer_tensors(flatbuffer: bytes):
    """(name, int8 values, scales, quantized dimension) of every constant int8 tensor."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    out = []
    for tensor in model.subgraphs[0].tensors:
        data = model.buffers[tensor.buffer].data
        if tensor.type != schema.TensorType.INT8 or data is None or len(data) == 0:
            continue
        values = np.frombuffer(bytes(bytearray(data)), np.int8).reshape(tensor.shape)
        quant = tensor.quantization
        out.append((tensor.name.decode(), values, np.asarray(quant.scale, F32),
                    quant.quantizedDimension))
    return out


def test_4bit_weights_are_stored_on_the_4bit_grid(w4a4, ref):
    """Weights: TF's FakeQuant (numpy model, conftest) on ``[-7 s, 7 s]``, 4 bits narrow."""
    qmodel = w4a4["qmodel"]
    tensors = _flatbuffer_tensors(w4a4["flatbuffer"])
    checked = 0
    for layer in qmodel.layers:
        if not isinstance(layer, QuantizeWrapper) or not layer.weight_quantizers:
            continue
        (attr, quantizer), = layer.weight_quantizers.items()
        if quantizer.spec.bits != 4:
            continue
        kernel = np.asarray(layer.folded_weights()[attr], F32)
        step = np.abs(quantizer.step_size.numpy()) + F32(1e-12)
        if isinstance(layer.layer, keras.layers.DepthwiseConv2D):
            kernel = kernel.reshape(kernel.shape[:2] + (1, -1))   # TFLite: 1 H W C*M
        values, _ = ref.fake_quant(kernel, -7 * step, 7 * step, 4, True, axis=-1)
        scale = ref.nudge(-7 * step, 7 * step, 4, True)[0]
        integers = np.round(values / scale).astype(np.int64)
        if isinstance(layer.layer, keras.layers.DepthwiseConv2D):
            expected = np.transpose(integers, (2, 0, 1, 3))
        else:                                                    # TFLite conv: O H W I
            expected = np.transpose(integers, (3, 0, 1, 2))
        matches = [t for t in tensors if t[1].shape == expected.shape
                   and f"{layer.name}_1/" in t[0]]
        assert len(matches) == 1, (layer.name, [t[0] for t in tensors])
        _, ints, scales, dim = matches[0]
        ints = ints.astype(np.int64)
        assert np.all(ints % 16 == 0) and np.abs(ints).max() <= 7 * 16, layer.name
        assert dim == (3 if isinstance(layer.layer, keras.layers.DepthwiseConv2D) else 0)
        np.testing.assert_allclose(scales, step / 16, rtol=1e-5, err_msg=layer.name)
        np.testing.assert_array_equal(ints // 16, expected, err_msg=layer.name)
        checked += 1
    assert checked >= 8


def test_4bit_activations_stay_on_the_4bit_grid(w4a4):
    qmodel = w4a4["qmodel"]
    interp = _interpreter(w4a4["flatbuffer"], w4a4["x"][:100], reference=True)
    found, details = _last_tensor_of_each_layer(interp, [layer.name for layer in qmodel.layers])
    checked = 0
    for layer in qmodel.layers:
        if not isinstance(layer, QuantizeWrapper) or layer.output_quantizer is None:
            continue
        params = layer.output_quantizer.quant_params()
        if params.bits != 4 or layer.name not in found:
            continue
        index = found[layer.name]
        scale, zero = details[index]["quantization"]
        np.testing.assert_allclose(scale, float(params.scale) / 16, rtol=1e-5)
        assert zero == int(params.zero_point) * 16, layer.name
        q = interp.get_tensor(index).astype(np.int64) - zero
        assert np.all(q % 16 == 0), layer.name
        levels = q // 16 + int(params.zero_point) + 8  # the unsigned 4-bit level, 0..15
        assert levels.min() >= 0 and levels.max() <= 15, layer.name
        checked += 1
    assert checked >= 8


def test_the_integer_simulator_runs_the_w4a4_export_bit_exact(w4a4):
    """The int8 container clips activations to the b-bit range with MINIMUM/MAXIMUM ops, which
    the simulator reads as well; it reproduces the reference kernels bit for bit."""
    from tfquant.simulate import IntegerModel

    x = w4a4["x"][:64]
    reference = _interpreter(w4a4["flatbuffer"], x, True)
    assert {"MINIMUM", "MAXIMUM"} <= {op["op_name"]
                                      for op in reference._get_ops_details()}  # noqa: SLF001
    simulated = IntegerModel.from_tflite(w4a4["flatbuffer"])(x)
    np.testing.assert_array_equal(simulated, _output(reference))



def test_a_shared_layer_with_4bit_weights_is_refused_before_conversion(tmp_path):
    """A Conv2D called twice with 4-bit weights: the converter would leave both convolutions
    in float, so the exporter refuses it up front, naming the layer, and writes nothing; with
    8-bit weights the same model exports with every op in int8."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    shared = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="shared")
    a = shared(x)
    y = keras.layers.Dense(4, name="fc")(keras.layers.Flatten()(
        keras.layers.Concatenate(name="cat")([a, shared(a)])))
    model = keras.Model(inp, y)
    data = np.random.default_rng(0).uniform(0, 1, (32, 8, 8, 1)).astype(F32)
    path = tmp_path / "m.tflite"
    for bits in (4, 8):
        cfg = tfquant.QuantConfig(by_name={"shared": {"weights": {"bits": bits}}})
        qmodel = tfquant.quantize_model(model, config=cfg)
        tfquant.calibrate(qmodel, data, verbose=0)
        if bits == 4:
            with pytest.raises(ValueError, match="shared: a layer called 2 times"):
                tfquant.export.tflite(qmodel, path)
            assert not path.exists()
        else:
            with contextlib.redirect_stdout(io.StringIO()):
                tfquant.export.tflite(qmodel, path)   # strict: raises if any op is float
            assert path.exists()
