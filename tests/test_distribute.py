"""QAT under tf.distribute.MirroredStrategy with 2 logical CPU devices gives the same ranges
and weights as single-device training with the same global batch.

The LSQ model has no BatchNormalization: with 4-bit LSQ, float-rounding differences of the
synchronised batch statistics (~1 ulp) flip a few quantization levels, which moves the weights
by ~5e-5 -- exactly as much as perturbing the single-device input by 3e-7 does.

Logical devices must be configured before TensorFlow initialises its devices, so the scenario
runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np

SCENARIO = textwrap.dedent("""
    import contextlib, json, os
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    import tfquant
    from tfquant.quantizers import base

    def build(batchnorm):
        keras.utils.set_random_seed(0)
        inp = keras.Input((6, 6, 2))
        x = keras.layers.Conv2D(4, 3, name="conv")(inp)
        if batchnorm:  # folded; batch statistics synchronised across replicas
            x = keras.layers.BatchNormalization(synchronized=True, name="bn")(x)
        x = keras.layers.ReLU(name="relu")(x)
        x = keras.layers.Flatten(name="flat")(x)
        x = keras.layers.Dense(3, name="head")(x)
        return keras.Model(inp, x)

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(48, 6, 6, 2)).astype(np.float32)
    x[:, :, :, 1] *= np.linspace(0.2, 3.0, 48)[:, None, None]  # replicas see different ranges
    y = rng.integers(0, 3, size=48)

    def run(strategy, config):
        base_model = build(batchnorm=config == "tflite_int8")
        with (strategy.scope() if strategy else contextlib.nullcontext()):
            q = tfquant.quantize_model(base_model, config)
            q.compile(keras.optimizers.SGD(0.1),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=False)
        q.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        # layer names differ between runs (uniquified), so match variables by position
        return [(v.path, np.asarray(v.numpy(), np.float64).tolist()) for v in q.weights]

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {"replicas": strategy.num_replicas_in_sync}
    for config in ("tflite_int8", "lsq_w4a4"):
        out[config] = {"single": run(None, config), "mirrored": run(strategy, config)}
    # control: without the cross-replica reduction each replica keeps its own statistics
    base.replica_all_gather_reduce = lambda value, reduce_fn: value
    out["control"] = run(strategy, "tflite_int8")
    print("RESULT" + json.dumps(out))
""")


def test_mirrored_strategy_matches_single_device():
    proc = subprocess.run([sys.executable, "-c", SCENARIO], capture_output=True, text=True,
                          timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.split("RESULT")[-1])
    assert out["replicas"] == 2
    for config in ("tflite_int8", "lsq_w4a4"):
        single, mirrored = out[config]["single"], out[config]["mirrored"]
        assert [np.shape(v) for _, v in single] == [np.shape(v) for _, v in mirrored]
        names = [name for name, _ in single]
        assert any(n.endswith("quantizer/min") for n in names) or config != "tflite_int8"
        assert any(n.endswith("quantizer/step_size") for n in names) or config != "lsq_w4a4"
        for (name, a), (_, b) in zip(single, mirrored):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5,
                                       err_msg=f"{config}: {name}")
        steps = [v for n, v in mirrored if n.endswith("/steps")]
        assert steps and all(s == 3 for s in steps)  # 48 / 16: counted once per global step
    # the comparison is sensitive: per-replica statistics give different EMA ranges
    single = out["tflite_int8"]["single"]
    diffs = [np.max(np.abs(np.asarray(a) - np.asarray(b)))
             for (name, a), (_, b) in zip(single, out["control"])
             if name.endswith(("quantizer/min", "quantizer/max"))]
    assert max(diffs) > 1e-3
