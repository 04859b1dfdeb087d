"""Coverage sweep: ``keras.applications`` models through the whole int8 path.

For each architecture (``weights=None``, small inputs, 5 classes): ``quantize_model`` -> one
training step -> ``tfquant.export.tflite`` (int8 I/O) -> no float op left in the flatbuffer ->
``IntegerModel.from_tflite`` bit-exact with the LiteRT interpreter running its reference kernels
(``OpResolverType.BUILTIN_REF``, an independent implementation) on a batch of images.

The simulator runs with ``jit_compile=False``: the same kernels executed eagerly, one small
batch, without tracing and XLA-compiling a graph of hundreds of ops (DenseNet121: 1.2 s instead
of 27 s, NASNetMobile far more). tests/simulate checks both executions against the reference;
here the models of ``SWEEP_XLA`` (the cheapest to compile) run the XLA-compiled one instead.

The fast tests at the top check the building blocks the sweep needed (keras.ops arithmetic in
Functional graphs, affine preprocessing layers) on small models through the same path.
"""

from __future__ import annotations

import collections

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

import tfquant
from tfquant.export.tflite import float_ops
from tfquant.layers.affine import split_affine
from tfquant.simulate import IntegerModel

L = keras.layers
CLASSES = 5
BATCH = 4


def run_pipeline(model: keras.Model, images: np.ndarray, jit_compile: bool = False) -> dict:
    """quantize -> one SGD step -> int8 TFLite -> float-op check -> simulator vs reference.

    Returns a row of the sweep table: ``ops`` (TFLite operators), ``op_types`` (a Counter),
    ``float_ops`` (names of ops still computing in float), ``bit_exact`` (fraction of equal
    outputs), ``report`` (layers quantize_model left in float).
    """
    qmodel = tfquant.quantize_model(model)
    labels = np.arange(2) % CLASSES
    qmodel.compile(keras.optimizers.SGD(1e-3), "sparse_categorical_crossentropy",
                   jit_compile=False, run_eagerly=True)   # one step: eager is ~10x cheaper
    qmodel.train_on_batch(images[:2], labels)
    data = tfquant.export.tflite(qmodel, input_type="int8", output_type="int8", strict=False)
    remaining = [str(op) for op in float_ops(data)]

    reference = Interpreter(model_content=data,
                            experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    op_types = collections.Counter(op["op_name"] for op in reference._get_ops_details())
    inp, out = reference.get_input_details()[0], reference.get_output_details()[0]
    scale, zero_point = inp["quantization"]
    x_q = np.clip(np.round(images / scale) + zero_point, -128, 127).astype(np.int8)
    reference.resize_tensor_input(inp["index"], x_q.shape)
    reference.allocate_tensors()
    reference.set_tensor(inp["index"], x_q)
    reference.invoke()
    expected = reference.get_tensor(out["index"])
    row = {"ops": sum(op_types.values()), "op_types": op_types, "float_ops": remaining,
           "report": qmodel.quantization_report.float_layers, "bit_exact": None}
    if not remaining:
        got = np.asarray(IntegerModel.from_tflite(data, jit_compile=jit_compile)(x_q))
        assert got.shape == expected.shape
        row["bit_exact"] = float(np.mean(got == expected))
    return row


def _images(size: int, low: float, high: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, (BATCH, size, size, 3)).astype(np.float32)


def _assert_clean(row: dict) -> None:
    assert row["report"] == [], f"layers left in float: {row['report']}"
    assert row["float_ops"] == [], f"float ops left: {row['float_ops']}"
    assert row["bit_exact"] == 1.0


# ----------------------------------------------------------------------------------------------
# building blocks (fast)
# ----------------------------------------------------------------------------------------------
def _hard_sigmoid_se_model() -> keras.Model:
    """MobileNetV3's squeeze-excite: keras.ops ``x + 3.0`` and ``* (1/6)`` around a ReLU6."""
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same")(inp)
    x = L.Activation("hard_swish")(x)
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(8, 1)(s)
    s = L.ReLU(6.0)(s + 3.0) * (1.0 / 6.0)
    x = L.Multiply()([x, s])
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(CLASSES, activation="softmax")(x))


def test_keras_ops_arithmetic_is_quantized_and_relu6_fused():
    keras.utils.set_random_seed(1)
    qmodel = tfquant.quantize_model(_hard_sigmoid_se_model())
    entries = {e.type: e for e in qmodel.quantization_report.entries}
    assert entries["Add"].action == "quantize"           # the keras.ops Add of ``s + 3.0``
    assert entries["Multiply"].action == "quantize"
    assert qmodel.quantization_report.float_layers == []
    # ReLU6 after ``+ 3.0`` is fused: the Add has no quantizer of its own
    names = [layer.name for layer in qmodel.layers]
    assert not any(n.startswith("add") and n.endswith("output_quantizer") for n in names)
    assert any(n.startswith("multiply") and n.endswith("output_quantizer") for n in names)


def test_keras_ops_quantizers_round_trip_keras_format(tmp_path):
    keras.utils.set_random_seed(4)
    qmodel = tfquant.quantize_model(_hard_sigmoid_se_model())
    x = _images(8, -1, 1)
    qmodel(x, training=True)                 # move the activation ranges off their init
    path = tmp_path / "se.keras"
    qmodel.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(qmodel(x)))


def test_hard_sigmoid_se_model_end_to_end():
    keras.utils.set_random_seed(2)
    row = run_pipeline(_hard_sigmoid_se_model(), _images(8, -1, 1))
    _assert_clean(row)
    assert {"HARD_SWISH", "MUL", "ADD", "MEAN"} <= set(row["op_types"])


def _preprocessing_model() -> keras.Model:
    inp = keras.Input((8, 8, 3))
    x = L.Rescaling(1.0 / 127.5, offset=-1.0, name="rescaling")(inp)
    x = L.Normalization(mean=[0.1, -0.2, 0.3], variance=[0.5, 2.0, 1.5], name="normalization")(x)
    x = L.Conv2D(4, 3)(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(CLASSES)(x))


@pytest.mark.parametrize("layer, n_parts", [
    (L.Rescaling(1.0 / 127.5, offset=-1.0), 2),
    (L.Normalization(mean=[0.1, -0.2, 0.3], variance=[0.5, 2.0, 1.5]), 2),
    (L.Normalization(mean=[0.0, 0.0, 0.0], variance=[0.5, 2.0, 1.5]), 1),
    (L.Rescaling([0.5, 2.0, 1.0]), 0),
    (L.Rescaling(1.0, offset=0.25), 0),
])
def test_split_affine_computes_the_layer(layer, n_parts):
    x = _images(4, -3, 3)
    expected = np.asarray(layer(x))                          # also builds Normalization
    parts = split_affine(layer)
    assert (0 if parts is None else len(parts)) == n_parts
    y = x
    for part in parts or ():
        y = np.asarray(part(y))
    if parts:
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_affine_preprocessing_end_to_end():
    keras.utils.set_random_seed(3)
    model = _preprocessing_model()
    qmodel = tfquant.quantize_model(model)
    names = {layer.name for layer in qmodel.layers}
    assert {"quant_rescaling_scale", "quant_rescaling", "quant_normalization_scale",
            "quant_normalization"} <= names
    row = run_pipeline(model, _images(8, 0, 255))
    _assert_clean(row)
    assert row["op_types"]["MUL"] == 2 and row["op_types"]["ADD"] == 2


def _standalone_bn_model() -> keras.Model:
    """DenseNet's patterns: a BatchNormalization after a Concatenate (nothing to fold into), an
    average pool (same-scale in int8) feeding a BN and a Concatenate."""
    inp = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same")(inp)
    b = L.Conv2D(4, 1)(inp)
    x = L.Concatenate()([a, b])
    x = L.BatchNormalization(name="bn")(x)
    x = L.Activation("relu")(x)
    x = L.Conv2D(4, 1)(x)
    x = L.AveragePooling2D(2)(x)
    y = L.BatchNormalization(name="bn_2")(x)
    y = L.Activation("relu")(y)
    y = L.Conv2D(4, 1)(y)
    x = L.Concatenate()([x, y])
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(CLASSES, activation="softmax")(x))


def test_standalone_batchnorm_and_average_pool_into_concatenate():
    keras.utils.set_random_seed(5)
    model = _standalone_bn_model()
    images = _images(8, -1, 1)
    qmodel = tfquant.quantize_model(model)
    wrapper = qmodel.get_layer("quant_bn")
    assert isinstance(wrapper.layer, L.DepthwiseConv2D) and wrapper.batchnorm is not None
    # training mode normalises with batch statistics and updates the moving mean
    before = np.asarray(wrapper.batchnorm.moving_mean).copy()
    qmodel(images, training=True)
    assert not np.allclose(np.asarray(wrapper.batchnorm.moving_mean), before)
    row = run_pipeline(model, images)
    _assert_clean(row)
    assert row["op_types"]["DEPTHWISE_CONV_2D"] == 2 and "MUL" not in row["op_types"]
    assert row["op_types"]["AVERAGE_POOL_2D"] == 1


# ----------------------------------------------------------------------------------------------
# the sweep (slow: one model per test, split over the xdist workers)
# ----------------------------------------------------------------------------------------------
# name -> (input size, input range): MobileNetV3 and EfficientNet* rescale [0, 255] inside the
# model (Rescaling / Normalization layers); the others take [-1, 1]. Xception and InceptionV3
# need at least 71 and 75 pixels.
SWEEP = {
    "MobileNet": (32, (-1, 1)),
    "MobileNetV2": (32, (-1, 1)),
    "MobileNetV3Small": (32, (0, 255)),
    "MobileNetV3Large": (32, (0, 255)),
    "ResNet50": (32, (-1, 1)),
    "EfficientNetB0": (32, (0, 255)),
    "EfficientNetV2B0": (32, (0, 255)),
    "DenseNet121": (32, (-1, 1)),
    "NASNetMobile": (32, (-1, 1)),
    "Xception": (71, (-1, 1)),
    "InceptionV3": (75, (-1, 1)),
    "VGG16": (32, (-1, 1)),
}

# these run the XLA-compiled simulator (the default execution) instead of the eager one
SWEEP_XLA = ("MobileNet", "MobileNetV2", "VGG16")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SWEEP))
def test_keras_application_int8_bit_exact(name):
    size, (low, high) = SWEEP[name]
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3),
                                              classes=CLASSES)
    row = run_pipeline(model, _images(size, low, high), jit_compile=name in SWEEP_XLA)
    print(f"\n| {name} | {row['ops']} | {len(row['float_ops'])} | "
          f"{100 * (row['bit_exact'] or 0):.1f} % |")
    _assert_clean(row)
