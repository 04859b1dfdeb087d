"""Output paths: fail before writing anything, and never leave a partial file behind.

Temporary files and directories are created beside their destination (so the final rename
stays on one file system) with the permissions a plain ``open(path, "w")`` or
``os.mkdir(path)`` would give: ``0o666`` / ``0o777`` less the process umask, not the
owner-only ``0o600`` / ``0o700`` of :mod:`tempfile`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from typing import Iterator

# How many random temporary names to try before giving up (a clash is ~2**-48 per try).
_TEMP_ATTEMPTS = 100


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


def check_output_file(path: str | os.PathLike) -> str:
    """:func:`check_output_path` for a file: ``path`` must not be an existing directory.

    Args:
        path: an output file.

    Returns:
        ``path`` as a string.

    Raises:
        FileNotFoundError: the directory that would hold ``path`` does not exist.
        IsADirectoryError: ``path`` is an existing directory.

    Example:
        >>> check_output_file("out/model.tflite")
        'out/model.tflite'
    """
    path = check_output_path(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"output {path!r} is a directory; give a file name inside it "
                                "(nothing was written)")
    return path


def _temp_name(path: str, suffix: str) -> str:
    """A hidden, random name beside ``path``: ``.<name>.<random><suffix>``."""
    parent = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(os.path.normpath(path))
    return os.path.join(parent, f".{base}.{secrets.token_hex(6)}{suffix}")


def _new_temp_file(path: str, suffix: str) -> tuple[int, str]:
    """Creates a new empty file beside ``path`` as ``open()`` would (mode ``0o666`` less
    the umask); returns its descriptor (open for writing) and name."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(_TEMP_ATTEMPTS):
        name = _temp_name(path, suffix)
        try:
            return os.open(name, flags, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path!r}")


def _new_temp_directory(path: str) -> str:
    """Creates a new empty directory beside ``path`` as ``os.mkdir`` would (mode ``0o777``
    less the umask); returns its name."""
    for _ in range(_TEMP_ATTEMPTS):
        name = _temp_name(path, ".partial")
        try:
            os.mkdir(name, 0o777)
            return name
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary directory beside {path!r}")


def _file_suffix(path: str) -> str:
    """``.partial`` plus ``path``'s extension (Keras picks the format from it)."""
    return ".partial" + os.path.splitext(os.path.basename(os.path.normpath(path)))[1]


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Writes ``data`` to a temporary file beside ``path`` and renames it into place.

    A failure while writing removes the temporary file and leaves ``path`` as it was. A new
    file gets the permissions ``open(path, "w")`` would give (``0o666`` less the umask).

    Args:
        path: the destination file; its directory must exist.
        data: bytes (written in binary) or text.

    Raises:
        FileNotFoundError: the directory is missing (nothing is written).
        IsADirectoryError: ``path`` is an existing directory (nothing is written).

    Example:
        >>> write_atomic("out/model.tflite", flatbuffer)
    """
    with atomic_output(path) as tmp:
        _write_data(tmp, data)


def _write_data(path: str, data: bytes | str) -> None:
    with open(path, "wb" if isinstance(data, (bytes, bytearray)) else "w") as f:
        f.write(data)


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


def _stage(path: str, directory: bool) -> str:
    """Checks ``path`` and creates its temporary file or directory (see :func:`atomic_output`)."""
    if directory:
        _check_replaceable_directory(path)
        return _new_temp_directory(path)
    check_output_file(path)
    fd, tmp = _new_temp_file(path, _file_suffix(path))
    os.close(fd)
    return tmp


def _commit(tmp: str, path: str, directory: bool) -> None:
    """Moves the staged ``tmp`` onto ``path`` (an earlier SavedModel directory is removed)."""
    if directory and os.path.lexists(path):
        _remove(path)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, directory: bool = False) -> Iterator[str]:
    """Yields a temporary path beside ``path`` and moves it into place if the block succeeds.

    Writers that need a file name (Keras' ``save``) or a directory (SavedModel) write to the
    yielded path; on any exception it is removed and ``path`` is left as it was. The temporary
    name keeps ``path``'s extension (Keras picks the format from it). The temporary file or
    directory has the permissions ``open()`` / ``os.mkdir`` would give under the umask.

    Args:
        path: the final file or directory; its parent directory must exist.
        directory: yield an (empty, existing) directory instead of a file name. An existing
            ``path`` is replaced only if it is empty or holds a SavedModel.

    Raises:
        FileNotFoundError: the parent directory is missing (nothing is created).
        IsADirectoryError: ``directory=False`` and ``path`` is an existing directory.
        FileExistsError: ``directory=True`` and ``path`` is a file or a non-empty directory
            without ``saved_model.pb``.

    Example:
        >>> with atomic_output("out/model.h5") as tmp:
        ...     model.save(tmp)
    """
    path = check_output_path(path)
    tmp = _stage(path, directory)
    try:
        yield tmp
        _commit(tmp, path, directory)
    except BaseException:
        _remove(tmp)
        raise


class StagedOutputs:
    """Several outputs written to temporary paths first, then moved into place together.

    Use through :func:`staged_outputs`: every writer runs on a temporary path beside its
    destination, and no destination changes until all of them have succeeded.

    Example:
        >>> with staged_outputs() as stage:
        ...     stage.write("out/m.tflite", flatbuffer)
        ...     tfquant.export.keras_h5(qmodel, stage.path("out/m.h5"))
    """

    def __init__(self) -> None:
        self._staged: list[tuple[str, str, bool]] = []  # (temporary, destination, directory)

    def path(self, path: str | os.PathLike, *, directory: bool = False) -> str:
        """A temporary file name (or an empty directory) that becomes ``path`` on commit.

        Args:
            path: the destination; its parent directory must exist.
            directory: stage a directory (a SavedModel) instead of a file.

        Returns:
            The temporary path (same extension as ``path``) to write to.

        Raises:
            FileNotFoundError: the parent directory is missing.
            IsADirectoryError: a file ``path`` is an existing directory.
            FileExistsError: a directory ``path`` is a file or a non-empty non-SavedModel
                directory.
            ValueError: ``path`` is already staged.
        """
        path = check_output_path(path)
        if any(os.path.abspath(dest) == os.path.abspath(path) for _, dest, _ in self._staged):
            raise ValueError(f"output {path!r} is given twice")
        tmp = _stage(path, directory)
        self._staged.append((tmp, path, directory))
        return tmp

    def write(self, path: str | os.PathLike, data: bytes | str) -> None:
        """Stages ``data`` (bytes or text) as the content of the file ``path``."""
        _write_data(self.path(path), data)

    def commit(self) -> None:
        """Moves every staged output into place, in the order they were staged."""
        while self._staged:
            tmp, path, directory = self._staged[0]
            _commit(tmp, path, directory)
            self._staged.pop(0)

    def discard(self) -> None:
        """Removes every temporary output not yet moved into place."""
        for tmp, _, _ in self._staged:
            _remove(tmp)
        self._staged.clear()


@contextlib.contextmanager
def staged_outputs() -> Iterator[StagedOutputs]:
    """Yields a :class:`StagedOutputs`; commits it if the block succeeds, else discards it.

    A failure anywhere in the block (a writer raising, a conversion error) leaves every
    destination as it was and removes every temporary path. A failure while moving outputs
    into place (rare: the temporaries sit beside their destinations) leaves the outputs moved
    so far in place and removes the rest.

    Example:
        >>> with staged_outputs() as stage:
        ...     stage.write("out/m.json", text)
        ...     tfquant.export.saved_model(qmodel, stage.path("out/sm", directory=True))
    """
    stage = StagedOutputs()
    try:
        yield stage
        stage.commit()
    finally:
        stage.discard()
