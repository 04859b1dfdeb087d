"""Reading what the user gives the ``tfquant`` verbs: Keras model files, configs, data.

Each loader checks its input and raises :class:`~tfquant.cli.common.CLIError` (or
``FileNotFoundError`` / :class:`~tfquant.cli.data.DataError`) with one line naming the file
and what is wrong with it; nothing is written.

Example:
    >>> model = load_model("model.keras", quantized=False)     # doctest: +SKIP
    >>> config = load_config("tflite_int8")
    >>> config
    'tflite_int8'
"""

from __future__ import annotations

import argparse
import json
import os
import zipfile
from typing import Any

from tfquant.cli.common import CLIError, one_line, progress, say

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


def _check_model_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} file {path!r} does not exist")
    if os.path.isdir(path):
        raise CLIError(f"{what} {path!r} is a directory (a SavedModel?); tfquant reads Keras "
                       f"models saved as {' or '.join(MODEL_SUFFIXES)}")
    if not path.lower().endswith(MODEL_SUFFIXES):
        raise CLIError(f"{what} {path!r} is not a Keras model file: expected "
                       f"{' or '.join(MODEL_SUFFIXES)}")
    if path.lower().endswith(".keras") and not zipfile.is_zipfile(path):
        raise CLIError(f"cannot load {what} {path!r}: the file is corrupt (a .keras file is a "
                       "zip archive)")
    if path.lower().endswith((".h5", ".hdf5")):
        import h5py

        if not h5py.is_hdf5(path):
            raise CLIError(f"cannot load {what} {path!r}: the file is corrupt (not HDF5)")


def load_model(path: str, what: str = "model", quantized: bool | None = None):
    """Loads a ``.keras``/``.h5`` Functional or Sequential model.

    Args:
        path: the model file.
        what: how the file is called in messages.
        quantized: True requires a tfquant-quantized model, False a float model (checked
            like :func:`tfquant.quantize_model` checks it), None either.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CLIError: not a model file, corrupt, subclassed, or float/quantized when the other
            is required.
    """
    import keras
    from keras.src.models.functional import Functional

    from tfquant.analysis.sensitivity import is_quantized

    _check_model_file(path, what)
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001 - keras raises many types for bad files
        reason = one_line(err) or type(err).__name__
        hint = ""
        if "locate class" in reason or "custom" in reason.lower():
            hint = (" (custom layers or a subclassed model must be importable and registered "
                    "with keras.saving.register_keras_serializable)")
        raise CLIError(f"cannot load {what} {path!r} (corrupt or unsupported file): "
                       f"{reason}{hint}") from None
    if not isinstance(model, keras.Model):
        raise CLIError(f"{what} {path!r} holds a {type(model).__name__}, not a Keras model")
    if quantized is False:
        from tfquant.annotate import _check_model

        try:
            _check_model(model)
        except (TypeError, ValueError) as err:
            raise CLIError(f"unsupported {what} {path!r}: {one_line(err)}") from None
    elif not isinstance(model, (keras.Sequential, Functional)):
        raise CLIError(f"unsupported {what} {path!r}: {type(model).__name__} is a subclassed "
                       "model; tfquant needs a Functional or Sequential model")
    if quantized is True and not is_quantized(model):
        raise CLIError(f"{what} {path!r} is a float model (it has no tfquant quantizers); "
                       "quantize it first with 'tfquant quantize'")
    return model


def load_config(text: str | None) -> Any:
    """A preset name (returned as is; None gives ``"tflite_int8"``), or a JSON file holding an
    NNI-style config list or a ``QuantConfig`` dict (returned as a ``QuantConfig``)."""
    from tfquant.ptq.pipeline import DYNAMIC_RANGE
    from tfquant.specs import PRESETS, QuantConfig

    names = sorted([*PRESETS, DYNAMIC_RANGE])
    if text is None:
        return "tflite_int8"
    if text in names:
        return text
    if text.lower().endswith(".json") or os.path.isfile(text):
        if not os.path.isfile(text):
            raise FileNotFoundError(f"config file {text!r} does not exist")
        try:
            with open(text, encoding="utf-8") as f:
                raw = json.load(f)
        except (OSError, ValueError) as err:
            raise CLIError(f"cannot read config file {text!r}: {one_line(err)}") from None
        try:
            if isinstance(raw, list):
                return QuantConfig.from_config_list(raw)
            return QuantConfig.coerce(raw)
        except (TypeError, ValueError, KeyError) as err:
            raise CLIError(f"invalid config file {text!r}: {one_line(err)}") from None
    raise CLIError(f"unknown config {text!r}: expected a preset "
                   f"({', '.join(names)}) or a .json file")


def load_data(args: argparse.Namespace, path: str, model, what: str, labels: str | None = None,
              need_labels: bool = False):
    """``(x, y)`` from the data options of ``args`` (see :mod:`tfquant.cli.data`)."""
    from tfquant.cli import data

    x, y = data.load(path, model, labels, what=what, max_samples=args.max_samples,
                     image_range=args.image_range, need_labels=need_labels,
                     progress=progress(args, f"reading images from {path}"))
    say(args, f"{what}: {data.num_samples(x)} samples from {path}"
        + ("" if y is None else f" (with {len(y)} labels)"))
    return x, y
