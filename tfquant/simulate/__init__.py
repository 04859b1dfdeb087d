"""Bit-exact integer simulation of int8 TFLite models, compiled with XLA.

``IntegerModel.from_tflite(path_or_bytes)`` reads a ``.tflite`` flatbuffer into a plain integer
IR (:mod:`tfquant.simulate.graph`) and runs it with TensorFlow ops inside
``tf.function(jit_compile=True)``, reproducing TFLite's reference kernels bit for bit.

Example:
    >>> from tfquant.simulate import IntegerModel
    >>> sim = IntegerModel.from_tflite("model.tflite")          # doctest: +SKIP
    >>> same = IntegerModel.from_keras(qat)                     # doctest: +SKIP
    >>> y = sim(x_int8)                                         # doctest: +SKIP
    >>> acts = sim.run(x_int8, return_all=True, key="name")     # doctest: +SKIP
"""

from tfquant.simulate.graph import SUPPORTED_OPS, Graph, Op, TensorInfo
from tfquant.simulate.model import IntegerModel
from tfquant.simulate.tflite_reader import UnsupportedModelError, read_tflite
from tfquant.simulate.from_keras import UnsupportedLayerError, keras_to_graph  # noqa: E402

__all__ = ["IntegerModel", "Graph", "Op", "TensorInfo", "SUPPORTED_OPS", "UnsupportedModelError",
           "read_tflite", "UnsupportedLayerError", "keras_to_graph"]
