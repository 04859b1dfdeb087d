"""TFLite flatbuffer -> simulator IR (:class:`tfquant.simulate.graph.Graph`).

The flatbuffer is parsed with the schema module that ships with LiteRT (``ai_edge_litert``) or
TensorFlow, and every op of the main subgraph is turned into an IR op by its handler in
:mod:`tfquant.simulate.tflite_ops` (integer parameters from :mod:`tfquant.simulate.builders`).
Scales and zero points are read from the file, never re-derived. Damaged, missing or float files
give errors that name the file and the problem.

Example:
    >>> graph = read_tflite("model.tflite")          # doctest: +SKIP
    >>> [op.type for op in graph.ops][:2]            # doctest: +SKIP
    ['CONV_2D', 'DEPTHWISE_CONV_2D']
"""

from __future__ import annotations

import os
import struct
from typing import Any

import numpy as np

from tfquant.simulate import builders as B
from tfquant.simulate.graph import Graph, TensorInfo
from tfquant.simulate.tflite_ops import HANDLERS, _Unsupported

try:  # the newest schema first
    from ai_edge_litert import schema_py_generated as schema
except ImportError:  # pragma: no cover - depends on the installation
    from tensorflow.lite.python import schema_py_generated as schema

_TYPE_NAMES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_ACTIVATIONS = {v: k for k, v in vars(schema.ActivationFunctionType).items()
                if not k.startswith("_")}
_NUMPY_TYPES = {"FLOAT32": np.float32, "INT32": np.int32, "INT8": np.int8, "UINT8": np.uint8,
                "INT64": np.int64, "INT16": np.int16, "FLOAT16": np.float16, "BOOL": np.bool_,
                "FLOAT64": np.float64}


_CORRUPTION_ERRORS = (IndexError, struct.error, TypeError, AttributeError, OverflowError, KeyError,
                      UnicodeDecodeError, MemoryError, ZeroDivisionError, RecursionError)


class UnsupportedModelError(NotImplementedError):
    """The model uses ops (or op/type combinations) the simulator does not implement."""


def describe_source(model: Any) -> str:
    """How errors name a model given as a path or as bytes."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return f"TFLite model ({len(model)} bytes given in memory)"
    return f"TFLite file {os.fspath(model)!r}"


def load_tflite_bytes(model: str | os.PathLike | bytes | bytearray | memoryview) -> bytes:
    """The flatbuffer bytes of a path or bytes, checked to hold a parseable TFLite model.

    Raises:
        FileNotFoundError: the path does not exist (or is a directory).
        ValueError: the file is empty, not a TFLite flatbuffer, or truncated/corrupt; the message
            names the file and the problem.

    Example:
        >>> data = load_tflite_bytes("model.tflite")    # doctest: +SKIP
    """
    label = describe_source(model)
    if isinstance(model, (bytes, bytearray, memoryview)):
        buf = bytes(model)
    elif not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"expected a .tflite path or flatbuffer bytes, got {type(model).__name__}")
    else:
        path = os.fspath(model)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{label} does not exist")
        if os.path.isdir(path):
            raise FileNotFoundError(f"{label} is a directory, not a .tflite file")
        with open(path, "rb") as f:
            buf = f.read()
    if not buf:
        raise ValueError(f"{label} is empty (0 bytes)")
    try:
        parse_model(buf)
    except ValueError as e:
        raise ValueError(f"{label}: {e}") from None
    return buf


def parse_model(buf: bytes) -> Any:
    """Parses flatbuffer bytes into the schema's object API (``ModelT``).

    Raises:
        ValueError: when the bytes are not a TFLite model or are truncated/corrupt.
    """
    if len(buf) < 8:
        raise ValueError(f"not a TFLite model: only {len(buf)} bytes")
    if buf[4:8] != b"TFL3":
        raise ValueError(f"not a TFLite flatbuffer: file identifier is {bytes(buf[4:8])!r}, "
                         "expected b'TFL3'")
    try:
        root = schema.Model.GetRootAs(buf, 0)
        model = schema.ModelT.InitFromObj(root)
        if not model.subgraphs:
            raise ValueError("the model has no subgraph")
        _ = [t.name for t in model.subgraphs[0].tensors or []]
    except ValueError as e:
        raise ValueError(f"corrupt or truncated TFLite flatbuffer ({len(buf)} bytes): {e}") from e
    except _CORRUPTION_ERRORS as e:
        raise ValueError(f"corrupt or truncated TFLite flatbuffer ({len(buf)} bytes): "
                         f"{type(e).__name__}: {e}") from e
    return model


#: The input slot that holds an op's target shape (computed by int32 ops under a dynamic batch).
_SHAPE_OPERAND = {"RESHAPE": 1, "TRANSPOSE_CONV": 0}


class _Reader:
    def __init__(self, buf: bytes, fc_requantize: str):
        self.buf = buf
        self.fc_requantize = fc_requantize
        self.model = parse_model(buf)
        self.subgraph = self.model.subgraphs[0]
        self.tensors = self.subgraph.tensors or []
        self.graph = Graph()

    # -- tensors -------------------------------------------------------------------------------
    def type_name(self, index: int) -> str:
        return _TYPE_NAMES.get(self.tensors[index].type, f"type{self.tensors[index].type}")

    def dtype(self, index: int) -> str:
        name = self.type_name(index)
        if name not in _NUMPY_TYPES:
            raise _Unsupported(f"tensor type {name}")
        return np.dtype(_NUMPY_TYPES[name]).name

    def shape(self, index: int) -> tuple[int, ...]:
        shape = self.tensors[index].shape
        return tuple(int(d) for d in (shape if shape is not None else []))

    def signature(self, index: int) -> tuple[int, ...]:
        sig = self.tensors[index].shapeSignature
        return tuple(int(d) for d in sig) if sig is not None and len(sig) else self.shape(index)

    def name(self, index: int) -> str:
        name = self.tensors[index].name
        if isinstance(name, bytes):
            name = name.decode("utf-8", errors="replace")
        return name or ""

    def qparams(self, index: int) -> tuple[Any, Any, int]:
        q = self.tensors[index].quantization
        if q is None or q.scale is None or len(q.scale) == 0:
            return None, None, 0
        scale = np.asarray(q.scale, np.float32)
        zp = np.asarray(q.zeroPoint if q.zeroPoint is not None else np.zeros_like(scale), np.int64)
        if scale.size == 1:
            return np.float32(scale[0]), int(zp.reshape(-1)[0]), 0
        return scale, zp, int(q.quantizedDimension)

    def scale_zp(self, index: int) -> tuple[np.float32, int]:
        scale, zp, _ = self.qparams(index)
        if scale is None:
            raise _Unsupported(f"tensor {self.name(index)!r} is not quantized")
        if np.ndim(scale):
            raise _Unsupported(f"activation {self.name(index)!r} has per-channel parameters")
        return scale, zp

    def constant(self, index: int) -> np.ndarray | None:
        if index < 0:
            return None
        tensor = self.tensors[index]
        buffers = self.model.buffers or []
        if tensor.buffer <= 0 or tensor.buffer >= len(buffers):
            return None
        buffer = buffers[tensor.buffer]
        if buffer.data is not None and len(buffer.data):
            raw = np.asarray(buffer.data, np.uint8).tobytes()
        elif buffer.offset > 1 and buffer.size:
            raw = self.buf[buffer.offset:buffer.offset + buffer.size]
        else:
            return None
        dtype = np.dtype(_NUMPY_TYPES.get(self.type_name(index), np.uint8))
        shape = self.shape(index)
        try:
            return np.frombuffer(raw, dtype).reshape(shape).copy()
        except ValueError as e:
            raise ValueError(f"corrupt TFLite flatbuffer: buffer of tensor {index} "
                             f"({len(raw)} bytes) does not match shape {shape} {dtype}") from e

    def need_constant(self, index: int, what: str) -> np.ndarray:
        value = self.constant(index)
        if value is None:
            raise _Unsupported(f"{what} must be a constant tensor")
        return value

    def add_activation(self, index: int) -> None:
        if index in self.graph.tensors:
            return
        scale, zp, axis = self.qparams(index)
        self.graph.add_tensor(TensorInfo(index, self.name(index), self.dtype(index),
                                         self.shape(index), scale, zp, axis))

    def operand(self, index: int) -> int:
        """Registers an op input (activation or constant operand) and returns its id."""
        value = self.constant(index)
        if value is not None:
            self.graph.constants[index] = value
            scale, zp, axis = self.qparams(index)
            self.graph.add_tensor(TensorInfo(index, self.name(index), self.dtype(index),
                                             self.shape(index), scale, zp, axis))
        else:
            self.add_activation(index)
        return index

    def expect(self, index: int, *dtypes: str) -> None:
        dtype = self.dtype(index)
        if dtype not in dtypes:
            raise _Unsupported(f"{dtype} tensors (only {'/'.join(dtypes)} are simulated)")

    # -- reading -------------------------------------------------------------------------------
    def op_name(self, position: int, op: Any) -> str:
        codes = self.model.operatorCodes or []
        if op.opcodeIndex >= len(codes):
            raise ValueError(f"corrupt TFLite flatbuffer: operator {position} uses opcode "
                             f"{op.opcodeIndex} of {len(codes)}")
        code = codes[op.opcodeIndex]
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        name = _OP_NAMES.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            custom = code.customCode
            name = f"CUSTOM({custom.decode() if isinstance(custom, bytes) else custom})"
        return name

    def check_integer_model(self, names: list[str]) -> None:
        """Raises when no op computes on int8 activations (a float or dynamic-range model)."""
        for op in self.subgraph.operators or []:
            for t in op.outputs if op.outputs is not None else []:
                if 0 <= int(t) < len(self.tensors) and self.type_name(int(t)) == "INT8":
                    return
        described = []
        for name, op in zip(names, self.subgraph.operators or []):
            outs = [int(t) for t in (op.outputs if op.outputs is not None else [])
                    if 0 <= int(t) < len(self.tensors)]
            kinds = "/".join(dict.fromkeys(self.type_name(t).lower() for t in outs))
            described.append(f"{name} ({kinds or 'no'} outputs)")
        ops = ", ".join(dict.fromkeys(described)) or "no ops"
        raise UnsupportedModelError(
            "not a full-integer int8 model: no op produces int8 activations (ops: "
            f"{ops}). The integer simulator runs int8 models; export one with "
            "tfquant.export.tflite(qmodel, mode='int8') from a quantized model.")

    def shape_only_ops(self, names: list[str]) -> set[int]:
        """Positions of ops that only compute the shape operand of RESHAPE or TRANSPOSE_CONV.

        A Flatten/Reshape or a Conv2DTranspose with a dynamic batch is converted to SHAPE ->
        STRIDED_SLICE -> PACK -> RESHAPE (TRANSPOSE_CONV's ``output_shape``). The simulator
        takes the target from the op's static output shape (batch free), so this int32 shape
        arithmetic is not needed and is left out.
        """
        operators = list(self.subgraph.operators or [])
        uses: dict[int, list[tuple[int, int]]] = {}
        for position, op in enumerate(operators):
            for slot, t in enumerate(op.inputs if op.inputs is not None else []):
                uses.setdefault(int(t), []).append((position, slot))
        graph_outputs = {int(t) for t in (self.subgraph.outputs if self.subgraph.outputs
                                          is not None else [])}
        skipped: set[int] = set()
        for position in range(len(operators) - 1, -1, -1):
            outputs = [int(t) for t in (operators[position].outputs
                                        if operators[position].outputs is not None else [])]
            if not outputs or any(t in graph_outputs or t < 0 or t >= len(self.tensors)
                                  or self.type_name(t) not in ("INT32", "INT64")
                                  for t in outputs):
                continue
            if all(uses.get(t) and all(_SHAPE_OPERAND.get(names[p]) == slot or p in skipped
                                       for p, slot in uses[t]) for t in outputs):
                skipped.add(position)
        return skipped

    def read(self) -> Graph:
        problems: list[str] = []
        pending = []
        names = [self.op_name(p, op) for p, op in enumerate(self.subgraph.operators or [])]
        self.check_integer_model(names)
        skipped = self.shape_only_ops(names)
        for position, op in enumerate(self.subgraph.operators or []):
            if position in skipped:
                continue
            name = names[position]
            handler = HANDLERS.get(name)
            if handler is None:
                problems.append(name)
                continue
            pending.append((position, name, op, handler))
        for position, name, op, handler in pending:
            inputs = [int(i) for i in (op.inputs if op.inputs is not None else [])]
            outputs = [int(i) for i in (op.outputs if op.outputs is not None else [])]
            for i in inputs + outputs:
                if i >= len(self.tensors) or i < -1:
                    raise ValueError(f"corrupt TFLite flatbuffer: operator {position} uses "
                                     f"tensor {i} of {len(self.tensors)}")
            if not outputs:
                raise ValueError(f"corrupt TFLite flatbuffer: operator {position} has no output")
            try:
                ir_op = handler(self, name, op, inputs, outputs)
                for o in outputs:
                    self.add_activation(o)
            except _Unsupported as e:
                problems.append(f"{name} ({e})")
                continue
            ir_op.name = self.name(outputs[0])
            self.graph.ops.append(ir_op)
        self.graph.inputs = [int(i) for i in self.subgraph.inputs]
        self.graph.outputs = [int(i) for i in self.subgraph.outputs]
        self.graph.input_names = self.signature_input_names()
        for i in self.graph.inputs:
            try:
                self.add_activation(i)
            except _Unsupported as e:
                problems.append(f"model input {self.name(i)!r} ({e})")
        if problems:
            unique = list(dict.fromkeys(problems))
            raise UnsupportedModelError(
                "the integer simulator does not support these ops of the model: "
                + ", ".join(unique))
        self.graph.validate()
        return self.graph

    def signature_input_names(self) -> dict[str, int]:
        """The serving signature's input names -> tensor ids (empty without one signature of
        the first subgraph; a Keras export names them after the Keras inputs)."""
        signatures = [d for d in (self.model.signatureDefs or [])
                      if int(getattr(d, "subgraphIndex", 0) or 0) == 0]
        if len(signatures) != 1:
            return {}
        names = {}
        for item in signatures[0].inputs or []:
            name = item.name.decode() if isinstance(item.name, bytes) else str(item.name)
            names[name] = int(item.tensorIndex)
        return names if sorted(names.values()) == sorted(self.graph.inputs) else {}

    def activation(self, options: Any) -> str:
        code = getattr(options, "fusedActivationFunction", 0) if options is not None else 0
        name = _ACTIVATIONS.get(code, str(code))
        if name not in B.ACTIVATIONS:
            raise _Unsupported(f"fused activation {name}")
        return name

    def batched_shape(self, index: int) -> list[int]:
        """Static shape of an op output with -1 at the batch position (for reshapes)."""
        sig = list(self.signature(index))
        if sig.count(-1) == 1:
            return sig
        shape = list(self.shape(index))
        if shape and shape[0] == 1:
            shape[0] = -1
        return shape


def read_tflite(model: str | os.PathLike | bytes, fc_requantize: str = "double") -> Graph:
    """Reads a .tflite model (path or bytes) into the simulator IR.

    Args:
        model: a path to a ``.tflite`` file or the flatbuffer bytes.
        fc_requantize: how FULLY_CONNECTED requantises: ``"double"`` (the reference kernel of
            LiteRT 2.x and TF 2.21) or ``"fixed_point"`` (older TFLite, the optimized kernels).

    Returns:
        The :class:`~tfquant.simulate.graph.Graph`.

    Raises:
        ValueError: the bytes are not a (valid) TFLite flatbuffer.
        UnsupportedModelError: listing every op the simulator cannot run.
    """
    if fc_requantize not in ("double", "fixed_point"):
        raise ValueError(f"fc_requantize must be 'double' or 'fixed_point', got {fc_requantize!r}")
    buf = load_tflite_bytes(model)
    label = describe_source(model)
    try:
        return _Reader(buf, fc_requantize).read()
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"{label}: {e}") from None
    except ValueError as e:
        raise ValueError(f"{label}: {e}") from None
    except _CORRUPTION_ERRORS as e:     # a parseable but inconsistent flatbuffer
        raise ValueError(f"{label}: corrupt or invalid TFLite model ({len(buf)} bytes): "
                         f"{type(e).__name__}: {e}") from None
