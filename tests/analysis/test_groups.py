"""tfquant.analysis.groups: enabled_only switches quantizers and restores flags and functions."""

from __future__ import annotations

import pytest

from tfquant.analysis.groups import all_model_quantizers, enabled_only


def test_enabled_only_restores_flags_and_cached_functions(weight_qmodel, x_data):
    quantizers = all_model_quantizers(weight_qmodel)
    weight_qmodel.predict(x_data[:4], verbose=0)
    assert weight_qmodel.predict_function is not None
    with pytest.raises(RuntimeError):
        with enabled_only(weight_qmodel, quantizers[:1]):
            assert [q.enabled for q in quantizers] == [True] + [False] * (len(quantizers) - 1)
            assert weight_qmodel.predict_function is None
            raise RuntimeError("boom")
    assert all(q.enabled for q in quantizers)
    assert weight_qmodel.predict_function is None  # re-traced with the restored flags
