"""Exporters: TFLite (int8, int16x8, dynamic range), Keras formats and encodings."""

from tfquant.export.folding import folded_float_model
from tfquant.export.tflite import check_exportable, float_ops, tflite

__all__ = ["tflite", "float_ops", "check_exportable", "folded_float_model"]
