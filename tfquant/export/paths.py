"""Output paths: fail before writing anything, and never leave a partial file behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator


def check_output_path(path: str | os.PathLike) -> str:
    """Raises ``FileNotFoundError`` naming the directory if ``path``'s directory is missing.

    Args:
        path: an output file or directory.

    Returns:
        ``path`` as a string.

    Raises:
        FileNotFoundError: the directory that would hold ``path`` does not exist.

    Example:
        >>> check_output_path("out/model.tflite")
        'out/model.tflite'
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"output directory {directory!r} does not exist (for {path!r}); "
                                "create it first")
    return path


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Writes ``data`` to a temporary file beside ``path`` and renames it into place.

    A failure while writing removes the temporary file and leaves ``path`` as it was.

    Args:
        path: the destination file; its directory must exist.
        data: bytes (written in binary) or text.

    Raises:
        FileNotFoundError: the directory is missing (nothing is written).

    Example:
        >>> write_atomic("out/model.tflite", flatbuffer)
    """
    path = check_output_path(path)
    mode = "wb" if isinstance(data, (bytes, bytearray)) else "w"
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".partial")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _check_replaceable_directory(path: str) -> None:
    """A SavedModel directory may replace an empty directory or an earlier SavedModel only."""
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path):
        raise FileExistsError(f"{path!r} exists and is not a directory")
    entries = os.listdir(path)
    if entries and "saved_model.pb" not in entries:
        raise FileExistsError(f"{path!r} is a non-empty directory that holds no SavedModel; "
                              "refusing to replace it (choose a new or empty directory)")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, directory: bool = False) -> Iterator[str]:
    """Yields a temporary path beside ``path`` and moves it into place if the block succeeds.

    Writers that need a file name (Keras' ``save``) or a directory (SavedModel) write to the
    yielded path; on any exception it is removed and ``path`` is left as it was. The temporary
    name keeps ``path``'s extension (Keras picks the format from it).

    Args:
        path: the final file or directory; its parent directory must exist.
        directory: yield an (empty, existing) directory instead of a file name. An existing
            ``path`` is replaced only if it is empty or holds a SavedModel.

    Raises:
        FileNotFoundError: the parent directory is missing (nothing is created).
        FileExistsError: ``directory=True`` and ``path`` is a file or a non-empty directory
            without ``saved_model.pb``.

    Example:
        >>> with atomic_output("out/model.h5") as tmp:
        ...     model.save(tmp)
    """
    path = check_output_path(path)
    parent = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(os.path.normpath(path))
    if directory:
        _check_replaceable_directory(path)
        tmp = tempfile.mkdtemp(dir=parent, prefix=f".{base}.", suffix=".partial")
    else:
        root, ext = os.path.splitext(base)
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{root}.", suffix=f".partial{ext}")
        os.close(fd)
    try:
        yield tmp
        if directory:
            if os.path.lexists(path):
                _remove(path)
            os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
