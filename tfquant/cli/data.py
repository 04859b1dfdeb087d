"""Data files for the ``tfquant`` command line: calibration / analysis inputs and labels.

Inputs (``--calibration DATA`` / ``--data DATA``) may be:

* ``.npy``: one array, batch axis first, already preprocessed the way the model expects it
  (values are used as they are: no scaling). A model whose input has one channel also accepts
  arrays without the channel axis (``(N, H, W)`` for an ``(H, W, 1)`` input).
* ``.npz``: the array named ``x`` if there is one, else the first array; for a model with
  several inputs, one array per input named like the input. If the file also holds ``y``, it
  serves as the labels when ``--labels`` is not given.
* a folder of images (``.png``, ``.jpg``, ``.jpeg``; the folder and its sub-folders, in sorted
  path order): each is converted to the model's channel count (1: grayscale, 3: RGB, 4: RGBA),
  resized to the model's input height and width (bilinear) and scaled to ``[0, 1]`` float32
  (pixel / 255; ``image_range="symmetric"`` gives ``[-1, 1]``, ``"raw"`` ``[0, 255]``).

Labels (``--labels LABELS``): ``.npy``, ``.npz`` (``y``, else the first array), or ``.txt`` /
``.csv`` with one label per line; one label (or one label row) per input sample.

Every problem raises :class:`DataError` (a ``ValueError``) with a one-line message naming the
file, and, for shape problems, the expected and the actual shape.

Example:
    >>> x, total = load_inputs("calib.npy", model)                # doctest: +SKIP
    >>> x, total = load_inputs("images/", model, max_samples=256) # doctest: +SKIP
    >>> x, y = load("calib.npz", model, labels="labels.npy")      # doctest: +SKIP
"""

from __future__ import annotations

import os
import zipfile
from typing import Any, Callable, Mapping

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy", ".npz")
LABEL_SUFFIXES = (".npy", ".npz", ".txt", ".csv")
#: ``image_range`` name -> (scale, offset): value = pixel * scale + offset. ``"unit"``: [0, 1]
#: (pixel / 255), ``"symmetric"``: [-1, 1] (pixel / 127.5 - 1), ``"raw"``: [0, 255].
IMAGE_RANGES = {"unit": (1.0 / 255.0, 0.0), "symmetric": (2.0 / 255.0, -1.0), "raw": (1.0, 0.0)}
_PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}

Inputs = Any  # np.ndarray, or dict name -> np.ndarray for multi-input models


class DataError(ValueError):
    """A data file that cannot be used; the message is one line."""


def _shape(shape: Any) -> str:
    """``(N, 8, 8, 1)``: a shape with None (batch / free axes) written as ``N`` / ``?``."""
    dims = ["N" if i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(shape)]
    return "(" + ", ".join(dims) + (",)" if len(dims) == 1 else ")")


def _input_specs(model: Any) -> list[tuple[str, tuple]]:
    """``(name, shape)`` of each model input (shape with the batch axis, None where free)."""
    specs = []
    for t in model.inputs:
        history = getattr(t, "_keras_history", None)
        name = history.operation.name if history is not None else t.name
        specs.append((name, tuple(None if d is None else int(d) for d in t.shape)))
    return specs


def _check_exists(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")


# ------------------------------------------------------------------------- arrays
def _read_array_file(path: str, what: str) -> dict[str, np.ndarray]:
    """The arrays of a ``.npy`` (key ``""``) or ``.npz`` file, in file order."""
    try:
        if path.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as archive:
                arrays = {k: archive[k] for k in archive.files}
            if not arrays:
                raise DataError(f"{what} {path!r} is an empty .npz archive (no arrays)")
            return arrays
        return {"": np.load(path, allow_pickle=False)}
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"cannot read {what} {path!r} (corrupt or not a NumPy file): "
                        f"{reason}") from None


def _as_numeric(array: np.ndarray, path: str, what: str) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise DataError(f"{what} {path!r} has dtype {array.dtype}; expected numbers")
    return array


def _fit_input(array: np.ndarray, name: str, shape: tuple, path: str, what: str) -> np.ndarray:
    """``array`` checked against the model input ``shape``; adds a missing channel axis."""
    array = _as_numeric(np.asarray(array), path, what)
    if array.ndim == len(shape) - 1 and shape[-1] == 1 and all(
            want is None or got == want for got, want in zip(array.shape[1:], shape[1:-1])):
        array = array[..., np.newaxis]
    if array.ndim != len(shape) or any(
            want is not None and got != want for got, want in zip(array.shape[1:], shape[1:])):
        raise DataError(f"{what} {path!r} does not fit the model input {name!r}: expected "
                        f"shape {_shape(shape)}, got {tuple(array.shape)}")
    if array.shape[0] == 0:
        raise DataError(f"{what} {path!r} holds no samples (shape {tuple(array.shape)})")
    array = array.astype(np.float32, copy=False)
    bad = array.size - int(np.count_nonzero(np.isfinite(array)))
    if bad:
        raise DataError(f"{what} {path!r} holds {bad} non-finite value(s) (NaN or Inf)")
    return array


def _arrays_to_inputs(arrays: Mapping[str, np.ndarray], model: Any, path: str, what: str
                      ) -> Inputs:
    specs = _input_specs(model)
    if len(specs) == 1:
        name, shape = specs[0]
        key = "x" if "x" in arrays else (name if name in arrays else next(iter(arrays)))
        return _fit_input(arrays[key], name, shape, path, what)
    missing = [name for name, _ in specs if name not in arrays]
    if missing:
        raise DataError(f"the model has {len(specs)} inputs {[n for n, _ in specs]}: {what} "
                        f"{path!r} must be an .npz with one array per input name; missing "
                        f"{missing}, got {sorted(k or '<npy array>' for k in arrays)}")
    inputs = {name: _fit_input(arrays[name], name, shape, path, what) for name, shape in specs}
    sizes = {len(v) for v in inputs.values()}
    if len(sizes) > 1:
        raise DataError(f"{what} {path!r}: the input arrays have different sample counts "
                        f"{sorted(sizes)}")
    return inputs


# ------------------------------------------------------------------------- images
def image_files(folder: str) -> list[str]:
    """The image files (``IMAGE_SUFFIXES``) under ``folder``, sorted by relative path."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                found.append(os.path.join(root, name))
    return found


def _read_images(folder: str, model: Any, what: str, image_range: str,
                 max_samples: int | None, progress: Callable[[int, int], None] | None = None
                 ) -> np.ndarray:
    specs = _input_specs(model)
    if len(specs) != 1:
        raise DataError(f"{what} {folder!r} is a folder of images, but the model has "
                        f"{len(specs)} inputs; give an .npz with one array per input")
    name, shape = specs[0]
    if len(shape) != 4 or shape[-1] not in _PIL_MODES:
        raise DataError(f"{what} {folder!r} is a folder of images, but the model input {name!r} "
                        f"has shape {_shape(shape)}; images need (N, height, width, 1|3|4)")
    if image_range not in IMAGE_RANGES:
        raise DataError(f"image range {image_range!r} is not one of {sorted(IMAGE_RANGES)}")
    files = image_files(folder)
    if not files:
        raise DataError(f"{what} folder {folder!r} contains no {'/'.join(IMAGE_SUFFIXES)} "
                        "images")
    if max_samples is not None:
        files = files[:max_samples]
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib / the test extra
        raise DataError(f"reading the images of {what} {folder!r} needs Pillow: pip install "
                        "pillow (or pass an .npy/.npz file)") from None

    height, width, channels = shape[1:]
    scale, offset = IMAGE_RANGES[image_range]
    images = []
    for done, file in enumerate(files, start=1):
        try:
            with Image.open(file) as img:
                img = img.convert(_PIL_MODES[channels])
                if height is not None and width is not None and img.size != (width, height):
                    img = img.resize((width, height), Image.BILINEAR)
                pixels = np.asarray(img, dtype=np.float32)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            reason = " ".join(str(err).split()) or type(err).__name__
            raise DataError(f"cannot read image {file!r} in {what} {folder!r}: {reason}"
                            ) from None
        if pixels.ndim == 2:
            pixels = pixels[..., np.newaxis]
        if images and pixels.shape != images[0].shape:
            raise DataError(f"images in {what} {folder!r} differ in size ({images[0].shape} vs "
                            f"{pixels.shape} for {file!r}) and the model input {name!r} "
                            f"{_shape(shape)} does not fix it")
        images.append(pixels)
        if progress is not None:
            progress(done, len(files))
    return (np.stack(images) * np.float32(scale) + np.float32(offset)).astype(np.float32)


# -------------------------------------------------------------------------- public
def num_samples(inputs: Inputs) -> int:
    """Samples in what :func:`load_inputs` returned."""
    if isinstance(inputs, Mapping):
        return len(next(iter(inputs.values())))
    return len(inputs)


def take(inputs: Inputs, count: int | None) -> Inputs:
    """The first ``count`` samples (all when None)."""
    if count is None:
        return inputs
    if isinstance(inputs, Mapping):
        return {k: v[:count] for k, v in inputs.items()}
    return inputs[:count]


def load_inputs(path: str | os.PathLike, model: Any, *, what: str = "data",
                max_samples: int | None = None, image_range: str = "unit",
                progress: Callable[[int, int], None] | None = None) -> tuple[Inputs, int]:
    """Loads model inputs from a ``.npy`` / ``.npz`` file or a folder of images.

    Args:
        path: the file or folder (see the module docstring for the formats).
        model: the Keras model the inputs are for (its input shapes are checked).
        what: how the file is called in messages (``"calibration data"``...).
        max_samples: keep at most this many samples (the first ones).
        image_range: for image folders: ``"unit"`` ([0, 1], default), ``"symmetric"``
            ([-1, 1]) or ``"raw"`` ([0, 255]).
        progress: for image folders, called as ``progress(done, count)`` after each image.

    Returns:
        ``(inputs, total)``: a float32 array (batch axis first), or a dict of them keyed by
        input name for models with several inputs; and the number of samples in ``path``
        (before ``max_samples``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataError: unsupported file type, corrupt file, shape that does not fit the model
            (expected vs got), no samples, non-numeric or non-finite values.
    """
    path = os.fspath(path)
    _check_exists(path, what)
    if max_samples is not None and max_samples < 1:
        raise DataError(f"max_samples must be positive, got {max_samples}")
    if os.path.isdir(path):
        total = len(image_files(path))
        return _read_images(path, model, what, image_range, max_samples, progress), total
    if not path.lower().endswith(ARRAY_SUFFIXES):
        raise DataError(f"{what} {path!r} has an unsupported type; expected .npy, .npz or a "
                        "folder of .png/.jpg images")
    arrays = _read_array_file(path, what)
    arrays = {k: v for k, v in arrays.items() if k not in ("y", "labels")} or arrays
    inputs = _arrays_to_inputs(arrays, model, path, what)
    return take(inputs, max_samples), num_samples(inputs)


def labels_in(path: str | os.PathLike) -> np.ndarray | None:
    """The ``y`` (or ``labels``) array of an ``.npz`` data file, None if it has none."""
    path = os.fspath(path)
    if not (os.path.isfile(path) and path.lower().endswith(".npz")):
        return None
    arrays = _read_array_file(path, "data")
    for key in ("y", "labels"):
        if key in arrays:
            return arrays[key]
    return None


def load_labels(path: str | os.PathLike, *, what: str = "labels") -> np.ndarray:
    """Loads labels (see the module docstring for the formats); numeric, at least 1-D.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataError: unsupported type, corrupt file, non-numeric values.
    """
    path = os.fspath(path)
    _check_exists(path, what)
    lower = path.lower()
    if os.path.isdir(path) or not lower.endswith(LABEL_SUFFIXES):
        raise DataError(f"{what} {path!r} has an unsupported type; expected .npy, .npz, .txt "
                        "or .csv")
    if lower.endswith((".txt", ".csv")):
        try:
            labels = np.loadtxt(path, delimiter="," if lower.endswith(".csv") else None,
                                ndmin=1)
        except ValueError as err:
            raise DataError(f"cannot read {what} {path!r}: {' '.join(str(err).split())}"
                            ) from None
        if labels.size and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
    else:
        arrays = _read_array_file(path, what)
        labels = next((arrays[k] for k in ("y", "labels") if k in arrays),
                      next(iter(arrays.values())))
    labels = _as_numeric(np.asarray(labels), path, what)
    if labels.ndim == 0:
        raise DataError(f"{what} {path!r} holds a single number; expected one label per sample")
    return labels


def load(path: str | os.PathLike, model: Any, labels: str | os.PathLike | None = None, *,
         what: str = "data", max_samples: int | None = None, image_range: str = "unit",
         need_labels: bool = False, progress: Callable[[int, int], None] | None = None
         ) -> tuple[Inputs, np.ndarray | None]:
    """Inputs and labels for ``model``: :func:`load_inputs` plus the labels.

    The labels come from the ``labels`` file, else from the ``y`` array of an ``.npz`` data
    file (None if neither). There must be exactly one label per sample of ``path``; both are
    then cut to ``max_samples``.

    Raises:
        DataError: see :func:`load_inputs` and :func:`load_labels`; a label count that differs
            from the sample count; no labels when ``need_labels``.

    Example:
        >>> x, y = load("calib.npz", model, max_samples=256)          # doctest: +SKIP
    """
    inputs, total = load_inputs(path, model, what=what, max_samples=max_samples,
                                image_range=image_range, progress=progress)
    if labels is not None:
        y, source = load_labels(labels), os.fspath(labels)
    else:
        y, source = labels_in(path), os.fspath(path)
    if y is None:
        if need_labels:
            raise DataError(f"labels are needed: pass --labels LABELS (or an .npz {what} file "
                            "with a 'y' array)")
        return inputs, None
    if len(y) != total:
        raise DataError(f"labels {source!r} hold {len(y)} labels for {total} samples in "
                        f"{os.fspath(path)!r}; expected one label per sample")
    return inputs, y[:num_samples(inputs)]
