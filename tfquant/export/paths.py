"""Output paths: fail before writing anything, and never leave a partial file behind."""

from __future__ import annotations

import os
import tempfile


def check_output_path(path: str | os.PathLike) -> str:
    """Raises ``FileNotFoundError`` naming the directory if ``path``'s directory is missing.

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
    """Writes ``data`` to a temporary file beside ``path`` and renames it into place."""
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
