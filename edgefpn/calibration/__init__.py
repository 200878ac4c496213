"""One calibration set, many consumers: ONNX Runtime QDQ calibration, NNCF, TensorRT.

:class:`CalibrationSet` picks the images (never from the val split) and streams them through the one
preprocessing function; :func:`calibrate` turns them into cached activation ranges for a model.
"""

from edgefpn.calibration.dataset import (
    IMAGE_SUFFIXES,
    CalibrationSet,
    OrtCalibrationReader,
    cache_key,
    nncf_dataset,
)
from edgefpn.calibration.ranges import CalibrationResult, calibrate

__all__ = [
    "IMAGE_SUFFIXES",
    "CalibrationResult",
    "CalibrationSet",
    "OrtCalibrationReader",
    "cache_key",
    "calibrate",
    "nncf_dataset",
]
