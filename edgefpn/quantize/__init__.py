"""Quantization internals of the `quantize` stage: QDQ ONNX, accuracy in the loop, FP16 and OpenVINO INT8.

The stage itself (``edgefpn.pipeline.quantize``) orchestrates; the calibration data and ranges live in
``edgefpn.calibration``.
"""
