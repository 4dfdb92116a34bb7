"""ONNX export of the DSA graph in standard ONNX ops (truly sparse attention), and an onnxruntime runner.

`dsa.onnx.export.export_onnx` writes model.onnx (+ external weight data, tokenizer files, onnx.json);
`dsa.onnx.runner.generate` streams tokens from such a directory with onnxruntime's CPU provider.
Needs the `onnx` extra (onnx, onnxruntime, onnxscript), imported only when used.
"""
