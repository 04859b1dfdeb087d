"""The AdaRound optimisation of one layer: ``V``, Adam, the annealed regulariser.

:class:`_Optimizer` learns the rounding variable ``V`` of one
:class:`~tfquant.ptq.adaround_rounding.AdaRoundLayer` by minimising the reconstruction error
plus ``reg_weight`` times the rounding regulariser (off during the warm start, ``beta``
annealed linearly afterwards), in compiled chunks of steps over random mini-batches. The
model-level driver is :func:`tfquant.ptq.adaround.adaround`.

Example:
    >>> opt = _Optimizer(layer, iterations=1000, reg_weight=0.01, beta_range=(20, 2),
    ...                  warm_start=0.2, batch_size=32, learning_rate=1e-2, seed=0)
    >>> from tfquant._retracing import quiet_retracing
    >>> with quiet_retracing():              # one compiled step per layer: TF warns otherwise
    ...     opt.run(x_hat, target, progbar=None)
    >>> rounding = opt.hard_rounding()       # 0/1 per weight: round down / up
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfquant.ptq.adaround_rounding import (AdaRoundLayer, _squared_error, init_alpha,
                                           rectified_sigmoid, round_regularizer)


class _Optimizer:
    """The AdaRound optimisation of one layer: ``V``, Adam and a compiled chunk of steps."""

    def __init__(self, layer: AdaRoundLayer, iterations: int, reg_weight: float,
                 beta_range: tuple[float, float], warm_start: float, batch_size: int,
                 learning_rate: float, seed: int):
        self.layer = layer
        self.iterations = int(iterations)
        self.warm_iters = int(round(warm_start * self.iterations))
        self.reg_weight = float(reg_weight)
        self.beta_start, self.beta_end = (float(b) for b in beta_range)
        self.batch_size = int(batch_size)
        fraction = layer.weight / layer.scale - layer.floor
        self.v = tf.Variable(init_alpha(np.clip(fraction, 0.0, 1.0)), name="adaround_v")
        self.optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
        self.optimizer.build([self.v])
        self.rng = tf.random.Generator.from_seed(seed)
        self.chunk = tf.function(self._chunk, jit_compile=False, reduce_retracing=True)

    def beta(self, it):
        rel = (tf.cast(it, tf.float32) - self.warm_iters) / max(
            self.iterations - self.warm_iters, 1)
        return self.beta_end + (self.beta_start - self.beta_end) * tf.maximum(0.0, 1.0 - rel)

    def _chunk(self, x_all, y_all, start, steps):
        n = tf.shape(x_all)[0]
        rec_sum = tf.constant(0.0)
        reg_sum = tf.constant(0.0)
        layer = self.layer
        for i in tf.range(steps):
            it = start + i
            idx = self.rng.uniform([self.batch_size], 0, n, dtype=tf.int32)
            x = tf.gather(x_all, idx)
            target = tf.gather(y_all, idx)
            beta = self.beta(it)
            use_reg = tf.cast(it >= self.warm_iters, tf.float32)
            with tf.GradientTape() as tape:
                h = rectified_sigmoid(self.v)
                y = layer.output(x, layer.grid_weight(h))
                rec = _squared_error(y, target, layer.channel_axis())
                reg = use_reg * self.reg_weight * round_regularizer(h, beta)
                loss = rec + reg
            grad = tape.gradient(loss, self.v)
            self.optimizer.apply_gradients([(grad, self.v)])
            rec_sum += rec
            reg_sum += reg
        steps_f = tf.cast(tf.maximum(steps, 1), tf.float32)
        return rec_sum / steps_f, reg_sum / steps_f

    def run(self, x_hat: np.ndarray, target: np.ndarray, progbar: keras.utils.Progbar | None,
            chunk_steps: int = 100) -> None:
        x_all, y_all = tf.constant(x_hat), tf.constant(target)
        done = 0
        while done < self.iterations:
            steps = min(chunk_steps, self.iterations - done)
            rec, reg = self.chunk(x_all, y_all, tf.constant(done), tf.constant(steps))
            done += steps
            if progbar is not None:
                progbar.update(done, [("rec_loss", float(rec)), ("round_loss", float(reg))])

    def hard_rounding(self) -> np.ndarray:
        """``[h(V) >= 0.5]`` (``V >= 0``) as 0/1 floats."""
        return (rectified_sigmoid(self.v).numpy() >= 0.5).astype(np.float32)
