"""The onnx section of `dsa bench` at a toy size: both paths measured on the same contexts, rendered."""
from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime", reason="the onnx extra (pip install -e '.[onnx]') is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra (pip install -e '.[onnx]') is not installed")


def test_section_measures_both_paths_and_renders():
    from dsa.bench import onnx_runtime

    section = onnx_runtime.run([24, 40], chunk=16, decodes=2, threads=1, log=lambda s: None)
    assert [r["context"] for r in section["rows"]] == [24, 40]
    for r in section["rows"]:
        for key in ("torch_prefill_tps", "onnx_prefill_tps", "torch_decode_tps", "onnx_decode_tps"):
            assert r[key] > 0
        assert r["decode_ratio"] == pytest.approx(r["onnx_decode_tps"] / r["torch_decode_tps"])
    assert section["file_bytes"]["model.onnx"] > 0 and section["file_bytes"]["model.onnx.data"] > 0
    text = "\n".join(onnx_runtime.render(section))
    assert "| 24 |" in text and "| 40 |" in text and "onnxruntime / torch" in text
