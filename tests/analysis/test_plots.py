"""tfquant.analysis plots: valid PNG files, and the histogram data is what the quantizers see."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tfquant.analysis import collect_values, plot_histograms, plot_sensitivity, plot_sqnr
from tfquant.analysis.plots import _grid_of

PNG = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_width=300):
    from matplotlib.image import imread

    with open(path, "rb") as f:
        assert f.read(8) == PNG, path
    image = imread(path)
    assert image.ndim == 3 and image.shape[1] >= min_width and image.shape[0] >= 100
    assert image[..., :3].std() > 0.01  # something is drawn


def test_histograms_one_png_per_layer(weight_qmodel, x_data, tmp_path):
    paths = plot_histograms(weight_qmodel, x_data, tmp_path / "hist", steps=2)
    assert list(paths) == ["x_quantizer", "fc1", "fragile", "head"]
    for path in paths.values():
        assert_png(path)
    only = plot_histograms(weight_qmodel, x_data, tmp_path / "one", layers=["fragile"], steps=1)
    assert list(only) == ["fragile"]
    with pytest.raises(ValueError, match="nope"):
        plot_histograms(weight_qmodel, x_data, tmp_path / "bad", layers=["nope"])


def test_histogram_values_are_the_weights_and_float_activations(weight_fragile, weight_qmodel):
    model, x, _ = weight_fragile
    values = collect_values(weight_qmodel, x, steps=None, batch_size=64)
    np.testing.assert_array_equal(np.sort(values["fragile/weights/kernel"]),
                                  np.sort(model.get_layer("fragile").kernel.numpy().ravel()))
    fc1 = keras.Model(model.input, model.get_layer("fc1").output)(x)
    np.testing.assert_allclose(np.sort(values["fc1/output"]), np.sort(np.ravel(fc1)),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.sort(values["x_quantizer"]), np.sort(x.ravel()))


def test_grid_levels_are_the_quantizer_grid(weight_qmodel):
    q = weight_qmodel.get_layer("quant_fragile").weight_quantizers["kernel"]
    params = q.quant_params()
    levels, lo, hi, note = _grid_of(params)
    assert len(levels) == 15 and note == ""  # 4-bit narrow range, per tensor
    np.testing.assert_allclose(levels, params.dequantize(np.arange(params.qmin,
                                                                   params.qmax + 1)), rtol=1e-6)
    assert (lo, hi) == pytest.approx((float(params.min), float(params.max)))


def test_sensitivity_and_sqnr_charts(weight_table, tmp_path):
    table, _ = weight_table
    assert plot_sensitivity(table, tmp_path / "sens.png") == str(tmp_path / "sens.png")
    assert_png(tmp_path / "sens.png")
    plot_sensitivity(table, tmp_path / "top.png", top=2)
    assert_png(tmp_path / "top.png")
    plot_sqnr(table, tmp_path / "sqnr.png")
    assert_png(tmp_path / "sqnr.png")
    plot_sqnr({"a": 30.0, "b": float("inf"), "c": -2.0}, tmp_path / "dict.png")
    assert_png(tmp_path / "dict.png")
