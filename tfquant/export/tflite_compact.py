"""Smaller TFLite files: identical quantization vectors stored once and shared.

The TFLite converter writes every tensor's ``QuantizationParameters`` with its own ``scale``
(float32) and ``zero_point`` (int64) vectors: 12 bytes per channel for a per-channel weight, and
again for its int32 bias. The zero points are all zeros, identical between a layer's weight and
bias and between all layers with the same channel count; many activations share their
per-tensor zero point. FlatBuffers lets several tables reference one vector (the verifier
accepts shared offsets), so :func:`compact_tflite` re-serializes the model with every distinct
``scale`` / ``zero_point`` / ``min`` / ``max`` vector written once. Nothing else changes: the
model is parsed with the schema's object API and packed again field by field, buffer data
16-byte aligned (the TF 2.21 converter's output is only 4-byte aligned: it is re-serialized by
the same object API, so this may add up to 15 bytes of padding per buffer).

Example:
    >>> small = compact_tflite(tfquant.export.tflite(qat, compact=False))
"""

from __future__ import annotations

from typing import Any, Callable

import flatbuffers
import numpy as np

try:  # the newest schema first (the same module the simulator reads with)
    from ai_edge_litert import schema_py_generated as schema
except ImportError:  # pragma: no cover - depends on the installation
    from tensorflow.lite.python import schema_py_generated as schema

# Buffer data starts on a 16-byte boundary (kernels may read it in place, e.g. int64 biases or
# SIMD loads); the generated BufferT.Pack aligns uint8 data only to its 4-byte length prefix.
BUFFER_ALIGNMENT = 16
FILE_IDENTIFIER = b"TFL3"

# Vectors of QuantizationParameters: (field of QuantizationParametersT, element type).
_QUANT_VECTORS = (("min", np.dtype("<f4")), ("max", np.dtype("<f4")),
                  ("scale", np.dtype("<f4")), ("zeroPoint", np.dtype("<i8")))


class _PackWith:
    """Stands in for a generated ``...T`` object: the parent's ``Pack`` calls ``pack``."""

    def __init__(self, pack: Callable[[flatbuffers.Builder], int]):
        self._pack = pack

    def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 - the generated name
        return self._pack(builder)


def compact_tflite(model: bytes | bytearray | memoryview) -> bytes:
    """Re-serializes a TFLite flatbuffer with identical quantization vectors shared.

    Every ``scale``, ``zero_point``, ``min`` and ``max`` vector of the tensors'
    quantization parameters is written once per distinct (field, type, bytes) and referenced
    by every tensor that holds it. Operator codes, subgraphs, tensors (with shape signatures,
    sparsity and variant tensors), buffers, metadata, signature definitions, description and
    version are kept as they are; buffer data is 16-byte aligned (up to 15 bytes of padding
    per buffer). A model that would not get smaller (nothing to share outweighs the padding),
    and models in the >2 GB layout (buffer data appended after the flatbuffer, addressed by
    offset), are returned unchanged.

    Args:
        model: the bytes of a ``.tflite`` model.

    Returns:
        The compacted flatbuffer bytes (file identifier ``TFL3``; never longer than the input);
        the interpreter runs them exactly as the input.

    Raises:
        TypeError: ``model`` is not bytes-like.
        ValueError: ``model`` is not a TFLite flatbuffer (wrong identifier, truncated, corrupt).

    Example:
        >>> data = open("model.tflite", "rb").read()
        >>> len(compact_tflite(data)) < len(data)   # a per-channel int8 model
        True
    """
    if not isinstance(model, (bytes, bytearray, memoryview)):
        raise TypeError(f"compact_tflite expects the flatbuffer bytes of a TFLite model, got "
                        f"{type(model).__name__}")
    data = bytes(model)
    parsed = _parse(data)
    if any(int(buffer.offset) > 1 for buffer in parsed.buffers or []):
        return data  # >2 GB layout: offsets point past the flatbuffer, keep the file as it is
    shared: dict[tuple[str, str, bytes], int] = {}
    for subgraph in parsed.subgraphs or []:
        for tensor in subgraph.tensors or []:
            if tensor.quantization is not None:
                tensor.quantization = _PackWith(
                    lambda builder, q=tensor.quantization: _pack_quantization(builder, q, shared))
    if parsed.buffers is not None:
        parsed.buffers = [_PackWith(lambda builder, b=buffer: _pack_buffer(builder, b))
                          for buffer in parsed.buffers]
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(parsed.Pack(builder), FILE_IDENTIFIER)
    compacted = bytes(builder.Output())
    return compacted if len(compacted) < len(data) else data  # alignment can outweigh sharing


def _parse(data: bytes) -> Any:
    """``ModelT`` of the bytes, or ValueError saying why they are not a TFLite model."""
    what = f"compact_tflite: the given {len(data)} bytes are not a valid TFLite model"
    if len(data) < 8:
        raise ValueError(f"{what}: too short for a flatbuffer")
    if data[4:8] != FILE_IDENTIFIER:
        raise ValueError(f"{what}: file identifier is {data[4:8]!r}, expected {FILE_IDENTIFIER!r}")
    try:
        parsed = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    except Exception as e:  # noqa: BLE001 - corrupt flatbuffers fail with many error types
        raise ValueError(f"{what}: corrupt or truncated flatbuffer "
                         f"({type(e).__name__}: {e})") from e
    if not parsed.subgraphs:
        raise ValueError(f"{what}: it has no subgraph")
    return parsed


def _pack_quantization(builder: flatbuffers.Builder, params: Any,
                       shared: dict[tuple[str, str, bytes], int]) -> int:
    """``QuantizationParametersT.Pack`` with its vectors looked up in / added to ``shared``."""
    vectors = {}
    for field, dtype in _QUANT_VECTORS:
        values = getattr(params, field)
        if values is None:
            continue
        array = np.ascontiguousarray(np.asarray(values, dtype=dtype).reshape(-1))
        key = (field, dtype.str, array.tobytes())
        if key not in shared:
            shared[key] = builder.CreateNumpyVector(array)
        vectors[field] = shared[key]
    details = params.details.Pack(builder) if params.details is not None else None
    schema.QuantizationParametersStart(builder)
    if "min" in vectors:
        schema.QuantizationParametersAddMin(builder, vectors["min"])
    if "max" in vectors:
        schema.QuantizationParametersAddMax(builder, vectors["max"])
    if "scale" in vectors:
        schema.QuantizationParametersAddScale(builder, vectors["scale"])
    if "zeroPoint" in vectors:
        schema.QuantizationParametersAddZeroPoint(builder, vectors["zeroPoint"])
    schema.QuantizationParametersAddDetailsType(builder, params.detailsType)
    if details is not None:
        schema.QuantizationParametersAddDetails(builder, details)
    schema.QuantizationParametersAddQuantizedDimension(builder, params.quantizedDimension)
    return schema.QuantizationParametersEnd(builder)


def _pack_buffer(builder: flatbuffers.Builder, buffer: Any) -> int:
    """``BufferT.Pack`` with the data's first byte on a 16-byte boundary of the file."""
    data = None
    if buffer.data is not None:
        payload = np.ascontiguousarray(np.asarray(buffer.data, dtype=np.uint8).reshape(-1))
        # Pad so that the data (written next, back to front) starts 16-byte aligned; the
        # vector's own 4-byte alignment then needs no further padding.
        builder.Prep(BUFFER_ALIGNMENT, payload.size)
        data = builder.CreateNumpyVector(payload)
    schema.BufferStart(builder)
    if data is not None:
        schema.BufferAddData(builder, data)
    schema.BufferAddOffset(builder, buffer.offset)
    schema.BufferAddSize(builder, buffer.size)
    return schema.BufferEnd(builder)
