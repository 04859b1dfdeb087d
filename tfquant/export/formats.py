"""Keras-side exports: the folded float model as ``.keras``, legacy ``.h5`` and SavedModel.

These files hold the float model that TFLite would quantize (BatchNorm folded, quantizers
removed); pair them with :func:`tfquant.export.encodings` for the quantization parameters. The
tensor names the encodings use are documented there.
"""

from __future__ import annotations

import os
import warnings

import keras

from tfquant.export.folding import folded_float_model
from tfquant.export.paths import atomic_output, check_output_file, check_output_path

H5_SUFFIXES = (".h5", ".hdf5")


def keras_h5(qmodel: keras.Model, path: str | os.PathLike) -> str:
    """Writes the folded float model in Keras' legacy HDF5 format (``model.save("x.h5")``).

    Weights are stored as ``model_weights/<layer>/<layer>/<attribute>`` (e.g.
    ``model_weights/conv1/conv1/kernel``): the ``<layer>/<attribute>`` part is the
    ``param_encodings`` name. The file loads with ``keras.models.load_model`` (no custom
    objects needed), except for models that call ``keras.ops`` between layers (e.g.
    ``keras.ops.add(a, b)``): Keras' legacy HDF5 loader cannot rebuild those calls (a float
    Keras model's own ``.h5`` fails the same way), so the file is written with a warning; its
    weights load with ``model.load_weights``, and :func:`keras_file` and :func:`saved_model`
    hold the whole model.

    Args:
        qmodel: a quantized model (from :func:`tfquant.quantize_model`).
        path: the ``.h5``/``.hdf5`` file to write; its directory must exist.

    Returns:
        ``path`` as a string.

    Raises:
        ValueError: ``path`` does not end in ``.h5`` or ``.hdf5``.
        FileNotFoundError: the directory is missing (nothing is written).
        IsADirectoryError: ``path`` is an existing directory (nothing is written).

    Example:
        >>> tfquant.export.keras_h5(qat, "model.h5")
        'model.h5'
    """
    path = check_output_file(path)
    if not path.lower().endswith(H5_SUFFIXES):
        raise ValueError(f"keras_h5 writes the legacy HDF5 format: {path!r} must end in .h5 or "
                         ".hdf5 (use keras_file for .keras)")
    model = folded_float_model(qmodel)
    with atomic_output(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HDF5.*legacy.*")
        warnings.filterwarnings("ignore", message=".*legacy.*HDF5.*")
        model.save(tmp)
    _warn_about_operations(model)
    return path


def _warn_about_operations(model: keras.Model) -> None:
    """Warns that Keras' legacy HDF5 loader cannot rebuild the ``keras.ops`` calls of
    ``model`` (its ``load_model`` raises on them), naming them."""
    names = [op.name for op in getattr(model, "operations", ())
             if not isinstance(op, keras.layers.Layer)]
    if names:
        warnings.warn(f"keras_h5: the model calls keras.ops ({', '.join(names)}), which "
                      "Keras' legacy HDF5 loader cannot rebuild: keras.models.load_model "
                      "fails on the .h5 file, model.load_weights reads its weights. Use "
                      "keras_file (.keras) or saved_model for a model that loads as a whole.",
                      stacklevel=3)


def keras_file(qmodel: keras.Model, path: str | os.PathLike, *, folded: bool = True) -> str:
    """Writes a ``.keras`` file: the folded float model, or the quantized model itself.

    Args:
        qmodel: a quantized model.
        path: the ``.keras`` file to write; its directory must exist.
        folded: True (default) writes the folded float model (the same model as
            :func:`keras_h5` and :func:`saved_model`); False writes ``qmodel`` with its
            quantizers, which ``keras.saving.load_model`` restores for further training.

    Returns:
        ``path`` as a string.

    Raises:
        ValueError: ``path`` does not end in ``.keras``.
        FileNotFoundError: the directory is missing (nothing is written).
        IsADirectoryError: ``path`` is an existing directory (nothing is written).

    Example:
        >>> tfquant.export.keras_file(qat, "float_folded.keras")
        'float_folded.keras'
    """
    path = check_output_file(path)
    if not path.endswith(".keras"):
        raise ValueError(f"keras_file writes the .keras format: {path!r} must end in .keras")
    model = folded_float_model(qmodel) if folded else qmodel
    with atomic_output(path) as tmp:
        model.save(tmp)
    return path


def saved_model(qmodel: keras.Model, directory: str | os.PathLike, *,
                folded: bool = True) -> str:
    """Writes the folded float model as a TensorFlow SavedModel (``model.export``).

    The SavedModel has a ``serving_default`` signature (and ``serve``) whose input is named
    after the model input; its variables are named ``<layer>/<attribute>`` (e.g.
    ``conv1/kernel``), i.e. the ``param_encodings`` names.

    Args:
        qmodel: a quantized model.
        directory: the SavedModel directory. Its parent must exist; an existing directory is
            replaced only if it is empty or holds a SavedModel.
        folded: True (default) writes the folded float model; False writes ``qmodel`` in
            inference mode, FakeQuant ops included (the signature then computes the fake-quant
            outputs; ``tf.lite.TFLiteConverter.from_saved_model`` can read it).

    Returns:
        ``directory`` as a string.

    Raises:
        FileNotFoundError: the parent directory is missing (nothing is written).
        FileExistsError: ``directory`` is a file or a non-empty non-SavedModel directory.

    Example:
        >>> tfquant.export.saved_model(qat, "model_savedmodel")
        'model_savedmodel'
        >>> tf.saved_model.load("model_savedmodel").signatures["serving_default"]
    """
    directory = check_output_path(directory)
    model = folded_float_model(qmodel) if folded else qmodel
    with atomic_output(directory, directory=True) as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
    return directory
