"""``IntegerModel``: runs the simulator IR as one XLA-compiled TensorFlow function (or eagerly).

Example:
    >>> sim = IntegerModel.from_tflite("model.tflite")               # doctest: +SKIP
    >>> y = sim(x_int8)                                              # doctest: +SKIP
    >>> eager = IntegerModel.from_tflite("model.tflite", jit_compile=False)  # doctest: +SKIP
    >>> y4 = eager(x_int8[:4])                       # no XLA compile   # doctest: +SKIP
    >>> every = sim.run(x_int8, return_all=True, key="name")         # doctest: +SKIP
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from tfquant.simulate.graph import Graph, TensorInfo
from tfquant.simulate.kernels import KERNELS
from tfquant.simulate.tflite_reader import read_tflite

FC_REQUANTIZE_AUTO = "auto"
#: Target number of elements of the largest activation of one compiled call (see ``chunk_size``).
CHUNK_ELEMENTS = 1 << 22
#: Chunks run at once (``concurrent_calls``): XLA's CPU code keeps both cores of a small machine
#: busy only in its matrix products; a second call in flight fills the element-wise stretches.
CONCURRENT_CALLS = 2


def installed_fc_requantize() -> str:
    """How the installed interpreter's reference FullyConnected requantises int8 outputs.

    The reference kernel of LiteRT (ai-edge-litert 2.3) and of TensorFlow 2.21's
    ``tf.lite.Interpreter`` computes ``round(acc * (double(s_in) * s_w / s_out))`` in double
    ("double"); older TFLite releases, and the optimized kernels, use the fixed-point multiplier
    like Conv ("fixed_point"). Both were checked against the installed interpreter; they differ
    by one LSB on some outputs.
    """
    return "double"


class IntegerModel:
    """An int8 model run with integer arithmetic (bit-exact with TFLite's reference kernels).

    Build it with :meth:`from_tflite` (or from a :class:`~tfquant.simulate.graph.Graph`); call it
    like a function. The whole graph runs inside ``tf.function(jit_compile=True)``; a batch of any
    size can be given (the model's batch dimension is resized).

    With ``jit_compile=False`` the same kernels run eagerly, TF op by TF op, on TensorFlow's own
    CPU kernels: the same integer arithmetic (every float computation of the kernels is exact by
    construction, so the executor cannot change a result), without tracing or XLA compilation,
    which take a minute for a graph of a few hundred layers. It suits one small batch (a check
    of a large model); XLA is much faster from the second call on and for large batches.

    Args:
        graph: the integer IR (see :mod:`tfquant.simulate.graph`).
        chunk_size: samples per compiled call; larger batches are cut into chunks of this size
            (padded, so one compiled shape serves every chunk). Default: from the activation
            sizes, see :data:`CHUNK_ELEMENTS`.
        jit_compile: True: one XLA-compiled function (compiled on the first call); False: eager
            execution, nothing compiled.
        concurrent_calls: chunks computed at the same time, from that many threads (1: one
            after the other). The results do not depend on it.

    Example:
        >>> sim = IntegerModel.from_tflite(tflite_bytes)        # doctest: +SKIP
        >>> logits = sim(np.zeros((256, 28, 28, 1), np.int8))   # doctest: +SKIP
    """

    def __init__(self, graph: Graph, chunk_size: int | None = None, jit_compile: bool = True,
                 concurrent_calls: int = CONCURRENT_CALLS):
        graph.validate()
        if int(concurrent_calls) < 1:
            raise ValueError(f"concurrent_calls must be >= 1, got {concurrent_calls}")
        self.graph = graph
        self.chunk_size = chunk_size or self._default_chunk_size()
        self.jit_compile = bool(jit_compile)
        self.concurrent_calls = int(concurrent_calls)
        if self.jit_compile:
            self._fn = tf.function(self._forward_outputs, jit_compile=True, autograph=False)
            self._fn_all = tf.function(self._forward_all, jit_compile=True, autograph=False)
        else:
            self._fn, self._fn_all = self._forward_outputs, self._forward_all

    def _default_chunk_size(self) -> int:
        """Largest power of two (<= 256) keeping one call's biggest activation near 2^22 values.

        Large batches run as several XLA calls of this many samples, so that the intermediates
        of one call stay small (measured on the MobileNetV2-style benchmark, 2 cores: 64 images
        of 32x32x64 activations per call beat 16 and 128).
        """
        largest = max((int(np.prod(self.graph.tensors[i].shape[1:], dtype=np.int64))
                       for i in self.graph.activation_ids()), default=1)
        chunk = 1
        while chunk < 256 and (chunk * 2) * largest <= CHUNK_ELEMENTS:
            chunk *= 2
        return chunk

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_tflite(cls, model: str | os.PathLike | bytes,
                    fc_requantize: str = FC_REQUANTIZE_AUTO,
                    chunk_size: int | None = None,
                    jit_compile: bool = True,
                    concurrent_calls: int = CONCURRENT_CALLS) -> "IntegerModel":
        """Parses a ``.tflite`` flatbuffer (path or bytes).

        Args:
            model: path or flatbuffer bytes of an int8 model (int8 or float32 I/O).
            fc_requantize: ``"auto"`` (what the installed LiteRT reference kernel does),
                ``"double"`` or ``"fixed_point"``.
            chunk_size: samples per compiled call (default: chosen from the activation sizes).
            jit_compile: False runs the kernels eagerly instead of compiling them with XLA
                (cheaper for one small batch of a large model; the same results).
            concurrent_calls: chunks computed at the same time (see the class).

        Raises:
            ValueError: the bytes are not a valid TFLite flatbuffer.
            tfquant.simulate.UnsupportedModelError: listing all unsupported ops.

        Example:
            >>> sim = IntegerModel.from_tflite("m.tflite")   # doctest: +SKIP
        """
        if fc_requantize == FC_REQUANTIZE_AUTO:
            fc_requantize = installed_fc_requantize()
        return cls(read_tflite(model, fc_requantize=fc_requantize), chunk_size=chunk_size,
                   jit_compile=jit_compile, concurrent_calls=concurrent_calls)

    @classmethod
    def from_keras(cls, qmodel: Any, input_type: str = "float32", output_type: str | None = None,
                   fc_requantize: str = FC_REQUANTIZE_AUTO,
                   chunk_size: int | None = None,
                   jit_compile: bool = True,
                   concurrent_calls: int = CONCURRENT_CALLS) -> "IntegerModel":
        """Builds the simulator straight from a quantized tfquant Keras model (no TFLite).

        Integer weights, biases, multipliers, zero points and clamps come from the model's
        ``QuantParams`` (see :mod:`tfquant.simulate.from_keras`); the graph is the one TFLite
        runs for ``tfquant.export.tflite(qmodel, input_type=..., output_type=...)``.

        Args:
            qmodel: a functional model from :func:`tfquant.quantize_model` (trained or
                calibrated).
            input_type: ``"float32"`` (inputs quantized by a QUANTIZE op) or ``"int8"``.
            output_type: ``"float32"`` (dequantized) or ``"int8"``; default: ``input_type``.
            fc_requantize: as for :meth:`from_tflite`.
            chunk_size: samples per compiled call.
            jit_compile: as for :meth:`from_tflite`.
            concurrent_calls: as for :meth:`from_tflite`.

        Raises:
            tfquant.simulate.from_keras.UnsupportedLayerError: listing every layer that cannot
                be simulated.

        Example:
            >>> sim = IntegerModel.from_keras(qat)          # doctest: +SKIP
            >>> probabilities = sim(x_test)                 # doctest: +SKIP
        """
        from tfquant.simulate.from_keras import keras_to_graph

        if fc_requantize == FC_REQUANTIZE_AUTO:
            fc_requantize = installed_fc_requantize()
        return cls(keras_to_graph(qmodel, input_type, output_type, fc_requantize),
                   chunk_size=chunk_size, jit_compile=jit_compile,
                   concurrent_calls=concurrent_calls)

    # -- introspection -------------------------------------------------------------------------
    @property
    def inputs(self) -> list[TensorInfo]:
        """The graph's input tensors (dtype, shape, scale, zero point), in the order calls take
        them: the flatbuffer's order for :meth:`from_tflite` (which, like the TFLite interpreter's
        ``get_input_details()``, can differ from the Keras model's: pass a dict keyed by
        :attr:`input_names` to be safe), the Keras order for :meth:`from_keras`."""
        return [self.graph.tensors[i] for i in self.graph.inputs]

    @property
    def input_names(self) -> list[str]:
        """Names a dict of inputs may use, in the order calls take the inputs: the serving
        signature's (a Keras export's input names) or, without one, the tensor names."""
        by_index = {index: name for name, index in self.graph.input_names.items()}
        return [by_index.get(i, self.graph.tensors[i].name) for i in self.graph.inputs]

    def _positional(self, xs: Sequence[Any]) -> Sequence[Any]:
        """``xs``, or the values of a single dict argument in input order (by
        :attr:`input_names` or tensor name)."""
        if len(xs) != 1 or not isinstance(xs[0], Mapping):
            return xs
        given = dict(xs[0])
        ordered = []
        for index, name in zip(self.graph.inputs, self.input_names):
            tensor_name = self.graph.tensors[index].name
            key = name if name in given else tensor_name if tensor_name in given else None
            if key is None:
                raise ValueError(f"no value for input {name!r}; inputs: {self.input_names}")
            ordered.append(given.pop(key))
        if given:
            raise ValueError(f"unknown input name(s) {sorted(given)}; inputs: "
                             f"{self.input_names}")
        return ordered

    @property
    def outputs(self) -> list[TensorInfo]:
        """The graph's output tensors."""
        return [self.graph.tensors[i] for i in self.graph.outputs]

    @property
    def tensor_names(self) -> dict[int, str]:
        """Tensor id -> name for every tensor computed at run time."""
        return {i: self.graph.tensors[i].name for i in self.graph.activation_ids()}

    def tensor_index(self, name: str) -> int:
        """The id of the run-time tensor called ``name``.

        Raises:
            KeyError: when no tensor (or more than one) has that name.
        """
        hits = [i for i, n in self.tensor_names.items() if n == name]
        if len(hits) != 1:
            raise KeyError(f"{len(hits)} tensors are named {name!r}")
        return hits[0]

    # -- execution -----------------------------------------------------------------------------
    def _forward(self, xs: Sequence[tf.Tensor]) -> dict[int, tf.Tensor]:
        env: dict[int, tf.Tensor] = {}
        for index, value in self.graph.constants.items():
            env[index] = tf.constant(value)
        for index, x in zip(self.graph.inputs, xs):
            env[index] = x
        for op in self.graph.ops:
            results = KERNELS[op.type](op, [env[i] for i in op.inputs])
            for index, value in zip(op.outputs, results):
                env[index] = value
        return env

    def _forward_outputs(self, *xs: tf.Tensor) -> list[tf.Tensor]:
        env = self._forward(xs)
        return [env[i] for i in self.graph.outputs]

    def _forward_all(self, *xs: tf.Tensor) -> dict[str, tf.Tensor]:
        env = self._forward(xs)
        return {str(i): env[i] for i in self.graph.activation_ids()}

    def _prepare(self, xs: Sequence[Any]) -> list[tf.Tensor]:
        if len(xs) != len(self.graph.inputs):
            raise ValueError(f"the model takes {len(self.graph.inputs)} inputs, got {len(xs)}")
        prepared = []
        for x, info in zip(xs, self.inputs):
            arr = np.asarray(x)
            if info.dtype in ("int8", "uint8"):
                limits = np.iinfo(info.dtype)
                if arr.dtype != np.dtype(info.dtype):
                    if not np.issubdtype(arr.dtype, np.integer):
                        raise TypeError(f"input {info.name!r} is {info.dtype}: give "
                                        f"{info.dtype} (quantized) values, got {arr.dtype}")
                    if arr.size and (arr.min() < limits.min or arr.max() > limits.max):
                        raise ValueError(f"input {info.name!r} values outside the "
                                         f"{info.dtype} range")
                    arr = arr.astype(info.dtype)
            else:
                arr = arr.astype(info.dtype)
            expected = tuple(info.shape[1:])
            if arr.ndim == len(info.shape) - 1 and tuple(arr.shape) == expected:
                arr = arr[None]
            if arr.ndim != len(info.shape) or tuple(arr.shape[1:]) != expected:
                raise ValueError(f"input {info.name!r} must have shape (batch, *{expected}), "
                                 f"got {arr.shape}")
            prepared.append(tf.convert_to_tensor(arr))
        return prepared

    def _chunks(self, prepared: list[tf.Tensor]):
        """Yields ``(inputs, valid)`` per call: batches are cut into padded chunks of one size."""
        batch = int(prepared[0].shape[0])
        size = self.chunk_size
        if batch <= size:
            yield prepared, batch
            return
        for start in range(0, batch, size):
            valid = min(size, batch - start)
            parts = []
            for x in prepared:
                part = x[start:start + valid]
                if valid < size:   # pad so that every call reuses the same compiled shape
                    part = tf.concat([part, tf.zeros((size - valid, *part.shape[1:]), x.dtype)],
                                     axis=0)
                parts.append(part)
            yield parts, valid

    def _map_chunks(self, fn: Callable[[list, int], Any], chunks: Iterable) -> list:
        """``[fn(parts, valid) for each chunk]``, with up to ``concurrent_calls`` in flight."""
        chunks = list(chunks)
        if self.concurrent_calls == 1 or len(chunks) == 1:
            return [fn(parts, valid) for parts, valid in chunks]
        with ThreadPoolExecutor(min(self.concurrent_calls, len(chunks))) as pool:
            return list(pool.map(lambda chunk: fn(*chunk), chunks))

    def __call__(self, *xs: Any) -> np.ndarray | list[np.ndarray]:
        """Runs the model on a batch; returns the output array (a list for several outputs).

        Args:
            *xs: one array per model input, shaped ``(batch, ...)``, in the order of
                :attr:`inputs`, or one dict keyed by :attr:`input_names` (the safe way for a
                multi-input ``.tflite``, whose order can differ from the Keras model's): int8
                values for int8 inputs, float values for float inputs (the model's QUANTIZE op
                then runs).
        """
        pieces = self._map_chunks(lambda parts, valid: [y.numpy()[:valid]
                                                        for y in self._fn(*parts)],
                                  self._chunks(self._prepare(self._positional(xs))))
        outputs = [np.concatenate(p) for p in zip(*pieces)]
        return outputs[0] if len(outputs) == 1 else outputs

    def run(self, *xs: Any, return_all: bool = False,
            key: str = "index") -> dict[Any, np.ndarray]:
        """Runs the model and returns tensors by TFLite index or name.

        Args:
            *xs: the inputs, as for ``__call__``.
            return_all: also return every intermediate tensor (graph inputs and op outputs).
            key: ``"index"`` (tensor ids) or ``"name"`` (tensor names; an unnamed or repeated name
                falls back to ``"#<index>"``).

        Returns:
            A dict mapping tensor index (or name) to a numpy array.

        Example:
            >>> acts = sim.run(x, return_all=True, key="name")   # doctest: +SKIP
        """
        if key not in ("index", "name"):
            raise ValueError(f"key must be 'index' or 'name', got {key!r}")

        def one_chunk(parts, valid) -> dict[int, np.ndarray]:
            if return_all:
                values = {int(k): v for k, v in self._fn_all(*parts).items()}
            else:
                values = dict(zip(self.graph.outputs, self._fn(*parts)))
            return {index: _valid_rows(value.numpy(), int(parts[0].shape[0]), valid)
                    for index, value in values.items()}

        pieces: dict[int, list[np.ndarray]] = {}
        chunks = self._chunks(self._prepare(self._positional(xs)))
        for values in self._map_chunks(one_chunk, chunks):
            for index, value in values.items():
                pieces.setdefault(index, []).append(value)
        values = {index: np.concatenate(p) for index, p in pieces.items()}
        if key == "index":
            return values
        names = [self.graph.tensors[i].name for i in values]
        return {(self.graph.tensors[i].name if self.graph.tensors[i].name
                 and names.count(self.graph.tensors[i].name) == 1 else f"#{i}"): v
                for i, v in values.items()}


def _valid_rows(value: np.ndarray, chunk: int, valid: int) -> np.ndarray:
    """The rows of ``value`` that belong to the first ``valid`` samples of a chunk of ``chunk``
    (an intermediate of a Dense on sequences has ``steps`` rows per sample: ``[batch * steps,
    channels]``)."""
    if value.ndim == 0 or value.shape[0] == chunk or value.shape[0] % chunk:
        return value[:valid] if value.ndim and value.shape[0] == chunk else value
    return value[:valid * (value.shape[0] // chunk)]
