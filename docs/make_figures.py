"""Renders the README's figures (docs/img/*.png) on the bundled digits: ``python docs/make_figures.py``.

A small CNN is trained in float, then analysed at W4A4 (where quantization hurts, so the
sensitivity ranking says something): per-layer sensitivity, per-layer SQNR, and the weight and
activation histograms of the first convolution with its quantization grid.
"""

from __future__ import annotations

import os

import keras
import numpy as np

import tfquant
from tfquant import analysis, datasets, zoo

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "img")


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = datasets.load_digits(seed=0)
    keras.utils.set_random_seed(0)
    model = zoo.small_cnn(x_train.shape[1:], 10, seed=0)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"], jit_compile=False)
    model.fit(x_train, y_train, batch_size=64, epochs=15, verbose=0)

    def accuracy(m):
        return float(np.mean(m.predict(x_test, verbose=0).argmax(-1) == y_test))

    table = analysis.sensitivity(model, x_test, accuracy, config="lsq_w4a4",
                                 calibration=x_train[:256])
    print(table)
    analysis.plot_sensitivity(table, os.path.join(OUT, "sensitivity.png"))
    analysis.plot_sqnr(table, os.path.join(OUT, "sqnr.png"))
    qmodel = tfquant.quantize_model(model, config="tflite_int8")
    tfquant.calibrate(qmodel, x_train[:256])
    analysis.plot_histograms(qmodel, x_test[:256], OUT, layers=["conv1"])
    print(sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()
