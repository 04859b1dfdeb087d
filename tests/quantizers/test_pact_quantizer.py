"""PACTQuantizer: range [0, alpha], alpha is trainable and regularised."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfquant.quantizers import PACTQuantizer
from tfquant.specs import TensorSpec


def test_pact_params_and_clipping(rng):
    q = PACTQuantizer(TensorSpec(bits=8, learner="pact", init_min=0.0, init_max=3.0), name="p")
    x = rng.uniform(-2.0, 5.0, size=(4, 16)).astype(np.float32)
    y = q(tf.constant(x), training=False).numpy()
    p = q.quant_params()
    # [0, alpha] on 256 levels: scale alpha / 255 and zero point at the lowest level
    np.testing.assert_allclose(p.scale, 3.0 / 255.0, rtol=1e-6)
    assert int(p.zero_point) == -128 and float(p.min) == 0.0
    expected = np.round(np.clip(x, 0.0, 3.0) * 255.0 / 3.0) * 3.0 / 255.0
    np.testing.assert_allclose(y, expected, atol=1e-6)


def test_pact_alpha_learns_and_is_regularised(rng):
    inp = keras.Input((8,))
    q = PACTQuantizer(TensorSpec(bits=4, learner="pact", init_min=0.0, init_max=1.0,
                                 regularization=1e-3), name="pact_fit")
    model = keras.Model(inp, q(inp))
    model.compile(keras.optimizers.SGD(0.01), "mse", jit_compile=False)
    x = rng.uniform(0.0, 4.0, size=(64, 8)).astype(np.float32)
    assert q.alpha in model.trainable_weights and len(model.losses) == 1
    model.fit(x, x, epochs=2, batch_size=16, verbose=0)
    # targets above alpha = 1 pull the clipping level up
    assert float(q.alpha.numpy()) > 1.0
