"""Output paths: permissions of written files, staged multi-output writes, directory targets.

References: the mode a plain ``open(path, "w")`` / ``os.mkdir(path)`` gives under the same
umask (and ``0o666 & ~umask`` written out), files written and read back by hand.
"""

from __future__ import annotations

import os
import stat

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfquant  # noqa: E402
from tfquant.export.paths import (atomic_output, staged_outputs,  # noqa: E402
                                  write_atomic)

L = keras.layers


@pytest.fixture
def umask_022():
    """The process umask set to 0o022 for the test, restored afterwards."""
    previous = os.umask(0o022)
    try:
        yield 0o022
    finally:
        os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _reference_modes(directory) -> tuple[int, int]:
    """The modes ``open()`` and ``os.mkdir`` give in ``directory`` under the current umask."""
    with open(directory / "reference.txt", "w") as f:
        f.write("x")
    os.mkdir(directory / "reference_dir")
    modes = _mode(directory / "reference.txt"), _mode(directory / "reference_dir")
    os.remove(directory / "reference.txt")
    os.rmdir(directory / "reference_dir")
    return modes


def _tree_modes(root) -> dict[str, int]:
    return {os.path.relpath(os.path.join(d, n), root): _mode(os.path.join(d, n))
            for d, dirs, names in os.walk(root) for n in dirs + names}


@pytest.fixture(scope="module")
def qmodel():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 1), name="image"),
                              L.Conv2D(2, 3, name="conv"), L.Flatten(name="flat"),
                              L.Dense(2, name="fc")])
    qmodel = tfquant.quantize_model(model)
    tfquant.calibrate(qmodel, np.random.default_rng(0).random((8, 6, 6, 1), np.float32),
                      verbose=0)
    return qmodel


# ------------------------------------------------------------------- permissions
def test_helpers_give_the_modes_of_open_and_mkdir(umask_022, tmp_path):
    file_mode, dir_mode = _reference_modes(tmp_path)
    assert (file_mode, dir_mode) == (0o644, 0o755)  # 0o666 / 0o777 less the umask
    write_atomic(tmp_path / "a.bin", b"abc")
    with atomic_output(tmp_path / "b.h5") as tmp:
        with open(tmp, "wb") as f:
            f.write(b"b")
    with atomic_output(tmp_path / "sm", directory=True) as tmp:
        with open(os.path.join(tmp, "saved_model.pb"), "wb") as f:
            f.write(b"graph")
    with staged_outputs() as stage:
        stage.write(tmp_path / "c.json", "{}")
        os.mkdir(os.path.join(stage.path(tmp_path / "sm2", directory=True), "variables"))
    assert {p.name: _mode(p) for p in tmp_path.iterdir()} == {
        "a.bin": file_mode, "b.h5": file_mode, "sm": dir_mode, "c.json": file_mode,
        "sm2": dir_mode}
    assert _mode(tmp_path / "sm" / "saved_model.pb") == file_mode


def test_other_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        write_atomic(tmp_path / "a.bin", b"abc")
        with staged_outputs() as stage:
            stage.path(tmp_path / "sm", directory=True)
        assert _mode(tmp_path / "a.bin") == 0o640 and _mode(tmp_path / "sm") == 0o750
    finally:
        os.umask(previous)


def test_every_exporter_writes_what_open_would(umask_022, qmodel, tmp_path):
    file_mode, dir_mode = _reference_modes(tmp_path)
    tfquant.export.tflite(qmodel, tmp_path / "m.tflite")
    tfquant.export.tflite(qmodel, tmp_path / "d.tflite", mode="dynamic_range")
    tfquant.export.keras_h5(qmodel, tmp_path / "m.h5")
    tfquant.export.keras_file(qmodel, tmp_path / "m.keras")
    tfquant.export.keras_file(qmodel, tmp_path / "q.keras", folded=False)
    tfquant.export.encodings(qmodel, tmp_path / "m.json")
    tfquant.export.saved_model(qmodel, tmp_path / "sm")
    qmodel.save(tmp_path / "plain.keras")  # Keras' own save, for comparison
    modes = _tree_modes(tmp_path)
    assert modes.pop("sm") == dir_mode
    sm_dirs = {k for k in modes if k.startswith("sm") and os.path.isdir(tmp_path / k)}
    assert sm_dirs and all(modes.pop(k) == dir_mode for k in sm_dirs)
    assert modes == dict.fromkeys(modes, file_mode)
    assert set(modes) >= {"m.tflite", "d.tflite", "m.h5", "m.keras", "q.keras", "m.json",
                          "plain.keras", os.path.join("sm", "saved_model.pb")}


# ------------------------------------------------------------------ staged outputs
def test_staged_outputs_move_into_place_together(tmp_path):
    (tmp_path / "a.txt").write_text("earlier a")
    with staged_outputs() as stage:
        stage.write(tmp_path / "a.txt", "new a")
        stage.write(tmp_path / "b.bin", b"\x00\x01")
        assert (tmp_path / "a.txt").read_text() == "earlier a"  # nothing moved yet
        assert not (tmp_path / "b.bin").exists()
    assert (tmp_path / "a.txt").read_text() == "new a"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]


def test_failure_in_a_staged_block_changes_nothing(tmp_path):
    (tmp_path / "a.txt").write_text("earlier a")
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"earlier graph")
    with pytest.raises(RuntimeError, match="writer failed"):
        with staged_outputs() as stage:
            stage.write(tmp_path / "a.txt", "new a")
            stage.write(tmp_path / "c.json", "{}")
            tmp = stage.path(tmp_path / "sm", directory=True)
            with open(os.path.join(tmp, "saved_model.pb"), "wb") as f:
                f.write(b"half a graph")
            raise RuntimeError("writer failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "sm"]
    assert (tmp_path / "a.txt").read_text() == "earlier a"
    assert (tmp_path / "sm" / "saved_model.pb").read_bytes() == b"earlier graph"
    assert os.listdir(tmp_path / "sm") == ["saved_model.pb"]


def test_staging_checks_each_destination(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="no SavedModel"):
        with staged_outputs() as stage:
            stage.write(tmp_path / "a.txt", "a")
            stage.path(tmp_path / "notes", directory=True)
    with pytest.raises(IsADirectoryError, match="notes"):
        with staged_outputs() as stage:
            stage.write(tmp_path / "notes", "a")
    with pytest.raises(ValueError, match="given twice"):
        with staged_outputs() as stage:
            stage.write(tmp_path / "a.txt", "a")
            stage.write(tmp_path / "a.txt", "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]
    assert os.listdir(tmp_path / "notes") == ["keep.txt"]


# ------------------------------------------------------------ directory as a file path
def test_a_directory_is_refused_before_anything_runs(qmodel, tmp_path, monkeypatch):
    from tfquant.export import formats

    def never(*args, **kwargs):
        raise AssertionError("the model was folded before the path was checked")

    monkeypatch.setattr(formats, "folded_float_model", never)
    for name in ("out.h5", "out.keras", "out.json", "out.bin"):
        (tmp_path / name).mkdir()
    for name, call in (("out.h5", lambda p: tfquant.export.keras_h5(qmodel, p)),
                       ("out.keras", lambda p: tfquant.export.keras_file(qmodel, p)),
                       ("out.json", lambda p: tfquant.export.encodings(qmodel, p)),
                       ("out.bin", lambda p: write_atomic(p, b"x"))):
        with pytest.raises(IsADirectoryError, match=f"{name}' is a directory"):
            call(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "out.h5", "out.json",
                                                          "out.keras"]
    assert not any(list(p.iterdir()) for p in tmp_path.iterdir())
