"""Output-only check of a TFLite export, used by ``tfquant verify`` while ``tfquant.verify``
(Keras vs integer simulator vs TFLite, per layer) is not installed.

Example:
    >>> report = compare_outputs(qmodel, open("q.tflite", "rb").read(), x)  # doctest: +SKIP
    >>> report.bit_exact_fraction, report.max_abs_diff_lsb                # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from tfquant.cli.common import CLIError


class OutputComparison:
    """The Keras fake-quant model against the TFLite interpreter (reference kernels), outputs
    only: the differences in LSB of each output's quantization step."""

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


def _run_tflite(interpreter, x, batch_size: int) -> list[np.ndarray]:
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    detail = inputs[0]
    chunks: list[list[np.ndarray]] = [[] for _ in outputs]
    for start in range(0, len(x), batch_size):
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
    return [np.concatenate(c) for c in chunks]


def compare_outputs(qmodel, flatbuffer: bytes, x, batch_size: int = 256) -> OutputComparison:
    """Runs ``x`` through ``qmodel`` and the TFLite model; output differences in LSB."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=flatbuffer,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    if isinstance(x, dict) or len(interpreter.get_input_details()) != 1:
        raise CLIError("verification without tfquant.verify handles single-input models only")
    outputs = interpreter.get_output_details()
    keras_out = qmodel.predict(x, batch_size=32, verbose=0)
    keras_out = keras_out if isinstance(keras_out, (list, tuple)) else [keras_out]
    if len(keras_out) != len(outputs):
        raise CLIError(f"the TFLite model has {len(outputs)} outputs, the Keras model "
                       f"{len(keras_out)}: is it the export of this model?")
    steps = _lsb_of_outputs(interpreter)
    diffs, names = [], []
    for i, tflite_y in enumerate(_run_tflite(interpreter, x, batch_size)):
        reference = np.asarray(keras_out[i], np.float32).reshape(tflite_y.shape)
        diffs.append(np.abs(tflite_y.astype(np.float64) - reference) / (steps[i] or 1.0))
        names.append(outputs[i]["name"])
    return OutputComparison(diffs, names)
