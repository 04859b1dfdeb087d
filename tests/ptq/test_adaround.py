"""AdaRound: learned rounding is never worse than nearest rounding, weights stay on the grid.

Tiny untrained models on real images (scikit-learn digits), 4-bit per-channel weights (where
rounding matters most) and a few hundred iterations, so the whole module runs in seconds.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfquant
from tfquant.datasets import load_digits
from tfquant.ptq.calibrate import calibrate
from tfquant.ptq.adaround import (AdaRoundLayer, adaround, adaroundable_layers,
                                  collect_layer_data, fused_activation, init_alpha,
                                  layer_consumers, rectified_sigmoid, reconstruction_loss,
                                  round_regularizer)

ITERATIONS = 300


@pytest.fixture(scope="module")
def digits():
    (x, _), (xt, _) = load_digits()
    return x[:384], xt[:256]  # calibration, held-out


def _model(batchnorm: bool) -> keras.Model:
    """Conv2D (ReLU) -> DepthwiseConv2D [-> BN] -> ReLU6 -> GAP -> Dense."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 1), name="input")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inp)
    h = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=not batchnorm,
                                     name="depthwise")(h)
    if batchnorm:
        h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(max_value=6.0, name="relu6")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    out = keras.layers.Dense(10, name="fc")(h)
    model = keras.Model(inp, out)
    if batchnorm:  # non-trivial folding factors and biases
        rng = np.random.default_rng(0)
        bn = model.get_layer("bn")
        bn.set_weights([rng.uniform(0.5, 2.0, 16).astype(np.float32),
                        rng.normal(0, 0.1, 16).astype(np.float32),
                        rng.normal(0, 0.1, 16).astype(np.float32),
                        rng.uniform(0.2, 1.5, 16).astype(np.float32)])
    return model


def _w4a8(bn_freeze_step=None) -> tfquant.QuantConfig:
    weights = tfquant.TensorSpec(bits=4, symmetric=True, per_axis=True, narrow_range=True,
                                 learner="minmax")
    return tfquant.QuantConfig(
        tfquant.LayerSpec(weights, tfquant.TensorSpec(bits=8, learner="ema"),
                          bn_freeze_step=bn_freeze_step),
        by_type={"Dense": {"weights": {"per_axis": False}}})


def _calibrated(model, x, config=None) -> keras.Model:
    """Quantized (W4A8 by default) and calibrated (min/max ranges) on ``x``."""
    qmodel = tfquant.quantize_model(model, config or _w4a8())
    calibrate(qmodel, x, verbose=0)
    return qmodel


def _wrappers(qmodel):
    return {w.layer.name: w for w in adaroundable_layers(qmodel)}


def test_rectified_sigmoid_and_regularizer():
    frac = np.linspace(0.0, 0.999, 50).astype(np.float32)
    h = rectified_sigmoid(tf.constant(init_alpha(frac))).numpy()
    np.testing.assert_allclose(h, frac, atol=1e-5)
    assert float(rectified_sigmoid(tf.constant(0.0))) == pytest.approx(0.5)
    assert float(rectified_sigmoid(tf.constant(20.0))) == 1.0   # rectified: reaches 0 and 1
    assert float(rectified_sigmoid(tf.constant(-20.0))) == 0.0
    assert float(round_regularizer(tf.constant([0.0, 1.0]), 20.0)) == 0.0
    assert float(round_regularizer(tf.constant([0.5]), 2.0)) == pytest.approx(1.0)


@pytest.mark.parametrize("batchnorm", [False, True], ids=["plain", "bn_folded"])
def test_adaround_never_worse_than_nearest(digits, batchnorm):
    x_cal, x_held = digits
    model = _model(batchnorm)
    reference = _calibrated(model, x_cal)   # nearest rounding, untouched
    qmodel = _calibrated(model, x_cal)
    adaround(qmodel, x_cal, iterations=ITERATIONS, learning_rate=1e-2, batch_size=32,
             num_batches=None, verbose=0)
    ref_layers, ada_layers = _wrappers(reference), _wrappers(qmodel)
    assert sorted(ada_layers) == ["conv", "depthwise", "fc"]
    assert {type(w.layer).__name__ for w in ada_layers.values()} == {
        "Conv2D", "DepthwiseConv2D", "Dense"}
    gains = {}
    for name, wrapper in ada_layers.items():
        ref = AdaRoundLayer.from_wrapper(ref_layers[name], None)
        ada = AdaRoundLayer.from_wrapper(wrapper, None)
        ref.activation = ada.activation = fused_activation(wrapper, layer_consumers(qmodel))
        # held-out data: target from the float model (original weights), inputs from the
        # quantized model with the earlier layers already adarounded
        x_float = collect_layer_data(reference, ref_layers[name], [x_held], quantized=False)
        target = np.asarray(ref.output(tf.constant(x_float), tf.constant(ref.weight)))
        x_hat = collect_layer_data(qmodel, wrapper, [x_held], quantized=True)
        nearest = reconstruction_loss(ada, x_hat, target, ref.nearest_weight())
        learned = reconstruction_loss(ada, x_hat, target, ada.nearest_weight())
        assert learned <= nearest * (1 + 1e-6), (name, learned, nearest)
        gains[name] = 1.0 - learned / nearest
    report = qmodel.adaround_report
    assert all(r["kept"] == "adaround" for r in report.values()), report
    assert all(r["flipped_fraction"] > 0 for r in report.values()), report
    # not just "not worse": the learned rounding clearly helps on held-out data
    assert max(gains.values()) > 0.1, gains


def _check_on_grid(qmodel):
    for wrapper in _wrappers(qmodel).values():
        (attr, quantizer), = wrapper.weight_quantizers.items()
        layer = AdaRoundLayer.from_wrapper(wrapper, None)
        folded = wrapper.folded_weights()[attr]
        quantized = quantizer(folded, training=False).numpy()
        levels = quantized / layer.scale
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
        assert np.all(np.round(levels) >= layer.low) and np.all(np.round(levels) <= layer.high)
        # the stored weights are the grid points themselves (up to BN-folding rounding)
        np.testing.assert_allclose(folded.numpy(), quantized, rtol=0,
                                   atol=1e-5 * float(np.max(layer.scale)))
        # fake-quant is idempotent on them
        np.testing.assert_array_equal(quantizer(tf.constant(quantized), training=False),
                                      quantized)


def _scales(qmodel):
    return {n: AdaRoundLayer.from_wrapper(w, None).scale.copy()
            for n, w in _wrappers(qmodel).items()}


def _perturbed_training_call(qmodel, x):
    """Scales every kernel by 1.5 and runs a training-mode call: a weight quantizer that is
    not frozen re-observes its range from the (new) weights."""
    for wrapper in _wrappers(qmodel).values():
        (attr, _), = wrapper.weight_quantizers.items()
        variable = getattr(wrapper.layer, attr)
        variable.assign(1.5 * variable.numpy())
    qmodel(x, training=True)


def test_weights_stay_on_grid_and_specs_are_kept_unless_frozen(digits, tmp_path):
    x_cal, _ = digits
    # bn_freeze_step=0: training steps use the moving statistics (weights stay as written)
    qmodel = _calibrated(_model(batchnorm=True), x_cal, _w4a8(bn_freeze_step=0))
    specs_before = {n: w.weight_quantizers[next(iter(w.weight_quantizers))].spec.to_dict()
                    for n, w in _wrappers(qmodel).items()}
    ranges_before = _scales(qmodel)
    adaround(qmodel, x_cal, iterations=100, learning_rate=1e-2, verbose=0)
    # inference (and export) use the range the rounding was learned on
    for name, scale in _scales(qmodel).items():
        np.testing.assert_array_equal(scale, ranges_before[name])
    _check_on_grid(qmodel)
    # default: the configuration is the user's, QAT afterwards trains ranges as usual
    for name, wrapper in _wrappers(qmodel).items():
        (_, quantizer), = wrapper.weight_quantizers.items()
        assert quantizer.spec.to_dict() == specs_before[name]
        assert quantizer.spec.freeze_step is None
    _perturbed_training_call(qmodel, x_cal[:64])
    for name, scale in _scales(qmodel).items():
        np.testing.assert_allclose(scale, 1.5 * ranges_before[name], rtol=1e-5)

    # freeze_weight_ranges=True: frozen, also after a .keras round trip
    qmodel = _calibrated(_model(batchnorm=True), x_cal, _w4a8(bn_freeze_step=0))
    adaround(qmodel, x_cal, iterations=100, learning_rate=1e-2, verbose=0,
             freeze_weight_ranges=True)
    _check_on_grid(qmodel)
    path = tmp_path / "frozen.keras"
    qmodel.save(path)
    loaded = keras.saving.load_model(path)
    for model in (qmodel, loaded):
        assert all(w.weight_quantizers[next(iter(w.weight_quantizers))].spec.freeze_step == 0
                   for w in _wrappers(model).values())
        _perturbed_training_call(model, x_cal[:64])
        for name, scale in _scales(model).items():
            np.testing.assert_array_equal(scale, ranges_before[name])


def test_layers_option_and_bad_input(digits):
    x_cal, _ = digits
    qmodel = _calibrated(_model(batchnorm=False), x_cal)
    before = {n: w.layer.kernel.numpy().copy() for n, w in _wrappers(qmodel).items()}
    adaround(qmodel, x_cal[:64], iterations=50, layers=["fc"], verbose=0)
    assert list(qmodel.adaround_report) == ["fc"]
    for name in ("conv", "depthwise"):
        np.testing.assert_array_equal(_wrappers(qmodel)[name].layer.kernel.numpy(),
                                      before[name])
    with pytest.raises(ValueError, match="nope"):
        adaround(qmodel, x_cal, iterations=10, layers=["nope"], verbose=0)
    with pytest.raises(ValueError, match="iterations"):
        adaround(qmodel, x_cal, iterations=0, verbose=0)
    with pytest.raises(ValueError, match="empty"):
        adaround(qmodel, [], iterations=10, verbose=0)


def test_accepts_datasets_and_exports_grid_weights(digits, tmp_path):
    """A batched (x, y) tf.data.Dataset works, and TFLite stores exactly the rounded integers."""
    x_cal, _ = digits
    model = _model(batchnorm=False)
    qmodel = _calibrated(model, x_cal, "tflite_int8")   # the converter accepts it
    ds = tf.data.Dataset.from_tensor_slices((x_cal, np.zeros(len(x_cal)))).batch(64)
    adaround(qmodel, ds, iterations=100, learning_rate=1e-2, num_batches=4, verbose=0)
    wrapper = _wrappers(qmodel)["conv"]
    layer = AdaRoundLayer.from_wrapper(wrapper, None)
    expected = np.round(layer.nearest_weight().numpy() / layer.scale).astype(np.int64)
    flat = tfquant.export.tflite(qmodel)
    from ai_edge_litert.interpreter import Interpreter
    interp = Interpreter(model_content=flat)
    found = False
    for t in interp.get_tensor_details():
        if t["dtype"] == np.int8 and tuple(t["shape"]) == (8, 3, 3, 1):  # OHWI conv kernel
            q = interp.get_tensor(t["index"]).astype(np.int64)
            np.testing.assert_array_equal(q, np.transpose(expected, (3, 0, 1, 2)))
            found = True
    assert found
