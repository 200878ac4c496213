"""Metrics for ``check``: raw tensor agreement, detection agreement and COCO mAP.

``coco`` is not imported here: it pulls in pycocotools (and matplotlib) only when asked for.
"""

from edgefpn.metrics.detections import DetectionAgreement, match_detections
from edgefpn.metrics.tensors import SNR_CAP_DB, aggregate_agreement, tensor_agreement

__all__ = ["SNR_CAP_DB", "DetectionAgreement", "aggregate_agreement", "match_detections", "tensor_agreement"]
