"""tfmot's documented QAT examples, run on Keras 3 with only the import changed.

The code inside each test is that of the TensorFlow Model Optimization guides ("Quantization
aware training comprehensive guide" and "Quantization aware training in Keras example"),
with ``import tensorflow_model_optimization as tfmot`` replaced by
``import tfquant.compat as tfmot`` and MNIST replaced by the bundled 5,000-image sample.
"""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
import tensorflow as tf

import tfquant.compat as tfmot  # was: import tensorflow_model_optimization as tfmot
from tfquant.datasets import load_mnist_sample
from tfquant.layers import QuantizeWrapper
from tfquant.quantizers import MinMaxQuantizer
from tfquant.specs import LayerSpec, TensorSpec

input_shape = [20]


def setup_model():
    model = tf.keras.Sequential([
        tf.keras.layers.Dense(20, input_shape=input_shape),
        tf.keras.layers.Flatten()
    ])
    return model


def setup_pretrained_weights(x_train, y_train):
    model = setup_model()
    model.compile(loss=tf.keras.losses.categorical_crossentropy, optimizer="adam",
                  metrics=["accuracy"])
    model.fit(x_train, y_train, verbose=0)
    _, pretrained_weights = tempfile.mkstemp(".weights.h5")
    model.save_weights(pretrained_weights)
    return pretrained_weights


@pytest.fixture(scope="module")
def pretrained():
    tf.keras.utils.set_random_seed(0)
    x_train = np.random.randn(1, 20).astype(np.float32)
    y_train = tf.keras.utils.to_categorical(np.random.randn(1), num_classes=20)
    return setup_pretrained_weights(x_train, y_train)


def _quantized_layers(model):
    return sorted(layer.layer.name for layer in model.layers if isinstance(layer, QuantizeWrapper))


def test_quantize_whole_model_matches_tfmot_default_scheme(pretrained, ref, rng):
    base_model = setup_model()
    base_model.load_weights(pretrained)  # optional but recommended for model accuracy
    quant_aware_model = tfmot.quantization.keras.quantize_model(base_model)
    quant_aware_model.summary(print_fn=lambda *a, **k: None)
    assert [layer.name for layer in quant_aware_model.layers if isinstance(
        layer, QuantizeWrapper)] == ["quant_" + base_model.layers[0].name]  # tfmot's naming
    # tfmot's default 8-bit scheme for Dense, by hand: per-tensor symmetric narrow-range
    # weights (range = max|w|), asymmetric 8-bit activations starting at [-6, 6]
    x = rng.normal(0.0, 2.0, size=(16, 20)).astype(np.float32)
    w, b = base_model.layers[0].get_weights()
    m = np.abs(w).max()
    x_q, _ = ref.fake_quant(x, -6.0, 6.0, 8, False)
    w_q, _ = ref.fake_quant(w, -m, m, 8, True)
    y_ref, _ = ref.fake_quant(x_q @ w_q + b, -6.0, 6.0, 8, False)
    y = quant_aware_model(x, training=False).numpy()
    lsb = 12.0 / 255.0
    assert np.abs(y - y_ref).max() <= lsb * 1.001
    assert np.mean(np.abs(y - y_ref) < 1e-5) > 0.97


def test_quantize_some_layers_with_clone_model(pretrained):
    base_model = setup_model()
    base_model.load_weights(pretrained)

    def apply_quantization_to_dense(layer):
        if isinstance(layer, tf.keras.layers.Dense):
            return tfmot.quantization.keras.quantize_annotate_layer(layer)
        return layer

    annotated_model = tf.keras.models.clone_model(
        base_model,
        clone_function=apply_quantization_to_dense,
    )
    quant_aware_model = tfmot.quantization.keras.quantize_apply(annotated_model)
    assert _quantized_layers(quant_aware_model) == [base_model.layers[0].name]
    x = np.ones((2, 20), np.float32)
    np.testing.assert_allclose(quant_aware_model(x).numpy(), base_model(x).numpy(), atol=0.1)


def test_annotate_functional_and_sequential():
    i = tf.keras.Input(shape=(20,))
    x = tfmot.quantization.keras.quantize_annotate_layer(tf.keras.layers.Dense(10))(i)
    o = tf.keras.layers.Flatten()(x)
    annotated_model = tf.keras.Model(inputs=i, outputs=o)
    quant_aware_model = tfmot.quantization.keras.quantize_apply(annotated_model)
    assert _quantized_layers(quant_aware_model) == [annotated_model.layers[1].layer.name]

    annotated_model = tf.keras.Sequential([
        tfmot.quantization.keras.quantize_annotate_layer(
            tf.keras.layers.Dense(20, input_shape=input_shape)),
        tf.keras.layers.Flatten()
    ])
    quant_aware_model = tfmot.quantization.keras.quantize_apply(annotated_model)
    assert quant_aware_model.input_shape == (None, 20)
    assert len(_quantized_layers(quant_aware_model)) == 1


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_checkpoint_and_deserialize(pretrained, suffix, rng):
    model = setup_model()
    model.load_weights(pretrained)
    quant_aware_model = tfmot.quantization.keras.quantize_model(model)
    x = rng.normal(size=(4, 20)).astype(np.float32)
    quant_aware_model(x, training=True)  # move the ranges off their initial values
    _, keras_model_file = tempfile.mkstemp(suffix)
    quant_aware_model.save(keras_model_file)
    with tfmot.quantization.keras.quantize_scope():
        loaded_model = tf.keras.models.load_model(keras_model_file)
    np.testing.assert_array_equal(loaded_model(x).numpy(), quant_aware_model(x).numpy())
    # tfquant needs no scope at all
    np.testing.assert_array_equal(tf.keras.models.load_model(keras_model_file)(x).numpy(),
                                  quant_aware_model(x).numpy())


class CustomLayer(tf.keras.layers.Dense):  # not registered: needs the custom-object scope
    pass


def test_custom_layer_and_config_migration(rng):
    # tfmot: quantize_annotate_layer(CustomLayer(...), DefaultDenseQuantizeConfig()) under
    # quantize_scope({...}). tfquant: a LayerSpec instead of the QuantizeConfig class.
    quantize_annotate_layer = tfmot.quantization.keras.quantize_annotate_layer
    quantize_annotate_model = tfmot.quantization.keras.quantize_annotate_model
    quantize_scope = tfmot.quantization.keras.quantize_scope
    four_bit = LayerSpec(weights=TensorSpec(bits=4, symmetric=True, narrow_range=True,
                                            learner="minmax"),
                         activations=TensorSpec(bits=8, learner="ema"))
    model = quantize_annotate_model(tf.keras.Sequential([
        quantize_annotate_layer(CustomLayer(20, input_shape=(20,)), four_bit),
        tf.keras.layers.Flatten()
    ]))
    with quantize_scope({"CustomLayer": CustomLayer}):
        quant_aware_model = tfmot.quantization.keras.quantize_apply(model)
    wrapper = quant_aware_model.get_layer("quant_custom_layer")
    quantizer = wrapper.weight_quantizers["kernel"]
    assert isinstance(quantizer, MinMaxQuantizer) and quantizer.spec.bits == 4
    used = quantizer(wrapper.layer.kernel, training=False).numpy()
    assert len(np.unique(used)) <= 15  # 4-bit narrow range
    _, path = tempfile.mkstemp(".keras")
    quant_aware_model.save(path)
    with quantize_scope({"CustomLayer": CustomLayer}):
        loaded = tf.keras.models.load_model(path)
    x = rng.normal(size=(3, 20)).astype(np.float32)
    np.testing.assert_array_equal(loaded(x).numpy(), quant_aware_model(x).numpy())
    assert type(loaded.get_layer("quant_custom_layer").layer).__name__ == "CustomLayer"


def test_tfmot_specific_names_explain_the_replacement():
    with pytest.raises(AttributeError, match="LayerSpec"):
        tfmot.quantization.keras.QuantizeConfig
    with pytest.raises(AttributeError, match="learner"):
        tfmot.quantization.keras.quantizers.LastValueQuantizer
    with pytest.raises(TypeError, match="QuantizeConfig classes"):
        tfmot.quantization.keras.quantize_annotate_layer(tf.keras.layers.Dense(2), object())
    model = tf.keras.Sequential([tfmot.quantization.keras.quantize_annotate_layer(
        tf.keras.layers.Dense(2, input_shape=(3,)))])
    with pytest.raises(TypeError, match="tflite_int8"):
        tfmot.quantization.keras.quantize_apply(model, object())
    with pytest.raises(ValueError, match="quant_"):
        tfmot.quantization.keras.quantize_apply(model, quantized_layer_name_prefix="q_")
    with pytest.raises(TypeError, match="dictionaries"):
        with tfmot.quantization.keras.quantize_scope("CustomLayer"):
            pass


def test_qat_keras_example_end_to_end():
    (train_images, train_labels), (test_images, test_labels) = load_mnist_sample()
    train_images, test_images = train_images[..., 0], test_images[..., 0]
    tf.keras.utils.set_random_seed(0)

    # Define the model architecture.
    model = tf.keras.Sequential([
        tf.keras.layers.InputLayer(input_shape=(28, 28)),
        tf.keras.layers.Reshape(target_shape=(28, 28, 1)),
        tf.keras.layers.Conv2D(filters=12, kernel_size=(3, 3), activation="relu"),
        tf.keras.layers.MaxPooling2D(pool_size=(2, 2)),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(10)
    ])
    # Train the digit classification model
    model.compile(optimizer="adam",
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(train_images, train_labels, epochs=1, validation_split=0.1, verbose=0)

    quantize_model = tfmot.quantization.keras.quantize_model
    # q_aware stands for for quantization aware.
    q_aware_model = quantize_model(model)
    # `quantize_model` requires a recompile.
    q_aware_model.compile(optimizer="adam",
                          loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=["accuracy"])
    train_images_subset = train_images[0:1000]  # out of 60000
    train_labels_subset = train_labels[0:1000]
    q_aware_model.fit(train_images_subset, train_labels_subset,
                      batch_size=500, epochs=1, validation_split=0.1, verbose=0)

    _, baseline_model_accuracy = model.evaluate(test_images, test_labels, verbose=0)
    _, q_aware_model_accuracy = q_aware_model.evaluate(test_images, test_labels, verbose=0)
    assert baseline_model_accuracy > 0.8
    assert q_aware_model_accuracy >= baseline_model_accuracy - 0.03

    converter = tf.lite.TFLiteConverter.from_keras_model(q_aware_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    quantized_tflite_model = converter.convert()

    def evaluate_model(interpreter):
        input_index = interpreter.get_input_details()[0]["index"]
        output_index = interpreter.get_output_details()[0]["index"]
        prediction_digits = []
        for i, test_image in enumerate(test_images):
            test_image = np.expand_dims(test_image, axis=0).astype(np.float32)
            interpreter.set_tensor(input_index, test_image)
            interpreter.invoke()
            output = interpreter.tensor(output_index)
            digit = np.argmax(output()[0])
            prediction_digits.append(digit)
        prediction_digits = np.array(prediction_digits)
        accuracy = (prediction_digits == test_labels).mean()
        return accuracy

    from ai_edge_litert.interpreter import Interpreter  # tf.lite.Interpreter is deprecated

    interpreter = Interpreter(model_content=quantized_tflite_model)
    interpreter.allocate_tensors()
    test_accuracy = evaluate_model(interpreter)
    assert abs(test_accuracy - q_aware_model_accuracy) <= 0.01
    ops = {op["op_name"] for op in interpreter._get_ops_details()}  # noqa: SLF001
    assert "CONV_2D" in ops and "FULLY_CONNECTED" in ops
    conv = [t for t in interpreter.get_tensor_details() if len(t["shape"]) == 4
            and tuple(t["shape"]) == (12, 3, 3, 1)]
    assert conv and conv[0]["dtype"] == np.int8  # the QAT weights really are int8
