"""Shared helpers of the benchmark scripts.

* :func:`run_tfmot` runs the tfmot baseline (``benchmarks/tfmot_worker.py``) in the
  separate legacy-Keras virtual environment ``.venv-tfmot`` and returns its JSON;
* :func:`write_results` writes ``benchmarks/results/<name>.json``;
* :func:`markdown_table` formats rows of results as a Markdown table;
* :func:`epoch_orders` gives the seeded per-epoch sample orders both frameworks train with;
* :func:`save_layer_weights` / :func:`load_layer_weights` hand trained weights from Keras 3
  to the ``tf_keras`` model of the same architecture (numpy ``.npz``, keyed by layer name).

This module imports only the standard library, so benchmark scripts can import it
(``from common import run_tfmot``; a script's own folder is on ``sys.path``) from
either virtual environment.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

__all__ = [
    "BENCH_DIR",
    "REPO_ROOT",
    "RESULTS_DIR",
    "TFMOT_VENV",
    "TFMOT_VENV_COMMANDS",
    "TfmotError",
    "TfmotUnavailableError",
    "epoch_orders",
    "load_layer_weights",
    "markdown_table",
    "run_tfmot",
    "save_layer_weights",
    "tfmot_available",
    "tfmot_python",
    "write_results",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
TFMOT_VENV = REPO_ROOT / ".venv-tfmot"
TFMOT_WORKER = BENCH_DIR / "tfmot_worker.py"

#: Shell commands (run from the repository root) that create ``.venv-tfmot``.
TFMOT_VENV_COMMANDS = (
    "python3 -m venv .venv-tfmot\n"
    ".venv-tfmot/bin/pip install --upgrade pip\n"
    '.venv-tfmot/bin/pip install "tensorflow==2.21.*" "tf-keras==2.21.*" '
    '"tensorflow-model-optimization==0.8.*" ai-edge-litert mlxtend scikit-learn'
)


class TfmotUnavailableError(FileNotFoundError):
    """Raised when the ``.venv-tfmot`` virtual environment does not exist."""


class TfmotError(RuntimeError):
    """Raised when the tfmot worker fails; ``result`` holds its JSON (if any)."""

    def __init__(self, message: str, result: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.result = result


def tfmot_python() -> Path:
    """Returns the Python interpreter of the tfmot environment.

    ``$TFQUANT_TFMOT_PYTHON`` overrides the default ``<repo>/.venv-tfmot/bin/python``.
    """
    override = os.environ.get("TFQUANT_TFMOT_PYTHON")
    if override:
        return Path(override)
    return TFMOT_VENV / "bin" / "python"


def tfmot_available() -> bool:
    """Tells whether the tfmot environment's interpreter exists."""
    return tfmot_python().exists()


def _worker_args(kwargs: Mapping[str, Any]) -> List[str]:
    args: List[str] = []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            args.extend([flag, str(value)])
    return args


def run_tfmot(timeout: Optional[float] = 1800, check: bool = True,
              **kwargs: Any) -> Dict[str, Any]:
    """Runs the tfmot baseline worker in ``.venv-tfmot`` and returns its result.

    Keyword arguments map one to one onto the worker's command-line flags
    (``qat_epochs=2`` -> ``--qat-epochs 2``, ``tflite=False`` -> ``--no-tflite``;
    ``None`` values are left out): ``model``, ``dataset`` (``"digits"`` or
    ``"mnist"``), ``epochs``, ``qat_epochs``, ``warmup_epochs``, ``batch_size``,
    ``seed``, ``split``, ``lr``, ``qat_lr``, ``scheme`` (``"8bit"``, ``"nbit"``,
    ``"w4a4"``, ...), ``tflite``, ``save_tflite``, ``threads``.

    Args:
        timeout: Seconds before the worker is killed (``None``: no limit).
        check: Raise :class:`TfmotError` if the worker fails (otherwise return its
            ``{"ok": false, ...}`` dictionary).
        **kwargs: Worker options, see above.

    Returns:
        The worker's JSON object (see ``benchmarks/tfmot_worker.py``): ``float``,
        ``qat`` and ``tflite`` sections with per-epoch times and accuracies, plus
        versions and host information.

    Raises:
        TfmotUnavailableError: If ``.venv-tfmot`` is missing (the message gives the
            commands that create it).
        TfmotError: If the worker fails and ``check`` is true.
    """
    python = tfmot_python()
    if not python.exists():
        raise TfmotUnavailableError(
            f"the tfmot baseline needs the virtual environment {TFMOT_VENV} "
            f"({python} not found). Create it with `make tfmot-venv`, or from the "
            f"repository root:\n{TFMOT_VENV_COMMANDS}"
        )
    env = dict(os.environ)
    env["TF_USE_LEGACY_KERAS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.pop("PYTHONPATH", None)  # keep the main venv's packages out of the worker
    cmd = [str(python), str(TFMOT_WORKER), *_worker_args(kwargs)]
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise TfmotError(f"tfmot worker timed out after {timeout} s: {' '.join(cmd)}") from err
    result: Optional[Dict[str, Any]] = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue
            break
    if result is None:
        result = {"ok": False, "error": f"no JSON from the worker (exit code {proc.returncode})"}
    result.setdefault("ok", proc.returncode == 0)
    if proc.returncode != 0 or not result.get("ok"):
        result["ok"] = False
        result["stderr_tail"] = proc.stderr[-4000:]
        if check:
            raise TfmotError(
                f"tfmot worker failed (exit code {proc.returncode}): "
                f"{result.get('error')}\n{result.get('traceback', '')}"
                f"--- stderr (tail) ---\n{proc.stderr[-2000:]}",
                result,
            )
    return result


def _json_default(obj: Any) -> Any:
    for attr in ("tolist", "item"):  # NumPy arrays and scalars
        if hasattr(obj, attr):
            return getattr(obj, attr)()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def write_results(name: str, data: Mapping[str, Any],
                  results_dir: Optional[Path] = None) -> Path:
    """Writes ``benchmarks/results/<name>.json``.

    A ``"meta"`` entry (UTC timestamp, Python version, platform, CPU count) is added
    unless ``data`` already has one. NumPy values are converted to plain JSON.

    Args:
        name: File stem (``"qat_speed"`` -> ``qat_speed.json``).
        data: The results.
        results_dir: Folder to write to (default ``benchmarks/results``).

    Returns:
        The path written.
    """
    out_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = dict(data)
    payload.setdefault("meta", {
        "written_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "argv": sys.argv,
    })
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n")
    return path


def _fmt(value: Any, floatfmt: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) or type(value).__name__.startswith("float"):
        v = float(value)
        return "nan" if math.isnan(v) else format(v, floatfmt)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Iterable[Mapping[str, Any]],
                   columns: Optional[Sequence[str]] = None,
                   floatfmt: str = ".4g") -> str:
    """Formats rows of results as a GitHub-flavoured Markdown table.

    Args:
        rows: One mapping per row.
        columns: Column order (default: keys in order of first appearance).
        floatfmt: Format spec for floats (``None`` values print as empty cells).

    Returns:
        The table, ending with a newline ("" for no rows).
    """
    rows = list(rows)
    if not rows:
        return ""
    if columns is None:
        seen: Dict[str, None] = {}
        for row in rows:
            for key in row:
                seen.setdefault(str(key), None)
        columns = list(seen)
    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(row.get(c), floatfmt) for c in columns) + " |"
            for row in rows]
    return "\n".join([header, rule, *body]) + "\n"


def epoch_orders(n: int, epochs: int, seed: int) -> List[Any]:
    """The sample order of every epoch: ``numpy.random.default_rng(seed)`` permutations.

    Both sides of a comparison (Keras 3 / tfquant and ``tf_keras`` / tfmot) train one
    ``fit(x[order], y[order], shuffle=False)`` per epoch with these orders, so they see the
    same batches in the same order.

    Args:
        n: Number of training samples.
        epochs: Number of epochs.
        seed: Seed of the generator.

    Returns:
        ``epochs`` integer arrays, each a permutation of ``range(n)``.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.permutation(n) for _ in range(epochs)]


def save_layer_weights(model: Any, path: Path) -> Path:
    """Writes every layer's weights (``layer.get_weights()`` order) to ``path`` (``.npz``).

    Keys are ``"<layer name>/<index>"``; Keras 3 and ``tf_keras`` list the weights of the
    layers used by ``tfquant/zoo.py`` in the same order (kernel, bias; gamma, beta, moving
    mean, moving variance), so :func:`load_layer_weights` restores them in either.
    """
    import numpy as np

    arrays = {f"{layer.name}/{i}": np.asarray(w)
              for layer in model.layers for i, w in enumerate(layer.get_weights())}
    path = Path(path)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_layer_weights(model: Any, path: Path) -> int:
    """Sets the weights saved by :func:`save_layer_weights` into ``model`` (by layer name).

    Raises:
        ValueError: A layer with weights is missing from the file, the file has a layer the
            model lacks, or a shape differs (the message names the layer); nothing is set then.

    Returns:
        The number of weight arrays set.
    """
    import numpy as np

    with np.load(path) as data:
        saved: Dict[str, Dict[int, Any]] = {}
        for key in data.files:
            name, _, index = key.rpartition("/")
            saved.setdefault(name, {})[int(index)] = data[key]
    plan = []
    for layer in model.layers:
        current = layer.get_weights()
        if not current:
            continue
        if layer.name not in saved:
            raise ValueError(f"{path}: no weights for layer {layer.name!r}")
        entry = saved.pop(layer.name)
        if sorted(entry) != list(range(len(current))):
            raise ValueError(f"{path}: layer {layer.name!r} has {len(entry)} saved weights, "
                             f"the model expects {len(current)}")
        arrays = [entry[i] for i in range(len(current))]
        for i, (a, b) in enumerate(zip(arrays, current)):
            if a.shape != b.shape:
                raise ValueError(f"{path}: layer {layer.name!r} weight {i} has shape {a.shape}, "
                                 f"the model expects {b.shape}")
        plan.append((layer, arrays))
    leftover = [name for name, w in saved.items() if w]
    if leftover:
        raise ValueError(f"{path}: weights for layers the model does not have: {leftover}")
    for layer, arrays in plan:
        layer.set_weights(arrays)
    return sum(len(a) for _, a in plan)


def tflite_predict(flatbuffer: bytes, x: np.ndarray) -> np.ndarray:
    """Runs a TFLite model (float or int8 input/output) on ``x`` in one batch; float scores."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=bytes(flatbuffer))
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], [len(x), *x.shape[1:]])
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    if inp["dtype"] == np.float32:
        feed = x.astype(np.float32)
    else:
        scale, zero = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        feed = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(inp["dtype"])
    interp.set_tensor(inp["index"], feed)
    interp.invoke()
    y = interp.get_tensor(out["index"])
    if out["dtype"] != np.float32:
        scale, zero = out["quantization"]
        y = (y.astype(np.float32) - zero) * scale
    return y
