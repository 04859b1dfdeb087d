"""tfquant.analysis.report: one self-contained HTML page."""

from __future__ import annotations

import base64
import dataclasses
import re

import keras

import tfquant
from tfquant.analysis import html_report, report

PNG = b"\x89PNG\r\n\x1a\n"
IMAGE = re.compile(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def assert_self_contained(page: str):
    # every src/href is an embedded image or an in-page anchor; no scripts or style sheets
    for attr, target in re.findall(r'\b(src|href)\s*=\s*"([^"]*)"', page):
        assert target.startswith(("data:image/png;base64,", "#")), (attr, target[:60])
    lowered = page.lower()
    for bad in ("<script", "<link", "<iframe", "<object", "@import", "url("):
        assert bad not in lowered, bad


def test_report_is_one_self_contained_page(weight_fragile, tmp_path):
    model, x, y = weight_fragile
    path = report(model, (x[:64], y[:64]), tmp_path / "r.html",
                  metric_fn=keras.metrics.SparseCategoricalAccuracy(), tflite=b"\0" * 16,
                  config="w8a8_per_tensor", eager=True)
    page = open(path, encoding="utf-8").read()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert_self_contained(page)
    for name in ("fc1", "fragile", "head", "x_quantizer"):
        assert f"<td>{name}</td>" in page and f"<h3>{name}</h3>" in page
    for section in ("Annotation", "Quantizers", "Sensitivity and SQNR", "Histograms",
                    "TFLite verification"):
        assert f">{section}</h2>" in page
    assert "fc1/weights/kernel" in page and "sparse_categorical_accuracy" in page
    # the real tfquant.verify ran on the 16 zero bytes and its failure is in the page
    assert "tfquant.verify failed:" in page
    images = IMAGE.findall(page)
    assert len(images) == 2 + 4  # sensitivity + SQNR charts, one histogram figure per layer
    for data in images:
        assert base64.b64decode(data).startswith(PNG)
    # the model passed in stays float
    assert not hasattr(model, "quantization_report")


@dataclasses.dataclass
class _Row:
    max_abs_diff_lsb: int
    bit_exact_fraction: float


@dataclasses.dataclass
class _FakeVerification:
    bit_exact_fraction: float = 0.875
    max_abs_diff_lsb: int = 1
    per_layer: dict = dataclasses.field(default_factory=lambda: {
        "fc1": _Row(0, 1.0), "head": _Row(1, 0.75)})


def test_report_verification_section_and_sqnr_only(weight_fragile, weight_qmodel, monkeypatch,
                                                   tmp_path):
    _, x, _ = weight_fragile
    calls = []

    def fake_verify(qmodel, tflite, data):
        calls.append((qmodel, tflite))
        return _FakeVerification()

    monkeypatch.setattr(html_report, "verify", fake_verify)
    tflite = tmp_path / "m.tflite"
    tflite.write_bytes(b"\0" * 32)
    flags = [q.enabled for g in html_report.layer_groups(weight_qmodel)
             for q in g.quantizers.values()]
    path = report(None, x[:32], tmp_path / "v.html", qmodel=weight_qmodel, tflite=tflite,
                  histograms=False, title="verify me")
    page = open(path, encoding="utf-8").read()
    assert_self_contained(page)
    assert calls == [(weight_qmodel, tflite)]
    assert "<title>verify me</title>" in page and "m.tflite</code>, 32 bytes" in page
    assert '<td>bit_exact_fraction</td><td class="num">0.875</td>' in page
    assert '<td>head</td><td class="num">1</td><td class="num">0.75</td>' in page
    assert ">SQNR</h2>" in page and "No metric_fn was given" in page
    assert len(IMAGE.findall(page)) == 1  # the SQNR chart
    assert [q.enabled for g in html_report.layer_groups(weight_qmodel)
            for q in g.quantizers.values()] == flags


def test_a_failing_section_is_reported_not_fatal(weight_qmodel, x_data, monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("interpreter exploded")

    monkeypatch.setattr(html_report, "verify", broken)
    path = report(None, x_data[:16], tmp_path / "f.html", qmodel=weight_qmodel,
                  tflite=b"abc", histograms=False)
    page = open(path, encoding="utf-8").read()
    assert "RuntimeError: interpreter exploded" in page and ">Quantizers</h2>" in page


def test_report_verifies_a_real_tflite_file(weight_fragile, tmp_path):
    """No stand-in: tfquant.verify runs on an exported file; the page shows its figures."""
    model, x, _ = weight_fragile
    assert html_report.verify is tfquant.verify
    qmodel = tfquant.quantize_model(model)
    tfquant.calibrate(qmodel, x, verbose=0)
    tflite = tmp_path / "m.tflite"
    tfquant.export.tflite(qmodel, tflite)
    path = report(None, x[:32], tmp_path / "real.html", qmodel=qmodel, tflite=tflite,
                  histograms=False)
    page = open(path, encoding="utf-8").read()
    assert_self_contained(page)
    assert "failed:" not in page
    expected = tfquant.verify(qmodel, tflite, x[:32])  # the same call, made here
    fraction = html_report._num(expected.bit_exact_fraction)
    assert f'<td>bit_exact_fraction</td><td class="num">{fraction}</td>' in page
    assert len(expected.per_layer) >= 3  # one row per TFLite op output: fc1, fragile, head
    for row in expected.per_layer:
        assert f"<td>{html_report._esc(row.tensor)}</td>" in page
