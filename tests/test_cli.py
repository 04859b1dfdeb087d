"""Tests of the ``tfquant`` command line (the tfquant.cli package).

Every verb runs at least once through a real subprocess (``python -m tfquant.cli ...``), on
success and on a bad input. Each subprocess pays a TensorFlow import (5-10 s), so the other
bad-input cases call ``tfquant.cli.main`` in this process: the same code path that prints
the one-line ``tfquant <verb>: error: <reason>`` message and returns the exit code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
EXIT_ERROR = 2


# ------------------------------------------------------------------------- helpers
def run_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    """Runs ``python -m tfquant.cli ARGS`` in a fresh interpreter."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("TFQUANT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "tfquant.cli", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


def error_line(stderr: str, verb: str) -> str:
    """The one error line of ``stderr``: exactly one ``tfquant <verb>: error:`` line, the last
    line printed, and no traceback (TensorFlow's start-up log lines may come before it)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("tfquant ")]
    assert len(ours) == 1, stderr
    assert lines[-1] == ours[0], stderr
    assert ours[0].startswith(f"tfquant {verb}: error: "), ours[0]
    return ours[0]


def assert_cli_error(proc: subprocess.CompletedProcess, verb: str, *fragments: str) -> str:
    assert proc.returncode == EXIT_ERROR, (proc.returncode, proc.stdout[-2000:], proc.stderr)
    line = error_line(proc.stderr, verb)
    for fragment in fragments:
        assert fragment in line, line
    return line


def run_main(capsys, *args) -> tuple[int, str, str]:
    """Runs ``tfquant.cli.main`` in this process; ``(exit code, stdout, stderr)``."""
    from tfquant.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as stop:  # argparse (usage errors, --help)
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def files(tmp_path_factory):
    """A tiny float model and data files, written once per test session (per xdist worker)."""
    from PIL import Image

    from tfquant import datasets, zoo

    root = tmp_path_factory.mktemp("cli")
    (x, y), _ = datasets.load_digits()
    x, y = x[:64], y[:64]
    model = zoo.small_cnn((8, 8, 1), 10, widths=(4, 8), seed=0)
    model.save(root / "float.keras")
    np.save(root / "calib.npy", x)
    np.save(root / "labels.npy", y)
    np.savetxt(root / "labels.txt", y, fmt="%d")
    np.savez(root / "train.npz", x=x, y=y)
    np.save(root / "wrong_shape.npy", np.zeros((4, 28, 28, 1), np.float32))
    np.save(root / "short_labels.npy", y[:10])
    (root / "corrupt.keras").write_bytes(b"this is not a zip archive")
    (root / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    (root / "corrupt.tflite").write_bytes(b"not a flatbuffer" * 4)
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    for i in range(6):  # RGB, converted to grayscale; 8x8, and 16x16 (resized to 8x8)
        gray = x[i, :, :, 0] if i < 3 else np.kron(x[i, :, :, 0], np.ones((2, 2)))
        rgb = np.repeat(gray[..., None], 3, axis=-1)
        Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(images / f"{i}.png")
    Image.fromarray((x[6, :, :, 0] * 255).astype(np.uint8)).save(images / "sub" / "6.jpg")
    broken = root / "broken_images"
    broken.mkdir()
    Image.fromarray((x[0, :, :, 0] * 255).astype(np.uint8)).save(broken / "0.png")
    (broken / "1.png").write_bytes(b"not a png")
    (root / "empty").mkdir()
    sub = Subclassed()
    sub(np.zeros((1, 4), np.float32))
    sub.save(root / "subclassed.keras")
    return root


@pytest.fixture(scope="session")
def quantized(files):
    """A PTQ-quantized copy of the tiny model and its int8 TFLite export (made in-process)."""
    import tfquant

    model = keras.saving.load_model(files / "float.keras")
    qmodel = tfquant.ptq(model, np.load(files / "calib.npy"), methods=(), verbose=0)
    qmodel.save(files / "q.keras")
    tfquant.export.tflite(qmodel, files / "q.tflite")
    # the same network with another output bias: a TFLite file that does not match q.keras
    kernel, bias = model.get_layer("predictions").get_weights()
    model.get_layer("predictions").set_weights([kernel, bias + np.arange(10, dtype=bias.dtype)])
    other = tfquant.ptq(model, np.load(files / "calib.npy"), methods=(), verbose=0)
    tfquant.export.tflite(other, files / "other.tflite")
    return files / "q.keras", files / "q.tflite"


@keras.saving.register_keras_serializable(package="tfquant_cli_test")
class Subclassed(keras.Model):
    """A subclassed model: loadable here (registered), not in a CLI subprocess."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(3)

    def call(self, inputs):
        return self.dense(inputs)


# ------------------------------------------------------------------ subprocess tests
def test_help_lists_every_verb(capsys):
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    for verb in ("demo", "quantize", "export", "verify", "analyze"):
        # listed once (a hand-written list repeated argparse's)
        assert sum(line.split()[:1] == [verb] for line in out.splitlines()) == 1, out
    for verb, option in (("demo", "--float-epochs"), ("quantize", "--calibration"),
                         ("export", "--input-type"), ("verify", "--data"),
                         ("analyze", "--labels")):
        code, out, _ = run_main(capsys, verb, "--help")
        assert code == 0 and f"usage: tfquant {verb}" in out and option in out


def test_quantize_ptq_from_images_with_tflite(files, tmp_path):
    from tfquant.analysis.sensitivity import is_quantized

    out, tflite = tmp_path / "q.keras", tmp_path / "q.tflite"
    proc = run_cli("quantize", files / "float.keras", "--calibration", files / "images",
                   "-o", out, "--methods", "cle,bias_correction", "--observer", "percentile",
                   "--tflite", tflite, "--input-type", "int8", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "calibration data: 7 samples" in proc.stdout
    assert "ran   bias_correction" in proc.stdout and f"wrote {out}" in proc.stdout
    assert is_quantized(keras.saving.load_model(out))
    assert tflite.read_bytes()[4:8] == b"TFL3"
    assert not list(tmp_path.glob("*.partial*"))


def test_quantize_qat(files, tmp_path, capsys):
    from tfquant.analysis.sensitivity import is_quantized

    out = tmp_path / "qat.keras"
    code, stdout, err = run_main(capsys, "quantize", files / "float.keras", "--calibration",
                                 files / "calib.npy", "--labels", files / "labels.txt",
                                 "--qat-epochs", "2", "--learning-rate", "1e-2", "-o", out,
                                 "-q")
    assert code == 0, err
    assert stdout.strip() == f"wrote {out}"  # -q: results only
    qmodel = keras.saving.load_model(out)
    assert is_quantized(qmodel)
    # trained: the Dense kernel moved away from the float model's
    float_kernel = keras.saving.load_model(files / "float.keras").get_layer(
        "predictions").get_weights()[0]
    qat_kernel = next(w for w in qmodel.weights if w.path.endswith("predictions/kernel"))
    assert np.max(np.abs(np.asarray(qat_kernel) - float_kernel)) > 1e-3


def test_quantize_wrong_shape(files, tmp_path):
    proc = run_cli("quantize", files / "float.keras", "--calibration",
                   files / "wrong_shape.npy", "-o", tmp_path / "q.keras", cwd=tmp_path)
    assert_cli_error(proc, "quantize", "expected shape (N, 8, 8, 1)", "got (4, 28, 28, 1)")
    assert not (tmp_path / "q.keras").exists()


def test_export_every_format(files, quantized, tmp_path):
    import json

    from ai_edge_litert.interpreter import Interpreter

    qmodel, _ = quantized
    out, h5, sm, enc = (tmp_path / "e.tflite", tmp_path / "e.h5", tmp_path / "sm",
                        tmp_path / "e.json")
    proc = run_cli("export", qmodel, "-o", out, "--input-type", "int8", "--h5", h5,
                   "--saved-model", sm, "--encodings", enc, "--encodings-version", "0.6.1",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for path in (out, h5, sm, enc):
        assert f"wrote {path}" in proc.stdout
    assert Interpreter(model_path=str(out)).get_input_details()[0]["dtype"] == np.int8
    assert keras.saving.load_model(h5).count_params() > 0
    assert (sm / "saved_model.pb").exists()
    assert json.loads(enc.read_text())["version"] == "0.6.1"


def test_export_dynamic_range_from_float_model(files, tmp_path, capsys):
    out = tmp_path / "d.tflite"
    code, stdout, err = run_main(capsys, "export", files / "float.keras", "-o", out,
                                 "--mode", "dynamic_range", "-q")
    assert code == 0, err
    assert stdout.startswith(f"wrote {out}") and out.stat().st_size > 0


def test_export_bad_input(files, tmp_path):
    proc = run_cli("export", files / "corrupt.keras", "-o", tmp_path / "e.tflite", cwd=tmp_path)
    assert_cli_error(proc, "export", "corrupt.keras", "corrupt")
    assert not (tmp_path / "e.tflite").exists()


def test_verify(files, quantized, tmp_path):
    import json
    import re

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    qmodel, tflite = quantized
    report = tmp_path / "verify.json"
    proc = run_cli("verify", qmodel, tflite, "--data", files / "calib.npy", "--json", report,
                   cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert "first disagreeing layer:" in proc.stdout and "result: PASS" in proc.stdout
    exact = float(re.search(r"bit-exact fraction: ([0-9.]+)", proc.stdout).group(1))
    lsb = float(re.search(r"max \|diff\|: ([0-9.e+-]+) LSB", proc.stdout).group(1))
    # reference: Keras against TFLite's reference kernels, in steps of the softmax output (1/256)
    x = np.load(files / "calib.npy")
    interpreter = Interpreter(model_path=str(tflite),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    keras_out = keras.saving.load_model(qmodel).predict(x, verbose=0)
    expected = np.max(np.abs(interpreter.get_tensor(out["index"]) - keras_out)) * 256
    assert lsb == pytest.approx(expected, abs=1e-3) and lsb <= 1
    doc = json.loads(report.read_text())
    assert doc["bit_exact_fraction"] == pytest.approx(exact, abs=1e-6)
    assert doc["max_abs_diff_lsb"] == pytest.approx(lsb, rel=1e-5)
    assert doc["samples"] == len(x) and doc["per_layer"]


def test_verify_mismatch_exit_code(files, quantized, capsys):
    qmodel, _ = quantized
    code, out, err = run_main(capsys, "verify", qmodel, files / "other.tflite", "--data",
                              files / "calib.npy")
    assert code == 1, (out, err)
    assert "result: FAIL" in out and not err.strip().startswith("tfquant")



def test_verify_zero_lsb_tolerance_means_identical_outputs(files, quantized, capsys):
    """--tolerance-lsb 0 is accepted (it was refused as not positive): PASS only when Keras and
    TFLite outputs are identical."""
    import re

    qmodel, tflite = quantized
    code, out, err = run_main(capsys, "verify", qmodel, tflite, "--data", files / "calib.npy",
                              "--tolerance-lsb", "0")
    lsb = float(re.search(r"max \|diff\|: ([0-9.e+-]+) LSB", out).group(1))
    assert code == (0 if lsb == 0 else 1), (out, err)
    assert ("result: PASS" if lsb == 0 else "result: FAIL") in out


def test_verify_bad_input(files, quantized, tmp_path):
    qmodel, _ = quantized
    proc = run_cli("verify", qmodel, files / "corrupt.tflite", "--data", files / "calib.npy",
                   cwd=tmp_path)
    assert_cli_error(proc, "verify", "cannot read TFLite file", "corrupt.tflite")


def test_analyze(files, tmp_path):
    report, table = tmp_path / "report.html", tmp_path / "sens.csv"
    proc = run_cli("analyze", files / "float.keras", "--data", files / "train.npz",
                   "-o", report, "--csv", table, "--no-histograms", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "accuracy (higher is better, 64 samples)" in proc.stdout
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>") and "Sensitivity" in page
    assert table.read_text().count("\n") >= 4  # header + one row per quantized layer


def test_analyze_subclassed_model(files, tmp_path):
    # The subclass is not importable in the subprocess: the model cannot even be rebuilt.
    proc = run_cli("analyze", files / "subclassed.keras", "--data", files / "calib.npy",
                   "-o", tmp_path / "r.html", cwd=tmp_path)
    assert_cli_error(proc, "analyze", "subclassed.keras", "subclassed")


# ------------------------------------------------------ bad inputs, in this process
@pytest.mark.parametrize("args, fragments", [
    (["quantize", "{missing}.keras", "--calibration", "{calib.npy}", "-o", "{out}/q.keras"],
     ["does not exist"]),
    (["quantize", "{corrupt.keras}", "--calibration", "{calib.npy}", "-o", "{out}/q.keras"],
     ["corrupt"]),
    (["quantize", "{labels.txt}", "--calibration", "{calib.npy}", "-o", "{out}/q.keras"],
     ["not a Keras model file", ".keras or .h5"]),
    (["quantize", "{subclassed.keras}", "--calibration", "{calib.npy}", "-o", "{out}/q.keras"],
     ["subclassed model"]),
    (["quantize", "{float.keras}", "--calibration", "{corrupt.npy}", "-o", "{out}/q.keras"],
     ["cannot read calibration data", "corrupt.npy"]),
    (["quantize", "{float.keras}", "--calibration", "{broken_images}", "-o", "{out}/q.keras"],
     ["cannot read image", "1.png"]),
    (["quantize", "{float.keras}", "--calibration", "{empty}", "-o", "{out}/q.keras"],
     ["contains no"]),
    (["quantize", "{float.keras}", "--calibration", "{labels.txt}", "-o", "{out}/q.keras"],
     ["unsupported type"]),
    (["quantize", "{float.keras}", "--calibration", "{calib.npy}", "-o", "{out}/q.keras",
      "--qat-epochs", "1"], ["labels are needed"]),
    (["quantize", "{float.keras}", "--calibration", "{calib.npy}", "-o", "{out}/q.keras",
      "--qat-epochs", "1", "--labels", "{short_labels.npy}"], ["10 labels for 64 samples"]),
    (["quantize", "{float.keras}", "--calibration", "{calib.npy}", "-o", "{out}/q.keras",
      "--methods", "cle,magic"], ["unknown PTQ method(s) magic"]),
    (["quantize", "{float.keras}", "--calibration", "{calib.npy}", "-o", "{out}/q.keras",
      "--config", "int3_magic"], ["unknown config 'int3_magic'", "dynamic_range"]),
    (["quantize", "{float.keras}", "--calibration", "{calib.npy}", "-o", "{out}/q.tflite"],
     ["must end in .keras"]),
    (["quantize", "{float.keras}", "--calibration", "{calib.npy}", "-o", "{out}/no/q.keras"],
     ["output directory", "does not exist"]),
    (["quantize", "{float.keras}", "-o", "{out}/q.keras"],
     ["the following arguments are required: --calibration"]),
    (["quantize", "{float.keras}", "--calibration", "{calib.npy}", "-o", "{out}/q.keras",
      "--qat-epochs", "-1"], ["--qat-epochs", "expected an integer >= 0"]),
    (["export", "{float.keras}", "-o", "{out}/e.tflite"], ["float model", "tfquant quantize"]),
    (["export", "{q.keras}"], ["nothing to export"]),
    (["export", "{q.keras}", "-o", "{out}/e.tfl"], ["must end in .tflite"]),
    (["export", "{q.keras}", "-o", "{out}/e.tflite", "--mode", "int4"], ["invalid choice"]),
    (["export", "{q.keras}", "-o", "{out}/e.tflite", "--h5", "{out}/e.keras"],
     ["--h5 output", "must end in .h5"]),
    (["export", "{q.keras}", "-o", "{out}/e.tflite", "--saved-model", "{calib.npy}"],
     ["--saved-model output", "exists"]),
    (["export", "{q.keras}", "-o", "{out}/e.tflite", "--mode", "int16x8"],
     ["cannot be exported to TFLite int16x8", "16-bit activations"]),
    # I/O types the mode cannot give: refused before the model is even read
    (["export", "{corrupt.keras}", "-o", "{out}/e.tflite", "--mode", "dynamic_range",
      "--input-type", "int8"], ["--input-type int8", "dynamic_range", "['float32']"]),
    (["export", "{q.keras}", "-o", "{out}/e.tflite", "--input-type", "int16"],
     ["--input-type int16", "mode int8", "['float32', 'int8', 'uint8']"]),
    (["quantize", "{float.keras}", "--calibration", "{calib.npy}", "-o", "{out}/q.keras",
      "--tflite", "{out}/q.tflite", "--mode", "int16x8", "--input-type", "uint8"],
     ["--input-type uint8", "int16x8", "['float32', 'int16']"]),
    (["verify", "{q.keras}", "{out}/missing.tflite", "--data", "{calib.npy}"],
     ["TFLite file", "does not exist"]),
    (["verify", "{float.keras}", "{q.tflite}", "--data", "{calib.npy}"], ["float model"]),
    (["verify", "{q.keras}", "{q.tflite}", "--data", "{wrong_shape.npy}"],
     ["expected shape (N, 8, 8, 1), got (4, 28, 28, 1)"]),
    (["analyze", "{float.keras}", "--data", "{calib.npy}", "-o", "{out}/r.html",
      "--metric", "accuracy"], ["needs labels"]),
    (["analyze", "{float.keras}", "--data", "{calib.npy}", "--labels", "{short_labels.npy}",
      "-o", "{out}/r.html"], ["10 labels for 64 samples"]),
    (["analyze", "{float.keras}", "--data", "{missing}.npy", "-o", "{out}/r.html"],
     ["data", "does not exist"]),
    (["analyze", "{float.keras}", "--data", "{calib.npy}", "-o", "{out}/r.txt"],
     ["must end in .html"]),
    # conversion fails after PTQ: neither the .keras nor the .tflite is written
    (["quantize", "{float.keras}", "--calibration", "{calib.npy}", "-o", "{out}/q.keras",
      "--methods", "none", "--tflite", "{out}/q.tflite", "--mode", "int16x8"],
     ["int16x8"]),
    # TFLite conversion fails: the encodings and the .h5 are not written either
    (["export", "{q.keras}", "-o", "{out}/e.tflite", "--encodings", "{out}/e.json", "--h5",
      "{out}/e.h5", "--mode", "int16x8"], ["cannot be exported to TFLite int16x8"]),
    (["verify", "{q.keras}", "{q.tflite}", "--data", "{calib.npy}", "--tolerance-lsb", "-1"],
     ["--tolerance-lsb", "expected a number >= 0"]),
    (["verify", "{q.keras}", "{q.tflite}", "--data", "{calib.npy}", "--json", "{out}/v.txt"],
     ["--json output", "must end in .json"]),
    (["demo", "--float-epochs", "0"], ["--float-epochs", "expected a positive integer"]),
])
def test_bad_input_in_process(files, quantized, tmp_path, capsys, args, fragments):
    argv = [_expand(a, files, tmp_path) for a in args]
    code, _, err = run_main(capsys, *argv)
    assert code == EXIT_ERROR, err
    verb = args[0]
    line = error_line(err, verb)
    for fragment in fragments:
        assert fragment in line, line
    assert not list(tmp_path.iterdir())  # nothing written, not even a partial file


def test_failed_quantize_keeps_existing_outputs(files, tmp_path, capsys):
    out, tflite = tmp_path / "q.keras", tmp_path / "q.tflite"
    out.write_bytes(b"earlier model")
    tflite.write_bytes(b"earlier tflite")
    code, _, err = run_main(capsys, "quantize", files / "float.keras", "--calibration",
                            files / "calib.npy", "-o", out, "--methods", "none", "--tflite",
                            tflite, "--mode", "int16x8")
    assert code == EXIT_ERROR and "int16x8" in error_line(err, "quantize")
    assert out.read_bytes() == b"earlier model" and tflite.read_bytes() == b"earlier tflite"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.keras", "q.tflite"]


@pytest.mark.parametrize("failing", ["keras_h5", "saved_model"])
def test_failed_export_writes_nothing(files, quantized, tmp_path, capsys, monkeypatch, failing):
    """A writer failing after the TFLite model, and another output, were written (to their
    temporary paths) leaves every destination as it was and no temporary file behind."""
    import tfquant

    def broken(qmodel, path, **kwargs):
        target = os.path.join(path, "saved_model.pb") if os.path.isdir(path) else path
        with open(target, "wb") as f:
            f.write(b"half written")
        raise RuntimeError("injected failure")

    monkeypatch.setattr(tfquant.export, failing, broken)
    qmodel, _ = quantized
    out = tmp_path / "e.tflite"
    out.write_bytes(b"earlier tflite")
    code, stdout, err = run_main(capsys, "export", qmodel, "-o", out, "--h5", tmp_path / "e.h5",
                                 "--saved-model", tmp_path / "sm", "--encodings",
                                 tmp_path / "e.json")
    assert code == 3 and "injected failure" in error_line(err, "export"), err
    assert "wrote" not in stdout
    assert out.read_bytes() == b"earlier tflite"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.tflite"]


def test_export_model_with_keras_ops(tmp_path, capsys):
    """A Functional model with a keras.ops call between layers: every format is written."""
    import tfquant

    inp = keras.Input((4,), name="x")
    h = keras.ops.add(keras.layers.Dense(4, name="a")(inp), keras.layers.Dense(4, name="b")(inp))
    qmodel = tfquant.quantize_model(keras.Model(inp, keras.layers.Dense(2, name="head")(h)))
    tfquant.calibrate(qmodel, np.random.default_rng(0).random((16, 4), np.float32), verbose=0)
    qmodel.save(tmp_path / "q.keras")
    names = ["m.tflite", "m.h5", "sm", "m.json"]
    code, stdout, err = run_main(capsys, "export", tmp_path / "q.keras", "-o",
                                 tmp_path / names[0], "--h5", tmp_path / names[1],
                                 "--saved-model", tmp_path / names[2], "--encodings",
                                 tmp_path / names[3], "-q")
    assert code == 0, err
    assert [line.split()[1] for line in stdout.splitlines()] == [str(tmp_path / n)
                                                                 for n in names]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names + ["q.keras"])


def _expand(arg: str, files: Path, out: Path) -> str:
    """``{name}`` -> the fixture file ``name``; ``{out}`` -> the test's tmp dir;
    ``{missing}`` -> a path that does not exist."""
    if "{" not in arg:
        return arg
    head, rest = arg.split("}", 1)
    key = head.lstrip("{")
    base = {"out": out, "missing": out / "missing"}.get(key, files / key)
    return str(base) + rest


def test_one_line_joins_multi_line_messages():
    from tfquant.cli import one_line

    message = ("model cannot be exported to TFLite int8:\n  - conv1: asymmetric\n"
               "  - fc: per-channel")
    assert one_line(message) == "model cannot be exported to TFLite int8: conv1: asymmetric; " \
                                "fc: per-channel"


# ------------------------------------------------------------------ data loading
def test_cli_data_formats(files, tmp_path):
    from tfquant.cli import data as cli_data

    model = keras.saving.load_model(files / "float.keras")
    x = np.load(files / "calib.npy")
    np.save(tmp_path / "no_channel.npy", x[..., 0].astype(np.float64))
    got, labels = cli_data.load(tmp_path / "no_channel.npy", model)
    assert got.shape == (64, 8, 8, 1) and got.dtype == np.float32 and labels is None
    got, labels = cli_data.load(files / "train.npz", model, max_samples=5)
    np.testing.assert_array_equal(got, x[:5])
    np.testing.assert_array_equal(labels, np.load(files / "labels.npy")[:5])
    got, labels = cli_data.load(files / "calib.npy", model, files / "labels.txt")
    assert labels.dtype.kind == "i" and len(labels) == 64
    images, total = cli_data.load_inputs(files / "images", model, image_range="symmetric")
    assert images.shape == (7, 8, 8, 1) and total == 7
    assert images.min() >= -1.0 and images.max() <= 1.0
    rgb, _ = cli_data.load_inputs(files / "images", model)  # gray RGB -> L is exact
    np.testing.assert_allclose(rgb[:3], np.round(x[:3] * 255) / 255, atol=1e-6)
    np.save(tmp_path / "nan.npy", np.full((2, 8, 8, 1), np.nan, np.float32))
    with pytest.raises(cli_data.DataError, match="non-finite"):
        cli_data.load(tmp_path / "nan.npy", model)
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(cli_data.DataError, match="empty"):
        cli_data.load(tmp_path / "empty.npz", model)


@pytest.mark.slow
def test_demo_runs(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from tfquant import datasets

    out = tmp_path / "demo"
    proc = run_cli("demo", "--output-dir", out, "--float-epochs", "1", "--qat-epochs", "1",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "TFLite int8" in proc.stdout
    # the files it wrote: the TFLite model predicts what the QAT model predicts
    qat = keras.saving.load_model(out / "demo_qat.keras")
    interpreter = Interpreter(model_path=str(out / "demo.tflite"))
    (_, _), (x, _) = datasets.load_digits()
    x = x[:32]
    inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interpreter.invoke()
    tflite_top1 = interpreter.get_tensor(outp["index"]).argmax(-1)
    assert np.mean(tflite_top1 == qat.predict(x, verbose=0).argmax(-1)) >= 0.9


def test_demo_bad_output_dir(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    proc = run_cli("demo", "--output-dir", tmp_path / "file", cwd=tmp_path)
    assert_cli_error(proc, "demo", "--output-dir", "not a directory")
    assert (tmp_path / "file").read_text() == "not a directory"
