"""Keras behaviour of the public classes: ``.keras`` save / load (in a fresh process, no
custom-object scope), get_config round trips, and training resumed from a saved model."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfquant
from tfquant.layers import QuantizeAnnotate, QuantizeWrapper
from tfquant.quantizers import LSQQuantizer, MinMaxQuantizer, PACTQuantizer
from tfquant.specs import LayerSpec, TensorSpec

PUBLIC = {"QuantizeWrapper", "QuantizeAnnotate", "MinMaxQuantizer", "LSQQuantizer",
          "PACTQuantizer"}


def _cnn(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inp, x, name="cnn")


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, size=(n, 6, 6, 2)).astype(np.float32),
            rng.integers(0, 3, size=n))


def _compile(model):
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=False)
    return model


def _eager_train_step(model, x):
    """One SGD step without compiling (no tf.function tracing: fast for tiny models)."""
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(x, training=True) ** 2)
    for var, grad in zip(model.trainable_weights,
                         tape.gradient(loss, model.trainable_weights)):
        if grad is not None:
            var.assign_sub(0.05 * grad)


def _weights(model):
    return {v.path: v.numpy() for v in model.weights}


def _classes(model):
    found = set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        found.add(type(layer).__name__)
    return found


LOADER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras
    import tfquant  # registers the classes; no custom_object_scope / custom_objects
    out = {}
    data = np.load(sys.argv[1])
    for key, path in json.loads(sys.argv[2]).items():
        model = keras.saving.load_model(path)
        pred = keras.ops.convert_to_numpy(model(data["x"], training=False))
        np.savez(path + ".npz", pred=pred, **{"w:" + v.path: v.numpy() for v in model.weights})
        out[key] = sorted({type(l).__name__ for l in
                           model._flatten_layers(include_self=False, recursive=True)})
    print("RESULT" + json.dumps(out))
""")


def test_keras_round_trip_in_fresh_process(tmp_path):
    x, y = _data()
    models = {
        "lsq": tfquant.quantize_model(_cnn(), "lsq_w4a4"),  # LSQ, LSQ+ quantizers
        "pact": tfquant.quantize_model(_cnn(), "pact_w4a4"),  # PACT + min/max quantizers
        "annotated": tfquant.quantize_annotate_model(_cnn()),
    }
    paths = {}
    for key, model in models.items():
        if key != "annotated":  # trained state, not initial values
            for batch in (x[:16], x[16:]):
                _eager_train_step(model, batch)
        paths[key] = str(tmp_path / f"{key}.keras")
        model.save(paths[key])
    np.savez(tmp_path / "x.npz", x=x)
    proc = subprocess.run([sys.executable, "-c", LOADER, str(tmp_path / "x.npz"),
                           json.dumps(paths)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    classes = json.loads(proc.stdout.split("RESULT")[-1])
    assert PUBLIC <= set().union(*map(set, classes.values()))  # every public class covered
    for key, model in models.items():
        assert set(classes[key]) == _classes(model)
        loaded = np.load(paths[key] + ".npz")
        np.testing.assert_array_equal(loaded["pred"], model(x, training=False).numpy())
        original = _weights(model)
        restored = {k[2:]: loaded[k] for k in loaded.files if k.startswith("w:")}
        assert restored.keys() == original.keys()
        for name, value in original.items():
            np.testing.assert_array_equal(restored[name], value, err_msg=name)
    # the quantizer state really is trained state, not initial values
    conv = models["pact"].get_layer("quant_conv")
    assert int(conv.weight_quantizers["kernel"].steps.numpy()) == 2
    lsq_in = [q for q in models["lsq"].layers if isinstance(q, LSQQuantizer)][0]
    assert bool(lsq_in.initialized.numpy())


@pytest.mark.parametrize("make", [
    lambda: MinMaxQuantizer(TensorSpec(learner="ema", per_axis=True, bits=6), axis=(-2, -1),
                            name="mm"),
    lambda: LSQQuantizer(TensorSpec(learner="lsq_plus", bits=3, freeze_step=7), name="lsq"),
    lambda: PACTQuantizer(TensorSpec(learner="pact", init_min=0.0, init_max=4.0,
                                     regularization=0.1), name="pact"),
], ids=["minmax", "lsq", "pact"])
def test_quantizer_config_round_trip(make):
    q = make()
    config = json.loads(json.dumps(q.get_config()))
    clone = type(q).from_config(config)
    assert clone.spec == q.spec and clone.axis == q.axis and clone.name == q.name
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(q))
    assert type(restored) is type(q) and restored.spec == q.spec


def test_wrapper_and_annotate_config_round_trip():
    bn = keras.layers.BatchNormalization(name="bn")
    spec = LayerSpec(TensorSpec(bits=4, symmetric=True, narrow_range=True, learner="lsq"),
                     TensorSpec(bits=6), bn_freeze_step=5)
    w = QuantizeWrapper(keras.layers.Conv2D(3, 3, name="c"), spec, quantize_output=False,
                        batchnorm=bn)
    restored = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(w))))
    assert type(restored) is QuantizeWrapper and restored.spec == spec
    assert restored.output_quantizer is None and restored.batchnorm.name == "bn"
    assert restored.layer.get_config() == w.layer.get_config()
    a = QuantizeAnnotate(keras.layers.Dense(2, name="d"), spec)
    ra = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(a))
    assert type(ra) is QuantizeAnnotate and ra.spec == spec and ra.layer.units == 2


def test_resumed_training_continues_identically(tmp_path):
    x, y = _data(seed=1)
    model = _compile(tfquant.quantize_model(_cnn(seed=3)))
    model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    path = str(tmp_path / "ckpt.keras")
    model.save(path)
    model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    resumed = keras.saving.load_model(path)
    resumed.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    a, b = _weights(model), _weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-6, atol=1e-7, err_msg=name)
    assert int(resumed.optimizer.iterations.numpy()) == 8
    steps = resumed.get_layer("quant_conv").weight_quantizers["kernel"].steps
    assert int(steps.numpy()) == 8  # step counters were restored, not restarted
