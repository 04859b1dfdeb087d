"""quiet_retracing drops exactly TF's retracing warning; reset_compiled_functions forces a re-trace."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfquant._retracing import quiet_retracing, reset_compiled_functions


@pytest.fixture
def tf_records():
    """Messages logged on TensorFlow's logger during the test."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(level=logging.DEBUG)
    logger = tf.get_logger()
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


def _retrace_often(fn) -> None:
    # A Python scalar argument is part of the trace key: each new value traces anew, and TF
    # warns once five of the last calls to the same code traced.
    step = tf.function(fn, autograph=False)
    for k in range(8):
        step(tf.constant(1.0), float(k))


def _add_outside(x, k):
    return x + k


def _add_inside(x, k):  # distinct code object: TF counts retracing per code object
    return x + k


def test_quiet_retracing_drops_only_the_retracing_warning(tf_records):
    _retrace_often(_add_outside)
    assert any("triggered tf.function retracing" in m for m in tf_records)  # TF does warn

    tf_records.clear()
    with quiet_retracing():
        _retrace_often(_add_inside)
        tf.get_logger().warning("another TensorFlow warning")
    assert tf_records == ["another TensorFlow warning"]
    assert not tf.get_logger().filters  # the filter is removed on exit


def test_reset_compiled_functions_forces_a_new_trace():
    inp = keras.Input((2,))
    model = keras.Model(inp, keras.layers.Dense(1)(inp))
    x = np.ones((4, 2), np.float32)
    model.predict(x, verbose=0)
    assert model.predict_function is not None
    reset_compiled_functions(model)
    assert model.predict_function is None
    model.predict(x, verbose=0)
    assert model.predict_function is not None
