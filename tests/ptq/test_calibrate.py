"""tfquant.ptq.calibrate against the float model's activations, numpy extremes and TFLite."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfquant
from tfquant.export.tflite import all_quantizers
from tfquant.ptq import calibrate
from tfquant.qparams import QuantParams

L = keras.layers
PROBES = ("relu", "dw", "gap", "fc")  # float layers whose outputs the quantizers observe


@pytest.fixture(scope="module")
def float_model():
    keras.utils.set_random_seed(3)
    inp = keras.Input((6, 6, 2), name="img")
    x = L.Conv2D(4, 3, name="conv")(inp)
    x = L.ReLU(name="relu")(x)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(3, name="fc")(x)
    return keras.Model(inp, x)


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(7).normal(0.3, 1.0, (40, 6, 6, 2)).astype(np.float32)


def float_extremes(model, x):
    """numpy min/max of each probed float activation over all of ``x`` (0 included)."""
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in PROBES])
    outs = dict(zip(PROBES, [np.asarray(o) for o in probe([x])]))
    outs["img"] = x
    return {k: (min(v.min(), 0.0), max(v.max(), 0.0)) for k, v in outs.items()}


def act_range(qmodel, name):
    q = qmodel.get_layer("img_quantizer") if name == "img" else \
        qmodel.get_layer(f"quant_{name}").output_quantizer
    return [float(v) for v in q.current_range()]


def ranges(report):
    return {k: (np.asarray(lo), np.asarray(hi)) for k, (lo, hi) in report.ranges.items()}


def test_minmax_ranges_are_those_of_the_float_activations_and_weights(float_model, data):
    qmodel = tfquant.quantize_model(float_model)
    report = calibrate(qmodel, data, batch_size=16, verbose=0)
    assert (report.batches, report.samples) == (3, 40)
    # Observers saw float activations: any fake-quant on the way would move these by ~1 LSB.
    for name, (lo, hi) in float_extremes(float_model, data).items():
        np.testing.assert_allclose(act_range(qmodel, name), [lo, hi], rtol=1e-5, atol=1e-7,
                                   err_msg=name)
    for layer, flat in (("conv", lambda k: k.reshape(-1, k.shape[-1])),
                        ("dw", lambda k: k.reshape(-1, k.shape[-2] * k.shape[-1])),
                        ("fc", lambda k: k.reshape(-1, 1))):
        kernel = float_model.get_layer(layer).kernel.numpy()
        abs_max = np.abs(flat(kernel)).max(axis=0)
        wq = qmodel.get_layer(f"quant_{layer}").weight_quantizers["kernel"]
        lo, hi = (np.asarray(v) for v in wq.current_range())
        np.testing.assert_allclose(hi.reshape(-1), abs_max, rtol=1e-6, err_msg=layer)
        np.testing.assert_allclose(lo.reshape(-1), -abs_max, rtol=1e-6, err_msg=layer)  # narrow


def test_dataset_generator_and_steps_give_the_array_ranges(float_model, data):
    qmodel = tfquant.quantize_model(float_model)
    reference = ranges(calibrate(qmodel, data, batch_size=16, verbose=0))
    labels = np.zeros(len(data), np.int64)
    sources = {
        "batched (x, y) dataset": tf.data.Dataset.from_tensor_slices((data, labels)).batch(16),
        "unbatched dataset": tf.data.Dataset.from_tensor_slices(data),
        "generator": (data[i:i + 10] for i in range(0, 40, 10)),
    }
    for what, source in sources.items():
        got = ranges(calibrate(qmodel, source, batch_size=16, verbose=0))
        assert got.keys() == reference.keys(), what
        for key in reference:
            np.testing.assert_allclose(got[key], reference[key], rtol=1e-6, err_msg=what)
    report = calibrate(qmodel, data, steps=1, batch_size=16, verbose=0)
    assert report.samples == 16
    np.testing.assert_allclose(act_range(qmodel, "img"), [data[:16].min(), data[:16].max()],
                               rtol=1e-6)


def test_observer_memory_does_not_grow_with_samples(float_model, data):
    qmodel = tfquant.quantize_model(float_model)
    small = calibrate(qmodel, data[:8], observer="percentile", verbose=0)
    large = calibrate(qmodel, np.concatenate([data] * 4), observer="percentile", verbose=0)
    assert large.samples == 20 * small.samples
    assert large.observer_nbytes == small.observer_nbytes > 0


def _bad_inputs(data):
    nan = data.copy()
    nan[20, 1, 1, 0] = np.nan  # second batch: the first one has been run already
    return {
        "empty": (tf.data.Dataset.from_tensor_slices(data[:0]).batch(4), "empty"),
        "non-finite": (nan, "non-finite"),
        "shape": (np.zeros((4, 5, 5, 2), np.float32), r"\(None, 6, 6, 2\)"),
        "dtype": (np.full((4, 6, 6, 2), "a"), "dtype"),
        "observer": (data, "unknown observer"),
        "batch_size": (data, "batch_size=0 must be a positive integer"),  # was ZeroDivisionError
    }


@pytest.mark.parametrize("case", ["empty", "non-finite", "shape", "dtype", "observer",
                                  "batch_size"])
def test_bad_input_raises_and_leaves_the_model_unchanged(float_model, data, case):
    qmodel = tfquant.quantize_model(float_model)
    calibrate(qmodel, data * 0.5, batch_size=16, verbose=0)
    before = [v.numpy().copy() for v in qmodel.variables]
    source, message = _bad_inputs(data)[case]
    observer = "nonsense" if case == "observer" else "minmax"
    with pytest.raises(ValueError, match=message):
        calibrate(qmodel, source, observer=observer, batch_size=0 if case == "batch_size" else 16,
                  verbose=0)
    after = [v.numpy() for v in qmodel.variables]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    quantizers = [q for _, q in all_quantizers(qmodel)]
    assert all(q.calibration_hook is None for q in quantizers)


def test_calibrated_model_exports_with_the_calibrated_parameters(float_model, data):
    from ai_edge_litert.interpreter import Interpreter

    qmodel = tfquant.quantize_model(float_model)
    calibrate(qmodel, data, batch_size=16, verbose=0)
    flatbuffer = tfquant.export.tflite(qmodel, input_type="int8", output_type="float32")
    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    expected = QuantParams.from_min_max(*act_range(qmodel, "img"), bits=8)
    (scale,), (zero_point,) = inp["quantization_parameters"]["scales"], \
        inp["quantization_parameters"]["zero_points"]
    np.testing.assert_allclose(scale, expected.scale, rtol=1e-6)
    assert zero_point == int(expected.zero_point)
    x = data[:1]
    interpreter.set_tensor(inp["index"], expected.quantize(x).astype(np.int8))
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    fc_lo, fc_hi = act_range(qmodel, "fc")
    np.testing.assert_allclose(out, np.asarray(float_model(x)), atol=4 * (fc_hi - fc_lo) / 255)


def test_lsq_and_pact_quantizers_take_calibrated_ranges(float_model, data):
    extremes = float_extremes(float_model, data)
    lsq = tfquant.quantize_model(float_model, "lsq_w4a4")
    calibrate(lsq, data, batch_size=16, verbose=0)
    np.testing.assert_allclose(act_range(lsq, "img"), extremes["img"], rtol=1e-5)  # LSQ+
    wq = lsq.get_layer("quant_dw").weight_quantizers["kernel"]
    kernel = float_model.get_layer("dw").kernel.numpy()
    np.testing.assert_allclose(np.asarray(wq.current_range()[1]),
                               np.abs(kernel).reshape(-1, 4).max(axis=0), rtol=1e-5)
    assert bool(wq.initialized.numpy())  # QAT fine-tuning starts from the calibrated step
    pact = tfquant.quantize_model(float_model, "pact_w4a4")
    calibrate(pact, data, batch_size=16, verbose=0)
    np.testing.assert_allclose(float(pact.get_layer("quant_relu").output_quantizer.alpha.numpy()),
                               extremes["relu"][1], rtol=1e-5)


def test_qat_after_calibration_continues_the_ema_from_the_calibrated_range(float_model, data):
    """The first QAT step of a calibrated model blends the batch into the calibrated range
    (EMA), it does not restart from the batch; an uncalibrated model still seeds from it."""
    batch = 3.0 * data[:8]   # a batch whose extremes differ clearly from the calibration data
    calibrated = tfquant.quantize_model(float_model)
    calibrate(calibrated, data, verbose=0)
    q = calibrated.get_layer("img_quantizer")
    assert q.spec.learner == "ema"
    cal_min, cal_max = float(q.min.numpy()), float(q.max.numpy())
    np.testing.assert_allclose([cal_min, cal_max], [data.min(), data.max()], rtol=1e-6)
    calibrated(batch, training=True)
    d = q.spec.ema_decay
    np.testing.assert_allclose(
        [float(q.min.numpy()), float(q.max.numpy())],
        [d * cal_min + (1 - d) * batch.min(), d * cal_max + (1 - d) * batch.max()], rtol=1e-6)

    fresh = tfquant.quantize_model(float_model)
    fresh(batch, training=True)
    q = fresh.get_layer("img_quantizer")
    np.testing.assert_allclose([float(q.min.numpy()), float(q.max.numpy())],
                               [batch.min(), batch.max()], rtol=1e-6)
