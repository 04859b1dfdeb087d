"""The ``tfquant`` command line: demo, quantize, export, verify, analyze.

Run ``tfquant --help`` / ``tfquant <verb> --help`` (or ``python -m tfquant.cli ...``); the text
below is the command's own help.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import warnings
import zipfile
from typing import Any, Callable

import numpy as np

EXIT_OK, EXIT_MISMATCH, EXIT_ERROR, EXIT_INTERNAL = 0, 1, 2, 3
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
DEFAULT_METHODS = "cle,bias_correction"
DESCRIPTION = """\
Quantization for Keras 3 models: PTQ / QAT, TFLite export, verification, analysis.

verbs:
  demo      train, QAT fine-tune, export and verify a CNN on the bundled digits data
  quantize  post-training quantize (or QAT fine-tune) a float .keras/.h5 model
  export    write a quantized model as TFLite (and .h5 / SavedModel / encodings)
  verify    compare a quantized model with its .tflite export (exit code 1 if they differ)
  analyze   per-layer sensitivity and an HTML report

data files (DATA, LABELS): .npy; .npz (the array 'x', else the first; 'y' = labels); or a
folder of PNG/JPEG images, converted to the model's channels, resized to its input size and
scaled to [0, 1] float32 (see --image-range). Arrays are used as they are (no scaling).

exit codes: 0 success; 1 verification outside tolerance; 2 bad input, with one line on
stderr: 'tfquant <verb>: error: <reason>'; 3 internal error (--debug or TFQUANT_DEBUG=1
show the traceback).
"""


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def one_line(message: Any) -> str:
    """``message`` on one line: a multi-line list (``"...:\\n  - a\\n  - b"``) becomes
    ``"...: a; b"``."""
    parts = [p.strip() for p in str(message).splitlines()]
    parts = [p[2:] if p.startswith("- ") else p for p in parts]
    out = ""
    for p in (p for p in parts if p):
        out += p if not out else (" " if out.endswith(":") else "; ") + p
    return " ".join(out.split())


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``tfquant quantize: error: ...``), exit code 2."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(EXIT_ERROR, f"{self.prog}: error: {one_line(message)} "
                              f"(see '{self.prog} --help')\n")


# ------------------------------------------------------------------ shared helpers
def _say(args: argparse.Namespace, *parts: Any) -> None:
    if not getattr(args, "quiet", False):
        print(*parts, flush=True)


def _verbose(args: argparse.Namespace) -> int:
    return 0 if getattr(args, "quiet", False) else 1


@contextlib.contextmanager
def _muted(args: argparse.Namespace):
    """Silences Python-level prints of libraries (the converter's 'Saved artifact' dump) and
    the converter's warning about input statistics."""
    if getattr(args, "debug", False):
        yield
        return
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # "saving as HDF5 is legacy", "assets written to" ...
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            # The converter warns about this for every QAT/PTQ model (the ranges come from
            # the FakeQuant ops, as intended).
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            yield
    finally:
        absl.setLevel(level)


def _check_output(path: str, suffixes: tuple[str, ...] | None, what: str) -> str:
    from tfquant.export.paths import check_output_path

    if suffixes and not path.lower().endswith(suffixes):
        raise CLIError(f"{what} {path!r} must end in {' or '.join(suffixes)}")
    if os.path.isdir(path) and (suffixes is not None):
        raise CLIError(f"{what} {path!r} is a directory")
    return check_output_path(path)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def load_model(path: str, what: str = "model", quantized: bool | None = None):
    """Loads a ``.keras``/``.h5`` Functional or Sequential model; ``quantized`` True/False
    requires a tfquant-quantized / a float model. Raises :class:`CLIError` (one line)."""
    import keras

    from keras.src.models.functional import Functional

    from tfquant.analysis.sensitivity import is_quantized

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


def load_config(text: str | None):
    """A preset name, or a JSON file: an NNI-style config list or a QuantConfig dict."""
    from tfquant.specs import PRESETS, QuantConfig

    if text is None:
        return "tflite_int8"
    if text in PRESETS or text == "dynamic_range":
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
                   f"({', '.join(sorted(PRESETS))}) or a .json file")


def _progress(args: argparse.Namespace, label: str) -> Callable[[int, int], None] | None:
    """A ``progress(done, count)`` callback drawing a Keras progress bar (None when quiet)."""
    if getattr(args, "quiet", False):
        return None
    import keras

    state: dict[str, Any] = {}

    def update(done: int, count: int) -> None:
        if "bar" not in state:
            print(label, flush=True)
            state["bar"] = keras.utils.Progbar(count, unit_name="file")
        state["bar"].update(done)
    return update


def load_data(args: argparse.Namespace, path: str, model, what: str, labels: str | None = None,
              need_labels: bool = False):
    """``(x, y)`` from the data options of ``args`` (see :mod:`tfquant.cli_data`)."""
    from tfquant import cli_data

    x, y = cli_data.load(path, model, labels, what=what, max_samples=args.max_samples,
                         image_range=args.image_range, need_labels=need_labels,
                         progress=_progress(args, f"reading images from {path}"))
    _say(args, f"{what}: {cli_data.num_samples(x)} samples from {path}"
         + ("" if y is None else f" (with {len(y)} labels)"))
    return x, y


def _save_keras(model, path: str) -> None:
    """Saves ``model`` to ``path`` through a temporary file (no partial file on failure)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".partial.keras")
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _export_tflite(args, qmodel, path: str, input_type: str, mode: str,
                   strict: bool = True) -> bytes:
    import tfquant

    _say(args, f"converting to TFLite ({mode}, {input_type} input) ...")
    with _muted(args):
        data = tfquant.export.tflite(qmodel, path, input_type=input_type, mode=mode,
                                     strict=strict)
    print(f"wrote {path} ({len(data)} bytes)")
    return data


# ------------------------------------------------------------------------- demo
def _demo(args: argparse.Namespace) -> int:
    from tfquant import demo

    demo.run(output_dir=args.output_dir, float_epochs=args.float_epochs,
             qat_epochs=args.qat_epochs, seed=args.seed)
    return 0


# --------------------------------------------------------------------- quantize
def _is_probability_output(model, x) -> bool:
    """True when the model's outputs on a few samples look like softmax probabilities."""

    from tfquant import cli_data

    out = model(cli_data.take(x, 16), training=False)
    out = np.asarray(out[0] if isinstance(out, (list, tuple)) else out)
    return bool(out.ndim >= 2 and out.shape[-1] > 1 and out.min() >= 0 and
                np.allclose(out.sum(-1), 1.0, atol=1e-3))


def _qat_loss(args, model, x, y):
    """The loss for QAT: ``--loss``, else from the labels and the model's output."""
    import keras

    if args.loss:
        return args.loss, []
    out_shape = model.outputs[0].shape
    classes = out_shape[-1] if len(out_shape) >= 2 else None
    y = np.asarray(y)
    if classes and classes > 1 and y.dtype.kind in "iub" and (
            y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
        logits = not _is_probability_output(model, x)
        return (keras.losses.SparseCategoricalCrossentropy(from_logits=logits),
                ["accuracy"])
    if classes and classes > 1 and y.ndim == 2 and y.shape[1] == classes:
        logits = not _is_probability_output(model, x)
        return keras.losses.CategoricalCrossentropy(from_logits=logits), ["accuracy"]
    return "mse", []


def _methods(text: str) -> tuple[str, ...]:
    from tfquant.ptq.pipeline import METHODS

    if text.strip().lower() in ("", "none"):
        return ()
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise CLIError(f"unknown PTQ method(s) {', '.join(unknown)}: choose from "
                       f"{','.join(METHODS)} (or 'none')")
    return methods


def _quantize(args: argparse.Namespace) -> int:
    import keras

    import tfquant

    out = _check_output(args.output, (".keras",), "output")
    if args.tflite:
        _check_output(args.tflite, (".tflite",), "--tflite output")
    qat = args.qat_epochs > 0
    if qat and args.methods is not None:
        raise CLIError("--methods selects PTQ algorithms; with --qat-epochs the model is "
                       "calibrated and then trained (drop --methods)")
    if args.labels and not qat:
        raise CLIError("--labels is used for QAT only: add --qat-epochs N")
    methods = _methods(DEFAULT_METHODS if args.methods is None else args.methods)
    config = load_config(args.config)
    if qat and config == "dynamic_range":
        raise CLIError("--config dynamic_range is weight-only PTQ; it cannot be trained with QAT")
    model = load_model(args.model, "model", quantized=False)
    x, y = load_data(args, args.calibration, model, "calibration data", args.labels,
                     need_labels=qat)

    if qat:
        qmodel = tfquant.quantize_model(model, config)
        _say(args, qmodel.quantization_report)
        _say(args, "calibrating the initial ranges ...")
        tfquant.calibrate(qmodel, x, observer=args.observer, batch_size=args.batch_size,
                          verbose=_verbose(args))
        loss, metrics = _qat_loss(args, model, x, y)
        qmodel.compile(keras.optimizers.Adam(args.learning_rate), loss, metrics=metrics)
        _say(args, f"QAT: {args.qat_epochs} epoch(s), batch size {args.batch_size}, "
                   f"learning rate {args.learning_rate}")
        qmodel.fit(x, y, batch_size=args.batch_size, epochs=args.qat_epochs,
                   verbose=_verbose(args), shuffle=True)
    else:
        options: dict[str, Any] = {"batch_size": args.batch_size, "verbose": _verbose(args)}
        if "adaround" in methods and args.adaround_iterations is not None:
            options["iterations"] = args.adaround_iterations
        elif args.adaround_iterations is not None:
            raise CLIError("--adaround-iterations needs adaround in --methods")
        _say(args, f"PTQ ({config if isinstance(config, str) else 'config file'}): "
                   f"methods {', '.join(methods) or 'none'}, observer {args.observer}")
        qmodel = tfquant.ptq(model, x, config=config, methods=methods,
                             observer=args.observer, **options)
        _say(args, qmodel.quantization_report)
        _say(args, qmodel.ptq_report)
    _save_keras(qmodel, out)
    print(f"wrote {out}")
    if args.tflite:
        mode = "dynamic_range" if config == "dynamic_range" else args.mode
        _export_tflite(args, qmodel, args.tflite, args.input_type, mode)
    return EXIT_OK


# ----------------------------------------------------------------------- export
_EXPORTERS = {"h5": "keras_h5", "saved_model": "saved_model", "encodings": "encodings"}


def _exporter(name: str):
    import tfquant

    fn = getattr(tfquant.export, name, None)
    if not callable(fn):
        raise CLIError(f"tfquant.export.{name} is not available in this installation")
    return fn


def _export(args: argparse.Namespace) -> int:
    import tfquant

    wanted = {"tflite": args.output, "h5": args.h5, "saved_model": args.saved_model,
              "encodings": args.encodings}
    if not any(wanted.values()):
        raise CLIError("nothing to export: give -o OUT.tflite, --h5, --saved-model or "
                       "--encodings")
    # Every check before anything is written.
    if args.output:
        _check_output(args.output, (".tflite",), "output")
    if args.h5:
        _check_output(args.h5, (".h5", ".hdf5"), "--h5 output")
    if args.saved_model:
        _check_output(args.saved_model, None, "--saved-model output")
        target = args.saved_model
        if os.path.exists(target) and (not os.path.isdir(target) or (
                os.listdir(target) and not os.path.exists(os.path.join(target,
                                                                       "saved_model.pb")))):
            raise CLIError(f"--saved-model output {target!r} exists and is not an empty "
                           "directory or a SavedModel")
    if args.encodings:
        _check_output(args.encodings, (".json",), "--encodings output")
    exporters = {k: _exporter(_EXPORTERS[k]) for k in ("h5", "saved_model", "encodings")
                 if wanted[k]}
    dynamic = args.mode == "dynamic_range"
    qmodel = load_model(args.qmodel, "quantized model", quantized=None if dynamic else True)
    from tfquant.analysis.sensitivity import is_quantized

    if dynamic and not is_quantized(qmodel):
        _say(args, "float model: quantizing the weights (dynamic range)")
        qmodel = tfquant.ptq.dynamic_range(qmodel)

    if args.output:
        _export_tflite(args, qmodel, args.output, args.input_type, args.mode,
                       strict=not args.allow_float_ops)
    if args.h5:
        with _muted(args):
            exporters["h5"](qmodel, args.h5)
        print(f"wrote {args.h5}")
    if args.saved_model:
        with _muted(args):
            exporters["saved_model"](qmodel, args.saved_model)
        print(f"wrote {args.saved_model}")
    if args.encodings:
        kwargs = {} if args.encodings_version is None else {"version": args.encodings_version}
        exporters["encodings"](qmodel, args.encodings, **kwargs)
        print(f"wrote {args.encodings}")
    return EXIT_OK


# ----------------------------------------------------------------------- verify
def find_verify() -> Callable | None:
    """``tfquant.verify`` (or ``tfquant.verify.verify``), None when not installed."""
    from tfquant.analysis.html_report import find_verify as find

    return find()


class OutputComparison:
    """What ``tfquant verify`` reports when ``tfquant.verify`` is not installed: the Keras
    fake-quant model against the TFLite interpreter (reference kernels), outputs only."""

    per_layer = None

    def __init__(self, diffs_lsb: list, names: list[str]):
        flat = np.concatenate([d.reshape(-1) for d in diffs_lsb]) if diffs_lsb else \
            np.zeros(0)
        self.names = names
        self.bit_exact_fraction = float(np.mean(np.round(flat) == 0)) if flat.size else 1.0
        self.max_abs_diff_lsb = float(np.round(flat.max(), 3)) if flat.size else 0.0
        self.samples = int(diffs_lsb[0].shape[0]) if diffs_lsb else 0

    def __str__(self) -> str:
        return (f"Keras fake-quant vs TFLite (reference kernels), outputs {self.names} on "
                f"{self.samples} samples (tfquant.verify is not installed: no integer "
                "simulator, no per-layer comparison)")


def _lsb_of_outputs(interpreter) -> list[float | None]:
    """The quantization step of each output (for float outputs: of the DEQUANTIZE input)."""
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    producers = {o: op for op in interpreter._get_ops_details()  # noqa: SLF001
                 for o in op["outputs"]}
    steps = []
    for out in interpreter.get_output_details():
        scale = out["quantization"][0]
        op = producers.get(out["index"])
        if not scale and op is not None and op["op_name"] == "DEQUANTIZE":
            scale = tensors[op["inputs"][0]]["quantization"][0]
        steps.append(float(scale) if scale else None)
    return steps


def compare_outputs(qmodel, flatbuffer: bytes, x, batch_size: int = 256) -> OutputComparison:
    """Runs ``x`` through ``qmodel`` and the TFLite model; output differences in LSB."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from tfquant import cli_data

    interpreter = Interpreter(model_content=flatbuffer,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if isinstance(x, dict) or len(inputs) != 1:
        raise CLIError("verification without tfquant.verify handles single-input models only")
    steps = _lsb_of_outputs(interpreter)
    keras_out = qmodel.predict(x, batch_size=32, verbose=0)
    keras_out = keras_out if isinstance(keras_out, (list, tuple)) else [keras_out]
    if len(keras_out) != len(outputs):
        raise CLIError(f"the TFLite model has {len(outputs)} outputs, the Keras model "
                       f"{len(keras_out)}: is it the export of this model?")
    chunks: list[list[np.ndarray]] = [[] for _ in outputs]
    detail = inputs[0]
    total = cli_data.num_samples(x)
    for start in range(0, total, batch_size):
        batch = np.asarray(x[start:start + batch_size], np.float32)
        if tuple(batch.shape[1:]) != tuple(detail["shape"][1:]):
            raise CLIError(f"the TFLite model's input has shape {tuple(detail['shape'])}, the "
                           f"data {tuple(batch.shape)}: is it the export of this model?")
        if detail["dtype"] != np.float32:
            scale, zero_point = detail["quantization"]
            info = np.iinfo(detail["dtype"])
            batch = np.clip(np.round(batch / scale + zero_point), info.min, info.max
                            ).astype(detail["dtype"])
        interpreter.resize_tensor_input(detail["index"], list(batch.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(detail["index"], batch)
        interpreter.invoke()
        for i, out in enumerate(outputs):
            y = interpreter.get_tensor(out["index"]).copy()
            if out["dtype"] != np.float32:
                scale, zero_point = out["quantization"]
                y = (y.astype(np.float32) - zero_point) * scale
            chunks[i].append(y)
    diffs, names = [], []
    for i, out in enumerate(outputs):
        tflite_y = np.concatenate(chunks[i])
        reference = np.asarray(keras_out[i], np.float32).reshape(tflite_y.shape)
        step = steps[i] or 1.0
        diffs.append(np.abs(tflite_y.astype(np.float64) - reference) / step)
        names.append(out["name"])
    return OutputComparison(diffs, names)


def _get(report: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = report.get(name) if isinstance(report, dict) else getattr(report, name, None)
        if value is not None:
            return value() if callable(value) and not isinstance(value, type) else value
    return default


def _first_disagreeing(report: Any) -> str | None:
    """The first layer whose outputs differ, from the report's own field or its per-layer
    records (in their order)."""
    found = _get(report, "first_disagreeing_layer", "first_mismatch", "first_bad_layer",
                 "first_divergence")
    if found is not None:
        return str(found if isinstance(found, str) else _get(found, "layer", "name",
                                                             default=found))
    from tfquant.analysis.html_report import _records

    for row in _records(_get(report, "per_layer")) or []:
        exact = row.get("bit_exact_fraction", row.get("bit_exact"))
        diff = row.get("max_abs_diff_lsb", row.get("max_diff_lsb"))
        if (exact is not None and float(exact) < 1.0) or (diff is not None and float(diff) > 0):
            return str(row.get("layer", row.get("name", row.get("tensor", "?"))))
    return None


def _verify(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.tflite):
        raise FileNotFoundError(f"TFLite file {args.tflite!r} does not exist")
    if not args.tflite.lower().endswith(".tflite"):
        raise CLIError(f"{args.tflite!r} is not a .tflite file")
    with open(args.tflite, "rb") as f:
        flatbuffer = f.read()
    try:
        from ai_edge_litert.interpreter import Interpreter

        Interpreter(model_content=flatbuffer)
    except Exception as err:  # noqa: BLE001 - any failure to parse means a bad file
        raise CLIError(f"cannot read TFLite file {args.tflite!r} (corrupt?): "
                       f"{one_line(err)}") from None
    qmodel = load_model(args.qmodel, "quantized model", quantized=True)
    x, _ = load_data(args, args.data, qmodel, "data")
    verify = find_verify()
    _say(args, f"verifying {args.tflite} against {args.qmodel} ...")
    if verify is not None:
        report = verify(qmodel, args.tflite, x)
    else:
        report = compare_outputs(qmodel, flatbuffer, x, args.batch_size)
    text = str(report)
    if text and not text.startswith("<"):
        _say(args, text)
    exact = _get(report, "bit_exact_fraction")
    lsb = _get(report, "max_abs_diff_lsb")
    first = _first_disagreeing(report)
    print(f"bit-exact fraction: {'n/a' if exact is None else f'{float(exact):.6f}'}")
    print(f"max |diff|: {'n/a' if lsb is None else f'{float(lsb):g}'} LSB")
    if isinstance(report, OutputComparison):
        first = "n/a (outputs only)" if first is None else first
    print(f"first disagreeing layer: {first or 'none'}")
    verdict = _get(report, "within_tolerance", "ok", "passed")
    if isinstance(verdict, (bool, np.bool_)) and args.tolerance_lsb is None:
        ok = bool(verdict)
    else:
        tolerance = 1.0 if args.tolerance_lsb is None else args.tolerance_lsb
        ok = lsb is not None and float(lsb) <= tolerance
    print("result: " + ("PASS (within tolerance)" if ok else "FAIL (outside tolerance)"))
    return EXIT_OK if ok else EXIT_MISMATCH


# ---------------------------------------------------------------------- analyze
def _metric(args, x, y, qmodel):
    """``(metric_fn(y_true, y_pred), higher_is_better, data)`` for the sensitivity analysis.

    With labels: accuracy (integer or one-hot labels) or MSE. Without labels the float
    model's own outputs are the reference: top-1 agreement for classifiers, else the output
    SQNR in dB.
    """
    from tfquant.analysis.sqnr import enabled_only, sqnr

    out_shape = qmodel.outputs[0].shape
    classifier = len(out_shape) >= 2 and (out_shape[-1] or 0) > 1
    kind = args.metric
    if kind == "auto":
        if y is not None:
            kind = "accuracy" if np.asarray(y).dtype.kind in "iub" or (
                classifier and np.asarray(y).ndim == 2) else "mse"
        else:
            kind = "agreement" if classifier else "sqnr"
    if kind in ("accuracy", "mse") and y is None:
        raise CLIError(f"--metric {kind} needs labels: pass --labels LABELS")
    if kind == "accuracy" and not classifier:
        raise CLIError(f"--metric accuracy needs a classifier output, the model gives "
                       f"{tuple(out_shape)}")

    def top1(a):
        a = np.asarray(a)
        return a.argmax(-1) if a.ndim >= 2 and a.shape[-1] > 1 else a.reshape(len(a), -1)[:, 0]

    if kind in ("agreement", "sqnr"):
        with enabled_only(qmodel, []):
            reference = np.asarray(qmodel.predict(x, batch_size=args.batch_size, verbose=0))
        y = reference

    def accuracy(y_true, y_pred):
        y_true = np.asarray(y_true)
        truth = y_true.argmax(-1) if y_true.ndim == 2 and y_true.shape[-1] > 1 else \
            y_true.reshape(-1)
        return float(np.mean(top1(y_pred) == truth))

    def agreement(y_true, y_pred):
        return float(np.mean(top1(y_pred) == top1(y_true)))

    def mse(y_true, y_pred):
        return float(np.mean((np.asarray(y_pred, np.float64)
                              - np.asarray(y_true, np.float64).reshape(np.shape(y_pred))) ** 2))

    def output_sqnr(y_true, y_pred):
        return float(min(sqnr(y_true, y_pred), 200.0))

    fn = {"accuracy": accuracy, "agreement": agreement, "mse": mse, "sqnr": output_sqnr}[kind]
    fn.__name__ = {"agreement": "top-1 agreement with float", "sqnr": "output SQNR dB"}.get(
        kind, kind)
    return fn, kind != "mse", (x, y)


def _analyze(args: argparse.Namespace) -> int:
    import keras

    import tfquant
    from tfquant.analysis.sensitivity import is_quantized, prepare
    from tfquant.analysis.sqnr import layer_groups

    out = _check_output(args.output, (".html", ".htm"), "report")
    if args.csv:
        _check_output(args.csv, (".csv",), "--csv output")
    if args.tflite and not os.path.isfile(args.tflite):
        raise FileNotFoundError(f"TFLite file {args.tflite!r} does not exist")
    config = load_config(args.config)
    model = load_model(args.model, "model", quantized=None)
    qmodel = None
    if args.qmodel:
        qmodel = load_model(args.qmodel, "quantized model", quantized=True)
    x, y = load_data(args, args.data, model, "data", args.labels)
    if args.metric in ("accuracy", "mse") and y is None:
        raise CLIError(f"--metric {args.metric} needs labels: pass --labels LABELS")
    calibration = None
    if args.calibration:
        calibration, _ = load_data(args, args.calibration, model, "calibration data")
    _say(args, "quantizing and calibrating ..." if qmodel is None and not is_quantized(model)
         else "using the quantized model as given")
    qmodel = prepare(model, config, calibration, qmodel, x, args.observer, args.batch_size)
    metric_fn, higher, data = _metric(args, x, y, qmodel)

    groups = layer_groups(qmodel)
    calls = 2 + sum(bool(g.weight_quantizers) + bool(g.activation_quantizers) + 1
                    for g in groups)
    bar = keras.utils.Progbar(calls, verbose=_verbose(args), unit_name="config")
    counter = {"n": 0}

    def counted(y_true, y_pred):
        value = metric_fn(y_true, y_pred)
        counter["n"] += 1
        bar.update(min(counter["n"], calls))
        return value
    counted.__name__ = metric_fn.__name__

    _say(args, f"sensitivity of {len(groups)} layers ({metric_fn.__name__}) ...")
    table = tfquant.analysis.sensitivity(model, data, counted, qmodel=qmodel,
                                         higher_is_better=higher, batch_size=args.batch_size)
    _say(args, table)
    if args.csv:
        table.to_csv(args.csv)
        print(f"wrote {args.csv}")
    _say(args, "writing the HTML report ...")
    with _muted(args):
        tfquant.analysis.report(model, data, out, qmodel=qmodel, tflite=args.tflite,
                                table=table, batch_size=args.batch_size,
                                histograms=not args.no_histograms)
    print(f"wrote {out}")
    return EXIT_OK


# ----------------------------------------------------------------------- parser
def _add_data_options(p: argparse.ArgumentParser) -> None:
    from tfquant.cli_data import IMAGE_RANGES

    p.add_argument("--max-samples", type=_positive, metavar="N",
                   help="use at most the first N samples of the data")
    p.add_argument("--image-range", default="unit", choices=list(IMAGE_RANGES),
                   help="values of images read from a folder: unit = [0, 1] (pixel/255, the "
                        "default), symmetric = [-1, 1], raw = [0, 255]")
    p.add_argument("--batch-size", type=_positive, default=32, metavar="N",
                   help="batch size (default: 32)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars or reports, only results and errors")
    p.add_argument("--debug", action="store_true",
                   help="show tracebacks and library output")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tfquant`` command."""
    from tfquant.export.tflite import IO_TYPES, MODES
    from tfquant.observers import OBSERVERS
    from tfquant.ptq.pipeline import METHODS
    from tfquant.specs import PRESETS

    presets = ", ".join(sorted(PRESETS))
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="tfquant", description=DESCRIPTION, formatter_class=formatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="VERB")
    demo = sub.add_parser("demo", help="train, QAT fine-tune, export and verify a CNN on the "
                                       "bundled digits data")
    demo.add_argument("--output-dir", default="out", help="where files are written")
    demo.add_argument("--float-epochs", type=int, default=25)
    demo.add_argument("--qat-epochs", type=int, default=4)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)

    q = sub.add_parser(
        "quantize", help="post-training quantize (or QAT fine-tune) a float Keras model",
        formatter_class=formatter,
        description="Quantizes a float .keras/.h5 model (Functional or Sequential) and saves the\n"
                    "quantized model as .keras (loadable with keras.saving.load_model).\n\n"
                    "PTQ (default): fold BatchNorm, run --methods, calibrate with --observer.\n"
                    "QAT (--qat-epochs N, labels from --labels or the 'y' of an .npz DATA):\n"
                    "quantize, calibrate, then train N epochs on DATA.",
        epilog="examples:\n  tfquant quantize model.keras --calibration calib.npy -o q.keras\n"
               "  tfquant quantize model.h5 --calibration images/ -o q.keras "
               "--methods cle,bias_correction,adaround --tflite q.tflite\n"
               "  tfquant quantize model.keras --calibration train.npz --qat-epochs 2 "
               "-o qat.keras")
    q.add_argument("model", metavar="MODEL", help="float model (.keras or .h5)")
    q.add_argument("--calibration", required=True, metavar="DATA",
                   help=".npy, .npz or a folder of PNG/JPEG images")
    q.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="the quantized model (.keras)")
    q.add_argument("--config", metavar="PRESET|JSON",
                   help=f"preset ({presets}, dynamic_range) or a JSON file (a QuantConfig "
                        "dict or an NNI-style config list); default tflite_int8")
    q.add_argument("--methods", metavar="LIST",
                   help=f"PTQ algorithms, comma-separated, from {','.join(METHODS)}, or 'none' "
                        f"(default: {DEFAULT_METHODS}; adaround is slower)")
    q.add_argument("--observer", default="minmax", choices=sorted(OBSERVERS),
                   help="activation range observer (default: minmax)")
    q.add_argument("--adaround-iterations", type=_positive, metavar="N",
                   help="AdaRound steps per layer (default: the library's 10000)")
    q.add_argument("--qat-epochs", type=_non_negative, default=0, metavar="N",
                   help="quantization-aware training epochs on DATA (needs labels)")
    q.add_argument("--labels", metavar="LABELS",
                   help="labels for QAT (.npy, .npz, .txt/.csv; default: 'y' of an .npz DATA)")
    q.add_argument("--loss", help="Keras loss name for QAT (default: from the labels: sparse/"
                                  "categorical cross-entropy, else mse)")
    q.add_argument("--learning-rate", type=float, default=1e-4,
                   help="QAT learning rate (Adam, default 1e-4)")
    q.add_argument("--tflite", metavar="PATH", help="also export TFLite to PATH")
    q.add_argument("--input-type", default="float32", choices=sorted(IO_TYPES),
                   help="TFLite input/output type for --tflite (default float32)")
    q.add_argument("--mode", default="int8", choices=MODES,
                   help="TFLite mode for --tflite (default int8)")
    _add_data_options(q)
    _add_common(q)
    q.set_defaults(func=_quantize)

    e = sub.add_parser(
        "export", help="export a quantized .keras model to TFLite and other formats",
        formatter_class=formatter,
        description="Writes a quantized model (from 'tfquant quantize' or QAT) as TFLite, and\n"
                    "optionally as .h5, SavedModel and AIMET-style encodings. Every output is\n"
                    "checked before anything is written. With --mode dynamic_range a float\n"
                    "model is accepted too (its weights are quantized first).",
        epilog="example:\n  tfquant export q.keras -o q.tflite --input-type int8")
    e.add_argument("qmodel", metavar="QMODEL", help="quantized model (.keras or .h5)")
    e.add_argument("-o", "--output", metavar="OUT.tflite", help="TFLite file to write")
    e.add_argument("--input-type", default="float32", choices=sorted(IO_TYPES),
                   help="TFLite input/output type (default float32; int16 in int16x8 mode)")
    e.add_argument("--mode", default="int8", choices=MODES, help="TFLite mode (default int8)")
    e.add_argument("--allow-float-ops", action="store_true",
                   help="warn instead of failing when ops remain float")
    e.add_argument("--encodings", metavar="PATH",
                   help="also write the AIMET-style encodings (.json) of every quantized tensor")
    e.add_argument("--encodings-version", choices=("0.6.1", "1.0.0"),
                   help="encodings format version (default: the library's, 1.0.0)")
    e.add_argument("--h5", metavar="PATH",
                   help="also write the folded float model as legacy .h5 (the float model "
                        "the encodings describe)")
    e.add_argument("--saved-model", metavar="DIR",
                   help="also write the folded float model as a TF SavedModel directory")
    _add_common(e)
    e.set_defaults(func=_export)

    v = sub.add_parser(
        "verify", help="compare a quantized model with its TFLite export",
        formatter_class=formatter,
        description="Runs tfquant.verify: the Keras fake-quant model, the integer simulator\n"
                    "and the TFLite interpreter on DATA. Prints the bit-exact fraction, the\n"
                    "largest difference in output LSBs and the first layer that disagrees.\n"
                    "Exit code 0 when within tolerance, 1 otherwise (2 on bad input).",
        epilog="example:\n  tfquant verify q.keras q.tflite --data calib.npy")
    v.add_argument("qmodel", metavar="QMODEL", help="quantized model (.keras or .h5)")
    v.add_argument("tflite", metavar="TFLITE", help="its TFLite export")
    v.add_argument("--data", required=True, metavar="DATA",
                   help=".npy, .npz or a folder of images")
    v.add_argument("--tolerance-lsb", type=float, metavar="LSB",
                   help="largest accepted output difference in LSB (default: the report's own "
                        "verdict, else 1)")
    _add_data_options(v)
    _add_common(v)
    v.set_defaults(func=_verify)

    a = sub.add_parser(
        "analyze", help="per-layer sensitivity and an HTML report",
        formatter_class=formatter,
        description="Quantizes a copy of MODEL with --config (calibrated on --calibration,\n"
                    "default DATA; or analyses --qmodel), measures each layer's sensitivity on\n"
                    "DATA and writes a self-contained HTML report: annotation, ranges,\n"
                    "sensitivity, SQNR, histograms, and the verification of --tflite.\n\n"
                    "--metric auto: accuracy with integer or one-hot labels, MSE with other\n"
                    "labels; without labels, top-1 agreement with the float model\n"
                    "(classifiers) or the output SQNR in dB.",
        epilog="example:\n  tfquant analyze model.keras --data val.npy --labels val_y.npy "
               "-o report.html")
    a.add_argument("model", metavar="MODEL", help="float model (.keras or .h5)")
    a.add_argument("--data", required=True, metavar="DATA",
                   help=".npy, .npz or a folder of images")
    a.add_argument("--labels", metavar="LABELS", help="labels of DATA (.npy, .npz, .txt/.csv)")
    a.add_argument("-o", "--output", required=True, metavar="REPORT.html",
                   help="the HTML report to write")
    a.add_argument("--metric", default="auto",
                   choices=("auto", "accuracy", "mse", "agreement", "sqnr"),
                   help="sensitivity metric (default auto)")
    a.add_argument("--qmodel", metavar="QMODEL",
                   help="analyse this quantized model instead of a fresh calibrated copy")
    a.add_argument("--tflite", metavar="TFLITE", help="include the verification of this file")
    a.add_argument("--config", metavar="PRESET|JSON", help="quantization config of the copy")
    a.add_argument("--calibration", metavar="DATA", help="calibration data (default: DATA)")
    a.add_argument("--observer", default="minmax", choices=sorted(OBSERVERS),
                   help="activation range observer (default: minmax)")
    a.add_argument("--csv", metavar="PATH", help="also write the sensitivity table as CSV")
    a.add_argument("--no-histograms", action="store_true",
                   help="leave the histogram section out of the report")
    _add_data_options(a)
    _add_common(a)
    a.set_defaults(func=_analyze)
    return parser


def _end_line() -> None:
    """Ends a progress bar left open on a terminal, so the error starts its own line."""
    try:
        if sys.stdout.isatty():
            print(flush=True)
        sys.stdout.flush()
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point: parses ``argv`` and runs the sub-command; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        try:
            return args.func(args)
        except (ValueError, FileNotFoundError, TypeError) as err:
            print(f"tfquant {args.command}: error: {err}", file=sys.stderr)
            return 2
    debug = args.debug or os.environ.get("TFQUANT_DEBUG", "") not in ("", "0")
    prefix = f"tfquant {args.command}: error:"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{prefix} interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, FileNotFoundError, TypeError, OSError) as err:
        if debug:
            raise
        _end_line()
        print(f"{prefix} {one_line(err) or type(err).__name__}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as err:  # noqa: BLE001 - one line, not a traceback
        if debug:
            raise
        _end_line()
        print(f"{prefix} internal error: {type(err).__name__}: {one_line(err)} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
