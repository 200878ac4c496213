"""Detectors built from torchvision blocks, their export wrapper and their checkpoints."""

from edgefpn.models.backbones import BACKBONES, LevelSpec, ResNetFPN, resnet_fpn
from edgefpn.models.checkpoint import load_checkpoint, load_weights, save_checkpoint
from edgefpn.models.export import ExportWrapper, export_onnx, output_names, output_shapes
from edgefpn.models.fcos import FCOS_LEVELS, IdentityTransform, fcos
from edgefpn.models.registry import ARCHITECTURES, build_model

__all__ = [
    "ARCHITECTURES",
    "BACKBONES",
    "FCOS_LEVELS",
    "ExportWrapper",
    "IdentityTransform",
    "LevelSpec",
    "ResNetFPN",
    "build_model",
    "export_onnx",
    "fcos",
    "load_checkpoint",
    "load_weights",
    "output_names",
    "output_shapes",
    "resnet_fpn",
    "save_checkpoint",
]
